"""Shared fixtures of the Python tests. They run under Debian's
/usr/bin/python3 with PYTHONPATH=<build>/python (tests/CMakeLists.txt)."""

import json
import os
import sys
from pathlib import Path

import pytest

import vmxsim

REPO = Path(__file__).resolve().parents[2]
# build/python/vmxsim/__init__.py -> build/
BUILD = Path(vmxsim.__file__).parent.parent.parent
CLI = BUILD / "bin" / "vmxsim"

# A tiny experiment: one core, one vCPU, a few hundred CPUID exits; it ends
# (all work done) after about 2 ms of simulated time and 0.1 s of host time.
TINY_YAML = """\
seed: 7
duration: 5ms
platform:
  cores: 1
  memory: 256MiB
vms:
  - name: web
    vcpus: 1
    memory: 64MiB
    workloads:
      - type: cpuid_loop
        iterations: 300
"""

TINY_DICT = {
    "seed": 7,
    "duration": "5ms",
    "platform": {"cores": 1, "memory": "256MiB"},
    "vms": [{"name": "web", "vcpus": 1, "memory": "64MiB",
             "workloads": [{"type": "cpuid_loop", "iterations": 300}]}],
}


@pytest.fixture
def tiny_yaml(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY_YAML)
    return p


@pytest.fixture
def tiny_dict():
    import copy
    return copy.deepcopy(TINY_DICT)


def python_env():
    """Environment for a child /usr/bin/python3 that imports vmxsim."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BUILD / "python"), env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture
def py_cmd():
    return [sys.executable, "-m", "vmxsim"]


def statistics(stats_json):
    """A stats.json's statistics: the document without its provenance (which
    names the command, host and date of the run)."""
    tree = json.loads(stats_json)
    tree.pop("provenance", None)
    return tree
