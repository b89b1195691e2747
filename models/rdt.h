// Resource Director Technology allocation, as Intel's RDT does it for the
// last-level cache (Cache Allocation Technology, CAT) and for memory
// bandwidth (Memory Bandwidth Allocation, MBA): SDM Vol. 3B, 19.19
// ("Platform Shared Resource Control"). Plain C++, no SystemC.
//
// The package holds one table of classes of service (CLOS): per class a
// capacity bitmask over the LLC's ways (IA32_L3_QOS_MASK_n) and an MBA delay
// value (IA32_L2_QoS_Ext_BW_Thrtl_n). Each logical processor names its class
// in IA32_PQR_ASSOC (cpu/core.cc); its cache hierarchy then fills LLC lines
// only into the ways of the class's mask (models/cache.h) and paces its L2
// misses by the class's delay (models/mem_hierarchy.h). Software reaches
// this block only through those MSRs and CPUID leaf 10H.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sim/params.h"

namespace vmx::models {

namespace rdt_msr {
constexpr std::uint32_t kPqrAssoc = 0xC8F;     // IA32_PQR_ASSOC: RMID 9:0, CLOS 63:32
constexpr std::uint32_t kL3MaskBase = 0xC90;   // IA32_L3_QOS_MASK_0 ..
constexpr std::uint32_t kMbaThrtlBase = 0xD50; // IA32_L2_QoS_Ext_BW_Thrtl_0 ..
}  // namespace rdt_msr

struct RdtParams {
  bool enabled;
  std::uint32_t classes;
  std::uint32_t mba_max;
  std::uint64_t mba_interval;  // ps

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(enabled, "enabled", "false", Spec(Unit::Flag),
            "Report and implement cache allocation (CAT) and memory-bandwidth allocation (MBA): CPUID leaf 10H, "
            "IA32_PQR_ASSOC, IA32_L3_QOS_MASK_n, IA32_L2_QoS_Ext_BW_Thrtl_n (docs/protection.md, \"Cache and "
            "bandwidth partitioning\"). Off: those MSRs are #GP, as on a processor without RDT.");
    v.param(classes, "classes", "16", Spec(Unit::Count).at_least(1).at_most(256),
            "Classes of service of both CAT and MBA. Default: 16, the L3 CAT classes of Intel Xeon Scalable "
            "(Skylake-SP) processors (Intel RDT reference manual / CPUID.(EAX=10H,ECX=1):EDX).");
    v.param(mba_max, "mba_max", "90", Spec().at_least(10).at_most(99),
            "Highest MBA delay value (CPUID.(EAX=10H,ECX=3):EAX + 1). Default: 90, the maximum throttling of "
            "Skylake-SP's linear MBA, programmed in steps of 10 (Intel RDT documentation).");
    v.param(mba_interval, "mba_interval", "8ns", Spec(Unit::Time).at_least(1).at_most(1e6),
            "Reference spacing of one core's L2 miss requests under MBA: delay value d spaces them at least "
            "mba_interval x d / (100 - d) apart, so d throttles a core that issues one line per mba_interval to "
            "(100 - d)% of it. Default: 8 ns, 64 B at 8 GB/s, about what one Skylake core sustains with its 10 L1D "
            "fill buffers and ~80 ns memory latency (assumption; Optimization Reference Manual, fill buffers).");
  }
};

/// CPUID leaf 10H register values of one subleaf.
struct RdtCpuid {
  std::uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

class Rdt {
 public:
  /// `llc_ways` is the capacity bitmask length (one bit per LLC way, at
  /// most 32). Classes start with every way and no throttling (the MSRs'
  /// reset values, SDM Vol. 3B, 19.19.4.2).
  Rdt(const RdtParams& params, unsigned llc_ways);

  unsigned classes() const { return static_cast<unsigned>(m_masks.size()); }
  unsigned cbm_length() const { return m_cbm_len; }
  std::uint64_t full_mask() const { return (std::uint64_t{1} << m_cbm_len) - 1; }

  /// The class's capacity bitmask (CLOS beyond the table: every way).
  std::uint64_t mask(unsigned clos) const { return clos < m_masks.size() ? m_masks[clos] : full_mask(); }
  /// The class's MBA delay value.
  std::uint32_t mba_delay(unsigned clos) const { return clos < m_delay.size() ? m_delay[clos] : 0; }
  /// Minimum spacing, in ps, of a throttled core's L2 miss requests (0: none).
  std::uint64_t mba_gap_ps(unsigned clos) const { return clos < m_gap.size() ? m_gap[clos] : 0; }

  /// True if `msr` is one of this block's MSRs.
  bool owns(std::uint32_t msr) const;
  /// RDMSR of a mask or delay MSR (not PQR_ASSOC, which is per logical
  /// processor); false: #GP.
  bool read(std::uint32_t msr, std::uint64_t& value) const;
  /// WRMSR of a mask or delay MSR; false: #GP(0) and nothing changes. A mask
  /// must be non-zero, contiguous and within cbm_length bits; a delay at
  /// most mba_max (SDM Vol. 3B, 19.19.4.2 and 19.19.7).
  bool write(std::uint32_t msr, std::uint64_t value);
  /// Whether `value` is a valid IA32_PQR_ASSOC (CLOS below classes(),
  /// reserved bits 31:10 clear).
  bool valid_pqr(std::uint64_t value) const;

  /// A capacity bitmask as hardware accepts it: non-zero, one run of ones.
  static bool contiguous(std::uint64_t mask) {
    if (mask == 0) return false;
    const std::uint64_t low = mask >> __builtin_ctzll(mask);
    return (low & (low + 1)) == 0;
  }

  /// CPUID.(EAX=10H, ECX=subleaf) (SDM Vol. 2A, CPUID leaf 10H): subleaf 0
  /// lists L3 CAT (EBX bit 1) and MBA (bit 3); 1 describes L3 CAT, 3 MBA.
  RdtCpuid cpuid(std::uint32_t subleaf) const;

  const RdtParams& params() const { return m_p; }

 private:
  RdtParams m_p;
  unsigned m_cbm_len;
  std::vector<std::uint64_t> m_masks;
  std::vector<std::uint32_t> m_delay;
  std::vector<std::uint64_t> m_gap;
};

}  // namespace vmx::models
