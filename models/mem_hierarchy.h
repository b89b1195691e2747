// One core's view of the cache hierarchy: private L1I, L1D and L2, a shared
// last-level cache, and DRAM. Returns the latency of each access in core
// cycles; page walks go through it like loads do (docs/architecture.md).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "models/cache.h"
#include "models/coherence.h"
#include "models/dram.h"
#include "models/mem_crypt.h"
#include "models/rdt.h"
#include "models/prefetcher.h"
#include "sim/events.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::models {

/// Who is asking. Fetch uses the L1I; Read, Write and Walk (page-walker
/// paging-structure references, which Intel cores issue through the L1D)
/// use the L1D.
enum class AccessKind : std::uint8_t { Fetch, Read, Write, Walk };

/// The private levels of one core, the DRAM latency and the coherence of
/// the cores' private caches. The shared LLC has its own LlcParams, owned by
/// the platform that builds it; the platform also builds the coherence
/// directory (models/coherence.h) when coherence.enabled and joins each
/// core's hierarchy to it. A hierarchy that joins none is not coherent.
struct MemHierarchyParams {
  L1iParams l1i;
  L1dParams l1d;
  L2Params l2;
  std::uint32_t dram_latency;  // core cycles beyond the LLC's latency
  CoherenceParams coherence;
  L2PrefetchParams l2_prefetch;

  template <class V>
  void visit(V& v) {
    v.section(l1i, "l1i", "Private level-1 instruction cache.");
    v.section(l1d, "l1d", "Private level-1 data cache (also serves page-walk references).");
    v.section(l2, "l2", "Private unified level-2 cache.");
    v.param(dram_latency, "dram_latency", "204", cfg::Spec(cfg::Unit::Cycles),
            "Core cycles a DRAM access adds to the LLC's load-to-use latency. Default: 204; 7-cpu.com "
            "measures Skylake i7-6700 RAM latency as 42 cycles + 51 ns, and 51 ns at its 4 GHz is 204 cycles.");
    v.section(coherence, "coherence", "Coherence of the cores' private caches: a MESI directory at the LLC.");
    v.section(l2_prefetch, "l2_prefetch", "The L2 hardware prefetcher (next-line and stride), on by default.");
  }
};

/// Cache allocation and MBA as seen by one hierarchy (models/rdt.h).
struct MemQosStats : stats::Group {
  explicit MemQosStats(stats::Group* parent);
  stats::Counter mba_delayed{this, "mba_delayed", "accesses", "L2 misses the MBA rate controller held back"};
  stats::Counter mba_cycles{this, "mba_cycles", "cycles", "cycles L2 misses waited in the MBA rate controller"};
};

struct MemHierarchyStats : stats::Group {
  MemHierarchyStats(stats::Group* parent, const std::string& name);
  stats::Counter fetches{this, "fetches", "accesses", "instruction fetches"};
  stats::Counter reads{this, "reads", "accesses", "data loads"};
  stats::Counter writes{this, "writes", "accesses", "data stores"};
  stats::Counter walks{this, "walks", "accesses", "page-walker paging-structure references"};
  stats::Counter dram_accesses{this, "dram_accesses", "accesses", "demand accesses that missed every cache level"};
  stats::Counter dram_writebacks{this, "dram_writebacks", "lines", "dirty lines written back from the LLC to DRAM"};
  stats::Counter cycles{this, "cycles", "cycles", "total latency returned by access()"};
};

/// The memory-encryption engine's work for this core (attach_crypt; the
/// group exists only on a platform with memory encryption).
struct CryptStats : stats::Group {
  explicit CryptStats(stats::Group* parent)
      : stats::Group(parent, "crypt", "the memory controller's encryption engine, for this core's requests") {}
  stats::Counter fills{this, "fills", "lines",
                       "encrypted lines filled from DRAM, on demand or by the L2 prefetcher (each decrypted by "
                       "the engine)"};
  stats::Counter writebacks{this, "writebacks", "lines",
                            "encrypted lines written back to DRAM (each encrypted by the engine)"};
  stats::Counter cycles{this, "cycles", "cycles",
                        "engine latency of those fills (line_latency per fill, demand or L2 prefetch)"};
};

class MemHierarchy {
 public:
  /// llc is shared by the cores of a socket and must outlive this object;
  /// throws std::invalid_argument if it is null. The private caches' stats
  /// are children "l1i", "l1d", "l2" of this hierarchy's group `name`.
  MemHierarchy(const MemHierarchyParams& params, Cache* llc, stats::Group* parent,
               const std::string& name = "mem");

