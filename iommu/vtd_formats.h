// In-memory formats of Intel VT-d DMA remapping: legacy and scalable-mode
// root and context tables, scalable-mode PASID directories and tables, and
// second-level paging structures. Section numbers refer to "Intel
// Virtualization Technology for Directed I/O, Architecture Specification"
// (rev. 3.x), chapter 9 ("Translation Structure Formats"); register fields to
// chapter 10. First-level paging entries are the IA-32e format of the CPU
// (mmu/paging.h, mmu::pte), as VT-d 9.7 defines them.
//
// Legacy-mode lookup (chapter 3): the root table (4 KiB, 256 x 16-byte
// entries, at RTADDR_REG) is indexed by the requester's bus number; its entry
// points to a context table (4 KiB, 256 x 16-byte entries) indexed by
// device:function; the context entry names the domain and the second-level
// page table that translates the request's address.
//
// Scalable-mode lookup (RTADDR_REG.TTM = 01b; 3.4.3): the root entry has a
// lower and an upper context-table pointer (device:function 0-127 and
// 128-255); a 32-byte scalable-mode context entry points to a PASID directory;
// PASID[19:6] selects a directory entry, which points to a PASID table of 64
// 64-byte entries selected by PASID[5:0]. The PASID-table entry names the
// domain, the translation type (PGTT: first-level only, second-level only,
// nested, pass-through) and the first- and second-level table pointers.
// Requests without a PASID use the context entry's RID_PASID.
#pragma once

#include <cstdint>

