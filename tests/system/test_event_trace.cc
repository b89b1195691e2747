// The event trace (docs/event_trace.md): events.json agrees with the
// statistics of the same run, honours its window and cap, costs nothing
// when off, and is the same for the same config and seed.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <map>
#include <set>
#include <string>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;

namespace {

std::string two_vms(const std::string& trace, const std::string& workload) {
  return fmt::format(R"(seed: 3
duration: 30ms
platform:
  cores: 1
  memory: 512MiB
{}
vms:
  - name: a
    memory: 32MiB
    workloads:
{}
  - name: b
    memory: 32MiB
    workloads:
{}
)",
                     trace, workload, workload);
}

struct Trace {
  YAML::Node root;
  std::map<std::string, unsigned> pid;                 // process name -> pid
  std::map<std::pair<unsigned, std::string>, unsigned> tid;  // (pid, thread name) -> tid
  unsigned track_pid(const std::string& process) const { return pid.at(process); }
};

Trace load(const vmx::test::CliRun& r) {
  Trace t;
  t.root = YAML::Load(read_text(r.out_dir + "/events.json"));
  for (const auto& e : t.root["traceEvents"]) {
    if (e["ph"].as<std::string>() != "M") continue;
    if (e["name"].as<std::string>() == "process_name") t.pid[e["args"]["name"].as<std::string>()] = e["pid"].as<unsigned>();
    if (e["name"].as<std::string>() == "thread_name")
      t.tid[{e["pid"].as<unsigned>(), e["args"]["name"].as<std::string>()}] = e["tid"].as<unsigned>();
  }
  return t;
}

/// Count and total duration (us) of the events named `name` on a process.
std::pair<unsigned, double> sum(const Trace& t, unsigned pid, const std::string& name) {
  unsigned n = 0;
  double dur = 0;
  for (const auto& e : t.root["traceEvents"]) {
    if (e["ph"].as<std::string>() == "M" || e["pid"].as<unsigned>() != pid) continue;
    if (e["name"].as<std::string>() != name) continue;
    ++n;
    if (e["dur"]) dur += e["dur"].as<double>();
  }
  return {n, dur};
}

}  // namespace

TEST_CASE("Event trace: one exit slice per VM exit, and guest slices add up to the guest time",
          "[trace][system]") {
  const std::string trace = "event_trace: {enabled: true, categories: exits}";
  auto r = run_cli(two_vms(trace, "      - type: cpuid_loop\n        iterations: 400\n"));
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("events.json") != std::string::npos);
  const Trace t = load(r);
  const unsigned cores = t.track_pid("cores");
  CHECK(t.pid.count("vm a") == 1);  // rows exist for every vCPU even with sched off
  const double cpuid = r.at("vm.a.vcpu0.exit_reasons.CPUID.cycles.count") + r.at("vm.b.vcpu0.exit_reasons.CPUID.cycles.count");
  CHECK(cpuid == 800);
  CHECK(sum(t, cores, "CPUID").first == cpuid);
  // Every guest interval is a slice: their durations are the guest cycles
  // of both vCPUs (3 GHz), to rounding (1 ps per slice end).
  const auto guest = sum(t, cores, "guest");
  const double guest_us = (r.at("vm.a.vcpu0.time.guest_cycles") + r.at("vm.b.vcpu0.time.guest_cycles")) / 3000.0;
  CHECK(guest.first >= r.at("vm.a.vcpu0.exits") + r.at("vm.b.vcpu0.exits") - 2);
  CHECK(guest.second == Approx(guest_us).margin(guest.first * 2e-6 + 1e-3));
  CHECK(t.root["otherData"]["dropped"].as<unsigned>() == 0);
}

TEST_CASE("Event trace: a vCPU's stolen slices add up to its steal time", "[trace][sched][system]") {
  const std::string trace = "event_trace: {enabled: true, categories: sched}";
  auto r = run_cli(two_vms(trace, "      - type: cpu_bound\n        instructions: 1000\n"));
  REQUIRE(r.exit_code == 0);
  const Trace t = load(r);
  for (const char* vm : {"a", "b"}) {
    const unsigned pid = t.track_pid(fmt::format("vm {}", vm));
    const auto stolen = sum(t, pid, "runnable (stolen)");
    const auto running = sum(t, pid, "running");
    const double steal_us = r.at(fmt::format("vm.{}.vcpu0.time.steal_cycles", vm)) / 3000.0;
    INFO(vm << ": stolen slices " << stolen.second << " us, steal " << steal_us << " us");
    // Two vCPUs share one core in 3 ms slices: each waits about half the
    // time. The statistics also count the interval still open at the end,
    // at most one slice (3 ms).
    CHECK(stolen.first >= 3);
    CHECK(running.first >= 3);
    CHECK(stolen.second <= steal_us + 1);
    CHECK(stolen.second >= steal_us - 3000);
    CHECK(steal_us > 10000);
  }
}

