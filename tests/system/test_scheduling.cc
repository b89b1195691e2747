// S14: the proportional-share vCPU scheduler (docs/scheduling.md), through
// the vmxsim program: weights, work conservation and caps on one core.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cmath>
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

TEST_CASE("S14: slices timed by the VMX-preemption timer give the same shares with fewer interrupts") {
  std::vector<Tenant> t = {{"a", 256, 0, kBusy}, {"b", 512, 0, kBusy}, {"c", 1024, 20, kBusy}};
  auto host = run_cli(one_core(t));
  auto pt = run_cli(one_core(t), {"--set", "hypervisor.slice_timer=preemption"});
  INFO(pt.err);
  REQUIRE(host.exit_code == 0);
  REQUIRE(pt.exit_code == 0);
  double a = of_core(pt, "a"), b = of_core(pt, "b"), c = of_core(pt, "c");
  INFO(fmt::format("a {:.4f} b {:.4f} c {:.4f}", a, b, c));
  CHECK(c == Approx(0.20).margin(0.02));
  CHECK(a == Approx(0.80 / 3).epsilon(0.02));
  CHECK(b == Approx(1.60 / 3).epsilon(0.02));
  // Slice ends and cap budgets are preemption-timer exits, not host timer
  // interrupts: external-interrupt exits drop by about their number.
  const double pt_exits = pt.at("system.cpu0.exit_reasons.PREEMPTION_TIMER");
  CHECK(pt_exits > 100);
  CHECK(host.at_or_zero("system.cpu0.exit_reasons.PREEMPTION_TIMER") == 0);
  CHECK(pt.at("system.cpu0.exit_reasons.EXTERNAL_INTERRUPT") <
        host.at("system.cpu0.exit_reasons.EXTERNAL_INTERRUPT") - 0.5 * pt_exits);
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

// ---------------------------------------------------------------------------
// S16: a periodic real-time task next to batch VMs
// (configs/scenarios/s16_realtime_{proportional,realtime}.yaml).

namespace {
vmx::test::CliRun run_scenario(const std::string& file, const std::vector<std::string>& args = {}) {
  auto r = run_cli(vmx::test::read_text(std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/" + file), args);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  return r;
}
constexpr double kDeadlineCycles = 4e-3 * 3e9;  // 4 ms at 3 GHz
}  // namespace

TEST_CASE("S16: under proportional share without pinning the periodic task misses deadlines") {
  auto r = run_scenario("s16_realtime_proportional.yaml");
  const double misses = r.at("vm.rt.workload0.deadline_misses"), jobs = r.at("vm.rt.workload0.operations");
  const double worst = r.at("vm.rt.workload0.wakeup_latency.max");
  INFO(fmt::format("jobs {} misses {} worst wake-up {:.3f} ms", jobs, misses, worst / 3e6));
  CHECK(jobs >= 5);
  CHECK(misses > jobs / 2);
  // A released job waited for the batch vCPU's slice: longer than the deadline.
  CHECK(worst > kDeadlineCycles);
  // The rt vCPU got about its fair third of core 0, not the 42% it needs.
  const double rt_on = r.at("vm.rt.vcpu0.time.guest_cycles") + r.at("vm.rt.vcpu0.time.hypervisor_cycles");
  INFO(fmt::format("rt share of core 0: {:.3f}", rt_on / (r.at("sim.seconds") * 3e9)));
  CHECK(rt_on / (r.at("sim.seconds") * 3e9) < 0.40);
}

TEST_CASE("S16: under the real-time scheduler, pinned to a dedicated core, it never misses") {
  auto r = run_scenario("s16_realtime_realtime.yaml");
  const double misses = r.at("vm.rt.workload0.deadline_misses"), jobs = r.at("vm.rt.workload0.operations");
  const double worst = r.at("vm.rt.workload0.wakeup_latency.max");
  INFO(fmt::format("jobs {} misses {} worst wake-up {:.3f} us", jobs, misses, worst / 3e3));
  CHECK(jobs >= 20);
  CHECK(misses == 0);
  CHECK(worst < kDeadlineCycles);
  CHECK(worst < 100e-6 * 3e9);  // an exit, the host timer and an entry: microseconds
  // The rt vCPU had core 1 to itself: it waited for it only while the
  // hypervisor started up (VMXON, before its first entry), and core 1
  // retired only the rt VM's instructions.
  CHECK(r.at("vm.rt.vcpu0.time.steal_cycles") < 10'000);
  CHECK(r.at("system.cpu1.guest_instructions") == r.at("vm.rt.vcpu0.instructions"));
}

TEST_CASE("S16: the real-time scheduler preempts a lower priority on a shared core at once") {
  // Everything on core 0; the rt vCPU's wake-up (its virtual timer fires on
  // core 0 while a batch vCPU runs) preempts the batch vCPU in the same exit.
  auto r = run_scenario("s16_realtime_realtime.yaml",
                        {"--set", "vms[0].pin=0", "--set", "platform.cores=1", "--set", "duration=300ms"});
  const double worst = r.at("vm.rt.workload0.wakeup_latency.max");
  INFO(fmt::format("worst wake-up {:.3f} us", worst / 3e3));
  CHECK(r.at("vm.rt.workload0.deadline_misses") == 0);
  CHECK(worst < 100e-6 * 3e9);
  // Equal priorities share round robin: the four batch vCPUs got a quarter
  // each of what the rt vCPU left, within a 6 ms slice's worth (18M cycles).
  std::vector<double> b;
  for (const char* n : {"batch1", "batch2", "batch3", "batch4"})
    b.push_back(r.at(std::string("vm.") + n + ".vcpu0.time.guest_cycles"));
  INFO(fmt::format("batch guest cycles {} {} {} {}", b[0], b[1], b[2], b[3]));
  const double total = b[0] + b[1] + b[2] + b[3];
  for (double x : b) CHECK(std::abs(x - total / 4) < 18e6);
  // The rt vCPU took its 42% of the core, the batch vCPUs the rest.
  CHECK(total / (r.at("sim.seconds") * 3e9) == Approx(0.58).margin(0.04));
}

TEST_CASE("S16: a lower priority waits, and priorities and pins are checked") {
  // Priority inverted: batch1 (priority 20) outranks every other VM on one
  // core and starves them, the rt VM included (fixed priority is not fair).
  auto inv = run_scenario("s16_realtime_realtime.yaml",
                          {"--set", "vms[0].pin=0", "--set", "platform.cores=1", "--set", "vms[0].priority=0",
                           "--set", "vms[1].priority=20"});
  CHECK(inv.at_or_zero("vm.rt.workload0.operations") == 0);
  CHECK(inv.at("vm.batch2.vcpu0.time.guest_cycles") == 0);
  // Configuration errors name the path.
  auto bad_pin = run_cli(vmx::test::read_text(std::string(VMXSIM_SOURCE_DIR) +
                                              "/configs/scenarios/s16_realtime_realtime.yaml"),
                         {"--set", "vms[2].pin=0,2"});
  CHECK(bad_pin.exit_code != 0);
  CHECK(bad_pin.err.find("vms[2].pin") != std::string::npos);
  CHECK(bad_pin.err.find("below platform.cores x platform.smt (2)") != std::string::npos);
  auto bad_prio = run_cli(vmx::test::read_text(std::string(VMXSIM_SOURCE_DIR) +
                                               "/configs/scenarios/s16_realtime_proportional.yaml"),
                          {"--set", "vms[0].priority=5"});
  CHECK(bad_prio.exit_code != 0);
  CHECK(bad_prio.err.find("vms[0].priority") != std::string::npos);
}

// ---------------------------------------------------------------------------
// Migration (hypervisor.migration): a waiting vCPU moves to an idle core.

TEST_CASE("migration: a vCPU waiting for its busy core moves to an idle one") {
  // rt and batch are placed on core 0, the idle VM on core 1. Round robin
  // with 6 ms slices: without migration a released job waits for the batch
  // vCPU's slice and misses; with it, the waiting vCPU is pushed to core 1
  // (VMCLEAR on core 0, VMPTRLD and VMLAUNCH on core 1) and both run.
  const std::string cfg = R"(duration: 60ms
stop_when_done: false
platform: {cores: 2, memory: 1GiB}
hypervisor: {timeslice: 6ms}
vms:
  - name: rt
    memory: 64MiB
    workloads:
      - {type: periodic, period: 4ms, deadline: 4ms, work: 100000}
  - name: idle
    memory: 64MiB
    workloads: []
  - name: batch
    memory: 64MiB
    workloads:
      - {type: compute, iterations: 0}
)";
  auto off = run_cli(cfg);
  REQUIRE(off.exit_code == 0);
  CHECK(off.at("hypervisor.totals.migrations") == 0);
  CHECK(off.at("vm.rt.workload0.deadline_misses") > 0);

  auto on = run_cli(cfg, {"--set", "hypervisor.migration=true"});
  INFO(on.err);
  REQUIRE(on.exit_code == 0);
  CHECK(on.out.find("crashed") == std::string::npos);
  const double moved = on.at("hypervisor.totals.migrations");
  CHECK(moved >= 1);
  CHECK(on.at("vm.rt.vcpu0.migrations") + on.at("vm.batch.vcpu0.migrations") + on.at("vm.idle.vcpu0.migrations") ==
        moved);
  CHECK(on.at("vm.rt.workload0.deadline_misses") == 0);
  CHECK(on.at("vm.rt.workload0.wakeup_latency.max") < 100e-6 * 3e9);
  // Both busy vCPUs got (nearly) a core each: core 1 ran guest code.
  CHECK(on.at("vm.batch.vcpu0.time.guest_cycles") > 0.85 * 0.060 * 3e9);
  CHECK(on.at("system.cpu1.guest_instructions") > 0.5 * on.at("system.cpu0.guest_instructions"));
  // Same config, same statistics.
  auto again = run_cli(cfg, {"--set", "hypervisor.migration=true"});
  REQUIRE(again.exit_code == 0);
  CHECK(again.stats_text == on.stats_text);
}

TEST_CASE("migration: pinned vCPUs stay on their cores") {
  const std::string cfg = R"(duration: 30ms
stop_when_done: false
platform: {cores: 2, memory: 1GiB}
hypervisor: {migration: true}
vms:
  - name: a
    memory: 64MiB
    pin: "0"
    workloads:
      - {type: compute, iterations: 0}
  - name: b
    memory: 64MiB
    pin: "0"
    workloads:
      - {type: compute, iterations: 0}
)";
  auto r = run_cli(cfg);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.at("hypervisor.totals.migrations") == 0);
  CHECK(r.at("system.cpu1.guest_instructions") == 0);
  // b unpinned (placed on core 0, the first core of round-robin placement)
  // moves to the idle core.
  auto u = run_cli(cfg, {"--set", "vms[1].pin=\"\""});
  INFO(u.err);
  REQUIRE(u.exit_code == 0);
  CHECK(u.at("hypervisor.totals.migrations") >= 1);
  CHECK(u.at("vm.b.vcpu0.migrations") == u.at("hypervisor.totals.migrations"));
  // It moved before its first entry: every one of its guest instructions
  // retired on core 1, every one of a's on core 0.
  CHECK(u.at("system.cpu1.guest_instructions") == u.at("vm.b.vcpu0.instructions"));
  CHECK(u.at("system.cpu0.guest_instructions") == u.at("vm.a.vcpu0.instructions"));
}

// ---------------------------------------------------------------------------
// EDF over CBS reservations (hypervisor.scheduler: edf).

namespace {
const std::string kEdf = R"(duration: 100ms
stop_when_done: false
platform: {cores: 1, memory: 1GiB}
hypervisor: {scheduler: edf, timeslice: 6ms}
vms:
  - name: rt
    memory: 64MiB
    edf_runtime: 2ms
    edf_period: 4ms
    workloads:
      - {type: periodic, period: 4ms, deadline: 4ms, work: 4500000}
  - name: rogue
    memory: 64MiB
    edf_runtime: 1ms
    edf_period: 4ms
    workloads:
      - {type: compute, iterations: 0}
  - name: batch
    memory: 64MiB
    workloads:
      - {type: compute, iterations: 0}
)";
double core_share(const vmx::test::CliRun& r, const std::string& vm) {
  const std::string p = "vm." + vm + ".vcpu0.time.";
  return (r.at(p + "guest_cycles") + r.at(p + "hypervisor_cycles")) / (r.at("sim.seconds") * 3e9);
}
}  // namespace

