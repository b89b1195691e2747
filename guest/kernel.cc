#include "guest/kernel.h"

#include <algorithm>

#include <fmt/format.h>

#include "abi/steal_time.h"
#include "guest/memory_state.h"
#include "mmu/paging.h"
#include "sim/event_trace.h"

namespace vmx::guest {

using cpu::Core;
namespace pte = mmu::pte;
namespace crb = mmu::crbits;

namespace {
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kKernelPage = pte::kPresent | pte::kWritable | pte::kGlobal | pte::kNoExecute;
constexpr std::uint64_t kTextPage = pte::kPresent | pte::kGlobal;
constexpr std::uint64_t kUserPage = pte::kPresent | pte::kWritable | pte::kUser | pte::kNoExecute;
constexpr std::uint64_t kTablePage = pte::kPresent | pte::kWritable | pte::kUser;
// Offsets of kernel paths in the kernel text (each fetches its own lines).
enum : std::uint64_t {
  kCodeFault = 0x1000,
  kCodeTick = 0x2000,
  kCodeSched = 0x3000,
  kCodeSyscall = 0x4000,
  kCodeThread = 0x5000,
  kCodeFork = 0x6000,
};
std::uint64_t cycles_of(std::uint64_t ps, std::uint64_t hz) {
  return static_cast<std::uint64_t>(static_cast<unsigned __int128>(ps) * hz / cfg::kPsPerSecond);
}
}  // namespace

std::uint64_t Thread::mmap(std::uint64_t bytes) { return m_kernel->sys_mmap(*this, bytes); }
std::uint64_t Thread::sleep(std::uint64_t ps) { return m_kernel->sys_sleep(*this, ps); }
void Thread::sleep_until(std::uint64_t tsc) { m_kernel->sys_sleep_until(*this, tsc); }
std::uint64_t Thread::tsc_hz() const { return m_kernel->tsc_hz(); }
bool Thread::munmap(std::uint64_t start) { return m_kernel->sys_munmap(*this, start); }
bool Thread::fork_and_wait(const std::function<void(Thread&)>& child) { return m_kernel->sys_fork_wait(*this, child); }

std::uint64_t Kernel::cr3_of(const Process& p) const {
  // With PCIDs the process keeps its translations across switches (bit 63:
  // do not flush, SDM Vol. 3A, 4.10.4.1).
  return m_p.pcid ? p.pml4 | (p.pcid & crb::kCr3PcidMask) | crb::kCr3NoFlush : p.pml4;
}
bool Thread::mmap_fixed(std::uint64_t start, std::uint64_t bytes, bool exec) {
  return m_kernel->sys_mmap_fixed(*this, start, bytes, exec);
}
std::uint64_t Thread::mmap_alias(std::uint64_t src, std::uint64_t bytes, bool writable, bool exec) {
  return m_kernel->sys_mmap_alias(*this, src, bytes, writable, exec);
}
void Thread::copy_to_user(std::uint64_t va, std::uint64_t value) { m_kernel->sys_put_user(*this, va, value); }
void Thread::kernel_bug(KernelBug kind, std::uint64_t va) { m_kernel->sys_kernel_bug(*this, kind, va); }

std::uint64_t Kernel::boot_cr4() const {
  return crb::kCr4Pae | crb::kCr4Pge | (m_p.paging_levels == 5 ? crb::kCr4La57 : 0) |
         (m_p.pcid ? crb::kCr4Pcide : 0) | (m_p.smep ? crb::kCr4Smep : 0) | (m_p.smap ? crb::kCr4Smap : 0);
}

Kernel::Kernel(const KernelParams& params, std::string vm_name, unsigned vcpus, std::uint64_t memory,
               std::uint64_t tsc_hz, std::uint64_t seed, RunControl* control, stats::Group* stats_parent)
    : m_p(params),
      m_vm(std::move(vm_name)),
      m_memory(memory),
      m_tsc_hz(tsc_hz),
      m_tick_cycles(cycles_of(params.tick, tsc_hz)),
      m_slice_cycles(cycles_of(params.timeslice, tsc_hz)),
      m_seed(seed),
      m_control(control),
      m_stats(stats_parent, "kernel", "the guest kernel's own view"),
      m_sched_stats(&m_stats, "sched", "the thread scheduler (docs/scheduling.md)"),
      m_gran_cycles(cycles_of(params.sched.wakeup_granularity, tsc_hz)),
      m_credit_cycles(cycles_of(params.sched.wakeup_credit, tsc_hz)),
      m_balance_cycles(cycles_of(params.sched.balance_interval, tsc_hz)),
      m_pt(static_cast<unsigned>(params.paging_levels), kTablePage, [this](Core& c) { return alloc_table(c); }) {
  if (m_p.smep || m_p.smap) {
    auto& g = m_stats.subgroup("protection", "SMEP/SMAP as the kernel meets them (docs/protection.md)");
    m_smep_oopses = &g.make<stats::Counter>("smep_oopses", "faults",
                                            "kernel instruction fetches from user pages stopped by SMEP (oops: the "
                                            "thread is killed)");
    m_smap_oopses = &g.make<stats::Counter>("smap_oopses", "faults",
                                            "kernel data accesses to user pages outside STAC/CLAC stopped by SMAP "
                                            "(oops: the thread is killed)");
    m_uaccesses = &g.make<stats::Counter>("uaccesses", "accesses",
                                          "user-memory accesses by the kernel's accessors (STAC/CLAC under SMAP)");
  }
  for (unsigned i = 0; i < vcpus; ++i) {
    auto v = std::make_unique<Vcpu>();
    v->index = i;
    v->runq.reserve(64);
    v->preempted.assign(vcpus, 0);
    v->steal_seen = &m_stats.make<stats::Counter>(
        fmt::format("steal_ns_vcpu{}", i), "ns",
        "steal time the guest accounted from its steal-time record (the increments it read)");
    Vcpu* raw = v.get();
    v->idle = std::make_unique<sim::Fiber>(fmt::format("{}.vcpu{}", m_vm, i), [this, raw] { vcpu_main(*raw); });
    m_vcpus.push_back(std::move(v));
  }
}

Kernel::~Kernel() = default;

std::uint64_t Kernel::entry_point(unsigned index) { return cpu::code_address(m_vcpus.at(index)->idle.get()); }

void Kernel::add_process(std::shared_ptr<Program> workload, unsigned threads, std::uint64_t page_size,
                         std::int64_t nice) {
  auto p = std::make_unique<Process>();
  p->workload = std::move(workload);
  p->page_size = page_size;
  p->weight = nice_to_weight(nice);
  p->next_va = kUserBase;
  m_pending_processes.emplace_back(p.get(), threads);
  m_processes.push_back(std::move(p));
}

void Kernel::charge(Core& c, std::uint64_t instructions, std::uint64_t code_offset) {
  c.fetch(kKernelText + code_offset, m_p.costs.code_bytes);
  c.compute(instructions);
}

Kernel::Vcpu& Kernel::this_vcpu() {
  sim::Fiber* f = sim::Fiber::running();
  if (auto* t = static_cast<Thread*>(f->user())) return *m_vcpus[t->m_vcpu];
  for (auto& v : m_vcpus)
    if (v->idle.get() == f) return *v;
  throw cpu::SimulationError(m_vm + ": kernel code running on an unknown context");
}

// ---------------------------------------------------------------------------
// Boot.

void Kernel::vcpu_main(Vcpu& v) {
  Core& c = Core::current();
  c.lidt(this);
  if (v.index == 0) {
    boot(c);
  } else {
    // Application processors wait, halted, for the bootstrap processor's
    // wake-up IPI and then turn on paging with the kernel's tables.
    c.sti();
    while (c.load(kImageBase + 0x1000) != ap_go()) c.hlt();
    c.cli();
    c.wrmsr(cpu::msr::kIa32Efer, crb::kEferLme | crb::kEferNxe);
    c.write_cr(4, boot_cr4());
    c.write_cr(3, m_kernel_pml4);
    c.write_cr(0, crb::kCr0Pe | crb::kCr0Pg | crb::kCr0Wp);
  }
  if (m_p.pv_steal) c.wrmsr(abi::steal_time::kMsr, steal_record(v.index) | abi::steal_time::kMsrEnable);
  for (;;) {
    // The run queue is checked with interrupts off and the halt is STI;HLT,
    // so a wake-up arriving in between is not lost.
    c.cli();
    if (!v.runq.empty()) {
      c.sti();
      schedule(c, v, false);
      continue;
    }
    // Idle: no tick while there is nothing to run (as with NOHZ idle);
    // sleepers still get their wake-up.
    if (v.tick_at) program_timer(c, v, true);
    c.sti();
    c.hlt();
  }
}

void Kernel::boot(Core& c) {
  // Load the kernel image and clear the page-table pool (paging is off:
  // addresses are guest-physical).
  c.rep_stos(kImageBase, 0, kImageSize);
  std::uint64_t pool = std::max<std::uint64_t>(1ull << 20, (m_memory / 128) & ~(kPage - 1));
  m_pool_next = kPoolBase;
  m_pool_end = kPoolBase + pool;
  m_frame_next = m_pool_end;
  m_large_low = m_memory & ~((2ull << 20) - 1);
  c.rep_stos(m_pool_next, 0, m_pool_end - m_pool_next);
  count_free_frames();
  if (m_want_sev) sev_probe(c);

  m_kernel_pml4 = alloc_table(c);
  for (std::uint64_t off = 0; off < kImageSize; off += kPage) {
    // The page of steal-time records is shared with the hypervisor, which
    // writes it: mapped without the C-bit (Linux's __bss_decrypted).
    const std::uint64_t c_bit = (kImageBase + off == steal_page()) ? 0 : m_c_bit;
    m_pt.map(c, m_kernel_pml4, kKernelText + off, kImageBase + off, kTextPage | m_c_bit);
    m_pt.map(c, m_kernel_pml4, kDirectMap + kImageBase + off, kImageBase + off, kKernelPage | c_bit);
  }
  for (std::uint64_t a = kPoolBase; a < m_pool_end; a += kPage)
    m_pt.map(c, m_kernel_pml4, kDirectMap + a, a, kKernelPage | m_c_bit);

  // Long mode with paging (SDM Vol. 3A, 10.8.5).
  c.wrmsr(cpu::msr::kIa32Efer, crb::kEferLme | crb::kEferNxe);
  c.write_cr(4, boot_cr4());
  c.write_cr(3, m_kernel_pml4);
  c.write_cr(0, crb::kCr0Pe | crb::kCr0Pg | crb::kCr0Wp);
  m_pt.set_direct_map(kDirectMap);
  // Cleared through its shared mapping: the boot's clear above wrote it
  // encrypted, which the hypervisor would read as garbage.
  if (m_c_bit) c.rep_stos(kDirectMap + steal_page(), 0, kPage);
  net_probe(c);
  if (m_want_swap) swap_probe(c);
  if (m_want_balloon) balloon_probe(c);

  // Processes: each gets a PML4 whose kernel half is the kernel's.
  for (auto& [proc, nthreads] : m_pending_processes) {
    proc->pml4 = alloc_table(c);
    proc->pcid = m_next_pcid++;
    m_pt.copy_entries(c, m_kernel_pml4, proc->pml4, 256, 512);
    for (unsigned i = 0; i < nthreads; ++i) {
      auto t = std::make_unique<Thread>();
      t->m_kernel = this;
      t->m_process = proc;
      t->m_index = i;
      t->m_vcpu = m_next_vcpu++ % static_cast<unsigned>(m_vcpus.size());
      t->m_rng = m_seed ^ (0x9E3779B97F4A7C15ull * (m_threads.size() + 1));
      t->m_finite = proc->workload->finite();
      t->m_weight = proc->weight;
      t->m_slot = m_next_slot++ % kSeSlots;
      Thread* raw = t.get();
      t->m_fiber = std::make_unique<sim::Fiber>(fmt::format("{}.thread{}", m_vm, m_threads.size()),
                                                [this, raw] { thread_main(*raw); });
      t->m_fiber->set_user(raw);
      charge(c, m_p.costs.thread_start, kCodeThread);
      enqueue(c, *m_vcpus[t->m_vcpu], *raw);
      m_threads.push_back(std::move(t));
    }
  }
  m_pending_processes.clear();

  // Release the other vCPUs.
  c.store(kDirectMap + kImageBase + 0x1000, ap_go());
  for (unsigned i = 1; i < m_vcpus.size(); ++i)
    c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{i} << 32) | kWakeVector);
  m_booted = true;
}

