// Page protections in both dimensions, in the spirit of kvm-unit-tests'
// x86/access.c, smap.c and the VMX EPT access tests: every combination of
// the P, R/W, U/S and XD bits at the leaf, the PDE and the PML4E, with every
// combination of CR0.WP, IA32_EFER.NXE, CR4.SMEP, CR4.SMAP, RFLAGS.AC, CPL
// and access type, checked through the core's MMU (TLBs and walker) against
// a reference written here from the SDM's rules (Vol. 3A, 4.6 and 4.7), with
// EPT off and on. Each translation is made twice: first under a permissive
// context, which fills the TLBs, then under the tested one without any
// invalidation, so a cached translation must not let through what a walk
// would refuse. Then protection keys (4.6.2), EPT execute-only pages and
// mode-based execute control (Vol. 3C, 29.3.3.2; Table 28-7).
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>

#include "mmu/mmu.h"
#include "mmu/walk_harness.h"
#include "mmu/x86_fault.h"

namespace crb = mmu::crbits;

namespace {

constexpr auto R = AccessType::Read, W = AccessType::Write, X = AccessType::Execute;

mmu::MmuParams mmu_params() {
  return mmu::MmuParams{cfg::defaults<mmu::DtlbParams>(),   cfg::defaults<mmu::Dtlb2mParams>(),
                        cfg::defaults<mmu::Dtlb1gParams>(), cfg::defaults<mmu::ItlbParams>(),
                        cfg::defaults<mmu::Itlb2mParams>(), cfg::defaults<mmu::StlbParams>(),
                        cfg::defaults<mmu::Stlb1gParams>(), cfg::defaults<mmu::PscParamsAll>(),
                        cfg::defaults<mmu::NestedTlbParams>()};
}

/// The context of one access.
struct Env {
  AccessType type = R;
  bool user = false, wp = false, nxe = false, smep = false, smap = false, ac = false;
  bool pke = false;
  std::uint32_t pkru = 0;
  std::string str() const {
    return std::string(type == R ? "read" : type == W ? "write" : "fetch") + (user ? " user" : " supervisor") +
           (wp ? " WP" : "") + (nxe ? " NXE" : "") + (smep ? " SMEP" : "") + (smap ? " SMAP" : "") +
           (ac ? " AC" : "");
  }
};

/// An MMU over a harness's memory, with the context of an Env.
struct Machine {
  explicit Machine(Harness& h_) : h(h_) {}
  void set(const Env& e, bool mbec = false) {
    const std::uint64_t cr0 = crb::kCr0Pe | crb::kCr0Pg | (e.wp ? crb::kCr0Wp : 0);
    const std::uint64_t cr4 = crb::kCr4Pae | (e.smep ? crb::kCr4Smep : 0) | (e.smap ? crb::kCr4Smap : 0) |
                              (e.pke ? crb::kCr4Pke : 0);
    cr3 = h.cr3;
    efer = crb::kEferLme | (e.nxe ? crb::kEferNxe : 0);
    eptp = h.eptp;
    mmu.wire({&cr3, &efer, &eptp});
    mmu.set_context(cr0, cr4, e.user, h.use_ept, 1, h.use_ept, {e.ac, e.pkru, mbec, false});
  }
  /// One translation under e; false: faulted (fault() says how).
  bool access(const Env& e, std::uint64_t va, std::uint64_t& pa, bool mbec = false) {
    set(e, mbec);
    std::uint64_t now = 0;
    return mmu.translate(va, e.type, pa, now);
  }
  /// Walks made by this MMU (its own walker statistics).
  std::uint64_t walks() const { return dynamic_cast<const stats::Counter&>(*root.find("walker.walks")).value(); }
  Harness& h;
  std::uint64_t cr3 = 0, efer = 0, eptp = 0;  // the registers the MMU reads (wired)
  stats::Group root;
  mmu::Mmu mmu{mmu_params(), h.mem, &root};
};

/// The page-table bits of one combination.
struct Bits {
  bool p, w, u, nx;
  std::uint64_t entry(std::uint64_t addr) const {
    return addr | (p ? pte::kPresent : 0) | (w ? pte::kWritable : 0) | (u ? pte::kUser : 0) |
           (nx ? pte::kNoExecute : 0);
  }
};
Bits bits_of(unsigned v) { return Bits{(v & 1) != 0, (v & 2) != 0, (v & 4) != 0, (v & 8) != 0}; }

/// What the SDM says of one access through PML4E, PDPTE (P|W|U), PDE and
/// PTE (Vol. 3A, 4.5, 4.6.1, 4.7), written independently of the walker: the
/// walk stops at the first entry that is not present (#PF, P = 0) or has a
/// reserved bit (XD with NXE = 0: #PF with P and RSVD); then the rights.
struct Expect {
  bool ok = false;
  std::uint32_t error_code = 0;
};
Expect reference(const Bits (&levels)[4], const Env& e) {
  const std::uint32_t access_bits = (e.type == W ? 2u : 0u) | (e.user ? 4u : 0u) |
                                    (e.type == X && (e.nxe || e.smep) ? 16u : 0u);
  for (const Bits& b : levels) {  // PML4E first
    if (!b.p) return {false, access_bits};
    if (b.nx && !e.nxe) return {false, access_bits | 1u | 8u};
  }
  bool user_page = true, writable = true, executable = true;
  for (const Bits& b : levels) {
    user_page = user_page && b.u;
    writable = writable && b.w;
    if (e.nxe && b.nx) executable = false;
  }
  bool ok;
  if (e.user) {
    ok = user_page && (e.type != W || writable) && (e.type != X || executable);
  } else if (e.type == R) {
    ok = !(user_page && e.smap && !e.ac);
  } else if (e.type == W) {
    ok = !(user_page && e.smap && !e.ac) && (writable || !e.wp);
  } else {
    ok = executable && !(user_page && e.smep);
  }
  return {ok, ok ? 0u : access_bits | 1u};
}

void run_matrix(bool use_ept) {
  Harness h(4, use_ept, 4);
  map_data_4k(h, kPwu);
  Machine m(h);
  const std::uint64_t want_pa = (use_ept ? kDataHpa : kDataGpa) + kDataOff;
  const std::uint64_t pml4e_addr = h.guest_entry(kLa4, 4) & pte::kAddrMask;
  const std::uint64_t pde_addr = h.guest_entry(kLa4, 2) & pte::kAddrMask;
  std::uint64_t checked = 0, hits = 0, faults = 0;
  for (unsigned pml4 = 0; pml4 < 16; ++pml4) {
    if (!(pml4 & 1)) continue;  // PML4E present (not-present is covered at the PDE and PTE)
    for (unsigned pde = 0; pde < 16; ++pde) {
      for (unsigned pt = 0; pt < 16; ++pt) {
        const Bits levels[4] = {bits_of(pml4), Bits{true, true, true, false}, bits_of(pde), bits_of(pt)};
        for (unsigned env = 0; env < 3 * 64; ++env) {
          Env e;
          e.type = static_cast<AccessType>(env % 3);
          const unsigned f = env / 3;
          e.user = f & 1, e.wp = f & 2, e.nxe = f & 4, e.smep = f & 8, e.smap = f & 16, e.ac = f & 32;
          if (e.user && e.ac) continue;  // AC matters at CPL < 3 only
          // Fresh tables (A/D flags from earlier walks cleared) and no
          // cached translation of them.
          h.set_guest_entry(kLa4, 4, levels[0].entry(pml4e_addr));
          h.set_guest_entry(kLa4, 2, levels[2].entry(pde_addr));
          h.set_guest_entry(kLa4, 1, levels[3].entry(kDataGpa));
          m.set(e);
          m.mmu.cr4_paging_change();
          // Warm the TLBs under a permissive context with the same access
          // type (supervisor, WP, SMEP and SMAP off).
          Env warm = e;
          warm.user = warm.wp = warm.smep = warm.smap = warm.ac = false;
          std::uint64_t pa = 0;
          const bool warmed = m.access(warm, kLa4, pa);
          const std::uint64_t walks = m.walks();
          const Expect want = reference(levels, e);
          const bool got = m.access(e, kLa4, pa);
          INFO("PML4E " << pml4 << " PDE " << pde << " PTE " << pt << " (bits P=1 W=2 U=4 XD=8): " << e.str());
          REQUIRE(got == want.ok);
          if (got) {
            REQUIRE(pa == want_pa);
            // A read the warm-up cached needs no walk: the hit path decided.
            if (warmed && e.type == R) {
              REQUIRE(m.walks() == walks);
              ++hits;
            }
          } else {
            REQUIRE(m.mmu.fault().status == Status::PageFault);
            REQUIRE(m.mmu.fault().error_code == want.error_code);
            ++faults;
          }
          ++checked;
        }
      }
    }
  }
  CHECK(checked == 8u * 16 * 16 * (192 - 48));
  CHECK(hits > 1000);
  CHECK(faults > checked / 4);
}

}  // namespace

