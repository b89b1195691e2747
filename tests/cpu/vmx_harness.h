// A one-core machine with a tiny root-mode monitor, for tests that drive the
// real Core through VMX operation (tests/cpu/test_core_vmx.cc).
//
// The monitor is simulated software like the real hypervisor, reduced to the
// architectural steps (SDM Vol. 3C, 24.7 and 25.11.3): CR4.VMXE, a VMXON
// region with the revision identifier, VMXON, a VMCS region, VMCLEAR,
// VMPTRLD, VMWRITEs of the controls a test asks for, then VMLAUNCH and a
// VMRESUME loop that records every exit and lets the test handle it. The
// guest runs the test's lambda and ends with VMCALL(kDoneCall); the monitor
// then stops resuming, runs the test's `after` step and halts with
// interrupts off. Each test builds one harness and calls run() once (SystemC
// elaborates one design per process).
#pragma once

#include <systemc>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/core.h"
#include "cpu/vmx.h"
#include "mmu/paging.h"
#include "platform/platform.h"
#include "sim/fiber.h"
#include "sim/stats.h"

namespace vmx::test {

/// The guest's "I am finished" hypercall number.
constexpr std::uint64_t kDoneCall = 0x444F4E45;  // "DONE"

/// One VM exit as the monitor saw it (exit-information fields read by VMREAD).
struct Exit {
  std::uint32_t full_reason = 0;  // EXIT_REASON with its flag bits
  std::uint16_t reason = 0;       // basic exit reason
  std::uint64_t qualification = 0;
  std::uint64_t guest_linear = 0;
  std::uint64_t guest_physical = 0;
  std::uint32_t intr_info = 0;
  std::uint32_t intr_error = 0;
  std::uint64_t guest_cr0 = 0, guest_cr3 = 0, guest_cr4 = 0;  // guest state saved by the exit
  cpu::Regs regs;                 // GPRs at the exit
  std::uint64_t at = 0;           // core cycle of the exit (annotation)
};

class VmxHarness {
 public:
  // Host-physical layout of the monitor's structures (below the 2 MiB the
  // guests of these tests use, inside the identity-mapped 16 MiB).
  static constexpr std::uint64_t kVmxonRegion = 0x100000;
  static constexpr std::uint64_t kVmcs = 0x101000;
  static constexpr std::uint64_t kMsrBitmap = 0x102000;
  static constexpr std::uint64_t kIoBitmapA = 0x103000;
  static constexpr std::uint64_t kIoBitmapB = 0x104000;
  static constexpr std::uint64_t kSpareRegion = 0x105000;  // a second VMCS-sized region
  static constexpr std::uint64_t kEptPml4 = 0x110000;
  static constexpr std::uint64_t kIdentityBytes = 16ull << 20;
  static constexpr std::size_t kMaxExits = 10000;

  /// VM-execution controls and guest state the test asks for.
  struct Config {
    std::uint32_t pin = 0;
    std::uint32_t proc = 0;  // "activate secondary controls" is added when proc2 != 0
    std::uint32_t proc2 = cpu::proc2::kEnableEpt;
    std::uint32_t exception_bitmap = 0;
    std::uint16_t vpid = 0;
    bool ept_ad = false;  // EPTP bit 6: EPT accessed and dirty flags
    std::uint64_t guest_cr0 = mmu::crbits::kCr0Pe;
    std::uint64_t guest_cr4 = 0;
    std::uint64_t guest_rflags = 0x2;
    std::uint64_t cr0_mask = 0, cr0_shadow = 0, cr4_mask = 0, cr4_shadow = 0;
  };
  using RootStep = std::function<void(cpu::Core&)>;
  using ExitHandler = std::function<void(cpu::Core&, const Exit&)>;

  Config config;
  RootStep after_vmxon;             // root: after VMXON, before any VMCS is current
  RootStep setup;                   // root: after the standard VMWRITEs, before VMLAUNCH
  std::function<void(cpu::Core&)> guest;  // the guest's work (non-root)
  ExitHandler on_exit;              // root: every exit but the final VMCALL, before VMRESUME
  RootStep after;                   // root: after the final VMCALL

  // Outcome.
  std::vector<Exit> exits;
  bool done = false;                // the guest's final VMCALL arrived
  bool entry_failed = false;        // VMLAUNCH/VMRESUME failed (VMfail or reason bit 31)
  std::uint64_t entry_error = 0;    // VM-instruction error of a VMfail
  bool runaway = false;             // kMaxExits reached
  std::vector<std::string> setup_errors;

  VmxHarness() : VmxHarness(small_platform()) {}
  explicit VmxHarness(const models::PlatformParams& p)
      : m_platform(p, &m_stats),
        m_root("root", [this] { root_main(); }),
        m_guest("guest", [this] { guest_main(); }) {
    core().set_reset_fiber(&m_root);
  }

  static models::PlatformParams small_platform() {
    auto p = cfg::defaults<models::PlatformParams>();
    p.cores = 1;
    p.memory = 64ull << 20;
    return p;
  }

