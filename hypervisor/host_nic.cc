#include "hypervisor/host_nic.h"

#include <stdexcept>

#include <fmt/format.h>

#include "hypervisor/hypervisor.h"
#include "models/nic.h"

namespace vmx::hv {

namespace {
namespace reg = models::nicreg;
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kCodePfTx = 0xF000;  // offsets of the driver's paths in the hypervisor's text
constexpr std::uint64_t kCodePfRx = 0xF800;
constexpr std::uint64_t kMsiBase = 0xFEE00000;  // SDM Vol. 3A, 11.11.1
constexpr std::uint64_t kBroadcast = 0xFFFFFFFFFFFFull;
constexpr unsigned kTableEntry = 16;  // forwarding-table entry: MAC, port number
constexpr unsigned kRxRefill = 16;    // RX buffers handed back per tail write (ixgbe's IXGBE_RX_BUFFER_WRITE)
}  // namespace

HostNic::HostNic(const HostNicParams& params, const HvCosts& costs, std::uint64_t pf_window, unsigned cores, Env env,
                 stats::Group* parent)
    : m_p(params), m_costs(costs), m_pf(pf_window), m_env(std::move(env)), m_stats(parent) {
  if (m_p.core >= cores)
    throw std::invalid_argument(fmt::format("hypervisor.host_nic.core: {} names no core (the platform has {})",
                                            m_p.core, cores));
  if ((m_p.ring_size * models::nicdesc::kSize) % kPage && m_p.ring_size * models::nicdesc::kSize > kPage)
    throw std::invalid_argument("hypervisor.host_nic.ring_size: a ring above one page must fill whole pages");
}

std::uint64_t HostNic::contiguous(unsigned frames) {
  std::uint64_t first = m_env.alloc_frame();
  for (unsigned i = 1; i < frames; ++i)
    if (m_env.alloc_frame() != first + i * kPage)
      throw cpu::SimulationError("host_nic: hypervisor memory is not contiguous");
  return first;
}

void HostNic::attach(std::uint64_t mac, SwitchPort* port) { m_ports.push_back({mac & kBroadcast, port}); }

// Entries of ports attached since the table was last written.
void HostNic::write_table(cpu::Core& c) {
  if (m_ports.size() * kTableEntry > kPage) throw cpu::SimulationError("host_nic: too many switch ports");
  for (; m_table_len < m_ports.size(); ++m_table_len) {
    c.store(m_table + m_table_len * kTableEntry, m_ports[m_table_len].mac);
    c.store(m_table + m_table_len * kTableEntry + 8, m_table_len);
  }
}

void HostNic::init(cpu::Core& c) {
  using models::nicdesc::kSize;
  const auto ring_frames = static_cast<unsigned>((m_p.ring_size * kSize + kPage - 1) / kPage);
  const auto buf_frames = static_cast<unsigned>((m_p.ring_size * m_p.buffer_size + kPage - 1) / kPage);
  m_tx_ring = contiguous(ring_frames);
  m_rx_ring = contiguous(ring_frames);
  m_tx_bufs = contiguous(buf_frames);
  m_rx_bufs = contiguous(buf_frames);
  m_tx_lock = TicketLock(m_env.alloc_frame(), &m_tx_lock_stats);
  m_table = m_env.alloc_frame();
  m_env.charge(c, m_costs.pf_rx * 4, kCodePfRx);  // probe and bring-up code, of the order of a few receives
  mmio_write(c, reg::kCtrl, reg::kCtrlReset);
  m_mac = mmio_read(c, reg::kMacLo) | (std::uint64_t{mmio_read(c, reg::kMacHi) & 0xFFFF} << 32);
  write_table(c);
  // Rings: TX descriptors zeroed (software owns them), RX descriptors each
  // pointing at its buffer, all of them free.
  c.rep_stos(m_tx_ring, 0, m_p.ring_size * kSize);
  for (std::uint64_t i = 0; i < m_p.ring_size; ++i) {
    c.store(m_rx_ring + i * kSize, m_rx_bufs + i * m_p.buffer_size);
    c.store(m_rx_ring + i * kSize + 8, m_p.buffer_size & 0xFFFF);  // length = room, status 0
  }
  mmio_write(c, reg::kTxBaseLo, static_cast<std::uint32_t>(m_tx_ring));
  mmio_write(c, reg::kTxBaseHi, static_cast<std::uint32_t>(m_tx_ring >> 32));
  mmio_write(c, reg::kTxSize, static_cast<std::uint32_t>(m_p.ring_size));
  mmio_write(c, reg::kRxBaseLo, static_cast<std::uint32_t>(m_rx_ring));
  mmio_write(c, reg::kRxBaseHi, static_cast<std::uint32_t>(m_rx_ring >> 32));
  mmio_write(c, reg::kRxSize, static_cast<std::uint32_t>(m_p.ring_size));
  // One slot stays empty so that a full ring is told from an empty one.
  mmio_write(c, reg::kRxTail, static_cast<std::uint32_t>(m_p.ring_size - 1));
  // MSI-X entry 0: fixed delivery, physical destination = the APIC ID of
  // host_nic.core (address bits 19:12), vector in data bits 7:0 (SDM Vol.
  // 3A, 11.11.1-2); only receive interrupts, TX completions are reaped.
  // (Or the remappable-format message set_msi gave, when the hypervisor
  // turned interrupt remapping on before this.)
  if (!m_msi_address) {
    m_msi_address = kMsiBase | (m_p.core << 12);
    m_msi_data = static_cast<std::uint32_t>(m_p.vector);
  }
  mmio_write(c, reg::kMsixAddrLo, static_cast<std::uint32_t>(m_msi_address));
  mmio_write(c, reg::kMsixAddrHi, static_cast<std::uint32_t>(m_msi_address >> 32));
  mmio_write(c, reg::kMsixData, m_msi_data);
  mmio_write(c, reg::kIntEnable, reg::kCauseRx);
  mmio_write(c, reg::kMsixCtrl, 0);
  mmio_write(c, reg::kCtrl, reg::kCtrlTxEn | reg::kCtrlRxEn | reg::kCtrlUpe);
  m_tx_tail = m_tx_clean = m_rx_next = 0;
  m_ready = true;
}

void HostNic::mask_msi(cpu::Core& c) {
  if (m_ready) mmio_write(c, reg::kMsixCtrl, 1);
}

void HostNic::set_msi(cpu::Core& c, std::uint64_t address, std::uint32_t data) {
  m_msi_address = address;
  m_msi_data = data;
  if (!m_ready) return;
  mmio_write(c, reg::kMsixAddrLo, static_cast<std::uint32_t>(address));
  mmio_write(c, reg::kMsixAddrHi, static_cast<std::uint32_t>(address >> 32));
  mmio_write(c, reg::kMsixData, data);
  mmio_write(c, reg::kMsixCtrl, 0);
}

// Completed TX descriptors: the NIC writes DD back in order (docs/io.md).
void HostNic::reap(cpu::Core& c) {
  using models::nicdesc::kSize;
  while (m_tx_clean != m_tx_tail) {
    const std::uint64_t d = m_tx_ring + std::uint64_t{m_tx_clean} * kSize;
    if (!((c.load(d + 8, 4) >> 16) & models::nicdesc::kDd)) break;
    c.store(d + 8, 0, 4);
    m_tx_clean = static_cast<std::uint32_t>((m_tx_clean + 1) % m_p.ring_size);
    ++m_stats.tx_reaped;
  }
}

unsigned HostNic::tx_free(cpu::Core& c) {
  if (!m_ready) return 0;
  m_tx_lock.lock(c);
  reap(c);
  const unsigned used = static_cast<unsigned>((m_tx_tail + m_p.ring_size - m_tx_clean) % m_p.ring_size);
  m_tx_lock.unlock(c);
  return static_cast<unsigned>(m_p.ring_size) - 1 - used;  // one slot stays empty
}

bool HostNic::transmit(cpu::Core& c, const Segment* segs, unsigned n) {
  using models::nicdesc::kSize;
  std::uint64_t len = 0;
  for (unsigned i = 0; i < n; ++i) len += segs[i].len;
  if (!m_ready || len > m_p.buffer_size) {
    ++m_stats.tx_dropped;
    return false;
  }
  m_tx_lock.lock(c);
  m_env.charge(c, m_costs.pf_tx, kCodePfTx);
  reap(c);
  const auto next = static_cast<std::uint32_t>((m_tx_tail + 1) % m_p.ring_size);
  if (next == m_tx_clean) {
    m_tx_lock.unlock(c);
    ++m_stats.tx_dropped;
    return false;
  }
  const std::uint64_t buf = m_tx_bufs + std::uint64_t{m_tx_tail} * m_p.buffer_size;
  std::uint64_t off = 0;
  for (unsigned i = 0; i < n; ++i) {
    c.rep_movs(buf + off, segs[i].hpa, segs[i].len);
    off += segs[i].len;
  }
  const std::uint64_t d = m_tx_ring + std::uint64_t{m_tx_tail} * kSize;
  c.store(d, buf);
  c.store(d + 8, len, 4);  // length; status (DD) clear
  m_tx_tail = next;
  mmio_write(c, reg::kTxTail, m_tx_tail);
  ++m_stats.tx_packets;
  m_stats.tx_bytes += len;
  m_tx_lock.unlock(c);
  return true;
}

void HostNic::interrupt(cpu::Core& c) {
  using models::nicdesc::kSize;
  ++m_stats.interrupts;
  m_env.charge(c, m_costs.pf_interrupt, kCodePfRx);
  // Acknowledge first (W1C), so that a frame completing while the ring is
  // walked raises a new message rather than being missed.
  mmio_write(c, reg::kIntCause, mmio_read(c, reg::kIntCause));
  write_table(c);
  unsigned done = 0;
  for (;;) {
    const std::uint64_t d = m_rx_ring + std::uint64_t{m_rx_next} * kSize;
    const std::uint64_t wb = c.load(d + 8, 4);
    if (!((wb >> 16) & models::nicdesc::kDd)) break;
    const auto len = static_cast<unsigned>(wb & 0xFFFF);
    const std::uint64_t buf = c.load(d);
    m_env.charge(c, m_costs.pf_rx, kCodePfRx);
    ++m_stats.rx_packets;
    m_stats.rx_bytes += len;
    // The switch: destination MAC (frame bytes 0-5) against the table.
    m_env.charge(c, m_costs.switch_frame, kCodePfRx);
    const std::uint64_t dst = len >= 6 ? (c.load(buf, 4) | (c.load(buf + 4, 2) << 32)) : 0;
    bool any = false;
    for (std::size_t i = 0; i < m_ports.size(); ++i) {
      const std::uint64_t mac = c.load(m_table + i * kTableEntry);
      if (mac == dst || dst == kBroadcast) {
        m_ports[i].port->deliver(c, buf, len);
        ++m_stats.switched;
        any = true;
        if (dst != kBroadcast) break;
      }
    }
    if (!any) ++m_stats.unknown;
    // Hand the buffer back: room restored, DD cleared.
    c.store(d + 8, m_p.buffer_size & 0xFFFF, 4);
    m_rx_next = static_cast<std::uint32_t>((m_rx_next + 1) % m_p.ring_size);
    // Buffers go back to the PF every kRxRefill frames, not only at the end
    // of a long interrupt (which would starve the ring while frames keep
    // arriving), as ixgbe refills every IXGBE_RX_BUFFER_WRITE (16).
    if (++done % kRxRefill == 0)
      mmio_write(c, reg::kRxTail, static_cast<std::uint32_t>((m_rx_next + m_p.ring_size - 1) % m_p.ring_size));
  }
  // The new tail is one past the last free descriptor: the one before the
  // next to be filled keeps the ring from looking empty when full.
  if (done % kRxRefill)
    mmio_write(c, reg::kRxTail, static_cast<std::uint32_t>((m_rx_next + m_p.ring_size - 1) % m_p.ring_size));
  if (done)
    for (auto& p : m_ports) p.port->batch_end(c);
}

}  // namespace vmx::hv
