// Test-side VT-d driver: programs an iommu::Iommu (and optionally an
// iommu::InterruptRemap) the only way software can, through its register
// set (iommu/vtd_regs.h) and an invalidation queue in a FakeMemory
// (tests/mmu/walk_harness.h), the way a per-model test binds a device to a
// memory and a bus. Time is the harness's own IOMMU-cycle clock: a queued
// batch runs until its wait descriptor has written its status.
#pragma once

#include <catch2/catch.hpp>

#include <initializer_list>

#include "iommu/vtd_regs.h"
#include "mmu/walk_harness.h"

namespace vtdtest {
namespace {  // FakeMemory is in walk_harness.h's anonymous namespace

namespace vtd = vmx::iommu::vtd;
namespace qi = vmx::iommu::qi;

/// Where the harness keeps its queue and wait status (clear of the tests'
/// tables, which start at 1 MiB and 16 MiB).
constexpr std::uint64_t kQueue = 0x7F00'0000ull;
constexpr std::uint64_t kStatus = 0x7F10'0000ull;
constexpr std::uint32_t kDone = 1;

struct Driver {
  Driver(vmx::iommu::Iommu& unit, FakeMemory& m, vmx::stats::Group* stats, vmx::iommu::InterruptRemap* ir = nullptr)
      : mem(m), regs(vmx::cfg::defaults<vmx::iommu::VtdParams>(), unit, ir, m, stats, "vtd") {}

  std::uint64_t rd(std::uint64_t off, unsigned size = 4) { return regs.read(off, size, now); }
  void wr(std::uint64_t off, std::uint64_t v, unsigned size = 4) { regs.write(off, v, size, now); }

  /// GCMD: the kept enables plus cmd; the status bit must follow.
  void command(std::uint32_t cmd, bool on = true) {
    if (cmd & vtd::gcmd::kLevel) gcmd = on ? (gcmd | cmd) : (gcmd & ~cmd);
    wr(vtd::kGcmd, (cmd & vtd::gcmd::kOneShot) ? (gcmd | cmd) : gcmd);
    REQUIRE(((rd(vtd::kGsts) & cmd) != 0) == on);
  }
  /// RTADDR (with TTM) and SRTP.
  void set_root_table(std::uint64_t rtaddr) {
    wr(vtd::kRtaddr, rtaddr, 8);
    command(vtd::gcmd::kSrtp);
  }
  void enable(bool on = true) { command(vtd::gcmd::kTe, on); }
  void enable_queue(bool dw256 = false) {
    wide = dw256;
    wr(vtd::kIqt, 0, 8);
    wr(vtd::kIqa, vtd::iqa::make(kQueue, 0, dw256), 8);
    tail = 0;
    command(vtd::gcmd::kQie);
  }
  /// IRTA and SIRTP, then IRE.
  void enable_interrupt_remapping(std::uint64_t irta) {
    wr(vtd::kIrta, irta, 8);
    command(vtd::gcmd::kSirtp);
    command(vtd::gcmd::kIre);
  }

  /// Writes descriptors at the tail without ringing IQT.
  void put(const qi::Descriptor128& d) {
    const unsigned bytes = wide ? 32 : 16;
    mem.poke(kQueue + tail, d.w[0]);
    mem.poke(kQueue + tail + 8, d.w[1]);
    if (wide) {
      mem.poke(kQueue + tail + 16, 0);
      mem.poke(kQueue + tail + 24, 0);
    }
    tail = (tail + bytes) % 4096;
  }
  void ring() { wr(vtd::kIqt, tail, 4); }
  /// Runs the unit's clock to its next step; false when it is idle.
  bool step() {
    const std::uint64_t due = regs.next_due();
    if (due == vmx::iommu::VtdRegisters::kIdle) return false;
    if (due > now) now = due;
    regs.advance(now);
    return true;
  }
  /// Queues the descriptors and a wait descriptor and runs until the wait
  /// has written its status (as qi_submit_sync).
  void submit(std::initializer_list<qi::Descriptor128> ds) {
    if (!(rd(vtd::kGsts) & vtd::gcmd::kQie)) enable_queue(wide);
    for (const auto& d : ds) put(d);
    mem.poke(kStatus, 0);
    put(qi::wait(kStatus, kDone));
    ring();
    while ((mem.peek(kStatus) & 0xFFFFFFFF) != kDone) REQUIRE(step());
  }

  // The invalidations a driver issues, as descriptors (VT-d 6.5.2).
  void iotlb_invalidate_global() { submit({qi::iotlb(1)}); }
  void iotlb_invalidate_domain(std::uint16_t did) { submit({qi::iotlb(2, did)}); }
  void iotlb_invalidate_page(std::uint16_t did, std::uint64_t addr, unsigned am = 0, bool ih = false) {
    submit({qi::iotlb(3, did, addr, am, ih)});
  }
  void context_invalidate_global() { submit({qi::context_cache(1)}); }
  void context_invalidate_domain(std::uint16_t did) { submit({qi::context_cache(2, did)}); }
  void context_invalidate_device(std::uint16_t sid, unsigned fm = 0) { submit({qi::context_cache(3, 0, sid, fm)}); }
  void pasid_iotlb_invalidate(std::uint16_t did, std::uint32_t pasid) { submit({qi::pasid_iotlb(2, did, pasid)}); }
  void pasid_iotlb_invalidate_page(std::uint16_t did, std::uint32_t pasid, std::uint64_t addr, unsigned am = 0,
                                   bool ih = false) {
    submit({qi::pasid_iotlb(3, did, pasid, addr, am, ih)});
  }
  void pasid_cache_invalidate_global() { submit({qi::pasid_cache(3)}); }
  void pasid_cache_invalidate_domain(std::uint16_t did) { submit({qi::pasid_cache(0, did)}); }
  void pasid_cache_invalidate_pasid(std::uint16_t did, std::uint32_t pasid) {
    submit({qi::pasid_cache(1, did, pasid)});
  }

  /// Reads the fault-recording register at FSTS.FRI and clears its F bit
  /// (as Linux's dmar_fault); false if no fault is pending.
  bool pop_fault(std::uint64_t& lo, std::uint64_t& hi) {
    const std::uint32_t fsts = static_cast<std::uint32_t>(rd(vtd::kFsts));
    if (!(fsts & vtd::fsts::kPpf)) return false;
    const std::uint64_t at = vtd::cap::fro(rd(vtd::kCap, 8)) + ((fsts >> vtd::fsts::kFriShift) & 0xFF) * 16;
    lo = rd(at, 8);
    hi = rd(at + 8, 8);
    wr(at + 12, 1u << 31);
    return true;
  }

  FakeMemory& mem;
  vmx::iommu::VtdRegisters regs;
  std::uint64_t now = 0;
  std::uint32_t gcmd = 0;
  std::uint64_t tail = 0;
  bool wide = false;
};

}  // namespace
}  // namespace vtdtest
