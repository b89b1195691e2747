// What a device's memory request carries that the IOMMU and the devices
// both need, free of SystemC: the PCI requester ID, the MSI address window,
// and an interrupt message as the root complex hands it on. models/dma.h
// carries the same fields on TLM transactions (DmaContext) and re-exports
// these names; iommu/ includes only this header (iommu sits below models).
#pragma once

#include <cstdint>

#include "iommu/vtd_formats.h"  // requester_id

namespace vmx::iommu {

/// The MSI address window: 0xFEEx_xxxx (SDM Vol. 3A, 11.11.1).
constexpr std::uint64_t kMsiBase = 0xFEE00000ull;
constexpr std::uint64_t kMsiSize = 0x100000ull;
constexpr bool is_msi_address(std::uint64_t a) { return a >= kMsiBase && a < kMsiBase + kMsiSize; }

/// An interrupt message as the root complex sees it: the DMA write's
/// address and data, and who sent it (for interrupt remapping).
struct MsiMessage {
  std::uint64_t address = 0;
  std::uint32_t data = 0;
  std::uint16_t requester = 0;
};

/// Receives interrupt messages (the platform's interrupt fabric: LAPICs,
/// interrupt remapping, posting).
class MsiSink {
 public:
  virtual ~MsiSink() = default;
  virtual void msi(const MsiMessage& m) = 0;
};

}  // namespace vmx::iommu
