// A program profiled from inside its VM with the guest kernel's perf
// facility (guest/perf.cc; docs/pmu.md, "Profiling in a guest"). Each round
// runs two phases: 0, pure computation (a loop of 1000-instruction bodies); 1, a pass of loads over a working
// set. In count mode it reads the counters with RDPMC around the whole
// work, as `perf stat` would, and PMC0 at the end of every round; in sample mode PMC0 interrupts every
// sample_period events and the kernel counts a sample for the phase the
// program was in, as `perf record` would. Its statistics are what the
// program itself observes (the counters, its TSC readings); the simulator's
// ground truth is elsewhere (vm.<name>.vcpu<i>, system.cpu<i>).
#include <memory>
#include <stdexcept>

#include "workloads/workload.h"

namespace vmx::workloads {

namespace {

class Profile final : public Workload {
 public:
  Profile(const ProfileParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return true; }
  void run(guest::Thread& t) override {
    const std::uint64_t base = t.mmap(m_p.working_set);
    if (!base) throw std::runtime_error("mmap failed");
    const bool sample = m_p.mode == "sample";
    // Touch every page first, so that the guest kernel's demand paging
    // (and the hypervisor's EPT faults) stay outside the measurement.
    for (std::uint64_t off = 0; off < m_p.working_set; off += 4096) t.store(base + off, 0);
    started(t);
    if (!t.perf_open(m_p.event, sample ? m_p.sample_period : 0)) {
      finished(t);  // no PMU in this VM: nothing is counted
      return;
    }
    ++m_available;
    // 48-bit counters: differences modulo 2^48.
    constexpr std::uint64_t kMask = (1ull << 48) - 1;
    const std::uint64_t i0 = t.perf_read(0), c0 = t.perf_read(1), e0 = t.perf_read(2);
    std::uint64_t e_prev = e0;
    for (std::uint64_t r = 0; r < m_p.rounds; ++r) {
      t.set_phase(0);
      std::uint64_t tsc = t.cpu().rdtsc();
      // A loop of 1000-instruction bodies: an interrupt (a PMI) is taken
      // between operations, so one long compute would hide its time from
      // sampling.
      for (std::uint64_t left = m_p.compute; left;) {
        const std::uint64_t n = left < 1000 ? left : 1000;
        t.compute(n);
        left -= n;
      }
      m_issued += m_p.compute;
      std::uint64_t tsc1 = t.cpu().rdtsc();
      m_phase_cycles0 += tsc1 - tsc;
      t.set_phase(1);
      for (std::uint64_t off = 0; off + 8 <= m_p.working_set; off += m_p.stride) {
        t.load(base + off);
        t.compute(2);
        m_issued += 3;
      }
      m_phase_cycles1 += t.cpu().rdtsc() - tsc1;
      if (!sample) {
        // PMC0's events in this round (one RDPMC per round).
        const std::uint64_t e = t.perf_read(2);
        const std::uint64_t n = (e - e_prev) & kMask;
        e_prev = e;
        m_round_events.sample(n);
        if (r == 0) m_first_round_events.set(static_cast<double>(n));
        if (static_cast<double>(n) > m_max_round_events.value()) m_max_round_events.set(static_cast<double>(n));
      }
      m_stats.operations += 1;
      if (m_p.pause) t.sleep(m_p.pause);
    }
    const std::uint64_t i1 = t.perf_read(0), c1 = t.perf_read(1), e1 = t.perf_read(2);
    t.perf_close();
    m_instructions += (i1 - i0) & kMask;
    m_cycles += (c1 - c0) & kMask;
    if (!sample) m_events += (e1 - e0) & kMask;
    m_samples0 += t.perf_samples()[0];
    m_samples1 += t.perf_samples()[1];
    finished(t);
  }

 private:
  ProfileParams m_p;
  stats::Counter m_available{&m_stats, "pmu_available", "threads", "threads that found a PMU (CPUID.0AH)"};
  stats::Counter m_instructions{&m_stats, "counted_instructions", "instructions",
                                "instructions retired as the fixed counter counted them around the work"};
  stats::Counter m_cycles{&m_stats, "counted_cycles", "cycles", "core cycles as the fixed counter counted them"};
  stats::Counter m_events{&m_stats, "counted_events", "events", "count mode: PMC0's event around the work"};
  stats::Counter m_issued{&m_stats, "issued_instructions", "instructions",
                          "instructions the work itself issued (its compute and loads)"};
  stats::Counter m_phase_cycles0{&m_stats, "phase0_cycles", "cycles", "TSC cycles spent in phase 0 (compute)"};
  stats::Counter m_phase_cycles1{&m_stats, "phase1_cycles", "cycles", "TSC cycles spent in phase 1 (loads)"};
  stats::Histogram m_round_events{&m_stats, "round_events", "events",
                                  "count mode: PMC0's events in each round (read with RDPMC at the round's end)"};
  stats::Gauge m_first_round_events{&m_stats, "first_round_events", "events",
                                    "count mode: PMC0's events in the first round (cold caches)"};
  stats::Gauge m_max_round_events{&m_stats, "max_round_events", "events", "count mode: the most events of one round"};
  stats::Counter m_samples0{&m_stats, "phase0_samples", "samples", "sample mode: samples taken in phase 0"};
  stats::Counter m_samples1{&m_stats, "phase1_samples", "samples", "sample mode: samples taken in phase 1"};
};

}  // namespace

std::shared_ptr<Workload> Workload::create_profile(const ProfileParams& p, stats::Group* parent,
                                                   const std::string& name) {
  return std::make_shared<Profile>(p, parent, name);
}

}  // namespace vmx::workloads
