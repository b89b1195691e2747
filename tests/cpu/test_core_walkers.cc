// Concurrent page walkers (mmu/walker_pool.h; docs/model.md "Concurrent
// page walkers"): with MSHRs, an independent load's walk runs on one of the
// core's page walkers and blocks only that load, so walk-bound independent
// loads go as fast as the walkers allow; a dependent load still waits for
// its own walk, so a chase gains nothing from more walkers.
//
// The guest (EPT on, its paging off: each walk is an EPT walk) touches
// kPages pages, one per 2 MiB of guest-physical space, so that each walk
// reads the page-table entry of a page table nobody has read since the
// caches were flushed: every walk waits for DRAM, and so does its data.
#include <catch2/catch.hpp>

#include <cstdint>

#include "cpu/core.h"
#include "cpu/vmx_harness.h"

namespace {

using vmx::cpu::Core;
using vmx::test::VmxHarness;
namespace ept = vmx::mmu::ept;

constexpr unsigned kPages = 160;
constexpr std::uint64_t kGuestBase = 1ull << 30;   // guest-physical, one page per 2 MiB from here
constexpr std::uint64_t kHostBase = 32ull << 20;   // host frames of those pages, consecutive
constexpr std::uint64_t kFlushBase = 4ull << 20;   // identity-mapped (2 MiB pages): read to flush the caches
constexpr std::uint64_t kFlushBytes = 4ull << 20;  // four times the LLC below

std::uint64_t guest_pa(unsigned i) { return kGuestBase + i * (2ull << 20) + (i % 64) * 64; }

// Per phase: core cycles, and what the walks did meanwhile.
struct Phase {
  std::uint64_t cycles = 0;
  std::uint64_t walk_cycles = 0;  // sum over the phase's walks (walker.cycles)
  std::uint64_t walks = 0;
  std::uint64_t concurrent = 0, stall = 0, active = 0;  // page_walkers.*, 0 without the pool
};

struct Result {
  Phase dependent, independent;
  std::uint32_t miss = 0;
};

std::uint64_t counter(Core& c, const char* name) {
  const auto* s = dynamic_cast<const vmx::stats::Counter*>(c.stats().find(name));
  return s ? s->value() : 0;
}

// The guest loads one line of each of kPages pages with dependent loads
// (each waits for its data), then one line of each of kPages other pages
// with independent loads; every load walks.
Result run(unsigned walkers) {
  auto p = VmxHarness::small_platform();
  p.cpu.mshrs = 10;
  p.cpu.page_walkers = walkers;
  p.llc.size = 1ull << 20;
  VmxHarness h(p);
  Result r;
  r.miss = static_cast<std::uint32_t>(p.llc.latency + p.caches.dram_latency);
  h.setup = [&](Core& c) {
    for (unsigned i = 0; i < 2 * kPages; ++i)
      h.ept_map(c, kGuestBase + i * (2ull << 20), kHostBase + i * 4096ull, ept::kRead | ept::kWrite, 1);
  };
  h.guest = [&](Core& c) {
    for (std::uint64_t a = kFlushBase; a < kFlushBase + kFlushBytes; a += 64) c.load_independent(a);
    c.mfence();
    const auto* walk_hist = dynamic_cast<const vmx::stats::Histogram*>(c.stats().find("walker.cycles"));
    REQUIRE(walk_hist);
    auto phase = [&](Phase& ph, unsigned first, bool independent) {
      const std::uint64_t t0 = c.now(), w0 = walk_hist->sum(), n0 = walk_hist->count();
      const std::uint64_t k0 = counter(c, "page_walkers.concurrent_walks"), s0 = counter(c, "page_walkers.stall_cycles"),
                          a0 = counter(c, "page_walkers.active_cycles");
      for (unsigned i = first; i < first + kPages; ++i)
        if (independent) c.load_independent(guest_pa(i));
        else c.load(guest_pa(i));
      c.mfence();
      ph.cycles = c.now() - t0;
      ph.walk_cycles = walk_hist->sum() - w0;
      ph.walks = walk_hist->count() - n0;
      ph.concurrent = counter(c, "page_walkers.concurrent_walks") - k0;
      ph.stall = counter(c, "page_walkers.stall_cycles") - s0;
      ph.active = counter(c, "page_walkers.active_cycles") - a0;
    };
    phase(r.dependent, 0, false);
    phase(r.independent, kPages, true);
  };
  h.run();
  REQUIRE(h.done);
  REQUIRE(h.setup_errors.empty());
  // Every load walked, and each walk waited for DRAM (a cold page-table line).
  CHECK(r.dependent.walks == kPages);
  CHECK(r.independent.walks == kPages);
  CHECK(r.dependent.walk_cycles > kPages * std::uint64_t{r.miss});
  // A dependent load waits for its walk and then its data, whatever the
  // walkers: nothing overlaps.
  CHECK(r.dependent.cycles >= r.dependent.walk_cycles + kPages * std::uint64_t{r.miss});
  CHECK(r.dependent.concurrent == 0);
  CHECK(r.dependent.stall == 0);
  return r;
}

double walk_bound_speedup(const Result& r) {
  INFO("independent phase: " << r.independent.cycles << " cycles, its walks " << r.independent.walk_cycles
                             << " cycles in all");
  return static_cast<double>(r.independent.walk_cycles) / static_cast<double>(r.independent.cycles);
}

}  // namespace

TEST_CASE("Without page walkers every walk blocks the core", "[core][walkers]") {
  const Result r = run(0);
  // The data misses overlap, the walks do not: the loop takes its walks' time.
  CHECK(walk_bound_speedup(r) == Approx(1.0).epsilon(0.1));
  CHECK(r.independent.concurrent == 0);
}

TEST_CASE("One page walker serializes the walks of independent loads", "[core][walkers]") {
  const Result r = run(1);
  CHECK(walk_bound_speedup(r) == Approx(1.0).epsilon(0.1));
  CHECK(r.independent.concurrent == 0);
  CHECK(r.independent.stall > 0);  // the core went on, and its next walk waited for the walker
  CHECK(r.independent.active == r.independent.walk_cycles);
}

TEST_CASE("Two page walkers overlap the walks of independent loads two at a time", "[core][walkers]") {
  const Result r = run(2);
  CHECK(walk_bound_speedup(r) == Approx(2.0).epsilon(0.1));
  CHECK(r.independent.concurrent > kPages / 2);
  // The walks share their cycles: active time is about half their sum.
  CHECK(static_cast<double>(r.independent.active) ==
        Approx(r.independent.walk_cycles / 2.0).epsilon(0.1));
}

TEST_CASE("Four page walkers overlap four walks at a time within the MSHRs", "[core][walkers]") {
  const Result r = run(4);
  CHECK(walk_bound_speedup(r) == Approx(4.0).epsilon(0.15));
  CHECK(r.independent.concurrent > kPages / 2);
}
