// Stopping a VM and returning its memory (docs/memory.md, "Stopping a VM").
#include <algorithm>

#include <fmt/format.h>

#include "hypervisor/hypervisor_state.h"
#include "hypervisor/shadow.h"

namespace vmx::hv {

using cpu::Core;

using namespace detail;

namespace {
void ipi(Core& c, unsigned core, std::uint8_t vector) {
  c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{core} << 32) | vector);
}
}  // namespace

const std::string& Hypervisor::vm_stop_note(unsigned i) const { return m_vms.at(i)->stop_note; }

void Hypervisor::stop_vm(Core& c, Vm& vm, const std::string& why) {
  if (vm.ended()) return;
  vm.stopping = true;
  vm.stop_note = fmt::format("stopped at {:.3f} ms: {}", static_cast<double>(c.now_ps()) / 1e9, why);
  if (vm.backed) vm.stop_note += fmt::format("; it had {} MiB of host memory", vm.backed >> 20);
  for (auto& v : vm.vcpus) {
    v->state = Vcpu::State::Dead;
    v->apic.vtimer_deadline = 0;
    // One in guest mode on another core exits on the IPI and is not resumed.
    if (v->time.off == Vcpu::Off::OnCpu && m_cores[v->core] != &c) ipi(c, v->core, kRescheduleVector);
  }
}

void Hypervisor::maybe_teardown(Core& c, Vm& vm) {
  if (!vm.stopping || vm.torn_down) return;
  for (auto& v : vm.vcpus)
    if (v->time.off == Vcpu::Off::OnCpu) return;  // the core it is on tears down when it leaves
  vm.torn_down = true;
  charge(c, m_p.costs.vm_stop, kCodeVmStop);
  const bool devices = vm.virtio || vm.nic || vm.nic_type == "vf";
  auto release = [&](std::uint64_t frame) {
    charge(c, m_p.costs.frame_free, kCodeVmStop);
    m_frames.put(frame);
  };
  if (devices) {
    // A device may still DMA into the VM's memory: it keeps it (detaching
    // devices is not modelled).
    vm.stop_note += "; its memory stays allocated (it has a device)";
  } else {
    // The EPT (or shadow paging's guest-physical map): every leaf unmapped
    // and its guest frame returned, every table freed, one INVEPT.
    lock_mmu(c, vm);
    vm.ept->destroy(c, [&](const Ept::Leaf& l) {
      if (m_ksm) ksm_unmapped(vm, l.hpa);
      if (m_frames.allocated(l.hpa) && l.hpa >= m_p.reserved_memory) release(l.hpa);
    });
    if (vm.shadow) {
      ShadowMmu& sm = *vm.shadow;
      for (auto& [key, sp] : sm.pages) release(sp->hpa);
      for (std::uint64_t f : sm.free_frames) release(f);
      sm.pages.clear();
      sm.by_hpa.clear();
      sm.mirrors.clear();
      sm.rmap.clear();
      sm.free_frames.clear();
      sm.pages_live.set(0);
      for (auto& v : vm.vcpus) {
        v->shadow.root = nullptr;
        v->shadow.prev_roots.clear();
      }
    }
    unlock_mmu(c, vm);
    release(vm.mmu_lock.word());
    vm.backed = 0;
  }
  // Its vCPUs leave the run queues and the cores' state (after the EPT's
  // INVEPT requests, so that a core asked to VMCLEAR gets both at once).
  for (auto& vp : vm.vcpus) {
    Vcpu& v = *vp;
    PerCore& pc = *m_percore[v.core];
    pc.sched->remove(v);
    pc.assigned.erase(std::remove(pc.assigned.begin(), pc.assigned.end(), &v), pc.assigned.end());
    for (auto& other : m_percore) {
      if (other->loaded == &v) other->loaded = nullptr;
      if (other->last_ran == &v) other->last_ran = nullptr;
    }
    if (devices) continue;
    if (v.nested)  // nested.cc: EPT02 and the VMCS of the other level
      if (std::uint64_t other = nested_release(c, v)) release(other);
    if (v.active_on < 0) {
      release(v.vmcs_pa);
    } else if (m_cores[static_cast<unsigned>(v.active_on)] == &c) {
      c.vmclear(v.vmcs_pa, vmx_operand(c, v.vmcs_pa));
      release(v.vmcs_pa);
    } else {
      // Cleared (and freed) by the core where it is active.
      m_percore[static_cast<unsigned>(v.active_on)]->pending_vmclear.push_back(v.vmcs_pa);
      ipi(c, static_cast<unsigned>(v.active_on), kRescheduleVector);
    }
    v.active_on = -1;
    release(v.save_area);
    if (v.apic.vapic) release(v.apic.vapic);
    if (v.mig_record) release(v.mig_record);
    v.mig_record = 0;
    v.steal.area = 0;
  }
  // A VM that moved to another host runs on there: not a stop for the run.
  if (m_on_stopped && !vm.migrated_out) m_on_stopped(c, vm.id);
}

}  // namespace vmx::hv
