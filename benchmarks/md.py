"""MD steps per second with ClebschCalculator, against MACE's ASE calculator at matched size.

Systems: the bundled molecule (first frame of examples/ethanol_xtb.xyz, 9 atoms)
and a periodic fcc copper supercell (7x7x7 cubic cells, 1,372 atoms). Models:
NequIP and MACE at a small size (16 channels, l_max 2, hidden irreps up to l=1
for MACE, cutoff 5 Å, untrained: speed does not depend on the weights), in
float32 and float64. Each run is velocity-Verlet NVE at 0.5 fs through ASE,
timed after a warm-up, so the figure includes the neighbour list (Verlet, skin
0.5 Å), graph building and the force/stress backward pass. The weights are
random, so the runs restart from the same positions and velocities every 50
steps (outside the timed part) before atoms collide.

The reference is ``mace-torch``'s ``MACECalculator`` on a ``mace.modules.MACE``
of the same hyperparameters, run in its own virtual environment (default
``/work/refvenv``; mace-torch needs e3nn 0.4) by re-running this file there
with ``--reference-worker``. Ratios are steps/s of ours over MACE's, for the
MACE rows.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/md.py [--quick] [--refvenv /work/refvenv]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CUTOFF = 5.0
SIZE = {"channels": 16, "lmax": 2, "num_basis": 8, "polynomial_p": 6, "radial_hidden": 64}


def systems():
    """(name, atoms) of the two benchmark systems."""
    from ase.build import bulk
    from ase.io import read

    molecule = read(os.path.join(ROOT, "examples", "ethanol_xtb.xyz"), index=0)
    molecule.calc = None
    crystal = bulk("Cu", "fcc", a=3.61, cubic=True) * (7, 7, 7)
    crystal.rattle(0.02, seed=0)
    return [("ethanol (9 atoms)", molecule), (f"Cu fcc ({len(crystal)} atoms, PBC)", crystal)]


CHUNK = 50  # steps timed from the same starting point


def time_md(atoms, calc, steps: int, warmup: int) -> float:
    """Steps per second of velocity-Verlet NVE (0.5 fs) with ``calc``, after ``warmup`` steps."""
    from ase import units
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.run(warmup)
    # untrained models drive atoms together within a few hundred steps: run in chunks from the same start
    positions, momenta = atoms.positions.copy(), atoms.get_momenta().copy()
    elapsed, done = 0.0, 0
    while done < steps:
        chunk = min(CHUNK, steps - done)
        atoms.positions = positions
        atoms.set_momenta(momenta)
        start = time.perf_counter()
        dyn.run(chunk)
        elapsed += time.perf_counter() - start
        done += chunk
    return steps / elapsed


def ours(family: str, dtype: str, atoms, steps: int, warmup: int) -> float:
    import torch

    from clebsch.calculators import ClebschCalculator
    from clebsch.models import build_model

    torch.manual_seed(0)
    config = {"name": family, "species": ["H", "C", "O", "Cu"], "cutoff": CUTOFF, "num_layers": 2, **SIZE,
              "outputs": ["energy", "forces", "stress"]}
    if family == "mace":
        config.update(hidden_lmax=1, correlation=3)
    model = build_model(config)
    return time_md(atoms, ClebschCalculator(model, dtype=dtype), steps, warmup)


def reference_worker(dtype: str, steps_list, warmup_list) -> dict:
    """Runs inside the reference venv: MACE's own model and ASE calculator."""
    import torch
    from e3nn import o3
    from mace import modules
    from mace.calculators import MACECalculator

    torch.set_default_dtype(getattr(torch, dtype))
    torch.manual_seed(0)
    model = modules.MACE(
        r_max=CUTOFF, num_bessel=SIZE["num_basis"], num_polynomial_cutoff=SIZE["polynomial_p"], max_ell=SIZE["lmax"],
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2, num_elements=4, hidden_irreps=o3.Irreps(f"{SIZE['channels']}x0e + {SIZE['channels']}x1o"),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(4), avg_num_neighbors=10.0,
        atomic_numbers=[1, 6, 8, 29], correlation=3, gate=torch.nn.functional.silu,
        radial_MLP=[SIZE["radial_hidden"]] * 3,
    )
    calc = MACECalculator(models=model, device="cpu", default_dtype=dtype)
    out = {}
    for (name, atoms), steps, warmup in zip(systems(), steps_list, warmup_list):
        out[name] = time_md(atoms, calc, steps, warmup)
    return out


def reference(refvenv: str, dtype: str, steps_list, warmup_list):
    python = os.path.join(refvenv, "bin", "python")
    if not os.path.exists(python):
        return None, f"no reference venv at {refvenv}"
    cmd = [python, os.path.abspath(__file__), "--reference-worker", dtype,
           "--steps", *map(str, steps_list), "--warmup", *map(str, warmup_list)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    if proc.returncode != 0:
        return None, "reference failed: " + proc.stderr.strip().splitlines()[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--refvenv", default="/work/refvenv", help="venv with mace-torch ('' to skip)")
    parser.add_argument("--families", nargs="+", default=["nequip", "mace"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--reference-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps or ([50, 3] if args.quick else [300, 10])
    warmup = args.warmup or [5, 1]
    if args.reference_worker:
        print(json.dumps(reference_worker(args.reference_worker, steps, warmup)))
        return

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); steps timed: {steps}, warm-up {warmup}")
    refs = {}
    if args.refvenv:
        for dtype in args.dtypes:
            refs[dtype], why = reference(args.refvenv, dtype, steps, warmup)
            if why:
                print(f"MACE reference ({dtype}): {why}")
    print(f"{'system':<28} {'model':<8} {'dtype':<8} {'steps/s':>9} {'MACE ref':>9} {'ratio':>6}")
    for (name, atoms), n, w in zip(systems(), steps, warmup):
        for family in args.families:
            for dtype in args.dtypes:
                rate = ours(family, dtype, atoms, n, w)
                ref = (refs.get(dtype) or {}).get(name) if family == "mace" else None
                ref_s = f"{ref:9.2f}" if ref else f"{'-':>9}"
                ratio = f"{rate / ref:6.2f}" if ref else f"{'-':>6}"
                print(f"{name:<28} {family:<8} {dtype:<8} {rate:9.2f} {ref_s} {ratio}", flush=True)


if __name__ == "__main__":
    main()
