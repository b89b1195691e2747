// The guest kernel's network core (docs/io.md, "Guest networking"): the
// interface every network driver implements (NetDriver), the services the
// kernel offers drivers (NetEnv), the kernel's network parameters, and the
// ring driver for the NIC function register layout (RingNetDriver), which
// serves both a passed-through VF and an emulated NIC of the same layout.
//
// Workloads reach the network through guest::Thread (net_send, net_recv,
// ...), which the kernel implements in guest/net.cc: every path charges its
// instructions (NetCosts) and makes its real loads, stores and MMIO accesses.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cpu/core.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::guest {

/// Where a VM's network device appears in guest-physical space: a window
/// outside RAM (below the 0xFEC00000 IOAPIC / 0xFEE00000 MSI region, where a
/// PC's firmware places PCI BARs), the same for every NIC type. A VF's
/// registers are mapped there through EPT; an emulated device traps there.
constexpr std::uint64_t kNetWindowGpa = 0xFEB00000ull;
constexpr std::uint64_t kNetWindowSize = 0x1000ull;
/// The guest's vector for its NIC (a device vector in Linux's 0x31-0xEB
/// range). The hypervisor owns the device's MSI-X entry (as VFIO does) and
/// delivers the device's interrupts to vCPU 0 with this vector.
constexpr std::uint8_t kNetVector = 0x41;

/// Path lengths of the guest's network stack and driver, in instructions.
struct NetCosts {
  std::uint64_t send, recv, xmit, rx_frame, irq, probe, claim;
  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(send, "send", "1200", Spec(Unit::Instructions),
            "send(2) on a raw socket besides the copy and the driver: entry, socket lookup, skb set-up "
            "(assumption, of the order of Linux's packet_sendmsg path).");
    v.param(recv, "recv", "900", Spec(Unit::Instructions),
            "recv(2) on a raw socket besides the copy and the driver (assumption, of the order of Linux's "
            "packet_recvmsg path).");
    v.param(xmit, "xmit", "300", Spec(Unit::Instructions),
            "Driver transmit of one frame besides its memory traffic: descriptor set-up, ring accounting "
            "(assumption, of the order of a Linux ndo_start_xmit).");
    v.param(rx_frame, "rx_frame", "300", Spec(Unit::Instructions),
            "Driver work per received frame besides its memory traffic: descriptor check, buffer refill "
            "(assumption, of the order of a NAPI poll per packet).");
    v.param(irq, "irq", "400", Spec(Unit::Instructions),
            "Driver interrupt handler besides its register accesses (assumption, of the order of a Linux "
            "MSI-X handler that schedules NAPI).");
    v.param(probe, "probe", "20000", Spec(Unit::Instructions),
            "Driver probe at boot besides its register accesses and ring set-up (assumption).");
    v.param(claim, "claim", "20000", Spec(Unit::Instructions),
            "Handing the device to a user-space driver besides its register accesses and mappings: unbinding "
            "the kernel's driver, opening the device (assumption, of the order of the probe).");
  }
};

/// The kernel's network parameters (kernel.net).
struct NetParams {
  std::uint64_t tx_ring, rx_ring, buffer_size;
  NetCosts costs;
  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(tx_ring, "tx_ring", "256", Spec(Unit::Count).at_least(2).at_most(4096),
            "Descriptors in the driver's transmit ring, each with its own buffer (Linux ixgbevf default 512; "
            "assumption: 256).");
    v.param(rx_ring, "rx_ring", "256", Spec(Unit::Count).at_least(2).at_most(4096),
            "Descriptors in the driver's receive ring, each with its own buffer (assumption).");
    v.param(buffer_size, "buffer_size", "2KiB", Spec(Unit::Bytes).at_least(64).at_most(4096).power_of_two(),
            "Bytes of each ring buffer: the largest frame the driver sends or receives (2 KiB, as Linux "
            "drivers use for a 1500-byte MTU).");
    v.section(costs, "costs", "Software path lengths of the network stack and driver.");
  }
};

