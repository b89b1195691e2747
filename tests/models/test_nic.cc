// The SR-IOV NIC driven through its sockets: the test plays the driver (MMIO
// through a test initiator, rings and buffers written into PhysMem), the NIC
// DMAs through a real root complex (and a real IOMMU where stated), frames go
// over a real link to a test endpoint or the network peer, and MSIs reach a
// fake interrupt fabric. Each test case elaborates its own design, so runs
// in its own process.
#include "models/nic.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <memory>

#include "cpu/core.h"
#include "models/dma_harness.h"
#include "models/net_peer.h"
#include "platform/platform.h"
#include "models/root_complex.h"
#include "sim/fiber.h"

using namespace vmx;
using models::Nic;
using models::NicParams;
using sc_core::SC_NS;
using sc_core::sc_time;
namespace reg = models::nicreg;

namespace {

// Root complex at 1 GHz (one cycle = 1 ns), 100-cycle memory, 16 bytes per
// cycle: a DMA of n bytes takes 100 + ceil(n / 16) ns with the IOMMU off.
constexpr std::uint64_t kMemLat = 100;
std::uint64_t dma_ns(std::uint64_t n) { return kMemLat + (n + 15) / 16; }

constexpr std::uint64_t kMsiAddr = 0xFEE00000;

struct Bench {
  /// With peer parameters the far end is a NetPeer, else a TestEndpoint.
  /// default_timing: the root complex keeps its default parameters.
  explicit Bench(unsigned vfs = 3, bool with_iommu = false, const models::NetPeerParams* pp = nullptr,
                 bool default_timing = false)
      : mem(64ull << 20), rc_params(cfg::defaults<models::RootComplexParams>()) {
    if (!default_timing) {
      rc_params.frequency = 1'000'000'000;
      rc_params.memory_latency = kMemLat;
      rc_params.bytes_per_cycle = 16;
    }
    nic_params = cfg::defaults<NicParams>();
    nic_params.vfs = vfs;
    table_mem = std::make_unique<models::IommuTableMemory>(mem, nullptr, rc_params);
    unit = std::make_unique<iommu::Iommu>(cfg::defaults<iommu::IommuParams>(), *table_mem, &root);
    regs = std::make_unique<iommu::VtdRegisters>(cfg::defaults<iommu::VtdParams>(), *unit, nullptr, *table_mem, &root);
    rc = std::make_unique<models::RootComplex>("rc", rc_params, mem, with_iommu ? unit.get() : nullptr, nullptr,
                                               &root);
    nic = std::make_unique<Nic>("nic", nic_params, &root);
    link = std::make_unique<models::EthLink>("link", cfg::defaults<models::EthLinkParams>(), &root);
    cpu = std::make_unique<test::TestInitiator>("cpu");
    cpu->socket.bind(nic->mmio);
    nic->dma.bind(rc->dma);
    rc->bind_msi_sink(&msi);
    nic->attach_link(*link);
    if (pp) {
      peer = std::make_unique<models::NetPeer>("peer", *pp, &root);
      peer->attach_link(*link);
      link->bind(*nic, "nic", *peer, "peer");
    } else {
      ep.link = link.get();
      link->bind(*nic, "nic", ep, "peer");
    }
  }

  std::uint64_t reg_addr(unsigned f, std::uint32_t off) const { return nic->window(f) + off; }
  std::uint32_t rd(unsigned f, std::uint32_t off) { return cpu->read32(reg_addr(f, off)); }
  void wr(unsigned f, std::uint32_t off, std::uint32_t v) { cpu->write32(reg_addr(f, off), v); }

  /// Writes descriptor i of the ring at ring (physical) with buffer and length.
  void put_desc(std::uint64_t ring, unsigned i, std::uint64_t buf, std::uint16_t len) {
    mem.write(ring + i * 16, buf, 8);
    mem.write(ring + i * 16 + 8, len, 4);  // length, status 0
    mem.write(ring + i * 16 + 12, 0, 4);
  }
  std::uint16_t desc_status(std::uint64_t ring, unsigned i) { return std::uint16_t(mem.read(ring + i * 16 + 10, 2)); }
  std::uint16_t desc_len(std::uint64_t ring, unsigned i) { return std::uint16_t(mem.read(ring + i * 16 + 8, 2)); }

  void setup_tx(unsigned f, std::uint64_t ring, unsigned size) {
    wr(f, reg::kTxBaseLo, std::uint32_t(ring));
    wr(f, reg::kTxBaseHi, std::uint32_t(ring >> 32));
    wr(f, reg::kTxSize, size);
    wr(f, reg::kCtrl, rd(f, reg::kCtrl) | reg::kCtrlTxEn);
  }
  /// size descriptors with buffers of buf_size at bufs; size - 1 given to the NIC.
  void setup_rx(unsigned f, std::uint64_t ring, unsigned size, std::uint64_t bufs, std::uint16_t buf_size) {
    for (unsigned i = 0; i < size; ++i) put_desc(ring, i, bufs + i * 0x1000, buf_size);
    wr(f, reg::kRxBaseLo, std::uint32_t(ring));
    wr(f, reg::kRxBaseHi, std::uint32_t(ring >> 32));
    wr(f, reg::kRxSize, size);
    wr(f, reg::kRxTail, size - 1);
    wr(f, reg::kCtrl, rd(f, reg::kCtrl) | reg::kCtrlRxEn);
  }
  void setup_msix(unsigned f, std::uint32_t data, std::uint32_t causes, bool unmask = true) {
    wr(f, reg::kMsixAddrLo, std::uint32_t(kMsiAddr));
    wr(f, reg::kMsixAddrHi, 0);
    wr(f, reg::kMsixData, data);
    wr(f, reg::kIntEnable, causes);
    if (unmask) wr(f, reg::kMsixCtrl, 0);
  }

