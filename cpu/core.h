// A processor core with VMX root and non-root operation.
//
// Simulated software (hypervisor, guest kernel, guest programs) runs on fibers
// and reaches the machine only through the operations below: the model's
// instruction set (docs/architecture.md, "The rule that makes the numbers honest").
// Each operation charges its cost to the core's local clock; interrupts and
// timer events are taken at operation boundaries. The SystemC thread of the
// core only synchronizes: it runs the current fiber until the fiber's local
// time is a quantum ahead of SystemC time, or until the core halts.
#pragma once

#include <systemc>

#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>

#include "cpu/vcpu_observer.h"
#include "cpu/vmcs.h"
#include "cpu/vmx.h"
#include "mmu/mmu.h"
#include "mmu/paging.h"
#include "mmu/walker.h"
#include "models/lapic.h"
#include "pmu/pmu.h"
#include "sim/events.h"
#include "sim/fiber.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::models {
class PhysMem;
class MemHierarchy;
class Rdt;
enum class AccessKind : std::uint8_t;
class IoBus;
class MmioBus;
class MemoryEncryption;
}  // namespace vmx::models

namespace vmx::cpu {

class Core;

namespace detail {
/// The core executing software on this host thread (Core::current): set
/// when a core switches to a software fiber. Defined here, constant-
/// initialized, so that reading it is one thread-local load.
inline thread_local Core* t_current = nullptr;
}  // namespace detail

/// What IDTR designates: the software that receives interrupts and
/// exceptions on this core in the current mode. Handlers run on the
/// interrupted fiber with interrupts disabled and CPL 0; returning from the
/// handler is IRET (the previous CPL and interrupt flag are restored).
class InterruptHandler {
 public:
  virtual ~InterruptHandler() = default;
  virtual void interrupt(Core& cpu, std::uint8_t vector) = 0;
  virtual void exception(Core& cpu, std::uint8_t vector, std::uint32_t error_code) = 0;
};

/// Thrown inside a software context that a VM entry resumed on another core
/// than the one whose operation it exited from, with that operation not
/// completed: the operation's entry point starts it over on the executing
/// core (cpu/core.cc). Never escapes an operation.
struct CoreMoved {};

/// Encodes a fiber or handler as the "address" software writes into RIP or
/// IDTR fields of the VMCS.
inline std::uint64_t code_address(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

/// General-purpose registers. They are not switched by VM entry or exit
/// (SDM Vol. 3C, 27.5): the hypervisor saves and restores the guest's.
struct Regs {
  enum : unsigned { rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15 };
  std::array<std::uint64_t, 16> r{};
  std::uint64_t& operator[](unsigned i) { return r[i]; }
  std::uint64_t operator[](unsigned i) const { return r[i]; }
};

/// Outcome of a VMX instruction (SDM Vol. 3C, 31.2).
enum class VmxStatus : std::uint8_t { Succeed, FailInvalid, FailValid };

/// What VMLAUNCH / VMRESUME return to the hypervisor: whether the entry
/// happened and, if so, the basic exit reason of the exit that ended it.
struct VmExit {
  /// The reason of an exit the core did not see: VMLAUNCH/VMRESUME executed
  /// in VMX non-root operation succeeded in the eyes of the software that
  /// executed it (its VMM emulated the entry, SDM Vol. 3C, 31.3), and that
  /// software resumed at its host RIP after an exit only its VMM knows of.
  /// The software reads the basic exit reason from its current VMCS with
  /// VMREAD, as a real VMM does at its host RIP.
  static constexpr std::uint16_t kReasonInVmcs = 0xFFFF;
  VmxStatus status = VmxStatus::Succeed;
  std::uint16_t reason = 0;
  bool entered() const { return status == VmxStatus::Succeed; }
};

struct CpuidResult {
  std::uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

/// Largest store buffer the model keeps (entries).
inline constexpr std::uint32_t kMaxStoreBuffer = 128;
/// Largest number of outstanding load misses the model keeps.
inline constexpr std::uint32_t kMaxMshrs = 64;

/// Core timing parameters. Latencies are in core cycles.
struct CoreParams {
  double cpi;
  std::uint32_t cpuid_latency, msr_latency, cr_latency, io_latency, invlpg_latency, rdtsc_latency, rdpmc_latency,
      pause_latency, exception_latency;
  std::uint32_t vm_exit_latency, vm_entry_latency, vmread_latency, vmwrite_latency, vmptrld_latency,
      vmxon_latency, invept_latency;
  std::uint32_t store_buffer, fill_buffers, mshrs, rob, page_walkers;
  mmu::DtlbParams dtlb;
  mmu::Dtlb2mParams dtlb_2m;
  mmu::Dtlb1gParams dtlb_1g;
  mmu::ItlbParams itlb;
  mmu::Itlb2mParams itlb_2m;
  mmu::StlbParams stlb;
  mmu::Stlb1gParams stlb_1g;
  mmu::PscParamsAll psc;
  mmu::NestedTlbParams nested_tlb;

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(cpi, "cpi", "1.0", Spec(Unit::Ratio).at_least(0.1).at_most(1000),
            "Cycles per instruction charged by compute operations (a sustained IPC of 1, "
            "a common figure for server code on an out-of-order core; an assumption).");
    v.param(cpuid_latency, "cpuid_latency", "100", Spec(Unit::Cycles),
            "Native CPUID (Agner Fog, Instruction Tables: 100-250 cycles on Intel cores).");
    v.param(msr_latency, "msr_latency", "60", Spec(Unit::Cycles),
            "Native RDMSR/WRMSR of an architectural MSR (Agner Fog, Instruction Tables: tens to "
            "over a hundred cycles).");
    v.param(cr_latency, "cr_latency", "20", Spec(Unit::Cycles), "MOV to/from a control register (assumption).");
    v.param(io_latency, "io_latency", "100", Spec(Unit::Cycles),
            "IN/OUT instruction overhead before the device's own latency (assumption).");
    v.param(invlpg_latency, "invlpg_latency", "50", Spec(Unit::Cycles), "INVLPG (assumption).");
    v.param(rdtsc_latency, "rdtsc_latency", "25", Spec(Unit::Cycles),
            "RDTSC (Agner Fog, Instruction Tables: about 25 cycles on Skylake).");
    v.param(rdpmc_latency, "rdpmc_latency", "40", Spec(Unit::Cycles),
            "RDPMC (Agner Fog, Instruction Tables: a few tens of cycles on Intel cores; assumption within that).");
    v.param(pause_latency, "pause_latency", "140", Spec(Unit::Cycles),
            "PAUSE (Intel Optimization Manual: about 140 cycles from Skylake on).");
    v.param(exception_latency, "exception_latency", "100", Spec(Unit::Cycles),
            "Delivering an exception or interrupt through the IDT and returning with IRET (assumption).");
    v.param(vm_exit_latency, "vm_exit_latency", "500", Spec(Unit::Cycles),
            "Hardware part of a VM exit: saving guest state, loading host state. Agesen et al., "
            "'Software Techniques for Avoiding Hardware Virtualization Exits', USENIX ATC 2012, "
            "report exit+entry round trips of several hundred cycles on recent Intel cores.");
    v.param(vm_entry_latency, "vm_entry_latency", "400", Spec(Unit::Cycles),
            "Hardware part of VMLAUNCH/VMRESUME (see vm_exit_latency).");
    v.param(vmread_latency, "vmread_latency", "10", Spec(Unit::Cycles), "VMREAD of a cached VMCS (assumption).");
    v.param(vmwrite_latency, "vmwrite_latency", "10", Spec(Unit::Cycles), "VMWRITE of a cached VMCS (assumption).");
    v.param(vmptrld_latency, "vmptrld_latency", "200", Spec(Unit::Cycles),
            "VMPTRLD, including loading the VMCS into the processor (assumption).");
    v.param(vmxon_latency, "vmxon_latency", "1000", Spec(Unit::Cycles), "VMXON (assumption).");
    v.param(invept_latency, "invept_latency", "200", Spec(Unit::Cycles), "INVEPT / INVVPID (assumption).");
    v.param(store_buffer, "store_buffer", "0", Spec().at_most(kMaxStoreBuffer),
            "Store-buffer entries (x86-TSO, docs/model.md 'Store buffer'); 0 turns it off: every store then "
            "pays its cache latency as it retires. Skylake has 56 (Intel Optimization Reference Manual, "
            "Skylake microarchitecture: 56-entry store buffer). Default 0 until the figures docs/ and labs/ "
            "quote are re-measured with it.");
    v.param(fill_buffers, "fill_buffers", "10", Spec().at_least(1).at_most(64),
            "L1D fill buffers: misses (here: store-buffer drains) that can be outstanding at once. Default 10 "
            "(Intel Optimization Reference Manual: 10 line fill buffers per core since Sandy Bridge; "
            "assumption for later cores).");
    v.param(mshrs, "mshrs", "0", Spec().at_most(kMaxMshrs),
            "Outstanding load misses (L1D miss-status holding registers / fill buffers) that overlap when "
            "loads are independent (Core::load_independent; docs/model.md 'Memory-level parallelism'); 0 "
            "turns overlap off (every load blocks until its data returns). Skylake: 10-12 L1D fill "
            "buffers (Intel Optimization Reference Manual). Default 0 until the figures docs/ and labs/ "
            "quote are re-measured with it.");
    v.param(rob, "rob", "224", Spec(Unit::Instructions).at_least(1).at_most(4096),
            "Reorder-buffer entries: how many instructions the core may retire past the oldest outstanding "
            "load miss before it stalls for it. Default: 224, Skylake (Intel Optimization Reference Manual).");
    v.param(page_walkers, "page_walkers", "0", Spec().at_most(mmu::kMaxPageWalkers),
            "Page walkers (page-miss handlers): walks in progress at once. With mshrs > 0 an independent "
            "load's walk overlaps the core's other work and other walks, and only the load waits for it "
            "(docs/model.md 'Concurrent page walkers'); 0 charges every walk in line to the core, as one "
            "blocking walker. Broadwell and Skylake handle two walks at once (Intel Optimization Reference "
            "Manual, Broadwell microarchitecture: a second page-miss handler; Skylake's "
            "DTLB_LOAD_MISSES.WALK_PENDING counts the walks in progress each cycle). Default 0 until the "
            "figures docs/ and labs/ quote are re-measured with it.");
    v.section(dtlb, "dtlb", "First-level data TLB for 4 KiB pages.");
    v.section(dtlb_2m, "dtlb_2m", "First-level data TLB for 2 MiB pages.");
    v.section(dtlb_1g, "dtlb_1g", "First-level data TLB for 1 GiB pages.");
    v.section(itlb, "itlb", "First-level instruction TLB for 4 KiB pages.");
    v.section(itlb_2m, "itlb_2m", "First-level instruction TLB for 2 MiB pages (and the 2 MiB pieces of 1 GiB pages).");
    v.section(stlb, "stlb", "Second-level unified TLB; one array holds 4 KiB and 2 MiB translations.");
    v.section(stlb_1g, "stlb_1g", "Second-level TLB for 1 GiB pages, looked up in parallel with stlb.");
    v.section(psc, "psc", "Paging-structure caches of the page walker, both dimensions (docs/mmu.md).");
    v.section(nested_tlb, "nested_tlb",
              "Guest-physical to host-physical translations used by 2D walks (docs/mmu.md).");
  }
};

/// What the core needs from the platform around it.
struct CoreWiring {
  models::PhysMem* mem = nullptr;
  models::MemHierarchy* caches = nullptr;
  models::IoBus* io = nullptr;
  /// Devices' MMIO ranges, looked up only for physical addresses outside
  /// RAM (optional: without it such an access is a simulator error).
  models::MmioBus* mmio = nullptr;
  /// The memory controller's encryption engine (models/mem_crypt.h); null
  /// when the platform has none: then no VM entry may select a key ID.
  models::MemoryEncryption* crypt = nullptr;
  VmcsStore* vmcs_store = nullptr;
  std::uint64_t frequency_hz = 0;
  std::uint64_t quantum_cycles = 0;
  /// Sends a fixed interrupt to the core with this APIC ID (IPI via the ICR).
  std::function<void(std::uint32_t dest, std::uint8_t vector)> send_ipi;
  /// SMT: CPI multiplier while the sibling thread executes (set_sibling).
  double smt_contention = 1.0;
  /// The package's cache and bandwidth allocation (models/rdt.h); null: no
  /// RDT, its MSRs are #GP and CPUID does not report it.
  models::Rdt* rdt = nullptr;
};

class Core : public sc_core::sc_module, private mmu::TableMemory, private pmu::Host {
 public:
  SC_HAS_PROCESS(Core);
  Core(sc_core::sc_module_name name, unsigned id, const CoreParams& params, const CoreWiring& wiring,
       stats::Group* stats_parent);
  ~Core() override;

  unsigned id() const { return m_id; }
  /// The core whose software is executing now (software that can move
  /// between cores, such as a guest thread on a vCPU, asks each time).
  /// Inline: every operation of a guest program asks.
  static Core& current() {
    if (!detail::t_current) [[unlikely]]
      no_current();
    return *detail::t_current;
  }
  /// The fiber that runs when the core comes out of reset.
  void set_reset_fiber(sim::Fiber* f) { m_reset_fiber = f; }
  /// SMT: the other hardware thread of the same physical core. While it
  /// executes (has software and is not halted), compute operations on this
  /// thread cost wiring.smt_contention times the CPI. Checked at slow
  /// boundaries (at least once per quantum), not per operation.
  void set_sibling(Core* sibling) { m_sibling = sibling; }
  /// Fast-forward (docs/model.md, "Fast-forward"): in functional mode every
  /// operation keeps its architectural effect (memory contents, translation
  /// and its faults, exits, interrupts) but memory accesses and page walks
  /// skip the cache hierarchy: they cost no cycles beyond the instruction's
  /// CPI and leave the caches' contents and statistics untouched. The TLBs
  /// and paging-structure caches are filled on their misses (they are part
  /// of translation), so they are warm when detailed timing resumes; in
  /// front of them a functional translation cache (ftlb_lookup) serves
  /// repeated translations without the TLB model.
  void set_functional(bool on);
  bool functional() const { return m_functional; }
  /// Hands the listeners the instructions retired since the last report
  /// (see retire and m_retire_batch); the experiment calls it before it
  /// reads or resets statistics.
  void flush_retired() {
    if (m_retired_pending) {
      m_events.retired({m_retired_pending, true});
      m_retired_pending = 0;
    }
  }

  // ---- Architectural operations ------------------------------------------
  /// `instructions` instructions at the core's CPI; interrupts, timers and
  /// the quantum's end are taken between them (docs/model.md, "Time").
  void compute(std::uint64_t instructions);
  std::uint64_t load(std::uint64_t va, unsigned size = 8);
  /// A load whose address does not depend on an outstanding load's data
  /// (software declares it; the model has no dataflow of its own): with
  /// platform.cpu.mshrs > 0 its miss overlaps with other independent misses
  /// instead of blocking the core (docs/model.md, "Memory-level
  /// parallelism"). Architecturally identical to load().
  std::uint64_t load_independent(std::uint64_t va, unsigned size = 8);
  void store(std::uint64_t va, std::uint64_t value, unsigned size = 8);
  /// XCHG with memory: atomically swaps `value` with the 8 bytes at va and
  /// returns what was there (implicitly locked, SDM Vol. 3A, 9.1.2.1). No
  /// other core's operation can come between its read and its write.
  std::uint64_t xchg(std::uint64_t va, std::uint64_t value);
  /// LOCK OR of `bits` into the 8 bytes at va (as LOCK BTS, SDM Vol. 3A,
  /// 9.1.2.2); returns the previous value. Atomic like xchg.
  std::uint64_t lock_or(std::uint64_t va, std::uint64_t bits);
  /// LOCK XADD with memory: atomically adds `addend` to the 8 bytes at va
  /// (modulo 2^64) and returns what was there (SDM Vol. 2D, XADD; the LOCK
  /// prefix, Vol. 3A, 9.1.2.2). Atomic like xchg; the primitive of ticket
  /// locks (hypervisor/spinlock.h).
  std::uint64_t lock_xadd(std::uint64_t va, std::uint64_t addend);
  /// PAUSE: a spin-wait hint; costs pause_latency cycles.
  void pause();
  /// MFENCE (SDM Vol. 2B; Vol. 3A, 8.2.5): waits until every buffered store
  /// has drained.
  void mfence();
  /// Instruction fetch of `bytes` of code at `va` (the code footprint of a
  /// software path); the instructions themselves are charged by compute.
  void fetch(std::uint64_t va, std::uint64_t bytes);
  /// One instruction of `bytes` at `va`: fetch(va, bytes) then compute(1),
  /// in one call (a trace replay's instruction records).
  void fetch_instruction(std::uint64_t va, std::uint64_t bytes);

  // Fast-forward's direct paths (set_functional): a load, store or compute
  // that the functional translation cache serves from the host frame while
  // this core executes and no boundary is due, done in line by the caller
  // (guest::Thread) before it calls the operation; load, store and compute
  // take the same paths first. What the full path does for such an access
  // (boundary() does nothing; retire, the statistic, the bytes), without
  // its calls. False: nothing was done, the operation itself must run.
  [[gnu::always_inline]] bool ff_load(std::uint64_t va, unsigned size, std::uint64_t& value) {
    if (!ff_direct()) [[likely]]
      return false;
    const std::uint8_t* h = ftlb_host(va, size, mmu::AccessType::Read);
    if (!h) return false;
    retire(1);
    ++m_stats.loads;
    value = 0;
    if (size == 8) std::memcpy(&value, h, 8);  // little-endian host (ftlb_frame)
    else std::memcpy(&value, h, size);
    return true;
  }
  [[gnu::always_inline]] bool ff_store(std::uint64_t va, std::uint64_t value, unsigned size) {
    if (!ff_direct()) [[likely]]
      return false;
    std::uint8_t* h = ftlb_host(va, size, mmu::AccessType::Write);
    if (!h) return false;
    retire(1);
    ++m_stats.stores;
    if (size == 8) std::memcpy(h, &value, 8);
    else std::memcpy(h, &value, size);
    return true;
  }
  [[gnu::always_inline]] bool ff_compute(std::uint64_t instructions) {
    if (!ff_direct()) [[likely]]
      return false;
    if (instructions > 1 && instructions_until(m_next_event) < instructions) return false;  // a boundary inside
    retire(instructions);
    return true;
  }
  /// REP STOSB: sets `bytes` bytes at va to `value`. Interruptible between
  /// pages; each cache line written is one write access.
  void rep_stos(std::uint64_t va, std::uint8_t value, std::uint64_t bytes);
  /// REP MOVSB: copies `bytes` bytes from src to dst (non-overlapping), one
  /// read and one write access per line.
  void rep_movs(std::uint64_t dst, std::uint64_t src, std::uint64_t bytes);
  std::uint64_t read_cr(unsigned cr);
  void write_cr(unsigned cr, std::uint64_t value);
  std::uint64_t rdmsr(std::uint32_t msr);
  void wrmsr(std::uint32_t msr, std::uint64_t value);
  CpuidResult cpuid(std::uint32_t leaf, std::uint32_t subleaf = 0);
  std::uint32_t in(std::uint16_t port, unsigned size = 1);
  void out(std::uint16_t port, std::uint32_t value, unsigned size = 1);
  void hlt();
  void sti();
  void cli();
  bool interrupts_enabled() const;
  /// STAC / CLAC (SDM Vol. 2, STAC, CLAC): set or clear RFLAGS.AC, which
  /// lets explicit supervisor accesses reach user-mode pages under CR4.SMAP
  /// (Vol. 3A, 4.6.1). #UD at CPL > 0 (SMAP is always supported: CPUID
  /// 07H:EBX[20]). They never exit in VMX non-root operation.
  void stac();
  void clac();
  bool alignment_check_flag() const { return m_ac; }
  /// RDPKRU / WRPKRU (Vol. 2; Vol. 3A, 4.6.2) with ECX = EDX = 0: #UD when
  /// CR4.PKE = 0. PKRU is not switched by VM entries and exits; software
  /// that shares a core between contexts saves and restores it.
  std::uint32_t rdpkru();
  void wrpkru(std::uint32_t value);
  /// VMCALL: number and arguments in RAX, RBX, RCX, RDX; result in RAX.
  std::uint64_t vmcall(std::uint64_t nr, std::uint64_t a0 = 0, std::uint64_t a1 = 0, std::uint64_t a2 = 0);
  void invlpg(std::uint64_t va);
  /// INVPCID (SDM Vol. 2, INVPCID; Vol. 3A, 4.10.4.1): type 0 individual
  /// address, 1 single context, 2 all contexts with globals, 3 all contexts
  /// except globals; `pcid` and `la` form the descriptor. #GP at CPL > 0 or
  /// for a bad type or descriptor. In VMX non-root operation #UD unless
  /// "enable INVPCID" is set, then a VM exit under "INVLPG exiting".
  void invpcid(unsigned type, std::uint16_t pcid, std::uint64_t la = 0);
  std::uint64_t rdtsc();
  /// RDPMC with ECX = `ecx` (SDM Vol. 2B, RDPMC): bit 30 selects the fixed
  /// counters. #GP(0) at CPL > 0 unless CR4.PCE, or for a counter that does
  /// not exist; in VMX non-root operation a VM exit under "RDPMC exiting".
  std::uint64_t rdpmc(std::uint32_t ecx);
  /// LIDT: where interrupts and exceptions go in the current mode.
  void lidt(InterruptHandler* handler);
  /// Switching the stack pointer to another software context (guest threads,
  /// the hypervisor's per-vCPU contexts). Free: software charges its own cost.
  void switch_context(sim::Fiber& to);
  /// Leaves the kernel for user mode (SYSRET/IRET to CPL 3) and back (the
  /// entry of a system call). Costs are charged by software.
  void set_user_mode(bool user);
  std::uint8_t cpl() const;

  // VMX instructions (SDM Vol. 3C, ch. 31). Each stands for one
  // instruction form (docs/model.md, "VMX instructions in VMX non-root
  // operation"). A memory operand's value is passed as an argument and `m`
  // says where software holds it (the address form): in root operation the
  // model uses the value (its load is part of the instruction's latency);
  // in non-root operation the instruction exits, reporting the form in the
  // exit qualification (the displacement) and the VM-exit instruction-
  // information field (SDM Vol. 3C, 28.2.1, 28.2.5), and the VMM reads the
  // operand from guest memory where the form points. Register operands are
  // placed in the named registers before such an exit.
  /// VMXON m64 (F3 0F C7 /6).
  VmxStatus vmxon(std::uint64_t region_pa, const insn::MemOperand& m = {});
  /// VMPTRLD m64 (0F C7 /6).
  VmxStatus vmptrld(std::uint64_t vmcs_pa, const insn::MemOperand& m = {});
  /// VMPTRST m64 (0F C7 /7): stores the current-VMCS pointer at the operand.
  VmxStatus vmptrst(const insn::MemOperand& m = {});
  /// VMCLEAR m64 (66 0F C7 /6).
  VmxStatus vmclear(std::uint64_t vmcs_pa, const insn::MemOperand& m = {});
  /// VMREAD r64 dst, r64 src (0F 78 /r): the field encoding in register
  /// `src`, the value to register `dst`.
  VmxStatus vmread(std::uint32_t encoding, std::uint64_t& value, unsigned dst = Regs::rax, unsigned src = Regs::rdx);
  /// VMWRITE r64 dst, r64 src (0F 79 /r): the field encoding in register
  /// `dst`, the value in register `src`.
  VmxStatus vmwrite(std::uint32_t encoding, std::uint64_t value, unsigned dst = Regs::rdx, unsigned src = Regs::rax);
  /// VMLAUNCH (0F 01 C2) and VMRESUME (0F 01 C3).
  VmExit vmlaunch();
  VmExit vmresume();
  /// VMXOFF (0F 01 C4).
  VmxStatus vmxoff();
  /// INVEPT r64, m128 (66 0F 38 80 /r): the type in register `type_reg`,
  /// the descriptor (EPTP in bytes 7:0) at `m`.
  VmxStatus invept(unsigned type, std::uint64_t eptp, unsigned type_reg = Regs::rcx, const insn::MemOperand& m = {});
  /// INVVPID r64, m128 (66 0F 38 81 /r): the type in register `type_reg`,
  /// the descriptor (VPID in bits 15:0, linear address in bytes 15:8) at `m`.
  VmxStatus invvpid(unsigned type, std::uint16_t vpid, std::uint64_t la = 0, unsigned type_reg = Regs::rcx,
                    const insn::MemOperand& m = {});
  /// VMFUNC (0F 01 D4), function in EAX, index in ECX (SDM Vol. 3C, 26.5.6):
  /// in non-root operation with "enable VM functions", a function not
  /// enabled in the VM-function controls exits (reason 59); otherwise #UD
  /// (no VM function is modelled).
  void vmfunc(std::uint32_t function, std::uint32_t index = 0);

  /// Architectural registers (the GPR file is shared by root and non-root).
  Regs& regs() { return m_regs; }
  bool in_vmx_non_root() const { return m_non_root; }

  // ---- Simulator annotations (no cost, no architectural effect) -----------
  /// Attaches a listener to the VMCS at `vmcs_pa`: whichever core enters
  /// with that VMCS reports to it from the VM entry to the VM exit (the
  /// per-vCPU statistics, cpu/vcpu_observer.h). Null detaches.
  void observe_vmcs(std::uint64_t vmcs_pa, events::Listener* obs);
  /// The listeners of this core (sim/events.h): it reports retired
  /// instructions, VM entries and exits and interrupt deliveries, its MMU
  /// TLB misses and walks, and its cache hierarchy cache accesses, each once.
  /// A listener attached or detached through it sees exactly the operations
  /// retired while it was attached: the vCPU observer's pending sum
  /// (m_retire_batch) is reported first, and summing stops until the next VM
  /// entry decides again whether the observer listens alone.
  events::Dispatcher& events() {
    flush_retired();
    m_retire_batch = false;
    return m_events;
  }
  /// Cycles this core was not halted since reset (never reset): what an
  /// unhalted-core-cycles counter reads.
  std::uint64_t unhalted_cycles() const { return m_now - m_halted_total; }
  std::uint64_t now() const { return m_now; }
  /// A time of this core's clock (cycles since reset) in picoseconds.
  std::uint64_t ps_of(std::uint64_t cycles) const;
  /// The core's local time in picoseconds.
  std::uint64_t now_ps() const { return ps_of(m_now); }
  models::Lapic& lapic() { return m_lapic; }
  /// Delivers an IPI from another core (the platform calls this).
  void post_interrupt(std::uint8_t vector);

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p, const std::string& name) : Group(p, name) {}
    stats::Counter instructions{this, "instructions", "instructions", "instructions retired"};
    stats::Counter guest_instructions{this, "guest_instructions", "instructions", "of those, in VMX non-root operation"};
    stats::Counter loads{this, "loads", "operations", "load operations"};
    stats::Counter stores{this, "stores", "operations", "store operations"};
    stats::Counter fetch_lines{this, "fetch_lines", "lines", "instruction-cache lines fetched"};
    stats::Counter halted_cycles{this, "halted_cycles", "cycles", "cycles halted"};
    stats::Counter interrupts{this, "interrupts", "events", "interrupts delivered through the IDT"};
    stats::Counter exceptions{this, "exceptions", "events", "exceptions delivered through the IDT"};
    stats::Counter vm_entries{this, "vm_entries", "entries", "VM entries"};
    stats::Counter vm_exits{this, "vm_exits", "exits", "VM exits"};
    stats::Counter vm_fails{this, "vm_fails", "events", "VMX instructions that failed (VMfail)"};
    stats::Counter syncs{this, "syncs", "events", "synchronizations with SystemC time"};
    stats::Counter posted_notifications{this, "posted_notifications", "events",
                                        "notification vectors processed as posted interrupts (no VM exit)"};
    stats::Counter virtual_interrupts{this, "virtual_interrupts", "events",
                                      "virtual interrupts delivered by virtual-interrupt delivery (no VM exit)"};
    stats::Counter virtual_eois{this, "virtual_eois", "events", "guest EOIs virtualized (no VM exit)"};
    stats::Counter smt_shared_cycles{this, "smt_shared_cycles", "cycles",
                                     "cycles run while the SMT sibling thread was executing (CPI x smt_contention)"};
    stats::Counter smt_shared_instructions{this, "smt_shared_instructions", "instructions",
                                           "instructions retired while the SMT sibling thread was executing"};
    stats::Counter overlapped_misses{this, "overlapped_misses", "loads",
                                     "independent load misses that overlapped with others (mshrs > 0)"};
    stats::Counter mlp_stall_cycles{this, "mlp_stall_cycles", "cycles",
                                    "cycles independent loads waited for a free MSHR or the ROB window"};
    stats::Counter sb_full_cycles{this, "store_buffer_full_cycles", "cycles",
                                  "cycles a store waited for a free store-buffer entry"};
    stats::Counter sb_drain_cycles{this, "store_buffer_drain_cycles", "cycles",
                                   "cycles fences, locked and serializing instructions, I/O and VM transitions "
                                   "waited for the store buffer to drain"};
  };
  const Stats& stats() const { return m_stats; }

