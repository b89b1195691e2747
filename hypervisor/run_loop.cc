// The per-core run loop: pick a vCPU, load its VMCS, enter it, and hand
// the exit to its handler; the VMCS set-up of a new vCPU; host interrupts.
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

void Hypervisor::core_main(PerCore& pc) {
  Core& c = *pc.core;
  // Enter VMX operation (SDM Vol. 3C, 24.7): CR4.VMXE, a VMXON region with
  // the revision identifier, VMXON.
  c.write_cr(4, c.read_cr(4) | mmu::crbits::kCr4Vmxe);
  c.store(pc.vmxon_region, cpu::kVmcsRevision, 4);
  if (c.vmxon(pc.vmxon_region, vmx_operand(c, pc.vmxon_region)) != cpu::VmxStatus::Succeed)
    throw cpu::SimulationError(fmt::format("{}: VMXON failed", c.name()));
  c.lidt(&pc);
  if (pc.id == 0) {
    // The bitmaps: every port and every MSR exits.
    c.rep_stos(m_msr_bitmap, 0xFF, kPage);
    c.rep_stos(m_io_bitmap_a, 0xFF, kPage);
    c.rep_stos(m_io_bitmap_b, 0xFF, kPage);
    if (m_p.posted_interrupts) {
      // The guest's x2APIC EOI writes are virtualized, not intercepted
      // (write-low bitmap at byte 2048, SDM Vol. 3C, 25.6.9).
      std::uint64_t byte = m_msr_bitmap + 2048 + cpu::msr::kX2ApicEoi / 8;
      c.store(byte, c.load(byte, 1) & ~(1u << (cpu::msr::kX2ApicEoi % 8)), 1);
    }
    if (m_host_nic) m_host_nic->init(c);
  }
  pc.sched->start(c.rdtsc());
  m_started = true;
  if (next_job(pc.id)) program_timer(pc);  // jobs given before the run (at())
  Vcpu* last = nullptr;
  for (;;) {
    run_core_requests(pc);
    // Pick the next vCPU. Going back into the vCPU that just exited skips
    // the scheduler, as KVM's run loop does when nothing needs rescheduling.
    // The decision reads the TSC once, and only when it needs the time
    // (docs/hypervisor.md, "Time"): a scheduler that accounts runtime reads
    // it on every pass, the others only when they pick. Re-entering the
    // vCPU that just exited without accounting needs no time: `last` is
    // what pick would return.
    Scheduler& s = *pc.sched;
    std::uint64_t tsc = kNoTsc;
    if (s.accounts_runtime()) {
      tsc = c.rdtsc();
      s.account(tsc);
    }
    const bool picking = s.must_pick(last);
    if (picking) charge(c, m_p.costs.schedule, kCodeSchedule);
    if (picking && tsc == kNoTsc) tsc = c.rdtsc();
    Vcpu* next = tsc != kNoTsc ? static_cast<Vcpu*>(s.pick(tsc)) : last;
    if (next && m_p.migration) {
      next->claimed = true;  // not migratable while this core goes on to run it
      push_waiting(pc, next);
    }
    if (!next) {
      last = nullptr;
      // Halting with runnable (throttled) vCPUs: their wait is stolen time,
      // not the loop between two runs of the same vCPU.
      for (Vcpu* v : pc.assigned)
        if (v->state == Vcpu::State::Runnable) pc.last_ran = nullptr;
      ++m_totals.idle_halts;
      program_timer(pc, true);
      if (m_p.migration) set_idle(pc, true);
      c.sti();
      c.hlt();
      c.cli();
      if (m_p.migration) set_idle(pc, false);
      continue;
    }
    // The host timer ends the slice: reprogram it after a pick where the
    // deadline depends on the pick, and otherwise whenever the scheduler's
    // deadline is no longer the one armed (round robin's slice end appears
    // when a second vCPU becomes runnable, with no timer event to arm it:
    // a vCPU that never exits would never be preempted).
    if (!m_preemption_slices &&
        (s.timer_after_pick() ? picking : sched_deadline(pc) != pc.sched_armed))
      program_timer(pc);
    last = next;
    run_vcpu(pc, *next);
    if (next->vm->mig_pausing) {  // migration.cc: its VM is being paused for stop-and-copy
      if (!next->mig_parked && next->mig_safe && next->active_on == static_cast<int>(pc.id)) mig_park(pc, *next);
      next->claimed = false;
      last = nullptr;
      continue;
    }
    if (next->vm->stopping) {
      next->claimed = false;
      last = nullptr;
      maybe_teardown(c, *next->vm);
      continue;
    }
    next->claimed = false;
  }
}

