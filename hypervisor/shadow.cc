// Shadow paging (docs/mmu.md, "Shadow paging").
//
// Without EPT the hardware walks one-dimensional tables that the hypervisor
// builds: the shadow tables, which map guest-linear addresses straight to
// host-physical ones. The guest's own tables are only read by the
// hypervisor. Keeping the two in step costs VM exits:
//   - every guest #PF exits (exception bitmap bit 14). The hypervisor walks
//     the guest's tables in software; if the guest maps the address it
//     fills the shadow entry (setting the guest's accessed and dirty bits as
//     the hardware would have), else it reflects the fault to the guest;
//   - guest page-table pages are write-protected in the shadow tables while
//     they are shadowed. A write to one exits as a #PF; the hypervisor makes
//     the page writable for that one access, single-steps the guest with the
//     monitor trap flag (SDM Vol. 3C, 26.5.2), then write-protects it again
//     and drops the shadow entries derived from the written guest entry.
//     After a few writes with no use in between, the page is unshadowed
//     instead (KVM's write-flooding heuristic, mmu.c detect_write_flooding);
//   - MOV to CR3 exits (CR3-load exiting) and switches shadow roots; MOV from
//     CR3 exits so that the guest reads its own value; INVLPG exits.
// The guest's paging-off phase runs on an identity shadow table, since VMX
// without EPT needs CR0.PG = 1 (SDM Vol. 3C, 26.3.1.1, no unrestricted guest).
// Every step charges its instructions (HvCosts::shadow_*) and makes its real
// loads and stores of guest and shadow tables.
#include "hypervisor/shadow.h"

#include "hypervisor/hypervisor_state.h"

#include <algorithm>

#include <fmt/format.h>

#include "mmu/paging.h"

