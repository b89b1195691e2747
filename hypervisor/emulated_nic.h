// The emulated NIC: a device the hypervisor implements in software for one
// VM, with the register layout and descriptor format of a NIC function
// (models/nic.h, docs/io.md "The SR-IOV NIC"), so that the guest's ring
// driver for a VF drives it unchanged (docs/io.md, "The emulated NIC").
//
// The device's registers live in one page of hypervisor memory (as QEMU's
// e1000 keeps its mac_reg array in memory). With access: trap that page is
// the hypervisor's alone and the guest-physical window has no EPT mapping:
// every guest access to it is an EPT violation that the hypervisor decodes
// (size and direction from the VM-exit instruction information, store data
// in RAX), emulates here, and completes by advancing the guest RIP. With
// access: poll (S1) the same page is mapped into the guest at the window
// through EPT, so register accesses are plain memory accesses that never
// exit, and the hypervisor polls the page every poll_period for doorbell
// changes.
//
// Frames the guest transmits are read from its TX ring and buffers (through
// the VM's EPT) and sent through the PF driver (HostNic); frames the switch
// delivers are written into the guest's RX ring and buffers. Interrupts go
// to the guest as the virtual interrupt its MSI-X registers name.
#pragma once

#include <cstdint>
#include <string>

#include "cpu/core.h"
#include "hypervisor/host_nic.h"
#include "hypervisor/spinlock.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::hv {

struct HvCosts;

/// A VM's emulated-NIC keys (vms[].nic).
struct EmulatedNicParams {
  std::string access;           // trap | poll
  std::uint64_t poll_period;    // ps
  std::uint64_t userspace_cost; // instructions per exit

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(access, "access", "trap", Spec().one_of({"trap", "poll"}),
            "Emulated NIC: trap (the register window is not mapped: every guest register access exits and is "
            "emulated) or poll (the register page is guest memory mapped through EPT; the hypervisor polls it "
            "every poll_period, S1).");
    v.param(poll_period, "poll_period", "1ms", Spec(Unit::Time).at_least(1e6),
            "Emulated NIC with access: poll: interval between two polls of the register page by the hypervisor "
            "(assumption: 1 ms, Linux's HZ=1000 tick).");
    v.param(userspace_cost, "userspace_cost", "0", Spec(Unit::Instructions),
            "Emulated NIC: instructions added to each exit the device handles, for a user-space device model "
            "(QEMU-style split: the return to user space, the device callback, the re-entry; of the order of "
            "10000-20000; 0 = in-kernel emulation, as KVM's in-kernel devices).");
  }
};

/// What add_vm needs to build a VM's emulated NIC.
struct EmulatedNicSpec {
  bool enabled = false;
  std::uint64_t window = 0xF0000000;  // guest-physical base of the register window (one page)
  std::uint64_t mac = 0;              // 0: 02:00:00:01:<vm id high>:<vm id low>
  /// Nonzero: the hypervisor programs MSI-X entry 0 (vector to vCPU 0,
  /// unmasked) at reset, for guest drivers that leave MSI-X to the platform.
  std::uint8_t vector = 0;
  EmulatedNicParams params{"trap", 1'000'000'000, 0};
};

class EmulatedNic : public SwitchPort {
 public:
  /// What the device model needs of the hypervisor.
  class Host {
   public:
    virtual ~Host() = default;
    /// Host-physical address of guest-physical gpa (backing it if needed),
    /// 0 if it is not guest memory.
    virtual std::uint64_t guest_to_host(cpu::Core& c, std::uint64_t gpa) = 0;
    /// Raises virtual interrupt `vector` at the vCPU with x2APIC ID `apic_id`.
    virtual void interrupt(cpu::Core& c, unsigned apic_id, std::uint8_t vector) = 0;
    /// Charges the device model's instructions.
    virtual void charge(cpu::Core& c, std::uint64_t instructions) = 0;
    virtual std::uint64_t alloc_frame() = 0;
  };

  EmulatedNic(const EmulatedNicSpec& spec, const HvCosts& costs, HostNic& pf, Host& host, stats::Group* vm_group);

