// A DDR4 main-memory timing model: channels, ranks, banks, row buffers with
// an open- or closed-page policy, the main DDR4 timing parameters, refresh,
// and a per-channel data bus whose bandwidth every requester (cores' demand
// misses, writebacks and page-walk references, device DMA) shares, so that
// contention between cores, VMs and devices emerges (docs/model.md, "DRAM").
//
// Plain C++ (no SystemC): requests carry their arrival time in picoseconds
// and get their completion latency back, as the loosely-timed cores need.
//
// The model in one paragraph. An address maps to (channel, rank, bank, row,
// column) by `mapping`. The bank serves requests in arrival order: a request
// to the open row is a row hit (tCL), one to a precharged bank a row miss
// (tRCD + tCL), one to another row a row conflict (tRP + tRCD + tCL, the
// precharge not before tRAS after the activation). With the closed-page
// policy every access precharges its row afterwards (auto-precharge), so
// each access is a row miss. Refresh closes every row of a rank each tREFI
// and blocks the rank for tRFC. The data then needs tBURST on the channel's
// bus; the bus is a calendar of slots (the per-channel request queue): a
// request takes the first free slot at or after its data is ready, so a
// request whose bank is ready (a row hit) gets the bus before an older one
// still waiting for its activation: first-ready, first-come-first-served
// (FR-FCFS) across banks, FCFS within a bank. Writes are buffered and
// drained to open rows (write drain): they take bus slots, not bank time. The calendar is indexed by
// time, not by call order, so cores that run a quantum apart (temporal
// decoupling) still share the bus correctly. A channel moves at most one
// burst per tBURST: that is the bandwidth limit.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::models {

