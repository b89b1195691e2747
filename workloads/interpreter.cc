// interpreter (S21, "emulation as universal simulation"): a guest program
// that interprets another machine's code, RV32I, from a program image in
// guest memory (docs/pmu.md, "S21: an interpreter").
//
// The guest program writes the image (assembled by workloads/rv32i.h) into
// the interpreted machine's memory, a region of its own, with stores. Its
// interpreter is a decode-and-dispatch loop whose every step is made of the
// simulated core's operations:
//
//   fetch     bounds and alignment checks, a 4-byte load of the word at pc
//   decode    shifts and masks that take the fields apart (computes)
//   dispatch  a load of the handler from a 128-entry table in guest memory
//             indexed by the opcode, the indirect jump, the loop's step count
//   execute   the handler: register reads and the write-back are loads and
//             stores of a 32-word register file in guest memory; the
//             interpreted program's loads and stores are loads and stores
//             of its memory; the arithmetic is computes
//
// The same program then runs "natively": each RV32I instruction as one
// simulated instruction (a load or store of the same data, or one compute),
// as an ideal one-to-one translation would execute it. The slowdown is the
// interpreted run's cycles over the native run's, both read with RDTSC.
//
// An interpreted program that misbehaves (an undefined instruction, an
// access outside its memory, a jump to a misaligned or outside address) is
// stopped by the interpreter's own checks, with the reason counted: it
// never reaches outside the interpreted machine.
#include <array>
#include <stdexcept>

#include "cpu/core.h"
#include "workloads/rv32i.h"
#include "workloads/workload.h"

