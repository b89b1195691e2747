// vmxsim._vmxsim: the C++ side of the Python module, kept thin.
//
//   Document   a configuration (file, YAML text or Python dict) with --set
//              style overrides; resolve() validates it exactly as the CLI does.
//   Session    one simulation, advanced in steps (experiment::Session).
//   ConfigError (a ValueError) carries the CLI's message and its parts.
//   SimulationError (a RuntimeError) for failures while simulating.
//
// SystemC elaborates one design per process, so a process can hold only one
// Session ever. The pure-Python package (python/vmxsim/) therefore runs every
// simulation in a child process and uses this module directly only to
// validate configurations, which needs no SystemC.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "cpu/core.h"
#include "experiment/experiment.h"
#include "experiment/provenance.h"
#include "sim/config.h"
#include "sim/units.h"

namespace py = pybind11;

namespace vmx::python {
namespace {

// Set once at import; the exception types live as long as the module.
PyObject* g_config_error = nullptr;
PyObject* g_simulation_error = nullptr;

// Python object -> YAML tree, for documents given as dicts. Scalars become
// the text a YAML file would hold, so the C++ reader sees the same thing for
// `{"duration": "5ms", "seed": 3}` as for the equivalent file.
// A dict or list nested deeper than this (or one that contains itself) is
// refused: no configuration needs it, and following it would exhaust the stack.
constexpr int kMaxDepth = 64;

YAML::Node to_node(const py::handle& obj, const std::string& name, const std::string& path, int depth = 0) {
  auto bad = [&](const std::string& expected, const std::string& found) {
    return cfg::ConfigError(name, 0, path, expected, found);
  };
  // Text as UTF-8; a str that cannot be encoded (a lone surrogate) is a config error.
  auto text = [&](const py::handle& s) {
    Py_ssize_t size = 0;
    const char* utf8 = PyUnicode_AsUTF8AndSize(s.ptr(), &size);
    if (!utf8) {
      PyErr_Clear();
      throw bad("expected text encodable as UTF-8", py::repr(s).cast<std::string>());
    }
    return std::string(utf8, static_cast<std::size_t>(size));
  };
  if (depth > kMaxDepth)
    throw bad("expected dicts and lists nested at most " + std::to_string(kMaxDepth) + " levels deep (or a dict that contains itself)",
              "");
  if (obj.is_none()) return YAML::Node(YAML::NodeType::Null);
  if (py::isinstance<py::bool_>(obj)) return YAML::Node(obj.cast<bool>() ? "true" : "false");
  if (py::isinstance<py::str>(obj)) return YAML::Node(text(obj));
  if (py::isinstance<py::dict>(obj)) {
    YAML::Node map(YAML::NodeType::Map);
    for (const auto& item : obj.cast<py::dict>()) {
      if (!py::isinstance<py::str>(item.first))
        throw bad("expected string keys", py::repr(item.first).cast<std::string>());
      std::string key = text(item.first);
      map[key] = to_node(item.second, name, cfg::detail::join_key(path, key), depth + 1);
    }
    return map;
  }
  if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
    YAML::Node seq(YAML::NodeType::Sequence);
    std::size_t i = 0;
    for (const auto& item : obj)
      seq.push_back(to_node(item, name, cfg::detail::join_index(path, i++), depth + 1));
    return seq;
  }
  // Integers, including numpy's, by their exact value; other reals by the
  // shortest text that reads back as the same double.
  if (py::hasattr(obj, "__index__")) return YAML::Node(py::str(py::int_(py::reinterpret_borrow<py::object>(obj))).cast<std::string>());
  if (py::isinstance<py::float_>(obj) || py::hasattr(obj, "__float__")) {
    double v = py::float_(py::reinterpret_borrow<py::object>(obj)).cast<double>();
    if (std::isnan(v)) return YAML::Node(".nan");
    if (std::isinf(v)) return YAML::Node(v > 0 ? ".inf" : "-.inf");
    return YAML::Node(py::repr(py::float_(v)).cast<std::string>());
  }
  throw bad("expected a string, number, bool, None, list or dict",
            "a " + py::type::of(obj).attr("__name__").cast<std::string>());
}

class PyDocument {
 public:
  static PyDocument from_file(const std::string& path) { return PyDocument(cfg::Document::from_file(path)); }
  static PyDocument from_string(const std::string& text, const std::string& name) {
    return PyDocument(cfg::Document::from_string(text, name));
  }
  static PyDocument from_dict(const py::dict& d, const std::string& name) {
    return PyDocument(cfg::Document::from_node(to_node(d, name, ""), name));
  }

