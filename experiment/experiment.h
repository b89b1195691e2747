// One experiment: the whole YAML document, validated, and the system it
// builds. docs/architecture.md, "Configuration".
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cpu/core.h"
#include "guest/kernel.h"
#include "hypervisor/hypervisor.h"
#include "hypervisor/migration.h"
#include "models/cache.h"
#include "models/eth_switch.h"
#include "models/mem_hierarchy.h"
#include "platform/platform.h"
#include "sim/config.h"
#include "sim/event_trace.h"
#include "sim/params.h"
#include "workloads/workload.h"

namespace vmx::experiment {

using cfg::Spec;
using cfg::Unit;

using models::PlatformParams;

/// A VM's network device (docs/io.md, "Guest networking").
struct VmNicParams {
  std::string type;  // none | vf | emulated | virtio
  std::uint64_t vf;
  std::string mac;
  hv::EmulatedNicParams emulated;  // access, poll_period, userspace_cost (type emulated)
  template <class V>
  void visit(V& v) {
    v.param(type, "type", "none", Spec().one_of({"none", "vf", "emulated", "virtio"}),
            "The VM's network device: none; vf (virtual function `vf` of the platform NIC passed through: its "
            "registers mapped by EPT, its DMA translated by the IOMMU with the VM's guest-physical view, its "
            "interrupts posted or remapped); emulated (a NIC of the same register layout that the hypervisor "
            "emulates); virtio (a virtio-net device with split virtqueues, served by the hypervisor's back end, docs/io.md "
            "\"virtio-net\"). The guest's ring driver serves vf and emulated, its virtio-net driver virtio, at "
            "guest-physical 0xFEB00000.");
    v.param(vf, "vf", "0", Spec().at_most(254), "With type vf: the index of the virtual function (below platform.nic.vfs).");
    v.param(mac, "mac", "", Spec(Unit::Text),
            "MAC address the guest driver programs, as six hex bytes \"02:00:00:00:01:00\" (empty: keep the "
            "device's own; a VF's reset MAC is 02:00:00:00:f_hi:f_lo with f = 1 + vf).");
    emulated.visit(v);  // the emulated device's keys sit beside `type`
  }
};

/// Parses "aa:bb:cc:dd:ee:ff" into bytes 0-5 at bits 7:0 ... 47:40; false if malformed.
bool parse_mac(const std::string& text, std::uint64_t& mac);

/// A snapshot of the VM taken while it runs, and its restore
/// (docs/memory.md, "Snapshots").
struct VmSnapshotParams {
  std::uint64_t at, restore_at;  // ps
  template <class V>
  void visit(V& v) {
    v.param(at, "at", "0ps", Spec(Unit::Time),
            "When the snapshot is taken: the hypervisor write-protects the VM's EPT, copies each page on its "
            "first write (copy-before-write) and the rest by a background copier (0: no snapshot).");
    v.param(restore_at, "restore_at", "0ps", Spec(Unit::Time),
            "When the VM's memory is restored to the snapshot, after `at` (0: never).");
  }
};

/// Dirty logging of the VM by its hypervisor on its own, without a
/// migration (docs/memory.md, "Dirty tracking"; docs/nested.md, "Nested PML").
struct VmDirtyLogParams {
  std::string mode;
  std::uint64_t start, interval;  // ps
  template <class V>
  void visit(V& v) {
    v.param(mode, "mode", "none", Spec().one_of({"none", "write_protect", "dirty_bits", "pml"}),
            "How the hypervisor tracks the pages the VM writes (none: no dirty logging; dirty_bits and pml need "
            "the hypervisor's ept_ad).");
    v.param(start, "start", "1ms", Spec(Unit::Time).at_least(1),
            "When logging starts (a timed job of the hypervisor on the core of the VM's vCPU 0).");
    v.param(interval, "interval", "1ms", Spec(Unit::Time).at_least(1e6),
            "Time between harvests of the dirty log (get-and-clear, as a VMM's KVM_GET_DIRTY_LOG loop).");
  }
};

/// Parses "aa:bb:cc:dd:ee:ff" into bytes 0-5 at bits 7:0 ... 47:40; false if malformed.
bool parse_mac(const std::string& text, std::uint64_t& mac);

/// One step of a balloon schedule (docs/memory.md, "Ballooning").
struct BalloonStep {
  std::uint64_t at;      // ps
  std::uint64_t target;  // bytes
  template <class V>
  void visit(V& v) {
    v.param(at, "at", "0ps", Spec(Unit::Time), "Simulated time from which this target holds.");
    v.param(target, "target", "0B", Spec(Unit::Bytes), "Memory the balloon should hold from then on.");
  }
};

/// A VM's virtio-balloon device (docs/memory.md, "Ballooning").
struct VmBalloonParams {
  bool enabled;
  std::uint64_t target, max;
  std::vector<BalloonStep> schedule;
  template <class V>
  void visit(V& v) {
    v.param(enabled, "enabled", "false", Spec(Unit::Flag),
            "Give the VM a virtio-balloon device; its guest runs the balloon driver in a kernel thread.");
    v.param(target, "target", "0B", Spec(Unit::Bytes),
            "Memory the balloon should hold from the start (until the first schedule step).");
    v.param(max, "max", "0B", Spec(Unit::Bytes),
            "The most the host policy (hypervisor.balloon_watermark) may ask the balloon to hold (0: none).");
    v.list(schedule, "schedule", "Targets that take effect over time, in time order.");
  }
};

template <unsigned Depth>
struct VmParamsT;

/// vms[].hypervisor (docs/nested.md): the VM runs vmxsim's hypervisor (as
/// L1, the same code as the one on the machine) with VMs of its own instead
/// of a guest kernel, when `vms` lists any. Depth bounds the nesting the
/// configuration can express (the VMs of L1's VMs cannot nest further).
template <unsigned Depth>
struct GuestHypervisorParams {
  hv::HypervisorParams params;
  std::vector<VmParamsT<Depth - 1>> vms;
  bool enabled() const { return !vms.empty(); }
  template <class V>
  void visit(V& v) {
    params.visit(v);
    v.list(vms, "vms",
           "The VMs this hypervisor runs (statistics vm.<name>.vm.<vm>...); empty: the VM runs a guest kernel.");
  }
};
template <>
struct GuestHypervisorParams<0> {
  bool enabled() const { return false; }
  template <class V>
  void visit(V&) {}
};

template <unsigned Depth>
struct VmParamsT {
  std::string name;
  std::uint64_t vcpus;
  std::uint64_t memory;
  std::uint64_t weight;
  std::uint64_t cap;
  std::string paging;
  bool encrypted;
  std::string pmu;
  std::string pin;          // comma-separated core indices ("" = unpinned)
  std::uint64_t cache_ways, mba_delay;
  std::uint64_t priority;
  std::uint64_t edf_runtime, edf_period;  // ps
  guest::KernelParams kernel;
  VmNicParams nic;
  std::vector<workloads::WorkloadParams> workloads;
  VmSnapshotParams snapshot;
  VmDirtyLogParams dirty_log;
  std::uint64_t swap;
  VmBalloonParams balloon;
  GuestHypervisorParams<Depth> hypervisor;

