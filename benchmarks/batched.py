"""Batched relaxation of many molecules vs looping ASE's FIRE with the calculator.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/batched.py [--molecules 100] [--steps 20]

Both relax the same rattled molecules with the same FIRE rule and a fixed
number of steps (fmax tiny, so every structure takes every step: the same work
on both sides); prints structures*steps per second and the ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase.build import molecule
from ase.optimize import FIRE

from clebsch.calculators import ClebschCalculator, relax_many
from clebsch.models import build_model

NAMES = ["H2O", "CH4", "CH3OH", "C2H6", "HCOOH", "CH3CHO", "C2H4", "NH3"]


def molecules(n: int):
    out = []
    for k in range(n):
        atoms = molecule(NAMES[k % len(NAMES)])
        atoms.rattle(0.05, seed=k)
        out.append(atoms)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--family", default="nequip")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model({"name": args.family, "species": ["H", "C", "N", "O"], "cutoff": 4.0,
                         "num_layers": 2}).double().eval()
    batch, loop = molecules(args.molecules), molecules(args.molecules)
    t = time.perf_counter()
    relax_many(model, batch, fmax=1e-9, steps=args.steps, maxstep=0.02)
    batched = time.perf_counter() - t
    t = time.perf_counter()
    calc = ClebschCalculator(model)
    for atoms in loop:
        atoms.calc = calc
        FIRE(atoms, logfile=None, maxstep=0.02).run(fmax=1e-9, steps=args.steps)
    looped = time.perf_counter() - t
    gap = max(np.abs(a.positions - b.positions).max() for a, b in zip(batch, loop))
    work = args.molecules * args.steps
    print(f"{args.family}, {args.molecules} molecules x {args.steps} FIRE steps, torch threads {torch.get_num_threads()}")
    print(f"  batched relax_many : {batched:7.2f} s  {work / batched:8.1f} structure-steps/s")
    print(f"  ASE FIRE loop      : {looped:7.2f} s  {work / looped:8.1f} structure-steps/s")
    print(f"  ratio {looped / batched:.1f}x; largest position difference {gap:.1e} Å")


if __name__ == "__main__":
    main()
