// The readable summary printed after a run.
#include <fmt/format.h>

#include "experiment/experiment.h"

namespace vmx::experiment {

namespace {
std::uint64_t counter(const stats::Group& g, const std::string& path) {
  if (auto* s = dynamic_cast<const stats::Counter*>(g.find(path))) return s->value();
  return 0;
}
double ratio(const stats::Group& g, const std::string& path) {
  if (auto* s = dynamic_cast<const stats::Ratio*>(g.find(path))) return s->value();
  return 0;
}
const stats::Gauge* gauge(const stats::Group& g, const std::string& path) {
  return dynamic_cast<const stats::Gauge*>(g.find(path));
}

// The NIC's functions that moved anything, the peer, and the IOMMU.
std::string network_summary(const stats::Group& root, const ExperimentParams& params, double seconds) {
  const stats::Group* nic = root.find_group("system.nic");
  if (!nic) return {};
  std::string out = fmt::format("\nNIC ({} Gbit/s link)\n", params.platform.nic.link.bandwidth_gbps);
  for (const stats::Group* f : nic->children()) {
    const std::uint64_t tx = counter(*f, "tx_packets"), rx = counter(*f, "rx_packets");
    const std::uint64_t lost = counter(*f, "rx_drops") + counter(*f, "rx_discards") + counter(*f, "rx_oversize");
    if (!tx && !rx && !lost && !counter(*f, "dma_faults")) continue;
    out += fmt::format("  {}: tx {} frames ({:.2f} Gbit/s over the run), rx {} frames ({:.2f} Gbit/s), rx "
                       "dropped {}, DMA faults {}, interrupts {}\n",
                       f->name(), tx, seconds > 0 ? counter(*f, "tx_bytes") * 8 / seconds / 1e9 : 0.0, rx,
                       seconds > 0 ? counter(*f, "rx_bytes") * 8 / seconds / 1e9 : 0.0, lost,
                       counter(*f, "dma_faults"), counter(*f, "interrupts"));
  }
  if (const std::uint64_t fifo = counter(*nic, "rx_fifo_drops")) out += fmt::format("  receive FIFO overflows: {} frames\n", fifo);
  if (const stats::Group* peer = root.find_group("system.peer"))
    out += fmt::format("  peer: received {} frames ({} with sequence gaps), sent {}\n", counter(*peer, "rx_packets"),
                       counter(*peer, "rx_sequence_gaps"), counter(*peer, "tx_packets"));
  if (const stats::Group* mmu = root.find_group("system.iommu"); mmu && counter(*mmu, "translations")) {
    const stats::Group* rc = root.find_group("system.root_complex");
    const double mib = rc ? static_cast<double>(counter(*rc, "dma_read_bytes") + counter(*rc, "dma_write_bytes")) /
                                (1 << 20)
                          : 0;
    out += fmt::format("  IOMMU: {} translations, {} IOTLB misses ({:.1f} per MiB of DMA), {} faults\n",
                       counter(*mmu, "translations"), counter(*mmu, "iotlb.misses"),
                       mib > 0 ? counter(*mmu, "iotlb.misses") / mib : 0.0, counter(*mmu, "faults"));
  }
  return out;
}
}  // namespace

namespace {
/// The VMs of one host, their statistics under `prefix` ("" or "host.<name>.").
std::string vm_summary(const stats::Group& root, const std::string& prefix, const std::vector<VmParams>& vms,
                       const PlatformParams& platform) {
  std::string out;
  for (const auto& vm : vms) {
    const stats::Group* vg = root.find_group(prefix + "vm." + vm.name);
    if (!vg) continue;
    out += fmt::format("\nVM {} ({} vCPUs, {} memory)\n", vm.name, vm.vcpus, cfg::format_bytes(vm.memory));
    for (unsigned i = 0; i < vm.vcpus; ++i) {
      const stats::Group* v = vg->find_group(fmt::format("vcpu{}", i));
      if (!v) continue;
      std::uint64_t instr = counter(*v, "instructions"), cycles = counter(*v, "guest_cycles");
      out += fmt::format("  vcpu{}: {} instructions, {} guest cycles (IPC {:.2f}), {} VM exits\n", i, instr, cycles,
                         cycles ? static_cast<double>(instr) / static_cast<double>(cycles) : 0.0,
                         counter(*v, "exits"));
      if (const stats::Group* reasons = v->find_group("exit_reasons")) {
        for (const stats::Group* r : reasons->children()) {
          auto* h = dynamic_cast<const stats::Histogram*>(r->find("cycles"));
          if (!h || !h->count()) continue;  // none since the statistics were last reset
          out += fmt::format("    {:<20} {:>10} exits, mean {:>8.1f} cycles exit-to-reentry (p99 {})\n", r->name(),
                             h->count(), h->mean(), h->percentile(99));
        }
      }
      std::uint64_t tg = counter(*v, "time.guest_cycles"), th = counter(*v, "time.hypervisor_cycles"),
                    ts = counter(*v, "time.steal_cycles"), ti = counter(*v, "time.idle_cycles");
      double total = static_cast<double>(tg + th + ts + ti);
      if (total > 0)
        out += fmt::format("    time: guest {:.1f}%, hypervisor {:.1f}%, steal {:.1f}%, idle {:.1f}% of {:.3f} ms\n",
                           100.0 * tg / total, 100.0 * th / total, 100.0 * ts / total, 100.0 * ti / total,
                           total / static_cast<double>(platform.frequency) * 1e3);
      std::uint64_t walks = counter(*v, "walks");
      out += fmt::format("    page walks: {}, mean {:.1f} references and {:.1f} cycles per walk\n", walks,
                         ratio(*v, "mean_walk_refs"), ratio(*v, "mean_walk_cycles"));
    }
    for (std::size_t w = 0; w < vm.workloads.size(); ++w) {
      const stats::Group* wg = vg->find_group(fmt::format("workload{}", w));
      if (!wg) continue;
      out += fmt::format("  workload{} ({}, {} threads): {} operations, {} threads done", w, vm.workloads[w].type,
                         vm.workloads[w].threads, counter(*wg, "operations"), counter(*wg, "threads_done"));
      if (const stats::Gauge* g = gauge(*wg, "throughput_gbps"); g && g->value() > 0)
        out += fmt::format(", {:.2f} Gbit/s", g->value());
      if (auto* h = dynamic_cast<const stats::Histogram*>(wg->find("rtt_ns")); h && h->count())
        out += fmt::format(", round trip p50 {} ns, p99 {} ns", h->percentile(50), h->percentile(99));
      out += "\n";
    }
  }
  return out;
}
}  // namespace

std::string summary(const stats::Group& root, const ExperimentParams& params) {
  std::string out;
  double seconds = 0;
  if (auto* g = dynamic_cast<const stats::Gauge*>(root.find("sim.seconds"))) seconds = g->value();
  out += fmt::format("simulated {:.6f} s on {} cores{} at {:.2f} GHz\n", seconds, params.platform.cores,
                     params.platform.smt > 1 ? fmt::format(" x {} threads", params.platform.smt) : std::string(),
                     static_cast<double>(params.platform.frequency) / 1e9);
  if (params.hosts.empty()) {
    out += vm_summary(root, "", params.vms, params.platform);
  } else {
    for (const HostParams& h : params.hosts) {
      out += fmt::format("\nhost {}\n", h.name);
      std::vector<VmParams> vms = h.vms;
      for (const MigrationParams& m : params.migrations)  // VMs that arrive by migration
        if (m.to == h.name)
          for (const HostParams& from : params.hosts)
            for (const VmParams& v : from.vms)
              if (from.name == m.from && v.name == m.vm) vms.push_back(v);
      out += vm_summary(root, "host." + h.name + ".", vms, h.platform);
    }
  }
  out += network_summary(root, params, seconds);
  return out;
}

}  // namespace vmx::experiment
