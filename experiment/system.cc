// Assembles the platform, the hypervisor and the VMs from an experiment and
// runs it under SystemC.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string_view>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <deque>
#include <memory>
#include <stdexcept>
#include <type_traits>

#include <fmt/format.h>
#include <systemc>

#include "cpu/core_trace.h"
#include "cpu/vmcs.h"
#include "models/device_trace.h"
#include "experiment/experiment.h"
#include "guest/virtio_net.h"

namespace vmx::experiment {

namespace {

/// Ends the run early once every finite guest thread has finished. The
/// number of such threads is known from the configuration before any VM
/// boots, so a VM that finishes before another has started does not end
/// the run. A VM the hypervisor stops (docs/memory.md, "Overcommit") no
/// longer counts: its unfinished threads never will.
class Monitor : public sc_core::sc_module {
 public:
  SC_HAS_PROCESS(Monitor);
  Monitor(sc_core::sc_module_name n, bool stop_when_done) : sc_module(n), m_stop(stop_when_done) {
    SC_THREAD(watch);
  }
  /// The run control of VM `vm`'s kernel.
  guest::RunControl* control(unsigned vm) {
    while (m_vms.size() <= vm) m_vms.emplace_back(this);
    return &m_vms[vm];
  }
  /// `threads` more finite threads will run in VM `vm`.
  void expect(unsigned vm, std::uint64_t threads) {
    control(vm);
    m_vms[vm].pending += threads;
    m_pending += threads;
    m_expected += threads;
  }
  /// VM `vm` was stopped: its threads are no longer waited for.
  void vm_stopped(unsigned vm) {
    control(vm);
    const std::uint64_t n = m_vms[vm].pending;
    m_vms[vm].pending = 0;
    settle(n);
  }
  bool finished() const { return m_expected > 0 && m_pending == 0; }

 private:
  struct Vm final : guest::RunControl {
    explicit Vm(Monitor* m) : monitor(m) {}
    void thread_finished() override {
      if (!pending) return;
      --pending;
      monitor->settle(1);
    }
    Monitor* monitor;
    std::uint64_t pending = 0;
  };
  void settle(std::uint64_t n) {
    if (!n || !m_pending) return;
    m_pending -= std::min(n, m_pending);
    if (m_pending == 0) m_done.notify(sc_core::SC_ZERO_TIME);
  }
  void watch() {
    for (;;) {
      sc_core::wait(m_done);
      if (m_stop && m_pending == 0) sc_core::sc_pause();
    }
  }
  bool m_stop;
  std::deque<Vm> m_vms;
  std::uint64_t m_pending = 0, m_expected = 0;
  sc_core::sc_event m_done;
};

sc_core::sc_time time_ps(std::uint64_t ps) { return sc_core::sc_time::from_value(static_cast<sc_dt::uint64>(ps)); }

}  // namespace

/// 90% of the memory the host has available now (MemAvailable), 0 (no
/// limit) when it cannot be read.
static std::uint64_t default_host_memory_limit() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib / 10 * 9 * 1024;
  return 0;
}

/// Gives the SystemC objects of one host (cores, NIC, link...) names of their
/// own: built inside this module's constructor, they become its children
/// ("host_a.cpu0"), so two hosts' objects do not collide.
class HostScope : public sc_core::sc_module {
 public:
  HostScope(sc_core::sc_module_name n, const std::function<void()>& build) : sc_module(n) { build(); }
};

struct Session::System {
  /// One machine with its hypervisor and VMs. The single-host experiment has
  /// one, whose statistics sit at the root (system..., vm...).
  struct Host {
    std::string name;
    stats::Group* group = nullptr;
    const PlatformParams* pp = nullptr;
    const hv::HypervisorParams* hp = nullptr;
    const std::vector<VmParams>* vms = nullptr;
    std::unique_ptr<HostScope> scope;
    std::unique_ptr<models::Platform> platform;
    std::unique_ptr<hv::Hypervisor> hypervisor;
    std::vector<std::unique_ptr<guest::Kernel>> kernels;  // by VM of its hypervisor (null: runs a hypervisor)
    std::vector<std::pair<std::string, unsigned>> incoming;  // migrations' incoming VMs: name, vCPUs
  };

  explicit System(const ExperimentParams& p) : params(p), trace(p.event_trace) {
    if (p.event_trace.enabled) trace::EventTrace::set_active(&trace);
    // The platforms first, then the monitor and the run's own statistics,
    // then the software: the order in which the statistics and SystemC
    // processes of a single-host run have always been made.
    if (p.hosts.empty()) {
      auto h = std::make_unique<Host>();
      h->group = &root;
      h->pp = &p.platform;
      h->hp = &p.hypervisor;
      h->vms = &p.vms;
      h->platform = std::make_unique<models::Platform>(p.platform, &root);
      hosts.push_back(std::move(h));
    } else {
      stats::Group& hg = root.subgroup("host", "the hosts (docs/migration.md)");
      for (const HostParams& hp : p.hosts) {
        auto h = std::make_unique<Host>();
        h->name = hp.name;
        h->group = &hg.subgroup(hp.name, "host " + hp.name);
        h->pp = &hp.platform;
        h->hp = &hp.hypervisor;
        h->vms = &hp.vms;
        Host* raw = h.get();
        h->scope = std::make_unique<HostScope>(("host_" + hp.name).c_str(), [raw, &hp] {
          raw->platform = std::make_unique<models::Platform>(hp.platform, raw->group, false);
        });
        hosts.push_back(std::move(h));
      }
      stats::Group& net = root.subgroup("network", "between the hosts");
      if (!p.network.eth_switch.enabled) {
        // The link between the two hosts' NICs (their own links and peers
        // are not built).
        link = std::make_unique<models::EthLink>("link", p.network.link, &net);
        models::Nic& a = *hosts[0]->platform->nic();
        models::Nic& b = *hosts[1]->platform->nic();
        a.attach_link(*link);
        b.attach_link(*link);
        link->bind(a, hosts[0]->name, b, hosts[1]->name);
      } else {
        // The switch, one port per host's NIC and one for the peer, each
        // with a link of network.link's parameters (docs/migration.md).
        eth_switch = std::make_unique<models::EthSwitch>("switch", p.network.eth_switch, &net);
        for (auto& h : hosts) {
          port_links.push_back(std::make_unique<models::EthLink>(("link_" + h->name).c_str(), p.network.link, &net));
          models::EthLink& l = *port_links.back();
          models::Nic& nic = *h->platform->nic();
          nic.attach_link(l);
          l.bind(nic, h->name, eth_switch->add_port(h->name, l), "switch");
        }
        if (p.network.peer.enabled) {
          port_links.push_back(std::make_unique<models::EthLink>("link_peer", p.network.link, &net));
          models::EthLink& l = *port_links.back();
          peer = std::make_unique<models::NetPeer>("peer", p.network.peer.peer, &net);
          peer->attach_link(l);
          l.bind(*peer, "peer", eth_switch->add_port("peer", l), "switch");
        }
      }
    }
    monitor = std::make_unique<Monitor>("monitor", p.stop_when_done);
    sim = std::make_unique<stats::Group>(&root, "sim", "the run itself");
    sim_seconds = std::make_unique<stats::Gauge>(sim.get(), "seconds", "s", "simulated time at the end of the run");
    sim_finished = std::make_unique<stats::Gauge>(sim.get(), "finished", "flag", "1 if every finite workload completed");
    for (auto& h : hosts) build_host(*h);
    if (!p.migrations.empty()) build_migrations();
    if (p.event_trace.enabled)
      for (auto& h : hosts) trace_host(*h);
  }

