// The one page-walk loop, shared by the CPU's MMU (IA-32e paging over EPT)
// and the IOMMU (VT-d first level over second level), after Spike's
// riscv/mmu.cc: one loop over the levels of a table, driven by
//   - a paging-format descriptor (Ia32eFormat, EptFormat, VtdSlFormat):
//     levels and index bits, how an entry is decoded (present, rights,
//     reserved bits, large pages), the rights check at the end of a walk and
//     whether accessed/dirty flags are set;
//   - a stage-2 callable: how each table address and the final address of
//     this stage are translated (EPT for the CPU's 2D walk, the second-level
//     walk for VT-d nested translation, IdentityStage2 for none);
//   - a counter sink: where references, accessed/dirty writes and
//     paging-structure-cache hits are counted (each user's own statistics).
// It returns a neutral WalkFault (stage, level, access, kind, address) that
// each user encodes: the core as a #PF error code or an EPT-violation exit
// qualification (mmu/x86_fault.h), the IOMMU as a VT-d fault reason.
//
// Everything is a template: no virtual call but the TableMemory reference
// itself, which was there before.
#pragma once

#include <array>
#include <cstdint>

#include "mmu/paging.h"
#include "mmu/psc.h"
#include "mmu/tlb.h"

namespace vmx::mmu {

/// Physical memory as a walker reaches it: every call is one timed reference.
class TableMemory {
 public:
  virtual ~TableMemory() = default;
  virtual std::uint64_t read_entry(std::uint64_t pa, std::uint32_t& cycles) = 0;
  virtual void write_entry(std::uint64_t pa, std::uint64_t value, std::uint32_t& cycles) = 0;
  /// Page-modification logging (SDM Vol. 3C, 29.3.6), asked only by a
  /// format that logs (Fmt::kLogsDirty) with logging on: whether the PML
  /// index is in range (0-511), and the logging of a guest-physical page
  /// whose EPT dirty flag a walk set (the entry at the index is written,
  /// the index decremented). Other memories never log.
  virtual bool pml_room() { return true; }
  virtual void pml_log(std::uint64_t, std::uint32_t&) {}
};

/// The bit a walk's rights carry above the format's rights (bits 2:0): the
/// leaf's dirty flag is set, or the format sets no accessed/dirty flags, so
/// that a write needs no flag update. For IA-32e this is TlbPerm's kDirty.
constexpr std::uint8_t kLeafDirty = 8;

/// WalkFault::missing: the access was refused by the protection key of a
/// user-mode page (PKRU, CR4.PKE; SDM Vol. 3A, 4.6.2), alone or besides
/// another right.
constexpr std::uint8_t kProtectionKey = 0x10;

/// What went wrong in a walk, in no architecture's encoding.
struct WalkFault {
  enum class Kind : std::uint8_t {
    None,
    NotPresent,  // an entry not present (IA-32e P = 0; EPT R = W = X = 0; VT-d SL R = W = 0)
    Permission,  // present entries that do not grant the access
    Reserved,    // a reserved bit or encoding (EPT: a misconfiguration)
    LogFull,     // EPT: an accessed/dirty flag to set with the PML index out of range (29.3.6)
  };
  enum class Stage : std::uint8_t { One, Two };
  Kind kind = Kind::None;
  Stage stage = Stage::One;
  /// Stage 2 only: translating stage 1's output address (else a stage-1
  /// table address, or the write of a stage-1 accessed/dirty flag).
  bool final = false;
  bool ad_update = false;     // stage 2: the write of a stage-1 accessed/dirty flag
  std::uint8_t level = 0;     // level of the faulting entry in its own stage (0: none read)
  std::uint8_t table_level = 0;  // stage 2 within a stage-1 walk: the stage-1 level being reached
  AccessType access = AccessType::Read;  // the access as the faulting stage saw it
  std::uint8_t missing = 0;   // stage-1 permission: the right lacking (kUser, kWritable or kExecutable)
  std::uint8_t perms = 0;     // rights accumulated over the faulting stage's entries (bits 2:0)
  std::uint64_t address = 0;  // input address of the faulting stage
  explicit operator bool() const { return kind != Kind::None; }
};

/// The access a walk checks.
struct WalkAccess {
  AccessType type = AccessType::Read;  // Read, Write or Execute (DMA: Read or Write)
  bool execute = false;  // an instruction fetch (CPU: type == Execute; DMA: execute-requested)
  bool user = false;     // CPL 3 / an unprivileged request
  bool wp = true;        // supervisor writes honour R/W (CR0.WP; VT-d PASID entry WPE)
  bool smep = false;
  bool smap = false;     // CR4.SMAP and not overridden (RFLAGS.AC = 1 for an explicit access)
  bool pke = false;      // CR4.PKE: protection keys of user-mode pages checked against pkru
  std::uint32_t pkru = 0;
};

/// One dimension's paging-structure caches: enabled ones only, by level of
/// the cached entry (2 = PDE to 5 = PML5E), looked up in parallel at the
/// largest latency of them.
struct PscSet {
  std::array<Psc*, 6> level{};
  std::uint32_t latency = 0;
  bool any = false;
  void add(Psc* c, unsigned l) {
    if (!c || !c->enabled()) return;
    level[l] = c;
    any = true;
    if (c->latency() > latency) latency = c->latency();
  }
  void flush_all() const {
    for (Psc* c : level)
      if (c) c->flush_all();
  }
};

// --- Paging formats ---------------------------------------------------------

/// IA-32e paging (SDM Vol. 3A, 4.5), also VT-d first-level tables (VT-d 3.6,
/// 9.7). Rights: TlbPerm's W, U, X, ANDed down the walk.
struct Ia32eFormat {
  static constexpr std::uint64_t kAddrMask = pte::kAddrMask;
  static constexpr std::uint64_t kAccessed = pte::kAccessed, kDirty = pte::kDirty;
  static constexpr std::uint8_t kAllRights = kWritable | kUser | kExecutable;
  static constexpr bool kFillAtLeaf = false;
  static constexpr bool kLogsDirty = false;
  PagingMode mode{};
  bool nxe = true;  // IA32_EFER.NXE (always set for VT-d first level: XD is never reserved)

