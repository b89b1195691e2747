// The per-VM state of live migration (private to hypervisor/*.cc;
// docs/migration.md): the source's migration thread and the destination's
// receive port (hypervisor/migration.cc).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <fmt/format.h>

#include "hypervisor/dirty_state.h"
#include "hypervisor/postcopy_state.h"

namespace vmx::hv {

/// The source's end of the stream's transport (mig_transport.cc): the send
/// buffer, the window and the retransmission state, and the port of the
/// source's PF switch where acknowledgements (and post-copy requests)
/// arrive. Sequence numbers count frames.
struct Hypervisor::MigTransport final : SwitchPort {
  Hypervisor* hv = nullptr;
  Vm* vm = nullptr;
  // The send buffer: `slots` frames of `slot_bytes` in hypervisor memory
  // (two per 4 KiB frame), frame seq in slot seq % slots.
  std::vector<std::uint64_t> pages;
  std::uint32_t slots = 0, slot_bytes = 2048;
  struct Slot {
    std::uint32_t len = 0;        // frame bytes
    std::uint64_t sent_tsc = 0;   // first transmission
    bool retransmitted = false;   // Karn: no RTT sample from it
  };
  std::vector<Slot> meta;
  std::uint32_t una = 0;  // oldest unacknowledged
  std::uint32_t nxt = 0;  // next to transmit (goes back on a loss)
  std::uint32_t max = 0;  // one past the highest transmitted
  std::uint32_t end = 0;  // one past the last written by the migration thread
  std::uint32_t cwnd = 0, ssthresh = 0, cwnd_acc = 0, rwnd = 0, dupacks = 0, recover = 0;
  bool recovery = false;
  std::uint64_t srtt = 0, rttvar = 0, rto = 0, rto_deadline = 0;  // TSC ticks
  bool rto_armed = false;
  bool closing = false;         // every frame acknowledged at the end: the VM's teardown is under way
  bool parked = false;          // the migration thread waits for room (an ACK resumes it)
  bool window_blocked = false;  // frames wait for the window (counted once per wait)
  std::uint64_t start_tsc = 0;
  void deliver(cpu::Core& c, std::uint64_t buf, unsigned len) override { hv->mig_tp_input(c, *vm, buf, len); }

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "transport", "the stream's transport, sender (mig_transport.cc)") {}
    stats::Counter transmitted{this, "transmitted", "frames", "frames handed to the PF, retransmissions included"};
    stats::Counter retransmitted{this, "retransmitted", "frames", "frames handed to the PF again"};
    stats::Counter retransmitted_bytes{this, "retransmitted_bytes", "bytes", "bytes handed to the PF again"};
    stats::Counter timeouts{this, "timeouts", "events", "retransmission timeouts (go back to the oldest unacked)"};
    stats::Counter fast_retransmits{this, "fast_retransmits", "events",
                                    "losses detected by three duplicate ACKs (go back to the oldest unacked)"};
    stats::Counter acks{this, "acks", "frames", "acknowledgements received"};
    stats::Counter dup_acks{this, "dup_acks", "frames", "duplicate acknowledgements received"};
    stats::Counter window_stalls{this, "window_stalls", "events",
                                 "times frames waited because the window (congestion or receive) was full"};
    stats::Counter buffer_waits{this, "buffer_waits", "events",
                                "times the migration thread waited for room in the send buffer"};
    stats::Counter ring_full{this, "ring_full", "events", "times frames waited for room in the PF's TX ring"};
    stats::Gauge max_cwnd{this, "max_cwnd", "frames", "the largest congestion window"};
    stats::Gauge srtt_ns{this, "srtt_ns", "ns", "smoothed round-trip time at the end"};
    stats::Gauge goodput{this, "goodput", "bytes/s",
                         "stream bytes (each once) over the time from the start to their last acknowledgement"};
  };
  std::unique_ptr<Stats> stats;
};

