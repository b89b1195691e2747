// Auto-converge and post-copy live migration (docs/migration.md), the
// options of the pre-copy migration of hypervisor/migration.cc.
//
// Auto-converge (QEMU's auto-converge capability, migration/ram.c and
// system/cpu-throttle.c): at the end of each pre-copy round the source
// compares the bytes dirtied during the round with the bytes it sent; every
// second round in which they exceed throttle_trigger percent, the throttle
// starts at throttle_initial percent or grows by throttle_increment, up to
// throttle_max. While it is on, a timer of the migration thread fires every
// throttle_timeslice / (1 - throttle) and puts every vCPU to sleep for
// throttle_timeslice x throttle / (1 - throttle): the vCPU is held off its
// core (an IPI makes it exit if it is in guest mode) and released by a job
// on its core at the end of the sleep, as QEMU's throttle makes the vCPU
// thread sleep. The held time shows as the vCPU's stolen time.
//
// Post-copy (QEMU's postcopy-ram): after postcopy_after pre-copy rounds the vCPUs are parked as for stop-and-copy; the source tells the
// destination which pre-copied pages were dirtied since (DISCARD), sends the
// pages holding records the destination hypervisor writes itself (steal
// time) and the vCPU state, then RUN: the VM resumes at the destination with
// most of its memory still at the source. There, an EPT violation on a page
// not received yet is a remote fault: the vCPU is held, a request frame goes
// back to the source's migration port, and when the page arrives it is
// placed whole (received into a staging frame, copied into a fresh frame,
// then mapped: as UFFDIO_COPY) and the waiting vCPUs are woken. The source
// serves requests ahead of a background push of every remaining page,
// paced to postcopy_bandwidth; DONE follows the last page, and once the
// transport has every frame acknowledged (mig_transport.cc) the source
// frees the VM. A request (outside the stream) unanswered after
// request_timeout is sent again.
// Every step is charged as the operations of the core doing it.
#include "hypervisor/migration_state.h"

#include <algorithm>
#include <iterator>

#include <fmt/format.h>

#include "abi/steal_time.h"
#include "hypervisor/mig_stream.h"

