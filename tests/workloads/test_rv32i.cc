// The RV32I encoder and decoder of the interpreter workload (workloads/
// rv32i.h) against machine words from the RISC-V Unprivileged ISA
// specification's formats, as a GNU assembler for RV32I emits them.
#include <catch2/catch.hpp>

#include <cstdint>

#include "workloads/rv32i.h"

namespace rv = vmx::workloads::rv32i;

namespace {
std::uint32_t one(void (*emit)(rv::Assembler&)) {
  rv::Assembler a;
  emit(a);
  REQUIRE(a.words().size() == 1);
  return a.words()[0];
}
}  // namespace

TEST_CASE("the RV32I encoder emits the machine words of each format", "[rv32i]") {
  using namespace rv;
  CHECK(one([](Assembler& a) { a.addi(1, 0, 1); }) == 0x00100093u);      // addi ra, zero, 1
  CHECK(one([](Assembler& a) { a.add(3, 1, 2); }) == 0x002081B3u);       // add gp, ra, sp
  CHECK(one([](Assembler& a) { a.sub(3, 1, 2); }) == 0x402081B3u);       // sub gp, ra, sp
  CHECK(one([](Assembler& a) { a.lw(5, 2, 8); }) == 0x00812283u);        // lw t0, 8(sp)
  CHECK(one([](Assembler& a) { a.sw(5, 2, 8); }) == 0x00512423u);        // sw t0, 8(sp)
  CHECK(one([](Assembler& a) { a.lui(5, 0x12345); }) == 0x123452B7u);    // lui t0, 0x12345
  CHECK(one([](Assembler& a) { a.srai(1, 1, 3); }) == 0x4030D093u);      // srai ra, ra, 3
  CHECK(one([](Assembler& a) { a.ecall(); }) == 0x00000073u);
  CHECK(one([](Assembler& a) { a.beq(1, 2, 8); }) == 0x00208463u);       // beq ra, sp, .+8
  CHECK(one([](Assembler& a) { a.jal(1, 16); }) == 0x010000EFu);         // jal ra, .+16
  CHECK(one([](Assembler& a) { a.sb(10, 11, -1); }) == 0xFEA58FA3u);     // sb a0, -1(a1)
}

TEST_CASE("decoding gives back every field and the sign-extended immediates", "[rv32i]") {
  using namespace rv;
  for (std::int32_t imm : {-4096, -36, -2, 2, 8, 2046, 4094}) {
    const Decoded d = decode(b_type(kBranch, 1, 11, 0, imm));
    CHECK(d.imm == imm);
    CHECK(d.rs1 == 11);
    CHECK(d.funct3 == 1);
  }
  for (std::int32_t imm : {-(1 << 20), -2048, -4, 4, 4096, (1 << 20) - 2}) CHECK(decode(j_type(kJal, 1, imm)).imm == imm);
  for (std::int32_t imm : {-2048, -1, 0, 1, 2047}) {
    CHECK(decode(s_type(kStore, 2, 3, 4, imm)).imm == imm);
    CHECK(decode(i_type(kOpImm, 5, 0, 6, imm)).imm == imm);
  }
  const Decoded r = decode(r_type(kOp, 7, 5, 8, 9, 0x20));
  CHECK((r.opcode == kOp && r.rd == 7 && r.funct3 == 5 && r.rs1 == 8 && r.rs2 == 9 && r.funct7 == 0x20));
  CHECK(decode(u_type(kLui, 1, 0xFFFFF)).imm == static_cast<std::int32_t>(0xFFFFF000u));
}

TEST_CASE("li is always LUI and ADDI and loads every 32-bit value", "[rv32i]") {
  for (std::uint32_t v : {0u, 1u, 0x7FFu, 0x800u, 0xFFFu, 0x1000u, 0x2545F491u, 0x7FFFFFFFu, 0x80000000u,
                          0xFFFFF800u, 0xFFFFFFFFu}) {
    rv::Assembler a;
    a.li(rv::a0, v);
    REQUIRE(a.words().size() == 2);
    const rv::Decoded hi = rv::decode(a.words()[0]), lo = rv::decode(a.words()[1]);
    CHECK(hi.opcode == rv::kLui);
    CHECK((lo.opcode == rv::kOpImm && lo.funct3 == 0 && lo.rs1 == rv::a0));
    CHECK(static_cast<std::uint32_t>(hi.imm) + static_cast<std::uint32_t>(lo.imm) == v);
  }
}

TEST_CASE("the ALU, branch and access semantics follow RV32I and reject undefined encodings", "[rv32i]") {
  bool ok = false;
  CHECK(rv::alu(false, 0, 0x20, 3, 5, &ok) == 0xFFFFFFFEu);
  CHECK(ok);
  CHECK(rv::alu(false, 5, 0x20, 0x80000000u, 4, &ok) == 0xF8000000u);  // sra
  CHECK(rv::alu(false, 5, 0, 0x80000000u, 4, &ok) == 0x08000000u);     // srl
  CHECK(rv::alu(false, 2, 0, 0xFFFFFFFFu, 0, &ok) == 1);                // slt -1 < 0
  CHECK(rv::alu(false, 3, 0, 0xFFFFFFFFu, 0, &ok) == 0);                // sltu
  rv::alu(false, 4, 0x20, 1, 1, &ok);  // no "xor" with funct7 0x20
  CHECK(!ok);
  rv::alu(true, 1, 0x20, 1, 0x401, &ok);  // slli with funct7 0x20
  CHECK(!ok);
  CHECK(rv::alu(true, 5, 0x20, 0x80000000u, 0x401, &ok) == 0xC0000000u);  // srai by 1
  CHECK(ok);
  CHECK(rv::branch_taken(4, 0xFFFFFFFFu, 0, &ok));   // blt -1 < 0
  CHECK(!rv::branch_taken(6, 0xFFFFFFFFu, 0, &ok));  // bltu
  rv::branch_taken(2, 0, 0, &ok);
  CHECK(!ok);
  CHECK(rv::access_size(false, 4) == 1);
  CHECK(rv::access_size(true, 4) == 0);
  CHECK(rv::access_size(false, 3) == 0);
  CHECK(rv::load_extend(0, 0x80) == 0xFFFFFF80u);
  CHECK(rv::load_extend(4, 0x80) == 0x80u);
  CHECK(rv::load_extend(1, 0x8000) == 0xFFFF8000u);
}
