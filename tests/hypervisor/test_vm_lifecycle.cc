// VMs started and stopped in a loop on the real hypervisor: each VM touches
// its memory (EPT violations back it from the frame allocator) and powers
// off through the ACPI PM1a control port; the hypervisor tears it down and
// the stop callback starts the next one. The host frames return: after the
// loop the allocator has exactly the frames in use it had before it, and
// the peak is one VM's footprint, not the sum of all of them.
#define SC_INCLUDE_DYNAMIC_PROCESSES
#include <systemc>

#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cpu/core.h"
#include "hypervisor/frames.h"
#include "hypervisor/hypervisor.h"
#include "platform/platform.h"
#include "sim/fiber.h"
#include "sim/stats.h"

namespace {

using vmx::cpu::Core;

constexpr std::uint64_t kVmMemory = 8ull << 20;
constexpr std::uint16_t kPm1aCnt = 0x604;     // QEMU's ACPI PM1a control port
constexpr std::uint32_t kSlpS5 = 0x2000;      // SLP_EN (bit 13), SLP_TYP 0 (S5 on QEMU's machines)

// One vCPU with paging off: writes one word per 4 KiB page of its memory,
// then powers off.
struct Guest : vmx::abi::GuestImage {
  explicit Guest(std::string name) : fiber(std::move(name), [this] { main(); }) {}
  vmx::sim::Fiber fiber;
  std::uint64_t entry_point(unsigned) override { return vmx::cpu::code_address(&fiber); }
  void main() {
    Core& c = Core::current();
    for (std::uint64_t gpa = 0; gpa < kVmMemory; gpa += 4096) c.store(gpa, gpa + 1);
    c.out(kPm1aCnt, kSlpS5, 2);
    for (;;) c.hlt();  // never resumed
  }
};

double gauge(const vmx::stats::Group& root, const std::string& path) {
  const auto* g = dynamic_cast<const vmx::stats::Gauge*>(root.find(path));
  if (!g) throw std::runtime_error("no gauge " + path);
  return g->value();
}
std::uint64_t counter(const vmx::stats::Group& root, const std::string& path) {
  const auto* g = dynamic_cast<const vmx::stats::Counter*>(root.find(path));
  if (!g) throw std::runtime_error("no counter " + path);
  return g->value();
}

}  // namespace

TEST_CASE("VMs started and stopped in a loop return every host frame", "[hypervisor][frames]") {
  constexpr unsigned kRounds = 4;
  vmx::stats::Group root(nullptr, "");
  auto pp = vmx::cfg::defaults<vmx::models::PlatformParams>();
  pp.cores = 2;
  pp.memory = 128ull << 20;
  vmx::models::Platform platform(pp, &root);
  auto hp = vmx::cfg::defaults<vmx::hv::HypervisorParams>();
  hp.posted_interrupts = true;  // virtual-APIC pages too
  vmx::hv::Hypervisor hv(hp, platform.cores(), pp.memory, pp.frequency, &root);

  std::vector<std::unique_ptr<Guest>> guests;
  auto spec = [&](unsigned i) {
    guests.push_back(std::make_unique<Guest>("vm" + std::to_string(i) + ".vcpu0"));
    vmx::hv::VmSpec s;
    s.name = "vm" + std::to_string(i);
    s.vcpus = 1;
    s.memory = kVmMemory;
    s.image = guests.back().get();
    return s;
  };
  const double used_before = gauge(root, "hypervisor.frames.frames_used");
  std::vector<std::string> stopped;
  std::vector<double> used_at_stop;
  hv.on_vm_stopped([&](Core&, unsigned vm) {
    stopped.push_back(hv.vm_name(vm));
    used_at_stop.push_back(gauge(root, "hypervisor.frames.frames_used"));
    if (vm + 1 < kRounds) hv.add_vm(spec(vm + 1));  // the next VM, started at run time
  });
  hv.add_vm(spec(0));
  for (unsigned i = 0; i < platform.core_count(); ++i) platform.core(i).set_reset_fiber(&hv.core_fiber(i));
  sc_core::sc_start(sc_core::sc_time(50, sc_core::SC_MS));

  REQUIRE(stopped == std::vector<std::string>{"vm0", "vm1", "vm2", "vm3"});
  for (unsigned i = 0; i < kRounds; ++i) {
    INFO("VM " << i);
    CHECK(hv.vm_stop_note(i).find("powered off") != std::string::npos);
    CHECK(used_at_stop[i] == used_before);  // each teardown gave everything back
  }
  CHECK(gauge(root, "hypervisor.frames.frames_used") == used_before);
  // Every VM backed all of its memory, 2048 frames each ...
  CHECK(counter(root, "hypervisor.totals.guest_frames") == kRounds * (kVmMemory >> 12));
  // ... in the same host frames: the peak is one VM's footprint (its memory,
  // EPT tables, VMCS, save area, virtual-APIC page, lock) above the start.
  const double peak = gauge(root, "hypervisor.frames.frames_peak");
  CHECK(peak >= used_before + (kVmMemory >> 12));
  CHECK(peak < used_before + 2 * (kVmMemory >> 12));
  CHECK(counter(root, "hypervisor.frames.frees") >= kRounds * (kVmMemory >> 12));
}

