// The MMU's hit memo (mmu/mmu.h, translate): a hit served from the memo
// must count and age the L1 DTLB exactly as the search it skips, and the memo
// must never outlive an insertion, an invalidation or a context change.
// Checked through the TLB's own statistics and the LRU choice they imply.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>

#include "mmu/mmu.h"
#include "mmu/walk_harness.h"

namespace crb = mmu::crbits;

namespace {

// Five pages whose numbers are equal modulo the L1 DTLB's 16 sets (64
// entries, 4 ways): they compete for one set.
constexpr std::uint64_t kBase = 0x4000'0000;
constexpr std::uint64_t kStride = 16 * 0x1000;

struct MemoMachine {
  MemoMachine() {
    for (unsigned i = 0; i < 5; ++i) h.guest_map(page(i), 0x800'0000 + i * 0x1000, 12);
    cr3 = h.cr3;
    efer = crb::kEferLme;
    mmu.wire({&cr3, &efer, &eptp});
    context(0);
  }
  static std::uint64_t page(unsigned i) { return kBase + i * kStride; }
  void context(std::uint16_t vpid) {
    mmu.set_context(crb::kCr0Pe | crb::kCr0Pg | crb::kCr0Wp, crb::kCr4Pae, false, false, vpid, false, {});
  }
  bool access(unsigned i, AccessType type = AccessType::Read) {
    std::uint64_t pa = 0, now = 0;
    return mmu.translate(page(i) + 8, type, pa, now) && pa == 0x800'0000 + i * 0x1000 + 8;
  }
  std::uint64_t stat(const std::string& path) const {
    return dynamic_cast<const stats::Counter&>(*root.find(path)).value();
  }
  std::uint64_t dtlb_misses() const { return stat("tlb.dtlb.misses"); }

  Harness h{4, false};
  std::uint64_t cr3 = 0, efer = 0, eptp = 0;
  stats::Group root;
  mmu::Mmu mmu{mmu::MmuParams{cfg::defaults<mmu::DtlbParams>(), cfg::defaults<mmu::Dtlb2mParams>(),
                              cfg::defaults<mmu::Dtlb1gParams>(), cfg::defaults<mmu::ItlbParams>(),
                              cfg::defaults<mmu::Itlb2mParams>(), cfg::defaults<mmu::StlbParams>(),
                              cfg::defaults<mmu::Stlb1gParams>(), cfg::defaults<mmu::PscParamsAll>(),
                              cfg::defaults<mmu::NestedTlbParams>()},
               h.mem, &root};
};

}  // namespace

TEST_CASE("hit memo: hits are counted and make the entry most recently used", "[mmu][memo]") {
  MemoMachine m;
  for (unsigned i = 0; i < 4; ++i) REQUIRE(m.access(i));  // fills the set's four ways
  REQUIRE(m.dtlb_misses() == 4);
  // Page 0, the least recently used, is used again (the second time from
  // the memo): page 1 becomes the least recently used.
  REQUIRE(m.access(0));
  REQUIRE(m.access(0));
  CHECK(m.stat("tlb.dtlb.hits") == 2);
  CHECK(m.stat("tlb.dtlb.lookups") == 6);
  REQUIRE(m.access(4));  // a fifth page evicts the LRU way
  CHECK(m.stat("tlb.dtlb.evictions") == 1);
  const std::uint64_t misses = m.dtlb_misses();
  REQUIRE(m.access(0));
  CHECK(m.dtlb_misses() == misses);  // page 0 stayed
  REQUIRE(m.access(1));
  CHECK(m.dtlb_misses() == misses + 1);  // page 1 went
}

TEST_CASE("hit memo: an invalidation or a context change ends it", "[mmu][memo]") {
  MemoMachine m;
  REQUIRE(m.access(0));
  REQUIRE(m.access(0));
  REQUIRE(m.dtlb_misses() == 1);
  m.mmu.invlpg(MemoMachine::page(0));
  REQUIRE(m.access(0));
  CHECK(m.dtlb_misses() == 2);
  // Another VPID: the cached translation is not this context's.
  m.context(1);
  REQUIRE(m.access(0));
  CHECK(m.dtlb_misses() == 3);
  // Back to VPID 0: its entry is still cached and hits again.
  m.context(0);
  REQUIRE(m.access(0));
  CHECK(m.dtlb_misses() == 3);
}

TEST_CASE("hit memo: a write after reads of a clean page still walks to set D", "[mmu][memo]") {
  MemoMachine m;
  REQUIRE(m.access(2));
  REQUIRE(m.access(2));
  const std::uint64_t walks = m.stat("walker.walks");
  CHECK((m.h.guest_entry(MemoMachine::page(2), 1) & pte::kDirty) == 0);
  REQUIRE(m.access(2, AccessType::Write));
  CHECK(m.stat("walker.walks") == walks + 1);
  CHECK((m.h.guest_entry(MemoMachine::page(2), 1) & pte::kDirty) != 0);
  // The write's translation (dirty) now serves writes from the memo.
  REQUIRE(m.access(2, AccessType::Write));
  REQUIRE(m.access(2, AccessType::Write));
  CHECK(m.stat("walker.walks") == walks + 1);
}
