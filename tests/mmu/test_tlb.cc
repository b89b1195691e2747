#include "mmu/tlb.h"

#include <catch2/catch.hpp>

#include <stdexcept>

#include "sim/params.h"
#include "sim/stats.h"

using namespace vmx;
using mmu::Tlb;
using mmu::TlbParams;
using mmu::TlbTag;

namespace {
TlbParams geometry(std::uint32_t entries, std::uint32_t ways) {
  TlbParams p{};
  p.entries = entries;
  p.ways = ways;
  p.latency = 1;
  return p;
}
constexpr std::uint8_t kRw = mmu::kWritable | mmu::kUser;
}  // namespace

TEST_CASE("each TLB's defaults come from its descriptor", "[tlb]") {
  auto d = cfg::defaults<mmu::DtlbParams>();
  auto i = cfg::defaults<mmu::ItlbParams>();
  auto s = cfg::defaults<mmu::StlbParams>();
  CHECK((d.entries == 64 && d.ways == 4 && d.latency == 1));
  CHECK((i.entries == 128 && i.ways == 8 && i.latency == 1));
  CHECK((s.entries == 1536 && s.ways == 12 && s.latency == 9));
  stats::Group root;
  CHECK(Tlb(d, 12, &root, "dtlb").sets() == 16);
  CHECK(Tlb(i, 12, &root, "itlb").sets() == 16);
  CHECK(Tlb(s, 12, &root, "stlb").sets() == 128);
}

TEST_CASE("a translation covers exactly its page", "[tlb]") {
  const unsigned shift = GENERATE(12u, 21u, 30u);
  const std::uint64_t page = 1ull << shift;
  stats::Group root;
  Tlb tlb(cfg::defaults<mmu::DtlbParams>(), shift, &root, "dtlb");
  const TlbTag tag{1, 0, 0};
  const std::uint64_t va = 0x7f0000000000ull + 5 * page;
  const std::uint64_t pa = 0x40000000ull + 3 * page;

  CHECK(tlb.lookup(va, tag) == nullptr);
  tlb.insert(va + 0x123, pa + 0x456, kRw | mmu::kDirty | 0x40, false, tag);
  const auto* e = tlb.lookup(va + page - 8, tag);
  REQUIRE(e != nullptr);
  CHECK(e->vpn == va >> shift);
  CHECK(e->pfn == pa >> shift);
  CHECK(e->perms == (kRw | mmu::kDirty | 0x40));  // bits above kDirty are carried
  CHECK(tlb.translate(*e, va + page - 8) == pa + page - 8);
  CHECK(tlb.lookup(va + page, tag) == nullptr);
  CHECK(tlb.lookup(va - 1, tag) == nullptr);
  CHECK(tlb.stats().lookups.value() == 4);
  CHECK(tlb.stats().hits.value() == 1);
  CHECK(tlb.stats().misses.value() == 3);
  CHECK(tlb.stats().insertions.value() == 1);
}

TEST_CASE("true LRU replacement in a 2-way TLB set", "[tlb]") {
  stats::Group root;
  Tlb tlb(geometry(4, 2), 12, &root, "t");  // 2 sets: even pages share set 0
  const TlbTag tag{};
  const std::uint64_t a = 0x0000, b = 0x2000, c = 0x4000, other = 0x1000;
  tlb.insert(a, 0x100000, kRw, false, tag);
  tlb.insert(b, 0x200000, kRw, false, tag);
  tlb.insert(other, 0x300000, kRw, false, tag);
  const bool touch_a = GENERATE(true, false);
  if (touch_a) CHECK(tlb.lookup(a, tag) != nullptr);
  tlb.insert(c, 0x400000, kRw, false, tag);
  CHECK(tlb.stats().evictions.value() == 1);
  CHECK(tlb.lookup(c, tag) != nullptr);
  CHECK(tlb.lookup(other, tag) != nullptr);
  CHECK((tlb.lookup(a, tag) != nullptr) == touch_a);
  CHECK((tlb.lookup(b, tag) != nullptr) == !touch_a);
}

TEST_CASE("re-inserting a translation replaces it in place", "[tlb]") {
  stats::Group root;
  Tlb tlb(geometry(4, 2), 12, &root, "t");
  const TlbTag tag{3, 7, 0};
  tlb.insert(0x5000, 0x9000, kRw, false, tag);
  tlb.insert(0x5000, 0x9000, kRw | mmu::kDirty, false, tag);  // walk that set the D bit
  CHECK(tlb.occupancy() == 1);
  CHECK(tlb.stats().evictions.value() == 0);
  const auto* e = tlb.lookup(0x5000, tag);
  REQUIRE(e);
  CHECK((e->perms & mmu::kDirty) != 0);
}

