// The one walk loop (mmu/walk_loop.h) and the x86 encodings of its neutral
// fault (mmu/x86_fault.h): the #PF error code (SDM Vol. 3A, 4.7) and the
// EPT-violation exit qualification (SDM Vol. 3C, 28.2.1, Table 28-7); the
// EPT and VT-d second-level descriptors walking one table. The VT-d fault
// reasons of the same faults are tested beside the IOMMU
// (tests/iommu/test_scalable_mode.cc, "one walker").
#include "mmu/walk_loop.h"

#include <catch2/catch.hpp>

#include "mmu/walk_harness.h"
#include "mmu/x86_fault.h"

using mmu::WalkFault;
using Kind = WalkFault::Kind;

TEST_CASE("a stage-1 fault's #PF error code", "[mmu][walker][fault]") {
  const AccessType type = GENERATE(AccessType::Read, AccessType::Write, AccessType::Execute);
  const Kind kind = GENERATE(Kind::NotPresent, Kind::Permission, Kind::Reserved);
  const bool user = GENERATE(false, true);
  const bool nxe = GENERATE(false, true);
  const bool smep = GENERATE(false, true);
  WalkFault f;
  f.kind = kind;
  f.access = type;
  f.level = 2;
  // Figure 4-12: P is set unless no entry was present; W/R, U/S; RSVD for a
  // reserved bit; I/D for a fetch with SMEP or NXE on.
  std::uint32_t expect = kind == Kind::NotPresent ? 0 : pfec::kPresent;
  if (kind == Kind::Reserved) expect |= pfec::kReserved;
  if (type == AccessType::Write) expect |= pfec::kWrite;
  if (user) expect |= pfec::kUser;
  if (type == AccessType::Execute && (nxe || smep)) expect |= pfec::kFetch;
  CHECK(mmu::pf_error_code(f, user, nxe, smep) == expect);
}

TEST_CASE("a stage-2 fault's EPT-violation exit qualification", "[mmu][walker][fault]") {
  const AccessType type = GENERATE(AccessType::Read, AccessType::Write, AccessType::Execute);
  const unsigned perms = GENERATE(range(0u, 8u));
  const bool final_translation = GENERATE(false, true);
  const bool paging = GENERATE(false, true);
  const bool eptp_ad = GENERATE(false, true);
  WalkFault f;
  f.kind = perms ? Kind::Permission : Kind::NotPresent;
  f.stage = WalkFault::Stage::Two;
  f.final = final_translation;
  f.access = type;
  f.perms = static_cast<std::uint8_t>(perms | mmu::kLeafDirty);  // bit 3 is not a right: not reported
  std::uint64_t expect = type == AccessType::Read    ? qual::kEptRead
                         : type == AccessType::Write ? qual::kEptWrite
                                                     : qual::kEptFetch;
  // With EPT A/D on, a guest paging-structure access is a write (note to bit 1).
  if (paging && !final_translation && eptp_ad) expect = qual::kEptRead | qual::kEptWrite;
  if (perms & 1) expect |= qual::kEptReadable;
  if (perms & 2) expect |= qual::kEptWritable;
  if (perms & 4) expect |= qual::kEptExecutable;
  expect |= qual::kEptGlaValid;
  if (final_translation || !paging) expect |= qual::kEptGlaTranslation;
  CHECK(mmu::ept_qualification(f, paging, eptp_ad) == expect);
}

namespace {
// Walks h's EPT tables with one descriptor and no stage 2, no caches.
struct Out {
  WalkFault f;
  mmu::WalkOut o;
  std::size_t reads = 0;
  unsigned refs = 0;
};
struct Count {
  unsigned refs = 0, ad = 0;
  void ref(unsigned) { ++refs; }
  void ad_update() { ++ad; }
  void psc_hit() {}
};
template <class Fmt>
Out walk_ept_tables(Harness& h, const Fmt& fmt, std::uint64_t gpa, AccessType type) {
  Out r;
  mmu::WalkAccess a;
  a.type = type;
  mmu::IdentityStage2 none;
  Count c;
  std::uint32_t cycles = 0;
  const std::size_t r0 = h.mem.reads.size();
  r.f = mmu::walk(h.mem, fmt, mmu::PscSet{}, mmu::TlbTag{}, h.eptp & ept::kAddrMask, gpa, a, none, c, r.o, cycles);
  r.reads = h.mem.reads.size() - r0;
  r.refs = c.refs;
  return r;
}
}  // namespace

TEST_CASE("EPT and VT-d second-level descriptors over one table: same walk, their own rules",
          "[mmu][walker][descriptor]") {
  const unsigned shift = GENERATE(12u, 21u, 30u);
  const unsigned leaf = (shift - 12) / 9 + 1;
  Harness h(4, true);
  const mmu::EptFormat ept_fmt{mmu::PagingMode{4, 3}, false};
  const mmu::VtdSlFormat sl_fmt{mmu::PagingMode{4, 3}, false};
  const std::uint64_t gpa = kDataGpa + 0x234;

  SECTION("a read-write page: the same translation from the same references") {
    h.ept_map(kDataGpa, kDataHpa, shift, ept::kRead | ept::kWrite);
    auto e = walk_ept_tables(h, ept_fmt, gpa, AccessType::Write);
    auto s = walk_ept_tables(h, sl_fmt, gpa, AccessType::Write);
    REQUIRE((!e.f && !s.f));
    CHECK((e.o.hpa == kDataHpa + 0x234 && s.o.hpa == e.o.hpa && s.o.shift == shift && e.o.shift == shift));
    CHECK((e.refs == 5 - leaf && s.refs == e.refs && e.reads == s.reads));
    CHECK((e.o.rights & 7) == (ept::kRead | ept::kWrite));
    CHECK((s.o.rights & 7) == (ept::kRead | ept::kWrite));
  }
  SECTION("write without read: an EPT misconfiguration; a write VT-d permits") {
    h.ept_map(kDataGpa, kDataHpa, shift, ept::kWrite);
    auto e = walk_ept_tables(h, ept_fmt, gpa, AccessType::Write);
    auto s = walk_ept_tables(h, sl_fmt, gpa, AccessType::Write);
    CHECK((e.f.kind == Kind::Reserved && e.f.level == leaf));
    CHECK(!s.f);
  }
  SECTION("execute only: EPT reads the whole walk and denies a read at the end; VT-d sees no R/W at the leaf") {
    h.ept_map(kDataGpa, kDataHpa, shift, ept::kExecute);
    auto e = walk_ept_tables(h, ept_fmt, gpa, AccessType::Read);
    auto s = walk_ept_tables(h, sl_fmt, gpa, AccessType::Read);
    // Bits 2:0 of the rights are R/W/X; above them the user-execute right,
    // which without MBEC copies X (mmu::EptFormat::kUserExec).
    CHECK((e.f.kind == Kind::Permission && e.f.level == leaf &&
           e.f.perms == (ept::kExecute | mmu::EptFormat::kUserExec)));
    CHECK((s.f.kind == Kind::NotPresent && s.f.level == leaf));
    CHECK(e.reads == s.reads);
  }
}
