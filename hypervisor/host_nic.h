// The hypervisor's driver for the NIC's physical function (PF) and the
// software switch behind it (docs/io.md, "The hypervisor's PF driver and
// switch").
//
// The driver is simulated software: it reaches the PF only by MMIO loads and
// stores to the PF's register window and by loads, stores and REP MOVS on
// its rings and buffers in the hypervisor's memory; every path charges its
// instructions (HvCosts: pf_tx, pf_rx, pf_interrupt, switch_frame).
//
// Transmit: a frame (one or more host-physical pieces, e.g. a guest buffer
// the caller translated) is copied into the next PF TX buffer, its
// descriptor written and the TX_TAIL doorbell rung; completed descriptors
// (DD written back by the NIC) are reaped lazily by the next transmit.
// Receive: the PF's MSI-X message (a fixed-mode MSI to `host_nic.core`
// with `host_nic.vector`) makes the hypervisor on that core walk the RX
// ring; each frame goes to the switch port whose MAC is its destination
// (broadcast: to every port), its buffer is handed back to the PF.
//
// The PF runs in unicast-promiscuous mode (CTRL.UPE), so frames for the
// switch ports' MACs, which no NIC function has, reach the PF.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "cpu/core.h"
#include "hypervisor/spinlock.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::hv {

struct HvCosts;

struct HostNicParams {
  std::uint64_t ring_size;
  std::uint64_t buffer_size;
  std::uint64_t vector;
  std::uint64_t core;

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(ring_size, "ring_size", "256", Spec(Unit::Count).at_least(2).at_most(4096),
            "Descriptors in each of the PF's TX and RX rings (assumption; Linux's ixgbe defaults to 512, e1000 "
            "to 256).");
    v.param(buffer_size, "buffer_size", "2KiB", Spec(Unit::Bytes).at_least(64).at_most(4096).power_of_two(),
            "Size of each PF packet buffer, one per descriptor (Linux ixgbe's IXGBE_RXBUFFER_2K; a frame up to "
            "this size fits one buffer).");
    v.param(vector, "vector", "0x41", Spec().at_least(0x20).at_most(0xEF),
            "Host interrupt vector of the PF's MSI-X message (assumption: a device vector of Linux's dynamic "
            "range 0x20-0xEF, clear of the timer 0xEC and the hypervisor's 0xF1/0xF2/0xFD).");
    v.param(core, "core", "0", Spec().at_most(255),
            "Core (APIC ID) the PF's interrupt is sent to and whose hypervisor context handles receive "
            "(assumption: core 0, as an unbalanced irq affinity).");
  }
};

/// A port of the software switch: receives frames addressed to its MAC.
class SwitchPort {
 public:
  virtual ~SwitchPort() = default;
  /// A frame of `len` bytes at host-physical `hpa` (a PF RX buffer, valid
  /// during the call) for this port, on the core handling the PF's receive.
  virtual void deliver(cpu::Core& c, std::uint64_t hpa, unsigned len) = 0;
  /// The end of a receive interrupt that delivered frames to some port (as
  /// the end of a NAPI poll), on the same core.
  virtual void batch_end(cpu::Core&) {}
};

class HostNic {
 public:
  /// What the driver needs of the hypervisor around it.
  struct Env {
    std::function<std::uint64_t()> alloc_frame;  // one 4 KiB frame of hypervisor memory
    /// Charges `instructions` of the handler at `code` (an offset in the
    /// hypervisor's text) on the core.
    std::function<void(cpu::Core&, std::uint64_t instructions, std::uint64_t code)> charge;
  };
  /// One piece of a frame to transmit.
  struct Segment {
    std::uint64_t hpa;
    std::uint32_t len;
  };

  /// `pf_window` is the PF's register window (host-physical, on the MMIO
  /// bus), `cores` the number of cores (to check host_nic.core).
  HostNic(const HostNicParams& params, const HvCosts& costs, std::uint64_t pf_window, unsigned cores, Env env,
          stats::Group* parent);

  /// Programs the PF (once, at hypervisor start): reset, MAC, rings and
  /// buffers in hypervisor memory, MSI-X message, interrupt enable, enable.
  void init(cpu::Core& c);
  bool ready() const { return m_ready; }
  std::uint8_t vector() const { return static_cast<std::uint8_t>(m_p.vector); }
  unsigned core() const { return static_cast<unsigned>(m_p.core); }
  /// The PF's MAC (its reset MAC, read from the PF at init).
  std::uint64_t mac() const { return m_mac; }

