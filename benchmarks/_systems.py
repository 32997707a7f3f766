"""Test systems shared by the benchmark scripts (numpy only, so reference workers can import it too)."""

from __future__ import annotations

import numpy as np


def water_box(n_atoms: int, seed: int = 0):
    """Water molecules on a jittered cubic lattice at liquid density; returns (positions, cell, numbers)."""
    rng = np.random.default_rng(seed)
    n_mol = n_atoms // 3
    length = (3 * n_mol / 0.1) ** (1 / 3)
    per_side = int(np.ceil(n_mol ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(per_side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_mol]
    oxygen = (grid + 0.5 + rng.uniform(-0.1, 0.1, size=grid.shape)) * (length / per_side)
    u = rng.normal(size=(n_mol, 3))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    w = np.cross(u, rng.normal(size=(n_mol, 3)))
    w /= np.linalg.norm(w, axis=-1, keepdims=True)
    angle = np.deg2rad(104.5)  # H-O-H
    directions = np.stack([u, np.cos(angle) * u + np.sin(angle) * w], axis=1)
    hydrogens = oxygen[:, None, :] + 0.96 * directions
    positions = np.concatenate([oxygen[:, None], hydrogens], axis=1).reshape(-1, 3) % length
    numbers = np.tile([8, 1, 1], n_mol)
    return positions, np.eye(3) * length, numbers
