#include "models/rdt.h"

#include <stdexcept>

namespace vmx::models {

Rdt::Rdt(const RdtParams& params, unsigned llc_ways)
    : m_p(params), m_cbm_len(llc_ways), m_masks(params.classes), m_delay(params.classes, 0), m_gap(params.classes, 0) {
  if (llc_ways < 1 || llc_ways > 32)
    throw std::invalid_argument("platform.rdt: cache allocation needs an LLC of 1 to 32 ways (llc.ways is " +
                                std::to_string(llc_ways) + ")");
  for (auto& m : m_masks) m = full_mask();
}

bool Rdt::owns(std::uint32_t msr) const {
  return msr == rdt_msr::kPqrAssoc || (msr >= rdt_msr::kL3MaskBase && msr < rdt_msr::kL3MaskBase + classes()) ||
         (msr >= rdt_msr::kMbaThrtlBase && msr < rdt_msr::kMbaThrtlBase + classes());
}

bool Rdt::read(std::uint32_t msr, std::uint64_t& value) const {
  if (msr >= rdt_msr::kL3MaskBase && msr < rdt_msr::kL3MaskBase + classes()) {
    value = m_masks[msr - rdt_msr::kL3MaskBase];
    return true;
  }
  if (msr >= rdt_msr::kMbaThrtlBase && msr < rdt_msr::kMbaThrtlBase + classes()) {
    value = m_delay[msr - rdt_msr::kMbaThrtlBase];
    return true;
  }
  return false;
}

bool Rdt::write(std::uint32_t msr, std::uint64_t value) {
  if (msr >= rdt_msr::kL3MaskBase && msr < rdt_msr::kL3MaskBase + classes()) {
    // SDM Vol. 3B, 19.19.4.2: only contiguous runs of ones within the
    // bitmask length; anything else (zero included) is #GP(0).
    if ((value & ~full_mask()) || !contiguous(value)) return false;
    m_masks[msr - rdt_msr::kL3MaskBase] = value;
    return true;
  }
  if (msr >= rdt_msr::kMbaThrtlBase && msr < rdt_msr::kMbaThrtlBase + classes()) {
    // The delay value in bits 15:0 (linear mode); the model faults on a
    // value above the reported maximum and on reserved bits.
    if (value > m_p.mba_max) return false;
    const unsigned c = msr - rdt_msr::kMbaThrtlBase;
    m_delay[c] = static_cast<std::uint32_t>(value);
    m_gap[c] = value == 0 ? 0 : m_p.mba_interval * value / (100 - value);
    return true;
  }
  return false;
}

bool Rdt::valid_pqr(std::uint64_t value) const {
  return (value & 0xFFFFFC00ull) == 0 && (value >> 32) < classes();
}

RdtCpuid Rdt::cpuid(std::uint32_t subleaf) const {
  RdtCpuid r;
  const std::uint32_t highest_clos = classes() - 1;
  switch (subleaf) {
    case 0:
      r.ebx = (1u << 1) | (1u << 3);  // L3 CAT, MBA
      break;
    case 1:
      r.eax = m_cbm_len - 1;  // bitmask length minus one
      r.ebx = 0;              // no ways shared with other agents
      r.ecx = 0;              // no CDP, no non-contiguous masks
      r.edx = highest_clos;
      break;
    case 3:
      r.eax = m_p.mba_max - 1;
      r.ecx = 1u << 2;  // the delay values are linear
      r.edx = highest_clos;
      break;
    default:
      break;
  }
  return r;
}

}  // namespace vmx::models
