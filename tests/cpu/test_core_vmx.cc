// VMX non-root operation of the real Core, driven by small root-mode and
// guest software (tests/cpu/vmx_harness.h) and checked against the Intel SDM
// Vol. 3C: VM-execution controls (25.6) and the instructions they make exit
// (26.1), exit information (28.2), VMX instruction errors (31.4), EPT (29.3)
// and VPID (28.3.3.3). Each TEST_CASE builds one machine in its own process.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <vector>

#include "abi/steal_time.h"
#include "cpu/core.h"
#include "cpu/vmx.h"
#include "cpu/vmx_harness.h"
#include "mmu/paging.h"

namespace {

using vmx::cpu::Core;
using vmx::cpu::CpuidResult;
using vmx::cpu::Regs;
using vmx::cpu::VmxStatus;
using vmx::test::Exit;
using vmx::test::VmxHarness;
namespace field = vmx::cpu::field;
namespace proc = vmx::cpu::proc;
namespace proc2 = vmx::cpu::proc2;
namespace qual = vmx::cpu::qual;
namespace intr = vmx::cpu::intr;
namespace vmerr = vmx::cpu::vmerr;
namespace msr = vmx::cpu::msr;
namespace crb = vmx::mmu::crbits;
namespace ept = vmx::mmu::ept;
namespace pte = vmx::mmu::pte;

// Basic exit reasons (SDM Vol. 3C, Appendix C), spelled as numbers on purpose.
constexpr unsigned kExceptionOrNmi = 0, kCpuid = 10, kHlt = 12, kVmcall = 18, kCrAccess = 28, kIo = 30,
                   kRdmsr = 31, kWrmsr = 32, kEntryFailGuestState = 33, kEptViolation = 48;

constexpr std::uint64_t kPingCall = 0x50494E47;  // "PING": an exit the root just resumes

// A guest IDT that records what it receives.
struct RecordingIdt : vmx::cpu::InterruptHandler {
  std::vector<std::uint8_t> interrupts;
  std::vector<std::pair<std::uint8_t, std::uint32_t>> exceptions;
  std::vector<int>* order = nullptr;  // appends -vector for an interrupt
  bool eoi = false;                   // acknowledge at the local APIC
  void interrupt(Core& c, std::uint8_t vector) override {
    interrupts.push_back(vector);
    if (order) order->push_back(-static_cast<int>(vector));
    if (eoi) c.wrmsr(msr::kX2ApicEoi, 0);
  }
  void exception(Core&, std::uint8_t vector, std::uint32_t error_code) override {
    exceptions.emplace_back(vector, error_code);
    std::abort();  // no test here expects an exception in the guest
  }
};

void require_clean(const VmxHarness& h) {
  INFO("setup errors: " << h.setup_errors.size());
  REQUIRE(h.setup_errors.empty());
  REQUIRE_FALSE(h.runaway);
  REQUIRE_FALSE(h.entry_failed);
  REQUIRE(h.done);
}

}  // namespace

// ---------------------------------------------------------------------------
// CPUID (SDM Vol. 3C, 26.1.2: exits unconditionally).

TEST_CASE("CPUID always exits and returns what the root put in the registers", "[vmx][cpuid]") {
  VmxHarness h;
  h.config.proc = 0;
  h.config.proc2 = 0;  // no EPT, no secondary controls: nothing but CPUID's own rule
  CpuidResult virt{}, native_in_guest{}, native_in_root{};
  h.guest = [&](Core& c) {
    virt = c.cpuid(0x40000000u, 7);
    native_in_guest = c.cpuid(1);
  };
  h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason != kCpuid) return;
    if (e.regs[Regs::rax] == 0x40000000u) {
      c.regs()[Regs::rax] = 0x11111111;
      c.regs()[Regs::rbx] = 0x22222222;
      c.regs()[Regs::rcx] = 0x33333333;
      c.regs()[Regs::rdx] = 0x44444444;
    } else {
      // Pass the host's answer through (CPUID in root operation does not exit).
      native_in_root = c.cpuid(static_cast<std::uint32_t>(e.regs[Regs::rax]));
      c.regs()[Regs::rax] = native_in_root.eax;
      c.regs()[Regs::rbx] = native_in_root.ebx;
      c.regs()[Regs::rcx] = native_in_root.ecx;
      c.regs()[Regs::rdx] = native_in_root.edx;
    }
  };
  h.run();
  require_clean(h);

  REQUIRE(h.reasons() == std::vector<unsigned>{kCpuid, kCpuid, kVmcall});
  // The leaf and subleaf are in EAX and ECX at the exit.
  CHECK(h.exits[0].regs[Regs::rax] == 0x40000000u);
  CHECK(h.exits[0].regs[Regs::rcx] == 7);
  CHECK(h.exits[0].qualification == 0);
  CHECK(h.exits[1].regs[Regs::rax] == 1);
  CHECK(virt.eax == 0x11111111u);
  CHECK(virt.ebx == 0x22222222u);
  CHECK(virt.ecx == 0x33333333u);
  CHECK(virt.edx == 0x44444444u);
  CHECK(native_in_guest.eax == native_in_root.eax);
  CHECK(native_in_guest.ecx == native_in_root.ecx);
  CHECK((native_in_guest.ecx & (1u << 5)) != 0);  // the root passed VMX through unchanged
  CHECK(h.counter("system.cpu0.exit_reasons.CPUID") == 2);
  CHECK(h.counter("system.cpu0.vm_exits") == 3);
  CHECK(h.counter("system.cpu0.vm_entries") == 3);
}

// ---------------------------------------------------------------------------
// HLT (SDM Vol. 3C, 25.6.2: exits only with "HLT exiting").