/// What the kernel offers a network driver. Addresses are guest-physical
/// (gpa) or guest-virtual in the kernel's half of every address space.
class NetEnv {
 public:
  virtual ~NetEnv() = default;
  /// A cleared, page-aligned 4 KiB frame for rings or buffers; its
  /// guest-physical address (also its bus address: the device sees the
  /// guest-physical view), 0 when memory is exhausted.
  virtual std::uint64_t net_alloc_page(cpu::Core& c) = 0;
  /// `pages` cleared, physically consecutive 4 KiB frames (for a descriptor
  /// ring); the first one's guest-physical address, 0 if there are none.
  virtual std::uint64_t net_alloc_contiguous(cpu::Core& c, std::uint64_t pages) = 0;
  /// A cleared page the device may read and write: in an encrypted VM
  /// (docs/protection.md "S11") mapped shared, without the C-bit (Linux's
  /// dma_alloc_coherent under SEV, set_memory_decrypted); else as
  /// net_alloc_page.
  virtual std::uint64_t net_alloc_shared_page(cpu::Core& c) { return net_alloc_page(c); }
  /// Whether DMA buffers must be bounced through shared pages (Linux's
  /// swiotlb, forced on in an SEV guest): the device cannot read private pages.
  virtual bool net_bounce() const { return false; }
  /// Kernel virtual address of a page net_alloc_page returned (direct map).
  virtual std::uint64_t net_phys_to_virt(std::uint64_t gpa) const = 0;
  /// Maps `bytes` of device registers at gpa uncached (PCD, PWT) into the
  /// kernel's address space (ioremap); returns the virtual address.
  virtual std::uint64_t net_map_io(cpu::Core& c, std::uint64_t gpa, std::uint64_t bytes) = 0;
  /// Charges `instructions` of driver code.
  virtual void net_charge(cpu::Core& c, std::uint64_t instructions) = 0;
};

/// What the driver saw, under vm.<name>.kernel.net.
struct NetStats : stats::Group {
  using Group::Group;
  stats::Counter tx_frames{this, "tx_frames", "frames", "frames the driver queued for transmission"};
  stats::Counter tx_bytes{this, "tx_bytes", "bytes", "bytes of those frames"};
  stats::Counter doorbells{this, "doorbells", "writes", "transmit notifications (TX tail writes or kicks)"};
  stats::Counter tx_full{this, "tx_full", "events", "sends that found the transmit ring full and waited"};
  stats::Counter rx_frames{this, "rx_frames", "frames", "frames the stack received"};
  stats::Counter rx_bytes{this, "rx_bytes", "bytes", "bytes of those frames"};
  stats::Counter interrupts{this, "interrupts", "interrupts", "NIC interrupts the driver handled"};
  stats::Counter dma_errors{this, "dma_errors", "events", "interrupts that reported a device DMA error"};
  stats::Counter rx_waits{this, "rx_waits", "events", "receives that blocked until a frame arrived"};
};

/// A guest network driver. The kernel calls it with its own locking: the
/// methods run on the calling vCPU with interrupts off, except probe (boot,
/// vCPU 0). Frames are whole Ethernet frames (header included).
class NetDriver {
 public:
  virtual ~NetDriver() = default;
  /// Probes and starts the device at boot (vCPU 0, paging on): allocates
  /// rings and buffers, programs the device, enables its interrupts.
  /// Returns false (with a reason in `why`) if the device is absent or broken.
  virtual bool probe(cpu::Core& c, NetEnv& env, NetStats& stats, std::string& why) = 0;
  /// Queues one frame of `len` bytes copied from `va` (in the current
  /// address space). False if the transmit ring is full (nothing queued).
  virtual bool transmit(cpu::Core& c, std::uint64_t va, std::uint32_t len) = 0;
  /// Notifies the device of the frames queued since the last flush (one
  /// doorbell per batch).
  virtual void flush(cpu::Core& c) = 0;
  /// Frees the transmit slots the device has completed; true if any slot is free.
  virtual bool reap(cpu::Core& c) = 0;
  /// Whether a received frame is ready.
  virtual bool rx_ready(cpu::Core& c) = 0;
  /// Copies the next received frame to `va` (at most `max` bytes) and gives
  /// its buffer back to the device; returns the frame's length (0: none).
  virtual std::uint32_t receive(cpu::Core& c, std::uint64_t va, std::uint32_t max) = 0;
  /// The interrupt handler: acknowledges the device. Returns the causes
  /// (nicreg::kCause* bits: TX done, RX, DMA error).
  virtual std::uint32_t interrupt(cpu::Core& c) = 0;
  /// Asks for a transmit-done interrupt (a sender waits for ring space).
  virtual void want_tx_interrupt(cpu::Core& c, bool on) = 0;
  /// The guest vector of the device's interrupt.
  virtual std::uint8_t vector() const { return kNetVector; }
  /// The MAC address the device uses (bytes 0-5 in bits 7:0 ... 47:40).
  virtual std::uint64_t mac() const = 0;

