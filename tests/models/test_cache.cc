#include "models/cache.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "sim/params.h"
#include "sim/stats.h"

using namespace vmx;
using models::Cache;
using models::CacheParams;

namespace {
// 2 sets of 2 ways of 64-byte lines; lines 0x000, 0x080, 0x100 share set 0.
CacheParams two_way() {
  CacheParams p{};
  p.size = 256;
  p.ways = 2;
  p.line = 64;
  p.latency = 3;
  return p;
}
constexpr std::uint64_t A = 0x000, B = 0x080, C = 0x100, D = 0x040;
}  // namespace

TEST_CASE("each level's defaults come from its descriptor", "[cache]") {
  auto l1i = cfg::defaults<models::L1iParams>();
  auto l1d = cfg::defaults<models::L1dParams>();
  auto l2 = cfg::defaults<models::L2Params>();
  auto llc = cfg::defaults<models::LlcParams>();
  CHECK((l1i.size == 32768 && l1i.ways == 8 && l1i.line == 64 && l1i.latency == 4));
  CHECK((l1d.size == 32768 && l1d.ways == 8 && l1d.line == 64 && l1d.latency == 4));
  CHECK((l2.size == 1048576 && l2.ways == 16 && l2.line == 64 && l2.latency == 14));
  CHECK((llc.size == 8388608 && llc.ways == 16 && llc.line == 64 && llc.latency == 42));

  stats::Group root;
  CHECK(Cache(l1d, &root, "l1d").sets() == 64);
  CHECK(Cache(l2, &root, "l2").sets() == 1024);
  CHECK(Cache(llc, &root, "llc").sets() == 8192);
}

TEST_CASE("a miss fills the line and the next access hits", "[cache]") {
  stats::Group root;
  Cache c(two_way(), &root, "c");
  CHECK_FALSE(c.probe(A));
  CHECK_FALSE(c.access(A + 8, false));
  CHECK(c.probe(A));
  CHECK(c.probe(A + 63));
  CHECK_FALSE(c.probe(A + 64));
  CHECK(c.access(A + 60, false));
  CHECK(c.latency() == 3);
  CHECK(c.stats().accesses.value() == 2);
  CHECK(c.stats().hits.value() == 1);
  CHECK(c.stats().misses.value() == 1);
  CHECK(c.stats().evictions.value() == 0);
  CHECK(c.stats().miss_rate.value() == 0.5);
}

TEST_CASE("true LRU replacement in a 2-way set", "[cache]") {
  stats::Group root;
  Cache c(two_way(), &root, "c");
  c.access(A, false);
  c.access(B, false);
  c.access(D, false);  // set 1: does not disturb set 0
  const bool touch_a = GENERATE(true, false);
  if (touch_a) CHECK(c.access(A, false));
  CHECK(c.probe(A));  // probing does not change the LRU order
  CHECK_FALSE(c.access(C, false));
  CHECK(c.probe(C));
  CHECK(c.probe(D));
  if (touch_a) {
    CHECK(c.probe(A));
    CHECK_FALSE(c.probe(B));
  } else {
    CHECK_FALSE(c.probe(A));
    CHECK(c.probe(B));
  }
  CHECK(c.stats().evictions.value() == 1);
  CHECK(c.stats().writebacks.value() == 0);
}

TEST_CASE("dirty lines are written back when evicted", "[cache]") {
  stats::Group root;
  Cache c(two_way(), &root, "c");
  std::uint64_t wb = 0;
  CHECK_FALSE(c.access(A + 4, true, &wb));  // write-allocate
  CHECK(wb == Cache::kNoWriteback);
  CHECK(c.probe_dirty(A));
  c.access(B, false, &wb);
  CHECK_FALSE(c.probe_dirty(B));
  c.access(C, false, &wb);  // evicts A, dirty
  CHECK(wb == A);
  CHECK(c.stats().writebacks.value() == 1);
  c.access(A, false, &wb);  // evicts B, clean
  CHECK(wb == Cache::kNoWriteback);
  CHECK(c.stats().evictions.value() == 2);
  CHECK(c.stats().writebacks.value() == 1);

  // A write hit dirties a clean line.
  CHECK(c.access(A, true));
  CHECK(c.probe_dirty(A));
}

