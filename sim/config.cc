#include "sim/config.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string_view>
#include <unordered_map>

namespace vmx::cfg {

// ---------------------------------------------------------------------------
// ConfigError

namespace {

std::string format_error(const std::string& file, int line, const std::string& path, const std::string& expected,
                         const std::string& found) {
  std::string s = file;
  if (line > 0) s += ":" + std::to_string(line);
  if (!path.empty()) s += (file == kOverrideSource ? " " : ": ") + path;
  s += ": " + expected;
  if (!found.empty()) s += " (got " + found + ")";
  return s;
}

}  // namespace

ConfigError::ConfigError(std::string file, int line, std::string path, std::string expected, std::string found)
    : std::runtime_error(format_error(file, line, path, expected, found)),
      file_(std::move(file)),
      line_(line),
      path_(std::move(path)),
      expected_(std::move(expected)),
      found_(std::move(found)) {}

// ---------------------------------------------------------------------------
// Paths: "vms[0].workloads[1].iterations"

namespace {

struct PathStep {
  bool is_index = false;
  std::string key;
  std::size_t index = 0;
};

bool is_key_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
}

/// Parses a dotted path with optional list indices; nullopt if malformed.
std::optional<std::vector<PathStep>> parse_path(std::string_view s) {
  std::vector<PathStep> steps;
  std::size_t i = 0;
  while (true) {
    std::size_t start = i;
    while (i < s.size() && is_key_char(s[i])) ++i;
    if (i == start) return std::nullopt;
    steps.push_back({false, std::string(s.substr(start, i - start)), 0});
    while (i < s.size() && s[i] == '[') {
      std::size_t digits = ++i;
      std::size_t index = 0;
      while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
        if (i - digits >= 9) return std::nullopt;  // absurdly large index
        index = index * 10 + static_cast<std::size_t>(s[i] - '0');
        ++i;
      }
      if (i == digits || i >= s.size() || s[i] != ']') return std::nullopt;
      ++i;
      steps.push_back({true, {}, index});
    }
    if (i == s.size()) return steps;
    if (s[i] != '.') return std::nullopt;
    ++i;
  }
}

