// Core loads and stores to MMIO ranges (models/mmio.h): uncacheable, timed by
// the device, reached from a guest only through EPT.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmx_harness.h"
#include "mmu/paging.h"
#include "models/mmio.h"

namespace {

using vmx::cpu::Core;
using vmx::test::Exit;
using vmx::test::VmxHarness;
namespace ept = vmx::mmu::ept;
constexpr unsigned kVmcall = 18, kEptViolation = 48;
constexpr std::uint64_t kBar = 0xF0000000;  // above the harness's 64 MiB of RAM
constexpr std::uint32_t kDeviceLatency = 777;

struct Device : vmx::models::MmioDevice {
  std::vector<std::uint64_t> reads, writes, values;
  std::uint64_t read(std::uint64_t offset, unsigned, std::uint32_t& cycles) override {
    reads.push_back(offset);
    cycles += kDeviceLatency;
    return 0xD00D0000 + offset;
  }
  void write(std::uint64_t offset, std::uint64_t value, unsigned, std::uint32_t& cycles) override {
    writes.push_back(offset);
    values.push_back(value);
    cycles += kDeviceLatency;
  }
};

}  // namespace

TEST_CASE("root-mode loads and stores beyond RAM reach the device uncached, at the device's latency", "[mmio]") {
  VmxHarness h;
  Device dev;
  h.platform().mmio().attach(kBar, 0x1000, &dev, "dev");
  std::uint64_t v = 0, load_cycles = 0, store_cycles = 0, reads_before = 0, reads_after = 0, writes_before = 0,
                writes_after = 0;
  h.after_vmxon = [&](Core& c) {
    reads_before = h.counter("system.cpu0_mem.reads");
    writes_before = h.counter("system.cpu0_mem.writes");
    c.compute(1);
    std::uint64_t t0 = c.now();
    v = c.load(kBar + 0x18, 4);
    std::uint64_t t1 = c.now();
    c.store(kBar + 0x20, 0x55, 4);
    std::uint64_t t2 = c.now();
    load_cycles = t1 - t0;
    store_cycles = t2 - t1;
    reads_after = h.counter("system.cpu0_mem.reads");
    writes_after = h.counter("system.cpu0_mem.writes");
  };
  h.run();
  CHECK(v == 0xD00D0018);
  CHECK(dev.reads == std::vector<std::uint64_t>{0x18});
  CHECK(dev.writes == std::vector<std::uint64_t>{0x20});
  CHECK(dev.values == std::vector<std::uint64_t>{0x55});
  // One instruction (CPI 1) plus the device; no cache access at all.
  CHECK(load_cycles == 1 + kDeviceLatency);
  CHECK(store_cycles == 1 + kDeviceLatency);
  CHECK(reads_after == reads_before);
  CHECK(writes_after == writes_before);
  CHECK(h.counter("system.mmio.reads") == 1);
  CHECK(h.counter("system.mmio.writes") == 1);
}

TEST_CASE("a guest reaches a device only where EPT maps it and elsewhere the access is an EPT violation", "[mmio][ept]") {
  VmxHarness h;
  Device dev;
  h.platform().mmio().attach(kBar, 0x1000, &dev, "dev");
  constexpr std::uint64_t kGuestBar = 0x2000000;  // 32 MiB guest-physical, outside the identity map
  std::uint64_t v = 0;
  h.guest = [&](Core& c) {
    v = c.load(kGuestBar + 0x8, 8);  // not mapped yet: the hypervisor maps the BAR and resumes
    c.store(kGuestBar + 0x10, 0xAB, 8);
  };
  h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason == kEptViolation) h.ept_map(c, kGuestBar, kBar, ept::kRead | ept::kWrite);
  };
  h.run();
  REQUIRE(h.done);
  REQUIRE(h.reasons() == std::vector<unsigned>{kEptViolation, kVmcall});
  CHECK(h.exits[0].guest_physical == kGuestBar + 0x8);
  CHECK(v == 0xD00D0008);
  CHECK(dev.reads == std::vector<std::uint64_t>{0x8});
  CHECK(dev.values == std::vector<std::uint64_t>{0xAB});
}

TEST_CASE("a load beyond RAM that no device claims is a simulator error naming the address", "[mmio]") {
  VmxHarness h;
  std::string error;
  h.after_vmxon = [&](Core& c) {
    try {
      c.load(0xE0000000, 8);
    } catch (const vmx::cpu::SimulationError& e) {
      error = e.what();
    }
  };
  h.run();
  CHECK(error.find("0xe0000000") != std::string::npos);
  CHECK(error.find("no device") != std::string::npos);
}

TEST_CASE("the NIC's register windows are on the MMIO bus: a core reads and writes them through the root complex",
          "[mmio][nic]") {
  auto p = VmxHarness::small_platform();
  p.nic.enabled = true;
  p.nic.device.vfs = 2;
  VmxHarness h(p);
  const std::uint64_t base = p.nic.device.mmio_base, stride = p.nic.device.mmio_stride;
  std::uint64_t id_pf = 0, id_vf1 = 0, mac = 0, read_cycles = 0, write_cycles = 0;
  h.after_vmxon = [&](Core& c) {
    c.compute(1);
    std::uint64_t t0 = c.now();
    id_pf = c.load(base + 0x008, 4);  // ID: function index, VF bit, requester ID
    std::uint64_t t1 = c.now();
    c.store(base + 2 * stride + 0x00C, 0x44332211, 4);  // VF1's MAC_LO
    std::uint64_t t2 = c.now();
    id_vf1 = c.load(base + 2 * stride + 0x008, 4);
    mac = c.load(base + 2 * stride + 0x00C, 4);
    read_cycles = t1 - t0;
    write_cycles = t2 - t1;
  };
  h.run();
  CHECK((id_pf & 0xFF) == 0);
  CHECK((id_pf & 0x100) == 0);
  CHECK((id_vf1 & 0xFF) == 2);
  CHECK((id_vf1 & 0x100) != 0);
  CHECK(mac == 0x44332211);
  // The root complex's MMIO latencies in core cycles (3 GHz core, 2 GHz root complex), plus the instruction.
  CHECK(read_cycles == 1 + std::uint64_t{p.root_complex.mmio_read_latency} * 3 / 2);
  CHECK(write_cycles == 1 + std::uint64_t{p.root_complex.mmio_write_latency} * 3 / 2);
  CHECK(h.counter("system.root_complex.mmio") == 4);
}
