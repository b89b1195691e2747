// The shadow-paging room (hypervisor/shadow.*, docs/mmu.md "Shadow paging")
// driven by a small guest of its own on the real hypervisor: the guest
// builds IA-32e tables with paging off (guest/page_table.h), turns paging
// on, touches pages, rewrites a PTE (its table page is write-protected: the
// write exits, is single-stepped and the shadow entry follows), INVLPGs,
// takes a fault of its own, switches CR3 between two roots, and walks more
// page tables than the VM's shadow-page limit allows (the shadow tables are
// torn down, their frames go to the VM's pool and are used again). It then
// powers off and every host frame returns to the allocator.
#include <catch2/catch.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <systemc>

#include "abi/boot.h"
#include "cpu/core.h"
#include "cpu/vmx.h"
#include "guest/page_table.h"
#include "hypervisor/hypervisor.h"
#include "mmu/paging.h"
#include "platform/platform.h"
#include "sim/fiber.h"
#include "sim/stats.h"

namespace {

using vmx::cpu::Core;
using vmx::guest::PageTables;
namespace pte = vmx::mmu::pte;
namespace crb = vmx::mmu::crbits;

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kVmMemory = 16ull << 20;
constexpr std::uint64_t kPool = 0x100000;      // the guest's page-table pages, identity-mapped
constexpr unsigned kPoolPages = 128;
constexpr std::uint64_t kDataA = 0x200000;     // frames root A maps at kVa (marker 0xA000 + i)
constexpr std::uint64_t kDataB = 0x300000;     // frames root B maps at kVa (marker 0xB000 + i)
constexpr std::uint64_t kDemand = 0x400000;    // mapped by the guest's #PF handler (marker 0xD00D)
constexpr std::uint64_t kVa = 0x40000000;      // the data window
constexpr unsigned kDataPages = 8;
constexpr std::uint64_t kZapVa = 0x80000000;   // one 4 KiB page per 2 MiB: one page table each
constexpr unsigned kZapTables = 70;            // more than the 64 shadow pages the VM may have
constexpr std::uint64_t kFlags = pte::kPresent | pte::kWritable;
constexpr std::uint16_t kPm1aCnt = 0x604;      // QEMU's ACPI PM1a control port
constexpr std::uint32_t kSlpS5 = 0x2000;

double stat(const vmx::stats::Group& root, const std::string& path) {
  const auto* s = root.find(path);
  if (const auto* c = dynamic_cast<const vmx::stats::Counter*>(s)) return static_cast<double>(c->value());
  if (const auto* g = dynamic_cast<const vmx::stats::Gauge*>(s)) return g->value();
  if (const auto* h = dynamic_cast<const vmx::stats::Histogram*>(s)) return static_cast<double>(h->count());
  throw std::runtime_error("no statistic " + path);
}

// What the guest saw, and the statistics it sampled between its phases
// (test observation: no cost, no effect on the run).
struct Seen {
  std::vector<std::uint64_t> a;   // kVa pages under root A
  std::uint64_t after_pte_write = 0, after_invlpg = 0, demand = 0, under_b = 0, back_to_a = 0;
  std::uint64_t cr2 = 0;
  unsigned page_faults = 0, bad_zap_reads = 0;
  double fills_after_touch = 0, pt_writes_before = 0, pt_writes_after = 0, invlpgs_before = 0, invlpgs_after = 0;
  double reflected_before = 0, reflected_after = 0, cr3_before = 0, cr3_after = 0, hits_before = 0, hits_after = 0;
  double resets_before = 0, resets_pass1 = 0, resets_pass2 = 0, live_pass1 = 0, live_pass2 = 0;
  double used_pass1 = 0, used_pass2 = 0, allocs_pass1 = 0, allocs_pass2 = 0, created = 0, zapped = 0, frees_end = 0;
  bool done = false;
};

struct Guest : vmx::abi::GuestImage, vmx::cpu::InterruptHandler {
  explicit Guest(const vmx::stats::Group& r) : root(r) {}
  const vmx::stats::Group& root;
  Seen seen;
  std::uint64_t next_table = kPool, root_a = 0, root_b = 0;
  PageTables pt{4, pte::kPresent | pte::kWritable, [this](Core&) {
                  if (next_table >= kPool + kPoolPages * kPage) throw std::logic_error("test guest: pool exhausted");
                  const std::uint64_t t = next_table;
                  next_table += kPage;
                  return t;  // never used before: still the zeros the hypervisor backed it with
                }};
  vmx::sim::Fiber fiber{"t.vcpu0", [this] { main(); }};

