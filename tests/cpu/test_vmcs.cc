// Exact tests of the VMCS field store (cpu/vmcs) and the exit-information
// helpers of cpu/vmx.h, against SDM Vol. 3C Appendix B, Appendix C and 28.2.1.
#include "cpu/vmcs.h"

#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "cpu/vmx.h"

using namespace vmx::cpu;
using Access = Vmcs::Access;

namespace {

/// Every encoding this model supports (the list in cpu/vmcs.cc).
const std::vector<std::uint32_t>& all_fields() {
  using namespace field;
  static const std::vector<std::uint32_t> v = {
      kVpid, kPostedIntrNv, kIoBitmapA, kIoBitmapB, kMsrBitmap, kTscOffset, kEptPointer,
      kGuestPhysicalAddress, kVmcsLinkPointer, kGuestIa32Efer, kPinBasedControls, kProcBasedControls,
      kExceptionBitmap, kPfErrorCodeMask, kPfErrorCodeMatch, kCr3TargetCount, kExitControls,
      kEntryControls, kEntryIntrInfo, kEntryExceptionErrorCode, kEntryInstructionLength,
      kSecondaryControls, kVmInstructionError, kExitReason, kExitIntrInfo, kExitIntrErrorCode,
      kIdtVectoringInfo, kIdtVectoringErrorCode, kExitInstructionLength, kVmxInstructionInfo,
      kGuestSsAccessRights, kGuestInterruptibility, kGuestActivityState, kPreemptionTimerValue,
      kCr0GuestHostMask, kCr4GuestHostMask, kCr0ReadShadow, kCr4ReadShadow, kExitQualification,
      kGuestLinearAddress, kGuestCr0, kGuestCr3, kGuestCr4, kGuestIdtrBase, kGuestRsp, kGuestRip,
      kGuestRflags, kHostCr0, kHostCr3, kHostCr4, kHostIdtrBase, kHostRsp, kHostRip};
  return v;
}

unsigned width(std::uint32_t enc) { return (enc >> 13) & 3u; }  // 0:16 1:64 2:32 3:natural

}  // namespace

TEST_CASE("encodings follow the SDM layout", "[vmcs]") {
  // SDM 25.11.2: bit 0 access type, 9:1 index, 11:10 type, 12 reserved, 14:13 width.
  CHECK(field::kVpid == 0x0000);
  CHECK(field::kEptPointer == 0x201A);
  CHECK(field::kExitReason == 0x4402);
  CHECK(field::kExitQualification == 0x6400);
  CHECK(field::kGuestRip == 0x681E);
  CHECK(field::kHostRip == 0x6C16);
  CHECK(Vmcs::slot(field::kTscOffset) == ((1u << 7) | (0u << 5) | 8u));
  CHECK(Vmcs::slot(field::kGuestRip) == ((3u << 7) | (2u << 5) | 15u));
  CHECK(Vmcs::read_only(field::kExitReason));
  CHECK(Vmcs::read_only(field::kGuestPhysicalAddress));
  CHECK(Vmcs::read_only(field::kExitQualification));
  CHECK_FALSE(Vmcs::read_only(field::kGuestRip));
}

TEST_CASE("supported: known encodings and their high halves", "[vmcs]") {
  for (std::uint32_t enc : all_fields()) {
    CAPTURE(enc);
    CHECK(Vmcs::supported(enc));
    // "High" access (bit 0 = 1) exists only for 64-bit fields.
    CHECK(Vmcs::supported(enc | 1) == (width(enc) == 1));
  }
}

