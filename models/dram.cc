#include "models/dram.h"

#include <algorithm>
#include <stdexcept>

namespace vmx::models {

DramRequesterStats::DramRequesterStats(stats::Group* parent, const std::string& name)
    : stats::Group(parent, name, "one requester's DRAM traffic") {}

DramStats::DramStats(stats::Group* parent, const std::string& name)
    : stats::Group(parent, name, "DDR4 main memory (models/dram.h)") {}

namespace {
unsigned log2_exact(std::uint64_t v) {
  unsigned b = 0;
  while ((1ull << b) < v) ++b;
  return b;
}
}  // namespace

Dram::Dram(const DramParams& params, stats::Group* parent, const std::string& name)
    : m_p(params), m_stats(parent, name), m_req_group(&m_stats, "requesters", "traffic per requester") {
  auto pow2 = [&](std::uint64_t v, const char* key) {
    if (v == 0 || (v & (v - 1)))
      throw std::invalid_argument("dram '" + name + "': " + key + " must be a power of two (got " +
                                  std::to_string(v) + ")");
  };
  pow2(m_p.channels, "channels");
  pow2(m_p.ranks, "ranks");
  pow2(m_p.banks, "banks");
  pow2(m_p.row_size, "row_size");
  if (m_p.row_size < 64) throw std::invalid_argument("dram '" + name + "': row_size must be at least 64 bytes");
  if (const cfg::Problem pr = m_p.check())
    throw std::invalid_argument("dram '" + name + "': " + pr.key + " must be " + pr.expected + " (got " + pr.found + ")");
  m_ch_bits = log2_exact(m_p.channels);
  m_col_bits = log2_exact(m_p.row_size / 64);
  m_bank_bits = log2_exact(m_p.banks);
  m_rank_bits = log2_exact(m_p.ranks);
  m_bin_ps = kSlots * m_p.t_burst;
  m_closed = m_p.page_policy == "closed";
  m_channels.resize(m_p.channels);
  for (Channel& c : m_channels) {
    c.banks.resize(std::size_t{m_p.ranks} * m_p.banks);
    c.bins.resize(kBins);
  }
}

Dram::~Dram() = default;

unsigned Dram::add_requester(const std::string& name) {
  m_requesters.push_back(std::make_unique<DramRequesterStats>(&m_req_group, name));
  return static_cast<unsigned>(m_requesters.size() - 1);
}

Dram::Coord Dram::map(std::uint64_t pa) const {
  std::uint64_t a = pa >> 6;
  Coord c{};
  c.channel = static_cast<unsigned>(a & (m_p.channels - 1));
  a >>= m_ch_bits;
  a >>= m_col_bits;  // the column: lines of one row in this channel
  c.bank = static_cast<unsigned>(a & (m_p.banks - 1));
  a >>= m_bank_bits;
  c.rank = static_cast<unsigned>(a & (m_p.ranks - 1));
  a >>= m_rank_bits;
  c.row = a;
  return c;
}

// The calendar of the channel's data bus: at most kSlots bursts per bin of
// kSlots x tBURST, so at most one line per tBURST on average (the channel's
// bandwidth); within a bin bursts do not overlap. A request whose data is
// ready takes the first bin at or after that time with a free slot.
std::uint64_t Dram::bus_slot(Channel& c, std::uint64_t ready) {
  std::uint64_t bin = ready / m_bin_ps;
  for (;;) {
    Bin& b = c.bins[bin % kBins];
    if (b.tag != bin) {
      // A bin a whole calendar later already holds this slot: the request
      // lies further in the past than the calendar reaches (far beyond any
      // quantum of skew), and nothing is known to contend with it.
      if (b.tag != ~0ull && b.tag > bin) return ready + m_p.t_burst;
      b.tag = bin;
      b.used = 0;
      b.last_end = 0;
    }
    if (b.used < kSlots) {
      const std::uint64_t start = std::max(ready, b.last_end);
      ++b.used;
      b.last_end = start + m_p.t_burst;
      return b.last_end;
    }
    ++bin;
    ready = std::max(ready, bin * m_bin_ps);
  }
}

std::uint64_t Dram::access(std::uint64_t pa, bool write, unsigned requester, std::uint64_t at) {
  const Coord co = map(pa);
  Channel& ch = m_channels[co.channel];
  if (write) return buffered_write(ch, requester, at);
  Bank& b = ch.banks[std::size_t{co.rank} * m_p.banks + co.bank];
  // FCFS within the bank: a request waits for the bank's previous command
  // unless it arrives before that request did (another core's clock that is
  // behind within the quantum), which the bank cannot reorder in hindsight.
  std::uint64_t start = at;
  if (at >= b.last_arrival) {
    start = std::max(at, b.ready);
    b.last_arrival = at;
  }
  // Refresh (JEDEC DDR4, REF every tREFI): the rank is busy for tRFC at the
  // start of each interval, and a refresh leaves every bank precharged.
  std::uint64_t epoch = start / m_p.t_refi;
  if (start - epoch * m_p.t_refi < m_p.t_rfc) {
    start = epoch * m_p.t_refi + m_p.t_rfc;
    ++m_stats.refreshes;
  }
  if (b.row != kNoRow && b.refresh_epoch != epoch) b.row = kNoRow;

  std::uint64_t cas, service;
  if (b.row == co.row) {
    ++m_stats.row_hits;
    cas = start;
    service = m_p.t_cl + m_p.t_burst;
  } else {
    std::uint64_t act = start;
    service = m_p.t_rcd + m_p.t_cl + m_p.t_burst;
    if (b.row == kNoRow) {
      ++m_stats.row_misses;
    } else {
      // Precharge no earlier than tRAS after the row's activation.
      ++m_stats.row_conflicts;
      act = std::max(start, b.activated + m_p.t_ras) + m_p.t_rp;
      service += m_p.t_rp;
    }
    b.activated = act;
    b.refresh_epoch = act / m_p.t_refi;
    cas = act + m_p.t_rcd;
  }
  const std::uint64_t end = bus_slot(ch, cas + m_p.t_cl);
  // The next column command to the bank may follow one burst later; with the
  // closed-page policy the bank precharges (not before tRAS) first.
  if (m_closed) {
    b.row = kNoRow;
    b.ready = std::max(cas + m_p.t_burst, b.activated + m_p.t_ras) + m_p.t_rp;
  } else {
    b.row = co.row;
    b.ready = cas + m_p.t_burst;
  }

  const std::uint64_t latency = m_p.controller_latency + (end - at);
  m_stats.queue_ns.sample((end - at - service) / 1000);
  DramRequesterStats& rs = *m_requesters.at(requester);
  rs.bytes += 64;
  ++m_stats.reads;
  ++rs.reads;
  rs.busy_ps += latency;
  m_stats.read_ns.sample(latency / 1000);
  return latency;
}

// Writes (writebacks, DMA writes) wait in the controller's write queue and
// are drained in batches to open rows when reads leave the bus idle, as
// controllers with read priority and write-drain watermarks do: they take
// their burst of bus bandwidth but leave the banks' rows to the reads.
std::uint64_t Dram::buffered_write(Channel& ch, unsigned requester, std::uint64_t at) {
  const std::uint64_t end = bus_slot(ch, at + m_p.t_cl);
  m_stats.queue_ns.sample((end - at - m_p.t_cl - m_p.t_burst) / 1000);
  DramRequesterStats& rs = *m_requesters.at(requester);
  rs.bytes += 64;
  ++m_stats.writes;
  ++rs.writes;
  return m_p.controller_latency + (end - at);
}

}  // namespace vmx::models