namespace vmx::hv {

using cpu::Core;
namespace field = cpu::field;
namespace crb = mmu::crbits;
namespace pte = mmu::pte;

namespace {
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kCodeShadow = 0xC000;
// Bits of the guest CR0/CR4 the hypervisor owns under shadow paging: paging
// itself and write protection (the shadow tables need CR0.PG = 1 and rely on
// CR0.WP = 1), and the CR4 bits that change the shadow tables' format or
// tagging (PCIDs are not passed through: the shadow roots are untagged).
constexpr std::uint64_t kCr0Owned = crb::kCr0Pe | crb::kCr0Pg | crb::kCr0Wp;
constexpr std::uint64_t kCr4Owned = crb::kCr4Vmxe | crb::kCr4Pcide | crb::kCr4La57;
// Permission bits copied from guest entries into shadow entries.
constexpr std::uint64_t kPermBits = pte::kWritable | pte::kUser | pte::kNoExecute;
constexpr unsigned kFloodWrites = 3;  // KVM: write_flooding_count >= 3
constexpr unsigned kPrevRoots = 3;    // KVM_MMU_NUM_PREV_ROOTS
}  // namespace

// ---------------------------------------------------------------------------
// Set-up and entry.

void Hypervisor::shadow_setup_vmcs(Core& c, Vcpu& v) {
  using namespace cpu;
  vmw(c, field::kProcBasedControls, proc::kHltExiting | proc::kUseIoBitmaps | proc::kUseMsrBitmaps |
                                        proc::kActivateSecondaryControls | proc::kCr3LoadExiting |
                                        proc::kCr3StoreExiting | proc::kInvlpgExiting);
  vmw(c, field::kSecondaryControls, v.vpid ? proc2::kEnableVpid : 0);
  vmw(c, field::kExceptionBitmap, 1u << vec::kPageFault);
  vmw(c, field::kPfErrorCodeMask, 0);
  vmw(c, field::kPfErrorCodeMatch, 0);
  vmw(c, field::kCr0GuestHostMask, kCr0Owned);
  vmw(c, field::kCr0ReadShadow, crb::kCr0Pe);
  vmw(c, field::kCr4GuestHostMask, kCr4Owned);
  vmw(c, field::kCr4ReadShadow, 0);
  vmw(c, field::kGuestCr0, crb::kCr0Pe | crb::kCr0Pg | crb::kCr0Wp);
  vmw(c, field::kGuestCr4, crb::kCr4Pae);
  v.shadow.guest_cr0 = crb::kCr0Pe;
  v.shadow.guest_cr3 = 0;
  v.shadow.guest_cr4 = 0;
  lock_mmu(c, *v.vm);
  shadow_load_root(c, v);
  unlock_mmu(c, *v.vm);
}

void Hypervisor::shadow_before_entry(Core& c, Vcpu& v) {
  if (v.shadow.reload) {
    lock_mmu(c, *v.vm);
    shadow_load_root(c, v);
    unlock_mmu(c, *v.vm);
    v.shadow.flush = true;
  }
  if (v.shadow.flush) {
    v.shadow.flush = false;
    // Without VPIDs every entry flushes anyway (SDM Vol. 3C, 28.3.3.3).
    if (v.vpid) c.invvpid(1, v.vpid, 0, Regs::rcx, vmx_operand(c, v.vpid));
  }
}

// Points the vCPU at the shadow root for its guest's current paging state,
// creating it if needed, and keeps the one it leaves among its previous roots.
void Hypervisor::shadow_load_root(Core& c, Vcpu& v) {
  Vm& vm = *v.vm;
  ShadowMmu& sm = *vm.shadow;
  const bool paging = v.shadow.guest_cr0 & crb::kCr0Pg;
  const unsigned levels = paging && (v.shadow.guest_cr4 & crb::kCr4La57) ? 5 : 4;
  const std::uint64_t gfn = paging ? (v.shadow.guest_cr3 & pte::kAddrMask) >> 12 : 0;
  const std::uint32_t role = paging ? ShadowPage::kMirror : ShadowPage::kIdentity;
  v.shadow.reload = false;
  auto it = sm.pages.find(ShadowPage::key(gfn, levels, role));
  ShadowPage* root = nullptr;
  if (it != sm.pages.end()) {
    root = it->second.get();
    ++sm.root_hits;
  } else {
    root = shadow_page(c, vm, gfn, levels, role);
  }
  if (root != v.shadow.root) {
    ++root->roots;
    // Remember the old root (a CR3 switch back to it finds it filled); the
    // oldest falls out of the cache and goes if nothing else holds it.
    auto known = std::find(v.shadow.prev_roots.begin(), v.shadow.prev_roots.end(), root);
    if (known != v.shadow.prev_roots.end()) {
      v.shadow.prev_roots.erase(known);
      --root->roots;
    }
    if (v.shadow.root) v.shadow.prev_roots.push_front(v.shadow.root);
    v.shadow.root = root;
    while (v.shadow.prev_roots.size() > kPrevRoots) {
      ShadowPage* old = v.shadow.prev_roots.back();
      v.shadow.prev_roots.pop_back();
      shadow_release_root(c, vm, old);
    }
  }
  vmw(c, field::kGuestCr3, root->hpa);
  std::uint64_t cr4 = (vmr(c, field::kGuestCr4) & ~crb::kCr4La57) | (levels == 5 ? crb::kCr4La57 : 0);
  vmw(c, field::kGuestCr4, cr4);
}

void Hypervisor::shadow_release_root(Core& c, Vm& vm, ShadowPage* root) {
  if (--root->roots == 0 && root->parents.empty()) shadow_zap(c, vm, root);
}

// ---------------------------------------------------------------------------
// Shadow pages.

Hypervisor::ShadowPage* Hypervisor::shadow_page(Core& c, Vm& vm, std::uint64_t gfn, unsigned level,
                                                std::uint32_t role) {
  ShadowMmu& sm = *vm.shadow;
  const std::uint64_t key = ShadowPage::key(gfn, level, role);
  if (auto it = sm.pages.find(key); it != sm.pages.end()) return it->second.get();
  if (sm.pages.size() >= sm.max_pages) shadow_reset(c, vm);
  std::uint64_t frame;
  if (!sm.free_frames.empty()) {
    frame = sm.free_frames.back();
    sm.free_frames.pop_back();
  } else {
    frame = alloc_host_frame();
  }
  c.rep_stos(frame, 0, kPage);
  auto sp = std::make_unique<ShadowPage>();
  sp->hpa = frame;
  sp->gfn = gfn;
  sp->level = level;
  sp->role = role;
  if (level == 1) sp->gfns.assign(512, 0);
  ShadowPage* raw = sp.get();
  sm.pages.emplace(key, std::move(sp));
  sm.by_hpa.emplace(frame, raw);
  ++sm.pages_created;
  sm.pages_live.set(static_cast<double>(sm.pages.size()));
  if (role == ShadowPage::kMirror) {
    // Write-protect the guest table: every leaf shadow entry that maps its
    // frame loses its write permission (and the TLBs their copies).
    std::vector<ShadowPage*>& m = sm.mirrors[gfn];
    m.push_back(raw);
    if (m.size() == 1) {
      auto r = sm.rmap.find(gfn);
      if (r != sm.rmap.end() && !r->second.empty()) {
        for (std::uint64_t spte : r->second) {
          std::uint64_t e = c.load(spte);
          if (e & pte::kWritable) c.store(spte, e & ~pte::kWritable);
        }
        shadow_flush_vm(vm);
      }
    }
  }
  return raw;
}

// Clears entry `index` of sp: a leaf entry leaves the reverse map, a table
// entry unlinks its child, which goes when nothing points to it any more.
bool Hypervisor::shadow_unlink_entry(Core& c, Vm& vm, ShadowPage& sp, unsigned index) {
  ShadowMmu& sm = *vm.shadow;
  const std::uint64_t spte = sp.hpa + 8ull * index;
  const std::uint64_t e = c.load(spte);
  if (!(e & pte::kPresent)) return false;
  c.store(spte, 0);
  if (sp.level == 1) {
    auto r = sm.rmap.find(sp.gfns[index]);
    if (r != sm.rmap.end()) {
      auto& list = r->second;
      list.erase(std::remove(list.begin(), list.end(), spte), list.end());
      if (list.empty()) sm.rmap.erase(r);
    }
    return true;
  }
  auto child_it = sm.by_hpa.find(e & pte::kAddrMask);
  if (child_it == sm.by_hpa.end()) return true;
  ShadowPage* child = child_it->second;
  auto& parents = child->parents;
  parents.erase(std::remove(parents.begin(), parents.end(), spte), parents.end());
  if (parents.empty() && child->roots == 0) shadow_zap(c, vm, child);
  return true;
}

void Hypervisor::shadow_zap(Core& c, Vm& vm, ShadowPage* sp) {
  ShadowMmu& sm = *vm.shadow;
  charge(c, m_p.costs.shadow_zap, kCodeShadow);
  ++sm.pages_zapped;
  // Take it out of the index first, so that the recursion below never
  // comes back to it.
  const std::uint64_t key = ShadowPage::key(sp->gfn, sp->level, sp->role);
  std::unique_ptr<ShadowPage> own = std::move(sm.pages.at(key));
  sm.pages.erase(key);
  sm.by_hpa.erase(sp->hpa);
  if (sp->role == ShadowPage::kMirror) {
    auto m = sm.mirrors.find(sp->gfn);
    m->second.erase(std::remove(m->second.begin(), m->second.end(), sp), m->second.end());
    if (m->second.empty()) sm.mirrors.erase(m);
  }
  for (std::uint64_t parent : sp->parents) c.store(parent, 0);
  sp->parents.clear();
  for (unsigned i = 0; i < 512; ++i) shadow_unlink_entry(c, vm, *sp, i);
  // The frame stays in the VM's pool of shadow-table frames (bounded by
  // max_pages) for its next shadow page; the pool returns to the frame
  // allocator when the VM stops (docs/memory.md).
  sm.free_frames.push_back(sp->hpa);
  sm.pages_live.set(static_cast<double>(sm.pages.size()));
  shadow_flush_vm(vm);
}

// The page limit is reached: every shadow table goes (roots in use are kept
// but emptied), as KVM's kvm_mmu_zap_all; faults rebuild what is used.
void Hypervisor::shadow_reset(Core& c, Vm& vm) {
  ShadowMmu& sm = *vm.shadow;
  ++sm.resets;
  std::vector<ShadowPage*> roots;
  for (auto& [key, sp] : sm.pages)
    if (sp->roots) roots.push_back(sp.get());
  for (ShadowPage* r : roots)
    for (unsigned i = 0; i < 512; ++i) shadow_unlink_entry(c, vm, *r, i);
  // Whatever is left is unreachable from a root in use.
  std::vector<std::uint64_t> rest;
  for (auto& [key, sp] : sm.pages)
    if (!sp->roots) rest.push_back(key);
  for (std::uint64_t key : rest)
    if (auto it = sm.pages.find(key); it != sm.pages.end()) shadow_zap(c, vm, it->second.get());
  shadow_flush_vm(vm);
}

// Every vCPU of the VM flushes its VPID's translations before its next entry;
// one running on another core is sent an IPI so that it exits soon
// (kvm_flush_remote_tlbs).
void Hypervisor::shadow_flush_vm(Vm& vm) {
  ++vm.shadow->remote_flushes;
  Core& self = Core::current();
  for (auto& u : vm.vcpus) {
    u->shadow.flush = true;
    if (u->time.off == Vcpu::Off::OnCpu && m_cores[u->core] != &self)
      self.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{u->core} << 32) | 0xFD);
  }
}

