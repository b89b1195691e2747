// S21: emulation as universal simulation (configs/scenarios/s21_*.yaml,
// docs/pmu.md, "S21: an interpreter"). A guest program interprets RV32I
// machine code from an image in guest memory. The checksum the interpreted
// program computes is checked against this file's own computation of it;
// the instruction counts against the program's listing and against what the
// guest's PMU and the simulator's ground truth counted.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstdint>
#include <string>

#include "system/cli_harness.h"

using vmx::test::read_text;
using vmx::test::run_cli;

namespace {

const std::string kScenarios = std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/";
const std::string kW = "vm.interp.workload0.";

vmx::test::CliRun scenario(const std::string& name, const std::vector<std::string>& args = {}) {
  auto r = run_cli(read_text(kScenarios + name + ".yaml"), args);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  return r;
}

// The program of workloads/interpreter.cc, computed here: an array filled
// by xorshift32 (13, 17, 5) from the seed, then `passes` passes of
// a += x[i]; b += a; the checksum is a ^ b.
std::uint32_t checksum(std::uint32_t seed, std::uint32_t n, std::uint32_t passes) {
  std::vector<std::uint32_t> x(n);
  std::uint32_t s = seed;
  for (auto& v : x) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    v = s;
  }
  std::uint32_t a = 0, b = 0;
  for (std::uint32_t p = 0; p < passes; ++p)
    for (std::uint32_t v : x) {
      a += v;
      b += a;
    }
  return a ^ b;
}

// Its instruction count from the listing: four two-word li, 10 per element
// to fill, two to clear the sums, per pass two li, 6 per element and the
// pass loop's two, then xor, sw and ecall.
double listing_count(double n, double passes) { return 8 + 10 * n + 2 + passes * (4 + 6 * n + 2) + 3; }

constexpr std::uint32_t kSeed = 0x2545F491;

}  // namespace

TEST_CASE("S21: the interpreter computes the checksum right with the listing's instruction count", "[s21]") {
  auto r = scenario("s21_interpreter");
  const double n = 16384, passes = 2;
  CHECK(r.at(kW + "result") == checksum(kSeed, 16384, 2));
  CHECK(r.at(kW + "native_result") == r.at(kW + "result"));
  CHECK(r.at(kW + "halted") == 1);
  CHECK(r.at(kW + "interpreted_instructions") == listing_count(n, passes));
  // The native run: one simulated instruction per RV32I instruction.
  CHECK(r.at(kW + "native_instructions") == r.at(kW + "interpreted_instructions"));
  const double per = r.at(kW + "instructions_per_interpreted"), slowdown = r.at(kW + "slowdown");
  INFO(fmt::format("{:.2f} simulated instructions per interpreted one, slowdown {:.2f}", per, slowdown));
  CHECK(per == Approx(r.at(kW + "simulated_instructions") / r.at(kW + "interpreted_instructions")));
  CHECK(per > 20);
  CHECK(per < 40);
  CHECK(slowdown > 10);
  // What the guest counted with its PMU (mediated vPMU) is the work the
  // interpreter issued, plus the guest kernel's ticks and the RDPMCs.
  const double counted = r.at(kW + "counted_instructions"), issued = r.at(kW + "simulated_instructions");
  CHECK(r.at(kW + "pmu_available") == 1);
  CHECK(counted >= issued);
  CHECK(counted < 1.01 * issued);
  CHECK(r.at(kW + "native_counted_instructions") >= r.at(kW + "native_instructions"));
  CHECK(r.at(kW + "native_counted_instructions") < 1.05 * r.at(kW + "native_instructions"));
  // The simulator's ground truth: every instruction the vCPU retired.
  CHECK(r.at("vm.interp.vcpu0.instructions") > counted + r.at(kW + "native_counted_instructions"));
  // L1 load misses: the 64 KiB array is twice the L1D, so each pass misses
  // on each of its 4096 lines, interpreted or native alike; the image, the
  // register file and the dispatch table stay in the L1D.
  const double lines = n * 4 / 64;
  INFO(fmt::format("L1 load misses: interpreted {}, native {}", r.at(kW + "counted_events"),
                   r.at(kW + "native_counted_events")));
  CHECK(r.at(kW + "counted_events") >= passes * lines);
  CHECK(r.at(kW + "counted_events") < 1.1 * passes * lines);
  CHECK(r.at(kW + "native_counted_events") >= passes * lines);
  CHECK(r.at(kW + "native_counted_events") < 1.1 * passes * lines);
}

