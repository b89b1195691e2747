#include "models/mem_hierarchy.h"

#include <catch2/catch.hpp>

#include <stdexcept>

#include "sim/params.h"
#include "sim/stats.h"

using namespace vmx;
using models::AccessKind;
using models::Cache;
using models::MemHierarchy;
using models::MemHierarchyParams;

namespace {
constexpr std::uint32_t kL1 = 4, kL2 = 14, kLlc = 42, kDram = 204;

// Default geometry: L1D 64 sets x 8 ways, L2 1024 x 16, LLC 8192 x 16.
struct Rig {
  stats::Group root{"system"};
  Cache llc{cfg::defaults<models::LlcParams>(), &root, "llc"};
  MemHierarchy mem{cfg::defaults<MemHierarchyParams>(), &llc, &root, "cpu0"};
};
}  // namespace

TEST_CASE("default latencies", "[mem_hierarchy]") {
  auto p = cfg::defaults<MemHierarchyParams>();
  CHECK(p.l1i.latency == kL1);
  CHECK(p.l1d.latency == kL1);
  CHECK(p.l2.latency == kL2);
  CHECK(p.dram_latency == kDram);
  CHECK(cfg::defaults<models::LlcParams>().latency == kLlc);
}

TEST_CASE("latency is that of the level that hits", "[mem_hierarchy]") {
  const AccessKind kind = GENERATE(AccessKind::Read, AccessKind::Write, AccessKind::Walk, AccessKind::Fetch);
  Rig r;
  const std::uint64_t x = 0x10000040;

  // Cold: every level misses.
  CHECK(r.mem.access(x, kind) == kLlc + kDram);
  CHECK(r.mem.stats().dram_accesses.value() == 1);
  // Filled into every level on the way.
  CHECK(r.mem.l2().probe(x));
  CHECK(r.llc.probe(x));
  CHECK(r.mem.access(x + 8, kind) == kL1);

  // L1 hit, L2 hit: 8 more lines 4 KiB apart share x's L1 set (8-way) but
  // fall in distinct L2 sets, so x leaves the L1 only.
  for (std::uint64_t k = 1; k <= 8; ++k) CHECK(r.mem.access(x + k * 0x1000, kind) == kLlc + kDram);
  const Cache& l1 = kind == AccessKind::Fetch ? r.mem.l1i() : r.mem.l1d();
  CHECK_FALSE(l1.probe(x));
  CHECK(r.mem.access(x, kind) == kL2);

  // LLC hit: 16 more lines 64 KiB apart share x's L1 and L2 sets (16-way)
  // and spread over LLC sets, so x leaves the L1 and the L2 only.
  for (std::uint64_t k = 1; k <= 16; ++k) r.mem.access(x + k * 0x10000, kind);
  CHECK_FALSE(l1.probe(x));
  CHECK_FALSE(r.mem.l2().probe(x));
  CHECK(r.llc.probe(x));
  CHECK(r.mem.access(x, kind) == kLlc);
  CHECK(r.mem.stats().dram_accesses.value() == 1 + 8 + 16);
  CHECK(r.mem.stats().cycles.value() ==
        (1 + 8 + 16) * (kLlc + kDram) + kL1 + kL2 + kLlc);
}

TEST_CASE("fetches use the L1I; reads, writes and walks use the L1D", "[mem_hierarchy]") {
  Rig r;
  const std::uint64_t x = 0x2000;
  CHECK(r.mem.access(x, AccessKind::Fetch) == kLlc + kDram);
  CHECK(r.mem.access(x, AccessKind::Read) == kL2);  // L1D misses, unified L2 hits
  CHECK(r.mem.access(x, AccessKind::Fetch) == kL1);
  CHECK(r.mem.access(x, AccessKind::Walk) == kL1);
  CHECK(r.mem.access(x, AccessKind::Write) == kL1);
  CHECK(r.mem.l1i().stats().accesses.value() == 2);
  CHECK(r.mem.l1d().stats().accesses.value() == 3);
  CHECK(r.mem.stats().fetches.value() == 2);
  CHECK(r.mem.stats().reads.value() == 1);
  CHECK(r.mem.stats().walks.value() == 1);
  CHECK(r.mem.stats().writes.value() == 1);
  CHECK(r.mem.l1d().probe_dirty(x));
  CHECK_FALSE(r.mem.l2().probe_dirty(x));
}

