// What travels with a device's memory request, and where MSIs go.
//
// Every DMA a device issues is a TLM-2.0 generic-payload transaction on the
// device's initiator socket carrying a DmaContext extension (STYLE.md 6: the
// virtualization context of a request is one documented extension). The
// platform's root complex reads it to pick the IOMMU context (requester ID,
// and PASID for requests-with-PASID, PCIe 5.0 section 6.20) and to account
// the DMA to its function. Writes that a device addresses to the MSI window
// are interrupt messages, not memory writes (SDM Vol. 3A, 11.11; VT-d 5.1):
// the root complex hands them to an MsiSink.
#pragma once

#include <cstdint>

#include <tlm>

#include "iommu/dma.h"

namespace vmx::models {

// Requester IDs, the MSI window and interrupt messages are defined below the
// IOMMU (iommu/dma.h), which models and iommu/ both include.
using iommu::is_msi_address;
using iommu::kMsiBase;
using iommu::kMsiSize;
using iommu::MsiMessage;
using iommu::MsiSink;
using iommu::requester_id;

/// TLM extension attached to every device-initiated transaction.
class DmaContext : public tlm::tlm_extension<DmaContext> {
 public:
  std::uint16_t requester = 0;  // requester ID of the issuing function
  bool has_pasid = false;       // a request with a PASID prefix
  std::uint32_t pasid = 0;      // 20 bits
  bool privileged = false;      // PASID prefix "privileged mode requested"
  bool execute = false;         // PASID prefix "execute requested"

  tlm::tlm_extension_base* clone() const override { return new DmaContext(*this); }
  void copy_from(const tlm::tlm_extension_base& other) override {
    *this = static_cast<const DmaContext&>(other);
  }
};

}  // namespace vmx::models
