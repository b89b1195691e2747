// Moving a VM's SR-IOV VF with it (docs/migration.md, "A VM with an SR-IOV
// VF"), after VFIO's migration protocol v2 (Linux include/uapi/linux/vfio.h,
// enum vfio_device_mig_state) as a VFIO variant driver and QEMU drive it:
//
// Source, on the migration thread's core:
//   - at the start the VF goes RUNNING -> PRE_COPY (it keeps working) and
//     DMA dirty tracking starts: the VF's PASID entry has SLADE set (scalable
//     mode, passthrough.cc), so the IOMMU sets the second-level dirty flag
//     of every page a DMA writes; the flags are cleared when logging starts
//     and the unit's cached translations flushed (PASID-selective IOTLB
//     invalidation), so the next write to each page sets its flag again;
//   - after each dirty harvest the migration thread reads the second-level
//     leaves, clears those found dirty (atomic exchanges, as the EPT cursor
//     does), invalidates the IOTLB again, and sends those pages too;
//   - with the vCPUs parked: PRE_COPY -> PRE_COPY_P2P (the P2P quiescent
//     state; every device of the VM gets there before any stops, so none
//     DMAs into a stopped peer) -> STOP_COPY: the VF starts no new
//     descriptor; the driver polls its status until the descriptor in flight
//     has completed all its DMA (the drain), then reads its registers (ring
//     bases, sizes, head and tail positions, MAC, interrupt enables,
//     moderation, control) into a record that travels after the vCPU
//     records; the last harvest comes after the drain, so what it wrote is
//     sent;
//   - after the switchover the VF is stopped and reset.
// Destination: when DONE arrives, before the vCPUs are made runnable, the VF
// is assigned as at boot (assign_vf: guest memory backed, EPT window,
// context and PASID entries, IRTE, MSI-X), taken
// RUNNING -> RUNNING_P2P -> STOP -> RESUMING, the record written into its
// registers (the head registers are writable only then), and RESUMING ->
// STOP -> RUNNING_P2P -> RUNNING: the guest's driver goes on where it was.
//
// Without the handshake (migrations[].vf_handshake false) the VF is never
// quiesced and its DMA not tracked, as a hypervisor that migrates a device
// without migration support: its registers are read while it runs, and the
// descriptors it completes during the stop-and-copy write pages that were
// already sent (the page-checksum check finds them) and are sent again by
// the destination's VF from the stale positions.
#include "hypervisor/migration_state.h"
#include "hypervisor/mig_stream.h"
#include "hypervisor/passthrough.h"

#include <algorithm>
#include <iterator>

#include "mmu/paging.h"
#include "models/nic.h"

