// Architectural performance monitoring (pmu/pmu.h, docs/pmu.md), driven
// through the core's instructions as software would: CPUID.0AH, RDMSR and
// WRMSR of the counter MSRs, RDPMC, the LVT performance-monitoring entry.
// In the spirit of kvm-unit-tests' x86/pmu.c: exact instruction counts on
// fixed and general-purpose counters, overflow with and without INT, the
// wrapped value, RDPMC and CR4.PCE, #GP for what does not exist.
//
// Most cases run in VMX root operation before any VM (the harness's
// after_vmxon step), where the counters are the hardware's own; the last
// ones run a guest with the VM-entry and VM-exit controls that switch
// IA32_PERF_GLOBAL_CTRL.
#include <catch2/catch.hpp>

#include <cstdint>
#include <utility>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmx.h"
#include "cpu/vmx_harness.h"
#include "mmu/paging.h"
#include "pmu/pmu.h"

namespace {

using vmx::cpu::Core;
using vmx::test::VmxHarness;
namespace pmsr = vmx::pmu::msr;
namespace evtsel = vmx::pmu::evtsel;
namespace fixedctl = vmx::pmu::fixedctl;
namespace event = vmx::pmu::event;
using vmx::pmu::Pmu;

constexpr std::uint8_t kGp = 13;
constexpr std::uint8_t kPmiVector = 0xF0;
constexpr std::uint32_t kLvtPmc = vmx::cpu::msr::kX2ApicLvtPmc;
constexpr std::uint32_t kEoi = vmx::cpu::msr::kX2ApicEoi;
constexpr std::uint64_t kGlobalFixed0 = 1ull << 32, kGlobalFixed1 = 1ull << 33;

/// Records exceptions (the faulting instruction is then skipped) and
/// interrupts (acknowledged with an x2APIC EOI).
struct Idt : vmx::cpu::InterruptHandler {
  std::vector<std::pair<std::uint8_t, std::uint32_t>> exceptions;
  std::vector<std::uint8_t> interrupts;
  void interrupt(Core& c, std::uint8_t vector) override {
    interrupts.push_back(vector);
    c.wrmsr(kEoi, 0);
  }
  void exception(Core&, std::uint8_t vector, std::uint32_t error_code) override {
    exceptions.emplace_back(vector, error_code);
  }
};

std::uint64_t sel(vmx::pmu::event::Code e, std::uint64_t flags, unsigned cmask = 0) {
  return evtsel::make(e.event, e.umask, flags, cmask);
}

/// Runs `body` in root operation (CPL 0, the harness's after_vmxon step)
/// with `idt` installed.
void run_root(Idt& idt, std::function<void(Core&)> body) {
  VmxHarness h;
  h.after_vmxon = [&](Core& c) {
    c.lidt(&idt);
    body(c);
  };
  h.run();
  REQUIRE(h.setup_errors.empty());
  REQUIRE(h.done);
}

}  // namespace

TEST_CASE("CPUID.0AH reports version 2 with four 48-bit counters and three 48-bit fixed counters", "[pmu]") {
  Idt idt;
  vmx::cpu::CpuidResult r;
  run_root(idt, [&](Core& c) { r = c.cpuid(0xA); });
  CHECK((r.eax & 0xFF) == 2);
  CHECK(((r.eax >> 8) & 0xFF) == 4);
  CHECK(((r.eax >> 16) & 0xFF) == 48);
  CHECK(((r.eax >> 24) & 0xFF) == 7);
  // Bits set are events NOT available: only the two branch events.
  CHECK(r.ebx == 0x60);
  CHECK((r.edx & 0x1F) == 3);
  CHECK(((r.edx >> 5) & 0xFF) == 48);
}

