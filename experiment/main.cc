// The vmxsim command line.
//
//   vmxsim run [CONFIG] [--set path=value ...] [--out DIR] [--trace]
//   vmxsim params            print the parameter reference (Markdown)
//   vmxsim --help | --version
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "experiment/experiment.h"

namespace {

const char* kUsage =
    "usage: vmxsim run [CONFIG] [--set path=value ...] [--out DIR] [--trace]\n"
    "       vmxsim params\n"
    "       vmxsim --help | --version\n"
    "\n"
    "run     simulate the experiment in CONFIG (default: the embedded configs/quickstart.yaml),\n"
    "        print a summary and write stats.json and config.yaml (the fully resolved\n"
    "        configuration) into DIR (default: out/<config name>).\n"
    "        --set overrides one value, e.g. --set vms[0].vcpus=4 --set platform.frequency=2GHz\n"
    "        --trace also writes events.json, the run's timeline for ui.perfetto.dev\n"
    "        (the same as --set event_trace.enabled=true; docs/event_trace.md).\n"
    "params  print every parameter with its unit, default and source.\n";

int usage_error(const std::string& msg) {
  std::cerr << "vmxsim: " << msg << "\n\n" << kUsage;
  return 2;
}

void write_file(const std::filesystem::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary);
  f << text;
  if (!f) throw std::runtime_error("cannot write " + p.string());
}

int cmd_run(const std::vector<std::string>& args) {
  std::string config;
  std::vector<std::string> sets;
  std::string out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--set" || a == "--out") {
      if (i + 1 >= args.size()) return usage_error(a + " needs a value");
      if (a == "--set") sets.push_back(args[++i]);
      else out = args[++i];
    } else if (a == "--trace") {
      sets.push_back("event_trace.enabled=true");
    } else if (a.rfind("--set=", 0) == 0) {
      sets.push_back(a.substr(6));
    } else if (a.rfind("--out=", 0) == 0) {
      out = a.substr(6);
    } else if (!a.empty() && a[0] == '-') {
      return usage_error("unknown option '" + a + "'");
    } else if (config.empty()) {
      config = a;
    } else {
      return usage_error("more than one config file given ('" + config + "', '" + a + "')");
    }
  }
  try {
    vmx::cfg::Document doc = config.empty()
                                 ? vmx::cfg::Document::from_string(vmx::experiment::quickstart_yaml(),
                                                                   "configs/quickstart.yaml")
                                 : vmx::cfg::Document::from_file(config);
    // A sweep: block belongs to `vmxsim sweep`; run takes the base point.
    const bool had_sweep = doc.remove_top_level("sweep");
    for (const auto& s : sets) doc.apply_override(s);
    vmx::experiment::ExperimentParams params = vmx::experiment::load(doc);
    std::string resolved = vmx::cfg::to_yaml_text(params);
    if (out.empty()) {
      std::string stem = config.empty() ? "quickstart" : std::filesystem::path(config).stem().string();
      out = "out/" + stem;
    }
    vmx::experiment::RunResult r = vmx::experiment::run(params, resolved);
    std::filesystem::create_directories(out);
    write_file(std::filesystem::path(out) / "stats.json", r.stats_json);
    write_file(std::filesystem::path(out) / "config.yaml", r.resolved_yaml);
    if (!r.events_json.empty()) write_file(std::filesystem::path(out) / "events.json", r.events_json);
    std::cout << r.summary;
    if (had_sweep)
      std::cout << "note: ran the config without its sweep: block (./vmxsim sweep " << config
                << " runs every point)\n";
    for (const auto& n : r.vm_notes) std::cout << "note: " << n << "\n";
    if (!r.finished && params.stop_when_done) std::cout << "note: the run ended at its duration before every workload finished\n";
    const std::string stats_path = (std::filesystem::path(out) / "stats.json").string();
    const std::string config_path = (std::filesystem::path(out) / "config.yaml").string();
    if (r.events_json.empty())
      std::cout << "\nwrote " << stats_path << " and " << config_path << "\n";
    else
      std::cout << "\nwrote " << stats_path << ", " << config_path << " and "
                << (std::filesystem::path(out) / "events.json").string() << " (open it in ui.perfetto.dev)\n";
    return 0;
  } catch (const vmx::cfg::ConfigError& e) {
    std::cerr << "vmxsim: config error: " << e.what() << "\n";
    return 2;
  } catch (const vmx::cpu::SimulationError& e) {
    std::cerr << "vmxsim: simulation error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "vmxsim: error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) return usage_error("no command given");
  const std::string cmd = args[0];
  args.erase(args.begin());
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::cout << kUsage;
    return 0;
  }
  if (cmd == "--version") {
    std::cout << "vmxsim " << VMXSIM_VERSION << "\n";
    return 0;
  }
  if (cmd == "run") return cmd_run(args);
  if (cmd == "params") {
    if (!args.empty()) return usage_error("params takes no arguments (got '" + args.front() + "')");
    std::cout << vmx::cfg::reference_markdown<vmx::experiment::ExperimentParams>("vmxsim parameters");
    return 0;
  }
  return usage_error("unknown command '" + cmd + "'");
}
