// Memory overcommit in the guest (docs/memory.md, "Ballooning", "Guest
// swap"): S5's knee, frames freed by a balloon serving another VM, and
// swapped pages coming back with their contents.
#include <catch2/catch.hpp>

#include <string>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;

namespace {

std::string s5() { return read_text(std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/s5_balloon_knee.yaml"); }

}  // namespace

TEST_CASE("S5: as the balloon grows, free memory falls and major faults stay flat until it reaches the working set",
          "[balloon][s5]") {
  // The VM has about 59 MiB for its programs; its working set is 24 MiB, so
  // a balloon of up to about 35 MiB leaves room for it.
  struct Point {
    const char* target;
    double major = 0, free = 0, ops = 0, swap_out = 0;
  };
  std::vector<Point> points(4);
  const char* targets[] = {"0MiB", "16MiB", "32MiB", "40MiB"};
  for (std::size_t i = 0; i < 4; ++i) points[i].target = targets[i];
  for (auto& p : points) {
    auto r = run_cli(s5(), {"--set", std::string("vms[0].balloon.target=") + p.target});
    INFO(p.target << "\n" << r.err << r.out);
    REQUIRE(r.exit_code == 0);
    p.major = r.at("vm.guest.kernel.memory.major_faults");
    p.free = r.at("vm.guest.balloon.guest_free_bytes");  // the guest's own report, read by the host
    p.ops = r.at("vm.guest.workload0.operations");
    p.swap_out = r.at("vm.guest.kernel.memory.swap_out");
    // The host got back one frame per inflated page (all were backed: eager population).
    CHECK(r.at("vm.guest.balloon.frames_freed") == r.at("vm.guest.balloon.inflated_pages"));
    CHECK(r.at("vm.guest.balloon.inflated_pages") == r.at("vm.guest.balloon.ballooned_pages"));
  }
  // Above the working set: no major fault, no swap, and free memory falls
  // by the balloon's size.
  for (std::size_t i = 0; i < 3; ++i) {
    INFO(points[i].target);
    CHECK(points[i].major == 0);
    CHECK(points[i].swap_out == 0);
  }
  CHECK(points[0].free - points[1].free == Approx(16.0 * (1 << 20)).margin(1 << 20));
  CHECK(points[1].free - points[2].free == Approx(16.0 * (1 << 20)).margin(1 << 20));
  // Below it: the guest swaps its working set, major faults rise steeply
  // and the program's progress collapses.
  CHECK(points[3].swap_out > 500);
  CHECK(points[3].major > 50);
  CHECK(points[3].ops * 4 < points[2].ops);
}

TEST_CASE("balloon: frames one VM's balloon frees are reused by another VM", "[balloon]") {
  // 56 MiB of guest zone. VM a touches 16 MiB and unmaps it (the frames
  // stay backed, free in the guest); from 30 ms its balloon takes them and
  // the host gets them back. VM b touches 40 MiB meanwhile: without a's
  // frames the host has too few for it.
  const std::string cfg = R"(seed: 2
duration: 150ms
platform:
  cores: 2
  memory: 88MiB
hypervisor:
  reserved_memory: 32MiB
vms:
  - name: a
    memory: 32MiB
    pin: "0"
    balloon:
      enabled: true
      schedule:
        - at: 30ms
          target: 24MiB
    workloads:
      - type: mmap_churn
        region: 16MiB
        iterations: 1
  - name: b
    memory: 48MiB
    pin: "1"
    workloads:
      - type: touch_pages
        pages: 10240
        passes: 1
)";
  auto with = run_cli(cfg);
  INFO(with.err << with.out);
  REQUIRE(with.exit_code == 0);
  CHECK(with.out.find("note: b:") == std::string::npos);
  CHECK(with.at("vm.b.workload0.threads_done") == 1);
  CHECK(with.at("vm.a.balloon.frames_freed") >= 4096);
  CHECK(with.at("hypervisor.frames.frees") >= with.at("vm.a.balloon.frames_freed"));
  // The guest zone was never larger than 56 MiB, yet both VMs' pages were
  // backed at some time: more frames were handed out than the zone has.
  CHECK(with.at("hypervisor.totals.guest_frames") > 56 * 256);

  auto without = run_cli(cfg, {"--set", "vms[0].balloon.enabled=false"});
  INFO(without.err << without.out);
  REQUIRE(without.exit_code == 0);
  CHECK(without.out.find("note: b: stopped") != std::string::npos);
}

TEST_CASE("guest swap: pages written before the balloon pushed them out read back intact", "[balloon][swap]") {
  // pattern_check fills 8 MiB, holds it 30 ms and checks it. Meanwhile the
  // balloon grows to 26 MiB of the VM's 32 MiB (the pattern is swapped out
  // to the virtio-blk disk) and shrinks back; reading the pattern faults it
  // back in from the disk.
  const std::string cfg = R"(seed: 4
duration: 400ms
platform:
  cores: 1
  memory: 256MiB
hypervisor:
  reserved_memory: 32MiB
  ept_populate: eager
  zero_pages: false
vms:
  - name: g
    memory: 32MiB
    swap: 32MiB
    balloon:
      enabled: true
      schedule:
        - at: 12ms
          target: 26MiB
        - at: 25ms
          target: 0MiB
    workloads:
      - type: pattern_check
        working_set: 8MiB
        hold: 30ms
)";
  auto r = run_cli(cfg);
  INFO(r.err << r.out);
  REQUIRE(r.exit_code == 0);
  CHECK(r.at("vm.g.workload0.threads_done") == 1);
  CHECK(r.at("vm.g.kernel.memory.swap_out") > 1000);
  CHECK(r.at("vm.g.kernel.memory.major_faults") > 1000);
  CHECK(r.at("vm.g.kernel.memory.swap_in") == r.at("vm.g.kernel.memory.major_faults"));
  CHECK(r.at("hypervisor.storage.reads") == r.at("vm.g.virtio_blk.reads"));
  CHECK(r.at("vm.g.workload0.mismatches") == 0);
  CHECK(r.at("vm.g.workload0.checksum") == r.at("vm.g.workload0.expected_checksum"));
}
