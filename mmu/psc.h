// Paging-structure caches (SDM Vol. 3A, 4.10.3; Vol. 3C, 29.4.1): one cache
// per paging-structure level and per dimension of the walk.
//
// Guest dimension. The PDE cache holds PDEs that reference a page table, the
// PDPTE cache PDPTEs that reference a page directory, and so on up to the
// PML5E cache. An entry is selected by the linear-address bits that select the
// cached entry (bits 47:21 for a PDE in 4-level paging; the whole upper part
// of the address is used as the key) and holds the physical address of the
// next table plus the rights accumulated down to that entry (R/W, U/S, XD:
// 4.10.3.1). It is tagged by VPID, PCID and, with EPT on, by the EP4TA: such
// entries are combined mappings (Vol. 3C, 29.4.1) whose next-table address is
// host-physical, so a hit also skips the EPT translation of that table.
//
// EPT dimension. The same structure for EPT entries that reference another
// EPT table, selected by guest-physical bits and tagged by the EP4TA only.
//
// The walker (mmu/walker) looks the caches of a dimension up longest match
// first, starts the walk below the entry that hit, and fills the caches from
// the entries it read. Entries are created only from walks that completed,
// and never for entries that map a page.
#pragma once

#include <cstdint>
#include <string>

#include "mmu/assoc.h"
#include "mmu/tlb.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::mmu {

/// Defaults of one paging-structure cache and where they come from.
struct PscDefaults {
  const char* entries;
  const char* ways;
  const char* source;  // appended to the entries and ways descriptions
};

/// Geometry, latency and switch of one paging-structure cache.
struct PscParams {
  bool enabled;
  std::uint32_t entries;
  std::uint32_t ways;
  std::uint32_t latency;  // core cycles for a lookup

  /// The set-associative geometry rule (cfg::geometry_problem).
  cfg::Problem check() const { return cfg::geometry_problem(entries, ways); }

  template <class V>
  void visit_with(V& v, const PscDefaults& d) {
    v.param(enabled, "enabled", "true", cfg::Spec(),
            "Whether the cache exists. Off: every walk reads this level from memory.");
    v.param(entries, "entries", d.entries, cfg::Spec().at_least(1).at_most(1 << 20), d.source);
    v.param(ways, "ways", d.ways, cfg::Spec().at_least(1), "Associativity (see entries for the source).");
    v.param(latency, "latency", "1", cfg::Spec(cfg::Unit::Cycles),
            "Lookup latency in core cycles, charged once per walk dimension for all its caches looked up in "
            "parallel (the largest latency among the enabled ones). Default: 1 (assumption; Intel does not "
            "publish it).");
  }
};

template <const PscDefaults& D>
struct PscLevelParams : PscParams {
  template <class V>
  void visit(V& v) { visit_with(v, D); }
};

// Intel does not publish the geometry of its paging-structure caches. The
// defaults follow ChampSim's default configuration (champsim_config.json,
// "PTW": PML5 1x2, PML4 1x4, PDPT 2x4, PD 4x8), which matches the sizes
// Bhattacharjee reports for Intel cores ("Large-reach memory management unit
// caches", MICRO 2013: a 32-entry PDE cache and small upper-level caches).
inline constexpr PscDefaults kPml5eDefaults{
    "2", "2", "Entries. Default: 2, fully associative (ChampSim default PTW configuration; an assumption, Intel "
              "does not publish it)."};
inline constexpr PscDefaults kPml4eDefaults{
    "4", "4", "Entries. Default: 4, fully associative (ChampSim default PTW configuration; an assumption, Intel "
              "does not publish it)."};
inline constexpr PscDefaults kPdpteDefaults{
    "8", "4", "Entries. Default: 8, 4-way (ChampSim default PTW configuration; an assumption, Intel does not "
              "publish it)."};
inline constexpr PscDefaults kPdeDefaults{
    "32", "8", "Entries. Default: 32, 8-way (ChampSim default PTW configuration; Bhattacharjee, MICRO 2013, "
               "reports a 32-entry PDE cache on Intel cores)."};
// The EPT dimension: no published figures at all; the same geometry as the
// guest dimension (assumption).
inline constexpr PscDefaults kEptPml5eDefaults{
    "2", "2", "Entries. Default: 2, fully associative (assumption: the guest-dimension PML5E cache's geometry)."};
inline constexpr PscDefaults kEptPml4eDefaults{
    "4", "4", "Entries. Default: 4, fully associative (assumption: the guest-dimension PML4E cache's geometry)."};
inline constexpr PscDefaults kEptPdpteDefaults{
    "8", "4", "Entries. Default: 8, 4-way (assumption: the guest-dimension PDPTE cache's geometry)."};
inline constexpr PscDefaults kEptPdeDefaults{
    "32", "8", "Entries. Default: 32, 8-way (assumption: the guest-dimension PDE cache's geometry)."};

/// The caches of one dimension, by the level of the entry they hold.
template <const PscDefaults& L5, const PscDefaults& L4, const PscDefaults& L3, const PscDefaults& L2>
struct PscDimensionParams {
  PscLevelParams<L5> pml5e;
  PscLevelParams<L4> pml4e;
  PscLevelParams<L3> pdpte;
  PscLevelParams<L2> pde;

