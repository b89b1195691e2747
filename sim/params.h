// Declaring parameters once.
//
// Every configurable component has a parameter struct with a single member
// template `visit` that names each parameter exactly once, with its key,
// default, unit, constraints and a description that cites where the default
// comes from:
//
//   struct CacheParams {
//     std::uint64_t size;
//     std::uint32_t ways;
//     template <class V> void visit(V& v) {
//       v.param(size, "size", "32KiB", cfg::Spec(cfg::Unit::Bytes).power_of_two(),
//               "Capacity. Default: 32 KiB L1D of Intel Skylake (Intel Optimization Manual, 2.2).");
//       v.param(ways, "ways", "8", cfg::Spec().at_least(1), "Associativity.");
//     }
//   };
//
// Visitors then give defaults (cfg::defaults<T>()), read and validate YAML
// (sim/config.h), write the fully resolved config, and generate the parameter
// reference, all from that one declaration. Nested structs are
//   v.section(member, "key", "description");
// lists of structs are
//   v.list(std::vector<T>& member, "key", "description", min_items);
// and a struct whose fields depend on a "type" key is
//   v.variant(type_string_member, "type", "description",
//             cfg::alt("stream", stream_params), cfg::alt("compute", compute_params));
// where the chosen alternative's parameters sit beside the "type" key.
//
// Member types: bool, std::uint32_t, std::uint64_t, std::int64_t, double,
// std::string. Bytes are stored in bytes, times in picoseconds, frequencies
// in hertz (sim/units.h).
#pragma once

#include <charconv>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "sim/units.h"

namespace vmx::cfg {

/// Unit and constraints of one parameter.
struct Spec {
  Unit unit = Unit::Count;
  std::optional<double> min;
  std::optional<double> max;
  bool pow2 = false;
  std::vector<std::string> choices;  // for Unit::Text: the allowed values, if any

  Spec() = default;
  // An instruction count of one software path is at most a billion (a third
  // of a second at 3 GHz); larger values could only overflow cycle counts.
  explicit Spec(Unit u) : unit(u) {
    if (u == Unit::Instructions) max = 1e9;
  }
  Spec& at_least(double v) { min = v; return *this; }
  Spec& at_most(double v) { max = v; return *this; }
  Spec& power_of_two() { pow2 = true; return *this; }
  Spec& one_of(std::vector<std::string> c) { unit = Unit::Text; choices = std::move(c); return *this; }
};

/// A rule across the values of one parameter struct that they break: the
/// key to blame, what was expected, and what was found. A parameter struct
/// may declare `Problem check() const`; the config reader calls it after
/// reading the struct and reports a problem at the key's path.
struct Problem {
  const char* key = nullptr;  // null: no problem
  std::string expected, found;
  explicit operator bool() const { return key != nullptr; }
};

/// The geometry rule of a set-associative array of `entries` entries in
/// `ways` ways (a TLB, a paging-structure cache, an IOMMU cache): entries a
/// non-zero multiple of ways, and a power-of-two number of sets.
inline Problem geometry_problem(std::uint64_t entries, std::uint64_t ways) {
  if (ways == 0) return {"ways", "at least 1", "0"};
  if (entries == 0 || entries % ways != 0)
    return {"entries", "a non-zero multiple of ways (" + std::to_string(ways) + ")", std::to_string(entries)};
  const std::uint64_t sets = entries / ways;
  if (sets & (sets - 1))
    return {"entries", "a power-of-two number of sets, entries / ways (" + std::to_string(ways) + " ways)",
            std::to_string(entries) + ", " + std::to_string(sets) + " sets"};
  return {};
}

/// One alternative of a variant: its name and the parameter struct it selects.
template <class T>
struct Alt {
  const char* name;
  T& params;
};
template <class T>
Alt<T> alt(const char* name, T& params) { return Alt<T>{name, params}; }

/// Thrown when a declared default does not parse: a bug in the declaration.
class DeclarationError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

/// Converts text to a member of type T according to the unit. Returns an
/// error description ("expected a size such as 64KiB") or empty on success.
/// Constraints in Spec are checked too.
template <class T>
std::string convert(std::string_view text, const Spec& spec, T& out);

/// Canonical text of a value (used for the resolved config and the docs).
template <class T>
std::string to_text(const T& value, const Spec& spec);

/// Sets every parameter to its declared default.
class DefaultsVisitor {
 public:
  template <class T>
  void param(T& member, const char* key, const char* def, const Spec& spec, const char* /*desc*/) {
    std::string err = convert(def, spec, member);
    if (!err.empty())
      throw DeclarationError(std::string("default of '") + key + "' (" + def + "): " + err);
  }
  template <class T>
  void section(T& member, const char* /*key*/, const char* /*desc*/) { member.visit(*this); }
  template <class T>
  void list(std::vector<T>& member, const char* /*key*/, const char* /*desc*/, std::size_t /*min_items*/ = 0) {
    member.clear();
  }
  template <class... Ts>
  void variant(std::string& member, const char* /*key*/, const char* /*desc*/, Alt<Ts>... alts) {
    member = first_name(alts...);
    (alts.params.visit(*this), ...);
  }