namespace vmx::hv {

using namespace detail;

namespace {
using namespace stream;  // the frame format (mig_stream.h)
constexpr std::uint64_t kCodePostcopyDst = kCodePostcopy + 0x800;  // the destination's half of the region

std::uint64_t mac_at(Core& c, std::uint64_t a) { return c.load(a, 4) | (c.load(a + 4, 2) << 32); }

/// Destination: a page request to the source, built in its 64-byte slot of
/// the request frame `req` (a vCPU's) and sent through the PF; `spin`
/// charges the wait for room in the TX ring. Outside the stream: a lost
/// request is sent again after request_timeout (mig_request_retry).
template <class Spin>
void return_frame(Core& c, HostNic& nic, std::uint64_t req, unsigned slot, std::uint64_t to, std::uint64_t from,
                  std::uint32_t type, std::uint64_t addr, Spin spin) {
  const std::uint64_t h = req + 64 * slot;
  put_header(c, h, to, from, type, 0, addr, 0);
  while (nic.tx_free(c) < 1) spin();
  HostNic::Segment seg{h, kHeader};
  if (!nic.transmit(c, &seg, 1))
    throw cpu::SimulationError("hypervisor: post-copy frame refused by the PF driver after its ring had room");
}
}  // namespace

// --- Options at the start, at round ends, at the switchover ----------------------

bool Hypervisor::mig_options_start(Core& c, Vm& vm) {
  MigrationOut& m = *vm.mig_out;
  if (m.spec.auto_converge) {
    m.throttle = std::make_unique<Throttle>();
    m.throttle->stats = std::make_unique<Throttle::Stats>(m.stats.get());
  }
  if (!m.spec.postcopy) return false;
  m.post = std::make_unique<PostcopyOut>();
  PostcopyOut& p = *m.post;
  p.stats = std::make_unique<PostcopyOut::Stats>(m.stats.get());
  p.scratch = alloc_host_frame();
  if (m.spec.postcopy_after) return false;
  // Post-copy at once: no pre-copy round, the VM is paused now.
  p.on = true;
  m.phase = MigrationOut::Phase::Pausing;
  m.pause_tsc = c.rdtsc();
  vm.mig_pausing = true;
  return true;
}

bool Hypervisor::mig_round_end(Core& c, Vm& vm, std::uint64_t dirtied) {
  MigrationOut& m = *vm.mig_out;
  if (m.throttle) {
    Throttle& t = *m.throttle;
    t.round_pct.push_back(std::make_unique<stats::Gauge>(t.stats.get(), fmt::format("round{}_pct", m.round),
                                                         "percent",
                                                         fmt::format("the throttle during pre-copy round {}", m.round)));
    t.round_pct.back()->set(t.pct);
    // QEMU's migration_trigger_throttle: the round dirtied more than
    // throttle_trigger percent of what it sent, for the second time since
    // the last step.
    const unsigned __int128 dirty_bytes = static_cast<unsigned __int128>(dirtied) * kPage;
    const unsigned __int128 threshold = static_cast<unsigned __int128>(m.round_bytes) * m.spec.throttle_trigger / 100;
    if (dirty_bytes > threshold && ++t.high >= 2) {
      t.high = 0;
      const unsigned pct = t.pct ? std::min(t.pct + m.spec.throttle_increment, m.spec.throttle_max)
                                 : m.spec.throttle_initial;
      if (pct != t.pct) ++t.stats->steps;
      t.pct = pct;
      t.stats->max_pct.set(std::max<double>(t.stats->max_pct.value(), pct));
      if (!t.ticking) {
        t.ticking = true;
        mig_throttle_tick(c, vm);
      }
    }
  }
  return m.post && m.round + 1 >= m.spec.postcopy_after;
}

void Hypervisor::mig_switchover(Core& c, Vm& vm, bool converged) {
  MigrationOut& m = *vm.mig_out;
  if (m.throttle) {
    // The vCPUs are paused now: throttling ends, and a sleeping vCPU is
    // released so that it can be parked at once.
    m.throttle->stats->final_pct.set(m.throttle->pct);
    m.throttle->pct = 0;
    for (auto& v : vm.vcpus)
      if (v->held) {
        v->held = false;
        wake(*v);
      }
  }
  (void)c;
  // Pre-copy that converged first ends as pre-copy (as QEMU completes
  // without ever starting post-copy).
  if (m.post) m.post->on = !converged;
}

// --- Auto-converge: the throttle timer -----------------------------------------------

void Hypervisor::mig_throttle_tick(Core& c, Vm& vm) {
  MigrationOut& m = *vm.mig_out;
  Throttle& t = *m.throttle;
  if (!t.pct || m.phase != MigrationOut::Phase::Rounds || vm.ended()) {
    t.ticking = false;
    return;
  }
  const std::uint64_t slice = m_p.live_migration.throttle_timeslice;  // ps
  const std::uint64_t sleep = slice * t.pct / (100 - t.pct);
  const std::uint64_t now = c.now_ps();
  const std::uint64_t until_tsc = c.rdtsc() + static_cast<std::uint64_t>(static_cast<unsigned __int128>(sleep) *
                                                                         m_tsc_hz / cfg::kPsPerSecond);
  for (auto& vp : vm.vcpus) {
    Vcpu& v = *vp;
    if (v.state == Vcpu::State::Dead || v.mig_parked) continue;
    // QEMU's async_run_on_cpu(cpu_throttle_thread): the vCPU is kicked out
    // of guest mode and sleeps.
    charge(c, 100, kCodePostcopy);
    v.held = true;
    v.held_until = until_tsc;
    ++t.stats->sleeps;
    t.stats->sleep_ns += sleep / 1000;
    if (v.time.off == Vcpu::Off::OnCpu && m_cores[v.core] != &c)
      c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{v.core} << 32) | kRescheduleVector);
    Vcpu* pv = &v;
    at(now + sleep, v.core, [this, pv, until_tsc](Core& cc) { mig_throttle_release(cc, *pv, until_tsc); });
  }
  Vm* p = &vm;
  at(now + slice * 100 / (100 - t.pct), m.spec.core, [this, p](Core& cc) { mig_throttle_tick(cc, *p); });
}

void Hypervisor::mig_throttle_release(Core& c, Vcpu& v, std::uint64_t until) {
  if (!v.held || v.held_until != until) return;  // released at the switchover, or a later sleep
  charge(c, 100, kCodePostcopy);
  v.held = false;
  wake(v);
}

// --- Post-copy, source ---------------------------------------------------------------

