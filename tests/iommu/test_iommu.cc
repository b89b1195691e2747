// Exact tests of the VT-d DMA remapping core (iommu/iommu): real root,
// context and second-level tables in a fake memory whose every 8-byte read
// costs kReadLatency cycles (tests/mmu/walk_harness.h), so reference counts
// and cycles are exact.
#include "iommu/iommu.h"

#include <catch2/catch.hpp>

#include "iommu/vtd_harness.h"
#include "mmu/walk_harness.h"
#include "sim/params.h"

using iommu::DmaAccess;
using iommu::FaultReason;
using iommu::Iommu;
using iommu::IommuParams;
namespace sl = iommu::sl;
namespace ctx = iommu::ctx;
namespace root = iommu::root;

namespace {

constexpr std::uint16_t kDevA = iommu::requester_id(3, 2, 0);  // 03:02.0
constexpr std::uint16_t kDevB = iommu::requester_id(3, 4, 1);  // 03:04.1
constexpr std::uint64_t kIova = 0x0000'1234'5678'9ABCull;     // nonzero index at every level of 48 bits
constexpr std::uint64_t kHpaA = 0x2'0000'0000ull;             // 1 GiB aligned
constexpr std::uint64_t kHpaB = 0x3'0000'0000ull;

/// Root, context and second-level tables in a FakeMemory, and the IOMMU.
struct Vtd {
  explicit Vtd(IommuParams p = cfg::defaults<IommuParams>())
      : params(p), iommu(params, mem, &stats_root), drv(iommu, mem, &stats_root) {
    rtaddr = alloc();
    drv.set_root_table(rtaddr);
    drv.enable(true);
  }

  std::uint64_t alloc() {
    std::uint64_t p = next;
    next += 0x1000;
    return p;
  }

  /// Writes the context entry of rid (and its bus's root entry if absent).
  void set_context(std::uint16_t rid, const iommu::ContextEntry& ce) {
    const std::uint64_t re = rtaddr + iommu::rid_bus(rid) * root::kEntrySize;
    if (!(mem.peek(re) & root::kPresent)) mem.poke(re, root::lo(alloc()));
    const std::uint64_t a = (mem.peek(re) & root::kCtpMask) + iommu::rid_devfn(rid) * ctx::kEntrySize;
    mem.poke(a, ce.lo);
    mem.poke(a + 8, ce.hi);
  }

  /// Maps the 2^shift-byte page at iova to hpa in the second-level tables at
  /// slpt (levels deep); non-leaf entries are R/W.
  void sl_map(std::uint64_t slpt, std::uint64_t iova, std::uint64_t hpa, unsigned shift,
              std::uint64_t rights = sl::kRw, unsigned levels = 4) {
    std::uint64_t table = slpt;
    const unsigned leaf = leaf_level(shift);
    for (unsigned level = levels; level > leaf; --level) {
      const std::uint64_t a = table + mmu::table_index(iova, level) * 8;
      std::uint64_t e = mem.peek(a);
      if (!(e & sl::kRw)) {
        e = alloc() | sl::kRw;
        mem.poke(a, e);
      }
      table = e & sl::kAddrMask;
    }
    mem.poke(table + mmu::table_index(iova, leaf) * 8, (hpa & sl::kAddrMask) | rights | (leaf > 1 ? sl::kPageSize : 0));
  }

  /// A domain: a fresh second-level table for rid, mapping iova to hpa.
  std::uint64_t attach(std::uint16_t rid, std::uint16_t did, std::uint64_t iova, std::uint64_t hpa,
                       unsigned shift = 12, std::uint64_t rights = sl::kRw) {
    const std::uint64_t slpt = alloc();
    set_context(rid, ctx::make(slpt, did));
    sl_map(slpt, iova, hpa, shift, rights);
    return slpt;
  }

