// Cache allocation (CAT) and memory-bandwidth allocation (MBA): the MSR
// rules of models/rdt.h, a class confined to its LLC ways, and a throttled
// class's bandwidth.
#include "models/rdt.h"

#include <catch2/catch.hpp>

#include <cstdint>

#include "models/cache.h"
#include "models/dram.h"
#include "models/mem_hierarchy.h"
#include "sim/params.h"
#include "sim/stats.h"

using namespace vmx;
using models::Cache;
using models::Rdt;
namespace rmsr = models::rdt_msr;

namespace {
models::RdtParams rdt_params() {
  auto p = cfg::defaults<models::RdtParams>();
  p.enabled = true;
  return p;
}

// A 16-way LLC of 64 sets (64 KiB): small enough to fill in a test.
models::CacheParams llc16() {
  models::CacheParams p{};
  p.size = 64 * 16 * 64;
  p.ways = 16;
  p.line = 64;
  p.latency = 42;
  return p;
}
}  // namespace

TEST_CASE("RDT: masks must be contiguous, non-zero and within the bitmask length", "[rdt]") {
  Rdt r(rdt_params(), 16);
  CHECK(r.classes() == 16);
  CHECK(r.mask(3) == 0xFFFF);  // reset: every way
  CHECK(r.write(rmsr::kL3MaskBase + 3, 0x0FF0));
  CHECK(r.mask(3) == 0x0FF0);
  // Each of these is #GP(0) and leaves the mask as it was.
  for (std::uint64_t bad : {0x0ull, 0x0F0Full, 0x5ull, 0x1FFFFull, 0x10000ull}) {
    CAPTURE(bad);
    CHECK_FALSE(r.write(rmsr::kL3MaskBase + 3, bad));
    CHECK(r.mask(3) == 0x0FF0);
  }
  CHECK(r.write(rmsr::kL3MaskBase + 15, 0x8000));
  CHECK_FALSE(r.owns(rmsr::kL3MaskBase + 16));
  CHECK_FALSE(r.write(rmsr::kL3MaskBase + 16, 0xF));
  std::uint64_t v = 0;
  CHECK(r.read(rmsr::kL3MaskBase + 15, v));
  CHECK(v == 0x8000);
  // MBA: delay values up to the maximum.
  CHECK(r.write(rmsr::kMbaThrtlBase + 2, 90));
  CHECK(r.mba_delay(2) == 90);
  CHECK(r.mba_gap_ps(2) == r.params().mba_interval * 9);
  CHECK_FALSE(r.write(rmsr::kMbaThrtlBase + 2, 91));
  CHECK(r.mba_delay(2) == 90);
  CHECK(r.write(rmsr::kMbaThrtlBase + 2, 0));
  CHECK(r.mba_gap_ps(2) == 0);
  // IA32_PQR_ASSOC: CLOS in 63:32 below the class count, bits 31:10 reserved.
  CHECK(r.valid_pqr(15ull << 32));
  CHECK(r.valid_pqr((1ull << 32) | 0x3FF));
  CHECK_FALSE(r.valid_pqr(16ull << 32));
  CHECK_FALSE(r.valid_pqr(1ull << 10));
}

TEST_CASE("RDT: CPUID leaf 10H enumerates L3 CAT and MBA", "[rdt]") {
  Rdt r(rdt_params(), 16);
  CHECK(r.cpuid(0).ebx == ((1u << 1) | (1u << 3)));
  const auto cat = r.cpuid(1);
  CHECK(cat.eax == 15);  // bitmask length - 1
  CHECK(cat.edx == 15);  // highest CLOS
  const auto mba = r.cpuid(3);
  CHECK(mba.eax == 89);  // maximum delay - 1
  CHECK(mba.ecx == (1u << 2));  // linear
  CHECK(mba.edx == 15);
  CHECK_THROWS_AS(Rdt(rdt_params(), 40), std::invalid_argument);
}

TEST_CASE("CAT: a fill replaces only ways of its mask; hits find any way", "[rdt][cache]") {
  stats::Group root;
  Cache llc(llc16(), &root, "llc");
  const std::uint64_t set_stride = 64 * 64;  // same set every 4 KiB
  // Class A fills 8 lines of set 0 into ways 0-7, class B 8 into ways 8-15.
  for (unsigned i = 0; i < 8; ++i) llc.access_masked(i * set_stride, false, nullptr, 0x00FF);
  for (unsigned i = 0; i < 8; ++i) llc.access_masked((100 + i) * set_stride, false, nullptr, 0xFF00);
  for (unsigned i = 0; i < 8; ++i) {
    CHECK(llc.way_of(i * set_stride) < 8);
    CHECK(llc.way_of((100 + i) * set_stride) >= 8);
  }
  // B streams 1000 more lines through the set: only its own ways turn over.
  for (unsigned i = 0; i < 1000; ++i) llc.access_masked((200 + i) * set_stride, false, nullptr, 0xFF00);
  for (unsigned i = 0; i < 8; ++i) CHECK(llc.probe(i * set_stride));
  // B hits in A's ways too (a lookup searches every way).
  CHECK(llc.access_masked(3 * set_stride, false, nullptr, 0xFF00));
  // An unmasked fill (every way) evicts the least recently used line, A's or B's.
  for (unsigned i = 0; i < 16; ++i) llc.access((5000 + i) * set_stride, false);
  for (unsigned i = 0; i < 8; ++i) CHECK_FALSE(llc.probe(i * set_stride));
}

