"""Sweeps: points in parallel processes, results.csv, resume, failures."""

import csv
import json
import os
import signal
import subprocess
import sys

import pytest

import vmxsim
from conftest import TINY_YAML, python_env
from vmxsim.sweep import Sweep

SWEEP_BLOCK = """\
sweep:
  mode: product
  parameters:
    platform.frequency: [2GHz, 3GHz]
    vms[0].workloads[0].iterations: [100, 200, 300]
  collect:
    - vm.web.vcpu0.exits
    - vm.web.vcpu0.exit_reasons.CPUID.cycles.count
    - sim.seconds
"""


@pytest.fixture
def sweep_yaml(tmp_path):
    p = tmp_path / "sweep.yaml"
    p.write_text(TINY_YAML + SWEEP_BLOCK)
    return p


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_six_point_sweep_gives_six_rows(sweep_yaml, tmp_path):
    out = tmp_path / "out"
    res = vmxsim.run_sweep(sweep_yaml, out, jobs=2)
    assert (res.ran, res.skipped, res.failed) == (6, 0, 0)
    rows = read_csv(out / "results.csv")
    assert len(rows) == 6
    assert list(rows[0]) == ["point", "platform.frequency", "vms[0].workloads[0].iterations", "vm.web.vcpu0.exits",
                             "vm.web.vcpu0.exit_reasons.CPUID.cycles.count", "sim.seconds", "status", "error", "dir",
                             "vmxsim_version", "vmxsim_commit"]
    assert [(r["platform.frequency"], r["vms[0].workloads[0].iterations"]) for r in rows] == [
        ("2GHz", "100"), ("2GHz", "200"), ("2GHz", "300"), ("3GHz", "100"), ("3GHz", "200"), ("3GHz", "300")]
    assert [r["vm.web.vcpu0.exit_reasons.CPUID.cycles.count"] for r in rows] == ["100", "200", "300"] * 2
    assert all(r["status"] == "ok" and r["error"] == "" for r in rows)
    # Each point: its own directory, and the same numbers as a single run.
    d = out / rows[4]["dir"]
    assert sorted(os.listdir(d)) == ["config.yaml", "done", "point.json", "stats.json", "summary.txt", "units.json"]
    single = vmxsim.run(TINY_YAML, overrides=["platform.frequency=3GHz", "vms[0].workloads[0].iterations=200"])
    point = json.loads((d / "stats.json").read_text())
    whole = json.loads(single.stats_json)
    # The same statistics; the provenance differs only in its command and date.
    assert point.pop("provenance")["commit"] == whole.pop("provenance")["commit"] == rows[4]["vmxsim_commit"]
    assert point == whole
    assert res.result(4).flat == single.flat


def test_interrupted_sweep_resumes_without_redoing_points(sweep_yaml, tmp_path):
    out = tmp_path / "out"
    done = []

    def stop_after_three(point, status):
        done.append(point.index)
        if len(done) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        vmxsim.run_sweep(sweep_yaml, out, jobs=1, on_point=stop_after_three)
    rows = read_csv(out / "results.csv")  # written for what was done
    assert [r["status"] for r in rows].count("ok") == 3
    assert [r["status"] for r in rows].count("pending") == 3
    stamps = {r["dir"]: os.stat(out / r["dir"] / "stats.json").st_mtime_ns for r in rows if r["status"] == "ok"}

    ran = []
    res = vmxsim.run_sweep(sweep_yaml, out, jobs=2, on_point=lambda p, s: ran.append(p.index))
    assert (res.ran, res.skipped, res.failed) == (3, 3, 0)
    assert sorted(ran + done) == list(range(6))
    for d, stamp in stamps.items():
        assert os.stat(out / d / "stats.json").st_mtime_ns == stamp
    assert [r["status"] for r in read_csv(out / "results.csv")] == ["ok"] * 6


def test_points_of_another_simulator_build_are_run_again(sweep_yaml, tmp_path):
    out = tmp_path / "out"
    first = vmxsim.run_sweep(sweep_yaml, out, jobs=2)
    assert first.ran == 6
    rows = read_csv(out / "results.csv")
    # Pretend two points were computed by an older simulator.
    for r in rows[:2]:
        (out / r["dir"] / "done").write_text("vmxsim 0.0.1 0123456789abcdef\n")
    again = vmxsim.run_sweep(sweep_yaml, out, jobs=2)
    assert (again.ran, again.skipped, again.failed) == (2, 4, 0)
    assert all(r["vmxsim_commit"] == vmxsim.build_info["commit"] for r in read_csv(out / "results.csv"))


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_on_the_command_line_then_resume(sweep_yaml, tmp_path, py_cmd, how):
    out = tmp_path / "out"
    cmd = py_cmd + ["sweep", str(sweep_yaml), "-j", "1", "--out", str(out)]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=python_env(), start_new_session=True)
    for line in p.stderr:
        if line.startswith("[1/6]"):
            # Ctrl-C reaches the whole process group; SIGTERM (a batch
            # system's kill) only the sweep, which stops its workers itself.
            if how == signal.SIGINT:
                os.killpg(p.pid, how)
            else:
                p.send_signal(how)
            break
    err = p.stderr.read()
    assert p.wait(timeout=60) == (130 if how == signal.SIGINT else 143), err
    assert [r["status"] for r in read_csv(out / "results.csv")].count("pending") >= 1
    assert ("interrupted" if how == signal.SIGINT else "terminated") in err
    finished = [r for r in read_csv(out / "results.csv") if r["status"] == "ok"]
    assert 1 <= len(finished) < 6
    again = subprocess.run(cmd, capture_output=True, text=True, env=python_env())
    assert again.returncode == 0
    assert f"{len(finished)} of 6 points already done" in again.stderr
    assert f"{6 - len(finished)} ran, {len(finished)} already done, 0 failed" in again.stderr


