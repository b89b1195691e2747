// A perf-like facility of the guest kernel (docs/pmu.md, "Profiling in a
// guest"): a system call programs the CPU's architectural counters (SDM
// Vol. 3B, 20.2) for counting, or PMC0 for sampling with an overflow
// interrupt every N events; user mode reads the counters with RDPMC
// (CR4.PCE set, as Linux's rdpmc for self-monitoring). Counting is per CPU
// (whatever runs on the thread's vCPU), like `perf stat -C`.
#include "guest/kernel.h"

#include "cpu/vmx.h"
#include "mmu/paging.h"
#include "pmu/pmu.h"

namespace vmx::guest {

using cpu::Core;
namespace pmsr = pmu::msr;

namespace {
constexpr std::uint64_t kCodeSyscall = 0x4000;  // as guest/kernel.cc
constexpr std::uint64_t kCodePerf = 0xA000;
constexpr std::uint64_t kEnables = 0x1 | (0x3ull << 32);  // PMC0, FIXED_CTR0 and 1
/// Bits 31:0 of -n: written to IA32_PMC0, sign-extended to the counter's
/// width, it overflows after n events (SDM Vol. 3B, 20.2.6).
std::uint64_t preset(std::uint64_t n) { return (0x100000000ull - n) & 0xFFFFFFFFull; }
}  // namespace

bool Thread::perf_open(std::uint64_t event, std::uint64_t sample_period) {
  return m_kernel->sys_perf_open(*this, event, sample_period);
}
void Thread::perf_close() { m_kernel->sys_perf_close(*this); }
std::uint64_t Thread::perf_read(unsigned which) {
  return cpu().rdpmc(which == 0 ? (1u << 30) : which == 1 ? (1u << 30) | 1 : 0);
}

bool Kernel::sys_perf_open(Thread&, std::uint64_t event, std::uint64_t sample_period) {
  Core& c = Core::current();
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  // Architectural performance monitoring version 2 or later, with at
  // least one general-purpose and two fixed counters (CPUID.0AH).
  const cpu::CpuidResult id = c.cpuid(0xA);
  const bool ok = (id.eax & 0xFF) >= 2 && ((id.eax >> 8) & 0xFF) >= 1 && (id.edx & 0x1F) >= 2 &&
                  sample_period < 0x80000000ull;
  if (ok) {
    m_perf_period = sample_period;
    c.wrmsr(pmsr::kGlobalCtrl, 0);
    c.wrmsr(pmsr::kFixedCtr0, 0);
    c.wrmsr(pmsr::kFixedCtr0 + 1, 0);
    c.wrmsr(pmsr::kPmc0, sample_period ? preset(sample_period) : 0);
    c.wrmsr(pmsr::kFixedCtrCtrl, pmu::fixedctl::field(0, pmu::fixedctl::kOs | pmu::fixedctl::kUsr) |
                                     pmu::fixedctl::field(1, pmu::fixedctl::kOs | pmu::fixedctl::kUsr));
    c.wrmsr(pmsr::kPerfEvtSel0, (event & 0xFFFF) | pmu::evtsel::kOs | pmu::evtsel::kUsr | pmu::evtsel::kEn |
                                    (sample_period ? pmu::evtsel::kInt : 0));
    c.wrmsr(pmsr::kGlobalOvfCtrl, pmu::Pmu::kCounterBits);
    if (sample_period) c.wrmsr(cpu::msr::kX2ApicLvtPmc, kPmiVector);
    c.write_cr(4, c.read_cr(4) | mmu::crbits::kCr4Pce);
    c.wrmsr(pmsr::kGlobalCtrl, kEnables);
  }
  c.set_user_mode(true);
  return ok;
}

void Kernel::sys_perf_close(Thread&) {
  Core& c = Core::current();
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  c.wrmsr(pmsr::kGlobalCtrl, 0);
  if (m_perf_period) c.wrmsr(cpu::msr::kX2ApicLvtPmc, models::Lapic::kLvtMasked | kPmiVector);
  m_perf_period = 0;
  c.set_user_mode(true);
}

// PMC0 overflowed: a sample for the interrupted thread's phase, then the
// counter is preset again, its status bit cleared and the LVT entry (masked
// by the delivery) unmasked, as Linux's perf NMI handler does.
void Kernel::perf_interrupt(Core& c) {
  charge(c, m_p.costs.tick, kCodePerf);
  if (auto* t = static_cast<Thread*>(sim::Fiber::running()->user())) ++t->m_samples[t->m_phase];
  if (!m_perf_period) return;
  c.wrmsr(pmsr::kPmc0, preset(m_perf_period));
  c.wrmsr(pmsr::kGlobalOvfCtrl, 0x1);
  c.wrmsr(cpu::msr::kX2ApicLvtPmc, kPmiVector);
}

}  // namespace vmx::guest
