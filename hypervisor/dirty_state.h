// The per-VM state of dirty tracking and snapshots (private to
// hypervisor/*.cc; docs/memory.md, "Dirty tracking" and "Snapshots").
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "hypervisor/hypervisor_state.h"

namespace vmx::hv {

struct Hypervisor::DirtyLog {
  DirtyMode mode = DirtyMode::WriteProtect;
  bool on = false;
  bool lazy_split = false;  // write protection splits large pages at their first write
  /// PML: vCPUs that entered before PML was on in their VMCS may have set
  /// dirty flags without logging them: the next harvest scans the flags too.
  bool catchup = false;
  /// The dirty bitmap, one bit per 4 KiB guest page, in frames of the
  /// hypervisor zone (32768 pages per frame), set with locked ORs as KVM's
  /// set_bit_le and harvested with exchanges.
  std::vector<std::uint64_t> bitmap;
  struct PerVcpu {
    std::uint64_t pml_page = 0;  // the vCPU's page-modification log (4 KiB, hypervisor zone)
    bool pml_on = false;         // "enable PML" as last written to its VMCS
  };
  std::vector<PerVcpu> vcpus;
  /// Guest-physical bases of the 2 MiB pages split for tracking (merged
  /// back when logging stops), and whether 1 GiB pages were split too.
  std::vector<std::uint64_t> split_2m, split_1g;

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "dirty_log", "dirty tracking (hypervisor/dirty_log.cc)") {}
    stats::Counter starts{this, "starts", "events", "times dirty logging started"};
    stats::Counter rounds{this, "rounds", "rounds", "dirty bitmaps harvested (get-and-clear)"};
    stats::Counter pages_dirty{this, "pages_dirty", "pages", "dirty pages harvested over all rounds"};
    stats::Histogram pages_per_round{this, "pages_per_round", "pages", "dirty pages per harvested round"};
    stats::Counter wp_exits{this, "wp_exits", "exits",
                            "EPT violations of writes to write-protected pages handled by tracking"};
    stats::Counter pml_full_exits{this, "pml_full_exits", "exits", "PML-full exits (reason 62)"};
    stats::Counter pml_entries{this, "pml_entries", "entries", "page-modification log entries drained"};
    stats::Counter pml_drains{this, "pml_drains", "drains", "exits whose PML log held entries to drain"};
    stats::Counter scans{this, "scans", "scans", "EPT dirty-flag scans"};
    stats::Counter scan_leaves{this, "scan_leaves", "entries", "EPT leaves read by dirty-flag scans"};
    stats::Counter scan_cycles{this, "scan_cycles", "cycles", "core cycles the dirty-flag scans took"};
    stats::Counter split_pages{this, "split_pages", "pages", "large EPT pages split for tracking"};
  };
  std::unique_ptr<Stats> stats;
};

struct Hypervisor::Snapshot {
  /// The snapshot store: guest page number -> host frame (from the frame
  /// allocator's guest zone) holding the page as it was at the snapshot.
  std::map<std::uint64_t, std::uint64_t> store;
  /// Guest pages mapped at the snapshot, ascending; the copier's position.
  std::vector<std::uint64_t> present;
  std::size_t next = 0;
  bool complete = false;  // every page of `present` is saved
  bool restored = false;
  std::uint64_t taken_at = 0;  // core cycles

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "snapshot", "VM snapshot (hypervisor/snapshot.cc)") {}
    stats::Counter pages{this, "pages", "pages", "guest pages mapped when the snapshot was taken"};
    stats::Counter exits{this, "exits", "exits",
                         "EPT-violation exits caused by the snapshot's write protection"};
    stats::Counter cow_pages{this, "cow_pages", "pages", "pages saved by copy-before-write (a guest write)"};
    stats::Counter copier_pages{this, "copier_pages", "pages", "pages saved by the background copier"};
    stats::Counter bytes_copied{this, "bytes_copied", "bytes", "bytes copied into the snapshot store"};
    stats::Counter copier_runs{this, "copier_runs", "runs", "background copier runs"};
    stats::Counter copier_cycles{this, "copier_cycles", "cycles", "core cycles the background copier took"};
    stats::Counter complete_cycles{this, "complete_cycles", "cycles",
                                   "cycles from taking the snapshot until every page was saved"};
    stats::Counter restored_pages{this, "restored_pages", "pages", "saved pages written back by the restore"};
    stats::Counter dropped_pages{this, "dropped_pages", "pages",
                                 "pages unmapped by the restore (backed only after the snapshot)"};
    stats::Counter restore_cycles{this, "restore_cycles", "cycles", "core cycles the restore took"};
  };
  std::unique_ptr<Stats> stats;
};

}  // namespace vmx::hv
