"""Small float64 models and structures for the calculator tests."""

import pytest
import torch
from ase.build import bulk, molecule

from clebsch.models import build_model

SPECIES = ["H", "C", "O", "Cu"]


def small_model(name="schnet", cutoff=3.0, seed=0, **extra):
    """A small untrained model in float64 with every output the calculator serves."""
    config = {
        "name": name,
        "species": SPECIES,
        "cutoff": cutoff,
        "atomic_energies": [-13.6, -1029.0, -2041.0, -1300.0],
        "scale": 0.5,
        "outputs": ["energy", "forces", "stress", "dipole"],
        "num_layers": 2,
        "channels": 8,
        **extra,
    }
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            model = build_model(config)
        finally:
            torch.set_default_dtype(previous)
    return model.double().eval()


@pytest.fixture(scope="session")
def model():
    return small_model()


@pytest.fixture
def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    return atoms


@pytest.fixture
def copper():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=2)
    return atoms


@pytest.fixture(scope="session")
def trained_copper():
    """A tiny SchNet fitted for a few seconds to EMT copper at several lattice constants.

    Enough to give a sane equation of state (pressure near zero at a ~ 3.6 Å)
    for the NPT and cell-relaxation tests.
    """
    import numpy as np
    from ase.calculators.emt import EMT

    from clebsch.graph import AtomicGraph, batch

    rng = np.random.default_rng(0)
    graphs = []
    for k in range(24):
        atoms = bulk("Cu", "fcc", a=rng.uniform(3.45, 3.8), cubic=True)
        atoms.rattle(0.08, seed=k)
        atoms.calc = EMT()
        targets = {"energy": [atoms.get_potential_energy()], "forces": atoms.get_forces()}
        graphs.append(AtomicGraph.from_ase(atoms, 4.0, dtype=torch.float64))
        graphs[-1].targets = {k: torch.as_tensor(np.asarray(v), dtype=torch.float64) for k, v in targets.items()}
    data = batch(graphs)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            model = build_model({
                "name": "schnet", "species": ["Cu"], "cutoff": 4.0, "num_layers": 1, "channels": 16,
                "num_filters": 16, "num_basis": 8, "avg_num_neighbors": 40.0,
                "outputs": ["energy", "forces", "stress"],
            })
        finally:
            torch.set_default_dtype(previous)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(250):
            out = model(data)
            loss = 100 * ((out["energy"] - data.targets["energy"]) / 4).pow(2).mean()
            loss = loss + (out["forces"] - data.targets["forces"]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()
