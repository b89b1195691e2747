#include "models/cache.h"

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
  if (params.ways == 0) throw bad("ways", "must be at least 1 (got 0)");
  if (!is_pow2(params.line))
    throw bad("line", "must be a power of two (got " + std::to_string(params.line) + ")");
  const std::uint64_t way_bytes = std::uint64_t(params.ways) * params.line;
  if (params.size == 0 || params.size % way_bytes != 0)
    throw bad("size", "must be a non-zero multiple of ways x line = " + std::to_string(way_bytes) + " (got " +
                          std::to_string(params.size) + ")");
  const std::uint64_t sets = params.size / way_bytes;
  if (!is_pow2(sets))
    throw bad("size", "must give a power-of-two number of sets, size / (ways x line) (got " +
                          std::to_string(sets) + " sets)");
  if (params.latency == 0) throw bad("latency", "must be at least 1 cycle (got 0)");
  m_line_shift = static_cast<unsigned>(__builtin_ctzll(params.line));
  m_sets = static_cast<std::uint32_t>(sets);
  m_set_mask = sets - 1;
  m_lines.assign(static_cast<std::size_t>(sets * params.ways), Line{0, 0, false, false});
}

const Cache::Line* Cache::find(std::uint64_t line_addr) const {
  const Line* set = &m_lines[(line_addr & m_set_mask) * m_params.ways];
  for (std::uint32_t w = 0; w < m_params.ways; ++w)
    if (set[w].tag == line_addr && set[w].valid) return &set[w];
  return nullptr;
}

Cache::Line& Cache::allocate(std::uint64_t line_addr, std::uint64_t* writeback) {
  Line* set = set_of(line_addr);
  Line* victim = &set[0];
  for (std::uint32_t w = 0; w < m_params.ways; ++w) {
    Line& l = set[w];
    if (!l.valid) {
      victim = &l;
      break;
    }
    if (l.stamp < victim->stamp) victim = &l;
  }
  if (writeback) *writeback = kNoWriteback;
  if (victim->valid) {
    ++m_stats.evictions;
    if (victim->dirty) {
      ++m_stats.writebacks;
      if (writeback) *writeback = victim->tag << m_line_shift;
    }
  }
  victim->tag = line_addr;
  victim->valid = true;
  victim->dirty = false;
  return *victim;
}

bool Cache::access(std::uint64_t pa, bool write, std::uint64_t* writeback) {
  const std::uint64_t line_addr = pa >> m_line_shift;
  ++m_stats.accesses;
  Line* set = set_of(line_addr);
  // Tag first: a way with another tag is rejected with one compare.
  for (std::uint32_t w = 0, ways = m_params.ways; w < ways; ++w) {
    Line& l = set[w];
    if (l.tag == line_addr && l.valid) {
      ++m_stats.hits;
      l.stamp = ++m_clock;
      l.dirty = l.dirty || write;
      if (writeback) *writeback = kNoWriteback;
      return true;
    }
  }
  ++m_stats.misses;
  Line& l = allocate(line_addr, writeback);
  l.stamp = ++m_clock;
  l.dirty = write;
  return false;
}

void Cache::receive_writeback(std::uint64_t pa, std::uint64_t* writeback) {
  const std::uint64_t line_addr = pa >> m_line_shift;
  ++m_stats.writebacks_received;
  Line* set = set_of(line_addr);
  for (std::uint32_t w = 0; w < m_params.ways; ++w) {
    if (set[w].tag == line_addr && set[w].valid) {
      set[w].dirty = true;
      if (writeback) *writeback = kNoWriteback;
      return;
    }
  }
  Line& l = allocate(line_addr, writeback);
  l.stamp = ++m_clock;
  l.dirty = true;
}

bool Cache::probe(std::uint64_t pa) const { return find(pa >> m_line_shift) != nullptr; }

bool Cache::probe_dirty(std::uint64_t pa) const {
  const Line* l = find(pa >> m_line_shift);
  return l && l->dirty;
}

void Cache::invalidate_all() {
  for (Line& l : m_lines) l = Line{0, 0, false, false};
}

}  // namespace vmx::models