  template <class V>
  void visit(V& v) {
    v.param(name, "name", "vm", Spec(Unit::Text), "Name, used in statistics paths (vm.<name>...).");
    v.param(vcpus, "vcpus", "1", Spec().at_least(1).at_most(256), "Virtual CPUs.");
    v.param(memory, "memory", "256MiB", Spec(Unit::Bytes).at_least(16 * 1024 * 1024), "Guest-physical memory.");
    v.param(weight, "weight", "256", Spec().at_least(1).at_most(65535),
            "Proportional share of the VM under hypervisor.scheduler=proportional, spread evenly over its vCPUs "
            "(default 256, the default weight of Xen's credit scheduler; only ratios matter).");
    v.param(cap, "cap", "0", Spec().at_most(100),
            "Upper limit of each of the VM's vCPUs under hypervisor.scheduler=proportional, in percent of one "
            "core per hypervisor.cap_period (0: uncapped; as Xen credit's cap, but per vCPU).");
    v.param(paging, "paging", "ept", Spec().one_of({"ept", "shadow"}),
            "How the hypervisor virtualizes the VM's memory: ept (two-dimensional walks through the VM's EPT) "
            "or shadow (the hypervisor keeps shadow page tables that the hardware walks in one dimension; "
            "guest page-table writes, CR3 loads, INVLPG and page faults exit; see docs/mmu.md).");
    v.param(encrypted, "encrypted", "false", Spec(Unit::Flag),
            "Run the VM with its memory encrypted under a key of its own (SEV-like, docs/protection.md 'S11'): "
            "the hypervisor selects a key ID, the guest kernel sets the C-bit in its mappings, and the "
            "hypervisor and devices see only ciphertext of its private pages. Needs "
            "platform.memory_encryption.enabled and paging ept; of the devices only a virtio-net NIC (whose driver then "
            "bounces every frame through shared buffers, as Linux's swiotlb does), no swap disk or balloon.");
    v.param(pmu, "pmu", "none", Spec().one_of({"none", "emulated", "mediated", "passthrough"}),
            "The VM's virtual PMU (docs/pmu.md): none (CPUID leaf 0AH reports no performance monitoring, counter "
            "MSRs are #GP), emulated (every counter MSR access and RDPMC exits; the hypervisor backs each guest "
            "counter with a core counter that runs only while the vCPU does, as KVM's classic vPMU), mediated "
            "(counters and RDPMC pass through, event selects are intercepted and filtered, IA32_PERF_GLOBAL_CTRL "
            "is switched by the VM-entry/VM-exit controls) or passthrough (every counter MSR passes through and "
            "nothing is switched: the counts include the hypervisor and other VMs).");
    v.param(pin, "pin", "", Spec(Unit::Text),
            "Cores the VM's vCPUs are pinned to, as comma-separated core indices (\"2\" or \"0,1\"): vCPU i "
            "runs only on core pin[i % n]. Empty: unpinned, vCPUs are placed round robin over the cores in order "
            "of creation (docs/scheduling.md).");
    v.param(cache_ways, "cache_ways", "0", Spec(),
            "LLC capacity bitmask of the VM's class of service (bit w: way w; contiguous and within "
            "platform.llc.ways bits, as cache allocation requires), loaded into IA32_PQR_ASSOC on every VM entry. "
            "0 with mba_delay 0: the VM shares class 0 with the hypervisor (every way). Needs platform.rdt.enabled "
            "(docs/protection.md, \"Cache and bandwidth partitioning\").");
    v.param(mba_delay, "mba_delay", "0", Spec().at_most(99),
            "MBA delay value of the VM's class of service (0: no throttling; at most platform.rdt.mba_max). "
            "Needs platform.rdt.enabled.");
    v.param(priority, "priority", "0", Spec().at_most(99),
            "Fixed priority of the VM's vCPUs under hypervisor.scheduler=realtime, higher runs first (0-99 as "
            "Linux SCHED_FIFO's range; default 0, the background level).");
    v.param(edf_runtime, "edf_runtime", "0ps", Spec(Unit::Time),
            "CPU time reserved for each of the VM's vCPUs every edf_period under hypervisor.scheduler=edf "
            "(0: no reservation, the vCPU runs in the time reservations leave).");
    v.param(edf_period, "edf_period", "0ps", Spec(Unit::Time),
            "Period of the EDF reservation, also its relative deadline (0 with edf_runtime 0).");
    v.section(kernel, "kernel", "The guest kernel.");
    v.section(nic, "nic", "The VM's network device (docs/io.md, \"Guest networking\").");
    v.section(snapshot, "snapshot", "A snapshot of the running VM and its restore (docs/memory.md, \"Snapshots\").");
    v.section(dirty_log, "dirty_log", "Dirty logging of the VM by its hypervisor, harvested at an interval "
              "(docs/memory.md, \"Dirty tracking\").");
    v.param(swap, "swap", "0B", Spec(Unit::Bytes),
            "Size of a virtio-blk disk on the host storage device (hypervisor.storage) that the guest kernel swaps "
            "to (docs/memory.md, \"Guest swap\"); 0: none, a guest out of memory kills the faulting thread.");
    v.section(balloon, "balloon", "The VM's virtio-balloon device (docs/memory.md, \"Ballooning\").");
    v.list(workloads, "workloads", "Programs the VM runs, one process each.");
    if constexpr (Depth > 0)
      v.section(hypervisor, "hypervisor",
                "Nested virtualization (docs/nested.md): with `vms` the VM runs the hypervisor with these "
                "parameters and VMs instead of a guest kernel (its kernel and workloads are then unused).");
  }
};
/// A VM of the machine's hypervisor, which may run a hypervisor (L1) with
/// VMs of its own (L2), which may run one more (L3, docs/nested.md).
using VmParams = VmParamsT<2>;

/// Statistics sampled over time (docs/memory.md, "Memory over time"): every
/// `interval` of simulated time, the counters and gauges whose paths match
/// `stats` are read and kept; stats.json gets them under "series" and the
/// event trace as counter tracks.
struct SeriesParams {
  std::uint64_t interval;  // ps, 0: off
  std::string stats;

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(interval, "interval", "0ps", Spec(Unit::Time),
            "Sample the statistics named by `stats` every this much simulated time, from 0 (0: no series). "
            "stats.json gets them under \"series\", the event trace as counter tracks; ./vmxsim plot DIR draws them.");
    v.param(stats, "stats",
            "hypervisor.frames.frames_free,hypervisor.frames.frames_used,hypervisor.ksm.pages_shared,"
            "hypervisor.ksm.pages_sharing,hypervisor.host_swap.pages_out,hypervisor.host_swap.pages_in,"
            "hypervisor.storage.read_bytes,hypervisor.storage.write_bytes,vm.*.resident_pages,"
            "vm.*.balloon.ballooned_pages,vm.*.ksm.shared_pages,vm.*.host_swap.swapped,vm.*.host_swap.major_faults,"
            "vm.*.kernel.frames_free,vm.*.kernel.memory.major_faults",
            Spec(),
            "Comma-separated statistic paths to sample; * stands for one path component (a VM's name). Counters "
            "and gauges only; a path nothing matches yet is sampled once it exists. vm.<vm>.resident_pages (the "
            "4 KiB pages of host memory backing the VM) is sampled from the hypervisor, it is no statistic of its own.");
  }
};

