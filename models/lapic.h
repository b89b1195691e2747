// Local interrupt controller of one core, x2APIC-style (SDM Vol. 3A, ch. 10
// and 11 in recent editions): interrupt request and in-service registers,
// fixed-priority selection by vector class, EOI, and the TSC-deadline timer.
// Plain C++; the core polls it at operation boundaries.
#pragma once

#include <array>
#include <cstdint>

namespace vmx::models {

class Lapic {
 public:
  /// Vector the timer raises unless software programs the LVT timer entry.
  /// Linux's LOCAL_TIMER_VECTOR (arch/x86/include/asm/irq_vectors.h).
  static constexpr std::uint8_t kDefaultTimerVector = 0xEC;
  static constexpr std::uint64_t kNoDeadline = UINT64_MAX;

  /// A device, timer or IPI requests `vector`.
  void raise(std::uint8_t vector) { set(m_irr, vector); }

  /// Highest-priority requested vector that may interrupt what is in
  /// service (its priority class above that of the highest in-service
  /// vector), or -1.
  int deliverable() const {
    int req = highest(m_irr);
    if (req < 0) return -1;
    int svc = highest(m_isr);
    if (svc >= 0 && (req >> 4) <= (svc >> 4)) return -1;
    return req;
  }
  bool any_requested() const { return (m_irr[0] | m_irr[1] | m_irr[2] | m_irr[3]) != 0; }
  /// INTA: the vector moves from requested to in service.
  void acknowledge(std::uint8_t vector) {
    clear(m_irr, vector);
    set(m_isr, vector);
  }
  /// EOI: the highest in-service vector is done.
  void eoi() {
    int svc = highest(m_isr);
    if (svc >= 0) clear(m_isr, static_cast<std::uint8_t>(svc));
  }

  // TSC-deadline timer (SDM Vol. 3A, 10.5.4.1): armed by writing a nonzero
  // deadline to IA32_TSC_DEADLINE, disarmed by writing zero or by firing.
  void set_deadline(std::uint64_t tsc) { m_deadline = tsc ? tsc : kNoDeadline; }
  std::uint64_t deadline() const { return m_deadline; }
  std::uint64_t deadline_msr() const { return m_deadline == kNoDeadline ? 0 : m_deadline; }
  void set_lvt_timer(std::uint32_t v) { m_lvt_timer = v; }
  std::uint32_t lvt_timer() const { return m_lvt_timer; }
  // LVT performance-monitoring counters entry (SDM Vol. 3A, 11.5.1; Vol.
  // 3B, 20.6.3.5.8): masked at reset. A counter overflow with its interrupt
  // enabled requests the entry's vector (fixed delivery; other delivery
  // modes are not modelled and deliver nothing) and the processor sets the
  // mask bit, which the handler clears to receive the next one.
  static constexpr std::uint32_t kLvtMasked = 1u << 16;
  void set_lvt_pmc(std::uint32_t v) { m_lvt_pmc = v; }
  std::uint32_t lvt_pmc() const { return m_lvt_pmc; }
  /// A performance-monitoring interrupt: true if it was requested.
  bool pmi() {
    const std::uint32_t v = m_lvt_pmc;
    if (v & kLvtMasked) return false;
    m_lvt_pmc |= kLvtMasked;
    if (((v >> 8) & 7) != 0) return false;  // delivery mode other than fixed
    raise(static_cast<std::uint8_t>(v & 0xFF));
    return true;
  }
  /// Fires the timer if its deadline has passed. Returns true if it fired.
  bool tick(std::uint64_t now_tsc) {
    if (now_tsc < m_deadline) return false;
    m_deadline = kNoDeadline;
    if (!(m_lvt_timer & (1u << 16))) raise(static_cast<std::uint8_t>(m_lvt_timer & 0xFF));
    return true;
  }

 private:
  // 256-bit registers as four 64-bit words, vector v in word v / 64: the
  // highest set vector is one leading-zero count per non-empty word.
  using Reg256 = std::array<std::uint64_t, 4>;
  static void set(Reg256& r, std::uint8_t v) { r[v >> 6] |= 1ull << (v & 63); }
  static void clear(Reg256& r, std::uint8_t v) { r[v >> 6] &= ~(1ull << (v & 63)); }
  static int highest(const Reg256& r) {
    for (int w = 3; w >= 0; --w)
      if (r[w]) return w * 64 + 63 - __builtin_clzll(r[w]);
    return -1;
  }
  Reg256 m_irr{}, m_isr{};
  std::uint64_t m_deadline = kNoDeadline;
  std::uint32_t m_lvt_timer = kDefaultTimerVector;
  std::uint32_t m_lvt_pmc = kLvtMasked;
};

}  // namespace vmx::models
