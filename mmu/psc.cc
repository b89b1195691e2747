#include "mmu/psc.h"

#include <stdexcept>

#include "mmu/paging.h"

namespace vmx::mmu {

PscStats::PscStats(stats::Group* parent, const std::string& name)
    : stats::Group(parent, name, "paging-structure cache (set-associative, true LRU)") {}

Psc::Psc(const PscParams& params, unsigned level, stats::Group* parent, const std::string& name)
    : m_params(params), m_level(level), m_shift(level_shift(level)), m_stats(parent, name) {
  if (level < 2 || level > 5)
    throw std::invalid_argument("paging-structure cache '" + name + "': level must be 2 to 5 (got " +
                                std::to_string(level) + ")");
  check_geometry("paging-structure cache '" + name + "'", params.entries, params.ways);
  m_array.init(params.entries, params.ways);
}

const PscEntry* Psc::lookup(std::uint64_t addr, const TlbTag& tag) {
  const std::uint64_t key = addr >> m_shift;
  ++m_stats.lookups;
  const PscEntry* e = m_array.find(key, key, [&](const PscEntry& x) {
    return x.tag.vpid == tag.vpid && x.tag.pcid == tag.pcid && x.tag.ep4ta == tag.ep4ta;
  });
  if (e) ++m_stats.hits; else ++m_stats.misses;
  return e;
}

void Psc::insert(std::uint64_t addr, const TlbTag& tag, std::uint64_t next_hpa, std::uint64_t next_gpa,
                 std::uint8_t perms, std::uint8_t table_ept_perms) {
  const std::uint64_t key = addr >> m_shift;
  bool evicted = false;
  PscEntry& e = m_array.place(
      key, key,
      [&](const PscEntry& x) {
        return x.tag.vpid == tag.vpid && x.tag.pcid == tag.pcid && x.tag.ep4ta == tag.ep4ta;
      },
      evicted);
  ++m_stats.insertions;
  if (evicted) ++m_stats.evictions;
  e.key = key;
  e.next_hpa = next_hpa;
  e.next_gpa = next_gpa;
  e.tag = tag;
  e.perms = perms;
  e.table_ept_perms = table_ept_perms;
  e.valid = true;
}

template <class Pred>
void Psc::flush_if(Pred pred) {
  ++m_stats.flushes;
  m_stats.flushed_entries += m_array.invalidate_if(pred);
}

void Psc::flush_all() {
  flush_if([](const PscEntry&) { return true; });
}
void Psc::flush_vpid(std::uint16_t vpid) {
  flush_if([vpid](const PscEntry& e) { return e.tag.vpid == vpid; });
}
void Psc::flush_pcid(std::uint16_t vpid, std::uint16_t pcid) {
  flush_if([vpid, pcid](const PscEntry& e) { return e.tag.vpid == vpid && e.tag.pcid == pcid; });
}
void Psc::flush_nonzero_vpids() {
  flush_if([](const PscEntry& e) { return e.tag.vpid != 0; });
}
void Psc::flush_ep4ta(std::uint64_t ep4ta) {
  flush_if([ep4ta](const PscEntry& e) { return e.tag.ep4ta == ep4ta; });
}
void Psc::flush_all_ep4ta() {
  flush_if([](const PscEntry& e) { return e.tag.ep4ta != 0; });
}

}  // namespace vmx::mmu
