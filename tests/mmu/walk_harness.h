// Test harness shared by the walker tests (test_walker.cc, test_walk_caches.cc):
// real IA-32e and EPT paging structures built in a fake host-physical memory
// whose every reference costs a fixed latency, so reference counts and
// cycles are exact.
#pragma once

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "cpu/vmx.h"
#include "mmu/walker.h"
#include "sim/stats.h"

using namespace vmx;
using mmu::AccessType;
using mmu::WalkRequest;
using mmu::WalkResult;
using Status = WalkResult::Status;
namespace pte = mmu::pte;
namespace ept = mmu::ept;
namespace pfec = mmu::pfec;
namespace perm = mmu::perm;
namespace qual = cpu::qual;

namespace {

constexpr std::uint32_t kReadLatency = 5;   // cycles per paging-structure read
constexpr std::uint32_t kWriteLatency = 7;  // cycles per accessed/dirty write

// Data page: guest-physical 5 GiB, host-physical 8 GiB (both 1 GiB aligned,
// far from the table pages: guest tables at 1 MiB+, host tables at 16 MiB+).
constexpr std::uint64_t kDataGpa = 0x1'4000'0000ull;
constexpr std::uint64_t kDataHpa = 0x2'0000'0000ull;
// Linear addresses with a nonzero index at every level (canonical).
constexpr std::uint64_t kLa4 = 0x0000'7F12'3456'7ABCull;
constexpr std::uint64_t kLa5 = 0x00AB'7F12'3456'7ABCull;

constexpr std::uint64_t kRwx = ept::kRead | ept::kWrite | ept::kExecute;
constexpr std::uint64_t kPwu = pte::kPresent | pte::kWritable | pte::kUser;

unsigned leaf_level(unsigned shift) { return (shift - 12) / 9 + 1; }

/// Host-physical memory of 8-byte entries; each reference costs a fixed latency.
class FakeMemory final : public mmu::TableMemory {
 public:
  std::uint64_t read_entry(std::uint64_t pa, std::uint32_t& cycles) override {
    cycles += kReadLatency;
    reads.push_back(pa);
    return peek(pa);
  }
  void write_entry(std::uint64_t pa, std::uint64_t value, std::uint32_t& cycles) override {
    cycles += kWriteLatency;
    writes.push_back(pa);
    m_words[pa] = value;
  }
  std::uint64_t peek(std::uint64_t pa) const {
    auto it = m_words.find(pa);
    return it == m_words.end() ? 0 : it->second;
  }
  void poke(std::uint64_t pa, std::uint64_t v) { m_words[pa] = v; }

  std::vector<std::uint64_t> reads, writes;

 private:
  std::unordered_map<std::uint64_t, std::uint64_t> m_words;
};

/// Guest paging structures (optionally behind EPT) built in a FakeMemory.
/// Guest table pages are mapped by 4 KiB EPT pages, so each guest-table
/// translation costs exactly ept_levels references.
struct Harness {
  Harness(unsigned guest_levels_, bool use_ept_, unsigned ept_levels_ = 4, const mmu::WalkCaches& caches_ = {})
      : guest_levels(guest_levels_), ept_levels(ept_levels_), use_ept(use_ept_), caches(caches_) {
    if (use_ept) {
      std::uint64_t root = alloc_host();
      ept_pages.insert(root);
      eptp = ept::eptp(root, ept_levels, false);
    }
    cr3 = new_guest_table();
  }

  /// Sets EPTP bit 6: EPT accessed and dirty flags (SDM Vol. 3C, 29.3.5).
  void enable_ept_ad(bool on = true) { eptp = ept::eptp(eptp & ept::kAddrMask, ept_levels, on); }

  std::uint64_t alloc_host() {
    std::uint64_t p = next_host;
    next_host += 0x1000;
    return p;
  }

  /// EPT: maps the 2^shift-byte page at gpa to hpa (leaf R/W/X = perms).
  void ept_map(std::uint64_t gpa, std::uint64_t hpa, unsigned shift, std::uint64_t perms = kRwx,
               std::uint64_t memtype = ept::kMemTypeWb) {
    std::uint64_t table = eptp & ept::kAddrMask;
    const unsigned leaf = leaf_level(shift);
    for (unsigned level = ept_levels; level > leaf; --level) {
      std::uint64_t a = table + mmu::table_index(gpa, level) * 8;
      std::uint64_t e = mem.peek(a);
      if (!(e & ept::kPermMask)) {
        std::uint64_t t = alloc_host();
        ept_pages.insert(t);
        e = t | kRwx;
        mem.poke(a, e);
      }
      table = e & ept::kAddrMask;
    }
    mem.poke(table + mmu::table_index(gpa, leaf) * 8,
             (hpa & ept::kAddrMask) | perms | memtype | (leaf > 1 ? ept::kLargePage : 0));
  }

