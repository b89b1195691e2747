// DMA remapping unit (Intel VT-d, legacy and scalable mode): translates a
// device's DMA address (IOVA, or with a PASID a guest-virtual address) to a
// host-physical address, or blocks it with a fault.
//
// Legacy mode (RTADDR_REG.TTM = 00b), one request (requester ID, IOVA, r/w):
//   1. The context cache, keyed by requester ID; on a miss, the root entry
//      (one reference) and the context entry (one 16-byte reference) are
//      read from memory. The context yields the domain ID.
//   2. The IOTLB, tagged by domain ID (a mmu::Tlb holding 4 KiB, 2 MiB and
//      1 GiB pages; the domain ID is carried in the VPID tag field).
//   3. On an IOTLB miss, the second-level paging-structure caches (mmu::Psc,
//      one per level, tagged by domain ID), longest match first, then the
//      remaining second-level entries, one reference each.
//
// Scalable mode (TTM = 01b; VT-d 3.x chapters 3.4.3, 3.6 to 3.8, 9.2 to 9.7),
// one request (requester ID, address, r/w, optional PASID, privileged,
// execute): the context cache (scalable-mode root and 32-byte context
// entries); the PASID cache, keyed by requester ID and PASID (PASID directory
// and 64-byte PASID-table entry on a miss), which gives the domain ID, the
// translation type (PGTT) and the table pointers; the IOTLB, tagged by
// domain ID and PASID; on a miss the walk the PGTT asks for: second-level
// only, first-level only (IA-32e tables, accessed/dirty flags set), nested
// (every first-level table address and the final guest-physical address go
// through the second-level walk, as the CPU's 2D walk), or pass-through.
// Requests without a PASID use the context entry's RID_PASID (iommu/scalable_mode.cc).
//
// Every table reference goes through a mmu::TableMemory, so its latency comes
// from the memory model behind it. A blocked request never yields an address.
//
// Software programs the unit only through its VT-d register set and
// invalidation queue (iommu/vtd_regs.h, a friend): the programming entry
// points below are private.
//
// Pure C++, no SystemC: cycles are those of the IOMMU's clock, converted by
// the component that embeds it.
#pragma once

#include <cstdint>
#include <functional>
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

/// Rights cached with an IOTLB entry (mmu::Tlb carries the bits above
/// mmu::kDirty untouched). W, U, X and D are the first level's (all set
/// without one; W also needs the second level's W); R is the second level's
/// read right (set without one). A hit without a needed right is a miss.
namespace iotlb_perm {
constexpr std::uint8_t kWrite = mmu::kWritable;
constexpr std::uint8_t kUser = mmu::kUser;
constexpr std::uint8_t kExecute = mmu::kExecutable;
constexpr std::uint8_t kDirty = mmu::kDirty;  // no dirty-flag update needed for a write
constexpr std::uint8_t kRead = mmu::perm::kEptRead;
}  // namespace iotlb_perm

/// Tags of the IOTLB and the paging-structure caches (VT-d 6.2). Legacy
/// mode: the domain ID (in the VPID field). Scalable mode: domain ID and
/// PASID, PASID[15:0] in the PCID field and PASID[19:16] in the EP4TA field.
inline mmu::TlbTag domain_tag(std::uint16_t did) {
  mmu::TlbTag t;
  t.vpid = did;
  return t;
}
inline mmu::TlbTag pasid_tag(std::uint16_t did, std::uint32_t pasid) {
  mmu::TlbTag t;
  t.vpid = did;
  t.pcid = static_cast<std::uint16_t>(pasid & 0xFFFF);
  t.ep4ta = std::uint64_t((pasid >> 16) & 0xF) << 12;
  return t;
}

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

// First-level paging-structure caches: the geometry of the core's guest
// dimension (mmu/psc.h), an assumption for lack of published data.
inline constexpr mmu::PscDefaults kFlPml5eDefaults{
    "2", "2", "Entries. Default: 2, fully associative (assumption: the core PML5E cache's geometry)."};