std::uint64_t Hypervisor::shadow_leaf(Core& c, Vcpu& v, std::uint64_t la) {
  std::uint64_t table = v.shadow.root->hpa;
  for (unsigned level = v.shadow.root->level; level >= 1; --level) {
    std::uint64_t spte = table + 8ull * mmu::table_index(la, level);
    if (level == 1) return spte;
    std::uint64_t e = c.load(spte);
    if (!(e & pte::kPresent)) return 0;
    table = e & pte::kAddrMask;
  }
  return 0;
}

// ---------------------------------------------------------------------------
// Exits.

void Hypervisor::shadow_reflect_pf(Core& c, Vcpu& v, std::uint64_t la, std::uint32_t error_code) {
  ++v.vm->shadow->reflected;
  v.cr2 = la;
  inject_exception(c, cpu::vec::kPageFault, true, error_code);
}

void Hypervisor::handle_shadow_pf(Core& c, Vcpu& v) {
  charge(c, m_p.costs.shadow_fault, kCodeShadow);
  Vm& vm = *v.vm;
  ShadowMmu& sm = *vm.shadow;
  const std::uint64_t la = vmr(c, field::kExitQualification);
  const auto ec = static_cast<std::uint32_t>(vmr(c, field::kExitIntrErrorCode));
  const bool write = ec & mmu::pfec::kWrite, user = ec & mmu::pfec::kUser, fetch = ec & mmu::pfec::kFetch;
  const bool paging = v.shadow.guest_cr0 & crb::kCr0Pg;

  // The guest's translation of la, by a software walk of its tables.
  struct Step {
    std::uint64_t hpa = 0, e = 0;
  } steps[6];
  unsigned leaf_level = 1;
  std::uint64_t gpa = la;
  std::uint64_t leaf_bits = pte::kWritable;  // paging off: the identity map, supervisor read/write
  lock_mmu(c, vm);
  if (paging) {
    const unsigned levels = (v.shadow.guest_cr4 & crb::kCr4La57) ? 5 : 4;
    const bool nxe = vmr(c, field::kGuestIa32Efer) & crb::kEferNxe;
    std::uint64_t table = v.shadow.guest_cr3 & pte::kAddrMask;
    bool w_all = true, u_all = true, nx_any = false;
    for (unsigned level = levels; level >= 1; --level) {
      if (table >= vm.memory) {
        unlock_mmu(c, vm);
        crash_vm(vm, fmt::format("vCPU {}: guest page table at guest-physical {:#x} is outside the VM's memory",
                                 v.index, table));
        return;
      }
      const std::uint64_t hpa = back_guest_page_locked(c, vm, table + 8ull * mmu::table_index(la, level));
      if (!hpa) {
        unlock_mmu(c, vm);
        stop_vm(c, vm, fmt::format("host memory exhausted backing guest-physical {:#x} ({})", table,
                                   host_memory_note()));
        return;
      }
      const std::uint64_t e = c.load(hpa);
      steps[level] = {hpa, e};
      if (!(e & pte::kPresent)) {
        unlock_mmu(c, vm);
        shadow_reflect_pf(c, v, la, ec & (mmu::pfec::kWrite | mmu::pfec::kUser | mmu::pfec::kFetch));
        return;
      }
      w_all = w_all && (e & pte::kWritable);
      u_all = u_all && (e & pte::kUser);
      nx_any = nx_any || (nxe && (e & pte::kNoExecute));
      if (level == 1 || (level <= 3 && (e & pte::kPageSize))) {
        leaf_level = level;
        break;
      }
      table = e & pte::kAddrMask;
    }
    // Access rights (SDM Vol. 3A, 4.6), with the guest's CR0.WP, SMEP, SMAP
    // (lifted by the guest's RFLAGS.AC, read only when SMAP matters).
    const bool wp = v.shadow.guest_cr0 & crb::kCr0Wp;
    const bool violation = (user && !u_all) || (write && !w_all && (user || wp)) || (fetch && nx_any) ||
                           (!user && fetch && u_all && (v.shadow.guest_cr4 & crb::kCr4Smep)) ||
                           (!user && !fetch && u_all && (v.shadow.guest_cr4 & crb::kCr4Smap) &&
                            !(vmr(c, field::kGuestRflags) & (1ull << 18)));
    if (violation) {
      unlock_mmu(c, vm);
      shadow_reflect_pf(c, v, la,
                        mmu::pfec::kPresent | (ec & (mmu::pfec::kWrite | mmu::pfec::kUser | mmu::pfec::kFetch)));
      return;
    }
    // What the hardware would have done in the guest's tables: accessed
    // bits on the way, the dirty bit of the leaf on a write (SDM Vol. 3A, 4.8).
    for (unsigned level = levels; level >= leaf_level; --level) {
      std::uint64_t e = steps[level].e;
      std::uint64_t want = e | pte::kAccessed | (level == leaf_level && write ? pte::kDirty : 0);
      if (want != e) {
        c.store(steps[level].hpa, want);
        steps[level].e = want;
      }
    }
    const std::uint64_t leaf = steps[leaf_level].e;
    const std::uint64_t mask = (1ull << mmu::level_shift(leaf_level)) - 1;
    gpa = (leaf & pte::kAddrMask & ~mask) | (la & mask);
    leaf_bits = leaf & (kPermBits | pte::kGlobal);
    if (!w_all) leaf_bits &= ~pte::kWritable;
    if (!u_all) leaf_bits &= ~pte::kUser;
    if (nx_any) leaf_bits |= pte::kNoExecute;
    else leaf_bits &= ~pte::kNoExecute;
    if (!(v.shadow.guest_cr4 & crb::kCr4Pge)) leaf_bits &= ~pte::kGlobal;
    // A clean page is mapped read-only so that its first write comes back
    // here to set the guest's dirty bit.
    if (!(leaf & pte::kDirty) && !write) leaf_bits &= ~pte::kWritable;
  }
  if (gpa >= vm.memory) {
    unlock_mmu(c, vm);
    crash_vm(vm, fmt::format("vCPU {} accessed guest-physical {:#x}, beyond the VM's {} bytes of memory "
                             "(no device is emulated there)",
                             v.index, gpa, vm.memory));
    return;
  }
  const std::uint64_t gfn = gpa >> 12;
  const std::uint64_t hpa = back_guest_page_locked(c, vm, gpa & ~(kPage - 1));
  if (!hpa) {
    unlock_mmu(c, vm);
    stop_vm(c, vm, fmt::format("host memory exhausted backing guest-physical {:#x} ({})", gpa & ~(kPage - 1),
                               host_memory_note()));
    return;
  }

  // A write to a page-table page the hypervisor shadows.
  bool single_step = false;
  if (write && sm.write_protected(gfn)) {
    std::vector<ShadowPage*>& mirrors = sm.mirrors[gfn];
    bool flooded = true;
    for (ShadowPage* sp : mirrors) {
      ++sp->writes;
      if (sp->roots || sp->writes < kFloodWrites) flooded = false;
    }
    if (flooded) {
      // Written again and again with no use in between: most likely no
      // longer a page table. Unshadow it and let the write through.
      ++sm.flood_unshadows;
      std::vector<std::uint64_t> doomed;
      for (ShadowPage* sp : mirrors) doomed.push_back(ShadowPage::key(sp->gfn, sp->level, sp->role));
      for (std::uint64_t key : doomed)
        if (auto it = sm.pages.find(key); it != sm.pages.end()) shadow_zap(c, vm, it->second.get());
    } else {
      single_step = true;
    }
  }

  // Fill the shadow path for la, creating shadow pages on the way.
  ShadowPage* sp = v.shadow.root;
  for (unsigned level = sp->level; level >= 1; --level) {
    sp->writes = 0;  // used: not a flooded page
    const unsigned index = mmu::table_index(la, level);
    const std::uint64_t spte = sp->hpa + 8ull * index;
    if (level == 1) {
      std::uint64_t bits = pte::kPresent | (leaf_bits & (kPermBits | pte::kGlobal));
      if (sm.write_protected(gfn) && !single_step) bits &= ~pte::kWritable;
      std::uint64_t old = c.load(spte);
      if ((old & pte::kPresent) && sp->gfns[index] != gfn) shadow_unlink_entry(c, vm, *sp, index);
      c.store(spte, (hpa & pte::kAddrMask) | bits);
      if (!(old & pte::kPresent) || sp->gfns[index] != gfn) {
        sp->gfns[index] = gfn;
        sm.rmap[gfn].push_back(spte);
      }
      break;
    }
    // The child: the guest's next table, or (below the guest's leaf, or
    // with guest paging off) a directly mapped range.
    std::uint64_t child_gfn, entry_bits;
    std::uint32_t role;
    if (paging && level > leaf_level) {
      child_gfn = (steps[level].e & pte::kAddrMask) >> 12;
      role = ShadowPage::kMirror;
      entry_bits = steps[level].e & kPermBits;
    } else {
      const unsigned shift = mmu::level_shift(level);
      child_gfn = ((gpa >> shift) << shift) >> 12;
      role = paging ? ShadowPage::kDirect | static_cast<std::uint32_t>((leaf_bits & (pte::kWritable | pte::kUser)) << 8) |
                          (leaf_bits & pte::kNoExecute ? 1u << 16 : 0u) | (leaf_bits & pte::kGlobal ? 1u << 17 : 0u)
                    : ShadowPage::kIdentity;
      entry_bits = paging ? pte::kWritable | pte::kUser : pte::kWritable;
    }
    std::uint64_t e = c.load(spte);
    ShadowPage* child = nullptr;
    if (e & pte::kPresent) {
      auto it = sm.by_hpa.find(e & pte::kAddrMask);
      if (it != sm.by_hpa.end() && it->second->gfn == child_gfn && it->second->role == role &&
          (e & kPermBits) == entry_bits) {
        child = it->second;
      } else {
        shadow_unlink_entry(c, vm, *sp, index);
      }
    }
    if (!child) {
      const std::uint64_t resets = sm.resets.value();
      child = shadow_page(c, vm, child_gfn, level - 1, role);
      if (sm.resets.value() != resets) {
        // Creating the child reset the shadow tables under us: start over
        // at the next fault.
        unlock_mmu(c, vm);
        return;
      }
      c.store(spte, child->hpa | pte::kPresent | entry_bits);
      child->parents.push_back(spte);
    }
    sp = child;
  }
  ++sm.fills;
  if (single_step) {
    // Let this one write through, then take it back (handle_shadow_mtf).
    ++sm.pt_writes;
    v.shadow.pt_write = {true, la, gfn, gpa & (kPage - 8)};
    vmw(c, field::kProcBasedControls, vmr(c, field::kProcBasedControls) | cpu::proc::kMonitorTrapFlag);
  }
  unlock_mmu(c, vm);
}

