// Same-page merging room (docs/memory.md, "Same-page merging"), modelled on
// Linux's KSM (mm/ksm.c):
//
// - a scanner in the hypervisor context of one core (hypervisor.ksm.core)
//   wakes every `sleep`, visits `pages_to_scan` guest pages of the scanned
//   VMs in address order, VM after VM, and sleeps again; its loads and
//   instructions are that core's, taken from the vCPU running there;
// - a page is first searched in the stable tree (merged frames, by content);
//   if an equal frame with room (max_page_sharing) is found, the page is
//   mapped to it;
// - otherwise its checksum is computed; a page whose checksum changed since
//   its last visit is left alone (it is being written); a stable one is
//   searched in the unstable tree (pages seen this full scan, rebuilt every
//   full scan) and, if an equal page is found, the two merge into a new
//   merged frame, which enters the stable tree; else it is inserted there;
// - merging write-protects the page, compares again under the VM's MMU
//   lock, then points the EPT entry at the merged frame read-only (the EPT
//   cursor's remap, with its INVEPT) and frees the duplicate frame;
// - a write to a merged page is an EPT violation (SDM Vol. 3C, 29.3.3.2:
//   the entry does not allow writes); the handler copies the page into a
//   new frame and maps it writable (copy-on-write).
#include "hypervisor/hypervisor_state.h"

#include <algorithm>
#include <optional>
#include <stdexcept>

#include <fmt/format.h>

#include "mmu/paging.h"