  bool psc_usable(std::uint8_t, const WalkAccess&) const { return true; }
  bool ad() const { return true; }  // SDM Vol. 3A, 4.8; VT-d 3.6.2
  /// Decodes one entry (SDM Vol. 3A, 4.5 and 4.6): ANDs its rights into acc.
  WalkFault::Kind entry(std::uint64_t e, unsigned level, std::uint8_t& acc, const WalkAccess&, bool& leaf) const {
    if (!(e & pte::kPresent)) return WalkFault::Kind::NotPresent;
    const bool large = (e & pte::kPageSize) && level > 1;
    // PS in an entry above the largest page size, or XD without NXE.
    if ((large && level > mode.largest_leaf) || (!nxe && (e & pte::kNoExecute))) return WalkFault::Kind::Reserved;
    if (!(e & pte::kWritable)) acc &= static_cast<std::uint8_t>(~kWritable);
    if (!(e & pte::kUser)) acc &= static_cast<std::uint8_t>(~kUser);
    if (nxe && (e & pte::kNoExecute)) acc &= static_cast<std::uint8_t>(~kExecutable);
    leaf = level == 1 || large;
    return WalkFault::Kind::None;
  }
  /// Access rights (SDM Vol. 3A, 4.6; VT-d 3.6.1, where WPE plays CR0.WP and
  /// there is no SMEP/SMAP/PKE): the right lacking, or 0; kProtectionKey is
  /// added when PKRU refuses the access too (the #PF error code then has
  /// both P and PK, 4.7).
  std::uint8_t rights(std::uint8_t acc, const WalkAccess& a, std::uint64_t leaf) const {
    const std::uint8_t m = page_rights(acc, a);
    if (a.pke) [[unlikely]]
      return static_cast<std::uint8_t>(m | key_rights(acc, a, leaf));
    return m;
  }
  /// Rights from the R/W, U/S and XD bits, CR0.WP, SMEP and SMAP (4.6.1):
  /// a user-mode address is one with U/S = 1 at every level.
  static std::uint8_t page_rights(std::uint8_t acc, const WalkAccess& a) {
    const bool write = a.type == AccessType::Write;
    if (a.user && !(acc & kUser)) return kUser;
    if (write && !(acc & kWritable) && (a.user || a.wp)) return kWritable;
    if (a.execute && !(acc & kExecutable)) return kExecutable;
    // SMEP: no supervisor fetch from a user-mode address, whatever XD says.
    if (!a.user && a.execute && (acc & kUser) && a.smep) return kExecutable;
    // SMAP: no supervisor data access to a user-mode address unless
    // RFLAGS.AC = 1 (explicit accesses; a.smap is already false then).
    if (!a.user && !a.execute && (acc & kUser) && a.smap) return kUser;
    return 0;
  }
  /// Protection keys (4.6.2): a data access to a user-mode address (from
  /// either privilege level) with key i in bits 62:59 of the leaf is refused
  /// if PKRU.AD_i = 1, and a write also if PKRU.WD_i = 1 and it is a user
  /// access or CR0.WP = 1. Fetches are not checked.
  static std::uint8_t key_rights(std::uint8_t acc, const WalkAccess& a, std::uint64_t leaf) {
    if (a.execute || !(acc & kUser)) return 0;
    const unsigned bits = (a.pkru >> (2 * ((leaf >> pte::kPkeyShift) & 15))) & 3;
    const bool write = a.type == AccessType::Write;
    return ((bits & 1) || (write && (bits & 2) && (a.user || a.wp))) ? kProtectionKey : 0;
  }
};

/// EPT (SDM Vol. 3C, 29.3.2). Rights: R/W/X (bits 2:0) and the user-execute
/// right kUserExec, ANDed down the walk. With mode-based execute control
/// (secondary control 22, 29.3.3.2) bit 2 is supervisor-execute and bit 10
/// user-execute, chosen by whether the guest linear address is user-mode
/// (WalkAccess::user of the EPT walk); without it kUserExec is a copy of
/// bit 2, so the choice makes no difference. Execute-only entries (R = W =
/// 0, X = 1) are permitted: the capability is reported in
/// IA32_VMX_EPT_VPID_CAP bit 0.
struct EptFormat {
  static constexpr std::uint64_t kAddrMask = ept::kAddrMask;
  static constexpr std::uint64_t kAccessed = ept::kAccessed, kDirty = ept::kDirty;
  static constexpr std::uint8_t kUserExec = 0x10;  // above kLeafDirty
  static constexpr std::uint8_t kAllRights = ept::kPermMask | kUserExec;
  /// The EPT paging-structure caches are filled once the leaf is reached,
  /// before the permission check.
  static constexpr bool kFillAtLeaf = true;
  /// Page-modification logging can be on (29.3.6).
  static constexpr bool kLogsDirty = true;
  PagingMode mode{};
  bool ad_flags = false;  // EPTP bit 6 (29.3.5)
  bool mbec = false;      // "mode-based execute control for EPT"
  bool pml = false;       // "enable PML" (with ad_flags)

