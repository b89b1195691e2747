// vmxsim_fuzz: a deterministic mutation fuzzer for vmxsim's input parsers.
//
//   vmxsim_fuzz TARGET [--iterations N] [--seed S] [--corpus PATH ...] [--save DIR]
//
// TARGET is one of
//   config   a YAML document: cfg::Document::from_string, then
//            experiment::load (every rule a config is checked against);
//   set      --set assignments applied to the default config, then load;
//   trace    a trace file's bytes: TraceFile::parse, then decoding to the end.
// Inputs are mutations of the seed corpus (files, or every *.yaml/*.vmxtrace
// under a directory): byte flips, insertions and deletions, splices of two
// inputs, and replacements of a YAML value or key by an interesting token.
// The same seed gives the same inputs, so a finding reproduces from its
// iteration number. Expected rejections (ConfigError, TraceError) are the
// point; anything else -- another exception, a crash or a sanitizer report
// (build with VMXSIM_SANITIZE=address,undefined) -- is a finding: the input
// is written to --save DIR (default: fuzz-findings/) and the run exits 1.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "experiment/experiment.h"
#include "sim/config.h"
#include "workloads/trace_file.h"

namespace fs = std::filesystem;

namespace {

// Values and keys that reach rarely taken paths: limits, units, types,
// YAML syntax. Mutations splice them in place of a value or a key.
const std::vector<std::string> kTokens = {
    "0", "1", "-1", "2", "3", "7", "64", "255", "256", "4095", "4096", "65535", "65536", "4294967295",
    "4294967296", "18446744073709551615", "18446744073709551616", "1e308", "-1e308", "nan", ".inf", "-.inf",
    "0x0", "0xFFFFFFFFFFFFFFFF", "0xFEC00000", "0xF0000000", "1ps", "1ns", "1us", "1ms", "1s", "10ms", "1h",
    "0s", "1B", "4KiB", "2MiB", "1GiB", "4TiB", "5TiB", "1Hz", "3GHz", "1THz", "true", "false", "null", "~",
    "[]", "{}", "[1, 2]", "{a: 1}", "''", "\"\"", "a", "ept", "shadow", "vf", "emulated", "none", "pmd",
    "kernel", "proportional", "realtime", "edf", "round_robin", "poll", "trap", "lazy", "eager", "trace",
    "cpuid_loop", "stream", "random_access", "pointer_chase", "net_stream", "net_rx", "net_pingpong",
    "*", "&a", "*a", "!!binary", "? ", ": ", "- ", "\t", "\n", "#", "%YAML 1.2", "---", "...",
    "vms[0]", "vms[99]", "platform.cores", "platform.memory", "hypervisor.ept_page_size"};

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

std::vector<std::string> load_corpus(const std::vector<std::string>& paths, const std::string& target) {
  std::vector<std::string> out;
  const std::string ext = target == "trace" ? ".vmxtrace" : ".yaml";
  for (const auto& p : paths) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<fs::path> files;
      for (const auto& e : fs::recursive_directory_iterator(p, ec))
        if (e.is_regular_file() && e.path().extension() == ext) files.push_back(e.path());
      std::sort(files.begin(), files.end());  // directory order is not deterministic
      for (const auto& f : files) out.push_back(read_file(f));
    } else if (fs::is_regular_file(p, ec)) {
      out.push_back(read_file(p));
    }
  }
  if (target == "set" || out.empty()) {
    // --set assignments: path=value pairs built from the tokens.
    if (target == "set")
      for (const char* a : {"vms[0].vcpus=2", "platform.cores=4", "duration=5ms", "platform.nic.enabled=true",
                            "vms[0].nic.type=vf", "hypervisor.ept_page_size=2MiB", "vms[0].memory=1GiB",
                            "vms[1].name=b", "event_trace.enabled=true", "seed=7"})
        out.push_back(a);
    if (out.empty()) out.push_back(vmx::experiment::quickstart_yaml());
  }
  return out;
}

class Mutator {
 public:
  explicit Mutator(std::uint64_t seed) : m_rng(seed) {}

  std::string mutate(const std::vector<std::string>& corpus) {
    std::string s = corpus[pick(corpus.size())];
    const unsigned rounds = 1 + static_cast<unsigned>(pick(4));
    for (unsigned r = 0; r < rounds; ++r) {
      switch (pick(8)) {
        case 0:  // flip a byte
          if (!s.empty()) s[pick(s.size())] ^= static_cast<char>(1u << pick(8));
          break;
        case 1:  // delete a span
          if (!s.empty()) {
            std::size_t at = pick(s.size());
            s.erase(at, 1 + pick(std::min<std::size_t>(16, s.size() - at)));
          }
          break;
        case 2:  // insert random bytes
          s.insert(pick(s.size() + 1), random_bytes(1 + pick(8)));
          break;
        case 3: {  // splice with another input
          const std::string& o = corpus[pick(corpus.size())];
          if (!o.empty()) {
            std::size_t from = pick(o.size());
            s.insert(pick(s.size() + 1), o.substr(from, 1 + pick(std::min<std::size_t>(64, o.size() - from))));
          }
          break;
        }
        case 4:
        case 5:
        case 6: {  // replace a value (after ": " or "=") or a key by a token
          const std::string& tok = kTokens[pick(kTokens.size())];
          std::size_t at = s.empty() ? 0 : pick(s.size());
          std::size_t colon = s.find_first_of(":=", at);
          if (colon == std::string::npos) colon = s.find_first_of(":=");
          if (colon != std::string::npos) {
            std::size_t start = colon + 1;
            while (start < s.size() && s[start] == ' ') ++start;
            std::size_t end = s.find_first_of("\n,}]", start);
            if (end == std::string::npos) end = s.size();
            s.replace(start, end - start, tok);
          } else {
            s.insert(at, tok);
          }
          break;
        }
        default:  // duplicate a line (repeated keys, longer lists)
          if (!s.empty()) {
            std::size_t at = pick(s.size());
            std::size_t b = s.rfind('\n', at);
            b = b == std::string::npos ? 0 : b + 1;
            std::size_t e = s.find('\n', at);
            e = e == std::string::npos ? s.size() : e + 1;
            s.insert(e, s.substr(b, e - b));
          }
      }
    }
    if (s.size() > (1u << 16)) s.resize(1u << 16);
    return s;
  }

