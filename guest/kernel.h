// The guest kernel: simulated software that runs in a VM on its vCPUs.
//
// It boots with paging off, builds IA-32e page tables in guest memory (a
// kernel half shared by all processes with a direct map of physical memory,
// and a user half per process), turns paging on, starts its other vCPUs with
// IPIs, and then schedules threads on each vCPU with a periodic timer tick.
// User memory is demand-paged: a page fault allocates a frame, clears it
// through the direct map and maps it. Every path charges its work as
// instructions (KernelCosts) and as the loads and stores it really makes.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <unordered_map>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "abi/boot.h"
#include "cpu/core.h"
#include "guest/net.h"
#include "guest/page_table.h"
#include "guest/sched.h"
#include "sim/fiber.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::guest {

struct KernelCosts {
  std::uint64_t page_fault, tick, context_switch, syscall, thread_start, unmap_page, fork, fork_page, cow_fault,
      code_bytes, sched_account, wake_select, balance, scan_vcpu, migrate;
  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(page_fault, "page_fault", "800", Spec(Unit::Instructions),
            "Anonymous page fault path besides its memory traffic (assumption, order of Linux's "
            "do_anonymous_page path).");
    v.param(tick, "tick", "300", Spec(Unit::Instructions), "Timer-tick handler (assumption).");
    v.param(context_switch, "context_switch", "600", Spec(Unit::Instructions),
            "Switching threads (assumption, order of Linux's __schedule + switch_to).");
    v.param(syscall, "syscall", "250", Spec(Unit::Instructions), "System-call entry, dispatch and return (assumption).");
    v.param(thread_start, "thread_start", "2000", Spec(Unit::Instructions), "Creating a thread (assumption).");
    v.param(unmap_page, "unmap_page", "100", Spec(Unit::Instructions),
            "munmap work per mapped page, besides its page-table traffic (assumption).");
    v.param(fork, "fork", "20000", Spec(Unit::Instructions),
            "fork(2) besides copying page tables: process and thread creation (assumption, order of "
            "Linux's copy_process).");
    v.param(fork_page, "fork_page", "50", Spec(Unit::Instructions),
            "fork work per mapped page, besides its page-table traffic (assumption).");
    v.param(cow_fault, "cow_fault", "300", Spec(Unit::Instructions),
            "Copy-on-write fault work besides the copy itself (assumption).");
    v.param(code_bytes, "code_bytes", "256", Spec(Unit::Bytes).at_most(1 << 20),
            "Code fetched per kernel path (assumption).");
    v.param(sched_account, "sched_account", "60", Spec(Unit::Instructions),
            "Charging the running thread's run time and virtual runtime, besides its memory traffic "
            "(assumption, order of Linux's update_curr).");
    v.param(wake_select, "wake_select", "150", Spec(Unit::Instructions),
            "Waking a thread: choosing its vCPU and queueing it, besides the per-vCPU scan (assumption, order of "
            "Linux's try_to_wake_up + select_task_rq_fair).");
    v.param(balance, "balance", "300", Spec(Unit::Instructions),
            "One load-balancer run besides the per-vCPU scan (assumption, order of Linux's load_balance "
            "for a small domain).");
    v.param(scan_vcpu, "scan_vcpu", "40", Spec(Unit::Instructions),
            "Looking at one other vCPU's run queue (and, under kernel.sched.pv, its steal-time record) when "
            "placing a woken thread or balancing, besides the loads of that data (assumption).");
    v.param(migrate, "migrate", "400", Spec(Unit::Instructions),
            "Moving a queued thread to another vCPU's run queue (assumption, order of Linux's "
            "detach_task + attach_task).");
  }
};

/// Memory overcommit in the guest (docs/memory.md, "Guest swap",
/// "Ballooning"): reclaim to a swap disk and the balloon driver.
struct MemoryParams {
  std::uint64_t swap_cluster, balloon_interval, reclaim_page, swap_fault, balloon_page;
  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(swap_cluster, "swap_cluster", "16", Spec(Unit::Count).at_least(1).at_most(256),
            "Pages reclaim writes out at a time when an allocation finds no free frame (assumption; Linux's "
            "SWAP_CLUSTER_MAX is 32); the disk driver keeps at most 21 requests in flight, its 64-entry queue.");
    v.param(balloon_interval, "balloon_interval", "1ms", Spec(Unit::Time).at_least(1e6),
            "How often the balloon driver reads the device's target and reports its statistics (assumption: "
            "Linux reacts to a configuration-change interrupt and reports every 10 s by default; the model polls).");
    v.param(reclaim_page, "reclaim_page", "600", Spec(Unit::Instructions),
            "Reclaim work per page looked at besides its page-table traffic: LRU handling, unmapping, swap-slot "
            "allocation (assumption, of the order of Linux's shrink_folio_list per page).");
    v.param(swap_fault, "swap_fault", "1500", Spec(Unit::Instructions),
            "A fault on a swapped-out page besides the page-fault path and the I/O: swap-cache look-up, slot "
            "release, mapping (assumption, of the order of Linux's do_swap_page).");
    v.param(balloon_page, "balloon_page", "100", Spec(Unit::Instructions),
            "Balloon driver work per page inflated or deflated besides the page-number store (assumption, of "
            "the order of Linux's balloon_page_alloc / balloon_page_enqueue).");
  }
};

