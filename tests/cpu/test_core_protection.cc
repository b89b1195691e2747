// Page protections as software meets them on the real Core
// (tests/cpu/vmx_harness.h): SMAP with STAC/CLAC and RFLAGS.AC across VM
// exits, SMEP, protection keys (RDPKRU/WRPKRU), the capability MSRs and
// CPUID bits, and EPT mode-based execute control with its VM-entry check
// (SDM Vol. 3A, 4.6; Vol. 3C, 27.2.1.1, 29.3.3.2, A.3.3, A.10). Each
// TEST_CASE builds one machine in its own process.
#include <catch2/catch.hpp>

#include <cstdint>
#include <utility>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmx.h"
#include "cpu/vmx_harness.h"
#include "mmu/paging.h"

namespace {

using vmx::cpu::Core;
using vmx::test::Exit;
using vmx::test::VmxHarness;
namespace field = vmx::cpu::field;
namespace proc2 = vmx::cpu::proc2;
namespace crb = vmx::mmu::crbits;
namespace ept = vmx::mmu::ept;
namespace pte = vmx::mmu::pte;
namespace pfec = vmx::mmu::pfec;

constexpr unsigned kVmcall = 18, kEptViolation = 48;
constexpr std::uint64_t kPingCall = 0x50494E47;
constexpr std::uint8_t kUd = 6, kPf = 14;
constexpr std::uint64_t kRflagsAc = 1ull << 18;

// Guest page tables (guest-physical = host-physical below 16 MiB, the
// harness's identity EPT): 2 MiB supervisor pages over 0-16 MiB except
// 4-6 MiB, mapped by a page table whose page kUser is a user page; and a
// second page table under PD entry 16 (32 MiB) whose first page kUser2 is a
// user page and second page kSup2 a supervisor page, at guest-physical
// addresses outside the identity map.
constexpr std::uint64_t kPml4 = 0x300000, kPdpt = 0x301000, kPd = 0x302000, kPt = 0x303000, kPt2 = 0x304000;
constexpr std::uint64_t kSup = 0x400000, kUser = 0x401000, kUser2 = 0x2000000, kSup2 = 0x2001000;
constexpr std::uint64_t kPw = pte::kPresent | pte::kWritable, kPwu = kPw | pte::kUser;

std::uint64_t pte_slot(std::uint64_t la) { return kPt + ((la >> 12) & 511) * 8; }

void build_paging(Core& c, std::uint64_t cr4_extra) {
  c.store(kPml4, kPdpt | kPwu);
  c.store(kPdpt, kPd | kPwu);
  for (std::uint64_t i = 0; i < 8; ++i) c.store(kPd + 8 * i, i == 2 ? (kPt | kPwu) : ((i << 21) | kPw | pte::kPageSize));
  for (std::uint64_t j = 0; j < 8; ++j) c.store(kPt + 8 * j, (kSup + j * 0x1000) | kPw);
  c.store(pte_slot(kUser), kUser | kPwu);
  c.store(kPd + 8 * 16, kPt2 | kPwu);
  c.store(kPt2, kUser2 | kPwu);
  c.store(kPt2 + 8, kSup2 | kPw);
  c.write_cr(4, crb::kCr4Pae | cr4_extra);
  c.write_cr(3, kPml4);
  c.write_cr(0, crb::kCr0Pe | crb::kCr0Pg | crb::kCr0Wp);
}

/// A guest IDT that records exceptions; a #PF on kUser is fixed up by
/// making the page a supervisor page (then the access is retried), so each
/// refused access shows exactly once.
struct FixupIdt : vmx::cpu::InterruptHandler {
  std::vector<std::pair<std::uint8_t, std::uint32_t>> exceptions;
  std::uint32_t pkru_after = 0;
  bool fix_pkru = false;
  void interrupt(Core&, std::uint8_t) override {}
  void exception(Core& c, std::uint8_t vector, std::uint32_t error_code) override {
    exceptions.emplace_back(vector, error_code);
    if (vector != kPf) return;
    if (fix_pkru) {
      c.wrpkru(pkru_after);
      return;
    }
    c.store(pte_slot(kUser), kUser | kPw);
    c.invlpg(kUser);
  }
};

void require_clean(const VmxHarness& h) {
  INFO("setup errors: " << h.setup_errors.size());
  REQUIRE(h.setup_errors.empty());
  REQUIRE_FALSE(h.runaway);
  REQUIRE_FALSE(h.entry_failed);
  REQUIRE(h.done);
}

}  // namespace