namespace {
// Two vCPUs on two cores: vCPU 1 touches its half and then computes forever
// in guest mode; vCPU 0 touches its half, waits until vCPU 1 runs, then
// powers the VM off.
struct TwoVcpuGuest : vmx::abi::GuestImage {
  bool second_running = false;
  vmx::sim::Fiber f0{"vm.vcpu0", [this] { main0(); }};
  vmx::sim::Fiber f1{"vm.vcpu1", [this] { main1(); }};
  std::uint64_t entry_point(unsigned i) override { return vmx::cpu::code_address(i == 0 ? &f0 : &f1); }
  void main0() {
    Core& c = Core::current();
    for (std::uint64_t gpa = 0; gpa < kVmMemory / 2; gpa += 4096) c.store(gpa, 1);
    while (!second_running) c.compute(1000);
    c.compute(100000);
    c.out(kPm1aCnt, kSlpS5, 2);
    for (;;) c.hlt();
  }
  void main1() {
    Core& c = Core::current();
    for (std::uint64_t gpa = kVmMemory / 2; gpa < kVmMemory; gpa += 4096) c.store(gpa, 2);
    second_running = true;
    for (;;) c.compute(1000);  // never exits by itself: the stop must kick it out
  }
};
}  // namespace

TEST_CASE("stopping a VM kicks its vCPU out of guest mode on the other core, and every frame returns",
          "[hypervisor][frames]") {
  vmx::stats::Group root(nullptr, "");
  auto pp = vmx::cfg::defaults<vmx::models::PlatformParams>();
  pp.cores = 2;
  pp.memory = 128ull << 20;
  vmx::models::Platform platform(pp, &root);
  auto hp = vmx::cfg::defaults<vmx::hv::HypervisorParams>();
  vmx::hv::Hypervisor hv(hp, platform.cores(), pp.memory, pp.frequency, &root);
  TwoVcpuGuest guest;
  vmx::hv::VmSpec s;
  s.name = "vm";
  s.vcpus = 2;
  s.memory = kVmMemory;
  s.image = &guest;
  s.pin = {0, 1};
  const double used_before = gauge(root, "hypervisor.frames.frames_used");
  hv.add_vm(s);
  bool stopped = false;
  std::uint64_t flushes0 = 0, flushes1 = 0;
  unsigned teardown_core = 99;
  hv.on_vm_stopped([&](Core& c, unsigned) {
    stopped = true;
    teardown_core = c.id();
    flushes0 = counter(root, "system.cpu0.tlb.dtlb.flushes");
    flushes1 = counter(root, "system.cpu1.tlb.dtlb.flushes");
  });
  for (unsigned i = 0; i < platform.core_count(); ++i) platform.core(i).set_reset_fiber(&hv.core_fiber(i));
  sc_core::sc_start(sc_core::sc_time(20, sc_core::SC_MS));

  REQUIRE(stopped);
  INFO("teardown on core " << teardown_core << ", dtlb flushes at teardown " << flushes0 << "/" << flushes1
                           << ", at the end " << counter(root, "system.cpu0.tlb.dtlb.flushes") << "/"
                           << counter(root, "system.cpu1.tlb.dtlb.flushes"));
  CHECK(hv.vm_stop_note(0).find("powered off") != std::string::npos);
  CHECK(guest.second_running);
  // The teardown ran on core 1, the last to leave the VM: its INVEPT there,
  // and core 0 executed the INVEPT (and the VMCLEAR of vCPU 0's VMCS) it was
  // asked for at its next scheduling decision, after which every frame is
  // back, the VMCS included.
  CHECK(teardown_core == 1);
  CHECK(flushes1 > 0);
  CHECK(counter(root, "system.cpu0.tlb.dtlb.flushes") > flushes0);
  CHECK(gauge(root, "hypervisor.frames.frames_used") == used_before);
  CHECK(counter(root, "system.cpu1.exit_reasons.EXTERNAL_INTERRUPT") >= 1);  // the kick
}
