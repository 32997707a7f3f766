"""Molecular dynamics and geometry relaxation with a clebsch model, on ASE's integrators."""

from __future__ import annotations

import math
import os
import sys
import time
import warnings

import numpy as np
from ase import units
from ase.io import Trajectory
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

from .._atomic import check_output_path, partial_path
from ._calculator import ClebschCalculator

__all__ = ["md", "relax", "attach_calculator", "check_md_parameters", "check_relax_parameters"]

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


def _number(value, name: str, unit: str, minimum: float = 0.0, strict: bool = True, hint: str = "") -> float:
    """``value`` as a finite float above (``strict``) or at least ``minimum``; else a clear ValueError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of {unit}, got {value!r}") from None
    ok = number > minimum if strict else number >= minimum
    if not (math.isfinite(number) and ok):
        bound = f"{'above' if strict else 'at least'} {minimum:g}"
        raise ValueError(f"{name} must be a finite number {bound} {unit}, got {value!r}{hint}")
    return number


def _count(value, name: str, minimum: int = 0) -> int:
    """``value`` as an int of at least ``minimum``; else a clear ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return int(value)


def check_md_parameters(
    ensemble: str = "nve",
    temperature_K: float = 300.0,
    timestep_fs: float = 0.5,
    steps: int = 1000,
    friction: float = 0.01,
    interval: int = 10,
    pressure_bar: float = 1.0,
    ttime_fs: float = 50.0,
    ptime_fs: float = 500.0,
    skin: float = 0.5,
) -> None:
    """Raise a :class:`ValueError` naming the first MD parameter that cannot give a sane run.

    Called by :func:`md` before anything is loaded, computed or written.

    >>> check_md_parameters("langevin", temperature_K=-10)
    Traceback (most recent call last):
    ...
    ValueError: temperature must be a finite number above 0 K for the langevin thermostat, got -10
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    _count(steps, "steps", 0)
    _count(interval, "interval (steps between frames and log lines)", 1)
    _number(timestep_fs, "timestep", "fs")
    if ensemble == "nve":
        _number(temperature_K, "temperature (of the initial velocities)", "K", strict=False)
    else:
        _number(temperature_K, "temperature", f"K for the {ensemble} thermostat")
    if ensemble == "langevin":
        _number(friction, "friction", "1/fs", hint="; for dynamics without a thermostat use the nve ensemble")
    if ensemble == "npt":
        try:
            pressure = float(pressure_bar)
        except (TypeError, ValueError):
            raise ValueError(f"pressure must be a number of bar, got {pressure_bar!r}") from None
        if not math.isfinite(pressure):
            raise ValueError(f"pressure must be a finite number of bar, got {pressure_bar!r}")
        _number(ttime_fs, "thermostat damping time", "fs")
        _number(ptime_fs, "barostat damping time", "fs")
    _number(skin, "skin", "Å", strict=False)


class _TrajectoryWriter:
    """Append frames (with energy, forces and stress) to an ASE trajectory or an extxyz file.

    The frames go to ``path + ".tmp"`` (see :func:`clebsch._atomic.partial_path`),
    each flushed as it is written, and :meth:`close` moves that file to
    ``path``. A run killed with ``kill -9`` therefore leaves any earlier file at
    ``path`` untouched, and the frames written so far readable in the ``.tmp``.
    """

    def __init__(self, path, atoms):
        self.path = os.fspath(path)
        self.partial = partial_path(self.path)
        self.atoms = atoms
        self.frames = 0
        self.extxyz = self.path.endswith((".xyz", ".extxyz"))
        if self.extxyz:
            open(self.partial, "w").close()
            self.traj = None
        else:
            self.traj = Trajectory(self.partial, "w", atoms)

    def __call__(self):
        if self.extxyz:
            from ase.io import write

            with open(self.partial, "a") as f:
                write(f, self.atoms, format="extxyz")
                f.flush()
        else:
            self.traj.write()
        self.frames += 1

    def close(self):
        """Close the file and move it into place (an empty one is dropped, leaving ``path`` as it was)."""
        if self.traj is not None:
            self.traj.close()
            self.traj = None
        if self.frames:
            os.replace(self.partial, self.path)
        elif os.path.exists(self.partial):
            os.unlink(self.partial)


class _Log:
    """ASE's MD log written to ``path + ".tmp"`` and moved to ``path`` when closed; ``"-"`` is stdout."""

    def __init__(self, dyn, atoms, logfile):
        from ase.md import MDLogger

        self.path = None if logfile == "-" or hasattr(logfile, "write") else os.fspath(logfile)
        target = logfile if self.path is None else partial_path(self.path)
        self.logger = MDLogger(dyn, atoms, target, header=True, stress=False, peratom=False, mode="w")

    def __call__(self):
        self.logger()
        if hasattr(self.logger.logfile, "flush"):
            self.logger.logfile.flush()

    def close(self):
        self.logger.close()
        if self.path is not None and os.path.exists(partial_path(self.path)):
            os.replace(partial_path(self.path), self.path)


