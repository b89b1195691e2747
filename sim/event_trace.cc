#include "sim/event_trace.h"

#include <fmt/format.h>

#include "sim/stats.h"

namespace vmx::trace {

EventTrace* EventTrace::s_active = nullptr;

namespace {

struct Name {
  const char* text;
  Category bit;
};
constexpr Name kNames[] = {
    {"exits", kExits}, {"sched", kSched}, {"irq", kIrq}, {"dma", kDma}, {"walks", kWalks}, {"guest", kGuest},
};

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

// Microseconds with picosecond precision, as the format wants them.
void put_us(std::string& out, std::uint64_t ps) { fmt::format_to(std::back_inserter(out), "{}.{:06}", ps / 1000000, ps % 1000000); }

}  // namespace

namespace {
// A single-host row, or its place in the process of host `host`.
Row on_host(Row r, const std::string& host) {
  if (host.empty()) return r;
  return {"host " + host, r.process + " " + r.thread};
}
}  // namespace

Row core_row(unsigned core, const std::string& host) { return on_host({"cores", fmt::format("cpu{}", core)}, host); }
Row msi_row(const std::string& host) { return on_host({"devices", "interrupt messages"}, host); }
Row iommu_row(const std::string& host) { return on_host({"devices", "iommu"}, host); }
Row vcpu_row(const std::string& vm, unsigned vcpu, const std::string& host) {
  return on_host({"vm " + vm, fmt::format("vcpu{}", vcpu)}, host);
}
Row vcpu_threads_row(const std::string& vm, unsigned vcpu, const std::string& host) {
  return on_host({"vm " + vm, fmt::format("vcpu{} threads", vcpu)}, host);
}

const char* category_name(Category c) {
  for (const Name& n : kNames)
    if (n.bit == c) return n.text;
  if (c == kSeries) return "series";
  return "other";
}

bool parse_categories(const std::string& text, std::uint32_t& mask, std::string& why) {
  mask = 0;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    const std::size_t comma = text.find(',', pos);
    const std::string item = trim(text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos));
    bool known = false;
    for (const Name& n : kNames) {
      if (item == n.text) {
        mask |= n.bit;
        known = true;
      }
    }
    if (!known) {
      why = "a comma-separated list of exits, sched, irq, dma, guest, walks";
      if (!item.empty()) why += " ('" + item + "' is none of them)";
      return false;
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return true;
}

EventTrace::EventTrace(const EventTraceParams& params)
    : m_start(params.start), m_stop(params.stop ? params.stop : UINT64_MAX), m_max(params.max_events) {
  std::string why;
  if (params.enabled && !parse_categories(params.categories, m_mask, why))
    throw std::invalid_argument("event_trace.categories: expected " + why);
  if (!params.enabled) m_mask = 0;
  m_enabled = params.enabled;
  m_events.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(m_max, 1u << 16)));
}

unsigned EventTrace::track(const std::string& process, const std::string& thread) {
  for (unsigned i = 0; i < m_tracks.size(); ++i)
    if (m_tracks[i].process == process && m_tracks[i].thread == thread) return i;
  unsigned pid = 0, tid = 1;
  for (unsigned p = 0; p < m_processes.size(); ++p)
    if (m_processes[p] == process) pid = p + 1;
  if (!pid) {
    m_processes.push_back(process);
    pid = static_cast<unsigned>(m_processes.size());
  }
  for (const Track& t : m_tracks)
    if (t.pid == pid) ++tid;
  m_tracks.push_back({process, thread, pid, tid});
  return static_cast<unsigned>(m_tracks.size() - 1);
}

bool EventTrace::keep(std::uint64_t begin, std::uint64_t end) {
  if (end < m_start || begin >= m_stop) return false;
  if (m_events.size() >= m_max) {
    ++m_dropped;
    return false;
  }
  return true;
}

