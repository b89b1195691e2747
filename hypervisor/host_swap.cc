// Host swap room (docs/memory.md, "Host swap"): a reclaim thread of the
// hypervisor that picks victims by EPT accessed flags (a clock over the
// frame allocator's reverse map), unmaps them through the EPT cursor, waits
// until no core can still write them through a cached translation, writes
// them to the host storage device and frees their frames; and the other
// half, on the EPT violation of a swapped page: a frame, the read, the wait
// for it on the faulting vCPU's core, the mapping.
#include "hypervisor/hypervisor_state.h"
#include "hypervisor/dirty_state.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "mmu/paging.h"

namespace vmx::hv {

using namespace detail;
using models::Storage;

void Hypervisor::swap_init() {
  if (!m_p.host_swap.enabled) return;
  if (m_p.ept_page_size != kPage)
    throw std::invalid_argument("hypervisor.host_swap needs hypervisor.ept_page_size 4KiB (pages go out 4 KiB at a time)");
  if (!m_p.ept_ad)
    throw std::invalid_argument("hypervisor.host_swap needs hypervisor.ept_ad (the clock reads EPT accessed flags)");
  if (m_p.host_swap.core >= m_cores.size())
    throw std::invalid_argument(fmt::format("hypervisor.host_swap.core is {}, but the platform has {} cores",
                                            m_p.host_swap.core, m_cores.size()));
  m_swap = std::make_unique<HostSwapState>(m_p.host_swap, &m_stats);
  HostSwapState& s = *m_swap;
  s.interval_ticks = std::max<std::uint64_t>(1, ps_to_tsc(m_p.host_swap.interval));
  s.next_run = s.interval_ticks;  // the TSCs start at 0
  // The swap area: the first blocks of the host storage device (the VMs'
  // virtio-blk disks follow it).
  s.slots = m_p.host_swap.size / kPage;
  s.first_block = m_storage_next_block;
  m_storage_next_block += s.slots;
  storage();
  s.io_due.assign(m_cores.size(), 0);
  s.io_vm.assign(m_cores.size(), 0);
}

void Hypervisor::swap_add_vm(Vm& vm) {
  HostSwapState& s = *m_swap;
  s.entries.resize(m_vms.size() + 1);
  s.vm_stats.resize(m_vms.size() + 1);
  s.vm_stats[vm.id] = std::make_unique<HostSwapVmStats>(vm.group);
}

bool Hypervisor::swap_eligible(const Vm& vm) const {
  // Devices that write guest memory behind EPT (DMA, the hypervisor's own
  // emulation through host-physical addresses), shadow paging (no EPT
  // accessed flags), nested VMX (L1's structures are used by host-physical
  // address) and dirty tracking or a snapshot (they rely on every page being
  // mapped) keep a VM's memory resident.
  return !vm.ended() && !vm.shadow && !vm.virtio && !vm.nic && vm.nic_type != "vf" && !vm.nested_vmx &&
         !vm.snapshot && !(vm.dirty && vm.dirty->on);
}

unsigned Hypervisor::core_index(const Core& c) const {
  for (unsigned k = 0; k < m_cores.size(); ++k)
    if (m_cores[k] == &c) return k;
  throw std::logic_error("hypervisor: a core that is not the hypervisor's");
}

void Hypervisor::swap_own_invepts(Core& c, unsigned self) {
  // Only the INVEPTs: a VMCLEAR may wait for the next scheduling decision,
  // and this core may be inside an exit handler with a VMCS loaded.
  auto& pending = m_percore[self]->pending_invept;
  if (pending.empty()) return;
  std::vector<std::uint64_t> invepts;
  invepts.swap(pending);
  for (std::uint64_t eptp : invepts)
    if (c.invept(1, eptp, Regs::rcx, vmx_operand(c, eptp)) != cpu::VmxStatus::Succeed)
      throw cpu::SimulationError("hypervisor: INVEPT failed");
}

// After an unmap the flush hook has invalidated this core's translations and
// asked every other core that ran the VM to do so before its next entry,
// with an IPI to those running a vCPU of the VM. A core in guest mode may
// still write the page through its cached translation until it exits and
// invalidates: the frame's contents are final only once every core that
// runs a vCPU of the VM has done so (KVM's kvm_flush_remote_tlbs waits for
// the IPIs' acknowledgement for the same reason). Cores not running the VM
// invalidate before they enter it. No lock is held while waiting, and the
// waiter does what others ask of it meanwhile, so two cores that wait for
// each other both go on.
void Hypervisor::swap_wait_acks(Core& c, Vm& vm) {
  const unsigned self = core_index(c);
  const std::uint64_t t0 = c.now();
  for (;;) {
    bool waiting = false;
    for (unsigned k = 0; k < m_percore.size() && !waiting; ++k) {
      if (k == self) continue;
      const auto& pending = m_percore[k]->pending_invept;
      if (std::find(pending.begin(), pending.end(), vm.eptp) == pending.end()) continue;
      for (const auto& u : vm.vcpus)
        if (u->time.off == Vcpu::Off::OnCpu && u->core == k) waiting = true;
    }
    if (!waiting) break;
    swap_own_invepts(c, self);
    c.pause();
  }
  m_swap->stats.ack_cycles += c.now() - t0;
}

bool Hypervisor::swap_page_out(Core& c, Vm& vm, std::uint64_t gpa, std::uint64_t frame) {
  HostSwapState& s = *m_swap;
  lock_mmu(c, vm);
  auto leaf = vm.ept->lookup(c, gpa);
  if (!leaf || leaf->hpa != frame || leaf->level != 1) {
    unlock_mmu(c, vm);
    return false;
  }
  if (leaf->entry & mmu::ept::kAccessed) {
    // Young: a second chance. The flag is cleared without an invalidation,
    // as KVM's clear_young: a translation cached meanwhile keeps the page
    // from looking used, which costs a fault later, never data.
    std::vector<Ept::Leaf> one{*leaf};
    vm.ept->clear_bits(c, one, mmu::ept::kAccessed, false);
    unlock_mmu(c, vm);
    ++s.stats.young;
    return false;
  }
  // The victim: unmapped first (INVEPT everywhere), copied only once no core
  // can write it any more. An access meanwhile faults, finds the entry with
  // its frame and maps the frame again (swap_in_locked).
  vm.ept->unmap(c, gpa);
  vm.backed -= kPage;
  const std::uint64_t gfn = gpa / kPage;
  s.entries[vm.id][gfn] = HostSwapState::Entry{frame, 0};
  unlock_mmu(c, vm);
  swap_wait_acks(c, vm);
  if (vm.torn_down || vm.stopping) {
    // The VM went while this core waited: its EPT is gone or going.
    s.entries[vm.id].erase(gfn);
    charge(c, m_p.costs.frame_free, kCodeHostSwap);
    m_frames.put(frame);
    return true;
  }
  lock_mmu(c, vm);
  auto it = s.entries[vm.id].find(gfn);
  if (it == s.entries[vm.id].end() || it->second.frame != frame) {
    unlock_mmu(c, vm);  // mapped again (or forgotten) meanwhile
    return false;
  }
  std::uint64_t slot;
  if (!s.free_slots.empty()) {
    slot = s.free_slots.back();
    s.free_slots.pop_back();
  } else {
    slot = s.next_slot++;
  }
  // The contents go to the device through a bounce buffer of the host block
  // layer (as the virtio-blk back end's): the loads are this core's. The
  // frame is free once copied; the write occupies the device (its command
  // slots and media channel) from now on.
  std::uint64_t words[Storage::kBlock / 8];
  for (unsigned w = 0; w < Storage::kBlock / 8; ++w) words[w] = c.load(frame + 8ull * w);
  Storage& disk = storage();
  disk.write_block(s.first_block + slot, words);
  disk.submit(c.now_ps(), kPage, true);
  charge(c, s.p.page_out, kCodeHostSwap);
  it->second = HostSwapState::Entry{0, slot};
  unlock_mmu(c, vm);
  charge(c, m_p.costs.frame_free, kCodeHostSwap);
  m_frames.put(frame);
  ++s.stats.pages_out;
  ++s.vm_stats[vm.id]->swapped_out;
  return true;
}

// A clock over the guest zone's allocated frames in address order (the
// reverse map names each frame's mapping): a frame mapped once, by a VM that
// may be swapped, whose EPT leaf has the accessed flag clear is written out;
// one with the flag set loses it and is passed over. Two turns at most: the
// first may only clear flags.
std::uint64_t Hypervisor::swap_reclaim(Core& c, std::uint64_t want) {
  HostSwapState& s = *m_swap;
  const std::uint64_t t0 = c.now();
  std::uint64_t freed = 0, visited = 0;
  const std::uint64_t limit = 2 * (m_frames.used_bytes(m_guest_zone) / kPage) + 1;
  while (freed < want && visited < limit) {
    if (s.free_slots.empty() && s.next_slot >= s.slots) break;  // the swap area is full
    std::uint64_t f = m_frames.next_allocated(m_guest_zone, s.hand);
    if (!f) f = m_frames.next_allocated(m_guest_zone, 0);
    if (!f) break;
    s.hand = f + m_frames.block_size(f);
    ++visited;
    ++s.stats.scanned;
    charge(c, s.p.scan_frame, kCodeHostSwap);
    if (m_frames.block_size(f) != kPage || m_frames.refcount(f) != 1) continue;  // shared, or held elsewhere
    const auto& maps = m_frames.mappings(f);
    if (maps.size() != 1) continue;
    const FrameAllocator::Mapping m = maps[0];
    if (m.vm >= m_vms.size()) continue;
    Vm& vm = *m_vms[m.vm];
    if (!swap_eligible(vm) || ksm_pinned(vm, f)) continue;  // the steal-time record is the hypervisor's to write
    if (swap_page_out(c, vm, m.gpa, f)) ++freed;
  }
  s.stats.reclaim_cycles += c.now() - t0;
  swap_publish();
  return freed;
}

bool Hypervisor::swap_direct_reclaim(Core& c) {
  ++m_swap->stats.direct;
  return swap_reclaim(c, 32) > 0;  // Linux's SWAP_CLUSTER_MAX
}

void Hypervisor::swap_run(PerCore& pc) {
  Core& c = *pc.core;
  HostSwapState& s = *m_swap;
  // Slots of VMs that have stopped go back to the area.
  for (auto& vmp : m_vms) {
    if (!vmp->torn_down || s.entries[vmp->id].empty()) continue;
    for (const auto& [gfn, e] : s.entries[vmp->id])
      if (!e.frame) {
        s.free_slots.push_back(e.slot);
        storage().discard(s.first_block + e.slot);
      }
    s.entries[vmp->id].clear();
  }
  const std::uint64_t free = m_frames.free_bytes(m_guest_zone);
  if (free < s.p.low_watermark) {
    ++s.stats.runs;
    const std::uint64_t want = std::min<std::uint64_t>(s.p.batch, (s.p.high_watermark - free + kPage - 1) / kPage);
    swap_reclaim(c, want);
  }
  swap_publish();
  s.next_run = c.rdtsc() + s.interval_ticks;
}

std::uint64_t Hypervisor::swap_in_locked(Core& c, Vm& vm, std::uint64_t gpa, bool& swapped) {
  HostSwapState& s = *m_swap;
  auto& entries = s.entries[vm.id];
  auto it = entries.find(gpa / kPage);
  swapped = it != entries.end();
  if (!swapped) return 0;
  HostSwapVmStats& vs = *s.vm_stats[vm.id];
  std::uint64_t frame = it->second.frame;
  if (frame) {
    // Unmapped by the reclaimer, not written yet: the frame still holds the
    // page (Linux's swap-cache hit).
    ++s.stats.cancelled;
    ++vs.cache_hits;
  } else {
    frame = alloc_guest_page();
    if (!frame) return 0;
    const std::uint64_t slot = it->second.slot;
    Storage& disk = storage();
    std::uint64_t words[Storage::kBlock / 8];
    disk.read_block(s.first_block + slot, words);
    for (unsigned w = 0; w < Storage::kBlock / 8; ++w) c.store(frame + 8ull * w, words[w]);
    const std::uint64_t now_ps = c.now_ps();
    const std::uint64_t done_ps = disk.submit(now_ps, kPage, false);
    // The caller waits for the read once the MMU lock is released (swap_io_wait).
    const unsigned k = core_index(c);
    s.io_due[k] = std::max(s.io_due[k], c.rdtsc() + ps_to_tsc(done_ps - now_ps));
    s.io_vm[k] = vm.id;
    disk.discard(s.first_block + slot);
    s.free_slots.push_back(slot);
    charge(c, s.p.page_in, kCodeHostSwap);
    ++s.stats.pages_in;
    ++vs.major_faults;
  }
  entries.erase(it);
  if (!vm.ept->map(c, gpa, frame, kPage, Ept::kRwxWb))
    throw cpu::SimulationError("hypervisor: reserved_memory exhausted by EPT tables (raise hypervisor.reserved_memory)");
  vm.backed += kPage;
  vs.swapped.set(static_cast<double>(entries.size()));
  return frame;
}

// The faulting vCPU's core waits for its swap-in read, polling the
// completion (interrupts stay off in the exit handler); the wait is the
// hypervisor time of the vCPU it runs for.
void Hypervisor::swap_io_wait(Core& c) {
  HostSwapState& s = *m_swap;
  const unsigned k = core_index(c);
  const std::uint64_t due = s.io_due[k];
  if (!due) return;
  s.io_due[k] = 0;
  const std::uint64_t t0 = c.now();
  while (c.rdtsc() < due) {
    swap_own_invepts(c, k);  // a reclaimer elsewhere may wait for this core
    c.pause();
  }
  s.vm_stats[s.io_vm[k]]->wait_cycles += c.now() - t0;
}

void Hypervisor::swap_forget(Core& c, Vm& vm, std::uint64_t gfn) {
  HostSwapState& s = *m_swap;
  auto& entries = s.entries[vm.id];
  auto it = entries.find(gfn);
  if (it == entries.end()) return;
  if (it->second.frame) {
    charge(c, m_p.costs.frame_free, kCodeHostSwap);
    m_frames.put(it->second.frame);
  } else {
    s.free_slots.push_back(it->second.slot);
    storage().discard(s.first_block + it->second.slot);
  }
  entries.erase(it);
}

void Hypervisor::swap_publish() {
  HostSwapState& s = *m_swap;
  s.stats.slots_used.set(static_cast<double>(s.next_slot - s.free_slots.size()));
  for (const auto& vm : m_vms)
    if (s.vm_stats[vm->id]) s.vm_stats[vm->id]->swapped.set(static_cast<double>(s.entries[vm->id].size()));
}

}  // namespace vmx::hv
