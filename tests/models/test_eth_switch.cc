// The Ethernet switch (models/eth_switch.h) between test hosts: learning,
// flooding of unknown destinations, forwarding timing (store-and-forward),
// a MAC moving to another port, and two senders sharing one output port
// (its bandwidth split, the excess dropped at the bounded queue). Each test
// case elaborates its own design, so runs in its own process.
#include "models/eth_switch.h"

#include <catch2/catch.hpp>

#include <map>
#include <random>
#include <memory>
#include <vector>

using namespace vmx;
using sc_core::SC_MS;
using sc_core::SC_NS;
using sc_core::SC_US;
using sc_core::sc_time;

namespace {

constexpr std::uint64_t mac(unsigned i) { return 0x02ull | (std::uint64_t(0x10 + i) << 40); }

models::Packet frame(std::uint64_t dst, std::uint64_t src, std::size_t size) {
  models::Packet p;
  p.bytes.assign(size, 0);
  for (unsigned i = 0; i < 6; ++i) {
    p.bytes[i] = static_cast<std::uint8_t>(dst >> (8 * i));
    p.bytes[6 + i] = static_cast<std::uint8_t>(src >> (8 * i));
  }
  return p;
}

std::uint64_t src_of(const models::Packet& p) {
  std::uint64_t v = 0;
  for (unsigned i = 6; i-- > 0;) v = (v << 8) | p.bytes[6 + i];
  return v;
}

/// A host at the end of a port's link: sends what it is told (waiting for
/// its wire, as a NIC does), records what arrives by source MAC and time.
struct Host : sc_core::sc_module, models::PacketEndpoint {
  SC_HAS_PROCESS(Host);
  explicit Host(sc_core::sc_module_name n) : sc_module(n) { SC_THREAD(run); }
  models::EthLink* link = nullptr;
  struct Send {
    sc_time at;
    std::uint64_t dst, src;
    std::size_t size;
    unsigned count;
    bool jitter = false;  // idle a random time (up to one frame) after each frame
  };
  std::vector<Send> plan;
  std::map<std::uint64_t, std::uint64_t> got;  // by source MAC
  std::vector<sc_time> arrivals;
  std::uint64_t sent = 0;
  std::mt19937_64 rng{1};
  void receive(models::Packet&& p) override {
    ++got[src_of(p)];
    arrivals.push_back(sc_core::sc_time_stamp());
  }
  void run() {
    for (const Send& s : plan) {
      if (s.at > sc_core::sc_time_stamp()) wait(s.at - sc_core::sc_time_stamp());
      for (unsigned k = 0; k < s.count; ++k) {
        const sc_time free = link->free_at(*this);
        if (free > sc_core::sc_time_stamp()) wait(free - sc_core::sc_time_stamp());
        const sc_time done = link->send(*this, frame(s.dst, s.src, s.size));
        ++sent;
        if (s.jitter) {
          const sc_time idle = (done - sc_core::sc_time_stamp()) * (static_cast<double>(rng() >> 11) * 0x1.0p-53);
          wait(done - sc_core::sc_time_stamp() + idle);
        }
      }
    }
  }
};

/// A switch with `n` hosts, each on its own 10 Gbit/s link.
struct Bench {
  explicit Bench(unsigned n, std::uint64_t port_buffer = 128 << 10) {
    auto sp = cfg::defaults<models::EthSwitchParams>();
    sp.enabled = true;
    sp.port_buffer = port_buffer;
    sw = std::make_unique<models::EthSwitch>("switch", sp, &root);
    auto lp = cfg::defaults<models::EthLinkParams>();
    lp.latency = 500'000;  // 500 ns
    for (unsigned i = 0; i < n; ++i) {
      const std::string name = "h" + std::to_string(i);
      links.push_back(std::make_unique<models::EthLink>(("link_" + name).c_str(), lp, &root));
      hosts.push_back(std::make_unique<Host>(name.c_str()));
      hosts.back()->link = links.back().get();
      links.back()->bind(*hosts.back(), name, sw->add_port(name, *links.back()), "switch");
    }
  }
  stats::Group root;
  std::unique_ptr<models::EthSwitch> sw;
  std::vector<std::unique_ptr<models::EthLink>> links;
  std::vector<std::unique_ptr<Host>> hosts;
  sc_time ser(std::size_t n) const { return links[0]->serialization(n); }
};

}  // namespace

