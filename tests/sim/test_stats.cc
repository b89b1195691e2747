#include "sim/stats.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <memory>
#include <string>

using namespace vmx::stats;

namespace {

struct TlbStats : Group {
  using Group::Group;
  Counter hits{this, "hits", "lookups", "lookups that found a translation"};
  Counter misses{this, "misses", "lookups", "lookups that did not"};
  Counter lookups{this, "lookups", "lookups", "all lookups"};
  Ratio hit_rate{this, "hit_rate", "1", "hits per lookup", hits, lookups};
};

struct CpuStats : Group {
  using Group::Group;
  Counter insts{this, "insts", "instructions", "retired instructions"};
  Gauge freq{this, "freq", "GHz", "clock frequency"};
  TlbStats dtlb{this, "dtlb", "data TLB"};
};

}  // namespace

TEST_CASE("histogram: all-equal samples give that exact value", "[stats][histogram]") {
  Group root;
  auto& h = root.make<Histogram>("lat", "cycles", "latency");
  for (int i = 0; i < 100; ++i) h.sample(1234);
  for (double p : {0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0}) CHECK(h.percentile(p) == 1234);
  CHECK(h.count() == 100);
  CHECK(h.sum() == 123400);
  CHECK(h.min() == 1234);
  CHECK(h.max() == 1234);
  CHECK(h.mean() == 1234.0);

  Histogram big(nullptr, "big", "", "");
  big.sample(UINT64_MAX, 3);
  CHECK(big.percentile(50) == UINT64_MAX);
  CHECK(big.percentile(0) == UINT64_MAX);
}

TEST_CASE("histogram: uniform 1..1000 percentiles", "[stats][histogram]") {
  Histogram h(nullptr, "lat", "cycles", "latency");
  for (std::uint64_t v = 1; v <= 1000; ++v) h.sample(v);
  REQUIRE(h.count() == 1000);
  CHECK(h.sum() == 500500);
  CHECK(h.mean() == 500.5);
  CHECK(h.min() == 1);
  CHECK(h.max() == 1000);

  auto p50 = static_cast<double>(h.percentile(50));
  CHECK(std::abs(p50 - 500.0) <= 500.0 / 32);
  // Highest value of the bucket holding the rank-ceil(p*n) sample.
  CHECK(h.percentile(50) == 503);   // bucket [496, 503]
  CHECK(h.percentile(90) == 911);   // bucket [896, 911]
  CHECK(h.percentile(99) == 991);   // bucket [976, 991]
  CHECK(h.percentile(99.9) == 1000);  // bucket [992, 1007] clamped to max
  CHECK(h.percentile(100) == 1000);
  CHECK(h.percentile(0) == 1);
  CHECK(h.percentile(1) == 10);  // exact region below 32
  for (double p = 1; p <= 100; p += 0.5) {
    double truth = std::ceil(p / 100 * 1000);
    double got = static_cast<double>(h.percentile(p));
    INFO("p = " << p);
    CHECK(got >= truth);
    CHECK(got - truth <= truth / 32);
  }
}

TEST_CASE("histogram: empty, buckets and reset", "[stats][histogram]") {
  Histogram h(nullptr, "h", "", "");
  CHECK(h.count() == 0);
  CHECK(h.min() == 0);
  CHECK(h.max() == 0);
  CHECK(h.mean() == 0.0);
  CHECK(h.percentile(50) == 0);
  CHECK(h.buckets().empty());

  h.sample(3);
  h.sample(3, 4);
  h.sample(40);
  h.sample(100, 2);
  auto bs = h.buckets();
  REQUIRE(bs.size() == 3);
  CHECK(bs[0].lo == 3);
  CHECK(bs[0].hi == 3);
  CHECK(bs[0].count == 5);
  CHECK(bs[1].lo == 40);
  CHECK(bs[1].hi == 40);
  CHECK(bs[1].count == 1);
  CHECK(bs[2].lo == 100);
  CHECK(bs[2].hi == 101);
  CHECK(bs[2].count == 2);
  CHECK(h.count() == 8);
  CHECK(h.sum() == 15 + 40 + 200);
  CHECK(h.percentile(100) == 100);  // bucket hi 101 clamped to max

  h.reset();
  CHECK(h.count() == 0);
  CHECK(h.sum() == 0);
  CHECK(h.min() == 0);
  CHECK(h.max() == 0);
  CHECK(h.buckets().empty());
  h.sample(7);
  CHECK(h.min() == 7);
  CHECK(h.max() == 7);
  CHECK(h.buckets().size() == 1);
}

