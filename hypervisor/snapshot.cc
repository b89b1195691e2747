// Snapshots of a running VM (docs/memory.md, "Snapshots"), built on dirty
// tracking's EPT write protection (dirty_log.cc):
//   - taking one write-protects the VM's EPT (one INVEPT everywhere) and
//     notes the pages mapped; from then on the first write to each page
//     exits, and the handler copies the page into the snapshot store before
//     it gives the write permission back (copy-before-write);
//   - a background copier, run every hypervisor.snapshot.copier_interval on
//     hypervisor.snapshot.copier_core, saves copier_batch pages not written
//     yet and gives their permission back; when every page is saved the
//     write protection ends;
//   - restoring write-protects the VM again, copies each saved page back,
//     unmaps the pages backed only after the snapshot (their frames return
//     to the allocator) and gives the permissions back.
// The store's frames come from the frame allocator's guest zone; every copy
// is a REP MOVSB of the core doing it.
#include "hypervisor/dirty_state.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "mmu/paging.h"

namespace vmx::hv {

using namespace detail;
namespace ept = mmu::ept;

bool Hypervisor::snapshot_save(Core& c, Vm& vm, std::uint64_t gfn, std::uint64_t hpa) {
  Snapshot& s = *vm.snapshot;
  if (s.store.count(gfn)) return false;
  const std::uint64_t frame = m_frames.alloc(m_guest_zone, kPage);
  if (!frame)
    throw cpu::SimulationError(fmt::format("hypervisor: host memory exhausted by VM {}'s snapshot store ({})",
                                           vm.name, host_memory_note()));
  charge(c, m_p.snapshot.cow_fault, kCodeSnapshot);
  c.rep_movs(frame, hpa, kPage);
  s.store.emplace(gfn, frame);
  s.stats->bytes_copied += kPage;
  return true;
}

void Hypervisor::snapshot_take(Core& c, unsigned id) {
  Vm& vm = *m_vms.at(id);
  if (vm.ended()) return;
  if (vm.snapshot && !vm.snapshot->restored)
    throw std::logic_error("VM " + vm.name + ": it has a snapshot already");
  if (vm.dirty && vm.dirty->on)
    throw std::logic_error("VM " + vm.name + ": a snapshot while dirty logging is on is not modelled");
  vm.snapshot = std::make_unique<Snapshot>();
  Snapshot& s = *vm.snapshot;
  s.stats = std::make_unique<Snapshot::Stats>(vm.group);
  s.taken_at = c.now();
  lock_mmu(c, vm);
  vm.ept->for_each_leaf(c, 0, vm.memory, false, [&](const Ept::Leaf& l) {
    for (std::uint64_t g = l.gpa; g < l.gpa + l.size; g += kPage) s.present.push_back(g / kPage);
  });
  unlock_mmu(c, vm);
  s.stats->pages += s.present.size();
  dirty_log_start(c, id, DirtyMode::WriteProtect);
  const auto copier = static_cast<unsigned>(m_p.snapshot.copier_core);
  at(m_cores[copier]->now_ps() + m_p.snapshot.copier_interval, copier,
     [this, &vm](Core& cc) { snapshot_copier(cc, vm); });
}

void Hypervisor::snapshot_copier(Core& c, Vm& vm) {
  Snapshot& s = *vm.snapshot;
  if (s.complete || s.restored || vm.ended()) return;
  const std::uint64_t t0 = c.now();
  ++s.stats->copier_runs;
  lock_mmu(c, vm);
  for (std::uint64_t n = 0; n < m_p.snapshot.copier_batch && s.next < s.present.size(); ++s.next) {
    const std::uint64_t gpa = s.present[s.next] * kPage;
    if (s.store.count(s.present[s.next])) continue;  // saved by a write already
    charge(c, m_p.snapshot.copy_page, kCodeSnapshot);
    auto leaf = vm.ept->lookup(c, gpa);
    if (!leaf) continue;
    if (snapshot_save(c, vm, s.present[s.next], leaf->hpa + (gpa - leaf->gpa))) ++s.stats->copier_pages;
    ++n;
    // Saved: it needs no protection any more (a large page keeps it until
    // all of it is saved, or until a write splits it).
    if (leaf->level == 1) vm.ept->protect(c, gpa, ept::kRead | ept::kWrite | ept::kExecute);
  }
  unlock_mmu(c, vm);
  s.complete = s.next >= s.present.size();
  s.stats->copier_cycles += c.now() - t0;
  if (s.complete) {
    s.stats->complete_cycles += c.now() - s.taken_at;
    dirty_log_stop(c, vm.id);
    return;
  }
  at(c.now_ps() + m_p.snapshot.copier_interval, static_cast<unsigned>(m_p.snapshot.copier_core),
     [this, &vm](Core& cc) { snapshot_copier(cc, vm); });
}

void Hypervisor::snapshot_restore(Core& c, unsigned id) {
  Vm& vm = *m_vms.at(id);
  if (vm.ended()) return;
  if (!vm.snapshot || vm.snapshot->restored) throw std::logic_error("VM " + vm.name + ": no snapshot to restore");
  Snapshot& s = *vm.snapshot;
  const std::uint64_t t0 = c.now();
  if (vm.dirty && vm.dirty->on) dirty_log_stop(c, id);
  lock_mmu(c, vm);
  // No vCPU writes while the pages are put back: every leaf read-only (one
  // INVEPT everywhere, vCPUs in guest mode exit); a write meanwhile waits
  // for the MMU lock in the write-protection handler.
  std::vector<Ept::Leaf> leaves;
  vm.ept->for_each_leaf(c, 0, vm.memory, false, [&](const Ept::Leaf& l) { leaves.push_back(l); });
  vm.ept->clear_bits(c, leaves, ept::kWrite);
  std::vector<std::uint64_t> drop;
  std::size_t p = 0;  // s.present is ascending, as the leaves
  for (const Ept::Leaf& l : leaves) {
    for (std::uint64_t g = l.gpa; g < l.gpa + l.size; g += kPage) {
      const std::uint64_t gfn = g / kPage;
      while (p < s.present.size() && s.present[p] < gfn) ++p;
      const bool was_present = p < s.present.size() && s.present[p] == gfn;
      if (auto it = s.store.find(gfn); it != s.store.end()) {
        charge(c, m_p.snapshot.restore_page, kCodeSnapshot);
        c.rep_movs(l.hpa + (g - l.gpa), it->second, kPage);
        ++s.stats->restored_pages;
      } else if (!was_present && l.size == kPage) {
        drop.push_back(g);  // backed after the snapshot: unbacked again
      }
      // Present at the snapshot and never saved: never written since.
    }
  }
  for (const Ept::Leaf& l : leaves) {
    if (std::binary_search(drop.begin(), drop.end(), l.gpa)) continue;  // drop is ascending
    vm.ept->protect(c, l.gpa, ept::kRead | ept::kWrite | ept::kExecute);
  }
  for (std::uint64_t g : drop) {
    if (auto l = vm.ept->unmap(c, g)) {
      charge(c, m_p.costs.frame_free, kCodeSnapshot);
      if (m_frames.allocated(l->hpa)) m_frames.put(l->hpa);
      vm.backed -= l->size;
      ++s.stats->dropped_pages;
    }
  }
  unlock_mmu(c, vm);
  // The store's frames go back to the allocator.
  for (auto& [gfn, frame] : s.store) {
    charge(c, m_p.costs.frame_free, kCodeSnapshot);
    m_frames.put(frame);
  }
  s.store.clear();
  s.restored = true;
  s.stats->restore_cycles += c.now() - t0;
}

}  // namespace vmx::hv
