// The guest's virtio-net driver (as Linux's drivers/net/virtio_net.c over
// virtio_ring.c): an RX and a TX split virtqueue and their buffers in guest
// memory, the device's register page (hypervisor/virtio_net.h) at a
// guest-virtual address the kernel maps uncached. Every step is the
// guest's own loads, stores and rep_movs plus instructions charged from
// VirtioDriverCosts; a register access to the device exits and is emulated
// by the hypervisor's back end.
//
// It is a NetDriver of the guest network core (guest/net.h): the kernel
// probes it at boot with its NetEnv (pages from the kernel, the register
// window ioremapped). It can also run stand-alone on a region of guest
// memory and a window address (the hypervisor-level tests).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "abi/virtio_net.h"
#include "abi/virtio_ring.h"
#include "cpu/core.h"
#include "guest/net.h"
#include "guest/virtqueue.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::guest {

struct VirtioDriverCosts {
  std::uint64_t tx_frame, rx_frame, irq, queue_size;
  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(tx_frame, "tx_frame", "300", Spec(Unit::Instructions),
            "virtio-net driver: queueing one frame (start_xmit: header, descriptor, bookkeeping), besides the "
            "copy and ring stores (assumption, of the order of Linux's virtnet start_xmit).");
    v.param(rx_frame, "rx_frame", "300", Spec(Unit::Instructions),
            "virtio-net driver: taking one received frame and re-posting its buffer, besides the copy and ring "
            "accesses (assumption, of the order of Linux's receive_buf + add_recvbuf_small).");
    v.param(irq, "irq", "150", Spec(Unit::Instructions),
            "virtio-net driver: the interrupt handler's fixed part (vring_interrupt, scheduling the poll) "
            "(assumption).");
    v.param(queue_size, "queue_size", "64", Spec(Unit::Count).at_least(2).at_most(128).power_of_two(),
            "Entries per virtqueue the driver sets up (assumption; QEMU's default is 256).");
  }
};

class VirtioNetDriver final : public NetDriver {
 public:
  /// The kernel's driver costs (kernel.net.costs xmit, rx_frame, irq: the
  /// same as the ring driver's, so the device types compare on equal terms)
  /// and a queue size from kernel.net's ring sizes (a power of two, at most 128).
  static VirtioDriverCosts costs_from(const NetParams& net);
  static constexpr std::uint32_t kBufferBytes = 2048;  // two per page: never crosses a page

  /// Guest memory the driver owns: `bytes` from guest-physical `gpa`
  /// (page-aligned, see memory_bytes()), reached at guest-virtual
  /// gpa + va_offset (the direct map).
  struct Memory {
    std::uint64_t gpa = 0, bytes = 0, va_offset = 0;
  };
  static std::uint64_t memory_bytes(std::uint16_t queue_size);
  static constexpr std::uint8_t kDefaultVector = 0x41;  // guest/net.h kNetVector

  /// Stand-alone: `window_va`: where the device's register page is
  /// mapped; `vector`: the guest interrupt vector it is told to raise.
  VirtioNetDriver(const VirtioDriverCosts& costs, std::uint64_t window_va, const Memory& mem, std::uint8_t vector,
                  stats::Group* parent);
  /// As the kernel's NetDriver: memory and window come from probe's NetEnv.
  VirtioNetDriver(const VirtioDriverCosts& costs, stats::Group* parent);

  /// Initialisation (virtio 1.1, 3.1.1): checks the device, negotiates
  /// VERSION_1, EVENT_IDX and MAC, sets up both queues, posts every RX
  /// buffer, DRIVER_OK. False if the page is not a virtio-net device.
  bool probe(cpu::Core& c);
  std::uint64_t mac() const override { return m_mac; }
  std::uint8_t vector() const override { return m_vector; }

  // NetDriver.
  bool probe(cpu::Core& c, NetEnv& env, NetStats& stats, std::string& why) override;
  void flush(cpu::Core& c) override { flush_batch(c); }
  bool reap(cpu::Core& c) override;
  /// No frame waiting: re-enables RX interrupts and looks again (NAPI
  /// completion), so a frame that arrives after this check interrupts.
  bool rx_ready(cpu::Core& c) override;
  std::uint32_t interrupt(cpu::Core& c) override;
  void want_tx_interrupt(cpu::Core& c, bool on) override;

