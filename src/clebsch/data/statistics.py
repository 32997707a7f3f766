"""Dataset statistics that models use to shift and scale their outputs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from ..graph import AtomicGraph
from .io import read_structures

__all__ = [
    "reference_energies_least_squares",
    "reference_energies_from_file",
    "mean_energy_per_atom",
    "force_rms",
    "force_energy_consistency",
    "average_num_neighbors",
    "DatasetStatistics",
    "compute_statistics",
]


def _nonempty(graphs, what: str) -> list[AtomicGraph]:
    graphs = list(graphs)
    if not graphs:
        raise ValueError(f"cannot compute {what} of an empty dataset")
    return graphs


def _counts_and_energies(graphs, numbers):
    index = {z: c for c, z in enumerate(numbers)}
    rows, energies = [], []
    for g in graphs:
        e = g.targets.get("energy")
        if e is None:
            continue
        for b, part in enumerate(g.split()):
            value = float(e[b])
            if not np.isfinite(value):
                continue
            row = np.zeros(len(numbers))
            for z, c in zip(*np.unique(part.numbers.cpu().numpy(), return_counts=True)):
                row[index[int(z)]] = c
            rows.append(row)
            energies.append(value)
    return np.array(rows), np.array(energies)


def reference_energies_least_squares(graphs: Sequence[AtomicGraph]) -> dict[int, float]:
    """Per-element energies ``E0[Z]`` minimising ``sum_s (E_s - sum_i E0[Z_i])^2`` over the structures.

    When the composition never varies (an MD run of one molecule), the problem
    is rank-deficient and the minimum-norm solution is returned: the sum over the
    molecule's atoms is right, the split between elements is arbitrary.

    >>> import torch
    >>> from clebsch.graph import AtomicGraph
    >>> def g(numbers, e):
    ...     pos = torch.arange(3.0 * len(numbers)).reshape(-1, 3)
    ...     return AtomicGraph.from_tensors(pos, numbers, 1.0, targets={"energy": torch.tensor([e])})
    >>> refs = reference_energies_least_squares([g([1, 1], -2.0), g([1, 8], -11.0), g([8], -10.0)])
    >>> {z: round(e, 6) for z, e in refs.items()}
    {1: -1.0, 8: -10.0}
    """
    graphs = _nonempty(graphs, "reference energies")
    numbers = sorted({int(z) for g in graphs for z in g.numbers.unique().tolist()})
    counts, energies = _counts_and_energies(graphs, numbers)
    if len(energies) == 0:
        raise ValueError("no structure in the dataset has an energy: cannot fit reference energies")
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {z: float(e) for z, e in zip(numbers, solution)}


def reference_energies_from_file(path, energy_key: str = "energy", config_type: str | None = None) -> dict[int, float]:
    """Per-element energies from the one-atom frames of a file (e.g. ``isolated_atoms.xyz``).

    Frames with more than one atom are ignored; ``config_type`` (e.g.
    ``"IsolatedAtom"``), when given, must match too. Raises when no usable frame
    is found or a one-atom frame lacks the energy key.
    """
    refs = {}
    for i, atoms in enumerate(read_structures(path)):
        if len(atoms) != 1:
            continue
        if config_type is not None and atoms.info.get("config_type") != config_type:
            continue
        from .targets import read_targets

        targets, _, _ = read_targets(atoms, {"energy": energy_key}, required=("energy",), where=f"file '{path}', frame {i}")
        refs[int(atoms.numbers[0])] = float(targets["energy"][0])
    if not refs:
        extra = f" with config_type={config_type!r}" if config_type else ""
        raise ValueError(f"'{path}' has no one-atom frames{extra}: no isolated-atom energies")
    return dict(sorted(refs.items()))


def _reference_sum(g: AtomicGraph, reference: dict[int, float] | None) -> torch.Tensor:
    if not reference:
        return torch.zeros(g.num_graphs, dtype=torch.float64)
    missing = sorted({int(z) for z in g.numbers.unique().tolist()} - set(reference))
    if missing:
        raise ValueError(f"no reference energy for {[chemical_symbols[z] for z in missing]} (have {sorted(reference)})")
    per_atom = torch.tensor([reference[int(z)] for z in g.numbers.tolist()], dtype=torch.float64)
    return torch.zeros(g.num_graphs, dtype=torch.float64).index_add_(0, g.batch.cpu(), per_atom)


def mean_energy_per_atom(graphs: Sequence[AtomicGraph], reference: dict[int, float] | None = None) -> float:
    """Mean over structures of ``(E - sum of reference energies) / n_atoms`` (eV/atom)."""
    values = _energy_per_atom(_nonempty(graphs, "the mean energy per atom"), reference)
    return float(values.mean())


def _energy_per_atom(graphs, reference):
    values = []
    for g in graphs:
        if "energy" not in g.targets:
            continue
        e = g.targets["energy"].detach().cpu().double() - _reference_sum(g, reference)
        values.append(e / g.n_atoms.cpu().double())
    if not values:
        raise ValueError("no structure in the dataset has an energy")
    values = torch.cat(values)
    return values[torch.isfinite(values)]


def force_rms(graphs: Sequence[AtomicGraph]) -> float:
    """Root mean square of all force components (eV/Å)."""
    graphs = _nonempty(graphs, "the force RMS")
    forces = [g.targets["forces"].detach().cpu().double().reshape(-1) for g in graphs if "forces" in g.targets]
    if not forces:
        raise ValueError("no structure in the dataset has forces")
    f = torch.cat(forces)
    f = f[torch.isfinite(f)]
    return float(torch.sqrt((f**2).mean()))


def force_energy_consistency(graphs: Sequence[AtomicGraph], max_rms: float = 0.05, min_pairs: int = 10):
    """How the energies of a file change against the work of its forces, over neighbouring frames.

    For consecutive frames of the same atoms less than ``max_rms`` Å apart (RMS displacement, minimum
    image in a periodic cell), the trapezoid rule gives the energy change the forces imply,
    ``-(F_a + F_b) / 2 . (x_b - x_a)``. If forces are minus the gradient of the energy, in the same
    units, the energy changes fit it with slope 1; a slope of -1 means the forces have the wrong sign,
    1.89 forces in eV/Bohr read as eV/Å, 27.2 energies in eV against forces in Hartree, and so on.

    Returns ``(slope, correlation, pairs)``, the least-squares slope through the origin of the energy
    changes on the implied ones, or None with fewer than ``min_pairs`` such pairs (frames sampled far
    apart, or without energies and forces).

    Examples
    --------
    >>> import torch
    >>> from clebsch.graph import AtomicGraph
    >>> frames = []
    >>> for t in range(12):  # one atom of a harmonic trap, E = x^2, F = -2x, moving 0.01 Å a frame
    ...     x = 0.3 + 0.01 * t
    ...     frames.append(AtomicGraph.from_tensors(torch.tensor([[x, 0.0, 0.0]]), [1], 1.0,
    ...                   targets={"energy": torch.tensor([x * x]), "forces": torch.tensor([[-2 * x, 0.0, 0.0]])}))
    >>> slope, r, pairs = force_energy_consistency(frames)
    >>> round(slope, 6), pairs
    (1.0, 11)
    """
    implied, actual = [], []
    for a, b in zip(graphs[:-1], graphs[1:]):
        if a.num_graphs != 1 or b.num_graphs != 1 or a.num_atoms != b.num_atoms or a.num_atoms == 0:
            continue
        if not all(k in g.targets for g in (a, b) for k in ("energy", "forces")) or not torch.equal(a.numbers, b.numbers):
            continue
        d = (b.positions - a.positions).detach().cpu().double()
        if bool(a.pbc.any()) or bool(b.pbc.any()):
            cell = a.cell[0].detach().cpu().double()
            if not torch.allclose(cell, b.cell[0].detach().cpu().double()) or abs(float(torch.det(cell))) < 1e-9:
                continue
            fractional = d @ torch.linalg.inv(cell)
            fractional = fractional - torch.round(fractional) * a.pbc[0].cpu()
            d = fractional @ cell
        rms = float(d.pow(2).mean().sqrt())
        if not 0.0 < rms <= max_rms:
            continue
        forces = a.targets["forces"].detach().cpu().double() + b.targets["forces"].detach().cpu().double()
        de = float(b.targets["energy"].sum() - a.targets["energy"].sum())
        work = -0.5 * float((forces * d).sum())
        if math.isfinite(de) and math.isfinite(work):
            implied.append(work)
            actual.append(de)
    if len(implied) < min_pairs:
        return None
    x, y = np.asarray(implied), np.asarray(actual)
    if not (x @ x > 0 and y @ y > 0):
        return None
    slope = float(x @ y / (x @ x))
    correlation = float(x @ y / math.sqrt((x @ x) * (y @ y)))  # about the origin, as the fit
    return slope, correlation, len(implied)


def average_num_neighbors(graphs: Sequence[AtomicGraph]) -> float:
    """Edges per atom over the whole dataset (the normaliser of message sums)."""
    graphs = _nonempty(graphs, "the average number of neighbours")
    atoms = sum(g.num_atoms for g in graphs)
    return sum(g.num_edges for g in graphs) / atoms


@dataclass
class DatasetStatistics:
    """The numbers a model is shifted and scaled with. ``to_dict`` is JSON-friendly."""

    reference_energies: dict[int, float]
    mean_energy_per_atom: float
    energy_per_atom_std: float
    force_rms: float | None
    average_num_neighbors: float
    n_structures: int
    n_atoms: int
    numbers: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reference_energies"] = {str(k): v for k, v in self.reference_energies.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetStatistics":
        d = dict(d)
        d["reference_energies"] = {int(k): float(v) for k, v in d["reference_energies"].items()}
        return cls(**d)


def compute_statistics(graphs: Sequence[AtomicGraph], reference_energies="least_squares",
                       energy_key: str = "energy") -> DatasetStatistics:
    """All statistics of a training set in one pass.

    Parameters
    ----------
    graphs : sequence of AtomicGraph (or an AtomicDataset)
    reference_energies : "least_squares", a path to an isolated-atoms file, a dict {Z: eV} or None
        How the per-element energies are obtained (``None``: zeros).
    """
    graphs = _nonempty(graphs, "statistics")
    if isinstance(reference_energies, dict):
        refs = {int(k): float(v) for k, v in reference_energies.items()}
    elif reference_energies is None:
        refs = {}
    elif isinstance(reference_energies, str) and reference_energies == "least_squares":
        refs = reference_energies_least_squares(graphs)
    else:
        refs = reference_energies_from_file(reference_energies, energy_key=energy_key)
    per_atom = _energy_per_atom(graphs, refs)
    has_forces = any("forces" in g.targets for g in graphs)
    numbers = sorted({int(z) for g in graphs for z in g.numbers.unique().tolist()})
    return DatasetStatistics(
        reference_energies=refs,
        mean_energy_per_atom=float(per_atom.mean()),
        energy_per_atom_std=float(per_atom.std()) if per_atom.numel() > 1 else 0.0,
        force_rms=force_rms(graphs) if has_forces else None,
        average_num_neighbors=average_num_neighbors(graphs),
        n_structures=sum(g.num_graphs for g in graphs),
        n_atoms=sum(g.num_atoms for g in graphs),
        numbers=numbers,
    )
