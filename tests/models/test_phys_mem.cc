#include "models/phys_mem.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

using vmx::models::PhysMem;

namespace {
constexpr std::uint64_t kGiB = 1ull << 30;
}

TEST_CASE("frames are allocated on first touch only", "[phys_mem]") {
  PhysMem mem(4 * kGiB);
  CHECK(mem.size() == 4 * kGiB);
  CHECK(mem.frames_allocated() == 0);

  mem.write(0x0, 1, 1);
  mem.write(0x10, 2, 1);           // same frame
  mem.write(0x1000, 3, 4);         // second frame
  mem.write(3 * kGiB + 5, 4, 8);   // another GiB
  CHECK(mem.frames_allocated() == 3);

  // Reads of untouched memory are zero and do not allocate.
  CHECK(mem.read(2 * kGiB, 8) == 0);
  std::vector<std::uint8_t> buf(10000, 0xAA);
  mem.read_bytes(kGiB + 100, buf.data(), buf.size());
  CHECK(buf == std::vector<std::uint8_t>(10000, 0));
  CHECK(mem.frame_if_present(2 * kGiB) == nullptr);
  CHECK(mem.frames_allocated() == 3);

  // frame() allocates a zeroed frame once and returns it again afterwards.
  std::uint8_t* f = mem.frame(2 * kGiB + 0x123);
  CHECK(mem.frames_allocated() == 4);
  CHECK(mem.frame(2 * kGiB) == f);
  CHECK(mem.frame_if_present(2 * kGiB + 0xFFF) == f);
  CHECK(mem.frames_allocated() == 4);
  for (unsigned i = 0; i < PhysMem::kFrameSize; ++i) REQUIRE(f[i] == 0);

  // frame() points at the contents read() sees.
  f[0x10] = 0x5A;
  CHECK(mem.read(2 * kGiB + 0x10, 1) == 0x5A);
  CHECK(mem.frame_if_present(0x10)[0x10] == 2);
}

TEST_CASE("little-endian loads and stores of every size", "[phys_mem]") {
  PhysMem mem(1 * kGiB);
  mem.write(0x100, 0x1122334455667788ull, 8);
  CHECK(mem.read(0x100, 1) == 0x88);
  CHECK(mem.read(0x100, 2) == 0x7788);
  CHECK(mem.read(0x100, 4) == 0x55667788);
  CHECK(mem.read(0x104, 4) == 0x11223344);
  CHECK(mem.read(0x107, 1) == 0x11);

  // A narrow store writes only its own bytes.
  mem.write(0x102, 0xABCDEF, 2);
  CHECK(mem.read(0x100, 8) == 0x11223344CDEF7788ull);
}

TEST_CASE("accesses crossing a frame boundary", "[phys_mem]") {
  const unsigned size = GENERATE(2u, 4u, 8u);
  const std::uint64_t pa = 0x1000 - GENERATE(1u, 3u, 7u);
  if (pa + size <= 0x1000) return;  // not a crossing access
  PhysMem mem(1 * kGiB);
  const std::uint64_t value = 0x0102030405060708ull & (size == 8 ? ~0ull : (1ull << (8 * size)) - 1);
  mem.write(pa, value, size);
  CHECK(mem.frames_allocated() == 2);
  CHECK(mem.read(pa, size) == value);
  for (unsigned i = 0; i < size; ++i) CHECK(mem.read(pa + i, 1) == ((value >> (8 * i)) & 0xFF));
  CHECK(mem.frame_if_present(0x1000)[0] == ((value >> (8 * (0x1000 - pa))) & 0xFF));
}

TEST_CASE("bulk copies span many frames", "[phys_mem]") {
  PhysMem mem(1 * kGiB);
  std::vector<std::uint8_t> in(3 * PhysMem::kFrameSize + 300);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<std::uint8_t>(i * 7 + 1);
  const std::uint64_t pa = 0x5F00;  // 0x5F00 .. 0x906B: frames 5, 6, 7, 8, 9
  mem.write_bytes(pa, in.data(), in.size());
  CHECK(mem.frames_allocated() == 5);
  std::vector<std::uint8_t> out(in.size());
  mem.read_bytes(pa, out.data(), out.size());
  CHECK(out == in);
  CHECK(mem.read(0x5EFF, 1) == 0);
  CHECK(mem.read(pa + in.size(), 1) == 0);
}

