// The port-I/O address space (64 Ki ports) and the devices on it.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "sim/stats.h"

namespace vmx::models {

/// A device that claims a range of I/O ports. Latencies are in core cycles.
class IoDevice {
 public:
  virtual ~IoDevice() = default;
  virtual std::uint32_t in(std::uint16_t port, unsigned size, std::uint32_t& cycles) = 0;
  virtual void out(std::uint16_t port, std::uint32_t value, unsigned size, std::uint32_t& cycles) = 0;
};

class IoBus {
 public:
  /// Ports nobody claims read as all ones and ignore writes, as on a PC.
  void attach(std::uint16_t first, std::uint16_t count, IoDevice* dev) {
    for (std::uint32_t p = first; p < std::uint32_t(first) + count && p < 65536; ++p) m_ports[p] = dev;
  }
  IoDevice* device(std::uint16_t port) const { return m_ports[port]; }
  std::uint32_t in(std::uint16_t port, unsigned size, std::uint32_t& cycles) {
    if (IoDevice* d = m_ports[port]) return d->in(port, size, cycles);
    return size >= 4 ? 0xFFFFFFFFu : (1u << (8 * size)) - 1;
  }
  void out(std::uint16_t port, std::uint32_t value, unsigned size, std::uint32_t& cycles) {
    if (IoDevice* d = m_ports[port]) d->out(port, value, size, cycles);
  }

 private:
  std::array<IoDevice*, 65536> m_ports{};
};

/// Debug console on port 0xE9 (the Bochs/QEMU "debugcon" convention): bytes
/// written form lines of text that the run report shows.
class DebugConsole final : public IoDevice {
 public:
  static constexpr std::uint16_t kPort = 0xE9;
  DebugConsole(stats::Group* parent, std::uint32_t latency) : m_stats(parent), m_latency(latency) {}
  std::uint32_t in(std::uint16_t, unsigned, std::uint32_t& cycles) override {
    cycles += m_latency;
    return kPort;  // reads return 0xE9, which lets software detect the port
  }
  void out(std::uint16_t, std::uint32_t value, unsigned, std::uint32_t& cycles) override {
    cycles += m_latency;
    ++m_stats.bytes;
    char c = static_cast<char>(value & 0xFF);
    if (c == '\n') {
      m_lines.push_back(m_line);
      m_line.clear();
    } else {
      m_line.push_back(c);
    }
  }
  const std::vector<std::string>& lines() const { return m_lines; }

 private:
  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "debugcon") {}
    stats::Counter bytes{this, "bytes", "bytes", "bytes written to the debug console"};
  } m_stats;
  std::uint32_t m_latency;
  std::string m_line;
  std::vector<std::string> m_lines;
};

}  // namespace vmx::models
