#include "experiment/experiment.h"

#include <set>
#include <type_traits>

#include <fmt/format.h>

#include "workloads/trace_file.h"

namespace vmx::experiment {

extern const char kQuickstartYaml[];
extern const std::size_t kQuickstartYamlSize;

const std::string& quickstart_yaml() {
  static const std::string text(kQuickstartYaml, kQuickstartYamlSize);
  return text;
}

std::string parse_core_list(const std::string& text, std::uint64_t cores, std::vector<unsigned>& out) {
  out.clear();
  if (text.empty()) return {};  // unpinned
  std::size_t i = 0;
  const std::string what =
      fmt::format("comma-separated core indices below platform.cores x platform.smt ({}), such as \"1\" or \"0,2\"",
                  cores);
  while (i <= text.size()) {
    std::size_t end = text.find(',', i);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(i, end - i);
    const auto b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    item = b == std::string::npos ? std::string() : item.substr(b, e - b + 1);
    if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos || item.size() > 6)
      return what;
    const unsigned long core = std::stoul(item);
    if (core >= cores) return what;
    out.push_back(static_cast<unsigned>(core));
    i = end + 1;
  }
  return {};
}

bool parse_mac(const std::string& text, std::uint64_t& mac) {
  mac = 0;
  if (text.size() != 17) return false;
  for (unsigned i = 0; i < 6; ++i) {
    if (i && text[3 * i - 1] != ':') return false;
    unsigned byte = 0;
    for (unsigned k = 0; k < 2; ++k) {
      const char ch = text[3 * i + k];
      unsigned d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                   : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : 16;
      if (d > 15) return false;
      byte = byte * 16 + d;
    }
    mac |= std::uint64_t{byte} << (8 * i);
  }
  return true;
}