TEST_CASE("a loop of known instructions counts exactly that many on the fixed and the general counter", "[pmu]") {
  Idt idt;
  std::uint64_t fixed0 = 0, pmc0 = 0, pmc1 = 0, rdpmc_fixed = 0;
  std::size_t listeners_on = 0, listeners_off = 0, listeners_before = 0;
  run_root(idt, [&](Core& c) {
    listeners_before = c.events().size();
    c.wrmsr(pmsr::kGlobalCtrl, 0);
    c.wrmsr(pmsr::kPmc0, 0);
    c.wrmsr(pmsr::kPmc0 + 1, 0);
    c.wrmsr(pmsr::kFixedCtr0, 0);
    c.wrmsr(pmsr::kPerfEvtSel0, sel(event::kInstructions, evtsel::kOs | evtsel::kUsr | evtsel::kEn));
    // A counter that counts user-mode instructions only.
    c.wrmsr(pmsr::kPerfEvtSel0 + 1, sel(event::kInstructions, evtsel::kUsr | evtsel::kEn));
    c.wrmsr(pmsr::kFixedCtrCtrl, fixedctl::field(0, fixedctl::kOs | fixedctl::kUsr));
    // Enabled by this WRMSR, which retires before it takes effect.
    c.wrmsr(pmsr::kGlobalCtrl, 0x3 | kGlobalFixed0);
    listeners_on = c.events().size();
    for (int i = 0; i < 10; ++i) c.compute(100);  // 1000
    c.set_user_mode(true);
    c.compute(77);                                // 77 at CPL 3
    c.set_user_mode(false);
    c.wrmsr(pmsr::kGlobalCtrl, 0);                // retires (counted) before it disables: +1
    listeners_off = c.events().size();
    fixed0 = c.rdmsr(pmsr::kFixedCtr0);
    pmc0 = c.rdmsr(pmsr::kPmc0);
    pmc1 = c.rdmsr(pmsr::kPmc0 + 1);
    rdpmc_fixed = c.rdpmc(1u << 30);
  });
  CHECK(idt.exceptions.empty());
  CHECK(fixed0 == 1078);
  CHECK(pmc0 == fixed0);
  CHECK(pmc1 == 77);
  CHECK(rdpmc_fixed == fixed0);
  // The PMU listens only while a counter runs.
  CHECK(listeners_on == listeners_before + 1);
  CHECK(listeners_off == listeners_before);
}

TEST_CASE("the core-cycles counter counts the unhalted cycles between enabling and disabling", "[pmu]") {
  Idt idt;
  std::uint64_t fixed1 = 0, pmc0 = 0, start = 0, end = 0;
  run_root(idt, [&](Core& c) {
    c.wrmsr(pmsr::kGlobalCtrl, 0);  // its reset value enables the general-purpose counters
    c.wrmsr(pmsr::kFixedCtrCtrl, fixedctl::field(1, fixedctl::kOs));
    c.wrmsr(pmsr::kPerfEvtSel0, sel(event::kCoreCycles, evtsel::kOs | evtsel::kEn));
    c.wrmsr(pmsr::kGlobalCtrl, 0x1 | kGlobalFixed1);
    start = c.unhalted_cycles();
    c.compute(5000);
    c.load(0x700000);
    c.wrmsr(pmsr::kGlobalCtrl, 0);
    end = c.unhalted_cycles();
    fixed1 = c.rdmsr(pmsr::kFixedCtr0 + 1);
    pmc0 = c.rdmsr(pmsr::kPmc0);
  });
  CHECK(fixed1 == end - start);
  CHECK(pmc0 == fixed1);
  CHECK(fixed1 > 5000);
}