namespace vmx::hv {

using namespace detail;

// ---------------------------------------------------------------------------
// ContentTree

int ContentTree::search(std::uint64_t page, const Compare& cmp, const Accept& accept, int& parent, bool& right) const {
  parent = -1;
  right = false;
  int n = m_root;
  while (n >= 0) {
    const Node& node = m_nodes[static_cast<std::size_t>(n)];
    const int r = cmp(page, node.e.frame);
    if (r == 0 && (!accept || accept(node.e))) return n;
    parent = n;
    right = r >= 0;
    n = right ? node.right : node.left;
  }
  return -1;
}

int ContentTree::find(std::uint64_t page, const Compare& cmp, const Accept& accept) const {
  int parent;
  bool right;
  return search(page, cmp, accept, parent, right);
}

int ContentTree::attach(const Entry& e, int parent, bool right) {
  int n;
  if (!m_free.empty()) {
    n = m_free.back();
    m_free.pop_back();
  } else {
    n = static_cast<int>(m_nodes.size());
    m_nodes.emplace_back();
  }
  Node& node = m_nodes[static_cast<std::size_t>(n)];
  node = Node{};
  node.e = e;
  node.used = true;
  node.parent = parent;
  if (parent < 0) m_root = n;
  else (right ? m_nodes[static_cast<std::size_t>(parent)].right : m_nodes[static_cast<std::size_t>(parent)].left) = n;
  ++m_size;
  return n;
}

std::pair<int, bool> ContentTree::find_or_insert(const Entry& e, const Compare& cmp, const Accept& accept) {
  int parent;
  bool right;
  const int found = search(e.frame, cmp, accept, parent, right);
  if (found >= 0) return {found, false};
  return {attach(e, parent, right), true};
}

int ContentTree::insert(const Entry& e, const Compare& cmp) {
  return find_or_insert(e, cmp, [](const Entry&) { return false; }).first;
}

// Replaces the subtree at u by the one at v (CLRS, "Binary search trees").
void ContentTree::transplant(int u, int v) {
  const int p = m_nodes[static_cast<std::size_t>(u)].parent;
  if (p < 0) m_root = v;
  else if (m_nodes[static_cast<std::size_t>(p)].left == u) m_nodes[static_cast<std::size_t>(p)].left = v;
  else m_nodes[static_cast<std::size_t>(p)].right = v;
  if (v >= 0) m_nodes[static_cast<std::size_t>(v)].parent = p;
}

void ContentTree::erase(int z) {
  Node& n = m_nodes.at(static_cast<std::size_t>(z));
  if (!n.used) throw std::logic_error("ContentTree: erase of a free node");
  if (n.left < 0) {
    transplant(z, n.right);
  } else if (n.right < 0) {
    transplant(z, n.left);
  } else {
    // The successor (leftmost of the right subtree) takes z's place; the
    // order of equal contents is kept (left < node <= right).
    int y = n.right;
    while (m_nodes[static_cast<std::size_t>(y)].left >= 0) y = m_nodes[static_cast<std::size_t>(y)].left;
    Node& ny = m_nodes[static_cast<std::size_t>(y)];
    if (ny.parent != z) {
      transplant(y, ny.right);
      ny.right = n.right;
      m_nodes[static_cast<std::size_t>(ny.right)].parent = y;
    }
    transplant(z, y);
    ny.left = n.left;
    m_nodes[static_cast<std::size_t>(ny.left)].parent = y;
  }
  n = Node{};
  m_free.push_back(z);
  --m_size;
}

void ContentTree::clear() {
  m_nodes.clear();
  m_free.clear();
  m_root = -1;
  m_size = 0;
}

unsigned ContentTree::depth_of(int n) const {
  if (n < 0) return 0;
  const Node& node = m_nodes[static_cast<std::size_t>(n)];
  return 1 + std::max(depth_of(node.left), depth_of(node.right));
}

unsigned ContentTree::depth() const { return depth_of(m_root); }

void ContentTree::in_order(const std::function<void(int, const Entry&)>& fn) const {
  std::vector<int> stack;
  int n = m_root;
  while (n >= 0 || !stack.empty()) {
    while (n >= 0) {
      stack.push_back(n);
      n = m_nodes[static_cast<std::size_t>(n)].left;
    }
    n = stack.back();
    stack.pop_back();
    fn(n, m_nodes[static_cast<std::size_t>(n)].e);
    n = m_nodes[static_cast<std::size_t>(n)].right;
  }
}

// ---------------------------------------------------------------------------
// The scanner

namespace {
constexpr std::uint64_t kRoWb = Ept::kRwxWb & ~mmu::ept::kWrite;  // merged pages: read and execute
// One step of the checksum over a page's quadwords (Linux uses xxHash64).
std::uint64_t hash_step(std::uint64_t h, std::uint64_t w) {
  return h ^ (w + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2));
}
constexpr std::uint64_t kHashInit = 0x9E3779B97F4A7C15ull;

std::uint64_t ksm_zero_checksum() {
  std::uint64_t h = kHashInit;
  for (std::uint64_t off = 0; off < kPage; off += 8) h = hash_step(h, 0);
  return h | 1;
}
}  // namespace

void Hypervisor::ksm_init() {
  if (!m_p.ksm.enabled) return;
  if (m_p.ept_page_size != kPage)
    throw std::invalid_argument("hypervisor.ksm needs hypervisor.ept_page_size 4KiB (merging works on 4 KiB pages)");
  if (m_p.ksm.core >= m_cores.size())
    throw std::invalid_argument(fmt::format("hypervisor.ksm.core is {}, but the platform has {} cores", m_p.ksm.core,
                                            m_cores.size()));
  m_ksm = std::make_unique<KsmState>(m_p.ksm, &m_stats);
  m_ksm->sleep_ticks = std::max<std::uint64_t>(1, ps_to_tsc(m_p.ksm.sleep));
  m_ksm->next_scan = m_ksm->sleep_ticks;  // the TSCs start at 0
  if (m_p.ksm.use_zero_pages) {
    // One frame of zeros that all-zero pages map to; the platform's memory
    // is zero at power-on and nothing has been allocated from the guest
    // zone yet, so it needs no clearing. Its own reference is never dropped.
    bool fresh = false;
    m_ksm->zero_frame = m_frames.alloc(m_guest_zone, kPage, &fresh);
    if (!m_ksm->zero_frame || !fresh) throw std::logic_error("hypervisor.ksm: no fresh frame for the zero page");
    m_ksm->zero_sum = ksm_zero_checksum();
  }
}