  /// A frame of n bytes to function f's reset MAC, content from seed.
  std::vector<std::uint8_t> frame(unsigned f, std::size_t n, std::uint8_t seed) const {
    std::vector<std::uint8_t> b(n);
    const std::uint64_t mac = models::nic_default_mac(f);
    for (int i = 0; i < 6; ++i) b[i] = std::uint8_t(mac >> (8 * i));
    for (std::size_t i = 6; i < n; ++i) b[i] = std::uint8_t(seed * 31 + i);
    return b;
  }

  stats::Group root;
  models::PhysMem mem;
  models::RootComplexParams rc_params;
  NicParams nic_params;
  std::unique_ptr<models::IommuTableMemory> table_mem;
  std::unique_ptr<iommu::Iommu> unit;
  std::unique_ptr<iommu::VtdRegisters> regs;  // software's way to program the unit
  std::unique_ptr<models::RootComplex> rc;
  std::unique_ptr<Nic> nic;
  std::unique_ptr<models::EthLink> link;
  std::unique_ptr<test::TestInitiator> cpu;
  std::unique_ptr<models::NetPeer> peer;
  test::TestEndpoint ep;
  test::FakeMsiSink msi;
};

}  // namespace

TEST_CASE("registers: reset values, write masks, read-only and W1C fields") {
  Bench b;
  std::vector<std::uint32_t> r;
  tlm::tlm_response_status beyond{}, misaligned{};
  test::run(*b.cpu, [&] {
    for (unsigned f = 0; f < 2; ++f) {
      CHECK(b.rd(f, reg::kCtrl) == 0);
      CHECK(b.rd(f, reg::kStatus) == reg::kStatusLinkUp);
      CHECK(b.rd(f, reg::kId) == (f | (f ? 0x100u : 0u) | std::uint32_t(b.nic->requester(f)) << 16));
      CHECK(b.rd(f, reg::kMacLo) == 0x02);
      CHECK(b.rd(f, reg::kMacHi) == f << 8);
      CHECK(b.rd(f, reg::kMsixCtrl) == 1);  // vector masked at reset
      for (std::uint32_t off : {reg::kTxBaseLo, reg::kTxSize, reg::kTxHead, reg::kTxTail, reg::kRxSize,
                                reg::kIntCause, reg::kIntEnable, reg::kIntPending, reg::kMsixData})
        CHECK(b.rd(f, off) == 0);
    }
    b.wr(1, reg::kTxBaseLo, 0x12345678);
    CHECK(b.rd(1, reg::kTxBaseLo) == 0x12345670);  // descriptors are 16-byte aligned
    b.wr(1, reg::kIntEnable, 0xFFFFFFFF);
    CHECK(b.rd(1, reg::kIntEnable) == reg::kCauseAll);
    b.wr(1, reg::kMsixAddrLo, 0xFEE01003);
    CHECK(b.rd(1, reg::kMsixAddrLo) == 0xFEE01000);
    b.wr(1, reg::kCtrl, 0xFFFF);
    CHECK(b.rd(1, reg::kCtrl) == (reg::kCtrlTxEn | reg::kCtrlRxEn));
    b.wr(1, reg::kCtrl, 0);
    b.wr(1, reg::kTxSize, 0x12345);
    CHECK(b.rd(1, reg::kTxSize) == 0x2345);
    b.wr(1, reg::kTxSize, 8);
    b.wr(1, reg::kTxTail, 9);  // beyond the ring: ignored
    CHECK(b.rd(1, reg::kTxTail) == 0);
    b.wr(1, reg::kTxHead, 5);  // read-only
    CHECK(b.rd(1, reg::kTxHead) == 0);
    b.wr(1, reg::kStatus, 0);  // read-only link bit
    CHECK(b.rd(1, reg::kStatus) == reg::kStatusLinkUp);
    CHECK(b.rd(1, 0x800) == 0);  // reserved
    // A QWORD access covers two registers.
    std::uint64_t q = 0x0000'0001'2345'6780ull;
    b.cpu->access(true, b.reg_addr(1, reg::kRxBaseLo), &q, 8);
    CHECK(b.rd(1, reg::kRxBaseHi) == 1);
    CHECK(b.rd(1, reg::kRxBaseLo) == 0x23456780);
    std::uint32_t v = 0;
    beyond = b.cpu->access(false, b.nic->window(4), &v, 4);  // only PF + 3 VFs
    misaligned = b.cpu->access(false, b.reg_addr(1, 2), &v, 4);
  });
  CHECK(beyond == tlm::TLM_ADDRESS_ERROR_RESPONSE);
  CHECK(misaligned == tlm::TLM_BURST_ERROR_RESPONSE);
}

