// S6, same-page merging (docs/memory.md, "Same-page merging";
// configs/scenarios/s6_*.yaml): identical VMs share their identical pages,
// the frames merging frees are back in the allocator, the scanner's CPU time
// grows with pages_to_scan, and with near-identical pages written often
// (false sharing) copy-on-write costs the guests more than merging is worth.
// Small VMs and a fast scanner keep each run short.
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "system/cli_harness.h"

using vmx::test::CliRun;
using vmx::test::run_cli;

namespace {

constexpr unsigned kPages = 128;       // pages of each VM's page_content region
constexpr double kShared = 0.75;       // of which identical across VMs
constexpr unsigned kIdentical = 96;    // kPages * kShared

struct Setup {
  unsigned vms = 3;
  bool ksm = true;
  unsigned pages_to_scan = 1000;
  double write_rate = 0;
  const char* duration = "60ms";
  bool zero_pages = false;
  const char* extra = "";  // more page_content settings
};

std::string config(const Setup& s) {
  std::string y = fmt::format(R"(seed: 5
duration: {}
stop_when_done: false
platform:
  cores: 2
  memory: 256MiB
hypervisor:
  ksm:
    enabled: {}
    pages_to_scan: {}
    sleep: 2ms
    use_zero_pages: {}
vms:
)",
                              s.duration, s.ksm ? "true" : "false", s.pages_to_scan, s.zero_pages ? "true" : "false");
  for (unsigned i = 0; i < s.vms; ++i)
    y += fmt::format(R"(  - name: vm{}
    memory: 16MiB
    workloads:
      - type: page_content
        pages: {}
        shared_fraction: {}
        zero_fraction: 0.125
        write_rate: {}
{})",
                     i, kPages, kShared, s.write_rate, s.extra);
  return y;
}

std::string scenario(const std::string& name) {
  return vmx::test::read_text(std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/" + name);
}

CliRun run_yaml(const std::string& yaml, const std::vector<std::string>& args = {}) {
  return vmx::test::run_ok(yaml, args);
}

CliRun run(const Setup& s) { return vmx::test::run_ok(config(s)); }

double sum_vms(const CliRun& r, unsigned vms, const std::string& stat) {
  double t = 0;
  for (unsigned i = 0; i < vms; ++i) t += r.at(fmt::format("vm.vm{}.{}", i, stat));
  return t;
}

}  // namespace

TEST_CASE("S6: N identical VMs share (N-1)/N of their identical pages, and the freed frames are back in the allocator",
          "[ksm][s6]") {
  // configs/scenarios/s6_ksm_identical.yaml: four VMs, 256 pages each, 60%
  // of them identical across the VMs.
  const CliRun r = run_yaml(scenario("s6_ksm_identical.yaml"));
  const CliRun base = run_yaml(scenario("s6_ksm_identical.yaml"), {"--set", "hypervisor.ksm.enabled=false"});
  const unsigned n = 4;
  const double identical = r.at("vm.vm0.workload0.shared_pages");
  REQUIRE(identical == 153);  // floor(256 * 0.6)
  INFO("full scans " << r.at("hypervisor.ksm.full_scans"));
  REQUIRE(r.at("hypervisor.ksm.full_scans") >= 3);
  // Every VM filled its identical pages, and each of them is now mapped to
  // a merged frame (the guest kernel's identical pages merge too).
  for (unsigned i = 0; i < n; ++i) {
    CHECK(r.at(fmt::format("vm.vm{}.workload0.shared_pages", i)) == identical);
    CHECK(r.at(fmt::format("vm.vm{}.ksm.shared_pages", i)) >= identical);
  }
  // Frames saved: at least (N-1)/N of the N * identical identical pages.
  const double sharing = r.at("hypervisor.ksm.pages_sharing");
  const double shared = r.at("hypervisor.ksm.pages_shared");
  CHECK(sharing >= (n - 1) * identical);
  // Each merged frame serves N pages or more: sharing / shared at least N - 1.
  CHECK(sharing / shared >= (n - 1));
  CHECK(r.at("hypervisor.ksm.merges") >= n * identical);
  CHECK(r.at("hypervisor.ksm.cow_breaks") == 0);  // nobody writes the merged pages
  // The duplicates went back to the frame allocator's free lists: the host
  // uses exactly the frames saved fewer than without merging (frames whose
  // last mapping went and that await pruning are still held).
  const double saved = base.at("hypervisor.frames.frames_used") - r.at("hypervisor.frames.frames_used");
  CHECK(saved == sharing - r.at("hypervisor.ksm.pages_stale"));
  CHECK(r.at("hypervisor.frames.frames_free") - base.at("hypervisor.frames.frames_free") == saved);
  CHECK(r.at("hypervisor.frames.frees") >= sharing);
  // The scanner's time is that of core 0's vCPUs (vm0 and vm2 run there).
  CHECK(r.at("hypervisor.ksm.scanner_cycles") > 0);
  CHECK(r.at("vm.vm0.vcpu0.time.hypervisor_cycles") > base.at("vm.vm0.vcpu0.time.hypervisor_cycles"));
  // Merging is off by default: no ksm statistics at all.
  CHECK(base.at_or_zero("hypervisor.ksm.pages_scanned") == 0);
  CHECK(base.at_or_zero("vm.vm0.ksm.shared_pages") == 0);
}

