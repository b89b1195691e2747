// A host storage device (an NVMe SSD) as a timing model with contents
// (docs/memory.md, "Host storage").
//
// A request of n bytes submitted at time t waits for one of `queue_depth`
// command slots (the device's internal parallelism: requests beyond it
// queue in submission order), then for the device's media channel, which
// moves bytes at the read or write bandwidth one transfer after another;
// it completes a fixed access latency after its transfer ends. So a lone
// 4 KiB request takes latency + 4 KiB / bandwidth, requests in parallel
// overlap their latencies, and a stream is limited by the bandwidth.
//
// The medium keeps what was written, in blocks of 4 KiB, so that data
// read back is the data written (a block never written reads as zeros).
// Plain C++, no SystemC: times are picoseconds from the caller's clock.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::models {

struct StorageParams {
  std::uint64_t read_latency, write_latency;  // ps
  std::uint64_t read_bandwidth, write_bandwidth;  // bytes per second
  std::uint64_t queue_depth;

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(read_latency, "read_latency", "77us", Spec(Unit::Time).at_least(1e3),
            "Access latency of a read, after its transfer (Intel SSD DC P4510 product specification: typical "
            "4 KiB random read latency 77 us at queue depth 1).");
    v.param(write_latency, "write_latency", "18us", Spec(Unit::Time).at_least(1e3),
            "Access latency of a write, after its transfer (Intel SSD DC P4510 product specification: typical "
            "4 KiB random write latency 18 us at queue depth 1).");
    v.param(read_bandwidth, "read_bandwidth", "3200MB", Spec(Unit::Bytes).at_least(1e6),
            "Bytes per second the media channel reads (Intel SSD DC P4510 2 TB: sequential read 3200 MB/s).");
    v.param(write_bandwidth, "write_bandwidth", "2000MB", Spec(Unit::Bytes).at_least(1e6),
            "Bytes per second the media channel writes (Intel SSD DC P4510 2 TB: sequential write 2000 MB/s).");
    v.param(queue_depth, "queue_depth", "32", Spec(Unit::Count).at_least(1).at_most(65536),
            "Requests the device works on at once; more wait in submission order (assumption: 32, where the "
            "P4510's random-read IOPS saturate; NVMe allows 65536 per queue).");
  }
};

class Storage {
 public:
  static constexpr std::uint64_t kBlock = 4096;

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "storage", "host storage device (models/storage.h)") {}
    stats::Counter reads{this, "reads", "requests", "read requests"};
    stats::Counter writes{this, "writes", "requests", "write requests"};
    stats::Counter read_bytes{this, "read_bytes", "bytes", "bytes read"};
    stats::Counter write_bytes{this, "write_bytes", "bytes", "bytes written"};
    stats::Counter queued{this, "queued", "requests", "requests that waited for a free command slot"};
    stats::Histogram latency{this, "latency_ns", "ns", "submission to completion, per request"};
    stats::Gauge blocks{this, "blocks", "blocks", "4 KiB blocks of the medium holding data, at the end"};
  };

  /// stats_parent may be null.
  Storage(const StorageParams& p, stats::Group* stats_parent);

  /// Submits a request of `bytes` at time `now_ps`; returns when it
  /// completes (ps).
  std::uint64_t submit(std::uint64_t now_ps, std::uint64_t bytes, bool write);
  /// The medium's contents: block `block` (kBlock bytes).
  void write_block(std::uint64_t block, const std::uint64_t* words);
  void read_block(std::uint64_t block, std::uint64_t* words) const;
  /// Forgets a block's contents (a discard / TRIM).
  void discard(std::uint64_t block);
  const StorageParams& params() const { return m_p; }

 private:
  StorageParams m_p;
  std::vector<std::uint64_t> m_slot_free;  // when each command slot is free again (ps)
  std::uint64_t m_channel_free = 0;        // when the media channel is free (ps)
  std::unordered_map<std::uint64_t, std::vector<std::uint64_t>> m_medium;
  std::unique_ptr<Stats> m_stats;
};

}  // namespace vmx::models