// Memory encryption (AMD64 APM Vol. 2, 15.34.10, as Linux's sme_enable):
// the processor reports SEV and the C-bit position in CPUID 8000_001FH, and
// SEV_STATUS says whether this guest runs encrypted. From then on every
// mapping the kernel makes carries the C-bit, and the address bits of an
// entry exclude it.
void Kernel::sev_probe(Core& c) {
  if (c.cpuid(0x80000000).eax < 0x8000001F) return;
  const cpu::CpuidResult r = c.cpuid(0x8000001F);
  if (!(r.eax & (1u << 1)) || !(c.rdmsr(cpu::msr::kSevStatus) & 1)) return;
  m_c_bit = std::uint64_t{1} << (r.ebx & 63);
  m_pt.set_addr_mask(pte::kAddrMask & ~m_c_bit);
}

// ---------------------------------------------------------------------------
// Memory.

std::uint64_t Kernel::alloc_table(Core& c) {
  if (!m_free_tables.empty()) {
    std::uint64_t t = m_free_tables.back();  // cleared when freed
    m_free_tables.pop_back();
    return t;
  }
  if (m_pool_next >= m_pool_end) panic(c, "out of page-table pages");
  std::uint64_t t = m_pool_next;
  m_pool_next += kPage;
  return t;  // the pool was cleared at boot
}