  struct Out {
    iommu::TranslateResult r;
    std::uint64_t hpa = ~0ull;
    std::uint32_t cycles = 0;
    std::size_t reads = 0;  // 8-byte reads (a context entry is two)
  };
  Out dma(std::uint16_t rid, std::uint64_t iova, DmaAccess a = DmaAccess::Read) {
    Out o;
    const std::size_t before = mem.reads.size();
    o.r = iommu.translate(rid, iova, a, o.hpa, o.cycles);
    o.reads = mem.reads.size() - before;
    return o;
  }

  const iommu::IommuStats& st() const { return iommu.stats(); }

  IommuParams params;
  FakeMemory mem;
  stats::Group stats_root;
  std::uint64_t next = 0x10'0000;
  std::uint64_t rtaddr = 0;
  Iommu iommu;
  vtdtest::Driver drv;  // programs the unit through its registers and queue
};

// Latencies with the defaults: context cache 1, IOTLB 2, paging-structure
// caches 1 (looked up in parallel), memory kReadLatency per reference.
constexpr std::uint32_t kCtx = 1, kIotlb = 2, kPsc = 1;

}  // namespace

TEST_CASE("iommu defaults", "[iommu]") {
  auto p = cfg::defaults<IommuParams>();
  CHECK((p.iotlb.entries == 64 && p.iotlb.ways == 4 && p.iotlb.latency == kIotlb));
  CHECK((p.context_cache.entries == 16 && p.context_cache.ways == 16 && p.context_cache.latency == kCtx));
  CHECK((p.sl_psc.pde.enabled && p.sl_psc.pde.entries == 32 && p.sl_psc.pde.latency == kPsc));
  CHECK(p.fault_records == 8);
}

TEST_CASE("formats: requester ID and context entry fields", "[iommu]") {
  CHECK(kDevA == 0x0310);
  CHECK((iommu::rid_bus(kDevB) == 3 && iommu::rid_devfn(kDevB) == 0x21));
  constexpr auto ce = ctx::make(0x5000, 0xBEEF, 3, ctx::kTtPassThrough, true);
  static_assert(ctx::did(ce.hi) == 0xBEEF && ctx::aw(ce.hi) == 3 && ctx::tt(ce.lo) == 2, "context fields");
  static_assert((ce.lo & ctx::kSlptptrMask) == 0x5000 && (ce.lo & ctx::kFaultProcessingDisable), "context fields");
  static_assert(ctx::aw_levels(1) == 3 && ctx::aw_bits(2) == 48 && ctx::aw_bits(3) == 57, "AW encodings");
}

TEST_CASE("disabled IOMMU passes DMA untranslated at no cost", "[iommu]") {
  Vtd v;
  v.drv.enable(false);
  auto o = v.dma(kDevA, kIova, DmaAccess::Write);
  CHECK((o.r.ok() && o.hpa == kIova && o.cycles == 0 && o.reads == 0));
  CHECK(v.st().translations.value() == 0);
}

TEST_CASE("translation through 4K/2M/1G pages: exact references, then an IOTLB hit", "[iommu]") {
  const unsigned shift = GENERATE(12u, 21u, 30u);
  const unsigned sl_refs = 4 - (shift - 12) / 9;  // 4, 3, 2 second-level entries
  Vtd v;
  v.attach(kDevA, 1, kIova, kHpaA, shift);
  const std::uint64_t off = kIova & ((1ull << shift) - 1);

  auto o = v.dma(kDevA, kIova);
  REQUIRE(o.r.ok());
  CHECK(o.hpa == kHpaA + off);
  // Root (1) + context (one 16-byte reference, two 8-byte reads) + levels.
  CHECK(o.reads == 3 + sl_refs);
  CHECK((v.st().refs_root.value() == 1 && v.st().refs_context.value() == 1));
  CHECK(v.st().refs_sl4.value() == 1);
  CHECK(v.st().refs_sl3.value() == (sl_refs >= 2 ? 1u : 0u));
  CHECK(v.st().refs_sl2.value() == (sl_refs >= 3 ? 1u : 0u));
  CHECK(v.st().refs_sl1.value() == (sl_refs >= 4 ? 1u : 0u));
  CHECK(o.cycles == kCtx + 2 * kReadLatency + kIotlb + kPsc + sl_refs * kReadLatency);
  CHECK(v.st().walks.value() == 1);
  CHECK(v.st().walk_cycles.value() == kPsc + sl_refs * kReadLatency);

  // Same page again, a write: context-cache and IOTLB hits, no reference.
  auto o2 = v.dma(kDevA, kIova ^ 0x8, DmaAccess::Write);
  REQUIRE(o2.r.ok());
  CHECK(o2.hpa == ((kHpaA + off) ^ 0x8));
  CHECK((o2.reads == 0 && o2.cycles == kCtx + kIotlb));
  CHECK((v.iommu.iotlb().stats().hits.value() == 1 && v.iommu.iotlb().stats().misses.value() == 1));
  CHECK((v.st().context_hits.value() == 1 && v.st().context_misses.value() == 1));
  CHECK((v.st().translations.value() == 2 && v.st().walks.value() == 1 && v.st().faults.value() == 0));
}

