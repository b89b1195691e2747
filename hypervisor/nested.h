// Nested VMX (docs/nested.md): the hypervisor emulates VMX for a guest that
// is itself a VMM (L1), as KVM's nested VMX does (arch/x86/kvm/vmx/nested.c).
// L1's VMX instructions exit to this hypervisor (L0), which emulates them
// with the SDM's semantics on a VMCS L1 keeps in its own memory (vmcs12, in
// the layout below, which is L0's choice: SDM Vol. 3C, 25.2 leaves the
// region's format to the implementation). On L1's VM entry L0 merges vmcs12
// with its own controls into the VMCS the core runs for L2 (vmcs02); an exit
// of L2 goes to L0, which reflects it into L1 when vmcs12's controls ask for
// it, or handles it itself.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "cpu/vcpu_observer.h"
#include "hypervisor/ept.h"
#include "cpu/vmx.h"
#include "sim/stats.h"

namespace vmx::hv {

/// vmcs12: the VMCS region of a guest VMM, in its guest-physical memory.
/// The first 8 bytes are architectural (revision identifier, VMX-abort
/// indicator, SDM Vol. 3C, 25.2); the rest is this hypervisor's format:
/// the launch state, then each supported field (cpu::Vmcs::supported) at a
/// fixed offset by width, type and index of its encoding (25.11.2), 2, 8,
/// 4 or 8 bytes wide for 16-bit, 64-bit, 32-bit and natural-width fields.
namespace vmcs12 {
constexpr std::uint64_t kRevision = 0;
constexpr std::uint64_t kAbort = 4;
constexpr std::uint64_t kLaunchState = 8;  // 4 bytes: 0 clear, 1 launched
constexpr std::uint64_t kFields = 64;
constexpr std::uint32_t kClear = 0, kLaunched = 1;
/// Bytes of a field of this encoding (the "high" half of a 64-bit field,
/// bit 0 of the encoding, is 4 bytes at offset + 4).
constexpr unsigned size(std::uint32_t enc) {
  const unsigned w = (enc >> 13) & 3u;
  if (enc & 1u) return 4;
  return w == 0 ? 2 : w == 2 ? 4 : 8;
}
constexpr std::uint64_t offset(std::uint32_t enc) {
  const unsigned w = (enc >> 13) & 3u;
  const unsigned i = (((enc >> 10) & 3u) << 5) | ((enc >> 1) & 31u);  // type and index: 0..127
  constexpr std::uint64_t base16 = kFields, base64 = base16 + 128 * 2, base32 = base64 + 128 * 8,
                          basenat = base32 + 128 * 4;
  switch (w) {
    case 0: return base16 + 2 * i;
    case 1: return base64 + 8 * i + ((enc & 1u) ? 4 : 0);
    case 2: return base32 + 4 * i;
    default: return basenat + 8 * i;
  }
}
constexpr std::uint64_t kSize = kFields + 128 * (2 + 8 + 4 + 8);  // 2880 bytes, within the 4 KiB region
static_assert(kSize <= 4096);
}  // namespace vmcs12

/// The VMX controls L0 offers L1 (what its VMX capability MSRs would
/// report): a VM entry of L1 with any other control set fails with
/// VM-instruction error 7 (SDM Vol. 3C, 27.2.1.1). Not offered yet: APIC
/// access virtualization, APIC-register virtualization, VMCS shadowing, VM
/// functions (docs/nested.md). Posted interrupts need the TPR shadow,
/// virtualized x2APIC mode and virtual-interrupt delivery with them; PML
/// needs EPT (27.2.1.1, checked on vmcs12 at L1's entry).
namespace nested_allowed {
constexpr std::uint32_t kPin = cpu::pin::kExternalInterruptExiting | cpu::pin::kNmiExiting |
                               cpu::pin::kVirtualNmis | cpu::pin::kPreemptionTimer | cpu::pin::kPostedInterrupts;
constexpr std::uint32_t kProc = cpu::proc::kInterruptWindowExiting | cpu::proc::kUseTscOffsetting |
                                cpu::proc::kHltExiting | cpu::proc::kInvlpgExiting | cpu::proc::kMwaitExiting |
                                cpu::proc::kRdpmcExiting | cpu::proc::kRdtscExiting | cpu::proc::kCr3LoadExiting |
                                cpu::proc::kCr3StoreExiting | cpu::proc::kUseTprShadow | cpu::proc::kMonitorTrapFlag |
                                cpu::proc::kUnconditionalIoExiting | cpu::proc::kUseIoBitmaps |
                                cpu::proc::kUseMsrBitmaps | cpu::proc::kActivateSecondaryControls;
constexpr std::uint32_t kProc2 = cpu::proc2::kEnableEpt | cpu::proc2::kEnableVpid | cpu::proc2::kEnableRdtscp |
                                 cpu::proc2::kEnableInvpcid | cpu::proc2::kVirtualizeX2apic |
                                 cpu::proc2::kVirtualInterruptDelivery | cpu::proc2::kEnablePml;
}  // namespace nested_allowed

/// Per-VM statistics of nested VMX (simulator observation).
struct NestedStats : stats::Group {
  /// What one L2 exit of a basic reason cost, by level (docs/nested.md).
  struct Reason : stats::Group {
    Reason(stats::Group* p, const std::string& n) : Group(p, n) {}
    stats::Counter reflected{this, "reflected", "exits", "exits of L2 reflected to L1"};
    stats::Counter l0_handled{this, "l0_handled", "exits", "exits of L2 L0 handled without L1"};
    stats::Histogram l1_exits{this, "l1_exits", "exits",
                              "exits of L1 to L0 while L1 handled one reflected exit (to its VM entry of L2)"};
    stats::Histogram l0_exits{this, "l0_exits", "exits",
                              "exits L0 took for one reflected exit of L2: the exit itself and L1's, to L2 running again"};
    stats::Histogram vmrw_exits{this, "vmrw_exits", "exits",
                                "of l1_exits, L1's VMREADs and VMWRITEs (what VMCS shadowing removes)"};
    stats::Histogram l0_cycles{this, "l0_cycles", "cycles",
                               "cycles L0 spent in root operation for one reflected exit (exit to next entry, summed)"};
    stats::Histogram l1_cycles{this, "l1_cycles", "cycles",
                               "cycles from L1 resuming with the reflected exit to its VM entry of L2 emulated"};
    stats::Histogram cycles{this, "cycles", "cycles", "cycles from the exit of L2 to L2 running again (all levels)"};
  };
  /// Posted interrupts for L2 (created at first use, docs/nested.md).
  struct Posted : stats::Group {
    explicit Posted(stats::Group* p) : Group(p, "posted", "L1's posted interrupts for L2") {}
    stats::Counter notifications{this, "notifications", "interrupts",
                                 "L1's notification vectors for a vCPU running L2, forwarded to its core as vmcs02's "
                                 "notification vector (the core processes L1's descriptor, no exit)"};
    stats::Counter pending{this, "pending", "interrupts",
                           "L1's notification vectors for a vCPU in guest mode not running L2 at the time "
                           "(its descriptor processed at the next entry of L2)"};
    stats::Counter at_entry{this, "at_entry", "descriptors",
                            "L1's descriptors L0 processed into L2's virtual-APIC page at an entry of L2 (ON found set)"};
  };
  Posted& posted() {
    if (!m_posted) m_posted = &make_group<Posted>();
    return *m_posted;
  }
  /// Nested PML (created at first use, docs/nested.md).
  struct Pml : stats::Group {
    explicit Pml(stats::Group* p) : Group(p, "pml", "L1's page-modification logging of L2, emulated by L0") {}
    stats::Counter logged{this, "logged", "entries", "L2 guest-physical pages L0 wrote into L1's PML buffer"};
    stats::Counter full_exits{this, "full_exits", "exits", "PML-full exits synthesized into L1 (reason 62)"};
    stats::Counter dirty_set{this, "dirty_set", "entries", "EPT12 dirty flags L0 set for L2's writes"};
  };
  Pml& pml() {
    if (!m_pml) m_pml = &make_group<Pml>();
    return *m_pml;
  }
  Reason& reason(unsigned r) {
    if (r >= m_reasons.size()) r = static_cast<unsigned>(m_reasons.size() - 1);
    if (!m_reasons[r]) m_reasons[r] = &m_by_reason->make_group<Reason>(cpu::exit_reason_name(r));
    return *m_reasons[r];
  }
  explicit NestedStats(stats::Group* p) : Group(p, "nested", "nested VMX: L1's VMX instructions and its guests' exits") {}
  stats::Counter emulated{this, "emulated", "instructions", "VMX instructions of L1 emulated by L0"};
  stats::Counter vmfails{this, "vmfails", "instructions", "of those, that ended in VMfailInvalid or VMfailValid"};
  stats::Counter l2_entries{this, "l2_entries", "entries", "VM entries of L1 emulated (L2 entered)"};
  stats::Counter reflected{this, "reflected", "exits", "L2 exits reflected to L1 (synthesized exits into L1)"};
  stats::Counter l0_handled{this, "l0_handled", "exits", "L2 exits L0 handled itself (L1 never saw them)"};
  stats::Counter ept02_fills{this, "ept02_fills", "entries", "shadow EPT: EPT02 entries built from EPT12 and EPT01"};
  stats::Counter ept02_drops{this, "ept02_drops", "events", "shadow EPT: EPT02 torn down (L1's INVEPT, a new EPTP12)"};
  stats::Counter ept12_writes{this, "ept12_writes", "exits",
                              "shadow EPT: L1's writes to write-protected EPT12 tables (EPT02 entries dropped)"};
  stats::Counter ept02_zaps{this, "ept02_zaps", "entries", "shadow EPT: EPT02 leaves dropped for EPT12 writes"};
  stats::Counter l0_exits{this, "l0_exits", "exits", "exits L0 took from this VM, L1's and L2's"};
  stats::Counter vmrw_exits{this, "vmrw_exits", "exits", "of those, L1's VMREADs and VMWRITEs that exited"};
  stats::Ratio vmrw_share{this, "vmrw_share", "ratio", "vmrw_exits / l0_exits: the share VMCS shadowing acts on",
                          vmrw_exits, l0_exits};

