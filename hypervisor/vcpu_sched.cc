// Scheduler glue: the core's slice timer (host LAPIC TSC deadline or the
// VMX-preemption timer) and migration of waiting vCPUs to idle cores. The
// scheduling policies themselves are in hypervisor/scheduler.cc.
#include "hypervisor/hypervisor_state.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "hypervisor/passthrough.h"
#include "hypervisor/shadow.h"
#include "mmu/paging.h"
#include "sim/event_trace.h"

namespace vmx::hv {

using namespace detail;

// The hypervisor's scheduling decisions read time as software does, with
// RDTSC (charged), once per decision, the value passed down; only the time
// accounting and the event trace (accounting.cc) read the simulator's clock,
// as observation.
std::uint64_t Hypervisor::sched_deadline(PerCore& pc) {
  std::size_t runnable = 0;
  for (Vcpu* v : pc.assigned)
    if (v->state == Vcpu::State::Runnable) ++runnable;
  return pc.sched->deadline(runnable);
}

void Hypervisor::program_timer(PerCore& pc, bool idle) {
  Core& c = *pc.core;
  std::uint64_t next = 0;
  auto consider = [&next](std::uint64_t t) {
    if (t && (!next || t < next)) next = t;
  };
  for (Vcpu* v : pc.assigned)
    if (v->state != Vcpu::State::Dead) consider(v->apic.vtimer_deadline);
  for (auto& vm : m_vms)  // emulated NICs polled from this core
    if (vm->nic_next_poll && vm->nic_core == pc.id && !vm->ended()) consider(vm->nic_next_poll);
  if (m_ksm && pc.id == m_ksm->p.core) consider(m_ksm->next_scan);  // the same-page merging scanner
  if (m_swap && pc.id == m_swap->p.core) consider(m_swap->next_run);  // the host-swap reclaim thread
  if (m_storage) consider(blk_deadline(pc));  // virtio-blk completions timed here (virtio_blk.cc)
  // With slice_timer=preemption the slice is timed by the VMCS while a vCPU
  // runs; the host timer keeps it only while the core halts.
  if (!m_preemption_slices || idle) {
    pc.sched_armed = sched_deadline(pc);
    consider(pc.sched_armed);
  }
  consider(next_job(pc.id));  // timed jobs (dirty_log.cc)
  c.wrmsr(cpu::msr::kIa32TscDeadline, next);
}

void Hypervisor::arm_preemption_timer(PerCore& pc, Vcpu& v) {
  Core& c = *pc.core;
  const std::uint64_t dl = sched_deadline(pc);
  const bool arm = dl != 0;
  if (arm != v.preempt_armed) {
    std::uint64_t pinctl = vmr(c, field::kPinBasedControls);
    vmw(c, field::kPinBasedControls, arm ? pinctl | cpu::pin::kPreemptionTimer : pinctl & ~cpu::pin::kPreemptionTimer);
    v.preempt_armed = arm;
  }
  // The timer counts down from this value at the TSC rate (the model's
  // IA32_VMX_MISC[4:0] is 0) and exits when it reaches zero (SDM Vol. 3C,
  // 26.5.1); 0 exits before the guest executes anything.
  const std::uint64_t now = c.rdtsc();
  if (arm) vmw(c, field::kPreemptionTimerValue, std::min<std::uint64_t>(dl > now ? dl - now : 0, 0xFFFFFFFFu));
}

// Migration of unpinned vCPUs (docs/scheduling.md, "Migration").
//
// A core that goes on to run one vCPU while others of its run queue wait
// looks for an idle core (the idle map: one byte per core in hypervisor
// memory, set by a core that halts with nothing to run) and pushes a waiting
// vCPU there. The push happens on the old core because the VMCS must be
// VMCLEARed on the processor where it is active before another processor
// may VMPTRLD it (SDM Vol. 3C, 25.11.1): VMCLEAR writes back the processor's
// copy and makes the launch state clear, so the new core enters with
// VMLAUNCH. The old core then sends the new one a reschedule IPI.
//
// Only vCPUs that have not run yet or whose last exit was HLT move (woken
// vCPUs, the case that matters for latency). A simulated guest context
// resumes inside the core operation that exited; after HLT nothing of that
// operation remains, whereas an exit at an operation boundary (interrupt,
// preemption timer) or on a fault (EPT violation) leaves the operation to
// finish or retry, and the model finishes it on the core where it began.

void Hypervisor::set_idle(PerCore& pc, bool idle) { pc.core->store(m_idle_map + pc.id, idle ? 1 : 0, 1); }

void Hypervisor::push_waiting(PerCore& pc, const Vcpu* running) {
  Core& c = *pc.core;
  auto waiting = [&](const Vcpu* w) {
    return w != running && !w->pinned && !w->claimed && w->movable && w->core == pc.id &&
           w->state == Vcpu::State::Runnable;
  };
  bool any = false;
  for (const Vcpu* w : pc.assigned) any = any || waiting(w);
  if (!any) return;
  const unsigned n = static_cast<unsigned>(m_cores.size());
  for (unsigned base = 0; base < n; base += 8) {
    std::uint64_t idle = c.load(m_idle_map + base);
    for (unsigned k = 0; k < 8 && base + k < n; ++k) {
      const unsigned target = base + k;
      if (target == pc.id || !((idle >> (8 * k)) & 0xFF)) continue;
      // The loads may have let other cores run: look again.
      Vcpu* w = nullptr;
      for (Vcpu* cand : pc.assigned)
        if (waiting(cand)) {
          w = cand;
          break;
        }
      if (!w) return;
      migrate(pc, *w, *m_percore[target]);
    }
  }
}

void Hypervisor::migrate(PerCore& from, Vcpu& v, PerCore& to) {
  Core& c = *from.core;
  charge(c, m_p.costs.migrate, kCodeMigrate);
  if (from.last_ran == &v) {
    mark_preempted(c, v);
    from.last_ran = nullptr;
  }
  if (v.active_on == static_cast<int>(from.id)) {
    if (c.vmclear(v.vmcs_pa, vmx_operand(c, v.vmcs_pa)) != cpu::VmxStatus::Succeed)
      throw cpu::SimulationError("hypervisor: VMCLEAR for a migration failed");
    if (from.loaded == &v) from.loaded = nullptr;
    v.active_on = -1;
    v.launched = false;
  }
  // The operations above may have let other cores run; the vCPU stays
  // unclaimed on this core meanwhile (only this core picks it). Move it.
  // Its guest counters leave with it (vpmu.cc): the new core loads them.
  if (from.pmu_owner == &v) {
    if (v.vm->pmu != Vm::Pmu::Passthrough) vpmu_save(c, v);
    from.pmu_owner = nullptr;
  }
  from.sched->remove(v);
  from.assigned.erase(std::find(from.assigned.begin(), from.assigned.end(), &v));
  v.core = to.id;
  to.assigned.push_back(&v);
  to.sched->add(v);
  ++m_totals.migrations;
  ++*v.migrations;
  // The target is no longer idle for other pushers; wake it.
  c.store(m_idle_map + to.id, 0, 1);
  c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{to.id} << 32) | kRescheduleVector);
}

}  // namespace vmx::hv
