// Network workloads and the memory-pattern check (docs/io.md, "Guest
// networking"): programs that reach the NIC only through the guest
// kernel's network calls (guest::Thread::net_*).
#include <algorithm>

#include "models/nic.h"
#include "workloads/workload.h"

namespace vmx::workloads {

namespace {

constexpr std::uint64_t kEtherType = 0x88B5;       // IEEE local experimental
constexpr std::uint64_t kMagic = 0x50584D56;       // "VMXP" in memory (docs/io.md, "Timed frames")
constexpr std::uint64_t kPeerMac = 0xFFFF00000002ull;  // 02:00:00:00:ff:ff, the peer (it echoes any address)
constexpr std::uint64_t kSeqOffset = 22;

std::uint64_t ps_to_cycles(std::uint64_t ps, std::uint64_t hz) {
  return static_cast<std::uint64_t>(static_cast<unsigned __int128>(ps) * hz / cfg::kPsPerSecond);
}

/// Writes the Ethernet header (dst, src, EtherType 0x88B5) and the peer's
/// timed header (magic, flags 0, sequence number, no timestamp) at va.
void write_header(guest::Thread& t, std::uint64_t va, std::uint64_t src_mac, std::uint64_t seq,
                  std::uint64_t dst_mac = kPeerMac) {
  for (unsigned i = 0; i < 6; ++i) t.store(va + i, (dst_mac >> (8 * i)) & 0xFF, 1);
  for (unsigned i = 0; i < 6; ++i) t.store(va + 6 + i, (src_mac >> (8 * i)) & 0xFF, 1);
  t.store(va + 12, kEtherType >> 8, 1);  // network byte order
  t.store(va + 13, kEtherType & 0xFF, 1);
  t.store(va + 14, kMagic, 4);
  t.store(va + 18, 0, 4);
  t.store(va + kSeqOffset, seq, 8);
  t.store(va + 30, 0, 8);
}

/// What a poll-mode driver sets up (docs/io.md, "Poll-mode driver"): the
/// NIC function's register window, claimed from the kernel; a ring of
/// descriptors in physically contiguous memory; and a pool of `slots`
/// buffers of `slot` bytes whose bus addresses are looked up once and kept
/// in a table in the program's memory (as an mbuf keeps its IOVA).
struct PmdPort {
  enum class Setup { Ok, NoDevice, NoMemory };
  std::uint64_t regs = 0, ring = 0, ring_pa = 0, buf = 0, iova = 0, slots = 0, slot = 0;