// The single-stepped write is done: the page is write-protected again and
// every shadow entry derived from the guest entry it wrote is dropped, to be
// refilled from the new guest entry on the next fault.
void Hypervisor::handle_shadow_mtf(Core& c, Vcpu& v) {
  charge(c, m_p.costs.shadow_pt_write, kCodeShadow);
  vmw(c, field::kProcBasedControls, vmr(c, field::kProcBasedControls) & ~cpu::proc::kMonitorTrapFlag);
  if (!v.shadow.pt_write.active) return;
  Vm& vm = *v.vm;
  ShadowMmu& sm = *vm.shadow;
  const Vcpu::PtWrite w = v.shadow.pt_write;
  v.shadow.pt_write.active = false;
  lock_mmu(c, vm);
  if (std::uint64_t spte = shadow_leaf(c, v, w.la)) {
    std::uint64_t e = c.load(spte);
    if ((e & pte::kPresent) && (e & pte::kWritable) && sm.write_protected(w.gfn)) c.store(spte, e & ~pte::kWritable);
  }
  if (v.vpid) c.invvpid(0, v.vpid, w.la, Regs::rcx, vmx_operand(c, v.vpid, w.la));
  auto m = sm.mirrors.find(w.gfn);
  if (m != sm.mirrors.end()) {
    std::vector<std::uint64_t> keys;
    for (ShadowPage* sp : m->second) keys.push_back(ShadowPage::key(sp->gfn, sp->level, sp->role));
    bool dropped = false;
    for (std::uint64_t key : keys)
      if (auto it = sm.pages.find(key); it != sm.pages.end())
        dropped = shadow_unlink_entry(c, vm, *it->second, static_cast<unsigned>(w.offset / 8)) || dropped;
    // Translations through a dropped entry may be cached anywhere the VM
    // runs; a not-present entry is never cached.
    if (dropped) shadow_flush_vm(vm);
  }
  unlock_mmu(c, vm);
}