TEST_CASE("Event trace: every blocked DMA of S3 is an event naming the requester", "[trace][dma][system]") {
  auto r = run_cli(read_text(std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/s3_rogue_vf.yaml"),
                   {"--set", "event_trace.enabled=true", "--set", "event_trace.categories=dma,irq"});
  REQUIRE(r.exit_code == 0);
  const Trace t = load(r);
  const unsigned devices = t.track_pid("devices");
  const auto reads = sum(t, devices, "DMA read blocked"), writes = sum(t, devices, "DMA write blocked");
  CHECK(reads.first + writes.first == r.at("system.root_complex.blocked"));
  CHECK(reads.first == 24);
  CHECK(writes.first == 24);
  unsigned from_rogue = 0;
  for (const auto& e : t.root["traceEvents"])
    if (e["name"].as<std::string>().find("blocked") != std::string::npos && e["args"]["requester"].as<std::string>() == "0x102")
      ++from_rogue;
  CHECK(from_rogue == 48);
  // The rogue VF's legitimate echoes came back as posted or remapped MSIs.
  unsigned msis = 0;
  for (const auto& e : t.root["traceEvents"])
    if (e["name"].as<std::string>().rfind("MSI", 0) == 0) ++msis;
  CHECK(msis > 0);
}

TEST_CASE("Event trace: window, cap, off by default, same bytes for the same seed", "[trace][system]") {
  const std::string workload = "      - type: cpuid_loop\n        iterations: 2000\n";
  auto off = run_cli(two_vms("", workload));
  REQUIRE(off.exit_code == 0);
  CHECK(read_text(off.out_dir + "/events.json").empty());  // not written

  auto window = run_cli(two_vms("event_trace: {enabled: true, start: 5ms, stop: 6ms}", workload));
  REQUIRE(window.exit_code == 0);
  const Trace w = load(window);
  unsigned n = 0;
  for (const auto& e : w.root["traceEvents"]) {
    if (e["ph"].as<std::string>() == "M") continue;
    ++n;
    const double ts = e["ts"].as<double>(), end = ts + (e["dur"] ? e["dur"].as<double>() : 0);
    CHECK(end >= 5000);
    CHECK(ts < 6000);
  }
  CHECK(n > 10);

  auto capped = run_cli(two_vms("event_trace: {enabled: true, max_events: 25}", workload));
  REQUIRE(capped.exit_code == 0);
  const Trace c = load(capped);
  CHECK(c.root["otherData"]["events"].as<unsigned>() == 25);
  CHECK(c.root["otherData"]["dropped"].as<unsigned>() > 0);
  CHECK(capped.out.find("event trace: 25 events kept") != std::string::npos);

  auto again = run_cli(two_vms("event_trace: {enabled: true, start: 5ms, stop: 6ms}", workload));
  REQUIRE(again.exit_code == 0);
  CHECK(vmx::test::without_provenance(read_text(again.out_dir + "/events.json")) ==
        vmx::test::without_provenance(read_text(window.out_dir + "/events.json")));
}

TEST_CASE("Event trace: bad settings are config errors naming the key", "[trace][config]") {
  const std::string workload = "      - type: cpuid_loop\n        iterations: 10\n";
  auto bad = run_cli(two_vms("event_trace: {enabled: true, categories: \"exits,dsm\"}", workload));
  CHECK(bad.exit_code == 2);
  CHECK(bad.err.find("event_trace.categories") != std::string::npos);
  CHECK(bad.err.find("'dsm'") != std::string::npos);
  auto backwards = run_cli(two_vms("event_trace: {enabled: true, start: 2ms, stop: 1ms}", workload));
  CHECK(backwards.exit_code == 2);
  CHECK(backwards.err.find("event_trace.stop") != std::string::npos);
}

TEST_CASE("vmxsim run --trace writes events.json with the default categories", "[trace][cli]") {
  auto r = run_cli(two_vms("", "      - type: cpuid_loop\n        iterations: 50\n"), {"--trace"});
  REQUIRE(r.exit_code == 0);
  const Trace t = load(r);
  CHECK(sum(t, t.track_pid("cores"), "CPUID").first == 100);
  CHECK(sum(t, t.track_pid("vm b"), "running").first > 0);
  // Every event names its category ("cat"), so that a viewer can filter.
  std::map<std::string, std::set<std::string>> cats;  // name -> categories
  for (const auto& e : t.root["traceEvents"]) {
    if (e["ph"].as<std::string>() == "M") continue;
    REQUIRE(e["cat"]);
    cats[e["name"].as<std::string>()].insert(e["cat"].as<std::string>());
  }
  CHECK(cats["CPUID"] == std::set<std::string>{"exits"});
  CHECK(cats["guest"] == std::set<std::string>{"exits"});
  CHECK(cats["running"] == std::set<std::string>{"sched"});
  // The provenance rides in the format's metadata.
  CHECK(t.root["otherData"]["provenance"]["simulator"].as<std::string>() == "vmxsim");
}

TEST_CASE("Event trace: one guest-thread slice per guest context switch", "[trace][guest][system]") {
  const std::string yaml = R"(duration: 40ms
platform: {cores: 1, memory: 512MiB}
event_trace: {enabled: true, categories: guest}
vms:
  - name: a
    memory: 32MiB
    workloads:
      - {type: cpu_bound, threads: 2}
      - {type: sleep_loop}
)";
  auto r = run_cli(yaml);
  REQUIRE(r.exit_code == 0);
  const Trace t = load(r);
  const unsigned pid = t.track_pid("vm a");
  CHECK(t.tid.count({pid, "vcpu0 threads"}) == 1);
  const unsigned slices = sum(t, pid, "thread").first + sum(t, pid, "idle").first;
  CHECK(r.at("vm.a.kernel.sched.switches") >= 5);
  CHECK(slices == r.at("vm.a.kernel.sched.switches"));
  // Both threads of the compute process ran.
  std::set<unsigned> threads;
  for (const auto& e : t.root["traceEvents"])
    if (e["name"].as<std::string>() == "thread") threads.insert(e["args"]["thread"].as<unsigned>());
  CHECK(threads.count(0) == 1);
  CHECK(threads.count(1) == 1);
}
