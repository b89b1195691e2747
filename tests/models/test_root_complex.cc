// The root complex, driven through its DMA socket by a test initiator:
// physical DMA, MSI routing, page splitting, IOMMU translation with real
// VT-d tables in PhysMem (timed, blocked DMA leaves memory unchanged), LLC
// timing. Each test case elaborates its own design, so runs in its own
// process.
#include "models/root_complex.h"

#include <catch2/catch.hpp>

#include <cstring>
#include <numeric>

#include "models/cache.h"
#include "models/coherence.h"
#include "models/dma_harness.h"
#include "models/mem_hierarchy.h"

using namespace vmx;
using models::RootComplex;
using models::RootComplexParams;
using test::TestInitiator;

namespace {

constexpr std::uint16_t kRid = iommu::requester_id(1, 0, 0);
constexpr std::uint16_t kOther = iommu::requester_id(1, 0, 1);

RootComplexParams rc_params() {
  auto p = cfg::defaults<RootComplexParams>();
  p.frequency = 1'000'000'000;  // 1 GHz: one cycle is 1 ns
  p.memory_latency = 100;
  p.bytes_per_cycle = 16;
  return p;
}

struct Bench {
  explicit Bench(bool with_iommu = false, bool with_llc = false)
      : mem(64ull << 20),
        params(rc_params()),
        llc(cfg::defaults<models::LlcParams>(), &root, "llc"),
        table_mem(mem, with_llc ? &llc : nullptr, params),
        unit(cfg::defaults<iommu::IommuParams>(), table_mem, &root),
        rc("rc", params, mem, with_iommu ? &unit : nullptr, with_llc ? &llc : nullptr, &root),
        dev("dev") {
    dev.socket.bind(rc.dma);
    rc.bind_msi_sink(&msi);
  }
  stats::Group root;
  models::PhysMem mem;
  RootComplexParams params;
  models::Cache llc;
  models::IommuTableMemory table_mem;
  iommu::Iommu unit;
  iommu::VtdRegisters regs{cfg::defaults<iommu::VtdParams>(), unit, nullptr, table_mem, &root};
  RootComplex rc;
  TestInitiator dev;
  test::FakeMsiSink msi;
};

std::vector<std::uint8_t> pattern(std::size_t n, std::uint8_t seed) {
  std::vector<std::uint8_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint8_t>(seed + i * 7);
  return v;
}

}  // namespace

TEST_CASE("physical DMA copies real bytes and is timed by latency and bandwidth") {
  Bench b;
  auto data = pattern(256, 3);
  std::vector<std::uint8_t> back(256);
  sc_core::sc_time dw, dr;
  test::run(b.dev, [&] {
    CHECK(b.dev.access(true, 0x10000, data.data(), 256, kRid, &dw) == tlm::TLM_OK_RESPONSE);
    CHECK(b.dev.access(false, 0x10000, back.data(), 256, kRid, &dr) == tlm::TLM_OK_RESPONSE);
  });
  CHECK(back == data);
  std::vector<std::uint8_t> in_mem(256);
  b.mem.read_bytes(0x10000, in_mem.data(), 256);
  CHECK(in_mem == data);
  // 100 cycles of latency + 256 / 16 bytes per cycle, at 1 ns per cycle.
  CHECK(dw == sc_core::sc_time(116, sc_core::SC_NS));
  CHECK(dr == sc_core::sc_time(116, sc_core::SC_NS));
  const auto* rs = b.rc.requester_stats(kRid);
  REQUIRE(rs);
  CHECK((rs->reads.value() == 1 && rs->writes.value() == 1));
  CHECK((rs->read_bytes.value() == 256 && rs->write_bytes.value() == 256));
  CHECK(b.rc.stats().translation_cycles.value() == 0);
  CHECK(b.rc.requester_stats(kOther) == nullptr);
  CHECK(RootComplex::requester_name(iommu::requester_id(0x3a, 2, 5)) == "rid_3a_02_5");
}