TEST_CASE("EDF: reservations isolate a periodic task from a CPU-bound VM and bound it") {
  // rt (1.5 ms of work every 4 ms, 2 ms reserved) meets every deadline
  // although the rogue VM (1 ms reserved every 4 ms) never sleeps: the rogue
  // is throttled at 25% of the core; the VM without a reservation gets the rest.
  auto r = run_cli(kEdf);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const double rogue = core_share(r, "rogue"), rt = core_share(r, "rt"), batch = core_share(r, "batch");
  INFO(fmt::format("shares rt {:.4f} rogue {:.4f} batch {:.4f}; worst response {:.3f} ms", rt, rogue, batch,
                   r.at("vm.rt.workload0.response.max") / 3e6));
  CHECK(r.at("vm.rt.workload0.operations") >= 20);
  CHECK(r.at("vm.rt.workload0.deadline_misses") == 0);
  CHECK(r.at("vm.rt.workload0.response.max") < 4e-3 * 3e9);
  CHECK(rogue == Approx(0.25).margin(0.01));
  CHECK(rt + rogue + batch == Approx(1.0).margin(0.02));
  CHECK(batch > 0.30);
  // Fixed priority cannot bound the rogue: given the higher priority, it
  // takes the core and the periodic task never runs.
  auto fp = run_cli(kEdf, {"--set", "hypervisor.scheduler=realtime", "--set", "vms[0].edf_runtime=0s", "--set",
                           "vms[0].edf_period=0s", "--set", "vms[1].edf_runtime=0s", "--set",
                           "vms[1].edf_period=0s", "--set", "vms[0].priority=10", "--set", "vms[1].priority=20"});
  INFO(fp.err);
  REQUIRE(fp.exit_code == 0);
  CHECK(fp.at_or_zero("vm.rt.workload0.operations") == 0);
  CHECK(core_share(fp, "rogue") > 0.95);
}

TEST_CASE("EDF: reservations are checked") {
  auto other = run_cli(kEdf, {"--set", "hypervisor.scheduler=round_robin"});
  CHECK(other.exit_code != 0);
  CHECK(other.err.find("vms[0].edf_runtime") != std::string::npos);
  auto big = run_cli(kEdf, {"--set", "vms[1].edf_runtime=5ms"});
  CHECK(big.exit_code != 0);
  CHECK(big.err.find("vms[1].edf_runtime: expected at most edf_period (4ms)") != std::string::npos);
  auto half = run_cli(kEdf, {"--set", "vms[1].edf_period=0s"});
  CHECK(half.exit_code != 0);
  CHECK(half.err.find("vms[1].edf_period") != std::string::npos);
}
