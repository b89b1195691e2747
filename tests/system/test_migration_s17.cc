// S17 (docs/migration.md, "A VM with an SR-IOV VF"): live migration of a VM
// whose NIC is a passed-through VF. With the handshake (VFIO migration v2
// states, quiesce and drain, DMA tracked by the IOMMU's second-level dirty
// flags) every page at the destination equals the source's and every frame
// the guest queued leaves exactly once, from one VF or the other; without
// it the VF's write-backs land in pages already sent and the page-checksum
// check finds them.
#include <catch2/catch.hpp>

#include <string>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;
using vmx::test::CliRun;

namespace {
const std::string kScenarios = std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/";
const std::string kIn = "host.b.vm.web.migration_in.";

CliRun run(const std::string& file) {
  auto r = run_cli(read_text(kScenarios + file));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  return r;
}
/// Frames both VFs (VF 0 of each host's NIC) put on the link.
double vf_frames(const CliRun& r) {
  return r.at("host.a.system.nic.vf0.tx_packets") + r.at("host.b.system.nic.vf0.tx_packets");
}
/// Every frame one host's VF sent reached the other host's NIC (its VF 0,
/// of the same MAC, drops them in hardware: the guest streams to itself).
void check_link(const CliRun& r) {
  CHECK(r.at("host.b.system.nic.vf0.rx_discards") == r.at("host.a.system.nic.vf0.tx_packets"));
  CHECK(r.at("host.a.system.nic.vf0.rx_discards") == r.at("host.b.system.nic.vf0.tx_packets"));
}
}  // namespace

TEST_CASE("S17: with the handshake the VF moves with the VM, no page differs and no frame is lost or sent twice",
          "[s17][migration]") {
  const CliRun r = run("s17_vf_migration.yaml");
  CHECK(r.at(kIn + "resumed") == 1);
  CHECK(r.at(kIn + "lost_frames") == 0);
  CHECK(r.at("host.b.vm.web.vf_migration.restored") == 1);
  CHECK(r.at("host.a.vm.web.vf_migration.quiesce_polls") >= 1);
  // The IOMMU's dirty flags were harvested with every dirty-log harvest.
  CHECK(r.at("host.a.vm.web.vf_migration.harvests") == r.at("host.a.vm.web.dirty_log.rounds"));
  CHECK(r.at("migration_check.web.pages") > 500);
  CHECK(r.at("migration_check.web.mismatched") == 0);
  // The guest queued its frames on both hosts and finished; each left once
  // and arrived.
  REQUIRE(r.at("host.a.vm.web.workload0.threads_done") == 1);
  const double queued = r.at("host.a.vm.web.workload0.frames");
  INFO("queued " << queued << ", a " << r.at("host.a.system.nic.vf0.tx_packets") << ", b "
                 << r.at("host.b.system.nic.vf0.tx_packets"));
  CHECK(r.at("host.a.system.nic.vf0.tx_packets") > 0);
  CHECK(r.at("host.b.system.nic.vf0.tx_packets") > 0);
  CHECK(vf_frames(r) == queued);
  check_link(r);
  CHECK(r.at("host.a.system.nic.vf0.dma_faults") == 0);
  CHECK(r.at("host.b.system.nic.vf0.dma_faults") == 0);
}

TEST_CASE("S17: without the handshake in-flight DMA lands after its page was sent: the corruption check fires",
          "[s17][migration]") {
  const CliRun r = run("s17_no_handshake.yaml");
  CHECK(r.at(kIn + "resumed") == 1);
  CHECK(r.at("host.b.vm.web.vf_migration.restored") == 1);
  CHECK(r.at("host.a.vm.web.vf_migration.handshake") == 0);
  CHECK(r.at("migration_check.web.mismatched") > 0);
  // Descriptors the source's VF completed after its registers were read are
  // sent again by the destination's.
  REQUIRE(r.at("host.a.vm.web.workload0.threads_done") == 1);
  CHECK(vf_frames(r) > r.at("host.a.vm.web.workload0.frames"));
  check_link(r);
}

TEST_CASE("S17: the handshake without the IOMMU's dirty flags is refused at load, naming the key",
          "[s17][migration][config]") {
  std::string yaml = read_text(kScenarios + "s17_vf_migration.yaml");
  const std::string key = "iommu_mode: scalable";
  const auto at = yaml.find(key);
  REQUIRE(at != std::string::npos);
  yaml.replace(at, key.size(), "iommu_mode: legacy");
  const CliRun r = run_cli(yaml);
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("migrations[0].vf_handshake") != std::string::npos);
}

TEST_CASE("S17: post-copy of a VM with a VF is refused at load, naming the key", "[s17][migration][config]") {
  const CliRun r = run_cli(read_text(kScenarios + "s17_vf_migration.yaml"), {"--set", "migrations[0].mode=postcopy"});
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("migrations[0].mode") != std::string::npos);
}
