#include "hypervisor/hypervisor.h"

#include <algorithm>
#include <bitset>
#include <stdexcept>

#include <fmt/format.h>

#include "hypervisor/hypervisor_state.h"
#include "hypervisor/passthrough.h"
#include "hypervisor/shadow.h"
#include "mmu/paging.h"
#include "sim/event_trace.h"

namespace vmx::hv {

using cpu::Core;
using cpu::ExitReason;
using cpu::Regs;
namespace field = cpu::field;

namespace {
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kLine = 64;
constexpr std::uint8_t kHostTimerVector = models::Lapic::kDefaultTimerVector;
constexpr std::uint8_t kRescheduleVector = 0xFD;  // Linux's RESCHEDULE_VECTOR
constexpr std::uint8_t kPostedVector = 0xF2;      // Linux's POSTED_INTR_VECTOR
constexpr std::uint8_t kPostedWakeupVector = 0xF1;  // Linux's POSTED_INTR_WAKEUP_VECTOR
// Posted-interrupt descriptor (SDM Vol. 3C, 30.6; VT-d 9.12): PIR at 0,
// ON (bit 0), SN (bit 1), NV (bits 23:16) and NDST (bits 63:32) in the
// quadword at 32.
constexpr std::uint64_t kPidControl = 32;
constexpr std::uint64_t kPidOn = 1;
constexpr std::uint64_t kPidNvByte = kPidControl + 2;  // NV, bits 279:272
constexpr std::uint64_t kPidOffset = 0x800;  // in the vCPU's save-area frame, 64-byte aligned
constexpr unsigned kSavedGprs = 15;               // all but RSP, as KVM's __vmx_vcpu_run
// Offsets of the handlers in the hypervisor's text, so that each handler
// fetches its own code lines.
enum CodeOffset : std::uint64_t {
  kCodeDispatch = 0x0000,
  kCodeCpuid = 0x1000,
  kCodeHlt = 0x2000,
  kCodeVmcall = 0x3000,
  kCodeIo = 0x4000,
  kCodeCr = 0x5000,
  kCodeMsr = 0x6000,
  kCodeEpt = 0x7000,
  kCodeIrq = 0x8000,
  kCodeWindow = 0x9000,
  kCodeInject = 0xA000,
  kCodeSchedule = 0xB000,
  kCodeShadow = 0xC000,  // hypervisor/shadow.cc
  kCodeMigrate = 0xD000,
  kCodePreemption = 0xE000,
  kCodeNic = 0x10000,  // the emulated NIC (0xF000-0xFFFF: the PF driver, hypervisor/host_nic.cc)
  kCodeVirtio = 0x11000,  // hypervisor/virtio_net.cc
};
}  // namespace

Hypervisor::Hypervisor(const HypervisorParams& params, std::vector<Core*> cores, std::uint64_t host_memory,
                       std::uint64_t tsc_hz, stats::Group* stats_parent)
    : m_p(params),
      m_cores(std::move(cores)),
      m_host_memory(host_memory),
      m_tsc_hz(tsc_hz),
      m_slice_cycles(static_cast<std::uint64_t>(static_cast<unsigned __int128>(params.timeslice) * tsc_hz /
                                                cfg::kPsPerSecond)),
      m_cap_period_cycles(static_cast<std::uint64_t>(static_cast<unsigned __int128>(params.cap_period) * tsc_hz /
                                                     cfg::kPsPerSecond)),
      m_preemption_slices(params.slice_timer == "preemption"),
      m_stats(stats_parent, "hypervisor") {
  if (m_p.reserved_memory >= m_host_memory)
    throw std::invalid_argument("hypervisor.reserved_memory must be smaller than platform.memory");
  // Host-physical layout: the first MiB is left alone (as on a PC), the
  // hypervisor's text follows, then its data; guest frames come from above
  // reserved_memory.
  m_text = 0x100000;
  m_next_host_frame = 0x200000;
  m_next_guest_frame = (m_p.reserved_memory + kPage - 1) & ~(kPage - 1);
  m_msr_bitmap = alloc_host_frame();
  m_io_bitmap_a = alloc_host_frame();
  m_io_bitmap_b = alloc_host_frame();
  // Only with migration, so that the host-physical layout (and every cache
  // set the hypervisor's structures map to) stays that of earlier runs.
  if (m_p.migration) m_idle_map = alloc_host_frame();
  for (unsigned i = 0; i < m_cores.size(); ++i) {
    auto pc = std::make_unique<PerCore>();
    pc->hv = this;
    pc->id = i;
    pc->core = m_cores[i];
    pc->vmxon_region = alloc_host_frame();
    pc->sched = Scheduler::create(m_p.scheduler, m_slice_cycles, m_cap_period_cycles);
    PerCore* raw = pc.get();
    pc->fiber = std::make_unique<sim::Fiber>(fmt::format("hv.core{}", i), [this, raw] { core_main(*raw); });
    m_percore.push_back(std::move(pc));
    m_cores[i]->events().attach(m_exit_total);
  }
}

Hypervisor::~Hypervisor() {
  for (Core* c : m_cores) c->events().detach(m_exit_total);
}

sim::Fiber& Hypervisor::core_fiber(unsigned core) { return *m_percore.at(core)->fiber; }
unsigned Hypervisor::vm_count() const { return static_cast<unsigned>(m_vms.size()); }
const std::string& Hypervisor::vm_name(unsigned i) const { return m_vms.at(i)->name; }
const std::string& Hypervisor::vm_crash(unsigned i) const { return m_vms.at(i)->crash; }

std::uint64_t Hypervisor::alloc_host_frame() {
  std::uint64_t f = m_next_host_frame;
  if (f + kPage > m_p.reserved_memory)
    throw cpu::SimulationError("hypervisor: reserved_memory exhausted (raise hypervisor.reserved_memory)");
  m_next_host_frame += kPage;
  return f;
}

std::uint64_t Hypervisor::alloc_guest_page() {
  std::uint64_t size = m_p.ept_page_size;
  std::uint64_t f = (m_next_guest_frame + size - 1) & ~(size - 1);
  if (f + size > m_host_memory) return 0;
  m_next_guest_frame = f + size;
  m_totals.guest_frames += size / kPage;
  return f;
}

std::uint64_t Hypervisor::ps_to_tsc(std::uint64_t ps) const {
  return static_cast<std::uint64_t>(static_cast<unsigned __int128>(ps) * m_tsc_hz / cfg::kPsPerSecond);
}

void Hypervisor::attach_nic(std::uint64_t pf_window) {
  if (pf_window < m_host_memory)
    throw std::invalid_argument(fmt::format("the NIC's registers at {:#x} lie inside host memory (platform.memory "
                                            "{:#x}): lower platform.memory or raise platform.nic.mmio_base",
                                            pf_window, m_host_memory));
  HostNic::Env env;
  env.alloc_frame = [this] { return alloc_host_frame(); };
  env.charge = [this](Core& c, std::uint64_t n, std::uint64_t code) { charge(c, n, code); };
  m_host_nic = std::make_unique<HostNic>(m_p.host_nic, m_p.costs, pf_window, static_cast<unsigned>(m_cores.size()),
                                         std::move(env), &m_stats);
}

void Hypervisor::add_vm(const VmSpec& spec) {
  auto vm = std::make_unique<Vm>();
  vm->name = spec.name;
  vm->id = static_cast<unsigned>(m_vms.size());
  vm->memory = spec.memory;
  vm->image = spec.image;
  vm->ept_root = alloc_host_frame();
  vm->mmu_lock = alloc_host_frame();
  vm->eptp = mmu::ept::eptp(vm->ept_root, static_cast<unsigned>(m_p.ept_levels), m_p.ept_ad);
  vm->group = &m_stats.parent()->subgroup("vm").subgroup(spec.name, "VM " + spec.name);
  vm->nic_type = spec.nic_type;
  vm->vf = spec.vf;
  vm->nic_window_gpa = spec.nic_window_gpa;
  vm->nic_vector = spec.nic_vector;
  if (spec.nic_type == "vf" && (!m_io.iommu || spec.shadow_paging))
    throw std::invalid_argument("VM " + spec.name + ": a passed-through VF needs the platform NIC and IOMMU "
                                "(attach_io) and EPT paging");
  if (spec.shadow_paging) {
    vm->shadow = std::make_unique<ShadowMmu>(vm->group);
    vm->shadow->max_pages = std::max<std::uint64_t>(64, spec.memory / kPage * m_p.shadow_pages_permille / 1000);
  }
  if (spec.virtio_net) {
    vm->virtio = std::make_unique<VirtioDev>();
    vm->virtio->hv = this;
    vm->virtio->vm = vm.get();
    vm->virtio->dev = std::make_unique<VirtioNet>(m_p.costs, *vm->virtio, spec.virtio_mac, vm->group);
    // Frames for its MAC come from the software switch, when there is one.
    if (m_host_nic) m_host_nic->attach(spec.virtio_mac, vm->virtio.get());
  }
  if (spec.nic.enabled) {
    if (!m_host_nic)
      throw std::invalid_argument("VM " + spec.name + ": an emulated NIC needs the platform's NIC (platform.nic.enabled)");
    if (spec.nic.params.access == "poll" && m_p.ept_page_size != kPage)
      throw std::invalid_argument("VM " + spec.name + ": nic.access poll maps one register page, which needs "
                                  "hypervisor.ept_page_size 4KiB");
    if (spec.nic.window < spec.memory || spec.nic.window % kPage)
      throw std::invalid_argument(fmt::format("VM {}: the NIC window {:#x} must be page-aligned and above the "
                                              "VM's memory",
                                              spec.name, spec.nic.window));
    EmulatedNicSpec ns = spec.nic;
    if (!ns.mac)  // 02:00:00:01:<id high>:<id low>, locally administered
      ns.mac = 0x02 | (0x01ull << 24) | (std::uint64_t((vm->id >> 8) & 0xFF) << 32) |
               (std::uint64_t(vm->id & 0xFF) << 40);
    vm->nic_host = std::make_unique<NicHost>(*this, *vm);
    vm->nic = std::make_unique<EmulatedNic>(ns, m_p.costs, *m_host_nic, *vm->nic_host, vm->group);
    m_host_nic->attach(ns.mac, vm->nic.get());
  }
  if (spec.weight == 0) throw std::invalid_argument("VM " + spec.name + ": weight must be positive");
  if ((spec.edf_runtime == 0) != (spec.edf_period == 0) || spec.edf_runtime > spec.edf_period)
    throw std::invalid_argument("VM " + spec.name + ": an EDF reservation needs 0 < runtime <= period");
  for (unsigned core : spec.pin)
    if (core >= m_cores.size())
      throw std::invalid_argument(fmt::format("VM {}: pin names core {}, but the platform has {} cores", spec.name,
                                              core, m_cores.size()));
  for (unsigned i = 0; i < spec.vcpus; ++i) {
    auto v = std::make_unique<Vcpu>();
    v->vm_weight = spec.weight;
    v->vm_vcpus = spec.vcpus;
    v->cap = spec.cap;
    v->priority = spec.priority;
    v->dl_runtime = ps_to_tsc(spec.edf_runtime);
    v->dl_period = ps_to_tsc(spec.edf_period);
    v->vm = vm.get();
    v->index = i;
    v->pinned = !spec.pin.empty();
    v->core = v->pinned ? spec.pin[i % spec.pin.size()] : m_next_core++ % static_cast<unsigned>(m_cores.size());
    v->vmcs_pa = alloc_host_frame();
    v->save_area = alloc_host_frame();
    if (m_p.posted_interrupts) {
      v->vapic = alloc_host_frame();
      v->pi_desc = v->save_area + kPidOffset;
    }
    v->vpid = m_p.vpid ? m_next_vpid++ : 0;
    v->obs = std::make_unique<cpu::VcpuObserver>(vm->group, fmt::format("vcpu{}", i));
    v->time = std::make_unique<Vcpu::Time>(v->obs.get());
    v->migrations = &v->obs->make<stats::Counter>("migrations", "events", "times the vCPU moved to another core");
    PerCore& pc = *m_percore[v->core];
    pc.assigned.push_back(v.get());
    pc.sched->add(*v);
    vm->vcpus.push_back(std::move(v));
  }
  m_vms.push_back(std::move(vm));
}

// ---------------------------------------------------------------------------
// Helpers that turn the hypervisor's work into operations.

void Hypervisor::charge(Core& c, std::uint64_t instructions, std::uint64_t code_offset) {
  c.fetch(m_text + code_offset, m_p.costs.code_bytes);
  c.compute(instructions);
}

void Hypervisor::touch_vcpu_state(Core& c, const Vcpu& v) {
  for (std::uint64_t i = 0; i < m_p.costs.vcpu_state_lines; ++i) c.load(v.save_area + 2 * kLine + i * kLine);
}

void Hypervisor::vmw(Core& c, std::uint32_t enc, std::uint64_t v) {
  if (c.vmwrite(enc, v) != cpu::VmxStatus::Succeed)
    throw cpu::SimulationError(fmt::format("hypervisor: VMWRITE {:#x} failed", enc));
}

std::uint64_t Hypervisor::vmr(Core& c, std::uint32_t enc) {
  std::uint64_t v = 0;
  if (c.vmread(enc, v) != cpu::VmxStatus::Succeed)
    throw cpu::SimulationError(fmt::format("hypervisor: VMREAD {:#x} failed", enc));
  return v;
}

// ---------------------------------------------------------------------------
// Per-core main loop.

void Hypervisor::core_main(PerCore& pc) {
  Core& c = *pc.core;
  // Enter VMX operation (SDM Vol. 3C, 24.7): CR4.VMXE, a VMXON region with
  // the revision identifier, VMXON.
  c.write_cr(4, c.read_cr(4) | mmu::crbits::kCr4Vmxe);
  c.store(pc.vmxon_region, cpu::kVmcsRevision, 4);
  if (c.vmxon(pc.vmxon_region) != cpu::VmxStatus::Succeed)
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
  Vcpu* last = nullptr;
  for (;;) {
    // Pick the next vCPU. Going back into the vCPU that just exited skips
    // the scheduler, as KVM's run loop does when nothing needs rescheduling.
    Scheduler& s = *pc.sched;
    s.account(c.now());
    const bool picking = s.must_pick(last);
    if (picking) charge(c, m_p.costs.schedule, kCodeSchedule);
    Vcpu* next = static_cast<Vcpu*>(s.pick(c.now()));
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
    if (picking && s.timer_after_pick() && !m_preemption_slices) program_timer(pc);
    last = next;
    run_vcpu(pc, *next);
    next->claimed = false;
  }
}

std::uint64_t Hypervisor::sched_deadline(PerCore& pc) {
  std::size_t runnable = 0;
  for (Vcpu* v : pc.assigned)
    if (v->state == Vcpu::State::Runnable) ++runnable;
  return pc.sched->deadline(pc.core->now(), runnable);
}

void Hypervisor::program_timer(PerCore& pc, bool idle) {
  Core& c = *pc.core;
  std::uint64_t next = 0;
  auto consider = [&next](std::uint64_t t) {
    if (t && (!next || t < next)) next = t;
  };
  for (Vcpu* v : pc.assigned)
    if (v->state != Vcpu::State::Dead) consider(v->vtimer_deadline);
  for (auto& vm : m_vms)  // emulated NICs polled from this core
    if (vm->nic_next_poll && vm->nic_core == pc.id && !vm->crashed) consider(vm->nic_next_poll);
  // With slice_timer=preemption the slice is timed by the VMCS while a vCPU
  // runs; the host timer keeps it only while the core halts.
  if (!m_preemption_slices || idle) consider(sched_deadline(pc));
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

void Hypervisor::setup_vmcs(Core& c, Vcpu& v) {
  // A fresh VMCS (SDM Vol. 3C, 25.11.3): revision identifier, VMCLEAR, VMPTRLD.
  c.store(v.vmcs_pa, cpu::kVmcsRevision, 4);
  c.vmclear(v.vmcs_pa);
  if (c.vmptrld(v.vmcs_pa) != cpu::VmxStatus::Succeed)
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
    c.rep_stos(v.vapic, 0, kPage);
    c.lock_or(v.pi_desc + kPidControl, (std::uint64_t{kPostedVector} << 16) | (std::uint64_t{v.core} << 32));
    vmw(c, field::kPostedIntrNv, kPostedVector);
    vmw(c, field::kPostedIntrDesc, v.pi_desc);
    vmw(c, field::kVirtualApicPage, v.vapic);
    vmw(c, field::kGuestIntrStatus, 0);
    for (unsigned i = 0; i < 4; ++i) vmw(c, field::kEoiExitBitmap0 + 2 * i, 0);
  }
  vmw(c, field::kExitControls, exitctl::kHostAddressSpaceSize | exitctl::kAckInterruptOnExit);
  vmw(c, field::kEntryControls, entryctl::kIa32eModeGuest);
  vmw(c, field::kExceptionBitmap, 0);
  vmw(c, field::kEptPointer, v.vm->eptp);
  vmw(c, field::kVpid, v.vpid);
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
  vmw(c, field::kGuestRip, code_address(&v.vm->image->vcpu_entry(v.index)));
  vmw(c, field::kHostRip, code_address(m_percore[v.core]->fiber.get()));
  vmw(c, field::kHostIdtrBase, code_address(m_percore[v.core].get()));
  if (v.vm->shadow) shadow_setup_vmcs(c, v);
  c.observe_vmcs(v.vmcs_pa, v.obs.get());
  v.vmcs_ready = true;
  if (v.index == 0 && m_p.ept_populate == "eager") populate(c, *v.vm);
  if (v.index == 0 && v.vm->nic) nic_setup(c, v);
  if (v.index == 0 && v.vm->nic_type == "vf") assign_vf(c, *v.vm);
}

namespace {
std::uint64_t guest_cycles_now(const cpu::VcpuObserver& o, std::uint64_t now) {
  return o.total_guest_cycles + (o.in_guest && now > o.entered_at ? now - o.entered_at : 0);
}
}  // namespace

void Hypervisor::account_off_cpu(Vcpu& v, std::uint64_t now, bool same_vcpu_again) {
  now = std::max(now, v.since);
  std::uint64_t d = now - v.since;
  switch (v.off) {
    case Vcpu::Off::Runnable:
      // Between two runs of the same vCPU the core did its work: that is
      // hypervisor time; if another vCPU ran in between, it was stolen.
      if (same_vcpu_again) {
        v.time->hypervisor += d;
      } else {
        v.time->steal += d;
        v.steal_total += d;
      }
      break;
    case Vcpu::Off::Halted: v.time->idle += d; break;
    default: break;
  }
  v.since = now;
}

void Hypervisor::account_on_cpu(Vcpu& v, std::uint64_t now) {
  now = std::max(now, v.since);
  std::uint64_t g = guest_cycles_now(*v.obs, now) - v.guest_baseline;
  std::uint64_t d = now - v.since;
  if (g > d) g = d;
  v.time->guest += g;
  v.time->hypervisor += d - g;
  v.since = now;
  v.guest_baseline = guest_cycles_now(*v.obs, now);
}

void Hypervisor::flush_accounting() {
  for (auto& vm : m_vms)
    for (auto& v : vm->vcpus) {
      std::uint64_t now = m_cores[v->core]->now();
      if (v->obs && v->off == Vcpu::Off::OnCpu) v->obs->flush(now);
      if (v->off == Vcpu::Off::OnCpu) account_on_cpu(*v, now);
      else if (v->off != Vcpu::Off::Stopped) account_off_cpu(*v, now, false);
    }
}

// Paravirtual steal time, in KVM's layout (struct kvm_steal_time: u64 steal
// in ns at offset 0, u32 version at 8, u32 flags at 12, u8 preempted at 16):
// updated before every entry, the version odd while it changes.
void Hypervisor::publish_steal(Core& c, Vcpu& v) {
  if (!v.steal_area) return;
  std::uint64_t a = v.steal_area;
  std::uint32_t version = static_cast<std::uint32_t>(c.load(a + 8, 4));
  c.store(a + 8, version + 1, 4);
  auto ns = static_cast<std::uint64_t>(static_cast<unsigned __int128>(v.steal_total) * 1000000000ull / m_tsc_hz);
  c.store(a, ns);
  c.store(a + 16, 0, 1);
  c.store(a + 8, version + 2, 4);
}

void Hypervisor::mark_preempted(Core& c, Vcpu& v) {
  if (v.steal_area && v.state == Vcpu::State::Runnable) c.store(v.steal_area + 16, 1, 1);
}

std::uint64_t Hypervisor::ept_translate(Core& c, Vm& vm, std::uint64_t gpa) {
  std::uint64_t table = vm.ept_root;
  for (unsigned level = static_cast<unsigned>(m_p.ept_levels); level >= 1; --level) {
    std::uint64_t e = c.load(table + mmu::table_index(gpa, level) * 8);
    if (!(e & mmu::ept::kPermMask)) return 0;
    if (level == 1 || (e & mmu::ept::kLargePage)) {
      std::uint64_t mask = (1ull << mmu::level_shift(level)) - 1;
      return (e & mmu::ept::kAddrMask & ~mask) | (gpa & mask);
    }
    table = e & mmu::ept::kAddrMask;
  }
  return 0;
}

void Hypervisor::trace_state(Core& c, Vcpu& v, std::uint64_t now, bool stolen) {
  trace::EventTrace* t = trace::EventTrace::active();
  if (!t || !t->on(trace::kSched)) return;
  if (v.trace_track < 0)
    v.trace_track = static_cast<int>(t->track(trace::vcpu_row(v.vm->name, v.index)));
  const char* name = v.off == Vcpu::Off::OnCpu      ? "running"
                     : v.off == Vcpu::Off::Halted   ? "halted"
                     : v.off == Vcpu::Off::Runnable ? (stolen ? "runnable (stolen)" : "runnable (hypervisor)")
                                                    : nullptr;
  if (name && now > v.trace_since)
    t->slice(static_cast<unsigned>(v.trace_track), name, c.ps_of(v.trace_since), c.ps_of(now),
             {"core", v.off == Vcpu::Off::OnCpu ? c.id() : v.core});
  v.trace_since = now;
}

void Hypervisor::run_vcpu(PerCore& pc, Vcpu& v) {
  Core& c = *pc.core;
  if (pc.last_ran && pc.last_ran != &v) mark_preempted(c, *pc.last_ran);
  trace_state(c, v, c.now(), pc.last_ran != &v);
  account_off_cpu(v, c.now(), pc.last_ran == &v);
  v.off = Vcpu::Off::OnCpu;
  v.guest_baseline = guest_cycles_now(*v.obs, v.since);
  pc.last_ran = &v;
  struct Leave {  // accounts the on-CPU interval however run_vcpu returns
    Hypervisor& hv;
    Vcpu& v;
    Core& c;
    ~Leave() {
      hv.trace_state(c, v, c.now(), false);
      hv.account_on_cpu(v, c.now());
      v.off = v.state == Vcpu::State::Blocked ? Vcpu::Off::Halted
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
    if (c.vmptrld(v.vmcs_pa) != cpu::VmxStatus::Succeed)
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
      if (v.vpid) c.invvpid(1, v.vpid);
      v.active_on = static_cast<int>(pc.id);
    }
  }
  // Virtual interrupt delivery: inject when the guest can take it, else ask
  // for an interrupt-window exit (SDM Vol. 3C, 26.6, 25.6.2).
  if (v.virr.any()) {
    charge(c, m_p.costs.inject, kCodeInject);
    int vec = 255;
    while (vec >= 0 && !v.virr.test(static_cast<std::size_t>(vec))) --vec;
    std::uint64_t rflags = vmr(c, field::kGuestRflags);
    std::uint64_t procctl = vmr(c, field::kProcBasedControls);
    if (rflags & (1u << 9)) {
      vmw(c, field::kEntryIntrInfo, cpu::intr::info(static_cast<std::uint8_t>(vec), cpu::intr::kTypeExternal));
      v.virr.reset(static_cast<std::size_t>(vec));
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
    if (v.pi_wakeup) {
      c.store(v.pi_desc + kPidNvByte, kPostedVector, 1);
      v.pi_wakeup = false;
    }
    if (c.load(v.pi_desc + kPidControl) & kPidOn)
      c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{pc.id} << 32) | kPostedVector);
  }
  publish_steal(c, v);
  if (v.vm->shadow) shadow_before_entry(c, v);
  // The guest's CR2 is not part of the VMCS: it is restored if another
  // context changed it, and saved after the exit (KVM's vmx_vcpu_run).
  if (c.read_cr(2) != v.cr2) c.write_cr(2, v.cr2);
  if (m_preemption_slices) arm_preemption_timer(pc, v);
  // Restore the guest's registers from the save area.
  for (unsigned i = 0; i < kSavedGprs; ++i) c.load(v.save_area + 8 * i);
  c.regs() = v.regs;

