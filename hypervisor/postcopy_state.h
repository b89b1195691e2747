// The state of auto-converge and post-copy (private to hypervisor/*.cc;
// docs/migration.md): the source's throttle and post-copy sender, the
// destination's post-copy receiver (hypervisor/postcopy.cc).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "hypervisor/hypervisor_state.h"

namespace vmx::hv {

// Frame types of the post-copy protocol, numbered past the pre-copy
// stream's (migration.cc), same header: type, length, address.
enum PostcopyFrame : std::uint32_t {
  kPostcopyFrames = 0x100,
  kPcDiscard = 0x100,  // payload: guest page numbers (8 bytes each) the destination drops (dirtied since sent)
  kPcRun = 0x101,      // address: the source's TSC at the pause; the VM resumes at the destination now
  kPcZero = 0x102,     // address: a guest page the source never backed (it reads as zeros)
  kPcRequest = 0x103,  // destination to source, address: a guest page a vCPU waits for
  kPcDone = 0x104,     // payload: frames the source sent; every page has been sent
};

/// Auto-converge on the source (QEMU's cpu-throttle): the throttle in force
/// and the count of rounds whose dirtying outran the trigger.
struct Hypervisor::Throttle {
  unsigned pct = 0;   // percent of each vCPU's time asleep (0: off)
  unsigned high = 0;  // QEMU's dirty_rate_high_cnt
  bool ticking = false;
  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "throttle", "auto-converge: vCPU throttling (postcopy.cc)") {}
    stats::Counter steps{this, "steps", "events", "times the throttle was started or raised"};
    stats::Gauge max_pct{this, "max_pct", "percent", "the highest throttle applied"};
    stats::Gauge final_pct{this, "final_pct", "percent", "the throttle in force at the switchover"};
    stats::Counter sleeps{this, "sleeps", "events", "vCPU sleeps imposed (one per vCPU per throttle period)"};
    stats::Counter sleep_ns{this, "sleep_ns", "ns", "vCPU sleep time imposed, summed over the vCPUs"};
  };
  std::unique_ptr<Stats> stats;
  std::vector<std::unique_ptr<stats::Gauge>> round_pct;  // the throttle in force during each round
};

/// Post-copy on the source: the pages still to send after the switch, the
/// destination's requests (they arrive at the transport's port of the
/// source's PF switch, mig_transport.cc) and the background push.
struct Hypervisor::PostcopyOut {
  bool on = false;                  // post-copy goes ahead at the switchover
  bool finished = false;             // every page sent, DONE too
  bool released = false;             // every frame acknowledged: the VM is freed here
  // The switch's frames, written as the send buffer has room: DISCARD lists
  // (stage 0, from left[idx]), early pages (1), vCPU records (2), RUN (3).
  unsigned stage = 0;
  std::size_t idx = 0;
  bool switched = false;
  std::vector<std::uint64_t> left;
  std::uint64_t scratch = 0;        // a frame of hypervisor memory: discard lists, the DONE record
  std::vector<bool> sent;           // by guest page number: sent since the switch
  std::vector<std::uint64_t> push;  // guest page numbers the background push sends, ascending
  std::size_t next = 0;
  std::deque<std::uint64_t> urgent;  // requested guest page numbers, oldest first
  bool urgent_job = false;
  std::uint64_t next_tsc = 0;  // pacing of the background push
  std::uint64_t switch_tsc = 0;

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "postcopy", "post-copy, source side (postcopy.cc)") {}
    stats::Counter requests{this, "requests", "frames", "page requests received from the destination"};
    stats::Counter requests_ignored{this, "requests_ignored", "frames",
                                    "requests for pages already in the stream (the transport delivers them)"};
    stats::Counter requested_sent{this, "requested_sent", "pages", "pages sent because the destination asked"};
    stats::Counter pushed{this, "pushed", "pages", "pages sent by the background push"};
    stats::Counter zero_pages{this, "zero_pages", "pages", "zero-page records for pages the source never backed"};
    stats::Counter discards{this, "discards", "pages", "pages the destination was told to drop at the switch"};
    stats::Counter early_pages{this, "early_pages", "pages",
                               "pages sent with the vCPU state (those holding records the hypervisor writes)"};
    stats::Counter push_cycles{this, "push_cycles", "cycles", "from the switch to the last page sent"};
  };
  std::unique_ptr<Stats> stats;
};

/// Post-copy on the destination: the page being received (placed whole, as
/// UFFDIO_COPY does), the requests in flight with the vCPUs waiting on them.
struct Hypervisor::PostcopyIn {
  std::uint64_t own_mac = 0, src_mac = 0;  // from the RUN frame's Ethernet header
  std::uint64_t stage = 0;                 // a frame of hypervisor memory: the page being received
  std::uint64_t stage_page = ~0ull, stage_bytes = 0;
  std::uint64_t req = 0;  // a frame of hypervisor memory: request frames, 64 bytes per vCPU
  std::uint64_t resume_tsc = 0;
  bool running = false;   // the VM resumed here
  bool complete = false;  // every page has arrived
  /// By guest page number: the request in flight and the vCPUs waiting
  /// for it, with the TSC of their faults.
  std::map<std::uint64_t, std::vector<std::pair<Vcpu*, std::uint64_t>>> waiting;

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "postcopy", "post-copy, destination side (postcopy.cc)") {}
    stats::Counter remote_faults{this, "remote_faults", "faults",
                                 "EPT violations on pages not here yet that sent a request to the source"};
    stats::Counter request_retries{this, "request_retries", "frames",
                                   "page requests sent again after request_timeout without the page"};
    stats::Counter fault_waits{this, "fault_waits", "faults",
                               "EPT violations on pages already requested (no new request)"};
    stats::Histogram fault_latency_ns{this, "fault_latency_ns", "ns",
                                      "from a vCPU's EPT violation on a missing page to the page placed and the "
                                      "vCPU woken"};
    stats::Counter pages{this, "pages", "pages", "pages placed after the switch (requested or pushed)"};
    stats::Counter zero_pages{this, "zero_pages", "pages", "pages placed as zeros (the source never backed them)"};
    stats::Counter discarded{this, "discarded", "pages", "pre-copied pages dropped at the switch (dirtied since)"};
    stats::Counter postcopy_ns{this, "postcopy_ns", "ns", "from the resumption here to the last page"};
    stats::Counter total_ns{this, "total_ns", "ns", "from the migration's start to the last page"};
  };
  std::unique_ptr<Stats> stats;
};

}  // namespace vmx::hv
