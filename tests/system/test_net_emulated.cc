// The hypervisor's PF driver and software switch, and the emulated NIC
// (docs/io.md): frames the driver sends come back from an echoing peer
// through the switch; a guest's ring driver drives the emulated device by
// trapped register accesses or, with access: poll, through a mapped and
// polled register page (S1); the emulated path costs several exits per
// packet (S2, emulated part).
//
// A simulation needs a fresh process (SystemC elaborates once), so runs
// that are compared happen in forked children that report their figures
// through a pipe.
#define SC_INCLUDE_DYNAMIC_PROCESSES
#include <systemc>

#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/core.h"
#include "hypervisor/host_nic.h"
#include "hypervisor/hypervisor.h"
#include "models/nic.h"
#include "models/platform.h"
#include "sim/fiber.h"
#include "sim/stats.h"

namespace {

using vmx::cpu::Core;
namespace reg = vmx::models::nicreg;
using Figures = std::map<std::string, double>;

/// Runs `fn` in a child process and returns the figures it reported.
[[maybe_unused]] Figures in_child(const std::function<Figures()>& fn) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    std::string out;
    try {
      for (const auto& [k, v] : fn()) out += k + " " + std::to_string(v) + "\n";
    } catch (const std::exception& e) {
      out = std::string("error 1\n# ") + e.what() + "\n";
    }
    if (write(fds[1], out.data(), out.size()) < 0) _exit(2);
    close(fds[1]);
    _exit(0);
  }
  close(fds[1]);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  INFO(text);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  Figures f;
  std::istringstream in(text);
  std::string k;
  double v;
  while (in >> k >> v) f[k] = v;
  REQUIRE(f.count("error") == 0);
  return f;
}

double counter(const vmx::stats::Group& root, const std::string& path) {
  auto* c = dynamic_cast<const vmx::stats::Counter*>(root.find(path));
  return c ? static_cast<double>(c->value()) : 0.0;
}

constexpr std::uint64_t kPeerMac = 0x0A0000000000ull | 0x0E;  // 0e:00:00:00:00:0a, no NIC function's
constexpr unsigned kFrame = 64;

/// Writes a 64-byte frame (dst, src, EtherType 0x88B5, sequence number,
/// pattern) at `a` with the given core's stores.
void write_frame(Core& c, std::uint64_t a, std::uint64_t src, std::uint64_t seq) {
  c.store(a, kPeerMac | (src << 48));  // bytes 0-5 dst, 6-7 src bytes 0-1
  c.store(a + 8, (src >> 16) | (0xB588ull << 32));  // src bytes 2-5, EtherType
  for (std::uint64_t i = 16; i < kFrame; i += 8) c.store(a + i, seq * 0x0101010101010101ull ^ i);
}

// ---------------------------------------------------------------------------
// The PF driver and switch on their own: a core that is not running the
// hypervisor plays its host context.

struct RecordingPort : vmx::hv::SwitchPort {
  std::vector<std::uint64_t> seqs;  // sequence word (bytes 16-23) of each delivered frame
  std::vector<unsigned> lens;
  std::uint64_t dst_of_last = 0;
  void deliver(Core& c, std::uint64_t hpa, unsigned len) override {
    lens.push_back(len);
    seqs.push_back(c.load(hpa + 16) ^ 16);
    dst_of_last = c.load(hpa, 4) | (c.load(hpa + 4, 2) << 32);
  }
};

struct Host : vmx::cpu::InterruptHandler {
  vmx::hv::HostNic* nic = nullptr;
  void interrupt(Core& c, std::uint8_t v) override {
    if (v == nic->vector()) nic->interrupt(c);
    c.wrmsr(vmx::cpu::msr::kX2ApicEoi, 0);
  }
  void exception(Core&, std::uint8_t, std::uint32_t) override { std::abort(); }
};

}  // namespace

TEST_CASE("the PF driver's frames come back from an echoing peer through the software switch",
          "[net][host_nic]") {
  vmx::stats::Group root(nullptr, "");
  auto pp = vmx::cfg::defaults<vmx::models::PlatformParams>();
  pp.cores = 1;
  pp.memory = 256ull << 20;
  pp.nic.enabled = true;
  pp.nic.peer.mode = "echo";
  vmx::models::Platform platform(pp, &root);
  auto hp = vmx::cfg::defaults<vmx::hv::HypervisorParams>();
  std::uint64_t next = 0x400000;
  vmx::hv::HostNic::Env env;
  env.alloc_frame = [&] {
    next += 4096;
    return next - 4096;
  };
  env.charge = [](Core& c, std::uint64_t n, std::uint64_t) { c.compute(n); };
  vmx::hv::HostNic nic(hp.host_nic, hp.costs, platform.nic()->window(0), 1, env, &root);
  const std::uint64_t port_mac = 0x02 | (0x01ull << 24) | (0x07ull << 40);
  const std::uint64_t other_mac = 0x02 | (0x01ull << 24) | (0x08ull << 40);
  RecordingPort port, other;
  nic.attach(port_mac, &port);
  nic.attach(other_mac, &other);
  Host host;
  host.nic = &nic;
  constexpr unsigned kFrames = 20;
  constexpr std::uint64_t kSource = 0x300000;  // frames the host sends, in host memory
  std::uint64_t sent_at = 0;
  vmx::sim::Fiber fiber("host", [&] {
    Core& c = Core::current();
    c.lidt(&host);
    nic.init(c);
    for (unsigned i = 0; i < kFrames; ++i) {
      write_frame(c, kSource + i * 128, port_mac, i);
      REQUIRE(nic.transmit(c, kSource + i * 128, kFrame));
    }
    sent_at = c.now();
    for (;;) {
      c.sti();
      c.hlt();
      c.cli();
    }
  });
  platform.core(0).set_reset_fiber(&fiber);
  sc_core::sc_start(sc_core::sc_time(200, sc_core::SC_US));

  REQUIRE(nic.ready());
  CHECK(sent_at > 0);
  // Every frame went out on the PF and came back to the port whose MAC was
  // its source (the peer swaps the addresses), in order, bytes intact.
  CHECK(counter(root, "system.nic.pf.tx_packets") == kFrames);
  CHECK(counter(root, "system.peer.echoed") == kFrames);
  CHECK(counter(root, "system.nic.pf.rx_packets") == kFrames);
  REQUIRE(port.seqs.size() == kFrames);
  for (unsigned i = 0; i < kFrames; ++i) CHECK(port.seqs[i] == i * 0x0101010101010101ull);
  CHECK(port.lens[0] == kFrame);
  CHECK(port.dst_of_last == port_mac);
  CHECK(other.seqs.empty());
  CHECK(nic.stats().switched.value() == kFrames);
  CHECK(nic.stats().unknown.value() == 0);
  CHECK(nic.stats().interrupts.value() >= 1);
  CHECK(nic.stats().rx_packets.value() == kFrames);
  CHECK(nic.stats().tx_packets.value() == kFrames);
  CHECK(counter(root, "system.nic.rx_unmatched") == 0);
}
