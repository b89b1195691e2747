// The memory-encryption engine alone (models/mem_crypt.h): AES-128-XTS per
// 64-byte line with the physical address as tweak, functional accesses
// through keyed addresses, and the key ID carried above MAXPHYADDR.
#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <cstring>

#include "models/mem_crypt.h"
#include "models/phys_mem.h"
#include "sim/params.h"

namespace {

using vmx::models::MemoryEncryption;
using vmx::models::PhysMem;
namespace m = vmx::models;

MemoryEncryption::Line line_of(std::uint8_t seed) {
  MemoryEncryption::Line l{};
  for (unsigned i = 0; i < l.size(); ++i) l[i] = static_cast<std::uint8_t>(seed + 7 * i);
  return l;
}

m::MemCryptParams enabled() {
  auto p = vmx::cfg::defaults<m::MemCryptParams>();
  p.enabled = true;
  return p;
}

}  // namespace

TEST_CASE("A keyed address: key ID in bits 57:52, outside RAM for PhysMem") {
  const std::uint64_t pa = 0x401040;
  const std::uint64_t k = pa | m::key_bits(3);
  CHECK(m::key_id_of(k) == 3);
  CHECK(m::strip_key(k) == pa);
  CHECK(m::key_id_of(pa) == 0);
  PhysMem mem(16 << 20);
  CHECK_FALSE(mem.contains(k, 8));
}

TEST_CASE("AES-XTS lines: the tweak is the address, the key is the key ID's, decryption inverts") {
  PhysMem mem(16 << 20);
  MemoryEncryption e(enabled(), mem);
  const auto plain = line_of(1);
  MemoryEncryption::Line c1{}, c2{}, c3{}, back{};
  e.encrypt_line(1, 0x1000, plain.data(), c1.data());
  e.encrypt_line(1, 0x1040, plain.data(), c2.data());  // same data, next line
  e.encrypt_line(2, 0x1000, plain.data(), c3.data());  // same line, another key
  CHECK(c1 != plain);
  CHECK(c1 != c2);
  CHECK(c1 != c3);
  e.decrypt_line(1, 0x1000, c1.data(), back.data());
  CHECK(back == plain);
  // The wrong key gives garbage, not the plaintext.
  e.decrypt_line(2, 0x1000, c1.data(), back.data());
  CHECK(back != plain);
  // Keys are the same in every run (reproducible statistics).
  MemoryEncryption e2(enabled(), mem);
  MemoryEncryption::Line again{};
  e2.encrypt_line(1, 0x1000, plain.data(), again.data());
  CHECK(again == c1);
}

TEST_CASE("Functional accesses through a key: memory holds ciphertext, a keyed read gives the plaintext back") {
  PhysMem mem(16 << 20);
  MemoryEncryption e(enabled(), mem);
  const std::uint64_t pa = 0x2038;  // crosses the line at 0x2040
  const std::uint64_t v = 0x1122334455667788ull, w = 0x99AABBCCDDEEFF00ull;
  e.write(pa | m::key_bits(5), &v, 8);
  e.write((pa + 8) | m::key_bits(5), &w, 8);
  std::uint64_t got[2] = {};
  e.read(pa | m::key_bits(5), got, 16);
  CHECK(got[0] == v);
  CHECK(got[1] == w);
  // The raw bytes (what the hypervisor and devices read) are ciphertext.
  std::uint64_t raw[2] = {};
  mem.read_bytes(pa, raw, 16);
  CHECK(raw[0] != v);
  CHECK(raw[1] != w);
  // Each line decrypts with key 5 at its own address.
  MemoryEncryption::Line line{};
  mem.read_bytes(0x2000, line.data(), 64);
  e.decrypt_line(5, 0x2000, line.data(), line.data());
  std::uint64_t first = 0;
  std::memcpy(&first, line.data() + 0x38, 8);
  CHECK(first == v);
  // fill() writes the ciphertext of the value.
  e.fill(0x3000 | m::key_bits(5), 0, 4096);
  std::uint64_t z = 1;
  e.read(0x3FF8 | m::key_bits(5), &z, 8);
  CHECK(z == 0);
  CHECK(mem.read(0x3FF8, 8) != 0);
}
