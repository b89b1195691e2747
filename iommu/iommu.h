// DMA remapping unit (Intel VT-d, legacy mode): translates a device's DMA
// address (IOVA) to a host-physical address, or blocks it with a fault.
//
// Lookup order for one request (requester ID, IOVA, read/write):
//   1. The context cache, keyed by requester ID; on a miss, the root entry
//      (one reference) and the context entry (one 16-byte reference) are
//      read from memory. The context yields the domain ID.
//   2. The IOTLB, tagged by domain ID (a mmu::Tlb holding 4 KiB, 2 MiB and
//      1 GiB pages; the domain ID is carried in the VPID tag field).
//   3. On an IOTLB miss, the second-level paging-structure caches (mmu::Psc,
//      one per level, tagged by domain ID), longest match first, then the
//      remaining second-level entries, one reference each.
// Every table reference goes through a mmu::TableMemory, so its latency comes
// from the memory model behind it. A blocked request never yields an address.
//
// Pure C++, no SystemC: cycles are those of the IOMMU's clock, converted by
// the component that embeds it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "iommu/vtd_formats.h"
#include "mmu/assoc.h"
#include "mmu/psc.h"
#include "mmu/tlb.h"
#include "mmu/walker.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::iommu {

enum class DmaAccess : std::uint8_t { Read = 0, Write = 1 };

// Intel publishes no IOTLB or IOMMU cache geometry; every default below is an
// assumption, stated as such.
inline constexpr mmu::TlbDefaults kIotlbDefaults{
    "64", "IOTLB entries (4 KiB, 2 MiB and 1 GiB pages share the array). Default: 64 (assumption; Intel does not "
          "publish the IOTLB size).",
    "4", "IOTLB associativity. Default: 4-way (assumption).",
    "2", "IOTLB lookup latency in IOMMU cycles, charged on every translation. Default: 2 (assumption)."};

// Second-level paging-structure caches: the same geometry as the core's
// (mmu/psc.h, ChampSim defaults), an assumption for lack of published data.
inline constexpr mmu::PscDefaults kSlPml5eDefaults{
    "2", "2", "Entries. Default: 2, fully associative (assumption: the core PML5E cache's geometry)."};
inline constexpr mmu::PscDefaults kSlPml4eDefaults{
    "4", "4", "Entries. Default: 4, fully associative (assumption: the core PML4E cache's geometry)."};
inline constexpr mmu::PscDefaults kSlPdpteDefaults{
    "8", "4", "Entries. Default: 8, 4-way (assumption: the core PDPTE cache's geometry)."};
inline constexpr mmu::PscDefaults kSlPdeDefaults{
    "32", "8", "Entries. Default: 32, 8-way (assumption: the core PDE cache's geometry)."};

/// The context cache: context entries by requester ID.
struct ContextCacheParams {
  std::uint32_t entries;
  std::uint32_t ways;
  std::uint32_t latency;

  template <class V>
  void visit(V& v) {
    v.param(entries, "entries", "16", cfg::Spec().at_least(1),
            "Context-cache entries. Default: 16 (assumption; Intel does not publish it).");
    v.param(ways, "ways", "16", cfg::Spec().at_least(1), "Associativity. Default: 16, fully associative (assumption).");
    v.param(latency, "latency", "1", cfg::Spec(cfg::Unit::Cycles),
            "Lookup latency in IOMMU cycles, charged on every IOTLB miss. Default: 1 (assumption).");
  }
};

struct IommuParams {
  mmu::TlbLevelParams<kIotlbDefaults> iotlb;
  ContextCacheParams context_cache;
  mmu::PscDimensionParams<kSlPml5eDefaults, kSlPml4eDefaults, kSlPdpteDefaults, kSlPdeDefaults> sl_psc;
  std::uint32_t fault_records;

  template <class V>
  void visit(V& v) {
    v.section(iotlb, "iotlb", "IOTLB: completed translations, tagged by domain ID.");
    v.section(context_cache, "context_cache", "Context cache: context entries by requester ID.");
    v.section(sl_psc, "sl_psc",
              "Second-level paging-structure caches, one per level, tagged by domain ID (latencies in IOMMU "
              "cycles).");
    v.param(fault_records, "fault_records", "8", cfg::Spec().at_least(1),
            "Fault-log capacity (the number of fault-recording registers, CAP.NFR + 1). Default: 8 "
            "(assumption; platforms report their own NFR).");
  }
};