std::uint64_t Kernel::alloc_frame(Core& c, std::uint64_t size) {
  std::uint64_t f;
  auto& freed = m_free_frames[size == kPage ? 0 : size == (2ull << 20) ? 1 : 2];
  if (!freed.empty()) {
    f = freed.back();  // already in the direct map
    freed.pop_back();
  } else if (size == kPage) {
    if (m_frame_next + kPage > m_large_low) return 0;
    f = m_frame_next;
    m_frame_next += kPage;
    m_pt.map(c, m_kernel_pml4, kDirectMap + f, f, kKernelPage | m_c_bit);
  } else {
    // Large frames come from the top, aligned, never sharing a 2 MiB block
    // with 4 KiB frames; the direct map covers them with 2 MiB pages.
    if (m_large_low < size) return 0;
    f = (m_large_low - size) & ~(size - 1);
    if (f < ((m_frame_next + (2ull << 20) - 1) & ~((2ull << 20) - 1))) return 0;
    m_large_low = f;
    for (std::uint64_t off = 0; off < size; off += 2ull << 20)
      m_pt.map(c, m_kernel_pml4, kDirectMap + f + off, f + off, kKernelPage | pte::kPageSize | m_c_bit, 2);
  }
  count_free_frames();
  // clear_page through the direct map.
  c.rep_stos(kDirectMap + f, 0, size);
  return f;
}

void Kernel::count_free_frames() {
  std::uint64_t n = m_frame_next < m_large_low ? (m_large_low - m_frame_next) / kPage : 0;
  for (unsigned order = 0; order < 3; ++order) n += m_free_frames[order].size() << (9 * order);
  m_frames_free.set(static_cast<double>(n));
}

std::uint64_t Kernel::sys_mmap(Thread& t, std::uint64_t bytes) {
  Core& c = Core::current();
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  Process& p = *t.m_process;
  const std::uint64_t page = p.page_size;
  std::uint64_t size = (bytes + page - 1) & ~(page - 1);
  std::uint64_t start = 0;
  std::uint64_t aligned = (p.next_va + page - 1) & ~(page - 1);
  if (size && aligned + size <= kUserTop) {
    start = aligned;
    p.regions.push_back({start, start + size});
    p.next_va = start + size + kPage;  // a guard page between regions
  }
  c.set_user_mode(true);
  return start;
}

