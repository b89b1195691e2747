// A set-associative TLB for one page size or several sharing one array (the
// STLB holds 4 KiB and 2 MiB translations), true LRU, tagged the way Intel
// tags translations (SDM Vol. 3A, 4.10.1 and 4.10.2.4; Vol. 3C, 28.3.1):
// by VPID, by PCID unless the translation is global, and — for combined
// (guest-linear to host-physical) mappings cached with EPT on — by the EP4TA,
// the EPT PML4 table address taken from the EPTP.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::mmu {

/// The defaults of one TLB and where they come from, written once per TLB
/// in the descriptors below; TlbParams::visit_with declares them.
struct TlbDefaults {
  const char* entries;
  const char* entries_desc;
  const char* ways;
  const char* ways_desc;
  const char* latency;
  const char* latency_desc;
};

/// Geometry and lookup latency of one TLB. No member defaults: they come from
/// the descriptor through visit (cfg::defaults<DtlbParams>() etc.).
struct TlbParams {
  std::uint32_t entries;
  std::uint32_t ways;
  std::uint32_t latency;  // core cycles for a hit

  /// The set-associative geometry rule (cfg::geometry_problem).
  cfg::Problem check() const { return cfg::geometry_problem(entries, ways); }

  template <class V>
  void visit_with(V& v, const TlbDefaults& d) {
    v.param(entries, "entries", d.entries, cfg::Spec().at_least(1).at_most(1 << 20), d.entries_desc);
    v.param(ways, "ways", d.ways, cfg::Spec().at_least(1), d.ways_desc);
    v.param(latency, "latency", d.latency, cfg::Spec(cfg::Unit::Cycles), d.latency_desc);
  }
};

/// TlbParams whose visit declares the defaults of descriptor D.
template <const TlbDefaults& D>
struct TlbLevelParams : TlbParams {
  template <class V>
  void visit(V& v) { visit_with(v, D); }
};

// Intel Skylake figures: Intel 64 and IA-32 Architectures Optimization
// Reference Manual, Skylake microarchitecture, TLB parameters table.
inline constexpr TlbDefaults kDtlbDefaults{
    "64", "Entries. Default: 64, Skylake L1 DTLB for 4 KiB pages (Optimization Reference Manual, TLB "
          "parameters table).",
    "4", "Associativity. Default: 4-way (Skylake L1 DTLB, same table).",
    "1", "Hit latency in core cycles. Default: 1; the L1 DTLB is looked up in parallel with the L1D, so a "
         "hit costs about one cycle beyond the load (Optimization Reference Manual)."};

inline constexpr TlbDefaults kItlbDefaults{
    "128", "Entries. Default: 128, Skylake L1 ITLB for 4 KiB pages (Optimization Reference Manual, TLB "
           "parameters table).",
    "8", "Associativity. Default: 8-way (Skylake L1 ITLB, same table).",
    "1", "Hit latency in core cycles. Default: 1 (looked up in parallel with the L1I)."};

inline constexpr TlbDefaults kStlbDefaults{
    "1536", "Entries. Default: 1536, Skylake second-level TLB, shared by instructions and data "
            "(Optimization Reference Manual, TLB parameters table).",
    "12", "Associativity. Default: 12-way (Skylake STLB, same table).",
    "9", "Hit latency in core cycles (L1 TLB miss, STLB hit). Default: 9, Skylake (7-cpu.com measurement)."};

inline constexpr TlbDefaults kDtlb2mDefaults{
    "32", "Entries. Default: 32, Skylake L1 DTLB for 2 MiB/4 MiB pages (Optimization Reference Manual, TLB "
          "parameters table).",
    "4", "Associativity. Default: 4-way (same table).",
    "1", "Hit latency in core cycles. Default: 1 (looked up in parallel with the 4 KiB L1 DTLB)."};

inline constexpr TlbDefaults kDtlb1gDefaults{
    "4", "Entries. Default: 4, Skylake L1 DTLB for 1 GiB pages (Optimization Reference Manual, TLB parameters "
         "table).",
    "4", "Associativity. Default: 4-way, i.e. fully associative (same table).",
    "1", "Hit latency in core cycles. Default: 1 (looked up in parallel with the 4 KiB L1 DTLB)."};

