// Per-core vCPU schedulers of the hypervisor (docs/scheduling.md). A core
// owns one Scheduler, which holds the vCPUs pinned to it and decides which
// one runs. The scheduler's bookkeeping is simulator state; its work is
// charged by the hypervisor's run loop as costs.schedule instructions each
// time it picks. Times are TSC cycles of the core's clock.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

namespace vmx::hv {

/// What a scheduler knows about a vCPU. The hypervisor's vCPU derives from it.
struct SchedEntity {
  virtual ~SchedEntity() = default;
  /// Not blocked (HLT) and not dead.
  virtual bool sched_runnable() const = 0;

  // Set by the hypervisor when the vCPU is created.
  std::uint64_t vm_weight = 256;  // the VM's weight
  std::uint64_t vm_vcpus = 1;     // its share is spread over this many vCPUs
  std::uint64_t cap = 0;          // percent of one core per accounting period (0: uncapped)
  unsigned priority = 0;          // realtime: higher runs first
  std::uint64_t dl_runtime = 0;   // edf: reserved cycles per period (0: no reservation, background)
  std::uint64_t dl_period = 0;    // edf: reservation period in cycles, also the relative deadline

  // Scheduler state.
  bool queued = false;              // round robin: in the run queue
  std::uint64_t vruntime = 0;       // proportional: weighted runtime
  std::uint64_t period_used = 0;    // proportional: cycles run in the current cap period
  std::uint64_t slice_left = 0;     // realtime: rest of the slice of a preempted vCPU (0: a full one)
  std::uint64_t dl_deadline = 0;    // edf: absolute deadline of the current reservation period
  std::uint64_t dl_budget = 0;      // edf: reserved cycles left until dl_deadline
  bool dl_throttled = false;        // edf: budget used up, waits for the replenishment at dl_deadline
};

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  /// A new vCPU, runnable, or one migrated here from another core.
  virtual void add(SchedEntity& e) = 0;
  /// `e` leaves this core (migration); it is neither running nor picked.
  virtual void remove(SchedEntity& e) = 0;
  /// `e` became runnable again after blocking (was_blocked) or got an
  /// interrupt while runnable, at `now` (the waker's clock).
  virtual void wake(SchedEntity& e, bool was_blocked, std::uint64_t now) = 0;
  /// Brings the running vCPU's runtime up to `now` (no cost).
  virtual void account(std::uint64_t now) = 0;
  /// Whether account() does anything (the run loop reads the TSC for it on
  /// every pass only then).
  virtual bool accounts_runtime() const = 0;
  /// Whether the run loop must run the scheduler's pick path (charged as
  /// costs.schedule) rather than re-entering `last`, the vCPU that just exited.
  virtual bool must_pick(const SchedEntity* last) const = 0;
  /// The vCPU to run next, or nullptr (the core halts).
  virtual SchedEntity* pick(std::uint64_t now) = 0;
  /// The core's timer fired at `now`.
  virtual void tick(std::uint64_t now) = 0;
  /// When the scheduler next needs the core's timer (0: never), given that
  /// `runnable` vCPUs on the core are runnable.
  virtual std::uint64_t deadline(std::size_t runnable) const = 0;

  /// The core starts running its loop at `now`.
  virtual void start(std::uint64_t now) = 0;
  /// Whether the run loop reprograms the core's timer after a pick (the
  /// deadline depends on which vCPU was picked).
  virtual bool timer_after_pick() const = 0;

  /// "round_robin", "proportional", "realtime" or "edf".
  static std::unique_ptr<Scheduler> create(const std::string& kind, std::uint64_t slice_cycles,
                                           std::uint64_t cap_period_cycles);
};

/// Round robin: a FIFO run queue, rotated when the slice ends.
class RoundRobinScheduler : public Scheduler {
 public:
  explicit RoundRobinScheduler(std::uint64_t slice_cycles) : m_slice(slice_cycles) {}
  void start(std::uint64_t now) override { m_slice_end = now + m_slice; }
  bool timer_after_pick() const override { return false; }
  void add(SchedEntity& e) override;
  void remove(SchedEntity& e) override;
  void wake(SchedEntity& e, bool was_blocked, std::uint64_t now) override;
  void account(std::uint64_t) override {}
  bool accounts_runtime() const override { return false; }
  bool must_pick(const SchedEntity* last) const override;
  SchedEntity* pick(std::uint64_t now) override;
  void tick(std::uint64_t now) override;
  std::uint64_t deadline(std::size_t runnable) const override;

 private:
  std::uint64_t m_slice;
  std::uint64_t m_slice_end = 0;
  std::deque<SchedEntity*> m_runq;
};