  /// The host's rows of the event trace and its listeners: with several
  /// hosts each is one process of the trace ("host <name>"), with the rows
  /// a single host has in processes of their own (trace::core_row).
  void trace_host(Host& h) {
    models::Platform& platform = *h.platform;
    const PlatformParams& pp = *h.pp;
    // The timeline's rows in a fixed order: cores, devices, then each VM's
    // vCPUs (a row exists from here on even if nothing happens on it).
    for (unsigned i = 0; i < platform.core_count(); ++i) trace.track(trace::core_row(i, h.name));
    // Each core reports its entries, exits, interrupts and walks to the
    // trace through a listener (sim/events.h).
    for (unsigned i = 0; i < platform.core_count(); ++i)
      core_traces.push_back(std::make_unique<cpu::CoreTrace>(platform.core(i), trace, h.name));
    // The devices report interrupt messages and blocked DMA the same way.
    device_traces.push_back(std::make_unique<models::DeviceTrace>(platform.interrupts().events(), trace, h.name));
    if (platform.root_complex())
      device_traces.push_back(std::make_unique<models::DeviceTrace>(platform.root_complex()->events(), trace, h.name));
    if (pp.nic.enabled) {
      trace.track(trace::msi_row(h.name));
      trace.track(trace::iommu_row(h.name));
    }
    for (const VmParams& vp : *h.vms)
      for (unsigned j = 0; j < vp.vcpus; ++j) {
        trace.track(trace::vcpu_row(vp.name, j, h.name));
        if (trace.on(trace::kGuest)) trace.track(trace::vcpu_threads_row(vp.name, j, h.name));
      }
    // Incoming VMs: their vCPUs run here after the migration; their guest
    // kernel's rows stay on the host the VM was created on.
    for (const auto& [name, vcpus] : h.incoming)
      for (unsigned j = 0; j < vcpus; ++j) trace.track(trace::vcpu_row(name, j, h.name));
  }

  /// The host's hypervisor and VMs.
  void build_host(Host& h) {
    models::Platform& platform = *h.platform;
    const PlatformParams& pp = *h.pp;
    platform.memory().set_host_limit(params.host_memory_limit ? params.host_memory_limit : default_host_memory_limit());
    h.hypervisor = std::make_unique<hv::Hypervisor>(*h.hp, platform.cores(), pp.memory, pp.frequency, h.group);
    hv::Hypervisor* hyp = h.hypervisor.get();
    hyp->set_trace_host(h.name);
    // The hypervisor drives the NIC's physical function (PF driver and switch).
    if (platform.nic()) hyp->attach_nic(platform.nic()->window(0));
    if (pp.nic.enabled) {
      hv::IoPlatform io;
      io.vtd_regs = platform.vtd() ? models::Platform::kVtdBase : 0;
      io.nic_mmio_base = pp.nic.device.mmio_base;
      io.nic_mmio_stride = pp.nic.device.mmio_stride;
      hyp->attach_io(io);
    }
    current = &h;
    stats::Group& vm_root = h.group->subgroup("vm", "per-VM statistics");
    for (std::size_t i = 0; i < h.vms->size(); ++i) build_vm(*hyp, (*h.vms)[i], vm_root, i, pp.cores * pp.smt);
    // A stopped VM's threads are no longer waited for (docs/memory.md).
    hyp->on_vm_stopped([this, hyp](cpu::Core&, unsigned vm) { monitor->vm_stopped(monitor_index[hyp].at(vm)); });
    for (unsigned i = 0; i < platform.core_count(); ++i) platform.core(i).set_reset_fiber(&hyp->core_fiber(i));
  }

  /// Each migration: the incoming VM on the destination (the same guest
  /// kernel, its vCPUs off until the stream has arrived), its migration
  /// port there, and the migration thread on the source (docs/migration.md).
  /// A migration with `when` is set up here too, and started by its
  /// trigger (check_triggers).
  void build_migrations() {
    for (std::size_t m = 0; m < params.migrations.size(); ++m) {
      const MigrationParams& mp = params.migrations[m];
      const unsigned vm = setup_migration(mp, m, !mp.when.stat.empty());
      if (mp.when.stat.empty()) continue;
      double value = 0;
      if (!stat_value(mp.when.stat, value))
        throw cfg::ConfigError("", 0, fmt::format("migrations[{}].when.stat", m),
                               "the path of a counter or gauge of this run's statistics", mp.when.stat);
      triggers.push_back({&mp, &find_host(mp.from), vm, mp.at, &trigger_stats(mp.vm)});
    }
  }

