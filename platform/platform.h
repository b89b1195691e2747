// The machine assembled from PlatformParams: physical memory, the shared LLC,
// per-core private caches, cores, the port-I/O bus with its devices, and the
// VMCS store. Software is installed afterwards as each core's reset fiber.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmcs.h"
#include "iommu/interrupt_remap.h"
#include "iommu/iommu.h"
#include "iommu/vtd_regs.h"
#include "models/cache.h"
#include "models/coherence.h"
#include "models/eth_link.h"
#include "models/interrupts.h"
#include "models/io_bus.h"
#include "models/mem_hierarchy.h"
#include "models/mmio.h"
#include "models/net_peer.h"
#include "models/nic.h"
#include "models/phys_mem.h"
#include "models/root_complex.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::models {

/// The platform's NIC section: whether there is one, the device, its link
/// and the peer at the link's far end.
struct PlatformNicParams {
  bool enabled;
  NicParams device;
  EthLinkParams link;
  NetPeerParams peer;

  template <class V>
  void visit(V& v) {
    v.param(enabled, "enabled", "false", cfg::Spec(cfg::Unit::Flag),
            "Build the SR-IOV NIC, its link, the network peer, the root complex and the IOMMU.");
    device.visit(v);  // the device's parameters sit beside `enabled`
    v.section(link, "link", "The Ethernet link from the NIC to the network peer.");
    v.section(peer, "peer", "The machine at the far end of the link.");
  }
};

struct PlatformParams {
  std::uint64_t cores;
  std::uint64_t smt;        // hardware threads per core
  double smt_contention;
  std::uint64_t frequency;  // Hz
  std::uint64_t memory;     // bytes
  std::uint64_t quantum;    // ps
  cpu::CoreParams cpu;
  MemHierarchyParams caches;
  LlcParams llc;
  DramParams dram;
  std::uint64_t debugcon_latency;
  RootComplexParams root_complex;
  iommu::IommuParams iommu;
  PlatformNicParams nic;
  iommu::InterruptRemapParams interrupt_remapping;
  MemCryptParams memory_encryption;
  RdtParams rdt;

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(cores, "cores", "2", Spec().at_least(1).at_most(256), "Physical cores.");
    v.param(smt, "smt", "1", Spec().at_least(1).at_most(2),
            "Hardware threads per physical core (SMT, Intel Hyper-Threading). With 2, logical CPU 2k and 2k+1 "
            "are the threads of core k: they share its L1I, L1D and L2 (TLBs stay per thread), and the "
            "hypervisor, pins and statistics (system.cpu<i>) count logical CPUs, cores x smt of them.");
    v.param(smt_contention, "smt_contention", "1.6", Spec(Unit::Ratio).at_least(1.0),
            "With smt 2: CPI multiplier of a thread while its sibling executes (is not halted). Default 1.6: "
            "two busy threads together retire 2/1.6 = 1.25x what one retires alone, within the 15-30% "
            "throughput gain Intel reports for Hyper-Threading (assumption).");
    v.param(frequency, "frequency", "3GHz", Spec(Unit::Frequency).at_least(1e6),
            "Core clock, also the TSC rate (a typical server base clock).");
    v.param(memory, "memory", "4GiB", Spec(Unit::Bytes).at_least(32 * 1024 * 1024).at_most(4.0 * (1ull << 40)),
            "Host-physical memory (sparse: frames exist once touched). At most 4 TiB, the model's limit (its "
            "top-level frame table has an entry per GiB).");
    v.param(quantum, "quantum", "10us", Spec(Unit::Time).at_least(1e3).at_most(1e9),
            "Temporal-decoupling quantum: how far a core may run ahead of SystemC time, and so the bound "
            "on how late it sees an event raised by another core. At most 1 ms and at most duration.");
    v.section(cpu, "cpu", "Core timing and translation caches (the same for every core).");
    v.section(caches, "caches", "Private caches of each core and DRAM latency.");
    v.section(llc, "llc", "Last-level cache shared by all cores.");
    v.section(dram, "dram", "Main memory: fixed latency, or the DDR4 model with banks and bandwidth (models/dram.h).");
    v.param(debugcon_latency, "debugcon_latency", "100", Spec(Unit::Cycles),
            "Latency of the debug console on port 0xE9 (assumption).");
    v.section(root_complex, "root_complex", "PCIe root complex: device DMA timing, the IOMMU's clock.");
    v.section(iommu, "iommu", "DMA-remapping unit (VT-d); its latencies are root-complex cycles.");
    v.section(nic, "nic", "SR-IOV NIC, link and network peer (docs/io.md).");
    v.section(interrupt_remapping, "interrupt_remapping",
              "VT-d interrupt remapping and posting unit; software enables it (docs/io.md, Interrupts).");
    v.section(memory_encryption, "memory_encryption",
              "Memory-encryption engine of the memory controller, one key per encrypted VM (SEV-like, "
              "docs/protection.md 'S11').");
    v.section(rdt, "rdt", "Cache and memory-bandwidth allocation, as Intel RDT's CAT and MBA (models/rdt.h).");
  }
};

