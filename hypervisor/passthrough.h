// Device passthrough of SR-IOV virtual functions (docs/io.md, "Device
// passthrough"): the hypervisor's state for it, private to hypervisor/*.cc.
// The logic is in hypervisor/passthrough.cc (members of hv::Hypervisor).
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "hypervisor/hypervisor_state.h"
#include "sim/stats.h"

namespace vmx::hv {

struct Hypervisor::Passthrough {
  explicit Passthrough(stats::Group* parent) : stats(parent, "passthrough", "device passthrough (VFs)") {}
  /// Host-physical tables, allocated once: the VT-d root table (legacy
  /// mode), one context table per bus that holds an assigned function, and
  /// the interrupt-remapping table (256 entries of 16 bytes; entry i is VF i's).
  std::uint64_t root_table = 0;
  std::map<unsigned, std::uint64_t> context_tables;  // by bus
  std::uint64_t irt = 0;
  bool iommu_on = false, ir_on = false;
  /// Remapped (not posted) VF interrupts: host vector -> the vCPU to forward to.
  std::map<std::uint8_t, Vcpu*> forward;

  struct Stats : stats::Group {
    using Group::Group;
    stats::Counter vfs{this, "vfs_assigned", "functions", "VFs assigned to VMs"};
    stats::Counter posted_irtes{this, "posted_irtes", "entries", "VF interrupts routed by posting (no exit)"};
    stats::Counter remapped_irtes{this, "remapped_irtes", "entries",
                                  "VF interrupts routed to a host vector (an exit, then injection or posting)"};
    stats::Counter forwarded{this, "forwarded", "interrupts",
                             "remapped VF interrupts the hypervisor forwarded to a vCPU as virtual interrupts"};
    stats::Counter mapped_pages{this, "backed_pages", "pages",
                                "EPT pages backed up front for DMA (assigned VMs are populated eagerly)"};
  } stats;
};

}  // namespace vmx::hv
