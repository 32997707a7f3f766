import ase.io
import numpy as np

from ase.build import molecule


def water_frames(n=6, seed=0, energy_key="energy", forces_key="forces"):
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = molecule("H2O")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.info[energy_key] = -14.0 + 0.1 * i
        forces = rng.normal(size=(3, 3))
        atoms.arrays[forces_key] = forces - forces.mean(axis=0)  # summing to zero, as a gradient does
        atoms.info["config_type"] = "water" if i % 2 else "vapour"
        frames.append(atoms)
    return frames



import ase.io
import pytest


@pytest.fixture
def water_file(tmp_path):
    path = tmp_path / "water.xyz"
    ase.io.write(path, water_frames(), format="extxyz")
    return path