// The acceptance test of CAT at the hierarchy level: the critical class's
// working set survives the other class's stream only when their masks are
// disjoint.
TEST_CASE("CAT: a class confined to its ways keeps its working set against another class's stream",
          "[rdt][cache]") {
  auto misses_of_a_after_b_streams = [](bool partitioned) {
    stats::Group root;
    auto mp = cfg::defaults<models::MemHierarchyParams>();
    mp.l2.size = 64 * 1024;  // private caches much smaller than the working set
    Cache llc(llc16(), &root, "llc");
    Rdt rdt(rdt_params(), 16);
    models::MemHierarchy a(mp, &llc, &root, "a"), b(mp, &llc, &root, "b");
    a.attach_rdt(&rdt, 3'000'000'000ull);
    b.attach_rdt(&rdt, 3'000'000'000ull);
    if (partitioned) {
      REQUIRE(rdt.write(rmsr::kL3MaskBase + 1, 0x00FF));
      REQUIRE(rdt.write(rmsr::kL3MaskBase + 2, 0xFF00));
    }
    a.set_clos(1);
    b.set_clos(2);
    // A's working set: 32 KiB of LLC lines (half the LLC, 8 of 16 ways),
    // warmed twice; then B streams 1 MiB (16x the LLC).
    const std::uint64_t ws = 32 * 1024, base_b = 1ull << 30;
    for (int pass = 0; pass < 2; ++pass)
      for (std::uint64_t off = 0; off < ws; off += 64) a.access(off, models::AccessKind::Read);
    for (std::uint64_t off = 0; off < (1u << 20); off += 64) b.access(base_b + off, models::AccessKind::Read);
    // A misses in its 64 KiB L2 anyway (it kept only part): count its LLC misses.
    a.invalidate_private();
    const std::uint64_t before = a.stats().dram_accesses.value();
    for (std::uint64_t off = 0; off < ws; off += 64) a.access(off, models::AccessKind::Read);
    return a.stats().dram_accesses.value() - before;
  };
  const std::uint64_t shared = misses_of_a_after_b_streams(false);
  const std::uint64_t partitioned = misses_of_a_after_b_streams(true);
  CHECK(shared == 32 * 1024 / 64);  // every line was evicted by B's stream
  CHECK(partitioned == 0);          // none: B could not touch A's ways
}

TEST_CASE("MBA: a throttled class's bandwidth drops with its delay value", "[rdt][dram]") {
  // One core issuing a read miss every 2 ns (as with many outstanding
  // misses) to the DDR4 model; the bandwidth is lines x 64 B over the time
  // until the last one's data arrived.
  auto bandwidth_gbs = [](unsigned delay) {
    stats::Group root;
    auto mp = cfg::defaults<models::MemHierarchyParams>();
    Cache llc(cfg::defaults<models::LlcParams>(), &root, "llc");
    auto dp = cfg::defaults<models::DramParams>();
    dp.model = "dram";
    models::Dram dram(dp, &root);
    Rdt rdt(rdt_params(), 16);
    REQUIRE(rdt.write(rmsr::kMbaThrtlBase + 1, delay));
    models::MemHierarchy h(mp, &llc, &root, "h");
    constexpr std::uint64_t kHz = 3'000'000'000ull;
    h.attach_dram(&dram, dram.add_requester("h"), kHz);
    h.attach_rdt(&rdt, kHz);
    h.set_clos(1);
    std::uint64_t clock = 0, done = 0;
    h.set_clock(&clock);
    constexpr unsigned kLines = 4000;
    for (unsigned i = 0; i < kLines; ++i) {
      const std::uint32_t lat = h.access((1ull << 28) + i * 64ull, models::AccessKind::Read);
      done = std::max<std::uint64_t>(done, clock + lat);
      clock += 6;  // 2 ns at 3 GHz
    }
    return kLines * 64.0 / (static_cast<double>(done) / kHz) / 1e9;
  };
  const double free = bandwidth_gbs(0), d50 = bandwidth_gbs(50), d90 = bandwidth_gbs(90);
  CAPTURE(free, d50, d90);
  CHECK(free > 15.0);  // the stream runs near the DRAM's 38.4 GB/s peak, beyond MBA's reference
  // Delay d spaces requests mba_interval x d / (100 - d) apart: 8 ns (8 GB/s)
  // at 50, 72 ns (0.89 GB/s) at 90.
  CHECK(d50 == Approx(8.0).epsilon(0.05));
  CHECK(d90 == Approx(64.0 / 72.0).epsilon(0.05));
}
