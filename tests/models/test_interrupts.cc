// The interrupt fabric (models/interrupts.h): MSI decoding (SDM Vol. 3A,
// 11.11), delivery to a core's local APIC at its next boundary, waking a
// halted core; per-core statistics.
#include <catch2/catch.hpp>

#define SC_INCLUDE_DYNAMIC_PROCESSES
#include <systemc>

#include <cstdint>
#include <utility>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmx_harness.h"
#include "models/interrupts.h"
#include "sim/stats.h"

namespace {

using vmx::models::InterruptFabric;
using vmx::models::MsiMessage;

struct Fabric {
  vmx::stats::Group root{nullptr, "root"};
  std::vector<std::pair<std::uint32_t, std::uint8_t>> raised;
  InterruptFabric f{4, [this](std::uint32_t d, std::uint8_t v) { raised.emplace_back(d, v); }, &root};
  std::uint64_t counter(const std::string& p) const {
    return dynamic_cast<const vmx::stats::Counter*>(root.find(p))->value();
  }
};

struct Idt : vmx::cpu::InterruptHandler {
  std::vector<std::pair<std::uint8_t, std::uint64_t>> got;  // vector, core cycle
  void interrupt(vmx::cpu::Core& c, std::uint8_t v) override {
    got.emplace_back(v, c.now());
    c.wrmsr(vmx::cpu::msr::kX2ApicEoi, 0);
  }
  void exception(vmx::cpu::Core&, std::uint8_t, std::uint32_t) override {}
};

}  // namespace

TEST_CASE("an MSI's destination is address bits 19:12 and its vector data bits 7:0", "[interrupts][msi]") {
  Fabric t;
  t.f.msi({0xFEE02000, 0x0041, 0x0100});  // dest 2, vector 0x41, fixed
  t.f.msi({0xFEE03000, 0x01B0, 0x0100});  // dest 3, lowest priority: to the named destination
  t.f.msi(InterruptFabric::compat_msi(1, 0x99));
  REQUIRE(t.raised == std::vector<std::pair<std::uint32_t, std::uint8_t>>{{2, 0x41}, {3, 0xB0}, {1, 0x99}});
  CHECK(t.counter("interrupts.cpu2.msis") == 1);
  CHECK(t.counter("interrupts.cpu3.msis") == 1);
  CHECK(t.counter("interrupts.cpu0.msis") == 0);
  CHECK(t.counter("interrupts.msis") == 3);
}

TEST_CASE("MSIs to absent APIC IDs, in logical mode or with unmodelled delivery modes are dropped and counted",
          "[interrupts][msi]") {
  Fabric t;
  t.f.msi({0xFEE09000, 0x41, 0});   // APIC ID 9: no such core
  t.f.msi({0xFEE01004, 0x41, 0});   // DM = 1: logical destination
  t.f.msi({0xFEE01000, 0x441, 0});  // delivery mode 100: NMI
  t.f.ipi(0, 7, 0xFD);              // IPI to a missing core
  t.f.ipi(0, 1, 0xFD);
  CHECK(t.raised == std::vector<std::pair<std::uint32_t, std::uint8_t>>{{1, 0xFD}});
  CHECK(t.counter("interrupts.bad_destination") == 2);
  CHECK(t.counter("interrupts.unsupported") == 2);
  CHECK(t.counter("interrupts.cpu1.ipis") == 1);
  CHECK(t.counter("interrupts.cpu1.msis") == 0);
}

TEST_CASE("an MSI wakes a halted core, which takes it through its IDT at once", "[interrupts][msi]") {
  vmx::test::VmxHarness h;
  Idt idt;
  constexpr std::uint64_t kSendPs = 50'000'000;  // 50 us
  std::uint64_t halted = 0;
  h.after_vmxon = [&](vmx::cpu::Core& c) {
    c.lidt(&idt);
    c.sti();
    c.hlt();  // nothing else will wake it
    halted = c.stats().halted_cycles.value();
    c.cli();
  };
  h.config.proc2 = 0;
  h.guest = nullptr;
  sc_core::sc_spawn([&] {
    sc_core::wait(sc_core::sc_time::from_value(kSendPs));
    h.platform().interrupts().msi(InterruptFabric::compat_msi(0, 0x51, 0x0100));
  });
  h.run(sc_core::sc_time(1, sc_core::SC_MS));
  REQUIRE(idt.got.size() == 1);
  CHECK(idt.got[0].first == 0x51);
  // 50 us at 3 GHz: 150000 cycles; taken right when it arrives.
  CHECK(idt.got[0].second >= 150'000);
  CHECK(idt.got[0].second <= 150'000 + 1'000);
  CHECK(halted >= 140'000);
  CHECK(h.counter("system.interrupts.cpu0.msis") == 1);
}

TEST_CASE("an MSI to a running core is taken at an operation boundary at most one quantum late", "[interrupts][msi]") {
  vmx::test::VmxHarness h;
  Idt idt;
  constexpr std::uint64_t kSendCycle = 150'000;  // 50 us at 3 GHz
  h.config.proc2 = 0;
  h.after_vmxon = [&](vmx::cpu::Core& c) {
    c.lidt(&idt);
    c.sti();
    while (idt.got.empty() && c.now() < 10 * kSendCycle) c.compute(10);
    c.cli();
  };
  sc_core::sc_spawn([&] {
    sc_core::wait(sc_core::sc_time(50, sc_core::SC_US));
    h.platform().interrupts().msi(InterruptFabric::compat_msi(0, 0x52));
  });
  h.run(sc_core::sc_time(1, sc_core::SC_MS));
  REQUIRE(idt.got.size() == 1);
  CHECK(idt.got[0].first == 0x52);
  INFO("taken at cycle " << idt.got[0].second << ", quantum " << h.quantum_cycles() << " cycles");
  // The core runs up to a quantum ahead of SystemC time: it sees the MSI no
  // later than one quantum after it was sent (docs/model.md, Time).
  CHECK(idt.got[0].second + h.quantum_cycles() >= kSendCycle);
  CHECK(idt.got[0].second <= kSendCycle + h.quantum_cycles());
}