TEST_CASE("registers: each function has its own window, and a function reset touches only it") {
  Bench b;
  test::run(*b.cpu, [&] {
    for (unsigned f = 0; f < 4; ++f) {
      b.wr(f, reg::kTxBaseLo, 0x1000 * (f + 1));
      b.wr(f, reg::kMsixData, 0x40 + f);
      b.wr(f, reg::kRxSize, 16 + f);
    }
    for (unsigned f = 0; f < 4; ++f) {
      CHECK(b.rd(f, reg::kTxBaseLo) == 0x1000 * (f + 1));
      CHECK(b.rd(f, reg::kMsixData) == 0x40 + f);
      CHECK(b.rd(f, reg::kRxSize) == 16 + f);
    }
    b.wr(2, reg::kCtrl, reg::kCtrlReset);
    CHECK(b.rd(2, reg::kTxBaseLo) == 0);
    CHECK(b.rd(2, reg::kMsixCtrl) == 1);
    CHECK(b.rd(1, reg::kTxBaseLo) == 0x2000);
    CHECK(b.rd(3, reg::kMsixData) == 0x43);
  });
  CHECK(b.nic->window(3) == b.nic_params.mmio_base + 3 * 4096);
}

TEST_CASE("requester IDs follow the SR-IOV First VF Offset and VF Stride") {
  stats::Group root;
  auto p = cfg::defaults<NicParams>();
  p.vfs = 3;
  p.bus = 2;
  p.device = 1;
  p.first_vf_offset = 8;
  p.vf_stride = 2;
  Nic nic("nic", p, &root);
  const std::uint16_t pf = models::requester_id(2, 1, 0);
  CHECK(nic.requester(0) == pf);
  CHECK(nic.requester(1) == pf + 8);
  CHECK(nic.requester(2) == pf + 10);
  CHECK(nic.requester(3) == pf + 12);
}

TEST_CASE("TX ring: N descriptors become N frames with their bytes, at line rate after one latency") {
  constexpr unsigned kN = 8;
  constexpr std::size_t kLen = 1000;
  Bench b;
  const unsigned f = 2;  // VF 1
  const std::uint64_t ring = 0x100000, bufs = 0x200000;
  std::vector<std::vector<std::uint8_t>> frames;
  for (unsigned i = 0; i < kN; ++i) {
    frames.push_back(b.frame(0, kLen, std::uint8_t(i)));
    b.mem.write_bytes(bufs + i * 0x1000, frames.back().data(), kLen);
    b.put_desc(ring, i, bufs + i * 0x1000, kLen);
  }
  sc_time t0;
  test::run(*b.cpu, [&] {
    b.setup_tx(f, ring, 16);
    t0 = sc_core::sc_time_stamp();
    b.wr(f, reg::kTxTail, kN);
  });
  REQUIRE(b.ep.got.size() == kN);
  const sc_time ser = b.link->serialization(kLen);
  CHECK(ser == sc_time(double((kLen + 24) * 8) / 10.0, SC_NS));  // 10 Gbit/s
  const sc_time lat = sc_time::from_value(b.link->params().latency);
  // First frame: descriptor fetch + buffer read, serialization, latency.
  CHECK(b.ep.got[0].at == t0 + sc_time(double(dma_ns(16) + dma_ns(kLen)), SC_NS) + ser + lat);
  for (unsigned i = 0; i < kN; ++i) {
    CHECK(b.ep.got[i].p.bytes == frames[i]);
    // Later frames follow back to back: the DMA for the next overlaps the
    // serialization of the current one.
    if (i) CHECK(b.ep.got[i].at - b.ep.got[i - 1].at == ser);
    CHECK(b.desc_status(ring, i) == models::nicdesc::kDd);
    CHECK(b.desc_len(ring, i) == kLen);
  }
  CHECK(b.desc_status(ring, kN) == 0);
  const auto& s = b.nic->function_stats(f);
  CHECK((s.tx_packets.value() == kN && s.tx_bytes.value() == kN * kLen));
  CHECK(b.nic->function(f).tx_head == kN);
  CHECK(b.nic->function_stats(1).tx_packets.value() == 0);
  // Every DMA carried VF 1's requester ID.
  const auto* rs = b.rc->requester_stats(b.nic->requester(f));
  REQUIRE(rs);
  CHECK(rs->reads.value() == 2 * kN);
  CHECK(rs->writes.value() == kN);
  CHECK(b.rc->requester_stats(b.nic->requester(0)) == nullptr);
  CHECK(b.link->stats(*b.nic).busy_ps.value() == kN * ser.value());
}