void Hypervisor::ksm_add_vm(Vm& vm) {
  KsmState& k = *m_ksm;
  k.sums.resize(m_vms.size() + 1);
  k.vm_stats.resize(m_vms.size() + 1);
  k.vm_shared.resize(m_vms.size() + 1, 0);
  k.vm_stats[vm.id] = std::make_unique<KsmVmStats>(vm.group);
}


bool Hypervisor::ksm_scannable(const Vm& vm) const {
  // Devices may write guest memory behind the EPT's back (DMA, or the
  // hypervisor's own emulation through host-physical addresses), and shadow
  // paging's map is not walked by the hardware: such VMs are not scanned.
  return !vm.ended() && !vm.shadow && !vm.virtio && !vm.nic && vm.nic_type != "vf";
}

bool Hypervisor::ksm_pinned(const Vm& vm, std::uint64_t hpa) const {
  for (const auto& v : vm.vcpus)
    if (v->steal.area && (v->steal.area & ~(kPage - 1)) == hpa) return true;
  return false;
}

int Hypervisor::ksm_compare(Core& c, std::uint64_t a, std::uint64_t b) {
  ++m_ksm->stats.compares;
  std::uint64_t words = 0;
  int r = 0;
  for (std::uint64_t off = 0; off < kPage; off += 8) {
    const std::uint64_t x = c.load(a + off), y = c.load(b + off);
    ++words;
    if (x != y) {
      r = x < y ? -1 : 1;
      break;
    }
  }
  c.compute(words * m_ksm->p.compare);
  return r;
}

// A 64-bit hash of the page's quadwords, read by loads; never 0, which
// marks "not seen yet".
std::uint64_t Hypervisor::ksm_checksum(Core& c, std::uint64_t hpa) {
  std::uint64_t h = kHashInit;
  for (std::uint64_t off = 0; off < kPage; off += 8) h = hash_step(h, c.load(hpa + off));
  c.compute(m_ksm->p.checksum);
  return h | 1;
}

void Hypervisor::ksm_publish(bool unstable) {
  KsmState& k = *m_ksm;
  k.stats.pages_shared.set(static_cast<double>(k.shared));
  k.stats.pages_sharing.set(static_cast<double>(k.mappings - k.shared));
  k.stats.pages_stale.set(static_cast<double>(k.merged.size() - k.shared));
  k.stats.zero_pages_sharing.set(static_cast<double>(k.zero_mappings));
  if (unstable) {
    std::size_t live = 0;
    k.unstable.in_order([&](int, const ContentTree::Entry& e) { live += e.live; });
    k.stats.pages_unshared.set(static_cast<double>(live));
  }
  for (std::size_t i = 0; i < k.vm_stats.size(); ++i)
    if (k.vm_stats[i]) k.vm_stats[i]->shared_pages.set(static_cast<double>(k.vm_shared[i]));
}

void Hypervisor::ksm_run(PerCore& pc) {
  Core& c = *pc.core;
  KsmState& k = *m_ksm;
  const std::uint64_t t0 = c.now();
  ++k.stats.batches;
  std::uint64_t budget = k.p.pages_to_scan;
  unsigned wraps = 0;
  std::vector<Ept::Leaf> leaves;
  while (budget > 0) {
    if (k.vm_cursor >= m_vms.size()) {
      // A full scan ends: the unstable tree is rebuilt from scratch
      // (ksm_do_scan's end of a pass, Linux mm/ksm.c).
      k.unstable.clear();
      ksm_prune(c);
      ++k.stats.full_scans;
      k.vm_cursor = 0;
      k.gpa_cursor = 0;
      if (++wraps > 1) break;  // nothing to scan anywhere
    }
    Vm& vm = *m_vms[k.vm_cursor];
    if (!ksm_scannable(vm) || k.gpa_cursor >= vm.memory) {
      ++k.vm_cursor;
      k.gpa_cursor = 0;
      continue;
    }
    if (k.sums[vm.id].empty()) k.sums[vm.id].assign(vm.memory / kPage, 0);
    // The present leaves of the rest of this 2 MiB window (loads of the
    // EPT entries; reads only, as ksm walks page tables under a read lock).
    const std::uint64_t hi = std::min(vm.memory, (k.gpa_cursor | (FrameAllocator::k2M - 1)) + 1);
    leaves.clear();
    vm.ept->for_each_leaf(c, k.gpa_cursor, hi, false, [&](const Ept::Leaf& l) { leaves.push_back(l); });
    k.gpa_cursor = hi;
    for (const Ept::Leaf& l : leaves) {
      if (budget == 0) {
        k.gpa_cursor = l.gpa;
        break;
      }
      if (l.level != 1 || l.gpa >= vm.memory) continue;
      --budget;
      ksm_scan_page(c, vm, l.gpa, l.hpa);
      if (vm.ended()) break;
    }
  }
  ksm_publish(true);
  k.stats.scanner_cycles += c.now() - t0;
  k.next_scan = c.rdtsc() + k.sleep_ticks;
}