  cpu::VmExit ex = v.launched ? c.vmresume() : c.vmlaunch();
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
  handle_exit(pc, v, ex.reason);
}

void Hypervisor::handle_exit(PerCore& pc, Vcpu& v, unsigned reason) {
  Core& c = *pc.core;
  v.movable = static_cast<ExitReason>(reason) == ExitReason::Hlt;
  charge(c, m_p.costs.exit_dispatch, kCodeDispatch);
  touch_vcpu_state(c, v);
  switch (static_cast<ExitReason>(reason)) {
    case ExitReason::Cpuid:
      handle_cpuid(c, v);
      break;
    case ExitReason::Hlt:
      charge(c, m_p.costs.hlt, kCodeHlt);
      // Block unless an interrupt is pending that the guest can take now;
      // HLT with interrupts off waits for the next one all the same.
      if (m_p.posted_interrupts) {
        // Blocked first, then the descriptor is checked: a poster either
        // sees the vCPU blocked and wakes it, or posted before the check.
        // While it is blocked, a device's posted interrupt notifies this
        // core with the wake-up vector instead (as KVM's pi_pre_block).
        v.state = Vcpu::State::Blocked;
        c.store(v.pi_desc + kPidNvByte, kPostedWakeupVector, 1);
        v.pi_wakeup = true;
        if (posted_pending(c, v) && (vmr(c, field::kGuestRflags) & (1u << 9))) v.state = Vcpu::State::Runnable;
        else program_timer(pc);
      } else if (!v.virr.any() || !(vmr(c, field::kGuestRflags) & (1u << 9))) {
        v.state = Vcpu::State::Blocked;
        program_timer(pc);
      }
      break;
    case ExitReason::Vmcall:
      handle_vmcall(c, v);
      break;
    case ExitReason::IoInstruction:
      handle_io(c, v);
      break;
    case ExitReason::CrAccess:
      handle_cr(c, v);
      break;
    case ExitReason::Rdmsr:
      handle_msr(c, v, false);
      break;
    case ExitReason::Wrmsr:
      handle_msr(c, v, true);
      break;
    case ExitReason::EptViolation:
      handle_ept_violation(c, v);
      break;
    case ExitReason::ExceptionOrNmi:
      if (v.vm->shadow && (vmr(c, field::kExitIntrInfo) & 0xFF) == cpu::vec::kPageFault) handle_shadow_pf(c, v);
      else crash_vm(*v.vm, fmt::format("unexpected exception exit on vCPU {}", v.index));
      break;
    case ExitReason::Invlpg:
      if (v.vm->shadow) handle_shadow_invlpg(c, v);
      else inject_exception(c, cpu::vec::kInvalidOpcode, false, 0);
      break;
    case ExitReason::MonitorTrapFlag:
      if (v.vm->shadow) handle_shadow_mtf(c, v);
      break;
    case ExitReason::ExternalInterrupt: {
      charge(c, m_p.costs.external_interrupt, kCodeIrq);
      std::uint64_t info = vmr(c, field::kExitIntrInfo);
      if (info & cpu::intr::kValid) host_interrupt(pc, static_cast<std::uint8_t>(info & 0xFF));
      break;
    }
    case ExitReason::InterruptWindow: {
      charge(c, m_p.costs.interrupt_window, kCodeWindow);
      std::uint64_t procctl = vmr(c, field::kProcBasedControls);
      vmw(c, field::kProcBasedControls, procctl & ~cpu::proc::kInterruptWindowExiting);
      break;
    }
    case ExitReason::PreemptionTimer:
      // The slice ended (slice_timer=preemption).
      charge(c, m_p.costs.preemption_timer, kCodePreemption);
      pc.sched->tick(c.rdtsc());
      break;
    case ExitReason::TripleFault:
      crash_vm(*v.vm, fmt::format("triple fault on vCPU {}", v.index));
      break;
    case ExitReason::EntryFailGuestState:
      crash_vm(*v.vm, fmt::format("VM entry failed: invalid guest state on vCPU {}", v.index));
      break;
    case ExitReason::EptMisconfig:
      crash_vm(*v.vm, fmt::format("EPT misconfiguration at guest-physical {:#x}", vmr(c, field::kGuestPhysicalAddress)));
      break;
    default:
      // VMX instructions and anything else the hypervisor does not emulate:
      // the guest gets #UD, as KVM without nested virtualization does.
      inject_exception(c, cpu::vec::kInvalidOpcode, false, 0);
      break;
  }
}