namespace {
// SystemC elaborates one design per process: one run per test case.
void overflow_case(bool with_int) {
  Idt idt;
  std::uint64_t status = 0, value = 0, lvt_after = 0, status_cleared = 0;
  std::size_t pmis_before_sti = 0;
  run_root(idt, [&](Core& c) {
    c.wrmsr(kLvtPmc, kPmiVector);  // unmasked, fixed delivery
    c.wrmsr(pmsr::kGlobalCtrl, 0);
    // Bits 31:0 written, sign-extended to 48 bits: 2^48 - 100.
    c.wrmsr(pmsr::kPmc0, 0xFFFFFF9Cull);
    CHECK(c.rdmsr(pmsr::kPmc0) == (1ull << 48) - 100);
    c.wrmsr(pmsr::kPerfEvtSel0,
            sel(event::kInstructions, evtsel::kOs | evtsel::kEn | (with_int ? evtsel::kInt : 0)));
    c.wrmsr(pmsr::kGlobalCtrl, 0x1);
    c.compute(150);                  // 100 to overflow, 50 past it
    c.wrmsr(pmsr::kGlobalCtrl, 0);   // +1
    pmis_before_sti = idt.interrupts.size();
    c.sti();
    c.compute(1);                    // the PMI (if any) is taken here
    c.cli();
    status = c.rdmsr(pmsr::kGlobalStatus);
    value = c.rdmsr(pmsr::kPmc0);
    lvt_after = c.rdmsr(kLvtPmc);
    c.wrmsr(pmsr::kGlobalOvfCtrl, 0x1);
    status_cleared = c.rdmsr(pmsr::kGlobalStatus);
  });
  CHECK(idt.exceptions.empty());
  CHECK(pmis_before_sti == 0);  // interrupts were off
  CHECK(status == 0x1);
  CHECK(value == 51);
  CHECK(status_cleared == 0);
  if (with_int) {
    REQUIRE(idt.interrupts.size() == 1);
    CHECK(idt.interrupts[0] == kPmiVector);
    CHECK((lvt_after & (1u << 16)) != 0);  // masked by the delivery
  } else {
    CHECK(idt.interrupts.empty());
    CHECK(lvt_after == kPmiVector);
  }
}
}  // namespace

TEST_CASE("a counter preset to overflow sets its GLOBAL_STATUS bit and wraps with no PMI without INT",
          "[pmu][overflow]") {
  overflow_case(false);
}

TEST_CASE("a counter preset to overflow with INT raises one PMI and the delivery masks the LVT entry",
          "[pmu][overflow]") {
  overflow_case(true);
}

TEST_CASE("a fixed cycle counter preset near overflow raises its PMI once and the masked LVT holds the next",
          "[pmu][overflow]") {
  Idt idt;
  std::uint64_t status = 0;
  std::size_t pmis_after_first = 0;
  run_root(idt, [&](Core& c) {
    c.wrmsr(kLvtPmc, kPmiVector);
    c.wrmsr(pmsr::kFixedCtr0 + 1, (1ull << 48) - 3000);
    c.wrmsr(pmsr::kFixedCtrCtrl, fixedctl::field(1, fixedctl::kOs | fixedctl::kPmi));
    c.sti();
    c.wrmsr(pmsr::kGlobalCtrl, kGlobalFixed1);
    for (int i = 0; i < 100 && idt.interrupts.empty(); ++i) c.compute(100);
    pmis_after_first = idt.interrupts.size();
    // Overflow again: the LVT entry is still masked, so no second PMI.
    c.wrmsr(pmsr::kFixedCtr0 + 1, (1ull << 48) - 1000);
    for (int i = 0; i < 30; ++i) c.compute(100);
    c.cli();
    status = c.rdmsr(pmsr::kGlobalStatus);
  });
  CHECK(pmis_after_first == 1);
  CHECK(idt.interrupts.size() == 1);
  CHECK(status == kGlobalFixed1);
}

TEST_CASE("RDPMC at CPL 3 faults without CR4.PCE and reads with it and a counter that does not exist is #GP",
          "[pmu][rdpmc]") {
  Idt idt;
  std::uint64_t with_pce = ~0ull;
  run_root(idt, [&](Core& c) {
    c.wrmsr(pmsr::kPmc0 + 2, 1234);
    c.set_user_mode(true);
    c.rdpmc(2);  // #GP: CR4.PCE clear
    c.set_user_mode(false);
    c.write_cr(4, c.read_cr(4) | vmx::mmu::crbits::kCr4Pce);
    c.set_user_mode(true);
    with_pce = c.rdpmc(2);
    c.set_user_mode(false);
    c.rdpmc(4);                // no PMC4
    c.rdpmc((1u << 30) | 3);   // no FIXED_CTR3
  });
  CHECK(with_pce == 1234);
  REQUIRE(idt.exceptions.size() == 3);
  for (const auto& e : idt.exceptions) CHECK(e.first == kGp);
}

