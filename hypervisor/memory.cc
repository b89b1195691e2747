// Memory room (docs/memory.md): host frames for the hypervisor and for
// guests from the frame allocator (frames.h), the VMs' EPTs through the EPT
// cursor (ept.h: mapping, software translation, lazy and eager backing),
// the flush hook that invalidates other cores' cached translations, and the
// per-VM MMU lock that serializes changes to them.
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

std::uint64_t Hypervisor::alloc_host_frame(bool* fresh) {
  const std::uint64_t f = m_frames.alloc(m_hv_zone, kPage, fresh);
  if (!f) throw cpu::SimulationError("hypervisor: reserved_memory exhausted (raise hypervisor.reserved_memory)");
  return f;
}

std::uint64_t Hypervisor::alloc_guest_page() {
  const std::uint64_t size = m_p.ept_page_size;
  const std::uint64_t f = m_frames.alloc(m_guest_zone, size);
  if (f) m_totals.guest_frames += size / kPage;
  return f;
}

void Hypervisor::make_ept(Vm& vm) {
  bool fresh = true;
  const std::uint64_t root = alloc_host_frame(&fresh);
  vm.fresh_frames = vm.fresh_frames && fresh;
  Ept::Env env;
  env.frames = &m_frames;
  env.table_zone = m_hv_zone;
  env.vm = vm.id;
  env.on_table = [this] { ++m_totals.ept_tables; };
  env.flush = [this, &vm](Core& c, std::uint64_t) { flush_ept(c, vm); };
  vm.ept = std::make_unique<Ept>(std::move(env), root, static_cast<unsigned>(m_p.ept_levels), m_p.ept_ad);
  vm.eptp = vm.ept->eptp();
}

std::uint64_t Hypervisor::ept_translate(Core& c, Vm& vm, std::uint64_t gpa) { return vm.ept->translate(c, gpa); }

// As KVM's kvm_flush_remote_tlbs: every core that has entered the VM may
// hold translations tagged with its EPTP. This core invalidates at once
// (INVEPT single-context, SDM Vol. 3C, 29.4.3.1); the others are asked to
// before their next VM entry, and one running a vCPU of the VM in guest mode
// gets an IPI so that it exits now.
void Hypervisor::flush_ept(Core& c, Vm& vm) {
  for (unsigned k = 0; k < m_cores.size(); ++k) {
    if (!vm.ran_on[k]) continue;
    if (m_cores[k] == &c) {
      if (c.invept(1, vm.eptp, Regs::rcx, vmx_operand(c, vm.eptp)) != cpu::VmxStatus::Succeed) throw cpu::SimulationError("hypervisor: INVEPT failed");
      continue;
    }
    auto& pending = m_percore[k]->pending_invept;
    if (std::find(pending.begin(), pending.end(), vm.eptp) == pending.end()) pending.push_back(vm.eptp);
    bool in_guest = false;
    for (auto& u : vm.vcpus) in_guest = in_guest || (u->time.off == Vcpu::Off::OnCpu && u->core == k);
    if (in_guest) c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{k} << 32) | kRescheduleVector);
  }
}

void Hypervisor::run_core_requests(PerCore& pc) {
  if (!pc.pending_park.empty()) {  // migration.cc: vCPUs of a pausing VM whose VMCS is active here
    std::vector<Vcpu*> park;
    park.swap(pc.pending_park);
    for (Vcpu* v : park) mig_park(pc, *v);
  }
  if (pc.pending_invept.empty() && pc.pending_vmclear.empty()) return;
  Core& c = *pc.core;
  // Swapped out first: the operations below may let other cores add more.
  std::vector<std::uint64_t> invepts, vmclears;
  invepts.swap(pc.pending_invept);
  vmclears.swap(pc.pending_vmclear);
  for (std::uint64_t eptp : invepts)
    if (c.invept(1, eptp, Regs::rcx, vmx_operand(c, eptp)) != cpu::VmxStatus::Succeed) throw cpu::SimulationError("hypervisor: INVEPT failed");
  for (std::uint64_t vmcs : vmclears) {
    // SDM Vol. 3C, 25.11.1: a VMCS is cleared on the processor where it is
    // active before its region is used for anything else.
    c.vmclear(vmcs, vmx_operand(c, vmcs));
    charge(c, m_p.costs.frame_free, kCodeVmStop);
    m_frames.put(vmcs);
  }
}

std::string Hypervisor::host_memory_note() const {
  const std::uint64_t mib = 1 << 20;
  return fmt::format("guest memory in use {} MiB of {} MiB", m_frames.used_bytes(m_guest_zone) / mib,
                     m_frames.zone_bytes(m_guest_zone) / mib);
}

// The VM's EPT is shared by its vCPUs' cores: changes to it are made under
// a fair ticket lock (hypervisor/spinlock.h), as KVM holds its MMU lock; the
// time spent spinning is charged to the waiter.
void Hypervisor::lock_mmu(Core& c, Vm& vm) { vm.mmu_lock.lock(c); }

void Hypervisor::unlock_mmu(Core& c, Vm& vm) { vm.mmu_lock.unlock(c); }

bool Hypervisor::back_guest_page(Core& c, Vm& vm, std::uint64_t gpa) {
  bool ok = false;
  for (;;) {
    lock_mmu(c, vm);
    ok = back_guest_page_locked(c, vm, gpa) != 0;
    unlock_mmu(c, vm);
    // With host swap, no free frame means reclaim first (Linux's direct
    // reclaim), with no lock held, then try again.
    if (ok || !m_swap || vm.ended() || !swap_direct_reclaim(c)) break;
  }
  if (m_swap) swap_io_wait(c);  // a page read back from the swap area (host_swap.cc)
  return ok;
}

std::uint64_t Hypervisor::back_guest_page_locked(Core& c, Vm& vm, std::uint64_t gpa) {
  const std::uint64_t size = m_p.ept_page_size;
  const std::uint64_t offset = gpa & (size - 1);
  gpa -= offset;
  // Already backed (another vCPU got there first, or eager population)?
  // Then the violation was spurious, as KVM finds under its MMU lock.
  if (std::uint64_t hpa = ept_translate(c, vm, gpa)) return hpa + offset;
  if (m_swap) {  // a page host swap took away comes back (host_swap.cc)
    bool swapped = false;
    const std::uint64_t frame = swap_in_locked(c, vm, gpa, swapped);
    if (swapped) return frame ? frame + offset : 0;
  }
  std::uint64_t hpa = alloc_guest_page();
  if (!hpa) return 0;
  if (m_p.zero_pages) c.rep_stos(hpa, 0, size);
  // Not present to present: no invalidation (SDM Vol. 3C, 29.4.3.2).
  if (!vm.ept->map(c, gpa, hpa, size, Ept::kRwxWb))
    throw cpu::SimulationError("hypervisor: reserved_memory exhausted by EPT tables (raise hypervisor.reserved_memory)");
  vm.backed += size;
  return hpa + offset;
}

void Hypervisor::populate(Core& c, Vm& vm) {
  for (std::uint64_t gpa = 0; gpa < vm.memory; gpa += m_p.ept_page_size) {
    if (!back_guest_page(c, vm, gpa)) {
      stop_vm(c, vm, fmt::format("host memory exhausted backing guest-physical {:#x} before its first entry ({})",
                                 gpa, host_memory_note()));
      return;
    }
  }
}

}  // namespace vmx::hv
