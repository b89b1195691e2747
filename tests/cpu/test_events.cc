// The events a core reports (sim/events.h, docs/model.md "Events and
// listeners"), checked against the core's, the caches' and the walker's own
// statistics: each event is reported once, where it happens, and a listener
// gets exactly what the statistics count. The guests run under the small
// root-mode monitor of tests/cpu/vmx_harness.h.
#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/core.h"
#include "cpu/vcpu_observer.h"
#include "cpu/vmx.h"
#include "cpu/vmx_harness.h"
#include "mmu/paging.h"
#include "sim/events.h"
#include "sim/stats.h"

namespace {

using vmx::cpu::Core;
using vmx::test::VmxHarness;
namespace ev = vmx::events;
namespace ept = vmx::mmu::ept;

// Basic exit reasons (SDM Vol. 3C, Appendix C), spelled as numbers on purpose.
constexpr unsigned kCpuid = 10, kVmcall = 18;
constexpr std::uint64_t kPingCall = 0x50494E47;

struct Recorder : ev::Listener {
  explicit Recorder(ev::Mask m) : ev::Listener(m) {}
  std::vector<ev::Retired> retired_events;
  std::vector<ev::VmExit> exits;
  std::vector<ev::VmEntry> entries;
  std::vector<ev::Walk> walks;
  std::array<std::uint64_t, 3> tlb_misses{};        // by level 1..2
  // By cache level 1..3: level 1 is the L1D, 2 and 3 count every access
  // (fetches included); the L1I apart.
  std::array<std::uint64_t, 4> data_misses{}, data_hits{};
  std::uint64_t fetch_misses = 0, fetch_hits = 0;
  void retired(const ev::Retired& e) override { retired_events.push_back(e); }
  void vm_exit(const ev::VmExit& e) override { exits.push_back(e); }
  void vm_entry(const ev::VmEntry& e) override { entries.push_back(e); }
  void walk(const ev::Walk& e) override { walks.push_back(e); }
  void tlb_miss(const ev::TlbMiss& e) override { ++tlb_misses.at(e.level); }
  void cache_access(const ev::CacheAccess& e) override {
    if (e.level == 1 && e.fetch) ++(e.hit ? fetch_hits : fetch_misses);
    else ++(e.hit ? data_hits : data_misses).at(e.level);
  }
};

void require_clean(const VmxHarness& h) {
  REQUIRE(h.setup_errors.empty());
  REQUIRE_FALSE(h.runaway);
  REQUIRE_FALSE(h.entry_failed);
  REQUIRE(h.done);
}

}  // namespace

TEST_CASE("events: a compute operation of N instructions is reported once as N retired", "[events][cpu]") {
  VmxHarness h;
  Recorder rec(ev::bit(ev::kRetired));
  std::uint64_t core_before = 0, core_after = 0;
  h.guest = [&](Core& c) {
    core_before = h.counter("system.cpu0.guest_instructions");
    c.events().attach(rec);
    c.compute(1000);
    c.compute(234);
    c.load(0x300000);
    c.store(0x300040, 5);
    c.events().detach(rec);
    core_after = h.counter("system.cpu0.guest_instructions");
  };
  h.run();
  require_clean(h);
  REQUIRE(rec.retired_events.size() == 4);
  CHECK(rec.retired_events[0].instructions == 1000);
  CHECK(rec.retired_events[1].instructions == 234);
  CHECK(rec.retired_events[2].instructions == 1);  // a load retires one instruction
  CHECK(rec.retired_events[3].instructions == 1);
  std::uint64_t sum = 0;
  for (const ev::Retired& e : rec.retired_events) {
    CHECK(e.guest);
    sum += e.instructions;
  }
  CHECK(sum == 1236);
  CHECK(core_after - core_before == sum);
}