bool Kernel::sys_mmap_fixed(Thread& t, std::uint64_t start, std::uint64_t bytes, bool exec) {
  Core& c = Core::current();
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  Process& p = *t.m_process;
  std::uint64_t end = (start + bytes + kPage - 1) & ~(kPage - 1);
  bool ok = (start & (kPage - 1)) == 0 && start >= kPage && end <= kUserTop && end > start &&
            std::none_of(p.regions.begin(), p.regions.end(),
                         [&](const Process::Region& r) { return start < r.end && r.start < end; });
  if (ok) p.regions.push_back({start, end, exec});
  c.set_user_mode(true);
  return ok;
}

std::uint64_t Kernel::sys_mmap_alias(Thread& t, std::uint64_t src, std::uint64_t bytes, bool writable, bool exec) {
  Core& c = Core::current();
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  Process& p = *t.m_process;
  const std::uint64_t size = (bytes + kPage - 1) & ~(kPage - 1);
  auto source = std::find_if(p.regions.begin(), p.regions.end(),
                             [src](const Process::Region& r) { return r.start == src && !r.alias_of; });
  std::uint64_t start = 0;
  const std::uint64_t aligned = (p.next_va + kPage - 1) & ~(kPage - 1);
  if (p.page_size == kPage && source != p.regions.end() && size && size <= source->end - source->start &&
      aligned + size <= kUserTop) {
    start = aligned;
    p.regions.push_back({start, start + size, exec, writable, src});
    p.next_va = start + size + kPage;
  }
  c.set_user_mode(true);
  return start;
}

// put_user: the kernel's user-memory accessor. Under SMAP the access is
// bracketed by STAC/CLAC (Linux's __uaccess_begin/__uaccess_end), so it is
// an explicit supervisor access with RFLAGS.AC = 1 (SDM Vol. 3A, 4.6.1).
void Kernel::sys_put_user(Thread&, std::uint64_t va, std::uint64_t value) {
  Core& c = Core::current();
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  if (m_p.smap) c.stac();
  c.store(va, value);
  if (m_p.smap) c.clac();
  if (m_uaccesses) ++*m_uaccesses;
  c.set_user_mode(true);
}

void Kernel::sys_kernel_bug(Thread&, Thread::KernelBug kind, std::uint64_t va) {
  Core& c = Core::current();
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  if (kind == Thread::KernelBug::UserRead) c.load(va);
  else c.fetch(va, 64);
  c.set_user_mode(true);
}

bool Kernel::sys_munmap(Thread& t, std::uint64_t start) {
  Core& c = Core::current();
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  Process& p = *t.m_process;
  auto region = std::find_if(p.regions.begin(), p.regions.end(),
                             [start](const Process::Region& r) { return r.start == start; });
  if (region == p.regions.end()) {
    c.set_user_mode(true);
    return false;
  }
  // The region leaves the address space first: the loop below can be
  // preempted, and another thread of the process may mmap (reallocating
  // the region list) or fault on the range (which is then unmapped) meanwhile.
  // A region other mappings alias keeps its frames while they live (their
  // frames are not reference-counted): munmap refuses it; an alias gives
  // back its translations but not the frames, which its source owns.
  if (std::any_of(p.regions.begin(), p.regions.end(),
                  [start](const Process::Region& r) { return r.alias_of == start; })) {
    c.set_user_mode(true);
    return false;
  }
  const bool alias = region->alias_of != 0;
  const std::uint64_t start_va = region->start, end_va = region->end;
  p.regions.erase(region);
  const std::uint64_t page = p.page_size;
  const unsigned leaf = page == (1ull << 30) ? 3 : page == (2ull << 20) ? 2 : 1;
  auto& freed = m_free_frames[leaf - 1];
  for (std::uint64_t va = start_va; va < end_va; va += page) {
    // Find the leaf entry through the direct map; absent tables mean the
    // page was never touched.
    const PageTables::Slot s = m_pt.walk(c, p.pml4, va, leaf);
    if (!s.present) {
      if (m_swap && s.level == leaf && swp::is_entry(s.value)) {  // swapped out: release its slot
        swap_free_entry(s.value);
        PageTables::clear(c, s.entry);
      }
      continue;
    }
    if (!alias) freed.push_back(s.value & m_pt.addr_mask());
    charge(c, m_p.costs.unmap_page, kCodeSyscall);
    PageTables::clear(c, s.entry);
    c.invlpg(va);
  }
  count_free_frames();
  // Other vCPUs may hold translations of this address space: shoot them
  // down with an IPI (their handler reloads CR3). The sender does not wait.
  if (m_vcpus.size() > 1)
    for (auto& v : m_vcpus)
      if (v->index != t.m_vcpu) c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{v->index} << 32) | kFlushVector);
  c.set_user_mode(true);
  return true;
}