/// One host of a multi-host experiment (docs/migration.md, "Several hosts"):
/// a platform with its own hypervisor and VMs. Statistics under host.<name>.
struct HostParams {
  std::string name;
  PlatformParams platform;
  hv::HypervisorParams hypervisor;
  std::vector<VmParams> vms;
  template <class V>
  void visit(V& v) {
    v.param(name, "name", "host", Spec(Unit::Text), "Name, used in statistics paths (host.<name>...).");
    v.section(platform, "platform", "The host's machine (as the top-level platform of a single-host experiment).");
    v.section(hypervisor, "hypervisor", "The hypervisor running on the host.");
    v.list(vms, "vms", "The host's virtual machines (may be empty: a migration target).");
  }
};

/// The network peer of a multi-host experiment (docs/migration.md, "The
/// network peer's ping"): the peer of models/net_peer.h on a port of the
/// switch.
struct NetworkPeerParams {
  bool enabled;
  models::NetPeerParams peer;
  template <class V>
  void visit(V& v) {
    v.param(enabled, "enabled", "false", Spec(Unit::Flag),
            "Build a network peer on its own port of the switch (network.switch.enabled must be on).");
    peer.visit(v);  // the peer's parameters sit beside `enabled`
  }
};

/// What connects the hosts: one full-duplex Ethernet link between the NICs
/// of two hosts, or a switch with a link to each host's NIC and to the
/// network peer (the hosts' platform.nic.link and peer are then unused).
struct NetworkParams {
  models::EthLinkParams link;
  models::EthSwitchParams eth_switch;
  NetworkPeerParams peer;
  template <class V>
  void visit(V& v) {
    v.section(link, "link",
              "The Ethernet link between the two hosts' NICs; with the switch, each port's link (NIC or peer to "
              "the switch).");
    v.section(eth_switch, "switch", "An Ethernet switch joining the hosts (docs/migration.md, \"A switch\").");
    v.section(peer, "peer", "The network peer on the switch (docs/migration.md, \"The network peer's ping\").");
  }
};

