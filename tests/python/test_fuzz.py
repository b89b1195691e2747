"""The Python entry points under random documents: vmxsim.resolve (the same
validation vmxsim.run does before it starts a simulation process) with
mutated dicts and overrides must either accept the document or raise
ConfigError / ValueError; never another exception, a crash or a hang.
scripts/fuzz runs longer campaigns (VMXSIM_FUZZ_ITERATIONS)."""

import copy
import os
import random

import vmxsim
from conftest import TINY_DICT

ITERATIONS = int(os.environ.get("VMXSIM_FUZZ_ITERATIONS", "3000"))
SEED = int(os.environ.get("VMXSIM_FUZZ_SEED", "1"))

VALUES = [0, 1, -1, 2, 7, 64, 255, 4096, 2**32, 2**64, -(2**63), 1.5, float("nan"), float("inf"), True, False,
          None, "", "x", "0", "1ps", "1ms", "10ms", "1s", "4KiB", "2MiB", "1GiB", "5TiB", "3GHz", "ept", "shadow",
          "vf", "none", "emulated", "lazy", "proportional", "web\udc80", "\x00", "é", [], {}, [1, "a"], {"a": 1},
          {"type": "stream"}, {"type": "trace"}, (1, 2), b"bytes", object()]
KEYS = ["seed", "duration", "warmup", "platform", "cores", "memory", "vms", "vcpus", "name", "workloads", "type",
        "iterations", "nic", "hypervisor", "ept_page_size", "paging", "pin", "event_trace", "enabled", "weight", "cap",
        "bogus", 3, None, ("t",), "web\udc80"]


def _containers(node, out):
    if isinstance(node, dict):
        out.append(node)
        for v in list(node.values()):
            _containers(v, out)
    elif isinstance(node, list):
        out.append(node)
        for v in node:
            _containers(v, out)
    return out


def _mutate(rng, doc):
    for _ in range(rng.randint(1, 4)):
        target = rng.choice(_containers(doc, []))
        op = rng.random()
        if isinstance(target, dict):
            if target and op < 0.5:
                k = rng.choice(list(target))
                target[k] = copy.deepcopy(rng.choice(VALUES)) if op < 0.35 else target[k]
                if op >= 0.35:
                    del target[k]
            else:
                target[rng.choice(KEYS)] = copy.deepcopy(rng.choice(VALUES))
        else:
            if target and op < 0.4:
                target[rng.randrange(len(target))] = copy.deepcopy(rng.choice(VALUES))
            elif target and op < 0.6:
                target.append(copy.deepcopy(target[0]))
            else:
                target.append(copy.deepcopy(rng.choice(VALUES)))
    if rng.random() < 0.02:
        doc["platform"] = doc  # a document that contains itself
    return doc


def test_random_documents_give_config_errors_not_crashes():
    rng = random.Random(SEED)
    accepted = rejected = 0
    for i in range(ITERATIONS):
        doc = _mutate(rng, copy.deepcopy(TINY_DICT))
        overrides = [f"{rng.choice(['vms[0].vcpus', 'platform.cores', 'duration', 'vms[1].name'])}="
                     f"{rng.choice(['2', '0', '-1', 'x', '1ms', '[]', '{a: 1}', ''])}"] if rng.random() < 0.2 else None
        try:
            vmxsim.resolve(doc, overrides)
            accepted += 1
        except (vmxsim.ConfigError, ValueError):
            rejected += 1
        except Exception as e:  # noqa: BLE001 - the finding
            raise AssertionError(f"iteration {i} (seed {SEED}): {type(e).__name__}: {e}\n{doc!r}") from e
    assert accepted + rejected == ITERATIONS
    assert rejected > 0  # the mutations reach the validation
