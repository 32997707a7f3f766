"""Molecular dynamics and relaxation: conservation, thermostat/barostat sanity, robust output."""

import warnings

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.io import read

from clebsch.calculators import ClebschCalculator, md, relax


def _force_rmse(calc, frames):
    errors = [calc.get_forces(atoms) - atoms.get_forces() for atoms in frames]
    return float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))


def test_nve_conserves_energy_with_a_trained_model(trained_ethanol):
    """The issue's protocol: a model trained on the bundled molecule (GFN2-xTB ethanol), 1,000 steps of 0.5 fs of
    NVE from a held-out frame through ClebschCalculator and ASE's velocity Verlet; drift < 1 meV/atom."""
    held_out = trained_ethanol["held_out"]
    calc = ClebschCalculator(trained_ethanol["path"])
    target = float(np.sqrt(np.mean(np.concatenate([a.get_forces() for a in held_out]) ** 2)))
    trained = _force_rmse(calc, held_out)
    untrained = _force_rmse(ClebschCalculator(trained_ethanol["untrained"]), held_out)
    # it learned: held-out force error well below the untrained model's and below the forces' own size
    assert trained < 0.3 * untrained, (trained, untrained)
    assert trained < 0.2 * target, (trained, target)  # 0.11 eV/Å against an RMS of 1.05 when written

    atoms = held_out[0].copy()
    atoms.calc = None
    total = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        md(calc, atoms, "nve", temperature_K=300, timestep_fs=0.5, steps=1000, seed=0, progress=False,
           observers=[lambda: total.append(atoms.get_total_energy())])
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    total = np.array(total)
    assert len(total) == 1001  # ASE calls observers at step 0 too
    assert atoms.get_temperature() > 50  # it really moved
    assert np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1).max() < 5.0  # still a molecule
    drift = np.abs(total - total[0]).max() / len(atoms)
    print(f"trained PaiNN, {trained_ethanol['epochs']} epochs: held-out force RMSE {trained:.3f} eV/A "
          f"(untrained {untrained:.3f}, |F| rms {target:.3f}); NVE max |E(t) - E(0)| = {1e3 * drift:.4f} meV/atom")
    assert drift < 1e-3  # eV/atom


def test_a_time_step_too_long_is_said_once(trained_ethanol):
    """Velocity Verlet at 5 fs cannot follow a C-H stretch (~11 fs): the energy is not conserved, and the run says so
    once instead of writing a trajectory that is no longer physics without a word."""
    atoms = trained_ethanol["held_out"][0].copy()
    atoms.calc = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        md(trained_ethanol["path"], atoms, "nve", temperature_K=300, timestep_fs=5.0, steps=200, seed=0,
           progress=False, interval=5)
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    drift = [m for m in said if m.startswith("NVE total energy changed by")]
    assert len(drift) == 1 and "time step 5 fs" in drift[0], said
    assert len(said) <= 2  # the drift and, at most, the heating: each once


def test_the_watch_speaks_once_per_kind(model):
    from clebsch.calculators._dynamics import _Watch

    atoms = molecule("H2O")
    atoms.calc = ClebschCalculator(model)

    class Dynamics:
        nsteps = 40

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watch = _Watch(Dynamics, atoms, "nve", 300.0, 0.5)
        watch()
        assert not caught  # nothing changed
        atoms.set_momenta(np.full((3, 3), 0.6) * np.sqrt(atoms.get_masses())[:, None])  # ~4,000 K
        watch()
        watch()
    said = [str(w.message) for w in caught]
    assert len(said) == 2, said
    assert said[0].startswith("NVE total energy changed by +") and "by step 40" in said[0]
    assert said[1].startswith("the temperature reached") and "past 1500 K" in said[1]
    with warnings.catch_warnings(record=True) as caught:  # a thermostat's energy is not conserved: no drift check
        warnings.simplefilter("always")
        _Watch(Dynamics, atoms, "langevin", 3000.0, 0.5)()
    assert not caught  # 15,000 K is the limit at 3,000 K


def test_langevin_is_seeded(model):
    finals = []
    for _ in range(2):
        atoms = molecule("H2O")
        md(model, atoms, "langevin", temperature_K=500, timestep_fs=0.5, steps=20, seed=3, progress=False)
        finals.append(atoms.positions.copy())
    np.testing.assert_array_equal(finals[0], finals[1])


def test_npt_keeps_a_sane_volume(trained_copper, tmp_path):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    v0 = atoms.get_volume()
    md(trained_copper, atoms, "npt", temperature_K=300, timestep_fs=2.0, steps=200, seed=0, progress=False,
       logfile=tmp_path / "npt.log", interval=20)
    assert 0.9 < atoms.get_volume() / v0 < 1.1
    assert 100 < atoms.get_temperature() < 700
    lines = (tmp_path / "npt.log").read_text().splitlines()
    assert "T[K]" in lines[0] and len(lines) == 1 + 200 // 20 + 1


@pytest.mark.parametrize("suffix", [".traj", ".xyz"])
def test_killed_md_leaves_a_readable_trajectory(model, tmp_path, suffix):
    atoms = molecule("H2O")
    path = tmp_path / f"md{suffix}"
    calls = []

    def kill():
        calls.append(1)
        if len(calls) == 25:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        md(model, atoms, "nve", steps=100, trajectory=path, interval=10, progress=False, observers=[kill])
    frames = read(path, ":")
    assert len(frames) == 3  # steps 0, 10 and 20
    assert frames[-1].get_potential_energy() == pytest.approx(frames[-1].get_potential_energy())
    assert frames[-1].get_forces().shape == (3, 3)


def test_relax_reaches_fmax(trained_copper):
    for optimizer in ("bfgs", "fire"):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
        atoms.rattle(0.1, seed=4)
        assert relax(trained_copper, atoms, fmax=0.01, optimizer=optimizer, steps=1000, logfile=None)
        assert np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.01


def test_cell_relaxation(trained_copper, tmp_path):
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True)
    atoms.rattle(0.02, seed=5)
    assert relax(trained_copper, atoms, fmax=0.005, cell=True, steps=300, logfile=None, trajectory=tmp_path / "r.traj")
    assert np.abs(atoms.get_stress()).max() * atoms.get_volume() < 0.01
    assert 3.45 < atoms.get_volume() ** (1 / 3) < 3.75
    assert len(read(tmp_path / "r.traj", ":")) > 1


def test_open_structure_refuses_npt_and_cell_relaxation(model):
    with pytest.raises(ValueError, match="periodic in all three"):
        md(model, molecule("H2O"), "npt", steps=1, progress=False)
    with pytest.raises(ValueError, match="periodic in all three"):
        relax(model, molecule("H2O"), cell=True)


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="ensemble"):
        md(model, molecule("H2O"), "nvt", steps=1)
    with pytest.raises(ValueError, match="optimizer"):
        relax(model, molecule("H2O"), optimizer="lbfgsb")


def test_md_accepts_a_calculator(model):
    atoms = molecule("H2O")
    calc = ClebschCalculator(model, skin=0.5)
    md(calc, atoms, "nve", steps=10, progress=False)
    assert atoms.calc is calc and calc.neighbors.builds >= 1
