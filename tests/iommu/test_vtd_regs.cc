// The VT-d register set and invalidation queue (iommu/vtd_regs.h): what
// software reads and writes, the GCMD/GSTS handshake, the queue's timing and
// errors, and the fault-recording registers, on a unit bound to a fake
// memory (tests/mmu/walk_harness.h) and driven through tests/iommu/vtd_harness.h.
#include <catch2/catch.hpp>

#include <vector>

#include "iommu/vtd_harness.h"
#include "iommu/vtd_regs.h"
#include "mmu/walk_harness.h"

using iommu::DmaAccess;
using iommu::FaultReason;
using iommu::Iommu;
using iommu::IommuParams;
namespace vtd = iommu::vtd;
namespace qi = iommu::qi;
namespace ctx = iommu::ctx;
namespace root = iommu::root;

namespace {

constexpr std::uint16_t kDev = iommu::requester_id(3, 2, 0);
constexpr std::uint64_t kIova = 0x0000'1234'5678'8000ull;
constexpr std::uint64_t kHpa = 0x2'0000'0000ull;

struct Unit {
  Unit() : iommu(cfg::defaults<IommuParams>(), mem, &st), drv(iommu, mem, &st) {}
  /// A legacy root table with kDev's context for domain did mapping pages
  /// kIova + i * 4 KiB (i < pages) to kHpa + i * 4 KiB.
  std::uint64_t tables(std::uint16_t did, unsigned pages = 1) {
    const std::uint64_t rt = 0x10'0000, ct = 0x10'1000, slpt = 0x10'2000;
    mem.poke(rt + iommu::rid_bus(kDev) * root::kEntrySize, root::lo(ct));
    const auto ce = ctx::make(slpt, did);
    mem.poke(ct + iommu::rid_devfn(kDev) * ctx::kEntrySize, ce.lo);
    mem.poke(ct + iommu::rid_devfn(kDev) * ctx::kEntrySize + 8, ce.hi);
    std::uint64_t t = slpt, next = 0x10'3000;
    for (unsigned level = 4; level > 1; --level) {
      const std::uint64_t a = t + mmu::table_index(kIova, level) * 8;
      mem.poke(a, next | iommu::sl::kRw);
      t = next;
      next += 0x1000;
    }
    for (unsigned i = 0; i < pages; ++i)
      mem.poke(t + mmu::table_index(kIova + i * 0x1000ull, 1) * 8, (kHpa + i * 0x1000ull) | iommu::sl::kRw);
    return rt;
  }
  iommu::TranslateResult dma(std::uint64_t iova, std::uint64_t& hpa, DmaAccess a = DmaAccess::Read) {
    std::uint32_t cycles = 0;
    return iommu.translate(kDev, iova, a, hpa, cycles);
  }
  std::uint64_t counter(const char* n) const {
    return dynamic_cast<const stats::Counter*>(st.find(std::string("vtd.") + n))->value();
  }

  FakeMemory mem;
  stats::Group st;
  Iommu iommu;
  vtdtest::Driver drv;
};

}  // namespace

