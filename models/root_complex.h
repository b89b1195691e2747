// The PCIe root complex: where device DMA meets the IOMMU and memory, and
// where the CPU's MMIO goes down to the devices.
//
// Upstream (device -> host), one TLM-2.0 blocking transaction per DMA on the
// `dma` target socket, each carrying a DmaContext (models/dma.h):
//   - a write into the MSI window (0xFEEx_xxxx) is an interrupt message, not
//     a memory write (SDM Vol. 3A, 11.11; VT-d 3.13: interrupt requests are
//     not subject to DMA remapping): it is handed to the bound MsiSink;
//   - otherwise, with the IOMMU enabled, every 4 KiB page of the request is
//     translated by iommu::Iommu (requester ID, address, read or write) and
//     the IOMMU's cycles are charged as annotated delay; if any page is
//     blocked the transaction ends with TLM_ADDRESS_ERROR_RESPONSE and no
//     byte of memory is read or written (the IOMMU records the fault);
//   - with the IOMMU disabled (or absent) the address is host-physical;
//   - the bytes are then really copied to or from PhysMem, and the memory
//     access is timed (optionally through the shared LLC's tags, as Intel
//     DDIO lets DMA hit and allocate in the LLC).
// Downstream (CPU -> device), `mmio()` forwards a transaction to the device
// bound to `mmio_out` (optional: unbound, MMIO is unclaimed).
//
// All latencies are cycles of the root complex's clock, which is also the
// IOMMU's clock (STYLE.md 5), converted to sc_time in one place.
#pragma once

#include <systemc>
#include <tlm>
#include <tlm_utils/simple_initiator_socket.h>
#include <tlm_utils/simple_target_socket.h>

#include <cstdint>
#include <string>
#include <unordered_map>

#include "iommu/iommu.h"
#include "mmu/walker.h"
#include "models/dma.h"
#include "models/dram.h"
#include "sim/events.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::models {

class Cache;
class Coherence;
class PhysMem;

struct RootComplexParams {
  std::uint64_t frequency;  // Hz
  std::uint32_t memory_latency;
  std::uint32_t llc_latency;
  std::uint32_t bytes_per_cycle;
  std::uint32_t mmio_read_latency;
  std::uint32_t mmio_write_latency;

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(frequency, "frequency", "2GHz", Spec(Unit::Frequency).at_least(1e6),
            "Clock of the root complex and the IOMMU, which run in the uncore. Default: 2 GHz (assumption; "
            "Skylake-SP uncore clocks range from about 1.2 to 2.4 GHz).");
    v.param(memory_latency, "memory_latency", "160", Spec(Unit::Cycles),
            "Cycles of DRAM for one DMA access or IOMMU table reference: the whole access latency when no "
            "LLC is attached, and what an LLC miss adds to llc_latency when one is. Default: 160 = 80 ns at "
            "2 GHz (assumption: 7-cpu.com measures about 62 ns of DRAM latency from a Skylake core, and the "
            "I/O path adds to it).");
    v.param(llc_latency, "llc_latency", "40", Spec(Unit::Cycles),
            "Cycles for a DMA access or IOMMU table reference that hits the LLC (DDIO). Default: 40 = 20 ns "
            "at 2 GHz (assumption: twice the core's 42-cycle, about 10 ns, LLC latency, for the mesh hops "
            "from the I/O stop).");
    v.param(bytes_per_cycle, "bytes_per_cycle", "32", Spec().at_least(1),
            "Bytes a DMA moves per cycle after the first access (DMA bandwidth). Default: 32, i.e. 64 GB/s "
            "at 2 GHz (assumption: above a PCIe 4.0 x16 link, so the link or the NIC limits, not memory).");
    v.param(mmio_read_latency, "mmio_read_latency", "1600", Spec(Unit::Cycles),
            "Cycles of this clock a core waits for a read of a device register (a non-posted PCIe round "
            "trip). Default: 1600 = 800 ns at 2 GHz (assumption: Neugebauer et al., \"Understanding PCIe "
            "performance for end host networking\", SIGCOMM 2018, measure register reads of several hundred "
            "ns to about 1 us).");
    v.param(mmio_write_latency, "mmio_write_latency", "100", Spec(Unit::Cycles),
            "Cycles of this clock a core spends on a write to a device register (a posted write: the core "
            "does not wait for the device). Default: 100 = 50 ns at 2 GHz (assumption).");
  }
};

