#include "models/platform.h"

#include <fmt/format.h>

namespace vmx::models {

namespace {
/// MSIs straight to the local APICs: fixed delivery mode, physical
/// destination mode; destination APIC ID in address bits 19:12, vector in
/// data bits 7:0 (SDM Vol. 3A, 11.11.1 and 11.11.2). The stand-in until an
/// interrupt fabric with remapping and posting is bound.
class DirectMsi final : public MsiSink {
 public:
  explicit DirectMsi(std::vector<std::unique_ptr<cpu::Core>>& cores) : m_cores(cores) {}
  void msi(const MsiMessage& m) override {
    const std::uint32_t dest = static_cast<std::uint32_t>((m.address >> 12) & 0xFF);
    if (dest < m_cores.size()) m_cores[dest]->post_interrupt(static_cast<std::uint8_t>(m.data & 0xFF));
  }

 private:
  std::vector<std::unique_ptr<cpu::Core>>& m_cores;
};
}  // namespace

Platform::Platform(const PlatformParams& p, stats::Group* parent)
    : m_params(p),
      m_stats(parent, "system", "the machine"),
      m_mem(p.memory),
      m_llc(p.llc, &m_stats, "llc"),
      m_debugcon(&m_stats, static_cast<std::uint32_t>(p.debugcon_latency)) {
  m_io.attach(DebugConsole::kPort, 1, &m_debugcon);
  std::uint64_t quantum_cycles =
      static_cast<std::uint64_t>(static_cast<unsigned __int128>(p.quantum) * p.frequency / cfg::kPsPerSecond);
  if (quantum_cycles == 0) quantum_cycles = 1;
  for (unsigned i = 0; i < p.cores; ++i) {
    auto name = fmt::format("cpu{}", i);
    m_caches.push_back(std::make_unique<MemHierarchy>(p.caches, &m_llc, &m_stats, name + "_mem"));
    cpu::CoreWiring w;
    w.mem = &m_mem;
    w.caches = m_caches.back().get();
    w.io = &m_io;
    w.vmcs_store = &m_vmcs;
    w.frequency_hz = p.frequency;
    w.quantum_cycles = quantum_cycles;
    w.send_ipi = [this](std::uint32_t dest, std::uint8_t vector) {
      if (dest < m_cores.size()) m_cores[dest]->post_interrupt(vector);
    };
    m_cores.push_back(std::make_unique<cpu::Core>(name.c_str(), i, p.cpu, w, &m_stats));
  }
  if (p.nic.enabled) {
    // Device DMA and the IOMMU's table walks go through the shared LLC's
    // tags to the platform memory.
    m_iommu_mem = std::make_unique<IommuTableMemory>(m_mem, &m_llc, p.root_complex);
    m_iommu = std::make_unique<iommu::Iommu>(p.iommu, *m_iommu_mem, &m_stats);
    m_rc = std::make_unique<RootComplex>("root_complex", p.root_complex, m_mem, m_iommu.get(), &m_llc, &m_stats);
    m_default_msi = std::make_unique<DirectMsi>(m_cores);
    m_rc->bind_msi_sink(m_default_msi.get());
    m_nic = std::make_unique<Nic>("nic", p.nic.device, &m_stats);
    m_link = std::make_unique<EthLink>("link", p.nic.link, &m_stats);
    m_peer = std::make_unique<NetPeer>("peer", p.nic.peer, &m_stats);
    m_nic->dma.bind(m_rc->dma);
    m_rc->mmio_out.bind(m_nic->mmio);
    m_nic->attach_link(*m_link);
    m_peer->attach_link(*m_link);
    m_link->bind(*m_nic, "nic", *m_peer, "peer");
  }
}

void Platform::bind_msi_sink(MsiSink* sink) {
  if (m_rc) m_rc->bind_msi_sink(sink);
}

Platform::~Platform() = default;

std::vector<cpu::Core*> Platform::cores() {
  std::vector<cpu::Core*> r;
  for (auto& c : m_cores) r.push_back(c.get());
  return r;
}

}  // namespace vmx::models
