#include "models/root_complex.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "models/cache.h"
#include "models/coherence.h"
#include "models/phys_mem.h"

namespace vmx::models {

namespace {
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kLine = 64;
// A DMA may span at most this many 4 KiB pages (64 KiB plus a partial page
// at each end); PCIe itself caps a request at 4 KiB (Max_Read_Request_Size,
// Max_Payload_Size, PCIe 5.0 7.5.3.4), so devices that follow it never come
// close.
constexpr std::size_t kMaxPieces = 18;
}  // namespace

RequesterStats::RequesterStats(stats::Group* parent, const std::string& name)
    : Group(parent, name, "DMA of one requester ID (bus_device_function, hex)") {}

RootComplexStats::RootComplexStats(stats::Group* parent, const std::string& name)
    : Group(parent, name, "PCIe root complex: device DMA, MSIs, MMIO") {}

IommuTableMemory::IommuTableMemory(PhysMem& mem, Cache* llc, const RootComplexParams& p)
    : m_mem(mem), m_llc(llc), m_memory_latency(p.memory_latency), m_llc_latency(p.llc_latency) {}

std::uint32_t IommuTableMemory::cost(std::uint64_t pa, bool write) {
  if (m_coherence) {
    if (write)
      m_coherence->dma_write(pa);
    else
      m_coherence->dma_read(pa);
  }
  if (!m_llc) return m_memory_latency;
  return m_llc->access(pa, write) ? m_llc_latency : m_llc_latency + m_memory_latency;
}

std::uint64_t IommuTableMemory::read_entry(std::uint64_t pa, std::uint32_t& cycles) {
  if (!m_mem.contains(pa, 8)) return 0;  // beyond memory: reads as not present
  cycles += cost(pa, false);
  return m_mem.read(pa, 8);
}

void IommuTableMemory::write_entry(std::uint64_t pa, std::uint64_t value, std::uint32_t& cycles) {
  if (!m_mem.contains(pa, 8)) return;
  cycles += cost(pa, true);
  m_mem.write(pa, value, 8);
}

RootComplex::RootComplex(sc_core::sc_module_name name, const RootComplexParams& params, PhysMem& mem,
                         iommu::Iommu* iommu, Cache* llc, stats::Group* parent)
    : sc_module(name),
      dma("dma"),
      mmio_out("mmio_out"),
      m_params(params),
      m_mem(mem),
      m_iommu(iommu),
      m_llc(llc),
      m_stats(parent, basename()) {
  if (!params.frequency) throw std::invalid_argument(std::string(basename()) + ": frequency must be non-zero");
  if (!params.bytes_per_cycle)
    throw std::invalid_argument(std::string(basename()) + ": bytes_per_cycle must be non-zero");
  dma.register_b_transport(this, &RootComplex::b_transport);
}

sc_core::sc_time RootComplex::time_of(std::uint64_t cycles) const {
  const unsigned __int128 ps = static_cast<unsigned __int128>(cycles) * cfg::kPsPerSecond / m_params.frequency;
  return sc_core::sc_time::from_value(static_cast<sc_dt::uint64>(ps));
}

std::string RootComplex::requester_name(std::uint16_t rid) {
  return fmt::format("rid_{:02x}_{:02x}_{:x}", rid >> 8, (rid >> 3) & 0x1F, rid & 7);
}

RequesterStats& RootComplex::requester(std::uint16_t rid) {
  auto it = m_requesters.find(rid);
  if (it != m_requesters.end()) return *it->second;
  RequesterStats& s = m_stats.make_group<RequesterStats>(requester_name(rid));
  m_requesters.emplace(rid, &s);
  return s;
}

const RequesterStats* RootComplex::requester_stats(std::uint16_t rid) const {
  auto it = m_requesters.find(rid);
  return it == m_requesters.end() ? nullptr : it->second;
}

iommu::TranslateResult RootComplex::translate(const DmaContext& ctx, std::uint64_t addr, bool write,
                                              std::uint64_t& hpa, std::uint32_t& cycles) {
  if (!m_iommu || !m_iommu->enabled()) {
    hpa = addr;
    return {};
  }
  iommu::DmaRequest req;
  req.requester_id = ctx.requester;
  req.address = addr;
  req.access = write ? iommu::DmaAccess::Write : iommu::DmaAccess::Read;
  req.has_pasid = ctx.has_pasid;
  req.pasid = ctx.pasid;
  req.privileged = ctx.privileged;
  req.execute = ctx.execute;
  return m_iommu->translate(req, hpa, cycles);
}

bool RootComplex::llc_lookup(std::uint64_t hpa, std::uint64_t len, bool write) {
  // Every line looks up the LLC's tags and allocates on a miss, as DDIO
  // writes do; returns true if any line missed.
  bool miss = false;
  for (std::uint64_t line = hpa & ~(kLine - 1); line < hpa + len; line += kLine) {
    if (m_llc->access(line, write)) {
      ++m_stats.llc_hits;
    } else {
      ++m_stats.llc_misses;
      miss = true;
    }
  }
  return miss;
}

// The DRAM model's counterpart of llc_lookup (kept apart from it): lines are
// sent to DRAM together, as a DMA engine pipelines them, so the transaction
// waits for the slowest.
std::uint64_t RootComplex::llc_dram_lookup(std::uint64_t hpa, std::uint64_t len, bool write, std::uint64_t at_ps) {
  std::uint64_t worst = 0;
  for (std::uint64_t line = hpa & ~(kLine - 1); line < hpa + len; line += kLine) {
    std::uint64_t victim = Cache::kNoWriteback;
    if (m_llc->access(line, write, &victim)) {
      ++m_stats.llc_hits;
    } else {
      ++m_stats.llc_misses;
      if (!write) worst = std::max(worst, m_dram->access(line, false, m_dram_requester, at_ps));
    }
    if (victim != Cache::kNoWriteback) m_dram->access(victim, true, m_dram_requester, at_ps);
  }
  return worst;
}

void RootComplex::snoop_cores(std::uint64_t hpa, std::uint64_t len, bool write) {
  // DMA is snooped on x86: a write invalidates the cores' copies of each
  // line it touches (its data replaces theirs in memory), a read takes the
  // current data (PhysMem holds it) and leaves their copies alone.
  for (std::uint64_t line = hpa & ~(kLine - 1); line < hpa + len; line += kLine) {
    if (write)
      m_coherence->dma_write(line);
    else
      m_coherence->dma_read(line);
  }
}

void RootComplex::b_transport(tlm::tlm_generic_payload& trans, sc_core::sc_time& delay) {
  const DmaContext* ctx = nullptr;
  trans.get_extension(ctx);
  if (!ctx)
    throw std::invalid_argument(std::string(name()) + ": DMA transaction at 0x" +
                                fmt::format("{:x}", trans.get_address()) + " carries no DmaContext");
  const std::uint16_t rid = ctx->requester;
  const std::uint64_t addr = trans.get_address();
  const std::uint64_t len = trans.get_data_length();
  const bool write = trans.is_write();
  if (!write && !trans.is_read()) {
    trans.set_response_status(tlm::TLM_COMMAND_ERROR_RESPONSE);
    return;
  }
  RequesterStats& rs = requester(rid);

  // Interrupt messages (SDM Vol. 3A, 11.11.1; VT-d 5.1): a DWORD write to
  // 0xFEEx_xxxx goes to the interrupt fabric, never to memory or the DMA
  // remapping tables.
  if (write && is_msi_address(addr)) {
    MsiMessage m;
    m.address = addr;
    m.requester = rid;
    std::uint8_t buf[4] = {};
    std::memcpy(buf, trans.get_data_ptr(), len < 4 ? len : 4);
    m.data = std::uint32_t(buf[0]) | std::uint32_t(buf[1]) << 8 | std::uint32_t(buf[2]) << 16 |
             std::uint32_t(buf[3]) << 24;
    ++rs.msis;
    if (m_msi) {
      ++m_stats.msis;
      m_msi->msi(m);
    } else {
      ++m_stats.msis_unclaimed;
    }
    trans.set_response_status(tlm::TLM_OK_RESPONSE);
    return;
  }

  // Split at 4 KiB boundaries and translate every piece before touching
  // memory, so that a request blocked on any page changes nothing.
  std::array<std::uint64_t, kMaxPieces> hpa{};
  std::array<std::uint64_t, kMaxPieces> size{};
  std::size_t pieces = 0;
  std::uint32_t tcycles = 0;
  bool blocked = false;
  iommu::FaultReason reason = iommu::FaultReason::kNone;
  for (std::uint64_t a = addr, left = len; left > 0;) {
    const std::uint64_t n = std::min(left, kPage - (a & (kPage - 1)));
    if (pieces == kMaxPieces) {
      trans.set_response_status(tlm::TLM_BURST_ERROR_RESPONSE);
      return;
    }
    if (const iommu::TranslateResult r = translate(*ctx, a, write, hpa[pieces], tcycles); !r.ok()) {
      blocked = true;
      reason = r.reason;
      break;
    }
    size[pieces++] = n;
    a += n;
    left -= n;
  }
  m_stats.translation_cycles += tcycles;
  rs.translation_cycles += tcycles;
  delay += time_of(tcycles);
  if (blocked) {
    ++m_stats.blocked;
    ++rs.blocked;
    if (m_events.wants(events::kDmaBlocked))
      m_events.dma_blocked({(sc_core::sc_time_stamp() + delay).value(), addr, rid, static_cast<std::uint32_t>(reason),
                            write});
    trans.set_response_status(tlm::TLM_ADDRESS_ERROR_RESPONSE);
    return;
  }
  for (std::size_t i = 0; i < pieces; ++i) {
    if (!m_mem.contains(hpa[i], size[i])) {
      ++m_stats.unclaimed;
      trans.set_response_status(tlm::TLM_ADDRESS_ERROR_RESPONSE);
      return;
    }
  }

  // Timing: one access latency per transaction (the LLC's if every line
  // hits it, else the LLC's plus memory's; memory's alone without an LLC),
  // then the bytes stream at bytes_per_cycle.
  bool miss = m_llc == nullptr;
  std::uint64_t dram_ps = 0;  // with the DRAM model: the slowest line's DRAM latency
  const std::uint64_t at_ps = (sc_core::sc_time_stamp() + delay).value();  // resolution: 1 ps
  std::uint8_t* data = trans.get_data_ptr();
  for (std::size_t i = 0; i < pieces; ++i) {
    if (write)
      m_mem.write_bytes(hpa[i], data, size[i]);
    else
      m_mem.read_bytes(hpa[i], data, size[i]);
    data += size[i];
    if (m_coherence) snoop_cores(hpa[i], size[i], write);
    if (m_dram && m_llc)
      dram_ps = std::max(dram_ps, llc_dram_lookup(hpa[i], size[i], write, at_ps));
    else if (m_llc && llc_lookup(hpa[i], size[i], write))
      miss = true;
  }
  std::uint32_t mcycles = m_llc ? m_params.llc_latency : 0;
  if (miss) mcycles += m_params.memory_latency;
  if (dram_ps)
    mcycles += static_cast<std::uint32_t>(
        (static_cast<unsigned __int128>(dram_ps) * m_params.frequency + cfg::kPsPerSecond - 1) / cfg::kPsPerSecond);
  mcycles += static_cast<std::uint32_t>((len + m_params.bytes_per_cycle - 1) / m_params.bytes_per_cycle);
  m_stats.pages += pieces;
  m_stats.memory_cycles += mcycles;
  delay += time_of(mcycles);
  if (write) {
    ++m_stats.dma_writes;
    m_stats.dma_write_bytes += len;
    ++rs.writes;
    rs.write_bytes += len;
  } else {
    ++m_stats.dma_reads;
    m_stats.dma_read_bytes += len;
    ++rs.reads;
    rs.read_bytes += len;
  }
  trans.set_response_status(tlm::TLM_OK_RESPONSE);
}

void RootComplex::mmio(tlm::tlm_generic_payload& trans, sc_core::sc_time& delay) {
  if (mmio_out.size() == 0) {
    ++m_stats.mmio_unclaimed;
    trans.set_response_status(tlm::TLM_ADDRESS_ERROR_RESPONSE);
    return;
  }
  ++m_stats.mmio;
  mmio_out->b_transport(trans, delay);
}

}  // namespace vmx::models