// Merged frames whose last mapping went leave the stable tree, and the
// tree's reference goes back (the frame returns to the allocator).
void Hypervisor::ksm_prune(Core& c) {
  KsmState& k = *m_ksm;
  std::vector<int> dead;
  k.stable.in_order([&](int n, const ContentTree::Entry& e) {
    if (m_frames.mappings(e.frame).empty()) dead.push_back(n);
  });
  for (int n : dead) {
    const std::uint64_t frame = k.stable.at(n).frame;
    k.stable.erase(n);
    k.merged.erase(frame);
    charge(c, m_p.costs.frame_free, kCodeKsm);
    m_frames.put(frame);
  }
}

void Hypervisor::ksm_scan_page(Core& c, Vm& vm, std::uint64_t gpa, std::uint64_t hpa) {
  KsmState& k = *m_ksm;
  if (hpa < m_p.reserved_memory || !m_frames.allocated(hpa)) return;  // not a guest frame
  ++k.stats.pages_scanned;
  charge(c, k.p.scan_page, kCodeKsm);
  if (k.merged.count(hpa) || (k.zero_frame && hpa == k.zero_frame)) return;  // merged already
  if (ksm_pinned(vm, hpa)) return;
  auto cmp = [this, &c](std::uint64_t a, std::uint64_t b) { return ksm_compare(c, a, b); };
  // 1. The stable tree: an equal merged frame with room for one more.
  const std::uint64_t cap = k.p.max_page_sharing;
  const int s = k.stable.find(hpa, cmp, [&](const ContentTree::Entry& e) {
    const std::size_t n = m_frames.mappings(e.frame).size();
    return n > 0 && n < cap;  // not full, not awaiting pruning
  });
  if (s >= 0 && ksm_merge_into(c, vm, gpa, hpa, k.stable.at(s).frame)) return;
  // 2. Only a page whose checksum held since its last visit goes on.
  const std::uint64_t sum = ksm_checksum(c, hpa);
  std::uint64_t& old = k.sums[vm.id][gpa / kPage];
  if (old != sum) {
    old = sum;
    ++k.stats.checksum_changes;
    return;
  }
  if (k.zero_frame && sum == k.zero_sum && ksm_merge_into(c, vm, gpa, hpa, k.zero_frame)) return;
  // 3. The unstable tree: an equal page seen in this full scan, or insert.
  ContentTree::Entry me{hpa, vm.id, gpa, true};
  auto [n, inserted] = k.unstable.find_or_insert(me, cmp, [&](const ContentTree::Entry& e) {
    return e.live && !(e.vm == vm.id && e.gpa == gpa);
  });
  if (inserted) return;
  const ContentTree::Entry other = k.unstable.at(n);
  if (other.vm >= m_vms.size()) return;
  Vm& ovm = *m_vms[other.vm];
  if (!ksm_scannable(ovm)) return;
  if (ksm_merge_pair(c, ovm, other.gpa, other.frame, vm, gpa, hpa)) k.unstable.at(n).live = false;
}