TEST_CASE("VPIDs isolate guests", "[tlb]") {
  stats::Group root;
  Tlb tlb(cfg::defaults<mmu::DtlbParams>(), 12, &root, "dtlb");
  const std::uint64_t va = 0x401000;
  tlb.insert(va, 0x111000, kRw, false, TlbTag{1, 0, 0});
  tlb.insert(va, 0x222000, kRw, true, TlbTag{2, 0, 0});
  const auto* e1 = tlb.lookup(va, TlbTag{1, 0, 0});
  REQUIRE(e1);
  CHECK(tlb.translate(*e1, va) == 0x111000);
  const auto* e2 = tlb.lookup(va, TlbTag{2, 0, 0});
  REQUIRE(e2);
  CHECK(tlb.translate(*e2, va) == 0x222000);
  CHECK(tlb.lookup(va, TlbTag{3, 0, 0}) == nullptr);  // a global entry does not cross VPIDs

  // INVVPID single-context removes that VPID's entries, global included.
  tlb.flush_vpid(2);
  CHECK(tlb.lookup(va, TlbTag{2, 0, 0}) == nullptr);
  CHECK(tlb.lookup(va, TlbTag{1, 0, 0}) != nullptr);
  CHECK(tlb.stats().flushes.value() == 1);
  CHECK(tlb.stats().flushed_entries.value() == 1);

  // INVVPID all-context spares VPID 0.
  tlb.insert(va, 0x333000, kRw, false, TlbTag{0, 0, 0});
  tlb.flush_nonzero_vpids();
  CHECK(tlb.lookup(va, TlbTag{1, 0, 0}) == nullptr);
  CHECK(tlb.lookup(va, TlbTag{0, 0, 0}) != nullptr);
  tlb.flush_all();
  CHECK(tlb.occupancy() == 0);
}

TEST_CASE("PCIDs tag non-global translations; global ones match any PCID", "[tlb]") {
  stats::Group root;
  Tlb tlb(cfg::defaults<mmu::DtlbParams>(), 12, &root, "dtlb");
  const std::uint16_t vpid = 4;
  const std::uint64_t user = 0x400000, kernel = 0xffffffff81000000ull;
  tlb.insert(user, 0x10000, kRw, false, TlbTag{vpid, 1, 0});
  tlb.insert(kernel, 0x20000, mmu::kWritable, true, TlbTag{vpid, 1, 0});

  CHECK(tlb.lookup(user, TlbTag{vpid, 1, 0}) != nullptr);
  CHECK(tlb.lookup(user, TlbTag{vpid, 2, 0}) == nullptr);
  const auto* g = tlb.lookup(kernel, TlbTag{vpid, 2, 0});
  REQUIRE(g);
  CHECK(g->global);

  SECTION("MOV to CR3 / INVPCID single-context keep global entries") {
    tlb.flush_pcid(vpid, 1);
    CHECK(tlb.lookup(user, TlbTag{vpid, 1, 0}) == nullptr);
    CHECK(tlb.lookup(kernel, TlbTag{vpid, 1, 0}) != nullptr);
  }
  SECTION("flushing another PCID changes nothing") {
    tlb.flush_pcid(vpid, 2);
    CHECK(tlb.occupancy() == 2);
  }
  SECTION("flush_non_global keeps global entries of the VPID") {
    tlb.insert(user, 0x30000, kRw, false, TlbTag{vpid, 2, 0});
    tlb.insert(user, 0x40000, kRw, false, TlbTag{vpid + 1, 1, 0});
    tlb.flush_non_global(vpid);
    CHECK(tlb.lookup(user, TlbTag{vpid, 1, 0}) == nullptr);
    CHECK(tlb.lookup(user, TlbTag{vpid, 2, 0}) == nullptr);
    CHECK(tlb.lookup(user, TlbTag{vpid + 1, 1, 0}) != nullptr);
    CHECK(tlb.lookup(kernel, TlbTag{vpid, 3, 0}) != nullptr);
  }
  SECTION("flush_vpid removes global entries too") {
    tlb.flush_vpid(vpid);
    CHECK(tlb.occupancy() == 0);
  }
}