  Host& find_host(const std::string& name) {
    for (auto& h : hosts)
      if (h->name == name) return *h;
    throw std::logic_error("no host " + name);  // validated by load()
  }

  /// Migration `m` (its index among the run's migrations): the incoming VM
  /// and port on the destination, the migration on the source, started at
  /// mp.at or, `deferred`, by migrate_start. Before the run, or on a core of
  /// the destination (a migration asked for while the run goes on). Returns
  /// the VM's index on the source.
  unsigned setup_migration(const MigrationParams& mp, std::size_t m, bool deferred) {
    {
      Host& src = find_host(mp.from);
      Host& dst = find_host(mp.to);
      unsigned index = 0;
      while (src.hypervisor->vm_name(index) != mp.vm) ++index;
      const VmParams* vp = nullptr;
      for (const VmParams& v : *src.vms)
        if (v.name == mp.vm) vp = &v;
      hv::VmSpec spec;
      spec.name = vp->name;
      spec.vcpus = static_cast<unsigned>(vp->vcpus);
      spec.memory = vp->memory;
      spec.weight = vp->weight;
      spec.cap = vp->cap;
      spec.priority = static_cast<unsigned>(vp->priority);
      spec.edf_runtime = vp->edf_runtime;
      spec.edf_period = vp->edf_period;
      parse_core_list(vp->pin, dst.pp->cores * dst.pp->smt, spec.pin);  // validated by load()
      spec.image = src.kernels.at(index).get();
      spec.incoming = true;
      if (vp->nic.type == "vf") {  // the same VF index on the destination's NIC (docs/migration.md, S17)
        spec.nic_type = "vf";
        spec.vf = static_cast<unsigned>(vp->nic.vf);
        spec.nic_window_gpa = guest::kNetWindowGpa;
        spec.nic_vector = guest::kNetVector;
      }
      dst.hypervisor->add_vm(spec);
      const unsigned dst_index = dst.hypervisor->vm_count() - 1;
      monitor_index[dst.hypervisor.get()].push_back(monitor_index[src.hypervisor.get()].at(index));
      dst.kernels.push_back(nullptr);  // the kernel is the source's
      dst.incoming.emplace_back(spec.name, spec.vcpus);
      // Migration ports: locally administered MACs 02:00:00:4d:<m>:<end>.
      const std::uint64_t base = 0x02 | (0x4Dull << 24) | (std::uint64_t(m & 0xFF) << 32);
      const std::uint64_t dst_mac = base | (1ull << 40), src_mac = base | (2ull << 40);
      dst.hypervisor->migrate_in(dst_index, dst_mac);
      hv::MigrationSpec ms;
      ms.vm = index;
      ms.at = mp.at;
      ms.core = static_cast<unsigned>(mp.core);
      ms.mode = mp.tracking == "write_protect" ? hv::DirtyMode::WriteProtect
                : mp.tracking == "dirty_bits"  ? hv::DirtyMode::DirtyBits
                                               : hv::DirtyMode::Pml;
      ms.max_bandwidth = mp.max_bandwidth;
      ms.downtime_limit = mp.downtime_limit;
      ms.max_rounds = mp.max_rounds;
      ms.vf_handshake = mp.vf_handshake;
      if (mp.announce) {
        hv::AnnounceSpec a;
        a.rounds = mp.announce_rounds;
        a.initial = mp.announce_initial;
        a.step = mp.announce_step;
        a.max = mp.announce_max;
        dst.hypervisor->migrate_announce(dst_index, a);
      }
      ms.dst_mac = dst_mac;
      ms.src_mac = src_mac;
      ms.deferred = deferred;
      ms.auto_converge = mp.auto_converge;
      ms.throttle_initial = static_cast<unsigned>(mp.throttle_initial);
      ms.throttle_increment = static_cast<unsigned>(mp.throttle_increment);
      ms.throttle_max = static_cast<unsigned>(mp.throttle_max);
      ms.throttle_trigger = static_cast<unsigned>(mp.throttle_trigger);
      ms.postcopy = mp.mode == "postcopy";
      ms.postcopy_after = mp.postcopy_after;
      ms.postcopy_bandwidth = mp.postcopy_bandwidth;
      src.hypervisor->migrate_out(ms);
      // The check (simulator observation, no cost): page checksums at the
      // source when its memory is final, compared with the destination's
      // when the VM resumes there.
      auto check = std::make_shared<MigrationCheck>(root.subgroup("migration_check").subgroup(mp.vm, "VM " + mp.vm));
      models::PhysMem* smem = &src.platform->memory();
      models::PhysMem* dmem = &dst.platform->memory();
      const unsigned src_vm = index;
      src.hypervisor->on_migration_memory([check, smem, src_vm](unsigned vm, const auto& pages) {
        if (vm != src_vm) return;
        for (const auto& [gfn, hpa] : pages) check->source[gfn] = page_checksum(*smem, hpa);
      });
      // Pre-copy: every page at once, when the VM resumes. Post-copy
      // (hypervisor/postcopy.cc): the pages present at the resumption, then
      // each page as it is placed (before the guest can touch it), then the
      // comparison when the last has arrived.
      auto compare = [check] {
        for (const auto& [gfn, sum] : check->source) {
          ++check->pages;
          auto it = check->dest.find(gfn);
          // A page the destination lacks reads as zeros there.
          if ((it == check->dest.end() ? zero_checksum() : it->second) != sum) ++check->mismatched;
        }
      };
      dst.hypervisor->on_migration_memory([check, dmem, dst_index, compare](unsigned vm, const auto& pages) {
        if (vm != dst_index) return;
        for (const auto& [gfn, hpa] : pages) check->dest[gfn] = page_checksum(*dmem, hpa);
        compare();
      });
      dst.hypervisor->on_postcopy_memory([check, dmem, dst_index, compare](unsigned vm, const auto& pages, bool done) {
        if (vm != dst_index) return;
        for (const auto& [gfn, hpa] : pages) check->dest.emplace(gfn, page_checksum(*dmem, hpa));
        if (done) compare();
      });
      checks.push_back(check);
      return index;
    }
  }