  std::uint64_t entry_point(unsigned) override { return vmx::cpu::code_address(&fiber); }
  void interrupt(Core& c, std::uint8_t) override { c.wrmsr(vmx::cpu::msr::kX2ApicEoi, 0); }
  // The guest's own page fault: map the page it wanted (demand paging).
  void exception(Core& c, std::uint8_t vector, std::uint32_t) override {
    if (vector != vmx::cpu::vec::kPageFault) throw std::logic_error("test guest: unexpected exception");
    ++seen.page_faults;
    seen.cr2 = c.read_cr(2);
    pt.map(c, root_a, seen.cr2 & ~(kPage - 1), kDemand, kFlags);
  }
  double s(const std::string& path) const { return stat(root, path); }

  void main() {
    Core& c = Core::current();
    c.lidt(this);
    // Paging off (linear = guest-physical): markers, then both roots.
    for (unsigned i = 0; i < kDataPages; ++i) {
      c.store(kDataA + i * kPage, 0xA000 + i);
      c.store(kDataB + i * kPage, 0xB000 + i);
    }
    c.store(kDemand, 0xD00D);
    root_a = next_table;
    next_table += kPage;
    root_b = next_table;
    next_table += kPage;
    for (std::uint64_t r : {root_a, root_b})
      for (unsigned i = 0; i < kPoolPages; ++i) pt.map(c, r, kPool + i * kPage, kPool + i * kPage, kFlags);
    for (unsigned i = 0; i < kDataPages; ++i) {
      pt.map(c, root_a, kVa + i * kPage, kDataA + i * kPage, kFlags);
      pt.map(c, root_b, kVa + i * kPage, kDataB + i * kPage, kFlags);
    }
    for (unsigned k = 0; k < kZapTables; ++k) pt.map(c, root_a, kZapVa + k * (2ull << 20), kDataA, kFlags);

    // Paging on with root A (SDM Vol. 3A, 4.1.1: CR4.PAE, CR3, then CR0.PG).
    seen.cr3_before = s("vm.t.shadow.cr3_loads");
    c.write_cr(4, crb::kCr4Pae);
    c.write_cr(3, root_a);
    c.write_cr(0, crb::kCr0Pe | crb::kCr0Pg | crb::kCr0Wp);
    for (unsigned i = 0; i < kDataPages; ++i) seen.a.push_back(c.load(kVa + i * kPage));
    seen.fills_after_touch = s("vm.t.shadow.fills");

    // A PTE rewritten in place: kVa now maps data page 5. No INVLPG: the
    // hypervisor caught the write to the write-protected table page and
    // dropped the shadow entry derived from it.
    seen.pt_writes_before = s("vm.t.shadow.pt_writes");
    const std::uint64_t pte0 = pt.leaf_entry(c, root_a, kVa);
    c.store(pte0, (kDataA + 5 * kPage) | kFlags);
    seen.after_pte_write = c.load(kVa);
    seen.pt_writes_after = s("vm.t.shadow.pt_writes");

    // A PTE rewritten, then INVLPG as the architecture asks.
    seen.invlpgs_before = s("vm.t.shadow.invlpgs");
    c.store(pt.leaf_entry(c, root_a, kVa + kPage), (kDataA + 6 * kPage) | kFlags);
    c.invlpg(kVa + kPage);
    seen.after_invlpg = c.load(kVa + kPage);
    seen.invlpgs_after = s("vm.t.shadow.invlpgs");

    // A page the guest has not mapped: its own #PF, reflected to it.
    seen.reflected_before = s("vm.t.shadow.reflected");
    seen.demand = c.load(kVa + kDataPages * kPage);
    seen.reflected_after = s("vm.t.shadow.reflected");

    // CR3 to root B and back: the second load finds A's shadow root cached.
    seen.hits_before = s("vm.t.shadow.root_hits");
    c.write_cr(3, root_b);
    seen.under_b = c.load(kVa + 2 * kPage);
    c.write_cr(3, root_a);
    seen.back_to_a = c.load(kVa + 2 * kPage);
    seen.cr3_after = s("vm.t.shadow.cr3_loads");
    seen.hits_after = s("vm.t.shadow.root_hits");

    // 70 page tables: more shadow pages than the limit, twice over.
    seen.resets_before = s("vm.t.shadow.resets");
    for (unsigned k = 0; k < kZapTables; ++k) seen.bad_zap_reads += c.load(kZapVa + k * (2ull << 20)) != 0xA000;
    seen.resets_pass1 = s("vm.t.shadow.resets");
    seen.live_pass1 = s("vm.t.shadow.pages_live");
    seen.used_pass1 = s("hypervisor.frames.frames_used");
    seen.allocs_pass1 = s("hypervisor.frames.allocs");
    for (unsigned k = 0; k < kZapTables; ++k) seen.bad_zap_reads += c.load(kZapVa + k * (2ull << 20)) != 0xA000;
    seen.resets_pass2 = s("vm.t.shadow.resets");
    seen.live_pass2 = s("vm.t.shadow.pages_live");
    seen.used_pass2 = s("hypervisor.frames.frames_used");
    seen.allocs_pass2 = s("hypervisor.frames.allocs");
    seen.created = s("vm.t.shadow.pages_created");
    seen.zapped = s("vm.t.shadow.pages_zapped");
    seen.frees_end = s("hypervisor.frames.frees");
    seen.done = true;
    c.out(kPm1aCnt, kSlpS5, 2);
    for (;;) c.hlt();  // never resumed
  }
};

}  // namespace

