// The virtual PMU (docs/pmu.md, "Virtual PMU"), selected per VM
// (vms[].pmu):
//  - none: CPUID.0AH reports no architectural performance monitoring and
//    every counter MSR is #GP (no handler accepts it).
//  - emulated (KVM's classic vPMU): every counter MSR access and RDPMC
//    exits. The hypervisor backs guest counter i with the core's counter i,
//    programs it with the guest's (filtered) event select, and switches
//    IA32_PERF_GLOBAL_CTRL with the VM-entry/VM-exit "load
//    IA32_PERF_GLOBAL_CTRL" controls, so the host counters run only in the
//    guest. Counter values move with the vCPU when another vCPU with a vPMU
//    takes the core.
//  - mediated: as emulated, but the counters themselves (IA32_PMCx,
//    IA32_A_PMCx, IA32_FIXED_CTRx) and RDPMC pass through; event selects,
//    the fixed-counter control and the global MSRs are intercepted.
//  - passthrough (naive): every counter MSR passes through and nothing is
//    switched: the guest's counters also count the hypervisor, other VMs
//    on the core, and run on while the vCPU is descheduled.
// In every mode but none, an overflow PMI at the host's LVT entry becomes a
// virtual PMI at the guest's virtual LVT performance-counter entry.
#include "hypervisor/hypervisor_state.h"

#include "pmu/pmu.h"

