// Scenario S11 end to end (docs/protection.md "S11"): an encrypted VM
// (SEV-like) beside an identical plain one, on a memory-bound and on a
// cache-resident stream. The slowdown is read from the workloads' own start
// and end cycles, the engine's work from the cores' crypt statistics.
#include <catch2/catch.hpp>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;

namespace {

std::string scenario(const std::string& name) {
  return read_text(std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/" + name);
}

double elapsed(const vmx::test::CliRun& r, const std::string& vm) {
  const std::string w = "vm." + vm + ".workload0.";
  return r.at(w + "end_cycle") - r.at(w + "start_cycle");
}

}  // namespace

TEST_CASE("S11: an encrypted VM's slowdown follows its miss rate: memory-bound clearly slower, cache-resident nearly not") {
  const auto mem = run_cli(scenario("s11_memory_bound.yaml"));
  INFO(mem.err);
  REQUIRE(mem.exit_code == 0);
  const auto res = run_cli(scenario("s11_cache_resident.yaml"));
  INFO(res.err);
  REQUIRE(res.exit_code == 0);
  for (const auto* r : {&mem, &res})
    for (const char* vm : {"plain", "sev"}) CHECK(r->at(std::string("vm.") + vm + ".workload0.threads_done") == 1);
  const double slow_mem = elapsed(mem, "sev") / elapsed(mem, "plain");
  const double slow_res = elapsed(res, "sev") / elapsed(res, "plain");
  INFO("memory-bound slowdown " << slow_mem << ", cache-resident " << slow_res);
  CHECK(slow_mem > 1.08);
  CHECK(slow_res < 1.02);
  // The engine's work: every line of both passes over 16 MiB (twice the
  // LLC) came from DRAM through it on the sev VM's core, none on the plain
  // VM's; the kernel's page clearing left dirty private lines to encrypt.
  CHECK(mem.at("system.cpu1_mem.crypt.fills") >= 2.0 * (16 << 20) / 64);
  CHECK(mem.at("system.cpu1_mem.crypt.writebacks") > 0);
  CHECK(mem.at("system.cpu0_mem.crypt.fills") == 0);
  CHECK(res.at("system.cpu1_mem.crypt.fills") * 20 < mem.at("system.cpu1_mem.crypt.fills"));
}

TEST_CASE("S11: an encrypted VM needs the platform's encryption engine (config error at its key)") {
  const auto r = run_cli(scenario("s11_memory_bound.yaml"), {"--set", "platform.memory_encryption.enabled=false"});
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("vms[1].encrypted") != std::string::npos);
  CHECK(r.err.find("memory_encryption.enabled") != std::string::npos);
  // A C-bit inside the guest-physical addresses the VM uses is refused too.
  const auto low = run_cli(scenario("s11_memory_bound.yaml"), {"--set", "platform.memory_encryption.c_bit=24"});
  CHECK(low.exit_code == 2);
  CHECK(low.err.find("platform.memory_encryption.c_bit") != std::string::npos);
}

TEST_CASE("S11 over virtio-net: the encrypted VM's driver bounces every frame through shared buffers, and the copies show") {
  const auto enc = run_cli(scenario("s11_virtio.yaml"));
  INFO(enc.err);
  REQUIRE(enc.exit_code == 0);
  const auto off = run_cli(scenario("s11_virtio.yaml"), {"--set", "vms[0].encrypted=false"});
  INFO(off.err);
  REQUIRE(off.exit_code == 0);
  for (const auto* r : {&enc, &off}) {
    CHECK(r->at("vm.sev.workload0.replies") == 200);  // every echo came back intact through the device
    CHECK(r->at("vm.sev.workload0.stray") == 0);
  }
  // Each request out and each echo in, 1400 bytes, copied once more.
  CHECK(enc.at("vm.sev.virtio_net.bounced_bytes") == 200.0 * 1400 * 2);
  CHECK(off.at_or_zero("vm.sev.virtio_net.bounced_bytes") == 0);  // not even registered
  const double enc_rtt = enc.at("vm.sev.workload0.rtt_ns.mean");
  const double off_rtt = off.at("vm.sev.workload0.rtt_ns.mean");
  INFO("mean round trip: encrypted " << enc_rtt << " ns, not " << off_rtt << " ns");
  CHECK(enc_rtt > off_rtt);
  // The copies are the guest's own instructions (a REP MOVS step per line).
  CHECK(enc.at("vm.sev.vcpu0.instructions") > off.at("vm.sev.vcpu0.instructions"));
}
