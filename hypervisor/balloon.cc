// virtio-balloon back end (docs/memory.md, "Ballooning";
// hypervisor/balloon.h): inflate and deflate messages, the statistics
// queue, and the target the device announces.
#include "hypervisor/hypervisor_state.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace vmx::hv {

using namespace detail;
namespace bal = abi::virtio_balloon;

void Hypervisor::add_overcommit_devices(Vm& vm, const VmSpec& spec) {
  if (spec.disk_bytes) {
    const std::uint64_t blocks = (spec.disk_bytes + models::Storage::kBlock - 1) / models::Storage::kBlock;
    vm.blk = std::make_unique<BlkDev>(m_storage_next_block, blocks, vm.group);
    m_storage_next_block += blocks;
    storage();
  }
  if (spec.balloon) {
    if (spec.shadow_paging || m_p.ept_page_size != kPage || spec.nic_type == "vf")
      throw std::invalid_argument("VM " + spec.name + ": a balloon needs EPT paging with hypervisor.ept_page_size "
                                  "4KiB and no passed-through VF (inflated pages are unmapped 4 KiB at a time)");
    vm.balloon = std::make_unique<BalloonDev>(vm.group);
    for (const auto& [at, bytes] : spec.balloon_schedule) vm.balloon->schedule.emplace_back(ps_to_tsc(at), bytes / kPage);
    vm.balloon->max_pages = std::min(spec.balloon_max, spec.memory) / kPage;
  }
}

std::uint64_t Hypervisor::balloon_target(Core& c, Vm& vm) {
  BalloonDev& b = *vm.balloon;
  // The schedule's value now (the device reads time as software does).
  const std::uint64_t now = c.rdtsc();
  std::uint64_t base = 0;
  for (const auto& [at, pages] : b.schedule)
    if (at <= now) base = pages;
  // The host policy: while the guest zone is short of free memory, ask
  // every ballooned VM for another step at each look; give it back once
  // the zone has twice the watermark free.
  if (m_p.balloon_watermark) {
    const std::uint64_t free = m_frames.free_bytes(m_guest_zone);
    const std::uint64_t step = m_p.balloon_step / kPage;
    if (free < m_p.balloon_watermark && base + b.policy_pages + step <= b.max_pages) {
      b.policy_pages += step;
      ++b.stats.policy_raises;
    } else if (free > 2 * m_p.balloon_watermark && b.policy_pages) {
      b.policy_pages -= std::min(step, b.policy_pages);
    }
  }
  const std::uint64_t target = std::min(base + b.policy_pages, vm.memory / kPage);
  b.stats.target.set(static_cast<double>(target));
  return target;
}

void Hypervisor::balloon_process(Core& c, Vm& vm, unsigned queue) {
  BalloonDev& b = *vm.balloon;
  if (!b.regs.running() || !b.regs.queue_ready(queue)) return;
  virtio::DeviceQueue& q = b.regs.queue(queue);
  GuestMem m{*this, vm, c};
  virtio::Chain ch;
  while (q.has_avail(m)) {
    while (q.pop(m, ch)) {
      charge(c, m_p.costs.balloon_message, kCodeBalloon);
      if (ch.descriptors != 1 || ch.write) {
        q.push_used(m, ch.head, 0);
        continue;
      }
      if (queue == bal::kStatsQueue) {
        // 5.5.6.3: an array of { le16 tag; le64 val; }, packed.
        ++b.stats.reports;
        for (std::uint32_t off = 0; off + bal::kStatBytes <= ch.len; off += bal::kStatBytes) {
          const auto tag = static_cast<std::uint16_t>(m.load(ch.addr + off, 2));
          const auto val = static_cast<double>(m.load(ch.addr + off + 2, 8));
          switch (tag) {
            case bal::kStatSwapIn: b.stats.guest_swap_in.set(val); break;
            case bal::kStatSwapOut: b.stats.guest_swap_out.set(val); break;
            case bal::kStatMajFlt: b.stats.guest_major.set(val); break;
            case bal::kStatMinFlt: b.stats.guest_minor.set(val); break;
            case bal::kStatMemFree: b.stats.guest_free.set(val); break;
            case bal::kStatMemTot: b.stats.guest_total.set(val); break;
            default: break;  // unknown tags are ignored (5.5.6.3)
          }
        }
        q.push_used(m, ch.head, 0);
        continue;
      }
      ++b.stats.messages;
      const std::uint32_t n = std::min<std::uint32_t>(ch.len / 4, bal::kPfnsPerMessage);
      for (std::uint32_t i = 0; i < n; ++i) {
        const std::uint64_t gpa = m.load(ch.addr + 4ull * i, 4) << bal::kPageShift;
        charge(c, m_p.costs.balloon_page, kCodeBalloon);
        if (gpa >= vm.memory) {
          ++b.stats.bad_pfns;
          continue;
        }
        if (queue == bal::kDeflateQueue) {
          // Nothing to do now: the next access backs the page (EPT violation).
          ++b.stats.deflated;
          continue;
        }
        ++b.stats.inflated;
        // Unmap through the cursor (it invalidates the EPT's translations
        // everywhere, SDM Vol. 3C, 29.4.3) and free the frame.
        lock_mmu(c, vm);
        if (auto leaf = vm.ept->unmap(c, gpa)) {
          charge(c, m_p.costs.frame_free, kCodeBalloon);
          m_frames.put(leaf->hpa);
          vm.backed -= leaf->size;
          ++b.stats.frames_freed;
        }
        if (m_swap) swap_forget(c, vm, gpa / kPage);  // a page the host had swapped out
        unlock_mmu(c, vm);
      }
      q.push_used(m, ch.head, 0);
    }
  }
  if (q.publish_used(m) && b.regs.vector()) {
    b.regs.set_isr();
    raise_virtual(*vm.vcpus.at(0), b.regs.vector());
  }
}

}  // namespace vmx::hv