TEST_CASE("events: fetch_instruction counts what fetch then compute(1) count, the observer summing them",
          "[events][cpu]") {
  VmxHarness h;
  vmx::stats::Group group(nullptr, "vm");
  vmx::cpu::VcpuObserver obs(&group, "vcpu0");
  Recorder fetches(ev::bit(ev::kCacheAccess));  // the observer stays the only listener to retired instructions
  h.setup = [&](Core& c) {
    c.observe_vmcs(VmxHarness::kVmcs, &obs);
    c.events().attach(fetches);
  };
  struct Counts {
    std::uint64_t lines, instructions, l1i_acc, l1i_miss, events;
  };
  auto read = [&] {
    return Counts{h.counter("system.cpu0.fetch_lines"), h.counter("system.cpu0.guest_instructions"),
                  h.counter("system.cpu0_mem.l1i.accesses"), h.counter("system.cpu0_mem.l1i.misses"),
                  fetches.fetch_hits + fetches.fetch_misses};
  };
  Counts c0{}, c1{}, c2{};
  h.guest = [&](Core& c) {
    // The same code shape at two places: 12 instructions of 24 bytes, some
    // crossing a line, fresh lines at first.
    c0 = read();
    for (std::uint64_t i = 0; i < 12; ++i) {
      c.fetch(0x300000 + i * 24, 24);
      c.compute(1);
    }
    c1 = read();
    for (std::uint64_t i = 0; i < 12; ++i) c.fetch_instruction(0x310000 + i * 24, 24);
    c2 = read();
  };
  h.run();
  require_clean(h);
  CHECK(c1.lines - c0.lines == 15);  // each instruction its lines: three of the twelve cross one
  CHECK(c2.lines - c1.lines == c1.lines - c0.lines);
  CHECK(c1.instructions - c0.instructions == 12);
  CHECK(c2.instructions - c1.instructions == 12);
  CHECK(c2.l1i_acc - c1.l1i_acc == c1.l1i_acc - c0.l1i_acc);
  CHECK(c2.l1i_miss - c1.l1i_miss == c1.l1i_miss - c0.l1i_miss);
  CHECK(c2.events - c1.events == c1.events - c0.events);
  // Summed while the guest ran, reported by the VM exit that ended it.
  CHECK(obs.guest_instructions.value() == h.counter("system.cpu0.guest_instructions"));
}

TEST_CASE("events: a listener attached while the vCPU observer sums retired instructions gets exactly its own",
          "[events][cpu]") {
  // The observer listens alone from the VM entry, so the core sums retired
  // instructions for it; a listener attached inside the guest must get each
  // later operation as it retires, none retired before it attached, and
  // what retired while it was attached before it detaches.
  VmxHarness h;
  vmx::stats::Group group(nullptr, "vm");
  vmx::cpu::VcpuObserver obs(&group, "vcpu0");
  Recorder rec(ev::bit(ev::kRetired));
  h.setup = [&](Core& c) { c.observe_vmcs(VmxHarness::kVmcs, &obs); };
  h.guest = [&](Core& c) {
    c.compute(77);  // summed for the observer alone
    c.events().attach(rec);
    c.compute(1000);
    c.compute(234);
    c.events().detach(rec);
    c.compute(5);  // the observer alone again
  };
  h.run();
  require_clean(h);
  REQUIRE(rec.retired_events.size() == 2);
  CHECK(rec.retired_events[0].instructions == 1000);
  CHECK(rec.retired_events[1].instructions == 234);
  // The observer missed nothing either way.
  CHECK(obs.guest_instructions.value() == h.counter("system.cpu0.guest_instructions"));
}

