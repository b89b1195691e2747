// The migration stream's transport (docs/migration.md, "The stream's
// transport"): frames lost on the way (the destination PF's receive ring
// overflowing, a frame lost on the wire) are retransmitted, so that after
// every migration the destination's memory equals the source's at
// switchover, page by page, and the guest's pattern check passes there; a
// lossless stream retransmits nothing; a lost post-copy page request is sent
// again and the faulting vCPU goes on.
#include <catch2/catch.hpp>

#include <string>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_ok;
using vmx::test::CliRun;

namespace {
const std::string kScenarios = std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/";
const std::string kOut = "host.a.vm.web.migration.";
const std::string kTp = "host.a.vm.web.migration.transport.";
const std::string kIn = "host.b.vm.web.migration_in.";
const std::string kRx = "host.b.vm.web.migration_in.transport.";


/// The VM runs at the destination with the source's memory, and its
/// pattern check passed there.
void check_moved(const CliRun& r) {
  CHECK(r.at(kIn + "resumed") == 1);
  CHECK(r.at(kIn + "lost_frames") == 0);
  CHECK(r.at(kIn + "frames") == r.at(kOut + "frames"));  // each frame once, in order
  CHECK(r.at("migration_check.web.pages") > 300);
  CHECK(r.at("migration_check.web.mismatched") == 0);
  CHECK(r.at("host.b.vm.web.vcpu0.instructions") > 1e6);
  CHECK(r.at("host.a.vm.web.workload1.threads_done") == 1);
  CHECK(r.at("host.a.vm.web.workload1.mismatches") == 0);
}

// A guest that maps, touches and unmaps memory without pause, and a pattern
// check across the move (test_migration_postcopy.cc's churn), migrated at
// `bandwidth` (1 GiB/s: faster than the destination's receive path takes
// frames; before the transport, 276 to 529 frames of it were lost).
std::string churn(const std::string& bandwidth, const std::string& mode = "precopy",
                  const std::string& dest_hv = "{ept_ad: true}") {
  return "seed: 8\nduration: 40ms\nstop_when_done: false\nhosts:\n"
         "  - name: a\n    platform: {cores: 2, memory: 256MiB, nic: {enabled: true}}\n"
         "    hypervisor: {ept_ad: true}\n"
         "    vms:\n      - name: web\n        memory: 16MiB\n        pin: \"1\"\n        workloads:\n"
         "          - {type: mmap_churn, region: 256KiB, iterations: 0}\n"
         "          - {type: pattern_check, working_set: 1MiB, hold: 20ms}\n"
         "  - name: b\n    platform: {cores: 2, memory: 256MiB, nic: {enabled: true}}\n"
         "    hypervisor: " + dest_hv + "\n"
         "network: {link: {bandwidth_gbps: 10}}\n"
         "migrations:\n  - {vm: web, from: a, to: b, at: 5ms, core: 0, tracking: write_protect, max_bandwidth: " +
         bandwidth + ",\n     downtime_limit: 1ms, max_rounds: 3, mode: " + mode +
         ", postcopy_after: 1, postcopy_bandwidth: 0}\n";
}
}  // namespace

TEST_CASE("Transport: a lossless stream retransmits nothing", "[migration][transport]") {
  const CliRun r = run_ok(read_text(kScenarios + "s8_converge.yaml"));
  check_moved(r);
  CHECK(r.at(kTp + "retransmitted") == 0);
  CHECK(r.at(kTp + "timeouts") == 0);
  CHECK(r.at(kTp + "fast_retransmits") == 0);
  CHECK(r.at(kRx + "out_of_order") == 0);
  CHECK(r.at(kTp + "transmitted") == r.at(kOut + "frames"));
  CHECK(r.at(kTp + "acks") > 0);
  CHECK(r.at(kRx + "acks") >= r.at(kTp + "acks"));
  CHECK(r.at(kTp + "goodput") > 0);
}

TEST_CASE("Transport: a stream at 1 GiB/s arrives whole, its window bounded by the receiver",
          "[migration][transport]") {
  const CliRun r = run_ok(churn("1GiB"));
  INFO("transmitted " << r.at(kTp + "transmitted") << ", retransmitted " << r.at(kTp + "retransmitted")
                      << ", window stalls " << r.at(kTp + "window_stalls") << ", goodput " << r.at(kTp + "goodput"));
  check_moved(r);
  // The receive window keeps the stream within what the destination's PF
  // receive ring holds: nothing lost, nothing sent twice, and the sender
  // waited for the window instead.
  CHECK(r.at(kTp + "window_stalls") > 0);
  CHECK(r.at(kTp + "retransmitted") == 0);
  CHECK(r.at(kRx + "out_of_order") == 0);
}

TEST_CASE("Transport: frames the destination's receive ring drops are retransmitted",
          "[migration][transport]") {
  // A receive ring of 16 descriptors on the destination, under a window of
  // 64 frames: the ring overflows and the NIC drops frames.
  const CliRun r = run_ok(churn("1GiB", "precopy", "{ept_ad: true, host_nic: {ring_size: 16}}"));
  INFO("retransmitted " << r.at(kTp + "retransmitted") << ", fast " << r.at(kTp + "fast_retransmits")
                        << ", timeouts " << r.at(kTp + "timeouts"));
  check_moved(r);
  CHECK(r.at(kRx + "out_of_order") > 0);  // a frame before them was dropped
  CHECK(r.at(kTp + "retransmitted") > 0);
  CHECK(r.at(kTp + "fast_retransmits") + r.at(kTp + "timeouts") > 0);
  CHECK(r.at(kTp + "transmitted") == r.at(kOut + "frames") + r.at(kTp + "retransmitted"));
}

TEST_CASE("Transport: frames lost on the wire are retransmitted, pre-copy and post-copy",
          "[migration][transport]") {
  const std::string mode = GENERATE(std::string("precopy"), std::string("postcopy"));
  INFO(mode);
  // Every 40th frame in each direction lost: stream frames, ACKs, requests.
  const CliRun r = run_ok(churn("1GiB", mode), {"--set", "network.link.drop_every=40"});
  check_moved(r);
  CHECK(r.at("network.link.a_to_b.dropped") > 0);
  CHECK(r.at("network.link.b_to_a.dropped") > 0);
  CHECK(r.at(kTp + "retransmitted") > 0);
  CHECK(r.at(kRx + "duplicates") + r.at(kRx + "out_of_order") > 0);
}

TEST_CASE("Transport: a lost post-copy page request is sent again and the vCPU goes on",
          "[migration][transport][postcopy]") {
  // Every 45th frame in each direction lost; from b to a, ACKs and page
  // requests, one of which is among the lost.
  const CliRun r = run_ok(churn("1GiB", "postcopy"), {"--set", "network.link.drop_every=45"});
  const std::string pi = kIn + "postcopy.", po = kOut + "postcopy.";
  INFO("remote faults " << r.at(pi + "remote_faults") << ", retries " << r.at(pi + "request_retries")
                        << ", requests at source " << r.at(po + "requests"));
  check_moved(r);
  CHECK(r.at(pi + "remote_faults") > 0);
  CHECK(r.at(pi + "request_retries") > 0);
  // Fewer requests arrived than were sent: one was lost, and its retry
  // brought the page.
  CHECK(r.at(po + "requests") < r.at(pi + "remote_faults") + r.at(pi + "request_retries"));
  CHECK(r.at(pi + "postcopy_ns") > 0);
  // Every fault was answered: as many latencies as faults.
  CHECK(r.at(pi + "fault_latency_ns.count") == r.at(pi + "remote_faults") + r.at(pi + "fault_waits"));
}
