// An SR-IOV Ethernet NIC: one physical function (PF) and `vfs` virtual
// functions (VFs), each with its own requester ID, register window, transmit
// and receive descriptor rings in memory, and one MSI-X vector. The functions
// share one Ethernet port (models/eth_link.h).
//
// Register windows: function f (0 = PF, 1 + i = VF i) decodes the 4 KiB-or-
// larger window at mmio_base + f * mmio_stride (the PF's BAR0 followed by
// the VF BAR0s, VF BAR stride = window size as the SR-IOV capability
// defines it, PCIe 5.0 9.3.3.14). The register map, the descriptor format and
// the ring rules are tabulated in docs/io.md ("The SR-IOV NIC").
//
// Requester IDs (PCIe 5.0 9.3.3.10-11): the PF is bus:device.0; VF i
// (0-based) is PF + first_vf_offset + i * vf_stride.
//
// DMA: every descriptor fetch, buffer read or write, descriptor write-back
// and MSI-X message is a transaction on the `dma` initiator socket carrying
// the issuing function's DmaContext; the NIC waits out each transaction's
// annotated delay. A DMA the platform refuses (IOMMU fault) stops that
// function's transmit or receive side and sets its error bit until software
// clears it.
#pragma once

#include <systemc>
#include <tlm>
#include <tlm_utils/simple_initiator_socket.h>
#include <tlm_utils/simple_target_socket.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "models/dma.h"
#include "models/eth_link.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::models {

/// Register offsets within a function's window, all 32 bits wide.
namespace nicreg {
constexpr std::uint32_t kCtrl = 0x000;       // RW: bit 0 TX enable, bit 1 RX enable, bit 2 unicast promiscuous (PF only); bit 31 function reset (W)
constexpr std::uint32_t kStatus = 0x004;     // RO, error bits W1C: bit 0 TX DMA error, 1 RX DMA error, 2 link up
constexpr std::uint32_t kId = 0x008;         // RO: bits 7:0 function index, bit 8 VF, bits 31:16 requester ID
constexpr std::uint32_t kMacLo = 0x00C;      // RW: MAC address bytes 0-3
constexpr std::uint32_t kMacHi = 0x010;      // RW: MAC address bytes 4-5 (bits 15:0)
constexpr std::uint32_t kTxBaseLo = 0x020;   // RW: TX ring base, bits 31:4 (16-byte aligned)
constexpr std::uint32_t kTxBaseHi = 0x024;   // RW: TX ring base, bits 63:32
constexpr std::uint32_t kTxSize = 0x028;     // RW: TX ring size in descriptors (bits 15:0); writing it zeroes head and tail
constexpr std::uint32_t kTxHead = 0x02C;     // RO: next TX descriptor the NIC processes
constexpr std::uint32_t kTxTail = 0x030;     // RW doorbell: one past the last descriptor software filled
constexpr std::uint32_t kRxBaseLo = 0x040;   // as TX
constexpr std::uint32_t kRxBaseHi = 0x044;
constexpr std::uint32_t kRxSize = 0x048;
constexpr std::uint32_t kRxHead = 0x04C;     // RO: next RX descriptor the NIC fills
constexpr std::uint32_t kRxTail = 0x050;     // RW doorbell: one past the last free descriptor
constexpr std::uint32_t kIntCause = 0x060;   // RO, W1C: bit 0 TX done, bit 1 RX, bit 2 DMA error
constexpr std::uint32_t kIntEnable = 0x064;  // RW: causes that send the MSI-X message (bits 2:0)
constexpr std::uint32_t kIntPending = 0x068; // RO: bit 0 the vector's MSI-X pending bit
constexpr std::uint32_t kItr = 0x06C;        // RW: bits 15:0 minimum interval between messages, 256 ns units
constexpr std::uint32_t kMsixAddrLo = 0x070; // RW: MSI-X table entry 0 message address, bits 31:2
constexpr std::uint32_t kMsixAddrHi = 0x074; // RW: message upper address
constexpr std::uint32_t kMsixData = 0x078;   // RW: message data
constexpr std::uint32_t kMsixCtrl = 0x07C;   // RW: bit 0 vector mask (reset 1, PCIe 5.0 7.7.2.7)
// Live migration (VFIO migration v2 device states, docs/migration.md "A VM
// with an SR-IOV VF"): the device state the host's driver moves the function
// through, and whether it has quiesced.
// The emulated NIC (hypervisor/emulated_nic.h) has the registers below
// kWindow only.
constexpr std::uint32_t kWindow = 0x080;     // ring registers end here
constexpr std::uint32_t kMigState = 0x080;   // RW: device migration state (kMig* below); an undefined arc gives kMigError
constexpr std::uint32_t kMigStatus = 0x084;  // RO: bit 0 quiesced (stopped and no descriptor in flight: drained)

constexpr std::uint32_t kCtrlTxEn = 1u << 0, kCtrlRxEn = 1u << 1, kCtrlReset = 1u << 31;
// Unicast promiscuous (the 82599's FCTRL.UPE): frames whose destination MAC
// no function has go to the PF instead of being dropped, as a host bridge
// or software switch behind the PF needs. Ignored on VFs.
constexpr std::uint32_t kCtrlUpe = 1u << 2;
constexpr std::uint32_t kStatusTxErr = 1u << 0, kStatusRxErr = 1u << 1, kStatusLinkUp = 1u << 2;
constexpr std::uint32_t kCauseTx = 1u << 0, kCauseRx = 1u << 1, kCauseErr = 1u << 2, kCauseAll = 7;
constexpr std::uint64_t kItrUnitPs = 256'000;
// Migration states, numbered as Linux's enum vfio_device_mig_state
// (include/uapi/linux/vfio.h), with VFIO migration v2's meanings. RUNNING,
// PRE_COPY: the function works as usual. RUNNING_P2P, PRE_COPY_P2P: the P2P
// quiescent state, no new peer-to-peer DMA; this NIC issues none, so it works
// as usual there too. STOP, STOP_COPY, RESUMING: no DMA and no interrupt
// message; on entering one the function starts no new descriptor, and the
// one in flight completes its DMA (the drain; kMigStatus says when). In
// RESUMING the head registers are writable, so saved ring positions can be
// restored.
constexpr std::uint32_t kMigError = 0, kMigStop = 1, kMigRunning = 2, kMigStopCopy = 3, kMigResuming = 4,
                        kMigRunningP2p = 5, kMigPreCopy = 6, kMigPreCopyP2p = 7;
constexpr std::uint32_t kMigQuiesced = 1u << 0;
/// The arcs a device takes on its own (VFIO migration v2's FSM, single steps).
constexpr bool mig_arc(std::uint32_t from, std::uint32_t to) {
  switch (from) {
    case kMigRunning: return to == kMigRunningP2p || to == kMigPreCopy;
    case kMigPreCopy: return to == kMigRunning || to == kMigPreCopyP2p;
    case kMigPreCopyP2p: return to == kMigPreCopy || to == kMigRunningP2p || to == kMigStopCopy;
    case kMigRunningP2p: return to == kMigRunning || to == kMigStop || to == kMigPreCopyP2p;
    case kMigStop: return to == kMigRunningP2p || to == kMigStopCopy || to == kMigResuming;
    case kMigStopCopy: return to == kMigStop;
    case kMigResuming: return to == kMigStop;
    default: return false;  // ERROR leaves only by a function reset
  }
}  // the ITR granule, as the 8254x ITR register (256 ns)
}  // namespace nicreg

