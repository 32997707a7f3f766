"""Molecular dynamics and geometry relaxation with a clebsch model, on ASE's integrators."""

from __future__ import annotations

import os

import numpy as np
from ase import units
from ase.io import Trajectory
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

from ._calculator import ClebschCalculator

__all__ = ["md", "relax", "attach_calculator"]

ENSEMBLES = ("nve", "langevin", "npt")
OPTIMIZERS = ("bfgs", "fire")


def attach_calculator(model, atoms, device: str = "cpu", dtype: str = "float64", skin: float = 0.5):
    """Give ``atoms`` a :class:`ClebschCalculator` (``model`` may already be one) and return it."""
    calc = model if isinstance(model, ClebschCalculator) else ClebschCalculator(model, device=device, dtype=dtype, skin=skin)
    atoms.calc = calc
    return calc


def _fully_periodic(atoms, what: str) -> None:
    if not np.all(atoms.pbc):
        raise ValueError(
            f"{what} needs a structure periodic in all three directions, but pbc is {atoms.pbc.tolist()}"
        )
    if abs(atoms.cell.volume) < 1e-9:
        raise ValueError(f"{what} needs a cell with a non-zero volume")


class _TrajectoryWriter:
    """Append frames (with energy, forces and stress) to an ASE trajectory or an extxyz file.

    Each frame is flushed as it is written, so a killed run leaves every frame
    written so far readable.
    """

    def __init__(self, path, atoms):
        self.path = os.fspath(path)
        self.atoms = atoms
        self.extxyz = self.path.endswith((".xyz", ".extxyz"))
        if self.extxyz:
            open(self.path, "w").close()
            self.traj = None
        else:
            self.traj = Trajectory(self.path, "w", atoms)

    def __call__(self):
        if self.extxyz:
            from ase.io import write

            with open(self.path, "a") as f:
                write(f, self.atoms, format="extxyz")
                f.flush()
        else:
            self.traj.write()

    def close(self):
        if self.traj is not None:
            self.traj.close()


def _progress(total: int, show: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not show, desc=desc, unit="step", dynamic_ncols=True)


