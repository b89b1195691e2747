#include "cpu/core.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "models/io_bus.h"
#include "models/mem_crypt.h"
#include "models/mem_hierarchy.h"
#include "models/mmio.h"
#include "models/phys_mem.h"
#include "sim/local_time.h"

namespace vmx::cpu {

using mmu::AccessType;
namespace crb = mmu::crbits;

namespace {
constexpr std::uint64_t kLine = 64;
constexpr std::uint64_t kRflagsIf = 1ull << 9;
constexpr std::uint64_t kRflagsAc = 1ull << 18;
constexpr std::uint64_t kRflagsFixed = 1ull << 1;
constexpr std::uint64_t kRflagsCf = 1ull << 0;  // VMfailInvalid (SDM Vol. 3C, 31.2)
constexpr std::uint64_t kRflagsZf = 1ull << 6;  // VMfailValid
using detail::t_current;
// PhysMem holds little-endian bytes: on a little-endian host an aligned-size
// access inside one frame is a plain copy (the fast path of load and store).
constexpr bool kHostLittleEndian = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
constexpr std::uint64_t kFrameOffset = models::PhysMem::kFrameSize - 1;
constexpr std::uint32_t kOpWrite = 0x100;  // in m_op_size: the operation is a store
// Host bytes of an access of 1, 2, 4 or 8 bytes inside one frame (the hit
// path, kHostLittleEndian): fixed-size copies, no call.
std::uint64_t read_host(const std::uint8_t* h, unsigned size) {
  switch (size) {
    case 8: { std::uint64_t v; std::memcpy(&v, h, 8); return v; }
    case 4: { std::uint32_t v; std::memcpy(&v, h, 4); return v; }
    case 2: { std::uint16_t v; std::memcpy(&v, h, 2); return v; }
    default: return *h;
  }
}
void write_host(std::uint8_t* h, std::uint64_t value, unsigned size) {
  switch (size) {
    case 8: std::memcpy(h, &value, 8); break;
    case 4: { const auto v = static_cast<std::uint32_t>(value); std::memcpy(h, &v, 4); break; }
    case 2: { const auto v = static_cast<std::uint16_t>(value); std::memcpy(h, &v, 2); break; }
    default: *h = static_cast<std::uint8_t>(value);
  }
}
}  // namespace

// A software context may hold a reference to the core it ran on and go on
// using it after its vCPU was migrated (VMCLEAR, VMPTRLD and VM entry on
// another core): the architectural operations act on the core that is
// executing the context now, as a real vCPU's instructions execute on
// whichever processor runs it. (The hypervisor's own contexts never move.)
#define VMX_ON_EXECUTING_CORE(call)                                           \
  do {                                                                        \
    if (t_current && t_current != this) return t_current->call;               \
  } while (0)


void Core::no_current() { throw SimulationError("no core is executing software"); }

sc_core::sc_time Core::local_offset_now() {
  const Core* c = detail::t_current;
  if (!c || sim::Fiber::running() != c->m_current) return sc_core::SC_ZERO_TIME;
  const sc_core::sc_time local = c->time_of(c->m_now), now = sc_core::sc_time_stamp();
  return local > now ? local - now : sc_core::SC_ZERO_TIME;
}

// ---------------------------------------------------------------------------
// Construction and the SystemC thread.

Core::Core(sc_core::sc_module_name name, unsigned id, const CoreParams& params, const CoreWiring& wiring,
           stats::Group* stats_parent)
    : sc_module(name),
      m_id(id),
      m_p(params),
      m_w(wiring),
      m_cpi_q8(static_cast<std::uint32_t>(params.cpi * 256.0 + 0.5)),
      m_cpi_alone_q8(m_cpi_q8),
      m_cpi_shared_q8(static_cast<std::uint32_t>(params.cpi * wiring.smt_contention * 256.0 + 0.5)),
      m_stats(stats_parent, std::string(basename())),
      m_mmu(mmu::MmuParams{params.dtlb, params.dtlb_2m, params.dtlb_1g, params.itlb, params.itlb_2m, params.stlb,
                           params.stlb_1g, params.psc, params.nested_tlb, params.page_walkers},
            *this, &m_stats),
      m_exit_group(&m_stats.subgroup("exit_reasons", "VM exits by basic exit reason")) {
  sim::g_local_offset = &Core::local_offset_now;
  if (!m_w.mem || !m_w.caches || !m_w.io || !m_w.vmcs_store || !m_w.frequency_hz || !m_w.quantum_cycles)
    throw std::invalid_argument("core " + std::to_string(id) + ": incomplete wiring");
  m_w.caches->set_events(&m_events);
  m_mmu.set_events(&m_events);
  m_mmu.wire({&m_cr3, &m_efer, &m_eptp});
  SC_THREAD(run);
}

Core::~Core() = default;

sc_core::sc_time Core::time_of(std::uint64_t cycles) const {
  unsigned __int128 ps = static_cast<unsigned __int128>(cycles) * cfg::kPsPerSecond / m_w.frequency_hz;
  return sc_core::sc_time::from_value(static_cast<sc_dt::uint64>(ps));
}

std::uint64_t Core::cycles_of(const sc_core::sc_time& t) const {
  unsigned __int128 c = static_cast<unsigned __int128>(t.value()) * m_w.frequency_hz;
  // Round up so that a core woken at time t never runs "before" t.
  return static_cast<std::uint64_t>((c + cfg::kPsPerSecond - 1) / cfg::kPsPerSecond);
}

std::uint64_t Core::ps_of(std::uint64_t cycles) const { return time_of(cycles).value(); }

void Core::run() {
  m_kernel_fiber = std::make_unique<sim::Fiber>(std::string(name()) + ".kernel");
  if (!m_reset_fiber) {
    // No software on this core: it stays halted with interrupts disabled.
    return;
  }
  m_current = m_reset_fiber;
  m_executing = true;
  m_sync_at = m_now + m_w.quantum_cycles;
  recompute_next_event();
  for (;;) {
    m_current->set_exit_target(m_kernel_fiber.get());
    t_current = this;
    // SMT siblings share their private caches: the hierarchy reports to the
    // thread that executes.
    if (m_sibling) m_w.caches->set_events(&m_events);
    m_w.caches->set_clock(&m_now);  // DRAM requests carry the executing thread's time
    if (m_w.rdt) m_w.caches->set_clos(static_cast<unsigned>(m_pqr >> 32));  // and its class of service
    sim::Fiber::switch_to(*m_kernel_fiber, *m_current);
    if (m_current->finished()) {
      if (m_current->error()) std::rethrow_exception(m_current->error());
      throw SimulationError(fmt::format("{}: software context '{}' returned; simulated software must not "
                                        "return from its entry point",
                                        name(), m_current->name()));
    }
    ++m_stats.syncs;
    sc_core::sc_time local = time_of(m_now);
    if (local > sc_core::sc_time_stamp()) sc_core::wait(local - sc_core::sc_time_stamp());
    if (m_yield == Yield::Halt) {
      // HLT: sleep until an interrupt is requested (timer or IPI).
      if (m_sibling) smt_update();
      m_executing = false;
      std::uint64_t halted_from = m_now;
      while (!m_lapic.any_requested()) {
        std::uint64_t dl = m_lapic.deadline();
        if (dl != models::Lapic::kNoDeadline) {
          sc_core::sc_time when = time_of(dl);
          sc_core::sc_time now = sc_core::sc_time_stamp();
          sc_core::wait(when > now ? when - now : sc_core::SC_ZERO_TIME, m_wake);
        } else {
          sc_core::wait(m_wake);
        }
        std::uint64_t t = cycles_of(sc_core::sc_time_stamp());
        if (t > m_now) m_now = t;
        m_lapic.tick(m_now);
      }
      if (m_interrupt_sent > m_now) m_now = m_interrupt_sent;  // sent by a core running ahead
      m_stats.halted_cycles += m_now - halted_from;
      m_halted_total += m_now - halted_from;
      m_executing = true;
      m_smt_mark = m_now;  // halted cycles are not shared cycles
    }
    m_sync_at = m_now + m_w.quantum_cycles;
    recompute_next_event();
  }
}

void Core::yield(Yield why) {
  flush_retired();
  m_yield = why;
  sim::Fiber::switch_to(*m_current, *m_kernel_fiber);
}

void Core::switch_fiber(sim::Fiber& to) {
  sim::Fiber* from = m_current;
  m_current = &to;
  to.set_exit_target(m_kernel_fiber.get());
  t_current = this;
  sim::Fiber::switch_to(*from, to);
}

void Core::switch_context(sim::Fiber& to) {
  VMX_ON_EXECUTING_CORE(switch_context(to));
  switch_fiber(to);
}

void Core::set_user_mode(bool user) {
  try {
    VMX_ON_EXECUTING_CORE(set_user_mode(user));
    pmu_sync();
    m_cpl = user ? 3 : 0;
    // The entry of a system call clears RFLAGS.AC (SYSCALL masks RFLAGS with
    // IA32_FMASK, in which Linux sets AC).
    if (!user) m_ac = false;
    update_context();
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->set_user_mode(user);
  }
}

bool Core::interrupts_enabled() const { return t_current && t_current != this ? t_current->m_if : m_if; }
std::uint8_t Core::cpl() const { return t_current && t_current != this ? t_current->m_cpl : m_cpl; }

// An interrupt is sent at the sender's time: the sending core's clock, which
// runs up to a quantum ahead of SystemC's, or SystemC's for a device. It is
// recognised at the first boundary at or after that time, never before
// (a core behind the sender waits for it; a halted one wakes then), so that
// no reply leaves before its request arrived.
void Core::post_interrupt(std::uint8_t vector) {
  // The sender is a core when its software runs now (t_current alone stays
  // set while a device's SystemC process runs).
  const Core* from = detail::t_current;
  if (from && sim::Fiber::running() != from->m_current) from = nullptr;
  const std::uint64_t sent = cycles_of(from ? from->time_of(from->m_now) : sc_core::sc_time_stamp());
  if (sent > m_interrupt_sent) m_interrupt_sent = sent;
  m_lapic.raise(vector);
  set_next_event(0);
  m_wake.notify(sc_core::SC_ZERO_TIME);
}

void Core::recompute_next_event() {
  std::uint64_t next = m_sync_at;
  if (m_lapic.deadline() < next) next = m_lapic.deadline();
  if (m_non_root && m_preempt_deadline < next) next = m_preempt_deadline;
  if (m_pmu_deadline < next) next = m_pmu_deadline;
  if (m_lapic.any_requested() && m_interrupt_sent < next) next = m_interrupt_sent;  // 0 when it has arrived
  if (m_event_pending || m_mtf_boundaries >= 0 || m_op_done) next = 0;
  if (m_non_root && m_if && virtual_interrupt_recognized()) next = 0;
  set_next_event(next);
}

// Interrupts, injected events and timers are recognized here, between
// operations (SDM Vol. 3A, 6.9: at instruction boundaries). The quantum bounds
// how late: an event raised by another core is seen at most one quantum
// after the time it was raised.
void Core::slow_boundary() {
  // A guest RIP advanced past an operation that was not a memory access
  // has nothing to complete.
  m_op_done = false;
  if (m_now >= m_sync_at) yield(Yield::Sync);
  if (m_sibling) smt_update();
  m_lapic.tick(m_now);
  if (m_now >= m_pmu_deadline) {
    m_pmu.sync();  // a cycle counter may have overflowed: its PMI is taken below
    pmu_rearm();
  }

  deliver_injected_event();
  m_event_pending = false;

  // Monitor trap flag (SDM Vol. 3C, 26.5.2): the exit comes at the boundary
  // after the first operation following VM entry completes (vm_entry counts
  // where the guest resumes).
  if (m_non_root && m_mtf_boundaries >= 0 && ++m_mtf_boundaries >= 2) {
    m_mtf_boundaries = -1;
    m_boundary_exit = true;
    vm_exit(ExitReason::MonitorTrapFlag, 0);
  }
  if (m_non_root && (m_pin & pin::kPreemptionTimer) && m_now >= m_preempt_deadline) {
    m_preempt_deadline = UINT64_MAX;
    m_boundary_exit = true;
    vm_exit(ExitReason::PreemptionTimer, 0);
  }
  // The instruction after STI runs before any interrupt is delivered.
  if (m_sti_shadow) {
    m_sti_shadow = false;
    set_next_event(0);  // deliver at the following boundary
    return;
  }
  if (m_now >= m_interrupt_sent) take_pending_interrupt();
  if (m_non_root && (m_proc & proc::kInterruptWindowExiting) && m_if) {
    m_boundary_exit = true;
    vm_exit(ExitReason::InterruptWindow, 0);
  }
  // Virtual-interrupt delivery (SDM Vol. 3C, 30.2.2): a recognized virtual
  // interrupt is delivered when RFLAGS.IF = 1 and nothing blocks it.
  if (m_non_root && m_if && virtual_interrupt_recognized()) deliver_virtual_interrupt();
  recompute_next_event();
}

// Event injection (SDM Vol. 3C, 26.6): the event is delivered through the
// guest IDT before the guest executes anything after VM entry.
void Core::deliver_injected_event(bool skips_op) {
  if (!m_non_root || !m_pending_injection) return;
  std::uint32_t info = m_pending_injection;
  std::uint32_t err = m_pending_injection_error;
  m_pending_injection = 0;
  std::uint32_t type = info & (7u << 8);
  deliver(m_idt, type == intr::kTypeHardwareException, static_cast<std::uint8_t>(info & 0xFF), err, skips_op);
}

void Core::take_pending_interrupt() {
  int v = m_lapic.deliverable();
  if (v < 0) return;
  if (m_non_root && (m_pin & pin::kExternalInterruptExiting)) {
    if ((m_pin & pin::kPostedInterrupts) && v == m_pi_nv) {
      process_posted_interrupts();
      return;
    }
    // External-interrupt exiting: the exit happens regardless of the guest's
    // RFLAGS.IF (SDM Vol. 3C, 26.2). With "acknowledge interrupt on exit"
    // the vector is reported in the exit-interruption information.
    std::uint32_t info = 0;
    if (m_vmcs->get(field::kExitControls) & exitctl::kAckInterruptOnExit) {
      m_lapic.acknowledge(static_cast<std::uint8_t>(v));
      info = intr::info(static_cast<std::uint8_t>(v), intr::kTypeExternal);
    }
    m_boundary_exit = true;
    vm_exit(ExitReason::ExternalInterrupt, 0, 0, 0, info);
    return;
  }
  if (!m_if) return;
  m_lapic.acknowledge(static_cast<std::uint8_t>(v));
  deliver(m_idt, false, static_cast<std::uint8_t>(v), 0);
}

void Core::deliver(InterruptHandler* h, bool exception, std::uint8_t vector, std::uint32_t error_code,
                   bool skips_op) {
  if (!h) {
    if (m_non_root) {
      // No IDT: the guest cannot deliver the event; a real processor would
      // escalate to a triple fault (SDM Vol. 3A, 6.15, #DF).
      vm_exit(ExitReason::TripleFault, 0);
      return;
    }
    throw SimulationError(fmt::format("{}: {} {} in VMX root operation with no handler installed", name(),
                                      exception ? "exception" : "interrupt", vector));
  }
  drain_stores();  // event delivery and IRET serialize (SDM Vol. 3A, 8.3)
  charge(m_p.exception_latency);
  if (exception) ++m_stats.exceptions;
  else {
    ++m_stats.interrupts;
    report_interrupt(vector, events::Delivery::Idt);
  }
  std::uint8_t saved_cpl = m_cpl;
  bool saved_if = m_if, saved_ac = m_ac;
  // An emulated memory operation interrupted by this delivery completes
  // after it, not inside the handler.
  const bool op_done = m_op_done;
  m_op_done = false;
  // The handler's entry and exit code save and restore the general-purpose
  // registers (as every kernel's does): an operation whose result is in
  // them (CPUID, RDMSR, IN emulated at a VM exit) keeps it when an injected
  // interrupt is delivered before it completes and its handler exits.
  const Regs saved_regs = m_regs;
  pmu_sync();
  m_cpl = 0;
  m_if = false;
  update_context();
  if (exception) h->exception(*this, vector, error_code);
  else h->interrupt(*this, vector);
  // IRET, by the core that executes the fiber now. A vCPU may have left
  // this core inside the handler (one of the handler's operations exited,
  // and a VM entry on another core, or another host, resumed it there:
  // CoreMoved restarted that operation there). The interrupted context is
  // then restored there, and the interrupted operation, whose frames below
  // belong to this core, starts over there too: nothing of it took effect
  // here (an interrupt is taken at a boundary, before the operation; a #PF
  // leaves the access to be retried).
  Core& now = current();
  now.pmu_sync();
  now.m_regs = saved_regs;
  now.m_cpl = saved_cpl;
  now.m_if = saved_if;
  now.m_ac = saved_ac;  // IRET reloads RFLAGS; delivery itself leaves AC (a handler clears it, as Linux's do)
  now.m_op_done = op_done;
  now.update_context();
  now.recompute_next_event();
  if (&now != this && !skips_op && !op_done) throw CoreMoved{};
}

void Core::raise_exception(std::uint8_t vector, std::uint32_t error_code, bool has_error,
                           std::uint64_t fault_address) {
  if (m_non_root) {
    // Exception bitmap (SDM Vol. 3C, 25.6.3); for #PF the error-code
    // mask/match pair decides together with bit 14.
    bool exits = (m_exc_bitmap >> vector) & 1u;
    if (vector == vec::kPageFault) {
      std::uint32_t mask = static_cast<std::uint32_t>(m_vmcs->get(field::kPfErrorCodeMask));
      std::uint32_t match = static_cast<std::uint32_t>(m_vmcs->get(field::kPfErrorCodeMatch));
      bool matches = (error_code & mask) == match;
      exits = exits == matches;
    }
    if (exits) {
      // A #PF that exits does not update CR2; its linear address is the
      // exit qualification (SDM Vol. 3C, 28.1 and 28.2.1).
      vm_exit(ExitReason::ExceptionOrNmi, vector == vec::kPageFault ? fault_address : 0, 0, 0,
              intr::info(vector, intr::kTypeHardwareException, has_error), error_code);
      return;
    }
  }
  if (vector == vec::kPageFault) m_cr2 = fault_address;
  // After a #PF the access is retried; after the others the operation
  // returns without its effect (the handler dealt with it).
  deliver(m_idt, true, vector, error_code, vector != vec::kPageFault);
}

// ---------------------------------------------------------------------------
// Compute, memory and translation.

// Fast-forward (set_functional): the access keeps its architectural effect,
// done by the caller on PhysMem; the cache hierarchy is neither timed nor
// touched.
inline std::uint32_t Core::cache_access_inline(std::uint64_t pa, models::AccessKind kind) {
  if (m_functional) [[unlikely]]
    return 0;
  return m_w.caches->access(pa, kind);
}

std::uint32_t Core::cache_access(std::uint64_t pa, models::AccessKind kind) { return cache_access_inline(pa, kind); }

// SMT issue contention: while the sibling thread executes, both threads
// share the physical core's issue slots, modelled as this thread's CPI
// times smt_contention. The sibling's state is sampled here, at slow
// boundaries (every quantum end and every event), so a change is seen at
// most a quantum late.
void Core::smt_update() {
  const std::uint64_t instr = m_stats.instructions.value();
  if (m_smt_shared && m_now > m_smt_mark) {
    m_stats.smt_shared_cycles += m_now - m_smt_mark;
    m_stats.smt_shared_instructions += instr >= m_smt_mark_instr ? instr - m_smt_mark_instr : instr;  // reset between
  }
  m_smt_mark = m_now;
  m_smt_mark_instr = instr;
  m_smt_shared = m_sibling->m_executing;
  m_cpi_q8 = m_smt_shared ? m_cpi_shared_q8 : m_cpi_alone_q8;
}

// A compute of many instructions is many instruction boundaries: an interrupt,
// a timer or the end of the quantum due before its last instruction is taken
// between two of its instructions (SDM Vol. 3A, 6.9), not after all of them.
// The compute retires up to the first instruction that reaches the next
// event, runs the boundary, and goes on with the rest.
void Core::compute(std::uint64_t instructions) {
  if (ff_compute(instructions)) [[unlikely]]
    return;  // what boundary() and retire() do when no boundary is due
  std::uint64_t left = instructions;
  try {
    VMX_ON_EXECUTING_CORE(compute(instructions));
    boundary();
    bool stepped = false;
    for (;;) {
      // Most computes end before the next event: no division for them.
      if (m_next_event > m_now && left < (std::uint64_t{1} << 40) &&
          ((left * m_cpi_q8 + m_cpi_frac) >> 8) < m_next_event - m_now)
        break;
      std::uint64_t fit = instructions_until(m_next_event);
      // A boundary still due now (the instruction after STI, an interrupt
      // masked by RFLAGS.IF): one instruction, then look once more; what is
      // still due after it waits for the end of the compute. The monitor
      // trap flag counts operations (slow_boundary): a compute is one.
      if (fit == UINT64_MAX && m_next_event <= m_now && !stepped && m_mtf_boundaries < 0) {
        fit = 1;
        stepped = true;
      }
      if (fit >= left) break;
      retire(fit);
      left -= fit;
      boundary();
    }
    retire(left);
  } catch (const CoreMoved&) {  // resumed on another core: the rest of the compute runs there
    return t_current->compute(left);
  }
}

std::uint64_t Core::instructions_until(std::uint64_t cycle) const {
  // Nothing due later than now: compute() decides.
  if (cycle <= m_now || cycle - m_now > (std::uint64_t{1} << 40)) return UINT64_MAX;
  // The fewest n with m_now + (n * cpi_q8 + frac) / 256 >= cycle.
  const std::uint64_t need = ((cycle - m_now) << 8) - m_cpi_frac;
  return (need + m_cpi_q8 - 1) / m_cpi_q8;
}

void Core::update_context() {
  ftlb_flush();
  m_mmu.set_context(m_cr0, m_cr4, m_cpl == 3, m_non_root && m_ept, m_non_root ? m_vpid : 0, m_non_root,
                    {m_ac, m_pkru, m_non_root && (m_proc2 & proc2::kModeBasedExecute),
                     m_non_root && m_ept && (m_proc2 & proc2::kEnablePml), m_non_root ? m_crypt_key : 0,
                     m_non_root ? m_c_bit : 0});
}

void Core::set_functional(bool on) {
  flush_retired();
  m_functional = on;
  set_next_event(m_next_event);
  if (on && !m_ftlb) m_ftlb = std::make_unique<std::array<FtlbEntry, 3 * kFtlbEntries>>();
  ftlb_flush();
  update_retire_batch();
}

// A hit needs the same page, type and generation: the MMU made this very
// translation (rights checked, flags set) since the last context change or
// invalidation. A miss asks the MMU (TLBs, walk) and keeps what it gives.
bool Core::translate_functional(std::uint64_t va, AccessType type, std::uint64_t& pa) {
  FtlbEntry& e = (*m_ftlb)[static_cast<unsigned>(type) * kFtlbEntries + ((va >> 12) & (kFtlbEntries - 1))];
  const std::uint64_t tag = ftlb_tag(va);
  if (e.tag == tag) {
    pa = e.pa_page | (va & 0xFFF);
    if (!e.host) {  // written since (by this access, at the latest the next)
      e.host = ftlb_frame(e.pa_page);
      if (e.host) e.direct = tag;
    }
    return true;
  }
  if (!m_mmu.translate(va, type, pa, m_now)) return translation_fault(va);
  std::uint8_t* host = ftlb_frame(pa & ~0xFFFull);
  const std::uint64_t now_tag = ftlb_tag(va);  // the generation after the translation
  e = {now_tag, pa & ~0xFFFull, host ? now_tag : 0, host};
  return true;
}

// The generations ran out: every entry goes (tags of the old generations
// could otherwise come back), and the count starts over.
void Core::ftlb_wrap() {
  if (m_ftlb) m_ftlb->fill(FtlbEntry{});
  m_ftlb_gen = 1;
}

// Frames are never freed (models/phys_mem.h), so the pointer stays valid
// for as long as the entry does. An address with a key ID is outside RAM
// here: encrypted accesses keep their own path.
std::uint8_t* Core::ftlb_frame(std::uint64_t pa_page) const {
  if (!kHostLittleEndian || !m_w.mem->contains(pa_page, 0x1000) || !m_w.mem->frame_if_present(pa_page))
    return nullptr;
  return m_w.mem->frame(pa_page);
}

bool Core::translation_fault(std::uint64_t va) {
  const mmu::WalkResult& r = m_mmu.fault();
  switch (r.status) {
    case mmu::WalkResult::Status::PageFault:
      raise_exception(vec::kPageFault, r.error_code, true, va);
      break;
    case mmu::WalkResult::Status::EptViolation:
      // SDM Vol. 3C, 29.4.3.1: the violation invalidates the cached mappings
      // of the address. Only a present, stricter entry can be cached (a
      // not-present one never is, 29.4.3.2), so only then is there work.
      if (r.exit_qualification & (qual::kEptReadable | qual::kEptWritable | qual::kEptExecutable))
        {
        m_mmu.ept_violation(va, r.fault_gpa);
        ftlb_flush();
      }
      vm_exit(ExitReason::EptViolation, r.exit_qualification, va, r.fault_gpa);
      break;
    case mmu::WalkResult::Status::EptMisconfig:
      vm_exit(ExitReason::EptMisconfig, 0, 0, r.fault_gpa);
      break;
    case mmu::WalkResult::Status::PmlFull:
      // SDM Vol. 3C, 29.3.6: a page-modification log-full event exits
      // before the access (exit qualification 0: no NMI unblocking).
      vm_exit(ExitReason::PmlFull, 0, 0, 0);
      break;
    case mmu::WalkResult::Status::Ok:
      break;
  }
  return false;
}

// An encrypted guest's own page tables are private (AMD64 APM Vol. 2,
// 15.34.5: guest page-table walks always use the guest's key): the walker
// hands their entries' addresses over with the key ID, and they are
// decrypted here like any private line.
std::uint64_t Core::read_entry(std::uint64_t pa, std::uint32_t& cycles) {
  const bool plain = m_w.mem->contains(pa, 8);
  if (!plain && !in_ram(pa, 8)) return 0;  // beyond memory: reads as not present
  // The walk's earlier references have not been charged yet: DRAM sees this
  // one after them.
  m_w.caches->set_time_bias(cycles);
  cycles += cache_access_inline(pa, models::AccessKind::Walk);
  m_w.caches->set_time_bias(0);
  if (plain) [[likely]] {
    // An entry is 8-byte aligned inside its table's frame: one copy out of
    // the frame (what PhysMem::read assembles, little-endian), no frame
    // crossing to handle.
    if (kHostLittleEndian && (pa & 7) == 0) {
      const std::uint8_t* f = m_w.mem->frame_if_present(pa);
      if (!f) return 0;  // never written: reads as zero, as PhysMem::read
      std::uint64_t v;
      std::memcpy(&v, f + (pa & kFrameOffset), 8);
      return v;
    }
    return m_w.mem->read(pa, 8);
  }
  std::uint64_t v = 0;
  mem_read_bytes(pa, &v, 8);
  return v;
}

void Core::write_entry(std::uint64_t pa, std::uint64_t value, std::uint32_t& cycles) {
  const bool plain = m_w.mem->contains(pa, 8);
  if (!plain && !in_ram(pa, 8)) return;
  m_w.caches->set_time_bias(cycles);
  cycles += cache_access_inline(pa, models::AccessKind::Write);
  m_w.caches->set_time_bias(0);
  if (plain) [[likely]] {
    if (kHostLittleEndian && (pa & 7) == 0)
      std::memcpy(m_w.mem->frame(pa) + (pa & kFrameOffset), &value, 8);
    else
      m_w.mem->write(pa, value, 8);
  } else
    mem_write_bytes(pa, &value, 8);
}

bool Core::in_ram(std::uint64_t pa, std::uint64_t len) const {
  return m_w.mem->contains(models::strip_key(pa), len) && (models::key_id_of(pa) == 0 || m_w.crypt);
}

// A private access of an encrypted guest: the line is cached under its key
// ID (the hierarchy charges the engine on a DRAM fill), and the engine
// decrypts or re-encrypts the bytes in memory.
std::uint64_t Core::encrypted_read(std::uint64_t pa, unsigned size) {
  charge(cache_access(pa, models::AccessKind::Read));
  std::uint64_t v = 0;
  m_w.crypt->read(pa, &v, size);
  return v;
}

void Core::encrypted_write(std::uint64_t pa, std::uint64_t value, unsigned size) {
  charge_store(cache_access(pa, models::AccessKind::Write));
  m_w.crypt->write(pa, &value, size);
}

void Core::mem_read_bytes(std::uint64_t pa, void* dst, std::uint64_t len) {
  if (models::key_id_of(pa)) [[unlikely]]
    m_w.crypt->read(pa, dst, len);
  else
    m_w.mem->read_bytes(pa, dst, len);
}

void Core::mem_write_bytes(std::uint64_t pa, const void* src, std::uint64_t len) {
  if (models::key_id_of(pa)) [[unlikely]]
    m_w.crypt->write(pa, src, len);
  else
    m_w.mem->write_bytes(pa, src, len);
}

// SDM Vol. 3C, 29.3.6: the guest-physical address goes to PML address + 8 x
// index, then the index is decremented (from 0 it wraps to 0xFFFF, out of
// range: the next flag update is a log-full event).
void Core::pml_log(std::uint64_t gpa, std::uint32_t& cycles) {
  write_entry(m_pml_addr + 8ull * m_pml_index, gpa, cycles);
  --m_pml_index;
}

inline std::uint8_t* Core::host_bytes(std::uint64_t pa) {
  HostFrame& f = m_host_frames[(pa >> 12) & (kHostFrames - 1)];
  if (f.page != pa >> 12) [[unlikely]] {
    const std::uint64_t page = pa & ~kFrameOffset;
    if (!m_w.mem->contains(page, models::PhysMem::kFrameSize)) return nullptr;  // MMIO, or a key ID
    const std::uint8_t* h = m_w.mem->frame_if_present(page);
    if (!h) return nullptr;  // never written: the full path reads zeros, or allocates
    f = {pa >> 12, const_cast<std::uint8_t*>(h)};
  }
  return f.host + (pa & kFrameOffset);
}

inline std::uint8_t* Core::hit_probe(std::uint64_t va, unsigned size, AccessType type,
                                     const mmu::Mmu::HitMemo*& memo, std::uint64_t& pa) {
  if (!kHostLittleEndian || m_functional || t_current != this || m_now >= m_next_event) return nullptr;
  // Bit n: n bytes are an access size (1, 2, 4, 8).
  if (!direct_size(va, size)) return nullptr;
  memo = nullptr;
  pa = va;
  if (m_mmu.translating()) {
    memo = m_mmu.memo_probe(va, type);
    if (!memo) return nullptr;
    pa = (memo->pfn << 12) | (va & 0xFFF);
  }
  return host_bytes(pa);
}

std::uint64_t Core::load(std::uint64_t va, unsigned size) {
  const mmu::Mmu::HitMemo* memo;
  std::uint64_t pa;
  if (const std::uint8_t* h = hit_probe(va, size, AccessType::Read, memo, pa)) [[likely]] {
    // load_impl<false> for this access: boundary() has nothing to do.
    retire(1);
    ++m_stats.loads;
    m_op_size = size;
    if (memo) m_mmu.memo_hit(*memo, AccessType::Read, va, m_now);
    charge(m_w.caches->access(pa, models::AccessKind::Read));
    return read_host(h, size);  // little-endian, as PhysMem::read assembles it
  }
  return load_slow(va, size);
}

// Fast-forward with translation off (root operation without paging): the
// physical address is the linear one, and a RAM page whose host frame
// exists is served from the core's frame table, as hit_probe serves full
// timing's hits. What load_impl and store_slow do for such an access when
// no boundary is due: retire, the statistic, the bytes (a functional access
// costs no cycles beyond its CPI and leaves no mark in the store buffer).
std::uint8_t* Core::ff_phys(std::uint64_t va, unsigned size) {
  if (!kHostLittleEndian || !m_functional || m_mmu.translating() || t_current != this || m_now >= m_next_event)
    return nullptr;
  if (!direct_size(va, size)) return nullptr;
  return host_bytes(va);
}

std::uint64_t Core::load_slow(std::uint64_t va, unsigned size) {
  if (std::uint64_t v; ff_load(va, size, v)) [[unlikely]]
    return v;
  if (const std::uint8_t* h = ff_phys(va, size)) [[unlikely]] {
    retire(1);
    ++m_stats.loads;
    m_op_size = size;
    return read_host(h, size);
  }
  try {
    VMX_ON_EXECUTING_CORE(load(va, size));
    return load_impl<false>(va, size);
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->load(va, size);
  }
}

std::uint64_t Core::load_independent(std::uint64_t va, unsigned size) {
  if (std::uint64_t v; ff_load(va, size, v)) [[unlikely]]  // functional: no MSHRs, no overlap to model
    return v;
  if (const std::uint8_t* h = ff_phys(va, size)) [[unlikely]] {
    retire(1);
    ++m_stats.loads;
    m_op_size = size;
    return read_host(h, size);
  }
  try {
    VMX_ON_EXECUTING_CORE(load_independent(va, size));
    if (m_p.mshrs == 0) return load_impl<false>(va, size);
    return load_impl<true>(va, size);
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->load_independent(va, size);
  }
}

template <bool kIndependent>
std::uint64_t Core::load_impl(std::uint64_t va, unsigned size) {
  boundary();
  retire(1);
  ++m_stats.loads;
  if (((va & 0xFFF) + size) > 0x1000) return access_slow(va, size, false, 0);
  std::uint64_t pa = va;
  m_op_size = size;
  // An independent load whose walk (translated at the first attempt) ran
  // on a page walker: the core goes on from the walk's start.
  [[maybe_unused]] std::uint64_t walk_start = 0;
  [[maybe_unused]] bool overlapped_walk = false;
  if (m_mmu.translating()) {  // translate() itself passes va through when this is off
    [[maybe_unused]] const std::uint64_t walks = m_mmu.walks_started();
    [[maybe_unused]] bool first = true;
    while (!translate(va, AccessType::Read, pa)) {
      if (m_op_done) return emulated_result();
      boundary();
      first = false;
    }
    if constexpr (kIndependent) {
      overlapped_walk = first && m_mmu.walks_started() != walks && m_mmu.page_walkers() && !m_functional;
      walk_start = m_mmu.last_walk_start();
    }
  }
  if (!m_w.mem->contains(pa, size)) [[unlikely]] {
    // A keyed address is never inside PhysMem (models/mem_crypt.h). An
    // independent load of encrypted RAM overlaps like any other: the
    // engine's latency is part of its line fill, not a reason to block.
    if (!(kIndependent && models::key_id_of(pa) && in_ram(pa, size))) return mmio_read(pa, size);
    const std::uint32_t cycles = cache_access_inline(pa, models::AccessKind::Read);
    if (overlapped_walk) load_after_walk(walk_start, cycles);
    else load_overlap(cycles);
    std::uint64_t v = 0;
    m_w.crypt->read(pa, &v, size);
    return v;
  }
  if constexpr (kIndependent) {
    const std::uint32_t cycles = cache_access_inline(pa, models::AccessKind::Read);
    if (overlapped_walk) [[unlikely]] {
      load_after_walk(walk_start, cycles);
    } else {
      load_overlap(cycles);
    }
  } else {
    charge(cache_access_inline(pa, models::AccessKind::Read));
  }
  if (kHostLittleEndian && size == 8) {
    // The access does not cross a page, so it stays in pa's frame.
    const std::uint8_t* f = m_w.mem->frame_if_present(pa);
    if (!f) return 0;  // never written: reads as zero, as PhysMem::read
    std::uint64_t v;
    std::memcpy(&v, f + (pa & kFrameOffset), 8);
    return v;
  }
  if (kHostLittleEndian && (size == 4 || size == 2 || size == 1)) {
    // The same for the smaller sizes, little-endian as PhysMem::read
    // assembles them.
    const std::uint8_t* f = m_w.mem->frame_if_present(pa);
    if (!f) return 0;
    f += pa & kFrameOffset;
    if (size == 4) {
      std::uint32_t v;
      std::memcpy(&v, f, 4);
      return v;
    }
    if (size == 2) {
      std::uint16_t v;
      std::memcpy(&v, f, 2);
      return v;
    }
    return *f;
  }
  return m_w.mem->read(pa, size);
}

void Core::store(std::uint64_t va, std::uint64_t value, unsigned size) {
  const mmu::Mmu::HitMemo* memo;
  std::uint64_t pa;
  if (std::uint8_t* h = hit_probe(va, size, AccessType::Write, memo, pa)) [[likely]] {
    // store_slow() for this access: boundary() has nothing to do.
    retire(1);
    ++m_stats.stores;
    m_op_size = size | kOpWrite;
    m_op_value = value;
    if (memo) m_mmu.memo_hit(*memo, AccessType::Write, va, m_now);
    charge_store(m_w.caches->access(pa, models::AccessKind::Write));
    write_host(h, value, size);  // little-endian, as PhysMem::write lays it out
    return;
  }
  store_slow(va, value, size);
}

void Core::store_slow(std::uint64_t va, std::uint64_t value, unsigned size) {
  if (ff_store(va, value, size)) [[unlikely]]
    return;
  if (std::uint8_t* h = ff_phys(va, size)) [[unlikely]] {
    retire(1);
    ++m_stats.stores;
    m_op_size = size | kOpWrite;
    m_op_value = value;
    write_host(h, value, size);
    return;
  }
  try {
    VMX_ON_EXECUTING_CORE(store(va, value, size));
    boundary();
    retire(1);
    ++m_stats.stores;
    if (((va & 0xFFF) + size) > 0x1000) {
      access_slow(va, size, true, value);
      return;
    }
    std::uint64_t pa = va;
    m_op_size = size | kOpWrite;
    m_op_value = value;
    if (m_mmu.translating())
      while (!translate(va, AccessType::Write, pa)) {
        if (m_op_done) {
          emulated_result();
          return;
        }
        boundary();
      }
    if (!m_w.mem->contains(pa, size)) {
      mmio_write(pa, value, size);
      return;
    }
    charge_store(cache_access_inline(pa, models::AccessKind::Write));
    if (kHostLittleEndian && size == 8) {
      std::memcpy(m_w.mem->frame(pa) + (pa & kFrameOffset), &value, 8);
      return;
    }
    m_w.mem->write(pa, value, size);
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->store(va, value, size);
  }
}

// Completes a memory operation the hypervisor emulated: a load returns RAX
// cut to its size, a store has nothing left to do.
std::uint64_t Core::emulated_result() {
  m_op_done = false;
  const std::uint64_t v = m_regs[Regs::rax];
  const std::uint32_t size = m_op_size & 0xF;
  return size >= 8 ? v : v & ((1ull << (8 * size)) - 1);
}

std::uint64_t Core::xchg(std::uint64_t va, std::uint64_t value) {
  try {
    VMX_ON_EXECUTING_CORE(xchg(va, value));
    return locked_update(va, value, LockedOp::Swap, "XCHG");
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->xchg(va, value);
  }
}

// Outside RAM: a device's MMIO range, uncacheable (no cache access), timed
// by the device (models/mmio.h). Reached only after the RAM check fails.
std::uint64_t Core::mmio_read(std::uint64_t pa, unsigned size) {
  if (models::key_id_of(pa) && in_ram(pa, size)) return encrypted_read(pa, size);
  drain_stores();  // UC accesses are not reordered with buffered stores (SDM Vol. 3A, 11.3)
  std::uint64_t v = 0;
  std::uint32_t cycles = 0;
  if (!m_w.mmio || !m_w.mmio->read(pa, size, v, cycles))
    throw SimulationError(fmt::format("{}: load from physical {:#x} beyond memory, and no device claims it", name(), pa));
  charge(cycles);
  return v;
}

void Core::mmio_write(std::uint64_t pa, std::uint64_t value, unsigned size) {
  if (models::key_id_of(pa) && in_ram(pa, size)) {
    encrypted_write(pa, value, size);
    return;
  }
  drain_stores();  // UC accesses are not reordered with buffered stores (SDM Vol. 3A, 11.3)
  std::uint32_t cycles = 0;
  if (!m_w.mmio || !m_w.mmio->write(pa, value, size, cycles))
    throw SimulationError(fmt::format("{}: store to physical {:#x} beyond memory, and no device claims it", name(), pa));
  charge(cycles);
}

std::uint64_t Core::lock_or(std::uint64_t va, std::uint64_t bits) {
  try {
    VMX_ON_EXECUTING_CORE(lock_or(va, bits));
    return locked_update(va, bits, LockedOp::Or, "LOCK OR");
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->lock_or(va, bits);
  }
}

std::uint64_t Core::lock_xadd(std::uint64_t va, std::uint64_t addend) {
  try {
    VMX_ON_EXECUTING_CORE(lock_xadd(va, addend));
    return locked_update(va, addend, LockedOp::Add, "LOCK XADD");
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->lock_xadd(va, addend);
  }
}

// A locked read-modify-write of an aligned quadword (XCHG, LOCK OR or LOCK
// XADD): the translation may exit or fault and is retried; once it
// succeeds the read and the write follow with no boundary in between.
std::uint64_t Core::locked_update(std::uint64_t va, std::uint64_t value, LockedOp op, const char* what) {
  boundary();
  retire(1);
  ++m_stats.loads;
  ++m_stats.stores;
  std::uint64_t pa;
  while (!translate(va, AccessType::Write, pa)) boundary();
  if ((va & 7) || !in_ram(pa, 8))
    throw SimulationError(fmt::format("{}: {} at {:#x} must be 8-byte aligned and inside memory", name(), what, va));
  drain_stores();  // a locked instruction drains the store buffer first (SDM Vol. 3A, 8.2.5)
  charge(cache_access(pa, models::AccessKind::Write));
  std::uint64_t old = 0;
  mem_read_bytes(pa, &old, 8);
  const std::uint64_t nv = op == LockedOp::Or ? old | value : op == LockedOp::Add ? old + value : value;
  mem_write_bytes(pa, &nv, 8);
  return old;
}

void Core::pause() {
  try {
    VMX_ON_EXECUTING_CORE(pause());
    boundary();
    retire(1);
    charge(m_p.pause_latency);
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->pause();
  }
}

void Core::mfence() {
  try {
    VMX_ON_EXECUTING_CORE(mfence());
    boundary();
    retire(1);
    drain_stores();
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->mfence();
  }
}

// Store buffer (x86-TSO, SDM Vol. 3A, 8.2.2): a store retires into the
// buffer at once; its line's request starts when a fill buffer is free (the
// fill_buffers-th younger store before it has finished) and the entries
// finish in program order. Functionally the store is already in memory (the
// model's data path is sequentially consistent, a stronger order than TSO);
// only its timing is deferred. The core waits only when the buffer is full,
// or at a drain (drain_stores).
void Core::store_retire(std::uint32_t cycles) {
  constexpr std::uint32_t kMask = kMaxStoreBuffer - 1;
  static_assert((kMaxStoreBuffer & kMask) == 0, "the ring's size is a power of two");
  while (m_sb_count && m_sb_done[m_sb_head] <= m_now) {
    m_sb_head = (m_sb_head + 1) & kMask;
    --m_sb_count;
  }
  if (m_sb_count == m_p.store_buffer) {
    const std::uint64_t wait = m_sb_done[m_sb_head] - m_now;
    m_stats.sb_full_cycles += wait;
    charge(wait);
    m_sb_head = (m_sb_head + 1) & kMask;
    --m_sb_count;
  }
  std::uint64_t start = m_now;
  if (m_sb_count >= m_p.fill_buffers)
    start = std::max(start, m_sb_done[(m_sb_head + m_sb_count - m_p.fill_buffers) & kMask]);
  m_sb_last = std::max(m_sb_last, start + cycles);
  m_sb_done[(m_sb_head + m_sb_count) & kMask] = m_sb_last;
  ++m_sb_count;
}

// Memory-level parallelism, an interval model in the spirit of Sniper's
// (Genbrugge, Eyerman, Eeckhout, HPCA 2010): an independent load that
// misses the L1 issues as soon as an MSHR is free and the core goes on; the
// core stalls only when all `mshrs` are busy (until the oldest returns) or
// when it has retired `rob` instructions past the oldest outstanding miss
// (the ROB is full behind it). A hit costs its latency as always; a
// dependent load (load()) blocks for its own latency as before.
void Core::load_overlap(std::uint32_t cycles) {
  constexpr std::uint32_t kMask = kMaxMshrs - 1;
  static_assert((kMaxMshrs & kMask) == 0, "the ring's size is a power of two");
  const std::uint32_t hit = m_w.caches->l1d().latency();
  if (cycles <= hit) {
    charge(cycles);
    return;
  }
  while (m_mshr_count && m_mshr_done[m_mshr_head] <= m_now) {
    m_mshr_head = (m_mshr_head + 1) & kMask;
    --m_mshr_count;
  }
  const std::uint64_t retired = m_stats.instructions.value();
  while (m_mshr_count &&
         (m_mshr_count >= m_p.mshrs || m_mshr_instr[m_mshr_head] + m_p.rob <= retired)) {
    const std::uint64_t done = m_mshr_done[m_mshr_head];
    if (done > m_now) {
      m_stats.mlp_stall_cycles += done - m_now;
      charge(done - m_now);
    }
    m_mshr_head = (m_mshr_head + 1) & kMask;
    --m_mshr_count;
  }
  const std::uint32_t slot = (m_mshr_head + m_mshr_count) & kMask;
  m_mshr_done[slot] = m_now + cycles;
  m_mshr_instr[slot] = retired;
  ++m_mshr_count;
  ++m_stats.overlapped_misses;
  charge(hit);  // issue: the load's own pipeline slot
}

// Concurrent page walkers (docs/model.md): the load's walk started at
// `walk_start` on a walker and ended at the core's clock now, where its
// data access (of `cycles`) was timed. The core itself went on from the
// walk's start: it takes its clock back there, and the load is outstanding
// until its data returns, holding an MSHR like any independent miss.
void Core::load_after_walk(std::uint64_t walk_start, std::uint32_t cycles) {
  const std::uint64_t done = m_now + cycles;
  m_now = walk_start;
  load_overlap(static_cast<std::uint32_t>(done - walk_start));
}

void Core::drain_stores_slow() {
  for (; m_mshr_count; --m_mshr_count, m_mshr_head = (m_mshr_head + 1) & (kMaxMshrs - 1)) {
    const std::uint64_t done = m_mshr_done[m_mshr_head];
    if (done > m_now) {
      m_stats.mlp_stall_cycles += done - m_now;
      charge(done - m_now);
    }
  }
  m_mshr_head = 0;
  if (m_sb_count && m_sb_last > m_now) {
    m_stats.sb_drain_cycles += m_sb_last - m_now;
    charge(m_sb_last - m_now);
  }
  m_sb_count = 0;
  m_sb_head = 0;
}

// An access that crosses a page boundary: both pages are translated (and may
// fault) before any byte is written, as on x86.
std::uint64_t Core::access_slow(std::uint64_t va, unsigned size, bool write, std::uint64_t value) {
  std::uint64_t second_va = (va | 0xFFF) + 1;
  unsigned first_len = static_cast<unsigned>(second_va - va);
  std::uint64_t pa1, pa2;
  AccessType t = write ? AccessType::Write : AccessType::Read;
  m_op_size = size | (write ? kOpWrite : 0);
  m_op_value = value;
  for (;;) {
    if (translate(va, t, pa1) && translate(second_va, t, pa2)) break;
    if (m_op_done) return emulated_result();
    boundary();
  }
  auto kind = write ? models::AccessKind::Write : models::AccessKind::Read;
  if (write) {
    charge_store(cache_access(pa1, kind));
    charge_store(cache_access(pa2, kind));
  } else {
    charge(cache_access(pa1, kind));
    charge(cache_access(pa2, kind));
  }
  std::uint8_t bytes[8] = {};
  if (write) {
    std::memcpy(bytes, &value, 8);
    mem_write_bytes(pa1, bytes, first_len);
    mem_write_bytes(pa2, bytes + first_len, size - first_len);
    return 0;
  }
  mem_read_bytes(pa1, bytes, first_len);
  mem_read_bytes(pa2, bytes + first_len, size - first_len);
  std::uint64_t v = 0;
  std::memcpy(&v, bytes, 8);
  return size == 8 ? v : v & ((1ull << (8 * size)) - 1);
}

inline void Core::fetch_lines(std::uint64_t va, std::uint64_t bytes) {
  std::uint64_t end = va + bytes;
  for (std::uint64_t line = va & ~(kLine - 1); line < end; line += kLine) {
    std::uint64_t pa = line;
    if (m_mmu.translating())
      while (!translate(line, AccessType::Execute, pa)) boundary();
    ++m_stats.fetch_lines;
    charge(cache_access_inline(pa, models::AccessKind::Fetch));
  }
}

void Core::fetch(std::uint64_t va, std::uint64_t bytes) {
  try {
    VMX_ON_EXECUTING_CORE(fetch(va, bytes));
    boundary();
    fetch_lines(va, bytes);
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->fetch(va, bytes);
  }
}

// fetch() then compute(1), each part as those do it: a move to another core
// during the fetch starts the fetch over there, one during the retirement
// only the retirement. (compute's fast-forward path is boundary() and
// retire() when no boundary is due, so it needs no case of its own.)
void Core::fetch_instruction(std::uint64_t va, std::uint64_t bytes) {
  try {
    VMX_ON_EXECUTING_CORE(fetch_instruction(va, bytes));
    boundary();
    fetch_lines(va, bytes);
  } catch (const CoreMoved&) {
    t_current->fetch(va, bytes);
    return t_current->compute(1);
  }
  try {
    boundary();
    retire(1);
  } catch (const CoreMoved&) {
    return t_current->compute(1);
  }
}

// Fast-string operations (SDM Vol. 1, 7.3.9.3; Vol. 3A, 7.3.2): the model
// moves a cache line per step, retiring one instruction per line, and lets
// interrupts in between pages, as the architecture allows between iterations.
void Core::rep_stos(std::uint64_t va, std::uint8_t value, std::uint64_t bytes) {
  try {
    VMX_ON_EXECUTING_CORE(rep_stos(va, value, bytes));
    boundary();
    retire(1);
    std::uint64_t end = va + bytes;
    while (va < end) {
      std::uint64_t chunk = std::min(end, (va | 0xFFF) + 1) - va;
      std::uint64_t pa;
      while (!translate(va, AccessType::Write, pa)) boundary();
      if (!in_ram(pa, chunk)) throw SimulationError(fmt::format("{}: REP STOS to physical {:#x} beyond memory", name(), pa));
      if (ff_batch_lines()) [[unlikely]] {
        // Fast-forward: the lines' stores cost nothing beyond their CPI
        // and leave no mark in the store buffer, so the lines retire in one
        // sum (the same cycles and fraction as one at a time).
        retire(((pa + chunk + kLine - 1) & ~(kLine - 1)) / kLine - pa / kLine);
      } else {
        for (std::uint64_t line = pa & ~(kLine - 1); line < pa + chunk; line += kLine) {
          charge_store(cache_access_inline(line, models::AccessKind::Write));  // streams through the store buffer
          retire(1);
        }
      }
      // A frame never written reads as zeros (PhysMem): zeroing it needs no
      // host frame, so clearing a fresh page costs no host memory or memset.
      // Through a key the engine writes the ciphertext of the value.
      if (models::key_id_of(pa)) [[unlikely]]
        m_w.crypt->fill(pa, value, chunk);
      else if (value != 0 || m_w.mem->frame_if_present(pa))
        std::memset(m_w.mem->frame(pa) + (pa & 0xFFF), value, chunk);
      m_stats.stores += (chunk + kLine - 1) / kLine;
      va += chunk;
      if (va < end) boundary();
    }
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->rep_stos(va, value, bytes);
  }
}

void Core::rep_movs(std::uint64_t dst, std::uint64_t src, std::uint64_t bytes) {
  try {
    VMX_ON_EXECUTING_CORE(rep_movs(dst, src, bytes));
    boundary();
    retire(1);
    std::uint64_t done = 0;
    while (done < bytes) {
      std::uint64_t s = src + done, d = dst + done;
      std::uint64_t chunk = std::min({bytes - done, (s | 0xFFF) + 1 - s, (d | 0xFFF) + 1 - d});
      std::uint64_t spa, dpa;
      for (;;) {
        if (translate(s, AccessType::Read, spa) && translate(d, AccessType::Write, dpa)) break;
        boundary();
      }
      if (!in_ram(spa, chunk) || !in_ram(dpa, chunk))
        throw SimulationError(fmt::format("{}: REP MOVS beyond memory", name()));
      if (ff_batch_lines()) [[unlikely]] {
        retire((chunk + kLine - 1) / kLine);  // as in rep_stos
      } else {
        for (std::uint64_t off = 0; off < chunk; off += kLine) {
          charge(cache_access(spa + off, models::AccessKind::Read));
          charge_store(cache_access(dpa + off, models::AccessKind::Write));
          retire(1);
        }
      }
      std::uint8_t buf[4096];
      mem_read_bytes(spa, buf, chunk);
      mem_write_bytes(dpa, buf, chunk);
      m_stats.loads += (chunk + kLine - 1) / kLine;
      m_stats.stores += (chunk + kLine - 1) / kLine;
      done += chunk;
      if (done < bytes) boundary();
    }
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->rep_movs(dst, src, bytes);
  }
}

// ---------------------------------------------------------------------------
// Control registers, MSRs, CPUID, I/O, HLT.

std::uint64_t Core::read_cr(unsigned cr) {
  try {
    VMX_ON_EXECUTING_CORE(read_cr(cr));
    boundary();
    retire(1);
    // An instruction that exits does not execute (SDM Vol. 3C, 26.1): its
    // native latency is charged only when it runs.
    if (m_non_root && cr == 3 && (m_proc & proc::kCr3StoreExiting)) {
      vm_exit(ExitReason::CrAccess, qual::cr_access(3, qual::kCrMovFrom, Regs::rax));
      return m_regs[Regs::rax];
    }
    charge(m_p.cr_latency);
    if (m_non_root) {
      // Bits owned by the host read from the read shadow (SDM Vol. 3C, 25.6.6).
      if (cr == 0) {
        std::uint64_t mask = m_vmcs->get(field::kCr0GuestHostMask);
        return (m_cr0 & ~mask) | (m_vmcs->get(field::kCr0ReadShadow) & mask);
      }
      if (cr == 4) {
        std::uint64_t mask = m_vmcs->get(field::kCr4GuestHostMask);
        return (m_cr4 & ~mask) | (m_vmcs->get(field::kCr4ReadShadow) & mask);
      }
    }
    switch (cr) {
      case 0: return m_cr0;
      case 2: return m_cr2;
      case 3: return m_cr3;
      case 4: return m_cr4;
      default: raise_exception(vec::kInvalidOpcode, 0, false); return 0;
    }
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->read_cr(cr);
  }
}

void Core::write_cr(unsigned cr, std::uint64_t value) {
  try {
    VMX_ON_EXECUTING_CORE(write_cr(cr, value));
    boundary();
    retire(1);
    if (m_cpl != 0) {
      raise_exception(vec::kGeneralProtection, 0, true);
      return;
    }
    // Bits set in the guest/host mask are owned by the host.
    std::uint64_t host_owned = 0;
    if (m_non_root) {
      bool exits = false;
      if (cr == 3) exits = m_proc & proc::kCr3LoadExiting;
      if (cr == 0 || cr == 4) {
        host_owned = m_vmcs->get(cr == 0 ? field::kCr0GuestHostMask : field::kCr4GuestHostMask);
        std::uint64_t shadow = m_vmcs->get(cr == 0 ? field::kCr0ReadShadow : field::kCr4ReadShadow);
        exits = ((value ^ shadow) & host_owned) != 0;
      }
      if (exits) {
        m_regs[Regs::rax] = value;
        vm_exit(ExitReason::CrAccess, qual::cr_access(cr, qual::kCrMovTo, Regs::rax));
        return;
      }
    }
    // Charged only when the instruction executes (no fault, no exit); MOV to
    // CR is serializing (SDM Vol. 3A, 8.3).
    drain_stores();
    charge(m_p.cr_latency);
    // A MOV to CR0/CR4 that does not exit leaves the host-owned bits of the
    // register unmodified (SDM Vol. 3C, 26.3, "MOV to CR0", "MOV to CR4").
    value = (value & ~host_owned) | ((cr == 0 ? m_cr0 : m_cr4) & host_owned);
    switch (cr) {
      case 0:
        m_cr0 = value;
        break;
      case 2:
        m_cr2 = value;
        break;
      case 3: {
        // MOV to CR3 (SDM Vol. 3A, 4.10.4.1): without PCIDs, or with bit 63
        // clear, non-global translations of the current (VPID, PCID) go.
        bool pcide = m_cr4 & crb::kCr4Pcide;
        bool keep = pcide && (value & crb::kCr3NoFlush);
        m_cr3 = value & ~crb::kCr3NoFlush;
        update_context();
        if (!keep) m_mmu.mov_to_cr3(pcide);  // ... and the PCID's paging-structure-cache entries
        break;
      }
      case 4: {
        bool flush = ((m_cr4 ^ value) & (crb::kCr4Pge | crb::kCr4Pcide | crb::kCr4Smep | crb::kCr4La57)) != 0;
        m_cr4 = value;
        // All TLB entries, global ones included, and all paging-structure-
        // cache entries of the current VPID (SDM Vol. 3A, 4.10.4.1).
        if (flush) m_mmu.cr4_paging_change();
        break;
      }
      default:
        raise_exception(vec::kInvalidOpcode, 0, false);
        return;
    }
    update_context();
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->write_cr(cr, value);
  }
}

// I/O exiting (SDM Vol. 3C, 26.1.3): with I/O bitmaps, an access exits if the
// bit of any port it touches is set, or if it wraps around the 16-bit port
// space; "unconditional I/O exiting" is then ignored.
bool Core::io_exits(std::uint16_t port, unsigned size) {
  if (!(m_proc & proc::kUseIoBitmaps)) return m_proc & proc::kUnconditionalIoExiting;
  if (std::uint32_t{port} + size > 0x10000) return true;
  for (std::uint32_t p = port; p < std::uint32_t{port} + size; ++p) {
    bool set = p < 0x8000 ? bitmap_bit(m_vmcs->get(field::kIoBitmapA), p)
                          : bitmap_bit(m_vmcs->get(field::kIoBitmapB), p - 0x8000u);
    if (set) return true;
  }
  return false;
}

bool Core::shadowed(std::uint32_t bitmap_field, std::uint32_t enc) {
  // 26.1.3: with "VMCS shadowing", VMREAD/VMWRITE exit if the encoding
  // has bits above 14 set or its bit in the VMREAD/VMWRITE bitmap is 1.
  if (!(m_proc2 & proc2::kVmcsShadowing) || enc > 0x7FFF) return false;
  return !bitmap_bit(m_vmcs->get(bitmap_field), enc);
}

bool Core::bitmap_bit(std::uint64_t bitmap_pa, std::uint64_t bit) {
  std::uint64_t pa = bitmap_pa + bit / 8;
  if (!m_w.mem->contains(pa)) return true;
  charge(cache_access(pa, models::AccessKind::Read));
  return (m_w.mem->read(pa, 1) >> (bit % 8)) & 1;
}

std::uint64_t Core::msr_root_read(std::uint32_t msr, bool& ok) {
  ok = true;
  switch (msr) {
    case 0x10: return m_now;  // IA32_TIME_STAMP_COUNTER
    case msr::kIa32TscDeadline: return m_lapic.deadline_msr();
    case msr::kIa32Efer: return m_efer;
    case msr::kIa32VmxBasic: return kVmcsRevision | (4096ull << 32);
    case msr::kIa32VmxProcbasedCtls2: return std::uint64_t{proc2::kSupported} << 32;  // allowed 1-settings (A.3.3)
    case msr::kIa32VmxEptVpidCap: return kEptVpidCap;
    case msr::kX2ApicId: return m_id;
    case msr::kX2ApicLvtTimer: return m_lapic.lvt_timer();
    case msr::kX2ApicLvtPmc: return m_lapic.lvt_pmc();
    default: {
      std::uint64_t v = 0;
      if (m_w.rdt && m_w.rdt->owns(msr)) {
        if (msr == models::rdt_msr::kPqrAssoc) return m_pqr;
        ok = m_w.rdt->read(msr, v);
        return v;
      }
      ok = pmu::Pmu::owns(msr) && m_pmu.read(msr, v);
      return v;
    }
  }
}

void Core::msr_root_write(std::uint32_t msr, std::uint64_t value) {
  switch (msr) {
    case msr::kIa32TscDeadline:
      m_lapic.set_deadline(value);
      recompute_next_event();
      return;
    case msr::kIa32Efer:
      m_efer = value;
      update_context();
      return;
    case msr::kX2ApicEoi:
      m_lapic.eoi();
      recompute_next_event();
      return;
    case msr::kX2ApicLvtTimer:
      m_lapic.set_lvt_timer(static_cast<std::uint32_t>(value));
      return;
    case msr::kX2ApicLvtPmc:
      m_lapic.set_lvt_pmc(static_cast<std::uint32_t>(value));
      return;
    case msr::kX2ApicIcr:
      // Fixed delivery, physical destination in bits 63:32 (x2APIC ICR).
      if (m_w.send_ipi) m_w.send_ipi(static_cast<std::uint32_t>(value >> 32), static_cast<std::uint8_t>(value & 0xFF));
      return;
    default:
      flush_retired();  // what retired before the write is not the PMU's new counting
      if (pmu::Pmu::owns(msr) && m_pmu.write(msr, value)) {
        pmu_rearm();
        update_retire_batch();
        return;
      }
      if (rdt_write(msr, value)) return;
      raise_exception(vec::kGeneralProtection, 0, true);
  }
}

// Cache and bandwidth allocation (SDM Vol. 3B, 19.19): IA32_PQR_ASSOC is the
// logical processor's; the masks and delays are the package's.
bool Core::rdt_write(std::uint32_t msr, std::uint64_t value) {
  if (!m_w.rdt || !m_w.rdt->owns(msr)) return false;
  if (msr == models::rdt_msr::kPqrAssoc) {
    if (!m_w.rdt->valid_pqr(value)) return false;
    m_pqr = value;
    m_w.caches->set_clos(static_cast<unsigned>(value >> 32));
    return true;
  }
  return m_w.rdt->write(msr, value);
}

std::uint32_t Core::msr_load_list(std::uint64_t addr, std::uint32_t count, bool apply) {
  for (std::uint32_t i = 0; i < count; ++i) {
    const std::uint64_t pa = addr + 16ull * i;
    // Bits 3:0 of the address must be clear, and the list in memory (27.2.1.2).
    if ((addr & 0xF) || !m_w.mem->contains(pa, 16)) return i + 1;
    charge(cache_access(pa, models::AccessKind::Read));
    const auto index = static_cast<std::uint32_t>(m_w.mem->read(pa, 4));
    const std::uint64_t value = m_w.mem->read(pa + 8, 8);
    if (!m_w.rdt || index != models::rdt_msr::kPqrAssoc || !m_w.rdt->valid_pqr(value)) return i + 1;
    if (apply) {
      charge(m_p.msr_latency);
      rdt_write(index, value);
    }
  }
  return 0;
}

void Core::pmu_rearm() {
  const std::uint64_t left = m_pmu.cycles_to_overflow();
  m_pmu_deadline = left == UINT64_MAX ? UINT64_MAX : m_now + left;
  recompute_next_event();
}

// A counter overflowed with its interrupt enabled: the LVT entry requests
// its vector, taken at the next operation boundary.
void Core::pmu_interrupt() {
  if (m_lapic.pmi()) set_next_event(0);
}

std::uint64_t Core::rdpmc(std::uint32_t ecx) {
  try {
    VMX_ON_EXECUTING_CORE(rdpmc(ecx));
    boundary();
    retire(1);
    charge(m_p.rdpmc_latency);
    // The CPL check (CR4.PCE) is a privilege fault and comes before the VM
    // exit (SDM Vol. 3C, 26.1.1); an invalid index is #GP(0) too.
    if (m_cpl != 0 && !(m_cr4 & crb::kCr4Pce)) {
      raise_exception(vec::kGeneralProtection, 0, true);
      return 0;
    }
    if (m_non_root && (m_proc & proc::kRdpmcExiting)) {
      m_regs[Regs::rcx] = ecx;
      vm_exit(ExitReason::Rdpmc, 0);
      return (m_regs[Regs::rdx] << 32) | (m_regs[Regs::rax] & 0xFFFFFFFF);
    }
    std::uint64_t v = 0;
    if (!m_pmu.rdpmc(ecx, v)) {
      raise_exception(vec::kGeneralProtection, 0, true);
      return 0;
    }
    return v;
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->rdpmc(ecx);
  }
}

std::uint64_t Core::rdmsr(std::uint32_t msr) {
  try {
    VMX_ON_EXECUTING_CORE(rdmsr(msr));
    boundary();
    retire(1);
    if (m_cpl != 0) {
      raise_exception(vec::kGeneralProtection, 0, true);
      return 0;
    }
    if (msr == msr::kSevStatus && m_w.crypt) {
      // Answered by the hardware from the VM's key ID (no exit): what the
      // guest needs to know before it sets any C-bit.
      charge(m_p.msr_latency);
      return (m_non_root && m_crypt_key) ? 1 : 0;
    }
    if (m_non_root) {
      // MSR bitmaps, SDM Vol. 3C, 25.6.9: read-low at 0, read-high at 1024.
      bool exits = true;
      if (m_proc & proc::kUseMsrBitmaps) {
        std::uint64_t bm = m_vmcs->get(field::kMsrBitmap);
        if (msr <= 0x1FFF) exits = bitmap_bit(bm, msr);
        else if (msr >= 0xC0000000u && msr <= 0xC0001FFFu) exits = bitmap_bit(bm, 1024 * 8 + (msr - 0xC0000000u));
      }
      if (exits) {
        m_regs[Regs::rcx] = msr;
        vm_exit(ExitReason::Rdmsr, 0);
        return (m_regs[Regs::rdx] << 32) | (m_regs[Regs::rax] & 0xFFFFFFFF);
      }
    }
    // The exit (or the #GP above) happens instead of the instruction (SDM
    // Vol. 3C, 26.1): the native latency is charged only when it executes.
    charge(m_p.msr_latency);
    bool ok = false;
    std::uint64_t v = msr_root_read(msr, ok);
    if (!ok) raise_exception(vec::kGeneralProtection, 0, true);
    return v;
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->rdmsr(msr);
  }
}

void Core::wrmsr(std::uint32_t msr, std::uint64_t value) {
  try {
    VMX_ON_EXECUTING_CORE(wrmsr(msr, value));
    boundary();
    retire(1);
    if (m_cpl != 0) {
      raise_exception(vec::kGeneralProtection, 0, true);
      return;
    }
    if (m_non_root) {
      // Write-low bitmap at 2048, write-high at 3072.
      bool exits = true;
      if (m_proc & proc::kUseMsrBitmaps) {
        std::uint64_t bm = m_vmcs->get(field::kMsrBitmap);
        if (msr <= 0x1FFF) exits = bitmap_bit(bm, 2048 * 8 + msr);
        else if (msr >= 0xC0000000u && msr <= 0xC0001FFFu) exits = bitmap_bit(bm, 3072 * 8 + (msr - 0xC0000000u));
      }
      if (exits) {
        m_regs[Regs::rcx] = msr;
        m_regs[Regs::rax] = value & 0xFFFFFFFF;
        m_regs[Regs::rdx] = value >> 32;
        vm_exit(ExitReason::Wrmsr, 0);
        return;
      }
    }
    drain_stores();  // WRMSR is serializing (SDM Vol. 3A, 8.3)
    charge(m_p.msr_latency);  // executes: no fault, no exit (SDM Vol. 3C, 26.1)
    if (m_non_root) {
      // Virtualized x2APIC accesses (SDM Vol. 3C, 30.5): with "virtualize
      // x2APIC mode" and virtual-interrupt delivery, WRMSR to the EOI register
      // is EOI virtualization (a nonzero value is #GP). Other x2APIC MSRs
      // reach the local APIC (TPR and self-IPI virtualization are not modelled).
      if ((m_proc2 & proc2::kVirtualizeX2apic) && m_vid && msr == msr::kX2ApicEoi) {
        if (value != 0) raise_exception(vec::kGeneralProtection, 0, true);
        else virtualize_eoi();
        return;
      }
    }
    msr_root_write(msr, value);
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->wrmsr(msr, value);
  }
}

CpuidResult Core::cpuid(std::uint32_t leaf, std::uint32_t subleaf) {
  try {
    VMX_ON_EXECUTING_CORE(cpuid(leaf, subleaf));
    boundary();
    retire(1);
    if (m_non_root) {
      // CPUID always exits in VMX non-root operation (SDM Vol. 3C, 26.1.2).
      m_regs[Regs::rax] = leaf;
      m_regs[Regs::rcx] = subleaf;
      vm_exit(ExitReason::Cpuid, 0);
      return {static_cast<std::uint32_t>(m_regs[Regs::rax]), static_cast<std::uint32_t>(m_regs[Regs::rbx]),
              static_cast<std::uint32_t>(m_regs[Regs::rcx]), static_cast<std::uint32_t>(m_regs[Regs::rdx])};
    }
    drain_stores();  // CPUID is serializing (SDM Vol. 3A, 8.3)
    charge(m_p.cpuid_latency);
    CpuidResult r;
    switch (leaf) {
      case 0:  // highest leaf and vendor "vmxsimCPU..."
        r = {0x16, 0x73786d76, 0x2e2e2e55, 0x436d6973};
        break;
      case 1:
        // Family 6; ECX: VMX (bit 5), PDCM (15, IA32_PERF_CAPABILITIES), x2APIC (21), TSC-deadline (24);
        // EDX: TSC (4), MSR (5), PAE (6), APIC (9), PGE (13).
        r = {0x000906E0, m_id << 24, (1u << 5) | (1u << 15) | (1u << 21) | (1u << 24),
             (1u << 4) | (1u << 5) | (1u << 6) | (1u << 9) | (1u << 13)};
        break;
      case 7:
        // Structured extended features, subleaf 0 (SDM Vol. 2A, CPUID leaf
        // 07H): EBX SMEP (bit 7), SMAP (20); ECX PKU (3) and OSPKE (4, CR4.PKE).
        // EBX bit 15 (PQE): resource director technology allocation.
        if (subleaf == 0)
          r = {0, (1u << 7) | (1u << 20) | (m_w.rdt ? 1u << 15 : 0u),
               (1u << 3) | ((m_cr4 & crb::kCr4Pke) ? 1u << 4 : 0u), 0};
        break;
      case 0x10:
        // RDT allocation enumeration (SDM Vol. 2A, CPUID leaf 10H).
        if (m_w.rdt) {
          const models::RdtCpuid q = m_w.rdt->cpuid(subleaf);
          r = {q.eax, q.ebx, q.ecx, q.edx};
        }
        break;
      case 0xA: {
        // Architectural performance monitoring (pmu/pmu.h).
        const pmu::Cpuid0A a = pmu::Pmu::cpuid();
        r = {a.eax, a.ebx, a.ecx, a.edx};
        break;
      }
      case 0x15: {
        // Time Stamp Counter and core crystal clock (SDM Vol. 2A, CPUID leaf
        // 15H; Vol. 3B, 19.7.3): TSC Hz = ECX x EBX / EAX, with a 25 MHz
        // crystal (assumption: Intel server parts since Skylake-SP) and the
        // ratio reduced so that it is exact for any configured frequency.
        constexpr std::uint64_t kCrystalHz = 25'000'000;
        const std::uint64_t f = m_w.frequency_hz;
        std::uint64_t a = f, b = kCrystalHz;
        while (b) {
          const std::uint64_t t = a % b;
          a = b;
          b = t;
        }
        r = {static_cast<std::uint32_t>(kCrystalHz / a), static_cast<std::uint32_t>(f / a),
             static_cast<std::uint32_t>(kCrystalHz), 0};
        break;
      }
      case 0x16:
        // Processor frequency information (SDM Vol. 2A, CPUID leaf 16H): base
        // and maximum MHz (one fixed frequency), bus (reference) 100 MHz.
        r = {static_cast<std::uint32_t>(m_w.frequency_hz / 1'000'000), static_cast<std::uint32_t>(m_w.frequency_hz / 1'000'000),
             100, 0};
        break;
      case 0x80000000:
        // Highest extended leaf: 8000_001FH when memory encryption exists.
        if (m_w.crypt) r = {0x8000001F, 0, 0, 0};
        break;
      case 0x8000001F:
        // AMD memory-encryption capabilities (AMD64 APM Vol. 3, CPUID Fn8000_001F):
        // EAX bit 1 SEV; EBX[5:0] the C-bit position, EBX[11:6] the physical-
        // address reduction (0: the key ID sits above MAXPHYADDR here); ECX the
        // number of encrypted guests at once (key IDs).
        if (m_w.crypt) r = {1u << 1, m_w.crypt->params().c_bit, m_w.crypt->params().key_ids, 0};
        break;
      default:
        break;
    }
    return r;
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->cpuid(leaf, subleaf);
  }
}

std::uint32_t Core::in(std::uint16_t port, unsigned size) {
  try {
    VMX_ON_EXECUTING_CORE(in(port, size));
    boundary();
    retire(1);
    if (m_non_root) {
      if (io_exits(port, size)) {
        vm_exit(ExitReason::IoInstruction, qual::io(size, true, port));
        std::uint64_t mask = size >= 4 ? 0xFFFFFFFFull : (1ull << (8 * size)) - 1;
        return static_cast<std::uint32_t>(m_regs[Regs::rax] & mask);
      }
    }
    drain_stores();  // I/O instructions wait for buffered stores (SDM Vol. 3A, 8.2.5)
    charge(m_p.io_latency);  // executes: no exit (SDM Vol. 3C, 26.1)
    std::uint32_t cycles = 0;
    std::uint32_t v = m_w.io->in(port, size, cycles);
    charge(cycles);
    return v;
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->in(port, size);
  }
}

void Core::out(std::uint16_t port, std::uint32_t value, unsigned size) {
  try {
    VMX_ON_EXECUTING_CORE(out(port, value, size));
    boundary();
    retire(1);
    if (m_non_root) {
      if (io_exits(port, size)) {
        m_regs[Regs::rax] = value;
        vm_exit(ExitReason::IoInstruction, qual::io(size, false, port));
        return;
      }
    }
    drain_stores();  // I/O instructions wait for buffered stores (SDM Vol. 3A, 8.2.5)
    charge(m_p.io_latency);  // executes: no exit (SDM Vol. 3C, 26.1)
    std::uint32_t cycles = 0;
    m_w.io->out(port, value, size, cycles);
    charge(cycles);
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->out(port, value, size);
  }
}

void Core::hlt() {
  try {
    VMX_ON_EXECUTING_CORE(hlt());
    boundary();
    retire(1);
    if (m_cpl != 0) {
      raise_exception(vec::kGeneralProtection, 0, true);
      return;
    }
    if (m_non_root && (m_proc & proc::kHltExiting)) {
      vm_exit(ExitReason::Hlt, 0);
      return;
    }
    drain_stores();  // a halted core has nothing left in flight
    // Halt until an interrupt is requested; then it is taken (if enabled) at
    // this boundary and execution continues after HLT.
    yield(Yield::Halt);
    slow_boundary();
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->hlt();
  }
}

void Core::sti() {
  try {
    VMX_ON_EXECUTING_CORE(sti());
    boundary();
    retire(1);
    if (!m_if) m_sti_shadow = true;
    m_if = true;
    set_next_event(0);
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->sti();
  }
}

void Core::stac() {
  try {
    VMX_ON_EXECUTING_CORE(stac());
    boundary();
    retire(1);
    if (m_cpl != 0) {
      raise_exception(vec::kInvalidOpcode, 0, false);
      return;
    }
    m_ac = true;
    update_context();
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->stac();
  }
}

void Core::clac() {
  try {
    VMX_ON_EXECUTING_CORE(clac());
    boundary();
    retire(1);
    if (m_cpl != 0) {
      raise_exception(vec::kInvalidOpcode, 0, false);
      return;
    }
    m_ac = false;
    update_context();
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->clac();
  }
}

std::uint32_t Core::rdpkru() {
  try {
    VMX_ON_EXECUTING_CORE(rdpkru());
    boundary();
    retire(1);
    if (!(m_cr4 & crb::kCr4Pke)) {
      raise_exception(vec::kInvalidOpcode, 0, false);
      return 0;
    }
    return m_pkru;
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->rdpkru();
  }
}

void Core::wrpkru(std::uint32_t value) {
  try {
    VMX_ON_EXECUTING_CORE(wrpkru(value));
    boundary();
    retire(1);
    if (!(m_cr4 & crb::kCr4Pke)) {
      raise_exception(vec::kInvalidOpcode, 0, false);
      return;
    }
    // No TLB invalidation: cached translations keep their key and PKRU is
    // checked on every access (SDM Vol. 3A, 4.10.2.2).
    m_pkru = value;
    update_context();
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->wrpkru(value);
  }
}

void Core::cli() {
  try {
    VMX_ON_EXECUTING_CORE(cli());
    boundary();
    retire(1);
    m_if = false;
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->cli();
  }
}

std::uint64_t Core::vmcall(std::uint64_t nr, std::uint64_t a0, std::uint64_t a1, std::uint64_t a2) {
  try {
    VMX_ON_EXECUTING_CORE(vmcall(nr, a0, a1, a2));
    boundary();
    retire(1);
    if (!m_non_root) {
      // Outside VMX operation VMCALL is #UD; in VMX root operation without the
      // dual-monitor treatment (not modelled) it is VMfail with error 1
      // (SDM Vol. 3C, 31.3): VMfailValid when a VMCS is current.
      if (!m_vmxon) raise_exception(vec::kInvalidOpcode, 0, false);
      else vm_fail(vmerr::kVmcallInVmxRoot);
      return 0;
    }
    m_regs[Regs::rax] = nr;
    m_regs[Regs::rbx] = a0;
    m_regs[Regs::rcx] = a1;
    m_regs[Regs::rdx] = a2;
    vmx_exit(ExitReason::Vmcall, 0, 0, 3);  // 0F 01 C1
    return m_regs[Regs::rax];
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->vmcall(nr, a0, a1, a2);
  }
}

void Core::invlpg(std::uint64_t va) {
  try {
    VMX_ON_EXECUTING_CORE(invlpg(va));
    boundary();
    retire(1);
    if (m_cpl != 0) {
      raise_exception(vec::kGeneralProtection, 0, true);
      return;
    }
    if (m_non_root && (m_proc & proc::kInvlpgExiting)) {
      vm_exit(ExitReason::Invlpg, va);
      return;
    }
    drain_stores();  // INVLPG/INVPCID are serializing (SDM Vol. 3A, 8.3)
    charge(m_p.invlpg_latency);  // executes: no fault, no exit (SDM Vol. 3C, 26.1)
    // INVLPG (SDM Vol. 3A, 4.10.4.1): the page's translations for the current
    // PCID and global ones, and all paging-structure-cache entries of the
    // current PCID whatever linear address they are for.
    m_mmu.invlpg(va);
    ftlb_flush();
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->invlpg(va);
  }
}

void Core::invpcid(unsigned type, std::uint16_t pcid, std::uint64_t la) {
  try {
    VMX_ON_EXECUTING_CORE(invpcid(type, pcid, la));
    boundary();
    retire(1);
    // In VMX non-root operation with "enable INVPCID" clear, INVPCID is #UD
    // (SDM Vol. 3C, 25.6.2); #UD and the CPL check come before the VM exit
    // (26.1.1), the other checks after it.
    if (m_non_root && !(m_proc2 & proc2::kEnableInvpcid)) {
      raise_exception(vec::kInvalidOpcode, 0, false);
      return;
    }
    if (m_cpl != 0) {
      raise_exception(vec::kGeneralProtection, 0, true);
      return;
    }
    if (m_non_root && (m_proc & proc::kInvlpgExiting)) {
      // SDM Vol. 3C, 26.1.3. The qualification is the memory operand's
      // displacement (28.2.1), 0 here; the operands are in registers: the type
      // in RAX, and the descriptor (which the model does not put in memory)
      // as its PCID in RCX and its linear address in RDX.
      m_regs[Regs::rax] = type;
      m_regs[Regs::rcx] = pcid;
      m_regs[Regs::rdx] = la;
      vm_exit(ExitReason::Invpcid, 0);
      return;
    }
    // #GP(0) (SDM Vol. 2, INVPCID, exceptions): type > 3; descriptor bits
    // 63:12 set; with CR4.PCIDE = 0, types 0 and 1 for a PCID other than 0;
    // type 0 for a non-canonical linear address.
    const bool pcide = m_cr4 & crb::kCr4Pcide;
    const unsigned va_bits = (m_cr4 & crb::kCr4La57) ? 57 : 48;
    const bool canonical = static_cast<std::uint64_t>(static_cast<std::int64_t>(la << (64 - va_bits)) >>
                                                      (64 - va_bits)) == la;
    if (type > 3 || pcid > crb::kCr3PcidMask || (type <= 1 && !pcide && pcid != 0) || (type == 0 && !canonical)) {
      raise_exception(vec::kGeneralProtection, 0, true);
      return;
    }
    drain_stores();  // INVLPG/INVPCID are serializing (SDM Vol. 3A, 8.3)
    charge(m_p.invlpg_latency);  // executes: no fault, no exit (SDM Vol. 3C, 26.1)
    // Scopes: SDM Vol. 3A, 4.10.4.1 (mmu::Mmu::invpcid).
    m_mmu.invpcid(type, pcid, la);
    ftlb_flush();
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->invpcid(type, pcid, la);
  }
}

std::uint64_t Core::rdtsc() {
  try {
    VMX_ON_EXECUTING_CORE(rdtsc());
    boundary();
    retire(1);
    if (m_non_root && (m_proc & proc::kRdtscExiting)) {
      vm_exit(ExitReason::Rdtsc, 0);
      return (m_regs[Regs::rdx] << 32) | (m_regs[Regs::rax] & 0xFFFFFFFF);
    }
    charge(m_p.rdtsc_latency);  // executes: no exit (SDM Vol. 3C, 26.1)
    if (m_non_root) {
      if (m_proc & proc::kUseTscOffsetting) return m_now + m_vmcs->get(field::kTscOffset);
    }
    return m_now;
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->rdtsc();
  }
}

void Core::lidt(InterruptHandler* handler) {
  try {
    VMX_ON_EXECUTING_CORE(lidt(handler));
    boundary();
    retire(1);
    if (m_cpl != 0) {
      raise_exception(vec::kGeneralProtection, 0, true);
      return;
    }
    m_idt = handler;
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->lidt(handler);
  }
}

// ---------------------------------------------------------------------------
// VMX root operation.

VmxStatus Core::vm_fail_invalid() {
  ++m_stats.vm_fails;
  return VmxStatus::FailInvalid;
}

VmxStatus Core::status_after_exit() {
  const std::uint8_t f = current().m_vmx_flags;
  if (f & kRflagsCf) return VmxStatus::FailInvalid;
  if (f & kRflagsZf) return VmxStatus::FailValid;
  return VmxStatus::Succeed;
}

VmxStatus Core::vm_fail(std::uint32_t error) {
  ++m_stats.vm_fails;
  if (!m_vmcs) return VmxStatus::FailInvalid;
  m_vmcs->set(field::kVmInstructionError, error);
  return VmxStatus::FailValid;
}

void Core::require_vmx_root() {
  // VMX instructions outside VMX operation are #UD; in non-root operation
  // they exit (SDM Vol. 3C, 26.1.2), which callers handle before this.
  if (!m_vmxon) raise_exception(vec::kInvalidOpcode, 0, false);
}

VmxStatus Core::vmxon(std::uint64_t region_pa, const insn::MemOperand& m) {
  boundary();
  retire(1);
  if (m_non_root) {
    vmx_exit(ExitReason::Vmxon, m.qualification(), m.info(), 3 + m.modrm_bytes() + m.rex());  // F3 0F C7 /6
    return status_after_exit();
  }
  if (!(m_cr4 & crb::kCr4Vmxe) || m_cpl != 0) {
    raise_exception(vec::kInvalidOpcode, 0, false);
    return VmxStatus::FailInvalid;
  }
  if (m_vmxon) return vm_fail(vmerr::kVmxonInVmxRoot);
  charge(m_p.vmxon_latency);
  if ((region_pa & 0xFFF) || !m_w.mem->contains(region_pa, 4096) ||
      (m_w.mem->read(region_pa, 4) & 0x7FFFFFFF) != kVmcsRevision)
    return vm_fail_invalid();
  m_vmxon = true;
  m_vmxon_region = region_pa;
  return VmxStatus::Succeed;
}

VmxStatus Core::vmptrld(std::uint64_t pa, const insn::MemOperand& m) {
  boundary();
  retire(1);
  if (m_non_root) {
    vmx_exit(ExitReason::Vmptrld, m.qualification(), m.info(), 2 + m.modrm_bytes() + m.rex());  // 0F C7 /6
    return status_after_exit();
  }
  require_vmx_root();
  if (!m_vmxon) return VmxStatus::FailInvalid;
  charge(m_p.vmptrld_latency);
  if ((pa & 0xFFF) || !m_w.mem->contains(pa, 4096)) return vm_fail(vmerr::kVmptrldInvalidAddress);
  if (pa == m_vmxon_region) return vm_fail(vmerr::kVmptrldVmxonPointer);
  if ((m_w.mem->read(pa, 4) & 0x7FFFFFFF) != kVmcsRevision) return vm_fail(vmerr::kVmptrldWrongRevision);
  m_vmcs = &m_w.vmcs_store->at(pa);
  m_vmcs_pa = pa;
  return VmxStatus::Succeed;
}

VmxStatus Core::vmclear(std::uint64_t pa, const insn::MemOperand& m) {
  boundary();
  retire(1);
  if (m_non_root) {
    vmx_exit(ExitReason::Vmclear, m.qualification(), m.info(), 3 + m.modrm_bytes() + m.rex());  // 66 0F C7 /6
    return status_after_exit();
  }
  require_vmx_root();
  if (!m_vmxon) return VmxStatus::FailInvalid;
  charge(m_p.vmptrld_latency);
  // SDM Vol. 3C, 31.3 VMCLEAR: its own error numbers (2 and 3).
  if ((pa & 0xFFF) || !m_w.mem->contains(pa, 4096)) return vm_fail(vmerr::kVmclearInvalidAddress);
  if (pa == m_vmxon_region) return vm_fail(vmerr::kVmclearVmxonPointer);
  m_w.vmcs_store->at(pa).set_launched(false);
  if (pa == m_vmcs_pa) {
    m_vmcs = nullptr;
    m_vmcs_pa = ~0ull;
  }
  return VmxStatus::Succeed;
}

VmxStatus Core::vmread(std::uint32_t enc, std::uint64_t& value, unsigned dst, unsigned src) {
  boundary();
  retire(1);
  if (m_non_root) {
    // VMREAD dst, src (0F 78 /r, register form): the field encoding in
    // reg2, the destination in reg1.
    m_regs[src] = enc;
    if (shadowed(field::kVmreadBitmap, enc)) {
      // Read from the shadow VMCS without an exit (SDM Vol. 3C, 31.3 VMREAD).
      charge(m_p.vmread_latency);
      if (!m_shadow) return vm_fail_invalid();
      if (m_shadow->read(enc, value) != Vmcs::Access::Ok) {
        ++m_stats.vm_fails;
        m_shadow->set(field::kVmInstructionError, vmerr::kUnsupportedVmcsComponent);
        return VmxStatus::FailValid;
      }
      return VmxStatus::Succeed;
    }
    vmx_exit(ExitReason::Vmread, 0, insn::reg1(dst) | insn::reg2(src), 3 + (dst >= 8 || src >= 8));
    const VmxStatus st = status_after_exit();
    if (st == VmxStatus::Succeed) value = current().m_regs[dst];
    return st;
  }
  require_vmx_root();
  if (!m_vmcs) return vm_fail_invalid();
  charge(m_p.vmread_latency);
  if (m_vmcs->read(enc, value) != Vmcs::Access::Ok) return vm_fail(vmerr::kUnsupportedVmcsComponent);
  return VmxStatus::Succeed;
}

VmxStatus Core::vmwrite(std::uint32_t enc, std::uint64_t value, unsigned dst, unsigned src) {
  boundary();
  retire(1);
  if (m_non_root) {
    // VMWRITE dst, src (0F 79 /r, register form): the field encoding in
    // reg2, the value in reg1.
    if (shadowed(field::kVmwriteBitmap, enc)) {
      // Write to the shadow VMCS without an exit (SDM Vol. 3C, 31.3 VMWRITE).
      charge(m_p.vmwrite_latency);
      if (!m_shadow) return vm_fail_invalid();
      if (m_shadow->write(enc, value, true) != Vmcs::Access::Ok) {
        ++m_stats.vm_fails;
        m_shadow->set(field::kVmInstructionError, vmerr::kUnsupportedVmcsComponent);
        return VmxStatus::FailValid;
      }
      return VmxStatus::Succeed;
    }
    m_regs[dst] = enc;
    m_regs[src] = value;
    vmx_exit(ExitReason::Vmwrite, 0, insn::reg1(src) | insn::reg2(dst), 3 + (dst >= 8 || src >= 8));
    return status_after_exit();
  }
  require_vmx_root();
  if (!m_vmcs) return vm_fail_invalid();
  charge(m_p.vmwrite_latency);
  switch (m_vmcs->write(enc, value, true)) {  // IA32_VMX_MISC[29]: read-only fields too
    case Vmcs::Access::Ok: return VmxStatus::Succeed;
    case Vmcs::Access::ReadOnly: return vm_fail(vmerr::kVmwriteReadOnly);
    case Vmcs::Access::Unsupported: return vm_fail(vmerr::kUnsupportedVmcsComponent);
  }
  return VmxStatus::Succeed;
}

VmxStatus Core::invept(unsigned type, std::uint64_t eptp, unsigned type_reg, const insn::MemOperand& m) {
  boundary();
  retire(1);
  if (m_non_root) {
    // INVEPT r64, m128 (66 0F 38 80 /r): the type in reg2, the descriptor
    // in memory.
    m_regs[type_reg] = type;
    vmx_exit(ExitReason::Invept, m.qualification(), m.info() | insn::reg2(type_reg),
             4 + m.modrm_bytes() + (m.rex() || type_reg >= 8));
    return status_after_exit();
  }
  require_vmx_root();
  if (!m_vmxon) return VmxStatus::FailInvalid;
  charge(m_p.invept_latency);
  // SDM Vol. 3C, 29.4.3.1 (mmu::Mmu::invept).
  ftlb_flush();
  if (!m_mmu.invept(type, eptp)) return vm_fail(vmerr::kInvalidOperandInvept);
  return VmxStatus::Succeed;
}

VmxStatus Core::invvpid(unsigned type, std::uint16_t vpid, std::uint64_t la, unsigned type_reg,
                        const insn::MemOperand& m) {
  boundary();
  retire(1);
  if (m_non_root) {
    // INVVPID r64, m128 (66 0F 38 81 /r): the type in reg2, the descriptor
    // (VPID, linear address) in memory.
    m_regs[type_reg] = type;
    vmx_exit(ExitReason::Invvpid, m.qualification(), m.info() | insn::reg2(type_reg),
             4 + m.modrm_bytes() + (m.rex() || type_reg >= 8));
    return status_after_exit();
  }
  require_vmx_root();
  if (!m_vmxon) return VmxStatus::FailInvalid;
  charge(m_p.invept_latency);
  // SDM Vol. 3C, 31.3 INVVPID (mmu::Mmu::invvpid).
  ftlb_flush();
  if (!m_mmu.invvpid(type, vpid, la)) return vm_fail(vmerr::kInvalidOperandInvept);
  return VmxStatus::Succeed;
}

VmxStatus Core::vmptrst(const insn::MemOperand& m) {
  boundary();
  retire(1);
  if (m_non_root) {
    vmx_exit(ExitReason::Vmptrst, m.qualification(), m.info(), 2 + m.modrm_bytes() + m.rex());  // 0F C7 /7
    return status_after_exit();
  }
  require_vmx_root();
  if (!m_vmxon) return VmxStatus::FailInvalid;
  charge(m_p.vmread_latency);
  // The current-VMCS pointer (all ones when none is current) to the operand.
  store(operand_address(m), m_vmcs ? m_vmcs_pa : ~0ull);
  return VmxStatus::Succeed;
}

VmxStatus Core::vmxoff() {
  boundary();
  retire(1);
  if (m_non_root) {
    vmx_exit(ExitReason::Vmxoff, 0, 0, 3);  // 0F 01 C4
    return status_after_exit();
  }
  require_vmx_root();
  if (!m_vmxon) return VmxStatus::FailInvalid;
  // SDM Vol. 3C, 31.3 VMXOFF: leaves VMX operation; the current VMCS is
  // no longer current.
  m_vmxon = false;
  m_vmxon_region = 0;
  m_vmcs = nullptr;
  m_vmcs_pa = ~0ull;
  return VmxStatus::Succeed;
}

void Core::vmfunc(std::uint32_t function, std::uint32_t index) {
  try {
    VMX_ON_EXECUTING_CORE(vmfunc(function, index));
    boundary();
    retire(1);
    // SDM Vol. 3C, 26.5.6: #UD outside non-root operation or without
    // "enable VM functions"; otherwise a VM function that is not enabled
    // (EAX >= 64 or its VM-function-controls bit clear) exits with reason
    // 59. No VM function is implemented, so an enabled one is #UD too.
    const bool enabled = m_non_root && (m_proc & proc::kActivateSecondaryControls) && (m_proc2 & proc2::kEnableVmFunctions);
    if (!enabled) {
      raise_exception(vec::kInvalidOpcode, 0, false);
      return;
    }
    const std::uint64_t controls = m_vmcs->get(field::kVmFunctionControls);
    if (function >= 64 || !((controls >> function) & 1)) {
      m_regs[Regs::rax] = function;
      m_regs[Regs::rcx] = index;
      vmx_exit(ExitReason::Vmfunc, 0, 0, 3);  // 0F 01 D4
      return;
    }
    raise_exception(vec::kInvalidOpcode, 0, false);
  } catch (const CoreMoved&) {  // resumed on another core: the operation starts over there
    return t_current->vmfunc(function, index);
  }
}

std::uint64_t Core::operand_address(const insn::MemOperand& m) const {
  std::uint64_t a = static_cast<std::uint64_t>(std::int64_t{m.disp});
  if (m.base != insn::kNoReg) a += m_regs[m.base];
  if (m.index != insn::kNoReg) a += m_regs[m.index] << m.scale;
  return a;  // segment bases are 0 in 64-bit mode (FS/GS bases are not modelled)
}

void Core::vmx_exit(ExitReason reason, std::uint64_t qualification, std::uint32_t info, unsigned length) {
  m_exit_insn_info = info;
  m_exit_insn_len = length;
  vm_exit(reason, qualification);
}

VmExit Core::vmlaunch() { return vm_entry(true); }
VmExit Core::vmresume() { return vm_entry(false); }

void Core::flush_vpid_on_transition() {
  // Without VPIDs, every VM entry and exit invalidates the mappings of
  // VPID 0 (SDM Vol. 3C, 28.3.3.3).
  if (!(m_proc2 & proc2::kEnableVpid) || !(m_proc & proc::kActivateSecondaryControls)) {
    m_mmu.flush_vpid0();
    ftlb_flush();
  }
}

VmExit Core::vm_entry(bool launch) {
  boundary();
  retire(1);
  if (m_non_root) {
    vmx_exit(launch ? ExitReason::Vmlaunch : ExitReason::Vmresume, 0, 0, 3);  // 0F 01 C2 / C3
    // Resumed either after the instruction, which failed (VMfail in
    // RFLAGS), or at the host RIP of the VMCS its VMM emulates, after an
    // exit of that VMCS's guest (RFLAGS cleared by the exit, SDM 28.5.3).
    const VmxStatus st = status_after_exit();
    return {st, st == VmxStatus::Succeed ? VmExit::kReasonInVmcs : std::uint16_t{0}};
  }
  require_vmx_root();
  if (!m_vmxon || !m_vmcs) return {vm_fail_invalid(), 0};
  if (launch && m_vmcs->launched()) return {vm_fail(vmerr::kVmlaunchNonClear), 0};
  if (!launch && !m_vmcs->launched()) return {vm_fail(vmerr::kVmresumeNonLaunched), 0};

  // Checks on controls and host state (SDM Vol. 3C, 27.2), as far as the
  // model relies on them.
  Vmcs& v = *m_vmcs;
  std::uint32_t proc_ctl = static_cast<std::uint32_t>(v.get(field::kProcBasedControls));
  std::uint32_t proc2_ctl = (proc_ctl & proc::kActivateSecondaryControls)
                                ? static_cast<std::uint32_t>(v.get(field::kSecondaryControls))
                                : 0;
  std::uint64_t eptp = v.get(field::kEptPointer);
  if ((proc2_ctl & proc2::kEnableEpt) &&
      (((eptp & 7) != mmu::ept::kEptpWb) || (mmu::ept::eptp_levels(eptp) != 4 && mmu::ept::eptp_levels(eptp) != 5) ||
       !m_w.mem->contains(eptp & mmu::ept::kAddrMask, 4096)))
    return {vm_fail(vmerr::kEntryInvalidControls), 0};
  if ((proc2_ctl & proc2::kEnableVpid) && v.get(field::kVpid) == 0)
    return {vm_fail(vmerr::kEntryInvalidControls), 0};
  // An encryption key ID needs the engine to hold that key, and EPT: the
  // C-bit is taken out of guest-physical addresses before EPT translates
  // them (as SEV requires nested paging, AMD64 APM Vol. 2, 15.34.3).
  const std::uint64_t key_id = v.get(field::kEncryptionKeyId);
  if (key_id && (!m_w.crypt || key_id > m_w.crypt->params().key_ids || !(proc2_ctl & proc2::kEnableEpt)))
    return {vm_fail(vmerr::kEntryInvalidControls), 0};
  // SDM Vol. 3C, 27.2.1.1: "mode-based execute control for EPT" requires
  // "enable EPT".
  if ((proc2_ctl & proc2::kModeBasedExecute) && !(proc2_ctl & proc2::kEnableEpt))
    return {vm_fail(vmerr::kEntryInvalidControls), 0};
  // SDM Vol. 3C, 27.2.1.1: "enable PML" needs "enable EPT", and the PML
  // address must be 4 KiB aligned (and in memory).
  if ((proc2_ctl & proc2::kEnablePml) &&
      (!(proc2_ctl & proc2::kEnableEpt) || (v.get(field::kPmlAddress) & 0xFFF) ||
       !m_w.mem->contains(v.get(field::kPmlAddress), 4096)))
    return {vm_fail(vmerr::kEntryInvalidControls), 0};
  // APIC virtualization and posted interrupts (SDM Vol. 3C, 27.2.1.1).
  {
    const auto pin_ctl = static_cast<std::uint32_t>(v.get(field::kPinBasedControls));
    const bool tpr_shadow = proc_ctl & proc::kUseTprShadow;
    const std::uint64_t vapic_pa = v.get(field::kVirtualApicPage);
    const std::uint64_t pid = v.get(field::kPostedIntrDesc);
    bool bad = false;
    if (tpr_shadow && ((vapic_pa & 0xFFF) || !m_w.mem->contains(vapic_pa, 4096))) bad = true;
    if (!tpr_shadow && (proc2_ctl & (proc2::kVirtualizeX2apic | proc2::kApicRegisterVirtualization |
                                     proc2::kVirtualInterruptDelivery)))
      bad = true;
    if ((proc2_ctl & proc2::kVirtualizeX2apic) && (proc2_ctl & proc2::kVirtualizeApicAccesses)) bad = true;
    if ((proc2_ctl & proc2::kVirtualInterruptDelivery) && !(pin_ctl & pin::kExternalInterruptExiting)) bad = true;
    if ((pin_ctl & pin::kPostedInterrupts) &&
        (!(proc2_ctl & proc2::kVirtualInterruptDelivery) ||
         !(v.get(field::kExitControls) & exitctl::kAckInterruptOnExit) || (v.get(field::kPostedIntrNv) & 0xFF00) ||
         (pid & 0x3F) || !m_w.mem->contains(pid, 64)))
      bad = true;
    if (bad) return {vm_fail(vmerr::kEntryInvalidControls), 0};
  }
  if (!v.get(field::kHostRip)) return {vm_fail(vmerr::kEntryInvalidHostState), 0};
  // The guest RIP names the guest context; advanced past the exiting
  // operation (RIP + the exit's instruction length, as a hypervisor that
  // emulated it does), it completes that operation instead of retrying it.
  const std::uint64_t rip = v.get(field::kGuestRip);
  auto* guest = reinterpret_cast<sim::Fiber*>(static_cast<std::uintptr_t>(rip & ~std::uint64_t{alignof(sim::Fiber) - 1}));
  std::uint32_t inj_check = static_cast<std::uint32_t>(v.get(field::kEntryIntrInfo));
  // SDM Vol. 3C, 27.3.1.4: RFLAGS.IF must be 1 when an external interrupt is
  // injected.
  bool bad_injection = (inj_check & intr::kValid) && (inj_check & (7u << 8)) == intr::kTypeExternal &&
                       !(v.get(field::kGuestRflags) & kRflagsIf);
  // "Load IA32_PERF_GLOBAL_CTRL": the guest field's reserved bits must be
  // clear (SDM Vol. 3C, 27.3.1.1).
  const bool load_perf = v.get(field::kEntryControls) & entryctl::kLoadPerfGlobalCtrl;
  if (load_perf && (v.get(field::kGuestPerfGlobalCtrl) & ~pmu::Pmu::kCounterBits)) bad_injection = true;
  // 27.3.1.5: with "VMCS shadowing" the VMCS link pointer is all ones or a
  // shadow VMCS (aligned, in memory, the revision with the shadow indicator).
  Vmcs* shadow = nullptr;
  bool bad_link = false;
  if (proc2_ctl & proc2::kVmcsShadowing) {
    const std::uint64_t link = v.get(field::kVmcsLinkPointer);
    if (link != ~0ull) {
      bad_link = (link & 0xFFF) || !m_w.mem->contains(link, 4096) ||
                 m_w.mem->read(link, 4) != (kVmcsRevision | kShadowVmcsIndicator);
      if (!bad_link) shadow = &m_w.vmcs_store->at(link);
    }
  }
  // The VM-entry MSR-load list, checked here and loaded after the guest
  // state (SDM Vol. 3C, 27.4); a bad entry fails the entry with exit reason
  // 34 and the entry's 1-based index as qualification.
  const auto entry_msrs = static_cast<std::uint32_t>(v.get(field::kEntryMsrLoadCount));
  if (entry_msrs) {
    if (const std::uint32_t bad = msr_load_list(v.get(field::kEntryMsrLoadAddr), entry_msrs, false)) {
      v.set(field::kExitReason, (1u << 31) | static_cast<std::uint32_t>(ExitReason::EntryFailMsrLoading));
      v.set(field::kExitQualification, bad);
      return {VmxStatus::Succeed, static_cast<std::uint16_t>(ExitReason::EntryFailMsrLoading)};
    }
  }
  if (!guest || guest->finished() || bad_injection || bad_link) {
    // Invalid guest state is a VM-entry failure reported as an exit (reason 33 with bit 31 set).
    v.set(field::kExitReason, (1u << 31) | static_cast<std::uint32_t>(ExitReason::EntryFailGuestState));
    return {VmxStatus::Succeed, static_cast<std::uint16_t>(ExitReason::EntryFailGuestState)};
  }

  drain_stores();  // VM entries serialize (SDM Vol. 3A, 8.3)
  charge(m_p.vm_entry_latency);
  // Save the host state this model switches and load the guest's.
  v.set(field::kHostCr0, m_cr0);
  v.set(field::kHostCr3, m_cr3);
  v.set(field::kHostCr4, m_cr4);
  v.set(field::kHostIdtrBase, code_address(m_idt));
  m_pin = static_cast<std::uint32_t>(v.get(field::kPinBasedControls));
  m_proc = proc_ctl;
  m_proc2 = proc2_ctl;
  m_shadow = shadow;
  m_exc_bitmap = static_cast<std::uint32_t>(v.get(field::kExceptionBitmap));
  m_vpid = (m_proc2 & proc2::kEnableVpid) ? static_cast<std::uint16_t>(v.get(field::kVpid)) : 0;
  m_ept = m_proc2 & proc2::kEnableEpt;
  m_eptp = eptp;
  m_crypt_key = models::key_bits(static_cast<unsigned>(key_id));
  m_c_bit = key_id ? std::uint64_t{1} << m_w.crypt->params().c_bit : 0;
  if (m_proc2 & proc2::kEnablePml) {
    m_pml_addr = v.get(field::kPmlAddress);
    m_pml_index = static_cast<std::uint16_t>(v.get(field::kGuestPmlIndex));
  }
  m_vid = m_proc2 & proc2::kVirtualInterruptDelivery;
  m_vapic = v.get(field::kVirtualApicPage);
  m_pi_desc = v.get(field::kPostedIntrDesc);
  m_pi_nv = static_cast<std::uint8_t>(v.get(field::kPostedIntrNv));
  if (m_vid) {
    // Guest interrupt status is loaded with the guest state; pending virtual
    // interrupts are evaluated at entry (SDM Vol. 3C, 28.3.2.5, 30.2.1):
    // recompute_next_event below makes the first boundary deliver one.
    const std::uint64_t gis = v.get(field::kGuestIntrStatus);
    m_rvi = static_cast<std::uint8_t>(gis & 0xFF);
    m_svi = static_cast<std::uint8_t>(gis >> 8);
  }
  flush_vpid_on_transition();
  pmu_sync();
  if (load_perf) {
    m_pmu.load_global_ctrl(v.get(field::kGuestPerfGlobalCtrl));  // SDM Vol. 3C, 27.3.2.1
    pmu_rearm();
  }
  m_cr0 = v.get(field::kGuestCr0);
  m_cr3 = v.get(field::kGuestCr3);
  m_cr4 = v.get(field::kGuestCr4);
  m_efer = v.get(field::kGuestIa32Efer);
  m_idt = reinterpret_cast<InterruptHandler*>(static_cast<std::uintptr_t>(v.get(field::kGuestIdtrBase)));
  m_if = v.get(field::kGuestRflags) & kRflagsIf;
  m_ac = v.get(field::kGuestRflags) & kRflagsAc;
  m_vmx_flags = static_cast<std::uint8_t>(v.get(field::kGuestRflags) & (kRflagsCf | kRflagsZf));
  m_cpl = static_cast<std::uint8_t>((v.get(field::kGuestSsAccessRights) >> 5) & 3);
  m_non_root = true;
  m_op_done = (rip & (alignof(sim::Fiber) - 1)) != 0;
  update_context();
  if (entry_msrs) msr_load_list(v.get(field::kEntryMsrLoadAddr), entry_msrs, true);
  if (launch) v.set_launched(true);

  std::uint32_t inj = static_cast<std::uint32_t>(v.get(field::kEntryIntrInfo));
  if (inj & intr::kValid) {
    m_pending_injection = inj;
    m_pending_injection_error = static_cast<std::uint32_t>(v.get(field::kEntryExceptionErrorCode));
    m_event_pending = true;
    v.set(field::kEntryIntrInfo, inj & ~intr::kValid);  // cleared by a successful entry (SDM 27.2... 26.6)
  }
  m_preempt_deadline = (m_pin & pin::kPreemptionTimer) ? m_now + v.get(field::kPreemptionTimerValue) : UINT64_MAX;
  // Monitor trap flag: a guest resuming at a boundary executes its next
  // operation without passing another, so the exit comes at the first
  // boundary after entry; one resuming inside an operation (after an
  // instruction or fault exit) or starting afresh passes one boundary before
  // its first operation completes, so the exit comes at the second.
  m_mtf_boundaries = (m_proc & proc::kMonitorTrapFlag) ? (!launch && v.exited_at_boundary() ? 1 : 0) : -1;
  ++m_stats.vm_entries;
  if ((m_vcpu_listener = v.observer())) m_events.attach(*m_vcpu_listener);
  update_retire_batch();
  if (m_events.wants(events::kVmEntry)) [[unlikely]] m_events.vm_entry({m_vmcs_pa, m_now, m_vpid, launch});
  recompute_next_event();

  switch_fiber(*guest);

  // Back in the hypervisor's context after a VM exit.
  return {VmxStatus::Succeed, static_cast<std::uint16_t>(v.get(field::kExitReason) & 0xFFFF)};
}

void Core::vm_exit(ExitReason reason, std::uint64_t qualification, std::uint64_t gla, std::uint64_t gpa,
                   std::uint32_t intr_info, std::uint32_t intr_error) {
  Vmcs& v = *m_vmcs;
  auto r = static_cast<unsigned>(reason);
  flush_retired();  // the guest's instructions, before the observer detaches
  m_retire_batch = false;
  ++m_stats.vm_exits;
  if (!m_exit_counters[r])
    m_exit_counters[r] = &m_exit_group->make<stats::Counter>(exit_reason_name(r), "exits", "VM exits for this reason");
  ++*m_exit_counters[r];
  if (m_events.wants(events::kVmExit)) [[unlikely]]
    m_events.vm_exit({m_vmcs_pa, m_now, qualification, static_cast<std::uint16_t>(r), m_vpid});
  if (m_vcpu_listener) {
    m_events.detach(*m_vcpu_listener);
    m_vcpu_listener = nullptr;
  }

  v.set_exited_at_boundary(m_boundary_exit);
  const bool retry_elsewhere = m_boundary_exit || reason == ExitReason::EptViolation;
  m_boundary_exit = false;
  // Exit information (SDM Vol. 3C, 28.2).
  v.set(field::kExitReason, r);
  v.set(field::kExitQualification, qualification);
  v.set(field::kGuestLinearAddress, gla);
  v.set(field::kGuestPhysicalAddress, gpa);
  v.set(field::kExitIntrInfo, intr_info);
  v.set(field::kExitIntrErrorCode, intr_error);
  v.set(field::kExitInstructionLength, m_exit_insn_len);
  // Decode assist for memory operations (the model's stand-in for the
  // instruction decoding a hypervisor does to emulate MMIO): operand size in
  // bytes in bits 3:0 of the VM-exit instruction-information field, bit 4
  // set for a write, and the store's data in RAX (a MOV's source register).
  if (reason == ExitReason::EptViolation || reason == ExitReason::EptMisconfig) {
    const bool write = m_op_size & kOpWrite;
    v.set(field::kVmxInstructionInfo, (m_op_size & 0xF) | (write ? 0x10u : 0u));
    if (write) m_regs[Regs::rax] = m_op_value;
  } else {
    v.set(field::kVmxInstructionInfo, m_exit_insn_info);
  }
  m_exit_insn_len = 1;
  m_exit_insn_info = 0;
  // Guest state (SDM Vol. 3C, 28.3). RIP designates the guest context that
  // resumes where the exiting operation left off.
  v.set(field::kGuestCr0, m_cr0);
  v.set(field::kGuestCr3, m_cr3);
  v.set(field::kGuestCr4, m_cr4);
  v.set(field::kGuestIa32Efer, m_efer);
  v.set(field::kGuestIdtrBase, code_address(m_idt));
  v.set(field::kGuestRflags, kRflagsFixed | (m_if ? kRflagsIf : 0) | (m_ac ? kRflagsAc : 0) | m_vmx_flags);
  v.set(field::kGuestSsAccessRights, (v.get(field::kGuestSsAccessRights) & ~0x60ull) | (std::uint64_t{m_cpl} << 5));
  v.set(field::kGuestRip, code_address(m_current));
  if (m_pin & pin::kPreemptionTimer)
    v.set(field::kPreemptionTimerValue, m_preempt_deadline > m_now ? m_preempt_deadline - m_now : 0);
  if (m_vid) v.set(field::kGuestIntrStatus, m_rvi | (std::uint64_t{m_svi} << 8));
  m_vid = false;
  if (m_proc2 & proc2::kEnablePml) v.set(field::kGuestPmlIndex, m_pml_index);

  drain_stores();  // VM exits serialize (SDM Vol. 3A, 8.3)
  // The guest's counting ends with the exit: IA32_PERF_GLOBAL_CTRL is
  // saved and the host's loaded (SDM Vol. 3C, 28.3.1, 28.5.1) before the
  // exit's own cycles.
  pmu_sync();
  {
    const auto exit_ctl = static_cast<std::uint32_t>(v.get(field::kExitControls));
    if (exit_ctl & exitctl::kSavePerfGlobalCtrl) v.set(field::kGuestPerfGlobalCtrl, m_pmu.global_ctrl());
    if (exit_ctl & exitctl::kLoadPerfGlobalCtrl) {
      m_pmu.load_global_ctrl(v.get(field::kHostPerfGlobalCtrl));
      pmu_rearm();
    }
  }
  charge(m_p.vm_exit_latency);
  // Host state (SDM Vol. 3C, 28.5): RFLAGS is cleared but for bit 1, so
  // interrupts are off in the hypervisor until it enables them.
  m_non_root = false;
  flush_vpid_on_transition();
  pmu_sync();
  m_cr0 = v.get(field::kHostCr0);
  m_cr3 = v.get(field::kHostCr3);
  m_cr4 = v.get(field::kHostCr4);
  m_idt = reinterpret_cast<InterruptHandler*>(static_cast<std::uintptr_t>(v.get(field::kHostIdtrBase)));
  m_cpl = 0;
  m_if = false;
  m_ac = false;
  m_vmx_flags = 0;
  m_preempt_deadline = UINT64_MAX;
  m_mtf_boundaries = -1;
  update_context();
  // The VM-exit MSR-load list (SDM Vol. 3C, 28.6); a bad entry is a VMX
  // abort (28.7), which the model reports as a simulator error.
  if (const auto exit_msrs = static_cast<std::uint32_t>(v.get(field::kExitMsrLoadCount)))
    if (const std::uint32_t bad = msr_load_list(v.get(field::kExitMsrLoadAddr), exit_msrs, true))
      throw SimulationError(fmt::format("{}: VMX abort: VM-exit MSR-load entry {} cannot be loaded", name(), bad));
  recompute_next_event();

  auto* host = reinterpret_cast<sim::Fiber*>(static_cast<std::uintptr_t>(v.get(field::kHostRip)));
  switch_fiber(*host);
  // Resumed by a later VM entry, on this core or, after a migration, on
  // another: an injected event is delivered now, before the exiting
  // operation completes or retries.
  Core& now = current();
  now.m_sti_shadow = false;
  now.deliver_injected_event(/*skips_op=*/!retry_elsewhere);
  // Resumed on another core with the exiting operation not completed (an
  // exit at an operation boundary, or an EPT violation to retry): it starts
  // over on the executing core (caught by the operation's entry point),
  // where its translation and memory are. Nothing of it took effect here.
  if (&now != this && !now.m_op_done && retry_elsewhere) throw CoreMoved{};
  // With virtual-interrupt delivery, a notification requested while the
  // vCPU was out (posted-interrupt processing) and a virtual interrupt
  // recognized at entry (SDM Vol. 3C, 30.2.1) are taken before the guest's
  // next instruction.
  if (now.m_vid) {
    // Only the notification is processed here, as it exits no further. Any
    // other pending external interrupt exits at the next boundary: exiting
    // from here would nest this exit's frames inside the next one's, without
    // bound when every entry finds an interrupt pending (a vCPU whose cap
    // budget is shorter than an exit).
    const int v = now.m_lapic.deliverable();
    if (v >= 0 && (now.m_pin & pin::kPostedInterrupts) && v == now.m_pi_nv && now.m_now >= now.m_interrupt_sent)
      now.take_pending_interrupt();
    if (now.m_non_root && now.m_if && now.virtual_interrupt_recognized()) now.deliver_virtual_interrupt();
    now.recompute_next_event();
  }
}

void Core::observe_vmcs(std::uint64_t vmcs_pa, events::Listener* obs) { m_w.vmcs_store->at(vmcs_pa).set_observer(obs); }

}  // namespace vmx::cpu
