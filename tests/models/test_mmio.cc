// The MMIO bus (models/mmio.h): range claims, look-up at range edges,
// overlap errors, and routing with the device's latency.
#include <catch2/catch.hpp>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "models/mmio.h"
#include "sim/stats.h"

namespace {

struct Reg : vmx::models::MmioDevice {
  std::uint32_t latency;
  std::vector<std::uint64_t> offsets;
  std::uint64_t last_value = 0;
  unsigned last_size = 0;
  explicit Reg(std::uint32_t l) : latency(l) {}
  std::uint64_t read(std::uint64_t offset, unsigned size, std::uint32_t& cycles) override {
    offsets.push_back(offset);
    last_size = size;
    cycles += latency;
    return 0x1122334455667788ull;
  }
  void write(std::uint64_t offset, std::uint64_t value, unsigned size, std::uint32_t& cycles) override {
    offsets.push_back(offset);
    last_value = value;
    last_size = size;
    cycles += latency;
  }
};

}  // namespace

TEST_CASE("MMIO ranges are found by any address inside them and by no address outside", "[mmio]") {
  vmx::stats::Group root(nullptr, "root");
  vmx::models::MmioBus bus(&root);
  Reg a(100), b(7);
  bus.attach(0xF0000000, 0x1000, &a, "a");
  bus.attach(0xE0000000, 0x4000, &b, "b");  // attached out of order: kept sorted
  CHECK(bus.find(0xF0000000)->device == &a);
  CHECK(bus.find(0xF0000FFF)->device == &a);
  CHECK(bus.find(0xF0001000) == nullptr);
  CHECK(bus.find(0xEFFFFFFF) == nullptr);
  CHECK(bus.find(0xE0003FF8, 8)->device == &b);
  CHECK(bus.find(0xE0003FFC, 8) == nullptr);  // runs past the end of b
  CHECK(bus.find(0x1000) == nullptr);
  REQUIRE(bus.ranges().size() == 2);
  CHECK(bus.ranges()[0].name == "b");

  std::uint64_t v = 0;
  std::uint32_t cycles = 0;
  REQUIRE(bus.read(0xF0000010, 4, v, cycles));
  CHECK(v == 0x55667788u);  // truncated to the access size
  CHECK(cycles == 100);
  CHECK(a.offsets == std::vector<std::uint64_t>{0x10});
  REQUIRE(bus.write(0xE0000008, 0xABCDEF, 2, cycles));
  CHECK(b.last_value == 0xCDEF);
  CHECK(cycles == 107);
  CHECK_FALSE(bus.read(0xD0000000, 8, v, cycles));
  CHECK(cycles == 107);
  CHECK(dynamic_cast<const vmx::stats::Counter*>(root.find("mmio.reads"))->value() == 1);
  CHECK(dynamic_cast<const vmx::stats::Counter*>(root.find("mmio.writes"))->value() == 1);
  CHECK(dynamic_cast<const vmx::stats::Counter*>(root.find("mmio.device_cycles"))->value() == 107);
}

TEST_CASE("overlapping MMIO claims are refused, naming both ranges, and a detached range can be claimed again", "[mmio]") {
  vmx::stats::Group root(nullptr, "root");
  vmx::models::MmioBus bus(&root);
  Reg a(1), b(1);
  bus.attach(0xF0000000, 0x1000, &a, "nic.bar0");
  try {
    bus.attach(0xF0000800, 0x1000, &b, "other");
    FAIL("overlap accepted");
  } catch (const std::invalid_argument& e) {
    std::string m = e.what();
    CHECK(m.find("other") != std::string::npos);
    CHECK(m.find("nic.bar0") != std::string::npos);
  }
  CHECK_THROWS_AS(bus.attach(0x1000, 0, &b, "empty"), std::invalid_argument);
  bus.attach(0xF0001000, 0x1000, &b, "adjacent");  // touching is not overlapping
  CHECK(bus.detach(0xF0000000));
  CHECK_FALSE(bus.detach(0xF0000000));
  bus.attach(0xF0000800, 0x800, &b, "moved");
  CHECK(bus.find(0xF0000900)->name == "moved");
}
