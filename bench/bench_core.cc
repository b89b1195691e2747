// Host-speed benchmark of the core's hot paths (how fast the simulator runs,
// not what it simulates).
//
//   bench_core load    [N]   N loads on the L1 DTLB / L1D hit path, paging on
//   bench_core store   [N]   N stores on the same path, to L1D lines the core
//                            owns (the coherence ownership check)
//   bench_core exit    [N]   N CPUID VM-exit round trips under a minimal root loop
//   bench_core hv-exit [N]   the full hypervisor and guest kernel running a
//                            cpuid_loop workload of N iterations
//   bench_core walk    [N]   N guest loads at random over 64 MiB (4-level
//                            guest paging over 4-level EPT, 4 KiB pages in
//                            both): nearly every load misses the TLBs and
//                            walks in 2D with the walk caches on; then N
//                            loads that hit the L1 DTLB
//   bench_core walk-nocache [N]   the same with every walk cache off
//   bench_core firsttouch [N]     the full hypervisor and guest kernel: a
//                            touch_pages workload writes N fresh pages once,
//                            each a guest page fault and an EPT violation
//                            that backs the page with a zeroed host frame
//   bench_core firsttouch-ff [N]  the same fast-forwarded (functional)
//   bench_core fastforward [N]    a random_access workload of N updates run
//                            fast-forwarded (functional) from start to end
//   bench_core fastforward-detailed [N]  the same with full timing
//   bench_core mips CONFIG        runs a whole config (YAML file) and prints
//                            guest and all instructions per host second
//
// With VMXSIM_BENCH_TIMING=1 every mode runs with the optional timing
// features on (platform.cpu.store_buffer 56, platform.cpu.mshrs 10,
// platform.cpu.page_walkers 2, platform.dram.model dram,
// platform.caches.l2_prefetch.stride true): the hot paths must stay as fast
// with them.
//   bench_core scaling C [N [KIB]]  C cores and a VM of C vCPUs, each
//                            running N random updates over its own KIB KiB
//                            (default 128): host CPU time per simulated
//                            operation against the core count
//
// SystemC elaborates one design per process, so each mode is its own process
// (scripts/bench runs all three). Host time is std::chrono::steady_clock.
// The load and exit modes time the loop from inside the simulated software,
// print, and end the process with std::_Exit: the fibers never return and the
// SystemC kernel is not torn down (experiment/system.cc explains why).
//
// Output is one "key: value" line per figure, keys prefixed by the mode, so
// that scripts can pick figures out with grep.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include <sys/resource.h>

#include <systemc>
#include <yaml-cpp/yaml.h>

#include "cpu/core.h"
#include "cpu/vmx.h"
#include "experiment/experiment.h"
#include "mmu/paging.h"
#include "platform/platform.h"
#include "sim/config.h"
#include "sim/fiber.h"
#include "sim/stats.h"

