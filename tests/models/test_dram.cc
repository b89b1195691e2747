// Exact tests of the DDR4 model (models/dram.h): row-buffer hit, miss and
// conflict latencies from the configured timing, refresh, the closed-page
// policy, the channel's bandwidth limit shared by two requesters, and the
// loaded latency a DMA stream imposes on a core's reads.
#include "models/dram.h"

#include <catch2/catch.hpp>

#include <cstdint>

using vmx::models::Dram;
using vmx::models::DramParams;

namespace {

DramParams defaults() { return vmx::cfg::defaults<DramParams>(); }

constexpr std::uint64_t kNs = 1000;  // ps

}  // namespace

TEST_CASE("DRAM defaults are the cited DDR4-2400R figures", "[dram]") {
  const DramParams p = defaults();
  CHECK(p.t_cl == 13320);
  CHECK(p.t_rcd == 13320);
  CHECK(p.t_rp == 13320);
  CHECK(p.t_ras == 32 * kNs);
  CHECK(p.t_burst == 3333);
  CHECK(p.t_refi == 7800 * kNs);
  CHECK(p.t_rfc == 350 * kNs);
  vmx::stats::Group root(nullptr, "root");
  Dram d(p, &root);
  CHECK(d.peak_bandwidth() == Approx(2 * 19.2e9).epsilon(0.001));
}

TEST_CASE("Row-buffer hit, miss and conflict give the configured latencies exactly", "[dram]") {
  DramParams p = defaults();
  vmx::stats::Group root(nullptr, "root");
  Dram d(p, &root);
  const unsigned r = d.add_requester("cpu0");
  // Same channel and bank: the next line of the channel is in the same row;
  // a whole bank's stride further is the next row of that bank.
  const std::uint64_t a = 0;
  const std::uint64_t same_row = 64 * p.channels;
  const std::uint64_t other_row = p.row_size * p.channels * p.banks * p.ranks;
  REQUIRE(d.map(a).bank == d.map(other_row).bank);
  REQUIRE(d.map(a).row + 1 == d.map(other_row).row);
  REQUIRE(d.map(a).row == d.map(same_row).row);

  const std::uint64_t t0 = 1000 * kNs;  // after the first refresh window, far from the next
  CHECK(d.access(a, false, r, t0) == p.controller_latency + p.t_rcd + p.t_cl + p.t_burst);  // bank precharged
  CHECK(d.access(same_row, false, r, t0 + 200 * kNs) == p.controller_latency + p.t_cl + p.t_burst);  // row hit
  CHECK(d.access(other_row, false, r, t0 + 400 * kNs) ==
        p.controller_latency + p.t_rp + p.t_rcd + p.t_cl + p.t_burst);  // row conflict
  CHECK(d.miss_latency() == 15 * kNs + 13320 + 13320 + 3333);
  CHECK(d.hit_latency() == 15 * kNs + 13320 + 3333);
  CHECK(d.conflict_latency() == 15 * kNs + 3 * 13320 + 3333);
  CHECK(d.stats().row_misses.value() == 1);
  CHECK(d.stats().row_hits.value() == 1);
  CHECK(d.stats().row_conflicts.value() == 1);
  CHECK(d.stats().queue_ns.max() == 0);
  CHECK(d.requester(r).bytes.value() == 3 * 64);
}

TEST_CASE("A conflict right after an activation waits for tRAS", "[dram]") {
  DramParams p = defaults();
  vmx::stats::Group root(nullptr, "root");
  Dram d(p, &root);
  const unsigned r = d.add_requester("cpu0");
  const std::uint64_t other_row = p.row_size * p.channels * p.banks * p.ranks;
  const std::uint64_t t0 = 1000 * kNs;
  d.access(0, false, r, t0);  // activates at t0
  // Arrives when the bank is ready again (one burst after the read command)
  // but before tRAS has passed since the activation.
  const std::uint64_t t1 = t0 + p.t_rcd + p.t_burst;
  CHECK(d.access(other_row, false, r, t1) == p.controller_latency + (t0 + p.t_ras - t1) + p.t_rp + p.t_rcd + p.t_cl +
                                                  p.t_burst);
}

TEST_CASE("Closed-page policy: every access activates its row", "[dram]") {
  DramParams p = defaults();
  p.page_policy = "closed";
  vmx::stats::Group root(nullptr, "root");
  Dram d(p, &root);
  const unsigned r = d.add_requester("cpu0");
  const std::uint64_t t0 = 1000 * kNs;
  CHECK(d.access(0, false, r, t0) == d.miss_latency());
  CHECK(d.access(64 * p.channels, false, r, t0 + 200 * kNs) == d.miss_latency());  // same row: precharged anyway
  CHECK(d.stats().row_hits.value() == 0);
  CHECK(d.stats().row_misses.value() == 2);
}

