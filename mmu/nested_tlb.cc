#include "mmu/nested_tlb.h"

namespace vmx::mmu {

NestedTlbStats::NestedTlbStats(stats::Group* parent, const std::string& name)
    : stats::Group(parent, name, "nested TLB: guest-physical to host-physical, EP4TA-tagged, true LRU") {}

NestedTlb::NestedTlb(const NestedTlbParams& params, stats::Group* parent, const std::string& name)
    : m_params(params), m_stats(parent, name) {
  check_geometry("nested TLB '" + name + "'", params.entries, params.ways);
  m_array.init(params.entries, params.ways);
}

const NestedTlbEntry* NestedTlb::lookup(std::uint64_t gpa, std::uint64_t ep4ta) {
  ++m_stats.lookups;
  for (unsigned size = 0; size < 3; ++size) {
    if (!(m_sizes & (1u << size))) continue;
    const unsigned shift = 12 + 9 * size;
    const std::uint64_t gfn = gpa >> shift;
    if (const NestedTlbEntry* e =
            m_array.find(gfn, (gfn << 2) | size, [&](const NestedTlbEntry& x) { return x.ep4ta == ep4ta; })) {
      ++m_stats.hits;
      return e;
    }
  }
  ++m_stats.misses;
  return nullptr;
}

void NestedTlb::insert(std::uint64_t gpa, std::uint64_t hpa, std::uint8_t perms, unsigned shift,
                       std::uint64_t ep4ta) {
  const std::uint64_t gfn = gpa >> shift;
  bool evicted = false;
  NestedTlbEntry& e = m_array.place(
      gfn, (gfn << 2) | ((shift - 12) / 9), [&](const NestedTlbEntry& x) { return x.ep4ta == ep4ta; }, evicted);
  ++m_stats.insertions;
  if (evicted) ++m_stats.evictions;
  e.gfn = gfn;
  e.hfn = hpa >> shift;
  e.ep4ta = ep4ta;
  e.perms = perms;
  e.shift = static_cast<std::uint8_t>(shift);
  e.valid = true;
  m_sizes = static_cast<std::uint8_t>(m_sizes | (1u << ((shift - 12) / 9)));
}

void NestedTlb::flush_ep4ta(std::uint64_t ep4ta) {
  ++m_stats.flushes;
  m_stats.flushed_entries += m_array.invalidate_if([ep4ta](const NestedTlbEntry& e) { return e.ep4ta == ep4ta; });
}

void NestedTlb::flush_gpa(std::uint64_t gpa, std::uint64_t ep4ta) {
  ++m_stats.flushes;
  m_stats.flushed_entries += m_array.invalidate_if(
      [gpa, ep4ta](const NestedTlbEntry& e) { return e.ep4ta == ep4ta && e.gfn == gpa >> e.shift; });
}

void NestedTlb::flush_all() {
  ++m_stats.flushes;
  m_stats.flushed_entries += m_array.invalidate_if([](const NestedTlbEntry&) { return true; });
  m_sizes = 0;
}

}  // namespace vmx::mmu
