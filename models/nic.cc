#include "models/nic.h"
#include "sim/local_time.h"

#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace vmx::models {

namespace {
std::uint64_t le(const std::uint8_t* b, unsigned n) {
  std::uint64_t v = 0;
  for (unsigned i = n; i-- > 0;) v = (v << 8) | b[i];
  return v;
}
constexpr std::uint64_t kBroadcast = 0xFFFF'FFFF'FFFFull;
}  // namespace

NicFunctionStats::NicFunctionStats(stats::Group* parent, const std::string& name)
    : Group(parent, name, "one function of the NIC") {}

NicStats::NicStats(stats::Group* parent, const std::string& name) : Group(parent, name, "SR-IOV NIC") {}

void NicFunction::reset() {
  ctrl = status = cause = enable = msix_data = 0;
  msix_ctrl = 1;  // MSI-X vector control: Mask Bit resets to 1 (PCIe 5.0 7.7.2.7)
  mac = nic_default_mac(index);
  tx_base = rx_base = msix_addr = 0;
  tx_size = tx_head = tx_tail = rx_size = rx_head = rx_tail = 0;
  itr = 0;
  pending = msi_due = throttled = sent_any = false;
  mig_state = nicreg::kMigRunning;
}

Nic::Nic(sc_core::sc_module_name name, const NicParams& params, stats::Group* parent)
    : sc_module(name), mmio("mmio"), dma("dma"), m_params(params), m_stats(parent, basename()) {
  if (params.mmio_stride < nicreg::kWindow || (params.mmio_stride & (params.mmio_stride - 1)))
    throw std::invalid_argument(std::string(basename()) + ": mmio_stride must be a power of two of at least " +
                                std::to_string(nicreg::kWindow) + " bytes");
  if (params.mmio_base % params.mmio_stride)
    throw std::invalid_argument(std::string(basename()) + ": mmio_base must be aligned to mmio_stride (BARs are "
                                "naturally aligned, PCIe 5.0 7.5.1.2.1)");
  m_fn.resize(params.vfs + 1);
  const std::uint16_t pf = requester_id(params.bus, params.device, 0);
  for (unsigned f = 0; f < m_fn.size(); ++f) {
    NicFunction& fn = m_fn[f];
    fn.index = f;
    // VF n (1-based) routing ID = PF + First VF Offset + (n - 1) * VF Stride
    // (PCIe 5.0 9.3.3.10), modulo 2^16.
    fn.rid = f == 0 ? pf : static_cast<std::uint16_t>(pf + params.first_vf_offset + (f - 1) * params.vf_stride);
    fn.stats = std::make_unique<NicFunctionStats>(&m_stats, f == 0 ? std::string("pf") : fmt::format("vf{}", f - 1));
    fn.reset();
  }
  mmio.register_b_transport(this, &Nic::b_transport);
  SC_HAS_PROCESS(Nic);
  SC_THREAD(tx_thread);
  SC_THREAD(rx_thread);
  SC_THREAD(msi_thread);
}

Nic::~Nic() = default;

// ---------------------------------------------------------------------------
// Registers.

void Nic::b_transport(tlm::tlm_generic_payload& trans, sc_core::sc_time& /*delay*/) {
  const std::uint64_t addr = trans.get_address();
  const unsigned len = trans.get_data_length();
  const std::uint64_t span = m_fn.size() * m_params.mmio_stride;
  if (addr < m_params.mmio_base || addr - m_params.mmio_base >= span) {
    trans.set_response_status(tlm::TLM_ADDRESS_ERROR_RESPONSE);
    return;
  }
  const std::uint64_t rel = addr - m_params.mmio_base;
  NicFunction& f = m_fn[rel / m_params.mmio_stride];
  const std::uint32_t off = static_cast<std::uint32_t>(rel % m_params.mmio_stride);
  // Registers are DWORDs; a QWORD access covers two of them (low first).
  if ((len != 4 && len != 8) || (off & 3) || off + len > m_params.mmio_stride) {
    trans.set_response_status(tlm::TLM_BURST_ERROR_RESPONSE);
    return;
  }
  std::uint8_t* data = trans.get_data_ptr();
  for (unsigned i = 0; i < len; i += 4) {
    if (trans.is_write()) {
      ++m_stats.mmio_writes;
      reg_write(f, off + i, static_cast<std::uint32_t>(le(data + i, 4)));
    } else {
      ++m_stats.mmio_reads;
      const std::uint32_t v = reg_read(f, off + i);
      for (unsigned k = 0; k < 4; ++k) data[i + k] = static_cast<std::uint8_t>(v >> (8 * k));
    }
  }
  trans.set_response_status(tlm::TLM_OK_RESPONSE);
}

