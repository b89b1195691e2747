"""``python -m vmxsim sweep|plot``; the ./vmxsim wrapper sends those two
commands here (``run`` and ``params`` go to the C++ program)."""

import argparse
import os
import signal
import sys


def _sweep(args):
    from . import ConfigError
    from .sweep import Sweep

    try:
        sweep = Sweep.load(args.config, overrides=args.set)
    except ConfigError as e:
        print(f"vmxsim: config error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"vmxsim: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join("out", os.path.splitext(os.path.basename(args.config))[0] + "-sweep")
    where = f"on the Dask cluster at {args.scheduler}" if args.scheduler else f"with {args.jobs or os.cpu_count()} jobs"
    print(f"vmxsim sweep: {args.config}, {sweep.mode} of {', '.join(sweep.parameters)}, {where}, into {out}",
          file=sys.stderr)
    terminated = []

    def on_sigterm(signum, frame):
        # A batch system's kill: stop the workers and keep what is done, as Ctrl-C does.
        terminated.append(signum)
        raise KeyboardInterrupt

    # On a terminal, a progress bar over the points (python3-tqdm from
    # Debian), with the log lines printed above it; elsewhere, the log alone.
    bar = None
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(sweep.points()), unit="point", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            bar = None

    def log(line):
        if bar is not None:
            bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def on_point(point, status):
        if bar is not None:
            bar.update(1)

    def skipped(line):
        # "<n> of <m> points already done ...": they count as progress.
        if bar is not None and " points already done" in line:
            bar.update(int(line.split()[0]))
        log(line)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        res = sweep.run(out, jobs=args.jobs, scheduler=args.scheduler, resume=not args.no_resume, log=skipped,
                        on_point=on_point)
    except KeyboardInterrupt:
        print(f"\nvmxsim sweep: {'terminated' if terminated else 'interrupted'}; points done so far are kept in "
              f"{out}. Run the same command again to continue.", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if bar is not None:
            bar.close()
    print(f"vmxsim sweep: {len(res.points)} points: {res.ran} ran, {res.skipped} already done, "
          f"{res.failed} failed; wrote {res.csv}", file=sys.stderr)
    return 0 if res.ok else 1


def _plot(args):
    from .plot import plot_series, plot_sweep

    # A run's directory (or its stats.json) with sampled statistics: memory
    # over time; a sweep's directory (or results.csv): a sweep's figures.
    is_run = (args.sweep.endswith("stats.json") or
              (os.path.isdir(args.sweep) and os.path.exists(os.path.join(args.sweep, "stats.json"))
               and not os.path.exists(os.path.join(args.sweep, "results.csv"))))
    try:
        if is_run:
            files = [plot_series(args.sweep, y=args.y or None, out=args.out, fmt=args.format)]
        else:
            files = plot_sweep(args.sweep, y=args.y or None, x=args.x, by=args.by, out=args.out, fmt=args.format)
    except (ValueError, OSError) as e:
        print(f"vmxsim plot: {e}", file=sys.stderr)
        return 2
    for f in files:
        print(f"wrote {f}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="vmxsim", description="vmxsim sweeps and plots (Python side).")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sweep", help="run every point of a config's sweep: block",
                       description="Runs every point of CONFIG's sweep: block (docs/sweeps.md), one process per "
                                   "point, and writes DIR/results.csv and one directory per point. Points already "
                                   "done in DIR are skipped.")
    s.add_argument("config", help="YAML file with a sweep: block")
    s.add_argument("-j", "--jobs", type=int, default=None, help="points run at once (default: CPU count)")
    s.add_argument("--out", help="output directory (default: out/<config name>-sweep)")
    s.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the points on this Dask scheduler's workers (e.g. tcp://10.0.0.5:8786)")
    s.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override a value of the base config, as for vmxsim run")
    s.add_argument("--no-resume", action="store_true", help="run every point again, even those already done")

    p = sub.add_parser("plot", help="draw a sweep's figures, or a run's statistics over time",
                       description="Plots statistics of a sweep against a parameter, one line per value of "
                                   "another, into PNG or PDF files; or, given a run's directory (or stats.json) "
                                   "made with series.interval, its sampled statistics over time (DIR/series.png).")
    p.add_argument("sweep", help="sweep directory (or its results.csv), or a run directory (or its stats.json)")
    p.add_argument("-y", "--y", action="append", metavar="STAT", help="statistic to plot (default: all collected)")
    p.add_argument("-x", "--x", metavar="PARAM", help="parameter on the x axis (default: the first)")
    p.add_argument("--by", metavar="PARAM", help="parameter with one line per value (default: the second)")
    p.add_argument("-o", "--out", help="output file (one statistic) or directory (default: <sweep>/plots)")
    p.add_argument("--format", choices=("png", "pdf"), default="png")

    args = parser.parse_args(argv)
    return _sweep(args) if args.command == "sweep" else _plot(args)


if __name__ == "__main__":
    sys.exit(main())