void Hypervisor::mig_postcopy_switch(Core& c, Vm& vm) {
  MigrationOut& m = *vm.mig_out;
  PostcopyOut& p = *m.post;
  const std::uint64_t t0 = c.now();
  // Every page dirty since its last send (or never sent): the last round's
  // list and the final harvest. The source's memory is final now.
  const std::vector<std::uint64_t> more = dirty_log_collect(c, vm.id);
  std::set_union(m.list.begin(), m.list.end(), more.begin(), more.end(), std::back_inserter(p.left));
  dirty_log_stop(c, vm.id);
  mig_probe(c, vm);
  m.stats->switchover_pages += p.left.size();
  m.phase = MigrationOut::Phase::Final;
  p.sent.assign(vm.memory / kPage, false);
  p.stage = m.stats->rounds.value() > 0 ? 0 : 1;  // no pre-copy round: nothing to discard
  p.idx = 0;
  m.stats->thread_cycles += c.now() - t0;
  mig_postcopy_step(c, vm, false);
}

bool Hypervisor::mig_postcopy_switch_frames(Core& c, Vm& vm) {
  MigrationOut& m = *vm.mig_out;
  PostcopyOut& p = *m.post;
  // DISCARD: pre-copied pages dirtied since are stale at the destination
  // (QEMU's postcopy discard of the dirty bitmap).
  const std::uint64_t per_frame = std::max<std::uint64_t>(1, m_p.live_migration.payload / 8);
  for (; p.stage == 0 && p.idx < p.left.size(); p.idx += per_frame) {
    if (!mig_tp_room(vm, false)) return false;
    const std::size_t n = std::min<std::size_t>(per_frame, p.left.size() - p.idx);
    for (std::size_t k = 0; k < n; ++k) c.store(p.scratch + 8 * k, p.left[p.idx + k]);
    mig_send(c, vm, kPcDiscard, n, p.scratch, static_cast<std::uint32_t>(8 * n));
    p.stats->discards += n;
  }
  if (p.stage == 0) p.stage = 1;
  // The pages the destination hypervisor writes through their host-physical
  // address at the resumption (the steal-time records) go with the state.
  if (p.stage == 1) {
    for (auto& v : vm.vcpus) {
      if (!(v->steal.msr & abi::steal_time::kMsrEnable)) continue;
      const std::uint64_t gfn = (v->steal.msr & abi::steal_time::kMsrAddressMask) / kPage;
      if (gfn >= p.sent.size() || p.sent[gfn]) continue;
      if (!mig_postcopy_send(c, vm, gfn, false)) return false;
      ++p.stats->early_pages;
    }
    p.stage = 2;
  }
  if (p.stage == 2) {
    if (mig_tp_room(vm, false) < vm.vcpus.size() + 1) {
      if (vm.vcpus.size() + 1 > m.tp->slots)
        throw cpu::SimulationError(fmt::format("hypervisor: {} vCPU records exceed the migration send buffer ({} "
                                               "frames: raise hypervisor.live_migration.window)",
                                               vm.vcpus.size(), m.tp->slots));
      return false;
    }
    mig_send_records(c, vm);
    mig_send(c, vm, kPcRun, m.pause_tsc, 0, 0);
    p.stage = 3;
  }
  p.switched = true;
  p.switch_tsc = c.rdtsc();
  p.push = std::move(p.left);
  p.next = 0;
  return true;
}

bool Hypervisor::mig_postcopy_send(Core& c, Vm& vm, std::uint64_t gfn, bool bulk) {
  MigrationOut& m = *vm.mig_out;
  PostcopyOut& p = *m.post;
  if (mig_tp_room(vm, bulk) < m.frames_per_page) return false;
  charge(c, m_p.live_migration.send_page, kCodePostcopy);
  const std::uint64_t gpa = gfn * kPage;
  if (auto leaf = vm.ept->lookup(c, gpa)) {
    const std::uint64_t hpa = leaf->hpa + (gpa - leaf->gpa);
    const auto chunk = static_cast<std::uint32_t>(m_p.live_migration.payload);
    for (std::uint32_t off = 0; off < kPage; off += chunk)
      mig_send(c, vm, kPageData, gpa + off, hpa + off, std::min<std::uint32_t>(chunk, kPage - off));
    ++m.stats->pages_sent;
  } else {
    mig_send(c, vm, kPcZero, gpa, 0, 0);  // never backed here: zeros there
    ++p.stats->zero_pages;
  }
  p.sent[gfn] = true;
  return true;
}

