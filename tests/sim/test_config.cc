// Tests of sim/config.h: reading, validation errors, overrides, the resolved
// config writer and the parameter reference.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "sim/config.h"

namespace cfg = vmx::cfg;

namespace {

// A small experiment tree exercising every kind of declaration.
struct CacheP {
  std::uint64_t size = 0;
  std::uint32_t ways = 0;
  std::uint32_t line = 0;
  std::uint32_t latency = 0;
  template <class V>
  void visit(V& v) {
    v.param(size, "size", "32KiB", cfg::Spec(cfg::Unit::Bytes).power_of_two(), "Capacity.");
    v.param(ways, "ways", "8", cfg::Spec().at_least(1).power_of_two(), "Associativity.");
    v.param(line, "line", "64", cfg::Spec(cfg::Unit::Bytes).at_least(16).power_of_two(), "Line size.");
    v.param(latency, "latency", "4", cfg::Spec(cfg::Unit::Cycles), "Hit latency | cycles.");
  }
};

struct CpuP {
  std::uint64_t freq = 0;
  CacheP stlb;
  bool smt = false;
  template <class V>
  void visit(V& v) {
    v.param(freq, "freq", "3GHz", cfg::Spec(cfg::Unit::Frequency), "Core clock.");
    v.section(stlb, "stlb", "Second-level TLB.");
    v.param(smt, "smt", "false", cfg::Spec(cfg::Unit::Flag), "Two threads per core.");
  }
};

struct PlatformP {
  CpuP cpu;
  std::uint64_t quantum = 0;
  template <class V>
  void visit(V& v) {
    v.section(cpu, "cpu", "The cores.");
    v.param(quantum, "quantum", "10us", cfg::Spec(cfg::Unit::Time), "Temporal decoupling quantum.");
  }
};

struct StreamP {
  std::uint64_t footprint = 0;
  std::uint64_t stride = 0;
  template <class V>
  void visit(V& v) {
    v.param(footprint, "footprint", "1MiB", cfg::Spec(cfg::Unit::Bytes), "Bytes touched.");
    v.param(stride, "stride", "64", cfg::Spec(cfg::Unit::Bytes), "Distance between accesses.");
  }
};

struct ComputeP {
  std::uint64_t iterations = 0;
  double ratio = 0;
  template <class V>
  void visit(V& v) {
    v.param(iterations, "iterations", "1000", cfg::Spec(cfg::Unit::Instructions), "Loop count.");
    v.param(ratio, "ratio", "0.5", cfg::Spec(cfg::Unit::Ratio).at_least(0).at_most(1), "Memory ratio.");
  }
};

struct WorkloadP {
  std::string name;
  std::string type;
  StreamP stream;
  ComputeP compute;
  template <class V>
  void visit(V& v) {
    v.param(name, "name", "w", cfg::Spec(cfg::Unit::Text), "Label.");
    v.variant(type, "type", "Kind of workload.", cfg::alt("stream", stream), cfg::alt("compute", compute));
  }
};

struct VmP {
  std::uint32_t vcpus = 0;
  std::uint64_t memory = 0;
  std::string paging;
  std::vector<WorkloadP> workloads;
  template <class V>
  void visit(V& v) {
    v.param(vcpus, "vcpus", "1", cfg::Spec().at_least(1).at_most(64), "Virtual CPUs.");
    v.param(memory, "memory", "1GiB", cfg::Spec(cfg::Unit::Bytes), "Guest memory.");
    v.param(paging, "paging", "4KiB", cfg::Spec().one_of({"4KiB", "2MiB"}), "Guest page size.");
    v.list(workloads, "workloads", "What runs in the VM.");
  }
};

struct ExpP {
  std::int64_t seed = 0;
  std::string label;
  PlatformP platform;
  std::vector<VmP> vms;
  template <class V>
  void visit(V& v) {
    v.param(seed, "seed", "1", cfg::Spec(), "Random seed.");
    v.param(label, "label", "", cfg::Spec(cfg::Unit::Text), "Free text.");
    v.section(platform, "platform", "The host machine.");
    v.list(vms, "vms", "Virtual machines.", 1);
  }
};

// Line numbers below are referred to by the tests; keep them stable.
const char* const kGood =
    "seed: 7\n"                    // 1
    "platform:\n"                  // 2
    "  cpu:\n"                     // 3
    "    freq: 2.5GHz\n"           // 4
    "    stlb:\n"                  // 5
    "      size: 64KiB\n"          // 6
    "      ways: 16\n"             // 7
    "    smt: true\n"              // 8
    "vms:\n"                       // 9
    "  - vcpus: 4\n"               // 10
    "    memory: 2GiB\n"           // 11
    "    workloads:\n"             // 12
    "      - type: compute\n"      // 13
    "        iterations: 100\n"    // 14
    "        ratio: 0.25\n"        // 15
    "      - name: s\n"            // 16
    "        footprint: 4MiB\n"    // 17
    "  - vcpus: 2\n";              // 18

// kGood with line `line` (1-based) replaced by `text`.
std::string with_line(int line, const std::string& text) {
  std::string s = kGood, out;
  int n = 1;
  std::size_t start = 0;
  for (std::size_t nl; (nl = s.find('\n', start)) != std::string::npos; start = nl + 1, ++n)
    out += (n == line ? text : s.substr(start, nl - start)) + "\n";
  return out;
}

std::string read_error(const cfg::Document& doc) {
  try {
    cfg::read<ExpP>(doc);
  } catch (const cfg::ConfigError& e) {
    return e.what();
  }
  return "no error";
}

std::string read_error(const std::string& text) { return read_error(cfg::Document::from_string(text, "x.yaml")); }

std::string override_error(cfg::Document& doc, const std::string& assignment) {
  try {
    doc.apply_override(assignment);
  } catch (const cfg::ConfigError& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("read takes values from YAML, with units, and defaults for the rest") {
  auto p = cfg::read<ExpP>(cfg::Document::from_string(kGood, "x.yaml"));
  CHECK(p.seed == 7);
  CHECK(p.label.empty());
  CHECK(p.platform.cpu.freq == 2500000000ull);
  CHECK(p.platform.cpu.stlb.size == 64 * 1024);
  CHECK(p.platform.cpu.stlb.ways == 16);
  CHECK(p.platform.cpu.stlb.line == 64);     // default
  CHECK(p.platform.cpu.stlb.latency == 4);   // default
  CHECK(p.platform.cpu.smt);
  CHECK(p.platform.quantum == 10 * 1000 * 1000ull);  // 10us in ps
  REQUIRE(p.vms.size() == 2);
  CHECK(p.vms[0].vcpus == 4);
  CHECK(p.vms[0].memory == (2ull << 30));
  CHECK(p.vms[0].paging == "4KiB");
  REQUIRE(p.vms[0].workloads.size() == 2);
  CHECK(p.vms[0].workloads[0].type == "compute");
  CHECK(p.vms[0].workloads[0].name == "w");
  CHECK(p.vms[0].workloads[0].compute.iterations == 100);
  CHECK(p.vms[0].workloads[0].compute.ratio == 0.25);
  CHECK(p.vms[0].workloads[1].type == "stream");  // first alternative by default
  CHECK(p.vms[0].workloads[1].name == "s");
  CHECK(p.vms[0].workloads[1].stream.footprint == (4ull << 20));
  CHECK(p.vms[1].vcpus == 2);
  CHECK(p.vms[1].memory == (1ull << 30));
  CHECK(p.vms[1].workloads.empty());
}

TEST_CASE("read accepts quoted values, empty sections and an empty document for optional parts") {
  auto p = cfg::read<ExpP>(cfg::Document::from_string("seed: \"-3\"\nplatform:\nvms: [{vcpus: '8'}]\n", "x.yaml"));
  CHECK(p.seed == -3);
  CHECK(p.platform.cpu.stlb.ways == 8);
  CHECK(p.vms.at(0).vcpus == 8);

  auto c = cfg::read<CacheP>(cfg::Document::from_string("", "empty.yaml"));
  CHECK(c.size == 32 * 1024);
}

TEST_CASE("a bad value names file, line, path, expectation and value") {
  try {
    cfg::read<ExpP>(cfg::Document::from_string(with_line(7, "      ways: 6"), "configs/x.yaml"));
    FAIL("no error");
  } catch (const cfg::ConfigError& e) {
    CHECK(std::string(e.what()) == "configs/x.yaml:7: platform.cpu.stlb.ways: must be a power of two (got 6)");
    CHECK(e.file() == "configs/x.yaml");
    CHECK(e.line() == 7);
    CHECK(e.path() == "platform.cpu.stlb.ways");
    CHECK(e.expected() == "must be a power of two");
    CHECK(e.found() == "6");
  }
  CHECK(read_error(with_line(4, "    freq: 3GB")) ==
        "x.yaml:4: platform.cpu.freq: expected a frequency such as 3GHz (got 3GB)");
  CHECK(read_error(with_line(8, "    smt: maybe")) == "x.yaml:8: platform.cpu.smt: expected true or false (got maybe)");
  CHECK(read_error(with_line(10, "  - vcpus: 65")) == "x.yaml:10: vms[0].vcpus: must be at most 64 (got 65)");
  CHECK(read_error(with_line(15, "        ratio: 1.5")) ==
        "x.yaml:15: vms[0].workloads[0].ratio: must be at most 1 (got 1.5)");
  CHECK(read_error(with_line(11, "    paging: 1GiB")) ==
        "x.yaml:11: vms[0].paging: expected one of: 4KiB, 2MiB (got 1GiB)");
}

TEST_CASE("a key given twice in one mapping is an error naming both lines") {
  try {
    cfg::Document::from_string("seed: 1\nplatform:\n  cpu:\n    freq: 2GHz\n    freq: 3GHz\nseed: 2\n", "d.yaml");
    FAIL("no error");
  } catch (const cfg::ConfigError& e) {
    CHECK(std::string(e.what()) == "d.yaml:5: platform.cpu.freq: each key once in a mapping (first given at line 4)");
  }
  // The same key in two different mappings (list items) is fine.
  CHECK_NOTHROW(cfg::Document::from_string("vms:\n  - name: a\n  - name: b\n", "d.yaml"));
  // Absurd nesting is refused before anything walks it.
  std::string deep;
  for (int i = 0; i < 100; ++i) deep += "[";
  for (int i = 0; i < 100; ++i) deep += "]";
  try {
    cfg::Document::from_string("seed: " + deep + "\n", "deep.yaml");
    FAIL("no error");
  } catch (const cfg::ConfigError& e) {
    CHECK(std::string(e.what()).find("nesting at most 64 levels deep") != std::string::npos);
  }
}

TEST_CASE("unknown keys are errors listing the accepted keys") {
  CHECK(read_error(with_line(7, "      wyas: 16")) ==
        "x.yaml:7: platform.cpu.stlb: unknown key 'wyas' (expected one of: size, ways, line, latency)");
  CHECK(read_error(with_line(1, "sead: 7")) ==
        "x.yaml:1: unknown key 'sead' (expected one of: seed, label, platform, vms)");
  // Keys of the other variant alternative are not accepted.
  CHECK(read_error(with_line(14, "        footprint: 1MiB")) ==
        "x.yaml:14: vms[0].workloads[0]: unknown key 'footprint' (expected one of: name, type, iterations, ratio)");
}

TEST_CASE("a map where a value is expected and vice versa are errors") {
  CHECK(read_error("platform:\n  cpu:\n    stlb: 5\nvms: [{}]\n") ==
        "x.yaml:3: platform.cpu.stlb: expected a map of keys (got 5)");
  CHECK(read_error(with_line(7, "      ways: [1, 2]")) ==
        "x.yaml:7: platform.cpu.stlb.ways: expected a single value (got a list)");
  CHECK(read_error(with_line(7, "      ways:")) == "x.yaml:7: platform.cpu.stlb.ways: expected a single value (got nothing)");
  CHECK(read_error("vms:\n  - vcpus: 2\n    workloads: 3\n") == "x.yaml:3: vms[0].workloads: expected a list (got 3)");
  CHECK(read_error("vms: [5]\n") == "x.yaml:1: vms[0]: expected a map of keys (got 5)");
  CHECK(read_error("- 1\n") == "x.yaml:1: expected a map of keys (got a list)");
}

TEST_CASE("variants read the type key and the chosen alternative's parameters") {
  CHECK(read_error(with_line(13, "      - type: graph")) ==
        "x.yaml:13: vms[0].workloads[0].type: expected one of: stream, compute (got graph)");
  auto w = cfg::read<WorkloadP>(cfg::Document::from_string("type: stream\nstride: 4KiB\n", "w.yaml"));
  CHECK(w.type == "stream");
  CHECK(w.stream.stride == 4096);
  CHECK(w.stream.footprint == (1u << 20));
  CHECK(w.compute.iterations == 1000);  // unselected alternative keeps its defaults
}

TEST_CASE("lists shorter than min_items are errors") {
  CHECK(read_error("seed: 1\nvms: []\n") == "x.yaml:2: vms: expected at least 1 item (got 0)");
  CHECK(read_error("seed: 1\n") == "x.yaml:1: vms: expected at least 1 item (got nothing)");
}

TEST_CASE("a sub-tree can be read at a dotted path") {
  auto doc = cfg::Document::from_string(kGood, "x.yaml");
  auto c = cfg::read<CacheP>(doc, "platform.cpu.stlb");
  CHECK(c.size == 64 * 1024);
  CHECK(c.ways == 16);
  auto w = cfg::read<WorkloadP>(doc, "vms[0].workloads[1]");
  CHECK(w.name == "s");
  auto absent = cfg::read<CacheP>(doc, "platform.gpu");
  CHECK(absent.ways == 8);
  auto bad = cfg::Document::from_string(with_line(7, "      ways: 0"), "x.yaml");
  CHECK_THROWS_WITH(cfg::read<CacheP>(bad, "platform.cpu.stlb"),
                    "x.yaml:7: platform.cpu.stlb.ways: must be at least 1 (got 0)");
  CHECK_THROWS_AS(cfg::read<CacheP>(doc, "platform..cpu"), std::invalid_argument);
}

TEST_CASE("Overrides from --set change values, create keys and report their own errors") {
  auto doc = cfg::Document::from_string(kGood, "x.yaml");
  doc.apply_override("vms[0].workloads[0].iterations=5000");
  doc.apply_override("platform.cpu.stlb.latency = 9");  // not in the file: created
  doc.apply_override("vms[1].workloads=[{type: compute}]");
  doc.apply_override("label=hello world");
  auto p = cfg::read<ExpP>(doc);
  CHECK(p.vms[0].workloads[0].compute.iterations == 5000);
  CHECK(p.platform.cpu.stlb.latency == 9);
  CHECK(p.vms.at(1).workloads.at(0).type == "compute");
  CHECK(p.label == "hello world");

  auto bad = cfg::Document::from_string(kGood, "x.yaml");
  bad.apply_override("vms[0].vcpus=0");
  try {
    cfg::read<ExpP>(bad);
    FAIL("no error");
  } catch (const cfg::ConfigError& e) {
    CHECK(std::string(e.what()) == "--set vms[0].vcpus: must be at least 1 (got 0)");
    CHECK(e.file() == "--set");
    CHECK(e.line() == 0);
  }

  auto replaced = cfg::Document::from_string(kGood, "x.yaml");
  replaced.apply_override("platform.cpu.stlb={ways: 3}");
  CHECK(read_error(replaced) == "--set platform.cpu.stlb.ways: must be a power of two (got 3)");

  auto unknown = cfg::Document::from_string(kGood, "x.yaml");
  unknown.apply_override("platform.gpu.cores=4");
  CHECK(read_error(unknown) == "--set platform: unknown key 'gpu' (expected one of: cpu, quantum)");

  // Errors in the file itself still point at the file.
  auto mixed = cfg::Document::from_string(with_line(7, "      ways: 6"), "x.yaml");
  mixed.apply_override("vms[0].vcpus=2");
  CHECK(read_error(mixed) == "x.yaml:7: platform.cpu.stlb.ways: must be a power of two (got 6)");
}

TEST_CASE("malformed --set assignments are errors naming --set") {
  auto doc = cfg::Document::from_string(kGood, "x.yaml");
  CHECK(override_error(doc, "vms[5].vcpus=1") == "--set vms[5]: index is past the end of the list (got 2 items)");
  CHECK(override_error(doc, "novalue") == "--set: expected path=value (got 'novalue')");
  CHECK(override_error(doc, "vms[0.vcpus=1") ==
        "--set: expected a path such as vms[0].vcpus before '=' (got 'vms[0.vcpus')");
  CHECK(override_error(doc, "=3") == "--set: expected a path such as vms[0].vcpus before '=' (got '')");
  CHECK(override_error(doc, "seed.x=1") == "--set seed: expected a map to hold 'x' (got 7)");
  CHECK(override_error(doc, "platform[0]=1") == "--set platform: expected a list (got a map)");
  CHECK(override_error(doc, "label=[1,") ==
        "--set label: expected a YAML value (end of sequence flow not found) (got '[1,')");
  // A failed override leaves the document unchanged.
  CHECK(override_error(doc, "platform.new.list[0]=1") == "--set platform.new.list: expected a list (got nothing)");
  CHECK(read_error(doc) == "no error");
}

TEST_CASE("copies of a document are independent") {
  auto base = cfg::Document::from_string(kGood, "x.yaml");
  cfg::Document copy = base;
  copy.apply_override("seed=99");
  cfg::Document assigned = cfg::Document::from_string("", "other");
  assigned = base;
  assigned.apply_override("seed=42");
  CHECK(cfg::read<ExpP>(base).seed == 7);
  CHECK(cfg::read<ExpP>(copy).seed == 99);
  CHECK(cfg::read<ExpP>(assigned).seed == 42);
}

TEST_CASE("documents from a node have no lines; files and syntax errors are located") {
  YAML::Node n;
  n["vms"].push_back(YAML::Load("{vcpus: 0}"));
  auto doc = cfg::Document::from_node(n, "dict");
  CHECK(read_error(doc) == "dict: vms[0].vcpus: must be at least 1 (got 0)");
  n["vms"][0]["vcpus"] = 3;  // the document holds its own copy
  CHECK(read_error(doc) == "dict: vms[0].vcpus: must be at least 1 (got 0)");

  CHECK_THROWS_WITH(cfg::Document::from_string("seed: 1\nvms: [1,\n", "bad.yaml"),
                    Catch::Matchers::StartsWith("bad.yaml:3: invalid YAML: "));
  CHECK_THROWS_WITH(cfg::Document::from_file("/nonexistent/x.yaml"),
                    "/nonexistent/x.yaml: cannot read file: No such file or directory");

  const std::string path = "/tmp/vmxsim_test_config.yaml";
  {
    std::ofstream out(path);
    out << with_line(7, "      ways: 6");
  }
  CHECK(read_error(cfg::Document::from_file(path)) == path + ":7: platform.cpu.stlb.ways: must be a power of two (got 6)");
  std::remove(path.c_str());
}

TEST_CASE("the resolved config uses canonical units and reads back to the same values") {
  auto p = cfg::read<ExpP>(cfg::Document::from_string(kGood, "x.yaml"));
  p.vms[0].workloads[0].compute.ratio = 0.1234567891;
  p.label = "a: b";
  std::string text = cfg::to_yaml_text(p);
  CHECK_THAT(text, Catch::Matchers::Contains("freq: 2500MHz"));
  CHECK_THAT(text, Catch::Matchers::Contains("size: 64KiB"));
  CHECK_THAT(text, Catch::Matchers::Contains("quantum: 10us"));
  CHECK_THAT(text, Catch::Matchers::Contains("latency: 4"));
  CHECK_THAT(text, Catch::Matchers::Contains("workloads: []"));

  auto q = cfg::read<ExpP>(cfg::Document::from_string(text, "resolved.yaml"));
  CHECK(cfg::to_yaml_text(q) == text);
  CHECK(q.label == "a: b");
  CHECK(q.platform.cpu.freq == p.platform.cpu.freq);
  CHECK(q.vms[0].workloads[0].compute.ratio == p.vms[0].workloads[0].compute.ratio);
  CHECK(q.vms[0].workloads[1].stream.footprint == p.vms[0].workloads[1].stream.footprint);

  YAML::Node node = cfg::to_yaml(p);
  CHECK(node["vms"][0]["workloads"][0]["type"].as<std::string>() == "compute");
  CHECK(!node["vms"][0]["workloads"][0]["footprint"].IsDefined());  // only the chosen alternative
  CHECK(node["seed"].as<std::int64_t>() == 7);
}

TEST_CASE("the reference has a table per section with unit, default and constraints") {
  std::string md = cfg::reference_markdown<ExpP>("Experiment parameters");
  CHECK_THAT(md, Catch::Matchers::StartsWith("# Experiment parameters\n"));
  CHECK_THAT(md, Catch::Matchers::Contains("| Key | Unit | Default | Constraints | Description |"));
  CHECK_THAT(md, Catch::Matchers::Contains("| `seed` | count | `1` |  | Random seed. |"));
  CHECK_THAT(md, Catch::Matchers::Contains("| `label` | text | `\"\"` |  | Free text. |"));
  CHECK_THAT(md, Catch::Matchers::Contains("\n## platform.cpu.stlb\n\nSecond-level TLB.\n"));
  CHECK_THAT(md, Catch::Matchers::Contains(
                     "| `platform.cpu.stlb.size` | bytes | `32KiB` | power of two | Capacity. |"));
  CHECK_THAT(md, Catch::Matchers::Contains(
                     "| `platform.cpu.stlb.line` | bytes | `64B` | >= 16B, power of two | Line size. |"));
  CHECK_THAT(md, Catch::Matchers::Contains("| `platform.cpu.stlb.latency` | cycles | `4` |  | Hit latency \\| cycles. |"));
  CHECK_THAT(md, Catch::Matchers::Contains("| `platform.cpu.smt` | flag | `false` |  | Two threads per core. |"));
  CHECK_THAT(md, Catch::Matchers::Contains("| `vms` | list | `[]` | at least 1 item | Virtual machines. |"));
  CHECK_THAT(md, Catch::Matchers::Contains("\n## vms[]\n"));
  CHECK_THAT(md, Catch::Matchers::Contains("| `vms[].vcpus` | count | `1` | >= 1, <= 64 | Virtual CPUs. |"));
  CHECK_THAT(md, Catch::Matchers::Contains("| `vms[].paging` | text | `4KiB` | one of: 4KiB, 2MiB | Guest page size. |"));
  CHECK_THAT(md, Catch::Matchers::Contains(
                     "| `vms[].workloads[].type` | text | `stream` | one of: stream, compute | Kind of workload. |"));
  CHECK_THAT(md, Catch::Matchers::Contains("\n## vms[].workloads[] (type: compute)\n"));
  CHECK_THAT(md, Catch::Matchers::Contains(
                     "| `vms[].workloads[].ratio` | ratio | `0.5` | >= 0, <= 1 | Memory ratio. |"));
  CHECK_THAT(md, Catch::Matchers::Contains("\n## vms[].workloads[] (type: stream)\n"));
  CHECK_THAT(md, Catch::Matchers::Contains("| `vms[].workloads[].footprint` | bytes | `1MiB` |  | Bytes touched. |"));
}
