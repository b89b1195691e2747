// Reading, validating, writing and documenting configurations.
//
// Every parameter struct declares its parameters once in `visit` (sim/params.h).
// This header provides the visitors that turn that declaration into
//   - a YAML reader that validates every value and reports the first problem
//     as `configs/x.yaml:14: platform.cpu.stlb.ways: must be a power of two (got 6)`,
//   - a YAML writer for the fully resolved configuration (canonical units),
//   - a Markdown parameter reference.
//
//   cfg::Document doc = cfg::Document::from_file("configs/x.yaml");
//   doc.apply_override("vms[0].vcpus=4");            // from `--set`
//   auto params = cfg::read<ExperimentParams>(doc);  // throws cfg::ConfigError
//   std::string resolved = cfg::to_yaml_text(params);
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "sim/params.h"

namespace vmx::cfg {

/// Source name used for values that came from a `--set path=value` override.
inline constexpr const char* kOverrideSource = "--set";

/// A configuration problem, located in its source. what() reads
///   `configs/x.yaml:14: platform.cpu.stlb.ways: must be a power of two (got 6)`
/// The line is left out when unknown (documents built from a Python dict),
/// and values from overrides read `--set vms[0].vcpus: must be at least 1 (got 0)`.
class ConfigError : public std::runtime_error {
 public:
  /// `line` is 1-based, 0 when unknown. `path` may be empty (whole document).
  /// `found` may be empty (then no "(got ...)" is appended).
  ConfigError(std::string file, int line, std::string path, std::string expected, std::string found = {});

  const std::string& file() const { return file_; }
  int line() const { return line_; }
  const std::string& path() const { return path_; }
  /// What was expected, e.g. "must be a power of two" or
  /// "unknown key 'wyas' (expected one of: size, ways)".
  const std::string& expected() const { return expected_; }
  /// The offending value as written ("6"), "a map", "a list", "nothing", or
  /// empty when the message says it all (unknown keys, unreadable files).
  const std::string& found() const { return found_; }

 private:
  std::string file_;
  int line_;
  std::string path_;
  std::string expected_;
  std::string found_;
};

/// A YAML configuration tree and where it came from. Copies are deep and keep
/// line marks: applying an override to a copy (e.g. one sweep point) leaves
/// the original untouched.
class Document {
 public:
  /// Reads and parses a file. Unreadable files and YAML syntax errors throw
  /// ConfigError naming the file (and the line for syntax errors).
  static Document from_file(const std::string& path);
  /// Parses YAML text; `name` stands for the file in error messages.
  static Document from_string(const std::string& text, const std::string& name);
  /// Wraps an already built tree (e.g. converted from a Python dict). The tree
  /// is copied. Such trees carry no line marks, so errors read `<name>: path: ...`.
  static Document from_node(const YAML::Node& root, const std::string& name);

  Document(const Document& other);
  Document& operator=(const Document& other);
  Document(Document&&) = default;
  Document& operator=(Document&&) = default;
  ~Document() = default;

  /// Applies a command-line override `path=value`, e.g.
  /// `vms[0].workloads[1].iterations=100` or `platform.l1d={size: 64KiB}`.
  /// The value is parsed as YAML. Missing map keys are created; an index past
  /// the end of a list, a path through a scalar, or a malformed assignment
  /// throws ConfigError with source "--set". Errors found later in values set
  /// here are reported as `--set <path>: ...`.
  void apply_override(const std::string& assignment);
  /// Removes a top-level key (e.g. a sweep: block, which only the sweep
  /// driver reads); returns whether it was there.
  bool remove_top_level(const std::string& key);

  const YAML::Node& root() const { return root_; }
  const std::string& name() const { return name_; }

  /// The node at a dotted path such as "vms[0].workloads"; an undefined node
  /// if absent. Throws std::invalid_argument if the path is malformed.
  YAML::Node find(const std::string& path) const;

  /// Builds the error for a problem with the value at `path`, whose YAML node
  /// carries `mark`. Chooses the source: the file and line, or "--set" when
  /// the value came from an override.
  ConfigError error(const YAML::Mark& mark, const std::string& path, std::string expected,
                    std::string found = {}) const;

 private:
  Document(YAML::Node root, std::string name, bool has_marks);
  bool overridden(const std::string& path) const;

