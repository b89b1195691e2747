// The guest kernel's page-table code, in one place: a cursor over the
// IA-32e page tables the kernel keeps in guest memory (SDM Vol. 3A, 4.5),
// mapping, unmapping, walking in software and releasing them. Every entry
// access is a load or store of the core that runs the kernel path, through
// the kernel's direct map once paging is on (by guest-physical address
// before). Entry formats come from mmu/paging.h.
//
// The kernel decides what to map (flags, leaf size) and charges its path
// lengths; this class only moves entries, and each operation makes exactly
// the loads and stores listed at its declaration.
#pragma once

#include <cstdint>
#include <functional>

namespace vmx::cpu {
class Core;
}

namespace vmx::guest {

class PageTables {
 public:
  /// A cleared page-table page (guest-physical) for a missing table.
  using AllocTable = std::function<std::uint64_t(cpu::Core&)>;
  /// The flags of a non-leaf entry the cursor creates.
  PageTables(unsigned levels, std::uint64_t table_flags, AllocTable alloc)
      : m_levels(levels), m_table_flags(table_flags), m_alloc(std::move(alloc)) {}

  /// Tables are reached at guest-physical + `offset` from now on (the
  /// direct map's base once paging is on; 0 before).
  void set_direct_map(std::uint64_t offset) { m_offset = offset; }
  /// The address software uses to reach table page `gpa`.
  std::uint64_t table_va(std::uint64_t gpa) const { return m_offset + gpa; }
  /// The address of entry `index` of table page `gpa`.
  std::uint64_t entry_va(std::uint64_t gpa, unsigned index) const { return table_va(gpa) + 8ull * index; }
  unsigned levels() const { return m_levels; }
  /// The address bits of an entry: pte::kAddrMask without the C-bit of
  /// an encrypted guest (set_addr_mask at boot), which marks a page
  /// private and is no part of the guest-physical address it maps.
  std::uint64_t addr_mask() const { return m_addr_mask; }
  void set_addr_mask(std::uint64_t mask) { m_addr_mask = mask; }

  /// Maps va -> gpa with a leaf at `leaf_level` (1: 4 KiB, 2: 2 MiB, 3:
  /// 1 GiB) and `flags`: one load per level above the leaf, a store of a
  /// new table entry where one is missing, and the store of the leaf.
  void map(cpu::Core& c, std::uint64_t root, std::uint64_t va, std::uint64_t gpa, std::uint64_t flags,
           unsigned leaf_level = 1) const;

  /// Where a walk down to `leaf_level` ended.
  struct Slot {
    std::uint64_t entry = 0;  // address of the last entry loaded
    std::uint64_t value = 0;  // its value
    unsigned level = 0;       // its level
    bool present = false;     // the entry at leaf_level is present
  };
  /// Walks from the top down to `leaf_level`, one load per level, stopping
  /// at the first entry that is not present.
  Slot walk(cpu::Core& c, std::uint64_t root, std::uint64_t va, unsigned leaf_level) const;
  /// The address of the level-1 entry for va (not loaded), after one load
  /// per level above it; 0 if a table on the way is missing.
  std::uint64_t leaf_entry(cpu::Core& c, std::uint64_t root, std::uint64_t va) const;
  /// Translates va as the hardware would (4 KiB, 2 MiB or 1 GiB leaves),
  /// one load per level visited; 0 if it is not mapped.
  std::uint64_t translate(cpu::Core& c, std::uint64_t root, std::uint64_t va) const;
  /// Clears the leaf entry at `entry` (from walk or leaf_entry): one store.
  static void clear(cpu::Core& c, std::uint64_t entry);
  /// Copies the present entries [first, last) of table `from` into table
  /// `to` (a new address space's kernel half): one load per entry, one
  /// store per non-zero one.
  void copy_entries(cpu::Core& c, std::uint64_t from, std::uint64_t to, unsigned first, unsigned last) const;
  /// Releases the tables below entries [first, last) of table `table` at
  /// `level` (a process's user half): each entry of each table is loaded,
  /// tables (not large-page leaves) below present entries are released
  /// depth first, each cleared with REP STOSB and handed to `freed`.
  void release_below(cpu::Core& c, std::uint64_t table, unsigned level, unsigned first, unsigned last,
                     const std::function<void(std::uint64_t)>& freed) const;
  /// Releases one table page and everything below it, as release_below.
  void release(cpu::Core& c, std::uint64_t table, unsigned level,
               const std::function<void(std::uint64_t)>& freed) const;

 private:
  unsigned m_levels;
  std::uint64_t m_table_flags;
  AllocTable m_alloc;
  std::uint64_t m_offset = 0;
  std::uint64_t m_addr_mask = 0x000FFFFFFFFFF000ull;  // pte::kAddrMask
};

}  // namespace vmx::guest