  /// One access; returns its latency in core cycles. Latencies are the
  /// load-to-use totals of the level that hits, as measured from the core,
  /// not sums over the levels passed through:
  ///   L1 hit -> L1 latency; L1 miss, L2 hit -> L2 latency;
  ///   L2 miss, LLC hit -> LLC latency; LLC miss -> LLC latency + dram_latency.
  /// Fills are non-inclusive: the line is allocated in every level it missed
  /// in, and nothing is back-invalidated when a lower level evicts it. Dirty
  /// victims are written back into the next level (L1 -> L2 -> LLC -> DRAM)
  /// after the demand access; writebacks add no latency (write buffers).
  /// A Write is timed like a load; store buffering is the core's business.
  /// Joined to a coherence directory, an access that involves another core
  /// costs what models/coherence.h lists instead.
  /// Inline: the L1 hit is the hot path; a miss goes out of line.
  [[gnu::always_inline]] std::uint32_t access(std::uint64_t pa, AccessKind kind) {
    Cache* l1 = &m_l1d;
    switch (kind) {
      case AccessKind::Fetch: ++m_stats.fetches; l1 = &m_l1i; break;
      case AccessKind::Read: ++m_stats.reads; break;
      case AccessKind::Write: ++m_stats.writes; break;
      case AccessKind::Walk: ++m_stats.walks; break;
    }
    const bool write = kind == AccessKind::Write;
    // A store dirties its L1 line and owns it (gain_ownership below makes
    // that true when the line was Shared).
    const Cache::Lookup r = l1->lookup(pa, write ? Cache::kDirty | Cache::kOwned : 0);
    std::uint32_t cycles;
    if (r == Cache::kMiss) [[unlikely]] {
      cycles = miss(pa, kind, *l1);  // reports the levels it looked up
    } else if (r == Cache::kHitShared && write) [[unlikely]] {
      // A store to a Shared line gains ownership first (only coherent
      // hierarchies hold lines Shared).
      cycles = gain_ownership(pa);
      if (m_events->wants(events::kCacheAccess)) [[unlikely]] report(pa, kind, 1);
    } else {
      cycles = l1->latency();
      if (m_events->wants(events::kCacheAccess)) [[unlikely]] report(pa, kind, 1);
    }
    m_stats.cycles += cycles;
    return cycles;
  }

  const Cache& l1i() const { return m_l1i; }
  const Cache& l1d() const { return m_l1d; }
  const Cache& l2() const { return m_l2; }
  const Cache& llc() const { return *m_llc; }
  const MemHierarchyStats& stats() const { return m_stats; }

  /// Drops the contents of the private caches (the shared LLC is untouched).
  void invalidate_private();

  /// The prefetcher's statistics, or null when it is off.
  const L2PrefetchStats* prefetch_stats() const { return m_prefetch ? &m_prefetch->stats() : nullptr; }

  /// The coherence group of the statistics, or null when not coherent.
  const CoherenceStats* coherence_stats() const { return m_coh_stats.get(); }

  // For the coherence directory (models/coherence.cc). Snoops of pa's line
  // in this core's private caches; each returns the or of the line's
  // previous Cache::state() over L1I, L1D and L2 (0: no copy).
  /// Called by Coherence::join; has_peers once another hierarchy joined.
  void attach_coherence(Coherence* c);
  void set_has_peers() { m_has_peers = true; }
  /// Drops every copy (another core's store, a DMA write).
  std::uint64_t snoop_invalidate(std::uint64_t pa);
  /// Makes every copy Shared and clean (another core's load).
  std::uint64_t snoop_downgrade(std::uint64_t pa);
  /// Changes nothing.
  std::uint64_t line_state(std::uint64_t pa) const;
  void count_invalidation_sent() { ++m_coh_stats->invalidations_sent; }
  /// Where this hierarchy reports each demand access's lookup in each level
  /// (sim/events.h, kCacheAccess and kCacheMiss): the events of the core it
  /// serves. Null: nobody listens.
  void set_events(const events::Dispatcher* d) { m_events = d ? d : &events::Dispatcher::none(); }

  // DRAM timing (models/dram.h). Without attach_dram, an LLC miss costs the
  // fixed dram_latency. With it, each LLC miss and each dirty line written
  // back from the LLC is a request to the shared DRAM at the core's current
  // time: *clock (the core's cycle count) plus the time bias the core sets
  // for references inside a walk, whose cycles it has not charged yet.
  /// `requester` is this hierarchy's index from Dram::add_requester;
  /// core_hz converts the core's cycles to the DRAM's picoseconds.
  void attach_dram(Dram* dram, unsigned requester, std::uint64_t core_hz);
  /// The clock of the core that executes (SMT siblings share a hierarchy;
  /// each sets its own when it runs).
  void set_clock(const std::uint64_t* clock) { m_clock = clock; }
  void set_time_bias(std::uint64_t cycles) { m_time_bias = cycles; }

  // Memory encryption (models/mem_crypt.h). Addresses carry the key ID in
  // bits above MAXPHYADDR, so each cache tags its lines with it. A line
  // with a key ID filled from DRAM waits line_cycles more for the engine to
  // decrypt it; one written back to DRAM is encrypted first (the write
  // reaches DRAM line_cycles later; writebacks add no latency to the core).
  /// Called by the platform when it has the engine; creates the "crypt" stats.
  void attach_crypt(std::uint32_t line_cycles);
  const CryptStats* crypt_stats() const { return m_crypt_stats.get(); }
  // Cache allocation and bandwidth throttling (models/rdt.h). Attached, the
  // LLC fills and the writebacks into the LLC of this hierarchy take only
  // the ways of the executing thread's class of service, and each L2 miss
  // waits for the class's MBA pacing before it goes to the LLC.
  /// core_hz converts the core's cycles to picoseconds (as attach_dram).
  void attach_rdt(const Rdt* rdt, std::uint64_t core_hz);
  /// The class of service of the thread that executes (IA32_PQR_ASSOC).
  void set_clos(unsigned clos) { m_clos = clos; }
  unsigned clos() const { return m_clos; }
  /// The RDT group of the statistics, or null when not attached.
  const MemQosStats* qos_stats() const { return m_qos_stats.get(); }