/// Organization and timing. Timing defaults: Micron MT40A1G8 (8 Gb x8 DDR4
/// SDRAM) datasheet, speed grade -083E, DDR4-2400R (CL-nRCD-nRP 16-16-16,
/// tCK 0.833 ns): tAA = tRCD = tRP = 13.32 ns, tRAS = 32 ns; BL8 = 4 clocks =
/// 3.33 ns per 64-byte burst; tREFI 7.8 us (0-85 C), tRFC1 350 ns (8 Gb).
struct DramParams {
  std::string model;      // "fixed" or "dram"
  std::uint32_t channels;
  std::uint32_t ranks;    // per channel
  std::uint32_t banks;    // per rank
  std::uint64_t row_size; // bytes per row of a rank (the row buffer)
  std::string page_policy;  // "open" or "closed"
  std::uint64_t t_cl, t_rcd, t_rp, t_ras, t_burst, t_refi, t_rfc, controller_latency;  // ps

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(model, "model", "fixed", Spec().one_of({"fixed", "dram"}),
            "Main-memory timing: 'fixed' adds caches.dram_latency to every LLC miss (no banks, no bandwidth "
            "limit; the figures docs/ and labs/ quote); 'dram' uses this DDR4 model, shared by every core and "
            "device DMA (docs/model.md, DRAM).");
    v.param(channels, "channels", "2", Spec().at_least(1).at_most(16).power_of_two(),
            "Memory channels. Default: 2, the dual-channel DDR4 of the Skylake client parts the cache "
            "defaults follow (Intel i7-6700 datasheet).");
    v.param(ranks, "ranks", "1", Spec().at_least(1).at_most(8).power_of_two(),
            "Ranks per channel. Default: 1 (one single-rank DIMM per channel, an assumption).");
    v.param(banks, "banks", "16", Spec().at_least(1).at_most(64).power_of_two(),
            "Banks per rank. Default: 16, DDR4 x8 devices (4 bank groups of 4 banks; Micron MT40A1G8 "
            "datasheet). Bank-group timing (tCCD_L) is not modelled.");
    v.param(row_size, "row_size", "8KiB", Spec(Unit::Bytes).at_least(64).at_most(1 << 20).power_of_two(),
            "Bytes of one row across the rank: the row buffer. Default: 8 KiB, eight x8 devices of 1 KiB "
            "page size each (Micron MT40A1G8 datasheet, addressing table).");
    v.param(page_policy, "page_policy", "open", Spec().one_of({"open", "closed"}),
            "Row-buffer policy: 'open' leaves the row open after an access (hits are cheap, conflicts "
            "pay the precharge), 'closed' precharges after every access (auto-precharge).");
    v.param(t_cl, "t_cl", "13320ps", Spec(Unit::Time).at_least(1).at_most(1e6),
            "CAS latency tAA (read command to data). Default: 13.32 ns, DDR4-2400R CL16 (Micron MT40A1G8 -083E).");
    v.param(t_rcd, "t_rcd", "13320ps", Spec(Unit::Time).at_least(1).at_most(1e6),
            "Activate to read/write tRCD. Default: 13.32 ns (Micron MT40A1G8 -083E).");
    v.param(t_rp, "t_rp", "13320ps", Spec(Unit::Time).at_least(1).at_most(1e6),
            "Precharge period tRP. Default: 13.32 ns (Micron MT40A1G8 -083E).");
    v.param(t_ras, "t_ras", "32ns", Spec(Unit::Time).at_least(1).at_most(1e6),
            "Activate to precharge tRAS (minimum). Default: 32 ns (Micron MT40A1G8 -083E).");
    v.param(t_burst, "t_burst", "3333ps", Spec(Unit::Time).at_least(1).at_most(1e6),
            "Data-bus time of one 64-byte line: BL8 on a 64-bit channel is 4 clocks. Default: 3.333 ns at "
            "DDR4-2400 (tCK 0.833 ns), i.e. 19.2 GB/s per channel.");
    v.param(t_refi, "t_refi", "7800ns", Spec(Unit::Time).at_least(1e3).at_most(1e9),
            "Average refresh interval tREFI. Default: 7.8 us (Micron MT40A1G8, 0-85 C).");
    v.param(t_rfc, "t_rfc", "350ns", Spec(Unit::Time).at_least(1).at_most(1e7),
            "Refresh cycle time tRFC1: the rank is unavailable this long per refresh. Default: 350 ns "
            "(Micron MT40A1G8, 8 Gb density).");
    v.param(controller_latency, "controller_latency", "15ns", Spec(Unit::Time).at_most(1e6),
            "Fixed part of an LLC miss outside the DRAM devices: the on-chip path to the memory "
            "controller and back and the controller's pipeline. Default: 15 ns (assumption, chosen so that a "
            "random read, mostly row conflicts at 58 ns, lies near the 51 ns beyond the LLC that 7-cpu.com "
            "measures on a Skylake i7-6700).");
  }

  /// t_rfc shorter than t_refi; t_ras at least t_rcd.
  cfg::Problem check() const {
    if (t_rfc >= t_refi) return {"t_rfc", "less than t_refi (" + std::to_string(t_refi) + " ps)", std::to_string(t_rfc)};
    if (t_ras < t_rcd) return {"t_ras", "at least t_rcd (" + std::to_string(t_rcd) + " ps)", std::to_string(t_ras)};
    return {};
  }
};

/// Traffic of one requester (a core's hierarchy, or device DMA).
struct DramRequesterStats : stats::Group {
  DramRequesterStats(stats::Group* parent, const std::string& name);
  stats::Counter reads{this, "reads", "lines", "64-byte reads served"};
  stats::Counter writes{this, "writes", "lines", "64-byte writes served (writebacks, DMA writes)"};
  stats::Counter bytes{this, "bytes", "bytes", "bytes moved; bandwidth = bytes / simulated time"};
  stats::Counter busy_ps{this, "latency_ps", "ps", "sum of the latencies of its reads (controller included)"};
};

