// The driver's side of a virtio split virtqueue (virtio spec v1.1, 2.7.13,
// 2.7.14), as Linux's drivers/virtio/virtio_ring.c, over the shared ring
// layout of abi/virtio_ring.h. Memory is reached through an accessor `Mem`
// (see abi/virtio_ring.h) whose addresses are guest-physical. Plain C++.
#pragma once

#include <cstdint>
#include <vector>

#include "abi/virtio_ring.h"

namespace vmx::guest::virtio {

using abi::virtio::kAvailFNoInterrupt;
using abi::virtio::kDescFWrite;
using abi::virtio::kUsedFNoNotify;
using abi::virtio::Layout;
using abi::virtio::need_event;

/// The driver's side of one virtqueue (2.7.13 "Supplying Buffers to The
/// Device", 2.7.14 "Receiving Used Buffers From The Device"), as Linux's
/// virtio_ring.c: a free list of descriptors, the shadow available index,
/// the last used index seen.
class DriverQueue {
 public:
  DriverQueue() = default;
  DriverQueue(const Layout& l, bool event_idx)
      : m_l(l), m_event_idx(event_idx), m_heads(l.size, 0), m_chain_len(l.size, 1), m_next(l.size) {
    m_free.reserve(l.size);
    for (unsigned i = l.size; i-- > 0;) m_free.push_back(static_cast<std::uint16_t>(i));
  }
  const Layout& layout() const { return m_l; }
  unsigned free_descriptors() const { return static_cast<unsigned>(m_free.size()); }
  /// Descriptors in flight (made available, not yet used).
  unsigned in_flight() const { return m_l.size - free_descriptors(); }

  /// Clears the rings in memory (driver initialisation, 3.1.1 step 7).
  template <class Mem>
  void init(Mem& m) {
    m.store(m_l.avail_flags(), 0, 2);
    m.store(m_l.avail_idx(), 0, 2);
    m.store(m_l.used_flags(), 0, 2);
    m.store(m_l.used_idx(), 0, 2);
    m.store(m_l.used_event(), 0, 2);
    m.store(m_l.avail_event(), 0, 2);
  }

