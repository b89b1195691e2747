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

namespace vmx::models {

/// PCI requester ID: bus[15:8], device[7:3], function[2:0].
constexpr std::uint16_t requester_id(unsigned bus, unsigned device, unsigned function) {
  return static_cast<std::uint16_t>(((bus & 0xFF) << 8) | ((device & 0x1F) << 3) | (function & 7));
}

/// The MSI address window: 0xFEEx_xxxx (SDM Vol. 3A, 11.11.1).
constexpr std::uint64_t kMsiBase = 0xFEE00000ull;
constexpr std::uint64_t kMsiSize = 0x100000ull;
constexpr bool is_msi_address(std::uint64_t a) { return a >= kMsiBase && a < kMsiBase + kMsiSize; }

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

}  // namespace vmx::models
