// Architectural performance monitoring of one logical CPU (Intel SDM Vol. 3B,
// ch. 20 "Performance Monitoring", architectural performance monitoring
// version 2, 20.2.1-20.2.2; MSRs in Vol. 4, Table 2-2). docs/pmu.md.
//
// Four general-purpose counters (IA32_PMC0-3 with IA32_PERFEVTSEL0-3) and
// three fixed-function counters (IA32_FIXED_CTR0-2: instructions retired,
// unhalted core cycles, unhalted reference cycles, with
// IA32_FIXED_CTR_CTRL), all 48 bits wide, under IA32_PERF_GLOBAL_CTRL,
// IA32_PERF_GLOBAL_STATUS and IA32_PERF_GLOBAL_OVF_CTRL.
//
// Counting. The PMU is a listener of its core's events (sim/events.h),
// attached only while some counter is enabled and subscribed only to the
// kinds the enabled counters need, so a machine with no counter enabled runs
// the hot path exactly as without a PMU. Cycles are not events: cycle
// counters read the core's unhalted-cycle count at each sync (an MSR access,
// a CPL change, a VM entry or exit, and the overflow deadline the core arms).
//
// Plain C++ without SystemC; the core implements Host.
#pragma once

#include <array>
#include <cstdint>

#include "sim/events.h"