namespace vmx::iommu {

/// Requester ID (PCI source ID): bus[15:8], device[7:3], function[2:0].
constexpr std::uint16_t requester_id(unsigned bus, unsigned dev, unsigned fn) {
  return static_cast<std::uint16_t>(((bus & 0xFF) << 8) | ((dev & 0x1F) << 3) | (fn & 7));
}
constexpr unsigned rid_bus(std::uint16_t rid) { return rid >> 8; }
constexpr unsigned rid_devfn(std::uint16_t rid) { return rid & 0xFF; }

/// Root entry (9.1): 128 bits, indexed by bus number.
struct RootEntry {
  std::uint64_t lo = 0;  // bit 0: present; bits 63:12: context-table pointer
  std::uint64_t hi = 0;  // reserved in legacy mode
};
static_assert(sizeof(RootEntry) == 16, "VT-d root entry is 128 bits (9.1)");

namespace root {
constexpr std::uint64_t kPresent = 1ull << 0;
constexpr std::uint64_t kCtpMask = 0x000FFFFFFFFFF000ull;  // bits 63:12 (up to HAW)
constexpr std::uint64_t kEntrySize = sizeof(RootEntry);
constexpr std::uint64_t lo(std::uint64_t context_table_pa) { return (context_table_pa & kCtpMask) | kPresent; }
}  // namespace root

/// Context entry (9.3): 128 bits, indexed by device:function.
struct ContextEntry {
  std::uint64_t lo = 0;  // P, FPD, TT, SLPTPTR
  std::uint64_t hi = 0;  // AW, DID
};
static_assert(sizeof(ContextEntry) == 16, "VT-d context entry is 128 bits (9.3)");

namespace ctx {
// Low 64 bits.
constexpr std::uint64_t kPresent = 1ull << 0;
constexpr std::uint64_t kFaultProcessingDisable = 1ull << 1;  // FPD: qualified faults are not recorded
constexpr unsigned kTtShift = 2;                               // bits 3:2: translation type
constexpr std::uint64_t kTtMask = 3ull << kTtShift;
constexpr std::uint64_t kSlptptrMask = 0x000FFFFFFFFFF000ull;  // bits 63:12 (up to HAW)
// Translation types (9.3, TT field).
constexpr unsigned kTtUntranslated = 0;  // untranslated requests translated by the second level
constexpr unsigned kTtDeviceTlb = 1;     // as 0, plus translation requests (ATS); ATS not modelled
constexpr unsigned kTtPassThrough = 2;   // untranslated requests pass through (needs ECAP.PT)
// High 64 bits.
constexpr std::uint64_t kAwMask = 7;  // bits 66:64: address width, 1 = 39-bit (3-level), 2 = 48, 3 = 57
constexpr unsigned kDidShift = 8;     // bits 87:72: domain identifier
constexpr std::uint64_t kDidMask = 0xFFFFull << kDidShift;

constexpr unsigned tt(std::uint64_t lo) { return static_cast<unsigned>((lo & kTtMask) >> kTtShift); }
constexpr unsigned aw(std::uint64_t hi) { return static_cast<unsigned>(hi & kAwMask); }
constexpr std::uint16_t did(std::uint64_t hi) { return static_cast<std::uint16_t>((hi & kDidMask) >> kDidShift); }
/// Levels of the second-level walk for an AW encoding (1 -> 3 ... 3 -> 5).
constexpr unsigned aw_levels(unsigned aw) { return aw + 2; }
/// Adjusted guest address width in bits for an AW encoding (1 -> 39 ...).
constexpr unsigned aw_bits(unsigned aw) { return 30 + 9 * aw; }

constexpr ContextEntry make(std::uint64_t slptptr, std::uint16_t did, unsigned aw = 2,
                            unsigned tt = kTtUntranslated, bool fpd = false) {
  return ContextEntry{(slptptr & kSlptptrMask) | (std::uint64_t(tt & 3) << kTtShift) |
                          (fpd ? kFaultProcessingDisable : 0) | kPresent,
                      (std::uint64_t(did) << kDidShift) | (aw & kAwMask)};
}
constexpr std::uint64_t kEntrySize = sizeof(ContextEntry);
}  // namespace ctx

/// Second-level paging entries (9.8): the EPT-compatible format, so a
/// context entry may point at a VM's own EPT PML4. R and W are ANDed down the
/// walk; an entry with R = W = 0 is not present. X and the memory-type
/// fields are ignored by this model (no snoop control). Accessed and dirty
/// flags (bits 8 and 9, as EPT's) are set only in scalable mode with the
/// PASID-table entry's SLADE = 1.
namespace sl {
constexpr std::uint64_t kRead = 1ull << 0;
constexpr std::uint64_t kWrite = 1ull << 1;
constexpr std::uint64_t kExecute = 1ull << 2;
constexpr std::uint64_t kRw = kRead | kWrite;
constexpr std::uint64_t kPageSize = 1ull << 7;  // in level-2 (2 MiB) and level-3 (1 GiB) entries
constexpr std::uint64_t kAccessed = 1ull << 8;
constexpr std::uint64_t kDirty = 1ull << 9;
constexpr std::uint64_t kSnoop = 1ull << 11;
constexpr std::uint64_t kAddrMask = 0x000FFFFFFFFFF000ull;
}  // namespace sl

/// RTADDR_REG (10.4.6): bits 11:10 are the translation table mode.
namespace rtaddr {
constexpr unsigned kTtmShift = 10;
constexpr std::uint64_t kTtmMask = 3ull << kTtmShift;
constexpr unsigned kTtmLegacy = 0;    // 00b: legacy root and context entries
constexpr unsigned kTtmScalable = 1;  // 01b: scalable-mode root and context entries (needs ECAP.SMTS)
constexpr unsigned kTtmAbort = 3;     // 11b: abort-DMA mode (not modelled; rejected)
constexpr unsigned ttm(std::uint64_t reg) { return static_cast<unsigned>((reg & kTtmMask) >> kTtmShift); }
constexpr std::uint64_t make(std::uint64_t root_table_pa, unsigned ttm) {
  return (root_table_pa & root::kCtpMask) | (std::uint64_t(ttm & 3) << kTtmShift);
}
}  // namespace rtaddr

/// Scalable-mode root entry (9.2): 128 bits, indexed by bus number. The low
/// half points to the context table for device:function 0-127, the high half
/// to the one for 128-255.
namespace smroot {
constexpr std::uint64_t kPresent = 1ull << 0;  // LP (low half) / UP (high half)
constexpr std::uint64_t kCtpMask = root::kCtpMask;
constexpr RootEntry make(std::uint64_t lower_ctp, std::uint64_t upper_ctp) {
  return RootEntry{lower_ctp ? ((lower_ctp & kCtpMask) | kPresent) : 0,
                   upper_ctp ? ((upper_ctp & kCtpMask) | kPresent) : 0};
}
}  // namespace smroot

/// Scalable-mode context entry (9.4): 256 bits; 128 per 4 KiB context table,
/// indexed by device:function[6:0].
struct SmContextEntry {
  std::uint64_t w[4] = {};
};
static_assert(sizeof(SmContextEntry) == 32, "VT-d scalable-mode context entry is 256 bits (9.4)");

namespace smctx {
// Bits 63:0.
constexpr std::uint64_t kPresent = 1ull << 0;
constexpr std::uint64_t kFaultProcessingDisable = 1ull << 1;
constexpr std::uint64_t kDeviceTlbEnable = 1ull << 2;  // DTE (ATS; not modelled)
constexpr std::uint64_t kPasidEnable = 1ull << 3;      // PASIDE: requests-with-PASID allowed
constexpr std::uint64_t kPageRequestEnable = 1ull << 4;  // PRE (page requests; not modelled)
constexpr unsigned kPdtsShift = 9;                     // bits 11:9: PASID directory size, 2^(PDTS + 7) entries
constexpr std::uint64_t kPdtsMask = 7ull << kPdtsShift;
constexpr std::uint64_t kPasidDirMask = 0x000FFFFFFFFFF000ull;  // bits 63:12: PASIDDIRPTR
// Bits 127:64.
constexpr std::uint64_t kRidPasidMask = 0xFFFFF;  // bits 83:64: RID_PASID
constexpr std::uint64_t kRidPriv = 1ull << 20;    // bit 84: RID_PRIV, privilege of requests without PASID

constexpr std::uint64_t kEntrySize = sizeof(SmContextEntry);
constexpr unsigned kEntriesPerTable = 128;
constexpr unsigned pdts(std::uint64_t w0) { return static_cast<unsigned>((w0 & kPdtsMask) >> kPdtsShift); }
/// PASIDs the directory covers: 2^(PDTS + 7) directory entries of 64 PASIDs each.
constexpr std::uint64_t max_pasids(unsigned pdts) { return (1ull << (pdts + 7)) * 64; }

constexpr SmContextEntry make(std::uint64_t pasid_dir, unsigned pdts, std::uint32_t rid_pasid = 0,
                              bool paside = true, bool fpd = false, bool rid_priv = false) {
  return SmContextEntry{{(pasid_dir & kPasidDirMask) | (std::uint64_t(pdts & 7) << kPdtsShift) |
                             (paside ? kPasidEnable : 0) | (fpd ? kFaultProcessingDisable : 0) | kPresent,
                         (rid_pasid & kRidPasidMask) | (rid_priv ? kRidPriv : 0), 0, 0}};
}
}  // namespace smctx

/// Scalable-mode PASID directory entry (9.5): 64 bits, indexed by PASID[19:6].
namespace pasid_dir {
constexpr std::uint64_t kPresent = 1ull << 0;
constexpr std::uint64_t kFaultProcessingDisable = 1ull << 1;
constexpr std::uint64_t kTableMask = 0x000FFFFFFFFFF000ull;  // bits 63:12: SMPTBLPTR
constexpr std::uint64_t kEntrySize = 8;
constexpr unsigned kPasidShift = 6;  // PASID[5:0] index the PASID table
constexpr std::uint64_t make(std::uint64_t pasid_table) { return (pasid_table & kTableMask) | kPresent; }
}  // namespace pasid_dir

/// Scalable-mode PASID-table entry (9.6): 512 bits, indexed by PASID[5:0].
struct PasidEntry {
  std::uint64_t w[8] = {};
};
static_assert(sizeof(PasidEntry) == 64, "VT-d scalable-mode PASID-table entry is 512 bits (9.6)");

namespace pasid_entry {
// Bits 63:0.
constexpr std::uint64_t kPresent = 1ull << 0;
constexpr std::uint64_t kFaultProcessingDisable = 1ull << 1;
constexpr unsigned kAwShift = 2;  // bits 4:2: second-level address width, as the legacy context AW
constexpr std::uint64_t kAwMask = 7ull << kAwShift;
constexpr unsigned kPgttShift = 6;  // bits 8:6: PASID-granular translation type
constexpr std::uint64_t kPgttMask = 7ull << kPgttShift;
constexpr std::uint64_t kSlade = 1ull << 9;  // second-level accessed/dirty enable
constexpr std::uint64_t kSlptptrMask = 0x000FFFFFFFFFF000ull;  // bits 63:12
// Bits 127:64.
constexpr std::uint64_t kDidMask = 0xFFFF;  // bits 79:64: domain identifier
// Bits 191:128.
constexpr std::uint64_t kSre = 1ull << 0;  // bit 128: supervisor requests enabled
constexpr unsigned kFlpmShift = 2;         // bits 131:130: first-level paging mode, 0 = 4-level, 1 = 5-level
constexpr std::uint64_t kFlpmMask = 3ull << kFlpmShift;
constexpr std::uint64_t kWpe = 1ull << 4;  // bit 132: write protect for supervisor requests
constexpr std::uint64_t kFlptrMask = 0x000FFFFFFFFFF000ull;  // bits 191:140: FLPTR

// PGTT encodings (9.6).
constexpr unsigned kPgttFirstLevel = 1;
constexpr unsigned kPgttSecondLevel = 2;
constexpr unsigned kPgttNested = 3;
constexpr unsigned kPgttPassThrough = 4;

constexpr std::uint64_t kEntrySize = sizeof(PasidEntry);
constexpr unsigned kEntriesPerTable = 64;
constexpr unsigned pgtt(const PasidEntry& e) { return static_cast<unsigned>((e.w[0] & kPgttMask) >> kPgttShift); }
constexpr unsigned aw(const PasidEntry& e) { return static_cast<unsigned>((e.w[0] & kAwMask) >> kAwShift); }
constexpr std::uint16_t did(const PasidEntry& e) { return static_cast<std::uint16_t>(e.w[1] & kDidMask); }
constexpr unsigned flpm(const PasidEntry& e) { return static_cast<unsigned>((e.w[2] & kFlpmMask) >> kFlpmShift); }

/// What a PASID-table entry says, in one place for the tests and hypervisors.
struct Fields {
  unsigned pgtt = kPgttSecondLevel;
  std::uint16_t did = 0;
  std::uint64_t slptptr = 0;
  unsigned aw = 2;  // 48-bit, 4-level second level
  std::uint64_t flptr = 0;
  unsigned flpm = 0;  // 4-level first level
  bool sre = false;
  bool wpe = false;
  bool slade = false;
  bool fpd = false;
};
constexpr PasidEntry make(const Fields& f) {
  PasidEntry e{};
  e.w[0] = (f.slptptr & kSlptptrMask) | (std::uint64_t(f.pgtt & 7) << kPgttShift) |
           (std::uint64_t(f.aw & 7) << kAwShift) | (f.slade ? kSlade : 0) | (f.fpd ? kFaultProcessingDisable : 0) |
           kPresent;
  e.w[1] = f.did;
  e.w[2] = (f.flptr & kFlptrMask) | (std::uint64_t(f.flpm & 3) << kFlpmShift) | (f.sre ? kSre : 0) |
           (f.wpe ? kWpe : 0);
  return e;
}
}  // namespace pasid_entry

/// Non-recoverable fault reasons (VT-d specification, chapter 7, fault-reason
/// tables; the numbering QEMU's hw/i386/intel_iommu and Linux's
/// drivers/iommu/intel/dmar.c also use).
///
/// Legacy mode. An entry with R = W = 0 is "not present" for VT-d: a read
/// through it reports kReadDenied, a write kWriteDenied; the spec has no
/// separate second-level "not present" reason.
///
/// Scalable mode (codes 30h and up) tells the stage apart: a second-level
/// entry that blocks the read of a first-level table during a nested walk
/// reports 75h (the table FLPTR points to) or 76h (a lower table), one that
/// blocks the accessed/dirty update of a first-level entry 77h, and one that
/// blocks the final (guest-physical) address 85h/86h like a first-level
/// permission fault of the same access.
enum class FaultReason : std::uint8_t {
  kNone = 0,
  // Legacy mode.
  kRootNotPresent = 0x1,       // present field in the root entry is 0
  kContextNotPresent = 0x2,    // present field in the context entry is 0
  kContextInvalid = 0x3,       // invalid programming of a context entry (TT = 3, unsupported AW)
  kAddressBeyondAw = 0x4,      // input address above 2^AGAW - 1
  kWriteDenied = 0x5,          // write to a page without write permission
  kReadDenied = 0x6,           // read from a page without read permission
  kSlEntryReserved = 0xC,      // non-zero reserved field in a second-level entry (PS at level 4/5)
  // Scalable mode.
  kSmLegacyPasid = 0x31,          // request with PASID while RTADDR_REG.TTM = 00b (legacy)
  kSmRootNotPresent = 0x39,       // LP/UP of the scalable-mode root entry is 0
  kSmContextNotPresent = 0x41,    // present field of the scalable-mode context entry is 0
  kSmPasidDisabled = 0x45,        // request with PASID, context PASIDE = 0
  kSmPasidTooLarge = 0x46,        // PASID beyond the directory size (PDTS)
  kSmPasidDirNotPresent = 0x51,   // present field of the PASID directory entry is 0
  kSmPasidNotPresent = 0x59,      // present field of the PASID-table entry is 0
  kSmPasidInvalid = 0x5B,         // invalid PASID-table entry (reserved PGTT, AW or FLPM)
  kSmSupervisorDisabled = 0x5D,   // supervisor request, PASID-table entry SRE = 0
  kSmFlNotPresent = 0x71,         // present field of a first-level entry is 0
  kSmFlReserved = 0x72,           // non-zero reserved field in a first-level entry (PS at level 4/5)
  kSmNestedFlptrDenied = 0x75,    // nested: second level denies reading the table FLPTR points to
  kSmNestedFlTableDenied = 0x76,  // nested: second level denies reading a lower first-level table
  kSmNestedFlAdDenied = 0x77,     // nested: second level denies the A/D write to a first-level entry
  kSmSlReserved = 0x7A,           // non-zero reserved field in a second-level entry
  kSmNonCanonical = 0x80,         // first-level input address not canonical
  kSmUserSupervisor = 0x81,       // user request to a supervisor first-level page
  kSmExecuteDenied = 0x82,        // execute request to an XD first-level page
  kSmAddressBeyondAw = 0x83,      // second-level-only input address above 2^AGAW - 1
  kSmWriteDenied = 0x85,          // write without write permission (first level, or second level for the final address)
  kSmReadDenied = 0x86,           // read without read permission (second level, final address)
};

/// Where in the translation a fault was found (recorded with each fault:
/// 85h, for one, comes from either level).
enum class FaultStage : std::uint8_t {
  kNone,
  kContext,       // root, context, PASID directory or PASID-table entry
  kFirstLevel,    // a first-level entry or the first-level access rights
  kNestedTable,   // the second-level translation of a first-level table (nested)
  kSecondLevel,   // the second-level translation of the final address
};


}  // namespace vmx::iommu
