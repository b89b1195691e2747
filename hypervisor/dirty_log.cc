// Dirty tracking (docs/memory.md, "Dirty tracking"): which guest pages a VM
// wrote since the last round, by one of three mechanisms, for migration,
// snapshots and statistics. All three are clients of the EPT cursor (ept.h)
// and keep one dirty bitmap per VM in hypervisor memory:
//   - EPT write protection: every leaf loses write permission (one INVEPT
//     everywhere); the first write to a page exits with an EPT violation,
//     the handler sets the page's bit and gives the permission back; the
//     harvest write-protects the pages it returns (as KVM's
//     kvm_get_dirty_log_protect).
//   - EPT dirty flags (EPTP bit 6, SDM Vol. 3C, 29.3.5): the walker sets the
//     leaf's dirty flag on a write; the harvest scans every leaf (loads of
//     the EPT entries, charged) and clears the flags it finds set (atomic
//     exchanges, then INVEPT everywhere, since a cached translation would
//     not set the flag again).
//   - Page-modification logging (29.3.6): the core writes the page of every
//     dirty flag it sets into the vCPU's 512-entry log; the hypervisor drains
//     the log at every exit (as KVM's vmx_flush_pml_buffer) and on a PML-full
//     exit (reason 62); the harvest clears the dirty flags of what it
//     returns so that the next write logs again.
// Also the hypervisor's timed jobs (at()), which run the operations above
// and the snapshot copier on a core at set times.
#include "hypervisor/dirty_state.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "mmu/paging.h"

namespace vmx::hv {

using namespace detail;
namespace ept = mmu::ept;

namespace {
constexpr std::uint64_t kPagesPerBitmapFrame = kPage * 8;
constexpr std::uint16_t kPmlLast = 511;  // the PML index starts here and counts down (29.3.6)
}  // namespace

const char* dirty_mode_name(DirtyMode m) {
  switch (m) {
    case DirtyMode::WriteProtect: return "write_protect";
    case DirtyMode::DirtyBits: return "dirty_bits";
    case DirtyMode::Pml: return "pml";
  }
  return "?";
}

// --- Timed jobs --------------------------------------------------------------

void Hypervisor::at(std::uint64_t ps, unsigned core, std::function<void(Core&)> fn) {
  if (core >= m_cores.size())
    throw std::invalid_argument(fmt::format("hypervisor: a job for core {}, but the platform has {} cores", core,
                                            m_cores.size()));
  m_jobs.push_back({std::max<std::uint64_t>(1, ps_to_tsc(ps)), core, std::move(fn)});
  if (m_started) {
    // The core's timer must include it: from another core, an IPI makes it
    // reprogram (host_interrupt); here, reprogram now.
    Core& c = Core::current();
    if (m_cores[core] == &c) program_timer(*m_percore[core]);
    else c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{core} << 32) | kRescheduleVector);
  }
}

std::uint64_t Hypervisor::next_job(unsigned core) const {
  std::uint64_t next = 0;
  for (const HostJob& j : m_jobs)
    if (j.core == core && (!next || j.due < next)) next = j.due;
  return next;
}

void Hypervisor::run_jobs(PerCore& pc, std::uint64_t now) {
  if (m_jobs.empty()) return;
  std::vector<HostJob> due;
  for (auto it = m_jobs.begin(); it != m_jobs.end();) {
    if (it->core == pc.id && it->due <= now) {
      due.push_back(std::move(*it));
      it = m_jobs.erase(it);
    } else {
      ++it;
    }
  }
  for (HostJob& j : due) j.fn(*pc.core);
}

// --- The dirty bitmap ----------------------------------------------------------

void Hypervisor::dirty_mark(Core& c, Vm& vm, std::uint64_t gfn) {
  DirtyLog& d = *vm.dirty;
  const std::uint64_t frame = d.bitmap.at(gfn / kPagesPerBitmapFrame);
  const std::uint64_t bit = gfn % kPagesPerBitmapFrame;
  c.lock_or(frame + bit / 64 * 8, 1ull << (bit % 64));
}

