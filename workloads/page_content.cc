// page_content: a program whose memory contents are controlled, for
// same-page merging (docs/memory.md, "Same-page merging"). Its region holds
// three kinds of pages, written with ordinary stores through the guest's
// page tables before the measured work:
//
//  - shared pages: contents from content_seed and the page's index only, so
//    that every VM (and thread) with the same seed holds identical pages, as
//    the text and read-only data of a common binary or library;
//  - zero pages: all zeros (REP STOSB of zeros, so they are backed);
//  - private pages: contents from the VM's own random stream.
//
// The measured loop reads one quadword of a random page of the current
// working set per access; the working set may move on every `phase`. Writes
// to a random shared page come at write_rate per second of guest time, each
// storing one byte at write_offset (a rarely written byte of otherwise
// identical pages: false sharing for a merging hypervisor).
#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "cpu/core.h"
#include "workloads/workload.h"

namespace vmx::workloads {

namespace {
constexpr std::uint64_t kPage = 4096;

std::uint64_t mix(std::uint64_t z) {  // SplitMix64's finalizer
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class PageContent final : public Workload {
 public:
  PageContent(const PageContentParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {
    m_shared = static_cast<std::uint64_t>(std::floor(static_cast<double>(p.pages) * p.shared_fraction));
    m_zero = std::min(p.pages - m_shared,
                      static_cast<std::uint64_t>(std::floor(static_cast<double>(p.pages) * p.zero_fraction)));
  }
  bool finite() const override { return m_p.accesses != 0; }

  void run(guest::Thread& t) override {
    const std::uint64_t base = t.mmap(m_p.pages * kPage);
    if (!base) throw std::runtime_error("page_content: mmap failed");
    const std::uint64_t private_seed = t.random();
    std::uint64_t shared_n = 0, zero = 0, private_n = 0;
    for (std::uint64_t i = 0; i < m_p.pages; ++i) {
      const std::uint64_t va = base + i * kPage;
      if (i >= m_shared && i < m_shared + m_zero) {
        t.cpu().rep_stos(va, 0, kPage);
        ++zero;
        continue;
      }
      const bool shared = i < m_shared;
      const std::uint64_t seed = mix((shared ? m_p.content_seed : private_seed) * 0x9E3779B97F4A7C15ull + i + 1);
      for (std::uint64_t off = 0; off < kPage; off += 8) t.store(va + off, mix(seed + off));
      ++(shared ? shared_n : private_n);
    }
    // Gauges (not counters): the fill precedes any warm-up reset.
    m_shared_pages.set(m_shared_pages.value() + static_cast<double>(shared_n));
    m_zero_pages.set(m_zero_pages.value() + static_cast<double>(zero));
    m_private_pages.set(m_private_pages.value() + static_cast<double>(private_n));
    started(t);
    const std::uint64_t hz = t.tsc_hz();
    // Ticks between writes and per working-set phase (0: none).
    const std::uint64_t write_ticks =
        m_p.write_rate > 0 && m_shared ? std::max<std::uint64_t>(1, static_cast<std::uint64_t>(static_cast<double>(hz) / m_p.write_rate)) : 0;
    const std::uint64_t phase_ticks =
        static_cast<std::uint64_t>(static_cast<unsigned __int128>(m_p.phase) * hz / 1000000000000ull);
    const std::uint64_t ws = m_p.working_set ? m_p.working_set : m_p.pages;
    std::uint64_t now = t.cpu().rdtsc();
    std::uint64_t next_write = write_ticks ? now + write_ticks : 0;
    std::uint64_t next_phase = phase_ticks ? now + phase_ticks : 0;
    std::uint64_t ws_start = 0;
    for (std::uint64_t n = 0; m_p.accesses == 0 || n < m_p.accesses; ++n) {
      const std::uint64_t page = (ws_start + t.random() % ws) % m_p.pages;
      t.load(base + page * kPage + (t.random() % (kPage / 8)) * 8);
      t.compute(m_p.instructions_per_access);
      ++m_stats.operations;
      // The clock is read every 16 accesses (as a program that checks its
      // timers from its main loop now and then).
      if ((!next_write && !next_phase) || (n & 15) != 15) continue;
      now = t.cpu().rdtsc();
      while (next_write && now >= next_write) {
        const std::uint64_t va = base + (t.random() % m_shared) * kPage + m_p.write_offset;
        const std::uint64_t byte = m_p.write_value == "same" ? t.load(va, 1) : t.random() & 0xFF;
        t.store(va, byte, 1);
        ++m_writes;
        next_write += write_ticks;
      }
      if (next_phase && now >= next_phase) {
        ws_start = (ws_start + ws) % m_p.pages;
        ++m_phases;
        next_phase += phase_ticks;
      }
    }
    finished(t);
  }

 private:
  PageContentParams m_p;
  std::uint64_t m_shared = 0, m_zero = 0;
  stats::Gauge m_shared_pages{&m_stats, "shared_pages", "pages", "pages filled from content_seed (identical across VMs), all threads"};
  stats::Gauge m_zero_pages{&m_stats, "zero_pages", "pages", "pages filled with zeros, all threads"};
  stats::Gauge m_private_pages{&m_stats, "private_pages", "pages", "pages filled from the VM's own seed, all threads"};
  stats::Counter m_writes{&m_stats, "shared_writes", "stores", "one-byte stores to shared pages"};
  stats::Counter m_phases{&m_stats, "phases", "events", "times the read working set moved on"};
};

}  // namespace

std::shared_ptr<Workload> Workload::create_page_content(const WorkloadParams& p, stats::Group* parent,
                                                        const std::string& name) {
  if (p.type == "page_content") return std::make_shared<PageContent>(p.page_content, parent, name);
  return nullptr;
}

}  // namespace vmx::workloads
