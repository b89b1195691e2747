// The device's side of a virtio split virtqueue (virtio spec v1.1, 2.7
// from the device's view), as vhost's vhost_get_vq_desc / vhost_add_used /
// vhost_notify, over the shared ring layout of abi/virtio_ring.h. Memory is
// reached through an accessor `Mem` (see abi/virtio_ring.h) whose
// addresses are guest-physical. Plain C++, no SystemC.
#pragma once

#include <cstdint>

#include "abi/virtio_ring.h"

namespace vmx::hv::virtio {

using abi::virtio::kAvailFNoInterrupt;
using abi::virtio::kDescFNext;
using abi::virtio::kDescFWrite;
using abi::virtio::kNetHdrBytes;
using abi::virtio::kNetHdrNumBuffers;
using abi::virtio::kUsedFNoNotify;
using abi::virtio::Layout;
using abi::virtio::need_event;

/// One buffer of a chain the device took from the available ring.
struct Chain {
  std::uint16_t head = 0;
  std::uint64_t addr = 0;  // first descriptor's buffer
  std::uint32_t len = 0;   // total length of the chain
  bool write = false;      // first descriptor device-writable
  unsigned descriptors = 0;
  /// The first kParts descriptors of the chain, in order (virtio-blk's
  /// header, data and status, 5.2.6).
  static constexpr unsigned kParts = 4;
  struct Part {
    std::uint64_t addr = 0;
    std::uint32_t len = 0;
    bool write = false;
  } parts[kParts];
};

/// The device's side of one virtqueue (2.7.x from the device's view, as
/// vhost's vhost_get_vq_desc / vhost_add_used / vhost_notify).
class DeviceQueue {
 public:
  DeviceQueue() = default;
  DeviceQueue(const Layout& l, bool event_idx) : m_l(l), m_event_idx(event_idx) {}
  const Layout& layout() const { return m_l; }
  bool ready() const { return m_l.size != 0; }

  /// Whether the driver made buffers available that the device has not
  /// taken (one load of avail->idx).
  template <class Mem>
  bool has_avail(Mem& m) {
    m_avail_cache = static_cast<std::uint16_t>(m.load(m_l.avail_idx(), 2));
    return m_avail_cache != m_last_avail;
  }
  /// Takes the next available chain (call after has_avail()). Descriptor
  /// chains are followed through VIRTQ_DESC_F_NEXT; a loop longer than
  /// the queue size is an error (2.6.5.3.1), reported by returning false.
  template <class Mem>
  bool pop(Mem& m, Chain& c) {
    if (m_last_avail == m_avail_cache) return false;
    c = Chain{};
    c.head = static_cast<std::uint16_t>(m.load(m_l.avail_ring(m_last_avail), 2));
    ++m_last_avail;
    if (c.head >= m_l.size) return false;
    std::uint16_t d = c.head;
    for (;;) {
      std::uint64_t a = m_l.desc_at(d);
      std::uint64_t addr = m.load(a, 8);
      std::uint32_t len = static_cast<std::uint32_t>(m.load(a + 8, 4));
      std::uint64_t fn = m.load(a + 12, 4);  // flags and next in one load
      std::uint16_t flags = static_cast<std::uint16_t>(fn);
      if (c.descriptors == 0) {
        c.addr = addr;
        c.write = flags & kDescFWrite;
      }
      c.len += len;
      if (c.descriptors < Chain::kParts) c.parts[c.descriptors] = {addr, len, (flags & kDescFWrite) != 0};
      if (++c.descriptors > m_l.size) return false;
      if (!(flags & kDescFNext)) break;
      d = static_cast<std::uint16_t>(fn >> 16);
      if (d >= m_l.size) return false;
    }
    return true;
  }
  /// Writes a used entry (not yet published).
  template <class Mem>
  void push_used(Mem& m, std::uint16_t head, std::uint32_t len) {
    std::uint64_t e = m_l.used_ring(m_used_shadow);
    m.store(e, head, 4);
    m.store(e + 4, len, 4);
    ++m_used_shadow;
  }
  /// Publishes the used entries written since the last publish and says
  /// whether the driver wants an interrupt (2.7.10: used_event rule with
  /// VIRTIO_F_EVENT_IDX, else unless VIRTQ_AVAIL_F_NO_INTERRUPT).
  template <class Mem>
  bool publish_used(Mem& m) {
    std::uint16_t old = m_used_pub;
    m.store(m_l.used_idx(), m_used_shadow, 2);
    m_used_pub = m_used_shadow;
    if (old == m_used_pub) return false;
    if (m_event_idx) return need_event(static_cast<std::uint16_t>(m.load(m_l.used_event(), 2)), m_used_pub, old);
    return (m.load(m_l.avail_flags(), 2) & kAvailFNoInterrupt) == 0;
  }
  /// Notification suppression while the device processes the ring (as
  /// vhost's vhost_disable_notify / vhost_enable_notify): off sets
  /// VIRTQ_USED_F_NO_NOTIFY (without event index); on clears it, or with
  /// event index sets avail_event to the next index the device will
  /// read, and then re-reads avail->idx: true means buffers arrived in
  /// between and the device must process again rather than wait.
  template <class Mem>
  void disable_notify(Mem& m) {
    if (!m_event_idx && !m_notify_off) m.store(m_l.used_flags(), kUsedFNoNotify, 2);
    m_notify_off = true;
  }
  template <class Mem>
  bool enable_notify(Mem& m) {
    if (m_event_idx)
      m.store(m_l.avail_event(), m_last_avail, 2);
    else if (m_notify_off)
      m.store(m_l.used_flags(), 0, 2);
    m_notify_off = false;
    return has_avail(m);
  }
  std::uint16_t last_avail() const { return m_last_avail; }
  std::uint16_t used_published() const { return m_used_pub; }

 private:
  Layout m_l;
  bool m_event_idx = false;
  bool m_notify_off = false;
  std::uint16_t m_last_avail = 0, m_avail_cache = 0, m_used_shadow = 0, m_used_pub = 0;
};

}  // namespace vmx::hv::virtio
