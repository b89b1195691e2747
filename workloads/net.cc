// Network workloads and the memory-pattern check (docs/io.md, "Guest
// networking"): programs that reach the NIC only through the guest
// kernel's network calls (guest::Thread::net_*).
#include <algorithm>

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
void write_header(guest::Thread& t, std::uint64_t va, std::uint64_t src_mac, std::uint64_t seq) {
  for (unsigned i = 0; i < 6; ++i) t.store(va + i, (kPeerMac >> (8 * i)) & 0xFF, 1);
  for (unsigned i = 0; i < 6; ++i) t.store(va + 6 + i, (src_mac >> (8 * i)) & 0xFF, 1);
  t.store(va + 12, kEtherType >> 8, 1);  // network byte order
  t.store(va + 13, kEtherType & 0xFF, 1);
  t.store(va + 14, kMagic, 4);
  t.store(va + 18, 0, 4);
  t.store(va + kSeqOffset, seq, 8);
  t.store(va + 30, 0, 8);
}

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

// Sends frames as fast as the transmit ring allows, `batch` per doorbell.
class NetStream final : public Workload {
 public:
  NetStream(const NetStreamParams& p, stats::Group* g, const std::string& n) : Workload(g, n), m_p(p) {}
  bool finite() const override { return m_p.frames != 0; }
  void run(guest::Thread& t) override {
    if (!t.net_up()) {
      ++m_no_device;
      return;
    }
    const auto size = static_cast<std::uint32_t>(m_p.size);
    const std::uint64_t slots = std::max<std::uint64_t>(1, m_p.buffer / m_p.size);
    const std::uint64_t buf = t.mmap(slots * m_p.size);
    const std::uint64_t mac = t.net_mac();
    started(t);
    const std::uint64_t t0 = t.cpu().rdtsc();
    std::uint64_t i = 0;
    auto one = [&] {
      const std::uint64_t va = buf + (i % slots) * m_p.size;
      write_header(t, va, mac, i);
      const bool last_of_batch = (i + 1) % m_p.batch == 0 || (m_p.frames && i + 1 == m_p.frames);
      t.net_send(va, size, last_of_batch);
      ++m_frames;
      m_bytes += size;
      ++m_stats.operations;
      ++i;
      const std::uint64_t cycles = t.cpu().rdtsc() - t0;
      if (cycles) m_gbps.set(static_cast<double>(m_bytes.value()) * 8.0 * static_cast<double>(t.tsc_hz()) /
                             static_cast<double>(cycles) / 1e9);
    };
    if (m_p.frames == 0)
      for (;;) one();
    while (i < m_p.frames) one();
    finished(t);
  }

 private:
  NetStreamParams m_p;
  stats::Counter m_frames{&m_stats, "frames", "frames", "frames handed to the kernel"};
  stats::Counter m_bytes{&m_stats, "bytes", "bytes", "bytes of those frames"};
  stats::Gauge m_gbps{&m_stats, "throughput_gbps", "Gbit/s",
                      "bytes handed to the kernel per second of the program's run (guest TSC), in Gbit/s"};
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
    std::uint64_t expected = 0;
    for (std::uint64_t off = 0; off + 8 <= m_p.working_set; off += 8) {
      const std::uint64_t v = pattern(off);
      t.store(base + off, v);
      expected = expected * 31 + v;
    }
    m_expected.set(static_cast<double>(expected >> 11));
    if (m_p.hold) t.sleep(m_p.hold);
    std::uint64_t sum = 0;
    for (std::uint64_t off = 0; off + 8 <= m_p.working_set; off += 8) {
      const std::uint64_t v = t.load(base + off);
      if (v != pattern(off)) ++m_mismatches;
      sum = sum * 31 + v;
    }
    // A gauge holds a double: the top 53 bits of the 64-bit checksum.
    m_checksum.set(static_cast<double>(sum >> 11));
    ++m_stats.operations;
    finished(t);
  }

 private:
  static std::uint64_t pattern(std::uint64_t off) { return (off * 0x9E3779B97F4A7C15ull) ^ 0xA5A5A5A5A5A5A5A5ull; }
  PatternCheckParams m_p;
  stats::Gauge m_expected{&m_stats, "expected_checksum", "value", "checksum of the pattern written (bits 63:11)"};
  stats::Gauge m_checksum{&m_stats, "checksum", "value", "checksum of the memory read back after the hold (bits 63:11)"};
  stats::Counter m_mismatches{&m_stats, "mismatches", "quadwords", "quadwords that no longer held the pattern"};
};

}  // namespace

std::shared_ptr<Workload> Workload::create_net(const WorkloadParams& p, stats::Group* parent, const std::string& name) {
  if (p.type == "net_pingpong") return std::make_shared<NetPingpong>(p.net_pingpong, parent, name);
  if (p.type == "net_stream") return std::make_shared<NetStream>(p.net_stream, parent, name);
  if (p.type == "dma_rogue") return std::make_shared<DmaRogue>(p.dma_rogue, parent, name);
  if (p.type == "pattern_check") return std::make_shared<PatternCheck>(p.pattern_check, parent, name);
  return nullptr;
}

}  // namespace vmx::workloads
