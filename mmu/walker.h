// The CPU's page walker: IA-32e paging over EPT, both dimensions walked by
// the one walk loop of mmu/walk_loop.h (Ia32eFormat with EPT as its stage 2,
// EptFormat for EPT), which the IOMMU's walks use too.
//
// A guest (or host) linear address is translated by walking the IA-32e
// paging structures; when EPT is on, every guest paging-structure address and
// the final guest-physical address are themselves translated by the EPT walk
// (SDM Vol. 3C, 29.3.2), so a 4-level guest over 4-level EPT makes
// 4 x (4 + 1) + 4 = 24 references with nothing cached. Each reference goes
// through TableMemory, which the core backs with the cache hierarchy, and its
// latency is added to the walk. The walker has no SystemC dependency.
//
// Walk caches (WalkCaches, all optional): the paging-structure caches of both
// dimensions (mmu/psc) let a walk start below the longest cached prefix, and
// the nested TLB (mmu/nested_tlb) translates a guest-physical address without
// walking EPT. A lookup costs its latency; references skipped are not made.
#pragma once

#include <array>
#include <cstdint>

#include "mmu/nested_tlb.h"
#include "mmu/paging.h"
#include "mmu/psc.h"
#include "mmu/tlb.h"
#include "mmu/walk_loop.h"
#include "sim/stats.h"

namespace vmx::mmu {

/// Permission summary of a completed translation, as cached in TLB entries.
/// The low four bits match mmu::TlbPerm; the EPT bits are the AND over the
/// EPT entries that mapped the final guest-physical address. kEptDirty
/// mirrors kDirty for the EPT dimension: set when a write needs no EPT dirty
/// update (no EPT, EPT accessed/dirty flags off, or the EPT leaf's dirty flag
/// already set), so a translation cached by a read makes a later write walk.
namespace perm {
constexpr std::uint8_t kWritable = 1, kUser = 2, kExecutable = 4, kDirty = 8;
constexpr std::uint8_t kEptRead = 16, kEptWrite = 32, kEptExecute = 64, kEptDirty = 128;
constexpr std::uint8_t kAllEpt = kEptRead | kEptWrite | kEptExecute;
}  // namespace perm

/// The bit an EptStep (and a nested-TLB entry) carries above EPT R/W/X: the
/// leaf's EPT dirty flag is known to be set, or EPT A/D flags are off.
constexpr std::uint8_t kEptLeafDirty = kLeafDirty;

struct WalkStats : stats::Group {
  explicit WalkStats(stats::Group* parent, const std::string& name = "walker");
  stats::Counter walks{this, "walks", "walks", "linear-address translations walked (TLB misses)"};
  stats::Counter ept_only_walks{this, "ept_only_walks", "walks",
                                "guest-physical translations walked with paging off in the guest"};
  stats::Counter refs{this, "refs", "references", "paging-structure references, both dimensions"};
  stats::Counter guest_refs_total{this, "guest_refs", "references", "guest-dimension references"};
  stats::Counter ept_refs_total{this, "ept_refs", "references", "EPT-dimension references"};
  std::array<stats::Counter*, 6> guest_refs{};  // index = level 1..5
  std::array<stats::Counter*, 6> ept_refs{};
  stats::Counter page_faults{this, "page_faults", "walks", "walks ending in a guest page fault"};
  stats::Counter ept_violations{this, "ept_violations", "walks", "walks ending in an EPT violation"};
  stats::Counter ept_misconfigs{this, "ept_misconfigs", "walks", "walks ending in an EPT misconfiguration"};
  stats::Counter ad_updates{this, "ad_updates", "writes",
                            "accessed/dirty-bit writes to paging structures, both dimensions"};
  stats::Counter ept_ad_updates{this, "ept_ad_updates", "writes",
                                "of those, writes to EPT entries (EPTP bit 6 set, SDM Vol. 3C, 29.3.5)"};
  stats::Histogram cycles{this, "cycles", "cycles", "cycles per walk"};
  stats::Histogram refs_per_walk{this, "refs_per_walk", "references", "references per walk"};
  stats::Histogram guest_refs_per_walk{this, "guest_refs_per_walk", "references",
                                       "guest-dimension references per walk"};
  stats::Histogram ept_refs_per_walk{this, "ept_refs_per_walk", "references", "EPT-dimension references per walk"};
  stats::Counter psc_hits{this, "psc_hits", "lookups",
                          "paging-structure-cache hits, both dimensions (per cache: psc.<dimension>.<level>.hits)"};
  stats::Counter nested_tlb_hits{this, "nested_tlb_hits", "lookups",
                                 "guest-physical addresses translated by the nested TLB instead of an EPT walk"};
  /// Every walk counted once, with or without guest paging: the walks that
  /// refs and the refs_per_walk histogram cover.
  stats::Counter walks_all{this, "walks_all", "walks", "walks of either kind: walks + ept_only_walks"};
  /// refs / walks_all, the mean of refs_per_walk (refs includes the
  /// references of EPT-only walks, so dividing by walks alone overstated it).
  stats::Ratio mean_refs{this, "mean_refs", "references", "mean references per walk (both kinds)", refs, walks_all};
};

/// What the core asks of the walker.
struct WalkRequest {
  std::uint64_t la = 0;             // linear address (guest-physical when !paging)
  AccessType type = AccessType::Read;
  bool user = false;                // CPL 3
  bool paging = true;               // CR0.PG
  std::uint64_t cr3 = 0;
  PagingMode mode{};
  bool wp = true, nxe = true, smep = false;
  bool smap = false;                // CR4.SMAP and RFLAGS.AC = 0 (explicit accesses)
  bool pke = false;                 // CR4.PKE (IA-32e paging)
  std::uint32_t pkru = 0;
  bool mbec = false;                // EPT mode-based execute control
  bool pge = true;                  // CR4.PGE: the G bit makes a translation global
  bool ept = false;                 // translate guest-physical through EPT
  std::uint64_t eptp = 0;
  PagingMode ept_mode{};
  bool pml = false;                 // page-modification logging (SDM Vol. 3C, 29.3.6)
  // Memory encryption (models/mem_crypt.h), with EPT only: the C-bit is
  // taken out of every guest-physical address before EPT translates it; a
  // guest table, a guest-physical address reached with paging off, and a
  // page whose leaf has the C-bit set are private, and their host-physical
  // address carries crypt_key (AMD64 APM Vol. 2, 15.34.5).
  std::uint64_t crypt_key = 0;      // key-ID bits (0: not an encrypted guest)
  std::uint64_t c_bit = 0;          // the C-bit as a mask
  TlbTag tag{};                     // context of the walk caches' entries (VPID, PCID, EP4TA)
};

/// The walk caches a walker consults; a null or disabled cache is absent.
struct WalkCaches {
  std::array<Psc*, 6> guest{};  // index = level of the cached entry, 2 (PDE) to 5 (PML5E)
  std::array<Psc*, 6> ept{};    // the same for EPT entries
  NestedTlb* nested = nullptr;
};

struct WalkResult {
  enum class Status : std::uint8_t { Ok, PageFault, EptViolation, EptMisconfig, PmlFull };
  Status status = Status::Ok;
  std::uint8_t page_shift = 12;     // effective page size: the smaller of both dimensions
  std::uint8_t perms = 0;           // perm:: bits
  bool global = false;
  std::uint8_t pkey = 0;            // protection key of the leaf (bits 62:59)
  std::uint64_t pa = 0;             // host-physical address of the access
  std::uint64_t gpa = 0;            // guest-physical address (== pa without EPT)
  WalkFault fault;                  // what went wrong, neutral; encoded below for the core
  std::uint32_t error_code = 0;     // page-fault error code (mmu/x86_fault.h)
  std::uint64_t exit_qualification = 0;  // EPT violation qualification (mmu/x86_fault.h)
  std::uint64_t fault_gpa = 0;      // guest-physical address that EPT could not translate
  std::uint32_t cycles = 0;
  std::uint16_t refs = 0;
  std::uint16_t guest_refs = 0;     // of refs, guest-dimension (the rest are EPT-dimension)
  std::uint8_t psc_hits = 0;        // paging-structure-cache hits, both dimensions
  std::uint8_t nested_hits = 0;     // nested-TLB hits
};

class Walker {
 public:
  Walker(TableMemory& mem, WalkStats& stats, const WalkCaches& caches = {});

