// A set-associative cache timing model: tags, true LRU, write-back
// write-allocate with dirty bits, and the ownership bit the coherence
// directory keeps in the private caches (models/coherence.h). Data lives in
// models::PhysMem; the cache only decides hit or miss, which line is
// replaced, and what state a line is in.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::models {

/// The defaults of one cache level and where they come from. Each level's
/// defaults are written once, in its descriptor below; CacheParams::visit_with
/// declares the parameters from a descriptor.
struct CacheLevelDefaults {
  const char* size;
  const char* size_desc;
  const char* ways;
  const char* ways_desc;
  const char* line;
  const char* line_desc;
  const char* latency;
  const char* latency_desc;
};

/// Geometry and hit latency of one cache. No member defaults: they come from
/// the level's descriptor through visit (cfg::defaults<L1dParams>() etc.).
struct CacheParams {
  std::uint64_t size;     // bytes
  std::uint32_t ways;
  std::uint32_t line;     // bytes
  std::uint32_t latency;  // core cycles, load-to-use of a hit in this level

  /// size a non-zero multiple of ways x line, giving a power-of-two number
  /// of sets (the line is a power of two by its own constraint).
  cfg::Problem check() const {
    const std::uint64_t way_bytes = std::uint64_t(ways) * line;
    if (way_bytes == 0) return {"ways", "at least 1", "0"};
    if (ways > 256) return {"ways", "at most 256", std::to_string(ways)};
    if (size == 0 || size % way_bytes != 0)
      return {"size", "a non-zero multiple of ways x line (" + std::to_string(way_bytes) + " bytes)",
              std::to_string(size)};
    const std::uint64_t sets = size / way_bytes;
    if (sets & (sets - 1))
      return {"size", "a power-of-two number of sets, size / (ways x line)",
              std::to_string(size) + ", " + std::to_string(sets) + " sets"};
    return {};
  }

  template <class V>
  void visit_with(V& v, const CacheLevelDefaults& d) {
    v.param(size, "size", d.size, cfg::Spec(cfg::Unit::Bytes).at_least(1).at_most(256 << 20), d.size_desc);
    v.param(ways, "ways", d.ways, cfg::Spec().at_least(1), d.ways_desc);
    v.param(line, "line", d.line, cfg::Spec(cfg::Unit::Bytes).at_least(4).power_of_two(), d.line_desc);
    v.param(latency, "latency", d.latency, cfg::Spec(cfg::Unit::Cycles).at_least(1), d.latency_desc);
  }
};

/// CacheParams whose visit declares the defaults of descriptor D.
template <const CacheLevelDefaults& D>
struct CacheLevelParams : CacheParams {
  template <class V>
  void visit(V& v) { visit_with(v, D); }
};

// Skylake figures. L1 and L2 latencies are load-to-use cycles counted from the
// core, as the Optimization Reference Manual and 7-cpu.com quote them.
inline constexpr CacheLevelDefaults kL1iDefaults{
    "32KiB", "Capacity. Default: 32 KiB L1 instruction cache of Intel Skylake (Intel 64 and IA-32 "
             "Architectures Optimization Reference Manual, Skylake microarchitecture, cache parameters table).",
    "8", "Associativity. Default: 8-way (Skylake L1I, Optimization Reference Manual, same table).",
    "64B", "Line size. Default: 64 B, the line size of every Intel 64 cache level (Optimization Reference Manual).",
    "4", "Hit latency in core cycles. Default: 4, the Skylake L1 load-to-use latency (Optimization Reference "
         "Manual, cache parameters table); the same figure is used for fetch."};

inline constexpr CacheLevelDefaults kL1dDefaults{
    "32KiB", "Capacity. Default: 32 KiB L1 data cache of Intel Skylake (Intel 64 and IA-32 Architectures "
             "Optimization Reference Manual, Skylake microarchitecture, cache parameters table).",
    "8", "Associativity. Default: 8-way (Skylake L1D, Optimization Reference Manual, same table).",
    "64B", "Line size. Default: 64 B, the line size of every Intel 64 cache level (Optimization Reference Manual).",
    "4", "Load-to-use hit latency in core cycles. Default: 4, Skylake L1D (Optimization Reference Manual, "
         "cache parameters table; 7-cpu.com measures 4 cycles for simple addressing)."};