  /// A migration started now, while the run goes on (Session::migrate): a
  /// command to the destination's core 0 sets it up there, then starts the
  /// source's migration thread at once (docs/migration.md, "Triggers").
  void migrate_now(const MigrationParams& mp, std::uint64_t now) {
    runtime_migrations.push_back(mp);
    const MigrationParams* keep = &runtime_migrations.back();
    const std::size_t m = params.migrations.size() + runtime_migrations.size() - 1;
    Host& dst = find_host(mp.to);
    Host& src = find_host(mp.from);
    trigger_stats(mp.vm).fired_ns.set(static_cast<double>(now / 1000));
    const std::uint8_t vec = dst.hypervisor->command(now, 0, [this, keep, m, &src](cpu::Core& c) {
      const unsigned vm = setup_migration(*keep, m, true);
      start_migration(src, vm, c.now_ps());
    });
    dst.platform->interrupts().ipi(0, 0, vec);
  }

  /// The source's migration thread starts (a command on its core).
  static void start_migration(Host& src, unsigned vm, std::uint64_t now) {
    const auto [core, vec] = src.hypervisor->migrate_start(vm, now);
    src.platform->interrupts().ipi(core, core, vec);
  }

  /// When a migration not started at its `at` was started (experiment-side:
  /// the trigger is outside the machine), under migration_trigger.<vm>.
  struct TriggerStats {
    explicit TriggerStats(stats::Group& g)
        : checks(&g, "checks", "checks", "times the migration's `when` condition was checked"),
          fired_ns(&g, "fired_ns", "ns", "simulated time at which the migration was started (condition or Python)") {}
    stats::Counter checks;
    stats::Gauge fired_ns;
  };
  TriggerStats& trigger_stats(const std::string& vm) {
    auto& slot = trigger_groups[vm];
    if (!slot) slot = std::make_unique<TriggerStats>(root.subgroup("migration_trigger").subgroup(vm, "VM " + vm));
    return *slot;
  }
  /// Migrations waiting for their `when` condition.
  struct Trigger {
    const MigrationParams* mp;
    Host* src;
    unsigned vm;
    std::uint64_t next_ps;  // the next check (UINT64_MAX: started)
    TriggerStats* stats;
  };
  std::uint64_t next_check() const {
    std::uint64_t next = UINT64_MAX;
    for (const Trigger& t : triggers) next = std::min(next, t.next_ps);
    return next;
  }
  /// Checks the conditions due at `now` (statistics up to date); a
  /// migration whose condition holds starts now.
  void check_triggers(std::uint64_t now) {
    for (Trigger& t : triggers) {
      if (t.next_ps > now) continue;
      double value = 0;
      ++t.stats->checks;
      if (stat_value(t.mp->when.stat, value) && value >= t.mp->when.at_least) {
        t.stats->fired_ns.set(static_cast<double>(now / 1000));
        start_migration(*t.src, t.vm, now);
        t.next_ps = UINT64_MAX;
      } else {
        t.next_ps += t.mp->when.every;
      }
    }
  }
  /// The value of the counter or gauge at `path`; false if there is none.
  bool stat_value(const std::string& path, double& out) const;

  /// Checksums of a migrated VM's pages (experiment-side observation).
  struct MigrationCheck {
    explicit MigrationCheck(stats::Group& g)
        : pages(&g, "pages", "pages", "source pages compared with the destination at resumption"),
          mismatched(&g, "mismatched", "pages", "pages whose content differs at the destination (corruption)") {}
    stats::Counter pages, mismatched;
    std::map<std::uint64_t, std::uint64_t> source, dest;
  };
  static std::uint64_t page_checksum(models::PhysMem& mem, std::uint64_t hpa) {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a over the page's 8-byte words
    for (std::uint64_t o = 0; o < 4096; o += 8) h = (h ^ mem.read(hpa + o, 8)) * 1099511628211ull;
    return h;
  }
  static std::uint64_t zero_checksum() {
    std::uint64_t h = 1469598103934665603ull;
    for (std::uint64_t o = 0; o < 4096; o += 8) h = h * 1099511628211ull;
    return h;
  }

  /// A guest image that is a hypervisor: vCPU i starts in that hypervisor's
  /// per-core loop for its core i (docs/nested.md).
  struct HypervisorImage final : abi::GuestImage {
    hv::Hypervisor* hv = nullptr;
    std::uint64_t entry_point(unsigned i) override { return cpu::code_address(&hv->core_fiber(i)); }
  };

