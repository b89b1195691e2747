// Nested VMX (docs/nested.md, hypervisor/nested.h): L0 emulates the VMX
// instructions of a guest VMM (L1) on the vmcs12 in L1's memory, runs L1's
// guest (L2) on a merged vmcs02, and reflects L2's exits into L1 when
// vmcs12 asks for them. The mechanism follows KVM's nested VMX
// (arch/x86/kvm/vmx/nested.c): handle_vmxon ... handle_invvpid,
// nested_vmx_run / prepare_vmcs02, nested_vmx_reflect_vmexit /
// nested_vmx_l1_wants_exit, nested_vmx_vmexit / load_vmcs12_host_state.
#include "hypervisor/dirty_state.h"

#include <fmt/format.h>

#include "cpu/vmcs.h"
#include "mmu/paging.h"

namespace vmx::hv {

using namespace detail;
namespace pin = cpu::pin;
namespace proc = cpu::proc;
namespace proc2 = cpu::proc2;
namespace vmerr = cpu::vmerr;

namespace {
constexpr unsigned kEpt02RmapTag = 0x80000000u;
// RFLAGS arithmetic flags a VMX instruction defines (SDM Vol. 3C, 31.2):
// CF, PF, AF, ZF, SF, OF.
constexpr std::uint64_t kRflagsCf = 1u << 0, kRflagsZf = 1u << 6;
constexpr std::uint64_t kRflagsArith = kRflagsCf | (1u << 2) | (1u << 4) | kRflagsZf | (1u << 7) | (1u << 11);
constexpr std::uint64_t kRflagsIf = 1u << 9;
// VM-exit instruction-information fields (SDM Vol. 3C, 28.2.5).
constexpr unsigned info_reg1(std::uint64_t info) { return (info >> 3) & 0xF; }
constexpr unsigned info_reg2(std::uint64_t info) { return (info >> 28) & 0xF; }
constexpr bool info_is_reg(std::uint64_t info) { return info & (1u << 10); }

// The guest-state fields L0 copies from vmcs12 into vmcs02 at L1's VM entry
// and back at a reflected exit (prepare_vmcs02 / sync_vmcs02_to_vmcs12).
constexpr std::uint32_t kGuestState[] = {
    field::kGuestCr0,           field::kGuestCr3,          field::kGuestCr4,
    field::kGuestRip,           field::kGuestRsp,          field::kGuestRflags,
    field::kGuestSsAccessRights, field::kGuestIdtrBase,    field::kGuestIa32Efer,
    field::kGuestInterruptibility, field::kGuestActivityState,
};
// vmcs12 controls that pass into vmcs02 as they are.
constexpr std::uint32_t kCopiedControls[] = {
    field::kExceptionBitmap, field::kPfErrorCodeMask, field::kPfErrorCodeMatch, field::kCr0ReadShadow,
    field::kCr4ReadShadow,   field::kEntryIntrInfo,   field::kEntryExceptionErrorCode,
    field::kEntryInstructionLength, field::kTscOffset, field::kPreemptionTimerValue, field::kEntryControls,
};
// Exit information L0 copies from vmcs02 into vmcs12 at a reflected exit (28.2).
constexpr std::uint32_t kExitInfo[] = {
    field::kExitQualification, field::kExitIntrInfo,        field::kExitIntrErrorCode,
    field::kIdtVectoringInfo,  field::kIdtVectoringErrorCode, field::kExitInstructionLength,
    field::kVmxInstructionInfo, field::kGuestPhysicalAddress, field::kGuestLinearAddress,
};
// VMCS shadowing (KVM's vmcs_shadow_fields.h): the fields L1's exit path
// reads (read-only: L1 reads them, L0 writes them into the shadow) and
// reads and writes; the rest still exit.
constexpr std::uint32_t kShadowReadOnly[] = {
    field::kExitReason,        field::kExitQualification,   field::kExitIntrInfo,       field::kExitIntrErrorCode,
    field::kExitInstructionLength, field::kVmxInstructionInfo, field::kGuestPhysicalAddress, field::kGuestLinearAddress,
    field::kIdtVectoringInfo,
};
constexpr std::uint32_t kShadowReadWrite[] = {
    field::kGuestRip,       field::kGuestRsp,          field::kGuestRflags,     field::kGuestCr0,
    field::kGuestCr3,       field::kGuestCr4,          field::kGuestInterruptibility, field::kProcBasedControls,
    field::kEntryIntrInfo,  field::kEntryExceptionErrorCode, field::kPreemptionTimerValue, field::kGuestIa32Efer,
};
}  // namespace

// ---------------------------------------------------------------------------
// Registration: the VMX exits of a VM with nested_vmx go to these handlers;
// any other VM still gets #UD (handle_vmx_instruction).

void Hypervisor::register_nested_exit_handlers() {
  const std::pair<ExitReason, ExitHandler> table[] = {
      {ExitReason::Vmxon, &Hypervisor::handle_vmxon},       {ExitReason::Vmxoff, &Hypervisor::handle_vmxoff},
      {ExitReason::Vmptrld, &Hypervisor::handle_vmptrld},   {ExitReason::Vmptrst, &Hypervisor::handle_vmptrst},
      {ExitReason::Vmclear, &Hypervisor::handle_vmclear},   {ExitReason::Vmread, &Hypervisor::handle_vmread},
      {ExitReason::Vmwrite, &Hypervisor::handle_vmwrite},   {ExitReason::Vmlaunch, &Hypervisor::handle_vmlaunch},
      {ExitReason::Vmresume, &Hypervisor::handle_vmresume}, {ExitReason::Invept, &Hypervisor::handle_invept},
      {ExitReason::Invvpid, &Hypervisor::handle_invvpid},
  };
  for (const auto& [r, h] : table) {
    m_exits.off(r);
    m_exits.on(r, h);
  }
}

// ---------------------------------------------------------------------------
// Annotations from a guest VMM (GuestLink): its per-vCPU listeners get the
// entries and exits L0 emulates for their vmcs12 (simulator observation).

void Hypervisor::nested_observe(unsigned vm, std::uint64_t vmcs12, events::Listener* l) {
  Vm& m = *m_vms.at(vm);
  if (l) m.nested_observers[vmcs12] = l;
  else m.nested_observers.erase(vmcs12);
}

void Hypervisor::nested_exits(unsigned vm, events::Listener* l) { m_vms.at(vm)->nested_exit_listener = l; }

events::Listener* Hypervisor::nested_listener(const Vm& vm, std::uint64_t vmcs12) const {
  auto it = vm.nested_observers.find(vmcs12);
  return it == vm.nested_observers.end() ? nullptr : it->second;
}

// ---------------------------------------------------------------------------
// Helpers.

NestedVcpu& Hypervisor::nested_state(Vcpu& v) {
  if (!v.nested) {
    v.nested = std::make_unique<NestedVcpu>();
    v.nested->vpid02 = m_p.vpid ? m_next_vpid++ : 0;
    v.nested->obs02 = std::make_unique<cpu::VcpuObserver>(v.obs.get(), "l2");
  }
  return *v.nested;
}

std::uint64_t Hypervisor::l1_memory(Core& c, Vm& vm, std::uint64_t gpa) {
  if (gpa >= vm.memory) return 0;
  if (std::uint64_t hpa = ept_translate(c, vm, gpa)) return hpa;
  lock_mmu(c, vm);
  const std::uint64_t hpa = back_guest_page_locked(c, vm, gpa);
  unlock_mmu(c, vm);
  return hpa;
}

std::uint64_t Hypervisor::nested_operand_address(Core& c, Vcpu& v) {
  // base + index << scaling + displacement (SDM Vol. 3C, 28.2.5; KVM's
  // get_vmx_mem_address). Segment bases are 0; L1 runs with paging off
  // (linear = guest-physical), as the model's hypervisor does.
  const std::uint64_t info = vmr(c, field::kVmxInstructionInfo);
  std::uint64_t a = vmr(c, field::kExitQualification);
  if (!(info & (1u << 27))) a += v.regs[(info >> 23) & 0xF];
  if (!(info & (1u << 22))) a += v.regs[(info >> 18) & 0xF] << (info & 3);
  return a;
}

bool Hypervisor::nested_permitted(Core& c, Vcpu& v, bool needs_vmxon) {
  // SDM Vol. 3C, 31.3, the common prologue: #UD outside VMX operation
  // (VMXON: with CR4.VMXE clear), #GP(0) at CPL > 0.
  charge(c, m_p.costs.nested_vmx, kCodeNested);
  ++v.vm->nested_stats->emulated;
  NestedVcpu& n = nested_state(v);
  if (needs_vmxon ? !n.vmxon : !(vmr(c, field::kCr4ReadShadow) & mmu::crbits::kCr4Vmxe)) {
    inject_exception(c, cpu::vec::kInvalidOpcode, false, 0);
    return false;
  }
  if ((vmr(c, field::kGuestSsAccessRights) >> 5) & 3) {
    inject_exception(c, cpu::vec::kGeneralProtection, true, 0);
    return false;
  }
  return true;
}

void Hypervisor::nested_status(Core& c, Vcpu& v, cpu::VmxStatus s, std::uint32_t error) {
  // VMsucceed clears the six flags; VMfailInvalid sets CF; VMfailValid
  // sets ZF and writes the VM-instruction error field (SDM Vol. 3C, 31.2).
  std::uint64_t rf = vmr(c, field::kGuestRflags) & ~kRflagsArith;
  if (s == cpu::VmxStatus::FailValid && v.nested->current == ~0ull) s = cpu::VmxStatus::FailInvalid;
  if (s == cpu::VmxStatus::FailInvalid) rf |= kRflagsCf;
  if (s == cpu::VmxStatus::FailValid) {
    rf |= kRflagsZf;
    vmcs12_write(c, *v.nested, field::kVmInstructionError, error);
  }
  if (s != cpu::VmxStatus::Succeed) ++v.vm->nested_stats->vmfails;
  vmw(c, field::kGuestRflags, rf);
}

std::uint64_t Hypervisor::vmcs12_read(Core& c, const NestedVcpu& n, std::uint32_t enc) {
  return c.load(n.current_hpa + vmcs12::offset(enc), vmcs12::size(enc));
}

void Hypervisor::vmcs12_write(Core& c, const NestedVcpu& n, std::uint32_t enc, std::uint64_t value) {
  c.store(n.current_hpa + vmcs12::offset(enc), value, vmcs12::size(enc));
}

// ---------------------------------------------------------------------------
// The VMX instructions (SDM Vol. 3C, 31.3), emulated for L1.

void Hypervisor::handle_vmxon(PerCore& pc, Vcpu& v) {
  if (!v.vm->nested_vmx) return handle_vmx_instruction(pc, v);
  Core& c = *pc.core;
  if (!nested_permitted(c, v, false)) return;
  NestedVcpu& n = *v.nested;
  if (n.vmxon) return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kVmxonInVmxRoot);
  const std::uint64_t addr_hpa = l1_memory(c, *v.vm, nested_operand_address(c, v));
  const std::uint64_t region = addr_hpa ? c.load(addr_hpa) : ~0ull;
  const std::uint64_t region_hpa = (region & 0xFFF) ? 0 : l1_memory(c, *v.vm, region);
  if (!region_hpa || (c.load(region_hpa, 4) & 0x7FFFFFFF) != cpu::kVmcsRevision)
    return nested_status(c, v, cpu::VmxStatus::FailInvalid, 0);
  n.vmxon = true;
  n.vmxon_ptr = region;
  n.current = ~0ull;
  if (m_p.nested_shadow_vmcs) nested_shadow_enable(c, v);
  nested_status(c, v, cpu::VmxStatus::Succeed, 0);
}