void Hypervisor::handle_shadow_invlpg(Core& c, Vcpu& v) {
  charge(c, m_p.costs.shadow_invlpg, kCodeShadow);
  Vm& vm = *v.vm;
  ++vm.shadow->invlpgs;
  const std::uint64_t la = vmr(c, field::kExitQualification);
  lock_mmu(c, vm);
  if (std::uint64_t spte = shadow_leaf(c, v, la)) {
    ShadowPage* sp = vm.shadow->by_hpa.at(spte & ~(kPage - 1));
    shadow_unlink_entry(c, vm, *sp, static_cast<unsigned>((spte & (kPage - 1)) / 8));
  }
  unlock_mmu(c, vm);
  if (v.vpid) c.invvpid(0, v.vpid, la, Regs::rcx, vmx_operand(c, v.vpid, la));
}

void Hypervisor::handle_shadow_cr(Core& c, Vcpu& v, unsigned cr, unsigned type, unsigned gpr) {
  using cpu::qual::kCrMovFrom;
  using cpu::qual::kCrMovTo;
  Vm& vm = *v.vm;
  if (cr == 3 && type == kCrMovFrom) {
    v.regs[gpr] = v.shadow.guest_cr3;
    return;
  }
  if (cr == 3 && type == kCrMovTo) {
    // Without PCIDs in the shadow tables, every switch flushes the VPID's
    // non-global translations, as MOV to CR3 does with CR4.PCIDE = 0.
    charge(c, m_p.costs.shadow_cr3, kCodeShadow);
    ++vm.shadow->cr3_loads;
    v.shadow.guest_cr3 = v.regs[gpr] & ~crb::kCr3NoFlush;
    if (v.shadow.guest_cr0 & crb::kCr0Pg) {
      lock_mmu(c, vm);
      shadow_load_root(c, v);
      unlock_mmu(c, vm);
    }
    if (v.vpid) c.invvpid(3, v.vpid, 0, Regs::rcx, vmx_operand(c, v.vpid));
    return;
  }
  if (type != kCrMovTo || (cr != 0 && cr != 4)) {
    inject_exception(c, cpu::vec::kGeneralProtection, true, 0);
    return;
  }
  const std::uint64_t value = v.regs[gpr];
  if (cr == 4 && (value & crb::kCr4Vmxe)) {
    inject_exception(c, cpu::vec::kGeneralProtection, true, 0);  // no nested VMX here
    return;
  }
  const bool was_paging = v.shadow.guest_cr0 & crb::kCr0Pg;
  const std::uint64_t old_cr4 = v.shadow.guest_cr4;
  if (cr == 0) {
    v.shadow.guest_cr0 = value;
    vmw(c, field::kCr0ReadShadow, value & kCr0Owned);
    vmw(c, field::kGuestCr0, value | kCr0Owned);
  } else {
    v.shadow.guest_cr4 = value;
    vmw(c, field::kCr4ReadShadow, value & kCr4Owned);
    vmw(c, field::kGuestCr4, (value & ~kCr4Owned) | crb::kCr4Pae);
  }
  const bool paging = v.shadow.guest_cr0 & crb::kCr0Pg;
  if (paging != was_paging || ((old_cr4 ^ v.shadow.guest_cr4) & crb::kCr4La57)) {
    lock_mmu(c, vm);
    shadow_load_root(c, v);
    unlock_mmu(c, vm);
  }
  if (v.vpid) c.invvpid(2, 0, 0, Regs::rcx, vmx_operand(c, 0));
}

}  // namespace vmx::hv
