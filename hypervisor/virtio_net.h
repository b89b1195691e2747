// The hypervisor's virtio-net back end (in-kernel, as vhost-net): one
// device per VM with a TX and an RX split virtqueue (hypervisor/virtio_ring.h)
// in guest memory and a register page of its own (a minimal virtio-mmio-like
// layout, docs/io.md "virtio-net") that is not mapped in EPT, so every
// register access exits as an EPT violation and is emulated here.
//
// The device is simulated software: it runs on the core that took the exit
// (or the one that received the frame), reads and writes the rings and
// frames through the VM's guest-physical -> host-physical mapping with real
// loads, stores and rep_movs, and charges its path lengths (HvCosts
// virtio_*). It never reads the guest driver's C++ state.
#pragma once

#include <cstdint>

#include "abi/virtio_net.h"
#include "cpu/core.h"
#include "hypervisor/hypervisor.h"
#include "hypervisor/virtio_ring.h"
#include "sim/stats.h"

namespace vmx::hv {

class VirtioNet {
 public:
  /// What the hypervisor gives the device.
  class Host {
   public:
    virtual ~Host() = default;
    /// Host-physical address of guest-physical gpa (a software walk of the
    /// VM's EPT, charged as its loads), 0 if it is not backed.
    virtual std::uint64_t gpa_to_hpa(cpu::Core& c, std::uint64_t gpa) = 0;
    /// Forwards one frame at host-physical [hpa, hpa+len) to the network
    /// (the software switch and PF driver); false if it could not.
    virtual bool transmit(cpu::Core& c, std::uint64_t hpa, std::uint32_t len) = 0;
    /// Raises guest interrupt `vector` (Hypervisor::raise_virtual).
    virtual void interrupt(cpu::Core& c, std::uint8_t vector) = 0;
    /// Charges `instructions` of the device's code.
    virtual void charge(cpu::Core& c, std::uint64_t instructions) = 0;
  };

  /// The device of VM `name` with MAC `mac` (low 48 bits, byte 0 first on
  /// the wire); its statistics go under `parent` as "virtio".
  VirtioNet(const HvCosts& costs, Host& host, std::uint64_t mac, stats::Group* parent);

  /// Emulates one exiting access to the register page: `offset` in the
  /// page, `size` bytes, a store of `value` if `write`, otherwise `value`
  /// receives what the register reads. False for an access the layout does
  /// not allow (the caller decides what the guest gets).
  bool mmio(cpu::Core& c, std::uint64_t offset, unsigned size, bool write, std::uint64_t& value);
  /// Processes the TX queue (a notify, or a poll): takes every available
  /// chain in a batch, forwards its frame, returns it as used, and
  /// interrupts the guest unless it suppressed interrupts. While it works
  /// it suppresses notifications and re-checks before re-enabling them
  /// (vhost's handle_tx loop).
  void process_tx(cpu::Core& c);
  /// A frame for this VM at host-physical [hpa, hpa+len): copied into the
  /// next RX buffer after a virtio-net header, the used ring updated and
  /// the guest interrupted unless suppressed. False (frame dropped) if the
  /// driver has no RX buffer posted or the device is not running.
  bool receive(cpu::Core& c, std::uint64_t hpa, std::uint32_t len);

  bool running() const { return m_status & abi::virtio_reg::kStatusDriverOk; }
  std::uint64_t mac() const { return m_mac; }
  std::uint8_t vector() const { return m_vector; }

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "virtio", "virtio-net back end") {}
    stats::Counter mmio_reads{this, "mmio_reads", "accesses", "register reads emulated"};
    stats::Counter mmio_writes{this, "mmio_writes", "accesses", "register writes emulated (notifies included)"};
    stats::Counter notifies{this, "notifies", "events", "queue notifications (QUEUE_NOTIFY writes)"};
    stats::Counter tx_frames{this, "tx_frames", "frames", "frames taken from the TX queue and forwarded"};
    stats::Counter tx_bytes{this, "tx_bytes", "bytes", "frame bytes forwarded (virtio-net headers excluded)"};
    stats::Counter tx_unrouted{this, "tx_unrouted", "frames", "frames the host could not forward (no switch)"};
    stats::Counter rx_frames{this, "rx_frames", "frames", "frames written into RX buffers"};
    stats::Counter rx_bytes{this, "rx_bytes", "bytes", "frame bytes received (headers excluded)"};
    stats::Counter rx_dropped{this, "rx_dropped", "frames", "frames dropped: no RX buffer posted"};
    stats::Counter interrupts{this, "interrupts", "events", "guest interrupts raised"};
    stats::Counter interrupts_suppressed{this, "interrupts_suppressed", "events",
                                         "used-ring updates the driver asked not to be interrupted for"};
    stats::Counter rechecks{this, "rechecks", "events",
                            "times re-enabling notifications found new buffers (another TX round without a notify)"};
    stats::Counter bad_buffers{this, "bad_buffers", "buffers",
                               "chains refused: unbacked, crossing a page, shorter than the header, or malformed"};
    stats::Histogram tx_batch{this, "tx_batch", "frames", "frames processed per TX run (notify or poll)"};
  };
  const Stats& stats() const { return m_stats; }

 private:
  /// Guest-physical ring access through the EPT, with a one-page
  /// translation cache per access stream (vhost's memory-table lookup).
  struct GuestMem {
    VirtioNet& dev;
    cpu::Core& c;
    std::uint64_t page = ~0ull, hpa_page = 0;
    std::uint64_t hpa(std::uint64_t gpa);
    std::uint64_t load(std::uint64_t gpa, unsigned size) { return c.load(hpa(gpa), size); }
    void store(std::uint64_t gpa, std::uint64_t v, unsigned size) { c.store(hpa(gpa), v, size); }
  };
  /// Host-physical address of a whole buffer [gpa, gpa+len) in one page,
  /// 0 if unbacked or crossing a page.
  std::uint64_t buffer_hpa(cpu::Core& c, std::uint64_t gpa, std::uint32_t len);
  void queue_ready(cpu::Core& c);
  void reset();
  void raise(cpu::Core& c);

  const HvCosts& m_costs;
  Host& m_host;
  std::uint64_t m_mac;
  Stats m_stats;
  // Register state.
  std::uint64_t m_driver_features = 0;
  std::uint32_t m_status = 0;
  std::uint32_t m_sel = 0;
  std::uint8_t m_isr = 0;
  std::uint8_t m_vector = 0;
  struct QueueRegs {
    std::uint16_t size = abi::virtio_reg::kMaxQueueSize;
    bool ready = false;
    std::uint64_t desc = 0, avail = 0, used = 0;
  } m_qregs[2];
  virtio::DeviceQueue m_rx, m_tx;
  bool m_in_tx = false;  // a notify arriving while the TX loop runs is picked up by its re-check
};

}  // namespace vmx::hv