inline constexpr mmu::PscDefaults kFlPml4eDefaults{
    "4", "4", "Entries. Default: 4, fully associative (assumption: the core PML4E cache's geometry)."};
inline constexpr mmu::PscDefaults kFlPdpteDefaults{
    "8", "4", "Entries. Default: 8, 4-way (assumption: the core PDPTE cache's geometry)."};
inline constexpr mmu::PscDefaults kFlPdeDefaults{
    "32", "8", "Entries. Default: 32, 8-way (assumption: the core PDE cache's geometry)."};

/// The PASID cache (VT-d 6.2.2): scalable-mode PASID-table entries.
struct PasidCacheParams {
  std::uint32_t entries;
  std::uint32_t ways;
  std::uint32_t latency;

  /// The set-associative geometry rule (cfg::geometry_problem).
  cfg::Problem check() const { return cfg::geometry_problem(entries, ways); }

  template <class V>
  void visit(V& v) {
    v.param(entries, "entries", "16", cfg::Spec().at_least(1).at_most(1 << 20),
            "PASID-cache entries. Default: 16 (assumption; Intel does not publish it; the context cache's size).");
    v.param(ways, "ways", "16", cfg::Spec().at_least(1), "Associativity. Default: 16, fully associative (assumption).");
    v.param(latency, "latency", "1", cfg::Spec(cfg::Unit::Cycles),
            "Lookup latency in IOMMU cycles, charged on every scalable-mode translation. Default: 1 (assumption).");
  }
};

/// The context cache: context entries by requester ID.
struct ContextCacheParams {
  std::uint32_t entries;
  std::uint32_t ways;
  std::uint32_t latency;

  /// The set-associative geometry rule (cfg::geometry_problem).
  cfg::Problem check() const { return cfg::geometry_problem(entries, ways); }

  template <class V>
  void visit(V& v) {
    v.param(entries, "entries", "16", cfg::Spec().at_least(1).at_most(1 << 20),
            "Context-cache entries. Default: 16 (assumption; Intel does not publish it).");
    v.param(ways, "ways", "16", cfg::Spec().at_least(1), "Associativity. Default: 16, fully associative (assumption).");
    v.param(latency, "latency", "1", cfg::Spec(cfg::Unit::Cycles),
            "Lookup latency in IOMMU cycles, charged on every IOTLB miss. Default: 1 (assumption).");
  }
};

/// The register interface (iommu/vtd_regs.h): its access latencies and the
/// invalidation queue's processing time.
struct VtdParams {
  std::uint32_t descriptor_latency;
  std::uint32_t read_latency;
  std::uint32_t write_latency;

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(descriptor_latency, "descriptor_latency", "500", Spec(Unit::Cycles),
            "IOMMU cycles the unit spends on one invalidation descriptor after fetching it (the fetch is "
            "charged as memory references on top). Default: 500 = 250 ns at 2 GHz (assumption: Intel publishes "
            "none; Malka et al., \"Efficient intra-operating system protection against harmful DMAs\", FAST "
            "2015, measure a synchronous IOTLB invalidation at about 2,000 CPU cycles in all).");
    v.param(read_latency, "read_latency", "200", Spec(Unit::Cycles),
            "IOMMU cycles a core waits for a read of a VT-d register (an uncacheable read that stays in the "
            "uncore, unlike a PCIe device's). Default: 200 = 100 ns at 2 GHz (assumption).");
    v.param(write_latency, "write_latency", "100", Spec(Unit::Cycles),
            "IOMMU cycles a core spends on a write to a VT-d register (posted). Default: 100 = 50 ns at 2 GHz "
            "(assumption: the root complex's posted MMIO write).");
  }
};

struct IommuParams {
  mmu::TlbLevelParams<kIotlbDefaults> iotlb;
  ContextCacheParams context_cache;
  mmu::PscDimensionParams<kSlPml5eDefaults, kSlPml4eDefaults, kSlPdpteDefaults, kSlPdeDefaults> sl_psc;
  PasidCacheParams pasid_cache;
  mmu::PscDimensionParams<kFlPml5eDefaults, kFlPml4eDefaults, kFlPdpteDefaults, kFlPdeDefaults> fl_psc;
  std::uint32_t fault_records;
  VtdParams registers;

