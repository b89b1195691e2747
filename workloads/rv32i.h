// A small RV32I toolkit for the interpreter workload (workloads/
// interpreter.cc; docs/pmu.md, "S21: an interpreter"): an encoder that
// assembles the base integer instructions into their 32-bit machine words,
// a decoder that takes the fields apart again, and the arithmetic of the
// instructions. Formats and opcodes are those of the RISC-V Unprivileged
// ISA specification (version 20191213), chapter 2 and chapter 24's opcode
// map. Nothing here knows the simulator: it is plain host arithmetic, which
// the interpreter charges as operations of the simulated core.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace vmx::workloads::rv32i {

// Major opcodes (bits 6:0).
enum Opcode : std::uint32_t {
  kLoad = 0x03,
  kMiscMem = 0x0F,
  kOpImm = 0x13,
  kAuipc = 0x17,
  kStore = 0x23,
  kOp = 0x33,
  kLui = 0x37,
  kBranch = 0x63,
  kJalr = 0x67,
  kJal = 0x6F,
  kSystem = 0x73,
};

// ABI register names (the calling convention's, chapter 25).
enum Reg : unsigned {
  zero = 0, ra = 1, sp = 2, gp = 3, tp = 4, t0 = 5, t1 = 6, t2 = 7, s0 = 8, s1 = 9,
  a0 = 10, a1 = 11, a2 = 12, a3 = 13, a4 = 14, a5 = 15, a6 = 16, a7 = 17,
  t3 = 28, t4 = 29, t5 = 30, t6 = 31,
};

// ---- Encoding (section 2.2 and 2.3: R, I, S, B, U and J formats) --------

constexpr std::uint32_t r_type(std::uint32_t op, unsigned rd, unsigned f3, unsigned rs1, unsigned rs2, unsigned f7) {
  return (f7 << 25) | ((rs2 & 31) << 20) | ((rs1 & 31) << 15) | ((f3 & 7) << 12) | ((rd & 31) << 7) | op;
}
constexpr std::uint32_t i_type(std::uint32_t op, unsigned rd, unsigned f3, unsigned rs1, std::int32_t imm) {
  return (static_cast<std::uint32_t>(imm & 0xFFF) << 20) | ((rs1 & 31) << 15) | ((f3 & 7) << 12) |
         ((rd & 31) << 7) | op;
}
constexpr std::uint32_t s_type(std::uint32_t op, unsigned f3, unsigned rs1, unsigned rs2, std::int32_t imm) {
  const auto u = static_cast<std::uint32_t>(imm);
  return (((u >> 5) & 0x7F) << 25) | ((rs2 & 31) << 20) | ((rs1 & 31) << 15) | ((f3 & 7) << 12) |
         ((u & 0x1F) << 7) | op;
}
constexpr std::uint32_t b_type(std::uint32_t op, unsigned f3, unsigned rs1, unsigned rs2, std::int32_t imm) {
  const auto u = static_cast<std::uint32_t>(imm);
  return (((u >> 12) & 1) << 31) | (((u >> 5) & 0x3F) << 25) | ((rs2 & 31) << 20) | ((rs1 & 31) << 15) |
         ((f3 & 7) << 12) | (((u >> 1) & 0xF) << 8) | (((u >> 11) & 1) << 7) | op;
}
constexpr std::uint32_t u_type(std::uint32_t op, unsigned rd, std::uint32_t imm20) {
  return ((imm20 & 0xFFFFF) << 12) | ((rd & 31) << 7) | op;
}
constexpr std::uint32_t j_type(std::uint32_t op, unsigned rd, std::int32_t imm) {
  const auto u = static_cast<std::uint32_t>(imm);
  return (((u >> 20) & 1) << 31) | (((u >> 1) & 0x3FF) << 21) | (((u >> 11) & 1) << 20) |
         (((u >> 12) & 0xFF) << 12) | ((rd & 31) << 7) | op;
}

/// The decoded fields of one instruction word.
struct Decoded {
  std::uint32_t opcode, rd, funct3, rs1, rs2, funct7;
  std::int32_t imm;  // the format's immediate, sign-extended (0 for R-type)
};

/// Sign-extends the low `bits` bits of v.
constexpr std::int32_t sext(std::uint32_t v, unsigned bits) {
  const std::uint32_t m = 1u << (bits - 1);
  return static_cast<std::int32_t>((v ^ m) - m);
}

constexpr Decoded decode(std::uint32_t w) {
  Decoded d{w & 0x7F, (w >> 7) & 31, (w >> 12) & 7, (w >> 15) & 31, (w >> 20) & 31, w >> 25, 0};
  switch (d.opcode) {
    case kLoad: case kOpImm: case kJalr: case kMiscMem: case kSystem: d.imm = sext(w >> 20, 12); break;
    case kStore: d.imm = sext(((w >> 25) << 5) | ((w >> 7) & 0x1F), 12); break;
    case kBranch:
      d.imm = sext(((w >> 31) << 12) | (((w >> 7) & 1) << 11) | (((w >> 25) & 0x3F) << 5) | (((w >> 8) & 0xF) << 1),
                   13);
      break;
    case kLui: case kAuipc: d.imm = static_cast<std::int32_t>(w & 0xFFFFF000u); break;
    case kJal:
      d.imm = sext(((w >> 31) << 20) | (((w >> 12) & 0xFF) << 12) | (((w >> 20) & 1) << 11) |
                       (((w >> 21) & 0x3FF) << 1),
                   21);
      break;
    default: break;
  }
  return d;
}