TEST_CASE("RX: a frame lands in the next free buffer, DD and length are written back, the MSI-X message is sent") {
  Bench b;
  const unsigned f = 3;  // VF 2
  const std::uint64_t ring = 0x100000, bufs = 0x200000;
  auto fr = b.frame(f, 300, 5);
  sc_time sent;
  test::run(*b.cpu, [&] {
    b.setup_rx(f, ring, 8, bufs, 2048);
    b.setup_msix(f, 0x4321, reg::kCauseRx);
    sent = sc_core::sc_time_stamp();
    b.ep.send(fr);
    b.ep.send(b.frame(f, 100, 6));
    sc_core::wait(sc_time(20, sc_core::SC_US));
    CHECK(b.rd(f, reg::kIntCause) == reg::kCauseRx);
    b.wr(f, reg::kIntCause, reg::kCauseRx);  // W1C
    CHECK(b.rd(f, reg::kIntCause) == 0);
    CHECK(b.rd(f, reg::kRxHead) == 2);
  });
  std::vector<std::uint8_t> got(300);
  b.mem.read_bytes(bufs, got.data(), got.size());
  CHECK(got == fr);
  CHECK((b.desc_status(ring, 0) == models::nicdesc::kDd && b.desc_len(ring, 0) == 300));
  CHECK((b.desc_status(ring, 1) == models::nicdesc::kDd && b.desc_len(ring, 1) == 100));
  CHECK(b.desc_status(ring, 2) == 0);
  REQUIRE(b.msi.got.size() == 2);
  CHECK(b.msi.got[0].m.address == kMsiAddr);
  CHECK(b.msi.got[0].m.data == 0x4321);
  CHECK(b.msi.got[0].m.requester == b.nic->requester(f));
  // The message follows the frame's arrival by the descriptor read, the
  // buffer write and the write-back.
  const sc_time arrival = sent + b.link->serialization(300) + sc_time::from_value(b.link->params().latency);
  CHECK(b.msi.got[0].at == arrival + sc_time(double(dma_ns(16) + dma_ns(300) + dma_ns(4)), SC_NS));
  const auto& s = b.nic->function_stats(f);
  CHECK((s.rx_packets.value() == 2 && s.rx_bytes.value() == 400 && s.interrupts.value() == 2));
}

TEST_CASE("RX: with no free descriptor frames are dropped and counted, until software returns descriptors") {
  Bench b;
  const unsigned f = 1;
  const std::uint64_t ring = 0x100000, bufs = 0x200000;
  test::run(*b.cpu, [&] {
    b.setup_rx(f, ring, 4, bufs, 2048);  // 3 descriptors given to the NIC
    for (int i = 0; i < 5; ++i) b.ep.send(b.frame(f, 64, std::uint8_t(i)));
    sc_core::wait(sc_time(20, sc_core::SC_US));
    CHECK(b.rd(f, reg::kRxHead) == 3);
    // Software consumes the three and gives them back.
    for (unsigned i = 0; i < 3; ++i) b.put_desc(ring, i, bufs + i * 0x1000, 2048);
    b.wr(f, reg::kRxTail, 2);  // descriptors 3 and 0, 1 are free again
    b.ep.send(b.frame(f, 64, 9));
    b.ep.send(b.frame(0x7F, 64, 9));  // nobody's MAC
    sc_core::wait(sc_time(20, sc_core::SC_US));
  });
  const auto& s = b.nic->function_stats(f);
  CHECK(s.rx_packets.value() == 4);
  CHECK(s.rx_drops.value() == 2);
  CHECK(b.nic->stats().rx_unmatched.value() == 1);
  CHECK(b.desc_status(ring, 3) == models::nicdesc::kDd);  // the fourth frame used descriptor 3
  std::vector<std::uint8_t> got(64);
  b.mem.read_bytes(bufs + 3 * 0x1000, got.data(), 64);
  CHECK(got == b.frame(f, 64, 9));
}

TEST_CASE("MSI-X: a masked vector sets its pending bit, unmasking sends the message") {
  Bench b;
  const unsigned f = 0;
  test::run(*b.cpu, [&] {
    b.setup_rx(f, 0x100000, 4, 0x200000, 2048);
    b.setup_msix(f, 0x55, reg::kCauseRx, false);
    b.ep.send(b.frame(f, 64, 1));
    sc_core::wait(sc_time(10, sc_core::SC_US));
    CHECK(b.msi.got.empty());
    CHECK(b.rd(f, reg::kIntPending) == 1);
    b.wr(f, reg::kMsixCtrl, 0);
    sc_core::wait(sc_time(1, sc_core::SC_US));
    CHECK(b.msi.got.size() == 1);
    CHECK(b.rd(f, reg::kIntPending) == 0);
    // A disabled cause sends nothing.
    b.wr(f, reg::kIntEnable, 0);
    b.ep.send(b.frame(f, 64, 2));
    sc_core::wait(sc_time(10, sc_core::SC_US));
  });
  CHECK(b.msi.got.size() == 1);
  CHECK(b.msi.got[0].m.data == 0x55);
  CHECK(b.nic->function_stats(f).interrupts_deferred.value() == 1);
  CHECK(b.nic->function_stats(f).rx_packets.value() == 2);
}

