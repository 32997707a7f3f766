import itertools

import numpy as np


def brute_force_pairs(positions, cutoff, cell=None, pbc=(False, False, False)):
    """Set of (sender j, receiver i, s0, s1, s2) within cutoff, by enumerating images."""
    positions = np.asarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    reach = []
    if pbc.any():
        inv = np.linalg.inv(cell)
        for d in range(3):
            # distance between lattice planes spanned by the other two vectors
            plane = 1.0 / np.linalg.norm(inv[:, d])
            extent = np.ptp(positions @ inv, axis=0)[d] if len(positions) else 0
            reach.append(int(np.ceil(cutoff / plane + extent)) + 1 if pbc[d] else 0)
    else:
        reach = [0, 0, 0]
    out = set()
    ranges = [range(-r, r + 1) for r in reach]
    for s in itertools.product(*ranges):
        shift = np.asarray(s, dtype=np.float64) @ cell
        diff = positions[None, :, :] - positions[:, None, :] + shift  # [i, j]
        dist = np.linalg.norm(diff, axis=-1)
        i_idx, j_idx = np.nonzero(dist < cutoff)
        for i, j in zip(i_idx, j_idx):
            if i == j and not any(s):
                continue
            out.add((int(j), int(i), *s))
    return out


def edge_set(edge_index, shifts):
    return {
        (int(j), int(i), *map(int, np.rint(s)))
        for (j, i), s in zip(edge_index.t().tolist(), shifts.numpy())
    }


import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
