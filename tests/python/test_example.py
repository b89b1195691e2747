"""examples/quickstart.py runs unchanged, as a newcomer would run it."""

import subprocess
import sys

from conftest import REPO, python_env


def test_quickstart_example_runs(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "examples" / "quickstart.py")], cwd=tmp_path,
                       capture_output=True, text=True, env=python_env(), timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ConfigError: --set vms[0].vcpus: must be at least 1 (got 0)" in p.stdout
    assert "6 points: 6 ran" in p.stdout
    assert (tmp_path / "out/examples/quickstart/sweep/results.csv").exists()
    assert (tmp_path / "out/examples/quickstart/sweep/plots/sim.seconds.png").exists()