TEST_CASE("ITR: at most one message per interval, later events coalesced into one at its end") {
  Bench b;
  const unsigned f = 1;
  test::run(*b.cpu, [&] {
    b.setup_rx(f, 0x100000, 16, 0x200000, 2048);
    b.setup_msix(f, 0x44, reg::kCauseRx);
    b.wr(f, reg::kItr, 40);  // 40 x 256 ns = 10.24 us
    CHECK(b.rd(f, reg::kItr) == 40);
    for (int i = 0; i < 5; ++i) {
      b.ep.send(b.frame(f, 64, std::uint8_t(i)));
      sc_core::wait(sc_time(1, sc_core::SC_US));
    }
    sc_core::wait(sc_time(30, sc_core::SC_US));
  });
  REQUIRE(b.msi.got.size() == 2);
  CHECK(b.msi.got[1].at - b.msi.got[0].at == sc_time(10.24, sc_core::SC_US));
  const auto& s = b.nic->function_stats(f);
  CHECK(s.rx_packets.value() == 5);
  CHECK(s.interrupts.value() == 2);
  CHECK(s.interrupts_throttled.value() == 4);
}

TEST_CASE("echo round trip: 2 x link latency + 2 x serialization + peer processing, plus the DMAs") {
  auto pp = cfg::defaults<models::NetPeerParams>();
  pp.mode = "echo";
  Bench b(3, false, &pp);
  const unsigned f = 1;
  constexpr std::size_t kLen = 200;
  const std::uint64_t tx_ring = 0x100000, rx_ring = 0x110000, tx_buf = 0x200000, rx_bufs = 0x300000;
  auto fr = b.frame(0, kLen, 3);  // the destination MAC does not matter to the echo peer
  const std::uint64_t mac = models::nic_default_mac(f);
  for (int i = 0; i < 6; ++i) fr[6 + i] = std::uint8_t(mac >> (8 * i));  // source: VF 0
  b.mem.write_bytes(tx_buf, fr.data(), kLen);
  b.put_desc(tx_ring, 0, tx_buf, kLen);
  sc_time t0;
  test::run(*b.cpu, [&] {
    b.setup_rx(f, rx_ring, 4, rx_bufs, 2048);
    b.setup_msix(f, 0x61, reg::kCauseRx);
    b.setup_tx(f, tx_ring, 4);
    t0 = sc_core::sc_time_stamp();
    b.wr(f, reg::kTxTail, 1);
  });
  REQUIRE(b.msi.got.size() == 1);
  const sc_time ser = b.link->serialization(kLen);
  const sc_time lat = sc_time::from_value(b.link->params().latency);
  const sc_time proc = sc_time::from_value(b.peer->params().processing_delay);
  const sc_time dmas_before = sc_time(double(dma_ns(16) + dma_ns(kLen)), SC_NS);
  const sc_time dmas_after = sc_time(double(dma_ns(16) + dma_ns(kLen) + dma_ns(4)), SC_NS);
  CHECK(b.msi.got[0].at - t0 == dmas_before + 2 * ser + 2 * lat + proc + dmas_after);
  CHECK(b.peer->stats().echoed.value() == 1);
  std::vector<std::uint8_t> got(kLen);
  b.mem.read_bytes(rx_bufs, got.data(), kLen);
  CHECK(std::equal(got.begin() + 12, got.end(), fr.begin() + 12));  // MACs swapped, payload intact
  CHECK(models::nic_default_mac(f) == (got[0] | std::uint64_t(got[4]) << 32 | std::uint64_t(got[5]) << 40));
}

TEST_CASE("TX: a DMA error stops the function until software clears it (W1C), then TX resumes") {
  Bench b;
  const unsigned f = 1;
  const std::uint64_t ring = 0x100000, buf = 0x200000;
  b.put_desc(ring, 0, (64ull << 20) + 0x1000, 64);  // a buffer beyond memory: master abort
  b.put_desc(ring, 1, buf, 64);
  test::run(*b.cpu, [&] {
    b.setup_tx(f, ring, 4);
    b.wr(f, reg::kTxTail, 2);
    sc_core::wait(sc_time(10, sc_core::SC_US));
    CHECK(b.rd(f, reg::kStatus) == (reg::kStatusTxErr | reg::kStatusLinkUp));
    CHECK(b.rd(f, reg::kTxHead) == 0);
    CHECK(b.ep.got.empty());
    // The driver repairs the descriptor and clears the error.
    b.put_desc(ring, 0, buf, 64);
    b.wr(f, reg::kStatus, reg::kStatusTxErr);
    sc_core::wait(sc_time(10, sc_core::SC_US));
    CHECK(b.rd(f, reg::kStatus) == reg::kStatusLinkUp);
    CHECK(b.rd(f, reg::kTxHead) == 2);
    CHECK(b.rd(f, reg::kIntCause) == (reg::kCauseErr | reg::kCauseTx));
  });
  CHECK(b.ep.got.size() == 2);
  CHECK(b.nic->function_stats(f).dma_faults.value() == 1);
  CHECK(b.nic->function_stats(f).tx_packets.value() == 2);
}

