"""``AtomicDataset``: structures read once, neighbour lists computed once, kept in memory."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import torch

from ..graph import AtomicGraph, batch
from .io import read_structures

__all__ = ["AtomicDataset", "read_dataset", "key_map", "check_net_forces", "check_force_scale", "check_force_consistency"]

_CACHE_VERSION = 4


def key_map(energy_key="energy", forces_key="forces", stress_key="stress", virial_key="virial",
            dipole_key="dipole", polarizability_key="polarizability", extra_keys=None) -> dict[str, str]:
    """Target name -> key in the file. ``None`` drops a target; ``extra_keys`` adds more (name -> key).

    >>> key_map(energy_key="REF_energy", stress_key=None)["energy"]
    'REF_energy'
    """
    keys = {
        "energy": energy_key, "forces": forces_key, "stress": stress_key, "virial": virial_key,
        "dipole": dipole_key, "polarizability": polarizability_key,
    }
    keys.update(extra_keys or {})
    return {k: v for k, v in keys.items() if v is not None}


def read_dataset(path, cutoff: float, *, keys: dict[str, str] | None = None, required: Sequence[str] = ("energy", "forces"),
                 method: str = "radius", k: int | None = None, scale: float = 1.2, dtype: torch.dtype | None = None,
                 index: str = ":", format: str | None = None, progress: bool = False, targets: dict | None = None,
                 allow_nonfinite: bool = False, units: dict | None = None) -> list[AtomicGraph]:
    """Read a structure file into a list of graphs (one per frame).

    Errors name the file and the 0-based frame: malformed frames, missing
    required keys (with the keys that do exist), values that do not fit their
    target's declaration (shape, symmetry; ``targets`` adds declarations to the
    built-in ones), non-finite values (unless ``allow_nonfinite``: then they
    count as missing), non-finite positions and overlapping atoms. ``units``
    (target name or ``positions`` -> the file's unit) converts the values to
    the units clebsch stores (:mod:`clebsch.data.units`).
    """
    from ..targets import resolve_targets
    from .targets import graph_from_atoms

    declared = resolve_targets(targets)
    keys = key_map() if keys is None else dict(keys)
    missing = [name for name in required if name not in keys]
    if missing:
        raise ValueError(f"required targets {missing} have no key in the key map {keys}")
    frames = read_structures(path, index=index, format=format)
    iterator = enumerate(frames)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(frames), desc=f"graphs from {Path(path).name}")
    graphs = [
        graph_from_atoms(atoms, cutoff, method, k=k, scale=scale, keys=keys, required=required, dtype=dtype,
                         targets=declared, allow_nonfinite=allow_nonfinite, where=f"file '{path}', frame {i}",
                         units=units)
        for i, atoms in iterator
    ]
    check_net_forces(graphs, where=f"file '{path}'")
    check_force_scale(graphs, where=f"file '{path}'")
    check_force_consistency(graphs, where=f"file '{path}'")
    return graphs


def check_net_forces(graphs: Sequence[AtomicGraph], where: str = "the dataset", rel: float = 0.01,
                     atol: float = 1e-3) -> list[int]:
    """Frames whose forces do not sum to zero; warns once, naming the worst frame.

    Minus the gradient of an energy that does not change under translation sums
    to zero, so every model's forces do. A frame whose reference forces have a
    mean ``|sum F| / N`` above ``max(atol, rel * force RMS)`` (eV/Å) carries a
    part no model can learn: typically forces adjusted by a constraint (ASE's
    ``FixCom``) or by a thermostat. Returns the 0-based indices of those frames.
    """
    sums, counts, squares, n_components = [], [], 0.0, 0
    for g in graphs:
        f = g.targets.get("forces")
        if f is None or g.num_graphs != 1 or not bool(torch.isfinite(f).all()):  # missing forces are not judged
            sums.append(None)
            counts.append(0)
            continue
        f = f.detach().double()
        sums.append(f.sum(0).norm().item())
        counts.append(g.num_atoms)
        squares += float((f**2).sum())
        n_components += f.numel()
    if n_components == 0:
        return []
    threshold = max(atol, rel * (squares / n_components) ** 0.5)
    bad = [i for i, (s, n) in enumerate(zip(sums, counts)) if s is not None and s / n > threshold]
    if bad:
        worst = max(bad, key=lambda i: sums[i] / counts[i])
        warnings.warn(
            f"{where}: in {len(bad)} of {len(graphs)} frames the forces do not sum to zero (worst: frame {worst}, "
            f"|sum F| = {sums[worst]:.3g} eV/Å over {counts[worst]} atoms; force RMS "
            f"{(squares / n_components) ** 0.5:.3g} eV/Å). A model's forces always sum to zero, so this part cannot "
            "be learned. Were they adjusted by a constraint or a thermostat? With ASE, write "
            "atoms.get_forces(apply_constraint=False).", UserWarning, stacklevel=3)
    return bad


def check_force_scale(graphs: Sequence[AtomicGraph], where: str = "the dataset", limit: float = 10.0) -> float:
    """The force RMS (eV/Å) of ``graphs``; warns when it is above ``limit``, a sign of forces in other units.

    Atoms in molecular dynamics or near equilibrium feel about 1 eV/Å; forces
    in kcal/mol/Å (sGDML's MD17 files) are 23 times larger, and read as eV/Å
    they make a model whose energies are in kcal/mol but used as eV.
    """
    squares, count = 0.0, 0
    for g in graphs:
        f = g.targets.get("forces")
        if f is None:
            continue
        f = f.detach().double()
        f = f[torch.isfinite(f)]
        squares += float((f**2).sum())
        count += f.numel()
    rms = (squares / count) ** 0.5 if count else 0.0
    if rms > limit:
        warnings.warn(
            f"{where}: the force RMS is {rms:.3g} eV/Å, far above the ~1 eV/Å of atoms in MD or near equilibrium. "
            "If the file holds another unit (kcal/mol/Å in sGDML's MD17 files, Ha/Bohr), say so with "
            "data.units, e.g. {energy: kcal/mol, forces: kcal/mol/Å}; the values are then converted to eV and "
            "eV/Å, the units of the metrics and of the ASE calculator.", UserWarning, stacklevel=3)
    return rms


# units a file's forces or energies are often in, read as eV/Å or eV: each leaves its factor between the
# energy change and the work of the forces
_FORCE_UNITS = ("eV/Bohr", "Ha/Bohr", "Ha/Å", "Ry/Bohr", "kcal/mol/Å", "kJ/mol/Å")
_ENERGY_UNITS = ("Ha", "Ry", "kcal/mol", "kJ/mol")


def _unit_mixups() -> dict[str, float]:
    from .units import factor

    mixups = {f"forces in {u} read as eV/Å": factor(u, "eV/Å") for u in _FORCE_UNITS}
    mixups.update({f"energies in {u} read as eV": 1.0 / factor(u, "eV") for u in _ENERGY_UNITS})
    return mixups


def check_force_consistency(graphs: Sequence[AtomicGraph], where: str = "the dataset") -> tuple | None:
    """``(slope, correlation, pairs)`` of :func:`~clebsch.data.statistics.force_energy_consistency`; warns when
    the forces are not minus the gradient of the energies in the same units.

    Judged on neighbouring frames (MD written often enough, not frames sampled far apart: those give
    None). Only a clear verdict speaks: the energy changes must follow the work of the forces
    (correlation above 0.9) with a slope outside 0.8-1.25; a slope near a known unit mix-up is named.
    """
    from .statistics import force_energy_consistency

    found = force_energy_consistency(graphs)
    if found is None:
        return None
    slope, correlation, pairs = found
    if abs(correlation) < 0.9 or 0.8 <= slope <= 1.25:
        return found
    sizes = {g.num_atoms for g in graphs}
    per_atom = 1.0 / min(sizes) if len(sizes) == 1 and min(sizes) > 1 else None  # one molecule throughout
    close = [name for name, f in _unit_mixups().items() if abs(slope / f - 1.0) < 0.04]
    if slope < 0:
        why = "the forces look like the gradient of the energy, not minus it: is their sign flipped?"
    elif per_atom is not None and abs(slope / per_atom - 1.0) < 0.04:
        why = f"1/{min(sizes)}, as if the energies were per atom: the energy key should hold the total energy"
    elif close:
        why = f"this is the factor of {close[0]}; data.units names the file's units"
    else:
        why = "energies and forces are not in matching units (data.units converts each)"
    warnings.warn(
        f"{where}: over {pairs} pairs of neighbouring frames the energy changes by {slope:.3g} times what the forces "
        f"imply (-(F1 + F2)/2 . dx; correlation {correlation:.2f}), where 1 is expected: {why}",
        UserWarning, stacklevel=3)
    return found


def _cache_key(path, **settings) -> str:
    path = Path(path).resolve()
    stat = path.stat()
    blob = json.dumps({"path": str(path), "mtime": stat.st_mtime_ns, "size": stat.st_size,
                       "version": _CACHE_VERSION, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _pack(graphs):
    """One batched graph (fast to save and load) plus each graph's own target names."""
    return {"version": _CACHE_VERSION, "batch": batch(graphs), "targets": [list(g.targets) for g in graphs]}



def _unpack(payload):
    graphs = payload["batch"].split()
    for g, names in zip(graphs, payload["targets"]):
        g.targets = {k: v for k, v in g.targets.items() if k in names}
    return graphs


class AtomicDataset(torch.utils.data.Dataset):
    """Graphs held in memory; indexing returns an :class:`~clebsch.graph.AtomicGraph`.

    Examples
    --------
    >>> import tempfile, os, ase.io
    >>> from ase.build import molecule
    >>> frames = [molecule("H2O") for _ in range(3)]
    >>> for i, a in enumerate(frames):
    ...     a.info["energy"] = -14.0 - i
    ...     a.arrays["forces"] = 0.0 * a.positions
    >>> path = os.path.join(tempfile.mkdtemp(), "water.xyz")
    >>> ase.io.write(path, frames)
    >>> ds = AtomicDataset.from_file(path, cutoff=3.0)
    >>> len(ds), ds[2].targets["energy"].tolist()
    (3, [-16.0])
    """

    def __init__(self, graphs: Sequence[AtomicGraph], source: str | None = None):
        graphs = list(graphs)
        if not graphs:
            raise ValueError(f"empty dataset{f' from {source}' if source else ''}: no structures")
        self.graphs = graphs
        self.source = source

    @classmethod
    def from_file(cls, path, cutoff: float, *, keys: dict[str, str] | None = None,
                  required: Sequence[str] = ("energy", "forces"), method: str = "radius", k: int | None = None,
                  scale: float = 1.2, dtype: torch.dtype | None = None, index: str = ":", format: str | None = None,
                  cache_dir=None, progress: bool = False, targets: dict | None = None,
                  allow_nonfinite: bool = False, units: dict | None = None) -> "AtomicDataset":
        """Read ``path`` and build every graph; see :func:`read_dataset` for the arguments.

        With ``cache_dir``, the preprocessed graphs are saved there (``torch.save``,
        keyed by a hash of the file's path, mtime and size, the cutoff, the keys and the
        neighbour settings), and a later call with the same inputs loads them instead.
        """
        dtype = dtype or torch.get_default_dtype()
        keys = key_map() if keys is None else dict(keys)
        settings = dict(cutoff=float(cutoff), keys=keys, required=list(required), method=method, k=k, scale=scale,
                        dtype=str(dtype), index=index, format=format, targets=targets, allow_nonfinite=allow_nonfinite,
                        units=units)
        cache_file = None
        if cache_dir is not None:
            if not Path(path).exists():
                raise FileNotFoundError(f"structure file not found: '{path}'")
            cache_file = Path(cache_dir) / f"{Path(path).stem}-{_cache_key(path, **settings)}.pt"
            if cache_file.exists():
                try:
                    return cls(_unpack(torch.load(cache_file, weights_only=False)), source=str(path))
                except Exception:  # a damaged cache is rebuilt, never trusted
                    pass
        graphs = read_dataset(path, cutoff, keys=keys, required=required, method=method, k=k, scale=scale,
                              dtype=dtype, index=index, format=format, progress=progress, targets=targets,
                              allow_nonfinite=allow_nonfinite, units=units)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp")
            os.close(fd)
            torch.save(_pack(graphs), tmp)
            os.replace(tmp, cache_file)
        return cls(graphs, source=str(path))

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return AtomicDataset(self.graphs[index], self.source)
        return self.graphs[index]

    def subset(self, indices: Sequence[int]) -> "AtomicDataset":
        """The structures at ``indices`` (e.g. one part of :func:`~clebsch.data.split_indices`)."""
        return AtomicDataset([self.graphs[int(i)] for i in indices], self.source)

    @property
    def cutoff(self) -> float:
        return self.graphs[0].cutoff

    def __repr__(self) -> str:
        return f"AtomicDataset({len(self)} structures, cutoff={self.cutoff}, source={self.source!r})"
