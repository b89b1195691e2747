// A fair spinlock for hypervisor data that several cores change: a ticket
// lock over one quadword of host-physical memory, built from core
// operations only (docs/hypervisor.md, "Locks").
//
// As Linux's ticket spinlock (arch/x86 before qspinlock): the low half of
// the word is the ticket now served (head), the high half the next ticket
// (tail). A taker draws a ticket with LOCK XADD of 1 into the tail and
// spins with loads and PAUSE until the head reaches it; the holder releases
// by storing head + 1. Takers are served in the order of their XADDs
// (FIFO), so a core that releases and retakes the lock at once queues
// behind the cores already waiting, unlike a test-and-set lock.
#pragma once

#include <cstdint>

#include "sim/stats.h"

namespace vmx::cpu {
class Core;
}

namespace vmx::hv {

/// Statistics of one lock, or of a class of locks sharing them (the MMU
/// locks of all VMs). Wait cycles are observed on the taker's clock, from
/// its XADD to its acquisition (simulator observation, no cost).
struct LockStats : stats::Group {
  LockStats(stats::Group* parent, const std::string& name, const std::string& desc) : Group(parent, name, desc) {}
  stats::Counter acquisitions{this, "acquisitions", "events", "times the lock was taken"};
  stats::Counter contended{this, "contended", "events", "acquisitions that found the lock held and waited"};
  stats::Histogram wait_cycles{this, "wait_cycles", "cycles",
                               "cycles from drawing a ticket to holding the lock, per acquisition"};
};

class TicketLock {
 public:
  static constexpr std::uint64_t kTailOne = 1ull << 32;  // XADD addend: one ticket

  TicketLock() = default;
  /// word: host-physical address of a zeroed, 8-byte aligned quadword.
  TicketLock(std::uint64_t word, LockStats* stats) : m_word(word), m_stats(stats) {}

  void lock(cpu::Core& c);
  void unlock(cpu::Core& c);
  std::uint64_t word() const { return m_word; }

 private:
  std::uint64_t m_word = 0;
  // The holder's ticket, as the holder's register would keep it between
  // lock and unlock (only the holder reads it).
  std::uint32_t m_owner = 0;
  LockStats* m_stats = nullptr;
};

}  // namespace vmx::hv