  template <class V>
  void visit(V& v) {
    v.section(iotlb, "iotlb", "IOTLB: completed translations, tagged by domain ID.");
    v.section(context_cache, "context_cache", "Context cache: context entries by requester ID.");
    v.section(sl_psc, "sl_psc",
              "Second-level paging-structure caches, one per level, tagged by domain ID (latencies in IOMMU "
              "cycles).");
    v.section(pasid_cache, "pasid_cache", "PASID cache (scalable mode): PASID-table entries by requester ID and PASID.");
    v.section(fl_psc, "fl_psc",
              "First-level paging-structure caches (scalable mode), one per level, tagged by domain ID and PASID; "
              "with nested translation their entries hold the host-physical address of the next table (latencies "
              "in IOMMU cycles).");
    v.param(fault_records, "fault_records", "8", cfg::Spec().at_least(1).at_most(256),
            "Fault-log capacity (the number of fault-recording registers, CAP.NFR + 1). Default: 8 "
            "(assumption; platforms report their own NFR).");
    v.section(registers, "registers",
              "The VT-d register set on the MMIO bus and its invalidation queue (docs/io.md, \"The register "
              "set\"); latencies in IOMMU cycles.");
  }
};

/// One DMA request as the IOMMU sees it (the fields of models::DmaContext
/// plus the address and direction of the transaction).
struct DmaRequest {
  std::uint16_t requester_id = 0;
  std::uint64_t address = 0;
  DmaAccess access = DmaAccess::Read;
  bool has_pasid = false;   // a request-with-PASID (PCIe PASID TLP prefix)
  std::uint32_t pasid = 0;  // 20 bits
  bool privileged = false;  // privileged-mode-requested (supervisor); with a PASID only
  bool execute = false;     // execute-requested (a read for instructions); with a PASID only
};

