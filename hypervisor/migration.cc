// Live migration between two hosts by iterative pre-copy (docs/migration.md).
//
// Source: a migration thread of the hypervisor, run as timed jobs (at()) on
// one core, whose work takes that core from the vCPUs there:
//   - it starts dirty tracking (dirty_log.cc, by the chosen mode) and sends
//     every guest page mapped then (round 0), then, round after round, the
//     pages dirtied during the previous one (get-and-clear of the dirty log);
//   - each page travels as ceil(4096 / payload) Ethernet frames, written
//     into the stream's transport (mig_transport.cc: sequence numbers, ACKs,
//     retransmission) and sent through the PF driver (host_nic.cc), paced to
//     max_bandwidth (bytes/s of stream);
//   - after each round it measures the bandwidth it achieved (bytes / TSC
//     time) and switches over when the pages left fit in bandwidth x
//     downtime_limit (QEMU's rule in migration_iteration_run), or after
//     max_rounds;
//   - stop-and-copy: every vCPU is asked off its core (IPI) and parked by the
//     core where its VMCS is active (VMREADs of the guest state into a record
//     in hypervisor memory, VMCLEAR), the last dirty pages and the records
//     are sent without the bandwidth cap (as QEMU's completion), then a DONE
//     frame with the TSC at the pause; once the destination has acknowledged
//     every frame the VM is torn down on the source and its frames go back
//     to the allocator.
// Destination: the stream arrives at its PF for the migration port's MAC and
// is handled on the PF's interrupt core: pages are backed in the incoming
// VM's EPT (back_guest_page_locked) and copied there, the records stored; at
// DONE the vCPUs get their state (GPRs, CR2, LAPIC timer and requests, the
// steal-time MSR), the VMCS guest state is written at their first entry, and
// they become runnable (or halted, as they were).
// Every step is charged as the operations of the core doing it.
#include "hypervisor/migration_state.h"

#include <algorithm>
#include <iterator>
#include <stdexcept>

#include <fmt/format.h>

#include "hypervisor/mig_stream.h"
#include "mmu/paging.h"