/// One live migration (docs/migration.md), started at a set time.
/// A condition that starts a migration (migrations[].when): checked by the
/// experiment every `every` from the migration's `at` on.
struct MigrationWhenParams {
  std::string stat;
  double at_least;
  std::uint64_t every;  // ps
  template <class V>
  void visit(V& v) {
    v.param(stat, "stat", "", Spec(Unit::Text),
            "Start the migration once this statistic (a counter or gauge by its full path, e.g. "
            "host.a.vm.web.workload0.operations) reaches at_least, checked every `every` from `at` on (the "
            "migration's `at` is then the earliest start). Empty: start at `at`.");
    v.param(at_least, "at_least", "1.0", Spec(Unit::Ratio), "The value the statistic must reach.");
    v.param(every, "every", "100us", Spec(Unit::Time).at_least(1e6),
            "How often the condition is checked, in simulated time (assumption: a management agent polling a "
            "guest or host metric; 100 us keeps the start within a tenth of a millisecond of the condition).");
  }
};

struct MigrationParams {
  std::string vm, from, to;
  std::uint64_t at;  // ps
  std::uint64_t core;
  std::string tracking;
  std::uint64_t max_bandwidth;   // bytes per second
  std::uint64_t downtime_limit;  // ps
  std::uint64_t max_rounds;
  MigrationWhenParams when;
  // Auto-converge and post-copy (hypervisor/postcopy.cc).
  bool auto_converge;
  std::uint64_t throttle_initial, throttle_increment, throttle_max, throttle_trigger;  // percent
  std::string mode;
  std::uint64_t postcopy_after;
  std::uint64_t postcopy_bandwidth;  // bytes per second
  bool vf_handshake;
  bool announce;
  std::uint64_t announce_rounds;
  std::uint64_t announce_initial, announce_step, announce_max;  // ps
  template <class V>
  void visit(V& v) {
    v.param(vm, "vm", "", Spec(Unit::Text), "The VM to move (a VM of host `from`).");
    v.param(from, "from", "", Spec(Unit::Text), "The source host's name.");
    v.param(to, "to", "", Spec(Unit::Text), "The destination host's name.");
    v.param(at, "at", "1ms", Spec(Unit::Time).at_least(1), "When the source's migration thread starts.");
    v.param(core, "core", "0", Spec(),
            "The source core the migration thread runs on (its work takes that core from the vCPUs there).");
    v.param(tracking, "tracking", "pml", Spec().one_of({"write_protect", "dirty_bits", "pml"}),
            "Dirty tracking during pre-copy (docs/memory.md, \"Dirty tracking\"): write_protect (EPT write "
            "protection, an exit per page and round), dirty_bits (EPT dirty flags scanned and cleared) or pml "
            "(page-modification logging, as KVM where the processor has it). dirty_bits and pml need the source "
            "hypervisor's ept_ad.");
    v.param(max_bandwidth, "max_bandwidth", "128MiB", Spec(Unit::Bytes),
            "Bytes per second the migration stream may use (QEMU's max-bandwidth, default MAX_THROTTLE = 128 MiB/s "
            "in migration/options.c); 0: as fast as the PF and link allow.");
    v.param(downtime_limit, "downtime_limit", "300ms", Spec(Unit::Time).at_least(1),
            "Switch over to stop-and-copy once what remains dirty fits in the measured bandwidth times this "
            "(QEMU's downtime-limit, default 300 ms).");
    v.param(max_rounds, "max_rounds", "30", Spec().at_least(1),
            "Pre-copy rounds after which the migration switches over whatever remains (assumption; QEMU has no "
            "such cap, libvirt-style policies add one).");
    v.section(when, "when", "A condition that starts the migration (docs/migration.md, \"Triggers\").");
    v.param(auto_converge, "auto_converge", "false", Spec(Unit::Flag),
            "Throttle the vCPUs when pre-copy rounds do not shrink (QEMU's auto-converge capability, off by "
            "default): after every second round whose dirtied bytes exceed throttle_trigger percent of the bytes "
            "it sent, the throttle starts at throttle_initial and grows by throttle_increment up to throttle_max.");
    v.param(throttle_initial, "throttle_initial", "20", Spec().at_least(1).at_most(99),
            "Auto-converge: the first throttle, percent of each vCPU's time spent asleep (QEMU's "
            "cpu-throttle-initial, default 20, migration/options.c).");
    v.param(throttle_increment, "throttle_increment", "10", Spec().at_least(1).at_most(99),
            "Auto-converge: the throttle's step (QEMU's cpu-throttle-increment, default 10).");
    v.param(throttle_max, "throttle_max", "99", Spec().at_least(1).at_most(99),
            "Auto-converge: the highest throttle (QEMU's max-cpu-throttle, default 99).");
    v.param(throttle_trigger, "throttle_trigger", "50", Spec().at_least(1).at_most(100),
            "Auto-converge: a round counts as not shrinking when the bytes dirtied during it exceed this percent "
            "of the bytes it sent (QEMU's throttle-trigger-threshold, default 50).");
    v.param(mode, "mode", "precopy", Spec().one_of({"precopy", "postcopy"}),
            "precopy: iterative pre-copy, then stop-and-copy; postcopy: after postcopy_after pre-copy rounds the "
            "VM resumes at the destination with only its vCPU state, and the pages it lacks are fetched on its "
            "EPT violations while the source pushes the rest (QEMU's postcopy-ram).");
    v.param(postcopy_after, "postcopy_after", "1", Spec(),
            "With mode postcopy: pre-copy rounds before switching to post-copy (as QEMU's migrate-start-postcopy "
            "issued after that many passes; assumption: after the first, which sends every page). 0: post-copy "
            "at once, every page travels after the VM resumes. If a round converges by the downtime rule first, "
            "the migration ends as pre-copy.");
    v.param(postcopy_bandwidth, "postcopy_bandwidth", "0", Spec(Unit::Bytes),
            "With mode postcopy: bytes per second of the source's background push (QEMU's "
            "max-postcopy-bandwidth, default 0: unlimited); pages a fault requests are sent at once.");
    v.param(vf_handshake, "vf_handshake", "true", Spec(Unit::Flag),
            "A VM with an SR-IOV VF: move the VF through VFIO migration v2's states (PRE_COPY, the quiesce state "
            "PRE_COPY_P2P, STOP_COPY; RESUMING on the destination) and track its DMA by the IOMMU's second-level "
            "dirty flags (needs hypervisor.iommu_mode scalable on the source). false: read its registers while it "
            "runs and track no DMA, as for a device without migration support (docs/migration.md, S17).");
    v.param(announce, "announce", "false", Spec(Unit::Flag),
            "After the VM resumes, the destination's hypervisor sends self-announce frames (a RARP broadcast from "
            "the VF's MAC, as QEMU's qemu_announce_self, net/announce.c) through its PF, so that a switch learns "
            "where the VM's MAC now is (docs/migration.md, \"Self-announce\"). QEMU announces by default; off "
            "here so that earlier configurations keep their statistics.");
    v.param(announce_rounds, "announce_rounds", "5", Spec().at_least(1).at_most(1000),
            "Self-announce: frames sent per VF (QEMU's announce-rounds, default 5, migration/options.c).");
    v.param(announce_initial, "announce_initial", "50ms", Spec(Unit::Time).at_least(1),
            "Self-announce: the delay after the first frame (the first goes at the resumption; QEMU's "
            "announce-initial, default 50 ms).");
    v.param(announce_step, "announce_step", "100ms", Spec(Unit::Time),
            "Self-announce: each later delay grows by this (QEMU's announce-step, default 100 ms).");
    v.param(announce_max, "announce_max", "550ms", Spec(Unit::Time).at_least(1),
            "Self-announce: the longest delay between two frames (QEMU's announce-max, default 550 ms).");
  }
};

