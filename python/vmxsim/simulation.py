"""vmxsim.run() and vmxsim.Simulation: each simulation in a process of its own.

SystemC elaborates one design per process and cannot restart after a run
(docs/architecture.md, "Known constraints"). So a Simulation starts a fresh
``python -m vmxsim._worker`` process, sends it the validated configuration
and drives it over a pipe. The calling process never starts SystemC itself:
it only validates configurations, which needs no simulator. That is what
lets a notebook call vmxsim.run() as often as it likes.
"""

import os
import subprocess
import sys
import threading
import weakref

from . import _config, _native
from ._protocol import read_frame, write_frame
from .result import Result

SimulationError = _native.SimulationError

def _package_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stop_process(proc, requests):
    """Finalizer: asks the worker to exit, then makes sure it has."""
    if proc.poll() is None:
        try:
            write_frame(requests, ("close",))
        except (OSError, ValueError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdin, proc.stdout):
        try:
            f.close()
        except OSError:
            pass


class Simulation:
    """One simulation, advanced in steps, in a process of its own.

    >>> with vmxsim.Simulation("configs/quickstart.yaml") as sim:
    ...     sim.run(for_="10ms")
    ...     warm = sim.stats()
    ...     sim.reset()
    ...     sim.run()                  # on to the configured duration
    ...     print(sim.stats().flat["vm.web.vcpu0.exits"])

    ``config`` is a YAML path, YAML text or a dict; ``overrides`` a dict
    {path: value} or a list of "path=value" strings, applied like --set.
    Raises ConfigError at once if the configuration is invalid.

    ``stderr`` is where the simulation process's output goes (a file object
    with a fileno, or subprocess.DEVNULL); default: this process's stderr.
    """

    def __init__(self, config, overrides=None, *, stderr=None):
        doc = _config.document(config, overrides)
        resolved = doc.resolve()  # validates here, so errors come from the caller's process
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen([sys.executable, "-m", "vmxsim._worker"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=stderr, env=env, close_fds=True)
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop_process, self._proc, self._proc.stdin)
        try:
            info = self._call("open", resolved, doc.name, _command())
        except BaseException:
            self._kill()
            raise
        self.config_yaml = info["resolved_yaml"]
        self.duration_ps = info["duration_ps"]
        self.warmup_ps = info["warmup_ps"]
        self._stop_when_done = bool(info["stop_when_done"])
        self._warm = self.warmup_ps == 0
        self._state = info

    # -- the pipe ---------------------------------------------------------

    def _call(self, *request):
        if self._closed:
            raise RuntimeError("this Simulation is closed")
        with self._lock:
            try:
                write_frame(self._proc.stdin, request)
                reply = read_frame(self._proc.stdout)
            except KeyboardInterrupt:
                # Ctrl-C: a simulation cannot be stopped half-way through a
                # step, so its process goes, and the interrupt goes on.
                self._kill()
                raise
            except (EOFError, OSError, ValueError):
                if self._closed:
                    raise SimulationError("the simulation was stopped") from None
                code = self._proc.wait()
                self._kill()
                how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                raise SimulationError(f"the simulation process {how}") from None
        if reply[0] == "ok":
            return reply[1]
        _, kind, message, attrs = reply
        if kind == "ConfigError":
            err = _native.ConfigError(message)
            for k, v in attrs.items():
                setattr(err, k, v)
            raise err
        if kind == "SimulationError":
            raise SimulationError(message)
        raise RuntimeError(f"the simulation process failed:\n{message}")

    def _kill(self):
        self._closed = True
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._finalizer()

    def close(self):
        """Ends the simulation process. The Simulation cannot be used after."""
        if not self._closed:
            self._closed = True
            self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- simulating -------------------------------------------------------

    @property
    def now_ps(self):
        """Simulated time so far, in picoseconds."""
        return self._state["now_ps"]

    @property
    def now_s(self):
        return self._state["now_ps"] / 1e12

    @property
    def finished(self):
        """Every workload with a finite amount of work has completed."""
        return self._state["finished"]

    def _done(self):
        # The run ends early only as `vmxsim run` ends it: with stop_when_done.
        return self._stop_when_done and self.finished

    def run(self, for_=None, *, until=None, progress=None, progress_step=None):
        """Simulates on, for ``for_`` more (e.g. "10ms", or seconds as a
        number) or until simulated time ``until``; with neither, until the
        configured duration. Stops early when every finite workload is done
        and the config's stop_when_done is set (see ``finished``).

        Statistics are reset when the run passes the config's ``warmup``
        time, as ``vmxsim run`` does.

        ``progress``: a callable(simulated_s, target_s) called after each
        step of ``progress_step`` simulated time (default: 1% of the run), or
        True for a progress bar on stderr. Ctrl-C stops the simulation
        process and raises KeyboardInterrupt.
        """
        if for_ is not None and until is not None:
            raise TypeError("give for_ or until, not both")
        if for_ is not None:
            target = self.now_ps + _config.parse_time(for_)
        elif until is not None:
            target = _config.parse_time(until)
        else:
            target = self.duration_ps
        if progress is True:
            progress = _ProgressBar()
        start = self.now_ps
        step = target - start
        if progress is not None:
            step = _config.parse_time(progress_step) if progress_step is not None else max(1, (target - start) // 100)
            # Each step is a round trip to the simulation process: bound their number.
            if step <= 0 or (target - start) // step > MAX_PROGRESS_STEPS:
                shortest = _native.format_time_ps(max(1, -(-(target - start) // MAX_PROGRESS_STEPS)))
                raise ValueError(f"progress_step: must be at least {shortest} for this run (at most "
                                 f"{MAX_PROGRESS_STEPS} steps; got {progress_step!r})")
        try:
            while self.now_ps < target and not self._done():
                stop = min(target, self.now_ps + max(step, 1))
                if not self._warm and stop >= self.warmup_ps:
                    self._state = self._call("run_until", self.warmup_ps)
                    self._state = self._call("reset")
                    self._warm = True
                    if self._done():
                        break
                self._state = self._call("run_until", stop)
                if progress is not None:
                    progress(self.now_ps / 1e12, target / 1e12)
        except KeyboardInterrupt:
            self._kill()  # Ctrl-C between steps (e.g. in the progress callback)
            raise
        finally:
            if isinstance(progress, _ProgressBar):
                progress.close()
        return self

    def migrate(self, vm, to, **options):
        """Starts a live migration of VM ``vm`` to host ``to`` now, between
        steps (docs/migration.md, "Triggers"). ``options`` are the keys of a
        ``migrations[]`` entry (``tracking``, ``max_bandwidth``,
        ``downtime_limit``, ``max_rounds``, ``core``, ``from``); ``from``
        defaults to the host the VM is on and the start is the current
        simulated time. Raises ConfigError for an option the config would
        refuse. The migration then runs as the simulation goes on
        (``run()``); its statistics are the same as a configured one's.
        """
        if "from_" in options:
            options["from"] = options.pop("from_")
        entry = {"vm": vm, "to": to, **options}
        self._state = self._call("migrate", entry)
        return self

    def reset(self):
        """Resets every statistic (a phase boundary)."""
        self._state = self._call("reset")
        self._warm = True

    def stats(self):
        """The statistics so far, as a Result."""
        snap = self._call("snapshot")
        self._state = snap
        return Result(snap["stats_json"], self.config_yaml, snap["summary"], snap["notes"],
                      snap["now_ps"], snap["finished"], snap.get("events_json"), snap.get("units_json"))

    def __repr__(self):
        state = "closed" if self._closed else f"at {self.now_s:.6f} s"
        return f"<vmxsim.Simulation {state}>"


# The most progress steps one run() may take (each is a round trip to the
# simulation process).
MAX_PROGRESS_STEPS = 1_000_000


def _command():
    """What ran this simulation, for its provenance: the Python program and its arguments."""
    return " ".join([os.path.basename(sys.executable)] + [str(a) for a in sys.argv])


class _ProgressBar:
    """progress=True: a bar redrawn in place on a terminal, else a line per 10%."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.shown = False
        self.tty = self.stream.isatty()
        self.next_line = 0.1

    def __call__(self, now_s, target_s):
        frac = min(1.0, now_s / target_s) if target_s else 1.0
        if not self.tty:
            if frac + 1e-9 >= self.next_line:
                self.stream.write(f"simulated {now_s * 1e3:.3f} ms of {target_s * 1e3:.3f} ms ({frac * 100:.0f}%)\n")
                self.stream.flush()
                self.next_line = (int(frac * 10 + 1e-6) + 1) / 10
            return
        width = 30
        filled = int(round(frac * width))
        self.stream.write(f"\rsimulated {now_s * 1e3:10.3f} ms of {target_s * 1e3:.3f} ms "
                          f"[{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}%")
        self.stream.flush()
        self.shown = True

    def close(self):
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def run(config, overrides=None, *, progress=None, progress_step=None, stderr=None):
    """Runs one experiment as ``vmxsim run`` does and returns its Result.

    ``config``: a YAML file path, YAML text, or a dict with the same schema.
    ``overrides``: {path: value} or ["path=value", ...], applied like --set.
    ``progress``: callable(simulated_s, target_s), or True for a progress bar.
    Raises ConfigError (a ValueError) for a bad configuration, with the
    command line's message, and SimulationError if the simulation fails.
    """
    with Simulation(config, overrides, stderr=stderr) as sim:
        sim.run(progress=progress, progress_step=progress_step)
        return sim.stats()
