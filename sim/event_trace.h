// The optional event trace (docs/event_trace.md): a timeline of what
// happened when, written as Chrome trace-event JSON, which Perfetto
// (ui.perfetto.dev) and chrome://tracing open.
//
// Infrastructure only: it knows tracks, slices and instants, not hardware.
// Components ask `EventTrace::active()` and, if it is set and their
// category is on, record events in picoseconds of simulated time. With
// tracing off that costs one load and one branch.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "sim/params.h"

namespace vmx::trace {

/// What a component records (bits of EventTraceParams::categories).
enum Category : std::uint32_t {
  kExits = 1u << 0,  // VM entries and exits, per core
  kSched = 1u << 1,  // vCPU states: running, runnable (stolen), halted
  kIrq = 1u << 2,    // interrupt deliveries and device messages
  kDma = 1u << 3,    // DMA blocked by the IOMMU
  kWalks = 1u << 4,  // page walks of the cores (many: off by default)
  kGuest = 1u << 5,  // guest kernels' thread switches, per vCPU
  kSeries = 1u << 6,  // sampled statistics (series.interval): counter tracks, always on with the trace
};

struct EventTraceParams {
  bool enabled;
  std::string categories;
  std::uint64_t start, stop;  // ps
  std::uint64_t max_events;

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(enabled, "enabled", "false", Spec(Unit::Flag),
            "Record a timeline of events and write it as events.json beside stats.json (Chrome trace-event "
            "JSON: open it in ui.perfetto.dev or chrome://tracing).");
    v.param(categories, "categories", "exits,sched,irq,dma,guest", Spec(),
            "Comma-separated event categories: exits (VM entries and exits per core), sched (vCPU running, "
            "runnable, halted), irq (interrupt deliveries, MSIs), dma (DMA blocked by the IOMMU), guest (the guest "
            "kernels' thread switches), walks (page walks; many events).");
    v.param(start, "start", "0ps", Spec(Unit::Time), "Events that end before this simulated time are left out.");
    v.param(stop, "stop", "0ps", Spec(Unit::Time),
            "Events that begin at or after this simulated time are left out (0: the end of the run).");
    v.param(max_events, "max_events", "1000000", Spec().at_least(1),
            "Events kept at most; later ones are counted as dropped (about 100 bytes of JSON each).");
  }
};

/// The timeline's rows, named in one place (process, thread): the
/// components that record and the experiment that lays the rows out in
/// order (cores, devices, VMs) both use these. With several hosts
/// (docs/migration.md) each host is one process, "host <name>", and the
/// single-host process name leads the row's name ("cores cpu0",
/// "vm web vcpu0"); `host` empty gives the single-host rows.
struct Row {
  std::string process, thread;
};
Row core_row(unsigned core, const std::string& host = {});
Row msi_row(const std::string& host = {});    // device interrupt messages
Row iommu_row(const std::string& host = {});  // DMA the IOMMU blocked
Row vcpu_row(const std::string& vm, unsigned vcpu, const std::string& host = {});
/// The guest's own thread switches.
Row vcpu_threads_row(const std::string& vm, unsigned vcpu, const std::string& host = {});

/// The name of a category as the categories list and the "cat" field spell it.
const char* category_name(Category c);

/// Parses a categories list ("exits,sched"); returns false (with what was
/// expected in `why`) on an unknown name.
bool parse_categories(const std::string& text, std::uint32_t& mask, std::string& why);

/// One integer argument of an event, shown in the viewer's details pane.
struct Arg {
  const char* key = nullptr;  // null: unused
  std::uint64_t value = 0;
  bool hex = false;  // written as a "0x..." string
};

class EventTrace {
 public:
  explicit EventTrace(const EventTraceParams& params);
  EventTrace(const EventTrace&) = delete;
  EventTrace& operator=(const EventTrace&) = delete;

  /// The trace of this process's simulation, or null when tracing is off.
  static EventTrace* active() { return s_active; }
  /// Makes `t` the active trace (null: none).
  static void set_active(EventTrace* t) { s_active = t; }

  bool on(Category c) const { return (m_mask & c) != 0; }

  /// A timeline row: thread `thread` of process `process` in the viewer.
  /// The same names give the same track; names are copied.
  unsigned track(const std::string& process, const std::string& thread);
  unsigned track(const Row& row) { return track(row.process, row.thread); }

  /// A slice [begin, end) on a track, of category `cat` (the event's "cat"
  /// field, by which viewers filter). `name` must outlive the trace (a
  /// string literal or a static table entry).
  void slice(Category cat, unsigned track, const char* name, std::uint64_t begin_ps, std::uint64_t end_ps,
             Arg a = {}, Arg b = {}, Arg c = {});
  /// A point event on a track.
  void instant(Category cat, unsigned track, const char* name, std::uint64_t at_ps, Arg a = {}, Arg b = {},
               Arg c = {});
  /// A sample of a counter track (Chrome's "C" event): the viewer draws
  /// `name` of the track's process as a step plot of `value` over time.
  /// Recorded whenever the trace is enabled; the name is copied.
  void counter(unsigned track, const std::string& name, std::uint64_t at_ps, std::uint64_t value);

  std::uint64_t recorded() const { return m_events.size(); }
  std::uint64_t dropped() const { return m_dropped; }
  /// The whole trace as Chrome trace-event JSON (events in recording order;
  /// the viewer sorts them).
  std::string json() const;

 private:
  struct Event {
    const char* name;
    std::uint64_t begin, end;  // ps; end == begin with instant
    Category cat;
    unsigned track;
    bool instant;
    Arg args[3];
    bool counter = false;
  };
  struct Track {
    std::string process, thread;
    unsigned pid, tid;
  };
  bool keep(std::uint64_t begin, std::uint64_t end);

  static EventTrace* s_active;
  std::uint32_t m_mask = 0;
  std::uint64_t m_start, m_stop, m_max;
  std::uint64_t m_dropped = 0;
  std::vector<Track> m_tracks;
  std::vector<std::string> m_processes;  // pid - 1 -> name
  std::vector<Event> m_events;
  std::deque<std::string> m_counter_names;  // stable storage for counter() names
  bool m_enabled = false;
};

}  // namespace vmx::trace
