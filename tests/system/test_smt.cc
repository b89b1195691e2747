// SMT (platform.smt, platform.smt_contention): two hardware threads of one
// physical core share its private caches and slow each other down by the
// contention factor while both execute.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <string>

#include "system/cli_harness.h"

using vmx::test::run_cli;

namespace {

// One physical core with two threads; VM a pinned to thread 0, b to thread 1.
std::string siblings(const std::string& b_workloads, const std::string& contention = "1.6") {
  return fmt::format(R"(duration: 20ms
stop_when_done: false
platform: {{cores: 1, smt: 2, smt_contention: {}, memory: 1GiB}}
vms:
  - name: a
    memory: 64MiB
    pin: "0"
    workloads:
      - {{type: compute, iterations: 0}}
  - name: b
    memory: 64MiB
    pin: "1"
    workloads: {}
)",
                     contention, b_workloads);
}

double guest_ipc(const vmx::test::CliRun& r, const std::string& vm) {
  return r.at("vm." + vm + ".vcpu0.instructions") / r.at("vm." + vm + ".vcpu0.guest_cycles");
}

}  // namespace

TEST_CASE("SMT: two busy siblings each retire fewer instructions per cycle than one alone, by the factor") {
  const std::string factor = GENERATE(std::string("1.6"), std::string("1.25"));
  auto both = run_cli(siblings("[{type: compute, iterations: 0}]", factor));
  auto alone = run_cli(siblings("[]", factor));
  INFO(both.err << alone.err);
  REQUIRE(both.exit_code == 0);
  REQUIRE(alone.exit_code == 0);
  const double ipc_alone = guest_ipc(alone, "a"), ipc_a = guest_ipc(both, "a"), ipc_b = guest_ipc(both, "b");
  INFO(fmt::format("factor {}: IPC alone {:.4f}, together {:.4f} and {:.4f}", factor, ipc_alone, ipc_a, ipc_b));
  CHECK(ipc_alone / ipc_a == Approx(std::stod(factor)).epsilon(0.02));
  CHECK(ipc_alone / ipc_b == Approx(std::stod(factor)).epsilon(0.02));
  // Per-core statistics: both threads ran shared nearly all the time; with
  // the sibling idle (halted), thread 0 ran shared only while b's VM booted.
  const double cycles = 0.020 * 3e9;
  CHECK(both.at("system.cpu0.smt_shared_cycles") > 0.95 * cycles);
  CHECK(both.at("system.cpu1.smt_shared_cycles") > 0.95 * cycles);
  CHECK(alone.at("system.cpu0.smt_shared_cycles") < 0.2 * cycles);
  CHECK(both.at("system.cpu0.smt_shared_instructions") > 0.95 * both.at("system.cpu0.instructions"));
}

TEST_CASE("SMT: siblings share one set of private caches, and without SMT nothing changes") {
  auto smt = run_cli(siblings("[]"));
  REQUIRE(smt.exit_code == 0);
  // One hierarchy for the physical core, used by both threads.
  CHECK(smt.at("system.core0_mem.reads") > 0);
  CHECK_THROWS(smt.at("system.cpu0_mem.reads"));
  CHECK_THROWS(smt.at("system.cpu1_mem.reads"));
  // smt: 1 keeps per-core hierarchies named after the core and never
  // counts shared cycles.
  auto one = run_cli("duration: 5ms\nplatform: {cores: 2, memory: 512MiB}\nvms:\n  - name: a\n    memory: 64MiB\n");
  REQUIRE(one.exit_code == 0);
  CHECK(one.at("system.cpu1_mem.reads") >= 0);
  CHECK(one.at("system.cpu0.smt_shared_cycles") == 0);
  // A pin beyond the logical CPUs is an error naming the path.
  auto bad = run_cli(siblings("[]"), {"--set", "vms[1].pin=2"});
  CHECK(bad.exit_code != 0);
  CHECK(bad.err.find("vms[1].pin") != std::string::npos);
}