void Hypervisor::handle_vmxoff(PerCore& pc, Vcpu& v) {
  if (!v.vm->nested_vmx) return handle_vmx_instruction(pc, v);
  Core& c = *pc.core;
  if (!nested_permitted(c, v, true)) return;
  NestedVcpu& n = *v.nested;
  nested_shadow_unlink(c, v);
  n.vmxon = false;
  n.current = ~0ull;
  nested_status(c, v, cpu::VmxStatus::Succeed, 0);
}

void Hypervisor::handle_vmptrld(PerCore& pc, Vcpu& v) {
  if (!v.vm->nested_vmx) return handle_vmx_instruction(pc, v);
  Core& c = *pc.core;
  if (!nested_permitted(c, v, true)) return;
  NestedVcpu& n = *v.nested;
  const std::uint64_t op = l1_memory(c, *v.vm, nested_operand_address(c, v));
  const std::uint64_t addr = op ? c.load(op) : ~0ull;
  const std::uint64_t hpa = (addr & 0xFFF) ? 0 : l1_memory(c, *v.vm, addr);
  if (!hpa) return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kVmptrldInvalidAddress);
  if (addr == n.vmxon_ptr) return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kVmptrldVmxonPointer);
  if ((c.load(hpa, 4) & 0x7FFFFFFF) != cpu::kVmcsRevision)
    return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kVmptrldWrongRevision);
  nested_shadow_unlink(c, v);
  n.current = addr;
  n.current_hpa = hpa;
  nested_shadow_load(c, v);
  nested_status(c, v, cpu::VmxStatus::Succeed, 0);
}

void Hypervisor::handle_vmptrst(PerCore& pc, Vcpu& v) {
  if (!v.vm->nested_vmx) return handle_vmx_instruction(pc, v);
  Core& c = *pc.core;
  if (!nested_permitted(c, v, true)) return;
  const std::uint64_t op = l1_memory(c, *v.vm, nested_operand_address(c, v));
  if (!op) {
    inject_exception(c, cpu::vec::kGeneralProtection, true, 0);
    return;
  }
  c.store(op, v.nested->current);
  nested_status(c, v, cpu::VmxStatus::Succeed, 0);
}

void Hypervisor::handle_vmclear(PerCore& pc, Vcpu& v) {
  if (!v.vm->nested_vmx) return handle_vmx_instruction(pc, v);
  Core& c = *pc.core;
  if (!nested_permitted(c, v, true)) return;
  NestedVcpu& n = *v.nested;
  const std::uint64_t op = l1_memory(c, *v.vm, nested_operand_address(c, v));
  const std::uint64_t addr = op ? c.load(op) : ~0ull;
  const std::uint64_t hpa = (addr & 0xFFF) ? 0 : l1_memory(c, *v.vm, addr);
  if (!hpa) return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kVmclearInvalidAddress);
  if (addr == n.vmxon_ptr) return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kVmclearVmxonPointer);
  // The launch state of the region becomes clear; a current VMCS stops
  // being current.
  if (addr == n.current) {
    nested_shadow_unlink(c, v);
    n.current = ~0ull;
  }
  c.store(hpa + vmcs12::kLaunchState, vmcs12::kClear, 4);
  nested_status(c, v, cpu::VmxStatus::Succeed, 0);
}

void Hypervisor::handle_vmread(PerCore& pc, Vcpu& v) {
  if (!v.vm->nested_vmx) return handle_vmx_instruction(pc, v);
  Core& c = *pc.core;
  if (!nested_permitted(c, v, true)) return;
  NestedVcpu& n = *v.nested;
  if (n.current == ~0ull) return nested_status(c, v, cpu::VmxStatus::FailInvalid, 0);
  // VMREAD r/m64, r64: the encoding in reg2, the destination in reg1 (or memory).
  const std::uint64_t info = vmr(c, field::kVmxInstructionInfo);
  const auto enc = static_cast<std::uint32_t>(v.regs[info_reg2(info)]);
  if (!cpu::Vmcs::supported(enc))
    return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kUnsupportedVmcsComponent);
  const std::uint64_t value = vmcs12_read(c, n, enc);
  if (info_is_reg(info)) {
    v.regs[info_reg1(info)] = value;
  } else {
    const std::uint64_t op = l1_memory(c, *v.vm, nested_operand_address(c, v));
    if (!op) return inject_exception(c, cpu::vec::kGeneralProtection, true, 0);
    c.store(op, value);
  }
  nested_status(c, v, cpu::VmxStatus::Succeed, 0);
}

void Hypervisor::handle_vmwrite(PerCore& pc, Vcpu& v) {
  if (!v.vm->nested_vmx) return handle_vmx_instruction(pc, v);
  Core& c = *pc.core;
  if (!nested_permitted(c, v, true)) return;
  NestedVcpu& n = *v.nested;
  if (n.current == ~0ull) return nested_status(c, v, cpu::VmxStatus::FailInvalid, 0);
  // VMWRITE r64, r/m64: the encoding in reg2, the value in reg1 (or memory).
  const std::uint64_t info = vmr(c, field::kVmxInstructionInfo);
  const auto enc = static_cast<std::uint32_t>(v.regs[info_reg2(info)]);
  std::uint64_t value = 0;
  if (info_is_reg(info)) {
    value = v.regs[info_reg1(info)];
  } else {
    const std::uint64_t op = l1_memory(c, *v.vm, nested_operand_address(c, v));
    if (!op) return inject_exception(c, cpu::vec::kGeneralProtection, true, 0);
    value = c.load(op);
  }
  if (!cpu::Vmcs::supported(enc))
    return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kUnsupportedVmcsComponent);
  // Read-only fields: error 13 (IA32_VMX_MISC bit 29, writing them, is not offered).
  if (cpu::Vmcs::read_only(enc)) return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kVmwriteReadOnly);
  vmcs12_write(c, n, enc, value);
  // An L1 that turns on virtual-interrupt delivery keeps L2's guest
  // interrupt status in the shadow VMCS from now on (the shadow's copy is
  // loaded from vmcs12 at the next reflected exit; L1 writes it first).
  if (enc == field::kSecondaryControls && (value & proc2::kVirtualInterruptDelivery) && !n.sync_gis) {
    // L2's guest interrupt status, which an L1 with virtual-interrupt
    // delivery reads at each HLT of L2 (KVM shadows it read-write too),
    // becomes a shadowed field (an L1 without it never touches the field).
    n.sync_gis = true;
    if (m_vmread_bitmap) {
      constexpr std::uint32_t f = field::kGuestIntrStatus;
      for (std::uint64_t bitmap : {m_vmread_bitmap, m_vmwrite_bitmap})
        if ((c.load(bitmap + f / 8, 1) >> (f % 8)) & 1) c.store(bitmap + f / 8, c.load(bitmap + f / 8, 1) & ~(1u << (f % 8)), 1);
    }
  }
  nested_status(c, v, cpu::VmxStatus::Succeed, 0);
}

