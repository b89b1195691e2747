#include "models/coherence.h"

#include "models/cache.h"
#include "models/mem_hierarchy.h"

namespace vmx::models {

CoherenceStats::CoherenceStats(stats::Group* parent)
    : stats::Group(parent, "coherence", "MESI coherence with the other cores (directory at the LLC)") {}

DirectoryStats::DirectoryStats(stats::Group* parent)
    : stats::Group(parent, "coherence", "directory of the cores' private caches: device-side coherence") {}

Coherence::Coherence(const CoherenceParams& params, stats::Group* parent) : m_params(params), m_stats(parent) {}

void Coherence::join(MemHierarchy& h) {
  h.attach_coherence(this);
  m_members.push_back(&h);
  if (m_members.size() > 1)
    for (MemHierarchy* m : m_members) m->set_has_peers();
}

bool Coherence::held_elsewhere(const MemHierarchy& requester, std::uint64_t pa) const {
  for (const MemHierarchy* h : m_members)
    if (h != &requester && h->line_state(pa)) return true;
  return false;
}

PeerState Coherence::snoop(MemHierarchy& requester, std::uint64_t pa, bool write) {
  PeerState most = PeerState::None;
  for (MemHierarchy* h : m_members) {
    if (h == &requester) continue;
    const std::uint64_t s = write ? h->snoop_invalidate(pa) : h->snoop_downgrade(pa);
    if (!s) continue;
    const PeerState p = (s & Cache::kDirty)   ? PeerState::Modified
                        : (s & Cache::kOwned) ? PeerState::Exclusive
                                              : PeerState::Shared;
    if (p > most) most = p;
    if (write) requester.count_invalidation_sent();
  }
  return most;
}

void Coherence::dma_write(std::uint64_t pa) {
  for (MemHierarchy* h : m_members)
    if (h->snoop_invalidate(pa)) ++m_stats.dma_invalidations;
}

void Coherence::dma_read(std::uint64_t pa) {
  for (MemHierarchy* h : m_members)
    if (h->line_state(pa) & Cache::kDirty) {
      ++m_stats.dma_modified_reads;
      return;
    }
}

}  // namespace vmx::models
