// S8 with a network (docs/migration.md, "A switch between the hosts", "The
// network peer's ping", "Self-announce"): three hosts and the network peer
// on one switch; the peer pings a VM (a net_echo program behind its VF)
// while it moves from host a to host b. The peer's longest gap without a
// reply covers the hypervisors' downtime; the replies come back from host
// b's VF once the destination's self-announce has moved the VM's MAC in the
// switch's table. Without the announcement the requests keep going to host
// a until the VM itself sends a frame from host b.
#include <catch2/catch.hpp>

#include <string>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;
using vmx::test::CliRun;

namespace {
const std::string kConfig = std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/s8_ping.yaml";
const std::string kPing = "network.peer.ping.";
const std::string kIn = "host.b.vm.web.migration_in.";

CliRun run(const std::vector<std::string>& sets = {}) {
  std::vector<std::string> args;
  for (const std::string& s : sets) {
    args.push_back("--set");
    args.push_back(s);
  }
  auto r = run_cli(read_text(kConfig), args);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  return r;
}
constexpr double kIntervalNs = 100'000;     // network.peer.interval
constexpr double kMigrationNs = 28'000'000;  // migrations[0].at
/// When the peer's longest gap without a reply ended (ns).
double gap_end(const CliRun& r) { return r.at(kPing + "max_gap_from_ns") + r.at(kPing + "max_gap_ns"); }
}  // namespace

