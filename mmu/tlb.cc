#include "mmu/tlb.h"

#include <stdexcept>

#include "mmu/assoc.h"

namespace vmx::mmu {

TlbStats::TlbStats(stats::Group* parent, const std::string& name)
    : stats::Group(parent, name, "set-associative TLB (VPID/PCID/EP4TA-tagged, true LRU)") {}

Tlb::Tlb(const TlbParams& params, unsigned page_shift, stats::Group* parent, const std::string& name)
    : Tlb(params, {page_shift}, parent, name) {}

Tlb::Tlb(const TlbParams& params, std::initializer_list<unsigned> page_shifts, stats::Group* parent,
         const std::string& name)
    : m_params(params), m_stats(parent, name) {
  auto bad = [&](const char* param, const std::string& what) {
    return std::invalid_argument("TLB '" + name + "': parameter '" + param + "' " + what);
  };
  if (page_shifts.size() == 0 || page_shifts.size() > 3) throw bad("page_shift", "must list 1 to 3 page sizes");
  for (unsigned page_shift : page_shifts) {
    if (page_shift != 12 && page_shift != 21 && page_shift != 30)
      throw bad("page_shift", "must be 12, 21 or 30 (got " + std::to_string(page_shift) + ")");
    if (m_nshifts > 0 && page_shift <= m_shifts[m_nshifts - 1])
      throw bad("page_shift", "sizes must be listed smallest first, each once");
    m_shifts[m_nshifts++] = static_cast<std::uint8_t>(page_shift);
    m_holds = static_cast<std::uint8_t>(m_holds | size_bit(page_shift));
  }
  check_geometry("TLB '" + name + "'", params.entries, params.ways);
  const std::uint32_t sets = params.entries / params.ways;
  m_sets = sets;
  m_set_mask = sets - 1;
  m_entries.assign(params.entries, TlbEntry{});
  m_keys.assign(params.entries, kNoKey);
  m_stamp.assign(params.entries, 0);
}

[[gnu::always_inline]] inline std::size_t Tlb::find_way(std::size_t base, std::uint64_t key, const TlbTag& tag) const {
  const std::uint64_t* keys = m_keys.data() + base;
  const std::size_t ways = m_params.ways;
  std::size_t w = 0;
  // Four ways a step, no loop test between them.
  for (; w + 4 <= ways; w += 4) {
    if (keys[w] == key && tag_matches(m_entries[base + w], tag)) return w;
    if (keys[w + 1] == key && tag_matches(m_entries[base + w + 1], tag)) return w + 1;
    if (keys[w + 2] == key && tag_matches(m_entries[base + w + 2], tag)) return w + 2;
    if (keys[w + 3] == key && tag_matches(m_entries[base + w + 3], tag)) return w + 3;
  }
  for (; w < ways; ++w)
    if (keys[w] == key && tag_matches(m_entries[base + w], tag)) return w;
  return ways;
}

const TlbEntry* Tlb::lookup_present(std::uint64_t va, const TlbTag& tag) {
  ++m_stats.lookups;
  for (unsigned s = 0; s < m_nshifts; ++s) {
    const unsigned shift = m_shifts[s];
    if (!(m_present & size_bit(shift))) continue;  // no entry of this size: nothing to probe
    const std::uint64_t vpn = va >> shift;
    const std::size_t base = set_base(vpn);
    const std::size_t w = find_way(base, key_of(vpn, shift), tag);
    if (w != m_params.ways) {
      ++m_stats.hits;
      m_stamp[base + w] = ++m_clock;
      return &m_entries[base + w];
    }
  }
  ++m_stats.misses;
  return nullptr;
}

void Tlb::insert(std::uint64_t va, std::uint64_t pa, std::uint8_t perms, bool global, const TlbTag& tag,
                 unsigned page_shift, std::uint8_t pkey) {
  const unsigned shift = page_shift ? page_shift : m_shifts[0];
  if (!holds(shift))
    throw std::invalid_argument("TLB insert: page size 2^" + std::to_string(shift) + " is not held by this TLB");
  const std::uint64_t vpn = va >> shift;
  const std::uint64_t key = key_of(vpn, shift);
  const std::size_t base = set_base(vpn);
  ++m_stats.insertions;
  ++m_epoch;
  // A translation that would hit is replaced in place (no duplicates);
  // else the first invalid way; else the least recently used. Invalid ways
  // have stamp 0 and valid ones unique stamps above 0 (m_stamp), so either
  // is the first way of least stamp.
  const std::size_t ways = m_params.ways;
  std::size_t way = base + find_way(base, key, tag);
  if (way == base + ways) {
    const std::uint64_t* stamps = m_stamp.data() + base;
    std::size_t lru = 0;
    std::uint64_t least = stamps[0];
    for (std::size_t i = 1; i < ways; ++i) {
      if (stamps[i] < least) {
        least = stamps[i];
        lru = i;
      }
    }
    way = base + lru;
    if (least != 0) ++m_stats.evictions;
  }
  TlbEntry& e = m_entries[way];
  e.vpn = vpn;
  e.pfn = pa >> shift;
  e.shift = static_cast<std::uint8_t>(shift);
  e.tag = tag;
  e.perms = perms;
  e.pkey = pkey;
  e.global = global;
  e.valid = true;
  m_keys[way] = key;
  m_present = static_cast<std::uint8_t>(m_present | size_bit(shift));
  m_stamp[way] = ++m_clock;
}

template <class Pred>
void Tlb::flush_if(Pred pred) {
  ++m_stats.flushes;
  ++m_epoch;
  for (std::size_t i = 0; i < m_entries.size(); ++i) {
    TlbEntry& e = m_entries[i];
    if (e.valid && pred(e)) {
      e.valid = false;
      m_keys[i] = kNoKey;
      m_stamp[i] = 0;  // invalid: stamp 0 (m_stamp)
      ++m_stats.flushed_entries;
    }
  }
}

template <class Pred>
void Tlb::flush_page_if(std::uint64_t va, Pred pred) {
  ++m_stats.flushes;
  ++m_epoch;
  for (unsigned s = 0; s < m_nshifts; ++s) {
    const unsigned shift = m_shifts[s];
    const std::uint64_t vpn = va >> shift;
    const std::size_t base = set_base(vpn);
    for (std::size_t i = base; i < base + m_params.ways; ++i) {
      TlbEntry& e = m_entries[i];
      if (e.valid && e.shift == shift && e.vpn == vpn && pred(e)) {
        e.valid = false;
        m_keys[i] = kNoKey;
        m_stamp[i] = 0;  // invalid: stamp 0 (m_stamp)
        ++m_stats.flushed_entries;
      }
    }
  }
}

void Tlb::flush_all() {
  flush_if([](const TlbEntry&) { return true; });
  m_present = 0;
}

void Tlb::flush_nonzero_vpids() {
  flush_if([](const TlbEntry& e) { return e.tag.vpid != 0; });
}

void Tlb::flush_all_ep4ta() {
  flush_if([](const TlbEntry& e) { return e.tag.ep4ta != 0; });
}

void Tlb::flush_vpid(std::uint16_t vpid) {
  flush_if([vpid](const TlbEntry& e) { return e.tag.vpid == vpid; });
}

void Tlb::flush_address(std::uint64_t va, std::uint16_t vpid) {
  flush_page_if(va, [vpid](const TlbEntry& e) { return e.tag.vpid == vpid; });
}

void Tlb::flush_invlpg(std::uint64_t va, std::uint16_t vpid, std::uint16_t pcid) {
  flush_page_if(va, [vpid, pcid](const TlbEntry& e) {
    return e.tag.vpid == vpid && (e.global || e.tag.pcid == pcid);
  });
}

void Tlb::flush_address_pcid(std::uint64_t va, std::uint16_t vpid, std::uint16_t pcid) {
  flush_page_if(va, [vpid, pcid](const TlbEntry& e) {
    return e.tag.vpid == vpid && !e.global && e.tag.pcid == pcid;
  });
}

void Tlb::flush_pcid(std::uint16_t vpid, std::uint16_t pcid) {
  flush_if([vpid, pcid](const TlbEntry& e) { return e.tag.vpid == vpid && !e.global && e.tag.pcid == pcid; });
}

void Tlb::flush_non_global(std::uint16_t vpid) {
  flush_if([vpid](const TlbEntry& e) { return e.tag.vpid == vpid && !e.global; });
}

void Tlb::flush_ep4ta(std::uint64_t ep4ta) {
  flush_if([ep4ta](const TlbEntry& e) { return e.tag.ep4ta == ep4ta; });
}

std::uint32_t Tlb::occupancy() const {
  std::uint32_t n = 0;
  for (const TlbEntry& e : m_entries) n += e.valid ? 1 : 0;
  return n;
}

}  // namespace vmx::mmu