inline constexpr TlbDefaults kItlb2mDefaults{
    "8", "Entries. Default: 8, Skylake L1 ITLB for 2 MiB/4 MiB pages, per thread (Optimization Reference "
         "Manual, TLB parameters table). 1 GiB code pages are held as their 2 MiB pieces.",
    "8", "Associativity. Default: 8, fully associative (same table).",
    "1", "Hit latency in core cycles. Default: 1 (looked up in parallel with the 4 KiB L1 ITLB)."};

inline constexpr TlbDefaults kStlb1gDefaults{
    "16", "Entries. Default: 16, Skylake STLB for 1 GiB pages (Optimization Reference Manual, TLB parameters "
          "table).",
    "4", "Associativity. Default: 4-way (same table).",
    "9", "Hit latency in core cycles. Default: 9, as the 4 KiB/2 MiB STLB (looked up in parallel with it)."};

using DtlbParams = TlbLevelParams<kDtlbDefaults>;
using ItlbParams = TlbLevelParams<kItlbDefaults>;
using StlbParams = TlbLevelParams<kStlbDefaults>;
using Dtlb2mParams = TlbLevelParams<kDtlb2mDefaults>;
using Dtlb1gParams = TlbLevelParams<kDtlb1gDefaults>;
using Itlb2mParams = TlbLevelParams<kItlb2mDefaults>;
using Stlb1gParams = TlbLevelParams<kStlb1gDefaults>;

/// Permission summary cached with a translation. Bits above kDirty are
/// carried untouched (the walker keeps its EPT permission bits there).
enum TlbPerm : std::uint8_t { kWritable = 1, kUser = 2, kExecutable = 4, kDirty = 8 };

/// What a translation is tagged with (SDM Vol. 3C, 28.3.1).
struct TlbTag {
  std::uint16_t vpid = 0;   // 0 in VMX root operation and when VPIDs are off
  std::uint16_t pcid = 0;   // CR3[11:0] when CR4.PCIDE = 1, else 0
  std::uint64_t ep4ta = 0;  // EPTP bits 51:12 when EPT is on, else 0
};

struct TlbEntry {
  std::uint64_t vpn = 0;  // linear address >> shift
  std::uint64_t pfn = 0;  // host-physical address >> shift
  TlbTag tag;
  std::uint8_t perms = 0;  // TlbPerm bits
  std::uint8_t shift = 12; // page size of the entry: 12, 21 or 30
  std::uint8_t pkey = 0;   // protection key of the leaf (SDM Vol. 3A, 4.6.2), checked on every hit
  bool global = false;     // G bit of the leaf (only honoured with CR4.PGE, the walker's call)
  bool valid = false;
};

struct TlbStats : stats::Group {
  TlbStats(stats::Group* parent, const std::string& name);
  stats::Counter lookups{this, "lookups", "lookups", "translation lookups"};
  stats::Counter hits{this, "hits", "lookups", "lookups that found a translation"};
  stats::Counter misses{this, "misses", "lookups", "lookups that did not"};
  stats::Counter insertions{this, "insertions", "entries", "translations inserted"};
  stats::Counter evictions{this, "evictions", "entries", "valid entries replaced by an insertion"};
  stats::Counter flushes{this, "flushes", "operations", "invalidation operations applied"};
  stats::Counter flushed_entries{this, "flushed_entries", "entries", "valid entries removed by invalidations"};
  stats::Ratio miss_rate{this, "miss_rate", "ratio", "misses per lookup", misses, lookups};
};

class Tlb {
 public:
  /// page_shift: 12, 21 or 30. Throws std::invalid_argument naming the TLB
  /// and the parameter unless entries / ways is a power-of-two set count.
  Tlb(const TlbParams& params, unsigned page_shift, stats::Group* parent, const std::string& name);
  /// A TLB whose one array holds several page sizes (smallest first, e.g.
  /// {12, 21}); a lookup probes the set each size indexes, smallest first.
  Tlb(const TlbParams& params, std::initializer_list<unsigned> page_shifts, stats::Group* parent,
      const std::string& name);

