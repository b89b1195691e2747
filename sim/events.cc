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

const Dispatcher& Dispatcher::none() {
  static const Dispatcher d;
  return d;
}

}  // namespace vmx::events