std::uint32_t Nic::reg_read(NicFunction& f, std::uint32_t off) {
  using namespace nicreg;
  switch (off) {
    case kCtrl: return f.ctrl;
    case kStatus: return f.status | (m_link ? kStatusLinkUp : 0);
    case kId: return f.index | (f.index ? 1u << 8 : 0) | (std::uint32_t(f.rid) << 16);
    case kMacLo: return static_cast<std::uint32_t>(f.mac);
    case kMacHi: return static_cast<std::uint32_t>(f.mac >> 32) & 0xFFFF;
    case kTxBaseLo: return static_cast<std::uint32_t>(f.tx_base);
    case kTxBaseHi: return static_cast<std::uint32_t>(f.tx_base >> 32);
    case kTxSize: return f.tx_size;
    case kTxHead: return f.tx_head;
    case kTxTail: return f.tx_tail;
    case kRxBaseLo: return static_cast<std::uint32_t>(f.rx_base);
    case kRxBaseHi: return static_cast<std::uint32_t>(f.rx_base >> 32);
    case kRxSize: return f.rx_size;
    case kRxHead: return f.rx_head;
    case kRxTail: return f.rx_tail;
    case kIntCause: return f.cause;
    case kIntEnable: return f.enable;
    case kIntPending: return f.pending ? 1 : 0;
    case kItr: return f.itr;
    case kMsixAddrLo: return static_cast<std::uint32_t>(f.msix_addr);
    case kMsixAddrHi: return static_cast<std::uint32_t>(f.msix_addr >> 32);
    case kMsixData: return f.msix_data;
    case kMsixCtrl: return f.msix_ctrl;
    case kMigState: return f.mig_state;
    case kMigStatus: return f.quiesced() ? kMigQuiesced : 0;
    default: return 0;  // reserved: reads as zero
  }
}