  /// The entry translating va in context tag, or nullptr. A hit needs a valid
  /// entry with the same page number, VPID and EP4TA, and either the global
  /// flag or the same PCID (SDM Vol. 3A, 4.10.2.4; Vol. 3C, 28.3.1). A hit
  /// makes the entry most recently used. The pointer is valid until the next
  /// insert or invalidation.
  /// Inline for the common case of a TLB that holds nothing (an array of
  /// a page size the software does not use): counted as the search would.
  const TlbEntry* lookup(std::uint64_t va, const TlbTag& tag) {
    if (!m_present) {
      ++m_stats.lookups;
      ++m_stats.misses;
      return nullptr;
    }
    return lookup_present(va, tag);
  }

  /// Caches the translation of va's page to pa's frame. An entry that
  /// lookup(va, tag) would hit is overwritten (a re-walk, e.g. to set the
  /// D bit); otherwise an invalid way is used, else the LRU way is evicted.
  /// page_shift: one of the TLB's sizes; 0 means the smallest. pkey: the
  /// leaf's protection key (bits 62:59).
  void insert(std::uint64_t va, std::uint64_t pa, std::uint8_t perms, bool global, const TlbTag& tag,
              unsigned page_shift = 0, std::uint8_t pkey = 0);

  /// Changes whenever what lookup() returns for some (va, tag) may have
  /// changed: every insert and every flush, and whenever the owner calls
  /// new_epoch() (a context change that alters what it accepts of a hit).
  /// The owner's hit memo (Mmu) is valid only within one epoch.
  std::uint64_t epoch() const { return m_epoch; }
  void new_epoch() { ++m_epoch; }
  /// Index of entry e in the array (e from lookup()).
  std::uint32_t index_of(const TlbEntry* e) const { return static_cast<std::uint32_t>(e - m_entries.data()); }
  /// A hit on the entry at `index`, without the search: counts the lookup
  /// and the hit and makes the entry most recently used, exactly as the
  /// lookup() that found it there would. Only for an index that lookup()
  /// returned for the same (va, tag) within the current epoch (nothing was
  /// inserted or flushed since, so the search would find it again).
  const TlbEntry& hit_at(std::uint32_t index) {
    ++m_stats.lookups;
    ++m_stats.hits;
    m_stamp[index] = ++m_clock;
    return m_entries[index];
  }

  /// Host-physical address of va through entry e.
  static std::uint64_t translate(const TlbEntry& e, std::uint64_t va) {
    return (e.pfn << e.shift) | (va & ((1ull << e.shift) - 1));
  }
  /// Whether the TLB holds pages of this size.
  bool holds(unsigned page_shift) const {
    return (page_shift == 12 || page_shift == 21 || page_shift == 30) && (m_holds & size_bit(page_shift));
  }

  // Invalidations (SDM Vol. 3A, 4.10.4.1; Vol. 3C, 28.3.3). Each counts one
  // flush and the entries it removed.