/// Proportional share (in the manner of Linux CFS and Xen credit2): the
/// runnable vCPU with the smallest virtual runtime runs; virtual runtime
/// grows by runtime x 256 / (VM weight / VM vCPUs). Preemption at slice
/// ends; optional caps per accounting period.
class ProportionalScheduler : public Scheduler {
 public:
  ProportionalScheduler(std::uint64_t slice_cycles, std::uint64_t period_cycles)
      : m_slice(slice_cycles), m_period(period_cycles) {}
  void start(std::uint64_t now) override { m_period_start = now; }
  bool timer_after_pick() const override { return true; }
  void add(SchedEntity& e) override;
  void remove(SchedEntity& e) override;
  void wake(SchedEntity& e, bool was_blocked, std::uint64_t now) override;
  void account(std::uint64_t now) override;
  bool accounts_runtime() const override { return true; }
  bool must_pick(const SchedEntity* last) const override;
  SchedEntity* pick(std::uint64_t now) override;
  void tick(std::uint64_t now) override;
  std::uint64_t deadline(std::size_t runnable) const override;

 private:
  bool throttled(const SchedEntity& e) const { return e.cap && e.period_used >= budget(e); }
  std::uint64_t budget(const SchedEntity& e) const { return m_period * e.cap / 100; }
  bool eligible(const SchedEntity& e) const { return e.sched_runnable() && !throttled(e); }
  void roll_period(std::uint64_t now);
  void update_min();

  std::uint64_t m_slice, m_period;
  std::uint64_t m_period_start = 0;
  std::uint64_t m_slice_end = 0;
  std::uint64_t m_min_vruntime = 0;
  std::vector<SchedEntity*> m_all;
  SchedEntity* m_current = nullptr;
  std::uint64_t m_since = 0;
  bool m_need_resched = false;
};

/// Fixed-priority real time (in the manner of Linux SCHED_RR): the runnable
/// vCPU of the highest priority runs; within a priority the run queue is FIFO
/// and rotated when the slice ends while an equal peer waits. Preemptive: a
/// vCPU of higher priority than the running one, once runnable, is picked at
/// the run loop's next pass (the waker makes the target core exit: its timer
/// handler or a reschedule IPI), not at the slice end.
class RealtimeScheduler : public Scheduler {
 public:
  explicit RealtimeScheduler(std::uint64_t slice_cycles) : m_slice(slice_cycles) {}
  void start(std::uint64_t now) override { m_slice_end = now + m_slice; }
  bool timer_after_pick() const override { return true; }
  void add(SchedEntity& e) override;
  void remove(SchedEntity& e) override;
  void wake(SchedEntity& e, bool was_blocked, std::uint64_t now) override;
  void account(std::uint64_t) override {}
  bool accounts_runtime() const override { return false; }
  bool must_pick(const SchedEntity* last) const override;
  SchedEntity* pick(std::uint64_t now) override;
  void tick(std::uint64_t now) override;
  std::uint64_t deadline(std::size_t runnable) const override;

 private:
  /// The first runnable vCPU of the highest priority in queue order.
  SchedEntity* best() const;

  std::uint64_t m_slice;
  std::uint64_t m_slice_end = 0;
  std::deque<SchedEntity*> m_runq;  // every vCPU of the core, in FIFO order
  SchedEntity* m_current = nullptr;
};

/// Earliest deadline first over constant-bandwidth reservations (in the
/// manner of Linux SCHED_DEADLINE, hard CBS): a vCPU with a reservation
/// (runtime Q every period P) runs while it has budget, the one with the
/// earliest absolute deadline first; a vCPU that used its Q is throttled
/// until its deadline, when Q is replenished and the deadline moves one P
/// on. A vCPU that wakes after its deadline, or with more budget left than
/// its bandwidth allows until the deadline, starts a new period at the
/// wake-up (the CBS wake-up rule), so sleeping earns nothing. vCPUs without
/// a reservation run round robin in the time reservations leave.
class EdfScheduler : public Scheduler {
 public:
  explicit EdfScheduler(std::uint64_t slice_cycles) : m_slice(slice_cycles) {}
  void start(std::uint64_t now) override;
  bool timer_after_pick() const override { return true; }
  void add(SchedEntity& e) override;
  void remove(SchedEntity& e) override;
  void wake(SchedEntity& e, bool was_blocked, std::uint64_t now) override;
  void account(std::uint64_t now) override;
  bool accounts_runtime() const override { return true; }
  bool must_pick(const SchedEntity* last) const override;
  SchedEntity* pick(std::uint64_t now) override;
  void tick(std::uint64_t now) override;
  std::uint64_t deadline(std::size_t runnable) const override;

 private:
  static bool reserved(const SchedEntity& e) { return e.dl_period != 0; }
  void replenish(std::uint64_t now);
  SchedEntity* best() const;

  std::uint64_t m_slice;
  std::uint64_t m_slice_end = 0;
  std::deque<SchedEntity*> m_runq;  // every vCPU of the core; FIFO order for the background
  SchedEntity* m_current = nullptr;
  std::uint64_t m_since = 0;
};

}  // namespace vmx::hv
