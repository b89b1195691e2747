// The hypervisor's per-VM, per-vCPU and per-core state (private to
// hypervisor/*.cc).
#pragma once

#include <bitset>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "hypervisor/hypervisor.h"
#include "hypervisor/virtio_net.h"

namespace vmx::hv {

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
  std::uint64_t ept_root = 0;
  std::uint64_t eptp = 0;
  std::uint64_t mmu_lock = 0;  // host-physical address of the VM's EPT spinlock word
  bool crashed = false;
  std::string crash;
  std::unique_ptr<ShadowMmu> shadow;  // shadow paging instead of EPT
  std::unique_ptr<VirtioDev> virtio;  // virtio-net device (VmSpec::virtio_net)
  std::string nic_type = "none";      // VmSpec::nic_type
  unsigned vf = 0;
  std::uint64_t nic_window_gpa = 0;
  std::uint8_t nic_vector = 0;
  stats::Group* group = nullptr;
  std::vector<std::unique_ptr<Vcpu>> vcpus;
  // The emulated NIC, if any: the device, its interface to the hypervisor,
  // and with access: poll the core that polls it and the next poll (TSC).
  std::unique_ptr<NicHost> nic_host;
  std::unique_ptr<EmulatedNic> nic;
  unsigned nic_core = 0;
  std::uint64_t nic_next_poll = 0, nic_poll_ticks = 0;
};

struct Hypervisor::Vcpu : SchedEntity {
  Vm* vm = nullptr;
  unsigned index = 0;
  unsigned core = 0;   // the core whose run queue holds the vCPU
  bool pinned = false; // may run only on its pinned core (vms[].pin)
  bool claimed = false; // a core picked it and runs it (not migratable now)
  bool movable = true;  // not started, or its last exit was HLT (see migrate())
  int active_on = -1;   // core on which its VMCS is active (VMPTRLD, no VMCLEAR since)
  stats::Counter* migrations = nullptr;
  std::uint64_t vmcs_pa = 0;
  std::uint64_t save_area = 0;  // host-physical: saved GPRs, then other per-vCPU state
  std::uint16_t vpid = 0;
  cpu::Regs regs;
  enum class State : std::uint8_t { Runnable, Blocked, Dead } state = State::Runnable;
  bool launched = false;
  bool vmcs_ready = false;
  std::bitset<256> virr;              // virtual interrupts requested (injection)
  std::uint64_t vapic = 0;            // virtual-APIC page (posted interrupts)
  std::uint64_t pi_desc = 0;          // posted-interrupt descriptor
  bool pi_wakeup = false;             // its NV is the wake-up vector (blocked in HLT)
  std::uint64_t vtimer_deadline = 0;  // guest IA32_TSC_DEADLINE (0: disarmed)
  std::uint32_t vlvt_timer = models::Lapic::kDefaultTimerVector;
  bool preempt_armed = false;         // the VMCS's "activate VMX-preemption timer" as last written
  std::unique_ptr<cpu::VcpuObserver> obs;

  /// Where the vCPU's time went, exact to the cycle of its core's clock:
  /// every cycle since its first run is in exactly one bucket.
  struct Time : stats::Group {
    explicit Time(stats::Group* p) : Group(p, "time", "where the vCPU's time went") {}
    stats::Counter guest{this, "guest_cycles", "cycles", "running in VMX non-root operation"};
    stats::Counter hypervisor{this, "hypervisor_cycles", "cycles",
                              "in the hypervisor on this vCPU's behalf (exit handling, entry)"};
    stats::Counter steal{this, "steal_cycles", "cycles", "runnable but another vCPU had the core (stolen)"};
    stats::Counter idle{this, "idle_cycles", "cycles", "halted, waiting for an interrupt"};
  };
  std::unique_ptr<Time> time;
  // A vCPU is runnable from time 0, when its VM is created, until it dies.
  enum class Off : std::uint8_t { Stopped, OnCpu, Runnable, Halted } off = Off::Runnable;
  std::uint64_t since = 0;           // start of the current state
  std::uint64_t guest_baseline = 0;  // obs->total_guest_cycles at `since` while on the CPU
  std::uint64_t steal_total = 0;     // stolen cycles since creation (never reset)
  // Event trace: the vCPU's track and the start of its current state's slice
  // (unlike `since`, not moved by statistics flushes).
  int trace_track = -1;
  std::uint64_t trace_since = 0;
  std::uint64_t steal_msr = 0;       // the guest's MSR_KVM_STEAL_TIME value
  std::uint64_t steal_area = 0;      // host-physical address of its steal-time record (0: off)

  // Shadow paging: the guest's view of its control registers, its CR2
  // (saved at every exit and restored before entry, as KVM does), the
  // shadow root in use and a few previous ones (KVM_MMU_NUM_PREV_ROOTS = 3),
  // and a write to a protected page-table page being single-stepped.
  std::uint64_t cr2 = 0;
  std::uint64_t guest_cr0 = 0, guest_cr3 = 0, guest_cr4 = 0;
  ShadowPage* root = nullptr;
  std::deque<ShadowPage*> prev_roots;
  bool shadow_flush = false;   // INVVPID before the next entry
  bool shadow_reload = false;  // the root was torn down: load a new one before the next entry
  struct PtWrite {
    bool active = false;
    std::uint64_t la = 0, gfn = 0, offset = 0;
  } pt_write;

  bool sched_runnable() const override { return state == State::Runnable; }
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

struct Hypervisor::PerCore : cpu::InterruptHandler {
  Hypervisor* hv = nullptr;
  unsigned id = 0;
  cpu::Core* core = nullptr;
  std::unique_ptr<sim::Fiber> fiber;
  std::unique_ptr<Scheduler> sched;
  std::vector<Vcpu*> assigned;
  Vcpu* loaded = nullptr;   // whose VMCS is current
  Vcpu* last_ran = nullptr; // the vCPU this core ran last
  std::uint64_t vmxon_region = 0;

  void interrupt(cpu::Core&, std::uint8_t vector) override { hv->host_interrupt(*this, vector); }
  void exception(cpu::Core& c, std::uint8_t vector, std::uint32_t error_code) override {
    throw cpu::SimulationError(fmt::format("{}: hypervisor took exception {} (error code {:#x})", c.name(), vector,
                                           error_code));
  }
};

}  // namespace vmx::hv
