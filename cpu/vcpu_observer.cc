#include "cpu/vcpu_observer.h"

namespace vmx::cpu {

VcpuObserver::VcpuObserver(stats::Group* parent, const std::string& name)
    : stats::Group(parent, name), events::Listener(kKinds) {}

VcpuObserver::Reason& VcpuObserver::reason(unsigned r) {
  if (r >= kMaxExitReason) r = kMaxExitReason - 1;
  if (!m_reasons[r]) m_reasons[r] = &m_by_reason->make_group<Reason>(exit_reason_name(r));
  return *m_reasons[r];
}

void VcpuObserver::walk(const events::Walk& e) {
  ++walks;
  walk_refs += e.refs;
  walk_cycles += e.cycles;
  walk_latency.sample(e.cycles);
  walk_guest_refs += e.guest_refs;
  walk_ept_refs += static_cast<std::uint64_t>(e.refs - e.guest_refs);
  psc_hits += e.psc_hits;
  nested_tlb_hits += e.nested_hits;
}

void VcpuObserver::vm_entry(const events::VmEntry& e) {
  ++entries;
  if (pending) {
    reason(pending_reason).cycles.sample(e.now - pending_since);
    pending = false;
  }
  entered_at = e.now;
  in_guest = true;
}

void VcpuObserver::vm_exit(const events::VmExit& e) {
  ++exits;
  guest_cycles += e.now - entered_at;
  total_guest_cycles += e.now - entered_at;
  in_guest = false;
  pending = true;
  pending_reason = e.reason;
  pending_since = e.now;
}

}  // namespace vmx::cpu