namespace vmx::pmu {

/// Performance-monitoring MSRs (SDM Vol. 4, Table 2-2).
namespace msr {
constexpr std::uint32_t kPmc0 = 0xC1;            // IA32_PMC0..3
constexpr std::uint32_t kPerfEvtSel0 = 0x186;    // IA32_PERFEVTSEL0..3
constexpr std::uint32_t kFixedCtr0 = 0x309;      // IA32_FIXED_CTR0..2
constexpr std::uint32_t kFixedCtrCtrl = 0x38D;   // IA32_FIXED_CTR_CTRL
constexpr std::uint32_t kGlobalStatus = 0x38E;   // IA32_PERF_GLOBAL_STATUS
constexpr std::uint32_t kGlobalCtrl = 0x38F;     // IA32_PERF_GLOBAL_CTRL
constexpr std::uint32_t kGlobalOvfCtrl = 0x390;  // IA32_PERF_GLOBAL_OVF_CTRL
constexpr std::uint32_t kPerfCapabilities = 0x345;  // IA32_PERF_CAPABILITIES
constexpr std::uint32_t kAPmc0 = 0x4C1;          // IA32_A_PMC0..3: full-width writes
}  // namespace msr

/// IA32_PERFEVTSELx fields (SDM Vol. 3B, Figure 20-1 / 20.2.1.1).
namespace evtsel {
constexpr std::uint64_t kEventMask = 0xFF;
constexpr std::uint64_t kUmaskShift = 8;
constexpr std::uint64_t kUsr = 1ull << 16;
constexpr std::uint64_t kOs = 1ull << 17;
constexpr std::uint64_t kEdge = 1ull << 18;
constexpr std::uint64_t kPc = 1ull << 19;
constexpr std::uint64_t kInt = 1ull << 20;
constexpr std::uint64_t kEn = 1ull << 22;
constexpr std::uint64_t kInv = 1ull << 23;
constexpr std::uint64_t kCmaskShift = 24;
/// Writable bits in version 2: bit 21 (AnyThread) is version 3's, bits
/// 63:32 are reserved (a write setting them is #GP).
constexpr std::uint64_t kWritable = 0xFFFFFFFFull & ~(1ull << 21);
constexpr std::uint64_t make(unsigned event, unsigned umask, std::uint64_t flags, unsigned cmask = 0) {
  return (event & 0xFFu) | (std::uint64_t{umask & 0xFFu} << kUmaskShift) | flags |
         (std::uint64_t{cmask & 0xFFu} << kCmaskShift);
}
}  // namespace evtsel

/// IA32_PERF_CAPABILITIES bit 13: IA32_A_PMCx accept full-width writes
/// (SDM Vol. 3B, 20.2.6); enumerated by CPUID.01H:ECX.PDCM[bit 15].
constexpr std::uint64_t kFullWidthWrite = 1ull << 13;

/// IA32_FIXED_CTR_CTRL: four bits per fixed counter (SDM Vol. 3B, Figure 20-2):
/// bit 0 counts at CPL 0, bit 1 at CPL > 0, bit 3 PMI on overflow (bit 2,
/// AnyThread, is version 3's and reserved here).
namespace fixedctl {
constexpr std::uint64_t kOs = 1, kUsr = 2, kPmi = 8;
constexpr std::uint64_t field(unsigned i, std::uint64_t bits) { return bits << (4 * i); }
constexpr std::uint64_t kWritable = 0xBBB;
}  // namespace fixedctl

/// Event numbers and unit masks the model counts (docs/pmu.md has the
/// table with each one's mechanism). Architectural events (SDM Vol. 3B,
/// Table 20-1) and model-specific ones with Skylake's numbering (SDM
/// Vol. 3B, ch. 21 / the Skylake event list).
namespace event {
struct Code {
  std::uint8_t event, umask;
};
constexpr Code kCoreCycles{0x3C, 0x00};       // UnHalted Core Cycles
constexpr Code kInstructions{0xC0, 0x00};     // Instructions Retired
constexpr Code kRefCycles{0x3C, 0x01};        // UnHalted Reference Cycles
constexpr Code kLlcReference{0x2E, 0x4F};     // LLC Reference
constexpr Code kLlcMisses{0x2E, 0x41};        // LLC Misses
constexpr Code kBranches{0xC4, 0x00};         // Branch Instructions Retired (no mechanism: zero)
constexpr Code kBranchMisses{0xC5, 0x00};     // Branch Misses Retired (no mechanism: zero)
constexpr Code kLoadL1Hit{0xD1, 0x01};        // MEM_LOAD_RETIRED.L1_HIT
constexpr Code kLoadL2Hit{0xD1, 0x02};        // MEM_LOAD_RETIRED.L2_HIT
constexpr Code kLoadL3Hit{0xD1, 0x04};        // MEM_LOAD_RETIRED.L3_HIT
constexpr Code kLoadL1Miss{0xD1, 0x08};       // MEM_LOAD_RETIRED.L1_MISS
constexpr Code kLoadL2Miss{0xD1, 0x10};       // MEM_LOAD_RETIRED.L2_MISS
constexpr Code kLoadL3Miss{0xD1, 0x20};       // MEM_LOAD_RETIRED.L3_MISS
constexpr Code kL1dReplacement{0x51, 0x01};   // L1D.REPLACEMENT (every L1D miss)
constexpr Code kL2Misses{0x24, 0x3F};         // L2_RQSTS.MISS
constexpr Code kL2References{0x24, 0xFF};     // L2_RQSTS.REFERENCES
constexpr Code kDtlbMissWalk{0x08, 0x01};     // DTLB_LOAD_MISSES.MISS_CAUSES_A_WALK
constexpr Code kDtlbWalkDone{0x08, 0x0E};     // DTLB_LOAD_MISSES.WALK_COMPLETED
constexpr Code kDtlbWalkPending{0x08, 0x10};  // DTLB_LOAD_MISSES.WALK_PENDING
constexpr Code kItlbMissWalk{0x85, 0x01};     // ITLB_MISSES.MISS_CAUSES_A_WALK
constexpr Code kItlbWalkDone{0x85, 0x0E};     // ITLB_MISSES.WALK_COMPLETED
constexpr Code kItlbWalkPending{0x85, 0x10};  // ITLB_MISSES.WALK_PENDING
constexpr Code kEptWalkPending{0x4F, 0x10};   // EPT.WALK_PENDING
}  // namespace event

/// What the PMU needs from the logical CPU it belongs to.
class Host {
 public:
  virtual ~Host() = default;
  /// The current privilege level (USR/OS filtering).
  virtual std::uint8_t pmu_cpl() const = 0;
  /// Cycles the CPU was not halted since reset.
  virtual std::uint64_t pmu_unhalted_cycles() const = 0;
  /// A counter with its interrupt enable set overflowed: the local APIC's
  /// performance-monitoring LVT entry (SDM Vol. 3B, 20.2.1.1, INT flag).
  virtual void pmu_interrupt() = 0;
};

/// CPUID leaf 0AH (SDM Vol. 2A, CPUID, "Architectural Performance
/// Monitoring Leaf").
struct Cpuid0A {
  std::uint32_t eax, ebx, ecx, edx;
};

class Pmu final : public events::Listener {
 public:
  static constexpr unsigned kVersion = 2;
  static constexpr unsigned kGpCounters = 4;     // per logical CPU with SMT on recent Intel cores
  static constexpr unsigned kFixedCounters = 3;
  static constexpr unsigned kWidth = 48;         // CPUID.0AH:EAX[23:16] and EDX[12:5] on Intel cores since Nehalem
  static constexpr std::uint64_t kCounterMask = (1ull << kWidth) - 1;
  /// Bits of IA32_PERF_GLOBAL_CTRL/STATUS/OVF_CTRL that name a counter.
  static constexpr std::uint64_t kCounterBits = ((1ull << kGpCounters) - 1) | (((1ull << kFixedCounters) - 1) << 32);

