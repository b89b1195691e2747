#include "iommu/iommu.h"

#include <algorithm>
#include <stdexcept>

#include "mmu/paging.h"

namespace vmx::iommu {

namespace {
constexpr std::uint8_t kPermWrite = iotlb_perm::kWrite;
constexpr std::uint8_t kPermRead = iotlb_perm::kRead;
}  // namespace

IommuStats::IommuStats(stats::Group* parent, const std::string& name)
    : stats::Group(parent, name, "DMA remapping unit (Intel VT-d, legacy and scalable mode)") {}

stats::Counter& IommuStats::refs_sl(unsigned level) {
  switch (level) {
    case 5: return refs_sl5;
    case 4: return refs_sl4;
    case 3: return refs_sl3;
    case 2: return refs_sl2;
    default: return refs_sl1;
  }
}

stats::Counter& IommuStats::refs_fl_level(unsigned level) {
  switch (level) {
    case 5: return refs_fl5;
    case 4: return refs_fl4;
    case 3: return refs_fl3;
    case 2: return refs_fl2;
    default: return refs_fl1;
  }
}

stats::Counter& IommuStats::by_reason(FaultReason r) {
  switch (r) {
    case FaultReason::kSmLegacyPasid: return fault_sm_legacy_pasid;
    case FaultReason::kSmRootNotPresent: return fault_sm_root_not_present;
    case FaultReason::kSmContextNotPresent: return fault_sm_context_not_present;
    case FaultReason::kSmPasidDisabled: return fault_sm_pasid_disabled;
    case FaultReason::kSmPasidTooLarge: return fault_sm_pasid_too_large;
    case FaultReason::kSmPasidDirNotPresent: return fault_sm_pasid_dir_not_present;
    case FaultReason::kSmPasidNotPresent: return fault_sm_pasid_not_present;
    case FaultReason::kSmPasidInvalid: return fault_sm_pasid_invalid;
    case FaultReason::kSmSupervisorDisabled: return fault_sm_supervisor_disabled;
    case FaultReason::kSmFlNotPresent: return fault_sm_fl_not_present;
    case FaultReason::kSmFlReserved: return fault_sm_fl_reserved;
    case FaultReason::kSmNestedFlptrDenied: return fault_sm_nested_flptr_denied;
    case FaultReason::kSmNestedFlTableDenied: return fault_sm_nested_fl_table_denied;
    case FaultReason::kSmNestedFlAdDenied: return fault_sm_nested_fl_ad_denied;
    case FaultReason::kSmSlReserved: return fault_sm_sl_reserved;
    case FaultReason::kSmNonCanonical: return fault_sm_non_canonical;
    case FaultReason::kSmUserSupervisor: return fault_sm_user_supervisor;
    case FaultReason::kSmExecuteDenied: return fault_sm_execute_denied;
    case FaultReason::kSmAddressBeyondAw: return fault_sm_address_beyond_aw;
    case FaultReason::kSmWriteDenied: return fault_sm_write_denied;
    case FaultReason::kSmReadDenied: return fault_sm_read_denied;
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
    m_sl_pscs.add(m_psc.back().get(), level);
  }
  mmu::check_geometry(name + ".pasid_cache", params.pasid_cache.entries, params.pasid_cache.ways);
  m_pasid.init(params.pasid_cache.entries, params.pasid_cache.ways);
  static const char* const kFlPscNames[] = {"fl_pde", "fl_pdpte", "fl_pml4e", "fl_pml5e"};
  for (unsigned level = 2; level <= 5; ++level) {
    const mmu::PscParams& p = params.fl_psc.level(level);
    m_fl_psc.push_back(std::make_unique<mmu::Psc>(p, level, &m_stats, kFlPscNames[level - 2]));
    m_fl_pscs.add(m_fl_psc.back().get(), level);
  }
  m_faults.reserve(params.fault_records);
  m_fault_slot.reserve(params.fault_records);
}

void Iommu::set_root_table(std::uint64_t reg) {
  const unsigned ttm = rtaddr::ttm(reg);
  if (ttm != rtaddr::kTtmLegacy && ttm != rtaddr::kTtmScalable)
    throw std::invalid_argument("iommu: RTADDR_REG.TTM = " + std::to_string(ttm) +
                                " is not supported (00b legacy and 01b scalable mode are)");
  m_rtaddr = reg & root::kCtpMask;
  m_scalable = ttm == rtaddr::kTtmScalable;
}

TranslateResult Iommu::translate(const DmaRequest& req, std::uint64_t& hpa, std::uint32_t& cycles) {
  if (!m_enabled) {
    hpa = req.address;
    return {};
  }
  ++m_stats.translations;
  if (m_scalable) return translate_sm(req, hpa, cycles);
  const std::uint16_t rid = req.requester_id;
  const std::uint64_t iova = req.address;
  const DmaAccess access = req.access;
  // Requests-with-PASID need scalable mode (VT-d 3.x, fault reason 31h).
  if (req.has_pasid) return fault(req, req.pasid, FaultReason::kSmLegacyPasid, FaultStage::kContext, false);
  CachedContext c;
  FaultReason r = lookup_context(rid, c, cycles);
  if (r != FaultReason::kNone) return fault(req, 0, r, FaultStage::kContext, false);
  if (c.tt == ctx::kTtPassThrough) {
    ++m_stats.passthrough;
    hpa = iova;
    return {};
  }
  // 3.6: the input address must fit the domain's adjusted guest address width.
  if (ctx::aw_bits(c.aw) < 64 && (iova >> ctx::aw_bits(c.aw)) != 0)
    return fault(req, 0, FaultReason::kAddressBeyondAw, FaultStage::kSecondLevel, c.fpd);

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
  if (r != FaultReason::kNone) return fault(req, 0, r, FaultStage::kSecondLevel, c.fpd);
  return {};
}

FaultReason Iommu::lookup_context(std::uint16_t rid, CachedContext& out, std::uint32_t& cycles) {
  cycles += m_params.context_cache.latency;
  if (const CachedContext* c = m_ctx.find(rid, rid, [](const CachedContext& e) { return !e.scalable; })) {
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
  CachedContext& c = m_ctx.place(rid, rid, [](const CachedContext& e) { return !e.scalable; }, evicted);
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
  const bool write = access == DmaAccess::Write;
  m_walk_refs = 0;
  const mmu::Stage2Step s = sl_walk(sl_domain(c.did, c.slptptr, c.aw, false), iova, write, cycles);
  m_stats.walk_refs.sample(m_walk_refs);
  // An entry with R = W = 0 is not present; either way the request lacks
  // the right (fault reasons 5h/6h); a reserved PS is 0Ah.
  if (s.fault.kind == mmu::WalkFault::Kind::Reserved) return FaultReason::kSlEntryReserved;
  if (s.fault) return write ? FaultReason::kWriteDenied : FaultReason::kReadDenied;
  hpa = s.hpa;
  const std::uint8_t perms = static_cast<std::uint8_t>(((s.perms & sl::kRead) ? kPermRead : 0) |
                                                       ((s.perms & sl::kWrite) ? kPermWrite : 0));
  m_iotlb.insert(iova, hpa, perms, false, domain_tag(c.did), s.shift);
  return FaultReason::kNone;
}

mmu::Stage2Step Iommu::sl_walk(const SlDomain& d, std::uint64_t addr, bool write, std::uint32_t& cycles) {
  ++m_stats.sl_walks;
  const mmu::VtdSlFormat fmt{d.mode, d.slade};
  mmu::WalkAccess a;
  a.type = write ? mmu::AccessType::Write : mmu::AccessType::Read;
  mmu::IdentityStage2 none;
  RefSink<false> sink{*this};
  mmu::WalkOut o;
  mmu::Stage2Step s;
  s.fault = mmu::walk(m_mem, fmt, m_sl_pscs, domain_tag(d.did), d.slptptr, addr, a, none, sink, o, cycles);
  s.hpa = o.hpa;
  s.perms = o.rights;
  s.shift = o.shift;
  return s;
}

TranslateResult Iommu::fault(const DmaRequest& req, std::uint32_t pasid, FaultReason r, FaultStage stage,
                             bool fpd) {
  ++m_stats.faults;
  ++m_stats.by_reason(r);
  if (stage == FaultStage::kFirstLevel) ++m_stats.faults_first_level;
  if (stage == FaultStage::kNestedTable) ++m_stats.faults_nested_table;
  if (stage == FaultStage::kSecondLevel) ++m_stats.faults_second_level;
  if (fpd) {
    ++m_stats.faults_suppressed;
  } else if (std::find(m_fault_slot.begin(), m_fault_slot.end(), m_fri) == m_fault_slot.end()) {
    FaultRecord rec;
    rec.requester_id = req.requester_id;
    rec.address = req.address;
    rec.access = req.access;
    rec.reason = r;
    rec.stage = stage;
    // The record shows the PASID the translation used: the request's, or
    // RID_PASID for a request without one in scalable mode.
    rec.has_pasid = req.has_pasid || m_scalable;
    rec.pasid = req.has_pasid ? req.pasid : pasid;
    rec.privileged = req.privileged;
    rec.execute = req.execute;
    m_faults.push_back(rec);
    m_fault_slot.push_back(static_cast<std::uint16_t>(m_fri));
    m_fri = (m_fri + 1) % m_params.fault_records;
    ++m_stats.faults_recorded;
    if (m_fault_hook) m_fault_hook(false);
  } else {
    ++m_stats.fault_overflows;
    if (m_fault_hook) m_fault_hook(true);
  }
  return TranslateResult{TranslateResult::Status::Fault, r, stage};
}

const FaultRecord* Iommu::fault_in(unsigned slot) const {
  for (std::size_t i = 0; i < m_fault_slot.size(); ++i)
    if (m_fault_slot[i] == slot) return &m_faults[i];
  return nullptr;
}

void Iommu::clear_fault(unsigned slot) {
  for (std::size_t i = 0; i < m_fault_slot.size(); ++i)
    if (m_fault_slot[i] == slot) {
      m_faults.erase(m_faults.begin() + static_cast<std::ptrdiff_t>(i));
      m_fault_slot.erase(m_fault_slot.begin() + static_cast<std::ptrdiff_t>(i));
      return;
    }
}

void Iommu::iotlb_invalidate_global() {
  ++m_stats.invalidations;
  m_iotlb.flush_all();
  for (auto& p : m_psc) p->flush_all();
  for (auto& p : m_fl_psc) p->flush_all();
}

void Iommu::iotlb_invalidate_domain(std::uint16_t did) {
  ++m_stats.invalidations;
  m_iotlb.flush_vpid(did);
  for (auto& p : m_psc) p->flush_vpid(did);
  for (auto& p : m_fl_psc) p->flush_vpid(did);
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
  if (!ih) {
    for (auto& p : m_psc) p->flush_vpid(did);
    for (auto& p : m_fl_psc) p->flush_vpid(did);
  }
}

void Iommu::context_invalidate_global() {
  ++m_stats.invalidations;
  m_ctx.invalidate_if([](const CachedContext&) { return true; });
}

void Iommu::context_invalidate_domain(std::uint16_t did) {
  ++m_stats.invalidations;
  // Scalable-mode context entries carry no domain ID (it is in the PASID
  // entries): a domain-selective invalidation drops them all, a superset.
  m_ctx.invalidate_if([did](const CachedContext& c) { return c.scalable || c.did == did; });
}

void Iommu::context_invalidate_device(std::uint16_t sid, unsigned fm) {
  ++m_stats.invalidations;
  static constexpr std::uint16_t kMask[4] = {0, 4, 6, 7};  // function bits masked (10.4.7, FM)
  const std::uint16_t keep = static_cast<std::uint16_t>(~kMask[fm & 3]);
  m_ctx.invalidate_if([sid, keep](const CachedContext& c) { return (c.rid & keep) == (sid & keep); });
}

}  // namespace vmx::iommu
