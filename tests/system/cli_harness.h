// Runs the vmxsim program on a config and reads back what it wrote. Each run
// is its own process, so one test can compare several runs.
#pragma once

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <catch2/catch.hpp>

namespace vmx::test {

struct CliRun {
  int exit_code = -1;
  // stats_text: stats.json without its provenance line (which names the
  // command, host and date); provenance: that line's object.
  std::string out, err, stats_text, provenance_text, config_path, out_dir;
  YAML::Node stats;       // stats.json (JSON is YAML)
  YAML::Node provenance;  // its "provenance" member

  /// A statistic by dotted path ("vm.t.vcpu0.exits"); throws if absent.
  double at(const std::string& path) const {
    YAML::Node n = YAML::Clone(stats);
    std::stringstream ss(path);
    std::string part;
    while (std::getline(ss, part, '.')) {
      if (!n.IsMap() || !n[part]) throw std::runtime_error("no statistic " + path);
      n = n[part];
    }
    return n.as<double>();
  }
  /// Like at(), 0 when absent (a counter created on first event).
  double at_or_zero(const std::string& path) const {
    try {
      return at(path);
    } catch (const std::exception&) {
      return 0;
    }
  }
};

inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

/// A result file without its provenance member (the head of stats.json, or
/// otherData.provenance in events.json), which names the command, host and
/// date of the run: what two runs of the same config and seed share.
inline std::string without_provenance(std::string text) {
  for (const char* key : {"\n  \"provenance\": {", "\"provenance\":{"}) {
    const auto at = text.find(key);
    if (at == std::string::npos) continue;
    auto end = text.find('}', at);  // the provenance object holds no nested object
    if (end == std::string::npos) break;
    ++end;
    if (end < text.size() && text[end] == ',') ++end;
    text.erase(at, end - at);
  }
  return text;
}

/// Writes `yaml` to a fresh directory and runs `vmxsim run` on it with `args`.
inline CliRun run_cli(const std::string& yaml, const std::vector<std::string>& args = {}) {
  char tmpl[] = "/tmp/vmxsim-test-XXXXXX";
  if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
  std::string dir = tmpl;
  CliRun r;
  r.config_path = dir + "/cfg.yaml";
  r.out_dir = dir + "/out";
  std::ofstream(r.config_path) << yaml;
  std::string cmd = std::string(VMXSIM_BIN) + " run " + quote(r.config_path) + " --out " + quote(r.out_dir);
  for (const auto& a : args) cmd += " " + quote(a);
  cmd += " >" + quote(dir + "/stdout") + " 2>" + quote(dir + "/stderr");
  int status = std::system(cmd.c_str());
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_text(dir + "/stdout");
  r.err = read_text(dir + "/stderr");
  if (r.exit_code == 0) {
    r.stats_text = read_text(r.out_dir + "/stats.json");
    r.stats = YAML::Load(r.stats_text);
    r.provenance = r.stats["provenance"];
    const std::string head = "\n  \"provenance\": ";
    const auto at = r.stats_text.find(head);
    if (at != std::string::npos) {
      const auto eol = r.stats_text.find('\n', at + 1);
      r.provenance_text = r.stats_text.substr(at + head.size(), eol - at - head.size());
      r.stats_text.erase(at, eol - at);
    }
  }
  return r;
}

/// run_cli, and the run must succeed (its stderr and stdout shown if not).
inline CliRun run_ok(const std::string& yaml, const std::vector<std::string>& args = {}) {
  CliRun r = run_cli(yaml, args);
  INFO(r.err);
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  return r;
}

}  // namespace vmx::test
