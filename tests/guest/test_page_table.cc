// The guest kernel's page-table cursor (guest/page_table.h): the entries it
// writes are the IA-32e formats (SDM Vol. 3A, 4.5), its software walks
// agree with what it mapped, and each operation makes the loads and stores
// its declaration lists. Run in VMX root operation on a one-core machine,
// with tables reached by physical address (direct-map offset 0).
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmx_harness.h"
#include "guest/page_table.h"
#include "mmu/paging.h"

namespace {

using vmx::cpu::Core;
using vmx::guest::PageTables;
using vmx::test::VmxHarness;
namespace pte = vmx::mmu::pte;

constexpr std::uint64_t kPool = 0x400000;  // table pages (cleared: fresh memory)
constexpr std::uint64_t kTableFlags = pte::kPresent | pte::kWritable | pte::kUser;

}  // namespace

TEST_CASE("the guest page-table cursor maps, walks, translates, clears and releases", "[guest][paging]") {
  VmxHarness h;
  std::uint64_t next = kPool;
  unsigned allocated = 0;
  PageTables pt(4, kTableFlags, [&](Core&) {
    ++allocated;
    const std::uint64_t t = next;
    next += 4096;
    return t;
  });
  struct {
    std::uint64_t map_loads = 0, map_stores = 0, remap_loads = 0, remap_stores = 0;
    std::uint64_t t4k = 0, t2m = 0, t_unmapped = 0, t_after_clear = 0;
    bool walk_present = false, walk_absent = true;
    unsigned absent_level = 0;
    std::uint64_t leaf = 0, leaf_expected = 0, pte0 = 0;
    std::vector<std::uint64_t> freed;
    std::uint64_t freed_nonzero = 0;
    std::uint64_t copied = 0;
  } r;
  h.after_vmxon = [&](Core& c) {
    const std::uint64_t root = next;
    next += 4096;
    const auto& s = c.stats();
    std::uint64_t l0 = s.loads.value(), s0 = s.stores.value();
    // A 4 KiB page in an empty tree: three loads above the leaf, three new
    // table entries and the leaf.
    pt.map(c, root, 0x10000000, 0x800000, pte::kPresent | pte::kWritable | pte::kUser);
    r.map_loads = s.loads.value() - l0;
    r.map_stores = s.stores.value() - s0;
    // A second page under the same tables: three loads, the leaf only.
    l0 = s.loads.value();
    s0 = s.stores.value();
    pt.map(c, root, 0x10001000, 0x801000, pte::kPresent | pte::kUser);
    r.remap_loads = s.loads.value() - l0;
    r.remap_stores = s.stores.value() - s0;
    // A 2 MiB page (PS at level 2) in another 1 GiB region: one more table.
    pt.map(c, root, 0x40000000, 0xA00000, pte::kPresent | pte::kWritable | pte::kPageSize, 2);
    r.pte0 = c.load(pt.leaf_entry(c, root, 0x10000000) & ~0xFFFull);  // the 4 KiB leaf of 0x10000000
    r.t4k = pt.translate(c, root, 0x10000123);
    r.t2m = pt.translate(c, root, 0x40001234);
    r.t_unmapped = pt.translate(c, root, 0x80000000);
    r.walk_present = pt.walk(c, root, 0x10001000, 1).present;
    const PageTables::Slot absent = pt.walk(c, root, 0x7F0000000000, 1);
    r.walk_absent = absent.present;
    r.absent_level = absent.level;
    r.leaf = pt.leaf_entry(c, root, 0x10001000);
    PageTables::clear(c, r.leaf);
    r.t_after_clear = pt.translate(c, root, 0x10001000);
    // The kernel half (entries 256-511) copied into a second root.
    const std::uint64_t other = next;
    next += 4096;
    c.store(root + 8 * 300, 0xABC000 | kTableFlags);
    pt.copy_entries(c, root, other, 256, 512);
    r.copied = c.load(other + 8 * 300);
    c.store(root + 8 * 300, 0);
    // The user half's tables go back, each cleared.
    pt.release_below(c, root, 4, 0, 256, [&](std::uint64_t t) { r.freed.push_back(t); });
    for (std::uint64_t t : r.freed)
      for (unsigned i = 0; i < 512; ++i) r.freed_nonzero += c.load(t + 8 * i) != 0;
  };
  h.run();
  REQUIRE(h.setup_errors.empty());
  CHECK(r.map_loads == 3);
  CHECK(r.map_stores == 4);
  CHECK(r.remap_loads == 3);
  CHECK(r.remap_stores == 1);
  CHECK(r.pte0 == (0x800000 | pte::kPresent | pte::kWritable | pte::kUser));
  CHECK(r.t4k == 0x800123);
  CHECK(r.t2m == 0xA01234);
  CHECK(r.t_unmapped == 0);
  CHECK(r.walk_present);
  CHECK_FALSE(r.walk_absent);
  CHECK(r.absent_level == 4);  // PML4 entry 254 was never written
  CHECK(r.t_after_clear == 0);
  CHECK(r.copied == (0xABC000 | kTableFlags));
  // PDPT, the PD and page table of the 4 KiB pages, and the PD of the 2 MiB
  // page: every table allocated below the root.
  CHECK(allocated == 4);
  CHECK(r.freed.size() == 4);
  CHECK(r.freed_nonzero == 0);
}
