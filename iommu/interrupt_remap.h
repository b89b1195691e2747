// VT-d interrupt remapping and interrupt posting (Intel VT-d specification,
// ch. 5 and 9.10-9.12): the unit that decodes every interrupt message a
// device sends once software has enabled remapping (GCMD.IRE).
//
//  * A remappable-format MSI (address bit 4 set, VT-d 5.1.5.2) carries a
//    16-bit handle (address bits 19:5 and bit 2) and, with SHV (address bit
//    3), a subhandle in data bits 15:0; the interrupt index is handle +
//    subhandle. It selects a 128-bit IRTE in the table at IRTA.
//  * The IRTE must be present (else fault 22h) and within the table (21h);
//    its source-validation type (SVT) decides whether the requester ID must
//    match SID under the SQ mask, or lie in a bus range (26h on mismatch).
//  * IM = 0 (remapped format, 9.10): a fixed interrupt with the IRTE's
//    vector to the IRTE's destination (x2APIC ID in bits 63:32 with IRTA.EIME,
//    else bits 47:40).
//  * IM = 1 (posted format, 9.11): the virtual vector's bit is set in the
//    PIR of the posted-interrupt descriptor the IRTE points to (9.12), and
//    unless a notification is outstanding (ON) or suppressed (SN without
//    URG), ON is set and a notification interrupt with the descriptor's NV
//    is sent to its NDST (5.2.3). The descriptor update is one atomic
//    read-modify-write of memory.
//  * A compatibility-format MSI is blocked (25h) unless GSTS.CFIS allows it.
// Faults are recorded (reason, index, source ID) in the fault-recording
// registers unless the IRTE's FPD is set; the request is then discarded.
//
// Not modelled: the interrupt entry cache (every request reads its IRTE from
// memory; IEC invalidation is therefore not needed), logical destination
// and redirection hints, trigger modes, bus-range validation beyond the bus
// numbers. Software programs the unit through the IOMMU's register set
// (IRTA_REG, GCMD.SIRTP/IRE/CFI: iommu/vtd_regs.h), which calls set_irta /
// set_enable / set_cfi; tests of the bare unit call them directly. Plain C++, no SystemC; memory references go
// through a mmu::TableMemory and their cycles are counted.
#pragma once

#include <cstdint>
#include <vector>

#include "iommu/dma.h"
#include "mmu/walker.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::iommu {

struct InterruptRemapParams {
  std::uint64_t fault_records;
  std::uint32_t memory_latency;

  template <class V>
  void visit(V& v) {
    v.param(fault_records, "fault_records", "8", cfg::Spec().at_least(1).at_most(256),
            "Fault-recording registers of the interrupt-remapping unit (CAP.NFR + 1; assumption: 8).");
    v.param(memory_latency, "memory_latency", "200", cfg::Spec(cfg::Unit::Cycles),
            "Core cycles per memory reference the unit makes (IRTE halves, posted-interrupt descriptor). "
            "Default: an uncached DRAM access of about 65 ns at 3 GHz (assumption). Counted, not delayed.");
  }
};

/// Fault reasons of interrupt requests (VT-d, Table "Interrupt Remapping Fault Conditions").
namespace irfault {
constexpr std::uint8_t kReservedRequest = 0x20;
constexpr std::uint8_t kIndexBeyondTable = 0x21;
constexpr std::uint8_t kNotPresent = 0x22;
constexpr std::uint8_t kTableAccess = 0x23;
constexpr std::uint8_t kReservedIrte = 0x24;
constexpr std::uint8_t kCompatBlocked = 0x25;
constexpr std::uint8_t kSourceId = 0x26;
}  // namespace irfault

/// IRTE and posted-interrupt-descriptor layouts (VT-d 9.10, 9.11, 9.12).
namespace irte {
constexpr std::uint64_t kPresent = 1ull << 0;
constexpr std::uint64_t kFpd = 1ull << 1;
constexpr std::uint64_t kDestModeLogical = 1ull << 2;
constexpr std::uint64_t kUrgent = 1ull << 14;  // posted format
constexpr std::uint64_t kPosted = 1ull << 15;  // IM
constexpr unsigned kVectorShift = 16;
constexpr unsigned kDeliveryModeShift = 5;
// High quadword.
constexpr unsigned kSidShift = 0, kSqShift = 16, kSvtShift = 18;
constexpr unsigned kSvtNone = 0, kSvtRequester = 1, kSvtBus = 2;

/// A remapped-format IRTE: fixed delivery of `vector` to x2APIC `dest`,
/// validating the requester `sid` exactly (SVT 01, SQ 00).
constexpr std::uint64_t remapped_lo(std::uint32_t dest, std::uint8_t vector) {
  return kPresent | (std::uint64_t{vector} << kVectorShift) | (std::uint64_t{dest} << 32);
}
/// A posted-format IRTE for virtual `vector`, descriptor at `pda` (64-byte aligned).
constexpr std::uint64_t posted_lo(std::uint64_t pda, std::uint8_t vector, bool urgent = false) {
  return kPresent | kPosted | (urgent ? kUrgent : 0) | (std::uint64_t{vector} << kVectorShift) |
         (pda & 0xFFFFFFC0ull) << 32;
}
constexpr std::uint64_t posted_hi(std::uint64_t pda, std::uint16_t sid) {
  return (std::uint64_t{sid} << kSidShift) | (std::uint64_t{kSvtRequester} << kSvtShift) | (pda & ~0xFFFFFFFFull);
}
constexpr std::uint64_t hi_sid(std::uint16_t sid, unsigned svt = kSvtRequester, unsigned sq = 0) {
  return (std::uint64_t{sid} << kSidShift) | (std::uint64_t{sq & 3} << kSqShift) | (std::uint64_t{svt & 3} << kSvtShift);
}

/// The remappable-format MSI address for interrupt `handle` (VT-d 5.1.5.2).
constexpr std::uint64_t msi_address(std::uint16_t handle, bool shv = false) {
  return kMsiBase | (std::uint64_t{handle & 0x7FFFu} << 5) | (1u << 4) | (shv ? 1u << 3 : 0) |
         ((handle >> 15) & 1u) << 2;
}
}  // namespace irte