TEST_CASE("round trip measured at the peer: generated frames echoed by a driver through RX and TX rings") {
  constexpr unsigned kN = 5;
  auto pp = cfg::defaults<models::NetPeerParams>();
  pp.mode = "generate";
  pp.arrivals = "constant";
  pp.rate = 1e5;  // every 10 us
  pp.count = kN;
  pp.packet_size = 64;
  pp.dest_function = 2;  // VF 1
  pp.start = 5'000'000;  // 5 us
  Bench b(3, false, &pp);
  const unsigned f = 2;
  const std::uint64_t rx_ring = 0x100000, tx_ring = 0x110000, bufs = 0x200000;
  test::run(*b.cpu, [&] {
    b.setup_rx(f, rx_ring, 8, bufs, 2048);
    b.setup_tx(f, tx_ring, 8);
    b.setup_msix(f, 0x33, reg::kCauseRx);
    // The driver: on each RX interrupt, send the frame back from the same
    // buffer with the MAC addresses swapped, then return the descriptor.
    for (unsigned i = 0; i < kN; ++i) {
      sc_core::wait(b.msi.fired);
      const unsigned slot = i % 8;
      REQUIRE(b.desc_status(rx_ring, slot) == models::nicdesc::kDd);
      const std::uint16_t len = b.desc_len(rx_ring, slot);
      const std::uint64_t buf = bufs + slot * 0x1000;
      std::uint8_t macs[12];
      b.mem.read_bytes(buf, macs, 12);
      b.mem.write_bytes(buf, macs + 6, 6);
      b.mem.write_bytes(buf + 6, macs, 6);
      b.put_desc(tx_ring, slot, buf, len);
      b.wr(f, reg::kTxTail, (slot + 1) % 8);
      b.put_desc(rx_ring, slot, buf, 2048);
      b.wr(f, reg::kRxTail, slot);
    }
  });
  const auto& h = b.peer->stats().rtt_ns;
  REQUIRE(h.count() == kN);
  // Each way: serialization and latency; at the NIC: descriptor read, buffer
  // write and write-back on receive, descriptor read and buffer read on
  // transmit (the driver itself takes no time in this test).
  const sc_time ser = b.link->serialization(64);
  const sc_time lat = sc_time::from_value(b.link->params().latency);
  const sc_time nic = sc_time(double(dma_ns(16) + dma_ns(64) + dma_ns(4) + dma_ns(16) + dma_ns(64)), SC_NS);
  const std::uint64_t expect_ns = (2 * (ser + lat) + nic).value() / 1000;
  CHECK(h.min() == expect_ns);
  CHECK(h.max() == expect_ns);
  CHECK(b.nic->function_stats(f).tx_packets.value() == kN);
  CHECK(b.nic->function_stats(f).rx_packets.value() == kN);
}

TEST_CASE("echo round trip of a 64-byte frame with every default is 4544.3 ns (docs/io.md)") {
  auto pp = cfg::defaults<models::NetPeerParams>();
  pp.mode = "echo";
  Bench b(3, false, &pp, true);
  const unsigned f = 1;
  auto fr = b.frame(0, 64, 3);
  const std::uint64_t mac = models::nic_default_mac(f);
  for (int i = 0; i < 6; ++i) fr[6 + i] = std::uint8_t(mac >> (8 * i));
  b.mem.write_bytes(0x200000, fr.data(), fr.size());
  b.put_desc(0x100000, 0, 0x200000, 64);
  sc_time t0;
  test::run(*b.cpu, [&] {
    b.setup_rx(f, 0x110000, 4, 0x300000, 2048);
    b.setup_msix(f, 0x61, reg::kCauseRx);
    b.setup_tx(f, 0x100000, 4);
    t0 = sc_core::sc_time_stamp();
    b.wr(f, reg::kTxTail, 1);
  });
  REQUIRE(b.msi.got.size() == 1);
  CHECK(b.msi.got[0].at - t0 == sc_time(4544.3, SC_NS));
}

TEST_CASE("TX scheduling: functions with work take turns on the wire, one frame each") {
  Bench b;
  const std::uint64_t ring1 = 0x100000, ring2 = 0x110000, bufs = 0x200000;
  for (unsigned i = 0; i < 3; ++i) {
    auto a = b.frame(0, 100, std::uint8_t(10 + i));
    auto c = b.frame(0, 100, std::uint8_t(20 + i));
    b.mem.write_bytes(bufs + i * 0x1000, a.data(), a.size());
    b.mem.write_bytes(bufs + (8 + i) * 0x1000, c.data(), c.size());
    b.put_desc(ring1, i, bufs + i * 0x1000, 100);
    b.put_desc(ring2, i, bufs + (8 + i) * 0x1000, 100);
  }
  test::run(*b.cpu, [&] {
    b.setup_tx(1, ring1, 8);
    b.setup_tx(3, ring2, 8);
    b.wr(1, reg::kTxTail, 3);
    b.wr(3, reg::kTxTail, 3);
  });
  REQUIRE(b.ep.got.size() == 6);
  const std::uint8_t order[6] = {10, 20, 11, 21, 12, 22};
  for (unsigned i = 0; i < 6; ++i) CHECK(b.ep.got[i].p.bytes == b.frame(0, 100, order[i]));
}