TEST_CASE("the LLC is shared between cores", "[mem_hierarchy]") {
  stats::Group root("system");
  Cache llc(cfg::defaults<models::LlcParams>(), &root, "llc");
  const auto p = cfg::defaults<MemHierarchyParams>();
  MemHierarchy cpu0(p, &llc, &root, "cpu0");
  MemHierarchy cpu1(p, &llc, &root, "cpu1");
  CHECK(cpu0.access(0x4000, AccessKind::Read) == kLlc + kDram);
  CHECK(cpu1.access(0x4000, AccessKind::Read) == kLlc);
  CHECK(cpu1.access(0x4000, AccessKind::Read) == kL1);
  CHECK(cpu0.stats().dram_accesses.value() == 1);
  CHECK(cpu1.stats().dram_accesses.value() == 0);
  CHECK(llc.stats().accesses.value() == 2);
  CHECK(root.find("cpu1.l1d.hits") != nullptr);
}

TEST_CASE("dirty victims are written back level by level", "[mem_hierarchy]") {
  // One set everywhere: L1D 2 ways, L2 2 ways, LLC 2 ways.
  stats::Group root;
  auto lp = cfg::defaults<models::LlcParams>();
  lp.size = 128;
  lp.ways = 2;
  Cache llc(lp, &root, "llc");
  auto p = cfg::defaults<MemHierarchyParams>();
  for (models::CacheParams* c : {static_cast<models::CacheParams*>(&p.l1i), static_cast<models::CacheParams*>(&p.l1d),
                                 static_cast<models::CacheParams*>(&p.l2)}) {
    c->size = 128;
    c->ways = 2;
  }
  MemHierarchy mem(p, &llc, &root, "cpu0");
  const std::uint64_t a = 0x0, b = 0x40, c = 0x80;

  mem.access(a, AccessKind::Write);
  mem.access(b, AccessKind::Read);
  CHECK(mem.l1d().probe_dirty(a));
  // c evicts dirty a from the L1D; a goes back into the L2 dirty.
  mem.access(c, AccessKind::Read);
  CHECK(mem.l1d().stats().writebacks.value() == 1);
  CHECK(mem.l2().stats().writebacks_received.value() == 1);
  CHECK(mem.l2().probe_dirty(a));
  // The L2's demand fill of c evicted a (LRU, clean copy); a's writeback then
  // re-allocated a dirty, evicting b. L2 = {c, a*}.
  CHECK_FALSE(mem.l2().probe(b));
  CHECK(mem.l2().probe(c));
  CHECK(mem.stats().dram_writebacks.value() == 0);

  mem.access(0xC0, AccessKind::Read);   // L2 {a*, d}: c was LRU
  CHECK(mem.l2().stats().writebacks.value() == 0);
  mem.access(0x100, AccessKind::Read);  // L2 evicts a* into the LLC: {e, a*}
  CHECK(mem.l2().stats().writebacks.value() == 1);
  CHECK(llc.stats().writebacks_received.value() == 1);
  CHECK(llc.probe_dirty(a));
  mem.access(0x140, AccessKind::Read);  // LLC {a*, f}: e was LRU
  CHECK(llc.probe_dirty(a));
  CHECK(mem.stats().dram_writebacks.value() == 0);
  mem.access(0x180, AccessKind::Read);  // LLC evicts a* to DRAM
  CHECK_FALSE(llc.probe(a));
  CHECK(llc.stats().writebacks.value() == 1);
  CHECK(mem.stats().dram_writebacks.value() == 1);
  CHECK(mem.stats().dram_accesses.value() == 7);
}

TEST_CASE("a hierarchy needs an LLC", "[mem_hierarchy]") {
  stats::Group root;
  CHECK_THROWS_AS(MemHierarchy(cfg::defaults<MemHierarchyParams>(), nullptr, &root, "cpu0"), std::invalid_argument);
}
