// Dirty tracking on the real hypervisor (docs/memory.md, "Dirty tracking"):
// three VMs, one per mechanism (EPT write protection, EPT dirty flags, PML),
// run the same guest program; the hypervisor's timed jobs start logging and
// harvest the dirty pages. Each test case runs in its own process (SystemC
// elaborates once), so the mechanisms are compared within one simulation.
#define SC_INCLUDE_DYNAMIC_PROCESSES
#include <systemc>

#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cpu/core.h"
#include "hypervisor/hypervisor.h"
#include "platform/platform.h"
#include "sim/events.h"
#include "sim/fiber.h"
#include "sim/stats.h"

namespace {

using vmx::cpu::Core;
using vmx::hv::DirtyMode;

constexpr std::uint64_t kVmMemory = 16ull << 20;
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kMs = 1000000000ull;  // ps

// One vCPU with paging off (guest-physical = linear): backs `backed` pages
// by writing them, reports ready, waits for `go`, reads the pages of
// `reads`, writes each page of `writes` twice (two words), exits once
// (VMCALL: a PML drain), reports done and computes for ever.
struct Writer : vmx::abi::GuestImage {
  explicit Writer(std::string name) : fiber(std::move(name), [this] { main(); }) {}
  vmx::sim::Fiber fiber;
  std::uint64_t backed = 0;
  std::vector<std::uint64_t> reads, writes;
  bool ready = false, go = false, done = false;
  std::uint64_t go_at = 0;  // the job core's clock when it set `go`
  std::uint64_t written = 0;  // pages written so far
  std::uint64_t entry_point(unsigned) override { return vmx::cpu::code_address(&fiber); }
  void main() {
    Core& c = Core::current();
    for (std::uint64_t p = 0; p < backed; ++p) c.store(p * kPage, p);
    ready = true;
    // `go` is a host variable, seen at once: the guest goes on only when its
    // own clock has reached the time it was set (the cores' clocks differ by
    // up to a quantum), as it would see a flag in memory.
    while (!go || c.now() < go_at) c.compute(2000);
    for (std::uint64_t p : reads) c.load(p * kPage + 64);
    for (std::uint64_t p : writes) {
      c.store(p * kPage + 8, p + 1);
      c.store(p * kPage + 16, p + 2);
      ++written;
    }
    c.vmcall(0);
    done = true;
    for (;;) c.compute(5000);
  }
};

std::uint64_t counter(const vmx::stats::Group& root, const std::string& path) {
  const auto* g = dynamic_cast<const vmx::stats::Counter*>(root.find(path));
  if (!g) throw std::runtime_error("no counter " + path);
  return g->value();
}

struct Rig {
  vmx::stats::Group root{nullptr, ""};
  vmx::models::PlatformParams pp = [] {
    auto p = vmx::cfg::defaults<vmx::models::PlatformParams>();
    p.cores = 4;  // a core per VM, the jobs on core 3
    p.memory = 256ull << 20;
    return p;
  }();
  vmx::models::Platform platform{pp, &root};
  vmx::hv::HypervisorParams hp = [] {
    auto h = vmx::cfg::defaults<vmx::hv::HypervisorParams>();
    h.ept_ad = true;  // EPTP bit 6, needed by the dirty-flag modes
    return h;
  }();
  std::unique_ptr<vmx::hv::Hypervisor> hv;
  std::array<std::unique_ptr<Writer>, 3> guests;
  static constexpr std::array<DirtyMode, 3> kModes{DirtyMode::WriteProtect, DirtyMode::DirtyBits, DirtyMode::Pml};
  static constexpr std::array<const char*, 3> kNames{"wp", "dbit", "pml"};