TEST_CASE("a received writeback dirties or allocates the line", "[cache]") {
  stats::Group root;
  Cache c(two_way(), &root, "c");
  c.access(A, false);
  c.access(B, false);
  std::uint64_t wb = 0;
  c.receive_writeback(A, &wb);  // present: dirtied, LRU order unchanged (A still LRU)
  CHECK(wb == Cache::kNoWriteback);
  CHECK(c.probe_dirty(A));
  c.receive_writeback(C, &wb);  // absent: allocated dirty, evicting A
  CHECK(wb == A);
  CHECK(c.probe_dirty(C));
  CHECK_FALSE(c.probe(A));
  CHECK(c.stats().writebacks_received.value() == 2);
  CHECK(c.stats().accesses.value() == 2);
}

TEST_CASE("invalidate_all drops every line", "[cache]") {
  stats::Group root;
  Cache c(two_way(), &root, "c");
  c.access(A, true);
  c.access(D, false);
  c.invalidate_all();
  CHECK_FALSE(c.probe(A));
  CHECK_FALSE(c.probe(D));
  CHECK_FALSE(c.access(A, false));
  CHECK(c.stats().writebacks.value() == 0);
}

TEST_CASE("stats sit under the parent group by name", "[cache]") {
  stats::Group root("system");
  Cache c(two_way(), &root, "l1d");
  c.access(A, false);
  const auto* misses = dynamic_cast<const stats::Counter*>(root.find("l1d.misses"));
  REQUIRE(misses);
  CHECK(misses->value() == 1);
}

TEST_CASE("invalid geometry names the cache and the parameter", "[cache]") {
  struct Bad {
    std::uint64_t size;
    std::uint32_t ways, line;
    const char* param;
  };
  const Bad bad = GENERATE(Bad{256, 0, 64, "'ways'"}, Bad{256, 2, 48, "'line'"}, Bad{0, 2, 64, "'size'"},
                           Bad{200, 2, 64, "'size'"}, Bad{192, 1, 64, "'size'"});
  CacheParams p = two_way();
  p.size = bad.size;
  p.ways = bad.ways;
  p.line = bad.line;
  stats::Group root;
  CHECK_THROWS_AS(Cache(p, &root, "l2"), std::invalid_argument);
  CHECK_THROWS_WITH(Cache(p, &root, "l2"), Catch::Contains("cache 'l2'") && Catch::Contains(bad.param));
}

namespace {
// The timestamp-per-way model the cache was first written as: the replacement
// reference the compact recency-ordered rows must agree with exactly.
class ReferenceCache {
 public:
  ReferenceCache(std::uint32_t sets, std::uint32_t ways, unsigned line_shift)
      : m_ways(ways), m_shift(line_shift), m_mask(sets - 1), m_lines(std::size_t(sets) * ways) {}

  bool access(std::uint64_t pa, bool write, std::uint64_t* wb) {
    Line* l = find(pa >> m_shift);
    *wb = Cache::kNoWriteback;
    if (l) {
      l->stamp = ++m_clock;
      l->dirty = l->dirty || write;
      return true;
    }
    Line& n = allocate(pa >> m_shift, wb);
    n.stamp = ++m_clock;
    n.dirty = write;
    return false;
  }
  void receive_writeback(std::uint64_t pa, std::uint64_t* wb) {
    *wb = Cache::kNoWriteback;
    if (Line* l = find(pa >> m_shift)) {
      l->dirty = true;
      return;
    }
    Line& n = allocate(pa >> m_shift, wb);
    n.stamp = ++m_clock;
    n.dirty = true;
  }
  bool probe_dirty(std::uint64_t pa) {
    const Line* l = find(pa >> m_shift);
    return l && l->dirty;
  }
  void invalidate_all() { std::fill(m_lines.begin(), m_lines.end(), Line{}); }
  std::uint64_t evictions = 0, writebacks = 0;

