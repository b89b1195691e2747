// The VT-d remapping unit's register set and invalidation queue: how
// software programs the IOMMU (iommu::Iommu) and the interrupt-remapping
// unit (iommu::InterruptRemap). Section numbers refer to "Intel
// Virtualization Technology for Directed I/O, Architecture Specification"
// (rev. 3.x): chapter 11 (register descriptions, 11.4.x) and 6.5
// (invalidation, the queued-invalidation descriptors of 6.5.2).
//
// A plain C++ register file: the platform maps it on the MMIO bus
// (platform/platform.cc adapts read/write(offset, size) to models::MmioDevice)
// and tests drive it directly. Register reads and writes take effect at once;
// the invalidation queue in memory is processed over time: each descriptor
// is fetched through the unit's memory port (its reads are charged as memory
// references) and takes descriptor_latency more IOMMU cycles, so software
// waits for a wait descriptor's status write. `now` arguments and advance()
// are in IOMMU cycles; whoever owns the unit's clock calls advance() when
// next_due() is reached (the platform schedules a SystemC event for it).
//
// Implemented (everything else reads as zero and ignores writes, and an
// access to an offset outside the set is counted):
//   VER, CAP, ECAP (what the model supports), GCMD/GSTS (TE, SRTP, QIE, IRE,
//   SIRTP, CFI; one command per write, the status bit following), RTADDR
//   (with TTM), CCMD and IVA/IOTLB (register-based invalidation, refused
//   while queued invalidation is on), FSTS, FECTL/FEDATA/FEADDR/FEUADDR (the
//   fault event), FRCD (the DMA-remapping fault log as fault-recording
//   registers), IQH/IQT/IQA, ICS, IECTL/IEDATA/IEADDR/IEUADDR (the
//   invalidation-completion event), IRTA.
// Not implemented: advanced fault logging (CAP.AFL = 0), write-buffer flush
// (CAP.RWBF = 0), protected memory regions (CAP.PLMR = PHMR = 0), page
// requests, device-TLB invalidation (ECAP.DT = 0; its descriptors are
// invalid), performance monitoring. Interrupt-remapping faults stay in the
// remapping unit's own log (InterruptRemap::faults), not in FRCD.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "iommu/iommu.h"
#include "mmu/walker.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::iommu {

class InterruptRemap;