/// One entry of the fault log (VT-d 7.2 primary fault logging: source ID,
/// faulting address, request type, PASID and reason).
struct FaultRecord {
  std::uint16_t requester_id = 0;
  std::uint64_t address = 0;  // the full input address (hardware records bits 63:12)
  DmaAccess access = DmaAccess::Read;
  FaultReason reason = FaultReason::kNone;
  FaultStage stage = FaultStage::kNone;
  bool has_pasid = false;   // PP: the request carried a PASID (the record shows it)
  std::uint32_t pasid = 0;
  bool privileged = false;  // PRIV
  bool execute = false;     // EXE
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
  // Scalable mode.
  stats::Counter pasid_hits{this, "pasid_hits", "lookups", "PASID-cache hits"};
  stats::Counter pasid_misses{this, "pasid_misses", "lookups", "PASID-cache misses (directory and PASID entry read)"};
  stats::Counter refs_pasid_dir{this, "refs_pasid_dir", "references", "PASID-directory entry reads"};
  stats::Counter refs_pasid_entry{this, "refs_pasid_entry", "references", "PASID-table entry reads (64 bytes each)"};
  stats::Counter fl_walks{this, "fl_walks", "walks", "first-level walks (first-level only and nested)"};
  stats::Counter sl_walks{this, "sl_walks", "walks",
                          "second-level walks: final addresses, and in nested translation first-level tables"};
  stats::Counter nested_walks{this, "nested_walks", "walks", "translations walked with PGTT = nested"};
  stats::Counter refs_fl5{this, "refs_fl5", "references", "first-level level-5 entry reads"};
  stats::Counter refs_fl4{this, "refs_fl4", "references", "first-level level-4 entry reads"};
  stats::Counter refs_fl3{this, "refs_fl3", "references", "first-level level-3 entry reads"};
  stats::Counter refs_fl2{this, "refs_fl2", "references", "first-level level-2 entry reads"};
  stats::Counter refs_fl1{this, "refs_fl1", "references", "first-level level-1 entry reads"};
  stats::Counter refs_first_level{this, "refs_first_level", "references", "first-level entry reads, all levels"};
  stats::Counter refs_second_level{this, "refs_second_level", "references", "second-level entry reads, all levels"};
  stats::Counter ad_updates{this, "ad_updates", "writes",
                            "accessed/dirty-flag writes: first-level entries, and second-level ones with SLADE"};
  stats::Histogram walk_refs{this, "walk_refs", "references",
                             "table references per walk (both levels; root, context and PASID entries excluded)"};
  stats::Counter fault_sm_legacy_pasid{this, "fault_sm_legacy_pasid", "requests", "faults, reason 31h"};
  stats::Counter fault_sm_root_not_present{this, "fault_sm_root_not_present", "requests", "faults, reason 39h"};
  stats::Counter fault_sm_context_not_present{this, "fault_sm_context_not_present", "requests", "faults, reason 41h"};
  stats::Counter fault_sm_pasid_disabled{this, "fault_sm_pasid_disabled", "requests", "faults, reason 45h"};
  stats::Counter fault_sm_pasid_too_large{this, "fault_sm_pasid_too_large", "requests", "faults, reason 46h"};
  stats::Counter fault_sm_pasid_dir_not_present{this, "fault_sm_pasid_dir_not_present", "requests",
                                                "faults, reason 51h"};
  stats::Counter fault_sm_pasid_not_present{this, "fault_sm_pasid_not_present", "requests", "faults, reason 59h"};
  stats::Counter fault_sm_pasid_invalid{this, "fault_sm_pasid_invalid", "requests", "faults, reason 5Bh"};
  stats::Counter fault_sm_supervisor_disabled{this, "fault_sm_supervisor_disabled", "requests", "faults, reason 5Dh"};
  stats::Counter fault_sm_fl_not_present{this, "fault_sm_fl_not_present", "requests", "faults, reason 71h"};
  stats::Counter fault_sm_fl_reserved{this, "fault_sm_fl_reserved", "requests", "faults, reason 72h"};
  stats::Counter fault_sm_nested_flptr_denied{this, "fault_sm_nested_flptr_denied", "requests", "faults, reason 75h"};
  stats::Counter fault_sm_nested_fl_table_denied{this, "fault_sm_nested_fl_table_denied", "requests",
                                                 "faults, reason 76h"};
  stats::Counter fault_sm_nested_fl_ad_denied{this, "fault_sm_nested_fl_ad_denied", "requests", "faults, reason 77h"};
  stats::Counter fault_sm_sl_reserved{this, "fault_sm_sl_reserved", "requests", "faults, reason 7Ah"};
  stats::Counter fault_sm_non_canonical{this, "fault_sm_non_canonical", "requests", "faults, reason 80h"};
  stats::Counter fault_sm_user_supervisor{this, "fault_sm_user_supervisor", "requests", "faults, reason 81h"};
  stats::Counter fault_sm_execute_denied{this, "fault_sm_execute_denied", "requests", "faults, reason 82h"};
  stats::Counter fault_sm_address_beyond_aw{this, "fault_sm_address_beyond_aw", "requests", "faults, reason 83h"};
  stats::Counter fault_sm_write_denied{this, "fault_sm_write_denied", "requests", "faults, reason 85h"};
  stats::Counter fault_sm_read_denied{this, "fault_sm_read_denied", "requests", "faults, reason 86h"};
  stats::Counter faults_first_level{this, "faults_first_level", "requests",
                                    "faults found by the first level (entries and access rights)"};
  stats::Counter faults_nested_table{this, "faults_nested_table", "requests",
                                     "faults found by the second level translating a first-level table"};
  stats::Counter faults_second_level{this, "faults_second_level", "requests",
                                     "faults found by the second level translating the final address"};

  stats::Counter& refs_sl(unsigned level);
  stats::Counter& refs_fl_level(unsigned level);
  const stats::Counter& refs_fl_level(unsigned level) const {
    return const_cast<IommuStats*>(this)->refs_fl_level(level);
  }
  stats::Counter& by_reason(FaultReason r);
};

