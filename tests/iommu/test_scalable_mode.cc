// Exact tests of VT-d scalable mode (iommu/scalable_mode.cc): PASID tables,
// first-level and nested (two-stage) translation, the PASID cache, the
// (domain, PASID)-tagged IOTLB and first-level paging-structure caches,
// PASID-based invalidation and scalable-mode fault reasons by stage.
//
// The first-level tables are the IA-32e tables and the second-level tables
// the EPT-format tables that tests/mmu/walk_harness.h builds for the CPU
// walker tests (the formats are the same), in a fake memory whose every
// 8-byte read costs kReadLatency and every write kWriteLatency cycles.
#include <catch2/catch.hpp>

#include "iommu/iommu.h"
#include "iommu/vtd_harness.h"
#include "mmu/walk_harness.h"
#include "sim/params.h"

using iommu::DmaAccess;
using iommu::DmaRequest;
using iommu::FaultReason;
using iommu::FaultStage;
using iommu::Iommu;
using iommu::IommuParams;
namespace pe = iommu::pasid_entry;
namespace smctx = iommu::smctx;

namespace {

constexpr std::uint16_t kDev = iommu::requester_id(2, 3, 0);
constexpr std::uint16_t kDevHigh = iommu::requester_id(2, 17, 1);  // devfn >= 128: upper context table
constexpr std::uint32_t kPasid = 0x2A;                               // directory entry 0, table entry 42
constexpr std::uint16_t kDid = 7;

// Latencies with the defaults: context cache 1, PASID cache 1, IOTLB 2,
// paging-structure caches 1 (each level's set looked up in parallel).
constexpr std::uint32_t kCtx = 1, kPasidLat = 1, kIotlb = 2, kPsc = 1;
// Context phase on a cold start: root entry (1 read), context entry (one
// reference, 2 reads), PASID directory entry (1), PASID-table entry (one
// reference, 3 reads).
constexpr std::size_t kCtxReads = 7;
constexpr std::uint32_t kCtxCycles = kCtx + 2 * kReadLatency + kPasidLat + 2 * kReadLatency;

IommuParams no_walk_caches() {
  auto p = cfg::defaults<IommuParams>();
  for (unsigned l = 2; l <= 5; ++l) {
    p.sl_psc.level(l).enabled = false;
    p.fl_psc.level(l).enabled = false;
  }
  return p;
}

/// First-level tables (h.cr3), second-level tables (h.eptp) and the
/// scalable-mode root, context and PASID structures, in one fake memory.
struct Sm {
  Sm(unsigned pgtt_, unsigned fl_levels = 4, unsigned sl_levels = 4, IommuParams p = cfg::defaults<IommuParams>())
      : pgtt(pgtt_),
        h(fl_levels, pgtt_ != pe::kPgttFirstLevel, sl_levels),
        params(p),
        iommu(params, h.mem, &stats_root),
        drv(iommu, h.mem, &stats_root) {
    rt = h.alloc_host();
    drv.set_root_table(iommu::rtaddr::make(rt, iommu::rtaddr::kTtmScalable));
    drv.enable(true);
  }

  pe::Fields fields(std::uint16_t did = kDid) const {
    pe::Fields f;
    f.pgtt = pgtt;
    f.did = did;
    f.slptptr = h.eptp & ept::kAddrMask;
    f.aw = h.ept_levels - 2;
    f.flptr = h.cr3;
    f.flpm = h.guest_levels - 4;
    f.sre = true;
    return f;
  }

  /// Address of rid's context entry, creating the root entry if absent.
  std::uint64_t context_entry(std::uint16_t rid) {
    const bool upper = iommu::rid_devfn(rid) >= 128;
    const std::uint64_t re = rt + iommu::rid_bus(rid) * 16 + (upper ? 8 : 0);
    if (!(h.mem.peek(re) & 1)) h.mem.poke(re, h.alloc_host() | 1);
    return (h.mem.peek(re) & ~0xFFFull) + (iommu::rid_devfn(rid) % 128) * 32;
  }
  void set_context(std::uint16_t rid, const iommu::SmContextEntry& ce) {
    const std::uint64_t a = context_entry(rid);
    for (int i = 0; i < 4; ++i) h.mem.poke(a + 8 * i, ce.w[i]);
  }
  /// Writes the PASID-table entry of (rid, pasid), creating the context
  /// entry (PDTS 0: 8192 PASIDs, RID_PASID rid_pasid) and directory entry.
  void set_pasid(std::uint16_t rid, std::uint32_t pasid, const iommu::PasidEntry& e, std::uint32_t rid_pasid = 0) {
    const std::uint64_t ce = context_entry(rid);
    if (!(h.mem.peek(ce) & smctx::kPresent)) set_context(rid, smctx::make(h.alloc_host(), 0, rid_pasid));
    const std::uint64_t dir = h.mem.peek(ce) & smctx::kPasidDirMask;
    const std::uint64_t de = dir + (pasid >> 6) * 8;
    if (!(h.mem.peek(de) & 1)) h.mem.poke(de, iommu::pasid_dir::make(h.alloc_host()));
    const std::uint64_t a = (h.mem.peek(de) & ~0xFFFull) + (pasid % 64) * 64;
    for (int i = 0; i < 8; ++i) h.mem.poke(a + 8 * i, e.w[i]);
  }
  void attach(std::uint16_t rid = kDev, std::uint32_t pasid = kPasid) { set_pasid(rid, pasid, pe::make(fields())); }

  struct Out {
    iommu::TranslateResult r;
    std::uint64_t hpa = ~0ull;
    std::uint32_t cycles = 0;
    std::size_t reads = 0, writes = 0;
  };
  Out dma(const DmaRequest& q) {
    Out o;
    const std::size_t r0 = h.mem.reads.size(), w0 = h.mem.writes.size();
    o.r = iommu.translate(q, o.hpa, o.cycles);
    o.reads = h.mem.reads.size() - r0;
    o.writes = h.mem.writes.size() - w0;
    return o;
  }
  Out dma(std::uint64_t addr, DmaAccess a = DmaAccess::Read, std::uint32_t pasid = kPasid, bool priv = false,
          bool exec = false, std::uint16_t rid = kDev) {
    DmaRequest q;
    q.requester_id = rid;
    q.address = addr;
    q.access = a;
    q.has_pasid = true;
    q.pasid = pasid;
    q.privileged = priv;
    q.execute = exec;
    return dma(q);
  }

