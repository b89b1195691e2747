#include "models/eth_link.h"

#include <cmath>
#include <stdexcept>

namespace vmx::models {

LinkDirectionStats::LinkDirectionStats(stats::Group* parent, const std::string& name)
    : Group(parent, name, "one direction of the link") {}

struct EthLink::Direction {
  const PacketEndpoint* from = nullptr;
  PacketEndpoint* to = nullptr;
  std::deque<std::pair<sc_core::sc_time, Packet>> queue;  // by arrival time, which only grows
  sc_core::sc_event pushed;
  sc_core::sc_time free = sc_core::SC_ZERO_TIME;
  std::unique_ptr<LinkDirectionStats> stats;
};

EthLink::EthLink(sc_core::sc_module_name name, const EthLinkParams& params, stats::Group* parent)
    : sc_module(name),
      m_params(params),
      m_parent(parent),
      m_ab(std::make_unique<Direction>()),
      m_ba(std::make_unique<Direction>()) {
  if (!parent) throw std::invalid_argument(std::string(basename()) + ": needs a statistics group");
  if (!(params.bandwidth_gbps > 0))
    throw std::invalid_argument(std::string(basename()) + ": bandwidth_gbps must be positive");
  SC_HAS_PROCESS(EthLink);
  SC_THREAD(deliver_ab);
  SC_THREAD(deliver_ba);
}

EthLink::~EthLink() = default;

void EthLink::bind(PacketEndpoint& a, const std::string& a_name, PacketEndpoint& b, const std::string& b_name) {
  if (m_ab->to) throw std::logic_error(std::string(name()) + ": bound twice");
  m_ab->from = &a;
  m_ab->to = &b;
  m_ba->from = &b;
  m_ba->to = &a;
  // Statistics live beside the link's own name: "<link>.<a>_to_<b>".
  stats::Group& g = m_parent->subgroup(basename(), "Ethernet link");
  m_ab->stats = std::make_unique<LinkDirectionStats>(&g, a_name + "_to_" + b_name);
  m_ba->stats = std::make_unique<LinkDirectionStats>(&g, b_name + "_to_" + a_name);
  if (m_params.drop_every)
    for (Direction* d : {m_ab.get(), m_ba.get()})
      d->stats->dropped = std::make_unique<stats::Counter>(d->stats.get(), "dropped", "frames",
                                                           "frames lost on the wire (drop_every fault injection)");
}

EthLink::Direction& EthLink::dir(const PacketEndpoint& from) const {
  if (&from == m_ab->from) return *m_ab;
  if (&from == m_ba->from) return *m_ba;
  throw std::logic_error(std::string(name()) + ": send from an endpoint not bound to this link");
}

const LinkDirectionStats& EthLink::stats(const PacketEndpoint& from) const { return *dir(from).stats; }

sc_core::sc_time EthLink::serialization(std::size_t bytes) const {
  const std::uint64_t wire = std::max<std::uint64_t>(bytes, m_params.min_frame) + m_params.frame_overhead;
  // 1 Gbit/s moves one bit per 1000 ps.
  const double ps = static_cast<double>(wire * 8) * 1000.0 / m_params.bandwidth_gbps;
  return sc_core::sc_time::from_value(static_cast<sc_dt::uint64>(std::llround(ps)));
}

sc_core::sc_time EthLink::free_at(const PacketEndpoint& from) const {
  const sc_core::sc_time now = sc_core::sc_time_stamp();
  const sc_core::sc_time f = dir(from).free;
  return f > now ? f : now;
}

sc_core::sc_time EthLink::send(const PacketEndpoint& from, Packet p) {
  Direction& d = dir(from);
  const sc_core::sc_time now = sc_core::sc_time_stamp();
  const sc_core::sc_time start = d.free > now ? d.free : now;
  const sc_core::sc_time ser = serialization(p.bytes.size());
  d.free = start + ser;
  ++d.stats->packets;
  d.stats->bytes += p.bytes.size();
  d.stats->wire_bytes += std::max<std::uint64_t>(p.bytes.size(), m_params.min_frame) + m_params.frame_overhead;
  d.stats->busy_ps += ser.value();
  d.stats->queue_ns.sample((start - now).value() / 1000);
  if (m_params.drop_every && d.stats->packets.value() % m_params.drop_every == 0) {
    ++*d.stats->dropped;  // serialized, then lost: it never reaches the other end
    return d.free;
  }
  const sc_core::sc_time arrival = d.free + sc_core::sc_time::from_value(m_params.latency);
  d.queue.emplace_back(arrival, std::move(p));
  d.pushed.notify(sc_core::SC_ZERO_TIME);
  return d.free;
}

void EthLink::deliver(Direction& d) {
  for (;;) {
    if (d.queue.empty()) {
      sc_core::wait(d.pushed);
      continue;
    }
    const sc_core::sc_time now = sc_core::sc_time_stamp();
    if (d.queue.front().first > now) {
      sc_core::wait(d.queue.front().first - now);
      continue;
    }
    Packet p = std::move(d.queue.front().second);
    d.queue.pop_front();
    d.to->receive(std::move(p));
  }
}

}  // namespace vmx::models