namespace {
// "path: expected <what> (got <found>)", at the node's line.
cfg::ConfigError error_at(const cfg::Document& doc, const std::string& path, const std::string& what,
                          const std::string& found) {
  YAML::Node n = doc.find(path);
  return doc.error(n ? n.Mark() : YAML::Mark::null_mark(), path, "expected " + what, found);
}
template <class VP>
void check_vms(const cfg::Document& doc, const ExperimentParams& p, const PlatformParams& pp, const std::vector<VP>& vms,
               const std::string& prefix, const hv::HypervisorParams& hp, std::uint64_t pin_cores) {
  // VMs of a nested hypervisor have `vms[i].hypervisor.` in their prefix;
  // a host's VMs have "" or "hosts[i].".
  const bool nested = prefix.find(".hypervisor.") != std::string::npos;
  std::set<std::string> names;
  const std::uint64_t ept_page = hp.ept_page_size;
  std::uint64_t encrypted_vms = 0;
  for (std::size_t i = 0; i < vms.size(); ++i) {
    const auto& vm = vms[i];
    std::string at = fmt::format("{}vms[{}]", prefix, i);
    if (vm.name.empty() || vm.name.find_first_of(". \t/") != std::string::npos)
      throw error_at(doc, at + ".name", "a name without dots, spaces or slashes", vm.name);
    if (!names.insert(vm.name).second)
      throw error_at(doc, at + ".name", "a name no other VM has", vm.name);
    if (vm.memory % ept_page)
      throw error_at(doc, at + ".memory",
                     "a multiple of hypervisor.ept_page_size (" + cfg::format_bytes(ept_page) + ")",
                     cfg::format_bytes(vm.memory));
    if (!vm.pin.empty()) {
      // vms[i].pin: core indices within the platform.
      std::vector<unsigned> cores;
      std::string err = parse_core_list(vm.pin, pin_cores, cores);
      if (!err.empty()) throw error_at(doc, at + ".pin", err, vm.pin);
    }
    if (vm.cache_ways || vm.mba_delay) {
      // Cache and bandwidth allocation (docs/protection.md): the machine's
      // hypervisor gives the VM a class of service of its own.
      const auto& rdt = p.platform.rdt;
      const std::string key = at + (vm.cache_ways ? ".cache_ways" : ".mba_delay");
      const std::string found = vm.cache_ways ? fmt::format("{:#x}", vm.cache_ways) : std::to_string(vm.mba_delay);
      if (!prefix.empty()) throw error_at(doc, key, "0 in a nested VM (only the machine's hypervisor uses RDT)", found);
      if (!rdt.enabled) throw error_at(doc, key, "0 unless platform.rdt.enabled is true", found);
      if (vm.cache_ways &&
          (!models::Rdt::contiguous(vm.cache_ways) || p.platform.llc.ways > 32 ||
           (vm.cache_ways >> p.platform.llc.ways) != 0))
        throw error_at(doc, at + ".cache_ways",
                       fmt::format("a non-zero contiguous run of ones within platform.llc.ways ({}) bits",
                                   p.platform.llc.ways),
                       found);
      if (vm.mba_delay > rdt.mba_max)
        throw error_at(doc, at + ".mba_delay", fmt::format("at most platform.rdt.mba_max ({})", rdt.mba_max),
                       std::to_string(vm.mba_delay));
      unsigned used = 1;  // class 0 is the hypervisor's
      for (std::size_t j = 0; j <= i; ++j) used += (vms[j].cache_ways || vms[j].mba_delay) ? 1 : 0;
      if (used > rdt.classes)
        throw error_at(doc, key, fmt::format("at most {} VMs with cache_ways or mba_delay (platform.rdt.classes "
                                             "less the hypervisor's class 0)", rdt.classes - 1),
                       found);
    }
    if (hp.scheduler != "realtime" && vm.priority != 0)
      throw error_at(doc, at + ".priority",
                     "0 unless hypervisor.scheduler is realtime (the other schedulers have no priorities)",
                     std::to_string(vm.priority));
    if (hp.scheduler != "edf" && (vm.edf_runtime != 0 || vm.edf_period != 0))
      throw error_at(doc, at + (vm.edf_runtime != 0 ? ".edf_runtime" : ".edf_period"),
                     "0 unless hypervisor.scheduler is edf (only it has reservations)",
                     cfg::format_time_ps(vm.edf_runtime != 0 ? vm.edf_runtime : vm.edf_period));
    if (vm.snapshot.at != 0 || vm.snapshot.restore_at != 0) {
      // docs/memory.md, "Snapshots": EPT write protection, no device DMA.
      if (vm.snapshot.at == 0)
        throw error_at(doc, at + ".snapshot.at", "a time for the snapshot (restore_at needs one)", "0ps");
      if (vm.snapshot.at >= p.duration)
        throw error_at(doc, at + ".snapshot.at", "a time before duration (" + cfg::format_time_ps(p.duration) + ")",
                       cfg::format_time_ps(vm.snapshot.at));
      if (vm.snapshot.restore_at != 0 && vm.snapshot.restore_at <= vm.snapshot.at)
        throw error_at(doc, at + ".snapshot.restore_at",
                       "0 or a time after snapshot.at (" + cfg::format_time_ps(vm.snapshot.at) + ")",
                       cfg::format_time_ps(vm.snapshot.restore_at));
      if (vm.paging != "ept")
        throw error_at(doc, at + ".snapshot.at", "a VM with paging ept (a snapshot write-protects its EPT)",
                       "paging " + vm.paging);
      if (vm.nic.type != "none")
        throw error_at(doc, at + ".snapshot.at",
                       "a VM without a network device (device DMA is not tracked by the snapshot)",
                       "nic.type " + vm.nic.type);
    }
    if (vm.dirty_log.mode != "none") {
      // Dirty logging on its own (docs/memory.md, "Dirty tracking").
      const std::string key = at + ".dirty_log.mode";
      if (vm.paging != "ept" || vm.nic.type != "none" || vm.snapshot.at != 0 || vm.hypervisor.enabled())
        throw error_at(doc, key,
                       "none for a VM with shadow paging, a network device, a snapshot or a nested hypervisor "
                       "(dirty logging tracks the VM's own writes through its EPT)",
                       vm.dirty_log.mode);
      if (vm.dirty_log.mode != "write_protect" && !hp.ept_ad)
        throw error_at(doc, key, "write_protect unless the VM's hypervisor has ept_ad on", vm.dirty_log.mode);
    }
    if ((vm.edf_runtime == 0) != (vm.edf_period == 0))
      throw error_at(doc, at + ".edf_period", "a period together with edf_runtime (both or neither)",
                     cfg::format_time_ps(vm.edf_period));
    if (vm.edf_runtime > vm.edf_period)
      throw error_at(doc, at + ".edf_runtime", "at most edf_period (" + cfg::format_time_ps(vm.edf_period) + ")",
                     cfg::format_time_ps(vm.edf_runtime));
    if (hp.scheduler != "proportional") {
      if (vm.weight != 256)
        throw error_at(doc, at + ".weight",
                       "the default 256 unless hypervisor.scheduler is proportional (round_robin ignores weights)",
                       std::to_string(vm.weight));
      if (vm.cap != 0)
        throw error_at(doc, at + ".cap",
                       "0 unless hypervisor.scheduler is proportional (round_robin does not cap)",
                       std::to_string(vm.cap));
    }
    if (vm.encrypted) {
      // Only the virtio-net driver bounces its buffers through shared pages
      // (Linux's swiotlb); the ring NIC drivers, the swap disk and the
      // balloon would hand the device private pages.
      const char* need = nullptr;
      std::string got = "true";
      if (!p.platform.memory_encryption.enabled) need = "false unless platform.memory_encryption.enabled is true";
      else if (vm.paging != "ept") need = "false unless paging is ept (the C-bit is stripped before EPT)", got = "paging " + vm.paging;
      else if (vm.nic.type != "none" && vm.nic.type != "virtio")
        need = "false for a VM with a network device other than virtio (its DMA buffers would be private)",
        got = "nic.type " + vm.nic.type;
      else if (vm.swap || vm.balloon.enabled) need = "false for a VM with a swap disk or a balloon (virtio devices)";
      else if (vm.hypervisor.enabled() || !prefix.empty()) need = "false for a VM running or run by a nested hypervisor";
      if (need) throw error_at(doc, at + ".encrypted", need, got);
      // The C-bit must lie above every guest-physical address the VM uses
      // (its memory and the device windows below 4 GiB).
      const unsigned c_bit = p.platform.memory_encryption.c_bit;
      if (c_bit < 32 || vm.memory > (std::uint64_t{1} << c_bit))
        throw error_at(doc, "platform.memory_encryption.c_bit",
                       fmt::format("a C-bit above the guest-physical addresses of the encrypted VM {} (at least 32, "
                                   "and 2^c_bit at least its memory)", vm.name),
                       std::to_string(c_bit));
      if (++encrypted_vms > p.platform.memory_encryption.key_ids)
        throw error_at(doc, at + ".encrypted",
                       fmt::format("at most platform.memory_encryption.key_ids ({}) encrypted VMs",
                                   p.platform.memory_encryption.key_ids),
                       fmt::format("encrypted VM number {}", encrypted_vms));
    }
    if (vm.kernel.sched.pv && !vm.kernel.pv_steal)
      throw error_at(doc, at + ".kernel.sched.pv",
                     "false unless kernel.pv_steal is on (the pv scheduler reads the steal-time records)", "true");
    if (vm.nic.type != "none" && !pp.nic.enabled)
      throw error_at(doc, at + ".nic.type", "none unless platform.nic.enabled is true (there is no NIC)",
                     vm.nic.type);
    if (vm.nic.type == "vf") {
      if (vm.nic.vf >= pp.nic.device.vfs)
        throw error_at(doc, at + ".nic.vf",
                       fmt::format("a VF index below platform.nic.vfs ({})", pp.nic.device.vfs),
                       std::to_string(vm.nic.vf));
      for (std::size_t j = 0; j < i; ++j)
        if (vms[j].nic.type == "vf" && vms[j].nic.vf == vm.nic.vf)
          throw error_at(doc, at + ".nic.vf", fmt::format("a VF no other VM has (vms[{}] has it)", j),
                         std::to_string(vm.nic.vf));
      if (vm.paging != "ept")
        throw error_at(doc, at + ".paging", "ept for a VM with a passed-through VF (its IOMMU domain is the EPT)",
                       vm.paging);
    }
    if (vm.nic.type == "emulated" && vm.nic.emulated.access == "poll" && hp.ept_page_size != (4ull << 10))
      throw error_at(doc, at + ".nic.access",
                     "trap unless hypervisor.ept_page_size is 4KiB (poll maps one register page into the guest)",
                     vm.nic.emulated.access);
    std::uint64_t mac = 0;
    if (!vm.nic.mac.empty() && !parse_mac(vm.nic.mac, mac))
      throw error_at(doc, at + ".nic.mac", "six hex bytes separated by colons, such as 02:00:00:00:01:00",
                     vm.nic.mac);
    if (vm.memory > guest::kNetWindowGpa && vm.nic.type != "none")
      throw error_at(doc, at + ".memory",
                     fmt::format("at most {:#x} for a VM with a network device (its registers sit there)",
                                 guest::kNetWindowGpa),
                     cfg::format_bytes(vm.memory));
    for (std::size_t w = 0; w < vm.workloads.size(); ++w) {
      std::uint64_t ps = vm.workloads[w].page_size;
      if (ps != (4ull << 10) && ps != (2ull << 20) && ps != (1ull << 30))
        throw error_at(doc, fmt::format("{}.workloads[{}].page_size", at, w), "4KiB, 2MiB or 1GiB",
                       cfg::format_bytes(ps));
      if (vm.workloads[w].type == "page_content") {
        const auto& pc = vm.workloads[w].page_content;
        if (pc.shared_fraction + pc.zero_fraction > 1.0)
          throw error_at(doc, fmt::format("{}.workloads[{}].page_content.zero_fraction", at, w),
                         fmt::format("at most 1 - shared_fraction ({})", 1.0 - pc.shared_fraction),
                         fmt::format("{}", pc.zero_fraction));
        if (pc.working_set > pc.pages)
          throw error_at(doc, fmt::format("{}.workloads[{}].page_content.working_set", at, w),
                         fmt::format("at most pages ({})", pc.pages), std::to_string(pc.working_set));
      }
      if (vm.workloads[w].type == "trace") {
        std::string key = fmt::format("{}.workloads[{}].file", at, w);
        if (vm.workloads[w].trace.file.empty()) throw error_at(doc, key, "the path of a trace file", "nothing");
        try {
          workloads::TraceFile::load(vm.workloads[w].trace.file);
        } catch (const workloads::TraceError& e) {
          throw error_at(doc, key, "a readable vmxsim trace", e.what());
        }
      }
    }
      if (nested && vm.nic.type != "none")
      throw error_at(doc, at + ".nic.type", "none for a VM of a nested hypervisor (devices are not modelled there)",
                     vm.nic.type);
    if constexpr (!std::is_same_v<std::decay_t<decltype(vm.hypervisor)>, GuestHypervisorParams<0>>) {
      if (vm.hypervisor.enabled()) {
        // Nested virtualization (docs/nested.md): what L0 needs of itself
        // and what it offers the hypervisor in the VM.
        const hv::HypervisorParams& l1 = vm.hypervisor.params;
        if (hp.posted_interrupts || hp.migration || hp.slice_timer != "host")
          throw error_at(doc, !nested ? prefix + "hypervisor.posted_interrupts" : prefix + "posted_interrupts",
                         "posted_interrupts and migration off and slice_timer host under a VM that runs a hypervisor",
                         "otherwise");
        if (vm.paging != "ept" || vm.nic.type != "none")
          throw error_at(doc, at + ".paging", "ept and no network device for a VM that runs a hypervisor",
                         vm.paging + ", nic " + vm.nic.type);
        if (l1.migration || l1.slice_timer != "host" || l1.ept_levels != 4)
          throw error_at(doc, at + ".hypervisor",
                         "migration off, slice_timer host and ept_levels 4 (what the nested VMX of the hypervisor "
                         "below offers)",
                         "otherwise");
        if (!prefix.empty() && hp.nested_shadow_vmcs)
          throw error_at(doc, prefix + "nested_shadow_vmcs",
                         "false in a hypervisor whose VM runs a hypervisor (VMCS shadowing is not offered to a "
                         "nested hypervisor, docs/nested.md)",
                         "true");
        if (l1.reserved_memory >= vm.memory)
          throw error_at(doc, at + ".hypervisor.reserved_memory",
                         fmt::format("less than the VM's memory ({})", cfg::format_bytes(vm.memory)),
                         cfg::format_bytes(l1.reserved_memory));
        if (l1.ept_page_size != (4ull << 10) && l1.ept_page_size != (2ull << 20) && l1.ept_page_size != (1ull << 30))
          throw error_at(doc, at + ".hypervisor.ept_page_size", "4KiB, 2MiB or 1GiB", cfg::format_bytes(l1.ept_page_size));
        check_vms(doc, p, pp, vm.hypervisor.vms, at + ".hypervisor.", l1, vm.vcpus);
      }
    }
}
}

/// The rules of one host: its platform, its hypervisor and its VMs; paths
/// start with `prefix` ("" for the single host, "hosts[i]." otherwise).
void check_host(const cfg::Document& doc, const ExperimentParams& p, const PlatformParams& pp,
                const hv::HypervisorParams& hp, const std::vector<VmParams>& vms, const std::string& prefix) {
  const std::uint64_t ept_page = hp.ept_page_size;
  if (ept_page != (4ull << 10) && ept_page != (2ull << 20) && ept_page != (1ull << 30))
    throw error_at(doc, prefix + "hypervisor.ept_page_size", "4KiB, 2MiB or 1GiB", cfg::format_bytes(ept_page));
  if (pp.nic.enabled) {
    const auto& nic = pp.nic.device;
    if (nic.mmio_base % nic.mmio_stride)
      throw error_at(doc, prefix + "platform.nic.mmio_base",
                     fmt::format("a multiple of platform.nic.mmio_stride ({}): BARs are naturally aligned",
                                 cfg::format_bytes(nic.mmio_stride)),
                     fmt::format("{:#x}", nic.mmio_base));
    // Requester IDs (PCIe 5.0 9.3.3.10-11): VF i is PF + first_vf_offset +
    // i * vf_stride. Past 0xFFFF they would wrap onto the PF or another
    // function, and the IOMMU would give one requester two owners.
    const std::uint64_t pf_rid = (std::uint64_t(nic.bus) << 8) | (std::uint64_t(nic.device) << 3);
    if (nic.vfs > 0) {
      const std::uint64_t last = pf_rid + nic.first_vf_offset + std::uint64_t(nic.vfs - 1) * nic.vf_stride;
      if (last > 0xFFFF) {
        // Blame what the user set; the stride when both or neither were.
        const bool stride = doc.find(prefix + "platform.nic.vf_stride") || !doc.find(prefix + "platform.nic.first_vf_offset");
        throw error_at(doc, prefix + (stride ? "platform.nic.vf_stride" : "platform.nic.first_vf_offset"),
                       fmt::format("requester IDs within 16 bits: with platform.nic.first_vf_offset {} and "
                                   "platform.nic.vf_stride {}, VF {} of platform.nic.vfs {} would be {:#x} (PF {:02x}:{:02x}.0), "
                                   "which wraps onto other functions",
                                   nic.first_vf_offset, nic.vf_stride, nic.vfs - 1, nic.vfs, last, nic.bus,
                                   nic.device),
                       std::to_string(stride ? nic.vf_stride : nic.first_vf_offset));
      }
    }
    // The register windows: the PF's and one per VF, below MAXPHYADDR (52
    // bits) and clear of the local APIC / MSI region (0xFEC00000-0xFEFFFFFF).
    const unsigned __int128 end = static_cast<unsigned __int128>(nic.mmio_base) +
                                  static_cast<unsigned __int128>(nic.vfs + 1) * nic.mmio_stride;
    constexpr std::uint64_t kMaxPhys = 1ull << 52, kApicLo = 0xFEC00000, kApicHi = 0xFF000000;
    if (end > kMaxPhys)
      throw error_at(doc, prefix + "platform.nic.mmio_base",
                     fmt::format("register windows (platform.nic.vfs + 1 = {} of platform.nic.mmio_stride {}) that end "
                                 "below the 52-bit physical address width",
                                 nic.vfs + 1, cfg::format_bytes(nic.mmio_stride)),
                     fmt::format("{:#x}", nic.mmio_base));
    if (nic.mmio_base < kApicHi && end > kApicLo)
      throw error_at(doc, prefix + "platform.nic.mmio_base",
                     fmt::format("register windows clear of the APIC and MSI region {:#x}-{:#x} (they span "
                                 "{:#x}-{:#x})",
                                 kApicLo, kApicHi - 1, nic.mmio_base, static_cast<std::uint64_t>(end) - 1),
                     fmt::format("{:#x}", nic.mmio_base));
    if (nic.mmio_base < pp.memory) {
      // Blame what the user set: the memory if the window is where it always is.
      if (!doc.find(prefix + "platform.nic.mmio_base"))
        throw error_at(doc, prefix + "platform.memory",
                       fmt::format("at most {} with a NIC: its register window is at platform.nic.mmio_base "
                                   "({:#x}), and the platform has no memory hole (or move mmio_base above the "
                                   "memory)",
                                   cfg::format_bytes(pp.nic.device.mmio_base),
                                   pp.nic.device.mmio_base),
                       cfg::format_bytes(pp.memory));
      throw error_at(doc, prefix + "platform.nic.mmio_base",
                     fmt::format("an address above platform.memory ({}), where the NIC's registers do not "
                                 "overlap RAM",
                                 cfg::format_bytes(pp.memory)),
                     fmt::format("{:#x}", pp.nic.device.mmio_base));
    }
    // The PF driver's rings are contiguous in hypervisor memory: one within
    // a page, or whole pages.
    const std::uint64_t ring_bytes = hp.host_nic.ring_size * models::nicdesc::kSize;
    if (ring_bytes > 4096 && ring_bytes % 4096)
      throw error_at(doc, prefix + "hypervisor.host_nic.ring_size",
                     fmt::format("a ring that fits in one page ({} descriptors of {} bytes) or fills whole pages "
                                 "(a multiple of {})",
                                 4096 / models::nicdesc::kSize, models::nicdesc::kSize, 4096 / models::nicdesc::kSize),
                     std::to_string(hp.host_nic.ring_size));
    const std::uint64_t cores = pp.cores * pp.smt;
    if (hp.host_nic.core >= cores)
      throw error_at(doc, prefix + "hypervisor.host_nic.core", fmt::format("a core below {} (the platform's)", cores),
                     std::to_string(hp.host_nic.core));
  }
  if (hp.ksm.enabled) {
    if (hp.ept_page_size != (4ull << 10))
      throw error_at(doc, prefix + "hypervisor.ksm.enabled", "false unless hypervisor.ept_page_size is 4KiB (merging works "
                     "on 4 KiB pages)", "true");
    const std::uint64_t cores = pp.cores * pp.smt;
    if (hp.ksm.core >= cores)
      throw error_at(doc, prefix + "hypervisor.ksm.core", fmt::format("a core below {} (the platform's)", cores),
                     std::to_string(hp.ksm.core));
  }
  if (hp.host_swap.enabled) {
    const auto& hs = hp.host_swap;
    if (hp.ept_page_size != (4ull << 10))
      throw error_at(doc, prefix + "hypervisor.host_swap.enabled", "false unless hypervisor.ept_page_size is 4KiB "
                     "(pages go out 4 KiB at a time)", "true");
    if (!hp.ept_ad)
      throw error_at(doc, prefix + "hypervisor.host_swap.enabled", "false unless hypervisor.ept_ad is true (the "
                     "clock reads EPT accessed flags)", "true");
    const std::uint64_t cores = pp.cores * pp.smt;
    if (hs.core >= cores)
      throw error_at(doc, prefix + "hypervisor.host_swap.core", fmt::format("a core below {} (the platform's)", cores),
                     std::to_string(hs.core));
    if (hs.high_watermark < hs.low_watermark)
      throw error_at(doc, prefix + "hypervisor.host_swap.high_watermark",
                     fmt::format("at least low_watermark ({} bytes)", hs.low_watermark), std::to_string(hs.high_watermark));
  }
  if (hp.snapshot.copier_core >= pp.cores * pp.smt)
    throw error_at(doc, prefix + "hypervisor.snapshot.copier_core",
                   fmt::format("a core below {} (the platform's)", pp.cores * pp.smt),
                   std::to_string(hp.snapshot.copier_core));
  if (pp.quantum > p.duration)
    throw error_at(doc, prefix + "platform.quantum",
                   fmt::format("at most duration ({}): a core runs up to a quantum ahead of the others",
                               cfg::format_time_ps(p.duration)),
                   cfg::format_time_ps(pp.quantum));
  if (pp.rdt.enabled && pp.llc.ways > 32)
    throw error_at(doc, prefix + "platform.rdt.enabled",
                   fmt::format("false with a {}-way LLC (a capacity bitmask has at most 32 bits, one per way)",
                               pp.llc.ways),
                   "true");
  check_vms(doc, p, pp, vms, prefix, hp, pp.cores * pp.smt);
  // The VMs' memory may add up to more than the host's (overcommit): guest
  // memory is backed on demand, and a VM that faults when no host frame is
  // free is stopped with a note (docs/memory.md, "Overcommit"). Only the
  // hypervisor's own reserve must fit.
  if (hp.reserved_memory >= pp.memory)
    throw error_at(doc, prefix + "platform.memory",
                   fmt::format("more than hypervisor.reserved_memory ({}): the rest backs guest memory",
                               cfg::format_bytes(hp.reserved_memory)),
                   cfg::format_bytes(pp.memory));
  if (pp.memory % 4096)
    throw error_at(doc, prefix + "platform.memory", "a multiple of 4KiB", cfg::format_bytes(pp.memory));
}

}  // namespace