void Hypervisor::inject_exception(Core& c, std::uint8_t vector, bool error_code, std::uint32_t code) {
  vmw(c, field::kEntryIntrInfo, cpu::intr::info(vector, cpu::intr::kTypeHardwareException, error_code));
  if (error_code) vmw(c, field::kEntryExceptionErrorCode, code);
}

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
  v.regs[Regs::rax] = v.regs[Regs::rax] == hypercall::kNop ? 0 : hypercall::kUnknownResult;
}

void Hypervisor::handle_io(Core& c, Vcpu& v) {
  charge(c, m_p.costs.io, kCodeIo);
  std::uint64_t q = vmr(c, field::kExitQualification);
  unsigned size = static_cast<unsigned>(q & 7) + 1;
  bool in = q & (1u << 3);
  auto port = static_cast<std::uint16_t>(q >> 16);
  // Emulated devices: the debug console is forwarded to the platform's; any
  // other port behaves as an empty ISA slot.
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
        v.vtimer_deadline = value;
        program_timer(pc);
      } else {
        result = v.vtimer_deadline;
      }
      break;
    case cpu::msr::kX2ApicEoi:
      break;  // the virtual ISR is not modelled: EOI only costs the exit
    case cpu::msr::kX2ApicLvtTimer:
      if (write) v.vlvt_timer = static_cast<std::uint32_t>(value);
      else result = v.vlvt_timer;
      break;
    case cpu::msr::kX2ApicId:
      if (write) ok = false;
      else result = v.index;
      break;
    case cpu::msr::kKvmStealTime:
      // Bit 0 enables; bits 63:6 give a 64-byte aligned guest-physical
      // address (Linux Documentation/virt/kvm/x86/msr.rst).
      if (!write) {
        result = v.steal_msr;
      } else if (!(value & 1)) {
        v.steal_msr = value;
        v.steal_area = 0;
      } else {
        std::uint64_t gpa = value & ~63ull;
        if ((value & 0x3E) || gpa + 64 > v.vm->memory || !back_guest_page(c, *v.vm, gpa)) {
          ok = false;
        } else {
          v.steal_msr = value;
          v.steal_area = ept_translate(c, *v.vm, gpa);
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

// Maps the EPT page holding gpa to hpa, allocating tables on the way
// (SDM Vol. 3C, 29.3.2). The leaf sits at the level of the configured page
// size, with bit 7 set above level 1.
void Hypervisor::ept_map(Core& c, Vm& vm, std::uint64_t gpa, std::uint64_t hpa) {
  const unsigned leaf = m_p.ept_page_size == (1ull << 30) ? 3 : m_p.ept_page_size == (1ull << 21) ? 2 : 1;
  std::uint64_t table = vm.ept_root;
  for (unsigned level = static_cast<unsigned>(m_p.ept_levels); level > leaf; --level) {
    std::uint64_t entry_pa = table + mmu::table_index(gpa, level) * 8;
    std::uint64_t e = c.load(entry_pa);
    if (!(e & mmu::ept::kPermMask)) {
      std::uint64_t t = alloc_host_frame();
      ++m_totals.ept_tables;
      c.rep_stos(t, 0, kPage);
      e = t | mmu::ept::kRead | mmu::ept::kWrite | mmu::ept::kExecute;
      c.store(entry_pa, e);
    }
    table = e & mmu::ept::kAddrMask;
  }
  std::uint64_t leaf_pa = table + mmu::table_index(gpa, leaf) * 8;
  c.store(leaf_pa, (hpa & mmu::ept::kAddrMask) | mmu::ept::kRead | mmu::ept::kWrite | mmu::ept::kExecute |
                       mmu::ept::kMemTypeWb | (leaf > 1 ? mmu::ept::kLargePage : 0));
}

// The VM's EPT is shared by its vCPUs' cores: changes to it are made under
// a spinlock (test-and-set with XCHG, spinning with PAUSE on reads), as KVM
// holds its MMU lock; the time spent spinning is charged to the waiter.
void Hypervisor::lock_mmu(Core& c, Vm& vm) {
  while (c.xchg(vm.mmu_lock, 1) != 0) {
    ++m_totals.lock_spins;
    while (c.load(vm.mmu_lock) != 0) c.pause();
  }
}

void Hypervisor::unlock_mmu(Core& c, Vm& vm) { c.store(vm.mmu_lock, 0); }

bool Hypervisor::back_guest_page(Core& c, Vm& vm, std::uint64_t gpa) {
  lock_mmu(c, vm);
  bool ok = back_guest_page_locked(c, vm, gpa) != 0;
  unlock_mmu(c, vm);
  return ok;
}

std::uint64_t Hypervisor::back_guest_page_locked(Core& c, Vm& vm, std::uint64_t gpa) {
  const std::uint64_t size = m_p.ept_page_size;
  const std::uint64_t offset = gpa & (size - 1);
  gpa -= offset;
  // Already backed (another vCPU got there first, or eager population)?
  // Then the violation was spurious, as KVM finds under its MMU lock.
  if (std::uint64_t hpa = ept_translate(c, vm, gpa)) return hpa + offset;
  std::uint64_t hpa = alloc_guest_page();
  if (!hpa) return 0;
  if (m_p.zero_pages) c.rep_stos(hpa, 0, size);
  ept_map(c, vm, gpa, hpa);
  return hpa + offset;
}

void Hypervisor::populate(Core& c, Vm& vm) {
  for (std::uint64_t gpa = 0; gpa < vm.memory; gpa += m_p.ept_page_size) {
    if (!back_guest_page(c, vm, gpa)) {
      crash_vm(vm, "host memory exhausted while backing guest memory");
      return;
    }
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
  if (!back_guest_page(c, vm, gpa)) crash_vm(vm, "host memory exhausted while backing guest memory");
}

// ---------------------------------------------------------------------------
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
  ept_map(c, vm, vm.nic->window(), regs);
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
  if (vm.crashed) return;
  hv.raise_virtual(*vm.vcpus[apic_id < vm.vcpus.size() ? apic_id : 0], vector);
}

void Hypervisor::NicHost::charge(Core& c, std::uint64_t instructions) { hv.charge(c, instructions, kCodeNic); }

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
  } else if (vector == kPostedWakeupVector) {
    // A device posted to a vCPU blocked on this core: wake those with ON set.
    for (Vcpu* v : pc.assigned)
      if (v->pi_wakeup && v->state == Vcpu::State::Blocked && (c.load(v->pi_desc + kPidControl) & kPidOn)) wake(*v);
  } else {
    // A passed-through device's remapped interrupt: forward it to the guest.
    passthrough_interrupt(vector);
  }
  c.wrmsr(cpu::msr::kX2ApicEoi, 0);
}

