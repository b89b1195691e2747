// The guest's virtio-blk driver (as Linux's drivers/block/virtio_blk.c over
// virtio_ring.c), used by the kernel's swap (guest/swap.cc): one request
// queue, each request a chain of three descriptors (header, one 4 KiB
// page of data, status byte; virtio spec v1.1, 5.2.6) in guest memory, the
// device's register page (abi/virtio_blk.h) mapped uncached. Every step is
// the guest's own loads and stores; a register access exits to the
// hypervisor's back end (hypervisor/virtio_blk.h).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "abi/virtio_blk.h"
#include "cpu/core.h"
#include "guest/virtqueue.h"

namespace vmx::guest {

class VirtioBlkDriver {
 public:
  static constexpr std::uint16_t kQueueSize = 64;
  static constexpr unsigned kMaxRequests = kQueueSize / 3;  // three descriptors each
  static constexpr std::uint8_t kVector = 0x42;  // a device vector beside the NIC's (guest/net.h)
  static constexpr std::uint8_t kPending = 0xFF;  // status byte before the device writes it

  /// Initialisation (virtio 1.1, 3.1.1) with the register page at
  /// `window_va`, guest-physical memory reached at gpa + `va_offset`, and
  /// cleared pages from `alloc_page`. False if there is no virtio-blk
  /// device there.
  bool probe(cpu::Core& c, std::uint64_t window_va, std::uint64_t va_offset,
             const std::function<std::uint64_t(cpu::Core&)>& alloc_page);
  /// The disk's size in 4 KiB blocks.
  std::uint64_t blocks() const { return m_blocks; }
  /// Queues a request moving the 4 KiB page at guest-physical `gpa` to
  /// (write) or from block `block`; not visible to the device before
  /// kick(). Returns its request number, -1 if every request slot is busy.
  int submit(cpu::Core& c, std::uint64_t block, std::uint64_t gpa, bool write);
  /// Publishes the queued requests and notifies the device.
  void kick(cpu::Core& c);
  /// Takes the completed requests off the used ring (marks them done);
  /// returns how many.
  unsigned reap(cpu::Core& c);
  bool done(int id) const { return m_req[static_cast<unsigned>(id)].done; }
  /// The status byte the device wrote (kStatusOk ...), read from memory.
  std::uint8_t status(cpu::Core& c, int id) const;
  /// Frees a done request's slot.
  void release(int id) { m_req[static_cast<unsigned>(id)] = Req{}; }
  unsigned free_slots() const;

 private:
  struct Mem {  // guest-physical ring addresses through the direct map
    cpu::Core& c;
    std::uint64_t off;
    std::uint64_t load(std::uint64_t gpa, unsigned size) { return c.load(gpa + off, size); }
    void store(std::uint64_t gpa, std::uint64_t v, unsigned size) { c.store(gpa + off, v, size); }
  };
  struct Req {
    bool busy = false, done = false;
  };
  std::uint64_t m_window = 0, m_off = 0, m_hdr_page = 0, m_blocks = 0;
  virtio::DriverQueue m_q;
  std::vector<Req> m_req = std::vector<Req>(kMaxRequests);
};

}  // namespace vmx::guest