/// A transmit or receive descriptor (16 bytes, little-endian, in memory).
struct NicDescriptor {
  std::uint64_t addr;    // buffer address (an IOVA when the IOMMU translates)
  std::uint16_t length;  // TX: packet length; RX: buffer size, written back as the frame's length
  std::uint16_t status;  // written back by the NIC: bit 0 DD (descriptor done)
  std::uint32_t reserved;
};
static_assert(sizeof(NicDescriptor) == 16, "NIC descriptors are 16 bytes");
namespace nicdesc {
constexpr std::uint64_t kSize = 16;
constexpr std::uint64_t kWritebackOffset = 8;  // length and status, written back as one DWORD
constexpr std::uint16_t kDd = 1u << 0;
}  // namespace nicdesc

/// The MAC address function f has at reset: 02:00:00:00:<f high>:<f low>
/// (locally administered, IEEE 802 clause 8.2.2). A MAC is held as its six
/// bytes in transmission order, byte 0 in bits 7:0.
constexpr std::uint64_t nic_default_mac(unsigned f) {
  return 0x02ull | (std::uint64_t((f >> 8) & 0xFF) << 32) | (std::uint64_t(f & 0xFF) << 40);
}

struct NicParams {
  std::uint32_t vfs;
  std::uint32_t bus, device;
  std::uint32_t first_vf_offset, vf_stride;
  std::uint64_t mmio_base;
  std::uint64_t mmio_stride;
  std::uint32_t rx_fifo;

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(vfs, "vfs", "4", Spec().at_most(255),
            "Virtual functions enabled (SR-IOV NumVFs). Default: 4 (assumption; an Intel 82599 port offers up to 63).");
    v.param(bus, "bus", "1", Spec().at_most(255), "PCI bus of the PF (the first bus below the root port).");
    v.param(device, "device", "0", Spec().at_most(31), "PCI device number of the PF.");
    v.param(first_vf_offset, "first_vf_offset", "1", Spec().at_least(1).at_most(65535),
            "SR-IOV First VF Offset: routing-ID distance from the PF to VF 0 (PCIe 5.0 9.3.3.10). Default: 1 "
            "(assumption: an ARI device placing its VFs right after the PF).");
    v.param(vf_stride, "vf_stride", "1", Spec().at_least(1).at_most(65535),
            "SR-IOV VF Stride: routing-ID distance between consecutive VFs (PCIe 5.0 9.3.3.11). Default: 1 "
            "(assumption).");
    v.param(mmio_base, "mmio_base", "0xF0000000", Spec(),
            "Host-physical address of the PF's register window; VF i's follows at base + (1 + i) * stride. "
            "Default: 0xF0000000, below the 0xFEC00000 APIC/MSI region (assumption: a typical 32-bit MMIO hole).");
    v.param(mmio_stride, "mmio_stride", "4KiB", Spec(Unit::Bytes).at_least(4096).power_of_two(),
            "Size of each function's register window (VF BAR size, a whole page so that a hypervisor can map "
            "one VF into one guest). Default: 4 KiB.");
    v.param(rx_fifo, "rx_fifo", "64", Spec().at_least(1),
            "Frames the receive FIFO holds while descriptors are being fetched; arrivals beyond it are "
            "dropped. Default: 64 (assumption: about what the 512 KB receive packet buffer of an Intel 82599 "
            "holds in 8 KB frames).");
  }
};

