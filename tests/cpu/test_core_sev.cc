// SEV-like confidential VMs on the real Core (tests/cpu/vmx_harness.h,
// models/mem_crypt.h, docs/protection.md "S11"): the guest's private pages
// (C-bit set in its page-table entries) hold ciphertext under the VM's key,
// shared pages hold plaintext; the hypervisor and device DMA see the raw
// bytes; EPT is checked before any line is decrypted; and every DRAM fill
// of a private line pays the engine, so the slowdown follows the miss rate.
// Each TEST_CASE builds one machine in its own process.
#include <catch2/catch.hpp>

#include <tlm>

#include <array>
#include <cstdint>
#include <cstring>

#include "cpu/core.h"
#include "cpu/vmx.h"
#include "cpu/vmx_harness.h"
#include "mmu/paging.h"
#include "models/dma.h"
#include "models/mem_crypt.h"

namespace {

using vmx::cpu::Core;
using vmx::test::Exit;
using vmx::test::VmxHarness;
namespace field = vmx::cpu::field;
namespace crb = vmx::mmu::crbits;
namespace ept = vmx::mmu::ept;
namespace pte = vmx::mmu::pte;
namespace m = vmx::models;

constexpr unsigned kVmcall = 18, kEptViolation = 48;
constexpr unsigned kKeyId = 1;
constexpr std::uint64_t kCbit = 1ull << 47;  // memory_encryption.c_bit's default
constexpr std::uint64_t kDmaCall = 0x444D41;  // "DMA"
constexpr std::uint64_t kPw = pte::kPresent | pte::kWritable;

// Guest page tables (guest-physical = host-physical below 16 MiB, the
// harness's identity EPT): 2 MiB private pages over 0-16 MiB except 4-6 MiB
// and the shared 12-16 MiB, a page table for 4-6 MiB whose page kShared is
// shared and the rest private, and a private 2 MiB page at 32 MiB, outside
// the EPT, for the EPT-before-decryption test.
constexpr std::uint64_t kPml4 = 0x300000, kPdpt = 0x301000, kPd = 0x302000, kPt = 0x303000;
constexpr std::uint64_t kPriv = 0x400000, kShared = 0x401000;
constexpr std::uint64_t kPrivBuf = 0x800000, kSharedBuf = 0xC00000, kBufBytes = 4ull << 20;
constexpr std::uint64_t kOutside = 0x2000000;

void build_paging(Core& c) {
  c.store(kPml4, kPdpt | kPw);
  c.store(kPdpt, kPd | kPw);
  for (std::uint64_t i = 0; i < 8; ++i) {
    const std::uint64_t shared = i >= 6 ? 0 : kCbit;
    c.store(kPd + 8 * i, i == 2 ? (kPt | kPw) : ((i << 21) | kPw | pte::kPageSize | shared));
  }
  for (std::uint64_t j = 0; j < 512; ++j) {
    const std::uint64_t page = 0x400000 + j * 0x1000;
    c.store(kPt + 8 * j, page | kPw | (page == kShared ? 0 : kCbit));
  }
  c.store(kPd + 8 * 16, kOutside | kPw | pte::kPageSize | kCbit);
  c.write_cr(4, crb::kCr4Pae);
  c.write_cr(3, kPml4);
  c.write_cr(0, crb::kCr0Pe | crb::kCr0Pg | crb::kCr0Wp);
}

vmx::models::PlatformParams sev_platform(bool with_io = false) {
  auto p = VmxHarness::small_platform();
  p.memory_encryption.enabled = true;
  p.nic.enabled = with_io;
  return p;
}

std::uint64_t pattern(unsigned i) { return 0x5345563000000000ull + 0x0101010101ull * i; }

/// The VM's key selected in the VMCS before VMLAUNCH.
void select_key(VmxHarness& h) {
  h.setup = [&h](Core& c) { h.vmw(c, field::kEncryptionKeyId, kKeyId); };
}

/// The raw line at pa (the hypervisor's physical loads), decrypted with the VM's key.
m::MemoryEncryption::Line decrypt_raw(VmxHarness& h, Core& c, std::uint64_t line_pa) {
  m::MemoryEncryption::Line raw{};
  for (unsigned i = 0; i < 8; ++i) {
    const std::uint64_t q = c.load(line_pa + 8 * i);
    std::memcpy(raw.data() + 8 * i, &q, 8);
  }
  h.platform().memory_encryption()->decrypt_line(kKeyId, line_pa, raw.data(), raw.data());
  return raw;
}

std::uint64_t qword(const m::MemoryEncryption::Line& l, unsigned i) {
  std::uint64_t q;
  std::memcpy(&q, l.data() + 8 * i, 8);
  return q;
}

}  // namespace