  Setup open(guest::Thread& t, std::uint32_t descriptors, std::uint64_t slot_bytes, std::uint64_t slot_count) {
    regs = t.net_claim();
    if (!regs) return Setup::NoDevice;
    ring = t.dma_alloc(16ull * descriptors);
    ring_pa = ring ? t.virt_to_phys(ring) : 0;
    slot = slot_bytes;
    slots = slot_count;
    buf = t.mmap(slots * slot);
    iova = t.mmap(slots * 8);
    if (!ring_pa || !buf || !iova) return Setup::NoMemory;
    std::uint64_t page_pa = 0;
    for (std::uint64_t s = 0; s < slots; ++s) {
      const std::uint64_t va = slot_va(s);
      if (s == 0 || (va & 0xFFF) == 0) {
        t.store(va, 0);  // faults the page in
        page_pa = t.virt_to_phys(va);
      }
      t.store(iova + 8 * s, page_pa + (va & 0xFFF));
    }
    return Setup::Ok;
  }
  std::uint64_t slot_va(std::uint64_t s) const { return buf + s * slot; }
  std::uint64_t slot_iova(guest::Thread& t, std::uint64_t s) const { return t.load(iova + 8 * s); }
  std::uint64_t desc(std::uint32_t i) const { return ring + 16ull * i; }
};

// Request/response over the network: each request frame waits for its
// echo; the program records the round trip.
class NetPingpong final : public Workload {
 public:
  NetPingpong(const NetPingpongParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.requests != 0; }
  void run(guest::Thread& t) override {
    if (!t.net_up()) {
      ++m_no_device;
      return;
    }
    const auto size = static_cast<std::uint32_t>(m_p.size);
    const std::uint64_t tx = t.mmap(8192), rx = tx + 4096;
    const std::uint64_t mac = t.net_mac();
    const std::uint64_t pause = ps_to_cycles(m_p.interval, t.tsc_hz());
    started(t);
    std::uint64_t seq = 0;
    repeat(m_p.requests, [&] {
      write_header(t, tx, mac, seq);
      const std::uint64_t t0 = t.cpu().rdtsc();
      t.net_send(tx, size);
      ++m_requests;
      // Frames that are not this request's echo (a late one) are skipped.
      for (;;) {
        const std::uint32_t len = t.net_recv(rx, 4096);
        if (len >= 30 && t.load(rx + kSeqOffset) == seq) break;
        ++m_stray;
      }
      const std::uint64_t cycles = t.cpu().rdtsc() - t0;
      m_rtt.sample(cycles * 1'000'000'000ull / t.tsc_hz());
      ++m_replies;
      ++m_stats.operations;
      ++seq;
      if (pause) t.sleep_until(t.cpu().rdtsc() + pause);
    });
    finished(t);
  }

 private:
  template <class F>
  static void repeat(std::uint64_t count, F&& body) {
    if (count == 0)
      for (;;) body();
    for (std::uint64_t i = 0; i < count; ++i) body();
  }
  NetPingpongParams m_p;
  stats::Histogram m_rtt{&m_stats, "rtt_ns", "ns", "request sent to its echo received, per request (guest TSC)"};
  stats::Counter m_requests{&m_stats, "requests", "frames", "requests sent"};
  stats::Counter m_replies{&m_stats, "replies", "frames", "echoes received"};
  stats::Counter m_stray{&m_stats, "stray", "frames", "received frames that were not the awaited echo"};
  stats::Counter m_no_device{&m_stats, "no_device", "threads", "threads that found no network device"};
};

// Sends frames as fast as the transmit ring allows, `batch` per doorbell:
// through the guest kernel (driver: kernel), or from user space with the
// NIC function claimed from the kernel (driver: pmd; docs/io.md,
// "Poll-mode driver").
class NetStream final : public Workload {
 public:
  NetStream(const NetStreamParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.frames != 0; }
  void run(guest::Thread& t) override {
    if (m_p.driver == "pmd")
      run_pmd(t);
    else
      run_kernel(t);
  }

 private:
  void run_kernel(guest::Thread& t) {
    if (!t.net_up()) {
      ++m_no_device;
      return;
    }
    const auto size = static_cast<std::uint32_t>(m_p.size);
    const std::uint64_t slots = std::max<std::uint64_t>(1, m_p.buffer / m_p.size);
    const std::uint64_t buf = t.mmap(slots * m_p.size);
    const std::uint64_t mac = t.net_mac();
    started(t);
    if (!m_t0) m_t0 = t.cpu().rdtsc();
    for (std::uint64_t i = 0; m_p.frames == 0 || i < m_p.frames; ++i) {
      const std::uint64_t va = buf + (i % slots) * m_p.size;
      write_header(t, va, mac, i, m_p.to == "self" ? mac : kPeerMac);
      t.net_send(va, size, last_of_batch(i));
      sent(t, size);
      if (m_p.gap && last_of_batch(i)) t.sleep(m_p.gap);
    }
    finished(t);
  }