  bool polled() const { return m_poll; }
  std::uint64_t window() const { return m_window; }
  std::uint64_t mac() const { return m_mac; }
  bool contains(std::uint64_t gpa) const { return gpa >= m_window && gpa < m_window + kWindowBytes; }
  std::uint64_t poll_period() const { return m_spec.params.poll_period; }
  std::uint64_t userspace_cost() const { return m_spec.params.userspace_cost; }

  /// Allocates and resets the register page (once, before the VM's first
  /// entry); returns its host-physical address (mapped at window() with
  /// access: poll).
  std::uint64_t setup(cpu::Core& c);
  /// A trapped access at `offset` in the window; returns the value read.
  std::uint64_t access(cpu::Core& c, std::uint64_t offset, unsigned size, bool write, std::uint64_t value);
  /// One polling pass (access: poll).
  void poll(cpu::Core& c);
  /// A frame from the switch for this device.
  void deliver(cpu::Core& c, std::uint64_t hpa, unsigned len) override;

  static constexpr std::uint64_t kWindowBytes = 4096;

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "nic", "the VM's emulated NIC") {}
    stats::Counter reads{this, "mmio_reads", "accesses", "trapped register reads emulated"};
    stats::Counter writes{this, "mmio_writes", "accesses", "trapped register writes emulated"};
    stats::Counter polls{this, "polls", "events", "polling passes over the mapped register page"};
    stats::Counter doorbells{this, "doorbells", "events", "TX doorbells acted on (trapped writes or polled changes)"};
    stats::Counter tx_packets{this, "tx_packets", "frames", "frames taken from the guest's TX ring"};
    stats::Counter tx_bytes{this, "tx_bytes", "bytes", "bytes taken from the guest's TX ring"};
    stats::Counter tx_dropped{this, "tx_dropped", "frames", "guest frames the PF driver refused"};
    stats::Counter rx_packets{this, "rx_packets", "frames", "frames written into the guest's RX ring"};
    stats::Counter rx_bytes{this, "rx_bytes", "bytes", "bytes written into the guest's RX ring"};
    stats::Counter rx_drops{this, "rx_drops", "frames", "frames dropped: no free RX descriptor, RX off or too large"};
    stats::Counter interrupts{this, "interrupts", "events", "virtual interrupts raised"};
  };
  const Stats& stats() const { return m_stats; }

 private:
  std::uint32_t rd(cpu::Core& c, std::uint32_t reg) { return static_cast<std::uint32_t>(c.load(m_regs + reg, 4)); }
  void wr(cpu::Core& c, std::uint32_t reg, std::uint32_t v) { c.store(m_regs + reg, v, 4); }
  void reset(cpu::Core& c);
  void reg_write(cpu::Core& c, std::uint32_t off, std::uint32_t v);
  void process_tx(cpu::Core& c);
  void raise(cpu::Core& c, std::uint32_t cause);
  void send_msi(cpu::Core& c);
  /// Copies between guest-physical memory and host memory, page by page;
  /// false if some page is not guest memory.
  bool copy(cpu::Core& c, std::uint64_t gpa, std::uint64_t hpa, unsigned len, bool to_guest);
  void lock(cpu::Core& c) { m_lock.lock(c); }
  void unlock(cpu::Core& c) { m_lock.unlock(c); }

  EmulatedNicSpec m_spec;
  const HvCosts& m_costs;
  HostNic& m_pf;
  Host& m_host;
  Stats m_stats;
  LockStats m_lock_stats{&m_stats, "lock", "the device lock (hypervisor/spinlock.h)"};
  bool m_poll;
  std::uint64_t m_window, m_mac;
  std::uint64_t m_regs = 0;  // the register page (host-physical)
  TicketLock m_lock;  // the device lock: exits and the switch's deliveries on different cores
  // Polling: the values seen at the last poll.
  std::uint32_t m_seen_tx_tail = 0, m_seen_tx_size = 0, m_seen_rx_size = 0, m_seen_msix_ctrl = 1,
                m_seen_enable = 0;
};

}  // namespace vmx::hv
