#include "pmu/pmu.h"

namespace vmx::pmu {

Pmu::Pmu(Host& host, events::Dispatcher& events) : events::Listener(0), m_host(host), m_events(events) {
  // Fixed counter i counts one event: instructions, core cycles, reference
  // cycles (SDM Vol. 3B, Table 20-2).
  m_c[kGpCounters + 0].source = Source::Instructions;
  m_c[kGpCounters + 1].source = Source::Cycles;
  m_c[kGpCounters + 2].source = Source::Cycles;
}

Pmu::~Pmu() {
  if (m_attached) m_events.detach(*this);
}

// CPUID.0AH (SDM Vol. 2A): EAX version, counters per logical CPU, their
// width, and the length of the EBX vector; EBX bit i set means
// architectural event i is NOT available (5 and 6 are the branch events,
// which the model has no mechanism for); EDX fixed counters and width.
Cpuid0A Pmu::cpuid() {
  Cpuid0A r{};
  r.eax = kVersion | (kGpCounters << 8) | (kWidth << 16) | (7u << 24);
  r.ebx = (1u << 5) | (1u << 6);
  r.ecx = 0;
  r.edx = kFixedCounters | (kWidth << 5);
  return r;
}

bool Pmu::owns(std::uint32_t m) {
  return (m >= msr::kPmc0 && m < msr::kPmc0 + 8) || (m >= msr::kPerfEvtSel0 && m < msr::kPerfEvtSel0 + 8) ||
         (m >= msr::kFixedCtr0 && m < msr::kFixedCtr0 + 4) || (m >= msr::kFixedCtrCtrl && m <= msr::kGlobalOvfCtrl) ||
         (m >= msr::kAPmc0 && m < msr::kAPmc0 + 8) || m == msr::kPerfCapabilities;
}

Pmu::Source Pmu::decode(std::uint64_t sel) {
  const auto ev = static_cast<std::uint8_t>(sel & evtsel::kEventMask);
  const auto um = static_cast<std::uint8_t>((sel >> evtsel::kUmaskShift) & 0xFF);
  const auto cmask = static_cast<unsigned>((sel >> evtsel::kCmaskShift) & 0xFF);
  const bool edge = sel & evtsel::kEdge, inv = sel & evtsel::kInv;
  auto is = [&](event::Code c) { return c.event == ev && c.umask == um; };
  // Walk-pending events count cycles with a walk in progress: the model has
  // one page walker per logical CPU, so CMASK 0 or 1 counts those cycles,
  // CMASK > 1 never holds, EDGE counts the walks begun, and INV (cycles
  // with fewer than CMASK walks) is not modelled and counts zero.
  // docs/pmu.md, "CMASK, INV and EDGE".
  auto pending = [&](Source cycles, Source starts) {
    if (inv || cmask > 1) return Source::None;
    return edge ? starts : cycles;
  };
  if (is(event::kInstructions)) return Source::Instructions;
  if (is(event::kCoreCycles) || is(event::kRefCycles)) return Source::Cycles;
  if (is(event::kLlcReference)) return Source::LlcRef;
  if (is(event::kLlcMisses)) return Source::LlcMiss;
  if (is(event::kLoadL1Hit)) return Source::LoadL1Hit;
  if (is(event::kLoadL2Hit)) return Source::LoadL2Hit;
  if (is(event::kLoadL3Hit)) return Source::LoadL3Hit;
  if (is(event::kLoadL1Miss)) return Source::LoadL1Miss;
  if (is(event::kLoadL2Miss)) return Source::LoadL2Miss;
  if (is(event::kLoadL3Miss)) return Source::LoadL3Miss;
  if (is(event::kL1dReplacement)) return Source::L1dMiss;
  if (is(event::kL2Misses)) return Source::L2Miss;
  if (is(event::kL2References)) return Source::L2Ref;
  if (is(event::kDtlbMissWalk)) return Source::DtlbMissWalk;
  if (is(event::kDtlbWalkDone)) return Source::DtlbWalkDone;
  if (is(event::kDtlbWalkPending)) return pending(Source::DtlbWalkPending, Source::DtlbWalkStarts);
  if (is(event::kItlbMissWalk)) return Source::ItlbMissWalk;
  if (is(event::kItlbWalkDone)) return Source::ItlbWalkDone;
  if (is(event::kItlbWalkPending)) return pending(Source::ItlbWalkPending, Source::ItlbWalkStarts);
  if (is(event::kEptWalkPending)) return pending(Source::EptWalkPending, Source::EptWalkStarts);
  return Source::None;  // branches and anything else: no mechanism in the model
}

events::Mask Pmu::kinds_of(Source s) {
  using events::bit;
  switch (s) {
    case Source::Instructions: return bit(events::kRetired);
    case Source::LoadL1Hit:
    case Source::LoadL2Hit:
    case Source::LoadL3Hit:
    case Source::L2Ref:
    case Source::LlcRef: return bit(events::kCacheAccess);
    case Source::LoadL1Miss:
    case Source::LoadL2Miss:
    case Source::LoadL3Miss:
    case Source::L1dMiss:
    case Source::L2Miss:
    case Source::LlcMiss: return bit(events::kCacheMiss);
    case Source::DtlbMissWalk:
    case Source::ItlbMissWalk: return bit(events::kTlbMiss);
    case Source::DtlbWalkDone:
    case Source::DtlbWalkPending:
    case Source::DtlbWalkStarts:
    case Source::ItlbWalkDone:
    case Source::ItlbWalkPending:
    case Source::ItlbWalkStarts: return bit(events::kTlbMiss) | bit(events::kWalk);  // the miss names the side
    case Source::EptWalkPending:
    case Source::EptWalkStarts: return bit(events::kWalk);
    case Source::None:
    case Source::Cycles: return 0;
  }
  return 0;
}

void Pmu::reprogram() {
  m_active = 0;
  m_cycle_counters = 0;
  events::Mask kinds = 0;
  for (unsigned i = 0; i < kCounters; ++i) {
    const Counter& c = m_c[i];
    if (!c.enabled || !c.rings || !((m_global_ctrl >> status_bit(i)) & 1)) continue;
    m_active |= 1u << i;
    if (c.source == Source::Cycles) m_cycle_counters |= 1u << i;
    kinds |= kinds_of(c.source);
  }
  // Re-subscribe only on a change: attachment order among listeners is
  // otherwise kept.
  if (m_attached && kinds == this->kinds()) return;
  if (m_attached) m_events.detach(*this);
  set_kinds(kinds);
  m_attached = kinds != 0;
  if (m_attached) m_events.attach(*this);
}

void Pmu::sync() {
  const std::uint64_t now = m_host.pmu_unhalted_cycles();
  const std::uint64_t d = now - m_cycle_mark;
  m_cycle_mark = now;
  if (!d || !m_cycle_counters) return;
  for (unsigned i = 0; i < kCounters; ++i)
    if (((m_cycle_counters >> i) & 1) && counts_now(m_c[i])) add(i, d);
}

std::uint64_t Pmu::cycles_to_overflow() const {
  std::uint64_t best = UINT64_MAX;
  for (unsigned i = 0; i < kCounters; ++i) {
    if (!((m_cycle_counters >> i) & 1)) continue;
    const std::uint64_t left = (kCounterMask + 1) - m_c[i].value;
    if (left < best) best = left;
  }
  return best;
}

// A counter that passes its width wraps and sets its overflow bit in
// IA32_PERF_GLOBAL_STATUS; with INT set it also signals the local APIC
// (SDM Vol. 3B, 20.2.1.1 and 20.2.2).
void Pmu::add(unsigned i, std::uint64_t n) {
  Counter& c = m_c[i];
  const std::uint64_t sum = c.value + n;
  c.value = sum & kCounterMask;
  if (sum > kCounterMask) {
    m_global_status |= 1ull << status_bit(i);
    if (c.pmi) m_host.pmu_interrupt();
  }
}

void Pmu::count(Source s, std::uint64_t n) {
  for (unsigned i = 0; i < kCounters; ++i)
    if (((m_active >> i) & 1) && m_c[i].source == s && counts_now(m_c[i])) add(i, n);
}

void Pmu::retired(const events::Retired& e) { count(Source::Instructions, e.instructions); }

void Pmu::cache_access(const events::CacheAccess& e) {
  // An L2 prefetch request (level 2 only) counts in L2_RQSTS (Skylake's
  // L2_RQSTS.MISS includes PF_MISS, the L2 hardware prefetcher's misses),
  // never as a retired load.
  const bool load = !e.fetch && !e.write && !e.walk && !e.prefetch;
  switch (e.level) {
    case 1:
      if (e.fetch) return;  // the L1I
      if (!e.hit) count(Source::L1dMiss, 1);
      if (load) count(e.hit ? Source::LoadL1Hit : Source::LoadL1Miss, 1);
      return;
    case 2:
      count(Source::L2Ref, 1);
      if (!e.hit) count(Source::L2Miss, 1);
      if (load) count(e.hit ? Source::LoadL2Hit : Source::LoadL2Miss, 1);
      return;
    case 3:
      count(Source::LlcRef, 1);
      if (!e.hit) count(Source::LlcMiss, 1);
      if (load) count(e.hit ? Source::LoadL3Hit : Source::LoadL3Miss, 1);
      return;
    default: return;
  }
}

void Pmu::tlb_miss(const events::TlbMiss& e) {
  if (e.level != 2) return;  // an STLB miss: the walk that follows
  m_last_tlb_fetch = e.fetch;
  count(e.fetch ? Source::ItlbMissWalk : Source::DtlbMissWalk, 1);
}

void Pmu::walk(const events::Walk& e) {
  const bool fetch = m_last_tlb_fetch;
  if (e.outcome == events::WalkOutcome::Ok) count(fetch ? Source::ItlbWalkDone : Source::DtlbWalkDone, 1);
  count(fetch ? Source::ItlbWalkPending : Source::DtlbWalkPending, e.cycles);
  count(fetch ? Source::ItlbWalkStarts : Source::DtlbWalkStarts, 1);
  // A walk with EPT-dimension references: the whole walk is counted as
  // EPT-walk cycles (the walker reports one latency, not one per dimension).
  if (e.refs > e.guest_refs) {
    count(Source::EptWalkPending, e.cycles);
    count(Source::EptWalkStarts, 1);
  }
}

void Pmu::load_global_ctrl(std::uint64_t value) {
  sync();
  m_global_ctrl = value & kCounterBits;
  reprogram();
}

bool Pmu::read(std::uint32_t m, std::uint64_t& v) {
  sync();
  if (m >= msr::kPmc0 && m < msr::kPmc0 + kGpCounters) {
    v = m_c[m - msr::kPmc0].value;
  } else if (m >= msr::kAPmc0 && m < msr::kAPmc0 + kGpCounters) {
    v = m_c[m - msr::kAPmc0].value;
  } else if (m == msr::kPerfCapabilities) {
    v = kFullWidthWrite;
  } else if (m >= msr::kPerfEvtSel0 && m < msr::kPerfEvtSel0 + kGpCounters) {
    v = m_evtsel[m - msr::kPerfEvtSel0];
  } else if (m >= msr::kFixedCtr0 && m < msr::kFixedCtr0 + kFixedCounters) {
    v = m_c[kGpCounters + (m - msr::kFixedCtr0)].value;
  } else if (m == msr::kFixedCtrCtrl) {
    v = m_fixed_ctrl;
  } else if (m == msr::kGlobalCtrl) {
    v = m_global_ctrl;
  } else if (m == msr::kGlobalStatus) {
    v = m_global_status;
  } else if (m == msr::kGlobalOvfCtrl) {
    v = 0;  // write-only in effect: reads return zero
  } else {
    return false;  // a counter beyond those CPUID.0AH reports
  }
  return true;
}

bool Pmu::write(std::uint32_t m, std::uint64_t v) {
  sync();
  if (m >= msr::kPmc0 && m < msr::kPmc0 + kGpCounters) {
    // Only bits 31:0 are written; the value is sign-extended from bit 31 to
    // the counter's width (SDM Vol. 3B, 20.2.6, full-width writes are not
    // modelled).
    std::uint64_t x = v & 0xFFFFFFFFull;
    if (x & 0x80000000ull) x |= kCounterMask & ~0xFFFFFFFFull;
    m_c[m - msr::kPmc0].value = x;
  } else if (m >= msr::kAPmc0 && m < msr::kAPmc0 + kGpCounters) {
    if (v & ~kCounterMask) return false;  // beyond the counter's width
    m_c[m - msr::kAPmc0].value = v;
  } else if (m >= msr::kPerfEvtSel0 && m < msr::kPerfEvtSel0 + kGpCounters) {
    if (v & ~evtsel::kWritable) return false;
    const unsigned i = m - msr::kPerfEvtSel0;
    m_evtsel[i] = v;
    Counter& c = m_c[i];
    c.source = decode(v);
    c.rings = static_cast<std::uint8_t>(((v & evtsel::kOs) ? 1 : 0) | ((v & evtsel::kUsr) ? 2 : 0));
    c.pmi = v & evtsel::kInt;
    c.enabled = v & evtsel::kEn;
  } else if (m >= msr::kFixedCtr0 && m < msr::kFixedCtr0 + kFixedCounters) {
    if (v & ~kCounterMask) return false;
    m_c[kGpCounters + (m - msr::kFixedCtr0)].value = v;
  } else if (m == msr::kFixedCtrCtrl) {
    if (v & ~fixedctl::kWritable) return false;
    m_fixed_ctrl = v;
    for (unsigned j = 0; j < kFixedCounters; ++j) {
      Counter& c = m_c[kGpCounters + j];
      const std::uint64_t f = (v >> (4 * j)) & 0xF;
      c.rings = static_cast<std::uint8_t>(f & 3);
      c.enabled = c.rings != 0;
      c.pmi = f & fixedctl::kPmi;
    }
  } else if (m == msr::kGlobalCtrl) {
    if (v & ~kCounterBits) return false;
    m_global_ctrl = v;
  } else if (m == msr::kGlobalOvfCtrl) {
    // Writing 1 clears the status bit (SDM Vol. 3B, 20.2.2); bits 62
    // (buffer overflow) and 63 (CondChgd) are accepted and clear nothing
    // the model sets.
    if (v & ~(kCounterBits | (3ull << 62))) return false;
    m_global_status &= ~v;
    return true;
  } else {
    return false;  // IA32_PERF_GLOBAL_STATUS is read-only; no such counter
  }
  reprogram();
  return true;
}

bool Pmu::rdpmc(std::uint32_t ecx, std::uint64_t& v) {
  sync();
  const bool fixed = ecx & (1u << 30);
  const std::uint32_t idx = ecx & ~(1u << 30);
  if (fixed ? idx >= kFixedCounters : idx >= kGpCounters) return false;
  v = m_c[fixed ? kGpCounters + idx : idx].value;
  return true;
}

}  // namespace vmx::pmu