  // The poll-mode driver. Its transmit ring is physically contiguous memory
  // of its own; each packet buffer's bus address is looked up once and kept
  // in a table in the program's memory (as an mbuf keeps its IOVA). The
  // device writes DD back into every descriptor it completes; the program
  // frees descriptors `kFreeBatch` at a time by checking the last one of
  // the oldest batch (completions are in order), as DPDK's tx_rs_thresh.
  void run_pmd(guest::Thread& t) {
    namespace reg = models::nicreg;
    const auto n = static_cast<std::uint32_t>(m_p.ring);
    std::uint64_t slot_bytes = 64;
    while (slot_bytes < m_p.size) slot_bytes <<= 1;
    PmdPort port;
    switch (port.open(t, n, slot_bytes, std::max<std::uint64_t>(1, m_p.buffer / slot_bytes))) {
      case PmdPort::Setup::NoDevice: ++m_no_device; return;
      case PmdPort::Setup::NoMemory: ++m_no_memory; return;
      case PmdPort::Setup::Ok: break;
    }
    const std::uint64_t regs = port.regs, ring = port.ring, ring_pa = port.ring_pa, slots = port.slots;
    const std::uint64_t mac = t.load(regs + reg::kMacLo, 4) | (t.load(regs + reg::kMacHi, 4) & 0xFFFF) << 32;
    t.store(regs + reg::kTxBaseLo, ring_pa & 0xFFFFFFFFu, 4);
    t.store(regs + reg::kTxBaseHi, ring_pa >> 32, 4);
    t.store(regs + reg::kTxSize, n, 4);  // head = tail = 0
    t.store(regs + reg::kIntEnable, 0, 4);
    t.store(regs + reg::kCtrl, reg::kCtrlTxEn, 4);
    // At most `cap` frames in flight: a descriptor of the ring stays empty,
    // and a buffer is written again only once the device has read it.
    const std::uint64_t cap = std::min<std::uint64_t>(n - 1, slots);
    const auto free_batch = static_cast<std::uint32_t>(std::min<std::uint64_t>(kFreeBatch, std::max<std::uint64_t>(1, cap / 2)));
    const auto size = static_cast<std::uint32_t>(m_p.size);
    std::uint32_t tail = 0, rung = 0;
    // TX_TAIL = tail, unless the device knows of every queued frame already.
    auto ring_doorbell = [&] {
      if (rung == tail) return;
      t.store(regs + reg::kTxTail, tail, 4);
      rung = tail;
      ++m_doorbells;
    };
    std::uint64_t freed = 0;  // frames whose descriptors the program took back
    started(t);
    if (!m_t0) m_t0 = t.cpu().rdtsc();
    std::uint64_t i = 0;
    for (; m_p.frames == 0 || i < m_p.frames; ++i) {
      while (i - freed >= cap) {
        ring_doorbell();  // the device must know of what fills the ring
        const std::uint64_t last = (freed + free_batch - 1) % n;
        if (t.load(ring + 16 * last + kDescStatus, 2) & kDescDone) {
          freed += free_batch;
        } else {
          ++m_full_polls;
          t.cpu().pause();
        }
      }
      const std::uint64_t s = i % slots;
      write_header(t, port.slot_va(s), mac, i);
      const std::uint64_t d = port.desc(tail);
      t.store(d, port.slot_iova(t, s));
      t.store(d + 8, size, 4);  // length; status cleared
      t.compute(m_p.pmd_instructions);
      tail = (tail + 1) % n;
      if (last_of_batch(i)) ring_doorbell();
      sent(t, size);
    }
    // Stopping the port: whatever is queued goes out before the program ends.
    ring_doorbell();
    while (freed < i) {
      if (t.load(ring + 16 * ((i - 1) % n) + kDescStatus, 2) & kDescDone)
        freed = i;
      else
        t.cpu().pause();
    }
    finished(t);
  }