TEST_CASE("unsupported counter MSRs and reserved bits and read-only MSRs are #GP", "[pmu][gp]") {
  Idt idt;
  std::uint64_t evtsel_after = 0;
  run_root(idt, [&](Core& c) {
    c.rdmsr(pmsr::kPmc0 + 4);                          // 1: IA32_PMC4 beyond CPUID.0AH
    c.wrmsr(pmsr::kPerfEvtSel0 + 5, 0);                // 2: IA32_PERFEVTSEL5
    c.rdmsr(pmsr::kFixedCtr0 + 3);                     // 3: IA32_FIXED_CTR3
    c.wrmsr(pmsr::kPerfEvtSel0, 1ull << 32);           // 4: reserved bits 63:32
    c.wrmsr(pmsr::kPerfEvtSel0, 1ull << 21);           // 5: AnyThread, a version 3 bit
    c.wrmsr(pmsr::kGlobalCtrl, 1ull << 4);             // 6: no PMC4 to enable
    c.wrmsr(pmsr::kGlobalStatus, 0);                   // 7: read-only
    c.wrmsr(pmsr::kFixedCtrCtrl, 1ull << 12);          // 8: no fixed counter 3
    c.wrmsr(pmsr::kFixedCtr0, 1ull << 48);             // 9: beyond the counter's width
    evtsel_after = c.rdmsr(pmsr::kPerfEvtSel0);
  });
  CHECK(idt.exceptions.size() == 9);
  for (const auto& e : idt.exceptions) CHECK(e.first == kGp);
  CHECK(evtsel_after == 0);  // faulting writes changed nothing
}

TEST_CASE("load-miss and LLC-miss counters count the cold lines a loop loads", "[pmu][cache]") {
  Idt idt;
  std::uint64_t l1_miss = 0, llc_miss = 0, l1_hit = 0, llc_ref = 0;
  run_root(idt, [&](Core& c) {
    c.wrmsr(pmsr::kPerfEvtSel0, sel(event::kLoadL1Miss, evtsel::kOs | evtsel::kEn));
    c.wrmsr(pmsr::kPerfEvtSel0 + 1, sel(event::kLlcMisses, evtsel::kOs | evtsel::kEn));
    c.wrmsr(pmsr::kPerfEvtSel0 + 2, sel(event::kLoadL1Hit, evtsel::kOs | evtsel::kEn));
    c.wrmsr(pmsr::kPerfEvtSel0 + 3, sel(event::kLlcReference, evtsel::kOs | evtsel::kEn));
    c.wrmsr(pmsr::kGlobalCtrl, 0xF);
    for (std::uint64_t i = 0; i < 64; ++i) c.load(0x800000 + i * 64);  // 64 cold lines
    for (std::uint64_t i = 0; i < 64; ++i) c.load(0x800000 + i * 64);  // now L1 hits
    c.wrmsr(pmsr::kGlobalCtrl, 0);
    l1_miss = c.rdmsr(pmsr::kPmc0);
    llc_miss = c.rdmsr(pmsr::kPmc0 + 1);
    l1_hit = c.rdmsr(pmsr::kPmc0 + 2);
    llc_ref = c.rdmsr(pmsr::kPmc0 + 3);
  });
  CHECK(l1_miss == 64);
  CHECK(llc_miss == 64);
  CHECK(llc_ref == 64);
  CHECK(l1_hit == 64);
}

