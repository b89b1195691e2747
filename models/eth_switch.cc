#include "models/eth_switch.h"

#include <algorithm>
#include <stdexcept>

namespace vmx::models {

SwitchPortStats::SwitchPortStats(stats::Group* parent, const std::string& name)
    : Group(parent, name, "one port of the switch") {}

SwitchStats::SwitchStats(stats::Group* parent, const std::string& name)
    : Group(parent, name, "the Ethernet switch between the hosts (models/eth_switch.h)") {}

struct EthSwitch::Port final : PacketEndpoint {
  EthSwitch* sw = nullptr;
  unsigned index = 0;
  EthLink* link = nullptr;
  std::unique_ptr<SwitchPortStats> stats;
  // The output queue: frames handed to the link, by the time their last bit
  // leaves, with their sizes.
  std::deque<std::pair<sc_core::sc_time, std::uint64_t>> queue;
  std::uint64_t queued = 0;  // bytes

  void receive(Packet&& p) override { sw->ingress(*this, std::move(p)); }
};

namespace {
std::uint64_t mac_at(const Packet& p, std::size_t offset) {
  std::uint64_t v = 0;
  for (unsigned i = 6; i-- > 0;) v = (v << 8) | p.bytes[offset + i];
  return v;
}
/// The group bit (I/G, bit 0 of the first byte): broadcast and multicast.
bool group_address(std::uint64_t mac) { return mac & 1; }
}  // namespace

EthSwitch::EthSwitch(sc_core::sc_module_name name, const EthSwitchParams& params, stats::Group* parent)
    : sc_module(name),
      m_params(params),
      m_stats(parent, basename()),
      m_port_group(m_stats.subgroup("port", "per port")) {
  SC_HAS_PROCESS(EthSwitch);
  SC_THREAD(forward_thread);
}

EthSwitch::~EthSwitch() = default;

PacketEndpoint& EthSwitch::add_port(const std::string& port_name, EthLink& link) {
  auto port = std::make_unique<Port>();
  port->sw = this;
  port->index = static_cast<unsigned>(m_ports.size());
  port->link = &link;
  port->stats = std::make_unique<SwitchPortStats>(&m_port_group, port_name);
  m_ports.push_back(std::move(port));
  return *m_ports.back();
}

int EthSwitch::lookup(std::uint64_t mac) const {
  auto it = m_table.find(mac);
  return it == m_table.end() ? -1 : static_cast<int>(it->second);
}

const SwitchPortStats& EthSwitch::port_stats(unsigned port) const { return *m_ports.at(port)->stats; }

void EthSwitch::ingress(Port& in, Packet&& p) {
  ++in.stats->rx_frames;
  in.stats->rx_bytes += p.bytes.size();
  if (p.bytes.size() < 14) return;  // no Ethernet header: a runt, discarded
  // Learning, from the source address of every frame received.
  const std::uint64_t src = mac_at(p, 6);
  if (!group_address(src)) {
    auto [it, fresh] = m_table.try_emplace(src, in.index);
    if (fresh || it->second != in.index) {
      if (!fresh) {
        ++m_stats.moves;
        m_stats.last_move_ns.set(static_cast<double>(sc_core::sc_time_stamp().value() / 1000));
      }
      it->second = in.index;
      ++in.stats->learned;
      m_stats.table_entries.set(static_cast<double>(m_table.size()));
    }
  }
  m_pending.push_back({sc_core::sc_time_stamp() + sc_core::sc_time::from_value(m_params.latency), in.index,
                       std::move(p)});
  m_pushed.notify(sc_core::SC_ZERO_TIME);
}

void EthSwitch::forward_thread() {
  for (;;) {
    if (m_pending.empty()) {
      sc_core::wait(m_pushed);
      continue;
    }
    const sc_core::sc_time now = sc_core::sc_time_stamp();
    if (m_pending.front().at > now) {
      sc_core::wait(m_pending.front().at - now);
      continue;
    }
    Pending f = std::move(m_pending.front());
    m_pending.pop_front();
    // The decision is made now, with the table as it is now.
    const std::uint64_t dst = mac_at(f.p, 0);
    const int out = group_address(dst) ? -1 : lookup(dst);
    if (out == static_cast<int>(f.in)) {
      ++m_stats.filtered;
    } else if (out >= 0) {
      ++m_stats.forwarded;
      egress(*m_ports[static_cast<unsigned>(out)], f.p, false);
    } else {
      ++m_stats.flooded;
      for (auto& port : m_ports)
        if (port->index != f.in) egress(*port, f.p, true);
    }
  }
}

void EthSwitch::egress(Port& out, const Packet& p, bool flooded) {
  const sc_core::sc_time now = sc_core::sc_time_stamp();
  while (!out.queue.empty() && out.queue.front().first <= now) {
    out.queued -= out.queue.front().second;
    out.queue.pop_front();
  }
  const std::uint64_t size = p.bytes.size();
  if (out.queued + size > m_params.port_buffer) {
    ++out.stats->drops;
    return;
  }
  ++out.stats->tx_frames;
  out.stats->tx_bytes += size;
  if (flooded) ++out.stats->flooded;
  const sc_core::sc_time start = out.link->free_at(out);
  out.stats->queue_ns.sample((start - now).value() / 1000);
  const sc_core::sc_time done = out.link->send(out, Packet{p.bytes});
  out.queue.emplace_back(done, size);
  out.queued += size;
  out.stats->max_queue_bytes.set(
      std::max(out.stats->max_queue_bytes.value(), static_cast<double>(out.queued)));
}

}  // namespace vmx::models
