// VMX architectural constants: VMCS field encodings, VM-execution control
// bits, exit reasons and exit-qualification layouts, numbered as in the
// Intel 64 and IA-32 Architectures Software Developer's Manual (SDM),
// Volume 3C, Appendices B (field encodings) and C (basic exit reasons), and
// Chapters 25 (VM-execution controls) and 28 (VM exits).
#pragma once

#include <cstdint>

#include "mmu/x86_fault.h"

namespace vmx::cpu {

// --- VMCS field encodings (SDM Vol. 3C, Appendix B) -------------------------
namespace field {
// 16-bit control
constexpr std::uint32_t kVpid = 0x0000;
constexpr std::uint32_t kPostedIntrNv = 0x0002;
/// Memory-encryption key ID of the guest (SEV-like confidential VMs,
/// models/mem_crypt.h): 0 runs the guest unencrypted; 1..key_ids encrypts
/// its private pages with that key. Not an SDM field: vmxsim's stand-in
/// for the ASID and SEV enable of AMD's VMCB (AMD64 APM Vol. 2, 15.34.3),
/// in an encoding the SDM leaves unassigned.
constexpr std::uint32_t kEncryptionKeyId = 0x0016;
// 16-bit guest state
constexpr std::uint32_t kGuestIntrStatus = 0x0810;  // RVI in bits 7:0, SVI in bits 15:8
constexpr std::uint32_t kGuestPmlIndex = 0x0812;    // next page-modification log entry (29.3.6)
// 64-bit control
constexpr std::uint32_t kIoBitmapA = 0x2000;
constexpr std::uint32_t kIoBitmapB = 0x2002;
constexpr std::uint32_t kMsrBitmap = 0x2004;
constexpr std::uint32_t kExitMsrLoadAddr = 0x2008;   // VM-exit MSR-load list (25.7.2)
constexpr std::uint32_t kEntryMsrLoadAddr = 0x200A;  // VM-entry MSR-load list (25.8.2)
constexpr std::uint32_t kPmlAddress = 0x200E;  // the 4 KiB page-modification log (25.6.18)
constexpr std::uint32_t kTscOffset = 0x2010;
constexpr std::uint32_t kVirtualApicPage = 0x2012;
constexpr std::uint32_t kPostedIntrDesc = 0x2016;
constexpr std::uint32_t kEoiExitBitmap0 = 0x201C;  // vectors 0-63; 0x201E, 0x2020, 0x2022 the rest
constexpr std::uint32_t kEptPointer = 0x201A;
constexpr std::uint32_t kVmFunctionControls = 0x2018;
constexpr std::uint32_t kVmreadBitmap = 0x2026;   // VMCS shadowing (25.6.15)
constexpr std::uint32_t kVmwriteBitmap = 0x2028;
// 64-bit read-only data
constexpr std::uint32_t kGuestPhysicalAddress = 0x2400;
// 64-bit guest state
constexpr std::uint32_t kVmcsLinkPointer = 0x2800;
constexpr std::uint32_t kGuestIa32Efer = 0x2806;
constexpr std::uint32_t kGuestPerfGlobalCtrl = 0x2808;
// 64-bit host state
constexpr std::uint32_t kHostPerfGlobalCtrl = 0x2C04;
// 32-bit control
constexpr std::uint32_t kPinBasedControls = 0x4000;
constexpr std::uint32_t kProcBasedControls = 0x4002;
constexpr std::uint32_t kExceptionBitmap = 0x4004;
constexpr std::uint32_t kPfErrorCodeMask = 0x4006;
constexpr std::uint32_t kPfErrorCodeMatch = 0x4008;
constexpr std::uint32_t kCr3TargetCount = 0x400A;
constexpr std::uint32_t kExitControls = 0x400C;
constexpr std::uint32_t kExitMsrLoadCount = 0x4010;
constexpr std::uint32_t kEntryControls = 0x4012;
constexpr std::uint32_t kEntryMsrLoadCount = 0x4014;
constexpr std::uint32_t kEntryIntrInfo = 0x4016;
constexpr std::uint32_t kEntryExceptionErrorCode = 0x4018;
constexpr std::uint32_t kEntryInstructionLength = 0x401A;
constexpr std::uint32_t kSecondaryControls = 0x401E;
// 32-bit read-only data
constexpr std::uint32_t kVmInstructionError = 0x4400;
constexpr std::uint32_t kExitReason = 0x4402;
constexpr std::uint32_t kExitIntrInfo = 0x4404;
constexpr std::uint32_t kExitIntrErrorCode = 0x4406;
constexpr std::uint32_t kIdtVectoringInfo = 0x4408;
constexpr std::uint32_t kIdtVectoringErrorCode = 0x440A;
constexpr std::uint32_t kExitInstructionLength = 0x440C;
constexpr std::uint32_t kVmxInstructionInfo = 0x440E;
// 32-bit guest state
constexpr std::uint32_t kGuestSsAccessRights = 0x4818;  // DPL in bits 6:5 is the CPL
constexpr std::uint32_t kGuestInterruptibility = 0x4824;
constexpr std::uint32_t kGuestActivityState = 0x4826;
constexpr std::uint32_t kPreemptionTimerValue = 0x482E;
// natural-width control
constexpr std::uint32_t kCr0GuestHostMask = 0x6000;
constexpr std::uint32_t kCr4GuestHostMask = 0x6002;
constexpr std::uint32_t kCr0ReadShadow = 0x6004;
constexpr std::uint32_t kCr4ReadShadow = 0x6006;
// natural-width read-only data
constexpr std::uint32_t kExitQualification = 0x6400;
constexpr std::uint32_t kGuestLinearAddress = 0x640A;
// natural-width guest state
constexpr std::uint32_t kGuestCr0 = 0x6800;
constexpr std::uint32_t kGuestCr3 = 0x6802;
constexpr std::uint32_t kGuestCr4 = 0x6804;
constexpr std::uint32_t kGuestIdtrBase = 0x6818;
constexpr std::uint32_t kGuestRsp = 0x681C;
constexpr std::uint32_t kGuestRip = 0x681E;
constexpr std::uint32_t kGuestRflags = 0x6820;
// natural-width host state
constexpr std::uint32_t kHostCr0 = 0x6C00;
constexpr std::uint32_t kHostCr3 = 0x6C02;
constexpr std::uint32_t kHostCr4 = 0x6C04;
constexpr std::uint32_t kHostIdtrBase = 0x6C0E;
constexpr std::uint32_t kHostRsp = 0x6C14;
constexpr std::uint32_t kHostRip = 0x6C16;
}  // namespace field

// --- VM-execution controls (SDM Vol. 3C, 25.6) ------------------------------
namespace pin {  // Table 25-5
constexpr std::uint32_t kExternalInterruptExiting = 1u << 0;
constexpr std::uint32_t kNmiExiting = 1u << 3;
constexpr std::uint32_t kVirtualNmis = 1u << 5;
constexpr std::uint32_t kPreemptionTimer = 1u << 6;
constexpr std::uint32_t kPostedInterrupts = 1u << 7;
}  // namespace pin
namespace proc {  // Table 25-6
constexpr std::uint32_t kInterruptWindowExiting = 1u << 2;
constexpr std::uint32_t kUseTscOffsetting = 1u << 3;
constexpr std::uint32_t kHltExiting = 1u << 7;
constexpr std::uint32_t kInvlpgExiting = 1u << 9;
constexpr std::uint32_t kMwaitExiting = 1u << 10;
constexpr std::uint32_t kRdpmcExiting = 1u << 11;
constexpr std::uint32_t kRdtscExiting = 1u << 12;
constexpr std::uint32_t kCr3LoadExiting = 1u << 15;
constexpr std::uint32_t kCr3StoreExiting = 1u << 16;
constexpr std::uint32_t kCr8LoadExiting = 1u << 19;
constexpr std::uint32_t kCr8StoreExiting = 1u << 20;
constexpr std::uint32_t kUseTprShadow = 1u << 21;
constexpr std::uint32_t kMonitorTrapFlag = 1u << 27;
constexpr std::uint32_t kUnconditionalIoExiting = 1u << 24;
constexpr std::uint32_t kUseIoBitmaps = 1u << 25;
constexpr std::uint32_t kUseMsrBitmaps = 1u << 28;
constexpr std::uint32_t kActivateSecondaryControls = 1u << 31;
}  // namespace proc
namespace proc2 {  // Table 25-7
constexpr std::uint32_t kVirtualizeApicAccesses = 1u << 0;
constexpr std::uint32_t kEnableEpt = 1u << 1;
constexpr std::uint32_t kEnableRdtscp = 1u << 3;
constexpr std::uint32_t kVirtualizeX2apic = 1u << 4;
constexpr std::uint32_t kEnableVpid = 1u << 5;
constexpr std::uint32_t kUnrestrictedGuest = 1u << 7;
constexpr std::uint32_t kApicRegisterVirtualization = 1u << 8;
constexpr std::uint32_t kVirtualInterruptDelivery = 1u << 9;
constexpr std::uint32_t kEnableInvpcid = 1u << 12;
constexpr std::uint32_t kEnableVmFunctions = 1u << 13;
constexpr std::uint32_t kVmcsShadowing = 1u << 14;
constexpr std::uint32_t kEnablePml = 1u << 17;
constexpr std::uint32_t kModeBasedExecute = 1u << 22;
/// The controls the model implements (IA32_VMX_PROCBASED_CTLS2 allowed-1).
constexpr std::uint32_t kSupported = kEnableEpt | kVirtualizeX2apic | kEnableVpid | kApicRegisterVirtualization |
                                     kVirtualInterruptDelivery | kEnableInvpcid | kEnableVmFunctions |
                                     kModeBasedExecute;
}  // namespace proc2
namespace exitctl {  // Table 25-13
constexpr std::uint32_t kHostAddressSpaceSize = 1u << 9;
constexpr std::uint32_t kLoadPerfGlobalCtrl = 1u << 12;
constexpr std::uint32_t kAckInterruptOnExit = 1u << 15;
constexpr std::uint32_t kSavePerfGlobalCtrl = 1u << 30;
}  // namespace exitctl
namespace entryctl {  // Table 25-15
constexpr std::uint32_t kIa32eModeGuest = 1u << 9;
constexpr std::uint32_t kLoadPerfGlobalCtrl = 1u << 13;
}  // namespace entryctl

/// IA32_VMX_EPT_VPID_CAP (SDM Vol. 3C, A.10): what the model's EPT and
/// INVEPT/INVVPID support.
namespace eptcap {
constexpr std::uint64_t kExecuteOnly = 1ull << 0;
constexpr std::uint64_t kWalk4 = 1ull << 6;
constexpr std::uint64_t kWalk5 = 1ull << 7;
constexpr std::uint64_t kWriteBack = 1ull << 14;
constexpr std::uint64_t kPde2M = 1ull << 16;
constexpr std::uint64_t kPdpte1G = 1ull << 17;
constexpr std::uint64_t kInvept = 1ull << 20;
constexpr std::uint64_t kAccessedDirty = 1ull << 21;
constexpr std::uint64_t kInveptSingle = 1ull << 25;
constexpr std::uint64_t kInveptAll = 1ull << 26;
constexpr std::uint64_t kInvvpid = 1ull << 32;
constexpr std::uint64_t kInvvpidTypes = 0xFull << 40;  // address, single, all, single keeping globals
}  // namespace eptcap
constexpr std::uint64_t kEptVpidCap = eptcap::kExecuteOnly | eptcap::kWalk4 | eptcap::kWalk5 | eptcap::kWriteBack |
                                      eptcap::kPde2M | eptcap::kPdpte1G | eptcap::kInvept | eptcap::kAccessedDirty |
                                      eptcap::kInveptSingle | eptcap::kInveptAll | eptcap::kInvvpid |
                                      eptcap::kInvvpidTypes;

// --- Basic exit reasons (SDM Vol. 3C, Appendix C) ---------------------------
enum class ExitReason : std::uint16_t {
  ExceptionOrNmi = 0,
  ExternalInterrupt = 1,
  TripleFault = 2,
  InterruptWindow = 7,
  Cpuid = 10,
  Hlt = 12,
  Invlpg = 14,
  Rdpmc = 15,
  Rdtsc = 16,
  Vmcall = 18,
  Vmclear = 19,
  Vmlaunch = 20,
  Vmptrld = 21,
  Vmptrst = 22,
  Vmread = 23,
  Vmresume = 24,
  Vmwrite = 25,
  Vmxoff = 26,
  Vmxon = 27,
  CrAccess = 28,
  IoInstruction = 30,
  Rdmsr = 31,
  Wrmsr = 32,
  EntryFailGuestState = 33,
  EntryFailMsrLoading = 34,
  MonitorTrapFlag = 37,
  VirtualizedEoi = 45,
  EptViolation = 48,
  EptMisconfig = 49,
  Invept = 50,
  PreemptionTimer = 52,
  Invvpid = 53,
  Invpcid = 58,
  Vmfunc = 59,
  PmlFull = 62,
};
constexpr unsigned kMaxExitReason = 70;
/// The SDM's name of an exit reason ("EPT_VIOLATION"), or "REASON_<n>".
const char* exit_reason_name(unsigned reason);

// --- Exit qualifications (SDM Vol. 3C, 28.2.1) ------------------------------
namespace qual {
// Control-register accesses, Table 28-3.
constexpr std::uint64_t cr_access(unsigned cr, unsigned type, unsigned gpr) {
  return (cr & 0xF) | ((type & 3u) << 4) | ((gpr & 0xF) << 8);
}
constexpr unsigned kCrMovTo = 0, kCrMovFrom = 1;
// I/O instructions, Table 28-5.
constexpr std::uint64_t io(unsigned size_bytes, bool in, std::uint16_t port) {
  return ((size_bytes - 1) & 7) | (in ? 1u << 3 : 0) | (std::uint64_t{port} << 16);
}
// EPT violations, Table 28-7 (defined with the encoder in mmu/x86_fault.h).
constexpr std::uint64_t kEptRead = mmu::eptqual::kRead;
constexpr std::uint64_t kEptWrite = mmu::eptqual::kWrite;
constexpr std::uint64_t kEptFetch = mmu::eptqual::kFetch;
constexpr std::uint64_t kEptReadable = mmu::eptqual::kReadable;
constexpr std::uint64_t kEptWritable = mmu::eptqual::kWritable;
constexpr std::uint64_t kEptExecutable = mmu::eptqual::kExecutable;
constexpr std::uint64_t kEptUserExecutable = mmu::eptqual::kUserExecutable;
constexpr std::uint64_t kEptGlaValid = mmu::eptqual::kGlaValid;
constexpr std::uint64_t kEptGlaTranslation = mmu::eptqual::kGlaTranslation;
}  // namespace qual

// --- VM-exit instruction information for VMX instructions (SDM Vol. 3C,
// 28.2.5, the tables for VMCLEAR/VMPTRLD/VMPTRST/VMXON, for INVEPT/INVPCID/
// INVVPID and for VMREAD/VMWRITE) and the operand forms the core's VMX
// operations stand for (docs/model.md, "VMX instructions in VMX non-root
// operation").
namespace insn {
constexpr unsigned kSegEs = 0, kSegCs = 1, kSegSs = 2, kSegDs = 3, kSegFs = 4, kSegGs = 5;
constexpr unsigned kNoReg = 0xFF;
/// A memory operand in 64-bit mode: base + index * 2^scale + displacement
/// (SDM Vol. 2A, 2.1.5), in segment `segment` (base 0 but FS and GS).
/// Registers are numbered as Regs (RAX 0 ... R15 15); kNoReg for none.
struct MemOperand {
  unsigned base = 0;  // RAX
  unsigned index = kNoReg;
  unsigned scale = 0;  // log2 of the factor: 0..3
  std::int32_t disp = 0;
  unsigned segment = kSegDs;
  /// Bits 1:0 scaling, 9:7 address size (2: 64-bit), 17:15 segment, 21:18
  /// index register, 22 index invalid, 26:23 base register, 27 base
  /// invalid; bit 10 (mem/reg) is 0: a memory operand.
  constexpr std::uint32_t info() const {
    return (scale & 3u) | (2u << 7) | ((segment & 7u) << 15) |
           (index == kNoReg ? (1u << 22) : ((index & 0xFu) << 18)) |
           (base == kNoReg ? (1u << 27) : ((base & 0xFu) << 23));
  }
  /// The exit qualification: the displacement, sign-extended (28.2.1).
  constexpr std::uint64_t qualification() const { return static_cast<std::uint64_t>(std::int64_t{disp}); }
  /// Bytes of ModRM, SIB and displacement, and whether a REX prefix is
  /// needed for the registers (SDM Vol. 2A, 2.1.5, 2.2.1).
  constexpr unsigned modrm_bytes() const {
    const bool sib = index != kNoReg || (base & 7u) == 4 || base == kNoReg;
    unsigned d = 4;
    if (base != kNoReg) d = disp == 0 && (base & 7u) != 5 ? 0 : (disp >= -128 && disp <= 127 ? 1 : 4);
    return 1 + (sib ? 1 : 0) + d;
  }
  constexpr bool rex() const { return (base != kNoReg && base >= 8) || (index != kNoReg && index >= 8); }
};
/// Bits 6:3 reg1 and 31:28 reg2 of the information field; bit 10 (mem/reg)
/// set when operand 1 is a register.
constexpr std::uint32_t reg1(unsigned r) { return ((r & 0xFu) << 3) | (1u << 10); }
constexpr std::uint32_t reg2(unsigned r) { return (r & 0xFu) << 28; }
}  // namespace insn

// --- Event-injection / exit-interruption information (SDM 25.8.3, 28.2.2) ---
namespace intr {
constexpr std::uint32_t kValid = 1u << 31;
constexpr std::uint32_t kDeliverErrorCode = 1u << 11;
constexpr std::uint32_t kTypeExternal = 0u << 8;
constexpr std::uint32_t kTypeNmi = 2u << 8;
constexpr std::uint32_t kTypeHardwareException = 3u << 8;
constexpr std::uint32_t kTypeSoftwareInterrupt = 4u << 8;
constexpr std::uint32_t info(std::uint8_t vector, std::uint32_t type, bool error_code = false) {
  return kValid | type | vector | (error_code ? kDeliverErrorCode : 0);
}
}  // namespace intr

// --- VM-instruction error numbers (SDM Vol. 3C, 31.4) -----------------------
namespace vmerr {
constexpr std::uint32_t kVmcallInVmxRoot = 1;
constexpr std::uint32_t kVmclearInvalidAddress = 2;
constexpr std::uint32_t kVmclearVmxonPointer = 3;
constexpr std::uint32_t kVmlaunchNonClear = 4;
constexpr std::uint32_t kVmresumeNonLaunched = 5;
constexpr std::uint32_t kEntryInvalidControls = 7;
constexpr std::uint32_t kEntryInvalidHostState = 8;
constexpr std::uint32_t kVmptrldInvalidAddress = 9;
constexpr std::uint32_t kVmptrldVmxonPointer = 10;
constexpr std::uint32_t kVmptrldWrongRevision = 11;
constexpr std::uint32_t kUnsupportedVmcsComponent = 12;
constexpr std::uint32_t kVmwriteReadOnly = 13;
constexpr std::uint32_t kVmxonInVmxRoot = 15;
constexpr std::uint32_t kInvalidOperandInvept = 28;
}  // namespace vmerr

// --- Exception vectors (SDM Vol. 3A, Table 6-1) -----------------------------
namespace vec {
constexpr std::uint8_t kDivide = 0, kInvalidOpcode = 6, kDoubleFault = 8, kGeneralProtection = 13,
                       kPageFault = 14;
}

// --- Model-specific registers used by the model (SDM Vol. 4) ----------------
namespace msr {
constexpr std::uint32_t kIa32TscDeadline = 0x6E0;
constexpr std::uint32_t kIa32Efer = 0xC0000080;
constexpr std::uint32_t kIa32VmxBasic = 0x480;
constexpr std::uint32_t kIa32VmxProcbasedCtls2 = 0x48B;
constexpr std::uint32_t kIa32VmxEptVpidCap = 0x48C;
constexpr std::uint32_t kX2ApicId = 0x802;
constexpr std::uint32_t kX2ApicTpr = 0x808;
constexpr std::uint32_t kX2ApicEoi = 0x80B;
constexpr std::uint32_t kX2ApicIcr = 0x830;
constexpr std::uint32_t kX2ApicLvtTimer = 0x832;
constexpr std::uint32_t kX2ApicLvtPmc = 0x834;  // LVT performance-monitoring counters
/// SEV_STATUS (AMD64 APM Vol. 2, 15.34.10): bit 0, the guest runs with
/// memory encryption (SEV) active. Read-only; answered by the hardware from
/// the VM's key ID, without an exit.
constexpr std::uint32_t kSevStatus = 0xC0010131;
}  // namespace msr

// --- Virtual-APIC page (SDM Vol. 3C, 30.1): register offsets. ISR, TMR and
// IRR are eight 32-bit registers each, 16 bytes apart; vector v is bit v%32
// of register v/32.
namespace vapic {
constexpr std::uint64_t kTpr = 0x80;
constexpr std::uint64_t kEoi = 0xB0;
constexpr std::uint64_t kIsr = 0x100;
constexpr std::uint64_t kIrr = 0x200;
constexpr std::uint64_t reg(std::uint64_t base, unsigned vector) { return base + 0x10 * (vector / 32); }
}  // namespace vapic

/// VMCS revision identifier reported in IA32_VMX_BASIC[30:0] and expected in
/// the first dword of every VMXON and VMCS region (SDM Vol. 3C, 25.2, A.1).
constexpr std::uint32_t kVmcsRevision = 0x12;
/// Bit 31 of a VMCS region's first dword: the region is a shadow VMCS
/// (SDM Vol. 3C, 25.2, 25.10).
constexpr std::uint32_t kShadowVmcsIndicator = 1u << 31;

}  // namespace vmx::cpu