TEST_CASE("access matrix: P/W/U/XD at three levels x WP/NXE/SMEP/SMAP/AC/CPL/access, EPT off", "[protection]") {
  run_matrix(false);
}

TEST_CASE("access matrix: the same through a permissive EPT (guest #PF, never an EPT exit)", "[protection][ept]") {
  run_matrix(true);
}

TEST_CASE("SMAP: RFLAGS.AC lifts the check for supervisor data accesses only", "[protection]") {
  Harness h(4, false);
  map_data_4k(h, kPwu);
  Machine m(h);
  std::uint64_t pa = 0;
  Env e;
  e.smap = e.smep = e.wp = e.nxe = true;
  e.type = R;
  CHECK_FALSE(m.access(e, kLa4, pa));
  CHECK(m.mmu.fault().error_code == pfec::kPresent);
  e.ac = true;  // STAC
  CHECK(m.access(e, kLa4, pa));
  e.type = W;
  CHECK(m.access(e, kLa4, pa));
  e.type = X;  // SMEP does not care about AC
  CHECK_FALSE(m.access(e, kLa4, pa));
  CHECK(m.mmu.fault().error_code == (pfec::kPresent | pfec::kFetch));
  e.ac = false;  // CLAC: the translation cached above is refused on its hit
  e.type = R;
  const std::uint64_t walks = m.walks();
  CHECK_FALSE(m.access(e, kLa4, pa));
  CHECK(m.walks() == walks + 1);
}