/// One entry of the fault log (VT-d 7.2 primary fault logging: source ID,
/// faulting address, request type and reason).
struct FaultRecord {
  std::uint16_t requester_id = 0;
  std::uint64_t address = 0;  // the full IOVA (hardware records bits 63:12)
  DmaAccess access = DmaAccess::Read;
  FaultReason reason = FaultReason::kNone;
};

struct IommuStats : stats::Group {
  IommuStats(stats::Group* parent, const std::string& name);
  stats::Counter translations{this, "translations", "requests", "DMA requests translated (enabled unit)"};
  stats::Counter passthrough{this, "passthrough", "requests", "requests of pass-through contexts (TT = 2)"};
  stats::Counter context_hits{this, "context_hits", "lookups", "context-cache hits"};
  stats::Counter context_misses{this, "context_misses", "lookups", "context-cache misses (root and context read)"};
  stats::Counter walks{this, "walks", "walks", "second-level walks started (IOTLB misses past the context)"};
  stats::Counter refs_root{this, "refs_root", "references", "root-entry reads"};
  stats::Counter refs_context{this, "refs_context", "references", "context-entry reads (16 bytes each)"};
  stats::Counter refs_sl5{this, "refs_sl5", "references", "second-level level-5 entry reads"};
  stats::Counter refs_sl4{this, "refs_sl4", "references", "second-level level-4 entry reads"};
  stats::Counter refs_sl3{this, "refs_sl3", "references", "second-level level-3 entry reads"};
  stats::Counter refs_sl2{this, "refs_sl2", "references", "second-level level-2 entry reads"};
  stats::Counter refs_sl1{this, "refs_sl1", "references", "second-level level-1 entry reads"};
  stats::Counter walk_cycles{this, "walk_cycles", "cycles", "cycles of second-level walks (cache lookup and references)"};
  stats::Counter faults{this, "faults", "requests", "requests blocked"};
  stats::Counter faults_recorded{this, "faults_recorded", "records", "faults written to the fault log"};
  stats::Counter faults_suppressed{this, "faults_suppressed", "requests", "faults not logged: context FPD = 1"};
  stats::Counter fault_overflows{this, "fault_overflows", "records", "faults dropped: fault log full (PFO)"};
  stats::Counter fault_root_not_present{this, "fault_root_not_present", "requests", "faults, reason 1h"};
  stats::Counter fault_context_not_present{this, "fault_context_not_present", "requests", "faults, reason 2h"};
  stats::Counter fault_context_invalid{this, "fault_context_invalid", "requests", "faults, reason 3h"};
  stats::Counter fault_address_beyond_aw{this, "fault_address_beyond_aw", "requests", "faults, reason 4h"};
  stats::Counter fault_write_denied{this, "fault_write_denied", "requests", "faults, reason 5h"};
  stats::Counter fault_read_denied{this, "fault_read_denied", "requests", "faults, reason 6h"};
  stats::Counter fault_sl_reserved{this, "fault_sl_reserved", "requests", "faults, reason Ch"};
  stats::Counter invalidations{this, "invalidations", "commands", "invalidation commands executed"};

  stats::Counter& refs_sl(unsigned level);
  stats::Counter& by_reason(FaultReason r);
};

struct TranslateResult {
  enum class Status : std::uint8_t { Ok, Fault } status = Status::Ok;
  FaultReason reason = FaultReason::kNone;
  bool ok() const { return status == Status::Ok; }
};

class Iommu {
 public:
  /// Throws std::invalid_argument naming the structure and parameter when a
  /// cache geometry is bad.
  Iommu(const IommuParams& params, mmu::TableMemory& mem, stats::Group* parent, const std::string& name = "iommu");

  /// RTADDR_REG (10.4.6). As in hardware, a new root table does not
  /// invalidate the caches: software follows it with global invalidations.
  void set_root_table(std::uint64_t rtaddr) { m_rtaddr = rtaddr & root::kCtpMask; }
  /// GCMD_REG.TE (10.4.4). Disabled: requests pass untranslated, at no cost.
  void enable(bool on) { m_enabled = on; }
  bool enabled() const { return m_enabled; }

