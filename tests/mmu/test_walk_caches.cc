// Exact tests of the walk caches as the walker uses them: the guest- and
// EPT-dimension paging-structure caches (mmu/psc) and the nested TLB
// (mmu/nested_tlb). Guest tables live at guest-physical 1 MiB+ (one 2 MiB
// region, mapped by 4 KiB EPT pages), data at guest-physical 5 GiB+, so
// which cache can hit, and how many references it saves, follows from the
// table structure (mmu/walk_harness.h).
#include <catch2/catch.hpp>

#include <memory>
#include <string>

#include "mmu/walk_harness.h"

namespace {

// Which caches exist.
enum CacheBit : unsigned {
  kGPde = 1u << 0, kGPdpte = 1u << 1, kGPml4e = 1u << 2, kGPml5e = 1u << 3,
  kEPde = 1u << 4, kEPdpte = 1u << 5, kEPml4e = 1u << 6, kEPml5e = 1u << 7,
  kNested = 1u << 8,
  kAllGuest = kGPde | kGPdpte | kGPml4e | kGPml5e,
  kAllEpt = kEPde | kEPdpte | kEPml4e | kEPml5e,
  kAll = kAllGuest | kAllEpt | kNested,
};

/// The walk caches of one test, at their default geometry; a cache whose bit
/// is clear is built with enabled = false.
struct CacheSet {
  explicit CacheSet(unsigned on, std::uint32_t guest_latency = 1, std::uint32_t ept_latency = 1,
                    std::uint32_t nested_latency = 1) {
    auto p = cfg::defaults<mmu::PscParamsAll>();
    auto n = cfg::defaults<mmu::NestedTlbParams>();
    const char* names[6] = {"", "", "pde", "pdpte", "pml4e", "pml5e"};
    for (unsigned l = 2; l <= 5; ++l) {
      mmu::PscParams g = p.guest.level(l), e = p.ept.level(l);
      g.enabled = on & (kGPde << (l - 2));
      e.enabled = on & (kEPde << (l - 2));
      g.latency = guest_latency;
      e.latency = ept_latency;
      guest[l] = std::make_unique<mmu::Psc>(g, l, &guest_group, names[l]);
      ept[l] = std::make_unique<mmu::Psc>(e, l, &ept_group, names[l]);
      walk.guest[l] = guest[l].get();
      walk.ept[l] = ept[l].get();
    }
    n.enabled = on & kNested;
    n.latency = nested_latency;
    nested = std::make_unique<mmu::NestedTlb>(n, &root, "nested_tlb");
    walk.nested = nested.get();
  }
  void flush_ep4ta(std::uint64_t ep4ta) {
    for (unsigned l = 2; l <= 5; ++l) {
      guest[l]->flush_ep4ta(ep4ta);
      ept[l]->flush_ep4ta(ep4ta);
    }
    nested->flush_ep4ta(ep4ta);
  }

  stats::Group root;
  stats::Group guest_group{&root, "guest"};
  stats::Group ept_group{&root, "ept"};
  std::array<std::unique_ptr<mmu::Psc>, 6> guest, ept;
  std::unique_ptr<mmu::NestedTlb> nested;
  mmu::WalkCaches walk;
};

/// A harness whose walker uses the caches of `on`.
struct CachedHarness {
  CachedHarness(unsigned gl, unsigned el, unsigned on) : caches(on), h(gl, true, el, caches.walk) {}
  CacheSet caches;
  Harness h;
};

std::uint16_t walk_refs(Harness& h, std::uint64_t la) {
  h.mem.reads.clear();
  WalkResult r = h.walk(h.request(la));
  REQUIRE(r.status == Status::Ok);
  return r.refs;
}

}  // namespace

// ---------------------------------------------------------------------------
// Cold and warm walks with every cache on
// ---------------------------------------------------------------------------