/// Per-requester DMA statistics ("rid_BB_DD_F" under the root complex).
struct RequesterStats : stats::Group {
  RequesterStats(stats::Group* parent, const std::string& name);
  stats::Counter reads{this, "reads", "transactions", "DMA reads"};
  stats::Counter writes{this, "writes", "transactions", "DMA writes (MSIs excluded)"};
  stats::Counter read_bytes{this, "read_bytes", "bytes", "bytes read from memory"};
  stats::Counter write_bytes{this, "write_bytes", "bytes", "bytes written to memory"};
  stats::Counter msis{this, "msis", "messages", "interrupt messages (writes to the MSI window)"};
  stats::Counter blocked{this, "blocked", "transactions", "DMAs blocked by the IOMMU"};
  stats::Counter translation_cycles{this, "translation_cycles", "cycles", "IOMMU cycles spent on its DMAs"};
};

struct RootComplexStats : stats::Group {
  RootComplexStats(stats::Group* parent, const std::string& name);
  stats::Counter dma_reads{this, "dma_reads", "transactions", "DMA reads, all requesters"};
  stats::Counter dma_writes{this, "dma_writes", "transactions", "DMA writes to memory, all requesters"};
  stats::Counter dma_read_bytes{this, "dma_read_bytes", "bytes", "bytes read by DMA"};
  stats::Counter dma_write_bytes{this, "dma_write_bytes", "bytes", "bytes written by DMA"};
  stats::Counter pages{this, "pages", "pages", "4 KiB page pieces the DMAs were split into"};
  stats::Counter msis{this, "msis", "messages", "interrupt messages handed to the interrupt fabric"};
  stats::Counter msis_unclaimed{this, "msis_unclaimed", "messages", "interrupt messages with no MsiSink bound"};
  stats::Counter blocked{this, "blocked", "transactions", "DMAs blocked by the IOMMU (memory untouched)"};
  stats::Counter unclaimed{this, "unclaimed", "transactions",
                           "DMAs to addresses beyond memory (master abort; memory untouched)"};
  stats::Counter translation_cycles{this, "translation_cycles", "cycles", "IOMMU cycles charged to DMAs"};
  stats::Counter memory_cycles{this, "memory_cycles", "cycles", "memory-access cycles charged to DMAs"};
  stats::Counter llc_hits{this, "llc_hits", "lines", "DMA lines that hit the LLC (LLC attached)"};
  stats::Counter llc_misses{this, "llc_misses", "lines", "DMA lines that missed the LLC (LLC attached)"};
  stats::Counter mmio{this, "mmio", "transactions", "CPU MMIO transactions forwarded downstream"};
  stats::Counter mmio_unclaimed{this, "mmio_unclaimed", "transactions", "MMIO with no device bound"};
};

/// Memory as the IOMMU's table walks see it: PhysMem contents, timed like a
/// DMA read (LLC hit or memory latency), in root-complex cycles.
class IommuTableMemory final : public mmu::TableMemory {
 public:
  /// llc may be null (every reference then costs memory_latency).
  IommuTableMemory(PhysMem& mem, Cache* llc, const RootComplexParams& p);
  std::uint64_t read_entry(std::uint64_t pa, std::uint32_t& cycles) override;
  void write_entry(std::uint64_t pa, std::uint64_t value, std::uint32_t& cycles) override;
  /// Makes the walks coherent with the cores' caches (VT-d ECAP.C, page-walk
  /// coherency): an entry written invalidates the cores' copies of its line.
  void attach_coherence(Coherence* c) { m_coherence = c; }