void Hypervisor::handle_invept(PerCore& pc, Vcpu& v) {
  if (!v.vm->nested_vmx) return handle_vmx_instruction(pc, v);
  Core& c = *pc.core;
  if (!nested_permitted(c, v, true)) return;
  // Types 1 (single-context) and 2 (all-context), SDM Vol. 3C, 31.3
  // INVEPT. Every translation derived from EPT12 is in EPT02, which is
  // dropped (single-context: when the descriptor names the EPTP it shadows)
  // and rebuilt on demand, as KVM frees its shadow roots.
  const std::uint64_t type = v.regs[info_reg2(vmr(c, field::kVmxInstructionInfo))];
  if (type != 1 && type != 2) return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kInvalidOperandInvept);
  NestedVcpu& n = *v.nested;
  if (type == 1) {
    const std::uint64_t desc = l1_memory(c, *v.vm, nested_operand_address(c, v));
    if (!desc) return inject_exception(c, cpu::vec::kGeneralProtection, true, 0);
    const std::uint64_t eptp = c.load(desc);
    if (n.ept02 && (eptp & mmu::ept::kAddrMask) == (n.eptp12 & mmu::ept::kAddrMask)) nested_drop_ept02(c, v);
  } else if (n.ept02) {
    nested_drop_ept02(c, v);
  }
  nested_status(c, v, cpu::VmxStatus::Succeed, 0);
}

void Hypervisor::handle_invvpid(PerCore& pc, Vcpu& v) {
  if (!v.vm->nested_vmx) return handle_vmx_instruction(pc, v);
  Core& c = *pc.core;
  if (!nested_permitted(c, v, true)) return;
  const std::uint64_t type = v.regs[info_reg2(vmr(c, field::kVmxInstructionInfo))];
  const std::uint64_t desc = l1_memory(c, *v.vm, nested_operand_address(c, v));
  if (!desc) return inject_exception(c, cpu::vec::kGeneralProtection, true, 0);
  const auto vpid = static_cast<std::uint16_t>(c.load(desc));
  const std::uint64_t la = c.load(desc + 8);
  // SDM Vol. 3C, 31.3 INVVPID: types 0-3; a VPID of 0 is invalid but for
  // the all-context type. Every VPID of L1 is one VPID of L0 (vpid02), as in
  // KVM, so the flush is of vpid02.
  if (type > 3 || (type != 2 && vpid == 0))
    return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kInvalidOperandInvept);
  NestedVcpu& n = *v.nested;
  if (n.vpid02) {
    if (type == 0) c.invvpid(0, n.vpid02, la, Regs::rcx, vmx_operand(c, n.vpid02, la));
    else c.invvpid(1, n.vpid02, 0, Regs::rcx, vmx_operand(c, n.vpid02));
  }
  nested_status(c, v, cpu::VmxStatus::Succeed, 0);
}

void Hypervisor::handle_vmlaunch(PerCore& pc, Vcpu& v) {
  if (!v.vm->nested_vmx) return handle_vmx_instruction(pc, v);
  nested_run(pc, v, true);
}

void Hypervisor::handle_vmresume(PerCore& pc, Vcpu& v) {
  if (!v.vm->nested_vmx) return handle_vmx_instruction(pc, v);
  nested_run(pc, v, false);
}

// ---------------------------------------------------------------------------
// L1's VM entry: the checks of SDM Vol. 3C, 27.1-27.2 that L0 makes on
// vmcs12, then vmcs02 (KVM's nested_vmx_run and prepare_vmcs02).