void Hypervisor::handle_timer(PerCore& pc) {
  Core& c = *pc.core;
  std::uint64_t now = c.rdtsc();
  for (Vcpu* v : pc.assigned) {
    if (v->state == Vcpu::State::Dead) continue;
    if (v->vtimer_deadline && now >= v->vtimer_deadline) {
      v->vtimer_deadline = 0;
      if (!(v->vlvt_timer & (1u << 16))) raise_virtual(*v, static_cast<std::uint8_t>(v->vlvt_timer & 0xFF));
      else wake(*v);
    }
  }
  for (auto& vm : m_vms)
    if (vm->nic_next_poll && vm->nic_core == pc.id && now >= vm->nic_next_poll && !vm->crashed) {
      vm->nic->poll(c);
      vm->nic_next_poll = now + vm->nic_poll_ticks;
    }
  pc.sched->tick(now);
  program_timer(pc);
}

void Hypervisor::wake(Vcpu& v) {
  if (v.state == Vcpu::State::Dead) return;
  PerCore& target = *m_percore[v.core];
  const bool was_blocked = v.state == Vcpu::State::Blocked;
  if (was_blocked) {
    v.state = Vcpu::State::Runnable;
    if (v.off == Vcpu::Off::Halted) {
      trace_state(Core::current(), v, Core::current().now(), false);
      account_off_cpu(v, Core::current().now(), false);
      v.off = Vcpu::Off::Runnable;
    }
  }
  Core& self = Core::current();
  target.sched->wake(v, was_blocked, self.now());
  if (&self != target.core) self.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{target.id} << 32) | kRescheduleVector);
}