TEST_CASE("out-of-range accesses throw with the address in hex", "[phys_mem]") {
  const std::uint64_t size = kGiB + 0x2000;  // not a whole number of GiB
  PhysMem mem(size);
  CHECK(mem.contains(0));
  CHECK(mem.contains(size - 1));
  CHECK(mem.contains(size - 8, 8));
  CHECK_FALSE(mem.contains(size));
  CHECK_FALSE(mem.contains(size - 4, 8));
  CHECK_FALSE(mem.contains(~0ull - 2, 8));

  mem.write(size - 8, 0xDEADBEEF, 8);  // the last frame of a partial GiB works
  CHECK(mem.read(size - 8, 8) == 0xDEADBEEF);

  CHECK_THROWS_WITH(mem.read(size, 1), Catch::Contains("0x40002000"));
  CHECK_THROWS_AS(mem.read(size, 1), std::out_of_range);
  CHECK_THROWS_AS(mem.write(size - 4, 0, 8), std::out_of_range);
  CHECK_THROWS_WITH(mem.frame(0x123456789ull), Catch::Contains("0x123456789"));
  CHECK_THROWS_AS(mem.frame_if_present(size), std::out_of_range);
  std::uint8_t buf[16];
  CHECK_THROWS_AS(mem.read_bytes(size - 8, buf, 16), std::out_of_range);
  CHECK_THROWS_AS(mem.write_bytes(size - 8, buf, 16), std::out_of_range);
  CHECK(mem.frames_allocated() == 1);
}

TEST_CASE("invalid sizes are rejected", "[phys_mem]") {
  CHECK_THROWS_AS(PhysMem(0), std::invalid_argument);
  CHECK_THROWS_AS(PhysMem(4097), std::invalid_argument);
  PhysMem mem(1 * kGiB);
  CHECK_THROWS_AS(mem.read(0, 3), std::invalid_argument);
  CHECK_THROWS_AS(mem.write(0, 0, 16), std::invalid_argument);
}

TEST_CASE("frames carved from 2 MiB host chunks are distinct, zeroed, and counted one by one", "[phys_mem]") {
  // 700 frames in a scattered order span two chunks (512 frames each).
  PhysMem mem(4 * kGiB);
  mem.set_host_limit(700 * PhysMem::kFrameSize);
  std::set<const std::uint8_t*> hosts;
  std::set<std::uintptr_t> chunks;
  for (std::uint64_t i = 0; i < 700; ++i) {
    const std::uint64_t pa = ((i * 7919) % 1000000) * PhysMem::kFrameSize;
    std::uint8_t* f = mem.frame(pa);
    CHECK(reinterpret_cast<std::uintptr_t>(f) % PhysMem::kFrameSize == 0);
    CHECK(std::count(f, f + PhysMem::kFrameSize, 0) == static_cast<long>(PhysMem::kFrameSize));
    std::memset(f, 0xA5, PhysMem::kFrameSize);
    hosts.insert(f);
    chunks.insert(reinterpret_cast<std::uintptr_t>(f) & ~std::uintptr_t(PhysMem::kChunkSize - 1));
    CHECK(mem.frames_allocated() == i + 1);
  }
  CHECK(hosts.size() == 700);
  CHECK(chunks.size() == 2);
  CHECK(mem.read(7919 * PhysMem::kFrameSize, 8) == 0xA5A5A5A5A5A5A5A5ull);
  // The guard is exact: the 701st frame is refused though its chunk has room.
  CHECK_THROWS_AS(mem.frame(999999 * PhysMem::kFrameSize), vmx::models::HostMemoryLimit);
  CHECK(mem.frames_allocated() == 700);
  CHECK(mem.frame(7919 * PhysMem::kFrameSize) != nullptr);  // frames already touched stay usable
}
