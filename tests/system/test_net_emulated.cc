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
#include "system/cli_harness.h"
#include "hypervisor/host_nic.h"
#include "hypervisor/hypervisor.h"
#include "models/nic.h"
#include "platform/platform.h"
#include "sim/fiber.h"
#include "sim/stats.h"

namespace {

using vmx::cpu::Core;
namespace reg = vmx::models::nicreg;
using Figures = std::map<std::string, double>;

/// Runs `fn` in a child process and returns the figures it reported.
Figures in_child(const std::function<Figures()>& fn) {
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

// ---------------------------------------------------------------------------
// A guest with a ring driver for the NIC function's register layout, run by
// the hypervisor with an emulated NIC. Paging is off in the guest, so its
// addresses are guest-physical. Each round sends one frame and waits for
// the peer's echo (spinning on the RX descriptor's DD, or halting until the
// device's interrupt), then hands the RX descriptor back.

namespace {

struct NetGuest : vmx::abi::GuestImage, vmx::cpu::InterruptHandler {
  static constexpr std::uint64_t kTx = 0x100000, kRx = 0x101000, kTxBuf = 0x200000, kRxBuf = 0x300000;
  static constexpr unsigned kRing = 64;
  static constexpr std::uint8_t kVector = 0x50;
  std::uint64_t window = 0xF0000000;
  std::uint64_t mac = 0;
  bool use_irq = false;
  unsigned done = 0, bad = 0, interrupts = 0;
  std::uint64_t rtt_cycles = 0;
  vmx::sim::Fiber fiber{"guest.vcpu0", [this] { main(); }};
  std::uint64_t entry_point(unsigned) override { return vmx::cpu::code_address(&fiber); }

  void w(Core& c, std::uint32_t off, std::uint32_t v) { c.store(window + off, v, 4); }
  std::uint32_t r(Core& c, std::uint32_t off) { return static_cast<std::uint32_t>(c.load(window + off, 4)); }
  void interrupt(Core& c, std::uint8_t) override {
    ++interrupts;
    w(c, reg::kIntCause, r(c, reg::kIntCause));  // acknowledge (W1C)
    c.wrmsr(vmx::cpu::msr::kX2ApicEoi, 0);
  }
  void exception(Core&, std::uint8_t, std::uint32_t) override { std::abort(); }
  void main() {
    Core& c = Core::current();
    c.lidt(this);
    // Buffers zeroed (touched) before use, as a driver allocating them.
    c.rep_stos(kTxBuf, 0, 2048 * kRing);
    c.rep_stos(kRxBuf, 0, 2048 * kRing);
    for (unsigned i = 0; i < kRing; ++i) {
      c.store(kRx + 16 * i, kRxBuf + 2048 * i);
      c.store(kRx + 16 * i + 8, 2048, 4);
    }
    w(c, reg::kTxBaseLo, kTx);
    w(c, reg::kTxBaseHi, 0);
    w(c, reg::kTxSize, kRing);
    w(c, reg::kRxBaseLo, kRx);
    w(c, reg::kRxBaseHi, 0);
    w(c, reg::kRxSize, kRing);
    w(c, reg::kRxTail, kRing - 1);
    if (use_irq) {
      w(c, reg::kMsixAddrLo, 0xFEE00000);
      w(c, reg::kMsixData, kVector);
      w(c, reg::kIntEnable, reg::kCauseRx);
      w(c, reg::kMsixCtrl, 0);
    }
    w(c, reg::kCtrl, reg::kCtrlTxEn | reg::kCtrlRxEn);
    unsigned tx = 0, rx = 0;
    for (std::uint64_t k = 0;; ++k) {
      const std::uint64_t t0 = c.rdtsc();
      const std::uint64_t buf = kTxBuf + 2048 * tx;
      write_frame(c, buf, mac, k);
      c.store(kTx + 16 * tx, buf);
      c.store(kTx + 16 * tx + 8, kFrame, 4);
      tx = (tx + 1) % kRing;
      w(c, reg::kTxTail, tx);
      const std::uint64_t d = kRx + 16 * rx;
      while (!((c.load(d + 8, 4) >> 16) & 1)) {
        if (use_irq) {
          c.sti();
          c.hlt();
          c.cli();
        } else {
          c.pause();
        }
      }
      // The echo: addresses swapped, the rest as sent.
      const std::uint64_t rb = kRxBuf + 2048 * rx;
      const std::uint64_t dst = c.load(rb, 4) | (c.load(rb + 4, 2) << 32);
      if (dst != mac || (c.load(rb + 16) ^ 16) != k * 0x0101010101010101ull || c.load(d + 8, 2) != kFrame) ++bad;
      rtt_cycles += c.rdtsc() - t0;
      ++done;
      c.store(d + 8, 2048, 4);
      rx = (rx + 1) % kRing;
      w(c, reg::kRxTail, (rx + kRing - 1) % kRing);
    }
  }
};

struct NetRun {
  std::string access = "trap";
  std::uint64_t poll_period_ps = 1'000'000'000;
  std::uint64_t userspace_cost = 0;
  bool use_irq = false;
  double warmup_us = 500;  // guest memory touched, rings set up: statistics reset after it
  double duration_us = 2000;
};

// Two cores: the VM's vCPU pinned to core 0, the PF's interrupt on core 1.
Figures run_net(const NetRun& run) {
  vmx::stats::Group root(nullptr, "");
  auto pp = vmx::cfg::defaults<vmx::models::PlatformParams>();
  pp.cores = 2;
  pp.memory = 256ull << 20;
  pp.nic.enabled = true;
  pp.nic.peer.mode = "echo";
  vmx::models::Platform platform(pp, &root);
  auto hp = vmx::cfg::defaults<vmx::hv::HypervisorParams>();
  hp.host_nic.core = 1;
  vmx::hv::Hypervisor hv(hp, platform.cores(), pp.memory, pp.frequency, &root);
  hv.attach_nic(platform.nic()->window(0));
  NetGuest guest;
  guest.use_irq = run.use_irq;
  vmx::hv::VmSpec spec{"net", 1, 16ull << 20, &guest};
  spec.pin = {0};
  spec.nic.enabled = true;
  spec.nic.params.access = run.access;
  spec.nic.params.poll_period = run.poll_period_ps;
  spec.nic.params.userspace_cost = run.userspace_cost;
  hv.add_vm(spec);
  guest.mac = 0x02 | (0x01ull << 24);  // the hypervisor's default for VM 0
  for (unsigned i = 0; i < 2; ++i) platform.core(i).set_reset_fiber(&hv.core_fiber(i));
  sc_core::sc_start(sc_core::sc_time(run.warmup_us, sc_core::SC_US));
  hv.flush_accounting();
  root.reset();
  guest.done = guest.bad = guest.interrupts = 0;
  guest.rtt_cycles = 0;
  sc_core::sc_start(sc_core::sc_time(run.duration_us, sc_core::SC_US));
  hv.flush_accounting();
  Figures f;
  const double seconds = run.duration_us * 1e-6;
  f["rounds"] = guest.done;
  f["bad"] = guest.bad;
  f["guest_interrupts"] = guest.interrupts;
  f["rtt_us"] = guest.done ? static_cast<double>(guest.rtt_cycles) / guest.done / (pp.frequency / 1e6) : 0;
  f["exits"] = counter(root, "vm.net.vcpu0.exits");
  f["exits_per_second"] = f["exits"] / seconds;
  f["ept_exits"] = counter(root, "system.cpu0.exit_reasons.EPT_VIOLATION");
  f["polls"] = counter(root, "vm.net.nic.polls");
  f["trapped"] = counter(root, "vm.net.nic.mmio_reads") + counter(root, "vm.net.nic.mmio_writes");
  f["nic_tx"] = counter(root, "vm.net.nic.tx_packets");
  f["nic_rx"] = counter(root, "vm.net.nic.rx_packets");
  f["doorbells"] = counter(root, "vm.net.nic.doorbells");
  f["pf_tx"] = counter(root, "hypervisor.host_nic.tx_packets");
  f["switched"] = counter(root, "hypervisor.host_nic.switched");
  f["echoed"] = counter(root, "system.peer.echoed");
  double hv_instr = 0;
  for (unsigned i = 0; i < 2; ++i) {
    const std::string p = "system.cpu" + std::to_string(i) + ".";
    hv_instr += counter(root, p + "instructions") - counter(root, p + "guest_instructions");
  }
  f["hv_instructions"] = hv_instr;
  return f;
}

void report(const char* what, const Figures& f) {
  std::string line = what;
  for (const auto& [k, v] : f) line += " " + k + "=" + std::to_string(v);
  WARN(line);
}

}  // namespace

TEST_CASE("a guest's ring driver sends and receives through the trapped emulated NIC", "[net][emulated]") {
  NetRun run;
  const Figures f = in_child([&] { return run_net(run); });
  report("trap", f);
  REQUIRE(f.at("rounds") > 50);
  CHECK(f.at("bad") == 0);
  // Every frame went guest -> device model -> PF -> peer -> PF -> switch ->
  // device model -> guest.
  CHECK(f.at("nic_tx") >= f.at("rounds"));
  CHECK(f.at("nic_tx") <= f.at("rounds") + 1);
  CHECK(f.at("pf_tx") == f.at("nic_tx"));
  CHECK(f.at("switched") + 1 >= f.at("rounds"));  // one may be in flight at either end
  CHECK(f.at("nic_rx") == f.at("switched"));
  // Trap-and-emulate: each register access is an EPT-violation exit; a
  // round writes TX_TAIL and RX_TAIL.
  CHECK(f.at("trapped") >= 2 * f.at("rounds"));
  CHECK(f.at("trapped") <= 2 * f.at("rounds") + 2);
  CHECK(f.at("exits") == f.at("trapped"));  // and nothing else exits
  CHECK(f.at("ept_exits") == f.at("trapped"));
  CHECK(f.at("doorbells") == f.at("nic_tx"));
}

TEST_CASE("S2 emulated: an interrupt-driven round trip costs several exits per packet", "[net][emulated][s2]") {
  NetRun run;
  run.use_irq = true;
  const Figures f = in_child([&] { return run_net(run); });
  NetRun us = run;
  us.userspace_cost = 15000;
  const Figures g = in_child([&] { return run_net(us); });
  report("irq", f);
  report("irq userspace", g);
  REQUIRE(f.at("rounds") > 20);
  CHECK(f.at("bad") == 0);
  CHECK(f.at("guest_interrupts") >= f.at("rounds") * 0.9);
  // TX doorbell, HLT, INT_CAUSE read and write, EOI, RX doorbell.
  CHECK(f.at("exits") / f.at("rounds") >= 3);
  // A user-space device model adds its path to every device exit: more
  // hypervisor work per packet and a longer round trip.
  CHECK(g.at("hv_instructions") / g.at("rounds") > f.at("hv_instructions") / f.at("rounds") + 4 * 15000);
  CHECK(g.at("rtt_us") > f.at("rtt_us"));
}

TEST_CASE("S1: mapped and polled registers cut exits per second by orders of magnitude and the poll period sets "
          "the latency",
          "[net][emulated][s1]") {
  NetRun trap;
  trap.duration_us = 4000;
  NetRun slow = trap, fast = trap;
  slow.access = fast.access = "poll";
  slow.poll_period_ps = 1'000'000'000;  // 1 ms
  fast.poll_period_ps = 100'000'000;    // 100 us
  const Figures t = in_child([&] { return run_net(trap); });
  const Figures s = in_child([&] { return run_net(slow); });
  const Figures p = in_child([&] { return run_net(fast); });
  report("trap", t);
  report("poll 1ms", s);
  report("poll 100us", p);
  REQUIRE(s.at("rounds") >= 2);
  REQUIRE(p.at("rounds") >= 10);
  CHECK(s.at("bad") + p.at("bad") + t.at("bad") == 0);
  // Trap-and-emulate: hundreds of thousands of exits per second; polled:
  // about one per poll (the host timer interrupting the vCPU).
  CHECK(t.at("exits_per_second") > 100 * s.at("exits_per_second"));
  CHECK(s.at("trapped") + s.at("ept_exits") == 0);
  CHECK(p.at("trapped") + p.at("ept_exits") == 0);
  CHECK(s.at("exits") <= s.at("polls") + 1);
  // A shorter period: more polling work, lower latency.
  CHECK(p.at("polls") > 5 * s.at("polls"));
  CHECK(p.at("exits_per_second") > s.at("exits_per_second"));
  CHECK(p.at("rtt_us") < s.at("rtt_us") / 3);
  CHECK(t.at("rtt_us") < p.at("rtt_us"));
}

// The scenario file, through the CLI: the guest kernel's ring driver and the
// net_stream workload over the emulated NIC, trapped or polled.
TEST_CASE("S1 scenario: net_stream over the emulated NIC, trapped vs polled registers", "[net][emulated][s1][cli]") {
  const std::string yaml = vmx::test::read_text(std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/s1_trap_vs_poll.yaml");
  auto trap = vmx::test::run_cli(yaml, {"--set", "vms[0].nic.access=trap"});
  auto slow = vmx::test::run_cli(yaml, {"--set", "vms[0].nic.access=poll", "--set", "vms[0].nic.poll_period=1ms"});
  auto fast = vmx::test::run_cli(yaml, {"--set", "vms[0].nic.access=poll", "--set", "vms[0].nic.poll_period=100us"});
  INFO(trap.err << slow.err << fast.err);
  REQUIRE(trap.exit_code == 0);
  REQUIRE(slow.exit_code == 0);
  REQUIRE(fast.exit_code == 0);
  const double t_exits = trap.at("vm.tx.vcpu0.exits"), s_exits = slow.at("vm.tx.vcpu0.exits"),
               f_exits = fast.at("vm.tx.vcpu0.exits");
  WARN("exits in 20 ms: trap " << t_exits << ", poll 1ms " << s_exits << ", poll 100us " << f_exits
                               << "; frames: " << trap.at("vm.tx.nic.tx_packets") << ", "
                               << slow.at("vm.tx.nic.tx_packets") << ", " << fast.at("vm.tx.nic.tx_packets"));
  // Trapped: every doorbell exits. Polled: none does.
  CHECK(trap.at("vm.tx.nic.mmio_writes") + 1 >= trap.at("vm.tx.nic.tx_packets"));  // one rung before the reset
  CHECK(slow.at_or_zero("vm.tx.nic.mmio_writes") + fast.at_or_zero("vm.tx.nic.mmio_writes") == 0);
  CHECK(t_exits > 100 * s_exits);
  // The period: ten times the polls, more exits (the poll timer interrupts
  // the running vCPU) and, since each poll drains the ring, more frames.
  CHECK(fast.at("vm.tx.nic.polls") > 5 * slow.at("vm.tx.nic.polls"));
  CHECK(f_exits > s_exits);
  CHECK(fast.at("vm.tx.nic.tx_packets") > 2 * slow.at("vm.tx.nic.tx_packets"));
  CHECK(trap.at("hypervisor.host_nic.tx_packets") == trap.at("vm.tx.nic.tx_packets"));
}

TEST_CASE("S2 scenario: net_pingpong over the emulated NIC takes several exits per packet", "[net][emulated][s2][cli]") {
  const std::string yaml =
      vmx::test::read_text(std::string(VMXSIM_SOURCE_DIR) + "/configs/scenarios/s2_emulated_pingpong.yaml");
  auto kvm = vmx::test::run_cli(yaml);
  auto qemu = vmx::test::run_cli(yaml, {"--set", "vms[0].nic.userspace_cost=15000"});
  INFO(kvm.err << qemu.err);
  REQUIRE(kvm.exit_code == 0);
  REQUIRE(qemu.exit_code == 0);
  const double replies = kvm.at("vm.pp.workload0.replies");
  REQUIRE(replies > 500);
  const double exits = kvm.at("vm.pp.vcpu0.exits") / replies;
  const double trapped = (kvm.at("vm.pp.nic.mmio_reads") + kvm.at("vm.pp.nic.mmio_writes")) / replies;
  auto hv_instr = [](const vmx::test::CliRun& r) {
    double n = 0;
    for (int i = 0; i < 2; ++i) {
      const std::string p = "system.cpu" + std::to_string(i) + ".";
      n += r.at(p + "instructions") - r.at_or_zero(p + "guest_instructions");
    }
    return n / r.at("vm.pp.workload0.replies");
  };
  WARN("per packet: " << exits << " exits, " << trapped << " trapped register accesses, " << hv_instr(kvm)
                      << " hypervisor instructions (" << hv_instr(qemu) << " with a user-space device model); rtt p50 "
                      << kvm.at("vm.pp.workload0.rtt_ns.p50") << " ns (" << qemu.at("vm.pp.workload0.rtt_ns.p50")
                      << " ns)");
  CHECK(exits >= 3);
  CHECK(trapped >= 3);
  CHECK(trapped <= exits);
  CHECK(hv_instr(qemu) > hv_instr(kvm) + 3 * 15000);
  CHECK(qemu.at("vm.pp.workload0.rtt_ns.p50") > kvm.at("vm.pp.workload0.rtt_ns.p50"));
}