inline constexpr CacheLevelDefaults kL2Defaults{
    "1MiB", "Capacity. Default: 1 MiB private L2 of Intel Skylake-SP (Optimization Reference Manual, Skylake "
            "Server microarchitecture, cache comparison with Broadwell server).",
    "16", "Associativity. Default: 16-way (Skylake-SP L2, Optimization Reference Manual, same table).",
    "64B", "Line size. Default: 64 B, the line size of every Intel 64 cache level (Optimization Reference Manual).",
    "14", "Load-to-use hit latency in core cycles, counted from the core. Default: 14, Skylake-SP L2 "
          "(Optimization Reference Manual, Skylake Server cache comparison table)."};

inline constexpr CacheLevelDefaults kLlcDefaults{
    "8MiB", "Capacity of the shared last-level cache. Default: 8 MiB, the L3 of the Intel Skylake client "
            "i7-6700 measured by 7-cpu.com.",
    "16", "Associativity. Default: 16-way (Skylake i7-6700 L3, 7-cpu.com).",
    "64B", "Line size. Default: 64 B, the line size of every Intel 64 cache level (Optimization Reference Manual).",
    "42", "Load-to-use hit latency in core cycles, counted from the core. Default: 42, Skylake i7-6700 L3 "
          "measured by 7-cpu.com."};

using L1iParams = CacheLevelParams<kL1iDefaults>;
using L1dParams = CacheLevelParams<kL1dDefaults>;
using L2Params = CacheLevelParams<kL2Defaults>;
using LlcParams = CacheLevelParams<kLlcDefaults>;

struct CacheStats : stats::Group {
  CacheStats(stats::Group* parent, const std::string& name);
  stats::Counter accesses{this, "accesses", "accesses", "demand accesses (fetches, loads, stores, walk references)"};
  stats::Counter hits{this, "hits", "accesses", "demand accesses that found the line"};
  stats::Counter misses{this, "misses", "accesses", "demand accesses that did not; each fills the line"};
  stats::Counter evictions{this, "evictions", "lines", "valid lines replaced to make room for a fill"};
  stats::Counter writebacks{this, "writebacks", "lines", "dirty lines evicted, written back to the next level"};
  stats::Counter writebacks_received{this, "writebacks_received", "lines",
                                     "dirty lines written back into this cache by the level above"};
  stats::Ratio miss_rate{this, "miss_rate", "ratio", "misses per demand access", misses, accesses};
};

class Cache {
 public:
  /// Value of a writeback out-parameter when no dirty line was evicted.
  static constexpr std::uint64_t kNoWriteback = ~0ull;

  /// State bits kept with each line's tag. kDirty: written since the fill
  /// (write-back). kOwned: the holder has the only copy among the cores'
  /// private caches (MESI Exclusive, or Modified with kDirty), so a store
  /// needs no request to the LLC; a line without it is Shared. Only the
  /// private caches give the bit a meaning (models/coherence.h); lines that
  /// access() fills are owned. kPresent is or-ed into the state returned by
  /// state(), downgrade() and invalidate() when the line is present.
  static constexpr std::uint64_t kDirty = 1, kOwned = 2, kPresent = 4;

  /// Outcome of lookup(): a miss, a hit on an owned line, or a hit on a
  /// line this cache held without ownership (Shared).
  enum Lookup : std::uint8_t { kMiss = 0, kHit = 1, kHitShared = 3 };

  /// Throws std::invalid_argument naming the cache and the parameter unless
  /// ways, line and size are non-zero, line is a power of two, and
  /// size / (ways * line) is a whole power-of-two number of sets.
  Cache(const CacheParams& params, stats::Group* parent, const std::string& name);

  /// A demand access. Returns true on a hit. A hit makes the line most
  /// recently used; a miss fills it (write-allocate, owned), replacing the
  /// least recently used way. A write marks the line dirty (write-back). If
  /// a dirty line is evicted and writeback is non-null, *writeback receives
  /// its line address, else kNoWriteback. lookup() then fill() on a miss is
  /// the same access split in two, for a caller that decides the new line's
  /// state in between.
  bool access(std::uint64_t pa, bool write, std::uint64_t* writeback = nullptr);
  /// access() whose fill may replace only a way of `way_mask` (bit w: way
  /// w), as cache allocation confines a class of service (models/rdt.h).
  /// A hit finds the line in any way. A mask covering every way (or 0) is
  /// access().
  bool access_masked(std::uint64_t pa, bool write, std::uint64_t* writeback, std::uint64_t way_mask);

