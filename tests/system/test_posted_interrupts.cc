// End-to-end: the hypervisor's posted_interrupts switch. Two processes on
// two vCPUs (on two cores) unmap memory in a loop; each munmap shoots down
// the other vCPU's TLB with an IPI (a WRMSR to the x2APIC ICR, which exits).
// With event injection the receiving vCPU takes an external-interrupt exit
// (the hypervisor's reschedule IPI), gets the interrupt injected at entry
// and exits again on its EOI; with posted interrupts the IPI is posted into
// its descriptor and the notification reaches it without an exit, and its
// EOI is virtualized.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "system/cli_harness.h"

using vmx::test::run_cli;

namespace {

const char* kConfig = R"(seed: 7
duration: 50ms
platform:
  cores: 2
  memory: 512MiB
vms:
  - name: t
    vcpus: 2
    memory: 32MiB
    workloads:
      - type: mmap_churn
        region: 16KiB
        iterations: 2000
      - type: mmap_churn
        region: 16KiB
        iterations: 2000
)";

}  // namespace

TEST_CASE("posted interrupts remove the receiver's exits for inter-vCPU IPIs, same work done", "[posted][e2e]") {
  auto off = run_cli(kConfig, {"--set", "hypervisor.posted_interrupts=false"});
  auto on = run_cli(kConfig, {"--set", "hypervisor.posted_interrupts=true"});
  REQUIRE(off.exit_code == 0);
  REQUIRE(on.exit_code == 0);
  // Same work: both programs finish all their rounds either way.
  for (const char* w : {"workload0", "workload1"}) {
    CHECK(off.at(fmt::format("vm.t.{}.operations", w)) == 2000);
    CHECK(on.at(fmt::format("vm.t.{}.operations", w)) == 2000);
  }
  CHECK(off.at("sim.finished") == 1);
  CHECK(on.at("sim.finished") == 1);

  double exits_off = 0, exits_on = 0;
  for (int i = 0; i < 2; ++i) {
    const std::string v = fmt::format("vm.t.vcpu{}", i);
    exits_off += off.at(v + ".exits");
    exits_on += on.at(v + ".exits");
    double ext_off = off.at_or_zero(v + ".exit_reasons.EXTERNAL_INTERRUPT.cycles.count");
    double ext_on = on.at_or_zero(v + ".exit_reasons.EXTERNAL_INTERRUPT.cycles.count");
    double wrmsr_off = off.at(v + ".exit_reasons.MSR_WRITE.cycles.count");
    double wrmsr_on = on.at(v + ".exit_reasons.MSR_WRITE.cycles.count");
    INFO(v << ": external-interrupt exits " << ext_off << " -> " << ext_on << ", WRMSR exits " << wrmsr_off
           << " -> " << wrmsr_on);
    // Hundreds of IPIs arrive while the vCPU runs: each an exit without
    // posting, (almost) none with it (the host's own timer may still exit).
    CHECK(ext_off > 300);
    CHECK(ext_on <= 5);
    // The EOI exits are gone; what remains are the ICR writes (one per munmap).
    CHECK(wrmsr_off > 2300);
    CHECK(wrmsr_on <= 2010);
  }
  CHECK(exits_on < 0.7 * exits_off);
  // The mechanism: no injections with posting; posted, notified, delivered
  // and EOI-virtualized interrupts without it none.
  CHECK(off.at("hypervisor.totals.injections") > 600);
  CHECK(off.at("hypervisor.totals.posted") == 0);
  CHECK(off.at("system.cpu0.virtual_interrupts") == 0);
  CHECK(on.at("hypervisor.totals.injections") == 0);
  CHECK(on.at("hypervisor.totals.posted") >= 4000);
  CHECK(on.at("hypervisor.totals.notifications") > 600);
  for (int i = 0; i < 2; ++i) {
    const std::string c = fmt::format("system.cpu{}", i);
    CHECK(on.at(c + ".posted_notifications") > 300);
    // Most notifications deliver an interrupt; one sent while the target
    // vCPU is in root operation arrives after VM entry already moved its
    // vector from the descriptor and finds the PIR empty (SDM Vol. 3C,
    // 30.6). How many do depends on the phase of the two cores' loops, not
    // on a rule: posts and notifications interleave at quantum grain, and
    // the hypervisor's RDTSCs and the coherent caches' line transfers of the
    // shootdown loops shift where they fall (over 99% without coherence; 70
    // to 80% with it: 74% and 78% on the two cores at this writing).
    CHECK(on.at(c + ".virtual_interrupts") >= 0.7 * on.at(c + ".posted_notifications"));
    CHECK(on.at(c + ".virtual_eois") == on.at(c + ".virtual_interrupts"));
  }
}

TEST_CASE("a posted virtual timer interrupt saves its EOI exit and wakes the sleeper sooner", "[posted][e2e]") {
  const char* cfg = R"(seed: 3
duration: 40ms
platform:
  cores: 1
  memory: 512MiB
vms:
  - name: t
    vcpus: 1
    memory: 32MiB
    workloads:
      - type: sleep_loop
)";
  auto off = run_cli(cfg, {"--set", "hypervisor.posted_interrupts=false"});
  auto on = run_cli(cfg, {"--set", "hypervisor.posted_interrupts=true"});
  REQUIRE(off.exit_code == 0);
  REQUIRE(on.exit_code == 0);
  CHECK(off.at("vm.t.workload0.operations") == 10);
  CHECK(on.at("vm.t.workload0.operations") == 10);
  const double injected = off.at("hypervisor.totals.injections");
  CHECK(injected >= 10);  // one timer interrupt per sleep at least
  CHECK(on.at("hypervisor.totals.injections") == 0);
  CHECK(on.at("hypervisor.totals.posted") == injected);
  // Each injected interrupt cost one WRMSR exit for its EOI; posted, none.
  CHECK(off.at("vm.t.vcpu0.exit_reasons.MSR_WRITE.cycles.count") ==
        on.at("vm.t.vcpu0.exit_reasons.MSR_WRITE.cycles.count") + injected);
  CHECK(on.at("system.cpu0.virtual_eois") == injected);
  // The interrupt is processed right after entry instead of being injected
  // by the hypervisor's software: the sleeper wakes sooner.
  CHECK(on.at("vm.t.workload0.wakeup_latency.mean") < off.at("vm.t.workload0.wakeup_latency.mean"));
}

TEST_CASE("A vCPU whose cap budget is shorter than an exit, with posted interrupts, runs without nesting exits",
          "[posted][scheduling][system]") {
  // Every entry finds the cap timer's interrupt pending: the exit it causes
  // is taken at the next boundary, not from inside the previous exit.
  const std::string yaml = R"(duration: 5ms
hypervisor: {scheduler: proportional, cap_period: 1us, posted_interrupts: true}
vms:
  - cap: 1
    workloads:
      - {type: compute, iterations: 0}
)";
  auto r = vmx::test::run_cli(yaml);
  REQUIRE(r.exit_code == 0);
  CHECK(r.at("vm.vm.vcpu0.exit_reasons.EXTERNAL_INTERRUPT.cycles.count") > 100);
  const double guest = r.at("vm.vm.vcpu0.time.guest_cycles"), steal = r.at("vm.vm.vcpu0.time.steal_cycles"),
               hv = r.at("vm.vm.vcpu0.time.hypervisor_cycles"), idle = r.at("vm.vm.vcpu0.time.idle_cycles");
  CHECK(guest / (guest + steal + hv + idle) < 0.03);
}
