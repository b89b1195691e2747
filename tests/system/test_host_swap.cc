// Host-side overcommit (docs/memory.md, "Host swap", "Ballooning", "Memory
// over time"): a host with less memory than its VMs' total runs to the end
// with host swap and every page comes back with its contents; the balloon's
// host policy inflates when free memory falls below its watermark; the
// series of memory statistics over time.
#include <catch2/catch.hpp>

#include <string>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;

namespace {

std::string s5_swap() { return read_text(std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/s5_host_swap.yaml"); }

}  // namespace

TEST_CASE("host swap: VMs larger than the host run to the end and every page comes back intact", "[host_swap][s5]") {
  // Two VMs of 24 MiB on a 32 MiB guest zone, each filling 15 MiB with its
  // own pattern twice (every quadword of every page written, then read back
  // after a hold): more than the host has, so pages go out while the guests
  // fill and come back when they check.
  auto r = run_cli(s5_swap());
  INFO(r.err << r.out);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("stopped") == std::string::npos);
  for (const char* vm : {"a", "b"}) {
    INFO(vm);
    const std::string w = std::string("vm.") + vm + ".workload0.";
    CHECK(r.at(w + "threads_done") == 1);
    CHECK(r.at(w + "operations") == 2);  // both passes checked
    // Every quadword of both passes held its value, and the last pass's
    // checksum over all of them is the one written.
    CHECK(r.at(w + "mismatches") == 0);
    CHECK(r.at(w + "checksum") == r.at(w + "expected_checksum"));
    const std::string hs = std::string("vm.") + vm + ".host_swap.";
    CHECK(r.at(hs + "swapped_out") > 200);
    CHECK(r.at(hs + "major_faults") > 20);
    // The faulting vCPU waited for each read: at least the device's read
    // latency (77 us, 231,000 cycles at 3 GHz) per major fault.
    CHECK(r.at(hs + "wait_cycles") >= 231000 * r.at(hs + "major_faults"));
  }
  CHECK(r.at("hypervisor.host_swap.pages_out") ==
        r.at("vm.a.host_swap.swapped_out") + r.at("vm.b.host_swap.swapped_out"));
  CHECK(r.at("hypervisor.host_swap.pages_in") ==
        r.at("vm.a.host_swap.major_faults") + r.at("vm.b.host_swap.major_faults"));
  // The device moved every page: one 4 KiB write per page out, one read per page in.
  CHECK(r.at("hypervisor.storage.writes") == r.at("hypervisor.host_swap.pages_out"));
  CHECK(r.at("hypervisor.storage.reads") == r.at("hypervisor.host_swap.pages_in"));
  // The clock gave pages with their accessed flag set a second chance; a
  // fault found no free frame and reclaimed itself; the reclaimer waited for
  // the other core to drop its cached translations.
  CHECK(r.at("hypervisor.host_swap.young") > 0);
  CHECK(r.at("hypervisor.host_swap.direct_reclaims") > 0);
  CHECK(r.at("hypervisor.host_swap.ack_cycles") > 0);

  // The same host without swap cannot run them.
  auto without = run_cli(s5_swap(), {"--set", "hypervisor.host_swap.enabled=false"});
  INFO(without.err << without.out);
  REQUIRE(without.exit_code == 0);
  CHECK(without.out.find("stopped") != std::string::npos);
}

TEST_CASE("host swap: pages a guest keeps rewriting are written out and come back intact", "[host_swap]") {
  // `hot` rewrites and checks 512 KiB over and over while `hog` streams
  // over 30 MiB of a 32 MiB guest zone. The clock clears accessed flags
  // without an INVEPT (as KVM's clear_young), so hot's pages, whose
  // translations stay in its TLB, look idle and are written out while hot
  // writes them, from the other core (hog's faults reclaim directly).
  const std::string cfg = R"(seed: 7
duration: 300ms
platform:
  cores: 2
  memory: 64MiB
  quantum: 1us
hypervisor:
  reserved_memory: 32MiB
  ept_ad: true
  host_swap:
    enabled: true
    core: 1
vms:
  - name: hog
    memory: 48MiB
    pin: "0"
    workloads:
      - type: stream
        working_set: 30MiB
        stride: 4096
        write: true
        passes: 0
  - name: hot
    memory: 16MiB
    pin: "1"
    workloads:
      - type: pattern_check
        working_set: 512KiB
        hold: 0ms
        salt: 3
        passes: 150
)";
  auto r = run_cli(cfg);
  INFO(r.err << r.out);
  REQUIRE(r.exit_code == 0);
  CHECK(r.at("vm.hot.workload0.operations") == 150);
  CHECK(r.at("vm.hot.host_swap.swapped_out") > 100);
  CHECK(r.at("vm.hot.host_swap.major_faults") > 50);
  CHECK(r.at("vm.hot.workload0.mismatches") == 0);
  CHECK(r.at("vm.hot.workload0.checksum") == r.at("vm.hot.workload0.expected_checksum"));
  CHECK(r.at("hypervisor.host_swap.ack_cycles") > 0);
}

