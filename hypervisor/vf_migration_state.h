// Moving a VM's SR-IOV VF with it (docs/migration.md, "A VM with an SR-IOV
// VF"): per-VM state, private to hypervisor/*.cc. The logic is
// hypervisor/vf_migration.cc.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <fmt/format.h>

#include "hypervisor/hypervisor_state.h"

namespace vmx::hv {

struct Hypervisor::VfMigration {
  bool handshake = true;  // quiesce and DMA dirty tracking (migrations[].vf_handshake)
  enum class Step : std::uint8_t { Running, Quiescing, Saved } step = Step::Running;
  std::uint64_t record = 0;     // a frame of hypervisor memory holding the VF's saved state
  bool received = false;        // destination: the record arrived
  std::uint64_t quiesce_tsc = 0;

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "vf_migration", "the VF moved with the VM (vf_migration.cc)") {}
    stats::Counter handshake{this, "handshake", "flag", "1 if the VF was quiesced and its DMA tracked"};
    stats::Counter dma_dirty_pages{this, "dma_dirty_pages", "pages",
                                   "pages found with the IOMMU's second-level dirty flag set, over all harvests"};
    stats::Histogram dma_dirty_per_round{this, "dma_dirty_per_round", "pages",
                                         "pages DMA-dirtied per harvest (pre-copy rounds and the final one)"};
    stats::Counter harvests{this, "harvests", "harvests", "second-level dirty-flag harvests (scan, clear, IOTLB flush)"};
    stats::Counter harvest_cycles{this, "harvest_cycles", "cycles", "core cycles the harvests took"};
    stats::Counter quiesce_polls{this, "quiesce_polls", "polls", "reads of the VF's migration status until it had drained"};
    stats::Counter quiesce_cycles{this, "quiesce_cycles", "cycles", "from STOP_COPY requested to the VF drained (TSC ticks)"};
    stats::Counter state_bytes{this, "state_bytes", "bytes", "VF device state sent (source) or restored (destination)"};
    stats::Gauge tx_head{this, "tx_head", "descriptors", "the saved TX ring position"};
    stats::Gauge tx_tail{this, "tx_tail", "descriptors", "the saved TX doorbell"};
    stats::Counter restored{this, "restored", "flag", "destination: 1 once the VF runs with the saved state"};
  };
  std::unique_ptr<Stats> stats;
};

}  // namespace vmx::hv
