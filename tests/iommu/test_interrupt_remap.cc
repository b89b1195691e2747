// VT-d interrupt remapping and posting (iommu/interrupt_remap.h): handle
// decoding, IRTE formats, source-ID validation, fault records, posting into
// the descriptor with ON/SN/URG, and one machine where a device's MSI
// through a posted IRTE reaches a running guest without a VM exit.
#define SC_INCLUDE_DYNAMIC_PROCESSES
#include <systemc>

#include <catch2/catch.hpp>

#include <cstdint>
#include <map>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmx.h"
#include "cpu/vmx_harness.h"
#include "iommu/interrupt_remap.h"
#include "iommu/iommu.h"
#include "iommu/vtd_regs.h"
#include "models/dma.h"
#include "models/interrupts.h"

namespace {

using namespace vmx::iommu;
using vmx::models::MsiMessage;

struct Mem : vmx::mmu::TableMemory {
  std::map<std::uint64_t, std::uint64_t> q;
  unsigned reads = 0, writes = 0;
  std::uint64_t read_entry(std::uint64_t pa, std::uint32_t& cycles) override {
    ++reads;
    cycles += 10;
    auto it = q.find(pa);
    return it == q.end() ? 0 : it->second;
  }
  void write_entry(std::uint64_t pa, std::uint64_t v, std::uint32_t& cycles) override {
    ++writes;
    cycles += 10;
    q[pa] = v;
  }
};

constexpr std::uint64_t kIrt = 0x40000;
constexpr std::uint64_t kPid = 0x50000;
constexpr std::uint16_t kVf = vmx::models::requester_id(3, 0, 1);

struct Unit {
  vmx::stats::Group root{nullptr, "root"};
  Mem mem;
  static InterruptRemapParams params() {
    auto p = vmx::cfg::defaults<InterruptRemapParams>();
    p.memory_latency = 0;  // only the memory's own 10 cycles per reference
    return p;
  }
  InterruptRemap ir{params(), mem, &root};
  // Software programs the unit through the VT-d register set.
  Iommu dmar{vmx::cfg::defaults<IommuParams>(), mem, &root};
  VtdRegisters regs{vmx::cfg::defaults<VtdParams>(), dmar, &ir, mem, &root};
  std::uint32_t gcmd = 0;
  void command(std::uint32_t cmd, bool on = true) {
    if (cmd & vtd::gcmd::kLevel) gcmd = on ? (gcmd | cmd) : (gcmd & ~cmd);
    regs.write(vtd::kGcmd, (cmd & vtd::gcmd::kOneShot) ? (gcmd | cmd) : gcmd, 4, 0);
    REQUIRE(((regs.read(vtd::kGsts, 4, 0) & cmd) != 0) == on);
  }
  Unit() {
    regs.write(vtd::kIrta, kIrt | (1u << 11) | 7, 8, 0);  // 256 entries, x2APIC mode (EIME)
    command(vtd::gcmd::kSirtp);
    command(vtd::gcmd::kIre);
  }
  void irte(unsigned index, std::uint64_t lo, std::uint64_t hi) {
    mem.q[kIrt + 16 * index] = lo;
    mem.q[kIrt + 16 * index + 8] = hi;
  }
  std::uint64_t counter(const std::string& n) const {
    return dynamic_cast<const vmx::stats::Counter*>(root.find("interrupt_remap." + n))->value();
  }
};

}  // namespace

TEST_CASE("a remapped-format IRTE turns the handle's MSI into the IRTE's vector at its x2APIC destination",
          "[iommu][ir]") {
  Unit u;
  u.irte(5, irte::remapped_lo(300, 0x41), irte::hi_sid(kVf));
  IrResult r = u.ir.remap({irte::msi_address(5), 0, kVf});
  REQUIRE(r.kind == IrResult::Kind::Remapped);
  CHECK(r.dest == 300);  // a 32-bit x2APIC ID: beyond what compatibility format can name
  CHECK(r.vector == 0x41);
  CHECK(r.cycles == 20);  // two 8-byte references
  // Handle bit 15 is address bit 2; SHV adds the subhandle in data 15:0.
  u.irte(9, irte::remapped_lo(1, 0x42), irte::hi_sid(kVf));
  IrResult s = u.ir.remap({irte::msi_address(4, true), 5, kVf});  // 4 + 5
  REQUIRE(s.kind == IrResult::Kind::Remapped);
  CHECK(s.vector == 0x42);
  CHECK(u.counter("remapped") == 2);
  CHECK(u.ir.faults().empty());
}

