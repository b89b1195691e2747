"""Figures of a sweep: a statistic against a parameter, one line per value
of another (docs/sweeps.md)."""

import csv
import os
import re

META_COLUMNS = ("point", "status", "error", "dir", "vmxsim_version", "vmxsim_commit")


def read_results(path):
    """(parameter names, statistic names, rows) of a results.csv, or of the
    results.csv in a sweep directory. Parameters are the columns that
    sweep.json lists; statistics are the rest."""
    import json

    directory = path if os.path.isdir(path) else os.path.dirname(path)
    csv_path = os.path.join(path, "results.csv") if os.path.isdir(path) else path
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = list(reader)
    params = []
    definition = os.path.join(directory, "sweep.json")
    if os.path.exists(definition):
        with open(definition, encoding="utf-8") as f:
            params = [p for p in json.load(f)["parameters"] if p in columns]
    stats = [c for c in columns if c not in META_COLUMNS and c not in params]
    return params, stats, rows


_UNITS = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "B": 1,
          "ps": 1e-12, "ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1,
          "Hz": 1, "kHz": 1e3, "MHz": 1e6, "GHz": 1e9}
_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*$")


def _number(text):
    """'2GHz' -> 2e9, '64KiB' -> 65536, '3' -> 3.0; None if not a quantity."""
    m = _NUMBER.match(str(text))
    if not m or m.group(2) not in _UNITS:
        return None
    return float(m.group(1)) * _UNITS[m.group(2)]


_BASE_UNIT = {"Hz": "Hz", "kHz": "Hz", "MHz": "Hz", "GHz": "Hz", "B": "bytes", "KiB": "bytes", "MiB": "bytes",
              "GiB": "bytes", "TiB": "bytes", "ps": "s", "ns": "s", "us": "s", "ms": "s", "s": "s"}
_HISTOGRAM_FIELDS = {"count": "count of", "sum": "sum of", "mean": "mean", "min": "minimum", "max": "maximum",
                     "p50": "median", "p90": "90th percentile", "p99": "99th percentile", "p999": "99.9th percentile"}
_MARKERS = "osD^vP*Xh<>"
_STYLES = ("-", "--", "-.", ":")


def _load_units(sweep_dir, rows):
    """units.json of the first point that has one ({} if none)."""
    import json

    for r in rows:
        path = os.path.join(sweep_dir, r.get("dir", ""), "units.json")
        if r.get("dir") and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)
    return {}


def stat_label(name, units):
    """An axis label for a statistic: its description and unit from
    units.json ('VM exits (exits)'), 'p99 of ...' for histogram fields; the
    name itself when unknown."""
    field = None
    path = name
    if path not in units and path.rpartition(".")[0] in units:
        path, _, field = name.rpartition(".")
    info = units.get(path)
    if not info:
        return name
    desc = info.get("desc") or path.rpartition(".")[2]
    if field:
        desc = f"{_HISTOGRAM_FIELDS.get(field, field)} {desc}" if field != "count" else f"number of samples: {desc}"
    unit = info.get("unit") if field != "count" else "samples"
    return f"{desc} ({unit})" if unit else desc


def _param_label(name, values):
    """The parameter with the unit its values were written in, converted to
    the base unit ('platform.frequency (Hz)')."""
    suffixes = {(_NUMBER.match(str(v)).group(2) if _NUMBER.match(str(v)) else None) for v in values}
    bases = {_BASE_UNIT.get(u) for u in suffixes if u}
    return f"{name} ({bases.pop()})" if len(bases) == 1 and None not in bases else name


def _spans_decades(values):
    pos = [v for v in values if v > 0]
    return len(pos) >= 3 and len(pos) == len(values) and max(pos) / min(pos) >= 100