TEST_CASE("SMAP: a kernel access to a user page faults unless RFLAGS.AC (STAC/CLAC), AC kept across a VM exit",
          "[protection][smap]") {
  VmxHarness h;
  FixupIdt idt;
  std::vector<std::uint64_t> exit_rflags;
  bool ac_in_guest_after_exit = false;
  h.guest = [&](Core& c) {
    c.lidt(&idt);
    build_paging(c, crb::kCr4Smap | crb::kCr4Smep);
    c.load(kUser);  // #PF P (fixed: the page becomes supervisor)
    c.store(pte_slot(kUser), kUser | kPwu);
    c.invlpg(kUser);
    c.stac();
    c.load(kUser);       // allowed
    c.store(kUser, 7);   // allowed
    c.vmcall(kPingCall);  // the exit saves AC in the guest RFLAGS; the entry restores it
    ac_in_guest_after_exit = c.alignment_check_flag();
    c.load(kUser + 8);  // still allowed
    c.fetch(kUser, 64);  // SMEP ignores AC: #PF P|I/D
    c.store(pte_slot(kUser), kUser | kPwu);
    c.invlpg(kUser);
    c.load(kUser);       // cached from the accesses above, still allowed
    c.clac();
    c.store(kUser, 8);   // #PF P|W
    c.store(pte_slot(kUser), kUser | kPwu);
    c.invlpg(kUser);
    c.set_user_mode(true);
    c.load(kUser);       // user access to a user page: fine
    c.stac();            // #UD at CPL 3
    c.clac();            // #UD
    c.set_user_mode(false);
    c.load(kSup);        // supervisor page: fine
  };
  h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason == kVmcall) exit_rflags.push_back(h.vmr(c, field::kGuestRflags));
  };
  h.run();
  require_clean(h);
  using P = std::pair<std::uint8_t, std::uint32_t>;
  CHECK(idt.exceptions == std::vector<P>{{kPf, pfec::kPresent},
                                         {kPf, pfec::kPresent | pfec::kFetch},
                                         {kPf, pfec::kPresent | pfec::kWrite},
                                         {kUd, 0},
                                         {kUd, 0}});
  REQUIRE(exit_rflags.size() == 1);
  CHECK((exit_rflags[0] & kRflagsAc) != 0);
  CHECK(ac_in_guest_after_exit);
  CHECK(h.counter("system.cpu0.walker.page_faults") == 3);
}

TEST_CASE("protection keys: WRPKRU/RDPKRU, a user page's key refuses the access with error code PK",
          "[protection][pke]") {
  VmxHarness h;
  FixupIdt idt;
  std::uint32_t read_back = 0;
  h.guest = [&](Core& c) {
    c.lidt(&idt);
    build_paging(c, 0);
    c.rdpkru();  // #UD: CR4.PKE = 0
    c.write_cr(4, c.read_cr(4) | crb::kCr4Pke);
    c.store(pte_slot(kUser), kUser | kPwu | (3ull << pte::kPkeyShift));  // key 3
    c.invlpg(kUser);
    c.set_user_mode(true);
    c.load(kUser);  // PKRU 0: allowed
    c.wrpkru(2u << 6);  // WD for key 3
    read_back = c.rdpkru();
    c.load(kUser);  // a read is allowed
    idt.fix_pkru = true;
    idt.pkru_after = 0;
    c.store(kUser, 1);  // #PF P|W|U|PK; the handler clears PKRU and the store retries
    c.wrpkru(1u << 6);  // AD for key 3
    c.load(kUser);      // #PF P|U|PK
    c.set_user_mode(false);
  };
  h.run();
  require_clean(h);
  using P = std::pair<std::uint8_t, std::uint32_t>;
  CHECK(read_back == (2u << 6));
  CHECK(idt.exceptions == std::vector<P>{{kUd, 0},
                                         {kPf, pfec::kPresent | pfec::kWrite | pfec::kUser | pfec::kPk},
                                         {kPf, pfec::kPresent | pfec::kUser | pfec::kPk}});
}