  // Buggy or malicious driver behaviour, for the DMA-isolation experiments
  // (workload dma_rogue). Drivers without them return false / 0.
  /// Queues and rings a transmit descriptor whose buffer is bus address
  /// `addr` (not a ring buffer).
  virtual bool raw_transmit(cpu::Core&, std::uint64_t /*addr*/, std::uint32_t /*len*/) { return false; }
  /// Points the receive descriptor the device fills next at bus address `addr`.
  virtual bool raw_receive_buffer(cpu::Core&, std::uint64_t /*addr*/) { return false; }
  /// The device's status register (nicreg::kStatus* bits); `clear_errors`
  /// then writes its DMA-error bits back to clear them (restarting the device).
  virtual std::uint32_t device_status(cpu::Core&, bool /*clear_errors*/ = false) { return 0; }

  /// Lets go of the device for a user-space driver: stops it and disables
  /// its interrupts. False if this driver's device cannot be handed over
  /// (the kernel keeps it).
  virtual bool release(cpu::Core&) { return false; }
};

/// The driver for the NIC function register layout (models/nic.h, docs/io.md
/// "The SR-IOV NIC"): 16-byte descriptors, head/tail rings, one interrupt.
/// Nothing in it is VF-specific: it works on a passed-through VF (accesses go
/// to the device) and on an emulated NIC of the same layout (each access
/// traps). It does not touch the MSIX_* registers, which the hypervisor owns.
class RingNetDriver final : public NetDriver {
 public:
  /// `mac`: the address to program (0: keep the device's).
  RingNetDriver(const NetParams& params, std::uint64_t mac) : m_p(params), m_mac(mac) {}
  bool probe(cpu::Core& c, NetEnv& env, NetStats& stats, std::string& why) override;
  bool transmit(cpu::Core& c, std::uint64_t va, std::uint32_t len) override;
  void flush(cpu::Core& c) override;
  bool reap(cpu::Core& c) override;
  bool rx_ready(cpu::Core& c) override;
  std::uint32_t receive(cpu::Core& c, std::uint64_t va, std::uint32_t max) override;
  std::uint32_t interrupt(cpu::Core& c) override;
  void want_tx_interrupt(cpu::Core& c, bool on) override;
  std::uint64_t mac() const override { return m_mac; }
  bool raw_transmit(cpu::Core& c, std::uint64_t addr, std::uint32_t len) override;
  bool raw_receive_buffer(cpu::Core& c, std::uint64_t addr) override;
  std::uint32_t device_status(cpu::Core& c, bool clear_errors = false) override;
  bool release(cpu::Core& c) override;

 private:
  std::uint64_t reg(std::uint32_t off) const { return m_regs + off; }
  std::uint64_t tx_desc(std::uint32_t i) const { return m_tx_ring_va + 16ull * i; }
  std::uint64_t rx_desc(std::uint32_t i) const { return m_rx_ring_va + 16ull * i; }
  /// Allocates a physically contiguous ring of `n` descriptors; fills
  /// `ring_gpa` and `ring_va`.
  bool alloc_ring(cpu::Core& c, std::uint32_t n, std::uint64_t& ring_gpa, std::uint64_t& ring_va);

  NetParams m_p;
  std::uint64_t m_mac;
  NetEnv* m_env = nullptr;
  NetStats* m_stats = nullptr;
  std::uint64_t m_regs = 0;  // kernel VA of the register window
  std::uint32_t m_tx_n = 0, m_rx_n = 0, m_buf = 0;
  std::uint64_t m_tx_ring_va = 0, m_rx_ring_va = 0;
  // Buffers: buffer i of a ring at gpa buf0 + i * buffer_size within
  // consecutive pages (each page holds 4096 / buffer_size buffers); their
  // pages are allocated one by one, so the addresses are kept per page.
  std::vector<std::uint64_t> m_tx_pages, m_rx_pages;
  std::uint64_t buf_gpa(const std::vector<std::uint64_t>& pages, std::uint32_t i) const;
  std::uint32_t m_tx_tail = 0;   // next descriptor software fills
  std::uint32_t m_tx_clean = 0;  // oldest descriptor not yet reaped
  std::uint32_t m_tx_flushed = 0;  // tail value the device was last told
  std::uint32_t m_rx_next = 0;   // next descriptor the device completes
  std::uint32_t m_int_enable = 0;
};

}  // namespace vmx::guest
