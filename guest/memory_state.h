// The guest kernel's swap and balloon state (private to guest/kernel.cc,
// guest/swap.cc and guest/balloon.cc; docs/memory.md).
#pragma once

#include <cstdint>
#include <deque>
#include <unordered_map>
#include <vector>

#include "guest/kernel.h"
#include "guest/virtio_blk.h"
#include "guest/virtqueue.h"

namespace vmx::guest {

/// A swapped-out page's PTE: not present (bit 0 clear; the processor
/// ignores every other bit then, SDM Vol. 3A, 4.5), bit 1 marking a swap
/// entry and the slot + 1 in bits 51:12 (as Linux's x86 swap entries keep
/// the offset in a non-present PTE).
namespace swp {
constexpr std::uint64_t kMark = 2;
inline bool is_entry(std::uint64_t pte) { return !(pte & 1) && (pte & kMark) && (pte >> 12); }
inline std::uint64_t entry(std::uint64_t slot) { return ((slot + 1) << 12) | kMark; }
inline std::uint64_t slot_of(std::uint64_t pte) { return ((pte & 0x000FFFFFFFFFF000ull) >> 12) - 1; }
}  // namespace swp

struct Kernel::SwapState {
  VirtioBlkDriver blk;
  std::vector<std::uint64_t> free_slots;  // lowest last
  /// Pages being written out: slot -> frame (Linux's swap cache): a fault
  /// on the page meanwhile maps the frame again.
  std::unordered_map<std::uint64_t, std::uint64_t> cache;
  /// Resident anonymous 4 KiB pages in the order they were mapped (the
  /// clock's hand is the front).
  struct Resident {
    Process* p;
    std::uint64_t va;
  };
  std::deque<Resident> lru;
  std::vector<Thread*> waiters;  // threads blocked on vCPU 0 for their I/O
  bool reclaiming = false;       // one reclaim at a time; others wait for its frames
};

struct Kernel::BalloonState {
  std::uint64_t window = 0;  // the register page's guest-virtual address
  virtio::DriverQueue q[3];  // inflate, deflate, stats
  std::uint64_t pfn_page = 0, stats_page = 0;  // message buffers (guest-physical)
  std::vector<std::uint64_t> pages;  // frames in the balloon
  bool deflate_on_oom = false, stats_vq = false;
};

struct Kernel::MemStats : stats::Group {
  explicit MemStats(stats::Group* p) : Group(p, "memory", "swap and ballooning in the guest (docs/memory.md)") {}
  stats::Counter major_faults{this, "major_faults", "faults", "page faults that read the page from swap"};
  stats::Counter minor_faults{this, "minor_faults", "faults", "page faults resolved without I/O"};
  stats::Counter swap_in{this, "swap_in", "pages", "pages read back from the swap disk"};
  stats::Counter swap_out{this, "swap_out", "pages", "pages written to the swap disk and freed"};
  stats::Counter swap_cache_hits{this, "swap_cache_hits", "faults",
                                 "faults on a page being written out, mapped again without I/O"};
  stats::Counter reclaim_runs{this, "reclaim_runs", "events", "times reclaim ran (no free frame)"};
  stats::Counter reclaim_scanned{this, "reclaim_scanned", "pages", "pages the reclaim clock looked at"};
  stats::Counter io_wait_cycles{this, "io_wait_cycles", "cycles", "TSC cycles threads waited for swap I/O"};
  stats::Counter balloon_inflated{this, "balloon_inflated", "pages", "pages the driver put in the balloon"};
  stats::Counter balloon_deflated{this, "balloon_deflated", "pages", "pages the driver took out of the balloon"};
  stats::Counter oom_deflates{this, "oom_deflates", "pages", "of those, pages given back on out-of-memory"};
  stats::Gauge balloon_pages{this, "balloon_pages", "pages", "pages in the balloon, at the end"};
  stats::Gauge swap_used{this, "swap_used", "pages", "swap slots in use, at the end"};
};

}  // namespace vmx::guest