TEST_CASE("RX: broadcast goes to the PF, a frame larger than its buffer is dropped without using it") {
  Bench b;
  test::run(*b.cpu, [&] {
    b.setup_rx(0, 0x100000, 4, 0x200000, 2048);
    b.setup_rx(1, 0x110000, 4, 0x300000, 128);
    std::vector<std::uint8_t> bc(80, 0xFF);
    b.ep.send(bc);
    b.ep.send(b.frame(1, 200, 1));  // too big for VF 0's 128-byte buffers
    b.ep.send(b.frame(1, 100, 2));
    sc_core::wait(sc_time(20, sc_core::SC_US));
  });
  CHECK(b.nic->function_stats(0).rx_packets.value() == 1);
  CHECK(b.nic->function_stats(1).rx_oversize.value() == 1);
  CHECK(b.nic->function_stats(1).rx_packets.value() == 1);
  CHECK(b.desc_len(0x110000, 0) == 100);  // the descriptor went to the next frame
}

// --- DMA through a real IOMMU with second-level tables in PhysMem ---------

namespace {
constexpr std::uint64_t kIovaRing = 0x8000'0000, kIovaBuf = 0x8001'0000;
}

TEST_CASE("IOMMU: a VF's DMA inside its domain succeeds and costs translation cycles") {
  Bench b(3, true);
  const unsigned f = 1;
  const std::uint64_t ring = 0x100000, buf = 0x200000;
  test::VtdTables t(b.mem, 0x1000000);
  const std::uint64_t slpt = t.domain(b.nic->requester(f), 11);
  t.map(slpt, kIovaRing, ring);
  t.map(slpt, kIovaBuf, buf);
  t.program(*b.regs);
  auto fr = b.frame(0, 500, 4);
  b.mem.write_bytes(buf, fr.data(), fr.size());
  b.put_desc(ring, 0, kIovaBuf, 500);
  test::run(*b.cpu, [&] {
    b.setup_tx(f, kIovaRing, 4);
    b.wr(f, reg::kTxTail, 1);
  });
  REQUIRE(b.ep.got.size() == 1);
  CHECK(b.ep.got[0].p.bytes == fr);
  CHECK(b.desc_status(ring, 0) == models::nicdesc::kDd);
  const auto* rs = b.rc->requester_stats(b.nic->requester(f));
  REQUIRE(rs);
  CHECK(rs->translation_cycles.value() > 0);
  CHECK(rs->blocked.value() == 0);
  CHECK(b.unit->stats().translations.value() == 3);  // descriptor, buffer, write-back
  CHECK(b.unit->stats().walks.value() == 2);          // the write-back hits the descriptor's IOTLB entry
  CHECK(b.nic->function_stats(f).dma_faults.value() == 0);
}