void Hypervisor::mig_postcopy_step(Core& c, Vm& vm, bool urgent_only) {
  MigrationOut& m = *vm.mig_out;
  PostcopyOut& p = *m.post;
  if (p.released || (p.finished && !urgent_only)) return;
  const LiveMigrationParams& lp = m_p.live_migration;
  const std::uint64_t t0 = c.now();
  Vm* pv = &vm;
  auto again = [&](std::uint64_t tsc) {
    m.stats->thread_cycles += c.now() - t0;
    const auto ps = static_cast<std::uint64_t>(static_cast<unsigned __int128>(tsc) * cfg::kPsPerSecond / m_tsc_hz);
    at(std::max(ps, c.now_ps() + 1), m.spec.core, [this, pv](Core& cc) { mig_postcopy_step(cc, *pv, false); });
  };
  // The send buffer is full: the main run waits for an ACK (which resumes
  // it, mig_transport.cc); a run for requests leaves them to the main run,
  // which serves them first.
  auto wait = [&] {
    m.stats->thread_cycles += c.now() - t0;
    if (!urgent_only) mig_tp_wait(c, vm);
  };
  if (!p.switched) {
    if (urgent_only) return wait();
    if (!mig_postcopy_switch_frames(c, vm)) return wait();
  }
  // Requested pages first, at once (QEMU sends them ahead of the stream).
  // A page already written into the stream is not sent again: the
  // transport delivers it.
  while (!p.urgent.empty()) {
    const std::uint64_t gfn = p.urgent.front();
    if (!p.sent[gfn]) {
      if (!mig_postcopy_send(c, vm, gfn, false)) return wait();
      ++p.stats->requested_sent;
    }
    p.urgent.pop_front();
  }
  if (urgent_only) {
    m.stats->thread_cycles += c.now() - t0;
    return;
  }
  for (std::uint64_t n = 0; p.next < p.push.size() && n < lp.batch_pages;) {
    const std::uint64_t gfn = p.push[p.next];
    if (p.sent[gfn]) {
      ++p.next;
      continue;
    }
    const std::uint64_t now = c.rdtsc();
    if (m.spec.postcopy_bandwidth && p.next_tsc > now) {
      ++m.stats->paced;
      return again(p.next_tsc);
    }
    const std::uint64_t bytes_before = m.stats->bytes.value();
    if (!mig_postcopy_send(c, vm, gfn, true)) return wait();
    ++p.stats->pushed;
    ++p.next;
    ++n;
    if (m.spec.postcopy_bandwidth) {  // QEMU's max-postcopy-bandwidth
      const std::uint64_t bytes = m.stats->bytes.value() - bytes_before;
      p.next_tsc = std::max(p.next_tsc, now) +
                   static_cast<std::uint64_t>(static_cast<unsigned __int128>(bytes) * m_tsc_hz /
                                              m.spec.postcopy_bandwidth);
    }
  }
  if (p.next < p.push.size() || !p.urgent.empty()) return again(c.rdtsc());  // yield the core between batches
  if (!mig_tp_room(vm, false)) return wait();
  m.stats->thread_cycles += c.now() - t0;
  mig_postcopy_finish(c, vm);
}

void Hypervisor::mig_postcopy_request(Core& c, Vm& vm, std::uint64_t buf, unsigned len) {
  MigrationOut& m = *vm.mig_out;
  PostcopyOut& p = *m.post;
  charge(c, m_p.live_migration.page_request, kCodePostcopy);
  if (len < kHeader || p.released || !p.on || !p.switched) return;
  const auto type = static_cast<std::uint32_t>(c.load(buf + kOffType, 4));
  if (type != kPcRequest) return;
  const std::uint64_t gfn = c.load(buf + kOffAddr) / kPage;
  if (gfn >= p.sent.size()) return;
  ++p.stats->requests;
  if (p.sent[gfn]) {  // in the stream already (the request was sent again, or crossed the page)
    ++p.stats->requests_ignored;
    return;
  }
  p.urgent.push_back(gfn);
  if (p.urgent_job) return;
  p.urgent_job = true;
  Vm* pv = &vm;
  at(c.now_ps() + 1, m.spec.core, [this, pv](Core& cc) {
    pv->mig_out->post->urgent_job = false;
    mig_postcopy_step(cc, *pv, true);
  });
}