namespace vmx::hv {

using namespace detail;

namespace {
using namespace stream;  // the frame format (mig_stream.h)

// The vCPU state record (one page of hypervisor memory), in 8-byte slots.
enum Slot : unsigned {
  kSlotGprs = 0,       // 16 general-purpose registers
  kSlotCr2 = 16,
  kSlotFlags = 17,     // bit 0: launched, bit 1: halted
  kSlotVtimer = 18,
  kSlotVlvt = 19,
  kSlotVirr = 20,      // 4 words: the requested-interrupt bits
  kSlotSteal = 24,     // MSR_KVM_STEAL_TIME
  kSlotFields = 25,    // the VMCS guest-state fields below, in order
};
// The guest state a VM exit saves in this model (SDM Vol. 3C, 28.3), what
// the destination's VMCS needs for the guest to go on where it stopped.
constexpr std::uint32_t kFields[] = {
    field::kGuestRip,  field::kGuestRflags, field::kGuestCr0,         field::kGuestCr3,
    field::kGuestCr4,  field::kGuestIa32Efer, field::kGuestIdtrBase,  field::kGuestSsAccessRights,
    field::kCr4ReadShadow,
};
constexpr unsigned kRecordSlots = kSlotFields + sizeof(kFields) / sizeof(kFields[0]);
constexpr std::uint32_t kRecordBytes = kRecordSlots * 8;
constexpr std::uint32_t kFlagLaunched = 1, kFlagHalted = 2;
}  // namespace

// --- Source ------------------------------------------------------------------

void Hypervisor::migrate_out(const MigrationSpec& spec) {
  Vm& vm = *m_vms.at(spec.vm);
  if (!m_host_nic) throw std::invalid_argument("VM " + vm.name + ": migration needs the platform's NIC");
  if (spec.core >= m_cores.size())
    throw std::invalid_argument(fmt::format("VM {}: migration core {} is not a core", vm.name, spec.core));
  if (vm.shadow || vm.virtio || vm.nic || (vm.nic_type != "none" && vm.nic_type != "vf") || vm.nested_vmx ||
      vm.pmu != Vm::Pmu::None)
    throw std::invalid_argument("VM " + vm.name + ": migration needs EPT paging and no device, nesting or vPMU");
  vm.mig_out = std::make_unique<MigrationOut>();
  vm.mig_out->spec = spec;
  if (spec.deferred) return;  // migrate_start (below)
  vm.mig_out->triggered = true;
  Vm* p = &vm;
  at(spec.at, spec.core, [this, p](Core& c) { mig_step(c, *p); });
}

bool Hypervisor::mig_send_page(Core& c, Vm& vm, std::uint64_t gfn) {
  MigrationOut& m = *vm.mig_out;
  if (mig_tp_room(vm, true) < m.frames_per_page) return false;
  charge(c, m_p.live_migration.send_page, kCodeMigrateSrc);
  const std::uint64_t gpa = gfn * kPage;
  auto leaf = vm.ept->lookup(c, gpa);
  if (!leaf) return true;  // never backed: nothing to send (the destination reads zeros there)
  const std::uint64_t hpa = leaf->hpa + (gpa - leaf->gpa);
  const auto chunk = static_cast<std::uint32_t>(m_p.live_migration.payload);
  for (std::uint32_t off = 0; off < kPage; off += chunk)
    mig_send(c, vm, kPageData, gpa + off, hpa + off, std::min<std::uint32_t>(chunk, kPage - off));
  ++m.stats->pages_sent;
  if (m.phase == MigrationOut::Phase::Rounds) ++m.rounds.back()->pages_sent;
  return true;
}

void Hypervisor::mig_park(PerCore& pc, Vcpu& v) {
  v.mig_park_asked = false;
  // Only after an exit that leaves nothing of its operation to this core:
  // otherwise it runs on to its next exit (the source keeps kicking it).
  if (v.mig_parked || !v.mig_safe) return;
  Core& c = *pc.core;
  charge(c, m_p.live_migration.vcpu_state, kCodeMigrateSrc);
  const std::uint64_t r = v.mig_record;
  for (unsigned i = 0; i < 16; ++i) c.store(r + 8 * (kSlotGprs + i), v.regs[i]);
  c.store(r + 8 * kSlotCr2, v.cr2);
  const bool halted = v.state == Vcpu::State::Blocked;
  c.store(r + 8 * kSlotFlags, (v.launched ? kFlagLaunched : 0) | (halted ? kFlagHalted : 0));
  c.store(r + 8 * kSlotVtimer, v.apic.vtimer_deadline);
  c.store(r + 8 * kSlotVlvt, v.apic.vlvt_timer);
  for (unsigned w = 0; w < 4; ++w) {
    std::uint64_t bits = 0;
    for (unsigned b = 0; b < 64; ++b)
      if (v.apic.virr.test(w * 64 + b)) bits |= 1ull << b;
    c.store(r + 8 * (kSlotVirr + w), bits);
  }
  c.store(r + 8 * kSlotSteal, v.steal.msr);
  if (v.vmcs_ready) {
    // The VMCS is active on this core or on none (SDM Vol. 3C, 25.11.1).
    if (pc.loaded != &v) {
      if (c.vmptrld(v.vmcs_pa, vmx_operand(c, v.vmcs_pa)) != cpu::VmxStatus::Succeed)
        throw cpu::SimulationError("hypervisor: VMPTRLD of a parking vCPU failed");
      pc.loaded = &v;
    }
    for (unsigned i = 0; i < std::size(kFields); ++i) c.store(r + 8 * (kSlotFields + i), vmr(c, kFields[i]));
    c.vmclear(v.vmcs_pa, vmx_operand(c, v.vmcs_pa));
    pc.loaded = nullptr;
    v.active_on = -1;
  }
  for (auto& other : m_percore)
    if (other->last_ran == &v) other->last_ran = nullptr;
  v.state = Vcpu::State::Dead;
  v.apic.vtimer_deadline = 0;
  v.mig_parked = true;
}

bool Hypervisor::mig_pause(Core& c, Vm& vm) {
  const unsigned self = c.id();
  bool all = true;
  for (auto& vp : vm.vcpus) {
    Vcpu& v = *vp;
    if (v.mig_parked) continue;
    all = false;
    if (v.time.off == Vcpu::Off::OnCpu) {
      // In guest mode (or about to be): the IPI makes it exit; its core parks
      // it after handling the exit.
      c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{v.core} << 32) | kRescheduleVector);
      continue;
    }
    if (!v.mig_safe) {
      // Runnable after an exit whose operation is not done: its core lets
      // it run to its next exit.
      if (v.state == Vcpu::State::Runnable && m_cores[v.core] != &c)
        c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{v.core} << 32) | kRescheduleVector);
      continue;
    }
    if (v.active_on < 0 || static_cast<unsigned>(v.active_on) == self) {
      mig_park(*m_percore[self], v);
    } else if (!v.mig_park_asked) {
      v.mig_park_asked = true;
      m_percore[static_cast<unsigned>(v.active_on)]->pending_park.push_back(&v);
      c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{static_cast<unsigned>(v.active_on)} << 32) | kRescheduleVector);
    }
  }
  if (all) return true;
  for (auto& vp : vm.vcpus)
    if (!vp->mig_parked) return false;
  return true;
}

