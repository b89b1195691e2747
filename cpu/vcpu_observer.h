// Per-vCPU statistics: a listener (sim/events.h) that the core attaches
// while the VMCS it is observing is in VMX non-root operation, from the VM
// entry to the VM exit (Core::observe_vmcs). Everything it counts is
// reported once by the hardware; counting is simulator observation, not
// architectural state.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "cpu/vmx.h"
#include "sim/events.h"
#include "sim/stats.h"

namespace vmx::cpu {

struct VcpuObserver : stats::Group, events::Listener {
  /// The kinds it needs: every one it receives happens in the guest.
  static constexpr events::Mask kKinds = events::bit(events::kRetired) | events::bit(events::kTlbMiss) |
                                         events::bit(events::kWalk) | events::bit(events::kVmEntry) |
                                         events::bit(events::kVmExit);
  VcpuObserver(stats::Group* parent, const std::string& name);

  stats::Counter guest_instructions{this, "instructions", "instructions", "instructions retired in the guest"};
  stats::Counter guest_cycles{this, "guest_cycles", "cycles", "cycles in VMX non-root operation"};
  stats::Counter exits{this, "exits", "exits", "VM exits"};
  stats::Counter entries{this, "entries", "entries", "VM entries"};
  stats::Counter walks{this, "walks", "walks", "page walks on TLB misses in the guest"};
  stats::Counter walk_refs{this, "walk_refs", "references", "paging-structure references of those walks"};
  stats::Counter walk_cycles{this, "walk_cycles", "cycles", "cycles of those walks"};
  stats::Ratio mean_walk_refs{this, "mean_walk_refs", "references", "mean references per walk", walk_refs, walks};
  stats::Ratio mean_walk_cycles{this, "mean_walk_cycles", "cycles", "mean cycles per walk", walk_cycles, walks};
  stats::Histogram walk_latency{this, "walk_latency", "cycles", "cycles per walk (distribution)"};
  stats::Counter walk_guest_refs{this, "walk_guest_refs", "references", "guest-dimension references of those walks"};
  stats::Counter walk_ept_refs{this, "walk_ept_refs", "references", "EPT-dimension references of those walks"};
  stats::Counter psc_hits{this, "psc_hits", "lookups", "paging-structure-cache hits of those walks"};
  stats::Counter nested_tlb_hits{this, "nested_tlb_hits", "lookups", "nested-TLB hits of those walks"};
  stats::Counter tlb_l1_misses{this, "tlb_l1_misses", "lookups", "guest accesses that missed every L1 TLB"};
  stats::Counter tlb_l2_misses{this, "tlb_l2_misses", "lookups", "of those, accesses that also missed the STLB"};
  /// Per exit reason: count and round-trip cycles from the exit to the next
  /// completed VM entry of this vCPU.
  struct Reason : stats::Group {
    Reason(stats::Group* p, const std::string& n) : Group(p, n) {}
    stats::Histogram cycles{this, "cycles", "cycles", "exit-to-reentry cycles"};
  };
  Reason& reason(unsigned r);
  /// Counts the guest interval still open at `now` (cycles of the vCPU's
  /// core) into guest_cycles, for a statistics dump in the middle of it.
  void flush(std::uint64_t now) {
    if (!in_guest || now <= entered_at) return;
    guest_cycles += now - entered_at;
    total_guest_cycles += now - entered_at;
    entered_at = now;
  }

  // events::Listener
  void retired(const events::Retired& e) override { guest_instructions += e.instructions; }
  void tlb_miss(const events::TlbMiss& e) override {
    if (e.level == 1) ++tlb_l1_misses;
    else ++tlb_l2_misses;
  }
  void walk(const events::Walk& e) override;
  void vm_entry(const events::VmEntry& e) override;
  void vm_exit(const events::VmExit& e) override;

  // Raw observation, never reset: guest cycles up to the last exit, and
  // whether the vCPU is in the guest now (for accounting by its owner).
  std::uint64_t total_guest_cycles = 0;
  bool in_guest = false;
  // Open exit, waiting for the next entry.
  unsigned pending_reason = 0;
  std::uint64_t pending_since = 0;
  bool pending = false;
  std::uint64_t entered_at = 0;

 private:
  stats::Group* m_by_reason = &subgroup("exit_reasons", "VM exits by basic exit reason");
  std::array<Reason*, kMaxExitReason> m_reasons{};
};

}  // namespace vmx::cpu
