// The virtual local APIC: the virtual timer, waking vCPUs, and virtual
// interrupts by injection or by posting (SDM Vol. 3C, 30.6).
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

void Hypervisor::handle_timer(PerCore& pc) {
  Core& c = *pc.core;
  std::uint64_t now = c.rdtsc();
  for (Vcpu* v : pc.assigned) {
    if (v->state == Vcpu::State::Dead) continue;
    if (v->apic.vtimer_deadline && now >= v->apic.vtimer_deadline) {
      v->apic.vtimer_deadline = 0;
      if (!(v->apic.vlvt_timer & (1u << 16))) raise_virtual(*v, static_cast<std::uint8_t>(v->apic.vlvt_timer & 0xFF));
      else wake(*v);
    }
  }
  for (auto& vm : m_vms)
    if (vm->nic_next_poll && vm->nic_core == pc.id && now >= vm->nic_next_poll && !vm->ended()) {
      vm->nic->poll(c);
      vm->nic_next_poll = now + vm->nic_poll_ticks;
    }
  if (m_ksm && pc.id == m_ksm->p.core && now >= m_ksm->next_scan) ksm_run(pc);
  if (m_swap && pc.id == m_swap->p.core && now >= m_swap->next_run) swap_run(pc);  // host_swap.cc
  run_jobs(pc, now);  // timed jobs (dirty_log.cc)
  if (m_storage) blk_complete(pc, now);
  pc.sched->tick(now);
  program_timer(pc);
}

void Hypervisor::wake(Vcpu& v) {
  if (v.state == Vcpu::State::Dead) return;
  PerCore& target = *m_percore[v.core];
  const bool was_blocked = v.state == Vcpu::State::Blocked;
  if (was_blocked) {
    v.state = Vcpu::State::Runnable;
    if (v.time.off == Vcpu::Off::Halted) {
      trace_state(Core::current(), v, Core::current().now(), false);
      account_off_cpu(v, Core::current().now(), false);
      v.time.off = Vcpu::Off::Runnable;
    }
  }
  Core& self = Core::current();
  // Only a scheduler that keeps time (proportional, EDF) needs the waker's
  // TSC; the others ignore it, and software would not read the clock.
  target.sched->wake(v, was_blocked, target.sched->accounts_runtime() ? self.rdtsc() : 0);
  if (&self != target.core) self.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{target.id} << 32) | kRescheduleVector);
}

// Posting (as KVM's vmx_deliver_posted_interrupt): set the PIR bit and ON
// with locked ORs; if ON was clear and the vCPU is running on another core,
// send that core the notification vector through the x2APIC ICR, so the
// interrupt arrives without a VM exit. A blocked vCPU is woken and gets the
// interrupt at its next entry; so does a runnable one that is not running.
void Hypervisor::raise_virtual(Vcpu& t, std::uint8_t vector) {
  if (!m_p.posted_interrupts) {
    if (t.state == Vcpu::State::Dead) return;  // its frames may be released (vm_stop.cc)
    vlapic_accept(Core::current(), t, vector);
    t.apic.virr.set(vector);
    wake(t);
    return;
  }
  if (t.state == Vcpu::State::Dead) return;
  Core& c = Core::current();
  charge(c, m_p.costs.post, kCodeInject);
  ++m_totals.posted;
  c.lock_or(t.apic.pi_desc + 8 * (vector / 64), 1ull << (vector % 64));
  const std::uint64_t old = c.lock_or(t.apic.pi_desc + kPidControl, kPidOn);
  const bool running_elsewhere = t.time.off == Vcpu::Off::OnCpu && m_percore[t.core]->core != &c;
  if (t.state == Vcpu::State::Runnable && running_elsewhere) {
    if (!(old & kPidOn)) {
      ++m_totals.notifications;
      c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{t.core} << 32) | kPostedVector);
    }
    return;
  }
  wake(t);
}

// The software local APIC's registers in memory (hypervisor_state.h,
// kVlapicOffset), touched where KVM's lapic.c touches them. `virr` stays
// the hypervisor's working copy of the IRR (as KVM keeps irr_pending and
// highest_isr_cache beside apic->regs); these are the accesses KVM's paths
// make, with the values they would find.

// __apic_accept_irq: the vector's IRR bit set with a locked operation
// (kvm_lapic_set_vector), then KVM_REQ_EVENT for the target vCPU.
void Hypervisor::vlapic_accept(Core& c, Vcpu& t, std::uint8_t vector) {
  c.lock_or(t.save_area + kVlapicOffset + kVlapicIrr + 16 * (vector / 32), 1ull << (vector % 32));
  vlapic_request(c, t);
}

void Hypervisor::vlapic_request(Core& c, Vcpu& t) {
  c.lock_or(t.save_area + kVlapicOffset + kVlapicRequests, kReqEvent);
}

// find_highest_vector: the eight 32-bit registers of an ISR or IRR image,
// from the top; the highest vector set, or -1.
int Hypervisor::vlapic_highest(Core& c, std::uint64_t regs) {
  for (int i = 7; i >= 0; --i) {
    const auto w = static_cast<std::uint32_t>(c.load(regs + 16 * static_cast<unsigned>(i), 4));
    if (w) return 32 * i + 31 - __builtin_clz(w);
  }
  return -1;
}

