// Guest swap (docs/memory.md, "Guest swap"): when a page fault (or the
// balloon) finds no free frame, reclaim picks resident anonymous pages by
// a clock over the order they were mapped, giving a page whose accessed
// bit is set a second chance (Linux's LRU aging, reduced to one list),
// unmaps them (a swap entry in the PTE), writes them to the virtio-blk disk
// and frees their frames. A fault on a swap entry reads the page back (a
// major fault). The thread waiting for the disk blocks; others run.
#include <algorithm>

#include <fmt/format.h>

#include "guest/memory_state.h"
#include "mmu/paging.h"

namespace vmx::guest {

using cpu::Core;
namespace pte = mmu::pte;
namespace crb = mmu::crbits;

namespace {
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kUserPage = pte::kPresent | pte::kWritable | pte::kUser | pte::kNoExecute;
constexpr std::uint64_t kKernelPage = pte::kPresent | pte::kWritable | pte::kGlobal | pte::kNoExecute;
constexpr std::uint64_t kCodeSwap = 0x7000;      // offset of the swap code in the kernel text
constexpr std::uint64_t kBlkLock = 0x7C80;       // image offset of the disk driver's lock (a line of its own)
constexpr std::uint64_t kPageTableLock = 0x7C00;  // as guest/kernel.h
}  // namespace

void Kernel::swap_probe(Core& c) {
  auto s = std::make_unique<SwapState>();
  const std::uint64_t window = net_map_io(c, abi::virtio_blk::kWindow, kPage);
  if (!s->blk.probe(c, window, kDirectMap, [this](Core& cc) { return alloc_frame(cc); })) {
    m_panic = "virtio-blk probe failed: no swap";
    return;
  }
  for (std::uint64_t i = s->blk.blocks(); i-- > 0;) s->free_slots.push_back(i);
  m_swap = std::move(s);
}

void Kernel::blk_lock(Core& c) {
  const std::uint64_t lock = kDirectMap + kImageBase + kBlkLock;
  while (c.xchg(lock, 1) != 0)
    while (c.load(lock) != 0) c.pause();
}

void Kernel::blk_unlock(Core& c) { c.store(kDirectMap + kImageBase + kBlkLock, 0); }

std::uint64_t Kernel::take_frame(Core& c) {
  std::uint64_t f;
  if (!m_free_frames[0].empty()) {
    f = m_free_frames[0].back();  // already in the direct map
    m_free_frames[0].pop_back();
  } else {
    if (m_frame_next + kPage > m_large_low) return 0;
    f = m_frame_next;
    m_frame_next += kPage;
    m_pt.map(c, m_kernel_pml4, kDirectMap + f, f, kKernelPage);
  }
  count_free_frames();
  return f;
}

void Kernel::lru_add(Process& p, std::uint64_t va) { m_swap->lru.push_back({&p, va}); }

void Kernel::swap_free_entry(std::uint64_t e) {
  const std::uint64_t slot = swp::slot_of(e);
  auto it = m_swap->cache.find(slot);
  if (it != m_swap->cache.end()) {
    m_free_frames[0].push_back(it->second);
    m_swap->cache.erase(it);
  }
  m_swap->free_slots.push_back(slot);
}

void Kernel::blk_wait(Core& c, Thread* t, const std::vector<int>& ids) {
  // Interrupts are off. The disk interrupts vCPU 0, whose handler wakes the
  // waiters; a thread there blocks with interrupts off until it is switched
  // out, so no wake-up is lost. A thread on another vCPU polls instead (as
  // the network's waits, guest/net.cc).
  const std::uint64_t start = c.rdtsc();
  for (;;) {
    Core& now = Core::current();
    blk_lock(now);
    m_swap->blk.reap(now);
    const bool all = std::all_of(ids.begin(), ids.end(), [this](int id) { return m_swap->blk.done(id); });
    blk_unlock(now);
    if (all) break;
    if (t && t->m_vcpu == 0) {
      m_swap->waiters.push_back(t);
      t->m_in_fault = true;
      schedule(now, *m_vcpus[0], false);  // returns once woken and picked again
      t->m_in_fault = false;
    } else {
      now.sti();
      now.pause();
      Core::current().cli();
    }
  }
  m_mem_stats->io_wait_cycles += Core::current().rdtsc() - start;
}

void Kernel::blk_interrupt(Core& c) {
  blk_lock(c);
  m_swap->blk.reap(c);
  blk_unlock(c);
  std::vector<Thread*> woken;
  woken.swap(m_swap->waiters);
  Vcpu& v = this_vcpu();
  for (Thread* t : woken) wake_thread(c, v, *t);
}

bool Kernel::reclaim(Core& c) {
  SwapState& s = *m_swap;
  if (s.free_slots.empty() || s.lru.empty()) return false;
  const bool was_enabled = c.interrupts_enabled();
  c.cli();
  ++m_mem_stats->reclaim_runs;
  const std::uint64_t lock = kDirectMap + kImageBase + kPageTableLock;
  while (c.xchg(lock, 1) != 0)
    while (c.load(lock) != 0) c.pause();
  struct Victim {
    std::uint64_t slot, frame;
  };
  std::vector<Victim> victims;
  std::vector<Process*> procs;
  // The clock: each page is looked at at most twice (once more after its
  // accessed bit was cleared).
  std::size_t budget = 2 * s.lru.size();
  while (victims.size() < m_p.memory.swap_cluster && !s.lru.empty() && budget-- > 0 && !s.free_slots.empty()) {
    const SwapState::Resident r = s.lru.front();
    s.lru.pop_front();
    ++m_mem_stats->reclaim_scanned;
    charge(c, m_p.memory.reclaim_page, kCodeSwap);
    const std::uint64_t entry = m_pt.leaf_entry(c, r.p->pml4, r.va);
    if (!entry) continue;
    const std::uint64_t e = c.load(entry);
    if (!(e & pte::kPresent)) continue;  // unmapped or swapped meanwhile: forget it
    const std::uint64_t frame = e & pte::kAddrMask;
    if (m_frame_refs.count(frame)) continue;  // shared by fork: not reclaimed (not modelled)
    if (e & pte::kAccessed) {
      // Second chance. Clearing the accessed bit needs no flush (x86 Linux's
      // ptep_clear_flush_young does not flush either): a cached translation
      // only delays the bit being set again.
      c.store(entry, e & ~pte::kAccessed);
      s.lru.push_back(r);
      continue;
    }
    const std::uint64_t slot = s.free_slots.back();
    s.free_slots.pop_back();
    c.store(entry, swp::entry(slot));
    s.cache[slot] = frame;
    victims.push_back({slot, frame});
    if (std::find(procs.begin(), procs.end(), r.p) == procs.end()) procs.push_back(r.p);
    // This vCPU: drop the translation if the page is in the running
    // address space; another process's PCID is flushed when it next runs.
    if ((c.read_cr(3) & crb::kCr3PcidMask) == (m_p.pcid ? (r.p->pcid & crb::kCr3PcidMask) : 0) &&
        (c.read_cr(3) & pte::kAddrMask) == r.p->pml4)
      c.invlpg(r.va);
  }
  for (Process* p : procs)
    if (m_p.pcid) p->fresh_pcid = true;
  c.store(lock, 0);
  if (victims.empty()) {
    if (was_enabled) c.sti();
    return false;
  }
  // Other vCPUs may cache those translations: shoot them down.
  if (m_vcpus.size() > 1)
    for (auto& v : m_vcpus)
      if (v.get() != &this_vcpu()) c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{v->index} << 32) | kFlushVector);
  auto* t = static_cast<Thread*>(sim::Fiber::running()->user());
  // Write them out, as many at a time as the driver has request slots.
  std::size_t next = 0;
  while (next < victims.size()) {
    std::vector<int> ids;
    Core& now = Core::current();
    blk_lock(now);
    while (next < victims.size()) {
      const int id = m_swap->blk.submit(now, victims[next].slot, victims[next].frame, true);
      if (id < 0) break;
      ids.push_back(id);
      ++next;
    }
    if (!ids.empty()) m_swap->blk.kick(now);
    blk_unlock(now);
    if (ids.empty()) {  // every slot busy with others' requests: let them finish
      now.sti();
      now.pause();
      Core::current().cli();
      continue;
    }
    blk_wait(now, t, ids);
    for (int id : ids) m_swap->blk.release(id);
  }
  Core& now = Core::current();
  while (now.xchg(lock, 1) != 0)
    while (now.load(lock) != 0) now.pause();
  for (const Victim& v : victims) {
    auto it = s.cache.find(v.slot);
    if (it == s.cache.end() || it->second != v.frame) continue;  // faulted back in meanwhile
    s.cache.erase(it);
    m_free_frames[0].push_back(v.frame);
    ++m_mem_stats->swap_out;
  }
  count_free_frames();
  now.store(lock, 0);
  publish_mem_stats();
  if (was_enabled) now.sti();
  return true;
}