namespace {

using Clock = std::chrono::steady_clock;
using vmx::cpu::Core;
namespace crb = vmx::mmu::crbits;
namespace field = vmx::cpu::field;

constexpr std::uint64_t kPage = 4096;
// Targets. Issue 18: loads on the L1 DTLB / L1D hit path at least 100 M
// per host second, full 2D walks with the walk caches on at least 5 M, a
// CPUID round trip through the full hypervisor at least 2.5 M (scripts/bench
// checks that one on its marginal figure). The minimal root loop keeps the
// target of the issue that asked for this benchmark.
constexpr double kLoadTargetPerSec = 100e6;
constexpr double kExitTargetPerSec = 1e6;
constexpr double kHvExitTargetPerSec = 2.5e6;
constexpr double kWalkTargetPerSec = 5e6;
// Issue 18: first touch of a guest page, at most 2 us of host time.
constexpr double kFirstTouchTargetNs = 2000;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::uint64_t counter(const vmx::stats::Group& root, const std::string& path) {
  const auto* c = dynamic_cast<const vmx::stats::Counter*>(root.find(path));
  return c ? c->value() : 0;
}

void print_rate(const char* mode, const char* unit, std::uint64_t n, double host_s, double target_per_s) {
  double per_s = static_cast<double>(n) / host_s;
  std::printf("%s.host_seconds: %.6f\n", mode, host_s);
  std::printf("%s.host_ns_per_%s: %.2f\n", mode, unit, host_s * 1e9 / static_cast<double>(n));
  std::printf("%s.%ss_per_host_second: %.0f (%.3f M/s)\n", mode, unit, per_s, per_s / 1e6);
  if (target_per_s > 0)
    std::printf("%s.target: >= %.0f M/s: %s\n", mode, target_per_s / 1e6, per_s >= target_per_s ? "met" : "MISSED");
}

[[noreturn]] void finish() {
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(0);
}

// Peak resident set size of this process, KiB (getrusage's ru_maxrss).
long max_rss_kib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

// User and system CPU time of this process so far, seconds: on a host
// shared with other work, what the process itself used.
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// VMXSIM_BENCH_TIMING=1: the optional timing features on
// (apply_timing_features).
bool timing_features() {
  const char* v = std::getenv("VMXSIM_BENCH_TIMING");
  return v && *v && std::string(v) != "0";
}

void apply_timing_features(vmx::models::PlatformParams& p);

vmx::models::PlatformParams one_core_platform() {
  auto p = vmx::cfg::defaults<vmx::models::PlatformParams>();
  p.cores = 1;
  p.memory = 64ull << 20;
  apply_timing_features(p);
  return p;
}

void apply_timing_features(vmx::models::PlatformParams& p) {
  if (!timing_features()) return;
  p.cpu.store_buffer = 56;  // Skylake (the parameter's description)
  p.cpu.mshrs = 10;
  p.cpu.page_walkers = 2;
  p.dram.model = "dram";
  p.caches.l2_prefetch.stride = true;
}

// A whole run through the real experiment path (hypervisor, guest kernel,
// workloads), timed on the host: building the system, booting the guest
// and the workloads all count (scripts/bench subtracts a tiny run where it
// wants a marginal figure).
struct TimedRun {
  vmx::experiment::RunResult result;
  YAML::Node stats;  // stats.json
  double host_s = 0;
  double cpu_s = 0;  // the process's CPU time over the run (user + system)
};

// Runs the config `doc` (text: its YAML, recorded with the results) and
// times it. False, with the reason on stderr, when a workload did not
// finish.
bool run_timed(const char* mode, const vmx::cfg::Document& doc, const std::string& text, TimedRun& out) {
  auto params = vmx::experiment::load(doc);
  apply_timing_features(params.platform);
  const auto t0 = Clock::now();
  const double cpu0 = cpu_seconds();
  out.result = vmx::experiment::run(params, text);
  out.host_s = seconds(Clock::now() - t0);
  out.cpu_s = cpu_seconds() - cpu0;
  if (!out.result.finished) {
    std::fprintf(stderr, "bench_core %s: the workload did not finish\n", mode);
    for (const auto& note : out.result.vm_notes) std::fprintf(stderr, "  %s\n", note.c_str());
    return false;
  }
  out.stats = YAML::Load(out.result.stats_json);
  return true;
}

// The same for a config given as YAML text (the embedded ones below).
bool run_yaml(const char* mode, const std::string& yaml, TimedRun& out) {
  return run_timed(mode, vmx::cfg::Document::from_string(yaml, std::string("bench_core ") + mode), yaml, out);
}

// Root-mode set-up shared by the VMX modes: an identity EPT over
// [0, ept_mapped) with 4 KiB pages at kEpt (SDM Vol. 3C, 29.3.2), VMXON,
// and a fresh current VMCS with EPT and VPID 1 and no exiting controls, as
// hypervisor/hypervisor.cc sets one up. Guest and host state are the
// caller's. Exits the process on any failure.
constexpr std::uint64_t kVmxon = 0x100000, kVmcs = 0x101000;
constexpr std::uint64_t kEpt = 0x200000;  // PML4, PDPT, PD, then the page tables

void vmwrite_or_die(Core& c, const char* mode, std::uint32_t enc, std::uint64_t v) {
  if (c.vmwrite(enc, v) != vmx::cpu::VmxStatus::Succeed) {
    std::fprintf(stderr, "bench_core %s: VMWRITE %#x failed\n", mode, enc);
    std::_Exit(1);
  }
}

void enter_vmx_with_identity_ept(Core& c, const char* mode, std::uint64_t ept_mapped) {
  namespace ept = vmx::mmu::ept;
  using namespace vmx::cpu;
  const std::uint64_t rwx = ept::kRead | ept::kWrite | ept::kExecute;
  const std::uint64_t pdpt = kEpt + kPage, pd = pdpt + kPage, pt = pd + kPage;
  c.store(kEpt, pdpt | rwx);
  c.store(pdpt, pd | rwx);
  for (std::uint64_t gpa = 0; gpa < ept_mapped; gpa += kPage) {
    std::uint64_t table = pt + (gpa >> 21) * kPage;
    if ((gpa & ((1ull << 21) - 1)) == 0) c.store(pd + (gpa >> 21) * 8, table | rwx);
    c.store(table + ((gpa >> 12) & 511) * 8, gpa | rwx | ept::kMemTypeWb);
  }
  c.write_cr(4, c.read_cr(4) | crb::kCr4Vmxe);
  c.store(kVmxon, kVmcsRevision, 4);
  c.store(kVmcs, kVmcsRevision, 4);
  if (c.vmxon(kVmxon) != VmxStatus::Succeed || c.vmclear(kVmcs) != VmxStatus::Succeed ||
      c.vmptrld(kVmcs) != VmxStatus::Succeed) {
    std::fprintf(stderr, "bench_core %s: entering VMX operation failed\n", mode);
    std::_Exit(1);
  }
  vmwrite_or_die(c, mode, field::kPinBasedControls, 0);  // no external-interrupt exiting
  vmwrite_or_die(c, mode, field::kProcBasedControls, proc::kActivateSecondaryControls);
  vmwrite_or_die(c, mode, field::kSecondaryControls, proc2::kEnableEpt | proc2::kEnableVpid);
  vmwrite_or_die(c, mode, field::kVpid, 1);
  vmwrite_or_die(c, mode, field::kExitControls, exitctl::kHostAddressSpaceSize);
  vmwrite_or_die(c, mode, field::kEntryControls, 0);
  vmwrite_or_die(c, mode, field::kExceptionBitmap, 0);
  vmwrite_or_die(c, mode, field::kEptPointer, ept::eptp(kEpt, 4, false));
}

// Runs SystemC until the software ends the process; reaching the bound means
// the software never got there.
int run_bounded(const char* mode) {
  sc_core::sc_start(sc_core::sc_time(100, sc_core::SC_SEC));
  std::fprintf(stderr, "bench_core %s: the simulation ended before the benchmark finished\n", mode);
  return 1;
}

// ---------------------------------------------------------------------------
// load (store): root-mode software with IA-32e paging on, loads (stores)
// that hit in the L1 DTLB and the L1D.

int bench_load(std::uint64_t n, bool stores) {
  const char* mode = stores ? "store" : "load";
  vmx::stats::Group root;
  vmx::models::Platform platform(one_core_platform(), &root);

  // Physical layout: data pages identity-mapped at [0, 64 KiB), the four
  // paging structures (PML4, PDPT, PD, PT) at 1 MiB.
  constexpr std::uint64_t kMapped = 64 * 1024;
  constexpr std::uint64_t kPml4 = 0x100000, kPdpt = kPml4 + kPage, kPd = kPdpt + kPage, kPt = kPd + kPage;
  constexpr std::uint64_t kData = 0x8000;  // four pages: [32 KiB, 48 KiB)
  constexpr unsigned kPages = 4, kLinesPerPage = 8;

  vmx::sim::Fiber sw(stores ? "bench.store" : "bench.load", [&] {
    Core& c = Core::current();
    namespace pte = vmx::mmu::pte;
    const std::uint64_t table = pte::kPresent | pte::kWritable;
    c.store(kPml4, kPdpt | table);
    c.store(kPdpt, kPd | table);
    c.store(kPd, kPt | table);
    for (std::uint64_t pa = 0; pa < kMapped; pa += kPage) c.store(kPt + (pa / kPage) * 8, pa | table);
    c.write_cr(4, c.read_cr(4) | crb::kCr4Pae);
    c.wrmsr(vmx::cpu::msr::kIa32Efer, c.rdmsr(vmx::cpu::msr::kIa32Efer) | crb::kEferLme);
    c.write_cr(3, kPml4);
    c.write_cr(0, crb::kCr0Pg | crb::kCr0Pe);

    // Working set: 8 lines in each of 4 pages (4 DTLB entries, 32 L1D lines).
    auto addr = [](std::uint64_t i) {
      return kData + (i % kPages) * kPage + ((i / kPages) % kLinesPerPage) * 64;
    };
    for (std::uint64_t i = 0; i < kPages * kLinesPerPage; ++i) c.store(addr(i), i);  // warm TLB, L1D, A/D bits
    for (std::uint64_t i = 0; i < kPages * kLinesPerPage; ++i) c.load(addr(i));

    const std::uint64_t loads0 = c.stats().loads.value();
    const std::uint64_t stores0 = c.stats().stores.value();
    const std::uint64_t walks0 = counter(root, "system.cpu0.walker.walks");
    const std::uint64_t dtlb_miss0 = counter(root, "system.cpu0.tlb.dtlb.misses");
    const std::uint64_t l1d_miss0 = counter(root, "system.cpu0_mem.l1d.misses");
    const std::uint64_t syncs0 = c.stats().syncs.value();
    const std::uint64_t cyc0 = c.now();
    std::uint64_t sum = 0;
    const auto t0 = Clock::now();
    if (stores)
      for (std::uint64_t i = 0; i < n; ++i) c.store(addr(i), i);
    else
      for (std::uint64_t i = 0; i < n; ++i) sum += c.load(addr(i));
    const auto t1 = Clock::now();
    const std::uint64_t cycles = c.now() - cyc0;
    const std::uint64_t ops = stores ? c.stats().stores.value() - stores0 : c.stats().loads.value() - loads0;

    print_rate(mode, mode, n, seconds(t1 - t0), kLoadTargetPerSec);
    std::printf("%s.simulated_%ss: %llu\n", mode, mode, static_cast<unsigned long long>(ops));
    std::printf("%s.simulated_cycles_per_%s: %.3f\n", mode, mode, static_cast<double>(cycles) / static_cast<double>(n));
    std::printf("%s.dtlb_misses: %llu\n", mode,
                static_cast<unsigned long long>(counter(root, "system.cpu0.tlb.dtlb.misses") - dtlb_miss0));
    std::printf("%s.page_walks: %llu\n", mode,
                static_cast<unsigned long long>(counter(root, "system.cpu0.walker.walks") - walks0));
    std::printf("%s.l1d_misses: %llu\n", mode,
                static_cast<unsigned long long>(counter(root, "system.cpu0_mem.l1d.misses") - l1d_miss0));
    std::printf("%s.systemc_syncs: %llu\n", mode, static_cast<unsigned long long>(c.stats().syncs.value() - syncs0));
    std::printf("%s.checksum: %llu\n", mode, static_cast<unsigned long long>(sum));
    finish();
  });
  platform.core(0).set_reset_fiber(&sw);
  return run_bounded(mode);
}

// ---------------------------------------------------------------------------
// exit: a minimal VMX root loop (one VMCS, EPT on, VPID on, nothing but CPUID
// exits) and a guest that executes CPUID n times.

int bench_exit(std::uint64_t n) {
  vmx::stats::Group root;
  vmx::models::Platform platform(one_core_platform(), &root);

  constexpr std::uint64_t kEptMapped = 4ull << 20;  // identity, 4 KiB pages
  constexpr std::uint64_t kWarmup = 1000;

  vmx::sim::Fiber* host_fiber = nullptr;
  vmx::sim::Fiber guest("bench.guest", [&] {
    Core& c = Core::current();
    for (std::uint64_t i = 0; i < kWarmup; ++i) c.cpuid(0);
    const std::uint64_t exits0 = c.stats().vm_exits.value();
    const std::uint64_t syncs0 = c.stats().syncs.value();
    const std::uint64_t cyc0 = c.now();
    std::uint64_t sum = 0;
    const auto t0 = Clock::now();
    for (std::uint64_t i = 0; i < n; ++i) sum += c.cpuid(0).ebx;
    const auto t1 = Clock::now();
    const std::uint64_t cycles = c.now() - cyc0;
    const std::uint64_t exits = c.stats().vm_exits.value() - exits0;

    print_rate("exit", "round_trip", n, seconds(t1 - t0), kExitTargetPerSec);
    std::printf("exit.simulated_exits: %llu\n", static_cast<unsigned long long>(exits));
    std::printf("exit.simulated_cycles_per_round_trip: %.3f\n", static_cast<double>(cycles) / static_cast<double>(n));
    std::printf("exit.systemc_syncs: %llu\n", static_cast<unsigned long long>(c.stats().syncs.value() - syncs0));
    std::printf("exit.checksum: %llu\n", static_cast<unsigned long long>(sum));
    finish();
  });

  vmx::sim::Fiber host("bench.root", [&] {
    Core& c = Core::current();
    using namespace vmx::cpu;
    auto vmw = [&](std::uint32_t enc, std::uint64_t v) { vmwrite_or_die(c, "exit", enc, v); };
    enter_vmx_with_identity_ept(c, "exit", kEptMapped);
    vmw(field::kGuestCr0, crb::kCr0Pe);
    vmw(field::kGuestCr3, 0);
    vmw(field::kGuestCr4, 0);
    vmw(field::kGuestRflags, 0x2);
    vmw(field::kGuestSsAccessRights, 0);
    vmw(field::kGuestRip, code_address(&guest));
    vmw(field::kHostRip, code_address(host_fiber));

    bool launched = false;
    for (;;) {
      VmExit ex = launched ? c.vmresume() : c.vmlaunch();
      if (!ex.entered() || ex.reason != static_cast<std::uint16_t>(ExitReason::Cpuid)) {
        std::fprintf(stderr, "bench_core exit: unexpected VM entry failure or exit reason %u\n", ex.reason);
        std::_Exit(1);
      }
      launched = true;
      // The whole CPUID handler: the answer in the guest's registers.
      Regs& r = c.regs();
      r[Regs::rax] = 1;
      r[Regs::rbx] = 0x73786d76;
      r[Regs::rcx] = 0;
      r[Regs::rdx] = 0;
    }
  });
  host_fiber = &host;
  platform.core(0).set_reset_fiber(&host);
  return run_bounded("exit");
}

// ---------------------------------------------------------------------------
// walk: a minimal VMX root loop (EPT and VPID on, identity EPT of 4 KiB pages)
// and a guest with 4-level paging whose loads land at random in a 64 MiB
// region of 4 KiB pages. The STLB reaches 6 MiB, so nearly every load walks;
// the guest PDE cache (32 entries, 64 MiB of reach) and the EPT caches hit.

int bench_walk(std::uint64_t n, bool caches) {
  vmx::stats::Group root;
  auto pp = one_core_platform();
  pp.memory = 256ull << 20;
  if (!caches) {
    for (unsigned l = 2; l <= 5; ++l) {
      pp.cpu.psc.guest.level(l).enabled = false;
      pp.cpu.psc.ept.level(l).enabled = false;
    }
    pp.cpu.nested_tlb.enabled = false;
  }
  vmx::models::Platform platform(pp, &root);

  constexpr std::uint64_t kGuestTables = 0x800000;  // PML4, PDPT, PD, then the page tables
  constexpr std::uint64_t kRegion = 64ull << 20;
  constexpr std::uint64_t kDataGpa = 0x1000000;   // 16 MiB
  constexpr std::uint64_t kLinear = 0x40000000;   // 1 GiB: PML4 0, PDPT 1
  constexpr std::uint64_t kEptMapped = kDataGpa + kRegion;
  constexpr std::uint64_t kHitPages = 4;

  vmx::sim::Fiber* host_fiber = nullptr;
  vmx::sim::Fiber guest("bench.walk.guest", [&] {
    Core& c = Core::current();
    std::uint64_t x = 0x9E3779B97F4A7C15ull;
    auto next = [&x] {  // xorshift64
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      return x;
    };
    auto random_va = [&] { return kLinear + (next() % (kRegion / kPage)) * kPage + (x & 0xFF8); };
    // Warm-up: every page once (accessed bits, data caches), then random loads.
    for (std::uint64_t va = kLinear; va < kLinear + kRegion; va += kPage) c.load(va);
    for (std::uint64_t i = 0; i < 100000; ++i) c.load(random_va());

    const std::uint64_t walks0 = counter(root, "system.cpu0.walker.walks");
    const std::uint64_t refs0 = counter(root, "system.cpu0.walker.refs");
    const std::uint64_t psc0 = counter(root, "system.cpu0.walker.psc_hits");
    const std::uint64_t ntlb0 = counter(root, "system.cpu0.walker.nested_tlb_hits");
    const std::uint64_t cyc0 = c.now();
    std::uint64_t sum = 0;
    const auto t0 = Clock::now();
    for (std::uint64_t i = 0; i < n; ++i) sum += c.load(random_va());
    const auto t1 = Clock::now();
    const std::uint64_t walks = counter(root, "system.cpu0.walker.walks") - walks0;
    const std::uint64_t refs = counter(root, "system.cpu0.walker.refs") - refs0;
    const std::uint64_t cycles = c.now() - cyc0;
    const char* mode = caches ? "walk" : "walk-nocache";
    // Host time per walk: the whole loop (load, TLB misses, walk) per walk.
    print_rate(mode, "walk", walks, seconds(t1 - t0), caches ? kWalkTargetPerSec : 0);
    std::printf("%s.loads: %llu\n", mode, static_cast<unsigned long long>(n));
    std::printf("%s.walks_per_load: %.4f\n", mode, static_cast<double>(walks) / static_cast<double>(n));
    std::printf("%s.simulated_refs_per_walk: %.3f\n", mode, static_cast<double>(refs) / static_cast<double>(walks));
    std::printf("%s.simulated_cycles_per_load: %.1f\n", mode, static_cast<double>(cycles) / static_cast<double>(n));
    std::printf("%s.psc_hits_per_walk: %.3f\n", mode,
                static_cast<double>(counter(root, "system.cpu0.walker.psc_hits") - psc0) / static_cast<double>(walks));
    std::printf("%s.nested_tlb_hits_per_walk: %.3f\n", mode,
                static_cast<double>(counter(root, "system.cpu0.walker.nested_tlb_hits") - ntlb0) /
                    static_cast<double>(walks));

    // TLB hits: the same guest, loads over 4 pages (L1 DTLB and L1D hits).
    auto hit_va = [&](std::uint64_t i) { return kLinear + (i % kHitPages) * kPage + ((i / kHitPages) % 8) * 64; };
    for (std::uint64_t i = 0; i < 64; ++i) c.load(hit_va(i));
    const std::uint64_t hits0 = counter(root, "system.cpu0.tlb.dtlb.hits");
    const auto t2 = Clock::now();
    for (std::uint64_t i = 0; i < n; ++i) sum += c.load(hit_va(i));
    const auto t3 = Clock::now();
    const std::uint64_t hits = counter(root, "system.cpu0.tlb.dtlb.hits") - hits0;
    std::printf("%s.host_ns_per_tlb_hit_load: %.2f (%llu L1 DTLB hits)\n", mode, seconds(t3 - t2) * 1e9 / static_cast<double>(n),
                static_cast<unsigned long long>(hits));
    std::printf("%s.checksum: %llu\n", mode, static_cast<unsigned long long>(sum));
    finish();
  });

  vmx::sim::Fiber host("bench.walk.root", [&] {
    Core& c = Core::current();
    namespace pte = vmx::mmu::pte;
    using namespace vmx::cpu;
    auto vmw = [&](std::uint32_t enc, std::uint64_t v) { vmwrite_or_die(c, "walk", enc, v); };
    // Guest tables: kLinear + i * 4 KiB -> kDataGpa + i * 4 KiB.
    const std::uint64_t rw = pte::kPresent | pte::kWritable;
    const std::uint64_t gpml4 = kGuestTables, gpdpt = gpml4 + kPage, gpd = gpdpt + kPage, gpt0 = gpd + kPage;
    c.store(gpml4 + ((kLinear >> 39) & 511) * 8, gpdpt | rw);
    c.store(gpdpt + ((kLinear >> 30) & 511) * 8, gpd | rw);
    for (std::uint64_t off = 0; off < kRegion; off += kPage) {
      std::uint64_t table = gpt0 + (off >> 21) * kPage;
      if ((off & ((1ull << 21) - 1)) == 0) c.store(gpd + (((kLinear + off) >> 21) & 511) * 8, table | rw);
      c.store(table + ((off >> 12) & 511) * 8, (kDataGpa + off) | rw);
    }
    enter_vmx_with_identity_ept(c, "walk", kEptMapped);
    vmw(field::kGuestCr0, crb::kCr0Pe | crb::kCr0Pg);
    vmw(field::kGuestCr3, gpml4);
    vmw(field::kGuestCr4, crb::kCr4Pae);
    vmw(field::kGuestIa32Efer, crb::kEferLme);
    vmw(field::kGuestRflags, 0x2);
    vmw(field::kGuestSsAccessRights, 0);
    vmw(field::kGuestRip, code_address(&guest));
    vmw(field::kHostRip, code_address(host_fiber));
    VmExit ex = c.vmlaunch();
    std::fprintf(stderr, "bench_core walk: unexpected VM entry failure or exit (reason %u)\n", ex.reason);
    std::_Exit(1);
  });
  host_fiber = &host;
  platform.core(0).set_reset_fiber(&host);
  return run_bounded(caches ? "walk" : "walk-nocache");
}

// ---------------------------------------------------------------------------
// hv-exit: the real experiment path (hypervisor, guest kernel, cpuid_loop).

int bench_hv_exit(std::uint64_t n) {
  const std::string yaml = "seed: 1\n"
                           "duration: 100s\n"
                           "platform:\n"
                           "  cores: 1\n"
                           "  memory: 512MiB\n"
                           "vms:\n"
                           "  - name: bench\n"
                           "    vcpus: 1\n"
                           "    memory: 64MiB\n"
                           "    workloads:\n"
                           "      - type: cpuid_loop\n"
                           "        iterations: " + std::to_string(n) + "\n";
  TimedRun run;
  if (!run_yaml("hv-exit", yaml, run)) return 1;
  const YAML::Node& s = run.stats;
  const auto cpuid_exits = s["system"]["cpu0"]["exit_reasons"]["CPUID"].as<std::uint64_t>(0);
  const auto all_exits = s["system"]["cpu0"]["vm_exits"].as<std::uint64_t>(0);
  const double cycles_mean = s["vm"]["bench"]["vcpu0"]["exit_reasons"]["CPUID"]["cycles"]["mean"].as<double>(0);
  if (cpuid_exits == 0) {
    std::fprintf(stderr, "bench_core hv-exit: no CPUID exits counted\n");
    return 1;
  }
  const double host_s = run.host_s;
  // Host time covers the whole run (building the system, booting the guest,
  // the loop); with n large the loop dominates. scripts/bench also reports
  // the marginal figure from a second, tiny run, against the issue-18
  // target (hv-exit.target_per_second).
  print_rate("hv-exit", "round_trip", cpuid_exits, host_s, 0);
  std::printf("hv-exit.cpuid_exits: %llu\n", static_cast<unsigned long long>(cpuid_exits));
  std::printf("hv-exit.all_exits: %llu\n", static_cast<unsigned long long>(all_exits));
  std::printf("hv-exit.host_ns_per_exit_any_reason: %.2f\n", host_s * 1e9 / static_cast<double>(all_exits));
  std::printf("hv-exit.simulated_cycles_per_cpuid_round_trip: %.3f\n", cycles_mean);
  std::printf("hv-exit.simulated_seconds: %.6f\n", static_cast<double>(run.result.simulated_ps) / 1e12);
  std::printf("hv-exit.target_per_second: %.0f\n", kHvExitTargetPerSec);
  std::fflush(stdout);
  return 0;
}

// ---------------------------------------------------------------------------
// firsttouch: first touches of guest pages through the real experiment path.

// firsttouch-ff: the same fast-forwarded from start to end (functional
// mode: the warm-up of a working set before the measurement).
int bench_firsttouch(std::uint64_t n, bool functional) {
  const char* mode = functional ? "firsttouch-ff" : "firsttouch";
  const std::uint64_t vm_mib = std::max<std::uint64_t>(64, (n * kPage >> 20) * 2);
  const std::string yaml = "seed: 1\n"
                           "duration: 100s\n" +
                           std::string(functional ? "fast_forward: 99s\n" : "") +
                           "platform:\n"
                           "  cores: 1\n"
                           "  memory: " + std::to_string(vm_mib + 256) + "MiB\n"
                           "vms:\n"
                           "  - name: bench\n"
                           "    vcpus: 1\n"
                           "    memory: " + std::to_string(vm_mib) + "MiB\n"
                           "    workloads:\n"
                           "      - type: touch_pages\n"
                           "        pages: " + std::to_string(n) + "\n";
  TimedRun run;
  if (!run_yaml(mode, yaml, run)) return 1;
  const YAML::Node& s = run.stats;
  const auto violations = s["system"]["cpu0"]["exit_reasons"]["EPT_VIOLATION"].as<std::uint64_t>(0);
  const auto faults = s["vm"]["bench"]["kernel"]["page_faults"].as<std::uint64_t>(0);
  const double host_s = run.host_s;
  // The whole run: building the system, booting the guest, then the
  // touches; scripts/bench subtracts a run of one page for the marginal cost.
  std::printf("%s.host_seconds: %.6f\n", mode, host_s);
  std::printf("%s.cpu_seconds: %.6f\n", mode, run.cpu_s);
  std::printf("%s.pages: %llu\n", mode, static_cast<unsigned long long>(n));
  std::printf("%s.ept_violations: %llu\n", mode, static_cast<unsigned long long>(violations));
  std::printf("%s.guest_page_faults: %llu\n", mode, static_cast<unsigned long long>(faults));
  std::printf("%s.host_ns_per_page_whole_run: %.1f\n", mode, host_s * 1e9 / static_cast<double>(n));
  std::printf("%s.target_ns: %.0f\n", mode, kFirstTouchTargetNs);
  // Peak resident set of the process (the host's own accounting):
  // scripts/bench compares an N-page run's with a one-page run's against the
  // guest memory the N pages touched (issue 18: at most 1.1 x that plus a
  // fixed base).
  std::printf("%s.max_rss_kib: %ld\n", mode, max_rss_kib());
  std::fflush(stdout);
  return 0;
}

// ---------------------------------------------------------------------------
// fastforward: the same guest work (a random_access workload of N updates
// over 4 MiB, its table read back for a checksum) with full timing or
// fast-forwarded from start to end (fast_forward beyond the workload's end).

int bench_fastforward(std::uint64_t n, bool functional) {
  const std::string yaml = "seed: 1\n"
                           "duration: 1000s\n" +
                           std::string(functional ? "fast_forward: 999s\n" : "") +
                           "platform:\n"
                           "  cores: 1\n"
                           "  memory: 512MiB\n"
                           "vms:\n"
                           "  - name: bench\n"
                           "    vcpus: 1\n"
                           "    memory: 64MiB\n"
                           "    workloads:\n"
                           "      - type: random_access\n"
                           "        working_set: 4MiB\n"
                           "        checksum: true\n"
                           "        updates: " + std::to_string(n) + "\n";
  const char* mode = functional ? "fastforward" : "fastforward-detailed";
  TimedRun run;
  if (!run_yaml(mode, yaml, run)) return 1;
  const auto instructions = run.stats["system"]["cpu0"]["instructions"].as<double>(0);
  const auto checksum = run.stats["vm"]["bench"]["workload0"]["checksum"].as<double>(-1);
  const double host_s = run.host_s;
  // The whole run (building the system, booting the guest, the updates, the
  // read-back); scripts/bench subtracts a run of one update for the marginal.
  std::printf("%s.host_seconds: %.6f\n", mode, host_s);
  std::printf("%s.cpu_seconds: %.6f\n", mode, run.cpu_s);
  std::printf("%s.updates: %llu\n", mode, static_cast<unsigned long long>(n));
  std::printf("%s.instructions: %.0f\n", mode, instructions);
  std::printf("%s.checksum: %.0f\n", mode, checksum);
  std::printf("%s.simulated_seconds: %.6f\n", mode, static_cast<double>(run.result.simulated_ps) / 1e12);
  std::fflush(stdout);
  return 0;
}

// ---------------------------------------------------------------------------
// mips: a whole config from a file, as `vmxsim run` would run it: simulated
// instructions (every logical CPU's, and the guests' part) per host second
// of the whole run.

int bench_mips(const std::string& path) {
  std::string text;
  {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) {
      std::fprintf(stderr, "bench_core mips: cannot open config '%s'\n", path.c_str());
      return 2;
    }
    char buf[4096];
    for (std::size_t got; (got = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, got);
    std::fclose(f);
  }
  TimedRun run;
  if (!run_timed("mips", vmx::cfg::Document::from_string(text, path), text, run)) return 1;
  double all = 0, guest = 0;
  for (const auto& kv : run.stats["system"]) {
    if (kv.first.as<std::string>().rfind("cpu", 0) != 0 || !kv.second.IsMap()) continue;
    all += kv.second["instructions"].as<double>(0);
    guest += kv.second["guest_instructions"].as<double>(0);
  }
  std::printf("mips.config: %s\n", path.c_str());
  std::printf("mips.host_seconds: %.6f\n", run.host_s);
  std::printf("mips.instructions: %.0f\n", all);
  std::printf("mips.guest_instructions: %.0f\n", guest);
  std::printf("mips.mips: %.2f\n", all / run.host_s / 1e6);
  std::printf("mips.guest_mips: %.2f\n", guest / run.host_s / 1e6);
  std::printf("mips.simulated_seconds: %.6f\n", static_cast<double>(run.result.simulated_ps) / 1e12);
  std::fflush(stdout);
  return 0;
}

// ---------------------------------------------------------------------------
// scaling: host cost per simulated operation against the number of simulated
// cores. C cores, one VM of C vCPUs, a random_access workload of C threads
// (one per vCPU), each doing N updates over its own 128 KiB table (it fits
// each core's L2, so each core's simulated work is the same at every C).
// Host time is wall-clock, as in the other modes (the process's CPU time
// reads several times too low on the machine this was written on);
// scripts/bench subtracts a short run for the marginal cost.

int bench_scaling(unsigned cores, std::uint64_t n, std::uint64_t kib) {
  const std::string c = std::to_string(cores);
  const std::string yaml = "seed: 1\n"
                           "duration: 1000s\n"
                           "platform:\n"
                           "  cores: " + c + "\n"
                           "  memory: 2GiB\n"
                           "vms:\n"
                           "  - name: bench\n"
                           "    vcpus: " + c + "\n"
                           "    memory: 512MiB\n"
                           "    workloads:\n"
                           "      - type: random_access\n"
                           "        threads: " + c + "\n"
                           "        working_set: " + std::to_string(kib) + "KiB\n"
                           "        updates: " + std::to_string(n) + "\n";
  auto doc = vmx::cfg::Document::from_string(yaml, "bench_core scaling");
  auto params = vmx::experiment::load(doc);
  const auto t0 = Clock::now();
  auto result = vmx::experiment::run(params, yaml);
  const auto t1 = Clock::now();
  if (!result.finished) {
    std::fprintf(stderr, "bench_core scaling: the workload did not finish\n");
    for (const auto& note : result.vm_notes) std::fprintf(stderr, "  %s\n", note.c_str());
    return 1;
  }
  YAML::Node s = YAML::Load(result.stats_json);
  double instructions = 0, memops = 0;
  for (unsigned i = 0; i < cores; ++i) {
    const YAML::Node cpu = s["system"]["cpu" + std::to_string(i)];
    instructions += cpu["instructions"].as<double>(0);
    memops += cpu["loads"].as<double>(0) + cpu["stores"].as<double>(0);
  }
  std::printf("scaling.cores: %u\n", cores);
  std::printf("scaling.host_seconds: %.6f\n", seconds(t1 - t0));
  std::printf("scaling.updates: %llu\n", static_cast<unsigned long long>(n * cores));
  std::printf("scaling.instructions: %.0f\n", instructions);
  std::printf("scaling.memory_operations: %.0f\n", memops);
  std::printf("scaling.max_rss_kib: %ld\n", max_rss_kib());
  std::printf("scaling.cpu_seconds: %.6f\n", cpu_seconds());
  std::fflush(stdout);
  return 0;
}

int usage() {
  std::fprintf(stderr,
               "usage: bench_core load [N]      host ns per load on the TLB-hit path (default N 20000000)\n"
               "       bench_core store [N]     host ns per store on the same path, to owned lines (default 20000000)\n"
               "       bench_core exit [N]      host ns per CPUID exit round trip, minimal root loop (default 2000000)\n"
               "       bench_core hv-exit [N]   the same through the full hypervisor (default 500000)\n"
               "       bench_core walk [N]      host ns per 2D walk, walk caches on, and per TLB-hit load "
               "(default 5000000)\n"
               "       bench_core walk-nocache [N]  the same with every walk cache off\n"
               "       bench_core firsttouch [N]  host time of N first touches of guest pages (default 32768)\n"
               "       bench_core firsttouch-ff [N]  the same fast-forwarded (functional)\n"
               "       bench_core fastforward [N]  N random updates over 4 MiB, fast-forwarded (default 2000000)\n"
               "       bench_core fastforward-detailed [N]  the same with full timing\n"
               "       bench_core mips CONFIG   instructions per host second of a whole config (a YAML file)\n"
               "       bench_core scaling C [N [KIB]]  C cores, C vCPUs, N random updates over KIB KiB on each\n"
               "                                   (default 200000 over 128)\n"
               "VMXSIM_BENCH_TIMING=1 turns on the store buffer, MSHRs, page walkers, the DRAM model and the stride\n"
               "prefetcher in every mode.\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && std::string(argv[1]) == "scaling") {
    // scaling C [N]
    if (argc > 5) return usage();
    char* end = nullptr;
    const unsigned long cores = std::strtoul(argv[2], &end, 10);
    if (!end || *end || cores == 0 || cores > 64) return usage();
    std::uint64_t n = 200'000;
    if (argc >= 4) {
      n = std::strtoull(argv[3], &end, 10);
      if (!end || *end || n == 0) return usage();
    }
    std::uint64_t kib = 128;
    if (argc == 5) {
      kib = std::strtoull(argv[4], &end, 10);
      if (!end || *end || kib < 4 || kib > (1u << 20)) return usage();
    }
    setenv("SYSTEMC_DISABLE_COPYRIGHT_MESSAGE", "1", 0);
    try {
      return bench_scaling(static_cast<unsigned>(cores), n, kib);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_core scaling: %s\n", e.what());
      return 1;
    }
  }
  if (argc < 2 || argc > 3) return usage();
  const std::string mode = argv[1];
  setenv("SYSTEMC_DISABLE_COPYRIGHT_MESSAGE", "1", 0);
  if (mode == "mips") {
    if (argc != 3) return usage();
    try {
      return bench_mips(argv[2]);
    } catch (const vmx::cfg::ConfigError& e) {
      std::fprintf(stderr, "bench_core mips: %s\n", e.what());
      return 2;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_core mips: %s\n", e.what());
      return 1;
    }
  }
  std::uint64_t n = 0;
  if (argc == 3) {
    char* end = nullptr;
    n = std::strtoull(argv[2], &end, 10);
    if (!end || *end || n == 0) return usage();
  }
  try {
    if (mode == "load") return bench_load(n ? n : 20'000'000, false);
    if (mode == "store") return bench_load(n ? n : 20'000'000, true);
    if (mode == "exit") return bench_exit(n ? n : 2'000'000);
    if (mode == "hv-exit") return bench_hv_exit(n ? n : 500'000);
    if (mode == "walk") return bench_walk(n ? n : 5'000'000, true);
    if (mode == "walk-nocache") return bench_walk(n ? n : 5'000'000, false);
    if (mode == "firsttouch") return bench_firsttouch(n ? n : 32'768, false);
    if (mode == "firsttouch-ff") return bench_firsttouch(n ? n : 32'768, true);
    if (mode == "fastforward") return bench_fastforward(n ? n : 2'000'000, true);
    if (mode == "fastforward-detailed") return bench_fastforward(n ? n : 2'000'000, false);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_core %s: %s\n", mode.c_str(), e.what());
    return 1;
  }
  return usage();
}
