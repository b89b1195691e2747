#include "workloads/workload.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "cpu/core.h"
#include "workloads/trace_file.h"

namespace vmx::workloads {

namespace {
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kLine = 64;

// Runs `body` `count` times, or forever when count is 0.
template <class F>
void repeat(std::uint64_t count, F&& body) {
  if (count == 0)
    for (;;) body();
  for (std::uint64_t i = 0; i < count; ++i) body();
}

std::uint64_t region(guest::Thread& t, std::uint64_t bytes) {
  std::uint64_t va = t.mmap(bytes);
  if (!va) throw std::runtime_error("mmap failed");  // unreachable with validated sizes
  return va;
}

class Compute final : public Workload {
 public:
  Compute(const ComputeParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.iterations != 0; }
  void run(guest::Thread& t) override {
    started(t);
    repeat(m_p.iterations, [&] {
      t.compute(m_p.instructions);
      m_stats.operations += 1;
    });
    finished(t);
  }

 private:
  ComputeParams m_p;
};

class Stream final : public Workload {
 public:
  Stream(const StreamParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.passes != 0; }
  void run(guest::Thread& t) override {
    std::uint64_t base = region(t, m_p.working_set);
    started(t);
    repeat(m_p.passes, [&] {
      for (std::uint64_t off = 0; off + 8 <= m_p.working_set; off += m_p.stride) {
        if (m_p.write) t.store(base + off, off);
        else t.load_independent(base + off);  // addresses from the loop counter, not from loaded data
        t.compute(m_p.instructions_per_access);
        ++m_stats.operations;
      }
    });
    finished(t);
  }

 private:
  StreamParams m_p;
};

class RandomAccess final : public Workload {
 public:
  RandomAccess(const RandomAccessParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {
    if (p.checksum)
      m_checksum = &m_stats.make<stats::Gauge>("checksum", "value",
                                               "checksum of the table after the last update (checksum: true)");
  }
  bool finite() const override { return m_p.updates != 0; }
  void run(guest::Thread& t) override {
    std::uint64_t words = m_p.working_set / 8;
    std::uint64_t base = region(t, m_p.working_set);
    // Host speed: the word by a mask when the count is a power of two (the
    // same word as r % words, without a host division per update).
    const std::uint64_t mask = (words & (words - 1)) == 0 ? words - 1 : 0;
    started(t);
    repeat(m_p.updates, [&] {
      std::uint64_t r = t.random();
      std::uint64_t va = base + (mask ? r & mask : r % words) * 8;
      // The address comes from the generator, not from memory: independent
      // of earlier loads (GUPS-style updates overlap their misses).
      t.store(va, t.load_independent(va) ^ r);
      t.compute(m_p.instructions_per_update);
      ++m_stats.operations;
    });
    if (m_checksum) {
      // Read back through the program's own loads: 32-bit FNV-1a over the
      // words in order (exact in a statistic).
      std::uint32_t sum = 2166136261u;
      for (std::uint64_t i = 0; i < words; ++i) {
        const std::uint64_t w = t.load_independent(base + i * 8);
        sum = (sum ^ static_cast<std::uint32_t>(w)) * 16777619u;
        sum = (sum ^ static_cast<std::uint32_t>(w >> 32)) * 16777619u;
        t.compute(2);
      }
      m_checksum->set(sum);
    }
    finished(t);
  }

 private:
  RandomAccessParams m_p;
  stats::Gauge* m_checksum = nullptr;
};

class PointerChase final : public Workload {
 public:
  PointerChase(const PointerChaseParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.steps != 0; }
  void run(guest::Thread& t) override {
    std::uint64_t lines = m_p.working_set / kLine;
    std::uint64_t base = region(t, m_p.working_set);
    // A random cyclic order of the lines, built in the program's memory with
    // Sattolo's algorithm (which yields a single cycle): line i first holds
    // i, the swaps permute those indices, and i -> a[i] is then one cycle.
    for (std::uint64_t i = 0; i < lines; ++i) t.store(base + i * kLine, i);
    for (std::uint64_t i = lines - 1; i > 0; --i) {
      std::uint64_t j = t.random() % i;
      std::uint64_t vi = t.load(base + i * kLine), vj = t.load(base + j * kLine);
      t.store(base + i * kLine, vj);
      t.store(base + j * kLine, vi);
      t.compute(6);
    }
    // Indices become addresses: line i points to line a[i].
    for (std::uint64_t i = 0; i < lines; ++i) {
      std::uint64_t next = t.load(base + i * kLine);
      t.store(base + i * kLine, base + next * kLine);
      t.compute(2);
    }
    started(t);
    std::uint64_t p = base;
    repeat(m_p.steps, [&] {
      p = t.load(p);  // each address is the previous load's data: dependent
      ++m_stats.operations;
    });
    finished(t);
  }

