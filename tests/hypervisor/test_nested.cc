// Nested VMX (hypervisor/nested.cc, docs/nested.md): the hypervisor (L0)
// emulates VMX for a guest VMM (L1) written here, in the spirit of
// kvm-unit-tests' x86/vmx.c: each VMX instruction's VMsucceed, VMfailInvalid
// or VMfailValid with the SDM's VM-instruction error (Vol. 3C, 31.4), vmcs12
// in L1's memory, and L1's guest (L2) entered through vmcs02 with its exits
// reflected into L1 when vmcs12 asks for them.
#include <catch2/catch.hpp>

#include <cstdint>
#include <functional>
#include <string>

#include <systemc>

#include "abi/hypercall.h"
#include "cpu/core.h"
#include "cpu/vmx.h"
#include "hypervisor/hypervisor.h"
#include "mmu/paging.h"
#include "platform/platform.h"
#include "sim/fiber.h"

namespace {

using vmx::cpu::Core;
using vmx::cpu::ExitReason;
using vmx::cpu::Regs;
using vmx::cpu::VmxStatus;
namespace field = vmx::cpu::field;
namespace insn = vmx::cpu::insn;
namespace vmerr = vmx::cpu::vmerr;

// L1's guest-physical layout (its paging is off: linear = guest-physical).
constexpr std::uint64_t kVmxon = 0x10000, kVmcsA = 0x11000, kVmcsB = 0x12000, kSlot = 0x13000, kDesc = 0x13100;
constexpr std::uint64_t kIoBitmapA = 0x14000, kIoBitmapB = 0x15000, kMsrBitmap = 0x16000;

/// The memory operand [kSlot] holding `value`, as software stores it before
/// a VMXON/VMPTRLD/VMCLEAR (the instruction reads its operand from memory).
insn::MemOperand at_slot(Core& c, std::uint64_t value) {
  c.store(kSlot, value);
  return {insn::kNoReg, insn::kNoReg, 0, static_cast<std::int32_t>(kSlot)};
}

struct Handler : vmx::cpu::InterruptHandler {
  unsigned ud = 0, gp = 0, other = 0, interrupts = 0;
  std::uint8_t last_vector = 0;
  bool eoi = true;  // L2 of the preemption-timer test has no APIC of its own to acknowledge
  void interrupt(Core& c, std::uint8_t vector) override {
    ++interrupts;
    last_vector = vector;
    if (eoi) c.wrmsr(vmx::cpu::msr::kX2ApicEoi, 0);
  }
  void exception(Core&, std::uint8_t vector, std::uint32_t) override {
    if (vector == vmx::cpu::vec::kInvalidOpcode) ++ud;
    else if (vector == vmx::cpu::vec::kGeneralProtection) ++gp;
    else ++other;
  }
};

// The L1 image: vCPU 0 runs `body`, then spins on VMCALLs.
struct L1 : vmx::abi::GuestImage, Handler {
  std::function<void(Core&)> body;
  bool body_done = false;
  std::uint64_t calls = 0;
  vmx::sim::Fiber fiber{"l1", [this] { main(); }};
  std::uint64_t entry_point(unsigned) override { return vmx::cpu::code_address(&fiber); }
  void main() {
    Core& c = Core::current();
    c.lidt(this);
    if (body) body(c);
    body_done = true;
    for (;;) {
      c.vmcall(vmx::abi::hypercall::kNop);
      ++calls;
    }
  }
};

struct Machine {
  /// shadow: VMCS shadowing for L1 (hypervisor.nested_shadow_vmcs).
  explicit Machine(bool shadow = false) : hp([shadow] {
    auto p = vmx::cfg::defaults<vmx::hv::HypervisorParams>();
    p.nested_shadow_vmcs = shadow;
    return p;
  }()) {}
  vmx::stats::Group root{nullptr, ""};
  vmx::models::PlatformParams pp = [] {
    auto p = vmx::cfg::defaults<vmx::models::PlatformParams>();
    p.cores = 1;
    p.memory = 256ull << 20;
    return p;
  }();
  vmx::models::Platform platform{pp, &root};
  vmx::hv::HypervisorParams hp;
  vmx::hv::Hypervisor hv{hp, platform.cores(), pp.memory, pp.frequency, &root};
  void add(L1& g, bool nested = true) {
    vmx::hv::VmSpec spec{"l1", 1, 16ull << 20, &g};
    spec.nested_vmx = nested;
    hv.add_vm(spec);
  }
  void run(unsigned us) {
    platform.core(0).set_reset_fiber(&hv.core_fiber(0));
    sc_core::sc_start(sc_core::sc_time(us, sc_core::SC_US));
    hv.flush_accounting();
  }
  std::uint64_t counter(const std::string& path) const {
    const auto* s = dynamic_cast<const vmx::stats::Counter*>(root.find(path));
    return s ? s->value() : 0;
  }
  std::uint64_t exits(const std::string& vcpu, const char* reason) const {
    const auto* h =
        dynamic_cast<const vmx::stats::Histogram*>(root.find("vm.l1." + vcpu + ".exit_reasons." + reason + ".cycles"));
    return h ? h->count() : 0;
  }
};

void enter_vmx(Core& c) {
  c.write_cr(4, c.read_cr(4) | vmx::mmu::crbits::kCr4Vmxe);
  c.store(kVmxon, vmx::cpu::kVmcsRevision, 4);
  REQUIRE(c.vmxon(kVmxon, at_slot(c, kVmxon)) == VmxStatus::Succeed);
}

std::uint64_t error_of(Core& c) {
  std::uint64_t e = 0;
  REQUIRE(c.vmread(field::kVmInstructionError, e) == VmxStatus::Succeed);
  return e;
}

}  // namespace