 private:
  struct Line {
    std::uint64_t tag = 0, stamp = 0;
    bool valid = false, dirty = false;
  };
  Line* set_of(std::uint64_t a) { return &m_lines[(a & m_mask) * m_ways]; }
  Line* find(std::uint64_t a) {
    Line* set = set_of(a);
    for (std::uint32_t w = 0; w < m_ways; ++w)
      if (set[w].valid && set[w].tag == a) return &set[w];
    return nullptr;
  }
  Line& allocate(std::uint64_t a, std::uint64_t* wb) {
    Line* set = set_of(a);
    Line* victim = &set[0];
    for (std::uint32_t w = 0; w < m_ways; ++w) {
      if (!set[w].valid) {
        victim = &set[w];
        break;
      }
      if (set[w].stamp < victim->stamp) victim = &set[w];
    }
    if (victim->valid) {
      ++evictions;
      if (victim->dirty) {
        ++writebacks;
        *wb = victim->tag << m_shift;
      }
    }
    *victim = Line{a, 0, true, false};
    return *victim;
  }
  std::uint32_t m_ways;
  unsigned m_shift;
  std::uint64_t m_mask;
  std::uint64_t m_clock = 0;
  std::vector<Line> m_lines;
};
}  // namespace

TEST_CASE("replacement, dirtiness and writebacks match a timestamp LRU reference", "[cache]") {
  const std::uint32_t ways = GENERATE(1u, 2u, 3u, 8u, 16u);
  CacheParams p{};
  p.ways = ways;
  p.line = 64;
  p.size = std::uint64_t(4) * ways * 64;  // 4 sets
  p.latency = 1;
  stats::Group root;
  Cache c(p, &root, "c");
  ReferenceCache ref(4, ways, 6);
  // Lines drawn from 6 x ways candidates per set, so sets fill, evict and hit.
  std::uint64_t x = 0x9e3779b97f4a7c15ull * ways;
  for (int i = 0; i < 20000; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const std::uint64_t pa = ((x >> 8) % (24 * ways)) * 64 + (x & 63);
    const unsigned op = unsigned(x >> 60);
    std::uint64_t wb = 0, ref_wb = 0;
    if (i % 5000 == 4999) {
      c.invalidate_all();
      ref.invalidate_all();
    }
    if (op == 0) {
      c.receive_writeback(pa, &wb);
      ref.receive_writeback(pa, &ref_wb);
    } else {
      const bool write = op >= 10;
      REQUIRE(c.access(pa, write, &wb) == ref.access(pa, write, &ref_wb));
    }
    REQUIRE(wb == ref_wb);
    REQUIRE(c.probe_dirty(pa) == ref.probe_dirty(pa));
  }
  CHECK(c.stats().evictions.value() == ref.evictions);
  CHECK(c.stats().writebacks.value() == ref.writebacks);
}

TEST_CASE("line states: lookup reports Shared lines, snoops downgrade and invalidate", "[cache][coherence]") {
  stats::Group root;
  Cache c(two_way(), &root, "c");
  CHECK(c.lookup(A, 0) == Cache::kMiss);
  c.fill(A, 0, nullptr);  // Shared
  CHECK(c.state(A) == Cache::kPresent);
  CHECK(c.lookup(A, 0) == Cache::kHitShared);
  // A store's lookup reports the line was Shared and leaves it owned, dirty.
  CHECK(c.lookup(A, Cache::kDirty | Cache::kOwned) == Cache::kHitShared);
  CHECK(c.state(A) == (Cache::kPresent | Cache::kOwned | Cache::kDirty));
  CHECK(c.lookup(A, 0) == Cache::kHit);
  // Another core's load: Shared and clean again, recency unchanged.
  CHECK(c.downgrade(A, Cache::kOwned | Cache::kDirty) == (Cache::kPresent | Cache::kOwned | Cache::kDirty));
  CHECK(c.state(A) == Cache::kPresent);
  CHECK(c.downgrade(C, Cache::kOwned) == 0);
  CHECK(c.stats().accesses.value() == 4);
  // Another core's store: the line goes; the others keep their LRU order
  // and the empty way is the next victim, so no valid line is evicted.
  c.access(B, false);  // set 0: {B, A}
  CHECK(c.invalidate(A) == Cache::kPresent);
  CHECK_FALSE(c.probe(A));
  CHECK(c.invalidate(A) == 0);
  c.access(C, false);  // set 0: {C, B}
  CHECK(c.probe(B));
  CHECK(c.probe(C));
  CHECK(c.stats().evictions.value() == 0);
}

