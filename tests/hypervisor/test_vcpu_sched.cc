// The hypervisor's scheduler glue (hypervisor/vcpu_sched.cc, run_loop.cc):
// two busy vCPUs sharing one core take turns every timeslice, timed by the
// core's TSC-deadline timer or by the VMX-preemption timer, and every cycle
// of each vCPU lands in exactly one time bucket.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>

#include <systemc>

#include "cpu/core.h"
#include "hypervisor/hypervisor.h"
#include "platform/platform.h"
#include "sim/fiber.h"

namespace {

using vmx::cpu::Core;

struct Busy : vmx::abi::GuestImage, vmx::cpu::InterruptHandler {
  vmx::sim::Fiber fiber{"busy", [this] {
                          Core& c = Core::current();
                          c.lidt(this);
                          // Never exits on its own: only the slice timer
                          // the hypervisor arms before entering it can
                          // take the core back.
                          for (;;) c.compute(1000);
                        }};
  std::uint64_t entry_point(unsigned) override { return vmx::cpu::code_address(&fiber); }
  void interrupt(Core& c, std::uint8_t) override { c.wrmsr(vmx::cpu::msr::kX2ApicEoi, 0); }
  void exception(Core&, std::uint8_t, std::uint32_t) override { std::abort(); }
};

struct Figures {
  std::uint64_t guest[2], total[2], switches, preemption_exits, interrupt_exits;
};

std::uint64_t counter(const vmx::stats::Group& root, const std::string& path) {
  const auto* c = dynamic_cast<const vmx::stats::Counter*>(root.find(path));
  REQUIRE(c);
  return c->value();
}
std::uint64_t exits(const vmx::stats::Group& root, const std::string& vm, const char* reason) {
  const auto* h =
      dynamic_cast<const vmx::stats::Histogram*>(root.find("vm." + vm + ".vcpu0.exit_reasons." + reason + ".cycles"));
  return h ? h->count() : 0;
}

// 20 ms of two busy single-vCPU VMs pinned to core 0, 2 ms slices.
Figures share(const char* slice_timer) {
  vmx::stats::Group root(nullptr, "");
  auto pp = vmx::cfg::defaults<vmx::models::PlatformParams>();
  pp.cores = 1;
  pp.memory = 256ull << 20;
  vmx::models::Platform platform(pp, &root);
  auto hp = vmx::cfg::defaults<vmx::hv::HypervisorParams>();
  hp.timeslice = 2'000'000'000;  // 2 ms
  hp.slice_timer = slice_timer;
  vmx::hv::Hypervisor hv(hp, platform.cores(), pp.memory, pp.frequency, &root);
  Busy a, b;
  vmx::hv::VmSpec sa{"a", 1, 16ull << 20, &a}, sb{"b", 1, 16ull << 20, &b};
  sa.pin = sb.pin = {0};
  hv.add_vm(sa);
  hv.add_vm(sb);
  platform.core(0).set_reset_fiber(&hv.core_fiber(0));
  sc_core::sc_start(sc_core::sc_time(20, sc_core::SC_MS));
  hv.flush_accounting();
  Figures f{};
  const char* names[2] = {"a", "b"};
  for (int i = 0; i < 2; ++i) {
    const std::string t = std::string("vm.") + names[i] + ".vcpu0.time.";
    f.guest[i] = counter(root, t + "guest_cycles");
    f.total[i] = f.guest[i] + counter(root, t + "hypervisor_cycles") + counter(root, t + "steal_cycles") +
                 counter(root, t + "idle_cycles");
  }
  f.switches = counter(root, "hypervisor.totals.vcpu_switches");
  f.preemption_exits = exits(root, "a", "PREEMPTION_TIMER") + exits(root, "b", "PREEMPTION_TIMER");
  f.interrupt_exits = exits(root, "a", "EXTERNAL_INTERRUPT") + exits(root, "b", "EXTERNAL_INTERRUPT");
  return f;
}

constexpr std::uint64_t kRunCycles = 60'000'000;  // 20 ms at the default 3 GHz

void check_shares(const Figures& f) {
  // Each vCPU's buckets cover the run exactly (to the last synchronization).
  for (int i = 0; i < 2; ++i) CHECK(f.total[i] >= kRunCycles - kRunCycles / 100);
  for (int i = 0; i < 2; ++i) CHECK(f.total[i] <= kRunCycles + kRunCycles / 100);
  // Round robin: half the core each, within one slice (6M cycles) of it.
  for (int i = 0; i < 2; ++i) {
    CHECK(f.guest[i] >= kRunCycles / 2 - 6'000'000);
    CHECK(f.guest[i] <= kRunCycles / 2 + 6'000'000);
  }
  // 20 ms of 2 ms slices: about ten VMCS switches.
  CHECK(f.switches >= 8);
  CHECK(f.switches <= 11);
}

}  // namespace

TEST_CASE("scheduler glue: the host timer ends each slice") {
  Figures f = share("host");
  check_shares(f);
  CHECK(f.preemption_exits == 0);
  CHECK(f.interrupt_exits >= f.switches);  // each switch follows a timer interrupt's exit
}

TEST_CASE("scheduler glue: the VMX-preemption timer ends each slice") {
  Figures f = share("preemption");
  check_shares(f);
  CHECK(f.preemption_exits >= f.switches);
  CHECK(f.interrupt_exits == 0);  // no host timer interrupt while a vCPU runs
}