TEST_CASE("histogram: bucket_of / bucket_lo / bucket_hi consistency", "[stats][histogram]") {
  using H = Histogram;
  CHECK(H::bucket_lo(0) == 0);
  CHECK(H::bucket_hi(H::kBuckets - 1) == UINT64_MAX);
  CHECK(H::bucket_of(UINT64_MAX) == H::kBuckets - 1);
  CHECK(H::bucket_of(31) == 31);
  CHECK(H::bucket_of(32) == 32);
  CHECK(H::bucket_of(64) == 64);
  CHECK(H::bucket_lo(64) == 64);
  CHECK(H::bucket_hi(64) == 65);

  // Buckets tile [0, 2^64) without gaps or overlaps.
  for (unsigned b = 0; b + 1 < H::kBuckets; ++b) {
    INFO("b = " << b);
    REQUIRE(H::bucket_lo(b) <= H::bucket_hi(b));
    REQUIRE(H::bucket_hi(b) + 1 == H::bucket_lo(b + 1));
  }

  std::vector<std::uint64_t> values;
  for (unsigned k = 0; k < 64; ++k) {
    std::uint64_t p = std::uint64_t{1} << k;
    values.insert(values.end(), {p - 1, p, p + 1, p + p / 3, p + p / 2});
  }
  values.push_back(UINT64_MAX);
  values.push_back(UINT64_MAX - 1);
  for (std::uint64_t v : values) {
    INFO("v = " << v);
    unsigned b = H::bucket_of(v);
    REQUIRE(b < H::kBuckets);
    std::uint64_t lo = H::bucket_lo(b), hi = H::bucket_hi(b);
    CHECK(lo <= v);
    CHECK(v <= hi);
    CHECK(H::bucket_of(lo) == b);
    CHECK(H::bucket_of(hi) == b);
    if (v < H::kSub) {
      CHECK(lo == v);
      CHECK(hi == v);
    } else {
      // Relative width at most 1/2^kSubBits.
      CHECK((hi - lo + 1) * H::kSub <= lo);
    }
  }
  // Monotone.
  for (std::size_t i = 1; i < values.size(); ++i)
    if (values[i - 1] < values[i]) CHECK(H::bucket_of(values[i - 1]) <= H::bucket_of(values[i]));
}