void Hypervisor::mig_step(Core& c, Vm& vm) {
  MigrationOut& m = *vm.mig_out;
  const LiveMigrationParams& lp = m_p.live_migration;
  const std::uint64_t t0 = c.now();
  auto again = [&](std::uint64_t tsc) {
    m.stats->thread_cycles += c.now() - t0;
    Vm* p = &vm;
    const auto ps = static_cast<std::uint64_t>(static_cast<unsigned __int128>(tsc) * cfg::kPsPerSecond / m_tsc_hz);
    at(std::max(ps, c.now_ps() + 1), m.spec.core, [this, p](Core& cc) { mig_step(cc, *p); });
  };
  const std::uint64_t poll = static_cast<std::uint64_t>(static_cast<unsigned __int128>(lp.poll) * m_tsc_hz /
                                                        cfg::kPsPerSecond);
  if (vm.ended() && m.phase != MigrationOut::Phase::Done) return;  // stopped meanwhile: nothing to move
  switch (m.phase) {
    case MigrationOut::Phase::Start: {
      if (vm.nic_type == "vf" && !vm.vf_rid) {  // its VF not assigned yet (first entry): wait for it
        Vm* p = &vm;
        at(c.now_ps() + lp.poll, m.spec.core, [this, p](Core& cc) { mig_step(cc, *p); });
        return;
      }
      m.stats = std::make_unique<MigrationOut::Stats>(vm.group);
      m.header = alloc_host_frame();
      m.frames_per_page = static_cast<unsigned>((kPage + lp.payload - 1) / lp.payload);
      m.started = c.rdtsc();
      for (auto& v : vm.vcpus) v->mig_record = alloc_host_frame();
      mig_tp_start(c, vm);  // mig_transport.cc
      mig_send(c, vm, kStart, m.started, 0, 0);
      dirty_log_start(c, vm.id, m.spec.mode);
      if (vm.nic_type == "vf") vf_mig_start(c, vm, m.spec.vf_handshake);  // vf_migration.cc
      // Round 0: every page mapped now.
      lock_mmu(c, vm);
      vm.ept->for_each_leaf(c, 0, vm.memory, false, [&](const Ept::Leaf& l) {
        for (std::uint64_t g = l.gpa; g < l.gpa + l.size; g += kPage) m.list.push_back(g / kPage);
      });
      unlock_mmu(c, vm);
      if (mig_options_start(c, vm)) return again(m.pause_tsc);  // postcopy.cc: auto-converge, post-copy set-up
      m.phase = MigrationOut::Phase::Rounds;
      m.round_start = c.rdtsc();
      m.rounds.push_back(std::make_unique<MigrationOut::Round>(m.stats.get(), 0));
      ++m.stats->rounds;
      break;
    }
    case MigrationOut::Phase::Pausing:
      if (!mig_pause(c, vm)) return again(c.rdtsc() + poll);
      if (vm.vf_mig && !vf_mig_stop(c, vm)) return again(c.rdtsc() + poll);  // the VF quiesces
      m.stats->pause_cycles += c.rdtsc() - m.pause_tsc;
      if (m.post && m.post->on) {  // postcopy.cc: the VM resumes at the destination before its pages
        m.stats->thread_cycles += c.now() - t0;
        return mig_postcopy_switch(c, vm);
      }
      // The vCPUs' PML logs were drained at their last exits: the final
      // harvest has every page written since the last round.
      {
        std::vector<std::uint64_t> more = dirty_log_collect(c, vm.id);
        vf_mig_dma_dirty(c, vm, more);
        std::vector<std::uint64_t> all;
        std::set_union(m.list.begin(), m.list.end(), more.begin(), more.end(), std::back_inserter(all));
        m.list = std::move(all);
      }
      m.next = 0;
      m.stats->final_pages += m.list.size();
      m.phase = MigrationOut::Phase::Final;
      break;
    default: break;
  }
  const bool final = m.phase == MigrationOut::Phase::Final;
  for (std::uint64_t n = 0; m.next < m.list.size() && (final || n < lp.batch_pages); ++n) {
    if (!final && m.spec.max_bandwidth && m.next_tsc > c.rdtsc()) {
      ++m.stats->paced;
      return again(m.next_tsc);
    }
    if (!mig_send_page(c, vm, m.list[m.next])) {  // the send buffer is full: an ACK makes room
      m.stats->thread_cycles += c.now() - t0;
      return mig_tp_wait(c, vm);
    }
    ++m.next;
  }
  if (m.next < m.list.size()) return again(c.rdtsc());  // yield the core between batches
  if (!final) {
    // End of a pre-copy round: harvest what was dirtied meanwhile and
    // decide (QEMU's migration_iteration_run): switch over when it fits in
    // bandwidth x downtime_limit.
    const std::uint64_t now = c.rdtsc();
    const std::uint64_t ticks = std::max<std::uint64_t>(1, now - m.round_start);
    const auto bw = static_cast<std::uint64_t>(static_cast<unsigned __int128>(m.round_bytes) * m_tsc_hz / ticks);
    m.rounds.back()->cycles += ticks;
    std::vector<std::uint64_t> dirty = dirty_log_collect(c, vm.id);
    vf_mig_dma_dirty(c, vm, dirty);
    m.rounds.back()->pages_dirtied += dirty.size();
    m.stats->pages_dirtied += dirty.size();
    m.stats->bandwidth.set(static_cast<double>(bw));
    const unsigned __int128 fits = static_cast<unsigned __int128>(bw) * m.spec.downtime_limit / cfg::kPsPerSecond;
    const unsigned __int128 left = static_cast<unsigned __int128>(dirty.size()) * kPage;
    const bool converged = left <= fits;
    const bool postcopy_due = mig_round_end(c, vm, dirty.size());  // postcopy.cc: auto-converge, post-copy
    if (converged || postcopy_due || m.round + 1 >= m.spec.max_rounds) {
      mig_switchover(c, vm, converged);
      m.stats->converged.set(converged ? 1 : 0);
      m.stats->switchover_pages += dirty.size();
      m.list = std::move(dirty);  // sent after the pause, with what is dirtied until then
      m.next = 0;
      m.phase = MigrationOut::Phase::Pausing;
      m.pause_tsc = now;
      vm.mig_pausing = true;
      return again(now);  // the pause and the last round (pages still dirty then included)
    }
    m.list = std::move(dirty);
    m.next = 0;
    ++m.round;
    ++m.stats->rounds;
    m.round_start = now;
    m.round_bytes = 0;
    m.rounds.push_back(std::make_unique<MigrationOut::Round>(m.stats.get(), m.round));
    return again(now);
  }
  if (m.phase == MigrationOut::Phase::Draining) {  // waiting for the last ACK (mig_transport.cc)
    m.stats->thread_cycles += c.now() - t0;
    return;
  }
  // Stop-and-copy done: the vCPU records, then DONE with the pause time and
  // the frame count (the destination checks it got them all).
  const unsigned tail = static_cast<unsigned>(vm.vcpus.size()) + (vm.vf_mig ? 1 : 0) + 1;
  if (tail > m.tp->slots)
    throw cpu::SimulationError(fmt::format("hypervisor: the last {} migration frames exceed the send buffer ({} "
                                           "frames: raise hypervisor.live_migration.window)",
                                           tail, m.tp->slots));
  if (mig_tp_room(vm, false) < tail) {
    m.stats->thread_cycles += c.now() - t0;
    return mig_tp_wait(c, vm);
  }
  for (auto& v : vm.vcpus) {
    charge(c, lp.vcpu_state, kCodeMigrateSrc);
    mig_send(c, vm, kState, v->index, v->mig_record, kRecordBytes);
    ++m.stats->vcpus;
  }
  if (vm.vf_mig) vf_mig_send_state(c, vm);
  c.store(m.header + 2048, m.pause_tsc);
  c.store(m.header + 2056, m.frames + 1);
  mig_send(c, vm, kDone, 0, m.header + 2048, 16);
  m.stats->total_cycles += c.rdtsc() - m.started;
  mig_probe(c, vm);
  if (vm.vf_mig) vf_mig_release(c, vm);
  dirty_log_stop(c, vm.id);
  // The source keeps the VM until the destination has acknowledged every
  // frame (mig_tp_finished tears it down then).
  m.phase = MigrationOut::Phase::Draining;
  m.stats->thread_cycles += c.now() - t0;
  if (m.tp->una == m.tp->end) mig_tp_finished(c, vm);
}

