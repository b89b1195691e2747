// Posted interrupts and virtual-interrupt delivery in the real Core (SDM Vol.
// 3C, 30.1.3 EOI virtualization, 30.2 virtual-interrupt delivery, 30.5
// x2APIC virtualization, 30.6 posted-interrupt processing; entry checks
// 27.2.1.1). The descriptor and the virtual-APIC page live in memory; the
// tests read them back from physical memory.
#define SC_INCLUDE_DYNAMIC_PROCESSES
#include <systemc>

#include <catch2/catch.hpp>

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmx.h"
#include "cpu/vmx_harness.h"
#include "iommu/interrupt_remap.h"
#include "models/phys_mem.h"

namespace {

using vmx::cpu::Core;
using vmx::test::Exit;
using vmx::test::VmxHarness;
namespace field = vmx::cpu::field;
namespace pin = vmx::cpu::pin;
namespace proc = vmx::cpu::proc;
namespace proc2 = vmx::cpu::proc2;
namespace exitctl = vmx::cpu::exitctl;
namespace msr = vmx::cpu::msr;
namespace vapic = vmx::cpu::vapic;
namespace pid = vmx::iommu::pid;

constexpr unsigned kExternalInterrupt = 1, kVmcall = 18, kWrmsr = 32, kVirtualizedEoi = 45;
constexpr std::uint64_t kPingCall = 0x50494E47;
constexpr std::uint64_t kVapic = 0x130000;
constexpr std::uint64_t kDesc = 0x131000;
constexpr std::uint8_t kNv = 0xF2;  // Linux's POSTED_INTR_VECTOR

struct Idt : vmx::cpu::InterruptHandler {
  std::vector<std::uint8_t> got;
  std::vector<int>* order = nullptr;
  bool eoi = true;
  void interrupt(Core& c, std::uint8_t v) override {
    got.push_back(v);
    if (order) order->push_back(-static_cast<int>(v));
    if (eoi) c.wrmsr(msr::kX2ApicEoi, 0);
  }
  void exception(Core&, std::uint8_t, std::uint32_t) override { std::abort(); }
};

/// The controls of a vCPU with posted interrupts (as KVM sets them).
void posted_config(VmxHarness& h, bool posted = true) {
  h.config.pin = pin::kExternalInterruptExiting | (posted ? pin::kPostedInterrupts : 0);
  h.config.proc = proc::kUseMsrBitmaps | (posted ? proc::kUseTprShadow : 0);
  h.config.proc2 = proc2::kEnableEpt | (posted ? proc2::kVirtualizeX2apic | proc2::kVirtualInterruptDelivery : 0);
  h.setup = [&h, posted](Core& c) {
    h.vmw(c, field::kExitControls, exitctl::kHostAddressSpaceSize | exitctl::kAckInterruptOnExit);
    if (!posted) return;
    h.vmw(c, field::kPostedIntrNv, kNv);
    h.vmw(c, field::kPostedIntrDesc, kDesc);
    h.vmw(c, field::kVirtualApicPage, kVapic);
    h.vmw(c, field::kGuestIntrStatus, 0);
    c.store(kDesc + pid::kControlOffset, pid::control(kNv, 0));
  };
}

/// What a poster (the hypervisor on another core, or VT-d) does: PIR bit
/// and ON in the descriptor, then the notification vector to the core.
void post_from_outside(VmxHarness& h, std::uint8_t vector, std::uint64_t at_ps) {
  sc_core::sc_spawn([&h, vector, at_ps] {
    sc_core::wait(sc_core::sc_time::from_value(at_ps));
    auto& mem = h.platform().memory();
    std::uint64_t w = kDesc + 8 * (vector / 64);
    mem.write(w, mem.read(w, 8) | (1ull << (vector % 64)), 8);
    mem.write(kDesc + 32, mem.read(kDesc + 32, 8) | pid::kOn, 8);
    h.platform().interrupts().ipi(0, 0, kNv);
  });
}

std::uint32_t vapic_reg(VmxHarness& h, std::uint64_t base, unsigned vector) {
  return static_cast<std::uint32_t>(h.platform().memory().read(vapic::reg(kVapic + base, vector), 4));
}

void require_clean(const VmxHarness& h) {
  REQUIRE(h.setup_errors.empty());
  REQUIRE_FALSE(h.runaway);
  REQUIRE_FALSE(h.entry_failed);
  REQUIRE(h.done);
}

}  // namespace