struct ExperimentParams {
  std::uint64_t seed;
  std::uint64_t duration;  // ps
  std::uint64_t warmup;    // ps
  std::uint64_t fast_forward;  // ps
  bool stop_when_done;
  std::uint64_t host_memory_limit;  // bytes, 0: automatic
  PlatformParams platform;
  hv::HypervisorParams hypervisor;
  std::vector<VmParams> vms;
  trace::EventTraceParams event_trace;
  SeriesParams series;
  std::vector<HostParams> hosts;
  NetworkParams network;
  std::vector<MigrationParams> migrations;

  template <class V>
  void visit(V& v) {
    v.param(seed, "seed", "1", Spec(), "Seed of every random choice (workloads' random streams).");
    v.param(duration, "duration", "100ms", Spec(Unit::Time).at_least(1e3), "Simulated time to run at most.");
    v.param(warmup, "warmup", "0ps", Spec(Unit::Time),
            "Statistics are reset at this simulated time (0: never), so they cover [warmup, end).");
    v.param(fast_forward, "fast_forward", "0ps", Spec(Unit::Time),
            "Run functionally until this simulated time, then switch every core to full timing and reset the "
            "statistics (docs/model.md, \"Fast-forward\"). Functional: memory contents, translation, faults, "
            "exits and interrupts as always, but memory accesses and page walks bypass the caches and cost "
            "nothing beyond the CPI. 0: off (full timing throughout).");
    v.param(stop_when_done, "stop_when_done", "true", Spec(Unit::Flag),
            "End the run early once every workload with a finite amount of work has finished.");
    v.param(host_memory_limit, "host_memory_limit", "0B", Spec(Unit::Bytes),
            "Host memory the simulated memory's contents may take (frames are allocated on first touch); a run "
            "that would exceed it stops with an error instead of being killed by the host. 0: 90% of the host's "
            "available memory when the run starts (MemAvailable in /proc/meminfo). Never changes a statistic.");
    v.section(platform, "platform", "The machine.");
    v.section(hypervisor, "hypervisor", "The hypervisor running on the machine.");
    v.list(vms, "vms", "Virtual machines (at least one, unless `hosts` describes the machines).");
    v.section(event_trace, "event_trace",
              "The optional timeline of events (docs/event_trace.md), written as events.json.");
    v.section(series, "series", "Statistics sampled over time (docs/memory.md, \"Memory over time\").");
    v.list(hosts, "hosts",
           "Several hosts in one simulation (docs/migration.md): two linked by `network.link`, or two or more on "
           "`network.switch`, each with its platform, hypervisor and VMs; the top-level vms are then empty (platform and hypervisor unused). "
           "Empty: one host described by the top-level keys.");
    v.section(network, "network", "The link or switch between the hosts, and the network peer (with `hosts`).");
    v.list(migrations, "migrations", "Live migrations between the hosts (docs/migration.md).");
  }
};