void Kernel::page_fault(Core& c, std::uint32_t error_code) {
  charge(c, m_p.costs.page_fault, kCodeFault);
  ++m_page_faults;
  std::uint64_t addr = c.read_cr(2);
  auto* t = static_cast<Thread*>(sim::Fiber::running()->user());
  if (!t) panic(c, fmt::format("kernel page fault at {:#x} (error code {:#x})", addr, error_code));
  Process& p = *t->m_process;
  auto region = std::find_if(p.regions.begin(), p.regions.end(),
                             [addr](const Process::Region& r) { return addr >= r.start && addr < r.end; });
  // What the fault needs of the region, read before any operation: other
  // threads of the process may change the region list meanwhile.
  const bool in_region = region != p.regions.end();
  const bool exec = in_region && region->exec;
  const bool writable = !in_region || region->writable;
  const std::uint64_t alias_src = in_region && region->alias_of ? region->alias_of + (addr - region->start) : 0;
  // A fault of the kernel itself (U/S clear in the error code) on a present
  // user page: SMEP (a fetch) or SMAP (a data access while the interrupted
  // context's RFLAGS.AC was clear). Linux reports these as an oops and
  // kills the task (arch/x86/mm/fault.c); so does this kernel.
  if ((m_p.smep || m_p.smap) && !(error_code & mmu::pfec::kUser) && (error_code & mmu::pfec::kPresent) &&
      addr < kUserTop) {
    const bool fetch = error_code & mmu::pfec::kFetch;
    if (fetch && m_p.smep) {
      ++*m_smep_oopses;
      kill_current(c, "oops: kernel fetch from user address {:#x} (SMEP)", addr);
      return;
    }
    if (!fetch && m_p.smap && !c.alignment_check_flag()) {
      ++*m_smap_oopses;
      kill_current(c, "oops: kernel access to user address {:#x} outside STAC/CLAC (SMAP)", addr);
      return;
    }
  }
  // Threads may fault on the same page, or on pages sharing a frame, at
  // once: the fault is handled under the kernel's page-table lock (a
  // spinlock in the kernel image, as Linux's page_table_lock), and a page
  // that another thread mapped meanwhile is left as it is.
  const std::uint64_t lock = kDirectMap + kImageBase + kPageTableLock;
  while (c.xchg(lock, 1) != 0)
    while (c.load(lock) != 0) c.pause();
  // A write to a present read-only page of a writable region: copy-on-write.
  if (in_region && writable && (error_code & mmu::pfec::kPresent) && (error_code & mmu::pfec::kWrite) &&
      p.page_size == kPage && cow_fault(c, p, addr)) {
    ++m_cow_faults;
    c.store(lock, 0);
    return;
  }
  if (m_swap && in_region && !(error_code & mmu::pfec::kPresent) && p.page_size == kPage) {
    // A swap entry in the PTE: read the page back (guest/swap.cc).
    if (const std::uint64_t entry = m_pt.leaf_entry(c, p.pml4, addr)) {
      const std::uint64_t e = c.load(entry);
      if (swp::is_entry(e)) {
        swap_in(c, *t, p, addr & ~(kPage - 1), entry, e, exec);
        return;
      }
    }
  }
  if (!in_region || (error_code & mmu::pfec::kPresent)) {
    c.store(lock, 0);
    kill_current(c, "segmentation fault at {:#x} (error code {:#x})", addr, error_code);
    return;
  }
  const std::uint64_t page = p.page_size;
  const unsigned leaf = page == (1ull << 30) ? 3 : page == (2ull << 20) ? 2 : 1;
  if (m_pt.walk(c, p.pml4, addr, leaf).present) {
    c.store(lock, 0);
    return;
  }
  std::uint64_t frame = 0;
  if (alias_src) {
    // An alias maps the frame its source page has now.
    const std::uint64_t src_entry = m_pt.leaf_entry(c, p.pml4, alias_src);
    const std::uint64_t e = src_entry ? c.load(src_entry) : 0;
    if (!(e & pte::kPresent)) {
      c.store(lock, 0);
      kill_current(c, "bus error at {:#x}: the aliased page is not populated", addr);
      return;
    }
    frame = e & m_pt.addr_mask();
  } else {
    frame = alloc_frame(c, page);
  }
  if (!frame) {
    c.store(lock, 0);
    // Reclaim or deflate the balloon, then retry by faulting again.
    if (leaf == 1 && out_of_memory(c)) return;
    kill_current(c, "out of memory");
    return;
  }
  std::uint64_t flags = kUserPage | m_c_bit | (leaf > 1 ? pte::kPageSize : 0);
  if (exec) flags &= ~pte::kNoExecute;
  if (!writable) flags &= ~pte::kWritable;
  m_pt.map(c, p.pml4, addr & ~(page - 1), frame, flags, leaf);
  if (m_swap && leaf == 1) lru_add(p, addr & ~(page - 1));
  if (m_mem_stats) ++m_mem_stats->minor_faults;
  c.store(lock, 0);
}

// ---------------------------------------------------------------------------
// fork with copy-on-write.