TEST_CASE("events: one VM-exit event per exit with its reason, and the per-vCPU observer counts them once",
          "[events][cpu][vmx]") {
  VmxHarness h;
  h.config.proc2 = 0;
  Recorder rec(ev::bit(ev::kVmExit) | ev::bit(ev::kVmEntry));
  vmx::stats::Group group(nullptr, "vm");
  vmx::cpu::VcpuObserver obs(&group, "vcpu0");
  h.setup = [&](Core& c) {
    c.events().attach(rec);
    c.observe_vmcs(VmxHarness::kVmcs, &obs);
  };
  h.guest = [&](Core& c) {
    c.cpuid(0);
    c.compute(50);
    c.cpuid(1);
    c.vmcall(kPingCall);
    c.cpuid(2);
  };
  h.run();
  require_clean(h);
  REQUIRE(h.reasons() == std::vector<unsigned>{kCpuid, kCpuid, kVmcall, kCpuid, kVmcall});
  REQUIRE(rec.exits.size() == h.exits.size());
  for (std::size_t i = 0; i < h.exits.size(); ++i) {
    CHECK(rec.exits[i].reason == h.exits[i].reason);
    CHECK(rec.exits[i].qualification == h.exits[i].qualification);
    CHECK(rec.exits[i].vmcs == VmxHarness::kVmcs);
  }
  // Each entry precedes its exit; times advance.
  REQUIRE(rec.entries.size() == rec.exits.size());
  CHECK(rec.entries[0].launch);
  for (std::size_t i = 0; i < rec.exits.size(); ++i) {
    CHECK(rec.entries[i].now <= rec.exits[i].now);
    if (i) CHECK_FALSE(rec.entries[i].launch);
  }
  CHECK(h.counter("system.cpu0.vm_exits") == rec.exits.size());
  CHECK(h.counter("system.cpu0.vm_entries") == rec.entries.size());
  // The observer receives the same events: no second count anywhere.
  CHECK(obs.exits.value() == 5);
  CHECK(obs.entries.value() == 5);
  CHECK(obs.guest_instructions.value() == h.counter("system.cpu0.guest_instructions"));
  CHECK(obs.reason(kCpuid).cycles.count() == 3);
  CHECK(obs.reason(kVmcall).cycles.count() == 1);  // the final VMCALL is never re-entered
  CHECK_FALSE(obs.in_guest);
  CHECK(obs.guest_cycles.value() == obs.total_guest_cycles);
  std::uint64_t guest_cycles = 0;
  for (std::size_t i = 0; i < rec.exits.size(); ++i) guest_cycles += rec.exits[i].now - rec.entries[i].now;
  CHECK(obs.guest_cycles.value() == guest_cycles);
}

TEST_CASE("events: one cache-miss event per miss and level, matching the caches' own counters",
          "[events][cpu][cache]") {
  VmxHarness h;
  Recorder misses(ev::bit(ev::kCacheMiss));
  Recorder all(ev::bit(ev::kCacheAccess));
  struct Counts {
    std::uint64_t l1d_miss, l1d_acc, l1i_miss, l1i_acc, l2_miss, l2_acc, llc_miss, llc_acc;
  };
  auto read = [&] {
    return Counts{h.counter("system.cpu0_mem.l1d.misses"), h.counter("system.cpu0_mem.l1d.accesses"),
                  h.counter("system.cpu0_mem.l1i.misses"), h.counter("system.cpu0_mem.l1i.accesses"),
                  h.counter("system.cpu0_mem.l2.misses"),  h.counter("system.cpu0_mem.l2.accesses"),
                  h.counter("system.llc.misses"),          h.counter("system.llc.accesses")};
  };
  Counts before{}, after{};
  h.after_vmxon = [&](Core& c) {
    before = read();
    c.events().attach(misses);
    c.events().attach(all);
  };
  h.guest = [&](Core& c) {
    // 2 MiB at a 64-byte stride: misses in every level on the first pass,
    // L1 misses and L2 or LLC hits on the second; code fetches too.
    for (unsigned pass = 0; pass < 2; ++pass)
      for (std::uint64_t a = 0x400000; a < 0x600000; a += 64) c.load(a);
    c.fetch(0x800000, 4096);
  };
  h.after = [&](Core& c) {
    after = read();
    c.events().detach(misses);
    c.events().detach(all);
  };
  h.run();
  require_clean(h);
  CHECK(misses.data_misses[1] == after.l1d_miss - before.l1d_miss);
  CHECK(misses.fetch_misses == after.l1i_miss - before.l1i_miss);
  CHECK(misses.data_misses[2] == after.l2_miss - before.l2_miss);  // fetches too, below the L1I
  CHECK(misses.data_misses[3] == after.llc_miss - before.llc_miss);
  CHECK(misses.data_misses[2] > 30000);  // 2 MiB of lines missed the 1 MiB L2 at least once
  CHECK(misses.fetch_misses == 64);
  // A miss-only listener is never called for a hit.
  CHECK(misses.data_hits == std::array<std::uint64_t, 4>{});
  CHECK(misses.fetch_hits == 0);
  // An access listener sees every lookup of every level.
  CHECK(all.data_hits[1] + all.data_misses[1] == after.l1d_acc - before.l1d_acc);
  CHECK(all.fetch_hits + all.fetch_misses == after.l1i_acc - before.l1i_acc);
  CHECK(all.data_hits[2] + all.data_misses[2] == after.l2_acc - before.l2_acc);
  CHECK(all.data_hits[3] + all.data_misses[3] == after.llc_acc - before.llc_acc);
  CHECK(all.data_misses == misses.data_misses);
}

