// The user-space poll-mode driver (docs/io.md, "Poll-mode driver"): a
// program claims its NIC function from the guest kernel and drives the
// transmit ring itself; the device reads the frames from the program's own
// buffers. Checked through the network peer, which sees every frame and its
// sequence number.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <string>

#include "system/cli_harness.h"

using vmx::test::run_cli;

namespace {

std::string pmd_yaml(const std::string& nic, const std::string& buffer, unsigned frames, unsigned size = 1514) {
  return fmt::format(R"(
duration: 20ms
platform:
  cores: 2
  memory: 1GiB
  quantum: 1us
  nic:
    enabled: true
    peer: {{mode: sink}}
hypervisor:
  posted_interrupts: true
  zero_pages: false
vms:
  - name: a
    memory: 32MiB
    nic: {}
    workloads:
      - type: net_stream
        driver: pmd
        size: {}
        frames: {}
        batch: 16
        buffer: {}
)",
                     nic, size, frames, buffer);
}

}  // namespace

TEST_CASE("PMD over a VF: every frame reaches the peer in order, without the kernel's stack or an exit per frame",
          "[net][pmd][system]") {
  auto r = run_cli(pmd_yaml("{type: vf, vf: 0}", "1MiB", 3000));
  REQUIRE(r.exit_code == 0);
  CHECK(r.at("vm.a.workload0.threads_done") == 1);
  CHECK(r.at("vm.a.workload0.frames") == 3000);
  CHECK(r.at("vm.a.workload0.no_device") == 0);
  // The device read what the program wrote, from the addresses the program
  // looked up: every frame carries its header and the next sequence number.
  CHECK(r.at("system.nic.vf0.tx_packets") == 3000);
  CHECK(r.at("system.nic.vf0.dma_faults") == 0);
  CHECK(r.at("system.peer.rx_packets") >= 2990);  // the last few may still be on the wire
  CHECK(r.at("system.peer.rx_headed") == r.at("system.peer.rx_packets"));
  CHECK(r.at("system.peer.rx_sequence_gaps") == 0);
  // The kernel's stack sent nothing and took no interrupt; the doorbell
  // rang once per batch of 16 (and when the ring filled).
  CHECK(r.at("vm.a.kernel.net.tx_frames") == 0);
  CHECK(r.at("vm.a.kernel.net.interrupts") == 0);
  CHECK(r.at("vm.a.workload0.doorbells") >= 3000 / 16);
  CHECK(r.at("vm.a.workload0.doorbells") < 3000 / 4);
  // The VF's registers are mapped by EPT: no exit per doorbell (the few
  // exits are the guest's timer and idle).
  CHECK(r.at("vm.a.vcpu0.exits") < r.at("vm.a.workload0.doorbells") / 4);
}

TEST_CASE("PMD with fewer buffers than descriptors: a buffer is not rewritten while the device may read it",
          "[net][pmd][system]") {
  // 4 KiB of 2 KiB slots: two frames in flight at most.
  auto r = run_cli(pmd_yaml("{type: vf, vf: 0}", "4KiB", 500));
  REQUIRE(r.exit_code == 0);
  CHECK(r.at("vm.a.workload0.frames") == 500);
  CHECK(r.at("system.nic.vf0.tx_packets") == 500);
  CHECK(r.at("system.peer.rx_headed") == r.at("system.peer.rx_packets"));
  CHECK(r.at("system.peer.rx_sequence_gaps") == 0);
  CHECK(r.at("vm.a.workload0.full_polls") > 0);  // it did wait for the device
}

TEST_CASE("PMD over the emulated NIC: each register access traps, the frames still go out",
          "[net][pmd][emulated][system]") {
  auto r = run_cli(pmd_yaml("{type: emulated}", "64KiB", 1000, 256));
  REQUIRE(r.exit_code == 0);
  CHECK(r.at("vm.a.workload0.frames") == 1000);
  CHECK(r.at("vm.a.nic.tx_packets") == 1000);
  CHECK(r.at("vm.a.nic.doorbells") == r.at("vm.a.workload0.doorbells"));
  CHECK(r.at_or_zero("vm.a.vcpu0.exit_reasons.EPT_VIOLATION.cycles.count") >= r.at("vm.a.workload0.doorbells"));
  CHECK(r.at("system.peer.rx_sequence_gaps") == 0);
}

TEST_CASE("PMD over virtio-net: the kernel keeps the device and the program reports none", "[net][pmd][system]") {
  auto r = run_cli(pmd_yaml("{type: virtio}", "64KiB", 100));
  REQUIRE(r.exit_code == 0);
  CHECK(r.at("vm.a.workload0.no_device") == 1);
  CHECK(r.at("vm.a.workload0.frames") == 0);
}
