#include "mmu/walker.h"

#include <string>

#include "cpu/vmx.h"

namespace vmx::mmu {

WalkStats::WalkStats(stats::Group* parent, const std::string& name) : stats::Group(parent, name) {
  for (unsigned l = 1; l <= 5; ++l) {
    guest_refs[l] = &make<stats::Counter>("guest_refs_l" + std::to_string(l), "references",
                                          "guest-dimension references at level " + std::to_string(l));
    ept_refs[l] = &make<stats::Counter>("ept_refs_l" + std::to_string(l), "references",
                                        "EPT-dimension references at level " + std::to_string(l));
  }
}

Walker::Walker(TableMemory& mem, WalkStats& stats, const WalkCaches& caches) : m_mem(mem), m_stats(stats) {
  for (unsigned l = 2; l <= 5; ++l) {
    if (Psc* c = caches.guest[l]; c && c->enabled()) {
      m_caches.guest[l] = c;
      m_guest_psc = true;
      if (c->latency() > m_guest_psc_latency) m_guest_psc_latency = c->latency();
    }
    if (Psc* c = caches.ept[l]; c && c->enabled()) {
      m_caches.ept[l] = c;
      m_ept_psc = true;
      if (c->latency() > m_ept_psc_latency) m_ept_psc_latency = c->latency();
    }
  }
  if (caches.nested && caches.nested->enabled()) m_caches.nested = caches.nested;
}

std::uint64_t Walker::read(std::uint64_t pa, WalkResult& r) {
  std::uint32_t c = 0;
  std::uint64_t v = m_mem.read_entry(pa, c);
  r.cycles += c;
  ++r.refs;
  return v;
}

// SDM Vol. 3C, 29.3.2: the EPT walk. Permissions are the AND of bits 2:0 over
// all entries; an entry with bits 2:0 clear is not present. Write without read
// is a misconfiguration (29.3.3.1), as is a reserved memory type in a leaf.
namespace {
std::uint8_t ept_need(AccessType type) {
  return type == AccessType::Read ? ept::kRead : type == AccessType::Write ? ept::kWrite : ept::kExecute;
}
// What a cached guest-physical translation must hold to serve an access: the
// permission, and for a write the leaf's dirty flag (or EPT A/D off), so that
// a write after a read still walks and sets it (SDM Vol. 3C, 29.3.5).
std::uint8_t ept_need_cached(AccessType type) {
  return type == AccessType::Write ? static_cast<std::uint8_t>(ept::kWrite | kEptLeafDirty) : ept_need(type);
}
}  // namespace

// The nested TLB is consulted first; a cached translation is used only when
// it permits the access (otherwise the EPT walk decides, as for the TLBs).
Walker::EptStep Walker::ept_translate(const WalkRequest& req, std::uint64_t gpa, AccessType type, WalkResult& r) {
  NestedTlb* ntlb = m_caches.nested;
  if (!ntlb) return ept_walk(req, gpa, type, r);
  const std::uint64_t ep4ta = req.eptp & ept::kAddrMask;
  r.cycles += ntlb->latency();
  const std::uint8_t need = ept_need_cached(type);
  if (const NestedTlbEntry* e = ntlb->lookup(gpa, ep4ta); e && (e->perms & need) == need) {
    ++r.nested_hits;
    return EptStep{WalkResult::Status::Ok, ntlb->translate(*e, gpa), e->perms, e->shift};
  }
  EptStep s = ept_walk(req, gpa, type, r);
  if (s.status == WalkResult::Status::Ok) ntlb->insert(gpa, s.hpa, s.perms, s.page_shift, ep4ta);
  return s;
}

Walker::EptStep Walker::ept_walk(const WalkRequest& req, std::uint64_t gpa, AccessType type, WalkResult& r) {
  EptStep s{WalkResult::Status::Ok, 0, 7, 12};
  std::uint64_t table = req.eptp & ept::kAddrMask;
  const unsigned levels = req.ept_mode.levels;
  unsigned start = levels;
  const TlbTag tag{0, 0, req.eptp & ept::kAddrMask};
  if (m_ept_psc) {
    // Longest match first (SDM Vol. 3A, 4.10.3.2, applied to EPT entries):
    // a hit for the level-l entry gives the level-(l-1) table and the
    // permissions accumulated above it.
    r.cycles += m_ept_psc_latency;
    for (unsigned l = 2; l <= levels; ++l) {
      Psc* c = m_caches.ept[l];
      if (!c) continue;
      if (const PscEntry* e = c->lookup(gpa, tag)) {
        table = e->next_hpa;
        s.perms = e->perms;
        start = l - 1;
        ++r.psc_hits;
        break;
      }
    }
  }
  std::array<std::uint64_t, 6> next{};   // next-table address read at each non-leaf level
  std::array<std::uint8_t, 6> acc{};     // permissions accumulated down to that level
  std::array<std::uint64_t, 6> where{};  // with A/D flags: where each entry was read, and its value
  std::array<std::uint64_t, 6> value{};
  const bool ad = ept::eptp_ad(req.eptp);
  unsigned leaf = 1;
  for (unsigned level = start; level >= 1; --level) {
    const std::uint64_t pa = table + table_index(gpa, level) * 8;
    std::uint64_t entry = read(pa, r);
    where[level] = pa;
    value[level] = entry;
    ++*m_stats.ept_refs[level];
    ++m_stats.ept_refs_total;
    std::uint8_t p = static_cast<std::uint8_t>(entry & ept::kPermMask);
    s.perms &= p;
    if (p == 0) {
      s.status = WalkResult::Status::EptViolation;
      return s;
    }
    if ((p & 3) == ept::kWrite) {
      s.status = WalkResult::Status::EptMisconfig;
      return s;
    }
    bool large = (entry & ept::kLargePage) && level > 1;
    if (large && level > req.ept_mode.largest_leaf) {  // reserved bit 7 at this level
      s.status = WalkResult::Status::EptMisconfig;
      return s;
    }
    if (level == 1 || large) {
      std::uint64_t memtype = (entry >> ept::kMemTypeShift) & 7;
      if (memtype == 2 || memtype == 3 || memtype == 7) {
        s.status = WalkResult::Status::EptMisconfig;
        return s;
      }
      unsigned shift = level_shift(level);
      std::uint64_t mask = (1ull << shift) - 1;
      s.hpa = (entry & ept::kAddrMask & ~mask) | (gpa & mask);
      s.page_shift = static_cast<std::uint8_t>(shift);
      leaf = level;
      // The entries above the leaf were present and well-formed: cache them.
      if (m_ept_psc)
        for (unsigned l = start; l > level; --l)
          if (Psc* c = m_caches.ept[l]) c->insert(gpa, tag, next[l], next[l], acc[l], 0);
      break;
    }
    table = entry & ept::kAddrMask;
    next[level] = table;
    acc[level] = s.perms;
  }
  if (!(s.perms & ept_need(type))) {
    s.status = WalkResult::Status::EptViolation;
    return s;
  }
  if (!ad) {
    s.perms |= kEptLeafDirty;
    return s;
  }
  // EPT accessed and dirty flags (SDM Vol. 3C, 29.3.5): A in every entry
  // this walk used, D in the leaf for a write; writes to memory, like the
  // guest's A/D updates. Entries above `start` came from the EPT PSCs: their
  // A flags were set when they were cached. Flags are set only by a walk that
  // permits the access (the SDM does not say whether a walk ending in an EPT
  // violation sets them; Intel sets guest A/D flags only after a successful
  // walk, and this follows that).
  for (unsigned level = start; level >= leaf; --level) {
    std::uint64_t nv = value[level] | ept::kAccessed;
    if (level == leaf && type == AccessType::Write) nv |= ept::kDirty;
    if (nv != value[level]) {
      std::uint32_t c = 0;
      m_mem.write_entry(where[level], nv, c);
      r.cycles += c;
      ++m_stats.ad_updates;
      ++m_stats.ept_ad_updates;
      value[level] = nv;
    }
  }
  if (value[leaf] & ept::kDirty) s.perms |= kEptLeafDirty;
  return s;
}

// Exit qualification for EPT violations: SDM Vol. 3C, 28.2.1, Table 28-7.
void Walker::ept_fault(const WalkRequest& req, const EptStep& e, std::uint64_t gpa, AccessType type,
                       bool final_translation, WalkResult& r) {
  r.status = e.status;
  r.fault_gpa = gpa;
  r.gpa = gpa;
  if (e.status == WalkResult::Status::EptViolation) {
    std::uint64_t q = type == AccessType::Read    ? cpu::qual::kEptRead
                      : type == AccessType::Write ? cpu::qual::kEptWrite
                                                  : cpu::qual::kEptFetch;
    // With EPT A/D flags on, a guest paging-structure access is a write with
    // regard to EPT violations; such a violation reports both a read and a
    // write (SDM Vol. 3C, Table 28-7, note to bit 1).
    if (req.paging && !final_translation && ept::eptp_ad(req.eptp)) q = cpu::qual::kEptRead | cpu::qual::kEptWrite;
    q |= std::uint64_t(e.perms & 7) << 3;
    if (req.paging) {
      q |= cpu::qual::kEptGlaValid;
      if (final_translation) q |= cpu::qual::kEptGlaTranslation;
    } else {
      q |= cpu::qual::kEptGlaValid | cpu::qual::kEptGlaTranslation;
    }
    r.exit_qualification = q;
    ++m_stats.ept_violations;
  } else {
    ++m_stats.ept_misconfigs;
  }
}

void Walker::finish(WalkResult& r) {
  m_stats.refs += r.refs;
  m_stats.cycles.sample(r.cycles);
  m_stats.refs_per_walk.sample(r.refs);
  m_stats.guest_refs_per_walk.sample(r.guest_refs);
  m_stats.ept_refs_per_walk.sample(static_cast<std::uint64_t>(r.refs - r.guest_refs));
  m_stats.psc_hits += r.psc_hits;
  m_stats.nested_tlb_hits += r.nested_hits;
}

WalkResult Walker::translate(const WalkRequest& req) {
  WalkResult r;
  if (req.paging) ++m_stats.walks; else ++m_stats.ept_only_walks;

  std::uint64_t gpa = req.la;
  std::uint8_t guest_perms = perm::kWritable | perm::kUser | perm::kExecutable | perm::kDirty;
  unsigned guest_shift = 64;
  // Where the entries used were read (host-physical), for accessed/dirty updates.
  std::array<std::uint64_t, 6> entry_pa{};
  std::array<std::uint64_t, 6> entry_val{};
  std::array<std::uint64_t, 6> entry_gpa_of{};      // with EPT: for an A/D-update violation
  std::array<std::uint8_t, 6> entry_ept_perms{};    // with EPT: R/W/X of the entry's page
  std::array<std::uint8_t, 6> acc_perms{};          // guest rights accumulated down to each level
  unsigned leaf_level = 0;

  // SDM Vol. 3A, 4.7: I/D is set for an instruction fetch if CR4.SMEP = 1 or
  // (CR4.PAE = 1, as in IA-32e paging, and IA32_EFER.NXE = 1).
  const std::uint32_t fetch_bit =
      req.type == AccessType::Execute && (req.nxe || req.smep) ? pfec::kFetch : 0;
  // With EPT A/D flags on, guest paging-structure accesses are EPT writes
  // (SDM Vol. 3C, 29.3.5): they need write permission and set the dirty flag
  // of the EPT entry mapping the table page.
  const bool ept_ad = req.ept && ept::eptp_ad(req.eptp);
  const AccessType table_access = ept_ad ? AccessType::Write : AccessType::Read;

  if (req.paging) {
    std::uint64_t table = req.cr3 & pte::kAddrMask;
    unsigned start = req.mode.levels;
    // A paging-structure-cache hit (longest match first, SDM Vol. 3A,
    // 4.10.3.2) gives the next table's (host-)physical address, so the
    // first entry read needs no EPT translation.
    const PscEntry* hit = nullptr;
    if (m_guest_psc) {
      r.cycles += m_guest_psc_latency;
      for (unsigned l = 2; l <= req.mode.levels; ++l) {
        Psc* c = m_caches.guest[l];
        if (!c) continue;
        if ((hit = c->lookup(req.la, req.tag))) {
          start = l - 1;
          table = hit->next_gpa;
          guest_perms = static_cast<std::uint8_t>(hit->perms | perm::kDirty);
          ++r.psc_hits;
          break;
        }
      }
    }
    for (unsigned level = start; level >= 1; --level) {
      std::uint64_t entry_gpa = table + table_index(req.la, level) * 8;
      std::uint64_t where = entry_gpa;
      if (hit && level == start) {
        where = hit->next_hpa + table_index(req.la, level) * 8;
        entry_gpa_of[level] = entry_gpa;
        entry_ept_perms[level] = hit->table_ept_perms;
        if (ept_ad && !(hit->table_ept_perms & ept::kWrite)) {  // cached under an EPTP without A/D
          ept_fault(req, EptStep{WalkResult::Status::EptViolation, 0, hit->table_ept_perms, 12}, entry_gpa,
                    AccessType::Write, false, r);
          finish(r);
          return r;
        }
      } else if (req.ept) {
        EptStep e = ept_translate(req, entry_gpa, table_access, r);
        if (e.status != WalkResult::Status::Ok) {
          ept_fault(req, e, entry_gpa, table_access, false, r);
          finish(r);
          return r;
        }
        where = e.hpa;
        entry_gpa_of[level] = entry_gpa;
        entry_ept_perms[level] = e.perms;
      }
      std::uint64_t entry = read(where, r);
      ++r.guest_refs;
      ++*m_stats.guest_refs[level];
      ++m_stats.guest_refs_total;
      entry_pa[level] = where;
      entry_val[level] = entry;

      std::uint32_t access_bits = (req.type == AccessType::Write ? pfec::kWrite : 0) |
                                  (req.user ? pfec::kUser : 0) | fetch_bit;
      if (!(entry & pte::kPresent)) {
        r.status = WalkResult::Status::PageFault;
        r.error_code = access_bits;
        ++m_stats.page_faults;
        finish(r);
        return r;
      }
      bool large = (entry & pte::kPageSize) && level > 1;
      bool reserved = (large && level > req.mode.largest_leaf) || (!req.nxe && (entry & pte::kNoExecute));
      if (reserved) {
        r.status = WalkResult::Status::PageFault;
        r.error_code = access_bits | pfec::kPresent | pfec::kReserved;
        ++m_stats.page_faults;
        finish(r);
        return r;
      }
      if (!(entry & pte::kWritable)) guest_perms &= static_cast<std::uint8_t>(~perm::kWritable);
      if (!(entry & pte::kUser)) guest_perms &= static_cast<std::uint8_t>(~perm::kUser);
      if (req.nxe && (entry & pte::kNoExecute)) guest_perms &= static_cast<std::uint8_t>(~perm::kExecutable);
      acc_perms[level] = static_cast<std::uint8_t>(guest_perms & ~perm::kDirty);
      if (level == 1 || large) {
        leaf_level = level;
        guest_shift = level_shift(level);
        std::uint64_t mask = (1ull << guest_shift) - 1;
        gpa = (entry & pte::kAddrMask & ~mask) | (req.la & mask);
        if (!(entry & pte::kDirty)) guest_perms &= static_cast<std::uint8_t>(~perm::kDirty);
        r.global = req.pge && (entry & pte::kGlobal);  // SDM Vol. 3A, 4.10.2.4
        break;
      }
      table = entry & pte::kAddrMask;
    }

    // Access rights, SDM Vol. 3A, 4.6.
    bool u = guest_perms & perm::kUser, w = guest_perms & perm::kWritable, x = guest_perms & perm::kExecutable;
    bool denied = false;
    if (req.user) {
      denied = !u || (req.type == AccessType::Write && !w) || (req.type == AccessType::Execute && !x);
    } else {
      denied = (req.type == AccessType::Write && !w && req.wp) ||
               (req.type == AccessType::Execute && (!x || (u && req.smep))) ||
               (req.type != AccessType::Execute && u && req.smap);
    }
    if (denied) {
      r.status = WalkResult::Status::PageFault;
      r.error_code = pfec::kPresent | (req.type == AccessType::Write ? pfec::kWrite : 0) |
                     (req.user ? pfec::kUser : 0) | fetch_bit;
      ++m_stats.page_faults;
      finish(r);
      return r;
    }

    // Accessed and dirty flags, SDM Vol. 3A, 4.8: set A in every entry used,
    // D in the leaf on a write. These are writes to guest memory.
    for (unsigned level = start; level >= leaf_level; --level) {
      std::uint64_t v = entry_val[level];
      std::uint64_t nv = v | pte::kAccessed;
      if (level == leaf_level && req.type == AccessType::Write) nv |= pte::kDirty;
      if (nv != v) {
        // The update is a write to the entry's guest-physical address (SDM
        // Vol. 3C, 29.3.3.2): without EPT write permission on the table page
        // it is an EPT violation whose qualification has bit 8 clear (an
        // A/D update, Table 28-7). The permissions are those of the EPT
        // translation made to read the entry, so no further reference.
        if (req.ept && !(entry_ept_perms[level] & ept::kWrite)) {
          EptStep e{WalkResult::Status::EptViolation, 0, entry_ept_perms[level], 12};
          ept_fault(req, e, entry_gpa_of[level], AccessType::Write, false, r);
          finish(r);
          return r;
        }
        std::uint32_t c = 0;
        m_mem.write_entry(entry_pa[level], nv, c);
        r.cycles += c;
        ++m_stats.ad_updates;
        if (level == leaf_level && (nv & pte::kDirty)) guest_perms |= perm::kDirty;
      }
    }

    // Cache the entries read that reference another table (4.10.3.1): the
    // next table's physical address is where its entry was just read.
    if (m_guest_psc)
      for (unsigned level = start; level > leaf_level; --level)
        if (Psc* c = m_caches.guest[level])
          c->insert(req.la, req.tag, entry_pa[level - 1] & ~0xFFFull, entry_val[level] & pte::kAddrMask,
                    acc_perms[level], req.ept ? entry_ept_perms[level - 1] : ept::kPermMask);
  }

  std::uint64_t hpa = gpa;
  std::uint8_t ept_perms = perm::kAllEpt | perm::kEptDirty;
  unsigned shift = guest_shift;
  if (req.ept) {
    EptStep e = ept_translate(req, gpa, req.type, r);
    if (e.status != WalkResult::Status::Ok) {
      ept_fault(req, e, gpa, req.type, true, r);
      finish(r);
      return r;
    }
    hpa = e.hpa;
    ept_perms = static_cast<std::uint8_t>((e.perms & (7 | kEptLeafDirty)) << 4);
    if (e.page_shift < shift) shift = e.page_shift;
  }
  if (shift == 64) shift = 12;  // no paging and no EPT: cache as 4 KiB
  r.page_shift = static_cast<std::uint8_t>(shift);
  r.perms = static_cast<std::uint8_t>((req.paging ? guest_perms : (perm::kWritable | perm::kUser | perm::kExecutable | perm::kDirty)) | ept_perms);
  r.gpa = gpa;
  r.pa = hpa;
  finish(r);
  return r;
}

}  // namespace vmx::mmu