  // Each VM backs `backed` pages, reads `reads` and writes `writes` after
  // logging started at `start_ms` on core 3.
  void build(std::uint64_t backed, const std::vector<std::uint64_t>& reads,
             const std::vector<std::uint64_t>& writes) {
    hv = std::make_unique<vmx::hv::Hypervisor>(hp, platform.cores(), pp.memory, pp.frequency, &root);
    for (unsigned i = 0; i < 3; ++i) {
      guests[i] = std::make_unique<Writer>(std::string(kNames[i]) + ".vcpu0");
      guests[i]->backed = backed;
      guests[i]->reads = reads;
      guests[i]->writes = writes;
      vmx::hv::VmSpec s;
      s.name = kNames[i];
      s.memory = kVmMemory;
      s.image = guests[i].get();
      s.pin = {i};
      hv->add_vm(s);
    }
    for (unsigned i = 0; i < platform.core_count(); ++i) platform.core(i).set_reset_fiber(&hv->core_fiber(i));
  }
  // Starts logging once every guest is ready (looking again every ms),
  // then harvests once every guest is done.
  void start_at(std::uint64_t ps) {
    hv->at(ps, 3, [this, ps](Core& c) {
      for (auto& g : guests)
        if (!g->ready) return start_at(ps + kMs);
      for (unsigned i = 0; i < 3; ++i) {
        hv->dirty_log_start(c, i, kModes[i]);
        guests[i]->go_at = c.now();
        guests[i]->go = true;
      }
      collect_at(ps + kMs);
    });
  }
  std::array<std::vector<std::uint64_t>, 3> collected;
  bool harvested = false;
  void collect_at(std::uint64_t ps) {
    hv->at(ps, 3, [this, ps](Core& c) {
      for (auto& g : guests)
        if (!g->done) return collect_at(ps + kMs);
      for (unsigned i = 0; i < 3; ++i) collected[i] = hv->dirty_log_collect(c, i);
      harvested = true;
    });
  }
  std::uint64_t stat(unsigned vm, const std::string& name) {
    return counter(root, std::string("vm.") + kNames[vm] + ".dirty_log." + name);
  }
};

}  // namespace

TEST_CASE("each tracking mechanism reports exactly the pages the guest wrote, reads not", "[hypervisor][dirty]") {
  Rig r;
  std::vector<std::uint64_t> reads, writes;
  for (std::uint64_t p = 0; p < 200; p += 3) writes.push_back(p);  // 67 pages, each written twice
  for (std::uint64_t p = 1; p < 200; p += 3) reads.push_back(p);   // read only
  r.build(256, reads, writes);
  r.start_at(1 * kMs);
  sc_core::sc_start(sc_core::sc_time(20, sc_core::SC_MS));
  REQUIRE(r.harvested);
  for (unsigned i = 0; i < 3; ++i) {
    INFO(Rig::kNames[i]);
    CHECK(r.collected[i] == writes);
    CHECK(r.stat(i, "rounds") == 1);
    CHECK(r.stat(i, "pages_dirty") == writes.size());
  }
  // Write protection: one exit per page per round (the second write to a
  // page does not exit).
  CHECK(r.stat(0, "wp_exits") == writes.size());
  CHECK(r.stat(0, "scans") == 0);
  // Dirty flags: no exit; one scan to start (clearing), one to harvest, each
  // reading every leaf (the 256 pages backed).
  CHECK(r.stat(1, "wp_exits") == 0);
  CHECK(r.stat(1, "scans") == 2);
  CHECK(r.stat(1, "scan_leaves") == 2 * 256);
  CHECK(r.stat(1, "scan_cycles") > 0);
  // PML: every page logged once, drained at the VMCALL exit; no log-full.
  CHECK(r.stat(2, "wp_exits") == 0);
  CHECK(r.stat(2, "pml_entries") == writes.size());
  CHECK(r.stat(2, "pml_full_exits") == 0);
}

namespace {
// Records, at each PML-full exit of core 2, how many pages the guest had
// written.
struct PmlFullProbe final : vmx::events::Listener {
  explicit PmlFullProbe(const Writer& w) : Listener(vmx::events::bit(vmx::events::kVmExit)), guest(w) {}
  void vm_exit(const vmx::events::VmExit& e) override {
    if (e.reason == 62) at.push_back(guest.written);
  }
  const Writer& guest;
  std::vector<std::uint64_t> at;
};
}  // namespace