TEST_CASE("capabilities: EPT execute-only and MBEC reported in the VMX MSRs, SMEP, SMAP, PKU in CPUID",
          "[protection]") {
  VmxHarness h;
  std::uint64_t ept_cap = 0, ctls2 = 0;
  vmx::cpu::CpuidResult leaf7{};
  h.after_vmxon = [&](Core& c) {
    ept_cap = c.rdmsr(vmx::cpu::msr::kIa32VmxEptVpidCap);
    ctls2 = c.rdmsr(vmx::cpu::msr::kIa32VmxProcbasedCtls2);
    leaf7 = c.cpuid(7, 0);
  };
  h.guest = [](Core&) {};
  h.run();
  require_clean(h);
  CHECK((ept_cap & 1) == 1);                       // execute-only translations
  CHECK(((ept_cap >> 21) & 1) == 1);               // EPT accessed/dirty flags
  CHECK(((ctls2 >> 32) & proc2::kModeBasedExecute) != 0);
  CHECK(((ctls2 >> 32) & proc2::kEnableEpt) != 0);
  CHECK((leaf7.ebx & (1u << 7)) != 0);   // SMEP
  CHECK((leaf7.ebx & (1u << 20)) != 0);  // SMAP
  CHECK((leaf7.ecx & (1u << 3)) != 0);   // PKU
}

TEST_CASE("VM entry fails with mode-based execute control but without enable EPT", "[protection][mbec]") {
  VmxHarness h;
  h.config.proc2 = proc2::kModeBasedExecute;
  h.guest = [](Core&) {};
  h.run();
  CHECK(h.entry_failed);
  CHECK(h.entry_error == 7);  // VM entry with invalid control field(s)
  CHECK_FALSE(h.done);
}

TEST_CASE("MBEC: a user-mode fetch from a supervisor-execute-only page exits, the U/S of the page picks the bit",
          "[protection][mbec][ept]") {
  VmxHarness h;
  h.config.proc2 = proc2::kEnableEpt | proc2::kModeBasedExecute;
  std::uint64_t user_leaf = 0, sup_leaf = 0;
  h.setup = [&](Core& c) {
    // kUser2 (a user-mode address): R/W and supervisor-execute (bit 2)
    // only. kSup2 (a supervisor-mode address): R/W and user-execute (bit
    // 10) only. Every EPT entry above them allows both.
    h.ept_map(c, kUser2, kUser2, ept::kRead | ept::kWrite | ept::kExecute, 1);
    h.ept_map(c, kSup2, kSup2, ept::kRead | ept::kWrite, 1);
    for (unsigned level = 2; level <= 4; ++level) {
      const std::uint64_t a = VmxHarness::ept_entry_pa(c, kUser2, level);
      c.store(a, c.load(a) | ept::kUserExecute);
    }
    user_leaf = VmxHarness::ept_entry_pa(c, kUser2, 1);
    sup_leaf = VmxHarness::ept_entry_pa(c, kSup2, 1);
    c.store(sup_leaf, c.load(sup_leaf) | ept::kUserExecute);
  };
  h.guest = [&](Core& c) {
    build_paging(c, 0);
    c.set_user_mode(true);
    c.load(kUser2);       // user read: fine
    c.fetch(kUser2, 64);  // user-mode address, bit 10 clear: EPT violation; the root sets bit 10
    c.fetch(kUser2, 64);  // now cached: no exit
    c.set_user_mode(false);
    c.fetch(kUser2, 64);  // a supervisor fetch from a user-mode address needs bit 10 too: allowed
    c.load(kSup2);
    c.fetch(kSup2, 64);   // supervisor-mode address, bit 2 clear: EPT violation; the root sets bit 2
  };
  std::vector<Exit> ept_exits;
  h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason != kEptViolation) return;
    ept_exits.push_back(e);
    if (e.guest_physical == kUser2) c.store(user_leaf, c.load(user_leaf) | ept::kUserExecute);
    else c.store(sup_leaf, c.load(sup_leaf) | ept::kExecute);
    c.invept(1, h.eptp());
  };
  h.run();
  require_clean(h);
  REQUIRE(ept_exits.size() == 2);
  namespace q = vmx::cpu::qual;
  // Fetch; R, W, supervisor-execute; no user-execute; a linear-address translation.
  CHECK(ept_exits[0].qualification ==
        (q::kEptFetch | q::kEptReadable | q::kEptWritable | q::kEptExecutable | q::kEptGlaValid | q::kEptGlaTranslation));
  CHECK(ept_exits[0].guest_physical == kUser2);
  CHECK(ept_exits[0].guest_linear == kUser2);
  // Fetch; R, W, user-execute, no supervisor-execute.
  CHECK(ept_exits[1].qualification == (q::kEptFetch | q::kEptReadable | q::kEptWritable | q::kEptUserExecutable |
                                        q::kEptGlaValid | q::kEptGlaTranslation));
  CHECK(ept_exits[1].guest_physical == kSup2);
  CHECK(h.counter("system.cpu0.exit_reasons.EPT_VIOLATION") == 2);
}