  /// By level: 2 = PDE ... 5 = PML5E.
  const PscParams& level(unsigned l) const {
    return l == 5 ? static_cast<const PscParams&>(pml5e) : l == 4 ? static_cast<const PscParams&>(pml4e)
                                                         : l == 3 ? static_cast<const PscParams&>(pdpte)
                                                                  : static_cast<const PscParams&>(pde);
  }
  PscParams& level(unsigned l) { return const_cast<PscParams&>(static_cast<const PscDimensionParams&>(*this).level(l)); }
  template <class V>
  void visit(V& v) {
    v.section(pml5e, "pml5e", "PML5E cache: PML5 entries referencing a PML4 table (5-level paging only).");
    v.section(pml4e, "pml4e", "PML4E cache: PML4 entries referencing a PDPT.");
    v.section(pdpte, "pdpte", "PDPTE cache: PDPT entries referencing a page directory.");
    v.section(pde, "pde", "PDE cache: page-directory entries referencing a page table.");
  }
};

/// All paging-structure caches of a core.
struct PscParamsAll {
  PscDimensionParams<kPml5eDefaults, kPml4eDefaults, kPdpteDefaults, kPdeDefaults> guest;
  PscDimensionParams<kEptPml5eDefaults, kEptPml4eDefaults, kEptPdpteDefaults, kEptPdeDefaults> ept;

  template <class V>
  void visit(V& v) {
    v.section(guest, "guest", "Guest-dimension caches (SDM Vol. 3A, 4.10.3), tagged by VPID, PCID and EP4TA.");
    v.section(ept, "ept", "EPT-dimension caches, selected by guest-physical address bits, tagged by EP4TA.");
  }
};

struct PscStats : stats::Group {
  PscStats(stats::Group* parent, const std::string& name);
  stats::Counter lookups{this, "lookups", "lookups", "lookups (walks that reached this cache: longer matches missed)"};
  stats::Counter hits{this, "hits", "lookups", "lookups that found the entry, skipping the levels above"};
  stats::Counter misses{this, "misses", "lookups", "lookups that did not"};
  stats::Counter insertions{this, "insertions", "entries", "entries filled from walks"};
  stats::Counter evictions{this, "evictions", "entries", "valid entries replaced by a fill"};
  stats::Counter flushes{this, "flushes", "operations", "invalidation operations applied"};
  stats::Counter flushed_entries{this, "flushed_entries", "entries", "valid entries removed by invalidations"};
};

struct PscEntry {
  std::uint64_t key = 0;       // address >> level_shift(level)
  std::uint64_t next_hpa = 0;  // (host-)physical address of the next table
  std::uint64_t next_gpa = 0;  // guest dimension: its guest-physical address (== next_hpa without EPT)
  TlbTag tag;                  // EPT dimension: ep4ta only
  std::uint8_t perms = 0;      // guest: perm::kWritable | kUser | kExecutable accumulated; EPT: R/W/X AND
  std::uint8_t table_ept_perms = 0;  // guest with EPT: EPT R/W/X of the next table's page
  bool valid = false;
};

class Psc {
 public:
  /// level: 2 (PDE cache) to 5 (PML5E cache). Throws std::invalid_argument
  /// naming the cache when the geometry is bad (see check_geometry).
  Psc(const PscParams& params, unsigned level, stats::Group* parent, const std::string& name);

  bool enabled() const { return m_params.enabled; }
  unsigned level() const { return m_level; }
  std::uint32_t latency() const { return m_params.latency; }

  /// The entry for the table that translates addr's region at level()-1, in
  /// context tag; nullptr on a miss. Counts a lookup.
  const PscEntry* lookup(std::uint64_t addr, const TlbTag& tag);
  /// Fills (or refreshes) the entry for addr's region.
  void insert(std::uint64_t addr, const TlbTag& tag, std::uint64_t next_hpa, std::uint64_t next_gpa,
              std::uint8_t perms, std::uint8_t table_ept_perms);

  // Invalidations (SDM Vol. 3A, 4.10.4.1; Vol. 3C, 29.4.3). Entries are never
  // global, so the operations that keep global TLB entries remove them too.
  void flush_all();
  void flush_vpid(std::uint16_t vpid);                       // every PCID and EP4TA of vpid
  void flush_pcid(std::uint16_t vpid, std::uint16_t pcid);   // one PCID of vpid
  void flush_nonzero_vpids();                                // INVVPID all-context
  void flush_ep4ta(std::uint64_t ep4ta);                     // INVEPT single-context
  void flush_all_ep4ta();                                    // INVEPT all-context

  std::uint32_t occupancy() const { return m_array.occupancy(); }
  const PscStats& stats() const { return m_stats; }

 private:
  template <class Pred>
  void flush_if(Pred pred);

  PscParams m_params;
  unsigned m_level;
  unsigned m_shift;
  PscStats m_stats;
  SetAssoc<PscEntry> m_array;
};

}  // namespace vmx::mmu
