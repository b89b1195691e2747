#include "sim/units.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <string>
#include <utility>

namespace vmx::cfg {

const char* unit_name(Unit u) {
  switch (u) {
    case Unit::Count: return "count";
    case Unit::Bytes: return "bytes";
    case Unit::Time: return "time";
    case Unit::Frequency: return "frequency";
    case Unit::Cycles: return "cycles";
    case Unit::Instructions: return "instructions";
    case Unit::Ratio: return "ratio";
    case Unit::Flag: return "flag";
    case Unit::Text: return "text";
  }
  return "?";
}

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Splits "2.5GHz" into number 2.5 and suffix "GHz". The number must be a plain
// non-negative decimal (no exponent, no sign).
bool split_number(std::string_view s, double& number, std::string_view& suffix, bool& integral) {
  s = trim(s);
  std::size_t i = 0;
  bool digits = false, dot = false;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || (s[i] == '.' && !dot))) {
    if (s[i] == '.') dot = true; else digits = true;
    ++i;
  }
  if (!digits) return false;
  std::string num(s.substr(0, i));
  number = std::strtod(num.c_str(), nullptr);
  integral = !dot;
  suffix = trim(s.substr(i));
  return true;
}

template <std::size_t N>
std::optional<std::uint64_t> scaled(std::string_view text, const std::pair<const char*, double> (&table)[N],
                                    bool bare_allowed) {
  double number = 0;
  std::string_view suffix;
  bool integral = false;
  if (!split_number(text, number, suffix, integral)) return std::nullopt;
  if (suffix.empty()) {
    if (!bare_allowed || !integral) return std::nullopt;
    return static_cast<std::uint64_t>(number);
  }
  for (const auto& [name, factor] : table) {
    if (suffix == name) {
      double v = number * factor;
      if (v > 1.8e19) return std::nullopt;
      double r = std::round(v);
      if (std::fabs(v - r) > 1e-6 * (r > 1 ? r : 1)) return std::nullopt;  // must be whole
      return static_cast<std::uint64_t>(r);
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::uint64_t> parse_bytes(std::string_view text) {
  static const std::pair<const char*, double> table[] = {
      {"B", 1.0},           {"KiB", 1024.0},     {"MiB", 1048576.0}, {"GiB", 1073741824.0},
      {"TiB", 1099511627776.0}, {"KB", 1e3},     {"MB", 1e6},        {"GB", 1e9},
      {"TB", 1e12}};
  return scaled(text, table, true);
}

std::optional<std::uint64_t> parse_time_ps(std::string_view text) {
  static const std::pair<const char*, double> table[] = {
      {"ps", 1.0}, {"ns", 1e3}, {"us", 1e6}, {"ms", 1e9}, {"s", 1e12}};
  return scaled(text, table, false);
}

std::optional<std::uint64_t> parse_frequency_hz(std::string_view text) {
  static const std::pair<const char*, double> table[] = {
      {"Hz", 1.0}, {"kHz", 1e3}, {"MHz", 1e6}, {"GHz", 1e9}};
  return scaled(text, table, false);
}

std::optional<std::uint64_t> parse_uint(std::string_view text) {
  text = trim(text);
  if (text.empty() || text.size() > 20) return std::nullopt;
  std::uint64_t v = 0;
  bool hex = text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X');
  std::size_t i = hex ? 2 : 0;
  for (; i < text.size(); ++i) {
    char c = text[i];
    unsigned d;
    if (std::isdigit(static_cast<unsigned char>(c))) d = static_cast<unsigned>(c - '0');
    else if (hex && std::isxdigit(static_cast<unsigned char>(c)))
      d = static_cast<unsigned>(std::tolower(static_cast<unsigned char>(c)) - 'a' + 10);
    else if (c == '_') continue;
    else return std::nullopt;
    std::uint64_t base = hex ? 16 : 10;
    if (v > (UINT64_MAX - d) / base) return std::nullopt;
    v = v * base + d;
  }
  return v;
}

std::optional<std::int64_t> parse_int(std::string_view text) {
  text = trim(text);
  bool neg = !text.empty() && text[0] == '-';
  auto u = parse_uint(neg ? text.substr(1) : text);
  if (!u || *u > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
  return neg ? -static_cast<std::int64_t>(*u) : static_cast<std::int64_t>(*u);
}

std::optional<double> parse_real(std::string_view text) {
  std::string s(trim(text));
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::optional<bool> parse_flag(std::string_view text) {
  text = trim(text);
  if (text == "true" || text == "on" || text == "yes") return true;
  if (text == "false" || text == "off" || text == "no") return false;
  return std::nullopt;
}

namespace {
template <std::size_t N>
std::string format_scaled(std::uint64_t v, const std::pair<const char*, std::uint64_t> (&table)[N]) {
  // Largest unit that divides exactly; table is ordered from largest to smallest.
  for (const auto& [name, factor] : table)
    if (v != 0 && v % factor == 0) return std::to_string(v / factor) + name;
  return std::to_string(v) + table[N - 1].first;
}
}  // namespace

std::string format_bytes(std::uint64_t bytes) {
  static const std::pair<const char*, std::uint64_t> table[] = {
      {"TiB", 1ull << 40}, {"GiB", 1ull << 30}, {"MiB", 1ull << 20}, {"KiB", 1ull << 10}, {"B", 1}};
  return format_scaled(bytes, table);
}

std::string format_time_ps(std::uint64_t ps) {
  static const std::pair<const char*, std::uint64_t> table[] = {
      {"s", 1000000000000ull}, {"ms", 1000000000ull}, {"us", 1000000ull}, {"ns", 1000ull}, {"ps", 1}};
  return format_scaled(ps, table);
}

std::string format_frequency_hz(std::uint64_t hz) {
  static const std::pair<const char*, std::uint64_t> table[] = {
      {"GHz", 1000000000ull}, {"MHz", 1000000ull}, {"kHz", 1000ull}, {"Hz", 1}};
  return format_scaled(hz, table);
}

}  // namespace vmx::cfg

#include "sim/params.h"

namespace vmx::cfg {

std::string check_range(double value, const Spec& spec) {
  // A bound in the parameter's own unit (32MiB, 1us), as the docs show it.
  auto num = [&spec](double d) {
    if (d >= 0 && d < 1.8e19 && d == static_cast<double>(static_cast<std::uint64_t>(d))) {
      const auto v = static_cast<std::uint64_t>(d);
      if (spec.unit == Unit::Bytes) return format_bytes(v);
      if (spec.unit == Unit::Time) return format_time_ps(v);
      if (spec.unit == Unit::Frequency) return format_frequency_hz(v);
    }
    std::string s = std::to_string(d);
    if (s.find('.') != std::string::npos) {
      while (s.size() > 1 && s.back() == '0') s.pop_back();
      if (!s.empty() && s.back() == '.') s.pop_back();
    }
    return s;
  };
  if (spec.min && value < *spec.min) return "must be at least " + num(*spec.min);
  if (spec.max && value > *spec.max) return "must be at most " + num(*spec.max);
  return {};
}

}  // namespace vmx::cfg