 private:
  enum class Yield : std::uint8_t { Sync, Halt };

  [[noreturn]] static void no_current();  // current() with no core executing
  /// How far the software executing now runs ahead of SystemC (sim/local_time.h).
  static sc_core::sc_time local_offset_now();
  /// fetch() past its boundary: each line translated and looked up.
  [[gnu::always_inline]] inline void fetch_lines(std::uint64_t va, std::uint64_t bytes);
  void run();                    // the SystemC thread
  void yield(Yield why);         // from a software fiber back to run()
  void boundary() {
    if (m_now >= m_next_event) slow_boundary();
  }
  /// Fast-forward with this core executing and no boundary due: the direct
  /// paths (ff_load, ff_store, ff_compute) may serve the operation.
  /// One compare: m_ff_until is m_next_event in functional mode and 0
  /// otherwise (set_next_event, set_functional).
  bool ff_direct() const { return detail::t_current == this && m_now < m_ff_until; }
  /// Every write of m_next_event goes through here, so that m_ff_until
  /// follows it.
  void set_next_event(std::uint64_t cycle) {
    m_next_event = cycle;
    m_ff_until = m_functional ? cycle : 0;
  }
  void slow_boundary();
  std::uint64_t emulated_result();
  enum class LockedOp : std::uint8_t { Swap, Or, Add };
  std::uint64_t locked_update(std::uint64_t va, std::uint64_t value, LockedOp op, const char* what);
  void recompute_next_event();
  /// How many instructions a compute retires before it reaches `cycle` (the
  /// first that reaches it included); UINT64_MAX when no boundary is due
  /// after now.
  std::uint64_t instructions_until(std::uint64_t cycle) const;
  [[gnu::always_inline]] void retire(std::uint64_t instructions) {
    std::uint64_t q = instructions * m_cpi_q8 + m_cpi_frac;
    m_now += q >> 8;
    m_cpi_frac = static_cast<std::uint32_t>(q & 0xFF);
    m_stats.instructions += instructions;
    if (m_non_root) m_stats.guest_instructions += instructions;
    if (m_events.wants(events::kRetired)) [[unlikely]] {
      if (m_retire_batch) m_retired_pending += instructions;  // the vCPU observer alone (flush_retired)
      else m_events.retired({instructions, m_non_root});
    }
  }
  /// SMT: closes the interval since the last check and picks the CPI for
  /// the sibling's current state (slow path only).
  void smt_update();
  void charge(std::uint64_t cycles) { m_now += cycles; }
  /// A memory access through the cache hierarchy and its latency; nothing
  /// (0 cycles) in functional mode.
  std::uint32_t cache_access(std::uint64_t pa, models::AccessKind kind);
  /// cache_access() inlined into the loads and stores of cpu/core.cc.
  [[gnu::always_inline]] inline std::uint32_t cache_access_inline(std::uint64_t pa, models::AccessKind kind);
  /// A store's cache access of `cycles`: paid now without a store buffer;
  /// with one, the store retires into it and drains later (store_retire).
  void charge_store(std::uint32_t cycles) {
    if (m_p.store_buffer == 0) charge(cycles);
    else store_retire(cycles);
  }
  void store_retire(std::uint32_t cycles);
  /// The timing of an independent load whose access took `cycles`.
  void load_overlap(std::uint32_t cycles);
  /// The timing of an independent load whose walk overlapped (page walkers).
  void load_after_walk(std::uint64_t walk_start, std::uint32_t cycles);
  template <bool kIndependent>
  std::uint64_t load_impl(std::uint64_t va, unsigned size);
  /// load() and store() past their hit path (hit_probe): out of line, so
  /// that the hit path saves no registers for them.
  [[gnu::noinline]] std::uint64_t load_slow(std::uint64_t va, unsigned size);
  [[gnu::noinline]] void store_slow(std::uint64_t va, std::uint64_t value, unsigned size);
  /// The hit path of load() and store() (docs/bench.md), its part before
  /// any effect: the host bytes of va when this access of `size` bytes can
  /// take it, else null and nothing changed. It can when this core
  /// executes, not functionally, with no boundary due, the access inside
  /// one page and of 1, 2, 4 or 8 bytes, translation off or its page in the
  /// MMU's hit memo (`memo`, null with translation off), and its physical
  /// page (`pa`) RAM whose host frame exists. The caller then does what the
  /// full path does for such an access, in the same order: retiring, the
  /// statistic, the memo hit, the cache access, the bytes.
  [[gnu::always_inline]] inline std::uint8_t* hit_probe(std::uint64_t va, unsigned size, mmu::AccessType type,
                                                        const mmu::Mmu::HitMemo*& memo, std::uint64_t& pa);
  /// Whether an access of `size` bytes at va can be served from a host
  /// frame directly: 1, 2, 4 or 8 bytes inside one page.
  static bool direct_size(std::uint64_t va, unsigned size) {
    constexpr unsigned kSizes = (1u << 1) | (1u << 2) | (1u << 4) | (1u << 8);
    return ((va & 0xFFF) + size) <= 0x1000 && size <= 8 && ((kSizes >> size) & 1);
  }
  /// The host bytes of RAM at pa through the frame table (m_host_frames),
  /// or null for MMIO, a key ID or a frame never written.
  [[gnu::always_inline]] inline std::uint8_t* host_bytes(std::uint64_t pa);
  /// Waits until the store buffer is empty (SDM Vol. 3A, 8.2.5: locked and
  /// serializing instructions, I/O instructions, fences; VM exits/entries).
  /// Also waits for outstanding independent load misses (a fence or a
  /// serializing instruction completes every earlier instruction).
  void drain_stores() {
    if (m_sb_count | m_mshr_count) drain_stores_slow();
  }
  void drain_stores_slow();