void Hypervisor::setup_vmcs(Core& c, Vcpu& v) {
  // A fresh VMCS (SDM Vol. 3C, 25.11.3): revision identifier, VMCLEAR, VMPTRLD.
  c.store(v.vmcs_pa, cpu::kVmcsRevision, 4);
  c.vmclear(v.vmcs_pa, vmx_operand(c, v.vmcs_pa));
  if (c.vmptrld(v.vmcs_pa, vmx_operand(c, v.vmcs_pa)) != cpu::VmxStatus::Succeed)
    throw cpu::SimulationError("hypervisor: VMPTRLD of a new VMCS failed");
  using namespace cpu;
  const bool posted = m_p.posted_interrupts;
  vmw(c, field::kPinBasedControls, pin::kExternalInterruptExiting | (posted ? pin::kPostedInterrupts : 0));
  vmw(c, field::kProcBasedControls, proc::kHltExiting | proc::kUseIoBitmaps | proc::kUseMsrBitmaps |
                                        proc::kActivateSecondaryControls | (posted ? proc::kUseTprShadow : 0));
  vmw(c, field::kSecondaryControls, proc2::kEnableEpt | (v.vpid ? proc2::kEnableVpid : 0) |
                                        (posted ? proc2::kVirtualizeX2apic | proc2::kVirtualInterruptDelivery : 0));
  if (posted) {
    // APICv as KVM sets it up: a zeroed virtual-APIC page, the descriptor's
    // notification vector and destination (this vCPU's core), no EOI exits.
    c.rep_stos(v.apic.vapic, 0, kPage);
    c.lock_or(v.apic.pi_desc + kPidControl, (std::uint64_t{kPostedVector} << 16) | (std::uint64_t{v.core} << 32));
    vmw(c, field::kPostedIntrNv, kPostedVector);
    vmw(c, field::kPostedIntrDesc, v.apic.pi_desc);
    vmw(c, field::kVirtualApicPage, v.apic.vapic);
    vmw(c, field::kGuestIntrStatus, 0);
    for (unsigned i = 0; i < 4; ++i) vmw(c, field::kEoiExitBitmap0 + 2 * i, 0);
  }
  vmw(c, field::kExitControls, exitctl::kHostAddressSpaceSize | exitctl::kAckInterruptOnExit);
  vmw(c, field::kEntryControls, entryctl::kIa32eModeGuest);
  vmw(c, field::kExceptionBitmap, 0);
  vmw(c, field::kEptPointer, v.vm->eptp);
  vmw(c, field::kVpid, v.vpid);
  if (v.vm->key_id) vmw(c, field::kEncryptionKeyId, v.vm->key_id);
  vmw(c, field::kMsrBitmap, m_msr_bitmap);
  vmw(c, field::kIoBitmapA, m_io_bitmap_a);
  vmw(c, field::kIoBitmapB, m_io_bitmap_b);
  vmw(c, field::kCr0GuestHostMask, 0);
  vmw(c, field::kCr4GuestHostMask, mmu::crbits::kCr4Vmxe);  // the guest may not turn on VMX
  vmw(c, field::kCr4ReadShadow, 0);
  vmw(c, field::kGuestCr0, mmu::crbits::kCr0Pe);
  vmw(c, field::kGuestCr3, 0);
  vmw(c, field::kGuestCr4, 0);
  vmw(c, field::kGuestRflags, 0x2);
  vmw(c, field::kGuestSsAccessRights, 0);
  vmw(c, field::kGuestRip, v.vm->image->entry_point(v.index));
  vmw(c, field::kHostRip, code_address(m_percore[v.core]->fiber.get()));
  vmw(c, field::kHostIdtrBase, code_address(m_percore[v.core].get()));
  if (v.vm->shadow) shadow_setup_vmcs(c, v);
  if (v.vm->pmu != Vm::Pmu::None) vpmu_setup_vmcs(c, v);
  if (v.vm->clos) rdt_setup_vmcs(c, v);
  fill_cpuid_table(c, v);
  if (v.mig_record) mig_load_vmcs(c, v);  // migration.cc: the state it had on the source
  observe(c, v.vmcs_pa, v.obs.get());
  v.vmcs_ready = true;
  if (v.index == 0 && m_p.ept_populate == "eager") populate(c, *v.vm);
  if (v.index == 0 && v.vm->nic) nic_setup(c, v);
  // (A VM that arrived by migration has its VF already: vf_migration.cc.)
  if (v.index == 0 && v.vm->nic_type == "vf" && !v.vm->vf_rid) assign_vf(c, *v.vm);
}