  /// Builds VM `vp` (with its guest kernel and workloads, or, with
  /// vp.hypervisor, the hypervisor running as its guest and that
  /// hypervisor's VMs) on hypervisor `hyp`; `seed_index` and the monitor's
  /// index are the VM's place in the configuration.
  template <class VP>
  void build_vm(hv::Hypervisor& hyp, const VP& vp, stats::Group& vm_root, std::size_t i, std::uint64_t pin_cores) {
    const PlatformParams& pp = *current->pp;
    stats::Group& vg = vm_root.subgroup(vp.name, "VM " + vp.name);
    const unsigned mon = next_monitor_index++;
    monitor_index[&hyp].push_back(mon);
    hv::VmSpec spec;
    spec.name = vp.name;
    spec.vcpus = static_cast<unsigned>(vp.vcpus);
    spec.memory = vp.memory;
    spec.weight = vp.weight;
    spec.cap = vp.cap;
    spec.shadow_paging = vp.paging == "shadow";
    spec.pin.clear();
    spec.priority = static_cast<unsigned>(vp.priority);
    spec.edf_runtime = vp.edf_runtime;
    spec.edf_period = vp.edf_period;
    spec.cache_ways = vp.cache_ways;
    spec.mba_delay = static_cast<unsigned>(vp.mba_delay);
    spec.pmu = vp.pmu;
    spec.snapshot.enabled = vp.snapshot.at != 0;
    spec.snapshot.at = vp.snapshot.at;
    spec.snapshot.restore_at = vp.snapshot.restore_at;
    if (vp.dirty_log.mode != "none") {
      spec.dirty_log = true;
      spec.dirty_log_mode = vp.dirty_log.mode == "pml"          ? hv::DirtyMode::Pml
                            : vp.dirty_log.mode == "dirty_bits" ? hv::DirtyMode::DirtyBits
                                                                : hv::DirtyMode::WriteProtect;
      spec.dirty_log_start = vp.dirty_log.start;
      spec.dirty_log_interval = vp.dirty_log.interval;
    }
    parse_core_list(vp.pin, pin_cores, spec.pin);  // validated by load()
    if (vp.hypervisor.enabled()) {
      if constexpr (!std::is_same_v<std::decay_t<decltype(vp.hypervisor)>, GuestHypervisorParams<0>>) {
        // Nested virtualization: the hypervisor (the same code) as the VM's
        // guest, on the cores the VM's vCPUs run on, in its guest-physical
        // memory; its VMs' statistics under vm.<name>.vm.
        auto image = std::make_unique<HypervisorImage>();
        spec.image = image.get();
        spec.nested_vmx = true;
        hyp.add_vm(spec);
        const unsigned index = hyp.vm_count() - 1;
        std::vector<cpu::Core*> cores;
        for (unsigned j = 0; j < spec.vcpus; ++j) cores.push_back(hyp.vcpu_core(index, j));
        auto inner = std::make_unique<hv::Hypervisor>(vp.hypervisor.params, cores, vp.memory, pp.frequency, &vg);
        image->hv = inner.get();
        hv::Hypervisor::GuestLink link;
        link.observe = [&hyp, index](cpu::Core&, std::uint64_t vmcs, events::Listener* l) {
          hyp.nested_observe(index, vmcs, l);
        };
        link.exits = [&hyp, index](events::Listener* l) { hyp.nested_exits(index, l); };
        inner->run_as_guest(std::move(link));
        stats::Group& inner_root = vg.subgroup("vm", "the VMs of the VM's hypervisor");
        for (std::size_t k = 0; k < vp.hypervisor.vms.size(); ++k)
          build_vm(*inner, vp.hypervisor.vms[k], inner_root, i * 1000 + k + 1, vp.vcpus);
        hv::Hypervisor* raw = inner.get();
        inner->on_vm_stopped([this, raw](cpu::Core&, unsigned vm) { monitor->vm_stopped(monitor_index[raw].at(vm)); });
        images.push_back(std::move(image));
        guest_hypervisors.push_back(std::move(inner));
        if (&hyp == current->hypervisor.get()) current->kernels.push_back(nullptr);
        return;
      }
    }
    auto kernel = std::make_unique<guest::Kernel>(vp.kernel, vp.name, static_cast<unsigned>(vp.vcpus), vp.memory,
                                                  pp.frequency, params.seed * 1000003ull + i, monitor->control(mon), &vg);
    for (std::size_t w = 0; w < vp.workloads.size(); ++w) {
      const auto& wp = vp.workloads[w];
      auto wl = workloads::Workload::create(wp, &vg, fmt::format("workload{}", w));
      if (wl->finite()) monitor->expect(mon, wp.threads);
      kernel->add_process(wl, static_cast<unsigned>(wp.threads), wp.page_size, wp.nice);
    }
    kernel->set_trace_host(current->name);
    // Memory overcommit devices (docs/memory.md); the balloon's kernel
    // thread comes after the workloads' threads.
    if (vp.swap) kernel->set_swap_disk();
    if (vp.balloon.enabled) kernel->set_balloon();
    if (vp.nic.type == "vf" || vp.nic.type == "emulated") {
      std::uint64_t mac = 0;
      parse_mac(vp.nic.mac, mac);  // validated by load()
      kernel->set_net_driver(std::make_unique<guest::RingNetDriver>(vp.kernel.net, mac));
    }
    std::uint64_t virtio_mac = 0;
    if (vp.nic.type == "virtio") {
      parse_mac(vp.nic.mac, virtio_mac);
      // Default MAC: 02:00:00:02:<id high>:<id low>, locally administered.
      if (!virtio_mac) virtio_mac = 0x02 | (0x02ull << 24) | (((i >> 8) & 0xFF) << 32) | ((i & 0xFF) << 40);
      auto drv = std::make_unique<guest::VirtioNetDriver>(guest::VirtioNetDriver::costs_from(vp.kernel.net), &vg);
      kernel->set_net_driver(std::move(drv));
    }
    spec.nic_type = vp.nic.type;
    spec.virtio_net = vp.nic.type == "virtio";
    spec.virtio_mac = virtio_mac;
    spec.vf = static_cast<unsigned>(vp.nic.vf);
    spec.nic_window_gpa = guest::kNetWindowGpa;
    spec.nic_vector = guest::kNetVector;
    if (vp.nic.type == "emulated") {
      spec.nic.enabled = true;
      spec.nic.window = guest::kNetWindowGpa;
      spec.nic.vector = guest::kNetVector;
      spec.nic.params = vp.nic.emulated;
      parse_mac(vp.nic.mac, spec.nic.mac);  // empty: the hypervisor's default
    }
    spec.disk_bytes = vp.swap;
    spec.balloon = vp.balloon.enabled;
    spec.balloon_max = vp.balloon.max;
    spec.balloon_schedule.emplace_back(0, vp.balloon.target);
    for (const auto& step : vp.balloon.schedule) spec.balloon_schedule.emplace_back(step.at, step.target);
    std::stable_sort(spec.balloon_schedule.begin(), spec.balloon_schedule.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    if (vp.encrypted) {
      // Key IDs in configuration order (load() checked there are enough).
      spec.key_id = ++encrypted_vms;
      kernel->set_memory_encryption();
    }
    spec.image = kernel.get();
    hyp.add_vm(spec);
    if (&hyp == current->hypervisor.get()) current->kernels.push_back(std::move(kernel));
    else nested_kernels.push_back(std::move(kernel));
  }

  /// Brings every hypervisor's time accounting up to date.
  void flush_accounting() {
    for (auto& h : hosts)
      for (cpu::Core* c : h->platform->cores()) c->flush_retired();  // fast-forward holds some back
    for (auto& h : hosts) h->hypervisor->flush_accounting();
    for (auto& h : guest_hypervisors) h->flush_accounting();
  }

  const ExperimentParams& params;
  unsigned encrypted_vms = 0;
  // Before the components: they record into it from their first event.
  trace::EventTrace trace;
  stats::Group root;
  std::vector<std::unique_ptr<Host>> hosts;
  Host* current = nullptr;                  // the host whose VMs are being built
  std::unique_ptr<models::EthLink> link;    // between the hosts (with `hosts`)
  std::unique_ptr<models::EthSwitch> eth_switch;             // or the switch between them,
  std::vector<std::unique_ptr<models::EthLink>> port_links;  // its ports' links,
  std::unique_ptr<models::NetPeer> peer;                     // and the peer on it
  std::vector<std::shared_ptr<MigrationCheck>> checks;
  std::vector<Trigger> triggers;
  std::map<std::string, std::unique_ptr<TriggerStats>> trigger_groups;
  std::deque<MigrationParams> runtime_migrations;  // Session::migrate's, kept for the run
  // Nested virtualization: the hypervisors running as guests, their images
  // and their VMs' kernels.
  std::vector<std::unique_ptr<hv::Hypervisor>> guest_hypervisors;
  std::vector<std::unique_ptr<HypervisorImage>> images;
  std::vector<std::unique_ptr<guest::Kernel>> nested_kernels;
  unsigned next_monitor_index = 0;
  std::map<const hv::Hypervisor*, std::vector<unsigned>> monitor_index;  // the monitor's index of each VM
  std::vector<std::unique_ptr<cpu::CoreTrace>> core_traces;
  std::vector<std::unique_ptr<models::DeviceTrace>> device_traces;
  std::unique_ptr<Monitor> monitor;
  std::unique_ptr<stats::Group> sim;
  std::unique_ptr<stats::Gauge> sim_seconds, sim_finished;
  // Sampled statistics (series.interval): sample times, then each path's
  // values in the order the paths first matched (NaN before a path existed).
  struct Series {
    std::vector<std::uint64_t> time_ps;
    std::vector<std::string> names;
    std::map<std::string, std::vector<double>> values;
    int track = -1;
    std::uint64_t next_ps = 0;  // the next sample time
  } series;
  // Fast-forward (fast_forward > 0): where the functional phase ended. The
  // group exists only then, so runs without it keep their statistics.
  struct FastForward {
    explicit FastForward(stats::Group& sim)
        : group(sim.subgroup("fast_forward", "the functional phase before full timing (docs/model.md)")),
          switch_seconds(group.make<stats::Gauge>("switch_seconds", "s",
                                                  "simulated time at which full timing began (0: never reached)")),
          instructions(group.make<stats::Gauge>("instructions", "instructions",
                                                "instructions every core retired functionally before the switch")) {}
    stats::Group& group;
    stats::Gauge& switch_seconds;
    stats::Gauge& instructions;
    bool pending = true;  // the cores are still functional
  };
  std::unique_ptr<FastForward> fast_forward;
};

namespace {
bool g_session_created = false;
}

Session::Session(const ExperimentParams& params, std::string resolved_yaml)
    : m_params(params), m_resolved(std::move(resolved_yaml)) {
  if (g_session_created)
    throw cpu::SimulationError("SystemC allows one simulation per process; start a new process");
  g_session_created = true;
  setenv("SYSTEMC_DISABLE_COPYRIGHT_MESSAGE", "1", 0);
  // SystemC reports stop the run with a message rather than abort().
  sc_core::sc_report_handler::set_actions(sc_core::SC_ERROR, sc_core::SC_DISPLAY | sc_core::SC_THROW);
  sc_core::sc_report_handler::set_actions(sc_core::SC_FATAL, sc_core::SC_DISPLAY | sc_core::SC_THROW);
  // The trace is active before the system is built and stays so for the
  // process's one simulation (the system is never destroyed).
  m_sys = new System(m_params);
  if (m_params.fast_forward) {
    m_sys->fast_forward = std::make_unique<System::FastForward>(*m_sys->sim);
    for (const auto& host : m_sys->hosts)
      for (cpu::Core* c : host->platform->cores()) c->set_functional(true);
  }
}

// The SystemC kernel cannot be restarted and fibers suspended in the middle
// of an operation must not be unwound, so the system stays alive (and
// reachable, for leak checkers) until the process ends.
Session::~Session() {
  static System* kept = nullptr;
  kept = m_sys;
  (void)kept;
}

std::string Session::events_json() const {
  return m_params.event_trace.enabled ? m_sys->trace.json() : std::string();
}

void Session::run_until(std::uint64_t ps) {
  System::FastForward* ff = m_sys->fast_forward.get();
  if (ff && ff->pending && ps > m_params.fast_forward) {
    advance(m_params.fast_forward);
    if (now_ps() >= m_params.fast_forward) switch_to_detailed();
  }
  advance(ps);
}

// The end of fast-forward: every core goes to full timing, and the
// statistics restart from here (as at a warm-up boundary), with the switch
// point recorded. Cores stand at their synchronization points here (SystemC
// is paused), each at most a quantum past the switch time.
void Session::switch_to_detailed() {
  System::FastForward& ff = *m_sys->fast_forward;
  double instructions = 0;
  for (const auto& host : m_sys->hosts)
    for (cpu::Core* c : host->platform->cores()) {
      instructions += static_cast<double>(c->stats().instructions.value());
      c->set_functional(false);
    }
  ff.pending = false;
  reset_stats();
  ff.switch_seconds.set(static_cast<double>(now_ps()) / 1e12);
  ff.instructions.set(instructions);
}

void Session::advance(std::uint64_t ps) {
  // With series.interval the simulation stops at every sample time (from 0)
  // to sample, and with migrations[].when at every check of a condition;
  // stopping changes no statistic.
  const std::uint64_t interval = m_params.series.interval;
  auto& sd = m_sys->series;
  for (;;) {
    if (m_params.stop_when_done && m_sys->monitor->finished()) break;
    const std::uint64_t sample = interval && sd.next_ps <= ps ? sd.next_ps : UINT64_MAX;
    const std::uint64_t check = m_sys->next_check() <= ps ? m_sys->next_check() : UINT64_MAX;
    const std::uint64_t next = std::min(sample, check);
    if (next == UINT64_MAX) break;
    advance_to(next);
    if (now_ps() < next) break;  // finished before
    if (next == check) {
      update_gauges();
      m_sys->check_triggers(now_ps());
    }
    if (next == sample) {
      sample_series();
      sd.next_ps += interval;
    }
  }
  advance_to(ps);
}

void Session::migrate(const MigrationParams& mp) { m_sys->migrate_now(mp, std::max<std::uint64_t>(1, now_ps())); }

void Session::advance_to(std::uint64_t ps) {
  sc_core::sc_time target = time_ps(ps);
  if (sc_core::sc_time_stamp() >= target || (m_params.stop_when_done && m_sys->monitor->finished())) return;
  try {
    sc_core::sc_start(target - sc_core::sc_time_stamp());
  } catch (const sc_core::sc_report& r) {
    throw cpu::SimulationError(r.get_msg());
  }
}

void Session::reset_stats() {
  // Time accounting up to now belongs to the phase that ends here.
  m_sys->flush_accounting();
  m_sys->root.reset();
}
std::uint64_t Session::now_ps() const { return sc_core::sc_time_stamp().value(); }
bool Session::finished() const { return m_sys->monitor->finished(); }
const stats::Group& Session::stats() const { return m_sys->root; }

void Session::update_gauges() {
  m_sys->flush_accounting();
  m_sys->sim_seconds->set(static_cast<double>(now_ps()) / 1e12);
  m_sys->sim_finished->set(finished() ? 1 : 0);
}

namespace {

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    std::size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    std::string item = text.substr(pos, comma - pos);
    const auto b = item.find_first_not_of(" \t");
    if (b != std::string::npos) out.push_back(item.substr(b, item.find_last_not_of(" \t") - b + 1));
    pos = comma + 1;
  }
  return out;
}