bool Kernel::sys_fork_wait(Thread& t, const std::function<void(Thread&)>& body) {
  Core& c = Core::current();
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  Process& parent = *t.m_process;
  if (parent.page_size != kPage || m_pool_end - m_pool_next + m_free_tables.size() * kPage < 64 * kPage) {
    c.set_user_mode(true);
    return false;
  }
  m_zombies.clear();  // children reaped earlier: nothing runs on their stacks
  charge(c, m_p.costs.fork, kCodeFork);

  auto child = std::make_unique<Process>();
  child->pml4 = alloc_table(c);
  child->page_size = parent.page_size;
  child->next_va = parent.next_va;
  child->regions = parent.regions;
  child->workload = parent.workload;
  child->pcid = m_next_pcid;
  child->fresh_pcid = true;
  m_next_pcid = m_next_pcid % 4095 + 1;
  m_pt.copy_entries(c, parent.pml4, child->pml4, 256, 512);
  // Share every mapped page read-only in both address spaces, under the
  // page-table lock (the parent's other threads may fault meanwhile). The
  // loop walks the child's copy of the region list: the parent's may change
  // (another of its threads mmaps while this one is preempted).
  const std::uint64_t pt_lock = kDirectMap + kImageBase + kPageTableLock;
  while (c.xchg(pt_lock, 1) != 0)
    while (c.load(pt_lock) != 0) c.pause();
  for (const auto& r : child->regions) {
    for (std::uint64_t va = r.start; va < r.end; va += kPage) {
      std::uint64_t entry = m_pt.leaf_entry(c, parent.pml4, va);
      if (!entry) {
        va = (va | ((2ull << 20) - 1));  // no page table here: skip its 2 MiB
        continue;
      }
      std::uint64_t e = c.load(entry);
      if (!(e & pte::kPresent)) continue;
      charge(c, m_p.costs.fork_page, kCodeFork);
      if (e & pte::kWritable) c.store(entry, e & ~pte::kWritable);
      std::uint64_t frame = e & m_pt.addr_mask();
      m_pt.map(c, child->pml4, va, frame, (e & ~pte::kWritable) & ~m_pt.addr_mask() & ~(pte::kAccessed | pte::kDirty));
      auto [it, inserted] = m_frame_refs.try_emplace(frame, 1);
      ++it->second;
    }
  }
  c.store(pt_lock, 0);
  // The parent's TLB may hold writable translations of those pages.
  c.write_cr(3, (c.read_cr(3) & ~crb::kCr3NoFlush));

  auto ct = std::make_unique<Thread>();
  ct->m_kernel = this;
  ct->m_process = child.get();
  ct->m_vcpu = t.m_vcpu;
  ct->m_rng = t.m_rng ^ 0xC0FFEEull;
  ct->m_finite = false;
  ct->m_child_body = body;
  ct->m_waiter = &t;
  ct->m_weight = t.m_weight;
  ct->m_slot = m_next_slot++ % kSeSlots;
  ct->m_vruntime = m_vcpus[t.m_vcpu]->min_vruntime;
  Thread* raw = ct.get();
  ct->m_fiber = std::make_unique<sim::Fiber>(fmt::format("{}.child{}", m_vm, child->pcid),
                                             [this, raw] { child_main(*raw); }, 64 * 1024);
  ct->m_fiber->set_user(raw);
  Process* child_raw = child.get();
  m_processes.push_back(std::move(child));
  m_threads.push_back(std::move(ct));

  // Wait: the child runs next on this vCPU; it requeues us when it exits.
  Vcpu& v = *m_vcpus[t.m_vcpu];
  c.cli();
  enqueue(c, v, *raw);
  schedule(c, v, false);
  Core& now = Core::current();
  reap(now, *child_raw);
  now.sti();
  now.set_user_mode(true);
  return true;
}

void Kernel::child_main(Thread& t) {
  Core& c = Core::current();
  charge(c, m_p.costs.context_switch, kCodeThread);
  c.set_user_mode(true);
  c.sti();
  t.m_child_body(t);
  Core& c2 = Core::current();
  c2.set_user_mode(false);
  charge(c2, m_p.costs.syscall, kCodeSyscall);
  c2.cli();
  t.m_dead = true;
  Vcpu& v = *m_vcpus[t.m_vcpu];
  wake_thread(c2, v, *t.m_waiter);
  schedule(c2, v, false);
  throw cpu::SimulationError("an exited guest child was resumed");
}

void Kernel::reap(Core& c, Process& child) {
  if (m_swap) {  // the reclaim clock forgets the child's pages
    auto& lru = m_swap->lru;
    lru.erase(std::remove_if(lru.begin(), lru.end(), [&child](const SwapState::Resident& r) { return r.p == &child; }),
              lru.end());
  }
  // Drop the child's references to its frames.
  for (const auto& r : child.regions) {
    for (std::uint64_t va = r.start; va < r.end; va += kPage) {
      std::uint64_t entry = m_pt.leaf_entry(c, child.pml4, va);
      if (!entry) {
        va = (va | ((2ull << 20) - 1));
        continue;
      }
      std::uint64_t e = c.load(entry);
      if (!(e & pte::kPresent)) {
        if (m_swap && swp::is_entry(e)) swap_free_entry(e);
        continue;
      }
      charge(c, m_p.costs.unmap_page, kCodeSyscall);
      std::uint64_t frame = e & m_pt.addr_mask();
      auto it = m_frame_refs.find(frame);
      if (it == m_frame_refs.end()) {
        m_free_frames[0].push_back(frame);
      } else if (--it->second == 1) {
        m_frame_refs.erase(it);
      }
    }
  }
  count_free_frames();
  // Its user half of the page tables, then its top-level table.
  m_pt.release_below(c, child.pml4, m_pt.levels(), 0, 256, [this](std::uint64_t t) { m_free_tables.push_back(t); });
  c.rep_stos(m_pt.table_va(child.pml4), 0, kPage);  // page-table pages are handed out cleared
  m_free_tables.push_back(child.pml4);
  // Forget the process and its thread (the thread's stack goes at the next fork).
  for (auto it = m_threads.begin(); it != m_threads.end(); ++it)
    if ((*it)->m_process == &child) {
      m_zombies.push_back(std::move(*it));
      m_threads.erase(it);
      break;
    }
  for (auto it = m_processes.begin(); it != m_processes.end(); ++it)
    if (it->get() == &child) {
      m_processes.erase(it);
      break;
    }
}

