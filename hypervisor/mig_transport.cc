// The migration stream's transport (docs/migration.md, "The stream's
// transport"): a simplified TCP in the two hypervisors, so that the stream
// arrives complete and in order although frames may be lost on the way (the
// destination PF's receive ring or a switch port overflowing, a frame
// corrupted on the wire).
//
// Sender (source host). The migration thread writes each frame into a send
// buffer in hypervisor memory (header and payload copied there, as a write
// into a socket copies into the socket's buffer) and gives it the next
// sequence number; the transport hands frames from the buffer to the PF
// while fewer than min(congestion window, receive window) frames are
// unacknowledged. ACKs arrive at a port of the source's PF switch, in the
// PF's receive interrupt; each cumulative ACK frees buffer space, feeds the
// RTT estimate (RFC 6298, Karn's rule) and grows the congestion window
// (slow start, then one frame per window: RFC 5681), transmits what the
// window now allows, and wakes the migration thread if it waited for room.
// Loss: three duplicate ACKs (fast retransmit) or the retransmission timer
// (a timed job on the migration core) halve the congestion window (to 1 on
// a timeout), and transmission goes back to the oldest unacknowledged frame
// (go-back-N: the receiver keeps no frame out of order).
//
// Receiver (destination host). In the PF's receive interrupt, a frame with
// the next expected sequence number is processed; any other is dropped and
// answered at once by an ACK of the next expected (a duplicate ACK). In-order
// frames are acknowledged every ack_every frames and at the end of each
// receive interrupt. The ACK advertises the receive window.
//
// Every step is charged as the operations of the core doing it.
#include "hypervisor/migration_state.h"

#include <algorithm>

#include <fmt/format.h>

#include "hypervisor/mig_stream.h"