  // Translation and memory.
  /// The MMU's translation; a fault is raised here (#PF, or an EPT
  /// violation/misconfiguration exit) and false returned.
  bool translate(std::uint64_t va, mmu::AccessType type, std::uint64_t& pa) {
    if (m_functional) [[unlikely]]
      return translate_functional(va, type, pa);
    if (m_mmu.translate(va, type, pa, m_now)) [[likely]]
      return true;
    return translation_fault(va);
  }
  bool translate_functional(std::uint64_t va, mmu::AccessType type, std::uint64_t& pa);
  /// Functional translation cache (fast-forward only): 4 KiB pages by
  /// access type, filled by translations the MMU made (so accessed and
  /// dirty flags are already set), direct mapped, all dropped at once by
  /// bumping the generation whenever the MMU's context changes or any TLB
  /// invalidation happens, so it never holds what the TLBs could not.
  /// `host` is the page's host bytes when it is RAM whose frame exists
  /// (null otherwise, and then filled once the frame exists): fast-forward's
  /// loads and stores go straight there (ftlb_host).
  ///
  /// An entry's tag is its page's linear address with the generation in the
  /// low 12 bits (ftlb_tag: one compare for page and generation); `direct`
  /// is the same tag once `host` is known and 0 before, so that the direct
  /// path checks page, generation and frame with one compare. Generations
  /// run from 1 to 4095; when they wrap, every entry is cleared (a tag is
  /// never 0, so a cleared entry matches nothing).
  struct FtlbEntry {
    std::uint64_t tag = 0, pa_page = 0, direct = 0;
    std::uint8_t* host = nullptr;
  };
  static constexpr unsigned kFtlbEntries = 2048;
  static constexpr std::uint64_t kFtlbGenerations = 0x1000;
  std::uint64_t ftlb_tag(std::uint64_t va) const { return (va & ~0xFFFull) | m_ftlb_gen; }
  void ftlb_flush() {
    if (++m_ftlb_gen == kFtlbGenerations) [[unlikely]]
      ftlb_wrap();
  }
  void ftlb_wrap();
  /// The host frame behind the RAM page at pa_page, or null (not RAM, or
  /// never written).
  std::uint8_t* ftlb_frame(std::uint64_t pa_page) const;
  /// Fast-forward's direct path for a load or store of `size` bytes at va:
  /// the host bytes when the functional translation cache holds the page
  /// for `type` with its frame, else null (and the ordinary path serves the
  /// access: translation, MMIO, a page crossed, a frame not yet written).
  /// What the ordinary path would do in functional mode, minus its checks:
  /// the entry was made by a successful translation of a RAM page, and a
  /// functional access costs nothing beyond its CPI.
  std::uint8_t* ftlb_host(std::uint64_t va, unsigned size, mmu::AccessType type) const {
    if (((va & 0xFFF) + size) > 0x1000) return nullptr;
    const FtlbEntry& e =
        (*m_ftlb)[static_cast<unsigned>(type) * kFtlbEntries + ((va >> 12) & (kFtlbEntries - 1))];
    if (e.direct != ftlb_tag(va)) return nullptr;
    return e.host + (va & 0xFFF);
  }
  /// Fast-forward's direct path with translation off (load_slow,
  /// store_slow): the host bytes of the RAM frame at physical va, or null.
  std::uint8_t* ff_phys(std::uint64_t va, unsigned size);
  /// Fast-forward: the cache lines of a string operation retire in one sum
  /// (rep_stos, rep_movs), unless a listener other than the vCPU observer's
  /// sum receives each operation's retired instructions.
  bool ff_batch_lines() const { return m_functional && (m_retire_batch || !m_events.wants(events::kRetired)); }
  bool translation_fault(std::uint64_t va);
  // The MMU's table memory (the cache hierarchy).
  std::uint64_t read_entry(std::uint64_t pa, std::uint32_t& cycles) override;
  void write_entry(std::uint64_t pa, std::uint64_t value, std::uint32_t& cycles) override;
  bool pml_room() override { return m_pml_index < 512; }
  void pml_log(std::uint64_t gpa, std::uint32_t& cycles) override;
  std::uint64_t access_slow(std::uint64_t va, unsigned size, bool write, std::uint64_t value);
  std::uint64_t mmio_read(std::uint64_t pa, unsigned size);
  void mmio_write(std::uint64_t pa, std::uint64_t value, unsigned size);
  // Memory through an address that may carry a key ID (models/mem_crypt.h):
  // such an address is outside RAM for PhysMem, so the plain paths reach
  // these only after their RAM check failed, and the unencrypted hot path
  // pays nothing for them.
  /// pa (key ID stripped) lies in RAM.
  bool in_ram(std::uint64_t pa, std::uint64_t len) const;
  std::uint64_t encrypted_read(std::uint64_t pa, unsigned size);
  void encrypted_write(std::uint64_t pa, std::uint64_t value, unsigned size);
  void mem_read_bytes(std::uint64_t pa, void* dst, std::uint64_t len);
  void mem_write_bytes(std::uint64_t pa, const void* src, std::uint64_t len);
  void update_context();         // hand the MMU the translation context