bool Kernel::cow_fault(Core& c, Process& p, std::uint64_t addr) {
  std::uint64_t entry = m_pt.leaf_entry(c, p.pml4, addr);
  if (!entry) return false;
  std::uint64_t e = c.load(entry);
  if (!(e & pte::kPresent) || (e & pte::kWritable)) return false;
  charge(c, m_p.costs.cow_fault, kCodeFault);
  std::uint64_t frame = e & m_pt.addr_mask();
  auto it = m_frame_refs.find(frame);
  std::uint64_t flags = (e & ~m_pt.addr_mask()) | pte::kWritable;
  if (it == m_frame_refs.end()) {
    c.store(entry, e | pte::kWritable);  // the last user: keep the frame
  } else {
    std::uint64_t copy = alloc_frame(c, kPage);
    if (!copy) return false;
    c.rep_movs(kDirectMap + copy, kDirectMap + frame, kPage);
    c.store(entry, copy | flags);
    // Other vCPUs ran meanwhile (a fork may have added references): look
    // the count up again rather than trusting the iterator.
    it = m_frame_refs.find(frame);
    if (it != m_frame_refs.end() && --it->second == 1) m_frame_refs.erase(it);
  }
  c.invlpg(addr);
  return true;
}

// ---------------------------------------------------------------------------
// Threads and scheduling.

void Kernel::thread_main(Thread& t) {
  Core& c = Core::current();
  charge(c, m_p.costs.context_switch, kCodeThread);
  c.set_user_mode(true);
  c.sti();
  t.m_process->workload->run(t);
  Core& c2 = Core::current();
  c2.set_user_mode(false);
  charge(c2, m_p.costs.syscall, kCodeSyscall);
  if (t.m_finite && m_control) m_control->thread_finished();
  t.m_dead = true;
  schedule(c2, *m_vcpus[t.m_vcpu], false);
  throw cpu::SimulationError("an exited guest thread was resumed");
}

void Kernel::kill_current_thread(Core& c) {
  auto* t = static_cast<Thread*>(sim::Fiber::running()->user());
  if (!t) panic(c, m_kill_reason);
  m_panic = fmt::format("thread {} killed: {}", t->m_fiber->name(), m_kill_reason);
  if (t->m_finite && m_control) m_control->thread_finished();
  t->m_dead = true;
  // A forked child's parent waits in waitpid: it returns (as for a child
  // killed by a signal).
  if (t->m_waiter) wake_thread(c, *m_vcpus[t->m_vcpu], *t->m_waiter);
  schedule(c, *m_vcpus[t->m_vcpu], false);
  throw cpu::SimulationError("a killed guest thread was resumed");
}

void Kernel::panic(Core& c, const std::string& why) {
  // A kernel panic is the guest's business: it stops, the machine goes on.
  m_panic = "kernel panic: " + why;
  c.cli();
  c.wrmsr(cpu::msr::kIa32TscDeadline, 0);
  for (;;) c.hlt();
}

void Kernel::program_timer(Core& c, Vcpu& v, bool restart_tick) {
  std::uint64_t now = c.rdtsc();
  if (restart_tick) v.tick_at = (v.current || !v.runq.empty()) ? now + m_tick_cycles : 0;
  std::uint64_t next = v.tick_at;
  for (const Thread* t : v.sleepers)
    if (!next || t->m_wake_at < next) next = t->m_wake_at;
  if (next != v.armed_at) {
    c.wrmsr(cpu::msr::kIa32TscDeadline, next);
    v.armed_at = next;
  }
}

std::uint64_t Kernel::sys_sleep(Thread& t, std::uint64_t ps) {
  std::uint64_t wake = Core::current().rdtsc() + cycles_of(ps, m_tsc_hz);
  sys_sleep_until(t, wake);
  return wake;
}

void Kernel::sys_sleep_until(Thread& t, std::uint64_t wake) {
  Core& c = Core::current();
  c.set_user_mode(false);
  charge(c, m_p.costs.syscall, kCodeSyscall);
  Vcpu& v = *m_vcpus[t.m_vcpu];
  c.cli();  // the timer handler edits the sleepers too
  if (c.rdtsc() >= wake) {
    c.sti();
    c.set_user_mode(true);
    return;
  }
  t.m_wake_at = wake;
  v.sleepers.push_back(&t);
  program_timer(c, v, false);
  schedule(c, v, false);  // returns once woken and picked again
  Core& now = Core::current();
  now.sti();
  now.set_user_mode(true);
}

// Event trace (docs/event_trace.md, category guest): the guest's own view
// of its vCPU, one slice per thread run or idle period, in the vCPU's core
// time. While the hypervisor runs another vCPU the guest's thread still
// "runs" here: the vCPU row shows that time as stolen.
void Kernel::trace_switch(Core& c, Vcpu& v, const Thread* prev) {
  trace::EventTrace* t = trace::EventTrace::active();
  if (!t->on(trace::kGuest)) return;
  if (v.trace_track < 0)
    v.trace_track = static_cast<int>(t->track(trace::vcpu_threads_row(m_vm, v.index, m_trace_host)));
  const std::uint64_t now = c.now_ps();
  if (prev)
    t->slice(trace::kGuest, static_cast<unsigned>(v.trace_track), "thread", v.trace_since_ps, now, {"pcid", prev->m_process->pcid},
             {"thread", prev->m_index});
  else
    t->slice(trace::kGuest, static_cast<unsigned>(v.trace_track), "idle", v.trace_since_ps, now);
  v.trace_since_ps = now;
}

