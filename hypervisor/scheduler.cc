#include "hypervisor/scheduler.h"

#include <algorithm>
#include <stdexcept>

namespace vmx::hv {

std::unique_ptr<Scheduler> Scheduler::create(const std::string& kind, std::uint64_t slice_cycles,
                                             std::uint64_t cap_period_cycles) {
  if (kind == "round_robin") return std::make_unique<RoundRobinScheduler>(slice_cycles);
  if (kind == "proportional") return std::make_unique<ProportionalScheduler>(slice_cycles, cap_period_cycles);
  if (kind == "realtime") return std::make_unique<RealtimeScheduler>(slice_cycles);
  if (kind == "edf") return std::make_unique<EdfScheduler>(slice_cycles);
  throw std::invalid_argument("hypervisor.scheduler: unknown scheduler " + kind);
}

// ---------------------------------------------------------------------------
// Round robin.

void RoundRobinScheduler::add(SchedEntity& e) {
  m_runq.push_back(&e);
  e.queued = true;
}

void RoundRobinScheduler::remove(SchedEntity& e) {
  auto it = std::find(m_runq.begin(), m_runq.end(), &e);
  if (it != m_runq.end()) m_runq.erase(it);
  e.queued = false;
}

void RoundRobinScheduler::wake(SchedEntity& e, bool, std::uint64_t) {
  if (!e.queued) {
    m_runq.push_back(&e);
    e.queued = true;
  }
}

bool RoundRobinScheduler::must_pick(const SchedEntity* last) const {
  // Going back into the vCPU that just exited skips the scheduler, as KVM's
  // run loop does when nothing needs rescheduling.
  return m_runq.empty() || m_runq.front() != last || !last->sched_runnable();
}

SchedEntity* RoundRobinScheduler::pick(std::uint64_t) {
  while (!m_runq.empty() && !m_runq.front()->sched_runnable()) {
    m_runq.front()->queued = false;
    m_runq.pop_front();
  }
  return m_runq.empty() ? nullptr : m_runq.front();
}

void RoundRobinScheduler::tick(std::uint64_t now) {
  if (now >= m_slice_end) {
    // Time slice over: the running vCPU goes to the back of the queue.
    if (!m_runq.empty()) {
      SchedEntity* front = m_runq.front();
      m_runq.pop_front();
      m_runq.push_back(front);
    }
    m_slice_end = now + m_slice;
  }
}

std::uint64_t RoundRobinScheduler::deadline(std::size_t runnable) const {
  return runnable > 1 ? m_slice_end : 0;
}

// ---------------------------------------------------------------------------
// Proportional share.

void ProportionalScheduler::add(SchedEntity& e) {
  e.vruntime += m_min_vruntime;  // a new vCPU's is 0; a migrated one's is its lag
  m_all.push_back(&e);
}

void ProportionalScheduler::remove(SchedEntity& e) {
  auto it = std::find(m_all.begin(), m_all.end(), &e);
  if (it != m_all.end()) m_all.erase(it);
  if (m_current == &e) m_current = nullptr;
  // Virtual runtimes only compare within a core: the vCPU keeps its lag
  // behind this core's minimum, which add() puts on the new core's (as CFS
  // renormalises a migrating task's vruntime).
  e.vruntime = e.vruntime > m_min_vruntime ? e.vruntime - m_min_vruntime : 0;
}

void ProportionalScheduler::wake(SchedEntity& e, bool was_blocked, std::uint64_t) {
  // A sleeper does not bank the time it slept: it comes back no further
  // behind than the core's minimum.
  if (was_blocked) e.vruntime = std::max(e.vruntime, m_min_vruntime);
}

void ProportionalScheduler::roll_period(std::uint64_t now) {
  if (now < m_period_start + m_period) return;
  m_period_start += (now - m_period_start) / m_period * m_period;
  for (SchedEntity* e : m_all) e->period_used = 0;
  m_need_resched = true;  // throttled vCPUs may run again
}

void ProportionalScheduler::update_min() {
  bool any = false;
  std::uint64_t m = 0;
  for (const SchedEntity* e : m_all)
    if (e->sched_runnable() && (!any || e->vruntime < m)) {
      m = e->vruntime;
      any = true;
    }
  if (any && m > m_min_vruntime) m_min_vruntime = m;
}

void ProportionalScheduler::account(std::uint64_t now) {
  if (m_current && now > m_since) {
    SchedEntity& e = *m_current;
    const std::uint64_t d = now - m_since;
    const std::uint64_t old_start = m_period_start;
    roll_period(now);
    if (m_period_start != old_start) e.period_used = now - std::max(m_since, m_period_start);
    else e.period_used += d;
    // Runtime scaled by 256 / (VM weight / VM vCPUs): a default-weight
    // one-vCPU VM's virtual runtime is its runtime.
    e.vruntime += static_cast<std::uint64_t>(static_cast<unsigned __int128>(d) * 256 * e.vm_vcpus / e.vm_weight);
    m_since = now;
    if (throttled(e)) m_need_resched = true;
  } else {
    roll_period(now);
    m_since = std::max(m_since, now);
  }
  update_min();
}

bool ProportionalScheduler::must_pick(const SchedEntity* last) const {
  return !last || last != m_current || !last->sched_runnable() || m_need_resched || throttled(*last);
}

SchedEntity* ProportionalScheduler::pick(std::uint64_t now) {
  account(now);
  m_need_resched = false;
  SchedEntity* best = nullptr;
  for (SchedEntity* e : m_all)
    if (eligible(*e) && (!best || e->vruntime < best->vruntime)) best = e;
  m_current = best;
  m_since = now;
  m_slice_end = now + m_slice;
  return best;
}

void ProportionalScheduler::tick(std::uint64_t now) {
  account(now);
  if (m_current && now >= m_slice_end) m_need_resched = true;
}

std::uint64_t ProportionalScheduler::deadline(std::size_t) const {
  std::uint64_t next = 0;
  auto consider = [&next](std::uint64_t t) {
    if (t && (!next || t < next)) next = t;
  };
  const std::uint64_t period_end = m_period_start + m_period;
  bool other_eligible = false, any_throttled = false;
  for (const SchedEntity* e : m_all) {
    if (!e->sched_runnable()) continue;
    if (throttled(*e)) any_throttled = true;
    else if (e != m_current) other_eligible = true;
  }
  // Slice end, when another vCPU waits for the core.
  if (m_current && other_eligible) consider(m_slice_end);
  // The running vCPU's cap budget runs out.
  if (m_current && m_current->cap && !throttled(*m_current)) {
    std::uint64_t out = m_since + (budget(*m_current) - m_current->period_used);
    if (out < period_end) consider(out);
  }
  // A throttled vCPU may run again at the period boundary.
  if (any_throttled) consider(period_end);
  return next;
}

// ---------------------------------------------------------------------------
// Fixed-priority real time.
//
// The queue keeps every vCPU of the core (blocked ones included, so that a
// wake-up keeps its FIFO position as SCHED_FIFO's "head of its list" for a
// preempted task); a vCPU goes to the back of its priority only when its
// slice ends while an equal peer is runnable, or when it blocks and wakes.

void RealtimeScheduler::add(SchedEntity& e) {
  m_runq.push_back(&e);
  e.queued = true;
}

void RealtimeScheduler::remove(SchedEntity& e) {
  auto it = std::find(m_runq.begin(), m_runq.end(), &e);
  if (it != m_runq.end()) m_runq.erase(it);
  e.queued = false;
  if (m_current == &e) m_current = nullptr;
}

void RealtimeScheduler::wake(SchedEntity& e, bool was_blocked, std::uint64_t) {
  // A vCPU that blocked and wakes goes to the back of its priority's list
  // (POSIX SCHED_FIFO: a thread that becomes runnable is inserted at the tail).
  if (!was_blocked) return;
  e.slice_left = 0;
  auto it = std::find(m_runq.begin(), m_runq.end(), &e);
  if (it != m_runq.end()) m_runq.erase(it);
  m_runq.push_back(&e);
}

SchedEntity* RealtimeScheduler::best() const {
  SchedEntity* b = nullptr;
  for (SchedEntity* e : m_runq)
    if (e->sched_runnable() && (!b || e->priority > b->priority)) b = e;
  return b;
}

bool RealtimeScheduler::must_pick(const SchedEntity* last) const {
  // Re-entering the vCPU that just exited skips the pick path unless a
  // vCPU of higher priority became runnable or the slice rotated it out.
  return !last || best() != last;
}

SchedEntity* RealtimeScheduler::pick(std::uint64_t now) {
  SchedEntity* b = best();
  if (b != m_current) {
    // A vCPU preempted by a higher priority keeps the rest of its slice (as
    // SCHED_RR's time_slice), so that frequent preemption does not deny its
    // equals their turn; the newly running one resumes its own rest or
    // starts a full slice.
    if (m_current && m_current->sched_runnable()) m_current->slice_left = m_slice_end > now ? m_slice_end - now : 0;
    m_slice_end = now + (b && b->slice_left ? b->slice_left : m_slice);
    if (b) b->slice_left = 0;
  }
  m_current = b;
  return b;
}

void RealtimeScheduler::tick(std::uint64_t now) {
  if (now < m_slice_end) return;
  m_slice_end = now + m_slice;
  if (!m_current || !m_current->sched_runnable()) return;
  // Round robin among equals: the running vCPU goes behind its peers, and
  // the next pick starts a fresh slice for whichever runs.
  bool peer = false;
  for (const SchedEntity* e : m_runq)
    peer = peer || (e != m_current && e->sched_runnable() && e->priority == m_current->priority);
  if (!peer) return;
  auto it = std::find(m_runq.begin(), m_runq.end(), m_current);
  if (it != m_runq.end()) m_runq.erase(it);
  m_runq.push_back(m_current);
  m_current->slice_left = 0;
  m_current = nullptr;
}

std::uint64_t RealtimeScheduler::deadline(std::size_t) const {
  // The timer is needed only to rotate among runnable equals of the running
  // vCPU; preemption by a higher priority comes from the wake-up itself.
  if (!m_current || !m_current->sched_runnable()) return 0;
  for (const SchedEntity* e : m_runq)
    if (e != m_current && e->sched_runnable() && e->priority == m_current->priority) return m_slice_end;
  return 0;
}

// ---------------------------------------------------------------------------
// Earliest deadline first over CBS reservations.

void EdfScheduler::start(std::uint64_t now) {
  m_slice_end = now + m_slice;
  m_since = now;
  // Every reservation starts its first period when the core does.
  for (SchedEntity* e : m_runq)
    if (reserved(*e)) {
      e->dl_deadline = now + e->dl_period;
      e->dl_budget = e->dl_runtime;
    }
}

void EdfScheduler::add(SchedEntity& e) {
  m_runq.push_back(&e);
  e.queued = true;
  // A migrated vCPU keeps its deadline and budget (absolute TSC times).
}

void EdfScheduler::remove(SchedEntity& e) {
  auto it = std::find(m_runq.begin(), m_runq.end(), &e);
  if (it != m_runq.end()) m_runq.erase(it);
  e.queued = false;
  if (m_current == &e) m_current = nullptr;
}

void EdfScheduler::wake(SchedEntity& e, bool was_blocked, std::uint64_t now) {
  if (!was_blocked) return;
  if (reserved(e)) {
    // CBS wake-up rule: keep (deadline, budget) only if the budget fits the
    // bandwidth until the deadline: budget / (deadline - now) <= Q / P.
    const bool past = now >= e.dl_deadline;
    const bool too_much = !past && static_cast<unsigned __int128>(e.dl_budget) * e.dl_period >
                                       static_cast<unsigned __int128>(e.dl_deadline - now) * e.dl_runtime;
    if (past || too_much) {
      e.dl_deadline = now + e.dl_period;
      e.dl_budget = e.dl_runtime;
      e.dl_throttled = false;
    }
  } else {
    // Background: back of the FIFO, as the round-robin scheduler.
    auto it = std::find(m_runq.begin(), m_runq.end(), &e);
    if (it != m_runq.end()) m_runq.erase(it);
    m_runq.push_back(&e);
  }
}

void EdfScheduler::replenish(std::uint64_t now) {
  for (SchedEntity* e : m_runq)
    if (reserved(*e) && e->dl_throttled && now >= e->dl_deadline) {
      // Hard CBS: the budget comes back at the deadline, which moves on by
      // whole periods.
      e->dl_deadline += ((now - e->dl_deadline) / e->dl_period + 1) * e->dl_period;
      e->dl_budget = e->dl_runtime;
      e->dl_throttled = false;
    }
}

void EdfScheduler::account(std::uint64_t now) {
  if (m_current && now > m_since && reserved(*m_current)) {
    const std::uint64_t d = now - m_since;
    SchedEntity& e = *m_current;
    e.dl_budget = d >= e.dl_budget ? 0 : e.dl_budget - d;
    if (e.dl_budget == 0) e.dl_throttled = true;
  }
  if (now > m_since) m_since = now;
  replenish(now);
}

SchedEntity* EdfScheduler::best() const {
  SchedEntity* b = nullptr;
  for (SchedEntity* e : m_runq)
    if (reserved(*e) && e->sched_runnable() && !e->dl_throttled && (!b || e->dl_deadline < b->dl_deadline)) b = e;
  if (b) return b;
  for (SchedEntity* e : m_runq)
    if (!reserved(*e) && e->sched_runnable()) return e;  // background, FIFO
  return nullptr;
}

bool EdfScheduler::must_pick(const SchedEntity* last) const { return !last || best() != last; }

SchedEntity* EdfScheduler::pick(std::uint64_t now) {
  account(now);
  SchedEntity* b = best();
  if (b != m_current) m_slice_end = now + m_slice;
  m_current = b;
  m_since = now;
  return b;
}

void EdfScheduler::tick(std::uint64_t now) {
  account(now);
  if (now < m_slice_end) return;
  m_slice_end = now + m_slice;
  if (!m_current || reserved(*m_current) || !m_current->sched_runnable()) return;
  // Round robin among background vCPUs.
  bool peer = false;
  for (const SchedEntity* e : m_runq) peer = peer || (e != m_current && !reserved(*e) && e->sched_runnable());
  if (!peer) return;
  auto it = std::find(m_runq.begin(), m_runq.end(), m_current);
  if (it != m_runq.end()) m_runq.erase(it);
  m_runq.push_back(m_current);
}

std::uint64_t EdfScheduler::deadline(std::size_t) const {
  std::uint64_t next = 0;
  auto consider = [&next](std::uint64_t t) {
    if (t && (!next || t < next)) next = t;
  };
  // The running reservation's budget runs out.
  if (m_current && reserved(*m_current) && !m_current->dl_throttled) consider(m_since + m_current->dl_budget);
  // A throttled reservation is replenished at its deadline.
  for (const SchedEntity* e : m_runq)
    if (reserved(*e) && e->dl_throttled && e->sched_runnable()) consider(e->dl_deadline);
  // Background slice end, when another background vCPU waits.
  if (m_current && !reserved(*m_current))
    for (const SchedEntity* e : m_runq)
      if (e != m_current && !reserved(*e) && e->sched_runnable()) {
        consider(m_slice_end);
        break;
      }
  return next;
}

}  // namespace vmx::hv
