// Exact tests of the page walker (mmu/walker) with no walk caches: real
// IA-32e and EPT paging structures are built in a fake host-physical memory
// whose every reference costs a fixed latency (mmu/walk_harness.h), so
// reference counts and cycles are exact. The walk caches are tested in
// test_walk_caches.cc.
#include "mmu/walker.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include "mmu/walk_harness.h"

// ---------------------------------------------------------------------------
// Reference counts and cycles
// ---------------------------------------------------------------------------

TEST_CASE("4-level guest over 4-level EPT, all 4 KiB: 24 references in 2D order", "[walker]") {
  Harness h(4, true, 4);
  map_data_4k(h);

  WalkResult r = h.walk(h.request(kLa4));
  REQUIRE(r.status == Status::Ok);
  CHECK(r.refs == 24);
  // Each guest entry's gPA is translated by EPT (4 refs) before it is read,
  // and the final gPA last (SDM Vol. 3C, 29.3.2).
  CHECK(h.read_kinds() == "EEEEG" "EEEEG" "EEEEG" "EEEEG" "EEEE");
  // First walk also sets A in the four guest entries.
  CHECK(r.cycles == 24 * kReadLatency + 4 * kWriteLatency);
  CHECK(r.gpa == kDataGpa + kDataOff);
  CHECK(r.pa == kDataHpa + kDataOff);
  CHECK(r.page_shift == 12);
  CHECK(r.perms == (perm::kWritable | perm::kUser | perm::kExecutable | perm::kAllEpt | perm::kEptDirty));
  CHECK_FALSE(r.global);

  auto& s = h.stats;
  for (unsigned l = 1; l <= 4; ++l) {
    INFO("level " << l);
    CHECK(s.guest_refs[l]->value() == 1);
    CHECK(s.ept_refs[l]->value() == 5);  // 4 table translations + the final gPA
  }
  CHECK(s.guest_refs[5]->value() == 0);
  CHECK(s.ept_refs[5]->value() == 0);
  CHECK(s.guest_refs_total.value() == 4);
  CHECK(s.ept_refs_total.value() == 20);
  CHECK(s.refs.value() == 24);
  CHECK(s.walks.value() == 1);
  CHECK(s.ept_only_walks.value() == 0);
  CHECK(s.ad_updates.value() == 4);
  CHECK(s.cycles.count() == 1);
  CHECK(s.cycles.sum() == 148);
  CHECK(s.refs_per_walk.sum() == 24);

  // Accessed flags now set: the walk is exactly 24 references x latency.
  WalkResult again = h.walk(h.request(kLa4));
  REQUIRE(again.status == Status::Ok);
  CHECK(again.refs == 24);
  CHECK(again.cycles == 24 * kReadLatency);
  CHECK(s.refs.value() == 48);
  CHECK(s.walks.value() == 2);
  CHECK(s.ad_updates.value() == 4);
  CHECK(s.mean_refs.value() == 24.0);
}

TEST_CASE("2D walk over every guest/EPT depth and page size", "[walker]") {
  const unsigned gl = GENERATE(4u, 5u);
  const unsigned el = GENERATE(4u, 5u);
  const unsigned gshift = GENERATE(12u, 21u, 30u);
  const unsigned eshift = GENERATE(12u, 21u, 30u);
  CAPTURE(gl, el, gshift, eshift);

  Harness h(gl, true, el);
  const std::uint64_t la = gl == 5 ? kLa5 : kLa4;
  const std::uint64_t gsize = 1ull << gshift, esize = 1ull << eshift;
  const std::uint64_t gpa = kDataGpa + (la & (gsize - 1));
  const std::uint64_t gpage = gpa & ~(esize - 1);
  h.guest_map(la & ~(gsize - 1), kDataGpa, gshift);
  h.ept_map(gpage, kDataHpa + (gpage - kDataGpa), eshift);

  const unsigned guest_used = gl - (gshift - 12) / 9;
  const unsigned ept_used_final = el - (eshift - 12) / 9;
  // Guest table pages are mapped by 4 KiB EPT pages: el references each.
  const unsigned refs = guest_used * (el + 1) + ept_used_final;

  WalkResult r = h.walk(h.request(la));
  REQUIRE(r.status == Status::Ok);
  CHECK(r.refs == refs);
  CHECK(h.mem.reads.size() == refs);
  CHECK(r.cycles == refs * kReadLatency + guest_used * kWriteLatency);
  CHECK(r.gpa == gpa);
  CHECK(r.pa == kDataHpa + (la & (gsize - 1)));
  CHECK(r.page_shift == std::min(gshift, eshift));

  std::string kinds;
  for (unsigned i = 0; i < guest_used; ++i) kinds += std::string(el, 'E') + "G";
  kinds += std::string(ept_used_final, 'E');
  CHECK(h.read_kinds() == kinds);

  for (unsigned l = 1; l <= 5; ++l) {
    INFO("level " << l);
    const bool guest_level_used = l <= gl && l > gl - guest_used;
    const bool ept_level_final = l <= el && l > el - ept_used_final;
    CHECK(h.stats.guest_refs[l]->value() == (guest_level_used ? 1u : 0u));
    CHECK(h.stats.ept_refs[l]->value() == (l <= el ? guest_used : 0u) + (ept_level_final ? 1u : 0u));
  }
  CHECK(h.stats.refs.value() == refs);
  CHECK(h.stats.guest_refs_total.value() == guest_used);
  CHECK(h.stats.ept_refs_total.value() == guest_used * el + ept_used_final);

  WalkResult again = h.walk(h.request(la));
  CHECK(again.refs == refs);
  CHECK(again.cycles == refs * kReadLatency);
}