TEST_CASE("the presence filter answers exactly what the full search answers", "[cache]") {
  // Two caches fed the same operations, one keeping the presence filter
  // (Cache::keep_presence_filter, turned on part way, with lines present):
  // every query and every statistic must agree, whatever the mix of
  // demand accesses, masked fills, write-backs, snoops and flushes.
  CacheParams p{};
  p.size = 64 * 64 * 4;  // 64 sets of 4 ways: the filter has 1024 counters
  p.ways = 4;
  p.line = 64;
  p.latency = 3;
  stats::Group root;
  Cache plain(p, &root, "plain"), filtered(p, &root, "filtered");
  std::uint64_t x = 12345;
  auto next = [&] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  unsigned absent = 0, checked = 0;
  for (int i = 0; i < 60000; ++i) {
    if (i == 500) filtered.keep_presence_filter();
    // 2,048 lines over 256 lines of capacity: hits, misses and evictions.
    const std::uint64_t pa = (next() % 2048) * 64;
    const unsigned op = static_cast<unsigned>(next() % 100);
    std::uint64_t wb_a = 0, wb_b = 0;
    if (op < 50) {
      const bool write = op & 1;
      REQUIRE(plain.access(pa, write, &wb_a) == filtered.access(pa, write, &wb_b));
    } else if (op < 60) {
      const std::uint64_t mask = 1 + next() % 15;
      REQUIRE(plain.access_masked(pa, op & 1, &wb_a, mask) == filtered.access_masked(pa, op & 1, &wb_b, mask));
    } else if (op < 70) {
      if (plain.state(pa) == 0) {
        plain.fill(pa, Cache::kOwned, &wb_a);
        filtered.fill(pa, Cache::kOwned, &wb_b);
      }
    } else if (op < 80) {
      plain.receive_writeback(pa, &wb_a);
      filtered.receive_writeback(pa, &wb_b);
    } else if (op < 85) {
      const std::uint64_t mask = 1 + next() % 15;
      plain.receive_writeback_masked(pa, &wb_a, mask);
      filtered.receive_writeback_masked(pa, &wb_b, mask);
    } else if (op < 93) {
      REQUIRE(plain.invalidate(pa) == filtered.invalidate(pa));
    } else if (op < 99) {
      REQUIRE(plain.downgrade(pa, Cache::kOwned) == filtered.downgrade(pa, Cache::kOwned));
    } else if (i % 7 == 0) {
      plain.invalidate_all();
      filtered.invalidate_all();
    }
    REQUIRE(wb_a == wb_b);
    const std::uint64_t q = (next() % 2048) * 64;
    ++checked;
    if (plain.state(q) == 0) ++absent;
    REQUIRE(plain.state(q) == filtered.state(q));
    REQUIRE(plain.probe_dirty(q) == filtered.probe_dirty(q));
    REQUIRE(plain.way_of(q) == filtered.way_of(q));
  }
  CHECK(filtered.presence_filter());
  CHECK_FALSE(plain.presence_filter());
  CHECK(absent > checked / 2);  // most queries were for absent lines: the filter's case
  CHECK(plain.stats().hits.value() == filtered.stats().hits.value());
  CHECK(plain.stats().misses.value() == filtered.stats().misses.value());
  CHECK(plain.stats().evictions.value() == filtered.stats().evictions.value());
  CHECK(plain.stats().writebacks.value() == filtered.stats().writebacks.value());
}
