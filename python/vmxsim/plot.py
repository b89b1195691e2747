"""Figures of a sweep: a statistic against a parameter, one line per value
of another (docs/sweeps.md)."""

import csv
import os
import re

META_COLUMNS = ("point", "status", "error", "dir")


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

    xs_text = list(dict.fromkeys(r[x] for r in rows))
    numeric = all(_number(v) is not None for v in xs_text)
    position = {v: (_number(v) if numeric else i) for i, v in enumerate(xs_text)}
    written = []
    for name in ys:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        lines = {}
        for r in rows:
            label = ", ".join(f"{p}={r[p]}" for p in split)
            lines.setdefault(label, []).append(r)
        for label, members in lines.items():
            pts = sorted((position[r[x]], float(r[name])) for r in members if r[name] != "")
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label or None)
        if not numeric or len(xs_text) <= 12:  # ticks read as the values were written ("2GHz")
            ax.set_xticks([position[v] for v in xs_text], xs_text)
        ax.set_xlabel(x)
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        if any(lines):  # labelled lines (more than one parameter)
            ax.legend(fontsize="small")
        fig.tight_layout()
        target = out if single_file else os.path.join(out_dir, re.sub(r"[^A-Za-z0-9_.-]", "_", name) + "." + fmt)
        fig.savefig(target)
        plt.close(fig)
        written.append(target)
    return written
