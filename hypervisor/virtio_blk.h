// The hypervisor's virtio-blk back end (docs/memory.md, "Guest swap"): one
// disk per VM that asks for one (vms[].swap), a region of the host storage
// device (models/storage.h), reached by the guest through a split
// virtqueue and a register page at abi::virtio_blk::kWindow that is not
// mapped in EPT (every register access exits and is emulated, as
// virtio-net's, hypervisor/virtio_net.h).
//
// A notify takes every available request (header, data, status: virtio
// spec v1.1, 5.2.6), copies its data between guest memory and the medium
// (the loads and stores of a bounce-buffer copy, charged to the core), and
// submits it to the storage model, which says when it completes. The
// request completes then: the core that submitted it has a timer deadline
// for it (as for the emulated NIC's polls), writes the status byte and the
// used entry and interrupts the guest. Until then the guest sees nothing.
#pragma once

#include <cstdint>
#include <vector>

#include "abi/virtio_blk.h"
#include "hypervisor/virtio_mmio.h"
#include "sim/stats.h"

namespace vmx::hv {

struct BlkDev {
  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "virtio_blk", "virtio-blk back end (hypervisor/virtio_blk.h)") {}
    stats::Counter notifies{this, "notifies", "events", "queue notifications (QUEUE_NOTIFY writes)"};
    stats::Counter reads{this, "reads", "requests", "read requests submitted to the host storage"};
    stats::Counter writes{this, "writes", "requests", "write requests submitted to the host storage"};
    stats::Counter read_bytes{this, "read_bytes", "bytes", "bytes read for the guest"};
    stats::Counter write_bytes{this, "write_bytes", "bytes", "bytes written for the guest"};
    stats::Counter bad_requests{this, "bad_requests", "requests",
                                "requests refused: malformed chain, unsupported type or beyond the disk"};
    stats::Counter interrupts{this, "interrupts", "events", "guest interrupts raised"};
  };

  BlkDev(std::uint64_t first, std::uint64_t count, stats::Group* parent)
      : regs(abi::virtio_blk::kDeviceId, 0, 1, abi::virtio_blk::kMaxQueueSize),
        first_block(first),
        blocks(count),
        stats(parent) {}

  virtio::MmioRegs regs;
  std::uint64_t first_block, blocks;  // its region of the host storage, in 4 KiB blocks
  /// Requests submitted and not yet completed, in submission order.
  struct Pending {
    std::uint64_t tsc = 0;  // completion (TSC of the submitting core's clock domain)
    unsigned core = 0;      // the core whose timer completes it
    std::uint16_t head = 0;
    std::uint32_t written = 0;  // bytes the device wrote into the chain
    std::uint64_t status_gpa = 0;
    std::uint8_t status = 0;
  };
  std::vector<Pending> pending;
  Stats stats;
};

}  // namespace vmx::hv
