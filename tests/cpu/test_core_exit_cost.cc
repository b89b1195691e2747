// Exit costs in the right order (SDM Vol. 3C, 26.1): an instruction that
// causes a VM exit does not execute, so it is not charged its native latency
// before the exit. The guest times each exiting instruction from its own
// clock; the monitor's handling (record + an empty handler + VMRESUME) is the
// same for every exit, and CPUID, which has always exited first, is the
// reference: an exiting IN, OUT, RDMSR, WRMSR, MOV from CR3 and RDTSC cost
// exactly what an exiting CPUID costs, whatever their native latencies.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmx.h"
#include "cpu/vmx_harness.h"

namespace {

using vmx::cpu::Core;
using vmx::cpu::ExitReason;
using vmx::test::VmxHarness;
namespace proc = vmx::cpu::proc;

constexpr unsigned R(ExitReason r) { return static_cast<unsigned>(r); }

}  // namespace

TEST_CASE("An exiting IN/OUT/RDMSR/WRMSR costs exactly the exit path, not its native latency first", "[vmx][timing]") {
  auto p = VmxHarness::small_platform();
  // Native latencies far apart, so any one charged before the exit shows.
  p.cpu.cpuid_latency = 100;
  p.cpu.io_latency = 5000;
  p.cpu.msr_latency = 11000;
  p.cpu.cr_latency = 23000;
  p.cpu.rdtsc_latency = 47000;
  VmxHarness h(p);
  // No I/O or MSR bitmaps: every IN/OUT and RDMSR/WRMSR exits (SDM Vol. 3C,
  // 25.6.4, 25.6.9); no bitmap is read, so no cache access differs.
  h.config.proc = proc::kUnconditionalIoExiting | proc::kCr3StoreExiting | proc::kRdtscExiting;
  std::vector<std::uint64_t> cost;
  h.guest = [&](Core& c) {
    auto timed = [&](auto&& op) {
      const std::uint64_t t0 = c.now();
      op();
      cost.push_back(c.now() - t0);
    };
    timed([&] { c.cpuid(0); });
    timed([&] { c.in(0x60, 1); });
    timed([&] { c.out(0x61, 0x5A, 1); });
    timed([&] { c.rdmsr(0x10); });
    timed([&] { c.wrmsr(0x6E0, 12345); });
    timed([&] { c.read_cr(3); });
    timed([&] { c.rdtsc(); });
    timed([&] { c.cpuid(1); });
  };
  h.run();
  REQUIRE(h.setup_errors.empty());
  REQUIRE(h.done);
  REQUIRE(h.reasons() == std::vector<unsigned>{R(ExitReason::Cpuid), R(ExitReason::IoInstruction),
                                              R(ExitReason::IoInstruction), R(ExitReason::Rdmsr),
                                              R(ExitReason::Wrmsr), R(ExitReason::CrAccess),
                                              R(ExitReason::Rdtsc), R(ExitReason::Cpuid), R(ExitReason::Vmcall)});
  REQUIRE(cost.size() == 8);
  const std::uint64_t exit_path = cost[0];
  CHECK(cost[7] == exit_path);  // the reference is stable
  // The hardware transitions are in it, the native latencies are not.
  CHECK(exit_path >= p.cpu.vm_exit_latency + p.cpu.vm_entry_latency);
  CHECK(exit_path < p.cpu.io_latency);
  CHECK(cost[1] == exit_path);  // IN
  CHECK(cost[2] == exit_path);  // OUT
  CHECK(cost[3] == exit_path);  // RDMSR
  CHECK(cost[4] == exit_path);  // WRMSR
  CHECK(cost[5] == exit_path);  // MOV from CR3
  CHECK(cost[6] == exit_path);  // RDTSC
}

TEST_CASE("In root operation the same instructions are charged their native latency", "[vmx][timing]") {
  auto p = VmxHarness::small_platform();
  p.cpu.io_latency = 1000;
  p.cpu.msr_latency = 3000;
  VmxHarness h(p);
  std::uint64_t in_cost = 0, rdmsr_cost = 0;
  h.after = [&](Core& c) {
    std::uint64_t t0 = c.now();
    c.in(0x80, 1);  // an unclaimed port: no device latency
    in_cost = c.now() - t0;
    t0 = c.now();
    c.rdmsr(0x10);  // IA32_TIME_STAMP_COUNTER
    rdmsr_cost = c.now() - t0;
  };
  h.run();
  REQUIRE(h.done);
  const std::uint64_t cpi = 1;  // one retired instruction at the default CPI of 1
  CHECK(in_cost == cpi + p.cpu.io_latency);
  CHECK(rdmsr_cost == cpi + p.cpu.msr_latency);
}