TEST_CASE("3-level (39-bit) and 5-level (57-bit) second-level tables", "[iommu]") {
  const unsigned aw = GENERATE(1u, 3u);
  const unsigned levels = ctx::aw_levels(aw);
  const std::uint64_t iova = aw == 1 ? 0x12'3456'7ABCull : 0x00AB'1234'5678'9ABCull;
  Vtd v;
  const std::uint64_t slpt = v.alloc();
  v.set_context(kDevA, ctx::make(slpt, 9, aw));
  v.sl_map(slpt, iova, kHpaA, 12, sl::kRw, levels);
  auto o = v.dma(kDevA, iova);
  REQUIRE(o.r.ok());
  CHECK(o.hpa == kHpaA + 0xABC);
  CHECK(o.reads == 3 + levels);
  CHECK(v.st().refs_sl5.value() == (levels == 5 ? 1u : 0u));
  CHECK(v.st().refs_sl4.value() == (levels >= 4 ? 1u : 0u));
}

TEST_CASE("second-level paging-structure cache: a neighbouring page costs one reference", "[iommu]") {
  Vtd v;
  const std::uint64_t slpt = v.attach(kDevA, 1, kIova, kHpaA);
  v.sl_map(slpt, kIova + 0x1000, kHpaB, 12);
  v.dma(kDevA, kIova);
  auto o = v.dma(kDevA, kIova + 0x1000);
  REQUIRE(o.r.ok());
  CHECK(o.hpa == kHpaB + 0xABC);
  CHECK((o.reads == 1 && o.cycles == kCtx + kIotlb + kPsc + kReadLatency));
  CHECK(v.iommu.sl_psc(2).stats().hits.value() == 1);
  CHECK(v.st().refs_sl1.value() == 2);

  SECTION("disabled: the full walk") {
    auto p = cfg::defaults<IommuParams>();
    for (unsigned l = 2; l <= 5; ++l) p.sl_psc.level(l).enabled = false;
    Vtd w(p);
    const std::uint64_t t = w.attach(kDevA, 1, kIova, kHpaA);
    w.sl_map(t, kIova + 0x1000, kHpaB, 12);
    w.dma(kDevA, kIova);
    auto o2 = w.dma(kDevA, kIova + 0x1000);
    CHECK((o2.reads == 4 && o2.cycles == kCtx + kIotlb + 4 * kReadLatency));
  }
}

TEST_CASE("domain isolation: same IOVA, two domains, two host pages", "[iommu]") {
  Vtd v;
  v.attach(kDevA, 1, kIova, kHpaA);
  v.attach(kDevB, 2, kIova, kHpaB);
  for (int round = 0; round < 2; ++round) {  // walks, then IOTLB hits
    auto a = v.dma(kDevA, kIova);
    auto b = v.dma(kDevB, kIova);
    REQUIRE((a.r.ok() && b.r.ok()));
    CHECK(a.hpa == kHpaA + 0xABC);
    CHECK(b.hpa == kHpaB + 0xABC);
  }
  CHECK((v.st().walks.value() == 2 && v.iommu.iotlb().stats().hits.value() == 2));
}

