// A simple Ethernet switch between several hosts' NICs and the network peer
// (docs/migration.md, "A switch between the hosts").
//
// Store-and-forward: each port is one end of its own full-duplex link
// (models/eth_link.h), which delivers a frame once its last bit has arrived;
// the switch then learns the frame's source MAC on the port it came in by
// (IEEE 802.1D's learning: a MAC seen on another port than the table says
// moves there), and after `latency` (the forwarding decision) forwards it:
// to the port its destination MAC was learned on, or, for a broadcast,
// multicast or not-yet-learned address, to every port but the one it came
// in by (flooding). A frame for the port it came from is filtered.
//
// Each port's output queue is the frames handed to its link that have not
// yet left the wire; it holds at most `port_buffer` bytes. A frame that
// would exceed that is dropped and counted (tail drop). The link
// serializes the queue in order, so ports that send to one port share its
// bandwidth in the order their frames arrive.
#pragma once

#include <systemc>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "models/eth_link.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::models {

struct EthSwitchParams {
  bool enabled;
  std::uint64_t latency;      // ps
  std::uint64_t port_buffer;  // bytes

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(enabled, "enabled", "false", Spec(Unit::Flag),
            "Join the hosts (and the network peer) through one switch, each by its own link (network.link's "
            "parameters), instead of one direct link between two hosts.");
    v.param(latency, "latency", "500ns", Spec(Unit::Time),
            "Forwarding delay of a store-and-forward switch: from a frame's last bit in to its queueing on the "
            "output port. Default: 500 ns (assumption: the order of 10GbE top-of-rack switch ASICs' port-to-port "
            "latency, 0.3-1 us in vendors' data sheets).");
    v.param(port_buffer, "port_buffer", "128KiB", Spec(Unit::Bytes).at_least(1514),
            "Bytes each output port may hold queued (frames beyond are dropped). Default: 128 KiB (assumption: a "
            "shallow-buffered top-of-rack switch, about 12 MB shared by 96 ports).");
  }
};

struct SwitchPortStats : stats::Group {
  SwitchPortStats(stats::Group* parent, const std::string& name);
  stats::Counter rx_frames{this, "rx_frames", "frames", "frames received on the port"};
  stats::Counter rx_bytes{this, "rx_bytes", "bytes", "bytes of those frames"};
  stats::Counter tx_frames{this, "tx_frames", "frames", "frames queued for sending out of the port"};
  stats::Counter tx_bytes{this, "tx_bytes", "bytes", "bytes of those frames"};
  stats::Counter flooded{this, "flooded", "frames",
                         "frames sent out of the port by flooding (broadcast or unknown destination)"};
  stats::Counter drops{this, "drops", "frames", "frames dropped because the output queue was full"};
  stats::Histogram queue_ns{this, "queue_ns", "ns", "time a frame waited in the output queue for the wire"};
  stats::Gauge max_queue_bytes{this, "max_queue_bytes", "bytes", "largest output-queue occupancy"};
  stats::Counter learned{this, "learned", "addresses", "source MACs learned on this port (new or moved here)"};
};

struct SwitchStats : stats::Group {
  SwitchStats(stats::Group* parent, const std::string& name);
  stats::Counter forwarded{this, "forwarded", "frames", "frames sent to the one port their destination was learned on"};
  stats::Counter flooded{this, "flooded", "frames", "frames flooded (broadcast, multicast or unknown destination)"};
  stats::Counter filtered{this, "filtered", "frames", "frames whose destination was learned on their own port"};
  stats::Counter moves{this, "moves", "events", "learned MACs seen again on another port (the table entry moved)"};
  stats::Gauge table_entries{this, "table_entries", "entries", "MAC addresses in the table"};
  stats::Gauge last_move_ns{this, "last_move_ns", "ns", "simulated time at which a MAC last moved to another port"};
};

class EthSwitch : public sc_core::sc_module {
 public:
  /// Statistics go under parent as `name` (per port: `port.<port name>`).
  EthSwitch(sc_core::sc_module_name name, const EthSwitchParams& params, stats::Group* parent);
  ~EthSwitch() override;

  /// Adds a port named `port_name`, the switch's end of `link` (bind the
  /// link to the returned endpoint). Before simulation.
  PacketEndpoint& add_port(const std::string& port_name, EthLink& link);

  unsigned ports() const { return static_cast<unsigned>(m_ports.size()); }
  /// The port a MAC was last learned on, or -1.
  int lookup(std::uint64_t mac) const;
  const SwitchStats& stats() const { return m_stats; }
  const SwitchPortStats& port_stats(unsigned port) const;

 private:
  struct Port;
  void ingress(Port& in, Packet&& p);
  void forward_thread();
  void egress(Port& out, const Packet& p, bool flooded);

  EthSwitchParams m_params;
  SwitchStats m_stats;
  stats::Group& m_port_group;
  std::vector<std::unique_ptr<Port>> m_ports;
  std::unordered_map<std::uint64_t, unsigned> m_table;  // MAC -> port
  // Frames waiting for the forwarding decision, by time (constant latency:
  // in arrival order).
  struct Pending {
    sc_core::sc_time at;
    unsigned in;
    Packet p;
  };
  std::deque<Pending> m_pending;
  sc_core::sc_event m_pushed;
};

}  // namespace vmx::models