ExperimentParams load(const cfg::Document& doc) {
  auto p = cfg::read<ExperimentParams>(doc);
  // Rules that span several values.
  {
    // Checked whether or not the trace is on: a typo waits for no one.
    std::uint32_t mask = 0;
    std::string why;
    if (!trace::parse_categories(p.event_trace.categories, mask, why))
      throw error_at(doc, "event_trace.categories", why, p.event_trace.categories);
    if (p.event_trace.stop && p.event_trace.stop <= p.event_trace.start)
      throw error_at(doc, "event_trace.stop", "a time after event_trace.start (or 0 for the end of the run)",
                     cfg::format_time_ps(p.event_trace.stop));
  }
  if (p.hosts.empty()) {
    if (p.vms.empty()) throw error_at(doc, "vms", "at least 1 item (a VM, or `hosts` with the machines)", "nothing");
    check_host(doc, p, p.platform, p.hypervisor, p.vms, "");
  } else {
    // Several hosts (docs/migration.md): the VMs are the hosts'. (The
    // top-level platform and hypervisor, which a resolved config.yaml
    // repeats with their defaults, are unused.)
    if (!p.vms.empty())
      throw error_at(doc, "vms", "no top-level VMs when `hosts` is given (each host lists its own)",
                     std::to_string(p.vms.size()) + " VMs");
    if (p.network.eth_switch.enabled ? p.hosts.size() < 2 : p.hosts.size() != 2)
      throw error_at(doc, "hosts",
                     p.network.eth_switch.enabled ? "at least two hosts on the switch"
                                                  : "exactly two hosts (one direct link joins them; more need "
                                                    "network.switch.enabled)",
                     std::to_string(p.hosts.size()));
    std::set<std::string> names;
    for (std::size_t h = 0; h < p.hosts.size(); ++h) {
      const HostParams& hp = p.hosts[h];
      const std::string at = fmt::format("hosts[{}].", h);
      if (hp.name.empty() || hp.name.find_first_of(". \t/") != std::string::npos)
        throw error_at(doc, at + "name", "a name without dots, spaces or slashes", hp.name);
      if (!names.insert(hp.name).second) throw error_at(doc, at + "name", "a name no other host has", hp.name);
      if (!hp.platform.nic.enabled)
        throw error_at(doc, at + "platform.nic.enabled", "true (the hosts are linked through their NICs)", "false");
      if (hp.platform.frequency != p.hosts[0].platform.frequency)
        throw error_at(doc, at + "platform.frequency",
                       fmt::format("the frequency of hosts[0] ({} Hz): a migrated guest keeps reading its TSC",
                                   p.hosts[0].platform.frequency),
                       fmt::format("{} Hz", hp.platform.frequency));
      check_host(doc, p, hp.platform, hp.hypervisor, hp.vms, at);
    }
  }
  if (p.network.peer.enabled && (p.hosts.empty() || !p.network.eth_switch.enabled))
    throw error_at(doc, "network.peer.enabled",
                   "false unless `hosts` are joined by network.switch (the peer has a port of the switch)", "true");
  // Migrations (docs/migration.md): what the model moves.
  std::set<std::string> moved;
  for (std::size_t m = 0; m < p.migrations.size(); ++m) {
    const MigrationParams& mp = p.migrations[m];
    const std::string at = fmt::format("migrations[{}].", m);
    if (p.hosts.empty()) throw error_at(doc, at + "from", "`hosts` describing two hosts to migrate between", "none");
    const HostParams* from = nullptr;
    const HostParams* to = nullptr;
    for (const HostParams& hp : p.hosts) {
      if (hp.name == mp.from) from = &hp;
      if (hp.name == mp.to) to = &hp;
    }
    if (!from) throw error_at(doc, at + "from", "the name of a host", mp.from);
    if (!to || to == from) throw error_at(doc, at + "to", "the name of another host", mp.to);
    const VmParams* vm = nullptr;
    for (const VmParams& v : from->vms)
      if (v.name == mp.vm) vm = &v;
    if (!vm) throw error_at(doc, at + "vm", "the name of a VM of host " + mp.from, mp.vm);
    if (!moved.insert(mp.vm).second) throw error_at(doc, at + "vm", "a VM no other migration moves", mp.vm);
    for (const VmParams& v : to->vms)
      if (v.name == mp.vm) throw error_at(doc, at + "vm", "a VM name host " + mp.to + " does not have already", mp.vm);
    {
      std::vector<unsigned> pins;
      if (!parse_core_list(vm->pin, to->platform.cores * to->platform.smt, pins).empty())
        throw error_at(doc, at + "vm", fmt::format("a VM whose pin names cores host {} has too", mp.to), vm->pin);
    }
    if (mp.at >= p.duration)
      throw error_at(doc, at + "at", "a time before duration (" + cfg::format_time_ps(p.duration) + ")",
                     cfg::format_time_ps(mp.at));
    if (mp.core >= from->platform.cores * from->platform.smt)
      throw error_at(doc, at + "core", fmt::format("a core of host {} (below {})", mp.from,
                                                   from->platform.cores * from->platform.smt),
                     std::to_string(mp.core));
    if (mp.tracking != "write_protect" && !from->hypervisor.ept_ad)
      throw error_at(doc, at + "tracking", "write_protect unless host " + mp.from + "'s hypervisor.ept_ad is on",
                     mp.tracking);
    if (vm->nic.type == "vf" && mp.vf_handshake && from->hypervisor.iommu_mode != "scalable")
      throw error_at(doc, at + "vf_handshake",
                     "false unless host " + mp.from + "'s hypervisor.iommu_mode is scalable (DMA dirty tracking "
                     "needs the IOMMU's second-level dirty flags)",
                     "true");
    if (vm->nic.type == "vf" && vm->nic.vf >= to->platform.nic.device.vfs)
      throw error_at(doc, at + "vm", fmt::format("a VM whose VF index host {} has too", mp.to),
                     std::to_string(vm->nic.vf));
    if (vm->paging != "ept" || (vm->nic.type != "none" && vm->nic.type != "vf") || vm->snapshot.at || vm->swap || vm->balloon.enabled ||
        vm->hypervisor.enabled() || vm->pmu != "none")
      throw error_at(doc, at + "vm",
                     "a VM with paging ept and no network device but a VF, no snapshot, swap, balloon, nested "
                     "hypervisor, virtual PMU (what migration moves, docs/migration.md)",
                     mp.vm);
    if (mp.mode == "postcopy" && mp.postcopy_after > mp.max_rounds)
      throw error_at(doc, at + "postcopy_after", fmt::format("at most max_rounds ({})", mp.max_rounds),
                     std::to_string(mp.postcopy_after));
    if (mp.mode == "postcopy" && to->hypervisor.ept_page_size != (4ull << 10))
      throw error_at(doc, at + "mode",
                     "precopy unless host " + mp.to + "'s hypervisor.ept_page_size is 4KiB (post-copy places pages "
                     "one by one)", mp.mode);
    if (mp.mode == "postcopy" && vm->nic.type == "vf")
      throw error_at(doc, at + "mode",
                     "precopy for a VM with a VF (the VF's DMA at the destination would reach pages not there yet, "
                     "a DMA-remapping fault no software can resolve; QEMU blocks VFIO migration with postcopy-ram "
                     "too, docs/migration.md)",
                     mp.mode);
    if (mp.announce && vm->nic.type != "vf")
      throw error_at(doc, at + "announce",
                     "false for a VM without a VF (the announcement is sent from the VF's MAC)", "true");
    if (mp.auto_converge && mp.throttle_initial > mp.throttle_max)
      throw error_at(doc, at + "throttle_initial", fmt::format("at most throttle_max ({})", mp.throttle_max),
                     std::to_string(mp.throttle_initial));
    for (const HostParams* hp : {from, to})
      if (hp->hypervisor.posted_interrupts || hp->hypervisor.ksm.enabled)
        throw error_at(doc, fmt::format("hosts[{}].hypervisor.posted_interrupts", hp - p.hosts.data()),
                       "posted_interrupts and ksm off on both hosts of a migration (not migrated)", "on");
  }
  if (p.warmup >= p.duration && p.warmup != 0)
    throw error_at(doc, "warmup", "less than duration (" + cfg::format_time_ps(p.duration) + ")",
                   cfg::format_time_ps(p.warmup));
  if (p.fast_forward >= p.duration && p.fast_forward != 0)
    throw error_at(doc, "fast_forward", "less than duration (" + cfg::format_time_ps(p.duration) + ")",
                   cfg::format_time_ps(p.fast_forward));
  if (p.fast_forward != 0 && p.warmup != 0 && p.warmup <= p.fast_forward)
    throw error_at(doc, "warmup",
                   "0 or later than fast_forward (" + cfg::format_time_ps(p.fast_forward) +
                       "), which resets the statistics itself",
                   cfg::format_time_ps(p.warmup));
  return p;
}

}  // namespace vmx::experiment
