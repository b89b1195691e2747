// One VM's EPT paging structures and the one cursor through which the
// hypervisor changes them (docs/memory.md, "The EPT cursor").
//
// The tables live in host-physical memory in the SDM's format (Vol. 3C,
// 29.3.2, mmu/paging.h ept::) and the hardware walks them; every read and
// write of an entry here is a load or store of the core the hypervisor runs
// on, so its cost is charged as those operations. Callers hold the VM's MMU
// lock. Each operation issues the invalidation its change needs (SDM Vol.
// 3C, 29.4.3): an entry that goes from not present to present needs none (a
// not-present entry is never cached, 29.4.3.2); one whose translation is
// removed, reduced, restructured (split or merged) or whose A/D flags are
// cleared may be cached on any core that ran the VM, so the cursor asks the
// hypervisor's flush hook to invalidate the EPT's mappings everywhere
// (INVEPT single-context on each such core, after an IPI for the others, as
// KVM's kvm_flush_remote_tlbs).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "hypervisor/frames.h"
#include "mmu/paging.h"

namespace vmx::cpu {
class Core;
}

namespace vmx::hv {

class Ept {
 public:
  /// What the tables need from the hypervisor.
  struct Env {
    FrameAllocator* frames = nullptr;  // paging-structure frames and the reverse map
    unsigned table_zone = 0;           // the zone they come from
    unsigned vm = 0;                   // the VM's index in reverse-map entries
    /// Counts each paging-structure frame allocated (may be null).
    std::function<void()> on_table;
    /// Invalidates cached translations of this EPT on every core that may
    /// hold them, called on core c (holding the MMU lock).
    std::function<void(cpu::Core& c, std::uint64_t eptp)> flush;
  };

  /// A leaf entry: it maps [gpa, gpa + size) to [hpa, hpa + size).
  struct Leaf {
    std::uint64_t gpa = 0, hpa = 0, size = 0;
    unsigned level = 0;          // 1: 4 KiB, 2: 2 MiB, 3: 1 GiB
    std::uint64_t entry = 0;     // the entry as the hardware reads it
    std::uint64_t entry_pa = 0;  // host-physical address of the entry
  };

  /// Attributes of a guest-memory leaf: read, write, execute, write-back.
  static constexpr std::uint64_t kRwxWb = mmu::ept::kRead | mmu::ept::kWrite | mmu::ept::kExecute | mmu::ept::kMemTypeWb;
  /// Leaf bits a caller may set: permissions, memory type, ignore-PAT,
  /// user-execute (the address, the large-page bit and A/D are the cursor's).
  static constexpr std::uint64_t kAttrMask = mmu::ept::kPermMask | (7ull << mmu::ept::kMemTypeShift) |
                                             mmu::ept::kIgnorePat | mmu::ept::kUserExecute;

  /// Tables rooted at the (zeroed) frame `root`, allocated from env.frames.
  Ept(Env env, std::uint64_t root, unsigned levels, bool ad);

  std::uint64_t root() const { return m_root; }
  std::uint64_t eptp() const { return m_eptp; }
  unsigned levels() const { return m_levels; }
  static unsigned level_of(std::uint64_t size);

  /// The leaf that maps gpa, by a software walk (loads only).
  std::optional<Leaf> lookup(cpu::Core& c, std::uint64_t gpa);
  /// Host-physical address of gpa, 0 if unmapped.
  std::uint64_t translate(cpu::Core& c, std::uint64_t gpa);

