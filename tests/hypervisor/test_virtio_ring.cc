// The split-virtqueue layout and ring logic (hypervisor/virtio_ring.h),
// driven over a plain byte array standing for guest memory.
#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "abi/virtio_ring.h"
#include "guest/virtqueue.h"
#include "hypervisor/virtio_ring.h"

using namespace vmx::abi::virtio;
using vmx::guest::virtio::DriverQueue;
using vmx::hv::virtio::Chain;
using vmx::hv::virtio::DeviceQueue;

namespace {

struct ByteMem {
  std::vector<std::uint8_t> bytes = std::vector<std::uint8_t>(64 * 1024, 0);
  unsigned loads = 0, stores = 0;
  std::uint64_t load(std::uint64_t a, unsigned size) {
    ++loads;
    std::uint64_t v = 0;
    std::memcpy(&v, &bytes.at(a), size);  // little-endian host, as the guest
    return v;
  }
  void store(std::uint64_t a, std::uint64_t v, unsigned size) {
    ++stores;
    REQUIRE(a + size <= bytes.size());
    std::memcpy(&bytes[a], &v, size);
  }
};

}  // namespace

TEST_CASE("virtqueue layout offsets follow virtio 1.1 section 2.6") {
  auto n = GENERATE(as<std::uint16_t>{}, 1, 8, 256, 1024);
  Layout l = Layout::packed(0x10000, n);
  CHECK(l.valid());
  CHECK(Layout::desc_bytes(n) == 16ull * n);
  CHECK(l.avail == 0x10000 + 16ull * n);
  CHECK(l.avail_idx() == l.avail + 2);
  CHECK(l.avail_ring(0) == l.avail + 4);
  CHECK(l.avail_ring(n) == l.avail + 4);  // slots wrap modulo the size
  CHECK(l.used_event() == l.avail + 4 + 2ull * n);
  CHECK(l.used % 4096 == 0);
  CHECK(l.used >= l.used_event() + 2);
  CHECK(l.used_ring(0) == l.used + 4);
  if (n > 1) CHECK(l.used_ring(1) == l.used + 12);
  CHECK(l.avail_event() == l.used + 4 + 8ull * n);
  CHECK(l.bytes() == l.used - l.desc + 6 + 8ull * n);
}

TEST_CASE("virtqueue layout rejects sizes and alignments the spec forbids") {
  Layout l = Layout::packed(0x10000, 256);
  l.size = 48;
  CHECK_FALSE(l.valid());
  l = Layout::packed(0x10008, 8);
  CHECK_FALSE(l.valid());  // descriptor table needs 16-byte alignment
  // The legacy size of a 256-entry queue: 4096 + 518 rounded to 8192, plus 2054.
  CHECK(Layout::packed(0, 256).bytes() == 8192 + 2054);
}

TEST_CASE("vring_need_event is true exactly when the event index was passed") {
  CHECK(need_event(0, 1, 0));
  CHECK_FALSE(need_event(1, 1, 0));  // asked for index 1, only entry 0 was added
  CHECK(need_event(4, 7, 3));
  CHECK(need_event(3, 7, 3));
  CHECK_FALSE(need_event(7, 7, 3));
  CHECK_FALSE(need_event(2, 7, 3));
  // Across the 16-bit wrap.
  CHECK(need_event(0xFFFF, 2, 0xFFFE));
  CHECK(need_event(0, 2, 0xFFFE));
  CHECK_FALSE(need_event(2, 2, 0xFFFE));
  // Exhaustive small check against the definition: event in [old, new).
  for (unsigned old = 0; old < 16; ++old)
    for (unsigned nw = old; nw < old + 8; ++nw)
      for (unsigned ev = 0; ev < 32; ++ev)
        CHECK(need_event(static_cast<std::uint16_t>(ev), static_cast<std::uint16_t>(nw),
                         static_cast<std::uint16_t>(old)) == (ev >= old && ev < nw));
}

TEST_CASE("a driver's buffers reach the device and come back through the used ring") {
  ByteMem m;
  Layout l = Layout::packed(0x1000, 8);
  DriverQueue drv(l, false);
  DeviceQueue dev(l, false);
  drv.init(m);
  for (unsigned i = 0; i < 3; ++i) REQUIRE(drv.add(m, 0x8000 + 0x100 * i, 60 + i, false, 100 + i) >= 0);
  CHECK(drv.free_descriptors() == 5);
  CHECK(drv.publish(m));  // no suppression: notify
  CHECK(m.load(l.avail_idx(), 2) == 3);

  REQUIRE(dev.has_avail(m));
  std::vector<Chain> got;
  Chain c;
  while (dev.pop(m, c)) got.push_back(c);
  REQUIRE(got.size() == 3);
  for (unsigned i = 0; i < 3; ++i) {
    CHECK(got[i].addr == 0x8000 + 0x100 * i);
    CHECK(got[i].len == 60 + i);
    CHECK_FALSE(got[i].write);
    dev.push_used(m, got[i].head, 0);
  }
  CHECK(dev.publish_used(m));  // no suppression: interrupt
  std::uint64_t token;
  std::uint32_t len;
  for (unsigned i = 0; i < 3; ++i) {
    REQUIRE(drv.get_used(m, token, len));
    CHECK(token == 100 + i);
  }
  CHECK_FALSE(drv.get_used(m, token, len));
  CHECK(drv.free_descriptors() == 8);
}