TEST_CASE("S8 ping: the peer's gap covers the downtime and the replies resume from host b after the announcement",
          "[s8][migration][network]") {
  const CliRun r = run();
  REQUIRE(r.at(kIn + "resumed") == 1);
  const double downtime = r.at(kIn + "downtime_ns");
  const double gap = r.at(kPing + "max_gap_ns");
  INFO("downtime " << downtime << " ns, gap " << gap << " ns, from " << r.at(kPing + "max_gap_from_ns"));
  // The VM answered before and after the migration.
  CHECK(r.at(kPing + "replies") > 50);
  CHECK(r.at("host.a.system.nic.vf0.tx_packets") > 0);
  // The guest-visible gap: at least the downtime, at most the downtime and
  // a few ping intervals (a request due just after the pause, the
  // announcement, the guest's first run on host b).
  CHECK(gap >= downtime);
  CHECK(gap <= downtime + 3 * kIntervalNs);
  // The replies after the migration come from host b's VF: its NIC counts
  // the requests received and the replies sent, and they continue to the
  // end of the run.
  CHECK(r.at("host.b.system.nic.vf0.rx_packets") > 20);
  CHECK(r.at("host.b.system.nic.vf0.tx_packets") > 20);
  CHECK(r.at(kPing + "last_reply_ns") > r.at("sim.seconds") * 1e9 - 2 * kIntervalNs);
  // The announcement moved the VM's MAC to host b's port of the switch.
  CHECK(r.at("host.b.vm.web.announce.frames") >= 1);
  CHECK(r.at("network.switch.moves") == 1);
  CHECK(r.at("network.switch.port.b.learned") >= 1);
  // The move is the announcement's arrival (its way through the PF, the link
  // and the switch: microseconds; the hypervisor's clock, the core's, may be
  // ahead of the network's by up to a quantum, platform.quantum 10 us), and
  // the gap ends within an interval and a round trip after it.
  CHECK(r.at("network.switch.last_move_ns") >= r.at("host.b.vm.web.announce.first_ns") - 10'000);
  CHECK(r.at("network.switch.last_move_ns") <= r.at("host.b.vm.web.announce.first_ns") + 20'000);
  CHECK(gap_end(r) > r.at("network.switch.last_move_ns"));
  CHECK(gap_end(r) <= r.at("network.switch.last_move_ns") + kIntervalNs + 20'000);
  // Requests lost: those sent during the gap, no more.
  CHECK(r.at(kPing + "lost") >= 1);
  CHECK(r.at(kPing + "lost") <= gap / kIntervalNs + 1);
  CHECK(r.at("migration_check.web.mismatched") == 0);
}

TEST_CASE("S8 ping: without the announcement the replies stop until the VM itself sends from host b",
          "[s8][migration][network]") {
  SECTION("the VM only answers: no reply after the migration") {
    const CliRun r = run({"migrations[0].announce=false"});
    REQUIRE(r.at(kIn + "resumed") == 1);
    // The switch still sends the requests to host a, whose VF 0 is no
    // longer the VM's: it drops them in hardware.
    CHECK(r.at("network.switch.moves") == 0);
    CHECK(r.at("host.b.system.nic.vf0.rx_packets") == 0);
    CHECK(r.at("host.b.system.nic.vf0.tx_packets") == 0);
    CHECK(r.at("host.a.system.nic.vf0.rx_discards") > 20);
    CHECK(r.at(kPing + "last_reply_ns") < kMigrationNs + r.at(kIn + "total_ns"));  // before the resumption
    CHECK(r.at(kPing + "lost") > 40);
    // The gap is open to the end of the run.
    CHECK(gap_end(r) >= r.at("sim.seconds") * 1e9 - kIntervalNs - 1);
  }
  SECTION("a frame of the VM's own, every 2 ms, teaches the switch") {
    const CliRun r = run({"migrations[0].announce=false",
                          "hosts[0].vms[0].workloads=[{type: net_echo}, "
                          "{type: net_stream, size: 64, frames: 0, gap: 2ms, to: peer}]"});
    REQUIRE(r.at(kIn + "resumed") == 1);
    // The VM's first frame from host b moved its MAC, a while after the
    // resumption (the program's next frame), and the replies resumed
    // then: the gap ends within an interval and a round trip of the move.
    CHECK(r.at("network.switch.moves") == 1);
    CHECK(r.at("host.b.system.nic.vf0.rx_packets") > 0);
    const double resumed = kMigrationNs + r.at(kIn + "total_ns");
    const double move = r.at("network.switch.last_move_ns");
    const double gap = r.at(kPing + "max_gap_ns");
    INFO("resumed at " << resumed << " ns, MAC moved at " << move << " ns, gap " << gap << " ns to " << gap_end(r));
    CHECK(move > resumed + 2 * kIntervalNs);
    CHECK(gap_end(r) > move);
    CHECK(gap_end(r) <= move + kIntervalNs + 20'000);
    CHECK(gap > r.at(kIn + "downtime_ns") + 3 * kIntervalNs);
  }
}

TEST_CASE("S8 ping: a switch, peer or announcement the topology cannot have is a config error naming the key",
          "[s8][migration][network][config]") {
  auto expect = [](const std::vector<std::string>& sets, const std::string& path, const std::string& words) {
    std::vector<std::string> args;
    for (const std::string& s : sets) {
      args.push_back("--set");
      args.push_back(s);
    }
    const auto r = run_cli(read_text(kConfig), args);
    INFO(r.err);
    CHECK(r.exit_code == 2);
    CHECK(r.err.find("config error") != std::string::npos);
    CHECK(r.err.find(path) != std::string::npos);
    CHECK(r.err.find(words) != std::string::npos);
  };
  // Three hosts need the switch; the peer needs it too.
  expect({"network.switch.enabled=false", "network.peer.enabled=false"}, "hosts", "network.switch.enabled");
  expect({"network.switch.enabled=false", "migrations=[]",
          "hosts=[{name: a, platform: {memory: 256MiB, nic: {enabled: true}}}, "
          "{name: b, platform: {memory: 256MiB, nic: {enabled: true}}}]"},
         "network.peer.enabled", "switch");
  // The announcement is sent from a VF's MAC.
  expect({"hosts[0].vms[0].nic={type: none}", "hosts[0].vms[0].workloads=[{type: compute}]"},
         "migrations[0].announce", "VF");
  // The ping mode's interval has its bound in its unit.
  expect({"network.peer.interval=1ns"}, "network.peer.interval", "at least");
}