void Hypervisor::nested_run(PerCore& pc, Vcpu& v, bool launch) {
  Core& c = *pc.core;
  if (!nested_permitted(c, v, true)) return;
  NestedVcpu& n = *v.nested;
  if (n.current == ~0ull) return nested_status(c, v, cpu::VmxStatus::FailInvalid, 0);
  nested_shadow_store(c, v);  // what L1 wrote without exits, into vmcs12
  const bool launched = c.load(n.current_hpa + vmcs12::kLaunchState, 4) == vmcs12::kLaunched;
  if (launch && launched) return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kVmlaunchNonClear);
  if (!launch && !launched) return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kVmresumeNonLaunched);
  const auto pin12 = static_cast<std::uint32_t>(vmcs12_read(c, n, field::kPinBasedControls));
  const auto proc12 = static_cast<std::uint32_t>(vmcs12_read(c, n, field::kProcBasedControls));
  const auto proc2_12 = (proc12 & proc::kActivateSecondaryControls)
                            ? static_cast<std::uint32_t>(vmcs12_read(c, n, field::kSecondaryControls))
                            : 0u;
  if ((pin12 & ~nested_allowed::kPin) || (proc12 & ~nested_allowed::kProc) || (proc2_12 & ~nested_allowed::kProc2) ||
      ((proc2_12 & proc2::kEnableVpid) && vmcs12_read(c, n, field::kVpid) == 0))
    return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kEntryInvalidControls);
  // EPT12 (27.2.1.1): write-back, 4 levels (what L0 offers), inside L1's memory.
  const std::uint64_t eptp12 = (proc2_12 & proc2::kEnableEpt) ? vmcs12_read(c, n, field::kEptPointer) : 0;
  if ((proc2_12 & proc2::kEnableEpt) &&
      ((eptp12 & 7) != mmu::ept::kEptpWb || mmu::ept::eptp_levels(eptp12) != 4 ||
       (eptp12 & mmu::ept::kAddrMask) >= v.vm->memory))
    return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kEntryInvalidControls);
  // APIC virtualization, posted interrupts and PML (27.2.1.1), on vmcs12:
  // the virtual-APIC page, the descriptor and the log inside L1's memory.
  const bool tpr12 = proc12 & proc::kUseTprShadow;
  const std::uint64_t vapic12 = tpr12 ? vmcs12_read(c, n, field::kVirtualApicPage) : 0;
  std::uint64_t pi_desc12 = 0, pi_nv12 = 0;
  {
    bool bad = false;
    if (tpr12 && ((vapic12 & 0xFFF) || vapic12 >= v.vm->memory)) bad = true;
    if (!tpr12 && (proc2_12 & (proc2::kVirtualizeX2apic | proc2::kVirtualInterruptDelivery))) bad = true;
    if ((proc2_12 & proc2::kVirtualInterruptDelivery) && !(pin12 & pin::kExternalInterruptExiting)) bad = true;
    if (pin12 & pin::kPostedInterrupts) {
      pi_desc12 = vmcs12_read(c, n, field::kPostedIntrDesc);
      pi_nv12 = vmcs12_read(c, n, field::kPostedIntrNv);
      if (!(proc2_12 & proc2::kVirtualInterruptDelivery) ||
          !(vmcs12_read(c, n, field::kExitControls) & cpu::exitctl::kAckInterruptOnExit) || (pi_nv12 & 0xFF00) ||
          (pi_desc12 & 0x3F) || pi_desc12 >= v.vm->memory)
        bad = true;
    }
    if (proc2_12 & proc2::kEnablePml) {
      const std::uint64_t pml12 = vmcs12_read(c, n, field::kPmlAddress);
      if (!(proc2_12 & proc2::kEnableEpt) || (pml12 & 0xFFF) || pml12 >= v.vm->memory) bad = true;
    }
    if (bad) return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kEntryInvalidControls);
  }
  if (!vmcs12_read(c, n, field::kHostRip))
    return nested_status(c, v, cpu::VmxStatus::FailValid, vmerr::kEntryInvalidHostState);
  charge(c, m_p.costs.nested_entry, kCodeNested + 0x400);
  // The host state of vmcs12 is L1's state now (the model's processor saves
  // CR0, CR3, CR4 and IDTR at entry instead of software writing them, and
  // L0 does the same for L1, cpu/core.cc).
  for (auto [from, to] : {std::pair{field::kGuestCr0, field::kHostCr0}, std::pair{field::kGuestCr3, field::kHostCr3},
                          std::pair{field::kGuestCr4, field::kHostCr4},
                          std::pair{field::kGuestIdtrBase, field::kHostIdtrBase}})
    vmcs12_write(c, n, to, vmr(c, from));
  if (launch) c.store(n.current_hpa + vmcs12::kLaunchState, vmcs12::kLaunched, 4);
  nested_status(c, v, cpu::VmxStatus::Succeed, 0);  // RFLAGS of L1 as the entry leaves them

  // vmcs02: L0's controls where L0 needs exits (external interrupts, HLT,
  // every I/O port and MSR through L0's all-ones bitmaps, EPT01 for L2's
  // guest-physical space, VMXE in CR4), L1's otherwise.
  if (!n.other_vmcs) {
    n.other_vmcs = alloc_host_frame();
    c.store(n.other_vmcs, cpu::kVmcsRevision, 4);
    c.vmclear(n.other_vmcs, vmx_operand(c, n.other_vmcs));
  }
  nested_switch(c, v);
  if (!n.vmcs02_ready) {
    vmw(c, field::kExitControls, cpu::exitctl::kHostAddressSpaceSize | cpu::exitctl::kAckInterruptOnExit);
    vmw(c, field::kMsrBitmap, m_msr_bitmap);
    n.msr_bitmap02 = m_msr_bitmap;
    vmw(c, field::kIoBitmapA, m_io_bitmap_a);
    vmw(c, field::kIoBitmapB, m_io_bitmap_b);
    vmw(c, field::kVpid, n.vpid02);
    vmw(c, field::kHostRip, cpu::code_address(pc.fiber.get()));
    vmw(c, field::kHostIdtrBase, cpu::code_address(&pc));
    observe(c, v.vmcs_pa, n.obs02.get());
    n.vmcs02_ready = true;
  }
  // L2's guest-physical space: L1's own (EPT01) when L1 does not use EPT,
  // else EPT02, the shadow of EPT12 (a new EPTP12 drops the old shadow).
  if (eptp12) {
    if (n.ept02 && (n.eptp12 & mmu::ept::kAddrMask) != (eptp12 & mmu::ept::kAddrMask)) nested_drop_ept02(c, v);
    if (!n.ept02) {
      bool fresh = true;
      const std::uint64_t root = alloc_host_frame(&fresh);
      if (!fresh) c.rep_stos(root, 0, kPage);
      Ept::Env env;
      env.frames = &m_frames;
      env.table_zone = m_hv_zone;
      env.vm = kEpt02RmapTag | v.vm->id;  // reverse-map entries apart from EPT01's
      env.on_table = [this] { ++m_totals.ept_tables; };
      // One vCPU's EPT02 is used on the core the vCPU runs on (nested VMX
      // keeps vCPUs on their cores): INVEPT there.
      env.flush = [this](Core& core, std::uint64_t eptp) {
        if (core.invept(1, eptp, Regs::rcx, vmx_operand(core, eptp)) != cpu::VmxStatus::Succeed)
          throw cpu::SimulationError("hypervisor: INVEPT failed");
      };
      n.ept02 = std::make_unique<Ept>(std::move(env), root, 4, false);
    }
    n.eptp12 = eptp12;
    vmw(c, field::kEptPointer, n.ept02->eptp());
  } else {
    vmw(c, field::kEptPointer, v.vm->eptp);
  }
  vmw(c, field::kPinBasedControls, pin12 | pin::kExternalInterruptExiting);
  vmw(c, field::kProcBasedControls, (proc12 & ~proc::kUnconditionalIoExiting) | proc::kHltExiting |
                                        proc::kUseIoBitmaps | proc::kUseMsrBitmaps | proc::kActivateSecondaryControls);
  // PML of vmcs12 is emulated (nested_pml_log): the core logs nothing for L2.
  vmw(c, field::kSecondaryControls, (proc2_12 & ~(proc2::kEnableVpid | proc2::kEnablePml)) | proc2::kEnableEpt |
                                        (n.vpid02 ? proc2::kEnableVpid : 0));
  n.pml12 = proc2_12 & proc2::kEnablePml;
  n.vid12 = proc2_12 & proc2::kVirtualInterruptDelivery;
  n.pi_nv12 = (pin12 & pin::kPostedInterrupts) ? static_cast<int>(pi_nv12) : -1;
  if (n.pi_nv12 < 0) n.pi_pending = false;
  if (tpr12) nested_apic_controls(c, v, proc2_12, vapic12, pi_desc12);
  else if (n.msr_bitmap02 != m_msr_bitmap) {
    vmw(c, field::kMsrBitmap, m_msr_bitmap);
    n.msr_bitmap02 = m_msr_bitmap;
  }
  vmw(c, field::kCr0GuestHostMask, vmcs12_read(c, n, field::kCr0GuestHostMask));
  vmw(c, field::kCr4GuestHostMask, vmcs12_read(c, n, field::kCr4GuestHostMask) | mmu::crbits::kCr4Vmxe);
  for (std::uint32_t f : kCopiedControls) vmw(c, f, vmcs12_read(c, n, f));
  for (std::uint32_t f : kGuestState) vmw(c, f, vmcs12_read(c, n, f));
  // The event L1 injects is delivered by this entry; the valid bit in
  // vmcs12 is cleared as the processor clears it (SDM Vol. 3C, 28.2.x / 27.6).
  const std::uint64_t inj = vmcs12_read(c, n, field::kEntryIntrInfo);
  if (inj & cpu::intr::kValid) vmcs12_write(c, n, field::kEntryIntrInfo, inj & ~std::uint64_t{cpu::intr::kValid});
  ++v.vm->nested_stats->l2_entries;
  if (n.pending_reason >= 0) {
    NestedStats::Reason& rs = v.vm->nested_stats->reason(static_cast<unsigned>(n.pending_reason));
    rs.l1_exits.sample(n.l1_exits);
    rs.l0_exits.sample(n.l1_exits + 1);  // + the exit of L2 that started it (counted in l0_exits)
    rs.vmrw_exits.sample(n.vmrw_exits);
    rs.l1_cycles.sample(c.now() - n.reflected_at);
    rs.l0_cycles.sample(n.l0_cycles + (c.now() - n.root_since));
    rs.cycles.sample(c.now() - n.l2_exit_at);
    n.pending_reason = -1;
  }
  if (events::Listener* l = nested_listener(*v.vm, n.current))
    l->vm_entry({n.current, c.now(), static_cast<std::uint16_t>(vmcs12_read(c, n, field::kVpid)), launch});
}

// ---------------------------------------------------------------------------
// VMCS shadowing (SDM Vol. 3C, 25.10): L1's VMREAD/VMWRITE of the shadowed
// fields read and write a shadow VMCS that vmcs01's link pointer names.

void Hypervisor::nested_shadow_enable(Core& c, Vcpu& v) {
  NestedVcpu& n = *v.nested;
  if (!m_vmread_bitmap) {
    // The bitmaps: every field exits (bit set) but the shadowed ones;
    // bit i is the field whose encoding is i (bits 14:0).
    m_vmread_bitmap = alloc_host_frame();
    m_vmwrite_bitmap = alloc_host_frame();
    c.rep_stos(m_vmread_bitmap, 0xFF, kPage);
    c.rep_stos(m_vmwrite_bitmap, 0xFF, kPage);
    auto clear = [&](std::uint64_t bitmap, std::uint32_t enc) {
      const std::uint64_t byte = bitmap + enc / 8;
      c.store(byte, c.load(byte, 1) & ~(1u << (enc % 8)), 1);
    };
    for (std::uint32_t f : kShadowReadOnly) clear(m_vmread_bitmap, f);
    for (std::uint32_t f : kShadowReadWrite) {
      clear(m_vmread_bitmap, f);
      clear(m_vmwrite_bitmap, f);
    }

  }
  if (!n.shadow_vmcs) {
    n.shadow_vmcs = alloc_host_frame();
    c.store(n.shadow_vmcs, cpu::kVmcsRevision | cpu::kShadowVmcsIndicator, 4);
    c.vmclear(n.shadow_vmcs, vmx_operand(c, n.shadow_vmcs));
  }
  vmw(c, field::kSecondaryControls, vmr(c, field::kSecondaryControls) | proc2::kVmcsShadowing);
  vmw(c, field::kVmreadBitmap, m_vmread_bitmap);
  vmw(c, field::kVmwriteBitmap, m_vmwrite_bitmap);
  vmw(c, field::kVmcsLinkPointer, ~0ull);
}