TEST_CASE("1D walk (no EPT): one reference per guest level used", "[walker]") {
  const unsigned gl = GENERATE(4u, 5u);
  const unsigned gshift = GENERATE(12u, 21u, 30u);
  CAPTURE(gl, gshift);
  Harness h(gl, false);
  const std::uint64_t la = gl == 5 ? kLa5 : kLa4;
  const std::uint64_t gsize = 1ull << gshift;
  h.guest_map(la & ~(gsize - 1), kDataGpa, gshift);
  const unsigned used = gl - (gshift - 12) / 9;

  WalkResult r = h.walk(h.request(la));
  REQUIRE(r.status == Status::Ok);
  CHECK(r.refs == used);
  CHECK(r.cycles == used * (kReadLatency + kWriteLatency));
  CHECK(r.pa == kDataGpa + (la & (gsize - 1)));
  CHECK(r.gpa == r.pa);
  CHECK(r.page_shift == gshift);
  CHECK(r.perms == (perm::kWritable | perm::kUser | perm::kExecutable | perm::kAllEpt | perm::kEptDirty));
  CHECK(h.read_kinds() == std::string(used, 'G'));
  CHECK(h.stats.ept_refs_total.value() == 0);

  WalkResult again = h.walk(h.request(la));
  CHECK(again.refs == used);
  CHECK(again.cycles == used * kReadLatency);
}

TEST_CASE("headline 1D case: 4-level, 4 KiB, 4 references", "[walker]") {
  Harness h(4, false);
  map_data_4k(h, kPwu | pte::kAccessed | pte::kGlobal);
  for (unsigned l = 2; l <= 4; ++l) h.set_guest_entry(kLa4, l, h.guest_entry(kLa4, l) | pte::kAccessed);
  WalkResult r = h.walk(h.request(kLa4));
  REQUIRE(r.status == Status::Ok);
  CHECK(r.refs == 4);
  CHECK(r.cycles == 4 * kReadLatency);
  CHECK(r.pa == kDataGpa + kDataOff);
  CHECK(r.global);
  CHECK(h.mem.writes.empty());
}

TEST_CASE("guest paging off with EPT: only the EPT walk", "[walker]") {
  const unsigned el = GENERATE(4u, 5u);
  const unsigned eshift = GENERATE(12u, 21u, 30u);
  CAPTURE(el, eshift);
  Harness h(4, true, el);
  h.mem.reads.clear();
  const std::uint64_t esize = 1ull << eshift;
  const std::uint64_t gpa = kDataGpa + 0x12'3456ull * 8 + 4;  // inside the first 1 GiB
  h.ept_map(gpa & ~(esize - 1), kDataHpa, eshift);

  WalkRequest q = h.request(gpa, AccessType::Write);
  q.paging = false;
  WalkResult r = h.walk(q);
  REQUIRE(r.status == Status::Ok);
  const unsigned refs = el - (eshift - 12) / 9;
  CHECK(r.refs == refs);
  CHECK(r.cycles == refs * kReadLatency);
  CHECK(r.gpa == gpa);
  CHECK(r.pa == kDataHpa + (gpa & (esize - 1)));
  CHECK(r.page_shift == eshift);
  CHECK(r.perms == 0xFF);  // EPT A/D off: no EPT dirty flag to set (kEptDirty)
  CHECK(h.read_kinds() == std::string(refs, 'E'));
  CHECK(h.stats.walks.value() == 0);
  CHECK(h.stats.ept_only_walks.value() == 1);
  CHECK(h.stats.guest_refs_total.value() == 0);
  CHECK(h.stats.ept_refs_total.value() == refs);
  CHECK(h.stats.ad_updates.value() == 0);
}

TEST_CASE("mean_refs is the mean of refs_per_walk, EPT-only walks included", "[walker][stats]") {
  Harness h(4, true, 4);
  map_data_4k(h);
  WalkRequest q = h.request(kLa4);
  REQUIRE(h.walk(q).refs == 24);  // 2D walk with guest paging
  q = h.request(kDataGpa + kDataOff);
  q.paging = false;
  REQUIRE(h.walk(q).refs == 4);   // EPT-only walk (guest paging off)
  const auto& s = h.stats;
  CHECK(s.walks.value() == 1);
  CHECK(s.ept_only_walks.value() == 1);
  CHECK(s.walks_all.value() == 2);
  CHECK(s.refs.value() == 28);
  // Before the fix this was refs / walks = 28, above the structural maximum
  // of 24 references for a 4-level guest over a 4-level EPT.
  CHECK(s.mean_refs.value() == 14.0);
  CHECK(s.mean_refs.value() == s.refs_per_walk.mean());
  CHECK(s.refs_per_walk.count() == s.walks_all.value());
}