TEST_CASE("a posted interrupt reaches a running guest through its IDT without a VM exit", "[vmx][posted]") {
  VmxHarness h;
  posted_config(h);
  Idt idt;
  std::uint64_t spins = 0;
  h.guest = [&](Core& c) {
    c.lidt(&idt);
    c.sti();
    while (idt.got.empty() && spins < 100000) {
      c.compute(100);
      ++spins;
    }
  };
  post_from_outside(h, 0x61, 20'000'000);  // 20 us
  std::uint64_t gis = ~0ull;
  h.after = [&](Core& c) { gis = h.vmr(c, field::kGuestIntrStatus); };
  h.run();
  require_clean(h);
  CHECK(h.reasons() == std::vector<unsigned>{kVmcall});  // no exit: neither the interrupt nor the EOI
  REQUIRE(idt.got == std::vector<std::uint8_t>{0x61});
  CHECK(spins < 100000);
  CHECK(h.counter("system.cpu0.posted_notifications") == 1);
  CHECK(h.counter("system.cpu0.virtual_interrupts") == 1);
  CHECK(h.counter("system.cpu0.virtual_eois") == 1);
  // The descriptor is drained (PIR clear, ON clear), VIRR and VISR are
  // empty after the virtual EOI, and RVI = SVI = 0.
  auto& mem = h.platform().memory();
  CHECK(mem.read(kDesc + 8, 8) == 0);
  CHECK((mem.read(kDesc + 32, 8) & pid::kOn) == 0);
  CHECK((mem.read(kDesc + 32, 8) >> pid::kNvShift & 0xFF) == kNv);  // NV untouched
  CHECK(vapic_reg(h, vapic::kIrr, 0x61) == 0);
  CHECK(vapic_reg(h, vapic::kIsr, 0x61) == 0);
  CHECK(gis == 0);
  CHECK(h.counter_or_zero("system.cpu0.exit_reasons.EXTERNAL_INTERRUPT") == 0);
}

TEST_CASE("without posted-interrupt processing the same notification is an external-interrupt exit",
          "[vmx][posted]") {
  VmxHarness h;
  posted_config(h, false);
  Idt idt;
  h.guest = [&](Core& c) {
    c.lidt(&idt);
    c.sti();
    for (int i = 0; i < 2000; ++i) c.compute(100);
  };
  post_from_outside(h, 0x61, 20'000'000);
  h.run();
  require_clean(h);
  REQUIRE(h.reasons() == std::vector<unsigned>{kExternalInterrupt, kVmcall});
  // Acknowledged on exit: the vector is in the exit-interruption information.
  CHECK(h.exits[0].intr_info == vmx::cpu::intr::info(kNv, vmx::cpu::intr::kTypeExternal));
  CHECK(idt.got.empty());
  CHECK(h.counter("system.cpu0.posted_notifications") == 0);
}

TEST_CASE("a notification sent while the vCPU is in the hypervisor is processed right after the next VM entry",
          "[vmx][posted]") {
  VmxHarness h;
  posted_config(h);
  Idt idt;
  std::vector<int> order;
  idt.order = &order;
  h.guest = [&](Core& c) {
    c.lidt(&idt);
    c.sti();
    order.push_back(1);
    c.vmcall(kPingCall);  // the root posts while the guest is out
    order.push_back(2);   // the posted interrupt runs before this
  };
  h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason != kVmcall) return;
    // Post vector 0x45 the way the hypervisor does (locked OR into PIR and
    // ON), then the notification to this very core with interrupts off in
    // VMX root operation: it stays requested at the local APIC.
    c.lock_or(kDesc + 8 * (0x45 / 64), 1ull << (0x45 % 64));
    c.lock_or(kDesc + pid::kControlOffset, pid::kOn);
    c.wrmsr(msr::kX2ApicIcr, (0ull << 32) | kNv);
  };
  h.run();
  require_clean(h);
  CHECK(h.reasons() == std::vector<unsigned>{kVmcall, kVmcall});
  CHECK(order == std::vector<int>{1, -0x45, 2});
  CHECK(h.counter("system.cpu0.posted_notifications") == 1);
  CHECK(h.counter("system.cpu0.virtual_interrupts") == 1);
}

TEST_CASE("a virtual interrupt pending in RVI at VM entry is delivered before the guest runs on", "[vmx][posted]") {
  VmxHarness h;
  posted_config(h);
  auto base_setup = h.setup;
  Idt idt;
  std::vector<int> order;
  idt.order = &order;
  h.config.guest_rflags = 0x202;  // IF = 1 at entry
  h.setup = [&](Core& c) {
    base_setup(c);
    // VIRR bit 0x66 and RVI = 0x66 in the guest interrupt status: evaluated
    // at VM entry (30.2.1) and delivered through the guest IDT.
    c.store(vapic::reg(kVapic + vapic::kIrr, 0x66), 1u << (0x66 % 32), 4);
    h.vmw(c, field::kGuestIntrStatus, 0x66);
    h.vmw(c, field::kGuestIdtrBase, vmx::cpu::code_address(static_cast<vmx::cpu::InterruptHandler*>(&idt)));
  };
  h.guest = [&](Core& c) {
    c.compute(1);  // the guest's first instruction: the interrupt comes before it
    order.push_back(1);
  };
  h.run();
  require_clean(h);
  CHECK(h.reasons() == std::vector<unsigned>{kVmcall});
  CHECK(order == std::vector<int>{-0x66, 1});
  CHECK(h.counter("system.cpu0.posted_notifications") == 0);
  CHECK(h.counter("system.cpu0.virtual_interrupts") == 1);
}