  YAML::Node root_;
  std::string name_;
  bool has_marks_ = true;                 // false for trees not parsed from text
  std::string text_;                      // the parsed text, to copy with line marks
  std::vector<std::string> overrides_;    // canonical paths set by apply_override
  std::vector<std::string> assignments_;  // the assignments as given, to replay on copy
};

// ---------------------------------------------------------------------------
// Helpers shared by the visitors (non-template parts live in config.cc).
namespace detail {

/// "a.b" + "c" -> "a.b.c"; "" + "c" -> "c".
std::string join_key(const std::string& path, const std::string& key);
/// "vms" + 0 -> "vms[0]".
std::string join_index(const std::string& path, std::size_t index);
/// How a node reads in "(got ...)": its scalar text, "a map", "a list" or "nothing".
std::string describe(const YAML::Node& node);
/// "a, b, c".
std::string join_names(const std::vector<std::string>& names);

/// A key of a map together with its value.
struct Entry {
  YAML::Node key;
  YAML::Node value;
  bool found = false;  // false if the map has no such key
  bool present() const { return found; }
  /// Where to point at in errors about this entry: the key's line (the value's
  /// own mark is unhelpful for empty values and nested maps).
  YAML::Mark mark() const { return key.Mark(); }
};
Entry find_entry(const YAML::Node& map, const char* key);

/// Throws ConfigError if `map` has a key not in `declared`.
void check_keys(const Document& doc, const YAML::Node& map, const std::string& path,
                const std::vector<std::string>& declared);

/// Effective unit of a member: bool is always a flag and std::string text.
template <class T>
Unit unit_of(const Spec& spec) {
  if constexpr (std::is_same_v<T, bool>) return Unit::Flag;
  else if constexpr (std::is_same_v<T, std::string>) return Unit::Text;
  else return spec.unit;
}

template <class... Ts>
std::vector<std::string> alt_names(const Alt<Ts>&... alts) {
  return {std::string(alts.name)...};
}

/// Calls f(alt.params) for the alternative named `name`; false if none is.
template <class F, class... Ts>
bool with_alt(const std::string& name, F&& f, Alt<Ts>... alts) {
  bool found = false;
  auto one = [&](auto& a) {
    if (!found && name == a.name) {
      found = true;
      f(a.params);
    }
  };
  (one(alts), ...);
  return found;
}

/// Lists the keys a struct accepts in one map, in declaration order. For a
/// variant that is the type key plus the keys of the alternative the map (or,
/// if it has no type key, the current value) selects; `complete` is false if
/// the selection is not a valid alternative.
class KeyLister {
 public:
  explicit KeyLister(const YAML::Node& map) : map_(map) {}

  template <class T>
  void param(T&, const char* key, const char*, const Spec&, const char*) { keys.emplace_back(key); }
  template <class T>
  void section(T&, const char* key, const char*) { keys.emplace_back(key); }
  template <class T>
  void list(std::vector<T>&, const char* key, const char*, std::size_t = 0) { keys.emplace_back(key); }
  template <class... Ts>
  void variant(std::string& member, const char* key, const char*, Alt<Ts>... alts) {
    keys.emplace_back(key);
    std::string chosen = member;
    if (map_.IsMap()) {
      Entry e = find_entry(map_, key);
      if (e.present()) {
        if (!e.value.IsScalar()) { complete = false; return; }
        chosen = e.value.Scalar();
      }
    }
    if (!with_alt(chosen, [&](auto& p) { p.visit(*this); }, alts...)) complete = false;
  }

  std::vector<std::string> keys;
  bool complete = true;

 private:
  YAML::Node map_;
};

/// Reads the parameters of one struct from one YAML map. Values absent from
/// the map keep what the struct already holds (the defaults).
class Reader {
 public:
  Reader(const Document& doc, const YAML::Node& map, std::string path)
      : doc_(doc), map_(map), path_(std::move(path)) {}

  /// Reads struct `s` from `node` (a map, or null/undefined for "all
  /// defaults"), first rejecting keys the struct does not declare.
  template <class S>
  static void read_struct(const Document& doc, S& s, const YAML::Node& node, const YAML::Mark& mark,
                          const std::string& path) {
    if (!node.IsDefined() || node.IsNull()) return;
    if (!node.IsMap()) throw doc.error(mark, path, "expected a map of keys", describe(node));
    KeyLister lister(node);
    s.visit(lister);
    // With an invalid variant type the accepted keys are unknown; the Reader
    // reports the type itself instead.
    if (lister.complete) check_keys(doc, node, path, lister.keys);
    Reader r(doc, node, path);
    s.visit(r);
    if constexpr (HasCheck<S>::value) {
      if (Problem p = s.check()) {
        const YAML::Node at = node[p.key];
        throw doc.error(at ? at.Mark() : mark, join_key(path, p.key), "expected " + p.expected, p.found);
      }
    }
  }
  template <class S, class = void>
  struct HasCheck : std::false_type {};
  template <class S>
  struct HasCheck<S, std::void_t<decltype(std::declval<const S&>().check())>> : std::true_type {};