struct NicFunctionStats : stats::Group {
  NicFunctionStats(stats::Group* parent, const std::string& name);
  stats::Counter tx_packets{this, "tx_packets", "frames", "frames transmitted"};
  stats::Counter tx_bytes{this, "tx_bytes", "bytes", "bytes transmitted (frame contents)"};
  stats::Counter rx_packets{this, "rx_packets", "frames", "frames received into the RX ring"};
  stats::Counter rx_bytes{this, "rx_bytes", "bytes", "bytes received into the RX ring"};
  stats::Counter rx_drops{this, "rx_drops", "frames", "frames dropped: no free RX descriptor"};
  stats::Counter rx_discards{this, "rx_discards", "frames",
                             "frames dropped: RX disabled, no ring, or RX stopped by a DMA error"};
  stats::Counter rx_oversize{this, "rx_oversize", "frames", "frames dropped: larger than the descriptor's buffer"};
  stats::Counter interrupts{this, "interrupts", "messages", "MSI-X messages sent"};
  stats::Counter interrupts_deferred{this, "interrupts_deferred", "events",
                                     "interrupt events that found the vector masked (pending bit set)"};
  stats::Counter dma_faults{this, "dma_faults", "transactions", "DMAs refused by the platform (IOMMU fault)"};
  stats::Counter interrupts_throttled{this, "interrupts_throttled", "events",
                                      "interrupt events held back by the ITR interval (coalesced)"};
};

struct NicStats : stats::Group {
  NicStats(stats::Group* parent, const std::string& name);
  stats::Counter rx_fifo_drops{this, "rx_fifo_drops", "frames", "frames dropped: receive FIFO full"};
  stats::Counter rx_unmatched{this, "rx_unmatched", "frames", "frames whose destination MAC no function has"};
  stats::Counter mmio_reads{this, "mmio_reads", "accesses", "register reads"};
  stats::Counter mmio_writes{this, "mmio_writes", "accesses", "register writes"};
};

/// One function's registers and ring state (plain C++; the Nic acts on it).
struct NicFunction {
  unsigned index = 0;  // 0 = PF, 1 + i = VF i
  std::uint16_t rid = 0;
  std::uint32_t ctrl = 0, status = 0, cause = 0, enable = 0, msix_data = 0, msix_ctrl = 0;
  std::uint64_t mac = 0, tx_base = 0, rx_base = 0, msix_addr = 0;
  std::uint32_t tx_size = 0, tx_head = 0, tx_tail = 0, rx_size = 0, rx_head = 0, rx_tail = 0;
  std::uint32_t itr = 0;
  sc_core::sc_time last_msi = sc_core::SC_ZERO_TIME;  // when the last message was sent
  bool sent_any = false;
  bool throttled = false;  // a message is held back until last_msi + ITR interval
  bool pending = false;  // MSI-X pending bit
  bool msi_due = false;  // unmasked with the pending bit set: send from the NIC's thread
  std::uint32_t mig_state = nicreg::kMigRunning;  // VFIO migration v2 device state
  bool tx_busy = false, rx_busy = false;           // a descriptor in flight (its DMAs not all done)
  std::unique_ptr<NicFunctionStats> stats;

