"""Simulation.migrate: a live migration started from Python between steps
(docs/migration.md, "Triggers")."""

import pytest

import vmxsim
from conftest import REPO

S8 = REPO / "configs" / "scenarios" / "s8_converge.yaml"
OUT = "host.a.vm.web.migration."
IN = "host.b.vm.web.migration_in."


def s8_without_migration():
    """S8 converging (90 ms), its migration left to the caller."""
    return {"migrations": []}


def test_migrate_between_steps_moves_the_vm():
    with vmxsim.Simulation(S8, s8_without_migration()) as sim:
        sim.run(until="5ms")
        before = sim.stats().flat
        assert OUT + "rounds" not in before  # nothing started by the config
        sim.migrate(vm="web", to="b", tracking="pml", max_bandwidth="100MiB", downtime_limit="1ms")
        sim.run()
        s = sim.stats().flat
    assert s[IN + "resumed"] == 1
    assert s[IN + "lost_frames"] == 0
    assert s["migration_check.web.mismatched"] == 0
    assert s[OUT + "rounds"] >= 2 and s[OUT + "converged"] == 1
    # The guest ran on at the destination after the move.
    assert s["host.b.vm.web.vcpu0.instructions"] > 1e6
    # Started at 5 ms (the experiment's record of it), done before the end.
    assert s["migration_trigger.web.fired_ns"] == 5e6
    assert 0 < s[IN + "total_ns"] < 85e6


def test_migrate_options_are_validated_like_the_config():
    with vmxsim.Simulation(S8, s8_without_migration()) as sim:
        sim.run(until="1ms")
        with pytest.raises(vmxsim.ConfigError, match=r"migrations\[0\]\.tracking"):
            sim.migrate(vm="web", to="b", tracking="magic")
        with pytest.raises(vmxsim.ConfigError, match=r"migrations\[0\]\.to"):
            sim.migrate(vm="web", to="a")
        sim.migrate(vm="web", to="b", max_bandwidth="100MiB", downtime_limit="1ms")
        # The same VM cannot be moved twice.
        with pytest.raises(vmxsim.ConfigError, match=r"migrations\[1\]\.vm"):
            sim.migrate(vm="web", to="b")
