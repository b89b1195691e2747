#include "sim/stats.h"

#include <algorithm>
#include <cmath>
#include <string_view>

#include <fmt/format.h>

namespace vmx::stats {

// ---------------------------------------------------------------- Stat

Stat::Stat(Group* parent, std::string name, std::string unit, std::string desc)
    : m_name(std::move(name)), m_unit(std::move(unit)), m_desc(std::move(desc)), m_parent(parent) {
  if (m_parent) m_parent->add_stat(this);
}

Stat::~Stat() {
  if (m_parent) m_parent->remove_stat(this);
}

void Counter::accept(Visitor& v) const { v.counter(*this); }
void Gauge::accept(Visitor& v) const { v.gauge(*this); }
void Ratio::accept(Visitor& v) const { v.ratio(*this); }
void Histogram::accept(Visitor& v) const { v.histogram(*this); }

// ---------------------------------------------------------------- Histogram

std::uint64_t Histogram::bucket_lo(unsigned b) {
  if (b < kSub) return b;
  unsigned shift = b / kSub - 1;
  return (static_cast<std::uint64_t>(kSub) + (b % kSub)) << shift;
}

std::uint64_t Histogram::bucket_hi(unsigned b) {
  if (b < kSub) return b;
  unsigned shift = b / kSub - 1;
  return bucket_lo(b) + ((std::uint64_t{1} << shift) - 1);  // no overflow at the top bucket
}

std::uint64_t Histogram::percentile(double p) const {
  if (m_count == 0) return 0;
  if (!(p > 0)) return m_min;  // also NaN
  if (p >= 100) return m_max;
  // Rank of the wanted sample, 1-based; the tiny slack keeps e.g. 99.9% of
  // 1000 at rank 999 despite 99.9 not being exact in binary.
  double r = p / 100.0 * static_cast<double>(m_count);
  r = std::ceil(r - r * 1e-12);
  std::uint64_t rank = r < 1 ? 1 : static_cast<std::uint64_t>(r);
  if (rank > m_count) rank = m_count;
  std::uint64_t cum = 0;
  unsigned first = bucket_of(m_min), last = bucket_of(m_max);
  for (unsigned b = first; b <= last; ++b) {
    cum += m_buckets[b];
    if (cum >= rank) return std::clamp(bucket_hi(b), m_min, m_max);
  }
  return m_max;  // unreachable when the counts are consistent
}

std::vector<Histogram::Bucket> Histogram::buckets() const {
  std::vector<Bucket> out;
  if (m_count == 0) return out;
  for (unsigned b = bucket_of(m_min), last = bucket_of(m_max); b <= last; ++b)
    if (m_buckets[b]) out.push_back({bucket_lo(b), bucket_hi(b), m_buckets[b]});
  return out;
}

void Histogram::reset() {
  m_buckets.fill(0);
  m_count = m_sum = m_max = 0;
  m_min = UINT64_MAX;
}

// ---------------------------------------------------------------- Group

Group::Group(std::string name) : m_name(std::move(name)) {}

Group::Group(Group* parent, std::string name, std::string desc)
    : m_name(std::move(name)), m_desc(std::move(desc)), m_parent(parent) {
  if (m_parent) m_parent->add_child(this);
}

Group::~Group() {
  // Cut the links first: stats and children that outlive us (or die next, as
  // the owned ones do when the members below are destroyed) must not call back.
  for (Stat* s : m_stats) s->m_parent = nullptr;
  for (Group* g : m_children) g->m_parent = nullptr;
  if (m_parent) m_parent->remove_child(this);
}

void Group::remove_child(Group* g) {
  // Members die in reverse order of registration: search from the back.
  auto it = std::find(m_children.rbegin(), m_children.rend(), g);
  if (it != m_children.rend()) m_children.erase(std::next(it).base());
}

void Group::remove_stat(Stat* s) {
  auto it = std::find(m_stats.rbegin(), m_stats.rend(), s);
  if (it != m_stats.rend()) m_stats.erase(std::next(it).base());
}

std::string Group::path() const {
  if (!m_parent) return m_name;
  std::string p = m_parent->path();
  if (!p.empty()) p += '.';
  p += m_name;
  return p;
}

Group& Group::subgroup(const std::string& name, const std::string& desc) {
  for (Group* g : m_children)
    if (g->name() == name) return *g;
  m_owned_groups.push_back(std::make_unique<Group>(this, name, desc));
  return *m_owned_groups.back();
}

void Group::reset() {
  for (Stat* s : m_stats) s->reset();
  for (Group* g : m_children) g->reset();
}

void Group::accept(Visitor& v) const {
  v.begin_group(*this);
  for (const Stat* s : m_stats) s->accept(v);
  for (const Group* g : m_children) g->accept(v);
  v.end_group(*this);
}

const Group* Group::find_group(const std::string& dotted) const {
  const Group* g = this;
  std::string_view rest = dotted;
  while (!rest.empty()) {
    std::size_t dot = rest.find('.');
    std::string_view part = rest.substr(0, dot);
    rest = dot == std::string_view::npos ? std::string_view{} : rest.substr(dot + 1);
    if (dot != std::string_view::npos && rest.empty()) return nullptr;  // trailing dot
    const Group* next = nullptr;
    for (const Group* c : g->m_children)
      if (c->m_name == part) { next = c; break; }
    if (!next) return nullptr;
    g = next;
  }
  return g;
}

const Stat* Group::find(const std::string& dotted) const {
  std::size_t dot = dotted.rfind('.');
  const Group* g = this;
  std::string leaf = dotted;
  if (dot != std::string::npos) {
    if (dot == 0) return nullptr;
    g = find_group(dotted.substr(0, dot));
    if (!g) return nullptr;
    leaf = dotted.substr(dot + 1);
  }
  for (const Stat* s : g->m_stats)
    if (s->name() == leaf) return s;
  return nullptr;
}

// ---------------------------------------------------------------- writers

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f)
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        else
          out += ch;
    }
  }
  out += '"';
}