struct KernelParams {
  std::uint64_t tick;       // ps
  std::uint64_t timeslice;  // ps
  std::uint64_t paging_levels;
  bool pcid;
  bool pv_steal;
  bool smep, smap;
  KernelCosts costs;
  SchedParams sched;
  NetParams net;
  MemoryParams memory;
  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(tick, "tick", "4ms", Spec(Unit::Time).at_least(1e6),
            "Timer-tick period (Linux CONFIG_HZ=250). The tick stops while a vCPU is idle.");
    v.param(timeslice, "timeslice", "4ms", Spec(Unit::Time).at_least(1e6),
            "Time a thread runs before another runnable thread on its vCPU gets it (assumption).");
    v.param(paging_levels, "paging_levels", "4", Spec().at_least(4).at_most(5),
            "Levels of the guest's page tables: 4, or 5 (CR4.LA57, 57-bit linear addresses).");
    v.param(pcid, "pcid", "true", Spec(Unit::Flag),
            "Tag each process's translations with a PCID (CR4.PCIDE) so that switching address spaces "
            "keeps them, as Linux does on processors with PCIDs; off, every switch flushes the TLB.");
    v.param(pv_steal, "pv_steal", "true", Spec(Unit::Flag),
            "Register a paravirtual steal-time record per vCPU (MSR_KVM_STEAL_TIME, as Linux does under "
            "KVM) and read it at every tick.");
    v.param(smep, "smep", "false", Spec(Unit::Flag),
            "Set CR4.SMEP (supervisor-mode execution prevention, SDM Vol. 3A, 4.6.1): a kernel fetch from a "
            "user page is a page fault, which the kernel treats as an oops and kills the thread (docs/protection.md).");
    v.param(smap, "smap", "false", Spec(Unit::Flag),
            "Set CR4.SMAP (supervisor-mode access prevention): kernel data accesses to user pages fault unless "
            "RFLAGS.AC = 1; the kernel's user-memory accessors bracket their accesses with STAC/CLAC, as Linux's "
            "do, and an access outside them is an oops that kills the thread (docs/protection.md).");
    v.section(costs, "costs", "Software path lengths of the guest kernel.");
    v.section(sched, "sched", "The thread scheduler (docs/scheduling.md, \"Guest scheduler\").");
    v.section(net, "net", "The network stack and driver (docs/io.md, \"Guest networking\").");
    v.section(memory, "memory", "Swap and ballooning (docs/memory.md, \"Guest swap\", \"Ballooning\").");
  }
};

/// Tells the experiment each time a thread of finite work ends (simulator
/// annotation); how many there are it knows from the configuration.
class RunControl {
 public:
  virtual ~RunControl() = default;
  virtual void thread_finished() = 0;
};

class Kernel;
struct Process;
class Thread;

/// A guest program: what a process runs. Programs (workloads/) sit above
/// the kernel and reach it only through Thread, its system-call interface;
/// the kernel knows them only through this.
class Program {
 public:
  virtual ~Program() = default;
  /// Runs in a guest thread; returns when the thread's work is done.
  virtual void run(Thread& t) = 0;
  /// Whether run() returns (some count is nonzero) or runs until the end.
  virtual bool finite() const = 0;
};