std::string render_path(const std::vector<PathStep>& steps) {
  std::string p;
  for (const auto& s : steps) p = s.is_index ? detail::join_index(p, s.index) : detail::join_key(p, s.key);
  return p;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

int line_of(const YAML::Mark& mark) { return mark.is_null() ? 0 : mark.line + 1; }

/// Deeper nesting than any configuration needs is refused, so that a
/// hostile document cannot exhaust the stack of the code that walks it.
constexpr int kMaxDepth = 64;

/// Rejects a mapping that states a key twice (YAML 1.2, 3.2.1.1: keys are
/// unique; yaml-cpp keeps both and silently reads the first) and nesting
/// deeper than kMaxDepth.
void check_keys(const YAML::Node& node, const std::string& file, const std::string& path, int depth) {
  if (depth > kMaxDepth)
    throw ConfigError(file, line_of(node.Mark()), path, "nesting at most " + std::to_string(kMaxDepth) + " levels deep");
  if (node.IsMap()) {
    std::unordered_map<std::string, int> seen;  // key -> line of its first occurrence
    for (const auto& kv : node) {
      const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : std::string();
      const std::string child = path.empty() ? key : path + "." + key;
      if (kv.first.IsScalar()) {
        auto [it, fresh] = seen.emplace(key, line_of(kv.first.Mark()));
        if (!fresh)
          throw ConfigError(file, line_of(kv.first.Mark()), child,
                            "each key once in a mapping (first given at line " + std::to_string(it->second) + ")");
      }
      check_keys(kv.second, file, child, depth + 1);
    }
  } else if (node.IsSequence()) {
    for (std::size_t i = 0; i < node.size(); ++i)
      check_keys(node[i], file, path + "[" + std::to_string(i) + "]", depth + 1);
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Document

Document::Document(YAML::Node root, std::string name, bool has_marks)
    : root_(std::move(root)), name_(std::move(name)), has_marks_(has_marks) {}

Document::Document(const Document& other) { *this = other; }

Document& Document::operator=(const Document& other) {
  if (this == &other) return *this;
  name_ = other.name_;
  has_marks_ = other.has_marks_;
  text_ = other.text_;
  overrides_.clear();
  assignments_.clear();
  if (!has_marks_) {
    // reset() rebinds; plain assignment would overwrite a shared tree.
    root_.reset(YAML::Clone(other.root_));
    overrides_ = other.overrides_;
    assignments_ = other.assignments_;
  } else {
    // YAML::Clone drops line marks, so parse the text again and replay the
    // overrides (which succeeded once, so they succeed again).
    root_.reset(YAML::Load(text_));
    for (const auto& a : other.assignments_) apply_override(a);
  }
  return *this;
}

Document Document::from_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw ConfigError(path, 0, "", "cannot read file: it is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path, 0, "", std::string("cannot read file: ") + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ConfigError(path, 0, "", "cannot read file");
  return from_string(text.str(), path);
}

Document Document::from_string(const std::string& text, const std::string& name) {
  try {
    YAML::Node root = YAML::Load(text);
    check_keys(root, name, "", 0);
    // An empty document (or one of comments only) is an empty map: its
    // overrides apply and the checks of what is missing report.
    if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
    Document doc(root, name, true);
    doc.text_ = text;
    return doc;
  } catch (const YAML::ParserException& e) {
    throw ConfigError(name, line_of(e.mark), "", "invalid YAML: " + e.msg);
  }
}

Document Document::from_node(const YAML::Node& root, const std::string& name) {
  return Document(YAML::Clone(root), name, false);
}

YAML::Node Document::find(const std::string& path) const {
  auto steps = parse_path(trim(path));
  if (!steps) throw std::invalid_argument("malformed configuration path '" + path + "'");
  YAML::Node cur;
  cur.reset(root_);
  for (const auto& s : *steps) {
    YAML::Node next(YAML::NodeType::Undefined);
    if (s.is_index ? cur.IsSequence() && s.index < cur.size() : cur.IsMap())
      next.reset(s.is_index ? cur[s.index] : detail::find_entry(cur, s.key.c_str()).value);
    if (!next.IsDefined()) return YAML::Node(YAML::NodeType::Undefined);
    cur.reset(next);
  }
  return cur;
}

bool Document::remove_top_level(const std::string& key) {
  if (!root_.IsMap() || !root_[key]) return false;
  return root_.remove(key);
}

void Document::apply_override(const std::string& assignment) {
  auto fail = [](const std::string& path, std::string expected, std::string found) {
    return ConfigError(kOverrideSource, 0, path, std::move(expected), std::move(found));
  };
  std::size_t eq = assignment.find('=');
  if (eq == std::string::npos) throw fail("", "expected path=value", "'" + assignment + "'");
  std::string_view raw_path = trim(std::string_view(assignment).substr(0, eq));
  auto steps = parse_path(raw_path);
  if (!steps) throw fail("", "expected a path such as vms[0].vcpus before '='", "'" + std::string(raw_path) + "'");
  const std::string path = render_path(*steps);
  const std::string text(trim(std::string_view(assignment).substr(eq + 1)));

  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw fail(path, "expected a YAML value (" + e.msg + ")", "'" + text + "'");
  }

  // Walks the path twice: first only checking, so that a failed override
  // leaves the document unchanged, then creating missing map keys and
  // assigning. Nodes are rebound with reset(): assigning would overwrite the
  // tree.
  auto walk = [&](bool apply) {
    YAML::Node cur;
    cur.reset(root_);
    std::string prefix;
    for (std::size_t i = 0; i < steps->size(); ++i) {
      const PathStep& s = (*steps)[i];
      const bool last = i + 1 == steps->size();
      if (!s.is_index) {
        const bool absent = !cur.IsDefined() || cur.IsNull();
        if (!absent && !cur.IsMap()) throw fail(prefix, "expected a map to hold '" + s.key + "'", detail::describe(cur));
        if (!apply) {
          cur.reset(absent ? YAML::Node(YAML::NodeType::Undefined) : detail::find_entry(cur, s.key.c_str()).value);
        } else {
          if (absent) cur = YAML::Node(YAML::NodeType::Map);
          if (last) {
            cur[s.key] = value;
          } else {
            YAML::Node next = cur[s.key];
            cur.reset(next);
          }
        }
        prefix = detail::join_key(prefix, s.key);
      } else {
        if (!cur.IsSequence()) throw fail(prefix, "expected a list", detail::describe(cur));
        if (s.index >= cur.size())
          throw fail(detail::join_index(prefix, s.index), "index is past the end of the list",
                     std::to_string(cur.size()) + (cur.size() == 1 ? " item" : " items"));
        if (apply && last) {
          cur[s.index] = value;
        } else {
          YAML::Node next = cur[s.index];
          cur.reset(next);
        }
        prefix = detail::join_index(prefix, s.index);
      }
    }
  };
  walk(false);
  walk(true);
  overrides_.push_back(path);
  assignments_.push_back(assignment);
}

bool Document::overridden(const std::string& path) const {
  for (const auto& o : overrides_) {
    if (path.compare(0, o.size(), o) != 0) continue;
    if (path.size() == o.size() || path[o.size()] == '.' || path[o.size()] == '[') return true;
  }
  return false;
}

ConfigError Document::error(const YAML::Mark& mark, const std::string& path, std::string expected,
                            std::string found) const {
  // A value set (or below a value set) by --set is reported as such; nodes
  // parsed from this document's text carry their line; nodes without a mark
  // in a parsed document were created by an override (e.g. a new map key).
  if (overridden(path) || (has_marks_ && mark.is_null() && !overrides_.empty()))
    return ConfigError(kOverrideSource, 0, path, std::move(expected), std::move(found));
  int line = has_marks_ ? line_of(mark) : 0;
  return ConfigError(name_, line, path, std::move(expected), std::move(found));
}

std::string emit(const YAML::Node& node) {
  YAML::Emitter out;
  out << node;
  return std::string(out.c_str()) + "\n";
}

// ---------------------------------------------------------------------------
// Visitor helpers

namespace detail {

std::string join_key(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string join_index(const std::string& path, std::size_t index) {
  return path + "[" + std::to_string(index) + "]";
}

std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Scalar: return node.Scalar();
    default: return "nothing";
  }
}

std::string join_names(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

Entry find_entry(const YAML::Node& map, const char* key) {
  for (auto it = map.begin(); it != map.end(); ++it)
    if (it->first.IsScalar() && it->first.Scalar() == key) return {it->first, it->second, true};
  return {YAML::Node(YAML::NodeType::Undefined), YAML::Node(YAML::NodeType::Undefined), false};
}

void check_keys(const Document& doc, const YAML::Node& map, const std::string& path,
                const std::vector<std::string>& declared) {
  for (auto it = map.begin(); it != map.end(); ++it) {
    const std::string key = it->first.IsScalar() ? it->first.Scalar() : describe(it->first);
    bool known = false;
    for (const auto& d : declared) known = known || d == key;
    if (known) continue;
    std::string expected = declared.empty() ? "this section takes no keys" : "expected one of: " + join_names(declared);
    throw doc.error(it->first.Mark(), path, "unknown key '" + key + "' (" + expected + ")");
  }
}

namespace {

// A constraint bound in the parameter's unit where that reads better ("4KiB").
std::string bound_text(double v, Unit unit) {
  bool whole = v >= 0 && v < 1.8e19 && std::floor(v) == v;
  if (whole) {
    auto u = static_cast<std::uint64_t>(v);
    switch (unit) {
      case Unit::Bytes: return format_bytes(u);
      case Unit::Time: return format_time_ps(u);
      case Unit::Frequency: return format_frequency_hz(u);
      default: return std::to_string(u);
    }
  }
  if (std::floor(v) == v && v > -1e15 && v < 0) return std::to_string(static_cast<std::int64_t>(v));
  return to_text(v, Spec());
}

// Markdown table cells: no line breaks, escaped pipes.
std::string cell(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|') out += "\\|";
    else if (c == '\n') out += ' ';
    else out += c;
  }
  return out;
}

}  // namespace

std::string constraints_text(const Spec& spec) {
  std::vector<std::string> parts;
  if (spec.min) parts.push_back(">= " + bound_text(*spec.min, spec.unit));
  if (spec.max) parts.push_back("<= " + bound_text(*spec.max, spec.unit));
  if (spec.pow2) parts.emplace_back("power of two");
  if (!spec.choices.empty()) parts.push_back("one of: " + join_names(spec.choices));
  return join_names(parts);
}

std::string render_markdown(const std::string& title, const std::vector<DocSection>& sections) {
  std::string md = "# " + title + "\n";
  for (const auto& s : sections) {
    if (!s.heading.empty()) md += "\n## " + s.heading + "\n";
    if (!s.description.empty()) md += "\n" + s.description + "\n";
    if (s.rows.empty()) continue;
    md += "\n| Key | Unit | Default | Constraints | Description |\n";
    md += "|-----|------|---------|-------------|-------------|\n";
    for (const auto& r : s.rows) {
      md += "| `" + cell(r.key) + "` | " + cell(r.unit) + " | `" + cell(r.def) + "` | " + cell(r.constraints) +
            " | " + cell(r.description) + " |\n";
    }
  }
  return md;
}

}  // namespace detail

}  // namespace vmx::cfg
