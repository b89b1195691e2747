#include "models/platform.h"

#include <fmt/format.h>

namespace vmx::models {

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
  const unsigned threads = static_cast<unsigned>(p.smt);
  for (unsigned i = 0; i < p.cores * threads; ++i) {
    auto name = fmt::format("cpu{}", i);
    // SMT siblings (threads of one physical core) share its private caches.
    if (i % threads == 0)
      m_caches.push_back(std::make_unique<MemHierarchy>(
          p.caches, &m_llc, &m_stats, threads == 1 ? name + "_mem" : fmt::format("core{}_mem", i / threads)));
    cpu::CoreWiring w;
    w.mem = &m_mem;
    w.caches = m_caches.back().get();
    w.io = &m_io;
    w.vmcs_store = &m_vmcs;
    w.frequency_hz = p.frequency;
    w.quantum_cycles = quantum_cycles;
    w.smt_contention = p.smt_contention;
    w.send_ipi = [this](std::uint32_t dest, std::uint8_t vector) {
      if (dest < m_cores.size()) m_cores[dest]->post_interrupt(vector);
    };
    m_cores.push_back(std::make_unique<cpu::Core>(name.c_str(), i, p.cpu, w, &m_stats));
  }
  if (threads == 2)
    for (unsigned i = 0; i + 1 < m_cores.size(); i += 2) {
      m_cores[i]->set_sibling(m_cores[i + 1].get());
      m_cores[i + 1]->set_sibling(m_cores[i].get());
    }
}

Platform::~Platform() = default;

std::vector<cpu::Core*> Platform::cores() {
  std::vector<cpu::Core*> r;
  for (auto& c : m_cores) r.push_back(c.get());
  return r;
}

}  // namespace vmx::models
