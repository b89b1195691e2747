#include "experiment/provenance.h"

#include <ctime>
#include <stdexcept>

#include <unistd.h>

#include <fmt/format.h>

#include "sim/stats.h"

namespace vmx::experiment {

Provenance make_provenance(const BuildInfo& build, std::string command, std::uint64_t seed) {
  Provenance p;
  p.version = build.version;
  p.commit = build.commit;
  p.dirty = build.dirty;
  p.command = std::move(command);
  p.seed = seed;
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) == 0) p.host = host;
  std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &utc);
  p.date = date;
  return p;
}

std::string provenance_json(const Provenance& p) {
  std::string out = "{\"simulator\": \"vmxsim\", \"version\": ";
  stats::append_json_string(out, p.version);
  out += ", \"commit\": ";
  stats::append_json_string(out, p.commit);
  out += fmt::format(", \"dirty\": {}, \"command\": ", p.dirty ? "true" : "false");
  stats::append_json_string(out, p.command);
  out += fmt::format(", \"seed\": {}, \"host\": ", p.seed);
  stats::append_json_string(out, p.host);
  out += ", \"date\": ";
  stats::append_json_string(out, p.date);
  out += "}";
  return out;
}

namespace {
/// Inserts `"key": value,` right after the opening brace of a JSON object.
std::string insert_first(const std::string& object, const std::string& key, const std::string& value) {
  const auto brace = object.find('{');
  if (brace == std::string::npos) throw std::logic_error("provenance: not a JSON object");
  const bool empty = object.find_first_not_of(" \t\r\n", brace + 1) == object.find('}', brace + 1);
  return object.substr(0, brace + 1) + "\n  \"" + key + "\": " + value + (empty ? "\n" : ",") +
         object.substr(brace + 1);
}
}  // namespace

std::string with_provenance(const std::string& stats_json, const Provenance& p) {
  return insert_first(stats_json, "provenance", provenance_json(p));
}

std::string events_with_provenance(const std::string& events_json, const Provenance& p) {
  const std::string other = "\"otherData\":{";
  const auto at = events_json.find(other);
  if (at == std::string::npos) return insert_first(events_json, "otherData", "{\"provenance\": " + provenance_json(p) + "}");
  const auto open = at + other.size();
  const bool empty = events_json.compare(open, 1, "}") == 0;
  return events_json.substr(0, open) + "\"provenance\":" + provenance_json(p) + (empty ? "" : ",") +
         events_json.substr(open);
}

std::string version_line(const BuildInfo& build) {
  std::string commit = build.commit;
  if (commit.size() > 12) commit.resize(12);
  return fmt::format("vmxsim {} (commit {}{})", build.version, commit, build.dirty ? ", modified" : "");
}

}  // namespace vmx::experiment
