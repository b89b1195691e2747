#include "guest/virtio_blk.h"

namespace vmx::guest {

namespace reg = abi::virtio_reg;
namespace blk = abi::virtio_blk;
namespace vq = abi::virtio;
using cpu::Core;

bool VirtioBlkDriver::probe(Core& c, std::uint64_t window_va, std::uint64_t va_offset,
                            const std::function<std::uint64_t(Core&)>& alloc_page) {
  m_window = window_va;
  m_off = va_offset;
  auto rd = [&](std::uint64_t off, unsigned size = 4) { return c.load(m_window + off, size); };
  auto wr = [&](std::uint64_t off, std::uint64_t v, unsigned size = 4) { c.store(m_window + off, v, size); };
  if (rd(reg::kMagic) != reg::kMagicValue || rd(reg::kVersion) != 2 || rd(reg::kDeviceId) != blk::kDeviceId)
    return false;
  wr(reg::kStatus, 0);      // reset
  wr(reg::kStatus, 1 | 2);  // ACKNOWLEDGE | DRIVER
  if (!(rd(reg::kDeviceFeatures, 8) & reg::kFeatureVersion1)) return false;
  wr(reg::kDriverFeatures, reg::kFeatureVersion1, 8);  // no event index: an interrupt per completion batch
  wr(reg::kStatus, 1 | 2 | 8);  // FEATURES_OK
  m_blocks = rd(blk::kCapacity, 8) / (4096 / blk::kSectorBytes);
  vq::Layout l;
  l.size = kQueueSize;
  l.desc = alloc_page(c);
  l.avail = l.desc + vq::Layout::desc_bytes(kQueueSize);
  l.used = alloc_page(c);
  m_hdr_page = alloc_page(c);  // request i: header at 32 i, status byte at 32 i + 16
  if (!l.desc || !l.used || !m_hdr_page) return false;
  wr(reg::kQueueSel, blk::kRequestQueue);
  wr(reg::kQueueSize, kQueueSize);
  wr(reg::kQueueDesc, l.desc, 8);
  wr(reg::kQueueAvail, l.avail, 8);
  wr(reg::kQueueUsed, l.used, 8);
  m_q = virtio::DriverQueue(l, false);
  Mem m{c, m_off};
  m_q.init(m);
  wr(reg::kQueueReady, 1);
  wr(reg::kVector, kVector);
  wr(reg::kStatus, 1 | 2 | 8 | reg::kStatusDriverOk);
  return true;
}

unsigned VirtioBlkDriver::free_slots() const {
  unsigned n = 0;
  for (const Req& r : m_req) n += !r.busy;
  return n;
}

int VirtioBlkDriver::submit(Core& c, std::uint64_t block, std::uint64_t gpa, bool write) {
  unsigned id = 0;
  while (id < kMaxRequests && m_req[id].busy) ++id;
  if (id == kMaxRequests) return -1;
  Mem m{c, m_off};
  const std::uint64_t hdr = m_hdr_page + 32ull * id;
  m.store(hdr, write ? blk::kTypeOut : blk::kTypeIn, 8);  // type, reserved
  m.store(hdr + 8, block * (4096 / blk::kSectorBytes), 8);
  m.store(hdr + 16, kPending, 1);
  const virtio::DriverQueue::Buf bufs[3] = {{hdr, 16, false}, {gpa, 4096, !write}, {hdr + 16, 1, true}};
  if (m_q.add_chain(m, bufs, 3, id) < 0) return -1;
  m_req[id].busy = true;
  return static_cast<int>(id);
}

void VirtioBlkDriver::kick(Core& c) {
  Mem m{c, m_off};
  if (m_q.publish(m)) c.store(m_window + reg::kQueueNotify, blk::kRequestQueue, 4);
}

unsigned VirtioBlkDriver::reap(Core& c) {
  Mem m{c, m_off};
  std::uint64_t token = 0;
  std::uint32_t len = 0;
  unsigned n = 0;
  while (m_q.get_used(m, token, len)) {
    if (token < kMaxRequests) m_req[token].done = true;
    ++n;
  }
  return n;
}

std::uint8_t VirtioBlkDriver::status(Core& c, int id) const {
  return static_cast<std::uint8_t>(c.load(m_off + m_hdr_page + 32ull * static_cast<unsigned>(id) + 16, 1));
}

}  // namespace vmx::guest
