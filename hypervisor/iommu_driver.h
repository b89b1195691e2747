// The hypervisor's driver for the VT-d remapping unit (docs/io.md, "The
// hypervisor's IOMMU driver"), after Linux's intel-iommu/dmar driver.
//
// Simulated software: it reaches the unit only through loads and stores to
// its register set on the MMIO bus (iommu/vtd_regs.h) and to the
// invalidation queue and status words in the hypervisor's memory, so what it
// costs is those operations (uncacheable register accesses, queue writes,
// and polling for completion with loads and PAUSE).
//
//  * bring_up (Linux: init_dmars): reads VER/CAP/ECAP and checks what it
//    needs, enables queued invalidation (IQA, IQT = 0, GCMD.QIE, wait for
//    GSTS.QIES), points the unit at the root table (RTADDR, GCMD.SRTP, wait
//    for GSTS.RTPS), invalidates the context cache and IOTLB globally, and
//    enables translation (GCMD.TE, wait for GSTS.TES).
//  * enable_interrupt_remapping (Linux: intel_setup_irq_remapping): IRTA,
//    GCMD.SIRTP, an interrupt-entry-cache invalidation, GCMD.IRE.
//  * Invalidations are queued descriptors followed by a wait descriptor
//    whose status write the driver polls for, reading FSTS between polls for
//    a queue error (Linux: qi_submit_sync, qi_check_fault).
// GCMD is written as the enables kept so far plus one command, one command
// at a time (VT-d 11.4.4), as Linux keeps iommu->gcmd.
#pragma once

#include <cstdint>
#include <functional>

#include "cpu/core.h"
#include "hypervisor/spinlock.h"
#include "iommu/vtd_regs.h"
#include "sim/stats.h"

namespace vmx::hv {

class IommuDriver {
 public:
  /// `regs`: host-physical address of the register set; `alloc_frame`
  /// gives zeroed 4 KiB frames of hypervisor memory.
  IommuDriver(std::uint64_t regs, std::function<std::uint64_t()> alloc_frame, stats::Group* parent);

  bool up() const { return m_up; }
  /// Probes the unit and turns DMA remapping on with the legacy-mode root
  /// table at `root_table`; `aw` is the second-level address width the
  /// caller's context entries use (SAGAW must offer it). Throws
  /// cpu::SimulationError naming what the unit lacks.
  /// With `scalable`, the root table is in scalable-mode format (TTM 01b;
  /// the unit must offer ECAP.SMTS and, for dirty tracking, ECAP.SLADS).
  void bring_up(cpu::Core& c, std::uint64_t root_table, unsigned aw, bool scalable = false);
  bool scalable() const { return m_scalable; }
  /// Interrupt remapping with the table at `irt` (2^(size_code + 1)
  /// entries, x2APIC destinations when `eime`).
  void enable_interrupt_remapping(cpu::Core& c, std::uint64_t irt, unsigned size_code, bool eime);
  bool interrupt_remapping() const { return m_gcmd & iommu::vtd::gcmd::kIre; }

  /// After a context entry for `sid` in domain `did` changed: device-
  /// selective context-cache and domain-selective IOTLB invalidation (VT-d
  /// 6.5.3.1), then a wait.
  void flush_device(cpu::Core& c, std::uint16_t sid, std::uint16_t did);
  /// After IRTE `index` changed: index-selective interrupt-entry-cache
  /// invalidation, then a wait.
  void flush_irte(cpu::Core& c, std::uint16_t index);
  /// Scalable mode: PASID-selective IOTLB invalidation of (did, pasid)
  /// (VT-d 6.5.2.4), then a wait: after second-level dirty flags were
  /// cleared, the unit's cached translations (which remember the flag as
  /// set) go, so the next DMA write sets it again.
  void flush_pasid_iotlb(cpu::Core& c, std::uint16_t did, std::uint32_t pasid);

 private:
  std::uint64_t read(cpu::Core& c, std::uint64_t offset, unsigned size);
  void write(cpu::Core& c, std::uint64_t offset, std::uint64_t value, unsigned size);
  /// GCMD: the kept enables plus `cmd`; polls GSTS until `status` is set
  /// (or, for a disable, clear).
  void command(cpu::Core& c, std::uint32_t cmd, std::uint32_t status, bool keep);
  /// Queues descriptors (two quadwords each) and a wait descriptor, rings
  /// IQT and polls the wait's status word (Linux: qi_submit_sync).
  void submit(cpu::Core& c, const std::uint64_t (*desc)[2], unsigned n);
  std::uint64_t m_regs;
  std::function<std::uint64_t()> m_alloc;
  bool m_up = false;
  bool m_scalable = false;
  std::uint32_t m_gcmd = 0;      // enables kept (Linux: iommu->gcmd)
  std::uint64_t m_queue = 0;     // the invalidation queue: one page, 256 128-bit descriptors
  std::uint64_t m_tail = 0;      // next free descriptor, byte offset
  std::uint64_t m_status = 0;    // the wait descriptors' status word

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "iommu_driver", "the hypervisor's VT-d driver") {}
    stats::Counter register_reads{this, "register_reads", "accesses", "VT-d register reads (MMIO)"};
    stats::Counter register_writes{this, "register_writes", "accesses", "VT-d register writes (MMIO)"};
    stats::Counter submissions{this, "submissions", "batches", "descriptor batches queued and waited for"};
    stats::Counter descriptors{this, "descriptors", "descriptors", "descriptors queued, wait descriptors included"};
    stats::Counter polls{this, "polls", "iterations", "status polls (load, FSTS read, PAUSE) before completion"};
  } m_stats;
  // The queue lock (Linux: qi->q_lock), a fair ticket lock on its own line.
  LockStats m_lock_stats{&m_stats, "queue_lock", "the invalidation queue's lock (hypervisor/spinlock.h)"};
  TicketLock m_lock;
};

}  // namespace vmx::hv
