// Guest networking through a passed-through VF (docs/io.md, "Guest
// networking" and "Device passthrough"): request/response with and without
// posted interrupts, scenario S3 (a rogue VF's DMA is blocked and logged,
// no byte of another VM changes), scenario S4 (IOTLB misses and the IOMMU
// page size), and the checks of the vms[].nic section.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <string>
#include <vector>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;

namespace {

std::string scenario(const std::string& name) {
  return read_text(std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/" + name);
}


std::string pingpong_yaml(bool posted, bool busy = false) {
  return fmt::format(R"(
duration: 20ms
platform:
  cores: 2
  memory: 1GiB
  nic:
    enabled: true
hypervisor:
  posted_interrupts: {}
  zero_pages: false
vms:
  - name: a
    memory: 32MiB
    nic: {{type: vf, vf: 1}}
    workloads:
      - type: net_pingpong
        size: 64
        requests: 200
{})",
                     posted ? "true" : "false",
                     busy ? "      - type: compute\n        instructions: 2000\n        iterations: 0\n" : "");
}

}  // namespace

TEST_CASE("VF pingpong: posted interrupts take no exit per packet, remapped ones at least one",
          "[net][passthrough][system]") {
  auto on = run_cli(pingpong_yaml(true));
  auto off = run_cli(pingpong_yaml(false));
  REQUIRE(on.exit_code == 0);
  REQUIRE(off.exit_code == 0);
  for (auto* r : {&on, &off}) {
    CHECK(r->at("vm.a.workload0.replies") == 200);
    CHECK(r->at("vm.a.workload0.stray") == 0);
    CHECK(r->at("vm.a.kernel.net.rx_frames") == 200);
    CHECK(r->at("vm.a.kernel.net.interrupts") == 200);
    CHECK(r->at("system.nic.vf1.rx_packets") == 200);
    CHECK(r->at("system.iommu.faults") == 0);
    // The DMA went through the IOMMU, with the VM's EPT as the domain.
    CHECK(r->at("system.iommu.translations") > 0);
    // Round trip: at least the wire and the peer (2 x 1 us link + 2 us), at
    // most a few microseconds of software on top.
    CHECK(r->at("vm.a.workload0.rtt_ns.p50") > 4000);
    CHECK(r->at("vm.a.workload0.rtt_ns.p50") < 10000);
  }
  const double packets = 200;
  // Posted: the VF's MSI is posted by the remapping unit, no exit for it or
  // its EOI. What exits remain are the guest's own HLT and timer writes.
  CHECK(on.at("system.interrupt_remap.posted") == packets);
  CHECK(on.at_or_zero("system.cpu0.exit_reasons.EXTERNAL_INTERRUPT") +
            on.at_or_zero("system.cpu1.exit_reasons.EXTERNAL_INTERRUPT") ==
        0);
  CHECK(on.at("hypervisor.passthrough.forwarded") == 0);
  CHECK(on.at("hypervisor.totals.injections") == 0);
  // Remapped: every interrupt goes to the hypervisor, which injects it, and
  // the guest's EOI exits: at least one more exit per received packet.
  CHECK(off.at("system.interrupt_remap.remapped") == packets);
  CHECK(off.at("hypervisor.passthrough.forwarded") == packets);
  CHECK(off.at("hypervisor.totals.injections") >= packets);
  CHECK(off.at("vm.a.vcpu0.exits") - on.at("vm.a.vcpu0.exits") >= packets);
  CHECK(off.at("vm.a.workload0.rtt_ns.p50") > on.at("vm.a.workload0.rtt_ns.p50"));
  INFO("exits per packet: posted " << on.at("vm.a.vcpu0.exits") / packets << ", remapped "
                                   << off.at("vm.a.vcpu0.exits") / packets);
}

