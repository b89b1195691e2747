// The host frame allocator (hypervisor/frames.h): lowest-first order,
// splitting and merging of the three block sizes, reference counts, the
// reverse map, exhaustion, and its statistics.
#include <catch2/catch.hpp>

#include "hypervisor/frames.h"
#include "sim/stats.h"

using vmx::hv::FrameAllocator;
constexpr std::uint64_t k4K = FrameAllocator::k4K;
constexpr std::uint64_t k2M = FrameAllocator::k2M;
constexpr std::uint64_t k1G = FrameAllocator::k1G;

TEST_CASE("frames: 4 KiB allocations come lowest first, as a bump allocator's") {
  FrameAllocator fa;
  const unsigned z = fa.add_zone("hv", 0x200000, 0x400000);
  for (std::uint64_t i = 0; i < 512; ++i) REQUIRE(fa.alloc(z, k4K) == 0x200000 + i * k4K);
  CHECK(fa.alloc(z, k4K) == 0);  // exhausted
  CHECK(fa.free_bytes(z) == 0);
  CHECK(fa.used_bytes(z) == k2M);
}

TEST_CASE("frames: large blocks are aligned to their size and skip what does not fit") {
  FrameAllocator fa;
  // A zone starting off 2 MiB alignment, as guest memory above a 3 MiB reserve.
  const unsigned z = fa.add_zone("guest", 0x300000, 0x300000 + 8 * k2M);
  CHECK(fa.alloc(z, k2M) == 0x400000);
  CHECK(fa.alloc(z, k2M) == 0x600000);
  // The gap [3 MiB, 4 MiB) still serves 4 KiB frames, lowest first.
  CHECK(fa.alloc(z, k4K) == 0x300000);
  CHECK(fa.alloc(z, k1G) == 0);  // no aligned GiB in the zone
}

TEST_CASE("frames: a bump sequence of mixed allocations places every block where a bump allocator would") {
  // Each size in its own zone, as the hypervisor's layout does: the
  // allocator's order equals align-up-and-advance.
  FrameAllocator fa;
  const unsigned hv = fa.add_zone("hv", 0x200000, 64ull << 20);
  const unsigned guest = fa.add_zone("guest", 64ull << 20, 4 * k1G);
  std::uint64_t next_hv = 0x200000, next_guest = 64ull << 20;
  for (int i = 0; i < 200; ++i) {
    REQUIRE(fa.alloc(hv, k4K) == next_hv);
    next_hv += k4K;
    const std::uint64_t size = i < 100 ? k2M : k1G;
    const std::uint64_t want = (next_guest + size - 1) & ~(size - 1);
    if (want + size > 4 * k1G) {
      REQUIRE(fa.alloc(guest, size) == 0);
      continue;
    }
    REQUIRE(fa.alloc(guest, size) == want);
    next_guest = want + size;
  }
}

TEST_CASE("frames: freed frames merge back into large blocks") {
  FrameAllocator fa;
  const unsigned z = fa.add_zone("guest", 0, 2 * k2M);
  std::vector<std::uint64_t> small;
  for (int i = 0; i < 512; ++i) small.push_back(fa.alloc(z, k4K));  // splits the first 2 MiB
  CHECK(fa.alloc(z, k2M) == k2M);
  CHECK(fa.alloc(z, k2M) == 0);
  // 511 freed: not yet a 2 MiB block.
  for (int i = 0; i < 511; ++i) REQUIRE(fa.put(small[static_cast<std::size_t>(i)]));
  CHECK(fa.alloc(z, k2M) == 0);
  REQUIRE(fa.put(small[511]));
  CHECK(fa.alloc(z, k2M) == 0);  // merged, and at the lowest address
  CHECK(fa.free_bytes(z) == 0);
}

TEST_CASE("frames: 1 GiB blocks split on demand and merge back") {
  FrameAllocator fa;
  const unsigned z = fa.add_zone("guest", 0, k1G);
  const std::uint64_t a = fa.alloc(z, k4K);
  CHECK(a == 0);
  CHECK(fa.alloc(z, k1G) == 0);  // split: no whole GiB left
  CHECK(fa.alloc(z, k2M) == k2M);
  CHECK(fa.put(a));
  CHECK(fa.put(k2M));
  CHECK(fa.free_bytes(z) == k1G);
  CHECK(fa.alloc(z, k1G) == 0);  // merged again (the GiB at address 0)
  CHECK(fa.block_size(0) == k1G);
}

