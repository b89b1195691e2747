// The passthrough room (hypervisor/passthrough.cc, hypervisor/iommu_driver.*;
// docs/io.md "Device passthrough") on a machine with the SR-IOV NIC, its
// root complex and the VT-d unit: a VM is given VF 1, and its vCPU (paging
// off, so linear = guest-physical) programs the VF directly: one frame from
// its memory, then one whose buffer lies beyond the VM's memory.
//
// Checked: the driver reached the IOMMU only through its register set and
// invalidation queue (the register block's counts equal the driver's); the
// VF's window answers at the configured guest-physical address with no
// exit; the VF's context entry points at the VM's EPT (the window mapping
// only the EPT has is in it), so DMA translates guest-physical addresses the
// way the vCPU does; and the DMA outside the VM faults, recorded with the
// VF's requester ID in the fault log and the fault-recording register.
#include <catch2/catch.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>

#include <systemc>

#include "abi/boot.h"
#include "cpu/core.h"
#include "hypervisor/hypervisor.h"
#include "iommu/vtd_formats.h"
#include "iommu/vtd_regs.h"
#include "models/dma_harness.h"
#include "models/nic.h"
#include "platform/platform.h"
#include "sim/fiber.h"
#include "sim/stats.h"

namespace {

using vmx::cpu::Core;
namespace nicreg = vmx::models::nicreg;
namespace vtd = vmx::iommu::vtd;

constexpr std::uint64_t kVmMemory = 32ull << 20;
constexpr unsigned kVf = 1;                       // function 1 + kVf on the NIC
constexpr std::uint64_t kWindowGpa = 0xFEB00000;  // where the guest finds its VF's registers
constexpr std::uint64_t kRing = 0x10000;          // TX ring (4 descriptors), guest-physical
constexpr std::uint64_t kBuffer = 0x20000;        // the frame, guest-physical
constexpr std::uint64_t kOutside = 0x4000000;     // 64 MiB: beyond the VM's 32 MiB
constexpr unsigned kFrame = 64;
constexpr std::uint64_t kPattern = 0x5A5A000000000000ull;

double stat(const vmx::stats::Group& root, const std::string& path) {
  const auto* s = root.find(path);
  if (const auto* c = dynamic_cast<const vmx::stats::Counter*>(s)) return static_cast<double>(c->value());
  if (const auto* g = dynamic_cast<const vmx::stats::Gauge*>(s)) return g->value();
  throw std::runtime_error("no statistic " + path);
}

struct Guest : vmx::abi::GuestImage {
  std::uint32_t id = 0, status = 0;
  std::uint64_t wb0 = 0, wb1 = 0;
  bool sent = false, faulted = false, done = false;
  vmx::sim::Fiber fiber{"p.vcpu0", [this] { main(); }};
  std::uint64_t entry_point(unsigned) override { return vmx::cpu::code_address(&fiber); }

  static void reg(Core& c, std::uint32_t off, std::uint32_t v) { c.store(kWindowGpa + off, v, 4); }
  void main() {
    Core& c = Core::current();
    id = static_cast<std::uint32_t>(c.load(kWindowGpa + nicreg::kId, 4));
    for (unsigned i = 0; i < kFrame; i += 8) c.store(kBuffer + i, kPattern | i);
    // Descriptor 0: the frame; descriptor 1: a buffer outside the VM.
    c.store(kRing, kBuffer);
    c.store(kRing + 8, kFrame);
    c.store(kRing + 16, kOutside);
    c.store(kRing + 24, kFrame);
    reg(c, nicreg::kTxBaseLo, static_cast<std::uint32_t>(kRing));
    reg(c, nicreg::kTxBaseHi, 0);
    reg(c, nicreg::kTxSize, 4);
    reg(c, nicreg::kCtrl, nicreg::kCtrlTxEn);
    reg(c, nicreg::kTxTail, 1);
    for (unsigned i = 0; i < 100000 && !sent; ++i) {
      wb0 = c.load(kRing + 8);
      sent = (wb0 >> 16) & vmx::models::nicdesc::kDd;
      if (!sent) c.compute(100);
    }
    reg(c, nicreg::kTxTail, 2);
    for (unsigned i = 0; i < 100000 && !faulted; ++i) {
      status = static_cast<std::uint32_t>(c.load(kWindowGpa + nicreg::kStatus, 4));
      faulted = status & nicreg::kStatusTxErr;
      if (!faulted) c.compute(100);
    }
    wb1 = c.load(kRing + 24);
    done = true;
    for (;;) c.hlt();
  }
};

}  // namespace

