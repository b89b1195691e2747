// Exit handlers by area: CPUID, VMCALL, port I/O, control registers, MSRs
// and EPT violations of guest memory.
#include "hypervisor/hypervisor_state.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "abi/hypercall.h"
#include "abi/steal_time.h"
#include "hypervisor/passthrough.h"
#include "hypervisor/shadow.h"
#include "mmu/paging.h"
#include "sim/event_trace.h"

namespace vmx::hv {

using cpu::Core;
using cpu::ExitReason;
using cpu::Regs;
namespace field = cpu::field;
using namespace detail;

void Hypervisor::handle_cpuid(Core& c, Vcpu& v) {
  charge(c, m_p.costs.cpuid, kCodeCpuid);
  std::uint32_t leaf = static_cast<std::uint32_t>(v.regs[Regs::rax]);
  cpu::CpuidResult r;
  if (leaf == 0x40000000u) {
    // Hypervisor vendor leaf: "vmxsimHV    ".
    r = {0x40000001u, 0x73786d76, 0x56486d69, 0x20202020};
  } else {
    // Start from the host's answer; hide VMX and announce a hypervisor
    // (CPUID.1:ECX bit 31), as KVM does.
    r = c.cpuid(leaf, static_cast<std::uint32_t>(v.regs[Regs::rcx]));
    if (leaf == 1) r.ecx = (r.ecx & ~(1u << 5)) | (1u << 31);
  }
  v.regs[Regs::rax] = r.eax;
  v.regs[Regs::rbx] = r.ebx;
  v.regs[Regs::rcx] = r.ecx;
  v.regs[Regs::rdx] = r.edx;
}

void Hypervisor::handle_vmcall(Core& c, Vcpu& v) {
  charge(c, m_p.costs.vmcall, kCodeVmcall);
  v.regs[Regs::rax] = v.regs[Regs::rax] == abi::hypercall::kNop ? 0 : abi::hypercall::kUnknownResult;
}

void Hypervisor::handle_io(Core& c, Vcpu& v) {
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

void Hypervisor::handle_cr(Core& c, Vcpu& v) {
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
    if (v.vpid) c.invvpid(3, v.vpid);
  } else if (cr == 4 && type == cpu::qual::kCrMovTo) {
    if (v.regs[gpr] & mmu::crbits::kCr4Vmxe) {
      inject_exception(c, cpu::vec::kGeneralProtection, true, 0);  // no nested VMX here
      return;
    }
    vmw(c, field::kGuestCr4, v.regs[gpr]);
  } else if (cr == 0 && type == cpu::qual::kCrMovTo) {
    vmw(c, field::kGuestCr0, v.regs[gpr]);
  } else {
    inject_exception(c, cpu::vec::kGeneralProtection, true, 0);
  }
}

void Hypervisor::handle_msr(Core& c, Vcpu& v, bool write) {
  charge(c, m_p.costs.msr, kCodeMsr);
  auto msr = static_cast<std::uint32_t>(v.regs[Regs::rcx]);
  std::uint64_t value = (v.regs[Regs::rdx] << 32) | (v.regs[Regs::rax] & 0xFFFFFFFF);
  PerCore& pc = *m_percore[v.core];
  std::uint64_t result = 0;
  bool ok = true;
  switch (msr) {
    case cpu::msr::kIa32TscDeadline:  // the virtual LAPIC timer
      if (write) {
        v.apic.vtimer_deadline = value;
        program_timer(pc);
      } else {
        result = v.apic.vtimer_deadline;
      }
      break;
    case cpu::msr::kX2ApicEoi:
      break;  // the virtual ISR is not modelled: EOI only costs the exit
    case cpu::msr::kX2ApicLvtTimer:
      if (write) v.apic.vlvt_timer = static_cast<std::uint32_t>(value);
      else result = v.apic.vlvt_timer;
      break;
    case cpu::msr::kX2ApicId:
      if (write) ok = false;
      else result = v.index;
      break;
    case abi::steal_time::kMsr:
      // abi/steal_time.h: bit 0 enables, bits 63:6 are the record's address.
      if (!write) {
        result = v.steal.msr;
      } else if (!(value & abi::steal_time::kMsrEnable)) {
        v.steal.msr = value;
        v.steal.area = 0;
      } else {
        std::uint64_t gpa = value & abi::steal_time::kMsrAddressMask;
        if ((value & abi::steal_time::kMsrReserved) || gpa + abi::steal_time::kBytes > v.vm->memory ||
            !back_guest_page(c, *v.vm, gpa)) {
          ok = false;
        } else {
          v.steal.msr = value;
          v.steal.area = ept_translate(c, *v.vm, gpa);
        }
      }
      break;
    case cpu::msr::kX2ApicIcr:
      if (write) {
        // A virtual IPI to another vCPU of the same VM (fixed delivery).
        auto dest = static_cast<std::uint32_t>(value >> 32);
        if (dest < v.vm->vcpus.size()) raise_virtual(*v.vm->vcpus[dest], static_cast<std::uint8_t>(value & 0xFF));
      } else {
        ok = false;
      }
      break;
    case cpu::msr::kIa32Efer:
      if (write) vmw(c, field::kGuestIa32Efer, value);
      else result = vmr(c, field::kGuestIa32Efer);
      break;
    case 0x10:  // IA32_TIME_STAMP_COUNTER
      if (write) ok = false;
      else result = c.rdtsc();
      break;
    default:
      ok = false;
  }
  if (!ok) {
    inject_exception(c, cpu::vec::kGeneralProtection, true, 0);
    return;
  }
  if (!write) {
    v.regs[Regs::rax] = result & 0xFFFFFFFF;
    v.regs[Regs::rdx] = result >> 32;
  }
}

void Hypervisor::handle_ept_violation(Core& c, Vcpu& v) {
  std::uint64_t gpa = vmr(c, field::kGuestPhysicalAddress);
  Vm& vm = *v.vm;
  if (vm.virtio && virtio_exit(c, v, gpa)) return;  // emulated MMIO (hypervisor/virtio_net.cc)
  if (vm.nic && vm.nic->contains(gpa)) {
    handle_nic_access(c, v);
    return;
  }
  charge(c, m_p.costs.ept_violation, kCodeEpt);
  if (gpa >= vm.memory) {
    crash_vm(vm, fmt::format("vCPU {} accessed guest-physical {:#x}, beyond the VM's {} bytes of memory "
                             "(no device is emulated there)",
                             v.index, gpa, vm.memory));
    return;
  }
  // A not-present EPT entry is never cached, so no INVEPT is needed after
  // mapping it (SDM Vol. 3C, 29.4.3.2).
  if (!back_guest_page(c, vm, gpa))
    stop_vm(c, vm, fmt::format("host memory exhausted backing guest-physical {:#x} ({})", gpa, host_memory_note()));
}

}  // namespace vmx::hv
