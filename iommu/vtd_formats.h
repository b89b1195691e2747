// In-memory formats of Intel VT-d DMA remapping, legacy (non-scalable) mode:
// root table, context tables and second-level paging structures. Section
// numbers refer to "Intel Virtualization Technology for Directed I/O,
// Architecture Specification" (rev. 3.x), chapter 9 ("Translation Structure
// Formats").
//
// Legacy-mode lookup (chapter 3): the root table (4 KiB, 256 x 16-byte
// entries, at RTADDR_REG) is indexed by the requester's bus number; its entry
// points to a context table (4 KiB, 256 x 16-byte entries) indexed by
// device:function; the context entry names the domain and the second-level
// page table that translates the request's address.
//
// Scalable mode (root entries with an upper context-table pointer, 32-byte
// scalable-mode context entries, PASID directories and tables, first-level
// IA-32e tables for two-stage translation) is not modelled yet; its formats go
// here (9.2, 9.4 to 9.7) and its lookup in Iommu::lookup_context.
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
/// fields are ignored by this model (no execute requests, no snoop control).
namespace sl {
constexpr std::uint64_t kRead = 1ull << 0;
constexpr std::uint64_t kWrite = 1ull << 1;
constexpr std::uint64_t kExecute = 1ull << 2;
constexpr std::uint64_t kRw = kRead | kWrite;
constexpr std::uint64_t kPageSize = 1ull << 7;  // in level-2 (2 MiB) and level-3 (1 GiB) entries
constexpr std::uint64_t kSnoop = 1ull << 11;
constexpr std::uint64_t kAddrMask = 0x000FFFFFFFFFF000ull;
}  // namespace sl

/// Non-recoverable fault reasons, legacy mode (VT-d specification, chapter 7,
/// fault-reason table; the same numbering as QEMU's hw/i386/intel_iommu).
/// An entry with R = W = 0 is "not present" for VT-d: a read through it
/// reports kReadDenied, a write kWriteDenied; the spec has no separate
/// second-level "not present" reason.
enum class FaultReason : std::uint8_t {
  kNone = 0,
  kRootNotPresent = 0x1,       // present field in the root entry is 0
  kContextNotPresent = 0x2,    // present field in the context entry is 0
  kContextInvalid = 0x3,       // invalid programming of a context entry (TT = 3, unsupported AW)
  kAddressBeyondAw = 0x4,      // input address above 2^AGAW - 1
  kWriteDenied = 0x5,          // write to a page without write permission
  kReadDenied = 0x6,           // read from a page without read permission
  kSlEntryReserved = 0xC,      // non-zero reserved field in a second-level entry (PS at level 4/5)
};

}  // namespace vmx::iommu
