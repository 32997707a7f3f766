"""Shared fixtures: a tiny ethanol data set labelled with ASE's EMT, and a tiny model config."""

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator


def make_frames(n=16, seed=0):
    frames = []
    for i in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.08, seed=seed + i)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        atoms.info["config_type"] = "md" if i % 2 else "rattled"
        frames.append(atoms)
    return frames


@pytest.fixture(scope="session")
def tiny_xyz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.xyz"
    ase.io.write(path, make_frames())
    return path


def tiny_config(data, run_dir, **extra):
    """A config dict for a seconds-long SchNet run."""
    config = {
        "run_dir": str(run_dir),
        "seed": 3,
        "dtype": "float64",
        "device": "cpu",
        "model": {"name": "schnet", "cutoff": 3.0, "num_layers": 2, "channels": 8},
        "data": {"train": str(data), "valid_fraction": 0.25, "test_fraction": 0.25, "batch_size": 4},
        "optimizer": {"lr": 0.005},
        "training": {"max_epochs": 4, "progress": False, "plots": False},
    }
    for key, value in extra.items():
        section, _, name = key.partition("__")
        if name:
            config.setdefault(section, {})[name] = value
        else:
            config[key] = value
    return config


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def quiet(*_):
    pass


np.seterr(all="ignore")