 private:
  PointerChaseParams m_p;
};

class CpuidLoop final : public Workload {
 public:
  CpuidLoop(const CpuidLoopParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.iterations != 0; }
  void run(guest::Thread& t) override {
    started(t);
    repeat(m_p.iterations, [&] {
      t.cpu().cpuid(static_cast<std::uint32_t>(m_p.leaf));
      ++m_stats.operations;
    });
    finished(t);
  }

 private:
  CpuidLoopParams m_p;
};

class IoLoop final : public Workload {
 public:
  IoLoop(const IoLoopParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.iterations != 0; }
  void run(guest::Thread& t) override {
    started(t);
    auto port = static_cast<std::uint16_t>(m_p.port);
    auto size = static_cast<unsigned>(m_p.size);
    repeat(m_p.iterations, [&] {
      if (m_p.write) t.cpu().out(port, 0x5A, size);
      else t.cpu().in(port, size);
      ++m_stats.operations;
    });
    finished(t);
  }

 private:
  IoLoopParams m_p;
};

class VmcallLoop final : public Workload {
 public:
  VmcallLoop(const VmcallLoopParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.iterations != 0; }
  void run(guest::Thread& t) override {
    started(t);
    repeat(m_p.iterations, [&] {
      t.cpu().vmcall(m_p.nr);
      ++m_stats.operations;
    });
    finished(t);
  }

 private:
  VmcallLoopParams m_p;
};

class TouchPages final : public Workload {
 public:
  TouchPages(const TouchPagesParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return true; }
  void run(guest::Thread& t) override {
    std::uint64_t base = region(t, m_p.pages * kPage);
    started(t);
    for (std::uint64_t pass = 0; pass < m_p.passes; ++pass) {
      for (std::uint64_t i = 0; i < m_p.pages; ++i) {
        if (m_p.write) t.store(base + i * kPage, pass + 1);
        else t.load(base + i * kPage);
        ++m_stats.operations;
      }
    }
    finished(t);
  }

 private:
  TouchPagesParams m_p;
};

class SleepLoop final : public Workload {
 public:
  SleepLoop(const SleepLoopParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.iterations != 0; }
  void run(guest::Thread& t) override {
    started(t);
    repeat(m_p.iterations, [&] {
      std::uint64_t due = t.sleep(m_p.interval);
      std::uint64_t now = t.cpu().rdtsc();
      m_latency.sample(now > due ? now - due : 0);
      t.compute(m_p.work);
      ++m_stats.operations;
    });
    finished(t);
  }

 private:
  SleepLoopParams m_p;
  stats::Histogram m_latency{&m_stats, "wakeup_latency", "cycles",
                             "TSC cycles from the requested wake-up time to running again"};
};

// Page-table-update heavy: map a region, touch each page, unmap it, again.
class MmapChurn final : public Workload {
 public:
  MmapChurn(const MmapChurnParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.iterations != 0; }
  void run(guest::Thread& t) override {
    started(t);
    repeat(m_p.iterations, [&] {
      std::uint64_t va = region(t, m_p.region);
      for (std::uint64_t off = 0; off < m_p.region; off += kPage) t.store(va + off, off);
      t.munmap(va);
      ++m_stats.operations;
    });
    finished(t);
  }

