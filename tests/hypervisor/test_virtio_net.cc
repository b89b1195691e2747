// The virtio-net back end (hypervisor/virtio_net.*) driven by a guest on the
// real Core in VMX non-root operation (tests/cpu/vmx_harness.h): the guest's
// register accesses exit as EPT violations and the root-mode monitor hands
// them to the device, as the hypervisor does. The guest driver here is the
// ring logic of hypervisor/virtio_ring.h over the guest's own loads and
// stores (paging off: guest-physical addresses).
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmx.h"
#include "cpu/vmx_harness.h"
#include "guest/virtio_net.h"
#include "hypervisor/virtio_net.h"
#include "hypervisor/virtio_ring.h"
#include "sim/params.h"

namespace {

using vmx::cpu::Core;
using vmx::cpu::Regs;
using vmx::test::Exit;
using vmx::test::VmxHarness;
namespace field = vmx::cpu::field;
namespace virtio = vmx::abi::virtio;
namespace reg = vmx::abi::virtio_reg;

constexpr unsigned kEptViolation = 48, kVmcall = 18;
constexpr std::uint64_t kDev = 0x1800000;   // register page: outside the identity-mapped 16 MiB
constexpr std::uint64_t kRxRing = 0x200000, kTxRing = 0x204000;
constexpr std::uint64_t kBuffers = 0x210000;  // 2 KiB buffers, two per page
constexpr std::uint64_t kSource = 0x900000;   // host memory holding received frames
constexpr std::uint8_t kVector = 0x40;

struct GuestMem {  // the guest's own accesses (paging off)
  Core& c;
  std::uint64_t load(std::uint64_t a, unsigned size) { return c.load(a, size); }
  void store(std::uint64_t a, std::uint64_t v, unsigned size) { c.store(a, v, size); }
};

struct TestHost : vmx::hv::VirtioNet::Host {
  std::vector<std::vector<std::uint8_t>> sent;
  std::vector<std::uint8_t> raised;
  std::uint64_t gpa_to_hpa(Core&, std::uint64_t gpa) override {
    return gpa < VmxHarness::kIdentityBytes ? gpa : 0;  // the harness's identity EPT
  }
  bool transmit(Core& c, std::uint64_t hpa, std::uint32_t len) override {
    std::vector<std::uint8_t> f;
    for (std::uint32_t i = 0; i < len; ++i) f.push_back(static_cast<std::uint8_t>(c.load(hpa + i, 1)));
    sent.push_back(f);
    return true;
  }
  void interrupt(Core&, std::uint8_t vector) override { raised.push_back(vector); }
  void charge(Core& c, std::uint64_t instructions) override { c.compute(instructions); }
};

struct Rig {
  VmxHarness h;
  TestHost host;
  vmx::hv::HvCosts costs = vmx::cfg::defaults<vmx::hv::HvCosts>();
  vmx::stats::Group group{"vm"};
  vmx::hv::VirtioNet dev{costs, host, 0x665544332211ull, &group};
  std::vector<std::uint64_t> mmio_offsets;
  std::function<void(Core&, std::uint64_t offset)> after_mmio;