  bool last_of_batch(std::uint64_t i) const {
    return (i + 1) % m_p.batch == 0 || (m_p.frames && i + 1 == m_p.frames);
  }
  void sent(guest::Thread& t, std::uint32_t size) {
    ++m_frames;
    m_bytes += size;
    ++m_stats.operations;
    const std::uint64_t cycles = t.cpu().rdtsc() - m_t0;
    if (cycles)
      m_gbps.set(static_cast<double>(m_bytes.value()) * 8.0 * static_cast<double>(t.tsc_hz()) /
                 static_cast<double>(cycles) / 1e9);
  }

  static constexpr std::uint32_t kFreeBatch = 32;  // DPDK's default tx_rs_thresh
  static constexpr std::uint64_t kDescStatus = 10, kDescDone = 1;  // docs/io.md, "Descriptors"
  NetStreamParams m_p;
  std::uint64_t m_t0 = 0;
  stats::Counter m_frames{&m_stats, "frames", "frames", "frames handed to the kernel (or, pmd, queued on the ring)"};
  stats::Counter m_bytes{&m_stats, "bytes", "bytes", "bytes of those frames"};
  stats::Gauge m_gbps{&m_stats, "throughput_gbps", "Gbit/s",
                      "bytes handed on per second of the program's run (guest TSC), in Gbit/s"};
  stats::Counter m_no_device{&m_stats, "no_device", "threads", "threads that found no network device"};
  stats::Counter m_no_memory{&m_stats, "no_memory", "threads", "pmd: threads that got no memory for ring or buffers"};
  stats::Counter m_doorbells{&m_stats, "doorbells", "writes", "pmd: TX tail register writes"};
  stats::Counter m_full_polls{&m_stats, "full_polls", "polls",
                              "pmd: completion checks that found the ring still full (the device is the bottleneck)"};
};

// Receives the frames the network peer generates (platform.nic.peer.mode:
// generate) and checks their sequence numbers: through the guest kernel
// (driver: kernel) or from its own receive ring (driver: pmd). Throughput
// counts from the first frame received.
class NetRx final : public Workload {
 public:
  NetRx(const NetRxParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.frames != 0; }
  void run(guest::Thread& t) override {
    if (m_p.driver == "pmd")
      run_pmd(t);
    else
      run_kernel(t);
  }

 private:
  void run_kernel(guest::Thread& t) {
    if (!t.net_up()) {
      ++m_no_device;
      return;
    }
    const std::uint64_t buf = t.mmap(4096);
    started(t);
    for (std::uint64_t i = 0; m_p.frames == 0 || i < m_p.frames; ++i) {
      const std::uint32_t len = t.net_recv(buf, 4096);
      got(t, buf, len);
    }
    finished(t);
  }