TEST_CASE("interrupt-remapping faults are recorded with reason, index and source, unless FPD", "[iommu][ir]") {
  Unit u;
  u.irte(1, irte::remapped_lo(0, 0x41), irte::hi_sid(kVf));
  u.irte(2, irte::remapped_lo(0, 0x41) | irte::kFpd, irte::hi_sid(kVf));
  const std::uint16_t other = vmx::models::requester_id(3, 0, 2);
  CHECK(u.ir.remap({irte::msi_address(1), 0, other}).fault == irfault::kSourceId);
  CHECK(u.ir.remap({irte::msi_address(3), 0, kVf}).fault == irfault::kNotPresent);
  CHECK(u.ir.remap({irte::msi_address(300), 0, kVf}).fault == irfault::kIndexBeyondTable);
  CHECK(u.ir.remap({vmx::models::kMsiBase | (1u << 12), 0x41, kVf}).fault == irfault::kCompatBlocked);
  CHECK(u.ir.remap({irte::msi_address(2), 0, other}).fault == irfault::kSourceId);  // FPD: not recorded
  REQUIRE(u.ir.faults().size() == 4);
  CHECK(u.ir.faults()[0].reason == 0x26);
  CHECK(u.ir.faults()[0].index == 1);
  CHECK(u.ir.faults()[0].source == other);
  CHECK(u.ir.faults()[1].reason == 0x22);
  CHECK(u.ir.faults()[1].index == 3);
  CHECK(u.ir.faults()[2].reason == 0x21);
  CHECK(u.ir.faults()[3].reason == 0x25);
  CHECK(u.counter("faults") == 5);
  // With CFIS, compatibility format passes through untouched.
  u.command(vtd::gcmd::kCfi);  // GCMD.CFI
  CHECK(u.ir.remap({vmx::models::kMsiBase | (1u << 12), 0x41, kVf}).kind == IrResult::Kind::Compat);
}

TEST_CASE("source-ID qualifiers mask function bits and SVT 10 checks a bus range", "[iommu][ir]") {
  Unit u;
  const std::uint16_t fn0 = vmx::models::requester_id(3, 0, 0), fn5 = vmx::models::requester_id(3, 0, 5);
  u.irte(1, irte::remapped_lo(0, 0x41), irte::hi_sid(fn0, irte::kSvtRequester, 3));  // ignore bits 2:0
  u.irte(2, irte::remapped_lo(0, 0x42), irte::hi_sid(fn0, irte::kSvtRequester, 1));  // ignore bit 2 only
  u.irte(3, irte::remapped_lo(0, 0x43), irte::hi_sid(0x0406, irte::kSvtBus));        // buses 4..6
  CHECK(u.ir.remap({irte::msi_address(1), 0, fn5}).kind == IrResult::Kind::Remapped);
  CHECK(u.ir.remap({irte::msi_address(2), 0, fn5}).fault == irfault::kSourceId);  // bit 0 differs
  CHECK(u.ir.remap({irte::msi_address(2), 0, vmx::models::requester_id(3, 0, 4)}).kind ==
        IrResult::Kind::Remapped);
  CHECK(u.ir.remap({irte::msi_address(3), 0, vmx::models::requester_id(5, 1, 0)}).kind == IrResult::Kind::Remapped);
  CHECK(u.ir.remap({irte::msi_address(3), 0, vmx::models::requester_id(7, 1, 0)}).fault == irfault::kSourceId);
}

TEST_CASE("a posted-format IRTE sets the PIR bit, and ON with a notification only when none is outstanding",
          "[iommu][ir][posted]") {
  Unit u;
  u.irte(7, irte::posted_lo(kPid, 0x61), irte::posted_hi(kPid, kVf));
  u.mem.q[kPid + 32] = pid::control(0xF2, 3);  // NV 0xF2 to x2APIC 3
  IrResult a = u.ir.remap({irte::msi_address(7), 0, kVf});
  REQUIRE(a.kind == IrResult::Kind::Posted);
  CHECK(a.notify);
  CHECK(a.dest == 3);
  CHECK(a.vector == 0xF2);
  CHECK(u.mem.q[kPid + 8] == 1ull << (0x61 % 64));
  CHECK((u.mem.q[kPid + 32] & pid::kOn) != 0);
  // A second one before the processor took the first: PIR only, no notification.
  u.irte(8, irte::posted_lo(kPid, 0x62), irte::posted_hi(kPid, kVf));
  IrResult b = u.ir.remap({irte::msi_address(8), 0, kVf});
  CHECK(b.kind == IrResult::Kind::Posted);
  CHECK_FALSE(b.notify);
  CHECK(u.mem.q[kPid + 8] == ((1ull << (0x61 % 64)) | (1ull << (0x62 % 64))));
  CHECK(u.counter("notifications") == 1);
  CHECK(u.counter("suppressed") == 1);
}