TEST_CASE("nested VMX: L1's VMX instructions are emulated with the SDM's status and VM-instruction errors",
          "[nested]") {
  Machine m;
  L1 g;
  std::uint64_t e_vmptrld_unaligned = 0, e_vmptrld_vmxon = 0, e_revision = 0, e_unsupported = 0, e_unsupported_w = 0,
                e_read_only = 0, e_resume_clear = 0, e_vmclear_vmxon = 0, e_invvpid = 0, e_vmxon_again = 0;
  VmxStatus before_vmxon = VmxStatus::Succeed, bad_region = VmxStatus::Succeed, no_current = VmxStatus::Succeed;
  unsigned ud_before = 0;
  std::uint64_t rip = 0, vpid = 0, tsc_hi = 0, ptrst = 0, gone = 0;
  g.body = [&](Core& c) {
    // Outside VMX operation a VMX instruction is #UD (SDM Vol. 3C, 31.3).
    std::uint64_t x = 0;
    before_vmxon = c.vmread(field::kGuestRip, x);
    ud_before = g.ud;
    c.write_cr(4, c.read_cr(4) | vmx::mmu::crbits::kCr4Vmxe);
    // A VMXON region without the revision identifier: VMfailInvalid.
    bad_region = c.vmxon(kVmxon, at_slot(c, kVmxon));
    c.store(kVmxon, vmx::cpu::kVmcsRevision, 4);
    REQUIRE(c.vmxon(kVmxon, at_slot(c, kVmxon)) == VmxStatus::Succeed);
    // No current VMCS: VMREAD is VMfailInvalid.
    no_current = c.vmread(field::kGuestRip, x);
    c.store(kVmcsA, vmx::cpu::kVmcsRevision, 4);
    REQUIRE(c.vmclear(kVmcsA, at_slot(c, kVmcsA)) == VmxStatus::Succeed);
    REQUIRE(c.vmptrld(kVmcsA, at_slot(c, kVmcsA)) == VmxStatus::Succeed);
    // With a current VMCS, failures are VMfailValid with the error number.
    REQUIRE(c.vmxon(kVmxon, at_slot(c, kVmxon)) == VmxStatus::FailValid);
    e_vmxon_again = error_of(c);  // 15
    REQUIRE(c.vmptrld(kVmcsB + 8, at_slot(c, kVmcsB + 8)) == VmxStatus::FailValid);
    e_vmptrld_unaligned = error_of(c);  // 9
    REQUIRE(c.vmptrld(kVmxon, at_slot(c, kVmxon)) == VmxStatus::FailValid);
    e_vmptrld_vmxon = error_of(c);  // 10
    REQUIRE(c.vmptrld(kVmcsB, at_slot(c, kVmcsB)) == VmxStatus::FailValid);  // B has no revision identifier
    e_revision = error_of(c);  // 11
    REQUIRE(c.vmread(0x2040, x) == VmxStatus::FailValid);  // HLAT pointer: not supported
    e_unsupported = error_of(c);  // 12
    REQUIRE(c.vmwrite(0x6C40, 1) == VmxStatus::FailValid);
    e_unsupported_w = error_of(c);  // 12
    REQUIRE(c.vmwrite(field::kExitReason, 1) == VmxStatus::FailValid);
    e_read_only = error_of(c);  // 13
    REQUIRE(c.vmresume().status == VmxStatus::FailValid);
    e_resume_clear = error_of(c);  // 5
    REQUIRE(c.vmclear(kVmxon, at_slot(c, kVmxon)) == VmxStatus::FailValid);
    e_vmclear_vmxon = error_of(c);  // 3
    c.store(kDesc, 0);
    c.store(kDesc + 8, 0);
    c.regs()[Regs::rsi] = kDesc;
    REQUIRE(c.invvpid(7, 1, 0, Regs::rcx, {Regs::rsi}) == VmxStatus::FailValid);
    e_invvpid = error_of(c);  // 28
    // Fields round-trip through vmcs12 in L1's memory, at their widths.
    REQUIRE(c.vmwrite(field::kGuestRip, 0x123456789ABCull) == VmxStatus::Succeed);
    REQUIRE(c.vmwrite(field::kVpid, 0x12345) == VmxStatus::Succeed);  // 16-bit: truncated
    REQUIRE(c.vmwrite(field::kTscOffset, 0x1111222233334444ull) == VmxStatus::Succeed);
    REQUIRE(c.vmread(field::kGuestRip, rip) == VmxStatus::Succeed);
    REQUIRE(c.vmread(field::kVpid, vpid) == VmxStatus::Succeed);
    REQUIRE(c.vmread(field::kTscOffset + 1, tsc_hi) == VmxStatus::Succeed);  // the high half
    // VMPTRST stores the current-VMCS pointer at its operand.
    REQUIRE(c.vmptrst({insn::kNoReg, insn::kNoReg, 0, static_cast<std::int32_t>(kDesc)}) == VmxStatus::Succeed);
    ptrst = c.load(kDesc);
    // VMCLEAR of the current VMCS makes none current.
    REQUIRE(c.vmclear(kVmcsA, at_slot(c, kVmcsA)) == VmxStatus::Succeed);
    REQUIRE(c.vmptrst({insn::kNoReg, insn::kNoReg, 0, static_cast<std::int32_t>(kDesc)}) == VmxStatus::Succeed);
    gone = c.load(kDesc);
    REQUIRE(c.vmxoff() == VmxStatus::Succeed);
  };
  m.add(g);
  m.run(300);
  REQUIRE(g.body_done);
  CHECK(m.hv.vm_crash(0).empty());
  CHECK(ud_before == 1);
  CHECK(g.gp == 0);
  CHECK(bad_region == VmxStatus::FailInvalid);
  CHECK(no_current == VmxStatus::FailInvalid);
  CHECK(e_vmxon_again == vmerr::kVmxonInVmxRoot);
  CHECK(e_vmptrld_unaligned == vmerr::kVmptrldInvalidAddress);
  CHECK(e_vmptrld_vmxon == vmerr::kVmptrldVmxonPointer);
  CHECK(e_revision == vmerr::kVmptrldWrongRevision);
  CHECK(e_unsupported == vmerr::kUnsupportedVmcsComponent);
  CHECK(e_unsupported_w == vmerr::kUnsupportedVmcsComponent);
  CHECK(e_read_only == vmerr::kVmwriteReadOnly);
  CHECK(e_resume_clear == vmerr::kVmresumeNonLaunched);
  CHECK(e_vmclear_vmxon == vmerr::kVmclearVmxonPointer);
  CHECK(e_invvpid == vmerr::kInvalidOperandInvept);
  CHECK(rip == 0x123456789ABCull);
  CHECK(vpid == 0x2345);
  CHECK(tsc_hi == 0x11112222ull);
  CHECK(ptrst == kVmcsA);
  CHECK(gone == ~0ull);
  // Every VMX instruction of L1 exited to L0 and was emulated there.
  CHECK(m.counter("vm.l1.nested.emulated") >= 25);
  CHECK(m.exits("vcpu0", "VMREAD") >= 10);
}

