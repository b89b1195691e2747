// The core's invalidation operations as software sees them: INVLPG, MOV to
// CR3 (PCIDs, the no-flush bit, global pages), INVPCID, INVEPT and INVVPID,
// run by guest or root software on the real Core (tests/cpu/vmx_harness.h),
// observed through the walker's and TLBs' statistics: an invalidated
// translation makes the next access walk, a kept one does not (SDM Vol. 3A,
// 4.10.4; Vol. 3C, 29.4.3). Also EPT accessed/dirty flags as set by the
// core's accesses (Vol. 3C, 29.3.5). Each TEST_CASE builds one machine in its
// own process.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmx.h"
#include "cpu/vmx_harness.h"
#include "mmu/paging.h"

namespace {

using vmx::cpu::Core;
using vmx::cpu::Regs;
using vmx::cpu::VmxStatus;
using vmx::test::Exit;
using vmx::test::VmxHarness;
namespace field = vmx::cpu::field;
namespace proc = vmx::cpu::proc;
namespace proc2 = vmx::cpu::proc2;
namespace crb = vmx::mmu::crbits;
namespace ept = vmx::mmu::ept;
namespace pte = vmx::mmu::pte;

constexpr unsigned kVmcall = 18, kInvpcid = 58;
constexpr std::uint64_t kPingCall = 0x50494E47;  // "PING": an exit the root handles in on_exit
constexpr std::uint8_t kUd = 6, kGp = 13;

// The guest's page tables (guest-physical = host-physical: the harness's EPT
// is an identity map of 2 MiB pages): 2 MiB pages over 0-16 MiB except
// 4-6 MiB, which a page table maps with 4 KiB pages; the page at kG is global.
constexpr std::uint64_t kPml4 = 0x300000, kPdpt = 0x301000, kPd = 0x302000, kPt = 0x303000;
constexpr std::uint64_t kA = 0x400000, kB = 0x401000, kG = 0x402000, kC = 0x403000;

void build_paging(Core& c, std::uint64_t cr4_extra, std::uint64_t cr3) {
  constexpr std::uint64_t kPw = pte::kPresent | pte::kWritable;
  c.store(kPml4, kPdpt | kPw);
  c.store(kPdpt, kPd | kPw);
  for (std::uint64_t i = 0; i < 8; ++i) c.store(kPd + 8 * i, i == 2 ? (kPt | kPw) : ((i << 21) | kPw | pte::kPageSize));
  for (std::uint64_t j = 0; j < 8; ++j) c.store(kPt + 8 * j, (kA + j * 0x1000) | kPw | (kA + j * 0x1000 == kG ? pte::kGlobal : 0));
  c.write_cr(4, crb::kCr4Pae | cr4_extra);  // flushes what the stores cached (PGE/PCIDE change)
  c.write_cr(3, cr3);
  c.write_cr(0, crb::kCr0Pe | crb::kCr0Pg | crb::kCr0Wp);
}

/// What one load cost in walks and references (statistics are simulator
/// annotations: reading them costs the guest nothing).
struct Delta {
  std::uint64_t walks = 0, refs = 0, guest_refs = 0, ept_refs = 0;
};

struct Probe {
  VmxHarness& h;
  std::uint64_t c(const std::string& path) const { return h.counter("system.cpu0." + path); }
  Delta snapshot() const {
    return {c("walker.walks"), c("walker.refs"), c("walker.guest_refs"), c("walker.ept_refs")};
  }
  Delta load(Core& core, std::uint64_t va) const {
    Delta a = snapshot();
    core.load(va);
    Delta b = snapshot();
    return {b.walks - a.walks, b.refs - a.refs, b.guest_refs - a.guest_refs, b.ept_refs - a.ept_refs};
  }
  std::uint64_t walks(Core& core, std::uint64_t va) const { return load(core, va).walks; }
};

/// A guest IDT that records exceptions and returns (the faulting operation
/// is then skipped).
struct RecordingIdt : vmx::cpu::InterruptHandler {
  std::vector<std::pair<std::uint8_t, std::uint32_t>> exceptions;
  void interrupt(Core&, std::uint8_t) override {}
  void exception(Core&, std::uint8_t vector, std::uint32_t error_code) override {
    exceptions.emplace_back(vector, error_code);
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

// ---------------------------------------------------------------------------
// INVLPG (SDM Vol. 3A, 4.10.4.1)

TEST_CASE("INVLPG removes the page's TLB entry and the PCID's guest PSC entries, nothing else", "[invalidation][invlpg]") {
  VmxHarness h;
  Probe p{h};
  Delta c_walk, a_after, b_after;
  std::uint64_t pde_flushed = 0, nested_flushed = 0;
  h.guest = [&](Core& c) {
    build_paging(c, 0, kPml4);
    c.load(kA);
    c.load(kB);
    REQUIRE(p.walks(c, kA) == 0);
    c_walk = p.load(c, kC);  // a new page: the PDE cache gives its page table
    const std::uint64_t pde0 = p.c("walker.psc.guest.pde.flushed_entries");
    const std::uint64_t n0 = p.c("walker.nested_tlb.flushed_entries");
    c.invlpg(kA);
    pde_flushed = p.c("walker.psc.guest.pde.flushed_entries") - pde0;
    nested_flushed = p.c("walker.nested_tlb.flushed_entries") - n0;
    a_after = p.load(c, kA);
    b_after = p.load(c, kB);
  };
  h.run();
  require_clean(h);
  CHECK(c_walk.walks == 1);
  CHECK(c_walk.guest_refs == 1);
  CHECK(c_walk.ept_refs == 0);     // the nested TLB translates the PT and the data page
  CHECK(pde_flushed == 1);         // the one PDE-cache entry (4-6 MiB) of PCID 0
  CHECK(nested_flushed == 0);      // guest-physical mappings are not affected
  CHECK(a_after.walks == 1);
  CHECK(a_after.guest_refs == 4);  // the whole guest walk: no PSC entry left
  CHECK(a_after.ept_refs == 0);
  CHECK(b_after.walks == 0);       // another page's translation stays
}

// ---------------------------------------------------------------------------
// MOV to CR3 (SDM Vol. 3A, 4.10.4.1)

TEST_CASE("MOV to CR3 without PCIDs drops non-global translations and keeps global ones", "[invalidation][cr3]") {
  VmxHarness h;
  Probe p{h};
  Delta a_after, g_after;
  h.guest = [&](Core& c) {
    build_paging(c, crb::kCr4Pge, kPml4);
    c.load(kA);
    c.load(kG);
    c.write_cr(3, kPml4);
    g_after = p.load(c, kG);
    a_after = p.load(c, kA);
  };
  h.run();
  require_clean(h);
  CHECK(g_after.walks == 0);
  CHECK(a_after.walks == 1);
  CHECK(a_after.guest_refs == 4);  // the PSC entries went too
}

TEST_CASE("MOV to CR3 with PCIDs: bit 63 keeps the PCID's translations, bit 63 clear drops only that PCID's",
          "[invalidation][cr3][pcid]") {
  VmxHarness h;
  Probe p{h};
  std::vector<std::uint64_t> walks;
  Delta flushed_walk;
  h.guest = [&](Core& c) {
    build_paging(c, crb::kCr4Pge | crb::kCr4Pcide, kPml4 | 1);
    c.load(kA);
    c.write_cr(3, kPml4 | 1 | crb::kCr3NoFlush);
    walks.push_back(p.walks(c, kA));  // 0: kept
    c.write_cr(3, kPml4 | 2 | crb::kCr3NoFlush);
    walks.push_back(p.walks(c, kA));  // 1: PCID 2 has no entry
    c.write_cr(3, kPml4 | 1 | crb::kCr3NoFlush);
    walks.push_back(p.walks(c, kA));  // 0: PCID 1's entry is still there
    c.write_cr(3, kPml4 | 1);         // bit 63 clear: PCID 1's non-global translations go
    flushed_walk = p.load(c, kA);
    c.write_cr(3, kPml4 | 2 | crb::kCr3NoFlush);
    walks.push_back(p.walks(c, kA));  // 0: PCID 2's entry survived
  };
  h.run();
  require_clean(h);
  CHECK(walks == std::vector<std::uint64_t>{0, 1, 0, 0});
  CHECK(flushed_walk.walks == 1);
  CHECK(flushed_walk.guest_refs == 4);
}

// ---------------------------------------------------------------------------
// INVPCID (SDM Vol. 2, INVPCID; Vol. 3A, 4.10.4.1; Vol. 3C, 25.6.2, 26.1.3)

namespace {

struct InvpcidOutcome {
  std::uint64_t dtlb_flushed = 0, stlb_flushed = 0, pde_flushed = 0;
  std::uint64_t a1 = 0, b1 = 0, g1 = 0, a2 = 0;  // walks of each access afterwards
  std::uint64_t g_flushed_by_type0 = 0, g_walks_after_type0 = 0;
};

// PCID 1 caches A, B and the global G; PCID 2 caches A. Then INVPCID `type`
// for PCID 1 and address A, and each translation is probed.
InvpcidOutcome run_invpcid(unsigned type) {
  VmxHarness h;
  h.config.proc2 = proc2::kEnableEpt | proc2::kEnableInvpcid;
  Probe p{h};
  InvpcidOutcome o;
  h.guest = [&](Core& c) {
    build_paging(c, crb::kCr4Pge | crb::kCr4Pcide, kPml4 | 1);
    c.load(kA);
    c.load(kB);
    c.load(kG);
    c.write_cr(3, kPml4 | 2 | crb::kCr3NoFlush);
    c.load(kA);
    c.write_cr(3, kPml4 | 1 | crb::kCr3NoFlush);
    const std::uint64_t d0 = p.c("tlb.dtlb.flushed_entries"), s0 = p.c("tlb.stlb.flushed_entries"),
                        q0 = p.c("walker.psc.guest.pde.flushed_entries");
    c.invpcid(type, 1, kA);
    o.dtlb_flushed = p.c("tlb.dtlb.flushed_entries") - d0;
    o.stlb_flushed = p.c("tlb.stlb.flushed_entries") - s0;
    o.pde_flushed = p.c("walker.psc.guest.pde.flushed_entries") - q0;
    o.a1 = p.walks(c, kA);
    o.b1 = p.walks(c, kB);
    o.g1 = p.walks(c, kG);
    c.write_cr(3, kPml4 | 2 | crb::kCr3NoFlush);
    o.a2 = p.walks(c, kA);
    if (type == 0) {
      // Individual-address invalidation spares global translations.
      const std::uint64_t g0 = p.c("tlb.dtlb.flushed_entries");
      c.invpcid(0, 2, kG);
      o.g_flushed_by_type0 = p.c("tlb.dtlb.flushed_entries") - g0;
      o.g_walks_after_type0 = p.walks(c, kG);
    }
  };
  h.run();
  require_clean(h);
  return o;
}

}  // namespace

TEST_CASE("INVPCID type 0: that page in that PCID only, globals spared", "[invalidation][invpcid]") {
  InvpcidOutcome o = run_invpcid(0);
  CHECK(o.dtlb_flushed == 1);
  CHECK(o.stlb_flushed == 1);
  CHECK(o.pde_flushed == 1);  // PCID 1's PSC entries (a permitted superset of the address's)
  CHECK(o.a1 == 1);
  CHECK(o.b1 == 0);
  CHECK(o.g1 == 0);
  CHECK(o.a2 == 0);
  CHECK(o.g_flushed_by_type0 == 0);
  CHECK(o.g_walks_after_type0 == 0);
}

TEST_CASE("INVPCID type 1: the PCID's non-global translations", "[invalidation][invpcid]") {
  InvpcidOutcome o = run_invpcid(1);
  CHECK(o.dtlb_flushed == 2);
  CHECK(o.stlb_flushed == 2);
  CHECK(o.pde_flushed == 1);
  CHECK(o.a1 == 1);
  CHECK(o.b1 == 1);
  CHECK(o.g1 == 0);
  CHECK(o.a2 == 0);
}

TEST_CASE("INVPCID type 2: every PCID, globals included", "[invalidation][invpcid]") {
  InvpcidOutcome o = run_invpcid(2);
  CHECK(o.dtlb_flushed == 4);
  CHECK(o.stlb_flushed == 4);
  CHECK(o.pde_flushed == 2);
  CHECK(o.a1 == 1);
  CHECK(o.b1 == 1);
  CHECK(o.g1 == 1);
  CHECK(o.a2 == 1);
}

TEST_CASE("INVPCID type 3: every PCID, globals spared", "[invalidation][invpcid]") {
  InvpcidOutcome o = run_invpcid(3);
  CHECK(o.dtlb_flushed == 3);
  CHECK(o.stlb_flushed == 3);
  CHECK(o.pde_flushed == 2);
  CHECK(o.a1 == 1);
  CHECK(o.b1 == 1);
  CHECK(o.g1 == 0);
  CHECK(o.a2 == 1);
}

TEST_CASE("INVPCID in a guest without \"enable INVPCID\" is #UD, even with INVLPG exiting", "[invalidation][invpcid]") {
  VmxHarness h;
  h.config.proc = proc::kInvlpgExiting;
  RecordingIdt idt;
  h.guest = [&](Core& c) {
    c.lidt(&idt);
    c.invpcid(2, 0);
  };
  h.run();
  require_clean(h);
  CHECK(h.reasons() == std::vector<unsigned>{kVmcall});
  REQUIRE(idt.exceptions.size() == 1);
  CHECK(idt.exceptions[0].first == kUd);
}

TEST_CASE("INVPCID with \"enable INVPCID\" and INVLPG exiting exits with reason 58 and its operands",
          "[invalidation][invpcid]") {
  VmxHarness h;
  h.config.proc = proc::kInvlpgExiting;
  h.config.proc2 = proc2::kEnableEpt | proc2::kEnableInvpcid;
  RecordingIdt idt;
  h.guest = [&](Core& c) {
    c.lidt(&idt);
    c.invpcid(0, 7, 0x1234000);
    c.invpcid(9, 0);  // an invalid type exits too: the VM exit comes before that #GP (26.1.1)
    c.set_user_mode(true);
    c.invpcid(2, 0);  // CPL 3: #GP, before the VM exit
    c.set_user_mode(false);
  };
  h.run();
  require_clean(h);
  REQUIRE(h.reasons() == std::vector<unsigned>{kInvpcid, kInvpcid, kVmcall});
  CHECK(h.exits[0].qualification == 0);
  CHECK(h.exits[0].regs[Regs::rax] == 0);
  CHECK(h.exits[0].regs[Regs::rcx] == 7);
  CHECK(h.exits[0].regs[Regs::rdx] == 0x1234000);
  CHECK(h.exits[1].regs[Regs::rax] == 9);
  REQUIRE(idt.exceptions.size() == 1);
  CHECK(idt.exceptions[0] == std::make_pair(kGp, 0u));
  CHECK(h.counter("system.cpu0.exit_reasons.INVPCID") == 2);
}

TEST_CASE("INVPCID faults: #GP for CPL 3, a bad type, a bad descriptor and a PCID without PCIDE",
          "[invalidation][invpcid]") {
  VmxHarness h;
  h.config.proc2 = proc2::kEnableEpt | proc2::kEnableInvpcid;
  RecordingIdt idt;
  h.guest = [&](Core& c) {
    c.lidt(&idt);
    c.invpcid(4, 0);                          // type > 3
    c.invpcid(1, 0x1000);                     // descriptor bits 63:12
    c.invpcid(1, 5);                          // CR4.PCIDE = 0, PCID != 0, type 1
    c.invpcid(0, 5, 0x1000);                  // ... type 0
    c.invpcid(0, 0, 0x0000'8000'0000'0000);   // non-canonical address
    c.set_user_mode(true);
    c.invpcid(2, 0);                          // CPL 3
    c.set_user_mode(false);
    c.invpcid(2, 5);                          // types 2 and 3 ignore the PCID: fine
    c.invpcid(3, 0);
    c.invpcid(0, 0, 0xFFFF'8000'0000'0000);   // canonical
  };
  h.run();
  require_clean(h);
  REQUIRE(idt.exceptions.size() == 6);
  for (const auto& e : idt.exceptions) CHECK(e == std::make_pair(kGp, 0u));
  CHECK(h.reasons() == std::vector<unsigned>{kVmcall});
}

// ---------------------------------------------------------------------------
// INVEPT and INVVPID from the root (SDM Vol. 3C, 29.4.3)

TEST_CASE("INVEPT single-context drops the combined TLB entries, the PSCs and the nested TLB: the next access walks EPT again",
          "[invalidation][invept]") {
  VmxHarness h;
  h.config.proc2 = proc2::kEnableEpt | proc2::kEnableVpid;
  h.config.vpid = 1;
  Probe p{h};
  Delta kept, warm_new_page, after;
  std::uint64_t nested_flushed = 0, ept_psc_flushed = 0, dtlb_flushed = 0;
  VmxStatus inv = VmxStatus::FailInvalid;
  h.guest = [&](Core& c) {
    build_paging(c, 0, kPml4);
    c.load(kA);
    c.vmcall(kPingCall);  // the root does nothing
    kept = p.load(c, kA);
    warm_new_page = p.load(c, kB);
    c.vmcall(kPingCall);  // the root executes INVEPT single-context
    after = p.load(c, kA);
  };
  unsigned pings = 0;
  h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason != kVmcall || ++pings != 2) return;
    const std::uint64_t n0 = h.counter("system.cpu0.walker.nested_tlb.flushed_entries");
    const std::uint64_t e0 = h.counter("system.cpu0.walker.psc.ept.pdpte.flushed_entries");
    const std::uint64_t d0 = h.counter("system.cpu0.tlb.dtlb.flushed_entries");
    inv = c.invept(1, h.eptp());
    nested_flushed = h.counter("system.cpu0.walker.nested_tlb.flushed_entries") - n0;
    ept_psc_flushed = h.counter("system.cpu0.walker.psc.ept.pdpte.flushed_entries") - e0;
    dtlb_flushed = h.counter("system.cpu0.tlb.dtlb.flushed_entries") - d0;
  };
  h.run();
  require_clean(h);
  CHECK(inv == VmxStatus::Succeed);
  CHECK(kept.walks == 0);  // VPIDs: the exit and entry kept the translation
  // A TLB miss with warm caches: the guest PDE cache gives the page table
  // (host-physical), the nested TLB the data page: one reference.
  CHECK(warm_new_page.refs == 1);
  CHECK(warm_new_page.ept_refs == 0);
  CHECK(dtlb_flushed == 2);       // A and B
  CHECK(nested_flushed == 2);     // the 2 MiB EPT pages of the tables and of the data
  CHECK(ept_psc_flushed == 1);    // the EPT PDPTE (0-1 GiB)
  // After INVEPT: the PML4 table's gPA is walked in EPT (3 references: 2 MiB
  // EPT pages), the other tables share its 2 MiB EPT page (nested TLB, filled
  // again), the data page's EPT walk starts at the refilled EPT PDPTE cache
  // (1 reference); the guest walk is whole (4).
  CHECK(after.walks == 1);
  CHECK(after.guest_refs == 4);
  CHECK(after.ept_refs == 4);
  CHECK(after.refs == 8);
}

TEST_CASE("INVVPID single-context drops that VPID's translations only", "[invalidation][invvpid]") {
  VmxHarness h;
  h.config.proc2 = proc2::kEnableEpt | proc2::kEnableVpid;
  h.config.vpid = 1;
  Probe p{h};
  std::vector<std::uint64_t> walks;
  Delta vpid2_after;
  h.guest = [&](Core& c) {
    build_paging(c, 0, kPml4);
    c.load(kA);                       // VPID 1
    c.vmcall(kPingCall);              // -> VPID 2
    walks.push_back(p.walks(c, kA));  // 1: nothing cached for VPID 2
    c.vmcall(kPingCall);              // -> VPID 1, INVVPID type 1 for VPID 2
    walks.push_back(p.walks(c, kA));  // 0: VPID 1 untouched
    c.vmcall(kPingCall);              // -> VPID 2
    vpid2_after = p.load(c, kA);
  };
  unsigned pings = 0;
  VmxStatus inv = VmxStatus::FailInvalid;
  h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason != kVmcall) return;
    ++pings;
    h.vmw(c, field::kVpid, pings == 2 ? 1 : 2);
    if (pings == 2) inv = c.invvpid(1, 2);
  };
  h.run();
  require_clean(h);
  CHECK(inv == VmxStatus::Succeed);
  CHECK(walks == std::vector<std::uint64_t>{1, 0});
  CHECK(vpid2_after.walks == 1);
  CHECK(vpid2_after.guest_refs == 4);  // VPID 2's guest PSC entries went too
  CHECK(vpid2_after.ept_refs == 0);    // guest-physical mappings are not VPID-tagged
}

// ---------------------------------------------------------------------------
// EPT accessed and dirty flags set by the core's accesses (SDM Vol. 3C, 29.3.5)

TEST_CASE("EPT A/D flags: a guest read sets A, a later write through the cached translation still sets D",
          "[ept][ad]") {
  VmxHarness h;
  h.config.ept_ad = true;
  constexpr std::uint64_t kRead = 0x600000, kReadThenWrite = 0xA00000, kUntouched = 0xC00000;
  Probe p{h};
  std::uint64_t write_walks = 0;
  h.guest = [&](Core& c) {  // guest paging off: EPT-only translations
    c.load(kRead);
    c.load(kReadThenWrite);
    write_walks = p.c("walker.ept_only_walks");
    c.store(kReadThenWrite + 8, 1);  // the TLB entry from the read does not serve the write
    write_walks = p.c("walker.ept_only_walks") - write_walks;
  };
  std::uint64_t r_leaf = 0, rw_leaf = 0, untouched_leaf = 0, pml4e = 0;
  h.after = [&](Core& c) {
    r_leaf = c.load(VmxHarness::ept_entry_pa(c, kRead, 2));
    rw_leaf = c.load(VmxHarness::ept_entry_pa(c, kReadThenWrite, 2));
    untouched_leaf = c.load(VmxHarness::ept_entry_pa(c, kUntouched, 2));
    pml4e = c.load(VmxHarness::ept_entry_pa(c, kRead, 4));
  };
  h.run();
  require_clean(h);
  constexpr std::uint64_t kAD = ept::kAccessed | ept::kDirty;
  CHECK((r_leaf & kAD) == ept::kAccessed);
  CHECK((rw_leaf & kAD) == kAD);
  CHECK((untouched_leaf & kAD) == 0);
  CHECK((pml4e & kAD) == ept::kAccessed);
  CHECK(write_walks == 1);
  CHECK(h.counter("system.cpu0.walker.ept_ad_updates") >= 3);
}
