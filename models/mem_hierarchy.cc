#include "models/mem_hierarchy.h"

#include <algorithm>
#include <numeric>
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
      m_dram_latency(params.dram_latency) {
  if (params.l2_prefetch.enabled()) {
    m_prefetch = std::make_unique<L2Prefetcher>(params.l2_prefetch, &m_stats);
    m_prefetch_lines.reserve(2 * params.l2_prefetch.degree);
    // Host speed: the proposals' state queries of the L2 and the LLC are
    // mostly for absent lines (Cache::keep_presence_filter).
    m_l2.keep_presence_filter();
    m_llc->keep_presence_filter();
  }
}

// The L1 missed: the L2, then the LLC, the other cores (when coherent) and
// DRAM. The L1 and L2 lines are filled once the line's state is known.
std::uint32_t MemHierarchy::miss(std::uint64_t pa, AccessKind kind, Cache& l1) {
  const bool write = kind == AccessKind::Write;
  // Host speed only: start fetching the LLC's tags for pa while the L2 looks.
  m_llc->host_prefetch(pa);
  std::uint64_t wb1 = Cache::kNoWriteback, wb2 = Cache::kNoWriteback, wb3 = Cache::kNoWriteback;
  std::uint32_t cycles;
  std::uint64_t state = Cache::kOwned;  // this core's state of the line afterwards
  unsigned hit_level = 2;               // the level that had the line (4: none, DRAM or a peer served it)
  // Lower levels see a read for ownership; only the L1 line becomes dirty.
  const Cache::Lookup r2 = m_l2.lookup(pa, write ? Cache::kOwned : 0);
  if (r2 != Cache::kMiss) {
    cycles = m_l2.latency();
    if (r2 == Cache::kHitShared) {
      if (write)
        cycles = gain_ownership(pa);
      else
        state = 0;
    }
  } else {
    // The L2 miss leaves the core: MBA's rate controller may hold it back.
    const std::uint32_t mba = m_rdt ? mba_delay() : 0;
    const bool llc_hit = m_rdt ? m_llc->access_masked(pa, false, &wb3, llc_mask()) : m_llc->access(pa, false, &wb3);
    hit_level = llc_hit ? 3 : 4;
    bool dram = !llc_hit;
    cycles = m_llc->latency();  // DRAM's part is added below once no peer supplies the line
    const PeerState peers = m_has_peers ? m_coherence->snoop(*this, pa, write) : PeerState::None;
    if (peers != PeerState::None) {
      // Another core holds the line: it, not DRAM, supplies what the LLC
      // lacks. A load leaves both cores Shared.
      const CoherenceParams& cp = m_coherence->params();
      dram = false;
      if (!write) state = 0;
      bool waited = true;
      if (peers == PeerState::Modified) {
        cycles = cp.transfer_latency;
        ++m_coh_stats->transfers;
        if (!write) writeback_to_llc(pa);  // the former owner's data; clean in both cores now
      } else if (write) {
        cycles = cp.invalidate_latency;
      } else if (peers == PeerState::Exclusive || !llc_hit) {
        cycles = cp.snoop_latency;
        ++m_coh_stats->snoop_hits;
      } else {
        waited = false;  // Shared with others and in the LLC: a plain LLC hit
      }
      if (waited) m_coh_stats->cycles += cycles;
    }
    if (dram) {
      ++m_stats.dram_accesses;
      cycles += dram_read(pa, mba);
      if (pa & kKeyIdMask) [[unlikely]]
        cycles += decrypt_fill();
    }
    cycles += mba;
    m_l2.fill(pa, state, &wb2);
  }
  if (m_prefetch) [[unlikely]]
    prefetch_after(pa, hit_level == 2, cycles);
  l1.fill(pa, write ? state | Cache::kDirty : state, &wb1);
  if (m_events->wants_any(events::bit(events::kCacheAccess) | events::bit(events::kCacheMiss))) [[unlikely]]
    report(pa, kind, hit_level);
  if (wb1 != Cache::kNoWriteback) writeback_to_l2(wb1);
  if (wb2 != Cache::kNoWriteback) writeback_to_llc(wb2);
  if (wb3 != Cache::kNoWriteback) dram_write(wb3);
  return cycles;
}

// A store to a line this core holds Shared: a read for ownership to the LLC,
// which invalidates the other cores' copies first if there are any.
std::uint32_t MemHierarchy::gain_ownership(std::uint64_t pa) {
  const PeerState peers = m_coherence->snoop(*this, pa, true);
  const std::uint32_t cycles =
      peers == PeerState::None ? m_llc->latency() : m_coherence->params().invalidate_latency;
  ++m_coh_stats->upgrades;
  m_coh_stats->cycles += cycles;
  return cycles;
}