TEST_CASE("IOMMU: a VF's DMA outside its domain is blocked, logged, stops the function, memory unchanged") {
  Bench b(3, true);
  const unsigned victim = 1, attacker = 2;
  const std::uint64_t v_ring = 0x100000, v_buf = 0x200000, a_ring = 0x400000, a_bufs = 0x500000;
  test::VtdTables t(b.mem, 0x1000000);
  const std::uint64_t vs = t.domain(b.nic->requester(victim), 11);
  t.map(vs, kIovaRing, v_ring);
  t.map(vs, kIovaBuf, v_buf);
  const std::uint64_t as = t.domain(b.nic->requester(attacker), 12);
  t.map(as, kIovaRing, a_ring);  // the attacker's own ring
  t.map(as, kIovaBuf, a_bufs);
  t.program(*b.regs);
  // The victim's buffer holds data; the attacker points its RX descriptors
  // at the victim's host-physical buffer, an address outside its domain.
  auto secret = b.frame(0, 4096, 99);
  b.mem.write_bytes(v_buf, secret.data(), secret.size());
  const std::uint64_t sum = test::checksum(b.mem, v_buf, 4096);
  for (unsigned i = 0; i < 4; ++i) b.put_desc(a_ring, i, v_buf, 2048);
  // Its TX ring also points at an unmapped IOVA.
  test::run(*b.cpu, [&] {
    b.wr(attacker, reg::kRxBaseLo, std::uint32_t(kIovaRing));
    b.wr(attacker, reg::kRxSize, 4);
    b.wr(attacker, reg::kRxTail, 3);
    b.wr(attacker, reg::kCtrl, reg::kCtrlRxEn);
    b.setup_msix(attacker, 0x70, reg::kCauseErr);
    b.ep.send(b.frame(attacker, 256, 1));
    b.ep.send(b.frame(attacker, 256, 2));
    sc_core::wait(sc_time(20, sc_core::SC_US));
    CHECK(b.rd(attacker, reg::kStatus) == (reg::kStatusRxErr | reg::kStatusLinkUp));
    CHECK(b.rd(attacker, reg::kIntCause) == reg::kCauseErr);
    CHECK(b.rd(attacker, reg::kRxHead) == 0);
    b.setup_tx(attacker, 0x9000'0000, 4);  // unmapped ring
    b.wr(attacker, reg::kTxTail, 1);
    sc_core::wait(sc_time(20, sc_core::SC_US));
    CHECK(b.rd(attacker, reg::kStatus) == (reg::kStatusRxErr | reg::kStatusTxErr | reg::kStatusLinkUp));
  });
  CHECK(test::checksum(b.mem, v_buf, 4096) == sum);
  const auto& s = b.nic->function_stats(attacker);
  CHECK(s.dma_faults.value() == 2);   // the RX buffer write, the TX descriptor fetch
  CHECK(s.rx_discards.value() == 1);  // the second frame: RX stopped
  CHECK(s.rx_packets.value() == 0);
  CHECK(s.tx_packets.value() == 0);
  CHECK(s.interrupts.value() == 2);   // the error cause, twice
  CHECK(b.ep.got.empty());
  const auto& log = b.unit->fault_log();
  REQUIRE(log.size() == 2);
  CHECK(log[0].requester_id == b.nic->requester(attacker));
  CHECK(log[0].address == v_buf);
  CHECK(log[0].access == iommu::DmaAccess::Write);
  CHECK(log[1].address == 0x9000'0000);
  CHECK(b.rc->requester_stats(b.nic->requester(attacker))->blocked.value() == 2);
  CHECK(b.nic->function_stats(victim).dma_faults.value() == 0);
}

// --- Platform wiring --------------------------------------------------------

namespace {
struct Receiver : cpu::InterruptHandler {
  std::vector<std::uint8_t> vectors;
  void interrupt(cpu::Core& c, std::uint8_t vector) override {
    vectors.push_back(vector);
    c.wrmsr(cpu::msr::kX2ApicEoi, 0);
  }
  void exception(cpu::Core&, std::uint8_t, std::uint32_t) override { std::abort(); }
};
}  // namespace

TEST_CASE("platform: nic.enabled builds root complex, IOMMU, NIC, link and peer; MMIO, DMA and MSIs flow") {
  stats::Group root;
  auto p = cfg::defaults<models::PlatformParams>();
  p.cores = 2;
  p.memory = 64ull << 20;
  p.nic.enabled = true;
  p.nic.device.vfs = 2;
  p.nic.peer.mode = "generate";
  p.nic.peer.arrivals = "constant";
  p.nic.peer.rate = 1e5;
  p.nic.peer.count = 3;
  p.nic.peer.start = 50'000'000;  // 50 us, once the driver is done
  p.nic.peer.dest_function = 1;   // VF 0
  models::Platform platform(p, &root);
  REQUIRE(platform.nic());
  REQUIRE(platform.iommu());
  CHECK_FALSE(platform.iommu()->enabled());
  Receiver rx;
  sim::Fiber idle("idle", [&] {
    cpu::Core& c = cpu::Core::current();
    c.lidt(&rx);
    c.sti();
    for (;;) c.hlt();
  });
  platform.core(1).set_reset_fiber(&idle);
  models::Nic& nic = *platform.nic();
  auto mmio = [&](unsigned f, std::uint32_t off, std::uint32_t v) {
    tlm::tlm_generic_payload t;
    t.set_command(tlm::TLM_WRITE_COMMAND);
    t.set_address(nic.window(f) + off);
    t.set_data_ptr(reinterpret_cast<unsigned char*>(&v));
    t.set_data_length(4);
    t.set_streaming_width(4);
    sc_time d = sc_core::SC_ZERO_TIME;
    platform.root_complex()->mmio(t, d);
    REQUIRE(t.is_response_ok());
  };
  const std::uint64_t ring = 0x100000, bufs = 0x200000;
  for (unsigned i = 0; i < 8; ++i) {
    platform.memory().write(ring + i * 16, bufs + i * 0x1000, 8);
    platform.memory().write(ring + i * 16 + 8, 2048, 4);
  }
  test::TestInitiator driver("driver");
  test::run(
      driver,
      [&] {
        mmio(1, reg::kRxBaseLo, std::uint32_t(ring));
        mmio(1, reg::kRxSize, 8);
        mmio(1, reg::kRxTail, 7);
        mmio(1, reg::kCtrl, reg::kCtrlRxEn);
        mmio(1, reg::kMsixAddrLo, 0xFEE01000);  // destination APIC ID 1
        mmio(1, reg::kMsixData, 0x51);
        mmio(1, reg::kIntEnable, reg::kCauseRx);
        mmio(1, reg::kMsixCtrl, 0);
      },
      sc_time(200, sc_core::SC_US));
  CHECK(nic.function_stats(1).rx_packets.value() == 3);
  CHECK(rx.vectors == std::vector<std::uint8_t>{0x51, 0x51, 0x51});
  CHECK(platform.memory().read(ring + 2 * 16 + 10, 2) == models::nicdesc::kDd);
  const auto* s = dynamic_cast<const stats::Counter*>(root.find("system.nic.vf0.rx_packets"));
  REQUIRE(s);
  CHECK(s->value() == 3);
  CHECK(root.find("system.root_complex.dma_writes"));
  CHECK(root.find("system.link.peer_to_nic.packets"));
  CHECK(root.find("system.iommu.translations"));
}

TEST_CASE("platform: without nic.enabled there are no I/O blocks") {
  stats::Group root;
  auto p = cfg::defaults<models::PlatformParams>();
  p.memory = 64ull << 20;
  models::Platform platform(p, &root);
  CHECK(platform.nic() == nullptr);
  CHECK(platform.root_complex() == nullptr);
  CHECK(platform.iommu() == nullptr);
  CHECK(root.find("system.nic") == nullptr);
}
