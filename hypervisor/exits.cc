// Exit handlers by area: CPUID, VMCALL, port I/O, control registers, MSRs
// and EPT violations of guest memory.
#include "hypervisor/hypervisor_state.h"
#include "hypervisor/dirty_state.h"

#include <algorithm>
#include <iterator>
#include <stdexcept>

#include <fmt/format.h>

#include "abi/hypercall.h"
#include "abi/steal_time.h"
#include "hypervisor/passthrough.h"
#include "hypervisor/shadow.h"
#include "mmu/paging.h"
#include "sim/event_trace.h"

namespace vmx::hv {

using namespace detail;

namespace {
constexpr std::uint32_t kIa32TimeStampCounter = 0x10;  // SDM Vol. 4, Table 2-2
}  // namespace

// ---------------------------------------------------------------------------
// The exit table: one registration per handler, keyed by the basic exit
// reason (SDM Vol. 3C, Appendix C). Reasons not listed here are unexpected
// (run_loop.cc, handle_exit).

void Hypervisor::register_exit_handlers() {
  m_exits.on(ExitReason::ExceptionOrNmi, &Hypervisor::handle_exception);
  m_exits.on(ExitReason::ExternalInterrupt, &Hypervisor::handle_external_interrupt);
  m_exits.on(ExitReason::TripleFault, &Hypervisor::handle_triple_fault);
  m_exits.on(ExitReason::InterruptWindow, &Hypervisor::handle_interrupt_window);
  m_exits.on(ExitReason::Cpuid, &Hypervisor::handle_cpuid);
  m_exits.on(ExitReason::Hlt, &Hypervisor::handle_hlt);
  m_exits.on(ExitReason::Invlpg, &Hypervisor::handle_invlpg);
  m_exits.on(ExitReason::Vmcall, &Hypervisor::handle_vmcall);
  // VMX instructions in VMX non-root operation always exit (SDM Vol. 3C,
  // 26.1.2); without nested virtualization the guest gets #UD, as from KVM
  // with nested=0.
  for (ExitReason r : {ExitReason::Vmclear, ExitReason::Vmlaunch, ExitReason::Vmptrld, ExitReason::Vmptrst,
                       ExitReason::Vmread, ExitReason::Vmresume, ExitReason::Vmwrite, ExitReason::Vmxoff,
                       ExitReason::Vmxon, ExitReason::Invept, ExitReason::Invvpid})
    m_exits.on(r, &Hypervisor::handle_vmx_instruction);
  register_nested_exit_handlers();  // nested.cc: the same reasons, for VMs with nested_vmx
  m_exits.on(ExitReason::CrAccess, &Hypervisor::handle_cr);
  m_exits.on(ExitReason::IoInstruction, &Hypervisor::handle_io);
  m_exits.on(ExitReason::Rdmsr, &Hypervisor::handle_rdmsr);
  m_exits.on(ExitReason::Wrmsr, &Hypervisor::handle_wrmsr);
  m_exits.on(ExitReason::EntryFailGuestState, &Hypervisor::handle_invalid_guest_state);
  m_exits.on(ExitReason::MonitorTrapFlag, &Hypervisor::handle_mtf);
  m_exits.on(ExitReason::EptViolation, &Hypervisor::handle_ept_violation);
  m_exits.on(ExitReason::EptMisconfig, &Hypervisor::handle_ept_misconfig);
  m_exits.on(ExitReason::PreemptionTimer, &Hypervisor::handle_preemption_timer);
  m_exits.on(ExitReason::PmlFull, &Hypervisor::handle_pml_full);  // dirty_log.cc

  // MSRs the hypervisor emulates (every MSR access exits: the MSR bitmap
  // is all ones). The x2APIC and TSC-deadline MSRs are the virtual LAPIC's
  // (vlapic.cc), the steal-time MSR is accounting.cc's.
  m_msrs.on(cpu::msr::kIa32TscDeadline, &Hypervisor::rdmsr_tsc_deadline, &Hypervisor::wrmsr_tsc_deadline);
  m_msrs.on(cpu::msr::kX2ApicEoi, &Hypervisor::rdmsr_x2apic_eoi, &Hypervisor::wrmsr_x2apic_eoi);
  m_msrs.on(cpu::msr::kX2ApicLvtTimer, &Hypervisor::rdmsr_lvt_timer, &Hypervisor::wrmsr_lvt_timer);
  m_msrs.on(cpu::msr::kX2ApicId, &Hypervisor::rdmsr_x2apic_id, nullptr);
  m_msrs.on(abi::steal_time::kMsr, &Hypervisor::rdmsr_steal_time, &Hypervisor::wrmsr_steal_time);
  m_msrs.on(cpu::msr::kX2ApicIcr, nullptr, &Hypervisor::wrmsr_x2apic_icr);
  m_msrs.on(cpu::msr::kIa32Efer, &Hypervisor::rdmsr_efer, &Hypervisor::wrmsr_efer);
  m_msrs.on(kIa32TimeStampCounter, &Hypervisor::rdmsr_tsc, nullptr);
}


// KVM answers CPUID from the vCPU's CPUID table, which its VMM filled once
// (KVM_SET_CPUID2), and never executes CPUID on the host at an exit. The
// table here is filled the same way when the vCPU's VMCS is set up: the
// host's answers (native CPUIDs), with VMX hidden unless the VM runs a
// hypervisor, "hypervisor present" set (CPUID.1:ECX bit 31), the vCPU's
// initial APIC ID in leaf 1, the PMU leaves as the VM's PMU mode has them,
// the vendor leaf 0x40000000 ("vmxsimHV    ") and the extended leaves a
// guest kernel reads for memory encryption (0x80000000, 0x8000001F).
namespace {
struct TableLeaf {
  std::uint32_t leaf;
  bool indexed;  // KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the subleaf must match too
};
constexpr TableLeaf kTableLeaves[] = {{0, false},    {1, false},    {7, true},
                                      {0xA, false},  {0x15, false}, {0x16, false},
                                      {0x40000000u, false}, {0x80000000u, false}, {0x8000001Fu, false}};
constexpr unsigned kOsPke = 1u << 4;  // CPUID.(7,0):ECX.OSPKE mirrors CR4.PKE
}  // namespace

void Hypervisor::fill_cpuid_table(Core& c, Vcpu& v) {
  std::uint64_t e = v.save_area + kCpuidTableOffset;
  for (const TableLeaf& l : kTableLeaves) {
    cpu::CpuidResult r{0x40000001u, 0x73786d76, 0x56486d69, 0x20202020};
    if (l.leaf != 0x40000000u) {
      r = c.cpuid(l.leaf, 0);
      if (l.leaf == 1) {
        r.ebx = (r.ebx & 0x00FFFFFFu) | (v.index << 24);
        r.ecx = (r.ecx & ~(v.vm->nested_vmx ? 0u : 1u << 5)) | (1u << 31);
      }
      if (l.leaf == 7) r.ecx &= ~kOsPke;  // follows the guest's CR4 (handle_cpuid)
      // Cache and bandwidth allocation belong to the hypervisor (rdt.cc):
      // the guest sees no RDT allocation (CPUID.7.0:EBX bit 15; leaf 10H is
      // not in the table, so it reads as zeros), as under ACRN without
      // virtual CAT; its MSR writes are #GP.
      if (l.leaf == 7) r.ebx &= ~(1u << 15);
      vpmu_cpuid(v, l.leaf, r);
    }
    c.store(e, l.leaf);  // function, index 0
    c.store(e + 8, l.indexed ? 1 : 0, 4);
    c.store(e + 12, r.eax, 4);
    c.store(e + 16, r.ebx, 4);
    c.store(e + 20, r.ecx, 4);
    c.store(e + 24, r.edx, 4);
    e += kCpuidEntryBytes;
  }
}

void Hypervisor::handle_cpuid(PerCore& pc, Vcpu& v) {
  Core& c = *pc.core;
  charge(c, m_p.costs.cpuid, kCodeCpuid);
  const auto leaf = static_cast<std::uint32_t>(v.regs[Regs::rax]);
  const auto subleaf = static_cast<std::uint32_t>(v.regs[Regs::rcx]);
  // kvm_find_cpuid_entry: a linear search of the table; a leaf it does not
  // hold reads as zeros, as the core answers leaves it does not implement.
  cpu::CpuidResult r{};
  std::uint64_t e = v.save_area + kCpuidTableOffset;
  for (unsigned i = 0; i < std::size(kTableLeaves); ++i, e += kCpuidEntryBytes) {
    const std::uint64_t id = c.load(e);
    if (static_cast<std::uint32_t>(id) != leaf) continue;
    if (c.load(e + 8, 4) && static_cast<std::uint32_t>(id >> 32) != subleaf) continue;
    r = {static_cast<std::uint32_t>(c.load(e + 12, 4)), static_cast<std::uint32_t>(c.load(e + 16, 4)),
         static_cast<std::uint32_t>(c.load(e + 20, 4)), static_cast<std::uint32_t>(c.load(e + 24, 4))};
    break;
  }
  // OSPKE is the guest's CR4.PKE (KVM updates the entry when CR4 changes).
  if (leaf == 7 && subleaf == 0 && (vmr(c, field::kGuestCr4) & mmu::crbits::kCr4Pke)) r.ecx |= kOsPke;
  v.regs[Regs::rax] = r.eax;
  v.regs[Regs::rbx] = r.ebx;
  v.regs[Regs::rcx] = r.ecx;
  v.regs[Regs::rdx] = r.edx;
}

// KVM's kvm_emulate_hypercall: the number and four arguments come from the
// saved registers, the argument width from the guest's mode (EFER.LMA and
// CS.L; the model's VMCS has EFER), and a hypercall from CPL > 0 fails with
// -KVM_EPERM before any dispatch; the result goes back to the saved RAX
// and the vCPU's hypercall counter is incremented.
void Hypervisor::handle_vmcall(PerCore& pc, Vcpu& v) {
  Core& c = *pc.core;
  charge(c, m_p.costs.vmcall, kCodeVmcall);
  const std::uint64_t nr = c.load(v.save_area + 8 * Regs::rax);
  for (unsigned r : {Regs::rbx, Regs::rcx, Regs::rdx, Regs::rsi}) c.load(v.save_area + 8 * r);
  vmr(c, field::kGuestIa32Efer);
  const unsigned cpl = (vmr(c, field::kGuestSsAccessRights) >> 5) & 3;
  const std::uint64_t ret = cpl ? abi::hypercall::kPermResult
                                : nr == abi::hypercall::kNop ? 0 : abi::hypercall::kUnknownResult;
  v.regs[Regs::rax] = ret;
  c.store(v.save_area + 8 * Regs::rax, ret);
  const std::uint64_t stat = v.save_area + 2 * kLine;  // vcpu->stat.hypercalls, in a per-vCPU state line
  c.store(stat, c.load(stat) + 1);
}

void Hypervisor::handle_io(PerCore& pc, Vcpu& v) {
  Core& c = *pc.core;
  charge(c, m_p.costs.io, kCodeIo);
  std::uint64_t q = vmr(c, field::kExitQualification);
  unsigned size = static_cast<unsigned>(q & 7) + 1;
  bool in = q & (1u << 3);
  auto port = static_cast<std::uint16_t>(q >> 16);
  // Emulated devices: the debug console is forwarded to the platform's; any
  // other port behaves as an empty ISA slot.
  if (port == kPm1aControlPort && !in && size == 2 && (v.regs[Regs::rax] & kPm1SlpEn)) {
    // ACPI sleep request (ACPI 6.x, 4.8.3.2.1, PM1 control SLP_EN): with
    // QEMU's sleep type for S5 the guest powers off; any sleep state stops
    // it here (no resume is modelled).
    stop_vm(c, *v.vm, "powered off (ACPI PM1a_CNT SLP_EN)");
    return;
  }
  if (port == 0xE9) {
    if (in) v.regs[Regs::rax] = c.in(port, size);
    else c.out(port, static_cast<std::uint32_t>(v.regs[Regs::rax]), size);
  } else if (in) {
    v.regs[Regs::rax] = size >= 4 ? 0xFFFFFFFFull : (1ull << (8 * size)) - 1;
  }
}

void Hypervisor::handle_cr(PerCore& pc, Vcpu& v) {
  Core& c = *pc.core;
  charge(c, m_p.costs.cr_access, kCodeCr);
  std::uint64_t q = vmr(c, field::kExitQualification);
  unsigned cr = q & 0xF, type = (q >> 4) & 3, gpr = (q >> 8) & 0xF;
  if (v.vm->shadow) {
    handle_shadow_cr(c, v, cr, type, gpr);
    return;
  }
  if (cr == 3 && type == cpu::qual::kCrMovFrom) {
    v.regs[gpr] = vmr(c, field::kGuestCr3);
  } else if (cr == 3 && type == cpu::qual::kCrMovTo) {
    vmw(c, field::kGuestCr3, v.regs[gpr]);
    if (v.vpid) c.invvpid(3, v.vpid, 0, Regs::rcx, vmx_operand(c, v.vpid));
  } else if (cr == 4 && type == cpu::qual::kCrMovTo) {
    if ((v.regs[gpr] & mmu::crbits::kCr4Vmxe) && !v.vm->nested_vmx) {
      inject_exception(c, cpu::vec::kGeneralProtection, true, 0);  // no nested VMX here
      return;
    }
    // With nested VMX, L0 keeps owning VMXE (its mask bit) and shows the
    // guest its own setting in the read shadow (nested.cc).
    if (v.vm->nested_vmx) vmw(c, field::kCr4ReadShadow, v.regs[gpr] & mmu::crbits::kCr4Vmxe);
    vmw(c, field::kGuestCr4, v.regs[gpr]);
  } else if (cr == 0 && type == cpu::qual::kCrMovTo) {
    vmw(c, field::kGuestCr0, v.regs[gpr]);
  } else {
    inject_exception(c, cpu::vec::kGeneralProtection, true, 0);
  }
}

void Hypervisor::handle_rdmsr(PerCore& pc, Vcpu& v) { handle_msr(pc, v, false); }
void Hypervisor::handle_wrmsr(PerCore& pc, Vcpu& v) { handle_msr(pc, v, true); }

// RDMSR and WRMSR: ECX names the MSR, EDX:EAX hold the value (SDM Vol. 2B);
// an MSR (or a direction) the hypervisor does not emulate is #GP(0).
void Hypervisor::handle_msr(PerCore& pc, Vcpu& v, bool write) {
  Core& c = *pc.core;
  charge(c, m_p.costs.msr, kCodeMsr);
  auto msr = static_cast<std::uint32_t>(v.regs[Regs::rcx]);
  std::uint64_t value = (v.regs[Regs::rdx] << 32) | (v.regs[Regs::rax] & 0xFFFFFFFF);
  const MsrTableT::Entry* e = m_msrs.find(msr);
  bool ok = false;
  if (e && write && e->write) ok = (this->*e->write)(pc, v, value);
  else if (e && !write && e->read) ok = (this->*e->read)(pc, v, value);
  if (!ok) {
    inject_exception(c, cpu::vec::kGeneralProtection, true, 0);
    return;
  }
  if (!write) {
    v.regs[Regs::rax] = value & 0xFFFFFFFF;
    v.regs[Regs::rdx] = value >> 32;
  }
}

bool Hypervisor::rdmsr_efer(PerCore& pc, Vcpu&, std::uint64_t& value) {
  value = vmr(*pc.core, field::kGuestIa32Efer);
  return true;
}
bool Hypervisor::wrmsr_efer(PerCore& pc, Vcpu&, std::uint64_t value) {
  vmw(*pc.core, field::kGuestIa32Efer, value);
  return true;
}
bool Hypervisor::rdmsr_tsc(PerCore& pc, Vcpu&, std::uint64_t& value) {
  value = pc.core->rdtsc();
  return true;
}

// ---------------------------------------------------------------------------
// Exits with no handler of their own above.

void Hypervisor::handle_hlt(PerCore& pc, Vcpu& v) {
  Core& c = *pc.core;
  charge(c, m_p.costs.hlt, kCodeHlt);
  // Block unless an interrupt is pending that the guest can take now;
  // HLT with interrupts off waits for the next one all the same.
  if (m_p.posted_interrupts) {
    // Blocked first, then the descriptor is checked: a poster either
    // sees the vCPU blocked and wakes it, or posted before the check.
    // While it is blocked, a device's posted interrupt notifies this
    // core with the wake-up vector instead (as KVM's pi_pre_block).
    v.state = Vcpu::State::Blocked;
    c.store(v.apic.pi_desc + kPidNvByte, kPostedWakeupVector, 1);
    v.apic.pi_wakeup = true;
    if (posted_pending(c, v) && (vmr(c, field::kGuestRflags) & (1u << 9))) v.state = Vcpu::State::Runnable;
    else program_timer(pc);
  } else if (!v.apic.virr.any() || !(vmr(c, field::kGuestRflags) & (1u << 9))) {
    v.state = Vcpu::State::Blocked;
    program_timer(pc);
  }
}

void Hypervisor::handle_exception(PerCore& pc, Vcpu& v) {
  Core& c = *pc.core;
  if (v.vm->shadow && (vmr(c, field::kExitIntrInfo) & 0xFF) == cpu::vec::kPageFault) handle_shadow_pf(c, v);
  else crash_vm(*v.vm, fmt::format("unexpected exception exit on vCPU {}", v.index));
}

void Hypervisor::handle_invlpg(PerCore& pc, Vcpu& v) {
  Core& c = *pc.core;
  if (v.vm->shadow) handle_shadow_invlpg(c, v);
  else inject_exception(c, cpu::vec::kInvalidOpcode, false, 0);
}

void Hypervisor::handle_mtf(PerCore& pc, Vcpu& v) {
  if (v.vm->shadow) handle_shadow_mtf(*pc.core, v);
  if (v.nested && v.nested->ept12_unprotected) handle_nested_mtf(pc, v);  // nested.cc
}

void Hypervisor::handle_external_interrupt(PerCore& pc, Vcpu&) {
  Core& c = *pc.core;
  charge(c, m_p.costs.external_interrupt, kCodeIrq);
  std::uint64_t info = vmr(c, field::kExitIntrInfo);
  if (info & cpu::intr::kValid) host_interrupt(pc, static_cast<std::uint8_t>(info & 0xFF));
}

void Hypervisor::handle_interrupt_window(PerCore& pc, Vcpu& v) {
  Core& c = *pc.core;
  charge(c, m_p.costs.interrupt_window, kCodeWindow);
  std::uint64_t procctl = vmr(c, field::kProcBasedControls);
  vmw(c, field::kProcBasedControls, procctl & ~cpu::proc::kInterruptWindowExiting);
  vlapic_request(c, v);  // KVM's handle_interrupt_window: KVM_REQ_EVENT
}

// The slice ended (slice_timer=preemption).
void Hypervisor::handle_preemption_timer(PerCore& pc, Vcpu&) {
  Core& c = *pc.core;
  charge(c, m_p.costs.preemption_timer, kCodePreemption);
  pc.sched->tick(c.rdtsc());
}

void Hypervisor::handle_vmx_instruction(PerCore& pc, Vcpu&) {
  inject_exception(*pc.core, cpu::vec::kInvalidOpcode, false, 0);
}

void Hypervisor::handle_triple_fault(PerCore&, Vcpu& v) {
  crash_vm(*v.vm, fmt::format("triple fault on vCPU {}", v.index));
}

void Hypervisor::handle_invalid_guest_state(PerCore&, Vcpu& v) {
  crash_vm(*v.vm, fmt::format("VM entry failed: invalid guest state on vCPU {}", v.index));
}

void Hypervisor::handle_ept_misconfig(PerCore& pc, Vcpu& v) {
  crash_vm(*v.vm,
           fmt::format("EPT misconfiguration at guest-physical {:#x}", vmr(*pc.core, field::kGuestPhysicalAddress)));
}

void Hypervisor::handle_ept_violation(PerCore& pc, Vcpu& v) {
  Core& c = *pc.core;
  std::uint64_t gpa = vmr(c, field::kGuestPhysicalAddress);
  Vm& vm = *v.vm;
  if (vm.virtio && virtio_exit(c, v, gpa)) return;  // emulated MMIO (hypervisor/virtio_net.cc)
  if ((vm.blk || vm.balloon) && overcommit_exit(c, v, gpa)) return;  // hypervisor/virtio_blk.cc
  if (vm.nic && vm.nic->contains(gpa)) {
    handle_nic_access(c, v);
    return;
  }
  if (!vm.ept12_tables.empty() && nested_ept12_write(pc, v, gpa)) return;  // shadow EPT (nested.cc)
  if (vm.dirty && dirty_wp_fault(pc, v, gpa)) return;  // dirty tracking, snapshots (dirty_log.cc)
  charge(c, m_p.costs.ept_violation, kCodeEpt);
  if (gpa >= vm.memory) {
    crash_vm(vm, fmt::format("vCPU {} accessed guest-physical {:#x}, beyond the VM's {} bytes of memory "
                             "(no device is emulated there)",
                             v.index, gpa, vm.memory));
    return;
  }
  // A page a post-copy migration has not brought here yet (postcopy.cc).
  if (vm.mig_in && mig_remote_fault(pc, v, gpa)) return;
  // A write to a merged page (docs/memory.md, "Same-page merging").
  if (m_ksm && ksm_write_fault(c, v, gpa)) return;
  // A not-present EPT entry is never cached, so no INVEPT is needed after
  // mapping it (SDM Vol. 3C, 29.4.3.2).
  const std::uint64_t backed_before = vm.backed;
  if (!back_guest_page(c, vm, gpa)) {
    stop_vm(c, vm, fmt::format("host memory exhausted backing guest-physical {:#x} ({})", gpa, host_memory_note()));
    return;
  }
  if (vm.dirty && vm.dirty->on && vm.backed != backed_before)
    dirty_after_backing(c, vm, gpa & ~(m_p.ept_page_size - 1), vmr(c, field::kExitQualification) & cpu::qual::kEptWrite);
}

}  // namespace vmx::hv
