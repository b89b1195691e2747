// S14: the proportional-share vCPU scheduler (docs/scheduling.md), through
// the vmxsim program: weights, work conservation and caps on one core.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <string>
#include <vector>

#include "system/cli_harness.h"

using vmx::test::run_cli;

namespace {

struct Tenant {
  std::string name;
  unsigned weight;
  unsigned cap;
  std::string workload;  // a workloads list item, or "" for none
};

const std::string kBusy = "      - type: compute\n        iterations: 0\n";
const std::string kIdle = "      - type: sleep_loop\n        interval: 1s\n        iterations: 0\n";

// Tenants with one vCPU each, all on one core, for 200 ms after a 20 ms warm-up.
std::string one_core(const std::vector<Tenant>& tenants, const std::string& scheduler = "proportional") {
  std::string vms;
  for (const auto& t : tenants)
    vms += fmt::format("  - name: {}\n    weight: {}\n    cap: {}\n    memory: 64MiB\n    workloads:{}\n{}", t.name,
                       t.weight, t.cap, t.workload.empty() ? " []" : "", t.workload);
  return fmt::format(R"(seed: 3
duration: 220ms
warmup: 20ms
stop_when_done: false
platform:
  cores: 1
  memory: 1GiB
hypervisor:
  scheduler: {}
  timeslice: 1ms
vms:
{})",
                     scheduler, vms);
}

// Each tenant's share of the core's time spent on behalf of all tenants:
// guest plus hypervisor cycles of its vCPU.
std::vector<double> shares(const vmx::test::CliRun& r, const std::vector<Tenant>& tenants) {
  std::vector<double> on;
  double total = 0;
  for (const auto& t : tenants) {
    std::string p = "vm." + t.name + ".vcpu0.time.";
    on.push_back(r.at(p + "guest_cycles") + r.at(p + "hypervisor_cycles"));
    total += on.back();
  }
  for (double& s : on) s /= total;
  return on;
}

// Share of the whole window (cycles at 3 GHz over the 200 ms after warm-up).
double of_core(const vmx::test::CliRun& r, const std::string& name) {
  std::string p = "vm." + name + ".vcpu0.time.";
  return (r.at(p + "guest_cycles") + r.at(p + "hypervisor_cycles")) / (r.at("sim.seconds") - 0.020) / 3e9;
}

}  // namespace

TEST_CASE("S14: weights 1:2:4 share one core 1/7, 2/7, 4/7") {
  std::vector<Tenant> t = {{"a", 256, 0, kBusy}, {"b", 512, 0, kBusy}, {"c", 1024, 0, kBusy}};
  auto r = run_cli(one_core(t));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  auto s = shares(r, t);
  INFO(fmt::format("shares {:.4f} {:.4f} {:.4f}", s[0], s[1], s[2]));
  CHECK(s[0] == Approx(1.0 / 7).epsilon(0.02));
  CHECK(s[1] == Approx(2.0 / 7).epsilon(0.02));
  CHECK(s[2] == Approx(4.0 / 7).epsilon(0.02));
  // The core was busy throughout: the tenants got all of it.
  CHECK(of_core(r, "a") + of_core(r, "b") + of_core(r, "c") == Approx(1.0).epsilon(0.02));
}

TEST_CASE("S14: round robin ignores weights") {
  std::vector<Tenant> t = {{"a", 256, 0, kBusy}, {"b", 512, 0, kBusy}, {"c", 1024, 0, kBusy}};
  auto r = run_cli(one_core(t, "round_robin"));
  REQUIRE(r.exit_code != 0);  // weights other than the default need the proportional scheduler
  CHECK(r.err.find("vms[1].weight") != std::string::npos);
  CHECK(r.err.find("expected") != std::string::npos);
  std::vector<Tenant> same = {{"a", 256, 0, kBusy}, {"b", 256, 0, kBusy}, {"c", 256, 0, kBusy}};
  auto rr = run_cli(one_core(same, "round_robin"));
  INFO(rr.err);
  REQUIRE(rr.exit_code == 0);
  for (double x : shares(rr, same)) CHECK(x == Approx(1.0 / 3).epsilon(0.02));
}

TEST_CASE("S14: an idle tenant's share goes to the others in their ratio (work-conserving)") {
  for (const std::string& idle : {kIdle, std::string()}) {
    std::vector<Tenant> t = {{"a", 256, 0, kBusy}, {"b", 512, 0, idle}, {"c", 1024, 0, kBusy}};
    auto r = run_cli(one_core(t));
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    double a = of_core(r, "a"), b = of_core(r, "b"), c = of_core(r, "c");
    INFO(fmt::format("idle tenant {}: a {:.4f} b {:.4f} c {:.4f}", idle.empty() ? "without workload" : "sleeping",
                     a, b, c));
    CHECK(b < 0.005);
    CHECK(a == Approx(1.0 / 5).epsilon(0.02));
    CHECK(c == Approx(4.0 / 5).epsilon(0.02));
  }
}

TEST_CASE("S14: a tenant capped at 20% stays there, the others absorb the rest in their ratio") {
  std::vector<Tenant> t = {{"a", 256, 0, kBusy}, {"b", 512, 0, kBusy}, {"c", 1024, 20, kBusy}};
  auto r = run_cli(one_core(t));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  double a = of_core(r, "a"), b = of_core(r, "b"), c = of_core(r, "c");
  INFO(fmt::format("a {:.4f} b {:.4f} c {:.4f}", a, b, c));
  CHECK(c == Approx(0.20).margin(0.02));
  CHECK(a == Approx(0.80 / 3).epsilon(0.02));
  CHECK(b == Approx(1.60 / 3).epsilon(0.02));
}

TEST_CASE("S14: a core whose only vCPU is throttled halts until the cap period ends") {
  std::vector<Tenant> t = {{"a", 256, 20, kBusy}};
  auto r = run_cli(one_core(t));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  double a = of_core(r, "a");
  INFO(fmt::format("a {:.4f}", a));
  CHECK(a == Approx(0.20).margin(0.02));
  // It halted once per 10 ms period, and was not charged steal for it.
  CHECK(r.at("hypervisor.totals.idle_halts") >= 19);
  CHECK(r.at("vm.a.vcpu0.time.steal_cycles") / 3e9 / 0.2 > 0.75);
}