  cpu::Core& core() { return m_platform.core(0); }
  models::Platform& platform() { return m_platform; }
  std::uint64_t quantum_cycles() const {
    const auto& p = m_platform.params();
    return static_cast<std::uint64_t>(static_cast<unsigned __int128>(p.quantum) * p.frequency / cfg::kPsPerSecond);
  }

  /// Runs the machine (once per process).
  void run(sc_core::sc_time limit = sc_core::sc_time(10, sc_core::SC_MS)) { sc_core::sc_start(limit); }

  /// A counter of the statistics tree ("system.cpu0.tlb.dtlb.hits"); throws if absent.
  std::uint64_t counter(const std::string& path) const {
    const auto* c = dynamic_cast<const stats::Counter*>(m_stats.find(path));
    if (!c) throw std::runtime_error("no counter " + path);
    return c->value();
  }
  /// A counter that may not exist yet (per-exit-reason counters appear on first use).
  std::uint64_t counter_or_zero(const std::string& path) const {
    const auto* c = dynamic_cast<const stats::Counter*>(m_stats.find(path));
    return c ? c->value() : 0;
  }

  std::vector<unsigned> reasons() const {
    std::vector<unsigned> r;
    for (const Exit& e : exits) r.push_back(e.reason);
    return r;
  }

  // ---- Root-mode helpers (architectural operations only) -----------------

  /// Sets one bit of a bitmap page (MSR or I/O bitmap) with a byte load/store.
  static void set_bitmap_bit(cpu::Core& c, std::uint64_t page, std::uint64_t bit) {
    std::uint64_t b = c.load(page + bit / 8, 1);
    c.store(page + bit / 8, b | (1u << (bit % 8)), 1);
  }
  /// MSR bitmap bit numbers (SDM Vol. 3C, 25.6.9).
  static std::uint64_t msr_read_bit(std::uint32_t msr) { return (msr >= 0xC0000000u ? 1024 * 8 : 0) + (msr & 0x1FFF); }
  static std::uint64_t msr_write_bit(std::uint32_t msr) { return msr_read_bit(msr) + 2048 * 8; }

  /// Maps guest-physical gpa to host-physical hpa in the EPT with R/W/X
  /// `perms`, as a 4 KiB page (leaf_level 1) or a 2 MiB page (leaf_level 2),
  /// allocating paging-structure pages as needed (SDM Vol. 3C, 29.3.2).
  void ept_map(cpu::Core& c, std::uint64_t gpa, std::uint64_t hpa, std::uint64_t perms, unsigned leaf_level = 1) {
    namespace ept = mmu::ept;
    std::uint64_t table = kEptPml4;
    for (unsigned level = 4; level > leaf_level; --level) {
      std::uint64_t slot = table + mmu::table_index(gpa, level) * 8;
      std::uint64_t e = c.load(slot);
      if (!(e & ept::kPermMask)) {
        e = m_next_table | ept::kRead | ept::kWrite | ept::kExecute;
        m_next_table += 0x1000;
        c.store(slot, e);
      }
      table = e & ept::kAddrMask;
    }
    std::uint64_t leaf = (hpa & ept::kAddrMask) | (perms & ept::kPermMask) | ept::kMemTypeWb |
                         (leaf_level > 1 ? ept::kLargePage : 0);
    c.store(table + mmu::table_index(gpa, leaf_level) * 8, leaf);
  }

  /// VMWRITE that records a failure instead of ignoring it.
  void vmw(cpu::Core& c, std::uint32_t enc, std::uint64_t v) {
    if (c.vmwrite(enc, v) != cpu::VmxStatus::Succeed) setup_errors.push_back("VMWRITE " + std::to_string(enc));
  }
  std::uint64_t vmr(cpu::Core& c, std::uint32_t enc) {
    std::uint64_t v = 0;
    if (c.vmread(enc, v) != cpu::VmxStatus::Succeed) setup_errors.push_back("VMREAD " + std::to_string(enc));
    return v;
  }

  /// The EPTP the monitor puts in the VMCS.
  std::uint64_t eptp() const { return mmu::ept::eptp(kEptPml4, 4, config.ept_ad); }
  /// Host-physical address of the EPT entry at `level` that maps gpa
  /// (root: physical loads).
  static std::uint64_t ept_entry_pa(cpu::Core& c, std::uint64_t gpa, unsigned level) {
    std::uint64_t table = kEptPml4;
    for (unsigned l = 4; l > level; --l) table = c.load(table + mmu::table_index(gpa, l) * 8) & mmu::ept::kAddrMask;
    return table + mmu::table_index(gpa, level) * 8;
  }

  sim::Fiber& guest_fiber() { return m_guest; }
  sim::Fiber& root_fiber() { return m_root; }

