"""Equiformer speed: clebsch's Equiformer against the ``equiformer-pytorch`` package.

One input, float32: a batch of ethanol frames (default 16 from ../shared/data/ethanol/train.xyz, else
examples/ethanol_xtb.xyz), cutoff 4 Å. Two steps per model: *train* (energy, forces by autograd with
``create_graph``, an energy + forces loss, backward) and *infer* (energy + forces). Sizes matched
where the two have the same knob: 2 blocks, 16 copies of each of ``0e, 1o, 2e`` (the package: 16
channels per degree 0, 1, 2), 4 heads, MLP attention, radial MLPs 32 wide. The package is a dense
transformer over each molecule's atoms, the pairs further than the cutoff masked out: the same edges,
but it pays for all pairs.

The package runs in its own virtual environment, called as a worker on a saved copy of the inputs;
by default ``~/.cache/clebsch-bench/equiformer`` (``$CLEBSCH_BENCH_DIR``), made with::

    python -m venv ~/.cache/clebsch-bench/equiformer
    ~/.cache/clebsch-bench/equiformer/bin/pip install torch==2.13.0 equiformer-pytorch==0.5.4

or ``--reference-python`` (``$CLEBSCH_EQUIFORMER_PYTHON``). Without it only clebsch's figures are printed.
Prints milliseconds per step and the ratio reference / clebsch (> 1: clebsch is faster)::

    OMP_NUM_THREADS=1 python benchmarks/equiformer_reference.py [--frames 16] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve()
DATA = HERE.parents[2] / "shared" / "data" / "ethanol" / "train.xyz"
FALLBACK = HERE.parents[1] / "examples" / "ethanol_xtb.xyz"
CUTOFF = 4.0
SPECIES = [1, 6, 8]
CONFIG = {"num_layers": 2, "channels": 16, "lmax": 2, "parity": False, "num_heads": 4, "attention": "mlp"}


def best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def time_steps(energy_fn, positions, params, repeats: int) -> dict:
    """``energy_fn(positions) -> energy [B]``: seconds per train and per infer step."""
    opt = torch.optim.SGD(params, lr=1e-9)
    torch.manual_seed(1)
    energy_ref, forces_ref = torch.randn(energy_fn(positions).shape[0]), torch.randn(positions.shape)

    def train():
        opt.zero_grad()
        pos = positions.detach().requires_grad_(True)
        energy = energy_fn(pos)
        forces = -torch.autograd.grad(energy.sum(), pos, create_graph=True)[0]
        (((energy - energy_ref) ** 2).mean() + ((forces - forces_ref) ** 2).mean()).backward()
        opt.step()

    def infer():
        pos = positions.detach().requires_grad_(True)
        torch.autograd.grad(energy_fn(pos).sum(), pos)

    return {"train": best_time(train, repeats), "infer": best_time(infer, repeats)}


def read_frames(frames: int) -> list:
    import ase.io

    path = DATA if DATA.exists() else FALLBACK
    return ase.io.read(path, index=f":{frames}")


def run_clebsch(frames: list, repeats: int) -> dict:
    from clebsch.graph import AtomicGraph, batch
    from clebsch.models import build_model

    g = batch([AtomicGraph.from_ase(a, cutoff=CUTOFF, dtype=torch.float32) for a in frames])
    torch.manual_seed(0)
    model = build_model({"name": "equiformer", "species": SPECIES, "cutoff": CUTOFF, **CONFIG}).float()
    species = model.species_index(g.numbers)
    sender, receiver = g.edge_index

    def energy_fn(pos):
        features = model.representation(species, g.edge_index, pos[sender] - pos[receiver])
        return torch.zeros(g.num_graphs).index_add(0, g.batch, model.energy_head(features)[:, 0])

    return time_steps(energy_fn, g.positions.float(), list(model.parameters()), repeats)


def worker(inputs_file: str, repeats: int) -> dict:
    """In the reference environment: the package's Equiformer on the saved molecules ``[B, n]``."""
    from equiformer_pytorch import Equiformer

    data = torch.load(inputs_file)
    torch.manual_seed(0)
    model = Equiformer(num_tokens=len(SPECIES), dim=(16, 16, 16), dim_head=(4, 4, 4), heads=(4, 4, 4),
                       num_degrees=3, depth=2, attend_self=True, reduce_dim_out=True, valid_radius=CUTOFF,
                       radial_hidden_dim=32,
                       l2_dist_attention=False)
    tokens, mask = data["tokens"], torch.ones(data["tokens"].shape, dtype=torch.bool)

    def energy_fn(pos):
        return model(tokens, pos, mask).type0.sum(-1)

    return time_steps(energy_fn, data["positions"], list(model.parameters()), repeats)


def reference_python(given: str | None) -> str | None:
    if given:
        return given
    if os.environ.get("CLEBSCH_EQUIFORMER_PYTHON"):
        return os.environ["CLEBSCH_EQUIFORMER_PYTHON"]
    base = Path(os.environ.get("CLEBSCH_BENCH_DIR", Path.home() / ".cache" / "clebsch-bench"))
    python = base / "equiformer" / "bin" / "python"
    return str(python) if python.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference-python", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats)))
        return

    frames = read_frames(args.frames)
    ours = run_clebsch(frames, args.repeats)
    print(f"clebsch equiformer, {len(frames)} ethanol frames: train {1e3 * ours['train']:.1f} ms, "
          f"infer {1e3 * ours['infer']:.1f} ms")
    python = reference_python(args.reference_python)
    if python is None:
        print("equiformer-pytorch not found (make ~/.cache/clebsch-bench/equiformer, or pass --reference-python): "
              "no comparison")
        return
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.pt"
        tokens = torch.tensor([[SPECIES.index(int(z)) for z in a.numbers] for a in frames])
        positions = torch.tensor(np.array([a.positions for a in frames]), dtype=torch.float32)
        torch.save({"tokens": tokens, "positions": positions}, inputs)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run([python, str(HERE), "--worker", str(inputs), "--repeats", str(args.repeats),
                               "--threads", str(args.threads)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"equiformer-pytorch failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return
    ref = json.loads(proc.stdout.strip().splitlines()[-1])
    for step in ("train", "infer"):
        print(f"{step}: clebsch {1e3 * ours[step]:.1f} ms, equiformer-pytorch {1e3 * ref[step]:.1f} ms, "
              f"ratio {ref[step] / ours[step]:.2f}")


if __name__ == "__main__":
    main()