 private:
  template <class A, class... Rest>
  static const char* first_name(const A& a, const Rest&...) { return a.name; }
};

template <class P>
P defaults() {
  P p{};
  DefaultsVisitor v;
  p.visit(v);
  return p;
}

// ---------------------------------------------------------------------------
// Implementation of convert / to_text.

std::string check_range(double value, const Spec& spec);

template <class T>
std::string convert(std::string_view text, const Spec& spec, T& out) {
  if constexpr (std::is_same_v<T, bool>) {
    auto v = parse_flag(text);
    if (!v) return "expected true or false";
    out = *v;
    return {};
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!spec.choices.empty()) {
      bool ok = false;
      for (const auto& c : spec.choices) ok = ok || c == text;
      if (!ok) {
        std::string list;
        for (const auto& c : spec.choices) list += (list.empty() ? "" : ", ") + c;
        return "expected one of: " + list;
      }
    }
    out = std::string(text);
    return {};
  } else if constexpr (std::is_same_v<T, double>) {
    auto v = parse_real(text);
    if (!v) return "expected a number";
    std::string e = check_range(*v, spec);
    if (!e.empty()) return e;
    out = *v;
    return {};
  } else if constexpr (std::is_integral_v<T>) {
    std::optional<std::uint64_t> u;
    const char* what = "expected a whole number";
    switch (spec.unit) {
      case Unit::Bytes: u = parse_bytes(text); what = "expected a size such as 4096, 64KiB or 2MiB"; break;
      case Unit::Time: u = parse_time_ps(text); what = "expected a time such as 10ms, 5us or 100ns"; break;
      case Unit::Frequency: u = parse_frequency_hz(text); what = "expected a frequency such as 3GHz"; break;
      default:
        if constexpr (std::is_signed_v<T>) {
          auto s = parse_int(text);
          if (!s) return what;
          std::string e = check_range(static_cast<double>(*s), spec);
          if (!e.empty()) return e;
          out = static_cast<T>(*s);
          return {};
        } else {
          u = parse_uint(text);
        }
    }
    if (!u) return what;
    if (*u > static_cast<std::uint64_t>(std::numeric_limits<T>::max())) {
      Spec limit = spec;
      limit.min.reset();
      limit.max = static_cast<double>(std::numeric_limits<T>::max());
      return check_range(static_cast<double>(*u), limit);
    }
    std::string e = check_range(static_cast<double>(*u), spec);
    if (!e.empty()) return e;
    if (spec.pow2 && (*u == 0 || (*u & (*u - 1)) != 0)) return "must be a power of two";
    out = static_cast<T>(*u);
    return {};
  } else {
    static_assert(sizeof(T) == 0, "unsupported parameter type");
  }
}

template <class T>
std::string to_text(const T& value, const Spec& spec) {
  if constexpr (std::is_same_v<T, bool>) {
    return value ? "true" : "false";
  } else if constexpr (std::is_same_v<T, std::string>) {
    return value;
  } else if constexpr (std::is_same_v<T, double>) {
    // Shortest text that reads back as the same double ("0.1", "1e-09");
    // whole numbers keep a ".0" so they read as reals.
    char buf[32];
    auto res = std::to_chars(buf, buf + sizeof buf, value);
    std::string s(buf, res.ptr);
    if (s.find_first_of(".en") == std::string::npos) s += ".0";
    return s;
  } else {
    switch (spec.unit) {
      case Unit::Bytes: return format_bytes(static_cast<std::uint64_t>(value));
      case Unit::Time: return format_time_ps(static_cast<std::uint64_t>(value));
      case Unit::Frequency: return format_frequency_hz(static_cast<std::uint64_t>(value));
      default: return std::to_string(value);
    }
  }
}

}  // namespace vmx::cfg