  // Performance monitoring (pmu/pmu.h): the PMU's view of this CPU, and the
  // cycle at which its first cycle counter may overflow.
  std::uint8_t pmu_cpl() const override { return m_cpl; }
  std::uint64_t pmu_unhalted_cycles() const override { return unhalted_cycles(); }
  void pmu_interrupt() override;
  /// Brings the PMU's cycle counters up to now before the CPL or the
  /// counting state changes (nothing when no cycle counter runs).
  void pmu_sync() {
    if (m_pmu.cycles_counting()) [[unlikely]] m_pmu.sync();
  }
  /// Re-arms the overflow deadline after the PMU's state changed.
  void pmu_rearm();

  // Events.
  /// `fault_address` is the linear address of a #PF (CR2 when delivered).
  void raise_exception(std::uint8_t vector, std::uint32_t error_code, bool has_error,
                       std::uint64_t fault_address = 0);
  /// Runs the handler `h` on the interrupted fiber, then returns from it
  /// (IRET) on the core executing by then. A handler whose own operation
  /// exited and was resumed on another core (a vCPU moved, cpu::CoreMoved)
  /// returns there: the interrupted operation starts over on that core
  /// (CoreMoved again) unless `skips_op`, an exception after which the
  /// faulting operation does not go on (it returns at once).
  void deliver(InterruptHandler* h, bool exception, std::uint8_t vector, std::uint32_t error_code,
               bool skips_op = false);
  void take_pending_interrupt();
  /// `skips_op` as for deliver(): the interrupted operation is complete.
  void deliver_injected_event(bool skips_op = false);
  // Posted interrupts and virtual-interrupt delivery (SDM Vol. 3C, 30.2, 30.6).
  bool virtual_interrupt_recognized() const {
    // Evaluation of pending virtual interrupts (30.2.1) with VTPR taken as
    // 0, so VPPR = SVI & 0xF0: RVI[7:4] > VPPR[7:4].
    return m_vid && !(m_proc & proc::kInterruptWindowExiting) && (m_rvi >> 4) > (m_svi >> 4);
  }
  void process_posted_interrupts();
  void deliver_virtual_interrupt();
  void virtualize_eoi();
  int vapic_highest(std::uint64_t reg_base);
  std::uint64_t phys_read(std::uint64_t pa, unsigned size);
  void phys_write(std::uint64_t pa, std::uint64_t value, unsigned size);

