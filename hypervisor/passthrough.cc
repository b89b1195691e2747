// Device passthrough of SR-IOV virtual functions (docs/io.md, "Device
// passthrough"), as VFIO with KVM does it:
//
// - The VM's memory is backed before the VF may DMA (eager population: the
//   IOMMU model has no page requests, so a DMA to an unbacked page would
//   fault; VFIO likewise pins all guest memory).
// - The VF's register window (host-physical mmio_base + (1 + vf) * stride)
//   is mapped at the VM's NIC window through EPT with a 4 KiB leaf, so the
//   guest's register accesses reach the device with no exit.
// - DMA remapping (VT-d, legacy mode): the VF's requester ID gets a context
//   entry whose second-level table is the VM's EPT (EPT-format compatible,
//   VT-d 9.8), domain ID = VM index + 1, so the device sees exactly the VM's
//   guest-physical view; the context cache and the domain's IOTLB entries
//   are invalidated after the change (VT-d 6.5).
// - Interrupts: the hypervisor owns the VF's MSI-X entry and programs it in
//   remappable format (VT-d 5.1.5.2) with handle = VF index. With
//   hypervisor.posted_interrupts the IRTE is posted-format into vCPU 0's
//   descriptor with the guest's vector (VT-d 9.11), so the interrupt reaches
//   a running vCPU without an exit; otherwise it is a remapped IRTE to a host
//   vector on vCPU 0's core, whose handler raises the guest vector (an
//   external-interrupt exit per interrupt, then injection).
#include "hypervisor/passthrough.h"

#include <stdexcept>

#include <fmt/format.h>

#include "iommu/interrupt_remap.h"
#include "iommu/vtd_formats.h"
#include "mmu/paging.h"
#include "models/nic.h"