std::uint64_t Hypervisor::posted_descriptor(unsigned vm, unsigned vcpu) const {
  return m_vms.at(vm)->vcpus.at(vcpu)->apic.pi_desc;
}

bool Hypervisor::posted_pending(Core& c, Vcpu& v) {
  if (c.load(v.apic.pi_desc + kPidControl) & kPidOn) return true;
  // A virtual interrupt already in VIRR that the guest could take (RVI's
  // priority class above SVI's, SDM Vol. 3C, 30.2.1).
  std::uint64_t gis = vmr(c, field::kGuestIntrStatus);
  return ((gis & 0xFF) >> 4) > ((gis >> 8) >> 4);
}

// ---------------------------------------------------------------------------
// The virtual LAPIC's MSRs (x2APIC mode, SDM Vol. 3A, 11.12.1; the
// TSC-deadline timer, 11.5.4.1). The virtual ISR is not modelled: EOI only
// costs the exit.

bool Hypervisor::rdmsr_tsc_deadline(PerCore&, Vcpu& v, std::uint64_t& value) {
  value = v.apic.vtimer_deadline;
  return true;
}
// KVM's kvm_set_lapic_tscdeadline_msr: the timer mode from the LVT entry,
// the deadline stored, the old timer cancelled and the new one armed
// against the guest's TSC (start_sw_tscdeadline, one RDTSC: the model runs
// guests without a TSC offset). A deadline already passed expires at once,
// in this exit (apic_timer_expired), instead of through a host timer
// interrupt; the host timer is reprogrammed either way (hrtimer_cancel,
// hrtimer_start).
bool Hypervisor::wrmsr_tsc_deadline(PerCore& pc, Vcpu& v, std::uint64_t value) {
  Core& c = *pc.core;
  charge(c, m_p.costs.apic_timer, kCodeMsr + 0x400);
  const std::uint64_t lapic = v.save_area + kVlapicOffset;
  c.load(lapic + kVlapicLvtTimer, 4);
  c.store(lapic + kVlapicTscDeadline, value);
  v.apic.vtimer_deadline = value;
  if (value && value <= c.rdtsc()) {
    v.apic.vtimer_deadline = 0;
    if (!(v.apic.vlvt_timer & models::Lapic::kLvtMasked))
      raise_virtual(v, static_cast<std::uint8_t>(v.apic.vlvt_timer & 0xFF));
    else wake(v);
  }
  program_timer(*m_percore[v.core]);
  return true;
}
bool Hypervisor::rdmsr_x2apic_eoi(PerCore&, Vcpu&, std::uint64_t& value) {
  value = 0;
  return true;
}
// KVM's apic_set_eoi: the highest in-service vector is done (its ISR bit
// cleared), and apic_update_ppr looks in the IRR for an interrupt the new
// priority lets through, requesting KVM_REQ_EVENT if there is one.
bool Hypervisor::wrmsr_x2apic_eoi(PerCore& pc, Vcpu& v, std::uint64_t) {
  Core& c = *pc.core;
  const std::uint64_t lapic = v.save_area + kVlapicOffset;
  const int vec = vlapic_highest(c, lapic + kVlapicIsr);
  if (vec < 0) return true;
  const std::uint64_t isr = lapic + kVlapicIsr + 16 * static_cast<unsigned>(vec / 32);
  c.store(isr, c.load(isr, 4) & ~(1ull << (vec % 32)), 4);
  if (vlapic_highest(c, lapic + kVlapicIrr) >= 0) vlapic_request(c, v);
  return true;
}
bool Hypervisor::rdmsr_lvt_timer(PerCore&, Vcpu& v, std::uint64_t& value) {
  value = v.apic.vlvt_timer;
  return true;
}
bool Hypervisor::wrmsr_lvt_timer(PerCore& pc, Vcpu& v, std::uint64_t value) {
  v.apic.vlvt_timer = static_cast<std::uint32_t>(value);
  pc.core->store(v.save_area + kVlapicOffset + kVlapicLvtTimer, v.apic.vlvt_timer, 4);
  return true;
}
bool Hypervisor::rdmsr_x2apic_id(PerCore&, Vcpu& v, std::uint64_t& value) {
  value = v.index;
  return true;
}
// A virtual IPI to a vCPU of the same VM (fixed delivery, physical
// destination): KVM's kvm_apic_send_ipi, the destination found through
// the VM's APIC map, then __apic_accept_irq (raise_virtual).
bool Hypervisor::wrmsr_x2apic_icr(PerCore& pc, Vcpu& v, std::uint64_t value) {
  charge(*pc.core, m_p.costs.apic_ipi, kCodeMsr + 0x200);
  auto dest = static_cast<std::uint32_t>(value >> 32);
  if (dest >= v.vm->vcpus.size()) return true;
  Vcpu& t = *v.vm->vcpus[dest];
  const auto vector = static_cast<std::uint8_t>(value & 0xFF);
  // A guest VMM's notification for its guest (nested.cc: posted interrupts for L2).
  if (v.vm->nested_vmx && nested_posted_notify(*pc.core, t, vector)) return true;
  raise_virtual(t, vector);
  return true;
}

}  // namespace vmx::hv
