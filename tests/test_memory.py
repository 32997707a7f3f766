"""keep_freed_memory: the next step reuses the large blocks the last one freed, and never holds more than its peak."""

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kept allocator is Linux only"),
    pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler to build it"),
]

STEPS = """
import json, random, resource
import torch
import clebsch
from clebsch._memory import SLACK_MIN_BYTES, SLACK_PERMILLE, memory_stats
on = {call}

def step(n):  # a model step in miniature: tensors of 4n bytes and more made, used and freed
    x = torch.ones(n)
    y = torch.sin(x)
    z = torch.cat([x, y])
    return float((z * 2).sum())

faults, bounded = [], True
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(16 * 2**20)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
random.seed(0)
work = 24 * 16 * 2**20  # bytes live at once in a step: x, y (4n each), z, 2z (8n each)
for _ in range(10):  # sizes that change every step, as the edges of an MD run
    n = random.randint(2**20, 20 * 2**20)
    work = max(work, 24 * n)
    step(n)
    s = memory_stats()
    bounded &= s["live"] + s["kept"] <= s["peak"] + max(s["peak"] * SLACK_PERMILLE / 1000, SLACK_MIN_BYTES)
print(json.dumps({{"on": on, "faults": faults, "bounded": bounded, "work": work, "stats": memory_stats()}}))
"""


def _run(call: str, env=None) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS.format(call=call)], capture_output=True, text=True, check=True,
                         env=dict(os.environ, **(env or {})))
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_next_step_reuses_freed_memory_within_the_peak():
    default = _run("None")
    kept = _run("clebsch.keep_freed_memory()")
    assert kept["on"] is True
    # 384 MB a step: by default every step faults its 98,304 pages back in; kept, only the first one does
    assert min(default["faults"]) > 90_000
    assert kept["faults"][0] > 90_000 and max(kept["faults"][1:]) < 1_000
    stats = kept["stats"]
    assert kept["bounded"] and stats["reuses"] > 3 * stats["maps"] > 0
    assert stats["peak"] <= kept["work"] + 4 * 4096  # never more than the largest step's own tensors


def test_environment_opts_out():
    res = _run("clebsch.keep_freed_memory()", env={"CLEBSCH_KEEP_FREED_MEMORY": "0"})
    assert res["on"] is False
    assert min(res["faults"]) > 90_000 and res["stats"]["maps"] == 0


def test_disable_restores_pytorchs_allocator():
    res = _run("(clebsch.keep_freed_memory(), clebsch.keep_freed_memory(False))[1]")
    assert res["on"] is False
    assert min(res["faults"]) > 90_000 and res["stats"]["maps"] == 0


def test_model_gives_the_same_numbers_and_the_calculator_switches_it_on():
    code = """
import json, torch, numpy as np, ase
import clebsch, clebsch._memory as m
from clebsch.models import build_model
from clebsch.calculators import ClebschCalculator
torch.manual_seed(0)
model = build_model({"name": "mace", "species": ["H", "O"], "cutoff": 4.0})
rng = np.random.default_rng(0)
atoms = ase.Atoms("OH2" * 40, positions=rng.uniform(0, 9, (120, 3)), cell=[9, 9, 9], pbc=True)
atoms.calc = ClebschCalculator(model, dtype="float64")
forces = [atoms.get_forces().tolist()]
atoms.positions += 0.01
forces.append(atoms.get_forces().tolist())
print(json.dumps({"on": m._state["on"], "forces": forces, "maps": m.memory_stats()["maps"]}))
"""
    runs = []
    for env in ({}, {"CLEBSCH_KEEP_FREED_MEMORY": "0"}):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=dict(os.environ, **env))
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    kept, plain = runs
    assert kept["on"] is True and kept["maps"] > 0 and plain["on"] is False
    assert kept["forces"] == plain["forces"]  # the allocator changes where tensors live, not what they hold


def test_without_a_compiler_nothing_changes_with_one_warning(tmp_path):
    code = """
import json, warnings
import clebsch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first, second = clebsch.keep_freed_memory(), clebsch.keep_freed_memory()
print(json.dumps({"on": [first, second], "warnings": [str(w.message) for w in caught]}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, CXX="no-such-compiler", CLEBSCH_CACHE_DIR=str(tmp_path)))
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["on"] == [False, False]
    assert len(res["warnings"]) == 1 and "no-such-compiler" in res["warnings"][0]


def test_a_block_freed_after_disabling_is_unmapped():
    code = """
import json, torch, clebsch
from clebsch._memory import memory_stats
clebsch.keep_freed_memory()
x = torch.ones(4 * 2**20)
clebsch.keep_freed_memory(False)
del x
print(json.dumps(memory_stats()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["live"] == 0 and stats["kept"] == 0 and stats["unmapped"] == 16 * 2**20


SMALL_BLOCKS = """
import json, resource
import torch
import clebsch
on = {call}
faults = []
for _ in range(5):  # a small molecule's step: tensors of 0.3-1.8 MB made and freed, some kept a while
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    total, held = torch.zeros(()), []
    for k in range(40):
        a = torch.randn(1144, 64 + (k % 5) * 32)
        b = a * 2
        total = total + torch.cat([a, b], 1).sum()
        held = [b] if k % 3 else []
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"on": on, "faults": faults}}))
"""


def test_small_steps_fault_no_memory_back_in():
    runs = {}
    for name, call in (("default", "None"), ("kept", "clebsch.keep_freed_memory()")):
        out = subprocess.run([sys.executable, "-c", SMALL_BLOCKS.format(call=call)], capture_output=True, text=True,
                             check=True)
        runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
    # glibc maps blocks from 128 KiB on and trims its heap's free top: steps fault thousands of pages back in
    # (how many varies from step to step as glibc moves its mmap threshold); kept (the blocks below 1 MB in
    # glibc's untrimmed heap, the larger ones within the allocator's slack), the steps after the first two fault
    # almost none
    assert max(runs["default"]["faults"][1:]) > 1_000
    assert runs["kept"]["on"] is True and max(runs["kept"]["faults"][2:]) < 300