TEST_CASE("all walk caches on: a cold walk, then the same walk warm, over every depth and page size",
          "[walker][psc]") {
  const unsigned gl = GENERATE(4u, 5u);
  const unsigned el = GENERATE(4u, 5u);
  const unsigned gshift = GENERATE(12u, 21u, 30u);
  const unsigned eshift = GENERATE(12u, 21u, 30u);
  CAPTURE(gl, el, gshift, eshift);

  CachedHarness ch(gl, el, kAll);
  Harness& h = ch.h;
  const std::uint64_t la = gl == 5 ? kLa5 : kLa4;
  const std::uint64_t gsize = 1ull << gshift, esize = 1ull << eshift;
  const std::uint64_t gpa = kDataGpa + (la & (gsize - 1));
  const std::uint64_t gpage = gpa & ~(esize - 1);
  h.guest_map(la & ~(gsize - 1), kDataGpa, gshift);
  h.ept_map(gpage, kDataHpa + (gpage - kDataGpa), eshift);

  const unsigned guest_used = gl - (gshift - 12) / 9;
  const unsigned ept_leaf = leaf_level(eshift);

  // Cold. The first guest table's gPA is walked in full (el references) and
  // fills the EPT PSCs; every later guest table lies in the same 2 MiB
  // region, so the EPT PDE cache leaves one reference (the EPT PTE). The
  // data gPA (5 GiB) shares only the EPT PML4 entry with the tables: the
  // EPT PML4E cache hit leaves the levels below it down to the EPT leaf.
  const unsigned cold = guest_used + el + (guest_used - 1) + (4 - ept_leaf);
  WalkResult r = h.walk(h.request(la));
  REQUIRE(r.status == Status::Ok);
  CHECK(r.refs == cold);
  CHECK(r.guest_refs == guest_used);
  CHECK(r.pa == kDataHpa + (la & (gsize - 1)));
  CHECK(r.page_shift == std::min(gshift, eshift));
  CHECK(r.psc_hits == guest_used);  // EPT PDE for tables 2.., EPT PML4E for the data
  CHECK(r.nested_hits == 0);
  // Latencies (1 cycle each): one guest PSC probe; per gPA a nested-TLB
  // lookup and, on its miss, one EPT PSC probe.
  CHECK(r.cycles == cold * kReadLatency + guest_used * kWriteLatency + 1 + 2 * (guest_used + 1));
  std::string kinds = std::string(el, 'E') + "G";
  for (unsigned i = 1; i < guest_used; ++i) kinds += "EG";
  kinds += std::string(4 - ept_leaf, 'E');
  CHECK(h.read_kinds() == kinds);

  // Warm: the guest PSC entry just above the leaf gives the leaf table's
  // host-physical address, and the nested TLB the data page: one reference.
  h.mem.reads.clear();
  WalkResult w = h.walk(h.request(la));
  REQUIRE(w.status == Status::Ok);
  CHECK(w.refs == 1);
  CHECK(h.read_kinds() == "G");
  CHECK(w.pa == r.pa);
  CHECK(w.psc_hits == 1);
  CHECK(w.nested_hits == 1);
  CHECK(w.cycles == 1 * kReadLatency + 1 + 1);
  CHECK(h.stats.guest_refs[leaf_level(gshift)]->value() == 2);  // the leaf level, once per walk
  CHECK(h.stats.psc_hits.value() == guest_used + 1);
  CHECK(h.stats.nested_tlb_hits.value() == 1);
  CHECK(h.stats.guest_refs_per_walk.count() == 2);
  CHECK(h.stats.ept_refs_per_walk.sum() == cold - guest_used);
}

TEST_CASE("walk caches switched off: a 2D walk makes the full count", "[walker][psc]") {
  const unsigned gl = GENERATE(4u, 5u);
  const unsigned el = GENERATE(4u, 5u);
  CachedHarness ch(gl, el, 0);
  Harness& h = ch.h;
  const std::uint64_t la = gl == 5 ? kLa5 : kLa4;
  h.guest_map(la, kDataGpa, 12);
  h.ept_map(kDataGpa, kDataHpa, 12);
  CHECK(walk_refs(h, la) == gl * (el + 1) + el);
  CHECK(walk_refs(h, la) == gl * (el + 1) + el);
  for (unsigned l = 2; l <= 5; ++l) {
    CHECK(ch.caches.guest[l]->stats().lookups.value() == 0);
    CHECK(ch.caches.ept[l]->stats().lookups.value() == 0);
    CHECK(ch.caches.guest[l]->occupancy() == 0);
  }
  CHECK(ch.caches.nested->stats().lookups.value() == 0);
}

// ---------------------------------------------------------------------------
// Each cache alone: where it saves references and where it cannot
// ---------------------------------------------------------------------------