TEST_CASE("a full queue refuses buffers until the device returns some") {
  ByteMem m;
  Layout l = Layout::packed(0x1000, 4);
  DriverQueue drv(l, false);
  drv.init(m);
  for (unsigned i = 0; i < 4; ++i) CHECK(drv.add(m, 0x8000, 64, true, i) >= 0);
  CHECK(drv.add(m, 0x8000, 64, true, 9) == -1);
  drv.publish(m);
  DeviceQueue dev(l, false);
  Chain c;
  REQUIRE(dev.has_avail(m));
  REQUIRE(dev.pop(m, c));
  CHECK(c.write);
  dev.push_used(m, c.head, 42);
  dev.publish_used(m);
  std::uint64_t token;
  std::uint32_t len;
  REQUIRE(drv.get_used(m, token, len));
  CHECK(len == 42);
  CHECK(drv.add(m, 0x9000, 64, true, 9) >= 0);
}

TEST_CASE("NO_NOTIFY and NO_INTERRUPT flags suppress notifications and interrupts") {
  ByteMem m;
  Layout l = Layout::packed(0x1000, 8);
  DriverQueue drv(l, false);
  DeviceQueue dev(l, false);
  drv.init(m);
  dev.disable_notify(m);
  CHECK(m.load(l.used_flags(), 2) == kUsedFNoNotify);
  drv.add(m, 0x8000, 64, false, 1);
  CHECK_FALSE(drv.publish(m));  // device is processing: no notify
  // vhost's re-check: clearing NO_NOTIFY finds the buffer added meanwhile.
  CHECK(dev.enable_notify(m));
  CHECK(m.load(l.used_flags(), 2) == 0);
  Chain c;
  REQUIRE(dev.pop(m, c));
  drv.disable_interrupts(m);
  dev.push_used(m, c.head, 0);
  CHECK_FALSE(dev.publish_used(m));  // driver polls: no interrupt
  CHECK(drv.enable_interrupts(m));   // and must poll once more
  CHECK_FALSE(dev.enable_notify(m));
  drv.add(m, 0x8000, 64, false, 2);
  CHECK(drv.publish(m));
}

TEST_CASE("with VIRTIO_F_EVENT_IDX one notification covers a batch") {
  ByteMem m;
  Layout l = Layout::packed(0x1000, 16);
  DriverQueue drv(l, true);
  DeviceQueue dev(l, true);
  drv.init(m);
  // The device asks to be told when avail idx passes 0: the first publish notifies.
  for (unsigned i = 0; i < 4; ++i) drv.add(m, 0x8000, 64, false, i);
  CHECK(drv.publish(m));
  REQUIRE(dev.has_avail(m));
  // While the device has not re-armed avail_event, further batches do not notify.
  drv.add(m, 0x8000, 64, false, 4);
  CHECK_FALSE(drv.publish(m));
  Chain c;
  unsigned n = 0;
  while (dev.pop(m, c)) {
    dev.push_used(m, c.head, 0);
    ++n;
  }
  CHECK(n == 4);
  // The device re-arms and its re-check finds the fifth buffer.
  CHECK(dev.enable_notify(m));
  CHECK(m.load(l.avail_event(), 2) == 4);
  REQUIRE(dev.pop(m, c));
  dev.push_used(m, c.head, 0);
  CHECK_FALSE(dev.enable_notify(m));
  CHECK(m.load(l.avail_event(), 2) == 5);
  // The driver has used_event 0: the first used publish interrupts, later ones not until re-armed.
  CHECK(dev.publish_used(m));
  std::uint64_t token;
  std::uint32_t len;
  while (drv.get_used(m, token, len)) {
  }
  CHECK_FALSE(drv.enable_interrupts(m));
  CHECK(m.load(l.used_event(), 2) == 5);
  drv.add(m, 0x8000, 64, false, 5);
  CHECK(drv.publish(m));
  REQUIRE(dev.has_avail(m));
  REQUIRE(dev.pop(m, c));
  dev.push_used(m, c.head, 0);
  CHECK(dev.publish_used(m));
}

TEST_CASE("a descriptor chain loop is detected") {
  ByteMem m;
  Layout l = Layout::packed(0x1000, 4);
  DriverQueue drv(l, false);
  drv.init(m);
  int head = drv.add(m, 0x8000, 64, false, 0);
  REQUIRE(head >= 0);
  // Corrupt the descriptor: NEXT pointing at itself.
  m.store(l.desc_at(static_cast<std::uint16_t>(head)) + 12, kDescFNext | (static_cast<std::uint64_t>(head) << 16), 4);
  drv.publish(m);
  DeviceQueue dev(l, false);
  Chain c;
  REQUIRE(dev.has_avail(m));
  CHECK_FALSE(dev.pop(m, c));
}