// --- Starting and stopping -------------------------------------------------------

bool Hypervisor::dirty_logging(unsigned vm) const { return m_vms.at(vm)->dirty && m_vms.at(vm)->dirty->on; }

// Large leaves become 4 KiB leaves (1 GiB pages in two steps), each split
// one INVEPT everywhere through the cursor.
void Hypervisor::dirty_split(Core& c, Vm& vm) {
  DirtyLog& d = *vm.dirty;
  for (unsigned level = 3; level >= 2; --level) {
    std::vector<std::uint64_t> large;
    vm.ept->for_each_leaf(c, 0, vm.memory, false, [&](const Ept::Leaf& l) {
      if (l.level == level) large.push_back(l.gpa);
    });
    for (std::uint64_t gpa : large) {
      if (!vm.ept->split(c, gpa))
        throw cpu::SimulationError("hypervisor: reserved_memory exhausted splitting EPT pages for dirty tracking "
                                   "(raise hypervisor.reserved_memory)");
      ++d.stats->split_pages;
      (level == 3 ? d.split_1g : d.split_2m).push_back(gpa);
      if (level == 3)
        for (std::uint64_t g = gpa; g < gpa + FrameAllocator::k1G; g += FrameAllocator::k2M) d.split_2m.push_back(g);
    }
  }
}

// Clears write permission in every leaf (or in those mapping `gfns`), one
// INVEPT everywhere.
void Hypervisor::dirty_protect_all(Core& c, Vm& vm, const std::vector<std::uint64_t>* gfns) {
  std::vector<Ept::Leaf> leaves;
  if (!gfns) {
    vm.ept->for_each_leaf(c, 0, vm.memory, false, [&](const Ept::Leaf& l) { leaves.push_back(l); });
  } else {
    for (std::uint64_t gfn : *gfns)
      if (auto l = vm.ept->lookup(c, gfn * kPage); l && (leaves.empty() || leaves.back().gpa != l->gpa))
        leaves.push_back(*l);
  }
  vm.ept->clear_bits(c, leaves, ept::kWrite);
}

void Hypervisor::dirty_log_start(Core& c, unsigned id, DirtyMode mode) {
  Vm& vm = *m_vms.at(id);
  if (vm.ended()) return;  // stopped: its EPT may be gone
  if (vm.shadow) throw std::invalid_argument("VM " + vm.name + ": dirty tracking needs EPT (not shadow paging)");
  if (mode != DirtyMode::WriteProtect && !ept::eptp_ad(vm.eptp))
    throw std::invalid_argument(fmt::format("VM {}: dirty tracking by {} needs EPT accessed and dirty flags "
                                            "(hypervisor.ept_ad: true)",
                                            vm.name, dirty_mode_name(mode)));
  if (!vm.dirty) {
    vm.dirty = std::make_unique<DirtyLog>();
    vm.dirty->stats = std::make_unique<DirtyLog::Stats>(vm.group);
    const std::uint64_t pages = (vm.memory + kPage - 1) / kPage;
    for (std::uint64_t i = 0; i < (pages + kPagesPerBitmapFrame - 1) / kPagesPerBitmapFrame; ++i) {
      bool fresh = false;
      const std::uint64_t f = alloc_host_frame(&fresh);
      if (!fresh) c.rep_stos(f, 0, kPage);
      vm.dirty->bitmap.push_back(f);
    }
    vm.dirty->vcpus.resize(vm.vcpus.size());
  }
  DirtyLog& d = *vm.dirty;
  if (d.on) throw std::logic_error("VM " + vm.name + ": dirty logging is on already");
  charge(c, m_p.dirty_log.start, kCodeDirty);
  // The logs exist before any vCPU can be told to use them (the INVEPTs
  // below let other cores run and enter).
  if (mode == DirtyMode::Pml)
    for (auto& pv : d.vcpus)
      if (!pv.pml_page) pv.pml_page = alloc_host_frame();
  d.mode = mode;
  d.on = true;
  d.lazy_split = mode == DirtyMode::WriteProtect && m_p.dirty_log.split == "lazy";
  ++d.stats->starts;
  // Every page counts as clean from here: the bitmap is cleared.
  for (std::uint64_t f : d.bitmap) c.rep_stos(f, 0, kPage);
  lock_mmu(c, vm);
  // The dirty-flag modes have no fault at which to split: they split now.
  if (m_p.ept_page_size != kPage && !d.lazy_split) dirty_split(c, vm);
  switch (mode) {
    case DirtyMode::WriteProtect: dirty_protect_all(c, vm, nullptr); break;
    case DirtyMode::DirtyBits: dirty_scan(c, vm, false); break;
    case DirtyMode::Pml:
      dirty_scan(c, vm, false);
      d.catchup = true;
      break;
  }
  unlock_mmu(c, vm);
  // vCPUs in guest mode exit (those with a cached translation did at the
  // INVEPT) and take the new controls at their next entry.
  if (mode == DirtyMode::Pml)
    for (auto& v : vm.vcpus)
      if (v->time.off == Vcpu::Off::OnCpu && m_cores[v->core] != &c)
        c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{v->core} << 32) | kRescheduleVector);
}