// A dotted path against a pattern whose "*" components stand for any one component.
bool path_matches(const std::string& pattern, const std::string& path) {
  std::size_t i = 0, j = 0;
  for (;;) {
    const std::size_t pe = pattern.find('.', i), qe = path.find('.', j);
    const std::string_view pc(pattern.data() + i, (pe == std::string::npos ? pattern.size() : pe) - i);
    const std::string_view qc(path.data() + j, (qe == std::string::npos ? path.size() : qe) - j);
    if (pc != "*" && pc != qc) return false;
    if (pe == std::string::npos || qe == std::string::npos) return pe == qe;
    i = pe + 1;
    j = qe + 1;
  }
}

// Counters and gauges whose paths match one of the patterns.
class SeriesCollector final : public stats::Visitor {
 public:
  SeriesCollector(const std::vector<std::string>& patterns, std::vector<std::pair<std::string, double>>& out)
      : m_patterns(patterns), m_out(out) {}
  void begin_group(const stats::Group& g) override { m_prefix.push_back(g.path()); }
  void end_group(const stats::Group&) override { m_prefix.pop_back(); }
  void counter(const stats::Counter& c) override { add(c.name(), static_cast<double>(c.value())); }
  void gauge(const stats::Gauge& g) override { add(g.name(), g.value()); }
  void ratio(const stats::Ratio&) override {}
  void histogram(const stats::Histogram&) override {}