TEST_CASE("VF pingpong beside a busy thread: (near) zero exits per packet with posting, two without",
          "[net][passthrough][system]") {
  // A compute thread keeps the vCPU from halting, so the only exits a packet
  // can cause are its interrupt's and its EOI's.
  auto on = run_cli(pingpong_yaml(true, true));
  auto off = run_cli(pingpong_yaml(false, true));
  REQUIRE(on.exit_code == 0);
  REQUIRE(off.exit_code == 0);
  const double packets = 200;
  for (auto* r : {&on, &off}) {
    CHECK(r->at("vm.a.workload0.replies") == packets);
    // The woken receiver preempts the compute thread at once. A packet that
    // arrives before the receiver has blocked again needs no wakeup (with
    // coherent caches one of the 200 does, without posting).
    CHECK(r->at("vm.a.kernel.sched.wake_preemptions") == r->at("vm.a.kernel.sched.wakeups"));
    CHECK(r->at("vm.a.kernel.sched.wakeups") >= packets - 1);
  }
  CHECK(on.at("vm.a.vcpu0.exits") / packets < 0.1);
  CHECK(off.at("system.cpu0.exit_reasons.EXTERNAL_INTERRUPT") >= packets);
  CHECK(off.at("vm.a.vcpu0.exits") / packets >= 2);
  INFO("exits per packet: posted " << on.at("vm.a.vcpu0.exits") / packets << ", remapped "
                                   << off.at("vm.a.vcpu0.exits") / packets << "; rtt p50 "
                                   << on.at("vm.a.workload0.rtt_ns.p50") << " / "
                                   << off.at("vm.a.workload0.rtt_ns.p50") << " ns");
}

TEST_CASE("a network thread on another vCPU than the NIC interrupt's gets every echo", "[net][system]") {
  // The compute process's thread goes to vCPU 0, the pingpong thread to
  // vCPU 1, which polls: it never blocks on the interrupt's wait queue.
  auto r = run_cli(R"(
duration: 20ms
platform:
  cores: 2
  memory: 1GiB
  nic:
    enabled: true
hypervisor:
  posted_interrupts: true
  zero_pages: false
vms:
  - name: a
    vcpus: 2
    memory: 32MiB
    nic: {type: vf, vf: 1}
    workloads:
      - type: compute
        instructions: 2000
        iterations: 3000
      - type: net_pingpong
        requests: 200
)");
  REQUIRE(r.exit_code == 0);
  CHECK(r.at("vm.a.workload1.replies") == 200);
  CHECK(r.at("vm.a.workload1.stray") == 0);
  CHECK(r.at("vm.a.kernel.net.rx_frames") == 200);
  CHECK(r.at("vm.a.workload0.threads_done") == 1);
}

TEST_CASE("S3: a rogue VF's DMA outside its domain is blocked and logged, the victim's memory is intact",
          "[net][passthrough][iommu][system]") {
  auto r = run_cli(scenario("s3_rogue_vf.yaml"));
  REQUIRE(r.exit_code == 0);
  const double count = 24;
  // Every attempt, 24 device writes and 24 device reads, was refused.
  CHECK(r.at("vm.rogue.workload1.attempts") == 2 * count);
  CHECK(r.at("vm.rogue.workload1.rx_errors") == count);
  CHECK(r.at("vm.rogue.workload1.tx_errors") == count);
  CHECK(r.at("system.nic.vf1.dma_faults") == 2 * count);
  CHECK(r.at("system.iommu.faults") == 2 * count);
  CHECK(r.at("system.root_complex.rid_01_00_2.blocked") == 2 * count);
  CHECK(r.at("system.root_complex.blocked") == 2 * count);
  CHECK(r.at("vm.rogue.kernel.net.dma_errors") >= 1);
  // The fault log names the VF (requester 01:00.2) and the address.
  CHECK(r.out.find("iommu fault: requester 01:00.2 address 0x4000000 write") != std::string::npos);
  CHECK(r.out.find("iommu fault: requester 01:00.2 address 0x4400000 write") != std::string::npos);
  // No byte of the victim changed: its check ran after the attack.
  CHECK(r.at("vm.victim.workload0.threads_done") == 1);
  CHECK(r.at("vm.victim.workload0.mismatches") == 0);
  CHECK(r.at("vm.victim.workload0.checksum") == r.at("vm.victim.workload0.expected_checksum"));
  CHECK(r.at("vm.victim.workload0.end_cycle") > r.at("vm.rogue.workload1.end_cycle"));
  // The same VF's legitimate DMA works: every request got its echo.
  CHECK(r.at("vm.rogue.workload0.replies") == 50);
  // The hypervisor programmed the IOMMU only through its register set and
  // queue: bring-up (QIE, SRTP, TE; global context and IOTLB invalidation),
  // the VF's device/domain invalidation, interrupt remapping (SIRTP, IRE;
  // an IEC invalidation): three waited-for batches, eight descriptors.
  CHECK(r.at("hypervisor.passthrough.iommu_driver.submissions") == 3);
  CHECK(r.at("system.iommu_regs.descriptors") == 8);
  CHECK(r.at("system.iommu_regs.waits") == 3);
  CHECK(r.at("system.iommu_regs.commands") == 5);
  CHECK(r.at("system.iommu_regs.queue_errors") == 0);
  CHECK(r.at("system.iommu_regs.unimplemented") == 0);
  CHECK(r.at("system.iommu.invalidations") == 4);
  CHECK(r.at("hypervisor.passthrough.iommu_driver.polls") >= 3);  // the unit takes time
}