bool Hypervisor::ksm_merge_into(Core& c, Vm& vm, std::uint64_t gpa, std::uint64_t hpa, std::uint64_t kf) {
  KsmState& k = *m_ksm;
  lock_mmu(c, vm);
  // Waiting for the lock lets other cores run: the VM may have stopped, the
  // page moved, or the merged frame lost its last mapping since the search.
  const bool is_zero = k.zero_frame && kf == k.zero_frame;
  bool ok = ksm_scannable(vm) &&
            (is_zero || (k.merged.count(kf) && !m_frames.mappings(kf).empty() &&
                      m_frames.mappings(kf).size() < k.p.max_page_sharing));
  std::optional<Ept::Leaf> l;
  if (ok) l = vm.ept->lookup(c, gpa);
  ok = ok && l && l->hpa == hpa && l->level == 1;
  const bool protected_it = ok;
  // A reference to the merged frame while comparing: a write in another VM
  // that drops its last mapping meanwhile cannot free it (ksm takes a
  // reference to the KSM page, get_ksm_page). Write-protect first, then
  // compare: a write from now on faults and waits for the lock (ksm's
  // write_protect_page before pages_identical).
  if (ok) {
    m_frames.get(kf);
    vm.ept->protect(c, gpa, mmu::ept::kRead | mmu::ept::kExecute);
    ok = ksm_compare(c, hpa, kf) == 0 && (is_zero || (!m_frames.mappings(kf).empty() &&
                                                       m_frames.mappings(kf).size() < k.p.max_page_sharing));
  }
  if (ok) {
    charge(c, k.p.merge, kCodeKsm);
    vm.ept->remap(c, gpa, kf, kRoWb);  // the reference taken above is the mapping's
    charge(c, m_p.costs.frame_free, kCodeKsm);
    m_frames.put(hpa);
    if (is_zero) {
      ++k.zero_mappings;
    } else {
      ++k.mappings;
      ++k.stats.merges;
      if (k.vm_stats[vm.id]) ++k.vm_stats[vm.id]->merges;
    }
    ++k.vm_shared[vm.id];
  } else {
    ++k.stats.merge_failures;
    if (protected_it) {
      vm.ept->protect(c, gpa, Ept::kRwxWb & mmu::ept::kPermMask);
      m_frames.put(kf);  // never the last reference: the tree holds one
    }
  }
  unlock_mmu(c, vm);
  return ok;
}

bool Hypervisor::ksm_merge_pair(Core& c, Vm& va, std::uint64_t gpa_a, std::uint64_t hpa_a, Vm& vb,
                                std::uint64_t gpa_b, std::uint64_t hpa_b) {
  KsmState& k = *m_ksm;
  // Both VMs' MMU locks, in VM order (one lock if the same VM).
  Vm& first = va.id <= vb.id ? va : vb;
  Vm& second = va.id <= vb.id ? vb : va;
  lock_mmu(c, first);
  if (&second != &first) lock_mmu(c, second);
  // Re-checked under the locks (waiting for them lets other cores run).
  const bool alive = ksm_scannable(va) && ksm_scannable(vb);
  std::optional<Ept::Leaf> la, lb;
  if (alive) {
    la = va.ept->lookup(c, gpa_a);
    lb = vb.ept->lookup(c, gpa_b);
  }
  bool ok = alive && hpa_a != hpa_b && la && la->hpa == hpa_a && la->level == 1 && lb && lb->hpa == hpa_b &&
            lb->level == 1 && m_frames.allocated(hpa_a) && !k.merged.count(hpa_a) && !ksm_pinned(va, hpa_a) &&
            (la->entry & mmu::ept::kWrite);
  const bool protected_them = ok;
  if (ok) {
    va.ept->protect(c, gpa_a, mmu::ept::kRead | mmu::ept::kExecute);
    vb.ept->protect(c, gpa_b, mmu::ept::kRead | mmu::ept::kExecute);
    ok = ksm_compare(c, hpa_b, hpa_a) == 0;
  }
  if (ok) {
    charge(c, k.p.merge, kCodeKsm);
    // a's frame becomes the merged frame: read-only in a, b mapped to it.
    m_frames.get(hpa_a);
    vb.ept->remap(c, gpa_b, hpa_a, kRoWb);
    charge(c, m_p.costs.frame_free, kCodeKsm);
    m_frames.put(hpa_b);
    auto cmp = [this, &c](std::uint64_t x, std::uint64_t y) { return ksm_compare(c, x, y); };
    m_frames.get(hpa_a);  // the stable tree's own reference
    k.merged[hpa_a] = k.stable.insert({hpa_a, va.id, gpa_a, true}, cmp);
    ++k.shared;
    k.mappings += 2;
    k.stats.merges += 2;
    if (k.vm_stats[va.id]) ++k.vm_stats[va.id]->merges;
    if (k.vm_stats[vb.id]) ++k.vm_stats[vb.id]->merges;
    ++k.vm_shared[va.id];
    ++k.vm_shared[vb.id];
  } else {
    ++k.stats.merge_failures;
    if (protected_them) {
      va.ept->protect(c, gpa_a, Ept::kRwxWb & mmu::ept::kPermMask);
      vb.ept->protect(c, gpa_b, Ept::kRwxWb & mmu::ept::kPermMask);
    }
  }
  if (&second != &first) unlock_mmu(c, second);
  unlock_mmu(c, first);
  return ok;
}

