// The VMCS as the processor holds it while it is current.
//
// Software names fields only by their SDM encodings through VMREAD and
// VMWRITE; the layout of the VMCS region in memory is implementation
// specific (SDM Vol. 3C, 25.2), so the processor keeps the field values here
// and the region in physical memory holds the revision identifier and the
// launch state. Fields are stored in a 512-slot array indexed by width, type
// and index taken from the encoding (SDM Vol. 3C, 25.11.2), which also serves
// as the check that a field is supported.
#pragma once

#include <array>
#include <bitset>
#include <cstdint>
#include <map>
#include <memory>

#include "cpu/vmx.h"

namespace vmx::events {
class Listener;
}

namespace vmx::cpu {

class Vmcs {
 public:
  enum class Access : std::uint8_t { Ok, Unsupported, ReadOnly };

  /// Slot of an encoding: [8:7] width, [6:5] type, [4:0] index (bits 5:1;
  /// supported() rejects encodings with index bits 9:6 set).
  static constexpr unsigned slot(std::uint32_t enc) {
    return (((enc >> 13) & 3u) << 7) | (((enc >> 10) & 3u) << 5) | ((enc >> 1) & 31u);
  }
  static bool supported(std::uint32_t enc);
  static bool read_only(std::uint32_t enc) { return ((enc >> 10) & 3u) == 1; }

  /// VMREAD semantics: unsupported encodings fail (VM-instruction error 12).
  Access read(std::uint32_t enc, std::uint64_t& value) const;
  /// VMWRITE semantics: read-only fields fail (error 13) unless
  /// `any_field` (IA32_VMX_MISC bit 29, "VMWRITE to any supported field",
  /// which the model's processor reports, SDM Vol. 3C, A.6).
  Access write(std::uint32_t enc, std::uint64_t value, bool any_field = false);

  /// Processor-internal access by constant encoding (no checks).
  std::uint64_t get(std::uint32_t enc) const { return m_fields[slot(enc)]; }
  void set(std::uint32_t enc, std::uint64_t v) { m_fields[slot(enc)] = v; }

  std::uint64_t region() const { return m_region; }
  void set_region(std::uint64_t pa) { m_region = pa; }
  bool launched() const { return m_launched; }
  void set_launched(bool l) { m_launched = l; }
  /// Whether the guest context last left at an operation boundary (an
  /// interrupt-class exit) rather than inside an operation: the monitor trap
  /// flag counts the operation after entry differently (core.cc).
  bool exited_at_boundary() const { return m_exited_at_boundary; }
  void set_exited_at_boundary(bool b) { m_exited_at_boundary = b; }
  /// Simulator annotation: the listener the core reports to while this
  /// VMCS is in non-root operation (Core::observe_vmcs).
  events::Listener* observer() const { return m_observer; }
  void set_observer(events::Listener* o) { m_observer = o; }

 private:
  std::array<std::uint64_t, 512> m_fields{};
  std::uint64_t m_region = 0;
  bool m_launched = false;
  bool m_exited_at_boundary = false;
  events::Listener* m_observer = nullptr;
};

/// The VMCSs of the platform by region address. A VMCS cleared on one core
/// can be made current on another (VMCLEAR, then VMPTRLD), so the store is
/// shared by all cores. Looked up only by VMPTRLD and VMCLEAR.
class VmcsStore {
 public:
  Vmcs& at(std::uint64_t region_pa) {
    auto& p = m_vmcs[region_pa];
    if (!p) {
      p = std::make_unique<Vmcs>();
      p->set_region(region_pa);
    }
    return *p;
  }

 private:
  std::map<std::uint64_t, std::unique_ptr<Vmcs>> m_vmcs;
};

}  // namespace vmx::cpu