 private:
  MmapChurnParams m_p;
};

// Page protections from the program's side (docs/protection.md): a buffer
// the kernel fills through its user-memory accessor; a code page mapped
// twice, writable and not executable (rw) and executable and read-only (rx),
// as a JIT with W^X does; and, each round, probes that real protections
// must stop, each in a forked child so that the kernel killing it leaves the
// program running: the kernel reading a user page outside STAC/CLAC (SMAP),
// the kernel jumping to a user page (SMEP), a write through rx and a fetch
// through rw (the page tables). The program counts what it tried and what
// survived; the kernel counts its oopses.
class ProtectionProbe final : public Workload {
 public:
  ProtectionProbe(const ProtectionProbeParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return true; }
  void run(guest::Thread& t) override {
    const std::uint64_t buf = region(t, kPage);
    const std::uint64_t code = region(t, kPage);
    t.store(code, 0);  // populate the page both aliases map
    const std::uint64_t rw = t.mmap_alias(code, kPage, true, false);
    const std::uint64_t rx = t.mmap_alias(code, kPage, false, true);
    if (!rw || !rx) throw std::runtime_error("mmap_alias failed");  // unreachable: 4 KiB pages, fresh regions
    t.load(rx);  // both aliases present before any fork
    t.load(rw);
    started(t);
    for (std::uint64_t round = 1; round <= m_p.iterations; ++round) {
      t.copy_to_user(buf, round);
      if (t.load(buf) == round) ++m_uaccess_ok;
      // Emit "code" through rw, run it through rx: one frame, two views.
      t.store(rw, round);
      t.cpu().fetch(rx, kLine);
      if (t.load(rx) == round) ++m_alias_coherent;
      probe(t, m_p.kernel_read, m_kr, [&](guest::Thread& c) { c.kernel_bug(guest::Thread::KernelBug::UserRead, buf); });
      probe(t, m_p.kernel_exec, m_kx, [&](guest::Thread& c) { c.kernel_bug(guest::Thread::KernelBug::UserExec, rx); });
      probe(t, m_p.alias_write, m_aw, [&](guest::Thread& c) { c.store(rx, ~round); });
      probe(t, m_p.alias_exec, m_ax, [&](guest::Thread& c) { c.cpu().fetch(rw, kLine); });
      ++m_stats.operations;
    }
    finished(t);
  }

 private:
  struct Probe {
    stats::Counter attempts, survived;
    Probe(stats::Group* g, const std::string& name, const std::string& what)
        : attempts(g, name + "_attempts", "probes", "children that tried: " + what),
          survived(g, name + "_survived", "probes", "of those, children the access did not stop (they went on)") {}
  };
  template <class F>
  void probe(guest::Thread& t, bool on, Probe& p, F body) {
    if (!on) return;
    ++p.attempts;
    if (!t.fork_and_wait([&](guest::Thread& child) {
          body(child);
          ++p.survived;
        }))
      ++m_failed;
  }
  ProtectionProbeParams m_p;
  stats::Counter m_uaccess_ok{&m_stats, "uaccess_ok", "rounds",
                              "rounds whose buffer, filled by the kernel's accessor, read back right"};
  stats::Counter m_alias_coherent{&m_stats, "alias_coherent", "rounds",
                                  "rounds whose store through the writable alias was seen through the executable one"};
  stats::Counter m_failed{&m_stats, "failed_forks", "forks", "forks the kernel refused"};
  Probe m_kr{&m_stats, "kernel_read", "the kernel reads a user page outside STAC/CLAC"};
  Probe m_kx{&m_stats, "kernel_exec", "the kernel jumps to an executable user page"};
  Probe m_aw{&m_stats, "alias_write", "a write through the read+execute alias"};
  Probe m_ax{&m_stats, "alias_exec", "a fetch through the writable, non-executable alias"};
};

// Process creation heavy: a parent with a populated working set forks a
// child that writes some pages (copy-on-write) and exits, then writes some
// pages itself, again and again.
class ForkChurn final : public Workload {
 public:
  ForkChurn(const ForkChurnParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.iterations != 0; }
  void run(guest::Thread& t) override {
    std::uint64_t pages = m_p.working_set / kPage;
    std::uint64_t base = region(t, pages * kPage);
    // What the parent last wrote to each page: a child's writes must never
    // show through (the program checks, as a fork test would).
    std::vector<std::uint64_t> expected(pages);
    for (std::uint64_t i = 0; i < pages; ++i) t.store(base + i * kPage, expected[i] = i + 1);
    started(t);
    std::uint64_t round = 0;
    repeat(m_p.iterations, [&] {
      ++round;
      bool forked = t.fork_and_wait([&](guest::Thread& child) {
        for (std::uint64_t i = 0; i < m_p.child_writes && i < pages; ++i)
          child.store(base + (child.random() % pages) * kPage, ~round);
      });
      if (!forked) {
        ++m_failed;
        return;
      }
      for (std::uint64_t i = 0; i < pages; ++i)
        if (t.load(base + i * kPage) != expected[i]) ++m_corrupt;
      for (std::uint64_t i = 0; i < m_p.parent_writes && i < pages; ++i) {
        std::uint64_t pg = t.random() % pages;
        t.store(base + pg * kPage, expected[pg] = (round << 32) | (i + 1));
      }
      ++m_stats.operations;
    });
    finished(t);
  }

