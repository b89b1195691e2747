#include "iommu/iommu.h"

#include "mmu/paging.h"

namespace vmx::iommu {

namespace {
// Rights cached in IOTLB entries: W as mmu::TlbPerm::kWritable, R in a bit
// above kDirty (mmu::Tlb carries those untouched).
constexpr std::uint8_t kPermWrite = mmu::kWritable;
constexpr std::uint8_t kPermRead = mmu::perm::kEptRead;

mmu::TlbTag domain_tag(std::uint16_t did) {
  mmu::TlbTag t;
  t.vpid = did;  // the domain ID is the only IOTLB / paging-structure-cache tag (6.2)
  return t;
}
}  // namespace

IommuStats::IommuStats(stats::Group* parent, const std::string& name)
    : stats::Group(parent, name, "DMA remapping unit (Intel VT-d, legacy mode)") {}

stats::Counter& IommuStats::refs_sl(unsigned level) {
  switch (level) {
    case 5: return refs_sl5;
    case 4: return refs_sl4;
    case 3: return refs_sl3;
    case 2: return refs_sl2;
    default: return refs_sl1;
  }
}

stats::Counter& IommuStats::by_reason(FaultReason r) {
  switch (r) {
    case FaultReason::kRootNotPresent: return fault_root_not_present;
    case FaultReason::kContextNotPresent: return fault_context_not_present;
    case FaultReason::kContextInvalid: return fault_context_invalid;
    case FaultReason::kAddressBeyondAw: return fault_address_beyond_aw;
    case FaultReason::kWriteDenied: return fault_write_denied;
    case FaultReason::kReadDenied: return fault_read_denied;
    default: return fault_sl_reserved;
  }
}

Iommu::Iommu(const IommuParams& params, mmu::TableMemory& mem, stats::Group* parent, const std::string& name)
    : m_params(params),
      m_mem(mem),
      m_stats(parent, name),
      m_iotlb(params.iotlb, {12, 21, 30}, &m_stats, "iotlb") {
  mmu::check_geometry(name + ".context_cache", params.context_cache.entries, params.context_cache.ways);
  m_ctx.init(params.context_cache.entries, params.context_cache.ways);
  static const char* const kPscNames[] = {"sl_pde", "sl_pdpte", "sl_pml4e", "sl_pml5e"};
  for (unsigned level = 2; level <= 5; ++level) {
    const mmu::PscParams& p = params.sl_psc.level(level);
    m_psc.push_back(std::make_unique<mmu::Psc>(p, level, &m_stats, kPscNames[level - 2]));
    if (p.enabled) {
      m_any_psc = true;
      if (p.latency > m_psc_latency) m_psc_latency = p.latency;
    }
  }
  m_faults.reserve(params.fault_records);
}

TranslateResult Iommu::translate(std::uint16_t rid, std::uint64_t iova, DmaAccess access, std::uint64_t& hpa,
                                 std::uint32_t& cycles) {
  if (!m_enabled) {
    hpa = iova;
    return {};
  }
  ++m_stats.translations;
  CachedContext c;
  FaultReason r = lookup_context(rid, c, cycles);
  if (r != FaultReason::kNone) return fault(rid, iova, access, r, false);
  if (c.tt == ctx::kTtPassThrough) {
    ++m_stats.passthrough;
    hpa = iova;
    return {};
  }
  // 3.6: the input address must fit the domain's adjusted guest address width.
  if (ctx::aw_bits(c.aw) < 64 && (iova >> ctx::aw_bits(c.aw)) != 0)
    return fault(rid, iova, access, FaultReason::kAddressBeyondAw, c.fpd);

  cycles += m_iotlb.latency();
  const std::uint8_t need = access == DmaAccess::Write ? kPermWrite : kPermRead;
  if (const mmu::TlbEntry* e = m_iotlb.lookup(iova, domain_tag(c.did))) {
    // A hit without the right is treated as a miss: the walk re-checks it.
    if (e->perms & need) {
      hpa = mmu::Tlb::translate(*e, iova);
      return {};
    }
  }
  const std::uint32_t walk_start = cycles;
  r = walk(c, iova, access, hpa, cycles);
  m_stats.walk_cycles += cycles - walk_start;
  if (r != FaultReason::kNone) return fault(rid, iova, access, r, c.fpd);
  return {};
}

FaultReason Iommu::lookup_context(std::uint16_t rid, CachedContext& out, std::uint32_t& cycles) {
  cycles += m_params.context_cache.latency;
  if (const CachedContext* c = m_ctx.find(rid, rid, [](const CachedContext&) { return true; })) {
    ++m_stats.context_hits;
    out = *c;
    return FaultReason::kNone;
  }
  ++m_stats.context_misses;

  // Root entry (9.1): only its low half is defined in legacy mode.
  const std::uint64_t root_lo = m_mem.read_entry(m_rtaddr + rid_bus(rid) * root::kEntrySize, cycles);
  ++m_stats.refs_root;
  if (!(root_lo & root::kPresent)) return FaultReason::kRootNotPresent;

  // Context entry (9.3): one 16-byte reference, its cost charged once.
  const std::uint64_t ce = (root_lo & root::kCtpMask) + rid_devfn(rid) * ctx::kEntrySize;
  const std::uint64_t lo = m_mem.read_entry(ce, cycles);
  std::uint32_t same_reference = 0;
  const std::uint64_t hi = m_mem.read_entry(ce + 8, same_reference);
  ++m_stats.refs_context;
  if (!(lo & ctx::kPresent)) return FaultReason::kContextNotPresent;
  const unsigned tt = ctx::tt(lo), aw = ctx::aw(hi);
  // TT = 3 is reserved; AW must be a supported width (SAGAW: 39, 48, 57 bits).
  if (tt > ctx::kTtPassThrough || (tt != ctx::kTtPassThrough && (aw < 1 || aw > 3)))
    return FaultReason::kContextInvalid;

  bool evicted = false;
  CachedContext& c = m_ctx.place(rid, rid, [](const CachedContext&) { return true; }, evicted);
  c.rid = rid;
  c.did = ctx::did(hi);
  c.slptptr = lo & ctx::kSlptptrMask;
  c.aw = static_cast<std::uint8_t>(aw);
  c.tt = static_cast<std::uint8_t>(tt);
  c.fpd = (lo & ctx::kFaultProcessingDisable) != 0;
  c.valid = true;
  out = c;
  return FaultReason::kNone;
}

FaultReason Iommu::walk(const CachedContext& c, std::uint64_t iova, DmaAccess access, std::uint64_t& hpa,
                        std::uint32_t& cycles) {
  ++m_stats.walks;
  const mmu::TlbTag tag = domain_tag(c.did);
  const unsigned levels = ctx::aw_levels(c.aw);
  const std::uint64_t need = access == DmaAccess::Write ? sl::kWrite : sl::kRead;
  unsigned level = levels;
  std::uint64_t table = c.slptptr;
  std::uint64_t rights = sl::kRw;  // R/W ANDed down the walk (3.7)

  // Paging-structure caches, longest match first, looked up in parallel.
  if (m_any_psc) {
    cycles += m_psc_latency;
    for (unsigned l = 2; l <= levels; ++l) {
      mmu::Psc& psc = *m_psc[l - 2];
      if (!psc.enabled()) continue;
      const mmu::PscEntry* e = psc.lookup(iova, tag);
      if (!e) continue;
      if ((e->perms & need) == need) {
        table = e->next_hpa;
        rights = e->perms;
        level = l - 1;
      }
      break;  // an entry without the right: walk from the root to re-check
    }
  }

  std::uint64_t next[6] = {}, acc[6] = {};  // fills for the caches, by level
  const unsigned first = level;
  for (;; --level) {
    const std::uint64_t entry = m_mem.read_entry(table + mmu::table_index(iova, level) * 8, cycles);
    ++m_stats.refs_sl(level);
    rights &= entry & sl::kRw;
    // An entry with R = W = 0 is not present; either way the request lacks
    // the right (fault reasons 5h/6h).
    if (!(rights & need)) return access == DmaAccess::Write ? FaultReason::kWriteDenied : FaultReason::kReadDenied;
    const bool ps = (entry & sl::kPageSize) != 0;
    if (ps && level >= 4) return FaultReason::kSlEntryReserved;  // no 512 GiB pages
    if (level == 1 || ps) {
      const unsigned shift = mmu::level_shift(level);
      const std::uint64_t mask = (1ull << shift) - 1;
      hpa = ((entry & sl::kAddrMask) & ~mask) | (iova & mask);
      const std::uint8_t perms = static_cast<std::uint8_t>(((rights & sl::kRead) ? kPermRead : 0) |
                                                           ((rights & sl::kWrite) ? kPermWrite : 0));
      m_iotlb.insert(iova, hpa, perms, false, tag, shift);
      break;
    }
    table = entry & sl::kAddrMask;
    next[level] = table;
    acc[level] = rights;
  }
  // Fill the caches with the non-leaf entries read by this walk.
  for (unsigned l = first; l > level; --l) {
    mmu::Psc& psc = *m_psc[l - 2];
    if (psc.enabled()) psc.insert(iova, tag, next[l], next[l], static_cast<std::uint8_t>(acc[l]), 0);
  }
  return FaultReason::kNone;
}

TranslateResult Iommu::fault(std::uint16_t rid, std::uint64_t iova, DmaAccess access, FaultReason r, bool fpd) {
  ++m_stats.faults;
  ++m_stats.by_reason(r);
  if (fpd) {
    ++m_stats.faults_suppressed;
  } else if (m_faults.size() < m_params.fault_records) {
    m_faults.push_back(FaultRecord{rid, iova, access, r});
    ++m_stats.faults_recorded;
  } else {
    ++m_stats.fault_overflows;
  }
  return TranslateResult{TranslateResult::Status::Fault, r};
}

bool Iommu::pop_fault(FaultRecord& out) {
  if (m_faults.empty()) return false;
  out = m_faults.front();
  m_faults.erase(m_faults.begin());
  return true;
}

void Iommu::iotlb_invalidate_global() {
  ++m_stats.invalidations;
  m_iotlb.flush_all();
  for (auto& p : m_psc) p->flush_all();
}

void Iommu::iotlb_invalidate_domain(std::uint16_t did) {
  ++m_stats.invalidations;
  m_iotlb.flush_vpid(did);
  for (auto& p : m_psc) p->flush_vpid(did);
}

void Iommu::iotlb_invalidate_page(std::uint16_t did, std::uint64_t addr, unsigned am, bool ih) {
  if (am > 9) {
    iotlb_invalidate_domain(did);
    return;
  }
  ++m_stats.invalidations;
  const std::uint64_t pages = 1ull << am;
  const std::uint64_t base = addr & ~((pages << 12) - 1);
  for (std::uint64_t i = 0; i < pages; ++i) m_iotlb.flush_address(base + (i << 12), did);
  if (!ih)
    for (auto& p : m_psc) p->flush_vpid(did);
}

void Iommu::context_invalidate_global() {
  ++m_stats.invalidations;
  m_ctx.invalidate_if([](const CachedContext&) { return true; });
}

void Iommu::context_invalidate_domain(std::uint16_t did) {
  ++m_stats.invalidations;
  m_ctx.invalidate_if([did](const CachedContext& c) { return c.did == did; });
}

void Iommu::context_invalidate_device(std::uint16_t sid, unsigned fm) {
  ++m_stats.invalidations;
  static constexpr std::uint16_t kMask[4] = {0, 4, 6, 7};  // function bits masked (10.4.7, FM)
  const std::uint16_t keep = static_cast<std::uint16_t>(~kMask[fm & 3]);
  m_ctx.invalidate_if([sid, keep](const CachedContext& c) { return (c.rid & keep) == (sid & keep); });
}

}  // namespace vmx::iommu