namespace {
struct Single {
  const char* name;
  unsigned on;
  // References of walk B after walk A (4-level guest over 4-level EPT, all
  // 4 KiB), for B = A + 4 KiB (same page table), A + 2 MiB (same page
  // directory, new page table), A + 1 GiB (same PDPT, new PD and PT).
  unsigned next_4k, next_2m, next_1g;
};
}  // namespace

TEST_CASE("each walk cache alone saves references exactly where the table structure allows",
          "[walker][psc]") {
  // A cold walk is 24 (4 x 5 + 4). Guest tables are gPA 1 MiB+, the data of
  // A is gPA 5 GiB, of B 5 GiB + the same offset as in the linear address.
  const Single c = GENERATE(values<Single>({
      {"none", 0, 24, 24, 24},
      // Guest PDE cache: B + 4 KiB reads its PTE at the cached PT (1), then
      // walks EPT for its data page (4). Other PDEs: no help.
      {"guest pde", kGPde, 5, 24, 24},
      // Guest PDPTE cache: PDE at the cached PD (1), PT via EPT (4 + 1), data (4).
      {"guest pdpte", kGPdpte, 10, 10, 24},
      // Guest PML4E cache: PDPTE (1), PD (5), PT (5), data (4).
      {"guest pml4e", kGPml4e, 15, 15, 15},
      // 4-level paging has no PML5 entries to cache.
      {"guest pml5e", kGPml5e, 24, 24, 24},
      // EPT PDE cache: every guest table is in the tables' 2 MiB region (1 EPT
      // reference + the guest reference each); the data needs 1 if in A's
      // 2 MiB region, else 4.
      {"ept pde", kEPde, 4 * 2 + 1, 4 * 2 + 4, 4 * 2 + 4},
      // EPT PDPTE cache: 2 EPT references per table; data: 2 in A's 1 GiB
      // region, else 4.
      {"ept pdpte", kEPdpte, 4 * 3 + 2, 4 * 3 + 2, 4 * 3 + 4},
      // EPT PML4E cache: 3 per table and 3 for the data.
      {"ept pml4e", kEPml4e, 4 * 4 + 3, 4 * 4 + 3, 4 * 4 + 3},
      {"ept pml5e", kEPml5e, 24, 24, 24},
      // Nested TLB: table pages read by A translate for free (PML4 and PDPT
      // always, the PD unless B + 1 GiB, the PT only for B + 4 KiB); B's
      // data page is new (4).
      {"nested tlb", kNested, 4 + 0 + 4, 4 + 4 + 4, 4 + 8 + 4},
      // Everything: + 4 KiB: PTE via the PDE cache, data via the EPT PDE
      // cache (1 + 1). + 2 MiB: PDE via the PDPTE cache (1), the new PT via
      // the EPT PDE cache (1 + 1), the data via the EPT PDPTE cache (2).
      // + 1 GiB: PDPTE via the PML4E cache (1), the new PD and PT via the EPT
      // PDE cache (2 + 2), the data via the EPT PML4E cache (3).
      {"all", kAll, 2, 5, 8},
  }));
  const std::uint64_t delta = GENERATE(as<std::uint64_t>{}, 1ull << 12, 1ull << 21, 1ull << 30);
  CAPTURE(c.name, delta);

  CachedHarness ch(4, 4, c.on);
  Harness& h = ch.h;
  const std::uint64_t a = kLa4 & ~0xFFFull;
  h.guest_map(a, kDataGpa, 12);
  h.ept_map(kDataGpa, kDataHpa, 12);
  h.guest_map(a + delta, kDataGpa + delta, 12);
  h.ept_map(kDataGpa + delta, kDataHpa + delta, 12);

  REQUIRE(walk_refs(h, a) <= 24);
  const unsigned expected = delta == (1ull << 12) ? c.next_4k : delta == (1ull << 21) ? c.next_2m : c.next_1g;
  CHECK(walk_refs(h, a + delta) == expected);
}

