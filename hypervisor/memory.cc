// Memory room: host frames for the hypervisor and for guests, the VMs' EPT
// tables (mapping, software translation, lazy and eager backing) and the
// per-VM MMU lock that serializes changes to them.
#include "hypervisor/hypervisor_state.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "hypervisor/passthrough.h"
#include "hypervisor/shadow.h"
#include "mmu/paging.h"
#include "sim/event_trace.h"

namespace vmx::hv {

using cpu::Core;
using cpu::ExitReason;
using cpu::Regs;
namespace field = cpu::field;
using namespace detail;

std::uint64_t Hypervisor::alloc_host_frame() {
  std::uint64_t f = m_next_host_frame;
  if (f + kPage > m_p.reserved_memory)
    throw cpu::SimulationError("hypervisor: reserved_memory exhausted (raise hypervisor.reserved_memory)");
  m_next_host_frame += kPage;
  return f;
}

std::uint64_t Hypervisor::alloc_guest_page() {
  std::uint64_t size = m_p.ept_page_size;
  std::uint64_t f = (m_next_guest_frame + size - 1) & ~(size - 1);
  if (f + size > m_host_memory) return 0;
  m_next_guest_frame = f + size;
  m_totals.guest_frames += size / kPage;
  return f;
}

std::uint64_t Hypervisor::ept_translate(Core& c, Vm& vm, std::uint64_t gpa) {
  std::uint64_t table = vm.ept_root;
  for (unsigned level = static_cast<unsigned>(m_p.ept_levels); level >= 1; --level) {
    std::uint64_t e = c.load(table + mmu::table_index(gpa, level) * 8);
    if (!(e & mmu::ept::kPermMask)) return 0;
    if (level == 1 || (e & mmu::ept::kLargePage)) {
      std::uint64_t mask = (1ull << mmu::level_shift(level)) - 1;
      return (e & mmu::ept::kAddrMask & ~mask) | (gpa & mask);
    }
    table = e & mmu::ept::kAddrMask;
  }
  return 0;
}

// Maps the EPT page holding gpa to hpa, allocating tables on the way
// (SDM Vol. 3C, 29.3.2). The leaf sits at the level of the configured page
// size, with bit 7 set above level 1.
void Hypervisor::ept_map(Core& c, Vm& vm, std::uint64_t gpa, std::uint64_t hpa) {
  const unsigned leaf = m_p.ept_page_size == (1ull << 30) ? 3 : m_p.ept_page_size == (1ull << 21) ? 2 : 1;
  std::uint64_t table = vm.ept_root;
  for (unsigned level = static_cast<unsigned>(m_p.ept_levels); level > leaf; --level) {
    std::uint64_t entry_pa = table + mmu::table_index(gpa, level) * 8;
    std::uint64_t e = c.load(entry_pa);
    if (!(e & mmu::ept::kPermMask)) {
      std::uint64_t t = alloc_host_frame();
      ++m_totals.ept_tables;
      c.rep_stos(t, 0, kPage);
      e = t | mmu::ept::kRead | mmu::ept::kWrite | mmu::ept::kExecute;
      c.store(entry_pa, e);
    }
    table = e & mmu::ept::kAddrMask;
  }
  std::uint64_t leaf_pa = table + mmu::table_index(gpa, leaf) * 8;
  c.store(leaf_pa, (hpa & mmu::ept::kAddrMask) | mmu::ept::kRead | mmu::ept::kWrite | mmu::ept::kExecute |
                       mmu::ept::kMemTypeWb | (leaf > 1 ? mmu::ept::kLargePage : 0));
}

// The VM's EPT is shared by its vCPUs' cores: changes to it are made under
// a fair ticket lock (hypervisor/spinlock.h), as KVM holds its MMU lock; the
// time spent spinning is charged to the waiter.
void Hypervisor::lock_mmu(Core& c, Vm& vm) { vm.mmu_lock.lock(c); }

void Hypervisor::unlock_mmu(Core& c, Vm& vm) { vm.mmu_lock.unlock(c); }

bool Hypervisor::back_guest_page(Core& c, Vm& vm, std::uint64_t gpa) {
  lock_mmu(c, vm);
  bool ok = back_guest_page_locked(c, vm, gpa) != 0;
  unlock_mmu(c, vm);
  return ok;
}

std::uint64_t Hypervisor::back_guest_page_locked(Core& c, Vm& vm, std::uint64_t gpa) {
  const std::uint64_t size = m_p.ept_page_size;
  const std::uint64_t offset = gpa & (size - 1);
  gpa -= offset;
  // Already backed (another vCPU got there first, or eager population)?
  // Then the violation was spurious, as KVM finds under its MMU lock.
  if (std::uint64_t hpa = ept_translate(c, vm, gpa)) return hpa + offset;
  std::uint64_t hpa = alloc_guest_page();
  if (!hpa) return 0;
  if (m_p.zero_pages) c.rep_stos(hpa, 0, size);
  ept_map(c, vm, gpa, hpa);
  return hpa + offset;
}

void Hypervisor::populate(Core& c, Vm& vm) {
  for (std::uint64_t gpa = 0; gpa < vm.memory; gpa += m_p.ept_page_size) {
    if (!back_guest_page(c, vm, gpa)) {
      crash_vm(vm, "host memory exhausted while backing guest memory");
      return;
    }
  }
}

}  // namespace vmx::hv
