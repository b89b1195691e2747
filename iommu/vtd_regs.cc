#include "iommu/vtd_regs.h"

#include <stdexcept>

#include "iommu/interrupt_remap.h"

namespace vmx::iommu {

namespace {
using namespace vtd;

/// One register of the set: where it is, how wide, and which of its bits
/// software may write (the rest are read-only or reserved and read as the
/// register's state or 0). RW1C bits are handled by the register's write.
struct RegDef {
  std::uint64_t offset;
  unsigned width;        // bytes: 4 or 8
  std::uint64_t rw;      // bits software writes (stored as written)
};
// VT-d 11.4.x: writable fields of each register; everything else is
// read-only or reserved (reads 0).
constexpr RegDef kRegs[] = {
    {kVer, 4, 0},
    {kCap, 8, 0},
    {kEcap, 8, 0},
    {kGcmd, 4, gcmd::kLevel | gcmd::kOneShot},
    {kGsts, 4, 0},
    {kRtaddr, 8, 0x000FFFFFFFFFFC00ull},  // RTA 63:12, TTM 11:10
    {kCcmd, 8, ccmd::kIcc | (3ull << ccmd::kCirgShift) | (3ull << ccmd::kFmShift) | (0xFFFFull << ccmd::kSidShift) |
                   ccmd::kDidMask},
    {kFsts, 4, fsts::kRw1c},
    {kFectl, 4, ectl::kIm},
    {kFedata, 4, 0xFFFF},
    {kFeaddr, 4, 0xFFFFFFFCu},
    {kFeuaddr, 4, 0xFFFFFFFFu},
    {kIqh, 8, 0},
    {kIqt, 8, iqa::kOffsetMask},
    {kIqa, 8, iqa::kBaseMask | iqa::kDw256 | iqa::kQsMask},
    {kIcs, 4, ics::kIwc},
    {kIectl, 4, ectl::kIm},
    {kIedata, 4, 0xFFFF},
    {kIeaddr, 4, 0xFFFFFFFCu},
    {kIeuaddr, 4, 0xFFFFFFFFu},
    {kIrta, 8, irta::kMask},
    {kIva, 8, ~0xF80ull},  // ADDR 63:12, IH 6, AM 5:0
    {kIotlb, 8, iotlbreg::kIvt | (3ull << iotlbreg::kIirgShift) | iotlbreg::kDr | iotlbreg::kDw |
                    (0xFFFFull << iotlbreg::kDidShift)},
};

const RegDef* find_reg(std::uint64_t offset) {
  for (const RegDef& r : kRegs)
    if (offset >= r.offset && offset < r.offset + r.width) return &r;
  return nullptr;
}

constexpr std::uint64_t size_mask(unsigned size) { return size >= 8 ? ~0ull : (1ull << (8 * size)) - 1; }
}  // namespace

VtdRegisters::VtdRegisters(const VtdParams& params, Iommu& dmar, InterruptRemap* ir, mmu::TableMemory& mem,
                           stats::Group* parent, const std::string& name)
    : m_p(params), m_dmar(dmar), m_ir(ir), m_mem(mem), m_stats(parent, name) {
  const unsigned nfr = dmar.params().fault_records;
  if (nfr < 1 || nfr > 256) throw std::invalid_argument("vtd: fault_records must be 1 to 256");
  // CAP_REG (11.4.2): 256 domains (ND = 2: the model's domain IDs are 16
  // bits, but VMs use few), SAGAW 39/48/57 bits, MGAW 57 bits, 2 MiB and
  // 1 GiB second-level pages, page-selective invalidation up to 2^MAMV
  // pages, first-level 1 GiB pages and 5-level paging, posted interrupts.
  m_cap = (2ull << cap::kNdShift) | (0xEull << cap::kSagawShift) | (56ull << cap::kMgawShift) |
          (std::uint64_t(kFro) << cap::kFroShift) | (3ull << cap::kSllpsShift) | cap::kPsi |
          (std::uint64_t(nfr - 1) << cap::kNfrShift) | (std::uint64_t(cap::kMamv) << cap::kMamvShift) |
          cap::kDwd | cap::kDrd | cap::kFl1gp | cap::kFl5lp | (ir ? cap::kPi : 0);
  // ECAP_REG (11.4.3): page-walk coherency (table walks snoop the caches:
  // root_complex.h IommuTableMemory), queued invalidation, pass-through,
  // nested translation, PASIDs of 20 bits, scalable mode with first- and
  // second-level translation and second-level A/D; interrupt remapping
  // with x2APIC destinations when the remapping unit is present.
  m_ecap = ecap::kC | ecap::kQi | ecap::kPt | (std::uint64_t(kIro) << ecap::kIroShift) | ecap::kNest |
           (19ull << ecap::kPssShift) | ecap::kPasid | ecap::kSmts | ecap::kSlads | ecap::kSlts | ecap::kFlts |
           ecap::kSmpwc | (ir ? ecap::kIr | ecap::kEim | (0xFull << ecap::kMhmvShift) : 0);
  m_size = (kFrcd + nfr * kFrcdSize + 4095) & ~4095ull;
  dmar.set_fault_hook([this](bool overflow) {
    // The status before this fault (a recorded one is already in the log).
    const bool had = (m_fsts & (fsts::kPfo | fsts::kIqe)) || m_dmar.fault_log().size() > (overflow ? 0u : 1u);
    if (overflow) m_fsts |= fsts::kPfo;
    // 7.3: an event only when the status goes from clear to set.
    if (!had) fault_event();
  });
}

std::uint32_t VtdRegisters::fsts() const {
  std::uint32_t v = m_fsts;
  if (!m_dmar.fault_log().empty()) v |= fsts::kPpf;
  v |= (m_dmar.fault_index() & 0xFF) << fsts::kFriShift;
  return v;
}

std::uint64_t VtdRegisters::read64(std::uint64_t reg) const {
  switch (reg) {
    case kVer: return kVersion;
    case kCap: return m_cap;
    case kEcap: return m_ecap;
    case kGcmd: return 0;  // write-only
    case kGsts: return m_gsts;
    case kRtaddr: return m_rtaddr;
    case kCcmd: return m_ccmd;
    case kFsts: return fsts();
    case kFectl: return m_fectl;
    case kFedata: return m_fedata;
    case kFeaddr: return m_feaddr;
    case kFeuaddr: return m_feuaddr;
    case kIqh: return m_iqh;
    case kIqt: return m_iqt;
    case kIqa: return m_iqa;
    case kIcs: return m_ics;
    case kIectl: return m_iectl;
    case kIedata: return m_iedata;
    case kIeaddr: return m_ieaddr;
    case kIeuaddr: return m_ieuaddr;
    case kIrta: return m_irta;
    case kIva: return m_iva;
    case kIotlb: return m_iotlb;
    default: return 0;
  }
}

std::uint64_t VtdRegisters::read(std::uint64_t offset, unsigned size, std::uint64_t now) {
  advance(now);
  ++m_stats.reads;
  if ((size != 4 && size != 8) || (offset & (size - 1))) {
    ++m_stats.unimplemented;
    return 0;
  }
  // Fault-recording registers (11.4.7.4).
  const unsigned nfr = cap::nfr(m_cap);
  if (offset >= kFrcd && offset < kFrcd + nfr * kFrcdSize) {
    const auto slot = static_cast<unsigned>((offset - kFrcd) / kFrcdSize);
    const FaultRecord* f = m_dmar.fault_in(slot);
    std::uint64_t q[2] = {0, 0};
    if (f) {
      q[0] = f->address & ~0xFFFull;
      q[1] = (std::uint64_t(f->requester_id) << frcd::kSidShift) | (f->privileged ? frcd::kPriv : 0) |
             (f->execute ? frcd::kExe : 0) | (f->has_pasid ? frcd::kPp : 0) |
             (std::uint64_t(static_cast<std::uint8_t>(f->reason)) << frcd::kFrShift) |
             (std::uint64_t(f->pasid & 0xFFFFF) << frcd::kPvShift) |
             (f->access == DmaAccess::Read ? frcd::kRead : 0) | frcd::kF;
    }
    const std::uint64_t in = offset - kFrcd - slot * kFrcdSize;
    const std::uint64_t v = q[in / 8] >> (8 * (in % 8));
    return v & size_mask(size);
  }
  const RegDef* r = find_reg(offset);
  if (!r || offset + size > r->offset + r->width) {
    ++m_stats.unimplemented;
    return 0;
  }
  return (read64(r->offset) >> (8 * (offset - r->offset))) & size_mask(size);
}

void VtdRegisters::write(std::uint64_t offset, std::uint64_t value, unsigned size, std::uint64_t now) {
  advance(now);
  ++m_stats.writes;
  if ((size != 4 && size != 8) || (offset & (size - 1))) {
    ++m_stats.unimplemented;
    return;
  }
  const unsigned nfr = cap::nfr(m_cap);
  if (offset >= kFrcd && offset < kFrcd + nfr * kFrcdSize) {
    // Only F (bit 127) is writable: write 1 to clear the record.
    const auto slot = static_cast<unsigned>((offset - kFrcd) / kFrcdSize);
    const std::uint64_t in = offset - kFrcd - slot * kFrcdSize;
    const std::uint64_t f_bit_at = 15 * 8 + 7;  // bit 127 of the register
    if (in * 8 <= f_bit_at && f_bit_at < (in + size) * 8 && ((value >> (f_bit_at - in * 8)) & 1))
      m_dmar.clear_fault(slot);
    return;
  }
  const RegDef* r = find_reg(offset);
  if (!r || offset + size > r->offset + r->width) {
    ++m_stats.unimplemented;
    return;
  }
  const unsigned shift = static_cast<unsigned>(8 * (offset - r->offset));
  write_reg(r->offset, (value & size_mask(size)) << shift, size_mask(size) << shift, now);
}

// `value` and `mask` are aligned to the register: the bytes written, the
// rest of the register unchanged.
void VtdRegisters::write_reg(std::uint64_t reg, std::uint64_t value, std::uint64_t mask, std::uint64_t now) {
  const RegDef& def = *find_reg(reg);
  auto merged = [&](std::uint64_t old) { return ((old & ~mask) | (value & mask)) & def.rw; };
  switch (reg) {
    case kGcmd:
      command(static_cast<std::uint32_t>(value & def.rw), now);
      break;
    case kRtaddr: m_rtaddr = merged(m_rtaddr); break;
    case kCcmd:
      m_ccmd = merged(m_ccmd);
      if (m_ccmd & ccmd::kIcc) context_command(m_ccmd);
      break;
    case kIva: m_iva = merged(m_iva); break;
    case kIotlb:
      m_iotlb = merged(m_iotlb);
      if (m_iotlb & iotlbreg::kIvt) iotlb_command(m_iotlb);
      break;
    case kFsts: {
      // RW1C (11.4.7.1); clearing IQE lets the queue go on (6.5.2.10).
      const std::uint32_t clear = static_cast<std::uint32_t>(value & mask & fsts::kRw1c);
      m_fsts &= ~clear;
      break;
    }
    case kFectl: {
      const bool was_masked = m_fectl & ectl::kIm;
      m_fectl = static_cast<std::uint32_t>((m_fectl & ~ectl::kIm) | (merged(m_fectl) & ectl::kIm));
      // Unmasking with an event pending sends it (7.3).
      if (was_masked && !(m_fectl & ectl::kIm) && (m_fectl & ectl::kIp))
        send(m_fectl, m_fedata, m_feaddr, m_feuaddr, m_stats.fault_events);
      break;
    }
    case kFedata: m_fedata = static_cast<std::uint32_t>(merged(m_fedata)); break;
    case kFeaddr: m_feaddr = static_cast<std::uint32_t>(merged(m_feaddr)); break;
    case kFeuaddr: m_feuaddr = static_cast<std::uint32_t>(merged(m_feuaddr)); break;
    case kIqt: {
      m_iqt = merged(m_iqt);
      // A tail beyond the queue, or (256-bit descriptors) not on a
      // descriptor, is a queue error (6.5.2.10).
      if (m_iqt >= queue_bytes() || (m_iqt % descriptor_bytes())) {
        queue_error();
        break;
      }
      if (!m_fetched && m_start < now) m_start = now;
      break;
    }
    case kIqa: m_iqa = merged(m_iqa); break;
    case kIcs: m_ics &= ~static_cast<std::uint32_t>(value & mask & ics::kIwc); break;
    case kIectl: {
      const bool was_masked = m_iectl & ectl::kIm;
      m_iectl = static_cast<std::uint32_t>((m_iectl & ~ectl::kIm) | (merged(m_iectl) & ectl::kIm));
      if (was_masked && !(m_iectl & ectl::kIm) && (m_iectl & ectl::kIp))
        send(m_iectl, m_iedata, m_ieaddr, m_ieuaddr, m_stats.completion_events);
      break;
    }
    case kIedata: m_iedata = static_cast<std::uint32_t>(merged(m_iedata)); break;
    case kIeaddr: m_ieaddr = static_cast<std::uint32_t>(merged(m_ieaddr)); break;
    case kIeuaddr: m_ieuaddr = static_cast<std::uint32_t>(merged(m_ieuaddr)); break;
    case kIrta: m_irta = merged(m_irta); break;
    default: break;  // read-only
  }
}

// GCMD_REG (11.4.4): software writes the enables it wants kept plus at most
// one change; each command's status bit in GSTS follows once it is done
// (here, before the next register access).
void VtdRegisters::command(std::uint32_t value, std::uint64_t now) {
  const std::uint32_t level_changes = (value ^ m_gsts) & gcmd::kLevel;
  const std::uint32_t one_shots = value & gcmd::kOneShot;
  const std::uint32_t cmds = level_changes | one_shots;
  if (cmds == 0) return;
  const bool ir_cmd = (cmds & (gcmd::kIre | gcmd::kSirtp | gcmd::kCfi)) != 0;
  if ((cmds & (cmds - 1)) != 0 || (cmds & (gcmd::kSfl | gcmd::kEafl | gcmd::kWbf)) || (ir_cmd && !m_ir)) {
    // More than one command at a time is undefined (11.4.4); fault logs and
    // write-buffer flushing are not supported (CAP.AFL = RWBF = 0).
    ++m_stats.commands_refused;
    return;
  }
  switch (cmds) {
    case gcmd::kSrtp: {
      // The root table takes effect; caches are not invalidated (6.5).
      const unsigned ttm = rtaddr::ttm(m_rtaddr);
      if (ttm != rtaddr::kTtmLegacy && ttm != rtaddr::kTtmScalable) {
        // Abort-DMA mode (11b, ECAP.ADMS = 0) and 10b are reserved: the
        // command completes without latching the pointer.
        ++m_stats.commands_refused;
        m_gsts |= gcmd::kSrtp;
        return;
      }
      m_dmar.set_root_table(m_rtaddr);
      m_gsts |= gcmd::kSrtp;
      ++m_stats.commands;
      return;
    }
    case gcmd::kTe:
      m_dmar.enable((value & gcmd::kTe) != 0);
      m_gsts = (m_gsts & ~gcmd::kTe) | (value & gcmd::kTe);
      break;
    case gcmd::kQie:
      if (value & gcmd::kQie) {
        // 6.5.2: enabling resets the head; the queue is empty until software
        // moves the tail.
        m_iqh = 0;
        m_fetched = false;
        m_start = now;
        m_gsts |= gcmd::kQie;
      } else {
        m_gsts &= ~gcmd::kQie;
        m_fetched = false;
      }
      break;
    case gcmd::kSirtp:
      m_ir->set_irta(m_irta);
      m_gsts |= gcmd::kSirtp;
      break;
    case gcmd::kIre:
      m_ir->set_enable((value & gcmd::kIre) != 0);
      m_gsts = (m_gsts & ~gcmd::kIre) | (value & gcmd::kIre);
      break;
    case gcmd::kCfi:
      m_ir->set_cfi((value & gcmd::kCfi) != 0);
      m_gsts = (m_gsts & ~gcmd::kCfi) | (value & gcmd::kCfi);
      break;
    default: break;
  }
  ++m_stats.commands;
}

// CCMD_REG (11.4.6.1): CAIG reports the granularity done, 0 for a refused
// request (queued invalidation is on, or a reserved granularity).
void VtdRegisters::context_command(std::uint64_t v) {
  const unsigned g = static_cast<unsigned>((v >> ccmd::kCirgShift) & 3);
  unsigned done = 0;
  if (!(m_gsts & gcmd::kQie)) {
    switch (g) {
      case 1: m_dmar.context_invalidate_global(); done = 1; break;
      case 2: m_dmar.context_invalidate_domain(static_cast<std::uint16_t>(v & ccmd::kDidMask)); done = 2; break;
      case 3:
        m_dmar.context_invalidate_device(static_cast<std::uint16_t>(v >> ccmd::kSidShift),
                                         static_cast<unsigned>((v >> ccmd::kFmShift) & 3));
        done = 3;
        break;
      default: break;
    }
  }
  if (done) ++m_stats.register_invalidations;
  m_ccmd = (v & ~(ccmd::kIcc | (3ull << ccmd::kCaigShift))) | (std::uint64_t(done) << ccmd::kCaigShift);
}

// IOTLB_REG with IVA_REG (11.4.6.2, 11.4.6.3). IAIG 0 reports a refused
// request (queued invalidation on, or AM above CAP.MAMV).
void VtdRegisters::iotlb_command(std::uint64_t v) {
  const unsigned g = static_cast<unsigned>((v >> iotlbreg::kIirgShift) & 3);
  const auto did = static_cast<std::uint16_t>(v >> iotlbreg::kDidShift);
  const unsigned am = static_cast<unsigned>(m_iva & 0x3F);
  unsigned done = 0;
  if (!(m_gsts & gcmd::kQie)) {
    switch (g) {
      case 1: m_dmar.iotlb_invalidate_global(); done = 1; break;
      case 2: m_dmar.iotlb_invalidate_domain(did); done = 2; break;
      case 3:
        if (am <= cap::kMamv) {
          m_dmar.iotlb_invalidate_page(did, m_iva & ~0xFFFull, am, (m_iva >> 6) & 1);
          done = 3;
        }
        break;
      default: break;
    }
  }
  if (done) ++m_stats.register_invalidations;
  m_iotlb = (v & ~(iotlbreg::kIvt | (3ull << iotlbreg::kIaigShift))) | (std::uint64_t(done) << iotlbreg::kIaigShift);
}

void VtdRegisters::queue_error() {
  ++m_stats.queue_errors;
  const bool had = (fsts() & (fsts::kPpf | fsts::kPfo | fsts::kIqe)) != 0;
  m_fsts |= fsts::kIqe;
  m_fetched = false;
  if (!had) fault_event();
}

void VtdRegisters::send(std::uint32_t& ctl, std::uint32_t data, std::uint32_t addr, std::uint32_t uaddr,
                        stats::Counter& n) {
  ctl &= ~ectl::kIp;
  ++n;
  if (m_msi) m_msi((std::uint64_t(uaddr) << 32) | addr, data);
}

void VtdRegisters::fault_event() {
  if (m_fectl & ectl::kIm) {
    m_fectl |= ectl::kIp;
    return;
  }
  send(m_fectl, m_fedata, m_feaddr, m_feuaddr, m_stats.fault_events);
}

std::uint64_t VtdRegisters::next_due() const {
  if (!(m_gsts & gcmd::kQie) || (m_fsts & fsts::kIqe)) return kIdle;
  if (m_fetched) return m_done;
  return m_iqh == m_iqt ? kIdle : m_start;
}

// The queue (6.5.2): descriptors from IQH to IQT, one after another; each
// is fetched when the previous one is done and takes descriptor_latency
// after its fetch. IQH moves past a descriptor once it is done.
void VtdRegisters::advance(std::uint64_t now) {
  for (;;) {
    if (!(m_gsts & gcmd::kQie) || (m_fsts & fsts::kIqe)) return;
    if (!m_fetched) {
      if (m_iqh == m_iqt || m_start > now) return;
      const unsigned words = descriptor_bytes() / 8;
      const std::uint64_t at = (m_iqa & iqa::kBaseMask) + m_iqh;
      std::uint32_t cycles = 0;
      for (unsigned i = 0; i < words; ++i) m_desc[i] = m_mem.read_entry(at + 8 * i, cycles);
      m_stats.descriptor_refs += words;
      m_done = m_start + cycles + m_p.descriptor_latency;
      m_stats.descriptor_cycles += cycles + m_p.descriptor_latency;
      m_fetched = true;
    }
    if (m_done > now) return;
    m_fetched = false;
    if (!execute(m_desc, descriptor_bytes() / 8)) {
      queue_error();  // IQH stays at the bad descriptor
      return;
    }
    ++m_stats.descriptors;
    m_iqh = (m_iqh + descriptor_bytes()) % queue_bytes();
    m_start = m_done;
  }
}

bool VtdRegisters::execute(const std::uint64_t* w, unsigned words) {
  // With 256-bit descriptors the upper half of these types is reserved.
  if (words == 4 && (w[2] | w[3])) return false;
  const unsigned g = qi::gran(w[0]);
  const std::uint16_t did = qi::did(w[0]);
  switch (qi::type(w[0])) {
    case qi::kContextCache:
      switch (g) {
        case 1: m_dmar.context_invalidate_global(); return true;
        case 2: m_dmar.context_invalidate_domain(did); return true;
        case 3:
          m_dmar.context_invalidate_device(static_cast<std::uint16_t>(w[0] >> 32),
                                           static_cast<unsigned>((w[0] >> 48) & 3));
          return true;
        default: return false;
      }
    case qi::kIotlb: {
      const unsigned am = static_cast<unsigned>(w[1] & 0x3F);
      switch (g) {
        case 1: m_dmar.iotlb_invalidate_global(); return true;
        case 2: m_dmar.iotlb_invalidate_domain(did); return true;
        case 3:
          if (am > cap::kMamv) return false;
          m_dmar.iotlb_invalidate_page(did, w[1] & ~0xFFFull, am, (w[1] >> 6) & 1);
          return true;
        default: return false;
      }
    }
    case qi::kPasidIotlb: {
      const unsigned am = static_cast<unsigned>(w[1] & 0x3F);
      switch (g) {
        case 2: m_dmar.pasid_iotlb_invalidate(did, qi::pasid(w[0])); return true;
        case 3:
          if (am > cap::kMamv) return false;
          m_dmar.pasid_iotlb_invalidate_page(did, qi::pasid(w[0]), w[1] & ~0xFFFull, am, (w[1] >> 6) & 1);
          return true;
        default: return false;
      }
    }
    case qi::kPasidCache:
      switch (g) {
        case 0: m_dmar.pasid_cache_invalidate_domain(did); return true;
        case 1: m_dmar.pasid_cache_invalidate_pasid(did, qi::pasid(w[0])); return true;
        case 3: m_dmar.pasid_cache_invalidate_global(); return true;
        default: return false;
      }
    case qi::kIec:
      // The remapping unit caches no IRTE (interrupt_remap.h): nothing to drop.
      return m_ir != nullptr;
    case qi::kWait: {
      if (w[0] & qi::kWaitSw) {
        // The 32-bit status write; the memory port moves quadwords, so it
        // merges the status into its quadword.
        const std::uint64_t addr = w[1] & ~3ull;
        const std::uint64_t q = addr & ~7ull;
        const unsigned sh = static_cast<unsigned>((addr & 4) * 8);
        std::uint32_t cycles = 0;
        const std::uint64_t old = m_mem.read_entry(q, cycles);
        m_mem.write_entry(q, (old & ~(0xFFFFFFFFull << sh)) | (std::uint64_t(w[0] >> 32) << sh), cycles);
        m_stats.descriptor_refs += 2;
        m_stats.descriptor_cycles += cycles;
        m_done += cycles;
      }
      if (w[0] & qi::kWaitIf) {
        const bool had = m_ics & ics::kIwc;
        m_ics |= ics::kIwc;
        if (!had) {
          if (m_iectl & ectl::kIm)
            m_iectl |= ectl::kIp;
          else
            send(m_iectl, m_iedata, m_ieaddr, m_ieuaddr, m_stats.completion_events);
        }
      }
      ++m_stats.waits;
      return true;
    }
    default: return false;  // device-TLB and reserved types
  }
}

}  // namespace vmx::iommu