  Pmu(Host& host, events::Dispatcher& events);
  ~Pmu() override;
  Pmu(const Pmu&) = delete;
  Pmu& operator=(const Pmu&) = delete;

  static Cpuid0A cpuid();

  /// Whether `msr` is one of the PMU's.
  static bool owns(std::uint32_t msr);
  /// RDMSR / WRMSR of one of the PMU's MSRs; false: the access is #GP(0)
  /// (a reserved bit set, a read-only MSR written, a counter that does
  /// not exist).
  bool read(std::uint32_t msr, std::uint64_t& value);
  bool write(std::uint32_t msr, std::uint64_t value);
  /// RDPMC with ECX = `ecx` (SDM Vol. 2B, RDPMC): bit 30 selects the fixed
  /// counters, bits 29:0 the index. False: #GP (no such counter). The
  /// CPL/CR4.PCE check is the core's.
  bool rdpmc(std::uint32_t ecx, std::uint64_t& value);

  /// IA32_PERF_GLOBAL_CTRL as the VM-entry and VM-exit "load
  /// IA32_PERF_GLOBAL_CTRL" controls load it (SDM Vol. 3C, 27.3.2.1,
  /// 28.5.1): no reserved-bit check beyond the entry checks the core makes.
  std::uint64_t global_ctrl() const { return m_global_ctrl; }
  void load_global_ctrl(std::uint64_t value);

  /// Brings the cycle counters up to the CPU's unhalted-cycle count. The
  /// core calls it before the CPL changes while cycles_counting().
  void sync();
  /// Some enabled counter counts cycles (the core must sync on CPL changes).
  bool cycles_counting() const { return m_cycle_counters != 0; }
  /// Any counter enabled.
  bool active() const { return m_active != 0; }
  /// Unhalted cycles until the first cycle counter overflows (UINT64_MAX:
  /// none counts cycles); the core syncs again by then.
  std::uint64_t cycles_to_overflow() const;

  // events::Listener
  void retired(const events::Retired& e) override;
  void cache_access(const events::CacheAccess& e) override;
  void tlb_miss(const events::TlbMiss& e) override;
  void walk(const events::Walk& e) override;

 private:
  /// What a counter counts, decoded from its event select.
  enum class Source : std::uint8_t {
    None,          // not a modelled event: counts zero
    Instructions,
    Cycles,        // core or reference cycles (one clock in the model)
    LoadL1Hit, LoadL2Hit, LoadL3Hit, LoadL1Miss, LoadL2Miss, LoadL3Miss,
    L1dMiss, L2Miss, L2Ref, LlcRef, LlcMiss,
    DtlbMissWalk, DtlbWalkDone, DtlbWalkPending, DtlbWalkStarts,
    ItlbMissWalk, ItlbWalkDone, ItlbWalkPending, ItlbWalkStarts,
    EptWalkPending, EptWalkStarts,
  };
  struct Counter {
    std::uint64_t value = 0;
    Source source = Source::None;
    std::uint8_t rings = 0;  // bit 0: CPL 0, bit 1: CPL > 0
    bool pmi = false;
    bool enabled = false;    // its own enable (EN, or a nonzero ring field for fixed counters)
  };
  static constexpr unsigned kCounters = kGpCounters + kFixedCounters;
  static unsigned status_bit(unsigned i) { return i < kGpCounters ? i : 32 + (i - kGpCounters); }
  static Source decode(std::uint64_t sel);
  static events::Mask kinds_of(Source s);

  bool counts_now(const Counter& c) const {
    return (c.rings >> (m_host.pmu_cpl() == 0 ? 0 : 1)) & 1;
  }
  void add(unsigned i, std::uint64_t n);
  void count(Source s, std::uint64_t n);
  /// Recomputes which counters run and what the listener subscribes to.
  void reprogram();

  Host& m_host;
  events::Dispatcher& m_events;
  std::array<Counter, kCounters> m_c{};
  std::array<std::uint64_t, kGpCounters> m_evtsel{};
  std::uint64_t m_fixed_ctrl = 0;
  // Reset value: the general-purpose enables set, the fixed ones clear, so
  // that version 1 software (which knows no global control) counts (SDM
  // Vol. 3B, 20.2.2).
  std::uint64_t m_global_ctrl = (1ull << kGpCounters) - 1;
  std::uint64_t m_global_status = 0;
  unsigned m_active = 0;          // bit i: counter i runs (enabled here and globally)
  unsigned m_cycle_counters = 0;  // of those, cycle counters
  std::uint64_t m_cycle_mark = 0; // unhalted cycles at the last sync
  bool m_attached = false;
  bool m_last_tlb_fetch = false;  // side of the last STLB miss (its walk follows)
};

}  // namespace vmx::pmu
