"""Generate the small data sets bundled in ``examples/``.

1. ``examples/ethanol_xtb.xyz``: GFN2-xTB (tblite) Langevin molecular dynamics of
   one ethanol molecule in vacuum; energy (eV), forces (eV/Å) and dipole (e·Å).
2. ``examples/cu_emt.xyz``: ASE's EMT potential on rattled and strained 32-atom
   fcc copper supercells; energy (eV), forces (eV/Å) and stress (eV/Å³, ASE's
   sign convention, Voigt order xx yy zz yz xz xy).

Needs the optional ``datagen`` extra (``pip install clebsch[datagen]`` for
tblite). Run from the repository root::

    OMP_NUM_THREADS=1 python scripts/make_xtb_dataset.py            # both files
    python scripts/make_xtb_dataset.py --only cu                     # copper only
    python scripts/make_xtb_dataset.py --molecule CH3CONH2 --out DIR  # another molecule, DIR/CH3CONH2_xtb.xyz

The runs are seeded; the xTB part takes about two minutes on one core.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.constraints import FixCom
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

ROOT = Path(__file__).resolve().parent.parent


def _snapshot(atoms, **extra_info):
    """A copy of ``atoms`` carrying the calculator's results as plain extxyz fields."""
    frame = atoms.copy()
    frame.calc = None
    frame.set_constraint()
    frame.arrays.pop("momenta", None)
    frame.info.clear()
    frame.info["energy"] = float(atoms.get_potential_energy())
    # the gradient of the energy: FixCom would otherwise take each frame's mass-weighted mean force out,
    # which no translation-invariant model can learn
    frame.arrays["forces"] = atoms.get_forces(apply_constraint=False).copy()
    frame.info.update(extra_info)
    return frame


def make_molecule(path: Path, n_frames: int, equilibration: int, stride: int, temperature: float,
                  timestep_fs: float, seed: int, name: str = "CH3CH2OH") -> None:
    from tblite.ase import TBLite

    atoms = molecule(name)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature, friction=0.01 / units.fs,
                   fixcm=False, rng=rng)
    start = time.time()
    dyn.run(equilibration)
    frames = []
    for k in range(n_frames):
        dyn.run(stride)
        frames.append(_snapshot(atoms, dipole=atoms.get_dipole_moment().copy(), config_type="md_500K"))
        if (k + 1) % 50 == 0:
            print(f"{name}: {k + 1}/{n_frames} frames, {time.time() - start:.0f} s", flush=True)
    write(path, frames, format="extxyz")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {len(frames)} frames)")


def make_copper(path: Path, n_frames: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n_frames):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))  # 32 atoms
        strain = np.eye(3) + rng.normal(scale=0.02, size=(3, 3))
        strain = 0.5 * (strain + strain.T)
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        atoms.calc = EMT()
        frame = _snapshot(atoms, stress=atoms.get_stress(voigt=True).copy(), config_type="fcc_strained")
        frames.append(frame)
    write(path, frames, format="extxyz")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {len(frames)} frames)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["ethanol", "cu"], help="make just one of the two files")
    parser.add_argument("--molecule", default=None,
                        help="instead: the MD of this molecule of ASE's g2 collection (e.g. CH3CONH2, acetamide) "
                             "into OUT/NAME_xtb.xyz, the same way as ethanol (a second molecule for benchmarks)")
    parser.add_argument("--frames", type=int, default=500, help="ethanol frames (default 500)")
    parser.add_argument("--stride", type=int, default=40, help="MD steps between saved frames")
    parser.add_argument("--equilibration", type=int, default=2000, help="MD steps before the first frame")
    parser.add_argument("--temperature", type=float, default=500.0, help="K")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "examples")
    args = parser.parse_args(argv)
    if args.molecule:
        from ase.collections import g2

        if args.molecule not in g2.names:
            close = [n for n in g2.names if args.molecule.lower() in n.lower()][:10]
            parser.error(f"--molecule {args.molecule!r} is not in ASE's g2 collection"
                         + (f"; names containing it: {', '.join(close)}" if close else
                            " (names are formulas or names as in ase.collections.g2.names, e.g. CH3CONH2, C6H6)"))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.molecule:
        make_molecule(args.out / f"{args.molecule}_xtb.xyz", args.frames, args.equilibration, args.stride,
                      args.temperature, args.timestep, args.seed, args.molecule)
        return
    if args.only in (None, "cu"):
        make_copper(args.out / "cu_emt.xyz", 50, args.seed)
    if args.only in (None, "ethanol"):
        make_molecule(args.out / "ethanol_xtb.xyz", args.frames, args.equilibration, args.stride,
                      args.temperature, args.timestep, args.seed)


if __name__ == "__main__":
    main()