void Hypervisor::ksm_unmapped(Vm& vm, std::uint64_t frame) {
  KsmState& k = *m_ksm;
  if (k.zero_frame && frame == k.zero_frame) {
    --k.zero_mappings;
  } else {
    auto it = k.merged.find(frame);
    if (it == k.merged.end()) return;
    --k.mappings;
    // The last mapping gone: the frame stays in the stable tree, held by
    // the tree's reference, until the scanner prunes it (only the scanner
    // changes its trees; ksm finds such stale stable nodes the same way).
    if (m_frames.mappings(frame).empty()) --k.shared;
  }
  if (vm.id < k.vm_shared.size() && k.vm_shared[vm.id]) --k.vm_shared[vm.id];
}

bool Hypervisor::ksm_write_fault(Core& c, Vcpu& v, std::uint64_t gpa) { return ksm_unshare(c, *v.vm, gpa); }

bool Hypervisor::ksm_unshare(Core& c, Vm& vm, std::uint64_t gpa) {
  KsmState& k = *m_ksm;
  const std::uint64_t t0 = c.now();
  lock_mmu(c, vm);
  auto l = vm.ept->lookup(c, gpa);
  if (!l || (l->entry & mmu::ept::kWrite) || l->level != 1) {
    unlock_mmu(c, vm);
    return false;
  }
  const std::uint64_t old = l->hpa;
  const bool merged = k.merged.count(old) || (k.zero_frame && old == k.zero_frame);
  if (!merged) {
    // Write-protected by a merge that did not happen: give write access back.
    vm.ept->protect(c, l->gpa, Ept::kRwxWb & mmu::ept::kPermMask);
    unlock_mmu(c, vm);
    return true;
  }
  const std::uint64_t fresh = alloc_guest_page();
  if (!fresh) {
    unlock_mmu(c, vm);
    stop_vm(c, vm, fmt::format("host memory exhausted breaking the sharing of guest-physical {:#x} ({})", gpa,
                               host_memory_note()));
    return true;
  }
  charge(c, k.p.cow, kCodeKsm);
  c.rep_movs(fresh, old, kPage);
  vm.ept->remap(c, l->gpa, fresh, Ept::kRwxWb);
  ksm_unmapped(vm, old);
  charge(c, m_p.costs.frame_free, kCodeKsm);
  m_frames.put(old);
  unlock_mmu(c, vm);
  ++k.stats.cow_breaks;
  if (vm.id < k.vm_stats.size() && k.vm_stats[vm.id]) {
    ++k.vm_stats[vm.id]->cow_breaks;
    k.vm_stats[vm.id]->cow_cycles += c.now() - t0;
  }
  ksm_publish(false);
  return true;
}

}  // namespace vmx::hv
