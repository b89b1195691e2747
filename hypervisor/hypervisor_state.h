// The hypervisor's per-VM, per-vCPU and per-core state (private to
// hypervisor/*.cc).
#pragma once

#include <array>
#include <bitset>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "hypervisor/balloon.h"
#include "hypervisor/ept.h"
#include "hypervisor/hypervisor.h"
#include "hypervisor/spinlock.h"
#include "hypervisor/virtio_blk.h"
#include "hypervisor/virtio_net.h"

namespace vmx::hv {

/// Constants shared by the hypervisor's rooms (hypervisor/*.cc).
namespace detail {
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kLine = 64;
constexpr std::uint8_t kHostTimerVector = models::Lapic::kDefaultTimerVector;
constexpr std::uint8_t kRescheduleVector = 0xFD;  // Linux's RESCHEDULE_VECTOR
constexpr std::uint8_t kPostedVector = 0xF2;      // Linux's POSTED_INTR_VECTOR
constexpr std::uint8_t kPostedWakeupVector = 0xF1;  // Linux's POSTED_INTR_WAKEUP_VECTOR
constexpr std::uint8_t kHostPmiVector = 0xF0;     // the host LVT performance-counter entry (vpmu.cc)
// The notification vector of vmcs02 when L1 uses posted interrupts for L2
// (Linux's POSTED_INTR_NESTED_VECTOR, 0xF0 there, is the PMI here; 0xF3 is
// above the range host_nic.vector may take).
constexpr std::uint8_t kPostedNestedVector = 0xF3;
// Posted-interrupt descriptor (SDM Vol. 3C, 30.6; VT-d 9.12): PIR at 0,
// ON (bit 0), SN (bit 1), NV (bits 23:16) and NDST (bits 63:32) in the
// quadword at 32.
constexpr std::uint64_t kPidControl = 32;
constexpr std::uint64_t kPidOn = 1;
constexpr std::uint64_t kPidNvByte = kPidControl + 2;  // NV, bits 279:272
constexpr std::uint64_t kPidOffset = 0x800;  // in the vCPU's save-area frame, 64-byte aligned
// The rest of the vCPU's save-area frame (docs/hypervisor.md, "What KVM does
// per exit"): the GPRs and vcpu_state_lines of per-vCPU state fill
// 0x000-0x3FF; KVM's per-vCPU CPUID table (vcpu->arch.cpuid_entries,
// struct kvm_cpuid_entry2: function, index, flags, EAX-EDX, padding: 40
// bytes) at 0x400; the posted-interrupt descriptor at 0x800; and the
// software local APIC's registers that KVM's handlers touch, as its
// apic->regs page holds them (ISR and IRR, eight 32-bit registers 16 bytes
// apart each, SDM Vol. 3A, 11.8.4), the timer's LVT entry and deadline, and
// the vCPU's request bits (KVM_REQ_EVENT), at 0xC00.
constexpr std::uint64_t kCpuidTableOffset = 0x400;
constexpr std::uint64_t kCpuidEntryBytes = 40;
constexpr std::uint64_t kVlapicOffset = 0xC00;
constexpr std::uint64_t kVlapicIsr = 0x000;        // ISR bits 32i..32i+31 at 16i
constexpr std::uint64_t kVlapicIrr = 0x080;        // IRR likewise
constexpr std::uint64_t kVlapicLvtTimer = 0x100;
constexpr std::uint64_t kVlapicTscDeadline = 0x108;
constexpr std::uint64_t kVlapicRequests = 0x140;   // its own line, as vcpu->requests
constexpr std::uint64_t kReqEvent = 1;             // KVM_REQ_EVENT: re-evaluate pending interrupts
constexpr unsigned kSavedGprs = 15;               // all but RSP, as KVM's __vmx_vcpu_run
constexpr std::uint16_t kPm1aControlPort = 0x604;  // PM1a_CNT_BLK of QEMU's machines (their FADT)
constexpr std::uint64_t kPm1SlpEn = 1u << 13;      // PM1 control: SLP_EN (ACPI 6.x, 4.8.3.2.1)
// Offsets of the handlers in the hypervisor's text, so that each handler
// fetches its own code lines.
enum CodeOffset : std::uint64_t {
  kCodeDispatch = 0x0000,
  kCodeCpuid = 0x1000,
  kCodeHlt = 0x2000,
  kCodeVmcall = 0x3000,
  kCodeIo = 0x4000,
  kCodeCr = 0x5000,
  kCodeMsr = 0x6000,
  kCodeEpt = 0x7000,
  kCodeIrq = 0x8000,
  kCodeWindow = 0x9000,
  kCodeInject = 0xA000,
  kCodeSchedule = 0xB000,
  kCodeShadow = 0xC000,  // hypervisor/shadow.cc
  kCodeMigrate = 0xD000,
  kCodePreemption = 0xE000,
  kCodeNic = 0x10000,  // the emulated NIC (0xF000-0xFFFF: the PF driver, hypervisor/host_nic.cc)
  kCodeVirtio = 0x11000,  // hypervisor/virtio_net.cc
  kCodeVmStop = 0x12000,  // hypervisor/vm_stop.cc
  kCodeVpmu = 0x13000,    // hypervisor/vpmu.cc
  kCodeKsm = 0x14000,     // hypervisor/ksm.cc
  kCodeDirty = 0x15000,   // hypervisor/dirty_log.cc
  kCodeSnapshot = 0x16000,  // hypervisor/snapshot.cc
  kCodeBlk = 0x17000,     // hypervisor/virtio_blk.cc
  kCodeBalloon = 0x18000,  // hypervisor/balloon.cc
  kCodeNested = 0x19000,  // hypervisor/nested.cc
  kCodeRdt = 0x1D000,     // hypervisor/rdt.cc
  kCodeHostSwap = 0x1E000,  // hypervisor/host_swap.cc
  kCodeNested2 = 0x1F000,  // hypervisor/nested.cc: EPT12 write protection
  kCodeNested3 = 0x23000,  // hypervisor/nested.cc: posted interrupts and PML for L2
  kCodeMigrateSrc = 0x1A000,  // hypervisor/migration.cc: the source's migration thread
  kCodeMigrateDst = 0x1B000,  // hypervisor/migration.cc: the destination's receive path
  kCodePostcopy = 0x20000,    // hypervisor/postcopy.cc: auto-converge and post-copy
  kCodeVfMig = 0x21000,   // hypervisor/vf_migration.cc: moving an assigned VF
  kCodeAnnounce = 0x25000,  // hypervisor/announce.cc: the destination's self-announce
  kCodeMigTransport = 0x26000,  // hypervisor/mig_transport.cc: the stream's transport (0x26800: receiver)
};

inline std::uint64_t guest_cycles_now(const cpu::VcpuObserver& o, std::uint64_t now) {
  return o.total_guest_cycles + (o.in_guest && now > o.entered_at ? now - o.entered_at : 0);
}
}  // namespace detail

// Names the room files share (this header is private to hypervisor/*.cc).
using cpu::Core;
using cpu::ExitReason;
using cpu::Regs;
namespace field = cpu::field;

/// The emulated NIC's view of the hypervisor (hypervisor/emulated_nic.h).
struct Hypervisor::NicHost final : EmulatedNic::Host {
  NicHost(Hypervisor& h, Vm& m) : hv(h), vm(m) {}
  std::uint64_t guest_to_host(cpu::Core& c, std::uint64_t gpa) override;
  void interrupt(cpu::Core& c, unsigned apic_id, std::uint8_t vector) override;
  void charge(cpu::Core& c, std::uint64_t instructions) override;
  std::uint64_t alloc_frame() override { return hv.alloc_host_frame(); }
  Hypervisor& hv;
  Vm& vm;
};

struct Hypervisor::Vm {
  std::string name;
  unsigned id = 0;
  std::uint64_t memory = 0;
  abi::GuestImage* image = nullptr;
  std::unique_ptr<Ept> ept;    // its EPT (with shadow paging: its guest-physical map, never an EPTP)
  std::uint64_t eptp = 0;
  TicketLock mmu_lock;         // serializes changes to the VM's EPT (word in hypervisor memory)
  bool fresh_frames = true;    // its root, lock and save areas hold power-on zeros (docs/memory.md)
  bool crashed = false;
  std::string crash;
  // Stopping (vm_stop.cc): dead vCPUs, then the teardown once none is on a core.
  bool stopping = false, torn_down = false;
  std::string stop_note;
  std::uint64_t backed = 0;      // bytes of host memory backing its guest memory
  std::vector<bool> ran_on;      // cores that have entered it (may cache its EPT's translations)
  bool ended() const { return crashed || stopping; }
  std::unique_ptr<ShadowMmu> shadow;  // shadow paging instead of EPT
  std::unique_ptr<VirtioDev> virtio;  // virtio-net device (VmSpec::virtio_net)
  std::unique_ptr<BlkDev> blk;          // virtio-blk disk (VmSpec::disk_bytes; virtio_blk.cc)
  std::unique_ptr<BalloonDev> balloon;  // virtio-balloon (VmSpec::balloon; balloon.cc)
  std::string nic_type = "none";      // VmSpec::nic_type
  unsigned vf = 0;
  std::uint16_t vf_rid = 0;             // the assigned VF's requester ID (passthrough.cc)
  std::unique_ptr<VfMigration> vf_mig;  // moving the VF with the VM (vf_migration.cc)
  std::uint64_t nic_window_gpa = 0;
  std::uint8_t nic_vector = 0;
  /// Virtual PMU mode (vpmu.cc) and, for mediated and passthrough, the
  /// VM's own MSR bitmap (0: the hypervisor's, where every MSR exits).
  enum class Pmu : std::uint8_t { None, Emulated, Mediated, Passthrough } pmu = Pmu::None;
  std::uint64_t msr_bitmap = 0;
  /// Cache and bandwidth allocation (rdt.cc): its class of service (0: the
  /// hypervisor's, every way, no throttling), what the class gets, and the
  /// page with the VM-entry (offset 0) and VM-exit (16) MSR-load lists.
  unsigned clos = 0;
  std::uint64_t cache_ways = 0;
  unsigned mba_delay = 0;
  std::uint64_t rdt_lists = 0;
  stats::Counter* vpmu_pmis = nullptr;
  stats::Counter* vpmu_filtered = nullptr;
  stats::Group* group = nullptr;
  std::unique_ptr<DirtyLog> dirty;        // dirty tracking, once started (dirty_log.cc)
  std::unique_ptr<Snapshot> snapshot;     // its snapshot, once taken (snapshot.cc)
  // Live migration (migration.cc): the outgoing migration (source), the
  // incoming one (destination); pausing: its vCPUs are being parked.
  std::unique_ptr<MigrationOut> mig_out;
  std::unique_ptr<MigrationIn> mig_in;
  bool mig_pausing = false, migrated_out = false;
  std::vector<std::unique_ptr<Vcpu>> vcpus;
  // The emulated NIC, if any: the device, its interface to the hypervisor,
  // and with access: poll the core that polls it and the next poll (TSC).
  std::unique_ptr<NicHost> nic_host;
  std::unique_ptr<EmulatedNic> nic;
  unsigned nic_core = 0;
  std::uint64_t nic_next_poll = 0, nic_poll_ticks = 0;
  bool nested_vmx = false;                    // VmSpec::nested_vmx (nested.cc)
  unsigned key_id = 0;                        // VmSpec::key_id: memory-encryption key (0: none)
  std::unique_ptr<NestedStats> nested_stats;
  std::map<std::uint64_t, events::Listener*> nested_observers;  // L1's per-vCPU listeners by vmcs12
  events::Listener* nested_exit_listener = nullptr;             // L1's exit total
  // Shadow EPT (nested.cc): the EPT12 table pages EPT02 was built from,
  // write-protected in EPT01, by L1 guest-physical page: the level of the
  // table, the first L2 guest-physical address it maps, and whether it is
  // writable for a write of L1 under the monitor trap flag.
  struct Ept12Table { unsigned level; std::uint64_t base; bool writable = false; };
  std::map<std::uint64_t, Ept12Table> ept12_tables;
};

struct Hypervisor::Vcpu : SchedEntity {
  Vm* vm = nullptr;
  unsigned index = 0;
  // Placement (vcpu_sched.cc): its core, pinning and migration state.
  unsigned core = 0;   // the core whose run queue holds the vCPU
  bool pinned = false; // may run only on its pinned core (vms[].pin)
  bool claimed = false; // a core picked it and runs it (not migratable now)
  bool movable = true;  // not started, or its last exit was HLT (see migrate())
  int active_on = -1;   // core on which its VMCS is active (VMPTRLD, no VMCLEAR since)
  stats::Counter* migrations = nullptr;
  // The VMCS and the register save area (run_loop.cc).
  std::uint64_t vmcs_pa = 0;
  std::uint64_t save_area = 0;  // host-physical: saved GPRs, then other per-vCPU state
  std::uint16_t vpid = 0;
  cpu::Regs regs;
  std::uint64_t cr2 = 0;  // the guest's CR2, saved at every exit and restored before entry (as KVM does)
  enum class State : std::uint8_t { Runnable, Blocked, Dead } state = State::Runnable;
  bool launched = false;
  bool vmcs_ready = false;
  bool preempt_armed = false;  // the VMCS's "activate VMX-preemption timer" as last written
  std::unique_ptr<cpu::VcpuObserver> obs;