TEST_CASE("PML: the log-full exit comes before the 513th newly dirtied page, and the log starts at index 511",
          "[hypervisor][dirty]") {
  Rig r;
  std::vector<std::uint64_t> writes;
  for (std::uint64_t p = 0; p < 1200; ++p) writes.push_back(p);
  r.build(1200, {}, writes);
  PmlFullProbe probe(*r.guests[2]);
  r.platform.core(2).events().attach(probe);
  r.start_at(1 * kMs);
  sc_core::sc_start(sc_core::sc_time(40, sc_core::SC_MS));
  REQUIRE(r.harvested);
  // 512 pages fill the log (indices 511 down to 0); the write to the 513th
  // exits before it happens (SDM Vol. 3C, 29.3.6), and again after 1024.
  REQUIRE(probe.at == std::vector<std::uint64_t>{512, 1024});
  CHECK(r.stat(2, "pml_full_exits") == 2);
  CHECK(r.stat(2, "pml_entries") == 1200);
  CHECK(r.collected[2] == writes);
  CHECK(r.collected[0] == writes);
  CHECK(r.collected[1] == writes);
}

TEST_CASE("for the same dirty set, PML takes far fewer exits than write protection, dirty-flag scanning none",
          "[hypervisor][dirty]") {
  Rig r;
  std::vector<std::uint64_t> writes;
  for (std::uint64_t p = 0; p < 2048; p += 2) writes.push_back(p);  // 1024 pages of 2048
  r.build(2048, {}, writes);
  r.start_at(1 * kMs);
  sc_core::sc_start(sc_core::sc_time(60, sc_core::SC_MS));
  REQUIRE(r.harvested);
  for (unsigned i = 0; i < 3; ++i) CHECK(r.collected[i] == writes);
  const std::uint64_t wp = r.stat(0, "wp_exits"), pml = r.stat(2, "pml_full_exits");
  CHECK(wp == 1024);
  // The 513th page finds the log full; pages 513 to 1024 fill it again and
  // the VMCALL exit drains them.
  CHECK(pml == 1);
  CHECK(r.stat(2, "pml_entries") == 1024);
  CHECK(pml * 100 < wp);
  CHECK(r.stat(1, "wp_exits") + r.stat(1, "pml_full_exits") == 0);
  CHECK(r.stat(1, "scan_leaves") == 2 * 2048);  // the cost it pays instead: every leaf, twice
  CHECK(r.stat(1, "scan_cycles") > 2 * 2048);
  // The exits the cores counted agree: the EPT-violation exits of the
  // write-protected VM include one per dirtied page.
  CHECK(counter(r.root, "vm.wp.vcpu0.exits") >= 1024 + 2048);  // + the 2048 backing faults
}

TEST_CASE("large EPT pages: write protection splits lazily at the first write, the dirty-flag modes eagerly",
          "[hypervisor][dirty]") {
  Rig r;
  r.hp.ept_page_size = 2ull << 20;
  r.hp.dirty_log.split = "lazy";
  std::vector<std::uint64_t> writes;
  for (std::uint64_t p : {3u, 700u, 701u, 2000u}) writes.push_back(p);  // in 2 MiB pages 0, 1 and 3
  r.build(4096, {}, writes);  // backs all 8 large pages
  r.start_at(1 * kMs);
  sc_core::sc_start(sc_core::sc_time(40, sc_core::SC_MS));
  REQUIRE(r.harvested);
  for (unsigned i = 0; i < 3; ++i) {
    INFO(Rig::kNames[i]);
    CHECK(r.collected[i] == writes);  // 4 KiB granularity in every mode
  }
  CHECK(r.stat(0, "split_pages") == 3);  // only the large pages written
  CHECK(r.stat(0, "wp_exits") == 4);
  CHECK(r.stat(1, "split_pages") == 8);  // all of them when logging started
  CHECK(r.stat(2, "split_pages") == 8);
}