/// Parses a vms[].pin value into core indices, each below `cores`. Returns
/// what was expected on error (empty on success).
std::string parse_core_list(const std::string& text, std::uint64_t cores, std::vector<unsigned>& out);

/// Reads and validates a document, including the rules that span several
/// values (unique VM names, memory that fits). Throws cfg::ConfigError.
ExperimentParams load(const cfg::Document& doc);

/// The embedded default experiment (configs/quickstart.yaml).
const std::string& quickstart_yaml();

/// Everything a run produced that a report or a test needs.
struct RunResult {
  std::string stats_json;
  std::string summary;  // human-readable, per VM and vCPU
  std::string resolved_yaml;
  std::uint64_t simulated_ps = 0;
  bool finished = false;  // every finite workload completed
  std::vector<std::string> vm_notes;  // crashes, panics, killed threads
  std::string events_json;            // the event trace; empty when it is off
  std::string units_json;             // every statistic's kind, unit and description (units.json)
};

/// A simulation that can be advanced in steps: built from an experiment,
/// run for a while, its statistics read or reset, run on. SystemC elaborates
/// one design per process, so a process holds at most one Session (the CLI
/// and the Python module start a process per simulation).
class Session {
 public:
  /// Throws cpu::SimulationError if a Session already existed in this process.
  Session(const ExperimentParams& params, std::string resolved_yaml);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  /// Simulates until time `ps`, or until every finite workload is done when
  /// stop_when_done is set, whichever comes first. With fast_forward set, a
  /// run past that time switches to full timing there and resets the
  /// statistics (docs/model.md, "Fast-forward"). Throws
  /// cpu::SimulationError if the simulator or its hypervisor fails.
  void run_until(std::uint64_t ps);
  void run_for(std::uint64_t ps) { run_until(now_ps() + ps); }
  /// Resets every statistic (a phase or warm-up boundary).
  void reset_stats();
  /// Starts a live migration now, between steps (docs/migration.md,
  /// "Triggers"): `mp` as validated by load() among the run's migrations
  /// (its `at` and `when` are not used). The destination sets it up and the
  /// source's migration thread starts within the next microseconds.
  void migrate(const MigrationParams& mp);

