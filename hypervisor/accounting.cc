// Per-vCPU time accounting and the event trace's vCPU slices (simulator
// observation, no cost), and the paravirtual steal-time record (guest-visible,
// charged as stores).
#include "hypervisor/dirty_state.h"
#include "hypervisor/hypervisor_state.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "abi/steal_time.h"
#include "hypervisor/passthrough.h"
#include "hypervisor/shadow.h"
#include "mmu/paging.h"
#include "sim/event_trace.h"

namespace vmx::hv {

using namespace detail;

void Hypervisor::account_off_cpu(Vcpu& v, std::uint64_t now, bool same_vcpu_again) {
  now = std::max(now, v.time.since);
  std::uint64_t d = now - v.time.since;
  switch (v.time.off) {
    case Vcpu::Off::Runnable:
      // Between two runs of the same vCPU the core did its work: that is
      // hypervisor time; if another vCPU ran in between, it was stolen.
      if (same_vcpu_again) {
        v.time.stats->hypervisor += d;
      } else {
        v.time.stats->steal += d;
        v.time.steal_total += d;
      }
      break;
    case Vcpu::Off::Halted: v.time.stats->idle += d; break;
    default: break;
  }
  v.time.since = now;
}

void Hypervisor::account_on_cpu(Vcpu& v, std::uint64_t now) {
  now = std::max(now, v.time.since);
  std::uint64_t g = guest_cycles_now(*v.obs, now) - v.time.guest_baseline;
  std::uint64_t d = now - v.time.since;
  if (g > d) g = d;
  v.time.stats->guest += g;
  v.time.stats->hypervisor += d - g;
  v.time.since = now;
  v.time.guest_baseline = guest_cycles_now(*v.obs, now);
}

void Hypervisor::flush_accounting() {
  for (auto& vm : m_vms)
    for (auto& v : vm->vcpus) {
      std::uint64_t now = m_cores[v->core]->now();
      if (v->obs && v->time.off == Vcpu::Off::OnCpu) v->obs->flush(now);
      if (v->time.off == Vcpu::Off::OnCpu) account_on_cpu(*v, now);
      else if (v->time.off != Vcpu::Off::Stopped) account_off_cpu(*v, now, false);
    }
}

// Paravirtual steal time (abi/steal_time.h, KVM's struct kvm_steal_time):
// updated before every entry, the version odd while it changes.
void Hypervisor::publish_steal(Core& c, Vcpu& v) {
  namespace st = abi::steal_time;
  if (!v.steal.area) return;
  std::uint64_t a = v.steal.area;
  std::uint32_t version = static_cast<std::uint32_t>(c.load(a + st::kVersion, 4));
  c.store(a + st::kVersion, version + 1, 4);
  auto ns = static_cast<std::uint64_t>(static_cast<unsigned __int128>(v.time.steal_total) * 1000000000ull / m_tsc_hz);
  c.store(a + st::kSteal, ns);
  c.store(a + st::kPreempted, 0, 1);
  c.store(a + st::kVersion, version + 2, 4);
  steal_dirty(c, v);
}

// The record is written through its host-physical address, past EPT: a
// migration's dirty log must learn of it from the writer, as KVM's
// kvm_steal_time_set_preempted and record_steal_time mark the page dirty.
void Hypervisor::steal_dirty(Core& c, Vcpu& v) {
  if (v.vm->mig_out && v.vm->dirty && v.vm->dirty->on)
    dirty_mark(c, *v.vm, (v.steal.msr & abi::steal_time::kMsrAddressMask) / 4096);
}

void Hypervisor::mark_preempted(Core& c, Vcpu& v) {
  if (v.steal.area && v.state == Vcpu::State::Runnable) {
    c.store(v.steal.area + abi::steal_time::kPreempted, abi::steal_time::kVcpuPreempted, 1);
    steal_dirty(c, v);
  }
}

void Hypervisor::trace_state(Core& c, Vcpu& v, std::uint64_t now, bool stolen) {
  trace::EventTrace* t = trace::EventTrace::active();
  if (!t || !t->on(trace::kSched)) return;
  if (v.time.trace_track < 0)
    v.time.trace_track = static_cast<int>(t->track(trace::vcpu_row(v.vm->name, v.index, m_trace_host)));
  const char* name = v.time.off == Vcpu::Off::OnCpu      ? "running"
                     : v.time.off == Vcpu::Off::Halted   ? "halted"
                     : v.time.off == Vcpu::Off::Runnable ? (stolen ? "runnable (stolen)" : "runnable (hypervisor)")
                                                    : nullptr;
  if (name && now > v.time.trace_since)
    t->slice(trace::kSched, static_cast<unsigned>(v.time.trace_track), name, c.ps_of(v.time.trace_since), c.ps_of(now),
             {"core", v.time.off == Vcpu::Off::OnCpu ? c.id() : v.core});
  v.time.trace_since = now;
}

// MSR_KVM_STEAL_TIME: bit 0 enables; bits 63:6 give a 64-byte aligned
// guest-physical address (Linux Documentation/virt/kvm/x86/msr.rst).
bool Hypervisor::rdmsr_steal_time(PerCore&, Vcpu& v, std::uint64_t& value) {
  value = v.steal.msr;
  return true;
}
bool Hypervisor::wrmsr_steal_time(PerCore& pc, Vcpu& v, std::uint64_t value) {
  Core& c = *pc.core;
  // abi/steal_time.h: bit 0 enables, bits 63:6 are the record's address.
  if (!(value & abi::steal_time::kMsrEnable)) {
    v.steal.msr = value;
    v.steal.area = 0;
    return true;
  }
  std::uint64_t gpa = value & abi::steal_time::kMsrAddressMask;
  if ((value & abi::steal_time::kMsrReserved) || gpa + abi::steal_time::kBytes > v.vm->memory ||
      !back_guest_page(c, *v.vm, gpa))
    return false;
  // The hypervisor writes the record through its host-physical address:
  // a merged page gets its own frame first (docs/memory.md, "Same-page merging").
  if (m_ksm) ksm_unshare(c, *v.vm, gpa);
  v.steal.msr = value;
  v.steal.area = ept_translate(c, *v.vm, gpa);
  return true;
}

}  // namespace vmx::hv
