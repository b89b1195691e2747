// The EPT cursor (hypervisor/ept.h) on a one-core machine: the guest reaches
// memory through the real walker and TLBs over tables the cursor built, so
// each test shows the entries as the hardware sees them (translations and
// EPT violations) and that the cursor's invalidations are issued (INVEPT:
// a stale translation would otherwise survive in the TLB).
#include <catch2/catch.hpp>

#include "cpu/vmx_harness.h"
#include "hypervisor/ept.h"
#include "hypervisor/frames.h"

using namespace vmx;
using cpu::Core;
using hv::Ept;
using hv::FrameAllocator;
using test::Exit;
using test::VmxHarness;
namespace ept = mmu::ept;

namespace {
constexpr unsigned kVmcall = 18, kEptViolation = 48;
constexpr std::uint64_t kStep = 0x5354;  // guest: "handle the next step"
constexpr std::uint64_t k4K = FrameAllocator::k4K, k2M = FrameAllocator::k2M;
constexpr std::uint64_t kGpa = 0x40000000;  // 1 GiB: guest-physical region of the tests

/// A harness whose VM runs on an Ept built by the cursor: tables from
/// [32 MiB, 36 MiB), guest frames from [40 MiB, 48 MiB), the first 16 MiB
/// identity-mapped with 2 MiB pages (as the harness's own EPT).
struct EptRig {
  VmxHarness h;
  FrameAllocator frames;
  unsigned tables = frames.add_zone("tables", 32ull << 20, 36ull << 20);
  unsigned guest = frames.add_zone("guest", 40ull << 20, 48ull << 20);
  std::unique_ptr<Ept> ept;
  unsigned invepts = 0;
  std::vector<std::function<void(Core&)>> steps;  // run at the guest's kStep calls, in order
  std::size_t next_step = 0;

  explicit EptRig(bool ad = false) {
    h.config.ept_ad = ad;
    h.setup = [this, ad](Core& c) {
      const std::uint64_t root = frames.alloc(tables, k4K);
      c.rep_stos(root, 0, k4K);
      Ept::Env env;
      env.frames = &frames;
      env.table_zone = tables;
      env.vm = 1;
      env.flush = [this](Core& core, std::uint64_t eptp) {
        ++invepts;
        REQUIRE(core.invept(1, eptp) == cpu::VmxStatus::Succeed);
      };
      ept = std::make_unique<Ept>(env, root, 4, ad);
      for (std::uint64_t a = 0; a < VmxHarness::kIdentityBytes; a += k2M) REQUIRE(ept->map(c, a, a, k2M, Ept::kRwxWb));
      h.vmw(c, cpu::field::kEptPointer, ept->eptp());
    };
    h.on_exit = [this](Core& c, const Exit& e) {
      if (e.reason == kVmcall && e.regs[cpu::Regs::rax] == kStep) {
        REQUIRE(next_step < steps.size());
        steps[next_step++](c);
      }
    };
  }
  std::uint64_t dtlb_flushes() const { return h.counter("system.cpu0.tlb.dtlb.flushes"); }
  std::vector<unsigned> reasons() const { return h.reasons(); }
};

void require_clean(const VmxHarness& h) {
  REQUIRE(h.setup_errors.empty());
  REQUIRE_FALSE(h.entry_failed);
  REQUIRE_FALSE(h.runaway);
  REQUIRE(h.done);
}
}  // namespace

TEST_CASE("EPT cursor: map needs no invalidation, unmap issues INVEPT and the next access exits", "[ept]") {
  EptRig r;
  std::uint64_t first = 0, second = 0, frame = 0;
  r.h.guest = [&](Core& c) {
    first = c.load(kGpa + 0x10);
    c.vmcall(kStep);                // root unmaps the page
    second = c.load(kGpa + 0x10);   // EPT violation; root maps another frame
  };
  r.steps.push_back([&](Core& c) {
    auto gone = r.ept->unmap(c, kGpa);
    REQUIRE(gone);
    CHECK(gone->hpa == frame);
    CHECK(r.frames.mappings(frame).empty());  // the reverse map forgot it
  });
  unsigned violations = 0;
  std::uint64_t frame2 = 0;
  auto old_exit = r.h.on_exit;
  r.h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason == kEptViolation) {
      ++violations;
      CHECK(e.guest_physical == kGpa + 0x10);
      frame2 = r.frames.alloc(r.guest, k4K);
      c.store(frame2 + 0x10, 0x2222);
      const unsigned before = r.invepts;
      REQUIRE(r.ept->map(c, kGpa, frame2, k4K, Ept::kRwxWb));
      CHECK(r.invepts == before);  // not present -> present: none (SDM 29.4.3.2)
      return;
    }
    old_exit(c, e);
  };
  auto setup = r.h.setup;
  r.h.setup = [&](Core& c) {
    setup(c);
    frame = r.frames.alloc(r.guest, k4K);
    c.store(frame + 0x10, 0x1111);
    REQUIRE(r.ept->map(c, kGpa, frame, k4K, Ept::kRwxWb));
    REQUIRE(r.frames.mappings(frame).size() == 1);
    CHECK(r.frames.mappings(frame)[0].gpa == kGpa);
    CHECK(r.invepts == 0);
  };
  r.h.run();
  require_clean(r.h);
  CHECK(first == 0x1111);
  CHECK(second == 0x2222);
  CHECK(violations == 1);
  CHECK(r.invepts == 1);
  CHECK(r.ept->flushes() == 1);
}