class _Watch:
    """Says once, as a warning, when a run goes wrong without failing.

    Two signs that a trajectory is not physics any more while every number stays finite: the total
    energy of an NVE run drifting by more than ``drift`` eV per atom from its start (a time step too
    long for the fastest vibration, or forces that are not the gradient of a smooth energy), and a
    system heating past ``max(5 x target, 1500 K)`` in any ensemble (atoms flung apart by a model
    outside what it was trained on).
    """

    def __init__(self, dyn, atoms, ensemble: str, temperature_K: float, timestep_fs: float, drift: float = 0.05):
        self.dyn, self.atoms, self.ensemble, self.timestep_fs, self.drift = dyn, atoms, ensemble, timestep_fs, drift
        self.n = max(len(atoms), 1)
        self.start = atoms.get_potential_energy() + atoms.get_kinetic_energy()
        self.hot = max(5.0 * float(temperature_K), 1500.0)
        self.said = set()

    def __call__(self):
        step = self.dyn.nsteps
        if self.ensemble == "nve" and "drift" not in self.said:
            change = (self.atoms.get_potential_energy() + self.atoms.get_kinetic_energy() - self.start) / self.n
            if abs(change) > self.drift:
                self.said.add("drift")
                warnings.warn(
                    f"NVE total energy changed by {change * 1000:+.0f} meV/atom from the start by step {step} "
                    f"(time step {self.timestep_fs:g} fs): the time step is too long for the fastest vibration "
                    f"(try half), or the model's forces are not smooth here", RuntimeWarning, stacklevel=2)
        if "hot" not in self.said:
            temperature = self.atoms.get_temperature()
            if temperature > self.hot:
                self.said.add("hot")
                warnings.warn(
                    f"the temperature reached {temperature:.0f} K at step {step} (past {self.hot:.0f} K): the "
                    f"structure is probably coming apart (a model outside its training data, or a time step "
                    f"too long); look at the trajectory", RuntimeWarning, stacklevel=2)