void Hypervisor::nested_shadow_load(Core& c, Vcpu& v) {
  NestedVcpu& n = *v.nested;
  if (!n.shadow_vmcs || n.current == ~0ull) return;
  if (c.vmptrld(n.shadow_vmcs, vmx_operand(c, n.shadow_vmcs)) != cpu::VmxStatus::Succeed)
    throw cpu::SimulationError("hypervisor: VMPTRLD of a shadow VMCS failed");
  for (std::uint32_t f : kShadowReadOnly) vmw(c, f, vmcs12_read(c, n, f));  // IA32_VMX_MISC[29]
  for (std::uint32_t f : kShadowReadWrite) vmw(c, f, vmcs12_read(c, n, f));
  if (n.sync_gis) vmw(c, field::kGuestIntrStatus, vmcs12_read(c, n, field::kGuestIntrStatus));
  if (c.vmptrld(v.vmcs_pa, vmx_operand(c, v.vmcs_pa)) != cpu::VmxStatus::Succeed)
    throw cpu::SimulationError("hypervisor: VMPTRLD failed");
  vmw(c, field::kVmcsLinkPointer, n.shadow_vmcs);
}

void Hypervisor::nested_shadow_store(Core& c, Vcpu& v) {
  NestedVcpu& n = *v.nested;
  if (!n.shadow_vmcs || n.current == ~0ull) return;
  if (c.vmptrld(n.shadow_vmcs, vmx_operand(c, n.shadow_vmcs)) != cpu::VmxStatus::Succeed)
    throw cpu::SimulationError("hypervisor: VMPTRLD of a shadow VMCS failed");
  for (std::uint32_t f : kShadowReadWrite) vmcs12_write(c, n, f, vmr(c, f));
  if (n.sync_gis) vmcs12_write(c, n, field::kGuestIntrStatus, vmr(c, field::kGuestIntrStatus));
  if (c.vmptrld(v.vmcs_pa, vmx_operand(c, v.vmcs_pa)) != cpu::VmxStatus::Succeed)
    throw cpu::SimulationError("hypervisor: VMPTRLD failed");
}

void Hypervisor::nested_shadow_unlink(Core& c, Vcpu& v) {
  // vmcs12 stops being current: what L1 wrote into the shadow goes back,
  // and L1's VMREAD/VMWRITE find no shadow (VMfailInvalid, as without a
  // current VMCS).
  NestedVcpu& n = *v.nested;
  if (!n.shadow_vmcs || n.current == ~0ull) return;
  nested_shadow_store(c, v);
  vmw(c, field::kVmcsLinkPointer, ~0ull);
}

void Hypervisor::nested_switch(Core& c, Vcpu& v) {
  // vmcs01 <-> vmcs02 (KVM's vmx_switch_vmcs): the other one becomes the
  // vCPU's VMCS and current on this core.
  NestedVcpu& n = *v.nested;
  std::swap(v.vmcs_pa, n.other_vmcs);
  std::swap(v.launched, n.other_launched);
  n.guest_mode = !n.guest_mode;
  if (c.vmptrld(v.vmcs_pa, vmx_operand(c, v.vmcs_pa)) != cpu::VmxStatus::Succeed)
    throw cpu::SimulationError("hypervisor: VMPTRLD failed");
}

// ---------------------------------------------------------------------------
// L2's exits (KVM's nested_vmx_reflect_vmexit): to L1 when vmcs12 asks for
// them (SDM Vol. 3C, 26.1-26.2 applied to vmcs12), else L0's own handler.

bool Hypervisor::nested_l1_wants(Core& c, Vcpu& v, unsigned reason) {
  NestedVcpu& n = *v.nested;
  auto ctl = [&](std::uint32_t f) { return static_cast<std::uint32_t>(vmcs12_read(c, n, f)); };
  switch (static_cast<ExitReason>(reason)) {
    // Unconditional in non-root operation (26.1.2), and an entry failure.
    case ExitReason::TripleFault:
    case ExitReason::Cpuid:
    case ExitReason::Vmcall:
    case ExitReason::Vmclear: case ExitReason::Vmlaunch: case ExitReason::Vmptrld: case ExitReason::Vmptrst:
    case ExitReason::Vmread: case ExitReason::Vmresume: case ExitReason::Vmwrite: case ExitReason::Vmxoff:
    case ExitReason::Vmxon: case ExitReason::Invept: case ExitReason::Invvpid:
    case ExitReason::EntryFailGuestState:
      return true;
    case ExitReason::ExceptionOrNmi: {
      const auto info = static_cast<std::uint32_t>(vmr(c, field::kExitIntrInfo));
      const unsigned vector = info & 0xFF;
      bool bit = (ctl(field::kExceptionBitmap) >> vector) & 1;
      if (vector == cpu::vec::kPageFault) {
        // #PF: the bitmap bit applies when (error code & mask) == match,
        // its inverse otherwise (25.6.3).
        const auto ec = static_cast<std::uint32_t>(vmr(c, field::kExitIntrErrorCode));
        if ((ec & ctl(field::kPfErrorCodeMask)) != ctl(field::kPfErrorCodeMatch)) bit = !bit;
      }
      return bit;
    }
    case ExitReason::ExternalInterrupt: return false;  // L0's own interrupts
    case ExitReason::InterruptWindow: return ctl(field::kProcBasedControls) & proc::kInterruptWindowExiting;
    case ExitReason::Hlt: return ctl(field::kProcBasedControls) & proc::kHltExiting;
    case ExitReason::Invlpg: return ctl(field::kProcBasedControls) & proc::kInvlpgExiting;
    case ExitReason::Rdtsc: return ctl(field::kProcBasedControls) & proc::kRdtscExiting;
    case ExitReason::Rdpmc: return ctl(field::kProcBasedControls) & proc::kRdpmcExiting;
    case ExitReason::MonitorTrapFlag: return ctl(field::kProcBasedControls) & proc::kMonitorTrapFlag;
    case ExitReason::PreemptionTimer: return ctl(field::kPinBasedControls) & pin::kPreemptionTimer;
    case ExitReason::CrAccess: {
      // 26.1.3: MOV to CR0/CR4 exits when it would change a bit L1 owns
      // (set in its mask) from its read shadow; CR3 per the CR3 controls.
      const std::uint64_t q = vmr(c, field::kExitQualification);
      const unsigned cr = q & 0xF, type = (q >> 4) & 3, gpr = (q >> 8) & 0xF;
      if (cr == 3) return ctl(field::kProcBasedControls) &
                          (type == cpu::qual::kCrMovTo ? proc::kCr3LoadExiting : proc::kCr3StoreExiting);
      if (type != cpu::qual::kCrMovTo || (cr != 0 && cr != 4)) return false;
      const std::uint64_t mask = vmcs12_read(c, n, cr == 0 ? field::kCr0GuestHostMask : field::kCr4GuestHostMask);
      const std::uint64_t shadow = vmcs12_read(c, n, cr == 0 ? field::kCr0ReadShadow : field::kCr4ReadShadow);
      return (v.regs[gpr] ^ shadow) & mask;
    }
    case ExitReason::IoInstruction: {
      const std::uint32_t p = ctl(field::kProcBasedControls);
      if (!(p & proc::kUseIoBitmaps)) return p & proc::kUnconditionalIoExiting;
      // 26.1.3: any port of the access whose bit is set in bitmap A
      // (0-7FFF) or B (8000-FFFF) of L1, in L1's memory.
      const std::uint64_t q = vmr(c, field::kExitQualification);
      const unsigned size = static_cast<unsigned>(q & 7) + 1;
      const auto port = static_cast<std::uint32_t>(q >> 16);
      for (std::uint32_t pt = port; pt < port + size; ++pt) {
        if (pt > 0xFFFF) return true;
        const std::uint64_t bitmap = vmcs12_read(c, n, pt < 0x8000 ? field::kIoBitmapA : field::kIoBitmapB);
        const std::uint64_t hpa = l1_memory(c, *v.vm, bitmap + (pt & 0x7FFF) / 8);
        if (!hpa || ((c.load(hpa, 1) >> (pt % 8)) & 1)) return true;
      }
      return false;
    }
    case ExitReason::Rdmsr:
    case ExitReason::Wrmsr: {
      // 26.1.3: without MSR bitmaps every RDMSR/WRMSR exits; with them, the
      // bit of the MSR in L1's bitmap (read-low, read-high, write-low,
      // write-high quarters); MSRs outside both ranges always exit.
      if (!(ctl(field::kProcBasedControls) & proc::kUseMsrBitmaps)) return true;
      const auto msr = static_cast<std::uint32_t>(v.regs[Regs::rcx]);
      std::uint64_t off = 0;
      if (msr <= 0x1FFF) off = 0;
      else if (msr >= 0xC0000000u && msr <= 0xC0001FFFu) off = 1024;
      else return true;
      if (static_cast<ExitReason>(reason) == ExitReason::Wrmsr) off += 2048;
      const std::uint64_t hpa = l1_memory(c, *v.vm, vmcs12_read(c, n, field::kMsrBitmap) + off + (msr & 0x1FFF) / 8);
      return !hpa || ((c.load(hpa, 1) >> (msr % 8)) & 1);
    }
    default: return false;  // EPT violations and misconfigurations of EPT01, ...: L0's
  }
}

