// Statistics: typed, named, hierarchical, owned by the component that counts.
//
// A component declares its statistics as members of a struct derived from
// stats::Group, each registered once with name, unit and description:
//
//   struct TlbStats : stats::Group {
//     using Group::Group;
//     stats::Counter hits{this, "hits", "lookups", "lookups that found a translation"};
//     stats::Counter misses{this, "misses", "lookups", "lookups that did not"};
//   };
//
// The names compose along the group tree ("system.cpu0.dtlb.hits"). Counting
// on the hot path is a plain integer add. Writers (JSON, flat list) walk the
// tree in registration order, so output order is deterministic.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace vmx::stats {

class Group;
class Visitor;

/// Base of every statistic: a name in its group, a unit and a description.
class Stat {
 public:
  /// Registers with parent (if not null), which lists it until either dies.
  Stat(Group* parent, std::string name, std::string unit, std::string desc);
  virtual ~Stat();
  Stat(const Stat&) = delete;
  Stat& operator=(const Stat&) = delete;

  const std::string& name() const { return m_name; }
  const std::string& unit() const { return m_unit; }
  const std::string& desc() const { return m_desc; }
  virtual void reset() = 0;
  virtual void accept(Visitor& v) const = 0;

 private:
  friend class Group;
  std::string m_name, m_unit, m_desc;
  Group* m_parent = nullptr;  // cleared when the group dies first
};

/// A monotonically counted quantity (events, cycles, bytes).
class Counter final : public Stat {
 public:
  using Stat::Stat;
  void operator+=(std::uint64_t n) { m_value += n; }
  Counter& operator++() { ++m_value; return *this; }
  std::uint64_t value() const { return m_value; }
  void reset() override { m_value = 0; }
  void accept(Visitor& v) const override;

 private:
  std::uint64_t m_value = 0;
};

/// A value that is set rather than counted (a configuration echo, a level).
class Gauge final : public Stat {
 public:
  using Stat::Stat;
  void set(double v) { m_value = v; }
  double value() const { return m_value; }
  void reset() override {}  // a gauge describes state, not a count since reset
  void accept(Visitor& v) const override;

 private:
  double m_value = 0;
};

/// num / den of two counters, computed when read (0 when den is 0).
class Ratio final : public Stat {
 public:
  Ratio(Group* parent, std::string name, std::string unit, std::string desc, const Counter& num,
        const Counter& den)
      : Stat(parent, std::move(name), std::move(unit), std::move(desc)), m_num(num), m_den(den) {}
  double value() const {
    return m_den.value() ? static_cast<double>(m_num.value()) / static_cast<double>(m_den.value()) : 0.0;
  }
  void reset() override {}
  void accept(Visitor& v) const override;

 private:
  const Counter& m_num;
  const Counter& m_den;
};

/// Distribution of non-negative integer samples (latencies in cycles, sizes).
/// Log-linear buckets: values below 2^kSubBits exactly, above that 2^kSubBits
/// buckets per power of two, so any percentile is within 1/2^kSubBits of the
/// true sample value. Sampling never allocates.
class Histogram final : public Stat {
 public:
  static constexpr unsigned kSubBits = 5;
  static constexpr unsigned kSub = 1u << kSubBits;
  static constexpr unsigned kBuckets = (64 - kSubBits + 1) * kSub;

  using Stat::Stat;
  void sample(std::uint64_t v, std::uint64_t count = 1) {
    unsigned b = bucket_of(v);
    m_buckets[b] += count;
    m_count += count;
    m_sum += v * count;
    if (v < m_min) m_min = v;
    if (v > m_max) m_max = v;
  }
  std::uint64_t count() const { return m_count; }
  std::uint64_t sum() const { return m_sum; }
  std::uint64_t min() const { return m_count ? m_min : 0; }
  std::uint64_t max() const { return m_max; }
  double mean() const { return m_count ? static_cast<double>(m_sum) / static_cast<double>(m_count) : 0.0; }
  /// p in [0, 100]. The value below which p percent of the samples fall,
  /// resolved to the bucket and clamped to [min, max] (exact when all samples
  /// are equal). Returns the highest value of the bucket holding the sample of
  /// rank ceil(p/100 * count), so p100 is max and p <= 0 is min; 0 when empty.
  std::uint64_t percentile(double p) const;
  /// Non-empty buckets as (lowest value, highest value, count), ascending.
  struct Bucket { std::uint64_t lo, hi, count; };
  std::vector<Bucket> buckets() const;

  void reset() override;
  void accept(Visitor& v) const override;