namespace vmx::hv {

using namespace detail;
namespace pmsr = pmu::msr;

namespace {
constexpr unsigned kGp = pmu::Pmu::kGpCounters;
constexpr unsigned kFixed = pmu::Pmu::kFixedCounters;

/// The counter MSRs the vPMU handles (SDM Vol. 4, Table 2-2).
bool is_counter(std::uint32_t m) {
  return (m >= pmsr::kPmc0 && m < pmsr::kPmc0 + kGp) || (m >= pmsr::kAPmc0 && m < pmsr::kAPmc0 + kGp) ||
         (m >= pmsr::kFixedCtr0 && m < pmsr::kFixedCtr0 + kFixed);
}

/// The event filter of emulated and mediated VMs (as KVM's
/// KVM_SET_PMU_EVENT_FILTER allow list): events whose counts reveal only
/// the guest's own work. Any other event select is stored for the guest
/// but programmed into the core without its enable bit.
bool allowed(std::uint64_t sel) {
  using namespace pmu::event;
  const auto ev = static_cast<std::uint8_t>(sel & 0xFF), um = static_cast<std::uint8_t>((sel >> 8) & 0xFF);
  for (Code c : {kCoreCycles, kInstructions, kRefCycles, kLlcReference, kLlcMisses, kBranches, kBranchMisses,
                 kLoadL1Hit, kLoadL2Hit, kLoadL3Hit, kLoadL1Miss, kLoadL2Miss, kLoadL3Miss, kL1dReplacement,
                 kL2Misses, kL2References, kDtlbMissWalk, kDtlbWalkDone, kDtlbWalkPending, kItlbMissWalk,
                 kItlbWalkDone, kItlbWalkPending})
    if (c.event == ev && c.umask == um) return true;
  return false;  // e.g. EPT.WALK_PENDING: the host's translation, not the guest's
}

void clear_bitmap_bit(Core& c, std::uint64_t bitmap, std::uint64_t bit) {
  const std::uint64_t byte = bitmap + bit / 8;
  c.store(byte, c.load(byte, 1) & ~(1u << (bit % 8)), 1);
}
}  // namespace

void Hypervisor::register_vpmu_handlers() {
  m_exits.on(ExitReason::Rdpmc, &Hypervisor::handle_rdpmc);
  for (unsigned i = 0; i < kGp; ++i) {
    m_msrs.on(pmsr::kPmc0 + i, &Hypervisor::rdmsr_vpmu, &Hypervisor::wrmsr_vpmu);
    m_msrs.on(pmsr::kAPmc0 + i, &Hypervisor::rdmsr_vpmu, &Hypervisor::wrmsr_vpmu);
    m_msrs.on(pmsr::kPerfEvtSel0 + i, &Hypervisor::rdmsr_vpmu, &Hypervisor::wrmsr_vpmu);
  }
  for (unsigned i = 0; i < kFixed; ++i) m_msrs.on(pmsr::kFixedCtr0 + i, &Hypervisor::rdmsr_vpmu, &Hypervisor::wrmsr_vpmu);
  for (std::uint32_t m : {pmsr::kFixedCtrCtrl, pmsr::kGlobalStatus, pmsr::kGlobalCtrl, pmsr::kGlobalOvfCtrl,
                          pmsr::kPerfCapabilities, cpu::msr::kX2ApicLvtPmc})
    m_msrs.on(m, &Hypervisor::rdmsr_vpmu, &Hypervisor::wrmsr_vpmu);
}

// CPUID: without a vPMU, leaf 0AH is all zeros (no architectural
// performance monitoring, SDM Vol. 2A) and CPUID.01H:ECX.PDCM is clear.
void Hypervisor::vpmu_cpuid(const Vcpu& v, std::uint32_t leaf, cpu::CpuidResult& r) const {
  if (v.vm->pmu != Vm::Pmu::None) return;
  if (leaf == 0xA) r = {};
  if (leaf == 1) r.ecx &= ~(1u << 15);
}

// The handlers below run inside handle_msr, which charges the MSR exit's
// path (HvCosts::msr); the set-up and the switch charge one such path
// besides the RDMSRs, WRMSRs and VMWRITEs they make (assumption: of the
// order of KVM's intel_pmu_refresh and its mediated-PMU context switch).
void Hypervisor::vpmu_setup_vmcs(Core& c, Vcpu& v) {
  using namespace cpu;
  Vm& vm = *v.vm;
  charge(c, m_p.costs.msr, kCodeVpmu);
  if ((vm.pmu == Vm::Pmu::Mediated || vm.pmu == Vm::Pmu::Passthrough) && !vm.msr_bitmap) {
    // The VM's own MSR bitmap: the hypervisor's (all ones) with the
    // pass-through MSRs' read and write bits clear (SDM Vol. 3C, 25.6.9).
    vm.msr_bitmap = alloc_host_frame();
    c.rep_movs(vm.msr_bitmap, m_msr_bitmap, kPage);
    for (std::uint32_t m = 0; m < 0x1000; ++m) {
      const bool pass = vm.pmu == Vm::Pmu::Passthrough ? pmu::Pmu::owns(m) && m != pmsr::kPerfCapabilities
                                                       : is_counter(m);
      if (!pass) continue;
      clear_bitmap_bit(c, vm.msr_bitmap, m);              // read-low
      clear_bitmap_bit(c, vm.msr_bitmap, 2048 * 8 + m);   // write-low
    }
  }
  if (vm.msr_bitmap) vmw(c, field::kMsrBitmap, vm.msr_bitmap);
  if (vm.pmu == Vm::Pmu::Emulated || vm.pmu == Vm::Pmu::Mediated) {
    // IA32_PERF_GLOBAL_CTRL: the guest's while it runs, zero in the host
    // (SDM Vol. 3C, 25.7.1, 25.8.1), so the counters freeze on every exit.
    vmw(c, field::kEntryControls, vmr(c, field::kEntryControls) | entryctl::kLoadPerfGlobalCtrl);
    vmw(c, field::kExitControls, vmr(c, field::kExitControls) | exitctl::kLoadPerfGlobalCtrl);
    vmw(c, field::kGuestPerfGlobalCtrl, v.vpmu.global_ctrl);
    vmw(c, field::kHostPerfGlobalCtrl, 0);
  }
  if (vm.pmu == Vm::Pmu::Emulated)
    vmw(c, field::kProcBasedControls, vmr(c, field::kProcBasedControls) | proc::kRdpmcExiting);
}

// The core's PMU holds one vCPU's counters at a time: before entering v,
// the previous owner's are saved and v's loaded (as KVM's mediated PMU
// does at every vCPU switch). Host IA32_PERF_GLOBAL_CTRL is zero while
// they are changed, so the host never counts with a guest's programming.
void Hypervisor::vpmu_before_entry(PerCore& pc, Vcpu& v) {
  Core& c = *pc.core;
  if (v.vm->pmu == Vm::Pmu::Passthrough || pc.pmu_owner == &v) return;
  charge(c, m_p.costs.msr, kCodeVpmu);
  c.wrmsr(pmsr::kGlobalCtrl, 0);
  if (pc.pmu_owner && pc.pmu_owner->vm->pmu != Vm::Pmu::Passthrough) vpmu_save(c, *pc.pmu_owner);
  vpmu_load(c, v);
  c.wrmsr(cpu::msr::kX2ApicLvtPmc, kHostPmiVector);
  pc.pmu_owner = &v;
}

void Hypervisor::vpmu_save(Core& c, Vcpu& v) {
  for (unsigned i = 0; i < kGp; ++i) v.vpmu.counts[i] = c.rdmsr(pmsr::kAPmc0 + i);
  for (unsigned i = 0; i < kFixed; ++i) v.vpmu.counts[kGp + i] = c.rdmsr(pmsr::kFixedCtr0 + i);
  v.vpmu.status |= c.rdmsr(pmsr::kGlobalStatus);
  c.wrmsr(pmsr::kGlobalOvfCtrl, pmu::Pmu::kCounterBits);
}

void Hypervisor::vpmu_load(Core& c, Vcpu& v) {
  for (unsigned i = 0; i < kGp; ++i) {
    const std::uint64_t sel = v.vpmu.evtsel[i];
    c.wrmsr(pmsr::kPerfEvtSel0 + i, allowed(sel) ? sel : sel & ~pmu::evtsel::kEn);
    c.wrmsr(pmsr::kAPmc0 + i, v.vpmu.counts[i]);
  }
  for (unsigned i = 0; i < kFixed; ++i) c.wrmsr(pmsr::kFixedCtr0 + i, v.vpmu.counts[kGp + i]);
  c.wrmsr(pmsr::kFixedCtrCtrl, v.vpmu.fixed_ctrl);
}

// A host PMI: the counters of the vCPU that owns the core's PMU (or, in
// passthrough, whose guest armed it) overflowed. The guest gets a virtual
// PMI if its virtual LVT entry is unmasked, which then masks, as the LAPIC
// does (SDM Vol. 3B, 20.6.3.5.8); the host entry is unmasked again.
void Hypervisor::vpmu_interrupt(PerCore& pc) {
  Core& c = *pc.core;
  charge(c, m_p.costs.inject, kCodeVpmu);
  c.wrmsr(cpu::msr::kX2ApicLvtPmc, kHostPmiVector);
  Vcpu* v = pc.pmu_owner;
  if (!v || v->state == Vcpu::State::Dead) return;
  const std::uint32_t lvt = v->vpmu.lvtpc;
  if (lvt & models::Lapic::kLvtMasked) return;
  v->vpmu.lvtpc |= models::Lapic::kLvtMasked;
  if (v->vm->vpmu_pmis) ++*v->vm->vpmu_pmis;
  raise_virtual(*v, static_cast<std::uint8_t>(lvt & 0xFF));
}

// RDPMC exits only in emulated mode (the CPL and CR4.PCE check came
// first, in the guest): the counter is read from the core, which holds
// this vCPU's counters while its exit is handled.
void Hypervisor::handle_rdpmc(PerCore& pc, Vcpu& v) {
  Core& c = *pc.core;
  charge(c, m_p.costs.msr, kCodeVpmu);
  const auto ecx = static_cast<std::uint32_t>(v.regs[Regs::rcx]);
  const bool fixed = ecx & (1u << 30);
  const std::uint32_t idx = ecx & ~(1u << 30);
  if (v.vm->pmu == Vm::Pmu::None || (fixed ? idx >= kFixed : idx >= kGp)) {
    inject_exception(c, cpu::vec::kGeneralProtection, true, 0);
    return;
  }
  const std::uint64_t value = c.rdmsr(fixed ? pmsr::kFixedCtr0 + idx : pmsr::kAPmc0 + idx);
  v.regs[Regs::rax] = value & 0xFFFFFFFF;
  v.regs[Regs::rdx] = value >> 32;
}

bool Hypervisor::rdmsr_vpmu(PerCore& pc, Vcpu& v, std::uint64_t& value) {
  Core& c = *pc.core;
  const auto m = static_cast<std::uint32_t>(v.regs[Regs::rcx]);
  Vcpu::Vpmu& g = v.vpmu;
  if (v.vm->pmu == Vm::Pmu::None) return false;
  if (m == cpu::msr::kX2ApicLvtPmc) {
    value = g.lvtpc;
    return true;
  }
  if (v.vm->pmu == Vm::Pmu::Passthrough) {
    // Everything but the capabilities passes through the VM's bitmap.
    if (m != pmsr::kPerfCapabilities) return false;
    value = c.rdmsr(m);
    return true;
  }
  if (m >= pmsr::kPerfEvtSel0 && m < pmsr::kPerfEvtSel0 + kGp) {
    value = g.evtsel[m - pmsr::kPerfEvtSel0];
  } else if (m == pmsr::kFixedCtrCtrl) {
    value = g.fixed_ctrl;
  } else if (m == pmsr::kGlobalCtrl) {
    value = g.global_ctrl;
  } else if (m == pmsr::kGlobalStatus) {
    value = g.status | c.rdmsr(pmsr::kGlobalStatus);
  } else if (m == pmsr::kGlobalOvfCtrl) {
    value = 0;
  } else {
    // A counter (emulated) or IA32_PERF_CAPABILITIES: the core's own value.
    value = c.rdmsr(m);
  }
  return true;
}

bool Hypervisor::wrmsr_vpmu(PerCore& pc, Vcpu& v, std::uint64_t value) {
  Core& c = *pc.core;
  const auto m = static_cast<std::uint32_t>(v.regs[Regs::rcx]);
  Vcpu::Vpmu& g = v.vpmu;
  if (v.vm->pmu == Vm::Pmu::None) return false;
  if (m == cpu::msr::kX2ApicLvtPmc) {
    g.lvtpc = static_cast<std::uint32_t>(value);
    if (v.vm->pmu == Vm::Pmu::Passthrough) {
      // The guest programs the core's counters itself: its PMIs arrive at
      // the host entry, for whoever armed them last.
      c.wrmsr(cpu::msr::kX2ApicLvtPmc, kHostPmiVector);
      pc.pmu_owner = &v;
    }
    return true;
  }
  if (v.vm->pmu == Vm::Pmu::Passthrough) return false;
  if (m >= pmsr::kPerfEvtSel0 && m < pmsr::kPerfEvtSel0 + kGp) {
    if (value & ~pmu::evtsel::kWritable) return false;  // reserved bits: #GP, as the hardware
    const unsigned i = m - pmsr::kPerfEvtSel0;
    g.evtsel[i] = value;
    const bool ok = allowed(value);
    if (!ok && (value & pmu::evtsel::kEn) && v.vm->vpmu_filtered) ++*v.vm->vpmu_filtered;
    c.wrmsr(m, ok ? value : value & ~pmu::evtsel::kEn);
  } else if (m == pmsr::kFixedCtrCtrl) {
    if (value & ~pmu::fixedctl::kWritable) return false;
    g.fixed_ctrl = value;
    c.wrmsr(m, value);
  } else if (m == pmsr::kGlobalCtrl) {
    if (value & ~pmu::Pmu::kCounterBits) return false;
    g.global_ctrl = value;
    vmw(c, field::kGuestPerfGlobalCtrl, value);  // loaded at the next VM entry
  } else if (m == pmsr::kGlobalOvfCtrl) {
    if (value & ~(pmu::Pmu::kCounterBits | (3ull << 62))) return false;
    g.status &= ~value;
    c.wrmsr(m, value & pmu::Pmu::kCounterBits);
  } else if (m == pmsr::kGlobalStatus || m == pmsr::kPerfCapabilities) {
    return false;  // read-only
  } else {
    // A counter (emulated mode): written in the core, whose value the
    // guest then reads; out-of-range values are #GP as on the hardware.
    if ((m >= pmsr::kAPmc0 || (m >= pmsr::kFixedCtr0 && m < pmsr::kFixedCtr0 + kFixed)) &&
        (value & ~pmu::Pmu::kCounterMask))
      return false;
    c.wrmsr(m, value);
  }
  return true;
}

}  // namespace vmx::hv