  /// The right an access needs; a fetch from a user-mode linear address
  /// needs user-execute (29.3.3.2).
  static std::uint8_t need(AccessType t, bool user_page) {
    return t == AccessType::Read    ? ept::kRead
           : t == AccessType::Write ? ept::kWrite
                                    : (user_page ? kUserExec : ept::kExecute);
  }
  bool psc_usable(std::uint8_t, const WalkAccess&) const { return true; }
  bool ad() const { return ad_flags; }
  /// An entry with bits 2:0 clear (and bit 10 with MBEC) is not present;
  /// write without read, PS above the largest page size or a reserved
  /// memory type (2, 3, 7) in a leaf is a misconfiguration (29.3.3.1).
  WalkFault::Kind entry(std::uint64_t e, unsigned level, std::uint8_t& acc, const WalkAccess&, bool& leaf) const {
    const unsigned ux_bit = mbec ? 10 : 2;
    const std::uint8_t p =
        static_cast<std::uint8_t>((e & ept::kPermMask) | (((e >> ux_bit) & 1) << 4));
    acc &= p;
    if (p == 0) return WalkFault::Kind::NotPresent;
    if ((p & 3) == ept::kWrite) return WalkFault::Kind::Reserved;
    const bool large = (e & ept::kLargePage) && level > 1;
    if (large && level > mode.largest_leaf) return WalkFault::Kind::Reserved;
    leaf = level == 1 || large;
    if (leaf) {
      const std::uint64_t memtype = (e >> ept::kMemTypeShift) & 7;
      if (memtype == 2 || memtype == 3 || memtype == 7) return WalkFault::Kind::Reserved;
    }
    return WalkFault::Kind::None;
  }
  std::uint8_t rights(std::uint8_t acc, const WalkAccess& a, std::uint64_t) const {
    const std::uint8_t n = need(a.type, a.user);
    return (acc & n) ? 0 : n;
  }
};

/// VT-d second-level tables (VT-d 3.7, 9.8): EPT's layout (R, W, PS, A, D
/// at EPT's bits, so a context may point at a VM's EPT), with VT-d's rules:
/// R and W ANDed down the walk and checked at every level (an entry with
/// R = W = 0 is not present), X and the memory type ignored, accessed and
/// dirty flags only with SLADE.
struct VtdSlFormat {
  static constexpr std::uint64_t kAddrMask = ept::kAddrMask;
  static constexpr std::uint64_t kAccessed = ept::kAccessed, kDirty = ept::kDirty;
  static constexpr std::uint8_t kAllRights = ept::kRead | ept::kWrite;
  static constexpr bool kFillAtLeaf = false;
  static constexpr bool kLogsDirty = false;
  PagingMode mode{};
  bool slade = false;