  void apply_override(const std::string& assignment) { m_doc.apply_override(assignment); }
  std::string name() const { return m_doc.name(); }
  /// Validates and returns the fully resolved configuration as YAML text.
  std::string resolve() const { return cfg::to_yaml_text(experiment::load(m_doc)); }
  const cfg::Document& doc() const { return m_doc; }

 private:
  explicit PyDocument(cfg::Document d) : m_doc(std::move(d)) {}
  cfg::Document m_doc;
};

class PySession {
 public:
  explicit PySession(const PyDocument& doc) {
    experiment::ExperimentParams params = experiment::load(doc.doc());
    std::string resolved = cfg::to_yaml_text(params);
    m_session = std::make_unique<experiment::Session>(params, std::move(resolved));
  }

  void run_until(std::uint64_t ps) {
    // Simulating can take long; other Python threads may run meanwhile.
    py::gil_scoped_release release;
    m_session->run_until(ps);
  }
  void reset_stats() { m_session->reset_stats(); }
  std::uint64_t now_ps() const { return m_session->now_ps(); }
  bool finished() const { return m_session->finished(); }
  std::string stats_json() { return m_session->stats_json(); }
  std::string summary() { return m_session->summary(); }
  std::string units_json() const { return m_session->units_json(); }
  std::string events_json() const { return m_session->events_json(); }
  std::vector<std::string> notes() const { return m_session->notes(); }
  const std::string& resolved_yaml() const { return m_session->resolved_yaml(); }
  std::uint64_t duration_ps() const { return m_session->params().duration; }
  std::uint64_t warmup_ps() const { return m_session->params().warmup; }
  bool stop_when_done() const { return m_session->params().stop_when_done; }
  std::uint64_t seed() const { return m_session->params().seed; }

  /// Simulation.migrate (docs/migration.md, "Triggers"): `options` as one
  /// more migrations[] entry (from: the host that has the VM; at: now),
  /// validated with the run's configuration and earlier such migrations,
  /// then started.
  void migrate(const py::dict& options) {
    YAML::Node entry = to_node(options, "migrate", "");
    YAML::Node root = YAML::Load(m_session->resolved_yaml());
    if (!entry["from"] && entry["vm"] && root["hosts"])
      for (const auto& h : root["hosts"])
        for (const auto& v : h["vms"])
          if (v["name"] && entry["vm"].IsScalar() && v["name"].as<std::string>() == entry["vm"].as<std::string>())
            entry["from"] = h["name"].as<std::string>();
    entry["at"] = std::to_string(std::max<std::uint64_t>(1, m_session->now_ps())) + "ps";
    YAML::Node list = root["migrations"];
    for (const auto& e : m_migrations) list.push_back(e);
    list.push_back(entry);
    const experiment::ExperimentParams params = experiment::load(cfg::Document::from_node(root, "migrate"));
    m_session->migrate(params.migrations.back());
    m_migrations.push_back(entry);
  }

 private:
  std::unique_ptr<experiment::Session> m_session;
  std::vector<YAML::Node> m_migrations;  // migrate()'s entries so far
};

void raise_config_error(const cfg::ConfigError& e) {
  py::object exc = py::reinterpret_borrow<py::object>(g_config_error)(e.what());
  exc.attr("file") = e.file();
  exc.attr("line") = e.line();
  exc.attr("path") = e.path();
  exc.attr("expected") = e.expected();
  exc.attr("found") = e.found();
  PyErr_SetObject(g_config_error, exc.ptr());
}

}  // namespace
}  // namespace vmx::python