TEST_CASE("EPT cursor: removing write permission invalidates, adding it back does not", "[ept]") {
  EptRig r;
  std::uint64_t frame = 0;
  unsigned violations = 0;
  std::uint64_t qual = 0;
  r.h.guest = [&](Core& c) {
    c.store(kGpa + 8, 1);   // writable: no exit, the TLB now holds a writable translation
    c.vmcall(kStep);        // root makes the page read-only
    c.store(kGpa + 8, 2);   // EPT violation (write); root gives write back
  };
  auto setup = r.h.setup;
  r.h.setup = [&](Core& c) {
    setup(c);
    frame = r.frames.alloc(r.guest, k4K);
    REQUIRE(r.ept->map(c, kGpa, frame, k4K, Ept::kRwxWb));
  };
  unsigned after_protect = 0;
  r.steps.push_back([&](Core& c) {
    REQUIRE(r.ept->protect(c, kGpa, ept::kRead | ept::kExecute));
    after_protect = r.invepts;
    auto l = r.ept->lookup(c, kGpa);
    REQUIRE(l);
    CHECK((l->entry & ept::kPermMask) == (ept::kRead | ept::kExecute));
  });
  auto old_exit = r.h.on_exit;
  r.h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason == kEptViolation) {
      ++violations;
      qual = e.qualification;
      REQUIRE(r.ept->protect(c, kGpa, ept::kRead | ept::kWrite | ept::kExecute));
      return;
    }
    old_exit(c, e);
  };
  r.h.run();
  require_clean(r.h);
  CHECK(after_protect == 1);
  CHECK(r.invepts == 1);  // giving write back issued none
  CHECK(violations == 1);
  CHECK((qual & cpu::qual::kEptWrite));
  CHECK(r.h.platform().memory().read(frame + 8, 8) == 2);
}