namespace vmx::workloads {

namespace {

namespace rv = rv32i;

// Where the program's data live in the interpreted machine's memory (code
// from 0; the array after the first 4 KiB).
constexpr std::uint32_t kResultAddr = 0x400;
constexpr std::uint32_t kDataAddr = 0x1000;

// The interpreter's state page in guest memory: the register file x0-x31
// (4 bytes each) and the dispatch table (one 8-byte handler per opcode).
constexpr std::uint64_t kRegs = 0;
constexpr std::uint64_t kTable = 0x400;

// Handlers, as the dispatch table names them (a jump table's entries).
enum Handler : std::uint64_t { kIllegal, kLui, kAuipc, kJal, kJalr, kBranch, kLoadH, kStoreH, kOpImm, kOp, kFence, kSystem };

// Stages, the phases the guest's profiler attributes samples to.
enum Stage : unsigned { kFetch, kDecode, kDispatch, kExecute, kNative };

// Instructions of each step besides its loads and stores. Counted on the
// x86-64 code a C compiler makes of a switch-dispatched interpreter loop (a
// decode-and-dispatch interpreter: Smith and Nair, "Virtual Machines",
// Morgan Kaufmann 2005, section 2.1, put such an interpreter at tens of host
// instructions per interpreted instruction).
constexpr std::uint64_t kFetchCheck = 4;    // pc below the memory size, pc 4-aligned: two compare-and-branch pairs
constexpr std::uint64_t kDecodeFields = 9;  // opcode (AND), then rd, funct3, rs1, rs2 (shift and AND each)
constexpr std::uint64_t kDispatchJump = 1;  // the indirect jump through the loaded table entry
constexpr std::uint64_t kLoopCheck = 3;     // step count increment, compare with the limit, branch back
constexpr std::uint64_t kSubDispatch = 2;   // a handler's switch on funct3: compare and jump
constexpr std::uint64_t kRdCheck = 2;       // rd == 0 test and branch around the write-back
constexpr std::uint64_t kBoundsCheck = 3;   // effective address add, compare with the memory size, branch
constexpr std::uint64_t kAlu = 1;           // the operation itself; also the pc update

// The immediate's extraction by format (shifts, masks, ORs of its pieces).
std::uint64_t immediate_cost(std::uint32_t opcode) {
  switch (opcode) {
    case rv::kLoad: case rv::kOpImm: case rv::kJalr: case rv::kMiscMem: case rv::kSystem: return 1;  // SAR
    case rv::kStore: return 4;
    case rv::kBranch: case rv::kJal: return 8;
    case rv::kLui: case rv::kAuipc: return 1;  // AND
    default: return 0;
  }
}

enum class Stop { Halt, Illegal, AccessFault, StepLimit };

/// The simulated core's operations, counted as the program issues them.
struct Ops {
  guest::Thread& t;
  std::uint64_t issued = 0;
  void compute(std::uint64_t n) {
    if (!n) return;
    t.compute(n);
    issued += n;
  }
  std::uint64_t load(std::uint64_t va, unsigned size) {
    ++issued;
    return t.load(va, size);
  }
  void store(std::uint64_t va, std::uint64_t v, unsigned size) {
    ++issued;
    t.store(va, v, size);
  }
};

std::vector<std::uint32_t> assemble(const InterpreterParams& p) {
  using namespace rv;
  Assembler a;
  const auto n = static_cast<std::uint32_t>(p.elements);
  a.li(a3, static_cast<std::uint32_t>(p.passes));
  a.li(t0, kDataAddr);
  a.li(a1, n);
  a.li(t1, static_cast<std::uint32_t>(p.data_seed));
  const std::uint32_t fill = a.here();  // xorshift32 (Marsaglia 2003: 13, 17, 5)
  a.slli(t3, t1, 13);
  a.xor_(t1, t1, t3);
  a.srli(t3, t1, 17);
  a.xor_(t1, t1, t3);
  a.slli(t3, t1, 5);
  a.xor_(t1, t1, t3);
  a.sw(t1, t0, 0);
  a.addi(t0, t0, 4);
  a.addi(a1, a1, -1);
  a.bne(a1, zero, fill);
  if (p.program == "illegal") a.word(0xFFFFFFFF);  // opcode 0x7F: no RV32I instruction
  if (p.program == "out_of_range") {
    a.lui(t2, 0x80000);  // 0x80000000, far beyond the interpreted memory
    a.lw(t3, t2, 0);
  }
  a.addi(a0, zero, 0);
  a.addi(a2, zero, 0);
  const std::uint32_t pass = a.here();
  a.li(t0, kDataAddr);
  a.li(a1, n);
  const std::uint32_t sum = a.here();
  a.lw(t3, t0, 0);
  a.add(a0, a0, t3);
  a.add(a2, a2, a0);
  a.addi(t0, t0, 4);
  a.addi(a1, a1, -1);
  a.bne(a1, zero, sum);
  a.addi(a3, a3, -1);
  a.bne(a3, zero, pass);
  a.xor_(a0, a0, a2);
  a.sw(a0, zero, static_cast<std::int32_t>(kResultAddr));
  a.ecall();
  if (a.here() > kResultAddr) throw std::logic_error("interpreter: program image overlaps its result word");
  return a.words();
}

class Interpreter final : public Workload {
 public:
  Interpreter(const InterpreterParams& p, stats::Group* g, const std::string& n)
      : Workload(g, n), m_p(p), m_image(assemble(p)), m_mem_size(kDataAddr + 4 * p.elements) {}
  bool finite() const override { return true; }

