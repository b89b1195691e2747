// Memory-level parallelism (cpu/core.cc, load_overlap; docs/model.md
// "Memory-level parallelism"): a pointer chase (each load's address is the
// previous load's data) pays one full memory latency per access; independent
// loads over the same footprint overlap up to the MSHR limit, so their
// throughput follows the limit.
#include <catch2/catch.hpp>

#include <cstdint>

#include "cpu/core.h"
#include "cpu/vmx_harness.h"

namespace {

using vmx::cpu::Core;
using vmx::test::VmxHarness;

constexpr std::uint64_t kBase = 0x2000000;  // 32 MiB: lines no one has touched
constexpr unsigned kLoads = 200;
constexpr std::uint64_t kStride = 4096 + 64;  // a new page and line each time, missing every cache

struct Result {
  std::uint64_t cycles = 0;
  std::uint32_t miss = 0;
  std::uint64_t overlapped = 0;
};

// In root operation (paging off): chases a chain through kLoads lines, or
// loads the same lines independently, then fences.
Result run(std::uint32_t mshrs, bool chase) {
  auto p = VmxHarness::small_platform();
  p.cpu.mshrs = mshrs;
  VmxHarness h(p);
  Result r;
  r.miss = static_cast<std::uint32_t>(p.llc.latency + p.caches.dram_latency);
  // The chain is placed in memory before the run, as a loader would, so no
  // cache holds any of its lines.
  for (unsigned i = 0; i < kLoads; ++i) h.platform().memory().write(kBase + i * kStride, kBase + (i + 1) * kStride, 8);
  h.after = [&](Core& c) {
    const std::uint64_t t0 = c.now();
    if (chase) {
      std::uint64_t a = kBase;
      for (unsigned i = 0; i < kLoads; ++i) a = c.load(a);
    } else {
      for (unsigned i = 0; i < kLoads; ++i) c.load_independent(kBase + i * kStride);
    }
    c.mfence();
    r.cycles = c.now() - t0;
  };
  h.run();
  REQUIRE(h.done);
  r.overlapped = h.counter("system.cpu0.overlapped_misses");
  return r;
}

}  // namespace

TEST_CASE("A pointer chase pays one full memory latency per access", "[core][mlp]") {
  const Result r = run(10, true);
  // One retired instruction plus the whole miss for each load, and the fence.
  CHECK(r.cycles == kLoads * (1ull + r.miss) + 1);
  CHECK(r.overlapped == 0);
}

TEST_CASE("Independent loads over the same footprint overlap up to the MSHR limit", "[core][mlp]") {
  const Result r = run(10, false);
  INFO("cycles " << r.cycles << " miss " << r.miss);
  CHECK(r.overlapped == kLoads);
  // kLoads / 10 groups of ten overlapping misses: throughput ten times the chase's.
  const double chase = kLoads * (1.0 + r.miss);
  CHECK(chase / static_cast<double>(r.cycles) == Approx(10.0).epsilon(0.03));
}

TEST_CASE("With four MSHRs the overlap is four", "[core][mlp]") {
  const Result r = run(4, false);
  const double chase = kLoads * (1.0 + r.miss);
  CHECK(chase / static_cast<double>(r.cycles) == Approx(4.0).epsilon(0.03));
}

TEST_CASE("mshrs 0: independent loads block like dependent ones", "[core][mlp]") {
  const Result r = run(0, false);
  CHECK(r.cycles == kLoads * (1ull + r.miss) + 1);
  CHECK(r.overlapped == 0);
}