TEST_CASE("the PML5E caches shorten only 5-level walks", "[walker][psc]") {
  const unsigned gl = GENERATE(4u, 5u);
  const unsigned el = GENERATE(4u, 5u);
  const bool guest_side = GENERATE(true, false);
  CAPTURE(gl, el, guest_side);
  CachedHarness ch(gl, el, guest_side ? kGPml5e : kEPml5e);
  Harness& h = ch.h;
  const std::uint64_t a = (gl == 5 ? kLa5 : kLa4) & ~0xFFFull;
  h.guest_map(a, kDataGpa, 12);
  h.ept_map(kDataGpa, kDataHpa, 12);
  h.guest_map(a + 0x1000, kDataGpa + 0x1000, 12);
  h.ept_map(kDataGpa + 0x1000, kDataHpa + 0x1000, 12);

  const unsigned full = gl * (el + 1) + el;
  // Cold: the EPT PML5E cache already helps within the first walk (every
  // gPA after the first shares the EPT PML5 entry); the guest one cannot.
  const bool ept_helps = !guest_side && el == 5;
  CHECK(walk_refs(h, a) == (ept_helps ? (el + 1) + (gl - 1) * el + (el - 1) : full));
  unsigned expected = full;
  if (guest_side && gl == 5) expected = 1 + 3 * (el + 1) + el;  // PML4E read at the cached table
  if (!guest_side && el == 5) expected = gl * (4 + 1) + 4;      // each EPT walk starts at the PML4
  CHECK(walk_refs(h, a + 0x1000) == expected);
}

TEST_CASE("1D walks use the guest paging-structure caches", "[walker][psc]") {
  const unsigned gl = GENERATE(4u, 5u);
  CacheSet caches(kAll);
  Harness h(gl, false, 4, caches.walk);
  const std::uint64_t a = (gl == 5 ? kLa5 : kLa4) & ~0xFFFull;
  h.guest_map(a, kDataHpa, 12);
  h.guest_map(a + 0x1000, kDataHpa + 0x1000, 12);
  CHECK(walk_refs(h, a) == gl);
  CHECK(walk_refs(h, a + 0x1000) == 1);
  CHECK(caches.nested->stats().lookups.value() == 0);
  CHECK(caches.ept[2]->stats().lookups.value() == 0);
}

TEST_CASE("an EPT-only walk (guest paging off) uses the nested TLB and the EPT caches", "[walker][psc]") {
  CacheSet caches(kAll);
  Harness h(4, true, 4, caches.walk);
  h.ept_map(kDataGpa, kDataHpa, 12);
  h.ept_map(kDataGpa + 0x1000, kDataHpa + 0x1000, 12);
  WalkRequest req = h.request(kDataGpa);
  req.paging = false;
  CHECK(h.walk(req).refs == 4);
  CHECK(h.walk(req).refs == 0);  // nested TLB
  req.la = kDataGpa + 0x1000;
  CHECK(h.walk(req).refs == 1);  // EPT PDE cache
  CHECK(h.stats.ept_only_walks.value() == 3);
}

TEST_CASE("large pages in either dimension: the nested TLB and PSCs cache them at their size", "[walker][psc]") {
  const unsigned gshift = GENERATE(21u, 30u);
  const unsigned eshift = GENERATE(21u, 30u);
  CAPTURE(gshift, eshift);
  CachedHarness ch(4, 4, kAll);
  Harness& h = ch.h;
  const std::uint64_t gsize = 1ull << gshift;
  const std::uint64_t base = kLa4 & ~(gsize - 1);
  h.guest_map(base, kDataGpa, gshift);
  h.ept_map(kDataGpa, kDataHpa, eshift);
  if (eshift < gshift)  // the rest of the guest page
    for (std::uint64_t off = 1ull << eshift; off < gsize; off += 1ull << eshift)
      h.ept_map(kDataGpa + off, kDataHpa + off, eshift);
  walk_refs(h, base);
  // Another 4 KiB piece of the same EPT page: the guest PSC above the guest
  // leaf gives the leaf table (1 reference), the nested TLB the EPT page.
  const std::uint64_t other = base + 0x5000;
  h.mem.reads.clear();
  WalkResult r = h.walk(h.request(other));
  REQUIRE(r.status == Status::Ok);
  CHECK(r.refs == 1);
  CHECK(r.nested_hits == 1);
  CHECK(r.page_shift == std::min(gshift, eshift));
  CHECK(r.pa == kDataHpa + 0x5000);
}