// ---- Semantics ------------------------------------------------------------

/// OP (funct7 0 or 0x20) and OP-IMM (imm as operand b; funct7 only for the
/// shifts): the result, or false in *ok for an encoding RV32I does not have.
constexpr std::uint32_t alu(bool imm_form, std::uint32_t f3, std::uint32_t f7, std::uint32_t a, std::uint32_t b,
                            bool* ok) {
  *ok = true;
  const bool alt = f7 == 0x20;
  const bool shift = f3 == 1 || f3 == 5;
  if (imm_form ? (shift && f7 != 0 && !(f3 == 5 && alt)) : (f7 != 0 && !(alt && (f3 == 0 || f3 == 5)))) {
    *ok = false;
    return 0;
  }
  const unsigned sh = b & 31;
  switch (f3) {
    case 0: return (!imm_form && alt) ? a - b : a + b;
    case 1: return a << sh;
    case 2: return static_cast<std::int32_t>(a) < static_cast<std::int32_t>(b) ? 1 : 0;
    case 3: return a < b ? 1 : 0;
    case 4: return a ^ b;
    case 5: return alt ? static_cast<std::uint32_t>(static_cast<std::int32_t>(a) >> sh) : a >> sh;
    case 6: return a | b;
    default: return a & b;
  }
}

/// BRANCH: whether it is taken; *ok false for funct3 2 and 3.
constexpr bool branch_taken(std::uint32_t f3, std::uint32_t a, std::uint32_t b, bool* ok) {
  *ok = f3 != 2 && f3 != 3;
  const auto sa = static_cast<std::int32_t>(a), sb = static_cast<std::int32_t>(b);
  switch (f3) {
    case 0: return a == b;
    case 1: return a != b;
    case 4: return sa < sb;
    case 5: return sa >= sb;
    case 6: return a < b;
    case 7: return a >= b;
    default: return false;
  }
}

/// Access width in bytes of a LOAD (funct3 0-2, 4, 5) or STORE (0-2); 0 for
/// an encoding that does not exist.
constexpr unsigned access_size(bool store, std::uint32_t f3) {
  if (f3 <= 2) return 1u << f3;
  if (!store && (f3 == 4 || f3 == 5)) return 1u << (f3 - 4);
  return 0;
}

/// A loaded value extended to 32 bits as funct3 says (LB, LH sign-extend).
constexpr std::uint32_t load_extend(std::uint32_t f3, std::uint64_t raw) {
  switch (f3) {
    case 0: return static_cast<std::uint32_t>(sext(static_cast<std::uint32_t>(raw & 0xFF), 8));
    case 1: return static_cast<std::uint32_t>(sext(static_cast<std::uint32_t>(raw & 0xFFFF), 16));
    default: return static_cast<std::uint32_t>(raw);
  }
}

// ---- An assembler for straight-line programs with backward labels --------

class Assembler {
 public:
  /// The address of the next instruction (a label for later branches).
  std::uint32_t here() const { return static_cast<std::uint32_t>(m_words.size() * 4); }
  const std::vector<std::uint32_t>& words() const { return m_words; }
  void word(std::uint32_t w) { m_words.push_back(w); }