namespace {

void append_real(std::string& out, double v) {
  if (!std::isfinite(v))
    out += "null";
  else
    out += fmt::format("{}", v);
}

class JsonWriter final : public Visitor {
 public:
  std::string take() { return std::move(m_out); }

  void begin_group(const Group& g) override {
    if (m_first.empty())
      m_out += '{';
    else
      key(g.name()), m_out += '{';
    m_first.push_back(true);
  }
  void end_group(const Group&) override {
    bool empty = m_first.back();
    m_first.pop_back();
    if (!empty) newline();
    m_out += '}';
    if (m_first.empty()) m_out += '\n';
  }
  void counter(const Counter& c) override {
    key(c.name());
    m_out += std::to_string(c.value());
  }
  void gauge(const Gauge& g) override {
    key(g.name());
    append_real(m_out, g.value());
  }
  void ratio(const Ratio& r) override {
    key(r.name());
    append_real(m_out, r.value());
  }
  void histogram(const Histogram& h) override {
    key(h.name());
    m_out += '{';
    m_first.push_back(true);
    auto uint_field = [&](const char* k, std::uint64_t v) { key(k), m_out += std::to_string(v); };
    uint_field("count", h.count());
    uint_field("sum", h.sum());
    key("mean"), append_real(m_out, h.mean());
    uint_field("min", h.min());
    uint_field("max", h.max());
    uint_field("p50", h.percentile(50));
    uint_field("p90", h.percentile(90));
    uint_field("p99", h.percentile(99));
    uint_field("p999", h.percentile(99.9));
    key("buckets");
    auto bs = h.buckets();
    if (bs.empty()) {
      m_out += "[]";
    } else {
      m_out += '[';
      for (std::size_t i = 0; i < bs.size(); ++i) {
        if (i) m_out += ',';
        m_first.push_back(true);  // indent one level deeper
        newline();
        m_first.pop_back();
        m_out += fmt::format("[{}, {}, {}]", bs[i].lo, bs[i].hi, bs[i].count);
      }
      newline();
      m_out += ']';
    }
    m_first.pop_back();
    newline();
    m_out += '}';
  }

