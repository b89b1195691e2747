// How the core reports a neutral walk fault (mmu/walk_loop.h) in the x86
// encodings: the page-fault error code (SDM Vol. 3A, 4.7) and the exit
// qualification of an EPT violation (SDM Vol. 3C, 28.2.1, Table 28-7). The
// bits live here, below cpu/, because the CPU's walker front end (mmu/walker)
// fills both into its WalkResult; cpu/vmx.h names the same bits for the
// hypervisor.
#pragma once

#include <cstdint>

#include "mmu/paging.h"
#include "mmu/walk_loop.h"

namespace vmx::mmu {

/// Exit qualification of an EPT violation (SDM Vol. 3C, Table 28-7).
namespace eptqual {
constexpr std::uint64_t kRead = 1u << 0;
constexpr std::uint64_t kWrite = 1u << 1;
constexpr std::uint64_t kFetch = 1u << 2;
constexpr std::uint64_t kReadable = 1u << 3;
constexpr std::uint64_t kWritable = 1u << 4;
constexpr std::uint64_t kExecutable = 1u << 5;
constexpr std::uint64_t kUserExecutable = 1u << 6;
constexpr std::uint64_t kGlaValid = 1u << 7;
constexpr std::uint64_t kGlaTranslation = 1u << 8;  // else: a paging-structure access
}  // namespace eptqual

/// The #PF error code of a stage-1 fault (SDM Vol. 3A, 4.7): P for a
/// present entry (rights or reserved bit), W/R, U/S, RSVD, I/D for an
/// instruction fetch when CR4.SMEP = 1 or IA32_EFER.NXE = 1, and PK when
/// the protection key of the page refused the access.
constexpr std::uint32_t pf_error_code(const WalkFault& f, bool user, bool nxe, bool smep) {
  std::uint32_t code = (f.access == AccessType::Write ? pfec::kWrite : 0) | (user ? pfec::kUser : 0) |
                       (f.access == AccessType::Execute && (nxe || smep) ? pfec::kFetch : 0);
  if (f.kind == WalkFault::Kind::Reserved) code |= pfec::kPresent | pfec::kReserved;
  if (f.kind == WalkFault::Kind::Permission) code |= pfec::kPresent | (f.missing & kProtectionKey ? pfec::kPk : 0);
  return code;
}

/// The exit qualification of a stage-2 (EPT) violation (Table 28-7): the
/// access; bits 5:3 the EPT rights of the faulting translation (the AND of
/// bits 2:0 of the entries used; bit 5 supervisor-execute with MBEC), bit 6
/// with mode-based execute control the AND of the user-execute bits (bit
/// 10; undefined without MBEC, reported 0); bit 7 the
/// guest linear address is valid, bit 8 the access was to the final
/// translation (not a guest paging-structure entry, nor an accessed/dirty
/// update). With EPT accessed/dirty flags on (EPTP bit 6), a guest
/// paging-structure access is a write to EPT and reports read and write
/// (note to bit 1). guest_paging false: the guest-physical address was
/// accessed directly (CR0.PG = 0).
constexpr std::uint64_t ept_qualification(const WalkFault& f, bool guest_paging, bool eptp_ad, bool mbec = false) {
  std::uint64_t q = f.access == AccessType::Read    ? eptqual::kRead
                    : f.access == AccessType::Write ? eptqual::kWrite
                                                    : eptqual::kFetch;
  if (guest_paging && !f.final && eptp_ad) q = eptqual::kRead | eptqual::kWrite;
  q |= std::uint64_t(f.perms & 7) << 3;
  if (mbec && (f.perms & EptFormat::kUserExec)) q |= eptqual::kUserExecutable;
  q |= eptqual::kGlaValid;
  if (f.final || !guest_paging) q |= eptqual::kGlaTranslation;
  return q;
}

}  // namespace vmx::mmu