  // The receive side of the poll-mode driver: every descriptor of the ring
  // gets a 2 KiB slot of the pool (bus addresses from virt_to_phys); the
  // program polls the DD bit of the next descriptor, reads the frame's
  // length and sequence number, re-arms the descriptor with the next free
  // slot, and writes RX_TAIL once per `batch` descriptors.
  void run_pmd(guest::Thread& t) {
    namespace reg = models::nicreg;
    const auto n = static_cast<std::uint32_t>(m_p.ring);
    constexpr std::uint64_t kSlot = 2048;
    PmdPort port;
    switch (port.open(t, n, kSlot, std::max<std::uint64_t>(n, m_p.buffer / kSlot))) {
      case PmdPort::Setup::NoDevice: ++m_no_device; return;
      case PmdPort::Setup::NoMemory: ++m_no_memory; return;
      case PmdPort::Setup::Ok: break;
    }
    const std::uint64_t sw_ring = t.mmap(8ull * n);  // the slot each descriptor holds (DPDK's sw_ring)
    if (!sw_ring) {
      ++m_no_memory;
      return;
    }
    const std::uint64_t regs = port.regs, ring = port.ring, ring_pa = port.ring_pa, slots = port.slots;
    // Descriptor i starts with slot i; a received frame's slot is replaced
    // by the next slot of the pool, round robin.
    std::uint64_t next_slot = n % slots;
    for (std::uint32_t i = 0; i < n; ++i) {
      t.store(sw_ring + 8ull * i, i);
      t.store(port.desc(i), port.slot_iova(t, i));
      t.store(ring + 16ull * i + 8, kSlot, 4);  // buffer size; status cleared
    }
    t.store(regs + reg::kIntEnable, 0, 4);
    t.store(regs + reg::kRxBaseLo, ring_pa & 0xFFFFFFFFu, 4);
    t.store(regs + reg::kRxBaseHi, ring_pa >> 32, 4);
    t.store(regs + reg::kRxSize, n, 4);      // head = tail = 0
    t.store(regs + reg::kRxTail, n - 1, 4);  // all but one descriptor to the device
    t.store(regs + reg::kCtrl, reg::kCtrlRxEn, 4);
    started(t);
    std::uint32_t next = 0, unposted = 0;
    for (std::uint64_t i = 0; m_p.frames == 0 || i < m_p.frames; ++i) {
      const std::uint64_t d = ring + 16ull * next;
      while (!(t.load(d + kDescStatus, 2) & kDescDone)) {
        ++m_empty_polls;
        t.cpu().pause();
      }
      const auto len = static_cast<std::uint32_t>(t.load(d + 8, 2));
      got(t, port.slot_va(t.load(sw_ring + 8ull * next)), len);
      t.store(sw_ring + 8ull * next, next_slot);
      t.store(d, port.slot_iova(t, next_slot));
      next_slot = (next_slot + 1) % slots;
      t.store(d + 8, kSlot, 4);
      t.compute(m_p.pmd_instructions);
      if (++unposted == m_p.batch) {
        t.store(regs + reg::kRxTail, next, 4);  // this descriptor is the one left empty
        unposted = 0;
        ++m_doorbells;
      }
      next = (next + 1) % n;
    }
    finished(t);
  }

  // A received frame at va: its sequence number (the peer's timed header)
  // tells how many frames were lost before it.
  void got(guest::Thread& t, std::uint64_t va, std::uint32_t len) {
    const std::uint64_t now = t.cpu().rdtsc();
    if (!m_frames.value()) m_t0 = now;
    ++m_frames;
    m_bytes += len;
    ++m_stats.operations;
    if (len >= kSeqOffset + 8 && t.load(va + 14, 4) == kMagic) {
      const std::uint64_t seq = t.load(va + kSeqOffset);
      if (m_have_seq && seq > m_next_seq) m_lost += seq - m_next_seq;
      m_next_seq = seq + 1;
      m_have_seq = true;
    }
    if (now > m_t0)
      m_gbps.set(static_cast<double>(m_bytes.value()) * 8.0 * static_cast<double>(t.tsc_hz()) /
                 static_cast<double>(now - m_t0) / 1e9);
  }