void Hypervisor::run_vcpu(PerCore& pc, Vcpu& v) {
  // A VM being paused for migration: its vCPUs are parked, not run
  // (checked before the vCPU counts as on the core, with no operation between).
  if (v.vm->mig_pausing && v.mig_safe) return;
  Core& c = *pc.core;
  if (pc.last_ran && pc.last_ran != &v) mark_preempted(c, *pc.last_ran);
  trace_state(c, v, c.now(), pc.last_ran != &v);
  account_off_cpu(v, c.now(), pc.last_ran == &v);
  v.time.off = Vcpu::Off::OnCpu;
  v.time.guest_baseline = guest_cycles_now(*v.obs, v.time.since);
  pc.last_ran = &v;
  struct Leave {  // accounts the on-CPU interval however run_vcpu returns
    Hypervisor& hv;
    Vcpu& v;
    Core& c;
    ~Leave() {
      hv.trace_state(c, v, c.now(), false);
      hv.account_on_cpu(v, c.now());
      v.time.off = v.state == Vcpu::State::Blocked ? Vcpu::Off::Halted
              : v.state == Vcpu::State::Dead  ? Vcpu::Off::Stopped
                                              : Vcpu::Off::Runnable;
    }
  } leave{*this, v, c};
  if (!v.vmcs_ready) {
    setup_vmcs(c, v);
    pc.loaded = &v;
    v.active_on = static_cast<int>(pc.id);
  } else if (pc.loaded != &v) {
    ++m_totals.vcpu_switches;
    if (v.active_on >= 0 && v.active_on != static_cast<int>(pc.id))
      throw cpu::SimulationError(fmt::format("hypervisor: vCPU {} of VM {} loaded on core {} while its VMCS is "
                                             "active on core {} (missing VMCLEAR)",
                                             v.index, v.vm->name, pc.id, v.active_on));
    if (c.vmptrld(v.vmcs_pa, vmx_operand(c, v.vmcs_pa)) != cpu::VmxStatus::Succeed)
      throw cpu::SimulationError("hypervisor: VMPTRLD failed");
    pc.loaded = &v;
    if (v.active_on < 0) {
      // First load on this core after a migration (KVM's vmx_vcpu_load_vmcs):
      // the host-state fields that name the per-core hypervisor context
      // point at this core's, and the VMCS, cleared on the old core, is
      // launched afresh. The new core's TLBs may still hold translations
      // of this VPID from an earlier stay, stale since: flush them (KVM
      // requests a TLB flush on every pCPU change for the same reason).
      vmw(c, field::kHostRip, cpu::code_address(pc.fiber.get()));
      vmw(c, field::kHostIdtrBase, cpu::code_address(&pc));
      if (v.vpid) c.invvpid(1, v.vpid, 0, Regs::rcx, vmx_operand(c, v.vpid));
      v.active_on = static_cast<int>(pc.id);
    }
  }
  if (v.nested) nested_before_entry(pc, v);  // nested.cc: an interrupt for L1 while L2 runs
  // KVM's vcpu_enter_guest looks at the vCPU's requests on every entry; a
  // KVM_REQ_EVENT (an interrupt accepted, an EOI, an interrupt window)
  // makes it look for an injectable interrupt in the IRR.
  const std::uint64_t lapic = v.save_area + kVlapicOffset;
  if (c.load(lapic + kVlapicRequests) & kReqEvent) {
    c.store(lapic + kVlapicRequests, 0);
    if (!m_p.posted_interrupts) vlapic_highest(c, lapic + kVlapicIrr);
  }
  // Virtual interrupt delivery: inject when the guest can take it, else ask
  // for an interrupt-window exit (SDM Vol. 3C, 26.6, 25.6.2).
  if (v.apic.virr.any()) {
    charge(c, m_p.costs.inject, kCodeInject);
    int vec = 255;
    while (vec >= 0 && !v.apic.virr.test(static_cast<std::size_t>(vec))) --vec;
    std::uint64_t rflags = vmr(c, field::kGuestRflags);
    std::uint64_t procctl = vmr(c, field::kProcBasedControls);
    if (rflags & (1u << 9)) {
      vmw(c, field::kEntryIntrInfo, cpu::intr::info(static_cast<std::uint8_t>(vec), cpu::intr::kTypeExternal));
      v.apic.virr.reset(static_cast<std::size_t>(vec));
      // kvm_get_apic_interrupt: the vector moves from the IRR to the ISR.
      const std::uint64_t irr = lapic + kVlapicIrr + 16 * static_cast<unsigned>(vec / 32);
      c.store(irr, c.load(irr, 4) & ~(1ull << (vec % 32)), 4);
      c.lock_or(lapic + kVlapicIsr + 16 * static_cast<unsigned>(vec / 32), 1ull << (vec % 32));
      ++m_totals.injections;
      if (procctl & cpu::proc::kInterruptWindowExiting)
        vmw(c, field::kProcBasedControls, procctl & ~cpu::proc::kInterruptWindowExiting);
    } else if (!(procctl & cpu::proc::kInterruptWindowExiting)) {
      vmw(c, field::kProcBasedControls, procctl | cpu::proc::kInterruptWindowExiting);
    }
  }
  // Posted interrupts that arrived while the vCPU was out (ON set, no
  // notification taken): a self-IPI of the notification vector, held at the
  // local APIC while interrupts are off here, is processed as a posted
  // interrupt right after VM entry (SDM Vol. 3C, 30.6).
  if (m_p.posted_interrupts) {
    if (v.apic.pi_wakeup) {
      c.store(v.apic.pi_desc + kPidNvByte, kPostedVector, 1);
      v.apic.pi_wakeup = false;
    }
    if (c.load(v.apic.pi_desc + kPidControl) & kPidOn)
      c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{pc.id} << 32) | kPostedVector);
  }
  publish_steal(c, v);
  if (v.vm->shadow) shadow_before_entry(c, v);
  if (v.vm->dirty) dirty_before_entry(c, v);
  // The guest's CR2 is not part of the VMCS: it is restored if another
  // context changed it, and saved after the exit (KVM's vmx_vcpu_run).
  if (c.read_cr(2) != v.cr2) c.write_cr(2, v.cr2);
  if (m_preemption_slices) arm_preemption_timer(pc, v);
  if (v.vm->pmu != Vm::Pmu::None) vpmu_before_entry(pc, v);
  v.vm->ran_on[pc.id] = true;
  run_core_requests(pc);
  // Restore the guest's registers from the save area.
  for (unsigned i = 0; i < kSavedGprs; ++i) c.load(v.save_area + 8 * i);
  c.regs() = v.regs;

  // Nested VMX (nested.cc): the root-operation time of L0 spent for a
  // reflected exit of L2 that L1 is handling.
  if (v.nested && v.nested->pending_reason >= 0) v.nested->l0_cycles += c.now() - v.nested->root_since;
  cpu::VmExit ex = v.launched ? c.vmresume() : c.vmlaunch();
  if (v.nested) v.nested->root_since = c.now();
  if (!ex.entered()) {
    std::uint64_t err = 0;
    c.vmread(field::kVmInstructionError, err);
    crash_vm(*v.vm, fmt::format("VM entry failed (VM-instruction error {})", err));
    return;
  }
  v.launched = true;
  // Save the guest's registers.
  v.regs = c.regs();
  v.cr2 = c.read_cr(2);
  for (unsigned i = 0; i < kSavedGprs; ++i) c.store(v.save_area + 8 * i, v.regs[i]);
  // Running as a guest VMM (docs/nested.md) the entry's exit reason is read
  // from the VMCS, as at a real host RIP.
  const unsigned reason = ex.reason == cpu::VmExit::kReasonInVmcs ? vmr(c, field::kExitReason) & 0xFFFF : ex.reason;
  handle_exit(pc, v, reason);
}