TEST_CASE("S11: the hypervisor reads ciphertext of a private page that decrypts to the guest's data; a shared page reads in the clear") {
  VmxHarness h(sev_platform());
  select_key(h);
  std::array<std::uint64_t, 8> guest_priv{}, guest_shared{};
  h.guest = [&](Core& c) {
    build_paging(c);
    for (unsigned i = 0; i < 8; ++i) {
      c.store(kPriv + 8 * i, pattern(i));
      c.store(kShared + 8 * i, pattern(i));
    }
    for (unsigned i = 0; i < 8; ++i) {
      guest_priv[i] = c.load(kPriv + 8 * i);
      guest_shared[i] = c.load(kShared + 8 * i);
    }
  };
  std::array<std::uint64_t, 8> hv_priv{}, hv_shared{};
  m::MemoryEncryption::Line decrypted{};
  h.after = [&](Core& c) {
    // Root operation, paging off: the hypervisor's own physical view.
    for (unsigned i = 0; i < 8; ++i) {
      hv_priv[i] = c.load(kPriv + 8 * i);
      hv_shared[i] = c.load(kShared + 8 * i);
    }
    decrypted = decrypt_raw(h, c, kPriv);
  };
  h.run();
  REQUIRE(h.setup_errors.empty());
  REQUIRE(h.done);
  for (unsigned i = 0; i < 8; ++i) {
    CHECK(guest_priv[i] == pattern(i));   // the guest reads its own data back
    CHECK(guest_shared[i] == pattern(i));
    CHECK(hv_priv[i] != pattern(i));      // the hypervisor sees ciphertext
    CHECK(qword(decrypted, i) == pattern(i));  // ... which is the data under the VM's key
    CHECK(hv_shared[i] == pattern(i));    // a shared page is plaintext
  }
  // The guest's page tables are private too: the walker read them through
  // the key, and their raw bytes are not the entries.
  CHECK(h.counter("system.cpu0_mem.crypt.fills") > 0);
}

TEST_CASE("S11: device DMA into a private page lands as raw bytes, which the guest then reads as garbage; DMA reads ciphertext") {
  VmxHarness h(sev_platform(true));
  select_key(h);
  const std::array<std::uint8_t, 8> dma_bytes{'D', 'M', 'A', ' ', 'd', 'a', 't', 'a'};
  std::uint64_t dma_word = 0;
  std::memcpy(&dma_word, dma_bytes.data(), 8);
  std::uint64_t guest_priv_after = 0, guest_shared_after = 0;
  h.guest = [&](Core& c) {
    build_paging(c);
    for (unsigned i = 0; i < 8; ++i) c.store(kPriv + 8 * i, pattern(i));
    c.vmcall(kDmaCall);  // the device writes now
    guest_priv_after = c.load(kPriv + 0x100);
    guest_shared_after = c.load(kShared + 0x100);
  };
  std::uint64_t dma_read_priv = 0, hv_after_dma = 0;
  m::MemoryEncryption::Line garbage{};
  tlm::tlm_response_status write_status = tlm::TLM_INCOMPLETE_RESPONSE;
  h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason != kVmcall || e.regs[vmx::cpu::Regs::rax] != kDmaCall) return;
    // A bus master's requests through the root complex (the IOMMU is off:
    // DMA addresses are host-physical).
    auto dma = [&](bool write, std::uint64_t addr, void* data, unsigned len) {
      tlm::tlm_generic_payload t;
      m::DmaContext ctx;
      ctx.requester = 0x0100;
      t.set_command(write ? tlm::TLM_WRITE_COMMAND : tlm::TLM_READ_COMMAND);
      t.set_address(addr);
      t.set_data_ptr(static_cast<unsigned char*>(data));
      t.set_data_length(len);
      t.set_streaming_width(len);
      t.set_response_status(tlm::TLM_INCOMPLETE_RESPONSE);
      t.set_extension(&ctx);
      sc_core::sc_time d = sc_core::SC_ZERO_TIME;
      h.platform().root_complex()->dma.get_base_export()->b_transport(t, d);
      t.clear_extension(&ctx);
      return t.get_response_status();
    };
    dma(false, kPriv, &dma_read_priv, 8);
    std::uint64_t w = dma_word;
    write_status = dma(true, kPriv + 0x100, &w, 8);
    w = dma_word;
    dma(true, kShared + 0x100, &w, 8);
    hv_after_dma = c.load(kPriv + 0x100);
    garbage = decrypt_raw(h, c, kPriv + 0x100);
  };
  h.run();
  REQUIRE(h.setup_errors.empty());
  REQUIRE(h.done);
  CHECK(write_status == tlm::TLM_OK_RESPONSE);
  CHECK(dma_read_priv != pattern(0));     // a device reads ciphertext of the guest's data
  CHECK(hv_after_dma == dma_word);        // the bytes landed as written, not encrypted
  CHECK(guest_priv_after != dma_word);    // the guest decrypts them into garbage ...
  CHECK(guest_priv_after == qword(garbage, 0));  // ... exactly what the engine makes of them
  CHECK(guest_shared_after == dma_word);  // a shared buffer is how DMA reaches the guest
}