  static constexpr std::uint64_t kDescStatus = 10, kDescDone = 1;
  NetRxParams m_p;
  std::uint64_t m_t0 = 0, m_next_seq = 0;
  bool m_have_seq = false;
  stats::Counter m_frames{&m_stats, "frames", "frames", "frames received"};
  stats::Counter m_bytes{&m_stats, "bytes", "bytes", "bytes of those frames"};
  stats::Counter m_lost{&m_stats, "lost", "frames",
                        "frames missing between those received (sequence numbers of the peer's frames skipped)"};
  stats::Gauge m_gbps{&m_stats, "throughput_gbps", "Gbit/s",
                      "bytes received per second from the first frame on (guest TSC), in Gbit/s"};
  stats::Counter m_no_device{&m_stats, "no_device", "threads", "threads that found no network device"};
  stats::Counter m_no_memory{&m_stats, "no_memory", "threads", "pmd: threads that got no memory for ring or buffers"};
  stats::Counter m_doorbells{&m_stats, "doorbells", "writes", "pmd: RX_TAIL register writes"};
  stats::Counter m_empty_polls{&m_stats, "empty_polls", "polls", "pmd: polls that found no new frame"};
};

// The guest side of the network peer's ping: every frame received through
// the kernel goes back to its sender, the MAC addresses swapped and the rest
// unchanged (the peer's header with its sequence number and timestamp), as
// a kernel answers an ICMP echo request.
class NetEcho final : public Workload {
 public:
  NetEcho(const NetEchoParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.frames != 0; }
  void run(guest::Thread& t) override {
    if (!t.net_up()) {
      ++m_no_device;
      return;
    }
    const std::uint64_t buf = t.mmap(4096);
    const std::uint64_t mac = t.net_mac();
    started(t);
    for (std::uint64_t i = 0; m_p.frames == 0 || i < m_p.frames;) {
      const std::uint32_t len = t.net_recv(buf, 4096);
      if (len < 14 || (t.load(buf, 8) & 0xFFFFFFFFFFFFull) != mac) {
        ++m_ignored;  // too short, or not for this VM (a broadcast)
        continue;
      }
      const std::uint64_t src = t.load(buf + 6, 8) & 0xFFFFFFFFFFFFull;
      for (unsigned b = 0; b < 6; ++b) {
        t.store(buf + b, (src >> (8 * b)) & 0xFF, 1);
        t.store(buf + 6 + b, (mac >> (8 * b)) & 0xFF, 1);
      }
      t.compute(m_p.instructions);
      t.net_send(buf, len);
      ++m_replies;
      ++m_stats.operations;
      ++i;
    }
    finished(t);
  }

 private:
  NetEchoParams m_p;
  stats::Counter m_replies{&m_stats, "replies", "frames", "frames sent back to their sender"};
  stats::Counter m_ignored{&m_stats, "ignored", "frames", "frames received that were not addressed to this VM"};
  stats::Counter m_no_device{&m_stats, "no_device", "threads", "threads that found no network device"};
};

// A rogue driver: points its device's DMA at addresses outside its memory
// and looks at what the device reports. Device writes: for each target, the
// next receive descriptor gets the target as its buffer, the device's error
// state is cleared, and a frame goes out for the peer to echo into it.
// Device reads: a transmit descriptor whose buffer is the target.
class DmaRogue final : public Workload {
 public:
  DmaRogue(const DmaRogueParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return true; }
  void run(guest::Thread& t) override {
    if (!t.net_up()) {
      ++m_no_device;
      return;
    }
    const std::uint64_t frame = t.mmap(4096);
    const std::uint64_t mac = t.net_mac();
    if (m_p.delay) t.sleep(m_p.delay);
    started(t);
    const std::uint64_t settle = 50'000'000;  // 50 us: an echo's round trip, with margin
    if (m_p.rx) {
      for (std::uint64_t i = 0; i < m_p.count; ++i) {
        t.net_device_status(true);
        t.net_recv_raw(m_p.address + i * m_p.stride);
        write_header(t, frame, mac, i);
        t.net_send(frame, 64);
        ++m_attempts;
        t.sleep(settle);
        if (t.net_device_status() & models_rx_err) ++m_rx_errors;
      }
    }
    if (m_p.tx) {
      for (std::uint64_t i = 0; i < m_p.count; ++i) {
        t.net_device_status(true);
        t.net_send_raw(m_p.address + i * m_p.stride, 64);
        ++m_attempts;
        t.sleep(settle);
        if (t.net_device_status() & models_tx_err) ++m_tx_errors;
      }
    }
    ++m_stats.operations;
    finished(t);
  }

