// The host storage model (models/storage.h): latency, bandwidth, queue
// depth and contents.
#include "models/storage.h"

#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

using vmx::models::Storage;
using vmx::models::StorageParams;

namespace {
constexpr std::uint64_t kUs = 1000000;  // ps
StorageParams params(std::uint64_t qd) {
  StorageParams p;
  p.read_latency = 77 * kUs;
  p.write_latency = 18 * kUs;
  p.read_bandwidth = 4096ull * 1000000;  // 4 KiB per us
  p.write_bandwidth = 2048ull * 1000000;  // 4 KiB per 2 us
  p.queue_depth = qd;
  return p;
}
}  // namespace

TEST_CASE("storage: a lone request takes its transfer plus the access latency", "[storage]") {
  Storage s(params(4), nullptr);
  CHECK(s.submit(0, 4096, false) == 1 * kUs + 77 * kUs);
  Storage w(params(4), nullptr);
  CHECK(w.submit(10 * kUs, 4096, true) == 10 * kUs + 2 * kUs + 18 * kUs);
}

TEST_CASE("storage: requests in parallel overlap their latencies, the channel serializes transfers", "[storage]") {
  Storage s(params(4), nullptr);
  // Four reads at once: transfers end at 1, 2, 3, 4 us; each completes 77 us later.
  for (std::uint64_t i = 1; i <= 4; ++i) CHECK(s.submit(0, 4096, false) == i * kUs + 77 * kUs);
}

TEST_CASE("storage: beyond the queue depth a request waits for a command slot", "[storage]") {
  vmx::stats::Group root(nullptr, "root");
  Storage s(params(1), &root);
  const std::uint64_t first = s.submit(0, 4096, false);
  CHECK(first == 78 * kUs);
  CHECK(s.submit(0, 4096, false) == first + 78 * kUs);  // starts when the first completes
}

TEST_CASE("storage: a block reads back what was written, one never written reads as zeros", "[storage]") {
  Storage s(params(1), nullptr);
  std::vector<std::uint64_t> in(Storage::kBlock / 8), out(Storage::kBlock / 8, 1);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = i * 0x9E3779B97F4A7C15ull;
  s.write_block(7, in.data());
  s.read_block(7, out.data());
  CHECK(out == in);
  s.read_block(8, out.data());
  CHECK(out == std::vector<std::uint64_t>(Storage::kBlock / 8, 0));
  s.discard(7);
  s.read_block(7, out.data());
  CHECK(out[1] == 0);
}