  /// Everything (power-on, and what software can ask for by combining the
  /// operations below).
  void flush_all();
  /// Every VPID except 0: INVVPID all-context (type 2, 28.3.3.3).
  void flush_nonzero_vpids();
  /// Every combined mapping (EP4TA != 0), any VPID: INVEPT all-context
  /// (type 2, 28.3.3.1). Linear mappings cached with EPT off survive.
  void flush_all_ep4ta();
  /// All entries of vpid, global ones included, every PCID and EP4TA:
  /// INVVPID single-context (type 1); in VPID 0 also MOV to CR4 that changes
  /// PGE/PCIDE (4.10.4.1) and INVPCID all-context (type 2).
  void flush_vpid(std::uint16_t vpid);
  /// The page of va in vpid for every PCID and EP4TA, global included:
  /// INVVPID individual-address (type 0, 28.3.3.3). Also a permitted
  /// superset of INVLPG; see flush_invlpg for its exact scope.
  void flush_address(std::uint64_t va, std::uint16_t vpid);
  /// INVLPG exactly (4.10.4.1): the page of va in vpid for the current PCID,
  /// plus global entries of that page whatever their PCID.
  void flush_invlpg(std::uint64_t va, std::uint16_t vpid, std::uint16_t pcid);
  /// INVPCID individual-address (type 0): the page of va, that PCID,
  /// global entries excepted.
  void flush_address_pcid(std::uint64_t va, std::uint16_t vpid, std::uint16_t pcid);
  /// Non-global entries of one PCID: INVPCID single-context (type 1), and
  /// MOV to CR3 with CR4.PCIDE = 1 and bit 63 clear (for the new PCID).
  void flush_pcid(std::uint16_t vpid, std::uint16_t pcid);
  /// Non-global entries of every PCID of vpid: MOV to CR3 with CR4.PCIDE = 0
  /// (only PCID 0 can be cached then), INVPCID type 3, INVVPID type 3.
  void flush_non_global(std::uint16_t vpid);
  /// Combined mappings of one EPT hierarchy, every VPID and PCID: INVEPT
  /// single-context (28.3.3.1).
  void flush_ep4ta(std::uint64_t ep4ta);

  /// The smallest page size held.
  unsigned page_shift() const { return m_shifts[0]; }
  std::uint32_t latency() const { return m_params.latency; }
  const TlbParams& params() const { return m_params; }
  std::uint32_t sets() const { return m_sets; }
  /// Valid entries (for tests and occupancy reports; walks the array).
  std::uint32_t occupancy() const;
  const TlbStats& stats() const { return m_stats; }

 private:
  // A way matches when its key (page number and size, kept in m_keys so
  // that a probe reads one contiguous run of keys) is the looked-up one and
  // its tags match.
  static bool tag_matches(const TlbEntry& e, const TlbTag& tag) {
    return e.tag.vpid == tag.vpid && e.tag.ep4ta == tag.ep4ta && (e.global || e.tag.pcid == tag.pcid);
  }
  static constexpr std::uint64_t kNoKey = ~0ull;  // the key of an invalid way
  /// lookup() past its empty check: each size present probed in its set.
  const TlbEntry* lookup_present(std::uint64_t va, const TlbTag& tag);
  /// The way of [base, base + ways) whose key is `key` and whose tags
  /// match, or `ways` (a host-speed scan: keys compared four a step).
  std::size_t find_way(std::size_t base, std::uint64_t key, const TlbTag& tag) const;
  static std::uint64_t key_of(std::uint64_t vpn, unsigned shift) { return (vpn << 2) | ((shift - 12) / 9); }
  static unsigned size_bit(unsigned shift) { return 1u << ((shift - 12) / 9); }
  std::size_t set_base(std::uint64_t vpn) const { return static_cast<std::size_t>(vpn & m_set_mask) * m_params.ways; }
  template <class Pred>
  void flush_if(Pred pred);
  template <class Pred>
  void flush_page_if(std::uint64_t va, Pred pred);

  TlbParams m_params;
  TlbStats m_stats;
  std::array<std::uint8_t, 3> m_shifts{};  // page sizes held, smallest first
  unsigned m_nshifts = 0;
  std::uint32_t m_sets = 0;
  std::uint64_t m_set_mask = 0;
  std::uint64_t m_clock = 0;
  std::uint64_t m_epoch = 1;           // see epoch(); a memo entry of epoch 0 is never valid
  std::vector<TlbEntry> m_entries;     // sets x ways, allocated once
  std::vector<std::uint64_t> m_keys;   // per way: key_of(vpn, shift), kNoKey when invalid
  std::uint8_t m_present = 0;          // size_bit of every size inserted since the last flush_all
  std::uint8_t m_holds = 0;            // size_bit of every size the TLB holds
  // Last-use time per entry: true LRU. An invalid way's stamp is 0 and a
  // valid one's is unique and above 0 (each use takes ++m_clock), so the
  // first way of least stamp is the first invalid way, else the least
  // recently used (insert).
  std::vector<std::uint64_t> m_stamp;
};

}  // namespace vmx::mmu
