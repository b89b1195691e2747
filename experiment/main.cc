// The vmxsim command line (CLI11 parses it; every subcommand has --help).
//
//   vmxsim run [CONFIG] [--set path=value ...] [--out DIR] [--trace] [--quiet]
//   vmxsim params            print the parameter reference (Markdown)
//   vmxsim stats [CONFIG...] print the statistics reference (Markdown)
//   vmxsim --help | --version
// sweep and plot are Python (python/vmxsim); the ./vmxsim wrapper runs them.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "experiment/experiment.h"
#include "experiment/provenance.h"

namespace {

namespace fs = std::filesystem;
using vmx::experiment::kBuildInfo;

void write_file(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary);
  f << text;
  if (!f) throw std::runtime_error("cannot write " + p.string());
}

/// The default output directory: out/<config name>. A resolved config
/// written by an earlier run (DIR/config.yaml) is named after its directory,
/// so re-running out/a/config.yaml and out/b/config.yaml do not collide.
std::string default_out(const std::string& config) {
  if (config.empty()) return "out/quickstart";
  fs::path p(config);
  std::string stem = p.stem().string();
  if (stem == "config" && fs::exists(p.parent_path() / "stats.json")) {
    std::string dir = fs::absolute(p).parent_path().filename().string();
    if (!dir.empty()) stem = dir + "-rerun";
  }
  return "out/" + stem;
}

/// Checks before simulating that `out` can be created and written.
void check_writable(const fs::path& out) {
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) throw std::runtime_error(fmt::format("--out {}: cannot create the directory ({})", out.string(), ec.message()));
  const fs::path probe = out / ".vmxsim-write-test";
  {
    std::ofstream f(probe);
    if (!f) throw std::runtime_error(fmt::format("--out {}: the directory is not writable", out.string()));
  }
  fs::remove(probe, ec);
}

/// A progress line on stderr: percentage of simulated time, host time so
/// far and the estimated time left.
class ProgressBar {
 public:
  ProgressBar() : m_start(std::chrono::steady_clock::now()) {}
  void operator()(std::uint64_t now_ps, std::uint64_t end_ps) {
    const double frac = end_ps ? std::min(1.0, static_cast<double>(now_ps) / static_cast<double>(end_ps)) : 1.0;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - m_start).count();
    const int pct = static_cast<int>(frac * 100);
    if (pct == m_last && elapsed - m_last_print < 1.0) return;
    m_last = pct;
    m_last_print = elapsed;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(frac * kWidth);
    std::string eta = frac > 0.01 ? fmt::format("{:.0f}s left", elapsed * (1 - frac) / frac) : "";
    fmt::print(stderr, "\r[{}{}] {:3d}%  {} of {} simulated  {:.0f}s  {}   ", std::string(filled, '#'),
               std::string(kWidth - filled, '.'), pct, vmx::cfg::format_time_ps(now_ps),
               vmx::cfg::format_time_ps(end_ps), elapsed, eta);
    std::fflush(stderr);
  }
  void done() { fmt::print(stderr, "\r{}\r", std::string(100, ' ')); }

 private:
  std::chrono::steady_clock::time_point m_start;
  int m_last = -1;
  double m_last_print = 0;
};

/// Loads a config (the embedded quickstart when empty) with its overrides.
vmx::experiment::ExperimentParams load_config(const std::string& config, const std::vector<std::string>& sets,
                                              bool* had_sweep = nullptr) {
  vmx::cfg::Document doc = config.empty() ? vmx::cfg::Document::from_string(vmx::experiment::quickstart_yaml(),
                                                                            "configs/quickstart.yaml")
                                          : vmx::cfg::Document::from_file(config);
  const bool sweep = doc.remove_top_level("sweep");  // a sweep: block belongs to `vmxsim sweep`
  if (had_sweep) *had_sweep = sweep;
  for (const auto& s : sets) doc.apply_override(s);
  return vmx::experiment::load(doc);
}

struct RunOptions {
  std::string config;
  std::vector<std::string> sets;
  std::string out;
  bool trace = false;
  bool quiet = false;
};