  /// The lookup half of a demand access: counts it, and on a hit makes the
  /// line most recently used and ors set_bits (kDirty, kOwned) into its
  /// state. Returns kHitShared when the line was there without kOwned
  /// before set_bits were applied.
  /// Inline (always: the compiler's unit-growth limits once left it out of
  /// line in cpu/core.cc): every load, store and walk reference starts here.
  [[gnu::always_inline]] Lookup lookup(std::uint64_t pa, std::uint64_t set_bits) {
    const std::uint64_t line_addr = pa >> m_line_shift;
    ++m_stats.accesses;
    std::uint64_t* const set = set_of(line_addr);
    const std::uint64_t tag = line_addr << 2;
    std::uint64_t word = set[0];
    if (!matches(word, tag)) {  // not the most recently used line
      std::uint64_t* w = set + 1;
      std::uint64_t* const end = set + m_params.ways;
      // Four ways a step (no loop test between them), most recent first.
      for (; w + 4 <= end; w += 4) {
        if (matches(w[0], tag)) goto found;
        if (matches(w[1], tag)) { w += 1; goto found; }
        if (matches(w[2], tag)) { w += 2; goto found; }
        if (matches(w[3], tag)) { w += 3; goto found; }
      }
      for (; w < end; ++w)
        if (matches(*w, tag)) goto found;
      ++m_stats.misses;
      return kMiss;
    found:
      word = *w;
      // Becomes most recently used: the more recent ways move down one.
      move_down(set, static_cast<std::size_t>(w - set));
    }
    ++m_stats.hits;
    set[0] = word | set_bits;
    return (word & kOwned) ? kHit : kHitShared;
  }

  /// The fill half: allocates pa's line, which lookup() just missed, as the
  /// most recently used with the given state bits, replacing the least
  /// recently used way (*writeback as in access()).
  void fill(std::uint64_t pa, std::uint64_t state, std::uint64_t* writeback) {
    const std::uint64_t line_addr = pa >> m_line_shift;
    insert_mru(set_of(line_addr), (line_addr << 2) | (state & kStateBits), writeback);
  }

  /// fill() whose allocation may replace only a way of `way_mask`, as in
  /// access_masked() (a prefetch into a partitioned LLC).
  void fill_masked(std::uint64_t pa, std::uint64_t state, std::uint64_t* writeback, std::uint64_t way_mask) {
    const std::uint64_t line_addr = pa >> m_line_shift;
    insert_masked(set_of(line_addr), (line_addr << 2) | (state & kStateBits), writeback, way_mask);
  }

  /// A dirty line written back into this cache by the level above: marks the
  /// line dirty (and owned) if present (its LRU position is unchanged: the
  /// core did not use it), else allocates it dirty, which may evict a line
  /// as access does.
  void receive_writeback(std::uint64_t pa, std::uint64_t* writeback = nullptr);
  /// receive_writeback() whose allocation is confined to `way_mask` as in
  /// access_masked().
  void receive_writeback_masked(std::uint64_t pa, std::uint64_t* writeback, std::uint64_t way_mask);
  /// The physical way that holds pa's line, or -1 when it is absent.
  int way_of(std::uint64_t pa) const;

  /// True if the line holding pa is present. Changes nothing.
  bool probe(std::uint64_t pa) const;
  /// True if the line holding pa is present and dirty. Changes nothing.
  bool probe_dirty(std::uint64_t pa) const;
  /// kPresent | the state bits of pa's line, or 0 when it is absent.
  /// Changes nothing.
  std::uint64_t state(std::uint64_t pa) const;

  /// Snoops for the coherence directory; neither counts as an access nor
  /// changes the recency order. downgrade() clears `bits` of pa's line if
  /// present; invalidate() drops the line (its data is in PhysMem, so no
  /// writeback is counted). Both return the line's previous state().
  std::uint64_t downgrade(std::uint64_t pa, std::uint64_t bits);
  std::uint64_t invalidate(std::uint64_t pa);

