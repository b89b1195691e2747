// Live migration of a VM between two hosts by iterative pre-copy
// (docs/migration.md): the parameters of the hypervisor's migration code and
// of one migration. The mechanism is hypervisor/migration.cc, a client of
// dirty tracking (dirty_log.h), the EPT cursor, the frame allocator and the
// PF driver (host_nic.h).
#pragma once

#include <cstdint>
#include <string>

#include "hypervisor/dirty_log.h"
#include "sim/params.h"

namespace vmx::hv {

/// Path lengths and framing of the hypervisor's migration code
/// (hypervisor.live_migration).
struct LiveMigrationParams {
  std::uint64_t send_page;     // instructions
  std::uint64_t receive_frame; // instructions
  std::uint64_t vcpu_state;    // instructions
  std::uint64_t payload;       // bytes of page data per frame
  std::uint64_t batch_pages;   // pages per run of the sender
  std::uint64_t poll;          // ps
  // Auto-converge and post-copy (postcopy.cc).
  std::uint64_t throttle_timeslice;  // ps
  std::uint64_t remote_fault;        // instructions
  std::uint64_t page_request;        // instructions
  std::uint64_t announce;            // instructions
  // The stream's transport (mig_transport.cc).
  std::uint64_t window;          // frames
  std::uint64_t notsent_lowat;   // frames
  std::uint64_t initial_window;  // frames
  std::uint64_t ack_every;       // frames
  std::uint64_t ack;             // instructions
  std::uint64_t rto_min;         // ps
  std::uint64_t request_timeout; // ps

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(send_page, "send_page", "800", Spec(Unit::Instructions),
            "Sender: the fixed part of sending one guest page (bitmap walk, EPT look-up, stream header, "
            "accounting), besides the EPT loads and the PF driver's per-frame work and copies (assumption, of "
            "the order of QEMU's ram_save_target_page without compression).");
    v.param(receive_frame, "receive_frame", "300", Spec(Unit::Instructions),
            "Receiver: decoding one stream frame and placing its data, besides the copy into guest memory and "
            "the PF driver's receive (assumption, of the order of QEMU's ram_load_precopy per chunk).");
    v.param(vcpu_state, "vcpu_state", "2000", Spec(Unit::Instructions),
            "Saving or loading one vCPU's state (registers, VMCS guest state, LAPIC), besides its VMREADs, "
            "VMWRITEs, loads and stores (assumption, of the order of QEMU's kvm_arch_get_registers).");
    v.param(payload, "payload", "1448", Spec(Unit::Bytes).at_least(64).at_most(4000),
            "Page bytes per Ethernet frame: a 4 KiB page travels in ceil(4096 / payload) frames (default 1448: "
            "the TCP payload of a 1500-byte MTU with timestamps, as a QEMU migration stream over TCP).");
    v.param(batch_pages, "batch_pages", "64", Spec(Unit::Count).at_least(1),
            "Sender: pages sent per run of the migration thread before it yields its core (assumption).");
    v.param(poll, "poll", "20us", Spec(Unit::Time).at_least(1e6),
            "Sender: how long the migration thread sleeps when the PF's TX ring is full or it waits for the "
            "vCPUs to stop (assumption).");
    v.param(throttle_timeslice, "throttle_timeslice", "10ms", Spec(Unit::Time).at_least(1e6),
            "Auto-converge: a throttled vCPU runs this long between two sleeps of throttle/(1 - throttle) times "
            "it (QEMU's CPU_THROTTLE_TIMESLICE_NS, 10 ms, system/cpu-throttle.c).");
    v.param(remote_fault, "remote_fault", "1500", Spec(Unit::Instructions),
            "Post-copy destination: handling an EPT violation on a page not yet received (received-bitmap "
            "look-up, waiter queued, request frame built), besides the PF driver's transmit (assumption, of the "
            "order of a userfaultfd wake-up plus QEMU's postcopy fault thread and migrate_send_rp_req_pages).");
    v.param(page_request, "page_request", "500", Spec(Unit::Instructions),
            "Post-copy source: taking a page request off the return path and queueing it ahead of the background "
            "push (assumption, of the order of QEMU's ram_save_queue_pages).");
    v.param(announce, "announce", "400", Spec(Unit::Instructions),
            "Destination: building and sending one self-announce frame (migrations[].announce), besides its "
            "stores, the VF's MAC read over MMIO and the PF driver's transmit (assumption, of the order of QEMU's "
            "qemu_announce_self_iter).");
    v.param(window, "window", "64", Spec(Unit::Count).at_least(4).at_most(4096),
            "Transport: the receive window the receiving side advertises, in stream frames (frames it can take "
            "before acknowledging them); the sender never has more frames unacknowledged than the least of this, "
            "its congestion window and its own `window` (assumption: about 90 KiB of 1448-byte segments, of the "
            "order of the 64 KiB Linux advertises first from its 128 KiB default tcp_rmem).");
    v.param(notsent_lowat, "notsent_lowat", "8", Spec(Unit::Count).at_least(1).at_most(4096),
            "Transport: the migration thread writes page data into the send buffer only while fewer than this "
            "many frames there wait for the window (as Linux's TCP_NOTSENT_LOWAT socket option), so that a "
            "post-copy page request waits behind few frames (assumption; the send buffer holds window + this many "
            "frames).");
    v.param(initial_window, "initial_window", "10", Spec(Unit::Count).at_least(1).at_most(4096),
            "Transport: the congestion window at the start, in frames (RFC 6928's initial window of 10 "
            "segments, Linux's TCP_INIT_CWND).");
    v.param(ack_every, "ack_every", "8", Spec(Unit::Count).at_least(1).at_most(4096),
            "Transport: the receiver acknowledges after this many in-order frames, and at the end of each PF "
            "receive interrupt that brought any (assumption: of the order of what GRO coalesces per ACK; RFC "
            "5681 asks for at least every second full-sized segment).");
    v.param(ack, "ack", "300", Spec(Unit::Instructions),
            "Transport: building an acknowledgement (receiver) or processing one (sender: window, RTT estimate, "
            "loss detection), besides the PF driver's work (assumption, of the order of Linux's tcp_ack).");
    v.param(rto_min, "rto_min", "1ms", Spec(Unit::Time).at_least(1e6),
            "Transport: the least and the first retransmission timeout (RFC 6298's estimate otherwise, doubled "
            "per expiry up to 64 times this). Assumption: a data-centre route's rto_min; Linux's TCP_RTO_MIN "
            "(200 ms) is longer than the simulated runs.");
    v.param(request_timeout, "request_timeout", "1ms", Spec(Unit::Time).at_least(1e6),
            "Post-copy destination: a page request not answered (page not placed) this long after it was sent is "
            "sent again (assumption; QEMU's return path is a TCP stream, whose retransmission this stands for).");
  }
};

