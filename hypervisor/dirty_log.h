// Dirty tracking and snapshots: the modes and parameters (docs/memory.md,
// "Dirty tracking" and "Snapshots"). The mechanisms are the hypervisor's
// memory room (hypervisor/dirty_log.cc, hypervisor/snapshot.cc), clients of
// the EPT cursor (ept.h) and the frame allocator (frames.h).
#pragma once

#include <cstdint>
#include <string>

#include "sim/params.h"

namespace vmx::hv {

/// How the hypervisor learns which guest pages a VM wrote.
enum class DirtyMode : std::uint8_t {
  /// EPT write protection: the first write to each page per round exits
  /// with an EPT violation; the handler records the page and gives write
  /// permission back.
  WriteProtect,
  /// EPT dirty flags (EPTP bit 6, SDM Vol. 3C, 29.3.5): the walker sets
  /// them; the hypervisor scans the EPT leaves and clears them each round.
  DirtyBits,
  /// Page-modification logging (SDM Vol. 3C, 29.3.6): the core logs the
  /// guest-physical page of every EPT dirty flag it sets into the vCPU's
  /// 512-entry log; the hypervisor drains it at every exit.
  Pml,
};
const char* dirty_mode_name(DirtyMode m);

/// Parameters of dirty tracking (hypervisor.dirty_log).
struct DirtyLogParams {
  std::string split;          // eager | lazy
  std::uint64_t wp_fault;     // instructions
  std::uint64_t pml_entry;    // instructions
  std::uint64_t scan_leaf;    // instructions
  std::uint64_t start;        // instructions

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(split, "split", "eager", Spec().one_of({"eager", "lazy"}),
            "Large EPT pages (ept_page_size 2MiB or 1GiB) under tracking: eager splits every large leaf into "
            "4 KiB leaves when logging starts (as KVM's eager_page_split, default on); lazy write-protects the "
            "large leaf and splits it at its first write (EPT write protection; the dirty-flag modes then "
            "report a dirty large page as all of its 4 KiB pages).");
    v.param(wp_fault, "wp_fault", "400", Spec(Unit::Instructions),
            "EPT write protection: handling one write-protection EPT violation (recording the page, "
            "restoring write permission), besides the exit, the EPT loads and stores and the bitmap's locked "
            "OR (assumption, of the order of KVM's fast_page_fault path).");
    v.param(pml_entry, "pml_entry", "20", Spec(Unit::Instructions),
            "PML: draining one log entry into the dirty bitmap, besides its load and the bitmap's locked OR "
            "(assumption, of the order of one iteration of KVM's vmx_flush_pml_buffer).");
    v.param(scan_leaf, "scan_leaf", "6", Spec(Unit::Instructions),
            "EPT dirty flags: examining one EPT leaf during a scan, besides its load (assumption: a test and "
            "branch per entry, as KVM's clear-dirty walk).");
    v.param(start, "start", "5000", Spec(Unit::Instructions),
            "Starting, stopping or harvesting one round of dirty logging: the fixed part (memslot and bitmap "
            "bookkeeping), besides the charged EPT and bitmap traffic (assumption, of the order of KVM's "
            "KVM_GET_DIRTY_LOG ioctl path).");
  }
};

/// Parameters of VM snapshots (hypervisor.snapshot).
struct SnapshotParams {
  std::uint64_t copier_batch;     // pages
  std::uint64_t copier_interval;  // ps
  std::uint64_t copier_core;
  std::uint64_t cow_fault;        // instructions
  std::uint64_t copy_page;        // instructions
  std::uint64_t restore_page;     // instructions

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(copier_batch, "copier_batch", "64", Spec().at_least(1),
            "Background copier: pages copied into the snapshot store per run (assumption, as a kthread that "
            "copies a batch and sleeps, in the manner of KSM's pages_to_scan).");
    v.param(copier_interval, "copier_interval", "1ms", Spec(Unit::Time).at_least(1e6),
            "Background copier: time between its runs (assumption).");
    v.param(copier_core, "copier_core", "0", Spec(),
            "Background copier: the core it runs on (its work takes that core from its vCPUs).");
    v.param(cow_fault, "cow_fault", "600", Spec(Unit::Instructions),
            "Snapshot copy-before-write: the fixed part of handling a write to a page not yet saved (finding "
            "the page, allocating the store frame, bookkeeping), besides the write-protection fault and the "
            "charged 4 KiB copy (assumption, of the order of a copy-on-write fault without the copy).");
    v.param(copy_page, "copy_page", "200", Spec(Unit::Instructions),
            "Background copier: the fixed part of saving one page, besides the EPT look-up and the charged "
            "4 KiB copy (assumption).");
    v.param(restore_page, "restore_page", "200", Spec(Unit::Instructions),
            "Restore: the fixed part of writing one saved page back, besides the charged copy (assumption).");
  }
};

/// A VM's snapshot schedule (vms[].snapshot).
struct SnapshotSpec {
  bool enabled = false;
  std::uint64_t at = 0;          // ps: the snapshot is taken then
  std::uint64_t restore_at = 0;  // ps: the VM is restored to it then (0: never)
};

}  // namespace vmx::hv
