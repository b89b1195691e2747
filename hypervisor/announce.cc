// Self-announce after a migration (docs/migration.md, "Self-announce"): once
// the VM runs on this host, the switch between the hosts still sends frames
// for its MAC to the port of the host it left, until a frame from that MAC
// arrives by this host's port. QEMU's destination therefore broadcasts a
// RARP request from every NIC's MAC as soon as the VM resumes
// (qemu_announce_self in net/announce.c, called when the incoming migration
// completes), then again after announce-initial, growing by announce-step up
// to announce-max, announce-rounds frames in all.
//
// Here the VM's network device is a VF the guest drives itself, so the
// hypervisor sends the frame on the guest's behalf through its PF (the host's
// own port on the NIC): the VF's MAC read from its registers, the frame built
// in hypervisor memory (QEMU's announce_self_create layout: broadcast
// destination, EtherType 0x8035, a RARP "request reverse" with the MAC as
// sender and target hardware address, padded to 60 bytes), transmitted by
// the PF driver. Later rounds are timed jobs on the same core.
#include "hypervisor/migration_state.h"

#include <algorithm>

#include "models/nic.h"

namespace vmx::hv {

using namespace detail;

namespace {
constexpr unsigned kFrameBytes = 60;      // the Ethernet minimum without FCS
constexpr std::uint16_t kRarp = 0x8035;   // EtherType of RARP (RFC 903)
constexpr std::uint16_t kReverseRequest = 3;

/// The announcement for `mac` (byte 0 in bits 7:0), as bytes on the wire.
void build_frame(std::uint8_t* f, std::uint64_t mac) {
  std::fill(f, f + kFrameBytes, 0);
  auto put_mac = [&](unsigned at) {
    for (unsigned i = 0; i < 6; ++i) f[at + i] = static_cast<std::uint8_t>(mac >> (8 * i));
  };
  auto put16 = [&](unsigned at, std::uint16_t v) {  // network byte order
    f[at] = static_cast<std::uint8_t>(v >> 8);
    f[at + 1] = static_cast<std::uint8_t>(v);
  };
  std::fill(f, f + 6, 0xFF);  // broadcast
  put_mac(6);
  put16(12, kRarp);
  put16(14, 1);       // hardware type: Ethernet
  put16(16, 0x0800);  // protocol type: IPv4
  f[18] = 6;          // hardware address length
  f[19] = 4;          // protocol address length
  put16(20, kReverseRequest);
  put_mac(22);  // sender hardware address (protocol address 0.0.0.0)
  put_mac(32);  // target hardware address
}
}  // namespace

void Hypervisor::migrate_announce(unsigned id, const AnnounceSpec& spec) {
  Vm& vm = *m_vms.at(id);
  if (!vm.mig_in) throw std::logic_error("hypervisor: announce for VM " + vm.name + " without an incoming migration");
  auto a = std::make_unique<MigrationIn::Announce>();
  a->spec = spec;
  a->left = spec.rounds;
  a->stats = std::make_unique<MigrationIn::Announce::Stats>(vm.group);
  vm.mig_in->announce = std::move(a);
}

void Hypervisor::mig_announce(Core& c, Vm& vm) {
  MigrationIn::Announce& a = *vm.mig_in->announce;
  if (!a.left || vm.ended()) return;
  const std::uint64_t t0 = c.now();
  charge(c, m_p.live_migration.announce, kCodeAnnounce);
  // The MAC the guest's VF has now (restored with its state): its registers.
  const std::uint64_t w = m_io.nic_mmio_base + (1ull + vm.vf) * m_io.nic_mmio_stride;
  const std::uint64_t mac = c.load(w + models::nicreg::kMacLo, 4) | (c.load(w + models::nicreg::kMacHi, 4) & 0xFFFF) << 32;
  if (!a.frame) a.frame = alloc_host_frame();
  std::uint8_t f[64] = {};
  build_frame(f, mac);
  for (unsigned i = 0; i < sizeof f; i += 8) {
    std::uint64_t word = 0;
    for (unsigned b = 8; b-- > 0;) word = (word << 8) | f[i + b];
    c.store(a.frame + i, word);
  }
  if (m_host_nic->transmit(c, a.frame, kFrameBytes)) {
    if (!a.stats->frames.value()) a.stats->first_ns.set(static_cast<double>(c.now_ps() / 1000));
    ++a.stats->frames;
  } else {
    ++a.stats->failed;
  }
  --a.left;
  a.stats->cycles += c.now() - t0;
  if (!a.left) return;
  // QEMU's qemu_announce_timer_step: initial, then initial + step, ...,
  // each at most max.
  const std::uint64_t sent = a.spec.rounds - a.left;  // frames sent so far, at least 1
  const std::uint64_t delay = std::min(a.spec.max, a.spec.initial + (sent - 1) * a.spec.step);
  Vm* p = &vm;
  at(c.now_ps() + delay, c.id(), [this, p](Core& cc) { mig_announce(cc, *p); });
}

}  // namespace vmx::hv