struct TranslateResult {
  enum class Status : std::uint8_t { Ok, Fault } status = Status::Ok;
  FaultReason reason = FaultReason::kNone;
  FaultStage stage = FaultStage::kNone;
  bool ok() const { return status == Status::Ok; }
};

class VtdRegisters;

class Iommu {
 public:
  /// Throws std::invalid_argument naming the structure and parameter when a
  /// cache geometry is bad.
  Iommu(const IommuParams& params, mmu::TableMemory& mem, stats::Group* parent, const std::string& name = "iommu");

  bool scalable() const { return m_scalable; }
  bool enabled() const { return m_enabled; }

  /// Translates one DMA request. On success sets hpa; always adds the
  /// cycles spent (IOMMU cycles) to `cycles`. A fault leaves hpa untouched,
  /// counts it and records it in the fault log (unless the context entry
  /// has FPD set and the fault is a qualified one, i.e. found after the
  /// context entry was read).
  TranslateResult translate(const DmaRequest& req, std::uint64_t& hpa, std::uint32_t& cycles);
  /// A request without PASID (the legacy entry point).
  TranslateResult translate(std::uint16_t requester_id, std::uint64_t iova, DmaAccess access, std::uint64_t& hpa,
                            std::uint32_t& cycles) {
    DmaRequest r;
    r.requester_id = requester_id;
    r.address = iova;
    r.access = access;
    return translate(r, hpa, cycles);
  }

  /// The fault log, oldest first (simulator observation; software reads it
  /// through the fault-recording registers, iommu/vtd_regs.h). Records go to
  /// the fault-recording register at FRI, which then advances (VT-d 7.2.1);
  /// a fault that finds that register still holding a record is dropped
  /// (primary fault overflow, counted) until software clears it.
  const std::vector<FaultRecord>& fault_log() const { return m_faults; }
  /// Called after every fault that is recorded (false) or dropped for
  /// overflow (true): the register set raises its fault event from it.
  void set_fault_hook(std::function<void(bool overflow)> hook) { m_fault_hook = std::move(hook); }

  const mmu::Tlb& iotlb() const { return m_iotlb; }
  const mmu::Psc& sl_psc(unsigned level) const { return *m_psc[level - 2]; }
  const mmu::Psc& fl_psc(unsigned level) const { return *m_fl_psc[level - 2]; }
  std::uint32_t context_cache_occupancy() const { return m_ctx.occupancy(); }
  std::uint32_t pasid_cache_occupancy() const { return m_pasid.occupancy(); }
  const IommuStats& stats() const { return m_stats; }
  const IommuParams& params() const { return m_params; }

 private:
  friend class VtdRegisters;
  // ---- Programming: reached only through the register set and the
  // invalidation queue (VtdRegisters, iommu/vtd_regs.h), as software does. ----

  /// RTADDR_REG (10.4.6): the root-table address and, in bits 11:10, the
  /// translation table mode (rtaddr::kTtmLegacy or kTtmScalable; see
  /// rtaddr::make). As in hardware (SRTP), a new root table does not
  /// invalidate the caches: software follows it with global invalidations.
  /// Throws std::invalid_argument for the reserved and abort-DMA modes.
  void set_root_table(std::uint64_t rtaddr);
  /// GCMD_REG.TE (10.4.4). Disabled: requests pass untranslated, at no cost.
  void enable(bool on) { m_enabled = on; }

  // Invalidation commands (6.5; CCMD_REG 10.4.7, IOTLB_REG 10.4.8, and the
  // equivalent queued descriptors 6.5.2). Each counts one invalidation.

  /// IOTLB global invalidation: every IOTLB and paging-structure-cache entry
  /// (both levels).
  void iotlb_invalidate_global();
  /// Domain-selective: every IOTLB and paging-structure-cache entry of did,
  /// every PASID (both levels).
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

