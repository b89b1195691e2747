// The event trace's listener on the platform's devices (sim/event_trace.h,
// docs/event_trace.md): interrupt messages as the interrupt fabric reports
// them (row "interrupt messages", category irq) and DMA the IOMMU blocked as
// the root complex reports it (row "iommu", category dma). The devices
// themselves know nothing of the trace.
#pragma once

#include <string>

#include "sim/event_trace.h"
#include "sim/events.h"

namespace vmx::models {

class DeviceTrace final : public events::Listener {
 public:
  /// Attaches itself to `d` (a device's events) for the kinds the trace's
  /// categories record; detaches itself when destroyed. `host` names the
  /// device's host when there are several (trace::msi_row).
  DeviceTrace(events::Dispatcher& d, trace::EventTrace& trace, std::string host = {});
  ~DeviceTrace() override;
  DeviceTrace(const DeviceTrace&) = delete;
  DeviceTrace& operator=(const DeviceTrace&) = delete;

  void msi(const events::Msi& e) override;
  void dma_blocked(const events::DmaBlocked& e) override;

 private:
  static events::Mask kinds_for(const trace::EventTrace& t);
  events::Dispatcher& m_source;
  trace::EventTrace& m_trace;
  std::string m_host;
  int m_msi_track = -1, m_iommu_track = -1;  // created on first use
};

}  // namespace vmx::models