 private:
  ForkChurnParams m_p;
  stats::Counter m_failed{&m_stats, "failed_forks", "forks", "forks the kernel refused"};
  stats::Counter m_corrupt{&m_stats, "corrupt_pages", "pages",
                           "parent pages found changed by a child (copy-on-write failures)"};
};

std::uint64_t ps_to_cycles(std::uint64_t ps, std::uint64_t hz) {
  return static_cast<std::uint64_t>(static_cast<unsigned __int128>(ps) * hz / 1000000000000ull);
}

// A periodic real-time task: jobs released every period at absolute times,
// each doing `work` instructions; the program measures its own wake-up
// latency, response times and deadline misses.
class Periodic final : public Workload {
 public:
  Periodic(const PeriodicParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.iterations != 0; }
  void run(guest::Thread& t) override {
    const std::uint64_t period = ps_to_cycles(m_p.period, t.tsc_hz());
    const std::uint64_t deadline = ps_to_cycles(m_p.deadline ? m_p.deadline : m_p.period, t.tsc_hz());
    started(t);
    std::uint64_t release = t.cpu().rdtsc() + period;
    repeat(m_p.iterations, [&] {
      t.sleep_until(release);
      std::uint64_t start = t.cpu().rdtsc();
      m_latency.sample(start > release ? start - release : 0);
      t.compute(m_p.work);
      std::uint64_t end = t.cpu().rdtsc();
      m_response.sample(end - release);
      if (end - release > deadline) ++m_misses;
      ++m_stats.operations;
      release += period;
    });
    finished(t);
  }

 private:
  PeriodicParams m_p;
  stats::Histogram m_latency{&m_stats, "wakeup_latency", "cycles", "release to start of each job"};
  stats::Histogram m_response{&m_stats, "response", "cycles", "release to completion of each job"};
  stats::Counter m_misses{&m_stats, "deadline_misses", "jobs", "jobs completed after their deadline"};
};

// A heartbeat (docs/migration.md, "What the guest felt"): a thread wakes
// every `interval` by its TSC and records the time since its previous
// wake-up. While its VM is paused (a migration's downtime) or descheduled
// it cannot run, so the longest gap bounds that stop from above, as the
// longest silence of a ping through the VM would. A wake-up one interval or
// more behind its due time skips the beats it missed (counted as missed,
// like pings that got no reply) and keeps to the original schedule.
class Heartbeat final : public Workload {
 public:
  Heartbeat(const HeartbeatParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.beats != 0; }
  void run(guest::Thread& t) override {
    const std::uint64_t hz = t.tsc_hz();
    const std::uint64_t interval = ps_to_cycles(m_p.interval, hz);
    const std::uint64_t late = m_p.late ? ps_to_cycles(m_p.late, hz) : interval;
    auto ns = [hz](std::uint64_t cycles) {
      return static_cast<std::uint64_t>(static_cast<unsigned __int128>(cycles) * 1'000'000'000ull / hz);
    };
    started(t);
    std::uint64_t last = t.cpu().rdtsc();
    std::uint64_t due = last + interval;
    repeat(m_p.beats, [&] {
      t.sleep_until(due);
      const std::uint64_t now = t.cpu().rdtsc();
      const std::uint64_t gap = ns(now - last);
      m_gap.sample(gap);
      if (gap > static_cast<std::uint64_t>(m_max_gap.value())) {
        m_max_gap.set(static_cast<double>(gap));
        m_max_gap_at.set(static_cast<double>(ns(last)));
      }
      if (now - due > late) ++m_late;
      if (now >= due + interval) {
        const std::uint64_t skipped = (now - due) / interval;
        m_missed += skipped;
        due += skipped * interval;
      }
      ++m_stats.operations;
      last = now;
      due += interval;
    });
    finished(t);
  }

 private:
  HeartbeatParams m_p;
  stats::Histogram m_gap{&m_stats, "gap_ns", "ns", "time between consecutive beats (guest TSC)"};
  stats::Gauge m_max_gap{&m_stats, "max_gap_ns", "ns", "the longest time between two beats"};
  stats::Gauge m_max_gap_at{&m_stats, "max_gap_from_ns", "ns", "guest TSC (in ns) of the beat that began the longest gap"};
  stats::Counter m_late{&m_stats, "late", "beats", "beats taken more than `late` after they were due"};
  stats::Counter m_missed{&m_stats, "missed", "beats", "beats skipped because the thread could not run when due"};
};

// A server with Poisson arrivals: requests arrive at random (seeded) times,
// are served in order, and the program records each one's response time.
class RequestServer final : public Workload {
 public:
  RequestServer(const RequestServerParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.requests != 0; }
  void run(guest::Thread& t) override {
    const double mean_gap = static_cast<double>(t.tsc_hz()) / m_p.rate;
    started(t);
    std::uint64_t arrival = t.cpu().rdtsc();
    repeat(m_p.requests, [&] {
      // Exponential inter-arrival time from a uniform draw in (0, 1].
      double u = (static_cast<double>(t.random() >> 11) + 1.0) / 9007199254740992.0;
      arrival += static_cast<std::uint64_t>(-std::log(u) * mean_gap);
      t.sleep_until(arrival);
      t.compute(m_p.service);
      std::uint64_t end = t.cpu().rdtsc();
      m_response.sample(end - arrival);
      ++m_stats.operations;
    });
    finished(t);
  }