/// The posted-interrupt descriptor (VT-d 9.12; SDM Vol. 3C, 30.6): the
/// same 64 bytes the processor's posted-interrupt processing reads.
namespace pid {
constexpr std::uint64_t kPirOffset = 0;     // 256 bits
constexpr std::uint64_t kControlOffset = 32;  // quadword holding ON, SN, NV, NDST
constexpr std::uint64_t kOn = 1ull << 0;      // bit 256: outstanding notification
constexpr std::uint64_t kSn = 1ull << 1;      // bit 257: suppress notification
constexpr unsigned kNvShift = 16;             // bits 279:272
constexpr unsigned kNdstShift = 32;           // bits 319:288
constexpr std::uint64_t control(std::uint8_t nv, std::uint32_t ndst, bool sn = false) {
  return (std::uint64_t{nv} << kNvShift) | (std::uint64_t{ndst} << kNdstShift) | (sn ? kSn : 0);
}
}  // namespace pid

/// What became of one interrupt message.
struct IrResult {
  enum class Kind : std::uint8_t { Remapped, Posted, Compat, Blocked } kind = Kind::Blocked;
  std::uint32_t dest = 0;    // Remapped: destination; Posted with notify: NDST
  std::uint8_t vector = 0;   // Remapped: vector; Posted with notify: NV
  bool notify = false;       // Posted: a notification interrupt is to be sent
  std::uint8_t fault = 0;    // Blocked: fault reason
  std::uint32_t cycles = 0;  // memory-reference cycles spent
};

struct IrFault {
  std::uint8_t reason = 0;
  std::uint16_t index = 0;   // interrupt index (for remappable requests)
  std::uint16_t source = 0;  // requester ID
};

class InterruptRemap {
 public:
  InterruptRemap(const InterruptRemapParams& p, mmu::TableMemory& mem, stats::Group* parent);

  /// IRTA_REG: table address bits 63:12, EIME bit 11, size S bits 3:0
  /// (2^(S+1) entries). Takes effect as with GCMD.SIRTP.
  void set_irta(std::uint64_t irta);
  /// GCMD.IRE and GCMD.CFI.
  void set_enable(bool ire) { m_enabled = ire; }
  void set_cfi(bool cfi) { m_cfi = cfi; }
  bool enabled() const { return m_enabled; }

  IrResult remap(const MsiMessage& m);

  const std::vector<IrFault>& faults() const { return m_faults; }
  /// Software clears the fault records (writes 1 to each F bit).
  void clear_faults() { m_faults.clear(); }

 private:
  IrResult fault(std::uint8_t reason, std::uint16_t index, std::uint16_t source, bool fpd, std::uint32_t cycles);
  static bool source_ok(std::uint64_t hi, std::uint16_t requester);

  InterruptRemapParams m_p;
  mmu::TableMemory& m_mem;
  bool m_enabled = false, m_cfi = false, m_eime = false;
  std::uint64_t m_table = 0;
  std::uint32_t m_entries = 0;
  std::vector<IrFault> m_faults;

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "interrupt_remap", "VT-d interrupt remapping and posting") {}
    stats::Counter requests{this, "requests", "messages", "interrupt messages decoded while remapping is on"};
    stats::Counter remapped{this, "remapped", "messages", "remapped-format IRTEs: delivered as host interrupts"};
    stats::Counter posted{this, "posted", "messages", "posted-format IRTEs: PIR bit set in a descriptor"};
    stats::Counter notifications{this, "notifications", "interrupts", "notification interrupts sent for them"};
    stats::Counter suppressed{this, "suppressed", "messages",
                              "posted without a notification: ON already set, or SN set and not urgent"};
    stats::Counter compat{this, "compat", "messages", "compatibility-format messages let through (CFIS)"};
    stats::Counter faults{this, "faults", "messages", "requests blocked by a fault"};
    stats::Counter faults_overflowed{this, "faults_overflowed", "faults",
                                     "faults not recorded: every fault-recording register was full"};
    stats::Counter refs{this, "refs", "references", "8-byte memory references (IRTEs, descriptors)"};
    stats::Counter cycles{this, "cycles", "cycles", "cycles of those references"};
  } m_stats;
};

}  // namespace vmx::iommu
