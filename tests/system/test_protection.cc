// Scenario S10 end to end (docs/protection.md): a guest kernel with and
// without SMEP/SMAP meets a program that probes them, and aliases of one
// page with different permissions; the outcome is read from the program's
// and the kernel's statistics.
#include <catch2/catch.hpp>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;

namespace {

std::string scenario(const std::string& name) {
  return read_text(std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/" + name);
}

void check_s10(const vmx::test::CliRun& r) {
  constexpr double kRounds = 8;
  for (const char* vm : {"plain", "hardened"}) {
    const std::string w = std::string("vm.") + vm + ".workload0.";
    INFO(vm);
    CHECK(r.at(w + "threads_done") == 1);
    CHECK(r.at(w + "failed_forks") == 0);
    CHECK(r.at(w + "uaccess_ok") == kRounds);      // STAC/CLAC let the kernel's accessor through
    CHECK(r.at(w + "alias_coherent") == kRounds);  // one frame behind both aliases
    for (const char* probe : {"kernel_read", "kernel_exec", "alias_write", "alias_exec"})
      CHECK(r.at(w + probe + "_attempts") == kRounds);
    // W^X holds with or without SMEP/SMAP: the page tables stop both.
    CHECK(r.at(w + "alias_write_survived") == 0);
    CHECK(r.at(w + "alias_exec_survived") == 0);
  }
  // Without SMEP/SMAP the buggy kernel paths run; with them every one oopses.
  CHECK(r.at("vm.plain.workload0.kernel_read_survived") == kRounds);
  CHECK(r.at("vm.plain.workload0.kernel_exec_survived") == kRounds);
  CHECK(r.at("vm.hardened.workload0.kernel_read_survived") == 0);
  CHECK(r.at("vm.hardened.workload0.kernel_exec_survived") == 0);
  CHECK(r.at("vm.hardened.kernel.protection.smap_oopses") == kRounds);
  CHECK(r.at("vm.hardened.kernel.protection.smep_oopses") == kRounds);
  CHECK(r.at("vm.hardened.kernel.protection.uaccesses") == kRounds);
  CHECK(r.at_or_zero("vm.plain.kernel.protection.smap_oopses") == 0);  // not even registered
  // The same program faults the same way but for the 2 oopses a round.
  CHECK(r.at("vm.hardened.kernel.page_faults") - r.at("vm.plain.kernel.page_faults") == 2 * kRounds);
}

}  // namespace

TEST_CASE("S10: SMEP and SMAP stop the buggy kernel paths, W^X aliases fault either way (EPT)") {
  auto r = run_cli(scenario("s10_smep_smap.yaml"));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  check_s10(r);
}

TEST_CASE("S10 under shadow paging: the hypervisor's software walk honours SMEP, SMAP and RFLAGS.AC") {
  auto r = run_cli(scenario("s10_smep_smap.yaml"), {"--set", "vms[0].paging=shadow", "--set", "vms[1].paging=shadow"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  check_s10(r);
}
