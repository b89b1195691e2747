#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "workloads/trace_file.h"

using vmx::workloads::TraceError;
using vmx::workloads::TraceFile;
using vmx::workloads::TraceRecord;

namespace {

std::vector<std::uint8_t> header(std::uint32_t version = 1, std::uint32_t flags = 0) {
  std::vector<std::uint8_t> b = {'V', 'M', 'X', 'T', 'R', 'A', 'C', 'E'};
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<std::uint8_t>(version >> (8 * i)));
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<std::uint8_t>(flags >> (8 * i)));
  return b;
}

void varint(std::vector<std::uint8_t>& b, std::int64_t delta) {
  std::uint64_t z = delta >= 0 ? std::uint64_t(delta) << 1 : (std::uint64_t(-delta) << 1) - 1;
  do {
    std::uint8_t byte = z & 0x7F;
    z >>= 7;
    b.push_back(static_cast<std::uint8_t>(byte | (z ? 0x80 : 0)));
  } while (z);
}

void record(std::vector<std::uint8_t>& b, unsigned kind, unsigned size, std::int64_t delta) {
  b.push_back(static_cast<std::uint8_t>(kind | ((size - 1) << 3)));
  varint(b, delta);
}

std::string error_of(std::vector<std::uint8_t> bytes) {
  try {
    TraceFile::parse(std::move(bytes), "t.vmxtrace");
  } catch (const TraceError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("trace records decode with per-stream address deltas") {
  auto b = header();
  record(b, 0, 3, 0x401000);   // fetch at 0x401000
  record(b, 1, 8, 0x7ff000);   // load at 0x7ff000
  record(b, 0, 5, 3);          // fetch at 0x401003
  record(b, 2, 4, -0x10);      // store at 0x7fefff0
  record(b, 3, 1, 0x20);       // modify at 0x7ff010
  TraceFile t = TraceFile::parse(b, "t");
  CHECK(t.records() == 5);
  auto c = t.cursor();
  TraceRecord r;
  std::vector<std::uint64_t> addrs;
  std::vector<unsigned> kinds, sizes;
  while (c.next(r)) {
    addrs.push_back(r.address);
    kinds.push_back(r.kind);
    sizes.push_back(r.size);
  }
  CHECK(addrs == std::vector<std::uint64_t>{0x401000, 0x7ff000, 0x401003, 0x7feff0, 0x7ff010});
  CHECK(kinds == std::vector<unsigned>{0, 1, 0, 2, 3});
  CHECK(sizes == std::vector<unsigned>{3, 8, 5, 4, 1});
}

TEST_CASE("malformed traces are rejected with the byte offset of the problem") {
  CHECK(error_of({'n', 'o', 'p', 'e'}) == "t.vmxtrace: byte 0: not a vmxsim trace (expected the magic \"VMXTRACE\")");
  CHECK(error_of(header(2)) == "t.vmxtrace: byte 8: unsupported trace version 2 (expected 1)");
  CHECK(error_of(header(1, 4)) == "t.vmxtrace: byte 12: unknown flags 0x4 (expected 0)");
  CHECK(error_of(header()) == "t.vmxtrace: byte 16: the trace has no records");

  auto reserved = header();
  record(reserved, 1, 8, 0x10000);  // bytes 16..19
  reserved.push_back(0x04);         // reserved bit in the second record's tag, at byte 20
  reserved.push_back(0x00);
  CHECK(error_of(reserved) == "t.vmxtrace: byte 20: record tag 0x04 has the reserved bit set");

  auto truncated = header();
  record(truncated, 1, 8, 0x10000);
  truncated.push_back(0x01);  // tag at byte 20, then a varint cut short
  truncated.push_back(0x80);
  CHECK(error_of(truncated) ==
        "t.vmxtrace: byte 22: truncated record (the address of the record starting at byte 20 runs past the end "
        "of the file)");

  auto tag_only = header();
  record(tag_only, 1, 8, 0x10000);
  tag_only.push_back(0x01);  // a tag at byte 20 and nothing after it
  CHECK(error_of(tag_only) ==
        "t.vmxtrace: byte 21: truncated record (the address of the record starting at byte 20 runs past the end "
        "of the file)");

  auto eleven = header();
  eleven.push_back(0x01);  // tag at byte 16, then eleven continuation bytes
  for (int i = 0; i < 11; ++i) eleven.push_back(0x80);
  eleven.push_back(0x00);
  CHECK(error_of(eleven) ==
        "t.vmxtrace: byte 26: overlong address in the record starting at byte 16 (an address is at most ten "
        "LEB128 bytes holding 64 bits)");

  auto wide = header();
  wide.push_back(0x01);  // ten bytes, the last holding bits 63 and 64
  for (int i = 0; i < 9; ++i) wide.push_back(0xFF);
  wide.push_back(0x02);
  CHECK(error_of(wide) ==
        "t.vmxtrace: byte 26: overlong address in the record starting at byte 16 (an address is at most ten "
        "LEB128 bytes holding 64 bits)");

  auto padded = header();
  record(padded, 1, 8, 0x10000);  // bytes 16..19
  padded.push_back(0x01);         // tag at byte 20, then 0x84 0x00: 4 with a redundant zero byte
  padded.push_back(0x84);
  padded.push_back(0x00);
  CHECK(error_of(padded) ==
        "t.vmxtrace: byte 22: the address of the record starting at byte 20 is not in its shortest LEB128 form "
        "(a zero final byte)");
}

TEST_CASE("trace addresses outside the user half of the canonical address space are rejected") {
  auto kernel = header();
  record(kernel, 1, 8, 0x10000);
  record(kernel, 1, 8, -0x20000);  // 0x10000 - 0x20000 wraps to 0xffff...f0000, at byte 20
  CHECK(error_of(kernel) ==
        "t.vmxtrace: byte 20: address 0xffffffffffff0000 (8 bytes) is outside the user half of the canonical "
        "address space a trace may use, [0x1000, 0x7ffffffff000)");

  auto null_page = header();
  record(null_page, 0, 4, 0xFF0);
  CHECK(error_of(null_page).find("byte 16: address 0xff0 (4 bytes) is outside") != std::string::npos);

  auto hole = header();
  record(hole, 2, 8, 0x800000000000);  // the first non-canonical address
  CHECK(error_of(hole).find("byte 16: address 0x800000000000 (8 bytes) is outside") != std::string::npos);

  // The last bytes of an access count too: 8 bytes at limit - 4 cross it.
  auto straddle = header();
  record(straddle, 1, 8, static_cast<std::int64_t>(TraceFile::kAddressLimit - 4));
  CHECK(error_of(straddle).find("address 0x7fffffffeffc (8 bytes) is outside") != std::string::npos);

  auto last = header();
  record(last, 1, 8, static_cast<std::int64_t>(TraceFile::kAddressLimit - 8));
  CHECK(error_of(last).empty());
}

TEST_CASE("a trace streams through its buffer: long files decode as in memory, errors name the file offset") {
  // Deltas of every length a canonical address allows (one to seven LEB128
  // bytes), so that records straddle the buffer's refills at every split.
  auto b = header();
  record(b, 1, 8, 0x10000000);
  record(b, 0, 4, 0x20000000);
  std::uint64_t records = 2;
  for (int i = 0; b.size() < (800u << 10); ++i) {
    for (unsigned k = 0; k < 7; ++k) {
      const std::int64_t d = std::int64_t(1) << (7 * k);
      record(b, 1 + k % 3, 8, d);
      record(b, 1, 8, -d);
      record(b, 0, 1 + k, d + 1);
      record(b, 0, 1 + k, -d);
      records += 4;
    }
  }
  record(b, 0, 4, 1);  // a two-byte record last
  ++records;
  const std::string path = "/tmp/vmxsim-test-stream-" + std::to_string(::getpid()) + ".vmxtrace";
  {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
  TraceFile mem = TraceFile::parse(b, "mem");
  TraceFile file = TraceFile::load(path);
  CHECK(file.records() == records);
  CHECK(mem.records() == records);
  auto a = mem.cursor();
  auto c = file.cursor();
  TraceRecord ra, rc;
  std::uint64_t same = 0;
  std::vector<std::uint64_t> pages;
  while (a.next(ra)) {
    REQUIRE(c.next(rc));
    if (ra.address == rc.address && ra.kind == rc.kind && ra.size == rc.size) ++same;
    pages.push_back(ra.address >> 12);
    pages.push_back((ra.address + ra.size - 1) >> 12);
  }
  CHECK_FALSE(c.next(rc));
  CHECK(same == records);
  // Batches give the records one by one would, whatever their size, from
  // the file (across refills) and from memory.
  for (const std::size_t max : {std::size_t{1}, std::size_t{7}, std::size_t{256}, std::size_t{100000}}) {
    auto one = mem.cursor();
    auto bf = file.cursor();
    auto bm = mem.cursor();
    std::vector<TraceRecord> got_file(max), got_mem(max);
    std::uint64_t n_file = 0, n_mem = 0, agree = 0;
    while (const std::size_t n = bf.next_batch(got_file.data(), max)) {
      for (std::size_t i = 0; i < n; ++i, ++n_file) {
        REQUIRE(one.next(ra));
        const TraceRecord& r = got_file[i];
        if (ra.address == r.address && ra.kind == r.kind && ra.size == r.size) ++agree;
      }
    }
    while (const std::size_t n = bm.next_batch(got_mem.data(), max)) n_mem += n;
    CHECK_FALSE(one.next(ra));
    CHECK(n_file == records);
    CHECK(n_mem == records);
    CHECK(agree == records);
  }
  // The regions are the sorted distinct pages merged across small gaps.
  std::sort(pages.begin(), pages.end());
  pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
  std::vector<std::pair<std::uint64_t, std::uint64_t>> expected, got;
  for (std::size_t i = 0; i < pages.size();) {
    std::size_t j = i;
    while (j + 1 < pages.size() && pages[j + 1] - pages[j] <= TraceFile::kRegionGapPages) ++j;
    expected.emplace_back(pages[i] << 12, (pages[j] + 1) << 12);
    i = j + 1;
  }
  for (const auto& r : file.regions()) got.emplace_back(r.start, r.end);
  CHECK(got == expected);
  CHECK(expected.size() > 4);

  // A bad tag far into the file is reported at its offset in the file, not
  // in the buffer.
  const std::size_t at = b.size() - 2;  // the last record is a two-byte one
  REQUIRE((b[at] & 3) == 0);
  b[at] |= 0x04;
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
  std::string err;
  try {
    TraceFile::load(path);
  } catch (const TraceError& e) {
    err = e.what();
  }
  CHECK(err == path + ": byte " + std::to_string(at) + ": record tag " + fmt::format("{:#04x}", b[at]) +
                   " has the reserved bit set");
  std::remove(path.c_str());
}

TEST_CASE("a batch ends before a malformed record, whose error follows with its file offset") {
  // A file that changes under a loaded trace: the replay's batches hand out
  // every record before the bad one, then the error names its byte.
  auto b = header();
  record(b, 1, 8, 0x10000000);
  for (int i = 0; i < 1000; ++i) record(b, 1 + i % 3, 4, (i % 2) ? 0x20 : -0x1C);
  const std::string path = "/tmp/vmxsim-test-batch-" + std::to_string(::getpid()) + ".vmxtrace";
  auto write = [&] {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  };
  write();
  TraceFile t = TraceFile::load(path);
  REQUIRE(t.records() == 1001);
  // Record 600 (counting from 0) gets the reserved bit: the first record
  // takes six bytes, every other one a tag and a one-byte varint.
  const std::size_t at = 16 + 6 + 2 * 599;
  REQUIRE((b[at] & 0x4) == 0);
  b[at] |= 0x4;
  write();
  auto c = t.cursor();
  std::vector<TraceRecord> batch(256);
  std::uint64_t before = 0;
  std::string err;
  try {
    while (const std::size_t n = c.next_batch(batch.data(), batch.size())) before += n;
  } catch (const TraceError& e) {
    err = e.what();
  }
  CHECK(before == 600);
  CHECK(err == fmt::format("{}: byte {}: record tag {:#04x} has the reserved bit set", path, at, b[at]));
  std::remove(path.c_str());
}

TEST_CASE("the checked-in trace of sort(1) parses") {
  TraceFile t = TraceFile::load(std::string(VMXSIM_SOURCE_DIR) + "/tests/data/sort.vmxtrace");
  CHECK(t.records() == 100000);
  CHECK_THROWS_AS(TraceFile::load("/nonexistent.vmxtrace"), TraceError);
}
