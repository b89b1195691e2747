#include "models/interrupts.h"

#include <fmt/format.h>
#include <systemc>

#include "iommu/interrupt_remap.h"

namespace vmx::models {

InterruptFabric::InterruptFabric(unsigned cpus, Raise raise, stats::Group* parent)
    : m_stats(parent), m_raise(std::move(raise)) {
  for (unsigned i = 0; i < cpus; ++i) m_cpu.push_back(std::make_unique<PerCpu>(&m_stats, fmt::format("cpu{}", i)));
}

InterruptFabric::~InterruptFabric() = default;

void InterruptFabric::raise(std::uint32_t dest, std::uint8_t vector, bool from_device) {
  if (dest >= m_cpu.size()) {
    ++m_stats.bad_destination;
    return;
  }
  if (from_device) ++m_cpu[dest]->msis;
  else ++m_cpu[dest]->ipis;
  m_raise(dest, vector);
}

void InterruptFabric::report(events::MsiOutcome outcome, const MsiMessage& m, std::uint32_t dest,
                             std::uint32_t vector) const {
  if (m_events.wants(events::kMsi)) [[unlikely]]
    m_events.msi({sc_core::sc_time_stamp().value(), m.requester, dest, vector, outcome});
}

void InterruptFabric::msi(const MsiMessage& m) {
  ++m_stats.msis;
  if (m_ir && m_ir->enabled()) {
    // VT-d 5.1: with remapping enabled every interrupt request is decoded
    // by the remapping unit.
    iommu::IrResult r = m_ir->remap(m);
    switch (r.kind) {
      case iommu::IrResult::Kind::Remapped:
        ++m_stats.remapped;
        report(events::MsiOutcome::Remapped, m, r.dest, r.vector);
        raise(r.dest, r.vector, true);
        return;
      case iommu::IrResult::Kind::Posted:
        ++m_stats.posted;
        report(r.notify ? events::MsiOutcome::PostedNotified : events::MsiOutcome::Posted, m, r.dest, r.vector);
        if (r.notify) {
          if (r.dest < m_cpu.size()) ++m_cpu[r.dest]->notifications;
          raise(r.dest, r.vector, true);
        }
        return;
      case iommu::IrResult::Kind::Compat:
        break;  // compatibility format let through (GSTS.CFIS)
      case iommu::IrResult::Kind::Blocked:
        ++m_stats.blocked;
        report(events::MsiOutcome::Blocked, m, 0, 0);
        return;
    }
  }
  if (msi_logical(m.address) || msi_delivery_mode(m.data) > 1) {
    ++m_stats.unsupported;
    report(events::MsiOutcome::Dropped, m, 0, 0);
    return;
  }
  report(events::MsiOutcome::Delivered, m, msi_dest(m.address), msi_vector(m.data));
  raise(msi_dest(m.address), msi_vector(m.data), true);
}

void InterruptFabric::ipi(std::uint32_t, std::uint32_t dest, std::uint8_t vector) { raise(dest, vector, false); }

}  // namespace vmx::models
