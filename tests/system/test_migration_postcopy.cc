// S8 rescued (docs/migration.md, "Auto-converge" and "Post-copy"): the
// diverging migration of s8_diverge.yaml, whose dirty rate outruns the
// stream, converges once auto-converge throttles the vCPUs, and moves by
// post-copy with remote faults at the destination. Either way the
// destination's memory equals the source's page by page and the guest's
// pattern check passes there.
#include <catch2/catch.hpp>

#include <string>
#include <utility>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;
using vmx::test::CliRun;

namespace {
const std::string kScenarios = std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/";
const std::string kOut = "host.a.vm.web.migration.";
const std::string kIn = "host.b.vm.web.migration_in.";

CliRun run(const std::string& yaml) { return vmx::test::run_ok(yaml); }

/// The VM runs at the destination, intact, and its pattern check passed.
void check_moved(const CliRun& r) {
  CHECK(r.at(kIn + "resumed") == 1);
  CHECK(r.at(kIn + "lost_frames") == 0);
  CHECK(r.at("migration_check.web.pages") > 500);
  CHECK(r.at("migration_check.web.mismatched") == 0);
  CHECK(r.at("host.b.vm.web.vcpu0.instructions") > 1e6);
  CHECK(r.at("host.a.vm.web.workload1.threads_done") == 1);
  CHECK(r.at("host.a.vm.web.workload1.mismatches") == 0);
}
}  // namespace

TEST_CASE("S8: auto-converge throttles the vCPUs until the diverging migration converges",
          "[s8][migration][autoconverge]") {
  const CliRun d = run(read_text(kScenarios + "s8_diverge.yaml"));
  const CliRun a = run(read_text(kScenarios + "s8_autoconverge.yaml"));
  const std::string t = kOut + "throttle.";
  INFO("rounds " << a.at(kOut + "rounds") << ", max throttle " << a.at(t + "max_pct") << " %, switchover pages "
                 << a.at(kOut + "switchover_pages") << " vs " << d.at(kOut + "switchover_pages") << ", downtime "
                 << a.at(kIn + "downtime_ns") << " vs " << d.at(kIn + "downtime_ns") << " ns");
  CHECK(d.at(kOut + "converged") == 0);
  CHECK(a.at(kOut + "converged") == 1);
  // QEMU's steps: 20 % first, then 10 % more each time.
  CHECK(a.at(t + "steps") >= 2);
  CHECK(a.at(t + "max_pct") == 20 + 10 * (a.at(t + "steps") - 1));
  CHECK(a.at(t + "round0_pct") == 0);
  CHECK(a.at(t + "sleeps") > 0);
  // The sleeps are time the vCPU was held off its core: stolen time.
  CHECK(a.at("host.a.vm.web.vcpu0.time.steal_cycles") > 3 * d.at("host.a.vm.web.vcpu0.time.steal_cycles"));
  CHECK(a.at("host.a.vm.web.vcpu0.time.steal_cycles") > 0.5 * a.at(t + "sleep_ns") * 3);  // 3 GHz
  // Fewer pages left at the switchover, a shorter downtime.
  CHECK(a.at(kOut + "switchover_pages") * 3 < d.at(kOut + "switchover_pages"));
  CHECK(a.at(kIn + "downtime_ns") < d.at(kIn + "downtime_ns"));
  check_moved(a);
}

TEST_CASE("S8: post-copy moves the diverging VM, its missing pages fetched on remote faults",
          "[s8][migration][postcopy]") {
  const CliRun r = run(read_text(kScenarios + "s8_postcopy.yaml"));
  const std::string po = kOut + "postcopy.", pi = kIn + "postcopy.";
  INFO("remote faults " << r.at(pi + "remote_faults") << ", latency mean " << r.at(pi + "fault_latency_ns.mean")
                        << " ns, max " << r.at(pi + "fault_latency_ns.max") << " ns, pushed " << r.at(po + "pushed")
                        << ", downtime " << r.at(kIn + "downtime_ns") << " ns");
  CHECK(r.at(kOut + "rounds") == 1);  // postcopy_after
  CHECK(r.at(po + "discards") > 0);   // pre-copied pages dirtied since: dropped at the destination
  CHECK(r.at(pi + "discarded") > 0);
  // The guest touched pages not there yet: each a request over the link
  // and a wait of at least a round trip with a page on the way back.
  CHECK(r.at(pi + "remote_faults") > 0);
  CHECK(r.at(po + "requests") >= r.at(pi + "remote_faults"));
  CHECK(r.at(po + "requested_sent") > 0);
  CHECK(r.at(pi + "fault_latency_ns.count") >= r.at(pi + "remote_faults"));
  CHECK(r.at(pi + "fault_latency_ns.mean") > 3000);  // 4 KiB + a request at 10 Gbit/s, and both PFs' paths
  CHECK(r.at(pi + "fault_latency_ns.max") >= r.at(pi + "fault_latency_ns.mean"));
  // The rest came by the background push; every page sent arrived.
  CHECK(r.at(po + "pushed") > 100);
  CHECK(r.at(pi + "pages") >= r.at(po + "pushed") + r.at(po + "requested_sent"));
  CHECK(r.at(pi + "postcopy_ns") > 0);
  CHECK(r.at(kIn + "frames") == r.at(kOut + "frames"));
  check_moved(r);
  // Only the vCPU state crossed while the VM was paused: a far shorter
  // downtime than the forced pre-copy switchover's.
  const CliRun d = run(read_text(kScenarios + "s8_diverge.yaml"));
  CHECK(r.at(kIn + "downtime_ns") * 5 < d.at(kIn + "downtime_ns"));
}