TEST_CASE("passthrough: a VF assigned through the IOMMU's registers and queue, its window and DMA through "
          "the VM's EPT, DMA outside the VM faults with its requester ID",
          "[hypervisor][passthrough][iommu]") {
  vmx::stats::Group root(nullptr, "");
  auto pp = vmx::cfg::defaults<vmx::models::PlatformParams>();
  pp.cores = 1;
  pp.memory = 512ull << 20;
  pp.nic.enabled = true;
  pp.nic.peer.mode = "sink";
  vmx::models::Platform platform(pp, &root);
  auto hp = vmx::cfg::defaults<vmx::hv::HypervisorParams>();
  hp.zero_pages = false;
  vmx::hv::Hypervisor hv(hp, platform.cores(), pp.memory, pp.frequency, &root);
  vmx::models::Nic& nic = *platform.nic();
  hv.attach_nic(nic.window(0));
  vmx::hv::IoPlatform io;
  io.vtd_regs = vmx::models::Platform::kVtdBase;
  io.nic_mmio_base = pp.nic.device.mmio_base;
  io.nic_mmio_stride = pp.nic.device.mmio_stride;
  hv.attach_io(io);
  Guest guest;
  vmx::hv::VmSpec spec;
  spec.name = "p";
  spec.memory = kVmMemory;
  spec.image = &guest;
  spec.nic_type = "vf";
  spec.vf = kVf;
  spec.nic_window_gpa = kWindowGpa;
  spec.nic_vector = 0x40;
  hv.add_vm(spec);
  platform.core(0).set_reset_fiber(&hv.core_fiber(0));
  // Before the run the unit is off.
  vmx::iommu::VtdRegisters& regs = *platform.vtd();
  CHECK((regs.read(vtd::kGsts, 4, 0) & vtd::gcmd::kTe) == 0);
  const double reads0 = stat(root, "system.iommu_regs.reads");
  sc_core::sc_start(sc_core::sc_time(3, sc_core::SC_MS));

  INFO("crash: " << hv.vm_crash(0));
  REQUIRE(guest.done);
  const std::uint16_t rid = nic.requester(1 + kVf);
  const std::string p = "hypervisor.passthrough.";
  const std::string d = p + "iommu_driver.";

  // Assignment: every register access the VT-d block saw was the driver's,
  // and every invalidation came through the queue: bring-up (QIE, SRTP,
  // TE; global context and IOTLB invalidation), the VF's device and domain
  // invalidation, interrupt remapping (SIRTP, IRE; an IEC invalidation).
  CHECK(stat(root, p + "vfs_assigned") == 1);
  CHECK(stat(root, p + "backed_pages") == kVmMemory / 4096);
  CHECK(stat(root, "system.iommu_regs.reads") - reads0 == stat(root, d + "register_reads"));
  CHECK(stat(root, "system.iommu_regs.writes") == stat(root, d + "register_writes"));
  CHECK(stat(root, d + "register_writes") > 0);
  CHECK(stat(root, d + "submissions") == 3);
  CHECK(stat(root, d + "descriptors") == 8);
  CHECK(stat(root, "system.iommu_regs.descriptors") == 8);
  CHECK(stat(root, "system.iommu_regs.waits") == 3);
  CHECK(stat(root, "system.iommu_regs.commands") == 5);
  CHECK(stat(root, "system.iommu_regs.register_invalidations") == 0);
  CHECK(stat(root, "system.iommu_regs.queue_errors") == 0);
  CHECK(stat(root, "system.iommu_regs.unimplemented") == 0);
  CHECK(stat(root, "system.iommu.invalidations") == 4);

  // The VF's registers at the configured guest-physical address: its ID
  // register (requester ID, VF flag, function index) read with no exit.
  CHECK(guest.id >> 16 == rid);
  CHECK((guest.id & 0x1FF) == (0x100u | (1 + kVf)));
  const auto* ept_exits =
      dynamic_cast<const vmx::stats::Histogram*>(root.find("vm.p.vcpu0.exit_reasons.EPT_VIOLATION.cycles"));
  CHECK((ept_exits ? ept_exits->count() : 0) == 0);

  // The frame went out: the NIC read the descriptor and the buffer and
  // wrote DD back, all by guest-physical address, all translated.
  CHECK(guest.sent);
  CHECK(stat(root, "system.nic.vf1.tx_packets") == 1);
  CHECK(stat(root, "system.nic.vf1.tx_bytes") == kFrame);
  CHECK(stat(root, "system.peer.rx_packets") == 1);
  CHECK(stat(root, "system.iommu.translations") >= 3);

  // The DMA outside the VM: refused, recorded with the VF's requester ID.
  CHECK(guest.faulted);
  CHECK(((guest.wb1 >> 16) & vmx::models::nicdesc::kDd) == 0);
  CHECK(stat(root, "system.nic.vf1.dma_faults") == 1);
  CHECK(stat(root, "system.iommu.faults") == 1);
  CHECK(stat(root, "system.root_complex." + vmx::models::RootComplex::requester_name(rid) + ".blocked") == 1);
  REQUIRE(platform.iommu()->fault_log().size() == 1);
  const auto& f = platform.iommu()->fault_log()[0];
  CHECK(f.requester_id == rid);
  CHECK(f.address == kOutside);
  CHECK(f.access == vmx::iommu::DmaAccess::Read);

  // Architectural state, read as software would (after the statistics above).
  const std::uint64_t now = 1ull << 40;
  CHECK((regs.read(vtd::kGsts, 4, now) & vtd::gcmd::kTe) != 0);
  CHECK((regs.read(vtd::kFsts, 4, now) & vtd::fsts::kPpf) != 0);
  const std::uint64_t frcd_hi = regs.read(vtd::kFrcd + 8, 8, now);
  CHECK((frcd_hi & vtd::frcd::kF) != 0);
  CHECK((frcd_hi & 0xFFFF) == rid);
  CHECK((frcd_hi & vtd::frcd::kRead) != 0);
  CHECK((regs.read(vtd::kFrcd, 8, now) & ~0xFFFull) == kOutside);
  // The VF's context entry: translated (TT 0), domain 1 (VM 0), and its
  // second-level table is the VM's EPT: it holds the VF window's mapping,
  // which the hypervisor made only in the EPT; the frame's guest-physical
  // address leads to the host frame holding what the vCPU wrote there, and
  // kOutside leads nowhere.
  const vmx::models::PhysMem& mem = platform.memory();
  const vmx::iommu::ContextEntry ce = vmx::test::read_context(mem, regs.read(vtd::kRtaddr, 8, now), rid);
  REQUIRE((ce.lo & vmx::iommu::ctx::kPresent) != 0);
  CHECK(vmx::iommu::ctx::tt(ce.lo) == vmx::iommu::ctx::kTtUntranslated);
  CHECK(vmx::iommu::ctx::did(ce.hi) == 1);
  const std::uint64_t slpt = ce.lo & vmx::iommu::ctx::kSlptptrMask;
  CHECK(vmx::test::sl_translate(mem, slpt, kWindowGpa) == nic.window(1 + kVf));
  const std::uint64_t buffer_hpa = vmx::test::sl_translate(mem, slpt, kBuffer);
  REQUIRE(buffer_hpa != ~0ull);
  CHECK(buffer_hpa != kBuffer);  // a host frame of the guest zone, not an identity map
  CHECK(mem.read(buffer_hpa + 8, 8) == (kPattern | 8));
  CHECK(vmx::test::sl_translate(mem, slpt, kOutside) == ~0ull);
}