TEST_CASE("capability registers report what the model supports, and reserved bits and unknown offsets read 0",
          "[iommu][vtd]") {
  Unit u;
  const std::uint64_t cap = u.drv.rd(vtd::kCap, 8), ecap = u.drv.rd(vtd::kEcap, 8);
  CHECK(u.drv.rd(vtd::kVer) == 0x30);
  CHECK(vtd::cap::sagaw(cap) == 0xE);  // 39, 48 and 57 bits
  CHECK(vtd::cap::nfr(cap) == 8);      // fault_records
  CHECK(vtd::cap::fro(cap) == vtd::kFrcd);
  CHECK(((cap & vtd::cap::kPsi) && ((cap >> vtd::cap::kMamvShift) & 0x3F) == 9));
  CHECK(!(cap & vtd::cap::kPi));  // no interrupt-remapping unit bound
  CHECK((ecap & (vtd::ecap::kC | vtd::ecap::kQi | vtd::ecap::kPt | vtd::ecap::kNest | vtd::ecap::kPasid |
                 vtd::ecap::kSmts | vtd::ecap::kSlts | vtd::ecap::kFlts)) ==
        (vtd::ecap::kC | vtd::ecap::kQi | vtd::ecap::kPt | vtd::ecap::kNest | vtd::ecap::kPasid | vtd::ecap::kSmts |
         vtd::ecap::kSlts | vtd::ecap::kFlts));
  CHECK(!(ecap & vtd::ecap::kIr));
  CHECK(vtd::ecap::iro(ecap) == vtd::kIva);
  // Read-only registers ignore writes.
  u.drv.wr(vtd::kCap, 0xFFFFFFFF);
  CHECK(u.drv.rd(vtd::kCap, 8) == cap);
  // Reserved bits read 0: RTADDR bits 9:0, IQA bits 10:3, FEDATA 31:16.
  u.drv.wr(vtd::kRtaddr, ~0ull, 8);
  CHECK(u.drv.rd(vtd::kRtaddr, 8) == 0x000FFFFFFFFFFC00ull);
  u.drv.wr(vtd::kIqa, ~0ull, 8);
  CHECK(u.drv.rd(vtd::kIqa, 8) == (vtd::iqa::kBaseMask | vtd::iqa::kDw256 | 7));
  u.drv.wr(vtd::kFedata, 0xFFFFFFFF);
  CHECK(u.drv.rd(vtd::kFedata) == 0xFFFF);
  // GCMD is write-only; FECTL resets masked.
  CHECK(u.drv.rd(vtd::kGcmd) == 0);
  CHECK(u.drv.rd(vtd::kFectl) == vtd::ectl::kIm);
  // Halves of a 64-bit register, and offsets outside the set.
  u.drv.wr(vtd::kRtaddr, 0, 8);
  u.drv.wr(vtd::kRtaddr + 4, 0x1234);
  CHECK(u.drv.rd(vtd::kRtaddr, 8) == 0x1234'0000'0000ull);
  CHECK(u.drv.rd(vtd::kRtaddr + 4) == 0x1234);
  const auto before = u.counter("unimplemented");
  CHECK(u.drv.rd(0x60) == 0);
  u.drv.wr(0x60, 5);
  CHECK(u.drv.rd(vtd::kGsts, 2) == 0);  // bad size
  CHECK(u.counter("unimplemented") == before + 3);
}