TEST_CASE("protection keys: PKRU AD/WD against user-mode pages, key from bits 62:59", "[protection][pke]") {
  Harness h(4, false);
  const unsigned key = GENERATE(0u, 5u, 15u);
  const bool user_page = GENERATE(true, false);
  map_data_4k(h, kPwu & ~(user_page ? 0 : pte::kUser));
  h.set_guest_entry(kLa4, 1, h.guest_entry(kLa4, 1) | (std::uint64_t{key} << 59));
  Machine m(h);
  for (unsigned env = 0; env < 3 * 2 * 2 * 4; ++env) {
    Env e;
    e.type = static_cast<AccessType>(env % 3);
    e.user = (env / 3) & 1;
    e.wp = (env / 6) & 1;
    const unsigned kbits = env / 12;  // AD = bit 0, WD = bit 1
    e.pke = true;
    e.nxe = true;
    // Other keys deny everything: only the page's own key may matter.
    e.pkru = 0xFFFFFFFFu & ~(3u << (2 * key)) | (kbits << (2 * key));
    INFO("key " << key << (user_page ? " user page " : " supervisor page ") << e.str() << " AD/WD " << kbits);
    // Reference (Vol. 3A, 4.6.2): only data accesses to user-mode pages.
    const bool page_ok = user_page || !e.user;
    const bool key_denies = user_page && e.type != X &&
                            ((kbits & 1) || (e.type == W && (kbits & 2) && (e.user || e.wp)));
    std::uint64_t pa = 0;
    m.mmu.cr4_paging_change();
    Env warm = e;
    warm.pkru = 0;
    m.access(warm, kLa4, pa);  // cache the translation with the key allowed
    const bool got = m.access(e, kLa4, pa);
    REQUIRE(got == (page_ok && !key_denies));
    if (!got) {
      const std::uint32_t ec = m.mmu.fault().error_code;
      CHECK((ec & pfec::kPresent) != 0);
      CHECK(((ec & pfec::kPk) != 0) == key_denies);
      CHECK(((ec & pfec::kWrite) != 0) == (e.type == W));
      CHECK(((ec & pfec::kUser) != 0) == e.user);
    }
  }
  // Without CR4.PKE, bits 62:59 are ignored.
  Env off;
  off.pkru = ~0u;
  off.user = user_page;
  std::uint64_t pa = 0;
  CHECK(m.access(off, kLa4, pa));
}