  // VMX.
  void vm_exit(ExitReason reason, std::uint64_t qualification, std::uint64_t gla = 0, std::uint64_t gpa = 0,
               std::uint32_t intr_info = 0, std::uint32_t intr_error = 0);
  VmExit vm_entry(bool launch);
  VmxStatus vm_fail(std::uint32_t error);
  /// The exit of a VMX instruction (or VMCALL, VMFUNC) in non-root
  /// operation, with its instruction information and length.
  void vmx_exit(ExitReason reason, std::uint64_t qualification, std::uint32_t info, unsigned length);
  /// The linear address a memory operand form designates.
  std::uint64_t operand_address(const insn::MemOperand& m) const;
  VmxStatus vm_fail_invalid();
  /// The outcome of a VMX instruction that exited in non-root operation and
  /// was emulated by the VMM: its status is in RFLAGS.CF (VMfailInvalid)
  /// and RFLAGS.ZF (VMfailValid) as the VMM left them in the guest-state
  /// RFLAGS (SDM Vol. 3C, 31.2), read on the core the software resumed on.
  static VmxStatus status_after_exit();
  bool bitmap_bit(std::uint64_t bitmap_pa, std::uint64_t bit);
  /// VMCS shadowing (SDM Vol. 3C, 25.10, 26.1.3): whether a VMREAD or
  /// VMWRITE (the bitmap field) of `enc` in non-root operation accesses the
  /// shadow VMCS instead of exiting.
  bool shadowed(std::uint32_t bitmap_field, std::uint32_t enc);
  bool io_exits(std::uint16_t port, unsigned size);
  void msr_root_write(std::uint32_t msr, std::uint64_t value);
  std::uint64_t msr_root_read(std::uint32_t msr, bool& ok);
  /// RDT MSRs (models/rdt.h): false when `msr` is not one or the write is
  /// invalid (the caller's #GP).
  bool rdt_write(std::uint32_t msr, std::uint64_t value);
  /// The VM-entry or VM-exit MSR-load list (SDM Vol. 3C, 27.4, 28.6):
  /// reads its `count` 16-byte entries at `addr` through the caches. With
  /// `apply` false only checks them; returns 0 when every entry is
  /// loadable, else the 1-based index of the first that is not. The model
  /// loads IA32_PQR_ASSOC through the lists (as ACRN switches a vCPU's class
  /// of service); other MSRs fail the entry.
  std::uint32_t msr_load_list(std::uint64_t addr, std::uint32_t count, bool apply);
  void require_vmx_root();
  void flush_vpid_on_transition();

