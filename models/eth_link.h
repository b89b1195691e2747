// A full-duplex Ethernet link between two endpoints (the NIC and the network
// peer): each direction serializes frames one after another at the link's
// bandwidth, then delivers each frame a fixed latency after its last bit left.
//
// On the wire a frame of n bytes (destination MAC to payload, no FCS) takes
// max(n, min_frame) + frame_overhead bytes: padding to the 60-byte minimum,
// then the 4-byte FCS, the 8-byte preamble and start delimiter, and the
// 12-byte inter-frame gap (IEEE 802.3, clauses 3.1.1 and 4.4.2).
#pragma once

#include <systemc>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::models {

/// An Ethernet frame from the destination MAC to the end of the payload.
struct Packet {
  std::vector<std::uint8_t> bytes;
};

/// What sits at either end of a link.
class PacketEndpoint {
 public:
  virtual ~PacketEndpoint() = default;
  /// A frame has arrived (called at its arrival time, from the link's thread).
  virtual void receive(Packet&& p) = 0;
};

struct EthLinkParams {
  double bandwidth_gbps;
  std::uint64_t latency;  // ps
  std::uint32_t frame_overhead;
  std::uint32_t min_frame;
  std::uint64_t drop_every;

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(bandwidth_gbps, "bandwidth_gbps", "10.0", Spec(Unit::Ratio).at_least(0.001),
            "Line rate of each direction in Gbit/s. Default: 10 (10GBASE-R, IEEE 802.3 clause 49).");
    v.param(latency, "latency", "1us", Spec(Unit::Time),
            "One-way latency from the last bit leaving one end to the frame's delivery at the other (cable, "
            "PHYs, one switch). Default: 1 us (assumption: a cut-through top-of-rack switch and two PHYs).");
    v.param(frame_overhead, "frame_overhead", "24", Spec(Unit::Bytes),
            "Wire bytes per frame beyond its contents: FCS 4 + preamble and SFD 8 + inter-frame gap 12 "
            "(IEEE 802.3 clauses 3.1.1, 4.4.2).");
    v.param(min_frame, "min_frame", "60", Spec(Unit::Bytes),
            "Shorter frames are padded to this many bytes before the FCS (IEEE 802.3: 64-byte minimum "
            "frame including the 4-byte FCS).");
    v.param(drop_every, "drop_every", "0", Spec(Unit::Count),
            "Fault injection: every Nth frame sent in each direction is lost on the wire (as a frame whose FCS "
            "fails at the receiver), counted in the direction's `dropped`; 0: none (default: a lossless link).");
  }
};

struct LinkDirectionStats : stats::Group {
  LinkDirectionStats(stats::Group* parent, const std::string& name);
  stats::Counter packets{this, "packets", "frames", "frames sent in this direction"};
  stats::Counter bytes{this, "bytes", "bytes", "frame bytes (destination MAC to payload)"};
  stats::Counter wire_bytes{this, "wire_bytes", "bytes", "bytes on the wire, padding and overhead included"};
  stats::Counter busy_ps{this, "busy_ps", "ps", "time the wire spent serializing"};
  stats::Histogram queue_ns{this, "queue_ns", "ns", "time a frame waited for the wire to become free"};
  /// Only with drop_every (so that a lossless link's statistics keep their keys).
  std::unique_ptr<stats::Counter> dropped;
};

class EthLink : public sc_core::sc_module {
 public:
  /// Statistics go under parent as `name`, one group per direction.
  EthLink(sc_core::sc_module_name name, const EthLinkParams& params, stats::Group* parent);
  ~EthLink() override;

  /// Connects the two ends; names label the directions' statistics
  /// ("<a>_to_<b>", "<b>_to_<a>"). Call once, before simulation.
  void bind(PacketEndpoint& a, const std::string& a_name, PacketEndpoint& b, const std::string& b_name);

  /// `from` hands a frame to its end of the link at the current time. Its
  /// serialization starts when the wire in that direction is free. Returns
  /// the time the last bit leaves; delivery follows `latency` later.
  sc_core::sc_time send(const PacketEndpoint& from, Packet p);
  /// When the wire leaving `from` is free again (no later than now).
  sc_core::sc_time free_at(const PacketEndpoint& from) const;
  /// Serialization time of a frame of `bytes` bytes.
  sc_core::sc_time serialization(std::size_t bytes) const;

  const EthLinkParams& params() const { return m_params; }
  const LinkDirectionStats& stats(const PacketEndpoint& from) const;

 private:
  struct Direction;
  Direction& dir(const PacketEndpoint& from) const;
  void deliver(Direction& d);
  void deliver_ab() { deliver(*m_ab); }
  void deliver_ba() { deliver(*m_ba); }

  EthLinkParams m_params;
  stats::Group* m_parent;
  std::unique_ptr<Direction> m_ab, m_ba;
};

}  // namespace vmx::models
