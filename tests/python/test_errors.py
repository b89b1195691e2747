"""Configuration errors raise vmxsim.ConfigError with the CLI's message."""

import subprocess

import pytest

import vmxsim
from conftest import CLI


def test_dict_error_message_is_exact(tiny_dict):
    tiny_dict["vms"][0]["vcpus"] = 0
    with pytest.raises(vmxsim.ConfigError) as e:
        vmxsim.run(tiny_dict)
    assert str(e.value) == "dict: vms[0].vcpus: must be at least 1 (got 0)"
    assert isinstance(e.value, ValueError)
    assert (e.value.file, e.value.line, e.value.path, e.value.expected, e.value.found) == (
        "dict", 0, "vms[0].vcpus", "must be at least 1", "0")


def test_file_error_matches_the_command_line(tmp_path, tiny_yaml):
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_yaml.read_text().replace("cores: 1", "cores: 0"))
    with pytest.raises(vmxsim.ConfigError) as e:
        vmxsim.run(bad)
    assert str(e.value) == f"{bad}:4: platform.cores: must be at least 1 (got 0)"
    cli = subprocess.run([str(CLI), "run", str(bad)], capture_output=True, text=True)
    assert cli.returncode == 2
    assert cli.stderr.strip() == f"vmxsim: config error: {e.value}"


def test_unknown_key_and_override_errors(tiny_dict):
    tiny_dict["platform"]["coers"] = 2
    with pytest.raises(vmxsim.ConfigError, match=r"^dict: platform: unknown key 'coers' \(expected one of: "):
        vmxsim.run(tiny_dict)
    del tiny_dict["platform"]["coers"]
    with pytest.raises(vmxsim.ConfigError) as e:
        vmxsim.run(tiny_dict, overrides={"vms[0].vcpus": 0})
    assert str(e.value) == "--set vms[0].vcpus: must be at least 1 (got 0)"
    with pytest.raises(vmxsim.ConfigError, match=r"^--set: expected path=value"):
        vmxsim.Simulation(tiny_dict, overrides=["vms[0].vcpus"])


def test_values_a_yaml_file_cannot_hold(tiny_dict):
    tiny_dict["platform"]["cores"] = object()
    with pytest.raises(vmxsim.ConfigError) as e:
        vmxsim.run(tiny_dict)
    assert str(e.value) == ("dict: platform.cores: expected a string, number, bool, None, list or dict "
                            "(got a object)")


def test_numpy_and_python_scalars_convert(tiny_dict):
    import numpy as np
    tiny_dict["vms"][0]["workloads"][0]["iterations"] = np.int64(300)
    tiny_dict["stop_when_done"] = True
    tiny_dict["platform"]["cpu"] = {"cpi": 1.0}
    assert vmxsim.resolve(tiny_dict) == vmxsim.resolve(tiny_dict | {"stop_when_done": "true"})


def test_missing_file(tmp_path):
    with pytest.raises(vmxsim.ConfigError, match=r"nope\.yaml: cannot read file: No such file"):
        vmxsim.run(tmp_path / "nope.yaml")


def test_hostile_dicts_are_config_errors_not_crashes(tiny_dict):
    # A dict that contains itself, and absurd nesting: refused with the path.
    tiny_dict["platform"]["loop"] = tiny_dict
    with pytest.raises(vmxsim.ConfigError, match=r"nested at most 64 levels deep"):
        vmxsim.resolve(tiny_dict)
    del tiny_dict["platform"]["loop"]
    deep = []
    for _ in range(10_000):
        deep = [deep]
    tiny_dict["vms"][0]["pin"] = deep
    with pytest.raises(vmxsim.ConfigError, match=r"^dict: vms\[0\]\.pin(\[0\])+: expected dicts and lists nested"):
        vmxsim.resolve(tiny_dict)
    del tiny_dict["vms"][0]["pin"]
    # Keys that are not strings, and text that is not valid Unicode.
    tiny_dict["platform"][3] = 1
    with pytest.raises(vmxsim.ConfigError, match=r"^dict: platform: expected string keys \(got 3\)"):
        vmxsim.resolve(tiny_dict)
    del tiny_dict["platform"][3]
    tiny_dict["vms"][0]["name"] = "web\udc80"
    with pytest.raises(vmxsim.ConfigError, match=r"^dict: vms\[0\]\.name: expected text encodable as UTF-8"):
        vmxsim.resolve(tiny_dict)


@pytest.mark.parametrize("step", [0, "0ps", "1ps"])
def test_a_progress_step_too_small_is_refused_before_running(tiny_dict, step):
    with vmxsim.Simulation(tiny_dict) as sim:
        with pytest.raises(ValueError, match=r"^progress_step: must be at least"):
            sim.run(progress=lambda now, end: None, progress_step=step)
        assert sim.now_s == 0
