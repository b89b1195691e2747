#include "hypervisor/iommu_driver.h"

#include <fmt/format.h>

#include "iommu/vtd_formats.h"
#include "iommu/vtd_regs.h"

namespace vmx::hv {

namespace {
namespace vtd = iommu::vtd;
namespace qi = iommu::qi;
namespace gcmd = iommu::vtd::gcmd;
/// GSTS polls before the driver gives up on the unit (Linux waits
/// DMAR_OPERATION_TIMEOUT, then panics).
constexpr unsigned kMaxStatusPolls = 1000;
/// Wait-descriptor polls before giving up (a hung queue is a model bug).
constexpr unsigned kMaxWaitPolls = 1u << 20;
/// The status values of the wait descriptor (Linux: QI_IN_USE, QI_DONE).
constexpr std::uint32_t kInUse = 0, kDone = 1;
}  // namespace

IommuDriver::IommuDriver(std::uint64_t regs, std::function<std::uint64_t()> alloc_frame, stats::Group* parent)
    : m_regs(regs), m_alloc(std::move(alloc_frame)), m_stats(parent) {}

std::uint64_t IommuDriver::read(cpu::Core& c, std::uint64_t offset, unsigned size) {
  ++m_stats.register_reads;
  return c.load(m_regs + offset, size);
}

void IommuDriver::write(cpu::Core& c, std::uint64_t offset, std::uint64_t value, unsigned size) {
  ++m_stats.register_writes;
  c.store(m_regs + offset, value, size);
}

void IommuDriver::command(cpu::Core& c, std::uint32_t cmd, std::uint32_t status, bool keep) {
  if (keep) m_gcmd |= cmd & gcmd::kLevel;
  else m_gcmd &= ~cmd;
  write(c, vtd::kGcmd, keep ? (m_gcmd | cmd) : m_gcmd, 4);
  for (unsigned i = 0;; ++i) {
    const bool set = (read(c, vtd::kGsts, 4) & status) != 0;
    if (set == keep) return;
    if (i == kMaxStatusPolls)
      throw cpu::SimulationError(fmt::format("iommu driver: GSTS bit {:#x} did not follow GCMD", status));
    c.pause();
  }
}

void IommuDriver::bring_up(cpu::Core& c, std::uint64_t root_table, unsigned aw, bool scalable) {
  if (m_up) return;
  const std::uint64_t cap = read(c, vtd::kCap, 8);
  const std::uint64_t ecap = read(c, vtd::kEcap, 8);
  if (!(ecap & vtd::ecap::kQi))
    throw cpu::SimulationError("iommu driver: the remapping unit has no queued invalidation (ECAP.QI)");
  if (!(ecap & vtd::ecap::kPt))
    throw cpu::SimulationError("iommu driver: the remapping unit has no pass-through (ECAP.PT) for the PF");
  if (!((vtd::cap::sagaw(cap) >> aw) & 1))
    throw cpu::SimulationError(fmt::format("iommu driver: SAGAW {:#x} lacks the {}-bit address width", vtd::cap::sagaw(cap),
                                           iommu::ctx::aw_bits(aw)));
  if (scalable && !((ecap & vtd::ecap::kSmts) && (ecap & vtd::ecap::kSlads)))
    throw cpu::SimulationError("iommu driver: the remapping unit has no scalable mode with second-level "
                               "accessed/dirty flags (ECAP.SMTS, ECAP.SLADS)");
  m_scalable = scalable;
  m_queue = m_alloc();
  m_status = m_alloc();
  m_lock = TicketLock(m_status + 64, &m_lock_stats);  // its own cache line

  // Queued invalidation (VT-d 6.5.2): one page of 128-bit descriptors.
  write(c, vtd::kIqt, 0, 8);
  write(c, vtd::kIqa, vtd::iqa::make(m_queue, 0, false), 8);
  m_tail = 0;
  command(c, gcmd::kQie, gcmd::kQie, true);
  // The root table (11.4.5, 6.5: software invalidates after SRTP).
  write(c, vtd::kRtaddr, iommu::rtaddr::make(root_table, scalable ? iommu::rtaddr::kTtmScalable : iommu::rtaddr::kTtmLegacy), 8);
  command(c, gcmd::kSrtp, gcmd::kSrtp, true);  // GSTS.RTPS
  const std::uint64_t global[3][2] = {{qi::context_cache(1).w[0], qi::context_cache(1).w[1]},
                                      {qi::iotlb(1).w[0], qi::iotlb(1).w[1]},
                                      {qi::pasid_cache(3).w[0], qi::pasid_cache(3).w[1]}};
  submit(c, global, scalable ? 3 : 2);
  command(c, gcmd::kTe, gcmd::kTe, true);
  m_up = true;
}

void IommuDriver::enable_interrupt_remapping(cpu::Core& c, std::uint64_t irt, unsigned size_code, bool eime) {
  if (m_gcmd & gcmd::kIre) return;
  write(c, vtd::kIrta, (irt & ~0xFFFull) | (eime ? 1ull << 11 : 0) | (size_code & 0xF), 8);
  command(c, gcmd::kSirtp, gcmd::kSirtp, true);  // GSTS.IRTPS
  const std::uint64_t iec[1][2] = {{qi::iec().w[0], qi::iec().w[1]}};
  submit(c, iec, 1);
  command(c, gcmd::kIre, gcmd::kIre, true);
}

void IommuDriver::flush_device(cpu::Core& c, std::uint16_t sid, std::uint16_t did) {
  if (m_scalable) {
    // Scalable mode (VT-d 6.5.3.3): the context entry, the domain's PASID
    // entries, then its translations of RID_PASID 0.
    const qi::Descriptor128 cc = qi::context_cache(3, did, sid), pc = qi::pasid_cache(0, did),
                            tlb = qi::pasid_iotlb(2, did, 0);
    const std::uint64_t d[3][2] = {{cc.w[0], cc.w[1]}, {pc.w[0], pc.w[1]}, {tlb.w[0], tlb.w[1]}};
    submit(c, d, 3);
    return;
  }
  const qi::Descriptor128 cc = qi::context_cache(3, did, sid), tlb = qi::iotlb(2, did);
  const std::uint64_t d[2][2] = {{cc.w[0], cc.w[1]}, {tlb.w[0], tlb.w[1]}};
  submit(c, d, 2);
}

void IommuDriver::flush_pasid_iotlb(cpu::Core& c, std::uint16_t did, std::uint32_t pasid) {
  const qi::Descriptor128 t = qi::pasid_iotlb(2, did, pasid);
  const std::uint64_t d[1][2] = {{t.w[0], t.w[1]}};
  submit(c, d, 1);
}

void IommuDriver::flush_irte(cpu::Core& c, std::uint16_t index) {
  const qi::Descriptor128 e = qi::iec(true, index);
  const std::uint64_t d[1][2] = {{e.w[0], e.w[1]}};
  submit(c, d, 1);
}

void IommuDriver::submit(cpu::Core& c, const std::uint64_t (*desc)[2], unsigned n) {
  constexpr std::uint64_t kQueueBytes = 4096, kDesc = 16;
  m_lock.lock(c);
  ++m_stats.submissions;
  // Every batch is waited for under the lock, so the queue is empty here
  // and n + 1 descriptors always fit.
  auto put = [&](std::uint64_t w0, std::uint64_t w1) {
    c.store(m_queue + m_tail, w0);
    c.store(m_queue + m_tail + 8, w1);
    m_tail = (m_tail + kDesc) % kQueueBytes;
    ++m_stats.descriptors;
  };
  for (unsigned i = 0; i < n; ++i) put(desc[i][0], desc[i][1]);
  c.store(m_status, kInUse, 4);
  const qi::Descriptor128 w = qi::wait(m_status, kDone);
  put(w.w[0], w.w[1]);
  write(c, vtd::kIqt, m_tail, 4);
  for (unsigned i = 0; c.load(m_status, 4) != kDone; ++i) {
    ++m_stats.polls;
    if (read(c, vtd::kFsts, 4) & vtd::fsts::kIqe) {
      m_lock.unlock(c);
      throw cpu::SimulationError(fmt::format("iommu driver: invalidation queue error at IQH {:#x}",
                                             read(c, vtd::kIqh, 8)));
    }
    if (i == kMaxWaitPolls) {
      m_lock.unlock(c);
      throw cpu::SimulationError("iommu driver: the invalidation wait descriptor never completed");
    }
    c.pause();
  }
  m_lock.unlock(c);
}

}  // namespace vmx::hv
