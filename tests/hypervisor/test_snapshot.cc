// Snapshots of a running VM (docs/memory.md, "Snapshots", scenario S7):
// copy-before-write through EPT write protection, the background copier,
// and the restore, checked by checksums the guest itself computes over its
// pages and by the snapshot's statistics.
#define SC_INCLUDE_DYNAMIC_PROCESSES
#include <systemc>

#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cpu/core.h"
#include "hypervisor/hypervisor.h"
#include "platform/platform.h"
#include "sim/fiber.h"
#include "sim/stats.h"

namespace {

using vmx::cpu::Core;

constexpr std::uint64_t kVmMemory = 16ull << 20;
constexpr std::uint64_t kPage = 4096, kWords = kPage / 8;
constexpr std::uint64_t kMs = 1000000000ull;  // ps

std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return x;
}

std::uint64_t counter(const vmx::stats::Group& root, const std::string& path) {
  const auto* g = dynamic_cast<const vmx::stats::Counter*>(root.find(path));
  if (!g) throw std::runtime_error("no counter " + path);
  return g->value();
}

// Paging off (guest-physical = linear). Fills `pages` pages with pattern A,
// waits for the snapshot, checksums them, overwrites the pages of
// `rewrite` (whole pages) and writes `fresh` pages above them (backed only
// now), checksums again, waits for the restore and checksums a last time.
struct Guest : vmx::abi::GuestImage {
  explicit Guest(std::string name) : fiber(std::move(name), [this] { main(); }) {}
  vmx::sim::Fiber fiber;
  std::uint64_t pages = 0, fresh = 0;
  std::vector<std::uint64_t> rewrite;
  bool ready = false, snapped = false, done = false, restored = false, finished = false;
  std::uint64_t sum_before = 0, sum_written = 0, sum_after = 0, fresh_after = ~0ull;
  std::uint64_t entry_point(unsigned) override { return vmx::cpu::code_address(&fiber); }
  std::uint64_t checksum(Core& c) {
    std::uint64_t s = 0;
    for (std::uint64_t a = 0; a < pages * kPage; a += 8) s = mix(s ^ c.load(a)) + a;
    return s;
  }
  void main() {
    Core& c = Core::current();
    for (std::uint64_t a = 0; a < pages * kPage; a += 8) c.store(a, mix(a + 1));
    ready = true;
    while (!snapped) c.compute(2000);
    sum_before = checksum(c);
    for (std::uint64_t p : rewrite)
      for (std::uint64_t w = 0; w < kWords; ++w) c.store(p * kPage + 8 * w, mix(p * 7 + w));
    for (std::uint64_t p = pages; p < pages + fresh; ++p) c.store(p * kPage, 0xF00D);
    sum_written = checksum(c);
    done = true;
    while (!restored) c.compute(2000);
    sum_after = checksum(c);
    fresh_after = c.load(pages * kPage);
    finished = true;
    for (;;) c.compute(5000);
  }
};

struct Rig {
  vmx::stats::Group root{nullptr, ""};
  vmx::models::PlatformParams pp = [] {
    auto p = vmx::cfg::defaults<vmx::models::PlatformParams>();
    p.cores = 2;  // the guest on core 0, the copier and the jobs on core 1
    p.memory = 256ull << 20;
    return p;
  }();
  vmx::models::Platform platform{pp, &root};
  vmx::hv::HypervisorParams hp = [] {
    auto h = vmx::cfg::defaults<vmx::hv::HypervisorParams>();
    h.snapshot.copier_core = 1;
    return h;
  }();
  std::unique_ptr<vmx::hv::Hypervisor> hv;
  std::unique_ptr<Guest> guest;
  double frames_before_restore = 0, frames_after_restore = 0;
  bool wait_complete = false;  // restore only once every page is saved

