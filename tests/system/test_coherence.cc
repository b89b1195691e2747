// End to end: the hypervisor's lock word moves between the cores that
// contend on it, and pays for it (models/coherence.h).
#include <catch2/catch.hpp>

#include "system/cli_harness.h"

using vmx::test::run_cli;

namespace {
std::string quickstart() {
  return vmx::test::read_text(std::string(VMXSIM_SOURCE_DIR) + "/configs/quickstart.yaml");
}
}  // namespace

TEST_CASE("two cores faulting in memory at once move the lock's line between them") {
  // Both vCPUs of the quickstart take the hypervisor's MMU lock on their EPT
  // violations: one core's store to the lock word invalidates the other
  // core's copy, and that core's next load of it is a cross-core transfer.
  auto r = run_cli(quickstart());
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const double sent0 = r.at("system.cpu0_mem.coherence.invalidations_sent");
  const double sent1 = r.at("system.cpu1_mem.coherence.invalidations_sent");
  const double transfers0 = r.at("system.cpu0_mem.coherence.transfers");
  const double transfers1 = r.at("system.cpu1_mem.coherence.transfers");
  CHECK(sent0 > 0);
  CHECK(transfers1 > 0);
  // A core only receives what the other sent, and only takes a line back
  // from the other core after losing its copy or never having had one.
  CHECK(r.at("system.cpu1_mem.coherence.invalidations_received") == sent0);
  CHECK(r.at("system.cpu0_mem.coherence.invalidations_received") == sent1);
  // Each transfer costs transfer_latency (75 cycles) and each snoop hit
  // snoop_latency (65); an upgrade 65, or 42 (the LLC) when nobody shares
  // the line any more; a store that misses and invalidates clean copies 65,
  // and there are at most as many of those as invalidations sent.
  for (const char* core : {"system.cpu0_mem.coherence.", "system.cpu1_mem.coherence."}) {
    auto s = [&](const char* name) { return r.at(std::string(core) + name); };
    const double fixed = 75 * s("transfers") + 65 * s("snoop_hits");
    CHECK(s("cycles") >= fixed + 42 * s("upgrades"));
    CHECK(s("cycles") <= fixed + 65 * s("upgrades") + 65 * s("invalidations_sent"));
  }
  CHECK(transfers0 + transfers1 > 0);
  CHECK(r.at("sim.finished") == 1);
}

TEST_CASE("with coherence off the caches keep no coherence statistics") {
  auto r = run_cli(quickstart(), {"--set", "platform.caches.coherence.enabled=false"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_THROWS(r.at("system.cpu0_mem.coherence.transfers"));
  CHECK_THROWS(r.at("system.coherence.dma_invalidations"));
  CHECK(r.at("sim.finished") == 1);
}