TEST_CASE("nested VMX: without nested_vmx the guest's VMX instructions are #UD", "[nested]") {
  Machine m;
  L1 g;
  g.body = [&](Core& c) {
    c.write_cr(4, c.read_cr(4) | vmx::mmu::crbits::kCr4Vmxe);  // #GP: VMX is hidden
    std::uint64_t x = 0;
    c.vmread(field::kGuestRip, x);
  };
  m.add(g, false);
  m.run(100);
  REQUIRE(g.body_done);
  CHECK(g.gp == 1);
  CHECK(g.ud == 1);
  CHECK(m.counter("vm.l1.nested.emulated") == 0);
}

namespace {

// L2: CPUIDs of the vendor leaf in a loop, then I/O and HLT probes.
struct L2 : Handler {
  std::uint32_t first_ebx = 0;
  std::uint64_t loops = 0;
  std::uint64_t target = 0;
  bool probes = false, rdtsc_probe = false, spin = false;
  std::uint64_t spins = 0;
  std::uint32_t port80 = 0, port70 = 0;
  std::uint64_t tsc = 0;
  vmx::sim::Fiber fiber{"l2", [this] { main(); }};
  void main() {
    Core& c = Core::current();
    first_ebx = c.cpuid(0x40000000u).ebx;
    while (loops < target) {
      c.cpuid(0x40000000u);
      ++loops;
    }
    if (probes) {
      port80 = c.in(0x80);  // not in L1's I/O bitmap: L0 handles it
      port70 = c.in(0x70);  // in L1's bitmap: reflected
    }
    if (rdtsc_probe) tsc = c.rdtsc();
    // Work without exits until an interrupt arrives (the preemption timer
    // test: L1 injects one when its timer fires).
    while (spin && interrupts == 0) {
      c.compute(1000);
      ++spins;
    }
    for (;;) c.vmcall(0);
  }
};

/// L1 as a minimal VMM: a vmcs12 for L2 (CPUID answered with its own
/// signature), then the loop: enter, save L2's registers, VMREAD the exit
/// reason, handle, VMRESUME.
struct MiniVmm {
  L2& l2;
  L1& l1;
  std::uint64_t exits_seen[vmx::cpu::kMaxExitReason + 1] = {};
  std::uint64_t launch_again_error = 0;
  std::uint64_t bad_controls_error = 0;
  std::uint64_t vmcalls = 0, limit = 0;
  std::uint32_t extra_proc = 0;  // processor-based controls besides HLT exiting and the bitmaps
  std::uint64_t timer = 0;       // with a value: L2's VMX-preemption timer (cycles), once
  std::uint64_t timer_exit_tsc = 0;
  void run(Core& c) {
    enter_vmx(c);
    c.store(kVmcsA, vmx::cpu::kVmcsRevision, 4);
    REQUIRE(c.vmclear(kVmcsA, at_slot(c, kVmcsA)) == VmxStatus::Succeed);
    REQUIRE(c.vmptrld(kVmcsA, at_slot(c, kVmcsA)) == VmxStatus::Succeed);
    // EPT for L2 is not offered to L1: an entry asking for it fails with error 7.
    REQUIRE(c.vmwrite(field::kHostRip, vmx::cpu::code_address(&l1.fiber)) == VmxStatus::Succeed);
    REQUIRE(c.vmwrite(field::kProcBasedControls, vmx::cpu::proc::kActivateSecondaryControls) == VmxStatus::Succeed);
    REQUIRE(c.vmwrite(field::kSecondaryControls, vmx::cpu::proc2::kEnableEpt) == VmxStatus::Succeed);
    REQUIRE(c.vmlaunch().status == VmxStatus::FailValid);
    bad_controls_error = error_of(c);
    // I/O bitmaps: port 0x70 exits to L1, 0x80 does not.
    c.rep_stos(kIoBitmapA, 0, 4096);
    c.rep_stos(kIoBitmapB, 0, 4096);
    c.rep_stos(kMsrBitmap, 0, 4096);
    c.store(kIoBitmapA + 0x70 / 8, 1u << (0x70 % 8), 1);
    const std::pair<std::uint32_t, std::uint64_t> fields[] = {
        {field::kPinBasedControls, vmx::cpu::pin::kExternalInterruptExiting},
        {field::kProcBasedControls, vmx::cpu::proc::kHltExiting | vmx::cpu::proc::kUseIoBitmaps |
                                        vmx::cpu::proc::kUseMsrBitmaps | extra_proc},
        {field::kSecondaryControls, 0},
        {field::kIoBitmapA, kIoBitmapA},
        {field::kIoBitmapB, kIoBitmapB},
        {field::kMsrBitmap, kMsrBitmap},
        {field::kExitControls, vmx::cpu::exitctl::kHostAddressSpaceSize | vmx::cpu::exitctl::kAckInterruptOnExit},
        {field::kEntryControls, vmx::cpu::entryctl::kIa32eModeGuest},
        {field::kGuestCr0, vmx::mmu::crbits::kCr0Pe},
        {field::kGuestRflags, 0x2},
        {field::kGuestRip, vmx::cpu::code_address(&l2.fiber)},
        {field::kGuestIdtrBase, vmx::cpu::code_address(static_cast<vmx::cpu::InterruptHandler*>(&l2))},
        {field::kHostRip, vmx::cpu::code_address(&l1.fiber)},
    };
    for (auto [f, val] : fields) REQUIRE(c.vmwrite(f, val) == VmxStatus::Succeed);
    if (timer) {
      REQUIRE(c.vmwrite(field::kPinBasedControls,
                        vmx::cpu::pin::kExternalInterruptExiting | vmx::cpu::pin::kPreemptionTimer) ==
              VmxStatus::Succeed);
      REQUIRE(c.vmwrite(field::kPreemptionTimerValue, timer) == VmxStatus::Succeed);
    }
    bool launched = false;
    for (;;) {
      vmx::cpu::VmExit ex = launched ? c.vmresume() : c.vmlaunch();
      REQUIRE(ex.status == VmxStatus::Succeed);
      REQUIRE(ex.reason == vmx::cpu::VmExit::kReasonInVmcs);
      if (!launched) {
        // VMLAUNCH of a launched VMCS: error 4 (kept for after the first exit).
        launched = true;
        Regs saved = c.regs();
        REQUIRE(c.vmlaunch().status == VmxStatus::FailValid);
        launch_again_error = error_of(c);
        c.regs() = saved;
      }
      Regs r = c.regs();  // L2's registers, as the exit left them
      std::uint64_t reason = 0;
      REQUIRE(c.vmread(field::kExitReason, reason) == VmxStatus::Succeed);
      ++exits_seen[reason & 0xFFFF];
      switch (static_cast<ExitReason>(reason & 0xFFFF)) {
        case ExitReason::Cpuid:
          r[Regs::rax] = 1;
          r[Regs::rbx] = 0x314C314C;  // "L1L1"
          r[Regs::rcx] = r[Regs::rdx] = 0;
          break;
        case ExitReason::IoInstruction: r[Regs::rax] = 0x42; break;
        case ExitReason::PreemptionTimer:
          // The timer fired in L2: stop it, and deliver vector 0x30 to L2
          // through vmcs12's VM-entry interruption information.
          timer_exit_tsc = c.rdtsc();
          REQUIRE(c.vmwrite(field::kPinBasedControls, vmx::cpu::pin::kExternalInterruptExiting) ==
                  VmxStatus::Succeed);
          REQUIRE(c.vmwrite(field::kEntryIntrInfo, vmx::cpu::intr::info(0x30, vmx::cpu::intr::kTypeExternal)) ==
                  VmxStatus::Succeed);
          // An external interrupt is injected only into a guest with
          // RFLAGS.IF set (SDM Vol. 3C, 27.3.1.5).
          REQUIRE(c.vmwrite(field::kGuestRflags, 0x202) == VmxStatus::Succeed);
          break;
        case ExitReason::Rdtsc:
          r[Regs::rax] = 0x1234;  // L1's virtual TSC
          r[Regs::rdx] = 0;
          break;
        case ExitReason::Vmcall:
          if (++vmcalls >= limit) return;
          break;
        default: break;
      }
      c.regs() = r;
    }
  }
};

}  // namespace

