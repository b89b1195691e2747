// The core's MMU as one object: the TLBs (L1 data and instruction arrays per
// page size, the STLB), the paging-structure caches of both dimensions, the
// nested TLB, the 2D walker (mmu/walker.h) and the invalidations the
// architecture defines on them (MOV to CR3/CR4, INVLPG, INVPCID, INVVPID,
// INVEPT, VM entry/exit without VPIDs). The core owns one, tells it the
// translation context whenever CR0/CR3/CR4/EFER, the CPL or the VMX
// controls change, and calls translate() on every access; tables are read
// through the TableMemory the core backs with its cache hierarchy.
//
// Each TLB miss is reported at one place (tlb_missed) and each walk's
// completion at one place (walk_completed), to the core's listeners
// (sim/events.h): the per-vCPU counters, the event trace, the PMU.
#pragma once

#include <array>
#include <cstdint>

#include "mmu/nested_tlb.h"
#include "mmu/paging.h"
#include "mmu/psc.h"
#include "mmu/tlb.h"
#include "mmu/walker.h"
#include "sim/events.h"
#include "sim/stats.h"

namespace vmx::mmu {

/// The core's TLB and walker parameter sections (declared and visited by the
/// core's parameters, at its level of the YAML tree: cpu.dtlb, cpu.psc, ...).
struct MmuParams {
  DtlbParams dtlb;
  Dtlb2mParams dtlb_2m;
  Dtlb1gParams dtlb_1g;
  ItlbParams itlb;
  Itlb2mParams itlb_2m;
  StlbParams stlb;
  Stlb1gParams stlb_1g;
  PscParamsAll psc;
  NestedTlbParams nested_tlb;
};

class Mmu {
 public:
  /// Registers the statistics "walker" (with walker.psc and
  /// walker.nested_tlb) and "tlb" under core_stats, in that order.
  Mmu(const MmuParams& p, TableMemory& mem, stats::Group* core_stats);
  Mmu(const Mmu&) = delete;
  Mmu& operator=(const Mmu&) = delete;

  /// The translation context, given whenever one of its inputs changes:
  /// CR0, CR3, CR4, IA32_EFER, CPL 3, EPT in use (VMX non-root with "enable
  /// EPT") and the EPTP, and the VPID of new entries (0 in root operation).
  /// Only the tag is derived here; a walk derives the rest (walk_request).
  /// guest: in VMX non-root operation (as the events report it).
  void set_context(std::uint64_t cr0, std::uint64_t cr3, std::uint64_t cr4, std::uint64_t efer, bool user, bool ept,
                   std::uint64_t eptp, std::uint16_t vpid, bool guest) {
    m_guest = guest;
    m_cr0 = cr0;
    m_cr3 = cr3;
    m_cr4 = cr4;
    m_efer = efer;
    m_user = user;
    m_ept = ept;
    m_eptp = eptp;
    const bool paging = cr0 & crbits::kCr0Pg;
    m_translate = paging || ept;
    m_tag.vpid = vpid;
    m_tag.pcid = (paging && (cr4 & crbits::kCr4Pcide)) ? static_cast<std::uint16_t>(cr3 & crbits::kCr3PcidMask) : 0;
    m_tag.ep4ta = ept ? (eptp & ept::kAddrMask) : 0;
  }
  /// Page-modification logging on ("enable PML" in VMX non-root operation
  /// with EPT, SDM Vol. 3C, 29.3.6): EPT walks log the dirty flags they set
  /// through TableMemory::pml_log.
  void set_pml(bool on) { m_pml = on; }
  bool translating() const { return m_translate; }
  const TlbTag& tag() const { return m_tag; }
  /// Where TLB misses (kTlbMiss) and completed walks (kWalk) are reported:
  /// the core's listeners (null: nobody).
  void set_events(const events::Dispatcher* d) { m_events = d ? d : &events::Dispatcher::none(); }

  /// Translates one access, adding the lookup and walk latencies to `now`
  /// (the core's clock, cycles). The L1 TLBs of each page size are looked
  /// up in parallel (one latency); a miss in all of them looks up the STLB
  /// arrays (4 KiB + 2 MiB, and 1 GiB), and a miss there walks. False: the
  /// walk faulted, and fault() says how (#PF or EPT violation/misconfig).
  bool translate(std::uint64_t va, AccessType type, std::uint64_t& pa, std::uint64_t& now) {
    if (!m_translate) {
      pa = va;
      return true;
    }
    const bool fetch = type == AccessType::Execute;
    Tlb& l1 = fetch ? m_itlb : m_dtlb;
    now += l1.latency();
    if (const TlbEntry* e = l1.lookup(va, m_tag); e && permits(e->perms, type)) {
      pa = Tlb::translate(*e, va);
      return true;
    }
    Tlb& l1_2m = fetch ? m_itlb_2m : m_dtlb_2m;
    if (const TlbEntry* e = l1_2m.lookup(va, m_tag); e && permits(e->perms, type)) {
      pa = Tlb::translate(*e, va);
      return true;
    }
    if (!fetch) {
      if (const TlbEntry* e = m_dtlb_1g.lookup(va, m_tag); e && permits(e->perms, type)) {
        pa = Tlb::translate(*e, va);
        return true;
      }
    }
    return translate_l2(va, type, pa, now);
  }
  /// The last walk that faulted.
  const WalkResult& fault() const { return m_fault; }

