// S18: what a VM's performance counters mean under each virtual PMU
// (configs/scenarios/s18_*.yaml, docs/pmu.md). The guest's profile workload
// counts its own work with the guest kernel's perf facility; the assertions
// compare what it counted with the simulator's ground truth for the VM
// (vm.<vm>.vcpu0.instructions and guest_cycles: everything the vCPU did in
// VMX non-root operation) and with the work it issued itself.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <string>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;

namespace {

const std::string kScenarios = std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/";

vmx::test::CliRun scenario(const std::string& name, const std::vector<std::string>& args = {}) {
  auto r = run_cli(read_text(kScenarios + name + ".yaml"), args);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  return r;
}

struct Counts {
  double counted, cycles, issued, vm_instructions, vm_cycles, events;
};
Counts counts(const vmx::test::CliRun& r) {
  return {r.at("vm.prof.workload0.counted_instructions"), r.at("vm.prof.workload0.counted_cycles"),
          r.at("vm.prof.workload0.issued_instructions"), r.at("vm.prof.vcpu0.instructions"),
          r.at("vm.prof.vcpu0.guest_cycles"), r.at("vm.prof.workload0.counted_events")};
}

double exits(const vmx::test::CliRun& r, const std::string& reason) {
  return r.at_or_zero("vm.prof.vcpu0.exit_reasons." + reason + ".cycles.count");
}

}  // namespace

TEST_CASE("S18: naive pass-through counts the hypervisor and the other VM while mediated and emulated count the guest",
          "[pmu][s18]") {
  auto naive = scenario("s18_passthrough");
  auto mediated = scenario("s18_mediated");
  auto emulated = scenario("s18_emulated");
  const Counts n = counts(naive), m = counts(mediated), e = counts(emulated);
  INFO(fmt::format("naive {} / {} issued / {} VM; mediated {} / {} / {}; emulated {} / {} / {}", n.counted, n.issued,
                   n.vm_instructions, m.counted, m.issued, m.vm_instructions, e.counted, e.issued,
                   e.vm_instructions));
  CHECK(naive.at("vm.prof.workload0.pmu_available") == 1);
  // Naive: more instructions than the VM retired in its whole life, and
  // more cycles than it spent in the guest: the count includes "noise" and
  // the hypervisor.
  CHECK(n.counted > n.vm_instructions);
  CHECK(n.counted > 1.5 * n.issued);
  CHECK(n.cycles > n.vm_cycles);
  // Mediated and emulated: the guest's own work (its program plus the guest
  // kernel's ticks and system calls inside the window), within the VM's
  // ground truth.
  for (const Counts& g : {m, e}) {
    CHECK(g.counted >= g.issued);
    CHECK(g.counted < 1.02 * g.issued);
    CHECK(g.counted < g.vm_instructions);
    CHECK(g.cycles < g.vm_cycles);
    CHECK(g.events > 0);  // LLC misses of the 4 MiB passes
  }
  // Same work, same count either way: the modes differ in exits only.
  CHECK(m.counted == Approx(e.counted).epsilon(0.001));
  // Emulated: every counter access exits (6 RDPMC around the work and one
  // per round, the programming WRMSRs); mediated: RDPMC and counter writes
  // pass through.
  CHECK(exits(emulated, "RDPMC") == 6 + 20);
  CHECK(exits(mediated, "RDPMC") == 0);
  CHECK(exits(emulated, "MSR_WRITE") > exits(mediated, "MSR_WRITE"));
  CHECK(exits(naive, "MSR_WRITE") < exits(mediated, "MSR_WRITE"));  // nothing of the PMU exits
}

TEST_CASE("S18: without a vPMU the guest finds no PMU and counts nothing", "[pmu][s18]") {
  auto none = scenario("s18_mediated", {"--set", "vms[0].pmu=none"});
  CHECK(none.at("vm.prof.workload0.pmu_available") == 0);
  CHECK(none.at("vm.prof.workload0.counted_instructions") == 0);
  auto bad = run_cli(read_text(kScenarios + "s18_mediated.yaml"), {"--set", "vms[0].pmu=virtual"});
  CHECK(bad.exit_code != 0);
  CHECK(bad.err.find("vms[0].pmu") != std::string::npos);
}

TEST_CASE("S18: an SMT sibling's load inflates the cycles per instruction the guest measures", "[pmu][s18][smt]") {
  auto busy = scenario("s18_smt");
  auto quiet = scenario("s18_smt", {"--set", "vms[1].workloads[0].type=sleep_loop"});
  const double cpi_busy = busy.at("vm.prof.workload0.counted_cycles") / busy.at("vm.prof.workload0.counted_instructions");
  const double cpi_quiet =
      quiet.at("vm.prof.workload0.counted_cycles") / quiet.at("vm.prof.workload0.counted_instructions");
  INFO(fmt::format("CPI busy sibling {:.3f}, quiet sibling {:.3f}", cpi_busy, cpi_quiet));
  CHECK(cpi_busy > 1.3 * cpi_quiet);
}