TEST_CASE("S3 under every kind of accepted NIC layout: the rogue VF reads and writes nothing outside its VM",
          "[net][passthrough][iommu][isolation][system]") {
  // Requester IDs and register windows placed differently (bus, device,
  // SR-IOV First VF Offset and VF Stride, BAR size, VF count): whatever
  // the loader accepts keeps each function its own requester ID, so the
  // IOMMU blocks every access outside the rogue VM.
  const std::vector<std::string> layout = GENERATE(
      std::vector<std::string>{},
      std::vector<std::string>{"platform.nic.bus=0", "platform.nic.device=31"},
      std::vector<std::string>{"platform.nic.first_vf_offset=128", "platform.nic.vf_stride=2"},
      std::vector<std::string>{"platform.nic.first_vf_offset=8", "platform.nic.vf_stride=8", "platform.nic.vfs=8"},
      std::vector<std::string>{"platform.nic.bus=255", "platform.nic.first_vf_offset=7", "platform.nic.vf_stride=3"},
      std::vector<std::string>{"platform.nic.mmio_stride=64KiB", "platform.nic.vfs=2"});
  std::vector<std::string> args;
  for (const auto& a : layout) {
    args.push_back("--set");
    args.push_back(a);
  }
  auto r = run_cli(scenario("s3_rogue_vf.yaml"), args);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.at("vm.rogue.workload1.attempts") == 48);
  CHECK(r.at("system.iommu.faults") == 48);
  CHECK(r.at("system.root_complex.blocked") == 48);
  CHECK(r.at("vm.victim.workload0.threads_done") == 1);
  CHECK(r.at("vm.victim.workload0.mismatches") == 0);
  CHECK(r.at("vm.victim.workload0.checksum") == r.at("vm.victim.workload0.expected_checksum"));
  CHECK(r.at("vm.rogue.workload0.replies") == 50);  // its own DMA still works
}