  // Invalidations (SDM Vol. 3A, 4.10.4; Vol. 3C, 29.4.3), with the tag of
  // the current context where the instruction means "current".
  /// MOV to CR3 that flushes (no PCIDs, or bit 63 clear).
  void mov_to_cr3(bool pcide);
  /// MOV to CR4 changing PGE, PCIDE, SMEP or LA57.
  void cr4_paging_change();
  void invlpg(std::uint64_t va);
  /// INVPCID of a valid type (0 to 3) and descriptor.
  void invpcid(unsigned type, std::uint16_t pcid, std::uint64_t la);
  /// INVVPID; false for a type that is not 0 to 3.
  bool invvpid(unsigned type, std::uint16_t vpid, std::uint64_t la);
  /// INVEPT; false for a type that is not 1 or 2.
  bool invept(unsigned type, std::uint64_t eptp);
  /// VM entry or exit without VPIDs (SDM Vol. 3C, 28.3.3.3): VPID 0 goes.
  void flush_vpid0();
  /// An EPT violation (SDM Vol. 3C, 29.4.3.1) invalidates the guest-physical
  /// mappings of the faulting guest-physical address and the combined
  /// mappings of the linear address, so that a stale, stricter translation
  /// is not used again once the hypervisor has raised the permission.
  void ept_violation(std::uint64_t va, std::uint64_t gpa);

 private:
  /// A cached translation is used only when it certainly permits the
  /// access; anything else walks, and the walk decides (and sets the dirty
  /// bit).
  bool permits(std::uint8_t perms, AccessType type) const {
    const bool user = m_user;
    const bool smap = m_cr4 & crbits::kCr4Smap, smep = m_cr4 & crbits::kCr4Smep;
    switch (type) {
      case AccessType::Read:
        return (perms & perm::kEptRead) && (user ? (perms & perm::kUser) : !((perms & perm::kUser) && smap));
      case AccessType::Write:
        // kEptDirty: with EPT A/D flags on, a translation cached by a read
        // (EPT leaf not yet dirty) walks on a write, which sets the flag
        // (SDM Vol. 3C, 29.3.5).
        return (perms & (perm::kEptWrite | perm::kEptDirty | perm::kWritable | perm::kDirty)) ==
                   (perm::kEptWrite | perm::kEptDirty | perm::kWritable | perm::kDirty) &&
               (user ? (perms & perm::kUser) : !((perms & perm::kUser) && smap));
      case AccessType::Execute:
        return (perms & perm::kEptExecute) && (perms & perm::kExecutable) &&
               (user ? (perms & perm::kUser) : !((perms & perm::kUser) && smep));
    }
    return false;
  }
  bool translate_l2(std::uint64_t va, AccessType type, std::uint64_t& pa, std::uint64_t& now);
  bool walk_and_fill(std::uint64_t va, AccessType type, std::uint64_t& pa, std::uint64_t& now);
  void fill_l1(AccessType type, std::uint64_t va, std::uint64_t pa, std::uint8_t perms, bool global,
               unsigned shift);
  /// The one place a TLB miss is reported: level 1 (every L1 array of the
  /// access's kind missed) or 2 (the STLB missed too: a walk follows).
  void tlb_missed(unsigned level, std::uint64_t va, AccessType type);
  /// The one place a walk's completion is reported (the walker has counted
  /// it in WalkStats) to the listeners: per-vCPU counters, event trace.
  void walk_completed(std::uint64_t va, const WalkResult& r, std::uint64_t start);
  template <class F> void for_each_tlb(F f);
  template <class F> void for_each_guest_psc(F f);
  template <class F> void for_each_ept_psc(F f);
  WalkCaches walk_caches();

  WalkRequest walk_request(std::uint64_t va, AccessType type) const;

  // The translation context (set_context).
  std::uint64_t m_cr0 = 0, m_cr3 = 0, m_cr4 = 0, m_efer = 0, m_eptp = 0;
  bool m_user = false, m_ept = false;
  bool m_pml = false;
  bool m_translate = false;  // paging or EPT is on
  TlbTag m_tag{};            // of new entries, and looked up
  bool m_guest = false;       // in VMX non-root operation
  const events::Dispatcher* m_events = &events::Dispatcher::none();
  WalkResult m_fault{};

  WalkStats m_walk_stats;
  stats::Group m_psc_group;          // walker.psc
  stats::Group m_psc_guest_group;    // walker.psc.guest
  stats::Group m_psc_ept_group;      // walker.psc.ept
  Psc m_gpsc_pml5e, m_gpsc_pml4e, m_gpsc_pdpte, m_gpsc_pde;
  Psc m_epsc_pml5e, m_epsc_pml4e, m_epsc_pdpte, m_epsc_pde;
  NestedTlb m_nested_tlb;
  Walker m_walker;
  struct TlbGroup : stats::Group {
    using stats::Group::Group;
    stats::Counter l1d_misses{this, "l1d_misses", "lookups", "data accesses that missed every L1 DTLB"};
    stats::Counter l1i_misses{this, "l1i_misses", "lookups", "instruction fetches that missed every L1 ITLB"};
    stats::Counter l2_misses{this, "l2_misses", "lookups", "L1 misses that also missed the STLB: each walks"};
  };
  TlbGroup m_tlb_group;
  Tlb m_dtlb, m_dtlb_2m, m_dtlb_1g, m_itlb, m_itlb_2m, m_stlb, m_stlb_1g;
  std::uint32_t m_stlb_latency;  // stlb and stlb_1g are looked up in parallel
  std::array<Tlb*, 7> m_tlbs;
};

}  // namespace vmx::mmu
