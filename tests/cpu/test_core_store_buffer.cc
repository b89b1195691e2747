// The store buffer (cpu/core.cc, store_retire; docs/model.md "Store
// buffer"): a store-only loop over lines that miss every cache no longer
// pays the miss latency per store; its misses overlap up to fill_buffers;
// the drain shows at MFENCE (and at a locked instruction).
#include <catch2/catch.hpp>

#include <cstdint>

#include "cpu/core.h"
#include "cpu/vmx_harness.h"

namespace {

using vmx::cpu::Core;
using vmx::test::VmxHarness;

constexpr std::uint64_t kBase = 0x2000000;  // 32 MiB: lines no one has touched
constexpr unsigned kStores = 64;            // one page of lines, as a page zeroing does

struct Timing {
  std::uint64_t loop = 0, fence = 0;
  std::uint64_t full_stat = 0, drain_stat = 0;
  std::uint32_t miss = 0;
};

Timing run(std::uint32_t entries, std::uint32_t fill_buffers, bool locked_instead_of_fence = false) {
  auto p = VmxHarness::small_platform();
  p.cpu.store_buffer = entries;
  p.cpu.fill_buffers = fill_buffers;
  VmxHarness h(p);
  Timing t;
  t.miss = static_cast<std::uint32_t>(p.llc.latency + p.caches.dram_latency);
  h.after = [&](Core& c) {
    std::uint64_t t0 = c.now();
    for (unsigned i = 0; i < kStores; ++i) c.store(kBase + i * 64ull, i);
    t.loop = c.now() - t0;
    t0 = c.now();
    if (locked_instead_of_fence)
      c.lock_or(kBase, 0);  // its line is in the L1 by now: the drain is all it waits for
    else
      c.mfence();
    t.fence = c.now() - t0;
  };
  h.run();
  REQUIRE(h.done);
  t.full_stat = h.counter("system.cpu0.store_buffer_full_cycles");
  t.drain_stat = h.counter("system.cpu0.store_buffer_drain_cycles");
  return t;
}

}  // namespace

TEST_CASE("Without a store buffer every missing store pays the miss latency", "[core][store_buffer]") {
  const Timing t = run(0, 10);
  CHECK(t.loop == kStores * (1 + t.miss));  // one retired instruction + the miss, per store
  CHECK(t.fence == 1);                      // MFENCE retires; nothing to drain
  CHECK(t.drain_stat == 0);
}

TEST_CASE("A store-only loop retires into the store buffer and its drain shows at a fence", "[core][store_buffer]") {
  const Timing t = run(56, 10);
  INFO("loop " << t.loop << " fence " << t.fence << " miss " << t.miss);
  // 56 stores retire at once; the 57th waits for the oldest to finish
  // (about one miss), the rest follow as entries free up.
  CHECK(t.loop < 2 * t.miss);
  CHECK(t.full_stat > 0);
  // The misses overlap ten at a time: 64 stores finish after ceil(64/10) = 7
  // miss latencies (plus the cycles their issue took), which the fence waits for.
  const std::uint64_t total = t.loop + t.fence;
  CHECK(total >= 7ull * t.miss);
  CHECK(total <= 7ull * t.miss + kStores + 1);
  CHECK(t.fence > 4ull * t.miss);
  CHECK(t.drain_stat == t.fence - 1);  // all but MFENCE's own retired instruction
}

TEST_CASE("With one fill buffer the drain is serial", "[core][store_buffer]") {
  // (SystemC elaborates once per process: the ten-buffer case is above.)
  const Timing one = run(56, 1);
  CHECK(one.loop + one.fence >= std::uint64_t{kStores} * one.miss);
  CHECK(one.loop + one.fence <= std::uint64_t{kStores} * (one.miss + 1) + 1);
}

TEST_CASE("A locked instruction drains the store buffer first", "[core][store_buffer]") {
  const Timing t = run(56, 10, true);
  CHECK(t.fence > 4ull * t.miss);
  CHECK(t.drain_stat > 4ull * t.miss);
}