  /// Writes a one-descriptor chain for [addr, addr+len) (device-writable if
  /// `write`) and puts its head in the next available slot, without
  /// publishing it (publish() does). Returns the head, or -1 if no
  /// descriptor is free.
  template <class Mem>
  int add(Mem& m, std::uint64_t addr, std::uint32_t len, bool write, std::uint64_t token) {
    if (m_free.empty()) return -1;
    std::uint16_t d = m_free.back();
    m_free.pop_back();
    std::uint64_t a = m_l.desc_at(d);
    m.store(a, addr, 8);
    m.store(a + 8, len, 4);
    m.store(a + 12, write ? kDescFWrite : 0, 2);  // flags, next = 0
    m.store(m_l.avail_ring(m_avail_shadow), d, 2);
    ++m_avail_shadow;
    ++m_added;
    m_heads[d] = token;
    return d;
  }
  /// One buffer of a chain for add_chain.
  struct Buf {
    std::uint64_t addr = 0;
    std::uint32_t len = 0;
    bool write = false;  // device-writable
  };
  /// Writes a chain of `n` descriptors (VIRTQ_DESC_F_NEXT between them,
  /// 2.6.5) and puts its head in the next available slot, unpublished.
  /// Returns the head, or -1 if fewer than n descriptors are free.
  template <class Mem>
  int add_chain(Mem& m, const Buf* bufs, unsigned n, std::uint64_t token) {
    if (n == 0 || m_free.size() < n) return -1;
    std::uint16_t ids[8];
    if (n > 8) return -1;
    for (unsigned i = 0; i < n; ++i) {
      ids[i] = m_free.back();
      m_free.pop_back();
    }
    for (unsigned i = 0; i < n; ++i) {
      std::uint64_t a = m_l.desc_at(ids[i]);
      m.store(a, bufs[i].addr, 8);
      m.store(a + 8, bufs[i].len, 4);
      const std::uint16_t flags =
          static_cast<std::uint16_t>((bufs[i].write ? kDescFWrite : 0) | (i + 1 < n ? abi::virtio::kDescFNext : 0));
      m.store(a + 12, flags | (std::uint64_t{i + 1 < n ? ids[i + 1] : std::uint16_t{0}} << 16), 4);
    }
    m.store(m_l.avail_ring(m_avail_shadow), ids[0], 2);
    ++m_avail_shadow;
    ++m_added;
    m_heads[ids[0]] = token;
    m_chain_len[ids[0]] = static_cast<std::uint8_t>(n);
    m_next[ids[0]].assign(ids + 1, ids + n);
    return ids[0];
  }
  /// Publishes the slots added since the last publish (2.7.13.3: the
  /// index update after the ring entries, a release store on x86) and says
  /// whether the device must be notified (2.7.13.4 / 2.7.10): with
  /// VIRTIO_F_EVENT_IDX by the avail_event rule, otherwise unless the
  /// device set VIRTQ_USED_F_NO_NOTIFY.
  template <class Mem>
  bool publish(Mem& m) {
    std::uint16_t old = m_avail_pub;
    m.store(m_l.avail_idx(), m_avail_shadow, 2);
    m_avail_pub = m_avail_shadow;
    m_added = 0;
    if (old == m_avail_pub) return false;
    // The index store must be visible before the device's flags/event are
    // read (virtio_mb in Linux's virtqueue_kick_prepare); x86 TSO orders a
    // store before a later load only with a fence, charged by the caller.
    if (m_event_idx) return need_event(static_cast<std::uint16_t>(m.load(m_l.avail_event(), 2)), m_avail_pub, old);
    return (m.load(m_l.used_flags(), 2) & kUsedFNoNotify) == 0;
  }
  /// Takes the next used entry, if any: its token and the length written.
  template <class Mem>
  bool get_used(Mem& m, std::uint64_t& token, std::uint32_t& len) {
    if (m_last_used == static_cast<std::uint16_t>(m.load(m_l.used_idx(), 2))) return false;
    std::uint64_t e = m_l.used_ring(m_last_used);
    std::uint32_t id = static_cast<std::uint32_t>(m.load(e, 4));
    len = static_cast<std::uint32_t>(m.load(e + 4, 4));
    ++m_last_used;
    std::uint16_t d = static_cast<std::uint16_t>(id & (m_l.size - 1));
    token = m_heads[d];
    m_free.push_back(d);
    if (!m_chain_len.empty() && m_chain_len[d] > 1) {
      for (std::uint16_t x : m_next[d]) m_free.push_back(x);
      m_chain_len[d] = 1;
      m_next[d].clear();
    }
    return true;
  }
  /// Whether a used entry is pending (one load of used->idx).
  template <class Mem>
  bool has_used(Mem& m) const {
    return m_last_used != static_cast<std::uint16_t>(m.load(m_l.used_idx(), 2));
  }
  /// Interrupt suppression (2.7.10): off asks the device for no interrupts
  /// (VIRTQ_AVAIL_F_NO_INTERRUPT; with event index nothing is written, the
  /// used_event simply lags, as Linux's virtqueue_disable_cb_split); on
  /// re-enables them and says whether used entries arrived meanwhile
  /// (virtqueue_enable_cb: the caller must then poll again).
  template <class Mem>
  void disable_interrupts(Mem& m) {
    if (!m_event_idx && !m_cb_disabled) m.store(m_l.avail_flags(), kAvailFNoInterrupt, 2);
    m_cb_disabled = true;
  }
  template <class Mem>
  bool enable_interrupts(Mem& m) {
    if (m_event_idx)
      m.store(m_l.used_event(), m_last_used, 2);
    else if (m_cb_disabled)
      m.store(m_l.avail_flags(), 0, 2);
    m_cb_disabled = false;
    return has_used(m);
  }
  std::uint16_t last_used() const { return m_last_used; }
  std::uint16_t avail_published() const { return m_avail_pub; }

 private:
  Layout m_l;
  bool m_event_idx = false;
  bool m_cb_disabled = false;
  std::vector<std::uint16_t> m_free;
  std::vector<std::uint64_t> m_heads;  // token per head descriptor (Linux's desc_state[].data)
  std::vector<std::uint8_t> m_chain_len;             // descriptors in the chain at each head
  std::vector<std::vector<std::uint16_t>> m_next;    // the rest of each chain (freed with its head)
  std::uint16_t m_avail_shadow = 0, m_avail_pub = 0, m_last_used = 0;
  unsigned m_added = 0;
};

}  // namespace vmx::guest::virtio