  const iommu::IommuStats& st() const { return iommu.stats(); }

  unsigned pgtt;
  Harness h;
  IommuParams params;
  stats::Group stats_root;
  std::uint64_t rt = 0;
  Iommu iommu;
  vtdtest::Driver drv;  // programs the unit through its registers and queue
};

/// Maps kLa4 to kDataGpa (first level, fl_shift page) and the
/// second-level page holding the resulting guest-physical address to the
/// same offset from kDataHpa; returns the expected host-physical address.
std::uint64_t map_nested(Sm& v, unsigned fl_shift, unsigned sl_shift, std::uint64_t la = kLa4,
                         std::uint64_t fl_flags = kPwu, std::uint64_t sl_perms = kRwx) {
  v.h.guest_map(la, kDataGpa, fl_shift, fl_flags);
  const std::uint64_t gpa = kDataGpa + (la & ((1ull << fl_shift) - 1));
  const std::uint64_t base = gpa & ~((1ull << sl_shift) - 1);
  v.h.ept_map(base, kDataHpa + (base - kDataGpa), sl_shift, sl_perms);
  return kDataHpa + (gpa - kDataGpa);
}

}  // namespace

TEST_CASE("scalable-mode formats", "[iommu][sm]") {
  constexpr auto ce = smctx::make(0x7000, 3, 0x12345, true, false, true);
  static_assert((ce.w[0] & smctx::kPasidDirMask) == 0x7000 && smctx::pdts(ce.w[0]) == 3, "context entry");
  static_assert((ce.w[0] & smctx::kPasidEnable) && (ce.w[1] & smctx::kRidPasidMask) == 0x12345, "context entry");
  static_assert((ce.w[1] & smctx::kRidPriv) && smctx::max_pasids(0) == 8192 && smctx::max_pasids(7) == (1u << 20),
                "RID_PRIV, PDTS");
  pe::Fields f;
  f.pgtt = pe::kPgttNested;
  f.did = 0xBEEF;
  f.slptptr = 0x5000;
  f.aw = 3;
  f.flptr = 0x9000;
  f.flpm = 1;
  const auto e = pe::make(f);
  CHECK((pe::pgtt(e) == 3 && pe::did(e) == 0xBEEF && pe::aw(e) == 3 && pe::flpm(e) == 1));
  CHECK(((e.w[0] & pe::kSlptptrMask) == 0x5000 && (e.w[2] & pe::kFlptrMask) == 0x9000));
  CHECK(iommu::rtaddr::ttm(iommu::rtaddr::make(0x1000, iommu::rtaddr::kTtmScalable)) == 1);
  Sm v(pe::kPgttFirstLevel);
  CHECK(v.iommu.scalable());
  // TTM = 11b (abort-DMA mode, ECAP.ADMS = 0) is not latched: SRTP completes
  // and the scalable-mode table stays.
  const auto refused = v.drv.regs.stats().commands_refused.value();
  v.drv.set_root_table(iommu::rtaddr::make(0x1000, 3));
  CHECK((v.iommu.scalable() && v.drv.regs.stats().commands_refused.value() == refused + 1));
}

TEST_CASE("first-level only: 4- and 5-level tables, 4K/2M/1G pages, A/D flags, then an IOTLB hit", "[iommu][sm]") {
  const unsigned levels = GENERATE(4u, 5u);
  const unsigned shift = GENERATE(12u, 21u, 30u);
  const std::uint64_t la = levels == 5 ? kLa5 : kLa4;
  const unsigned fl_refs = levels - (shift - 12) / 9;
  Sm v(pe::kPgttFirstLevel, levels);
  v.attach();
  v.h.guest_map(la, kDataHpa, shift);
  const std::uint64_t off = la & ((1ull << shift) - 1);

  auto o = v.dma(la, DmaAccess::Write);
  REQUIRE(o.r.ok());
  CHECK(o.hpa == kDataHpa + off);
  CHECK(o.reads == kCtxReads + fl_refs);
  CHECK(o.writes == fl_refs);  // A in every entry, D with it in the leaf: one write each
  CHECK(o.cycles == kCtxCycles + kIotlb + kPsc + fl_refs * kReadLatency + fl_refs * kWriteLatency);
  for (unsigned l = levels; l > levels - fl_refs; --l) {
    CHECK((v.h.guest_entry(la, l) & pte::kAccessed) != 0);
    CHECK(v.st().refs_fl_level(l).value() == 1);
  }
  CHECK((v.h.guest_entry(la, levels - fl_refs + 1) & pte::kDirty) != 0);
  CHECK((v.st().fl_walks.value() == 1 && v.st().sl_walks.value() == 0 && v.st().refs_first_level.value() == fl_refs));
  CHECK((v.st().refs_second_level.value() == 0 && v.st().ad_updates.value() == fl_refs));

  auto o2 = v.dma(la ^ 0x8, DmaAccess::Write);
  REQUIRE(o2.r.ok());
  CHECK((o2.hpa == ((kDataHpa + off) ^ 0x8) && o2.reads == 0 && o2.writes == 0));
  CHECK(o2.cycles == kCtx + kPasidLat + kIotlb);
  CHECK((v.st().pasid_hits.value() == 1 && v.st().pasid_misses.value() == 1));
  CHECK(v.iommu.iotlb().stats().hits.value() == 1);
}

