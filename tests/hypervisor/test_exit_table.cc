// The hypervisor's exit table (hypervisor/exit_table.h, run_loop.cc): each
// registered basic exit reason reaches its handler, and an exit whose
// reason has no handler stops only the VM that caused it, with a note
// naming the reason, while the other VMs run on.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>

#include <systemc>

#include "cpu/core.h"
#include "cpu/vmx.h"
#include "abi/hypercall.h"
#include "hypervisor/exit_table.h"
#include "hypervisor/hypervisor.h"
#include "platform/platform.h"
#include "sim/fiber.h"

namespace {

using vmx::cpu::Core;
using vmx::cpu::ExitReason;

// A guest whose vCPU 0 runs `body` once, then spins on VMCALLs, counting them.
struct Guest : vmx::abi::GuestImage, vmx::cpu::InterruptHandler {
  std::function<void(Core&)> body;
  unsigned ud = 0;           // #UD delivered to the guest
  std::uint64_t calls = 0;   // VMCALLs after the body
  bool body_done = false;
  vmx::sim::Fiber fiber{"guest", [this] { main(); }};
  std::uint64_t entry_point(unsigned) override { return vmx::cpu::code_address(&fiber); }
  void interrupt(Core& c, std::uint8_t) override { c.wrmsr(vmx::cpu::msr::kX2ApicEoi, 0); }
  void exception(Core&, std::uint8_t vector, std::uint32_t) override {
    if (vector == vmx::cpu::vec::kInvalidOpcode) ++ud;
    else std::abort();
  }
  void main() {
    Core& c = Core::current();
    c.lidt(this);
    if (body) body(c);
    body_done = true;
    for (;;) {
      c.vmcall(vmx::abi::hypercall::kNop);
      ++calls;
    }
  }
};

struct Machine {
  vmx::stats::Group root{nullptr, ""};
  vmx::models::PlatformParams pp = [] {
    auto p = vmx::cfg::defaults<vmx::models::PlatformParams>();
    p.cores = 2;
    p.memory = 256ull << 20;
    return p;
  }();
  vmx::models::Platform platform{pp, &root};
  vmx::hv::Hypervisor hv{vmx::cfg::defaults<vmx::hv::HypervisorParams>(), platform.cores(), pp.memory,
                         pp.frequency, &root};
  void add(const std::string& name, Guest& g, unsigned core) {
    vmx::hv::VmSpec spec{name, 1, 16ull << 20, &g};
    spec.pin = {core};
    hv.add_vm(spec);
  }
  void run(unsigned us) {
    for (unsigned i = 0; i < 2; ++i) platform.core(i).set_reset_fiber(&hv.core_fiber(i));
    sc_core::sc_start(sc_core::sc_time(us, sc_core::SC_US));
    hv.flush_accounting();
  }
  std::uint64_t exits(const std::string& vm, const char* reason) const {
    const auto* h = dynamic_cast<const vmx::stats::Histogram*>(
        root.find("vm." + vm + ".vcpu0.exit_reasons." + reason + ".cycles"));
    return h ? h->count() : 0;
  }
};

}  // namespace

TEST_CASE("exit table: one handler per reason, dispatch by index, unregistered reasons are empty") {
  using Fn = int (*)();
  vmx::hv::ExitTable<Fn> t;
  static int hits[vmx::hv::ExitTable<Fn>::kSize];
  Fn cpuid = [] { return ++hits[10]; };
  Fn wrmsr = [] { return ++hits[32]; };
  t.on(ExitReason::Cpuid, cpuid);
  t.on(ExitReason::Wrmsr, wrmsr);
  CHECK(t.find(10) == cpuid);
  CHECK(t.find(32) == wrmsr);
  CHECK(t.find(10)() == 1);
  for (unsigned r = 0; r < vmx::hv::ExitTable<Fn>::kSize + 5; ++r)
    if (r != 10 && r != 32) CHECK_FALSE(t.has(r));
  CHECK_THROWS_AS(t.on(ExitReason::Cpuid, wrmsr), std::logic_error);
  t.off(ExitReason::Cpuid);
  CHECK_FALSE(t.has(10));
}

TEST_CASE("exit table: the hypervisor's registered exits reach their handlers") {
  Machine m;
  Guest g;
  std::uint32_t vendor = 0;
  std::uint64_t nop = 1, efer = 0;
  std::uint32_t port = 0;
  g.body = [&](Core& c) {
    vendor = c.cpuid(0x40000000u).ebx;                        // CPUID: the vendor leaf
    nop = c.vmcall(vmx::abi::hypercall::kNop);                 // VMCALL: returns 0
    c.wrmsr(vmx::cpu::msr::kIa32Efer, 0x500);                 // WRMSR, RDMSR: EFER in the VMCS
    efer = c.rdmsr(vmx::cpu::msr::kIa32Efer);
    port = c.in(0x80);                                        // I/O: an empty ISA slot
    std::uint64_t v = 0;
    c.vmread(vmx::cpu::field::kGuestRip, v);                  // VMREAD: #UD (no nested VMX)
  };
  m.add("a", g, 0);
  m.run(500);
  REQUIRE(g.body_done);
  CHECK(m.hv.vm_crash(0).empty());
  CHECK(vendor == 0x73786d76u);  // "vmxs"
  CHECK(nop == 0);
  CHECK(efer == 0x500);
  CHECK(port == 0xFF);
  CHECK(g.ud == 1);
  CHECK(g.calls > 10);
  for (const char* r : {"CPUID", "VMCALL", "MSR_WRITE", "MSR_READ", "IO_INSTRUCTION", "VMREAD"})
    CHECK(m.exits("a", r) >= 1);
}

TEST_CASE("exit table: an exit with no handler stops only its VM, with a note naming the reason") {
  Machine m;
  Guest bad, good;
  bad.body = [](Core& c) { c.cpuid(0); };
  m.add("bad", bad, 0);
  m.add("good", good, 1);
  m.hv.drop_exit_handler(ExitReason::Cpuid);
  m.run(500);
  CHECK_FALSE(bad.body_done);
  const std::string& note = m.hv.vm_crash(0);
  CHECK(note.find("unexpected VM exit CPUID") != std::string::npos);
  CHECK(note.find("basic exit reason 10") != std::string::npos);
  CHECK(m.hv.vm_crash(1).empty());
  CHECK(good.calls > 100);  // the other VM ran on
}