  // Scalable mode (6.5.2.4 PASID-based-IOTLB invalidate descriptor, 6.5.2.3
  // PASID-cache invalidate descriptor). IOTLB and first-level
  // paging-structure-cache entries are tagged by (domain ID, PASID); the
  // model keeps PASID[15:0] in the PCID tag field and PASID[19:16] in the
  // EP4TA field, and a PASID-selective flush compares PASID[15:0] only, a
  // permitted superset. Second-level paging-structure caches are not touched
  // (they belong to the domain: iotlb_invalidate_domain).

  /// PASID-selective-within-domain: IOTLB and first-level
  /// paging-structure-cache entries of (did, pasid).
  void pasid_iotlb_invalidate(std::uint16_t did, std::uint32_t pasid);
  /// Page-selective-within-PASID: IOTLB entries of (did, pasid) mapping any
  /// of the 2^am 4 KiB pages at addr; with ih clear also every first-level
  /// paging-structure-cache entry of (did, pasid) (a superset). am > 9 acts
  /// as PASID-selective.
  void pasid_iotlb_invalidate_page(std::uint16_t did, std::uint32_t pasid, std::uint64_t addr, unsigned am = 0,
                                   bool ih = false);
  /// PASID-cache invalidation: all entries, those of a domain, or one PASID
  /// of a domain (granularities 11b, 00b, 01b).
  void pasid_cache_invalidate_global();
  void pasid_cache_invalidate_domain(std::uint16_t did);
  void pasid_cache_invalidate_pasid(std::uint16_t did, std::uint32_t pasid);

  /// The fault-recording registers as the register set shows them: the
  /// record held in register `slot` (null if its F bit is clear), clearing
  /// it (F is write-1-to-clear), and FSTS.FRI (the register of the oldest
  /// record held, else the one the next fault goes to).
  const FaultRecord* fault_in(unsigned slot) const;
  void clear_fault(unsigned slot);
  unsigned fault_index() const { return m_fault_slot.empty() ? m_fri : m_fault_slot.front(); }

  /// A context entry as cached: what the translation needs from it.
  struct CachedContext {
    std::uint16_t rid = 0;
    std::uint16_t did = 0;        // legacy
    std::uint64_t slptptr = 0;    // legacy
    std::uint8_t aw = 0;          // legacy
    std::uint8_t tt = 0;          // legacy
    bool fpd = false;
    bool scalable = false;        // a scalable-mode context entry
    bool paside = false;          // scalable: requests-with-PASID allowed
    bool rid_priv = false;        // scalable: privilege of requests without PASID
    std::uint8_t pdts = 0;        // scalable: PASID-directory size
    std::uint32_t rid_pasid = 0;  // scalable: PASID of requests without PASID
    std::uint64_t pasid_dir = 0;  // scalable: PASID-directory address
    bool valid = false;
  };

  /// A scalable-mode PASID-table entry as cached (with its directory FPD).
  struct CachedPasid {
    std::uint16_t rid = 0;
    std::uint32_t pasid = 0;
    std::uint16_t did = 0;
    std::uint8_t pgtt = 0;
    std::uint8_t aw = 0;         // second-level AW encoding
    mmu::PagingMode fl_mode{4, 3};  // first level: 4 or 5 levels (FLPM), pages up to 1 GiB
    std::uint64_t slptptr = 0;
    std::uint64_t flptr = 0;
    bool slade = false, sre = false, wpe = false, fpd = false;
    bool valid = false;
  };