TEST_CASE("supported: malformed and unknown encodings are rejected", "[vmcs]") {
  // Bit 12 reserved.
  CHECK_FALSE(Vmcs::supported(field::kProcBasedControls | 0x1000));
  CHECK_FALSE(Vmcs::supported(field::kGuestRip | 0x1000));
  // High access of a 16-bit, 32-bit or natural-width field.
  CHECK_FALSE(Vmcs::supported(field::kVpid | 1));
  CHECK_FALSE(Vmcs::supported(field::kExitReason | 1));
  CHECK_FALSE(Vmcs::supported(field::kGuestCr3 | 1));
  // Bits 31:15 must be zero.
  CHECK_FALSE(Vmcs::supported(field::kPinBasedControls | 0x8000));
  CHECK_FALSE(Vmcs::supported(field::kVpid | 0x1'0000));
  CHECK_FALSE(Vmcs::supported(0x8000'0000u | field::kGuestRip));
  // Well formed but not implemented by this model.
  CHECK_FALSE(Vmcs::supported(0x0004));  // EPTP index
  CHECK_FALSE(Vmcs::supported(0x4020));
  CHECK_FALSE(Vmcs::supported(0x6C1C));
  // Index bits 9:6 nonzero: SDM fields such as the HLAT pointer (0x2040,
  // index 32) must not alias the field with index 0 of the same width/type.
  CHECK_FALSE(Vmcs::supported(0x2040));
  CHECK_FALSE(Vmcs::supported(0x2041));
  CHECK_FALSE(Vmcs::supported(field::kPinBasedControls | 0x40));
  CHECK_FALSE(Vmcs::supported(field::kGuestCr0 | 0x200));
}

TEST_CASE("VMREAD/VMWRITE round trip truncates to the field width", "[vmcs]") {
  Vmcs v;
  std::uint64_t out = 0;
  const std::uint64_t pattern = 0xFEDC'BA98'7654'3210ull;

  REQUIRE(v.write(field::kVpid, pattern) == Access::Ok);
  REQUIRE(v.read(field::kVpid, out) == Access::Ok);
  CHECK(out == 0x3210);
  CHECK(v.get(field::kVpid) == 0x3210);

  REQUIRE(v.write(field::kPinBasedControls, pattern) == Access::Ok);
  REQUIRE(v.read(field::kPinBasedControls, out) == Access::Ok);
  CHECK(out == 0x7654'3210);
  CHECK(v.get(field::kPinBasedControls) == 0x7654'3210);

  REQUIRE(v.write(field::kTscOffset, pattern) == Access::Ok);
  REQUIRE(v.read(field::kTscOffset, out) == Access::Ok);
  CHECK(out == pattern);

  REQUIRE(v.write(field::kGuestRip, pattern) == Access::Ok);
  REQUIRE(v.read(field::kGuestRip, out) == Access::Ok);
  CHECK(out == pattern);

  // A field set wider by the processor still reads back truncated.
  v.set(field::kGuestActivityState, pattern);
  REQUIRE(v.read(field::kGuestActivityState, out) == Access::Ok);
  CHECK(out == 0x7654'3210);
}

TEST_CASE("every supported field has its own storage", "[vmcs]") {
  Vmcs v;
  const auto& f = all_fields();
  for (std::size_t i = 0; i < f.size(); ++i) v.set(f[i], 0x1000 + i);
  for (std::size_t i = 0; i < f.size(); ++i) {
    CAPTURE(f[i]);
    std::uint64_t out = 0;
    REQUIRE(v.read(f[i], out) == Access::Ok);
    CHECK(out == 0x1000 + i);
  }
}

TEST_CASE("64-bit fields: high access reads and writes bits 63:32", "[vmcs]") {
  Vmcs v;
  std::uint64_t out = 0;
  REQUIRE(v.write(field::kTscOffset, 0x1111'2222'3333'4444ull) == Access::Ok);
  REQUIRE(v.read(field::kTscOffset | 1, out) == Access::Ok);
  CHECK(out == 0x1111'2222);

  // VMWRITE of the high half writes bits 31:0 of the source to bits 63:32.
  REQUIRE(v.write(field::kTscOffset | 1, 0xAAAA'BBBB'CCCC'DDDDull) == Access::Ok);
  REQUIRE(v.read(field::kTscOffset, out) == Access::Ok);
  CHECK(out == 0xCCCC'DDDD'3333'4444ull);
  REQUIRE(v.read(field::kTscOffset | 1, out) == Access::Ok);
  CHECK(out == 0xCCCC'DDDD);

  // Read-only 64-bit field: high half readable, not writable.
  v.set(field::kGuestPhysicalAddress, 0x0000'0001'4000'0ABCull);
  REQUIRE(v.read(field::kGuestPhysicalAddress | 1, out) == Access::Ok);
  CHECK(out == 0x1);
  CHECK(v.write(field::kGuestPhysicalAddress | 1, 5) == Access::ReadOnly);
}

TEST_CASE("VMWRITE to exit-information fields fails as read-only", "[vmcs]") {
  Vmcs v;
  for (std::uint32_t enc : {field::kGuestPhysicalAddress, field::kVmInstructionError, field::kExitReason,
                            field::kExitIntrInfo, field::kExitIntrErrorCode, field::kIdtVectoringInfo,
                            field::kIdtVectoringErrorCode, field::kExitInstructionLength,
                            field::kVmxInstructionInfo, field::kExitQualification,
                            field::kGuestLinearAddress}) {
    CAPTURE(enc);
    v.set(enc, 0x30);
    CHECK(v.write(enc, 0x99) == Access::ReadOnly);
    std::uint64_t out = 0;
    REQUIRE(v.read(enc, out) == Access::Ok);
    CHECK(out == 0x30);
  }
}

TEST_CASE("unsupported encodings: VMREAD/VMWRITE fail and change nothing", "[vmcs]") {
  Vmcs v;
  v.set(field::kIoBitmapA, 0xA000);
  v.set(field::kPinBasedControls, 0x16);
  std::uint64_t out = 0x55;
  CHECK(v.read(0x4020, out) == Access::Unsupported);
  CHECK(out == 0x55);
  CHECK(v.read(field::kPinBasedControls | 1, out) == Access::Unsupported);
  CHECK(out == 0x55);
  // Unsupported is reported before read-only (SDM VMWRITE pseudocode).
  CHECK(v.write(0x4420, 1) == Access::Unsupported);
  CHECK(v.write(field::kExitReason | 0x1000, 1) == Access::Unsupported);
  CHECK(v.write(0x2040, 0xBAD) == Access::Unsupported);
  CHECK(v.write(field::kPinBasedControls | 0x40, 0xBAD) == Access::Unsupported);
  CHECK(v.get(field::kIoBitmapA) == 0xA000);
  CHECK(v.get(field::kPinBasedControls) == 0x16);
}

TEST_CASE("VmcsStore keeps one VMCS per region", "[vmcs]") {
  VmcsStore s;
  Vmcs& a = s.at(0x1000);
  Vmcs& b = s.at(0x2000);
  CHECK(&s.at(0x1000) == &a);
  CHECK(&a != &b);
  CHECK(a.region() == 0x1000);
  CHECK(b.region() == 0x2000);
  CHECK_FALSE(a.launched());
  a.set(field::kGuestRip, 7);
  CHECK(s.at(0x1000).get(field::kGuestRip) == 7);
  CHECK(b.get(field::kGuestRip) == 0);
}

TEST_CASE("exit reason names (SDM Vol. 3C, Appendix C)", "[vmx]") {
  CHECK(static_cast<unsigned>(ExitReason::Cpuid) == 10);
  CHECK(static_cast<unsigned>(ExitReason::EptViolation) == 48);
  CHECK(static_cast<unsigned>(ExitReason::IoInstruction) == 30);
  CHECK(std::string(exit_reason_name(10)) == "CPUID");
  CHECK(std::string(exit_reason_name(48)) == "EPT_VIOLATION");
  CHECK(std::string(exit_reason_name(49)) == "EPT_MISCONFIG");
  CHECK(std::string(exit_reason_name(0)) == "EXCEPTION_NMI");
  CHECK(std::string(exit_reason_name(30)) == "IO_INSTRUCTION");
  CHECK(std::string(exit_reason_name(31)) == "MSR_READ");
  CHECK(std::string(exit_reason_name(52)) == "PREEMPTION_TIMER");
  CHECK(std::string(exit_reason_name(3)) == "REASON_3");
  CHECK(std::string(exit_reason_name(69)) == "REASON_69");
  CHECK(std::string(exit_reason_name(1000)) == "REASON_1000");
  CHECK(std::string(exit_reason_name(4294967295u)) == "REASON_4294967295");
}

TEST_CASE("exit qualification layouts (SDM Vol. 3C, 28.2.1)", "[vmx]") {
  // Table 28-5: size-1 in 2:0, direction (1 = IN) in 3, port in 31:16.
  CHECK(qual::io(1, false, 0x3F8) == 0x03F8'0000);
  CHECK(qual::io(2, false, 0x3F8) == 0x03F8'0001);
  CHECK(qual::io(4, true, 0x60) == 0x0060'000B);
  CHECK(qual::io(1, true, 0xFFFF) == 0xFFFF'0008);
  // Table 28-3: CR number in 3:0, access type in 5:4, GPR in 11:8.
  CHECK(qual::cr_access(3, qual::kCrMovTo, 0) == 0x003);          // MOV CR3, RAX
  CHECK(qual::cr_access(3, qual::kCrMovFrom, 3) == 0x313);        // MOV RBX, CR3
  CHECK(qual::cr_access(8, qual::kCrMovTo, 15) == 0xF08);         // MOV CR8, R15
  CHECK(qual::cr_access(0, 2, 0) == 0x020);                       // CLTS
  // Table 28-7 bits.
  CHECK(qual::kEptGlaValid == 0x80);
  CHECK(qual::kEptGlaTranslation == 0x100);
  CHECK((qual::kEptRead | qual::kEptWrite | qual::kEptFetch) == 0x7);
  CHECK((qual::kEptReadable | qual::kEptWritable | qual::kEptExecutable) == 0x38);
}
