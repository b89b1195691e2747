// S12, mixed criticality (docs/partitioning.md): the critical VM's control
// loop measures its own response times with RDTSC; the test reads its
// worst case and deadline misses from the statistics of the scenario's
// configs with isolation mechanisms switched on and off.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "system/cli_harness.h"

using vmx::test::CliRun;
using vmx::test::read_text;
using vmx::test::run_cli;

namespace {

std::string scenario(const std::string& file) {
  return read_text(std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/" + file);
}

struct Loop {
  double jobs, worst_us, mean_us, misses;
};

Loop run_loop(const std::string& file, const std::vector<std::string>& sets = {}) {
  std::vector<std::string> args;
  for (const auto& s : sets) {
    args.push_back("--set");
    args.push_back(s);
  }
  const CliRun r = run_cli(scenario(file), args);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const std::string w = "vm.critical.workload0.";
  Loop l{r.at(w + "operations"), r.at(w + "response_us.max"), r.at(w + "response_us.mean"),
         r.at(w + "deadline_misses")};
  UNSCOPED_INFO(file << " jobs " << l.jobs << " worst " << l.worst_us << " us, mean " << l.mean_us
                     << " us, misses " << l.misses);
  return l;
}

constexpr double kDeadlineUs = 1000;  // the configs' 1 ms deadline

}  // namespace

TEST_CASE("S12: sharing cache and bandwidth, the critical loop's worst case rises with the infotainment load",
          "[s12][system]") {
  // The infotainment stream's working set per thread: cache-resident
  // (64 KiB, within its L2) against 4 MiB (four threads: four times the
  // LLC). labs/lab8_isolation.md adds 1 MiB between them.
  const Loop light = run_loop("s12_shared.yaml", {"vms[1].workloads[0].working_set=64KiB"});
  const Loop heavy = run_loop("s12_shared.yaml");
  REQUIRE(light.jobs >= 10);
  REQUIRE(heavy.jobs >= 10);
  CHECK(light.worst_us < kDeadlineUs);
  CHECK(light.misses == 0);
  CHECK(heavy.worst_us > 2 * light.worst_us);
  CHECK(heavy.mean_us > 2 * light.mean_us);
  CHECK(heavy.misses > 0);
}

TEST_CASE("S12: with pinning, IOMMU partitioning, CAT and MBA the critical loop meets its deadline",
          "[s12][system]") {
  const Loop all = run_loop("s12_isolated.yaml");
  REQUIRE(all.jobs >= 10);
  CHECK(all.worst_us < kDeadlineUs);
  CHECK(all.misses == 0);
}

// Each mechanism switched off alone, the others on.
TEST_CASE("S12: without pinning alone the critical loop misses its deadline", "[s12][system]") {
  const Loop l = run_loop("s12_isolated.yaml", {"vms[0].pin=\"\"", "vms[1].pin=\"\""});
  CHECK(l.worst_us > kDeadlineUs);
  CHECK(l.misses > 0);
}

TEST_CASE("S12: without CAT alone the critical loop misses its deadline", "[s12][system]") {
  const Loop l = run_loop("s12_isolated.yaml", {"vms[0].cache_ways=0", "vms[1].cache_ways=0"});
  CHECK(l.worst_us > kDeadlineUs);
  CHECK(l.misses > 0);
}

TEST_CASE("S12: without MBA alone the critical loop misses its deadline", "[s12][system]") {
  const Loop l = run_loop("s12_isolated.yaml", {"vms[1].mba_delay=0"});
  CHECK(l.worst_us > kDeadlineUs);
  CHECK(l.misses > 0);
}

TEST_CASE("S12: without IOMMU partitioning (both NICs emulated over the shared PF) the loop misses its deadline",
          "[s12][system]") {
  const Loop l = run_loop("s12_isolated.yaml", {"vms[0].nic.type=emulated", "vms[1].nic.type=emulated"});
  CHECK(l.worst_us > kDeadlineUs);
  CHECK(l.misses > 0);
}

TEST_CASE("S12: bad cache and bandwidth settings are config errors naming the key", "[s12][system][config]") {
  struct Bad {
    std::vector<std::string> sets;
    std::string key;
  };
  const std::vector<Bad> bad = {
      {{"vms[0].cache_ways=0x0F0F"}, "vms[0].cache_ways"},        // not contiguous
      {{"vms[1].cache_ways=0x10000"}, "vms[1].cache_ways"},       // beyond the 16 ways
      {{"vms[1].mba_delay=95"}, "vms[1].mba_delay"},              // above rdt.mba_max
      {{"platform.rdt.enabled=false"}, "vms[0].cache_ways"},      // no RDT on the platform
      {{"platform.rdt.classes=2"}, "vms[1].cache_ways"},          // class 0 + one VM only
      {{"platform.llc.ways=64"}, "platform.rdt.enabled"},         // masks have at most 32 bits
  };
  for (const Bad& b : bad) {
    std::vector<std::string> args;
    for (const auto& s : b.sets) {
      args.push_back("--set");
      args.push_back(s);
    }
    const CliRun r = run_cli(scenario("s12_isolated.yaml"), args);
    INFO(b.sets[0] << ": " << r.err);
    CHECK(r.exit_code == 2);
    CHECK(r.err.find(b.key) != std::string::npos);
  }
}