TEST_CASE("EPT cursor: remap points two pages at one frame read-only, a write exits and gets a copy", "[ept][ksm]") {
  // Same-page merging's use of the cursor: the page at kGpa + 4K is
  // remapped to the frame of kGpa (read-only), its own frame released; a
  // write to it then exits and the handler remaps it to a fresh copy.
  EptRig r;
  std::uint64_t a = 0, b = 0, copy = 0;
  std::uint64_t before_read = 0, merged_read = 0, after_write = 0, other_after = 0;
  unsigned violations = 0, invepts_after_merge = 0;
  r.h.guest = [&](Core& c) {
    before_read = c.load(kGpa + k4K + 0x20);  // b's own contents; TLB caches b's frame
    c.vmcall(kStep);                           // root merges b into a
    merged_read = c.load(kGpa + k4K + 0x20);   // must see a's frame now (INVEPT)
    c.store(kGpa + k4K + 0x20, 0x7777);        // EPT violation (write): copy-on-write
    after_write = c.load(kGpa + k4K + 0x20);
    other_after = c.load(kGpa + 0x20);         // a's page unchanged
  };
  auto setup = r.h.setup;
  r.h.setup = [&](Core& c) {
    setup(c);
    a = r.frames.alloc(r.guest, k4K);
    b = r.frames.alloc(r.guest, k4K);
    c.store(a + 0x20, 0xAAAA);
    c.store(b + 0x20, 0xBBBB);
    REQUIRE(r.ept->map(c, kGpa, a, k4K, Ept::kRwxWb));
    REQUIRE(r.ept->map(c, kGpa + k4K, b, k4K, Ept::kRwxWb));
  };
  r.steps.push_back([&](Core& c) {
    const std::uint64_t ro = Ept::kRwxWb & ~ept::kWrite;
    REQUIRE(r.ept->protect(c, kGpa, ept::kRead | ept::kExecute));
    r.frames.get(a);
    REQUIRE(r.ept->remap(c, kGpa + k4K, a, ro));
    CHECK(r.frames.mappings(b).empty());
    CHECK(r.frames.put(b));  // the duplicate frame is free again
    CHECK_FALSE(r.frames.allocated(b));
    CHECK(r.frames.refcount(a) == 2);
    REQUIRE(r.frames.mappings(a).size() == 2);
    invepts_after_merge = r.invepts;
  });
  auto old_exit = r.h.on_exit;
  r.h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason == kEptViolation) {
      ++violations;
      CHECK((e.qualification & cpu::qual::kEptWrite));
      CHECK(e.guest_physical == kGpa + k4K + 0x20);
      copy = r.frames.alloc(r.guest, k4K);
      c.rep_movs(copy, a, k4K);
      REQUIRE(r.ept->remap(c, kGpa + k4K, copy, Ept::kRwxWb));
      CHECK_FALSE(r.frames.put(a));  // a keeps its own mapping
      return;
    }
    old_exit(c, e);
  };
  r.h.run();
  require_clean(r.h);
  CHECK(before_read == 0xBBBB);
  CHECK(merged_read == 0xAAAA);
  CHECK(after_write == 0x7777);
  CHECK(other_after == 0xAAAA);
  CHECK(violations == 1);
  CHECK(invepts_after_merge == 2);  // protect and remap each invalidated
  CHECK(r.invepts == 3);            // and the copy-on-write's remap
  CHECK(r.frames.refcount(a) == 1);
  REQUIRE(r.frames.mappings(copy).size() == 1);
  CHECK(r.frames.mappings(copy)[0].gpa == kGpa + k4K);
}

TEST_CASE("EPT cursor: split a 2 MiB page into 512 leaves, unmap one, merge them back", "[ept]") {
  EptRig r;
  std::uint64_t big = 0;
  std::vector<std::uint64_t> seen;
  unsigned violations = 0;
  std::uint64_t violation_gpa = 0;
  r.h.guest = [&](Core& c) {
    seen.push_back(c.load(kGpa + 0x3000));
    c.vmcall(kStep);  // root splits, unmaps the 4 KiB page at +0x5000
    seen.push_back(c.load(kGpa + 0x3000));
    seen.push_back(c.load(kGpa + 0x5000));  // EPT violation: root maps it back
    c.vmcall(kStep);  // root merges
    seen.push_back(c.load(kGpa + 0x5000));
  };
  auto setup = r.h.setup;
  r.h.setup = [&](Core& c) {
    setup(c);
    big = r.frames.alloc(r.guest, k2M);
    REQUIRE(big);
    c.store(big + 0x3000, 0x3333);
    c.store(big + 0x5000, 0x5555);
    REQUIRE(r.ept->map(c, kGpa, big, k2M, Ept::kRwxWb));
    auto l = r.ept->lookup(c, kGpa + 0x3000);
    REQUIRE(l);
    CHECK(l->level == 2);
  };
  std::uint64_t tables_before_split = 0, tables_after_merge = 0;
  r.steps.push_back([&](Core& c) {
    tables_before_split = r.frames.used_bytes(r.tables);
    REQUIRE(r.ept->split(c, kGpa));
    CHECK(r.frames.used_bytes(r.tables) == tables_before_split + k4K);
    unsigned leaves = 0;
    r.ept->for_each_leaf(c, kGpa, kGpa + k2M, false, [&](const Ept::Leaf& l) {
      CHECK(l.level == 1);
      CHECK(l.hpa == big + (l.gpa - kGpa));
      ++leaves;
    });
    CHECK(leaves == 512);
    REQUIRE(r.ept->unmap(c, kGpa + 0x5000));
  });
  auto old_exit = r.h.on_exit;
  r.h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason == kEptViolation) {
      ++violations;
      violation_gpa = e.guest_physical;
      REQUIRE(r.ept->map(c, kGpa + 0x5000, big + 0x5000, k4K, Ept::kRwxWb));
      return;
    }
    old_exit(c, e);
  };
  r.steps.push_back([&](Core& c) {
    CHECK_FALSE(r.ept->merge(c, kGpa + k2M, 2));  // nothing there to merge
    REQUIRE(r.ept->merge(c, kGpa, 2));
    tables_after_merge = r.frames.used_bytes(r.tables);
    auto l = r.ept->lookup(c, kGpa + 0x5000);
    REQUIRE(l);
    CHECK(l->level == 2);
    CHECK(l->hpa == big);
  });
  r.h.run();
  require_clean(r.h);
  CHECK(seen == std::vector<std::uint64_t>{0x3333, 0x3333, 0x5555, 0x5555});
  CHECK(violations == 1);
  CHECK(violation_gpa == kGpa + 0x5000);
  CHECK(tables_after_merge == tables_before_split);  // the split's table went back
  CHECK(r.invepts == 3);  // split, unmap, merge
}