TEST_CASE("S8: post-copy at once moves every page after the resumption", "[s8][migration][postcopy]") {
  // postcopy_after 0: no pre-copy round. The pause finds the guest filling
  // fresh memory (a vCPU parked at an EPT violation inside its page-fault
  // handler, whose access is itself a remote fault at the destination).
  const CliRun r = run_cli(read_text(kScenarios + "s8_postcopy.yaml"), {"--set", "migrations[0].postcopy_after=0"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const std::string po = kOut + "postcopy.", pi = kIn + "postcopy.";
  CHECK(r.at(kOut + "rounds") == 0);
  CHECK(r.at(po + "discards") == 0);  // nothing was pre-copied
  CHECK(r.at(pi + "remote_faults") > 0);
  CHECK(r.at(po + "requested_sent") > 0);
  CHECK(r.at(pi + "fault_latency_ns.count") >= r.at(pi + "remote_faults"));
  // Every page the guest had at the source crossed after the resumption.
  CHECK(r.at(pi + "pages") >= r.at("migration_check.web.pages"));
  CHECK(r.at(pi + "postcopy_ns") > 0);
  check_moved(r);
}

namespace {
// A guest that maps, touches and unmaps memory without pause (mmap_churn):
// it is nearly always inside its page-fault handler, zeroing a frame or
// writing a page-table entry, and the write takes an EPT violation (a page
// write-protected or not yet backed). The pause of the migration at 5 ms
// parks the vCPU at such an exit; the handler's access starts over at the
// destination and the handler returns there, where the interrupted store
// is retried. (Before that was so, the interrupted store went on on the
// source's core, outside the guest's translation: each of these runs
// failed with "store to physical ... beyond memory".)
std::string churn(const std::string& mode, unsigned after) {
  return "seed: 8\nduration: 40ms\nstop_when_done: false\nhosts:\n"
         "  - name: a\n    platform: {cores: 2, memory: 256MiB, nic: {enabled: true}}\n"
         "    hypervisor: {ept_ad: true}\n"
         "    vms:\n      - name: web\n        memory: 16MiB\n        pin: \"1\"\n        workloads:\n"
         "          - {type: mmap_churn, region: 256KiB, iterations: 0}\n"
         "          - {type: pattern_check, working_set: 1MiB, hold: 20ms}\n"
         "  - name: b\n    platform: {cores: 2, memory: 256MiB, nic: {enabled: true}}\n"
         "    hypervisor: {ept_ad: true}\n"
         "network: {link: {bandwidth_gbps: 10}}\n"
         "migrations:\n  - {vm: web, from: a, to: b, at: 5ms, core: 0, tracking: write_protect, max_bandwidth: 300MiB,\n"
         "     downtime_limit: 1ms, max_rounds: 3, mode: " + mode + ", postcopy_after: " + std::to_string(after) +
         ", postcopy_bandwidth: 200MiB}\n";
}
}  // namespace

TEST_CASE("S8: a vCPU paused inside the guest's page-fault handler finishes it at the destination",
          "[s8][migration][postcopy]") {
  const auto [mode, after] = GENERATE(std::make_pair(std::string("precopy"), 1u),
                                      std::make_pair(std::string("postcopy"), 1u),
                                      std::make_pair(std::string("postcopy"), 0u));
  INFO(mode << " after " << after << " rounds");
  const CliRun r = run_cli(churn(mode, after));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.at(kIn + "resumed") == 1);
  CHECK(r.at(kIn + "lost_frames") == 0);
  CHECK(r.at("migration_check.web.pages") > 300);
  CHECK(r.at("migration_check.web.mismatched") == 0);
  if (mode == "postcopy") CHECK(r.at(kIn + "postcopy.remote_faults") > 0);
  // The guest goes on mapping and touching memory at the destination, and
  // its data held across the move.
  CHECK(r.at("host.b.vm.web.vcpu0.instructions") > 1e6);
  CHECK(r.at("host.a.vm.web.workload0.operations") > 500);
  CHECK(r.at("host.a.vm.web.workload1.threads_done") == 1);
  CHECK(r.at("host.a.vm.web.workload1.mismatches") == 0);
}

TEST_CASE("S8: auto-converge and post-copy options are validated at load", "[s8][migration][config]") {
  const std::string two = "duration: 10ms\nhosts:\n  - name: a\n    platform: {memory: 256MiB, nic: {enabled: true}}\n"
                          "    vms: [{name: v, memory: 16MiB}]\n"
                          "  - name: b\n    platform: {memory: 256MiB, nic: {enabled: true}}\n";
  auto r = run_cli(two + "migrations: [{vm: v, from: a, to: b, tracking: write_protect, mode: postcopy, "
                    "postcopy_after: 5, max_rounds: 3}]\n");
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("max_rounds") != std::string::npos);
  r = run_cli(two + "migrations: [{vm: v, from: a, to: b, tracking: write_protect, auto_converge: true, "
                    "throttle_initial: 50, throttle_max: 40}]\n");
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("migrations[0].throttle_initial") != std::string::npos);
  r = run_cli(two + "migrations: [{vm: v, from: a, to: b, tracking: write_protect, mode: copy}]\n");
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("migrations[0].mode") != std::string::npos);
}