TEST_CASE("a write to the MSI window is an interrupt message, not a memory write") {
  Bench b;
  std::uint32_t data = 0x4041;
  test::run(b.dev, [&] { CHECK(b.dev.access(true, 0xFEE01000, &data, 4, kOther) == tlm::TLM_OK_RESPONSE); });
  REQUIRE(b.msi.got.size() == 1);
  CHECK(b.msi.got[0].m.address == 0xFEE01000);
  CHECK(b.msi.got[0].m.data == 0x4041);
  CHECK(b.msi.got[0].m.requester == kOther);
  CHECK(b.rc.stats().msis.value() == 1);
  CHECK(b.rc.stats().dma_writes.value() == 0);
  CHECK(b.mem.frames_allocated() == 0);
}

TEST_CASE("a DMA crossing pages is split per page, and beyond memory it is refused") {
  Bench b;
  auto data = pattern(5000, 9);
  test::run(b.dev, [&] {
    CHECK(b.dev.access(true, 0x20F00, data.data(), 5000, kRid) == tlm::TLM_OK_RESPONSE);
    std::uint8_t x[8] = {};
    CHECK(b.dev.access(true, (64ull << 20) - 4, x, 8, kRid) == tlm::TLM_ADDRESS_ERROR_RESPONSE);
  });
  CHECK(b.rc.stats().pages.value() == 3);  // 0x100 + 0x1000 + 0x288 bytes
  std::vector<std::uint8_t> in_mem(5000);
  b.mem.read_bytes(0x20F00, in_mem.data(), 5000);
  CHECK(in_mem == data);
  CHECK(b.rc.stats().unclaimed.value() == 1);
}