  /// Host-physical address of the EPT entry at `level` used for gpa.
  std::uint64_t ept_entry(std::uint64_t gpa, unsigned level) const {
    std::uint64_t table = eptp & ept::kAddrMask;
    for (unsigned l = ept_levels; l > level; --l) table = mem.peek(table + mmu::table_index(gpa, l) * 8) & ept::kAddrMask;
    return table + mmu::table_index(gpa, level) * 8;
  }

  /// A fresh guest page-table page; returns its guest-physical address.
  std::uint64_t new_guest_table() {
    if (!use_ept) {
      std::uint64_t p = alloc_host();
      guest_pages.insert(p);
      return p;
    }
    std::uint64_t g = next_guest_table;
    next_guest_table += 0x1000;
    std::uint64_t h = alloc_host();
    guest_pages.insert(h);
    g2h[g] = h;
    ept_map(g, h, 12);
    return g;
  }
  std::uint64_t host_of(std::uint64_t table_gpa) const {
    return use_ept ? g2h.at(table_gpa & ~0xFFFull) + (table_gpa & 0xFFF) : table_gpa;
  }

  /// Guest: maps the 2^shift-byte page at la to gpa. Non-leaf entries are P|W|U
  /// and no entry has A or D set.
  void guest_map(std::uint64_t la, std::uint64_t gpa, unsigned shift, std::uint64_t flags = kPwu) {
    std::uint64_t table = cr3;
    const unsigned leaf = leaf_level(shift);
    for (unsigned level = guest_levels; level > leaf; --level) {
      std::uint64_t a = host_of(table + mmu::table_index(la, level) * 8);
      std::uint64_t e = mem.peek(a);
      if (!(e & pte::kPresent)) {
        e = new_guest_table() | kPwu;
        mem.poke(a, e);
      }
      table = e & pte::kAddrMask;
    }
    mem.poke(host_of(table + mmu::table_index(la, leaf) * 8),
             (gpa & pte::kAddrMask) | flags | (leaf > 1 ? pte::kPageSize : 0));
  }

  /// Guest-physical address of the guest entry at `level` used for la.
  std::uint64_t guest_entry_gpa(std::uint64_t la, unsigned level) const {
    std::uint64_t table = cr3;
    for (unsigned l = guest_levels; l > level; --l)
      table = mem.peek(host_of(table + mmu::table_index(la, l) * 8)) & pte::kAddrMask;
    return table + mmu::table_index(la, level) * 8;
  }
  std::uint64_t guest_entry(std::uint64_t la, unsigned level) const {
    return mem.peek(host_of(guest_entry_gpa(la, level)));
  }
  void set_guest_entry(std::uint64_t la, unsigned level, std::uint64_t v) {
    mem.poke(host_of(guest_entry_gpa(la, level)), v);
  }

  WalkRequest request(std::uint64_t la, AccessType type = AccessType::Read, bool user = false) const {
    WalkRequest r;
    r.la = la;
    r.type = type;
    r.user = user;
    r.cr3 = cr3;
    r.mode = mmu::PagingMode{static_cast<std::uint8_t>(guest_levels), 3};
    r.ept = use_ept;
    r.eptp = eptp;
    r.ept_mode = mmu::PagingMode{static_cast<std::uint8_t>(ept_levels), 3};
    r.tag = tag;
    r.tag.ep4ta = use_ept ? (eptp & ept::kAddrMask) : 0;
    return r;
  }
  WalkResult walk(const WalkRequest& r) { return walker.translate(r); }

  /// 'E' for a read of an EPT table page, 'G' for a guest table page.
  std::string read_kinds() const {
    std::string s;
    for (std::uint64_t pa : mem.reads) {
      std::uint64_t page = pa & ~0xFFFull;
      s += ept_pages.count(page) ? 'E' : guest_pages.count(page) ? 'G' : '?';
    }
    return s;
  }

  unsigned guest_levels, ept_levels;
  bool use_ept;
  std::uint64_t next_host = 0x0100'0000;         // host pages for all tables
  std::uint64_t next_guest_table = 0x0010'0000;  // gPAs of guest tables (EPT on)
  std::uint64_t eptp = 0, cr3 = 0;
  std::map<std::uint64_t, std::uint64_t> g2h;
  std::set<std::uint64_t> ept_pages, guest_pages;

  mmu::TlbTag tag{};  // VPID and PCID of the walks (EP4TA follows eptp)
  FakeMemory mem;
  stats::Group root;
  mmu::WalkStats stats{&root};
  mmu::WalkCaches caches;
  mmu::Walker walker{mem, stats, caches};
};

/// Maps kLa4 (4 KiB) to kDataGpa in the guest and kDataGpa to kDataHpa in EPT.
[[maybe_unused]] void map_data_4k(Harness& h, std::uint64_t guest_flags = kPwu, std::uint64_t ept_perms = kRwx) {
  h.guest_map(kLa4, kDataGpa, 12, guest_flags);
  if (h.use_ept) h.ept_map(kDataGpa, kDataHpa, 12, ept_perms);
}
constexpr std::uint64_t kDataOff = kLa4 & 0xFFF;

}  // namespace
