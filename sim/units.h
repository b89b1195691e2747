// Units of configuration values: sizes, times and frequencies as people write
// them in YAML ("64KiB", "10ms", "3GHz") and their canonical spelling.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace vmx::cfg {

/// Sizes are bytes, times are picoseconds, frequencies are hertz.
enum class Unit : std::uint8_t {
  Count,         // plain integer (entries, ways, cores, iterations)
  Bytes,         // "4096", "64KiB", "2MiB", "4GiB", "1KB" (decimal)
  Time,          // "10ms", "5us", "100ns", "250ps", "1s" -> picoseconds
  Frequency,     // "3GHz", "2.5GHz", "800MHz" -> hertz
  Cycles,        // integer count of core clock cycles
  Instructions,  // integer count of instructions
  Ratio,         // real number
  Flag,          // true / false
  Text,          // free string or one of a list of choices
};

const char* unit_name(Unit u);

/// Each returns nullopt when the text is not a valid value of that unit.
std::optional<std::uint64_t> parse_bytes(std::string_view text);
std::optional<std::uint64_t> parse_time_ps(std::string_view text);
std::optional<std::uint64_t> parse_frequency_hz(std::string_view text);
std::optional<std::uint64_t> parse_uint(std::string_view text);
std::optional<std::int64_t> parse_int(std::string_view text);
std::optional<double> parse_real(std::string_view text);
std::optional<bool> parse_flag(std::string_view text);

/// Canonical spelling: the largest unit that represents the value exactly.
std::string format_bytes(std::uint64_t bytes);
std::string format_time_ps(std::uint64_t ps);
std::string format_frequency_hz(std::uint64_t hz);

constexpr std::uint64_t kPsPerSecond = 1000000000000ull;

}  // namespace vmx::cfg
