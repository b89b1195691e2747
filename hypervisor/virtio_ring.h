// The virtio 1.x split virtqueue (virtio spec v1.1, section 2.6) and the
// virtio-net header (5.1.6), shared by the guest driver (guest/virtio_net.*)
// and the hypervisor's back end (hypervisor/virtio_net.*).
//
// The rings live in guest memory in their real little-endian layout; both
// sides reach them only through a memory accessor `Mem` with
//   std::uint64_t load(std::uint64_t addr, unsigned size);
//   void store(std::uint64_t addr, std::uint64_t value, unsigned size);
// whose addresses are guest-physical. The guest's accessor goes through its
// direct map, the hypervisor's through the VM's EPT; each access is a real
// load or store of the core that runs the code. The C++ state kept here
// (free list, shadow indices) is what Linux keeps in struct vring_virtqueue
// and vhost in struct vhost_virtqueue: software's private bookkeeping, never
// read by the other side.
//
// Plain C++, no SystemC.
#pragma once

#include <cstdint>
#include <vector>

namespace vmx::hv::virtio {

// 2.6.5 The Virtqueue Descriptor Table.
struct VirtqDesc {
  std::uint64_t addr;   // guest-physical buffer address
  std::uint32_t len;
  std::uint16_t flags;
  std::uint16_t next;
};
static_assert(sizeof(VirtqDesc) == 16, "virtq_desc is 16 bytes (2.6.5)");

constexpr std::uint16_t kDescFNext = 1;      // VIRTQ_DESC_F_NEXT: the chain continues at `next`
constexpr std::uint16_t kDescFWrite = 2;     // VIRTQ_DESC_F_WRITE: device writes (otherwise reads)
constexpr std::uint16_t kDescFIndirect = 4;  // VIRTQ_DESC_F_INDIRECT (not negotiated here)

// 2.6.6 The Virtqueue Available Ring: flags, idx, ring[size], used_event.
constexpr std::uint16_t kAvailFNoInterrupt = 1;  // VIRTQ_AVAIL_F_NO_INTERRUPT
// 2.6.8 The Virtqueue Used Ring: flags, idx, ring[size] of {id, len}, avail_event.
constexpr std::uint16_t kUsedFNoNotify = 1;  // VIRTQ_USED_F_NO_NOTIFY

struct VirtqUsedElem {
  std::uint32_t id;   // head of the descriptor chain
  std::uint32_t len;  // bytes the device wrote into the chain
};
static_assert(sizeof(VirtqUsedElem) == 8, "virtq_used_elem is 8 bytes (2.6.8)");

// 5.1.6 Device Operation: struct virtio_net_hdr, 12 bytes with
// VIRTIO_F_VERSION_1 (num_buffers always present), before every frame.
struct VirtioNetHdr {
  std::uint8_t flags;
  std::uint8_t gso_type;
  std::uint16_t hdr_len;
  std::uint16_t gso_size;
  std::uint16_t csum_start;
  std::uint16_t csum_offset;
  std::uint16_t num_buffers;
};
static_assert(sizeof(VirtioNetHdr) == 12, "virtio_net_hdr is 12 bytes with VIRTIO_F_VERSION_1 (5.1.6)");
constexpr unsigned kNetHdrBytes = sizeof(VirtioNetHdr);
constexpr unsigned kNetHdrNumBuffers = 10;  // offset of num_buffers

/// VIRTIO_F_EVENT_IDX (2.6.7.1, 2.6.10.1): the other side wants an event
/// (interrupt or notification) if `event` lies in [old, new), i.e. the
/// index it asked to be told about was passed by this update. All
/// arithmetic modulo 2^16, as Linux's vring_need_event.
constexpr bool need_event(std::uint16_t event, std::uint16_t new_idx, std::uint16_t old_idx) {
  return static_cast<std::uint16_t>(new_idx - event - 1) < static_cast<std::uint16_t>(new_idx - old_idx);
}

/// Where one split virtqueue's three parts are (guest-physical), and the
/// offset arithmetic of 2.6: alignment 16 for the descriptor table, 2 for
/// the available ring, 4 for the used ring (2.6, table "Virtqueue Part
/// Alignment"). The queue size must be a power of two at most 32768.
struct Layout {
  std::uint64_t desc = 0, avail = 0, used = 0;
  std::uint16_t size = 0;

  static constexpr std::uint64_t desc_bytes(std::uint16_t n) { return 16ull * n; }
  /// flags, idx, ring[n], used_event.
  static constexpr std::uint64_t avail_bytes(std::uint16_t n) { return 6ull + 2ull * n; }
  /// flags, idx, ring[n], avail_event.
  static constexpr std::uint64_t used_bytes(std::uint16_t n) { return 6ull + 8ull * n; }
  /// The three parts packed from `base` (legacy-style: the used ring starts
  /// on the next `used_align` boundary, 4096 in legacy virtio-pci).
  static constexpr Layout packed(std::uint64_t base, std::uint16_t n, std::uint64_t used_align = 4096) {
    Layout l;
    l.size = n;
    l.desc = base;
    l.avail = base + desc_bytes(n);
    l.used = (l.avail + avail_bytes(n) + used_align - 1) & ~(used_align - 1);
    return l;
  }
  constexpr std::uint64_t bytes() const { return used + used_bytes(size) - desc; }
  constexpr bool valid() const {
    return size != 0 && (size & (size - 1)) == 0 && size <= 32768 && desc % 16 == 0 && avail % 2 == 0 &&
           used % 4 == 0;
  }

  constexpr std::uint64_t desc_at(std::uint16_t i) const { return desc + 16ull * i; }
  constexpr std::uint64_t avail_flags() const { return avail; }
  constexpr std::uint64_t avail_idx() const { return avail + 2; }
  constexpr std::uint64_t avail_ring(std::uint16_t slot) const { return avail + 4 + 2ull * (slot & (size - 1)); }
  constexpr std::uint64_t used_event() const { return avail + 4 + 2ull * size; }
  constexpr std::uint64_t used_flags() const { return used; }
  constexpr std::uint64_t used_idx() const { return used + 2; }
  constexpr std::uint64_t used_ring(std::uint16_t slot) const { return used + 4 + 8ull * (slot & (size - 1)); }
  constexpr std::uint64_t avail_event() const { return used + 4 + 8ull * size; }
};

/// The driver's side of one virtqueue (2.7.13 "Supplying Buffers to The
/// Device", 2.7.14 "Receiving Used Buffers From The Device"), as Linux's
/// virtio_ring.c: a free list of descriptors, the shadow available index,
/// the last used index seen.
class DriverQueue {
 public:
  DriverQueue() = default;
  DriverQueue(const Layout& l, bool event_idx) : m_l(l), m_event_idx(event_idx), m_heads(l.size, 0) {
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
  std::uint16_t m_avail_shadow = 0, m_avail_pub = 0, m_last_used = 0;
  unsigned m_added = 0;
};

/// One buffer of a chain the device took from the available ring.
struct Chain {
  std::uint16_t head = 0;
  std::uint64_t addr = 0;  // first descriptor's buffer
  std::uint32_t len = 0;   // total length of the chain
  bool write = false;      // first descriptor device-writable
  unsigned descriptors = 0;
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
