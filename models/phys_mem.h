// Sparse physical memory with real contents.
//
// Guest page tables, EPT tables, descriptor rings and guest data live here in
// their real formats (docs/architecture.md, "Memory system and translation").
// Frames of 4 KiB are allocated, zeroed, on the first write-side touch; reads
// of a frame never touched return zeros without allocating, so scanning
// memory (migration, snapshots, page sharing) keeps it sparse.
//
// Frame look-up is a fixed two-level radix table: the top level is indexed by
// pa >> 30 (one slot per GiB), and each GiB has a lazily allocated table of
// 262144 frame pointers indexed by (pa >> 12) & 0x3FFFF.
//
// Frames are carved, in first-touch order, from 2 MiB host chunks mapped
// anonymous (zero-filled by the host on first use) and advised as huge pages
// where the host has them: one host allocation per 512 frames, frames dense
// in the host's caches and TLB, no zeroing by the simulator. The host-memory
// guard still counts frames, one by one.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace vmx::models {

/// The simulated memory's contents would take more host memory than the
/// run allows (PhysMem::set_host_limit): the run stops with this error
/// instead of being killed by the host.
class HostMemoryLimit : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class PhysMem {
 public:
  static constexpr unsigned kFrameShift = 12;
  static constexpr std::uint64_t kFrameSize = 1ull << kFrameShift;
  static constexpr unsigned kGiBShift = 30;
  static constexpr std::uint64_t kFramesPerGiB = 1ull << (kGiBShift - kFrameShift);  // 262144
  /// Host memory is taken in chunks of this size, each holding 512 frames.
  static constexpr std::uint64_t kChunkSize = 2ull << 20;

  /// Memory of size_bytes (a multiple of 4 KiB, > 0); throws
  /// std::invalid_argument otherwise.
  explicit PhysMem(std::uint64_t size_bytes);
  ~PhysMem();
  PhysMem(const PhysMem&) = delete;
  PhysMem& operator=(const PhysMem&) = delete;

  std::uint64_t size() const { return m_size; }

  /// True if [pa, pa + len) lies inside memory (len 0: pa <= size()).
  bool contains(std::uint64_t pa, std::uint64_t len = 1) const {
    return len <= m_size && pa <= m_size - len;
  }

  /// Host pointer to the start of the 4 KiB frame holding pa, allocating a
  /// zeroed frame on first touch. Throws std::out_of_range beyond size().
  std::uint8_t* frame(std::uint64_t pa) {
    if (pa >= m_size) throw_out_of_range(pa, 1);
    Level2*& l2 = m_top[pa >> kGiBShift];
    if (!l2) l2 = alloc_level2();
    std::uint8_t*& f = l2->frames[(pa >> kFrameShift) & (kFramesPerGiB - 1)];
    if (!f) f = alloc_frame();
    return f;
  }

  /// Host pointer to the frame holding pa, or nullptr if it was never touched.
  const std::uint8_t* frame_if_present(std::uint64_t pa) const {
    if (pa >= m_size) throw_out_of_range(pa, 1);
    const Level2* l2 = m_top[pa >> kGiBShift];
    return l2 ? l2->frames[(pa >> kFrameShift) & (kFramesPerGiB - 1)] : nullptr;
  }

  /// Little-endian load of size 1, 2, 4 or 8 bytes (may cross a frame).
  std::uint64_t read(std::uint64_t pa, unsigned size) const {
    check_access(pa, size);
    std::uint8_t buf[8];
    const std::uint64_t off = pa & (kFrameSize - 1);
    if (off + size <= kFrameSize) {
      const std::uint8_t* f = frame_if_present(pa);
      if (!f) return 0;
      std::memcpy(buf, f + off, size);
    } else {
      read_bytes(pa, buf, size);
    }
    return from_le(buf, size);
  }

  /// Little-endian store of the low size bytes (1, 2, 4 or 8) of value.
  void write(std::uint64_t pa, std::uint64_t value, unsigned size) {
    check_access(pa, size);
    std::uint8_t buf[8];
    to_le(value, buf, size);
    const std::uint64_t off = pa & (kFrameSize - 1);
    if (off + size <= kFrameSize)
      std::memcpy(frame(pa) + off, buf, size);
    else
      write_bytes(pa, buf, size);
  }

  /// Copies len bytes out of / into memory, across frames as needed.
  void read_bytes(std::uint64_t pa, void* dst, std::uint64_t len) const;
  void write_bytes(std::uint64_t pa, const void* src, std::uint64_t len);

  /// Frames allocated so far (each 4 KiB of host memory, carved from 2 MiB
  /// chunks).
  std::uint64_t frames_allocated() const { return m_frames_allocated; }
  /// The most host memory the frames may take, in bytes (0: no limit). A
  /// first touch beyond it throws HostMemoryLimit (checked only when a frame
  /// is allocated, off the access path).
  void set_host_limit(std::uint64_t bytes) { m_frame_limit = bytes / kFrameSize; }

 private:
  struct Level2 {
    std::uint8_t* frames[kFramesPerGiB];
  };

  void check_access(std::uint64_t pa, unsigned size) const {
    if (size != 1 && size != 2 && size != 4 && size != 8) throw_bad_size(size);
    if (!contains(pa, size)) throw_out_of_range(pa, size);
  }
  static std::uint64_t from_le(const std::uint8_t* b, unsigned size) {
    std::uint64_t v = 0;
    for (unsigned i = size; i-- > 0;) v = (v << 8) | b[i];
    return v;
  }
  static void to_le(std::uint64_t v, std::uint8_t* b, unsigned size) {
    for (unsigned i = 0; i < size; ++i, v >>= 8) b[i] = static_cast<std::uint8_t>(v);
  }

  [[noreturn]] void throw_out_of_range(std::uint64_t pa, std::uint64_t len) const;
  [[noreturn]] static void throw_bad_size(unsigned size);
  Level2* alloc_level2();
  std::uint8_t* alloc_frame();

  std::uint64_t m_size;
  std::vector<Level2*> m_top;  // one slot per GiB, fixed at construction
  std::uint64_t m_frames_allocated = 0;
  std::uint64_t m_frame_limit = 0;  // 0: none
  std::vector<std::uint8_t*> m_chunks;  // 2 MiB each
  std::uint8_t* m_carve = nullptr;      // next free frame of the last chunk
  std::uint8_t* m_carve_end = nullptr;
};

}  // namespace vmx::models
