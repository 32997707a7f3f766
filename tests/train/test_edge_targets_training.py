"""A per-edge target (one value per ordered atom pair, as Hamiltonian blocks are) trains from a config."""

import csv

import ase.io
import numpy as np
import pytest
from ase.build import molecule

from clebsch.train.trainer import train

from .conftest import quiet


def frames(n=12):
    out = []
    for seed in range(n):
        atoms = molecule("CH3OH")
        atoms.rattle(0.05, seed=seed)
        pairs, values = [], []
        for i in range(len(atoms)):
            for j in range(len(atoms)):
                d = atoms.positions[j] - atoms.positions[i]
                r = np.linalg.norm(d)
                if i != j and r < 2.5:
                    pairs.append((i, j, 0, 0, 0))
                    values.append([np.exp(-r), *(d / r * np.exp(-r))])  # 0e + 1o, pointing from i to j
        atoms.info["coupling"] = np.array(values).reshape(-1)
        atoms.info["coupling_pairs"] = np.array(pairs, dtype=float).reshape(-1)
        atoms.info["energy"] = 0.0
        atoms.arrays["forces"] = np.zeros((len(atoms), 3))
        out.append(atoms)
    return out


def test_edge_target_trains_and_is_reported(tmp_path):
    data = tmp_path / "pairs.xyz"
    ase.io.write(data, frames())
    run = tmp_path / "run"
    config = {
        "run_dir": str(run), "seed": 0, "dtype": "float64",
        "model": {"name": "painn", "cutoff": 2.5, "num_layers": 1, "channels": 8,
                  "targets": {"coupling": {"level": "edge", "irreps": "0e + 1o"}}},
        "data": {"train": str(data), "valid_fraction": 0.25, "batch_size": 3,
                 "keys": {"energy": "energy", "forces": "forces", "coupling": "coupling"}},
        "loss": {"weights": {"energy": 0.0, "forces": 0.0, "coupling": 1.0}},
        "optimizer": {"lr": 0.01},
        "training": {"max_epochs": 15, "progress": False, "plots": False, "ema_decay": None},
    }
    result = train(config, log=quiet)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert "coupling_mae" in rows[0]
    first, last = float(rows[0]["coupling_mae"]), float(rows[-1]["coupling_mae"])
    assert last < 0.6 * first, (first, last)
    assert result["test_metrics"]["all"]["coupling_mae"] == pytest.approx(last, rel=0.5)