  Rig() {
    h.on_exit = [this](Core& c, const Exit& e) {
      if (e.reason != kEptViolation) return;
      REQUIRE(e.guest_physical >= kDev);
      REQUIRE(e.guest_physical < kDev + reg::kPageBytes);
      std::uint64_t info = 0, rip = 0, len = 0;
      c.vmread(field::kVmxInstructionInfo, info);
      const bool write = info & 0x10;
      std::uint64_t value = write ? e.regs[Regs::rax] : 0;
      const std::uint64_t off = e.guest_physical - kDev;
      mmio_offsets.push_back(off);
      REQUIRE(dev.mmio(c, off, static_cast<unsigned>(info & 0xF), write, value));
      if (!write) c.regs()[Regs::rax] = value;
      c.vmread(field::kGuestRip, rip);
      c.vmread(field::kExitInstructionLength, len);
      c.vmwrite(field::kGuestRip, rip + len);
      if (after_mmio) after_mmio(c, off);
    };
  }
  unsigned notifies() const {
    unsigned n = 0;
    for (std::uint64_t o : mmio_offsets) n += o == reg::kQueueNotify;
    return n;
  }
};

void wr(Core& c, std::uint64_t off, std::uint64_t v, unsigned size = 4) { c.store(kDev + off, v, size); }
std::uint64_t rd(Core& c, std::uint64_t off, unsigned size = 4) { return c.load(kDev + off, size); }

/// The driver's initialisation (virtio 1.1, 3.1.1) of one queue.
vmx::guest::virtio::DriverQueue setup_queue(Core& c, unsigned index, std::uint64_t base, std::uint16_t size) {
  virtio::Layout l = virtio::Layout::packed(base, size);
  GuestMem m{c};
  vmx::guest::virtio::DriverQueue q(l, true);
  q.init(m);
  wr(c, reg::kQueueSel, index);
  wr(c, reg::kQueueSize, size);
  wr(c, reg::kQueueDesc, l.desc, 8);
  wr(c, reg::kQueueAvail, l.avail, 8);
  wr(c, reg::kQueueUsed, l.used, 8);
  wr(c, reg::kQueueReady, 1);
  return q;
}

void init_device(Core& c) {
  wr(c, reg::kStatus, 1 | 2);  // ACKNOWLEDGE | DRIVER
  wr(c, reg::kDriverFeatures, reg::kFeatureEventIdx | reg::kFeatureVersion1 | reg::kFeatureMac, 8);
  wr(c, reg::kVector, kVector);
}

}  // namespace

TEST_CASE("virtio-net registers identify the device and read its MAC", "[virtio]") {
  Rig r;
  std::uint64_t magic = 0, id = 0, features = 0, mac_lo = 0, mac_hi = 0, version = 0;
  r.h.guest = [&](Core& c) {
    magic = rd(c, reg::kMagic);
    version = rd(c, reg::kVersion);
    id = rd(c, reg::kDeviceId);
    features = rd(c, reg::kDeviceFeatures, 8);
    mac_lo = rd(c, reg::kMac, 4);
    mac_hi = rd(c, reg::kMac + 4, 2);
  };
  r.h.run();
  REQUIRE(r.h.done);
  CHECK(magic == reg::kMagicValue);
  CHECK(version == 2);
  CHECK(id == 1);
  CHECK((features & reg::kFeatureEventIdx));
  CHECK((features & reg::kFeatureVersion1));
  CHECK(mac_lo == 0x44332211);
  CHECK(mac_hi == 0x6655);
  CHECK(r.dev.stats().mmio_reads.value() == 6);
}

TEST_CASE("virtio-net transmits a batch of frames with one notify exit", "[virtio]") {
  Rig r;
  constexpr unsigned kBatches = 3, kPerBatch = 4, kLen = 60;
  std::vector<std::uint64_t> reaped;
  r.h.guest = [&](Core& c) {
    init_device(c);
    vmx::guest::virtio::DriverQueue tx = setup_queue(c, reg::kTxQueue, kTxRing, 8);
    wr(c, reg::kStatus, 1 | 2 | 8 | reg::kStatusDriverOk);
    GuestMem m{c};
    for (unsigned b = 0; b < kBatches; ++b) {
      for (unsigned i = 0; i < kPerBatch; ++i) {
        const unsigned seq = b * kPerBatch + i;
        const std::uint64_t buf = kBuffers + 2048 * (seq % 8);
        for (unsigned k = 0; k < virtio::kNetHdrBytes; ++k) c.store(buf + k, 0, 1);
        for (unsigned k = 0; k < kLen; ++k) c.store(buf + virtio::kNetHdrBytes + k, (seq * 7 + k) & 0xFF, 1);
        REQUIRE(tx.add(m, buf, virtio::kNetHdrBytes + kLen, false, seq) >= 0);
      }
      if (tx.publish(m)) wr(c, reg::kQueueNotify, reg::kTxQueue);
      std::uint64_t token;
      std::uint32_t len;
      while (tx.get_used(m, token, len)) reaped.push_back(token);
      tx.enable_interrupts(m);
    }
  };
  r.h.run();
  REQUIRE(r.h.done);
  // One notify per batch, none per frame.
  CHECK(r.notifies() == kBatches);
  REQUIRE(r.host.sent.size() == kBatches * kPerBatch);
  for (unsigned seq = 0; seq < r.host.sent.size(); ++seq) {
    REQUIRE(r.host.sent[seq].size() == kLen);
    CHECK(r.host.sent[seq][0] == ((seq * 7) & 0xFF));
    CHECK(r.host.sent[seq][kLen - 1] == ((seq * 7 + kLen - 1) & 0xFF));
  }
  const auto& s = r.dev.stats();
  CHECK(s.tx_frames.value() == kBatches * kPerBatch);
  CHECK(s.tx_bytes.value() == kBatches * kPerBatch * kLen);
  CHECK(s.tx_batch.count() == kBatches);
  CHECK(s.tx_batch.mean() == Approx(kPerBatch));
  CHECK(s.bad_buffers.value() == 0);
  // Every frame came back through the used ring, in order.
  REQUIRE(reaped.size() == kBatches * kPerBatch);
  for (unsigned i = 0; i < reaped.size(); ++i) CHECK(reaped[i] == i);
  // The driver re-armed used_event after each batch: each batch's completion interrupted once.
  CHECK(s.interrupts.value() == kBatches);
  CHECK(r.host.raised == std::vector<std::uint8_t>(kBatches, kVector));
}

