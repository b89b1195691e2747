#include "models/phys_mem.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>

#include <sys/mman.h>

namespace vmx::models {

namespace {
std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}
}  // namespace

PhysMem::PhysMem(std::uint64_t size_bytes) : m_size(size_bytes) {
  if (size_bytes == 0 || (size_bytes & (kFrameSize - 1)) != 0)
    throw std::invalid_argument("PhysMem: size must be a non-zero multiple of 4 KiB (got " +
                                std::to_string(size_bytes) + " bytes)");
  m_top.assign(static_cast<std::size_t>((size_bytes + (1ull << kGiBShift) - 1) >> kGiBShift), nullptr);
}

PhysMem::~PhysMem() {
  for (Level2* l2 : m_top) {
    if (!l2) continue;
    std::free(l2);
  }
  for (std::uint8_t* c : m_chunks) munmap(c, kChunkSize);
}

PhysMem::Level2* PhysMem::alloc_level2() {
  // calloc: 2 MiB of null pointers, zero pages supplied lazily by the host OS.
  void* p = std::calloc(1, sizeof(Level2));
  if (!p) throw std::bad_alloc();
  return static_cast<Level2*>(p);
}

std::uint8_t* PhysMem::alloc_frame() {
  if (m_frame_limit && m_frames_allocated >= m_frame_limit)
    throw HostMemoryLimit("host memory guard: the simulated memory's contents would take more than " +
                          std::to_string(m_frame_limit * kFrameSize >> 20) +
                          " MiB of host memory (host_memory_limit; by default 90% of the memory the host had "
                          "available when the run started). Give the VMs less memory or touch less of it, or "
                          "raise host_memory_limit.");
  if (m_carve == m_carve_end) {
    // A chunk aligned to 2 MiB, so that the host can back it with one huge
    // page: map twice the size and trim both ends.
    void* raw = mmap(nullptr, 2 * kChunkSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    const auto at = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t aligned = (at + kChunkSize - 1) & ~std::uintptr_t(kChunkSize - 1);
    if (aligned > at) munmap(raw, aligned - at);
    if (at + 2 * kChunkSize > aligned + kChunkSize)
      munmap(reinterpret_cast<void*>(aligned + kChunkSize), at + 2 * kChunkSize - (aligned + kChunkSize));
    auto* chunk = reinterpret_cast<std::uint8_t*>(aligned);
#ifdef MADV_HUGEPAGE
    madvise(chunk, kChunkSize, MADV_HUGEPAGE);  // advice only: without huge pages, 4 KiB pages
#endif
    m_chunks.push_back(chunk);
    m_carve = chunk;
    m_carve_end = chunk + kChunkSize;
  }
  std::uint8_t* f = m_carve;  // zero: anonymous memory never written before
  m_carve += kFrameSize;
  ++m_frames_allocated;
  return f;
}

void PhysMem::throw_out_of_range(std::uint64_t pa, std::uint64_t len) const {
  throw std::out_of_range("PhysMem: physical access at " + hex(pa) + " (" + std::to_string(len) +
                          " bytes) is beyond memory size " + hex(m_size));
}

void PhysMem::throw_bad_size(unsigned size) {
  throw std::invalid_argument("PhysMem: access size must be 1, 2, 4 or 8 (got " + std::to_string(size) + ")");
}

void PhysMem::read_bytes(std::uint64_t pa, void* dst, std::uint64_t len) const {
  if (!contains(pa, len)) throw_out_of_range(pa, len);
  auto* out = static_cast<std::uint8_t*>(dst);
  while (len) {
    const std::uint64_t off = pa & (kFrameSize - 1);
    const std::uint64_t n = std::min(len, kFrameSize - off);
    const std::uint8_t* f = frame_if_present(pa);
    if (f)
      std::memcpy(out, f + off, n);
    else
      std::memset(out, 0, n);
    out += n;
    pa += n;
    len -= n;
  }
}

void PhysMem::write_bytes(std::uint64_t pa, const void* src, std::uint64_t len) {
  if (!contains(pa, len)) throw_out_of_range(pa, len);
  const auto* in = static_cast<const std::uint8_t*>(src);
  while (len) {
    const std::uint64_t off = pa & (kFrameSize - 1);
    const std::uint64_t n = std::min(len, kFrameSize - off);
    std::memcpy(frame(pa) + off, in, n);
    in += n;
    pa += n;
    len -= n;
  }
}

}  // namespace vmx::models
