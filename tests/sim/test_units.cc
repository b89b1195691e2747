// Tests of sim/units.h: parsing values with units and their canonical spelling.
#include <catch2/catch.hpp>

#include "sim/params.h"
#include "sim/units.h"

namespace cfg = vmx::cfg;

TEST_CASE("sizes parse binary and decimal suffixes") {
  CHECK(cfg::parse_bytes("4096") == 4096u);
  CHECK(cfg::parse_bytes("64KiB") == 65536u);
  CHECK(cfg::parse_bytes("2MiB") == (2u << 20));
  CHECK(cfg::parse_bytes("4GiB") == (4ull << 30));
  CHECK(cfg::parse_bytes("1TiB") == (1ull << 40));
  CHECK(cfg::parse_bytes("1KB") == 1000u);
  CHECK(cfg::parse_bytes("1.5KiB") == 1536u);
  CHECK(cfg::parse_bytes(" 8 B ") == 8u);
  CHECK_FALSE(cfg::parse_bytes("0.5B"));
  CHECK_FALSE(cfg::parse_bytes("1.5"));
  CHECK_FALSE(cfg::parse_bytes("64kb"));
  CHECK_FALSE(cfg::parse_bytes("-1KiB"));
  CHECK_FALSE(cfg::parse_bytes("KiB"));
  CHECK_FALSE(cfg::parse_bytes(""));
}

TEST_CASE("times parse to picoseconds and need a unit") {
  CHECK(cfg::parse_time_ps("250ps") == 250u);
  CHECK(cfg::parse_time_ps("100ns") == 100000u);
  CHECK(cfg::parse_time_ps("5us") == 5000000u);
  CHECK(cfg::parse_time_ps("10ms") == 10000000000ull);
  CHECK(cfg::parse_time_ps("1s") == cfg::kPsPerSecond);
  CHECK(cfg::parse_time_ps("0.5ns") == 500u);
  CHECK_FALSE(cfg::parse_time_ps("0.5ps"));
  CHECK_FALSE(cfg::parse_time_ps("10"));
  CHECK_FALSE(cfg::parse_time_ps("10min"));
}

TEST_CASE("frequencies parse to hertz and need a unit") {
  CHECK(cfg::parse_frequency_hz("3GHz") == 3000000000ull);
  CHECK(cfg::parse_frequency_hz("2.5GHz") == 2500000000ull);
  CHECK(cfg::parse_frequency_hz("800MHz") == 800000000u);
  CHECK(cfg::parse_frequency_hz("32kHz") == 32000u);
  CHECK(cfg::parse_frequency_hz("50Hz") == 50u);
  CHECK_FALSE(cfg::parse_frequency_hz("3000000000"));
  CHECK_FALSE(cfg::parse_frequency_hz("3ghz"));
}

TEST_CASE("plain numbers and flags") {
  CHECK(cfg::parse_uint("42") == 42u);
  CHECK(cfg::parse_uint("0x1F") == 31u);
  CHECK(cfg::parse_uint("1_000") == 1000u);
  CHECK(cfg::parse_uint("18446744073709551615") == UINT64_MAX);
  CHECK_FALSE(cfg::parse_uint("18446744073709551616"));
  CHECK_FALSE(cfg::parse_uint("-1"));
  CHECK_FALSE(cfg::parse_uint("4KiB"));
  CHECK(cfg::parse_int("-7") == -7);
  CHECK(cfg::parse_int("7") == 7);
  CHECK_FALSE(cfg::parse_int("9223372036854775808"));
  CHECK(cfg::parse_real("0.25") == 0.25);
  CHECK(cfg::parse_real("1e-3") == 0.001);
  CHECK_FALSE(cfg::parse_real("1.5x"));
  CHECK_FALSE(cfg::parse_real("nan"));
  CHECK(cfg::parse_flag("true") == true);
  CHECK(cfg::parse_flag("on") == true);
  CHECK(cfg::parse_flag("no") == false);
  CHECK_FALSE(cfg::parse_flag("1"));
}

TEST_CASE("canonical spelling uses the largest exact unit") {
  CHECK(cfg::format_bytes(65536) == "64KiB");
  CHECK(cfg::format_bytes(1536) == "1536B");
  CHECK(cfg::format_bytes(2ull << 30) == "2GiB");
  CHECK(cfg::format_bytes(0) == "0B");
  CHECK(cfg::format_time_ps(10000000000ull) == "10ms");
  CHECK(cfg::format_time_ps(1500) == "1500ps");
  CHECK(cfg::format_time_ps(0) == "0ps");
  CHECK(cfg::format_frequency_hz(3000000000ull) == "3GHz");
  CHECK(cfg::format_frequency_hz(2500000000ull) == "2500MHz");
  CHECK(cfg::unit_name(cfg::Unit::Bytes) == std::string("bytes"));
}

TEST_CASE("formatting and parsing round-trip") {
  auto n = GENERATE(as<std::uint64_t>{}, 1, 64, 1000, 4096, 1536, 3ull << 30, 1000000000000ull, 123456789ull);
  CHECK(cfg::parse_bytes(cfg::format_bytes(n)) == n);
  CHECK(cfg::parse_time_ps(cfg::format_time_ps(n)) == n);
  CHECK(cfg::parse_frequency_hz(cfg::format_frequency_hz(n)) == n);
}

TEST_CASE("reals are written exactly") {
  auto v = GENERATE(0.5, 0.1, 1.0, 1e-9, 0.1234567891, 123456.75, 2.0 / 3.0);
  std::string text = cfg::to_text(v, cfg::Spec(cfg::Unit::Ratio));
  CHECK(cfg::parse_real(text) == v);
  CHECK(cfg::to_text(1.0, cfg::Spec()) == "1.0");
  CHECK(cfg::to_text(0.25, cfg::Spec()) == "0.25");
}