  template <class T>
  void param(T& member, const char* key, const char*, const Spec& spec, const char*) {
    Entry e = find_entry(map_, key);
    if (!e.present()) return;
    std::string path = join_key(path_, key);
    if (!e.value.IsScalar()) throw doc_.error(e.mark(), path, "expected a single value", describe(e.value));
    std::string err = cfg::convert(e.value.Scalar(), spec, member);
    if (!err.empty()) throw doc_.error(e.mark(), path, err, e.value.Scalar());
  }

  template <class T>
  void section(T& member, const char* key, const char*) {
    Entry e = find_entry(map_, key);
    if (e.present()) read_struct(doc_, member, e.value, e.mark(), join_key(path_, key));
  }

  template <class T>
  void list(std::vector<T>& member, const char* key, const char*, std::size_t min_items = 0) {
    Entry e = find_entry(map_, key);
    std::string path = join_key(path_, key);
    if (e.present() && !e.value.IsNull()) {
      if (!e.value.IsSequence()) throw doc_.error(e.mark(), path, "expected a list", describe(e.value));
      member.clear();
      for (std::size_t i = 0; i < e.value.size(); ++i) {
        const YAML::Node item = e.value[i];
        if (item.IsNull()) throw doc_.error(item.Mark(), join_index(path, i), "expected a map of keys", "nothing");
        T element = defaults<T>();
        read_struct(doc_, element, item, item.Mark(), join_index(path, i));
        member.push_back(std::move(element));
      }
    } else if (e.present()) {
      member.clear();  // `key:` with no value is an empty list
    }
    if (member.size() < min_items) {
      throw doc_.error(e.present() ? e.mark() : map_.Mark(), path,
                       "expected at least " + std::to_string(min_items) + (min_items == 1 ? " item" : " items"),
                       e.present() ? std::to_string(member.size()) : "nothing");
    }
  }

  template <class... Ts>
  void variant(std::string& member, const char* key, const char*, Alt<Ts>... alts) {
    Entry e = find_entry(map_, key);
    std::string path = join_key(path_, key);
    std::string chosen = member;
    if (e.present()) {
      if (!e.value.IsScalar()) throw doc_.error(e.mark(), path, "expected a single value", describe(e.value));
      chosen = e.value.Scalar();
    }
    // The chosen alternative's parameters sit beside the type key.
    if (!with_alt(chosen, [&](auto& p) { p.visit(*this); }, alts...))
      throw doc_.error(e.mark(), path, "expected one of: " + join_names(alt_names(alts...)), chosen);
    member = chosen;
  }

 private:
  const Document& doc_;
  YAML::Node map_;
  std::string path_;
};

/// Writes the parameters of one struct into one YAML map.
class Writer {
 public:
  explicit Writer(YAML::Node map) : map_(std::move(map)) {}

  template <class S>
  static YAML::Node write_struct(S& s) {
    YAML::Node map(YAML::NodeType::Map);
    Writer w(map);
    s.visit(w);
    return map;
  }

  template <class T>
  void param(T& member, const char* key, const char*, const Spec& spec, const char*) {
    map_[key] = cfg::to_text(member, spec);
  }
  template <class T>
  void section(T& member, const char* key, const char*) { map_[key] = write_struct(member); }
  template <class T>
  void list(std::vector<T>& member, const char* key, const char*, std::size_t = 0) {
    YAML::Node seq(YAML::NodeType::Sequence);
    for (T& element : member) seq.push_back(write_struct(element));
    if (member.empty()) seq.SetStyle(YAML::EmitterStyle::Flow);  // "key: []"
    map_[key] = seq;
  }
  template <class... Ts>
  void variant(std::string& member, const char* key, const char*, Alt<Ts>... alts) {
    map_[key] = member;
    with_alt(member, [&](auto& p) { p.visit(*this); }, alts...);
  }