void Hypervisor::dirty_log_stop(Core& c, unsigned id) {
  Vm& vm = *m_vms.at(id);
  if (!vm.dirty || !vm.dirty->on || vm.ended()) return;
  DirtyLog& d = *vm.dirty;
  charge(c, m_p.dirty_log.start, kCodeDirty);
  d.on = false;
  lock_mmu(c, vm);
  if (d.mode == DirtyMode::WriteProtect) {
    // Write permission back (adding a permission needs no INVEPT, 29.4.3.2).
    std::vector<std::uint64_t> ro;
    vm.ept->for_each_leaf(c, 0, vm.memory, false, [&](const Ept::Leaf& l) {
      if (!(l.entry & ept::kWrite)) ro.push_back(l.gpa);
    });
    for (std::uint64_t gpa : ro) vm.ept->protect(c, gpa, ept::kRead | ept::kWrite | ept::kExecute);
  }
  // The large pages come back (KVM recovers them when logging stops).
  for (std::uint64_t gpa : d.split_2m) vm.ept->merge(c, gpa, 2);
  for (std::uint64_t gpa : d.split_1g) vm.ept->merge(c, gpa, 3);
  d.split_2m.clear();
  d.split_1g.clear();
  unlock_mmu(c, vm);
  // PML goes off at each vCPU's next entry; the log pages stay with the VM.
}

// --- Harvesting ------------------------------------------------------------------

// SDM Vol. 3C, 29.3.5: reads every leaf of the VM's EPT (the scan cost) and
// clears the dirty flags found set, marking their pages when `mark`.
void Hypervisor::dirty_scan(Core& c, Vm& vm, bool mark) {
  DirtyLog& d = *vm.dirty;
  const std::uint64_t t0 = c.now();
  std::vector<Ept::Leaf> dirty;
  std::uint64_t leaves = 0;
  vm.ept->for_each_leaf(c, 0, vm.memory, false, [&](const Ept::Leaf& l) {
    ++leaves;
    if (l.entry & ept::kDirty) dirty.push_back(l);
  });
  charge(c, leaves * m_p.dirty_log.scan_leaf, kCodeDirty);
  vm.ept->clear_bits(c, dirty, ept::kDirty);
  if (mark)
    for (const Ept::Leaf& l : dirty)
      if (l.entry & ept::kDirty)
        for (std::uint64_t g = l.gpa; g < l.gpa + l.size; g += kPage) dirty_mark(c, vm, g / kPage);
  ++d.stats->scans;
  d.stats->scan_leaves += leaves;
  d.stats->scan_cycles += c.now() - t0;
}