def test_failing_point_is_reported_and_the_rest_complete(tmp_path):
    config = tmp_path / "fail.yaml"
    config.write_text(TINY_YAML + "sweep:\n  mode: zip\n  parameters:\n    vms[0].vcpus: [1, 0, 1]\n"
                      "    seed: [1, 2, 3]\n  collect: [vm.web.vcpu0.exits]\n")
    out = tmp_path / "out"
    res = vmxsim.run_sweep(config, out, jobs=2)
    assert (res.ran, res.failed) == (2, 1)
    rows = read_csv(out / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["error"] == "--set vms[0].vcpus: must be at least 1 (got 0)"
    assert rows[1]["vm.web.vcpu0.exits"] == "" and rows[1]["dir"] == ""
    assert int(rows[0]["vm.web.vcpu0.exits"]) > 0 and int(rows[2]["vm.web.vcpu0.exits"]) > 0
    cli = subprocess.run([sys.executable, "-m", "vmxsim", "sweep", str(config), "--out", str(out)],
                         capture_output=True, text=True, env=python_env())
    assert cli.returncode == 1  # something failed
    assert "config error: --set vms[0].vcpus: must be at least 1 (got 0)" in cli.stderr


def test_sweep_from_python_and_zip_mode(tmp_path, tiny_dict):
    sweep = Sweep(tiny_dict, {"vms[0].workloads[0].iterations": [50, 150], "platform.frequency": ["2GHz", "3GHz"]},
                  mode="zip", collect=["vm.web.vcpu0.exit_reasons.CPUID.cycles.count"])
    assert [p.params for p in sweep.points()] == [
        {"vms[0].workloads[0].iterations": "50", "platform.frequency": "2GHz"},
        {"vms[0].workloads[0].iterations": "150", "platform.frequency": "3GHz"}]
    res = sweep.run(tmp_path / "out")
    assert [r["vm.web.vcpu0.exit_reasons.CPUID.cycles.count"] for r in res.rows] == [50, 150]
    # A dict with a sweep: block works as a file does.
    vmxsim.run_sweep(dict(tiny_dict, sweep={"mode": "zip", "parameters": {
        "vms[0].workloads[0].iterations": [50, 150], "platform.frequency": ["2GHz", "3GHz"]},
        "collect": ["vm.web.vcpu0.exit_reasons.CPUID.cycles.count"]}), tmp_path / "out2")
    assert (tmp_path / "out" / "results.csv").read_text() == (tmp_path / "out2" / "results.csv").read_text()


def test_sweep_block_errors_point_at_their_lines(tmp_path):
    lines = TINY_YAML.count("\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_YAML + "sweep:\n  parameters:\n    seed: 3\n")
    with pytest.raises(vmxsim.ConfigError) as e:
        Sweep.load(bad)
    assert str(e.value) == f"{bad}:{lines + 3}: sweep.parameters.seed: expected a non-empty list of values (got 3)"
    bad.write_text(TINY_YAML + "sweep:\n  parameters: {seed: [1, 2]}\n  mdoe: zip\n")
    with pytest.raises(vmxsim.ConfigError, match=r":%d: sweep: unknown key 'mdoe'" % (lines + 3)):
        Sweep.load(bad)
    bad.write_text(TINY_YAML + "sweep:\n  mode: zip\n  parameters:\n    seed: [1, 2]\n    vms[0].vcpus: [1]\n")
    with pytest.raises(vmxsim.ConfigError, match="expected lists of the same length in zip mode"):
        Sweep.load(bad).points()
    bad.write_text(TINY_YAML + "sweep:\n  parameters: {seed: [1, 2]\n")
    with pytest.raises(vmxsim.ConfigError, match=r"^%s:\d+: invalid YAML" % bad):
        Sweep.load(bad)
    # The rest of the file keeps its line numbers once the block is taken out.
    bad.write_text("sweep:\n  parameters: {seed: [1, 2]}\n" + TINY_YAML.replace("cores: 1", "cores: 0"))
    p = Sweep.load(bad).points()[0]
    assert p.error == f"{bad}:6: platform.cores: must be at least 1 (got 0)"


def test_plot_writes_png_and_pdf(sweep_yaml, tmp_path, py_cmd):
    out = tmp_path / "out"
    vmxsim.run_sweep(sweep_yaml, out, jobs=2)
    files = vmxsim.plot_sweep(out)
    assert [os.path.basename(f) for f in files] == [
        "vm.web.vcpu0.exits.png", "vm.web.vcpu0.exit_reasons.CPUID.cycles.count.png", "sim.seconds.png"]
    for f in files:
        assert open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    pdf = tmp_path / "exits.pdf"
    cli = subprocess.run(py_cmd + ["plot", str(out), "-y", "sim.seconds", "-x", "vms[0].workloads[0].iterations",
                                   "--by", "platform.frequency", "-o", str(pdf)],
                         capture_output=True, text=True, env=python_env())
    assert cli.returncode == 0, cli.stderr
    assert pdf.read_bytes()[:5] == b"%PDF-"
