// Memory bandwidth shared by the whole system (docs/model.md "DRAM";
// docs/validation.md "DRAM"): the cores' misses and device DMA go through
// one DDR4 model, so a second streaming core halves what the first gets
// from a channel, and a DMA stream raises a core's loaded read latency.
// Everything is read from the DRAM model's per-requester statistics.
#include <catch2/catch.hpp>

#include <string>

#include "system/cli_harness.h"

using vmx::test::CliRun;
using vmx::test::run_cli;
using vmx::test::run_ok;

namespace {

// One DDR4-2400 channel (19.2 GB/s), a 2 MiB LLC (so that 6 MiB streams
// miss it), MSHRs enough for one core to fill the channel, and a 1 us
// quantum so that cores interleave their requests finely. Statistics from
// 6 ms on, when the streams' first pass (page faults) is over.
constexpr double kWindowSeconds = 2e-3;
constexpr double kChannelBytesPerSecond = 19.2e9;

std::string head(unsigned cores, const std::string& extra = "") {
  return "seed: 1\n"
         "duration: 8ms\n"
         "warmup: 6ms\n"
         "platform:\n"
         "  cores: " + std::to_string(cores) + "\n"
         "  memory: 1GiB\n"
         "  quantum: 1us\n"
         "  llc: {size: 2MiB}\n"
         "  cpu: {mshrs: 32, store_buffer: 56}\n"
         "  dram: {model: dram, channels: 1}\n" + extra +
         "hypervisor:\n"
         "  ept_populate: eager\n"
         "  zero_pages: false\n"
         "vms:\n";
}

std::string stream_vm(const std::string& name, unsigned cpu, unsigned instructions_per_access = 2) {
  return "  - name: " + name + "\n"
         "    memory: 128MiB\n"
         "    pin: \"" + std::to_string(cpu) + "\"\n"
         "    workloads:\n"
         "      - type: stream\n"
         "        working_set: 6MiB\n"
         "        instructions_per_access: " + std::to_string(instructions_per_access) + "\n";
}

double gbps(const CliRun& r, const std::string& requester) {
  return r.at("system.dram.requesters." + requester + ".bytes") / kWindowSeconds / 1e9;
}

double mean_read_ns(const CliRun& r, const std::string& requester) {
  const std::string p = "system.dram.requesters." + requester;
  return r.at(p + ".latency_ps") / r.at(p + ".reads") / 1e3;
}

}  // namespace

TEST_CASE("A stream on two cores splits one channel's bandwidth", "[dram][bandwidth][system]") {
  const CliRun alone = run_ok(head(2) + stream_vm("a", 0));
  const CliRun both = run_ok(head(2) + stream_vm("a", 0) + stream_vm("b", 1));
  const double one = gbps(alone, "cpu0"), a = gbps(both, "cpu0"), b = gbps(both, "cpu1");
  INFO("alone " << one << " GB/s; together " << a << " + " << b << " GB/s; channel 19.2 GB/s");
  // One stream alone takes most of the channel...
  CHECK(one > 0.85 * kChannelBytesPerSecond / 1e9);
  CHECK(one <= kChannelBytesPerSecond / 1e9);
  // ...two streams get about half of that each, and together the same.
  CHECK(a == Approx(one / 2).epsilon(0.1));
  CHECK(b == Approx(one / 2).epsilon(0.1));
  CHECK(a + b == Approx(one).epsilon(0.05));
  // Their reads waited for each other.
  CHECK(mean_read_ns(both, "cpu0") > 1.3 * mean_read_ns(alone, "cpu0"));
}

TEST_CASE("A DMA stream raises a core's loaded memory latency", "[dram][bandwidth][dma][system]") {
  // Core 0 streams at a low rate (one line per ~100 instructions): its
  // mean DRAM read latency is its loaded latency. Core 1 drives a VF's
  // transmit ring with a poll-mode driver: the NIC reads 4 KiB frames from
  // an 8 MiB buffer pool by DMA (the 400 Gbit/s link does not limit it).
  const std::string nic =
      "  nic:\n"
      "    enabled: true\n"
      "    link: {bandwidth_gbps: 400}\n"
      "    peer: {mode: sink}\n";
  auto yaml = [&](bool dma) {
    std::string y = head(2, nic) + stream_vm("probe", 0, 100);
    if (dma)
      y += "  - name: io\n"
           "    memory: 128MiB\n"
           "    pin: \"1\"\n"
           "    nic: {type: vf, vf: 0}\n"
           "    workloads:\n"
           "      - {type: net_stream, driver: pmd, frames: 0, size: 4096, batch: 32, buffer: 8MiB}\n";
    // The pmd driver sets its ring up for about 10 ms first.
    const auto at = y.find("duration: 8ms\nwarmup: 6ms");
    return y.replace(at, 25, "duration: 16ms\nwarmup: 12ms");
  };
  const CliRun quiet = run_ok(yaml(false)), loaded = run_ok(yaml(true));
  const double dma_gbps = loaded.at("system.dram.requesters.dma.bytes") / 4e-3 / 1e9;
  const double before = mean_read_ns(quiet, "cpu0"), after = mean_read_ns(loaded, "cpu0");
  INFO("DMA " << dma_gbps << " GB/s; core 0's mean read latency " << before << " ns -> " << after << " ns");
  CHECK(quiet.at_or_zero("system.dram.requesters.dma.bytes") == 0);
  CHECK(dma_gbps > 5);
  CHECK(after > 1.12 * before);
}