TEST_CASE("CPUID leaves 15H and 16H give the TSC frequency exactly", "[vmx][cpuid]") {
  // What a kernel calibrates its TSC from (Linux's native_calibrate_tsc):
  // crystal Hz x EBX / EAX is the core's configured frequency.
  auto p = VmxHarness::small_platform();
  p.frequency = 2'900'000'000ull;
  VmxHarness h(p);
  CpuidResult l0{}, l15{}, l16{};
  h.after_vmxon = [&](Core& c) {
    l0 = c.cpuid(0);
    l15 = c.cpuid(0x15);
    l16 = c.cpuid(0x16);
  };
  h.run();
  require_clean(h);
  CHECK(l0.eax >= 0x16);
  REQUIRE(l15.eax != 0);
  CHECK(std::uint64_t{l15.ecx} == 25'000'000);
  CHECK(std::uint64_t{l15.ecx} * l15.ebx / l15.eax == 2'900'000'000ull);
  CHECK(std::uint64_t{l15.ecx} * l15.ebx % l15.eax == 0);
  CHECK(l16.eax == 2900);
  CHECK(l16.ecx == 100);
}

TEST_CASE("HLT exits with HLT exiting set and the core never halts", "[vmx][hlt]") {
  VmxHarness h;
  h.config.proc = proc::kHltExiting;
  h.guest = [](Core& c) {
    c.hlt();
    c.compute(10);
  };
  h.run();
  require_clean(h);
  REQUIRE(h.reasons() == std::vector<unsigned>{kHlt, kVmcall});
  CHECK(h.exits[0].qualification == 0);
  CHECK(h.counter("system.cpu0.halted_cycles") == 0);
}

TEST_CASE("without HLT exiting the guest halts until its TSC-deadline timer", "[vmx][hlt][msr]") {
  VmxHarness h;
  // MSR bitmaps on and all clear: IA32_TSC_DEADLINE (0x6E0) and the x2APIC
  // EOI do not exit (SDM Vol. 3C, 25.6.9).
  h.config.proc = proc::kUseMsrBitmaps;
  constexpr std::uint64_t kWait = 200'000;  // cycles, several quanta at 3 GHz / 10 us
  RecordingIdt idt;
  idt.eoi = true;
  std::uint64_t t0 = 0, deadline = 0, t1 = 0, halted_before = 0, halted_after = 0;
  h.guest = [&](Core& c) {
    c.lidt(&idt);
    c.sti();
    t0 = c.rdtsc();
    deadline = t0 + kWait;
    c.wrmsr(msr::kIa32TscDeadline, deadline);
    halted_before = c.stats().halted_cycles.value();
    c.hlt();
    halted_after = c.stats().halted_cycles.value();
    t1 = c.rdtsc();
  };
  h.run();
  require_clean(h);

  // No exit on the way: neither the WRMSRs nor HLT nor the timer interrupt.
  CHECK(h.reasons() == std::vector<unsigned>{kVmcall});
  REQUIRE(idt.interrupts == std::vector<std::uint8_t>{vmx::models::Lapic::kDefaultTimerVector});
  // The halt covers the wait from HLT to the deadline (HLT came a few
  // operations after t0).
  std::uint64_t halted = halted_after - halted_before;
  CHECK(halted <= kWait);
  CHECK(halted + 1'000 >= kWait);
  // Time after the halt is past the deadline, by less than one quantum.
  CHECK(t1 >= deadline);
  CHECK(t1 - deadline <= h.quantum_cycles());
  CHECK(h.counter("system.cpu0.exit_reasons.VMCALL") == 1);
}

// ---------------------------------------------------------------------------
// I/O instructions (SDM Vol. 3C, 25.6.4, 26.1.3; qualification Table 28-5).

TEST_CASE("unconditional I/O exiting exits on every port with the SDM qualification", "[vmx][io]") {
  VmxHarness h;
  h.config.proc = proc::kUnconditionalIoExiting;
  std::uint32_t in16 = 0, in_debugcon = 0;
  h.guest = [&](Core& c) {
    c.out(0x80, 0x55, 1);
    in16 = c.in(0x3F8, 2);
    in_debugcon = c.in(0xE9, 1);  // a port with a device: still exits
    c.out(0xCFC, 0x80000000u, 4);
  };
  h.on_exit = [](Core& c, const Exit& e) {
    if (e.reason == kIo && (e.qualification & 8)) c.regs()[Regs::rax] = 0xBEEF1234;  // IN: emulated value
  };
  h.run();
  require_clean(h);

  REQUIRE(h.reasons() == std::vector<unsigned>{kIo, kIo, kIo, kIo, kVmcall});
  // Bits 2:0 size - 1, bit 3 direction (1 = IN), bits 31:16 port.
  CHECK(h.exits[0].qualification == 0x0080'0000u);
  CHECK(h.exits[0].regs[Regs::rax] == 0x55);
  CHECK(h.exits[1].qualification == 0x03F8'0009u);
  CHECK(h.exits[2].qualification == 0x00E9'0008u);
  CHECK(h.exits[3].qualification == 0x0CFC'0003u);
  CHECK(h.exits[3].regs[Regs::rax] == 0x80000000u);
  // IN returns the emulated value truncated to the access size.
  CHECK(in16 == 0x1234);
  CHECK(in_debugcon == 0x34);
  CHECK(h.counter("system.debugcon.bytes") == 0);
}

TEST_CASE("with I/O bitmaps only ports whose bit is set exit", "[vmx][io]") {
  VmxHarness h;
  // Unconditional I/O exiting is ignored when I/O bitmaps are used.
  h.config.proc = proc::kUseIoBitmaps | proc::kUnconditionalIoExiting;
  h.setup = [](Core& c) {
    VmxHarness::set_bitmap_bit(c, VmxHarness::kIoBitmapA, 0x70);          // bitmap A: ports 0-7FFF
    VmxHarness::set_bitmap_bit(c, VmxHarness::kIoBitmapB, 0);     // bitmap B bit 0: port 8000
  };
  std::uint32_t in71 = 0, in_e9 = 0;
  h.guest = [&](Core& c) {
    c.out(0xE9, 'A', 1);  // 0: passes to the debug console
    in_e9 = c.in(0xE9, 1);
    c.out(0x70, 1, 1);    // exits
    in71 = c.in(0x71, 1);  // passes: unclaimed port reads all ones
    c.in(0x6F, 2);        // ports 6F and 70: exits (any bit of the accessed ports)
    c.in(0x8000, 1);      // exits (bitmap B)
    c.in(0x8001, 1);      // passes
    c.in(0x7FFF, 2);      // 7FFF (A, clear) and 8000 (B, set): exits
    c.in(0x7FFE, 2);      // passes
    c.out(0xFFFF, 0, 2);  // wraps around the port space: exits
  };
  h.run();
  require_clean(h);

  REQUIRE(h.reasons() == std::vector<unsigned>{kIo, kIo, kIo, kIo, kIo, kVmcall});
  CHECK(h.exits[0].qualification == 0x0070'0000u);
  CHECK(h.exits[1].qualification == 0x006F'0009u);
  CHECK(h.exits[2].qualification == 0x8000'0008u);
  CHECK(h.exits[3].qualification == 0x7FFF'0009u);
  CHECK(h.exits[4].qualification == 0xFFFF'0001u);
  CHECK(in71 == 0xFF);
  CHECK(in_e9 == 0xE9);
  CHECK(h.counter("system.debugcon.bytes") == 1);
}

// ---------------------------------------------------------------------------
// RDMSR / WRMSR (SDM Vol. 3C, 25.6.9, 26.1.3).

TEST_CASE("MSR bitmaps decide RDMSR and WRMSR exits in the low and high ranges", "[vmx][msr]") {
  VmxHarness h;
  h.config.proc = proc::kUseMsrBitmaps;
  constexpr std::uint32_t kStar = 0xC0000081;
  h.setup = [](Core& c) {
    using H = VmxHarness;
    H::set_bitmap_bit(c, H::kMsrBitmap, H::msr_read_bit(msr::kIa32TscDeadline));  // read-low
    H::set_bitmap_bit(c, H::kMsrBitmap, H::msr_write_bit(msr::kX2ApicLvtTimer));  // write-low
    H::set_bitmap_bit(c, H::kMsrBitmap, H::msr_write_bit(msr::kIa32Efer));        // write-high
    H::set_bitmap_bit(c, H::kMsrBitmap, H::msr_read_bit(kStar));                  // read-high
  };
  std::uint64_t deadline_read = 0, lvt_read = 0, efer_read = 0, star_read = 0, steal_read = 0;
  h.guest = [&](Core& c) {
    deadline_read = c.rdmsr(msr::kIa32TscDeadline);  // exit 31
    c.wrmsr(msr::kIa32TscDeadline, 0);               // write-low clear: runs (disarms the timer)
    lvt_read = c.rdmsr(msr::kX2ApicLvtTimer);        // read-low clear: runs
    c.wrmsr(msr::kX2ApicLvtTimer, 0x1'00EC);         // exit 32
    efer_read = c.rdmsr(msr::kIa32Efer);             // read-high clear: runs
    c.wrmsr(msr::kIa32Efer, 0x1234'0000'0800ull);    // exit 32
    star_read = c.rdmsr(kStar);                      // exit 31
    steal_read = c.rdmsr(vmx::abi::steal_time::kMsr);        // outside both ranges: always exits
  };
  h.on_exit = [](Core& c, const Exit& e) {
    if (e.reason == kRdmsr) {
      c.regs()[Regs::rax] = 0x1000 + (e.regs[Regs::rcx] & 0xFF);
      c.regs()[Regs::rdx] = 0xAB;
    }
  };
  h.run();
  require_clean(h);

  REQUIRE(h.reasons() == std::vector<unsigned>{kRdmsr, kWrmsr, kWrmsr, kRdmsr, kRdmsr, kVmcall});
  CHECK(h.exits[0].regs[Regs::rcx] == msr::kIa32TscDeadline);
  CHECK(h.exits[1].regs[Regs::rcx] == msr::kX2ApicLvtTimer);
  CHECK(h.exits[1].regs[Regs::rax] == 0x1'00EC);
  CHECK(h.exits[1].regs[Regs::rdx] == 0);
  CHECK(h.exits[2].regs[Regs::rcx] == msr::kIa32Efer);
  CHECK(h.exits[2].regs[Regs::rax] == 0x800);   // EDX:EAX
  CHECK(h.exits[2].regs[Regs::rdx] == 0x1234);
  CHECK(h.exits[3].regs[Regs::rcx] == kStar);
  CHECK(h.exits[4].regs[Regs::rcx] == vmx::abi::steal_time::kMsr);
  for (const Exit& e : h.exits) CHECK(e.qualification == 0);
  // RDMSR returns EDX:EAX as the root left them.
  CHECK(deadline_read == ((0xABull << 32) | 0x10E0));
  CHECK(star_read == ((0xABull << 32) | 0x1081));
  CHECK(steal_read == ((0xABull << 32) | 0x1003));
  CHECK(lvt_read == vmx::models::Lapic::kDefaultTimerVector);
  CHECK(efer_read == 0);
  // The write that exited did not reach the LAPIC: the root did not emulate it.
  CHECK(h.core().lapic().lvt_timer() == vmx::models::Lapic::kDefaultTimerVector);
}

TEST_CASE("without MSR bitmaps every RDMSR and WRMSR exits", "[vmx][msr]") {
  VmxHarness h;
  h.config.proc = 0;
  h.guest = [](Core& c) {
    c.rdmsr(msr::kIa32TscDeadline);
    c.wrmsr(msr::kIa32TscDeadline, 0x5555);
    c.rdmsr(msr::kIa32Efer);
    c.wrmsr(msr::kX2ApicEoi, 0);
  };
  h.run();
  require_clean(h);
  REQUIRE(h.reasons() == std::vector<unsigned>{kRdmsr, kWrmsr, kRdmsr, kWrmsr, kVmcall});
  CHECK(h.exits[0].regs[Regs::rcx] == msr::kIa32TscDeadline);
  CHECK(h.exits[1].regs[Regs::rcx] == msr::kIa32TscDeadline);
  CHECK(h.exits[1].regs[Regs::rax] == 0x5555);
  CHECK(h.exits[2].regs[Regs::rcx] == msr::kIa32Efer);
  CHECK(h.exits[3].regs[Regs::rcx] == msr::kX2ApicEoi);
  CHECK(h.core().lapic().deadline_msr() == 0);  // the exiting WRMSR did not arm the timer
  CHECK(h.counter("system.cpu0.exit_reasons.MSR_READ") == 2);
  CHECK(h.counter("system.cpu0.exit_reasons.MSR_WRITE") == 2);
}

// ---------------------------------------------------------------------------
// Control registers (SDM Vol. 3C, 25.6.6, 25.6.7, 26.1.3, 26.3; qualification
// Table 28-3: bits 3:0 CR, 5:4 access type (0 MOV to CR, 1 MOV from CR),
// 11:8 general-purpose register).

TEST_CASE("CR3-load exiting on: MOV to CR3 exits and the root emulates it", "[vmx][cr]") {
  VmxHarness h;
  h.config.proc = proc::kCr3LoadExiting;
  std::uint64_t cr3_seen = 0;
  h.guest = [&](Core& c) {
    c.write_cr(3, 0x5000);
    cr3_seen = c.read_cr(3);  // CR3-store exiting is off: no exit
  };
  h.on_exit = [&h](Core& c, const Exit& e) {
    if (e.reason == kCrAccess) h.vmw(c, field::kGuestCr3, e.regs[Regs::rax]);
  };
  h.run();
  require_clean(h);
  REQUIRE(h.reasons() == std::vector<unsigned>{kCrAccess, kVmcall});
  CHECK(h.exits[0].qualification == 0x3);  // CR3, MOV to CR, RAX
  CHECK(h.exits[0].regs[Regs::rax] == 0x5000);
  CHECK(h.exits[0].guest_cr3 == 0);         // the exiting MOV did not load CR3
  CHECK(cr3_seen == 0x5000);
}

TEST_CASE("CR3-load exiting off: MOV to CR3 runs and CR3-store exiting makes MOV from CR3 exit", "[vmx][cr]") {
  VmxHarness h;
  h.config.proc = proc::kCr3StoreExiting;
  std::uint64_t cr3_seen = 0;
  h.guest = [&](Core& c) {
    c.write_cr(3, 0x7000);
    cr3_seen = c.read_cr(3);
  };
  h.on_exit = [](Core& c, const Exit& e) {
    if (e.reason == kCrAccess) c.regs()[Regs::rax] = 0x9000;
  };
  h.run();
  require_clean(h);
  REQUIRE(h.reasons() == std::vector<unsigned>{kCrAccess, kVmcall});
  CHECK(h.exits[0].qualification == 0x13);  // CR3, MOV from CR, RAX
  CHECK(h.exits[0].guest_cr3 == 0x7000);    // the load ran without an exit
  CHECK(cr3_seen == 0x9000);
}

TEST_CASE("CR0 and CR4 guest/host masks: host-owned bits exit on change and read from the shadow",
          "[vmx][cr]") {
  VmxHarness h;
  // The host owns CR0.WP and CR0.CD and CR4.VMXE. The guest's CR0 has WP set
  // in fact, but the shadow tells it WP is clear.
  constexpr std::uint64_t kCd = 1ull << 30;
  h.config.guest_cr0 = crb::kCr0Pe | crb::kCr0Wp;
  h.config.cr0_mask = crb::kCr0Wp | kCd;
  h.config.cr0_shadow = 0;
  h.config.cr4_mask = crb::kCr4Vmxe;
  h.config.cr4_shadow = 0;
  std::uint64_t cr0_read = 0, cr0_read_after = 0, cr4_read = 0;
  h.guest = [&](Core& c) {
    cr0_read = c.read_cr(0);
    // Host-owned bits equal to the shadow: no exit, and those bits of the
    // real CR0 are left alone (SDM Vol. 3C, 26.3).
    c.write_cr(0, crb::kCr0Pe | (1ull << 5));  // NE (guest-owned) set, WP/CD as in the shadow
    cr0_read_after = c.read_cr(0);
    c.vmcall(kPingCall);
    c.write_cr(0, crb::kCr0Pe | crb::kCr0Wp);   // WP differs from the shadow: exit
    c.write_cr(4, crb::kCr4Pae | crb::kCr4Vmxe);  // VMXE differs from the shadow: exit
    c.write_cr(4, crb::kCr4Pae);                // VMXE as in the shadow: runs
    cr4_read = c.read_cr(4);
  };
  h.run();
  require_clean(h);
  REQUIRE(h.reasons() == std::vector<unsigned>{kVmcall, kCrAccess, kCrAccess, kVmcall});
  CHECK(cr0_read == crb::kCr0Pe);  // WP read from the shadow
  CHECK(cr0_read_after == (crb::kCr0Pe | (1ull << 5)));
  // The non-exiting MOV kept the host-owned WP of the real CR0.
  CHECK(h.exits[0].guest_cr0 == (crb::kCr0Pe | crb::kCr0Wp | (1ull << 5)));
  CHECK(h.exits[1].qualification == 0x0);  // CR0, MOV to CR, RAX
  CHECK(h.exits[1].regs[Regs::rax] == (crb::kCr0Pe | crb::kCr0Wp));
  CHECK(h.exits[2].qualification == 0x4);  // CR4, MOV to CR, RAX
  CHECK(h.exits[2].regs[Regs::rax] == (crb::kCr4Pae | crb::kCr4Vmxe));
  CHECK(cr4_read == crb::kCr4Pae);
  CHECK(h.exits[3].guest_cr4 == crb::kCr4Pae);
}

// ---------------------------------------------------------------------------
// Exception bitmap (SDM Vol. 3C, 25.6.3; exit information 28.2.1, 28.2.2).

TEST_CASE("with exception-bitmap bit 14 a guest page fault exits with vector and error code and CR2", "[vmx][pf]") {
  VmxHarness h;
  h.config.exception_bitmap = 1u << 14;  // PFEC mask = match = 0: bit 14 decides
  // The guest builds a 4-level page table in its memory (identity-mapped by
  // EPT): 2 MiB pages over 0-16 MiB, but the one at 8 MiB is not present.
  constexpr std::uint64_t kPml4 = 0x300000, kPdpt = 0x301000, kPd = 0x302000;
  constexpr std::uint64_t kVa = 0x800000, kBacking = 0xA00000;
  constexpr std::uint64_t kLarge = pte::kPresent | pte::kWritable | pte::kPageSize;
  std::uint64_t value = 0, cr2_after = 0;
  h.guest = [&](Core& c) {
    c.store(kPml4, kPdpt | pte::kPresent | pte::kWritable);
    c.store(kPdpt, kPd | pte::kPresent | pte::kWritable);
    for (std::uint64_t i = 0; i < 8; ++i)
      if (i != 4) c.store(kPd + 8 * i, (i << 21) | kLarge);
    c.write_cr(4, crb::kCr4Pae);
    c.write_cr(3, kPml4);
    c.write_cr(0, crb::kCr0Pe | crb::kCr0Pg | crb::kCr0Wp);
    c.write_cr(2, 0x77);
    c.store(kVa + 0x18, 0x5151);   // #PF (write, not present) -> exit; retried after the fix
    value = c.load(kVa + 0x10);     // reads what the root put behind the new mapping
    cr2_after = c.read_cr(2);
  };
  h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason != kExceptionOrNmi) return;
    // Map the 2 MiB page at 8 MiB to 10 MiB and put a value there.
    c.store(kPd + 8 * 4, kBacking | kLarge);
    c.store(kBacking + 0x10, 0xC0FFEE);
  };
  h.run();
  require_clean(h);
  REQUIRE(h.reasons() == std::vector<unsigned>{kExceptionOrNmi, kVmcall});
  const Exit& e = h.exits[0];
  // Valid, hardware exception (type 3), error code delivered, vector 14.
  CHECK(e.intr_info == 0x8000'0B0Eu);
  CHECK(e.intr_error == 0x2);  // write to a not-present page in supervisor mode
  CHECK(e.qualification == kVa + 0x18);
  // A page fault that causes a VM exit does not update CR2 (SDM Vol. 3C, 28.1).
  CHECK(cr2_after == 0x77);
  CHECK(value == 0xC0FFEE);
  CHECK(h.platform().memory().read(kBacking + 0x18, 8) == 0x5151);  // the retried store landed at 10 MiB
}

// ---------------------------------------------------------------------------
// EPT violations (SDM Vol. 3C, 29.3.3.2; qualification Table 28-7).

TEST_CASE("an access to an unmapped guest-physical page exits as an EPT violation", "[vmx][ept]") {
  VmxHarness h;
  constexpr std::uint64_t kGpa = 0x1800000;  // 24 MiB: outside the 16 MiB identity map
  std::uint64_t value = 0;
  h.guest = [&](Core& c) {
    value = c.load(kGpa + 0x40);  // not present: violation; after the fix, read-only
    c.store(kGpa + 0x48, 7);      // read-only: violation; after the fix, read-write
  };
  unsigned fixes = 0;
  h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason != kEptViolation) return;
    if (fixes++ == 0) {
      h.ept_map(c, kGpa, kGpa, ept::kRead);
      c.store(kGpa + 0x40, 0xFEEDFACE);
    } else {
      h.ept_map(c, kGpa, kGpa, ept::kRead | ept::kWrite);
    }
  };
  std::uint64_t stored = 0;
  h.after = [&](Core& c) { stored = c.load(kGpa + 0x48); };
  h.run();
  require_clean(h);
  REQUIRE(h.reasons() == std::vector<unsigned>{kEptViolation, kEptViolation, kVmcall});
  // Read of a not-present page: bit 0 (read), no permissions in bits 5:3,
  // bit 7 (linear address valid), bit 8 (translation of a linear address).
  CHECK(h.exits[0].guest_physical == kGpa + 0x40);
  CHECK(h.exits[0].guest_linear == kGpa + 0x40);
  CHECK(h.exits[0].qualification == (qual::kEptRead | qual::kEptGlaValid | qual::kEptGlaTranslation));
  // Write to a read-only page: bit 1 (write) and bit 3 (page readable).
  CHECK(h.exits[1].guest_physical == kGpa + 0x48);
  CHECK(h.exits[1].qualification ==
        (qual::kEptWrite | qual::kEptReadable | qual::kEptGlaValid | qual::kEptGlaTranslation));
  CHECK(value == 0xFEEDFACE);
  CHECK(stored == 7);
  CHECK(h.counter("system.cpu0.walker.ept_violations") == 2);
}

// ---------------------------------------------------------------------------
// VMX instruction failures (SDM Vol. 3C, 31.2 conventions, 31.4 error numbers).

TEST_CASE("VMRESUME of a never-launched VMCS fails with error 5 and a second VMLAUNCH with error 4",
          "[vmx][vmfail]") {
  VmxHarness h;
  VmxStatus resume_status = VmxStatus::Succeed, relaunch_status = VmxStatus::Succeed;
  std::uint64_t resume_error = 0, relaunch_error = 0;
  h.setup = [&](Core& c) {
    vmx::cpu::VmExit r = c.vmresume();
    resume_status = r.status;
    c.vmread(field::kVmInstructionError, resume_error);
  };
  h.after = [&](Core& c) {
    vmx::cpu::VmExit r = c.vmlaunch();
    relaunch_status = r.status;
    c.vmread(field::kVmInstructionError, relaunch_error);
  };
  h.run();
  require_clean(h);
  CHECK(resume_status == VmxStatus::FailValid);
  CHECK(resume_error == vmerr::kVmresumeNonLaunched);
  CHECK(resume_error == 5);
  CHECK(relaunch_status == VmxStatus::FailValid);
  CHECK(relaunch_error == 4);
  CHECK(h.reasons() == std::vector<unsigned>{kVmcall});  // the VMLAUNCH in between worked
  CHECK(h.counter("system.cpu0.vm_fails") == 2);
  CHECK(h.counter("system.cpu0.vm_entries") == 1);
}

TEST_CASE("VMWRITE VMREAD VMPTRLD VMCLEAR VMXON and VMCALL failures report the SDM errors", "[vmx][vmfail]") {
  VmxHarness h;
  struct Result {
    const char* what;
    VmxStatus status;
    std::uint64_t error;
  };
  std::vector<Result> r;
  VmxStatus no_vmcs_read = VmxStatus::Succeed, ro_write = VmxStatus::FailInvalid;
  std::uint64_t no_vmcs_fails = 0, ro_value = 0;
  h.after_vmxon = [&](Core& c) {
    // No current VMCS: VMfailInvalid, with no VMCS to hold an error number.
    std::uint64_t before = c.stats().vm_fails.value();
    std::uint64_t v = 0;
    no_vmcs_read = c.vmread(field::kGuestRip, v);
    c.vmcall(0);
    no_vmcs_fails = c.stats().vm_fails.value() - before;
  };
  h.setup = [&](Core& c) {
    auto note = [&](const char* what, VmxStatus s) {
      std::uint64_t e = 0;
      c.vmread(field::kVmInstructionError, e);
      r.push_back({what, s, e});
    };
    std::uint64_t v = 0;
    // A read-only field is writable: the processor reports IA32_VMX_MISC
    // bit 29 (SDM Vol. 3C, A.6), as a VMM shadowing a VMCS needs (docs/nested.md).
    ro_write = c.vmwrite(field::kExitQualification, 0x77);
    c.vmread(field::kExitQualification, ro_value);
    note("VMWRITE unsupported", c.vmwrite(0x4020, 1));
    note("VMREAD unsupported", c.vmread(0x2040, v));
    note("VMREAD high half of a 16-bit field", c.vmread(field::kVpid | 1, v));
    c.store(VmxHarness::kSpareRegion, vmx::cpu::kVmcsRevision + 1, 4);
    note("VMPTRLD wrong revision", c.vmptrld(VmxHarness::kSpareRegion));
    note("VMPTRLD VMXON pointer", c.vmptrld(VmxHarness::kVmxonRegion));
    note("VMPTRLD unaligned", c.vmptrld(VmxHarness::kSpareRegion + 8));
    note("VMCLEAR VMXON pointer", c.vmclear(VmxHarness::kVmxonRegion));
    note("VMCLEAR unaligned", c.vmclear(VmxHarness::kSpareRegion + 8));
    note("VMXON in VMX root", c.vmxon(VmxHarness::kVmxonRegion));
    std::uint64_t before = c.stats().vm_fails.value();
    c.vmcall(0);
    note("VMCALL in VMX root", c.stats().vm_fails.value() > before ? VmxStatus::FailValid : VmxStatus::Succeed);
  };
  h.run();
  require_clean(h);  // the VMCS stayed current and launchable through all of that
  CHECK(no_vmcs_read == VmxStatus::FailInvalid);
  CHECK(no_vmcs_fails == 2);
  // SDM Vol. 3C, 31.4, Table 31-1.
  CHECK(ro_write == VmxStatus::Succeed);
  CHECK(ro_value == 0x77);
  const std::vector<std::uint64_t> expected = {12, 12, 12, 11, 10, 9, 3, 2, 15, 1};
  REQUIRE(r.size() == expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    CAPTURE(r[i].what);
    CHECK(r[i].status == VmxStatus::FailValid);
    CHECK(r[i].error == expected[i]);
  }
}

// ---------------------------------------------------------------------------
// Event injection (SDM Vol. 3C, 25.8.3, 27.6).

TEST_CASE("an injected external interrupt runs the guest's IDT handler once before the guest continues",
          "[vmx][inject]") {
  VmxHarness h;
  RecordingIdt idt;
  std::vector<int> order;
  idt.order = &order;
  h.guest = [&](Core& c) {
    c.lidt(&idt);
    c.sti();
    c.compute(1);
    order.push_back(1);
    c.vmcall(kPingCall);  // the root injects vector 0x40 on this exit's VMRESUME
    order.push_back(2);
    c.compute(100);
    order.push_back(3);
  };
  h.on_exit = [&h](Core& c, const Exit& e) {
    if (e.reason == kVmcall && e.regs[Regs::rax] == kPingCall)
      h.vmw(c, field::kEntryIntrInfo, intr::info(0x40, intr::kTypeExternal));
  };
  std::uint64_t info_after = ~0ull;
  h.after = [&](Core& c) { info_after = h.vmr(c, field::kEntryIntrInfo); };
  h.run();
  require_clean(h);
  CHECK(h.reasons() == std::vector<unsigned>{kVmcall, kVmcall});
  CHECK(idt.interrupts == std::vector<std::uint8_t>{0x40});
  CHECK(order == std::vector<int>{1, -0x40, 2, 3});
  // The valid bit does not survive the round trip (SDM Vol. 3C, 25.8.3: VM exits clear it).
  CHECK((info_after & intr::kValid) == 0);
  CHECK(h.counter("system.cpu0.interrupts") == 1);
}

TEST_CASE("injecting an external interrupt into a guest with RFLAGS.IF = 0 fails VM entry", "[vmx][inject]") {
  VmxHarness h;
  RecordingIdt idt;
  h.guest = [&](Core& c) {
    c.lidt(&idt);
    c.vmcall(kPingCall);  // IF stays 0
  };
  h.on_exit = [&h](Core& c, const Exit& e) {
    if (e.reason == kVmcall) h.vmw(c, field::kEntryIntrInfo, intr::info(0x40, intr::kTypeExternal));
  };
  h.run();
  REQUIRE(h.setup_errors.empty());
  CHECK(h.entry_failed);
  CHECK_FALSE(h.done);
  REQUIRE(h.exits.size() == 2);
  // SDM Vol. 3C, 27.3.1.4: IF must be 1 when an external interrupt is
  // injected; the failure is reported as exit reason 33 with bit 31 set.
  CHECK(h.exits[1].reason == kEntryFailGuestState);
  CHECK(h.exits[1].full_reason == ((1u << 31) | kEntryFailGuestState));
  CHECK(idt.interrupts.empty());
}

// ---------------------------------------------------------------------------
// VPID (SDM Vol. 3C, 28.3.3.3): without VPIDs every VM entry and exit
// invalidates the guest's linear mappings; with them they survive.

namespace {

struct TlbProbe {
  std::uint64_t hits = 0, misses = 0;
};

// The guest touches a page, exits and is resumed, then touches it again;
// returns the L1 DTLB hits (any page size: the harness maps 2 MiB EPT pages,
// so the translation sits in dtlb_2m) and L1 DTLB misses (a miss in every
// page size) of the touch after each round trip.
void vpid_scenario(VmxHarness& h, std::vector<TlbProbe>& probes, unsigned round_trips) {
  h.guest = [&h, &probes, round_trips](Core& c) {
    constexpr std::uint64_t kData = 0x400000;
    auto l1_hits = [&h] {
      return h.counter("system.cpu0.tlb.dtlb.hits") + h.counter("system.cpu0.tlb.dtlb_2m.hits") +
             h.counter("system.cpu0.tlb.dtlb_1g.hits");
    };
    c.load(kData);
    c.load(kData);
    for (unsigned i = 0; i < round_trips; ++i) {
      c.vmcall(kPingCall);
      std::uint64_t h0 = l1_hits();
      std::uint64_t m0 = h.counter("system.cpu0.tlb.l1d_misses");
      c.load(kData);
      probes.push_back({l1_hits() - h0, h.counter("system.cpu0.tlb.l1d_misses") - m0});
    }
  };
}

}  // namespace

TEST_CASE("with VPID enabled the guest's TLB entries survive an exit and entry", "[vmx][vpid]") {
  VmxHarness h;
  h.config.proc2 = proc2::kEnableEpt | proc2::kEnableVpid;
  h.config.vpid = 1;
  std::vector<TlbProbe> probes;
  vpid_scenario(h, probes, 2);
  unsigned pings = 0;
  VmxStatus inv = VmxStatus::FailInvalid;
  h.on_exit = [&](Core& c, const Exit& e) {
    // On the second round trip the root flushes VPID 1 (INVVPID single-context).
    if (e.reason == kVmcall && ++pings == 2) inv = c.invvpid(1, 1);
  };
  h.run();
  require_clean(h);
  REQUIRE(probes.size() == 2);
  CHECK(probes[0].hits == 1);
  CHECK(probes[0].misses == 0);
  CHECK(inv == VmxStatus::Succeed);
  CHECK(probes[1].hits == 0);
  CHECK(probes[1].misses == 1);
}

TEST_CASE("with VPID disabled the guest's TLB entries are flushed by an exit and entry", "[vmx][vpid]") {
  VmxHarness h;
  h.config.proc2 = proc2::kEnableEpt;
  std::vector<TlbProbe> probes;
  vpid_scenario(h, probes, 1);
  h.run();
  require_clean(h);
  REQUIRE(probes.size() == 1);
  CHECK(probes[0].hits == 0);
  CHECK(probes[0].misses == 1);
}

TEST_CASE("VM entry with VPID enabled and VPID 0 fails with error 7", "[vmx][vpid][vmfail]") {
  VmxHarness h;
  h.config.proc2 = proc2::kEnableEpt | proc2::kEnableVpid;
  h.config.vpid = 0;  // SDM Vol. 3C, 27.2.1.1: VPID must not be 0
  h.run();
  REQUIRE(h.setup_errors.empty());
  CHECK(h.entry_failed);
  CHECK(h.entry_error == vmerr::kEntryInvalidControls);
  CHECK(h.exits.empty());
}

// ---------------------------------------------------------------------------
// Monitor trap flag (SDM Vol. 3C, 26.5.2): an exit after the first guest
// operation following each VM entry.

namespace {
constexpr unsigned kMonitorTrapFlag = 37;
}

TEST_CASE("with the monitor trap flag the guest exits after each operation", "[vmx][mtf]") {
  VmxHarness h;
  h.config.proc = proc::kMonitorTrapFlag;
  h.guest = [](Core& c) {
    c.compute(1);
    c.compute(2);
    c.compute(3);
  };
  std::vector<std::uint64_t> retired;
  h.on_exit = [&](Core&, const Exit& e) {
    if (e.reason == kMonitorTrapFlag) retired.push_back(h.counter("system.cpu0.guest_instructions"));
  };
  h.run();
  require_clean(h);
  // One exit after each compute, then the final VMCALL (itself run under the
  // flag) exits for its own reason.
  REQUIRE(h.reasons() == std::vector<unsigned>{kMonitorTrapFlag, kMonitorTrapFlag, kMonitorTrapFlag, kVmcall});
  CHECK(retired == std::vector<std::uint64_t>{1, 3, 6});
}

TEST_CASE("the monitor trap flag set at a fault exit lets exactly the faulting store complete", "[vmx][mtf][ept]") {
  VmxHarness h;
  constexpr std::uint64_t kGpa = 0x1800000;  // outside the identity map: the store faults
  h.guest = [](Core& c) {
    c.store(kGpa + 8, 0xABCD);
    c.store(kGpa + 16, 0x1234);
    c.compute(5);
  };
  std::uint64_t at_mtf_first = 0, at_mtf_second = 0;
  h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason == kEptViolation) {
      h.ept_map(c, kGpa, kGpa, ept::kRead | ept::kWrite);
      std::uint64_t ctl = 0;
      c.vmread(field::kProcBasedControls, ctl);
      c.vmwrite(field::kProcBasedControls, ctl | proc::kMonitorTrapFlag);
    } else if (e.reason == kMonitorTrapFlag) {
      at_mtf_first = c.load(kGpa + 8);
      at_mtf_second = c.load(kGpa + 16);
      std::uint64_t ctl = 0;
      c.vmread(field::kProcBasedControls, ctl);
      c.vmwrite(field::kProcBasedControls, ctl & ~proc::kMonitorTrapFlag);
    }
  };
  h.run();
  require_clean(h);
  REQUIRE(h.reasons() == std::vector<unsigned>{kEptViolation, kMonitorTrapFlag, kVmcall});
  CHECK(at_mtf_first == 0xABCD);  // the faulting store completed ...
  CHECK(at_mtf_second == 0);      // ... and nothing after it
}

// ---------------------------------------------------------------------------
// Emulated memory operations (MMIO): the exit reports the operand size and
// the store data; advancing the guest RIP completes the operation.

TEST_CASE("a hypervisor emulates an exiting load and store by advancing the guest RIP", "[vmx][mmio][ept]") {
  VmxHarness h;
  constexpr std::uint64_t kDevice = 0x1800000;  // not in the EPT: every access exits
  std::uint64_t loaded = 0, loaded16 = 0;
  h.guest = [&](Core& c) {
    c.store(kDevice + 0x10, 0xCAFEF00D, 4);
    loaded = c.load(kDevice + 0x20, 8);
    loaded16 = c.load(kDevice + 0x30, 2);
  };
  std::vector<std::uint64_t> infos, data;
  h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason != kEptViolation) return;
    std::uint64_t info = 0, rip = 0, len = 0;
    c.vmread(field::kVmxInstructionInfo, info);
    infos.push_back(info);
    if (info & 0x10) data.push_back(e.regs[Regs::rax]);   // a store: its data
    else c.regs()[Regs::rax] = 0x1122334455667788ull;      // a load: the device's answer
    c.vmread(field::kGuestRip, rip);
    c.vmread(field::kExitInstructionLength, len);
    c.vmwrite(field::kGuestRip, rip + len);
  };
  h.run();
  require_clean(h);
  // One exit per access: none is retried.
  REQUIRE(h.reasons() == std::vector<unsigned>{kEptViolation, kEptViolation, kEptViolation, kVmcall});
  CHECK(infos == std::vector<std::uint64_t>{0x14, 0x8, 0x2});
  CHECK(data == std::vector<std::uint64_t>{0xCAFEF00D});
  CHECK(loaded == 0x1122334455667788ull);
  CHECK(loaded16 == 0x7788);
  CHECK(h.exits[0].guest_physical == kDevice + 0x10);
}

// ---------------------------------------------------------------------------
// REP STOS and the sparse physical memory (models/phys_mem.h).

TEST_CASE("REP STOS of zero to a frame never written takes no host frame but costs the same", "[core]") {
  VmxHarness h;
  constexpr std::uint64_t kFresh = 0x800000, kOther = 0x900000;  // identity-mapped, never touched
  bool zeroed_absent = false, filled = false, rezeroed = false;
  std::uint64_t stores_zero = 0, stores_fill = 0;
  h.setup = [&](Core& c) {
    auto& mem = h.platform().memory();
    const std::uint64_t s0 = h.counter("system.cpu0.stores");
    c.rep_stos(kFresh, 0, 4096);
    stores_zero = h.counter("system.cpu0.stores") - s0;
    zeroed_absent = mem.frame_if_present(kFresh) == nullptr && mem.read(kFresh + 8, 8) == 0;
    const std::uint64_t s1 = h.counter("system.cpu0.stores");
    c.rep_stos(kOther, 0xAB, 4096);
    stores_fill = h.counter("system.cpu0.stores") - s1;
    filled = mem.frame_if_present(kOther) != nullptr && mem.read(kOther + 4088, 8) == 0xABABABABABABABABull;
    c.rep_stos(kOther, 0, 64);  // zero written over a frame that holds data
    rezeroed = mem.read(kOther, 8) == 0 && mem.read(kOther + 64, 8) == 0xABABABABABABABABull;
  };
  h.guest = [](Core&) {};
  h.run();
  require_clean(h);
  CHECK(zeroed_absent);
  CHECK(filled);
  CHECK(rezeroed);
  CHECK(stores_zero == 64);  // one store per line either way: the timing does not see the shortcut
  CHECK(stores_fill == 64);
}