TEST_CASE("frames: freed frames are reused lowest first") {
  FrameAllocator fa;
  const unsigned z = fa.add_zone("hv", 0x200000, 0x300000);
  std::vector<std::uint64_t> f;
  for (int i = 0; i < 8; ++i) f.push_back(fa.alloc(z, k4K));
  fa.put(f[5]);
  fa.put(f[2]);
  CHECK(fa.alloc(z, k4K) == f[2]);
  CHECK(fa.alloc(z, k4K) == f[5]);
  CHECK(fa.alloc(z, k4K) == f[7] + k4K);
}

TEST_CASE("frames: a block is fresh until any part of it was allocated once") {
  FrameAllocator fa;
  const unsigned z = fa.add_zone("guest", 0, 2 * k2M);
  bool fresh = false;
  const std::uint64_t a = fa.alloc(z, k4K, &fresh);
  CHECK(fresh);
  fa.put(a);
  CHECK(fa.alloc(z, k4K, &fresh) == a);
  CHECK_FALSE(fresh);  // reused: may hold old contents
  fa.put(a);
  CHECK(fa.alloc(z, k2M, &fresh) == 0);
  CHECK_FALSE(fresh);  // contains the reused frame
  CHECK(fa.alloc(z, k2M, &fresh) == k2M);
  CHECK(fresh);
}

TEST_CASE("frames: reference counts keep a shared block until its last reference goes") {
  FrameAllocator fa;
  const unsigned z = fa.add_zone("guest", 0, k2M);
  const std::uint64_t a = fa.alloc(z, k4K);
  CHECK(fa.refcount(a) == 1);
  fa.get(a);
  fa.get(a);
  CHECK(fa.refcount(a) == 3);
  CHECK_FALSE(fa.put(a));
  CHECK_FALSE(fa.put(a));
  CHECK(fa.allocated(a));
  CHECK(fa.put(a));
  CHECK_FALSE(fa.allocated(a));
  CHECK(fa.refcount(a) == 0);
  CHECK_THROWS(fa.put(a));  // a double free is a hypervisor bug, caught
}

TEST_CASE("frames: the reverse map lists every (VM, guest-physical) pair mapping a block") {
  FrameAllocator fa;
  const unsigned z = fa.add_zone("guest", 0, k2M);
  const std::uint64_t a = fa.alloc(z, k4K);
  fa.rmap_add(a, {1, 0x1000});
  fa.get(a);
  fa.rmap_add(a, {2, 0x7000});  // shared by a second VM
  REQUIRE(fa.mappings(a).size() == 2);
  CHECK(fa.mappings(a)[1].vm == 2);
  CHECK(fa.mappings(a)[1].gpa == 0x7000);
  CHECK_FALSE(fa.put(a));
  CHECK_THROWS(fa.put(a));  // the last reference of a mapped block: refused
  CHECK(fa.refcount(a) == 1);
  fa.rmap_remove(a, {1, 0x1000});
  fa.rmap_remove(a, {2, 0x7000});
  CHECK(fa.mappings(a).empty());
  CHECK_THROWS(fa.rmap_remove(a, {2, 0x7000}));
  CHECK(fa.put(a));
}

TEST_CASE("frames: statistics count 4 KiB frames free, used and at the peak") {
  vmx::stats::Group root;
  FrameAllocator fa(&root);
  const unsigned hv = fa.add_zone("hv", 0, k2M);
  const unsigned guest = fa.add_zone("guest", k2M, 3 * k2M);
  auto gauge = [&](const char* name) {
    return static_cast<const vmx::stats::Gauge*>(root.find(std::string("frames.") + name))->value();
  };
  CHECK(gauge("frames_free") == 1536);
  const std::uint64_t a = fa.alloc(guest, k2M);
  const std::uint64_t b = fa.alloc(hv, k4K);
  CHECK(gauge("frames_used") == 513);
  CHECK(gauge("frames_free") == 1023);
  fa.put(a);
  fa.put(b);
  CHECK(gauge("frames_used") == 0);
  CHECK(gauge("frames_peak") == 513);
  CHECK(fa.alloc(guest, k1G) == 0);
  CHECK(static_cast<const vmx::stats::Counter*>(root.find("frames.failures"))->value() == 1);
}

TEST_CASE("frames: bad zones and sizes are refused") {
  FrameAllocator fa;
  CHECK_THROWS(fa.add_zone("odd", 0x1001, 0x3000));
  fa.add_zone("a", 0, k2M);
  CHECK_THROWS(fa.add_zone("b", k2M - k4K, 2 * k2M));
  CHECK_THROWS(fa.alloc(0, 8192));
}