TEST_CASE("S11: EPT is checked before any decryption; the violation reports the guest-physical address without the C-bit") {
  VmxHarness h(sev_platform());
  select_key(h);
  std::uint64_t fills_before = 0, fills_at_exit = 0;
  std::uint64_t value = 0;
  h.guest = [&](Core& c) {
    build_paging(c);
    // The walk's guest-table lines for kOutside (private) are cached first,
    // so the access itself is all that remains.
    c.load(kPd + 8 * 16);
    c.load(kPdpt);
    c.load(kPml4);
    fills_before = h.counter("system.cpu0_mem.crypt.fills");
    value = c.load(kOutside + 0x40);
  };
  h.on_exit = [&](Core& c, const Exit& e) {
    if (e.reason != kEptViolation) return;
    fills_at_exit = h.counter("system.cpu0_mem.crypt.fills");
    // Back it with host page kPriv (the guest's private page, which holds
    // ciphertext of zeros once the guest wrote its tables... any page will
    // do), read-only.
    h.ept_map(c, kOutside, kPriv, ept::kRead);
  };
  h.run();
  REQUIRE(h.setup_errors.empty());
  REQUIRE(h.done);
  REQUIRE(h.exits.size() >= 2);
  const Exit& v = h.exits[0];
  CHECK(v.reason == kEptViolation);
  CHECK(v.guest_physical == kOutside + 0x40);  // the C-bit is no part of it
  CHECK((v.qualification & 1) == 1);           // a data read
  CHECK(fills_at_exit == fills_before);        // nothing was decrypted before the exit
  CHECK(h.counter("system.cpu0_mem.crypt.fills") > fills_at_exit);  // the retried access fills
  (void)value;
}