TEST_CASE("devices sharing a domain share IOTLB entries", "[iommu]") {
  Vtd v;
  const std::uint64_t slpt = v.attach(kDevA, 5, kIova, kHpaA);
  v.set_context(kDevB, ctx::make(slpt, 5));
  v.dma(kDevA, kIova);
  auto b = v.dma(kDevB, kIova);
  CHECK((b.r.ok() && b.hpa == kHpaA + 0xABC && b.reads == 3));  // root and context only
}

TEST_CASE("faults: missing root and context entries", "[iommu]") {
  Vtd v;
  v.attach(kDevA, 1, kIova, kHpaA);
  const std::uint16_t other_bus = iommu::requester_id(7, 0, 0);
  const std::uint16_t other_dev = iommu::requester_id(3, 9, 0);  // bus 3 present, context absent

  auto o = v.dma(other_bus, kIova, DmaAccess::Write);
  CHECK((!o.r.ok() && o.r.reason == FaultReason::kRootNotPresent && o.hpa == ~0ull));
  CHECK((o.reads == 1 && o.cycles == kCtx + kReadLatency));
  auto o2 = v.dma(other_dev, kIova + 0x40);
  CHECK((!o2.r.ok() && o2.r.reason == FaultReason::kContextNotPresent && o2.hpa == ~0ull));
  CHECK((o2.reads == 3 && o2.cycles == kCtx + 2 * kReadLatency));

  const auto& log = v.iommu.fault_log();
  REQUIRE(log.size() == 2);
  CHECK((log[0].requester_id == other_bus && log[0].address == kIova && log[0].access == DmaAccess::Write &&
         log[0].reason == FaultReason::kRootNotPresent));
  CHECK((log[1].requester_id == other_dev && log[1].address == kIova + 0x40 && log[1].access == DmaAccess::Read &&
         log[1].reason == FaultReason::kContextNotPresent));
  CHECK(static_cast<int>(log[1].reason) == 2);
  CHECK((v.st().faults.value() == 2 && v.st().fault_root_not_present.value() == 1 &&
         v.st().fault_context_not_present.value() == 1));
  // Not-present contexts are not cached: a retry reads them again.
  CHECK(v.dma(other_dev, kIova).reads == 3);
  CHECK(v.iommu.context_cache_occupancy() == 0);
}

TEST_CASE("faults: missing second-level entry and write to a read-only page", "[iommu]") {
  Vtd v;
  const std::uint64_t slpt = v.attach(kDevA, 1, kIova, kHpaA, 12, sl::kRead);

  // Unmapped IOVA: the level-4 entry has R = W = 0 (not present): reason 6h.
  const std::uint64_t unmapped = 0x0000'7000'0000'0000ull;
  auto o = v.dma(kDevA, unmapped);
  CHECK((!o.r.ok() && o.r.reason == FaultReason::kReadDenied && o.hpa == ~0ull));
  CHECK(o.reads == 3 + 1);
  // Mapped down to the page table but no leaf: four references.
  auto o1 = v.dma(kDevA, kIova + 0x1000, DmaAccess::Write);
  CHECK((!o1.r.ok() && o1.r.reason == FaultReason::kWriteDenied && o1.reads == 4));

  // Read-only page: reads work, a write faults (5h) even after the read
  // cached the translation, and the IOTLB keeps it read-only.
  CHECK(v.dma(kDevA, kIova).r.ok());
  auto w = v.dma(kDevA, kIova, DmaAccess::Write);
  CHECK((!w.r.ok() && w.r.reason == FaultReason::kWriteDenied && w.hpa == ~0ull));
  CHECK(w.reads == 1);  // re-checked by a walk from the PDE cache

  const auto& log = v.iommu.fault_log();
  REQUIRE(log.size() == 3);
  CHECK((log[0].address == unmapped && log[0].reason == FaultReason::kReadDenied));
  CHECK((log[1].address == kIova + 0x1000 && log[1].access == DmaAccess::Write));
  CHECK((log[2].requester_id == kDevA && log[2].address == kIova && log[2].access == DmaAccess::Write &&
         log[2].reason == FaultReason::kWriteDenied));
  CHECK((v.st().fault_read_denied.value() == 1 && v.st().fault_write_denied.value() == 2));

  // A read-only intermediate entry makes the whole subtree read-only.
  v.sl_map(slpt, kHpaB, kHpaB, 30);
  v.mem.poke(slpt + mmu::table_index(kHpaB, 4) * 8, (v.mem.peek(slpt + mmu::table_index(kHpaB, 4) * 8) & ~sl::kWrite));
  CHECK(v.dma(kDevA, kHpaB).r.ok());
  CHECK(v.dma(kDevA, kHpaB, DmaAccess::Write).r.reason == FaultReason::kWriteDenied);
}