TEST_CASE("with the IOMMU enabled, in-domain DMA is translated and charged its walk") {
  Bench b(true);
  test::VtdTables t(b.mem, 0x100000);
  const std::uint64_t slpt = t.domain(kRid, 7);
  t.map(slpt, 0x4000'0000, 0x30000);  // IOVA 1 GiB -> HPA 0x30000
  t.map(slpt, 0x4000'1000, 0x50000);  // the next IOVA page is not contiguous in HPA
  t.program(b.regs);
  auto data = pattern(6000, 1);
  sc_core::sc_time d1, d2;
  test::run(b.dev, [&] {
    CHECK(b.dev.access(true, 0x4000'0000 + 100, data.data(), 6000, kRid, &d1) == tlm::TLM_OK_RESPONSE);
    std::uint8_t x[4] = {1, 2, 3, 4};
    CHECK(b.dev.access(true, 0x4000'0000, x, 4, kRid, &d2) == tlm::TLM_OK_RESPONSE);
  });
  std::vector<std::uint8_t> lo(3996), hi(2004);
  b.mem.read_bytes(0x30000 + 100, lo.data(), lo.size());
  b.mem.read_bytes(0x50000, hi.data(), hi.size());
  CHECK(std::equal(lo.begin(), lo.end(), data.begin()));
  CHECK(std::equal(hi.begin(), hi.end(), data.begin() + 3996));
  // First page: context miss (1) + root + context refs, IOTLB (2), PSC (1),
  // four second-level refs; each reference costs memory_latency (no LLC).
  // Second page: context hit (1), IOTLB miss (2), PSC hit at the PDE (1),
  // one reference. Then the last DMA: context hit + IOTLB hit.
  const std::uint32_t m = 100;
  const std::uint64_t first = 1 + 2 * m + 2 + 1 + 4 * m;
  const std::uint64_t second = 1 + 2 + 1 + m;
  const std::uint64_t third = 1 + 2;
  const auto& is = b.unit.stats();
  CHECK(is.translations.value() == 3);
  CHECK(is.walks.value() == 2);
  CHECK(b.rc.stats().translation_cycles.value() == first + second + third);
  CHECK(b.rc.requester_stats(kRid)->translation_cycles.value() == first + second + third);
  CHECK(d1 == sc_core::sc_time(double(first + second + 100 + 6000 / 16), sc_core::SC_NS));
  CHECK(d2 == sc_core::sc_time(double(third + 100 + 1), sc_core::SC_NS));
}

TEST_CASE("out-of-domain DMA is blocked, logged with requester and address, memory unchanged") {
  Bench b(true);
  test::VtdTables t(b.mem, 0x100000);
  const std::uint64_t slpt = t.domain(kRid, 7);
  t.map(slpt, 0x4000'0000, 0x30000);
  t.map(slpt, 0x4000'1000, 0x31000, iommu::sl::kRead);  // read-only page
  t.domain(kOther, 8);                                   // a domain mapping nothing
  t.program(b.regs);
  auto before = pattern(8192, 5);
  b.mem.write_bytes(0x30000, before.data(), before.size());
  const std::uint64_t sum = test::checksum(b.mem, 0x30000, 8192);
  auto junk = pattern(8192, 77);
  test::run(b.dev, [&] {
    // Across the writable and the read-only page: blocked as a whole.
    CHECK(b.dev.access(true, 0x4000'0800, junk.data(), 4096, kRid) == tlm::TLM_ADDRESS_ERROR_RESPONSE);
    // Another function aiming at the same IOVA: its domain has no mapping.
    CHECK(b.dev.access(true, 0x4000'0000, junk.data(), 64, kOther) == tlm::TLM_ADDRESS_ERROR_RESPONSE);
    // Reading the read-only page is fine.
    std::uint8_t x[16];
    CHECK(b.dev.access(false, 0x4000'1000, x, 16, kRid) == tlm::TLM_OK_RESPONSE);
  });
  CHECK(test::checksum(b.mem, 0x30000, 8192) == sum);
  const auto& log = b.unit.fault_log();
  REQUIRE(log.size() == 2);
  CHECK((log[0].requester_id == kRid && log[0].address == 0x4000'1000));
  CHECK(log[0].reason == iommu::FaultReason::kWriteDenied);
  CHECK((log[1].requester_id == kOther && log[1].address == 0x4000'0000));
  CHECK(b.rc.stats().blocked.value() == 2);
  CHECK(b.rc.requester_stats(kOther)->blocked.value() == 1);
  CHECK(b.rc.stats().dma_writes.value() == 0);
  CHECK(b.rc.stats().dma_reads.value() == 1);
}

TEST_CASE("with the IOMMU disabled, DMA is physical and costs no translation") {
  Bench b(true);
  std::uint32_t v = 0xABCD;
  test::run(b.dev, [&] { CHECK(b.dev.access(true, 0x4000, &v, 4, kRid) == tlm::TLM_OK_RESPONSE); });
  CHECK(b.mem.read(0x4000, 4) == 0xABCD);
  CHECK(b.unit.stats().translations.value() == 0);
  CHECK(b.rc.stats().translation_cycles.value() == 0);
}

TEST_CASE("with an LLC attached, a DMA that hits every line costs the LLC latency") {
  Bench b(false, true);
  auto data = pattern(128, 2);
  sc_core::sc_time d1, d2;
  test::run(b.dev, [&] {
    b.dev.access(true, 0x8000, data.data(), 128, kRid, &d1);   // two lines, both miss and allocate
    b.dev.access(false, 0x8000, data.data(), 128, kRid, &d2);  // both hit
  });
  const std::uint64_t llc = b.params.llc_latency;
  CHECK(d1 == sc_core::sc_time(double(llc + 100 + 8), sc_core::SC_NS));
  CHECK(d2 == sc_core::sc_time(double(llc + 8), sc_core::SC_NS));
  CHECK((b.rc.stats().llc_misses.value() == 2 && b.rc.stats().llc_hits.value() == 2));
}

TEST_CASE("invalidation: a remapped page keeps its stale IOTLB entry until software invalidates it") {
  Bench b(true);
  test::VtdTables t(b.mem, 0x100000);
  const std::uint64_t slpt = t.domain(kRid, 7);
  t.map(slpt, 0x4000'0000, 0x30000);
  t.program(b.regs);
  std::uint32_t v1 = 0x1111, v2 = 0x2222, v3 = 0x3333;
  test::run(b.dev, [&] {
    CHECK(b.dev.access(true, 0x4000'0000, &v1, 4, kRid) == tlm::TLM_OK_RESPONSE);
    t.map(slpt, 0x4000'0000, 0x60000);  // software moves the page, no invalidation yet
    CHECK(b.dev.access(true, 0x4000'0004, &v2, 4, kRid) == tlm::TLM_OK_RESPONSE);
    test::invalidate_page(b.regs, 7, 0x4000'0000);
    CHECK(b.dev.access(true, 0x4000'0008, &v3, 4, kRid) == tlm::TLM_OK_RESPONSE);
  });
  CHECK(b.mem.read(0x30000, 4) == 0x1111);
  CHECK(b.mem.read(0x30004, 4) == 0x2222);  // the stale translation was used
  CHECK(b.mem.read(0x60008, 4) == 0x3333);  // after invalidation: the new page
  CHECK(b.mem.read(0x30008, 4) == 0);
  CHECK(b.unit.stats().walks.value() == 2);
  CHECK(b.unit.stats().invalidations.value() == 1);
}

TEST_CASE("the root complex hands a request's PASID prefix to the IOMMU") {
  // In legacy mode a request with a PASID is blocked (VT-d fault reason
  // 31h) even where the same IOVA without a PASID is mapped: the PASID
  // reached the IOMMU, and its fault record carries it.
  Bench b(true);
  test::VtdTables t(b.mem, 0x100000);
  const std::uint64_t slpt = t.domain(kRid, 7);
  t.map(slpt, 0x4000'0000, 0x30000);
  t.program(b.regs);
  std::uint8_t x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  test::run(b.dev, [&] {
    CHECK(b.dev.access(true, 0x4000'0000, x, 8, kRid) == tlm::TLM_OK_RESPONSE);
    CHECK(b.dev.access(true, 0x4000'0008, x, 8, kRid, nullptr, 0x1234) == tlm::TLM_ADDRESS_ERROR_RESPONSE);
  });
  REQUIRE(b.unit.fault_log().size() == 1);
  const auto& f = b.unit.fault_log()[0];
  CHECK(f.reason == iommu::FaultReason::kSmLegacyPasid);
  CHECK(f.has_pasid);
  CHECK(f.pasid == 0x1234);
  CHECK(f.requester_id == kRid);
}

TEST_CASE("a DMA write invalidates the cores' copies of every line it writes; a read leaves them") {
  Bench b(false, true);
  models::Coherence dir(cfg::defaults<models::MemHierarchyParams>().coherence, &b.root);
  models::MemHierarchy core(cfg::defaults<models::MemHierarchyParams>(), &b.llc, &b.root, "cpu0_mem");
  dir.join(core);
  b.rc.attach_coherence(&dir);
  // The core holds three lines, the first one modified.
  core.access(0x20000, models::AccessKind::Write);
  core.access(0x20040, models::AccessKind::Read);
  core.access(0x20080, models::AccessKind::Read);
  auto data = pattern(128, 9);
  std::vector<std::uint8_t> back(192);
  test::run(b.dev, [&] {
    CHECK(b.dev.access(false, 0x20000, back.data(), 192, kRid) == tlm::TLM_OK_RESPONSE);
    CHECK(core.l1d().probe_dirty(0x20000));
    CHECK(dir.stats().dma_modified_reads.value() == 1);
    // 128 bytes from 0x20020 touch the lines at 0x20000, 0x20040 and 0x20080.
    CHECK(b.dev.access(true, 0x20020, data.data(), 128, kRid) == tlm::TLM_OK_RESPONSE);
  });
  CHECK_FALSE(core.l1d().probe(0x20000));
  CHECK_FALSE(core.l1d().probe(0x20040));
  CHECK_FALSE(core.l1d().probe(0x20080));
  CHECK_FALSE(core.l2().probe(0x20040));
  CHECK(dir.stats().dma_invalidations.value() == 3);
  CHECK(core.coherence_stats()->invalidations_received.value() == 3);
  // The core's next load misses its own caches and finds the DMA's line in
  // the LLC (DDIO allocates it there).
  CHECK(core.access(0x20040, models::AccessKind::Read) == cfg::defaults<models::LlcParams>().latency);
}