/// Register offsets (VT-d 11.4, Table "Register Address Map") and fields.
namespace vtd {
constexpr std::uint64_t kVer = 0x000;      // 32-bit, RO
constexpr std::uint64_t kCap = 0x008;      // 64-bit, RO
constexpr std::uint64_t kEcap = 0x010;     // 64-bit, RO
constexpr std::uint64_t kGcmd = 0x018;     // 32-bit, WO (reads 0)
constexpr std::uint64_t kGsts = 0x01C;     // 32-bit, RO
constexpr std::uint64_t kRtaddr = 0x020;   // 64-bit, RW
constexpr std::uint64_t kCcmd = 0x028;     // 64-bit, RW
constexpr std::uint64_t kFsts = 0x034;     // 32-bit, RW1C/RO
constexpr std::uint64_t kFectl = 0x038;    // 32-bit, RW/RO
constexpr std::uint64_t kFedata = 0x03C;   // 32-bit, RW
constexpr std::uint64_t kFeaddr = 0x040;   // 32-bit, RW
constexpr std::uint64_t kFeuaddr = 0x044;  // 32-bit, RW
constexpr std::uint64_t kIqh = 0x080;      // 64-bit, RO
constexpr std::uint64_t kIqt = 0x088;      // 64-bit, RW
constexpr std::uint64_t kIqa = 0x090;      // 64-bit, RW
constexpr std::uint64_t kIcs = 0x09C;      // 32-bit, RW1C
constexpr std::uint64_t kIectl = 0x0A0;    // 32-bit, RW/RO
constexpr std::uint64_t kIedata = 0x0A4;   // 32-bit, RW
constexpr std::uint64_t kIeaddr = 0x0A8;   // 32-bit, RW
constexpr std::uint64_t kIeuaddr = 0x0AC;  // 32-bit, RW
constexpr std::uint64_t kIrta = 0x0B8;     // 64-bit, RW
/// IVA_REG and IOTLB_REG sit at ECAP.IRO x 16 (this model: 0x100).
constexpr unsigned kIro = 0x10;
constexpr std::uint64_t kIva = kIro * 16ull;
constexpr std::uint64_t kIotlb = kIva + 8;
/// The fault-recording registers start at CAP.FRO x 16 (this model: 0x200),
/// 16 bytes each.
constexpr unsigned kFro = 0x20;
constexpr std::uint64_t kFrcd = kFro * 16ull;
constexpr std::uint64_t kFrcdSize = 16;
/// VER_REG: major 7:4, minor 3:0 (architecture version 3.0).
constexpr std::uint32_t kVersion = 0x30;

/// GCMD_REG (11.4.4) command bits; GSTS_REG (11.4.5) has the status bit of
/// each at the same position (TES, RTPS, FLS, AFLS, WBFS, QIES, IRES, IRTPS,
/// CFIS).
namespace gcmd {
constexpr std::uint32_t kTe = 1u << 31;     // translation enable
constexpr std::uint32_t kSrtp = 1u << 30;   // set root-table pointer
constexpr std::uint32_t kSfl = 1u << 29;    // set fault log (AFL: not supported)
constexpr std::uint32_t kEafl = 1u << 28;   // enable advanced fault logging (not supported)
constexpr std::uint32_t kWbf = 1u << 27;    // write-buffer flush (RWBF = 0: not needed)
constexpr std::uint32_t kQie = 1u << 26;    // queued invalidation enable
constexpr std::uint32_t kIre = 1u << 25;    // interrupt remapping enable
constexpr std::uint32_t kSirtp = 1u << 24;  // set interrupt remap table pointer
constexpr std::uint32_t kCfi = 1u << 23;    // compatibility format interrupt
/// Commands whose bit is a state (set to enable, clear to disable); the
/// others are one-shot (set to start).
constexpr std::uint32_t kLevel = kTe | kQie | kIre | kCfi;
constexpr std::uint32_t kOneShot = kSrtp | kSfl | kEafl | kWbf | kSirtp;
}  // namespace gcmd

/// CAP_REG fields (11.4.2).
namespace cap {
constexpr unsigned kNdShift = 0;       // 2:0 number of domains: 2^(4 + 2 ND)
constexpr unsigned kSagawShift = 8;    // 12:8 supported adjusted guest address widths
constexpr unsigned kMgawShift = 16;    // 21:16 maximum guest address width - 1
constexpr unsigned kFroShift = 24;     // 33:24 fault-recording register offset / 16
constexpr unsigned kSllpsShift = 34;   // 37:34 second-level large pages: bit 0 2 MiB, bit 1 1 GiB
constexpr std::uint64_t kPsi = 1ull << 39;  // page-selective invalidation
constexpr unsigned kNfrShift = 40;     // 47:40 number of fault-recording registers - 1
constexpr unsigned kMamvShift = 48;    // 53:48 maximum address mask value
constexpr std::uint64_t kDwd = 1ull << 54;   // write draining
constexpr std::uint64_t kDrd = 1ull << 55;   // read draining
constexpr std::uint64_t kFl1gp = 1ull << 56; // first-level 1 GiB pages
constexpr std::uint64_t kPi = 1ull << 59;    // posted interrupts
constexpr std::uint64_t kFl5lp = 1ull << 60; // first-level 5-level paging
constexpr unsigned kMamv = 9;  // up to 2^9 pages (2 MiB) per page-selective invalidation
constexpr unsigned sagaw(std::uint64_t c) { return static_cast<unsigned>((c >> kSagawShift) & 0x1F); }
constexpr unsigned nfr(std::uint64_t c) { return static_cast<unsigned>((c >> kNfrShift) & 0xFF) + 1; }
constexpr std::uint64_t fro(std::uint64_t c) { return ((c >> kFroShift) & 0x3FF) * 16; }
}  // namespace cap

/// ECAP_REG fields (11.4.3).
namespace ecap {
constexpr std::uint64_t kC = 1ull << 0;     // page-walk coherency
constexpr std::uint64_t kQi = 1ull << 1;    // queued invalidation
constexpr std::uint64_t kIr = 1ull << 3;    // interrupt remapping
constexpr std::uint64_t kEim = 1ull << 4;   // extended interrupt mode (x2APIC)
constexpr std::uint64_t kPt = 1ull << 6;    // pass-through
constexpr unsigned kIroShift = 8;           // 17:8 IOTLB register offset / 16
constexpr unsigned kMhmvShift = 20;         // 23:20 maximum handle mask value
constexpr std::uint64_t kNest = 1ull << 26; // nested translation
constexpr unsigned kPssShift = 35;          // 39:35 PASID size supported - 1
constexpr std::uint64_t kPasid = 1ull << 40;
constexpr std::uint64_t kSmts = 1ull << 43;   // scalable-mode translation
constexpr std::uint64_t kSlads = 1ull << 45;  // second-level accessed/dirty
constexpr std::uint64_t kSlts = 1ull << 46;   // second-level translation
constexpr std::uint64_t kFlts = 1ull << 47;   // first-level translation
constexpr std::uint64_t kSmpwc = 1ull << 48;  // scalable-mode page-walk coherency
constexpr std::uint64_t iro(std::uint64_t e) { return ((e >> kIroShift) & 0x3FF) * 16; }
}  // namespace ecap

/// FSTS_REG (11.4.7.1).
namespace fsts {
constexpr std::uint32_t kPfo = 1u << 0;  // primary fault overflow (RW1C)
constexpr std::uint32_t kPpf = 1u << 1;  // primary pending fault (RO: some FRCD has F set)
constexpr std::uint32_t kIqe = 1u << 4;  // invalidation queue error (RW1C)
constexpr std::uint32_t kIce = 1u << 5;  // invalidation completion error (device-TLB; never set)
constexpr std::uint32_t kIte = 1u << 6;  // invalidation time-out error (device-TLB; never set)
constexpr unsigned kFriShift = 8;        // 15:8 fault record index
constexpr std::uint32_t kRw1c = kPfo | kIqe | kIce | kIte;
}  // namespace fsts

/// FECTL_REG / IECTL_REG (11.4.7.2, 11.4.9.5): interrupt mask and pending.
namespace ectl {
constexpr std::uint32_t kIm = 1u << 31;
constexpr std::uint32_t kIp = 1u << 30;
}  // namespace ectl

/// CCMD_REG (11.4.6.1).
namespace ccmd {
constexpr std::uint64_t kIcc = 1ull << 63;  // invalidate context cache (cleared when done)
constexpr unsigned kCirgShift = 61;         // 62:61 requested granularity: 1 global, 2 domain, 3 device
constexpr unsigned kCaigShift = 59;         // 60:59 actual granularity
constexpr unsigned kFmShift = 32;           // 33:32 function mask
constexpr unsigned kSidShift = 16;          // 31:16 source ID
constexpr std::uint64_t kDidMask = 0xFFFF;  // 15:0 domain ID
constexpr std::uint64_t make(unsigned cirg, std::uint16_t did = 0, std::uint16_t sid = 0, unsigned fm = 0) {
  return kIcc | (std::uint64_t(cirg & 3) << kCirgShift) | (std::uint64_t(fm & 3) << kFmShift) |
         (std::uint64_t(sid) << kSidShift) | did;
}
}  // namespace ccmd

/// IOTLB_REG and IVA_REG (11.4.6.2, 11.4.6.3).
namespace iotlbreg {
constexpr std::uint64_t kIvt = 1ull << 63;  // invalidate IOTLB (cleared when done)
constexpr unsigned kIirgShift = 60;         // 61:60 requested granularity: 1 global, 2 domain, 3 page
constexpr unsigned kIaigShift = 57;         // 58:57 actual granularity (0: failed)
constexpr std::uint64_t kDr = 1ull << 49, kDw = 1ull << 48;
constexpr unsigned kDidShift = 32;          // 47:32 domain ID
constexpr std::uint64_t make(unsigned iirg, std::uint16_t did = 0) {
  return kIvt | (std::uint64_t(iirg & 3) << kIirgShift) | (std::uint64_t(did) << kDidShift);
}
/// IVA_REG: address 63:12, IH bit 6, AM 5:0.
constexpr std::uint64_t iva(std::uint64_t addr, unsigned am = 0, bool ih = false) {
  return (addr & ~0xFFFull) | (ih ? 1ull << 6 : 0) | (am & 0x3F);
}
}  // namespace iotlbreg

/// IQA_REG (11.4.9.3), IQH/IQT (11.4.9.1, 11.4.9.2), ICS (11.4.9.4).
namespace iqa {
constexpr std::uint64_t kBaseMask = 0x000FFFFFFFFFF000ull;
constexpr std::uint64_t kDw256 = 1ull << 11;  // descriptor width: 256-bit (scalable mode)
constexpr std::uint64_t kQsMask = 7;          // queue size: 2^QS 4 KiB pages
constexpr std::uint64_t make(std::uint64_t base, unsigned qs, bool dw256) {
  return (base & kBaseMask) | (dw256 ? kDw256 : 0) | (qs & kQsMask);
}
/// IQH/IQT hold the offset of a descriptor in bytes, bits 18:4.
constexpr std::uint64_t kOffsetMask = 0x7FFF0;
}  // namespace iqa
namespace ics {
constexpr std::uint32_t kIwc = 1u << 0;  // invalidation wait descriptor complete (RW1C)
}

/// IRTA_REG (11.4.8.1): table address 63:12, EIME bit 11, size 3:0.
namespace irta {
constexpr std::uint64_t kMask = 0xFFFFFFFFFFFFF80Full;
}

/// Fault-recording register (11.4.7.4), two quadwords: FI (faulting page)
/// in bits 63:12 of the first; in the second, SID 15:0, PRIV 29, EXE 30,
/// PP 31, FR 39:32, PV 59:40, T1 62 (1 = read), F 63 (RW1C).
namespace frcd {
constexpr unsigned kSidShift = 0;
constexpr std::uint64_t kPriv = 1ull << 29;
constexpr std::uint64_t kExe = 1ull << 30;
constexpr std::uint64_t kPp = 1ull << 31;
constexpr unsigned kFrShift = 32;
constexpr unsigned kPvShift = 40;
constexpr std::uint64_t kRead = 1ull << 62;
constexpr std::uint64_t kF = 1ull << 63;
}  // namespace frcd
}  // namespace vtd