void Kernel::swap_in(Core& c, Thread& t, Process& p, std::uint64_t addr, std::uint64_t entry, std::uint64_t e,
                     bool exec) {
  SwapState& s = *m_swap;
  const std::uint64_t lock = kDirectMap + kImageBase + kPageTableLock;
  charge(c, m_p.memory.swap_fault, kCodeSwap);
  const std::uint64_t slot = swp::slot_of(e);
  const std::uint64_t flags = exec ? kUserPage & ~pte::kNoExecute : kUserPage;
  auto hit = s.cache.find(slot);
  if (hit != s.cache.end()) {
    // Still being written out: map the frame again (Linux's swap cache).
    const std::uint64_t frame = hit->second;
    s.cache.erase(hit);
    c.store(entry, frame | flags);
    s.free_slots.push_back(slot);
    lru_add(p, addr);
    ++m_mem_stats->swap_cache_hits;
    ++m_mem_stats->minor_faults;
    c.store(lock, 0);
    return;
  }
  const std::uint64_t frame = take_frame(c);
  c.store(lock, 0);
  if (!frame) {
    // Free memory first; the instruction faults again and retries.
    if (!out_of_memory(c)) kill_current(c, "out of memory (swap-in)");
    return;
  }
  const bool was_enabled = c.interrupts_enabled();
  c.cli();
  int id = -1;
  for (;;) {
    Core& now = Core::current();
    blk_lock(now);
    id = s.blk.submit(now, slot, frame, false);
    if (id >= 0) s.blk.kick(now);
    blk_unlock(now);
    if (id >= 0) break;
    now.sti();
    now.pause();
    Core::current().cli();
  }
  blk_wait(Core::current(), &t, {id});
  Core& now = Core::current();
  const bool ok = s.blk.status(now, id) == abi::virtio_blk::kStatusOk;
  s.blk.release(id);
  while (now.xchg(lock, 1) != 0)
    while (now.load(lock) != 0) now.pause();
  if (ok && now.load(entry) == e) {
    now.store(entry, frame | flags);  // not present to present: no flush
    s.free_slots.push_back(slot);
    lru_add(p, addr);
    ++m_mem_stats->major_faults;
    ++m_mem_stats->swap_in;
  } else {
    m_free_frames[0].push_back(frame);  // another thread brought it in, or the read failed
    count_free_frames();
  }
  now.store(lock, 0);
  if (was_enabled) now.sti();
  if (!ok) kill_current(now, "swap-in read error");
}

bool Kernel::out_of_memory(Core& c) {
  if (m_swap && reclaim(c)) return true;
  if (m_balloon && m_balloon->deflate_on_oom && balloon_oom(Core::current())) return true;
  return false;
}

void Kernel::publish_mem_stats() {
  if (!m_mem_stats) return;
  if (m_swap) m_mem_stats->swap_used.set(static_cast<double>(m_swap->blk.blocks() - m_swap->free_slots.size()));
  if (m_balloon) m_mem_stats->balloon_pages.set(static_cast<double>(m_balloon->pages.size()));
}

}  // namespace vmx::guest