struct DramStats : stats::Group {
  DramStats(stats::Group* parent, const std::string& name);
  stats::Counter reads{this, "reads", "lines", "64-byte reads"};
  stats::Counter writes{this, "writes", "lines", "64-byte writes"};
  stats::Counter row_hits{this, "row_hits", "accesses", "accesses to the open row"};
  stats::Counter row_misses{this, "row_misses", "accesses", "accesses to a precharged bank (activate)"};
  stats::Counter row_conflicts{this, "row_conflicts", "accesses",
                               "accesses to a bank with another row open (precharge + activate)"};
  stats::Counter refreshes{this, "refresh_waits", "accesses", "accesses delayed by a refresh in progress"};
  stats::Histogram queue_ns{this, "queue_latency", "ns",
                            "time each access waited for its bank and the channel's bus beyond its own service"};
  stats::Histogram read_ns{this, "read_latency", "ns", "read latency from arrival to data, controller included"};
};

class Dram {
 public:
  /// Throws std::invalid_argument naming the parameter for a bad organization.
  Dram(const DramParams& params, stats::Group* parent, const std::string& name = "dram");
  ~Dram();

  /// A requester with its own statistics group "requesters.<name>"; returns
  /// its index for access().
  unsigned add_requester(const std::string& name);

  /// One 64-byte access arriving at `at_ps`. Returns its latency in ps:
  /// controller_latency + bank and bus time + any wait. A write's latency
  /// is what it occupies; writers do not wait for it (write buffers).
  std::uint64_t access(std::uint64_t pa, bool write, unsigned requester, std::uint64_t at_ps);

  /// The unloaded latencies of the three row-buffer cases (for tests and docs).
  std::uint64_t hit_latency() const { return m_p.controller_latency + m_p.t_cl + m_p.t_burst; }
  std::uint64_t miss_latency() const { return hit_latency() + m_p.t_rcd; }
  std::uint64_t conflict_latency() const { return miss_latency() + m_p.t_rp; }
  /// Peak bandwidth of all channels, bytes per second.
  double peak_bandwidth() const { return 64.0 * 1e12 / static_cast<double>(m_p.t_burst) * m_p.channels; }

  const DramParams& params() const { return m_p; }
  const DramStats& stats() const { return m_stats; }
  const DramRequesterStats& requester(unsigned i) const { return *m_requesters.at(i); }

  /// Where an address goes: line interleaved across channels, then the
  /// column within the row, the bank, the rank, the row (from low to high
  /// address bits above the 64-byte line offset).
  struct Coord {
    unsigned channel, rank, bank;
    std::uint64_t row;
  };
  Coord map(std::uint64_t pa) const;

 private:
  struct Bank {
    std::uint64_t row = kNoRow;    // open row
    std::uint64_t ready = 0;       // ps: when it accepts its next command
    std::uint64_t activated = 0;   // ps: last activate (for tRAS)
    std::uint64_t last_arrival = 0;
    std::uint64_t refresh_epoch = 0;  // the refresh interval its row was opened in
  };
  static constexpr std::uint64_t kNoRow = ~0ull;
  // The channel's bus calendar: kBins bins of kSlots bursts each, indexed by
  // absolute bin number modulo kBins; a bin whose tag differs is empty.
  static constexpr unsigned kSlots = 16;
  static constexpr unsigned kBins = 4096;
  struct Bin {
    std::uint64_t tag = ~0ull;
    std::uint32_t used = 0;
    std::uint64_t last_end = 0;  // ps: end of its latest burst
  };
  struct Channel {
    std::vector<Bank> banks;  // ranks x banks
    std::vector<Bin> bins;
  };
  /// The end of the burst of data ready at `ready_ps` on channel c.
  std::uint64_t bus_slot(Channel& c, std::uint64_t ready_ps);
  std::uint64_t buffered_write(Channel& c, unsigned requester, std::uint64_t at);

  DramParams m_p;
  DramStats m_stats;
  stats::Group m_req_group;
  std::vector<std::unique_ptr<DramRequesterStats>> m_requesters;
  std::vector<Channel> m_channels;
  unsigned m_ch_bits = 0, m_col_bits = 0, m_bank_bits = 0, m_rank_bits = 0;
  std::uint64_t m_bin_ps = 0;
  bool m_closed = false;
};

}  // namespace vmx::models