  void run(guest::Thread& t) override {
    const std::uint64_t setup_start = t.cpu().rdtsc();
    // The interpreted machine's memory and the interpreter's state page.
    const std::uint64_t mem = t.mmap(m_mem_size);
    const std::uint64_t state = t.mmap(4096);
    if (!mem || !state) throw std::runtime_error("interpreter: mmap failed");
    // Touch every page first, so that demand paging (the guest kernel's
    // and the hypervisor's EPT faults) stays outside both measured runs.
    for (std::uint64_t off = 0; off < m_mem_size; off += 4096) t.store(mem + off, 0, 4);
    // Load the program image, the dispatch table and a zeroed register file
    // with stores, a loop step each.
    for (std::size_t i = 0; i < m_image.size(); ++i) {
      t.store(mem + 4 * i, m_image[i], 4);
      t.compute(2);
    }
    std::array<Handler, 128> handlers{};
    handlers[rv::kLui] = kLui;
    handlers[rv::kAuipc] = kAuipc;
    handlers[rv::kJal] = kJal;
    handlers[rv::kJalr] = kJalr;
    handlers[rv::kBranch] = kBranch;
    handlers[rv::kLoad] = kLoadH;
    handlers[rv::kStore] = kStoreH;
    handlers[rv::kOpImm] = kOpImm;
    handlers[rv::kOp] = kOp;
    handlers[rv::kMiscMem] = kFence;
    handlers[rv::kSystem] = kSystem;
    for (std::uint64_t op = 0; op < handlers.size(); ++op) {
      t.store(state + kTable + 8 * op, handlers[op]);
      t.compute(2);
    }
    for (unsigned r = 0; r < 32; ++r) t.store(state + kRegs + 4 * r, 0, 4);

    m_setup_cycles += t.cpu().rdtsc() - setup_start;
    started(t);
    const bool perf = m_p.perf != "none" &&
                      t.perf_open(m_p.event, m_p.perf == "sample" ? m_p.sample_period : 0);
    if (perf) ++m_available;
    constexpr std::uint64_t kMask = (1ull << 48) - 1;  // 48-bit counters
    std::array<std::uint64_t, 3> c0{}, c1{}, c2{};
    auto read = [&](std::array<std::uint64_t, 3>& c) {
      if (perf && m_p.perf == "count")
        for (unsigned i = 0; i < 3; ++i) c[i] = t.perf_read(i);
    };

    // The interpreted run.
    read(c0);
    std::uint64_t tsc = t.cpu().rdtsc();
    Ops ops{t};
    std::uint64_t steps = 0;
    const Stop stop = interpret(ops, mem, state, steps);
    const std::uint64_t interp_cycles = t.cpu().rdtsc() - tsc;
    read(c1);
    // The result as the interpreted machine left it: a0 of its register file.
    const std::uint64_t result = t.load(state + kRegs + 4 * rv::a0, 4);

    // The same program, natively.
    t.set_phase(kNative);
    tsc = t.cpu().rdtsc();
    Ops native{t};
    std::uint64_t native_steps = 0;
    std::uint32_t native_a0 = 0;
    run_native(native, mem, native_steps, native_a0);
    const std::uint64_t native_cycles = t.cpu().rdtsc() - tsc;
    read(c2);
    if (perf) t.perf_close();

    m_interpreted += steps;
    m_stats.operations += steps;
    m_simulated += ops.issued;
    m_native += native.issued;
    m_interp_cycles += interp_cycles;
    m_native_cycles += native_cycles;
    (stop == Stop::Halt ? m_halted : stop == Stop::Illegal ? m_illegal : stop == Stop::AccessFault ? m_access_fault : m_step_limit) += 1;
    m_result.set(static_cast<double>(result));
    m_native_result.set(static_cast<double>(native_a0));
    if (steps) m_per_interpreted.set(static_cast<double>(ops.issued) / static_cast<double>(steps));
    if (native_cycles) m_slowdown.set(static_cast<double>(interp_cycles) / static_cast<double>(native_cycles));
    if (perf && m_p.perf == "count") {
      m_counted_instructions += (c1[0] - c0[0]) & kMask;
      m_counted_cycles += (c1[1] - c0[1]) & kMask;
      m_counted_events += (c1[2] - c0[2]) & kMask;
      m_native_counted_instructions += (c2[0] - c1[0]) & kMask;
      m_native_counted_cycles += (c2[1] - c1[1]) & kMask;
      m_native_counted_events += (c2[2] - c1[2]) & kMask;
    }
    if (perf && m_p.perf == "sample") {
      const auto& s = t.perf_samples();
      m_samples_fetch += s[kFetch];
      m_samples_decode += s[kDecode];
      m_samples_dispatch += s[kDispatch];
      m_samples_execute += s[kExecute];
      m_samples_native += s[kNative];
    }
    finished(t);
  }

 private:
  Stop fault(Stop why, std::uint32_t pc, std::uint64_t address) {
    m_fault_pc.set(static_cast<double>(pc));
    m_fault_address.set(static_cast<double>(address));
    return why;
  }

