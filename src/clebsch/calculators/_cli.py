"""Argument parsing for ``clebsch md`` and ``clebsch relax``.

The ``clebsch`` command registers these as sub-commands::

    p = subparsers.add_parser("md", help="molecular dynamics with a model")
    add_md_arguments(p)
    p.set_defaults(func=run_md)

``run_md`` and ``run_relax`` return an exit status; a bad input (missing file,
unknown element, a non-periodic structure with ``--cell`` or ``npt``) raises
:class:`FileNotFoundError` or :class:`ValueError` with a one-line message
naming it, which ``clebsch``'s entry point prints as ``clebsch md: error: ...``.
"""

from __future__ import annotations

import argparse
import os

from ._dynamics import ENSEMBLES, OPTIMIZERS, md, relax

__all__ = ["add_md_arguments", "run_md", "add_relax_arguments", "run_relax", "read_structure"]


def read_structure(path: str, frame: int = 0):
    """One frame of any ASE-readable structure file, with a clear error when it is missing or unreadable."""
    from ase.io import read

    if not os.path.exists(path):
        raise FileNotFoundError(f"structure file {path!r} does not exist")
    try:
        atoms = read(path, index=frame)
    except Exception as err:  # ASE raises many kinds
        raise ValueError(f"cannot read frame {frame} of structure file {path!r}: {err}") from err
    if isinstance(atoms, list):
        atoms = atoms[0]
    if len(atoms) == 0:
        raise ValueError(f"structure file {path!r}, frame {frame}, has no atoms")
    return atoms


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="packaged model file (from `clebsch train`)")
    parser.add_argument("structure", help="structure file (any format ASE reads: extxyz, cif, POSCAR, ...)")
    parser.add_argument("--frame", type=int, default=0, help="frame of the structure file to start from (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="precision (default float64)")
    parser.add_argument("--skin", type=float, default=0.5, help="Verlet neighbour-list skin, Å (default 0.5)")


def add_md_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of ``clebsch md MODEL STRUCTURE`` to ``parser``."""
    _common(parser)
    parser.add_argument("--ensemble", default="nve", choices=ENSEMBLES, help="nve, langevin or npt (default nve)")
    parser.add_argument("--temperature", type=float, default=300.0, help="temperature, K (default 300)")
    parser.add_argument("--timestep", type=float, default=0.5, help="time step, fs (default 0.5)")
    parser.add_argument("--steps", type=int, default=1000, help="number of steps (default 1000)")
    parser.add_argument("--trajectory", default="md.traj", help="output trajectory, .traj or .xyz (default md.traj)")
    parser.add_argument("--log", default="md.log", help="energy/temperature log; '-' for stdout (default md.log)")
    parser.add_argument("--interval", type=int, default=10, help="steps between frames and log lines (default 10)")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (default 0.01)")
    parser.add_argument("--pressure", type=float, default=1.0, help="NPT pressure, bar (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of velocities and thermostat noise (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def add_relax_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of ``clebsch relax MODEL STRUCTURE`` to ``parser``."""
    _common(parser)
    parser.add_argument("--fmax", type=float, default=0.05, help="force threshold, eV/Å (default 0.05)")
    parser.add_argument("--optimizer", default="bfgs", choices=OPTIMIZERS, help="bfgs or fire (default bfgs)")
    parser.add_argument("--cell", action="store_true", help="relax the cell too (periodic structures)")
    parser.add_argument("--steps", type=int, default=500, help="most optimizer steps (default 500)")
    parser.add_argument("--trajectory", default=None, help="ASE trajectory of the relaxation (optional)")
    parser.add_argument(
        "--output", default=None, help="relaxed structure, extxyz (default: STRUCTURE's name + '_relaxed.xyz')"
    )
    return parser


def run_md(args: argparse.Namespace) -> int:
    """Run ``clebsch md`` from parsed arguments; returns the exit status."""
    atoms = read_structure(args.structure, args.frame)
    md(
        args.model, atoms, ensemble=args.ensemble, temperature_K=args.temperature, timestep_fs=args.timestep,
        steps=args.steps, trajectory=args.trajectory, logfile=args.log, friction=args.friction, seed=args.seed,
        interval=args.interval, pressure_bar=args.pressure, device=args.device, dtype=args.dtype,
        skin=args.skin, progress=not args.no_progress,
    )
    return 0


def run_relax(args: argparse.Namespace) -> int:
    """Run ``clebsch relax`` from parsed arguments; returns 0 when converged, 1 otherwise."""
    from ase.io import write

    atoms = read_structure(args.structure, args.frame)
    converged = relax(
        args.model, atoms, fmax=args.fmax, optimizer=args.optimizer, cell=args.cell, steps=args.steps,
        trajectory=args.trajectory, device=args.device, dtype=args.dtype, skin=args.skin,
    )
    output = args.output or os.path.splitext(os.path.basename(args.structure))[0] + "_relaxed.xyz"
    write(output, atoms, format="extxyz")
    energy = atoms.get_potential_energy()
    status = "converged" if converged else f"NOT converged in {args.steps} steps"
    print(f"relaxation {status}: energy {energy:.6f} eV, written to {output}")
    return 0 if converged else 1
