// Temporal decoupling: the cores' clocks differ by up to a quantum, yet an
// interrupt one core sends is seen by another at or after the sender's clock
// at sending, never before (docs/model.md, "Time").
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <memory>

#include <systemc>

#include "cpu/core.h"
#include "platform/platform.h"
#include "sim/fiber.h"

namespace {

using vmx::cpu::Core;

constexpr std::uint8_t kVector = 0x40;

struct Receiver : vmx::cpu::InterruptHandler {
  std::uint64_t received_at = 0;
  void interrupt(Core& c, std::uint8_t vector) override {
    if (vector == kVector && !received_at) received_at = c.rdtsc();
    c.wrmsr(vmx::cpu::msr::kX2ApicEoi, 0);
  }
  void exception(Core&, std::uint8_t, std::uint32_t) override { std::abort(); }
};

// What core 1 does while core 0 works towards its IPI.
enum class Rx { Halted, Computing, LongCompute };

// Core 0 works for a while, then sends an IPI to core 1, which is halted, or
// computes in steps of 100 instructions, or is inside one compute of ten
// million. Returns (send time, receive time) in TSC cycles.
std::pair<std::uint64_t, std::uint64_t> ipi_times(const char* quantum, Rx rx_mode = Rx::Halted) {
  vmx::stats::Group root;
  auto params = vmx::cfg::defaults<vmx::models::PlatformParams>();
  params.cores = 2;
  params.memory = 64ull << 20;
  vmx::cfg::convert(quantum, vmx::cfg::Spec(vmx::cfg::Unit::Time), params.quantum);
  vmx::models::Platform platform(params, &root);
  Receiver rx;
  std::uint64_t sent_at = 0;
  vmx::sim::Fiber sender("sender", [&] {
    Core& c = Core::current();
    // About a million cycles in small steps, so that the send happens part
    // way through a quantum (1,000,999 is no multiple of either quantum).
    for (int i = 0; i < 1001; ++i) c.compute(999);
    sent_at = c.rdtsc();
    c.wrmsr(vmx::cpu::msr::kX2ApicIcr, (std::uint64_t{1} << 32) | kVector);
    for (;;) c.hlt();
  });
  vmx::sim::Fiber receiver("receiver", [&] {
    Core& c = Core::current();
    c.lidt(&rx);
    c.sti();
    if (rx_mode == Rx::Computing)
      for (;;) c.compute(100);
    if (rx_mode == Rx::LongCompute) c.compute(10'000'000);
    for (;;) c.hlt();
  });
  platform.core(0).set_reset_fiber(&sender);
  platform.core(1).set_reset_fiber(&receiver);
  sc_core::sc_start(sc_core::sc_time(2, sc_core::SC_MS));
  REQUIRE(rx.received_at != 0);
  return {sent_at, rx.received_at};
}

std::int64_t skew(std::pair<std::uint64_t, std::uint64_t> t) {
  return static_cast<std::int64_t>(t.second) - static_cast<std::int64_t>(t.first);
}

}  // namespace

// Each case elaborates its own machine, so each runs in its own process.
// An interrupt is recognised at or after the sender's clock at sending,
// however far the sender ran ahead of the halted receiver within its
// quantum: the receiver wakes at the send time, and the skew is the delivery
// alone (a few hundred cycles), never negative.
TEST_CASE("an IPI is seen at its sending, not before, with a long quantum (100us)") {
  // 100 us at 3 GHz is 300,000 cycles, the most the two clocks differ.
  std::int64_t d = skew(ipi_times("100us"));
  CHECK(d >= 0);
  CHECK(d < 1'000);
}

TEST_CASE("an IPI is seen at its sending, not before, with a short quantum (1us)") {
  std::int64_t d = skew(ipi_times("1us"));
  CHECK(d >= 0);
  CHECK(d < 1'000);
}

// A receiver that runs, behind the sender's clock, takes the interrupt at
// its first boundary at or after the send time: within a 100-instruction
// step of it.
TEST_CASE("an IPI reaches a computing core at its sending, not before (quantum 100us)") {
  std::int64_t d = skew(ipi_times("100us", Rx::Computing));
  CHECK(d >= 0);
  CHECK(d < 1'000);
}

// One compute of ten million instructions (over 3 ms) is ten million
// instruction boundaries: the interrupt comes between two of them, not
// after the last.
TEST_CASE("an IPI interrupts a long compute at its sending (quantum 10us)") {
  std::int64_t d = skew(ipi_times("10us", Rx::LongCompute));
  CHECK(d >= 0);
  CHECK(d < 1'000);
}