 private:
  void newline() {
    m_out += '\n';
    m_out.append(2 * m_first.size(), ' ');
  }
  // Separator, newline and indentation for the next member, then its key.
  void key(std::string_view k) {
    if (!m_first.back()) m_out += ',';
    m_first.back() = false;
    newline();
    append_json_string(m_out, k);
    m_out += ": ";
  }

  std::string m_out;
  std::vector<bool> m_first;  // per open object: no member written yet
};

class Flattener final : public Visitor {
 public:
  std::vector<std::pair<std::string, double>> take() { return std::move(m_out); }

  void begin_group(const Group& g) override {
    m_prefix.push_back(m_prefix.empty() ? g.path() : join(m_prefix.back(), g.name()));
  }
  void end_group(const Group&) override { m_prefix.pop_back(); }
  void counter(const Counter& c) override { add(c.name(), static_cast<double>(c.value())); }
  void gauge(const Gauge& g) override { add(g.name(), g.value()); }
  void ratio(const Ratio& r) override { add(r.name(), r.value()); }
  void histogram(const Histogram& h) override {
    std::string base = join(m_prefix.back(), h.name());
    m_out.emplace_back(base + ".count", static_cast<double>(h.count()));
    m_out.emplace_back(base + ".mean", h.mean());
    m_out.emplace_back(base + ".p50", static_cast<double>(h.percentile(50)));
    m_out.emplace_back(base + ".p99", static_cast<double>(h.percentile(99)));
    m_out.emplace_back(base + ".max", static_cast<double>(h.max()));
  }

 private:
  static std::string join(const std::string& a, const std::string& b) {
    return a.empty() ? b : a + "." + b;
  }
  void add(const std::string& name, double v) { m_out.emplace_back(join(m_prefix.back(), name), v); }

  std::vector<std::pair<std::string, double>> m_out;
  std::vector<std::string> m_prefix;
};

class Describer final : public Visitor {
 public:
  std::vector<StatInfo> take() { return std::move(m_out); }
  void begin_group(const Group& g) override {
    m_prefix.push_back(m_prefix.empty() ? g.path() : join(m_prefix.back(), g.name()));
  }
  void end_group(const Group&) override { m_prefix.pop_back(); }
  void counter(const Counter& c) override { add(c, "counter"); }
  void gauge(const Gauge& g) override { add(g, "gauge"); }
  void ratio(const Ratio& r) override { add(r, "ratio"); }
  void histogram(const Histogram& h) override { add(h, "histogram"); }

 private:
  static std::string join(const std::string& a, const std::string& b) { return a.empty() ? b : a + "." + b; }
  void add(const Stat& s, const char* kind) {
    m_out.push_back({join(m_prefix.back(), s.name()), kind, s.unit(), s.desc()});
  }
  std::vector<StatInfo> m_out;
  std::vector<std::string> m_prefix;
};

}  // namespace

std::vector<StatInfo> describe(const Group& root) {
  Describer d;
  root.accept(d);
  return d.take();
}

std::string describe_json(const Group& root) {
  std::string out = "{\n";
  bool first = true;
  for (const auto& s : describe(root)) {
    if (!first) out += ",\n";
    first = false;
    out += "  ";
    append_json_string(out, s.path);
    out += ": {\"kind\": ";
    append_json_string(out, s.kind);
    out += ", \"unit\": ";
    append_json_string(out, s.unit);
    out += ", \"desc\": ";
    append_json_string(out, s.desc);
    out += "}";
  }
  out += "\n}\n";
  return out;
}

std::string to_json(const Group& root) {
  JsonWriter w;
  root.accept(w);
  return w.take();
}

std::vector<std::pair<std::string, double>> flatten(const Group& root) {
  Flattener f;
  root.accept(f);
  return f.take();
}

}  // namespace vmx::stats