namespace vmx::hv {

using namespace detail;
namespace ept = mmu::ept;

namespace {
namespace reg = models::nicreg;
// The VF's saved registers, in the record in this order (4 bytes each).
// Ring bases before sizes before positions: writing a size zeroes them.
constexpr std::uint32_t kSaved[] = {
    reg::kMacLo,  reg::kMacHi,    reg::kTxBaseLo, reg::kTxBaseHi, reg::kTxSize,    reg::kTxHead,
    reg::kTxTail, reg::kRxBaseLo, reg::kRxBaseHi, reg::kRxSize,   reg::kRxHead,    reg::kRxTail,
    reg::kItr,    reg::kIntEnable, reg::kCtrl,
};
constexpr std::uint32_t kRecordBytes = sizeof(kSaved);
constexpr std::uint32_t kFrameVfState = stream::kVfState;
}  // namespace

void Hypervisor::vf_mig_start(Core& c, Vm& vm, bool handshake) {
  vm.vf_mig = std::make_unique<VfMigration>();
  VfMigration& m = *vm.vf_mig;
  m.handshake = handshake;
  m.stats = std::make_unique<VfMigration::Stats>(vm.group);
  m.stats->handshake += handshake ? 1 : 0;
  m.record = alloc_host_frame();
  if (!handshake) return;
  charge(c, m_p.live_migration.vcpu_state, kCodeVfMig);
  c.store(m_io.nic_mmio_base + (1ull + vm.vf) * m_io.nic_mmio_stride + reg::kMigState, reg::kMigPreCopy, 4);
  // dirty_log_start cleared every dirty flag: the unit's cached
  // translations, which remember the flag as set, go too.
  m_pt->driver.flush_pasid_iotlb(c, static_cast<std::uint16_t>(vm.id + 1), 0);
}

bool Hypervisor::vf_mig_stop(Core& c, Vm& vm) {
  VfMigration& m = *vm.vf_mig;
  if (m.step == VfMigration::Step::Saved) return true;
  const std::uint64_t w = m_io.nic_mmio_base + (1ull + vm.vf) * m_io.nic_mmio_stride;
  if (m.handshake) {
    if (m.step == VfMigration::Step::Running) {
      charge(c, m_p.live_migration.vcpu_state, kCodeVfMig);
      c.store(w + reg::kMigState, reg::kMigPreCopyP2p, 4);  // P2P quiescent
      c.store(w + reg::kMigState, reg::kMigStopCopy, 4);    // no new descriptor: the drain
      m.quiesce_tsc = c.rdtsc();
      m.step = VfMigration::Step::Quiescing;
    }
    ++m.stats->quiesce_polls;
    if (!(c.load(w + reg::kMigStatus, 4) & reg::kMigQuiesced)) return false;
    m.stats->quiesce_cycles += c.rdtsc() - m.quiesce_tsc;
  }
  // The device state: its registers, read over MMIO into the record.
  charge(c, m_p.live_migration.vcpu_state, kCodeVfMig);
  for (unsigned i = 0; i < std::size(kSaved); ++i) c.store(m.record + 4 * i, c.load(w + kSaved[i], 4), 4);
  m.stats->tx_head.set(static_cast<double>(c.load(m.record + 4 * 5, 4)));
  m.stats->tx_tail.set(static_cast<double>(c.load(m.record + 4 * 6, 4)));
  m.step = VfMigration::Step::Saved;
  return true;
}

void Hypervisor::vf_mig_dma_dirty(Core& c, Vm& vm, std::vector<std::uint64_t>& gfns) {
  if (!vm.vf_mig || !vm.vf_mig->handshake || vm.ended()) return;
  VfMigration& m = *vm.vf_mig;
  const std::uint64_t t0 = c.now();
  // The second-level table is the VM's EPT (passthrough.cc): its leaves'
  // dirty flags are the IOMMU's. Those the CPU set were cleared by the
  // dirty log's harvest just before (PML) or are taken here with them.
  std::vector<Ept::Leaf> dirty;
  std::uint64_t leaves = 0;
  lock_mmu(c, vm);
  vm.ept->for_each_leaf(c, 0, vm.memory, false, [&](const Ept::Leaf& l) {
    ++leaves;
    if (l.entry & ept::kDirty) dirty.push_back(l);
  });
  charge(c, leaves * m_p.dirty_log.scan_leaf, kCodeVfMig);
  vm.ept->clear_bits(c, dirty, ept::kDirty);
  unlock_mmu(c, vm);
  m_pt->driver.flush_pasid_iotlb(c, static_cast<std::uint16_t>(vm.id + 1), 0);
  std::vector<std::uint64_t> dma;
  for (const Ept::Leaf& l : dirty)
    if (l.entry & ept::kDirty)
      for (std::uint64_t g = l.gpa; g < l.gpa + l.size; g += kPage) dma.push_back(g / kPage);
  std::sort(dma.begin(), dma.end());
  std::vector<std::uint64_t> all;
  std::set_union(gfns.begin(), gfns.end(), dma.begin(), dma.end(), std::back_inserter(all));
  m.stats->dma_dirty_pages += all.size() - gfns.size();
  m.stats->dma_dirty_per_round.sample(all.size() - gfns.size());
  ++m.stats->harvests;
  gfns = std::move(all);
  m.stats->harvest_cycles += c.now() - t0;
}

void Hypervisor::vf_mig_send_state(Core& c, Vm& vm) {
  VfMigration& m = *vm.vf_mig;
  mig_send(c, vm, kFrameVfState, 0, m.record, kRecordBytes);
  m.stats->state_bytes += kRecordBytes;
}

void Hypervisor::vf_mig_release(Core& c, Vm& vm) {
  VfMigration& m = *vm.vf_mig;
  const std::uint64_t w = m_io.nic_mmio_base + (1ull + vm.vf) * m_io.nic_mmio_stride;
  if (m.handshake) c.store(w + reg::kMigState, reg::kMigStop, 4);
  c.store(w + reg::kCtrl, reg::kCtrlReset, 4);  // function reset: the VF goes back to the host
  m_frames.put(m.record);
  m.record = 0;
}

void Hypervisor::vf_mig_receive(Core& c, Vm& vm, std::uint64_t buf, std::uint32_t len) {
  if (!vm.vf_mig) {
    vm.vf_mig = std::make_unique<VfMigration>();
    vm.vf_mig->stats = std::make_unique<VfMigration::Stats>(vm.group);
    vm.vf_mig->record = alloc_host_frame();
  }
  VfMigration& m = *vm.vf_mig;
  c.rep_movs(m.record, buf, std::min(len, kRecordBytes));
  m.received = true;
}

void Hypervisor::vf_mig_resume(Core& c, Vm& vm) {
  if (!vm.vf_mig || !vm.vf_mig->received || vm.vf_mig->stats->restored.value()) return;
  VfMigration& m = *vm.vf_mig;
  assign_vf(c, vm);
  const std::uint64_t w = m_io.nic_mmio_base + (1ull + vm.vf) * m_io.nic_mmio_stride;
  charge(c, m_p.live_migration.vcpu_state, kCodeVfMig);
  for (std::uint32_t s : {reg::kMigRunningP2p, reg::kMigStop, reg::kMigResuming}) c.store(w + reg::kMigState, s, 4);
  for (unsigned i = 0; i < std::size(kSaved); ++i) c.store(w + kSaved[i], c.load(m.record + 4 * i, 4), 4);
  for (std::uint32_t s : {reg::kMigStop, reg::kMigRunningP2p, reg::kMigRunning}) c.store(w + reg::kMigState, s, 4);
  m.stats->state_bytes += kRecordBytes;
  m.stats->restored += 1;
  m_frames.put(m.record);
  m.record = 0;
}

}  // namespace vmx::hv
