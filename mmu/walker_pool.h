// The core's page walkers (page-miss handlers) as a pool of concurrent
// walks (docs/model.md "Concurrent page walkers").
//
// A core has `walkers` page walkers. A walk occupies one from the time it
// starts until its last reference returns; a walk that finds them all busy
// waits for the first to free. Which accesses wait for a walk is the core's
// business (cpu/core.cc): an independent load's walk overlaps with the
// core's other work and with other walks, a dependent access waits for its
// own. With no walkers (0, the model before this pool) there is nothing to
// book: every walk is charged in line to the access that caused it.
//
// Plain C++, no SystemC: times are the core's cycles. Walks start in non-
// decreasing time order (the core's clock never goes back past a walk's
// start), which keeps the union of busy intervals (active_cycles) a
// running sum.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>

#include "sim/stats.h"

namespace vmx::mmu {

/// Largest number of page walkers a core may have.
inline constexpr unsigned kMaxPageWalkers = 8;

class WalkerPool {
 public:
  /// Statistics "page_walkers" under parent, registered only with walkers >
  /// 0 (so that configurations without the pool keep their statistics).
  struct Stats : stats::Group {
    using Group::Group;
    stats::Counter walks{this, "walks", "walks", "walks booked on a page walker"};
    stats::Counter concurrent{this, "concurrent_walks", "walks",
                              "walks that started while another walk of the core was in progress"};
    stats::Counter stall_cycles{this, "stall_cycles", "cycles",
                                "cycles walks waited for a free page walker (all were busy)"};
    stats::Counter active_cycles{this, "active_cycles", "cycles",
                                 "cycles in which at least one walk was in progress (Intel's "
                                 "DTLB_LOAD_MISSES.WALK_ACTIVE); the sum over walks is walker.cycles"};
  };

  WalkerPool(unsigned walkers, stats::Group* parent)
      : m_walkers(std::min(walkers, kMaxPageWalkers)) {
    if (m_walkers) m_stats = std::make_unique<Stats>(parent, "page_walkers", "concurrent page walkers of the core");
  }

  unsigned walkers() const { return m_walkers; }

  /// A walk wanted at `now`: books the walker that frees first and returns
  /// when the walk starts (now, or when that walker frees).
  std::uint64_t begin(std::uint64_t now) {
    unsigned w = 0;
    for (unsigned i = 1; i < m_walkers; ++i)
      if (m_free[i] < m_free[w]) w = i;
    m_current = w;
    const std::uint64_t start = std::max(now, m_free[w]);
    m_stats->stall_cycles += start - now;
    ++m_stats->walks;
    if (start < m_active_end) ++m_stats->concurrent;
    return start;
  }

  /// The walk begun last ends at `end`.
  void end(std::uint64_t start, std::uint64_t end) {
    m_free[m_current] = end;
    if (end > m_active_end) {
      m_stats->active_cycles += end - std::max(start, m_active_end);
      m_active_end = end;
    }
  }

 private:
  unsigned m_walkers;
  unsigned m_current = 0;
  std::array<std::uint64_t, kMaxPageWalkers> m_free{};  // when each walker is free
  std::uint64_t m_active_end = 0;                       // end of the latest walk
  std::unique_ptr<Stats> m_stats;
};

}  // namespace vmx::mmu