  void build() {
    hv = std::make_unique<vmx::hv::Hypervisor>(hp, platform.cores(), pp.memory, pp.frequency, &root);
    vmx::hv::VmSpec s;
    s.name = "vm";
    s.memory = kVmMemory;
    s.image = guest.get();
    s.pin = {0};
    hv->add_vm(s);
    for (unsigned i = 0; i < platform.core_count(); ++i) platform.core(i).set_reset_fiber(&hv->core_fiber(i));
    snapshot_at(1 * kMs);
  }
  double frames_used() const {
    return dynamic_cast<const vmx::stats::Gauge*>(root.find("hypervisor.frames.frames_used"))->value();
  }
  // The snapshot once the guest is ready, the restore once it is done
  // (looking again every ms).
  void snapshot_at(std::uint64_t ps) {
    hv->at(ps, 1, [this, ps](Core& c) {
      if (!guest->ready) return snapshot_at(ps + kMs);
      hv->snapshot_take(c, 0);
      guest->snapped = true;
      restore_at(ps + kMs);
    });
  }
  void restore_at(std::uint64_t ps) {
    hv->at(ps, 1, [this, ps](Core& c) {
      if (!guest->done || (wait_complete && stat("complete_cycles") == 0)) return restore_at(ps + kMs);
      frames_before_restore = frames_used();
      hv->snapshot_restore(c, 0);
      frames_after_restore = frames_used();
      guest->restored = true;
    });
  }
  std::uint64_t stat(const std::string& name) { return counter(root, "vm.vm.snapshot." + name); }
};

}  // namespace

TEST_CASE("snapshot: writes after it copy each page once before the write and the restore gives back the old contents",
          "[hypervisor][snapshot]") {
  Rig r;
  r.hp.snapshot.copier_interval = 1000 * kMs;  // the copier never runs: every save is a copy-before-write
  r.guest = std::make_unique<Guest>("vm.vcpu0");
  r.guest->pages = 64;
  r.guest->fresh = 4;
  for (std::uint64_t p = 0; p < 64; p += 4) r.guest->rewrite.push_back(p);  // 16 pages
  r.build();
  sc_core::sc_start(sc_core::sc_time(40, sc_core::SC_MS));
  REQUIRE(r.guest->finished);
  CHECK(r.guest->sum_written != r.guest->sum_before);
  CHECK(r.guest->sum_after == r.guest->sum_before);  // exactly the old contents
  CHECK(r.guest->fresh_after == 0);  // a page backed after the snapshot is unbacked again (reads as zero)
  CHECK(r.stat("pages") == 64);
  CHECK(r.stat("exits") == 16);  // one per page rewritten; the 4 fresh pages fault as not present
  CHECK(r.stat("cow_pages") == 16);
  CHECK(r.stat("copier_pages") == 0);
  CHECK(r.stat("bytes_copied") == 16 * kPage);
  CHECK(r.stat("restored_pages") == 16);
  CHECK(r.stat("dropped_pages") == 4);
  // The store's 16 frames and the 4 dropped pages went back.
  CHECK(r.frames_before_restore - r.frames_after_restore == 16 + 4);
}

TEST_CASE("snapshot: the background copier saves the untouched pages, on its core, and tracking ends with it",
          "[hypervisor][snapshot]") {
  Rig r;
  r.hp.snapshot.copier_interval = kMs / 10;
  r.hp.snapshot.copier_batch = 8;
  r.wait_complete = true;
  r.guest = std::make_unique<Guest>("vm.vcpu0");
  r.guest->pages = 64;
  r.guest->fresh = 0;
  for (std::uint64_t p = 1; p < 64; p += 8) r.guest->rewrite.push_back(p);  // 8 pages
  r.build();
  sc_core::sc_start(sc_core::sc_time(40, sc_core::SC_MS));
  REQUIRE(r.guest->finished);
  CHECK(r.guest->sum_after == r.guest->sum_before);
  // Every page saved exactly once, by one of the two paths.
  CHECK(r.stat("cow_pages") + r.stat("copier_pages") == 64);
  CHECK(r.stat("bytes_copied") == 64 * kPage);
  CHECK(r.stat("copier_runs") * 8 >= r.stat("copier_pages"));  // at most a batch a run
  CHECK(r.stat("copier_pages") >= 64 - 8);
  CHECK(r.stat("copier_cycles") > 0);
  CHECK(r.stat("complete_cycles") > 0);
  CHECK(r.stat("restored_pages") == 64);
  CHECK(counter(r.root, "vm.vm.dirty_log.starts") == 1);
}
