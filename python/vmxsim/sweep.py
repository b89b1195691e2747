"""Parameter sweeps: one experiment, many values, a results.csv.

A sweep is a base configuration plus a ``sweep:`` block (docs/sweeps.md):

    sweep:
      mode: product                  # or zip
      parameters:                    # config paths, as --set writes them
        platform.cores: [1, 2]
        vms[0].workloads[0].iterations: [100, 200, 300]
      collect: [vm.web.vcpu0.exits, sim.seconds]

Each point is the base configuration with one value per parameter applied as
``--set path=value`` would apply it (by the same C++ code), then validated
and run in a process of its own. The C++ reader knows nothing of ``sweep:``;
this module takes the block out before the document reaches it, keeping the
line numbers of the rest so errors still point at the file's lines.

Output, in the sweep's directory:

    results.csv              one row per point: point, parameters, collected
                             statistics, status, error, dir, and the
                             simulator that computed it (version, commit)
    sweep.json               the sweep's definition
    p000-<hash>/             per point: config.yaml, stats.json, units.json, summary.txt,
                             point.json, log.txt (if any), and `done` last

The hash is of the point's resolved configuration. A point whose directory
holds `done` written by the same simulator build (version and commit) is not
run again, so an interrupted sweep restarted with the same command picks up
where it stopped; points computed by another build are run again. A point that fails is recorded with
its error (status "error") and does not stop the others.
"""

import csv
import hashlib
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import yaml

from . import _config, _native
from .result import flatten
from .simulation import Simulation, SimulationError

SWEEP_KEYS = ("mode", "parameters", "collect")


class Point:
    """One point of a sweep: its parameter values and its configuration."""

    def __init__(self, index, params, overrides):
        self.index = index
        self.params = params          # {path: value as written}
        self.overrides = overrides    # ["path=value", ...]
        self.resolved = None          # resolved configuration (YAML text), if valid
        self.error = None             # the ConfigError message, if not

    @property
    def key(self):
        return hashlib.sha256(self.resolved.encode()).hexdigest()[:10] if self.resolved else None

    @property
    def dirname(self):
        return f"p{self.index:03d}-{self.key}" if self.resolved else ""

    def __repr__(self):
        return f"Point({self.index}, {self.params})"


# ---------------------------------------------------------------------------
# Reading the sweep: block


def _node_text(node, nested=False):
    """A composed YAML node as the text an override reads. Scalars nested in
    collections are quoted (the C++ reader does not care about quoting)."""
    if isinstance(node, yaml.ScalarNode):
        if node.style in (None, "") and not nested:
            return node.value
        return json.dumps(node.value)
    if isinstance(node, yaml.SequenceNode):
        return "[" + ", ".join(_node_text(n, True) for n in node.value) + "]"
    if isinstance(node, yaml.MappingNode):
        return "{" + ", ".join(f"{_node_text(k, True)}: {_node_text(v, True)}" for k, v in node.value) + "}"
    raise TypeError(node)


def _shown(node):
    return node.value if isinstance(node, yaml.ScalarNode) else _node_text(node)


def _describe(node):
    if isinstance(node, yaml.ScalarNode):
        return node.value or "nothing"
    return "a list" if isinstance(node, yaml.SequenceNode) else "a map"