 private:
  static constexpr std::uint32_t models_tx_err = 1u << 0, models_rx_err = 1u << 1;  // NIC STATUS bits
  DmaRogueParams m_p;
  stats::Counter m_attempts{&m_stats, "attempts", "attempts", "descriptors aimed outside the VM's memory"};
  stats::Counter m_rx_errors{&m_stats, "rx_errors", "attempts", "write attempts after which the device reported an RX DMA error"};
  stats::Counter m_tx_errors{&m_stats, "tx_errors", "attempts", "read attempts after which the device reported a TX DMA error"};
  stats::Counter m_no_device{&m_stats, "no_device", "threads", "threads that found no network device"};
};

// Fills memory with a known pattern, waits, and checks every quadword.
class PatternCheck final : public Workload {
 public:
  PatternCheck(const PatternCheckParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return true; }
  void run(guest::Thread& t) override {
    const std::uint64_t base = t.mmap(m_p.working_set);
    started(t);
    for (std::uint64_t pass = 0; pass < m_p.passes; ++pass) {
      // Pass 0 with salt 0 is the pattern of earlier versions.
      const std::uint64_t key = m_p.salt ^ (pass * 0xD1B54A32D192ED03ull);
      std::uint64_t expected = 0;
      for (std::uint64_t off = 0; off + 8 <= m_p.working_set; off += 8) {
        const std::uint64_t v = pattern(off) ^ key;
        t.store(base + off, v);
        expected = expected * 31 + v;
      }
      m_expected.set(static_cast<double>(expected >> 11));
      if (m_p.hold) t.sleep(m_p.hold);
      std::uint64_t sum = 0;
      for (std::uint64_t off = 0; off + 8 <= m_p.working_set; off += 8) {
        const std::uint64_t v = t.load(base + off);
        if (v != (pattern(off) ^ key)) ++m_mismatches;
        sum = sum * 31 + v;
      }
      // A gauge holds a double: the top 53 bits of the 64-bit checksum.
      m_checksum.set(static_cast<double>(sum >> 11));
      ++m_stats.operations;
    }
    finished(t);
  }

 private:
  static std::uint64_t pattern(std::uint64_t off) { return (off * 0x9E3779B97F4A7C15ull) ^ 0xA5A5A5A5A5A5A5A5ull; }
  PatternCheckParams m_p;
  stats::Gauge m_expected{&m_stats, "expected_checksum", "value", "checksum of the pattern written (bits 63:11)"};
  stats::Gauge m_checksum{&m_stats, "checksum", "value", "checksum of the memory read back after the hold (bits 63:11)"};
  stats::Counter m_mismatches{&m_stats, "mismatches", "quadwords", "quadwords that no longer held the pattern"};
};

// The critical VM's periodic control loop (docs/protection.md, "Mixed
// criticality"): each job, released at absolute times every period, reads
// its sensor through the VM's network device (a request, whose echo from the
// network peer is the reading), reads a slice of fresh sensor data and walks
// its control state (dependent loads), computes, and sends the actuation
// frame. It measures its own response time, release to actuation, with
// RDTSC, as a real-time program does.
class ControlLoop final : public Workload {
 public:
  ControlLoop(const ControlLoopParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.iterations != 0; }
  void run(guest::Thread& t) override {
    const std::uint64_t hz = t.tsc_hz();
    const std::uint64_t period = ps_to_cycles(m_p.period, hz);
    const std::uint64_t deadline = ps_to_cycles(m_p.deadline ? m_p.deadline : m_p.period, hz);
    const bool net = t.net_up();
    const auto frame = static_cast<std::uint32_t>(m_p.frame);
    const std::uint64_t pool_bytes = std::max(m_p.input_pool, m_p.input);
    const std::uint64_t io = t.mmap(8192), rx = io + 4096;
    const std::uint64_t state = t.mmap(m_p.state);
    const std::uint64_t pool = m_p.input ? t.mmap(pool_bytes) : 0;
    if (!io || !state || (m_p.input && !pool)) {
      ++m_no_memory;
      return;
    }
    const std::uint64_t mac = net ? t.net_mac() : 0;
    // Initialization, before the first release: the state and the sensor
    // buffers are written once (and so backed).
    for (std::uint64_t off = 0; off < m_p.state; off += 64) t.store(state + off, off);
    for (std::uint64_t off = 0; off < m_p.input; off += 4096) t.store(pool + off, off);
    for (std::uint64_t off = m_p.input; off < pool_bytes; off += 4096) t.store(pool + off, off);
    started(t);
    std::uint64_t release = t.cpu().rdtsc() + period;
    std::uint64_t seq = 0, slice = 0, acc = 0;
    auto job = [&] {
      t.sleep_until(release);
      const std::uint64_t start = t.cpu().rdtsc();
      m_wakeup.sample(start > release ? start - release : 0);
      // Read the sensor: a request, and its echo as the reading.
      if (net) {
        write_header(t, io, mac, seq);
        t.net_send(io, frame);
        for (;;) {
          const std::uint32_t len = t.net_recv(rx, 4096);
          if (len >= 30 && t.load(rx + kSeqOffset) == seq) break;
          ++m_stray;  // the echo of an earlier actuation frame
        }
        acc += t.load(rx + 30);
        ++seq;
      } else {
        ++m_no_device;
      }
      // The sensor's data, then the control state, as dependent loads (a
      // plain load waits for the one before; cpu::Core::load).
      for (std::uint64_t off = 0; off < m_p.input; off += 64) acc += t.load(pool + (slice + off) % pool_bytes);
      slice = (slice + m_p.input) % pool_bytes;
      for (std::uint64_t off = 0; off < m_p.state; off += 64) acc += t.load(state + off);
      t.compute(m_p.work);
      // Actuate.
      if (net) {
        write_header(t, io, mac, seq++);
        t.store(io + 30, acc, 8);
        t.net_send(io, frame);
      }
      const std::uint64_t end = t.cpu().rdtsc();
      m_response.sample(end - release);
      m_response_us.sample((end - release) * 1'000'000 / hz);
      if (end - release > deadline) ++m_misses;
      ++m_stats.operations;
      release += period;
    };
    if (m_p.iterations == 0)
      for (;;) job();
    for (std::uint64_t i = 0; i < m_p.iterations; ++i) job();
    finished(t);
  }