void Hypervisor::nested_l2_exit(PerCore& pc, Vcpu& v, unsigned reason) {
  Core& c = *pc.core;
  if (nested_l1_wants(c, v, reason)) {
    nested_vmexit(c, v, reason, true, 0);
    return;
  }
  // EPT02's violations are L1's when EPT12 does not map the access.
  if (static_cast<ExitReason>(reason) == ExitReason::EptViolation && v.nested->ept02 && nested_ept_violation(pc, v))
    return;
  ++v.vm->nested_stats->l0_handled;
  ++v.vm->nested_stats->reason(reason).l0_handled;
  if (static_cast<ExitReason>(reason) == ExitReason::EptViolation && v.nested->ept02) return;
  if (ExitHandler h = m_exits.find(reason)) (this->*h)(pc, v);
  else unexpected_exit(v, reason);
}

void Hypervisor::nested_vmexit(Core& c, Vcpu& v, unsigned reason, bool hardware, std::uint32_t intr_info) {
  // KVM's nested_vmx_vmexit: exit information and L2's state into vmcs12
  // (SDM Vol. 3C, 28.2-28.3), then L1 resumes at vmcs12's host RIP with its
  // host state (28.5): CR0, CR3, CR4, IDTR, RSP, RFLAGS with only bit 1 set,
  // CPL 0. The general-purpose registers pass through, as on hardware.
  NestedVcpu& n = *v.nested;
  charge(c, m_p.costs.nested_exit, kCodeNested + 0x800);
  const std::uint64_t full = reason == static_cast<unsigned>(ExitReason::EntryFailGuestState) ? (1u << 31) | reason
                                                                                              : reason;
  vmcs12_write(c, n, field::kExitReason, full);
  for (std::uint32_t f : kExitInfo) vmcs12_write(c, n, f, hardware ? vmr(c, f) : 0);
  if (!hardware) vmcs12_write(c, n, field::kExitIntrInfo, intr_info);
  for (std::uint32_t f : kGuestState) vmcs12_write(c, n, f, vmr(c, f));
  if (n.vid12) vmcs12_write(c, n, field::kGuestIntrStatus, vmr(c, field::kGuestIntrStatus));  // RVI, SVI of L2
  if (vmcs12_read(c, n, field::kPinBasedControls) & pin::kPreemptionTimer)
    vmcs12_write(c, n, field::kPreemptionTimerValue, vmr(c, field::kPreemptionTimerValue));
  const std::uint64_t inj = vmcs12_read(c, n, field::kEntryIntrInfo);
  if (inj & cpu::intr::kValid) vmcs12_write(c, n, field::kEntryIntrInfo, inj & ~std::uint64_t{cpu::intr::kValid});
  nested_switch(c, v);
  for (auto [from, to] : {std::pair{field::kHostCr0, field::kGuestCr0}, std::pair{field::kHostCr3, field::kGuestCr3},
                          std::pair{field::kHostCr4, field::kGuestCr4},
                          std::pair{field::kHostIdtrBase, field::kGuestIdtrBase},
                          std::pair{field::kHostRsp, field::kGuestRsp}, std::pair{field::kHostRip, field::kGuestRip}})
    vmw(c, to, vmcs12_read(c, n, from));
  vmw(c, field::kGuestRflags, 0x2);
  vmw(c, field::kGuestSsAccessRights, 0);
  nested_shadow_load(c, v);  // the exit information L1 reads without exits
  ++v.vm->nested_stats->reflected;
  ++v.vm->nested_stats->reason(reason).reflected;
  n.pending_reason = static_cast<int>(reason);
  n.reflected_at = c.now();
  n.l2_exit_at = hardware && n.obs02->pending ? n.obs02->pending_since : n.reflected_at;
  n.l1_exits = n.vmrw_exits = n.l0_cycles = 0;
  const events::VmExit ev{n.current, c.now(), vmcs12_read(c, n, field::kExitQualification),
                          static_cast<std::uint16_t>(reason), static_cast<std::uint16_t>(vmcs12_read(c, n, field::kVpid))};
  if (events::Listener* l = nested_listener(*v.vm, n.current)) l->vm_exit(ev);
  if (v.vm->nested_exit_listener) v.vm->nested_exit_listener->vm_exit(ev);
}

void Hypervisor::nested_before_entry(PerCore& pc, Vcpu& v) {
  // An interrupt for L1 while L2 runs: with "external-interrupt exiting" in
  // vmcs12 it is an EXTERNAL_INTERRUPT exit to L1, acknowledged into the
  // exit-interruption information when vmcs12 asks for that (25.7.1);
  // otherwise L0 injects it into L2, which receives L1's interrupts directly.
  NestedVcpu& n = *v.nested;
  if (!n.guest_mode) return;
  if (n.pi_nv12 >= 0 && v.apic.virr.test(static_cast<std::size_t>(n.pi_nv12))) {
    // L1's own notification vector, pending for L1 as L2 is entered (L1
    // sent it to itself, or L2 was not running when it came): posted-
    // interrupt processing for L2 instead of an exit to L1, as the
    // processor would do when the interrupt arrived (KVM's
    // vmx_check_nested_events). The vector leaves L1's IRR.
    Core& c = *pc.core;
    const auto nv = static_cast<unsigned>(n.pi_nv12);
    v.apic.virr.reset(nv);
    const std::uint64_t irr = v.save_area + kVlapicOffset + kVlapicIrr + 16 * (nv / 32);
    c.store(irr, c.load(irr, 4) & ~(1ull << (nv % 32)), 4);
    n.pi_pending = true;
  }
  if (n.pi_pending) nested_complete_posted(*pc.core, v);
  if (!v.apic.virr.any()) return;
  Core& c = *pc.core;
  if (!(vmcs12_read(c, n, field::kPinBasedControls) & pin::kExternalInterruptExiting)) return;
  std::uint32_t info = 0;
  if (vmcs12_read(c, n, field::kExitControls) & cpu::exitctl::kAckInterruptOnExit) {
    int vec = 255;
    while (vec >= 0 && !v.apic.virr.test(static_cast<std::size_t>(vec))) --vec;
    v.apic.virr.reset(static_cast<std::size_t>(vec));
    info = cpu::intr::info(static_cast<std::uint8_t>(vec), cpu::intr::kTypeExternal);
  }
  nested_vmexit(c, v, static_cast<unsigned>(ExitReason::ExternalInterrupt), false, info);
}

// ---------------------------------------------------------------------------
// Shadow EPT (KVM's nested EPT: ept_page_fault through the paging64 walker
// in EPT mode, arch/x86/kvm/mmu/paging_tmpl.h).