 private:
  std::uint32_t miss(std::uint64_t pa, AccessKind kind, Cache& l1);
  std::uint32_t gain_ownership(std::uint64_t pa);
  /// The L2 prefetcher after a demand access to pa's line reached the L2;
  /// `cycles` is the access's latency so far, raised when it caught up with
  /// an in-flight prefetch of the line.
  void prefetch_after(std::uint64_t pa, bool l2_hit, std::uint32_t& cycles);
  /// An encrypted line filled from DRAM (on demand or by the prefetcher):
  /// the engine decrypts it on its way in (XTS cannot start before the data
  /// arrives). Counts the fill; returns the engine's cycles.
  std::uint32_t decrypt_fill() {
    ++m_crypt_stats->fills;
    m_crypt_stats->cycles += m_crypt_cycles;
    return m_crypt_cycles;
  }
  void writeback_to_l2(std::uint64_t line_pa);
  void writeback_to_llc(std::uint64_t line_pa);
  /// Reports the levels an access looked up: every level above `hit_level`
  /// missed, `hit_level` hit (4: none did, DRAM served it).
  void report(std::uint64_t pa, AccessKind kind, unsigned hit_level) const;
  /// What an LLC miss adds to the LLC latency (fixed, or the DRAM model's
  /// answer for a read at this time), and a writeback from the LLC to DRAM.
  std::uint32_t dram_read(std::uint64_t pa, std::uint32_t delay);
  /// The MBA pacing of an L2 miss leaving now, in core cycles.
  std::uint32_t mba_delay();
  std::uint64_t llc_mask() const { return m_rdt ? m_rdt->mask(m_clos) : 0; }
  void dram_write(std::uint64_t line_pa);
  std::uint64_t dram_time_ps(std::uint32_t extra_cycles) const;
  /// Sets m_core_hz and the reduced ratio of the conversions below.
  void set_core_hz(std::uint64_t core_hz);
  /// floor(cycles x 10^12 / core_hz) and ceil(ps x core_hz / 10^12), exact:
  /// by the ratio reduced by gcd(10^12, core_hz) (1000/3 at 3 GHz), in 64
  /// bits whenever the product fits (a 128-bit division otherwise).
  std::uint64_t ps_of_cycles(std::uint64_t cycles) const {
    if (cycles <= m_ps_fit) [[likely]] return cycles * m_ps_num / m_ps_den;
    return static_cast<std::uint64_t>(static_cast<unsigned __int128>(cycles) * m_ps_num / m_ps_den);
  }
  std::uint64_t cycles_of_ps_ceil(std::uint64_t ps) const {
    if (ps <= m_cyc_fit) [[likely]] return (ps * m_ps_den + m_ps_num - 1) / m_ps_num;
    return static_cast<std::uint64_t>((static_cast<unsigned __int128>(ps) * m_ps_den + m_ps_num - 1) / m_ps_num);
  }

  MemHierarchyStats m_stats;
  Cache m_l1i;
  Cache m_l1d;
  Cache m_l2;
  Cache* m_llc;
  std::uint32_t m_dram_latency;
  Coherence* m_coherence = nullptr;                // null: not coherent
  bool m_has_peers = false;                        // other cores joined the directory
  std::unique_ptr<CoherenceStats> m_coh_stats;     // exists once coherent
  const events::Dispatcher* m_events = &events::Dispatcher::none();
  Dram* m_dram = nullptr;                          // null: the fixed dram_latency
  unsigned m_dram_requester = 0;
  std::uint64_t m_core_hz = 0;
  std::uint64_t m_ps_num = 0, m_ps_den = 1;  // 10^12 / core_hz, reduced (set_core_hz)
  std::uint64_t m_ps_fit = 0, m_cyc_fit = 0;  // the largest operands whose products fit in 64 bits
  const std::uint64_t* m_clock = nullptr;
  std::uint64_t m_time_bias = 0;
  std::uint32_t m_crypt_cycles = 0;
  std::unique_ptr<CryptStats> m_crypt_stats;  // exists once attach_crypt ran
  const Rdt* m_rdt = nullptr;                      // null: no cache allocation, no MBA
  unsigned m_clos = 0;
  std::uint64_t m_mba_next_ps = 0;                 // earliest issue of the next paced L2 miss
  std::unique_ptr<MemQosStats> m_qos_stats;        // exists once RDT is attached
  std::unique_ptr<L2Prefetcher> m_prefetch;        // null: no prefetcher
  std::vector<std::uint64_t> m_prefetch_lines;     // scratch, kept to avoid allocating per miss
};

}  // namespace vmx::models