TEST_CASE("S11: every DRAM fill of a private line pays the engine: a memory-bound loop slows, a cache-resident one hardly") {
  auto p = sev_platform();
  p.llc.size = 2ull << 20;  // buffers of 4 MiB miss in it
  VmxHarness h(p);
  select_key(h);
  std::uint64_t mem_priv = 0, mem_shared = 0, res_priv = 0, res_shared = 0;
  std::uint64_t fills_mem = 0;
  h.guest = [&](Core& c) {
    build_paging(c);
    auto sweep = [&c](std::uint64_t base, std::uint64_t bytes, unsigned passes) {
      const std::uint64_t t0 = c.rdtsc();
      for (unsigned p = 0; p < passes; ++p)
        for (std::uint64_t a = base; a < base + bytes; a += 64) c.load(a);
      return c.rdtsc() - t0;
    };
    const std::uint64_t f0 = h.counter("system.cpu0_mem.crypt.fills");
    mem_priv = sweep(kPrivBuf, kBufBytes, 2);
    fills_mem = h.counter("system.cpu0_mem.crypt.fills") - f0;
    mem_shared = sweep(kSharedBuf, kBufBytes, 2);
    // Cache-resident: 16 KiB, timed once it is in the L1 (one pass first).
    sweep(kPrivBuf, 16 << 10, 1);
    res_priv = sweep(kPrivBuf, 16 << 10, 64);
    sweep(kSharedBuf, 16 << 10, 1);
    res_shared = sweep(kSharedBuf, 16 << 10, 64);
  };
  h.run(sc_core::sc_time(200, sc_core::SC_MS));
  REQUIRE(h.setup_errors.empty());
  REQUIRE(h.done);
  const double mem_slowdown = double(mem_priv) / double(mem_shared);
  const double res_slowdown = double(res_priv) / double(res_shared);
  INFO("memory-bound slowdown " << mem_slowdown << ", cache-resident " << res_slowdown);
  // Every line of the private sweep came from DRAM through the engine.
  CHECK(fills_mem >= 2 * kBufBytes / 64);
  CHECK(mem_slowdown > 1.08);
  CHECK(res_slowdown < 1.02);
  CHECK(mem_slowdown > res_slowdown + 0.05);
}

TEST_CASE("S11: a key ID needs the engine to hold it and EPT (VM-entry check); CPUID 8000_001FH reports SEV and the C-bit") {
  VmxHarness h(sev_platform());
  h.config.proc2 = 0;  // no EPT
  h.setup = [&h](Core& c) { h.vmw(c, field::kEncryptionKeyId, kKeyId); };
  vmx::cpu::CpuidResult leaf{};
  h.after_vmxon = [&](Core& c) { leaf = c.cpuid(0x8000001F); };
  h.run();
  CHECK(h.entry_failed);
  CHECK(h.entry_error == 7);  // VM entry with invalid control fields
  CHECK((leaf.eax & 2) == 2);
  CHECK(leaf.ebx == 47);
  CHECK(leaf.ecx == 15);
}

TEST_CASE("S11: independent loads of private memory overlap their misses like those of shared memory") {
  // A keyed address is outside PhysMem (models/mem_crypt.h); its loads must
  // still take the MSHR path, not the blocking one of uncacheable accesses.
  auto p = sev_platform();
  p.llc.size = 2ull << 20;
  p.caches.l2_prefetch.next_line = false;  // every line a demand miss
  p.caches.l2_prefetch.stride = false;
  p.cpu.mshrs = 10;  // Skylake's fill buffers; the test needs several misses in flight
  VmxHarness h(p);
  select_key(h);
  std::uint64_t priv_overlapped = 0, shared_overlapped = 0, priv_cycles = 0, shared_cycles = 0;
  h.guest = [&](Core& c) {
    build_paging(c);
    auto sweep = [&](std::uint64_t base, std::uint64_t& overlapped, std::uint64_t& cycles) {
      const std::uint64_t o0 = h.counter("system.cpu0.overlapped_misses");
      const std::uint64_t t0 = c.rdtsc();
      for (std::uint64_t a = base; a < base + (1u << 20); a += 64) c.load_independent(a);
      c.mfence();
      cycles = c.rdtsc() - t0;
      overlapped = h.counter("system.cpu0.overlapped_misses") - o0;
    };
    sweep(kPrivBuf, priv_overlapped, priv_cycles);
    sweep(kSharedBuf, shared_overlapped, shared_cycles);
  };
  h.run(sc_core::sc_time(200, sc_core::SC_MS));
  REQUIRE(h.setup_errors.empty());
  REQUIRE(h.done);
  INFO("overlapped misses private " << priv_overlapped << ", shared " << shared_overlapped << "; cycles "
                                    << priv_cycles << " / " << shared_cycles);
  const std::uint64_t lines = (1u << 20) / 64;
  CHECK(shared_overlapped > lines / 2);
  CHECK(priv_overlapped > lines / 2);
  // The engine lengthens each fill by line_latency (40 cycles), but fills
  // overlap: far less than 40 cycles a line more.
  CHECK(priv_cycles > shared_cycles);
  CHECK(priv_cycles < shared_cycles + 20 * lines);
}