bool Hypervisor::nested_ept_violation(PerCore& pc, Vcpu& v) {
  // An EPT violation of EPT02 at L2's guest-physical gpa2: walk EPT12 in
  // L1's memory (SDM Vol. 3C, 29.3.2). Not present or not permitting the
  // access: the violation is L1's, reflected with EPT12's permissions in
  // the qualification (28.2.1, Table 28-7). Else L1's guest-physical
  // address is backed through EPT01 and EPT02 maps gpa2 to its frame, with
  // EPT12's permissions (EPT01 grants all).
  Core& c = *pc.core;
  NestedVcpu& n = *v.nested;
  Vm& vm = *v.vm;
  charge(c, m_p.costs.ept_violation, kCodeNested + 0xC00);
  const std::uint64_t gpa2 = vmr(c, field::kGuestPhysicalAddress);
  const std::uint64_t q = vmr(c, field::kExitQualification);
  std::uint64_t table = n.eptp12 & mmu::ept::kAddrMask;
  std::uint64_t perms = mmu::ept::kPermMask;
  std::uint64_t gpa1 = 0;
  bool present = true;
  std::array<std::uint64_t, 4> tables{};  // the EPT12 table walked at each level (index level - 1)
  std::array<std::uint64_t, 4> entries{};  // where each entry walked lies in host memory (A/D flags)
  std::uint64_t leaf = 0;
  unsigned depth = 0;
  for (unsigned level = 4; level >= 1; --level) {
    const unsigned shift = 12 + 9 * (level - 1);
    tables[level - 1] = table;
    const std::uint64_t hpa = l1_memory(c, vm, table + ((gpa2 >> shift) & 511) * 8);
    const std::uint64_t e = hpa ? c.load(hpa) : 0;
    if (!(e & mmu::ept::kPermMask)) {
      present = false;
      break;
    }
    entries[depth++] = hpa;
    leaf = e;
    perms &= e & mmu::ept::kPermMask;
    if (level == 1 || (level <= 3 && (e & mmu::ept::kLargePage))) {
      const std::uint64_t size = 1ull << shift;
      gpa1 = (e & mmu::ept::kAddrMask & ~(size - 1)) | (gpa2 & (size - 1));
      break;
    }
    table = e & mmu::ept::kAddrMask;
  }
  const bool allowed = present && !((q & cpu::qual::kEptRead) && !(perms & mmu::ept::kRead)) &&
                       !((q & cpu::qual::kEptWrite) && !(perms & mmu::ept::kWrite)) &&
                       !((q & cpu::qual::kEptFetch) && !(perms & mmu::ept::kExecute));
  if (!allowed || gpa1 >= vm.memory) {
    nested_vmexit(c, v, static_cast<unsigned>(ExitReason::EptViolation), true, 0);
    const std::uint64_t q12 = (q & ~std::uint64_t{0x38}) | ((present ? perms : 0) << 3);
    vmcs12_write(c, n, field::kExitQualification, q12);
    if (q12 != q && n.shadow_vmcs && n.current != ~0ull) {
      // The shadow VMCS L1 reads the qualification from has the
      // hardware's: EPT12's permissions go there too (a present EPT12
      // entry that forbids the access, e.g. L1's write protection).
      if (c.vmptrld(n.shadow_vmcs, vmx_operand(c, n.shadow_vmcs)) != cpu::VmxStatus::Succeed)
        throw cpu::SimulationError("hypervisor: VMPTRLD of a shadow VMCS failed");
      vmw(c, field::kExitQualification, q12);
      if (c.vmptrld(v.vmcs_pa, vmx_operand(c, v.vmcs_pa)) != cpu::VmxStatus::Succeed)
        throw cpu::SimulationError("hypervisor: VMPTRLD failed");
    }
    return true;
  }
  const std::uint64_t hpa = l1_memory(c, vm, gpa1 & ~(kPage - 1));
  if (!hpa) {
    stop_vm(c, vm, fmt::format("host memory exhausted backing guest-physical {:#x} ({})", gpa1, host_memory_note()));
    return false;
  }
  if (mmu::ept::eptp_ad(n.eptp12)) {
    // EPT12 with accessed and dirty flags (SDM Vol. 3C, 29.3.5), set by L0
    // as the processor would: accessed in every entry walked, dirty in the
    // leaf on a write, after logging the page into L1's PML when vmcs12
    // enables it (a full log is a PML-full exit to L1, no flag set). Until
    // the leaf is dirty, EPT02 maps the page without write permission, so
    // that L2's first write comes back here (KVM's shadow MMU does the same
    // for a guest EPT with A/D flags).
    const bool write = q & cpu::qual::kEptWrite;
    if (write && !(leaf & mmu::ept::kDirty)) {
      if (n.pml12 && !nested_pml_log(c, v, gpa2)) {
        ++vm.nested_stats->pml().full_exits;
        nested_vmexit(c, v, static_cast<unsigned>(ExitReason::PmlFull), false, 0);
        return true;
      }
      ++vm.nested_stats->pml().dirty_set;
    }
    for (unsigned i = 0; i < depth; ++i) {
      const bool last = i + 1 == depth;
      const std::uint64_t want = mmu::ept::kAccessed | (last && write ? mmu::ept::kDirty : 0);
      const std::uint64_t e = last ? leaf : c.load(entries[i]);
      if ((e & want) != want) c.lock_or(entries[i], want);
    }
    if (!write && !(leaf & mmu::ept::kDirty)) perms &= ~std::uint64_t{mmu::ept::kWrite};
  }
  lock_mmu(c, vm);
  const std::uint64_t page2 = gpa2 & ~(kPage - 1);
  // Present in EPT02 with fewer permissions (EPT12 granted more since):
  // widen them (no invalidation needed, 29.4.3.2); else a new leaf.
  if (n.ept02->lookup(c, page2)) n.ept02->protect(c, page2, perms);
  else if (!n.ept02->map(c, page2, hpa, kPage, perms | mmu::ept::kMemTypeWb))
    throw cpu::SimulationError("hypervisor: reserved_memory exhausted by EPT02 tables (raise hypervisor.reserved_memory)");
  // The EPT12 tables this leaf derives from are write-protected in EPT01,
  // so that L1 changing one of their entries drops what EPT02 built from it
  // (KVM's shadow MMU write-protects the guest tables it shadows).
  for (unsigned level = 4; level >= 1; --level) {
    if (!tables[level - 1]) break;
    const std::uint64_t span = std::uint64_t{1} << (12 + 9 * level);  // what the whole table maps
    nested_protect_ept12(c, vm, tables[level - 1], level, level == 4 ? 0 : gpa2 & ~(span - 1));
  }
  unlock_mmu(c, vm);
  // L0's own dirty tracking of the VM (a snapshot of L1): L2's writes go
  // through EPT02, not EPT01, so a page EPT02 lets L2 write is dirty for L0
  // as it is mapped.
  if (vm.dirty && vm.dirty->on && (perms & mmu::ept::kWrite)) dirty_mark(c, vm, gpa1 / kPage);
  ++vm.nested_stats->ept02_fills;
  return false;
}

void Hypervisor::nested_protect_ept12(Core& c, Vm& vm, std::uint64_t page, unsigned level, std::uint64_t base) {
  // Called with the VM's MMU lock held. A page EPT01 maps with a large
  // leaf is split first, so that only the table page loses write access.
  auto [it, fresh] = vm.ept12_tables.try_emplace(page, Vm::Ept12Table{level, base});
  if (!fresh) return;
  for (auto leaf = vm.ept->lookup(c, page); leaf && leaf->size > kPage; leaf = vm.ept->lookup(c, page))
    if (!vm.ept->split(c, page)) break;
  vm.ept->protect(c, page, mmu::ept::kRead | mmu::ept::kExecute);
}

bool Hypervisor::nested_ept12_write(PerCore& pc, Vcpu& v, std::uint64_t gpa) {
  // L1 wrote to an EPT12 table EPT02 was built from (an EPT violation of
  // EPT01 while L1 runs). Every EPT02 leaf derived from the entry written
  // is dropped; the page becomes writable for the one write, which runs
  // under the monitor trap flag, and is protected again after it
  // (handle_nested_mtf), as shadow paging single-steps a guest page-table
  // write (shadow.cc). KVM emulates the write instead.
  Core& c = *pc.core;
  Vm& vm = *v.vm;
  const std::uint64_t page = gpa & ~(kPage - 1);
  auto it = vm.ept12_tables.find(page);
  if (it == vm.ept12_tables.end() || (v.nested && v.nested->guest_mode) ||
      !(vmr(c, field::kExitQualification) & cpu::qual::kEptWrite))
    return false;
  charge(c, m_p.costs.ept_violation, kCodeNested2);
  // Dirty tracking by write protection (dirty_log.cc: snapshots of the VM)
  // sees the write as well; with EPT dirty flags or PML the hardware logs it
  // when it goes through below.
  if (vm.dirty) dirty_wp_fault(pc, v, gpa);
  const Vm::Ept12Table t = it->second;
  const std::uint64_t span = std::uint64_t{1} << (12 + 9 * (t.level - 1));  // what one entry maps
  const std::uint64_t lo = t.base + ((gpa & (kPage - 1)) / 8) * span;
  lock_mmu(c, vm);
  for (auto& other : vm.vcpus) {
    NestedVcpu* n = other->nested.get();
    if (!n || !n->ept02) continue;
    std::vector<std::uint64_t> leaves;
    n->ept02->for_each_leaf(c, lo, lo + span, false, [&](const Ept::Leaf& l) { leaves.push_back(l.gpa); });
    for (std::uint64_t g : leaves) n->ept02->unmap(c, g);
    vm.nested_stats->ept02_zaps += leaves.size();
  }
  vm.ept->protect(c, page, mmu::ept::kPermMask);
  it->second.writable = true;
  unlock_mmu(c, vm);
  ++vm.nested_stats->ept12_writes;
  nested_state(v).ept12_unprotected = 1;
  vmw(c, field::kProcBasedControls, vmr(c, field::kProcBasedControls) | proc::kMonitorTrapFlag);
  return true;
}

void Hypervisor::handle_nested_mtf(PerCore& pc, Vcpu& v) {
  // L1's write to an EPT12 table is done: protect the page again (and any
  // other the same instruction needed, e.g. a string store across two
  // tables). An entry it made present is filled into EPT02 at L2's next
  // violation.
  Core& c = *pc.core;
  charge(c, m_p.costs.shadow_pt_write, kCodeNested2 + 0x400);
  vmw(c, field::kProcBasedControls, vmr(c, field::kProcBasedControls) & ~proc::kMonitorTrapFlag);
  v.nested->ept12_unprotected = 0;
  Vm& vm = *v.vm;
  lock_mmu(c, vm);
  for (auto& [page, t] : vm.ept12_tables) {
    if (!t.writable) continue;
    vm.ept->protect(c, page, mmu::ept::kRead | mmu::ept::kExecute);
    t.writable = false;
  }
  unlock_mmu(c, vm);
}

