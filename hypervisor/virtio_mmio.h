// The common registers of the reduced virtio-mmio page (abi/virtio_net.h,
// virtio_reg; virtio spec v1.1, 4.2.2) for the hypervisor's virtio-blk and
// virtio-balloon back ends: magic, version, device ID, feature words,
// queue selection and set-up, ISR, status and the interrupt vector. The
// device adds its configuration space (from 0x100) and what a notify does.
// Plain C++, no SystemC.
#pragma once

#include <cstdint>
#include <vector>

#include "abi/virtio_net.h"
#include "hypervisor/virtio_ring.h"

namespace vmx::hv::virtio {

class MmioRegs {
 public:
  struct QueueRegs {
    std::uint16_t size = 0;
    bool ready = false;
    std::uint64_t desc = 0, avail = 0, used = 0;
  };

  MmioRegs(std::uint32_t device_id, std::uint64_t features, unsigned queues, std::uint16_t max_size)
      : m_device_id(device_id), m_features(features), m_max(max_size), m_q(queues), m_dq(queues) {
    reset();
  }

  /// What an access to a common register did.
  enum class Result { Done, Notify, Ready, Bad, NotCommon };
  /// Emulates an access to a common register (offset below 0x100). A
  /// notify returns Notify with `value` the queue index; setting a queue
  /// ready returns Ready (the queue is set up here from its registers,
  /// Bad if its layout is invalid, 2.6).
  Result access(std::uint64_t offset, unsigned size, bool write, std::uint64_t& value) {
    namespace reg = abi::virtio_reg;
    if (offset >= reg::kMac) return Result::NotCommon;
    const bool wide = offset == reg::kDeviceFeatures || offset == reg::kDriverFeatures || offset == reg::kQueueDesc ||
                      offset == reg::kQueueAvail || offset == reg::kQueueUsed;
    if (size != (wide ? 8u : 4u)) return Result::Bad;
    QueueRegs& q = m_q[m_sel];
    if (!write) {
      switch (offset) {
        case reg::kMagic: value = reg::kMagicValue; return Result::Done;
        case reg::kVersion: value = 2; return Result::Done;
        case reg::kDeviceId: value = m_device_id; return Result::Done;
        case reg::kDeviceFeatures: value = m_features | reg::kFeatureVersion1; return Result::Done;
        case reg::kQueueSel: value = m_sel; return Result::Done;
        case reg::kQueueSizeMax: value = m_max; return Result::Done;
        case reg::kQueueSize: value = q.size; return Result::Done;
        case reg::kQueueReady: value = q.ready; return Result::Done;
        case reg::kQueueDesc: value = q.desc; return Result::Done;
        case reg::kQueueAvail: value = q.avail; return Result::Done;
        case reg::kQueueUsed: value = q.used; return Result::Done;
        case reg::kIsr: value = m_isr; m_isr = 0; return Result::Done;
        case reg::kStatus: value = m_status; return Result::Done;
        case reg::kVector: value = m_vector; return Result::Done;
        default: return Result::Bad;
      }
    }
    switch (offset) {
      case reg::kDriverFeatures: m_driver_features = value; return Result::Done;
      case reg::kQueueSel:
        if (value >= m_q.size()) return Result::Bad;
        m_sel = static_cast<std::uint32_t>(value);
        return Result::Done;
      case reg::kQueueSize:
        if (q.ready || value == 0 || value > m_max || (value & (value - 1))) return Result::Bad;
        q.size = static_cast<std::uint16_t>(value);
        return Result::Done;
      case reg::kQueueReady: {
        if (!(value & 1)) {
          q.ready = false;
          return Result::Done;
        }
        Layout l;
        l.desc = q.desc;
        l.avail = q.avail;
        l.used = q.used;
        l.size = q.size;
        if (!l.valid()) return Result::Bad;
        m_dq[m_sel] = DeviceQueue(l, m_driver_features & reg::kFeatureEventIdx);
        q.ready = true;
        return Result::Ready;
      }
      case reg::kQueueDesc: q.desc = value; return Result::Done;
      case reg::kQueueAvail: q.avail = value; return Result::Done;
      case reg::kQueueUsed: q.used = value; return Result::Done;
      case reg::kQueueNotify:
        if (value >= m_q.size()) return Result::Bad;
        return Result::Notify;
      case reg::kStatus:
        if (value == 0) reset();
        else m_status = static_cast<std::uint32_t>(value);
        return Result::Done;
      case reg::kVector: m_vector = static_cast<std::uint8_t>(value); return Result::Done;
      default: return Result::Bad;
    }
  }

  bool running() const { return m_status & abi::virtio_reg::kStatusDriverOk; }
  std::uint64_t driver_features() const { return m_driver_features; }
  std::uint8_t vector() const { return m_vector; }
  DeviceQueue& queue(unsigned i) { return m_dq[i]; }
  bool queue_ready(unsigned i) const { return m_q[i].ready && m_dq[i].ready(); }
  /// Sets the ISR's used-buffer bit (before raising the interrupt).
  void set_isr() { m_isr |= 1; }

 private:
  void reset() {
    m_driver_features = 0;
    m_status = 0;
    m_sel = 0;
    m_isr = 0;
    for (auto& q : m_q) q = QueueRegs{m_max};
    for (auto& d : m_dq) d = DeviceQueue{};
  }
  std::uint32_t m_device_id;
  std::uint64_t m_features;
  std::uint16_t m_max;
  std::vector<QueueRegs> m_q;
  std::vector<DeviceQueue> m_dq;
  std::uint64_t m_driver_features = 0;
  std::uint32_t m_status = 0, m_sel = 0;
  std::uint8_t m_isr = 0, m_vector = 0;
};

}  // namespace vmx::hv::virtio
