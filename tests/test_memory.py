"""keep_freed_memory: a second large step reuses the first step's memory instead of faulting it back in."""

import json
import os
import subprocess
import sys

import pytest

from clebsch._memory import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt is needed (Linux with glibc)")

STEP = """
import json, resource, sys
import torch
import clebsch
on = {call}

def step():  # a model step in miniature: tensors of 64 to 128 MB made, used and freed
    x = torch.ones(16 * 2**20)
    y = torch.sin(x)
    z = torch.cat([x, y])
    return float((z * 2).sum())

faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"on": on, "faults": faults}}))
"""


def _run(call: str, env=None) -> dict:
    out = subprocess.run([sys.executable, "-c", STEP.format(call=call)], capture_output=True, text=True, check=True,
                         env=dict(os.environ, **(env or {})))
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_step_reuses_memory():
    default = _run("None")
    kept = _run("clebsch.keep_freed_memory()")
    assert kept["on"] is True
    # 384 MB a step: by default every step faults its 98,304 pages back in; kept, the heap settles within a
    # few steps (glibc's aligned blocks need a little more than a freed block of the same size) and then
    # the steps fault (almost) nothing
    assert min(default["faults"]) > 90_000
    assert max(kept["faults"][-4:]) < 1_000


def test_environment_opts_out():
    res = _run("clebsch.keep_freed_memory()", env={"CLEBSCH_KEEP_FREED_MEMORY": "0"})
    assert res["on"] is False
    assert min(res["faults"][-4:]) > 90_000


def test_disable_restores_defaults():
    res = _run("(clebsch.keep_freed_memory(), clebsch.keep_freed_memory(False))[1]")
    assert res["on"] is False
    assert min(res["faults"][-4:]) > 90_000


def test_calculator_switches_it_on():
    code = ("import clebsch, clebsch._memory as m\n"
            "from clebsch.models import build_model\n"
            "from clebsch.calculators import ClebschCalculator\n"
            "ClebschCalculator(build_model({'name': 'schnet', 'species': ['H'], 'cutoff': 3.0}))\n"
            "print(m._state['on'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"