std::uint64_t Hypervisor::nested_release(Core& c, Vcpu& v) {
  NestedVcpu& n = *v.nested;
  if (n.ept02) {
    // The VM is being torn down and none of its vCPUs runs: no lock needed
    // (its MMU lock's frame is already released).
    n.ept02->destroy(c, [](const Ept::Leaf&) {});
    n.ept02.reset();
  }
  if (n.shadow_vmcs) {
    c.vmclear(n.shadow_vmcs, vmx_operand(c, n.shadow_vmcs));
    m_frames.put(n.shadow_vmcs);
    n.shadow_vmcs = 0;
  }
  const std::uint64_t other = n.other_vmcs;
  if (other) c.vmclear(other, vmx_operand(c, other));
  n.other_vmcs = 0;
  return other;
}

// ---------------------------------------------------------------------------
// Posted interrupts for L2 (KVM: prepare_vmcs02's posted-interrupt fields,
// vmx_deliver_nested_posted_interrupt, vmx_complete_nested_posted_interrupt).
// L1 posts into a descriptor in its memory and sends vmcs12's notification
// vector to the vCPU running L2. vmcs02 names the same descriptor (its host
// address, through EPT01) with L0's own notification vector, so that the
// core processes it into L2's virtual-APIC page (L1's page, through EPT01)
// with no exit when L2 runs; otherwise L0 processes it at L2's next entry.

void Hypervisor::nested_apic_controls(Core& c, Vcpu& v, std::uint32_t proc2_12, std::uint64_t vapic12,
                                      std::uint64_t pi_desc12) {
  NestedVcpu& n = *v.nested;
  Vm& vm = *v.vm;
  charge(c, m_p.costs.post, kCodeNested3);
  n.vapic_hpa = l1_memory(c, vm, vapic12);
  if (!n.vapic_hpa) {
    stop_vm(c, vm, fmt::format("host memory exhausted backing L2's virtual-APIC page {:#x} ({})", vapic12,
                               host_memory_note()));
    return;
  }
  vmw(c, field::kVirtualApicPage, n.vapic_hpa);
  if (n.vid12) {
    vmw(c, field::kGuestIntrStatus, vmcs12_read(c, n, field::kGuestIntrStatus));
    for (unsigned i = 0; i < 4; ++i)
      vmw(c, field::kEoiExitBitmap0 + 2 * i, vmcs12_read(c, n, field::kEoiExitBitmap0 + 2 * i));
  }
  if (n.pi_nv12 >= 0) {
    const std::uint64_t page = l1_memory(c, vm, pi_desc12 & ~(kPage - 1));
    n.pi_desc_hpa = page ? page + (pi_desc12 & (kPage - 1)) : 0;
    vmw(c, field::kPostedIntrNv, kPostedNestedVector);
    vmw(c, field::kPostedIntrDesc, n.pi_desc_hpa);
  }
  // L2's x2APIC EOI writes are virtualized when L1 lets them through its
  // MSR bitmap (KVM's nested_vmx_prepare_msr_bitmap merges the x2APIC
  // range): vmcs02's bitmap then has that bit clear too.
  std::uint64_t bitmap = m_msr_bitmap;
  if ((proc2_12 & proc2::kVirtualizeX2apic) && n.vid12 &&
      (vmcs12_read(c, n, field::kProcBasedControls) & proc::kUseMsrBitmaps)) {
    const std::uint64_t byte = l1_memory(c, vm, vmcs12_read(c, n, field::kMsrBitmap) + 2048 + cpu::msr::kX2ApicEoi / 8);
    if (byte && !((c.load(byte, 1) >> (cpu::msr::kX2ApicEoi % 8)) & 1)) {
      if (!m_msr_bitmap_x2apic) {
        m_msr_bitmap_x2apic = alloc_host_frame();
        c.rep_stos(m_msr_bitmap_x2apic, 0xFF, kPage);
        const std::uint64_t b = m_msr_bitmap_x2apic + 2048 + cpu::msr::kX2ApicEoi / 8;
        c.store(b, c.load(b, 1) & ~(1u << (cpu::msr::kX2ApicEoi % 8)), 1);
      }
      bitmap = m_msr_bitmap_x2apic;
    }
  }
  if (bitmap != n.msr_bitmap02) {
    vmw(c, field::kMsrBitmap, bitmap);
    n.msr_bitmap02 = bitmap;
  }
}

bool Hypervisor::nested_posted_notify(Core& c, Vcpu& t, std::uint8_t vector) {
  // L1 sent `vector` to vCPU t: vmcs12's notification vector while t is in
  // guest mode is a notification for L2 (L1 set PIR and ON already).
  NestedVcpu* n = t.nested.get();
  if (!n || !n->guest_mode || n->pi_nv12 != vector || t.state == Vcpu::State::Dead) return false;
  charge(c, m_p.costs.post, kCodeNested3 + 0x200);
  n->pi_pending = true;
  NestedStats::Posted& ps = t.vm->nested_stats->posted();
  if (t.time.off == Vcpu::Off::OnCpu && t.state == Vcpu::State::Runnable && m_percore[t.core]->core != &c) {
    // Running on another core: L0's nested notification vector, which the
    // core takes as a posted-interrupt notification while L2 runs (and as
    // an interrupt of L0, which then does it at entry, otherwise).
    ++ps.notifications;
    c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{t.core} << 32) | kPostedNestedVector);
    return true;
  }
  ++ps.pending;
  wake(t);
  return true;
}

void Hypervisor::nested_complete_posted(Core& c, Vcpu& v) {
  // ON test-and-clear, PIR into the virtual-APIC page's IRR, RVI raised to
  // the highest vector found (SDM Vol. 3C, 30.6, done in software).
  NestedVcpu& n = *v.nested;
  n.pi_pending = false;
  if (!n.pi_desc_hpa) return;
  charge(c, m_p.costs.post, kCodeNested3 + 0x400);
  const std::uint64_t ctl = n.pi_desc_hpa + kPidControl;
  const std::uint64_t old = c.load(ctl);
  if (!(old & kPidOn)) return;
  c.store(ctl, old & ~kPidOn);
  int highest = -1;
  for (unsigned q = 0; q < 4; ++q) {
    if (!c.load(n.pi_desc_hpa + 8 * q)) continue;
    const std::uint64_t bits = c.xchg(n.pi_desc_hpa + 8 * q, 0);
    for (unsigned half = 0; half < 2; ++half) {
      const auto part = static_cast<std::uint32_t>(bits >> (32 * half));
      if (!part) continue;
      const std::uint64_t irr = n.vapic_hpa + cpu::vapic::reg(cpu::vapic::kIrr, 64 * q + 32 * half);
      c.store(irr, c.load(irr, 4) | part, 4);
    }
    if (bits) highest = static_cast<int>(64 * q + 63) - __builtin_clzll(bits);
  }
  ++v.vm->nested_stats->posted().at_entry;
  if (highest < 0) return;
  const std::uint64_t gis = vmr(c, field::kGuestIntrStatus);
  if (static_cast<std::uint64_t>(highest) > (gis & 0xFF))
    vmw(c, field::kGuestIntrStatus, (gis & ~std::uint64_t{0xFF}) | static_cast<std::uint64_t>(highest));
}

// ---------------------------------------------------------------------------
// Nested PML (KVM's nested_vmx_write_pml_buffer): with PML in vmcs12, L0
// logs the L2 guest-physical page of every EPT12 dirty flag it sets into
// L1's log (vmcs12's PML address, the index in vmcs12 counting down from
// 511); an index out of range is a log-full event: no flag is set and a
// PML-full exit goes to L1 (SDM Vol. 3C, 29.3.6).

bool Hypervisor::nested_pml_log(Core& c, Vcpu& v, std::uint64_t gpa2) {
  NestedVcpu& n = *v.nested;
  const auto index = static_cast<std::uint16_t>(vmcs12_read(c, n, field::kGuestPmlIndex));
  if (index >= 512) return false;
  charge(c, m_p.dirty_log.pml_entry, kCodeNested3 + 0x600);
  const std::uint64_t entry = l1_memory(c, *v.vm, vmcs12_read(c, n, field::kPmlAddress) + 8ull * index);
  if (entry) c.store(entry, gpa2 & ~(kPage - 1));
  vmcs12_write(c, n, field::kGuestPmlIndex, static_cast<std::uint16_t>(index - 1));
  ++v.vm->nested_stats->pml().logged;
  return true;
}

void Hypervisor::nested_drop_ept02(Core& c, Vcpu& v) {
  NestedVcpu& n = *v.nested;
  lock_mmu(c, *v.vm);
  n.ept02->destroy(c, [](const Ept::Leaf&) {});  // the frames are EPT01's
  unlock_mmu(c, *v.vm);
  n.ept02.reset();
  ++v.vm->nested_stats->ept02_drops;
}

}  // namespace vmx::hv