  /// Translates one access. Sets accessed and dirty bits in guest paging
  /// structures as the hardware does (SDM Vol. 3A, 4.8); those writes are
  /// translated through EPT as writes. With EPTP bit 6 set, also sets the
  /// EPT accessed and dirty flags (SDM Vol. 3C, 29.3.5), and guest
  /// paging-structure accesses are EPT writes.
  WalkResult translate(const WalkRequest& req);

 private:
  struct EptStage2;
  struct GuestSink;
  struct EptSink;
  /// Guest-physical to host-physical: the nested TLB, else ept_walk.
  Stage2Step ept_translate(const WalkRequest& req, std::uint64_t gpa, AccessType type, bool user_page, WalkResult& r);
  Stage2Step ept_walk(const WalkRequest& req, std::uint64_t gpa, AccessType type, bool user_page, WalkResult& r);
  /// Records a fault in r, encoded for the core, and counts it.
  void fail(const WalkRequest& req, const WalkFault& f, WalkResult& r);
  void finish(WalkResult& r);

  TableMemory& m_mem;
  WalkStats& m_stats;
  PscSet m_guest_psc;   // enabled guest-dimension caches
  PscSet m_ept_psc;     // enabled EPT-dimension caches
  NestedTlb* m_nested = nullptr;  // null when disabled
};

}  // namespace vmx::mmu