void EventTrace::slice(Category cat, unsigned track, const char* name, std::uint64_t begin_ps, std::uint64_t end_ps,
                       Arg a, Arg b,
                       Arg c) {
  if (end_ps < begin_ps) end_ps = begin_ps;
  if (!keep(begin_ps, end_ps)) return;
  m_events.push_back({name, begin_ps, end_ps, cat, track, false, {a, b, c}});
}

void EventTrace::instant(Category cat, unsigned track, const char* name, std::uint64_t at_ps, Arg a, Arg b, Arg c) {
  if (!keep(at_ps, at_ps)) return;
  m_events.push_back({name, at_ps, at_ps, cat, track, true, {a, b, c}});
}

void EventTrace::counter(unsigned track, const std::string& name, std::uint64_t at_ps, std::uint64_t value) {
  if (!m_enabled || !keep(at_ps, at_ps)) return;
  const char* stored = nullptr;
  for (const std::string& n : m_counter_names)
    if (n == name) stored = n.c_str();
  if (!stored) stored = m_counter_names.emplace_back(name).c_str();
  Event e{stored, at_ps, at_ps, kSeries, track, true, {Arg{"value", value, false}, {}, {}}};
  e.counter = true;
  m_events.push_back(e);
}

std::string EventTrace::json() const {
  std::string out;
  out.reserve(256 + m_events.size() * 110);
  out += "{\"displayTimeUnit\":\"ns\",\"otherData\":{\"generator\":\"vmxsim\",\"time_unit\":\"us\",";
  fmt::format_to(std::back_inserter(out), "\"events\":{},\"dropped\":{}}},\n\"traceEvents\":[\n",
                 m_events.size(), m_dropped);
  bool first = true;
  auto sep = [&] {
    if (!first) out += ",\n";
    first = false;
  };
  for (unsigned p = 0; p < m_processes.size(); ++p) {
    sep();
    fmt::format_to(std::back_inserter(out), "{{\"ph\":\"M\",\"pid\":{},\"name\":\"process_name\",\"args\":{{\"name\":", p + 1);
    stats::append_json_string(out, m_processes[p]);
    out += "}}";
    sep();
    fmt::format_to(std::back_inserter(out),
                   "{{\"ph\":\"M\",\"pid\":{},\"name\":\"process_sort_index\",\"args\":{{\"sort_index\":{}}}}}", p + 1,
                   p + 1);
  }
  for (const Track& t : m_tracks) {
    sep();
    fmt::format_to(std::back_inserter(out), "{{\"ph\":\"M\",\"pid\":{},\"tid\":{},\"name\":\"thread_name\",\"args\":{{\"name\":",
                   t.pid, t.tid);
    stats::append_json_string(out, t.thread);
    out += "}}";
  }
  for (const Event& e : m_events) {
    const Track& t = m_tracks[e.track];
    sep();
    fmt::format_to(std::back_inserter(out), "{{\"ph\":\"{}\",\"pid\":{},\"tid\":{},\"ts\":",
                   e.counter ? "C" : e.instant ? "i" : "X", t.pid, t.tid);
    put_us(out, e.begin);
    if (e.counter) {
      // a counter sample has no duration or scope
    } else if (e.instant) {
      out += ",\"s\":\"t\"";
    } else {
      out += ",\"dur\":";
      put_us(out, e.end - e.begin);
    }
    out += ",\"cat\":\"";
    out += category_name(e.cat);
    out += "\",\"name\":";
    stats::append_json_string(out, e.name);
    if (e.args[0].key) {
      out += ",\"args\":{";
      for (unsigned i = 0; i < 3 && e.args[i].key; ++i) {
        if (i) out += ',';
        stats::append_json_string(out, e.args[i].key);
        if (e.args[i].hex)
          fmt::format_to(std::back_inserter(out), ":\"{:#x}\"", e.args[i].value);
        else
          fmt::format_to(std::back_inserter(out), ":{}", e.args[i].value);
      }
      out += '}';
    }
    out += '}';
  }
  out += "\n]}\n";
  return out;
}

}  // namespace vmx::trace
