#include "workloads/trace_file.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <fmt/format.h>

namespace vmx::workloads {

namespace {

// Decodes one zigzag LEB128 value at pos; returns false if it runs past the
// end or over ten bytes.
bool read_varint(const std::vector<std::uint8_t>& b, std::size_t& pos, std::int64_t& out) {
  std::uint64_t v = 0;
  for (unsigned shift = 0; shift < 70; shift += 7) {
    if (pos >= b.size()) return false;
    std::uint8_t byte = b[pos++];
    v |= std::uint64_t(byte & 0x7F) << shift;
    if (!(byte & 0x80)) {
      out = static_cast<std::int64_t>((v >> 1) ^ (~(v & 1) + 1));
      return true;
    }
  }
  return false;
}

}  // namespace

TraceFile TraceFile::load(const std::string& path) {
  // Only a regular file has an end: a device such as /dev/zero would be read
  // for ever, a directory not at all.
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw TraceError(fmt::format("{}: {}", path,
                                 std::filesystem::exists(path, ec) ? "not a regular file" : "cannot open the trace file"));
  std::ifstream f(path, std::ios::binary);
  if (!f) throw TraceError(fmt::format("{}: cannot open the trace file", path));
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return parse(std::move(bytes), path);
}

TraceFile TraceFile::parse(std::vector<std::uint8_t> bytes, const std::string& name) {
  if (bytes.size() < sizeof kMagic || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0)
    throw TraceError(fmt::format("{}: byte 0: not a vmxsim trace (expected the magic \"VMXTRACE\")", name));
  if (bytes.size() < kHeaderSize)
    throw TraceError(fmt::format("{}: byte {}: truncated header (a header is {} bytes)", name, bytes.size(), kHeaderSize));
  std::uint32_t version = 0, flags = 0;
  for (int i = 3; i >= 0; --i) version = (version << 8) | bytes[8 + static_cast<std::size_t>(i)];
  for (int i = 3; i >= 0; --i) flags = (flags << 8) | bytes[12 + static_cast<std::size_t>(i)];
  if (version != kVersion)
    throw TraceError(fmt::format("{}: byte 8: unsupported trace version {} (expected {})", name, version, kVersion));
  if (flags != 0) throw TraceError(fmt::format("{}: byte 12: unknown flags {:#x} (expected 0)", name, flags));
  TraceFile t;
  std::size_t pos = kHeaderSize;
  while (pos < bytes.size()) {
    std::size_t at = pos;
    std::uint8_t tag = bytes[pos++];
    if (tag & 0x4) throw TraceError(fmt::format("{}: byte {}: record tag {:#04x} has the reserved bit set", name, at, tag));
    std::int64_t delta;
    if (!read_varint(bytes, pos, delta))
      throw TraceError(fmt::format("{}: byte {}: truncated or overlong address of the record starting at byte {}",
                                   name, pos, at));
    ++t.m_records;
  }
  if (t.m_records == 0) throw TraceError(fmt::format("{}: byte {}: the trace has no records", name, pos));
  t.m_bytes = std::move(bytes);
  return t;
}

bool TraceFile::Cursor::next(TraceRecord& r) {
  const auto& b = m_file->m_bytes;
  if (m_pos >= b.size()) return false;
  std::uint8_t tag = b[m_pos++];
  std::int64_t delta = 0;
  read_varint(b, m_pos, delta);  // validated by parse()
  r.kind = static_cast<TraceRecord::Kind>(tag & 3);
  r.size = static_cast<std::uint8_t>((tag >> 3) + 1);
  std::uint64_t& prev = m_prev[r.kind == TraceRecord::Fetch ? 0 : 1];
  prev += static_cast<std::uint64_t>(delta);
  r.address = prev;
  return true;
}

}  // namespace vmx::workloads
