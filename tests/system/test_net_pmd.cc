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
  // The summary has a network block.
  CHECK(r.out.find("NIC (10 Gbit/s link)") != std::string::npos);
  CHECK(r.out.find("vf0: tx 3000 frames") != std::string::npos);
  CHECK(r.out.find("(0 with sequence gaps)") != std::string::npos);
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

namespace {

std::string rx_yaml(const std::string& driver, unsigned rate, unsigned count) {
  return fmt::format(R"(
duration: 40ms
platform:
  cores: 2
  memory: 1GiB
  quantum: 1us
  nic:
    enabled: true
    peer: {{mode: generate, arrivals: constant, rate: {}, count: {}, packet_size: 1000, dest_function: 1, start: 18ms}}
hypervisor:
  posted_interrupts: true
  zero_pages: false
vms:
  - name: a
    memory: 32MiB
    nic: {{type: vf, vf: 0}}
    workloads:
      - type: net_rx
        driver: {}
        frames: {}
        buffer: 1MiB
)",
                     rate, count, driver, count);
}

}  // namespace

TEST_CASE("net_rx: the PMD and the kernel receive every frame the peer sends, in order", "[net][pmd][system]") {
  for (const char* driver : {"pmd", "kernel"}) {
    auto r = run_cli(rx_yaml(driver, 100000, 500));
    REQUIRE(r.exit_code == 0);
    INFO(driver);
    CHECK(r.at("system.peer.generated") == 500);
    CHECK(r.at("vm.a.workload0.frames") == 500);
    CHECK(r.at("vm.a.workload0.bytes") == 500 * 1000);
    CHECK(r.at("vm.a.workload0.lost") == 0);
    CHECK(r.at("vm.a.workload0.threads_done") == 1);
    CHECK(r.at("system.nic.vf0.rx_drops") == 0);
    CHECK(r.at("system.nic.rx_fifo_drops") == 0);
  }
  // The PMD takes no interrupt; the kernel one per frame or batch of frames.
  auto pmd = run_cli(rx_yaml("pmd", 100000, 500));
  CHECK(pmd.at("vm.a.kernel.net.interrupts") == 0);
  CHECK(pmd.at("system.nic.vf0.interrupts") == 0);
}

TEST_CASE("net_rx: beyond what the kernel's path keeps up with, frames are lost and counted", "[net][pmd][system]") {
  // 2 million frames per second: about 0.5 us each, less than the kernel's
  // interrupt, system call and copy per frame.
  auto kernel = run_cli(rx_yaml("kernel", 2000000, 8000), {"--set", "vms[0].workloads[0].frames=0"});
  REQUIRE(kernel.exit_code == 0);
  CHECK(kernel.at("system.peer.generated") == 8000);
  CHECK(kernel.at("vm.a.workload0.lost") > 1000);
  CHECK(kernel.at("system.nic.vf0.rx_drops") > 1000);  // no free descriptor
  // The same stream to the PMD: nothing lost.
  auto pmd = run_cli(rx_yaml("pmd", 2000000, 8000));
  REQUIRE(pmd.exit_code == 0);
  CHECK(pmd.at("vm.a.workload0.frames") == 8000);
  CHECK(pmd.at("vm.a.workload0.lost") == 0);
}