  void lui(unsigned rd, std::uint32_t imm20) { word(u_type(kLui, rd, imm20)); }
  void auipc(unsigned rd, std::uint32_t imm20) { word(u_type(kAuipc, rd, imm20)); }
  void jal(unsigned rd, std::uint32_t target) { word(j_type(kJal, rd, offset(target, 20))); }
  void jalr(unsigned rd, unsigned rs1, std::int32_t imm) { word(i_type(kJalr, rd, 0, rs1, imm12(imm))); }
  void beq(unsigned a, unsigned b, std::uint32_t target) { word(b_type(kBranch, 0, a, b, offset(target, 12))); }
  void bne(unsigned a, unsigned b, std::uint32_t target) { word(b_type(kBranch, 1, a, b, offset(target, 12))); }
  void blt(unsigned a, unsigned b, std::uint32_t target) { word(b_type(kBranch, 4, a, b, offset(target, 12))); }
  void bge(unsigned a, unsigned b, std::uint32_t target) { word(b_type(kBranch, 5, a, b, offset(target, 12))); }
  void bltu(unsigned a, unsigned b, std::uint32_t target) { word(b_type(kBranch, 6, a, b, offset(target, 12))); }
  void bgeu(unsigned a, unsigned b, std::uint32_t target) { word(b_type(kBranch, 7, a, b, offset(target, 12))); }
  void lb(unsigned rd, unsigned rs1, std::int32_t imm) { word(i_type(kLoad, rd, 0, rs1, imm12(imm))); }
  void lh(unsigned rd, unsigned rs1, std::int32_t imm) { word(i_type(kLoad, rd, 1, rs1, imm12(imm))); }
  void lw(unsigned rd, unsigned rs1, std::int32_t imm) { word(i_type(kLoad, rd, 2, rs1, imm12(imm))); }
  void lbu(unsigned rd, unsigned rs1, std::int32_t imm) { word(i_type(kLoad, rd, 4, rs1, imm12(imm))); }
  void lhu(unsigned rd, unsigned rs1, std::int32_t imm) { word(i_type(kLoad, rd, 5, rs1, imm12(imm))); }
  void sb(unsigned rs2, unsigned rs1, std::int32_t imm) { word(s_type(kStore, 0, rs1, rs2, imm12(imm))); }
  void sh(unsigned rs2, unsigned rs1, std::int32_t imm) { word(s_type(kStore, 1, rs1, rs2, imm12(imm))); }
  void sw(unsigned rs2, unsigned rs1, std::int32_t imm) { word(s_type(kStore, 2, rs1, rs2, imm12(imm))); }
  void addi(unsigned rd, unsigned rs1, std::int32_t imm) { word(i_type(kOpImm, rd, 0, rs1, imm12(imm))); }
  void slti(unsigned rd, unsigned rs1, std::int32_t imm) { word(i_type(kOpImm, rd, 2, rs1, imm12(imm))); }
  void sltiu(unsigned rd, unsigned rs1, std::int32_t imm) { word(i_type(kOpImm, rd, 3, rs1, imm12(imm))); }
  void xori(unsigned rd, unsigned rs1, std::int32_t imm) { word(i_type(kOpImm, rd, 4, rs1, imm12(imm))); }
  void ori(unsigned rd, unsigned rs1, std::int32_t imm) { word(i_type(kOpImm, rd, 6, rs1, imm12(imm))); }
  void andi(unsigned rd, unsigned rs1, std::int32_t imm) { word(i_type(kOpImm, rd, 7, rs1, imm12(imm))); }
  void slli(unsigned rd, unsigned rs1, unsigned sh) { word(i_type(kOpImm, rd, 1, rs1, static_cast<std::int32_t>(sh & 31))); }
  void srli(unsigned rd, unsigned rs1, unsigned sh) { word(i_type(kOpImm, rd, 5, rs1, static_cast<std::int32_t>(sh & 31))); }
  void srai(unsigned rd, unsigned rs1, unsigned sh) {
    word(i_type(kOpImm, rd, 5, rs1, static_cast<std::int32_t>(0x400 | (sh & 31))));
  }
  void add(unsigned rd, unsigned a, unsigned b) { word(r_type(kOp, rd, 0, a, b, 0)); }
  void sub(unsigned rd, unsigned a, unsigned b) { word(r_type(kOp, rd, 0, a, b, 0x20)); }
  void sll(unsigned rd, unsigned a, unsigned b) { word(r_type(kOp, rd, 1, a, b, 0)); }
  void slt(unsigned rd, unsigned a, unsigned b) { word(r_type(kOp, rd, 2, a, b, 0)); }
  void sltu(unsigned rd, unsigned a, unsigned b) { word(r_type(kOp, rd, 3, a, b, 0)); }
  void xor_(unsigned rd, unsigned a, unsigned b) { word(r_type(kOp, rd, 4, a, b, 0)); }
  void srl(unsigned rd, unsigned a, unsigned b) { word(r_type(kOp, rd, 5, a, b, 0)); }
  void sra(unsigned rd, unsigned a, unsigned b) { word(r_type(kOp, rd, 5, a, b, 0x20)); }
  void or_(unsigned rd, unsigned a, unsigned b) { word(r_type(kOp, rd, 6, a, b, 0)); }
  void and_(unsigned rd, unsigned a, unsigned b) { word(r_type(kOp, rd, 7, a, b, 0)); }
  void ecall() { word(i_type(kSystem, 0, 0, 0, 0)); }
  /// li as a fixed pair LUI + ADDI (two instructions whatever the value,
  /// so that a program's instruction count does not depend on its
  /// constants); the upper part is rounded for ADDI's sign extension.
  void li(unsigned rd, std::uint32_t value) {
    const std::uint32_t hi = (value + 0x800) >> 12;
    lui(rd, hi);
    addi(rd, rd, sext(value & 0xFFF, 12));
  }

 private:
  static std::int32_t imm12(std::int32_t imm) {
    if (imm < -2048 || imm > 2047) throw std::invalid_argument("rv32i: immediate out of 12-bit range");
    return imm;
  }
  std::int32_t offset(std::uint32_t target, unsigned bits) const {
    const std::int64_t off = static_cast<std::int64_t>(target) - static_cast<std::int64_t>(here());
    if (off < -(std::int64_t(1) << bits) || off >= (std::int64_t(1) << bits) || (off & 1))
      throw std::invalid_argument("rv32i: branch or jump target out of range");
    return static_cast<std::int32_t>(off);
  }
  std::vector<std::uint32_t> m_words;
};

}  // namespace vmx::workloads::rv32i