/// Queued-invalidation descriptors (VT-d 6.5.2): 128 bits in legacy mode,
/// 256 bits with IQA.DW = 1 (the upper half reserved for these types).
/// Type in bits 3:0 and 11:9 of the first quadword.
namespace qi {
struct Descriptor128 {
  std::uint64_t w[2] = {};
};
static_assert(sizeof(Descriptor128) == 16, "VT-d 128-bit invalidation descriptor (6.5.2)");
struct Descriptor256 {
  std::uint64_t w[4] = {};
};
static_assert(sizeof(Descriptor256) == 32, "VT-d 256-bit invalidation descriptor (6.5.2)");

constexpr unsigned kContextCache = 0x1;  // 6.5.2.1
constexpr unsigned kIotlb = 0x2;         // 6.5.2.2
constexpr unsigned kDeviceTlb = 0x3;     // 6.5.2.5 (not supported: ECAP.DT = 0)
constexpr unsigned kIec = 0x4;           // 6.5.2.7 interrupt entry cache
constexpr unsigned kWait = 0x5;          // 6.5.2.8 invalidation wait
constexpr unsigned kPasidIotlb = 0x6;    // 6.5.2.4 PASID-based IOTLB
constexpr unsigned kPasidCache = 0x7;    // 6.5.2.3
constexpr unsigned type(std::uint64_t w0) { return static_cast<unsigned>((w0 & 0xF) | (((w0 >> 9) & 7) << 4)); }
constexpr unsigned gran(std::uint64_t w0) { return static_cast<unsigned>((w0 >> 4) & 3); }
constexpr std::uint16_t did(std::uint64_t w0) { return static_cast<std::uint16_t>(w0 >> 16); }
constexpr std::uint32_t pasid(std::uint64_t w0) { return static_cast<std::uint32_t>((w0 >> 32) & 0xFFFFF); }

/// Context-cache invalidate: G 1 global, 2 domain, 3 device (SID, FM).
constexpr Descriptor128 context_cache(unsigned g, std::uint16_t did = 0, std::uint16_t sid = 0, unsigned fm = 0) {
  return {{kContextCache | (std::uint64_t(g & 3) << 4) | (std::uint64_t(did) << 16) | (std::uint64_t(sid) << 32) |
               (std::uint64_t(fm & 3) << 48),
           0}};
}
/// IOTLB invalidate: G 1 global, 2 domain, 3 page (2^am pages at addr, IH).
constexpr Descriptor128 iotlb(unsigned g, std::uint16_t did = 0, std::uint64_t addr = 0, unsigned am = 0,
                              bool ih = false) {
  return {{kIotlb | (std::uint64_t(g & 3) << 4) | (1ull << 6) | (1ull << 7) | (std::uint64_t(did) << 16),
           (addr & ~0xFFFull) | (ih ? 1ull << 6 : 0) | (am & 0x3F)}};
}
/// PASID-cache invalidate: G 0 domain, 1 PASID, 3 global.
constexpr Descriptor128 pasid_cache(unsigned g, std::uint16_t did = 0, std::uint32_t pasid = 0) {
  return {{kPasidCache | (std::uint64_t(g & 3) << 4) | (std::uint64_t(did) << 16) |
               (std::uint64_t(pasid & 0xFFFFF) << 32),
           0}};
}
/// PASID-based IOTLB invalidate: G 2 PASID-selective, 3 page-selective.
constexpr Descriptor128 pasid_iotlb(unsigned g, std::uint16_t did, std::uint32_t pasid, std::uint64_t addr = 0,
                                    unsigned am = 0, bool ih = false) {
  return {{kPasidIotlb | (std::uint64_t(g & 3) << 4) | (std::uint64_t(did) << 16) |
               (std::uint64_t(pasid & 0xFFFFF) << 32),
           (addr & ~0xFFFull) | (ih ? 1ull << 6 : 0) | (am & 0x3F)}};
}
/// Interrupt-entry-cache invalidate: G 0 global, 1 index-selective.
constexpr Descriptor128 iec(bool index_selective = false, std::uint16_t index = 0, unsigned im = 0) {
  return {{kIec | (index_selective ? 1ull << 4 : 0) | (std::uint64_t(im & 0x1F) << 27) |
               (std::uint64_t(index) << 32),
           0}};
}
/// Invalidation wait: SW writes `data` to `status` (4-byte aligned); IF sets
/// ICS.IWC (and raises the completion event unless masked); FN fences.
constexpr std::uint64_t kWaitIf = 1ull << 4, kWaitSw = 1ull << 5, kWaitFn = 1ull << 6;
constexpr Descriptor128 wait(std::uint64_t status, std::uint32_t data, bool sw = true, bool intr = false,
                             bool fence = true) {
  return {{kWait | (intr ? kWaitIf : 0) | (sw ? kWaitSw : 0) | (fence ? kWaitFn : 0) | (std::uint64_t(data) << 32),
           status & ~3ull}};
}
}  // namespace qi