  /// The virtual local APIC (vlapic.cc).
  struct Apic {
    std::bitset<256> virr;              // virtual interrupts requested (injection)
    std::uint64_t vapic = 0;            // virtual-APIC page (posted interrupts)
    std::uint64_t pi_desc = 0;          // posted-interrupt descriptor
    bool pi_wakeup = false;             // its NV is the wake-up vector (blocked in HLT)
    std::uint64_t vtimer_deadline = 0;  // guest IA32_TSC_DEADLINE (0: disarmed)
    std::uint32_t vlvt_timer = models::Lapic::kDefaultTimerVector;
  } apic;

  /// The guest's view of its PMU (vpmu.cc). Emulated and mediated: the
  /// event selects as the guest wrote them, and the counter values while
  /// the counters are not on a core (on a core they live in its PMU).
  struct Vpmu {
    std::array<std::uint64_t, pmu::Pmu::kGpCounters> evtsel{};
    std::array<std::uint64_t, pmu::Pmu::kGpCounters + pmu::Pmu::kFixedCounters> counts{};
    std::uint64_t fixed_ctrl = 0;
    std::uint64_t global_ctrl = (1ull << pmu::Pmu::kGpCounters) - 1;  // the reset value (pmu/pmu.h)
    std::uint64_t status = 0;                                          // overflow bits saved off the core
    std::uint32_t lvtpc = models::Lapic::kLvtMasked;                   // virtual LVT performance-counter entry
  } vpmu;