// The L2 prefetcher (models/prefetcher.h). A demand access that found a
// prefetched line uses it (late if the line is still on its way: the access
// waits for it); a miss, or the first use of a prefetched line, trains the
// prefetcher, and each line it proposes that the L2 lacks and no other core
// holds is requested like an L2 miss: it leaves the core through the MBA
// rate controller (MBA paces everything the L2 sends on, Intel RDT), is
// fetched from the LLC or DRAM (a DRAM read at that time, taking its share
// of the bandwidth; an encrypted line also through the memory-encryption
// engine) and is filled into the L2 and, within the class's CAT ways, the
// LLC. A prefetch is not a demand access: the caches' and DRAM's demand
// counters do not count it; the PMU's L2_RQSTS events do (kCacheMiss with
// `prefetch`), as Skylake's L2_RQSTS.MISS counts the L2 prefetcher's misses.
void MemHierarchy::prefetch_after(std::uint64_t pa, bool l2_hit, std::uint32_t& cycles) {
  L2Prefetcher& pf = *m_prefetch;
  L2PrefetchStats& st = pf.stats();
  const unsigned shift = 6;  // 64-byte lines (every level's default; prefetches address lines)
  const std::uint64_t line = pa >> shift;
  const std::uint64_t now = (m_clock ? *m_clock : 0) + m_time_bias;
  if (l2_hit) {
    const L2Prefetcher::Record* r = pf.claim(line);
    if (!r) return;  // an ordinary L2 hit: no training
    ++st.useful;
    if (r->ready > now + cycles) {
      ++st.late;
      cycles = static_cast<std::uint32_t>(r->ready - now);
    }
  }
  pf.train(line, m_prefetch_lines);
  for (std::uint64_t l : m_prefetch_lines) {
    const std::uint64_t lpa = l << shift;
    if (m_l2.state(lpa) || (m_has_peers && m_coherence->held_elsewhere(*this, lpa))) {
      ++st.dropped;
      continue;
    }
    const std::uint32_t mba = m_rdt ? mba_delay() : 0;
    std::uint32_t latency = mba + m_llc->latency();
    std::uint64_t wb = Cache::kNoWriteback;
    if (!m_llc->state(lpa)) {
      if (m_rdt) m_llc->fill_masked(lpa, Cache::kOwned, &wb, llc_mask());
      else m_llc->fill(lpa, Cache::kOwned, &wb);
      if (wb != Cache::kNoWriteback) dram_write(wb);
      latency += dram_read(lpa, mba);
      if (lpa & kKeyIdMask) [[unlikely]]
        latency += decrypt_fill();  // prefetched or not, ready only after the engine
    }
    std::uint64_t wb2 = Cache::kNoWriteback;
    m_l2.fill(lpa, Cache::kOwned, &wb2);
    if (wb2 != Cache::kNoWriteback) writeback_to_llc(wb2);
    ++st.issued;
    if (!pf.remember(l, now + latency).used) ++st.useless;
    if (m_events->wants_any(events::bit(events::kCacheAccess) | events::bit(events::kCacheMiss))) [[unlikely]] {
      const events::CacheAccess e{lpa, 2, false, false, false, false, true};
      m_events->cache_access(e);
    }
  }
}

void MemHierarchy::attach_coherence(Coherence* c) {
  m_coherence = c;
  if (!m_coh_stats) m_coh_stats = std::make_unique<CoherenceStats>(&m_stats);
}

std::uint64_t MemHierarchy::snoop_invalidate(std::uint64_t pa) {
  const std::uint64_t s = m_l1d.invalidate(pa) | m_l1i.invalidate(pa) | m_l2.invalidate(pa);
  if (s && m_coh_stats) ++m_coh_stats->invalidations_received;
  return s;
}

std::uint64_t MemHierarchy::snoop_downgrade(std::uint64_t pa) {
  constexpr std::uint64_t kBits = Cache::kOwned | Cache::kDirty;
  const std::uint64_t s = m_l1d.downgrade(pa, kBits) | m_l1i.downgrade(pa, kBits) | m_l2.downgrade(pa, kBits);
  if ((s & Cache::kOwned) && m_coh_stats) ++m_coh_stats->downgrades_received;
  return s;
}

