// Shadow paging: the hypervisor's bookkeeping for the shadow page tables of
// one VM (docs/mmu.md, "Shadow paging"). The tables themselves live in
// host-physical memory and the hardware walks them; this is the software
// state a hypervisor keeps beside them (KVM's struct kvm_mmu_page, its rmap
// and its hash of shadowed guest frames).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "hypervisor/hypervisor.h"
#include "sim/stats.h"

namespace vmx::hv {

/// One shadow page-table page. It either mirrors a guest page-table page
/// (role kMirror: the guest frame `gfn` holds the guest table of `level`,
/// and is write-protected while the mirror exists), or maps a range of
/// guest-physical memory directly (under a guest large page, or while the
/// guest runs with paging off).
struct Hypervisor::ShadowPage {
  static constexpr std::uint32_t kMirror = 0;
  static constexpr std::uint32_t kIdentity = 1;  // guest paging off: linear = guest-physical
  static constexpr std::uint32_t kDirect = 2;    // under a guest large page; access bits above bit 8

  std::uint64_t hpa = 0;
  std::uint64_t gfn = 0;  // mirrored guest table frame, or the first frame of the range mapped
  unsigned level = 0;
  std::uint32_t role = kMirror;
  std::vector<std::uint64_t> parents;  // host-physical addresses of the entries that point here
  std::vector<std::uint64_t> gfns;     // level 1: the guest frame each entry maps
  unsigned roots = 0;                  // vCPUs holding it as a current or cached root
  unsigned writes = 0;                 // guest writes to its frame since it was last used

  static std::uint64_t key(std::uint64_t gfn, unsigned level, std::uint32_t role) {
    return (gfn << 24) | (std::uint64_t{role} << 4) | level;
  }
};

struct Hypervisor::ShadowMmu : stats::Group {
  explicit ShadowMmu(stats::Group* parent) : Group(parent, "shadow", "shadow paging") {}

  // Ordered maps: tear-downs walk them, and their order must not depend on
  // the host.
  std::map<std::uint64_t, std::unique_ptr<ShadowPage>> pages;  // by ShadowPage::key
  std::map<std::uint64_t, ShadowPage*> by_hpa;
  std::map<std::uint64_t, std::vector<ShadowPage*>> mirrors;  // guest frame -> its mirrors
  std::map<std::uint64_t, std::vector<std::uint64_t>> rmap;   // guest frame -> leaf entries mapping it
  std::vector<std::uint64_t> free_frames;
  std::uint64_t max_pages = 64;

  bool write_protected(std::uint64_t gfn) const {
    auto it = mirrors.find(gfn);
    return it != mirrors.end() && !it->second.empty();
  }

  stats::Counter fills{this, "fills", "faults", "page-fault exits that filled a shadow entry"};
  stats::Counter reflected{this, "reflected", "faults", "page faults passed on to the guest (its own faults)"};
  stats::Counter pt_writes{this, "pt_writes", "writes",
                           "guest writes to write-protected page-table pages, completed by single-stepping"};
  stats::Counter flood_unshadows{this, "flood_unshadows", "events",
                                 "guest page-table pages unshadowed after repeated writes"};
  stats::Counter cr3_loads{this, "cr3_loads", "exits", "CR3 loads handled"};
  stats::Counter root_hits{this, "root_hits", "events", "CR3 loads that found a cached shadow root"};
  stats::Counter invlpgs{this, "invlpgs", "exits", "INVLPG exits handled"};
  stats::Counter pages_created{this, "pages_created", "pages", "shadow pages allocated"};
  stats::Counter pages_zapped{this, "pages_zapped", "pages", "shadow pages torn down"};
  stats::Counter resets{this, "resets", "events", "tear-downs of all shadow tables at the page limit"};
  stats::Counter remote_flushes{this, "remote_flushes", "events", "TLB flushes requested of the VM's vCPUs"};
  stats::Gauge pages_live{this, "pages_live", "pages", "shadow pages in use"};
};

}  // namespace vmx::hv