TEST_CASE("group: paths, subgroup reuse, find", "[stats][group]") {
  Group root("system");
  CpuStats cpu0(&root, "cpu0", "first CPU");
  CpuStats cpu1(&root, "cpu1");

  CHECK(root.path() == "system");
  CHECK(cpu0.path() == "system.cpu0");
  CHECK(cpu1.dtlb.path() == "system.cpu1.dtlb");
  CHECK(cpu0.desc() == "first CPU");
  CHECK(cpu0.dtlb.parent() == &cpu0);
  REQUIRE(root.children().size() == 2);
  CHECK(root.children()[0] == &cpu0);
  CHECK(root.children()[1] == &cpu1);
  CHECK(cpu0.stats().size() == 2);
  CHECK(cpu0.dtlb.stats().size() == 4);

  Group anon;
  Group& vm = anon.subgroup("vm0");
  CHECK(vm.path() == "vm0");
  CHECK(vm.subgroup("exits").path() == "vm0.exits");

  Group& exits = cpu0.subgroup("exits", "per reason");
  CHECK(&cpu0.subgroup("exits") == &exits);
  CHECK(exits.desc() == "per reason");
  CHECK(exits.parent() == &cpu0);
  CHECK(&cpu0.subgroup("dtlb") == &cpu0.dtlb);  // an existing member group is reused too
  CHECK(cpu0.children().size() == 2);
  auto& io = exits.make<Counter>("io", "exits", "I/O exits");
  io += 5;
  CHECK(exits.path() == "system.cpu0.exits");

  CHECK(root.find("cpu0.dtlb.hits") == &cpu0.dtlb.hits);
  CHECK(root.find("cpu1.insts") == &cpu1.insts);
  CHECK(root.find("cpu0.exits.io") == &io);
  CHECK(cpu0.find("dtlb.misses") == &cpu0.dtlb.misses);
  CHECK(cpu0.find("insts") == &cpu0.insts);
  CHECK(root.find("cpu0.dtlb") == nullptr);
  CHECK(root.find("cpu2.insts") == nullptr);
  CHECK(root.find("cpu0.nope") == nullptr);
  CHECK(root.find("") == nullptr);
  CHECK(root.find(".insts") == nullptr);
  CHECK(root.find_group("cpu1.dtlb") == &cpu1.dtlb);
  CHECK(root.find_group("cpu1") == &cpu1);
  CHECK(root.find_group("") == &root);
  CHECK(root.find_group("cpu1.insts") == nullptr);
  CHECK(root.find_group("cpu1.") == nullptr);
  CHECK(root.find_group("cpu3") == nullptr);
}

TEST_CASE("group: reset of a subtree", "[stats][group]") {
  Group root("system");
  CpuStats cpu0(&root, "cpu0");
  CpuStats cpu1(&root, "cpu1");
  auto& lat = cpu0.subgroup("mem").make<Histogram>("lat", "cycles", "latency");
  for (CpuStats* c : {&cpu0, &cpu1}) {
    c->insts += 100;
    ++c->dtlb.hits;
    c->dtlb.lookups += 2;
    c->freq.set(2.5);
  }
  lat.sample(10);
  CHECK(cpu0.dtlb.hit_rate.value() == 0.5);

  cpu0.reset();
  CHECK(cpu0.insts.value() == 0);
  CHECK(cpu0.dtlb.hits.value() == 0);
  CHECK(cpu0.dtlb.lookups.value() == 0);
  CHECK(cpu0.dtlb.hit_rate.value() == 0.0);
  CHECK(lat.count() == 0);
  CHECK(cpu0.freq.value() == 2.5);  // gauges keep their state
  CHECK(cpu1.insts.value() == 100);
  CHECK(cpu1.dtlb.hits.value() == 1);
  CHECK(cpu1.dtlb.hit_rate.value() == 0.5);

  root.reset();
  CHECK(cpu1.insts.value() == 0);
  CHECK(cpu1.dtlb.lookups.value() == 0);
}

TEST_CASE("group: destruction in any order unregisters", "[stats][group]") {
  Group root("r");
  {
    CpuStats tmp(&root, "tmp");
    tmp.subgroup("owned").subgroup("deeper").make<Counter>("c", "", "");
    CHECK(root.children().size() == 1);
  }
  CHECK(root.children().empty());
  {
    Counter loose(&root, "loose", "", "");
    CHECK(root.stats().size() == 1);
  }
  CHECK(root.stats().empty());

  // Parent dies first: the survivors must not call back into it.
  auto parent = std::make_unique<Group>("p");
  auto child = std::make_unique<TlbStats>(parent.get(), "child");
  auto stat = std::make_unique<Counter>(parent.get(), "s", "", "");
  parent.reset();
  CHECK(child->parent() == nullptr);
  CHECK(child->path() == "child");
  child.reset();
  stat.reset();
  CHECK(to_json(root) == "{}\n");
}