namespace vmx::hv {

using cpu::Core;

namespace {
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kCodePassthrough = 0xF000;
/// Host vectors of remapped VF interrupts: 0x60 + VF index (mod 64).
constexpr std::uint8_t kVfHostVectorBase = 0x60;
/// IRTA: 2^(7+1) = 256 entries (x2APIC destinations, EIME).
constexpr unsigned kIrtSizeCode = 7;
/// Domain ID of the host's pass-through context entries (VMs use index + 1).
constexpr std::uint16_t kHostDomain = 0;
/// IRTE of the PF's own interrupt (the hypervisor's PF driver); VF i uses
/// entry i, and VF indices stop at 254.
constexpr std::uint16_t kPfIrte = 0xFF;
}  // namespace

void Hypervisor::attach_io(const IoPlatform& io) {
  m_io = io;
  if (!m_pt && io.vtd_regs)
    m_pt = std::make_unique<Passthrough>(&m_stats, io.vtd_regs, [this] { return alloc_host_frame(); });
}

void Hypervisor::assign_vf(Core& c, Vm& vm) {
  if (!m_io.vtd_regs || !m_pt)
    throw cpu::SimulationError("hypervisor: VM " + vm.name + " has a VF but the platform has no NIC and IOMMU");
  Passthrough& pt = *m_pt;
  charge(c, m_p.costs.ept_violation, kCodePassthrough);
  ++pt.stats.vfs;

  // 1. Back all guest memory (the DMA target must exist before any DMA).
  populate(c, vm);
  if (vm.ended()) return;
  pt.stats.mapped_pages += vm.memory / m_p.ept_page_size;

  // 2. The VF's registers in the guest's NIC window: a 4 KiB EPT leaf,
  //    read/write, not executable, uncacheable (memory type 0).
  const std::uint64_t window = m_io.nic_mmio_base + (1ull + vm.vf) * m_io.nic_mmio_stride;
  lock_mmu(c, vm);
  bool mapped = false;
  try {
    mapped = vm.ept->map(c, vm.nic_window_gpa, window, kPage, mmu::ept::kRead | mmu::ept::kWrite);
  } catch (const std::logic_error&) {
    unlock_mmu(c, vm);
    throw cpu::SimulationError(fmt::format("hypervisor: VM {}: the NIC window {:#x} lies in a large page of "
                                           "guest memory",
                                           vm.name, vm.nic_window_gpa));
  }
  if (!mapped) {
    unlock_mmu(c, vm);
    throw cpu::SimulationError("hypervisor: reserved_memory exhausted by EPT tables (raise hypervisor.reserved_memory)");
  }
  unlock_mmu(c, vm);

  // The VF's requester ID, from its ID register (bits 31:16).
  const auto id = static_cast<std::uint32_t>(c.load(window + models::nicreg::kId, 4));
  const auto rid = static_cast<std::uint16_t>(id >> 16);

  // 3. DMA remapping: root entry for the bus, context entry for devfn
  //    pointing at the VM's EPT (legacy mode, VT-d 9.1, 9.3), or in scalable
  //    mode (VT-d 9.2, 9.4 to 9.6) a context entry with a PASID directory
  //    whose RID_PASID (0) entry translates second-level only over the EPT,
  //    with SLADE so that the unit sets dirty flags on DMA writes.
  const bool sm = m_p.iommu_mode == "scalable";
  if (!pt.root_table) pt.root_table = alloc_host_frame();
  auto context_table = [&](unsigned bus, unsigned devfn) {
    // Scalable mode: two context tables per bus, devfn 0-127 and 128-255.
    const unsigned half = sm ? devfn / iommu::smctx::kEntriesPerTable : 0;
    auto [it, fresh] = pt.context_tables.try_emplace(bus * 2 + half, 0);
    if (fresh) {
      it->second = alloc_host_frame();
      if (sm) {
        c.store(pt.root_table + bus * iommu::root::kEntrySize + 8 * half,
                (it->second & iommu::smroot::kCtpMask) | iommu::smroot::kPresent);
      } else {
        c.store(pt.root_table + bus * iommu::root::kEntrySize, iommu::root::lo(it->second));
        c.store(pt.root_table + bus * iommu::root::kEntrySize + 8, 0);
      }
    }
    return it->second;
  };
  const auto did = static_cast<std::uint16_t>(vm.id + 1);
  const unsigned aw = m_p.ept_levels == 5 ? 3 : 2;  // 57- or 48-bit, the EPT's levels
  auto program = [&](std::uint16_t sid, std::uint64_t slptptr, std::uint16_t domain, bool pass) {
    const unsigned bus = iommu::rid_bus(sid), devfn = iommu::rid_devfn(sid);
    if (!sm) {
      const iommu::ContextEntry ce =
          iommu::ctx::make(slptptr, domain, aw, pass ? iommu::ctx::kTtPassThrough : iommu::ctx::kTtUntranslated);
      const std::uint64_t entry = context_table(bus, devfn) + devfn * iommu::ctx::kEntrySize;
      c.store(entry, ce.lo);
      c.store(entry + 8, ce.hi);
      return;
    }
    // One PASID directory (PDTS 0: 128 entries) and one PASID table per
    // function; only PASID 0 (RID_PASID) is used.
    const std::uint64_t dir = alloc_host_frame(), table = alloc_host_frame();
    c.store(dir, iommu::pasid_dir::make(table));
    iommu::pasid_entry::Fields f;
    f.pgtt = pass ? iommu::pasid_entry::kPgttPassThrough : iommu::pasid_entry::kPgttSecondLevel;
    f.did = domain;
    f.slptptr = slptptr;
    f.aw = aw;
    f.slade = !pass;
    const iommu::PasidEntry pe = iommu::pasid_entry::make(f);
    for (unsigned w = 0; w < 8; ++w) c.store(table + 8 * w, pe.w[w]);
    const iommu::SmContextEntry ce = iommu::smctx::make(dir, 0, 0, /*paside=*/false);
    const std::uint64_t entry =
        context_table(bus, devfn) + (devfn % iommu::smctx::kEntriesPerTable) * iommu::smctx::kEntrySize;
    for (unsigned w = 0; w < 4; ++w) c.store(entry + 8 * w, ce.w[w]);
  };
  program(rid, vm.ept->root(), did, false);
  if (!pt.driver.up()) {
    // The PF stays the host's: a pass-through context entry (TT 2, as
    // Linux's iommu=pt identity domain; in scalable mode a pass-through
    // PASID entry), so the hypervisor's own PF driver keeps using
    // host-physical addresses once translation is on.
    const auto pf_rid =
        static_cast<std::uint16_t>(static_cast<std::uint32_t>(c.load(m_io.nic_mmio_base + models::nicreg::kId, 4)) >> 16);
    program(pf_rid, 0, kHostDomain, true);
    // The driver brings the unit up the first time a device is assigned:
    // queued invalidation, SRTP, global invalidations, then TE.
    pt.driver.bring_up(c, pt.root_table, aw, sm);
  }
  // A context entry that was not present may still be cached as such:
  // device-selective context invalidation, then the domain's IOTLB (VT-d
  // 6.5.3.1), queued and waited for.
  pt.driver.flush_device(c, rid, did);

  // 4. Interrupts: IRTE `vf`, then the VF's MSI-X entry in remappable format.
  if (!pt.irt) pt.irt = alloc_host_frame();
  Vcpu& target = *vm.vcpus.at(0);
  const std::uint64_t irte = pt.irt + 16ull * (vm.vf & 0xFF);
  if (m_p.posted_interrupts) {
    c.store(irte + 8, iommu::irte::posted_hi(target.apic.pi_desc, rid));
    c.store(irte, iommu::irte::posted_lo(target.apic.pi_desc, vm.nic_vector));
    ++pt.stats.posted_irtes;
  } else {
    const auto host_vector = static_cast<std::uint8_t>(kVfHostVectorBase + (vm.vf & 0x3F));
    auto [f, inserted] = pt.forward.try_emplace(host_vector, &target);
    if (!inserted)
      throw cpu::SimulationError(fmt::format("hypervisor: VFs {} and another share host vector {:#x}", vm.vf,
                                             host_vector));
    c.store(irte + 8, iommu::irte::hi_sid(rid));
    c.store(irte, iommu::irte::remapped_lo(target.core, host_vector));
    ++pt.stats.remapped_irtes;
  }
  if (!pt.driver.interrupt_remapping()) {
    // Once remapping is on, the unit blocks compatibility-format messages
    // (VT-d 5.1.2.1; CFI stays off, as Linux leaves it in x2APIC mode), so
    // the PF's own interrupt, which the hypervisor's PF driver programmed
    // in that format, moves to an IRTE of its own (remapped to the same
    // vector and core), as every MSI goes through the remapping domain in
    // Linux. Masked across the switch: an interrupt meanwhile waits in the
    // PF's pending bit and is sent in the new format at the unmask.
    std::uint64_t pf_msi = 0;
    if (m_host_nic) {
      const auto pf_rid =
          static_cast<std::uint16_t>(static_cast<std::uint32_t>(c.load(m_io.nic_mmio_base + models::nicreg::kId, 4)) >> 16);
      const std::uint64_t e = pt.irt + 16ull * kPfIrte;
      c.store(e + 8, iommu::irte::hi_sid(pf_rid));
      c.store(e, iommu::irte::remapped_lo(m_host_nic->core(), m_host_nic->vector()));
      m_host_nic->mask_msi(c);
      pf_msi = iommu::irte::msi_address(kPfIrte);
    }
    pt.driver.enable_interrupt_remapping(c, pt.irt, kIrtSizeCode, /*eime=*/true);
    if (m_host_nic) m_host_nic->set_msi(c, pf_msi, 0);
  } else
    pt.driver.flush_irte(c, static_cast<std::uint16_t>(vm.vf & 0xFF));
  const std::uint64_t msi = iommu::irte::msi_address(static_cast<std::uint16_t>(vm.vf & 0xFF));
  c.store(window + models::nicreg::kMsixAddrLo, msi & 0xFFFFFFFFu, 4);
  c.store(window + models::nicreg::kMsixAddrHi, msi >> 32, 4);
  c.store(window + models::nicreg::kMsixData, 0, 4);
  c.store(window + models::nicreg::kMsixCtrl, 0, 4);  // unmask
  vm.vf_rid = rid;  // assigned: the VF works for the VM from here
}

bool Hypervisor::passthrough_interrupt(std::uint8_t vector) {
  if (!m_pt) return false;
  auto it = m_pt->forward.find(vector);
  if (it == m_pt->forward.end()) return false;
  Vcpu& v = *it->second;
  ++m_pt->stats.forwarded;
  raise_virtual(v, v.vm->nic_vector);
  return true;
}

}  // namespace vmx::hv