TEST_CASE("EPT leaf rights x MBEC x guest U/S x access: violation and qualification", "[protection][ept][mbec]") {
  // EPT leaf bits: R (0), W (1), X or supervisor-execute (2), user-execute (10).
  for (unsigned mbec = 0; mbec < 2; ++mbec) {
    for (unsigned v = 0; v < 16; ++v) {
      const bool r = v & 1, w = v & 2, xs = v & 4, xu = v & 8;
      if (w && !r) continue;  // a misconfiguration, tested below
      for (unsigned user_page = 0; user_page < 2; ++user_page) {
        for (unsigned t = 0; t < 3; ++t) {
          Harness h(4, true, 4);
          map_data_4k(h, user_page ? kPwu : (pte::kPresent | pte::kWritable), 0);
          const std::uint64_t leaf = h.ept_entry(kDataGpa, 1);
          h.mem.poke(leaf, kDataHpa | ept::kMemTypeWb | (r ? ept::kRead : 0) | (w ? ept::kWrite : 0) |
                               (xs ? ept::kExecute : 0) | (xu ? ept::kUserExecute : 0));
          for (unsigned level = 2; level <= 4; ++level) {  // upper entries grant everything
            const std::uint64_t a = h.ept_entry(kDataGpa, level);
            h.mem.poke(a, h.mem.peek(a) | ept::kUserExecute);
          }
          Machine m(h);
          Env e;
          e.type = static_cast<AccessType>(t);
          e.user = user_page;  // the guest's own rights allow the access
          e.nxe = true;
          INFO("MBEC " << mbec << " EPT R/W/XS/XU " << r << w << xs << xu << (user_page ? " user page " : " sup page ")
                       << e.str());
          const bool present = r || w || xs || (mbec && xu);
          const bool exec_right = mbec ? (user_page ? xu : xs) : xs;
          const bool ok = present && (e.type == R ? r : e.type == W ? w : exec_right);
          std::uint64_t pa = 0;
          const bool got = m.access(e, kLa4, pa, mbec);
          REQUIRE(got == ok);
          if (ok) {
            CHECK(pa == kDataHpa + kDataOff);
            // The cached translation serves a second access of the same kind
            // and refuses the kinds EPT forbids.
            const std::uint64_t walks = m.walks();
            REQUIRE(m.access(e, kLa4, pa, mbec));
            CHECK(m.walks() == walks);
            continue;
          }
          REQUIRE(m.mmu.fault().status == Status::EptViolation);
          const std::uint64_t want = (e.type == R ? qual::kEptRead : e.type == W ? qual::kEptWrite : qual::kEptFetch) |
                                     (r ? qual::kEptReadable : 0) | (w ? qual::kEptWritable : 0) |
                                     (xs ? qual::kEptExecutable : 0) | (mbec && xu ? qual::kEptUserExecutable : 0) |
                                     qual::kEptGlaValid | qual::kEptGlaTranslation;
          CHECK(m.mmu.fault().exit_qualification == want);
          CHECK(m.mmu.fault().fault_gpa == kDataGpa + kDataOff);
        }
      }
    }
  }
}

TEST_CASE("EPT execute-only page: fetch allowed, read is an EPT violation even after the fetch cached it",
          "[protection][ept]") {
  Harness h(4, true, 4);
  map_data_4k(h, pte::kPresent, ept::kExecute);
  Machine m(h);
  Env e;
  e.type = X;
  e.nxe = true;
  std::uint64_t pa = 0;
  REQUIRE(m.access(e, kLa4, pa));
  e.type = R;
  REQUIRE_FALSE(m.access(e, kLa4, pa));
  CHECK(m.mmu.fault().status == Status::EptViolation);
  CHECK(m.mmu.fault().exit_qualification ==
        (qual::kEptRead | qual::kEptExecutable | qual::kEptGlaValid | qual::kEptGlaTranslation));
  e.type = W;
  REQUIRE_FALSE(m.access(e, kLa4, pa));
  CHECK(m.mmu.fault().exit_qualification ==
        (qual::kEptWrite | qual::kEptExecutable | qual::kEptGlaValid | qual::kEptGlaTranslation));
}

TEST_CASE("MBEC: user-execute in a non-leaf EPT entry limits the region, and bit 10 alone is present",
          "[protection][ept][mbec]") {
  Harness h(4, true, 4);
  map_data_4k(h, kPwu, ept::kRead | ept::kExecute);
  const std::uint64_t leaf = h.ept_entry(kDataGpa, 1);
  h.mem.poke(leaf, h.mem.peek(leaf) | ept::kUserExecute);
  Machine m(h);
  Env e;
  e.type = X;
  e.user = true;
  e.nxe = true;
  std::uint64_t pa = 0;
  // The harness's non-leaf EPT entries are R/W/X without bit 10.
  REQUIRE_FALSE(m.access(e, kLa4, pa, true));
  CHECK(m.mmu.fault().exit_qualification ==
        (qual::kEptFetch | qual::kEptReadable | qual::kEptExecutable | qual::kEptGlaValid | qual::kEptGlaTranslation));
  for (unsigned level = 2; level <= 4; ++level) {
    const std::uint64_t a = h.ept_entry(kDataGpa, level);
    h.mem.poke(a, h.mem.peek(a) | ept::kUserExecute);
  }
  m.mmu.invept(2, 0);  // (no EPT PSC or nested-TLB entry may keep the old rights)
  CHECK(m.access(e, kLa4, pa, true));
  // Without MBEC bit 10 is ignored and bit 2 is the execute right.
  m.mmu.invept(2, 0);
  CHECK(m.access(e, kLa4, pa, false));
  // A leaf with only bit 10 set is present (not a misconfiguration) with MBEC.
  h.mem.poke(leaf, kDataHpa | ept::kMemTypeWb | ept::kUserExecute);
  m.mmu.invept(2, 0);
  CHECK(m.access(e, kLa4, pa, true));
  e.type = R;
  REQUIRE_FALSE(m.access(e, kLa4, pa, true));
  CHECK(m.mmu.fault().status == Status::EptViolation);
  CHECK(m.mmu.fault().exit_qualification ==
        (qual::kEptRead | qual::kEptUserExecutable | qual::kEptGlaValid | qual::kEptGlaTranslation));
}
