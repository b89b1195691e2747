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
#include "mmu/walker_pool.h"
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
  /// Concurrent page walkers (mmu/walker_pool.h); 0: walks in line.
  unsigned page_walkers = 0;
};

class Mmu {
 public:
  /// Registers the statistics "walker" (with walker.psc and
  /// walker.nested_tlb), "tlb" and, with page walkers, "page_walkers"
  /// under core_stats, in that order.
  Mmu(const MmuParams& p, TableMemory& mem, stats::Group* core_stats);
  Mmu(const Mmu&) = delete;
  Mmu& operator=(const Mmu&) = delete;

  /// The control registers only a walk reads (CR3, IA32_EFER, the EPTP),
  /// wired to the core's own registers once: a walk reads them when it
  /// starts, so a context change (every VM exit and entry) copies none.
  struct WalkRegs {
    const std::uint64_t* cr3;
    const std::uint64_t* efer;
    const std::uint64_t* eptp;
  };
  void wire(const WalkRegs& regs) { m_regs = regs; }

  /// The protection side of the context (SDM Vol. 3A, 4.6; Vol. 3C,
  /// 29.3): RFLAGS.AC (lifts SMAP for explicit supervisor accesses), PKRU,
  /// EPT mode-based execute control (secondary control 22) and
  /// page-modification logging ("enable PML" with EPT, 29.3.6: EPT walks log
  /// the dirty flags they set through TableMemory::pml_log).
  /// Memory encryption (models/mem_crypt.h) travels here too: the key-ID
  /// bits of the guest's private accesses and the C-bit of its page-table
  /// entries (both 0: not an encrypted guest).
  struct Protection {
    bool ac = false;
    std::uint32_t pkru = 0;
    bool mbec = false;
    bool pml = false;
    std::uint64_t crypt_key = 0;
    std::uint64_t c_bit = 0;
  };

  /// The translation context, given whenever one of its inputs changes:
  /// CR0, CR4, CPL 3, EPT in use (VMX non-root with "enable EPT"), the VPID
  /// of new entries (0 in root operation), the protection side above, and
  /// CR3 or the EPTP (wired above, read here for the tag). Only the tag and
  /// the hit-check masks are derived here; a walk derives the rest
  /// (walk_request). guest: in VMX non-root operation (as the events report
  /// it). Every VM exit and entry changes it: one call, one derivation.
  void set_context(std::uint64_t cr0, std::uint64_t cr4, bool user, bool ept, std::uint16_t vpid, bool guest,
                   const Protection& prot) {
    m_guest = guest;
    m_cr0 = cr0;
    m_cr4 = cr4;
    m_user = user;
    m_ept = ept;
    m_ac = prot.ac;
    m_pkru = prot.pkru;
    m_mbec = prot.mbec;
    m_pml = prot.pml;
    m_crypt_key = prot.crypt_key;
    m_c_bit = prot.c_bit;
    const bool paging = cr0 & crbits::kCr0Pg;
    m_translate = paging || ept;
    m_tag.vpid = vpid;
    m_tag.pcid =
        (paging && (cr4 & crbits::kCr4Pcide)) ? static_cast<std::uint16_t>(*m_regs.cr3 & crbits::kCr3PcidMask) : 0;
    m_tag.ep4ta = ept ? (*m_regs.eptp & ept::kAddrMask) : 0;
    update_checks();
    // What a hit is checked against has changed: the hit memo starts over.
    m_dtlb.new_epoch();
    m_itlb.new_epoch();
  }
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
  [[gnu::always_inline]] bool translate(std::uint64_t va, AccessType type, std::uint64_t& pa, std::uint64_t& now) {
    if (!m_translate) {
      pa = va;
      return true;
    }
    Tlb& l1 = type == AccessType::Execute ? m_itlb : m_dtlb;
    // The hit memo first: the 4 KiB L1 array's way that the last lookup of
    // this page and access type found (and permitted) in this epoch. Nothing
    // has been inserted or flushed since and the context is the same, so
    // the search would find that way again and permit the access; hit_at
    // counts and ages exactly as that search does.
    HitMemo& m = memo_of(va, type);
    if (m.vpn == va >> 12 && m.epoch == l1.epoch()) [[likely]] {
      pa = memo_hit(m, type, va, now);
      return true;
    }
    now += l1.latency();
    return translate_searching(va, type, pa, now, m);
  }

