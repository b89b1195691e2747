#include "mmu/tlb.h"

#include <stdexcept>

namespace vmx::mmu {

TlbStats::TlbStats(stats::Group* parent, const std::string& name)
    : stats::Group(parent, name, "set-associative TLB (VPID/PCID/EP4TA-tagged, true LRU)") {}

Tlb::Tlb(const TlbParams& params, unsigned page_shift, stats::Group* parent, const std::string& name)
    : m_params(params), m_stats(parent, name), m_page_shift(page_shift),
      m_offset_mask((1ull << page_shift) - 1) {
  auto bad = [&](const char* param, const std::string& what) {
    return std::invalid_argument("TLB '" + name + "': parameter '" + param + "' " + what);
  };
  if (page_shift != 12 && page_shift != 21 && page_shift != 30)
    throw bad("page_shift", "must be 12, 21 or 30 (got " + std::to_string(page_shift) + ")");
  if (params.ways == 0) throw bad("ways", "must be at least 1 (got 0)");
  if (params.entries == 0 || params.entries % params.ways != 0)
    throw bad("entries", "must be a non-zero multiple of ways = " + std::to_string(params.ways) + " (got " +
                             std::to_string(params.entries) + ")");
  const std::uint32_t sets = params.entries / params.ways;
  if ((sets & (sets - 1)) != 0)
    throw bad("entries", "must give a power-of-two number of sets, entries / ways (got " +
                             std::to_string(sets) + " sets)");
  m_sets = sets;
  m_set_mask = sets - 1;
  m_entries.assign(params.entries, TlbEntry{});
  m_stamp.assign(params.entries, 0);
}

const TlbEntry* Tlb::lookup(std::uint64_t va, const TlbTag& tag) {
  const std::uint64_t vpn = va >> m_page_shift;
  const std::size_t base = set_base(vpn);
  const std::size_t end = base + m_params.ways;
  ++m_stats.lookups;
  for (std::size_t i = base; i < end; ++i) {
    if (matches(m_entries[i], vpn, tag)) {
      ++m_stats.hits;
      m_stamp[i] = ++m_clock;
      return &m_entries[i];
    }
  }
  ++m_stats.misses;
  return nullptr;
}

void Tlb::insert(std::uint64_t va, std::uint64_t pa, std::uint8_t perms, bool global, const TlbTag& tag) {
  const std::uint64_t vpn = va >> m_page_shift;
  const std::size_t base = set_base(vpn);
  ++m_stats.insertions;
  std::size_t way = base;
  bool found = false;
  // A translation that would hit is replaced in place: no duplicates.
  for (std::size_t i = base; i < base + m_params.ways && !found; ++i)
    if (matches(m_entries[i], vpn, tag)) way = i, found = true;
  if (!found) {
    for (std::size_t i = base; i < base + m_params.ways; ++i) {
      if (!m_entries[i].valid) {
        way = i;
        found = true;
        break;
      }
      if (m_stamp[i] < m_stamp[way]) way = i;
    }
    if (!found) ++m_stats.evictions;
  }
  TlbEntry& e = m_entries[way];
  e.vpn = vpn;
  e.pfn = pa >> m_page_shift;
  e.tag = tag;
  e.perms = perms;
  e.global = global;
  e.valid = true;
  m_stamp[way] = ++m_clock;
}

template <class Pred>
void Tlb::flush_if(Pred pred) {
  ++m_stats.flushes;
  for (TlbEntry& e : m_entries) {
    if (e.valid && pred(e)) {
      e.valid = false;
      ++m_stats.flushed_entries;
    }
  }
}

template <class Pred>
void Tlb::flush_page_if(std::uint64_t va, Pred pred) {
  ++m_stats.flushes;
  const std::uint64_t vpn = va >> m_page_shift;
  const std::size_t base = set_base(vpn);
  for (std::size_t i = base; i < base + m_params.ways; ++i) {
    TlbEntry& e = m_entries[i];
    if (e.valid && e.vpn == vpn && pred(e)) {
      e.valid = false;
      ++m_stats.flushed_entries;
    }
  }
}

void Tlb::flush_all() {
  flush_if([](const TlbEntry&) { return true; });
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
