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
    const SlStep s = sl_walk(sl_domain(p.did, p.slptptr, p.aw, p.slade), req.address, write, cycles);
    if (s.status == SlStep::Status::Ok) {
      w.hpa = s.hpa;
      w.shift = s.shift;
      w.perms = static_cast<std::uint8_t>(iotlb_perm::kUser | iotlb_perm::kExecute |
                                          ((s.rights & sl::kRead) ? iotlb_perm::kRead : 0) |
                                          ((s.rights & sl::kWrite) ? iotlb_perm::kWrite : 0) |
                                          ((s.rights & kSlLeafDirty) ? iotlb_perm::kDirty : 0));
    } else {
      stage = FaultStage::kSecondLevel;
      r = s.status == SlStep::Status::Reserved ? FaultReason::kSmSlReserved
          : write                               ? FaultReason::kSmWriteDenied
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

// First-level translation (VT-d 3.6, IA-32e entries of 9.7 = SDM Vol. 3A,
// 4.5): P, R/W, U/S, XD and PS at levels 2 and 3; rights accumulated down the
// walk; accessed flags set in every entry used and the dirty flag in the leaf
// for a write (3.6.2). Nested (3.8): every first-level table address is a
// guest-physical address translated by the second level before the entry is
// read, as is the final address; the walk is Spike's composition of two
// walkers, the second-level one being sl_walk.
FaultReason Iommu::fl_walk(const CachedPasid& p, const mmu::TlbTag& tag, const DmaRequest& req, bool privileged,
                           Walked& out, FaultStage& stage, std::uint32_t& cycles) {
  ++m_stats.fl_walks;
  const bool nested = p.pgtt == pasid_entry::kPgttNested;
  if (nested) ++m_stats.nested_walks;
  const SlDomain d = sl_domain(p.did, p.slptptr, p.aw, p.slade);
  const std::uint64_t va = req.address;
  const bool write = req.access == DmaAccess::Write;
  const unsigned levels = p.fl_mode.levels;

  unsigned start = levels;
  std::uint64_t table_gpa = p.flptr;  // guest-physical with nested translation, else host-physical
  std::uint64_t table_hpa = p.flptr;
  bool table_translated = !nested;
  std::uint8_t table_sl = sl::kRw;  // second-level rights of the table's page (nested)
  std::uint8_t acc = mmu::kWritable | mmu::kUser | mmu::kExecutable;

  // First-level paging-structure caches, longest match first, in parallel.
  // An entry holds the next table's host-physical address, so a hit also
  // skips that table's second-level translation.
  if (m_any_fl_psc) {
    cycles += m_fl_psc_latency;
    for (unsigned l = 2; l <= levels; ++l) {
      mmu::Psc& psc = *m_fl_psc[l - 2];
      if (!psc.enabled()) continue;
      if (const mmu::PscEntry* e = psc.lookup(va, tag)) {
        start = l - 1;
        table_gpa = e->next_gpa;
        table_hpa = e->next_hpa;
        table_translated = true;
        table_sl = e->table_ept_perms;
        acc = e->perms;
        break;
      }
    }
  }

  std::array<std::uint64_t, 6> where{}, value{};  // host-physical address and value of each entry read
  std::array<std::uint8_t, 6> sl_rights{}, acc_at{};
  unsigned leaf = 1;
  std::uint64_t gpa = 0;
  for (unsigned level = start;; --level) {
    const std::uint64_t offset = mmu::table_index(va, level) * 8;
    if (!table_translated) {
      const SlStep s = sl_walk(d, table_gpa + offset, false, cycles);
      if (s.status != SlStep::Status::Ok) {
        stage = FaultStage::kNestedTable;
        if (s.status == SlStep::Status::Reserved) return FaultReason::kSmSlReserved;
        return level == levels ? FaultReason::kSmNestedFlptrDenied : FaultReason::kSmNestedFlTableDenied;
      }
      table_hpa = s.hpa - offset;
      table_sl = s.rights;
    }
    const std::uint64_t entry = m_mem.read_entry(table_hpa + offset, cycles);
    ++m_stats.refs_fl_level(level);
    ++m_stats.refs_first_level;
    ++m_walk_refs;
    where[level] = table_hpa + offset;
    value[level] = entry;
    sl_rights[level] = table_sl;
    if (!(entry & pte::kPresent)) {
      stage = FaultStage::kFirstLevel;
      return FaultReason::kSmFlNotPresent;
    }
    const bool ps = (entry & pte::kPageSize) != 0 && level > 1;
    if (ps && level > p.fl_mode.largest_leaf) {  // no 512 GiB pages (PS is reserved in PML4E/PML5E)
      stage = FaultStage::kFirstLevel;
      return FaultReason::kSmFlReserved;
    }
    if (!(entry & pte::kWritable)) acc &= static_cast<std::uint8_t>(~mmu::kWritable);
    if (!(entry & pte::kUser)) acc &= static_cast<std::uint8_t>(~mmu::kUser);
    if (entry & pte::kNoExecute) acc &= static_cast<std::uint8_t>(~mmu::kExecutable);
    acc_at[level] = acc;
    if (level == 1 || ps) {
      leaf = level;
      const unsigned shift = mmu::level_shift(level);
      const std::uint64_t mask = (1ull << shift) - 1;
      gpa = (entry & pte::kAddrMask & ~mask) | (va & mask);
      out.shift = static_cast<std::uint8_t>(shift);
      break;
    }
    table_gpa = entry & pte::kAddrMask;
    table_hpa = table_gpa;
    table_translated = !nested;
  }

  // Access rights (3.6.1): user requests need U/S = 1 everywhere; writes
  // need R/W = 1 unless supervisor with WPE = 0; execute requests need
  // XD = 0 everywhere.
  stage = FaultStage::kFirstLevel;
  if (!privileged && !(acc & mmu::kUser)) return FaultReason::kSmUserSupervisor;
  if (write && !(acc & mmu::kWritable) && (!privileged || p.wpe)) return FaultReason::kSmWriteDenied;
  if (req.execute && !(acc & mmu::kExecutable)) return FaultReason::kSmExecuteDenied;

  // Accessed and dirty flags (3.6.2). Nested, each update is a write to the
  // entry's guest-physical address: without second-level write permission
  // on the table's page it faults (77h). The second-level rights are those
  // of the translation made to read the entry, so no further reference.
  for (unsigned level = start; level >= leaf; --level) {
    std::uint64_t nv = value[level] | pte::kAccessed;
    if (level == leaf && write) nv |= pte::kDirty;
    if (nv == value[level]) continue;
    if (nested && !(sl_rights[level] & sl::kWrite)) {
      stage = FaultStage::kNestedTable;
      return FaultReason::kSmNestedFlAdDenied;
    }
    m_mem.write_entry(where[level], nv, cycles);
    ++m_stats.ad_updates;
    value[level] = nv;
  }

  // The final address: nested, through the second level with the request's
  // access (execute requests read); the effective page size is the smaller.
  std::uint8_t sl_perm = sl::kRw | kSlLeafDirty;
  out.hpa = gpa;
  if (nested) {
    const SlStep s = sl_walk(d, gpa, write, cycles);
    if (s.status != SlStep::Status::Ok) {
      stage = FaultStage::kSecondLevel;
      if (s.status == SlStep::Status::Reserved) return FaultReason::kSmSlReserved;
      return write ? FaultReason::kSmWriteDenied : FaultReason::kSmReadDenied;
    }
    out.hpa = s.hpa;
    if (s.shift < out.shift) out.shift = s.shift;
    sl_perm = s.rights;
  }
  stage = FaultStage::kNone;
  const bool fl_dirty = (value[leaf] & pte::kDirty) != 0;
  out.perms = static_cast<std::uint8_t>(
      (acc & (mmu::kUser | mmu::kExecutable)) |
      (((acc & mmu::kWritable) && (sl_perm & sl::kWrite)) ? iotlb_perm::kWrite : 0) |
      ((fl_dirty && (sl_perm & kSlLeafDirty)) ? iotlb_perm::kDirty : 0) |
      ((sl_perm & sl::kRead) ? iotlb_perm::kRead : 0));

  // Cache the entries read that reference another table: the next table's
  // host-physical address is where its entry was read.
  if (m_any_fl_psc)
    for (unsigned level = start; level > leaf; --level) {
      mmu::Psc& psc = *m_fl_psc[level - 2];
      if (psc.enabled())
        psc.insert(va, tag, where[level - 1] & ~0xFFFull, value[level] & pte::kAddrMask, acc_at[level],
                   sl_rights[level - 1]);
    }
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
