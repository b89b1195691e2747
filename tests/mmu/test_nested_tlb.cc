// Exact tests of the nested TLB (mmu/nested_tlb) as a structure.
#include "mmu/nested_tlb.h"

#include <catch2/catch.hpp>

#include "sim/params.h"
#include "sim/stats.h"

using namespace vmx;
using mmu::NestedTlb;

TEST_CASE("nested TLB: translations of every EPT page size, EP4TA-tagged", "[nested_tlb]") {
  stats::Group root;
  auto p = cfg::defaults<mmu::NestedTlbParams>();
  CHECK((p.enabled && p.entries == 32 && p.ways == 4 && p.latency == 1));
  NestedTlb n(p, &root, "nested_tlb");
  n.insert(0x1000, 0x9000, 7, 12, 0xA000);
  n.insert(0x40000000ull + 0x1234, 0x80000000ull + 0x1234, 3, 21, 0xA000);
  n.insert(0x100000000ull, 0x200000000ull, 1, 30, 0xB000);

  const auto* e = n.lookup(0x1ABC, 0xA000);
  REQUIRE(e != nullptr);
  CHECK(n.translate(*e, 0x1ABC) == 0x9ABC);
  const auto* m = n.lookup(0x40000000ull + 0x1FFFF0, 0xA000);
  REQUIRE(m != nullptr);
  CHECK(m->shift == 21);
  CHECK(m->perms == 3);
  CHECK(n.translate(*m, 0x40000000ull + 0x1FFFF0) == 0x80000000ull + 0x1FFFF0);
  const auto* g = n.lookup(0x100000000ull + 0x3FFFFFF0ull, 0xB000);
  REQUIRE(g != nullptr);
  CHECK(n.translate(*g, 0x100000000ull + 0x3FFFFFF0ull) == 0x200000000ull + 0x3FFFFFF0ull);
  CHECK(n.lookup(0x1000, 0xB000) == nullptr);  // other EPT hierarchy
  CHECK(n.lookup(0x2000, 0xA000) == nullptr);
  CHECK(n.stats().hits.value() == 3);
  CHECK(n.stats().misses.value() == 2);

  n.flush_ep4ta(0xA000);  // INVEPT single-context
  CHECK(n.lookup(0x1000, 0xA000) == nullptr);
  CHECK(n.lookup(0x100000000ull, 0xB000) != nullptr);
  n.flush_all();
  CHECK(n.occupancy() == 0);
  CHECK(n.stats().flushed_entries.value() == 3);
}