int cmd_run(RunOptions o, const std::string& command) {
  try {
    if (o.trace) o.sets.push_back("event_trace.enabled=true");
    bool had_sweep = false;  // run takes a sweep's base point
    vmx::experiment::ExperimentParams params = load_config(o.config, o.sets, &had_sweep);
    std::string resolved = vmx::cfg::to_yaml_text(params);
    if (o.out.empty()) o.out = default_out(o.config);
    const fs::path out(o.out);
    check_writable(out);
    const auto prov = vmx::experiment::make_provenance(kBuildInfo, command, params.seed);

    vmx::experiment::RunResult r;
    if (!o.quiet && isatty(STDERR_FILENO)) {
      ProgressBar bar;
      r = vmx::experiment::run(params, resolved, [&](std::uint64_t now, std::uint64_t end) { bar(now, end); });
      bar.done();
    } else {
      r = vmx::experiment::run(params, resolved);
    }

    // What the run prints is also saved (summary.txt).
    std::string text = r.summary;
    if (had_sweep)
      text += "note: ran the config without its sweep: block (./vmxsim sweep " + o.config + " runs every point)\n";
    for (const auto& n : r.vm_notes) text += "note: " + n + "\n";
    if (!r.finished && params.stop_when_done) text += "note: the run ended at its duration before every workload finished\n";
    write_file(out / "stats.json", vmx::experiment::with_provenance(r.stats_json, prov));
    write_file(out / "config.yaml", r.resolved_yaml);
    write_file(out / "summary.txt", text);
    write_file(out / "units.json", r.units_json);
    if (!r.events_json.empty())
      write_file(out / "events.json", vmx::experiment::events_with_provenance(r.events_json, prov));
    std::cout << text << "\nwrote " << (out / "stats.json").string() << " (units in units.json), "
              << (out / "config.yaml").string() << ", " << (out / "summary.txt").string();
    if (!r.events_json.empty())
      std::cout << " and " << (out / "events.json").string() << " (open it in ui.perfetto.dev)";
    std::cout << "\n";
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

/// vmxsim stats: runs each config in a child process of its own (SystemC
/// elaborates one design per process) and prints the reference of every
/// statistic they produced.
int cmd_stats(std::vector<std::string> configs, const std::vector<std::string>& sets) {
  if (configs.empty()) configs.push_back("");
  std::vector<vmx::stats::StatInfo> all;
  for (const auto& config : configs) {
    int fd[2];
    if (pipe(fd) != 0) throw std::runtime_error("pipe failed");
    const pid_t pid = fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
      close(fd[0]);
      int rc = 0;
      try {
        const auto params = load_config(config, sets);
        vmx::experiment::Session s(params, vmx::cfg::to_yaml_text(params));
        s.run_until(params.duration);
        std::string text;
        for (const auto& st : vmx::stats::describe(s.stats()))
          text += st.path + '\t' + st.kind + '\t' + st.unit + '\t' + st.desc + '\n';
        for (std::size_t off = 0; off < text.size();) {
          const ssize_t n = write(fd[1], text.data() + off, text.size() - off);
          if (n <= 0) break;
          off += static_cast<std::size_t>(n);
        }
      } catch (const vmx::cfg::ConfigError& e) {
        std::cerr << "vmxsim: config error: " << e.what() << "\n";
        rc = 2;
      } catch (const std::exception& e) {
        std::cerr << "vmxsim: error: " << (config.empty() ? "configs/quickstart.yaml" : config) << ": " << e.what()
                  << "\n";
        rc = 1;
      }
      std::fflush(nullptr);
      _exit(rc);  // the simulated system is never torn down (SystemC)
    }
    close(fd[1]);
    std::string text;
    char buf[65536];
    for (ssize_t n; (n = read(fd[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    std::stringstream in(text);
    for (std::string line; std::getline(in, line);) {
      vmx::stats::StatInfo st;
      std::stringstream fields(line);
      std::getline(fields, st.path, '\t');
      std::getline(fields, st.kind, '\t');
      std::getline(fields, st.unit, '\t');
      std::getline(fields, st.desc);
      all.push_back(std::move(st));
    }
  }
  std::cout << vmx::experiment::stats_reference_markdown(all);
  return 0;
}

std::string join_command(int argc, char** argv) {
  std::string s;
  for (int i = 0; i < argc; ++i) {
    if (i) s += ' ';
    s += argv[i];
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vmxsim: a cycle-approximate simulator of virtualization hardware, with a hypervisor, guest "
               "kernels and programs running on it as simulated software.",
               "vmxsim"};
  app.require_subcommand(1);
  app.set_version_flag("--version", vmx::experiment::version_line(kBuildInfo));
  app.footer(
      "Also, through the ./vmxsim wrapper (Python, Debian's /usr/bin/python3):\n"
      "  sweep CONFIG [-j N] [--out DIR]         run every point of a config's sweep: block (docs/sweeps.md)\n"
      "  plot SWEEP_DIR [-y STAT] [-x PARAM]     plot a statistic of a sweep against a parameter\n"
      "  plot RUN_DIR [-y STAT]                  plot a run's series (series.interval) over time\n"
      "Run 'vmxsim COMMAND --help' for a command's options; docs/ describes the model.");

  RunOptions ro;
  CLI::App* run = app.add_subcommand(
      "run",
      "Simulate the experiment in CONFIG (default: the embedded configs/quickstart.yaml), print a summary and "
      "write stats.json (with its provenance), config.yaml (the fully resolved configuration, which 'vmxsim "
      "run' accepts) and summary.txt into the output directory.");
  run->add_option("config", ro.config, "YAML config file (default: the embedded configs/quickstart.yaml)");
  run->add_option("--set", ro.sets,
                  "Override one value, e.g. --set vms[0].vcpus=4 --set platform.frequency=2GHz (repeatable)")
      ->type_name("PATH=VALUE")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->expected(1);
  run->add_option("--out", ro.out, "Output directory (default: out/<config name>)")->type_name("DIR");
  run->add_flag("--trace", ro.trace,
                "Also write events.json, the run's timeline for ui.perfetto.dev (event_trace.enabled=true; "
                "docs/event_trace.md)");
  run->footer("");
  run->add_flag("-q,--quiet", ro.quiet, "No progress line (there is none when stderr is not a terminal)");

  CLI::App* params = app.add_subcommand("params", "Print every parameter with its unit, default and source (Markdown).");
  params->footer("");

  std::vector<std::string> stats_configs, stats_sets;
  CLI::App* stats = app.add_subcommand(
      "stats",
      "Run each CONFIG (default: the embedded configs/quickstart.yaml) and print every statistic it produced, "
      "with its kind, unit and description (Markdown; docs/stats.md).");
  stats->add_option("configs", stats_configs, "YAML config files");
  stats->add_option("--set", stats_sets, "Override one value in every config (repeatable)")
      ->type_name("PATH=VALUE")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->expected(1);
  stats->footer("");

  for (const char* py : {"sweep", "plot"}) {
    app.add_subcommand(py, std::string(py) + " is Python: run it as ./vmxsim " + py + " (see ./vmxsim " + py + " --help)")
        ->allow_extras()
        ->group("");
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string where = "vmxsim";
    for (const CLI::App* sub : app.get_subcommands()) where += " " + sub->get_name();
    std::cerr << "vmxsim: " << e.what() << "\nRun '" << where << " --help' for usage.\n";
    return 2;
  }
  if (*run) return cmd_run(ro, join_command(argc, argv));
  if (*stats) {
    try {
      return cmd_stats(stats_configs, stats_sets);
    } catch (const std::exception& e) {
      std::cerr << "vmxsim: error: " << e.what() << "\n";
      return 1;
    }
  }
  if (*params) {
    std::cout << vmx::cfg::reference_markdown<vmx::experiment::ExperimentParams>("vmxsim parameters");
    return 0;
  }
  for (const char* py : {"sweep", "plot"}) {
    if (app.got_subcommand(py)) {
      std::cerr << "vmxsim: " << py << " is part of the Python package: run it through the ./vmxsim wrapper ("
                << "./vmxsim " << py << " --help)\n";
      return 2;
    }
  }
  return 2;
}