TEST_CASE("with RFLAGS.IF = 0 a posted interrupt waits in VIRR and RVI until STI", "[vmx][posted]") {
  VmxHarness h;
  posted_config(h);
  Idt idt;
  std::vector<int> order;
  idt.order = &order;
  std::uint32_t virr_before_sti = 0;
  h.guest = [&](Core& c) {
    c.lidt(&idt);  // interrupts off (RFLAGS 0x2)
    for (int i = 0; i < 2000; ++i) c.compute(100);  // the notification arrives in here
    virr_before_sti = vapic_reg(h, vapic::kIrr, 0x77);
    order.push_back(1);
    c.sti();
    c.compute(1);  // the instruction after STI
    c.compute(1);
    order.push_back(2);
  };
  post_from_outside(h, 0x77, 20'000'000);
  h.run();
  require_clean(h);
  CHECK(h.reasons() == std::vector<unsigned>{kVmcall});
  CHECK(virr_before_sti == 1u << (0x77 % 32));
  CHECK(order == std::vector<int>{1, -0x77, 2});
}

TEST_CASE("a virtual EOI for a vector in the EOI-exit bitmap is an EOI-induced VM exit", "[vmx][posted][eoi]") {
  VmxHarness h;
  posted_config(h);
  auto base_setup = h.setup;
  h.setup = [&](Core& c) {
    base_setup(c);
    h.vmw(c, field::kEoiExitBitmap0 + 2 * (0x61 / 64), 1ull << (0x61 % 64));
  };
  Idt idt;
  h.guest = [&](Core& c) {
    c.lidt(&idt);
    c.sti();
    while (idt.got.empty()) c.compute(100);
  };
  post_from_outside(h, 0x61, 20'000'000);
  h.run();
  require_clean(h);
  REQUIRE(h.reasons() == std::vector<unsigned>{kVirtualizedEoi, kVmcall});
  CHECK(h.exits[0].qualification == 0x61);
  CHECK(vapic_reg(h, vapic::kIsr, 0x61) == 0);  // the EOI was virtualized before the exit
}

TEST_CASE("with the MSR-bitmap bit of the EOI set the guest's EOI exits as WRMSR", "[vmx][posted][eoi]") {
  VmxHarness h;
  posted_config(h);
  auto base_setup = h.setup;
  h.setup = [&](Core& c) {
    base_setup(c);
    VmxHarness::set_bitmap_bit(c, VmxHarness::kMsrBitmap, VmxHarness::msr_write_bit(msr::kX2ApicEoi));
  };
  Idt idt;
  h.guest = [&](Core& c) {
    c.lidt(&idt);
    c.sti();
    while (idt.got.empty()) c.compute(100);
  };
  post_from_outside(h, 0x61, 20'000'000);
  h.run();
  require_clean(h);
  REQUIRE(h.reasons() == std::vector<unsigned>{kWrmsr, kVmcall});
  CHECK(h.exits[0].regs[vmx::cpu::Regs::rcx] == msr::kX2ApicEoi);
  CHECK(h.counter("system.cpu0.virtual_eois") == 0);
  CHECK(vapic_reg(h, vapic::kIsr, 0x61) == 1u << (0x61 % 32));  // still in service
}

namespace {
std::pair<bool, std::uint64_t> entry_with(std::function<void(VmxHarness&, Core&)> tweak) {
  static VmxHarness h;  // one machine per process
  posted_config(h);
  auto base_setup = h.setup;
  h.setup = [base_setup, tweak](Core& c) {
    base_setup(c);
    tweak(h, c);
  };
  h.run();
  return {h.entry_failed, h.entry_error};
}
}  // namespace

TEST_CASE("VM entry fails (error 7) with a posted-interrupt descriptor not 64-byte aligned", "[vmx][posted][vmfail]") {
  auto r = entry_with([](VmxHarness& h, Core& c) { h.vmw(c, field::kPostedIntrDesc, kDesc + 8); });
  CHECK(r.first);
  CHECK(r.second == 7);
}

TEST_CASE("VM entry fails (error 7) with posted interrupts but no acknowledge-interrupt-on-exit",
          "[vmx][posted][vmfail]") {
  auto r = entry_with([](VmxHarness& h, Core& c) { h.vmw(c, field::kExitControls, exitctl::kHostAddressSpaceSize); });
  CHECK(r.first);
  CHECK(r.second == 7);
}

TEST_CASE("VM entry fails (error 7) with virtual-interrupt delivery but no external-interrupt exiting",
          "[vmx][posted][vmfail]") {
  auto r = entry_with([](VmxHarness& h, Core& c) { h.vmw(c, field::kPinBasedControls, 0); });
  CHECK(r.first);
  CHECK(r.second == 7);
}

TEST_CASE("VM entry fails (error 7) with virtual-interrupt delivery but no TPR shadow", "[vmx][posted][vmfail]") {
  auto r = entry_with([](VmxHarness& h, Core& c) {
    h.vmw(c, field::kProcBasedControls, proc::kUseMsrBitmaps | proc::kActivateSecondaryControls);
  });
  CHECK(r.first);
  CHECK(r.second == 7);
}
