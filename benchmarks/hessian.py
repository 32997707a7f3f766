"""The exact Hessian by autograd against central finite differences of the forces.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/hessian.py [--families nequip mace schnet] [--delta 0.01]

For molecules of 9, 32 and 101 atoms (ethanol, decane, C33H68) and a periodic box
of 96 water atoms, and for each family (float64, untrained, same sizes as a small
production model), times :func:`clebsch.calculators.hessian` (rows batched through
the forces' backward pass) and the ``6N`` force evaluations of central finite
differences through the ASE calculator (what ``ase.vibrations`` does), and prints
milliseconds, the ratio, and the largest difference between the two matrices.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase import Atoms
from ase.build import molecule

from _systems import water_box
from clebsch.calculators import ClebschCalculator
from clebsch.calculators._vibrations import hessian
from clebsch.testing import float64_model

FAMILIES = {
    "nequip": {"num_layers": 2, "channels": 16, "lmax": 2, "num_basis": 8},
    "mace": {"num_layers": 2, "channels": 16, "lmax": 2, "correlation": 3, "num_basis": 8},
    "schnet": {"num_layers": 3, "channels": 64, "num_basis": 16},
}


def alkane(n_carbon: int) -> Atoms:
    """A straight all-trans alkane C_nH_{2n+2} (C-C 1.54 Å, C-H 1.09 Å, tetrahedral angles)."""
    half = np.deg2rad(109.47) / 2
    step, rise = 1.54 * np.sin(half), 1.54 * np.cos(half)
    carbons = np.array([[k * step, rise * (k % 2), 0.0] for k in range(n_carbon)])
    symbols, positions = ["C"] * n_carbon, list(carbons)
    for k, c in enumerate(carbons):
        down = -1.0 if k % 2 == 0 else 1.0  # away from the chain's neighbours
        for side in (-1.0, 1.0):
            positions.append(c + 1.09 * np.array([0.0, down * np.cos(half), side * np.sin(half)]))
            symbols.append("H")
    for k, sign in ((0, -1.0), (n_carbon - 1, 1.0)):
        # the end carbons' third hydrogen continues the zigzag
        other = carbons[1] if k == 0 else carbons[-2]
        direction = carbons[k] - other
        direction[1] *= -1
        positions.append(carbons[k] + 1.09 * direction / np.linalg.norm(direction))
        symbols.append("H")
    return Atoms(symbols, positions=np.array(positions))


def systems() -> dict:
    positions, cell, numbers = water_box(96, seed=0)
    return {
        "ethanol": molecule("CH3CH2OH"),
        "decane": alkane(10),
        "C33H68": alkane(33),
        "water box (PBC)": Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True),
    }


def finite_differences(calc, atoms: Atoms, delta: float) -> np.ndarray:
    atoms = atoms.copy()
    atoms.calc = calc
    x0 = atoms.positions.copy()
    n = 3 * len(atoms)
    fd = np.empty((n, n))
    for k in range(n):
        forces = []
        for sign in (1.0, -1.0):
            x = x0.copy()
            x.reshape(-1)[k] += sign * delta
            atoms.positions = x
            forces.append(atoms.get_forces().reshape(-1))
        fd[k] = -(forces[0] - forces[1]) / (2 * delta)
    return 0.5 * (fd + fd.T)


def rows(model) -> str:
    """How the model's Hessian took its rows: batched through one backward pass, or one at a time."""
    batched = getattr(model, "_hessian_batched", None)
    return "batched" if batched else "one by one" if batched is False else "?"


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--systems", nargs="+", default=None, help="a subset of: " + ", ".join(systems()))
    parser.add_argument("--delta", type=float, default=0.01,
                        help="finite-difference step in Å (ase.vibrations': 0.01)")
    parser.add_argument("--cutoff", type=float, default=4.0)
    parser.add_argument("--chunk", type=int, default=None,
                        help="Hessian rows per backward pass (default: clebsch.calculators.hessian's, 8 on the CPU)")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many Hessians")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = {k: v for k, v in systems().items() if args.systems is None or k in args.systems}
    print(f"float64, cutoff {args.cutoff} Å, torch threads {torch.get_num_threads()}, finite-difference step "
          f"{args.delta} Å (6N force evaluations), Hessian rows per backward pass: {args.chunk or 'default'}")
    header = (f"{'family':8s} {'system':16s} {'atoms':>5s} {'exact ms':>10s} {'FD ms':>10s} {'FD/exact':>9s} "
              f"{'max |dH| eV/Å²':>15s} {'relative':>9s} {'rows':>8s}")
    print(header)
    print("-" * len(header))
    for family in args.families:
        config = {"name": family, "species": ["H", "C", "O"], "cutoff": args.cutoff, "scale": 1.0,
                  "atomic_energies": [-13.6, -1029.0, -2041.0], **FAMILIES[family]}
        model = float64_model(config, seed=0, randomize_zeros=True)
        calc = ClebschCalculator(model)
        # warm-up: compiled kernels, and whether the Hessian's rows can be batched (learnt once per model)
        hessian(model, molecule("H2O"), chunk=args.chunk)
        finite_differences(calc, molecule("H2O"), args.delta)
        for name, atoms in chosen.items():
            exact_s, exact = best_time(lambda: hessian(model, atoms, chunk=args.chunk), args.repeats)
            start = time.perf_counter()
            fd = finite_differences(calc, atoms, args.delta)
            fd_s = time.perf_counter() - start
            difference = float(np.abs(exact - fd).max())
            print(f"{family:8s} {name:16s} {len(atoms):5d} {1e3 * exact_s:10.1f} {1e3 * fd_s:10.1f} "
                  f"{fd_s / exact_s:8.1f}x {difference:15.2e} {difference / np.abs(exact).max():9.1e} "
                  f"{rows(model):>8s}", flush=True)


if __name__ == "__main__":
    main()