class VtdRegisters {
 public:
  static constexpr std::uint64_t kIdle = ~0ull;

  /// `ir` may be null (ECAP.IR then reads 0 and IRE/SIRTP do nothing). The
  /// invalidation queue is read, and wait-descriptor status written, through
  /// `mem`. Statistics under parent as `name`.
  VtdRegisters(const VtdParams& params, Iommu& dmar, InterruptRemap* ir, mmu::TableMemory& mem,
               stats::Group* parent, const std::string& name = "vtd");

  /// Where the unit's interrupt messages go (fault event, invalidation
  /// completion event): address and data as software programmed them.
  /// Unset, they are counted only.
  void set_msi(std::function<void(std::uint64_t address, std::uint32_t data)> send) { m_msi = std::move(send); }

  /// Bytes of register space (FRCD included), a multiple of 4 KiB.
  std::uint64_t size() const { return m_size; }

  /// A register access of 4 or 8 bytes, naturally aligned, at IOMMU cycle
  /// `now` (the queue is first brought up to `now`). Other sizes and
  /// offsets outside the set read 0 and ignore writes, counted.
  std::uint64_t read(std::uint64_t offset, unsigned size, std::uint64_t now);
  void write(std::uint64_t offset, std::uint64_t value, unsigned size, std::uint64_t now);

