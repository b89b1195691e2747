"""The same sweep on a Dask cluster: a scheduler and two worker processes
started here, on loopback only."""

import pytest

import vmxsim
from test_sweep import SWEEP_BLOCK  # noqa: F401 - the same 6-point sweep
from conftest import TINY_YAML, statistics

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_dask_sweep_writes_the_same_csv_as_a_local_one(tmp_path):
    config = tmp_path / "sweep.yaml"
    # One point fails, to compare error rows too.
    config.write_text(TINY_YAML + SWEEP_BLOCK.replace("[100, 200, 300]", "[100, 200, -1]"))
    local = vmxsim.run_sweep(config, tmp_path / "local", jobs=2)
    assert (local.ran, local.failed) == (4, 2)
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        remote = vmxsim.run_sweep(config, tmp_path / "dask", scheduler=cluster.scheduler_address)
        assert (remote.ran, remote.failed) == (4, 2)
    csv_local = (tmp_path / "local" / "results.csv").read_text()
    assert (tmp_path / "dask" / "results.csv").read_text() == csv_local
    assert csv_local.count("\n") == 7
    for row in local.rows:
        if row["status"] == "ok":
            d = row["dir"]
            assert statistics((tmp_path / "dask" / d / "stats.json").read_text()) == \
                statistics((tmp_path / "local" / d / "stats.json").read_text())
