#include "models/cache.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace vmx::models {

CacheStats::CacheStats(stats::Group* parent, const std::string& name)
    : stats::Group(parent, name, "set-associative cache (tags, true LRU, write-back write-allocate)") {}

namespace {
bool is_pow2(std::uint64_t v) { return v && (v & (v - 1)) == 0; }
}  // namespace

Cache::Cache(const CacheParams& params, stats::Group* parent, const std::string& name)
    : m_params(params), m_stats(parent, name) {
  auto bad = [&](const char* param, const std::string& what) {
    return std::invalid_argument("cache '" + name + "': parameter '" + param + "' " + what);
  };
  if (!is_pow2(params.line))
    throw bad("line", "must be a power of two (got " + std::to_string(params.line) + ")");
  if (cfg::Problem p = params.check()) throw bad(p.key, "must be " + p.expected + " (got " + p.found + ")");
  const std::uint64_t sets = params.size / (std::uint64_t(params.ways) * params.line);
  if (params.latency == 0) throw bad("latency", "must be at least 1 cycle (got 0)");
  m_line_shift = static_cast<unsigned>(__builtin_ctzll(params.line));
  m_sets = static_cast<std::uint32_t>(sets);
  m_set_bytes = params.ways * 8;
  m_set_mask = sets - 1;
  // Start the first set on a 64-byte host line so that a 16-way set spans
  // exactly two of them (the extra words are padding).
  m_store.assign(static_cast<std::size_t>(sets * params.ways) + 8, empty_word(0));
  const auto addr = reinterpret_cast<std::uintptr_t>(m_store.data());
  m_base = ((64 - addr % 64) % 64) / sizeof(std::uint64_t);
  m_set0 = m_store.data() + m_base;
  m_all_ways = params.ways >= 64 ? ~0ull : (1ull << params.ways) - 1;
  invalidate_all();
}

const std::uint64_t* Cache::find(std::uint64_t line_addr) const {
  const std::uint64_t* set = set_of(line_addr);
  const std::uint64_t key = (line_addr << 2) | kIgnoreBits;
  for (std::uint32_t w = 0; w < m_params.ways; ++w)
    if ((set[w] | kIgnoreBits) == key) return &set[w];
  return nullptr;
}

void Cache::evicted(std::uint64_t victim, std::uint64_t* writeback) {
  if (writeback) *writeback = kNoWriteback;
  if (victim < kValidLimit) {
    ++m_stats.evictions;
    if (victim & kDirty) {
      ++m_stats.writebacks;
      if (writeback) *writeback = ((victim & ~kWayBits) >> 2) << m_line_shift;
    }
  }
}

void Cache::insert_mru(std::uint64_t* set, std::uint64_t word, std::uint64_t* writeback) {
  const std::uint32_t ways = m_params.ways;
  const std::uint64_t victim = set[ways - 1];
  // Every way moves down one, the victim's word dropping off the end: one
  // overlapping copy, which the host does in a few vector moves.
  std::memmove(set + 1, set, (ways - 1) * sizeof *set);
  set[0] = word | (victim & kWayBits);  // the line takes over its victim's way
  present_replace(victim, word);
  evicted(victim, writeback);
}

// Cache allocation (SDM Vol. 3B, 19.19.4): a fill may only replace a way
// of the class's bitmask; lookups still hit in every way. The victim is the
// least recently used of those ways (an empty one first: empty ways are the
// least recent).
void Cache::insert_masked(std::uint64_t* set, std::uint64_t word, std::uint64_t* writeback,
                          std::uint64_t way_mask) {
  const std::uint32_t ways = m_params.ways;
  way_mask &= m_all_ways;
  if (way_mask == m_all_ways || way_mask == 0) return insert_mru(set, word, writeback);
  std::uint32_t v = ways - 1;
  while (v > 0 && !((way_mask >> way_bits(set[v])) & 1)) --v;
  const std::uint64_t victim = set[v];
  for (std::uint32_t w = v; w > 0; --w) set[w] = set[w - 1];
  set[0] = word | (victim & kWayBits);
  present_replace(victim, word);
  evicted(victim, writeback);
}

bool Cache::access_masked(std::uint64_t pa, bool write, std::uint64_t* writeback, std::uint64_t way_mask) {
  const std::uint64_t bits = write ? kDirty | kOwned : 0;
  if (lookup(pa, bits) != kMiss) {
    if (writeback) *writeback = kNoWriteback;
    return true;
  }
  const std::uint64_t line_addr = pa >> m_line_shift;
  insert_masked(set_of(line_addr), (line_addr << 2) | kOwned | bits, writeback, way_mask);
  return false;
}