TEST_CASE("shadow MMU: a guest's own tables, PTE writes, INVLPG, CR3 switches, the page limit and VM stop",
          "[hypervisor][shadow]") {
  vmx::stats::Group root(nullptr, "");
  auto pp = vmx::cfg::defaults<vmx::models::PlatformParams>();
  pp.cores = 1;
  pp.memory = 128ull << 20;
  vmx::models::Platform platform(pp, &root);
  auto hp = vmx::cfg::defaults<vmx::hv::HypervisorParams>();
  hp.shadow_pages_permille = 1;  // 16 MiB: 4 pages per thousand, so the floor of 64 shadow pages
  vmx::hv::Hypervisor hv(hp, platform.cores(), pp.memory, pp.frequency, &root);
  Guest guest(root);
  vmx::hv::VmSpec spec;
  spec.name = "t";
  spec.memory = kVmMemory;
  spec.image = &guest;
  spec.shadow_paging = true;
  const double used_before = stat(root, "hypervisor.frames.frames_used");
  hv.add_vm(spec);
  bool stopped = false;
  double used_at_stop = -1, frees_at_stop = 0, live_at_stop = -1;
  hv.on_vm_stopped([&](Core&, unsigned) {
    stopped = true;
    used_at_stop = stat(root, "hypervisor.frames.frames_used");
    frees_at_stop = stat(root, "hypervisor.frames.frees");
    live_at_stop = stat(root, "vm.t.shadow.pages_live");
  });
  platform.core(0).set_reset_fiber(&hv.core_fiber(0));
  sc_core::sc_start(sc_core::sc_time(20, sc_core::SC_MS));

  const Seen& s = guest.seen;
  INFO("crash: " << hv.vm_crash(0) << " stop: " << hv.vm_stop_note(0));
  REQUIRE(s.done);
  REQUIRE(hv.vm_crash(0).empty());
  auto exits = [&](const char* reason) {
    const auto* h = dynamic_cast<const vmx::stats::Histogram*>(
        root.find(std::string("vm.t.vcpu0.exit_reasons.") + reason + ".cycles"));
    return h ? static_cast<double>(h->count()) : 0.0;
  };

  // The guest read its own mappings through the shadow tables, each page
  // filled by a shadow fault (a #PF exit the guest never sees).
  REQUIRE(s.a.size() == kDataPages);
  for (unsigned i = 0; i < kDataPages; ++i) CHECK(s.a[i] == 0xA000 + i);
  CHECK(s.fills_after_touch >= kDataPages);
  CHECK(exits("EXCEPTION_NMI") >= stat(root, "vm.t.shadow.fills"));
  CHECK(exits("EPT_VIOLATION") == 0);  // no EPT under shadow paging

  // The PTE store was caught and single-stepped; the guest's next load saw
  // the new mapping without an INVLPG.
  CHECK(s.after_pte_write == 0xA005);
  CHECK(s.pt_writes_after - s.pt_writes_before == 1);
  CHECK(exits("MONITOR_TRAP_FLAG") == stat(root, "vm.t.shadow.pt_writes"));
  // INVLPG exits and is handled once.
  CHECK(s.after_invlpg == 0xA006);
  CHECK(s.invlpgs_after - s.invlpgs_before == 1);
  CHECK(exits("INVLPG") == 1);
  // The guest's own fault reached its handler with CR2, once.
  CHECK(s.page_faults == 1);
  CHECK(s.cr2 == kVa + kDataPages * kPage);
  CHECK(s.demand == 0xD00D);
  CHECK(s.reflected_after - s.reflected_before == 1);
  CHECK(stat(root, "vm.t.shadow.reflected") == 1);
  // Three CR3 loads (paging on, to B, back to A), each an exit; the way
  // back found A's shadow root among the cached ones.
  CHECK(s.under_b == 0xB002);
  CHECK(s.back_to_a == 0xA002);
  CHECK(s.cr3_after - s.cr3_before == 3);
  CHECK(s.hits_after - s.hits_before >= 1);
  // CR3 three times and CR0 (PG) once; the CR4 write changes no bit the
  // hypervisor owns (CR4 guest/host mask), so it does not exit (SDM Vol. 3C, 26.1.3).
  CHECK(exits("CR_ACCESS") == 4);

  // The page limit (max(64, 16 MiB / 4 KiB x 1 / 1000) = 64): the first
  // pass over 70 tables reached it and tore the shadow tables down, the
  // second pass again; the count stays within the limit and the zapped
  // pages' frames were used again: not one host frame more in pass 2.
  CHECK(s.bad_zap_reads == 0);
  CHECK(s.resets_pass1 > s.resets_before);
  CHECK(s.resets_pass2 > s.resets_pass1);
  CHECK(s.live_pass1 <= 64);
  CHECK(s.live_pass2 <= 64);
  CHECK(s.live_pass2 == s.created - s.zapped);
  CHECK(s.created > 2 * kZapTables);
  CHECK(s.used_pass2 == s.used_pass1);
  CHECK(s.allocs_pass2 == s.allocs_pass1);

  // Power-off: every frame (guest memory, shadow pages live and pooled,
  // VMCS, save area, lock) went back to the frame allocator.
  REQUIRE(stopped);
  CHECK(hv.vm_stop_note(0).find("powered off") != std::string::npos);
  CHECK(live_at_stop == 0);
  CHECK(used_at_stop == used_before);
  CHECK(stat(root, "hypervisor.frames.frames_used") == used_before);
  // The teardown freed at least the 64 shadow frames the limit let it have.
  CHECK(frees_at_stop - s.frees_end >= 64);
}
