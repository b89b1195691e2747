"""vmxsim.run(): one experiment, in a process of its own, as a Result."""

import json
import subprocess

import numpy as np
import pytest

import vmxsim
from conftest import CLI, TINY_YAML, statistics


def test_run_from_dict_equals_run_from_yaml_file(tiny_yaml, tiny_dict):
    from_file = vmxsim.run(tiny_yaml)
    from_dict = vmxsim.run(tiny_dict)
    from_text = vmxsim.run(TINY_YAML)
    assert statistics(from_dict.stats_json) == statistics(from_file.stats_json) == statistics(from_text.stats_json)
    assert from_dict.flat == from_file.flat
    assert from_dict.config == from_file.config
    assert from_file.flat["vm.web.vcpu0.exit_reasons.CPUID.cycles.count"] == 300


def test_run_twice_in_one_process(tiny_dict):
    # SystemC cannot restart in a process; vmxsim.run must not care.
    a = vmxsim.run(tiny_dict)
    b = vmxsim.run(tiny_dict)
    assert statistics(a.stats_json) == statistics(b.stats_json)


def test_run_matches_the_command_line(tiny_yaml, tmp_path):
    out = tmp_path / "cli"
    subprocess.run([str(CLI), "run", str(tiny_yaml), "--set", "seed=3", "--out", str(out)], check=True,
                   capture_output=True)
    r = vmxsim.run(tiny_yaml, overrides={"seed": 3})
    assert statistics(r.stats_json) == statistics((out / "stats.json").read_text())
    assert r.config_yaml == (out / "config.yaml").read_text()


def test_overrides_as_dict_or_assignments(tiny_dict):
    a = vmxsim.run(tiny_dict, overrides={"vms[0].workloads[0].iterations": 100, "platform.frequency": "2GHz"})
    b = vmxsim.run(tiny_dict, overrides=["vms[0].workloads[0].iterations=100", "platform.frequency=2GHz"])
    assert statistics(a.stats_json) == statistics(b.stats_json)
    assert a.config["platform"]["frequency"] == "2GHz"
    assert a.flat["vm.web.vcpu0.exit_reasons.CPUID.cycles.count"] == 100


def test_result_exposes_statistics(tiny_dict):
    r = vmxsim.run(tiny_dict)
    # Nested objects with attribute access, and the same values flat.
    assert r.stats.vm.web.vcpu0.exits == r.flat["vm.web.vcpu0.exits"] > 300
    assert r.stats["vm"]["web"]["vcpu0"]["exits"] == r.stats.vm.web.vcpu0.exits
    assert r.stats.sim.finished == 1 and r.finished
    assert 0 < r.simulated_s == pytest.approx(r.flat["sim.seconds"])
    with pytest.raises(AttributeError, match="no member 'nonexistent'"):
        r.stats.vm.web.nonexistent
    # Histograms: scalar fields flat, buckets as numpy arrays.
    h = r.histogram("vm.web.vcpu0.exit_reasons.CPUID.cycles")
    assert h.count == 300 == r.flat["vm.web.vcpu0.exit_reasons.CPUID.cycles.count"]
    assert r.flat["vm.web.vcpu0.exit_reasons.CPUID.cycles.p99"] == h.p99
    lo, hi, counts = h
    assert isinstance(counts, np.ndarray) and counts.sum() == 300
    assert np.all(lo <= hi) and lo.shape == hi.shape == counts.shape
    assert r.stats.vm.web.vcpu0.exit_reasons.CPUID.cycles.mean == h.mean
    assert not any(k.endswith("buckets") for k in r.flat)
    with pytest.raises(KeyError):
        r.histogram("vm.web.vcpu0.exits")
    # The resolved configuration, the summary, the notes.
    assert r.config["platform"]["cores"] == 1 and r.config["vms"][0]["memory"] == "64MiB"
    assert "quantum" in r.config["platform"]  # defaults included
    assert "VM web" in r.summary
    assert r.notes == []


def test_progress_callback_reports_simulated_time(tiny_dict):
    tiny_dict["stop_when_done"] = False
    tiny_dict["duration"] = "1ms"
    seen = []
    r = vmxsim.run(tiny_dict, progress=lambda now, target: seen.append((now, target)),
                   progress_step="100us")
    assert len(seen) == 10
    assert [t for _, t in seen] == [pytest.approx(1e-3)] * 10
    assert [n for n, _ in seen] == pytest.approx([i * 1e-4 for i in range(1, 11)])
    # Running in steps changes nothing.
    assert statistics(r.stats_json) == statistics(vmxsim.run(tiny_dict).stats_json)