TEST_CASE("EPT cursor: for-each-leaf reads the A/D flags the walker set and clears them with one INVEPT", "[ept]") {
  EptRig r(/*ad=*/true);
  struct Seen {
    std::uint64_t gpa;
    bool accessed, dirty;
  };
  std::vector<Seen> first, second;
  r.h.guest = [&](Core& c) {
    c.store(kGpa, 1);              // page 0: written
    (void)c.load(kGpa + 0x1000);   // page 1: read
    c.vmcall(kStep);               // root reads and clears the flags
    c.store(kGpa + 0x1000, 2);     // page 1: written now
    c.vmcall(kStep);               // root reads them again
  };
  auto setup = r.h.setup;
  r.h.setup = [&](Core& c) {
    setup(c);
    for (std::uint64_t i = 0; i < 3; ++i)
      REQUIRE(r.ept->map(c, kGpa + i * k4K, r.frames.alloc(r.guest, k4K), k4K, Ept::kRwxWb));
  };
  auto collect = [&](std::vector<Seen>& out, bool clear) {
    return [&out, clear, &r](Core& c) {
      r.ept->for_each_leaf(c, kGpa, kGpa + 3 * k4K, clear, [&](const Ept::Leaf& l) {
        out.push_back({l.gpa, (l.entry & ept::kAccessed) != 0, (l.entry & ept::kDirty) != 0});
      });
    };
  };
  unsigned invepts_after_clear = 0;
  r.steps.push_back([&](Core& c) {
    collect(first, true)(c);
    invepts_after_clear = r.invepts;
  });
  r.steps.push_back(collect(second, false));
  r.h.run();
  require_clean(r.h);
  REQUIRE(first.size() == 3);
  CHECK((first[0].accessed && first[0].dirty));
  CHECK((first[1].accessed && !first[1].dirty));
  CHECK((!first[2].accessed && !first[2].dirty));
  CHECK(invepts_after_clear == 1);
  REQUIRE(second.size() == 3);
  CHECK((!second[0].accessed && !second[0].dirty));  // cleared, not touched since
  CHECK((second[1].accessed && second[1].dirty));    // set again by the walker after the INVEPT
  CHECK(r.invepts == 1);                             // reading without clearing invalidates nothing
}

TEST_CASE("EPT cursor: destroy returns every table and leaf, one INVEPT", "[ept]") {
  EptRig r;
  std::uint64_t used_before = 0, used_after = 0, leaves = 0, released = 0, tlb_before = 0, tlb_after = 0;
  r.h.guest = [&](Core& c) {
    (void)c.load(kGpa);
    c.vmcall(kStep);
  };
  r.steps.push_back([&](Core& c) {
    used_before = r.frames.frames_used();
    tlb_before = r.dtlb_flushes();
    r.ept->destroy(c, [&](const Ept::Leaf& l) {
      ++leaves;
      if (r.frames.allocated(l.hpa)) {
        r.frames.put(l.hpa);
        ++released;
      }
    });
    tlb_after = r.dtlb_flushes();
    used_after = r.frames.frames_used();
  });
  auto setup = r.h.setup;
  r.h.setup = [&](Core& c) {
    setup(c);
    for (std::uint64_t i = 0; i < 4; ++i)
      REQUIRE(r.ept->map(c, kGpa + i * k2M, r.frames.alloc(r.guest, k4K), k4K, Ept::kRwxWb));
  };
  // The guest ends with its final VMCALL after the step: the EPT is gone by
  // then, but the exit path touches no guest memory.
  r.h.run();
  require_clean(r.h);
  CHECK(leaves == 8 + 4);  // the identity 2 MiB pages and the four 4 KiB pages
  CHECK(released == 4);
  CHECK(used_after == 0);  // tables, root and guest frames all back
  CHECK(used_before > used_after);
  CHECK(r.invepts == 1);
  CHECK(tlb_after > tlb_before);  // the INVEPT reached the TLBs
}