  /// Installs a leaf of `size` (4 KiB, 2 MiB or 1 GiB) mapping the aligned
  /// gpa to hpa with `attrs` (kAttrMask bits) where nothing is mapped yet,
  /// allocating (and zeroing) tables on the way. Not present to present: no
  /// invalidation. Returns false if a table frame could not be allocated;
  /// throws if a larger leaf already covers gpa. A block of env.frames that
  /// is mapped gets a reverse-map entry.
  bool map(cpu::Core& c, std::uint64_t gpa, std::uint64_t hpa, std::uint64_t size, std::uint64_t attrs);
  /// Removes the leaf that maps gpa and invalidates; returns it (nothing if
  /// gpa was unmapped). The caller releases the frame.
  std::optional<Leaf> unmap(cpu::Core& c, std::uint64_t gpa);
  /// Sets the permissions (R/W/X bits) of the leaf mapping gpa; invalidates
  /// if any permission was removed (adding permissions needs none: the
  /// stale, stricter entry only causes an EPT violation that finds the new
  /// one, 29.4.3.2). False if gpa is unmapped.
  bool protect(cpu::Core& c, std::uint64_t gpa, std::uint64_t perms);
  /// Points the present leaf mapping gpa at another block `hpa` of the same
  /// size with `attrs` (kAttrMask bits; A/D cleared), moving its
  /// reverse-map entry, and invalidates: the old translation may be cached
  /// anywhere (29.4.3.1). Same-page merging and its copy-on-write use it.
  /// False if gpa is unmapped. The caller holds a reference to hpa and
  /// releases the old block.
  bool remap(cpu::Core& c, std::uint64_t gpa, std::uint64_t hpa, std::uint64_t attrs);
  /// Replaces the large leaf mapping gpa by a table of 512 leaves of the
  /// next size down, with the same attributes; invalidates. False if gpa is
  /// unmapped, already a 4 KiB leaf, or no table frame is free.
  bool split(cpu::Core& c, std::uint64_t gpa);
  /// Replaces the table of 512 leaves at `level - 1` under the level-`level`
  /// entry covering gpa by one large leaf, if they map one contiguous,
  /// aligned range with the same attributes; frees the table and
  /// invalidates. False if they do not.
  bool merge(cpu::Core& c, std::uint64_t gpa, unsigned level);
  /// Calls fn for every present leaf overlapping [lo, hi), in address order,
  /// with its A/D flags (SDM Vol. 3C, 29.3.5). With clear_ad the flags are
  /// cleared after fn sees them, and one invalidation follows if any was set
  /// (a cached translation would not set them again).
  void for_each_leaf(cpu::Core& c, std::uint64_t lo, std::uint64_t hi, bool clear_ad,
                     const std::function<void(const Leaf&)>& fn);
  /// Clears `bits` (permissions, e.g. kWrite for write protection, or the
  /// A/D flags) in each of `leaves` (as for_each_leaf gave them), each with
  /// an atomic exchange of the entry so that a flag the hardware set since
  /// the leaf was read is not lost: each leaf's `entry` becomes the value
  /// the exchange found. One invalidation everywhere if any entry changed
  /// (a removed permission, or a cleared flag a cached translation would
  /// not set again, SDM Vol. 3C, 29.3.5, 29.4.3). Returns the entries changed.
  /// invalidate = false skips the invalidation: only for clearing accessed
  /// flags as an age hint (KVM's clear_young), where a stale cached
  /// translation costs accuracy, never correctness.
  std::size_t clear_bits(cpu::Core& c, std::vector<Leaf>& leaves, std::uint64_t bits, bool invalidate = true);
  /// Tears the tables down: every leaf is cleared and passed to fn (which
  /// releases its frame), every table frame including the root goes back to
  /// env.frames, one invalidation. The Ept is unusable afterwards.
  void destroy(cpu::Core& c, const std::function<void(const Leaf&)>& fn);

  /// Invalidations requested (one per change that needed one).
  std::uint64_t flushes() const { return m_flushes; }

 private:
  std::uint64_t new_table(cpu::Core& c);
  void flush(cpu::Core& c);
  void rmap_add(std::uint64_t hpa, std::uint64_t gpa);
  void rmap_remove(std::uint64_t hpa, std::uint64_t gpa);
  void clear_table(cpu::Core& c, std::uint64_t table, unsigned level, std::uint64_t base,
                   const std::function<void(const Leaf&)>& fn);
  void walk_leaves(cpu::Core& c, std::uint64_t table, unsigned level, std::uint64_t base, std::uint64_t lo,
                   std::uint64_t hi, bool clear_ad, bool& any_ad, const std::function<void(const Leaf&)>& fn);

  Env m_env;
  std::uint64_t m_root;
  std::uint64_t m_eptp;
  unsigned m_levels;
  std::uint64_t m_flushes = 0;
};

}  // namespace vmx::hv
