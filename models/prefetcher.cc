#include "models/prefetcher.h"

#include <algorithm>

namespace vmx::models {

namespace {
constexpr unsigned kLinesPerPage = 64;  // 4 KiB pages of 64-byte lines: prefetches stay in the page
}

L2Prefetcher::L2Prefetcher(const L2PrefetchParams& p, stats::Group* parent)
    : m_p(p), m_stats(parent), m_streams(p.streams), m_records(p.tracked) {
  // A size of 1 divides too (its mask would be 0): every slot is 0 anyway.
  if ((p.streams & (p.streams - 1)) == 0) m_stream_mask = p.streams - 1;
  if ((p.tracked & (p.tracked - 1)) == 0) m_record_mask = p.tracked - 1;
}

void L2Prefetcher::train(std::uint64_t line, std::vector<std::uint64_t>& out) {
  out.clear();
  const std::uint64_t page = line / kLinesPerPage;
  auto propose = [&](std::uint64_t l) {
    if (l / kLinesPerPage != page || l == line) return;
    if (std::find(out.begin(), out.end(), l) == out.end()) out.push_back(l);
  };
  if (m_p.next_line)
    for (std::uint32_t k = 1; k <= m_p.degree; ++k) propose(line + k);
  if (m_p.stride) {
    Stream& s = m_streams[stream_slot(page)];
    if (s.page != page) {
      s = Stream{page, line, 0, 0};
    } else if (line != s.last) {
      const std::int64_t delta = static_cast<std::int64_t>(line) - static_cast<std::int64_t>(s.last);
      if (delta == s.stride) {
        s.confidence = std::min(s.confidence + 1, 3u);
      } else {
        s.stride = delta;
        s.confidence = 0;
      }
      s.last = line;
      if (s.confidence >= 1)
        for (std::uint32_t k = 1; k <= m_p.degree; ++k)
          propose(static_cast<std::uint64_t>(static_cast<std::int64_t>(line) + s.stride * k));
    }
  }
}

L2Prefetcher::Record L2Prefetcher::remember(std::uint64_t line, std::uint64_t ready) {
  Record& r = m_records[record_slot(line)];
  const Record old = r;
  r = Record{line, ready, false};
  return old;
}

const L2Prefetcher::Record* L2Prefetcher::claim(std::uint64_t line) {
  Record& r = m_records[record_slot(line)];
  if (r.line != line || r.used) return nullptr;
  r.used = true;
  return &r;
}

}  // namespace vmx::models