TEST_CASE("Refresh blocks the rank for tRFC and closes its rows", "[dram]") {
  DramParams p = defaults();
  vmx::stats::Group root(nullptr, "root");
  Dram d(p, &root);
  const unsigned r = d.add_requester("cpu0");
  d.access(0, false, r, 1000 * kNs);  // opens a row
  const std::uint64_t t = 3 * p.t_refi + 10 * kNs;  // 10 ns into the fourth refresh
  CHECK(d.access(64 * p.channels, false, r, t) == (p.t_rfc - 10 * kNs) + d.miss_latency());
  CHECK(d.stats().refreshes.value() == 1);
  CHECK(d.stats().row_hits.value() == 0);  // the refresh precharged the open row
}

TEST_CASE("Two streams on one channel split its bandwidth", "[dram]") {
  DramParams p = defaults();
  p.channels = 1;
  vmx::stats::Group root(nullptr, "root");
  Dram d(p, &root);
  const unsigned a = d.add_requester("cpu0");
  const unsigned b = d.add_requester("cpu1");
  // Each offers a line per tBURST (the whole channel's rate) to its own
  // banks (a: banks 0-7, b: banks 8-15); together they offer twice what the
  // channel moves.
  const std::uint64_t t0 = 1000 * kNs;
  const unsigned n = 1024;  // 8 rows each, 3.4 us of offered traffic, inside one refresh interval
  const std::uint64_t b_base = (1ull << 30) + 8 * p.row_size;
  REQUIRE(d.map(b_base).bank == 8);
  std::uint64_t end_a = 0, end_b = 0;
  for (unsigned i = 0; i < n; ++i) {
    const std::uint64_t t = t0 + i * p.t_burst;
    end_a = std::max(end_a, t + d.access(std::uint64_t{i} * 64, false, a, t));
    end_b = std::max(end_b, t + d.access(b_base + std::uint64_t{i} * 64, false, b, t));
  }
  const double peak = d.peak_bandwidth();
  const double bw_a = 64.0 * n / (static_cast<double>(end_a - t0) * 1e-12);
  const double bw_b = 64.0 * n / (static_cast<double>(end_b - t0) * 1e-12);
  INFO("peak " << peak << " a " << bw_a << " b " << bw_b);
  CHECK(bw_a == Approx(peak / 2).epsilon(0.05));
  CHECK(bw_b == Approx(peak / 2).epsilon(0.05));
  CHECK(bw_a + bw_b <= peak * 1.01);  // never more than the channel moves
  CHECK(d.requester(a).bytes.value() == 64ull * n);
  CHECK(d.requester(b).bytes.value() == 64ull * n);
}

TEST_CASE("One stream alone gets the channel's bandwidth", "[dram]") {
  DramParams p = defaults();
  p.channels = 1;
  vmx::stats::Group root(nullptr, "root");
  Dram d(p, &root);
  const unsigned a = d.add_requester("cpu0");
  const std::uint64_t t0 = 1000 * kNs;
  const unsigned n = 1500;
  std::uint64_t end = 0;
  for (unsigned i = 0; i < n; ++i) {
    const std::uint64_t t = t0 + i * p.t_burst;
    end = std::max(end, t + d.access(std::uint64_t{i} * 64, false, a, t));
  }
  const double bw = 64.0 * n / (static_cast<double>(end - t0) * 1e-12);
  CHECK(bw == Approx(d.peak_bandwidth()).epsilon(0.05));
}

TEST_CASE("A DMA stream raises a core's loaded read latency", "[dram]") {
  DramParams p = defaults();
  auto core_mean = [&](bool with_dma) {
    vmx::stats::Group g(nullptr, "g");
    Dram d(p, &g);
    const unsigned core = d.add_requester("cpu0");
    const unsigned dma = d.add_requester("dma");
    const std::uint64_t t0 = 1000 * kNs;
    std::uint64_t sum = 0;
    unsigned reads = 0;
    // The core reads a line every 100 ns, walking its own rows; the DMA
    // engine writes a line per tBURST per channel (the whole bandwidth).
    for (std::uint64_t t = t0, i = 0; t < t0 + 5000 * kNs; t += p.t_burst / 2, ++i) {
      if (with_dma) d.access((2ull << 30) + i * 64, true, dma, t);
      if (i % 30 == 0) {
        sum += d.access((1ull << 30) + (i / 30) * 4096, false, core, t);
        ++reads;
      }
    }
    return static_cast<double>(sum) / reads;
  };
  const double alone = core_mean(false);
  const double loaded = core_mean(true);
  INFO("alone " << alone << " ps, with DMA " << loaded << " ps");
  CHECK(loaded > alone * 1.5);
}

TEST_CASE("Bad DRAM organization is a clear error", "[dram]") {
  DramParams p = defaults();
  p.banks = 12;
  vmx::stats::Group root(nullptr, "root");
  CHECK_THROWS_WITH(Dram(p, &root), Catch::Contains("banks must be a power of two"));
  p = defaults();
  p.t_rfc = p.t_refi;
  CHECK_THROWS_WITH(Dram(p, &root), Catch::Contains("t_rfc"));
}
