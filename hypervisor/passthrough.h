// Device passthrough of SR-IOV virtual functions (docs/io.md, "Device
// passthrough"): the hypervisor's state for it, private to hypervisor/*.cc.
// The logic is in hypervisor/passthrough.cc (members of hv::Hypervisor).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <vector>

#include "hypervisor/hypervisor_state.h"
#include "hypervisor/iommu_driver.h"
#include "sim/stats.h"

namespace vmx::hv {

struct Hypervisor::Passthrough {
  Passthrough(stats::Group* parent, std::uint64_t vtd_regs, std::function<std::uint64_t()> alloc_frame)
      : stats(parent, "passthrough", "device passthrough (VFs)"), driver(vtd_regs, std::move(alloc_frame), &stats) {}
  /// Host-physical tables, allocated once: the VT-d root table (legacy
  /// mode), one context table per bus that holds an assigned function, and
  /// the interrupt-remapping table (256 entries of 16 bytes; entry i is VF i's).
  std::uint64_t root_table = 0;
  std::map<unsigned, std::uint64_t> context_tables;  // by bus
  std::uint64_t irt = 0;
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
  /// The VT-d driver: programs the IOMMU through its registers and queue.
  IommuDriver driver;
};

}  // namespace vmx::hv
