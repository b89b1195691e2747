// The platform's interrupt fabric: where message-signalled interrupts from
// devices and inter-processor interrupts from cores' x2APIC ICRs go.
//
// An MSI is a DMA write to 0xFEEx_xxxx (models/dma.h). In compatibility
// format (address bit 4 clear) the destination APIC ID is address bits 19:12
// and the vector data bits 7:0; delivery mode data bits 10:8 (SDM Vol. 3A,
// 11.11.1 and 11.11.2). Fixed (000) and lowest-priority (001, delivered to
// the named destination) are modelled; other delivery modes (SMI, NMI, INIT,
// ExtINT) and logical destination mode (address bit 2) are not, and such
// messages are counted as unsupported and dropped. With interrupt remapping
// on (iommu/interrupt_remap.h), every MSI goes through the remapping unit,
// which turns it into a remapped interrupt, a posted interrupt (PIR bit, and
// maybe a notification) or a fault.
//
// A delivered interrupt is raised in the destination core's local APIC and
// wakes it if halted; the core takes it at its next operation boundary
// (within one quantum, docs/io.md). No wire latency is modelled.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "models/dma.h"
#include "sim/events.h"
#include "sim/stats.h"

namespace vmx::iommu {
class InterruptRemap;
}

namespace vmx::models {

class InterruptFabric final : public MsiSink {
 public:
  /// Raises `vector` in the local APIC of the core with x2APIC ID `apic_id`.
  using Raise = std::function<void(std::uint32_t apic_id, std::uint8_t vector)>;

  /// Fields of a compatibility-format MSI (SDM Vol. 3A, 11.11.1, 11.11.2).
  static constexpr std::uint32_t msi_dest(std::uint64_t address) { return (address >> 12) & 0xFF; }
  static constexpr bool msi_logical(std::uint64_t address) { return (address >> 2) & 1; }
  static constexpr bool msi_remappable(std::uint64_t address) { return (address >> 4) & 1; }
  static constexpr std::uint8_t msi_vector(std::uint32_t data) { return data & 0xFF; }
  static constexpr unsigned msi_delivery_mode(std::uint32_t data) { return (data >> 8) & 7; }
  /// A compatibility-format fixed-delivery MSI to `dest` with `vector`.
  static constexpr MsiMessage compat_msi(std::uint32_t dest, std::uint8_t vector, std::uint16_t requester = 0) {
    return {kMsiBase | (std::uint64_t{dest & 0xFF} << 12), vector, requester};
  }

  InterruptFabric(unsigned cpus, Raise raise, stats::Group* parent);
  ~InterruptFabric() override;

  /// A device's interrupt message (MsiSink).
  void msi(const MsiMessage& m) override;
  /// A fixed IPI written to the x2APIC ICR of core `source` (physical
  /// destination `dest`, SDM Vol. 3A, 11.12.10).
  void ipi(std::uint32_t source, std::uint32_t dest, std::uint8_t vector);
  /// Routes MSIs through interrupt remapping (nullptr: none). The unit
  /// itself decides whether remapping is enabled (its GCMD.IRE).
  void set_remapping(iommu::InterruptRemap* ir) { m_ir = ir; }
  /// Listeners of the messages (sim/events.h, kMsi), e.g. the event trace.
  events::Dispatcher& events() { return m_events; }

 private:
  void raise(std::uint32_t dest, std::uint8_t vector, bool from_device);

  struct PerCpu : stats::Group {
    PerCpu(stats::Group* p, const std::string& n) : Group(p, n) {}
    stats::Counter msis{this, "msis", "interrupts", "device interrupts (MSIs, remapped or not) raised at this core"};
    stats::Counter notifications{this, "notifications", "interrupts",
                                 "of those, posted-interrupt notifications sent by interrupt remapping"};
    stats::Counter ipis{this, "ipis", "interrupts", "inter-processor interrupts raised at this core"};
  };
  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "interrupts", "interrupt fabric: MSIs and IPIs") {}
    stats::Counter msis{this, "msis", "messages", "interrupt messages from devices"};
    stats::Counter remapped{this, "remapped", "messages", "of those, remapped through an IRTE to a host vector"};
    stats::Counter posted{this, "posted", "messages", "of those, posted into a posted-interrupt descriptor"};
    stats::Counter blocked{this, "blocked", "messages", "of those, blocked by an interrupt-remapping fault"};
    stats::Counter unsupported{this, "unsupported", "messages",
                               "of those, dropped: logical destination or a delivery mode that is not modelled"};
    stats::Counter bad_destination{this, "bad_destination", "messages",
                                   "interrupts (MSIs or IPIs) to an APIC ID no core has, dropped"};
  } m_stats;
  Raise m_raise;
  std::vector<std::unique_ptr<PerCpu>> m_cpu;
  iommu::InterruptRemap* m_ir = nullptr;
  events::Dispatcher m_events;
  void report(events::MsiOutcome outcome, const MsiMessage& m, std::uint32_t dest, std::uint32_t vector) const;
};

}  // namespace vmx::models