  void switch_fiber(sim::Fiber& to);
  sc_core::sc_time time_of(std::uint64_t cycles) const;
  std::uint64_t cycles_of(const sc_core::sc_time& t) const;

  // Configuration and wiring.
  unsigned m_id;
  CoreParams m_p;
  CoreWiring m_w;
  std::uint32_t m_cpi_q8;        // cycles per instruction in 1/256, as now in effect
  std::uint32_t m_cpi_frac = 0;
  std::uint32_t m_cpi_alone_q8;  // the configured CPI
  std::uint32_t m_cpi_shared_q8; // x smt_contention, while the sibling executes
  Core* m_sibling = nullptr;
  bool m_executing = false;      // has software and is not halted (read by the sibling)
  bool m_functional = false;     // fast-forward: no cache hierarchy (set_functional)
  // Host frames of recently accessed RAM pages, for the hit path
  // (hit_probe): direct mapped by physical page number. A speed-only
  // shortcut with no statistic: PhysMem never moves or frees a frame, so an
  // entry never goes stale; only RAM pages whose frame exists enter.
  struct HostFrame {
    std::uint64_t page = ~0ull;  // physical page number (never ~0)
    std::uint8_t* host = nullptr;
  };
  static constexpr unsigned kHostFrames = 64;
  std::array<HostFrame, kHostFrames> m_host_frames{};
  std::unique_ptr<std::array<FtlbEntry, 3 * kFtlbEntries>> m_ftlb;  // by AccessType, then page
  std::uint64_t m_ftlb_gen = 1;
  // In the guest with the vCPU's observer as the only listener to retired
  // instructions (it only sums them, and only its statistic reads the sum):
  // retire() adds them up here instead of reporting each operation, and
  // flush_retired() reports the sum at the next VM exit, yield to SystemC,
  // PMU change or statistics read. Fast-forward and full timing alike: the
  // sum the statistic shows is the same, a virtual call per operation less.
  bool m_retire_batch = false;
  std::uint64_t m_retired_pending = 0;
  void update_retire_batch() {
    m_retire_batch = m_non_root && m_vcpu_listener && m_events.listening(events::kRetired) == 1;
  }
  bool m_smt_shared = false;     // the sibling executed at the last check
  std::uint64_t m_smt_mark = 0, m_smt_mark_instr = 0;