TEST_CASE("GCMD/GSTS: one command at a time, the status bit following, and SRTP latches RTADDR", "[iommu][vtd]") {
  Unit u;
  const std::uint64_t rt = u.tables(5);
  std::uint64_t hpa = 0;
  // Before TE, DMA is untranslated.
  CHECK((u.dma(kIova, hpa).ok() && hpa == kIova));
  CHECK(u.drv.rd(vtd::kGsts) == 0);
  // RTADDR alone does nothing until SRTP.
  u.drv.wr(vtd::kRtaddr, rt, 8);
  CHECK(!(u.drv.rd(vtd::kGsts) & vtd::gcmd::kSrtp));
  // Two commands in one write are refused: no status changes.
  u.drv.wr(vtd::kGcmd, vtd::gcmd::kSrtp | vtd::gcmd::kTe);
  CHECK(u.drv.rd(vtd::kGsts) == 0);
  CHECK(u.counter("commands_refused") == 1);
  u.drv.command(vtd::gcmd::kSrtp);  // RTPS set
  u.drv.enable();                   // TES set
  CHECK(u.drv.rd(vtd::kGsts) == (vtd::gcmd::kSrtp | vtd::gcmd::kTe));
  CHECK(u.iommu.enabled());
  REQUIRE(u.dma(kIova + 0x10, hpa).ok());
  CHECK(hpa == kHpa + 0x10);
  // A later RTADDR write needs SRTP again: the latched table stays.
  u.drv.wr(vtd::kRtaddr, 0x50'0000, 8);
  u.drv.command(vtd::gcmd::kSrtp);
  u.drv.submit({qi::context_cache(1), qi::iotlb(1)});
  CHECK(u.dma(kIova, hpa).reason == FaultReason::kRootNotPresent);
  // Turning TE off (keeping the rest) stops translation.
  u.drv.enable(false);
  CHECK((u.dma(kIova, hpa).ok() && hpa == kIova));
  CHECK(!(u.drv.rd(vtd::kGsts) & vtd::gcmd::kTe));
  // Fault logs and write-buffer flushing are not supported (CAP.AFL = RWBF = 0).
  u.drv.wr(vtd::kGcmd, vtd::gcmd::kWbf);
  CHECK(!(u.drv.rd(vtd::kGsts) & vtd::gcmd::kWbf));
}

TEST_CASE("the invalidation queue: descriptors take time, IQH follows, the wait descriptor writes its status",
          "[iommu][vtd][qi]") {
  const bool wide = GENERATE(false, true);  // 128-bit (legacy) and 256-bit descriptors
  Unit u;
  u.drv.set_root_table(u.tables(5));
  u.drv.enable();
  u.drv.enable_queue(wide);
  CHECK(u.drv.rd(vtd::kIqh, 8) == 0);
  const unsigned bytes = wide ? 32 : 16;
  u.drv.put(qi::context_cache(1));
  u.drv.put(qi::iotlb(1));
  u.mem.poke(vtdtest::kStatus, 0xAAAA'AAAA'0000'0000ull);  // the upper half is not the status's
  u.drv.put(qi::wait(vtdtest::kStatus, 0x600D));
  const std::size_t reads0 = u.mem.reads.size();
  u.drv.now = 1000;
  u.drv.ring();
  CHECK(u.drv.rd(vtd::kIqt, 8) == 3u * bytes);
  // Nothing is done at the moment IQT is written.
  CHECK(u.drv.rd(vtd::kIqh, 8) == 0);
  // Each descriptor: its fetch (2 or 4 reads of kReadLatency) then
  // descriptor_latency.
  const std::uint64_t lat = cfg::defaults<iommu::VtdParams>().descriptor_latency;
  const std::uint64_t per = (bytes / 8) * kReadLatency + lat;
  // The IQT read at 1000 fetched the first descriptor.
  CHECK(u.drv.regs.next_due() == 1000 + per);
  u.drv.now = 1000 + per - 1;
  CHECK(u.drv.rd(vtd::kIqh, 8) == 0);
  u.drv.now = 1000 + per;
  CHECK(u.drv.rd(vtd::kIqh, 8) == bytes);
  CHECK(u.iommu.stats().invalidations.value() == 1);
  u.drv.now = 1000 + 2 * per;
  CHECK(u.drv.rd(vtd::kIqh, 8) == 2u * bytes);
  CHECK(u.iommu.stats().invalidations.value() == 2);
  CHECK((u.mem.peek(vtdtest::kStatus) & 0xFFFFFFFF) == 0);  // the wait is still running
  u.drv.now = 1000 + 3 * per + kReadLatency;  // the status write's read-merge-write
  CHECK(u.drv.rd(vtd::kIqh, 8) == 3u * bytes);
  CHECK(u.mem.peek(vtdtest::kStatus) == 0xAAAA'AAAA'0000'600Dull);
  CHECK(u.drv.regs.next_due() == iommu::VtdRegisters::kIdle);
  CHECK(u.counter("descriptors") == 3);
  CHECK(u.counter("waits") == 1);
  CHECK(u.mem.reads.size() - reads0 == 3 * (bytes / 8) + 1);
  // With IF, ICS.IWC is set (write 1 to clear).
  u.drv.put(qi::wait(vtdtest::kStatus, 2, false, true));
  u.drv.ring();
  while (u.drv.step()) {
  }
  CHECK(u.drv.rd(vtd::kIcs) == vtd::ics::kIwc);
  u.drv.wr(vtd::kIcs, vtd::ics::kIwc);
  CHECK(u.drv.rd(vtd::kIcs) == 0);
  // Register-based invalidation is refused while the queue is on (IAIG 0).
  u.drv.wr(vtd::kIotlb, vtd::iotlbreg::make(1), 8);
  CHECK(((u.drv.rd(vtd::kIotlb, 8) >> vtd::iotlbreg::kIaigShift) & 3) == 0);
}

TEST_CASE("an invalid descriptor sets FSTS.IQE and stops the queue at it", "[iommu][vtd][qi]") {
  Unit u;
  u.drv.enable_queue();
  std::vector<std::uint64_t> msis;
  u.drv.regs.set_msi([&](std::uint64_t a, std::uint32_t d) { msis.push_back(a | (std::uint64_t(d) << 32)); });
  u.drv.wr(vtd::kFeaddr, 0xFEE0'1000u);
  u.drv.wr(vtd::kFedata, 0x47);
  u.drv.wr(vtd::kFectl, 0);  // unmask the fault event
  u.drv.put(qi::iotlb(1));
  u.drv.put(qi::Descriptor128{{qi::kDeviceTlb, 0}});  // ECAP.DT = 0: invalid
  u.drv.put(qi::iotlb(1));
  u.drv.ring();
  while (u.drv.step()) {
  }
  CHECK((u.drv.rd(vtd::kFsts) & vtd::fsts::kIqe) != 0);
  CHECK(u.drv.rd(vtd::kIqh, 8) == 16);  // at the bad descriptor
  CHECK(u.iommu.stats().invalidations.value() == 1);
  CHECK(u.counter("queue_errors") == 1);
  REQUIRE(msis.size() == 1);
  CHECK(msis[0] == (0xFEE0'1000ull | (0x47ull << 32)));
  // Software replaces it and clears IQE (RW1C): the queue goes on.
  u.mem.poke(vtdtest::kQueue + 16, qi::iotlb(2, 3).w[0]);
  u.mem.poke(vtdtest::kQueue + 24, qi::iotlb(2, 3).w[1]);
  u.drv.wr(vtd::kFsts, vtd::fsts::kIqe);
  while (u.drv.step()) {
  }
  CHECK(u.drv.rd(vtd::kFsts) == 0);
  CHECK(u.drv.rd(vtd::kIqh, 8) == 48);
  CHECK(u.iommu.stats().invalidations.value() == 3);
  // A reserved granularity is invalid too, and so is a tail beyond the queue.
  u.drv.put(qi::context_cache(0));
  u.drv.ring();
  while (u.drv.step()) {
  }
  CHECK((u.drv.rd(vtd::kFsts) & vtd::fsts::kIqe) != 0);
  u.drv.wr(vtd::kFsts, vtd::fsts::kIqe);
  u.drv.wr(vtd::kIqt, 0x2000, 4);  // a one-page queue
  CHECK((u.drv.rd(vtd::kFsts) & vtd::fsts::kIqe) != 0);
}

TEST_CASE("an IOTLB invalidation descriptor removes exactly the entries it selects", "[iommu][vtd][qi]") {
  Unit u;
  u.drv.set_root_table(u.tables(5, 4));
  u.drv.enable();
  std::uint64_t hpa = 0;
  for (unsigned i = 0; i < 4; ++i) REQUIRE(u.dma(kIova + i * 0x1000ull, hpa).ok());
  REQUIRE(u.iommu.iotlb().occupancy() == 4);
  SECTION("page-selective, AM 1: two pages") {
    u.drv.submit({qi::iotlb(3, 5, kIova + 0x2000, 1, true)});
    CHECK(u.iommu.iotlb().occupancy() == 2);
    const auto misses = u.iommu.iotlb().stats().misses.value();
    for (unsigned i = 0; i < 2; ++i) REQUIRE(u.dma(kIova + i * 0x1000ull, hpa).ok());
    CHECK(u.iommu.iotlb().stats().misses.value() == misses);  // pages 0 and 1 kept
  }
  SECTION("another domain: nothing") {
    u.drv.submit({qi::iotlb(2, 6)});
    CHECK(u.iommu.iotlb().occupancy() == 4);
  }
  SECTION("AM above CAP.MAMV is an invalid descriptor") {
    u.drv.enable_queue();
    u.drv.put(qi::iotlb(3, 5, kIova, 10));
    u.drv.ring();
    while (u.drv.step()) {
    }
    CHECK((u.drv.rd(vtd::kFsts) & vtd::fsts::kIqe) != 0);
    CHECK(u.iommu.iotlb().occupancy() == 4);
  }
}

TEST_CASE("register-based invalidation: CCMD and IOTLB_REG report the granularity done", "[iommu][vtd]") {
  Unit u;
  u.drv.set_root_table(u.tables(5, 2));
  u.drv.enable();
  std::uint64_t hpa = 0;
  REQUIRE(u.dma(kIova, hpa).ok());
  REQUIRE(u.dma(kIova + 0x1000, hpa).ok());
  u.drv.wr(vtd::kIva, vtd::iotlbreg::iva(kIova + 0x1000), 8);
  u.drv.wr(vtd::kIotlb, vtd::iotlbreg::make(3, 5), 8);
  const std::uint64_t r = u.drv.rd(vtd::kIotlb, 8);
  CHECK((!(r & vtd::iotlbreg::kIvt) && ((r >> vtd::iotlbreg::kIaigShift) & 3) == 3));
  CHECK(u.iommu.iotlb().occupancy() == 1);
  u.drv.wr(vtd::kCcmd, vtd::ccmd::make(3, 5, kDev), 8);
  const std::uint64_t cc = u.drv.rd(vtd::kCcmd, 8);
  CHECK((!(cc & vtd::ccmd::kIcc) && ((cc >> vtd::ccmd::kCaigShift) & 3) == 3));
  CHECK(u.iommu.context_cache_occupancy() == 0);
  CHECK(u.counter("register_invalidations") == 2);
}

TEST_CASE("fault-recording registers: a fault shows in FRCD at FRI, F is write-1-to-clear", "[iommu][vtd][faults]") {
  Unit u;
  u.drv.set_root_table(u.tables(5));
  u.drv.enable();
  std::vector<std::uint64_t> msis;
  u.drv.regs.set_msi([&](std::uint64_t a, std::uint32_t) { msis.push_back(a); });
  std::uint64_t hpa = 0;
  CHECK(u.drv.rd(vtd::kFsts) == 0);
  // A write to an unmapped page (reason 5h), while the fault event is masked.
  REQUIRE(u.dma(kIova + 0x5000 + 0x123, hpa, DmaAccess::Write).reason == FaultReason::kWriteDenied);
  const std::uint32_t fsts = static_cast<std::uint32_t>(u.drv.rd(vtd::kFsts));
  CHECK((fsts & vtd::fsts::kPpf) != 0);
  CHECK(((fsts >> vtd::fsts::kFriShift) & 0xFF) == 0);
  CHECK(msis.empty());
  CHECK(u.drv.rd(vtd::kFectl) == (vtd::ectl::kIm | vtd::ectl::kIp));  // pending while masked
  const std::uint64_t lo = u.drv.rd(vtd::kFrcd, 8), hi = u.drv.rd(vtd::kFrcd + 8, 8);
  CHECK(lo == kIova + 0x5000);
  CHECK((hi & 0xFFFF) == kDev);
  CHECK(((hi >> vtd::frcd::kFrShift) & 0xFF) == 5);
  CHECK(!(hi & vtd::frcd::kRead));  // a write
  CHECK((hi & vtd::frcd::kF) != 0);
  // Unmasking sends the pending event.
  u.drv.wr(vtd::kFectl, 0);
  CHECK(msis.size() == 1);
  CHECK(u.drv.rd(vtd::kFectl) == 0);
  // A second fault goes to FRCD 1; FRI still names the oldest; no new
  // event while PPF stays set.
  REQUIRE(!u.dma(kIova + 0x6000, hpa).ok());
  CHECK(((u.drv.rd(vtd::kFrcd + 16 + 8, 8) >> vtd::frcd::kFrShift) & 0xFF) == 6);  // a read: 6h
  CHECK((u.drv.rd(vtd::kFrcd + 16 + 8, 8) & vtd::frcd::kRead) != 0);
  CHECK(msis.size() == 1);
  // Writing 0 to F does nothing; writing 1 clears record 0 only.
  u.drv.wr(vtd::kFrcd + 12, 0);
  CHECK((u.drv.rd(vtd::kFrcd + 8, 8) & vtd::frcd::kF) != 0);
  u.drv.wr(vtd::kFrcd + 12, 1u << 31);
  CHECK(u.drv.rd(vtd::kFrcd + 8, 8) == 0);
  CHECK((u.drv.rd(vtd::kFrcd + 16 + 8, 8) & vtd::frcd::kF) != 0);
  CHECK(((u.drv.rd(vtd::kFsts) >> vtd::fsts::kFriShift) & 0xFF) == 1);
  u.drv.wr(vtd::kFrcd + 16 + 12, 1u << 31);
  CHECK(!(u.drv.rd(vtd::kFsts) & vtd::fsts::kPpf));
  CHECK(u.iommu.fault_log().empty());
  // A fault after clearing raises a new event.
  REQUIRE(!u.dma(kIova + 0x7000, hpa).ok());
  CHECK(msis.size() == 2);
  CHECK(u.counter("fault_events") == 2);
}

TEST_CASE("fault-recording registers fill in turn, and a held register at FRI means overflow (PFO)",
          "[iommu][vtd][faults]") {
  auto p = cfg::defaults<IommuParams>();
  p.fault_records = 2;
  FakeMemory mem;
  stats::Group st;
  Iommu unit(p, mem, &st);
  vtdtest::Driver drv(unit, mem, &st);
  drv.set_root_table(0x10'0000);  // empty: every request faults (1h)
  drv.enable();
  std::uint64_t hpa = 0;
  std::uint32_t cycles = 0;
  for (int i = 0; i < 3; ++i) unit.translate(kDev, 0x1000ull * i, DmaAccess::Read, hpa, cycles);
  CHECK((drv.rd(vtd::kFsts) & (vtd::fsts::kPfo | vtd::fsts::kPpf)) == (vtd::fsts::kPfo | vtd::fsts::kPpf));
  CHECK(unit.stats().fault_overflows.value() == 1);
  // Clear FRCD 0: the next fault goes to 0 (FRI wrapped), the one after
  // finds FRCD 1 held and overflows.
  drv.wr(vtd::kFrcd + 12, 1u << 31);
  drv.wr(vtd::kFsts, vtd::fsts::kPfo);
  unit.translate(kDev, 0x9000, DmaAccess::Read, hpa, cycles);
  CHECK(drv.rd(vtd::kFrcd, 8) == 0x9000);
  CHECK(((drv.rd(vtd::kFsts) >> vtd::fsts::kFriShift) & 0xFF) == 1);  // the oldest is in FRCD 1
  unit.translate(kDev, 0xA000, DmaAccess::Read, hpa, cycles);
  CHECK(unit.stats().fault_overflows.value() == 2);
  CHECK((drv.rd(vtd::kFsts) & vtd::fsts::kPfo) != 0);
}