TEST_CASE("virtio-net receives frames into posted buffers and suppresses interrupts the driver did not ask for",
          "[virtio]") {
  Rig r;
  constexpr unsigned kLen = 64;
  std::vector<std::uint32_t> lens;
  std::vector<std::uint8_t> first_bytes;
  std::uint64_t isr_first = 9, isr_second = 9, num_buffers = 0;
  bool delivered = false;
  // When the driver notifies the RX queue (buffers posted), two frames arrive.
  r.after_mmio = [&](Core& c, std::uint64_t off) {
    if (off != reg::kQueueNotify || delivered) return;
    delivered = true;
    for (unsigned f = 0; f < 2; ++f) {
      for (unsigned k = 0; k < kLen; ++k) c.store(kSource + 4096 * f + k, 0xA0 + f + k, 1);
      REQUIRE(r.dev.receive(c, kSource + 4096 * f, kLen));
    }
  };
  r.h.guest = [&](Core& c) {
    init_device(c);
    vmx::guest::virtio::DriverQueue rx = setup_queue(c, reg::kRxQueue, kRxRing, 4);
    wr(c, reg::kStatus, 1 | 2 | 8 | reg::kStatusDriverOk);
    GuestMem m{c};
    for (unsigned i = 0; i < 4; ++i) rx.add(m, kBuffers + 2048 * i, 2048, true, i);
    if (rx.publish(m)) wr(c, reg::kQueueNotify, reg::kRxQueue);
    isr_first = rd(c, reg::kIsr);
    isr_second = rd(c, reg::kIsr);
    std::uint64_t token;
    std::uint32_t len;
    while (rx.get_used(m, token, len)) {
      lens.push_back(len);
      const std::uint64_t buf = kBuffers + 2048 * token;
      num_buffers = c.load(buf + virtio::kNetHdrNumBuffers, 2);
      first_bytes.push_back(static_cast<std::uint8_t>(c.load(buf + virtio::kNetHdrBytes, 1)));
    }
  };
  r.h.run();
  REQUIRE(r.h.done);
  CHECK(lens == std::vector<std::uint32_t>{virtio::kNetHdrBytes + kLen, virtio::kNetHdrBytes + kLen});
  CHECK(first_bytes == std::vector<std::uint8_t>{0xA0, 0xA1});
  CHECK(num_buffers == 1);
  CHECK(isr_first == 1);  // read clears
  CHECK(isr_second == 0);
  const auto& s = r.dev.stats();
  CHECK(s.rx_frames.value() == 2);
  CHECK(s.rx_bytes.value() == 2 * kLen);
  // used_event 0: the first used entry interrupts, the second (before the
  // driver re-armed) does not (VIRTIO_F_EVENT_IDX, 2.6.10).
  CHECK(s.interrupts.value() == 1);
  CHECK(s.interrupts_suppressed.value() == 1);
  CHECK(r.host.raised == std::vector<std::uint8_t>{kVector});
}