TEST_CASE("nested VMX: an L2 CPUID exits to L1 and its answer reaches L2 at the cost of many L0 exits",
          "[nested]") {
  Machine m;
  L1 g;
  L2 l2;
  l2.target = 50;
  l2.probes = true;
  MiniVmm vmm{l2, g};
  vmm.limit = 3;
  g.body = [&](Core& c) { vmm.run(c); };
  m.add(g);
  m.run(2000);
  REQUIRE(g.body_done);
  CHECK(m.hv.vm_crash(0).empty());
  CHECK(vmm.bad_controls_error == vmerr::kEntryInvalidControls);
  CHECK(vmm.launch_again_error == vmerr::kVmlaunchNonClear);
  // L1's handler result reached L2, not L0's vendor signature.
  CHECK(l2.first_ebx == 0x314C314Cu);
  CHECK(l2.loops == 50);
  CHECK(vmm.exits_seen[static_cast<unsigned>(ExitReason::Cpuid)] == 51);
  // Port 0x70 is in L1's I/O bitmap, 0x80 is not: L0 answered that one
  // (an empty slot reads all ones) and L1 never saw it.
  CHECK(l2.port70 == 0x42);
  CHECK(l2.port80 == 0xFF);
  CHECK(vmm.exits_seen[static_cast<unsigned>(ExitReason::IoInstruction)] == 1);
  // The hardware saw each L2 CPUID once (vmcs02's observer)...
  CHECK(m.exits("vcpu0.l2", "CPUID") == 51);
  CHECK(m.counter("vm.l1.nested.reflected") >= 51 + 1 + 3);
  CHECK(m.counter("vm.l1.nested.l0_handled") >= 1);
  // ... and each of those cost L1 a VMREAD and a VMRESUME, which exit to L0
  // too: L0 exits per reflected L2 exit are several.
  const std::uint64_t l1_exits = m.exits("vcpu0", "VMREAD") + m.exits("vcpu0", "VMRESUME");
  CHECK(l1_exits >= 2 * 51);
  CHECK(m.counter("vm.l1.nested.l2_entries") >= 51);
}

