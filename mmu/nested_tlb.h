// The nested TLB: guest-physical to host-physical translations that the
// walker uses before walking EPT, both for the guest-physical addresses of
// guest paging structures and for the final guest-physical address of an
// access. Intel processors cache such guest-physical mappings (SDM Vol. 3C,
// 29.4.1) without documenting the structure; AMD's nested TLB (Bhargava et
// al., "Accelerating two-dimensional page walks for virtualized systems",
// ASPLOS 2008) is the published design this follows. Tagged by the EP4TA;
// an entry maps one EPT page of 4 KiB, 2 MiB or 1 GiB and holds the AND of
// the EPT R/W/X permissions over the walk.
#pragma once

#include <cstdint>
#include <string>

#include "mmu/assoc.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::mmu {

struct NestedTlbParams {
  bool enabled;
  std::uint32_t entries;
  std::uint32_t ways;
  std::uint32_t latency;

  /// The set-associative geometry rule (cfg::geometry_problem).
  cfg::Problem check() const { return cfg::geometry_problem(entries, ways); }

  template <class V>
  void visit(V& v) {
    v.param(enabled, "enabled", "true", cfg::Spec(),
            "Whether the nested TLB exists. Off: every guest-physical address a walk needs is walked in EPT "
            "(through the EPT paging-structure caches, if on).");
    v.param(entries, "entries", "32", cfg::Spec().at_least(1).at_most(1 << 20),
            "Entries. Default: 32 (assumption; Intel does not publish the size of the structure caching "
            "guest-physical mappings for walks, and Bhargava et al., ASPLOS 2008, evaluate nested TLBs of a "
            "few tens of entries).");
    v.param(ways, "ways", "4", cfg::Spec().at_least(1), "Associativity. Default: 4 (assumption).");
    v.param(latency, "latency", "1", cfg::Spec(cfg::Unit::Cycles),
            "Lookup latency in core cycles, charged for every guest-physical address looked up. Default: 1 "
            "(assumption).");
  }
};

struct NestedTlbStats : stats::Group {
  NestedTlbStats(stats::Group* parent, const std::string& name);
  stats::Counter lookups{this, "lookups", "lookups", "guest-physical addresses looked up by walks"};
  stats::Counter hits{this, "hits", "lookups", "lookups that found a translation"};
  stats::Counter misses{this, "misses", "lookups", "lookups that did not (an EPT walk follows)"};
  stats::Counter insertions{this, "insertions", "entries", "translations filled from EPT walks"};
  stats::Counter evictions{this, "evictions", "entries", "valid entries replaced by a fill"};
  stats::Counter flushes{this, "flushes", "operations", "invalidation operations applied"};
  stats::Counter flushed_entries{this, "flushed_entries", "entries", "valid entries removed by invalidations"};
  stats::Ratio hit_rate{this, "hit_rate", "ratio", "hits per lookup", hits, lookups};
};

struct NestedTlbEntry {
  std::uint64_t gfn = 0;    // guest-physical address >> shift
  std::uint64_t hfn = 0;    // host-physical address >> shift
  std::uint64_t ep4ta = 0;
  std::uint8_t perms = 0;   // EPT R/W/X (bits 2:0); bit 3: leaf dirty or EPT A/D off (mmu::kEptLeafDirty)
  std::uint8_t shift = 12;  // 12, 21 or 30
  bool valid = false;
};

class NestedTlb {
 public:
  NestedTlb(const NestedTlbParams& params, stats::Group* parent, const std::string& name);

  bool enabled() const { return m_params.enabled; }
  std::uint32_t latency() const { return m_params.latency; }

  /// The translation of gpa under ep4ta, or nullptr. Each page size present
  /// is probed in its own set (index = gpa >> shift).
  const NestedTlbEntry* lookup(std::uint64_t gpa, std::uint64_t ep4ta);
  void insert(std::uint64_t gpa, std::uint64_t hpa, std::uint8_t perms, unsigned shift, std::uint64_t ep4ta);
  std::uint64_t translate(const NestedTlbEntry& e, std::uint64_t gpa) const {
    return (e.hfn << e.shift) | (gpa & ((1ull << e.shift) - 1));
  }

  /// INVEPT single-context (SDM Vol. 3C, 29.4.3.1): one EPT hierarchy.
  void flush_ep4ta(std::uint64_t ep4ta);
  /// INVEPT all-context, and power-on.
  void flush_all();
  /// The entries of ep4ta that translate gpa (an EPT violation, 29.4.3.1).
  void flush_gpa(std::uint64_t gpa, std::uint64_t ep4ta);

  std::uint32_t occupancy() const { return m_array.occupancy(); }
  const NestedTlbStats& stats() const { return m_stats; }

 private:
  NestedTlbParams m_params;
  NestedTlbStats m_stats;
  SetAssoc<NestedTlbEntry> m_array;
  std::uint8_t m_sizes = 0;  // bit (shift - 12) / 9 set when an entry of that size was filled
};

}  // namespace vmx::mmu