PYBIND11_MODULE(_vmxsim, m) {
  using namespace vmx::python;
  m.doc() = "vmxsim's C++ core. Use the vmxsim package; it runs each simulation in its own process.";
  m.attr("version") = VMXSIM_VERSION;
  {
    const auto& b = vmx::experiment::kBuildInfo;
    py::dict info;
    info["version"] = b.version;
    info["commit"] = b.commit;
    info["dirty"] = b.dirty;
    info["line"] = vmx::experiment::version_line(b);
    m.attr("build_info") = info;
  }
  m.def(
      "stamp",
      [](const std::string& json, const std::string& command, std::uint64_t seed, bool events) {
        auto p = vmx::experiment::make_provenance(vmx::experiment::kBuildInfo, command, seed);
        return events ? vmx::experiment::events_with_provenance(json, p) : vmx::experiment::with_provenance(json, p);
      },
      py::arg("json"), py::arg("command"), py::arg("seed"), py::arg("events") = false,
      "stats.json text (or, with events=True, an event trace) with its provenance: version, commit, command, "
      "seed, host and date.");

  // Named and documented as the package exports them.
  g_config_error = PyErr_NewExceptionWithDoc(
      "vmxsim.ConfigError",
      "A configuration problem, with the same message as the vmxsim command line, e.g.\n"
      "'dict: vms[0].vcpus: must be at least 1 (got 0)'. Attributes: file, line, path, expected, found.",
      PyExc_ValueError, nullptr);
  g_simulation_error = PyErr_NewExceptionWithDoc(
      "vmxsim.SimulationError", "The simulator or the simulated hypervisor failed during a run.",
      PyExc_RuntimeError, nullptr);
  m.add_object("ConfigError", py::handle(g_config_error));
  m.add_object("SimulationError", py::handle(g_simulation_error));

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const vmx::cfg::ConfigError& e) {
      raise_config_error(e);
    } catch (const vmx::cpu::SimulationError& e) {
      PyErr_SetString(g_simulation_error, e.what());
    }
  });

  m.def(
      "parse_time_ps",
      [](const std::string& text) {
        auto ps = vmx::cfg::parse_time_ps(text);
        if (!ps) throw py::value_error("expected a time with a unit such as 10ms or 2.5us (got " + text + ")");
        return *ps;
      },
      py::arg("text"), "'10ms' -> 10000000000 (picoseconds), as configurations read times.");
  m.def("format_time_ps", &vmx::cfg::format_time_ps, py::arg("ps"), "10000000000 -> '10ms'.");

  py::class_<PyDocument>(m, "Document", "A configuration document and its overrides.")
      .def_static("from_file", &PyDocument::from_file, py::arg("path"))
      .def_static("from_string", &PyDocument::from_string, py::arg("text"), py::arg("name") = "<string>")
      .def_static("from_dict", &PyDocument::from_dict, py::arg("d"), py::arg("name") = "dict")
      .def("apply_override", &PyDocument::apply_override, py::arg("assignment"),
           "Applies 'path=value' exactly as the command line's --set does.")
      .def_property_readonly("name", &PyDocument::name)
      .def("resolve", &PyDocument::resolve, "Validates; returns the fully resolved configuration as YAML text.");

  py::class_<PySession>(m, "Session", "One simulation. A process can create only one, ever (SystemC).")
      .def(py::init<const PyDocument&>(), py::arg("document"))
      .def("run_until", &PySession::run_until, py::arg("ps"))
      .def("reset_stats", &PySession::reset_stats)
      .def("migrate", &PySession::migrate, py::arg("options"))
      .def_property_readonly("now_ps", &PySession::now_ps)
      .def_property_readonly("finished", &PySession::finished)
      .def("stats_json", &PySession::stats_json)
      .def("summary", &PySession::summary)
      .def("units_json", &PySession::units_json)
      .def("events_json", &PySession::events_json)
      .def("notes", &PySession::notes)
      .def_property_readonly("resolved_yaml", &PySession::resolved_yaml)
      .def_property_readonly("duration_ps", &PySession::duration_ps)
      .def_property_readonly("warmup_ps", &PySession::warmup_ps)
      .def_property_readonly("stop_when_done", &PySession::stop_when_done)
      .def_property_readonly("seed", &PySession::seed);
}
