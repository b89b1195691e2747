// Posted interrupts, virtual-interrupt delivery and EOI virtualization of
// the Core (SDM Vol. 3C, 30.1.3, 30.2, 30.5, 30.6): the APIC-virtualization
// block, kept apart from the rest of the core. docs/io.md, "Interrupts".
#include <fmt/format.h>

#include "cpu/core.h"
#include "models/mem_hierarchy.h"
#include "models/phys_mem.h"

namespace vmx::cpu {

// The posted-interrupt descriptor and the virtual-APIC page are in memory;
// every access to them is a real memory access by this core, charged
// through its caches.

std::uint64_t Core::phys_read(std::uint64_t pa, unsigned size) {
  if (!m_w.mem->contains(pa, size))
    throw SimulationError(fmt::format("{}: VMX structure at physical {:#x} beyond memory", name(), pa));
  charge(cache_access(pa, models::AccessKind::Read));
  return m_w.mem->read(pa, size);
}

void Core::phys_write(std::uint64_t pa, std::uint64_t value, unsigned size) {
  if (!m_w.mem->contains(pa, size))
    throw SimulationError(fmt::format("{}: VMX structure at physical {:#x} beyond memory", name(), pa));
  charge(cache_access(pa, models::AccessKind::Write));
  m_w.mem->write(pa, value, size);
}

// Highest vector set in the 256-bit register (VIRR or VISR) at reg_base of
// the virtual-APIC page, or -1.
int Core::vapic_highest(std::uint64_t reg_base) {
  for (int r = 7; r >= 0; --r) {
    auto bits = static_cast<std::uint32_t>(phys_read(m_vapic + reg_base + 0x10 * static_cast<unsigned>(r), 4));
    if (bits) return r * 32 + 31 - __builtin_clz(bits);
  }
  return -1;
}

// Posted-interrupt processing (SDM Vol. 3C, 30.6), for an unblocked external
// interrupt whose vector is the notification vector, in non-root operation
// with "process posted interrupts": acknowledge it, clear ON, EOI the local
// APIC, move PIR into VIRR (each PIR quadword read and cleared with no other
// access in between), raise RVI to the highest vector posted, and evaluate
// pending virtual interrupts. No VM exit.
void Core::process_posted_interrupts() {
  m_lapic.acknowledge(m_pi_nv);
  ++m_stats.posted_notifications;
  const std::uint64_t ctl = m_pi_desc + 32;
  phys_write(ctl, phys_read(ctl, 8) & ~1ull, 8);  // ON is bit 256
  m_lapic.eoi();
  int highest = -1;
  for (unsigned q = 0; q < 4; ++q) {
    const std::uint64_t pir = m_pi_desc + 8 * q;
    std::uint64_t bits = phys_read(pir, 8);
    if (!bits) continue;
    phys_write(pir, 0, 8);
    for (unsigned half = 0; half < 2; ++half) {
      auto part = static_cast<std::uint32_t>(bits >> (32 * half));
      if (!part) continue;
      std::uint64_t irr = vapic::reg(m_vapic + vapic::kIrr, 64 * q + 32 * half);
      phys_write(irr, phys_read(irr, 4) | part, 4);
    }
    highest = static_cast<int>(64 * q + 63) - __builtin_clzll(bits);
  }
  if (highest > m_rvi) m_rvi = static_cast<std::uint8_t>(highest);
  report_interrupt(highest < 0 ? 0 : static_cast<std::uint8_t>(highest), events::Delivery::PostedNotification);
  recompute_next_event();
}

// Virtual-interrupt delivery (SDM Vol. 3C, 30.2.2): the vector RVI moves
// from VIRR to VISR, SVI takes it, RVI becomes the next-highest requested
// vector, and the interrupt goes through the guest IDT.
void Core::deliver_virtual_interrupt() {
  const std::uint8_t vec = m_rvi;
  const std::uint64_t isr = vapic::reg(m_vapic + vapic::kIsr, vec);
  const std::uint64_t irr = vapic::reg(m_vapic + vapic::kIrr, vec);
  phys_write(isr, phys_read(isr, 4) | (1u << (vec % 32)), 4);
  m_svi = vec;
  phys_write(irr, phys_read(irr, 4) & ~(1u << (vec % 32)), 4);
  int next = vapic_highest(vapic::kIrr);
  m_rvi = next < 0 ? 0 : static_cast<std::uint8_t>(next);
  ++m_stats.virtual_interrupts;
  deliver(m_idt, false, vec, 0);
}

// EOI virtualization (SDM Vol. 3C, 30.1.3): clear the vector SVI in VISR,
// SVI becomes the next-highest in-service vector; an EOI-exit-bitmap bit
// set for the vector makes an EOI-induced VM exit (qualification: the
// vector), otherwise pending virtual interrupts are evaluated.
void Core::virtualize_eoi() {
  const std::uint8_t vec = m_svi;
  const std::uint64_t isr = vapic::reg(m_vapic + vapic::kIsr, vec);
  phys_write(isr, phys_read(isr, 4) & ~(1u << (vec % 32)), 4);
  int next = vapic_highest(vapic::kIsr);
  m_svi = next < 0 ? 0 : static_cast<std::uint8_t>(next);
  ++m_stats.virtual_eois;
  if ((m_vmcs->get(field::kEoiExitBitmap0 + 2 * (vec / 64)) >> (vec % 64)) & 1) {
    vm_exit(ExitReason::VirtualizedEoi, vec);
    return;
  }
  recompute_next_event();
}

}  // namespace vmx::cpu
