// The guest kernel's thread scheduler: its parameters, statistics and the
// layout of its data in guest memory. The scheduling code itself is part of
// guest::Kernel (guest/sched.cc); docs/scheduling.md, "Guest scheduler".
//
// Per-vCPU run queues ordered by weighted virtual runtime (in the manner of
// Linux CFS), wake-up placement, periodic load balancing at the tick, and a
// paravirtual mode that charges threads by steal-corrected time and does not
// move work to vCPUs whose steal-time record says they are preempted.
#pragma once

#include <cstdint>

#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::guest {

struct SchedParams {
  bool pv;
  std::uint64_t wakeup_granularity;  // ps
  std::uint64_t wakeup_credit;       // ps
  std::uint64_t balance_interval;    // ps
  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(pv, "pv", "false", Spec(Unit::Flag),
            "Paravirtual-aware scheduling: charge threads by elapsed time minus the steal time that accrued "
            "meanwhile (read from the vCPU's steal-time record, as Linux with CONFIG_PARAVIRT_TIME_ACCOUNTING), "
            "and never place a woken thread on, or push queued work to, a vCPU whose record has `preempted` set "
            "(as Linux's vcpu_is_preempted() in available_idle_cpu()). Needs kernel.pv_steal.");
    v.param(wakeup_granularity, "wakeup_granularity", "1ms", Spec(Unit::Time),
            "A woken thread preempts the running one only if its virtual runtime is smaller by more than this "
            "(Linux sysctl_sched_wakeup_granularity, 1 ms base).");
    v.param(wakeup_credit, "wakeup_credit", "3ms", Spec(Unit::Time),
            "A thread waking from sleep is placed at most this far behind its run queue's minimum virtual "
            "runtime (Linux GENTLE_FAIR_SLEEPERS: half of sysctl_sched_latency, 6 ms base).");
    v.param(balance_interval, "balance_interval", "4ms", Spec(Unit::Time).at_least(1e6),
            "Each vCPU runs the periodic load balancer at the first tick this long after its last run "
            "(assumption: Linux's MC-domain interval is of the order of the number of CPUs in ms; one tick here).");
  }
};

/// Linux's sched_prio_to_weight: the load weight of nice -20..19 (nice 0 is
/// 1024; each step is about 1.25x).
std::uint64_t nice_to_weight(std::int64_t nice);

/// The scheduler's counters, under vm.<name>.kernel.sched.
struct SchedStats : stats::Group {
  using Group::Group;
  stats::Counter runtime{this, "runtime_cycles", "cycles",
                         "run time charged to threads (steal-corrected under kernel.sched.pv)"};
  stats::Counter steal_excluded{this, "steal_excluded_cycles", "cycles",
                                "stolen time the pv scheduler did not charge to the running thread"};
  stats::Counter switches{this, "switches", "events", "context switches between threads (or to idle)"};
  stats::Counter wakeups{this, "wakeups", "events", "threads woken from sleep"};
  stats::Counter wake_remote{this, "wake_remote", "events", "woken threads placed on another vCPU than their own"};
  stats::Counter wake_preemptions{this, "wake_preemptions", "events",
                                  "running threads preempted by a woken one (wake-up granularity exceeded)"};
  stats::Counter balance_runs{this, "balance_runs", "events", "periodic and newly-idle load-balancer runs"};
  stats::Counter migrations{this, "migrations", "threads", "queued threads moved between vCPUs by the balancer"};
  stats::Counter preempted_skips{this, "preempted_skips", "events",
                                 "vCPUs passed over as a destination because their record showed them preempted"};
  stats::Counter preempted_seen{this, "preempted_seen", "events",
                                "vCPUs found preempted when a placement or balancing decision looked"};
};

}  // namespace vmx::guest