  /// Copies a frame from guest-virtual src into a TX buffer and queues it
  /// (not yet visible to the device: flush()). Reaps TX completions first
  /// when the queue is full; false if it stays full.
  bool transmit(cpu::Core& c, std::uint64_t src_va, std::uint32_t len) override;
  /// Publishes the queued frames and notifies the device (one register
  /// write) unless it suppressed notifications. True if it notified.
  bool flush_batch(cpu::Core& c);
  /// The interrupt handler's work: reaps TX completions; returns how many
  /// received frames wait (no register access: the vector identifies the
  /// device, as with MSI-X).
  unsigned handle_interrupt(cpu::Core& c);
  /// Takes the next received frame into guest-virtual dst (at most max
  /// bytes) and re-posts its buffer; returns the frame length, 0 if none.
  std::uint32_t receive(cpu::Core& c, std::uint64_t dst_va, std::uint32_t max) override;
  /// Interrupt suppression while polling (NAPI): off asks the device not to
  /// interrupt for RX; on re-arms and returns true if frames arrived
  /// meanwhile (poll again).
  void rx_interrupts_off(cpu::Core& c);
  bool rx_interrupts_on(cpu::Core& c);

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "virtio_net", "virtio-net guest driver") {}
    stats::Counter tx_frames{this, "tx_frames", "frames", "frames queued for transmission"};
    stats::Counter tx_full{this, "tx_full", "events", "transmit refused: TX queue full"};
    stats::Counter kicks{this, "kicks", "events", "notify register writes (one per batch at most)"};
    stats::Counter kicks_suppressed{this, "kicks_suppressed", "events", "flushes that needed no notify"};
    stats::Counter rx_frames{this, "rx_frames", "frames", "frames received"};
    stats::Counter interrupts{this, "interrupts", "events", "interrupts handled"};
  };
  const Stats& stats() const { return m_stats; }

 private:
  struct Mem {  // guest-physical ring addresses through the direct map
    cpu::Core& c;
    std::uint64_t off;
    std::uint64_t load(std::uint64_t gpa, unsigned size) { return c.load(gpa + off, size); }
    void store(std::uint64_t gpa, std::uint64_t v, unsigned size) { c.store(gpa + off, v, size); }
  };
  void reg_write(cpu::Core& c, std::uint64_t offset, std::uint64_t value, unsigned size = 4);
  std::uint64_t reg_read(cpu::Core& c, std::uint64_t offset, unsigned size = 4);
  abi::virtio::Layout setup_queue(cpu::Core& c, unsigned index);
  std::uint64_t alloc_page(cpu::Core& c);
  /// A page the device reaches (rings, bounce buffers): shared in an
  /// encrypted VM (NetEnv::net_alloc_shared_page).
  std::uint64_t alloc_shared_page(cpu::Core& c);
  void reap_tx(cpu::Core& c);
  /// Buffer slot i: RX slots [0, qsize), TX slots [qsize, 2 qsize), two per page.
  std::uint64_t buffer_gpa(unsigned slot) const { return m_buffer_pages[slot / 2] + std::uint64_t{kBufferBytes} * (slot % 2); }

  VirtioDriverCosts m_costs;
  std::uint64_t m_window;
  Memory m_mem;
  std::uint8_t m_vector;
  std::uint16_t m_qsize;
  std::uint64_t m_mac = 0;
  std::uint64_t m_next_page = 0;  // stand-alone: next page of the region
  NetEnv* m_env = nullptr;
  NetStats* m_net_stats = nullptr;
  std::vector<std::uint64_t> m_buffer_pages;  // what the descriptors point to (shared)
  // Bounce buffering (NetEnv::net_bounce, an encrypted VM): each buffer
  // slot has a private twin (the skb's data) that the frame is built in or
  // copied to, and the device sees only the shared slot, as Linux's swiotlb
  // bounces each DMA mapping. bounced_bytes counts the extra copies.
  bool m_bounce = false;
  std::vector<std::uint64_t> m_private_pages;
  stats::Counter* m_bounced_bytes = nullptr;
  std::uint64_t private_gpa(unsigned slot) const {
    return m_private_pages[slot / 2] + std::uint64_t{kBufferBytes} * (slot % 2);
  }
  virtio::DriverQueue m_rx, m_tx;
  std::vector<unsigned> m_tx_free;  // free TX buffer slots
  Stats m_stats;
};

}  // namespace vmx::guest