void Hypervisor::mig_probe(Core& c, Vm& vm) {
  if (!m_mig_probe) return;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> pages;
  lock_mmu(c, vm);
  vm.ept->for_each_leaf(c, 0, vm.memory, false, [&](const Ept::Leaf& l) {
    for (std::uint64_t g = l.gpa; g < l.gpa + l.size; g += kPage) pages.emplace_back(g / kPage, l.hpa + (g - l.gpa));
  });
  unlock_mmu(c, vm);
  m_mig_probe(vm.id, pages);
}

// --- Destination -------------------------------------------------------------

void Hypervisor::migrate_in(unsigned id, std::uint64_t mac) {
  Vm& vm = *m_vms.at(id);
  if (!m_host_nic) throw std::invalid_argument("VM " + vm.name + ": an incoming migration needs the platform's NIC");
  vm.mig_in = std::make_unique<MigrationIn>();
  vm.mig_in->hv = this;
  vm.mig_in->vm = &vm;
  vm.mig_in->stats = std::make_unique<MigrationIn::Stats>(vm.group);
  for (auto& v : vm.vcpus) v->mig_record = alloc_host_frame();
  m_host_nic->attach(mac, vm.mig_in.get());
}

void Hypervisor::mig_receive(Core& c, Vm& vm, std::uint64_t buf, unsigned len) {
  MigrationIn& m = *vm.mig_in;
  const std::uint64_t t0 = c.now();
  charge(c, m_p.live_migration.receive_frame, kCodeMigrateDst);
  if (!mig_tp_receive(c, vm, buf, len)) {  // not the next in the stream (mig_transport.cc)
    m.stats->receive_cycles += c.now() - t0;
    return;
  }
  ++m.frames;
  ++m.stats->frames;
  m.stats->bytes += len;
  if (m.unacked >= m_p.live_migration.ack_every) mig_tp_send_ack(c, vm, false);
  if (m.done) {
    m.stats->receive_cycles += c.now() - t0;
    return;
  }
  const auto type = static_cast<std::uint32_t>(c.load(buf + kOffType, 4));
  const auto size = static_cast<std::uint32_t>(std::min<std::uint64_t>(c.load(buf + kOffLen, 4), len - kHeader));
  const std::uint64_t addr = c.load(buf + kOffAddr);
  if ((type >= kPostcopyFrames || m.post) && mig_postcopy_frame(c, vm, type, addr, buf, size)) {  // postcopy.cc
    m.stats->receive_cycles += c.now() - t0;
    return;
  }
  switch (type) {
    case kStart: m.start_tsc = addr; break;
    case kPageData: {
      const std::uint64_t page = addr & ~(kPage - 1);
      if (page >= vm.memory) break;
      if (page != m.page) {
        lock_mmu(c, vm);
        m.hpa = back_guest_page_locked(c, vm, page);
        unlock_mmu(c, vm);
        m.page = page;
        if (!m.hpa)
          throw cpu::SimulationError(fmt::format("hypervisor: host memory exhausted by the incoming VM {} ({})",
                                                 vm.name, host_memory_note()));
      }
      c.rep_movs(m.hpa + (addr - page), buf + kHeader, std::min<std::uint64_t>(size, kPage - (addr - page)));
      if ((addr - page) + size >= kPage) ++m.stats->pages;
      break;
    }
    case kState:
      if (addr < vm.vcpus.size()) c.rep_movs(vm.vcpus[addr]->mig_record, buf + kHeader, std::min(size, kRecordBytes));
      break;
    case kVfState: vf_mig_receive(c, vm, buf + kHeader, size); break;
    case kDone: {
      const std::uint64_t pause = c.load(buf + kHeader);
      const std::uint64_t sent = c.load(buf + kHeader + 8);
      if (sent > m.frames) m.stats->lost_frames += sent - m.frames;
      mig_resume(c, vm, pause);
      break;
    }
    default: break;
  }
  m.stats->receive_cycles += c.now() - t0;
}