// A register write comes from software at its core's time: what it starts
// (a transmit, a held-back message) starts then (sim/local_time.h).
void Nic::reg_write(NicFunction& f, std::uint32_t off, std::uint32_t v) {
  using namespace nicreg;
  constexpr std::uint64_t kLo = 0xFFFF'FFFFull;
  switch (off) {
    case kCtrl:
      if (v & kCtrlReset)
        f.reset();  // function-level reset of the registers; statistics are kept
      else
        f.ctrl = v & (kCtrlTxEn | kCtrlRxEn | (f.index == 0 ? kCtrlUpe : 0));
      m_tx_kick.notify(sim::local_offset());
      break;
    case kStatus:
      f.status &= ~(v & (kStatusTxErr | kStatusRxErr));  // W1C
      m_tx_kick.notify(sim::local_offset());
      break;
    case kMacLo: f.mac = (f.mac & ~kLo) | v; break;
    case kMacHi: f.mac = (f.mac & kLo) | (std::uint64_t(v & 0xFFFF) << 32); break;
    case kTxBaseLo: f.tx_base = (f.tx_base & ~kLo) | (v & ~0xFu); break;
    case kTxBaseHi: f.tx_base = (f.tx_base & kLo) | (std::uint64_t(v) << 32); break;
    case kTxSize:
      f.tx_size = v & 0xFFFF;
      f.tx_head = f.tx_tail = 0;
      break;
    case kTxHead:  // writable only while resuming (restoring the saved ring position)
      if (f.mig_state == kMigResuming && v < f.tx_size) f.tx_head = v;
      break;
    case kRxHead:
      if (f.mig_state == kMigResuming && v < f.rx_size) f.rx_head = v;
      break;
    case kMigState:
      // VFIO migration v2: a defined arc is taken; any other request puts
      // the device in ERROR (left by a function reset).
      f.mig_state = mig_arc(f.mig_state, v) ? v : kMigError;
      if (f.dma_allowed()) {
        m_tx_kick.notify(sim::local_offset());
        if (f.pending && !(f.msix_ctrl & 1)) {  // held while stopped
          f.msi_due = true;
          m_msi_kick.notify(sim::local_offset());
        }
      }
      break;
    case kTxTail:
      if (v < f.tx_size) {  // out-of-range tails are ignored
        f.tx_tail = v;
        m_tx_kick.notify(sim::local_offset());
      }
      break;
    case kRxBaseLo: f.rx_base = (f.rx_base & ~kLo) | (v & ~0xFu); break;
    case kRxBaseHi: f.rx_base = (f.rx_base & kLo) | (std::uint64_t(v) << 32); break;
    case kRxSize:
      f.rx_size = v & 0xFFFF;
      f.rx_head = f.rx_tail = 0;
      break;
    case kRxTail:
      if (v < f.rx_size) f.rx_tail = v;
      break;
    case kIntCause: f.cause &= ~v; break;  // W1C
    case kIntEnable: f.enable = v & kCauseAll; break;
    case kItr: f.itr = v & 0xFFFF; break;
    case kMsixAddrLo: f.msix_addr = (f.msix_addr & ~kLo) | (v & ~3u); break;  // DWORD aligned
    case kMsixAddrHi: f.msix_addr = (f.msix_addr & kLo) | (std::uint64_t(v) << 32); break;
    case kMsixData: f.msix_data = v; break;
    case kMsixCtrl: {
      const bool was_masked = f.msix_ctrl & 1;
      f.msix_ctrl = v & 1;
      // Unmasking a vector whose pending bit is set sends its message
      // (PCIe 5.0 6.1.4.5).
      if (was_masked && !(v & 1) && f.pending) {
        f.msi_due = true;
        m_msi_kick.notify(sim::local_offset());
      }
      break;
    }
    default: break;  // read-only or reserved: writes are ignored
  }
}

// ---------------------------------------------------------------------------
// DMA and interrupts.

bool Nic::dma_access(NicFunction& f, bool write, std::uint64_t addr, void* data, unsigned len) {
  sc_core::sc_time delay = sc_core::SC_ZERO_TIME;
  bool ok;
  {
    // The payload owns heap memory (its extension array): it goes before
    // the wait below, in which the simulation may end with this thread
    // suspended for good.
    tlm::tlm_generic_payload t;
    DmaContext ctx;
    ctx.requester = f.rid;
    t.set_command(write ? tlm::TLM_WRITE_COMMAND : tlm::TLM_READ_COMMAND);
    t.set_address(addr);
    t.set_data_ptr(static_cast<unsigned char*>(data));
    t.set_data_length(len);
    t.set_streaming_width(len);
    t.set_response_status(tlm::TLM_INCOMPLETE_RESPONSE);
    t.set_extension(&ctx);
    dma->b_transport(t, delay);
    t.clear_extension(&ctx);
    ok = t.get_response_status() == tlm::TLM_OK_RESPONSE;
  }
  if (delay > sc_core::SC_ZERO_TIME) sc_core::wait(delay);
  return ok;
}

void Nic::send_msi(NicFunction& f) {
  f.pending = false;
  f.throttled = false;
  f.sent_any = true;
  f.last_msi = sc_core::sc_time_stamp();
  std::uint8_t data[4];
  for (unsigned k = 0; k < 4; ++k) data[k] = static_cast<std::uint8_t>(f.msix_data >> (8 * k));
  if (dma_access(f, true, f.msix_addr, data, 4))
    ++f.stats->interrupts;
  else
    ++f.stats->dma_faults;  // a blocked message write: counted, no error status
}