 private:
  ControlLoopParams m_p;
  stats::Histogram m_wakeup{&m_stats, "wakeup_latency", "cycles", "release to start of each job (guest TSC)"};
  stats::Histogram m_response{&m_stats, "response", "cycles", "release to actuation of each job (guest TSC)"};
  stats::Histogram m_response_us{&m_stats, "response_us", "us", "the same in microseconds"};
  stats::Counter m_misses{&m_stats, "deadline_misses", "jobs", "jobs that actuated after their deadline"};
  stats::Counter m_stray{&m_stats, "stray_frames", "frames", "frames received that were not the awaited reading"};
  stats::Counter m_no_device{&m_stats, "no_device", "jobs", "jobs without a network device to read the sensor"};
  stats::Counter m_no_memory{&m_stats, "no_memory", "threads", "threads that could not map their memory"};
};

}  // namespace

std::shared_ptr<Workload> Workload::create_net(const WorkloadParams& p, stats::Group* parent, const std::string& name) {
  if (p.type == "net_pingpong") return std::make_shared<NetPingpong>(p.net_pingpong, parent, name);
  if (p.type == "net_stream") return std::make_shared<NetStream>(p.net_stream, parent, name);
  if (p.type == "net_rx") return std::make_shared<NetRx>(p.net_rx, parent, name);
  if (p.type == "net_echo") return std::make_shared<NetEcho>(p.net_echo, parent, name);
  if (p.type == "dma_rogue") return std::make_shared<DmaRogue>(p.dma_rogue, parent, name);
  if (p.type == "pattern_check") return std::make_shared<PatternCheck>(p.pattern_check, parent, name);
  if (p.type == "control_loop") return std::make_shared<ControlLoop>(p.control_loop, parent, name);
  return nullptr;
}

}  // namespace vmx::workloads