// ---------------------------------------------------------------------------
// Tags and invalidation
// ---------------------------------------------------------------------------

TEST_CASE("guest PSC entries are tagged by VPID and PCID; EPT-side caches by EP4TA only", "[walker][psc][flush]") {
  CachedHarness ch(4, 4, kAll);
  Harness& h = ch.h;
  const std::uint64_t a = kLa4 & ~0xFFFull;
  h.guest_map(a, kDataGpa, 12);
  h.ept_map(kDataGpa, kDataHpa, 12);
  h.tag = {1, 7, 0};
  REQUIRE(walk_refs(h, a) == 14);
  CHECK(walk_refs(h, a) == 1);

  SECTION("another PCID misses the guest PSCs, but every gPA hits the nested TLB") {
    h.tag.pcid = 8;
    CHECK(walk_refs(h, a) == 4);  // four guest entries, no EPT reference
    h.tag.pcid = 7;
    CHECK(walk_refs(h, a) == 1);
  }
  SECTION("another VPID likewise") {
    h.tag.vpid = 2;
    CHECK(walk_refs(h, a) == 4);
  }
  SECTION("flushing the PCID's guest PSC entries (MOV to CR3, INVLPG) leaves the EPT side") {
    for (unsigned l = 2; l <= 5; ++l) ch.caches.guest[l]->flush_pcid(1, 7);
    CHECK(walk_refs(h, a) == 4);
    CHECK(walk_refs(h, a) == 1);  // refilled
  }
  SECTION("flushing another PCID or VPID removes nothing") {
    for (unsigned l = 2; l <= 5; ++l) {
      ch.caches.guest[l]->flush_pcid(1, 8);
      ch.caches.guest[l]->flush_vpid(2);
    }
    CHECK(walk_refs(h, a) == 1);
  }
  SECTION("INVEPT for this EP4TA: cold again") {
    ch.caches.flush_ep4ta(h.eptp & ept::kAddrMask);
    CHECK(walk_refs(h, a) == 14);
  }
  SECTION("INVEPT for another EP4TA removes nothing") {
    ch.caches.flush_ep4ta(0x7777000);
    CHECK(walk_refs(h, a) == 1);
  }
  SECTION("flushing only the EPT-dimension caches: the combined guest entries still hit") {
    for (unsigned l = 2; l <= 5; ++l) ch.caches.ept[l]->flush_all();
    ch.caches.nested->flush_all();
    CHECK(walk_refs(h, a) == 1 + 4);  // PTE via the cached PT, the data gPA walked in EPT
  }
}

TEST_CASE("a faulting walk caches only what it completed", "[walker][psc][fault]") {
  CachedHarness ch(4, 4, kAll);
  Harness& h = ch.h;
  const std::uint64_t a = kLa4 & ~0xFFFull;
  h.guest_map(a, kDataGpa, 12);

  SECTION("a guest page fault fills no guest PSC entry") {
    h.ept_map(kDataGpa, kDataHpa, 12);
    const std::uint64_t pte = h.guest_entry(a, 1);
    h.set_guest_entry(a, 1, 0);
    REQUIRE(h.walk(h.request(a)).status == Status::PageFault);
    for (unsigned l = 2; l <= 5; ++l) CHECK(ch.caches.guest[l]->occupancy() == 0);
    h.set_guest_entry(a, 1, pte);
    // Guest tables translate through the nested TLB (4 guest refs); the data
    // gPA shares only the EPT PML4 entry with the tables (3 refs).
    CHECK(walk_refs(h, a) == 4 + 3);
  }
  SECTION("an EPT violation on the data gPA keeps the completed guest walk's entries") {
    REQUIRE(h.walk(h.request(a)).status == Status::EptViolation);  // data gPA not mapped in EPT
    CHECK(ch.caches.guest[2]->occupancy() == 1);
    CHECK(ch.caches.guest[3]->occupancy() == 1);
    CHECK(ch.caches.guest[4]->occupancy() == 1);
    CHECK(ch.caches.nested->occupancy() == 4);  // the four table pages, not the data page
    h.ept_map(kDataGpa, kDataHpa, 12);
    CHECK(walk_refs(h, a) == 1 + 3);  // PTE via the PDE cache; data via the EPT PML4E cache
  }
  CHECK(walk_refs(h, a) == 1);
}

