// In-memory formats of x86-64 paging structures and EPT, and the paging-mode
// descriptor that drives the single walk loop in mmu/walker.
#pragma once

#include <cstdint>

namespace vmx::mmu {

/// IA-32e paging entries (SDM Vol. 3A, 4.5, Tables 4-15 to 4-20).
namespace pte {
constexpr std::uint64_t kPresent = 1ull << 0;
constexpr std::uint64_t kWritable = 1ull << 1;
constexpr std::uint64_t kUser = 1ull << 2;
constexpr std::uint64_t kPwt = 1ull << 3;
constexpr std::uint64_t kPcd = 1ull << 4;
constexpr std::uint64_t kAccessed = 1ull << 5;
constexpr std::uint64_t kDirty = 1ull << 6;
constexpr std::uint64_t kPageSize = 1ull << 7;
constexpr std::uint64_t kGlobal = 1ull << 8;
constexpr unsigned kPkeyShift = 59;  // protection key, bits 62:59 of a leaf (4.6.2)
constexpr std::uint64_t kNoExecute = 1ull << 63;
constexpr std::uint64_t kAddrMask = 0x000FFFFFFFFFF000ull;  // MAXPHYADDR = 52
}  // namespace pte

/// EPT paging-structure entries (SDM Vol. 3C, 29.3.2, Tables 29-2 to 29-7).
namespace ept {
constexpr std::uint64_t kRead = 1ull << 0;
constexpr std::uint64_t kWrite = 1ull << 1;
constexpr std::uint64_t kExecute = 1ull << 2;
constexpr std::uint64_t kPermMask = 7;
constexpr unsigned kMemTypeShift = 3;               // bits 5:3 of a leaf entry
constexpr std::uint64_t kMemTypeWb = 6ull << kMemTypeShift;
constexpr std::uint64_t kIgnorePat = 1ull << 6;
constexpr std::uint64_t kLargePage = 1ull << 7;
constexpr std::uint64_t kAccessed = 1ull << 8;
constexpr std::uint64_t kDirty = 1ull << 9;
constexpr std::uint64_t kUserExecute = 1ull << 10;
constexpr std::uint64_t kAddrMask = pte::kAddrMask;
/// EPTP (SDM Vol. 3C, 25.6.11): memory type, walk length - 1, A/D enable.
constexpr std::uint64_t kEptpWb = 6;
constexpr std::uint64_t eptp(std::uint64_t pml4_pa, unsigned levels, bool ad) {
  return (pml4_pa & kAddrMask) | kEptpWb | (std::uint64_t(levels - 1) << 3) | (ad ? 1ull << 6 : 0);
}
constexpr unsigned eptp_levels(std::uint64_t eptp) { return static_cast<unsigned>((eptp >> 3) & 7) + 1; }
constexpr bool eptp_ad(std::uint64_t eptp) { return (eptp >> 6) & 1; }
}  // namespace ept

/// CR bits the walker needs (SDM Vol. 3A, 2.5).
namespace crbits {
constexpr std::uint64_t kCr0Pe = 1ull << 0;
constexpr std::uint64_t kCr0Wp = 1ull << 16;
constexpr std::uint64_t kCr0Pg = 1ull << 31;
constexpr std::uint64_t kCr4Pae = 1ull << 5;
constexpr std::uint64_t kCr4Pge = 1ull << 7;
constexpr std::uint64_t kCr4Pce = 1ull << 8;  // RDPMC at any CPL
constexpr std::uint64_t kCr4La57 = 1ull << 12;
constexpr std::uint64_t kCr4Vmxe = 1ull << 13;
constexpr std::uint64_t kCr4Pcide = 1ull << 17;
constexpr std::uint64_t kCr4Smep = 1ull << 20;
constexpr std::uint64_t kCr4Smap = 1ull << 21;
constexpr std::uint64_t kCr4Pke = 1ull << 22;
constexpr std::uint64_t kEferLme = 1ull << 8;
constexpr std::uint64_t kEferNxe = 1ull << 11;
constexpr std::uint64_t kCr3PcidMask = 0xFFF;
constexpr std::uint64_t kCr3NoFlush = 1ull << 63;
}  // namespace crbits

/// Describes one paging dimension: how many levels the walk has and the
/// highest level at which an entry may map a page (1: 4 KiB only, 2: 2 MiB,
/// 3: 1 GiB). Level 1 is the page table, level 4 the PML4, level 5 the PML5.
struct PagingMode {
  std::uint8_t levels = 4;
  std::uint8_t largest_leaf = 3;
};

constexpr unsigned level_shift(unsigned level) { return 12 + 9 * (level - 1); }
constexpr unsigned table_index(std::uint64_t addr, unsigned level) {
  return static_cast<unsigned>((addr >> level_shift(level)) & 511);
}

/// Page-fault error code (SDM Vol. 3A, 4.7, Figure 4-12).
namespace pfec {
constexpr std::uint32_t kPresent = 1u << 0;
constexpr std::uint32_t kWrite = 1u << 1;
constexpr std::uint32_t kUser = 1u << 2;
constexpr std::uint32_t kReserved = 1u << 3;
constexpr std::uint32_t kFetch = 1u << 4;
constexpr std::uint32_t kPk = 1u << 5;
}  // namespace pfec

enum class AccessType : std::uint8_t { Read = 0, Write = 1, Execute = 2 };

}  // namespace vmx::mmu