def split_sweep_text(text, name):
    """Splits YAML text into (base text, sweep spec or None). The sweep block
    is blanked out in place, so every other line keeps its number. The spec
    is {"mode", "parameters": {path: [(value text, shown), ...]}, "collect"}."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        _config._native.Document.from_string(text, name)  # raises the C++ reader's own message
        mark = getattr(e, "problem_mark", None)
        raise _config.config_error(name, mark.line + 1 if mark else 0, "", f"invalid YAML: {e}") from None
    if not isinstance(root, yaml.MappingNode):
        return text, None
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "sweep":
            break
    else:
        return text, None
    line = key.start_mark.line + 1
    if root.flow_style:
        raise _config.config_error(name, line, "sweep", "expected the document in block style (not {...})")
    start, end = key.start_mark.index, value.end_mark.index
    base = text[:start] + "".join(c if c == "\n" else " " for c in text[start:end]) + text[end:]
    return base, _read_spec_node(value, name)


def _read_spec_node(node, name):
    def err(n, path, expected, found=""):
        return _config.config_error(name, n.start_mark.line + 1, path, expected, found)

    if not isinstance(node, yaml.MappingNode):
        raise err(node, "sweep", "expected a map with keys mode, parameters, collect", _describe(node))
    spec = {"mode": "product", "parameters": {}, "collect": None}
    for k, v in node.value:
        if k.value not in SWEEP_KEYS:
            raise err(k, "sweep", f"unknown key '{k.value}' (expected one of: {', '.join(SWEEP_KEYS)})")
        if k.value == "mode":
            spec["mode"] = v.value if isinstance(v, yaml.ScalarNode) else _describe(v)
            if spec["mode"] not in ("product", "zip"):
                raise err(v, "sweep.mode", "expected one of: product, zip", spec["mode"])
        elif k.value == "parameters":
            if not isinstance(v, yaml.MappingNode) or not v.value:
                raise err(v, "sweep.parameters", "expected a map of config paths to lists of values",
                          _describe(v))
            for pk, pv in v.value:
                path = f"sweep.parameters.{pk.value}"
                if not isinstance(pv, yaml.SequenceNode) or not pv.value:
                    raise err(pv, path, "expected a non-empty list of values", _describe(pv))
                spec["parameters"][pk.value] = [(_node_text(n), _shown(n)) for n in pv.value]
        else:
            if not isinstance(v, yaml.SequenceNode) or not all(isinstance(n, yaml.ScalarNode) for n in v.value):
                raise err(v, "sweep.collect", "expected a list of statistic names", _describe(v))
            spec["collect"] = [n.value for n in v.value]
    if not spec["parameters"]:
        raise err(node, "sweep.parameters", "expected a map of config paths to lists of values", "nothing")
    return spec


def _spec_from_python(parameters, mode, collect, name="dict"):
    if mode not in ("product", "zip"):
        raise _config.config_error(name, 0, "sweep.mode", "expected one of: product, zip", str(mode))
    if not isinstance(parameters, dict) or not parameters:
        raise _config.config_error(name, 0, "sweep.parameters",
                                   "expected a map of config paths to lists of values", repr(parameters))
    params = {}
    for path, values in parameters.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise _config.config_error(name, 0, f"sweep.parameters.{path}", "expected a non-empty list of values",
                                       repr(values))
        values = list(values)
        if not values:
            raise _config.config_error(name, 0, f"sweep.parameters.{path}", "expected a non-empty list of values",
                                       "an empty list")
        params[path] = [(_config.yaml_value(v), _config.yaml_value(v)) for v in values]
    return {"mode": mode, "parameters": params, "collect": list(collect) if collect is not None else None}


# ---------------------------------------------------------------------------
# The sweep


class Sweep:
    """A base configuration and the parameters to vary.

    Build one from a YAML file with a ``sweep:`` block (Sweep.load), or from
    Python: ``Sweep(config, {"platform.cores": [1, 2]}, mode="product",
    collect=["vm.web.vcpu0.exits"])``, where ``config`` is a YAML path, YAML
    text or dict (without a sweep: block). Values given as Python strings
    are read as YAML, as --set reads them.
    """

    def __init__(self, config, parameters=None, *, mode="product", collect=None, overrides=None):
        base, spec = _split_base(config)
        if parameters is not None:
            spec = _spec_from_python(parameters, mode, collect)
        elif spec is None:
            raise ValueError("no sweep parameters: give parameters= or a config with a sweep: block")
        self._base = base                      # (kind, value, name)
        self.mode = spec["mode"]
        self.parameters = spec["parameters"]   # {path: [(override text, shown), ...]}
        self.collect = spec["collect"]
        self.overrides = _config.override_texts(overrides)
        self.name = base[2]

    @classmethod
    def load(cls, config, overrides=None):
        """A sweep from a YAML file, YAML text or dict with a sweep: block."""
        return cls(config, overrides=overrides)

    def _document(self):
        kind, value, name = self._base
        if kind == "dict":
            return _config._native.Document.from_dict(value, name)
        return _config._native.Document.from_string(value, name)

    def points(self):
        """Every point, with its resolved configuration or its ConfigError."""
        paths = list(self.parameters)
        columns = [self.parameters[p] for p in paths]
        if self.mode == "zip":
            lengths = {len(c) for c in columns}
            if len(lengths) > 1:
                raise _config.config_error(self.name, 0, "sweep.parameters",
                                           "expected lists of the same length in zip mode",
                                           ", ".join(f"{p}: {len(c)}" for p, c in zip(paths, columns)))
            combos = zip(*columns)
        else:
            combos = itertools.product(*columns)
        points = []
        for i, combo in enumerate(combos):
            p = Point(i, {path: shown for path, (_, shown) in zip(paths, combo)},
                      [f"{path}={text}" for path, (text, _) in zip(paths, combo)])
            try:
                doc = self._document()
                for o in self.overrides + p.overrides:
                    doc.apply_override(o)
                p.resolved = doc.resolve()
            except _config.ConfigError as e:
                p.error = str(e)
            points.append(p)
        return points

    def run(self, out, *, jobs=None, scheduler=None, resume=True, log=None, on_point=None):
        """Runs every point not already done and writes ``out``/results.csv.

        ``jobs``: points run at once on this machine (default: CPU count).
        ``scheduler``: address of a Dask scheduler ("tcp://host:8786") to run
        the points on its workers instead. ``log``: callable(str) for a line
        per point. ``on_point``: callable(point, status) after each point
        that ran. Returns a SweepResult. Ctrl-C stops the running points,
        writes results.csv for what is done, and raises KeyboardInterrupt.
        """
        return _run(self, out, jobs=jobs, scheduler=scheduler, resume=resume, log=log, on_point=on_point)

    def definition(self):
        return {"config": self.name, "mode": self.mode, "overrides": self.overrides,
                "parameters": {p: [shown for _, shown in vs] for p, vs in self.parameters.items()},
                "collect": self.collect}


def _split_base(config):
    """(kind, value, name) of the base configuration, and the sweep spec."""
    if isinstance(config, dict):
        config = dict(config)
        raw = config.pop("sweep", None)
        spec = None
        if raw is not None:
            if not isinstance(raw, dict):
                raise _config.config_error("dict", 0, "sweep", "expected a map with keys mode, parameters, collect",
                                           type(raw).__name__)
            unknown = [k for k in raw if k not in SWEEP_KEYS]
            if unknown:
                raise _config.config_error("dict", 0, "sweep", f"unknown key '{unknown[0]}' (expected one of: "
                                           f"{', '.join(SWEEP_KEYS)})")
            spec = _spec_from_python(raw.get("parameters"), raw.get("mode", "product"), raw.get("collect"))
        return ("dict", config, "dict"), spec
    if _config.looks_like_path(config):
        name = os.fspath(config)
        try:
            with open(name, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise _config.config_error(name, 0, "", f"cannot read file: {e.strerror}") from None
    elif isinstance(config, str):
        name, text = "<string>", config
    else:
        raise TypeError("config must be a YAML file path, YAML text or a dict")
    base, spec = split_sweep_text(text, name)
    return ("text", base, name), spec


# ---------------------------------------------------------------------------
# Running points


def run_point(resolved_yaml, name="point", _started=None):
    """Runs one point in a fresh process and returns what the sweep keeps.
    Module-level so that Dask workers can run it (they need vmxsim importable).
    A failure raises, with the tail of the simulation's stderr appended."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as err:
        try:
            with Simulation(resolved_yaml, stderr=err) as sim:
                if _started:
                    _started(sim)
                sim.run()
                r = sim.stats()
        except SimulationError as e:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip()[-2000:]
            raise SimulationError(f"{e}\n{tail}" if tail else str(e)) from None
        err.seek(0)
        log = err.read().decode(errors="replace")
    return {"stats_json": r.stats_json, "config_yaml": r.config_yaml, "summary": r.summary, "notes": r.notes,
            "events_json": r.events_json, "units_json": r.units_json,
            "simulated_ps": r.simulated_ps, "finished": r.finished, "log": log,
            "wall_s": time.monotonic() - start}