 private:
  RequestServerParams m_p;
  stats::Histogram m_response{&m_stats, "response", "cycles", "arrival to completion of each request"};
};

// Threads of one process contend for one test-and-test-and-set spinlock in
// their shared memory (XCHG to take it, PAUSE while it is held, a store to
// release it), as user-space spinlocks and the kernel's pre-queued ones do.
// A holder whose vCPU is preempted keeps the others spinning (lock-holder
// preemption); the program measures the time each acquisition took.
class Spinlock final : public Workload {
 public:
  Spinlock(const SpinlockParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.iterations != 0; }
  void run(guest::Thread& t) override {
    // The lock lives at a fixed address of the process; the first thread
    // maps it, the others find it mapped.
    t.mmap_fixed(kLockVa, kPage, false);
    started(t);
    repeat(m_p.iterations, [&] {
      std::uint64_t begin = t.cpu().rdtsc();
      bool waited = false;
      while (t.cpu().xchg(kLockVa, 1) != 0) {
        waited = true;
        while (t.load(kLockVa) != 0) t.cpu().pause();
      }
      m_acquire.sample(t.cpu().rdtsc() - begin);
      if (waited) ++m_contended;
      t.compute(m_p.critical);
      t.store(kLockVa, 0);
      // Uniform in [work/2, 3 work/2], so that threads do not fall into step.
      t.compute(m_p.work / 2 + (m_p.work ? t.random() % (m_p.work + 1) : 0));
      ++m_stats.operations;
    });
    finished(t);
  }

 private:
  static constexpr std::uint64_t kLockVa = 0x7F0000000000ull;
  SpinlockParams m_p;
  stats::Histogram m_acquire{&m_stats, "acquire", "cycles", "first attempt to holding the lock, per acquisition"};
  stats::Counter m_contended{&m_stats, "contended", "acquisitions", "acquisitions that found the lock held"};
};

// Replays a captured trace in the guest: its pages are mapped at the
// addresses the program used, instruction records fetch and retire one
// instruction, data records load and store.
static_assert(TraceFile::kAddressLimit == guest::Kernel::kUserTop, "trace addresses are those mmap_fixed accepts");

class Trace final : public Workload {
 public:
  Trace(const TraceParams& p, stats::Group* g, const std::string& n)
      : Workload(g, n), m_p(p), m_trace(TraceFile::load(p.file)) {}
  bool finite() const override { return m_p.passes != 0; }
  void run(guest::Thread& t) override {
    map_regions(t);
    started(t);
    repeat(m_p.passes, [&] {
      TraceFile::Cursor cur = m_trace.cursor();
      // Decoded a batch at a time (4 KiB of the fiber's stack): the decoder's
      // loop and the replay's each stay tight.
      std::array<TraceRecord, 256> batch;
      while (const std::size_t n = cur.next_batch(batch.data(), batch.size())) {
        // An operation acts on the core executing the thread even if it moved
        // since (cpu::Core's operations forward to it), so the core is looked
        // up once a batch.
        cpu::Core& c = t.cpu();
        for (std::size_t i = 0; i < n; ++i) {
          const TraceRecord& r = batch[i];
          unsigned size = std::min<unsigned>(r.size, 8);
          switch (r.kind) {
            case TraceRecord::Fetch:
              c.fetch_instruction(r.address, r.size);  // fetch(), then compute(1)
              ++m_instructions;
              break;
            case TraceRecord::Load: c.load(r.address, size); break;
            case TraceRecord::Store: c.store(r.address, 0, size); break;
            case TraceRecord::Modify: c.store(r.address, c.load(r.address, size), size); break;
          }
          ++m_stats.operations;
        }
      }
    });
    finished(t);
  }

