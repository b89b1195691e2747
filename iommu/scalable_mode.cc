// Scalable-mode DMA remapping (Intel VT-d 3.x): scalable-mode root and
// context entries, PASID directory and table, the PASID cache, and the
// first-level (IA-32e) walk, alone or nested over the second level. The
// second-level walk and the caches shared with legacy mode are in iommu.cc.
#include <array>

#include "iommu/iommu.h"
#include "mmu/paging.h"

namespace vmx::iommu {

namespace pte = mmu::pte;

namespace {
bool uses_first_level(unsigned pgtt) {
  return pgtt == pasid_entry::kPgttFirstLevel || pgtt == pasid_entry::kPgttNested;
}
bool uses_second_level(unsigned pgtt) {
  return pgtt == pasid_entry::kPgttSecondLevel || pgtt == pasid_entry::kPgttNested;
}
/// First-level input addresses must be canonical for the paging mode (VT-d
/// 3.6: bits 63:48, or 63:57 with 5-level paging, copies of the top bit).
bool canonical(std::uint64_t a, unsigned levels) {
  const unsigned bits = mmu::level_shift(levels) + 9;  // 48 or 57
  const std::int64_t s = static_cast<std::int64_t>(a << (64 - bits)) >> (64 - bits);
  return static_cast<std::uint64_t>(s) == a;
}
/// PASID-cache key and set index: requester ID and PASID.
std::uint64_t pasid_key(std::uint16_t rid, std::uint32_t pasid) { return (std::uint64_t(rid) << 20) | pasid; }
}  // namespace

// 9.2 and 9.4: a scalable-mode root entry has a context-table pointer per
// half of the device:function space; a scalable-mode context entry is 32
// bytes (one reference; bits 255:128 are reserved and not read).
FaultReason Iommu::lookup_sm_context(std::uint16_t rid, CachedContext& out, std::uint32_t& cycles) {
  cycles += m_params.context_cache.latency;
  if (const CachedContext* c = m_ctx.find(rid, rid, [](const CachedContext& e) { return e.scalable; })) {
    ++m_stats.context_hits;
    out = *c;
    return FaultReason::kNone;
  }
  ++m_stats.context_misses;

  const unsigned devfn = rid_devfn(rid);
  const bool upper = devfn >= smctx::kEntriesPerTable;
  const std::uint64_t half =
      m_mem.read_entry(m_rtaddr + rid_bus(rid) * root::kEntrySize + (upper ? 8 : 0), cycles);
  ++m_stats.refs_root;
  if (!(half & smroot::kPresent)) return FaultReason::kSmRootNotPresent;

  const std::uint64_t ce = (half & smroot::kCtpMask) + (devfn % smctx::kEntriesPerTable) * smctx::kEntrySize;
  const std::uint64_t w0 = m_mem.read_entry(ce, cycles);
  std::uint32_t same_reference = 0;
  const std::uint64_t w1 = m_mem.read_entry(ce + 8, same_reference);
  ++m_stats.refs_context;
  if (!(w0 & smctx::kPresent)) return FaultReason::kSmContextNotPresent;

  bool evicted = false;
  CachedContext& c = m_ctx.place(rid, rid, [](const CachedContext& e) { return e.scalable; }, evicted);
  c = CachedContext{};
  c.rid = rid;
  c.scalable = true;
  c.fpd = (w0 & smctx::kFaultProcessingDisable) != 0;
  c.paside = (w0 & smctx::kPasidEnable) != 0;
  c.pdts = static_cast<std::uint8_t>(smctx::pdts(w0));
  c.pasid_dir = w0 & smctx::kPasidDirMask;
  c.rid_pasid = static_cast<std::uint32_t>(w1 & smctx::kRidPasidMask);
  c.rid_priv = (w1 & smctx::kRidPriv) != 0;
  c.valid = true;
  out = c;
  return FaultReason::kNone;
}

// 9.5 and 9.6: PASID[19:6] selects the directory entry, PASID[5:0] the
// 64-byte PASID-table entry (one reference; its words 3 to 7 hold nothing
// this model uses and are not read).
FaultReason Iommu::lookup_pasid(const CachedContext& c, std::uint32_t pasid, CachedPasid& out, bool& fpd,
                                std::uint32_t& cycles) {
  cycles += m_params.pasid_cache.latency;
  const std::uint64_t key = pasid_key(c.rid, pasid);
  if (const CachedPasid* p = m_pasid.find(key, key, [](const CachedPasid&) { return true; })) {
    ++m_stats.pasid_hits;
    out = *p;
    return FaultReason::kNone;
  }
  ++m_stats.pasid_misses;

  const std::uint64_t de = m_mem.read_entry(c.pasid_dir + (pasid >> pasid_dir::kPasidShift) * pasid_dir::kEntrySize,
                                            cycles);
  ++m_stats.refs_pasid_dir;
  if (!(de & pasid_dir::kPresent)) return FaultReason::kSmPasidDirNotPresent;
  fpd = fpd || (de & pasid_dir::kFaultProcessingDisable) != 0;

  const std::uint64_t pa = (de & pasid_dir::kTableMask) +
                           (pasid % pasid_entry::kEntriesPerTable) * pasid_entry::kEntrySize;
  PasidEntry e;
  e.w[0] = m_mem.read_entry(pa, cycles);
  std::uint32_t same_reference = 0;
  e.w[1] = m_mem.read_entry(pa + 8, same_reference);
  e.w[2] = m_mem.read_entry(pa + 16, same_reference);
  ++m_stats.refs_pasid_entry;
  if (!(e.w[0] & pasid_entry::kPresent)) return FaultReason::kSmPasidNotPresent;
  fpd = fpd || (e.w[0] & pasid_entry::kFaultProcessingDisable) != 0;

  // Invalid programming (SPT.4, 5Bh): a reserved PGTT, an unsupported
  // second-level width (SAGAW: 39, 48, 57 bits) or a reserved FLPM.
  const unsigned pgtt = pasid_entry::pgtt(e), aw = pasid_entry::aw(e), flpm = pasid_entry::flpm(e);
  if (pgtt < pasid_entry::kPgttFirstLevel || pgtt > pasid_entry::kPgttPassThrough)
    return FaultReason::kSmPasidInvalid;
  if (uses_second_level(pgtt) && (aw < 1 || aw > 3)) return FaultReason::kSmPasidInvalid;
  if (uses_first_level(pgtt) && flpm > 1) return FaultReason::kSmPasidInvalid;

  bool evicted = false;
  CachedPasid& p = m_pasid.place(key, key, [](const CachedPasid&) { return true; }, evicted);
  p = CachedPasid{};
  p.rid = c.rid;
  p.pasid = pasid;
  p.did = pasid_entry::did(e);
  p.pgtt = static_cast<std::uint8_t>(pgtt);
  p.aw = static_cast<std::uint8_t>(aw);
  p.fl_mode = mmu::PagingMode{static_cast<std::uint8_t>(4 + flpm), 3};
  p.slptptr = e.w[0] & pasid_entry::kSlptptrMask;
  p.flptr = e.w[2] & pasid_entry::kFlptrMask;
  p.slade = (e.w[0] & pasid_entry::kSlade) != 0;
  p.sre = (e.w[2] & pasid_entry::kSre) != 0;
  p.wpe = (e.w[2] & pasid_entry::kWpe) != 0;
  p.fpd = fpd;
  p.valid = true;
  out = p;
  return FaultReason::kNone;
}

TranslateResult Iommu::translate_sm(const DmaRequest& req, std::uint64_t& hpa, std::uint32_t& cycles) {
  CachedContext c;
  FaultReason r = lookup_sm_context(req.requester_id, c, cycles);
  if (r != FaultReason::kNone) return fault(req, 0, r, FaultStage::kContext, false);

  // Requests without PASID take RID_PASID and RID_PRIV from the context
  // entry (9.4); requests with one need PASIDE and a PASID the directory
  // covers (SCT.6, SCT.7).
  const std::uint32_t pasid = req.has_pasid ? (req.pasid & 0xFFFFF) : c.rid_pasid;
  const bool privileged = req.has_pasid ? req.privileged : c.rid_priv;
  if (req.has_pasid && !c.paside) return fault(req, pasid, FaultReason::kSmPasidDisabled, FaultStage::kContext, c.fpd);
  if (pasid >= smctx::max_pasids(c.pdts))
    return fault(req, pasid, FaultReason::kSmPasidTooLarge, FaultStage::kContext, c.fpd);

  CachedPasid p;
  bool fpd = c.fpd;
  r = lookup_pasid(c, pasid, p, fpd, cycles);
  if (r != FaultReason::kNone) return fault(req, pasid, r, FaultStage::kContext, fpd);
  fpd = fpd || p.fpd;

  if (p.pgtt == pasid_entry::kPgttPassThrough) {
    ++m_stats.passthrough;
    hpa = req.address;
    return {};
  }
  const bool fl = uses_first_level(p.pgtt);
  // Supervisor requests need SRE in first-level translation (SPT.6, 5Dh).
  if (fl && privileged && !p.sre)
    return fault(req, pasid, FaultReason::kSmSupervisorDisabled, FaultStage::kContext, fpd);
  if (fl && !canonical(req.address, p.fl_mode.levels))
    return fault(req, pasid, FaultReason::kSmNonCanonical, FaultStage::kFirstLevel, fpd);
  if (!fl && (req.address >> ctx::aw_bits(p.aw)) != 0)
    return fault(req, pasid, FaultReason::kSmAddressBeyondAw, FaultStage::kSecondLevel, fpd);

  // The IOTLB, tagged by domain ID and PASID. A hit serves the request only
  // with every right it needs (for a write also no dirty-flag update).
  const bool write = req.access == DmaAccess::Write;
  const mmu::TlbTag tag = pasid_tag(p.did, pasid);
  std::uint8_t need = write ? static_cast<std::uint8_t>(iotlb_perm::kWrite | iotlb_perm::kDirty) : iotlb_perm::kRead;
  if (!privileged) need |= iotlb_perm::kUser;
  if (req.execute) need |= iotlb_perm::kExecute;
  cycles += m_iotlb.latency();
  if (const mmu::TlbEntry* e = m_iotlb.lookup(req.address, tag); e && (e->perms & need) == need) {
    hpa = mmu::Tlb::translate(*e, req.address);
    return {};
  }

  ++m_stats.walks;
  m_walk_refs = 0;
  const std::uint32_t walk_start = cycles;
  Walked w;
  FaultStage stage = FaultStage::kNone;
  if (fl) {
    r = fl_walk(p, tag, req, privileged, w, stage, cycles);
  } else {
    const mmu::Stage2Step s = sl_walk(sl_domain(p.did, p.slptptr, p.aw, p.slade), req.address, write, cycles);
    if (!s.fault) {
      w.hpa = s.hpa;
      w.shift = s.shift;
      w.perms = static_cast<std::uint8_t>(iotlb_perm::kUser | iotlb_perm::kExecute |
                                          ((s.perms & sl::kRead) ? iotlb_perm::kRead : 0) |
                                          ((s.perms & sl::kWrite) ? iotlb_perm::kWrite : 0) |
                                          ((s.perms & kSlLeafDirty) ? iotlb_perm::kDirty : 0));
    } else {
      stage = FaultStage::kSecondLevel;
      r = s.fault.kind == mmu::WalkFault::Kind::Reserved ? FaultReason::kSmSlReserved
          : write                                         ? FaultReason::kSmWriteDenied
                                                          : FaultReason::kSmReadDenied;
    }
  }
  m_stats.walk_cycles += cycles - walk_start;
  m_stats.walk_refs.sample(m_walk_refs);
  if (r != FaultReason::kNone) return fault(req, pasid, r, stage, fpd);
  m_iotlb.insert(req.address, w.hpa, w.perms, false, tag, w.shift);
  hpa = w.hpa;
  return {};
}

// The second level as the first level's stage 2 (nested, VT-d 3.8): every
// first-level table address is a guest-physical address translated by a
// read walk before the entry is read, and the final address by a walk with
// the request's access (execute requests read).
struct Iommu::SlStage2 {
  Iommu& u;
  const SlDomain& d;
  static constexpr bool active() { return true; }
  std::uint8_t table_need() const { return sl::kRead; }
  std::uint8_t write_right() const { return sl::kWrite; }
  mmu::Stage2Step table(std::uint64_t gpa, std::uint32_t& cycles) { return u.sl_walk(d, gpa, false, cycles); }
  mmu::Stage2Step final(std::uint64_t gpa, mmu::AccessType t, std::uint8_t, std::uint32_t& cycles) {
    return u.sl_walk(d, gpa, t == mmu::AccessType::Write, cycles);
  }
};

namespace {
// VT-d fault reasons of a first-level walk's neutral fault (VT-d 7.1.3,
// appendix A; table 7-27 for the scalable-mode reasons).
FaultReason fl_reason(const mmu::WalkFault& f, unsigned levels, bool write, FaultStage& stage) {
  using Kind = mmu::WalkFault::Kind;
  if (f.stage == mmu::WalkFault::Stage::One) {
    stage = FaultStage::kFirstLevel;
    if (f.kind == Kind::NotPresent) return FaultReason::kSmFlNotPresent;
    if (f.kind == Kind::Reserved) return FaultReason::kSmFlReserved;
    if (f.missing == mmu::kUser) return FaultReason::kSmUserSupervisor;
    if (f.missing == mmu::kWritable) return FaultReason::kSmWriteDenied;
    return FaultReason::kSmExecuteDenied;
  }
  if (f.final) {  // the output address through the second level
    stage = FaultStage::kSecondLevel;
    if (f.kind == Kind::Reserved) return FaultReason::kSmSlReserved;
    return write ? FaultReason::kSmWriteDenied : FaultReason::kSmReadDenied;
  }
  stage = FaultStage::kNestedTable;
  if (f.ad_update) return FaultReason::kSmNestedFlAdDenied;  // 77h
  if (f.kind == Kind::Reserved) return FaultReason::kSmSlReserved;
  return f.table_level == levels ? FaultReason::kSmNestedFlptrDenied : FaultReason::kSmNestedFlTableDenied;
}
}  // namespace

// First-level translation (VT-d 3.6, IA-32e entries of 9.7 = SDM Vol. 3A,
// 4.5): the walk loop over mmu::Ia32eFormat (XD always defined, WPE for
// CR0.WP, no SMEP/SMAP), the second level as its stage 2 when nested (3.8),
// as the CPU's walk has EPT. The first-level paging-structure caches hold
// the next table's host-physical address, so a hit also skips that table's
// second-level translation; they are filled only once the final address is
// translated.
FaultReason Iommu::fl_walk(const CachedPasid& p, const mmu::TlbTag& tag, const DmaRequest& req, bool privileged,
                           Walked& out, FaultStage& stage, std::uint32_t& cycles) {
  ++m_stats.fl_walks;
  const bool nested = p.pgtt == pasid_entry::kPgttNested;
  if (nested) ++m_stats.nested_walks;
  const SlDomain d = sl_domain(p.did, p.slptptr, p.aw, p.slade);
  const bool write = req.access == DmaAccess::Write;
  const mmu::Ia32eFormat fmt{p.fl_mode, true};
  mmu::WalkAccess a;
  a.type = write ? mmu::AccessType::Write : mmu::AccessType::Read;
  a.execute = req.execute;
  a.user = !privileged;
  a.wp = p.wpe;
  RefSink<true> sink{*this};
  mmu::WalkOut o;
  mmu::WalkFault f;
  std::uint8_t sl_perm = sl::kRw | kSlLeafDirty;
  // The caches are filled once the final address is translated.
  constexpr bool kFillAfterFinal = true;
  if (nested) {
    SlStage2 s2{*this, d};
    f = mmu::walk<mmu::Ia32eFormat, SlStage2, RefSink<true>, kFillAfterFinal>(m_mem, fmt, m_fl_pscs, tag, p.flptr,
                                                                              req.address, a, s2, sink, o, cycles);
    sl_perm = o.s2_perms;
  } else {
    mmu::IdentityStage2 none{static_cast<std::uint8_t>(sl::kRw)};
    f = mmu::walk<mmu::Ia32eFormat, mmu::IdentityStage2, RefSink<true>, kFillAfterFinal>(
        m_mem, fmt, m_fl_pscs, tag, p.flptr, req.address, a, none, sink, o, cycles);
  }
  if (f) return fl_reason(f, p.fl_mode.levels, write, stage);
  stage = FaultStage::kNone;
  const std::uint8_t acc = o.rights;
  out.hpa = o.hpa;
  out.shift = o.shift;
  out.perms = static_cast<std::uint8_t>(
      (acc & (mmu::kUser | mmu::kExecutable)) |
      (((acc & mmu::kWritable) && (sl_perm & sl::kWrite)) ? iotlb_perm::kWrite : 0) |
      (((acc & mmu::kLeafDirty) && (sl_perm & kSlLeafDirty)) ? iotlb_perm::kDirty : 0) |
      ((sl_perm & sl::kRead) ? iotlb_perm::kRead : 0));
  return FaultReason::kNone;
}

// Invalidation descriptors of scalable mode (6.5.2.3, 6.5.2.4).

void Iommu::pasid_iotlb_invalidate(std::uint16_t did, std::uint32_t pasid) {
  ++m_stats.invalidations;
  const mmu::TlbTag t = pasid_tag(did, pasid);
  m_iotlb.flush_pcid(t.vpid, t.pcid);
  for (auto& p : m_fl_psc) p->flush_pcid(t.vpid, t.pcid);
}

void Iommu::pasid_iotlb_invalidate_page(std::uint16_t did, std::uint32_t pasid, std::uint64_t addr, unsigned am,
                                        bool ih) {
  if (am > 9) {
    pasid_iotlb_invalidate(did, pasid);
    return;
  }
  ++m_stats.invalidations;
  const mmu::TlbTag t = pasid_tag(did, pasid);
  const std::uint64_t pages = 1ull << am;
  const std::uint64_t base = addr & ~((pages << 12) - 1);
  for (std::uint64_t i = 0; i < pages; ++i) m_iotlb.flush_address_pcid(base + (i << 12), t.vpid, t.pcid);
  if (!ih)
    for (auto& p : m_fl_psc) p->flush_pcid(t.vpid, t.pcid);
}

void Iommu::pasid_cache_invalidate_global() {
  ++m_stats.invalidations;
  m_pasid.invalidate_if([](const CachedPasid&) { return true; });
}

void Iommu::pasid_cache_invalidate_domain(std::uint16_t did) {
  ++m_stats.invalidations;
  m_pasid.invalidate_if([did](const CachedPasid& p) { return p.did == did; });
}

void Iommu::pasid_cache_invalidate_pasid(std::uint16_t did, std::uint32_t pasid) {
  ++m_stats.invalidations;
  m_pasid.invalidate_if([did, pasid](const CachedPasid& p) { return p.did == did && p.pasid == pasid; });
}

}  // namespace vmx::iommu
