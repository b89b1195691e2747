// The guest kernel's thread scheduler (docs/scheduling.md, "Guest scheduler").
//
// Its decisions are made on the kernel's C++ copy of its run queues; every
// piece of that state a real kernel keeps in memory is also touched as
// memory in the kernel image (struct rq per vCPU, one scheduling entity per
// thread), so that scheduling costs loads, stores and cache traffic, and
// looking at another vCPU's queue costs a load of its line. Other cores run
// between operations, so each path performs its loads first, then decides and
// updates the C++ state with no operation in between, then stores.
#include <algorithm>
#include <array>

#include "abi/steal_time.h"
#include "guest/kernel.h"

namespace vmx::guest {

using cpu::Core;

namespace {
// Kernel text offsets of the scheduler's paths (kernel.cc uses 0x1000-0x6000).
constexpr std::uint64_t kCodeAccount = 0x3400;
constexpr std::uint64_t kCodeWake = 0x7000;
constexpr std::uint64_t kCodeBalance = 0x7400;
constexpr std::uint64_t kCodeMigrate = 0x7800;
// struct rq fields (offsets in its two lines).
constexpr std::uint64_t kRqNr = 8, kRqLoad = 16, kRqMinVruntime = 24, kRqCurr = 32, kRqPrevSteal = 40,
                        kRqCapacity = 48;
// Scheduling-entity fields.
constexpr std::uint64_t kSeVruntime = 0, kSeSumExec = 8, kSeWeight = 16, kSeCpu = 24;
constexpr std::uint64_t kNiceZeroWeight = 1024;

std::uint64_t scale(std::uint64_t a, std::uint64_t mul, std::uint64_t div) {
  return static_cast<std::uint64_t>(static_cast<unsigned __int128>(a) * mul / div);
}
// A virtual runtime carried from one queue to another keeps its distance
// from the queue's minimum (Linux migrate_task_rq_fair / enqueue_entity).
std::uint64_t renormalize(std::uint64_t vruntime, std::uint64_t from_min, std::uint64_t to_min) {
  auto rel = static_cast<std::int64_t>(vruntime - from_min);
  if (rel < 0 && static_cast<std::uint64_t>(-rel) > to_min) return 0;
  return to_min + static_cast<std::uint64_t>(rel);
}
}  // namespace

std::uint64_t nice_to_weight(std::int64_t nice) {
  // kernel/sched/core.c, sched_prio_to_weight[40].
  static constexpr std::array<std::uint64_t, 40> kWeights = {
      88761, 71755, 56483, 46273, 36291, 29154, 23254, 18705, 14949, 11916, 9548, 7620, 6100, 4904,
      3906,  3121,  2501,  1991,  1586,  1277,  1024,  820,   655,   526,   423,  335,  272,  215,
      172,   137,   110,   87,    70,    56,    45,    36,    29,    23,    18,   15};
  std::int64_t i = std::clamp<std::int64_t>(nice, -20, 19) + 20;
  return kWeights[static_cast<std::size_t>(i)];
}

void Kernel::store_rq(Core& c, const Vcpu& v) {
  const std::uint64_t rq = rq_va(v.index);
  c.store(rq + kRqNr, v.nr_running());
  c.store(rq + kRqLoad, v.load());
  c.store(rq + kRqMinVruntime, v.min_vruntime);
}

std::uint64_t Kernel::read_steal(Core& c, Vcpu& v) {
  // The record changes only at VM entry, and this runs in the guest, so the
  // value is the vCPU's whole stolen time up to now (the version is not
  // re-checked: an update never overlaps a guest read here).
  std::uint64_t ns = c.load(kDirectMap + steal_record(v.index) + abi::steal_time::kSteal);
  c.load(rq_va(v.index) + kRqPrevSteal);  // the kernel's copy of the last value (rq->prev_steal_time)
  std::uint64_t delta = ns > v.steal_read_ns ? ns - v.steal_read_ns : 0;
  v.steal_read_ns = std::max(v.steal_read_ns, ns);
  if (delta) {
    *v.steal_seen += delta;
    c.store(rq_va(v.index) + kRqPrevSteal, v.steal_read_ns);
  }
  return delta;
}

void Kernel::update_capacity(Core& c, Vcpu& v, std::uint64_t now) {
  // The share of the time since the last sample that was stolen, averaged
  // with weight 1/4 per tick (a half-life of about 2.4 ticks, 10 ms at
  // HZ=250, of the order of PELT's 32 ms), as Linux's scale_rt_capacity()
  // takes steal time (with CONFIG_PARAVIRT_TIME_ACCOUNTING) off a CPU's capacity.
  if (v.cap_tsc && now > v.cap_tsc) {
    std::uint64_t stolen = scale(v.steal_read_ns - v.cap_steal_ns, m_tsc_hz, 1000000000ull);
    std::uint64_t share = std::min<std::uint64_t>(1024, scale(stolen, 1024, now - v.cap_tsc));
    v.steal_avg = (3 * v.steal_avg + share) / 4;
    v.capacity = std::max<std::uint64_t>(64, 1024 - v.steal_avg);
    c.store(rq_va(v.index) + kRqCapacity, v.capacity);
  }
  v.cap_tsc = now;
  v.cap_steal_ns = v.steal_read_ns;
}

std::uint64_t Kernel::eff_load(const Vcpu& v, std::uint64_t extra) const {
  std::uint64_t l = v.load() + extra;
  return m_p.sched.pv ? scale(l, 1024, v.capacity) : l;
}

bool Kernel::vcpu_preempted(Core& c, unsigned j) {
  // Linux's kvm_vcpu_is_preempted.
  return (c.load(kDirectMap + steal_record(j) + abi::steal_time::kPreempted, 1) & abi::steal_time::kVcpuPreempted) != 0;
}

void Kernel::update_min_vruntime(Vcpu& v) {
  // CFS: the minimum follows the smaller of the running and the leftmost
  // thread's virtual runtime, and never goes back.
  bool any = false;
  std::uint64_t m = 0;
  if (v.current) {
    m = v.current->m_vruntime;
    any = true;
  }
  if (!v.runq.empty() && (!any || v.runq.front()->m_vruntime < m)) {
    m = v.runq.front()->m_vruntime;
    any = true;
  }
  if (any && m > v.min_vruntime) v.min_vruntime = m;
}

void Kernel::update_curr(Core& c, Vcpu& v) {
  const bool pv = m_p.sched.pv && m_p.pv_steal;
  std::uint64_t stolen_ns = pv ? read_steal(c, v) : 0;
  Thread* t = v.current;
  if (!t) return;
  charge(c, m_p.costs.sched_account, kCodeAccount);
  std::uint64_t now = c.rdtsc();
  std::uint64_t delta = now > t->m_exec_start ? now - t->m_exec_start : 0;
  t->m_exec_start = now;
  if (pv) {
    // Elapsed time minus what was stolen meanwhile (Linux's rq clock_task
    // with CONFIG_PARAVIRT_TIME_ACCOUNTING).
    std::uint64_t stolen = std::min(delta, scale(stolen_ns, m_tsc_hz, 1000000000ull));
    delta -= stolen;
    m_sched_stats.steal_excluded += stolen;
  }
  t->m_vruntime += scale(delta, kNiceZeroWeight, t->m_weight);
  t->m_slice_used += delta;
  m_sched_stats.runtime += delta;
  update_min_vruntime(v);
  c.store(se_va(*t) + kSeVruntime, t->m_vruntime);
  c.store(se_va(*t) + kSeSumExec, c.load(se_va(*t) + kSeSumExec) + delta);
  c.store(rq_va(v.index) + kRqMinVruntime, v.min_vruntime);
}

void Kernel::enqueue(Core& c, Vcpu& v, Thread& t) {
  // Insert after every thread with the same or a smaller virtual runtime
  // (the red-black tree's leftmost-first order). The probes a tree descent
  // makes are the loads of the entities a binary search looks at.
  std::array<std::uint64_t, 24> probes{};
  std::size_t n = 0;
  std::size_t lo = 0, hi = v.runq.size();
  while (lo < hi) {
    std::size_t mid = (lo + hi) / 2;
    if (n < probes.size()) probes[n++] = se_va(*v.runq[mid]);
    if (v.runq[mid]->m_vruntime <= t.m_vruntime) lo = mid + 1;
    else hi = mid;
  }
  v.runq.insert(v.runq.begin() + static_cast<std::ptrdiff_t>(lo), &t);
  v.queued_load += t.m_weight;
  t.m_vcpu = v.index;
  for (std::size_t i = 0; i < n; ++i) c.load(probes[i] + kSeVruntime);
  c.store(se_va(t) + kSeVruntime, t.m_vruntime);
  c.store(se_va(t) + kSeCpu, v.index);
  store_rq(c, v);
}

Thread* Kernel::dequeue_first(Core& c, Vcpu& v) {
  if (v.runq.empty()) return nullptr;
  Thread* t = v.runq.front();
  v.runq.erase(v.runq.begin());
  v.queued_load -= t->m_weight;
  c.load(se_va(*t) + kSeVruntime);  // the cached leftmost entity
  return t;
}

bool Kernel::should_preempt(const Vcpu& v, const Thread& t) const {
  // check_preempt_wakeup: preempt if the woken thread is behind by more
  // than the wake-up granularity, in the woken thread's virtual time
  // (Linux wakeup_gran()).
  if (!v.current) return false;
  std::uint64_t gran = scale(m_gran_cycles, kNiceZeroWeight, t.m_weight);
  return t.m_vruntime + gran < v.current->m_vruntime;
}

// Reads every other vCPU's run-queue length and load (and, under pv, its
// steal-time record's preempted flag) into self.preempted.
void Kernel::scan_vcpus(Core& c, Vcpu& self, bool pv) {
  for (unsigned j = 0; j < m_vcpus.size(); ++j) {
    if (j == self.index) continue;
    c.load(rq_va(j) + kRqNr);
    c.load(rq_va(j) + kRqLoad);
    c.compute(m_p.costs.scan_vcpu);
    self.preempted[j] = pv && vcpu_preempted(c, j);
    if (self.preempted[j]) ++m_sched_stats.preempted_seen;
  }
}

void Kernel::wake_thread(Core& c, Vcpu& self, Thread& t) {
  const bool pv = m_p.sched.pv && m_p.pv_steal;
  const auto n = static_cast<unsigned>(m_vcpus.size());
  ++m_sched_stats.wakeups;
  charge(c, m_p.costs.wake_select, kCodeWake);
  // Look at every run queue (and, under pv, every other vCPU's record).
  if (n > 1) scan_vcpus(c, self, pv);
  self.preempted[self.index] = 0;  // it is running this
  // Decide: the vCPU it slept on if that one is idle, else an idle one
  // (scanning from the next), else the least loaded (ties: its own).
  const unsigned prev = t.m_vcpu;
  Vcpu* target = nullptr;
  auto usable = [&](unsigned j) {
    if (!self.preempted[j]) return true;
    ++m_sched_stats.preempted_skips;
    return false;
  };
  if (m_vcpus[prev]->nr_running() == 0 && usable(prev)) target = m_vcpus[prev].get();
  for (unsigned k = 1; !target && k < n; ++k) {
    unsigned j = (prev + k) % n;
    if (m_vcpus[j]->nr_running() == 0 && usable(j)) target = m_vcpus[j].get();
  }
  if (!target) {
    for (unsigned k = 0; k < n; ++k) {
      unsigned j = (prev + k) % n;
      if (self.preempted[j]) {
        ++m_sched_stats.preempted_skips;
        continue;
      }
      if (!target || eff_load(*m_vcpus[j]) < eff_load(*target)) target = m_vcpus[j].get();
    }
    if (!target) target = &self;
  }
  if (t.m_in_fault) {
    // Blocked inside its page-fault handler (swap I/O): it resumes on its
    // own vCPU and stays there, as a thread preempted in an interrupt.
    target = m_vcpus[prev].get();
    t.m_irq_preempted = true;
  }
  Vcpu& from = *m_vcpus[prev];
  Vcpu& to = *target;
  // Virtual runtime relative to the new queue's minimum, and no more than
  // the sleeper credit behind it.
  if (&from != &to) t.m_vruntime = renormalize(t.m_vruntime, from.min_vruntime, to.min_vruntime);
  if (to.min_vruntime > m_credit_cycles) t.m_vruntime = std::max(t.m_vruntime, to.min_vruntime - m_credit_cycles);
  const bool idle = to.current == nullptr;
  const bool preempt = should_preempt(to, t);
  if (&to != &self) rq_lock(c, to);
  enqueue(c, to, t);
  if (&to != &self) {
    rq_unlock(c, to);
    ++m_sched_stats.wake_remote;
    // Kick it: an idle vCPU is halted, a busy one checks for preemption.
    if (idle || preempt) c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{to.index} << 32) | kWakeVector);
  }
}

