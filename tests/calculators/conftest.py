"""Small float64 models and structures for the calculator tests."""

from pathlib import Path

import pytest
import torch
from ase.build import bulk, molecule

from clebsch.models import build_model
from clebsch.testing import float64_model

SPECIES = ["H", "C", "O", "Cu"]
TRAIN_EPOCHS = 10  # of the ethanol fit below: about 15 s on one core


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
    return float64_model(config, seed)


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


ETHANOL_XTB = Path(__file__).resolve().parents[2] / "examples" / "ethanol_xtb.xyz"


@pytest.fixture(scope="session")
def trained_ethanol(tmp_path_factory):
    """A small float64 PaiNN trained with ``clebsch.train`` for a few seconds (a fixed number
    of epochs, so the result does not depend on the machine's speed) on the bundled molecule.

    The data are the GFN2-xTB ethanol frames of ``examples/ethanol_xtb.xyz``:
    the model is fitted to the first 400 and the last 100 are held out. Returns
    the packaged model's path, the held-out frames and the same architecture
    untrained (same config, fresh weights), to show that training did something.
    """
    import ase.io

    from clebsch.train.trainer import train

    frames = ase.io.read(ETHANOL_XTB, ":")
    root = tmp_path_factory.mktemp("ethanol")
    ase.io.write(root / "train.xyz", frames[:400])
    config = {
        "run_dir": str(root / "run"),
        "seed": 0,
        "dtype": "float64",
        "device": "cpu",
        "model": {"name": "painn", "cutoff": 4.0, "num_layers": 2, "channels": 16, "num_basis": 8},
        "data": {"train": str(root / "train.xyz"), "valid_fraction": 0.05, "batch_size": 5},
        "optimizer": {"lr": 0.01},
        "scheduler": {"name": "none"},
        "training": {"max_epochs": TRAIN_EPOCHS, "progress": False, "plots": False,
                     "ema_decay": 0.99},
    }
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(config, log=lambda *_: None)
    finally:
        torch.set_num_threads(n)
    from clebsch.train.package import load

    trained = load(result["model_path"]).double().eval()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            untrained = build_model(trained.config)
        finally:
            torch.set_default_dtype(previous)
    return {"path": result["model_path"], "held_out": frames[400:], "untrained": untrained.double().eval(),
            "epochs": result["epochs"]}
