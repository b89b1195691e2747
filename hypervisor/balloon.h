// The hypervisor's virtio-balloon back end (docs/memory.md, "Ballooning"),
// modelled on the traditional virtio memory balloon (virtio spec v1.1, 5.5;
// QEMU's hw/virtio/virtio-balloon.c): the device announces a target in its
// configuration space (num_pages), the guest's driver gives pages to the
// balloon (inflate queue) or takes them back (deflate queue) in messages of
// at most 256 page numbers, and reports its memory statistics on the
// statistics queue.
//
// An inflated page is unmapped from the VM's EPT through the EPT cursor
// (which invalidates the EPT's cached translations on every core) and its
// host frame goes back to the frame allocator; a deflated page needs
// nothing: the guest's next access to it is an EPT violation that backs it
// with a fresh frame (lazily, as any untouched page).
//
// The target is the configured schedule's value at the time the guest reads
// it, raised by the host policy while the guest zone's free memory is below
// hypervisor.balloon_watermark.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "abi/virtio_blk.h"
#include "hypervisor/virtio_mmio.h"
#include "sim/stats.h"

namespace vmx::hv {

struct BalloonDev {
  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "balloon", "virtio-balloon back end (hypervisor/balloon.h)") {}
    stats::Counter inflated{this, "inflated_pages", "pages", "pages the guest gave to the balloon"};
    stats::Counter deflated{this, "deflated_pages", "pages", "pages the guest took back from the balloon"};
    stats::Counter frames_freed{this, "frames_freed", "frames",
                                "host frames returned to the allocator for inflated pages that were backed"};
    stats::Counter messages{this, "messages", "buffers", "inflate and deflate buffers handled"};
    stats::Counter bad_pfns{this, "bad_pfns", "pages", "page numbers refused: beyond the VM's memory"};
    stats::Counter policy_raises{this, "policy_raises", "events",
                                 "times the host policy raised the target (free memory below the watermark)"};
    stats::Gauge ballooned{this, "ballooned_pages", "pages", "pages in the balloon (the driver's actual), at the end"};
    stats::Gauge target{this, "target_pages", "pages", "the target the guest last read, at the end"};
    // The guest's statistics queue (5.5.6.3), its last report.
    stats::Counter reports{this, "stat_reports", "buffers", "statistics buffers the guest reported"};
    stats::Gauge guest_free{this, "guest_free_bytes", "bytes", "guest free memory (VIRTIO_BALLOON_S_MEMFREE), last report"};
    stats::Gauge guest_total{this, "guest_total_bytes", "bytes", "guest memory the kernel manages (S_MEMTOT), last report"};
    stats::Gauge guest_major{this, "guest_major_faults", "faults", "guest major faults (S_MAJFLT), last report"};
    stats::Gauge guest_minor{this, "guest_minor_faults", "faults", "guest minor faults (S_MINFLT), last report"};
    stats::Gauge guest_swap_in{this, "guest_swap_in", "pages", "guest pages swapped in (S_SWAP_IN), last report"};
    stats::Gauge guest_swap_out{this, "guest_swap_out", "pages", "guest pages swapped out (S_SWAP_OUT), last report"};
  };

  explicit BalloonDev(stats::Group* parent)
      : regs(abi::virtio_balloon::kDeviceId,
             abi::virtio_balloon::kFeatureStatsVq | abi::virtio_balloon::kFeatureDeflateOnOom, 3,
             abi::virtio_balloon::kMaxQueueSize),
        stats(parent) {}

  virtio::MmioRegs regs;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> schedule;  // (TSC, target pages)
  std::uint64_t max_pages = 0;     // the policy's limit
  std::uint64_t policy_pages = 0;  // what the host policy added
  std::uint32_t actual = 0;        // config `actual` as the driver wrote it
  Stats stats;
};

}  // namespace vmx::hv