class _LocalRunner:
    """Points in threads of this process, each simulating in a child process."""

    def __init__(self, jobs):
        self.pool = ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1)
        self.lock = threading.Lock()
        self.sims = set()
        self.stopped = False

    def _started(self, sim):
        with self.lock:
            if self.stopped:
                sim.close()
                raise SimulationError("the sweep was interrupted")
            self.sims.add(sim)

    def run(self, points):
        futures = {self.pool.submit(run_point, p.resolved, p.dirname, self._started): p for p in points}
        for fut in as_completed(futures):
            yield futures[fut], fut

    def stop(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self.lock:
            self.stopped = True
            sims = list(self.sims)
        for sim in sims:
            sim._kill()
        self.pool.shutdown(wait=True)

    def close(self):
        self.pool.shutdown(wait=True)


class _DaskRunner:
    def __init__(self, address):
        from distributed import Client

        self.client = Client(address, set_as_default=False)
        self.futures = []

    def run(self, points):
        from distributed import as_completed as dask_completed

        futures = {}
        for p in points:
            f = self.client.submit(run_point, p.resolved, p.dirname, pure=False,
                                   key=f"vmxsim-{p.dirname}-{os.urandom(4).hex()}")
            futures[f] = p
        self.futures = list(futures)
        for fut in dask_completed(self.futures, loop=self.client.loop):
            yield futures[fut], fut

    def stop(self):
        self.client.cancel(self.futures)
        self.close()

    def close(self):
        self.client.close()


def _write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _record(out, point, res):
    d = os.path.join(out, point.dirname)
    os.makedirs(d, exist_ok=True)
    _write(os.path.join(d, "config.yaml"), res["config_yaml"])
    _write(os.path.join(d, "stats.json"), res["stats_json"])
    _write(os.path.join(d, "summary.txt"), res["summary"])
    if res.get("units_json"):
        _write(os.path.join(d, "units.json"), res["units_json"])
    if res.get("events_json"):
        _write(os.path.join(d, "events.json"), res["events_json"])
    if res["log"]:
        _write(os.path.join(d, "log.txt"), res["log"])
    meta = {"point": point.index, "parameters": point.params, "overrides": point.overrides,
            "simulated_s": res["simulated_ps"] / 1e12, "finished": res["finished"], "notes": res["notes"],
            "wall_s": round(res["wall_s"], 3)}
    _write(os.path.join(d, "point.json"), json.dumps(meta, indent=2) + "\n")
    err = os.path.join(d, "error.txt")
    if os.path.exists(err):
        os.remove(err)
    _write(os.path.join(d, "done"), _build_key() + "\n")  # last: the point is complete


def _build_key():
    """What a point's `done` file records: the simulator that computed it.
    A sweep resumes only points computed by the same version and commit."""
    b = _native.build_info
    return f"vmxsim {b['version']} {b['commit']}{' modified' if b['dirty'] else ''}"


def _done_by_this_build(out, point):
    path = os.path.join(out, point.dirname, "done")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip() == _build_key()


def _record_error(out, point, message):
    d = os.path.join(out, point.dirname)
    os.makedirs(d, exist_ok=True)
    _write(os.path.join(d, "error.txt"), message + "\n")


class SweepResult:
    """What a sweep produced: ``csv`` (path of results.csv), ``rows`` (the
    CSV's rows as dicts), ``ran``, ``skipped`` and ``failed`` counts, and
    ``result(i)``, the vmxsim.Result of point i."""

    def __init__(self, out, points, rows, ran, skipped, failed):
        self.out = out
        self.csv = os.path.join(out, "results.csv")
        self.points = points
        self.rows = rows
        self.ran, self.skipped, self.failed = ran, skipped, failed

    @property
    def ok(self):
        return self.failed == 0

    def result(self, index):
        from .result import Result

        p = self.points[index]
        d = os.path.join(self.out, p.dirname)
        if not p.resolved or not os.path.exists(os.path.join(d, "done")):
            raise KeyError(f"point {index} has no result ({self.rows[index]['status']})")
        with open(os.path.join(d, "stats.json"), encoding="utf-8") as f:
            stats = f.read()
        with open(os.path.join(d, "config.yaml"), encoding="utf-8") as f:
            conf = f.read()
        with open(os.path.join(d, "summary.txt"), encoding="utf-8") as f:
            summary = f.read()
        with open(os.path.join(d, "point.json"), encoding="utf-8") as f:
            meta = json.load(f)
        events = None
        if os.path.exists(os.path.join(d, "events.json")):
            with open(os.path.join(d, "events.json"), encoding="utf-8") as f:
                events = f.read()
        return Result(stats, conf, summary, meta["notes"], round(meta["simulated_s"] * 1e12), meta["finished"],
                      events)

    def __repr__(self):
        return (f"<vmxsim.SweepResult {len(self.points)} points: {self.ran} ran, {self.skipped} skipped, "
                f"{self.failed} failed; {self.csv}>")


def _write_csv(out, sweep, points, status):
    """results.csv; returns its rows as dicts."""
    flat = {}
    made_by = {}
    for p in points:
        if status[p.index][0] == "ok":
            with open(os.path.join(out, p.dirname, "stats.json"), encoding="utf-8") as f:
                tree = json.load(f)
            prov = tree.get("provenance") or {}
            made_by[p.index] = (prov.get("version", ""), prov.get("commit", ""))
            flat[p.index] = flatten(tree)
    collect = sweep.collect
    if collect is None:  # everything, in the order of the first point that has results
        collect = list(flat[min(flat)]) if flat else []
    params = list(sweep.parameters)
    for c in collect:
        if flat and all(c not in f for f in flat.values()):
            print(f"vmxsim sweep: warning: no statistic named '{c}' (its column is empty)", file=sys.stderr)
    header = ["point"] + params + [c for c in collect] + ["status", "error", "dir", "vmxsim_version", "vmxsim_commit"]
    rows = []
    for p in points:
        st, err = status[p.index]
        row = {"point": p.index}
        row.update({k: p.params[k] for k in params})
        f = flat.get(p.index, {})
        row.update({c: f.get(c, "") for c in collect})
        version, commit = made_by.get(p.index, ("", ""))
        row.update({"status": st, "error": err, "dir": p.dirname, "vmxsim_version": version, "vmxsim_commit": commit})
        rows.append(row)
    tmp = os.path.join(out, "results.csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow([row[h] for h in header])
    os.replace(tmp, os.path.join(out, "results.csv"))
    return rows


def _run(sweep, out, *, jobs, scheduler, resume, log, on_point):
    log = log or (lambda line: None)
    points = sweep.points()
    os.makedirs(out, exist_ok=True)
    _write(os.path.join(out, "sweep.json"), json.dumps(sweep.definition(), indent=2) + "\n")
    status = {}
    todo = []
    skipped = failed = stale = 0
    for p in points:
        if p.error:
            status[p.index] = ("error", p.error)
            failed += 1
            log(f"point {p.index}: config error: {p.error}")
        elif resume and _done_by_this_build(out, p):
            status[p.index] = ("ok", "")
            skipped += 1
        else:
            if resume and _done_by_this_build(out, p) is False:
                stale += 1
            status[p.index] = ("pending", "")
            todo.append(p)
    if skipped:
        log(f"{skipped} of {len(points)} points already done in {out}; skipping them")
    if stale:
        log(f"{stale} points in {out} were computed by another simulator build; running them again "
            f"with {_build_key()}")
    ran = 0
    runner = _DaskRunner(scheduler) if scheduler else _LocalRunner(jobs)
    try:
        for p, fut in runner.run(todo):
            try:
                res = fut.result()
            except Exception as e:  # noqa: BLE001 - the point failed; the others go on
                status[p.index] = ("error", str(e).strip() or type(e).__name__)
                _record_error(out, p, status[p.index][1])
                failed += 1
            else:
                _record(out, p, res)
                status[p.index] = ("ok", "")
            ran += 1
            st, err = status[p.index]
            shown = " ".join(f"{k}={v}" for k, v in p.params.items())
            log(f"[{ran}/{len(todo)}] {p.dirname} {st}: {shown}" + (f"\n    {err}" if err else ""))
            if on_point:
                on_point(p, st)
    except KeyboardInterrupt:
        runner.stop()
        _write_csv(out, sweep, points, status)
        raise
    runner.close()
    rows = _write_csv(out, sweep, points, status)
    return SweepResult(out, points, rows, ran, skipped, failed)


def run_sweep(config, out, *, jobs=None, scheduler=None, overrides=None, resume=True, log=None, on_point=None):
    """Loads a config with a sweep: block and runs it (see Sweep.run)."""
    return Sweep.load(config, overrides=overrides).run(out, jobs=jobs, scheduler=scheduler, resume=resume, log=log,
                                                       on_point=on_point)