def test_ctrl_c_stops_the_simulation_cleanly(tiny_dict):
    tiny_dict["stop_when_done"] = False
    sim = vmxsim.Simulation(tiny_dict)
    proc = sim._proc

    def interrupt(now, target):
        if now >= 2e-4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sim.run(progress=interrupt)
    assert proc.poll() is not None  # the simulation process has gone
    with pytest.raises(RuntimeError, match="closed"):
        sim.stats()
    # ... and the next run works.
    assert vmxsim.run(tiny_dict).finished


def test_sigint_from_a_terminal_stops_parent_and_simulation(tmp_path):
    import os
    import signal
    import sys

    from conftest import python_env
    script = tmp_path / "long.py"
    script.write_text(
        "import sys, vmxsim\n"
        "cfg = {'duration': '10s', 'stop_when_done': False, 'platform': {'cores': 1, 'memory': '256MiB'},\n"
        "       'vms': [{'name': 'a', 'memory': '64MiB',\n"
        "                'workloads': [{'type': 'cpuid_loop', 'iterations': 10**9}]}]}\n"
        "sim = vmxsim.Simulation(cfg)\n"
        "print(sim._proc.pid, flush=True)\n"
        "sim.run(progress=lambda now, target: print(now, flush=True), progress_step='20us')\n")
    # A new session stands for the terminal: Ctrl-C signals its whole process group.
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=python_env(), start_new_session=True, text=True)
    worker = int(p.stdout.readline())
    assert float(p.stdout.readline()) > 0  # simulating
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode != 0 and "KeyboardInterrupt" in err
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)  # the simulation process is gone (and reaped)


def test_event_trace_in_the_result_and_saved_like_the_command_line(tiny_yaml, tmp_path):
    r = vmxsim.run(tiny_yaml, overrides={"event_trace.enabled": True, "event_trace.categories": "exits"})
    events = r.events["traceEvents"]
    cpuid = [e for e in events if e.get("ph") == "X" and e["name"] == "CPUID"]
    assert len(cpuid) == r.flat["vm.web.vcpu0.exit_reasons.CPUID.cycles.count"] == 300
    r.save(tmp_path / "py")
    out = tmp_path / "cli"
    subprocess.run([str(CLI), "run", str(tiny_yaml), "--set", "event_trace.enabled=true", "--set",
                    "event_trace.categories=exits", "--out", str(out)], check=True, capture_output=True)
    py_trace, cli_trace = (json.loads((d / "events.json").read_text()) for d in (tmp_path / "py", out))
    # The same events; the provenance (command, date) is the runs' own.
    assert py_trace["otherData"].pop("provenance")["commit"] == cli_trace["otherData"].pop("provenance")["commit"]
    assert py_trace == cli_trace
    # Off (the default): no trace.
    plain = vmxsim.run(tiny_yaml)
    assert plain.events_json is None and plain.events is None


def test_series_in_the_result_and_plotted(tiny_dict, tmp_path):
    # series.interval samples statistics over time (docs/memory.md, "Memory
    # over time"): Result.series, not among the statistics; statistics
    # unchanged by the sampling; ./vmxsim plot draws it.
    plain = vmxsim.run(tiny_dict, overrides={"stop_when_done": False})
    r = vmxsim.run(tiny_dict, overrides={"stop_when_done": False, "series.interval": "1ms",
                                         "series.stats": "vm.*.resident_pages,hypervisor.frames.frames_used"})
    assert r.flat == plain.flat
    assert len(r.series["time_ps"]) == 6  # 0 to 5 ms
    s = r.series
    assert s["interval_ps"] == 10**9
    assert s["time_ps"][:2] == [0, 10**9]
    used = s["stats"]["hypervisor.frames.frames_used"]
    resident = s["stats"]["vm.web.resident_pages"]
    assert len(used) == len(resident) == len(s["time_ps"])
    assert resident[0] == 0 and max(resident) > 0
    r.save(tmp_path / "run")
    from vmxsim.plot import plot_series
    target = plot_series(str(tmp_path / "run"))
    assert (tmp_path / "run" / "series.png").exists() and target.endswith("series.png")
