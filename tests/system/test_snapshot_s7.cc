// S7 (docs/memory.md, "Snapshots"): a snapshot of a VM that writes
// sequentially vs one that writes at random words. The sequential writer
// takes about one exit and one page copy per page it fills (write
// amplification about 1); the random writer lands almost every update on a
// page not saved yet: many more exits per byte written and a write
// amplification in the hundreds.
#include <catch2/catch.hpp>

#include <string>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;

namespace {
const std::string kScenarios = std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/";

struct S7 {
  double exits, cow_bytes, written_bytes, copier_cycles;
};

S7 run(const std::string& name) {
  auto r = run_cli(read_text(kScenarios + name));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  S7 s;
  s.exits = r.at("vm.writer.snapshot.exits");
  s.cow_bytes = r.at("vm.writer.snapshot.cow_pages") * 4096;
  s.written_bytes = r.at("vm.writer.workload0.operations") * 8;  // one 8-byte store per operation
  s.copier_cycles = r.at("vm.writer.snapshot.copier_cycles");
  // The exits the snapshot caused are EPT violations of the vCPU.
  CHECK(r.at("system.cpu0.exit_reasons.EPT_VIOLATION") >= s.exits);  // the writer is pinned to core 0
  return s;
}
}  // namespace

TEST_CASE("S7: a random writer takes more snapshot exits and far more write amplification than a sequential one",
          "[s7][snapshot]") {
  const S7 seq = run("s7_sequential.yaml"), rnd = run("s7_random.yaml");
  REQUIRE(seq.written_bytes > 0);
  REQUIRE(rnd.written_bytes > 0);
  const double wa_seq = seq.cow_bytes / seq.written_bytes, wa_rnd = rnd.cow_bytes / rnd.written_bytes;
  INFO("sequential: exits " << seq.exits << " WA " << wa_seq << "; random: exits " << rnd.exits << " WA " << wa_rnd);
  CHECK(seq.exits > 0);
  CHECK(wa_seq > 0.5);
  CHECK(wa_seq < 2.0);  // a page copied per page written
  CHECK(wa_rnd > 50 * wa_seq);
  CHECK(rnd.exits / rnd.written_bytes > 50 * seq.exits / seq.written_bytes);  // exits per byte written
  CHECK(seq.copier_cycles > 0);  // the copier ran on its core
}

TEST_CASE("S7: snapshot settings are validated at load", "[s7][snapshot][config]") {
  const std::string base = "duration: 10ms\nvms:\n  - name: v\n    memory: 32MiB\n";
  auto r = run_cli(base + "    snapshot:\n      restore_at: 5ms\n");
  CHECK(r.exit_code != 0);
  CHECK(r.err.find("vms[0].snapshot.at") != std::string::npos);
  r = run_cli(base + "    snapshot:\n      at: 5ms\n      restore_at: 4ms\n");
  CHECK(r.exit_code != 0);
  CHECK(r.err.find("vms[0].snapshot.restore_at") != std::string::npos);
  r = run_cli(base + "    paging: shadow\n    snapshot:\n      at: 5ms\n");
  CHECK(r.exit_code != 0);
  CHECK(r.err.find("paging ept") != std::string::npos);
  r = run_cli(base + "    snapshot:\n      at: 20ms\n");
  CHECK(r.exit_code != 0);
  CHECK(r.err.find("before duration") != std::string::npos);
  r = run_cli("duration: 10ms\nhypervisor:\n  snapshot:\n    copier_core: 7\n" + base.substr(15));
  CHECK(r.exit_code != 0);
  CHECK(r.err.find("hypervisor.snapshot.copier_core") != std::string::npos);
}
