// Fast-forward (docs/model.md, "Fast-forward"): a functional phase, then full
// timing, with the same guest-visible results as a run with full timing
// throughout.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "system/cli_harness.h"

using vmx::test::run_cli;

namespace {

// Random read-modify-write updates over 2 MiB, the table read back at the
// end for a checksum (a result of the program, computed by its own loads).
std::string updates_config(const std::string& extra) {
  return fmt::format(R"(seed: 11
duration: 400ms
{}
platform:
  cores: 1
  memory: 512MiB
vms:
  - name: t
    vcpus: 1
    memory: 64MiB
    workloads:
      - type: random_access
        working_set: 2MiB
        updates: 60000
        checksum: true
)",
                     extra);
}

}  // namespace

TEST_CASE("a fast-forwarded run computes what a run with full timing computes") {
  auto detailed = run_cli(updates_config(""));
  INFO(detailed.err);
  REQUIRE(detailed.exit_code == 0);
  REQUIRE(detailed.at("sim.finished") == 1);
  CHECK_THROWS(detailed.at("sim.fast_forward.switch_seconds"));  // no group without fast_forward

  // Switch in the middle of the updates.
  auto mid = run_cli(updates_config("fast_forward: 1ms"));
  INFO(mid.err);
  REQUIRE(mid.exit_code == 0);
  REQUIRE(mid.at("sim.finished") == 1);
  CHECK(mid.at("vm.t.workload0.checksum") == detailed.at("vm.t.workload0.checksum"));
  // The switch point is recorded; statistics cover the detailed phase only.
  const double at = mid.at("sim.fast_forward.switch_seconds");
  CHECK(at >= 1e-3);
  CHECK(at < 1.1e-3);
  CHECK(mid.at("sim.fast_forward.instructions") > 0);
  CHECK(mid.at("system.cpu0.instructions") < detailed.at("system.cpu0.instructions"));
  CHECK(mid.at("system.cpu0_mem.reads") > 0);

  // Functional from start to end: the same result, and the cache hierarchy
  // never looked at (the run ends before the switch).
  auto all = run_cli(updates_config("fast_forward: 399ms"));
  INFO(all.err);
  REQUIRE(all.exit_code == 0);
  REQUIRE(all.at("sim.finished") == 1);
  CHECK(all.at("vm.t.workload0.checksum") == detailed.at("vm.t.workload0.checksum"));
  CHECK(all.at("sim.fast_forward.switch_seconds") == 0);
  CHECK(all.at("system.cpu0_mem.reads") == 0);
  CHECK(all.at("system.cpu0_mem.writes") == 0);
  CHECK(all.at("vm.t.workload0.operations") == 60000);
  // The vCPU's observer receives the guest's instructions in sums (at exits
  // and synchronizations) while fast-forwarding: none is lost or counted
  // twice, as with full timing, where each operation reports its own.
  CHECK(all.at("vm.t.vcpu0.instructions") == all.at("system.cpu0.guest_instructions"));
  CHECK(detailed.at("vm.t.vcpu0.instructions") == detailed.at("system.cpu0.guest_instructions"));
  // Loads and stores cost only their CPI: the same work takes less
  // simulated time than with full timing.
  CHECK(all.at("sim.seconds") < detailed.at("sim.seconds"));
}

TEST_CASE("fast_forward must end before the run and before warmup") {
  auto late = run_cli(updates_config("fast_forward: 400ms"));
  CHECK(late.exit_code == 2);
  CHECK(late.err.find("fast_forward") != std::string::npos);
  auto warm = run_cli(updates_config("fast_forward: 2ms\nwarmup: 1ms"));
  CHECK(warm.exit_code == 2);
  CHECK(warm.err.find("warmup") != std::string::npos);
}

TEST_CASE("fast-forwarded copy-on-write, unmapping and updates on two vCPUs keep their results") {
  // The functional translation cache must drop what the guest kernel
  // invalidates (fork's write protection, munmap) on both cores.
  const std::string cfg = R"(seed: 3
duration: 400ms
platform: {cores: 2, memory: 512MiB}
vms:
  - name: t
    vcpus: 2
    memory: 64MiB
    workloads:
      - {type: fork_churn, iterations: 40}
      - {type: mmap_churn, iterations: 50}
      - {type: random_access, working_set: 1MiB, updates: 50000, checksum: true}
)";
  auto detailed = run_cli(cfg);
  auto ff = run_cli("fast_forward: 399ms\n" + cfg);
  INFO(detailed.err << ff.err);
  REQUIRE(detailed.exit_code == 0);
  REQUIRE(ff.exit_code == 0);
  REQUIRE(ff.at("sim.finished") == 1);
  CHECK(ff.at("vm.t.workload0.corrupt_pages") == 0);
  CHECK(ff.at("vm.t.workload0.operations") == 40);
  CHECK(ff.at("vm.t.workload1.operations") == 50);
  CHECK(ff.at("vm.t.workload2.checksum") == detailed.at("vm.t.workload2.checksum"));
  CHECK(ff.at("vm.t.vcpu0.instructions") + ff.at("vm.t.vcpu1.instructions") ==
        ff.at("system.cpu0.guest_instructions") + ff.at("system.cpu1.guest_instructions"));
}
