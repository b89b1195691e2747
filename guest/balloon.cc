// The guest's balloon driver (docs/memory.md, "Ballooning"), modelled on
// Linux's drivers/virtio/virtio_balloon.c: a kernel thread that looks at
// the device's target (num_pages in its configuration space) every
// kernel.memory.balloon_interval, inflates toward it by taking free pages
// (reclaiming, i.e. swapping, when none is free) and telling the device
// their page numbers on the inflate queue, at most 256 per message, or
// deflates by telling the device first and then freeing them; it writes
// `actual` and reports its memory statistics on the statistics queue. On
// out-of-memory with VIRTIO_BALLOON_F_DEFLATE_ON_OOM it gives up to 256
// pages back before a thread would be killed.
#include <algorithm>

#include "guest/memory_state.h"
#include "mmu/paging.h"

namespace vmx::guest {

using cpu::Core;
namespace reg = abi::virtio_reg;
namespace bal = abi::virtio_balloon;
namespace vq = abi::virtio;

namespace {
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kCodeBalloon = 0x7800;   // offset of the driver's code in the kernel text
constexpr std::uint64_t kBalloonLock = 0x7CC0;   // image offset of its lock (a line of its own)
constexpr std::uint16_t kQueueSize = 16;

/// The balloon's kernel thread (Linux runs the driver's work in a workqueue).
class BalloonThread final : public Program {
 public:
  void run(Thread& t) override { t.kernel().balloon_main(t); }
  bool finite() const override { return false; }
};
}  // namespace

void Kernel::set_swap_disk() {
  m_want_swap = true;
  if (!m_mem_stats) m_mem_stats = std::make_unique<MemStats>(&m_stats);
}

void Kernel::set_balloon() {
  m_want_balloon = true;
  if (!m_mem_stats) m_mem_stats = std::make_unique<MemStats>(&m_stats);
  add_process(std::make_shared<BalloonThread>(), 1, kPage);
}

void Kernel::balloon_probe(Core& c) {
  auto b = std::make_unique<BalloonState>();
  b->window = net_map_io(c, bal::kWindow, kPage);
  auto rd = [&](std::uint64_t off, unsigned size = 4) { return c.load(b->window + off, size); };
  auto wr = [&](std::uint64_t off, std::uint64_t v, unsigned size = 4) { c.store(b->window + off, v, size); };
  if (rd(reg::kMagic) != reg::kMagicValue || rd(reg::kVersion) != 2 || rd(reg::kDeviceId) != bal::kDeviceId) {
    m_panic = "virtio-balloon probe failed";
    return;
  }
  wr(reg::kStatus, 0);
  wr(reg::kStatus, 1 | 2);
  const std::uint64_t offered = rd(reg::kDeviceFeatures, 8);
  const std::uint64_t features =
      offered & (reg::kFeatureVersion1 | bal::kFeatureStatsVq | bal::kFeatureDeflateOnOom);
  wr(reg::kDriverFeatures, features, 8);
  wr(reg::kStatus, 1 | 2 | 8);
  b->deflate_on_oom = features & bal::kFeatureDeflateOnOom;
  b->stats_vq = features & bal::kFeatureStatsVq;
  struct Mem {
    Core& c;
    std::uint64_t load(std::uint64_t gpa, unsigned size) { return c.load(kDirectMap + gpa, size); }
    void store(std::uint64_t gpa, std::uint64_t v, unsigned size) { c.store(kDirectMap + gpa, v, size); }
  } m{c};
  const unsigned queues = b->stats_vq ? 3 : 2;
  for (unsigned i = 0; i < queues; ++i) {
    vq::Layout l;
    l.size = kQueueSize;
    l.desc = alloc_frame(c);
    l.avail = l.desc + vq::Layout::desc_bytes(kQueueSize);
    l.used = l.avail + 1024;  // both rings fit the page for 16 entries
    wr(reg::kQueueSel, i);
    wr(reg::kQueueSize, kQueueSize);
    wr(reg::kQueueDesc, l.desc, 8);
    wr(reg::kQueueAvail, l.avail, 8);
    wr(reg::kQueueUsed, l.used, 8);
    b->q[i] = virtio::DriverQueue(l, false);
    b->q[i].init(m);
    wr(reg::kQueueReady, 1);
  }
  b->pfn_page = alloc_frame(c);
  b->stats_page = alloc_frame(c);
  wr(reg::kStatus, 1 | 2 | 8 | reg::kStatusDriverOk);
  m_balloon = std::move(b);
}

void Kernel::balloon_tell(Core& c, unsigned queue, const std::vector<std::uint64_t>& frames) {
  BalloonState& b = *m_balloon;
  struct Mem {
    Core& c;
    std::uint64_t load(std::uint64_t gpa, unsigned size) { return c.load(kDirectMap + gpa, size); }
    void store(std::uint64_t gpa, std::uint64_t v, unsigned size) { c.store(kDirectMap + gpa, v, size); }
  } m{c};
  // The message buffer is shared with the OOM path: a spinlock, interrupts off.
  const bool was_enabled = c.interrupts_enabled();
  c.cli();
  const std::uint64_t lock = kDirectMap + kImageBase + kBalloonLock;
  while (c.xchg(lock, 1) != 0)
    while (c.load(lock) != 0) c.pause();
  for (std::size_t i = 0; i < frames.size(); ++i) {
    charge(c, m_p.memory.balloon_page, kCodeBalloon);
    c.store(kDirectMap + b.pfn_page + 4 * i, frames[i] >> bal::kPageShift, 4);
  }
  b.q[queue].add(m, b.pfn_page, static_cast<std::uint32_t>(4 * frames.size()), false, 0);
  if (b.q[queue].publish(m)) c.store(b.window + reg::kQueueNotify, queue, 4);
  // The device handles the message in its notify (tell_host waits for the
  // buffer to come back).
  std::uint64_t token = 0;
  std::uint32_t len = 0;
  while (!b.q[queue].get_used(m, token, len)) c.pause();
  c.store(lock, 0);
  if (was_enabled) c.sti();
}

std::uint64_t Kernel::balloon_oom(Core& c) {
  BalloonState& b = *m_balloon;
  const std::size_t n = std::min<std::size_t>(b.pages.size(), bal::kPfnsPerMessage);  // VIRTIO_BALLOON_OOM_NR_PAGES
  if (!n) return 0;
  std::vector<std::uint64_t> give(b.pages.end() - static_cast<std::ptrdiff_t>(n), b.pages.end());
  b.pages.resize(b.pages.size() - n);
  balloon_tell(c, bal::kDeflateQueue, give);
  for (std::uint64_t f : give) m_free_frames[0].push_back(f);
  count_free_frames();
  m_mem_stats->balloon_deflated += n;
  m_mem_stats->oom_deflates += n;
  publish_mem_stats();
  return n;
}

void Kernel::balloon_main(Thread& t) {
  if (!m_balloon) return;
  for (;;) {
    t.sleep(m_p.memory.balloon_interval);
    Core& c = Core::current();
    c.set_user_mode(false);
    balloon_work(c);
    Core::current().set_user_mode(true);
  }
}

void Kernel::balloon_work(Core& c) {
  BalloonState& b = *m_balloon;
  charge(c, m_p.costs.syscall, kCodeBalloon);
  const std::uint64_t target = c.load(b.window + bal::kNumPages, 4);
  // Inflate: free pages (reclaiming when there are none), 256 per message.
  while (b.pages.size() < target) {
    const std::size_t want = std::min<std::uint64_t>(target - b.pages.size(), bal::kPfnsPerMessage);
    std::vector<std::uint64_t> got;
    while (got.size() < want) {
      const std::uint64_t f = take_frame(Core::current());
      if (f) {
        got.push_back(f);
        continue;
      }
      if (!m_swap || !reclaim(Core::current())) break;
    }
    if (got.empty()) break;
    balloon_tell(Core::current(), bal::kInflateQueue, got);
    b.pages.insert(b.pages.end(), got.begin(), got.end());
    m_mem_stats->balloon_inflated += got.size();
    if (got.size() < want) break;  // nothing more to give now
  }
  // Deflate: tell the device first (VIRTIO_BALLOON_F_MUST_TELL_HOST's
  // order), then free the pages.
  while (b.pages.size() > target) {
    const std::size_t n = std::min<std::uint64_t>(b.pages.size() - target, bal::kPfnsPerMessage);
    std::vector<std::uint64_t> give(b.pages.end() - static_cast<std::ptrdiff_t>(n), b.pages.end());
    b.pages.resize(b.pages.size() - n);
    balloon_tell(Core::current(), bal::kDeflateQueue, give);
    for (std::uint64_t f : give) m_free_frames[0].push_back(f);
    m_mem_stats->balloon_deflated += n;
  }
  count_free_frames();
  Core& now = Core::current();
  now.store(b.window + bal::kActual, b.pages.size(), 4);
  if (b.stats_vq) {
    // 5.5.6.3: { le16 tag; le64 val; } x 6, packed.
    std::uint64_t free = m_frame_next < m_large_low ? (m_large_low - m_frame_next) / kPage : 0;
    for (unsigned order = 0; order < 3; ++order) free += m_free_frames[order].size() << (9 * order);
    const std::uint64_t vals[bal::kStatCount] = {
        m_mem_stats->swap_in.value(),      m_mem_stats->swap_out.value(),      m_mem_stats->major_faults.value(),
        m_mem_stats->minor_faults.value(), free * kPage, m_memory};
    const std::uint64_t buf = kDirectMap + b.stats_page;
    for (unsigned i = 0; i < bal::kStatCount; ++i) {
      now.store(buf + bal::kStatBytes * i, i, 2);
      now.store(buf + bal::kStatBytes * i + 2, vals[i], 8);
    }
    std::vector<std::uint64_t> none;
    struct Mem {
      Core& c;
      std::uint64_t load(std::uint64_t gpa, unsigned size) { return c.load(kDirectMap + gpa, size); }
      void store(std::uint64_t gpa, std::uint64_t v, unsigned size) { c.store(kDirectMap + gpa, v, size); }
    } m{now};
    const bool was_enabled = now.interrupts_enabled();
    now.cli();
    const std::uint64_t lock = kDirectMap + kImageBase + kBalloonLock;
    while (now.xchg(lock, 1) != 0)
      while (now.load(lock) != 0) now.pause();
    b.q[bal::kStatsQueue].add(m, b.stats_page, bal::kStatBytes * bal::kStatCount, false, 0);
    if (b.q[bal::kStatsQueue].publish(m)) now.store(b.window + reg::kQueueNotify, bal::kStatsQueue, 4);
    std::uint64_t token = 0;
    std::uint32_t len = 0;
    while (!b.q[bal::kStatsQueue].get_used(m, token, len)) now.pause();
    now.store(lock, 0);
    if (was_enabled) now.sti();
  }
  publish_mem_stats();
}

}  // namespace vmx::guest
