// S8 (docs/migration.md): live migration of a running VM between two
// simulated hosts by iterative pre-copy. Below the bandwidth the rounds
// shrink and the migration converges; above it they do not, and the forced
// switchover has a longer downtime. The destination's memory equals the
// source's at switchover page by page, and the guest's pattern check,
// filled before and checked after the move, passes. The three kinds of
// dirty tracking take very different numbers of exits for the same pages.
#include <catch2/catch.hpp>

#include <string>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;
using vmx::test::CliRun;

namespace {
const std::string kScenarios = std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/";
const std::string kOut = "host.a.vm.web.migration.";
const std::string kIn = "host.b.vm.web.migration_in.";

CliRun run(const std::string& yaml) { return vmx::test::run_ok(yaml); }

std::string with_tracking(const std::string& yaml, const std::string& mode) {
  std::string out = yaml;
  const std::string key = "tracking: pml";
  const auto at = out.find(key);
  REQUIRE(at != std::string::npos);
  out.replace(at, key.size(), "tracking: " + mode);
  return out;
}

double round_sent(const CliRun& r, int k) { return r.at(kOut + "round" + std::to_string(k) + ".pages_sent"); }

/// The migration completed: every frame arrived, the VM runs at the
/// destination, and every page there equals the source's at switchover.
void check_moved(const CliRun& r) {
  CHECK(r.at(kIn + "resumed") == 1);
  CHECK(r.at(kIn + "lost_frames") == 0);
  CHECK(r.at(kIn + "frames") == r.at(kOut + "frames"));
  CHECK(r.at("migration_check.web.pages") > 500);
  CHECK(r.at("migration_check.web.mismatched") == 0);
  CHECK(r.at("host.b.vm.web.vcpu0.instructions") > 1e6);  // the guest ran on at the destination
}
}  // namespace

TEST_CASE("S8: below the bandwidth the rounds shrink, the VM moves intact and its check passes there",
          "[s8][migration]") {
  const CliRun r = run(read_text(kScenarios + "s8_converge.yaml"));
  const int rounds = static_cast<int>(r.at(kOut + "rounds"));
  INFO("rounds " << rounds << ", round1 " << round_sent(r, 1) << ", final " << r.at(kOut + "final_pages"));
  CHECK(r.at(kOut + "converged") == 1);
  REQUIRE(rounds >= 3);
  for (int k = 1; k + 1 < rounds; ++k) CHECK(round_sent(r, k + 1) <= round_sent(r, k));
  CHECK(round_sent(r, rounds - 1) * 4 < round_sent(r, 1));  // geometric, not linear
  CHECK(r.at(kOut + "final_pages") * 4 < round_sent(r, 1));
  check_moved(r);
  // The pattern check filled its memory before the migration and checked it
  // after the VM resumed at the destination (its end is past the resumption).
  CHECK(r.at("host.a.vm.web.workload1.threads_done") == 1);
  CHECK(r.at("host.a.vm.web.workload1.mismatches") == 0);
  const double resumed_cycles = (10e-3 + r.at(kIn + "total_ns") * 1e-9) * 3e9;  // at: 10ms, 3 GHz
  CHECK(r.at("host.a.vm.web.workload1.end_cycle") > resumed_cycles);
  // The migration thread's work is CPU time of its core on the source.
  CHECK(r.at(kOut + "thread_cycles") > 0);
}

TEST_CASE("S8: above the bandwidth the rounds do not shrink and the forced switchover costs downtime",
          "[s8][migration]") {
  const CliRun c = run(read_text(kScenarios + "s8_converge.yaml"));
  const CliRun d = run(read_text(kScenarios + "s8_diverge.yaml"));
  const int rounds = static_cast<int>(d.at(kOut + "rounds"));
  CHECK(d.at(kOut + "converged") == 0);
  CHECK(rounds == 6);  // max_rounds
  for (int k = 3; k < rounds; ++k) {
    INFO("round " << k);
    CHECK(round_sent(d, k) > 0.9 * round_sent(d, 2));  // the whole working set, every round
  }
  check_moved(d);
  // Downtime follows what remains at switchover: the diverging VM pauses with
  // the whole working set dirty, sent at line rate (10 Gbit/s), at the least.
  const double final_bytes = d.at(kOut + "final_pages") * 4096;
  INFO("downtime converge " << c.at(kIn + "downtime_ns") << " ns, diverge " << d.at(kIn + "downtime_ns") << " ns");
  CHECK(d.at(kIn + "downtime_ns") > final_bytes / 1.25e9 * 1e9);
  CHECK(d.at(kIn + "downtime_ns") > 3 * c.at(kIn + "downtime_ns"));
  CHECK(d.at(kOut + "final_pages") > 3 * c.at(kOut + "final_pages"));
}

