"""Atomic checkpoints: write to a temporary file in the same folder, then rename.

A run killed at any moment leaves either the previous checkpoint or the new
one, never half a file. The writers themselves (:func:`atomic_save`,
:func:`atomic_write_text`) live in :mod:`clebsch._atomic` and are re-exported here.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_save, atomic_write_text

__all__ = ["atomic_save", "atomic_write_text", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]


def rng_state() -> dict:
    """The states of Python's, NumPy's and torch's random generators."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, **state) -> None:
    """Save a training state dict atomically."""
    atomic_save(state, path)


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; a clear error if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise ValueError(f"checkpoint {path} is corrupted or truncated ({type(err).__name__}: {err})") from None
