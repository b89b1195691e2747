# %% [markdown]
# # vmxsim from Python: a first session
#
# Run it as it is, from the repository (after `./vmxsim run` or
# `./scripts/setup` has built it once):
#
#     PYTHONPATH=build/python /usr/bin/python3 examples/quickstart.py
#
# or paste the cells (`# %%`) into a notebook running /usr/bin/python3.
# It takes a few seconds and writes into out/examples/quickstart/.
# docs/python.md and docs/sweeps.md explain everything used here.

# %%
from pathlib import Path

import vmxsim

REPO = Path(__file__).resolve().parent.parent if "__file__" in globals() else Path.cwd()
OUT = Path("out/examples/quickstart")

# %% [markdown]
# ## 1. One run, from a YAML file
# `overrides` work like the command line's `--set path=value`. Each run
# happens in a process of its own, so you can call `vmxsim.run` as often as
# you like.

# %%
r = vmxsim.run(REPO / "configs/quickstart.yaml",
               overrides={"duration": "2ms", "platform.cores": 1, "vms[0].vcpus": 1}, progress=True)
print(r.summary)
print("vcpu0 VM exits:", r.stats.vm.web.vcpu0.exits)      # nested, attribute access
print("same, flat:    ", r.flat["vm.web.vcpu0.exits"])    # or by dotted name

# %% [markdown]
# ## 2. The same kind of document as a dict
# A dict takes exactly the keys a YAML file does; left-out keys take their
# defaults (`./vmxsim params` lists them all).

# %%
config = {
    "seed": 1,
    "duration": "5ms",
    "platform": {"cores": 1, "memory": "256MiB"},
    "vms": [{"name": "web", "vcpus": 1, "memory": "64MiB",
             "workloads": [{"type": "cpuid_loop", "iterations": 500}]}],
}
r = vmxsim.run(config)
cpuid = r.histogram("vm.web.vcpu0.exit_reasons.CPUID.cycles")
print(cpuid)
lo, hi, counts = cpuid                       # numpy arrays, one entry per bucket
print("busiest bucket:", lo[counts.argmax()], "-", hi[counts.argmax()], "cycles")
print("resolved config, platform:", r.config["platform"]["frequency"], r.config["platform"]["quantum"])

# %% [markdown]
# ## 3. Step by step: warm up, reset, measure
# A Simulation keeps its process between calls.

# %%
with vmxsim.Simulation(config) as sim:
    sim.run(for_="500us")
    print(f"after {sim.now_s * 1e3:.1f} ms: {sim.stats().stats.vm.web.vcpu0.exits} exits so far")
    sim.reset()
    sim.run()                                # on to `duration`, or until the work is done
    measured = sim.stats()
print(f"after the reset: {measured.flat['vm.web.vcpu0.exits']} exits, finished={measured.finished}")

# %% [markdown]
# ## 4. Mistakes are reported like the command line reports them

# %%
try:
    vmxsim.run(config, overrides={"vms[0].vcpus": 0})
except vmxsim.ConfigError as e:
    print("ConfigError:", e)

# %% [markdown]
# ## 5. A sweep, and its figures
# Six points, two at a time, each in its own process. Running this cell
# again skips the points already done.

# %%
sweep = vmxsim.Sweep(config,
                     {"platform.frequency": ["2GHz", "3GHz"],
                      "vms[0].workloads[0].iterations": [100, 200, 400]},
                     collect=["vm.web.vcpu0.exits", "vm.web.vcpu0.exit_reasons.CPUID.cycles.mean", "sim.seconds"])
res = sweep.run(OUT / "sweep", jobs=2, log=print)
print(res)
for row in res.rows:
    print(row["platform.frequency"], row["vms[0].workloads[0].iterations"], row["sim.seconds"], row["status"])
for f in vmxsim.plot_sweep(res.out, by="platform.frequency", x="vms[0].workloads[0].iterations"):
    print("wrote", f)
