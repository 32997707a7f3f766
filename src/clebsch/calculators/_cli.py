"""Argument parsing for ``clebsch md`` and ``clebsch relax``.

The ``clebsch`` command registers these as sub-commands::

    p = subparsers.add_parser("md", help="molecular dynamics with a model")
    add_md_arguments(p)
    p.set_defaults(func=run_md)

``run_md`` and ``run_relax`` check every input first -- the parameters, the
structure file, the model file, and that no output is one of the inputs or
lies in a missing or read-only folder -- and only then open an output. A bad
input raises :class:`FileNotFoundError`, :class:`PermissionError` or
:class:`ValueError` with a one-line message naming it, which ``clebsch``'s
entry point prints as ``clebsch md: error: ...``. Outputs are written to a
temporary name and moved into place, so an existing file is never left half
overwritten.
"""

from __future__ import annotations

import argparse
import math
import os

from .._atomic import atomic_open, check_output_path
from ..data.io import check_elements
from ._dynamics import ENSEMBLES, OPTIMIZERS, check_md_parameters, check_relax_parameters, md, relax

__all__ = [
    "add_md_arguments",
    "run_md",
    "add_relax_arguments",
    "run_relax",
    "read_structure",
    "positive_int",
    "non_negative_int",
    "positive_float",
    "non_negative_float",
    "finite_float",
]