class _Progress:
    """Progress of a run: a tqdm bar on a terminal, else one plain line every ``every`` steps.

    On a cluster (output redirected to a file) a carriage-return bar turns
    into one unreadable line; the plain lines read as a log instead.
    """

    def __init__(self, dyn, atoms, total: int, interval: int, show: bool, desc: str, stream=None):
        self.dyn, self.atoms, self.total, self.desc = dyn, atoms, total, desc
        self.stream = stream if stream is not None else sys.stderr
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = max(int(interval), 1)
        self.every = self.interval * max(1, round(total / (20 * self.interval)))
        self.bar = None
        self.lines = show and not tty
        if show and tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, file=self.stream)
        self.start = time.perf_counter()

    def __call__(self):
        n = self.dyn.nsteps
        if self.bar is not None:
            self.bar.update(n - self.bar.n)
            if n and n % self.interval == 0:
                self.bar.set_postfix(T=f"{self.atoms.get_temperature():.0f}K", E=f"{self.atoms.get_total_energy():.4f}eV")
        elif self.lines and n and (n % self.every == 0 or n == self.total):
            elapsed = time.perf_counter() - self.start
            self.stream.write(
                f"{self.desc}: step {n}/{self.total}, T {self.atoms.get_temperature():.1f} K, "
                f"E {self.atoms.get_total_energy():.6f} eV, {n / max(elapsed, 1e-9):.1f} steps/s, "
                f"{elapsed:.1f} s\n"
            )
            self.stream.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()


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
        ``interval`` steps (and the initial one). The frames are written, each
        flushed, to ``trajectory + ".tmp"``, which is moved onto
        ``trajectory`` when the run ends (also when it stops on an error or
        Ctrl-C): a run killed outright leaves an existing ``trajectory``
        untouched and its own frames in the ``.tmp``.
    logfile : str, optional
        ASE's MD log (time, energies, temperature) every ``interval`` steps,
        written the same way; ``"-"`` is stdout.
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
        Show the progress on stderr: a tqdm bar on a terminal, one plain line
        about every 5% of the run otherwise (output redirected to a file).
    observers : sequence of callables
        Called after every step with no argument (e.g. to stop a run by raising).

    Returns
    -------
    dynamics : ase.md.md.MolecularDynamics
        The integrator after the run (its ``atoms`` hold the final state).

    Raises
    ------
    ValueError
        A parameter that cannot give a sane run (negative temperature or
        friction, a non-positive time step, ...: see
        :func:`check_md_parameters`), an output path equal to the model file or
        to the other output, or a structure the model cannot take; all before
        any output is opened. During the run, non-finite positions or atoms
        closer than :data:`clebsch.graph.MIN_DISTANCE` (the calculator checks
        every step).

    Warns
    -----
    RuntimeWarning
        Once each, checked every ``interval`` steps: an NVE run whose total
        energy moved by more than 50 meV/atom from its start, and a run whose
        temperature passed ``max(5 x temperature_K, 1500 K)``.
    """
    check_md_parameters(ensemble, temperature_K, timestep_fs, steps, friction, interval, pressure_bar, ttime_fs,
                        ptime_fs, skin)
    steps, interval = int(steps), int(interval)
    if ensemble == "npt":
        _fully_periodic(atoms, "NPT")
    inputs = {"model file": model} if isinstance(model, (str, os.PathLike)) else {}
    if trajectory is not None:
        check_output_path(trajectory, "trajectory", inputs=inputs,
                          others={"log": logfile} if isinstance(logfile, (str, os.PathLike)) and logfile != "-" else {})
    if isinstance(logfile, (str, os.PathLike)) and logfile != "-":
        check_output_path(logfile, "log", inputs=inputs)
    attach_calculator(model, atoms, device, dtype, skin)
    atoms.get_forces()  # the structure is checked (elements, overlaps, ...) before any output is opened
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
    writer = logger = bar = None
    try:
        if trajectory is not None:
            writer = _TrajectoryWriter(trajectory, atoms)  # ASE calls observers at step 0 too
            dyn.attach(writer, interval=interval)
        if logfile is not None:
            logger = _Log(dyn, atoms, logfile)
            dyn.attach(logger, interval=interval)
        for observer in observers:
            dyn.attach(observer, interval=1)
        dyn.attach(_Watch(dyn, atoms, ensemble, temperature_K, timestep_fs), interval=interval)
        bar = _Progress(dyn, atoms, steps, interval, progress, f"MD {ensemble}")
        dyn.attach(bar, interval=1)
        try:
            dyn.run(steps)
        except ValueError as err:  # name the step (the calculator names the atoms)
            kept = f"; the {writer.frames} frames so far are in {writer.path!r}" if writer and writer.frames else ""
            raise ValueError(f"{err} (at MD step {dyn.nsteps} of {steps}{kept})") from err
    finally:
        for closing in (bar, writer, logger):
            if closing is not None:
                closing.close()
    return dyn


def check_relax_parameters(fmax: float = 0.05, optimizer: str = "bfgs", steps: int = 500) -> None:
    """Raise a :class:`ValueError` naming the first relaxation parameter that is not usable.

    >>> check_relax_parameters(fmax=0)
    Traceback (most recent call last):
    ...
    ValueError: fmax must be a finite number above 0 eV/Å, got 0
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    _number(fmax, "fmax", "eV/Å")
    _count(steps, "steps", 0)


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
        ASE trajectory of every step, written to ``trajectory + ".tmp"`` and
        moved into place when the relaxation ends: a run killed outright
        leaves an existing ``trajectory`` untouched.
    logfile : str or None
        The optimizer's log; ``"-"`` is stdout, ``None`` silent.

    Returns
    -------
    converged : bool
        Whether ``fmax`` was reached within ``steps``.
    """
    check_relax_parameters(fmax, optimizer, steps)
    if cell:
        _fully_periodic(atoms, "cell relaxation")
    if trajectory is not None:
        inputs = {"model file": model} if isinstance(model, (str, os.PathLike)) else {}
        check_output_path(trajectory, "trajectory", inputs=inputs)
    attach_calculator(model, atoms, device, dtype, skin)
    atoms.get_forces()  # the structure is checked before any output is opened
    from ase.optimize import BFGS, FIRE

    target = atoms
    if cell:
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(atoms)
    opt_cls = BFGS if optimizer == "bfgs" else FIRE
    partial = None if trajectory is None else partial_path(trajectory)
    opt = opt_cls(target, trajectory=partial, logfile=logfile)
    try:
        converged = opt.run(fmax=fmax, steps=int(steps))
    except ValueError as err:  # name the step (the calculator names the atoms)
        raise ValueError(f"{err} (at optimizer step {opt.nsteps})") from err
    finally:
        if getattr(opt, "trajectory", None) is not None and hasattr(opt.trajectory, "close"):
            opt.trajectory.close()
        if hasattr(opt, "close"):
            opt.close()
        if partial is not None and os.path.exists(partial):
            os.replace(partial, os.fspath(trajectory))
    return bool(converged)
