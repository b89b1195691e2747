#include "hypervisor/emulated_nic.h"

#include <algorithm>

#include "hypervisor/hypervisor.h"
#include "models/nic.h"

namespace vmx::hv {

namespace {
namespace reg = models::nicreg;
namespace desc = models::nicdesc;
constexpr std::uint64_t kPage = 4096;
constexpr unsigned kMaxSegments = 4;  // a frame up to 8 KiB spans at most 3 guest pages
}  // namespace

EmulatedNic::EmulatedNic(const EmulatedNicSpec& spec, const HvCosts& costs, HostNic& pf, Host& host,
                         stats::Group* vm_group)
    : m_spec(spec),
      m_costs(costs),
      m_pf(pf),
      m_host(host),
      m_stats(vm_group),
      m_poll(spec.params.access == "poll"),
      m_window(spec.window),
      m_mac(spec.mac) {}

std::uint64_t EmulatedNic::setup(cpu::Core& c) {
  m_regs = m_host.alloc_frame();
  m_lock = TicketLock(m_host.alloc_frame(), &m_lock_stats);
  c.rep_stos(m_regs, 0, kPage);
  reset(c);
  return m_regs;
}

// Register values at reset (models::NicFunction::reset): all zero but
// STATUS (link up), the MAC and the MSI-X vector mask.
void EmulatedNic::reset(cpu::Core& c) {
  c.rep_stos(m_regs, 0, reg::kWindow);
  wr(c, reg::kStatus, reg::kStatusLinkUp);
  wr(c, reg::kMacLo, static_cast<std::uint32_t>(m_mac));
  wr(c, reg::kMacHi, static_cast<std::uint32_t>(m_mac >> 32) & 0xFFFF);
  wr(c, reg::kMsixCtrl, m_spec.vector ? 0 : 1);
  if (m_spec.vector) {
    wr(c, reg::kMsixAddrLo, 0xFEE00000);  // fixed delivery to APIC ID 0 (SDM Vol. 3A, 11.11.1)
    wr(c, reg::kMsixData, m_spec.vector);
  }
  m_seen_tx_tail = m_seen_tx_size = m_seen_rx_size = m_seen_enable = 0;
  m_seen_msix_ctrl = m_spec.vector ? 0 : 1;
}

std::uint64_t EmulatedNic::access(cpu::Core& c, std::uint64_t offset, unsigned size, bool write, std::uint64_t value) {
  lock(c);
  std::uint64_t result = 0;
  // Registers are 32 bits wide; an aligned 8-byte access covers two, as on
  // the device. Other sizes or misaligned accesses read as all ones and
  // are dropped on write (an unsupported request, as the root complex does).
  const bool ok = (size == 4 || size == 8) && offset % size == 0;
  if (write) ++m_stats.writes;
  else ++m_stats.reads;
  if (!ok) {
    result = size >= 8 ? ~0ull : (1ull << (8 * size)) - 1;
  } else {
    for (unsigned i = 0; i < size / 4; ++i) {
      const auto off = static_cast<std::uint32_t>(offset + 4 * i);
      if (off >= reg::kWindow) continue;  // reserved: reads as zero, writes ignored
      if (write) reg_write(c, off, static_cast<std::uint32_t>(value >> (32 * i)));
      else result |= std::uint64_t{rd(c, off)} << (32 * i);
    }
  }
  unlock(c);
  return result;
}

// Register semantics as models/nic.cc implements them for a NIC function.
void EmulatedNic::reg_write(cpu::Core& c, std::uint32_t off, std::uint32_t v) {
  switch (off) {
    case reg::kCtrl:
      if (v & reg::kCtrlReset) reset(c);
      else wr(c, off, v & (reg::kCtrlTxEn | reg::kCtrlRxEn));
      if (v & reg::kCtrlTxEn) process_tx(c);
      break;
    case reg::kStatus: wr(c, off, rd(c, off) & ~(v & (reg::kStatusTxErr | reg::kStatusRxErr))); break;  // W1C
    case reg::kMacLo: wr(c, off, v); break;
    case reg::kMacHi: wr(c, off, v & 0xFFFF); break;
    case reg::kTxBaseLo:
    case reg::kRxBaseLo: wr(c, off, v & ~0xFu); break;
    case reg::kTxBaseHi:
    case reg::kRxBaseHi: wr(c, off, v); break;
    case reg::kTxSize:
    case reg::kRxSize:
      wr(c, off, v & 0xFFFF);
      if (off == reg::kRxSize) m_seen_rx_size = v & 0xFFFF;
      wr(c, off + 4, 0);  // head
      wr(c, off + 8, 0);  // tail
      break;
    case reg::kTxTail:
      wr(c, off, v);
      ++m_stats.doorbells;
      process_tx(c);
      break;
    case reg::kRxTail: wr(c, off, v); break;
    case reg::kIntCause: wr(c, off, rd(c, off) & ~v); break;  // W1C
    case reg::kIntEnable:
      wr(c, off, v & reg::kCauseAll);
      // Enabling a cause that is already set sends the message, as on the device.
      if (rd(c, reg::kIntCause) & v & reg::kCauseAll) send_msi(c);
      break;
    case reg::kItr:  // accepted; interrupt moderation is not emulated
    case reg::kMsixAddrLo:
    case reg::kMsixAddrHi:
    case reg::kMsixData: wr(c, off, v); break;
    case reg::kMsixCtrl:
      wr(c, off, v & 1);
      if (!(v & 1) && rd(c, reg::kIntPending)) send_msi(c);
      break;
    default: break;  // read-only or reserved
  }
}

bool EmulatedNic::copy(cpu::Core& c, std::uint64_t gpa, std::uint64_t hpa, unsigned len, bool to_guest) {
  while (len) {
    const auto chunk = static_cast<unsigned>(std::min<std::uint64_t>(len, kPage - (gpa & (kPage - 1))));
    const std::uint64_t g = m_host.guest_to_host(c, gpa);
    if (!g) return false;
    if (to_guest) c.rep_movs(g, hpa, chunk);
    else c.rep_movs(hpa, g, chunk);
    gpa += chunk;
    hpa += chunk;
    len -= chunk;
  }
  return true;
}

// The guest's TX ring from TX_HEAD to TX_TAIL: each descriptor and its
// frame are read from guest memory, the frame goes out through the PF, DD
// is written back; one TX-done interrupt for the batch.
void EmulatedNic::process_tx(cpu::Core& c) {
  const std::uint32_t ctrl = rd(c, reg::kCtrl);
  const std::uint32_t size = rd(c, reg::kTxSize);
  if (!(ctrl & reg::kCtrlTxEn) || !size) return;
  const std::uint64_t base = rd(c, reg::kTxBaseLo) | (std::uint64_t{rd(c, reg::kTxBaseHi)} << 32);
  std::uint32_t head = rd(c, reg::kTxHead);
  const std::uint32_t tail = rd(c, reg::kTxTail);
  if (tail >= size) return;  // a bad doorbell is ignored
  unsigned sent = 0;
  while (head != tail) {
    m_host.charge(c, m_costs.emu_frame);
    const std::uint64_t d = m_host.guest_to_host(c, base + std::uint64_t{head} * desc::kSize);
    if (!d) break;  // ring outside guest memory: stop, as a DMA fault would
    const std::uint64_t buf = c.load(d);
    const auto len = static_cast<unsigned>(c.load(d + desc::kWritebackOffset, 2));
    // Gather the frame's pieces (one per guest page it touches).
    HostNic::Segment segs[kMaxSegments];
    unsigned n = 0;
    std::uint64_t g = buf;
    unsigned left = len;
    bool ok = true;
    while (left && ok) {
      const auto chunk = static_cast<unsigned>(std::min<std::uint64_t>(left, kPage - (g & (kPage - 1))));
      const std::uint64_t h = m_host.guest_to_host(c, g);
      if (!h || n == kMaxSegments) ok = false;
      else segs[n++] = {h, chunk};
      g += chunk;
      left -= chunk;
    }
    if (ok && m_pf.transmit(c, segs, n)) {
      ++m_stats.tx_packets;
      m_stats.tx_bytes += len;
    } else {
      ++m_stats.tx_dropped;
    }
    c.store(d + desc::kWritebackOffset, len | (std::uint32_t{desc::kDd} << 16), 4);
    head = (head + 1) % size;
    ++sent;
  }
  wr(c, reg::kTxHead, head);
  if (sent) raise(c, reg::kCauseTx);
}

void EmulatedNic::deliver(cpu::Core& c, std::uint64_t hpa, unsigned len) {
  if (!m_regs) return;  // the VM has not started
  lock(c);
  m_host.charge(c, m_costs.emu_frame);
  const std::uint32_t ctrl = rd(c, reg::kCtrl);
  const std::uint32_t size = rd(c, reg::kRxSize);
  if (size != m_seen_rx_size) {  // a polled page's new RX ring (see poll())
    wr(c, reg::kRxHead, 0);
    m_seen_rx_size = size;
  }
  const std::uint32_t head = rd(c, reg::kRxHead);
  const std::uint32_t tail = rd(c, reg::kRxTail);
  if (!(ctrl & reg::kCtrlRxEn) || !size || head == tail || head >= size) {
    ++m_stats.rx_drops;
    unlock(c);
    return;
  }
  const std::uint64_t base = rd(c, reg::kRxBaseLo) | (std::uint64_t{rd(c, reg::kRxBaseHi)} << 32);
  const std::uint64_t d = m_host.guest_to_host(c, base + std::uint64_t{head} * desc::kSize);
  const std::uint64_t buf = d ? c.load(d) : 0;
  const auto room = d ? static_cast<unsigned>(c.load(d + desc::kWritebackOffset, 2)) : 0u;
  if (!d || len > room || !copy(c, buf, hpa, len, true)) {
    ++m_stats.rx_drops;
    unlock(c);
    return;
  }
  c.store(d + desc::kWritebackOffset, len | (std::uint32_t{desc::kDd} << 16), 4);
  wr(c, reg::kRxHead, (head + 1) % size);
  ++m_stats.rx_packets;
  m_stats.rx_bytes += len;
  raise(c, reg::kCauseRx);
  unlock(c);
}

void EmulatedNic::raise(cpu::Core& c, std::uint32_t cause) {
  wr(c, reg::kIntCause, rd(c, reg::kIntCause) | cause);
  if (rd(c, reg::kIntEnable) & cause) send_msi(c);
}

// MSI-X entry 0 (PCIe 5.0 7.7.2): masked, the pending bit is set and the
// message goes when the vector is unmasked. The message becomes a virtual
// interrupt: vector = data bits 7:0, destination = address bits 19:12.
void EmulatedNic::send_msi(cpu::Core& c) {
  if (rd(c, reg::kMsixCtrl) & 1) {
    wr(c, reg::kIntPending, 1);
    return;
  }
  wr(c, reg::kIntPending, 0);
  const std::uint32_t addr = rd(c, reg::kMsixAddrLo);
  const std::uint32_t data = rd(c, reg::kMsixData);
  ++m_stats.interrupts;
  m_host.interrupt(c, (addr >> 12) & 0xFF, static_cast<std::uint8_t>(data & 0xFF));
}

// access: poll. The guest's register writes are plain stores into the
// page; the hypervisor compares the doorbells with what it saw last time
// and acts on the changes. Reset and W1C semantics do not exist for a
// polled page: a size write is noticed as a new size (head and tail start
// at 0), the guest clears INT_CAUSE by writing 0.
void EmulatedNic::poll(cpu::Core& c) {
  if (!m_regs) return;
  lock(c);
  ++m_stats.polls;
  m_host.charge(c, m_costs.emu_poll);
  const std::uint32_t tx_size = rd(c, reg::kTxSize), rx_size = rd(c, reg::kRxSize);
  if (tx_size != m_seen_tx_size) {
    wr(c, reg::kTxHead, 0);
    m_seen_tx_size = tx_size;
  }
  if (rx_size != m_seen_rx_size) {
    wr(c, reg::kRxHead, 0);
    m_seen_rx_size = rx_size;
  }
  const std::uint32_t tail = rd(c, reg::kTxTail);
  if (tail != m_seen_tx_tail || tail != rd(c, reg::kTxHead)) {
    if (tail != m_seen_tx_tail) ++m_stats.doorbells;
    m_seen_tx_tail = tail;
    process_tx(c);
  }
  const std::uint32_t msix_ctrl = rd(c, reg::kMsixCtrl), enable = rd(c, reg::kIntEnable);
  if (((m_seen_msix_ctrl & 1) && !(msix_ctrl & 1) && rd(c, reg::kIntPending)) ||
      (enable & ~m_seen_enable & rd(c, reg::kIntCause)))
    send_msi(c);
  m_seen_msix_ctrl = msix_ctrl;
  m_seen_enable = enable;
  unlock(c);
}

}  // namespace vmx::hv
