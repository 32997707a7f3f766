"""Allegro: strict locality, training, packaging, the ASE calculator and torch.export."""

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

import clebsch
from clebsch.calculators import ClebschCalculator, export
from clebsch.data import read_dataset
from clebsch.graph import AtomicGraph, batch
from clebsch.models import build_model
from clebsch.models.package import save_package

from .conftest import small_model

ETHANOL = Path(__file__).resolve().parents[2] / "examples" / "ethanol_xtb.xyz"
CUTOFF = 3.0

# a group of atoms A, a neighbour B of A, and an atom X beyond the cutoff of every atom of A but within B's
GROUP = [[0.0, 0.0, 0.0], [1.1, 0.2, 0.0], [0.3, 1.0, 0.4], [-0.8, -0.4, 0.6]]
B = [2.5, 0.3, 0.1]
X_BEFORE = [4.3, 0.9, 0.0]
X_AFTER = [4.6, -0.5, 0.6]


def locality_graphs():
    numbers = torch.tensor([6, 8, 1, 1, 6, 1])
    graphs = []
    for x in (X_BEFORE, X_AFTER):
        pos = torch.tensor(GROUP + [B, x], dtype=torch.float64)
        d = torch.cdist(pos, pos)
        assert (d[:4, 5] > CUTOFF + 0.2).all() and d[4, 5] < CUTOFF - 0.5 and (d[:4, 4] < CUTOFF).any()
        graphs.append(AtomicGraph.from_tensors(pos, numbers, CUTOFF))
    return graphs


def test_atomic_energies_are_strictly_local():
    """Moving an atom outside the cutoff of atoms A (but inside a neighbour's) leaves A's energies unchanged
    with Allegro; with two NequIP layers they change (the neighbour passes it on)."""
    before, after = locality_graphs()
    allegro = small_model("allegro", cutoff=CUTOFF, outputs=["energy", "forces"])
    e0, e1 = (allegro(g)["atomic_energies"].detach() for g in (before, after))
    assert (e1[:4] - e0[:4]).abs().max() < 1e-12
    assert (e1[4] - e0[4]).abs() > 1e-6  # the neighbour B sees the move
    nequip = small_model("nequip", cutoff=CUTOFF, outputs=["energy", "forces"], num_layers=2)
    n0, n1 = (nequip(g)["atomic_energies"].detach() for g in (before, after))
    assert (n1[:4] - n0[:4]).abs().max() > 1e-6


def test_trains_on_ethanol():
    """A few dozen Adam steps on eight ethanol frames lower the energy + forces loss clearly."""
    torch.manual_seed(0)
    graphs = read_dataset(ETHANOL, 4.0, index="0:400:50", dtype=torch.float32)
    graph = batch(graphs)
    energy, forces = graph.targets["energy"], graph.targets["forces"]
    n_atoms = graph.num_atoms / graph.num_graphs
    model = build_model({
        "name": "allegro", "species": ["H", "C", "O"], "cutoff": 4.0,
        "atomic_energies": [float(energy.mean() / n_atoms)] * 3, "scale": float(forces.pow(2).mean().sqrt()),
    }).train()  # the default sizes
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_fn():
        out = model(graph)
        e_loss = (((out["energy"] - energy) / n_atoms) ** 2).mean()
        return e_loss + ((out["forces"] - forces) ** 2).mean()

    initial = float(loss_fn().detach())
    for _ in range(40):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
    final = float(loss_fn().detach())
    assert final < initial / 8, f"loss {initial:.4g} -> {final:.4g}"


@pytest.fixture(scope="module")
def model():
    return small_model("allegro", species=("H", "C", "O"), cutoff=CUTOFF,
                       outputs=["energy", "forces", "stress", "dipole"])


def ethanol(seed=0):
    atoms = Atoms("C2OH6", positions=[
        [-0.0, -0.56, 0.0], [1.26, 0.31, 0.0], [-1.2, 0.22, 0.0], [-0.05, -1.2, 0.89], [-0.05, -1.2, -0.89],
        [1.3, 0.95, 0.89], [1.3, 0.95, -0.89], [2.15, -0.32, 0.0], [-1.95, -0.37, 0.0]])
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_package_and_calculator(model, tmp_path):
    path = save_package(model, tmp_path / "allegro.pt")
    loaded = clebsch.load(path)
    atoms = ethanol(1)
    ref = ClebschCalculator(model)
    ref.calculate(atoms, ["energy", "forces"])
    got = ClebschCalculator(loaded)
    got.calculate(atoms, ["energy", "forces"])
    assert got.results["energy"] == pytest.approx(ref.results["energy"], abs=1e-10)
    np.testing.assert_allclose(got.results["forces"], ref.results["forces"], atol=1e-10)
    from_file = ClebschCalculator(str(path))
    from_file.calculate(atoms, ["energy", "forces"])
    assert from_file.results["energy"] == pytest.approx(ref.results["energy"], abs=1e-10)
    assert np.abs(ref.results["forces"]).max() > 1e-4


def test_export_gives_the_same_energy_and_forces(model, tmp_path):
    path = export(model, tmp_path / "allegro.pt2")
    got, ref = ClebschCalculator(path), ClebschCalculator(model)
    for atoms in (ethanol(2), ethanol(3)[:5]):
        ref.calculate(atoms, ["energy", "forces", "dipole"])
        got.calculate(atoms, ["energy", "forces", "dipole"])
        assert got.results["energy"] == pytest.approx(ref.results["energy"], abs=1e-9)
        np.testing.assert_allclose(got.results["energies"], ref.results["energies"], atol=1e-9)
        np.testing.assert_allclose(got.results["forces"], ref.results["forces"], atol=1e-9)
        np.testing.assert_allclose(got.results["dipole"], ref.results["dipole"], atol=1e-9)
    # an atom without neighbours: its reference energy, no force
    lone = Atoms("OH", positions=[[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    got.calculate(lone, ["energy", "forces"])
    ref.calculate(lone, ["energy", "forces"])
    assert got.results["energy"] == pytest.approx(ref.results["energy"], abs=1e-12)
    assert np.abs(got.results["forces"]).max() == 0.0
