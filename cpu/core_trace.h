// The event trace's listener on one core (sim/event_trace.h,
// docs/event_trace.md): the core's timeline alternates guest slices (VM
// entry to exit) and exit slices (exit to the next entry, named by the exit
// reason), with interrupt deliveries and, in category walks, page walks.
// It records what the core reports through its events (sim/events.h); the
// core itself knows nothing of the trace.
#pragma once

#include <cstdint>
#include <string>

#include "sim/event_trace.h"
#include "sim/events.h"

namespace vmx::cpu {

class Core;

class CoreTrace final : public events::Listener {
 public:
  /// Attaches itself to `core` for the kinds the trace's categories record
  /// (none: it stays detached). Detaches itself when destroyed. `host`
  /// names the core's host when there are several (trace::core_row).
  CoreTrace(Core& core, trace::EventTrace& trace, std::string host = {});
  ~CoreTrace() override;
  CoreTrace(const CoreTrace&) = delete;
  CoreTrace& operator=(const CoreTrace&) = delete;

  void walk(const events::Walk& e) override;
  void vm_entry(const events::VmEntry& e) override;
  void vm_exit(const events::VmExit& e) override;
  void interrupt(const events::Interrupt& e) override;

 private:
  static events::Mask kinds_for(const trace::EventTrace& t);
  unsigned row();  // this core's row, created on first use

  Core& m_core;
  trace::EventTrace& m_trace;
  std::string m_host;
  int m_track = -1;
  std::uint64_t m_since_ps = 0;        // start of the open slice
  const char* m_exit_name = nullptr;   // the exit being handled (null: none)
  std::uint64_t m_qualification = 0;
};

}  // namespace vmx::cpu