  /// Connects a port for frames to `mac` (6 bytes, byte 0 in bits 7:0, as
  /// models::nic_default_mac), at any time; its forwarding-table entry is
  /// written into memory by the next init or receive interrupt.
  void attach(std::uint64_t mac, SwitchPort* port);

  /// Sends one frame made of `n` pieces through the PF. False (and counted)
  /// if the driver is not ready, the frame is larger than a buffer or the
  /// TX ring is full. Any core; serialized by a spinlock in memory.
  bool transmit(cpu::Core& c, const Segment* segs, unsigned n);
  bool transmit(cpu::Core& c, std::uint64_t hpa, unsigned len) {
    Segment s{hpa, len};
    return transmit(c, &s, 1);
  }
  /// Free TX descriptors now, after reaping completed ones (a sender that
  /// must not lose frames checks before it transmits).
  unsigned tx_free(cpu::Core& c);
  /// Moving the PF's interrupt to another message format while the PF runs
  /// (interrupt remapping turned on: VT-d 5.1, a compatibility-format
  /// message is then blocked). mask_msi sets the MSI-X entry's mask bit, so
  /// that an interrupt meanwhile waits in its pending bit; set_msi writes
  /// the new address and data and clears the mask, which sends a pending
  /// message in the new format (PCIe 5.0, 6.1.4.5). Before init, set_msi
  /// only keeps the message for init to program.
  void mask_msi(cpu::Core& c);
  void set_msi(cpu::Core& c, std::uint64_t address, std::uint32_t data);

  /// The PF's interrupt (on core(), from the hypervisor's host_interrupt):
  /// acknowledges the cause, receives and switches every completed RX
  /// descriptor, hands the buffers back.
  void interrupt(cpu::Core& c);

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "host_nic", "the hypervisor's PF driver and software switch") {}
    stats::Counter tx_packets{this, "tx_packets", "frames", "frames handed to the PF"};
    stats::Counter tx_bytes{this, "tx_bytes", "bytes", "bytes handed to the PF"};
    stats::Counter tx_dropped{this, "tx_dropped", "frames",
                              "frames not sent: TX ring full, driver not ready or larger than a buffer"};
    stats::Counter tx_reaped{this, "tx_reaped", "descriptors", "completed TX descriptors reclaimed"};
    stats::Counter rx_packets{this, "rx_packets", "frames", "frames taken from the PF's RX ring"};
    stats::Counter rx_bytes{this, "rx_bytes", "bytes", "bytes taken from the PF's RX ring"};
    stats::Counter switched{this, "switched", "frames", "frames delivered to a switch port"};
    stats::Counter unknown{this, "unknown", "frames", "frames whose destination MAC no port has (dropped)"};
    stats::Counter interrupts{this, "interrupts", "events", "PF interrupts handled"};
  };
  const Stats& stats() const { return m_stats; }

 private:
  void mmio_write(cpu::Core& c, std::uint32_t reg, std::uint32_t v) { c.store(m_pf + reg, v, 4); }
  std::uint32_t mmio_read(cpu::Core& c, std::uint32_t reg) { return static_cast<std::uint32_t>(c.load(m_pf + reg, 4)); }
  std::uint64_t contiguous(unsigned frames);
  void reap(cpu::Core& c);
  void write_table(cpu::Core& c);

  HostNicParams m_p;
  const HvCosts& m_costs;
  std::uint64_t m_pf;
  Env m_env;
  Stats m_stats;
  LockStats m_tx_lock_stats{&m_stats, "tx_lock", "the TX lock (hypervisor/spinlock.h)"};
  bool m_ready = false;
  std::uint64_t m_mac = 0;
  // The MSI-X message; 0: init's compatibility-format message to core().
  std::uint64_t m_msi_address = 0;
  std::uint32_t m_msi_data = 0;
  std::uint64_t m_tx_ring = 0, m_rx_ring = 0, m_tx_bufs = 0, m_rx_bufs = 0;
  TicketLock m_tx_lock;  // serializes transmitters (word in hypervisor memory)
  std::uint32_t m_tx_tail = 0, m_tx_clean = 0, m_rx_next = 0;
  struct Port {
    std::uint64_t mac;
    SwitchPort* port;
  };
  std::vector<Port> m_ports;  // the forwarding table (few entries: a linear scan)
  std::uint64_t m_table = 0;  // its copy in hypervisor memory, read by each lookup
  std::size_t m_table_len = 0;  // entries written there
};

}  // namespace vmx::hv
