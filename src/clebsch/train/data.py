"""The training data of a run: reading the files, the split, statistics for the model config.

Reading, splitting and batching come from :mod:`clebsch.data`; this module
only decides, from a :class:`~clebsch.train.config.DataSection`, which files
and which frames make up train / valid / test, and fills the model's "auto"
entries (species, reference energies, scale, average neighbour count).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols

from ..data.dataset import AtomicDataset
from ..data.splits import save_split, split_indices
from ..graph import batch as batch_graphs

__all__ = ["RunData", "load_run_data", "read_file", "statistics", "batches", "isolated_atom_energies"]


@dataclass
class RunData:
    """The train / valid / test graphs of a run and where they came from."""

    train: list
    valid: list = field(default_factory=list)
    test: list = field(default_factory=list)
    split: dict = field(default_factory=dict)


def read_file(path, cutoff: float, keys: dict, dtype: torch.dtype, required=("energy",), targets=None,
              allow_nonfinite: bool = False, units: dict | None = None) -> list:
    """Graphs of every frame of ``path``; errors name the file, the frame and the key."""
    keys = {k: v for k, v in keys.items() if v is not None}
    required = tuple(r for r in required if r in keys)
    return [g for one in file_list(path)
            for g in AtomicDataset.from_file(one, cutoff, keys=keys, required=required, dtype=dtype, targets=targets,
                                             allow_nonfinite=allow_nonfinite, units=units).graphs]


def file_list(spec) -> list[str]:
    """The files of a ``data.train`` / ``valid`` / ``test`` entry: one file or a list of them."""
    return [str(p) for p in spec] if isinstance(spec, (list, tuple)) else [str(spec)]


def describe_files(spec) -> str:
    """``'a.xyz'`` or ``'a.xyz' + 'b.xyz' (frames numbered across the files in order)`` for messages."""
    files = file_list(spec)
    if len(files) == 1:
        return f"file '{files[0]}'"
    return "files " + " + ".join(f"'{f}'" for f in files) + " (frames numbered across the files in order)"


def load_run_data(data_cfg, cutoff: float, dtype: torch.dtype, seed: int, run_dir=None, required=("energy",),
                  keys: dict | None = None, targets=None, allow_nonfinite: bool = False) -> RunData:
    """Read the files of a config's ``data`` section and split them.

    When ``valid`` or ``test`` are not given as files, they are drawn from the
    training file with the seeded :func:`~clebsch.data.split_indices`; the
    split is saved as ``split.json`` in ``run_dir``.
    """
    if data_cfg.train is None:
        raise ValueError("data.train is not set: give a training file (e.g. --set data.train=frames.xyz)")
    keys = data_cfg.keys if keys is None else keys
    opts = dict(targets=targets, allow_nonfinite=allow_nonfinite, units=data_cfg.units or None)
    graphs = read_file(data_cfg.train, cutoff, keys, dtype, required, **opts)
    n = len(graphs)
    valid_size = 0.0 if data_cfg.valid else data_cfg.valid_fraction
    test_size = 0.0 if data_cfg.test else data_cfg.test_fraction
    split = split_indices(n, valid=float(valid_size), test=float(test_size), seed=seed)
    if data_cfg.max_train is not None:
        split["train"] = split["train"][: data_cfg.max_train]
    if run_dir is not None:
        save_split(Path(run_dir) / "split.json", split, seed=seed,
                   file=str(data_cfg.train) if isinstance(data_cfg.train, str) else file_list(data_cfg.train))
    out = RunData(
        train=[graphs[i] for i in split["train"]],
        valid=[graphs[i] for i in split["valid"]],
        test=[graphs[i] for i in split["test"]],
        split=split,
    )
    if data_cfg.valid:
        out.valid = read_file(data_cfg.valid, cutoff, keys, dtype, required, **opts)
    if data_cfg.test:
        out.test = read_file(data_cfg.test, cutoff, keys, dtype, required, **opts)
    for part in ("valid", "test"):  # a structure in both measures memory: said, whether split by hand or from one file
        own = getattr(data_cfg, part)
        warn_shared_structures(out.train, getattr(out, part), describe_files(data_cfg.train),
                               describe_files(own or data_cfg.train), "validation" if part == "valid" else part,
                               frames=None if own else split[part])
    return out


def _fingerprint(graph, decimals: int = 4) -> bytes:
    """The elements, positions (to 1e-4 Å) and cell of one structure, as bytes to compare."""
    pieces = (graph.numbers, graph.positions, graph.cell)
    return b"".join(np.round(t.detach().cpu().double().numpy(), decimals).tobytes() if t.is_floating_point()
                    else t.detach().cpu().numpy().tobytes() for t in pieces)


def warn_shared_structures(train, other, train_where: str, other_where: str, part: str, frames=None) -> list[int]:
    """Frames of ``other`` that are also in ``train`` (the same atoms at the same positions); warns once.

    A test or validation set that repeats training structures (a file split by hand, a trajectory
    written twice, a file holding duplicates) measures what the model remembers, not what it predicts;
    nothing says so otherwise. ``frames`` gives the file's frame number of each of ``other``.
    """
    if not other:
        return []
    seen = {_fingerprint(g) for g in train}
    shared = sorted(i if frames is None else int(frames[i]) for i, g in enumerate(other) if _fingerprint(g) in seen)
    if shared:
        shown = ", ".join(map(str, shared[:10])) + (", ..." if len(shared) > 10 else "")
        warnings.warn(f"{len(shared)} of the {len(other)} {part} structures ({other_where}, frames {shown}) are also "
                      f"in the training set ({train_where}): their errors measure what the model remembers, not "
                      f"what it predicts", UserWarning, stacklevel=3)
    return shared


def isolated_atom_energies(path, keys: dict, units: dict | None = None) -> dict[int, float]:
    """``{Z: energy}`` in eV from the one-atom frames of a file (:func:`clebsch.data.reference_energies_from_file`),
    converted from ``units["energy"]`` when given."""
    from ..data.statistics import reference_energies_from_file
    from ..data.units import unit_factors

    scale = unit_factors({"energy": units["energy"]})["energy"] if units and "energy" in units else 1.0
    energies = reference_energies_from_file(path, energy_key=keys.get("energy") or "energy")
    return {z: e * scale for z, e in energies.items()}


def statistics(graphs, species: list[int]) -> dict:
    """Per-element reference energies (least squares), force RMS and mean neighbour count.

    Thin wrapper over :mod:`clebsch.data.statistics`; returns
    ``{"atomic_energies": [...] (in ``species`` order), "force_rms": float, "avg_num_neighbors": float}``.
    """
    from ..data import statistics as st

    has_energy = any("energy" in g.targets for g in graphs)
    refs = st.reference_energies_least_squares(graphs) if has_energy else {}
    has_forces = any("forces" in g.targets for g in graphs)
    return {
        "atomic_energies": [float(refs.get(z, 0.0)) for z in species],
        "force_rms": st.force_rms(graphs) if has_forces else 1.0,
        "avg_num_neighbors": st.average_num_neighbors(graphs),
    }


def species_of(graphs) -> list[str]:
    """Element symbols present in ``graphs``, by atomic number."""
    zs = sorted({int(z) for g in graphs for z in g.numbers.unique().tolist()})
    return [chemical_symbols[z] for z in zs]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of ``n`` structures in an epoch: a function of (seed, epoch) only.

    Resuming a run therefore replays exactly the order an uninterrupted run uses.
    """
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def batches(graphs, batch_size: int, order=None, rank: int = 0, world: int = 1):
    """Yield batched graphs of ``batch_size`` structures (global), this rank's share of each.

    With ``world`` processes, each global batch is cut into ``world`` contiguous
    shares; rank ``r`` gets share ``r`` (possibly empty for the last batch).
    """
    order = np.arange(len(graphs)) if order is None else order
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        share = np.array_split(idx, world)[rank]
        if len(share) == 0:
            yield None
            continue
        yield batch_graphs([graphs[int(i)] for i in share])


def write_json(path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2))
