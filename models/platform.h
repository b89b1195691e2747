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
#include "models/phys_mem.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::models {

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
  std::uint64_t debugcon_latency;

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
  DebugConsole& debugcon() { return m_debugcon; }
  const PlatformParams& params() const { return m_params; }
  stats::Group& stats() { return m_stats; }

 private:
  PlatformParams m_params;
  stats::Group m_stats;
  PhysMem m_mem;
  Cache m_llc;
  IoBus m_io;
  DebugConsole m_debugcon;
  cpu::VmcsStore m_vmcs;
  std::vector<std::unique_ptr<MemHierarchy>> m_caches;  // one per physical core
  std::vector<std::unique_ptr<cpu::Core>> m_cores;
};

}  // namespace vmx::models