TEST_CASE("S18: sampling inside a VM attributes most samples to the phase that takes the time", "[pmu][s18][sampling]") {
  auto r = scenario("s18_sampling");
  const double s0 = r.at("vm.prof.workload0.phase0_samples"), s1 = r.at("vm.prof.workload0.phase1_samples");
  const double t0 = r.at("vm.prof.workload0.phase0_cycles"), t1 = r.at("vm.prof.workload0.phase1_cycles");
  INFO(fmt::format("samples {} / {}, cycles {} / {}", s0, s1, t0, t1));
  REQUIRE(s0 + s1 > 100);
  // The loads take most of the time and get most of the samples, in
  // proportion to the time (each sample stands for 100000 cycles).
  CHECK(t1 > t0);
  CHECK(s1 > s0);
  CHECK(s1 / (s0 + s1) == Approx(t1 / (t0 + t1)).margin(0.05));
  CHECK(r.at("vm.prof.vpmu.pmis") == Approx(s0 + s1).margin(2));
}

TEST_CASE("S18: the emulated vPMU injects the host counter's overflows as virtual PMIs", "[pmu][s18][sampling]") {
  auto r = scenario("s18_sampling", {"--set", "vms[0].pmu=emulated"});
  const double s0 = r.at("vm.prof.workload0.phase0_samples"), s1 = r.at("vm.prof.workload0.phase1_samples");
  const double t0 = r.at("vm.prof.workload0.phase0_cycles"), t1 = r.at("vm.prof.workload0.phase1_cycles");
  INFO(fmt::format("samples {} / {}, cycles {} / {}", s0, s1, t0, t1));
  REQUIRE(s0 + s1 > 100);
  CHECK(r.at("vm.prof.vpmu.pmis") == Approx(s0 + s1).margin(2));
  CHECK(s1 / (s0 + s1) == Approx(t1 / (t0 + t1)).margin(0.05));
  // Each sample's preset of PMC0 is a WRMSR the emulated vPMU intercepts.
  CHECK(exits(r, "MSR_WRITE") >= s0 + s1);
}

TEST_CASE("S18: a vCPU migrated to another core shows a burst of cache misses right after", "[pmu][s18][migration]") {
  auto moved = scenario("s18_migration");
  auto stayed = scenario("s18_migration", {"--set", "hypervisor.migration=false"});
  REQUIRE(moved.at("vm.prof.vcpu0.migrations") >= 1);
  REQUIRE(stayed.at_or_zero("vm.prof.vcpu0.migrations") == 0);
  // L2 misses after the first (cold) round: a 512 KiB working set stays in
  // the core's L2, unless the vCPU moves to a core whose L2 never saw it.
  const double lines = 512.0 * 1024 / 64;
  const double moved_later = moved.at("vm.prof.workload0.counted_events") -
                             moved.at("vm.prof.workload0.first_round_events");
  const double stayed_later = stayed.at("vm.prof.workload0.counted_events") -
                              stayed.at("vm.prof.workload0.first_round_events");
  INFO(fmt::format("L2 misses after round 1: moved {}, stayed {}; first round {}", moved_later, stayed_later,
                   moved.at("vm.prof.workload0.first_round_events")));
  CHECK(moved.at("vm.prof.workload0.first_round_events") >= lines);
  CHECK(stayed_later < 0.2 * lines);
  CHECK(moved_later >= 0.9 * lines * moved.at("vm.prof.vcpu0.migrations"));
  // The burst is one round's worth: the round after the move.
  CHECK(moved.at("vm.prof.workload0.max_round_events") >= 0.9 * lines);
  // ... and only that round: the misses after the first round sit in one
  // round per migration (the first the vCPU runs on its new core, after
  // the pause in which it moved), while at least 90% of the rounds miss
  // (almost) nothing, the working set staying in the L2 before and after.
  CHECK(moved_later <= moved.at("vm.prof.workload0.max_round_events") * moved.at("vm.prof.vcpu0.migrations") +
                           0.02 * lines);
  CHECK(moved.at("vm.prof.workload0.round_events.p90") < 0.02 * lines);
}

TEST_CASE("the mediated vPMU's event filter keeps EPT.WALK_PENDING from counting while naive pass-through counts it",
          "[pmu][vpmu][filter]") {
  const std::vector<std::string> ept_walks = {"--set", "vms[0].workloads[0].event=0x104F", "--set",
                                              "vms[0].workloads[0].rounds=2"};
  auto mediated = scenario("s18_mediated", ept_walks);
  auto naive = scenario("s18_passthrough", ept_walks);
  // The guest's 2D walks take EPT-dimension references: the host's
  // translation, which the filter hides (its event select is kept for the
  // guest but programmed without EN).
  REQUIRE(mediated.at("vm.prof.vcpu0.walks") > 1000);
  CHECK(mediated.at("vm.prof.vpmu.filtered") == 1);
  CHECK(mediated.at("vm.prof.workload0.counted_events") == 0);
  CHECK(naive.at("vm.prof.workload0.counted_events") > 0);
}