void Hypervisor::mig_postcopy_finish(Core& c, Vm& vm) {
  MigrationOut& m = *vm.mig_out;
  PostcopyOut& p = *m.post;
  c.store(p.scratch, m.frames + 1);
  mig_send(c, vm, kPcDone, 0, p.scratch, 8);
  p.finished = true;
  p.stats->push_cycles += c.rdtsc() - p.switch_tsc;
  m.stats->total_cycles += c.rdtsc() - m.started;
  // The source keeps the VM's memory until the destination has
  // acknowledged every frame (mig_tp_finished tears it down then).
  if (m.tp->una == m.tp->end) mig_tp_finished(c, vm);
}

// --- Post-copy, destination ----------------------------------------------------------

bool Hypervisor::mig_postcopy_frame(Core& c, Vm& vm, std::uint32_t type, std::uint64_t addr, std::uint64_t buf,
                                    std::uint32_t size) {
  MigrationIn& m = *vm.mig_in;
  if (!m.post) {
    m.post = std::make_unique<PostcopyIn>();
    m.post->stats = std::make_unique<PostcopyIn::Stats>(m.stats.get());
    m.post->stage = alloc_host_frame();
  }
  PostcopyIn& p = *m.post;
  switch (type) {
    case kPcDiscard: {
      lock_mmu(c, vm);
      for (std::uint32_t k = 0; k + 8 <= size; k += 8) {
        const std::uint64_t gpa = c.load(buf + kHeader + k) * kPage;
        if (gpa >= vm.memory) continue;
        if (auto leaf = vm.ept->unmap(c, gpa)) {
          charge(c, m_p.costs.frame_free, kCodePostcopyDst);
          m_frames.put(leaf->hpa);
          vm.backed -= leaf->size;
          ++p.stats->discarded;
        }
      }
      unlock_mmu(c, vm);
      return true;
    }
    case kPageData: {
      // Received whole into the staging frame, then placed.
      const std::uint64_t page = addr & ~(kPage - 1);
      if (page >= vm.memory) return true;
      if (page != p.stage_page) {
        p.stage_page = page;
        p.stage_bytes = 0;
      }
      const std::uint64_t n = std::min<std::uint64_t>(size, kPage - (addr - page));
      c.rep_movs(p.stage + (addr - page), buf + kHeader, n);
      p.stage_bytes += n;
      if (p.stage_bytes >= kPage) {
        p.stage_page = ~0ull;
        mig_postcopy_place(c, vm, page, p.stage);
      }
      return true;
    }
    case kPcZero:
      if ((addr & ~(kPage - 1)) < vm.memory) mig_postcopy_place(c, vm, addr & ~(kPage - 1), 0);
      return true;
    case kPcRun: {
      p.own_mac = mac_at(c, buf);
      p.src_mac = mac_at(c, buf + 6);
      p.req = alloc_host_frame();
      mig_resume(c, vm, addr);
      m.done = false;  // the rest of the stream: pages, then DONE
      p.running = true;
      p.resume_tsc = c.rdtsc();
      if (m_pc_probe) {
        std::vector<std::pair<std::uint64_t, std::uint64_t>> pages;
        lock_mmu(c, vm);
        vm.ept->for_each_leaf(c, 0, vm.memory, false, [&](const Ept::Leaf& l) {
          for (std::uint64_t g = l.gpa; g < l.gpa + l.size; g += kPage)
            pages.emplace_back(g / kPage, l.hpa + (g - l.gpa));
        });
        unlock_mmu(c, vm);
        m_pc_probe(vm.id, pages, false);
      }
      return true;
    }
    case kPcDone: {
      const std::uint64_t sent = c.load(buf + kHeader);
      if (sent > m.frames) {
        // Not expected: the transport delivers every frame in order.
        m.stats->lost_frames += sent - m.frames;
        return true;
      }
      p.complete = true;
      // Requests still in flight were for pages the source sent as the
      // stream ended, or never had: those read as zeros.
      while (!p.waiting.empty()) mig_postcopy_place(c, vm, p.waiting.begin()->first * kPage, 0);
      const std::uint64_t now = c.rdtsc();
      auto ns = [&](std::uint64_t ticks) {
        return static_cast<std::uint64_t>(static_cast<unsigned __int128>(ticks) * 1000000000ull / m_tsc_hz);
      };
      p.stats->postcopy_ns += ns(now - p.resume_tsc);
      p.stats->total_ns += ns(now > m.start_tsc ? now - m.start_tsc : 0);
      m.done = true;
      if (m_pc_probe) m_pc_probe(vm.id, {}, true);
      return true;
    }
    default: return false;
  }
}

