#include "models/platform.h"

#include <fmt/format.h>

namespace vmx::models {

Platform::Platform(const PlatformParams& p, stats::Group* parent)
    : m_params(p),
      m_stats(parent, "system", "the machine"),
      m_mem(p.memory),
      m_llc(p.llc, &m_stats, "llc"),
      m_mmio(&m_stats),
      m_ir(p.interrupt_remapping, m_ir_mem, &m_stats),
      m_irq(static_cast<unsigned>(p.cores),
            [this](std::uint32_t dest, std::uint8_t vector) { m_cores[dest]->post_interrupt(vector); }, &m_stats),
      m_debugcon(&m_stats, static_cast<std::uint32_t>(p.debugcon_latency)) {
  m_io.attach(DebugConsole::kPort, 1, &m_debugcon);
  m_irq.set_remapping(&m_ir);
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
    w.mmio = &m_mmio;
    w.vmcs_store = &m_vmcs;
    w.frequency_hz = p.frequency;
    w.quantum_cycles = quantum_cycles;
    w.send_ipi = [this, i](std::uint32_t dest, std::uint8_t vector) { m_irq.ipi(i, dest, vector); };
    m_cores.push_back(std::make_unique<cpu::Core>(name.c_str(), i, p.cpu, w, &m_stats));
  }
}

Platform::~Platform() = default;

std::vector<cpu::Core*> Platform::cores() {
  std::vector<cpu::Core*> r;
  for (auto& c : m_cores) r.push_back(c.get());
  return r;
}

}  // namespace vmx::models
