// Exact tests of the paging-structure caches (mmu/psc) as structures: keys,
// tags, replacement, invalidation scopes. Their use by the walker is tested
// in test_walk_caches.cc.
#include "mmu/psc.h"

#include <catch2/catch.hpp>

#include <stdexcept>

#include "mmu/paging.h"
#include "sim/params.h"
#include "sim/stats.h"

using namespace vmx;
using mmu::Psc;
using mmu::PscParams;
using mmu::TlbTag;

namespace {
PscParams geometry(std::uint32_t entries, std::uint32_t ways) {
  PscParams p{};
  p.enabled = true;
  p.entries = entries;
  p.ways = ways;
  p.latency = 1;
  return p;
}
}  // namespace

TEST_CASE("paging-structure cache defaults: ChampSim's PTW geometry, both dimensions", "[psc]") {
  auto p = cfg::defaults<mmu::PscParamsAll>();
  for (const auto* dim : {&p.guest.level(2), &p.ept.level(2)}) {
    CHECK((dim->enabled && dim->entries == 32 && dim->ways == 8 && dim->latency == 1));
  }
  CHECK((p.guest.pdpte.entries == 8 && p.guest.pdpte.ways == 4));
  CHECK((p.guest.pml4e.entries == 4 && p.guest.pml4e.ways == 4));
  CHECK((p.guest.pml5e.entries == 2 && p.guest.pml5e.ways == 2));
  CHECK((p.ept.pml4e.entries == 4 && p.ept.pml5e.entries == 2));
}

TEST_CASE("an entry covers exactly the region its level's entry maps", "[psc]") {
  const unsigned level = GENERATE(2u, 3u, 4u, 5u);
  CAPTURE(level);
  stats::Group root;
  Psc c(geometry(32, 8), level, &root, "c");
  const TlbTag tag{1, 2, 0x5000};
  const std::uint64_t region = 1ull << mmu::level_shift(level);
  const std::uint64_t base = 3 * region;
  c.insert(base + 0x123, tag, 0xAB000, 0xCD000, mmu::kWritable, 7);
  const mmu::PscEntry* e = c.lookup(base + region - 1, tag);
  REQUIRE(e != nullptr);
  CHECK(e->next_hpa == 0xAB000);
  CHECK(e->next_gpa == 0xCD000);
  CHECK(e->perms == mmu::kWritable);
  CHECK(e->table_ept_perms == 7);
  CHECK(c.lookup(base + region, tag) == nullptr);
  CHECK(c.lookup(base - 1, tag) == nullptr);
  CHECK(c.stats().lookups.value() == 3);
  CHECK(c.stats().hits.value() == 1);
  CHECK(c.stats().misses.value() == 2);
}

TEST_CASE("entries are tagged by VPID, PCID and EP4TA, none of them global", "[psc]") {
  stats::Group root;
  Psc c(geometry(32, 8), 2, &root, "pde");
  const TlbTag tag{1, 2, 0x5000};
  c.insert(0x200000, tag, 0x1000, 0x1000, 0, 7);
  CHECK(c.lookup(0x200000, tag) != nullptr);
  CHECK(c.lookup(0x200000, TlbTag{2, 2, 0x5000}) == nullptr);
  CHECK(c.lookup(0x200000, TlbTag{1, 3, 0x5000}) == nullptr);
  CHECK(c.lookup(0x200000, TlbTag{1, 2, 0x6000}) == nullptr);
}

TEST_CASE("true LRU within a set; a refill of the same key replaces in place", "[psc]") {
  stats::Group root;
  Psc c(geometry(4, 2), 2, &root, "pde");  // 2 sets of 2 ways; key = addr >> 21
  const TlbTag t{};
  auto addr = [](std::uint64_t key) { return key << 21; };
  c.insert(addr(0), t, 0x1000, 0x1000, 0, 7);
  c.insert(addr(2), t, 0x2000, 0x2000, 0, 7);  // same set (even keys)
  c.insert(addr(2), t, 0x2000, 0x2000, 0, 7);  // refresh, no eviction
  CHECK(c.stats().evictions.value() == 0);
  CHECK(c.lookup(addr(0), t) != nullptr);      // 0 is now most recent
  c.insert(addr(4), t, 0x4000, 0x4000, 0, 7);  // evicts 2
  CHECK(c.stats().evictions.value() == 1);
  CHECK(c.lookup(addr(2), t) == nullptr);
  CHECK(c.lookup(addr(0), t) != nullptr);
  CHECK(c.lookup(addr(4), t) != nullptr);
  CHECK(c.occupancy() == 2);
}

TEST_CASE("invalidation scopes", "[psc][flush]") {
  stats::Group root;
  Psc c(geometry(32, 8), 2, &root, "pde");
  // VPID 0 / PCID 0 with no EPT (root-mode paging), two PCIDs of VPID 1 and
  // VPID 2, under two EPT hierarchies.
  const TlbTag tags[] = {{0, 0, 0}, {1, 1, 0xA000}, {1, 2, 0xA000}, {2, 1, 0xB000}};
  auto fill = [&] {
    c.flush_all();
    for (const auto& t : tags) c.insert(0x400000, t, 0x1000, 0x1000, 0, 7);
    REQUIRE(c.occupancy() == 4);
  };
  auto present = [&](const TlbTag& t) { return c.lookup(0x400000, t) != nullptr; };

  fill();
  c.flush_pcid(1, 1);  // MOV to CR3 / INVLPG / INVPCID in VPID 1, PCID 1
  CHECK((present(tags[0]) && !present(tags[1]) && present(tags[2]) && present(tags[3])));
  fill();
  c.flush_vpid(1);  // INVVPID single-context, CR4 changes
  CHECK((present(tags[0]) && !present(tags[1]) && !present(tags[2]) && present(tags[3])));
  fill();
  c.flush_nonzero_vpids();  // INVVPID all-context
  CHECK((present(tags[0]) && !present(tags[1]) && !present(tags[2]) && !present(tags[3])));
  fill();
  c.flush_ep4ta(0xA000);  // INVEPT single-context
  CHECK((present(tags[0]) && !present(tags[1]) && !present(tags[2]) && present(tags[3])));
  fill();
  c.flush_all_ep4ta();  // INVEPT all-context: linear mappings (no EP4TA) stay
  CHECK((present(tags[0]) && !present(tags[1]) && !present(tags[2]) && !present(tags[3])));
  CHECK(c.stats().flushes.value() == 10);
  // The five scoped flushes removed 1 + 2 + 3 + 2 + 3 entries; the refills'
  // flush_all removed what each left (3, 2, 1, 2).
  CHECK(c.stats().flushed_entries.value() == (1 + 2 + 3 + 2 + 3) + (3 + 2 + 1 + 2));
}

TEST_CASE("bad geometry is reported with the cache and the parameter", "[psc]") {
  stats::Group root;
  CHECK_THROWS_WITH(Psc(geometry(12, 8), 2, &root, "pde"), Catch::Contains("'pde'") && Catch::Contains("entries"));
  CHECK_THROWS_WITH(Psc(geometry(24, 8), 2, &root, "pde"), Catch::Contains("power-of-two"));
  CHECK_THROWS_WITH(Psc(geometry(8, 0), 2, &root, "pde"), Catch::Contains("ways"));
  CHECK_THROWS_WITH(Psc(geometry(8, 8), 1, &root, "pte"), Catch::Contains("level"));
}
