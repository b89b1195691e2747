#include "hypervisor/virtio_net.h"

#include "cpu/vmx.h"
#include "hypervisor/host_nic.h"
#include "hypervisor/hypervisor_state.h"

#include <fmt/format.h>

namespace vmx::hv {

namespace reg = abi::virtio_reg;
using cpu::Core;

namespace {
constexpr std::uint64_t kCodeVirtio = 0x11000;  // offset of the device's code in the hypervisor's text (hypervisor.cc)
}  // namespace

VirtioNet::VirtioNet(const HvCosts& costs, Host& host, std::uint64_t mac, stats::Group* parent)
    : m_costs(costs), m_host(host), m_mac(mac & 0xFFFFFFFFFFFFull), m_stats(parent) {}

std::uint64_t VirtioNet::GuestMem::hpa(std::uint64_t gpa) {
  const std::uint64_t p = gpa & ~0xFFFull;
  if (p != page) {
    hpa_page = dev.m_host.gpa_to_hpa(c, p);
    page = p;
  }
  if (!hpa_page)
    throw cpu::SimulationError(
        fmt::format("virtio-net: ring at guest-physical {:#x} is not backed by the VM's memory", gpa));
  return hpa_page | (gpa & 0xFFF);
}

std::uint64_t VirtioNet::buffer_hpa(Core& c, std::uint64_t gpa, std::uint32_t len) {
  if (len == 0 || (gpa & 0xFFF) + len > 0x1000) return 0;
  std::uint64_t h = m_host.gpa_to_hpa(c, gpa & ~0xFFFull);
  return h ? h | (gpa & 0xFFF) : 0;
}

void VirtioNet::reset() {
  m_driver_features = 0;
  m_status = 0;
  m_sel = 0;
  m_isr = 0;
  for (auto& q : m_qregs) q = QueueRegs{};
  m_rx = virtio::DeviceQueue{};
  m_tx = virtio::DeviceQueue{};
}

void VirtioNet::queue_ready(Core& c) {
  const QueueRegs& q = m_qregs[m_sel];
  virtio::Layout l;
  l.desc = q.desc;
  l.avail = q.avail;
  l.used = q.used;
  l.size = q.size;
  if (!l.valid())
    throw cpu::SimulationError(fmt::format("virtio-net: queue {} set ready with an invalid layout (size {}, desc "
                                           "{:#x}, avail {:#x}, used {:#x}; virtio 1.1, 2.6)",
                                           m_sel, q.size, q.desc, q.avail, q.used));
  const bool event_idx = m_driver_features & reg::kFeatureEventIdx;
  (m_sel == reg::kRxQueue ? m_rx : m_tx) = virtio::DeviceQueue(l, event_idx);
  (void)c;
}

bool VirtioNet::mmio(Core& c, std::uint64_t offset, unsigned size, bool write, std::uint64_t& value) {
  m_host.charge(c, m_costs.virtio_mmio);
  if (write) ++m_stats.mmio_writes;
  else ++m_stats.mmio_reads;
  if (offset >= reg::kMac && offset + size <= reg::kMac + 6) {
    if (write) return false;
    value = (m_mac >> (8 * (offset - reg::kMac))) & (size == 8 ? ~0ull : ((1ull << (8 * size)) - 1));
    return true;
  }
  const bool wide = offset == reg::kDeviceFeatures || offset == reg::kDriverFeatures || offset == reg::kQueueDesc ||
                    offset == reg::kQueueAvail || offset == reg::kQueueUsed;
  if (size != (wide ? 8u : 4u)) return false;
  QueueRegs& q = m_qregs[m_sel];
  if (!write) {
    switch (offset) {
      case reg::kMagic: value = reg::kMagicValue; return true;
      case reg::kVersion: value = 2; return true;
      case reg::kDeviceId: value = 1; return true;
      case reg::kDeviceFeatures:
        value = reg::kFeatureMac | reg::kFeatureEventIdx | reg::kFeatureVersion1;
        return true;
      case reg::kQueueSel: value = m_sel; return true;
      case reg::kQueueSizeMax: value = reg::kMaxQueueSize; return true;
      case reg::kQueueSize: value = q.size; return true;
      case reg::kQueueReady: value = q.ready; return true;
      case reg::kQueueDesc: value = q.desc; return true;
      case reg::kQueueAvail: value = q.avail; return true;
      case reg::kQueueUsed: value = q.used; return true;
      case reg::kIsr: value = m_isr; m_isr = 0; return true;
      case reg::kStatus: value = m_status; return true;
      case reg::kVector: value = m_vector; return true;
      default: return false;
    }
  }
  switch (offset) {
    case reg::kDriverFeatures: m_driver_features = value; return true;
    case reg::kQueueSel:
      if (value > 1) return false;
      m_sel = static_cast<std::uint32_t>(value);
      return true;
    case reg::kQueueSize:
      if (q.ready || value == 0 || value > reg::kMaxQueueSize || (value & (value - 1))) return false;
      q.size = static_cast<std::uint16_t>(value);
      return true;
    case reg::kQueueReady:
      if (value & 1) queue_ready(c);
      q.ready = value & 1;
      return true;
    case reg::kQueueDesc: q.desc = value; return true;
    case reg::kQueueAvail: q.avail = value; return true;
    case reg::kQueueUsed: q.used = value; return true;
    case reg::kQueueNotify:
      ++m_stats.notifies;
      if (value == reg::kTxQueue) process_tx(c);
      // A notify of the RX queue (buffers posted) needs no work: frames
      // take the buffers when they arrive.
      return value <= 1;
    case reg::kStatus:
      if (value == 0) reset();
      else m_status = static_cast<std::uint32_t>(value);
      return true;
    case reg::kVector: m_vector = static_cast<std::uint8_t>(value); return true;
    default: return false;
  }
}

void VirtioNet::raise(Core& c) {
  m_isr |= 1;
  ++m_stats.interrupts;
  if (m_vector) m_host.interrupt(c, m_vector);
}

void VirtioNet::process_tx(Core& c) {
  if (!running() || !m_tx.ready() || m_in_tx) return;
  m_in_tx = true;
  m_host.charge(c, m_costs.virtio_notify);
  GuestMem m{*this, c};
  std::uint64_t frames = 0;
  m_tx.disable_notify(m);
  for (;;) {
    virtio::Chain ch;
    while (m_tx.has_avail(m)) {
      while (m_tx.pop(m, ch)) {
        m_host.charge(c, m_costs.virtio_tx_frame);
        std::uint64_t h = ch.write || ch.descriptors != 1 || ch.len <= virtio::kNetHdrBytes
                              ? 0
                              : buffer_hpa(c, ch.addr, ch.len);
        if (h) {
          const std::uint32_t n = ch.len - virtio::kNetHdrBytes;
          c.load(h, 8);  // the header's flags and GSO fields (no offloads negotiated)
          if (!m_host.transmit(c, h + virtio::kNetHdrBytes, n)) ++m_stats.tx_unrouted;
          ++m_stats.tx_frames;
          m_stats.tx_bytes += n;
          ++frames;
        } else {
          ++m_stats.bad_buffers;
        }
        m_tx.push_used(m, ch.head, 0);
      }
    }
    // vhost_enable_notify: re-arm, then look once more; a buffer added in
    // between would otherwise wait for a notify the driver never sends.
    if (!m_tx.enable_notify(m)) break;
    ++m_stats.rechecks;
    m_tx.disable_notify(m);
  }
  if (m_tx.publish_used(m)) raise(c);
  else if (frames) ++m_stats.interrupts_suppressed;
  m_stats.tx_batch.sample(frames);
  m_in_tx = false;
}

bool VirtioNet::receive(Core& c, std::uint64_t hpa, std::uint32_t len) {
  if (!running() || !m_rx.ready()) {
    ++m_stats.rx_dropped;
    return false;
  }
  m_host.charge(c, m_costs.virtio_rx_frame);
  GuestMem m{*this, c};
  virtio::Chain ch;
  for (;;) {
    if (!m_rx.has_avail(m) || !m_rx.pop(m, ch)) {
      // Out of buffers: ask to be notified when the driver posts more
      // (vhost's handle_rx re-enabling notification on an empty ring).
      m_rx.enable_notify(m);
      ++m_stats.rx_dropped;
      return false;
    }
    const std::uint64_t dst = ch.write && ch.len >= virtio::kNetHdrBytes + len ? buffer_hpa(c, ch.addr, ch.len) : 0;
    if (dst) {
      // struct virtio_net_hdr: no offloads, one buffer (5.1.6.4).
      c.store(dst, 0, 8);
      c.store(dst + 8, 0, 2);
      c.store(dst + virtio::kNetHdrNumBuffers, 1, 2);
      c.rep_movs(dst + virtio::kNetHdrBytes, hpa, len);
      m_rx.push_used(m, ch.head, virtio::kNetHdrBytes + len);
      break;
    }
    ++m_stats.bad_buffers;
    m_rx.push_used(m, ch.head, 0);
  }
  ++m_stats.rx_frames;
  m_stats.rx_bytes += len;
  if (m_rx.publish_used(m)) raise(c);
  else ++m_stats.interrupts_suppressed;
  return true;
}

// ---------------------------------------------------------------------------
// The hypervisor's side: dispatch of the register page's exits, and what it
// gives the device.

std::uint64_t Hypervisor::VirtioDev::gpa_to_hpa(Core& c, std::uint64_t gpa) {
  if (gpa >= vm->memory) return 0;
  // Guest memory is backed on first touch; the device may be the first.
  if (!hv->back_guest_page(c, *vm, gpa)) return 0;
  return hv->ept_translate(c, *vm, gpa);
}

bool Hypervisor::VirtioDev::transmit(Core& c, std::uint64_t hpa, std::uint32_t len) {
  if (forward) {
    forward(c, hpa, len);
    return true;
  }
  // Through the software switch and the PF driver (hypervisor/host_nic.*).
  return hv->m_host_nic && hv->m_host_nic->transmit(c, hpa, len);
}

void Hypervisor::VirtioDev::interrupt(Core&, std::uint8_t vector) {
  // The device's interrupt goes to vCPU 0 (its MSI-X vector's destination).
  hv->raise_virtual(*vm->vcpus.at(0), vector);
}

void Hypervisor::VirtioDev::charge(Core& c, std::uint64_t instructions) { hv->charge(c, instructions, kCodeVirtio); }

bool Hypervisor::virtio_exit(Core& c, Vcpu& v, std::uint64_t gpa) {
  if (gpa < reg::kWindow || gpa >= reg::kWindow + reg::kPageBytes) return false;
  // Decode assist (docs/model.md): VMX instruction information bits 3:0
  // are the access size, bit 4 a write; the store data is in RAX.
  const std::uint64_t info = vmr(c, cpu::field::kVmxInstructionInfo);
  const unsigned size = static_cast<unsigned>(info & 0xF);
  const bool write = info & 0x10;
  std::uint64_t value = write ? v.regs[cpu::Regs::rax] : 0;
  if (!v.vm->virtio->dev->mmio(c, gpa - reg::kWindow, size, write, value)) value = ~0ull;  // unclaimed: all ones
  if (!write) v.regs[cpu::Regs::rax] = size == 8 ? value : value & ((1ull << (8 * size)) - 1);
  // Complete the instruction (SDM Vol. 3C, 28.2.4: exit instruction length).
  vmw(c, cpu::field::kGuestRip, vmr(c, cpu::field::kGuestRip) + vmr(c, cpu::field::kExitInstructionLength));
  return true;
}

void Hypervisor::virtio_set_forward(unsigned vm, FrameSink sink) {
  Vm& m = *m_vms.at(vm);
  if (!m.virtio) throw std::invalid_argument("VM " + m.name + " has no virtio-net device");
  m.virtio->forward = std::move(sink);
}

bool Hypervisor::virtio_receive(unsigned vm, Core& c, std::uint64_t hpa, std::uint32_t len) {
  Vm& m = *m_vms.at(vm);
  return m.virtio && m.virtio->dev->receive(c, hpa, len);
}

}  // namespace vmx::hv
