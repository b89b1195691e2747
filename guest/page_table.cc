#include "guest/page_table.h"

#include "cpu/core.h"
#include "mmu/paging.h"

namespace vmx::guest {

namespace pte = mmu::pte;
using cpu::Core;

void PageTables::map(Core& c, std::uint64_t root, std::uint64_t va, std::uint64_t gpa, std::uint64_t flags,
                     unsigned leaf_level) const {
  std::uint64_t table = root;
  for (unsigned level = m_levels; level > leaf_level; --level) {
    std::uint64_t entry = entry_va(table, mmu::table_index(va, level));
    std::uint64_t e = c.load(entry);
    if (!(e & pte::kPresent)) {
      e = m_alloc(c) | m_table_flags;
      c.store(entry, e);
    }
    table = e & m_addr_mask;
  }
  c.store(entry_va(table, mmu::table_index(va, leaf_level)), (gpa & m_addr_mask) | flags);
}

PageTables::Slot PageTables::walk(Core& c, std::uint64_t root, std::uint64_t va, unsigned leaf_level) const {
  Slot s;
  std::uint64_t table = root;
  for (unsigned level = m_levels; level >= leaf_level; --level) {
    s.entry = entry_va(table, mmu::table_index(va, level));
    s.value = c.load(s.entry);
    s.level = level;
    if (!(s.value & pte::kPresent)) return s;
    if (level == leaf_level) {
      s.present = true;
      return s;
    }
    table = s.value & m_addr_mask;
  }
  return s;
}

std::uint64_t PageTables::leaf_entry(Core& c, std::uint64_t root, std::uint64_t va) const {
  std::uint64_t table = root;
  for (unsigned level = m_levels; level > 1; --level) {
    std::uint64_t e = c.load(entry_va(table, mmu::table_index(va, level)));
    if (!(e & pte::kPresent)) return 0;
    table = e & m_addr_mask;
  }
  return entry_va(table, mmu::table_index(va, 1));
}

std::uint64_t PageTables::translate(Core& c, std::uint64_t root, std::uint64_t va) const {
  std::uint64_t table = root;
  for (unsigned level = m_levels; level >= 1; --level) {
    const std::uint64_t e = c.load(entry_va(table, mmu::table_index(va, level)));
    if (!(e & pte::kPresent)) return 0;
    // A PS bit ends the walk at levels 3 and 2 (SDM Vol. 3A, 4.5.4).
    if (level == 1 || (level <= 3 && (e & pte::kPageSize))) {
      const std::uint64_t span = 1ull << mmu::level_shift(level);
      return ((e & m_addr_mask) & ~(span - 1)) | (va & (span - 1));
    }
    table = e & m_addr_mask;
  }
  return 0;
}

void PageTables::clear(Core& c, std::uint64_t entry) { c.store(entry, 0); }

void PageTables::copy_entries(Core& c, std::uint64_t from, std::uint64_t to, unsigned first, unsigned last) const {
  for (unsigned i = first; i < last; ++i) {
    std::uint64_t e = c.load(entry_va(from, i));
    if (e) c.store(entry_va(to, i), e);
  }
}

void PageTables::release_below(Core& c, std::uint64_t table, unsigned level, unsigned first, unsigned last,
                               const std::function<void(std::uint64_t)>& freed) const {
  for (unsigned i = first; i < last; ++i) {
    std::uint64_t e = c.load(entry_va(table, i));
    if ((e & pte::kPresent) && !(e & pte::kPageSize)) release(c, e & m_addr_mask, level - 1, freed);
  }
}

void PageTables::release(Core& c, std::uint64_t table, unsigned level,
                         const std::function<void(std::uint64_t)>& freed) const {
  if (level > 1) release_below(c, table, level, 0, 512, freed);
  c.rep_stos(table_va(table), 0, 4096);  // page-table pages are handed out cleared
  freed(table);
}

}  // namespace vmx::guest
