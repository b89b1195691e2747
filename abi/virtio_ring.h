// The virtio 1.x split virtqueue's layout (virtio spec v1.1, section 2.6)
// and the virtio-net header (5.1.6): part of the ABI (abi/) shared by the
// guest driver (guest/virtio_net.*, guest/virtqueue.h) and the hypervisor's
// back end (hypervisor/virtio_net.*, hypervisor/virtio_ring.h).
//
// The rings live in guest memory in their real little-endian layout; both
// sides reach them only through a memory accessor `Mem` with
//   std::uint64_t load(std::uint64_t addr, unsigned size);
//   void store(std::uint64_t addr, std::uint64_t value, unsigned size);
// whose addresses are guest-physical. The guest's accessor goes through its
// direct map, the hypervisor's through the VM's EPT; each access is a real
// load or store of the core that runs the code. Each side's private
// bookkeeping (free list, shadow indices: Linux's struct vring_virtqueue,
// vhost's struct vhost_virtqueue) lives with that side, never here.
//
// Plain C++, no SystemC.
#pragma once

#include <cstdint>

namespace vmx::abi::virtio {

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

}  // namespace vmx::abi::virtio