// Posting (as KVM's vmx_deliver_posted_interrupt): set the PIR bit and ON
// with locked ORs; if ON was clear and the vCPU is running on another core,
// send that core the notification vector through the x2APIC ICR, so the
// interrupt arrives without a VM exit. A blocked vCPU is woken and gets the
// interrupt at its next entry; so does a runnable one that is not running.
void Hypervisor::raise_virtual(Vcpu& t, std::uint8_t vector) {
  if (!m_p.posted_interrupts) {
    t.virr.set(vector);
    wake(t);
    return;
  }
  if (t.state == Vcpu::State::Dead) return;
  Core& c = Core::current();
  charge(c, m_p.costs.post, kCodeInject);
  ++m_totals.posted;
  c.lock_or(t.pi_desc + 8 * (vector / 64), 1ull << (vector % 64));
  const std::uint64_t old = c.lock_or(t.pi_desc + kPidControl, kPidOn);
  const bool running_elsewhere = t.off == Vcpu::Off::OnCpu && m_percore[t.core]->core != &c;
  if (t.state == Vcpu::State::Runnable && running_elsewhere) {
    if (!(old & kPidOn)) {
      ++m_totals.notifications;
      c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{t.core} << 32) | kPostedVector);
    }
    return;
  }
  wake(t);
}

