// The generated documentation stays in step with the code: docs/parameters.md
// must be exactly what `vmxsim params` prints today, and docs/stats.md what
// `vmxsim stats` prints for the configs listed in kStatsConfigs.
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include <sys/wait.h>

namespace {

/// Runs `command` and returns everything it wrote to stdout; *status gets
/// its exit status (-1 if it did not exit normally).
std::string capture(const std::string& command, int* status) {
  std::string out;
  FILE* p = popen(command.c_str(), "r");
  if (!p) {
    *status = -1;
    return out;
  }
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int rc = pclose(p);
  *status = (rc != -1 && WIFEXITED(rc)) ? WEXITSTATUS(rc) : -1;
  return out;
}

std::string read_file(const std::string& path, bool* ok) {
  std::ifstream f(path, std::ios::binary);
  *ok = static_cast<bool>(f);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

/// 1-based line and the two lines that differ first, for a readable failure.
std::string first_difference(const std::string& want, const std::string& got, const std::string& command,
                             const std::string& file) {
  std::istringstream a(want), b(got);
  std::string la, lb;
  for (int line = 1;; ++line) {
    bool ha = static_cast<bool>(std::getline(a, la));
    bool hb = static_cast<bool>(std::getline(b, lb));
    if (!ha && !hb) return "the files differ only in their final newline";
    if (!ha || !hb || la != lb)
      return "first difference at line " + std::to_string(line) + ":\n  " + command + ": " +
             (ha ? la : std::string("<end of output>")) + "\n  " + file + ": " +
             (hb ? lb : std::string("<end of file>"));
  }
}

}  // namespace

TEST_CASE("docs/parameters.md is exactly the output of `vmxsim params`") {
  int status = 0;
  const std::string generated = capture(std::string(VMXSIM_BIN) + " params", &status);
  REQUIRE(status == 0);
  REQUIRE(!generated.empty());

  bool ok = false;
  const std::string path = std::string(VMXSIM_SOURCE_DIR) + "/docs/parameters.md";
  const std::string committed = read_file(path, &ok);
  if (!ok) FAIL("cannot read " << path << "; generate it with ./build/bin/vmxsim params > docs/parameters.md");

  if (generated != committed) {
    FAIL("docs/parameters.md is out of date with the parameter declarations; regenerate it with\n"
         "  ./build/bin/vmxsim params > docs/parameters.md\n"
         << first_difference(generated, committed, "vmxsim params", "docs/parameters.md"));
  }
}

// The configs whose statistics make up docs/stats.md: between them, every
// kind of device and paging the model has.
const char* const kStatsConfigs =
    "configs/quickstart.yaml configs/scenarios/s2_vf.yaml configs/scenarios/s2_virtio.yaml "
    "configs/scenarios/s2_emulated.yaml configs/scenarios/s9_shadow_vs_ept_churn.yaml "
    "configs/scenarios/s15_steal_pv.yaml configs/scenarios/s10_smep_smap.yaml configs/scenarios/s18_sampling.yaml "
    "configs/scenarios/s6_ksm_false_sharing.yaml configs/scenarios/s7_sequential.yaml configs/scenarios/s5_balloon_knee.yaml "
    "configs/scenarios/s13_nested_cpuid.yaml configs/scenarios/s11_cache_resident.yaml configs/scenarios/s11_virtio.yaml "
    "configs/scenarios/s12_isolated.yaml configs/scenarios/s21_interpreter.yaml "
    "configs/scenarios/s5_host_swap.yaml configs/scenarios/s13_nested_l3.yaml labs/lab5_migration/felt.yaml "
    "configs/scenarios/s13_nested_posted.yaml configs/scenarios/s13_nested_pml.yaml configs/bench/loaded_latency.yaml "
    "configs/scenarios/s8_ping.yaml";

TEST_CASE("docs/stats.md is exactly the output of `vmxsim stats` over the reference configs") {
  int status = 0;
  const std::string generated =
      capture("cd " + std::string(VMXSIM_SOURCE_DIR) + " && " + VMXSIM_BIN + " stats " + kStatsConfigs, &status);
  REQUIRE(status == 0);
  REQUIRE(generated.find("| `vm.<vm>.vcpuN.exit_reasons.<REASON>.cycles` | histogram | cycles |") !=
          std::string::npos);
  bool ok = false;
  const std::string path = std::string(VMXSIM_SOURCE_DIR) + "/docs/stats.md";
  const std::string committed = read_file(path, &ok);
  const std::string how = std::string("./build/bin/vmxsim stats ") + kStatsConfigs + " > docs/stats.md";
  if (!ok) FAIL("cannot read " << path << "; generate it with\n  " << how);
  if (generated != committed)
    FAIL("docs/stats.md is out of date with the statistics; regenerate it with\n  "
         << how << "\n" << first_difference(generated, committed, "vmxsim stats", "docs/stats.md"));
}
