// Memory overcommit (docs/memory.md, "Overcommit"): VMs whose memory adds
// up to more than the host's load; the one that faults with no host frame
// left is stopped with a note, its frames return, and the others finish.
#include <catch2/catch.hpp>

#include "system/cli_harness.h"

using vmx::test::run_cli;

namespace {

// 64 MiB of guest memory on the host (128 MiB minus the hypervisor's 64 MiB)
// for 256 + 32 MiB of VM memory. "big" touches 120 MiB, more than the host
// has; "small" touches 2 MiB twice and is done.
const char* kConfig = R"(seed: 3
duration: 400ms
platform:
  cores: 2
  memory: 128MiB
vms:
  - name: big
    memory: 256MiB
    pin: "1"
    workloads:
      - type: touch_pages
        pages: 30720
        passes: 1
  - name: small
    memory: 32MiB
    pin: "0"
    workloads:
      - type: touch_pages
        pages: 512
        passes: 2
)";

}  // namespace

TEST_CASE("overcommit: the VM that runs out of host memory is stopped with a note, the other finishes",
          "[overcommit][memory]") {
  auto r = run_cli(kConfig);
  INFO(r.err);
  INFO(r.out);
  REQUIRE(r.exit_code == 0);  // loads although 288 MiB of VM memory > 128 MiB of host memory
  // The note: which VM, when, and the host memory in use.
  CHECK(r.out.find("note: big: stopped at ") != std::string::npos);
  CHECK(r.out.find("host memory exhausted backing guest-physical") != std::string::npos);
  CHECK(r.out.find("guest memory in use 64 MiB of 64 MiB") != std::string::npos);
  CHECK(r.out.find("note: small:") == std::string::npos);
  // The other VM finished, and the run ended with it: the stopped VM's
  // thread is not waited for.
  CHECK(r.at("vm.small.workload0.threads_done") == 1);
  CHECK(r.at("vm.big.workload0.threads_done") == 0);
  CHECK(r.at("sim.finished") == 1);
  CHECK(r.at("sim.seconds") < 0.4);
  // The big VM's frames went back: what remains in use is the small VM's
  // memory and the hypervisor's structures, far below the 64 MiB peak.
  const double frames_per_mib = 256;
  CHECK(r.at("hypervisor.frames.frames_peak") >= 64 * frames_per_mib);
  CHECK(r.at("hypervisor.frames.frames_used") < 24 * frames_per_mib);
  CHECK(r.at("hypervisor.frames.failures") >= 1);
}

TEST_CASE("overcommit: memory beyond the host's is no longer a config error, a reserve above it still is",
          "[overcommit][memory]") {
  auto bad = run_cli(R"(duration: 1ms
platform:
  memory: 64MiB
hypervisor:
  reserved_memory: 64MiB
vms:
  - name: a
    memory: 16MiB
)");
  CHECK(bad.exit_code != 0);
  CHECK(bad.err.find("platform.memory") != std::string::npos);
  CHECK(bad.err.find("more than hypervisor.reserved_memory") != std::string::npos);
}