TEST_CASE("faults: address beyond AGAW, invalid context, reserved PS, FPD, log overflow", "[iommu]") {
  auto p = cfg::defaults<IommuParams>();
  p.fault_records = 2;
  Vtd v(p);
  const std::uint64_t slpt = v.alloc();
  v.set_context(kDevA, ctx::make(slpt, 1, /*aw=*/1));  // 39 bits
  auto o = v.dma(kDevA, 1ull << 39);
  CHECK((o.r.reason == FaultReason::kAddressBeyondAw && o.reads == 3));

  v.set_context(kDevB, ctx::make(slpt, 1, /*aw=*/0));
  CHECK(v.dma(kDevB, 0).r.reason == FaultReason::kContextInvalid);

  // Fault log full: the third fault is counted but not recorded.
  const std::uint16_t dev_c = iommu::requester_id(3, 5, 0);
  const std::uint64_t slpt_c = v.alloc();
  v.set_context(dev_c, ctx::make(slpt_c, 3));
  v.mem.poke(slpt_c + mmu::table_index(kIova, 4) * 8, kHpaA | sl::kRw | sl::kPageSize);
  CHECK(v.dma(dev_c, kIova).r.reason == FaultReason::kSlEntryReserved);
  CHECK((v.iommu.fault_log().size() == 2 && v.st().fault_overflows.value() == 1));
  std::uint64_t lo = 0, hi = 0;
  REQUIRE(v.drv.pop_fault(lo, hi));  // FRCD at FSTS.FRI, F cleared
  CHECK(((hi >> iommu::vtd::frcd::kFrShift) & 0xFF) == static_cast<unsigned>(FaultReason::kAddressBeyondAw));

  // FPD = 1: qualified faults are blocked but not logged.
  const std::uint16_t dev_d = iommu::requester_id(3, 6, 0);
  v.set_context(dev_d, ctx::make(v.alloc(), 4, 2, ctx::kTtUntranslated, /*fpd=*/true));
  auto d = v.dma(dev_d, kIova, DmaAccess::Write);
  CHECK((!d.r.ok() && d.r.reason == FaultReason::kWriteDenied));
  CHECK((v.iommu.fault_log().size() == 1 && v.st().faults_suppressed.value() == 1));
  CHECK(v.st().faults.value() == 4);
}

TEST_CASE("pass-through context", "[iommu]") {
  Vtd v;
  v.set_context(kDevA, ctx::make(0, 1, 2, ctx::kTtPassThrough));
  auto o = v.dma(kDevA, kIova, DmaAccess::Write);
  CHECK((o.r.ok() && o.hpa == kIova && o.reads == 3 && v.st().passthrough.value() == 1));
}