void Nic::raise(NicFunction& f, std::uint32_t cause) {
  f.cause |= cause;
  if (!(f.enable & cause)) return;
  if ((f.msix_ctrl & 1) || !f.dma_allowed()) {  // masked, or stopped for migration (no message DMA)
    f.pending = true;
    ++f.stats->interrupts_deferred;
    return;
  }
  // Interrupt throttling: at most one message per ITR interval; events in
  // between are coalesced into one message at the interval's end.
  if (f.itr && f.sent_any && sc_core::sc_time_stamp() < f.last_msi + itr_interval(f)) {
    ++f.stats->interrupts_throttled;
    if (!f.throttled) {
      f.throttled = true;
      m_msi_kick.notify(sc_core::SC_ZERO_TIME);
    }
    return;
  }
  send_msi(f);
}

void Nic::msi_thread() {
  for (;;) {
    // Sleep until a register write makes a message due or the earliest
    // held-back message may go.
    sc_core::sc_time next = sc_core::SC_ZERO_TIME;
    bool timed = false;
    for (const NicFunction& f : m_fn) {
      if (!f.throttled) continue;
      const sc_core::sc_time at = f.last_msi + itr_interval(f);
      if (!timed || at < next) next = at;
      timed = true;
    }
    const sc_core::sc_time now = sc_core::sc_time_stamp();
    if (!timed)
      sc_core::wait(m_msi_kick);
    else if (next > now)
      sc_core::wait(next - now, m_msi_kick);
    for (NicFunction& f : m_fn) {
      const sc_core::sc_time t = sc_core::sc_time_stamp();
      if (f.msi_due) {
        f.msi_due = false;
        if (f.pending && !(f.msix_ctrl & 1)) send_msi(f);
      }
      if (f.throttled && t >= f.last_msi + itr_interval(f)) {
        f.throttled = false;
        if (!(f.msix_ctrl & 1))
          send_msi(f);
        else
          f.pending = true;  // masked meanwhile: the message waits in the pending bit
      }
    }
  }
}

void Nic::dma_fault(NicFunction& f, std::uint32_t status_bit) {
  ++f.stats->dma_faults;
  f.status |= status_bit;
  raise(f, nicreg::kCauseErr);
}

// ---------------------------------------------------------------------------
// Transmit.

void Nic::tx_thread() {
  for (;;) {
    bool sent = false;
    const unsigned n = functions();
    // Round robin over the functions, one descriptor each turn.
    for (unsigned k = 0; k < n && !sent; ++k) {
      NicFunction& f = m_fn[(m_tx_next + k) % n];
      if (!f.tx_ready()) continue;
      m_tx_next = (f.index + 1) % n;
      f.tx_busy = true;
      transmit_one(f);
      f.tx_busy = false;
      sent = true;
    }
    if (!sent) sc_core::wait(m_tx_kick);
  }
}

void Nic::transmit_one(NicFunction& f) {
  using namespace nicreg;
  const std::uint64_t da = f.tx_base + std::uint64_t(f.tx_head) * nicdesc::kSize;
  std::uint8_t raw[nicdesc::kSize];
  if (!dma_access(f, false, da, raw, sizeof raw)) return dma_fault(f, kStatusTxErr);
  const std::uint64_t buf = le(raw, 8);
  const unsigned len = static_cast<unsigned>(le(raw + 8, 2));
  // The frame being sent lives in the NIC, not on this thread's stack (a
  // thread suspended when the simulation ends never unwinds its stack).
  Packet& p = m_tx_frame;
  p.bytes.resize(len);
  if (len && !dma_access(f, false, buf, p.bytes.data(), len)) return dma_fault(f, kStatusTxErr);
  // One frame waits in the NIC while the previous one is on the wire; the
  // next descriptor's DMA overlaps this frame's serialization.
  if (m_link) {
    const sc_core::sc_time now = sc_core::sc_time_stamp();
    const sc_core::sc_time free = m_link->free_at(*this);
    if (free > now) sc_core::wait(free - now);
    m_link->send(*this, std::move(p));
  }
  ++f.stats->tx_packets;
  f.stats->tx_bytes += len;
  if (f.tx_size) f.tx_head = (f.tx_head + 1) % f.tx_size;
  // Write-back: the length as fetched and DD, one DWORD at offset 8.
  std::uint8_t wb[4] = {raw[8], raw[9], static_cast<std::uint8_t>(nicdesc::kDd), 0};
  if (!dma_access(f, true, da + nicdesc::kWritebackOffset, wb, sizeof wb)) return dma_fault(f, kStatusTxErr);
  raise(f, kCauseTx);
}

