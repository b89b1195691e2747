// VMX instructions executed in VMX non-root operation: each exits with the
// SDM's exit reason (Vol. 3C, Appendix C), exit qualification (28.2.1: the
// displacement of a memory operand, else 0), VM-exit instruction length and
// VM-exit instruction-information field (28.2.5), with its operands in the
// registers or the memory the instruction names. The root here plays the
// L0 hypervisor of a nested guest: it decodes the operand from the exit
// information and the guest's registers and memory, as KVM's nested VMX
// does (get_vmx_mem_address), then advances the guest RIP.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmx.h"
#include "cpu/vmx_harness.h"

namespace {

using vmx::cpu::Core;
using vmx::cpu::ExitReason;
using vmx::cpu::Regs;
using vmx::test::Exit;
using vmx::test::VmxHarness;
namespace field = vmx::cpu::field;
namespace insn = vmx::cpu::insn;
namespace proc2 = vmx::cpu::proc2;

constexpr unsigned R(ExitReason r) { return static_cast<unsigned>(r); }

/// What the root saw at one exit, besides Exit.
struct Seen {
  unsigned reason = 0;
  std::uint64_t qualification = 0, info = 0, length = 0;
  Regs regs;
  std::uint64_t operand = 0;  // the memory operand's first 8 bytes (memory forms)
  std::uint64_t operand_hi = 0;  // bytes 15:8 (INVEPT/INVVPID descriptors)
};

/// The linear address a memory operand designates, decoded from the exit
/// information alone (SDM Vol. 3C, 28.2.5): base + index << scaling +
/// displacement; 64-bit address size, segment base 0.
std::uint64_t decode_address(std::uint64_t info, std::uint64_t qualification, const Regs& regs) {
  std::uint64_t a = qualification;
  if (!(info & (1u << 27))) a += regs[(info >> 23) & 0xF];
  if (!(info & (1u << 22))) a += regs[(info >> 18) & 0xF] << (info & 3);
  return a;
}

// Instruction-information bits (SDM Vol. 3C, 28.2.5).
constexpr std::uint64_t kAddr64 = 2u << 7;
constexpr std::uint64_t kSegDs = 3u << 15;
constexpr std::uint64_t kRegOperand = 1u << 10;
constexpr std::uint64_t kIndexInvalid = 1u << 22;
constexpr std::uint64_t kBaseInvalid = 1u << 27;
constexpr std::uint64_t base(unsigned r) { return std::uint64_t{r} << 23; }
constexpr std::uint64_t index(unsigned r) { return std::uint64_t{r} << 18; }
constexpr std::uint64_t reg1(unsigned r) { return std::uint64_t{r} << 3; }
constexpr std::uint64_t reg2(unsigned r) { return std::uint64_t{r} << 28; }

}  // namespace