 private:
  void root_main() {
    using namespace cpu;
    Core& c = core();
    // Enter VMX operation (SDM Vol. 3C, 24.7).
    c.write_cr(4, c.read_cr(4) | mmu::crbits::kCr4Vmxe);
    c.store(kVmxonRegion, kVmcsRevision, 4);
    if (c.vmxon(kVmxonRegion) != VmxStatus::Succeed) setup_errors.push_back("VMXON");
    if (after_vmxon) after_vmxon(c);
    if (config.proc2 & proc2::kEnableEpt) {
      for (std::uint64_t a = 0; a < kIdentityBytes; a += 2ull << 20)
        ept_map(c, a, a, mmu::ept::kRead | mmu::ept::kWrite | mmu::ept::kExecute, 2);
    }
    // A fresh VMCS (SDM Vol. 3C, 25.11.3).
    c.store(kVmcs, kVmcsRevision, 4);
    c.vmclear(kVmcs);
    if (c.vmptrld(kVmcs) != VmxStatus::Succeed) setup_errors.push_back("VMPTRLD");
    std::uint32_t procctl = config.proc | (config.proc2 ? proc::kActivateSecondaryControls : 0);
    vmw(c, field::kPinBasedControls, config.pin);
    vmw(c, field::kProcBasedControls, procctl);
    vmw(c, field::kSecondaryControls, config.proc2);
    vmw(c, field::kExitControls, exitctl::kHostAddressSpaceSize);
    vmw(c, field::kEntryControls, entryctl::kIa32eModeGuest);
    vmw(c, field::kExceptionBitmap, config.exception_bitmap);
    vmw(c, field::kEptPointer, eptp());
    vmw(c, field::kVpid, config.vpid);
    vmw(c, field::kMsrBitmap, kMsrBitmap);
    vmw(c, field::kIoBitmapA, kIoBitmapA);
    vmw(c, field::kIoBitmapB, kIoBitmapB);
    vmw(c, field::kCr0GuestHostMask, config.cr0_mask);
    vmw(c, field::kCr0ReadShadow, config.cr0_shadow);
    vmw(c, field::kCr4GuestHostMask, config.cr4_mask);
    vmw(c, field::kCr4ReadShadow, config.cr4_shadow);
    vmw(c, field::kGuestCr0, config.guest_cr0);
    vmw(c, field::kGuestCr3, 0);
    vmw(c, field::kGuestCr4, config.guest_cr4);
    vmw(c, field::kGuestRflags, config.guest_rflags);
    vmw(c, field::kGuestSsAccessRights, 0);
    vmw(c, field::kGuestIdtrBase, 0);
    vmw(c, field::kGuestRip, code_address(&m_guest));
    vmw(c, field::kHostRip, code_address(&m_root));
    vmw(c, field::kHostIdtrBase, 0);
    if (setup) setup(c);

    bool launched = false;
    for (;;) {
      VmExit ex = launched ? c.vmresume() : c.vmlaunch();
      if (!ex.entered()) {
        entry_failed = true;
        c.vmread(field::kVmInstructionError, entry_error);
        break;
      }
      launched = true;
      exits.push_back(record(c, ex.reason));
      const Exit& e = exits.back();
      if (e.full_reason & (1u << 31)) {  // VM-entry failure (SDM Vol. 3C, 27.8)
        entry_failed = true;
        break;
      }
      if (e.reason == static_cast<unsigned>(ExitReason::Vmcall) && e.regs[Regs::rax] == kDoneCall) {
        done = true;
        break;
      }
      if (exits.size() >= kMaxExits) {
        runaway = true;
        break;
      }
      if (on_exit) on_exit(c, e);
    }
    if (after) after(c);
    c.cli();
    for (;;) c.hlt();
  }

  Exit record(cpu::Core& c, std::uint16_t reason) {
    using namespace cpu;
    Exit e;
    e.reason = reason;
    e.full_reason = static_cast<std::uint32_t>(vmr(c, field::kExitReason));
    e.qualification = vmr(c, field::kExitQualification);
    e.guest_linear = vmr(c, field::kGuestLinearAddress);
    e.guest_physical = vmr(c, field::kGuestPhysicalAddress);
    e.intr_info = static_cast<std::uint32_t>(vmr(c, field::kExitIntrInfo));
    e.intr_error = static_cast<std::uint32_t>(vmr(c, field::kExitIntrErrorCode));
    e.guest_cr0 = vmr(c, field::kGuestCr0);
    e.guest_cr3 = vmr(c, field::kGuestCr3);
    e.guest_cr4 = vmr(c, field::kGuestCr4);
    e.regs = c.regs();
    e.at = c.now();
    return e;
  }

  void guest_main() {
    cpu::Core& c = cpu::Core::current();
    if (guest) guest(c);
    c.vmcall(kDoneCall);
    for (;;) c.hlt();  // never resumed after the final VMCALL
  }

  stats::Group m_stats;
  models::Platform m_platform;
  sim::Fiber m_root;
  sim::Fiber m_guest;
  std::uint64_t m_next_table = kEptPml4 + 0x1000;
};

}  // namespace vmx::test