namespace {
void rdtsc_exiting(bool exiting) {
  {
    Machine m;
    L1 g;
    L2 l2;
    l2.target = 0;
    l2.rdtsc_probe = true;
    MiniVmm vmm{l2, g};
    vmm.limit = 1;
    vmm.extra_proc = exiting ? vmx::cpu::proc::kRdtscExiting : 0;
    g.body = [&](Core& c) { vmm.run(c); };
    m.add(g);
    m.run(1000);
    INFO("RDTSC exiting in vmcs12: " << exiting);
    REQUIRE(g.body_done);
    CHECK(m.hv.vm_crash(0).empty());
    const unsigned rdtsc = static_cast<unsigned>(ExitReason::Rdtsc);
    if (exiting) {
      // Reflected: L1's handler result is what L2 read.
      CHECK(vmm.exits_seen[rdtsc] == 1);
      CHECK(l2.tsc == 0x1234);
      CHECK(m.counter("vm.l1.nested.l2_exits.RDTSC.reflected") == 1);
    } else {
      // Neither L1 nor L0 asked: no exit at all, L2 read the TSC.
      CHECK(vmm.exits_seen[rdtsc] == 0);
      CHECK(m.exits("vcpu0.l2", "RDTSC") == 0);
      CHECK(l2.tsc > 0x1234);
    }
  }
}
}  // namespace

TEST_CASE("nested VMX: with RDTSC exiting in vmcs12 an L2 RDTSC exits to L1, whose result reaches L2", "[nested]") {
  rdtsc_exiting(true);
}

TEST_CASE("nested VMX: without RDTSC exiting in vmcs12 an L2 RDTSC exits to no one", "[nested]") {
  rdtsc_exiting(false);
}

TEST_CASE("nested VMX: L1's preemption timer stops L2 and L1's injected interrupt reaches L2", "[nested]") {
  Machine m;
  L1 g;
  L2 l2;
  l2.target = 0;
  l2.spin = true;
  l2.eoi = false;
  MiniVmm vmm{l2, g};
  vmm.limit = 1;
  vmm.timer = 200000;
  g.body = [&](Core& c) { vmm.run(c); };
  m.add(g);
  m.run(1000);
  INFO("L2 spins " << l2.spins << ", interrupts " << l2.interrupts << ", timer exits to L1 "
                   << vmm.exits_seen[static_cast<unsigned>(ExitReason::PreemptionTimer)] << ", L0 saw "
                   << m.exits("vcpu0.l2", "PREEMPTION_TIMER") << ", L2 entries " << m.counter("vm.l1.nested.l2_entries")
                   << ", crash " << m.hv.vm_crash(0));
  REQUIRE(g.body_done);
  CHECK(m.hv.vm_crash(0).empty());
  // The timer ran in L2 (vmcs02 carries vmcs12's timer) and its exit went
  // to L1, once: L1 stopped it.
  CHECK(vmm.exits_seen[static_cast<unsigned>(ExitReason::PreemptionTimer)] == 1);
  CHECK(m.counter("vm.l1.nested.l2_exits.PREEMPTION_TIMER.reflected") == 1);
  CHECK(m.exits("vcpu0.l2", "PREEMPTION_TIMER") == 1);
  // L2 worked without exits until then: about 200,000 cycles of its 1000-
  // instruction steps.
  CHECK(l2.spins >= 50);
  // The event L1 injected through vmcs12 was delivered by the emulated entry.
  CHECK(l2.interrupts == 1);
  CHECK(l2.last_vector == 0x30);
}