void Kernel::schedule(Core& c, Vcpu& v, bool requeue_current) {
  // requeue_current: an interrupt preempts the running thread, which stays
  // runnable; otherwise it blocks or exits. The interrupt flag and privilege
  // level belong to the context being switched out; it gets them back when
  // it is switched in again. The run queue is not touched by this vCPU's own
  // interrupt handlers meanwhile.
  const bool was_enabled = c.interrupts_enabled();
  const std::uint8_t was_cpl = c.cpl();
  c.cli();
  Thread* prev = v.current;
  update_curr(c, v);
  v.current = nullptr;
  if (prev) {
    prev->m_irq_preempted = requeue_current && !prev->m_dead;
    if (prev->m_irq_preempted) enqueue(c, v, *prev);
  }
  if (v.runq.empty()) balance(c, v, true);  // newly idle: pull queued work
  Thread* next = dequeue_first(c, v);
  v.current = next;
  store_rq(c, v);
  c.store(rq_va(v.index) + 32, next ? se_va(*next) : 0);  // rq->curr
  if (next) {
    next->m_slice_used = 0;
    next->m_exec_start = c.rdtsc();
  }
  if (next == prev) {
    if (was_enabled) c.sti();
    return;
  }
  if (trace::EventTrace::active()) [[unlikely]] trace_switch(c, v, prev);
  ++m_sched_stats.switches;
  charge(c, m_p.costs.context_switch, kCodeSched);
  c.set_user_mode(false);
  if (next) {
    Process& np = *next->m_process;
    std::uint64_t cr3 = cr3_of(np);
    if (np.fresh_pcid) {
      // A recycled PCID may still tag a dead process's translations.
      np.fresh_pcid = false;
      c.write_cr(3, cr3 & ~crb::kCr3NoFlush);
    } else if ((c.read_cr(3) & ~crb::kCr3NoFlush) != (cr3 & ~crb::kCr3NoFlush)) {
      c.write_cr(3, cr3);
    }
    if (!v.tick_at) program_timer(c, v, true);
    c.switch_context(*next->m_fiber);
  } else {
    c.switch_context(*v.idle);
  }
  Core& now = Core::current();
  now.set_user_mode(was_cpl == 3);
  if (was_enabled) now.sti();
}

void Kernel::interrupt(Core& c, std::uint8_t vector) {
  c.wrmsr(cpu::msr::kX2ApicEoi, 0);
  if (vector == kFlushVector) {
    // TLB shootdown: reloading CR3 with the flush bit clear drops this
    // address space's non-global translations.
    c.write_cr(3, c.read_cr(3) & ~crb::kCr3NoFlush);
    return;
  }
  if (m_net && vector == m_net->vector()) {
    net_interrupt(c);
    return;
  }
  if (m_swap && vector == VirtioBlkDriver::kVector) {
    blk_interrupt(c);
    return;
  }
  if (vector == kWakeVector) {
    // Another vCPU queued a thread here: preempt if it is owed the CPU (an
    // idle vCPU's loop picks it up after the halt).
    Vcpu& v = this_vcpu();
    if (v.current && !v.runq.empty() && should_preempt(v, *v.runq.front())) {
      ++m_sched_stats.wake_preemptions;
      schedule(c, v, true);
    }
    return;
  }
  if (vector == kPmiVector) {
    perf_interrupt(c);
    return;
  }
  if (vector != kTimerVector) return;
  charge(c, m_p.costs.tick, kCodeTick);
  Vcpu& v = this_vcpu();
  update_curr(c, v);
  if (m_p.pv_steal && !m_p.sched.pv) read_steal(c, v);  // steal accounting at the tick
  v.armed_at = 0;  // the deadline timer disarms itself when it fires
  std::uint64_t now = c.rdtsc();
  if (m_p.sched.pv) update_capacity(c, v, now);
  // Wake the sleepers whose time has come (in the order they went to sleep).
  std::size_t due = 0;
  for (std::size_t i = 0; i < v.sleepers.size(); ++i) {
    Thread* t = v.sleepers[i];
    if (t->m_wake_at <= now) v.woken.push_back(t);
    else v.sleepers[due++] = t;
  }
  v.sleepers.resize(due);
  for (Thread* t : v.woken) wake_thread(c, v, *t);
  v.woken.clear();
  bool tick_due = !v.tick_at || now >= v.tick_at;
  program_timer(c, v, tick_due);
  if (tick_due && now >= v.next_balance && m_vcpus.size() > 1) {
    v.next_balance = now + m_balance_cycles;
    balance(c, v, false);
  }
  if (v.current && !v.runq.empty()) {
    if (v.current->m_slice_used >= m_slice_cycles) {
      schedule(c, v, true);
    } else if (should_preempt(v, *v.runq.front())) {
      ++m_sched_stats.wake_preemptions;
      schedule(c, v, true);
    }
  }
}

void Kernel::exception(Core& c, std::uint8_t vector, std::uint32_t error_code) {
  if (vector == cpu::vec::kPageFault) {
    page_fault(c, error_code);
    return;
  }
  if (static_cast<Thread*>(sim::Fiber::running()->user()))
    kill_current(c, "exception {} (error code {:#x})", vector, error_code);
  else
    panic(c, fmt::format("exception {} in the kernel (error code {:#x})", vector, error_code));
}

}  // namespace vmx::guest
