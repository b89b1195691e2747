// vmxsim memory traces: the compact binary format written by
// scripts/trace_convert.py (docs/trace.md) and its decoder.
//
// Header: "VMXTRACE", u32 version (1), u32 flags (0), little-endian. Then one
// record per access until the end of the file: a tag byte (bits 1:0 kind:
// 0 instruction fetch, 1 load, 2 store, 3 modify; bit 2 reserved, zero;
// bits 7:3 size - 1) and the zigzag LEB128 difference from the previous
// address of the same stream (instructions, or data).
#pragma once

#include <cstdint>
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

  /// Reads and validates the whole file (throws TraceError).
  static TraceFile load(const std::string& path);
  /// Validates bytes already in memory; `name` is used in messages.
  static TraceFile parse(std::vector<std::uint8_t> bytes, const std::string& name);

  std::uint64_t records() const { return m_records; }

  /// Sequential decoding; valid only over a TraceFile that parsed.
  class Cursor {
   public:
    explicit Cursor(const TraceFile& f) : m_file(&f), m_pos(kHeaderSize) {}
    bool next(TraceRecord& r);

   private:
    const TraceFile* m_file;
    std::size_t m_pos;
    std::uint64_t m_prev[2] = {0, 0};
  };
  Cursor cursor() const { return Cursor(*this); }

 private:
  std::vector<std::uint8_t> m_bytes;
  std::uint64_t m_records = 0;
};

}  // namespace vmx::workloads