void Kernel::move_thread(Core& c, Vcpu& from, Vcpu& to, std::size_t pos) {
  Thread& t = *from.runq[pos];
  from.runq.erase(from.runq.begin() + static_cast<std::ptrdiff_t>(pos));
  from.queued_load -= t.m_weight;
  t.m_vruntime = renormalize(t.m_vruntime, from.min_vruntime, to.min_vruntime);
  enqueue(c, to, t);
  // Both queues are locked while the thread moves (double_rq_lock).
  rq_lock(c, from);
  rq_lock(c, to);
  charge(c, m_p.costs.migrate, kCodeMigrate);
  c.load(se_va(t) + kSeWeight);
  store_rq(c, from);
  rq_unlock(c, to);
  rq_unlock(c, from);
  ++m_sched_stats.migrations;
}

void Kernel::balance(Core& c, Vcpu& self, bool idle) {
  const bool pv = m_p.sched.pv && m_p.pv_steal;
  const auto n = static_cast<unsigned>(m_vcpus.size());
  if (n < 2) return;
  ++m_sched_stats.balance_runs;
  charge(c, m_p.costs.balance, kCodeBalance);
  scan_vcpus(c, self, pv);
  self.preempted[self.index] = 0;
  // A queued thread can move unless an interrupt preempted it (its frames
  // belong to its vCPU's core). The candidate is the one queued last.
  auto movable = [](const Vcpu& v) -> std::ptrdiff_t {
    for (std::size_t i = v.runq.size(); i-- > 0;)
      if (!v.runq[i]->m_irq_preempted) return static_cast<std::ptrdiff_t>(i);
    return -1;
  };
  // Pull from the busiest vCPU that has a movable thread, if that narrows
  // the gap (a newly idle vCPU takes any queued thread).
  Vcpu* busiest = nullptr;
  for (unsigned j = 0; j < n; ++j) {
    Vcpu& v = *m_vcpus[j];
    if (j == self.index || movable(v) < 0) continue;
    if (!busiest || eff_load(v) > eff_load(*busiest)) busiest = &v;
  }
  if (busiest) {
    auto pos = static_cast<std::size_t>(movable(*busiest));
    std::uint64_t w = busiest->runq[pos]->m_weight;
    if (idle ? self.nr_running() == 0 : eff_load(*busiest) >= eff_load(self, 2 * w)) {
      move_thread(c, *busiest, self, pos);
      return;
    }
  }
  if (idle) return;
  // Push one of this vCPU's queued threads to the least loaded vCPU, if that
  // narrows the gap. The balancer only runs on vCPUs that are running; a
  // preempted vCPU cannot pull, and under pv it is not pushed to either.
  std::ptrdiff_t mine = movable(self);
  if (mine < 0) return;
  std::uint64_t w = self.runq[static_cast<std::size_t>(mine)]->m_weight;
  Vcpu* least = nullptr;
  for (unsigned j = 0; j < n; ++j) {
    Vcpu& v = *m_vcpus[j];
    if (j == self.index) continue;
    if (self.preempted[j]) {
      ++m_sched_stats.preempted_skips;
      continue;
    }
    if (!least || eff_load(v) < eff_load(*least)) least = &v;
  }
  if (!least || eff_load(self) < eff_load(*least, 2 * w)) return;
  Vcpu& to = *least;
  Thread& t = *self.runq[static_cast<std::size_t>(mine)];
  move_thread(c, self, to, static_cast<std::size_t>(mine));
  if (to.current == nullptr || should_preempt(to, t)) c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{to.index} << 32) | kWakeVector);
}

}  // namespace vmx::guest