  /// Processes the invalidation queue up to IOMMU cycle `now`.
  void advance(std::uint64_t now);
  /// The IOMMU cycle at which the queue has its next step to take, or kIdle.
  std::uint64_t next_due() const;

  std::uint64_t cap() const { return m_cap; }
  std::uint64_t ecap() const { return m_ecap; }

  struct Stats : stats::Group {
    Stats(stats::Group* parent, const std::string& name)
        : Group(parent, name, "VT-d register set and invalidation queue (software's interface to the IOMMU)") {}
    stats::Counter reads{this, "reads", "accesses", "register reads"};
    stats::Counter writes{this, "writes", "accesses", "register writes"};
    stats::Counter unimplemented{this, "unimplemented", "accesses",
                                 "accesses to offsets outside the register set or of a bad size (read 0, ignored)"};
    stats::Counter commands{this, "commands", "commands", "GCMD commands carried out"};
    stats::Counter commands_refused{this, "commands_refused", "writes",
                                    "GCMD writes refused: more than one command, or an unsupported one"};
    stats::Counter register_invalidations{this, "register_invalidations", "commands",
                                          "invalidations through CCMD_REG and IOTLB_REG"};
    stats::Counter descriptors{this, "descriptors", "descriptors", "invalidation descriptors processed"};
    stats::Counter descriptor_refs{this, "descriptor_refs", "references",
                                   "8-byte memory references fetching descriptors and writing wait status"};
    stats::Counter descriptor_cycles{this, "descriptor_cycles", "cycles",
                                     "IOMMU cycles of descriptor processing (fetch and latency)"};
    stats::Counter waits{this, "waits", "descriptors", "invalidation wait descriptors completed"};
    stats::Counter queue_errors{this, "queue_errors", "descriptors", "invalid descriptors (FSTS.IQE set)"};
    stats::Counter fault_events{this, "fault_events", "messages", "fault-event interrupt messages sent"};
    stats::Counter completion_events{this, "completion_events", "messages",
                                     "invalidation-completion interrupt messages sent"};
  };
  const Stats& stats() const { return m_stats; }