  /// Where the vCPU's time went, exact to the cycle of its core's clock:
  /// every cycle since its first run is in exactly one bucket.
  struct TimeStats : stats::Group {
    explicit TimeStats(stats::Group* p) : Group(p, "time", "where the vCPU's time went") {}
    stats::Counter guest{this, "guest_cycles", "cycles", "running in VMX non-root operation"};
    stats::Counter hypervisor{this, "hypervisor_cycles", "cycles",
                              "in the hypervisor on this vCPU's behalf (exit handling, entry)"};
    stats::Counter steal{this, "steal_cycles", "cycles", "runnable but another vCPU had the core (stolen)"};
    stats::Counter idle{this, "idle_cycles", "cycles", "halted, waiting for an interrupt"};
  };
  // A vCPU is runnable from time 0, when its VM is created, until it dies.
  enum class Off : std::uint8_t { Stopped, OnCpu, Runnable, Halted };
  /// Time accounting (accounting.cc): simulator observation of the vCPU's
  /// state on its core's clock, no cost to the simulated software.
  struct Time {
    std::unique_ptr<TimeStats> stats;
    Off off = Off::Runnable;
    std::uint64_t since = 0;           // start of the current state
    std::uint64_t guest_baseline = 0;  // obs->total_guest_cycles at `since` while on the CPU
    std::uint64_t steal_total = 0;     // stolen cycles since creation (never reset)
    // Event trace: the vCPU's track and the start of its current state's
    // slice (unlike `since`, not moved by statistics flushes).
    int trace_track = -1;
    std::uint64_t trace_since = 0;
  } time;
  /// The paravirtual steal-time record (accounting.cc).
  struct Steal {
    std::uint64_t msr = 0;   // the guest's MSR_KVM_STEAL_TIME value
    std::uint64_t area = 0;  // host-physical address of its steal-time record (0: off)
  } steal;

