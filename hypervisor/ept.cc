#include "hypervisor/ept.h"

#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "cpu/core.h"

namespace vmx::hv {

namespace ept = mmu::ept;
using cpu::Core;

namespace {
constexpr std::uint64_t kPage = 4096;
constexpr unsigned kEntries = 512;
// A non-leaf entry grants everything; the leaves decide (SDM Vol. 3C, 29.3.2).
constexpr std::uint64_t kTableBits = ept::kRead | ept::kWrite | ept::kExecute;
constexpr std::uint64_t kAd = ept::kAccessed | ept::kDirty;
std::uint64_t level_size(unsigned level) { return 1ull << mmu::level_shift(level); }
bool is_leaf(std::uint64_t e, unsigned level) { return level == 1 || (e & ept::kLargePage); }
}  // namespace

Ept::Ept(Env env, std::uint64_t root, unsigned levels, bool ad)
    : m_env(std::move(env)), m_root(root), m_eptp(ept::eptp(root, levels, ad)), m_levels(levels) {
  if (!m_env.frames) throw std::invalid_argument("Ept: no frame allocator");
}

unsigned Ept::level_of(std::uint64_t size) {
  switch (size) {
    case 1ull << 12: return 1;
    case 1ull << 21: return 2;
    case 1ull << 30: return 3;
    default: throw std::invalid_argument(fmt::format("EPT: no page size {:#x}", size));
  }
}

std::uint64_t Ept::new_table(Core& c) {
  const std::uint64_t t = m_env.frames->alloc(m_env.table_zone, kPage);
  if (!t) return 0;
  if (m_env.on_table) m_env.on_table();
  c.rep_stos(t, 0, kPage);
  return t;
}

void Ept::flush(Core& c) {
  ++m_flushes;
  if (m_env.flush) m_env.flush(c, m_eptp);
}

void Ept::rmap_add(std::uint64_t hpa, std::uint64_t gpa) {
  if (m_env.frames->allocated(hpa)) m_env.frames->rmap_add(hpa, {m_env.vm, gpa});
}

void Ept::rmap_remove(std::uint64_t hpa, std::uint64_t gpa) {
  if (!m_env.frames->allocated(hpa)) return;
  for (const auto& m : m_env.frames->mappings(hpa))
    if (m.vm == m_env.vm && m.gpa == gpa) {
      m_env.frames->rmap_remove(hpa, {m_env.vm, gpa});
      return;
    }
}

std::optional<Ept::Leaf> Ept::lookup(Core& c, std::uint64_t gpa) {
  std::uint64_t table = m_root;
  for (unsigned level = m_levels; level >= 1; --level) {
    const std::uint64_t pa = table + mmu::table_index(gpa, level) * 8;
    const std::uint64_t e = c.load(pa);
    if (!(e & ept::kPermMask)) return std::nullopt;
    if (is_leaf(e, level)) {
      const std::uint64_t size = level_size(level);
      return Leaf{gpa & ~(size - 1), e & ept::kAddrMask & ~(size - 1), size, level, e, pa};
    }
    table = e & ept::kAddrMask;
  }
  return std::nullopt;
}

std::uint64_t Ept::translate(Core& c, std::uint64_t gpa) {
  auto l = lookup(c, gpa);
  return l ? l->hpa | (gpa & (l->size - 1)) : 0;
}

// SDM Vol. 3C, 29.3.2: the leaf sits at the level of its size, with bit 7
// set above level 1.
bool Ept::map(Core& c, std::uint64_t gpa, std::uint64_t hpa, std::uint64_t size, std::uint64_t attrs) {
  const unsigned leaf = level_of(size);
  if ((gpa | hpa) & (size - 1))
    throw std::invalid_argument(fmt::format("EPT map: {:#x} -> {:#x} is not aligned to {:#x}", gpa, hpa, size));
  std::uint64_t table = m_root;
  for (unsigned level = m_levels; level > leaf; --level) {
    const std::uint64_t pa = table + mmu::table_index(gpa, level) * 8;
    std::uint64_t e = c.load(pa);
    if (!(e & ept::kPermMask)) {
      const std::uint64_t t = new_table(c);
      if (!t) return false;
      e = t | kTableBits;
      c.store(pa, e);
    } else if (e & ept::kLargePage) {
      throw std::logic_error(fmt::format("EPT map: guest-physical {:#x} lies in a larger page", gpa));
    }
    table = e & ept::kAddrMask;
  }
  c.store(table + mmu::table_index(gpa, leaf) * 8,
          (hpa & ept::kAddrMask) | (attrs & kAttrMask) | (leaf > 1 ? ept::kLargePage : 0));
  rmap_add(hpa, gpa);
  return true;
}

std::optional<Ept::Leaf> Ept::unmap(Core& c, std::uint64_t gpa) {
  auto l = lookup(c, gpa);
  if (!l) return std::nullopt;
  c.store(l->entry_pa, 0);
  rmap_remove(l->hpa, l->gpa);
  flush(c);
  return l;
}

bool Ept::protect(Core& c, std::uint64_t gpa, std::uint64_t perms) {
  auto l = lookup(c, gpa);
  if (!l) return false;
  const std::uint64_t e = (l->entry & ~ept::kPermMask) | (perms & ept::kPermMask);
  if (!(e & ept::kPermMask)) {
    // No permission at all is "not present" (29.3.2): that is an unmap.
    unmap(c, gpa);
    return true;
  }
  if (e == l->entry) return true;
  c.store(l->entry_pa, e);
  if (l->entry & ept::kPermMask & ~perms) flush(c);
  return true;
}

bool Ept::remap(Core& c, std::uint64_t gpa, std::uint64_t hpa, std::uint64_t attrs) {
  auto l = lookup(c, gpa);
  if (!l) return false;
  if (hpa & (l->size - 1))
    throw std::invalid_argument(fmt::format("EPT remap: {:#x} is not aligned to {:#x}", hpa, l->size));
  c.store(l->entry_pa, (hpa & ept::kAddrMask) | (attrs & kAttrMask) | (l->level > 1 ? ept::kLargePage : 0));
  rmap_remove(l->hpa, l->gpa);
  rmap_add(hpa, l->gpa);
  flush(c);
  return true;
}

bool Ept::split(Core& c, std::uint64_t gpa) {
  auto l = lookup(c, gpa);
  if (!l || l->level == 1) return false;
  const std::uint64_t t = new_table(c);
  if (!t) return false;
  const unsigned child = l->level - 1;
  const std::uint64_t csize = level_size(child);
  // The children keep the attributes and the A/D flags of the large page.
  const std::uint64_t bits = (l->entry & (kAttrMask | kAd)) | (child > 1 ? ept::kLargePage : 0);
  for (unsigned i = 0; i < kEntries; ++i) c.store(t + 8ull * i, (l->hpa + i * csize) | bits);
  c.store(l->entry_pa, t | kTableBits);
  flush(c);
  return true;
}

bool Ept::merge(Core& c, std::uint64_t gpa, unsigned level) {
  if (level < 2 || level > 3 || level > m_levels) return false;
  // The level-`level` entry covering gpa.
  std::uint64_t table = m_root, pa = 0, e = 0;
  for (unsigned l = m_levels; l >= level; --l) {
    pa = table + mmu::table_index(gpa, l) * 8;
    e = c.load(pa);
    if (!(e & ept::kPermMask) || (e & ept::kLargePage)) return false;
    table = e & ept::kAddrMask;
  }
  const std::uint64_t child_table = table;
  const std::uint64_t size = level_size(level), csize = level_size(level - 1);
  std::uint64_t first = 0, ad = 0;
  for (unsigned i = 0; i < kEntries; ++i) {
    const std::uint64_t ce = c.load(child_table + 8ull * i);
    if (!(ce & ept::kPermMask) || !is_leaf(ce, level - 1)) return false;
    const std::uint64_t hpa = ce & ept::kAddrMask & ~(csize - 1);
    if (i == 0) {
      first = ce;
      if (hpa & (size - 1)) return false;
    } else if (hpa != (first & ept::kAddrMask) + i * csize || (ce & kAttrMask) != (first & kAttrMask)) {
      return false;
    }
    ad |= ce & kAd;
  }
  c.store(pa, (first & ept::kAddrMask) | (first & kAttrMask) | ad | ept::kLargePage);
  flush(c);  // before the table frame can be reused
  m_env.frames->put(child_table);
  return true;
}

void Ept::walk_leaves(Core& c, std::uint64_t table, unsigned level, std::uint64_t base, std::uint64_t lo,
                      std::uint64_t hi, bool clear_ad, bool& any_ad, const std::function<void(const Leaf&)>& fn) {
  const std::uint64_t size = level_size(level);
  for (unsigned i = 0; i < kEntries; ++i) {
    const std::uint64_t gpa = base + i * size;
    if (gpa + size <= lo || gpa >= hi) continue;
    const std::uint64_t pa = table + 8ull * i;
    const std::uint64_t e = c.load(pa);
    if (!(e & ept::kPermMask)) continue;
    if (!is_leaf(e, level)) {
      walk_leaves(c, e & ept::kAddrMask, level - 1, gpa, lo, hi, clear_ad, any_ad, fn);
      continue;
    }
    fn(Leaf{gpa, e & ept::kAddrMask & ~(size - 1), size, level, e, pa});
    if (clear_ad && (e & kAd)) {
      c.store(pa, e & ~kAd);
      any_ad = true;
    }
  }
}

void Ept::for_each_leaf(Core& c, std::uint64_t lo, std::uint64_t hi, bool clear_ad,
                        const std::function<void(const Leaf&)>& fn) {
  bool any_ad = false;
  walk_leaves(c, m_root, m_levels, 0, lo, hi, clear_ad, any_ad, fn);
  // SDM Vol. 3C, 29.3.5: a cached translation does not set the flags again.
  if (any_ad) flush(c);
}

std::size_t Ept::clear_bits(Core& c, std::vector<Leaf>& leaves, std::uint64_t bits, bool invalidate) {
  std::size_t changed = 0;
  for (Leaf& l : leaves) {
    if (!(l.entry & bits)) continue;
    // Present stays present: bits never holds all of R/W/X here.
    l.entry = c.xchg(l.entry_pa, l.entry & ~bits);
    ++changed;
  }
  if (changed && invalidate) flush(c);
  return changed;
}

void Ept::clear_table(Core& c, std::uint64_t table, unsigned level, std::uint64_t base,
                      const std::function<void(const Leaf&)>& fn) {
  const std::uint64_t size = level_size(level);
  for (unsigned i = 0; i < kEntries; ++i) {
    const std::uint64_t pa = table + 8ull * i;
    const std::uint64_t e = c.load(pa);
    if (!(e & ept::kPermMask)) continue;
    const std::uint64_t gpa = base + i * size;
    c.store(pa, 0);
    if (is_leaf(e, level)) {
      fn(Leaf{gpa, e & ept::kAddrMask & ~(size - 1), size, level, e, pa});
    } else {
      clear_table(c, e & ept::kAddrMask, level - 1, gpa, fn);
      fn(Leaf{gpa, e & ept::kAddrMask, 0, level, e, pa});  // size 0: a table frame
    }
  }
}

void Ept::destroy(Core& c, const std::function<void(const Leaf&)>& fn) {
  // Clear everything first, invalidate, then release: no frame is reused
  // while a core may still translate through it.
  std::vector<Leaf> gone;
  clear_table(c, m_root, m_levels, 0, [&](const Leaf& l) { gone.push_back(l); });
  flush(c);
  for (const Leaf& l : gone) {
    if (l.size == 0) {
      m_env.frames->put(l.hpa);
    } else {
      rmap_remove(l.hpa, l.gpa);
      fn(l);
    }
  }
  m_env.frames->put(m_root);
  m_root = 0;
}

}  // namespace vmx::hv
