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
}

TEST_CASE("S11 over virtio-net: the encrypted VM's driver bounces every frame through shared buffers, and the copies show") {
  const auto r = run_cli(scenario("s11_virtio.yaml"));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  for (const char* vm : {"plain", "sev"}) {
    const std::string w = std::string("vm.") + vm + ".workload0.";
    INFO(vm);
    CHECK(r.at(w + "replies") == 200);  // every echo came back intact through the device
    CHECK(r.at(w + "stray") == 0);
  }
  // Each request out and each echo in, 1400 bytes, copied once more.
  CHECK(r.at("vm.sev.virtio_net.bounced_bytes") == 200.0 * 1400 * 2);
  CHECK(r.at_or_zero("vm.plain.virtio_net.bounced_bytes") == 0);  // not even registered
  const double plain_rtt = r.at("vm.plain.workload0.rtt_ns.mean");
  const double sev_rtt = r.at("vm.sev.workload0.rtt_ns.mean");
  INFO("mean round trip: plain " << plain_rtt << " ns, sev " << sev_rtt << " ns");
  CHECK(sev_rtt > plain_rtt);
  // The copies are the sev guest's own loads and stores.
  CHECK(r.at("vm.sev.vcpu0.instructions") > r.at("vm.plain.vcpu0.instructions"));
}