void Hypervisor::mig_resume(Core& c, Vm& vm, std::uint64_t pause_tsc) {
  MigrationIn& m = *vm.mig_in;
  m.done = true;
  PerCore& here = *m_percore[c.id()];
  std::vector<bool> kick(m_cores.size(), false);
  for (auto& vp : vm.vcpus) {
    Vcpu& v = *vp;
    charge(c, m_p.live_migration.vcpu_state, kCodeMigrateDst);
    const std::uint64_t r = v.mig_record;
    for (unsigned i = 0; i < 16; ++i) v.regs[i] = c.load(r + 8 * (kSlotGprs + i));
    for (unsigned i = 0; i < kSavedGprs; ++i) c.store(v.save_area + 8 * i, v.regs[i]);
    v.cr2 = c.load(r + 8 * kSlotCr2);
    const std::uint64_t flags = c.load(r + 8 * kSlotFlags);
    v.apic.vtimer_deadline = c.load(r + 8 * kSlotVtimer);
    v.apic.vlvt_timer = static_cast<std::uint32_t>(c.load(r + 8 * kSlotVlvt));
    for (unsigned w = 0; w < 4; ++w) {
      const std::uint64_t bits = c.load(r + 8 * (kSlotVirr + w));
      for (unsigned b = 0; b < 64; ++b) v.apic.virr.set(w * 64 + b, (bits >> b) & 1);
    }
    const std::uint64_t steal = c.load(r + 8 * kSlotSteal);
    if (steal) wrmsr_steal_time(here, v, steal);
    // Never launched on the source: it boots here as it would have there.
    if (!(flags & kFlagLaunched)) v.mig_record = 0;
    const bool halted = flags & kFlagHalted;
    v.state = halted ? Vcpu::State::Blocked : Vcpu::State::Runnable;
    v.time.off = halted ? Vcpu::Off::Halted : Vcpu::Off::Runnable;
    v.time.since = v.time.trace_since = m_cores[v.core]->now();
    // A running vCPU joins its core's run queue (as wake() puts a blocked
    // one back): a core that picked while the VM was incoming dropped it.
    PerCore& target = *m_percore[v.core];
    if (!halted) target.sched->wake(v, true, target.sched->accounts_runtime() ? c.rdtsc() : 0);
    kick[v.core] = true;
  }
  // The page check (the simulator's probe) reads the EPT on this core; its
  // time is the instrument's, not part of the downtime (measured on the
  // core's clock, which is the host's TSC, without an instruction).
  std::uint64_t probe_ticks = 0;
  if (m_mig_probe && !m.post) {  // post-copy: its pages are checked as they arrive (postcopy.cc)
    const std::uint64_t probe_start = c.now();
    std::vector<std::pair<std::uint64_t, std::uint64_t>> pages;
    lock_mmu(c, vm);
    vm.ept->for_each_leaf(c, 0, vm.memory, false, [&](const Ept::Leaf& l) {
      for (std::uint64_t g = l.gpa; g < l.gpa + l.size; g += kPage) pages.emplace_back(g / kPage, l.hpa + (g - l.gpa));
    });
    unlock_mmu(c, vm);
    m_mig_probe(vm.id, pages);
    probe_ticks = c.now() - probe_start;
  }
  if (vm.vf_mig) vf_mig_resume(c, vm);  // its VF, before the vCPUs run (vf_migration.cc)
  if (m.announce) mig_announce(c, vm);   // the first self-announce frame at once (announce.cc)
  // The downtime ends here, as the vCPUs are released: after the VF's state
  // is restored and the first announcement sent, both with the VM stopped.
  const std::uint64_t now = c.rdtsc();
  auto ns = [&](std::uint64_t ticks) {
    return static_cast<std::uint64_t>(static_cast<unsigned __int128>(ticks) * 1000000000ull / m_tsc_hz);
  };
  const std::uint64_t end = now - probe_ticks;
  m.stats->downtime_ns += ns(end > pause_tsc ? end - pause_tsc : 0);
  m.stats->total_ns += ns(end > m.start_tsc ? end - m.start_tsc : 0);
  m.stats->resumed += 1;
  for (unsigned k = 0; k < m_cores.size(); ++k) {
    if (!kick[k]) continue;
    if (m_cores[k] == &c) program_timer(here);
    else c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{k} << 32) | kRescheduleVector);
  }
}