  /// Translates one DMA request. On success sets hpa; always adds the
  /// cycles spent (IOMMU cycles) to `cycles`. A fault leaves hpa untouched,
  /// counts it and records it in the fault log (unless the context entry
  /// has FPD set and the fault is a qualified one, i.e. found after the
  /// context entry was read).
  TranslateResult translate(std::uint16_t requester_id, std::uint64_t iova, DmaAccess access, std::uint64_t& hpa,
                            std::uint32_t& cycles);

  // Invalidation commands (6.5; CCMD_REG 10.4.7, IOTLB_REG 10.4.8, and the
  // equivalent queued descriptors 6.5.2). Each counts one invalidation.

  /// IOTLB global invalidation: every IOTLB and paging-structure-cache entry.
  void iotlb_invalidate_global();
  /// Domain-selective: every IOTLB and paging-structure-cache entry of did.
  void iotlb_invalidate_domain(std::uint16_t did);
  /// Page-selective-within-domain: IOTLB entries of did mapping any address
  /// of the 2^am 4 KiB pages at addr (aligned down to 2^am pages). With
  /// ih (invalidation hint) clear, paging-structure-cache entries of did go
  /// too; this model removes all of them, a superset the spec permits. For
  /// am > 9 it performs a domain-selective invalidation (also a permitted
  /// superset; hardware reports the granularity it used).
  void iotlb_invalidate_page(std::uint16_t did, std::uint64_t addr, unsigned am = 0, bool ih = false);
  /// Context-cache global invalidation.
  void context_invalidate_global();
  /// Context-cache domain-selective invalidation.
  void context_invalidate_domain(std::uint16_t did);
  /// Context-cache device-selective invalidation: source ID sid with the low
  /// fm function bits masked (fm 0 to 3, CCMD_REG.FM). The domain ID of the
  /// command is not compared, a superset.
  void context_invalidate_device(std::uint16_t sid, unsigned fm = 0);

  /// The fault log, oldest first. A full log drops new faults (primary fault
  /// overflow, counted) until software clears records.
  const std::vector<FaultRecord>& fault_log() const { return m_faults; }
  /// Software reading and clearing the oldest record (F bit write-1-clear).
  bool pop_fault(FaultRecord& out);
  void clear_faults() { m_faults.clear(); }

  const mmu::Tlb& iotlb() const { return m_iotlb; }
  const mmu::Psc& sl_psc(unsigned level) const { return *m_psc[level - 2]; }
  std::uint32_t context_cache_occupancy() const { return m_ctx.occupancy(); }
  const IommuStats& stats() const { return m_stats; }
  const IommuParams& params() const { return m_params; }

 private:
  /// A context entry as cached: what the translation needs from it.
  struct CachedContext {
    std::uint16_t rid = 0;
    std::uint16_t did = 0;
    std::uint64_t slptptr = 0;
    std::uint8_t aw = 0;
    std::uint8_t tt = 0;
    bool fpd = false;
    bool valid = false;
  };

  /// Finds the context of rid: context cache, else root and context entry.
  /// Legacy mode only; scalable mode (PASID tables, first-level tables)
  /// would resolve its context here.
  FaultReason lookup_context(std::uint16_t rid, CachedContext& out, std::uint32_t& cycles);
  /// Second-level walk from the context; fills the caches.
  FaultReason walk(const CachedContext& c, std::uint64_t iova, DmaAccess access, std::uint64_t& hpa,
                   std::uint32_t& cycles);
  TranslateResult fault(std::uint16_t rid, std::uint64_t iova, DmaAccess access, FaultReason r, bool fpd);

  IommuParams m_params;
  mmu::TableMemory& m_mem;
  IommuStats m_stats;
  mmu::Tlb m_iotlb;
  mmu::SetAssoc<CachedContext> m_ctx;
  std::vector<std::unique_ptr<mmu::Psc>> m_psc;  // levels 2 (PDE) to 5 (PML5E)
  std::uint32_t m_psc_latency = 0;
  bool m_any_psc = false;
  std::vector<FaultRecord> m_faults;  // oldest first, at most fault_records
  std::uint64_t m_rtaddr = 0;
  bool m_enabled = false;
};

}  // namespace vmx::iommu