void Cache::receive_writeback_masked(std::uint64_t pa, std::uint64_t* writeback, std::uint64_t way_mask) {
  const std::uint64_t line_addr = pa >> m_line_shift;
  ++m_stats.writebacks_received;
  if (std::uint64_t* word = find(line_addr)) {
    *word |= kDirty | kOwned;
    if (writeback) *writeback = kNoWriteback;
    return;
  }
  insert_masked(set_of(line_addr), (line_addr << 2) | kDirty | kOwned, writeback, way_mask);
}

int Cache::way_of(std::uint64_t pa) const {
  const std::uint64_t* word = find_filtered(pa >> m_line_shift);
  return word ? static_cast<int>(way_bits(*word)) : -1;
}

bool Cache::access(std::uint64_t pa, bool write, std::uint64_t* writeback) {
  const std::uint64_t bits = write ? kDirty | kOwned : 0;
  if (lookup(pa, bits) != kMiss) {
    // A hit evicts nothing, so there is no writeback to pass down.
    if (writeback) *writeback = kNoWriteback;
    return true;
  }
  fill(pa, kOwned | bits, writeback);
  return false;
}

void Cache::receive_writeback(std::uint64_t pa, std::uint64_t* writeback) {
  const std::uint64_t line_addr = pa >> m_line_shift;
  ++m_stats.writebacks_received;
  // Only an owner holds a line dirty, so the written-back line is owned.
  if (std::uint64_t* word = find(line_addr)) {
    *word |= kDirty | kOwned;  // recency unchanged
    if (writeback) *writeback = kNoWriteback;
    return;
  }
  insert_mru(set_of(line_addr), (line_addr << 2) | kDirty | kOwned, writeback);
}

bool Cache::probe(std::uint64_t pa) const { return find_filtered(pa >> m_line_shift) != nullptr; }

bool Cache::probe_dirty(std::uint64_t pa) const {
  const std::uint64_t* word = find_filtered(pa >> m_line_shift);
  return word && (*word & kDirty);
}

std::uint64_t Cache::state(std::uint64_t pa) const {
  const std::uint64_t* word = find_filtered(pa >> m_line_shift);
  return word ? kPresent | (*word & kStateBits) : 0;
}

std::uint64_t Cache::downgrade(std::uint64_t pa, std::uint64_t bits) {
  std::uint64_t* word = find_filtered(pa >> m_line_shift);
  if (!word) return 0;
  const std::uint64_t before = kPresent | (*word & kStateBits);
  *word &= ~(bits & kStateBits);
  return before;
}

std::uint64_t Cache::invalidate(std::uint64_t pa) {
  const std::uint64_t line_addr = pa >> m_line_shift;
  std::uint64_t* word = find_filtered(line_addr);
  if (!word) return 0;
  const std::uint64_t before = kPresent | (*word & kStateBits);
  // The less recently used ways move up one, keeping empty ways last.
  std::uint64_t* set = set_of(line_addr);
  const std::uint32_t way = way_bits(*word);
  if (m_pf) present_remove(*word);
  for (std::uint64_t* w = word; w + 1 < set + m_params.ways; ++w) *w = *(w + 1);
  set[m_params.ways - 1] = empty_word(way);  // the way it held is empty now
  return before;
}

void Cache::invalidate_all() {
  for (std::uint32_t s = 0; s < m_sets; ++s) {
    std::uint64_t* set = m_store.data() + m_base + std::size_t{s} * m_params.ways;
    for (std::uint32_t w = 0; w < m_params.ways; ++w) set[w] = empty_word(w);
  }
  std::fill(m_present.begin(), m_present.end(), std::uint16_t{0});
}

// Four counters a line the cache can hold (a power of two): with the cache
// full, about one absent line in five finds its counter nonzero and is
// searched as before. Counted from the lines present now, so it may be
// turned on at any time.
void Cache::keep_presence_filter() {
  if (!m_present.empty()) return;
  const std::uint64_t lines = std::uint64_t{m_sets} * m_params.ways;
  unsigned bits = 2;
  while ((1ull << bits) < 4 * lines) ++bits;
  m_present_shift = 64 - bits;
  m_present.assign(std::size_t{1} << bits, 0);
  m_pf = m_present.data();
  for (std::uint32_t s = 0; s < m_sets; ++s) {
    const std::uint64_t* set = m_set0 + std::size_t{s} * m_params.ways;
    for (std::uint32_t w = 0; w < m_params.ways; ++w) present_add(set[w]);
  }
}

}  // namespace vmx::models