  // Shadow paging (shadow.cc): the guest's view of its control registers,
  // the shadow root in use and a few previous ones (KVM_MMU_NUM_PREV_ROOTS
  // = 3), and a write to a protected page-table page being single-stepped.
  struct PtWrite {
    bool active = false;
    std::uint64_t la = 0, gfn = 0, offset = 0;
  };
  struct Shadow {
    std::uint64_t guest_cr0 = 0, guest_cr3 = 0, guest_cr4 = 0;
    ShadowPage* root = nullptr;
    std::deque<ShadowPage*> prev_roots;
    bool flush = false;   // INVVPID before the next entry
    bool reload = false;  // the root was torn down: load a new one before the next entry
    PtWrite pt_write;
  } shadow;

  std::unique_ptr<NestedVcpu> nested;  // nested VMX (nested.cc), once L1 used a VMX instruction
  // Live migration (migration.cc): its state record (a frame of hypervisor
  // memory) and whether it is parked there.
  std::uint64_t mig_record = 0;
  bool mig_parked = false, mig_park_asked = false;
  bool mig_safe = true;  // its last exit leaves nothing of the exiting operation to the core (run_loop.cc)
  // Held off the core by the hypervisor (postcopy.cc): an auto-converge
  // sleep until held_until (TSC), or waiting for a post-copy page.
  bool held = false;
  std::uint64_t held_until = 0;