 private:
  YAML::Node map_;
};

/// One table of the parameter reference.
struct DocSection {
  std::string heading;      // "platform.cpu", "vms[].workloads[] (type: stream)"; empty for the root
  std::string description;
  struct Row {
    std::string key, unit, def, constraints, description;
  };
  std::vector<Row> rows;
};

/// Constraints column for a Spec: ">= 1, power of two", "one of: a, b".
std::string constraints_text(const Spec& spec);
/// Renders the sections as Markdown under a "# title" heading.
std::string render_markdown(const std::string& title, const std::vector<DocSection>& sections);

/// Collects the parameter reference: one DocSection per struct (sections,
/// list elements with "[]" in the path, one per variant alternative).
class Documenter {
 public:
  Documenter(std::vector<DocSection>& out, std::size_t section, std::string path)
      : out_(out), section_(section), path_(std::move(path)) {}

  template <class T>
  void param(T& member, const char* key, const char*, const Spec& spec, const char* desc) {
    std::string def = cfg::to_text(member, spec);
    add_row(key, unit_name(unit_of<T>(spec)), def.empty() ? "\"\"" : def, constraints_text(spec), desc);
  }
  template <class T>
  void section(T& member, const char* key, const char* desc) {
    nest(member, join_key(path_, key), desc, join_key(path_, key));
  }
  template <class T>
  void list(std::vector<T>&, const char* key, const char* desc, std::size_t min_items = 0) {
    std::string constraints;
    if (min_items > 0) constraints = "at least " + std::to_string(min_items) + (min_items == 1 ? " item" : " items");
    add_row(key, "list", "[]", constraints, desc);
    T element = defaults<T>();
    std::string path = join_key(path_, key) + "[]";
    nest(element, path, std::string("Each element of ") + path.substr(0, path.size() - 2) + ".", path);
  }
  template <class... Ts>
  void variant(std::string& member, const char* key, const char* desc, Alt<Ts>... alts) {
    add_row(key, unit_name(Unit::Text), member, "one of: " + join_names(alt_names(alts...)), desc);
    auto one = [&](auto& a) {
      std::string which = std::string(key) + ": " + a.name;
      std::string heading = path_.empty() ? which : path_ + " (" + which + ")";
      // The alternative's keys sit beside the type key, so the path is unchanged.
      nest(a.params, heading, "Parameters when " + join_key(path_, key) + " is " + a.name + ".", path_);
    };
    (one(alts), ...);
  }

 private:
  void add_row(const char* key, std::string unit, std::string def, std::string constraints, const char* desc) {
    out_[section_].rows.push_back({join_key(path_, key), std::move(unit), std::move(def), std::move(constraints), desc});
  }
  template <class S>
  void nest(S& s, std::string heading, std::string desc, std::string path) {
    out_.push_back({std::move(heading), std::move(desc), {}});
    Documenter d(out_, out_.size() - 1, std::move(path));
    s.visit(d);
  }

  std::vector<DocSection>& out_;
  std::size_t section_;
  std::string path_;
};

}  // namespace detail

// ---------------------------------------------------------------------------
// Entry points.

/// Reads and validates P from the whole document, starting from its defaults.
/// Throws ConfigError for the first bad value, unknown key or wrong shape.
template <class P>
P read(const Document& doc) {
  P p = defaults<P>();
  detail::Reader::read_struct(doc, p, doc.root(), doc.root().Mark(), "");
  return p;
}

/// Reads P from the sub-tree at a dotted path (e.g. "platform.cpu" or
/// "vms[1]"); all defaults if the path is absent. Error paths are full paths.
template <class P>
P read(const Document& doc, const std::string& path) {
  P p = defaults<P>();
  YAML::Node node = doc.find(path);
  detail::Reader::read_struct(doc, p, node, node.Mark(), path);
  return p;
}

/// The fully resolved configuration, every value in its canonical spelling.
template <class P>
YAML::Node to_yaml(const P& params) {
  // visit() is non-const; the Writer only reads the members.
  return detail::Writer::write_struct(const_cast<P&>(params));
}

/// to_yaml as YAML text.
std::string emit(const YAML::Node& node);

template <class P>
std::string to_yaml_text(const P& params) {
  return emit(to_yaml(params));
}

/// Markdown reference of every parameter of P: one table per section with
/// key path, unit, default, constraints and description.
template <class P>
std::string reference_markdown(const std::string& root_title) {
  P p = defaults<P>();
  std::vector<detail::DocSection> sections(1);
  detail::Documenter d(sections, 0, "");
  p.visit(d);
  return detail::render_markdown(root_title, sections);
}

}  // namespace vmx::cfg