// Dispatch by the basic exit reason through the exit table (exits.cc
// registers the handlers). A reason with no handler is an exit the
// hypervisor never asked for: the VM is stopped with a note naming the
// reason, as KVM reports KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON to its
// VMM, and the other VMs run on.
void Hypervisor::handle_exit(PerCore& pc, Vcpu& v, unsigned reason) {
  Core& c = *pc.core;
  v.movable = static_cast<ExitReason>(reason) == ExitReason::Hlt;
  // Where a vCPU may be parked for a migration to another host (migration.cc):
  // after an exit whose operation is complete (HLT) or will start over on the
  // core that resumes it (boundary exits, EPT violations; cpu::CoreMoved).
  switch (static_cast<ExitReason>(reason)) {
    case ExitReason::Hlt:
    case ExitReason::ExternalInterrupt:
    case ExitReason::InterruptWindow:
    case ExitReason::PreemptionTimer:
    case ExitReason::MonitorTrapFlag:
    case ExitReason::EptViolation: v.mig_safe = true; break;
    default: v.mig_safe = false; break;
  }
  charge(c, m_p.costs.exit_dispatch, kCodeDispatch);
  touch_vcpu_state(c, v);
  if (v.vm->dirty) dirty_on_exit(c, v);  // the PML log is drained at every exit, as KVM does
  if (NestedStats* ns = v.vm->nested_stats.get()) {
    // nested.cc: an exit of L2, or of L1 (counted against the L2 exit it
    // handles); L1's VMREADs and VMWRITEs apart, the exits VMCS shadowing acts on.
    ++ns->l0_exits;
    if (v.nested && v.nested->guest_mode) return nested_l2_exit(pc, v, reason);
    const bool vmrw = static_cast<ExitReason>(reason) == ExitReason::Vmread ||
                      static_cast<ExitReason>(reason) == ExitReason::Vmwrite;
    if (vmrw) ++ns->vmrw_exits;
    if (v.nested) {
      ++v.nested->l1_exits;
      if (vmrw) ++v.nested->vmrw_exits;
    }
  }
  if (ExitHandler h = m_exits.find(reason)) (this->*h)(pc, v);
  else unexpected_exit(v, reason);
}

