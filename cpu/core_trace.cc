#include "cpu/core_trace.h"

#include "cpu/core.h"
#include "cpu/vmx.h"

namespace vmx::cpu {

events::Mask CoreTrace::kinds_for(const trace::EventTrace& t) {
  events::Mask m = 0;
  if (t.on(trace::kExits)) m |= events::bit(events::kVmEntry) | events::bit(events::kVmExit);
  if (t.on(trace::kIrq)) m |= events::bit(events::kInterrupt);
  if (t.on(trace::kWalks)) m |= events::bit(events::kWalk);
  return m;
}

CoreTrace::CoreTrace(Core& core, trace::EventTrace& trace, std::string host)
    : events::Listener(kinds_for(trace)), m_core(core), m_trace(trace), m_host(std::move(host)) {
  if (kinds()) m_core.events().attach(*this);
}

CoreTrace::~CoreTrace() { m_core.events().detach(*this); }

unsigned CoreTrace::row() {
  if (m_track < 0) m_track = static_cast<int>(m_trace.track(trace::core_row(m_core.id(), m_host)));
  return static_cast<unsigned>(m_track);
}

void CoreTrace::vm_entry(const events::VmEntry& e) {
  const std::uint64_t now = m_core.ps_of(e.now);
  if (m_exit_name) m_trace.slice(trace::kExits, row(), m_exit_name, m_since_ps, now, {"qualification", m_qualification, true});
  m_exit_name = nullptr;
  m_since_ps = now;
}

void CoreTrace::vm_exit(const events::VmExit& e) {
  const std::uint64_t now = m_core.ps_of(e.now);
  m_trace.slice(trace::kExits, row(), "guest", m_since_ps, now, {"vpid", e.vpid});
  m_exit_name = exit_reason_name(e.reason);
  m_qualification = e.qualification;
  m_since_ps = now;
}

void CoreTrace::walk(const events::Walk& e) {
  m_trace.slice(trace::kWalks, row(), "page walk", m_core.ps_of(e.start), m_core.ps_of(e.start + e.cycles), {"address", e.la, true},
                {"references", e.refs}, {"guest_references", e.guest_refs});
}

void CoreTrace::interrupt(const events::Interrupt& e) {
  const char* name = e.how == events::Delivery::PostedNotification ? "posted-interrupt notification"
                     : e.guest                                      ? "guest interrupt"
                                                                    : "host interrupt";
  m_trace.instant(trace::kIrq, row(), name, m_core.ps_of(e.now), {"vector", e.vector}, {"guest", e.guest ? 1u : 0u});
}

}  // namespace vmx::cpu