namespace {

// L1 with EPT for L2: EPT12 in L1's memory, built on L2's EPT violations
// (L2's page g at L1's g + kL2Base), and one entry rewritten without INVEPT.
constexpr std::uint64_t kEpt12 = 0x40000, kL2Base = 0x400000, kL2Data = 0x5000, kAlt = 0x300000;

struct RemapGuest : Handler {
  std::uint64_t before = 0, after = 0;
  vmx::sim::Fiber fiber{"l2", [this] { main(); }};
  void main() {
    Core& c = Core::current();
    before = c.load(kL2Data);
    c.vmcall(0);
    after = c.load(kL2Data);
    for (;;) c.vmcall(0);
  }
};

struct EptVmm {
  RemapGuest& l2;
  L1& l1;
  std::uint64_t next_table = kEpt12 + 0x1000;
  std::uint64_t violations = 0;
  bool invept = false;  // L1 invalidates after rewriting the entry
  /// The address of the EPT12 leaf entry for gpa2, tables created on the way.
  std::uint64_t leaf_entry(Core& c, std::uint64_t gpa2) {
    std::uint64_t table = kEpt12;
    for (unsigned level = 4; level > 1; --level) {
      const std::uint64_t e = table + vmx::mmu::table_index(gpa2, level) * 8;
      std::uint64_t v = c.load(e);
      if (!(v & vmx::mmu::ept::kPermMask)) {
        v = next_table | vmx::mmu::ept::kPermMask;
        c.rep_stos(next_table, 0, 4096);
        next_table += 0x1000;
        c.store(e, v);
      }
      table = v & vmx::mmu::ept::kAddrMask;
    }
    return table + vmx::mmu::table_index(gpa2, 1) * 8;
  }
  void map(Core& c, std::uint64_t gpa2, std::uint64_t gpa1) {
    c.store(leaf_entry(c, gpa2), gpa1 | vmx::mmu::ept::kPermMask | vmx::mmu::ept::kMemTypeWb);
  }
  void run(Core& c) {
    enter_vmx(c);
    c.rep_stos(kEpt12, 0, 4096);
    c.store(kL2Base + kL2Data, 0xAAAA);
    c.store(kAlt, 0xBBBB);
    c.store(kVmcsA, vmx::cpu::kVmcsRevision, 4);
    REQUIRE(c.vmclear(kVmcsA, at_slot(c, kVmcsA)) == VmxStatus::Succeed);
    REQUIRE(c.vmptrld(kVmcsA, at_slot(c, kVmcsA)) == VmxStatus::Succeed);
    const std::pair<std::uint32_t, std::uint64_t> fields[] = {
        {field::kPinBasedControls, vmx::cpu::pin::kExternalInterruptExiting},
        {field::kProcBasedControls, vmx::cpu::proc::kHltExiting | vmx::cpu::proc::kActivateSecondaryControls},
        {field::kSecondaryControls, vmx::cpu::proc2::kEnableEpt},
        {field::kEptPointer, vmx::mmu::ept::eptp(kEpt12, 4, false)},
        {field::kExitControls, vmx::cpu::exitctl::kHostAddressSpaceSize | vmx::cpu::exitctl::kAckInterruptOnExit},
        {field::kEntryControls, vmx::cpu::entryctl::kIa32eModeGuest},
        {field::kGuestCr0, vmx::mmu::crbits::kCr0Pe},
        {field::kGuestRflags, 0x2},
        {field::kGuestRip, vmx::cpu::code_address(&l2.fiber)},
        {field::kGuestIdtrBase, vmx::cpu::code_address(static_cast<vmx::cpu::InterruptHandler*>(&l2))},
        {field::kHostRip, vmx::cpu::code_address(&l1.fiber)},
    };
    for (auto [f, val] : fields) REQUIRE(c.vmwrite(f, val) == VmxStatus::Succeed);
    bool launched = false;
    for (;;) {
      vmx::cpu::VmExit ex = launched ? c.vmresume() : c.vmlaunch();
      REQUIRE(ex.status == VmxStatus::Succeed);
      launched = true;
      Regs r = c.regs();
      std::uint64_t reason = 0;
      REQUIRE(c.vmread(field::kExitReason, reason) == VmxStatus::Succeed);
      switch (static_cast<ExitReason>(reason & 0xFFFF)) {
        case ExitReason::EptViolation: {
          std::uint64_t gpa2 = 0;
          REQUIRE(c.vmread(field::kGuestPhysicalAddress, gpa2) == VmxStatus::Succeed);
          map(c, gpa2 & ~0xFFFull, kL2Base + (gpa2 & ~0xFFFull));
          ++violations;
          break;
        }
        case ExitReason::Vmcall:
          if (l2.after) return;
          // L2's data page now maps L1's kAlt: a present entry changed.
          c.store(leaf_entry(c, kL2Data), kAlt | vmx::mmu::ept::kPermMask | vmx::mmu::ept::kMemTypeWb);
          if (invept) {
            c.store(kDesc, vmx::mmu::ept::eptp(kEpt12, 4, false));
            c.store(kDesc + 8, 0);
            c.regs()[Regs::rsi] = kDesc;
            REQUIRE(c.invept(1, vmx::mmu::ept::eptp(kEpt12, 4, false), Regs::rcx, {Regs::rsi}) == VmxStatus::Succeed);
          }
          break;
        default: break;
      }
      c.regs() = r;
    }
  }
};

void remap_without_invept(bool invept) {
  Machine m;
  L1 g;
  RemapGuest l2;
  EptVmm vmm{l2, g};
  vmm.invept = invept;
  g.body = [&](Core& c) { vmm.run(c); };
  m.add(g);
  m.run(2000);
  REQUIRE(g.body_done);
  CHECK(m.hv.vm_crash(0).empty());
  CHECK(l2.before == 0xAAAA);
  // The EPT02 entry built from the old EPT12 entry is gone either way: L2
  // reads through the new one.
  CHECK(l2.after == 0xBBBB);
  CHECK(vmm.violations >= 1);
  CHECK(m.counter("vm.l1.nested.ept02_fills") >= 2);
  if (invept) {
    CHECK(m.counter("vm.l1.nested.ept02_drops") == 1);
  } else {
    // No INVEPT: L0 saw L1's write to the write-protected EPT12 table and
    // dropped the EPT02 leaf derived from that entry.
    CHECK(m.counter("vm.l1.nested.ept02_drops") == 0);
    CHECK(m.counter("vm.l1.nested.ept12_writes") >= 1);
    CHECK(m.counter("vm.l1.nested.ept02_zaps") == 1);
    CHECK(m.exits("vcpu0", "MONITOR_TRAP_FLAG") == m.counter("vm.l1.nested.ept12_writes"));
  }
}

}  // namespace

