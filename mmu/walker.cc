#include "mmu/walker.h"

#include <string>

#include "mmu/x86_fault.h"

namespace vmx::mmu {

WalkStats::WalkStats(stats::Group* parent, const std::string& name) : stats::Group(parent, name) {
  for (unsigned l = 1; l <= 5; ++l) {
    guest_refs[l] = &make<stats::Counter>("guest_refs_l" + std::to_string(l), "references",
                                          "guest-dimension references at level " + std::to_string(l));
    ept_refs[l] = &make<stats::Counter>("ept_refs_l" + std::to_string(l), "references",
                                        "EPT-dimension references at level " + std::to_string(l));
  }
}

Walker::Walker(TableMemory& mem, WalkStats& stats, const WalkCaches& caches) : m_mem(mem), m_stats(stats) {
  for (unsigned l = 2; l <= 5; ++l) {
    m_guest_psc.add(caches.guest[l], l);
    m_ept_psc.add(caches.ept[l], l);
  }
  if (caches.nested && caches.nested->enabled()) m_nested = caches.nested;
}

// Where each dimension's references and flag writes are counted.
struct Walker::GuestSink {
  WalkStats& s;
  WalkResult& r;
  void ref(unsigned level) {
    ++r.refs;
    ++r.guest_refs;
    ++*s.guest_refs[level];
    ++s.guest_refs_total;
  }
  void ad_update() { ++s.ad_updates; }
  void psc_hit() { ++r.psc_hits; }
};

struct Walker::EptSink {
  WalkStats& s;
  WalkResult& r;
  void ref(unsigned level) {
    ++r.refs;
    ++*s.ept_refs[level];
    ++s.ept_refs_total;
  }
  void ad_update() {
    ++s.ad_updates;
    ++s.ept_ad_updates;
  }
  void psc_hit() { ++r.psc_hits; }
};

/// EPT as the guest walk's stage 2 (SDM Vol. 3C, 29.3.2). With EPT A/D
/// flags on, guest paging-structure accesses are EPT writes (29.3.5): they
/// need write permission and set the dirty flag of the EPT entry mapping the
/// table page.
struct Walker::EptStage2 {
  Walker& w;
  const WalkRequest& req;
  WalkResult& r;
  AccessType table_access;
  static constexpr bool active() { return true; }
  std::uint8_t table_need() const { return table_access == AccessType::Write ? ept::kWrite : ept::kRead; }
  std::uint8_t write_right() const { return ept::kWrite; }
  /// Guest tables of an encrypted guest are always private. EPT's rights
  /// are checked by this translation, before any line is decrypted.
  Stage2Step table(std::uint64_t gpa, std::uint32_t&) {
    Stage2Step s = w.ept_translate(req, gpa & ~req.c_bit, table_access, false, r);
    s.hpa |= req.crypt_key;
    return s;
  }
  /// The guest page's U/S (the AND over the guest levels) says whether the
  /// linear address is user-mode, which picks EPT's execute right with MBEC.
  Stage2Step final(std::uint64_t gpa, AccessType type, std::uint8_t s1_rights, std::uint32_t&) {
    Stage2Step s = w.ept_translate(req, gpa & ~req.c_bit, type, (s1_rights & perm::kUser) != 0, r);
    if (gpa & req.c_bit) s.hpa |= req.crypt_key;
    return s;
  }
};

namespace {
// What a cached guest-physical translation must hold to serve an access: the
// permission, and for a write the leaf's dirty flag (or EPT A/D off), so that
// a write after a read still walks and sets it (SDM Vol. 3C, 29.3.5).
std::uint8_t ept_need_cached(AccessType type, bool user_page) {
  return type == AccessType::Write ? static_cast<std::uint8_t>(ept::kWrite | kEptLeafDirty)
                                   : EptFormat::need(type, user_page);
}
}  // namespace

// The nested TLB is consulted first; a cached translation is used only when
// it permits the access (otherwise the EPT walk decides, as for the TLBs).
Stage2Step Walker::ept_translate(const WalkRequest& req, std::uint64_t gpa, AccessType type, bool user_page,
                                 WalkResult& r) {
  NestedTlb* ntlb = m_nested;
  if (!ntlb) return ept_walk(req, gpa, type, user_page, r);
  const std::uint64_t ep4ta = req.eptp & ept::kAddrMask;
  r.cycles += ntlb->latency();
  const std::uint8_t need = ept_need_cached(type, user_page);
  if (const NestedTlbEntry* e = ntlb->lookup(gpa, ep4ta); e && (e->perms & need) == need) {
    ++r.nested_hits;
    return Stage2Step{{}, ntlb->translate(*e, gpa), e->perms, e->shift};
  }
  Stage2Step s = ept_walk(req, gpa, type, user_page, r);
  if (!s.fault) ntlb->insert(gpa, s.hpa, s.perms, s.shift, ep4ta);
  return s;
}

// SDM Vol. 3C, 29.3.2: the EPT walk, the walk loop over EptFormat with no
// stage 2. EPT accessed and dirty flags (29.3.5) are set only by a walk that
// permits the access (the SDM does not say whether a walk ending in an EPT
// violation sets them; Intel sets guest A/D flags only after a successful
// walk, and this follows that).
Stage2Step Walker::ept_walk(const WalkRequest& req, std::uint64_t gpa, AccessType type, bool user_page,
                            WalkResult& r) {
  const EptFormat fmt{req.ept_mode, ept::eptp_ad(req.eptp), req.mbec,
                        req.pml && ept::eptp_ad(req.eptp)};
  WalkAccess a;
  a.type = type;
  a.user = user_page;
  IdentityStage2 none;
  EptSink sink{m_stats, r};
  WalkOut o;
  const std::uint64_t root = req.eptp & ept::kAddrMask;
  const TlbTag tag{0, 0, root};
  Stage2Step s;
  s.fault = walk(m_mem, fmt, m_ept_psc, tag, root, gpa, a, none, sink, o, r.cycles);
  s.hpa = o.hpa;
  s.perms = s.fault ? s.fault.perms : o.rights;
  s.shift = o.shift;
  return s;
}

void Walker::fail(const WalkRequest& req, const WalkFault& f, WalkResult& r) {
  r.fault = f;
  if (f.stage == WalkFault::Stage::One) {
    r.status = WalkResult::Status::PageFault;
    r.error_code = pf_error_code(f, req.user, req.nxe, req.smep);
    ++m_stats.page_faults;
  } else {
    r.fault_gpa = f.address & ~req.c_bit;  // the C-bit is no part of the guest-physical address
    r.gpa = r.fault_gpa;
    if (f.kind == WalkFault::Kind::LogFull) {
      r.status = WalkResult::Status::PmlFull;  // exit reason 62, counted by the core
    } else if (f.kind == WalkFault::Kind::Reserved) {
      r.status = WalkResult::Status::EptMisconfig;
      ++m_stats.ept_misconfigs;
    } else {
      r.status = WalkResult::Status::EptViolation;
      r.exit_qualification = ept_qualification(f, req.paging, ept::eptp_ad(req.eptp), req.mbec);
      ++m_stats.ept_violations;
    }
  }
  finish(r);
}

void Walker::finish(WalkResult& r) {
  ++m_stats.walks_all;
  m_stats.refs += r.refs;
  m_stats.cycles.sample(r.cycles);
  m_stats.refs_per_walk.sample(r.refs);
  m_stats.guest_refs_per_walk.sample(r.guest_refs);
  m_stats.ept_refs_per_walk.sample(static_cast<std::uint64_t>(r.refs - r.guest_refs));
  m_stats.psc_hits += r.psc_hits;
  m_stats.nested_tlb_hits += r.nested_hits;
}

WalkResult Walker::translate(const WalkRequest& req) {
  WalkResult r;
  constexpr std::uint8_t kAllGuest = perm::kWritable | perm::kUser | perm::kExecutable | perm::kDirty;
  if (!req.paging) {
    // Paging off in the guest: the linear address is guest-physical.
    ++m_stats.ept_only_walks;
    std::uint64_t hpa = req.la;
    std::uint8_t ept_perms = perm::kAllEpt | perm::kEptDirty;
    unsigned shift = 12;
    if (req.ept) {
      // With paging off every linear address is a supervisor-mode address
      // (assumption for MBEC: the SDM defines user-mode addresses by U/S).
      Stage2Step e = ept_translate(req, req.la, req.type, false, r);
      if (e.fault) {
        WalkFault f = e.fault;
        f.stage = WalkFault::Stage::Two;
        f.final = true;
        f.address = req.la;
        fail(req, f, r);
        return r;
      }
      hpa = e.hpa | req.crypt_key;  // paging off: every access of an encrypted guest is private
      ept_perms = static_cast<std::uint8_t>((e.perms & (7 | kEptLeafDirty)) << 4);
      shift = e.shift;
    }
    r.page_shift = static_cast<std::uint8_t>(shift);
    r.perms = static_cast<std::uint8_t>(kAllGuest | ept_perms);
    r.gpa = req.la;
    r.pa = hpa;
    finish(r);
    return r;
  }

  ++m_stats.walks;
  const Ia32eFormat fmt{req.mode, req.nxe};
  WalkAccess a;
  a.type = req.type;
  a.execute = req.type == AccessType::Execute;
  a.user = req.user;
  a.wp = req.wp;
  a.smep = req.smep;
  a.smap = req.smap;
  a.pke = req.pke;
  a.pkru = req.pkru;
  GuestSink sink{m_stats, r};
  WalkOut o;
  WalkFault f;
  const std::uint64_t root = req.cr3 & pte::kAddrMask;
  if (req.ept) {
    EptStage2 s2{*this, req, r, ept::eptp_ad(req.eptp) ? AccessType::Write : AccessType::Read};
    f = walk(m_mem, fmt, m_guest_psc, req.tag, root, req.la, a, s2, sink, o, r.cycles);
  } else {
    IdentityStage2 none{static_cast<std::uint8_t>(ept::kPermMask)};
    f = walk(m_mem, fmt, m_guest_psc, req.tag, root, req.la, a, none, sink, o, r.cycles);
  }
  if (f) {
    fail(req, f, r);
    return r;
  }
  r.global = req.pge && (o.leaf_entry & pte::kGlobal);  // SDM Vol. 3A, 4.10.2.4
  r.pkey = static_cast<std::uint8_t>((o.leaf_entry >> pte::kPkeyShift) & 15);
  std::uint8_t s2 = o.s2_perms;
  // With MBEC the TLB caches the execute right that applies to this page:
  // user-execute for a user-mode address (its U/S is fixed per entry).
  if (req.mbec && (o.rights & perm::kUser))
    s2 = static_cast<std::uint8_t>((s2 & ~ept::kExecute) | ((s2 & EptFormat::kUserExec) >> 2));
  const std::uint8_t ept_perms = req.ept ? static_cast<std::uint8_t>((s2 & (7 | kEptLeafDirty)) << 4)
                                         : static_cast<std::uint8_t>(perm::kAllEpt | perm::kEptDirty);
  r.page_shift = o.shift;
  r.perms = static_cast<std::uint8_t>((o.rights & kAllGuest) | ept_perms);
  r.gpa = o.out & ~req.c_bit;
  r.pa = o.hpa;
  finish(r);
  return r;
}

}  // namespace vmx::mmu