TEST_CASE("SN suppresses the notification of a posted interrupt unless the IRTE is urgent", "[iommu][ir][posted]") {
  Unit u;
  u.irte(1, irte::posted_lo(kPid, 0x61), irte::posted_hi(kPid, kVf));
  u.irte(2, irte::posted_lo(kPid, 0x70, true), irte::posted_hi(kPid, kVf));
  u.mem.q[kPid + 32] = pid::control(0xF2, 1, /*sn=*/true);
  IrResult a = u.ir.remap({irte::msi_address(1), 0, kVf});
  CHECK(a.kind == IrResult::Kind::Posted);
  CHECK_FALSE(a.notify);
  CHECK((u.mem.q[kPid + 32] & pid::kOn) == 0);  // ON stays clear: the vCPU is not running
  CHECK(u.mem.q[kPid + 8] == 1ull << (0x61 % 64));
  IrResult b = u.ir.remap({irte::msi_address(2), 0, kVf});  // urgent
  CHECK(b.notify);
  CHECK(b.dest == 1);
  CHECK((u.mem.q[kPid + 32] & pid::kOn) != 0);
}

TEST_CASE("a device's MSI through a posted IRTE reaches the running guest with no VM exit", "[iommu][ir][posted]") {
  using vmx::cpu::Core;
  namespace field = vmx::cpu::field;
  vmx::test::VmxHarness h;
  constexpr std::uint64_t kVapic = 0x130000, kDesc = 0x131000, kTable = 0x132000;
  h.config.pin = vmx::cpu::pin::kExternalInterruptExiting | vmx::cpu::pin::kPostedInterrupts;
  h.config.proc = vmx::cpu::proc::kUseMsrBitmaps | vmx::cpu::proc::kUseTprShadow;
  h.config.proc2 =
      vmx::cpu::proc2::kEnableEpt | vmx::cpu::proc2::kVirtualizeX2apic | vmx::cpu::proc2::kVirtualInterruptDelivery;
  struct Idt : vmx::cpu::InterruptHandler {
    std::vector<std::uint8_t> got;
    void interrupt(Core& c, std::uint8_t v) override {
      got.push_back(v);
      c.wrmsr(vmx::cpu::msr::kX2ApicEoi, 0);
    }
    void exception(Core&, std::uint8_t, std::uint32_t) override {}
  } idt;
  auto& ir = h.platform().interrupt_remap();
  h.setup = [&](Core& c) {
    h.vmw(c, field::kExitControls, vmx::cpu::exitctl::kHostAddressSpaceSize | vmx::cpu::exitctl::kAckInterruptOnExit);
    h.vmw(c, field::kPostedIntrNv, 0xF2);
    h.vmw(c, field::kPostedIntrDesc, kDesc);
    h.vmw(c, field::kVirtualApicPage, kVapic);
    c.store(kDesc + 32, pid::control(0xF2, 0));
    // The hypervisor's IRTE for the VF's vector 0x61: posted to this vCPU.
    c.store(kTable + 16 * 4, irte::posted_lo(kDesc, 0x61));
    c.store(kTable + 16 * 4 + 8, irte::posted_hi(kDesc, kVf));
    ir.set_irta(kTable | (1u << 11) | 3);
    ir.set_enable(true);
  };
  h.guest = [&](Core& c) {
    c.lidt(&idt);
    c.sti();
    for (int i = 0; i < 100000 && idt.got.empty(); ++i) c.compute(100);
  };
  sc_core::sc_spawn([&] {
    sc_core::wait(sc_core::sc_time(20, sc_core::SC_US));
    h.platform().interrupts().msi({irte::msi_address(4), 0, kVf});
  });
  h.run();
  REQUIRE(h.done);
  CHECK(h.reasons() == std::vector<unsigned>{18});  // only the final VMCALL
  CHECK(idt.got == std::vector<std::uint8_t>{0x61});
  CHECK(h.counter("system.interrupts.posted") == 1);
  CHECK(h.counter("system.interrupts.cpu0.notifications") == 1);
  CHECK(h.counter("system.interrupt_remap.notifications") == 1);
  CHECK(h.counter("system.cpu0.posted_notifications") == 1);
  CHECK(h.counter("system.cpu0.virtual_eois") == 1);
}
