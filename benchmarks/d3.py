"""D3(BJ) dispersion: clebsch's torch term against the reference code (s-dftd3, the ``dftd3`` package).

For molecules and periodic cells, PBE-D3(BJ) at the reference code's cutoffs
(60 Bohr two-body, 40 Bohr coordination numbers and three-body), two-body and
with the three-body (ATM) term: the largest differences in energy (eV), per-atom
energies, forces (eV/Å) and dE/d(strain) (eV) against the reference, and the
time of one energy + forces (+ stress) evaluation of each, with the ratio
reference time / clebsch time (> 1: clebsch is faster). Open structures are also
run through tad-dftd3's own ``dftd3`` function (dense, molecules only), the
library the term takes its reference data from.

    OMP_NUM_THREADS=1 python benchmarks/d3.py [--repeats 3] [--no-atm]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from ase.io import read
from ase.units import Bohr, Hartree

from _systems import water_box
from clebsch.models._dispersion import D3Dispersion, d3_parameters

ROOT = Path(__file__).resolve().parents[1]


def systems():
    """(name, atoms) pairs: molecules, clusters and periodic cells."""
    out = [("ethanol (9)", read(ROOT / "examples" / "ethanol_xtb.xyz", 0))]
    pos, cell, numbers = water_box(96, seed=1)
    out.append(("water cluster (96)", Atoms(numbers=numbers, positions=pos)))
    pos, cell, numbers = water_box(300, seed=2)
    out.append(("water cluster (300)", Atoms(numbers=numbers, positions=pos)))
    nacl = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    nacl.rattle(0.05, seed=3)
    out.append(("NaCl cubic (8, pbc)", nacl))
    si = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    si.rattle(0.05, seed=4)
    out.append(("Si 2x2x2 (64, pbc)", si))
    pos, cell, numbers = water_box(96, seed=5)
    out.append(("water box (96, pbc)", Atoms(numbers=numbers, positions=pos, cell=cell, pbc=True)))
    slab = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    slab.center(vacuum=6.0, axis=2)
    slab.pbc = [True, True, False]
    slab.rattle(0.05, seed=6)
    out.append(("Cu slab (32, pbc xy)", slab))
    return out


def best(fn, repeats):
    t, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - t0)
    return t, out


def reference(atoms, atm):
    from dftd3.interface import DispersionModel, RationalDampingParam

    periodic = bool(atoms.pbc.any())

    def run():
        model = DispersionModel(atoms.numbers, atoms.positions / Bohr, atoms.cell.array / Bohr if periodic else None,
                                atoms.pbc if periodic else None)
        param = RationalDampingParam(method="pbe", atm=atm)
        res = model.get_dispersion(param, grad=True)
        pairs = model.get_pairwise_dispersion(param)
        return res, pairs

    def energy_forces():
        model = DispersionModel(atoms.numbers, atoms.positions / Bohr, atoms.cell.array / Bohr if periodic else None,
                                atoms.pbc if periodic else None)
        return model.get_dispersion(RationalDampingParam(method="pbe", atm=atm), grad=True)

    res, pairs = run()
    per_atom = (pairs["additive pairwise energy"].sum(1) + pairs["non-additive pairwise energy"].sum(1)) * Hartree
    return (float(res["energy"]) * Hartree, -res["gradient"] * Hartree / Bohr, res["virial"] * Hartree, per_atom,
            energy_forces)


def ours(atoms, atm):
    numbers = sorted(set(atoms.numbers.tolist()))
    term = D3Dispersion(numbers, functional="pbe", atm=atm)
    species = torch.tensor([numbers.index(z) for z in atoms.numbers])
    pbc = torch.tensor(atoms.pbc)[None]

    def run():
        pos = torch.tensor(atoms.positions, requires_grad=True)
        strain = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
        cell = torch.tensor(atoms.cell.array)
        e = term(species, pos + pos @ strain, None, 1, (cell + cell @ strain)[None], pbc)
        grad_r, grad_strain = torch.autograd.grad(e.sum(), [pos, strain])
        return float(e.detach().sum()), -grad_r.numpy(), grad_strain.numpy(), e.detach().numpy()

    return run


def tad_direct(atoms):
    """tad-dftd3's own dense dftd3 (open structures only): energy (eV), forces (eV/Å)."""
    import tad_dftd3

    params = {k: torch.tensor(v, dtype=torch.float64) for k, v in d3_parameters("pbe").items()}
    numbers = torch.tensor(atoms.numbers)

    def run():
        pos = torch.tensor(atoms.positions / Bohr, requires_grad=True)
        e = tad_dftd3.dftd3(numbers, pos, params).sum()
        (grad,) = torch.autograd.grad(e, pos)
        return float(e.detach()) * Hartree, -grad.numpy() * Hartree / Bohr

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-atm", action="store_true", help="two-body only")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    print("PBE-D3(BJ), float64, reference cutoffs; differences to s-dftd3 (dftd3 "
          f"{__import__('dftd3').__version__}); times of energy + forces (+ stress), best of {args.repeats}")
    header = (f"{'system':<22} {'ATM':<4} {'E ref eV':>11} {'|dE|':>8} {'|dE_i|':>8} {'|dF|':>8} {'|dW|':>8} "
              f"{'ref s':>8} {'clebsch s':>9} {'ref/clebsch':>11} {'tad |dE|':>9} {'tad s':>7}")
    print(header)
    worst = 0.0
    for name, atoms in systems():
        for atm in ([False] if args.no_atm else [False, True]):
            if atm and atoms.pbc.any() and len(atoms) > 8:
                continue  # the three-body lattice sum at 40 Bohr: millions of triples per atom (see the notes)
            e_ref, f_ref, w_ref, a_ref, ref_run = reference(atoms, atm)
            run = ours(atoms, atm)
            run()  # warm-up
            t_ours, (e, f, w, a) = best(run, args.repeats)
            t_ref, _ = best(ref_run, args.repeats)
            de, da, df, dw = abs(e - e_ref), np.abs(a - a_ref).max(), np.abs(f - f_ref).max(), np.abs(w - w_ref).max()
            worst = max(worst, de, df, dw)
            line = (f"{name:<22} {'yes' if atm else 'no':<4} {e_ref:>11.6f} {de:>8.1e} {da:>8.1e} {df:>8.1e} "
                    f"{dw:>8.1e} {t_ref:>8.4f} {t_ours:>9.4f} {t_ref / t_ours:>11.2f}")
            if not atoms.pbc.any() and not atm:
                direct = tad_direct(atoms)
                direct()
                t_tad, (e_tad, f_tad) = best(direct, args.repeats)
                line += f" {abs(e_tad - e_ref):>9.1e} {t_tad:>7.4f}"
            print(line, flush=True)
    print(f"largest difference in energy, forces or dE/d(strain): {worst:.1e}")


if __name__ == "__main__":
    main()