struct Hypervisor::MigrationOut {
  MigrationSpec spec;
  // Draining: every frame written, DONE included; waiting for the last ACK.
  enum class Phase : std::uint8_t { Start, Rounds, Pausing, Final, Draining, Done } phase = Phase::Start;
  unsigned tail = 0;  // stop-and-copy's last frames: 0 not yet sent, 1 sent
  std::vector<std::uint64_t> list;  // guest page numbers of the current round
  std::size_t next = 0;
  unsigned round = 0;
  std::uint64_t round_start = 0, round_bytes = 0;  // TSC, stream bytes
  std::uint64_t next_tsc = 0;   // pacing: the earliest TSC the next frame may leave
  std::uint64_t header = 0;     // a frame of hypervisor memory where frame headers are built
  std::uint64_t frames = 0;     // stream frames sent
  std::uint64_t started = 0, pause_tsc = 0;
  unsigned frames_per_page = 1;
  bool triggered = false;  // its first run is scheduled (at `at`, or by migrate_start)

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "migration", "live migration out of this host (migration.cc)") {}
    stats::Counter rounds{this, "rounds", "rounds", "pre-copy rounds, round 0 (every page) included"};
    stats::Counter pages_sent{this, "pages_sent", "pages", "guest pages sent, stop-and-copy included"};
    stats::Counter pages_dirtied{this, "pages_dirtied", "pages", "pages found dirty at the end of pre-copy rounds"};
    stats::Counter final_pages{this, "final_pages", "pages", "pages sent in stop-and-copy (the VM paused)"};
    stats::Counter frames{this, "frames", "frames", "stream frames written (each once; transport.* has retransmissions)"};
    stats::Counter bytes{this, "bytes", "bytes", "stream bytes written (headers included)"};
    stats::Counter paced{this, "paced", "events", "times the sender slept to keep to max_bandwidth"};
    stats::Gauge converged{this, "converged", "flag",
                           "1 if the switchover came by the downtime rule, 0 if forced by max_rounds"};
    stats::Counter switchover_pages{this, "switchover_pages", "pages", "pages dirty when switching over"};
    stats::Gauge bandwidth{this, "bandwidth", "bytes/s", "stream bandwidth measured over the last pre-copy round"};
    stats::Counter thread_cycles{this, "thread_cycles", "cycles", "core cycles the migration thread took"};
    stats::Counter pause_cycles{this, "pause_cycles", "cycles", "cycles from asking the vCPUs off to all parked"};
    stats::Counter total_cycles{this, "total_cycles", "cycles", "cycles from the start to the DONE frame"};
    stats::Counter vcpus{this, "vcpus", "vCPUs", "vCPU state records sent"};
  };
  std::unique_ptr<Stats> stats;
  /// Per round: pages sent in it and pages dirtied while it ran.
  struct Round : stats::Group {
    Round(stats::Group* p, unsigned n) : Group(p, fmt::format("round{}", n), fmt::format("pre-copy round {}", n)) {}
    stats::Counter pages_sent{this, "pages_sent", "pages", "pages sent in the round"};
    stats::Counter pages_dirtied{this, "pages_dirtied", "pages", "pages dirtied while the round ran"};
    stats::Counter cycles{this, "cycles", "cycles", "duration of the round"};
  };
  std::vector<std::unique_ptr<Round>> rounds;
  std::unique_ptr<MigTransport> tp;    // the stream's transport (mig_transport.cc)
  std::unique_ptr<Throttle> throttle;  // auto-converge (postcopy.cc)
  std::unique_ptr<PostcopyOut> post;   // post-copy (postcopy.cc)
};

struct Hypervisor::MigrationIn final : SwitchPort {
  Hypervisor* hv = nullptr;
  Vm* vm = nullptr;
  std::uint64_t page = ~0ull, hpa = 0;  // the last page written, and its frame
  std::uint64_t start_tsc = 0, frames = 0;
  bool done = false;
  // The transport's receiving end (mig_transport.cc).
  std::uint32_t rcv_nxt = 0;     // the next sequence number expected
  std::uint32_t unacked = 0;     // in-order frames not yet acknowledged
  std::uint64_t ack_frame = 0;   // hypervisor memory where ACKs are built
  std::uint64_t own_mac = 0, peer_mac = 0;  // from the stream's frames
  void deliver(cpu::Core& c, std::uint64_t buf, unsigned len) override { hv->mig_receive(c, *vm, buf, len); }
  void batch_end(cpu::Core& c) override { hv->mig_tp_batch_end(c, *vm); }
  struct TransportStats : stats::Group {
    explicit TransportStats(stats::Group* p)
        : Group(p, "transport", "the stream's transport, receiver (mig_transport.cc)") {}
    stats::Counter acks{this, "acks", "frames", "acknowledgements sent"};
    stats::Counter dup_acks{this, "dup_acks", "frames", "of those, sent at once for a frame out of order or again"};
    stats::Counter out_of_order{this, "out_of_order", "frames", "frames ahead of the next expected (dropped)"};
    stats::Counter duplicates{this, "duplicates", "frames", "frames already received (dropped)"};
    stats::Counter ack_failed{this, "ack_failed", "frames", "acknowledgements not sent: the PF's TX ring was full"};
  };
  std::unique_ptr<TransportStats> tp_stats;
  std::unique_ptr<PostcopyIn> post;  // post-copy (postcopy.cc), once the VM resumed here before its pages
  // Self-announce after the resumption (announce.cc; migrations[].announce).
  struct Announce {
    AnnounceSpec spec;
    std::uint64_t left = 0;   // frames still to send
    std::uint64_t frame = 0;  // hypervisor memory where the frame is built
    struct Stats : stats::Group {
      explicit Stats(stats::Group* p) : Group(p, "announce", "self-announce after the resumption (announce.cc)") {}
      stats::Counter frames{this, "frames", "frames", "self-announce frames handed to the PF"};
      stats::Counter failed{this, "failed", "frames", "frames the PF driver could not send (TX ring full)"};
      stats::Gauge first_ns{this, "first_ns", "ns", "simulated time of the first frame"};
      stats::Counter cycles{this, "cycles", "cycles", "core cycles building and sending the frames"};
    };
    std::unique_ptr<Stats> stats;
  };
  std::unique_ptr<Announce> announce;

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "migration_in", "live migration into this host (migration.cc)") {}
    stats::Counter frames{this, "frames", "frames", "stream frames received in order (each once)"};
    stats::Counter bytes{this, "bytes", "bytes", "stream bytes received in order (headers included)"};
    stats::Counter pages{this, "pages", "pages", "page frames written into guest memory (a page per its frames)"};
    stats::Counter lost_frames{this, "lost_frames", "frames", "frames the source sent that never arrived"};
    stats::Counter receive_cycles{this, "receive_cycles", "cycles", "core cycles the receive path took"};
    stats::Counter downtime_ns{this, "downtime_ns", "ns",
                               "from the source pausing the vCPUs to their release here, VF restoration and first announcement included (TSC difference)"};
    stats::Counter total_ns{this, "total_ns", "ns", "from the migration's start to the resumption here"};
    stats::Counter resumed{this, "resumed", "flag", "1 once the VM runs here"};
  };
  std::unique_ptr<Stats> stats;
};

}  // namespace vmx::hv
#include "hypervisor/vf_migration_state.h"
