#include "sim/events.h"

#include <stdexcept>
#include <string>

namespace vmx::events {

void Dispatcher::attach(Listener& l) {
  for (unsigned i = 0; i < m_count; ++i)
    if (m_listeners[i] == &l) return;
  if (m_count == kMaxListeners)
    throw std::length_error("events: more than " + std::to_string(kMaxListeners) + " listeners on one core");
  m_listeners[m_count] = &l;
  m_masks[m_count] = l.kinds();
  ++m_count;
  recompute();
}

void Dispatcher::detach(Listener& l) {
  for (unsigned i = 0; i < m_count; ++i) {
    if (m_listeners[i] != &l) continue;
    // Keeps the others in attachment order.
    for (unsigned j = i + 1; j < m_count; ++j) {
      m_listeners[j - 1] = m_listeners[j];
      m_masks[j - 1] = m_masks[j];
    }
    --m_count;
    m_listeners[m_count] = nullptr;
    m_masks[m_count] = 0;
    recompute();
    return;
  }
}

void Dispatcher::recompute() {
  m_any = 0;
  for (unsigned i = 0; i < m_count; ++i) m_any |= m_masks[i];
}

void Dispatcher::retired(Retired e) const { each(bit(kRetired), [&](Listener& l) { l.retired(e); }); }
void Dispatcher::cache_access(CacheAccess e) const {
  // A miss goes to the miss listeners too; a hit only to the access listeners.
  each(e.hit ? bit(kCacheAccess) : bit(kCacheAccess) | bit(kCacheMiss), [&](Listener& l) { l.cache_access(e); });
}
void Dispatcher::tlb_miss(TlbMiss e) const { each(bit(kTlbMiss), [&](Listener& l) { l.tlb_miss(e); }); }
void Dispatcher::walk(Walk e) const { each(bit(kWalk), [&](Listener& l) { l.walk(e); }); }
void Dispatcher::vm_entry(VmEntry e) const { each(bit(kVmEntry), [&](Listener& l) { l.vm_entry(e); }); }
void Dispatcher::vm_exit(VmExit e) const { each(bit(kVmExit), [&](Listener& l) { l.vm_exit(e); }); }
void Dispatcher::interrupt(Interrupt e) const { each(bit(kInterrupt), [&](Listener& l) { l.interrupt(e); }); }
void Dispatcher::msi(Msi e) const { each(bit(kMsi), [&](Listener& l) { l.msi(e); }); }
void Dispatcher::dma_blocked(DmaBlocked e) const { each(bit(kDmaBlocked), [&](Listener& l) { l.dma_blocked(e); }); }

const Dispatcher& Dispatcher::none() {
  static const Dispatcher d;
  return d;
}

}  // namespace vmx::events
