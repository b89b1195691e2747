// Shadow paging end to end (docs/mmu.md, "Shadow paging"), and scenario S9:
// shadow paging against EPT on the workload each one loses on.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;

namespace {

std::string shadow_vm(const std::string& workloads, const std::string& extra = "") {
  return fmt::format(R"(seed: 7
duration: 200ms
platform:
  cores: 1
  memory: 512MiB
{}
vms:
  - name: t
    paging: shadow
    memory: 64MiB
    workloads:
{}
)",
                     extra, workloads);
}

std::string scenario(const std::string& name) {
  return read_text(std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/" + name);
}

}  // namespace

TEST_CASE("shadow paging: every new page costs the guest's own fault, a page-table write and a fill, "
          "and a second pass costs nothing") {
  auto touch = [](int pages, int passes) {
    auto r = run_cli(shadow_vm(fmt::format("      - type: touch_pages\n        pages: {}\n        passes: {}\n", pages,
                                           passes)));
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    REQUIRE(r.at("vm.t.workload0.threads_done") == 1);
    CHECK(r.at_or_zero("vm.t.vcpu0.exit_reasons.EPT_VIOLATION.cycles.count") == 0);  // no EPT at all
    return r;
  };
  auto a = touch(100, 1), b = touch(100, 3), c = touch(300, 1);
  auto d = [](const vmx::test::CliRun& x, const vmx::test::CliRun& y, const std::string& stat) {
    return y.at("vm.t.shadow." + stat) - x.at("vm.t.shadow." + stat);
  };
  // 200 more pages: 200 more guest page faults reflected to the guest, at
  // least one single-stepped page-table write each (the guest's PTE store),
  // and a fill for the page itself.
  CHECK(d(a, c, "reflected") == 200);
  CHECK(d(a, c, "pt_writes") >= 200);
  CHECK(d(a, c, "fills") >= 2 * 200);
  CHECK(c.at("vm.t.vcpu0.exit_reasons.MONITOR_TRAP_FLAG.cycles.count") == c.at("vm.t.shadow.pt_writes"));
  // Later passes find everything in the shadow tables.
  CHECK(b.at("vm.t.vcpu0.exits") == a.at("vm.t.vcpu0.exits"));
  CHECK(b.at("vm.t.shadow.fills") == a.at("vm.t.shadow.fills"));
}

TEST_CASE("shadow paging keeps copy-on-write fork and munmap correct") {
  auto r = run_cli(shadow_vm("      - type: fork_churn\n        working_set: 256KiB\n        iterations: 10\n"
                             "      - type: mmap_churn\n        region: 128KiB\n        iterations: 20\n"));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.at("vm.t.workload0.threads_done") == 1);
  CHECK(r.at("vm.t.workload1.threads_done") == 1);
  CHECK(r.at("vm.t.workload0.corrupt_pages") == 0);  // children never changed the parent's memory
  // Each fork and child exit switches address spaces, munmap invalidates.
  CHECK(r.at("vm.t.shadow.cr3_loads") >= 20);
  CHECK(r.at("vm.t.shadow.invlpgs") > 0);
  CHECK(r.at("vm.t.shadow.pages_zapped") > 0);  // the children's tables went with them
}

TEST_CASE("S9: on fork and mmap churn shadow paging exits far more and gets less done than EPT") {
  auto r = run_cli(scenario("s9_shadow_vs_ept_churn.yaml"), {"--set", "duration=25ms"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const double ept_exits = r.at("vm.ept.vcpu0.exits"), shadow_exits = r.at("vm.shadow.vcpu0.exits");
  INFO("exits: ept " << ept_exits << ", shadow " << shadow_exits);
  CHECK(shadow_exits > 50 * std::max(ept_exits, 1.0));
  CHECK(r.at("vm.shadow.shadow.pt_writes") > 0);
  CHECK(r.at("vm.shadow.shadow.cr3_loads") > 0);
  CHECK(r.at("vm.ept.workload0.operations") > 2 * r.at("vm.shadow.workload0.operations"));
  CHECK(r.at("vm.shadow.workload0.corrupt_pages") == 0);
  CHECK(r.at("vm.ept.workload0.corrupt_pages") == 0);
}

TEST_CASE("S9: on random accesses beyond the TLB's reach EPT pays longer walks than shadow paging") {
  auto r = run_cli(scenario("s9_shadow_vs_ept_tlb.yaml"));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  auto per_walk = [&](const std::string& vm, const std::string& what) {
    return r.at("vm." + vm + ".vcpu0." + what) / r.at("vm." + vm + ".vcpu0.walks");
  };
  INFO("refs per walk: ept " << per_walk("ept", "walk_refs") << ", shadow " << per_walk("shadow", "walk_refs"));
  INFO("cycles per walk: ept " << per_walk("ept", "walk_cycles") << ", shadow " << per_walk("shadow", "walk_cycles"));
  // In the measured interval the working set is mapped: few exits either way.
  CHECK(r.at("vm.shadow.vcpu0.exits") < 100);
  CHECK(r.at("vm.shadow.vcpu0.walks") > 10000);
  CHECK(r.at("vm.shadow.vcpu0.walk_ept_refs") == 0);  // one-dimensional walks
  CHECK(r.at("vm.ept.vcpu0.walk_ept_refs") > 0);
  CHECK(per_walk("ept", "walk_refs") > 1.5 * per_walk("shadow", "walk_refs"));
  CHECK(per_walk("ept", "walk_cycles") > 1.5 * per_walk("shadow", "walk_cycles"));
  CHECK(r.at("vm.shadow.workload0.operations") > r.at("vm.ept.workload0.operations"));
}

TEST_CASE("the guest sees the same page faults under shadow paging as under EPT") {
  // Shadow tables that lagged behind the guest's would let accesses through
  // that the guest's own tables forbid (a copy-on-write page still writable)
  // or fault where they allow it; either changes the faults the guest takes.
  const std::string work = "      - type: fork_churn\n        working_set: 128KiB\n        iterations: 12\n"
                           "        child_writes: 8\n        parent_writes: 8\n"
                           "      - type: mmap_churn\n        region: 64KiB\n        iterations: 16\n";
  auto shadow = run_cli(shadow_vm(work));
  auto ept = run_cli(shadow_vm(work), {"--set", "vms[0].paging=ept"});
  INFO(shadow.err << ept.err);
  REQUIRE(shadow.exit_code == 0);
  REQUIRE(ept.exit_code == 0);
  REQUIRE(shadow.at("vm.t.workload0.threads_done") == 1);
  REQUIRE(ept.at("vm.t.workload0.threads_done") == 1);
  CHECK(ept.at("vm.t.kernel.cow_faults") > 0);
  CHECK(shadow.at("vm.t.kernel.page_faults") == ept.at("vm.t.kernel.page_faults"));
  CHECK(shadow.at("vm.t.kernel.cow_faults") == ept.at("vm.t.kernel.cow_faults"));
  CHECK(shadow.at("vm.t.shadow.reflected") == shadow.at("vm.t.kernel.page_faults"));
  CHECK(shadow.at("vm.t.workload0.corrupt_pages") == 0);
}