def _typed(convert, test, wanted: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = wanted  # argparse names the type in some messages
    return parse


positive_int = _typed(int, lambda v: v > 0, "a positive integer")
non_negative_int = _typed(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _typed(float, lambda v: math.isfinite(v) and v > 0, "a positive finite number")
non_negative_float = _typed(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
finite_float = _typed(float, math.isfinite, "a finite number")


def read_structure(path: str, frame: int = 0):
    """One frame of any ASE-readable structure file, with a clear error when it is missing or unreadable."""
    from ..data.io import read_structure as read

    if not os.path.exists(path):
        raise FileNotFoundError(f"structure file {path!r} does not exist")
    return read(path, frame)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="packaged model file (from `clebsch train`)")
    parser.add_argument("structure", help="structure file (any format ASE reads: extxyz, cif, POSCAR, ...)")
    parser.add_argument("--frame", type=int, default=0,
                        help="frame of the structure file to start from, 0-based; -1 is the last (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="precision (default float64)")
    parser.add_argument("--skin", type=non_negative_float, default=0.5,
                        help="Verlet neighbour-list skin, Å (default 0.5)")
    parser.add_argument("--compile", action="store_true",
                        help="capture energy, forces and stress as one graph and compile it (TorchInductor): about "
                             "3x the steps/s on small molecules; the first call compiles (seconds from the cache, "
                             "minutes the first time); falls back to eager with one warning")


def add_md_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of ``clebsch md MODEL STRUCTURE`` to ``parser``."""
    _common(parser)
    parser.add_argument("--ensemble", default="nve", choices=ENSEMBLES, help="nve, langevin or npt (default nve)")
    parser.add_argument("--temperature", type=non_negative_float, default=300.0,
                        help="temperature, K (default 300; above 0 for langevin and npt)")
    parser.add_argument("--timestep", type=positive_float, default=0.5, help="time step, fs (default 0.5)")
    parser.add_argument("--steps", type=non_negative_int, default=1000, help="number of steps (default 1000)")
    parser.add_argument("--trajectory", default="md.traj",
                        help="output trajectory, .traj or .xyz (default md.traj); grown as TRAJECTORY.tmp and "
                             "moved into place at the end")
    parser.add_argument("--log", default="md.log", help="energy/temperature log; '-' for stdout (default md.log)")
    parser.add_argument("--interval", type=positive_int, default=10,
                        help="steps between frames and log lines (default 10)")
    parser.add_argument("--friction", type=positive_float, default=0.01, help="Langevin friction, 1/fs (default 0.01)")
    parser.add_argument("--pressure", type=finite_float, default=1.0, help="NPT pressure, bar (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of velocities and thermostat noise (default 0)")
    parser.add_argument("--no-progress", action="store_true",
                        help="hide the progress (a bar on a terminal, one line per about 5%% of the run otherwise)")
    return parser


def add_relax_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of ``clebsch relax MODEL STRUCTURE`` to ``parser``."""
    _common(parser)
    parser.add_argument("--fmax", type=positive_float, default=0.05, help="force threshold, eV/Å (default 0.05)")
    parser.add_argument("--optimizer", default="bfgs", choices=OPTIMIZERS, help="bfgs or fire (default bfgs)")
    parser.add_argument("--cell", action="store_true", help="relax the cell too (periodic structures)")
    parser.add_argument("--steps", type=non_negative_int, default=500, help="most optimizer steps (default 500)")
    parser.add_argument("--trajectory", default=None, help="ASE trajectory of the relaxation (optional)")
    parser.add_argument(
        "--output", default=None, help="relaxed structure, extxyz (default: STRUCTURE's name + '_relaxed.xyz')"
    )
    parser.add_argument("--batch", action="store_true",
                        help="relax every frame of STRUCTURE together (FIRE per structure, one batched forward pass "
                             "per step; --optimizer is not used) and write all relaxed frames to --output")
    return parser


def _check_model_path(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")


def _load_calculator(args):
    """The calculator over the model file (loading it checks the file: format, checksum, device)."""
    from ._calculator import ClebschCalculator

    return ClebschCalculator(args.model, device=args.device, dtype=args.dtype, skin=args.skin,
                             compile=getattr(args, "compile", False))


def run_md(args: argparse.Namespace) -> int:
    """Run ``clebsch md`` from parsed arguments; returns the exit status.

    Every input is checked before an output is opened: the parameters, the
    structure file, the model file, the structure against the model, and the
    output paths (not an input, not each other, in a writable folder).
    """
    check_md_parameters(args.ensemble, args.temperature, args.timestep, args.steps, args.friction, args.interval,
                        args.pressure, skin=args.skin)
    _check_model_path(args.model)
    atoms = read_structure(args.structure, args.frame)
    inputs = {"model file": args.model, "structure file": args.structure}
    log = None if args.log in (None, "") else args.log
    if args.trajectory:
        others = {"log": log} if log not in (None, "-") else {}
        check_output_path(args.trajectory, "trajectory", inputs=inputs, others=others)
    if log not in (None, "-"):
        check_output_path(log, "log", inputs=inputs)
    calc = _load_calculator(args)
    check_elements([atoms], calc.model.species, args.structure, args.frame)
    md(
        calc, atoms, ensemble=args.ensemble, temperature_K=args.temperature, timestep_fs=args.timestep,
        steps=args.steps, trajectory=args.trajectory or None, logfile=log, friction=args.friction, seed=args.seed,
        interval=args.interval, pressure_bar=args.pressure, skin=args.skin, progress=not args.no_progress,
    )
    return 0


def _write_structure(path: str, atoms) -> None:
    """``atoms`` as extxyz at ``path``, through a temporary file in the same folder and a rename."""
    from ase.io import write

    with atomic_open(path, "w") as handle:
        write(handle, atoms, format="extxyz")


def run_relax(args: argparse.Namespace) -> int:
    """Run ``clebsch relax`` from parsed arguments; returns 0 when converged, 1 otherwise.

    Inputs are checked before any output is opened, as for :func:`run_md`.
    """
    check_relax_parameters(args.fmax, args.optimizer, args.steps)
    _check_model_path(args.model)
    if getattr(args, "batch", False):
        return _run_relax_batch(args)
    atoms = read_structure(args.structure, args.frame)
    output = args.output or os.path.splitext(os.path.basename(args.structure))[0] + "_relaxed.xyz"
    inputs = {"model file": args.model, "structure file": args.structure}
    check_output_path(output, "output", inputs=inputs,
                      others={"trajectory": args.trajectory} if args.trajectory else {})
    if args.trajectory:
        check_output_path(args.trajectory, "trajectory", inputs=inputs)
    calc = _load_calculator(args)
    check_elements([atoms], calc.model.species, args.structure, args.frame)
    converged = relax(
        calc, atoms, fmax=args.fmax, optimizer=args.optimizer, cell=args.cell, steps=args.steps,
        trajectory=args.trajectory, skin=args.skin,
    )
    _write_structure(output, atoms)
    energy = atoms.get_potential_energy()
    status = "converged" if converged else f"NOT converged in {args.steps} steps"
    print(f"relaxation {status}: energy {energy:.6f} eV, written to {output}")
    return 0 if converged else 1



def _run_relax_batch(args: argparse.Namespace) -> int:
    """``clebsch relax --batch``: every frame relaxed with batched FIRE; 0 when all converged, 1 otherwise."""
    from ..data.io import read_structures
    from ._batched import relax_many

    for flag, given in (("--cell", args.cell), ("--trajectory", args.trajectory), ("--compile", args.compile)):
        if given:
            raise ValueError(f"{flag} is not available with --batch (positions only, no trajectory)")
    if not os.path.exists(args.structure):
        raise FileNotFoundError(f"structure file {args.structure!r} does not exist")
    frames = read_structures(args.structure)
    output = args.output or os.path.splitext(os.path.basename(args.structure))[0] + "_relaxed.xyz"
    check_output_path(output, "output", inputs={"model file": args.model, "structure file": args.structure})
    converged = relax_many(args.model, frames, fmax=args.fmax, steps=args.steps, device=args.device, dtype=args.dtype,
                           source=args.structure)
    from ase.io import write

    with atomic_open(output, "w") as handle:
        write(handle, frames, format="extxyz")
    done = sum(converged)
    print(f"batched relaxation: {done} of {len(frames)} structures converged (fmax {args.fmax} eV/Å, FIRE), "
          f"written to {output}")
    return 0 if done == len(frames) else 1
