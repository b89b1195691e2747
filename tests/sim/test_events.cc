// The event dispatcher (sim/events.h): listeners get only the kinds in
// their mask, in attachment order; attaching and detaching keep the
// one-branch test (wants) exact; the fixed listener array has a limit.
#include <catch2/catch.hpp>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "sim/events.h"

using namespace vmx::events;

namespace {

struct Log : Listener {
  Log(std::string n, std::vector<std::string>& out, Mask m) : Listener(m), name(std::move(n)), log(out) {}
  void retired(const Retired& e) override { log.push_back(name + ":retired " + std::to_string(e.instructions)); }
  void cache_access(const CacheAccess& e) override {
    log.push_back(name + ":L" + std::to_string(e.level) + (e.hit ? " hit" : " miss"));
  }
  void vm_exit(const VmExit& e) override { log.push_back(name + ":exit " + std::to_string(e.reason)); }
  std::string name;
  std::vector<std::string>& log;
};

}  // namespace

TEST_CASE("events: nobody listens until a listener is attached, and none after it is detached", "[events]") {
  Dispatcher d;
  std::vector<std::string> log;
  Log a("a", log, bit(kRetired));
  for (unsigned k = 0; k < kKinds; ++k) CHECK_FALSE(d.wants(static_cast<Kind>(k)));
  d.attach(a);
  CHECK(d.wants(kRetired));
  CHECK_FALSE(d.wants(kVmExit));
  d.attach(a);  // twice is once
  CHECK(d.size() == 1);
  d.retired({7, true});
  d.detach(a);
  CHECK_FALSE(d.wants(kRetired));
  d.retired({9, true});
  CHECK(log == std::vector<std::string>{"a:retired 7"});
  CHECK_FALSE(Dispatcher::none().wants_any(kAll));
}

TEST_CASE("events: each listener gets the kinds of its mask, in attachment order", "[events]") {
  Dispatcher d;
  std::vector<std::string> log;
  Log exits("x", log, bit(kVmExit));
  Log misses("m", log, bit(kCacheMiss));
  Log accesses("a", log, bit(kCacheAccess) | bit(kRetired));
  d.attach(exits);
  d.attach(misses);
  d.attach(accesses);
  d.retired({3, false});
  d.cache_access({0x1000, 1, false, false, false, false});  // an L1 miss: miss and access listeners
  d.cache_access({0x1000, 2, false, false, false, true});   // an L2 hit: the access listener only
  d.vm_exit({0x5000, 100, 0, 10, 1});
  CHECK(log == std::vector<std::string>{"a:retired 3", "m:L1 miss", "a:L1 miss", "a:L2 hit", "x:exit 10"});

  // Detaching the middle one keeps the others and their order.
  log.clear();
  d.detach(misses);
  CHECK(d.size() == 2);
  CHECK_FALSE(d.wants(kCacheMiss));
  CHECK(d.wants(kCacheAccess));
  d.cache_access({0x2000, 1, false, false, false, false});
  d.vm_exit({0x5000, 200, 0, 12, 1});
  CHECK(log == std::vector<std::string>{"a:L1 miss", "x:exit 12"});
}

TEST_CASE("events: a core takes at most kMaxListeners listeners", "[events]") {
  Dispatcher d;
  std::vector<std::string> log;
  std::vector<std::unique_ptr<Log>> ls;
  for (unsigned i = 0; i <= Dispatcher::kMaxListeners; ++i)
    ls.push_back(std::make_unique<Log>(std::to_string(i), log, bit(kVmExit)));
  for (unsigned i = 0; i < Dispatcher::kMaxListeners; ++i) d.attach(*ls[i]);
  CHECK_THROWS_AS(d.attach(*ls.back()), std::length_error);
  CHECK(d.size() == Dispatcher::kMaxListeners);
}