TEST_CASE("nested: cold walk of 4-level over 4-level tables, all caches off, by page size", "[iommu][sm][nested]") {
  const unsigned fl_shift = GENERATE(12u, 21u, 30u);
  const unsigned sl_shift = GENERATE(12u, 21u, 30u);
  const unsigned fl = 4 - (fl_shift - 12) / 9;  // first-level entries read
  const unsigned sl = 4 - (sl_shift - 12) / 9;  // second-level entries for the final address
  Sm v(pe::kPgttNested, 4, 4, no_walk_caches());
  v.attach();
  const std::uint64_t expect = map_nested(v, fl_shift, sl_shift);

  auto o = v.dma(kLa4);
  REQUIRE(o.r.ok());
  CHECK(o.hpa == expect);
  // Each first-level table takes a 4-reference second-level walk and its own
  // read; 4K/4K: 4 x (4 + 1) + 4 = 24.
  const unsigned refs = fl * 5 + sl;
  if (fl_shift == 12 && sl_shift == 12) CHECK(refs == 24);
  CHECK(o.reads == kCtxReads + refs);
  CHECK((v.st().refs_first_level.value() == fl && v.st().refs_second_level.value() == fl * 4 + sl));
  CHECK(v.st().refs_sl1.value() == fl + (sl == 4 ? 1u : 0u));
  CHECK((v.st().fl_walks.value() == 1 && v.st().nested_walks.value() == 1 && v.st().sl_walks.value() == fl + 1));
  CHECK(o.writes == fl);  // accessed flags of the first-level entries
  CHECK(o.cycles == kCtxCycles + kIotlb + refs * kReadLatency + fl * kWriteLatency);
  CHECK((v.st().walk_refs.count() == 1 && v.st().walk_refs.max() == refs));

  // The IOTLB caches the combined translation, effective page size the smaller.
  auto hit = v.dma(kLa4 ^ 0x10);
  CHECK((hit.r.ok() && hit.reads == 0 && hit.hpa == (expect ^ 0x10)));
  // The next smaller page inside the larger one is another IOTLB entry.
  if (fl_shift != sl_shift) {
    const unsigned small = fl_shift < sl_shift ? fl_shift : sl_shift;
    const std::uint64_t next = (kLa4 & ~((1ull << small) - 1)) + (1ull << small);
    const std::uint64_t expect_next = map_nested(v, fl_shift, sl_shift, next);
    auto miss = v.dma(next);
    CHECK((miss.r.ok() && miss.reads > 0 && miss.hpa == expect_next));
    CHECK(v.iommu.iotlb().occupancy() == 2);
  }
}

TEST_CASE("nested: 5-level first level over 4-level second level takes 29 references", "[iommu][sm][nested]") {
  Sm v(pe::kPgttNested, 5, 4, no_walk_caches());
  v.attach();
  v.h.guest_map(kLa5, kDataGpa, 12);
  v.h.ept_map(kDataGpa, kDataHpa, 12);
  auto o = v.dma(kLa5);
  REQUIRE(o.r.ok());
  CHECK((o.hpa == kDataHpa + (kLa5 & 0xFFF) && o.reads == kCtxReads + 29));
  CHECK((v.st().refs_fl5.value() == 1 && v.st().refs_first_level.value() == 5 && v.st().refs_second_level.value() == 24));
}

TEST_CASE("nested walk caches: first-level PSCs skip tables and their translations, second-level PSCs shorten walks",
          "[iommu][sm][nested]") {
  const bool fl_psc = GENERATE(true, false);
  auto p = cfg::defaults<IommuParams>();
  if (!fl_psc)
    for (unsigned l = 2; l <= 5; ++l) p.fl_psc.level(l).enabled = false;
  Sm v(pe::kPgttNested, 4, 4, p);
  v.attach();
  map_nested(v, 12, 12);
  v.h.ept_map(kDataGpa + 0x1000, kDataHpa + 0x1000, 12);
  v.h.guest_map(kLa4 + 0x1000, kDataGpa + 0x1000, 12);

  // Cold: the first table's second-level walk is full (4); the other
  // tables lie in the same 2 MiB of guest-physical space, so the
  // second-level PDE cache leaves one reference each; the data page shares
  // only the PML4E: 3. Total (4 + 1) + 3 x (1 + 1) + 3 = 14.
  auto o = v.dma(kLa4);
  REQUIRE(o.r.ok());
  CHECK(o.reads == kCtxReads + 14);
  // The next page: IOTLB miss. With the first-level PDE cache the walk reads
  // the page-table entry at its cached host address (1) and the final
  // address's second-level PTE through the PDE cache (1); without it every
  // first-level table needs its own (cached, 1-reference) translation.
  auto n = v.dma(kLa4 + 0x1000);
  REQUIRE(n.r.ok());
  CHECK(n.hpa == kDataHpa + 0x1000 + (kLa4 & 0xFFF));
  CHECK(n.reads == (fl_psc ? 2u : 4u * 2u + 1u));
  CHECK(v.iommu.fl_psc(2).stats().hits.value() == (fl_psc ? 1u : 0u));
  CHECK(n.cycles == kCtx + kPasidLat + kIotlb + (fl_psc ? kPsc : 0) + kPsc * (fl_psc ? 1 : 5) +
                        n.reads * kReadLatency + n.writes * kWriteLatency);
}

