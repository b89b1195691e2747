// Cache and bandwidth allocation through the core's architectural
// operations (models/rdt.h; SDM Vol. 3B, 19.19): CPUID leaf 10H, the mask
// and delay MSRs with their #GP rules, IA32_PQR_ASSOC, and the VM-entry /
// VM-exit MSR-load lists that switch a vCPU's class of service.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmx.h"
#include "cpu/vmx_harness.h"
#include "models/rdt.h"

namespace {

using vmx::cpu::Core;
using vmx::test::Exit;
using vmx::test::VmxHarness;
namespace field = vmx::cpu::field;
namespace rmsr = vmx::models::rdt_msr;

constexpr unsigned kExceptionOrNmi = 0, kVmcall = 18, kEntryFailMsrLoading = 34;
constexpr std::uint64_t kLists = 0x106000;  // the MSR-load lists (inside the identity-mapped 16 MiB)

namespace proc = vmx::cpu::proc;

vmx::models::PlatformParams rdt_platform() {
  auto p = VmxHarness::small_platform();
  p.rdt.enabled = true;
  return p;
}

void require_clean(const VmxHarness& h) {
  for (const auto& e : h.setup_errors) UNSCOPED_INFO(e);
  REQUIRE(h.setup_errors.empty());
  REQUIRE(h.done);
  REQUIRE_FALSE(h.runaway);
}

}  // namespace

TEST_CASE("RDT: a guest's non-contiguous or out-of-range mask and a bad CLOS are #GP; valid ones load",
          "[rdt][vmx]") {
  VmxHarness h(rdt_platform());
  h.config.proc = proc::kUseMsrBitmaps;  // the harness's bitmap is all zeros: MSR accesses run
  h.config.exception_bitmap = 1u << 13;  // #GP exits
  std::vector<std::uint64_t> leaf10;
  std::uint64_t mask_after = 0, pqr_after = 0;
  h.guest = [&](Core& c) {
    c.cpuid(0x10, 1);  // exits (the root reads the leaf itself below)
    c.wrmsr(rmsr::kL3MaskBase + 2, 0x0F0F);   // non-contiguous: #GP
    c.wrmsr(rmsr::kL3MaskBase + 2, 0x30000);  // beyond the 16-bit bitmask: #GP
    c.wrmsr(rmsr::kL3MaskBase + 2, 0);        // empty: #GP
    c.wrmsr(rmsr::kPqrAssoc, 16ull << 32);    // CLOS 16 of 16 classes: #GP
    c.wrmsr(rmsr::kL3MaskBase + 2, 0x0FF0);   // valid
    c.wrmsr(rmsr::kPqrAssoc, 2ull << 32);     // valid
    mask_after = c.rdmsr(rmsr::kL3MaskBase + 2);
    pqr_after = c.rdmsr(rmsr::kPqrAssoc);
  };
  h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason == 10) {  // CPUID: the root's own answer
      const auto r = c.cpuid(0x10, 1);
      leaf10 = {r.eax, r.ebx, r.ecx, r.edx};
    }
    // Skip the faulting (or emulated) instruction.
    std::uint64_t rip = 0, len = 0;
    c.vmread(field::kGuestRip, rip);
    c.vmread(field::kExitInstructionLength, len);
    c.vmwrite(field::kGuestRip, rip + len);
  };
  h.run();
  require_clean(h);
  REQUIRE(h.reasons() ==
          std::vector<unsigned>{10, kExceptionOrNmi, kExceptionOrNmi, kExceptionOrNmi, kExceptionOrNmi, kVmcall});
  for (unsigned i = 1; i <= 4; ++i) CHECK((h.exits[i].intr_info & 0xFF) == 13);  // #GP(0)
  REQUIRE(leaf10.size() == 4);
  CHECK(leaf10[0] == 15);  // 16-way LLC: bitmask length 16
  CHECK(leaf10[3] == 15);  // 16 classes
  CHECK(mask_after == 0x0FF0);
  CHECK(pqr_after == (2ull << 32));
  CHECK(h.platform().rdt()->mask(2) == 0x0FF0);
}

TEST_CASE("RDT: the VM-entry MSR-load list switches IA32_PQR_ASSOC to the guest's class and the exit list back",
          "[rdt][vmx]") {
  VmxHarness h(rdt_platform());
  h.config.proc = proc::kUseMsrBitmaps;
  std::uint64_t guest_pqr = 0, root_pqr_at_exit = ~0ull;
  h.setup = [&](Core& c) {
    c.store(kLists, rmsr::kPqrAssoc, 8);
    c.store(kLists + 8, 5ull << 32, 8);   // entry: CLOS 5
    c.store(kLists + 16, rmsr::kPqrAssoc, 8);
    c.store(kLists + 24, 0, 8);           // exit: CLOS 0
    h.vmw(c, field::kEntryMsrLoadAddr, kLists);
    h.vmw(c, field::kEntryMsrLoadCount, 1);
    h.vmw(c, field::kExitMsrLoadAddr, kLists + 16);
    h.vmw(c, field::kExitMsrLoadCount, 1);
  };
  h.guest = [&](Core& c) {
    guest_pqr = c.rdmsr(rmsr::kPqrAssoc);  // the harness's MSR bitmap lets it through
  };
  h.after = [&](Core& c) { root_pqr_at_exit = c.rdmsr(rmsr::kPqrAssoc); };
  h.run();
  require_clean(h);
  CHECK(guest_pqr == (5ull << 32));
  CHECK(root_pqr_at_exit == 0);
}

TEST_CASE("RDT: a VM-entry MSR-load list naming an invalid class fails the entry with reason 34", "[rdt][vmx]") {
  VmxHarness h(rdt_platform());
  h.setup = [&](Core& c) {
    c.store(kLists, rmsr::kPqrAssoc, 8);
    c.store(kLists + 8, 99ull << 32, 8);
    h.vmw(c, field::kEntryMsrLoadAddr, kLists);
    h.vmw(c, field::kEntryMsrLoadCount, 1);
  };
  h.guest = [&](Core&) {};
  h.run();
  REQUIRE(h.setup_errors.empty());
  CHECK(h.entry_failed);
  REQUIRE_FALSE(h.exits.empty());
  CHECK(h.exits[0].reason == kEntryFailMsrLoading);
  CHECK(h.exits[0].full_reason == ((1u << 31) | kEntryFailMsrLoading));
  CHECK(h.exits[0].qualification == 1);
}
