#include "models/mmio.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace vmx::models {

void MmioBus::attach(std::uint64_t base, std::uint64_t size, MmioDevice* device, const std::string& name) {
  if (!device) throw std::invalid_argument(fmt::format("MMIO range '{}': no device", name));
  if (size == 0 || base + size < base)
    throw std::invalid_argument(fmt::format("MMIO range '{}' at {:#x}: bad size {:#x}", name, base, size));
  for (const Range& r : m_ranges)
    if (base < r.base + r.size && r.base < base + size)
      throw std::invalid_argument(fmt::format("MMIO range '{}' [{:#x}, {:#x}) overlaps '{}' [{:#x}, {:#x})", name,
                                              base, base + size, r.name, r.base, r.base + r.size));
  Range n{base, size, device, name};
  auto at = std::lower_bound(m_ranges.begin(), m_ranges.end(), base,
                             [](const Range& r, std::uint64_t b) { return r.base < b; });
  m_ranges.insert(at, std::move(n));
}

bool MmioBus::detach(std::uint64_t base) {
  auto it = std::find_if(m_ranges.begin(), m_ranges.end(), [base](const Range& r) { return r.base == base; });
  if (it == m_ranges.end()) return false;
  m_ranges.erase(it);
  return true;
}

const MmioBus::Range* MmioBus::find(std::uint64_t pa, unsigned size) const {
  // The last range whose base is <= pa.
  auto it = std::upper_bound(m_ranges.begin(), m_ranges.end(), pa,
                             [](std::uint64_t a, const Range& r) { return a < r.base; });
  if (it == m_ranges.begin()) return nullptr;
  const Range& r = *(it - 1);
  if (pa - r.base >= r.size || r.size - (pa - r.base) < size) return nullptr;
  return &r;
}

bool MmioBus::read(std::uint64_t pa, unsigned size, std::uint64_t& value, std::uint32_t& cycles) {
  const Range* r = find(pa, size);
  if (!r) return false;
  std::uint32_t c = 0;
  value = r->device->read(pa - r->base, size, c);
  if (size < 8) value &= (1ull << (8 * size)) - 1;
  cycles += c;
  ++m_stats.reads;
  m_stats.device_cycles += c;
  return true;
}

bool MmioBus::write(std::uint64_t pa, std::uint64_t value, unsigned size, std::uint32_t& cycles) {
  const Range* r = find(pa, size);
  if (!r) return false;
  std::uint32_t c = 0;
  r->device->write(pa - r->base, size < 8 ? value & ((1ull << (8 * size)) - 1) : value, size, c);
  cycles += c;
  ++m_stats.writes;
  m_stats.device_cycles += c;
  return true;
}

}  // namespace vmx::models
