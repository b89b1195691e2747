"""What a run produced, as Python objects: vmxsim.Result."""

import json
import os

import numpy as np
import yaml

# The scalar fields of a histogram in the statistics JSON (docs/model.md).
# The head of stats.json that records where it came from (not a statistic).
PROVENANCE = "provenance"
SERIES = "series"

HISTOGRAM_FIELDS = ("count", "sum", "mean", "min", "max", "p50", "p90", "p99", "p999")


def _is_histogram(node):
    return isinstance(node, dict) and "buckets" in node and "count" in node


class Histogram:
    """A distribution: count, sum, mean, min, max and percentiles
    (p50, p90, p99, p999) as attributes, and the buckets as numpy arrays
    ``lo``, ``hi`` (inclusive bounds) and ``counts``.
    ``lo, hi, counts = hist`` unpacks the buckets."""

    def __init__(self, name, node):
        self.name = name
        for f in HISTOGRAM_FIELDS:
            setattr(self, f, node.get(f))
        buckets = node.get("buckets") or []
        self.lo = np.array([b[0] for b in buckets] or np.zeros(0, dtype=np.int64))
        self.hi = np.array([b[1] for b in buckets] or np.zeros(0, dtype=np.int64))
        self.counts = np.array([b[2] for b in buckets], dtype=np.int64)

    def __iter__(self):
        return iter((self.lo, self.hi, self.counts))

    def __repr__(self):
        return (f"Histogram({self.name!r}, count={self.count}, mean={self.mean}, "
                f"p50={self.p50}, p99={self.p99}, max={self.max}, buckets={len(self.counts)})")


class StatGroup:
    """One group of the statistics tree. Members are reached as attributes
    (``r.stats.vm.web.vcpu0.exits``) or items (``g["exit_reasons"]["CPUID"]``);
    values are numbers, StatGroups or Histograms."""

    def __init__(self, name, node):
        object.__setattr__(self, "_name", name)
        children = {}
        for key, value in node.items():
            path = f"{name}.{key}" if name else key
            if _is_histogram(value):
                children[key] = Histogram(path, value)
            elif isinstance(value, dict):
                children[key] = StatGroup(path, value)
            else:
                children[key] = value
        object.__setattr__(self, "_children", children)

    def __getattr__(self, key):
        try:
            return self._children[key]
        except KeyError:
            where = self._name or "the statistics"
            raise AttributeError(f"{where} has no member {key!r} (members: "
                                 f"{', '.join(self._children)})") from None

    def __setattr__(self, key, value):
        raise AttributeError("statistics are read-only")

    def __getitem__(self, key):
        return self._children[key]

    def __contains__(self, key):
        return key in self._children

    def __iter__(self):
        return iter(self._children)

    def __len__(self):
        return len(self._children)

    def keys(self):
        return self._children.keys()

    def items(self):
        return self._children.items()

    def __dir__(self):
        return list(self._children)

    def __repr__(self):
        return f"StatGroup({self._name!r}: {', '.join(self._children)})"


def flatten(tree, prefix=""):
    """The statistics tree as {"vm.web.vcpu0.exits": value, ...}, in the
    tree's order. Histograms become name.count, name.mean, name.p99, ... (no
    buckets). The provenance block is not a statistic and is left out."""
    out = {}
    for key, value in tree.items():
        if not prefix and key in (PROVENANCE, SERIES):
            continue
        path = f"{prefix}.{key}" if prefix else key
        if _is_histogram(value):
            for f in HISTOGRAM_FIELDS:
                if f in value:
                    out[f"{path}.{f}"] = value[f]
        elif isinstance(value, dict):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


class Result:
    """The statistics and configuration of a run (or of a Simulation so far).

    - ``stats``: the statistics tree (StatGroup, attribute access)
    - ``flat``: {"vm.web.vcpu0.exits": value, ...}, histograms as
      name.count/.sum/.mean/.min/.max/.p50/.p90/.p99/.p999
    - ``histogram(path)``: a Histogram with numpy arrays of its buckets
    - ``config``: the fully resolved configuration as a dict
      (``config_yaml`` as text, which ``vmxsim run`` accepts)
    - ``summary``: the text the command line prints; ``notes``: crashes,
      panics, killed threads, debug-console lines
    - ``simulated_s``, ``finished``; ``stats_json``: the raw statistics JSON
    - ``units``: {path: {"kind", "unit", "desc"}} of every statistic;
      ``unit(path)`` one statistic's unit
    - ``provenance``: where the result came from (version, commit, dirty,
      command, seed, host, date), the head of stats.json; not a statistic
    - ``series``: with ``series.interval``, the sampled statistics:
      {"interval_ps", "time_ps": [...], "stats": {path: [...]}}, else None
    - ``events_json``: the event trace (Chrome trace-event JSON, see
      docs/event_trace.md) when ``event_trace.enabled`` was set, else None;
      ``events``: the same parsed, a dict with ``traceEvents``
    """

    def __init__(self, stats_json, config_yaml, summary="", notes=(), simulated_ps=0, finished=False,
                 events_json=None, units_json=None):
        self.stats_json = stats_json
        self.units_json = units_json
        self.events_json = events_json
        self.config_yaml = config_yaml
        self.summary = summary
        self.notes = list(notes)
        self.simulated_ps = simulated_ps
        self.finished = finished
        self._tree = json.loads(stats_json)
        self.provenance = self._tree.pop(PROVENANCE, None)
        # Statistics sampled over time (series.interval), not statistics themselves.
        self.series = self._tree.pop(SERIES, None)
        self.stats = StatGroup("", self._tree)
        self.flat = flatten(self._tree)
        self.config = yaml.safe_load(config_yaml)

    @property
    def units(self):
        """{path: {"kind", "unit", "desc"}} for every statistic (units.json), or {}."""
        return json.loads(self.units_json) if self.units_json else {}

    def unit(self, path):
        """The unit of a statistic by its path, also for a histogram field such
        as "....cycles.p99" (None if unknown)."""
        units = self.units
        while path:
            if path in units:
                return units[path]["unit"]
            path = path.rpartition(".")[0]
        return None

    @property
    def events(self):
        """The event trace as a dict (``traceEvents``: the list of events), or None."""
        return json.loads(self.events_json) if self.events_json else None

    @property
    def simulated_s(self):
        return self.simulated_ps / 1e12

    def histogram(self, path):
        node = self._tree
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"no statistic {path!r}")
            node = node[part]
        if not _is_histogram(node):
            raise KeyError(f"statistic {path!r} is not a histogram")
        return Histogram(path, node)

    def save(self, directory):
        """Writes stats.json, units.json, config.yaml and, with an event trace,
        events.json, as ``vmxsim run --out`` does."""
        os.makedirs(directory, exist_ok=True)
        files = [("stats.json", self.stats_json), ("config.yaml", self.config_yaml)]
        if self.units_json:
            files.append(("units.json", self.units_json))
        if self.events_json:
            files.append(("events.json", self.events_json))
        for name, text in files:
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                f.write(text)

    def __repr__(self):
        return (f"<vmxsim.Result: {self.simulated_s:.6f} s simulated, "
                f"{'finished' if self.finished else 'not finished'}, {len(self.flat)} statistics>")