std::vector<std::uint64_t> Hypervisor::dirty_log_collect(Core& c, unsigned id) {
  Vm& vm = *m_vms.at(id);
  if (vm.ended()) return {};
  if (!vm.dirty || !vm.dirty->on) throw std::logic_error("VM " + vm.name + ": dirty logging is off");
  DirtyLog& d = *vm.dirty;
  charge(c, m_p.dirty_log.start, kCodeDirty);
  lock_mmu(c, vm);
  if (d.mode == DirtyMode::DirtyBits) dirty_scan(c, vm, true);
  if (d.mode == DirtyMode::Pml) {
    // A vCPU in guest mode elsewhere drains its log at its next exit: kicked
    // now, what it holds lands in the next round (KVM kicks and waits).
    for (auto& v : vm.vcpus)
      if (v->time.off == Vcpu::Off::OnCpu && m_cores[v->core] != &c)
        c.wrmsr(cpu::msr::kX2ApicIcr, (std::uint64_t{v->core} << 32) | kRescheduleVector);
    if (d.catchup) {
      dirty_scan(c, vm, true);
      d.catchup = false;
      for (auto& pv : d.vcpus) d.catchup = d.catchup || !pv.pml_on;
    }
  }
  // Get and clear, a word at a time.
  std::vector<std::uint64_t> gfns;
  const std::uint64_t pages = (vm.memory + kPage - 1) / kPage;
  for (std::uint64_t i = 0; i < d.bitmap.size(); ++i) {
    const std::uint64_t in_frame = std::min(kPagesPerBitmapFrame, pages - i * kPagesPerBitmapFrame);
    for (std::uint64_t w = 0; w < (in_frame + 63) / 64; ++w) {
      const std::uint64_t pa = d.bitmap[i] + w * 8;
      std::uint64_t bits = c.load(pa);
      if (!bits) continue;
      bits = c.xchg(pa, 0);
      while (bits) {
        const unsigned b = static_cast<unsigned>(__builtin_ctzll(bits));
        bits &= bits - 1;
        gfns.push_back(i * kPagesPerBitmapFrame + w * 64 + b);
      }
    }
  }
  // The pages returned are tracked again: write protection takes their
  // write permission, PML clears their dirty flags (so the next write
  // logs); one INVEPT everywhere each.
  if (d.mode == DirtyMode::WriteProtect) {
    dirty_protect_all(c, vm, &gfns);
  } else if (d.mode == DirtyMode::Pml) {
    std::vector<Ept::Leaf> leaves;
    for (std::uint64_t gfn : gfns)
      if (auto l = vm.ept->lookup(c, gfn * kPage)) leaves.push_back(*l);
    vm.ept->clear_bits(c, leaves, ept::kDirty);
  }
  unlock_mmu(c, vm);
  ++d.stats->rounds;
  d.stats->pages_dirty += gfns.size();
  d.stats->pages_per_round.sample(gfns.size());
  return gfns;
}

void Hypervisor::dirty_log_round(Core& c, unsigned id, unsigned core, std::uint64_t interval_ps) {
  if (m_vms.at(id)->ended()) return;
  dirty_log_collect(c, id);
  at(c.now_ps() + interval_ps, core, [this, id, core, interval_ps](Core& cc) { dirty_log_round(cc, id, core, interval_ps); });
}

// --- Exits and entries -------------------------------------------------------------

