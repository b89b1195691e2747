// Host swap (docs/memory.md, "Host swap"): the hypervisor pages guest
// memory out to the host storage device when the guest zone runs short, and
// back in on the guest's next access. Its parameters, statistics and
// bookkeeping; the mechanism is a room of the hypervisor
// (hypervisor/host_swap.cc): a reclaim thread on one core that runs a clock
// over the frame allocator's reverse map, reading and clearing EPT accessed
// flags through the EPT cursor, and the EPT-violation path that reads a
// page back.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::hv {

struct HostSwapParams {
  bool enabled;
  std::uint64_t core, interval, low_watermark, high_watermark, batch, size, scan_frame, page_out, page_in;

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(enabled, "enabled", "false", Spec(Unit::Flag),
            "Page guest memory out to the host storage device when the guest zone runs short, and back in on "
            "access (docs/memory.md, \"Host swap\"). Needs hypervisor.ept_ad (the clock reads EPT accessed flags) "
            "and hypervisor.ept_page_size 4KiB. VMs with a network device, shadow paging or nested VMX, and VMs "
            "being dirty-tracked, are not swapped.");
    v.param(core, "core", "0", Spec().at_most(255),
            "Core whose hypervisor context runs the reclaim thread: its runs take that core from the vCPU running "
            "there (assumption: one kernel thread, as Linux's kswapd per node).");
    v.param(interval, "interval", "1ms", Spec(Unit::Time).at_least(1e6),
            "How often the reclaim thread looks at the guest zone's free memory (assumption; Linux's kswapd is "
            "woken by allocations that find a zone below its low watermark).");
    v.param(low_watermark, "low_watermark", "4MiB", Spec(Unit::Bytes),
            "The reclaim thread reclaims when the guest zone has less than this free (Linux mm/vmscan.c: kswapd "
            "wakes below a zone's low watermark; the size is an assumption).");
    v.param(high_watermark, "high_watermark", "8MiB", Spec(Unit::Bytes),
            "... and goes on until this much is free, or `batch` pages went out (Linux: kswapd reclaims up to "
            "the high watermark; the size is an assumption).");
    v.param(batch, "batch", "1024", Spec(Unit::Count).at_least(1),
            "Most pages one run of the reclaim thread writes out (assumption).");
    v.param(size, "size", "1GiB", Spec(Unit::Bytes).at_least(4096),
            "Size of the swap area on the host storage device; a full area stops reclaim (assumption).");
    v.param(scan_frame, "scan_frame", "100", Spec(Unit::Instructions),
            "Visiting one frame of the clock besides the loads of its EPT walk: the reverse-map look-up and "
            "checks (assumption, of the order of KVM's kvm_age_gfn per page).");
    v.param(page_out, "page_out", "1000", Spec(Unit::Instructions),
            "Writing one page out besides the EPT cursor's work, the copy's loads and the waits: slot allocation, "
            "the request's submission, bookkeeping (assumption, of the order of Linux's shrink_folio_list and "
            "add_to_swap per page).");
    v.param(page_in, "page_in", "1500", Spec(Unit::Instructions),
            "Reading one page back on an EPT violation besides the exit, the copy's stores and the I/O wait "
            "(assumption, of the order of Linux's do_swap_page).");
  }
};

struct HostSwapStats : stats::Group {
  explicit HostSwapStats(stats::Group* p) : Group(p, "host_swap", "host swap (hypervisor/host_swap.h)") {}
  stats::Counter runs{this, "runs", "events", "runs of the reclaim thread that found free memory below the low watermark"};
  stats::Counter direct{this, "direct_reclaims", "events",
                        "reclaims run by a fault that found no free frame (direct reclaim)"};
  stats::Counter scanned{this, "scanned", "frames", "frames the clock visited"};
  stats::Counter young{this, "young", "frames", "frames passed over because their EPT accessed flag was set (cleared)"};
  stats::Counter pages_out{this, "pages_out", "pages", "pages written to the swap area and their frames freed"};
  stats::Counter pages_in{this, "pages_in", "pages", "pages read back from the swap area (major faults)"};
  stats::Counter cancelled{this, "cancelled", "pages",
                           "pages accessed between their unmapping and their write: mapped again, not written"};
  stats::Counter reclaim_cycles{this, "reclaim_cycles", "cycles", "cycles of the reclaim thread's runs and of direct reclaims"};
  stats::Counter ack_cycles{this, "ack_cycles", "cycles",
                            "cycles spent waiting for other cores running the VM to invalidate the unmapped page"};
  stats::Gauge slots_used{this, "slots_used", "pages", "pages in the swap area, at the end"};
};

/// A VM's view of host swap (vm.<name>.host_swap).
struct HostSwapVmStats : stats::Group {
  explicit HostSwapVmStats(stats::Group* p) : Group(p, "host_swap", "the host's swap of this VM's memory") {}
  stats::Counter swapped_out{this, "swapped_out", "pages", "pages written out"};
  stats::Counter major_faults{this, "major_faults", "faults", "accesses that read a page back from the swap area"};
  stats::Counter cache_hits{this, "cache_hits", "faults", "accesses that found their page unmapped but not yet written"};
  stats::Counter wait_cycles{this, "wait_cycles", "cycles",
                             "cycles its vCPUs waited for swap-in reads in the hypervisor (their hypervisor time)"};
  stats::Gauge swapped{this, "swapped", "pages", "its pages in the swap area, at the end"};
};

/// The hypervisor's bookkeeping (software state no hardware reads, kept as
/// C++ as the frame allocator's descriptors; its cost is charged as the
/// path lengths above).
struct HostSwapState {
  HostSwapState(const HostSwapParams& params, stats::Group* parent) : p(params), stats(parent) {}
  /// A swapped guest page: unmapped, its frame still held until the write
  /// (frame != 0), or in swap slot `slot`.
  struct Entry {
    std::uint64_t frame = 0;
    std::uint64_t slot = 0;
  };
  HostSwapParams p;
  HostSwapStats stats;
  std::vector<std::unordered_map<std::uint64_t, Entry>> entries;  // per VM, by guest page number
  std::vector<std::unique_ptr<HostSwapVmStats>> vm_stats;
  std::vector<std::uint64_t> free_slots;
  std::uint64_t next_slot = 0, slots = 0, first_block = 0;
  std::uint64_t hand = 0;                  // the clock's hand: the next frame it visits
  std::uint64_t next_run = 0, interval_ticks = 0;  // TSC
  std::vector<std::uint64_t> io_due;       // per core: TSC when the swap-in it issued completes (0: none)
  std::vector<unsigned> io_vm;             // per core: whose read it is
};

}  // namespace vmx::hv