TEST_CASE("a nested-TLB entry that does not permit the access is not used", "[walker][psc][ept]") {
  CachedHarness ch(4, 4, kNested);
  Harness& h = ch.h;
  const std::uint64_t a = kLa4 & ~0xFFFull;
  h.guest_map(a, kDataGpa, 12, kPwu | pte::kAccessed | pte::kDirty);
  h.ept_map(kDataGpa, kDataHpa, 12, ept::kRead);  // read-only data page
  REQUIRE(walk_refs(h, a) == 24);
  h.mem.reads.clear();
  WalkResult w = h.walk(h.request(a, AccessType::Write));
  CHECK(w.status == Status::EptViolation);
  CHECK(w.refs == 4 + 4);  // tables via the nested TLB; the data gPA walked: the walk decides
  CHECK((w.exit_qualification & qual::kEptWrite) != 0);
}

// ---------------------------------------------------------------------------
// EPT accessed and dirty flags with the walk caches (SDM Vol. 3C, 29.3.5)
// ---------------------------------------------------------------------------

TEST_CASE("EPT A/D on: a nested-TLB entry made by a read does not serve a write", "[walker][psc][ad][ept]") {
  CachedHarness ch(4, 4, kAll);
  Harness& h = ch.h;
  map_data_4k(h, kPwu | pte::kAccessed | pte::kDirty);  // guest flags preset: only EPT flags are written
  h.enable_ept_ad();
  const std::uint64_t leaf = h.ept_entry(kDataGpa, 1);

  WalkResult r = h.walk(h.request(kLa4, AccessType::Read));
  REQUIRE(r.status == Status::Ok);
  CHECK((h.mem.peek(leaf) & ept::kDirty) == 0);
  CHECK((r.perms & perm::kEptDirty) == 0);

  // A write: the guest walk is served by the PDE cache (the PTE is read
  // through its combined entry), the data gPA's nested-TLB entry is clean,
  // so EPT is walked from the EPT PDE cache: one reference, and D is set.
  h.mem.reads.clear();
  h.mem.writes.clear();
  WalkResult w = h.walk(h.request(kLa4, AccessType::Write));
  REQUIRE(w.status == Status::Ok);
  CHECK(w.refs == 2);
  CHECK(h.mem.writes == std::vector<std::uint64_t>{leaf});
  CHECK((h.mem.peek(leaf) & (ept::kAccessed | ept::kDirty)) == (ept::kAccessed | ept::kDirty));
  CHECK((w.perms & perm::kEptDirty) != 0);

  // Now the nested-TLB entry is dirty: a write walk makes no EPT reference.
  h.mem.writes.clear();
  WalkResult w2 = h.walk(h.request(kLa4, AccessType::Write));
  REQUIRE(w2.status == Status::Ok);
  CHECK(w2.refs == 1);
  CHECK(h.mem.writes.empty());
}

TEST_CASE("EPT A/D on: cached walks write no A flag again", "[walker][psc][ad][ept]") {
  CachedHarness ch(4, 4, kAll);
  Harness& h = ch.h;
  map_data_4k(h);
  h.enable_ept_ad();
  REQUIRE(h.walk(h.request(kLa4, AccessType::Read)).status == Status::Ok);
  const std::uint64_t after_cold = h.stats.ept_ad_updates.value();
  CHECK(after_cold == 10);  // as without caches: every entry was walked once
  // The neighbouring page: its guest PTE and data EPT PTE are new entries.
  const std::uint64_t la2 = (kLa4 & ~0xFFFull) + 0x1000;
  h.guest_map(la2, kDataGpa + 0x1000, 12);
  h.ept_map(kDataGpa + 0x1000, kDataHpa + 0x1000, 12);
  h.mem.writes.clear();
  REQUIRE(h.walk(h.request(la2, AccessType::Read)).status == Status::Ok);
  // Guest PTE's A, and the data page's EPT PTE's A (the EPT PDE cache
  // supplied its page table): nothing above was used again.
  CHECK(h.mem.writes == std::vector<std::uint64_t>{h.host_of(h.guest_entry_gpa(la2, 1)),
                                                   h.ept_entry(kDataGpa + 0x1000, 1)});
  CHECK(h.stats.ept_ad_updates.value() == after_cold + 1);
}
