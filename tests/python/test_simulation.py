"""vmxsim.Simulation: stepwise runs in one long-lived simulation process."""

import pytest

import vmxsim
from conftest import statistics

# Counters, which add up across a reset (gauges, ratios and percentiles do not).
COUNTERS = [
    "vm.web.vcpu0.exits",
    "vm.web.vcpu0.instructions",
    "vm.web.vcpu0.guest_cycles",
    "vm.web.vcpu0.walks",
    "vm.web.vcpu0.exit_reasons.CPUID.cycles.count",
    "vm.web.vcpu0.exit_reasons.CPUID.cycles.sum",
    "vm.web.vcpu0.exit_reasons.EPT_VIOLATION.cycles.count",
    "vm.web.vcpu0.walk_latency.count",
    "vm.web.vcpu0.walk_latency.sum",
    "system.cpu0.instructions",
    "system.cpu0.vm_exits",
    "system.cpu0.walker.refs",
    "system.llc.accesses",
]


def test_stepwise_with_reset_gives_the_totals_of_one_run(tiny_dict):
    whole = vmxsim.run(tiny_dict)
    with vmxsim.Simulation(tiny_dict) as sim:
        sim.run(for_="500us")
        assert sim.now_s == pytest.approx(5e-4) and not sim.finished
        first = sim.stats()
        sim.reset()
        assert sim.stats().flat["vm.web.vcpu0.exits"] == 0
        sim.run()  # on to the configured duration, or until the work is done
        second = sim.stats()
        assert sim.finished
    assert first.flat["vm.web.vcpu0.exits"] > 0 and second.flat["vm.web.vcpu0.exits"] > 0
    for name in COUNTERS:
        # Per-reason groups appear with their first exit, so may be absent early on.
        assert first.flat.get(name, 0) + second.flat[name] == whole.flat[name], name
    assert second.simulated_s == whole.simulated_s


def test_steps_without_reset_give_exactly_one_run(tiny_dict):
    whole = vmxsim.run(tiny_dict)
    with vmxsim.Simulation(tiny_dict) as sim:
        for t in ("100us", "700us", "1.3ms"):
            sim.run(until=t)
            assert sim.now_ps == vmxsim.parse_time(t)
        sim.run(for_=0.01)  # seconds
        assert statistics(sim.stats().stats_json) == statistics(whole.stats_json)


def test_without_stop_when_done_steps_run_on_to_the_duration_as_the_cli_does(tiny_dict):
    # The tiny run's work ends after about 2 ms; with stop_when_done false
    # simulated time goes on to the 5 ms duration, step by step too.
    tiny_dict["stop_when_done"] = False
    whole = vmxsim.run(tiny_dict)
    assert whole.simulated_s == pytest.approx(5e-3)
    seen = []
    with vmxsim.Simulation(tiny_dict) as sim:
        sim.run(progress=lambda now, target: seen.append(now), progress_step="500us")
        assert sim.finished and sim.now_s == pytest.approx(5e-3)
        assert statistics(sim.stats().stats_json) == statistics(whole.stats_json)
    assert seen == pytest.approx([i * 5e-4 for i in range(1, 11)])


def test_warmup_resets_statistics_as_the_cli_does(tiny_dict):
    tiny_dict["warmup"] = "1ms"
    whole = vmxsim.run(tiny_dict)
    with vmxsim.Simulation(tiny_dict) as sim:
        sim.run(until="600us")
        sim.run()
        assert statistics(sim.stats().stats_json) == statistics(whole.stats_json)
    tiny_dict["warmup"] = "0ps"
    assert whole.flat["vm.web.vcpu0.exits"] < vmxsim.run(tiny_dict).flat["vm.web.vcpu0.exits"]


def test_close_ends_the_process_and_gc_too(tiny_dict):
    sim = vmxsim.Simulation(tiny_dict)
    proc = sim._proc
    sim.close()
    assert proc.poll() is not None
    with pytest.raises(RuntimeError, match="closed"):
        sim.run()
    sim = vmxsim.Simulation(tiny_dict)
    proc = sim._proc
    del sim
    import gc
    gc.collect()
    assert proc.wait(timeout=10) == 0


def test_simulation_accepts_yaml_text_and_bad_times(tiny_yaml):
    with vmxsim.Simulation(tiny_yaml.read_text()) as sim:
        with pytest.raises(ValueError, match="expected a time"):
            sim.run(for_="10 parsecs")
        with pytest.raises(TypeError):
            sim.run(for_="1ms", until="2ms")
