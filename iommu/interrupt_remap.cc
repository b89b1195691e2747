#include "iommu/interrupt_remap.h"

namespace vmx::iommu {

InterruptRemap::InterruptRemap(const InterruptRemapParams& p, mmu::TableMemory& mem, stats::Group* parent)
    : m_p(p), m_mem(mem), m_stats(parent) {}

void InterruptRemap::set_irta(std::uint64_t irta) {
  m_table = irta & ~0xFFFull;
  m_eime = (irta >> 11) & 1;
  m_entries = 1u << ((irta & 0xF) + 1);
}

IrResult InterruptRemap::fault(std::uint8_t reason, std::uint16_t index, std::uint16_t source, bool fpd,
                               std::uint32_t cycles) {
  ++m_stats.faults;
  IrResult r;
  r.kind = IrResult::Kind::Blocked;
  r.fault = reason;
  r.cycles = cycles;
  if (fpd) return r;  // FPD: blocked, not recorded (VT-d 9.10)
  if (m_faults.size() >= m_p.fault_records) ++m_stats.faults_overflowed;
  else m_faults.push_back({reason, index, source});
  return r;
}

// Source validation (VT-d 9.10, SVT/SQ/SID).
bool InterruptRemap::source_ok(std::uint64_t hi, std::uint16_t requester) {
  const auto sid = static_cast<std::uint16_t>(hi >> irte::kSidShift);
  const unsigned sq = (hi >> irte::kSqShift) & 3, svt = (hi >> irte::kSvtShift) & 3;
  switch (svt) {
    case irte::kSvtNone: return true;
    case irte::kSvtRequester: {
      // SQ: 00 all 16 bits, 01 ignore function bit 2, 10 bits 2:1, 11 bits 2:0.
      static constexpr std::uint16_t kMask[4] = {0xFFFF, 0xFFFB, 0xFFF9, 0xFFF8};
      return (sid & kMask[sq]) == (requester & kMask[sq]);
    }
    case irte::kSvtBus: {
      // SID[15:8] is the first bus, SID[7:0] the last.
      unsigned bus = requester >> 8;
      return bus >= (sid >> 8) && bus <= (sid & 0xFFu);
    }
    default: return false;  // reserved
  }
}

IrResult InterruptRemap::remap(const MsiMessage& m) {
  ++m_stats.requests;
  std::uint32_t cycles = 0;
  auto ref = [&](std::uint64_t pa) {
    ++m_stats.refs;
    std::uint32_t c = 0;
    std::uint64_t v = m_mem.read_entry(pa, c);
    cycles += c + m_p.memory_latency;
    m_stats.cycles += c + m_p.memory_latency;
    return v;
  };
  auto write = [&](std::uint64_t pa, std::uint64_t v) {
    ++m_stats.refs;
    std::uint32_t c = 0;
    m_mem.write_entry(pa, v, c);
    cycles += c + m_p.memory_latency;
    m_stats.cycles += c + m_p.memory_latency;
  };

  if (!((m.address >> 4) & 1)) {
    // Compatibility format (VT-d 5.1.2.1).
    if (!m_cfi) return fault(irfault::kCompatBlocked, 0, m.requester, false, cycles);
    ++m_stats.compat;
    IrResult r;
    r.kind = IrResult::Kind::Compat;
    return r;
  }
  // Remappable format (VT-d 5.1.5.2).
  std::uint32_t handle = static_cast<std::uint32_t>((m.address >> 5) & 0x7FFF) |
                         static_cast<std::uint32_t>(((m.address >> 2) & 1) << 15);
  bool shv = (m.address >> 3) & 1;
  std::uint32_t index = shv ? handle + (m.data & 0xFFFF) : handle;
  if (shv && (m.data >> 16)) return fault(irfault::kReservedRequest, static_cast<std::uint16_t>(index), m.requester, false, cycles);
  if (index >= m_entries) return fault(irfault::kIndexBeyondTable, static_cast<std::uint16_t>(index), m.requester, false, cycles);
  const std::uint64_t entry = m_table + 16ull * index;
  std::uint64_t lo = ref(entry);
  const auto idx = static_cast<std::uint16_t>(index);
  if (!(lo & irte::kPresent)) return fault(irfault::kNotPresent, idx, m.requester, lo & irte::kFpd, cycles);
  std::uint64_t hi = ref(entry + 8);
  const bool fpd = lo & irte::kFpd;
  if (!source_ok(hi, m.requester)) return fault(irfault::kSourceId, idx, m.requester, fpd, cycles);
  const auto vector = static_cast<std::uint8_t>(lo >> irte::kVectorShift);

  if (!(lo & irte::kPosted)) {
    // Remapped format (VT-d 9.10): fixed and lowest-priority delivery to a
    // physical destination are modelled; anything else is reserved here.
    unsigned dlm = (lo >> irte::kDeliveryModeShift) & 7;
    if ((lo & irte::kDestModeLogical) || dlm > 1) return fault(irfault::kReservedIrte, idx, m.requester, fpd, cycles);
    IrResult r;
    r.kind = IrResult::Kind::Remapped;
    r.vector = vector;
    r.dest = m_eime ? static_cast<std::uint32_t>(lo >> 32) : static_cast<std::uint32_t>((lo >> 40) & 0xFF);
    r.cycles = cycles;
    ++m_stats.remapped;
    return r;
  }

  // Posted format (VT-d 9.11) and the posting operation (5.2.3): one atomic
  // update of the descriptor (no other agent's access comes in between).
  std::uint64_t pda = ((lo >> 32) & 0xFFFFFFC0ull) | (hi & ~0xFFFFFFFFull);
  std::uint64_t pir_word = pda + pid::kPirOffset + 8 * (vector / 64);
  write(pir_word, ref(pir_word) | (1ull << (vector % 64)));
  std::uint64_t ctl = ref(pda + pid::kControlOffset);
  IrResult r;
  r.kind = IrResult::Kind::Posted;
  ++m_stats.posted;
  const bool urgent = lo & irte::kUrgent;
  if (!(ctl & pid::kOn) && (urgent || !(ctl & pid::kSn))) {
    write(pda + pid::kControlOffset, ctl | pid::kOn);
    r.notify = true;
    r.vector = static_cast<std::uint8_t>(ctl >> pid::kNvShift);
    std::uint32_t ndst = static_cast<std::uint32_t>(ctl >> pid::kNdstShift);
    r.dest = m_eime ? ndst : (ndst >> 8) & 0xFF;
    ++m_stats.notifications;
  } else {
    ++m_stats.suppressed;
  }
  r.cycles = cycles;
  return r;
}

}  // namespace vmx::iommu