  // Time.
  std::uint64_t m_now = 0;          // local clock, cycles since reset
  std::uint64_t m_ff_until = 0;     // m_next_event in functional mode, else 0 (ff_direct)
  std::uint64_t m_halted_total = 0; // cycles halted since reset
  // Listeners (sim/events.h), and the one of the VMCS in non-root operation.
  events::Dispatcher m_events;
  events::Listener* m_vcpu_listener = nullptr;
  void report_interrupt(std::uint8_t vector, events::Delivery how) {
    if (m_events.wants(events::kInterrupt)) [[unlikely]]
      m_events.interrupt({m_now, vector, m_non_root, how});
  }
  std::uint64_t m_next_event = 0;   // earliest cycle the slow boundary must run
  pmu::Pmu m_pmu{*this, m_events};
  std::uint64_t m_pmu_deadline = UINT64_MAX;  // a cycle counter may overflow from here on
  std::uint64_t m_interrupt_sent = 0;  // latest send time of an interrupt posted to this core
  std::uint64_t m_sync_at = 0;      // next quantum end
  bool m_event_pending = false;     // an injected event or IPI awaits delivery
  bool m_sti_shadow = false;        // blocking by STI (SDM Vol. 3A, 6.8.3)
  // Monitor trap flag: slow boundaries seen since the VM entry that armed it
  // (-1: not armed).
  int m_mtf_boundaries = -1;
  // The memory operation in progress, for a hypervisor that emulates it
  // after an EPT violation or misconfiguration (MMIO): its size and store
  // data, reported at the exit; m_op_done is set by a VM entry whose guest
  // RIP was advanced past it (the operation then completes with RAX).
  std::uint64_t m_op_value = 0;
  std::uint32_t m_op_size = 0;
  bool m_op_done = false;
  // VM-exit instruction length and information of the exit being taken
  // (vmx_exit); other exits report length 1.
  std::uint32_t m_exit_insn_len = 1;
  std::uint32_t m_exit_insn_info = 0;
  bool m_boundary_exit = false;  // the exit being taken comes from slow_boundary
  sc_core::sc_event m_wake;