TEST_CASE("shadow EPT: L1's write to a present EPT12 entry drops the EPT02 entry built from it, without INVEPT",
          "[nested]") {
  remap_without_invept(false);
}

TEST_CASE("shadow EPT: L1's INVEPT after changing EPT12 drops EPT02", "[nested]") { remap_without_invept(true); }

namespace {

// The L1 image is the hypervisor itself: vCPU i of the L1 VM starts in the
// L1 hypervisor's per-core loop for its core i.
struct HvImage : vmx::abi::GuestImage {
  vmx::hv::Hypervisor* hv = nullptr;
  std::uint64_t entry_point(unsigned i) override { return vmx::cpu::code_address(&hv->core_fiber(i)); }
};

// An L2 guest: VMX visibility, a memory round trip, then `target` CPUIDs.
struct CpuidGuest : vmx::abi::GuestImage, Handler {
  std::uint64_t target = 0, loops = 0;
  std::uint32_t leaf1_ecx = 0, vendor = 0;
  std::uint64_t readback = 0;
  bool done = false;
  vmx::sim::Fiber fiber{"l2", [this] { main(); }};
  std::uint64_t entry_point(unsigned) override { return vmx::cpu::code_address(&fiber); }
  void main() {
    Core& c = Core::current();
    c.lidt(this);
    leaf1_ecx = c.cpuid(1).ecx;
    vendor = c.cpuid(0x40000000u).ebx;
    for (std::uint64_t a = 0x200000; a < 0x200000 + 8 * 4096; a += 4096) c.store(a, a ^ 0x5A5A);
    for (std::uint64_t a = 0x200000; a < 0x200000 + 8 * 4096; a += 4096) readback += c.load(a) == (a ^ 0x5A5A);
    while (loops < target) {
      c.cpuid(0x40000000u);
      ++loops;
    }
    done = true;
    for (;;) c.vmcall(vmx::abi::hypercall::kNop);
  }
};

}  // namespace

TEST_CASE("nested VMX: the same hypervisor runs as L1 and runs L2 whose CPUIDs cost many L0 exits", "[nested]") {
  Machine m(true);
  HvImage image;
  vmx::hv::VmSpec l1spec{"l1", 1, 128ull << 20, &image};
  l1spec.nested_vmx = true;
  m.hv.add_vm(l1spec);
  auto p1 = vmx::cfg::defaults<vmx::hv::HypervisorParams>();
  p1.reserved_memory = 16ull << 20;
  vmx::stats::Group& l1group = m.root.subgroup("vm").subgroup("l1");
  vmx::hv::Hypervisor l1({p1}, {m.hv.vcpu_core(0, 0)}, l1spec.memory, m.pp.frequency, &l1group);
  image.hv = &l1;
  vmx::hv::Hypervisor::GuestLink link;
  link.observe = [&](Core&, std::uint64_t vmcs, vmx::events::Listener* l) { m.hv.nested_observe(0, vmcs, l); };
  link.exits = [&](vmx::events::Listener* l) { m.hv.nested_exits(0, l); };
  l1.run_as_guest(link);
  CpuidGuest g2;
  g2.target = 200;
  l1.add_vm({"l2", 1, 16ull << 20, &g2});
  m.run(20000);
  INFO("L0 notes: " << m.hv.vm_crash(0) << " / " << m.hv.vm_stop_note(0) << "; L1 notes: " << l1.vm_crash(0) << " / "
                    << l1.vm_stop_note(0));
  REQUIRE(m.hv.vm_crash(0).empty());
  REQUIRE(l1.vm_crash(0).empty());
  REQUIRE(g2.done);
  // L1 sees VMX (L0 exposes it to a nested_vmx VM); L1's CPUID handler,
  // the same code as L0's, hides it from L2 and answers the vendor leaf.
  CHECK(((g2.leaf1_ecx >> 5) & 1) == 0);
  CHECK(g2.vendor == 0x73786d76u);
  CHECK(g2.readback == 8);  // L2's memory through EPT02 = EPT12 composed with EPT01
  CHECK(g2.loops == 200);
  auto hist = [&](const std::string& path) {
    const auto* h = dynamic_cast<const vmx::stats::Histogram*>(m.root.find(path));
    return h ? h->count() : 0;
  };
  // L1's view: its VM's vCPU exited for each CPUID (listener fed by L0).
  const std::uint64_t l1_seen = hist("vm.l1.vm.l2.vcpu0.exit_reasons.CPUID.cycles");
  const std::uint64_t hw = hist("vm.l1.vcpu0.l2.exit_reasons.CPUID.cycles");
  CHECK(l1_seen >= 202);
  CHECK(hw == l1_seen);
  // L0's view: each of those cost L1 several exits of its own (VMREADs,
  // VMWRITEs, VMRESUME; its CPUID handler reads its CPUID table).
  const std::uint64_t l0_exits_of_l1 = m.counter("vm.l1.vcpu0.exits");
  CHECK(l0_exits_of_l1 >= 2 * l1_seen);  // at least its VMREAD of the exit reason and its VMRESUME per L2 CPUID
  CHECK(m.counter("vm.l1.nested.ept02_fills") >= 8);
  CHECK(m.counter("vm.l1.hypervisor.totals.exits") >= l1_seen);
}