  bool sched_runnable() const override { return state == State::Runnable && !held; }
};

/// A VM's virtio-net device and what the hypervisor gives it
/// (hypervisor/virtio_net.cc).
struct Hypervisor::VirtioDev final : VirtioNet::Host, SwitchPort {
  Hypervisor* hv = nullptr;
  Vm* vm = nullptr;
  FrameSink forward;
  std::unique_ptr<VirtioNet> dev;
  std::uint64_t gpa_to_hpa(cpu::Core& c, std::uint64_t gpa) override;
  bool transmit(cpu::Core& c, std::uint64_t hpa, std::uint32_t len) override;
  void interrupt(cpu::Core& c, std::uint8_t vector) override;
  void charge(cpu::Core& c, std::uint64_t instructions) override;
  /// A frame from the software switch for the VM's MAC.
  void deliver(cpu::Core& c, std::uint64_t hpa, unsigned len) override { dev->receive(c, hpa, len); }
};

/// Guest-physical loads and stores of the overcommit back ends (virtio-blk,
/// virtio-balloon) through the VM's EPT, the page backed on first touch,
/// one translation cached (vhost's memory-table look-up).
struct Hypervisor::GuestMem {
  Hypervisor& hv;
  Vm& vm;
  cpu::Core& c;
  std::uint64_t page = ~0ull, hpa_page = 0;
  /// Host-physical address of gpa; 0 if gpa is outside the VM's memory or
  /// the host has no frame for it.
  std::uint64_t hpa(std::uint64_t gpa) {
    const std::uint64_t p = gpa & ~0xFFFull;
    if (p != page) {
      page = p;
      hpa_page = gpa < vm.memory && hv.back_guest_page(c, vm, p) ? hv.ept_translate(c, vm, p) : 0;
    }
    return hpa_page ? hpa_page | (gpa & 0xFFF) : 0;
  }
  std::uint64_t load(std::uint64_t gpa, unsigned size) {
    const std::uint64_t h = hpa(gpa);
    if (!h) throw cpu::SimulationError(fmt::format("{}: virtqueue at guest-physical {:#x} is not backed", vm.name, gpa));
    return c.load(h, size);
  }
  void store(std::uint64_t gpa, std::uint64_t v, unsigned size) {
    const std::uint64_t h = hpa(gpa);
    if (!h) throw cpu::SimulationError(fmt::format("{}: virtqueue at guest-physical {:#x} is not backed", vm.name, gpa));
    c.store(h, v, size);
  }
};

struct Hypervisor::PerCore : cpu::InterruptHandler {
  Hypervisor* hv = nullptr;
  unsigned id = 0;
  cpu::Core* core = nullptr;
  std::unique_ptr<sim::Fiber> fiber;
  std::unique_ptr<Scheduler> sched;
  std::vector<Vcpu*> assigned;
  Vcpu* loaded = nullptr;   // whose VMCS is current
  Vcpu* last_ran = nullptr; // the vCPU this core ran last
  Vcpu* pmu_owner = nullptr; // whose guest counters the core's PMU holds (vpmu.cc)
  // The scheduler's deadline as the core's timer last took it (0: none),
  // so that a slice end that appears without a timer event (a second vCPU
  // became runnable) is armed before the next VM entry (vcpu_sched.cc).
  std::uint64_t sched_armed = 0;
  std::uint64_t vmxon_region = 0;
  // Asked of this core by others (run_core_requests): INVEPT single-context
  // of these EPTPs, VMCLEAR (then free) of these VMCS regions.
  std::vector<std::uint64_t> pending_invept, pending_vmclear;
  std::vector<Vcpu*> pending_park;  // migration: vCPUs whose VMCS is active here, to park (migration.cc)

  void interrupt(cpu::Core&, std::uint8_t vector) override { hv->host_interrupt(*this, vector); }
  void exception(cpu::Core& c, std::uint8_t vector, std::uint32_t error_code) override {
    throw cpu::SimulationError(fmt::format("{}: hypervisor took exception {} (error code {:#x})", c.name(), vector,
                                           error_code));
  }
};

}  // namespace vmx::hv