TEST_CASE("second-level only and pass-through PASID entries; requests without PASID use RID_PASID", "[iommu][sm]") {
  Sm v(pe::kPgttSecondLevel);
  v.set_pasid(kDev, 0, pe::make(v.fields()), /*rid_pasid=*/0);
  const std::uint64_t iova = 0x0000'1234'5678'9ABCull;
  v.h.ept_map(iova & ~0xFFFull, kDataHpa, 12);
  DmaRequest q;
  q.requester_id = kDev;
  q.address = iova;
  auto o = v.dma(q);
  REQUIRE(o.r.ok());
  CHECK((o.hpa == kDataHpa + 0xABC && o.reads == kCtxReads + 4));
  CHECK((v.st().sl_walks.value() == 1 && v.st().fl_walks.value() == 0 && v.st().refs_second_level.value() == 4));
  // The same translation asked for with PASID 0 explicitly shares the IOTLB entry.
  auto o2 = v.dma(iova, DmaAccess::Write, 0);
  CHECK((o2.r.ok() && o2.reads == 0));

  // Beyond the 48-bit width of the second level: 83h.
  auto far = v.dma(1ull << 48, DmaAccess::Read, 0);
  CHECK((far.r.reason == FaultReason::kSmAddressBeyondAw && far.r.stage == FaultStage::kSecondLevel));

  // Pass-through for another PASID of the same device.
  pe::Fields f = v.fields();
  f.pgtt = pe::kPgttPassThrough;
  v.set_pasid(kDev, 9, pe::make(f));
  auto pt = v.dma(0x1234'5000, DmaAccess::Write, 9);
  CHECK((pt.r.ok() && pt.hpa == 0x1234'5000 && v.st().passthrough.value() == 1));
  CHECK(pt.reads == 1 + 3);  // PASID directory entry (cached context) and PASID-table entry
}

TEST_CASE("devices with function 128+ use the upper context table", "[iommu][sm]") {
  Sm v(pe::kPgttFirstLevel);
  v.attach(kDevHigh);
  v.h.guest_map(kLa4, kDataHpa, 12);
  auto o = v.dma(kLa4, DmaAccess::Read, kPasid, false, false, kDevHigh);
  CHECK((o.r.ok() && o.hpa == kDataHpa + kDataOff));
  CHECK(v.h.mem.reads[0] == v.rt + 2 * 16 + 8);  // the root entry's upper half
}

TEST_CASE("IOTLB and first-level caches are tagged by domain and PASID", "[iommu][sm]") {
  Sm v(pe::kPgttFirstLevel);
  v.attach(kDev, 1);
  v.h.guest_map(kLa4, kDataHpa, 12);
  // PASID 2: another address space (its own first-level tables), same domain.
  const std::uint64_t cr3_1 = v.h.cr3;
  v.h.cr3 = v.h.new_guest_table();
  v.h.guest_map(kLa4, kDataHpa + 0x5000, 12);
  v.attach(kDev, 2);
  v.h.cr3 = cr3_1;
  for (int round = 0; round < 2; ++round) {
    auto a = v.dma(kLa4, DmaAccess::Read, 1);
    auto b = v.dma(kLa4, DmaAccess::Read, 2);
    REQUIRE((a.r.ok() && b.r.ok()));
    CHECK(a.hpa == kDataHpa + kDataOff);
    CHECK(b.hpa == kDataHpa + 0x5000 + kDataOff);
  }
  CHECK((v.st().fl_walks.value() == 2 && v.iommu.iotlb().stats().hits.value() == 2));
  CHECK(v.iommu.fl_psc(2).occupancy() == 2);
}

TEST_CASE("PASID cache: hits, and invalidation makes a changed PASID entry take effect", "[iommu][sm]") {
  Sm v(pe::kPgttFirstLevel);
  v.attach();
  v.h.guest_map(kLa4, kDataHpa, 12);
  v.dma(kLa4);
  CHECK(v.iommu.pasid_cache_occupancy() == 1);
  // Software moves the PASID to domain 9 and to pass-through.
  pe::Fields f = v.fields(9);
  f.pgtt = pe::kPgttPassThrough;
  v.set_pasid(kDev, kPasid, pe::make(f));
  CHECK(v.dma(kLa4).hpa == kDataHpa + kDataOff);  // stale PASID-cache entry and IOTLB entry still used

  SECTION("PASID-selective") {
    v.drv.pasid_cache_invalidate_pasid(kDid, kPasid + 1);
    CHECK(v.iommu.pasid_cache_occupancy() == 1);  // another PASID: no effect
    v.drv.pasid_cache_invalidate_pasid(kDid, kPasid);
  }
  SECTION("domain-selective") { v.drv.pasid_cache_invalidate_domain(kDid); }
  SECTION("global") { v.drv.pasid_cache_invalidate_global(); }
  CHECK(v.iommu.pasid_cache_occupancy() == 0);
  auto o = v.dma(kLa4);
  CHECK((o.r.ok() && o.hpa == kLa4 && o.reads == 1 + 3));
}

TEST_CASE("PASID-based IOTLB invalidation", "[iommu][sm]") {
  Sm v(pe::kPgttFirstLevel);
  v.attach(kDev, 1);
  v.attach(kDev, 2);  // same tables, another PASID
  v.h.guest_map(kLa4, kDataHpa, 12);
  v.h.guest_map(kLa4 + 0x1000, kDataHpa + 0x1000, 12);
  auto warm = [&] {
    v.dma(kLa4, DmaAccess::Read, 1);
    v.dma(kLa4 + 0x1000, DmaAccess::Read, 1);
    v.dma(kLa4, DmaAccess::Read, 2);
  };
  warm();
  REQUIRE(v.iommu.iotlb().occupancy() == 3);

  SECTION("all of one PASID") {
    v.drv.pasid_iotlb_invalidate(kDid, 1);
    CHECK(v.iommu.iotlb().occupancy() == 1);
    CHECK(v.dma(kLa4, DmaAccess::Read, 2).reads == 0);
    CHECK(v.dma(kLa4, DmaAccess::Read, 1).reads == 4);  // first-level caches of PASID 1 dropped too
    CHECK(v.dma(kLa4 + 0x1000, DmaAccess::Read, 1).reads == 1);
  }
  SECTION("one page of one PASID, IH = 1 keeps the paging-structure caches") {
    v.drv.pasid_iotlb_invalidate_page(kDid, 1, kLa4, 0, true);
    CHECK(v.iommu.iotlb().occupancy() == 2);
    CHECK(v.dma(kLa4 + 0x1000, DmaAccess::Read, 1).reads == 0);
    CHECK(v.dma(kLa4, DmaAccess::Read, 2).reads == 0);
    CHECK(v.dma(kLa4, DmaAccess::Read, 1).reads == 1);
  }
  SECTION("a page range with IH = 0") {
    v.drv.pasid_iotlb_invalidate_page(kDid, 1, kLa4, 4);  // the 16 pages around kLa4: both
    CHECK(v.iommu.iotlb().occupancy() == 1);
    CHECK(v.dma(kLa4 + 0x1000, DmaAccess::Read, 1).reads == 4);
  }
  SECTION("domain-selective drops every PASID of the domain") {
    v.drv.iotlb_invalidate_domain(kDid);
    CHECK(v.iommu.iotlb().occupancy() == 0);
    CHECK(v.iommu.fl_psc(2).occupancy() == 0);
  }
  CHECK(v.st().invalidations.value() == 1);
}

TEST_CASE("second-level accessed/dirty flags follow SLADE", "[iommu][sm]") {
  const bool slade = GENERATE(false, true);
  Sm v(pe::kPgttSecondLevel);
  pe::Fields f = v.fields();
  f.slade = slade;
  v.set_pasid(kDev, kPasid, pe::make(f));
  v.h.ept_map(kDataGpa, kDataHpa, 12);
  auto r = v.dma(kDataGpa);
  REQUIRE(r.r.ok());
  CHECK(r.writes == (slade ? 4u : 0u));
  CHECK(((v.h.mem.peek(v.h.ept_entry(kDataGpa, 1)) & iommu::sl::kAccessed) != 0) == slade);
  CHECK((v.h.mem.peek(v.h.ept_entry(kDataGpa, 1)) & iommu::sl::kDirty) == 0);
  // A write after the read: with SLADE the IOTLB entry lacks the dirty
  // flag, so the write walks (from the PDE cache) and sets it.
  auto w = v.dma(kDataGpa, DmaAccess::Write);
  REQUIRE(w.r.ok());
  CHECK(w.reads == (slade ? 1u : 0u));
  CHECK(((v.h.mem.peek(v.h.ept_entry(kDataGpa, 1)) & iommu::sl::kDirty) != 0) == slade);
}

TEST_CASE("scalable-mode faults before the walk: context and PASID structures", "[iommu][sm][faults]") {
  Sm v(pe::kPgttFirstLevel);
  v.attach();
  v.h.guest_map(kLa4, kDataHpa, 12);
  struct Case {
    const char* what;
    FaultReason reason;
  };
  const std::uint16_t no_root = iommu::requester_id(9, 0, 0);
  const std::uint16_t no_ctx = iommu::requester_id(2, 4, 0);
  const std::uint16_t no_paside = iommu::requester_id(2, 5, 0);
  v.set_context(no_paside, smctx::make(v.h.alloc_host(), 0, 0, /*paside=*/false));

  auto o = v.dma(kLa4, DmaAccess::Read, kPasid, false, false, no_root);
  CHECK((o.r.reason == FaultReason::kSmRootNotPresent && o.reads == 1));
  o = v.dma(kLa4, DmaAccess::Read, kPasid, false, false, no_ctx);
  CHECK((o.r.reason == FaultReason::kSmContextNotPresent && o.reads == 3));
  o = v.dma(kLa4, DmaAccess::Read, kPasid, false, false, no_paside);
  CHECK(o.r.reason == FaultReason::kSmPasidDisabled);
  o = v.dma(kLa4, DmaAccess::Write, 8192);
  CHECK(o.r.reason == FaultReason::kSmPasidTooLarge);
  o = v.dma(kLa4, DmaAccess::Read, 64);  // directory entry 1 absent
  CHECK((o.r.reason == FaultReason::kSmPasidDirNotPresent && o.reads == 1));
  o = v.dma(kLa4, DmaAccess::Read, kPasid + 1);  // same directory entry, PASID entry absent
  CHECK((o.r.reason == FaultReason::kSmPasidNotPresent && o.reads == 1 + 3));
  pe::Fields bad = v.fields();
  bad.pgtt = 5;
  v.set_pasid(kDev, 3, pe::make(bad));
  CHECK(v.dma(kLa4, DmaAccess::Read, 3).r.reason == FaultReason::kSmPasidInvalid);
  pe::Fields no_sre = v.fields();
  no_sre.sre = false;
  v.set_pasid(kDev, 4, pe::make(no_sre));
  CHECK(v.dma(kLa4, DmaAccess::Read, 4, /*priv=*/true).r.reason == FaultReason::kSmSupervisorDisabled);
  CHECK(v.dma(kLa4, DmaAccess::Read, 4, /*priv=*/false).r.ok());

  const auto& log = v.iommu.fault_log();
  REQUIRE(log.size() == 8);
  CHECK((log[0].requester_id == no_root && log[0].reason == FaultReason::kSmRootNotPresent));
  CHECK((log[3].has_pasid && log[3].pasid == 8192 && log[3].access == DmaAccess::Write && log[3].address == kLa4));
  CHECK((log[7].privileged && log[7].pasid == 4 && log[7].reason == FaultReason::kSmSupervisorDisabled));
  for (const auto& rec : log) CHECK(rec.stage == FaultStage::kContext);
  CHECK(static_cast<int>(log[5].reason) == 0x59);
  CHECK((v.st().fault_sm_pasid_not_present.value() == 1 && v.st().fault_sm_pasid_dir_not_present.value() == 1));
  CHECK(v.st().faults.value() == 8);

  // Legacy mode: a request with a PASID is blocked (31h).
  Sm l(pe::kPgttFirstLevel);
  l.drv.set_root_table(iommu::rtaddr::make(l.rt, iommu::rtaddr::kTtmLegacy));
  CHECK(l.dma(kLa4).r.reason == FaultReason::kSmLegacyPasid);
}

TEST_CASE("first-level faults: not present, reserved, canonical, U/S, W, XD, WPE", "[iommu][sm][faults]") {
  Sm v(pe::kPgttFirstLevel);
  pe::Fields f = v.fields();
  v.set_pasid(kDev, kPasid, pe::make(f));
  f.wpe = true;
  v.set_pasid(kDev, kPasid + 1, pe::make(f));
  v.h.guest_map(kLa4, kDataHpa, 12, pte::kPresent | pte::kUser);                        // read-only user page
  v.h.guest_map(kLa4 + 0x1000, kDataHpa + 0x1000, 12, pte::kPresent | pte::kWritable);  // supervisor page
  v.h.guest_map(kLa4 + 0x2000, kDataHpa + 0x2000, 12, kPwu | pte::kNoExecute);

  auto check = [&](Sm::Out o, FaultReason r) {
    CHECK(o.r.reason == r);
    CHECK(o.r.stage == FaultStage::kFirstLevel);
    CHECK(o.hpa == ~0ull);
  };
  check(v.dma(0x0000'3000'0000'0000ull), FaultReason::kSmFlNotPresent);
  check(v.dma(0x0000'8000'0000'0000ull), FaultReason::kSmNonCanonical);
  check(v.dma(kLa4, DmaAccess::Write), FaultReason::kSmWriteDenied);
  check(v.dma(kLa4 + 0x1000), FaultReason::kSmUserSupervisor);
  check(v.dma(kLa4 + 0x2000, DmaAccess::Read, kPasid, false, /*exec=*/true), FaultReason::kSmExecuteDenied);
  CHECK(v.dma(kLa4 + 0x2000).r.ok());
  CHECK(v.dma(kLa4 + 0x1000, DmaAccess::Write, kPasid, /*priv=*/true).r.ok());
  // Supervisor write to a read-only page: allowed with WPE = 0, not with 1.
  CHECK(v.dma(kLa4, DmaAccess::Write, kPasid, true).r.ok());
  check(v.dma(kLa4, DmaAccess::Write, kPasid + 1, true), FaultReason::kSmWriteDenied);
  // PS in a PML4E is reserved.
  const std::uint64_t big = 0x0000'5000'0000'0000ull;
  v.h.mem.poke(v.h.cr3 + mmu::table_index(big, 4) * 8, kDataHpa | kPwu | pte::kPageSize);
  check(v.dma(big), FaultReason::kSmFlReserved);
  CHECK(v.st().faults_first_level.value() == 7);
  const auto& log = v.iommu.fault_log();
  REQUIRE(log.size() == 7);
  CHECK((log[1].address == 0x0000'8000'0000'0000ull && log[1].reason == FaultReason::kSmNonCanonical));
  CHECK((log[4].execute && log[4].reason == FaultReason::kSmExecuteDenied));
}

TEST_CASE("nested faults are reported at the stage that found them", "[iommu][sm][faults][nested]") {
  Sm v(pe::kPgttNested, 4, 4, no_walk_caches());
  v.attach();

  SECTION("second level does not map the first-level root table: 75h") {
    v.h.mem.poke(v.h.ept_entry(v.h.cr3, 1), 0);
    auto o = v.dma(kLa4);
    CHECK((o.r.reason == FaultReason::kSmNestedFlptrDenied && o.r.stage == FaultStage::kNestedTable));
    CHECK(o.reads == kCtxReads + 4);
    CHECK(v.st().faults_nested_table.value() == 1);
  }
  SECTION("second level does not map a lower first-level table: 76h") {
    map_nested(v, 12, 12);
    const std::uint64_t pt = v.h.guest_entry(kLa4, 2) & pte::kAddrMask;  // the page table's guest-physical page
    v.h.mem.poke(v.h.ept_entry(pt, 1), 0);
    auto o = v.dma(kLa4);
    CHECK((o.r.reason == FaultReason::kSmNestedFlTableDenied && o.r.stage == FaultStage::kNestedTable));
    CHECK(o.reads == kCtxReads + 3 * 5 + 4);
  }
  SECTION("second level maps a first-level table read-only: reads work until an A/D update: 77h") {
    map_nested(v, 12, 12);
    const std::uint64_t pd = v.h.guest_entry(kLa4, 3) & pte::kAddrMask;
    const std::uint64_t e = v.h.ept_entry(pd, 1);
    v.h.mem.poke(e, v.h.mem.peek(e) & ~ept::kWrite);
    auto o = v.dma(kLa4);
    CHECK((o.r.reason == FaultReason::kSmNestedFlAdDenied && o.r.stage == FaultStage::kNestedTable));
    // With the accessed flags already set no update is needed: it works.
    for (unsigned l = 4; l >= 1; --l) v.h.set_guest_entry(kLa4, l, v.h.guest_entry(kLa4, l) | pte::kAccessed);
    CHECK(v.dma(kLa4).r.ok());
  }
  SECTION("the final guest-physical address: second-level read and write denied, 86h/85h") {
    map_nested(v, 12, 12, kLa4, kPwu, ept::kRead);
    CHECK(v.dma(kLa4).r.ok());
    auto w = v.dma(kLa4, DmaAccess::Write);
    CHECK((w.r.reason == FaultReason::kSmWriteDenied && w.r.stage == FaultStage::kSecondLevel));
    v.h.guest_map(kLa4 + 0x1000, kDataGpa + 0x1000, 12);  // guest page with no second-level mapping
    auto r = v.dma(kLa4 + 0x1000);
    CHECK((r.r.reason == FaultReason::kSmReadDenied && r.r.stage == FaultStage::kSecondLevel));
    CHECK(r.reads == kCtxReads - 7 + 4 * 5 + 4);  // context and PASID cached; full walk, the last SL entry absent
    CHECK((v.st().faults_second_level.value() == 2 && v.st().faults_first_level.value() == 0));
    const auto& log = v.iommu.fault_log();
    REQUIRE(log.size() == 2);
    CHECK((log[1].requester_id == kDev && log[1].pasid == kPasid && log[1].address == kLa4 + 0x1000 &&
           log[1].access == DmaAccess::Read && log[1].stage == FaultStage::kSecondLevel));
  }
  SECTION("a first-level fault in a nested walk stays a first-level fault") {
    map_nested(v, 12, 12, kLa4, pte::kPresent | pte::kUser);
    auto w = v.dma(kLa4, DmaAccess::Write);
    CHECK((w.r.reason == FaultReason::kSmWriteDenied && w.r.stage == FaultStage::kFirstLevel));
  }
  SECTION("reserved page size in a second-level PML4E: 7Ah") {
    const std::uint64_t gpa = 0x80'0000'0000ull;  // 512 GiB: its own second-level PML4E
    v.h.guest_map(kLa4, gpa, 12);
    const std::uint64_t root = v.h.eptp & ept::kAddrMask;
    v.h.mem.poke(root + mmu::table_index(gpa, 4) * 8, kDataHpa | kRwx | ept::kLargePage);
    auto o = v.dma(kLa4);
    CHECK((o.r.reason == FaultReason::kSmSlReserved && o.r.stage == FaultStage::kSecondLevel));
  }
}

TEST_CASE("FPD in the PASID entry suppresses recording", "[iommu][sm][faults]") {
  Sm v(pe::kPgttFirstLevel);
  pe::Fields f = v.fields();
  f.fpd = true;
  v.set_pasid(kDev, kPasid, pe::make(f));
  auto o = v.dma(kLa4);
  CHECK((o.r.reason == FaultReason::kSmFlNotPresent && v.iommu.fault_log().empty()));
  CHECK(v.st().faults_suppressed.value() == 1);
}

TEST_CASE("S19: a device streams DMA to PASID-tagged guest-virtual addresses through both stages",
          "[iommu][sm][nested][s19]") {
  Sm v(pe::kPgttNested);  // default caches
  v.attach();
  constexpr unsigned kPages = 16, kBursts = 4;  // 4 x 64-byte writes per 4 KiB page
  const std::uint64_t va = kLa4 & ~0xFFFull;
  for (unsigned i = 0; i < kPages; ++i) {
    v.h.guest_map(va + i * 0x1000, kDataGpa + i * 0x1000, 12);
    v.h.ept_map(kDataGpa + i * 0x1000, kDataHpa + i * 0x1000, 12);
  }
  for (unsigned i = 0; i < kPages; ++i)
    for (unsigned b = 0; b < kBursts; ++b) {
      auto o = v.dma(va + i * 0x1000 + b * 64, DmaAccess::Write);
      REQUIRE(o.r.ok());
      CHECK(o.hpa == kDataHpa + i * 0x1000 + b * 64);
    }
  // Both stages walked: the first page costs 14 references (see the walk
  // cache test), every later one 2 (first-level PTE through the first-level
  // PDE cache, final second-level PTE through the second-level PDE cache).
  CHECK((v.st().walks.value() == kPages && v.st().nested_walks.value() == kPages));
  CHECK(v.st().refs_first_level.value() == 4 + (kPages - 1));
  CHECK(v.st().refs_second_level.value() == 10 + (kPages - 1));
  CHECK((v.st().walk_refs.max() == 14 && v.st().walk_refs.min() == 2 && v.st().walk_refs.sum() == 14 + 2 * (kPages - 1)));
  // The IOTLB caches the combined translation: one miss per page.
  CHECK((v.iommu.iotlb().stats().misses.value() == kPages &&
         v.iommu.iotlb().stats().hits.value() == kPages * (kBursts - 1)));
  CHECK((v.st().pasid_hits.value() == kPages * kBursts - 1 && v.st().faults.value() == 0));
  for (unsigned i = 0; i < kPages; ++i) CHECK((v.h.guest_entry(va + i * 0x1000, 1) & pte::kDirty) != 0);

  // Faults at the right stage: a guest page the guest unmapped (first
  // level), and one the hypervisor took away (second level).
  v.h.set_guest_entry(va + 0x3000, 1, 0);
  v.drv.pasid_iotlb_invalidate_page(kDid, kPasid, va + 0x3000);
  v.h.mem.poke(v.h.ept_entry(kDataGpa + 0x5000, 1), 0);
  v.drv.iotlb_invalidate_domain(kDid);
  auto f1 = v.dma(va + 0x3000, DmaAccess::Write);
  auto f2 = v.dma(va + 0x5000, DmaAccess::Write);
  CHECK((f1.r.reason == FaultReason::kSmFlNotPresent && f1.r.stage == FaultStage::kFirstLevel));
  CHECK((f2.r.reason == FaultReason::kSmWriteDenied && f2.r.stage == FaultStage::kSecondLevel));
  CHECK((v.st().faults_first_level.value() == 1 && v.st().faults_second_level.value() == 1));
  CHECK(v.dma(va + 0x4000, DmaAccess::Write).r.ok());
}

TEST_CASE("requests without PASID take RID_PASID and RID_PRIV from the context entry", "[iommu][sm]") {
  const bool rid_priv = GENERATE(false, true);
  Sm v(pe::kPgttFirstLevel);
  v.set_context(kDev, smctx::make(v.h.alloc_host(), 0, kPasid, true, false, rid_priv));
  v.attach(kDev, kPasid);
  v.h.guest_map(kLa4, kDataHpa, 12, pte::kPresent | pte::kWritable);  // supervisor page
  DmaRequest q;
  q.requester_id = kDev;
  q.address = kLa4;
  auto o = v.dma(q);
  if (rid_priv) {
    CHECK((o.r.ok() && o.hpa == kDataHpa + kDataOff));
  } else {
    CHECK(o.r.reason == FaultReason::kSmUserSupervisor);
    REQUIRE(v.iommu.fault_log().size() == 1);
    CHECK((v.iommu.fault_log()[0].pasid == kPasid && !v.iommu.fault_log()[0].privileged));
  }
}

// --- One walker: the IOMMU's walks and the CPU's are the same loop --------
//
// Two identical fixtures (the same tables at the same addresses): the IOMMU
// translates a DMA in one, the CPU's walker (mmu::Walker, no walk caches)
// the same linear address in the other. First-level only is the CPU's 1D
// walk, nested the 2D walk over EPT. The references must be the same
// addresses in the same order, and so must the accessed/dirty writes.

TEST_CASE("one walker: a first-level or nested DMA walk reads what the CPU's walk reads", "[iommu][sm][walker]") {
  const bool nested = GENERATE(false, true);
  const unsigned levels = GENERATE(4u, 5u);
  const unsigned shift = GENERATE(12u, 21u, 30u);
  const bool write = GENERATE(false, true);
  const unsigned pgtt = nested ? pe::kPgttNested : pe::kPgttFirstLevel;
  const std::uint64_t la = levels == 5 ? kLa5 : kLa4;
  Sm dma(pgtt, levels, 4, no_walk_caches()), cpu(pgtt, levels, 4, no_walk_caches());
  std::uint64_t expect = 0;
  for (Sm* v : {&dma, &cpu}) {
    v->attach();
    if (nested) {
      v->h.guest_map(la, kDataGpa, shift);
      v->h.ept_map(kDataGpa & ~((1ull << shift) - 1), kDataHpa, shift);
    } else {
      v->h.guest_map(la, kDataHpa, shift);
    }
    expect = kDataHpa + (la & ((1ull << shift) - 1));
  }
  const std::size_t cpu_reads0 = cpu.h.mem.reads.size();
  auto o = dma.dma(la, write ? DmaAccess::Write : DmaAccess::Read);
  const auto r = cpu.h.walk(cpu.h.request(la, write ? AccessType::Write : AccessType::Read, true));
  REQUIRE(o.r.ok());
  REQUIRE(r.status == Status::Ok);
  CHECK(o.hpa == expect);
  CHECK(r.pa == expect);
  const std::vector<std::uint64_t> dma_reads(dma.h.mem.reads.begin() + static_cast<long>(kCtxReads),
                                             dma.h.mem.reads.end());
  const std::vector<std::uint64_t> cpu_reads(cpu.h.mem.reads.begin() + static_cast<long>(cpu_reads0),
                                             cpu.h.mem.reads.end());
  CHECK(dma_reads == cpu_reads);
  CHECK(dma.h.mem.writes == cpu.h.mem.writes);
  CHECK(dma_reads.size() == r.refs);
  CHECK(dma.st().refs_first_level.value() == r.guest_refs);
  CHECK(dma.st().refs_second_level.value() == static_cast<std::uint64_t>(r.refs - r.guest_refs));
}

TEST_CASE("one walker: a missing entry at any level is #PF / EPT violation for the CPU, its VT-d reason for DMA",
          "[iommu][sm][walker]") {
  const bool nested = GENERATE(false, true);
  const unsigned level = GENERATE(1u, 2u, 3u, 4u);
  const bool second_level = nested && GENERATE(false, true);  // the SL entry mapping that FL table goes
  const unsigned pgtt = nested ? pe::kPgttNested : pe::kPgttFirstLevel;
  Sm dma(pgtt, 4, 4, no_walk_caches()), cpu(pgtt, 4, 4, no_walk_caches());
  for (Sm* v : {&dma, &cpu}) {
    v->attach();
    if (nested) map_nested(*v, 12, 12);
    else v->h.guest_map(kLa4, kDataHpa, 12);
    if (second_level) {
      // The level-1 EPT entry of the page holding the level-`level` FL table.
      const std::uint64_t table_gpa = v->h.guest_entry_gpa(kLa4, level);
      v->h.ept_map(table_gpa & ~0xFFFull, v->h.host_of(table_gpa) & ~0xFFFull, 12, 0);
    } else {
      v->h.set_guest_entry(kLa4, level, v->h.guest_entry(kLa4, level) & ~pte::kPresent);
    }
  }
  auto o = dma.dma(kLa4, DmaAccess::Write);
  const auto r = cpu.h.walk(cpu.h.request(kLa4, AccessType::Write, true));
  REQUIRE(!o.r.ok());
  if (!second_level) {
    CHECK(r.status == Status::PageFault);
    CHECK(r.error_code == (pfec::kWrite | pfec::kUser));
    CHECK((r.fault.stage == mmu::WalkFault::Stage::One && r.fault.level == level));
    CHECK(r.fault.kind == mmu::WalkFault::Kind::NotPresent);
    CHECK(o.r.reason == FaultReason::kSmFlNotPresent);
    CHECK(o.r.stage == FaultStage::kFirstLevel);
  } else {
    CHECK(r.status == Status::EptViolation);
    CHECK(r.exit_qualification == (qual::kEptRead | qual::kEptGlaValid));  // a paging-structure read
    CHECK((r.fault.stage == mmu::WalkFault::Stage::Two && r.fault.table_level == level && !r.fault.final));
    CHECK(r.fault_gpa == cpu.h.guest_entry_gpa(kLa4, level));
    CHECK(o.r.reason == (level == 4 ? FaultReason::kSmNestedFlptrDenied : FaultReason::kSmNestedFlTableDenied));
    CHECK(o.r.stage == FaultStage::kNestedTable);
  }
  CHECK(dma.h.mem.reads.size() - kCtxReads == r.refs);
}

TEST_CASE("one walker: a right missing in the first level is one #PF code and one VT-d reason",
          "[iommu][sm][walker]") {
  struct Case {
    const char* name;
    std::uint64_t clear;  // bits cleared from the leaf entry
    std::uint64_t set;    // bits set in it
    AccessType type;
    bool user;
    std::uint32_t error_code;
    FaultReason reason;
  };
  const Case c = GENERATE(
      Case{"user read of a supervisor page", pte::kUser, 0, AccessType::Read, true, pfec::kPresent | pfec::kUser,
           FaultReason::kSmUserSupervisor},
      Case{"user write of a read-only page", pte::kWritable, 0, AccessType::Write, true,
           pfec::kPresent | pfec::kWrite | pfec::kUser, FaultReason::kSmWriteDenied},
      Case{"user fetch from an XD page", 0, pte::kNoExecute, AccessType::Execute, true,
           pfec::kPresent | pfec::kUser | pfec::kFetch, FaultReason::kSmExecuteDenied});
  const unsigned level = GENERATE(1u, 2u, 3u, 4u);  // the entry that lacks the right
  INFO(c.name << " at level " << level);
  Sm dma(pe::kPgttFirstLevel, 4, 4, no_walk_caches()), cpu(pe::kPgttFirstLevel, 4, 4, no_walk_caches());
  for (Sm* v : {&dma, &cpu}) {
    v->attach();
    v->h.guest_map(kLa4, kDataHpa, 12);
    v->h.set_guest_entry(kLa4, level, (v->h.guest_entry(kLa4, level) & ~c.clear) | c.set);
  }
  const bool exec = c.type == AccessType::Execute;
  auto o = dma.dma(kLa4, c.type == AccessType::Write ? DmaAccess::Write : DmaAccess::Read, kPasid, !c.user, exec);
  const auto r = cpu.h.walk(cpu.h.request(kLa4, c.type, c.user));
  REQUIRE(r.status == Status::PageFault);
  CHECK(r.error_code == c.error_code);
  CHECK((r.fault.kind == mmu::WalkFault::Kind::Permission && r.fault.level == 1));
  REQUIRE(!o.r.ok());
  CHECK(o.r.reason == c.reason);
  CHECK(o.r.stage == FaultStage::kFirstLevel);
  CHECK(dma.h.mem.reads.size() - kCtxReads == r.refs);
  CHECK((dma.h.mem.writes.empty() && cpu.h.mem.writes.empty()));  // no flags set by a walk that faults
}