 private:
  std::size_t pick(std::size_t n) { return n ? std::uniform_int_distribution<std::size_t>(0, n - 1)(m_rng) : 0; }
  std::string random_bytes(std::size_t n) {
    std::string b;
    for (std::size_t i = 0; i < n; ++i) b += static_cast<char>(pick(256));
    return b;
  }
  std::mt19937_64 m_rng;
};

enum class Outcome { Accepted, Rejected };

/// Runs one input through the target; throws on a finding.
Outcome run_one(const std::string& target, const std::string& input) {
  try {
    if (target == "config") {
      auto doc = vmx::cfg::Document::from_string(input, "fuzz.yaml");
      vmx::experiment::load(doc);
    } else if (target == "set") {
      auto doc = vmx::cfg::Document::from_string(vmx::experiment::quickstart_yaml(), "quickstart.yaml");
      std::stringstream lines(input);
      for (std::string line; std::getline(lines, line);) doc.apply_override(line);
      vmx::experiment::load(doc);
    } else {
      auto t = vmx::workloads::TraceFile::parse(std::vector<std::uint8_t>(input.begin(), input.end()), "fuzz.vmxtrace");
      vmx::workloads::TraceRecord r;
      auto c = t.cursor();
      std::uint64_t n = 0;
      while (c.next(r)) ++n;
      if (n != t.records()) throw std::logic_error("trace: decoded " + std::to_string(n) + " records, parse counted " +
                                                   std::to_string(t.records()));
      // Batches of an odd size decode the records one by one gives.
      auto one = t.cursor();
      auto batched = t.cursor();
      vmx::workloads::TraceRecord batch[7];
      std::uint64_t m = 0;
      while (const std::size_t k = batched.next_batch(batch, 7)) {
        for (std::size_t i = 0; i < k; ++i, ++m) {
          if (!one.next(r) || r.address != batch[i].address || r.kind != batch[i].kind || r.size != batch[i].size)
            throw std::logic_error("trace: record " + std::to_string(m) + " decodes differently in a batch");
        }
      }
      if (m != n) throw std::logic_error("trace: batches gave " + std::to_string(m) + " records of " + std::to_string(n));
    }
    return Outcome::Accepted;
  } catch (const vmx::cfg::ConfigError&) {
    return Outcome::Rejected;
  } catch (const vmx::workloads::TraceError&) {
    return Outcome::Rejected;
  }
}

int usage() {
  std::cerr << "usage: vmxsim_fuzz config|set|trace [--iterations N] [--seed S] [--corpus PATH ...] [--save DIR]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  const std::string target = argv[1];
  if (target != "config" && target != "set" && target != "trace") return usage();
  std::uint64_t iterations = 10000, seed = 1;
  std::vector<std::string> corpus_paths;
  std::string save = "fuzz-findings";
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--iterations") iterations = std::stoull(value());
      else if (a == "--seed") seed = std::stoull(value());
      else if (a == "--corpus") corpus_paths.push_back(value());
      else if (a == "--save") save = value();
      else return usage();
    } catch (const std::exception& e) {
      std::cerr << "vmxsim_fuzz: " << e.what() << "\n";
      return usage();
    }
  }
  const auto corpus = load_corpus(corpus_paths, target);
  Mutator m(seed);
  std::uint64_t accepted = 0, rejected = 0;
  const auto start = std::chrono::steady_clock::now();
  for (std::uint64_t it = 0; it < iterations; ++it) {
    const std::string input = m.mutate(corpus);
    try {
      (run_one(target, input) == Outcome::Accepted ? accepted : rejected) += 1;
    } catch (const std::exception& e) {
      fs::create_directories(save);
      const fs::path file = fs::path(save) / (target + "-seed" + std::to_string(seed) + "-" + std::to_string(it));
      std::ofstream(file, std::ios::binary) << input;
      std::cerr << "vmxsim_fuzz: finding at iteration " << it << " (seed " << seed << "): " << e.what()
                << "\n  input saved to " << file.string() << "\n";
      return 1;
    }
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "vmxsim_fuzz " << target << ": " << iterations << " inputs (" << accepted << " accepted, " << rejected
            << " rejected), 0 findings, " << corpus.size() << " corpus entries, seed " << seed << ", " << s << " s\n";
  return 0;
}