void Hypervisor::mig_send_records(Core& c, Vm& vm) {
  MigrationOut& m = *vm.mig_out;
  for (auto& v : vm.vcpus) {
    charge(c, m_p.live_migration.vcpu_state, kCodeMigrateSrc);
    mig_send(c, vm, kState, v->index, v->mig_record, kRecordBytes);
    ++m.stats->vcpus;
  }
}

void Hypervisor::mig_load_vmcs(Core& c, Vcpu& v) {
  charge(c, m_p.live_migration.vcpu_state, kCodeMigrateDst);
  for (unsigned i = 0; i < std::size(kFields); ++i) vmw(c, kFields[i], c.load(v.mig_record + 8 * (kSlotFields + i)));
}

// --- Starting on a trigger (docs/migration.md, "Triggers") -------------------

std::uint8_t Hypervisor::command(std::uint64_t ps, unsigned core, std::function<void(Core&)> fn) {
  if (core >= m_cores.size())
    throw std::invalid_argument(fmt::format("hypervisor: a command for core {}, but the platform has {} cores", core,
                                            m_cores.size()));
  m_jobs.push_back({std::max<std::uint64_t>(1, ps_to_tsc(ps)), core, std::move(fn)});
  return kRescheduleVector;  // host_interrupt: program_timer takes the job into account
}

std::pair<unsigned, std::uint8_t> Hypervisor::migrate_start(unsigned id, std::uint64_t ps) {
  Vm& vm = *m_vms.at(id);
  if (!vm.mig_out || vm.mig_out->triggered)
    throw std::logic_error("hypervisor: VM " + vm.name + " has no migration waiting for its start");
  vm.mig_out->triggered = true;
  const unsigned core = vm.mig_out->spec.core;
  Vm* p = &vm;
  return {core, command(ps, core, [this, p](Core& c) { mig_step(c, *p); })};
}

}  // namespace vmx::hv
