// Memory-mapped I/O: the physical-address ranges that devices claim and the
// bus that routes a core's uncacheable access to the device behind it.
//
// A device implements MmioDevice (offsets relative to the start of its
// range, sizes 1, 2, 4 or 8 bytes, latency added to `cycles` in core
// cycles). The core consults the bus only for physical addresses outside
// RAM (its slow path), so the RAM path pays nothing for MMIO; MMIO accesses
// bypass the caches (uncacheable, SDM Vol. 3A, 12.3: UC memory type) and
// cost what the device says. In VMX non-root operation a guest reaches a
// device only through an EPT mapping of its range; an unmapped device
// address is an EPT violation like any other (the hypervisor emulates it).
// Plain C++, no SystemC: a device that needs SystemC time wraps this
// interface around its own module.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sim/stats.h"

namespace vmx::models {

class MmioDevice {
 public:
  virtual ~MmioDevice() = default;
  virtual std::uint64_t read(std::uint64_t offset, unsigned size, std::uint32_t& cycles) = 0;
  virtual void write(std::uint64_t offset, std::uint64_t value, unsigned size, std::uint32_t& cycles) = 0;
};

class MmioBus {
 public:
  struct Range {
    std::uint64_t base = 0, size = 0;
    MmioDevice* device = nullptr;
    std::string name;
  };

  explicit MmioBus(stats::Group* parent) : m_stats(parent) {}

  /// Claims [base, base + size) for `device`. Throws if the range is empty,
  /// wraps, or overlaps a range already claimed (naming both).
  void attach(std::uint64_t base, std::uint64_t size, MmioDevice* device, const std::string& name);
  /// Releases the range that starts at `base` (a BAR being moved); false if none.
  bool detach(std::uint64_t base);

  /// The range holding [pa, pa + size), or nullptr. Binary search over the
  /// sorted ranges: no allocation.
  const Range* find(std::uint64_t pa, unsigned size = 1) const;

  /// An access to a claimed address; false (and nothing done) if no device
  /// claims all of [pa, pa + size).
  bool read(std::uint64_t pa, unsigned size, std::uint64_t& value, std::uint32_t& cycles);
  bool write(std::uint64_t pa, std::uint64_t value, unsigned size, std::uint32_t& cycles);

  const std::vector<Range>& ranges() const { return m_ranges; }

 private:
  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "mmio", "memory-mapped I/O bus") {}
    stats::Counter reads{this, "reads", "accesses", "uncacheable reads routed to a device"};
    stats::Counter writes{this, "writes", "accesses", "uncacheable writes routed to a device"};
    stats::Counter device_cycles{this, "device_cycles", "cycles", "latency the devices charged for them"};
  } m_stats;
  std::vector<Range> m_ranges;  // sorted by base, disjoint
};

}  // namespace vmx::models