// A write to a page whose EPT leaf is readable but not writable (exit
// qualification bits 1 and 3 set, 4 clear; SDM Vol. 3C, Table 28-7) while
// the VM is write-protected for tracking or a snapshot.
bool Hypervisor::dirty_wp_fault(PerCore& pc, Vcpu& v, std::uint64_t gpa) {
  Vm& vm = *v.vm;
  if (!vm.dirty || !vm.dirty->on || vm.dirty->mode != DirtyMode::WriteProtect || gpa >= vm.memory) return false;
  Core& c = *pc.core;
  const std::uint64_t q = vmr(c, field::kExitQualification);
  if (!(q & cpu::qual::kEptWrite) || !(q & cpu::qual::kEptReadable) || (q & cpu::qual::kEptWritable)) return false;
  DirtyLog& d = *vm.dirty;
  charge(c, m_p.dirty_log.wp_fault, kCodeDirty);
  ++d.stats->wp_exits;
  if (vm.snapshot && !vm.snapshot->complete) ++vm.snapshot->stats->exits;
  const std::uint64_t page = gpa & ~(kPage - 1);
  lock_mmu(c, vm);
  auto leaf = vm.ept->lookup(c, page);
  // Another vCPU gave the permission back first: the violation was spurious.
  if (leaf && !(leaf->entry & ept::kWrite)) {
    while (leaf->level > 1) {  // lazy split: the large page becomes 4 KiB pages, all still read-only
      if (!vm.ept->split(c, page))
        throw cpu::SimulationError("hypervisor: reserved_memory exhausted splitting EPT pages for dirty tracking "
                                   "(raise hypervisor.reserved_memory)");
      ++d.stats->split_pages;
      if (leaf->level == 3) d.split_1g.push_back(leaf->gpa);
      else d.split_2m.push_back(leaf->gpa);
      leaf = vm.ept->lookup(c, page);
    }
    if (vm.snapshot && !vm.snapshot->complete && snapshot_save(c, vm, page / kPage, leaf->hpa))
      ++vm.snapshot->stats->cow_pages;
    dirty_mark(c, vm, page / kPage);
    vm.ept->protect(c, page, ept::kRead | ept::kWrite | ept::kExecute);
  }
  unlock_mmu(c, vm);
  return true;
}

// A page backed during write-protection tracking: written (the access that
// faulted is a write) it is dirty; read, it is write-protected as the rest.
void Hypervisor::dirty_after_backing(Core& c, Vm& vm, std::uint64_t gpa, bool write) {
  if (!vm.dirty || !vm.dirty->on || vm.dirty->mode != DirtyMode::WriteProtect) return;
  if (write) {
    dirty_mark(c, vm, gpa / kPage);
  } else {
    lock_mmu(c, vm);
    vm.ept->protect(c, gpa, ept::kRead | ept::kExecute);
    unlock_mmu(c, vm);
  }
}

// SDM Vol. 3C, 29.3.6: the log holds entries PML index + 1 to 511 (all 512
// after a PML-full exit, the index having wrapped to 0xFFFF).
void Hypervisor::dirty_on_exit(Core& c, Vcpu& v) {
  DirtyLog& d = *v.vm->dirty;
  DirtyLog::PerVcpu& pv = d.vcpus[v.index];
  if (!pv.pml_on) return;
  const auto index = static_cast<std::uint16_t>(vmr(c, field::kGuestPmlIndex));
  if (index == kPmlLast) return;
  const unsigned first = index >= 512 ? 0u : index + 1u;
  for (unsigned i = first; i <= kPmlLast; ++i) {
    const std::uint64_t gpa = c.load(pv.pml_page + 8ull * i);
    if (gpa < v.vm->memory) dirty_mark(c, *v.vm, gpa / kPage);
  }
  charge(c, (kPmlLast + 1 - first) * m_p.dirty_log.pml_entry, kCodeDirty);
  d.stats->pml_entries += kPmlLast + 1 - first;
  ++d.stats->pml_drains;
  vmw(c, field::kGuestPmlIndex, kPmlLast);
}

void Hypervisor::dirty_before_entry(Core& c, Vcpu& v) {
  DirtyLog& d = *v.vm->dirty;
  DirtyLog::PerVcpu& pv = d.vcpus[v.index];
  const bool want = d.on && d.mode == DirtyMode::Pml;
  if (want == pv.pml_on) return;
  const std::uint64_t ctl = vmr(c, field::kSecondaryControls);
  if (want) {
    vmw(c, field::kPmlAddress, pv.pml_page);
    vmw(c, field::kGuestPmlIndex, kPmlLast);
    vmw(c, field::kSecondaryControls, ctl | cpu::proc2::kEnablePml);
  } else {
    vmw(c, field::kSecondaryControls, ctl & ~std::uint64_t{cpu::proc2::kEnablePml});
  }
  pv.pml_on = want;
}

// The log was drained on the way in (dirty_on_exit); the access that found
// it full runs again at the next entry.
void Hypervisor::handle_pml_full(PerCore&, Vcpu& v) {
  if (v.vm->dirty) ++v.vm->dirty->stats->pml_full_exits;
}

}  // namespace vmx::hv