// ---------------------------------------------------------------------------
// Receive.

void Nic::receive(Packet&& p) {
  if (m_rx_fifo.size() >= m_params.rx_fifo) {
    ++m_stats.rx_fifo_drops;
    return;
  }
  m_rx_fifo.push_back(std::move(p));
  m_rx_kick.notify(sc_core::SC_ZERO_TIME);
}

void Nic::rx_thread() {
  for (;;) {
    while (m_rx_fifo.empty()) sc_core::wait(m_rx_kick);
    m_rx_frame = std::move(m_rx_fifo.front());  // held by the NIC while its DMAs wait
    m_rx_fifo.pop_front();
    receive_one(m_rx_frame);
  }
}

void Nic::receive_one(Packet& p) {
  using namespace nicreg;
  // Layer-2 steering by destination MAC (the VEB of an SR-IOV port);
  // broadcast goes to the PF.
  NicFunction* f = nullptr;
  if (p.bytes.size() >= 6) {
    const std::uint64_t dst = le(p.bytes.data(), 6);
    for (NicFunction& fn : m_fn) {
      if (fn.mac == dst) {
        f = &fn;
        break;
      }
    }
    if (!f && (dst == kBroadcast || (m_fn[0].ctrl & kCtrlUpe))) f = &m_fn[0];
  }
  if (!f) {
    ++m_stats.rx_unmatched;
    return;
  }
  if (!f->rx_usable()) {
    ++f->stats->rx_discards;
    return;
  }
  if (!f->rx_free()) {
    ++f->stats->rx_drops;
    return;
  }
  f->rx_busy = true;
  receive_into(*f, p);
  f->rx_busy = false;
}

void Nic::receive_into(NicFunction& fn, Packet& p) {
  using namespace nicreg;
  NicFunction* f = &fn;
  const std::uint64_t da = f->rx_base + std::uint64_t(f->rx_head) * nicdesc::kSize;
  std::uint8_t raw[nicdesc::kSize];
  if (!dma_access(*f, false, da, raw, sizeof raw)) return dma_fault(*f, kStatusRxErr);
  const std::uint64_t buf = le(raw, 8);
  const std::size_t room = static_cast<std::size_t>(le(raw + 8, 2));
  const std::size_t len = p.bytes.size();
  if (len > room) {
    ++f->stats->rx_oversize;
    return;
  }
  if (len && !dma_access(*f, true, buf, p.bytes.data(), static_cast<unsigned>(len)))
    return dma_fault(*f, kStatusRxErr);
  std::uint8_t wb[4] = {static_cast<std::uint8_t>(len), static_cast<std::uint8_t>(len >> 8),
                        static_cast<std::uint8_t>(nicdesc::kDd), 0};
  if (!dma_access(*f, true, da + nicdesc::kWritebackOffset, wb, sizeof wb)) return dma_fault(*f, kStatusRxErr);
  if (f->rx_size) f->rx_head = (f->rx_head + 1) % f->rx_size;
  ++f->stats->rx_packets;
  f->stats->rx_bytes += len;
  raise(*f, kCauseRx);
}

}  // namespace vmx::models
