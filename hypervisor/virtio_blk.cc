// virtio-blk back end (docs/memory.md, "Guest swap"): the register page's
// exits for both overcommit devices, the request queue, and completions
// timed by the host storage model (hypervisor/virtio_blk.h).
#include "hypervisor/hypervisor_state.h"

#include <algorithm>

#include <fmt/format.h>

#include "cpu/vmx.h"

namespace vmx::hv {

using namespace detail;
namespace blk = abi::virtio_blk;
namespace bal = abi::virtio_balloon;
using models::Storage;
using virtio::Chain;


models::Storage& Hypervisor::storage() {
  if (!m_storage) m_storage = std::make_unique<models::Storage>(m_p.storage, &m_stats);
  return *m_storage;
}

bool Hypervisor::overcommit_exit(Core& c, Vcpu& v, std::uint64_t gpa) {
  Vm& vm = *v.vm;
  const bool is_blk = vm.blk && gpa >= blk::kWindow && gpa < blk::kWindow + kPage;
  const bool is_balloon = vm.balloon && gpa >= bal::kWindow && gpa < bal::kWindow + kPage;
  if (!is_blk && !is_balloon) return false;
  // Decode assist (docs/model.md): VMX instruction information bits 3:0
  // are the access size, bit 4 a write; the store data is in RAX.
  const std::uint64_t info = vmr(c, field::kVmxInstructionInfo);
  const unsigned size = static_cast<unsigned>(info & 0xF);
  const bool write = info & 0x10;
  const std::uint64_t offset = gpa & (kPage - 1);
  std::uint64_t value = write ? v.regs[Regs::rax] : 0;
  charge(c, m_p.costs.virtio_mmio, is_blk ? kCodeBlk : kCodeBalloon);
  virtio::MmioRegs& regs = is_blk ? vm.blk->regs : vm.balloon->regs;
  bool ok = true;
  switch (regs.access(offset, size, write, value)) {
    case virtio::MmioRegs::Result::Done:
    case virtio::MmioRegs::Result::Ready: break;
    case virtio::MmioRegs::Result::Bad: ok = false; break;
    case virtio::MmioRegs::Result::Notify:
      if (is_blk) {
        ++vm.blk->stats.notifies;
        blk_process(c, vm, v.core);
      } else {
        balloon_process(c, vm, static_cast<unsigned>(value));
      }
      break;
    case virtio::MmioRegs::Result::NotCommon:
      // Configuration space (5.2.4, 5.5.4).
      if (is_blk && !write && offset == blk::kCapacity && size == 8) {
        value = vm.blk->blocks * (Storage::kBlock / blk::kSectorBytes);
      } else if (is_balloon && !write && offset == bal::kNumPages && size == 4) {
        value = balloon_target(c, vm);
      } else if (is_balloon && offset == bal::kActual && size == 4) {
        if (write) {
          vm.balloon->actual = static_cast<std::uint32_t>(value);
          vm.balloon->stats.ballooned.set(static_cast<double>(vm.balloon->actual));
        } else {
          value = vm.balloon->actual;
        }
      } else {
        ok = false;
      }
      break;
  }
  if (!ok && !write) value = ~0ull;  // unclaimed: all ones
  if (!write) v.regs[Regs::rax] = size == 8 ? value : value & ((1ull << (8 * size)) - 1);
  // Complete the instruction (SDM Vol. 3C, 28.2.4: exit instruction length).
  vmw(c, field::kGuestRip, vmr(c, field::kGuestRip) + vmr(c, field::kExitInstructionLength));
  return true;
}

void Hypervisor::blk_process(Core& c, Vm& vm, unsigned core) {
  BlkDev& d = *vm.blk;
  if (!d.regs.running() || !d.regs.queue_ready(blk::kRequestQueue)) return;
  virtio::DeviceQueue& q = d.regs.queue(blk::kRequestQueue);
  GuestMem m{*this, vm, c};
  Storage& disk = storage();
  std::uint64_t words[Storage::kBlock / 8];
  const std::uint64_t tsc = c.rdtsc();
  const std::uint64_t now_ps = c.now_ps();  // the storage device's own clock (hardware)
  virtio::Chain ch;
  q.disable_notify(m);
  for (;;) {
    while (q.has_avail(m)) {
      while (q.pop(m, ch)) {
        charge(c, m_p.costs.blk_request, kCodeBlk);
        BlkDev::Pending p;
        p.core = core;
        p.head = ch.head;
        p.status = blk::kStatusOk;
        const auto& hdr = ch.parts[0];
        const auto& data = ch.parts[1];
        const auto& st = ch.parts[2];
        // 5.2.6.1: header (device-readable), data, status (device-writable, one byte).
        const bool shape = ch.descriptors == 3 && !hdr.write && hdr.len == sizeof(blk::RequestHeader) && st.write &&
                           st.len == 1 && data.len > 0 && data.len % Storage::kBlock == 0 &&
                           data.addr % Storage::kBlock == 0;
        if (!shape) {
          ++d.stats.bad_requests;
          // Without a status byte nothing can be reported: give the chain back.
          if (ch.descriptors >= 1 && ch.parts[std::min(ch.descriptors, Chain::kParts) - 1].write) {
            p.status_gpa = ch.parts[std::min(ch.descriptors, Chain::kParts) - 1].addr;
            p.status = blk::kStatusIoErr;
          }
          p.tsc = tsc;
          d.pending.push_back(p);
          continue;
        }
        p.status_gpa = st.addr;
        const std::uint32_t type = static_cast<std::uint32_t>(m.load(hdr.addr, 4));
        const std::uint64_t sector = m.load(hdr.addr + 8, 8);
        const std::uint64_t sectors_per_block = Storage::kBlock / blk::kSectorBytes;
        const std::uint64_t block = sector / sectors_per_block, count = data.len / Storage::kBlock;
        std::uint64_t done_ps = now_ps;
        if ((type != blk::kTypeIn && type != blk::kTypeOut) || sector % sectors_per_block) {
          p.status = blk::kStatusUnsupp;
          ++d.stats.bad_requests;
        } else if (block + count > d.blocks) {
          p.status = blk::kStatusIoErr;
          ++d.stats.bad_requests;
        } else {
          const bool write = type == blk::kTypeOut;
          for (std::uint64_t i = 0; i < count; ++i) {
            // The data moves through a bounce buffer of the host block
            // layer: the loads or stores of that copy are the core's.
            const std::uint64_t h = m.hpa(data.addr + i * Storage::kBlock);
            if (!h) {
              p.status = blk::kStatusIoErr;
              break;
            }
            if (write) {
              for (unsigned w = 0; w < Storage::kBlock / 8; ++w) words[w] = c.load(h + 8ull * w, 8);
              disk.write_block(d.first_block + block + i, words);
            } else {
              disk.read_block(d.first_block + block + i, words);
              for (unsigned w = 0; w < Storage::kBlock / 8; ++w) c.store(h + 8ull * w, words[w], 8);
            }
          }
          if (p.status == blk::kStatusOk) {
            done_ps = disk.submit(now_ps, data.len, write);
            if (write) {
              ++d.stats.writes;
              d.stats.write_bytes += data.len;
            } else {
              ++d.stats.reads;
              d.stats.read_bytes += data.len;
              p.written = data.len;
            }
          }
        }
        p.written += 1;  // the status byte
        p.tsc = tsc + ps_to_tsc(done_ps - now_ps);
        d.pending.push_back(p);
      }
    }
    if (!q.enable_notify(m)) break;
    q.disable_notify(m);
  }
  program_timer(*m_percore[core]);
}

std::uint64_t Hypervisor::blk_deadline(const PerCore& pc) const {
  std::uint64_t next = 0;
  for (const auto& vm : m_vms)
    if (vm->blk && !vm->ended())
      for (const auto& p : vm->blk->pending)
        if (p.core == pc.id && (!next || p.tsc < next)) next = p.tsc;
  return next;
}

void Hypervisor::blk_complete(PerCore& pc, std::uint64_t now) {
  Core& c = *pc.core;
  for (auto& vmp : m_vms) {
    Vm& vm = *vmp;
    if (!vm.blk || vm.ended()) continue;
    BlkDev& d = *vm.blk;
    if (!d.regs.queue_ready(blk::kRequestQueue)) {
      d.pending.clear();  // the driver reset the device
      continue;
    }
    GuestMem m{*this, vm, c};
    virtio::DeviceQueue& q = d.regs.queue(blk::kRequestQueue);
    bool any = false;
    // In submission order (the used ring's order is the completion order).
    for (auto it = d.pending.begin(); it != d.pending.end();) {
      if (it->core != pc.id || it->tsc > now) {
        ++it;
        continue;
      }
      charge(c, m_p.costs.blk_complete, kCodeBlk);
      if (it->status_gpa) m.store(it->status_gpa, it->status, 1);
      q.push_used(m, it->head, it->written);
      any = true;
      it = d.pending.erase(it);
    }
    if (any && q.publish_used(m)) {
      d.regs.set_isr();
      ++d.stats.interrupts;
      // The disk's interrupt goes to vCPU 0 (its MSI-X vector's destination).
      if (d.regs.vector()) raise_virtual(*vm.vcpus.at(0), d.regs.vector());
    }
  }
}

}  // namespace vmx::hv
