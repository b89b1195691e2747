#include "guest/virtio_net.h"

#include <algorithm>

#include "models/nic.h"

namespace vmx::guest {

namespace reg = abi::virtio_reg;
namespace vq = abi::virtio;
using cpu::Core;

std::uint64_t VirtioNetDriver::memory_bytes(std::uint16_t n) {
  // Per queue a page for the descriptor table and available ring and one
  // for the used ring; 2 KiB buffers, two per page.
  return 4096ull * (4 + n);
}

VirtioNetDriver::VirtioNetDriver(const VirtioDriverCosts& costs, std::uint64_t window_va, const Memory& mem,
                                 std::uint8_t vector, stats::Group* parent)
    : m_costs(costs),
      m_window(window_va),
      m_mem(mem),
      m_vector(vector),
      m_qsize(static_cast<std::uint16_t>(costs.queue_size)),
      m_stats(parent) {
  if (mem.gpa & 0xFFF || mem.bytes < memory_bytes(m_qsize))
    throw cpu::SimulationError("virtio-net driver: its memory must be page-aligned and at least " +
                               std::to_string(memory_bytes(m_qsize)) + " bytes");
  m_next_page = mem.gpa;
}

VirtioDriverCosts VirtioNetDriver::costs_from(const NetParams& net) {
  VirtioDriverCosts k;
  k.tx_frame = net.costs.xmit;
  k.rx_frame = net.costs.rx_frame;
  k.irq = net.costs.irq;
  std::uint64_t n = std::min<std::uint64_t>({net.tx_ring, net.rx_ring, 128});
  k.queue_size = 2;
  while (k.queue_size * 2 <= n) k.queue_size *= 2;
  return k;
}

VirtioNetDriver::VirtioNetDriver(const VirtioDriverCosts& costs, stats::Group* parent)
    : m_costs(costs),
      m_window(0),
      m_vector(kDefaultVector),
      m_qsize(static_cast<std::uint16_t>(costs.queue_size)),
      m_stats(parent) {}

std::uint64_t VirtioNetDriver::alloc_page(Core& c) {
  if (m_env) return m_env->net_alloc_page(c);
  const std::uint64_t p = m_next_page;
  m_next_page += 4096;
  return p;
}

std::uint64_t VirtioNetDriver::alloc_shared_page(Core& c) {
  if (m_env) return m_env->net_alloc_shared_page(c);
  return alloc_page(c);
}

void VirtioNetDriver::reg_write(Core& c, std::uint64_t offset, std::uint64_t value, unsigned size) {
  c.store(m_window + offset, value, size);
}
std::uint64_t VirtioNetDriver::reg_read(Core& c, std::uint64_t offset, unsigned size) {
  return c.load(m_window + offset, size);
}

vq::Layout VirtioNetDriver::setup_queue(Core& c, unsigned index) {
  vq::Layout l;
  l.size = m_qsize;
  l.desc = alloc_shared_page(c);
  l.avail = l.desc + vq::Layout::desc_bytes(m_qsize);  // fits the page for sizes up to 128
  l.used = alloc_shared_page(c);
  reg_write(c, reg::kQueueSel, index);
  reg_write(c, reg::kQueueSize, m_qsize);
  reg_write(c, reg::kQueueDesc, l.desc, 8);
  reg_write(c, reg::kQueueAvail, l.avail, 8);
  reg_write(c, reg::kQueueUsed, l.used, 8);
  return l;
}

bool VirtioNetDriver::probe(Core& c, NetEnv& env, NetStats& stats, std::string& why) {
  m_env = &env;
  m_net_stats = &stats;
  m_bounce = env.net_bounce();
  if (m_bounce && !m_bounced_bytes)
    m_bounced_bytes = &m_stats.make<stats::Counter>(
        "bounced_bytes", "bytes", "bytes copied between private buffers and shared bounce buffers (encrypted VM)");
  m_mem.va_offset = env.net_phys_to_virt(0);
  m_window = env.net_map_io(c, reg::kWindow, reg::kPageBytes);
  if (!probe(c)) {
    why = "no virtio-net device (magic, version, device ID or VIRTIO_F_VERSION_1) at guest-physical 0xFEB00000";
    return false;
  }
  return true;
}

bool VirtioNetDriver::probe(Core& c) {
  if (reg_read(c, reg::kMagic) != reg::kMagicValue || reg_read(c, reg::kVersion) != 2 ||
      reg_read(c, reg::kDeviceId) != 1)
    return false;
  reg_write(c, reg::kStatus, 0);      // reset
  reg_write(c, reg::kStatus, 1 | 2);  // ACKNOWLEDGE | DRIVER
  const std::uint64_t offered = reg_read(c, reg::kDeviceFeatures, 8);
  const std::uint64_t want = reg::kFeatureVersion1 | reg::kFeatureEventIdx | reg::kFeatureMac;
  if (!(offered & reg::kFeatureVersion1)) return false;
  const std::uint64_t features = offered & want;
  reg_write(c, reg::kDriverFeatures, features, 8);
  reg_write(c, reg::kStatus, 1 | 2 | 8);  // FEATURES_OK
  const bool event_idx = features & reg::kFeatureEventIdx;
  m_mac = reg_read(c, reg::kMac, 4) | (reg_read(c, reg::kMac + 4, 2) << 32);

  Mem m{c, m_mem.va_offset};
  vq::Layout rl = setup_queue(c, reg::kRxQueue);
  m_rx = virtio::DriverQueue(rl, event_idx);
  m_rx.init(m);
  reg_write(c, reg::kQueueReady, 1);
  vq::Layout tl = setup_queue(c, reg::kTxQueue);
  m_tx = virtio::DriverQueue(tl, event_idx);
  m_tx.init(m);
  reg_write(c, reg::kQueueReady, 1);
  reg_write(c, reg::kVector, m_vector);
  m_buffer_pages.clear();
  m_private_pages.clear();
  for (unsigned i = 0; i < m_qsize; ++i) m_buffer_pages.push_back(alloc_shared_page(c));
  if (m_bounce)
    for (unsigned i = 0; i < m_qsize; ++i) m_private_pages.push_back(alloc_page(c));
  // Post every RX buffer (add_recvbuf_small), then tell the device once.
  for (unsigned i = 0; i < m_qsize; ++i) m_rx.add(m, buffer_gpa(i), kBufferBytes, true, i);
  if (m_rx.publish(m)) reg_write(c, reg::kQueueNotify, reg::kRxQueue);
  m_tx_free.clear();
  for (unsigned i = 2u * m_qsize; i-- > m_qsize;) m_tx_free.push_back(i);
  reg_write(c, reg::kStatus, 1 | 2 | 8 | reg::kStatusDriverOk);
  return true;
}

void VirtioNetDriver::reap_tx(Core& c) {
  Mem m{c, m_mem.va_offset};
  std::uint64_t slot;
  std::uint32_t len;
  while (m_tx.get_used(m, slot, len)) m_tx_free.push_back(static_cast<unsigned>(slot));
}

bool VirtioNetDriver::reap(Core& c) {
  reap_tx(c);
  return !m_tx_free.empty();
}

bool VirtioNetDriver::transmit(Core& c, std::uint64_t src_va, std::uint32_t len) {
  if (len == 0 || len > kBufferBytes - vq::kNetHdrBytes)
    throw cpu::SimulationError("virtio-net driver: frame of " + std::to_string(len) + " bytes does not fit a buffer");
  c.compute(m_costs.tx_frame);
  if (m_tx_free.empty()) reap_tx(c);  // free_old_xmit_skbs
  if (m_tx_free.empty()) {
    ++m_stats.tx_full;
    return false;
  }
  const unsigned slot = m_tx_free.back();
  m_tx_free.pop_back();
  const std::uint64_t buf = buffer_gpa(slot);
  Mem m{c, m_mem.va_offset};
  // struct virtio_net_hdr: no offloads (5.1.6.2).
  m.store(buf, 0, 8);
  m.store(buf + 8, 0, 4);
  if (m_bounce) {
    // The frame is built in private memory, then bounced to the shared slot.
    const std::uint64_t priv = private_gpa(slot) + m_mem.va_offset + vq::kNetHdrBytes;
    c.rep_movs(priv, src_va, len);
    c.rep_movs(buf + m_mem.va_offset + vq::kNetHdrBytes, priv, len);
    *m_bounced_bytes += len;
  } else {
    c.rep_movs(buf + m_mem.va_offset + vq::kNetHdrBytes, src_va, len);
  }
  m_tx.add(m, buf, vq::kNetHdrBytes + len, false, slot);
  ++m_stats.tx_frames;
  return true;
}

bool VirtioNetDriver::flush_batch(Core& c) {
  Mem m{c, m_mem.va_offset};
  // virtqueue_kick_prepare: the index store is ordered before the read of
  // the device's suppression state by a full barrier (virtio_mb).
  const bool notify = m_tx.publish(m);
  if (notify) {
    reg_write(c, reg::kQueueNotify, reg::kTxQueue);
    ++m_stats.kicks;
    if (m_net_stats) ++m_net_stats->doorbells;
  } else {
    ++m_stats.kicks_suppressed;
  }
  return notify;
}

unsigned VirtioNetDriver::handle_interrupt(Core& c) {
  c.compute(m_costs.irq);
  ++m_stats.interrupts;
  reap_tx(c);
  Mem m{c, m_mem.va_offset};
  const std::uint16_t used = static_cast<std::uint16_t>(m.load(m_rx.layout().used_idx(), 2));
  return static_cast<std::uint16_t>(used - m_rx.last_used());
}

std::uint32_t VirtioNetDriver::interrupt(Core& c) {
  const unsigned rx = handle_interrupt(c);
  return models::nicreg::kCauseTx | (rx ? models::nicreg::kCauseRx : 0u);
}

bool VirtioNetDriver::rx_ready(Core& c) {
  Mem m{c, m_mem.va_offset};
  if (m_rx.has_used(m)) return true;
  return m_rx.enable_interrupts(m);
}

void VirtioNetDriver::want_tx_interrupt(Core& c, bool on) {
  Mem m{c, m_mem.va_offset};
  if (on) m_tx.enable_interrupts(m);
  else m_tx.disable_interrupts(m);
}

std::uint32_t VirtioNetDriver::receive(Core& c, std::uint64_t dst_va, std::uint32_t max) {
  Mem m{c, m_mem.va_offset};
  std::uint64_t slot;
  std::uint32_t len;
  if (!m_rx.get_used(m, slot, len)) return 0;
  c.compute(m_costs.rx_frame);
  ++m_stats.rx_frames;
  const std::uint64_t buf = buffer_gpa(static_cast<unsigned>(slot));
  std::uint32_t n = len > vq::kNetHdrBytes ? len - vq::kNetHdrBytes : 0;
  if (n > max) n = max;
  m.load(buf, 8);  // the header (no offloads negotiated)
  if (n && m_bounce) {
    // Bounced from the shared slot into private memory first.
    const std::uint64_t priv = private_gpa(static_cast<unsigned>(slot)) + m_mem.va_offset + vq::kNetHdrBytes;
    c.rep_movs(priv, buf + m_mem.va_offset + vq::kNetHdrBytes, n);
    c.rep_movs(dst_va, priv, n);
    *m_bounced_bytes += n;
  } else if (n) {
    c.rep_movs(dst_va, buf + m_mem.va_offset + vq::kNetHdrBytes, n);
  }
  // Re-post the buffer; the device is told only if it asked (event index).
  m_rx.add(m, buf, kBufferBytes, true, slot);
  if (m_rx.publish(m)) reg_write(c, reg::kQueueNotify, reg::kRxQueue);
  return n;
}

void VirtioNetDriver::rx_interrupts_off(Core& c) {
  Mem m{c, m_mem.va_offset};
  m_rx.disable_interrupts(m);
}

bool VirtioNetDriver::rx_interrupts_on(Core& c) {
  Mem m{c, m_mem.va_offset};
  return m_rx.enable_interrupts(m);
}

}  // namespace vmx::guest