/// The destination's self-announce after the resumption (migrations[].announce,
/// QEMU's announce parameters): `rounds` frames, the first at once, then
/// after initial, initial + step, ... (each at most max).
struct AnnounceSpec {
  std::uint64_t rounds = 5;
  std::uint64_t initial = 0, step = 0, max = 0;  // ps
};

/// One migration as the source hypervisor runs it (migrations[]).
struct MigrationSpec {
  unsigned vm = 0;                  // the VM's index on the source hypervisor
  std::uint64_t at = 0;             // ps: when the migration thread starts
  unsigned core = 0;                // the source core the migration thread runs on
  DirtyMode mode = DirtyMode::Pml;  // dirty tracking
  std::uint64_t max_bandwidth = 0;  // bytes per second (0: unlimited)
  std::uint64_t downtime_limit = 0; // ps
  std::uint64_t max_rounds = 0;     // pre-copy rounds before a forced switchover
  std::uint64_t dst_mac = 0;        // the destination's migration port
  bool deferred = false;            // started by Hypervisor::migrate_start, not at `at`
  std::uint64_t src_mac = 0;
  // Auto-converge (postcopy.cc; QEMU's auto-converge capability).
  bool auto_converge = false;
  unsigned throttle_initial = 20, throttle_increment = 10, throttle_max = 99;  // percent
  unsigned throttle_trigger = 50;  // percent of the round's stream bytes
  // Post-copy (postcopy.cc): after postcopy_after pre-copy rounds (0: at once).
  bool postcopy = false;
  std::uint64_t postcopy_after = 0;
  std::uint64_t postcopy_bandwidth = 0;  // bytes per second of the background push (0: unlimited)
  bool vf_handshake = true;         // an assigned VF: quiesce it and track its DMA (vf_migration.cc)
};

}  // namespace vmx::hv