std::uint64_t Hypervisor::posted_descriptor(unsigned vm, unsigned vcpu) const {
  return m_vms.at(vm)->vcpus.at(vcpu)->pi_desc;
}

bool Hypervisor::posted_pending(Core& c, Vcpu& v) {
  if (c.load(v.pi_desc + kPidControl) & kPidOn) return true;
  // A virtual interrupt already in VIRR that the guest could take (RVI's
  // priority class above SVI's, SDM Vol. 3C, 30.2.1).
  std::uint64_t gis = vmr(c, field::kGuestIntrStatus);
  return ((gis & 0xFF) >> 4) > ((gis >> 8) >> 4);
}

// ---------------------------------------------------------------------------
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
    if (c.vmclear(v.vmcs_pa) != cpu::VmxStatus::Succeed)
      throw cpu::SimulationError("hypervisor: VMCLEAR for a migration failed");
    if (from.loaded == &v) from.loaded = nullptr;
    v.active_on = -1;
    v.launched = false;
  }
  // The operations above may have let other cores run; the vCPU stays
  // unclaimed on this core meanwhile (only this core picks it). Move it.
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

void Hypervisor::crash_vm(Vm& vm, const std::string& why) {
  if (vm.crashed) return;
  vm.crashed = true;
  vm.crash = why;
  for (auto& v : vm.vcpus) v->state = Vcpu::State::Dead;
}

}  // namespace vmx::hv
