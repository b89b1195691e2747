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

struct Hypervisor::MigrationOut {
  MigrationSpec spec;
  enum class Phase : std::uint8_t { Start, Rounds, Pausing, Final, Done } phase = Phase::Start;
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
    stats::Counter frames{this, "frames", "frames", "stream frames handed to the PF"};
    stats::Counter bytes{this, "bytes", "bytes", "stream bytes handed to the PF (headers included)"};
    stats::Counter ring_full{this, "ring_full", "events", "times the sender waited for room in the PF's TX ring"};
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
  std::unique_ptr<Throttle> throttle;  // auto-converge (postcopy.cc)
  std::unique_ptr<PostcopyOut> post;   // post-copy (postcopy.cc)
};

struct Hypervisor::MigrationIn final : SwitchPort {
  Hypervisor* hv = nullptr;
  Vm* vm = nullptr;
  std::uint64_t page = ~0ull, hpa = 0;  // the last page written, and its frame
  std::uint64_t start_tsc = 0, frames = 0;
  bool done = false;
  void deliver(cpu::Core& c, std::uint64_t buf, unsigned len) override { hv->mig_receive(c, *vm, buf, len); }
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
    stats::Counter frames{this, "frames", "frames", "stream frames received"};
    stats::Counter bytes{this, "bytes", "bytes", "stream bytes received (headers included)"};
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