 private:
  std::uint64_t read64(std::uint64_t reg) const;
  void write_reg(std::uint64_t reg, std::uint64_t value, std::uint64_t byte_mask, std::uint64_t now);
  void command(std::uint32_t value, std::uint64_t now);
  void context_command(std::uint64_t value);
  void iotlb_command(std::uint64_t value);
  /// Executes one descriptor; false if it is invalid.
  bool execute(const std::uint64_t* w, unsigned words);
  void queue_error();
  /// The fault event condition (FSTS.PPF/PFO/IQE newly set): a message, or
  /// FECTL.IP while masked.
  void fault_event();
  void send(std::uint32_t& ctl, std::uint32_t data, std::uint32_t addr, std::uint32_t uaddr, stats::Counter& n);
  std::uint64_t queue_bytes() const { return (1ull << (m_iqa & vtd::iqa::kQsMask)) * 4096; }
  unsigned descriptor_bytes() const { return (m_iqa & vtd::iqa::kDw256) ? 32 : 16; }
  std::uint32_t fsts() const;

  VtdParams m_p;
  Iommu& m_dmar;
  InterruptRemap* m_ir;
  mmu::TableMemory& m_mem;
  std::function<void(std::uint64_t, std::uint32_t)> m_msi;
  std::uint64_t m_cap = 0, m_ecap = 0, m_size = 0;
  // Register state.
  std::uint32_t m_gsts = 0;
  std::uint64_t m_rtaddr = 0, m_ccmd = 0, m_iva = 0, m_iotlb = 0;
  std::uint32_t m_fsts = 0;  // PFO, IQE (PPF and FRI are computed)
  std::uint32_t m_fectl = vtd::ectl::kIm, m_fedata = 0, m_feaddr = 0, m_feuaddr = 0;
  std::uint64_t m_iqh = 0, m_iqt = 0, m_iqa = 0;
  std::uint32_t m_ics = 0;
  std::uint32_t m_iectl = vtd::ectl::kIm, m_iedata = 0, m_ieaddr = 0, m_ieuaddr = 0;
  std::uint64_t m_irta = 0;
  // The queue in progress: the descriptor at IQH is fetched at m_start and
  // done at m_done (valid while m_fetched).
  std::uint64_t m_start = 0, m_done = 0;
  bool m_fetched = false;
  std::uint64_t m_desc[4] = {};
  Stats m_stats;
};

}  // namespace vmx::iommu