 private:
  std::uint32_t cost(std::uint64_t pa, bool write);
  PhysMem& m_mem;
  Cache* m_llc;
  Coherence* m_coherence = nullptr;
  std::uint32_t m_memory_latency, m_llc_latency;
};

class RootComplex : public sc_core::sc_module {
 public:
  /// Device DMA enters here (bind each device's DMA initiator socket).
  tlm_utils::simple_target_socket<RootComplex> dma;
  /// CPU MMIO leaves here towards the device (optional binding).
  tlm_utils::simple_initiator_socket_optional<RootComplex> mmio_out;

  /// iommu may be null (no IOMMU: DMA is physical); llc may be null (DMA
  /// timed at memory_latency). Statistics go under parent as `name`.
  RootComplex(sc_core::sc_module_name name, const RootComplexParams& params, PhysMem& mem, iommu::Iommu* iommu,
              Cache* llc, stats::Group* parent);

  /// The interrupt fabric that receives MSIs (may be set after construction).
  void bind_msi_sink(MsiSink* sink) { m_msi = sink; }
  /// Makes DMA coherent with the cores' caches (models/coherence.h): a DMA
  /// write invalidates the cores' copies of every line it writes.
  void attach_coherence(Coherence* c) { m_coherence = c; }
  /// Times DMA lines that miss the LLC on the DRAM model (models/dram.h)
  /// instead of memory_latency: a read miss reads DRAM, a write allocates in
  /// the LLC (DDIO) and a dirty line it evicts is written to DRAM.
  void attach_dram(Dram* dram, unsigned requester) {
    m_dram = dram;
    m_dram_requester = requester;
  }

  /// CPU-side MMIO: forwards the transaction to the device on mmio_out.
  void mmio(tlm::tlm_generic_payload& trans, sc_core::sc_time& delay);

  sc_core::sc_time time_of(std::uint64_t cycles) const;
  const RootComplexParams& params() const { return m_params; }
  const RootComplexStats& stats() const { return m_stats; }
  /// Statistics of one requester, or null if it never issued a DMA.
  const RequesterStats* requester_stats(std::uint16_t rid) const;
  static std::string requester_name(std::uint16_t rid);
  /// Listeners of the DMA the IOMMU blocks (sim/events.h, kDmaBlocked),
  /// e.g. the event trace.
  events::Dispatcher& events() { return m_events; }

 private:
  void b_transport(tlm::tlm_generic_payload& trans, sc_core::sc_time& delay);
  RequesterStats& requester(std::uint16_t rid);
  /// The one call into the IOMMU: host-physical address of the page piece at
  /// addr (passed through with the IOMMU off), or the fault that blocked it.
  /// Adds IOMMU cycles to `cycles`.
  iommu::TranslateResult translate(const DmaContext& ctx, std::uint64_t addr, bool write, std::uint64_t& hpa,
                                   std::uint32_t& cycles);
  bool llc_lookup(std::uint64_t hpa, std::uint64_t len, bool write);
  /// With the DRAM model: the lines of one piece, looked up in the LLC and
  /// sent to DRAM at `at_ps`; returns the latest DRAM latency (ps) among them,
  /// 0 when every line hit.
  std::uint64_t llc_dram_lookup(std::uint64_t hpa, std::uint64_t len, bool write, std::uint64_t at_ps);
  void snoop_cores(std::uint64_t hpa, std::uint64_t len, bool write);

  RootComplexParams m_params;
  PhysMem& m_mem;
  iommu::Iommu* m_iommu;
  Cache* m_llc;
  Coherence* m_coherence = nullptr;
  Dram* m_dram = nullptr;
  unsigned m_dram_requester = 0;
  MsiSink* m_msi = nullptr;
  RootComplexStats m_stats;
  std::unordered_map<std::uint16_t, RequesterStats*> m_requesters;
  events::Dispatcher m_events;
};

}  // namespace vmx::models
