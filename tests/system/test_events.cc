// Events and listeners in a whole run (sim/events.h, docs/model.md): the
// hypervisor's exit total, each vCPU's exits and each core's exits are one
// count reported by the cores, and attaching listeners (the event trace
// attaches one to every core) moves no statistic.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <string>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;

namespace {

std::string config(const std::string& extra) {
  return fmt::format(R"(seed: 5
duration: 20ms
platform:
  cores: 2
  memory: 512MiB
{}
vms:
  - name: a
    vcpus: 2
    memory: 32MiB
    workloads:
      - type: cpuid_loop
        iterations: 300
        threads: 2
  - name: b
    memory: 32MiB
    workloads:
      - type: cpuid_loop
        iterations: 500
)",
                     extra);
}

}  // namespace

TEST_CASE("Events: the hypervisor's exit total is the sum of the vCPUs' exits and of the cores' exits",
          "[events][system]") {
  auto r = run_cli(config(""));
  REQUIRE(r.exit_code == 0);
  const double vcpus = r.at("vm.a.vcpu0.exits") + r.at("vm.a.vcpu1.exits") + r.at("vm.b.vcpu0.exits");
  const double cores = r.at("system.cpu0.vm_exits") + r.at("system.cpu1.vm_exits");
  CHECK(vcpus >= 1100);  // the CPUID loops alone
  CHECK(r.at("hypervisor.totals.exits") == vcpus);
  CHECK(cores == vcpus);
  CHECK(r.at("vm.a.vcpu0.entries") + r.at("vm.a.vcpu1.entries") + r.at("vm.b.vcpu0.entries") ==
        r.at("system.cpu0.vm_entries") + r.at("system.cpu1.vm_entries"));
}

TEST_CASE("Events: listeners on every core (the event trace) change no statistic", "[events][system][trace]") {
  auto off = run_cli(config(""));
  auto on = run_cli(config("event_trace: {enabled: true, categories: \"exits,sched,irq,walks\"}"));
  REQUIRE(off.exit_code == 0);
  REQUIRE(on.exit_code == 0);
  CHECK_FALSE(read_text(on.out_dir + "/events.json").empty());
  CHECK(on.stats_text == off.stats_text);
}
