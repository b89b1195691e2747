#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

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
  record(reserved, 1, 8, 10);
  reserved.push_back(0x04);  // reserved bit in the second record's tag, at byte 18
  reserved.push_back(0x00);
  CHECK(error_of(reserved) == "t.vmxtrace: byte 18: record tag 0x04 has the reserved bit set");

  auto truncated = header();
  record(truncated, 1, 8, 10);
  truncated.push_back(0x01);  // tag at byte 18, then a varint cut short
  truncated.push_back(0x80);
  CHECK(error_of(truncated) ==
        "t.vmxtrace: byte 20: truncated or overlong address of the record starting at byte 18");
}

TEST_CASE("the checked-in trace of sort(1) parses") {
  TraceFile t = TraceFile::load(std::string(VMXSIM_SOURCE_DIR) + "/tests/data/sort.vmxtrace");
  CHECK(t.records() == 100000);
  CHECK_THROWS_AS(TraceFile::load("/nonexistent.vmxtrace"), TraceError);
}