  // Software contexts.
  sim::Fiber* m_reset_fiber = nullptr;
  sim::Fiber* m_current = nullptr;
  std::unique_ptr<sim::Fiber> m_kernel_fiber;  // wraps the SystemC thread
  Yield m_yield = Yield::Sync;

  // Architectural state.
  Regs m_regs;
  std::uint8_t m_cpl = 0;
  bool m_if = false;
  bool m_ac = false;                // RFLAGS.AC
  std::uint32_t m_pkru = 0;
  // RFLAGS.CF and ZF (bits 0 and 6): the only arithmetic flags the model
  // keeps, as they carry the status of VMX instructions (SDM Vol. 3C, 31.2)
  // between a VMM that emulates them and its guest.
  std::uint8_t m_vmx_flags = 0;
  std::uint64_t m_cr0 = 0, m_cr2 = 0, m_cr3 = 0, m_cr4 = 0, m_efer = 0;
  std::uint64_t m_pqr = 0;  // IA32_PQR_ASSOC of this logical processor (RDT)
  InterruptHandler* m_idt = nullptr;
  bool m_vmxon = false;
  std::uint64_t m_vmxon_region = 0;
  bool m_non_root = false;
  Vmcs* m_vmcs = nullptr;           // current VMCS
  Vmcs* m_shadow = nullptr;         // the shadow VMCS (VMCS link pointer) in non-root operation, if valid
  std::uint64_t m_vmcs_pa = ~0ull;
  // VM-execution controls cached at VM entry.
  std::uint32_t m_pin = 0, m_proc = 0, m_proc2 = 0, m_exc_bitmap = 0;
  std::uint16_t m_vpid = 0;
  // Memory encryption of the guest, loaded at VM entry: the key-ID bits of
  // its private accesses and the C-bit of its page-table entries (both 0:
  // not encrypted).
  std::uint64_t m_crypt_key = 0;
  std::uint64_t m_c_bit = 0;
  bool m_ept = false;
  std::uint64_t m_eptp = 0;
  // Page-modification logging (SDM Vol. 3C, 29.3.6): the log's address and
  // the PML index, loaded at VM entry and saved at VM exit.
  std::uint64_t m_pml_addr = 0;
  std::uint16_t m_pml_index = 0;
  std::uint32_t m_pending_injection = 0;  // VM-entry interruption information
  std::uint32_t m_pending_injection_error = 0;
  std::uint64_t m_preempt_deadline = UINT64_MAX;
  // Virtual-interrupt delivery and posted interrupts, loaded at VM entry.
  bool m_vid = false;              // "virtual-interrupt delivery"
  std::uint8_t m_rvi = 0, m_svi = 0;  // guest interrupt status while in non-root operation
  std::uint8_t m_pi_nv = 0;        // posted-interrupt notification vector
  std::uint64_t m_vapic = 0;       // virtual-APIC page (host-physical)
  std::uint64_t m_pi_desc = 0;     // posted-interrupt descriptor (host-physical)

  // Store buffer (cpu/core.cc, store_retire): when each buffered store
  // finishes draining, oldest first, in a ring of kMaxStoreBuffer.
  std::array<std::uint64_t, kMaxStoreBuffer> m_sb_done{};
  std::uint32_t m_sb_head = 0, m_sb_count = 0;
  std::uint64_t m_sb_last = 0;  // when the youngest buffered store finishes
  // Outstanding independent load misses, oldest first: when each returns,
  // and the instruction count when it issued (for the ROB window).
  std::array<std::uint64_t, kMaxMshrs> m_mshr_done{}, m_mshr_instr{};
  std::uint32_t m_mshr_head = 0, m_mshr_count = 0;

  // Statistics and translation structures.
  Stats m_stats;
  mmu::Mmu m_mmu;  // registers "walker" and "tlb" under m_stats
  models::Lapic m_lapic;
  std::array<stats::Counter*, kMaxExitReason> m_exit_counters{};
  stats::Group* m_exit_group;
};

/// Raised for errors of the simulator or of the simulated hypervisor (which
/// is part of vmxsim), never for guest misbehaviour: guests get faults.
class SimulationError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace vmx::cpu