 private:
  void add(const std::string& name, double v) {
    const std::string& prefix = m_prefix.back();
    const std::string path = prefix.empty() ? name : prefix + "." + name;
    for (const auto& p : m_patterns)
      if (path_matches(p, path)) {
        m_out.emplace_back(path, v);
        return;
      }
  }
  const std::vector<std::string>& m_patterns;
  std::vector<std::pair<std::string, double>>& m_out;
  std::vector<std::string> m_prefix;
};

}  // namespace

bool Session::System::stat_value(const std::string& path, double& out) const {
  std::vector<std::pair<std::string, double>> found;
  const std::vector<std::string> patterns{path};
  SeriesCollector collect(patterns, found);
  root.accept(collect);
  for (const auto& [name, v] : found)
    if (name == path) {
      out = v;
      return true;
    }
  return false;
}

void Session::sample_series() {
  if (!m_params.series.interval) return;
  update_gauges();
  auto& sd = m_sys->series;
  const std::vector<std::string> patterns = split_list(m_params.series.stats);
  std::vector<std::pair<std::string, double>> now;
  SeriesCollector collect(patterns, now);
  m_sys->root.accept(collect);
  // Simulator observation of the hypervisor's state (no statistic of its own).
  for (const auto& host : m_sys->hosts) {
    const hv::Hypervisor& h = *host->hypervisor;
    const std::string prefix = host->name.empty() ? "" : "host." + host->name + ".";
    for (unsigned i = 0; i < h.vm_count(); ++i) {
      const std::string path = prefix + "vm." + h.vm_name(i) + ".resident_pages";
      for (const auto& p : patterns)
        if (path_matches(p, path)) {
          now.emplace_back(path, static_cast<double>(h.vm_resident_bytes(i) / 4096));
          break;
        }
    }
  }
  const std::size_t k = sd.time_ps.size();
  const std::uint64_t t = now_ps();
  sd.time_ps.push_back(t);
  for (const auto& [name, v] : now) {
    auto it = sd.values.find(name);
    if (it == sd.values.end()) {
      sd.names.push_back(name);
      it = sd.values.emplace(name, std::vector<double>(k, std::numeric_limits<double>::quiet_NaN())).first;
    }
    if (it->second.size() == k) it->second.push_back(v);
  }
  for (auto& [name, vals] : sd.values)
    if (vals.size() == k) vals.push_back(std::numeric_limits<double>::quiet_NaN());
  if (m_params.event_trace.enabled) {
    if (sd.track < 0) sd.track = static_cast<int>(m_sys->trace.track("series", "statistics"));
    for (const auto& [name, v] : now)
      m_sys->trace.counter(static_cast<unsigned>(sd.track), name, t, static_cast<std::uint64_t>(std::llround(std::max(v, 0.0))));
  }
}