  bool in_memory(std::uint64_t addr, unsigned size) const { return addr + size <= m_mem_size; }

  // The decode-and-dispatch loop; `steps` counts retired interpreted
  // instructions (the faulting one is not).
  Stop interpret(Ops& o, std::uint64_t mem, std::uint64_t state, std::uint64_t& steps) {
    guest::Thread& t = o.t;
    auto reg = [&](std::uint32_t r) { return static_cast<std::uint32_t>(o.load(state + kRegs + 4 * r, 4)); };
    auto write = [&](std::uint32_t r, std::uint32_t v) {
      o.compute(kRdCheck);
      if (r) o.store(state + kRegs + 4 * r, v, 4);
    };
    std::uint32_t pc = 0;
    for (;;) {
      if (m_p.max_steps && steps == m_p.max_steps) return Stop::StepLimit;
      t.set_phase(kFetch);
      o.compute(kFetchCheck);
      if (!in_memory(pc, 4) || (pc & 3)) return fault(Stop::AccessFault, pc, pc);
      const auto w = static_cast<std::uint32_t>(o.load(mem + pc, 4));
      t.set_phase(kDecode);
      const rv::Decoded d = rv::decode(w);
      o.compute(kDecodeFields + immediate_cost(d.opcode));
      t.set_phase(kDispatch);
      const std::uint64_t handler = o.load(state + kTable + 8 * d.opcode, 8);
      o.compute(kDispatchJump + kLoopCheck);
      t.set_phase(kExecute);
      const auto imm = static_cast<std::uint32_t>(d.imm);
      std::uint32_t next = pc + 4;
      bool ok = true;
      switch (handler) {
        case kLui: o.compute(kAlu); write(d.rd, imm); break;
        case kAuipc: o.compute(kAlu); write(d.rd, pc + imm); break;
        case kJal: o.compute(kAlu); write(d.rd, pc + 4); next = pc + imm; break;
        case kJalr: {
          if (d.funct3) return fault(Stop::Illegal, pc, w);
          const std::uint32_t base = reg(d.rs1);
          o.compute(2 * kAlu);  // add, clear bit 0
          write(d.rd, pc + 4);
          next = (base + imm) & ~1u;
          break;
        }
        case kBranch: {
          o.compute(kSubDispatch);
          const std::uint32_t a = reg(d.rs1), b = reg(d.rs2);
          const bool taken = rv::branch_taken(d.funct3, a, b, &ok);
          if (!ok) return fault(Stop::Illegal, pc, w);
          o.compute(2 * kAlu);  // compare and branch
          if (taken) next = pc + imm;
          break;
        }
        case kLoadH: {
          o.compute(kSubDispatch);
          const unsigned size = rv::access_size(false, d.funct3);
          if (!size) return fault(Stop::Illegal, pc, w);
          const std::uint32_t addr = reg(d.rs1) + imm;
          o.compute(kBoundsCheck);
          if (!in_memory(addr, size)) return fault(Stop::AccessFault, pc, addr);
          write(d.rd, rv::load_extend(d.funct3, o.load(mem + addr, size)));
          break;
        }
        case kStoreH: {
          o.compute(kSubDispatch);
          const unsigned size = rv::access_size(true, d.funct3);
          if (!size) return fault(Stop::Illegal, pc, w);
          const std::uint32_t addr = reg(d.rs1) + imm, v = reg(d.rs2);
          o.compute(kBoundsCheck);
          if (!in_memory(addr, size)) return fault(Stop::AccessFault, pc, addr);
          o.store(mem + addr, v, size);
          break;
        }
        case kOpImm: case kOp: {
          o.compute(kSubDispatch);
          const bool imm_form = handler == kOpImm;
          const std::uint32_t a = reg(d.rs1), b = imm_form ? imm : reg(d.rs2);
          const std::uint32_t v = rv::alu(imm_form, d.funct3, d.funct7, a, b, &ok);
          if (!ok) return fault(Stop::Illegal, pc, w);
          o.compute(kAlu);
          write(d.rd, v);
          break;
        }
        case kFence: break;  // one hart: nothing to order
        case kSystem:
          if (w != rv::i_type(rv::kSystem, 0, 0, 0, 0)) return fault(Stop::Illegal, pc, w);
          o.compute(kAlu);
          ++steps;  // ECALL retires: the program's exit
          return Stop::Halt;
        default: return fault(Stop::Illegal, pc, w);
      }
      o.compute(kAlu);  // pc update
      pc = next;
      ++steps;
    }
  }

