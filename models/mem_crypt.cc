#include "models/mem_crypt.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "models/phys_mem.h"

namespace vmx::models {

namespace {

// splitmix64 (Steele, Lea, Flood, OOPSLA 2014): the key material of each
// key ID, so every run has the same keys.
std::uint64_t splitmix(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

EVP_CIPHER_CTX* new_ctx(const unsigned char* key, bool encrypt) {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  if (!ctx) throw std::runtime_error("memory encryption: EVP_CIPHER_CTX_new failed");
  const int ok = encrypt ? EVP_EncryptInit_ex(ctx, EVP_aes_128_xts(), nullptr, key, nullptr)
                         : EVP_DecryptInit_ex(ctx, EVP_aes_128_xts(), nullptr, key, nullptr);
  if (ok != 1) {
    EVP_CIPHER_CTX_free(ctx);
    throw std::runtime_error("memory encryption: OpenSSL has no usable AES-128-XTS");
  }
  return ctx;
}

}  // namespace

MemoryEncryption::MemoryEncryption(const MemCryptParams& params, PhysMem& mem)
    : m_p(params), m_mem(mem), m_keys(params.key_ids + 1) {
  for (unsigned id = 1; id <= m_p.key_ids; ++id) {
    // AES-128-XTS takes two 128-bit keys (data and tweak, IEEE 1619-2007).
    std::uint64_t s = 0x5345562D4B455953ull ^ (std::uint64_t{id} << 32);  // "SEV-KEYS"
    unsigned char key[32];
    for (unsigned i = 0; i < 4; ++i) {
      const std::uint64_t w = splitmix(s);
      std::memcpy(key + 8 * i, &w, 8);
    }
    m_keys[id].enc = new_ctx(key, true);
    m_keys[id].dec = new_ctx(key, false);
  }
}

MemoryEncryption::~MemoryEncryption() {
  for (Key& k : m_keys) {
    EVP_CIPHER_CTX_free(static_cast<EVP_CIPHER_CTX*>(k.enc));
    EVP_CIPHER_CTX_free(static_cast<EVP_CIPHER_CTX*>(k.dec));
  }
}

// One XTS data unit: the line, with its physical address (little-endian,
// 16 bytes) as the tweak.
void MemoryEncryption::crypt(bool encrypt, unsigned key_id, std::uint64_t line_pa, const std::uint8_t* in,
                             std::uint8_t* out) const {
  if (!valid_key(key_id)) throw std::logic_error("memory encryption: key ID " + std::to_string(key_id) + " not valid");
  unsigned char tweak[16] = {};
  for (unsigned i = 0; i < 8; ++i) tweak[i] = static_cast<unsigned char>(line_pa >> (8 * i));
  auto* ctx = static_cast<EVP_CIPHER_CTX*>(encrypt ? m_keys[key_id].enc : m_keys[key_id].dec);
  int n = 0;
  const int ok = encrypt ? EVP_EncryptInit_ex(ctx, nullptr, nullptr, nullptr, tweak) &&
                               EVP_EncryptUpdate(ctx, out, &n, in, kLine)
                         : EVP_DecryptInit_ex(ctx, nullptr, nullptr, nullptr, tweak) &&
                               EVP_DecryptUpdate(ctx, out, &n, in, kLine);
  if (!ok || n != static_cast<int>(kLine)) throw std::runtime_error("memory encryption: AES-XTS failed");
}

void MemoryEncryption::encrypt_line(unsigned key_id, std::uint64_t line_pa, const std::uint8_t* in,
                                    std::uint8_t* out) const {
  crypt(true, key_id, line_pa, in, out);
}

void MemoryEncryption::decrypt_line(unsigned key_id, std::uint64_t line_pa, const std::uint8_t* in,
                                    std::uint8_t* out) const {
  crypt(false, key_id, line_pa, in, out);
}

template <class F>
void MemoryEncryption::each_line(std::uint64_t pa, std::uint64_t len, bool store, F edit) {
  const unsigned id = key_id_of(pa);
  std::uint64_t a = strip_key(pa);
  const std::uint64_t end = a + len;
  std::uint64_t done = 0;
  while (a < end) {
    const std::uint64_t line = a & ~std::uint64_t{kLine - 1};
    const unsigned off = static_cast<unsigned>(a - line);
    const unsigned n = static_cast<unsigned>(std::min<std::uint64_t>(kLine - off, end - a));
    std::uint8_t buf[kLine];
    m_mem.read_bytes(line, buf, kLine);
    decrypt_line(id, line, buf, buf);
    edit(buf + off, done, n);
    if (store) {
      encrypt_line(id, line, buf, buf);
      m_mem.write_bytes(line, buf, kLine);
    }
    a += n;
    done += n;
  }
}

void MemoryEncryption::read(std::uint64_t pa, void* dst, std::uint64_t len) const {
  auto* out = static_cast<std::uint8_t*>(dst);
  // Reading changes nothing: each_line with store = false.
  const_cast<MemoryEncryption*>(this)->each_line(
      pa, len, false, [out](std::uint8_t* p, std::uint64_t at, unsigned n) { std::memcpy(out + at, p, n); });
}

void MemoryEncryption::write(std::uint64_t pa, const void* src, std::uint64_t len) {
  const auto* in = static_cast<const std::uint8_t*>(src);
  each_line(pa, len, true, [in](std::uint8_t* p, std::uint64_t at, unsigned n) { std::memcpy(p, in + at, n); });
}

void MemoryEncryption::fill(std::uint64_t pa, std::uint8_t value, std::uint64_t len) {
  each_line(pa, len, true, [value](std::uint8_t* p, std::uint64_t, unsigned n) { std::memset(p, value, n); });
}

}  // namespace vmx::models