TEST_CASE("IOTLB invalidation scopes", "[iommu]") {
  Vtd v;
  const std::uint64_t slpt = v.attach(kDevA, 1, kIova, kHpaA);
  v.sl_map(slpt, kIova + 0x1000, kHpaA + 0x1000, 12);
  v.attach(kDevB, 2, kIova, kHpaB);
  auto warm = [&] {
    v.dma(kDevA, kIova);
    v.dma(kDevA, kIova + 0x1000);
    v.dma(kDevB, kIova);
  };
  warm();
  REQUIRE(v.iommu.iotlb().occupancy() == 3);

  SECTION("domain-selective drops only that domain") {
    v.drv.iotlb_invalidate_domain(1);
    CHECK(v.iommu.iotlb().occupancy() == 1);
    CHECK(v.dma(kDevB, kIova).reads == 0);
    CHECK(v.dma(kDevA, kIova).reads == 4);  // paging-structure caches dropped too
    CHECK(v.dma(kDevA, kIova + 0x1000).reads == 1);
  }
  SECTION("page-selective drops one page of one domain") {
    v.drv.iotlb_invalidate_page(1, kIova, 0, /*ih=*/true);
    CHECK(v.iommu.iotlb().occupancy() == 2);
    CHECK(v.dma(kDevA, kIova + 0x1000).reads == 0);
    CHECK(v.dma(kDevB, kIova).reads == 0);
    CHECK(v.dma(kDevA, kIova).reads == 1);  // IH = 1 kept the PDE cache
  }
  SECTION("page-selective with an address mask covers both pages") {
    v.drv.iotlb_invalidate_page(1, kIova + 0x1000, 2);  // pages 0x...8000 to 0x...B000
    CHECK(v.iommu.iotlb().occupancy() == 1);
    CHECK(v.dma(kDevA, kIova).reads == 4);
  }
  SECTION("global drops everything") {
    v.drv.iotlb_invalidate_global();
    CHECK(v.iommu.iotlb().occupancy() == 0);
    CHECK(v.dma(kDevB, kIova).reads == 4);
  }
  SECTION("a large page goes with any of its 4K pages") {
    const std::uint64_t big = 0x0000'0040'0000'0000ull;
    v.sl_map(slpt, big, kHpaB, 30);
    v.dma(kDevA, big);
    v.drv.iotlb_invalidate_page(1, big + 0x12345000ull, 0, true);
    CHECK(v.dma(kDevA, big).reads == 1);  // IH = 1 kept the PML4E cache: level 3 only
  }
  CHECK(v.st().invalidations.value() == 1);
}

TEST_CASE("context-cache invalidation", "[iommu]") {
  Vtd v;
  v.attach(kDevA, 1, kIova, kHpaA);
  v.attach(kDevB, 2, kIova, kHpaB);
  v.dma(kDevA, kIova);
  v.dma(kDevB, kIova);
  REQUIRE(v.iommu.context_cache_occupancy() == 2);

  // Software moves device A to a new domain 7 with another mapping.
  const std::uint64_t slpt7 = v.alloc();
  v.sl_map(slpt7, kIova, kHpaB + 0x4000'0000ull, 12);
  v.set_context(kDevA, ctx::make(slpt7, 7));
  // Without invalidation the cached context (domain 1) still applies.
  CHECK(v.dma(kDevA, kIova).hpa == kHpaA + 0xABC);

  SECTION("device-selective") {
    v.drv.context_invalidate_device(kDevA);
    CHECK(v.iommu.context_cache_occupancy() == 1);
  }
  SECTION("device-selective with a function mask") {
    v.drv.context_invalidate_device(iommu::requester_id(3, 2, 5), 3);  // 03:02.x
    CHECK(v.iommu.context_cache_occupancy() == 1);
  }
  SECTION("domain-selective drops only that domain") {
    v.drv.context_invalidate_domain(1);
    CHECK(v.iommu.context_cache_occupancy() == 1);
  }
  SECTION("global") {
    v.drv.context_invalidate_global();
    CHECK(v.iommu.context_cache_occupancy() == 0);
    CHECK(v.dma(kDevB, kIova).reads == 3);  // root and context, then an IOTLB hit
  }
  const std::uint64_t ctx_reads = v.st().refs_context.value();
  auto o = v.dma(kDevA, kIova);
  CHECK((o.r.ok() && o.hpa == kHpaB + 0x4000'0000ull + 0xABC));
  CHECK(o.reads == 3 + 4);  // root and new context, then a walk of domain 7
  CHECK(v.st().refs_context.value() == ctx_reads + 1);
}