TEST_CASE("S6: zero pages merge into the zero frame with use_zero_pages", "[ksm][s6]") {
  Setup s;
  s.vms = 2;
  s.zero_pages = true;
  // And a read working set of 32 pages that moves on every 5 ms.
  s.extra = "        working_set: 32\n        phase: 5ms\n";
  const CliRun r = run(s);
  CHECK(r.at("vm.vm0.workload0.phases") >= 8);
  // 16 zero pages per VM (kPages * 0.125), and the guest kernel's own.
  CHECK(r.at("hypervisor.ksm.zero_pages_sharing") >= 2 * 16);
  CHECK(r.at("vm.vm0.workload0.zero_pages") == 16);
  CHECK(r.at("hypervisor.ksm.pages_sharing") >= kIdentical);
}

TEST_CASE("S6: the scanner's CPU time grows with pages_to_scan", "[ksm][s6]") {
  Setup few;
  few.vms = 2;
  few.pages_to_scan = 25;
  few.duration = "40ms";
  Setup many = few;
  many.pages_to_scan = 200;
  const CliRun a = run(few);
  const CliRun b = run(many);
  const double ca = a.at("hypervisor.ksm.scanner_cycles"), cb = b.at("hypervisor.ksm.scanner_cycles");
  INFO("scanner cycles: " << ca << " with 25 pages per batch, " << cb << " with 200");
  CHECK(b.at("hypervisor.ksm.pages_scanned") >= 6 * a.at("hypervisor.ksm.pages_scanned"));
  CHECK(cb > 4 * ca);
  // It takes time from the vCPU on its core (core 0): hypervisor time there grows.
  CHECK(b.at("vm.vm0.vcpu0.time.hypervisor_cycles") > a.at("vm.vm0.vcpu0.time.hypervisor_cycles"));
}

TEST_CASE("S6: false sharing: frequent writes to near-identical pages make copy-on-write cost more than merging saves",
          "[ksm][s6]") {
  // configs/scenarios/s6_ksm_false_sharing.yaml (a byte of a random shared
  // page rewritten 20000 times a second in each VM) and the same VMs with the
  // shared pages only read, each with merging on and off.
  // Half the config's 100 ms keeps the test short (four runs); every
  // relation below already holds by then.
  const std::string yaml = scenario("s6_ksm_false_sharing.yaml");
  const std::vector<std::string> half = {"--set", "duration=50ms"};
  std::vector<std::string> quiet = {"--set", "vms[0].workloads[0].write_rate=0", "--set",
                                    "vms[1].workloads[0].write_rate=0"};
  std::vector<std::string> off = {"--set", "hypervisor.ksm.enabled=false"};
  quiet.insert(quiet.end(), half.begin(), half.end());
  off.insert(off.end(), half.begin(), half.end());
  std::vector<std::string> quiet_off = quiet;
  quiet_off.insert(quiet_off.end(), off.begin(), off.end() - 2);
  const CliRun w = run_yaml(yaml, half), wo = run_yaml(yaml, off), q = run_yaml(yaml, quiet), qo = run_yaml(yaml, quiet_off);
  const unsigned n = 2;
  const double identical = w.at("vm.vm0.workload0.shared_pages");
  REQUIRE(identical == 96);
  REQUIRE(w.at("vm.vm0.workload0.shared_writes") > 500);
  // Quiet: sharing holds, almost no copy-on-write.
  const double q_cow = q.at("hypervisor.ksm.cow_breaks");
  CHECK(q.at("hypervisor.ksm.pages_sharing") >= identical);
  CHECK(q_cow < 0.05 * q.at("hypervisor.ksm.pages_sharing"));
  // False sharing: the writes break sharing again and again (a rewritten
  // page merges again once its checksum holds for a scan, then breaks again).
  const double w_cow = w.at("hypervisor.ksm.cow_breaks");
  CHECK(w_cow > 10 * std::max(1.0, q_cow));
  CHECK(sum_vms(w, n, "ksm.cow_breaks") == w_cow);
  // Merging saves about as many frames in both regimes at the end, but
  // with false sharing it has copied more pages back (each copy-on-write
  // allocates a frame) than it saves.
  CHECK(w_cow > w.at("hypervisor.ksm.pages_sharing"));
  CHECK(w.at("hypervisor.ksm.merges") > w.at("hypervisor.ksm.pages_sharing") + w_cow / 2);
  // What it costs the guests: their work with merging on relative to off.
  // vm1 runs on core 1, away from the scanner (core 0): its work measures
  // the copy-on-write alone.
  const double q_ratio = q.at("vm.vm1.workload0.operations") / qo.at("vm.vm1.workload0.operations");
  const double w_ratio = w.at("vm.vm1.workload0.operations") / wo.at("vm.vm1.workload0.operations");
  INFO("vm1's work with merging on / off: quiet " << q_ratio << ", false sharing " << w_ratio);
  CHECK(q_ratio > 0.98);
  CHECK(w_ratio < q_ratio - 0.03);
  CHECK(w.at("vm.vm1.ksm.cow_cycles") > 0);
}