 private:
  stats::Group* m_by_reason = &subgroup("l2_exits", "L2 exits by basic exit reason, and what each cost at L1 and L0");
  std::array<Reason*, cpu::kMaxExitReason + 1> m_reasons{};
  Posted* m_posted = nullptr;
  Pml* m_pml = nullptr;
};

/// The nested-VMX state of one vCPU of L1 (KVM's struct nested_vmx).
struct NestedVcpu {
  bool vmxon = false;                 // L1 is in VMX operation
  std::uint64_t vmxon_ptr = 0;        // L1's VMXON region (guest-physical)
  std::uint64_t current = ~0ull;      // current-VMCS pointer of L1 (guest-physical, ~0: none)
  std::uint64_t current_hpa = 0;      // where vmcs12 lies in host memory
  bool guest_mode = false;            // L2 runs (vmcs02 is the vCPU's VMCS)
  // vmcs02 and vmcs01: while in guest mode Vcpu::vmcs_pa and launched name
  // vmcs02 and these vmcs01, and the other way round in L1.
  std::uint64_t other_vmcs = 0;
  bool other_launched = false;
  bool vmcs02_ready = false;          // its constant fields written
  std::uint16_t vpid02 = 0;
  std::unique_ptr<cpu::VcpuObserver> obs02;  // L2's exits, as the core reports them
  // Shadow EPT (KVM's nested EPT MMU): EPT02 maps L2's guest-physical
  // addresses to host-physical ones, built on L2's EPT violations from
  // L1's EPT12 (in L1's memory) composed with EPT01.
  std::unique_ptr<Ept> ept02;
  std::uint64_t eptp12 = 0;           // the EPT12 pointer EPT02 shadows
  // The reflected exit being handled by L1 (statistics): its reason
  // (-1: none), when L2 exited, when L1 resumed, and L1's exits since.
  std::uint64_t shadow_vmcs = 0;      // VMCS shadowing: the shadow of vmcs12 (0: off)
  std::uint64_t ept12_unprotected = 0;  // 1: L1 writes an EPT12 table under the monitor trap flag
  // Posted interrupts for L2 (KVM's nested.posted_intr_nv, pi_pending):
  // vmcs12's notification vector (-1: vmcs12 does not process posted
  // interrupts), L1's descriptor and L2's virtual-APIC page in host memory.
  int pi_nv12 = -1;
  bool pi_pending = false;
  bool sync_gis = false;              // VMCS shadowing: L2's guest interrupt status is kept in the shadow
  bool vid12 = false;                 // vmcs12 has virtual-interrupt delivery (guest interrupt status is L2's)
  std::uint64_t pi_desc_hpa = 0, vapic_hpa = 0;
  std::uint64_t msr_bitmap02 = 0;     // the MSR bitmap vmcs02 has
  bool pml12 = false;                 // vmcs12 enables PML (L0 logs L2's writes into L1's buffer)
  int pending_reason = -1;
  std::uint64_t l2_exit_at = 0, reflected_at = 0, l1_exits = 0, vmrw_exits = 0;
  std::uint64_t l0_cycles = 0, root_since = 0;  // root-operation cycles for it; when the last exit returned
};

}  // namespace vmx::hv
