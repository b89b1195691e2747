#include "models/mem_hierarchy.h"

#include <stdexcept>

namespace vmx::models {

MemHierarchyStats::MemHierarchyStats(stats::Group* parent, const std::string& name)
    : stats::Group(parent, name, "one core's cache hierarchy") {}

namespace {
Cache* require_llc(Cache* llc, const std::string& name) {
  if (!llc) throw std::invalid_argument("memory hierarchy '" + name + "': no last-level cache given");
  return llc;
}
}  // namespace

MemHierarchy::MemHierarchy(const MemHierarchyParams& params, Cache* llc, stats::Group* parent,
                           const std::string& name)
    : m_stats(parent, name),
      m_l1i(params.l1i, &m_stats, "l1i"),
      m_l1d(params.l1d, &m_stats, "l1d"),
      m_l2(params.l2, &m_stats, "l2"),
      m_llc(require_llc(llc, name)),
      m_dram_latency(params.dram_latency) {}

std::uint32_t MemHierarchy::access(std::uint64_t pa, AccessKind kind) {
  Cache* l1 = &m_l1d;
  switch (kind) {
    case AccessKind::Fetch: ++m_stats.fetches; l1 = &m_l1i; break;
    case AccessKind::Read: ++m_stats.reads; break;
    case AccessKind::Write: ++m_stats.writes; break;
    case AccessKind::Walk: ++m_stats.walks; break;
  }
  std::uint64_t wb1 = Cache::kNoWriteback, wb2 = Cache::kNoWriteback, wb3 = Cache::kNoWriteback;
  std::uint32_t cycles;
  // Lower levels see a read for ownership; only the L1 line becomes dirty.
  if (l1->access(pa, kind == AccessKind::Write, &wb1)) {
    // A hit evicts nothing, so there is no writeback to pass down.
    cycles = l1->latency();
    m_stats.cycles += cycles;
    if (m_events->wants(events::kCacheAccess)) [[unlikely]] report(pa, kind, 1);
    return cycles;
  }
  // Host speed only: start fetching the LLC's tags for pa while the L2 looks.
  m_llc->host_prefetch(pa);
  unsigned hit_level;
  if (m_l2.access(pa, false, &wb2)) {
    cycles = m_l2.latency();
    hit_level = 2;
  } else if (m_llc->access(pa, false, &wb3)) {
    cycles = m_llc->latency();
    hit_level = 3;
  } else {
    ++m_stats.dram_accesses;
    cycles = m_llc->latency() + m_dram_latency;
    hit_level = 4;
  }
  if (m_events->wants_any(events::bit(events::kCacheAccess) | events::bit(events::kCacheMiss))) [[unlikely]]
    report(pa, kind, hit_level);
  if (wb1 != Cache::kNoWriteback) writeback_to_l2(wb1);
  if (wb2 != Cache::kNoWriteback) writeback_to_llc(wb2);
  if (wb3 != Cache::kNoWriteback) ++m_stats.dram_writebacks;
  m_stats.cycles += cycles;
  return cycles;
}

void MemHierarchy::writeback_to_l2(std::uint64_t line_pa) {
  std::uint64_t victim;
  m_l2.receive_writeback(line_pa, &victim);
  if (victim != Cache::kNoWriteback) writeback_to_llc(victim);
}

void MemHierarchy::writeback_to_llc(std::uint64_t line_pa) {
  std::uint64_t victim;
  m_llc->receive_writeback(line_pa, &victim);
  if (victim != Cache::kNoWriteback) ++m_stats.dram_writebacks;
}

void MemHierarchy::report(std::uint64_t pa, AccessKind kind, unsigned hit_level) const {
  events::CacheAccess e{pa, 0, kind == AccessKind::Fetch, kind == AccessKind::Write, kind == AccessKind::Walk, false};
  for (unsigned level = 1; level <= hit_level && level <= 3; ++level) {
    e.level = static_cast<std::uint8_t>(level);
    e.hit = level == hit_level;
    m_events->cache_access(e);
  }
}

void MemHierarchy::invalidate_private() {
  m_l1i.invalidate_all();
  m_l1d.invalidate_all();
  m_l2.invalidate_all();
}

}  // namespace vmx::models