TEST_CASE("virtio-net drops a frame when no RX buffer is posted", "[virtio]") {
  Rig r;
  bool accepted = true;
  r.h.guest = [&](Core& c) {
    init_device(c);
    setup_queue(c, reg::kRxQueue, kRxRing, 4);
    wr(c, reg::kStatus, 1 | 2 | 8 | reg::kStatusDriverOk);
    c.vmcall(0x50494E47);  // lets the monitor deliver a frame
  };
  r.h.on_exit = [&, inner = r.h.on_exit](Core& c, const Exit& e) {
    if (e.reason == kVmcall) {
      accepted = r.dev.receive(c, kSource, 64);
      return;
    }
    inner(c, e);
  };
  r.h.run();
  REQUIRE(r.h.done);
  CHECK_FALSE(accepted);
  CHECK(r.dev.stats().rx_dropped.value() == 1);
  CHECK(r.dev.stats().interrupts.value() == 0);
}

TEST_CASE("the guest virtio-net driver and the back end exchange frames with one exit per batch", "[virtio]") {
  Rig r;
  constexpr unsigned kFrames = 8, kLen = 100, kReplies = 3;
  constexpr std::uint64_t kSrc = 0x300000, kDst = 0x301000, kDriverMem = 0x400000;
  auto costs = vmx::cfg::defaults<vmx::guest::VirtioDriverCosts>();
  vmx::stats::Group gstats{"guest"};
  vmx::guest::VirtioNetDriver drv(costs, kDev,
                                  {kDriverMem, vmx::guest::VirtioNetDriver::memory_bytes(64), 0}, kVector, &gstats);
  unsigned tx_exits_before = 0, tx_exits_after = 0, waiting = 0;
  std::vector<std::uint32_t> lens;
  std::vector<std::uint8_t> bytes;
  bool probed = false, replied = false;
  std::uint64_t mac = 0;
  // The peer answers the batch: three frames come back for the VM.
  r.after_mmio = [&](Core& c, std::uint64_t off) {
    if (off != reg::kQueueNotify || r.host.sent.size() < kFrames || replied) return;
    replied = true;
    for (unsigned f = 0; f < kReplies; ++f) {
      for (unsigned k = 0; k < kLen; ++k) c.store(kSource + 4096 * f + k, (0x10 * f + k) & 0xFF, 1);
      REQUIRE(r.dev.receive(c, kSource + 4096 * f, kLen));
    }
  };
  r.h.guest = [&](Core& c) {
    probed = drv.probe(c);
    mac = drv.mac();
    for (unsigned k = 0; k < kLen; ++k) c.store(kSrc + k, k & 0xFF, 1);
    tx_exits_before = static_cast<unsigned>(r.mmio_offsets.size());
    for (unsigned i = 0; i < kFrames; ++i) REQUIRE(drv.transmit(c, kSrc, kLen));
    drv.flush_batch(c);
    tx_exits_after = static_cast<unsigned>(r.mmio_offsets.size());
    waiting = drv.handle_interrupt(c);  // the vector the device raised
    for (;;) {
      std::uint32_t n = drv.receive(c, kDst, 2048);
      if (!n) break;
      lens.push_back(n);
      bytes.push_back(static_cast<std::uint8_t>(c.load(kDst + 1, 1)));
    }
  };
  r.h.run();
  REQUIRE(r.h.done);
  REQUIRE(probed);
  CHECK(mac == 0x665544332211ull);
  // Eight frames, one register write.
  CHECK(tx_exits_after - tx_exits_before == 1);
  CHECK(drv.stats().kicks.value() == 1);
  REQUIRE(r.host.sent.size() == kFrames);
  for (const auto& f : r.host.sent) {
    REQUIRE(f.size() == kLen);
    CHECK(f[kLen - 1] == ((kLen - 1) & 0xFF));
  }
  CHECK(r.dev.stats().tx_batch.max() == kFrames);
  CHECK(waiting == kReplies);
  CHECK(lens == std::vector<std::uint32_t>(kReplies, kLen));
  CHECK(bytes == std::vector<std::uint8_t>{0x01, 0x11, 0x21});
  CHECK(drv.stats().rx_frames.value() == kReplies);
  // Re-posting the three RX buffers needed no notify: the device did not ask.
  CHECK(r.notifies() == 2);  // the RX kick at probe, the TX batch
}
