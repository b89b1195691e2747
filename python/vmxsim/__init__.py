"""vmxsim from Python: run experiments, step through them, sweep parameters.

    import vmxsim
    r = vmxsim.run("configs/quickstart.yaml", overrides={"platform.cores": 1})
    r.stats.vm.web.vcpu0.exits          # nested statistics
    r.flat["vm.web.vcpu0.exits"]        # the same, by dotted name
    lo, hi, counts = r.histogram("vm.web.vcpu0.walk_latency")

Every simulation runs in a process of its own (SystemC runs one design per
process), so run() and Simulation can be used any number of times. Use
Debian's interpreter, /usr/bin/python3, with PYTHONPATH=<repo>/build/python.
See docs/python.md and docs/sweeps.md.
"""

from ._config import parse_time, resolve
from ._native import ConfigError, SimulationError, build_info, version
from .result import Histogram, Result, StatGroup
from .simulation import Simulation, run

__version__ = version

__all__ = ["run", "Simulation", "Result", "StatGroup", "Histogram", "ConfigError", "SimulationError",
           "resolve", "parse_time", "Sweep", "run_sweep", "plot_sweep", "build_info"]


def __getattr__(name):
    # The sweep and plot helpers pull in more (Dask, matplotlib) only when used.
    if name in ("Sweep", "run_sweep"):
        from . import sweep
        return getattr(sweep, name)
    if name == "plot_sweep":
        from . import plot
        return plot.plot_sweep
    raise AttributeError(f"module 'vmxsim' has no attribute {name!r}")
