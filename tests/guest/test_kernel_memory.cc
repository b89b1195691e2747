// The guest kernel's memory (guest/kernel.cc) under the real hypervisor: a
// process maps a region, touches every page and unmaps it, in a loop. The
// kernel gives every frame back to its free list (its frames_free after the
// loop equals the figure before it, and dips by the region's pages inside
// each iteration), and reuses the same frames in the next iteration, so the
// host backs them once: the hypervisor's frames in use
// (hypervisor.frames.frames_used) grow in the first iteration and never after.
#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <systemc>

#include "guest/kernel.h"
#include "hypervisor/hypervisor.h"
#include "platform/platform.h"
#include "sim/stats.h"

namespace {

constexpr std::uint64_t kRegion = 64 * 1024;
constexpr std::uint64_t kPages = kRegion / 4096;
constexpr unsigned kRounds = 8;

double gauge(const vmx::stats::Group& root, const std::string& path) {
  const auto* g = dynamic_cast<const vmx::stats::Gauge*>(root.find(path));
  if (!g) throw std::runtime_error("no gauge " + path);
  return g->value();
}

struct Samples {
  double guest_free_before = -1, host_used_before = -1;
  std::vector<double> guest_free_mapped, guest_free_after, host_used_after;
  unsigned failures = 0;
  bool done = false;
};

// The program: its samples are test observations between its system calls.
struct MapUnmapLoop final : vmx::guest::Program {
  MapUnmapLoop(const vmx::stats::Group& r, Samples& s) : root(r), out(s) {}
  const vmx::stats::Group& root;
  Samples& out;
  bool finite() const override { return true; }
  void run(vmx::guest::Thread& t) override {
    out.guest_free_before = gauge(root, "vm.g.kernel.frames_free");
    out.host_used_before = gauge(root, "hypervisor.frames.frames_used");
    for (unsigned i = 0; i < kRounds; ++i) {
      const std::uint64_t va = t.mmap(kRegion);
      if (!va) {
        ++out.failures;
        continue;
      }
      for (std::uint64_t off = 0; off < kRegion; off += 4096) t.store(va + off, i + off);
      out.guest_free_mapped.push_back(gauge(root, "vm.g.kernel.frames_free"));
      if (!t.munmap(va)) ++out.failures;
      out.guest_free_after.push_back(gauge(root, "vm.g.kernel.frames_free"));
      out.host_used_after.push_back(gauge(root, "hypervisor.frames.frames_used"));
    }
    out.done = true;
  }
};

struct NoControl final : vmx::guest::RunControl {
  void thread_finished() override {}
};

}  // namespace

TEST_CASE("a guest process mapping and unmapping a region in a loop returns every frame, and the host backs "
          "them once",
          "[guest][memory][frames]") {
  vmx::stats::Group root(nullptr, "");
  auto pp = vmx::cfg::defaults<vmx::models::PlatformParams>();
  pp.cores = 1;
  pp.memory = 256ull << 20;
  vmx::models::Platform platform(pp, &root);
  vmx::hv::Hypervisor hv(vmx::cfg::defaults<vmx::hv::HypervisorParams>(), platform.cores(), pp.memory, pp.frequency,
                         &root);
  vmx::stats::Group& vg = root.subgroup("vm", "per-VM statistics").subgroup("g", "VM g");
  NoControl control;
  vmx::guest::Kernel kernel(vmx::cfg::defaults<vmx::guest::KernelParams>(), "g", 1, 32ull << 20, pp.frequency, 1,
                            &control, &vg);
  Samples s;
  kernel.add_process(std::make_shared<MapUnmapLoop>(root, s), 1, 4096);
  vmx::hv::VmSpec spec;
  spec.name = "g";
  spec.memory = 32ull << 20;
  spec.image = &kernel;
  hv.add_vm(spec);
  platform.core(0).set_reset_fiber(&hv.core_fiber(0));
  sc_core::sc_start(sc_core::sc_time(10, sc_core::SC_MS));

  INFO("crash: " << hv.vm_crash(0) << " panic: " << kernel.panic_message());
  REQUIRE(s.done);
  CHECK(s.failures == 0);
  REQUIRE(s.guest_free_after.size() == kRounds);
  INFO("guest frames free before " << s.guest_free_before << "; host frames used before " << s.host_used_before
                                   << ", after round 1 " << s.host_used_after[0]);
  CHECK(s.guest_free_before > kPages);
  for (unsigned i = 0; i < kRounds; ++i) {
    INFO("round " << i);
    // Mapped and touched: the region's frames are out; unmapped: all back.
    CHECK(s.guest_free_mapped[i] == s.guest_free_before - kPages);
    CHECK(s.guest_free_after[i] == s.guest_free_before);
    // The same guest frames each time: the host backed them in round 1.
    CHECK(s.host_used_after[i] == s.host_used_after[0]);
  }
  CHECK(s.host_used_after[0] >= s.host_used_before + kPages);
  CHECK(gauge(root, "vm.g.kernel.frames_free") == s.guest_free_before);
}