  std::uint64_t now_ps() const;
  /// Every finite workload has completed.
  bool finished() const;
  std::string stats_json();
  /// Every statistic's kind, unit and description, by path (units.json).
  std::string units_json() const;
  std::string summary();
  /// Samples the series statistics now (series.interval; run_until calls
  /// it at every sample time).
  void sample_series();
  /// The event trace so far as Chrome trace-event JSON; empty when
  /// event_trace.enabled is off.
  std::string events_json() const;
  /// Crashes, panics, killed threads and debug-console lines so far.
  std::vector<std::string> notes() const;
  const std::string& resolved_yaml() const { return m_resolved; }
  const ExperimentParams& params() const { return m_params; }
  const stats::Group& stats() const;

 private:
  struct System;
  void update_gauges();
  /// Simulates until `ps`, sampling the series on the way (run_until
  /// without the fast-forward switch).
  void advance(std::uint64_t ps);
  void advance_to(std::uint64_t ps);
  void switch_to_detailed();
  ExperimentParams m_params;
  std::string m_resolved;
  System* m_sys;  // deliberately never destroyed: see the destructor
};

/// Called while a run advances: simulated time reached and the run's end
/// (its duration), both in picoseconds.
using Progress = std::function<void(std::uint64_t now_ps, std::uint64_t end_ps)>;

/// Runs a whole experiment: warm-up reset, then to `duration` (or done).
/// With `progress`, the run advances in steps of a 200th of its duration
/// and reports after each (stepping does not change any statistic).
RunResult run(const ExperimentParams& params, const std::string& resolved_yaml, const Progress& progress = {});

/// The statistics reference (vmxsim stats, docs/stats.md): every statistic
/// of `stats` as a Markdown table, instance names generalized (cpu0 -> cpuN,
/// a VM's name -> <vm>, an exit reason -> <REASON>), each path once.
std::string stats_reference_markdown(const std::vector<stats::StatInfo>& stats);
/// The generalized path of one statistic (as the reference lists it).
std::string generalize_stat_path(const std::string& path);

/// Human-readable summary of a finished run (per VM and vCPU).
std::string summary(const stats::Group& root, const ExperimentParams& params);

}  // namespace vmx::experiment
