"""Forces that are not minus the gradient of the energies, in the same units, are caught when a file is read.

A trajectory of EMT molecular dynamics (frames 1 fs apart for ethanol, 8 fs for copper) is the data; its forces are then flipped in
sign or written in other units, as data files from other codes often are.
"""

import warnings

import ase.io
import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

from clebsch.data import check_force_consistency, graph_from_atoms
from clebsch.data.statistics import force_energy_consistency


def _trajectory(atoms, frames=30, every=4, timestep_fs=0.5):
    atoms.calc = EMT()
    thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    out = []
    for _ in range(frames):
        dyn.run(every)
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        out.append(frame)
    return out


@pytest.fixture(scope="module")
def trajectories():
    cluster = molecule("CH3CH2OH")
    copper = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    copper.rattle(0.05, seed=0)
    return {"molecule": _trajectory(cluster, every=2), "periodic": _trajectory(copper, every=8, timestep_fs=1.0)}


def _graphs(frames, energy=1.0, forces=1.0):
    graphs = []
    for atoms in frames:
        g = graph_from_atoms(atoms, 3.0, keys={"energy": "energy", "forces": "forces"}, dtype=torch.float64)
        g.targets["energy"] = g.targets["energy"] * energy
        g.targets["forces"] = g.targets["forces"] * forces
        graphs.append(g)
    return graphs


@pytest.mark.parametrize("kind", ["molecule", "periodic"])
def test_consistent_data_have_slope_one(trajectories, kind):
    slope, correlation, pairs = force_energy_consistency(_graphs(trajectories[kind]))
    assert pairs == 29
    assert abs(slope - 1.0) < 0.03 and correlation > 0.99, (slope, correlation)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_force_consistency(_graphs(trajectories[kind]), "file 'md.xyz'")


@pytest.mark.parametrize("energy, forces, said", [
    (1.0, -1.0, "is their sign flipped?"),
    (1.0, 0.529177210903, "this is the factor of forces in eV/Bohr read as eV/Å"),
    (1.0, 0.529177210903 / 27.211386245988, "this is the factor of forces in Ha/Bohr read as eV/Å"),
    (1 / 27.211386245988, 1.0, "this is the factor of energies in Ha read as eV"),
    (23.060547830619, 1.0, "this is the factor of energies in kcal/mol read as eV"),
    (1.0, 3.0, "energies and forces are not in matching units"),
    (1 / 9, 1.0, "1/9, as if the energies were per atom"),
])
def test_a_sign_or_unit_mixup_is_named(trajectories, energy, forces, said):
    with pytest.warns(UserWarning, match="file 'md.xyz': over 29 pairs of neighbouring frames") as caught:
        slope, _, _ = check_force_consistency(_graphs(trajectories["molecule"], energy, forces), "file 'md.xyz'")
    assert said in str(caught[0].message)
    assert slope == pytest.approx(energy / forces, rel=0.03)


def test_frames_far_apart_give_no_verdict(trajectories):
    frames = trajectories["molecule"]
    rattled = []
    for i in range(20):  # independent rattles of one structure: no two are neighbours
        atoms = frames[0].copy()
        atoms.rattle(0.1, seed=i)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        rattled.append(atoms)
    assert force_energy_consistency(_graphs(rattled, forces=-1.0)) is None
    assert force_energy_consistency(_graphs(frames[:8])) is None  # too few pairs to judge


def test_training_warns_before_it_starts(trajectories, tmp_path):
    from clebsch.cli import main

    frames = []
    for atoms in trajectories["molecule"]:
        atoms = atoms.copy()
        atoms.calc = None
        source = trajectories["molecule"][len(frames)]
        atoms.info["energy"] = source.get_potential_energy()
        atoms.arrays["forces"] = -source.get_forces()
        frames.append(atoms)
    path = tmp_path / "flipped.xyz"
    ase.io.write(path, frames)
    args = ["train", "--set", f"data.train={path}", "--set", f"run_dir={tmp_path / 'run'}", "--set", "model.name=schnet",
            "--set", "model.num_layers=1", "--set", "model.channels=4", "--set", "model.cutoff=3.0",
            "--set", "training.max_epochs=1", "--set", "training.progress=false", "--set", "training.plots=false"]
    with pytest.warns(UserWarning, match=r"flipped.xyz': over 29 pairs .* is their sign flipped\?"):
        assert main(args) == 0
