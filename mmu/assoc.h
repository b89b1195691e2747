// Storage shared by the walk caches (mmu/psc, mmu/nested_tlb): a
// set-associative array of entries with true LRU replacement. The owner
// decides what an entry holds, how it is indexed and what matches; this only
// keeps the ways, the recency stamps and the victim choice. No allocation
// after construction.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "sim/params.h"

namespace vmx::mmu {

/// Throws std::invalid_argument naming the component and the parameter unless
/// entries is a non-zero multiple of ways giving a power-of-two set count.
inline void check_geometry(const std::string& what, std::uint32_t entries, std::uint32_t ways) {
  if (cfg::Problem p = cfg::geometry_problem(entries, ways))
    throw std::invalid_argument(what + ": parameter '" + p.key + "' must be " + p.expected + " (got " + p.found + ")");
}

/// Entry needs a `bool valid` member. Each way also has a 64-bit key (the
/// owner's tag bits, never ~0) kept in an array of its own, so a lookup
/// compares one contiguous run of keys before it reads any entry: a host-speed
/// layout only, with no effect on what hits.
template <class Entry>
class SetAssoc {
 public:
  /// Geometry is checked by the owner (check_geometry) before this.
  void init(std::uint32_t entries, std::uint32_t ways) {
    m_ways = ways;
    m_set_mask = entries / ways - 1;
    m_entries.assign(entries, Entry{});
    m_keys.assign(entries, kNoKey);
    m_stamp.assign(entries, 0);
  }

  /// The valid entry of index's set with this key that `match` accepts,
  /// made most recently used; nullptr if none.
  template <class Match>
  Entry* find(std::uint64_t index, std::uint64_t key, Match match) {
    const std::size_t base = set_base(index);
    for (std::size_t i = base; i < base + m_ways; ++i) {
      if (m_keys[i] == key && match(m_entries[i])) {
        m_stamp[i] = ++m_clock;
        return &m_entries[i];
      }
    }
    return nullptr;
  }

  /// The way a new entry for index and key goes to, made most recently used
  /// and given the key: a valid entry with the key that `match` accepts (it
  /// is overwritten), else an invalid way, else the least recently used way
  /// (`evicted` is then set). The caller fills the entry and sets valid.
  template <class Match>
  Entry& place(std::uint64_t index, std::uint64_t key, Match match, bool& evicted) {
    // One pass: the matching entry; else the first invalid way; else the
    // least recently used (the first of equal stamps).
    const std::size_t base = set_base(index), end = base + m_ways;
    const std::uint64_t* keys = m_keys.data();
    const std::uint64_t* stamps = m_stamp.data();
    std::size_t invalid = end, lru = base;
    for (std::size_t i = base; i < end; ++i) {
      const std::uint64_t k = keys[i];
      if (k == key && match(m_entries[i])) {
        evicted = false;
        m_stamp[i] = ++m_clock;
        return m_entries[i];
      }
      if (k == kNoKey) {
        if (invalid == end) invalid = i;
      } else if (stamps[i] < stamps[lru]) {
        lru = i;
      }
    }
    evicted = invalid == end;
    const std::size_t way = evicted ? lru : invalid;
    m_stamp[way] = ++m_clock;
    m_keys[way] = key;
    return m_entries[way];
  }

  /// Invalidates every valid entry `pred` accepts; returns how many.
  template <class Pred>
  std::uint32_t invalidate_if(Pred pred) {
    std::uint32_t n = 0;
    for (std::size_t i = 0; i < m_entries.size(); ++i) {
      Entry& e = m_entries[i];
      if (e.valid && pred(e)) {
        e.valid = false;
        m_keys[i] = kNoKey;
        ++n;
      }
    }
    return n;
  }

  std::uint32_t occupancy() const {
    std::uint32_t n = 0;
    for (const Entry& e : m_entries) n += e.valid ? 1 : 0;
    return n;
  }

 private:
  std::size_t set_base(std::uint64_t index) const { return static_cast<std::size_t>(index & m_set_mask) * m_ways; }

  std::uint32_t m_ways = 1;
  std::uint64_t m_set_mask = 0;
  std::uint64_t m_clock = 0;
  static constexpr std::uint64_t kNoKey = ~0ull;  // the key of an invalid way
  std::vector<Entry> m_entries;        // sets x ways
  std::vector<std::uint64_t> m_keys;   // per way: its entry's key, kNoKey when invalid
  std::vector<std::uint64_t> m_stamp;  // last use per entry: true LRU
};

}  // namespace vmx::mmu
