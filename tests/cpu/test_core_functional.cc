// Fast-forward's functional translation cache (cpu/core.h, FtlbEntry;
// docs/model.md, "Fast-forward"): it never answers a translation the TLBs
// could not, however many invalidations came since it was filled. Its
// entries are tagged with a generation that every context change or
// invalidation advances; the generations wrap (every entry is then
// cleared), so a test that crosses the wrap must still see every remapping.
#include <catch2/catch.hpp>

#include <cstdint>

#include "cpu/core.h"
#include "cpu/vmx_harness.h"
#include "mmu/paging.h"

namespace {

using vmx::cpu::Core;
using vmx::test::VmxHarness;
namespace crb = vmx::mmu::crbits;
namespace pte = vmx::mmu::pte;

// Root-mode paging: 2 MiB identity pages over 0-16 MiB except 4-6 MiB,
// which a page table maps with 4 KiB pages (identity at first).
constexpr std::uint64_t kPml4 = 0x300000, kPdpt = 0x301000, kPd = 0x302000, kPt = 0x303000;
constexpr std::uint64_t kX = 0x400000;   // the remapped pages, 4 KiB each
constexpr std::uint64_t kNew = 0x800000; // the frames they are remapped to
constexpr std::uint64_t kPw = pte::kPresent | pte::kWritable;
constexpr unsigned kPages = 64;
// MOV to CR3 count that brings the generation round to the one of the
// fills, whatever the number of generations a MOV to CR3 advances: the
// count of generations in a cycle (4095) is a multiple of the cycle's
// length in MOVs. The checks span kPages MOVs around it.
constexpr unsigned kCycle = 4095;

}  // namespace

TEST_CASE("fast-forward: a remapped page is seen after the translation cache's generations wrap",
          "[core][fast-forward]") {
  VmxHarness h;
  unsigned wrong = 0, checked = 0;
  std::uint64_t first_wrong = 0;
  h.after = [&](Core& c) {
    c.store(kPml4, kPdpt | kPw);
    c.store(kPdpt, kPd | kPw);
    for (std::uint64_t i = 0; i < 8; ++i) c.store(kPd + 8 * i, i == 2 ? (kPt | kPw) : ((i << 21) | kPw | pte::kPageSize));
    for (std::uint64_t j = 0; j < 512; ++j) c.store(kPt + 8 * j, (kX + j * 0x1000) | kPw);
    // Each page says which frame it is: 1 in the first, 2 in the new.
    for (unsigned i = 0; i < kPages; ++i) {
      c.store(kX + i * 0x1000, 1);
      c.store(kNew + i * 0x1000, 2);
    }
    c.write_cr(4, crb::kCr4Pae);
    c.write_cr(3, kPml4);
    c.write_cr(0, crb::kCr0Pe | crb::kCr0Pg | crb::kCr0Wp);
    c.set_functional(true);
    // Fill the functional cache with every page's first translation (all
    // in one generation), then remap every page and invalidate by MOV to
    // CR3, over and over, without touching the pages.
    for (unsigned i = 0; i < kPages; ++i) {
      ++checked;
      if (c.load(kX + i * 0x1000) != 1) ++wrong;
    }
    for (unsigned i = 0; i < kPages; ++i) c.store(kPt + 8 * i, (kNew + i * 0x1000) | kPw);
    for (unsigned mov = 1; mov < kCycle + kPages / 2; ++mov) {
      c.write_cr(3, kPml4);
      // Page i is first looked at again after kCycle - kPages/2 + i MOVs.
      if (mov + kPages / 2 >= kCycle) {
        const unsigned i = mov + kPages / 2 - kCycle;
        ++checked;
        const std::uint64_t v = c.load(kX + i * 0x1000);
        if (v != 2 && wrong++ == 0) first_wrong = mov;
      }
    }
    c.set_functional(false);
  };
  h.run();
  REQUIRE(h.done);
  INFO("first stale load after " << first_wrong << " MOVs to CR3");
  CHECK(checked == 2 * kPages);
  CHECK(wrong == 0);
}