TEST_CASE("host swap: a config asking for it without EPT accessed flags is an error", "[host_swap]") {
  auto r = run_cli(s5_swap(), {"--set", "hypervisor.ept_ad=false"});
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("hypervisor.host_swap.enabled") != std::string::npos);
  CHECK(r.err.find("ept_ad") != std::string::npos);
}

TEST_CASE("balloon policy: free host memory below the watermark inflates the balloon", "[balloon][policy]") {
  // A 32 MiB guest zone; the VM (48 MiB) touches 28 MiB, leaving the host
  // under its 8 MiB watermark while the guest still has free memory.
  const std::string cfg = R"(seed: 3
duration: 80ms
stop_when_done: false
platform:
  cores: 1
  memory: 64MiB
hypervisor:
  reserved_memory: 32MiB
  balloon_watermark: 8MiB
  balloon_step: 1MiB
vms:
  - name: g
    memory: 48MiB
    balloon:
      enabled: true
      max: 16MiB
    workloads:
      - type: touch_pages
        pages: 7168
        passes: 1
)";
  auto r = run_cli(cfg);
  INFO(r.err << r.out);
  REQUIRE(r.exit_code == 0);
  // The policy raised the target a step at a time, up to the VM's max, and
  // the guest inflated toward it (its free pages, never touched, held no
  // host frame: frames_freed counts only backed ones).
  CHECK(r.at("vm.g.balloon.policy_raises") > 0);
  CHECK(r.at("vm.g.balloon.target_pages") == r.at("vm.g.balloon.policy_raises") * 256);
  CHECK(r.at("vm.g.balloon.target_pages") <= 16 * 256);
  CHECK(r.at("vm.g.balloon.inflated_pages") >= 256);
  CHECK(r.at("vm.g.balloon.ballooned_pages") == r.at("vm.g.balloon.inflated_pages"));

  auto off = run_cli(cfg, {"--set", "hypervisor.balloon_watermark=0B"});
  INFO(off.err << off.out);
  REQUIRE(off.exit_code == 0);
  CHECK(off.at("vm.g.balloon.policy_raises") == 0);
  CHECK(off.at("vm.g.balloon.inflated_pages") == 0);
}

TEST_CASE("series: memory statistics sampled over time land in stats.json and the event trace", "[series]") {
  auto r = run_cli(s5_swap(), {"--set", "series.interval=10ms", "--set", "event_trace.enabled=true", "--set",
                               "event_trace.categories=irq"});
  INFO(r.err << r.out);
  REQUIRE(r.exit_code == 0);
  const YAML::Node series = r.stats["series"];
  REQUIRE(series);
  CHECK(series["interval_ps"].as<double>() == 1e10);
  const YAML::Node t = series["time_ps"];
  REQUIRE(t.size() >= 10);
  CHECK(t[0].as<double>() == 0);
  CHECK(t[1].as<double>() == 1e10);
  const YAML::Node s = series["stats"];
  const YAML::Node free = s["hypervisor.frames.frames_free"];
  const YAML::Node out = s["hypervisor.host_swap.pages_out"];
  const YAML::Node resident = s["vm.a.resident_pages"];
  REQUIRE(free.size() == t.size());
  REQUIRE(out.size() == t.size());
  REQUIRE(resident.size() == t.size());
  // Resident memory grows from nothing; the swap counter never goes back and
  // ends where the statistic does.
  CHECK(resident[0].as<double>() == 0);
  double max_resident = 0;
  for (std::size_t i = 1; i < out.size(); ++i) {
    CHECK(out[i].as<double>() >= out[i - 1].as<double>());
    max_resident = std::max(max_resident, resident[i].as<double>());
  }
  CHECK(max_resident > 1000);
  CHECK(out[out.size() - 1].as<double>() == r.at("hypervisor.host_swap.pages_out"));
  // The trace has the same samples as counter events.
  const std::string events = read_text(r.out_dir + "/events.json");
  CHECK(events.find("\"ph\":\"C\"") != std::string::npos);
  CHECK(events.find("hypervisor.host_swap.pages_out") != std::string::npos);
}