  /// The second-level tables one walk uses.
  struct SlDomain {
    std::uint16_t did = 0;
    std::uint64_t slptptr = 0;
    mmu::PagingMode mode{4, 3};  // 3 to 5 levels (AW), pages up to 1 GiB
    bool slade = false;
  };
  static SlDomain sl_domain(std::uint16_t did, std::uint64_t slptptr, unsigned aw, bool slade) {
    return SlDomain{did, slptptr, mmu::PagingMode{static_cast<std::uint8_t>(ctx::aw_levels(aw)), 3}, slade};
  }
  /// Outcome of a completed scalable-mode walk: address, page size, and the
  /// rights cached with it in the IOTLB.
  struct Walked {
    std::uint64_t hpa = 0;
    std::uint8_t shift = 12;
    std::uint8_t perms = 0;
  };
  /// Stage2Step::perms bit of a second-level walk: the leaf's dirty flag is
  /// set, or SLADE is off (a write needs no second-level flag update).
  static constexpr std::uint8_t kSlLeafDirty = mmu::kLeafDirty;
  struct SlStage2;
  /// Where a walk's references are counted: by stage and level, and into
  /// the walk in progress (the walk loop's counter sink).
  template <bool kFirstLevel>
  struct RefSink {
    Iommu& u;
    void ref(unsigned level) {
      if constexpr (kFirstLevel) {
        ++u.m_stats.refs_fl_level(level);
        ++u.m_stats.refs_first_level;
      } else {
        ++u.m_stats.refs_sl(level);
        ++u.m_stats.refs_second_level;
      }
      ++u.m_walk_refs;
    }
    void ad_update() { ++u.m_stats.ad_updates; }
    void psc_hit() {}
  };

  /// Finds the context of rid: context cache, else root and context entry.
  FaultReason lookup_context(std::uint16_t rid, CachedContext& out, std::uint32_t& cycles);
  /// The same in scalable mode (scalable_mode.cc).
  FaultReason lookup_sm_context(std::uint16_t rid, CachedContext& out, std::uint32_t& cycles);
  /// The PASID-table entry of (context, pasid): PASID cache, else the
  /// directory and table entries. Sets fpd when a directory or table entry
  /// read on a miss has FPD set.
  FaultReason lookup_pasid(const CachedContext& c, std::uint32_t pasid, CachedPasid& out, bool& fpd,
                           std::uint32_t& cycles);
  /// Legacy second-level walk from the context; fills the caches.
  FaultReason walk(const CachedContext& c, std::uint64_t iova, DmaAccess access, std::uint64_t& hpa,
                   std::uint32_t& cycles);
  /// One second-level walk of addr (both modes), the walk loop over
  /// mmu::VtdSlFormat: paging-structure caches, then the remaining entries;
  /// fills the caches; with SLADE sets the accessed flags and, for a write,
  /// the leaf's dirty flag. perms: R/W ANDed over the walk, kSlLeafDirty.
  mmu::Stage2Step sl_walk(const SlDomain& d, std::uint64_t addr, bool write, std::uint32_t& cycles);
  /// Scalable mode: the whole translation after the context.
  TranslateResult translate_sm(const DmaRequest& req, std::uint64_t& hpa, std::uint32_t& cycles);
  /// First-level walk (first-level only or nested) of req.address.
  FaultReason fl_walk(const CachedPasid& p, const mmu::TlbTag& tag, const DmaRequest& req, bool privileged,
                      Walked& out, FaultStage& stage, std::uint32_t& cycles);
  TranslateResult fault(const DmaRequest& req, std::uint32_t pasid, FaultReason r, FaultStage stage, bool fpd);

  IommuParams m_params;
  mmu::TableMemory& m_mem;
  IommuStats m_stats;
  mmu::Tlb m_iotlb;
  mmu::SetAssoc<CachedContext> m_ctx;
  std::vector<std::unique_ptr<mmu::Psc>> m_psc;  // levels 2 (PDE) to 5 (PML5E)
  mmu::PscSet m_sl_pscs;                         // the enabled ones
  mmu::SetAssoc<CachedPasid> m_pasid;
  std::vector<std::unique_ptr<mmu::Psc>> m_fl_psc;  // levels 2 (PDE) to 5 (PML5E)
  mmu::PscSet m_fl_pscs;                            // the enabled ones
  bool m_scalable = false;
  std::uint32_t m_walk_refs = 0;  // table references of the walk in progress
  std::vector<FaultRecord> m_faults;      // held records, oldest first, at most fault_records
  std::vector<std::uint16_t> m_fault_slot;  // the fault-recording register of each held record
  unsigned m_fri = 0;                       // where the next record goes
  std::function<void(bool)> m_fault_hook;
  std::uint64_t m_rtaddr = 0;
  bool m_enabled = false;
};

}  // namespace vmx::iommu
