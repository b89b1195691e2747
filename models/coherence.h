// Coherence of the cores' private caches: a MESI directory at the shared LLC.
//
// Each line in a core's private caches (L1I, L1D, L2; SMT siblings share
// them) carries the Cache::kOwned bit: set, the core holds the only copy
// (Exclusive, or Modified with kDirty) and a store to it is a plain L1 hit;
// clear, the line is Shared and a store must first gain ownership. The
// directory answers the question an inclusive LLC's core-valid bits answer on
// Intel parts (which cores may hold a line, and whether one of them may have
// it modified) exactly, by looking the line up in the other cores' tags: the
// LLC here is not inclusive, and the exact answer keeps no second copy of the
// private caches' contents that could drift from them.
//
// What each access does to the other cores (models/mem_hierarchy.cc):
//   load miss, another core holds it modified  -> transfer_latency; that core
//     writes the line back to the LLC and both hold it Shared;
//   load miss, another core holds it exclusive -> snoop_latency; both Shared;
//   load miss, others hold it Shared           -> from the LLC (llc latency),
//     or snoop_latency if only their private caches have it; Shared;
//   load miss, no other core holds it          -> as without coherence; the
//     line is filled owned (Exclusive);
//   store or locked RMW missing the private caches -> the other copies are
//     invalidated: transfer_latency if one was modified, invalidate_latency
//     if they were clean;
//   store hitting a Shared line (an upgrade)   -> invalidate_latency, or the
//     LLC latency when no other core holds it any more;
//   store hitting an owned line                -> a plain L1 hit.
// Device DMA is coherent, as on x86: a DMA write invalidates every core's
// copies of the lines it writes; a DMA read leaves the cores' states alone
// (it reads the current data, which PhysMem always holds).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::models {

class MemHierarchy;

/// platform.caches.coherence: whether the private caches are kept coherent
/// and what a snoop, a transfer and an invalidation cost.
struct CoherenceParams {
  bool enabled;
  std::uint32_t snoop_latency;       // core cycles, load-to-use
  std::uint32_t transfer_latency;    // core cycles, load-to-use
  std::uint32_t invalidate_latency;  // core cycles

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(enabled, "enabled", "true", Spec(Unit::Flag),
            "Keep the cores' private caches coherent (MESI through a directory at the shared LLC, "
            "docs/model.md): a store invalidates the other cores' copies of its line, a load of a line another "
            "core holds exclusive or modified snoops that core. Off, the caches only decide hit or miss, and a "
            "line written on one core stays valid in the others' caches at no cost.");
    v.param(snoop_latency, "snoop_latency", "65", Spec(Unit::Cycles).at_least(1),
            "Load-to-use cycles of a private-cache miss that the LLC serves by snooping another core: the line "
            "is exclusive (clean) there, or no cache but other cores' private ones holds it. Default: 65, "
            "Intel's figure for an L3 hit on a line another core may hold, against ~40 for an unshared L3 hit "
            "(D. Levinthal, Performance Analysis Guide for Intel Core i7 Processor and Intel Xeon 5500 "
            "Processors, Intel 2009, table of load latencies).");
    v.param(transfer_latency, "transfer_latency", "75", Spec(Unit::Cycles).at_least(1),
            "Load-to-use cycles of a private-cache miss (load, store or locked read-modify-write) for a line "
            "another core holds modified: the cross-core transfer. Default: 75, Intel's figure for an L3 hit on "
            "a line modified in another core (Levinthal, same table).");
    v.param(invalidate_latency, "invalidate_latency", "65", Spec(Unit::Cycles).at_least(1),
            "Cycles of a store or locked read-modify-write to a line other cores hold clean, this core's Shared "
            "copy included: the read for ownership waits while the LLC invalidates the other copies. Default: "
            "65 (assumption: the same snoop round trip as snoop_latency; the table above has no separate "
            "figure for an invalidation).");
  }
};

/// What the other cores held of a line before a snoop, the most costly
/// last, so that the maximum over the cores decides the latency.
enum class PeerState : std::uint8_t { None, Shared, Exclusive, Modified };

/// Coherence events of one core's hierarchy (`system.cpu<i>_mem.coherence`).
struct CoherenceStats : stats::Group {
  explicit CoherenceStats(stats::Group* parent);
  stats::Counter transfers{this, "transfers", "accesses",
                           "private-cache misses served by another core that held the line modified"};
  stats::Counter snoop_hits{this, "snoop_hits", "accesses",
                            "loads served by snooping another core that held the line exclusive, or that only "
                            "other cores' private caches held"};
  stats::Counter upgrades{this, "upgrades", "accesses",
                          "stores to a line this core held Shared, which first gained ownership"};
  stats::Counter invalidations_sent{this, "invalidations_sent", "lines",
                                    "other cores' copies invalidated by this core's stores"};
  stats::Counter invalidations_received{this, "invalidations_received", "lines",
                                        "lines of this core invalidated by another core's store or a DMA write"};
  stats::Counter downgrades_received{this, "downgrades_received", "lines",
                                     "owned lines of this core made Shared by another core's load"};
  stats::Counter cycles{this, "cycles", "cycles",
                        "latency of the accesses that waited for another core: transfers, snoop hits, upgrades "
                        "and stores that invalidated other copies"};
};

/// Device-side coherence (`system.coherence`).
struct DirectoryStats : stats::Group {
  explicit DirectoryStats(stats::Group* parent);
  stats::Counter dma_invalidations{this, "dma_invalidations", "lines",
                                   "core copies invalidated by DMA writes and IOMMU table writes"};
  stats::Counter dma_modified_reads{this, "dma_modified_reads", "lines",
                                    "DMA or IOMMU-walk line reads that found the line modified in a core"};
};

/// The directory: knows every core's hierarchy and snoops them.
class Coherence {
 public:
  /// Statistics go under `parent` as "coherence".
  Coherence(const CoherenceParams& params, stats::Group* parent);

  /// Adds a core's hierarchy (its statistics gain a "coherence" group).
  void join(MemHierarchy& h);

  /// The snoop of a private-cache miss or upgrade by `requester` for pa's
  /// line: a store (`write`) invalidates the other cores' copies, a load
  /// takes ownership away from them (a modified copy becomes clean: the
  /// caller writes it back to the LLC). Returns what they held before.
  PeerState snoop(MemHierarchy& requester, std::uint64_t pa, bool write);

  /// Whether a core other than `requester` holds pa's line (changes nothing;
  /// the L2 prefetcher does not prefetch such lines).
  bool held_elsewhere(const MemHierarchy& requester, std::uint64_t pa) const;

  /// A device writes pa's line: every core's copy is invalidated.
  void dma_write(std::uint64_t pa);
  /// A device reads pa's line: the cores keep their copies; counted when one
  /// of them holds it modified.
  void dma_read(std::uint64_t pa);

  const CoherenceParams& params() const { return m_params; }
  const DirectoryStats& stats() const { return m_stats; }

 private:
  CoherenceParams m_params;
  DirectoryStats m_stats;
  std::vector<MemHierarchy*> m_members;
};

}  // namespace vmx::models