TEST_CASE("switch: an unknown destination is flooded, a learned one forwarded, store-and-forward timing") {
  Bench b(3);
  b.hosts[0]->plan = {{sc_time(1, SC_US), mac(2), mac(0), 100, 1}, {sc_time(20, SC_US), mac(2), mac(0), 100, 1}};
  b.hosts[2]->plan = {{sc_time(10, SC_US), mac(0), mac(2), 100, 1}};
  sc_core::sc_start(sc_time(50, SC_US));
  // The first frame reached both other hosts (flooded); the reply only host
  // 0 (its source was learned), the second frame only host 2.
  CHECK(b.hosts[1]->got[mac(0)] == 1);
  CHECK(b.hosts[2]->got[mac(0)] == 2);
  CHECK(b.hosts[0]->got[mac(2)] == 1);
  CHECK(b.hosts[1]->got.count(mac(2)) == 0);
  CHECK(b.sw->stats().flooded.value() == 1);
  CHECK(b.sw->stats().forwarded.value() == 2);
  CHECK(b.sw->stats().table_entries.value() == 2);
  CHECK(b.sw->port_stats(1).flooded.value() == 1);
  CHECK(b.sw->lookup(mac(0)) == 0);
  CHECK(b.sw->lookup(mac(2)) == 2);
  // Two serializations, two link latencies and the forwarding delay.
  const sc_time expect = sc_time(1, SC_US) + 2 * b.ser(100) + 2 * sc_time(500, SC_NS) + sc_time(500, SC_NS);
  REQUIRE(!b.hosts[2]->arrivals.empty());
  CHECK(b.hosts[2]->arrivals[0] == expect);
}

TEST_CASE("switch: a MAC seen on another port moves there") {
  Bench b(3);
  b.hosts[0]->plan = {{sc_time(1, SC_US), mac(2), mac(7), 64, 1}};   // 7 lives on port 0
  b.hosts[2]->plan = {{sc_time(10, SC_US), mac(7), mac(2), 64, 1},   // forwarded to port 0
                      {sc_time(30, SC_US), mac(7), mac(2), 64, 1}};  // after the move: port 1
  b.hosts[1]->plan = {{sc_time(20, SC_US), 0xFFFFFFFFFFFFull, mac(7), 64, 1}};  // 7 announces itself on port 1
  sc_core::sc_start(sc_time(50, SC_US));
  CHECK(b.sw->stats().moves.value() == 1);
  CHECK(b.sw->lookup(mac(7)) == 1);
  CHECK(b.hosts[0]->got[mac(2)] == 1);
  CHECK(b.hosts[1]->got[mac(2)] == 1);
  CHECK(b.sw->port_stats(1).learned.value() == 1);
}

TEST_CASE("switch: two hosts sending to a third share its port's bandwidth, the excess dropped") {
  Bench b(3);
  const unsigned n = 2000;
  // Host 2 makes itself known, then hosts 0 and 1 send to it, each at two
  // thirds of the line rate on average (a random idle time after each
  // frame, as independent hosts: strictly periodic senders in lockstep would
  // let one of them always find the room a departure frees, the lock-out of
  // tail drop).
  b.hosts[2]->plan = {{sc_time(1, SC_US), mac(0), mac(2), 64, 1}};
  b.hosts[0]->plan = {{sc_time(10, SC_US), mac(2), mac(0), 1514, n, true}};
  b.hosts[1]->plan = {{sc_time(10, SC_US), mac(2), mac(1), 1514, n, true}};
  b.hosts[1]->rng.seed(2);
  sc_core::sc_start(sc_time(10, SC_MS));
  const auto& out = b.sw->port_stats(2);
  const std::uint64_t from0 = b.hosts[2]->got[mac(0)], from1 = b.hosts[2]->got[mac(1)];
  // 4/3 of the line rate offered: about three quarters of it leaves, split
  // evenly, the rest dropped at the full queue.
  INFO("from host 0: " << from0 << ", from host 1: " << from1 << ", dropped " << out.drops.value());
  CHECK(from0 + from1 == out.tx_frames.value());
  CHECK(out.drops.value() == 2 * n - out.tx_frames.value());
  CHECK(out.drops.value() > n / 4);
  CHECK(out.tx_frames.value() > n * 13 / 10);
  CHECK(out.tx_frames.value() < n * 16 / 10);
  CHECK(from0 > out.tx_frames.value() * 47 / 100);
  CHECK(from1 > out.tx_frames.value() * 47 / 100);
  // The output queue was full (within one frame of its bound) and the port's
  // wire busy throughout: frames delivered at the line rate.
  CHECK(out.max_queue_bytes.value() > (128 << 10) - 1514);
  CHECK(out.max_queue_bytes.value() <= (128 << 10));
  const sc_time span = b.hosts[2]->arrivals.back() - b.hosts[2]->arrivals[1];
  const double rate = static_cast<double>(b.hosts[2]->arrivals.size() - 2) / span.to_seconds();
  const double line = 1.0 / b.ser(1514).to_seconds();
  INFO("rate " << rate << " of " << line);
  CHECK(rate > 0.97 * line);
  CHECK(rate <= 1.0001 * line);
}