  static unsigned bucket_of(std::uint64_t v) {
    if (v < kSub) return static_cast<unsigned>(v);
    unsigned msb = 63u - static_cast<unsigned>(__builtin_clzll(v));
    unsigned shift = msb - kSubBits;
    return (shift + 1) * kSub + static_cast<unsigned>((v >> shift) & (kSub - 1));
  }
  static std::uint64_t bucket_lo(unsigned b);
  static std::uint64_t bucket_hi(unsigned b);

 private:
  std::array<std::uint64_t, kBuckets> m_buckets{};
  std::uint64_t m_count = 0, m_sum = 0, m_min = UINT64_MAX, m_max = 0;
};

/// A node of the statistics tree.
class Group {
 public:
  /// A root group (no parent): its name is not part of its children's paths
  /// when empty.
  explicit Group(std::string name = "");
  Group(Group* parent, std::string name, std::string desc = "");
  virtual ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  const std::string& name() const { return m_name; }
  const std::string& desc() const { return m_desc; }
  Group* parent() const { return m_parent; }
  /// Dotted path from the root ("system.cpu0.dtlb").
  std::string path() const;

  /// A child group that this group owns, created on first use (for groups
  /// whose number is known only at run time: one per VM, per exit reason).
  Group& subgroup(const std::string& name, const std::string& desc = "");
  /// Owns a statistic created at run time (e.g. per exit reason).
  template <class S, class... Args>
  S& make(Args&&... args) {
    auto s = std::make_unique<S>(this, std::forward<Args>(args)...);
    S& ref = *s;
    m_owned_stats.push_back(std::move(s));
    return ref;
  }

  /// Owns a child group of a derived type created at run time (e.g. one per
  /// VM or per exit reason); G's constructor takes (Group* parent, args...).
  template <class G, class... Args>
  G& make_group(Args&&... args) {
    auto g = std::make_unique<G>(this, std::forward<Args>(args)...);
    G& ref = *g;
    m_owned_groups.push_back(std::move(g));
    return ref;
  }

  /// Resets every statistic below this group (warm-up boundary).
  void reset();
  /// begin_group(*this), own stats in registration order, then child groups
  /// in registration order (recursively), end_group(*this).
  void accept(Visitor& v) const;

  const std::vector<Stat*>& stats() const { return m_stats; }
  const std::vector<Group*>& children() const { return m_children; }
  /// The statistic or group at a dotted path below this group, or nullptr
  /// (first match in registration order; find_group("") is this group).
  const Stat* find(const std::string& dotted) const;
  const Group* find_group(const std::string& dotted) const;

 private:
  friend class Stat;
  void add_stat(Stat* s) { m_stats.push_back(s); }
  void add_child(Group* g) { m_children.push_back(g); }
  void remove_child(Group* g);
  void remove_stat(Stat* s);

  std::string m_name, m_desc;
  Group* m_parent = nullptr;
  std::vector<Stat*> m_stats;
  std::vector<Group*> m_children;
  std::vector<std::unique_ptr<Group>> m_owned_groups;
  std::vector<std::unique_ptr<Stat>> m_owned_stats;
};

/// Walks a statistics tree (writers implement this).
class Visitor {
 public:
  virtual ~Visitor() = default;
  virtual void begin_group(const Group& g) = 0;
  virtual void end_group(const Group& g) = 0;
  virtual void counter(const Counter& c) = 0;
  virtual void gauge(const Gauge& g) = 0;
  virtual void ratio(const Ratio& r) = 0;
  virtual void histogram(const Histogram& h) = 0;
};

/// The whole tree as a JSON document (deterministic: registration order,
/// integers exact, reals in shortest round-trip form). Histograms become
/// objects with count, sum, mean, min, max, p50, p90, p99, p999, buckets.
/// The document is the object of `root` itself (its name is not a key); each
/// group lists its stats first, then its child groups. Non-finite reals are
/// null. Pretty-printed with two-space indentation, ending with a newline.
std::string to_json(const Group& root);
/// Appends `s` to `out` as a JSON string literal (quoted and escaped).
void append_json_string(std::string& out, std::string_view s);

/// What a statistic is, for references and plot labels: its full dotted
/// path, kind (counter, gauge, ratio, histogram), unit and description.
struct StatInfo {
  std::string path, kind, unit, desc;
};
/// Every statistic below `root`, in to_json's order.
std::vector<StatInfo> describe(const Group& root);
/// The same as a JSON object {"path": {"kind": ..., "unit": ..., "desc": ...}}
/// (units.json beside stats.json).
std::string describe_json(const Group& root);

/// Every scalar as (dotted path, value): counters, gauges, ratios, and for
/// histograms path.count, path.mean, path.p50, path.p99, path.max. Paths are
/// full paths from the tree's root (as Group::path()), even when `root` is a
/// subtree; order as in to_json.
std::vector<std::pair<std::string, double>> flatten(const Group& root);

}  // namespace vmx::stats
