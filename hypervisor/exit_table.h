// The run loop's dispatch tables (docs/hypervisor.md, "Rooms"): exit
// handlers by SDM basic exit reason, MSR handlers by MSR index. A new
// handler is one registration, not a new case in a switch.
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/vmx.h"

namespace vmx::hv {

/// Handlers indexed by the basic exit reason, bits 15:0 of the exit-reason
/// field (SDM Vol. 3C, 28.2.1; numbering of Appendix C). Dispatch is one
/// array load; a reason with no handler yields a null Handler.
template <class Handler>
class ExitTable {
 public:
  static constexpr unsigned kSize = cpu::kMaxExitReason + 1;

  /// Registers h for reason r; a reason has at most one handler.
  void on(cpu::ExitReason r, Handler h) {
    const auto i = static_cast<unsigned>(r);
    if (i >= kSize || !h)
      throw std::logic_error("ExitTable: bad registration for " + std::string(cpu::exit_reason_name(i)));
    if (m_h[i]) throw std::logic_error("ExitTable: two handlers for " + std::string(cpu::exit_reason_name(i)));
    m_h[i] = h;
  }
  /// Removes the handler of r (its exits become unexpected).
  void off(cpu::ExitReason r) {
    const auto i = static_cast<unsigned>(r);
    if (i < kSize) m_h[i] = Handler{};
  }
  Handler find(unsigned reason) const { return reason < kSize ? m_h[reason] : Handler{}; }
  bool has(unsigned reason) const { return reason < kSize && m_h[reason]; }

 private:
  std::array<Handler, kSize> m_h{};
};

/// RDMSR/WRMSR handlers by MSR index (the ECX of the instruction). The
/// hypervisor emulates a handful of MSRs, so a linear scan of a small
/// vector is as fast as a hash; a missing MSR, or a missing read or write
/// handler, is the caller's #GP(0) (SDM Vol. 2B, RDMSR/WRMSR).
template <class Read, class Write>
class MsrTable {
 public:
  struct Entry {
    std::uint32_t msr;
    Read read;
    Write write;
  };
  void on(std::uint32_t msr, Read read, Write write) {
    if (find(msr)) throw std::logic_error("MsrTable: two handlers for one MSR");
    m_entries.push_back({msr, read, write});
  }
  const Entry* find(std::uint32_t msr) const {
    for (const Entry& e : m_entries)
      if (e.msr == msr) return &e;
    return nullptr;
  }
  const std::vector<Entry>& entries() const { return m_entries; }

 private:
  std::vector<Entry> m_entries;
};

}  // namespace vmx::hv
