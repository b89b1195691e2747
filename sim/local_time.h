// Temporal decoupling seen from a device: the software executing now runs on
// its core's clock, up to a quantum ahead of SystemC's time. A device that
// reacts to a register write (a doorbell) acts at the writer's time, not
// SystemC's, so that nothing it does comes before the write that caused it
// (docs/model.md, "Time").
#pragma once

#include <systemc>

namespace vmx::sim {

/// Set by the core model (cpu/core.cc): how far the software executing now
/// runs ahead of SystemC's time.
using LocalOffsetFn = sc_core::sc_time (*)();
inline LocalOffsetFn g_local_offset = nullptr;

/// The delay to give an event that the executing software's access causes:
/// zero outside software (a device's own process).
inline sc_core::sc_time local_offset() { return g_local_offset ? g_local_offset() : sc_core::SC_ZERO_TIME; }

}  // namespace vmx::sim
