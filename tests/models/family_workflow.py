"""Workflow checks shared by family test files: a family trains on ethanol frames, packages,
runs in the ASE calculator and exports with the same numbers."""

from pathlib import Path

import ase.io
import torch

import clebsch
from clebsch.calculators import ClebschCalculator, export, load_exported
from clebsch.data import read_dataset
from clebsch.graph import AtomicGraph, batch
from clebsch.models import build_model
from clebsch.models.package import save_package

CUTOFF = 4.0
ETHANOL = Path(__file__).resolve().parents[2] / "examples" / "ethanol_xtb.xyz"


def small(NAME, SMALL, seed=0, **extra):
    torch.manual_seed(seed)
    return build_model({"name": NAME, "species": ["H", "C", "O"], "cutoff": CUTOFF,
                        "atomic_energies": [-10.0, -40.0, -60.0], **SMALL, **extra})


def loss_fn(model, graph):
    out = model(graph)
    n_atoms = torch.bincount(graph.batch, minlength=graph.num_graphs).to(out["energy"].dtype)
    e_loss = (((out["energy"] - graph.targets["energy"]) / n_atoms) ** 2).mean()
    return e_loss + ((out["forces"] - graph.targets["forces"]) ** 2).mean()


def check_trains_on_ethanol_frames(NAME, SMALL):
    graph = batch(read_dataset(ETHANOL, CUTOFF, index="0:400:25", dtype=torch.float32))
    energy, forces = graph.targets["energy"], graph.targets["forces"]
    torch.manual_seed(0)
    model = build_model({"name": NAME, "species": ["H", "C", "O"], "cutoff": CUTOFF,
                         "atomic_energies": [float(energy.mean() / 9)] * 3,
                         "scale": float(forces.pow(2).mean().sqrt()), **SMALL}).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    initial = float(loss_fn(model, graph).detach())
    for _ in range(60):
        optimizer.zero_grad()
        loss = loss_fn(model, graph)
        loss.backward()
        optimizer.step()
    final = float(loss_fn(model, graph).detach())
    assert final < initial / 4, f"loss {initial:.4g} -> {final:.4g}"


def check_package_calculator_and_export(NAME, SMALL, tmp_path):
    model = small(NAME, SMALL).double().eval()
    atoms = ase.io.read(ETHANOL, index=7)
    graph = AtomicGraph.from_ase(atoms, CUTOFF, dtype=torch.float64)
    ref = model(graph)

    loaded = clebsch.load(save_package(model, tmp_path / "model.pt"))
    assert loaded.config["name"] == NAME
    atoms.calc = ClebschCalculator(tmp_path / "model.pt")
    assert abs(atoms.get_potential_energy() - float(ref["energy"].detach())) < 1e-8
    assert abs(atoms.get_forces() - ref["forces"].detach().numpy()).max() < 1e-8

    path = export(model, tmp_path / "model.pt2")
    got = load_exported(path)(graph)
    assert torch.allclose(got["energy"], ref["energy"].detach(), rtol=0, atol=1e-10)
    assert torch.allclose(got["forces"], ref["forces"].detach(), rtol=0, atol=1e-10)
    # the exported file runs a structure of another size through the ASE calculator
    other = ase.io.read(ETHANOL, index=3)[:6]
    other.calc = ClebschCalculator(path)
    expected = model(AtomicGraph.from_ase(other, CUTOFF, dtype=torch.float64))
    assert abs(other.get_potential_energy() - float(expected["energy"].detach())) < 1e-8