  /// Drops every line (INVD-like; contents are in PhysMem, so nothing is
  /// lost, and no writeback is counted).
  void invalidate_all();

  std::uint32_t latency() const { return m_params.latency; }
  const CacheParams& params() const { return m_params; }
  std::uint32_t sets() const { return m_sets; }
  const CacheStats& stats() const { return m_stats; }

  /// Host speed: keeps a presence filter from now on (an exact shortcut
  /// for queries that miss: state(), probe(), probe_dirty(), downgrade(),
  /// invalidate(), way_of()). Counters indexed by a hash of
  /// the line address, each the number of valid lines with that hash: a
  /// zero counter means the line is absent, so the set is not scanned. Kept
  /// by every insertion, eviction and invalidation; a counter that reaches
  /// its maximum stays there (it then never answers "absent"). Changes
  /// nothing in the model. MemHierarchy turns it on for the L2 and the LLC
  /// when the L2 prefetcher runs (its proposals query both, mostly for
  /// absent lines).
  void keep_presence_filter();
  bool presence_filter() const { return !m_present.empty(); }

  /// Host-speed hint: asks the host to bring pa's set of tags into its
  /// caches ahead of an access. Changes nothing in the model.
  void host_prefetch(std::uint64_t pa) const {
    const std::uint64_t* set = set_of(pa >> m_line_shift);
    for (std::uint32_t b = 0; b < m_set_bytes; b += 64) __builtin_prefetch(reinterpret_cast<const char*>(set) + b);
  }

 private:
  // Each set is a contiguous row of `ways` 64-bit words kept in recency
  // order, most recently used first: true LRU without stamps, the victim is
  // the last word. A word holds (line address << 2) | state bits, and in
  // bits 61:54 the physical way the line occupies (what cache allocation
  // masks select; a fill takes over its victim's way). An empty way's word
  // has bits 63:62 set (and its way number); empty ways always sit after
  // the valid ones. A word matches line address a when (word | ignore) ==
  // (a << 2 | ignore), ignore covering the state and way bits: one compare
  // for valid and tag. An empty way cannot match: physical addresses are
  // below 2^58 (MAXPHYADDR 52 plus the key ID of models/mem_crypt.h in bits
  // 57:52), so a line address has at most 52 significant bits and bits 63:54
  // of (a << 2) are clear. The key ID is part of the tag: the same line
  // under two keys is two lines.
  static constexpr std::uint64_t kStateBits = kDirty | kOwned;
  static constexpr unsigned kWayShift = 54;
  static constexpr std::uint64_t kWayBits = 0xFFull << kWayShift;
  static constexpr std::uint64_t kIgnoreBits = kStateBits | kWayBits;
  static constexpr std::uint64_t kValidLimit = 1ull << 62;  // valid words are below
  static constexpr std::uint64_t empty_word(std::uint32_t way) {
    return ~kWayBits | (std::uint64_t{way} << kWayShift);
  }
  static constexpr std::uint32_t way_bits(std::uint64_t word) {
    return static_cast<std::uint32_t>((word >> kWayShift) & 0xFF);
  }

