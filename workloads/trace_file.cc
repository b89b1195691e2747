#include "workloads/trace_file.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <unordered_set>

#include <fmt/format.h>

namespace vmx::workloads {

namespace {

// Checks the 16-byte header at the start of `b` (of which `size` bytes exist).
void check_header(const std::uint8_t* b, std::size_t size, const std::string& name) {
  if (size < sizeof TraceFile::kMagic || std::memcmp(b, TraceFile::kMagic, sizeof TraceFile::kMagic) != 0)
    throw TraceError(fmt::format("{}: byte 0: not a vmxsim trace (expected the magic \"VMXTRACE\")", name));
  if (size < TraceFile::kHeaderSize)
    throw TraceError(
        fmt::format("{}: byte {}: truncated header (a header is {} bytes)", name, size, TraceFile::kHeaderSize));
  std::uint32_t version = 0, flags = 0;
  for (int i = 3; i >= 0; --i) version = (version << 8) | b[8 + static_cast<std::size_t>(i)];
  for (int i = 3; i >= 0; --i) flags = (flags << 8) | b[12 + static_cast<std::size_t>(i)];
  if (version != TraceFile::kVersion)
    throw TraceError(
        fmt::format("{}: byte 8: unsupported trace version {} (expected {})", name, version, TraceFile::kVersion));
  if (flags != 0) throw TraceError(fmt::format("{}: byte 12: unknown flags {:#x} (expected 0)", name, flags));
}

// Results of load() passes, by absolute path; an entry is used only while the
// file keeps its size and modification time.
struct Scanned {
  std::uintmax_t size;
  std::filesystem::file_time_type mtime;
  std::shared_ptr<const void> summary;
};
std::mutex g_scanned_mutex;
std::map<std::string, Scanned> g_scanned;

}  // namespace

TraceFile::Cursor::Cursor(std::string name, std::unique_ptr<std::FILE, Closer> file, const std::uint8_t* data,
                          std::size_t size)
    : m_name(std::move(name)), m_file(std::move(file)), m_data(data), m_end(size), m_eof(m_file == nullptr) {
  if (m_file) {
    m_buffer.resize(kBufferBytes);
    m_data = m_buffer.data();
    m_end = 0;
    refill();
  }
  check_header(m_data, m_end, m_name);
  m_pos = kHeaderSize;
}

void TraceFile::Cursor::refill() {
  // Keep the bytes not yet decoded (less than one record), read behind them.
  const std::size_t keep = m_end - m_pos;
  std::memmove(m_buffer.data(), m_buffer.data() + m_pos, keep);
  m_base += m_pos;
  m_pos = 0;
  m_end = keep;
  while (m_end < m_buffer.size() && !m_eof) {
    const std::size_t got = std::fread(m_buffer.data() + m_end, 1, m_buffer.size() - m_end, m_file.get());
    m_end += got;
    if (got == 0) {
      if (std::ferror(m_file.get()))
        throw TraceError(fmt::format("{}: byte {}: read error", m_name, offset(m_end)));
      m_eof = true;
    }
  }
}

void TraceFile::Cursor::bad_tag(std::size_t at, std::uint8_t tag) const {
  throw TraceError(fmt::format("{}: byte {}: record tag {:#04x} has the reserved bit set", m_name, offset(at), tag));
}

void TraceFile::Cursor::truncated(std::size_t at) const {
  throw TraceError(fmt::format("{}: byte {}: truncated record (the address of the record starting at byte {} "
                               "runs past the end of the file)",
                               m_name, offset(m_pos), offset(at)));
}

void TraceFile::Cursor::overlong(std::size_t at) const {
  throw TraceError(fmt::format("{}: byte {}: overlong address in the record starting at byte {} (an address is "
                               "at most ten LEB128 bytes holding 64 bits)",
                               m_name, offset(m_pos - 1), offset(at)));
}

void TraceFile::Cursor::not_shortest(std::size_t at) const {
  throw TraceError(fmt::format("{}: byte {}: the address of the record starting at byte {} is not in its "
                               "shortest LEB128 form (a zero final byte)",
                               m_name, offset(m_pos - 1), offset(at)));
}

void TraceFile::Cursor::outside(std::size_t at, std::uint64_t address, unsigned size) const {
  throw TraceError(fmt::format("{}: byte {}: address {:#x} ({} bytes) is outside the user half of the canonical "
                               "address space a trace may use, [{:#x}, {:#x})",
                               m_name, offset(at), address, size, kLowestAddress, kAddressLimit));
}

std::size_t TraceFile::Cursor::next_batch(TraceRecord* out, std::size_t max) {
  // The fast path reads the tag and the next eight bytes as one word; the
  // varint ends at the first byte with bit 7 clear, and its 7-bit groups are
  // gathered by three shift-and-mask steps. Anything else (a longer varint,
  // the last bytes of the data, any malformed record) goes through next(),
  // alone at the head of a batch, so that its error is thrown only after
  // the records before it were handed out.
  constexpr std::size_t kFastBytes = 9;  // the tag and an 8-byte word
  constexpr std::uint64_t kStops = 0x8080808080808080ull;
  std::size_t n = 0;
  while (n < max) {
    if (m_end - m_pos < kMaxRecordBytes && !m_eof) refill();
    std::size_t pos = m_pos;
    // Up to the last record's worth of the data, where next() refills.
    static_assert(kMaxRecordBytes >= kFastBytes, "the fast path reads within a record's worth of bytes");
    const std::size_t stop = m_end >= kMaxRecordBytes ? m_end - kMaxRecordBytes + 1 : 0;
    std::uint64_t prev[2] = {m_prev[0], m_prev[1]};
    const std::uint8_t* const data = m_data;
    TraceRecord* o = out + n;
    TraceRecord* const o_end = out + max;
    // A fast-path record takes at most kFastBytes, so the next k records all
    // start before `stop`: one bound to check per record instead of two.
    bool slow = false;
    while (!slow && pos < stop && o < o_end) {
      const std::size_t k = std::min<std::size_t>(static_cast<std::size_t>(o_end - o),
                                                  (stop - pos + kFastBytes - 1) / kFastBytes);
      for (TraceRecord* const block_end = o + k; o < block_end;) {
        const std::uint8_t tag = data[pos];
        std::uint64_t w;
        std::memcpy(&w, data + pos + 1, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        if (tag & 0x4) {
          slow = true;
          break;
        }
        std::uint64_t v;
        unsigned len;
        if (!(w & 0x80)) {
          // Most records (about 80% of sort's) step by less than 64 bytes: one
          // byte, and a branch the host predicts.
          v = w & 0x7F;
          len = 1;
        } else {
          const std::uint64_t stops = ~w & kStops;
          len = stops ? (static_cast<unsigned>(__builtin_ctzll(stops)) >> 3) + 1 : 0;
          // Longer than eight bytes, or a zero final byte after continuation
          // bytes (not the shortest form): the checked path.
          if (stops == 0 || ((w >> (8 * (len - 1))) & 0xFF) == 0) {
            slow = true;
            break;
          }
          v = w & (stops ^ (stops - 1)) & 0x7F7F7F7F7F7F7F7Full;
          v = (v & 0x007F007F007F007Full) | ((v & 0x7F007F007F007F00ull) >> 1);
          v = (v & 0x00003FFF00003FFFull) | ((v & 0x3FFF00003FFF0000ull) >> 2);
          v = (v & 0x000000000FFFFFFFull) | ((v & 0x0FFFFFFF00000000ull) >> 4);
        }
        const unsigned size = (tag >> 3) + 1u;
        const unsigned stream = (tag & 3) != TraceRecord::Fetch;
        const std::uint64_t address = prev[stream] + ((v >> 1) ^ (0 - (v & 1)));  // zigzag
        // kLowestAddress <= address <= kAddressLimit - size, in one compare
        // against the bound of the largest size first (sizes are 1..32).
        if (address - kLowestAddress > kAddressLimit - kLowestAddress - 32) [[unlikely]] {
          if (address - kLowestAddress > kAddressLimit - kLowestAddress - size) {
            slow = true;
            break;
          }
        }
        prev[stream] = address;
        o->address = address;
        o->kind = static_cast<TraceRecord::Kind>(tag & 3);
        o->size = static_cast<std::uint8_t>(size);
        ++o;
        pos += 1 + len;
      }
    }
    n = static_cast<std::size_t>(o - out);
    m_pos = pos;
    m_prev[0] = prev[0];
    m_prev[1] = prev[1];
    if (n == max) break;
    if (m_end - m_pos < kMaxRecordBytes && !m_eof) continue;  // refill, then on
    // The record at m_pos needs the checked path: one of the last bytes of
    // the file, a varint longer than eight bytes, or a malformed record.
    if (n > 0) break;
    if (!next(out[0])) break;
    n = 1;
  }
  return n;
}

TraceFile::Summary TraceFile::scan(Cursor c) {
  // The distinct pages touched. Most records touch the page their stream
  // touched last, and most others one touched recently: both are filtered
  // before the set, which then sees a small fraction of the records.
  Summary s;
  std::unordered_set<std::uint64_t> pages;
  std::array<std::uint64_t, 256> recent;
  recent.fill(~0ull);
  std::uint64_t last[2] = {~0ull, ~0ull};
  auto add = [&](std::uint64_t page) {
    std::uint64_t& slot = recent[page % recent.size()];
    if (slot == page) return;
    slot = page;
    pages.insert(page);
  };
  std::array<TraceRecord, 256> batch;
  while (const std::size_t n = c.next_batch(batch.data(), batch.size())) {
    s.records += n;
    for (std::size_t i = 0; i < n; ++i) {
      const TraceRecord& r = batch[i];
      const std::uint64_t first = r.address >> 12, final = (r.address + r.size - 1) >> 12;
      std::uint64_t& l = last[r.kind == TraceRecord::Fetch ? 0 : 1];
      if (first == l && final == l) continue;
      add(first);
      if (final != first) add(final);
      l = final;
    }
  }
  if (s.records == 0) throw TraceError(fmt::format("{}: byte {}: the trace has no records", c.m_name, kHeaderSize));
  std::vector<std::uint64_t> sorted(pages.begin(), pages.end());
  std::sort(sorted.begin(), sorted.end());
  std::size_t i = 0;
  while (i < sorted.size()) {
    std::size_t j = i;
    while (j + 1 < sorted.size() && sorted[j + 1] - sorted[j] <= kRegionGapPages) ++j;
    s.regions.push_back({sorted[i] << 12, (sorted[j] + 1) << 12});
    i = j + 1;
  }
  return s;
}

TraceFile TraceFile::load(const std::string& path) {
  // Only a regular file has an end: a device such as /dev/zero would be read
  // for ever, a directory not at all.
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw TraceError(fmt::format("{}: {}", path, fs::exists(path, ec) ? "not a regular file" : "cannot open the trace file"));
  const std::string key = fs::absolute(path, ec).lexically_normal().string();
  const std::uintmax_t size = fs::file_size(path, ec);
  const fs::file_time_type mtime = fs::last_write_time(path, ec);
  TraceFile t;
  t.m_name = path;
  {
    std::lock_guard<std::mutex> lock(g_scanned_mutex);
    auto it = g_scanned.find(key);
    if (it != g_scanned.end() && it->second.size == size && it->second.mtime == mtime) {
      t.m_summary = std::static_pointer_cast<const Summary>(it->second.summary);
      return t;
    }
  }
  t.m_summary = std::make_shared<const Summary>(scan(t.cursor()));
  std::lock_guard<std::mutex> lock(g_scanned_mutex);
  g_scanned[key] = Scanned{size, mtime, t.m_summary};
  return t;
}

TraceFile TraceFile::parse(std::vector<std::uint8_t> bytes, const std::string& name) {
  TraceFile t;
  t.m_name = name;
  t.m_bytes = std::make_shared<const std::vector<std::uint8_t>>(std::move(bytes));
  t.m_summary = std::make_shared<const Summary>(scan(t.cursor()));
  return t;
}

TraceFile::Cursor TraceFile::cursor() const {
  if (m_bytes) return Cursor(m_name, nullptr, m_bytes->data(), m_bytes->size());
  std::unique_ptr<std::FILE, Cursor::Closer> f(std::fopen(m_name.c_str(), "rb"));
  if (!f) throw TraceError(fmt::format("{}: cannot open the trace file", m_name));
  return Cursor(m_name, std::move(f), nullptr, 0);
}

std::uint64_t TraceFile::records() const { return m_summary->records; }

const std::vector<TraceFile::Region>& TraceFile::regions() const { return m_summary->regions; }

}  // namespace vmx::workloads