def plot_sweep(path, y=None, x=None, by=None, out=None, fmt="png"):
    """Draws the sweep's figures with matplotlib and returns the files written.

    ``path``: a sweep directory or its results.csv. ``y``: statistics to plot
    (default: every collected statistic, one figure each). ``x``: the
    parameter on the horizontal axis (default: the first). ``by``: the
    parameter whose values get one line each (default: the second, if any;
    further parameters split lines too). ``out``: a file (one statistic) or a
    directory (default: <sweep>/plots). ``fmt``: png or pdf.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params, stats, rows = read_results(path)
    rows = [r for r in rows if r.get("status") == "ok"]
    if not params:
        raise ValueError(f"{path}: no sweep parameters found (sweep.json missing?)")
    x = x or params[0]
    if x not in params:
        raise ValueError(f"unknown parameter '{x}' (parameters: {', '.join(params)})")
    if by is None:
        split = [p for p in params if p != x]
    else:
        if by not in params:
            raise ValueError(f"unknown parameter '{by}' (parameters: {', '.join(params)})")
        split = [by] + [p for p in params if p not in (x, by)]
    ys = [y] if isinstance(y, str) else list(y or stats)
    for name in ys:
        if name not in stats:
            raise ValueError(f"unknown statistic '{name}' (collected: {', '.join(stats)})")

    sweep_dir = path if os.path.isdir(path) else os.path.dirname(path)
    single_file = out is not None and os.path.splitext(out)[1] in (".png", ".pdf") and len(ys) == 1
    out_dir = os.path.dirname(out) if single_file else (out or os.path.join(sweep_dir, "plots"))
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)

    units = _load_units(sweep_dir, rows)
    xs_text = list(dict.fromkeys(r[x] for r in rows))
    numeric = all(_number(v) is not None for v in xs_text)
    # A parameter value of 0 next to positive ones usually means "off" or
    # "unlimited" (cap: 0, a disabled period): it is drawn as a reference
    # line, not as a point at zero on the axis.
    special = [v for v in xs_text if numeric and _number(v) == 0] if numeric and any(
        _number(v) > 0 for v in xs_text) else []
    xs_axis = [v for v in xs_text if v not in special]
    position = {v: (_number(v) if numeric else i) for i, v in enumerate(xs_axis)}
    log_x = numeric and _spans_decades([position[v] for v in xs_axis])
    written = []
    for name in ys:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        lines = {}
        for r in rows:
            label = ", ".join(f"{p}={r[p]}" for p in split)
            lines.setdefault(label, []).append(r)
        all_y = []
        for i, (label, members) in enumerate(lines.items()):
            style = dict(marker=_MARKERS[i % len(_MARKERS)], linestyle=_STYLES[(i // len(_MARKERS)) % len(_STYLES)],
                         markersize=6 - min(i, 3), alpha=0.9)
            pts = sorted((position[r[x]], float(r[name])) for r in members if r[name] != "" and r[x] in position)
            if pts:
                line = ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label or None, **style)[0]
                all_y += [p[1] for p in pts]
            for r in members:
                if r[x] in special and r[name] != "":
                    value = float(r[name])
                    ax.axhline(value, linestyle=":", linewidth=1,
                               color=line.get_color() if pts else None,
                               label=f"{label + ', ' if label else ''}{x}={r[x]} (off/unlimited)")
                    all_y.append(value)
        if log_x:
            ax.set_xscale("log")
        if _spans_decades(all_y):
            ax.set_yscale("log")
        if not numeric or len(xs_axis) <= 12:  # ticks read as the values were written ("2GHz")
            ax.set_xticks([position[v] for v in xs_axis], xs_axis)
            ax.minorticks_off()
        ax.set_xlabel(_param_label(x, xs_axis))
        ylabel = stat_label(name, units)
        ax.set_ylabel(ylabel if len(ylabel) <= 60 else ylabel[:57] + "...")
        ax.set_title(name, fontsize="medium")
        ax.grid(True, alpha=0.3)
        if any(lines) or special:  # labelled lines (more than one parameter) or reference lines
            ax.legend(fontsize="small")
        fig.tight_layout()
        target = out if single_file else os.path.join(out_dir, re.sub(r"[^A-Za-z0-9_.-]", "_", name) + "." + fmt)
        fig.savefig(target)
        plt.close(fig)
        written.append(target)
    return written


def read_series(path):
    """The "series" block of a run's stats.json (a file, or a run directory
    holding one): {"interval_ps", "time_ps": [...], "stats": {path: [...]}}."""
    import json

    stats_path = os.path.join(path, "stats.json") if os.path.isdir(path) else path
    with open(stats_path, encoding="utf-8") as f:
        tree = json.load(f)
    series = tree.get("series")
    if not series:
        raise ValueError(f"{stats_path} has no series: run with series.interval set (docs/memory.md, "
                         "\"Memory over time\")")
    return series


def plot_series(path, y=None, out=None, fmt="png"):
    """Draws statistics sampled over time (series.interval) against simulated
    time, one panel per kind of statistic (the path without its VM name),
    one line per VM; returns the file written. `y`: the paths or patterns
    (fnmatch, e.g. "vm.*.resident_pages") to draw, default all."""
    import fnmatch

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_series(path)
    t_ms = [t / 1e9 for t in series["time_ps"]]
    names = list(series["stats"])
    if y:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in y)]
        if not names:
            raise ValueError(f"no sampled statistic matches {', '.join(y)}")
    # One panel per statistic kind: vm.<name>.rest -> vm.*.rest.
    panels = {}
    for n in names:
        parts = n.split(".")
        key = ".".join(["vm", "*"] + parts[2:]) if parts[0] == "vm" and len(parts) > 2 else n
        panels.setdefault(key, []).append(n)
    rows = len(panels)
    fig, axes = plt.subplots(rows, 1, figsize=(7, 2.2 * rows + 0.6), sharex=True, squeeze=False)
    for ax, (key, members) in zip(axes[:, 0], panels.items()):
        for n in members:
            values = [float("nan") if v is None else v for v in series["stats"][n]]
            label = n.split(".")[1] if key.startswith("vm.*.") else None
            ax.step(t_ms, values, where="post", label=label)
        ax.set_ylabel(key.rsplit(".", 1)[-1].replace("_", " "), fontsize=8)
        ax.set_title(key, fontsize=8)
        ax.grid(True, alpha=0.3)
        if key.startswith("vm.*."):
            ax.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("simulated time (ms)")
    fig.tight_layout()
    directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
    target = out or os.path.join(directory, f"series.{fmt}")
    fig.savefig(target)
    plt.close(fig)
    return target