def md(
    model,
    atoms,
    ensemble: str = "nve",
    temperature_K: float = 300.0,
    timestep_fs: float = 0.5,
    steps: int = 1000,
    trajectory=None,
    logfile=None,
    friction: float = 0.01,
    seed: int = 0,
    interval: int = 10,
    pressure_bar: float = 1.0,
    ttime_fs: float = 50.0,
    ptime_fs: float = 500.0,
    init_velocities: bool = True,
    device: str = "cpu",
    dtype: str = "float64",
    skin: float = 0.5,
    progress: bool = True,
    observers=(),
):
    """Run molecular dynamics on ``atoms`` (changed in place) with a clebsch model.

    Parameters
    ----------
    model : Potential or str or ClebschCalculator
        The model, a packaged model file, or a ready calculator.
    atoms : ase.Atoms
    ensemble : {"nve", "langevin", "npt"}
        Velocity Verlet; Langevin thermostat; isotropic Martyna-Tobias-Klein
        NPT with Nosé-Hoover chains (``ase.md.nose_hoover_chain.IsotropicMTKNPT``,
        structures periodic in all directions only).
    temperature_K : float
        Initial (Maxwell-Boltzmann) and, for ``langevin``/``npt``, target temperature.
    timestep_fs : float
        Time step in fs.
    steps : int
        Number of steps.
    trajectory : str, optional
        Output file: ``.traj`` (ASE) or ``.xyz``/``.extxyz``; a frame every
        ``interval`` steps (and the initial one), flushed as it goes.
    logfile : str, optional
        ASE's MD log (time, energies, temperature) every ``interval`` steps; ``"-"`` is stdout.
    friction : float
        Langevin friction, 1/fs.
    seed : int
        Seeds the initial velocities and the Langevin noise.
    interval : int
        Steps between trajectory frames and log lines.
    pressure_bar, ttime_fs, ptime_fs : float
        NPT: external pressure, and the damping times of the thermostat and
        barostat chains.
    init_velocities : bool
        Draw Maxwell-Boltzmann velocities at ``temperature_K`` (zero total
        momentum and, for molecules, zero angular momentum) unless the atoms
        already move.
    device, dtype, skin
        Passed to :class:`ClebschCalculator`.
    progress : bool
        Show a tqdm progress bar.
    observers : sequence of callables
        Called after every step with no argument (e.g. to stop a run by raising).

    Returns
    -------
    dynamics : ase.md.md.MolecularDynamics
        The integrator after the run (its ``atoms`` hold the final state).
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    if steps < 0 or int(steps) != steps:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not timestep_fs > 0:
        raise ValueError(f"timestep must be positive, got {timestep_fs} fs")
    if ensemble == "npt":
        _fully_periodic(atoms, "NPT")
    attach_calculator(model, atoms, device, dtype, skin)
    rng = np.random.default_rng(seed)
    if init_velocities and not np.any(atoms.get_momenta()) and temperature_K > 0:
        thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
        Stationary(atoms)
        if not np.any(atoms.pbc) and len(atoms) > 2:
            ZeroRotation(atoms)
    dt = timestep_fs * units.fs
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        dyn = VelocityVerlet(atoms, timestep=dt)
    elif ensemble == "langevin":
        from ase.md.langevin import Langevin

        dyn = Langevin(atoms, timestep=dt, temperature_K=temperature_K, friction=friction / units.fs, rng=rng, fixcm=False)
    else:
        from ase.md.nose_hoover_chain import IsotropicMTKNPT

        dyn = IsotropicMTKNPT(
            atoms, timestep=dt, temperature_K=temperature_K, pressure_au=pressure_bar * units.bar,
            tdamp=ttime_fs * units.fs, pdamp=ptime_fs * units.fs,
        )
    writer = logger = None
    try:
        if trajectory is not None:
            writer = _TrajectoryWriter(trajectory, atoms)  # ASE calls observers at step 0 too
            dyn.attach(writer, interval=interval)
        if logfile is not None:
            from ase.md import MDLogger

            logger = MDLogger(dyn, atoms, logfile, header=True, stress=False, peratom=False, mode="w")
            dyn.attach(logger, interval=interval)
        for observer in observers:
            dyn.attach(observer, interval=1)
        with _progress(steps, progress, f"MD {ensemble}") as bar:
            def tick():
                bar.update(dyn.nsteps - bar.n)
                if bar.n and bar.n % max(interval, 1) == 0:
                    bar.set_postfix(T=f"{atoms.get_temperature():.0f}K", E=f"{atoms.get_total_energy():.4f}eV")

            dyn.attach(tick, interval=1)
            dyn.run(int(steps))
    finally:
        if writer is not None:
            writer.close()
        if logger is not None:
            logger.close()
    return dyn


def relax(
    model,
    atoms,
    fmax: float = 0.05,
    optimizer: str = "bfgs",
    cell: bool = False,
    steps: int = 500,
    trajectory=None,
    logfile="-",
    device: str = "cpu",
    dtype: str = "float64",
    skin: float = 0.5,
) -> bool:
    """Relax ``atoms`` (changed in place) until the largest force is below ``fmax``.

    Parameters
    ----------
    model : Potential or str or ClebschCalculator
    atoms : ase.Atoms
    fmax : float
        Force threshold, eV/Å (with ``cell=True`` it also bounds the stress
        times the volume, as ``FrechetCellFilter`` does).
    optimizer : {"bfgs", "fire"}
    cell : bool
        Relax the cell too (periodic structures only), through
        :class:`ase.filters.FrechetCellFilter`.
    steps : int
        Most optimizer steps.
    trajectory : str, optional
        ASE trajectory of every step.
    logfile : str or None
        The optimizer's log; ``"-"`` is stdout, ``None`` silent.

    Returns
    -------
    converged : bool
        Whether ``fmax`` was reached within ``steps``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if not fmax > 0:
        raise ValueError(f"fmax must be positive, got {fmax}")
    if cell:
        _fully_periodic(atoms, "cell relaxation")
    attach_calculator(model, atoms, device, dtype, skin)
    from ase.optimize import BFGS, FIRE

    target = atoms
    if cell:
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(atoms)
    opt_cls = BFGS if optimizer == "bfgs" else FIRE
    opt = opt_cls(target, trajectory=None if trajectory is None else os.fspath(trajectory), logfile=logfile)
    try:
        converged = opt.run(fmax=fmax, steps=steps)
    finally:
        if getattr(opt, "trajectory", None) is not None and hasattr(opt.trajectory, "close"):
            opt.trajectory.close()
    return bool(converged)