std::uint64_t MemHierarchy::line_state(std::uint64_t pa) const {
  return m_l1d.state(pa) | m_l1i.state(pa) | m_l2.state(pa);
}

void MemHierarchy::writeback_to_l2(std::uint64_t line_pa) {
  std::uint64_t victim;
  m_l2.receive_writeback(line_pa, &victim);
  if (victim != Cache::kNoWriteback) writeback_to_llc(victim);
}

void MemHierarchy::writeback_to_llc(std::uint64_t line_pa) {
  std::uint64_t victim;
  if (m_rdt) m_llc->receive_writeback_masked(line_pa, &victim, llc_mask());
  else m_llc->receive_writeback(line_pa, &victim);
  if (victim != Cache::kNoWriteback) dram_write(victim);
}

// ---- DRAM (models/dram.h); kept apart from the miss path above ----------

void MemHierarchy::attach_dram(Dram* dram, unsigned requester, std::uint64_t core_hz) {
  m_dram = dram;
  m_dram_requester = requester;
  set_core_hz(core_hz);
}

void MemHierarchy::set_core_hz(std::uint64_t core_hz) {
  constexpr std::uint64_t kPsPerSecond = 1'000'000'000'000ull;
  m_core_hz = core_hz;
  const std::uint64_t g = std::gcd(kPsPerSecond, core_hz);
  m_ps_num = kPsPerSecond / g;
  m_ps_den = core_hz / g;
  // Sums of (ps x den) and (num - 1) must fit too.
  m_ps_fit = UINT64_MAX / m_ps_num;
  m_cyc_fit = (UINT64_MAX - m_ps_num) / m_ps_den;
}

std::uint64_t MemHierarchy::dram_time_ps(std::uint32_t extra_cycles) const {
  const std::uint64_t cycles = (m_clock ? *m_clock : 0) + m_time_bias + extra_cycles;
  return ps_of_cycles(cycles);
}

std::uint32_t MemHierarchy::dram_read(std::uint64_t pa, std::uint32_t delay) {
  if (!m_dram) return m_dram_latency;
  // The request reaches the controller after the LLC lookup missed (and
  // after any MBA pacing before it).
  const std::uint64_t ps =
      m_dram->access(strip_key(pa), false, m_dram_requester, dram_time_ps(m_llc->latency() + delay));
  return static_cast<std::uint32_t>(cycles_of_ps_ceil(ps));
}

void MemHierarchy::dram_write(std::uint64_t line_pa) {
  ++m_stats.dram_writebacks;
  std::uint32_t engine = 0;
  if (line_pa & kKeyIdMask) [[unlikely]] {
    ++m_crypt_stats->writebacks;
    engine = m_crypt_cycles;  // encrypted before it leaves for DRAM
  }
  if (m_dram) m_dram->access(strip_key(line_pa), true, m_dram_requester, dram_time_ps(m_llc->latency() + engine));
}

void MemHierarchy::attach_crypt(std::uint32_t line_cycles) {
  m_crypt_cycles = line_cycles;
  if (!m_crypt_stats) m_crypt_stats = std::make_unique<CryptStats>(&m_stats);
}

// ---- Cache allocation and MBA (models/rdt.h) ------------------------------

MemQosStats::MemQosStats(stats::Group* parent)
    : stats::Group(parent, "qos", "cache allocation and memory-bandwidth allocation (models/rdt.h)") {}

void MemHierarchy::attach_rdt(const Rdt* rdt, std::uint64_t core_hz) {
  m_rdt = rdt;
  set_core_hz(core_hz);
  if (!m_qos_stats) m_qos_stats = std::make_unique<MemQosStats>(&m_stats);
}

// MBA (Intel RDT): a rate controller between the core's L2 and the
// interconnect delays the core's L2 miss requests. Modelled as pacing: with
// the class's delay value, consecutive requests leave at least
// Rdt::mba_gap_ps apart; a request that finds the controller busy waits.
std::uint32_t MemHierarchy::mba_delay() {
  const std::uint64_t gap = m_rdt->mba_gap_ps(m_clos);
  if (gap == 0) return 0;
  const std::uint64_t now = dram_time_ps(0);
  const std::uint64_t issue = std::max(now, m_mba_next_ps);
  m_mba_next_ps = issue + gap;
  if (issue == now) return 0;
  const auto cycles = static_cast<std::uint32_t>(cycles_of_ps_ceil(issue - now));
  ++m_qos_stats->mba_delayed;
  m_qos_stats->mba_cycles += cycles;
  return cycles;
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