namespace {

// L1 probing VMCS shadowing: reads and writes of shadowed and other fields,
// a round trip of a shadowed field through VMCLEAR and VMPTRLD.
struct ShadowProbe {
  static constexpr unsigned kShadowedReads = 6, kOtherReads = 3, kShadowedWrites = 4, kOtherWrites = 2;
  std::uint64_t rip_back = 0, cr3_back = 0, tsc_back = 0, unsupported_error = 0;
  VmxStatus ro_write = VmxStatus::Succeed, unsupported = VmxStatus::Succeed;
  void run(Core& c) {
    enter_vmx(c);
    c.store(kVmcsA, vmx::cpu::kVmcsRevision, 4);
    REQUIRE(c.vmclear(kVmcsA, at_slot(c, kVmcsA)) == VmxStatus::Succeed);
    REQUIRE(c.vmptrld(kVmcsA, at_slot(c, kVmcsA)) == VmxStatus::Succeed);
    std::uint64_t x = 0;
    // Shadowed (KVM's list): the exit information and the hot guest state.
    for (std::uint32_t f : {field::kExitReason, field::kExitQualification, field::kGuestPhysicalAddress,
                            field::kGuestRip, field::kGuestRflags, field::kProcBasedControls})
      REQUIRE(c.vmread(f, x) == VmxStatus::Succeed);
    for (std::uint32_t f : {field::kTscOffset, field::kExceptionBitmap, field::kHostRip})
      REQUIRE(c.vmread(f, x) == VmxStatus::Succeed);
    REQUIRE(c.vmwrite(field::kGuestRip, 0xABCDEF) == VmxStatus::Succeed);
    REQUIRE(c.vmwrite(field::kGuestCr3, 0x5000) == VmxStatus::Succeed);
    REQUIRE(c.vmwrite(field::kGuestRflags, 0x202) == VmxStatus::Succeed);
    REQUIRE(c.vmwrite(field::kEntryIntrInfo, 0) == VmxStatus::Succeed);
    REQUIRE(c.vmwrite(field::kTscOffset, 77) == VmxStatus::Succeed);
    REQUIRE(c.vmwrite(field::kExceptionBitmap, 0) == VmxStatus::Succeed);
    // A read-only field: readable through the shadow, but its VMWRITE exits
    // (its bit is set in the VMWRITE bitmap) and fails with error 13.
    ro_write = c.vmwrite(field::kExitReason, 1);
    // Shadowed fields round-trip through vmcs12: VMCLEAR writes the shadow
    // back, VMPTRLD loads it again.
    REQUIRE(c.vmclear(kVmcsA, at_slot(c, kVmcsA)) == VmxStatus::Succeed);
    REQUIRE(c.vmptrld(kVmcsA, at_slot(c, kVmcsA)) == VmxStatus::Succeed);
    REQUIRE(c.vmread(field::kGuestRip, rip_back) == VmxStatus::Succeed);
    REQUIRE(c.vmread(field::kGuestCr3, cr3_back) == VmxStatus::Succeed);
    REQUIRE(c.vmread(field::kTscOffset, tsc_back) == VmxStatus::Succeed);
    // An unsupported component (the HLAT pointer): its bit is set, so the
    // VMREAD exits and L0 fails it with error 12, shadowing or not; reading
    // the error field exits too.
    unsupported = c.vmread(0x2040, x);
    unsupported_error = error_of(c);
  }
};

void shadow_probe(bool shadow) {
  Machine m(shadow);
  L1 g;
  ShadowProbe probe;
  g.body = [&](Core& c) { probe.run(c); };
  m.add(g);
  m.run(300);
  REQUIRE(g.body_done);
  CHECK(probe.rip_back == 0xABCDEF);
  CHECK(probe.cr3_back == 0x5000);
  CHECK(probe.tsc_back == 77);
  CHECK(probe.ro_write == VmxStatus::FailValid);
  CHECK(probe.unsupported == VmxStatus::FailValid);
  CHECK(probe.unsupported_error == vmerr::kUnsupportedVmcsComponent);
  // Exactly the accesses whose bitmap bit is set exit: with shadowing the
  // 6 + 2 reads of shadowed fields and the 4 writes of shadowed fields run
  // without an exit (the last two reads, of the unsupported field and of
  // the error, exit either way).
  const std::uint64_t reads = ShadowProbe::kShadowedReads + ShadowProbe::kOtherReads + 3 + 2;
  const std::uint64_t writes = ShadowProbe::kShadowedWrites + ShadowProbe::kOtherWrites + 1;
  if (shadow) {
    CHECK(m.exits("vcpu0", "VMREAD") == ShadowProbe::kOtherReads + 1 + 2);  // + the TSC offset read back
    CHECK(m.exits("vcpu0", "VMWRITE") == ShadowProbe::kOtherWrites + 1);  // + the read-only field
  } else {
    CHECK(m.exits("vcpu0", "VMREAD") == reads);
    CHECK(m.exits("vcpu0", "VMWRITE") == writes);
  }
}

}  // namespace

TEST_CASE("VMCS shadowing: L1's VMREAD and VMWRITE exit exactly when their bitmap bit is set", "[nested]") {
  shadow_probe(true);
}

TEST_CASE("VMCS shadowing off: every VMREAD and VMWRITE of L1 exits", "[nested]") { shadow_probe(false); }
