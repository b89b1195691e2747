#include "mmu/mmu.h"

#include <algorithm>

namespace vmx::mmu {

Mmu::Mmu(const MmuParams& p, TableMemory& mem, stats::Group* core_stats)
    : m_walk_stats(core_stats),
      m_psc_group(&m_walk_stats, "psc", "paging-structure caches"),
      m_psc_guest_group(&m_psc_group, "guest", "guest dimension (VPID/PCID/EP4TA-tagged)"),
      m_psc_ept_group(&m_psc_group, "ept", "EPT dimension (EP4TA-tagged)"),
      m_gpsc_pml5e(p.psc.guest.pml5e, 5, &m_psc_guest_group, "pml5e"),
      m_gpsc_pml4e(p.psc.guest.pml4e, 4, &m_psc_guest_group, "pml4e"),
      m_gpsc_pdpte(p.psc.guest.pdpte, 3, &m_psc_guest_group, "pdpte"),
      m_gpsc_pde(p.psc.guest.pde, 2, &m_psc_guest_group, "pde"),
      m_epsc_pml5e(p.psc.ept.pml5e, 5, &m_psc_ept_group, "pml5e"),
      m_epsc_pml4e(p.psc.ept.pml4e, 4, &m_psc_ept_group, "pml4e"),
      m_epsc_pdpte(p.psc.ept.pdpte, 3, &m_psc_ept_group, "pdpte"),
      m_epsc_pde(p.psc.ept.pde, 2, &m_psc_ept_group, "pde"),
      m_nested_tlb(p.nested_tlb, &m_walk_stats, "nested_tlb"),
      m_walker(mem, m_walk_stats, walk_caches()),
      m_tlb_group(core_stats, "tlb"),
      m_dtlb(p.dtlb, 12, &m_tlb_group, "dtlb"),
      m_dtlb_2m(p.dtlb_2m, 21, &m_tlb_group, "dtlb_2m"),
      m_dtlb_1g(p.dtlb_1g, 30, &m_tlb_group, "dtlb_1g"),
      m_itlb(p.itlb, 12, &m_tlb_group, "itlb"),
      m_itlb_2m(p.itlb_2m, 21, &m_tlb_group, "itlb_2m"),
      m_stlb(p.stlb, {12, 21}, &m_tlb_group, "stlb"),
      m_stlb_1g(p.stlb_1g, 30, &m_tlb_group, "stlb_1g"),
      m_stlb_latency(std::max(p.stlb.latency, p.stlb_1g.latency)),
      m_tlbs{&m_dtlb, &m_dtlb_2m, &m_dtlb_1g, &m_itlb, &m_itlb_2m, &m_stlb, &m_stlb_1g},
      m_pool(p.page_walkers, core_stats) {}

WalkCaches Mmu::walk_caches() {
  WalkCaches c;
  c.guest = {nullptr, nullptr, &m_gpsc_pde, &m_gpsc_pdpte, &m_gpsc_pml4e, &m_gpsc_pml5e};
  c.ept = {nullptr, nullptr, &m_epsc_pde, &m_epsc_pdpte, &m_epsc_pml4e, &m_epsc_pml5e};
  c.nested = &m_nested_tlb;
  return c;
}

template <class F>
void Mmu::for_each_tlb(F f) {
  for (Tlb* t : m_tlbs) f(*t);
}

template <class F>
void Mmu::for_each_guest_psc(F f) {
  for (Psc* p : {&m_gpsc_pde, &m_gpsc_pdpte, &m_gpsc_pml4e, &m_gpsc_pml5e})
    if (p->enabled()) f(*p);
}

template <class F>
void Mmu::for_each_ept_psc(F f) {
  for (Psc* p : {&m_epsc_pde, &m_epsc_pdpte, &m_epsc_pml4e, &m_epsc_pml5e})
    if (p->enabled()) f(*p);
}

void Mmu::tlb_missed(unsigned level, std::uint64_t va, AccessType type) {
  if (level == 1) {
    if (type == AccessType::Execute) ++m_tlb_group.l1i_misses; else ++m_tlb_group.l1d_misses;
  } else {
    ++m_tlb_group.l2_misses;
  }
  if (m_events->wants(events::kTlbMiss)) [[unlikely]]
    m_events->tlb_miss({va, static_cast<std::uint8_t>(level), type == AccessType::Execute, m_guest});
}

static_assert(static_cast<int>(events::WalkOutcome::PmlFull) == static_cast<int>(WalkResult::Status::PmlFull),
              "events::WalkOutcome mirrors WalkResult::Status");

void Mmu::walk_completed(std::uint64_t va, const WalkResult& r, std::uint64_t start) {
  if (m_events->wants(events::kWalk)) [[unlikely]]
    m_events->walk({va, start, r.cycles, r.refs, r.guest_refs, r.psc_hits, r.nested_hits,
                    static_cast<events::WalkOutcome>(r.status), m_guest});
}

bool Mmu::translate_searching(std::uint64_t va, AccessType type, std::uint64_t& pa, std::uint64_t& now,
                              HitMemo& m) {
  const bool fetch = type == AccessType::Execute;
  Tlb& l1 = fetch ? m_itlb : m_dtlb;
  if (const TlbEntry* e = l1.lookup(va, m_tag); e && permits(*e, type)) {
    m = {va >> 12, l1.epoch(), e->pfn, l1.index_of(e)};
    pa = Tlb::translate(*e, va);
    return true;
  }
  Tlb& l1_2m = fetch ? m_itlb_2m : m_dtlb_2m;
  if (const TlbEntry* e = l1_2m.lookup(va, m_tag); e && permits(*e, type)) {
    pa = Tlb::translate(*e, va);
    return true;
  }
  if (!fetch) {
    if (const TlbEntry* e = m_dtlb_1g.lookup(va, m_tag); e && permits(*e, type)) {
      pa = Tlb::translate(*e, va);
      return true;
    }
  }
  return translate_l2(va, type, pa, now);
}

bool Mmu::translate_l2(std::uint64_t va, AccessType type, std::uint64_t& pa, std::uint64_t& now) {
  tlb_missed(1, va, type);
  now += m_stlb_latency;
  const TlbEntry* e = m_stlb.lookup(va, m_tag);
  if (!e || !permits(*e, type)) e = m_stlb_1g.lookup(va, m_tag);
  if (e && permits(*e, type)) {
    pa = Tlb::translate(*e, va);
    fill_l1(type, va, pa, e->perms, e->global, e->shift, e->pkey);
    return true;
  }
  tlb_missed(2, va, type);
  return walk_and_fill(va, type, pa, now);
}

// Fills go to the arrays of the translation's effective page size: the
// smaller of the guest and EPT page sizes.
void Mmu::fill_l1(AccessType type, std::uint64_t va, std::uint64_t pa, std::uint8_t perms, bool global,
                  unsigned shift, std::uint8_t pkey) {
  if (type == AccessType::Execute) {
    // Skylake's ITLB has no 1 GiB array: such code pages are held as the
    // 2 MiB piece that was fetched from.
    if (shift == 12) m_itlb.insert(va, pa, perms, global, m_tag, 0, pkey);
    else m_itlb_2m.insert(va, pa, perms, global, m_tag, 0, pkey);
    return;
  }
  if (shift == 12) m_dtlb.insert(va, pa, perms, global, m_tag, 0, pkey);
  else if (shift == 21) m_dtlb_2m.insert(va, pa, perms, global, m_tag, 0, pkey);
  else m_dtlb_1g.insert(va, pa, perms, global, m_tag, 0, pkey);
}

WalkRequest Mmu::walk_request(std::uint64_t va, AccessType type) const {
  WalkRequest r;
  r.la = va;
  r.type = type;
  r.user = m_user;
  r.paging = m_cr0 & crbits::kCr0Pg;
  r.cr3 = *m_regs.cr3;
  r.mode.levels = (m_cr4 & crbits::kCr4La57) ? 5 : 4;
  r.mode.largest_leaf = 3;
  r.wp = m_cr0 & crbits::kCr0Wp;
  r.nxe = *m_regs.efer & crbits::kEferNxe;
  r.smep = m_cr4 & crbits::kCr4Smep;
  r.smap = (m_cr4 & crbits::kCr4Smap) && !m_ac;
  r.pke = m_pke;
  r.pkru = m_pkru;
  r.mbec = m_mbec && m_ept;
  r.pge = m_cr4 & crbits::kCr4Pge;
  r.ept = m_ept;
  const std::uint64_t eptp = *m_regs.eptp;
  r.eptp = eptp;
  r.pml = m_pml;
  r.crypt_key = m_crypt_key;
  r.c_bit = m_c_bit;
  r.ept_mode.levels = static_cast<std::uint8_t>(ept::eptp_levels(eptp));
  r.ept_mode.largest_leaf = 3;
  r.tag = m_tag;
  return r;
}

// With page walkers, the walk starts when one is free (the access waits
// until then; `now` is the core's clock, which the walk's references are
// timed from) and keeps it busy for its cycles.
bool Mmu::walk_and_fill(std::uint64_t va, AccessType type, std::uint64_t& pa, std::uint64_t& now) {
  if (m_pool.walkers()) now = m_pool.begin(now);
  const std::uint64_t start = now;
  const WalkResult r = m_walker.translate(walk_request(va, type));
  walk_completed(va, r, start);
  now += r.cycles;
  if (m_pool.walkers()) m_pool.end(start, now);
  ++m_walks_started;
  m_last_walk_start = start;
  if (r.status != WalkResult::Status::Ok) {
    m_fault = r;
    return false;
  }
  if (r.page_shift == 30) m_stlb_1g.insert(va, r.pa, r.perms, r.global, m_tag, 0, r.pkey);
  else m_stlb.insert(va, r.pa, r.perms, r.global, m_tag, r.page_shift, r.pkey);
  fill_l1(type, va, r.pa, r.perms, r.global, r.page_shift, r.pkey);
  pa = r.pa;
  return true;
}

// MOV to CR3 (SDM Vol. 3A, 4.10.4.1): non-global translations of the
// current (VPID, PCID) go, and every paging-structure-cache entry of that
// PCID (PCID 0 when CR4.PCIDE = 0).
void Mmu::mov_to_cr3(bool pcide) {
  const std::uint16_t vpid = m_tag.vpid, pcid = m_tag.pcid;
  if (pcide) for_each_tlb([&](Tlb& t) { t.flush_pcid(vpid, pcid); });
  else for_each_tlb([&](Tlb& t) { t.flush_non_global(vpid); });
  for_each_guest_psc([&](Psc& p) { p.flush_pcid(vpid, pcid); });
}

// MOV to CR4 changing PGE, PCIDE, SMEP or LA57: all TLB entries, global ones
// included, and all paging-structure-cache entries of the current VPID
// (SDM Vol. 3A, 4.10.4.1).
void Mmu::cr4_paging_change() {
  const std::uint16_t vpid = m_tag.vpid;
  for_each_tlb([&](Tlb& t) { t.flush_vpid(vpid); });
  for_each_guest_psc([&](Psc& p) { p.flush_vpid(vpid); });
}

// INVLPG (SDM Vol. 3A, 4.10.4.1): the page's translations for the current
// PCID and global ones, and all paging-structure-cache entries of the
// current PCID whatever linear address they are for.
// Only the leaf-level caches are invalidated: the nested TLB's entries for
// gpa, and as INVLPG does for the linear address, its TLB entries and the
// PCID's guest paging-structure-cache entries (which hold the EPT rights of
// the guest tables they lead to). The EPT paging-structure caches hold
// non-leaf entries, which the hypervisor's EPT never restricts; they stay.
void Mmu::ept_violation(std::uint64_t va, std::uint64_t gpa) {
  m_nested_tlb.flush_gpa(gpa, m_tag.ep4ta);
  invlpg(va);
}

void Mmu::invlpg(std::uint64_t va) {
  const std::uint16_t vpid = m_tag.vpid, pcid = m_tag.pcid;
  for_each_tlb([&](Tlb& t) { t.flush_invlpg(va, vpid, pcid); });
  for_each_guest_psc([&](Psc& p) { p.flush_pcid(vpid, pcid); });
}

// INVPCID scopes (SDM Vol. 3A, 4.10.4.1), for the current VPID and every
// EP4TA (Vol. 3C, 29.4.3.1). Paging-structure-cache entries are never
// global: type 0 removes every entry of the PCID (as INVLPG; invalidating
// entries for other linear addresses is permitted), 1 those of the PCID, 2
// and 3 those of every PCID. Guest-physical mappings (EPT-dimension caches,
// the nested TLB) are not affected.
void Mmu::invpcid(unsigned type, std::uint16_t pcid, std::uint64_t la) {
  const std::uint16_t vpid = m_tag.vpid;
  switch (type) {
    case 0:
      for_each_tlb([&](Tlb& t) { t.flush_address_pcid(la, vpid, pcid); });
      for_each_guest_psc([&](Psc& p) { p.flush_pcid(vpid, pcid); });
      break;
    case 1:
      for_each_tlb([&](Tlb& t) { t.flush_pcid(vpid, pcid); });
      for_each_guest_psc([&](Psc& p) { p.flush_pcid(vpid, pcid); });
      break;
    case 2:
      for_each_tlb([&](Tlb& t) { t.flush_vpid(vpid); });
      for_each_guest_psc([&](Psc& p) { p.flush_vpid(vpid); });
      break;
    default:
      for_each_tlb([&](Tlb& t) { t.flush_non_global(vpid); });
      for_each_guest_psc([&](Psc& p) { p.flush_vpid(vpid); });
      break;
  }
}

// SDM Vol. 3C, 31.3 INVVPID: 0 individual address, 1 single context, 2 all
// contexts, 3 single context retaining globals. Paging-structure-cache
// entries are not per address and never global: types 0, 1 and 3 remove all
// of the VPID's (type 0 may invalidate more than the address, 29.4.3.3).
bool Mmu::invvpid(unsigned type, std::uint16_t vpid, std::uint64_t la) {
  switch (type) {
    case 0:
      for_each_tlb([&](Tlb& t) { t.flush_address(la, vpid); });
      for_each_guest_psc([&](Psc& p) { p.flush_vpid(vpid); });
      return true;
    case 1:
      for_each_tlb([&](Tlb& t) { t.flush_vpid(vpid); });
      for_each_guest_psc([&](Psc& p) { p.flush_vpid(vpid); });
      return true;
    case 2:
      // All VPIDs except 0 (29.4.3.3).
      for_each_tlb([](Tlb& t) { t.flush_nonzero_vpids(); });
      for_each_guest_psc([](Psc& p) { p.flush_nonzero_vpids(); });
      return true;
    case 3:
      for_each_tlb([&](Tlb& t) { t.flush_non_global(vpid); });
      for_each_guest_psc([&](Psc& p) { p.flush_vpid(vpid); });
      return true;
    default:
      return false;
  }
}

// SDM Vol. 3C, 29.4.3.1: type 1 single-context, type 2 all-context. Both
// remove combined mappings (TLB entries and guest-dimension paging-
// structure-cache entries tagged with the EP4TA) and guest-physical mappings
// (the EPT-dimension caches and the nested TLB). Linear mappings, cached
// with EPT off, are not associated with any EP4TA and stay.
bool Mmu::invept(unsigned type, std::uint64_t eptp) {
  if (type == 1) {
    const std::uint64_t ep4ta = eptp & ept::kAddrMask;
    for_each_tlb([&](Tlb& t) { t.flush_ep4ta(ep4ta); });
    for_each_guest_psc([&](Psc& p) { p.flush_ep4ta(ep4ta); });
    for_each_ept_psc([&](Psc& p) { p.flush_ep4ta(ep4ta); });
    if (m_nested_tlb.enabled()) m_nested_tlb.flush_ep4ta(ep4ta);
    return true;
  }
  if (type == 2) {
    for_each_tlb([](Tlb& t) { t.flush_all_ep4ta(); });
    for_each_guest_psc([](Psc& p) { p.flush_all_ep4ta(); });
    for_each_ept_psc([](Psc& p) { p.flush_all(); });
    if (m_nested_tlb.enabled()) m_nested_tlb.flush_all();
    return true;
  }
  return false;
}

void Mmu::flush_vpid0() {
  for_each_tlb([](Tlb& t) { t.flush_vpid(0); });
  for_each_guest_psc([](Psc& p) { p.flush_vpid(0); });
}

}  // namespace vmx::mmu