 private:
  // The program's address space as the trace shows it: pages touched,
  // merged into regions across gaps (TraceFile::kRegionGapPages).
  void map_regions(guest::Thread& t) {
    for (const TraceFile::Region& r : m_trace.regions())
      if (!t.mmap_fixed(r.start, r.end - r.start, true))
        throw std::runtime_error(fmt::format("trace {}: cannot map [{:#x}, {:#x}) in the guest", m_p.file, r.start, r.end));
  }

  TraceParams m_p;
  TraceFile m_trace;
  stats::Counter m_instructions{&m_stats, "instructions", "instructions", "instruction records replayed"};
};

}  // namespace

void Workload::started(guest::Thread& t) {
  auto now = static_cast<double>(t.cpu().rdtsc());
  if (m_stats.first_start.value() == 0 || now < m_stats.first_start.value()) m_stats.first_start.set(now);
}

void Workload::finished(guest::Thread& t) {
  auto now = static_cast<double>(t.cpu().rdtsc());
  ++m_stats.threads_done;
  if (now > m_stats.last_end.value()) m_stats.last_end.set(now);
}

std::shared_ptr<Workload> Workload::create(const WorkloadParams& p, stats::Group* parent, const std::string& name) {
  if (p.type == "compute") return std::make_shared<Compute>(p.compute, parent, name);
  if (p.type == "cpu_bound") return std::make_shared<Compute>(p.cpu_bound, parent, name);
  if (p.type == "stream") return std::make_shared<Stream>(p.stream, parent, name);
  if (p.type == "random_access") return std::make_shared<RandomAccess>(p.random_access, parent, name);
  if (p.type == "pointer_chase") return std::make_shared<PointerChase>(p.pointer_chase, parent, name);
  if (p.type == "cpuid_loop") return std::make_shared<CpuidLoop>(p.cpuid_loop, parent, name);
  if (p.type == "io_loop") return std::make_shared<IoLoop>(p.io_loop, parent, name);
  if (p.type == "vmcall_loop") return std::make_shared<VmcallLoop>(p.vmcall_loop, parent, name);
  if (p.type == "touch_pages") return std::make_shared<TouchPages>(p.touch_pages, parent, name);
  if (p.type == "sleep_loop") return std::make_shared<SleepLoop>(p.sleep_loop, parent, name);
  if (p.type == "trace") return std::make_shared<Trace>(p.trace, parent, name);
  if (p.type == "mmap_churn") return std::make_shared<MmapChurn>(p.mmap_churn, parent, name);
  if (p.type == "fork_churn") return std::make_shared<ForkChurn>(p.fork_churn, parent, name);
  if (p.type == "protection_probe") return std::make_shared<ProtectionProbe>(p.protection_probe, parent, name);
  if (p.type == "periodic") return std::make_shared<Periodic>(p.periodic, parent, name);
  if (p.type == "heartbeat") return std::make_shared<Heartbeat>(p.heartbeat, parent, name);
  if (p.type == "request_server") return std::make_shared<RequestServer>(p.request_server, parent, name);
  if (p.type == "spinlock") return std::make_shared<Spinlock>(p.spinlock, parent, name);
  if (p.type == "profile") return create_profile(p.profile, parent, name);
  if (p.type == "interpreter") return create_interpreter(p.interpreter, parent, name);
  if (auto w = create_net(p, parent, name)) return w;
  if (auto w = create_page_content(p, parent, name)) return w;
  throw std::invalid_argument("unknown workload type '" + p.type + "'");
}

}  // namespace vmx::workloads