TEST_CASE("to_json: exact output for a small tree", "[stats][json]") {
  Group root("system");
  CpuStats cpu0(&root, "cpu0");
  root.make<Gauge>("sim_seconds", "s", "simulated time").set(0.1);
  cpu0.insts += 1000;
  cpu0.freq.set(2.0);
  cpu0.dtlb.hits += 3;
  cpu0.dtlb.misses += 1;
  cpu0.dtlb.lookups += 4;
  auto& lat = cpu0.subgroup("mem").make<Histogram>("lat", "cycles", "load latency");
  lat.sample(2, 3);
  lat.sample(100);
  cpu0.subgroup("empty");
  root.make<Histogram>("none", "", "");

  const std::string expected = R"({
  "sim_seconds": 0.1,
  "none": {
    "count": 0,
    "sum": 0,
    "mean": 0,
    "min": 0,
    "max": 0,
    "p50": 0,
    "p90": 0,
    "p99": 0,
    "p999": 0,
    "buckets": []
  },
  "cpu0": {
    "insts": 1000,
    "freq": 2,
    "dtlb": {
      "hits": 3,
      "misses": 1,
      "lookups": 4,
      "hit_rate": 0.75
    },
    "mem": {
      "lat": {
        "count": 4,
        "sum": 106,
        "mean": 26.5,
        "min": 2,
        "max": 100,
        "p50": 2,
        "p90": 100,
        "p99": 100,
        "p999": 100,
        "buckets": [
          [2, 2, 3],
          [100, 101, 1]
        ]
      }
    },
    "empty": {}
  }
}
)";
  CHECK(to_json(root) == expected);
  CHECK(to_json(cpu0.dtlb) == R"({
  "hits": 3,
  "misses": 1,
  "lookups": 4,
  "hit_rate": 0.75
}
)");
}

TEST_CASE("to_json: escaping and non-finite reals", "[stats][json]") {
  Group root;
  Group& g = root.subgroup("a\"b\\c\n\x01");
  g.make<Gauge>("inf", "", "").set(std::numeric_limits<double>::infinity());
  g.make<Gauge>("nan", "", "").set(std::nan(""));
  g.make<Gauge>("third", "", "").set(1.0 / 3);
  g.make<Gauge>("big", "", "").set(1e300);
  g.make<Gauge>("neg", "", "").set(-0.25);
  CHECK(to_json(root) == "{\n"
                         "  \"a\\\"b\\\\c\\n\\u0001\": {\n"
                         "    \"inf\": null,\n"
                         "    \"nan\": null,\n"
                         "    \"third\": 0.3333333333333333,\n"
                         "    \"big\": 1e+300,\n"
                         "    \"neg\": -0.25\n"
                         "  }\n"
                         "}\n");
}

TEST_CASE("flatten: full dotted names in tree order", "[stats][flatten]") {
  Group root("system");
  CpuStats cpu0(&root, "cpu0");
  cpu0.insts += 7;
  cpu0.freq.set(3.5);
  cpu0.dtlb.hits += 1;
  cpu0.dtlb.lookups += 4;
  auto& lat = cpu0.subgroup("mem").make<Histogram>("lat", "cycles", "");
  lat.sample(10);
  lat.sample(20);

  auto flat = flatten(root);
  std::vector<std::pair<std::string, double>> expected = {
      {"system.cpu0.insts", 7},
      {"system.cpu0.freq", 3.5},
      {"system.cpu0.dtlb.hits", 1},
      {"system.cpu0.dtlb.misses", 0},
      {"system.cpu0.dtlb.lookups", 4},
      {"system.cpu0.dtlb.hit_rate", 0.25},
      {"system.cpu0.mem.lat.count", 2},
      {"system.cpu0.mem.lat.mean", 15},
      {"system.cpu0.mem.lat.p50", 10},
      {"system.cpu0.mem.lat.p99", 20},
      {"system.cpu0.mem.lat.max", 20},
  };
  CHECK(flat == expected);

  // A subtree keeps full paths; an unnamed root adds no prefix.
  auto sub = flatten(cpu0.dtlb);
  REQUIRE(sub.size() == 4);
  CHECK(sub[0].first == "system.cpu0.dtlb.hits");
  Group anon;
  anon.subgroup("vm0").make<Counter>("exits", "", "") += 2;
  auto a = flatten(anon);
  REQUIRE(a.size() == 1);
  CHECK(a[0].first == "vm0.exits");
  CHECK(a[0].second == 2.0);
}
