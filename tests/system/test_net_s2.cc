// S2 (vmxsim issue 5): the same request/response workload (net_pingpong,
// 200 requests of 64 bytes against the echoing peer) over an emulated NIC,
// virtio-net and a passed-through VF with posted interrupts
// (configs/scenarios/s2_*.yaml). The ordering is asserted from the
// statistics: exits per packet, hypervisor instructions per packet and the
// 99th-percentile round trip fall from emulated to virtio to VF.
#include <catch2/catch.hpp>

#include <string>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;

namespace {

constexpr double kRequests = 200;

struct Figures {
  double exits_per_packet = 0, hv_instructions_per_packet = 0, rtt_p50 = 0, rtt_p99 = 0, rtt_mean = 0,
         jitter = 0;
};

Figures run_s2(const std::string& device) {
  auto r = run_cli(read_text(std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/s2_" + device + ".yaml"));
  INFO(device << ": " << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.at("vm.a.workload0.replies") == kRequests);
  Figures f;
  f.exits_per_packet = r.at("vm.a.vcpu0.exits") / kRequests;
  double hv = 0;
  for (const char* cpu : {"system.cpu0", "system.cpu1"})
    hv += r.at(std::string(cpu) + ".instructions") - r.at(std::string(cpu) + ".guest_instructions");
  f.hv_instructions_per_packet = hv / kRequests;
  f.rtt_p50 = r.at("vm.a.workload0.rtt_ns.p50");
  f.rtt_p99 = r.at("vm.a.workload0.rtt_ns.p99");
  f.rtt_mean = r.at("vm.a.workload0.rtt_ns.mean");
  f.jitter = f.rtt_p99 - f.rtt_p50;
  return f;
}

}  // namespace

TEST_CASE("S2: emulated vs virtio vs VF: exits and hypervisor work per packet and latency fall in that order",
          "[net][s2][virtio][system]") {
  const Figures emu = run_s2("emulated");
  const Figures vio = run_s2("virtio");
  const Figures vf = run_s2("vf");
  for (const auto& [name, f] : {std::pair{"emulated", emu}, std::pair{"virtio", vio}, std::pair{"vf", vf}})
    WARN(name << ": exits/packet " << f.exits_per_packet << ", hypervisor instructions/packet "
              << f.hv_instructions_per_packet << ", rtt mean " << f.rtt_mean << " ns, p50 " << f.rtt_p50
              << " ns, p99 " << f.rtt_p99 << " ns, jitter (p99 - p50) " << f.jitter << " ns");
  // Emulated: several trapped register accesses per packet; virtio: one
  // notify per send (a batch of one) and no exit for the interrupt with
  // posting; VF: none for the device at all.
  CHECK(emu.exits_per_packet >= 3);
  CHECK(emu.exits_per_packet > vio.exits_per_packet);
  CHECK(vio.exits_per_packet > vf.exits_per_packet);
  CHECK(emu.hv_instructions_per_packet > vio.hv_instructions_per_packet);
  CHECK(vio.hv_instructions_per_packet > vf.hv_instructions_per_packet);
  CHECK(emu.rtt_p99 > vio.rtt_p99);
  CHECK(vio.rtt_p99 > vf.rtt_p99);
}

namespace {

/// The S2 configuration of `device` turned into a throughput run: net_stream
/// of 2000 full-size frames in batches of 8 into a sinking peer.
double stream_gbps(const std::string& device) {
  std::string yaml = read_text(std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/s2_" + device + ".yaml");
  const std::string pingpong = "      - type: net_pingpong\n        size: 64\n        requests: 200\n";
  const std::string nic = "    enabled: true\n";
  REQUIRE(yaml.find(pingpong) != std::string::npos);
  REQUIRE(yaml.find(nic) != std::string::npos);
  yaml.replace(yaml.find(pingpong), pingpong.size(),
               "      - type: net_stream\n        size: 1514\n        frames: 2000\n        batch: 8\n");
  yaml.replace(yaml.find(nic), nic.size(), nic + "    peer: {mode: sink}\n");
  auto r = run_cli(yaml);
  INFO(device << ": " << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.at("vm.a.workload0.frames") == 2000);
  WARN(device << ": " << r.at("vm.a.workload0.throughput_gbps") << " Gbit/s, exits per frame "
              << r.at("vm.a.vcpu0.exits") / 2000);
  return r.at("vm.a.workload0.throughput_gbps");
}

}  // namespace

TEST_CASE("S2: streaming throughput rises from emulated to virtio to VF", "[net][s2][virtio][system]") {
  const double emu = stream_gbps("emulated"), vio = stream_gbps("virtio"), vf = stream_gbps("vf");
  CHECK(vio > emu);
  CHECK(vf > vio);
}
