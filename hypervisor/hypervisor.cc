// The hypervisor's construction (host-physical layout, VMs and vCPUs) and the
// helpers every room uses to turn its work into core operations.
#include "hypervisor/hypervisor.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "hypervisor/hypervisor_state.h"
#include "hypervisor/dirty_state.h"
#include "hypervisor/migration_state.h"
#include "hypervisor/passthrough.h"
#include "hypervisor/shadow.h"
#include "mmu/paging.h"
#include "sim/event_trace.h"

namespace vmx::hv {

using namespace detail;

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
  register_exit_handlers();
  register_vpmu_handlers();
  // Host-physical layout: the first MiB is left alone (as on a PC), the
  // hypervisor's text follows, then its data; guest frames come from above
  // reserved_memory.
  m_text = 0x100000;
  m_hv_zone = m_frames.add_zone("hypervisor", 0x200000, m_p.reserved_memory & ~(kPage - 1));
  m_guest_zone =
      m_frames.add_zone("guest", (m_p.reserved_memory + kPage - 1) & ~(kPage - 1), m_host_memory & ~(kPage - 1));
  m_msr_bitmap = alloc_host_frame();
  m_io_bitmap_a = alloc_host_frame();
  m_io_bitmap_b = alloc_host_frame();
  // Only with migration, so that the host-physical layout (and every cache
  // set the hypervisor's structures map to) stays that of earlier runs.
  if (m_p.migration) m_idle_map = alloc_host_frame();
  ksm_init();
  swap_init();
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

void Hypervisor::run_as_guest(GuestLink link) {
  if (!m_vms.empty()) throw std::logic_error("Hypervisor::run_as_guest after add_vm");
  // The exits of the cores are the VMM's below; this one's exits are those
  // the VMM below reflects to it.
  for (Core* c : m_cores) c->events().detach(m_exit_total);
  if (link.exits) link.exits(&m_exit_total);
  m_guest = std::make_unique<GuestLink>(std::move(link));
  m_operand_slots = alloc_host_frame();
}

cpu::Core* Hypervisor::vcpu_core(unsigned vm, unsigned vcpu) const {
  return m_cores.at(m_vms.at(vm)->vcpus.at(vcpu)->core);
}

cpu::insn::MemOperand Hypervisor::vmx_operand(Core& c, std::uint64_t lo, std::uint64_t hi) {
  if (!m_guest) return {};
  unsigned i = 0;
  while (i + 1 < m_percore.size() && m_percore[i]->core != &c) ++i;
  const std::uint64_t slot = m_operand_slots + 64 * i;
  c.store(slot, lo);
  c.store(slot + 8, hi);
  return {cpu::insn::kNoReg, cpu::insn::kNoReg, 0, static_cast<std::int32_t>(slot)};
}

void Hypervisor::observe(Core& c, std::uint64_t vmcs, events::Listener* l) {
  if (m_guest) {
    if (m_guest->observe) m_guest->observe(c, vmcs, l);
  } else {
    c.observe_vmcs(vmcs, l);
  }
}

sim::Fiber& Hypervisor::core_fiber(unsigned core) { return *m_percore.at(core)->fiber; }

unsigned Hypervisor::vm_count() const { return static_cast<unsigned>(m_vms.size()); }

const std::string& Hypervisor::vm_name(unsigned i) const { return m_vms.at(i)->name; }

const std::string& Hypervisor::vm_crash(unsigned i) const { return m_vms.at(i)->crash; }

std::uint64_t Hypervisor::vm_resident_bytes(unsigned i) const { return m_vms.at(i)->backed; }

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
  vm->ran_on.assign(m_cores.size(), false);
  make_ept(*vm);
  bool fresh = true;
  vm->mmu_lock = TicketLock(alloc_host_frame(&fresh), &m_mmu_lock_stats);
  vm->fresh_frames = vm->fresh_frames && fresh;
  vm->group = &m_stats.parent()->subgroup("vm").subgroup(spec.name, "VM " + spec.name);
  if (m_ksm) ksm_add_vm(*vm);
  if (m_swap) swap_add_vm(*vm);
  vm->nic_type = spec.nic_type;
  vm->vf = spec.vf;
  vm->nic_window_gpa = spec.nic_window_gpa;
  vm->nic_vector = spec.nic_vector;
  if (spec.cache_ways || spec.mba_delay) {
    vm->clos = m_next_clos++;
    vm->cache_ways = spec.cache_ways;
    vm->mba_delay = spec.mba_delay;
  }
  if (spec.pmu == "emulated") vm->pmu = Vm::Pmu::Emulated;
  else if (spec.pmu == "mediated") vm->pmu = Vm::Pmu::Mediated;
  else if (spec.pmu == "passthrough") vm->pmu = Vm::Pmu::Passthrough;
  else if (spec.pmu != "none") throw std::invalid_argument("VM " + spec.name + ": unknown pmu mode '" + spec.pmu + "'");
  if (vm->pmu != Vm::Pmu::None) {
    stats::Group& g = vm->group->subgroup("vpmu", "the VM's virtual PMU (docs/pmu.md)");
    vm->vpmu_pmis = &g.make<stats::Counter>("pmis", "interrupts", "virtual PMIs raised for the guest");
    vm->vpmu_filtered = &g.make<stats::Counter>("filtered", "writes",
                                                "event-select writes whose event the filter kept from counting");
  }
  if (spec.nested_vmx) {
    if (spec.shadow_paging || m_p.posted_interrupts || m_p.migration || m_preemption_slices)
      throw std::invalid_argument("VM " + spec.name + ": nested VMX needs EPT paging, and hypervisor.posted_interrupts "
                                  "and hypervisor.migration off and hypervisor.slice_timer host (docs/nested.md)");
    vm->nested_vmx = true;
    vm->nested_stats = std::make_unique<NestedStats>(vm->group);
  }
  if (spec.key_id && (spec.shadow_paging || spec.nested_vmx))
    throw std::invalid_argument("VM " + spec.name + ": an encrypted VM needs EPT paging and no nested VMX");
  vm->key_id = spec.key_id;
  if (spec.nic_type == "vf" && (!m_io.vtd_regs || spec.shadow_paging))
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
  add_overcommit_devices(*vm, spec);
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
  if (spec.snapshot.enabled) {
    // Snapshots (snapshot.cc) write-protect the EPT; a device's DMA is not
    // tracked, and shadow paging has no EPT to protect.
    if (spec.shadow_paging || spec.virtio_net || spec.nic.enabled || spec.nic_type != "none")
      throw std::invalid_argument("VM " + spec.name + ": a snapshot needs EPT paging and no network device");
    if (m_p.snapshot.copier_core >= m_cores.size())
      throw std::invalid_argument(fmt::format("hypervisor.snapshot.copier_core {} is not a core (the platform has {})",
                                              m_p.snapshot.copier_core, m_cores.size()));
    if (spec.snapshot.restore_at && spec.snapshot.restore_at <= spec.snapshot.at)
      throw std::invalid_argument("VM " + spec.name + ": snapshot.restore_at must come after snapshot.at");
    const unsigned id = vm->id, core = static_cast<unsigned>(m_p.snapshot.copier_core);
    at(spec.snapshot.at, core, [this, id](Core& c) { snapshot_take(c, id); });
    if (spec.snapshot.restore_at) at(spec.snapshot.restore_at, core, [this, id](Core& c) { snapshot_restore(c, id); });
  }
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
    v->save_area = alloc_host_frame(&fresh);
    vm->fresh_frames = vm->fresh_frames && fresh;
    if (m_p.posted_interrupts) {
      v->apic.vapic = alloc_host_frame();
      v->apic.pi_desc = v->save_area + kPidOffset;
    }
    v->vpid = m_p.vpid ? m_next_vpid++ : 0;
    v->obs = std::make_unique<cpu::VcpuObserver>(vm->group, fmt::format("vcpu{}", i));
    v->time.stats = std::make_unique<Vcpu::TimeStats>(v->obs.get());
    v->migrations = &v->obs->make<stats::Counter>("migrations", "events", "times the vCPU moved to another core");
    if (spec.incoming) {  // migration.cc: off until the migration resumes it here
      v->state = Vcpu::State::Dead;
      v->time.off = Vcpu::Off::Stopped;
    }
    PerCore& pc = *m_percore[v->core];
    pc.assigned.push_back(v.get());
    if (m_started) v->time.since = v->time.trace_since = m_cores[v->core]->now();  // added at run time
    pc.sched->add(*v);
    vm->vcpus.push_back(std::move(v));
  }
  Vm& added = *vm;
  if (spec.dirty_log) {
    // Dirty logging on its own (dirty_log.cc): a timed job on vCPU 0's core
    // starts it, another harvests every interval.
    if (spec.shadow_paging || spec.snapshot.enabled || spec.nested_vmx || spec.nic.enabled || spec.virtio_net ||
        spec.nic_type != "none" || spec.dirty_log_interval == 0)
      throw std::invalid_argument("VM " + spec.name + ": dirty logging needs EPT paging, a harvest interval, and no "
                                  "snapshot, nested hypervisor or network device");
    if (spec.dirty_log_mode != DirtyMode::WriteProtect && !m_p.ept_ad)
      throw std::invalid_argument("VM " + spec.name + ": dirty logging by dirty flags or PML needs hypervisor.ept_ad");
    const unsigned id = added.id, core = added.vcpus.front()->core;
    const std::uint64_t interval = spec.dirty_log_interval;
    const DirtyMode mode = spec.dirty_log_mode;
    at(spec.dirty_log_start, core, [this, id, core, mode, interval](Core& c) {
      dirty_log_start(c, id, mode);
      at(c.now_ps() + interval, core, [this, id, core, interval](Core& cc) { dirty_log_round(cc, id, core, interval); });
    });
  }
  m_vms.push_back(std::move(vm));
  if (m_started) {
    Core& c = Core::current();
    // Reused frames may hold an earlier VM's data: the EPT root, the MMU
    // lock and the save areas (with the posted-interrupt descriptors) start
    // cleared (docs/memory.md, "Zeroing").
    if (!added.fresh_frames) {
      c.rep_stos(added.ept->root(), 0, kPage);
      c.rep_stos(added.mmu_lock.word(), 0, kPage);
      for (auto& v : added.vcpus) c.rep_stos(v->save_area, 0, kPage);
    }
    // Wake the cores whose run queues got a vCPU.
    std::vector<bool> kicked(m_cores.size(), false);
    for (auto& v : added.vcpus)
      if (!kicked[v->core] && m_cores[v->core] != &c) {
        kicked[v->core] = true;
        c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{v->core} << 32) | kRescheduleVector);
      }
  }
}

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

void Hypervisor::inject_exception(Core& c, std::uint8_t vector, bool error_code, std::uint32_t code) {
  vmw(c, field::kEntryIntrInfo, cpu::intr::info(vector, cpu::intr::kTypeHardwareException, error_code));
  if (error_code) vmw(c, field::kEntryExceptionErrorCode, code);
}

void Hypervisor::crash_vm(Vm& vm, const std::string& why) {
  if (vm.crashed) return;
  vm.crashed = true;
  vm.crash = why;
  for (auto& v : vm.vcpus) v->state = Vcpu::State::Dead;
}

}  // namespace vmx::hv
