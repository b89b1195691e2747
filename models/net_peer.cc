#include "models/net_peer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "models/nic.h"

namespace vmx::models {

namespace peerhdr {

namespace {
void put(std::uint8_t* p, std::uint64_t v, unsigned n) {
  for (unsigned i = 0; i < n; ++i, v >>= 8) p[i] = static_cast<std::uint8_t>(v);
}
std::uint64_t get(const std::uint8_t* p, unsigned n) {
  std::uint64_t v = 0;
  for (unsigned i = n; i-- > 0;) v = (v << 8) | p[i];
  return v;
}
}  // namespace

void write(std::uint8_t* frame, std::uint64_t dst_mac, std::uint64_t src_mac, const PeerHeader& h) {
  put(frame, dst_mac, 6);
  put(frame + 6, src_mac, 6);
  frame[12] = static_cast<std::uint8_t>(kEtherType >> 8);  // EtherType is big-endian on the wire
  frame[13] = static_cast<std::uint8_t>(kEtherType);
  std::uint8_t* b = frame + kOffset;
  put(b, h.magic, 4);
  put(b + 4, h.flags, 4);
  put(b + 8, h.sequence, 8);
  put(b + 16, h.timestamp_ps, 8);
}

bool read(const std::uint8_t* frame, std::size_t len, PeerHeader& out) {
  if (len < kMinFrame) return false;
  const std::uint8_t* b = frame + kOffset;
  out.magic = static_cast<std::uint32_t>(get(b, 4));
  if (out.magic != kMagic) return false;
  out.flags = static_cast<std::uint32_t>(get(b + 4, 4));
  out.sequence = get(b + 8, 8);
  out.timestamp_ps = get(b + 16, 8);
  return true;
}

}  // namespace peerhdr

NetPeerStats::NetPeerStats(stats::Group* parent, const std::string& name)
    : Group(parent, name, "network peer at the far end of the NIC's link") {}

PingStats::PingStats(stats::Group* parent) : Group(parent, "ping", "ping mode: echo requests and their replies") {}

NetPeer::NetPeer(sc_core::sc_module_name name, const NetPeerParams& params, stats::Group* parent)
    : sc_module(name),
      m_params(params),
      m_mode(params.mode == "echo"   ? Mode::Echo
             : params.mode == "sink" ? Mode::Sink
             : params.mode == "ping" ? Mode::Ping
                                     : Mode::Generate),
      m_stats(parent, basename()),
      m_rng(params.seed) {
  if (params.mode != "echo" && params.mode != "sink" && params.mode != "generate" && params.mode != "ping")
    throw std::invalid_argument(std::string(basename()) + ": mode must be echo, sink, generate or ping (got '" +
                                params.mode + "')");
  if (m_mode == Mode::Ping && !(params.interval > 0 && params.timeout > 0))
    throw std::invalid_argument(std::string(basename()) + ": interval and timeout must be positive");
  if (m_mode == Mode::Generate && !(params.rate > 0))
    throw std::invalid_argument(std::string(basename()) + ": rate must be positive");
  SC_HAS_PROCESS(NetPeer);
  if (m_mode == Mode::Echo) SC_THREAD(echo_thread);
  if (m_mode == Mode::Generate) SC_THREAD(generate_thread);
  if (m_mode == Mode::Ping) {
    m_ping = std::make_unique<PingStats>(&m_stats);
    SC_THREAD(ping_thread);
  }
}

void NetPeer::send(Packet p) {
  ++m_stats.tx_packets;
  m_stats.tx_bytes += p.bytes.size();
  if (m_link) m_link->send(*this, std::move(p));
}

void NetPeer::receive(Packet&& p) {
  const sc_core::sc_time now = sc_core::sc_time_stamp();
  ++m_stats.rx_packets;
  m_stats.rx_bytes += p.bytes.size();
  PeerHeader h;
  const bool headed = peerhdr::read(p.bytes.data(), p.bytes.size(), h);
  if (headed) {
    ++m_stats.rx_headed;
    if (!(h.flags & peerhdr::kFromPeer)) {
      std::uint64_t src = 0;
      for (unsigned i = 6; i-- > 0;) src = (src << 8) | p.bytes[6 + i];
      auto [it, first] = m_next_sequence.try_emplace(src, h.sequence + 1);
      if (!first) {
        if (h.sequence != it->second) ++m_stats.rx_sequence_gaps;
        it->second = h.sequence + 1;
      }
    }
  }
  if (headed && (h.flags & peerhdr::kStamped) && h.timestamp_ps <= now.value()) {
    const std::uint64_t ns = (now.value() - h.timestamp_ps) / 1000;
    if (h.flags & peerhdr::kFromPeer)
      m_stats.rtt_ns.sample(ns);
    else
      m_stats.one_way_ns.sample(ns);
  }
  if (m_ping && headed && (h.flags & peerhdr::kFromPeer)) ping_reply(h, now.value());
  if (m_mode != Mode::Echo || p.bytes.size() < 12) return;
  // The reply goes back to the sender: swap the MAC addresses.
  std::uint8_t src[6];
  std::memcpy(src, p.bytes.data() + 6, 6);
  std::memcpy(p.bytes.data() + 6, p.bytes.data(), 6);
  std::memcpy(p.bytes.data(), src, 6);
  m_echo.emplace_back(now + sc_core::sc_time::from_value(m_params.processing_delay), std::move(p));
  m_echo_kick.notify(sc_core::SC_ZERO_TIME);
}

void NetPeer::echo_thread() {
  for (;;) {
    if (m_echo.empty()) {
      sc_core::wait(m_echo_kick);
      continue;
    }
    const sc_core::sc_time now = sc_core::sc_time_stamp();
    if (m_echo.front().first > now) {
      sc_core::wait(m_echo.front().first - now);
      continue;
    }
    Packet p = std::move(m_echo.front().second);
    m_echo.pop_front();
    ++m_stats.echoed;
    send(std::move(p));
  }
}

std::uint64_t NetPeer::next_gap() {
  const double mean_ps = 1e12 / m_params.rate;
  if (m_params.arrivals == "constant") return static_cast<std::uint64_t>(std::llround(mean_ps));
  // Exponential gaps by inversion from a 53-bit uniform (the same on every
  // host, unlike std::exponential_distribution).
  const double u = static_cast<double>(m_rng() >> 11) * 0x1.0p-53;
  return static_cast<std::uint64_t>(std::llround(-std::log1p(-u) * mean_ps));
}

void NetPeer::generate_thread() {
  sc_core::wait(sc_core::sc_time::from_value(m_params.start));
  const std::uint64_t dst = nic_default_mac(m_params.dest_function);
  for (std::uint64_t n = 0; m_params.count == 0 || n < m_params.count; ++n) {
    // The peer's own NIC does not queue without bound: a frame waits for
    // the wire to be free before it is generated and stamped.
    if (m_link) {
      const sc_core::sc_time now = sc_core::sc_time_stamp();
      const sc_core::sc_time free = m_link->free_at(*this);
      if (free > now) sc_core::wait(free - now);
    }
    Packet p;
    p.bytes.assign(m_params.packet_size, 0);
    PeerHeader h{peerhdr::kMagic, peerhdr::kFromPeer | peerhdr::kStamped, m_sequence++,
                 sc_core::sc_time_stamp().value()};
    peerhdr::write(p.bytes.data(), dst, peerhdr::kPeerMac, h);
    for (std::size_t i = peerhdr::kMinFrame; i < p.bytes.size(); ++i)
      p.bytes[i] = static_cast<std::uint8_t>(h.sequence + i);  // content a receiver can check
    ++m_stats.generated;
    send(std::move(p));
    sc_core::wait(sc_core::sc_time::from_value(next_gap()));
  }
}

// Ping mode: an echo request every `interval` (a timed frame, as the
// generator's) to the function's MAC; software in the VM sends it back. The
// peer remembers each request until its reply or its timeout.
void NetPeer::ping_thread() {
  sc_core::wait(sc_core::sc_time::from_value(m_params.start));
  const std::uint64_t dst = nic_default_mac(m_params.dest_function);
  for (std::uint64_t n = 0; m_params.count == 0 || n < m_params.count; ++n) {
    const std::uint64_t now = sc_core::sc_time_stamp().value();
    // Requests whose timeout has passed are lost (a reply may still come: late).
    while (!m_unanswered.empty() && m_unanswered.begin()->second + m_params.timeout <= now) {
      m_expired.insert(m_unanswered.begin()->first);
      m_unanswered.erase(m_unanswered.begin());
      ++m_ping->lost;
    }
    // A gap still open (no reply since the last one) counts as it stands.
    if (n > 0) note_gap(m_replied ? m_last_reply_ps : m_first_sent_ps, now);
    Packet p;
    p.bytes.assign(std::max<std::uint64_t>(m_params.packet_size, peerhdr::kMinFrame), 0);
    PeerHeader h{peerhdr::kMagic, peerhdr::kFromPeer | peerhdr::kStamped, m_sequence++, now};
    peerhdr::write(p.bytes.data(), dst, peerhdr::kPeerMac, h);
    if (n == 0) m_first_sent_ps = now;
    m_unanswered.emplace(h.sequence, now);
    ++m_ping->sent;
    m_ping->outstanding.set(static_cast<double>(m_unanswered.size()));
    send(std::move(p));
    sc_core::wait(sc_core::sc_time::from_value(m_params.interval));
  }
}

void NetPeer::note_gap(std::uint64_t from_ps, std::uint64_t to_ps) {
  const auto ns = static_cast<double>((to_ps - from_ps) / 1000);
  if (ns > m_ping->max_gap_ns.value()) {
    m_ping->max_gap_ns.set(ns);
    m_ping->max_gap_from_ns.set(static_cast<double>(from_ps / 1000));
  }
}

void NetPeer::ping_reply(const PeerHeader& h, std::uint64_t now_ps) {
  auto it = m_unanswered.find(h.sequence);
  if (it == m_unanswered.end()) {
    if (m_expired.erase(h.sequence)) ++m_ping->late;
    return;  // a duplicate, or a late reply
  }
  m_unanswered.erase(it);
  ++m_ping->replies;
  m_ping->outstanding.set(static_cast<double>(m_unanswered.size()));
  const std::uint64_t since = m_replied ? m_last_reply_ps : m_first_sent_ps;
  const std::uint64_t gap = now_ps - since;
  if (m_replied) m_ping->gap_ns.sample(gap / 1000);
  else m_ping->first_reply_ns.set(static_cast<double>(now_ps / 1000));
  note_gap(since, now_ps);
  m_replied = true;
  m_last_reply_ps = now_ps;
  m_ping->last_reply_ns.set(static_cast<double>(now_ps / 1000));
}

}  // namespace vmx::models
