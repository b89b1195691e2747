// The machine assembled from PlatformParams: physical memory, the shared LLC,
// per-core private caches, cores, the port-I/O bus with its devices, and the
// VMCS store. Software is installed afterwards as each core's reset fiber.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmcs.h"
#include "models/cache.h"
#include "models/io_bus.h"
#include "models/mem_hierarchy.h"
#include "models/mmio.h"
#include "models/phys_mem.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::models {

struct PlatformParams {
  std::uint64_t cores;
  std::uint64_t frequency;  // Hz
  std::uint64_t memory;     // bytes
  std::uint64_t quantum;    // ps
  cpu::CoreParams cpu;
  MemHierarchyParams caches;
  LlcParams llc;
  std::uint64_t debugcon_latency;

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(cores, "cores", "2", Spec().at_least(1).at_most(256), "Physical cores.");
    v.param(frequency, "frequency", "3GHz", Spec(Unit::Frequency).at_least(1e6),
            "Core clock, also the TSC rate (a typical server base clock).");
    v.param(memory, "memory", "4GiB", Spec(Unit::Bytes).at_least(32 * 1024 * 1024),
            "Host-physical memory (sparse: frames exist once touched).");
    v.param(quantum, "quantum", "10us", Spec(Unit::Time).at_least(1e3),
            "Temporal-decoupling quantum: how far a core may run ahead of SystemC time, and so the bound "
            "on how late it sees an event raised by another core.");
    v.section(cpu, "cpu", "Core timing and translation caches (the same for every core).");
    v.section(caches, "caches", "Private caches of each core and DRAM latency.");
    v.section(llc, "llc", "Last-level cache shared by all cores.");
    v.param(debugcon_latency, "debugcon_latency", "100", Spec(Unit::Cycles),
            "Latency of the debug console on port 0xE9 (assumption).");
  }
};

class Platform {
 public:
  /// Statistics go under `parent` as "system".
  Platform(const PlatformParams& params, stats::Group* parent);
  ~Platform();

  cpu::Core& core(unsigned i) { return *m_cores.at(i); }
  std::vector<cpu::Core*> cores();
  unsigned core_count() const { return static_cast<unsigned>(m_cores.size()); }
  PhysMem& memory() { return m_mem; }
  IoBus& io() { return m_io; }
  /// Devices claim their MMIO ranges here (above RAM).
  MmioBus& mmio() { return m_mmio; }
  DebugConsole& debugcon() { return m_debugcon; }
  const PlatformParams& params() const { return m_params; }
  stats::Group& stats() { return m_stats; }

 private:
  PlatformParams m_params;
  stats::Group m_stats;
  PhysMem m_mem;
  Cache m_llc;
  IoBus m_io;
  MmioBus m_mmio;
  DebugConsole m_debugcon;
  cpu::VmcsStore m_vmcs;
  std::vector<std::unique_ptr<MemHierarchy>> m_caches;
  std::vector<std::unique_ptr<cpu::Core>> m_cores;
};

}  // namespace vmx::models