void Hypervisor::unexpected_exit(Vcpu& v, unsigned reason) {
  crash_vm(*v.vm, fmt::format("unexpected VM exit {} (basic exit reason {}) on vCPU {}: the hypervisor has no "
                              "handler for it",
                              cpu::exit_reason_name(reason), reason, v.index));
}

void Hypervisor::host_interrupt(PerCore& pc, std::uint8_t vector) {
  Core& c = *pc.core;
  if (m_host_nic && vector == m_host_nic->vector()) {
    m_host_nic->interrupt(c);
  } else if (vector == kHostTimerVector) {
    handle_timer(pc);
  } else if (vector == kRescheduleVector) {
    // A vCPU woken from another core may need the slice timer armed, so
    // that it gets the core at the next slice end under either scheduler.
    program_timer(pc);
  } else if (vector == kHostPmiVector) {
    vpmu_interrupt(pc);
  } else if (vector == kPostedNestedVector) {
    // A notification for L2 that found its vCPU out of L2 (nested.cc): the
    // descriptor is processed at L2's next entry (pi_pending).
  } else if (vector == kPostedWakeupVector) {
    // A device posted to a vCPU blocked on this core: wake those with ON set.
    for (Vcpu* v : pc.assigned)
      if (v->apic.pi_wakeup && v->state == Vcpu::State::Blocked && (c.load(v->apic.pi_desc + kPidControl) & kPidOn)) wake(*v);
  } else {
    // A passed-through device's remapped interrupt: forward it to the guest.
    passthrough_interrupt(vector);
  }
  c.wrmsr(cpu::msr::kX2ApicEoi, 0);
}

}  // namespace vmx::hv