TEST_CASE("S4: IOTLB misses per MiB fall with 2 MiB IOMMU mappings, and throughput drops where the IOTLB misses",
          "[net][passthrough][iommu][s4][system]") {
  const std::string base = scenario("s4_iommu_page_size.yaml");
  struct Point {
    double misses_per_mib, translation_cycles_per_mib, gbps, full_polls;
  };
  auto run = [&](const std::string& page, unsigned entries, const std::string& pool) {
    auto r = run_cli(base, {"--set", "hypervisor.ept_page_size=" + page, "--set",
                            fmt::format("platform.iommu.iotlb.entries={}", entries), "--set",
                            "vms[0].workloads[0].buffer=" + pool});
    REQUIRE(r.exit_code == 0);
    const double mib = r.at("system.nic.vf0.tx_bytes") / (1 << 20);
    REQUIRE(mib > 50);
    // What the device read is what the program wrote, in order.
    CHECK(r.at("system.peer.rx_sequence_gaps") == 0);
    CHECK(r.at("system.nic.vf0.dma_faults") == 0);
    return Point{r.at("system.iommu.iotlb.misses") / mib, r.at("system.root_complex.translation_cycles") / mib,
                 r.at("vm.tx.workload0.throughput_gbps"), r.at("vm.tx.workload0.full_polls")};
  };
  // An 8 MiB pool: with 4 KiB mappings nearly every 4 KiB is a miss (two
  // frames per page: about 350 misses per MiB); with 2 MiB mappings the
  // pool needs four entries. The misses cost the DMA engine time per frame,
  // and the engine is the bottleneck: throughput drops.
  const Point big4k = run("4KiB", 64, "8MiB"), big2m = run("2MiB", 64, "8MiB");
  CHECK(big4k.misses_per_mib > 200);
  CHECK(big2m.misses_per_mib < 5);
  CHECK(big4k.translation_cycles_per_mib > 2 * big2m.translation_cycles_per_mib);
  CHECK(big4k.full_polls > 1000);  // the program waited for the device
  CHECK(big2m.gbps > 1.08 * big4k.gbps);
  // A 128 KiB pool on 4 KiB mappings: within a 64-entry IOTLB's reach,
  // beyond a 4-entry one's.
  const Point small64 = run("4KiB", 64, "128KiB"), small4 = run("4KiB", 4, "128KiB");
  CHECK(small64.misses_per_mib < 20);
  CHECK(small4.misses_per_mib > 10 * small64.misses_per_mib);
  CHECK(small4.translation_cycles_per_mib > 2 * small64.translation_cycles_per_mib);
  CHECK(small4.full_polls > 1000);
  CHECK(small64.gbps > 1.05 * small4.gbps);
  INFO("8 MiB pool: 4K " << big4k.gbps << " Gbit/s, " << big4k.misses_per_mib << " misses/MiB; 2M " << big2m.gbps
                         << " Gbit/s, " << big2m.misses_per_mib << " misses/MiB. 128 KiB pool on 4K: IOTLB 64 "
                         << small64.gbps << " Gbit/s, 4 entries " << small4.gbps << " Gbit/s");
}

TEST_CASE("S4, receive side: 2 MiB IOMMU mappings recover the throughput IOTLB misses cost",
          "[net][passthrough][iommu][s4][system]") {
  const std::string base = scenario("s4_iommu_page_size_rx.yaml");
  auto run = [&](const std::string& page) {
    auto r = run_cli(base, {"--set", "hypervisor.ept_page_size=" + page});
    REQUIRE(r.exit_code == 0);
    return r;
  };
  auto small = run("4KiB"), large = run("2MiB");
  const double mib4k = small.at("system.nic.vf0.rx_bytes") / (1 << 20), mib2m = large.at("system.nic.vf0.rx_bytes") / (1 << 20);
  REQUIRE(mib4k > 50);
  CHECK(small.at("system.iommu.iotlb.misses") / mib4k > 200);
  CHECK(large.at("system.iommu.iotlb.misses") / mib2m < 5);
  // The receive engine is the bottleneck (its FIFO overflows) in both.
  CHECK(small.at("system.nic.rx_fifo_drops") > 1000);
  CHECK(large.at("system.nic.rx_fifo_drops") > 1000);
  CHECK(large.at("vm.rx.workload0.throughput_gbps") > 1.08 * small.at("vm.rx.workload0.throughput_gbps"));
  CHECK(small.at("vm.rx.workload0.lost") > large.at("vm.rx.workload0.lost"));
}

TEST_CASE("vms[].nic is validated", "[net][config]") {
  const std::string vm = R"(
duration: 1ms
platform:
  cores: 1
  memory: 512MiB
  nic:
    enabled: {}
vms:
  - name: a
    memory: 32MiB
    nic: {{type: vf, vf: {}, mac: "{}"}}
    workloads:
      - type: compute
        iterations: 1
)";
  auto disabled = run_cli(fmt::format(vm, "false", 0, ""));
  CHECK(disabled.exit_code != 0);
  CHECK(disabled.err.find("vms[0].nic.type") != std::string::npos);
  auto beyond = run_cli(fmt::format(vm, "true", 4, ""));
  CHECK(beyond.exit_code != 0);
  CHECK(beyond.err.find("vms[0].nic.vf") != std::string::npos);
  CHECK(beyond.err.find("platform.nic.vfs (4)") != std::string::npos);
  auto bad_mac = run_cli(fmt::format(vm, "true", 0, "02:00:00:00:01"));
  CHECK(bad_mac.exit_code != 0);
  CHECK(bad_mac.err.find("vms[0].nic.mac") != std::string::npos);
  auto ok = run_cli(fmt::format(vm, "true", 3, "02:00:00:00:01:03"));
  CHECK(ok.exit_code == 0);
}