TEST_CASE("S8: PML takes far fewer exits than write protection for the same pages, dirty-flag scans none",
          "[s8][migration][dirty]") {
  const std::string base = read_text(kScenarios + "s8_converge.yaml");
  const CliRun pml = run(base), wp = run(with_tracking(base, "write_protect")),
               bits = run(with_tracking(base, "dirty_bits"));
  const std::string dl = "host.a.vm.web.dirty_log.";
  for (const CliRun* r : {&pml, &wp, &bits}) check_moved(*r);
  // The same dirty set, about: the workload and the rounds are the same.
  const double dirtied = pml.at(kOut + "pages_dirtied");
  CHECK(wp.at(kOut + "pages_dirtied") > 0.7 * dirtied);
  CHECK(wp.at(kOut + "pages_dirtied") < 1.3 * dirtied);
  CHECK(bits.at(kOut + "pages_dirtied") > 0.7 * dirtied);
  CHECK(bits.at(kOut + "pages_dirtied") < 1.3 * dirtied);
  // Write protection: an exit per page and round (pages first backed during
  // the migration are logged by their backing fault instead); PML: only its
  // log-full exits; dirty flags: no tracking exit, a scan of the EPT instead.
  INFO("wp exits " << wp.at(dl + "wp_exits") << ", pml-full exits " << pml.at(dl + "pml_full_exits"));
  CHECK(wp.at(dl + "wp_exits") > 0.4 * dirtied);
  CHECK(pml.at(dl + "wp_exits") == 0);
  CHECK(pml.at(dl + "pml_entries") >= 0.9 * dirtied);
  CHECK(pml.at(dl + "pml_full_exits") * 20 < wp.at(dl + "wp_exits"));
  CHECK(bits.at(dl + "wp_exits") == 0);
  CHECK(bits.at(dl + "pml_full_exits") == 0);
  CHECK(bits.at(dl + "scans") > 0);
  CHECK(bits.at(dl + "scan_cycles") > 0);
  CHECK(wp.at(dl + "scans") == 0);
  CHECK(wp.at("host.a.vm.web.vcpu0.exits") > pml.at("host.a.vm.web.vcpu0.exits") + 0.8 * wp.at(dl + "wp_exits"));
}

TEST_CASE("S8: hosts and migrations are validated at load", "[s8][migration][config]") {
  const std::string host_b = "  - name: b\n    platform: {memory: 256MiB, nic: {enabled: true}}\n";
  const std::string two = "duration: 10ms\nhosts:\n  - name: a\n    platform: {memory: 256MiB, nic: {enabled: true}}\n"
                          "    vms: [{name: v, memory: 16MiB}]\n" + host_b;
  CHECK(run_cli(two).exit_code == 0);
  auto r = run_cli("duration: 10ms\nvms: [{name: v, memory: 16MiB}]\nhosts:\n  - name: a\n" + host_b);
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("vms") != std::string::npos);
  r = run_cli("duration: 10ms\nhosts:\n" + host_b);
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("exactly two hosts") != std::string::npos);
  r = run_cli(two + "migrations: [{vm: w, from: a, to: b}]\n");
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("migrations[0].vm") != std::string::npos);
  r = run_cli(two + "migrations: [{vm: v, from: a, to: a}]\n");
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("migrations[0].to") != std::string::npos);
  r = run_cli(two + "migrations: [{vm: v, from: a, to: b, tracking: dirty_bits}]\n");
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("ept_ad") != std::string::npos);
  r = run_cli(two + "migrations: [{vm: v, from: a, to: b, at: 20ms, tracking: write_protect}]\n");
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("migrations[0].at") != std::string::npos);
  r = run_cli("duration: 10ms\nvms: [{name: v, memory: 16MiB}]\nmigrations: [{vm: v, from: a, to: b}]\n");
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("hosts") != std::string::npos);
}
