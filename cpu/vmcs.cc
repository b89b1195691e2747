#include "cpu/vmcs.h"

#include <initializer_list>

namespace vmx::cpu {

namespace {

// Width of the field, SDM Vol. 3C 25.11.2: 0 16-bit, 1 64-bit, 2 32-bit, 3 natural.
unsigned width_of(std::uint32_t enc) { return (enc >> 13) & 3u; }

std::bitset<512> make_supported() {
  std::bitset<512> s;
  using namespace field;
  for (std::uint32_t enc :
       {kVpid, kPostedIntrNv, kEncryptionKeyId, kGuestIntrStatus, kGuestPmlIndex, kPmlAddress, kVirtualApicPage, kPostedIntrDesc, kEoiExitBitmap0,
        kEoiExitBitmap0 + 2, kEoiExitBitmap0 + 4, kEoiExitBitmap0 + 6, kIoBitmapA, kIoBitmapB, kMsrBitmap, kTscOffset, kEptPointer, kVmFunctionControls, kVmreadBitmap, kVmwriteBitmap,
        kGuestPhysicalAddress, kVmcsLinkPointer, kGuestIa32Efer, kGuestPerfGlobalCtrl, kHostPerfGlobalCtrl, kPinBasedControls, kProcBasedControls,
        kExceptionBitmap, kPfErrorCodeMask, kPfErrorCodeMatch, kCr3TargetCount, kExitControls,
        kEntryControls, kEntryIntrInfo, kEntryExceptionErrorCode, kEntryInstructionLength,
        kSecondaryControls, kVmInstructionError, kExitReason, kExitIntrInfo, kExitIntrErrorCode,
        kIdtVectoringInfo, kIdtVectoringErrorCode, kExitInstructionLength, kVmxInstructionInfo,
        kGuestSsAccessRights, kGuestInterruptibility, kGuestActivityState, kPreemptionTimerValue, kCr0GuestHostMask,
        kCr4GuestHostMask, kCr0ReadShadow, kCr4ReadShadow, kExitQualification, kGuestLinearAddress,
        kGuestCr0, kGuestCr3, kGuestCr4, kGuestIdtrBase, kGuestRsp, kGuestRip, kGuestRflags, kHostCr0,
        kHostCr3, kHostCr4, kHostIdtrBase, kHostRsp, kHostRip, kExitMsrLoadAddr, kEntryMsrLoadAddr,
        kExitMsrLoadCount, kEntryMsrLoadCount})
    s.set(Vmcs::slot(enc));
  return s;
}

const std::bitset<512>& supported_slots() {
  static const std::bitset<512> s = make_supported();
  return s;
}

}  // namespace

bool Vmcs::supported(std::uint32_t enc) {
  if (enc & ~0x7FFFu) return false;                     // bits 31:15 must be 0
  if ((enc & 1u) && width_of(enc) != 1) return false;   // "high" access only for 64-bit fields
  if ((enc >> 12) & 1u) return false;                   // bit 12 reserved
  // The index is bits 9:1 (SDM Vol. 3C, 25.11.2) but a slot keeps only bits
  // 5:1; no implemented field has a higher index, so reject those rather than
  // alias them (e.g. the HLAT pointer, 0x2040, onto I/O bitmap A, 0x2000).
  if ((enc >> 6) & 0xFu) return false;
  return supported_slots().test(slot(enc));
}

Vmcs::Access Vmcs::read(std::uint32_t enc, std::uint64_t& value) const {
  if (!supported(enc)) return Access::Unsupported;
  std::uint64_t v = m_fields[slot(enc)];
  if (enc & 1u) v >>= 32;  // high half of a 64-bit field
  switch (width_of(enc)) {
    case 0: v &= 0xFFFF; break;
    case 2: v &= 0xFFFFFFFF; break;
    default: break;
  }
  value = v;
  return Access::Ok;
}

Vmcs::Access Vmcs::write(std::uint32_t enc, std::uint64_t value, bool any_field) {
  if (!supported(enc)) return Access::Unsupported;
  if (read_only(enc) && !any_field) return Access::ReadOnly;
  std::uint64_t& f = m_fields[slot(enc)];
  if (enc & 1u) {
    f = (f & 0xFFFFFFFFull) | (value << 32);
    return Access::Ok;
  }
  switch (width_of(enc)) {
    case 0: f = value & 0xFFFF; break;
    case 2: f = value & 0xFFFFFFFF; break;
    default: f = value; break;
  }
  return Access::Ok;
}

const char* exit_reason_name(unsigned reason) {
  switch (static_cast<ExitReason>(reason)) {
    case ExitReason::ExceptionOrNmi: return "EXCEPTION_NMI";
    case ExitReason::ExternalInterrupt: return "EXTERNAL_INTERRUPT";
    case ExitReason::TripleFault: return "TRIPLE_FAULT";
    case ExitReason::InterruptWindow: return "INTERRUPT_WINDOW";
    case ExitReason::Cpuid: return "CPUID";
    case ExitReason::Hlt: return "HLT";
    case ExitReason::Invlpg: return "INVLPG";
    case ExitReason::Rdpmc: return "RDPMC";
    case ExitReason::Rdtsc: return "RDTSC";
    case ExitReason::Vmcall: return "VMCALL";
    case ExitReason::Vmclear: return "VMCLEAR";
    case ExitReason::Vmlaunch: return "VMLAUNCH";
    case ExitReason::Vmptrld: return "VMPTRLD";
    case ExitReason::Vmptrst: return "VMPTRST";
    case ExitReason::Vmread: return "VMREAD";
    case ExitReason::Vmresume: return "VMRESUME";
    case ExitReason::Vmwrite: return "VMWRITE";
    case ExitReason::Vmxoff: return "VMXOFF";
    case ExitReason::Vmxon: return "VMXON";
    case ExitReason::CrAccess: return "CR_ACCESS";
    case ExitReason::IoInstruction: return "IO_INSTRUCTION";
    case ExitReason::Rdmsr: return "MSR_READ";
    case ExitReason::Wrmsr: return "MSR_WRITE";
    case ExitReason::EntryFailGuestState: return "INVALID_GUEST_STATE";
    case ExitReason::EntryFailMsrLoading: return "MSR_LOAD_FAIL";
    case ExitReason::MonitorTrapFlag: return "MONITOR_TRAP_FLAG";
    case ExitReason::VirtualizedEoi: return "VIRTUALIZED_EOI";
    case ExitReason::EptViolation: return "EPT_VIOLATION";
    case ExitReason::EptMisconfig: return "EPT_MISCONFIG";
    case ExitReason::Invept: return "INVEPT";
    case ExitReason::PreemptionTimer: return "PREEMPTION_TIMER";
    case ExitReason::Invvpid: return "INVVPID";
    case ExitReason::Invpcid: return "INVPCID";
    case ExitReason::Vmfunc: return "VMFUNC";
    case ExitReason::PmlFull: return "PML_FULL";
  }
  static thread_local char buf[24];
  unsigned n = reason;
  char tmp[12];
  int i = 0;
  do { tmp[i++] = static_cast<char>('0' + n % 10); n /= 10; } while (n && i < 11);
  int j = 0;
  for (const char* p = "REASON_"; *p; ++p) buf[j++] = *p;
  while (i) buf[j++] = tmp[--i];
  buf[j] = 0;
  return buf;
}

}  // namespace vmx::cpu