  // The native run: each instruction one simulated instruction (a load or a
  // store of the same data, or one compute), registers in the core's own
  // registers; the code is the assembled image (no self-modifying code).
  // Runs of computes are issued together before each memory access.
  void run_native(Ops& o, std::uint64_t mem, std::uint64_t& steps, std::uint32_t& a0) {
    std::array<std::uint32_t, 32> x{};
    std::uint64_t pending = 0;
    std::uint32_t pc = 0;
    auto put = [&](std::uint32_t r, std::uint32_t v) {
      if (r) x[r] = v;
    };
    for (;;) {
      if (m_p.max_steps && steps == m_p.max_steps) break;
      if (!in_memory(pc, 4) || (pc & 3)) break;
      const std::uint32_t w = pc / 4 < m_image.size() ? m_image[pc / 4] : 0;
      const rv::Decoded d = rv::decode(w);
      const auto imm = static_cast<std::uint32_t>(d.imm);
      std::uint32_t next = pc + 4;
      bool ok = true, stop = false;
      switch (d.opcode) {
        case rv::kLui: put(d.rd, imm); break;
        case rv::kAuipc: put(d.rd, pc + imm); break;
        case rv::kJal: put(d.rd, pc + 4); next = pc + imm; break;
        case rv::kJalr: {
          ok = d.funct3 == 0;
          const std::uint32_t target = (x[d.rs1] + imm) & ~1u;
          put(d.rd, pc + 4);
          next = target;
          break;
        }
        case rv::kBranch:
          if (rv::branch_taken(d.funct3, x[d.rs1], x[d.rs2], &ok)) next = pc + imm;
          break;
        case rv::kLoad: {
          const unsigned size = rv::access_size(false, d.funct3);
          const std::uint32_t addr = x[d.rs1] + imm;
          if (!size || !in_memory(addr, size)) { ok = false; break; }
          o.compute(pending);
          pending = 0;
          put(d.rd, rv::load_extend(d.funct3, o.load(mem + addr, size)));
          ++steps;
          pc = next;
          continue;
        }
        case rv::kStore: {
          const unsigned size = rv::access_size(true, d.funct3);
          const std::uint32_t addr = x[d.rs1] + imm;
          if (!size || !in_memory(addr, size)) { ok = false; break; }
          o.compute(pending);
          pending = 0;
          o.store(mem + addr, x[d.rs2], size);
          ++steps;
          pc = next;
          continue;
        }
        case rv::kOpImm: case rv::kOp: {
          const bool imm_form = d.opcode == rv::kOpImm;
          put(d.rd, rv::alu(imm_form, d.funct3, d.funct7, x[d.rs1], imm_form ? imm : x[d.rs2], &ok));
          break;
        }
        case rv::kMiscMem: break;
        case rv::kSystem:
          ok = w == rv::i_type(rv::kSystem, 0, 0, 0, 0);
          stop = true;
          break;
        default: ok = false; break;
      }
      if (!ok) break;
      ++pending;
      ++steps;
      if (stop) break;
      pc = next;
    }
    o.compute(pending);
    a0 = x[rv::a0];
  }

