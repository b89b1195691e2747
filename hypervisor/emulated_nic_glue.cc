// The emulated NIC's glue (docs/io.md, "The emulated NIC"): trapped register
// accesses, the device's start, and its view of the hypervisor. The device
// model is hypervisor/emulated_nic.cc.
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

// The emulated NIC (docs/io.md, "The emulated NIC").

// Trap-and-emulate: the window has no EPT mapping, so the access is an EPT
// violation whose exit reports the operand size (VM-exit instruction
// information bits 3:0), the direction (bit 4) and, for a store, the data in
// RAX (the model's decode assist); the hypervisor completes the access by
// setting RAX for a load and advancing the guest RIP by the instruction
// length (SDM Vol. 3C, 28.2.5). A QEMU-style split adds userspace_cost.
void Hypervisor::handle_nic_access(Core& c, Vcpu& v) {
  EmulatedNic& nic = *v.vm->nic;
  charge(c, m_p.costs.emu_access + nic.userspace_cost(), kCodeNic);
  const std::uint64_t gpa = vmr(c, field::kGuestPhysicalAddress);
  const std::uint64_t info = vmr(c, field::kVmxInstructionInfo);
  const unsigned size = static_cast<unsigned>(info & 0xF);
  const bool write = info & 0x10;
  const std::uint64_t r = nic.access(c, gpa - nic.window(), size, write, v.regs[Regs::rax]);
  if (!write) v.regs[Regs::rax] = r;
  vmw(c, field::kGuestRip, vmr(c, field::kGuestRip) + vmr(c, field::kExitInstructionLength));
}

void Hypervisor::nic_setup(Core& c, Vcpu& v) {
  Vm& vm = *v.vm;
  const std::uint64_t regs = vm.nic->setup(c);
  if (!vm.nic->polled()) return;
  // access: poll: the register page is mapped at the window (4 KiB EPT
  // page), and the core of vCPU 0 polls it.
  lock_mmu(c, vm);
  if (!vm.ept->map(c, vm.nic->window(), regs, kPage, Ept::kRwxWb))
    throw cpu::SimulationError("hypervisor: reserved_memory exhausted by EPT tables (raise hypervisor.reserved_memory)");
  unlock_mmu(c, vm);
  vm.nic_core = v.core;
  vm.nic_poll_ticks = std::max<std::uint64_t>(1, ps_to_tsc(vm.nic->poll_period()));
  vm.nic_next_poll = c.rdtsc() + vm.nic_poll_ticks;
  program_timer(*m_percore[v.core]);
}

std::uint64_t Hypervisor::NicHost::guest_to_host(Core& c, std::uint64_t gpa) {
  if (gpa >= vm.memory) return 0;
  std::uint64_t hpa = hv.ept_translate(c, vm, gpa);
  if (!hpa && hv.back_guest_page(c, vm, gpa)) hpa = hv.ept_translate(c, vm, gpa);
  return hpa;
}

void Hypervisor::NicHost::interrupt(Core&, unsigned apic_id, std::uint8_t vector) {
  if (vm.ended()) return;
  hv.raise_virtual(*vm.vcpus[apic_id < vm.vcpus.size() ? apic_id : 0], vector);
}

void Hypervisor::NicHost::charge(Core& c, std::uint64_t instructions) { hv.charge(c, instructions, kCodeNic); }

}  // namespace vmx::hv