TEST_CASE("VMX instructions in non-root operation exit with the SDM's qualification, instruction information and length",
          "[vmx][nested]") {
  VmxHarness h;
  h.config.proc2 |= proc2::kEnableVmFunctions;  // VMFUNC exits instead of #UD
  constexpr std::uint64_t kData = 0x300000;     // guest memory for the operands (identity-mapped)
  constexpr std::uint64_t kVmcs12 = 0x301000;   // "the L2 VMCS" the guest names
  std::uint64_t read_value = 0;
  h.guest = [&](Core& c) {
    // Software puts memory operands where its addressing form points.
    c.regs()[Regs::rbx] = kData;
    c.store(kData + 0x10, kVmcs12);
    c.vmptrld(kVmcs12, {Regs::rbx, insn::kNoReg, 0, 0x10});  // VMPTRLD [rbx+0x10]
    c.regs()[Regs::rsi] = 2;
    c.store(kData + 0x20 + 2 * 8, kVmcs12);
    c.vmclear(kVmcs12, {Regs::rbx, Regs::rsi, 3, 0x20});      // VMCLEAR [rbx+rsi*8+0x20]
    c.regs()[Regs::r12] = kData + 0x1000;
    c.store(kData + 0x1000 - 0x200, kVmcs12);
    c.vmxon(kVmcs12, {Regs::r12, insn::kNoReg, 0, -0x200});  // VMXON [r12-0x200]
    c.vmptrst({Regs::rbx, insn::kNoReg, 0, 0x40});             // VMPTRST [rbx+0x40]
    c.vmread(field::kGuestRip, read_value, Regs::r9, Regs::rcx);      // VMREAD r9, rcx
    c.vmwrite(field::kGuestCr3, 0x5000, Regs::rsi, Regs::r11);        // VMWRITE rsi, r11
    c.store(kData + 0x80, 0xE00F);  // an INVEPT descriptor: EPTP, reserved
    c.store(kData + 0x88, 0);
    c.invept(1, 0xE00F, Regs::rdx, {Regs::rbx, insn::kNoReg, 0, 0x80});  // INVEPT rdx, [rbx+0x80]
    c.store(kData + 0x90, 7);  // an INVVPID descriptor: VPID, linear address
    c.store(kData + 0x98, 0x7000);
    c.invvpid(0, 7, 0x7000, Regs::r8, {Regs::rbx, insn::kNoReg, 0, 0x90});  // INVVPID r8, [rbx+0x90]
    c.vmlaunch();
    c.vmresume();
    c.vmxoff();
    c.vmfunc(5, 1);
    c.vmcall(0x1234);
  };
  std::vector<Seen> seen;
  h.on_exit = [&](Core& c, const Exit& e) {
    Seen s;
    s.reason = e.reason;
    s.qualification = e.qualification;
    s.regs = e.regs;
    c.vmread(field::kVmxInstructionInfo, s.info);
    c.vmread(field::kExitInstructionLength, s.length);
    const bool memory_form = e.reason == R(ExitReason::Vmptrld) || e.reason == R(ExitReason::Vmclear) ||
                             e.reason == R(ExitReason::Vmxon) || e.reason == R(ExitReason::Vmptrst) ||
                             e.reason == R(ExitReason::Invept) || e.reason == R(ExitReason::Invvpid);
    if (memory_form) {
      // Paging is off in this guest and EPT is the identity: the linear
      // address is the host-physical one.
      const std::uint64_t a = decode_address(s.info, s.qualification, e.regs);
      s.operand = c.load(a);
      s.operand_hi = c.load(a + 8);
    }
    if (e.reason == R(ExitReason::Vmread)) c.regs()[(s.info >> 3) & 0xF] = 0xFEEDull;  // emulated VMREAD result
    seen.push_back(s);
    std::uint64_t rip = 0;
    c.vmread(field::kGuestRip, rip);
    c.vmwrite(field::kGuestRip, rip + s.length);
  };
  h.run();
  REQUIRE(h.setup_errors.empty());
  REQUIRE(h.done);
  REQUIRE(seen.size() == 13);

  // VMPTRLD [rbx+0x10]: 0F C7 /6, ModRM + disp8: 4 bytes.
  CHECK(seen[0].reason == R(ExitReason::Vmptrld));
  CHECK(seen[0].qualification == 0x10);
  CHECK(seen[0].info == (kAddr64 | kSegDs | kIndexInvalid | base(Regs::rbx)));
  CHECK(seen[0].length == 4);
  CHECK(seen[0].operand == kVmcs12);
  // VMCLEAR [rbx+rsi*8+0x20]: 66 0F C7 /6, ModRM, SIB, disp8: 6 bytes.
  CHECK(seen[1].reason == R(ExitReason::Vmclear));
  CHECK(seen[1].qualification == 0x20);
  CHECK(seen[1].info == (3 | kAddr64 | kSegDs | index(Regs::rsi) | base(Regs::rbx)));
  CHECK(seen[1].length == 6);
  CHECK(seen[1].operand == kVmcs12);
  // VMXON [r12-0x200]: REX F3 0F C7 /6, ModRM, SIB (r12 needs one), disp32:
  // the displacement sign-extended into the qualification.
  CHECK(seen[2].reason == R(ExitReason::Vmxon));
  CHECK(seen[2].qualification == static_cast<std::uint64_t>(-0x200));
  CHECK(seen[2].info == (kAddr64 | kSegDs | kIndexInvalid | base(Regs::r12)));
  CHECK(seen[2].length == 10);
  CHECK(seen[2].operand == kVmcs12);
  // VMPTRST [rbx+0x40]: 0F C7 /7, ModRM + disp8.
  CHECK(seen[3].reason == R(ExitReason::Vmptrst));
  CHECK(seen[3].qualification == 0x40);
  CHECK(seen[3].info == (kAddr64 | kSegDs | kIndexInvalid | base(Regs::rbx)));
  CHECK(seen[3].length == 4);
  // VMREAD r9, rcx: REX 0F 78 /r; the encoding in reg2 (RCX), the
  // destination in reg1 (R9), register form, no displacement.
  CHECK(seen[4].reason == R(ExitReason::Vmread));
  CHECK(seen[4].qualification == 0);
  CHECK(seen[4].info == (kRegOperand | reg1(Regs::r9) | reg2(Regs::rcx)));
  CHECK(seen[4].regs[Regs::rcx] == field::kGuestRip);
  CHECK(seen[4].length == 4);
  CHECK(read_value == 0xFEED);  // what the root put in reg1
  // VMWRITE rsi, r11: the encoding in reg2 (RSI), the value in reg1 (R11).
  CHECK(seen[5].reason == R(ExitReason::Vmwrite));
  CHECK(seen[5].qualification == 0);
  CHECK(seen[5].info == (kRegOperand | reg1(Regs::r11) | reg2(Regs::rsi)));
  CHECK(seen[5].regs[Regs::rsi] == field::kGuestCr3);
  CHECK(seen[5].regs[Regs::r11] == 0x5000);
  CHECK(seen[5].length == 4);
  // INVEPT rdx, [rbx+0x80]: 66 0F 38 80 /r, ModRM + disp32 (0x80 does not
  // fit a disp8); the type in reg2, the descriptor in memory.
  CHECK(seen[6].reason == R(ExitReason::Invept));
  CHECK(seen[6].qualification == 0x80);
  CHECK(seen[6].info == (kAddr64 | kSegDs | kIndexInvalid | base(Regs::rbx) | reg2(Regs::rdx)));
  CHECK(seen[6].regs[Regs::rdx] == 1);
  CHECK(seen[6].length == 9);
  CHECK(seen[6].operand == 0xE00F);
  // INVVPID r8, [rbx+0x90]: REX 66 0F 38 81 /r, ModRM + disp32.
  CHECK(seen[7].reason == R(ExitReason::Invvpid));
  CHECK(seen[7].qualification == 0x90);
  CHECK(seen[7].info == (kAddr64 | kSegDs | kIndexInvalid | base(Regs::rbx) | reg2(Regs::r8)));
  CHECK(seen[7].regs[Regs::r8] == 0);
  CHECK(seen[7].length == 10);
  CHECK(seen[7].operand == 7);
  CHECK(seen[7].operand_hi == 0x7000);
  // VMLAUNCH, VMRESUME, VMXOFF: 0F 01 C2/C3/C4, no operands.
  const unsigned plain[] = {R(ExitReason::Vmlaunch), R(ExitReason::Vmresume), R(ExitReason::Vmxoff)};
  for (unsigned i = 0; i < 3; ++i) {
    CHECK(seen[8 + i].reason == plain[i]);
    CHECK(seen[8 + i].qualification == 0);
    CHECK(seen[8 + i].info == 0);
    CHECK(seen[8 + i].length == 3);
  }
  // VMFUNC with function 5 not enabled in the VM-function controls: exit
  // 59 with EAX and ECX as the guest set them.
  CHECK(seen[11].reason == R(ExitReason::Vmfunc));
  CHECK(seen[11].regs[Regs::rax] == 5);
  CHECK(seen[11].regs[Regs::rcx] == 1);
  CHECK(seen[11].length == 3);
  // VMCALL: 0F 01 C1, the number in RAX.
  CHECK(seen[12].reason == R(ExitReason::Vmcall));
  CHECK(seen[12].length == 3);
  CHECK(seen[12].regs[Regs::rax] == 0x1234);
}