TEST_CASE("events: walk and TLB-miss events match the walker's and the TLBs' statistics", "[events][cpu][walk]") {
  VmxHarness h;
  constexpr std::uint64_t kRegion = 0x1800000;  // above the identity map: 4 KiB EPT pages
  constexpr unsigned kPages = 48;
  Recorder rec(ev::bit(ev::kWalk) | ev::bit(ev::kTlbMiss));
  vmx::stats::Group group(nullptr, "vm");
  vmx::cpu::VcpuObserver obs(&group, "vcpu0");
  struct Counts {
    std::uint64_t walks, refs, guest_refs, ept_refs, l1d, l1i, l2;
  };
  auto read = [&] {
    return Counts{h.counter("system.cpu0.walker.walks") + h.counter("system.cpu0.walker.ept_only_walks"),
                  h.counter("system.cpu0.walker.refs"),
                  h.counter("system.cpu0.walker.guest_refs"),
                  h.counter("system.cpu0.walker.ept_refs"),
                  h.counter("system.cpu0.tlb.l1d_misses"),
                  h.counter("system.cpu0.tlb.l1i_misses"),
                  h.counter("system.cpu0.tlb.l2_misses")};
  };
  Counts before{}, after{};
  h.setup = [&](Core& c) {
    for (unsigned p = 0; p < kPages; ++p)
      h.ept_map(c, kRegion + p * 4096ull, kRegion + p * 4096ull, ept::kRead | ept::kWrite | ept::kExecute);
    c.observe_vmcs(VmxHarness::kVmcs, &obs);
    before = read();
    c.events().attach(rec);
  };
  h.guest = [&](Core& c) {
    for (unsigned p = 0; p < kPages; ++p) c.load(kRegion + p * 4096ull + 8);
  };
  h.after = [&](Core& c) {
    after = read();
    c.events().detach(rec);
  };
  h.run();
  require_clean(h);
  REQUIRE(rec.walks.size() == after.walks - before.walks);
  CHECK(rec.walks.size() >= kPages);
  std::uint64_t refs = 0, guest_refs = 0, cycles = 0;
  for (const ev::Walk& w : rec.walks) {
    refs += w.refs;
    guest_refs += w.guest_refs;
    cycles += w.cycles;
    CHECK(w.guest);
    CHECK(w.outcome == ev::WalkOutcome::Ok);
    CHECK(w.refs >= 1);
  }
  CHECK(refs == after.refs - before.refs);
  CHECK(guest_refs == after.guest_refs - before.guest_refs);
  CHECK(refs - guest_refs == after.ept_refs - before.ept_refs);
  CHECK(rec.tlb_misses[1] == (after.l1d - before.l1d) + (after.l1i - before.l1i));
  CHECK(rec.tlb_misses[2] == after.l2 - before.l2);
  CHECK(rec.tlb_misses[2] == rec.walks.size());  // every STLB miss walks
  // The per-vCPU observer received the same walks.
  CHECK(obs.walks.value() == rec.walks.size());
  CHECK(obs.walk_refs.value() == refs);
  CHECK(obs.walk_cycles.value() == cycles);
  CHECK(obs.tlb_l2_misses.value() == rec.tlb_misses[2]);
}

TEST_CASE("events: with no listener attached a core reports nothing and counts as before", "[events][cpu]") {
  VmxHarness h;
  bool wanted = true;
  std::uint64_t unhalted = 0, now = 1;
  h.guest = [&](Core& c) {
    c.compute(10);
    wanted = c.events().wants_any(ev::kAll);
    unhalted = c.unhalted_cycles();
    now = c.now();
  };
  h.run();
  require_clean(h);
  CHECK_FALSE(wanted);
  CHECK(unhalted == now);  // the core has not halted yet: every cycle is unhalted
  CHECK(h.core().events().size() == 0);
  CHECK(h.counter("system.cpu0.guest_instructions") >= 11);
  CHECK(h.counter("system.cpu0.vm_exits") == 1);
}