TEST_CASE("the VM-entry and VM-exit controls switch IA32_PERF_GLOBAL_CTRL: the counter sees the guest only",
          "[pmu][vmx]") {
  VmxHarness h;
  h.config.proc = vmx::cpu::proc::kUseMsrBitmaps;  // an all-zero bitmap: MSRs pass through
  std::uint64_t fixed0 = 0, guest_before = 0, guest_after = 0, saved = 0;
  h.setup = [&](Core& c) {
    using namespace vmx::cpu;
    c.wrmsr(pmsr::kGlobalCtrl, 0);
    c.wrmsr(pmsr::kFixedCtrCtrl, fixedctl::field(0, fixedctl::kOs | fixedctl::kUsr));
    h.vmw(c, field::kEntryControls, entryctl::kIa32eModeGuest | entryctl::kLoadPerfGlobalCtrl);
    h.vmw(c, field::kExitControls,
          exitctl::kHostAddressSpaceSize | exitctl::kLoadPerfGlobalCtrl | exitctl::kSavePerfGlobalCtrl);
    h.vmw(c, field::kGuestPerfGlobalCtrl, kGlobalFixed0);
    h.vmw(c, field::kHostPerfGlobalCtrl, 0);
    guest_before = h.counter("system.cpu0.guest_instructions");
  };
  h.guest = [&](Core& c) {
    c.compute(1000);
    c.cpuid(0);  // an exit: root work in between is not counted
    c.compute(500);
  };
  h.after = [&](Core& c) {
    guest_after = h.counter("system.cpu0.guest_instructions");
    c.compute(10000);
    fixed0 = c.rdmsr(pmsr::kFixedCtr0);
    saved = h.vmr(c, vmx::cpu::field::kGuestPerfGlobalCtrl);
  };
  h.run();
  REQUIRE(h.setup_errors.empty());
  REQUIRE(h.done);
  CHECK(fixed0 == guest_after - guest_before);
  CHECK(fixed0 == 1502);  // 1000 + CPUID + 500 + the final VMCALL
  CHECK(saved == kGlobalFixed0);
}

TEST_CASE("without the switching controls a counter enabled in root also counts the guest and the exits",
          "[pmu][vmx]") {
  VmxHarness h;
  h.config.proc = vmx::cpu::proc::kUseMsrBitmaps;
  std::uint64_t fixed0 = 0;
  h.setup = [&](Core& c) {
    c.wrmsr(pmsr::kFixedCtrCtrl, fixedctl::field(0, fixedctl::kOs | fixedctl::kUsr));
    c.wrmsr(pmsr::kGlobalCtrl, kGlobalFixed0);
  };
  h.guest = [&](Core& c) {
    c.compute(1000);
    c.cpuid(0);
    c.compute(500);
  };
  h.after = [&](Core& c) {
    c.wrmsr(pmsr::kGlobalCtrl, 0);
    fixed0 = c.rdmsr(pmsr::kFixedCtr0);
  };
  h.run();
  REQUIRE(h.done);
  CHECK(fixed0 > 1502);  // plus the monitor's VMREADs, VMRESUMEs, ...
}

TEST_CASE("an RDPMC that exits keeps its result when an injected interrupt's handler exits before it completes",
          "[pmu][rdpmc][vmx]") {
  // RDPMC exiting: the monitor emulates the read (EDX:EAX) and injects an
  // external interrupt; its guest handler makes an exiting WRMSR, which
  // loads RCX, RAX and RDX, before the RDPMC completes. The handler's
  // register save and restore keep the RDPMC's result.
  VmxHarness h;
  h.config.proc = vmx::cpu::proc::kRdpmcExiting;
  Idt gidt;
  std::uint64_t value = 0;
  h.guest = [&](Core& c) {
    c.lidt(&gidt);
    c.sti();
    value = c.rdpmc(1);
  };
  h.on_exit = [&](Core& c, const vmx::test::Exit& e) {
    using namespace vmx::cpu;
    if (e.reason == static_cast<unsigned>(ExitReason::Rdpmc)) {
      c.regs()[Regs::rax] = 0x1234;
      c.regs()[Regs::rdx] = 0x5;
      h.vmw(c, field::kEntryIntrInfo, intr::info(0x30, intr::kTypeExternal));
    }
  };
  h.run();
  REQUIRE(h.setup_errors.empty());
  REQUIRE(h.done);
  REQUIRE(gidt.interrupts.size() == 1);
  CHECK(value == 0x500001234ull);
}