TEST_CASE("paging off and no EPT: identity, no references", "[walker]") {
  Harness h(4, false);
  WalkRequest q = h.request(0x1234'5678);
  q.paging = false;
  WalkResult r = h.walk(q);
  CHECK(r.status == Status::Ok);
  CHECK(r.pa == 0x1234'5678);
  CHECK(r.gpa == 0x1234'5678);
  CHECK(r.refs == 0);
  CHECK(r.cycles == 0);
  CHECK(r.page_shift == 12);
  CHECK(h.mem.reads.empty());
}

// ---------------------------------------------------------------------------
// Guest page faults (SDM Vol. 3A, 4.6 and 4.7)
// ---------------------------------------------------------------------------

namespace {
struct AccessCase {
  const char* name;
  AccessType type;
  bool user, nxe, smep;
  std::uint32_t access_bits;  // W/U/I-D bits the error code must carry
};
}  // namespace

TEST_CASE("not-present entry at each level: page fault with W/U/I-D bits, P clear", "[walker][fault]") {
  const unsigned level = GENERATE(1u, 2u, 3u, 4u);
  const AccessCase c = GENERATE(
      AccessCase{"supervisor read", AccessType::Read, false, true, false, 0},
      AccessCase{"supervisor write", AccessType::Write, false, true, false, pfec::kWrite},
      AccessCase{"user read", AccessType::Read, true, true, false, pfec::kUser},
      AccessCase{"user write", AccessType::Write, true, true, false, pfec::kWrite | pfec::kUser},
      AccessCase{"supervisor fetch, NXE", AccessType::Execute, false, true, false, pfec::kFetch},
      AccessCase{"user fetch, NXE", AccessType::Execute, true, true, false, pfec::kFetch | pfec::kUser},
      AccessCase{"fetch, no NXE, no SMEP", AccessType::Execute, false, false, false, 0},
      // SDM 4.7: I/D is set for a fetch if CR4.SMEP = 1, even with NXE = 0.
      AccessCase{"fetch, no NXE, SMEP", AccessType::Execute, false, false, true, pfec::kFetch});
  CAPTURE(level, c.name);

  Harness h(4, false);
  map_data_4k(h);
  h.set_guest_entry(kLa4, level, h.guest_entry(kLa4, level) & ~pte::kPresent);
  WalkRequest q = h.request(kLa4, c.type, c.user);
  q.nxe = c.nxe;
  q.smep = c.smep;
  WalkResult r = h.walk(q);
  CHECK(r.status == Status::PageFault);
  CHECK(r.error_code == c.access_bits);
  CHECK(r.refs == 4 - level + 1);
  CHECK(r.cycles == (4 - level + 1) * kReadLatency);
  CHECK(h.mem.writes.empty());
  CHECK(h.stats.page_faults.value() == 1);
  CHECK(h.stats.ad_updates.value() == 0);
}

namespace {
struct ProtCase {
  const char* name;
  std::uint64_t leaf;  // leaf flags (non-leaf entries are P|W|U)
  AccessType type;
  bool user, wp, nxe, smep, smap;
  bool ok;
  std::uint32_t error_code;
};
constexpr std::uint64_t kP = pte::kPresent, kW = pte::kWritable, kU = pte::kUser, kNx = pte::kNoExecute;
constexpr auto R = AccessType::Read, W = AccessType::Write, X = AccessType::Execute;
}  // namespace

TEST_CASE("access rights of a present translation", "[walker][fault]") {
  const ProtCase c = GENERATE(
      // name                                leaf          type user  wp     nxe    smep   smap   ok     pfec
      ProtCase{"user read, user page",       kP | kW | kU, R, true,  true,  true,  false, false, true,  0},
      ProtCase{"user read, supervisor page", kP | kW,      R, true,  true,  true,  false, false, false, 0x5},
      ProtCase{"user write, supervisor page", kP | kW,     W, true,  true,  true,  false, false, false, 0x7},
      ProtCase{"user fetch, supervisor page", kP | kW,     X, true,  true,  true,  false, false, false, 0x15},
      ProtCase{"supervisor write RO, WP=1",  kP | kU,      W, false, true,  true,  false, false, false, 0x3},
      ProtCase{"supervisor write RO, WP=0",  kP | kU,      W, false, false, true,  false, false, true,  0},
      ProtCase{"user write RO, WP=0",        kP | kU,      W, true,  false, true,  false, false, false, 0x7},
      ProtCase{"supervisor read user, no SMAP", kP | kU,   R, false, true,  true,  false, false, true,  0},
      ProtCase{"supervisor read user, SMAP", kP | kW | kU, R, false, true,  true,  false, true,  false, 0x1},
      ProtCase{"supervisor write user, SMAP", kP | kW | kU, W, false, true, true,  false, true,  false, 0x3},
      ProtCase{"supervisor fetch user, SMAP only", kP | kU, X, false, true, true,  false, true,  true,  0},
      ProtCase{"supervisor fetch user, SMEP", kP | kU,     X, false, true,  true,  true,  false, false, 0x11},
      ProtCase{"supervisor fetch user, SMEP, no NXE", kP | kU, X, false, true, false, true, false, false, 0x11},
      ProtCase{"supervisor fetch supervisor, SMEP", kP,    X, false, true,  true,  true,  false, true,  0},
      ProtCase{"supervisor fetch NX, NXE",   kP | kNx,     X, false, true,  true,  false, false, false, 0x11},
      ProtCase{"user fetch NX, NXE",         kP | kU | kNx, X, true, true,  true,  false, false, false, 0x15},
      ProtCase{"read NX, NXE",               kP | kU | kNx, R, true, true,  true,  false, false, true,  0},
      // XD (bit 63) is reserved when IA32_EFER.NXE = 0: P|RSVD plus access bits.
      ProtCase{"read NX, no NXE",            kP | kNx,     R, false, true,  false, false, false, false, 0x9},
      ProtCase{"user write NX, no NXE",      kP | kW | kU | kNx, W, true, true, false, false, false, false, 0xF},
      ProtCase{"fetch NX, no NXE",           kP | kNx,     X, false, true,  false, false, false, false, 0x9});
  CAPTURE(c.name);

  Harness h(4, false);
  map_data_4k(h, c.leaf);
  WalkRequest q = h.request(kLa4, c.type, c.user);
  q.wp = c.wp;
  q.nxe = c.nxe;
  q.smep = c.smep;
  q.smap = c.smap;
  WalkResult r = h.walk(q);
  CHECK(r.refs == 4);
  if (c.ok) {
    CHECK(r.status == Status::Ok);
    CHECK(r.pa == kDataGpa + kDataOff);
    CHECK(h.stats.page_faults.value() == 0);
  } else {
    CHECK(r.status == Status::PageFault);
    CHECK(r.error_code == c.error_code);
    CHECK(h.stats.page_faults.value() == 1);
    CHECK(h.mem.writes.empty());
  }
}

TEST_CASE("rights are the AND over all levels", "[walker][fault]") {
  const unsigned level = GENERATE(2u, 3u, 4u);  // a non-leaf entry
  CAPTURE(level);
  Harness h(4, false);
  map_data_4k(h);

  SECTION("U/S clear in a non-leaf entry: user read faults") {
    h.set_guest_entry(kLa4, level, h.guest_entry(kLa4, level) & ~pte::kUser);
    WalkResult r = h.walk(h.request(kLa4, R, true));
    CHECK(r.status == Status::PageFault);
    CHECK(r.error_code == (pfec::kPresent | pfec::kUser));
    CHECK(h.walk(h.request(kLa4, R, false)).status == Status::Ok);
  }
  SECTION("R/W clear in a non-leaf entry: supervisor write with WP faults") {
    h.set_guest_entry(kLa4, level, h.guest_entry(kLa4, level) & ~pte::kWritable);
    WalkResult r = h.walk(h.request(kLa4, W, false));
    CHECK(r.status == Status::PageFault);
    CHECK(r.error_code == (pfec::kPresent | pfec::kWrite));
    WalkResult rd = h.walk(h.request(kLa4, R, false));
    CHECK(rd.status == Status::Ok);
    CHECK((rd.perms & perm::kWritable) == 0);
  }
  SECTION("XD set in a non-leaf entry: fetch faults") {
    h.set_guest_entry(kLa4, level, h.guest_entry(kLa4, level) | pte::kNoExecute);
    WalkResult r = h.walk(h.request(kLa4, X, false));
    CHECK(r.status == Status::PageFault);
    CHECK(r.error_code == (pfec::kPresent | pfec::kFetch));
  }
}

TEST_CASE("page size bit where no page may be mapped is reserved", "[walker][fault]") {
  SECTION("PS in a PML4 entry") {
    Harness h(4, false);
    map_data_4k(h);
    h.set_guest_entry(kLa4, 4, h.guest_entry(kLa4, 4) | pte::kPageSize);
    WalkResult r = h.walk(h.request(kLa4, W));
    CHECK(r.status == Status::PageFault);
    CHECK(r.error_code == (pfec::kPresent | pfec::kReserved | pfec::kWrite));
    CHECK(r.refs == 1);
  }
  SECTION("1 GiB page when the mode allows only 2 MiB") {
    Harness h(4, false);
    h.guest_map(kLa4 & ~((1ull << 30) - 1), kDataGpa, 30);
    WalkRequest q = h.request(kLa4);
    q.mode.largest_leaf = 2;
    WalkResult r = h.walk(q);
    CHECK(r.status == Status::PageFault);
    CHECK(r.error_code == (pfec::kPresent | pfec::kReserved));
    CHECK(r.refs == 2);
  }
}

// ---------------------------------------------------------------------------
// EPT violations and misconfigurations (SDM Vol. 3C, 29.3.3, 28.2.1 Table 28-7)
// ---------------------------------------------------------------------------

TEST_CASE("EPT violation on a guest paging-structure access", "[walker][ept]") {
  const unsigned table_level = GENERATE(4u, 3u, 2u, 1u);  // level of the unmapped guest table
  CAPTURE(table_level);
  Harness h(4, true, 4);
  map_data_4k(h);
  const std::uint64_t entry_gpa = h.guest_entry_gpa(kLa4, table_level);
  h.mem.poke(h.ept_entry(entry_gpa, 1), 0);  // unmap that guest table page in EPT

  // A write access: the table read is still a read (EPT A/D disabled).
  WalkResult r = h.walk(h.request(kLa4, W));
  CHECK(r.status == Status::EptViolation);
  CHECK(r.exit_qualification == (qual::kEptRead | qual::kEptGlaValid));
  CHECK((r.exit_qualification & qual::kEptGlaValid) != 0);
  CHECK((r.exit_qualification & qual::kEptGlaTranslation) == 0);
  CHECK(r.fault_gpa == entry_gpa);
  CHECK((r.fault_gpa & ~0xFFFull) == (entry_gpa & ~0xFFFull));
  CHECK(r.refs == (4 - table_level) * 5 + 4);
  CHECK(h.stats.ept_violations.value() == 1);
  CHECK(h.stats.page_faults.value() == 0);
  CHECK(h.mem.writes.empty());
}

TEST_CASE("EPT violation at the EPT root during the first guest access", "[walker][ept]") {
  Harness h(4, true, 4);
  map_data_4k(h);
  h.mem.poke(h.ept_entry(h.cr3, 4), h.mem.peek(h.ept_entry(h.cr3, 4)) & ~ept::kPermMask);
  WalkResult r = h.walk(h.request(kLa4));
  CHECK(r.status == Status::EptViolation);
  CHECK(r.refs == 1);
  CHECK(r.fault_gpa == h.cr3 + mmu::table_index(kLa4, 4) * 8);
  CHECK(r.exit_qualification == (qual::kEptRead | qual::kEptGlaValid));
}

TEST_CASE("EPT violation on the final guest-physical address", "[walker][ept]") {
  const AccessType type = GENERATE(as<AccessType>{}, R, W, X);
  CAPTURE(static_cast<int>(type));
  Harness h(4, true, 4);
  map_data_4k(h);
  h.mem.poke(h.ept_entry(kDataGpa, 1), 0);
  WalkResult r = h.walk(h.request(kLa4, type));
  CHECK(r.status == Status::EptViolation);
  const std::uint64_t access = type == R ? qual::kEptRead : type == W ? qual::kEptWrite : qual::kEptFetch;
  CHECK(r.exit_qualification == (access | qual::kEptGlaValid | qual::kEptGlaTranslation));
  CHECK(r.fault_gpa == kDataGpa + kDataOff);
  CHECK(r.gpa == kDataGpa + kDataOff);
  CHECK(r.refs == 24);
  CHECK(h.stats.ept_violations.value() == 1);
}

TEST_CASE("EPT permissions: qualification reports the access and the AND of R/W/X", "[walker][ept]") {
  Harness h(4, true, 4);

  SECTION("write to a read-only (R+X) page") {
    map_data_4k(h, kPwu, ept::kRead | ept::kExecute);
    WalkResult r = h.walk(h.request(kLa4, W));
    CHECK(r.status == Status::EptViolation);
    CHECK(r.exit_qualification == (qual::kEptWrite | qual::kEptReadable | qual::kEptExecutable |
                                   qual::kEptGlaValid | qual::kEptGlaTranslation));
    CHECK((r.exit_qualification & qual::kEptWritable) == 0);
    CHECK(r.exit_qualification == 0x1AA);
    CHECK(r.fault_gpa == kDataGpa + kDataOff);

    WalkResult rd = h.walk(h.request(kLa4, R));
    CHECK(rd.status == Status::Ok);
    CHECK((rd.perms & perm::kAllEpt) == (perm::kEptRead | perm::kEptExecute));
  }
  SECTION("write allowed by the leaf but not by an upper EPT entry") {
    map_data_4k(h);
    const std::uint64_t pdpte = h.ept_entry(kDataGpa, 3);
    h.mem.poke(pdpte, h.mem.peek(pdpte) & ~ept::kWrite);
    WalkResult r = h.walk(h.request(kLa4, W));
    CHECK(r.status == Status::EptViolation);
    CHECK(r.exit_qualification == 0x1AA);
  }
  SECTION("read of an execute-only page") {
    map_data_4k(h, kPwu, ept::kExecute);
    WalkResult r = h.walk(h.request(kLa4, R));
    CHECK(r.status == Status::EptViolation);
    CHECK(r.exit_qualification == (qual::kEptRead | qual::kEptExecutable | qual::kEptGlaValid |
                                   qual::kEptGlaTranslation));
  }
  SECTION("fetch from a non-executable page") {
    map_data_4k(h, kPwu, ept::kRead | ept::kWrite);
    WalkResult r = h.walk(h.request(kLa4, X));
    CHECK(r.status == Status::EptViolation);
    CHECK(r.exit_qualification == (qual::kEptFetch | qual::kEptReadable | qual::kEptWritable |
                                   qual::kEptGlaValid | qual::kEptGlaTranslation));
  }
  SECTION("guest paging off: the access is still the translation of a linear address") {
    map_data_4k(h, kPwu, ept::kRead);
    WalkRequest q = h.request(kDataGpa + 0x40, W);
    q.paging = false;
    WalkResult r = h.walk(q);
    CHECK(r.status == Status::EptViolation);
    CHECK(r.exit_qualification == (qual::kEptWrite | qual::kEptReadable | qual::kEptGlaValid |
                                   qual::kEptGlaTranslation));
    CHECK(r.fault_gpa == kDataGpa + 0x40);
    CHECK(r.refs == 4);
  }
}

TEST_CASE("EPT misconfigurations", "[walker][ept]") {
  Harness h(4, true, 4);

  SECTION("write without read in the final leaf") {
    const std::uint64_t p = GENERATE(as<std::uint64_t>{}, ept::kWrite, ept::kWrite | ept::kExecute);
    map_data_4k(h, kPwu, p);
    WalkResult r = h.walk(h.request(kLa4, R));
    CHECK(r.status == Status::EptMisconfig);
    CHECK(r.exit_qualification == 0);
    CHECK(r.fault_gpa == kDataGpa + kDataOff);
    CHECK(r.refs == 24);
    CHECK(h.stats.ept_misconfigs.value() == 1);
    CHECK(h.stats.ept_violations.value() == 0);
  }
  SECTION("write without read in an EPT entry mapping a guest table") {
    map_data_4k(h);
    const std::uint64_t e = h.ept_entry(h.cr3, 1);
    h.mem.poke(e, (h.mem.peek(e) & ~ept::kPermMask) | ept::kWrite);
    WalkResult r = h.walk(h.request(kLa4, R));
    CHECK(r.status == Status::EptMisconfig);
    CHECK(r.refs == 4);
    CHECK(r.fault_gpa == h.cr3 + mmu::table_index(kLa4, 4) * 8);
  }
  SECTION("reserved memory type in a leaf") {
    const std::uint64_t mt = GENERATE(2u, 3u, 7u);
    map_data_4k(h);
    h.ept_map(kDataGpa, kDataHpa, 12, kRwx, mt << ept::kMemTypeShift);
    CHECK(h.walk(h.request(kLa4)).status == Status::EptMisconfig);
  }
  SECTION("large-page bit in an EPT PML4 entry") {
    map_data_4k(h);
    const std::uint64_t e = h.ept_entry(kDataGpa, 4);
    h.mem.poke(e, h.mem.peek(e) | ept::kLargePage);
    WalkRequest q = h.request(kDataGpa);
    q.paging = false;
    WalkResult r = h.walk(q);
    CHECK(r.status == Status::EptMisconfig);
    CHECK(r.refs == 1);
  }
}

// ---------------------------------------------------------------------------
// Accessed and dirty flags (SDM Vol. 3A, 4.8)
// ---------------------------------------------------------------------------

TEST_CASE("accessed and dirty flags in guest paging structures", "[walker][ad]") {
  const bool use_ept = GENERATE(false, true);
  const unsigned gshift = GENERATE(12u, 21u, 30u);
  CAPTURE(use_ept, gshift);
  Harness h(4, use_ept, 4);
  const std::uint64_t gsize = 1ull << gshift;
  h.guest_map(kLa4 & ~(gsize - 1), kDataGpa, gshift);
  if (use_ept) h.ept_map(kDataGpa, kDataHpa, 30);
  const unsigned leaf = leaf_level(gshift);
  const unsigned used = 4 - leaf + 1;

  SECTION("read sets A everywhere and D nowhere; a write then sets D in the leaf") {
    WalkResult r = h.walk(h.request(kLa4, R));
    REQUIRE(r.status == Status::Ok);
    for (unsigned l = 4; l >= leaf; --l) {
      INFO("level " << l);
      CHECK((h.guest_entry(kLa4, l) & pte::kAccessed) != 0);
      CHECK((h.guest_entry(kLa4, l) & pte::kDirty) == 0);
    }
    CHECK(h.stats.ad_updates.value() == used);
    CHECK(h.mem.writes.size() == used);
    CHECK((r.perms & perm::kDirty) == 0);

    WalkResult w = h.walk(h.request(kLa4, W));
    REQUIRE(w.status == Status::Ok);
    CHECK((h.guest_entry(kLa4, leaf) & pte::kDirty) != 0);
    for (unsigned l = 4; l > leaf; --l) CHECK((h.guest_entry(kLa4, l) & pte::kDirty) == 0);
    CHECK(h.stats.ad_updates.value() == used + 1);
    CHECK(w.cycles == w.refs * kReadLatency + kWriteLatency);
    CHECK((w.perms & perm::kDirty) != 0);

    WalkResult w2 = h.walk(h.request(kLa4, W));
    CHECK(w2.status == Status::Ok);
    CHECK(h.stats.ad_updates.value() == used + 1);
    CHECK(w2.cycles == w2.refs * kReadLatency);
    CHECK((w2.perms & perm::kDirty) != 0);
  }
  SECTION("a first write sets A and D in the leaf with one write") {
    WalkResult w = h.walk(h.request(kLa4, W));
    REQUIRE(w.status == Status::Ok);
    CHECK((h.guest_entry(kLa4, leaf) & (pte::kAccessed | pte::kDirty)) == (pte::kAccessed | pte::kDirty));
    CHECK(h.stats.ad_updates.value() == used);
    // The writes go to the host-physical addresses of the guest entries.
    std::vector<std::uint64_t> expect;
    for (unsigned l = 4; l >= leaf; --l) expect.push_back(h.host_of(h.guest_entry_gpa(kLa4, l)));
    CHECK(h.mem.writes == expect);
  }
}

TEST_CASE("accessed/dirty updates are EPT writes to the guest tables", "[walker][ad][ept]") {
  Harness h(4, true, 4);
  map_data_4k(h);
  const std::uint64_t pte_gpa = h.guest_entry_gpa(kLa4, 1);
  const std::uint64_t pt_ept_leaf = h.ept_entry(pte_gpa, 1);
  auto write_protect_pt = [&] { h.mem.poke(pt_ept_leaf, h.mem.peek(pt_ept_leaf) & ~ept::kWrite); };

  SECTION("setting A in an entry on a write-protected table page is an EPT violation") {
    write_protect_pt();
    WalkResult r = h.walk(h.request(kLa4, R));
    CHECK(r.status == Status::EptViolation);
    // Table 28-7: a data write; bit 8 clear for an accessed/dirty update.
    CHECK(r.exit_qualification ==
          (qual::kEptWrite | qual::kEptReadable | qual::kEptExecutable | qual::kEptGlaValid));
    CHECK(r.fault_gpa == pte_gpa);
    CHECK((h.guest_entry(kLa4, 1) & pte::kAccessed) == 0);
    CHECK(h.stats.ept_violations.value() == 1);
  }
  SECTION("no write is needed once A is set; setting D is again a write") {
    REQUIRE(h.walk(h.request(kLa4, R)).status == Status::Ok);
    write_protect_pt();
    CHECK(h.walk(h.request(kLa4, R)).status == Status::Ok);
    WalkResult w = h.walk(h.request(kLa4, W));
    CHECK(w.status == Status::EptViolation);
    CHECK(w.fault_gpa == pte_gpa);
    CHECK((w.exit_qualification & qual::kEptGlaTranslation) == 0);
    CHECK((h.guest_entry(kLa4, 1) & pte::kDirty) == 0);
  }
}

// ---------------------------------------------------------------------------
// EPT accessed and dirty flags (SDM Vol. 3C, 29.3.5)
// ---------------------------------------------------------------------------

namespace {
constexpr std::uint64_t kEptAD = ept::kAccessed | ept::kDirty;

/// The guest-physical addresses of the four guest table pages kLa4 uses.
std::vector<std::uint64_t> guest_table_pages(const Harness& h) {
  std::vector<std::uint64_t> t;
  for (unsigned l = 4; l >= 1; --l) t.push_back(h.guest_entry_gpa(kLa4, l) & ~0xFFFull);
  return t;
}
}  // namespace

TEST_CASE("EPT A/D off (EPTP bit 6 clear): walks write no EPT entry", "[walker][ad][ept]") {
  Harness h(4, true, 4);
  map_data_4k(h);
  REQUIRE(h.walk(h.request(kLa4, R)).status == Status::Ok);
  WalkResult w = h.walk(h.request(kLa4, W));
  REQUIRE(w.status == Status::Ok);
  CHECK((w.perms & perm::kEptDirty) != 0);
  CHECK(h.stats.ept_ad_updates.value() == 0);
  CHECK(h.stats.ad_updates.value() == 5);  // A in four guest entries, then D in the guest PTE
  for (std::uint64_t pa : h.mem.writes) CHECK(h.guest_pages.count(pa & ~0xFFFull) == 1);
  for (unsigned l = 4; l >= 1; --l) {
    CHECK((h.mem.peek(h.ept_entry(kDataGpa, l)) & kEptAD) == 0);
    for (std::uint64_t t : guest_table_pages(h)) CHECK((h.mem.peek(h.ept_entry(t, l)) & kEptAD) == 0);
  }
}

TEST_CASE("EPT A/D on: a read walk sets A in every EPT entry used and D in the guest tables' leaves",
          "[walker][ad][ept]") {
  Harness h(4, true, 4);
  map_data_4k(h);
  h.enable_ept_ad();
  const std::vector<std::uint64_t> tables = guest_table_pages(h);

  WalkResult r = h.walk(h.request(kLa4, R));
  REQUIRE(r.status == Status::Ok);
  CHECK(r.refs == 24);
  // Guest table pages (all in one 2 MiB guest-physical region): the first
  // EPT walk sets A in four entries (the PTE also D, in the same write); the
  // next three share the upper entries and write only their PTE. The guest
  // entries' A flags follow, then the data page's EPT walk sets A in the
  // three entries it does not share with the tables (the PML4E it shares).
  std::vector<std::uint64_t> expect = {h.ept_entry(tables[0], 4), h.ept_entry(tables[0], 3),
                                       h.ept_entry(tables[0], 2), h.ept_entry(tables[0], 1),
                                       h.ept_entry(tables[1], 1), h.ept_entry(tables[2], 1),
                                       h.ept_entry(tables[3], 1)};
  for (unsigned l = 4; l >= 1; --l) expect.push_back(h.host_of(h.guest_entry_gpa(kLa4, l)));
  for (unsigned l = 3; l >= 1; --l) expect.push_back(h.ept_entry(kDataGpa, l));
  CHECK(h.mem.writes == expect);
  CHECK(h.stats.ept_ad_updates.value() == 10);
  CHECK(h.stats.ad_updates.value() == 14);
  CHECK(r.cycles == 24 * kReadLatency + 14 * kWriteLatency);

  for (std::uint64_t t : tables) {
    INFO("guest table page " << std::hex << t);
    for (unsigned l = 4; l >= 2; --l) CHECK((h.mem.peek(h.ept_entry(t, l)) & kEptAD) == ept::kAccessed);
    // Guest paging-structure accesses are EPT writes: the leaf is dirty.
    CHECK((h.mem.peek(h.ept_entry(t, 1)) & kEptAD) == kEptAD);
  }
  for (unsigned l = 4; l >= 1; --l) CHECK((h.mem.peek(h.ept_entry(kDataGpa, l)) & kEptAD) == ept::kAccessed);
  // The data page's EPT leaf is clean: the cached translation must not
  // serve a write.
  CHECK((r.perms & perm::kEptDirty) == 0);
  CHECK((r.perms & perm::kAllEpt) == perm::kAllEpt);

  SECTION("a write then sets D in the data page's EPT leaf (and the guest PTE's D) and nothing else") {
    h.mem.writes.clear();
    WalkResult w = h.walk(h.request(kLa4, W));
    REQUIRE(w.status == Status::Ok);
    CHECK(h.mem.writes == std::vector<std::uint64_t>{h.host_of(h.guest_entry_gpa(kLa4, 1)),
                                                     h.ept_entry(kDataGpa, 1)});
    CHECK((h.mem.peek(h.ept_entry(kDataGpa, 1)) & kEptAD) == kEptAD);
    for (unsigned l = 4; l >= 2; --l) CHECK((h.mem.peek(h.ept_entry(kDataGpa, l)) & kEptAD) == ept::kAccessed);
    CHECK((w.perms & perm::kEptDirty) != 0);
    CHECK(h.stats.ept_ad_updates.value() == 11);
    CHECK(w.cycles == 24 * kReadLatency + 2 * kWriteLatency);

    h.mem.writes.clear();
    WalkResult w2 = h.walk(h.request(kLa4, W));
    CHECK(w2.status == Status::Ok);
    CHECK(h.mem.writes.empty());
    CHECK(w2.cycles == 24 * kReadLatency);
    CHECK((w2.perms & perm::kEptDirty) != 0);
  }
  SECTION("a second read writes nothing") {
    h.mem.writes.clear();
    WalkResult again = h.walk(h.request(kLa4, R));
    CHECK(again.status == Status::Ok);
    CHECK(h.mem.writes.empty());
    CHECK(h.stats.ept_ad_updates.value() == 10);
  }
}

TEST_CASE("EPT A/D on: a first write sets A and D in the data page's EPT leaf at its level", "[walker][ad][ept]") {
  const unsigned eshift = GENERATE(12u, 21u, 30u);
  CAPTURE(eshift);
  Harness h(4, true, 4);
  h.guest_map(kLa4, kDataGpa, 12);
  h.ept_map(kDataGpa, kDataHpa, eshift);
  h.enable_ept_ad();
  WalkResult w = h.walk(h.request(kLa4, W));
  REQUIRE(w.status == Status::Ok);
  const unsigned leaf = leaf_level(eshift);
  for (unsigned l = 4; l > leaf; --l) CHECK((h.mem.peek(h.ept_entry(kDataGpa, l)) & kEptAD) == ept::kAccessed);
  CHECK((h.mem.peek(h.ept_entry(kDataGpa, leaf)) & kEptAD) == kEptAD);
  // The final EPT walk's writes are the last ones: one per entry it did not
  // share with the tables' walks (they share the PML4E).
  const std::size_t n = h.mem.writes.size();
  REQUIRE(n >= 4 - leaf);
  std::vector<std::uint64_t> tail(h.mem.writes.end() - (4 - leaf), h.mem.writes.end());
  std::vector<std::uint64_t> expect;
  for (unsigned l = 3; l >= leaf; --l) expect.push_back(h.ept_entry(kDataGpa, l));
  CHECK(tail == expect);
  CHECK((w.perms & perm::kEptDirty) != 0);
}

TEST_CASE("EPT A/D on: an EPT-only walk (guest paging off) sets A, and D on a write", "[walker][ad][ept]") {
  Harness h(4, true, 4);
  h.ept_map(kDataGpa, kDataHpa, 12);
  h.enable_ept_ad();
  WalkRequest q = h.request(kDataGpa + 8, R);
  q.paging = false;
  WalkResult r = h.walk(q);
  REQUIRE(r.status == Status::Ok);
  CHECK(h.stats.ept_ad_updates.value() == 4);
  CHECK((h.mem.peek(h.ept_entry(kDataGpa, 1)) & kEptAD) == ept::kAccessed);
  CHECK((r.perms & perm::kEptDirty) == 0);
  q.type = W;
  WalkResult w = h.walk(q);
  REQUIRE(w.status == Status::Ok);
  CHECK(h.stats.ept_ad_updates.value() == 5);
  CHECK((h.mem.peek(h.ept_entry(kDataGpa, 1)) & kEptAD) == kEptAD);
  CHECK((w.perms & perm::kEptDirty) != 0);
}

TEST_CASE("EPT A/D on: guest paging-structure reads need EPT write permission", "[walker][ad][ept]") {
  Harness h(4, true, 4);
  map_data_4k(h);
  // A first walk with A/D off sets every guest A flag, so later reads need
  // no guest A/D write at all.
  REQUIRE(h.walk(h.request(kLa4, R)).status == Status::Ok);
  const std::uint64_t pte_gpa = h.guest_entry_gpa(kLa4, 1);
  const std::uint64_t pt_ept_leaf = h.ept_entry(pte_gpa, 1);
  h.mem.poke(pt_ept_leaf, h.mem.peek(pt_ept_leaf) & ~ept::kWrite);
  REQUIRE(h.walk(h.request(kLa4, R)).status == Status::Ok);  // A/D off: a read of the table is a read

  h.enable_ept_ad();
  WalkResult r = h.walk(h.request(kLa4, R));
  CHECK(r.status == Status::EptViolation);
  CHECK(r.fault_gpa == pte_gpa);
  // Table 28-7, note to bit 1: such an access sets both the read and the
  // write bit; bit 8 clear (an access to a guest paging structure).
  CHECK(r.exit_qualification == (qual::kEptRead | qual::kEptWrite | qual::kEptReadable | qual::kEptExecutable |
                                 qual::kEptGlaValid));
  // The PT page's EPT leaf is not made dirty by the failed access.
  CHECK((h.mem.peek(pt_ept_leaf) & ept::kDirty) == 0);
}