  /// The hit memo's entry of one page (translate).
  struct HitMemo {
    std::uint64_t vpn = 0;
    std::uint64_t epoch = 0;  // 0: never valid (epochs start at 1)
    std::uint64_t pfn = 0;    // of the entry (a 4 KiB page), unchanged within the epoch
    std::uint32_t index = 0;  // of the entry in the TLB's array
  };
  /// The memo entry that would serve translate(va, type) without a search,
  /// or null (translation off, or the page not remembered in this epoch).
  /// Changes nothing: a caller that goes on with the access then calls
  /// memo_hit(), which does exactly what translate() does on that hit. For
  /// the core's hit path, which decides before any effect whether the
  /// whole access can take it.
  const HitMemo* memo_probe(std::uint64_t va, AccessType type) {
    const HitMemo& m = memo_of(va, type);
    const Tlb& l1 = type == AccessType::Execute ? m_itlb : m_dtlb;
    return m_translate && m.vpn == va >> 12 && m.epoch == l1.epoch() ? &m : nullptr;
  }
  /// translate()'s hit on memo entry m (from memo_probe or translate): the
  /// L1 lookup latency added to `now`, the hit counted and aged; returns
  /// the physical address.
  std::uint64_t memo_hit(const HitMemo& m, AccessType type, std::uint64_t va, std::uint64_t& now) {
    Tlb& l1 = type == AccessType::Execute ? m_itlb : m_dtlb;
    now += l1.latency();
    l1.hit_at(m.index);
    return (m.pfn << 12) | (va & 0xFFF);
  }
  /// The last walk that faulted.
  const WalkResult& fault() const { return m_fault; }
  /// Walks started so far, and when the latest one started (after waiting
  /// for a page walker): the core lets an independent load's walk overlap
  /// its other work from that time on.
  std::uint64_t walks_started() const { return m_walks_started; }
  std::uint64_t last_walk_start() const { return m_last_walk_start; }
  unsigned page_walkers() const { return m_pool.walkers(); }

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
  /// bit). The entry's rights are those combined over every level of both
  /// dimensions (SDM Vol. 3A, 4.10.2.2), checked on each hit against masks
  /// derived from the context (update_checks): the rights the access needs
  /// (kEptDirty/kDirty for a write: with EPT A/D flags on, a translation
  /// cached by a read walks on a write, which sets the flag, SDM Vol. 3C,
  /// 29.3.5) and kUser where SMEP/SMAP forbid a user-mode page. Protection
  /// keys are looked at only when CR4.PKE is on.
  bool permits(const TlbEntry& e, AccessType type) const {
    const unsigned t = static_cast<unsigned>(type);
    if ((e.perms & m_need[t]) != m_need[t] || (e.perms & m_forbid[t])) return false;
    if (m_pke) [[unlikely]]
      return key_permits(e, type);
    return true;
  }
  bool key_permits(const TlbEntry& e, AccessType type) const {
    if (type == AccessType::Execute || !(e.perms & perm::kUser)) return true;
    const unsigned bits = (m_pkru >> (2 * e.pkey)) & 3;
    return !((bits & 1) || (type == AccessType::Write && (bits & 2) && (m_user || (m_cr0 & crbits::kCr0Wp))));
  }
  void update_checks() {
    const std::uint8_t u = m_user ? perm::kUser : 0;
    m_need[0] = static_cast<std::uint8_t>(perm::kEptRead | u);
    m_need[1] = static_cast<std::uint8_t>(perm::kEptWrite | perm::kEptDirty | perm::kWritable | perm::kDirty | u);
    m_need[2] = static_cast<std::uint8_t>(perm::kEptExecute | perm::kExecutable | u);
    const bool paging = m_cr0 & crbits::kCr0Pg;
    const bool smap = paging && !m_user && (m_cr4 & crbits::kCr4Smap) && !m_ac;
    const bool smep = paging && !m_user && (m_cr4 & crbits::kCr4Smep);
    m_forbid[0] = m_forbid[1] = smap ? perm::kUser : 0;
    m_forbid[2] = smep ? perm::kUser : 0;
    m_pke = paging && (m_cr4 & crbits::kCr4Pke);
  }
  bool translate_l2(std::uint64_t va, AccessType type, std::uint64_t& pa, std::uint64_t& now);
  bool walk_and_fill(std::uint64_t va, AccessType type, std::uint64_t& pa, std::uint64_t& now);
  void fill_l1(AccessType type, std::uint64_t va, std::uint64_t pa, std::uint8_t perms, bool global,
               unsigned shift, std::uint8_t pkey);
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
  static constexpr std::uint64_t kZero = 0;
  WalkRegs m_regs{&kZero, &kZero, &kZero};
  std::uint64_t m_cr0 = 0, m_cr4 = 0;
  bool m_user = false, m_ept = false;
  bool m_pml = false;
  std::uint64_t m_crypt_key = 0, m_c_bit = 0;
  bool m_translate = false;  // paging or EPT is on
  bool m_ac = false, m_mbec = false;
  std::uint32_t m_pkru = 0;
  // Hit checks by AccessType (update_checks): perm bits needed, bits forbidden.
  std::array<std::uint8_t, 3> m_need{}, m_forbid{};
  bool m_pke = false;        // CR4.PKE with paging: protection keys checked
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
  WalkerPool m_pool;
  std::uint64_t m_walks_started = 0, m_last_walk_start = 0;
  // Hit memo of the 4 KiB L1 DTLB and ITLB (translate): by access type,
  // direct mapped by page number; an entry holds while its TLB's epoch is
  // the one it was made in.
  static constexpr unsigned kMemoEntries = 16;
  std::array<HitMemo, 3 * kMemoEntries> m_memo{};
  HitMemo& memo_of(std::uint64_t va, AccessType type) {
    return m_memo[static_cast<unsigned>(type) * kMemoEntries + ((va >> 12) & (kMemoEntries - 1))];
  }
  /// translate() past its memo: the L1 arrays searched (a hit in the 4 KiB
  /// one is remembered in m), then the STLB and the walk.
  bool translate_searching(std::uint64_t va, AccessType type, std::uint64_t& pa, std::uint64_t& now, HitMemo& m);
};

}  // namespace vmx::mmu
