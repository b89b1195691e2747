// vmxsim memory traces: the compact binary format written by
// scripts/trace_convert.py (docs/trace.md) and its decoder.
//
// Header: "VMXTRACE", u32 version (1), u32 flags (0), little-endian. Then one
// record per access until the end of the file: a tag byte (bits 1:0 kind:
// 0 instruction fetch, 1 load, 2 store, 3 modify; bit 2 reserved, zero;
// bits 7:3 size - 1) and the zigzag LEB128 difference from the previous
// address of the same stream (instructions, or data).
//
// A file is read streaming, through a fixed-size buffer: load() makes one
// pass that validates every record and gathers the pages the trace touches
// (merged into the regions the replay maps), and each replay pass streams the
// records again. Host memory stays bounded by the buffer and the number of
// distinct pages, whatever the length of the trace.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace vmx::workloads {

/// A malformed or unreadable trace; what() names the file and byte offset.
class TraceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TraceRecord {
  enum Kind : std::uint8_t { Fetch = 0, Load = 1, Store = 2, Modify = 3 };
  std::uint64_t address;
  Kind kind;
  std::uint8_t size;  // bytes, 1..32
};

class TraceFile {
 public:
  static constexpr char kMagic[8] = {'V', 'M', 'X', 'T', 'R', 'A', 'C', 'E'};
  static constexpr std::uint32_t kVersion = 1;
  static constexpr std::size_t kHeaderSize = 16;
  /// The addresses a trace may use: the user half of the 48-bit canonical
  /// address space (SDM Vol. 1, 3.3.7.1), less the null page and the last
  /// page below the canonical hole, as the guest kernel's mmap allows them.
  static constexpr std::uint64_t kLowestAddress = 0x1000;
  static constexpr std::uint64_t kAddressLimit = 0x00007FFFFFFFF000ull;
  /// Pages closer than this many pages apart share one mapped region.
  static constexpr std::uint64_t kRegionGapPages = 256;

  /// A range of guest-virtual addresses [start, end) the replay maps.
  struct Region {
    std::uint64_t start, end;
  };

  /// Reads and validates the whole file in one streaming pass (throws
  /// TraceError). The result of a pass is kept for the life of the process,
  /// keyed by path, size and modification time: loading the same unchanged
  /// file again (config validation, then the workload) does not re-read it.
  static TraceFile load(const std::string& path);
  /// Validates bytes already in memory; `name` is used in messages.
  static TraceFile parse(std::vector<std::uint8_t> bytes, const std::string& name);

  std::uint64_t records() const;
  /// The pages records touch, merged across gaps of at most kRegionGapPages.
  const std::vector<Region>& regions() const;

  /// Sequential, validating decoding: next() throws TraceError on a malformed
  /// record (a file changed since load(), or a pass of load() itself).
  class Cursor {
   public:
    /// Decodes up to `max` records into `out` and returns how many (0 at the
    /// end of the trace): the records next() would give, with the same
    /// checks. A malformed record ends the batch before it; the next call
    /// throws its TraceError, so every record before it is returned first.
    /// Records whose address fits in eight LEB128 bytes and which lie away
    /// from the end of the buffered data decode without a branch per byte.
    std::size_t next_batch(TraceRecord* out, std::size_t max);
    bool next(TraceRecord& r) {
      if (m_end - m_pos < kMaxRecordBytes && !m_eof) refill();
      if (m_pos >= m_end) return false;
      const std::size_t at = m_pos;
      const std::uint8_t tag = m_data[m_pos++];
      if (tag & 0x4) bad_tag(at, tag);
      std::uint64_t v = 0;
      for (unsigned shift = 0;; shift += 7) {
        if (m_pos >= m_end) truncated(at);
        const std::uint8_t byte = m_data[m_pos++];
        // The tenth byte holds bit 63 only: anything more is overlong.
        if (shift == 63 && byte > 1) overlong(at);
        v |= std::uint64_t(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
          if (byte == 0 && shift != 0) not_shortest(at);
          break;
        }
      }
      r.kind = static_cast<TraceRecord::Kind>(tag & 3);
      r.size = static_cast<std::uint8_t>((tag >> 3) + 1);
      std::uint64_t& prev = m_prev[r.kind == TraceRecord::Fetch ? 0 : 1];
      prev += (v >> 1) ^ (~(v & 1) + 1);  // zigzag
      if (prev < kLowestAddress || prev > kAddressLimit - r.size) outside(at, prev, r.size);
      r.address = prev;
      return true;
    }

   private:
    friend class TraceFile;
    // Tag byte and a ten-byte varint.
    static constexpr std::size_t kMaxRecordBytes = 11;
    static constexpr std::size_t kBufferBytes = 256 << 10;
    struct Closer {
      void operator()(std::FILE* f) const { std::fclose(f); }
    };
    Cursor(std::string name, std::unique_ptr<std::FILE, Closer> file, const std::uint8_t* data, std::size_t size);
    void refill();
    [[noreturn]] void bad_tag(std::size_t at, std::uint8_t tag) const;
    [[noreturn]] void truncated(std::size_t at) const;
    [[noreturn]] void overlong(std::size_t at) const;
    [[noreturn]] void not_shortest(std::size_t at) const;
    [[noreturn]] void outside(std::size_t at, std::uint64_t address, unsigned size) const;
    std::uint64_t offset(std::size_t pos) const { return m_base + pos; }

    std::string m_name;
    std::unique_ptr<std::FILE, Closer> m_file;  // null for bytes in memory
    std::vector<std::uint8_t> m_buffer;
    const std::uint8_t* m_data;
    std::size_t m_pos = 0, m_end;
    std::uint64_t m_base = 0;  // file offset of m_data[0]
    bool m_eof;
    std::uint64_t m_prev[2] = {0, 0};
  };
  Cursor cursor() const;

 private:
  struct Summary {
    std::uint64_t records = 0;
    std::vector<Region> regions;
  };
  static Summary scan(Cursor c);

  std::string m_name;
  std::shared_ptr<const std::vector<std::uint8_t>> m_bytes;  // parse() only
  std::shared_ptr<const Summary> m_summary;
};

}  // namespace vmx::workloads