void Hypervisor::mig_postcopy_place(Core& c, Vm& vm, std::uint64_t page, std::uint64_t src) {
  PostcopyIn& p = *vm.mig_in->post;
  lock_mmu(c, vm);
  std::uint64_t hpa = ept_translate(c, vm, page);
  if (!hpa) {
    // Filled before it is mapped: no vCPU sees a partial page.
    hpa = alloc_guest_page();
    if (!hpa)
      throw cpu::SimulationError(fmt::format("hypervisor: host memory exhausted by the incoming VM {} ({})", vm.name,
                                             host_memory_note()));
    if (src) c.rep_movs(hpa, src, kPage);
    else c.rep_stos(hpa, 0, kPage);
    if (!vm.ept->map(c, page, hpa, kPage, Ept::kRwxWb))
      throw cpu::SimulationError("hypervisor: reserved_memory exhausted by EPT tables (raise hypervisor.reserved_memory)");
    vm.backed += kPage;
    ++p.stats->pages;
    if (!src) ++p.stats->zero_pages;
    if (m_pc_probe) m_pc_probe(vm.id, {{page / kPage, hpa}}, false);
  }
  std::vector<std::pair<Vcpu*, std::uint64_t>> woken;
  if (auto it = p.waiting.find(page / kPage); it != p.waiting.end()) {
    woken = std::move(it->second);
    p.waiting.erase(it);
  }
  unlock_mmu(c, vm);
  const std::uint64_t now = c.rdtsc();
  for (auto& [v, since] : woken) {
    p.stats->fault_latency_ns.sample(
        static_cast<std::uint64_t>(static_cast<unsigned __int128>(now > since ? now - since : 0) * 1000000000ull /
                                   m_tsc_hz));
    v->held = false;
    wake(*v);
  }
}

bool Hypervisor::mig_remote_fault(PerCore& pc, Vcpu& v, std::uint64_t gpa) {
  Vm& vm = *v.vm;
  MigrationIn& m = *vm.mig_in;
  if (!m.post || !m.post->running || m.post->complete) return false;
  PostcopyIn& p = *m.post;
  Core& c = *pc.core;
  const std::uint64_t page = gpa & ~(kPage - 1);
  charge(c, m_p.live_migration.remote_fault, kCodePostcopyDst);
  lock_mmu(c, vm);
  if (ept_translate(c, vm, page)) {  // placed meanwhile: the ordinary path finds it mapped
    unlock_mmu(c, vm);
    return false;
  }
  auto [it, first] = p.waiting.try_emplace(page / kPage);
  it->second.emplace_back(&v, c.rdtsc());
  v.held = true;  // off the core until the page is here
  unlock_mmu(c, vm);
  if (!first) {
    ++p.stats->fault_waits;
    return true;
  }
  ++p.stats->remote_faults;
  // Read before the request goes out: an interrupt taken while it is sent
  // may place the page and drop its waiters' entry.
  const std::uint64_t since = it->second.front().second;
  return_frame(c, *m_host_nic, p.req, 1 + v.index % 63, p.src_mac, p.own_mac, kPcRequest, page,  // REQ_PAGES
               [&] { charge(c, 100, kCodePostcopyDst); });
  Vm* pv = &vm;
  at(c.now_ps() + m_p.live_migration.request_timeout, c.id(),
     [this, pv, page, since](Core& cc) { mig_request_retry(cc, *pv, page, since); });
  return true;
}

void Hypervisor::mig_request_retry(Core& c, Vm& vm, std::uint64_t page, std::uint64_t since) {
  MigrationIn& m = *vm.mig_in;
  if (!m.post || m.post->complete) return;
  PostcopyIn& p = *m.post;
  const auto it = p.waiting.find(page / kPage);
  if (it == p.waiting.end() || it->second.empty() || it->second.front().second != since) return;  // placed
  const unsigned index = it->second.front().first->index;  // `it` may go while the retry is sent
  charge(c, m_p.live_migration.remote_fault, kCodePostcopyDst);
  ++p.stats->request_retries;
  return_frame(c, *m_host_nic, p.req, 1 + index % 63, p.src_mac, p.own_mac, kPcRequest,
               page, [&] { charge(c, 100, kCodePostcopyDst); });
  Vm* pv = &vm;
  at(c.now_ps() + m_p.live_migration.request_timeout, c.id(),
     [this, pv, page, since](Core& cc) { mig_request_retry(cc, *pv, page, since); });
}

}  // namespace vmx::hv
