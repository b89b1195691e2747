// The hypervisor's ticket lock (hypervisor/spinlock.h) on simulated cores:
// takers are served in the order they drew their tickets, so a core that
// releases and retakes the lock at once queues behind the waiters, and a
// waiter's wait is bounded by the hold times of those ahead of it.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include <systemc>

#include "cpu/core.h"
#include "hypervisor/spinlock.h"
#include "platform/platform.h"
#include "sim/fiber.h"

namespace {

using vmx::cpu::Core;
using vmx::hv::LockStats;
using vmx::hv::TicketLock;

constexpr std::uint64_t kLockWord = 0x200000;  // host-physical, zero at reset
constexpr std::uint64_t kHold = 20'000;        // instructions in the critical section

struct Run {
  std::vector<unsigned> order;  // core ids in the order they got the lock (test observation)
  std::vector<std::uint64_t> wait;  // per acquisition, cycles from the attempt to holding it
  std::uint64_t hold_cycles = 0;    // cycles of one critical section on core 0
};

// Core 0 takes the lock, holds it, releases and retakes it at once; cores 1
// (and 2) try while core 0 holds it, core 2 after core 1.
Run contend(unsigned cores) {
  vmx::stats::Group root;
  auto params = vmx::cfg::defaults<vmx::models::PlatformParams>();
  params.cores = cores;
  params.memory = 64ull << 20;
  // Cores see each other's stores at most a quantum late (docs/model.md,
  // "Time"): a quantum far below the critical section makes arrival order
  // that of the cores' clocks.
  params.quantum = 100'000;  // 100 ns
  vmx::models::Platform platform(params, &root);
  LockStats stats(&root, "lock", "the lock under test");
  TicketLock lock(kLockWord, &stats);
  Run run;
  auto critical = [&](Core& c, std::uint64_t attempt) {
    run.wait.push_back(c.now() - attempt);
    run.order.push_back(c.id());
    const std::uint64_t t0 = c.now();
    c.compute(kHold);
    if (c.id() == 0 && !run.hold_cycles) run.hold_cycles = c.now() - t0;
  };
  std::vector<std::unique_ptr<vmx::sim::Fiber>> fibers;
  for (unsigned i = 0; i < cores; ++i) {
    fibers.push_back(std::make_unique<vmx::sim::Fiber>("taker", [&, i] {
      Core& c = Core::current();
      if (i > 0) c.compute(2'000 * i);  // arrive while core 0 holds the lock, in core order
      const unsigned rounds = i == 0 ? 2 : 1;
      for (unsigned r = 0; r < rounds; ++r) {
        const std::uint64_t attempt = c.now();
        lock.lock(c);
        critical(c, attempt);
        lock.unlock(c);
      }
      for (;;) c.hlt();
    }));
    platform.core(i).set_reset_fiber(fibers.back().get());
  }
  sc_core::sc_start(sc_core::sc_time(1, sc_core::SC_MS));
  CHECK(stats.acquisitions.value() == cores + 1);
  CHECK(stats.contended.value() == cores);  // everyone but core 0's first take waited
  return run;
}

}  // namespace

TEST_CASE("ticket lock: two cores take turns in arrival order") {
  Run r = contend(2);
  REQUIRE(r.order.size() == 3);
  // Core 0's immediate retake queues behind core 1, which arrived first.
  CHECK(r.order == std::vector<unsigned>{0, 1, 0});
}

TEST_CASE("ticket lock: three cores are served FIFO and each wait is bounded") {
  Run r = contend(3);
  REQUIRE(r.order.size() == 4);
  CHECK(r.order == std::vector<unsigned>{0, 1, 2, 0});
  REQUIRE(r.hold_cycles > 0);
  // A waiter waits at most for the holders ahead of it: core 2 for core 0's
  // and core 1's sections, core 0's retake for cores 1 and 2; plus the
  // hand-over costs (loads, PAUSEs, the locked XADD), well under a section.
  for (std::size_t k = 0; k < r.order.size(); ++k) CHECK(r.wait[k] <= 2 * r.hold_cycles + r.hold_cycles / 2);
  // Someone did wait: the lock was contended.
  CHECK(r.wait[2] > r.hold_cycles / 2);
}
