// The L2 hardware prefetcher: a next-line prefetcher and a stride
// prefetcher, trained on the L2's demand accesses, that fill lines into the
// L2 ahead of the demand stream (docs/model.md, "L2 prefetcher"). Pure
// logic: it proposes lines and keeps the record of the prefetches issued;
// models::MemHierarchy fetches and fills them.
#pragma once

#include <cstdint>
#include <vector>

#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::models {

struct L2PrefetchParams {
  bool next_line;
  bool stride;
  std::uint32_t degree;   // lines per trigger
  std::uint32_t streams;  // stride-table entries (4 KiB pages tracked)
  std::uint32_t tracked;  // prefetches remembered for usefulness and timing

  bool enabled() const { return next_line || stride; }

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(next_line, "next_line", "false", Spec(Unit::Flag),
            "Next-line prefetch into the L2: a demand access to line X that misses the L2 (or is the first to "
            "use a prefetched line) prefetches X+1 .. X+degree within X's 4 KiB page. Off by default so that "
            "existing results keep their meaning; Intel cores have such an L2 streamer (Intel 64 and IA-32 "
            "Architectures Optimization Reference Manual, \"Data prefetching\").");
    v.param(stride, "stride", "false", Spec(Unit::Flag),
            "Stride prefetch into the L2: per 4 KiB page, the distance between successive demand lines; once "
            "the same distance repeats, the next degree lines at that distance in the page are prefetched "
            "(Optimization Reference Manual, \"Data prefetching\": the L2 streamer detects forward and backward "
            "strides within a page). Off by default.");
    v.param(degree, "degree", "2", Spec(Unit::Count).at_least(1).at_most(16),
            "Lines prefetched per trigger. Default: 2 (assumption; the Skylake L2 streamer may run up to 20 "
            "lines ahead, Optimization Reference Manual, \"Data prefetching\").");
    v.param(streams, "streams", "32", Spec(Unit::Count).at_least(1).at_most(1024),
            "Pages the stride prefetcher tracks at once (a direct-mapped table by page number). Default: 32, "
            "the number of streams the Skylake L2 streamer tracks (Optimization Reference Manual, \"Data "
            "prefetching\": one forward and one backward stream per page, 32 streams).");
    v.param(tracked, "tracked", "64", Spec(Unit::Count).at_least(1).at_most(4096),
            "Prefetches remembered (direct-mapped by line) to tell a useful prefetch from a useless one and "
            "to time a demand access that catches up with an in-flight prefetch (assumption: of the order of "
            "the L2's outstanding-request queue).");
  }
};

struct L2PrefetchStats : stats::Group {
  explicit L2PrefetchStats(stats::Group* parent) : Group(parent, "l2_prefetch", "the L2 hardware prefetcher") {}
  stats::Counter issued{this, "issued", "lines", "prefetches issued: lines fetched into the L2 ahead of demand"};
  stats::Counter useful{this, "useful", "lines", "prefetched lines a demand access then found in the L2"};
  stats::Counter late{this, "late", "lines",
                      "useful prefetches whose line had not arrived when the demand access came; it waited for it"};
  stats::Counter useless{this, "useless", "lines",
                         "prefetches no demand access used before `tracked` later prefetches recycled their record"};
  stats::Counter dropped{this, "dropped", "lines",
                         "proposed prefetches not issued: the line was in the L2 already or another core held it"};
};

class L2Prefetcher {
 public:
  L2Prefetcher(const L2PrefetchParams& p, stats::Group* parent);

  /// Trains on a demand access to `line` (a line number, not a byte address)
  /// and appends the lines to prefetch to `out` (cleared first): next-line
  /// and stride proposals, within line's 4 KiB page, no duplicates.
  void train(std::uint64_t line, std::vector<std::uint64_t>& out);

  struct Record {
    std::uint64_t line = ~0ull;
    std::uint64_t ready = 0;  // core cycle at which the line arrives
    bool used = true;         // an empty slot counts as used
  };
  /// Remembers an issued prefetch; returns the record it replaced (for the
  /// caller to decide whether that prefetch was useless).
  Record remember(std::uint64_t line, std::uint64_t ready);
  /// A demand access found `line` in the L2: if it was prefetched and not
  /// used yet, marks it used and returns its record; else null.
  const Record* claim(std::uint64_t line);

  L2PrefetchStats& stats() { return m_stats; }
  const L2PrefetchParams& params() const { return m_p; }

 private:
  struct Stream {
    std::uint64_t page = ~0ull;
    std::uint64_t last = 0;
    std::int64_t stride = 0;
    unsigned confidence = 0;
  };
  L2PrefetchParams m_p;
  L2PrefetchStats m_stats;
  std::vector<Stream> m_streams;
  std::vector<Record> m_records;
  // Host speed: the tables' slots by a mask when their sizes are powers of
  // two (the defaults), by a division otherwise; the same slot either way.
  std::uint64_t m_stream_mask = 0, m_record_mask = 0;  // size - 1, or 0: divide
  std::size_t stream_slot(std::uint64_t page) const {
    return m_stream_mask ? page & m_stream_mask : page % m_streams.size();
  }
  std::size_t record_slot(std::uint64_t line) const {
    return m_record_mask ? line & m_record_mask : line % m_records.size();
  }
};

}  // namespace vmx::models