TEST_CASE("S21: sampling shows the interpreter's cycles across its stages and its misses in execute",
          "[s21][sampling]") {
  auto cycles = scenario("s21_interpreter", {"--set", "vms[0].workloads[0].perf=sample", "--set",
                                             "vms[0].workloads[0].event=0x003C", "--set",
                                             "vms[0].workloads[0].sample_period=20000"});
  const double f = cycles.at(kW + "fetch_samples"), d = cycles.at(kW + "decode_samples"),
               p = cycles.at(kW + "dispatch_samples"), e = cycles.at(kW + "execute_samples"),
               nat = cycles.at(kW + "native_samples");
  INFO(fmt::format("cycle samples: fetch {} decode {} dispatch {} execute {} native {}", f, d, p, e, nat));
  const double interp = f + d + p + e;
  REQUIRE(interp > 200);
  for (double s : {f, d, p, e}) CHECK(s > 0);
  CHECK(e > f);
  CHECK(e > d);
  CHECK(e > p);
  // The two runs split the samples as their cycles split.
  const double ic = cycles.at(kW + "interpreted_cycles"), nc = cycles.at(kW + "native_cycles");
  CHECK(nat / (interp + nat) == Approx(nc / (ic + nc)).margin(0.03));
  CHECK(cycles.at(kW + "result") == checksum(kSeed, 16384, 2));  // sampling changes nothing of the result

  auto misses = scenario("s21_interpreter", {"--set", "vms[0].workloads[0].perf=sample", "--set",
                                             "vms[0].workloads[0].event=0x08D1", "--set",
                                             "vms[0].workloads[0].sample_period=16"});
  const double me = misses.at(kW + "execute_samples");
  const double mi = me + misses.at(kW + "fetch_samples") + misses.at(kW + "decode_samples") +
                    misses.at(kW + "dispatch_samples");
  INFO(fmt::format("L1 load miss samples: {} of {} in execute", me, mi));
  REQUIRE(mi > 50);
  CHECK(me >= 0.95 * mi);
}

TEST_CASE("S21: a misbehaving interpreted program ends its run with the reason, not the simulator", "[s21][fault]") {
  const std::vector<std::string> small = {"--set", "vms[0].workloads[0].elements=64", "--set",
                                          "vms[0].workloads[0].perf=none"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), small.begin(), small.end());
    return scenario("s21_interpreter", more);
  };
  // An undefined word right after the fill loop (8 + 10 words in): the
  // fill retired, the bad word did not.
  auto ill = with({"--set", "vms[0].workloads[0].program=illegal"});
  CHECK(ill.at(kW + "illegal_instruction") == 1);
  CHECK(ill.at_or_zero(kW + "halted") == 0);
  CHECK(ill.at(kW + "interpreted_instructions") == 8 + 10 * 64);
  CHECK(ill.at(kW + "fault_pc") == 4 * (8 + 10));
  CHECK(ill.at(kW + "fault_address") == 0xFFFFFFFFu);
  CHECK(ill.at(kW + "native_instructions") == ill.at(kW + "interpreted_instructions"));
  CHECK(ill.at("sim.finished") == 1);
  // A load from 0x80000000, outside the interpreted memory.
  auto oor = with({"--set", "vms[0].workloads[0].program=out_of_range"});
  CHECK(oor.at(kW + "access_fault") == 1);
  CHECK(oor.at(kW + "fault_address") == 0x80000000u);
  CHECK(oor.at(kW + "fault_pc") == 4 * (8 + 10 + 1));
  CHECK(oor.at(kW + "interpreted_instructions") == 8 + 10 * 64 + 1);
  // A step budget stops a program that would run on.
  auto lim = with({"--set", "vms[0].workloads[0].max_steps=1000"});
  CHECK(lim.at(kW + "step_limit") == 1);
  CHECK(lim.at(kW + "interpreted_instructions") == 1000);
  CHECK(lim.at(kW + "native_instructions") == 1000);
  // A bad value is a config error naming the key.
  auto bad = run_cli(read_text(kScenarios + "s21_interpreter.yaml"), {"--set", "vms[0].workloads[0].program=doom"});
  CHECK(bad.exit_code == 2);
  CHECK(bad.err.find("program") != std::string::npos);
}

TEST_CASE("S21: nested inside a VM's VM the interpreter computes the same checksum with the same counts",
          "[s21][nested]") {
  auto r = scenario("s21_nested");
  const std::string flat = "vm.flat.workload0.", l2 = "vm.l1.vm.l2.workload0.";
  const double expected = checksum(kSeed, 4096, 2);
  CHECK(r.at(flat + "result") == expected);
  CHECK(r.at(l2 + "result") == expected);
  CHECK(r.at(flat + "interpreted_instructions") == listing_count(4096, 2));
  CHECK(r.at(l2 + "interpreted_instructions") == listing_count(4096, 2));
  CHECK(r.at(l2 + "simulated_instructions") == r.at(flat + "simulated_instructions"));
  INFO(fmt::format("interpreted cycles: flat {}, L2 {}; set-up cycles: flat {}, L2 {}",
                   r.at(flat + "interpreted_cycles"), r.at(l2 + "interpreted_cycles"), r.at(flat + "setup_cycles"),
                   r.at(l2 + "setup_cycles")));
  // Once its memory is mapped the interpreter makes no exits: it runs as
  // fast two levels down as at one (within the timer ticks that land in
  // the run), so its slowdown is the same.
  CHECK(r.at(l2 + "interpreted_cycles") >= r.at(flat + "interpreted_cycles"));
  CHECK(r.at(l2 + "interpreted_cycles") < 1.01 * r.at(flat + "interpreted_cycles"));
  CHECK(r.at(l2 + "slowdown") == Approx(r.at(flat + "slowdown")).epsilon(0.01));
  // Nesting costs where the machine is involved: the first touch of each
  // page, an EPT violation reflected to L1 and an EPT02 fill.
  CHECK(r.at(l2 + "setup_cycles") > 1.5 * r.at(flat + "setup_cycles"));
}