/// A guest thread as workloads see it: its operations go to whichever core
/// currently runs its vCPU.
class Thread {
 public:
  cpu::Core& cpu() const { return cpu::Core::current(); }
  // Each operation tries fast-forward's direct path in line first
  // (cpu::Core::ff_load etc.; nothing in full timing but one test), in
  // line in the program's own loop (always_inline: no call to get there).
  [[gnu::always_inline]] std::uint64_t load(std::uint64_t va, unsigned size = 8) {
    cpu::Core& c = cpu();
    if (std::uint64_t v; c.ff_load(va, size, v)) [[unlikely]]
      return v;
    return c.load(va, size);
  }
  /// A load whose address depends on no outstanding load (cpu::Core::load_independent).
  [[gnu::always_inline]] std::uint64_t load_independent(std::uint64_t va, unsigned size = 8) {
    cpu::Core& c = cpu();
    if (std::uint64_t v; c.ff_load(va, size, v)) [[unlikely]]
      return v;
    return c.load_independent(va, size);
  }
  [[gnu::always_inline]] void store(std::uint64_t va, std::uint64_t value, unsigned size = 8) {
    cpu::Core& c = cpu();
    if (!c.ff_store(va, value, size)) [[likely]]
      c.store(va, value, size);
  }
  [[gnu::always_inline]] void compute(std::uint64_t instructions) {
    cpu::Core& c = cpu();
    if (!c.ff_compute(instructions)) [[likely]]
      c.compute(instructions);
  }
  /// mmap(2) of anonymous memory: returns the address of a fresh region,
  /// populated on first touch. 0 when the address space is exhausted.
  std::uint64_t mmap(std::uint64_t bytes);
  /// mmap(2) with MAP_FIXED at a page-aligned address; `exec` allows
  /// instruction fetch from it. False if the range is not free user space.
  bool mmap_fixed(std::uint64_t start, std::uint64_t bytes, bool exec);
  /// A second mapping of the frames behind the region [src, src + bytes)
  /// (as two mmaps of one memfd): a fresh region whose pages map the same
  /// frames with their own permissions (`writable`, `exec`). A page of it
  /// maps on first touch the frame the source page has then (0 if src is
  /// not a whole region start, or the address space is exhausted).
  std::uint64_t mmap_alias(std::uint64_t src, std::uint64_t bytes, bool writable, bool exec);
  /// put_user(2)-like: the kernel stores `value` at the user address `va`
  /// with its user-memory accessor (STAC/CLAC around it under SMAP).
  void copy_to_user(std::uint64_t va, std::uint64_t value);
  /// A kernel path with a bug, reached by a system call with a user address
  /// (what an exploit does): it dereferences `va` without the user-memory
  /// accessor (UserRead) or jumps to it (UserExec, "ret2usr"). With SMAP or
  /// SMEP on this faults in the kernel, an oops that kills the thread.
  enum class KernelBug : std::uint8_t { UserRead, UserExec };
  void kernel_bug(KernelBug kind, std::uint64_t va);
  /// munmap(2) of a whole region returned by mmap: its frames are freed and
  /// its translations invalidated. False if no region starts there.
  bool munmap(std::uint64_t start);
  /// fork(2) then waitpid(2): a child process with a copy-on-write copy of
  /// this address space runs `child` in its one thread on this vCPU, and
  /// this thread waits until it exits. False if fork is not possible (the
  /// process uses large pages, or the kernel is out of memory).
  bool fork_and_wait(const std::function<void(Thread&)>& child);
  /// Sleeps for `ps` picoseconds of guest time (nanosleep(2)); returns the
  /// TSC value it was due to wake at.
  std::uint64_t sleep(std::uint64_t ps);
  /// clock_nanosleep(TIMER_ABSTIME): sleeps until the TSC reaches `tsc`
  /// (returns at once if it has).
  void sleep_until(std::uint64_t tsc);
  /// TSC ticks per second (what the guest calibrated, here the platform's).
  std::uint64_t tsc_hz() const;
  /// Deterministic per-thread random numbers (SplitMix64 over the seed).
  std::uint64_t random() {
    std::uint64_t z = (m_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Networking (guest/net.cc; docs/io.md, "Guest networking"): raw
  // Ethernet frames through the VM's network device.
  /// Sends the frame of `len` bytes at `va`; with `flush` false the
  /// doorbell waits for a later send or net_flush (a batch). Blocks while
  /// the transmit ring is full. False if the VM has no network device or
  /// the frame is larger than a ring buffer.
  bool net_send(std::uint64_t va, std::uint32_t len, bool flush = true);
  /// Notifies the device of the frames queued without a doorbell.
  void net_flush();
  /// Blocks until a frame arrives and copies it to `va` (at most `max`
  /// bytes); returns its length, 0 if the VM has no network device.
  std::uint32_t net_recv(std::uint64_t va, std::uint32_t max);
  /// The device's MAC address (bytes 0-5 in bits 7:0 ... 47:40; 0 without a device).
  std::uint64_t net_mac() const;
  /// Whether the VM's network device probed successfully.
  bool net_up() const;
  /// Buggy or malicious driver behaviour (workload dma_rogue): a transmit
  /// descriptor, or the next receive descriptor, with bus address `addr`
  /// instead of a ring buffer; and the device's status register
  /// (`clear_errors`: then clear its DMA-error bits).
  bool net_send_raw(std::uint64_t addr, std::uint32_t len);
  bool net_recv_raw(std::uint64_t addr);
  std::uint32_t net_device_status(bool clear_errors = false);
  // User-space drivers (guest/net.cc; docs/io.md, "Poll-mode driver"), as
  // with Linux's vfio or uio: the kernel's driver lets go of the device and
  // the process programs it directly.
  /// Unbinds the kernel's network driver (the device is stopped, its
  /// interrupts disabled) and maps the device's register window into this
  /// process, uncached; returns its address (0: no ring NIC, or claimed).
  std::uint64_t net_claim();
  /// Physically contiguous memory for device rings, mapped into this
  /// process (as a hugepage memzone); its address, 0 if none is left.
  std::uint64_t dma_alloc(std::uint64_t bytes);
  /// The guest-physical (bus) address behind `va` in this process, from a
  /// walk of its page tables (/proc/self/pagemap); 0 if `va` is not mapped.
  std::uint64_t virt_to_phys(std::uint64_t va);
  unsigned index() const { return m_index; }
  unsigned vcpu() const { return m_vcpu; }
  Kernel& kernel() const { return *m_kernel; }

  // Performance counters (guest/perf.cc; docs/pmu.md, "Profiling in a
  // guest"), as a perf-like facility counting on the thread's CPU.
  static constexpr unsigned kPhases = 8;
  /// Programs the CPU's counters (a system call): fixed counters 0 and 1
  /// (instructions retired, core cycles) and IA32_PMC0 with `event` (event
  /// number in bits 7:0, unit mask in 15:8), all at CPL 0 and 3, from zero,
  /// and lets user mode read them with RDPMC (CR4.PCE). With
  /// `sample_period` (below 2^31) PMC0 interrupts every that many events
  /// and the kernel's handler counts a sample for the interrupted thread's
  /// phase. False if CPUID.0AH reports no PMU (nothing is programmed).
  bool perf_open(std::uint64_t event, std::uint64_t sample_period = 0);
  /// Stops the counters (a system call).
  void perf_close();
  /// RDPMC from user mode: 0 instructions, 1 cycles (the fixed counters), 2 PMC0.
  std::uint64_t perf_read(unsigned which);
  /// The program's current phase, where its samples go (as the
  /// interrupted instruction pointer would tell a real profiler).
  void set_phase(unsigned phase) { m_phase = phase % kPhases; }
  const std::array<std::uint64_t, kPhases>& perf_samples() const { return m_samples; }

 private:
  friend class Kernel;
  unsigned m_phase = 0;
  std::array<std::uint64_t, kPhases> m_samples{};
  Kernel* m_kernel = nullptr;
  Process* m_process = nullptr;
  unsigned m_index = 0;
  unsigned m_vcpu = 0;
  std::uint64_t m_rng = 0;
  bool m_dead = false;
  bool m_finite = true;
  std::uint64_t m_wake_at = 0;  // TSC deadline while sleeping
  // Scheduling (guest/sched.cc).
  std::uint64_t m_weight = 1024;     // load weight (from the workload's nice)
  std::uint64_t m_vruntime = 0;      // weighted run time, cycles x 1024 / weight
  std::uint64_t m_exec_start = 0;    // TSC when its run time was last charged
  std::uint64_t m_slice_used = 0;    // cycles charged since it was last picked
  std::uint32_t m_slot = 0;          // its scheduling entity in guest memory
  // Preempted inside an interrupt handler, whose frames belong to the core
  // of its vCPU: it must resume there (docs/scheduling.md).
  bool m_irq_preempted = false;
  // Blocked on swap I/O inside its page-fault handler: the handler's frames
  // are its vCPU's, so it is woken there (guest/swap.cc).
  bool m_in_fault = false;
  std::function<void(Thread&)> m_child_body;  // what a forked child runs
  Thread* m_waiter = nullptr;                  // the parent waiting for this child
  std::unique_ptr<sim::Fiber> m_fiber;
};

struct Process {
  std::uint64_t pml4 = 0;  // guest-physical address of the top-level table
  std::uint64_t page_size = 4096;  // of its anonymous memory (4 KiB, 2 MiB, 1 GiB)
  std::uint64_t weight = 1024;     // load weight of its threads (nice_to_weight)
  std::uint64_t pcid = 0;
  bool fresh_pcid = false;  // first CR3 load must flush the PCID's old entries
  std::uint64_t next_va = 0;
  struct Region {
    std::uint64_t start, end;
    bool exec = false;
    bool writable = true;
    std::uint64_t alias_of = 0;  // mmap_alias: the source region's start (its pages' frames)
  };
  std::vector<Region> regions;
  std::shared_ptr<Program> workload;
};

class Kernel final : public abi::GuestImage, public cpu::InterruptHandler, public NetEnv {
 public:
  /// The kernel's own statistics (what the guest sees, e.g. its steal
  /// time) go under `stats_parent` as "kernel".
  Kernel(const KernelParams& params, std::string vm_name, unsigned vcpus, std::uint64_t memory,
         std::uint64_t tsc_hz, std::uint64_t seed, RunControl* control, stats::Group* stats_parent);
  ~Kernel() override;

  /// Adds a process running `workload` in `threads` threads (before the
  /// run); its anonymous memory is mapped with pages of `page_size` bytes.
  void add_process(std::shared_ptr<Program> workload, unsigned threads, std::uint64_t page_size,
                   std::int64_t nice = 0);

  std::uint64_t entry_point(unsigned index) override;
  void interrupt(cpu::Core& cpu, std::uint8_t vector) override;
  void exception(cpu::Core& cpu, std::uint8_t vector, std::uint32_t error_code) override;

  std::uint64_t sys_mmap(Thread& t, std::uint64_t bytes);
  bool sys_mmap_fixed(Thread& t, std::uint64_t start, std::uint64_t bytes, bool exec);
  std::uint64_t sys_mmap_alias(Thread& t, std::uint64_t src, std::uint64_t bytes, bool writable, bool exec);
  void sys_put_user(Thread& t, std::uint64_t va, std::uint64_t value);
  void sys_kernel_bug(Thread& t, Thread::KernelBug kind, std::uint64_t va);
  bool sys_munmap(Thread& t, std::uint64_t start);
  bool sys_fork_wait(Thread& t, const std::function<void(Thread&)>& child);
  std::uint64_t sys_sleep(Thread& t, std::uint64_t ps);
  void sys_sleep_until(Thread& t, std::uint64_t tsc);
  std::uint64_t tsc_hz() const { return m_tsc_hz; }
  const std::string& panic_message() const { return m_panic; }

  /// Memory overcommit (before the run; docs/memory.md): the VM has a
  /// virtio-blk disk the kernel swaps to, and a virtio-balloon device whose
  /// driver runs in a kernel thread.
  /// With several hosts: the host the VM was created on, whose process of
  /// the event trace holds the kernel's thread rows (before the run).
  void set_trace_host(std::string host) { m_trace_host = std::move(host); }
  void set_swap_disk();
  void set_balloon();
  /// The VM is encrypted (SEV-like, docs/protection.md "S11"; before the
  /// run): the kernel, built with memory-encryption support, finds the
  /// C-bit at boot (CPUID 8000_001FH, SEV_STATUS) and sets it in every
  /// mapping but the page it shares with the hypervisor.
  void set_memory_encryption() { m_want_sev = true; }
  /// The C-bit the kernel sets (0: not encrypted).
  std::uint64_t c_bit() const { return m_c_bit; }
  /// The balloon kernel thread's body (guest/balloon.cc).
  void balloon_main(Thread& t);

  /// Gives the VM a network driver (before the run); it is probed at boot.
  void set_net_driver(std::unique_ptr<NetDriver> driver);
  NetDriver* net_driver() const { return m_net.get(); }
  bool net_up() const { return m_net_up; }
  bool sys_net_send(Thread& t, std::uint64_t va, std::uint32_t len, bool flush);
  void sys_net_flush(Thread& t);
  std::uint32_t sys_net_recv(Thread& t, std::uint64_t va, std::uint32_t max);
  bool sys_net_raw(Thread& t, bool send, std::uint64_t addr, std::uint32_t len);
  std::uint32_t sys_net_status(Thread& t, bool clear_errors);
  std::uint64_t sys_net_claim(Thread& t);
  std::uint64_t sys_dma_alloc(Thread& t, std::uint64_t bytes);
  std::uint64_t sys_virt_to_phys(Thread& t, std::uint64_t va);
  bool sys_perf_open(Thread& t, std::uint64_t event, std::uint64_t sample_period);
  void sys_perf_close(Thread& t);
  /// The overflow interrupt of a sampling PMC0 (guest/perf.cc).
  void perf_interrupt(cpu::Core& c);
  static constexpr std::uint8_t kPmiVector = 0xEE;  // the guest's LVT performance-counter vector
  std::uint64_t m_perf_period = 0;
  // NetEnv.
  std::uint64_t net_alloc_page(cpu::Core& c) override;
  std::uint64_t net_alloc_contiguous(cpu::Core& c, std::uint64_t pages) override;
  std::uint64_t net_alloc_shared_page(cpu::Core& c) override;
  bool net_bounce() const override { return m_c_bit != 0; }
  std::uint64_t net_phys_to_virt(std::uint64_t gpa) const override { return kDirectMap + gpa; }
  std::uint64_t net_map_io(cpu::Core& c, std::uint64_t gpa, std::uint64_t bytes) override;
  void net_charge(cpu::Core& c, std::uint64_t instructions) override;
  /// Kernel virtual addresses of device mappings (Linux's vmalloc/ioremap area).
  static constexpr std::uint64_t kIoMap = 0xFFFFC90000000000ull;

  // Guest-virtual layout (Linux x86-64 conventions).
  static constexpr std::uint64_t kDirectMap = 0xFFFF888000000000ull;  // page_offset_base
  static constexpr std::uint64_t kKernelText = 0xFFFFFFFF81000000ull; // __START_KERNEL_map + 16 MiB
  static constexpr std::uint64_t kUserBase = 0x0000000010000000ull;
  static constexpr std::uint64_t kUserTop = 0x00007FFFFFFFF000ull;
  // Guest-physical layout.
  static constexpr std::uint64_t kImageBase = 0x100000;
  static constexpr std::uint64_t kImageSize = 256 * 1024;
  static constexpr std::uint64_t kPoolBase = 0x400000;
  static constexpr std::uint8_t kTimerVector = models::Lapic::kDefaultTimerVector;
  static constexpr std::uint8_t kWakeVector = 0xFB;  // Linux's CALL_FUNCTION_VECTOR region
  static constexpr std::uint8_t kFlushVector = 0xFC;  // TLB shootdown
  /// Smallest VM memory the kernel boots in.
  static std::uint64_t min_memory() { return 16ull << 20; }

 private:
  struct Vcpu {
    unsigned index = 0;
    std::unique_ptr<sim::Fiber> idle;
    std::vector<Thread*> runq;  // waiting threads, by virtual runtime (ties: first queued first)
    std::vector<Thread*> sleepers;
    Thread* current = nullptr;  // nullptr: idle
    std::uint64_t queued_load = 0;   // weights of the waiting threads
    std::uint64_t min_vruntime = 0;  // never decreases
    std::uint64_t tick_at = 0;   // next tick (0: tick stopped)
    std::uint64_t armed_at = 0;  // what IA32_TSC_DEADLINE holds (0: disarmed)
    std::uint64_t next_balance = 0;  // TSC of the next periodic balancing
    std::uint64_t steal_read_ns = 0;  // the record's value at the last read (rq->prev_steal_time)
    stats::Counter* steal_seen = nullptr;  // steal time the guest accounted, ns
    // Scratch of this vCPU's scheduler paths (other vCPUs run in between).
    std::vector<std::uint8_t> preempted;  // what the others' records said
    std::vector<Thread*> woken;           // sleepers the tick wakes
    // Under kernel.sched.pv: the share of recent time stolen from this vCPU
    // (of 1024), averaged at its ticks, and the capacity left (1024 - it).
    std::uint64_t steal_avg = 0;
    std::uint64_t capacity = 1024;
    std::uint64_t cap_tsc = 0, cap_steal_ns = 0;  // at the last sample
    // Event trace: this vCPU's "threads" row, and since when its current
    // thread (or idle) has run.
    int trace_track = -1;
    std::uint64_t trace_since_ps = 0;
    std::uint64_t load() const { return queued_load + (current ? current->m_weight : 0); }
    std::uint64_t nr_running() const { return runq.size() + (current ? 1 : 0); }
  };
  /// Guest-physical address of vCPU i's steal-time record (in the kernel image).
  static std::uint64_t steal_record(unsigned i) { return kImageBase + 0x4000 + 64ull * i; }
  static constexpr std::uint64_t steal_page() { return kImageBase + 0x4000; }
  /// What the bootstrap processor writes to release the others: 1, or in
  /// a kernel built for encryption a magic value (unwritten memory of an
  /// encrypted VM reads as garbage, never as zero).
  static constexpr std::uint64_t kApGo = 0x474F2121;  // "!!OG"
  std::uint64_t ap_go() const { return m_want_sev ? kApGo : 1; }
  void sev_probe(cpu::Core& c);
  /// Guest-virtual address of vCPU i's run queue (struct rq: two lines in the
  /// kernel image: lock, nr_running, load, min_vruntime, curr, prev_steal).
  static std::uint64_t rq_va(unsigned i) { return kDirectMap + kImageBase + 0x8000 + 128ull * i; }
  /// Guest-virtual address of a thread's scheduling entity (one line).
  static std::uint64_t se_va(const Thread& t) { return kDirectMap + kImageBase + 0x10000 + 64ull * t.m_slot; }
  static constexpr std::uint32_t kSeSlots = 3072;  // 192 KiB of the image; slots are reused modulo this

  // The scheduler (guest/sched.cc).
  /// Charges the running thread's run time up to now.
  void update_curr(cpu::Core& c, Vcpu& v);
  /// Reads the vCPU's own steal-time record and accounts what is new (ns).
  std::uint64_t read_steal(cpu::Core& c, Vcpu& v);
  /// Updates the vCPU's steal-reduced capacity (kernel.sched.pv) at a tick.
  void update_capacity(cpu::Core& c, Vcpu& v, std::uint64_t now);
  /// Load as placement and balancing compare it: under kernel.sched.pv
  /// scaled up by 1024 / capacity (a vCPU losing half its time to steal
  /// counts double).
  std::uint64_t eff_load(const Vcpu& v, std::uint64_t extra = 0) const;
  /// Whether vCPU j's steal-time record has `preempted` set (a load of it).
  bool vcpu_preempted(cpu::Core& c, unsigned j);
  void enqueue(cpu::Core& c, Vcpu& v, Thread& t);
  Thread* dequeue_first(cpu::Core& c, Vcpu& v);
  void update_min_vruntime(Vcpu& v);
  /// Makes a sleeping (or new) thread runnable on the vCPU chosen for it;
  /// runs on `self`, the waker's vCPU.
  void scan_vcpus(cpu::Core& c, Vcpu& self, bool pv);
  void wake_thread(cpu::Core& c, Vcpu& self, Thread& t);
  /// Whether `t` waking should preempt what v runs.
  bool should_preempt(const Vcpu& v, const Thread& t) const;
  /// Periodic (idle=false) or newly-idle load balancing run by vCPU `self`.
  void balance(cpu::Core& c, Vcpu& self, bool idle);
  void move_thread(cpu::Core& c, Vcpu& from, Vcpu& to, std::size_t pos);
  void rq_lock(cpu::Core& c, const Vcpu& v) { c.xchg(rq_va(v.index), 1); }
  void rq_unlock(cpu::Core& c, const Vcpu& v) { c.store(rq_va(v.index), 0); }
  void store_rq(cpu::Core& c, const Vcpu& v);

  void vcpu_main(Vcpu& v);
  void boot(cpu::Core& c);
  void thread_main(Thread& t);
  void child_main(Thread& t);
  /// Image offset of the page-table lock word (a line of its own).
  static constexpr std::uint64_t kPageTableLock = 0x7C00;
  /// Frees a finished child process: frames (by reference count), its
  /// page-table pages and its thread.
  void reap(cpu::Core& c, Process& child);
  bool cow_fault(cpu::Core& c, Process& p, std::uint64_t addr);
  void schedule(cpu::Core& c, Vcpu& v, bool requeue_current);
  void trace_switch(cpu::Core& c, Vcpu& v, const Thread* prev);
  /// Programs the vCPU's timer for the earlier of the next tick and the
  /// first sleeper's wake-up; `restart_tick` starts a new tick period if
  /// the vCPU has work, or stops the tick if it has none.
  void program_timer(cpu::Core& c, Vcpu& v, bool restart_tick);
  void page_fault(cpu::Core& c, std::uint32_t error_code);
  /// Kills the running thread with a reason, formatted here: the thread's
  /// fiber never resumes, so nothing on its stack is destroyed, and the
  /// reason must not be a heap string in the caller's frame.
  template <class... A>
  [[noreturn]] void kill_current(cpu::Core& c, fmt::format_string<A...> f, A&&... a) {
    m_kill_reason = fmt::format(f, std::forward<A>(a)...);
    kill_current_thread(c);
  }
  [[noreturn]] void kill_current_thread(cpu::Core& c);
  std::string m_kill_reason;  // of the thread kill_current is killing
  [[noreturn]] void panic(cpu::Core& c, const std::string& why);
  Vcpu& this_vcpu();
  void charge(cpu::Core& c, std::uint64_t instructions, std::uint64_t code_offset);
  /// Brings frames_free up to date after frames were handed out or freed
  /// (simulator observation: no cost).
  void count_free_frames();
  // Networking (guest/net.cc).
  void net_probe(cpu::Core& c);
  /// The network lock (a spinlock word in the kernel image), taken with
  /// interrupts off around every driver call.
  static constexpr std::uint64_t kNetLock = 0x7C40;
  void net_lock(cpu::Core& c);
  void net_unlock(cpu::Core& c);
  void net_interrupt(cpu::Core& c);
  /// Blocks the current thread on `queue` (interrupts off); it returns
  /// once the NIC's interrupt handler woke it.
  void net_wait(cpu::Core& c, Thread& t, std::vector<Thread*>& queue);

  // Swap (guest/swap.cc).
  struct SwapState;
  struct MemStats;
  void swap_probe(cpu::Core& c);
  /// Writes out up to memory.swap_cluster pages chosen by a clock over the
  /// LRU (second chance by the accessed bit); blocks the calling thread on
  /// the I/O. False if nothing could be reclaimed.
  bool reclaim(cpu::Core& c);
  /// A fault on a not-present PTE holding a swap entry (the page-table lock
  /// held; released here).
  void swap_in(cpu::Core& c, Thread& t, Process& p, std::uint64_t addr, std::uint64_t entry, std::uint64_t pte, bool exec);
  /// Waits (blocked on vCPU 0, polling elsewhere) until every request in `ids` is done.
  void blk_wait(cpu::Core& c, Thread* t, const std::vector<int>& ids);
  void blk_interrupt(cpu::Core& c);
  void blk_lock(cpu::Core& c);
  void blk_unlock(cpu::Core& c);
  /// Releases a swap entry's slot (munmap, process exit, swap-in).
  void swap_free_entry(std::uint64_t pte);
  /// Remembers a freshly mapped anonymous 4 KiB page for reclaim.
  void lru_add(Process& p, std::uint64_t va);
  /// When no frame is free: reclaim, then deflate the balloon (deflate on
  /// OOM); true if the fault should be retried.
  bool out_of_memory(cpu::Core& c);
  void publish_mem_stats();
  // The balloon driver (guest/balloon.cc).
  struct BalloonState;
  void balloon_probe(cpu::Core& c);
  /// One look at the target: inflate or deflate toward it, report statistics.
  void balloon_work(cpu::Core& c);
  /// Sends `pfns` on the inflate or deflate queue and waits for the device.
  void balloon_tell(cpu::Core& c, unsigned queue, const std::vector<std::uint64_t>& frames);
  /// Deflate on OOM: gives up to 256 ballooned pages back; how many.
  std::uint64_t balloon_oom(cpu::Core& c);
  /// A free 4 KiB frame without clearing it (for the balloon and swap-in);
  /// 0 if none.
  std::uint64_t take_frame(cpu::Core& c);

  std::uint64_t alloc_table(cpu::Core& c);   // from the page-table pool, cleared
  /// A cleared data frame of `size` bytes (4 KiB from the bottom of free
  /// memory, 2 MiB and 1 GiB from the top, aligned), mapped in the direct
  /// map; 0 when memory is exhausted.
  std::uint64_t alloc_frame(cpu::Core& c, std::uint64_t size = 4096);
  /// The CR3 value that selects a process's address space.
  std::uint64_t cr3_of(const Process& p) const;

  KernelParams m_p;
  std::string m_vm;
  std::string m_trace_host;  // set_trace_host
  std::uint64_t m_memory;
  std::uint64_t m_tsc_hz, m_tick_cycles, m_slice_cycles;
  std::uint64_t m_seed;
  RunControl* m_control;
  stats::Group m_stats;
  stats::Counter m_page_faults{&m_stats, "page_faults", "faults", "page faults the kernel handled"};
  stats::Counter m_cow_faults{&m_stats, "cow_faults", "faults", "of those, copy-on-write faults resolved"};
  /// kernel.protection.*: only with kernel.smep or kernel.smap on.
  stats::Counter* m_smep_oopses = nullptr;
  stats::Counter* m_smap_oopses = nullptr;
  stats::Counter* m_uaccesses = nullptr;
  /// CR4 as the kernel sets it at boot on every vCPU.
  std::uint64_t boot_cr4() const;
  stats::Gauge m_frames_free{&m_stats, "frames_free", "frames",
                             "4 KiB frames of guest memory the kernel can still give out (its free lists and the "
                             "memory it never handed out), at the end"};
  SchedStats m_sched_stats;
  std::uint64_t m_gran_cycles, m_credit_cycles, m_balance_cycles;
  /// Every page-table access of the kernel (guest/page_table.h).
  PageTables m_pt;
  std::uint32_t m_next_slot = 0;
  std::vector<std::unique_ptr<Vcpu>> m_vcpus;
  std::vector<std::unique_ptr<Process>> m_processes;
  std::vector<std::unique_ptr<Thread>> m_threads;
  std::vector<std::pair<Process*, unsigned>> m_pending_processes;
  std::uint64_t m_kernel_pml4 = 0;
  std::uint64_t m_pool_next = 0, m_pool_end = 0;
  std::uint64_t m_frame_next = 0;   // 4 KiB frames grow up from here
  std::uint64_t m_large_low = 0;    // large frames grow down to here
  std::vector<std::uint64_t> m_free_frames[3];  // freed 4 KiB, 2 MiB, 1 GiB frames
  std::vector<std::uint64_t> m_free_tables;     // freed page-table pages
  std::unordered_map<std::uint64_t, std::uint32_t> m_frame_refs;  // frames shared by fork (count >= 2)
  std::vector<std::unique_ptr<Thread>> m_zombies;  // exited children whose stacks can go
  std::uint64_t m_next_pcid = 1;
  std::uint64_t m_boot_flag_gpa = 0;
  bool m_booted = false;
  std::string m_panic;
  unsigned m_next_vcpu = 0;
  std::unique_ptr<NetDriver> m_net;
  bool m_net_up = false;
  std::uint64_t m_io_next = kIoMap;
  std::unique_ptr<NetStats> m_net_stats;
  std::vector<Thread*> m_rx_waiters, m_tx_waiters;
  bool m_want_swap = false, m_want_balloon = false;
  bool m_want_sev = false;
  std::uint64_t m_c_bit = 0;
  std::unique_ptr<SwapState> m_swap;        // with a swap disk that probed
  std::unique_ptr<BalloonState> m_balloon;  // with a balloon device that probed
  std::unique_ptr<MemStats> m_mem_stats;    // with either
};

}  // namespace vmx::guest
