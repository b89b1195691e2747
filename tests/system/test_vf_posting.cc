// A passed-through device's interrupts through VT-d posting to a vCPU of the
// real hypervisor (hypervisor.posted_interrupts on): while the vCPU runs,
// the MSI arrives without a VM exit; while it is blocked in HLT, the
// descriptor's wake-up vector makes the hypervisor wake it and the interrupt
// is delivered right after its next entry.
#define SC_INCLUDE_DYNAMIC_PROCESSES
#include <systemc>

#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "cpu/core.h"
#include "hypervisor/hypervisor.h"
#include "iommu/interrupt_remap.h"
#include "platform/platform.h"
#include "sim/fiber.h"
#include "sim/stats.h"

namespace {

using vmx::cpu::Core;
namespace irte = vmx::iommu::irte;

constexpr std::uint16_t kVf = vmx::models::requester_id(3, 0, 1);
constexpr std::uint64_t kIrt = 0x3F00000;  // host-physical, inside the hypervisor's reserved memory, unused by it

// One vCPU: halts; after each interrupt, works for a while and halts again.
struct Guest : vmx::abi::GuestImage, vmx::cpu::InterruptHandler {
  std::vector<std::pair<std::uint8_t, std::uint64_t>> got;  // vector, cycle
  bool busy = false;
  vmx::sim::Fiber fiber{"guest.vcpu0", [this] { main(); }};
  std::uint64_t entry_point(unsigned) override { return vmx::cpu::code_address(&fiber); }
  void interrupt(Core& c, std::uint8_t v) override {
    got.emplace_back(v, c.now());
    c.wrmsr(vmx::cpu::msr::kX2ApicEoi, 0);
    busy = true;
  }
  void exception(Core&, std::uint8_t, std::uint32_t) override { std::abort(); }
  void main() {
    Core& c = Core::current();
    c.lidt(this);
    for (;;) {
      c.sti();
      c.hlt();
      if (busy) {
        busy = false;
        for (int i = 0; i < 300; ++i) c.compute(1000);  // 100 us of work at 3 GHz
      }
    }
  }
};

}  // namespace

TEST_CASE("a VF's MSIs posted through VT-d reach a running vCPU without exits and wake a halted one",
          "[posted][ir][hypervisor]") {
  vmx::stats::Group root(nullptr, "");
  auto pp = vmx::cfg::defaults<vmx::models::PlatformParams>();
  pp.cores = 1;
  pp.memory = 256ull << 20;
  vmx::models::Platform platform(pp, &root);
  auto hp = vmx::cfg::defaults<vmx::hv::HypervisorParams>();
  hp.posted_interrupts = true;
  vmx::hv::Hypervisor hv(hp, platform.cores(), pp.memory, pp.frequency, &root);
  Guest guest;
  vmx::hv::VmSpec spec;
  spec.name = "vf";
  spec.vcpus = 1;
  spec.memory = 16ull << 20;
  spec.image = &guest;
  hv.add_vm(spec);
  platform.core(0).set_reset_fiber(&hv.core_fiber(0));

  // What the hypervisor would do when assigning the VF: two posted-format
  // IRTEs for the VF's vectors 0x61 and 0x62 into vCPU 0's descriptor.
  const std::uint64_t pid = hv.posted_descriptor(0, 0);
  REQUIRE(pid != 0);
  auto& mem = platform.memory();
  for (unsigned i = 0; i < 2; ++i) {
    mem.write(kIrt + 16 * i, irte::posted_lo(pid, static_cast<std::uint8_t>(0x61 + i)), 8);
    mem.write(kIrt + 16 * i + 8, irte::posted_hi(pid, kVf), 8);
  }
  platform.interrupt_remap().set_irta(kIrt | (1u << 11) | 3);
  platform.interrupt_remap().set_enable(true);

  // The VF's first MSI finds the vCPU halted; the second comes while it works.
  sc_core::sc_spawn([&] {
    sc_core::wait(sc_core::sc_time(300, sc_core::SC_US));
    platform.interrupts().msi({irte::msi_address(0), 0, kVf});
    sc_core::wait(sc_core::sc_time(50, sc_core::SC_US));
    platform.interrupts().msi({irte::msi_address(1), 0, kVf});
  });
  sc_core::sc_start(sc_core::sc_time(1, sc_core::SC_MS));

  REQUIRE(guest.got.size() == 2);
  CHECK(guest.got[0].first == 0x61);
  CHECK(guest.got[1].first == 0x62);
  // Each arrives within a quantum (10 us = 30000 cycles) plus the entry path.
  CHECK(guest.got[0].second >= 900'000);
  CHECK(guest.got[0].second < 900'000 + 40'000);
  CHECK(guest.got[1].second >= 1'050'000);
  CHECK(guest.got[1].second < 1'050'000 + 40'000);
  INFO("delivered at cycles " << guest.got[0].second << " and " << guest.got[1].second);
  auto counter = [&](const std::string& p) {
    auto* c = dynamic_cast<const vmx::stats::Counter*>(root.find(p));
    return c ? c->value() : 0;
  };
  // No exit for either interrupt or its EOI: the vCPU exits only for HLT.
  CHECK(counter("vm.vf.vcpu0.exits") == counter("system.cpu0.exit_reasons.HLT"));
  CHECK(counter("system.cpu0.exit_reasons.HLT") >= 2);
  CHECK(counter("system.cpu0.exit_reasons.EXTERNAL_INTERRUPT") == 0);
  CHECK(counter("system.cpu0.exit_reasons.MSR_WRITE") == 0);
  CHECK(counter("system.cpu0.virtual_eois") == 2);
  CHECK(counter("system.cpu0.posted_notifications") == 2);
  CHECK(counter("system.interrupt_remap.posted") == 2);
  CHECK(counter("system.interrupt_remap.notifications") == 2);
  CHECK(counter("hypervisor.totals.injections") == 0);
}
