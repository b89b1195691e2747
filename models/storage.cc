#include "models/storage.h"

#include <algorithm>
#include <cstring>

#include "sim/units.h"

namespace vmx::models {

Storage::Storage(const StorageParams& p, stats::Group* stats_parent)
    : m_p(p), m_slot_free(p.queue_depth, 0) {
  if (stats_parent) m_stats = std::make_unique<Stats>(stats_parent);
}

std::uint64_t Storage::submit(std::uint64_t now, std::uint64_t bytes, bool write) {
  // The slot that frees first takes the request (submission order).
  auto slot = std::min_element(m_slot_free.begin(), m_slot_free.end());
  const std::uint64_t start = std::max(now, *slot);
  const std::uint64_t bw = write ? m_p.write_bandwidth : m_p.read_bandwidth;
  const std::uint64_t xfer =
      static_cast<std::uint64_t>((static_cast<unsigned __int128>(bytes) * cfg::kPsPerSecond + bw - 1) / bw);
  const std::uint64_t xfer_end = std::max(start, m_channel_free) + xfer;
  m_channel_free = xfer_end;
  const std::uint64_t done = xfer_end + (write ? m_p.write_latency : m_p.read_latency);
  *slot = done;
  if (m_stats) {
    if (start > now) ++m_stats->queued;
    if (write) {
      ++m_stats->writes;
      m_stats->write_bytes += bytes;
    } else {
      ++m_stats->reads;
      m_stats->read_bytes += bytes;
    }
    m_stats->latency.sample((done - now) / 1000);
  }
  return done;
}

void Storage::write_block(std::uint64_t block, const std::uint64_t* words) {
  auto& b = m_medium[block];
  b.assign(words, words + kBlock / 8);
  if (m_stats) m_stats->blocks.set(static_cast<double>(m_medium.size()));
}

void Storage::read_block(std::uint64_t block, std::uint64_t* words) const {
  auto it = m_medium.find(block);
  if (it == m_medium.end()) std::fill(words, words + kBlock / 8, 0);
  else std::copy(it->second.begin(), it->second.end(), words);
}

void Storage::discard(std::uint64_t block) {
  m_medium.erase(block);
  if (m_stats) m_stats->blocks.set(static_cast<double>(m_medium.size()));
}

}  // namespace vmx::models