  /// Whether `word` holds the line whose address shifted left by 2 is
  /// `tag`: (word | ignore) == (tag | ignore), as one xor and one test.
  static bool matches(std::uint64_t word, std::uint64_t tag) { return ((word ^ tag) & ~kIgnoreBits) == 0; }
  /// set[0 .. n-1] move to set[1 .. n] (set[n] is overwritten), n >= 1:
  /// straight moves, entered by the count, for the first 16 ways.
  static void move_down(std::uint64_t* set, std::size_t n) {
    switch (n) {
      default:
        for (std::size_t v = n; v > 15; --v) set[v] = set[v - 1];
        [[fallthrough]];
      case 15: set[15] = set[14]; [[fallthrough]];
      case 14: set[14] = set[13]; [[fallthrough]];
      case 13: set[13] = set[12]; [[fallthrough]];
      case 12: set[12] = set[11]; [[fallthrough]];
      case 11: set[11] = set[10]; [[fallthrough]];
      case 10: set[10] = set[9]; [[fallthrough]];
      case 9: set[9] = set[8]; [[fallthrough]];
      case 8: set[8] = set[7]; [[fallthrough]];
      case 7: set[7] = set[6]; [[fallthrough]];
      case 6: set[6] = set[5]; [[fallthrough]];
      case 5: set[5] = set[4]; [[fallthrough]];
      case 4: set[4] = set[3]; [[fallthrough]];
      case 3: set[3] = set[2]; [[fallthrough]];
      case 2: set[2] = set[1]; [[fallthrough]];
      case 1: set[1] = set[0]; [[fallthrough]];
      case 0: break;
    }
  }
  std::uint64_t* set_of(std::uint64_t line_addr) { return m_set0 + (line_addr & m_set_mask) * m_params.ways; }
  const std::uint64_t* set_of(std::uint64_t line_addr) const {
    return m_set0 + (line_addr & m_set_mask) * m_params.ways;
  }
  /// The word of line_addr's line, or null when absent.
  const std::uint64_t* find(std::uint64_t line_addr) const;
  std::uint64_t* find(std::uint64_t line_addr) {
    return const_cast<std::uint64_t*>(static_cast<const Cache*>(this)->find(line_addr));
  }
  /// Inserts word as the most recently used line of set, dropping the least
  /// recently used way; counts and reports its eviction (writeback).
  void insert_mru(std::uint64_t* set, std::uint64_t word, std::uint64_t* writeback);
  /// insert_mru() whose victim is the least recently used line (or empty
  /// way) among the ways of `way_mask`.
  void insert_masked(std::uint64_t* set, std::uint64_t word, std::uint64_t* writeback, std::uint64_t way_mask);
  /// Counts and reports the eviction of `victim`.
  void evicted(std::uint64_t victim, std::uint64_t* writeback);

  // The presence filter (keep_presence_filter): m_pf is null when off.
  std::vector<std::uint16_t> m_present;
  std::uint16_t* m_pf = nullptr;
  unsigned m_present_shift = 64;
  std::size_t present_slot(std::uint64_t line_addr) const {
    return static_cast<std::size_t>((line_addr * 0x9E3779B97F4A7C15ull) >> m_present_shift);
  }
  /// A valid word's counter (an empty way's word is not counted).
  std::uint16_t* present_counter(std::uint64_t word) {
    return word < kValidLimit ? &m_pf[present_slot((word & ~kIgnoreBits) >> 2)] : nullptr;
  }
  void present_add(std::uint64_t word) {
    if (std::uint16_t* c = present_counter(word); c && *c != UINT16_MAX) ++*c;
  }
  void present_remove(std::uint64_t word) {
    if (std::uint16_t* c = present_counter(word); c && *c != UINT16_MAX) --*c;  // a saturated counter stays
  }
  /// `word` replaced `victim` (a fill).
  void present_replace(std::uint64_t victim, std::uint64_t word) {
    if (m_pf) [[unlikely]] {
      present_remove(victim);
      present_add(word);
    }
  }
  bool surely_absent(std::uint64_t line_addr) const { return m_pf && m_pf[present_slot(line_addr)] == 0; }
  /// find() that first asks the presence filter (the queries that mostly
  /// miss; a write-back's search, which mostly finds its line, asks find()).
  const std::uint64_t* find_filtered(std::uint64_t line_addr) const {
    return surely_absent(line_addr) ? nullptr : find(line_addr);
  }
  std::uint64_t* find_filtered(std::uint64_t line_addr) {
    return surely_absent(line_addr) ? nullptr : find(line_addr);
  }

  CacheParams m_params;
  CacheStats m_stats;
  unsigned m_line_shift = 0;
  std::uint32_t m_sets = 0;
  std::uint32_t m_set_bytes = 0;
  std::uint64_t m_set_mask = 0;
  std::size_t m_base = 0;              // words before the first set: aligns sets to host cache lines
  std::uint64_t m_all_ways = 0;        // a way mask with every way
  std::vector<std::uint64_t> m_store;  // sets x ways words, allocated once
  std::uint64_t* m_set0 = nullptr;     // the first set: m_store.data() + m_base
};

}  // namespace vmx::models
