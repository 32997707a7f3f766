"""Train / validation / test splits: seeded, reproducible, saved as JSON of indices."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["split_indices", "save_split", "load_split"]


def _count(size, n: int, name: str) -> int:
    """A float is a fraction of ``n`` in [0, 1); an int is a count."""
    if size is None:
        return 0
    if isinstance(size, float):
        if not 0.0 <= size < 1.0:
            raise ValueError(f"{name} fraction must be in [0, 1), got {size} (pass an int for a count)")
        return int(round(size * n))
    if isinstance(size, bool) or int(size) != size or size < 0:
        raise ValueError(f"{name} must be a fraction in [0, 1) or a non-negative count, got {size!r}")
    return int(size)


def split_indices(n: int, valid=0.1, test=0.0, train=None, seed: int = 0) -> dict[str, list[int]]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into train / valid / test.

    Sizes are fractions (floats below 1) or counts (ints). ``train`` defaults to
    everything left over.

    Examples
    --------
    >>> s = split_indices(10, valid=0.2, test=2, seed=1)
    >>> [len(s[k]) for k in ("train", "valid", "test")]
    [6, 2, 2]
    >>> s == split_indices(10, valid=0.2, test=2, seed=1)
    True
    """
    if n <= 0:
        raise ValueError(f"cannot split an empty dataset (n={n})")
    n_valid, n_test = _count(valid, n, "valid"), _count(test, n, "test")
    n_train = n - n_valid - n_test if train is None else _count(train, n, "train")
    if n_train + n_valid + n_test > n or n_train < 0:
        raise ValueError(f"split sizes train={n_train}, valid={n_valid}, test={n_test} exceed the {n} structures")
    if n_train == 0:
        raise ValueError(f"the training split is empty (n={n}, valid={n_valid}, test={n_test})")
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return {
        "train": perm[:n_train],
        "valid": perm[n_train:n_train + n_valid],
        "test": perm[n_train + n_valid:n_train + n_valid + n_test],
    }


def save_split(path, split: dict[str, list[int]], **meta) -> None:
    """Write a split (and optional metadata such as the seed and the file) as JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, **{k: [int(i) for i in v] for k, v in split.items()}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh)
    os.replace(tmp, path)


def load_split(path) -> dict[str, list[int]]:
    """Read a split written by :func:`save_split` (metadata dropped)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"split file not found: '{path}'")
    with open(path) as fh:
        payload = json.load(fh)
    return {k: list(v) for k, v in payload.items() if k != "meta"}