  /// Register values at reset (and after CTRL.RST).
  void reset();
  /// The function may start DMA for a new descriptor (a running state; the
  /// P2P quiescent states stop only peer-to-peer DMA, which it has none of).
  bool dma_allowed() const {
    return mig_state == nicreg::kMigRunning || mig_state == nicreg::kMigPreCopy ||
           mig_state == nicreg::kMigRunningP2p || mig_state == nicreg::kMigPreCopyP2p;
  }
  bool quiesced() const { return !dma_allowed() && !tx_busy && !rx_busy; }
  bool tx_ready() const {
    return dma_allowed() && (ctrl & nicreg::kCtrlTxEn) && !(status & nicreg::kStatusTxErr) && tx_size && tx_head != tx_tail;
  }
  bool rx_usable() const { return dma_allowed() && (ctrl & nicreg::kCtrlRxEn) && !(status & nicreg::kStatusRxErr) && rx_size; }
  bool rx_free() const { return rx_head != rx_tail; }
};

class Nic : public sc_core::sc_module, public PacketEndpoint {
 public:
  /// CPU MMIO to the register windows.
  tlm_utils::simple_target_socket<Nic> mmio;
  /// All DMA of all functions.
  tlm_utils::simple_initiator_socket<Nic> dma;

  Nic(sc_core::sc_module_name name, const NicParams& params, stats::Group* parent);
  ~Nic() override;

  /// The port's link (call before simulation; the link binds this NIC as
  /// one of its ends).
  void attach_link(EthLink& link) { m_link = &link; }
  void receive(Packet&& p) override;

  unsigned functions() const { return static_cast<unsigned>(m_fn.size()); }
  /// Function f's requester ID (0 = PF, 1 + i = VF i).
  std::uint16_t requester(unsigned f) const { return m_fn.at(f).rid; }
  /// Base address of function f's register window.
  std::uint64_t window(unsigned f) const { return m_params.mmio_base + f * m_params.mmio_stride; }
  const NicFunction& function(unsigned f) const { return m_fn.at(f); }
  const NicFunctionStats& function_stats(unsigned f) const { return *m_fn.at(f).stats; }
  const NicStats& stats() const { return m_stats; }
  const NicParams& params() const { return m_params; }

 private:
  void b_transport(tlm::tlm_generic_payload& trans, sc_core::sc_time& delay);
  std::uint32_t reg_read(NicFunction& f, std::uint32_t off);
  void reg_write(NicFunction& f, std::uint32_t off, std::uint32_t v);

  void tx_thread();
  void rx_thread();
  void transmit_one(NicFunction& f);
  void receive_one(Packet& p);
  /// The DMAs of one received frame into f's next descriptor.
  void receive_into(NicFunction& f, Packet& p);
  /// One DMA for function f; waits its delay. False if refused.
  bool dma_access(NicFunction& f, bool write, std::uint64_t addr, void* data, unsigned len);
  /// Sets an interrupt cause; sends the MSI-X message if the cause is
  /// enabled and the vector unmasked, else sets the pending bit.
  void raise(NicFunction& f, std::uint32_t cause);
  void send_msi(NicFunction& f);
  /// Sends the messages that register writes made due (unmasking a vector
  /// with its pending bit set; MMIO callbacks do not issue DMA themselves)
  /// and those the ITR interval held back, when it has passed.
  void msi_thread();
  sc_core::sc_time itr_interval(const NicFunction& f) const {
    return sc_core::sc_time::from_value(std::uint64_t(f.itr) * nicreg::kItrUnitPs);
  }
  void dma_fault(NicFunction& f, std::uint32_t status_bit);

  NicParams m_params;
  NicStats m_stats;
  std::vector<NicFunction> m_fn;
  EthLink* m_link = nullptr;
  std::deque<Packet> m_rx_fifo;
  Packet m_tx_frame;  // the frame transmit_one is sending
  Packet m_rx_frame;  // the frame receive_one is placing
  sc_core::sc_event m_tx_kick, m_rx_kick, m_msi_kick;
  unsigned m_tx_next = 0;  // round-robin position of the transmit scheduler
};

}  // namespace vmx::models
