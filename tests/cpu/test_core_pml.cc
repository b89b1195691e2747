// Page-modification logging in the core (SDM Vol. 3C, 29.3.6): the walker
// logs the 4 KiB-aligned guest-physical address of each EPT dirty flag it
// sets from 0 to 1 at the PML index, counting down; an EPT A/D update with
// the index out of range is a PML-full exit (reason 62) before the access.
#define SC_INCLUDE_DYNAMIC_PROCESSES
#include <systemc>

#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmx.h"
#include "cpu/vmx_harness.h"
#include "mmu/paging.h"

namespace {

using vmx::cpu::Core;
using vmx::test::Exit;
using vmx::test::VmxHarness;
namespace ept = vmx::mmu::ept;
namespace field = vmx::cpu::field;

constexpr std::uint64_t kPmlPage = 0x1F0000;  // host-physical, 4 KiB aligned, in the monitor's area
constexpr unsigned kPmlFull = 62;

void require_clean(const VmxHarness& h) {
  REQUIRE(h.setup_errors.empty());
  REQUIRE_FALSE(h.runaway);
  REQUIRE_FALSE(h.entry_failed);
  REQUIRE(h.done);
}

}  // namespace

TEST_CASE("PML: dirty flags set from 0 to 1 are logged downward from the index and a full log exits before the access",
          "[ept][pml]") {
  VmxHarness h;
  h.config.ept_ad = true;
  h.config.proc2 = vmx::cpu::proc2::kEnableEpt | vmx::cpu::proc2::kEnablePml;
  h.setup = [&](Core& c) {
    h.vmw(c, field::kPmlAddress, kPmlPage);
    h.vmw(c, field::kGuestPmlIndex, 2);  // three entries left: 2, 1, 0
  };
  std::uint64_t a_flags_at_full = ~0ull, index_at_full = 0;
  h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason != kPmlFull) return;
    index_at_full = h.vmr(c, field::kGuestPmlIndex);
    a_flags_at_full = c.load(VmxHarness::ept_entry_pa(c, 0xA00000, 2)) & (ept::kAccessed | ept::kDirty);
    h.vmw(c, field::kGuestPmlIndex, 511);  // drained: start again at the top
  };
  h.guest = [&](Core& c) {  // guest paging off: EPT-only translations over 2 MiB leaves
    c.store(0x400008, 1);  // D 0 -> 1: logged at 2
    c.store(0x400100, 2);  // same leaf, D already set: nothing
    c.load(0x800000);      // A only: nothing logged
    c.store(0x600010, 3);  // logged at 1
    c.store(0x800040, 4);  // logged at 0; the index wraps to 0xFFFF
    c.store(0xA00000, 5);  // PML full: exits first, then logged at 511
  };
  std::vector<std::uint64_t> log;
  std::uint64_t index_after = 0, value = 0;
  h.after = [&](Core& c) {
    for (unsigned i : {2u, 1u, 0u, 511u}) log.push_back(c.load(kPmlPage + 8ull * i));
    index_after = h.vmr(c, field::kGuestPmlIndex);
    value = c.load(0xA00000);
  };
  h.run();
  require_clean(h);
  std::vector<unsigned> full;
  for (const Exit& e : h.exits)
    if (e.reason == kPmlFull) full.push_back(e.reason);
  CHECK(full.size() == 1);
  CHECK(index_at_full == 0xFFFF);
  CHECK(a_flags_at_full == 0);  // neither flag set: the access had not happened
  CHECK(log == std::vector<std::uint64_t>{0x400000, 0x600000, 0x800000, 0xA00000});
  CHECK(index_after == 510);
  CHECK(value == 5);  // the write happened after the exit
  CHECK(h.counter("system.cpu0.exit_reasons.PML_FULL") == 1);
}

TEST_CASE("PML: without EPT A/D flags nothing is logged", "[ept][pml]") {
  VmxHarness h;
  h.config.ept_ad = false;
  h.config.proc2 = vmx::cpu::proc2::kEnableEpt | vmx::cpu::proc2::kEnablePml;
  h.setup = [&](Core& c) {
    h.vmw(c, field::kPmlAddress, kPmlPage);
    h.vmw(c, field::kGuestPmlIndex, 0);
  };
  h.guest = [&](Core& c) {
    for (std::uint64_t a = 0x400000; a < 0xC00000; a += 0x200000) c.store(a, 1);
  };
  std::uint64_t index_after = 0;
  h.after = [&](Core& c) { index_after = h.vmr(c, field::kGuestPmlIndex); };
  h.run();
  require_clean(h);
  CHECK(index_after == 0);
  CHECK(h.counter_or_zero("system.cpu0.exit_reasons.PML_FULL") == 0);
}

TEST_CASE("PML: VM entry fails with a misaligned PML address (SDM Vol. 3C, 27.2.1.1)", "[ept][pml]") {
  VmxHarness h;
  h.config.ept_ad = true;
  h.config.proc2 = vmx::cpu::proc2::kEnableEpt | vmx::cpu::proc2::kEnablePml;
  h.setup = [&](Core& c) { h.vmw(c, field::kPmlAddress, kPmlPage + 8); };
  h.guest = [](Core& c) { c.store(0x400000, 1); };
  h.run();
  CHECK(h.entry_failed);
  CHECK(h.entry_error == vmx::cpu::vmerr::kEntryInvalidControls);
}
