// Assembles the platform, the hypervisor and the VMs from an experiment and
// runs it under SystemC.
#include <cstdlib>
#include <memory>
#include <stdexcept>

#include <fmt/format.h>
#include <systemc>

#include "cpu/vmcs.h"
#include "experiment/experiment.h"

namespace vmx::experiment {

namespace {

/// Ends the run early once every finite guest thread has finished.
class Monitor : public sc_core::sc_module, public guest::RunControl {
 public:
  SC_HAS_PROCESS(Monitor);
  Monitor(sc_core::sc_module_name n, bool stop_when_done) : sc_module(n), m_stop(stop_when_done) {
    SC_THREAD(watch);
  }
  void thread_started() override { ++m_live; m_any = true; }
  void thread_finished() override {
    if (m_live && --m_live == 0) m_done.notify(sc_core::SC_ZERO_TIME);
  }
  bool finished() const { return m_any ? m_live == 0 : false; }

 private:
  void watch() {
    for (;;) {
      sc_core::wait(m_done);
      if (m_stop && m_live == 0) sc_core::sc_pause();
    }
  }
  bool m_stop;
  unsigned m_live = 0;
  bool m_any = false;
  sc_core::sc_event m_done;
};

sc_core::sc_time time_ps(std::uint64_t ps) { return sc_core::sc_time::from_value(static_cast<sc_dt::uint64>(ps)); }

struct System {
  explicit System(const ExperimentParams& p)
      : params(p), platform(p.platform, &root), monitor("monitor", p.stop_when_done), sim(&root, "sim", "the run itself") {
    const PlatformParams& pp = p.platform;
    hypervisor = std::make_unique<hv::Hypervisor>(p.hypervisor, platform.cores(), pp.memory, pp.frequency, &root);
    stats::Group& vm_root = root.subgroup("vm", "per-VM statistics");
    for (std::size_t i = 0; i < p.vms.size(); ++i) {
      const VmParams& vp = p.vms[i];
      auto kernel = std::make_unique<guest::Kernel>(vp.kernel, vp.name, static_cast<unsigned>(vp.vcpus), vp.memory,
                                                    pp.frequency, p.seed * 1000003ull + i, &monitor);
      stats::Group& vg = vm_root.subgroup(vp.name, "VM " + vp.name);
      for (std::size_t w = 0; w < vp.workloads.size(); ++w) {
        const auto& wp = vp.workloads[w];
        auto wl = workloads::Workload::create(wp, &vg, fmt::format("workload{}", w));
        kernel->add_process(wl, static_cast<unsigned>(wp.threads));
      }
      hypervisor->add_vm({vp.name, static_cast<unsigned>(vp.vcpus), vp.memory, kernel.get()});
      kernels.push_back(std::move(kernel));
    }
    for (unsigned i = 0; i < platform.core_count(); ++i) platform.core(i).set_reset_fiber(&hypervisor->core_fiber(i));
  }

  const ExperimentParams& params;
  stats::Group root;
  models::Platform platform;
  std::unique_ptr<hv::Hypervisor> hypervisor;
  std::vector<std::unique_ptr<guest::Kernel>> kernels;
  Monitor monitor;
  stats::Group sim;
  stats::Gauge sim_seconds{&sim, "seconds", "s", "simulated time at the end of the run"};
  stats::Gauge sim_finished{&sim, "finished", "flag", "1 if every finite workload completed"};
};

}  // namespace

RunResult run(const ExperimentParams& params, const std::string& resolved_yaml) {
  static bool ran = false;
  if (ran) throw cpu::SimulationError("SystemC allows one simulation per process; start a new process");
  ran = true;
  setenv("SYSTEMC_DISABLE_COPYRIGHT_MESSAGE", "1", 0);
  // SystemC reports stop the run with a message rather than abort().
  sc_core::sc_report_handler::set_actions(sc_core::SC_ERROR, sc_core::SC_DISPLAY | sc_core::SC_THROW);
  sc_core::sc_report_handler::set_actions(sc_core::SC_FATAL, sc_core::SC_DISPLAY | sc_core::SC_THROW);

  auto sys = std::make_unique<System>(params);
  auto run_until = [&](std::uint64_t ps) {
    sc_core::sc_time target = time_ps(ps);
    if (sc_core::sc_time_stamp() < target && !sys->monitor.finished())
      sc_core::sc_start(target - sc_core::sc_time_stamp());
  };
  try {
    if (params.warmup > 0 && params.warmup < params.duration) {
      run_until(params.warmup);
      sys->root.reset();
    }
    run_until(params.duration);
  } catch (const sc_core::sc_report& r) {
    throw cpu::SimulationError(r.get_msg());
  }

  RunResult res;
  res.simulated_ps = sc_core::sc_time_stamp().value();
  res.finished = sys->monitor.finished();
  sys->sim_seconds.set(static_cast<double>(res.simulated_ps) / 1e12);
  sys->sim_finished.set(res.finished ? 1 : 0);
  for (unsigned i = 0; i < sys->hypervisor->vm_count(); ++i) {
    const std::string& name = sys->hypervisor->vm_name(i);
    if (!sys->hypervisor->vm_crash(i).empty()) res.vm_notes.push_back(name + ": crashed: " + sys->hypervisor->vm_crash(i));
    if (!sys->kernels[i]->panic_message().empty()) res.vm_notes.push_back(name + ": " + sys->kernels[i]->panic_message());
  }
  for (const auto& line : sys->platform.debugcon().lines()) res.vm_notes.push_back("debug console: " + line);
  res.stats_json = stats::to_json(sys->root);
  res.resolved_yaml = resolved_yaml;
  res.summary = summary(sys->root, params);
  // The SystemC kernel is not torn down: it cannot be restarted anyway, and
  // fibers suspended mid-operation must not be unwound. The system stays
  // reachable until the process ends.
  static System* kept = nullptr;
  kept = sys.release();
  (void)kept;
  return res;
}

}  // namespace vmx::experiment
