#include "hypervisor/spinlock.h"

#include "cpu/core.h"

namespace vmx::hv {

void TicketLock::lock(cpu::Core& c) {
  const std::uint64_t start = c.now();
  const std::uint64_t old = c.lock_xadd(m_word, kTailOne);
  const auto ticket = static_cast<std::uint32_t>(old >> 32);
  const bool contended = static_cast<std::uint32_t>(old) != ticket;
  if (contended)
    while (static_cast<std::uint32_t>(c.load(m_word, 4)) != ticket) c.pause();
  m_owner = ticket;
  if (m_stats) {
    ++m_stats->acquisitions;
    if (contended) ++m_stats->contended;
    m_stats->wait_cycles.sample(c.now() - start);
  }
}

// Only the holder writes the head, so a plain store releases (x86 stores are
// not reordered with earlier loads or stores, SDM Vol. 3A, 9.2.2).
void TicketLock::unlock(cpu::Core& c) { c.store(m_word, static_cast<std::uint32_t>(m_owner + 1), 4); }

}  // namespace vmx::hv