  InterpreterParams m_p;
  std::vector<std::uint32_t> m_image;
  std::uint64_t m_mem_size;
  stats::Counter m_interpreted{&m_stats, "interpreted_instructions", "instructions",
                               "RV32I instructions the interpreter executed (retired by the interpreted machine)"};
  stats::Counter m_simulated{&m_stats, "simulated_instructions", "instructions",
                             "instructions the interpreted run issued on the simulated core (computes, loads, stores)"};
  stats::Counter m_native{&m_stats, "native_instructions", "instructions",
                          "instructions the native run issued (one per RV32I instruction)"};
  stats::Counter m_setup_cycles{&m_stats, "setup_cycles", "cycles",
                                "TSC cycles of the set-up: mapping and first touch of the memory, writing the image, "
                                "the dispatch table and the register file"};
  stats::Counter m_interp_cycles{&m_stats, "interpreted_cycles", "cycles", "TSC cycles of the interpreted run"};
  stats::Counter m_native_cycles{&m_stats, "native_cycles", "cycles", "TSC cycles of the native run"};
  stats::Gauge m_per_interpreted{&m_stats, "instructions_per_interpreted", "ratio",
                                 "simulated_instructions / interpreted_instructions (the last thread's run)"};
  stats::Gauge m_slowdown{&m_stats, "slowdown", "ratio",
                          "interpreted_cycles / native_cycles: the interpreter's cost for the same program (the last "
                          "thread's runs)"};
  stats::Gauge m_result{&m_stats, "result", "value", "a0 in the interpreted register file when the run ended"};
  stats::Gauge m_native_result{&m_stats, "native_result", "value", "a0 when the native run ended"};
  stats::Counter m_halted{&m_stats, "halted", "runs", "interpreted runs that ended with the program's ECALL"};
  stats::Counter m_illegal{&m_stats, "illegal_instruction", "runs",
                           "interpreted runs stopped at an instruction word RV32I does not define"};
  stats::Counter m_access_fault{&m_stats, "access_fault", "runs",
                                "interpreted runs stopped at a fetch, load or store outside the interpreted memory "
                                "(or a fetch from a misaligned pc)"};
  stats::Counter m_step_limit{&m_stats, "step_limit", "runs", "interpreted runs stopped after max_steps"};
  stats::Gauge m_fault_pc{&m_stats, "fault_pc", "address", "pc of the instruction that stopped the interpreted run"};
  stats::Gauge m_fault_address{&m_stats, "fault_address", "address",
                               "the faulting access's address, or the illegal instruction word"};
  stats::Counter m_available{&m_stats, "pmu_available", "threads", "threads whose perf facility found a PMU"};
  stats::Counter m_counted_instructions{&m_stats, "counted_instructions", "instructions",
                                        "count: instructions retired over the interpreted run (fixed counter 0)"};
  stats::Counter m_counted_cycles{&m_stats, "counted_cycles", "cycles",
                                  "count: core cycles over the interpreted run (fixed counter 1)"};
  stats::Counter m_counted_events{&m_stats, "counted_events", "events", "count: PMC0's event over the interpreted run"};
  stats::Counter m_native_counted_instructions{&m_stats, "native_counted_instructions", "instructions",
                                               "count: instructions retired over the native run"};
  stats::Counter m_native_counted_cycles{&m_stats, "native_counted_cycles", "cycles",
                                         "count: core cycles over the native run"};
  stats::Counter m_native_counted_events{&m_stats, "native_counted_events", "events",
                                         "count: PMC0's event over the native run"};
  stats::Counter m_samples_fetch{&m_stats, "fetch_samples", "samples", "sample: samples in the fetch stage"};
  stats::Counter m_samples_decode{&m_stats, "decode_samples", "samples", "sample: samples in the decode stage"};
  stats::Counter m_samples_dispatch{&m_stats, "dispatch_samples", "samples",
                                    "sample: samples in the dispatch stage (table load, jump, loop)"};
  stats::Counter m_samples_execute{&m_stats, "execute_samples", "samples",
                                   "sample: samples in the handlers (register file, the program's loads and stores)"};
  stats::Counter m_samples_native{&m_stats, "native_samples", "samples", "sample: samples in the native run"};
};

}  // namespace

std::shared_ptr<Workload> Workload::create_interpreter(const InterpreterParams& p, stats::Group* parent,
                                                       const std::string& name) {
  return std::make_shared<Interpreter>(p, parent, name);
}

}  // namespace vmx::workloads