  static std::uint8_t need(const WalkAccess& a) {
    return a.type == AccessType::Write ? ept::kWrite : ept::kRead;
  }
  /// A cached entry without the right is not used: the walk re-checks from the root.
  bool psc_usable(std::uint8_t perms, const WalkAccess& a) const { return (perms & need(a)) == need(a); }
  bool ad() const { return slade; }
  WalkFault::Kind entry(std::uint64_t e, unsigned level, std::uint8_t& acc, const WalkAccess& a, bool& leaf) const {
    acc &= static_cast<std::uint8_t>(e & kAllRights);
    if (!(acc & need(a))) return (e & kAllRights) ? WalkFault::Kind::Permission : WalkFault::Kind::NotPresent;
    const bool ps = (e & ept::kLargePage) != 0;
    if (ps && level > mode.largest_leaf) return WalkFault::Kind::Reserved;
    leaf = level == 1 || ps;
    return WalkFault::Kind::None;
  }
  std::uint8_t rights(std::uint8_t, const WalkAccess&, std::uint64_t) const { return 0; }  // checked at every level
};

// --- Stage 2 ----------------------------------------------------------------

/// What a stage-2 translation of one address gives.
struct Stage2Step {
  WalkFault fault;           // kind None: translated
  std::uint64_t hpa = 0;
  std::uint8_t perms = 0;    // stage-2 rights of the page (bits 2:0) and kLeafDirty
  std::uint8_t shift = 12;
};

/// No stage 2: tables and the output are host-physical. `perms` is the
/// stage-2 right recorded with paging-structure-cache entries.
///
/// A stage 2 that translates has active() true, table() (the translation of
/// a table entry's address, with the access the stage-1 walk makes to its
/// tables), final() (of the output address, with the request's access),
/// table_need() (the rights a cached table translation must hold) and
/// write_right() (the right an accessed/dirty write needs).
struct IdentityStage2 {
  std::uint8_t perms = 0;
  static constexpr bool active() { return false; }
  std::uint8_t table_need() const { return 0; }
  std::uint8_t write_right() const { return 0; }
  Stage2Step table(std::uint64_t a, std::uint32_t&) { return Stage2Step{{}, a, perms, 12}; }
  Stage2Step final(std::uint64_t a, AccessType, std::uint8_t, std::uint32_t&) { return Stage2Step{{}, a, perms, 12}; }
};

/// What a walk gives: the output address of the stage (stage-1's before
/// stage 2), the host-physical address, the page size (the smaller of both
/// stages), the rights (bits 2:0 and kLeafDirty) and stage 2's.
struct WalkOut {
  std::uint64_t out = 0;
  std::uint64_t hpa = 0;
  std::uint8_t shift = 12;
  std::uint8_t rights = 0;
  std::uint8_t s2_perms = 0;   // with an active stage 2: its rights on the final address
  std::uint64_t leaf_entry = 0;  // the leaf entry as it is after the walk
};

/// The walk loop. Looks up the paging-structure caches (longest match first,
/// SDM Vol. 3A, 4.10.3.2), then reads one entry a level from `start` down,
/// translating every table address through stage 2 first (SDM Vol. 3C,
/// 29.3.2; VT-d 3.8), checks the rights, sets accessed and dirty flags (each
/// a write to the entry's stage-2 address, which needs stage-2 write
/// permission: SDM Vol. 3C, 29.3.3.2; VT-d 3.8), fills the caches with the
/// entries that reference another table (4.10.3.1) and translates the output
/// through stage 2. With kFillAfterFinal the caches are filled only after
/// the final stage-2 translation succeeded.
///
/// Sink: ref(level) per entry read, ad_update() per flag write, psc_hit().
template <class Fmt, class Stage2, class Sink, bool kFillAfterFinal = false>
WalkFault walk(TableMemory& mem, const Fmt& fmt, const PscSet& pscs, const TlbTag& tag, std::uint64_t root,
               std::uint64_t addr, const WalkAccess& a, Stage2& s2, Sink& sink, WalkOut& out, std::uint32_t& cycles) {
  const unsigned levels = fmt.mode.levels;
  unsigned start = levels;
  std::uint64_t table = root;      // in stage 1's output space (guest-physical with a stage 2)
  std::uint64_t table_hpa = root;
  bool translated = !Stage2::active();
  std::uint8_t table_s2 = 0;  // stage-2 rights of the current table's page
  if constexpr (!Stage2::active()) table_s2 = s2.perms;
  std::uint8_t acc = Fmt::kAllRights;

  if (pscs.any) {
    cycles += pscs.latency;
    for (unsigned l = 2; l <= levels; ++l) {
      Psc* c = pscs.level[l];
      if (!c) continue;
      if (const PscEntry* e = c->lookup(addr, tag)) {
        if (!fmt.psc_usable(e->perms, a)) break;
        start = l - 1;
        table = e->next_gpa;
        table_hpa = e->next_hpa;
        translated = true;
        table_s2 = e->table_ept_perms;
        acc = e->perms;
        sink.psc_hit();
        break;
      }
    }
  }

  // By level, written before they are read (no zeroing on the hot path):
  // host address, value and stage-2 address of the entry read, the stage-2
  // rights of its table and the rights accumulated down to it.
  std::uint64_t where[6], entry_in[6];
  std::uint64_t value[6] = {};
  std::uint8_t s2_at[6], acc_at[6];
  unsigned leaf = 0;
  WalkFault f;
  auto fill = [&] {
    if (!pscs.any) return;
    for (unsigned l = start; l > leaf; --l)
      if (Psc* c = pscs.level[l])
        c->insert(addr, tag, where[l - 1] & ~0xFFFull, value[l] & Fmt::kAddrMask, acc_at[l], s2_at[l - 1]);
  };

  for (unsigned level = start; level >= 1; --level) {
    const std::uint64_t off = table_index(addr, level) * 8;
    const std::uint64_t in = table + off;
    if (!translated) {
      Stage2Step t = s2.table(in, cycles);
      if (t.fault) {
        f = t.fault;
        f.stage = WalkFault::Stage::Two;
        f.final = false;
        f.table_level = static_cast<std::uint8_t>(level);
        f.address = in;
        return f;
      }
      table_hpa = t.hpa - off;
      table_s2 = t.perms;
    } else if (Stage2::active() && (table_s2 & s2.table_need()) != s2.table_need()) {
      // A table reached through a cache entry made under other stage-2
      // rules (an EPTP without A/D flags) lacks what the access needs.
      f.kind = WalkFault::Kind::Permission;
      f.stage = WalkFault::Stage::Two;
      f.table_level = static_cast<std::uint8_t>(level);
      f.access = AccessType::Write;
      f.perms = table_s2;
      f.address = in;
      return f;
    }
    const std::uint64_t pa = table_hpa + off;
    const std::uint64_t e = mem.read_entry(pa, cycles);
    sink.ref(level);
    where[level] = pa;
    value[level] = e;
    entry_in[level] = in;
    s2_at[level] = table_s2;
    bool is_leaf = false;
    if (WalkFault::Kind k = fmt.entry(e, level, acc, a, is_leaf); k != WalkFault::Kind::None) {
      f.kind = k;
      f.level = static_cast<std::uint8_t>(level);
      f.access = a.type;
      f.perms = acc;
      f.address = addr;
      return f;
    }
    acc_at[level] = acc;
    if (is_leaf) {
      leaf = level;
      const unsigned shift = level_shift(level);
      const std::uint64_t mask = (1ull << shift) - 1;
      out.out = (e & Fmt::kAddrMask & ~mask) | (addr & mask);
      out.shift = static_cast<std::uint8_t>(shift);
      if constexpr (Fmt::kFillAtLeaf) fill();
      break;
    }
    table = e & Fmt::kAddrMask;
    table_hpa = table;
    translated = !Stage2::active();
  }

  if (std::uint8_t missing = fmt.rights(acc, a, value[leaf])) {
    f.kind = WalkFault::Kind::Permission;
    f.level = static_cast<std::uint8_t>(leaf);
    f.access = a.type;
    f.missing = missing;
    f.perms = acc;
    f.address = addr;
    return f;
  }

  bool leaf_dirty = true;  // no flags: a write needs no update
  if (fmt.ad()) {
    [[maybe_unused]] bool log_dirty = false;
    [[maybe_unused]] bool pml_checked = false;
    for (unsigned level = start; level >= leaf; --level) {
      std::uint64_t nv = value[level] | Fmt::kAccessed;
      if (level == leaf && a.type == AccessType::Write) nv |= Fmt::kDirty;
      if (nv == value[level]) continue;
      if constexpr (Fmt::kLogsDirty) {
        // SDM Vol. 3C, 29.3.6: before setting an EPT accessed or dirty flag
        // with PML on, the processor checks the PML index; out of range is a
        // log-full event: no flag is set and the access does not occur.
        if (fmt.pml && !pml_checked) {
          if (!mem.pml_room()) {
            f.kind = WalkFault::Kind::LogFull;
            f.level = static_cast<std::uint8_t>(level);
            f.access = a.type;
            f.perms = acc;
            f.address = addr;
            return f;
          }
          pml_checked = true;
        }
        if (fmt.pml && level == leaf && (nv & ~value[level] & Fmt::kDirty)) log_dirty = true;
      }
      if (Stage2::active() && !(s2_at[level] & s2.write_right())) {
        // The flag update is a write to the entry's stage-2 address, checked
        // against the rights of the translation made to read the entry.
        f.kind = WalkFault::Kind::Permission;
        f.stage = WalkFault::Stage::Two;
        f.ad_update = true;
        f.table_level = static_cast<std::uint8_t>(level);
        f.access = AccessType::Write;
        f.perms = s2_at[level];
        f.address = entry_in[level];
        return f;
      }
      mem.write_entry(where[level], nv, cycles);
      sink.ad_update();
      value[level] = nv;
    }
    leaf_dirty = (value[leaf] & Fmt::kDirty) != 0;
    // A dirty flag set from 0 to 1 logs the 4 KiB-aligned guest-physical
    // address of the access (29.3.6).
    if constexpr (Fmt::kLogsDirty)
      if (log_dirty) mem.pml_log(addr & ~0xFFFull, cycles);
  }
  out.rights = static_cast<std::uint8_t>(acc | (leaf_dirty ? kLeafDirty : 0));
  out.leaf_entry = value[leaf];

  if constexpr (!Fmt::kFillAtLeaf && !kFillAfterFinal) fill();
  out.hpa = out.out;
  if constexpr (Stage2::active()) {
    Stage2Step t = s2.final(out.out, a.type, acc, cycles);
    if (t.fault) {
      f = t.fault;
      f.stage = WalkFault::Stage::Two;
      f.final = true;
      f.address = out.out;
      return f;
    }
    out.hpa = t.hpa;
    out.s2_perms = t.perms;
    if (t.shift < out.shift) out.shift = t.shift;
  }
  if constexpr (!Fmt::kFillAtLeaf && kFillAfterFinal) fill();
  return f;
}

}  // namespace vmx::mmu