TEST_CASE("single-page invalidations", "[tlb]") {
  stats::Group root;
  Tlb tlb(geometry(64, 8), 12, &root, "dtlb");  // 8 sets of 8 ways: room for every entry below
  const std::uint16_t vpid = 9;
  const std::uint64_t va = 0x7000, other = 0x8000, shared = 0x17000;  // shared: va's set, another page
  tlb.insert(va, 0x1000, kRw, false, TlbTag{vpid, 1, 0});
  tlb.insert(va, 0x2000, kRw, false, TlbTag{vpid, 2, 0});
  tlb.insert(other, 0x3000, kRw, false, TlbTag{vpid, 1, 0});
  tlb.insert(va, 0x4000, kRw, false, TlbTag{vpid + 1, 1, 0});
  tlb.insert(shared, 0x5000, kRw, true, TlbTag{vpid, 1, 0});
  REQUIRE(tlb.occupancy() == 5);

  SECTION("INVVPID individual-address: every PCID of that VPID") {
    tlb.flush_address(va + 0xabc, vpid);
    CHECK(tlb.lookup(va, TlbTag{vpid, 1, 0}) == nullptr);
    CHECK(tlb.lookup(va, TlbTag{vpid, 2, 0}) == nullptr);
    CHECK(tlb.lookup(other, TlbTag{vpid, 1, 0}) != nullptr);
    CHECK(tlb.lookup(va, TlbTag{vpid + 1, 1, 0}) != nullptr);
    CHECK(tlb.lookup(shared, TlbTag{vpid, 1, 0}) != nullptr);
    CHECK(tlb.stats().flushed_entries.value() == 2);
  }
  SECTION("a global entry goes with its page") {
    tlb.flush_address(shared, vpid);
    CHECK(tlb.lookup(shared, TlbTag{vpid, 5, 0}) == nullptr);
    CHECK(tlb.occupancy() == 4);
  }
  SECTION("INVLPG: current PCID and global entries of the page") {
    tlb.insert(va, 0x6000, kRw, true, TlbTag{vpid, 3, 0});  // a new entry: PCID 3, global
    REQUIRE(tlb.occupancy() == 6);
    tlb.flush_invlpg(va, vpid, 1);
    CHECK(tlb.lookup(va, TlbTag{vpid, 1, 0}) == nullptr);
    CHECK(tlb.lookup(va, TlbTag{vpid, 3, 0}) == nullptr);  // the global one is gone
    const auto* e = tlb.lookup(va, TlbTag{vpid, 2, 0});
    REQUIRE(e);
    CHECK(tlb.translate(*e, va) == 0x2000);
    CHECK(tlb.occupancy() == 4);
  }
  SECTION("INVPCID individual-address spares global entries") {
    tlb.flush_address_pcid(shared, vpid, 1);
    CHECK(tlb.lookup(shared, TlbTag{vpid, 1, 0}) != nullptr);
    tlb.flush_address_pcid(va, vpid, 2);
    CHECK(tlb.lookup(va, TlbTag{vpid, 2, 0}) == nullptr);
    CHECK(tlb.lookup(va, TlbTag{vpid, 1, 0}) != nullptr);
  }
}

TEST_CASE("EP4TA tags combined mappings", "[tlb]") {
  const unsigned shift = GENERATE(12u, 21u);
  stats::Group root;
  Tlb tlb(cfg::defaults<mmu::StlbParams>(), shift, &root, "stlb");
  const std::uint64_t ept_a = 0x1000000, ept_b = 0x2000000;
  const std::uint64_t va = 3ull << shift;
  tlb.insert(va, 0xa0000000, kRw, false, TlbTag{1, 0, ept_a});
  tlb.insert(va, 0xb0000000, kRw, true, TlbTag{2, 0, ept_a});
  tlb.insert(va, 0xc0000000, kRw, false, TlbTag{1, 0, ept_b});
  tlb.insert(va, 0xd0000000, kRw, false, TlbTag{1, 0, 0});  // linear mapping, EPT off

  const auto* e = tlb.lookup(va, TlbTag{1, 0, ept_b});
  REQUIRE(e);
  CHECK(tlb.translate(*e, va) == 0xc0000000);
  CHECK(tlb.lookup(va, TlbTag{2, 0, ept_b}) == nullptr);  // global does not cross EPT hierarchies

  SECTION("INVEPT single-context: that EP4TA, every VPID and PCID, global included") {
    tlb.flush_ep4ta(ept_a);
    CHECK(tlb.lookup(va, TlbTag{1, 0, ept_a}) == nullptr);
    CHECK(tlb.lookup(va, TlbTag{2, 0, ept_a}) == nullptr);
    CHECK(tlb.lookup(va, TlbTag{1, 0, ept_b}) != nullptr);
    CHECK(tlb.lookup(va, TlbTag{1, 0, 0}) != nullptr);
  }
  SECTION("INVEPT all-context: linear mappings survive") {
    tlb.flush_all_ep4ta();
    CHECK(tlb.occupancy() == 1);
    CHECK(tlb.lookup(va, TlbTag{1, 0, 0}) != nullptr);
  }
  SECTION("INVVPID single-context covers every EP4TA of the VPID") {
    tlb.flush_vpid(1);
    CHECK(tlb.occupancy() == 1);
    CHECK(tlb.lookup(va, TlbTag{2, 0, ept_a}) != nullptr);
  }
}

