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