std::string Session::stats_json() {
  update_gauges();
  std::string json = stats::to_json(m_sys->root);
  const auto& sd = m_sys->series;
  if (!m_params.series.interval || sd.time_ps.empty()) return json;
  // The samples go after the statistics, as one more top-level object.
  const std::size_t close = json.rfind('}');
  std::string out = json.substr(0, close);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  auto put = [&out](double v) {
    if (std::isfinite(v)) fmt::format_to(std::back_inserter(out), "{}", v);
    else out += "null";
  };
  fmt::format_to(std::back_inserter(out), ",\n  \"series\": {{\n    \"interval_ps\": {},\n    \"time_ps\": [",
                 m_params.series.interval);
  for (std::size_t i = 0; i < sd.time_ps.size(); ++i) fmt::format_to(std::back_inserter(out), "{}{}", i ? ", " : "", sd.time_ps[i]);
  out += "],\n    \"stats\": {";
  for (std::size_t n = 0; n < sd.names.size(); ++n) {
    out += n ? ",\n      " : "\n      ";
    stats::append_json_string(out, sd.names[n]);
    out += ": [";
    const auto& vals = sd.values.at(sd.names[n]);
    for (std::size_t i = 0; i < vals.size(); ++i) {
      if (i) out += ", ";
      put(vals[i]);
    }
    out += "]";
  }
  out += "\n    }\n  }\n}\n";
  return out;
}

std::string Session::units_json() const { return stats::describe_json(m_sys->root); }

std::string Session::summary() {
  update_gauges();
  return experiment::summary(m_sys->root, m_params);
}

std::vector<std::string> Session::notes() const {
  std::vector<std::string> out;
  for (const auto& host : m_sys->hosts) {
    const hv::Hypervisor& hyp = *host->hypervisor;
    const std::string where = host->name.empty() ? "" : " (host " + host->name + ")";
    for (unsigned i = 0; i < hyp.vm_count(); ++i) {
      const std::string& name = hyp.vm_name(i);
      if (!hyp.vm_crash(i).empty()) out.push_back(name + where + ": crashed: " + hyp.vm_crash(i));
      if (!hyp.vm_stop_note(i).empty()) out.push_back(name + where + ": " + hyp.vm_stop_note(i));
      if (i < host->kernels.size() && host->kernels[i] && !host->kernels[i]->panic_message().empty())
        out.push_back(name + where + ": " + host->kernels[i]->panic_message());
    }
  }
  for (const auto& h : m_sys->guest_hypervisors)
    for (unsigned i = 0; i < h->vm_count(); ++i) {
      const std::string& name = h->vm_name(i);
      if (!h->vm_crash(i).empty()) out.push_back(name + " (nested): crashed: " + h->vm_crash(i));
      if (!h->vm_stop_note(i).empty()) out.push_back(name + " (nested): " + h->vm_stop_note(i));
    }
  for (const auto& k : m_sys->nested_kernels)
    if (!k->panic_message().empty()) out.push_back(k->panic_message());
  for (const auto& host : m_sys->hosts)
    for (const auto& line : host->platform->debugcon().lines()) out.push_back("debug console: " + line);
  if (m_sys->trace.dropped())
    out.push_back(fmt::format("event trace: {} events kept, {} dropped beyond event_trace.max_events",
                              m_sys->trace.recorded(), m_sys->trace.dropped()));
  // The IOMMU's fault log (VT-d 7.2 primary fault records), as software
  // reading the fault-recording registers would see it.
  for (const auto& host : m_sys->hosts)
    if (const iommu::Iommu* mmu = host->platform->iommu())
    for (const auto& f : mmu->fault_log())
      out.push_back(fmt::format("iommu fault: requester {:02x}:{:02x}.{:x} address {:#x} {} reason {:#x}",
                                f.requester_id >> 8, (f.requester_id >> 3) & 0x1F, f.requester_id & 7, f.address,
                                f.access == iommu::DmaAccess::Write ? "write" : "read",
                                static_cast<unsigned>(f.reason)));
  return out;
}

RunResult run(const ExperimentParams& params, const std::string& resolved_yaml, const Progress& progress) {
  Session s(params, resolved_yaml);
  const std::uint64_t step = progress ? std::max<std::uint64_t>(params.duration / 200, 1) : params.duration;
  auto advance_to = [&](std::uint64_t end) {
    while (s.now_ps() < end && !(params.stop_when_done && s.finished())) {
      s.run_until(std::min(end, s.now_ps() + step));
      if (progress) progress(s.now_ps(), params.duration);
    }
  };
  if (params.warmup > 0 && params.warmup < params.duration) {
    advance_to(params.warmup);
    s.reset_stats();
  }
  advance_to(params.duration);
  RunResult res;
  res.simulated_ps = s.now_ps();
  res.finished = s.finished();
  res.vm_notes = s.notes();
  res.stats_json = s.stats_json();
  res.resolved_yaml = resolved_yaml;
  res.summary = s.summary();
  res.events_json = s.events_json();
  res.units_json = s.units_json();
  return res;
}

}  // namespace vmx::experiment