TEST_CASE("invalid TLB geometry names the TLB and the parameter", "[tlb]") {
  stats::Group root;
  CHECK_THROWS_WITH(Tlb(geometry(64, 4), 13, &root, "dtlb"), Catch::Contains("'dtlb'") && Catch::Contains("page_shift"));
  CHECK_THROWS_WITH(Tlb(geometry(64, 0), 12, &root, "dtlb"), Catch::Contains("'ways'"));
  CHECK_THROWS_WITH(Tlb(geometry(64, 5), 12, &root, "dtlb"), Catch::Contains("'entries'"));
  CHECK_THROWS_WITH(Tlb(geometry(48, 4), 12, &root, "dtlb"), Catch::Contains("power-of-two"));
  CHECK_THROWS_AS(Tlb(geometry(0, 4), 12, &root, "dtlb"), std::invalid_argument);
}

// ---------------------------------------------------------------------------
// Per-page-size TLBs and an array shared by two sizes (the STLB)
// ---------------------------------------------------------------------------

TEST_CASE("the per-page-size L1 TLBs and the 1 GiB STLB take Skylake's figures", "[tlb]") {
  auto d2 = cfg::defaults<mmu::Dtlb2mParams>();
  auto d1g = cfg::defaults<mmu::Dtlb1gParams>();
  auto i2 = cfg::defaults<mmu::Itlb2mParams>();
  auto s1g = cfg::defaults<mmu::Stlb1gParams>();
  CHECK((d2.entries == 32 && d2.ways == 4));
  CHECK((d1g.entries == 4 && d1g.ways == 4));
  CHECK((i2.entries == 8 && i2.ways == 8));
  CHECK((s1g.entries == 16 && s1g.ways == 4 && s1g.latency == 9));
}

TEST_CASE("one STLB array holds 4 KiB and 2 MiB translations", "[tlb]") {
  stats::Group root;
  Tlb stlb(cfg::defaults<mmu::StlbParams>(), {12, 21}, &root, "stlb");
  CHECK(stlb.page_shift() == 12);
  CHECK(stlb.holds(21));
  CHECK_FALSE(stlb.holds(30));
  const TlbTag tag{1, 0, 0};
  const std::uint64_t big = 0x7f0000000000ull + (7ull << 21);  // a 2 MiB page
  stlb.insert(big + 0x12345, 0x80000000ull + 0x12345, kRw, false, tag, 21);
  stlb.insert(0x1000, 0x9000, kRw, false, tag);  // 4 KiB, the default size

  const auto* e = stlb.lookup(big + 0x1FFFF8, tag);
  REQUIRE(e != nullptr);
  CHECK(e->shift == 21);
  CHECK(Tlb::translate(*e, big + 0x1FFFF8) == 0x80000000ull + 0x1FFFF8);
  const auto* s = stlb.lookup(0x1008, tag);
  REQUIRE(s != nullptr);
  CHECK(s->shift == 12);
  CHECK(Tlb::translate(*s, 0x1008) == 0x9008);
  CHECK(stlb.lookup(big + (2ull << 20), tag) == nullptr);
  CHECK(stlb.occupancy() == 2);
  // Re-inserting the same 2 MiB translation overwrites it.
  stlb.insert(big, 0x80000000ull, kRw | mmu::kDirty, false, tag, 21);
  CHECK(stlb.occupancy() == 2);

  // INVLPG of any address in the large page removes it (SDM Vol. 3A, 4.10.4.1).
  stlb.flush_invlpg(big + 0x177000, 1, 0);
  CHECK(stlb.lookup(big, tag) == nullptr);
  CHECK(stlb.lookup(0x1000, tag) != nullptr);
  CHECK(stlb.stats().flushed_entries.value() == 1);

  CHECK_THROWS_WITH(stlb.insert(0, 0, kRw, false, tag, 30), Catch::Contains("not held"));
  CHECK_THROWS_WITH(Tlb(geometry(64, 4), {21, 12}, &root, "x"), Catch::Contains("smallest first"));
}
