#include "models/device_trace.h"

namespace vmx::models {

events::Mask DeviceTrace::kinds_for(const trace::EventTrace& t) {
  events::Mask m = 0;
  if (t.on(trace::kIrq)) m |= events::bit(events::kMsi);
  if (t.on(trace::kDma)) m |= events::bit(events::kDmaBlocked);
  return m;
}

DeviceTrace::DeviceTrace(events::Dispatcher& d, trace::EventTrace& trace, std::string host)
    : events::Listener(kinds_for(trace)), m_source(d), m_trace(trace), m_host(std::move(host)) {
  if (kinds()) m_source.attach(*this);
}

DeviceTrace::~DeviceTrace() { m_source.detach(*this); }

void DeviceTrace::msi(const events::Msi& e) {
  const char* what = nullptr;
  switch (e.outcome) {
    case events::MsiOutcome::Delivered: what = "MSI"; break;
    case events::MsiOutcome::Remapped: what = "MSI (remapped)"; break;
    case events::MsiOutcome::Posted: what = "MSI (posted)"; break;
    case events::MsiOutcome::PostedNotified: what = "MSI (posted, notified)"; break;
    case events::MsiOutcome::Blocked: what = "MSI blocked"; break;
    case events::MsiOutcome::Dropped: return;  // not on the timeline (counted as unsupported)
  }
  if (m_msi_track < 0) m_msi_track = static_cast<int>(m_trace.track(trace::msi_row(m_host)));
  m_trace.instant(trace::kIrq, static_cast<unsigned>(m_msi_track), what, e.at_ps, {"requester", e.requester, true},
                  {"dest", e.dest}, {"vector", e.vector});
}

void DeviceTrace::dma_blocked(const events::DmaBlocked& e) {
  if (m_iommu_track < 0) m_iommu_track = static_cast<int>(m_trace.track(trace::iommu_row(m_host)));
  m_trace.instant(trace::kDma, static_cast<unsigned>(m_iommu_track), e.write ? "DMA write blocked" : "DMA read blocked", e.at_ps,
                  {"requester", e.requester, true}, {"address", e.address, true}, {"reason", e.reason, true});
}

}  // namespace vmx::models
