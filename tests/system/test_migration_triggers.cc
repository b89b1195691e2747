// Live migration (docs/migration.md): a migration started by a condition on
// a statistic (migrations[].when), what the guest felt (a heartbeat in the
// migrating VM sees a gap at least as long as the downtime), and the event
// trace of a two-host run (one process per host).
#include <catch2/catch.hpp>

#include <map>
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
const std::string kBeat = "host.a.vm.web.workload2.";

std::string replaced(std::string text, const std::string& what, const std::string& with) {
  const auto at = text.find(what);
  REQUIRE(at != std::string::npos);
  text.replace(at, what.size(), with);
  return text;
}

/// S8 (`scenario`), with a heartbeat (every 100 us, at the guest's highest
/// priority) as the VM's third program and `extra` added to the migration.
std::string s8_with_heartbeat(const std::string& extra = "", const std::string& scenario = "s8_converge.yaml") {
  std::string y = read_text(kScenarios + scenario);
  y = replaced(y, "            hold: 60ms\n",
               "            hold: 60ms\n          - type: heartbeat\n            interval: 100us\n            nice: -20\n");
  const std::string rounds = scenario == "s8_converge.yaml" ? "    max_rounds: 30\n" : "    max_rounds: 6\n";
  return replaced(y, rounds, rounds + extra);
}

CliRun run(const std::string& yaml, const std::vector<std::string>& args = {}) {
  return vmx::test::run_ok(yaml, args);
}
}  // namespace

TEST_CASE("Migration: the guest's longest silence covers the downtime", "[s8][migration][gap]") {
  // The diverging S8 pauses the VM for about a millisecond.
  const CliRun r = run(s8_with_heartbeat("", "s8_diverge.yaml"));
  REQUIRE(r.at(kIn + "resumed") == 1);
  const double downtime = r.at(kIn + "downtime_ns");
  const double gap = r.at(kBeat + "max_gap_ns");
  const double resumed = 10e6 + r.at(kIn + "total_ns");  // at: 10ms
  const double paused = resumed - downtime;
  const double from = r.at(kBeat + "max_gap_from_ns");
  INFO("downtime " << downtime << " ns from " << paused << ", longest gap " << gap << " ns from " << from
                   << ", missed " << r.at(kBeat + "missed"));
  CHECK(downtime > 500e3);
  CHECK(gap >= downtime);
  // It is the migration's gap: the last beat before the pause, the next
  // after the resumption (the thread then waits for its vCPU and timer).
  CHECK(from <= paused);
  CHECK(from > paused - 200e3);
  CHECK(from + gap >= resumed);
  CHECK(gap < downtime + 500e3);
  // The beats due while the VM was paused were missed, the next one late.
  CHECK(r.at(kBeat + "missed") >= static_cast<int>(downtime / 100e3) - 1);
  CHECK(r.at(kBeat + "late") >= 1);
}

TEST_CASE("Migration: a condition on a statistic starts it", "[s8][migration][trigger]") {
  // From 1 ms on, every 100 us: has the heartbeat beaten 60 times? (About
  // 17 ms into the run: it begins after the guest's start-up.) The
  // migration starts then, not at 1 ms, and completes.
  std::string y = s8_with_heartbeat("    when: {stat: " + kBeat + "operations, at_least: 60, every: 100us}\n");
  y = replaced(y, "at: 10ms", "at: 1ms");
  const CliRun r = run(y);
  REQUIRE(r.at(kIn + "resumed") == 1);
  CHECK(r.at("migration_check.web.mismatched") == 0);
  const double fired = r.at("migration_trigger.web.fired_ns");
  INFO("started at " << fired << " ns after " << r.at("migration_trigger.web.checks") << " checks");
  CHECK(fired > 60 * 100e3);  // not before 60 beats of 100 us
  CHECK(fired < 30e6);
  // Checked every 100 us from 1 ms until it held.
  CHECK(r.at("migration_trigger.web.checks") == (fired - 1e6) / 100e3 + 1);
  CHECK(r.at(kOut + "converged") == 1);

  // A condition that never holds: no migration, the VM stays on host a.
  const CliRun never = run(s8_with_heartbeat("    when: {stat: " + kBeat + "operations, at_least: 1000000000}\n"));
  CHECK(never.at_or_zero(kIn + "resumed") == 0);
  CHECK(never.at_or_zero(kOut + "rounds") == 0);
  CHECK(never.at("migration_trigger.web.checks") > 700);
  CHECK(never.at("host.a.vm.web.vcpu0.instructions") > 1e7);
}

TEST_CASE("Migration: a condition naming no statistic is a config error", "[s8][migration][trigger][config]") {
  const auto r = run_cli(s8_with_heartbeat("    when: {stat: host.a.vm.web.workload9.operations}\n"));
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("migrations[0].when.stat") != std::string::npos);
}

TEST_CASE("Migration: the event trace of two hosts has a process per host", "[s8][migration][trace]") {
  // A short run whose migration (from 2 ms, 400 MiB/s) is done by 20 ms.
  std::string y = replaced(read_text(kScenarios + "s8_converge.yaml"), "duration: 90ms", "duration: 20ms");
  y = replaced(replaced(y, "at: 10ms", "at: 2ms"), "max_bandwidth: 100MiB", "max_bandwidth: 400MiB");
  const CliRun r = run(y, {"--trace"});
  REQUIRE(r.at(kIn + "resumed") == 1);
  const YAML::Node events = YAML::LoadFile(r.out_dir + "/events.json")["traceEvents"];
  std::map<int, std::string> process;
  std::map<std::pair<int, int>, std::string> row;
  std::map<std::string, int> count;  // events per "<process> / <row>"
  for (const auto& e : events)
    if (e["ph"].as<std::string>() == "M" && e["name"].as<std::string>() == "process_name")
      process[e["pid"].as<int>()] = e["args"]["name"].as<std::string>();
    else if (e["ph"].as<std::string>() == "M" && e["name"].as<std::string>() == "thread_name")
      row[{e["pid"].as<int>(), e["tid"].as<int>()}] = e["args"]["name"].as<std::string>();
  for (const auto& e : events)
    if (e["ph"].as<std::string>() != "M") {
      const int pid = e["pid"].as<int>();
      ++count[process[pid] + " / " + row[{pid, e["tid"].as<int>()}]];
    }
  // Exactly one process per host.
  REQUIRE(process.size() == 2);
  CHECK(process.begin()->second == "host a");
  CHECK(process.rbegin()->second == "host b");
  // Each host's cores ran and recorded; the VM's vCPU ran on a, then on b.
  for (const char* r : {"host a / cores cpu1", "host b / cores cpu1", "host a / vm web vcpu0",
                        "host b / vm web vcpu0", "host b / devices interrupt messages"}) {
    INFO(r);
    CHECK(count[r] > 0);
  }
}