namespace vmx::hv {

using namespace detail;
using namespace stream;

namespace {
constexpr std::uint64_t kCodeTpSend = kCodeMigTransport;
constexpr std::uint64_t kCodeTpRecv = kCodeMigTransport + 0x800;
constexpr unsigned kDupAckThreshold = 3;  // RFC 5681, 3.2
constexpr std::uint64_t kRtoBackoffMax = 64;
std::int32_t diff(std::uint32_t a, std::uint32_t b) { return static_cast<std::int32_t>(a - b); }
std::uint64_t mac_at(Core& c, std::uint64_t a) { return c.load(a, 4) | (c.load(a + 4, 2) << 32); }
}  // namespace

// --- Sender --------------------------------------------------------------------------

void Hypervisor::mig_tp_start(Core& c, Vm& vm) {
  MigrationOut& m = *vm.mig_out;
  const LiveMigrationParams& lp = m_p.live_migration;
  m.tp = std::make_unique<MigTransport>();
  MigTransport& t = *m.tp;
  t.hv = this;
  t.vm = &vm;
  t.stats = std::make_unique<MigTransport::Stats>(m.stats.get());
  const std::uint64_t frame = kHeader + lp.payload;
  t.slot_bytes = frame <= 2048 ? 2048 : 4096;
  t.slots = static_cast<std::uint32_t>(lp.window + lp.notsent_lowat);
  const std::uint32_t per_page = static_cast<std::uint32_t>(kPage / t.slot_bytes);
  for (std::uint32_t i = 0; i < (t.slots + per_page - 1) / per_page; ++i) t.pages.push_back(alloc_host_frame());
  t.meta.assign(t.slots, {});
  t.cwnd = static_cast<std::uint32_t>(lp.initial_window);
  t.ssthresh = t.rwnd = static_cast<std::uint32_t>(lp.window);
  t.rto = ps_to_tsc(lp.rto_min);
  t.start_tsc = c.rdtsc();
  t.stats->max_cwnd.set(t.cwnd);
  charge(c, lp.ack, kCodeTpSend);
  m_host_nic->attach(m.spec.src_mac, &t);  // ACKs and post-copy requests come back here
}

unsigned Hypervisor::mig_tp_room(const Vm& vm, bool bulk) const {
  const MigTransport& t = *vm.mig_out->tp;
  const std::uint32_t held = t.end - t.una, unsent = t.end - t.nxt;
  std::uint32_t room = t.slots > held ? t.slots - held : 0;
  if (bulk) {
    const auto lowat = static_cast<std::uint32_t>(m_p.live_migration.notsent_lowat);
    room = std::min(room, lowat > unsent ? lowat - unsent : 0);
  }
  return room;
}

void Hypervisor::mig_send(Core& c, Vm& vm, std::uint32_t type, std::uint64_t addr, std::uint64_t hpa,
                          std::uint32_t len) {
  MigrationOut& m = *vm.mig_out;
  MigTransport& t = *m.tp;
  if (t.end - t.una >= t.slots)
    throw cpu::SimulationError("hypervisor: migration frame written with the send buffer full");
  const std::uint32_t slot = t.end % t.slots;
  const std::uint64_t h = t.pages[slot / (kPage / t.slot_bytes)] + (slot % (kPage / t.slot_bytes)) * t.slot_bytes;
  put_header(c, h, m.spec.dst_mac, m.spec.src_mac, type, len, addr, t.end);
  if (len) c.rep_movs(h + kHeader, hpa, len);
  t.meta[slot] = {kHeader + len, 0, false};
  ++t.end;
  ++m.frames;
  ++m.stats->frames;
  m.stats->bytes += kHeader + len;
  m.round_bytes += kHeader + len;
  // Pacing to max_bandwidth (QEMU's rate limit on what is written to the
  // channel), in TSC ticks per byte.
  if (m.spec.max_bandwidth && m.phase == MigrationOut::Phase::Rounds) {
    const std::uint64_t now = c.rdtsc();
    const auto ticks = static_cast<std::uint64_t>(static_cast<unsigned __int128>(kHeader + len) * m_tsc_hz /
                                                  m.spec.max_bandwidth);
    m.next_tsc = std::max(m.next_tsc, now) + ticks;
  }
  mig_tp_pump(c, vm);
}

void Hypervisor::mig_tp_pump(Core& c, Vm& vm) {
  MigrationOut& m = *vm.mig_out;
  MigTransport& t = *m.tp;
  if (t.nxt == t.end) return;
  const std::uint32_t wnd =
      std::min({t.cwnd, t.rwnd, static_cast<std::uint32_t>(m_p.live_migration.window)});
  unsigned free = m_host_nic->tx_free(c);
  bool sent = false;
  while (t.nxt != t.end) {
    if (t.nxt - t.una >= wnd) {
      if (!t.window_blocked) ++t.stats->window_stalls;
      t.window_blocked = true;
      break;
    }
    if (!free) {
      ++t.stats->ring_full;
      break;
    }
    const std::uint32_t slot = t.nxt % t.slots;
    const std::uint64_t h = t.pages[slot / (kPage / t.slot_bytes)] + (slot % (kPage / t.slot_bytes)) * t.slot_bytes;
    MigTransport::Slot& s = t.meta[slot];
    if (!m_host_nic->transmit(c, h, s.len))
      throw cpu::SimulationError("hypervisor: migration frame refused by the PF driver after its ring had room");
    --free;
    ++t.stats->transmitted;
    if (diff(t.nxt, t.max) < 0) {
      s.retransmitted = true;
      ++t.stats->retransmitted;
      t.stats->retransmitted_bytes += s.len;
    } else {
      s.sent_tsc = c.rdtsc();
      t.max = t.nxt + 1;
    }
    ++t.nxt;
    t.window_blocked = false;
    sent = true;
  }
  if (sent && !t.rto_armed) {
    t.rto_deadline = c.rdtsc() + t.rto;
    mig_tp_arm(c, vm);
  }
}

void Hypervisor::mig_tp_arm(Core& c, Vm& vm) {
  MigrationOut& m = *vm.mig_out;
  MigTransport& t = *m.tp;
  t.rto_armed = true;
  const auto ps =
      static_cast<std::uint64_t>(static_cast<unsigned __int128>(t.rto_deadline) * cfg::kPsPerSecond / m_tsc_hz);
  Vm* p = &vm;
  at(std::max(ps, c.now_ps() + 1), m.spec.core, [this, p](Core& cc) { mig_tp_timer(cc, *p); });
}

void Hypervisor::mig_tp_timer(Core& c, Vm& vm) {
  MigrationOut& m = *vm.mig_out;
  MigTransport& t = *m.tp;
  t.rto_armed = false;
  if (m.phase == MigrationOut::Phase::Done || t.una == t.max) return;  // nothing in flight: the timer stops
  const std::uint64_t now = c.rdtsc();
  if (now < t.rto_deadline) return mig_tp_arm(c, vm);  // an ACK moved it on meanwhile
  // Expiry (RFC 6298, 5.4-5.6; RFC 5681, 3.1): the window falls to one
  // frame, the timer backs off, and sending starts over at the oldest
  // unacknowledged frame.
  charge(c, m_p.live_migration.ack, kCodeTpSend);
  ++t.stats->timeouts;
  t.ssthresh = std::max<std::uint32_t>((t.max - t.una) / 2, 2);
  t.cwnd = 1;
  t.cwnd_acc = 0;
  t.recovery = true;
  t.recover = t.max;
  t.dupacks = 0;
  t.nxt = t.una;
  t.rto = std::min(t.rto * 2, ps_to_tsc(m_p.live_migration.rto_min) * kRtoBackoffMax);
  mig_tp_pump(c, vm);
  t.rto_deadline = now + t.rto;
  if (!t.rto_armed) mig_tp_arm(c, vm);
  if (t.parked) {
    t.parked = false;
    mig_thread(c, vm);
  }
}

void Hypervisor::mig_tp_wait(Core& c, Vm& vm) {
  MigrationOut& m = *vm.mig_out;
  MigTransport& t = *m.tp;
  ++t.stats->buffer_waits;
  if (t.una != t.max) {  // frames in flight: an ACK, or the timer, resumes the thread
    t.parked = true;
    return;
  }
  // Nothing in flight (the PF's TX ring was full): poll.
  Vm* p = &vm;
  at(c.now_ps() + m_p.live_migration.poll, m.spec.core, [this, p](Core& cc) {
    mig_tp_pump(cc, *p);
    mig_thread(cc, *p);
  });
}

void Hypervisor::mig_thread(Core& c, Vm& vm) {
  MigrationOut& m = *vm.mig_out;
  if (m.phase == MigrationOut::Phase::Done) return;
  if (m.post && m.post->on && (m.phase == MigrationOut::Phase::Final || m.phase == MigrationOut::Phase::Draining))
    return mig_postcopy_step(c, vm, false);
  mig_step(c, vm);
}

void Hypervisor::mig_tp_input(Core& c, Vm& vm, std::uint64_t buf, unsigned len) {
  MigrationOut& m = *vm.mig_out;
  if (len < kHeader || m.phase == MigrationOut::Phase::Done) return;
  const auto type = static_cast<std::uint32_t>(c.load(buf + kOffType, 4));
  if (type != kAck) {
    if (m.post) mig_postcopy_request(c, vm, buf, len);  // postcopy.cc
    return;
  }
  MigTransport& t = *m.tp;
  charge(c, m_p.live_migration.ack, kCodeTpSend);
  ++t.stats->acks;
  const auto ack = static_cast<std::uint32_t>(c.load(buf + kOffAddr));
  t.rwnd = std::max<std::uint32_t>(1, static_cast<std::uint32_t>(c.load(buf + kOffLen, 4)));
  const std::uint64_t now = c.rdtsc();
  if (diff(ack, t.una) > 0 && diff(ack, t.max) <= 0) {
    // New data acknowledged.
    const std::uint32_t n = ack - t.una;
    const MigTransport::Slot& last = t.meta[(ack - 1) % t.slots];
    if (!last.retransmitted) {  // RFC 6298, 2.2-2.3, with Karn's rule
      const std::uint64_t r = now - last.sent_tsc;
      if (!t.srtt) {
        t.srtt = r;
        t.rttvar = r / 2;
      } else {
        const std::uint64_t d = t.srtt > r ? t.srtt - r : r - t.srtt;
        t.rttvar = (3 * t.rttvar + d) / 4;
        t.srtt = (7 * t.srtt + r) / 8;
      }
      t.rto = std::max(ps_to_tsc(m_p.live_migration.rto_min), t.srtt + 4 * t.rttvar);
    }
    t.una = ack;
    if (diff(t.nxt, t.una) < 0) t.nxt = t.una;  // the originals arrived after all
    t.dupacks = 0;
    if (t.recovery && diff(t.una, t.recover) >= 0) t.recovery = false;
    if (!t.recovery) {  // RFC 5681, 3.1
      if (t.cwnd < t.ssthresh) {
        t.cwnd += n;
      } else if ((t.cwnd_acc += n) >= t.cwnd) {
        t.cwnd_acc -= t.cwnd;
        ++t.cwnd;
      }
      t.cwnd = std::min(t.cwnd, static_cast<std::uint32_t>(m_p.live_migration.window));
      t.stats->max_cwnd.set(std::max<double>(t.stats->max_cwnd.value(), t.cwnd));
    }
    t.rto_deadline = now + t.rto;  // RFC 6298, 5.3
  } else if (ack == t.una && t.una != t.max) {
    ++t.stats->dup_acks;
    if (++t.dupacks == kDupAckThreshold && !t.recovery) {
      // Fast retransmit (RFC 5681, 3.2), going back to the lost frame.
      ++t.stats->fast_retransmits;
      t.ssthresh = std::max<std::uint32_t>((t.max - t.una) / 2, 2);
      t.cwnd = t.ssthresh;
      t.cwnd_acc = 0;
      t.recovery = true;
      t.recover = t.max;
      t.nxt = t.una;
    }
  }
  mig_tp_pump(c, vm);
  if (t.una == t.end) mig_tp_finished(c, vm);
  if (t.parked && mig_tp_room(vm, false)) {
    t.parked = false;
    Vm* p = &vm;
    at(c.now_ps() + 1, m.spec.core, [this, p](Core& cc) { mig_thread(cc, *p); });
  }
}

void Hypervisor::mig_tp_finished(Core& c, Vm& vm) {
  MigrationOut& m = *vm.mig_out;
  MigTransport& t = *m.tp;
  const bool postcopy_done = m.post && m.post->on && m.post->finished;
  if (m.phase != MigrationOut::Phase::Draining && !postcopy_done) return;
  if (t.closing) return;
  t.closing = true;
  const std::uint64_t ticks = std::max<std::uint64_t>(1, c.rdtsc() - t.start_tsc);
  t.stats->goodput.set(static_cast<double>(static_cast<unsigned __int128>(m.stats->bytes.value()) * m_tsc_hz / ticks));
  t.stats->srtt_ns.set(static_cast<double>(static_cast<unsigned __int128>(t.srtt) * 1000000000ull / m_tsc_hz));
  if (m.post) m.post->released = true;
  // The destination has every frame: the VM is torn down here (its vCPUs
  // are all parked, off every core), on the migration core.
  Vm* p = &vm;
  at(c.now_ps() + 1, m.spec.core, [this, p](Core& cc) {
    MigrationOut& mo = *p->mig_out;
    mo.phase = MigrationOut::Phase::Done;
    p->migrated_out = true;
    stop_vm(cc, *p, mo.post ? "migrated to another host (post-copy)" : "migrated to another host");
    m_frames.put(mo.header);
    if (mo.post) m_frames.put(mo.post->scratch);
    for (std::uint64_t f : mo.tp->pages) m_frames.put(f);
    maybe_teardown(cc, *p);
  });
}

// --- Receiver ------------------------------------------------------------------------

bool Hypervisor::mig_tp_receive(Core& c, Vm& vm, std::uint64_t buf, unsigned len) {
  MigrationIn& m = *vm.mig_in;
  if (!m.tp_stats) {
    m.tp_stats = std::make_unique<MigrationIn::TransportStats>(m.stats.get());
    m.ack_frame = alloc_host_frame();
  }
  if (len < kHeader) return false;
  const auto seq = static_cast<std::uint32_t>(c.load(buf + kOffSeq, 4));
  if (!m.peer_mac) {
    m.own_mac = mac_at(c, buf);
    m.peer_mac = mac_at(c, buf + 6);
  }
  if (seq != m.rcv_nxt) {
    // Out of order (a frame before it was lost) or a duplicate (an ACK was
    // lost, or the sender went back): dropped, and the next expected
    // acknowledged at once (RFC 5681, 4.2).
    if (diff(seq, m.rcv_nxt) > 0) ++m.tp_stats->out_of_order;
    else ++m.tp_stats->duplicates;
    mig_tp_send_ack(c, vm, true);
    return false;
  }
  ++m.rcv_nxt;
  ++m.unacked;
  return true;
}

void Hypervisor::mig_tp_send_ack(Core& c, Vm& vm, bool dup) {
  MigrationIn& m = *vm.mig_in;
  charge(c, m_p.live_migration.ack, kCodeTpRecv);
  m.unacked = 0;
  put_header(c, m.ack_frame, m.peer_mac, m.own_mac, kAck, static_cast<std::uint32_t>(m_p.live_migration.window),
             m.rcv_nxt, 0);
  if (m_host_nic->tx_free(c) < 1 || !m_host_nic->transmit(c, m.ack_frame, kHeader)) {
    ++m.tp_stats->ack_failed;  // a later ACK covers it (cumulative)
    return;
  }
  ++m.tp_stats->acks;
  if (dup) ++m.tp_stats->dup_acks;
}

void Hypervisor::mig_tp_batch_end(Core& c, Vm& vm) {
  MigrationIn& m = *vm.mig_in;
  if (m.unacked) mig_tp_send_ack(c, vm, false);
}

}  // namespace vmx::hv
