// The network peer and the link, driven through a test endpoint at the other
// end of the link: generation at a rate (constant and seeded Poisson), the
// payload header, echo timing, round-trip measurement, sink. Each test case
// elaborates its own design, so runs in its own process.
#include "models/net_peer.h"

#include <catch2/catch.hpp>

#include <memory>

#include "models/dma_harness.h"
#include "models/nic.h"

using namespace vmx;
using models::NetPeer;
using models::NetPeerParams;
using models::PeerHeader;
using sc_core::SC_NS;
using sc_core::SC_US;
using sc_core::sc_time;

namespace {

/// A peer, a link and a test endpoint in place of the NIC.
struct PeerBench {
  PeerBench(const NetPeerParams& pp, const std::string& name = "peer")
      : link(std::make_unique<models::EthLink>((name + "_link").c_str(), cfg::defaults<models::EthLinkParams>(),
                                               &root)),
        peer(std::make_unique<NetPeer>(name.c_str(), pp, &root)) {
    ep.link = link.get();
    peer->attach_link(*link);
    link->bind(ep, "host", *peer, "peer");
  }
  stats::Group root;
  test::TestEndpoint ep;
  std::unique_ptr<models::EthLink> link;
  std::unique_ptr<NetPeer> peer;
  sc_time ser(std::size_t n) const { return link->serialization(n); }
  sc_time lat() const { return sc_time::from_value(link->params().latency); }
};

NetPeerParams generator(const char* arrivals, double rate, std::uint64_t count) {
  auto p = cfg::defaults<NetPeerParams>();
  p.mode = "generate";
  p.arrivals = arrivals;
  p.rate = rate;
  p.count = count;
  return p;
}

}  // namespace

TEST_CASE("link: serialization counts padding and Ethernet overhead at the line rate") {
  stats::Group root;
  models::EthLink link("link", cfg::defaults<models::EthLinkParams>(), &root);
  // 10 Gbit/s: 0.8 ns per byte. 64 + 24 wire bytes; a 20-byte frame is padded to 60.
  CHECK(link.serialization(64) == sc_time(70.4, SC_NS));
  CHECK(link.serialization(20) == sc_time(67.2, SC_NS));
  CHECK(link.serialization(1500) == sc_time(1219.2, SC_NS));
}

TEST_CASE("generate, constant: frames at the configured rate with sequence, timestamp and destination") {
  auto pp = generator("constant", 1e6, 5);  // one frame per microsecond
  pp.start = 10'000'000;                    // 10 us
  pp.packet_size = 128;
  pp.dest_function = 2;
  PeerBench b(pp);
  sc_core::sc_start(sc_time(100, SC_US));
  REQUIRE(b.ep.got.size() == 5);
  for (unsigned i = 0; i < 5; ++i) {
    const auto& r = b.ep.got[i];
    const sc_time sent = sc_time(10 + i, SC_US);
    CHECK(r.at == sent + b.ser(128) + b.lat());
    REQUIRE(r.p.bytes.size() == 128);
    PeerHeader h;
    REQUIRE(models::peerhdr::read(r.p.bytes.data(), r.p.bytes.size(), h));
    CHECK(h.sequence == i);
    CHECK(h.timestamp_ps == sent.value());
    CHECK(h.flags == (models::peerhdr::kFromPeer | models::peerhdr::kStamped));
    const std::uint64_t dst = models::nic_default_mac(2);
    for (int k = 0; k < 6; ++k) CHECK(r.p.bytes[k] == std::uint8_t(dst >> (8 * k)));
    CHECK(r.p.bytes[12] == 0x88);
    CHECK(r.p.bytes[13] == 0xB5);
  }
  CHECK(b.peer->stats().generated.value() == 5);
  CHECK(b.peer->stats().tx_bytes.value() == 5 * 128);
}