class Platform {
 public:
  /// Statistics go under `parent` as "system". Without `own_link` the NIC
  /// gets no link and peer of its own: whoever builds the platform attaches
  /// its port to a link shared with another host (docs/migration.md).
  Platform(const PlatformParams& params, stats::Group* parent, bool own_link = true);
  ~Platform();

  cpu::Core& core(unsigned i) { return *m_cores.at(i); }
  std::vector<cpu::Core*> cores();
  unsigned core_count() const { return static_cast<unsigned>(m_cores.size()); }
  PhysMem& memory() { return m_mem; }
  IoBus& io() { return m_io; }
  /// Devices claim their MMIO ranges here (above RAM).
  MmioBus& mmio() { return m_mmio; }
  /// Where devices' MSIs go (the root complex hands them here).
  InterruptFabric& interrupts() { return m_irq; }
  /// The VT-d interrupt-remapping unit in front of the fabric.
  iommu::InterruptRemap& interrupt_remap() { return m_ir; }
  DebugConsole& debugcon() { return m_debugcon; }
  /// The memory controller's encryption engine (null unless
  /// memory_encryption.enabled).
  MemoryEncryption* memory_encryption() { return m_crypt.get(); }
  /// The directory keeping the private caches coherent (null when off).
  Coherence* coherence() { return m_coherence.get(); }
  /// The DDR4 model shared by the cores and DMA (null with dram.model fixed).
  Dram* dram() { return m_dram.get(); }
  /// Cache and bandwidth allocation; null unless rdt.enabled.
  Rdt* rdt() { return m_rdt.get(); }
  /// The I/O blocks, built when nic.enabled (null otherwise). The IOMMU
  /// starts disabled (GCMD.TE = 0): whoever plays the hypervisor programs
  /// its root table and enables it. CPU MMIO to the NIC's windows goes
  /// through root_complex()->mmio().
  RootComplex* root_complex() { return m_rc.get(); }
  iommu::Iommu* iommu() { return m_iommu.get(); }
  /// The IOMMU's VT-d register set, at kVtdBase on the MMIO bus (null
  /// without the IOMMU): software programs the IOMMU and interrupt
  /// remapping through it.
  iommu::VtdRegisters* vtd() { return m_vtd.get(); }
  /// Where the register set sits: the address Intel platforms commonly
  /// report for their remapping unit in the ACPI DMAR table (assumption).
  static constexpr std::uint64_t kVtdBase = 0xFED90000ull;
  Nic* nic() { return m_nic.get(); }
  EthLink* link() { return m_link.get(); }
  NetPeer* peer() { return m_peer.get(); }
  /// Replaces the default interrupt fabric (fixed, physical-destination
  /// delivery to the cores' local APICs) as the receiver of MSIs.
  void bind_msi_sink(MsiSink* sink);
  const PlatformParams& params() const { return m_params; }
  stats::Group& stats() { return m_stats; }

 private:
  PlatformParams m_params;
  stats::Group m_stats;
  PhysMem m_mem;
  std::unique_ptr<MemoryEncryption> m_crypt;  // memory_encryption.enabled
  Cache m_llc;
  IoBus m_io;
  MmioBus m_mmio;
  /// The remapping unit reads IRTEs and descriptors from memory directly
  /// (not through a core's caches).
  struct DirectMemory final : mmu::TableMemory {
    explicit DirectMemory(PhysMem& m) : mem(m) {}
    std::uint64_t read_entry(std::uint64_t pa, std::uint32_t&) override {
      return mem.contains(pa, 8) ? mem.read(pa, 8) : 0;
    }
    void write_entry(std::uint64_t pa, std::uint64_t v, std::uint32_t&) override {
      if (mem.contains(pa, 8)) mem.write(pa, v, 8);
    }
    PhysMem& mem;
  } m_ir_mem{m_mem};
  iommu::InterruptRemap m_ir;
  InterruptFabric m_irq;
  DebugConsole m_debugcon;
  cpu::VmcsStore m_vmcs;
  std::unique_ptr<Dram> m_dram;                          // null with dram.model fixed
  std::unique_ptr<Rdt> m_rdt;                            // null unless rdt.enabled
  std::vector<std::unique_ptr<MemHierarchy>> m_caches;  // one per physical core
  std::unique_ptr<Coherence> m_coherence;               // null when caches.coherence.enabled is false
  std::vector<std::unique_ptr<cpu::Core>> m_cores;
  std::unique_ptr<MmioDevice> m_nic_mmio;  // the NIC's register windows on the MMIO bus
  std::unique_ptr<IommuTableMemory> m_iommu_mem;
  std::unique_ptr<iommu::Iommu> m_iommu;
  std::unique_ptr<iommu::VtdRegisters> m_vtd;
  std::unique_ptr<MmioDevice> m_vtd_mmio;  // the register set on the MMIO bus, with its clock
  std::unique_ptr<RootComplex> m_rc;
  std::unique_ptr<Nic> m_nic;
  std::unique_ptr<EthLink> m_link;
  std::unique_ptr<NetPeer> m_peer;
};

}  // namespace vmx::models
