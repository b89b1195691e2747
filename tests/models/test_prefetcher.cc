// The L2 prefetcher (models/prefetcher.h) in a core's hierarchy: a stream's
// L2 misses drop with it on, a random pattern gains nothing, and a demand
// access that catches up with an in-flight prefetch waits for it (late).
#include "models/mem_hierarchy.h"

#include <catch2/catch.hpp>

#include <cstdint>

#include "sim/params.h"
#include "sim/stats.h"

using namespace vmx;
using models::AccessKind;
using models::Cache;
using models::MemHierarchy;
using models::MemHierarchyParams;

namespace {

struct Rig {
  stats::Group root{"system"};
  Cache llc{cfg::defaults<models::LlcParams>(), &root, "llc"};
  MemHierarchy mem;
  std::uint64_t clock = 0;
  explicit Rig(const MemHierarchyParams& p) : mem(p, &llc, &root, "cpu0") { mem.set_clock(&clock); }
  // One load; the core's clock advances by its latency plus `gap` cycles of other work.
  void load(std::uint64_t pa, std::uint64_t gap = 0) { clock += mem.access(pa, AccessKind::Read) + gap; }
};

MemHierarchyParams with(bool next_line, bool stride, unsigned degree = 2) {
  auto p = cfg::defaults<MemHierarchyParams>();
  p.l2_prefetch.next_line = next_line;
  p.l2_prefetch.stride = stride;
  p.l2_prefetch.degree = degree;
  return p;
}

// SplitMix64 (S. Vigna), for a reproducible random pattern.
struct Rng {
  std::uint64_t x;
  std::uint64_t next() {
    std::uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
};

constexpr std::uint64_t kBase = 0x40000000;
constexpr unsigned kLines = 8192;  // 512 KiB: beyond the L1D, within the L2

}  // namespace

TEST_CASE("L2 prefetcher: off by default, no statistics group", "[prefetcher]") {
  Rig r(cfg::defaults<MemHierarchyParams>());
  CHECK_FALSE(cfg::defaults<MemHierarchyParams>().l2_prefetch.enabled());
  CHECK(r.mem.prefetch_stats() == nullptr);
  CHECK(r.root.find("cpu0.l2_prefetch.issued") == nullptr);
}

TEST_CASE("L2 prefetcher: a sequential stream's L2 misses drop, its prefetches are useful", "[prefetcher]") {
  const bool next_line = GENERATE(true, false);
  Rig off(with(false, false)), on(with(next_line, !next_line));
  for (unsigned i = 0; i < kLines; ++i) {
    off.load(kBase + 64ull * i, 300);  // enough work between lines for a prefetch to arrive
    on.load(kBase + 64ull * i, 300);
  }
  const auto misses_off = off.mem.l2().stats().misses.value();
  const auto misses_on = on.mem.l2().stats().misses.value();
  const auto& pf = *on.mem.prefetch_stats();
  INFO("L2 misses off " << misses_off << ", on " << misses_on << "; issued " << pf.issued.value() << ", useful "
                        << pf.useful.value() << ", late " << pf.late.value() << ", useless " << pf.useless.value());
  CHECK(misses_off == kLines);
  // Next-line: one miss per 4 KiB page (64 lines), the rest prefetched;
  // stride: two misses per page train it first.
  CHECK(misses_on <= (next_line ? 1u : 3u) * kLines / 64);
  CHECK(pf.useful.value() + misses_on == kLines);
  CHECK(pf.useful.value() >= pf.issued.value() * 9 / 10);
  CHECK(pf.late.value() == 0);
  // Fewer cycles for the same loads.
  CHECK(on.clock < off.clock);
}

TEST_CASE("L2 prefetcher: a random pattern gains nothing", "[prefetcher]") {
  Rig off(with(false, false)), on(with(true, true));
  Rng a{7}, b{7};
  constexpr std::uint64_t kSpan = 1ull << 30;  // 1 GiB: far beyond every cache
  for (unsigned i = 0; i < 20000; ++i) {
    off.load(kBase + (a.next() % kSpan & ~63ull));
    on.load(kBase + (b.next() % kSpan & ~63ull));
  }
  const auto misses_off = off.mem.l2().stats().misses.value();
  const auto misses_on = on.mem.l2().stats().misses.value();
  const auto& pf = *on.mem.prefetch_stats();
  INFO("L2 misses off " << misses_off << ", on " << misses_on << "; issued " << pf.issued.value() << ", useful "
                        << pf.useful.value() << ", useless " << pf.useless.value());
  CHECK(misses_on * 100 >= misses_off * 99);
  CHECK(pf.issued.value() > 10000);
  CHECK(pf.useful.value() * 100 < pf.issued.value());
  CHECK(pf.useless.value() > pf.issued.value() / 2);
}

TEST_CASE("L2 prefetcher: a demand access that catches up with its prefetch waits for it (late)", "[prefetcher]") {
  Rig r(with(true, false, 1));
  // Back-to-back loads: line X+1's prefetch leaves at X's miss and needs
  // the LLC and DRAM latency; the load of X+1 comes one L1 miss later.
  for (unsigned i = 0; i < 64; ++i) r.load(kBase + 64ull * i);
  const auto& pf = *r.mem.prefetch_stats();
  CHECK(pf.late.value() > 0);
  CHECK(pf.late.value() <= pf.useful.value());
  // Each late line still costs less than a miss: it was already on its way.
  CHECK(r.clock < 64ull * (42 + 204));
}