TEST_CASE("generate, Poisson: seeded and reproducible, with the configured mean rate") {
  constexpr unsigned kN = 4000;
  auto pp = generator("poisson", 1e6, kN);
  PeerBench a(pp, "a"), b(pp, "b");
  pp.seed = 2;
  PeerBench c(pp, "c");
  sc_core::sc_start(sc_time(1, sc_core::SC_SEC));
  REQUIRE(a.ep.got.size() == kN);
  REQUIRE(b.ep.got.size() == kN);
  REQUIRE(c.ep.got.size() == kN);
  bool same_ab = true, same_ac = true;
  for (unsigned i = 0; i < kN; ++i) {
    same_ab = same_ab && a.ep.got[i].at == b.ep.got[i].at;
    same_ac = same_ac && a.ep.got[i].at == c.ep.got[i].at;
  }
  CHECK(same_ab);
  CHECK_FALSE(same_ac);
  // Mean gap within 5% of 1 us (the standard error over 4000 exponential
  // gaps is about 1.6%); the squared coefficient of variation of an
  // exponential is 1.
  const double span_us = (a.ep.got.back().at - a.ep.got.front().at).to_seconds() * 1e6;
  const double mean = span_us / (kN - 1);
  CHECK(mean == Approx(1.0).epsilon(0.05));
  double var = 0;
  for (unsigned i = 1; i < kN; ++i) {
    const double g = (a.ep.got[i].at - a.ep.got[i - 1].at).to_seconds() * 1e6;
    var += (g - mean) * (g - mean);
  }
  var /= (kN - 2);
  CHECK(var / (mean * mean) == Approx(1.0).epsilon(0.15));
}

TEST_CASE("echo: each frame comes back to its sender after serialization, latency and processing, twice") {
  auto pp = cfg::defaults<NetPeerParams>();
  pp.mode = "echo";
  PeerBench b(pp);
  std::vector<std::uint8_t> fr(100);
  for (std::size_t i = 0; i < fr.size(); ++i) fr[i] = std::uint8_t(i);
  test::TestInitiator driver("driver");
  test::run(driver, [&] {
    sc_core::wait(sc_time(1, SC_US));
    b.ep.send(fr);
  });
  REQUIRE(b.ep.got.size() == 1);
  const sc_time proc = sc_time::from_value(pp.processing_delay);
  CHECK(b.ep.got[0].at == sc_time(1, SC_US) + 2 * (b.ser(100) + b.lat()) + proc);
  // MACs swapped, the rest unchanged.
  for (int k = 0; k < 6; ++k) {
    CHECK(b.ep.got[0].p.bytes[k] == fr[6 + k]);
    CHECK(b.ep.got[0].p.bytes[6 + k] == fr[k]);
  }
  CHECK(std::equal(fr.begin() + 12, fr.end(), b.ep.got[0].p.bytes.begin() + 12));
  CHECK(b.peer->stats().echoed.value() == 1);
}

TEST_CASE("generated frames that come back are timed: rtt histogram of the round trip") {
  auto pp = generator("constant", 1e5, 10);  // every 10 us
  pp.packet_size = 64;
  PeerBench b(pp);
  b.ep.reflect = true;  // the far end returns every frame at once
  sc_core::sc_start(sc_time(1, sc_core::SC_MS));
  const auto& h = b.peer->stats().rtt_ns;
  CHECK(h.count() == 10);
  const std::uint64_t rtt_ns = (2 * (b.ser(64) + b.lat())).value() / 1000;
  CHECK(h.min() == rtt_ns);
  CHECK(h.max() == rtt_ns);
  CHECK(h.percentile(99) == rtt_ns);
  CHECK(b.peer->stats().rx_packets.value() == 10);
}

TEST_CASE("sink: counts and discards, and stamped frames from the host get a one-way latency") {
  auto pp = cfg::defaults<NetPeerParams>();
  pp.mode = "sink";
  PeerBench b(pp);
  test::TestInitiator driver("driver");
  test::run(driver, [&] {
    std::vector<std::uint8_t> fr(64);
    PeerHeader h{models::peerhdr::kMagic, models::peerhdr::kStamped, 0, sc_core::sc_time_stamp().value()};
    models::peerhdr::write(fr.data(), models::peerhdr::kPeerMac, models::nic_default_mac(0), h);
    b.ep.send(fr);
    b.ep.send(std::vector<std::uint8_t>(300, 0));
  });
  CHECK(b.peer->stats().rx_packets.value() == 2);
  CHECK(b.peer->stats().rx_bytes.value() == 364);
  CHECK(b.peer->stats().tx_packets.value() == 0);
  CHECK(b.peer->stats().one_way_ns.count() == 1);
  CHECK(b.peer->stats().one_way_ns.min() == (b.ser(64) + b.lat()).value() / 1000);
  CHECK(b.ep.got.empty());
}
