"""``AtomicGraph``: one structure, or a batch of structures, as tensors a model eats."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from . import neighbors as _nl
from ._validate import MIN_DISTANCE

__all__ = ["AtomicGraph", "batch"]

_METHODS = ("radius", "knn", "bonds")

PER_ATOM_TARGETS = ("forces", "charges", "magmoms", "forces_weight", "atomic_energies")
"""Target names that are per atom ([N, ...]) rather than per structure ([B, ...]) by default."""


@dataclass
class AtomicGraph:
    """Atoms, their neighbour list and their targets; one structure or a batch of ``B``.

    Edges run from sender ``j = edge_index[0]`` to receiver ``i = edge_index[1]``;
    messages are aggregated on the receiver. The vector of an edge is
    ``positions[j] - positions[i] + shifts @ cell`` (see :meth:`edge_vectors`).

    Attributes
    ----------
    positions : Tensor [N, 3]
        Cartesian positions, Å.
    numbers : Tensor [N] long
        Atomic numbers.
    edge_index : Tensor [2, E] long
        Sender (row 0) and receiver (row 1) of every edge, as global atom indices.
    shifts : Tensor [E, 3]
        Integer cell shifts of the sender image, stored as floats.
    cell : Tensor [B, 3, 3]
        Lattice vectors as rows; zeros for an open structure.
    pbc : Tensor [B, 3] bool
        Periodic directions.
    batch : Tensor [N] long
        Index of the structure each atom belongs to.
    n_atoms, n_edges : Tensor [B] long
        Atoms and edges per structure.
    cutoff : float
        Radius the edges were built with, Å.
    targets : dict of str to Tensor
        Reference values: ``energy`` [B], ``forces`` [N, 3], ``stress`` [B, 3, 3]
        (eV/Å³, ASE's sign), ``virial`` [B, 3, 3], ``dipole`` [B, 3] (e·Å),
        ``polarizability`` [B, 3, 3], ``weight`` [B], per-atom properties [N, ...].
        A target that some structures of a batch lack is NaN for them.
    total_charge : Tensor [B]
        Net charge of each structure (e); zeros by default.
    spin_multiplicity : Tensor [B]
        Spin multiplicity ``2S + 1`` of each structure (1 singlet, 2 doublet, 3 triplet, ...);
        NaN where it was not given (the default).
    config_type : list of str
        A label per structure ("Default" unless the data says otherwise).
    per_atom_targets : tuple of str
        Names of the targets indexed by atom rather than by structure.
    per_edge_targets : tuple of str
        Names of the targets indexed by edge ([E, ...], aligned with ``edge_index``; NaN
        where an edge has no reference value).
    neighbor_options : dict
        How the edges were built (``method``, ``k``, ``scale``), reused by :meth:`with_neighbors`.

    Examples
    --------
    >>> import torch
    >>> pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.96], [0.93, 0.0, -0.24]])
    >>> g = AtomicGraph.from_tensors(pos, torch.tensor([8, 1, 1]), cutoff=1.2)
    >>> g.num_graphs, g.edge_index.shape[1]
    (1, 4)
    >>> torch.allclose(g.edge_lengths().min(), torch.tensor(0.96))
    True
    """

    positions: torch.Tensor
    numbers: torch.Tensor
    edge_index: torch.Tensor
    shifts: torch.Tensor
    cell: torch.Tensor | None = None
    pbc: torch.Tensor | None = None
    batch: torch.Tensor | None = None
    n_atoms: torch.Tensor | None = None
    n_edges: torch.Tensor | None = None
    cutoff: float = 0.0
    targets: dict[str, torch.Tensor] = field(default_factory=dict)
    total_charge: torch.Tensor | None = None
    spin_multiplicity: torch.Tensor | None = None
    config_type: list[str] | None = None
    per_atom_targets: tuple[str, ...] = PER_ATOM_TARGETS
    per_edge_targets: tuple[str, ...] = ()
    neighbor_options: dict = field(default_factory=lambda: {"method": "radius"})

    def __post_init__(self):
        n = self.positions.shape[0]
        device = self.positions.device
        fdtype = self.positions.dtype
        self.numbers = torch.as_tensor(self.numbers, dtype=torch.long, device=device).reshape(-1)
        self.edge_index = torch.as_tensor(self.edge_index, dtype=torch.long, device=device).reshape(2, -1)
        self.shifts = torch.as_tensor(self.shifts, dtype=fdtype, device=device).reshape(-1, 3)
        if self.batch is None:
            self.batch = torch.zeros(n, dtype=torch.long, device=device)
        if self.n_atoms is None:
            b = int(self.batch.max()) + 1 if n else 1
            self.n_atoms = torch.bincount(self.batch, minlength=b)
        b = self.n_atoms.shape[0]
        if self.n_edges is None:
            if b == 1:
                self.n_edges = torch.tensor([self.edge_index.shape[1]], device=device)
            else:
                self.n_edges = torch.bincount(self.batch[self.edge_index[1]], minlength=b)
        if self.cell is None:
            self.cell = torch.zeros(b, 3, 3, dtype=fdtype, device=device)
        self.cell = torch.as_tensor(self.cell, dtype=fdtype, device=device).reshape(b, 3, 3)
        if self.pbc is None:
            self.pbc = (self.cell != 0).any(dim=2)
        self.pbc = torch.as_tensor(self.pbc, dtype=torch.bool, device=device).reshape(b, 3)
        if self.total_charge is None:
            self.total_charge = torch.zeros(b, dtype=fdtype, device=device)
        self.total_charge = torch.as_tensor(self.total_charge, dtype=fdtype, device=device).reshape(b)
        if self.spin_multiplicity is None:
            self.spin_multiplicity = torch.full((b,), float("nan"), dtype=fdtype, device=device)
        self.spin_multiplicity = torch.as_tensor(self.spin_multiplicity, dtype=fdtype, device=device).reshape(b)
        if self.config_type is None:
            self.config_type = ["Default"] * b
        elif isinstance(self.config_type, str):
            self.config_type = [self.config_type] * b
        self.config_type = list(self.config_type)
        self.per_atom_targets = tuple(self.per_atom_targets)
        self.per_edge_targets = tuple(self.per_edge_targets)
        self.cutoff = float(self.cutoff)

    # ------------------------------------------------------------------ basics
    @property
    def num_graphs(self) -> int:
        """Number of structures ``B``."""
        return int(self.n_atoms.shape[0])

    @property
    def num_atoms(self) -> int:
        """Total number of atoms ``N``."""
        return int(self.positions.shape[0])

    @property
    def num_edges(self) -> int:
        """Total number of edges ``E``."""
        return int(self.edge_index.shape[1])

    def edge_vectors(self, positions: torch.Tensor | None = None, cell: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors [E, 3] from each receiver ``i`` to its sender ``j`` (image included).

        ``positions[j] - positions[i] + shifts @ cell[batch[i]]``, in plain torch ops so
        gradients reach ``positions`` and ``cell``. Pass strained ``positions`` /
        ``cell`` ([B, 3, 3]) to differentiate with respect to a strain (stress).
        """
        positions = self.positions if positions is None else positions
        cell = self.cell if cell is None else cell
        sender, receiver = self.edge_index[0], self.edge_index[1]
        vectors = positions[sender] - positions[receiver]
        if self.shifts.shape[0]:
            cell_e = cell[self.batch[receiver]]
            vectors = vectors + torch.einsum("ei,eij->ej", self.shifts.to(cell.dtype), cell_e)
        return vectors

    def edge_lengths(self, positions: torch.Tensor | None = None, cell: torch.Tensor | None = None) -> torch.Tensor:
        """Lengths [E] of :meth:`edge_vectors`."""
        return torch.linalg.norm(self.edge_vectors(positions, cell), dim=-1)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "AtomicGraph":
        """Copy to ``device``; ``dtype`` applies to floating-point tensors only (targets included)."""

        def move(t):
            if not isinstance(t, torch.Tensor):
                return t
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        changes = {f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        changes["targets"] = {k: move(v) for k, v in self.targets.items()}
        return dataclasses.replace(self, **changes)

    def clone(self) -> "AtomicGraph":
        """Deep copy of every tensor."""
        changes = {f.name: getattr(self, f.name).clone() for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        changes["targets"] = {k: v.clone() for k, v in self.targets.items()}
        changes["config_type"] = list(self.config_type)
        changes["neighbor_options"] = dict(self.neighbor_options)
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        return (
            f"AtomicGraph(num_graphs={self.num_graphs}, num_atoms={self.num_atoms}, num_edges={self.num_edges}, "
            f"cutoff={self.cutoff}, targets={sorted(self.targets)}, dtype={self.positions.dtype}, "
            f"device={self.positions.device})"
        )

    # ------------------------------------------------------------ construction
    @classmethod
    def from_tensors(cls, positions, numbers, cutoff: float | None = None, cell=None, pbc=None, *,
                     method: str = "radius", k: int | None = None, scale: float = 1.2,
                     targets: dict | None = None, per_atom_targets=PER_ATOM_TARGETS,
                     total_charge: float = 0.0, spin_multiplicity: float | None = None,
                     config_type: str = "Default", min_distance: float = MIN_DISTANCE,
                     where: str | None = None) -> "AtomicGraph":
        """Build one structure's graph from positions [N, 3], atomic numbers [N], optional cell and pbc.

        ``method`` picks the neighbour list: ``"radius"`` (needs ``cutoff``), ``"knn"``
        (needs ``k``; ``cutoff`` optional cap) or ``"bonds"`` (covalent radii times
        ``scale``). Targets are given as tensors in the stored shapes. ``total_charge``
        (e) and ``spin_multiplicity`` (``2S + 1``; ``None``: not given) describe the
        structure as a whole.

        >>> import torch
        >>> g = AtomicGraph.from_tensors(torch.zeros(1, 3), [29], 3.6, cell=2.5 * torch.eye(3))
        >>> g.pbc.tolist(), g.num_edges  # an atom alone in a small periodic cell sees its images
        ([[True, True, True]], 18)
        """
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if not isinstance(positions, torch.Tensor) or not positions.is_floating_point():
            positions = torch.as_tensor(np.asarray(positions, dtype=np.float64), dtype=torch.get_default_dtype())
        numbers = torch.as_tensor(numbers, dtype=torch.long, device=positions.device).reshape(-1)
        if numbers.shape[0] != positions.shape[0]:
            raise ValueError(f"numbers has {numbers.shape[0]} entries but positions has {positions.shape[0]} atoms"
                             + (f" ({where})" if where else ""))
        from ._validate import check_cell

        cell_np, pbc_np = check_cell(None if cell is None else _nl._as_numpy(cell), None if pbc is None else _nl._as_numpy(pbc), where)
        if method == "radius":
            if cutoff is None:
                raise ValueError("method='radius' needs a cutoff")
            edge_index, shifts = _nl.radius_graph(positions, cutoff, cell_np, pbc_np, min_distance=min_distance, where=where)
            options = {"method": "radius"}
        elif method == "knn":
            if k is None:
                raise ValueError("method='knn' needs k")
            edge_index, shifts = _nl.knn_graph(positions, k, cell_np, pbc_np, cutoff=cutoff, min_distance=min_distance, where=where)
            options = {"method": "knn", "k": int(k)}
        else:
            edge_index, shifts = _nl.bond_graph(numbers, positions, scale, cell_np, pbc_np, min_distance=min_distance, where=where)
            options = {"method": "bonds", "scale": float(scale)}
        dev, dt = positions.device, positions.dtype
        cell_t = torch.as_tensor(cell_np, dtype=dt, device=dev).reshape(1, 3, 3)
        graph = cls(
            positions=positions,
            numbers=numbers,
            edge_index=edge_index.to(dev),
            shifts=shifts.to(device=dev, dtype=dt),
            cell=cell_t,
            pbc=torch.as_tensor(pbc_np, device=dev).reshape(1, 3),
            cutoff=0.0,
            targets={},
            total_charge=torch.tensor([float(total_charge)], dtype=dt, device=dev),
            spin_multiplicity=torch.tensor([float("nan") if spin_multiplicity is None else float(spin_multiplicity)],
                                           dtype=dt, device=dev),
            config_type=[config_type],
            per_atom_targets=tuple(per_atom_targets),
            neighbor_options=options,
        )
        if cutoff is None:
            lengths = graph.edge_lengths().detach()
            cutoff = float(lengths.max()) if lengths.numel() else 0.0
        graph.cutoff = float(cutoff)
        for name, value in (targets or {}).items():
            value = torch.as_tensor(value, device=dev)
            graph.targets[name] = value.to(dt) if value.is_floating_point() else value
        return graph

    @classmethod
    def from_ase(cls, atoms, cutoff: float | None = None, method: str = "radius", *, k: int | None = None,
                 scale: float = 1.2, targets: dict | None = None, per_atom_targets=(),
                 dtype: torch.dtype | None = None, min_distance: float = MIN_DISTANCE,
                 where: str | None = None, **removed) -> "AtomicGraph":
        """Build a graph from an ``ase.Atoms`` (positions, numbers, cell, pbc, charge, config_type).

        Reference values are not read here: :func:`clebsch.data.graph_from_atoms`
        reads and checks them against their declarations. ``targets`` may give
        them as arrays in their stored shapes.

        Parameters
        ----------
        atoms : ase.Atoms
        cutoff : float
            Neighbour radius in Å (required for ``method="radius"``).
        method : {"radius", "knn", "bonds"}
        targets : dict, optional
            Name -> array, as :meth:`from_tensors` takes them.
        per_atom_targets : sequence of str
            Names in ``targets`` indexed by atom (in addition to the usual ones).
        dtype : torch.dtype, optional
            Float dtype (default: torch's default dtype).

        ``config_type``, the total charge (``total_charge`` or ``charge``, e; 0 when
        absent) and the spin multiplicity (``spin``, ``2S + 1``; NaN, "not given",
        when absent) come from ``atoms.info`` (in an extxyz file, from the comment
        line: ``charge=-1 spin=2``). A charge or spin that is not a finite number
        raises, naming the key and ``where``.

        >>> from ase.build import molecule
        >>> g = AtomicGraph.from_ase(molecule("H2O"), cutoff=2.0)
        >>> g.numbers.tolist(), g.num_edges
        ([8, 1, 1], 6)
        >>> water_ion = molecule("H2O")
        >>> water_ion.info.update(charge=1, spin=2)
        >>> g = AtomicGraph.from_ase(water_ion, cutoff=2.0)
        >>> g.total_charge.tolist(), g.spin_multiplicity.tolist()
        ([1.0], [2.0])
        """
        if removed:
            raise TypeError(f"AtomicGraph.from_ase got {sorted(removed)}: reading targets from a key map is done by "
                            "clebsch.data.graph_from_atoms(atoms, cutoff, keys=..., required=...)")
        dtype = dtype or torch.get_default_dtype()
        info = atoms.info
        charge_key = "total_charge" if "total_charge" in info else "charge"
        charge = _info_number(info, charge_key, 0.0, where)
        spin = _info_number(info, "spin", None, where)
        positions = torch.as_tensor(np.asarray(atoms.positions, dtype=np.float64), dtype=dtype)
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        return cls.from_tensors(
            positions, atoms.numbers, cutoff, cell=cell, pbc=pbc, method=method, k=k, scale=scale,
            targets={n: torch.as_tensor(v) for n, v in (targets or {}).items()},
            per_atom_targets=tuple(dict.fromkeys(PER_ATOM_TARGETS + tuple(per_atom_targets))),
            total_charge=charge, spin_multiplicity=spin, config_type=str(info.get("config_type", "Default")),
            min_distance=min_distance, where=where,
        )

    def to_ase(self):
        """Back to ASE: an ``Atoms`` for one structure, a list of them for a batch.

        Energy, forces and stress go to a ``SinglePointCalculator``; other
        per-structure targets to ``info``, per-atom ones to ``arrays``.
        """
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        out = []
        for g in self.split():
            atoms = Atoms(
                numbers=g.numbers.cpu().numpy(),
                positions=g.positions.detach().cpu().double().numpy(),
                cell=g.cell[0].detach().cpu().double().numpy(),
                pbc=g.pbc[0].cpu().numpy(),
            )
            atoms.info["config_type"] = g.config_type[0]
            if float(g.total_charge[0]) != 0.0:
                atoms.info["total_charge"] = float(g.total_charge[0])
            spin = _spin_of(g)
            if spin is not None:
                atoms.info["spin"] = int(spin) if spin.is_integer() else spin
            calc = {}
            for name, value in g.targets.items():
                if name in g.per_edge_targets:
                    continue
                v = value.detach().cpu().numpy()
                if name in g.per_atom_targets:
                    if name == "forces":
                        calc["forces"] = v
                    else:
                        atoms.arrays[name] = v
                elif name == "energy":
                    calc["energy"] = float(v[0])
                elif name == "stress":
                    calc["stress"] = v[0]
                else:
                    atoms.info[name] = v[0] if v[0].ndim else v[0].item()
            if calc:
                atoms.calc = SinglePointCalculator(atoms, **calc)
            out.append(atoms)
        return out[0] if self.num_graphs == 1 else out

    def with_neighbors(self, cutoff: float | None = None, method: str | None = None, **options) -> "AtomicGraph":
        """A copy with the edges recomputed for the current positions and cells.

        Uses the same cutoff and method unless told otherwise (e.g. after an MD
        step). Targets are kept. Works on batches, structure by structure.

        >>> import torch
        >>> g = AtomicGraph.from_tensors(torch.tensor([[0.0, 0, 0], [3.0, 0, 0]]), [1, 1], cutoff=2.0)
        >>> g.num_edges
        0
        >>> g.positions[1, 0] = 1.0
        >>> g.with_neighbors().num_edges
        2
        """
        cutoff = self.cutoff if cutoff is None else cutoff
        opts = dict(self.neighbor_options)
        if method is not None and method != opts.get("method"):
            opts = {"method": method}
        opts.update(options)
        method = opts.pop("method", "radius")
        parts = []
        for g in self.split():
            new = AtomicGraph.from_tensors(
                g.positions, g.numbers, cutoff if (method == "radius" or cutoff) else None, cell=g.cell[0], pbc=g.pbc[0],
                method=method, total_charge=float(g.total_charge[0]), spin_multiplicity=_spin_of(g),
                config_type=g.config_type[0],
                per_atom_targets=g.per_atom_targets, **opts,
            )
            new.targets = {k: v for k, v in g.targets.items() if k not in g.per_edge_targets}
            parts.append(new)
        return parts[0] if len(parts) == 1 else batch(parts)

    # ---------------------------------------------------------------- batching
    def split(self) -> list["AtomicGraph"]:
        """The structures of a batch, each as its own graph (the inverse of :func:`batch`)."""
        if self.num_graphs == 1:
            return [self]
        na = self.n_atoms.tolist()
        ne = self.n_edges.tolist()
        atom_start = np.concatenate([[0], np.cumsum(na)]).astype(int)
        edge_start = np.concatenate([[0], np.cumsum(ne)]).astype(int)
        order = None
        receivers_graph = self.batch[self.edge_index[1]]
        if receivers_graph.numel() and bool((receivers_graph[1:] < receivers_graph[:-1]).any()):
            order = torch.argsort(receivers_graph, stable=True)
        edge_index = self.edge_index if order is None else self.edge_index[:, order]
        shifts = self.shifts if order is None else self.shifts[order]
        spins = getattr(self, "spin_multiplicity", None)
        out = []
        for b in range(self.num_graphs):
            a0, a1, e0, e1 = atom_start[b], atom_start[b + 1], edge_start[b], edge_start[b + 1]
            targets = {}
            for name, value in self.targets.items():
                if name in self.per_edge_targets:
                    targets[name] = (value if order is None else value[order])[e0:e1]
                else:
                    targets[name] = value[a0:a1] if name in self.per_atom_targets else value[b:b + 1]
            out.append(AtomicGraph(
                positions=self.positions[a0:a1],
                numbers=self.numbers[a0:a1],
                edge_index=edge_index[:, e0:e1] - a0,
                shifts=shifts[e0:e1],
                cell=self.cell[b:b + 1],
                pbc=self.pbc[b:b + 1],
                batch=torch.zeros(a1 - a0, dtype=torch.long, device=self.positions.device),
                n_atoms=self.n_atoms[b:b + 1],
                n_edges=self.n_edges[b:b + 1],
                cutoff=self.cutoff,
                targets=targets,
                total_charge=self.total_charge[b:b + 1],
                spin_multiplicity=None if spins is None else spins[b:b + 1],
                config_type=[self.config_type[b]],
                per_atom_targets=self.per_atom_targets,
                per_edge_targets=self.per_edge_targets,
                neighbor_options=dict(self.neighbor_options),
            ))
        return out


def batch(graphs) -> AtomicGraph:
    """Concatenate graphs (single structures or batches) into one batch.

    Atom indices in ``edge_index`` are offset, ``batch`` numbers the structures
    in order. A target that some graphs lack is filled with NaN for them, so a
    loss can mask it with ``torch.isfinite``. All graphs must share one cutoff.

    >>> import torch
    >>> a = AtomicGraph.from_tensors(torch.tensor([[0.0, 0, 0], [1.0, 0, 0]]), [1, 1], 1.5)
    >>> b = AtomicGraph.from_tensors(torch.tensor([[0.0, 0, 0], [0.0, 1.1, 0]]), [1, 8], 1.5)
    >>> g = batch([a, b])
    >>> g.num_graphs, g.batch.tolist(), g.edge_index.tolist()
    (2, [0, 0, 1, 1], [[1, 0, 3, 2], [0, 1, 2, 3]])
    >>> [x.num_atoms for x in g.split()]
    [2, 2]
    """
    graphs = list(graphs)
    if not graphs:
        raise ValueError("cannot batch an empty list of graphs")
    if len(graphs) == 1:
        return graphs[0]
    first = graphs[0]
    cutoffs = {g.cutoff for g in graphs}
    if len(cutoffs) > 1:
        raise ValueError(f"cannot batch graphs built with different cutoffs: {sorted(cutoffs)}")
    device, fdtype = first.positions.device, first.positions.dtype
    atom_counts = torch.tensor([g.num_atoms for g in graphs], device=device)
    atom_offsets = torch.cumsum(atom_counts, 0) - atom_counts
    graph_counts = [g.num_graphs for g in graphs]
    graph_offsets = np.cumsum([0] + graph_counts[:-1]).tolist()
    edge_index = torch.cat([g.edge_index + atom_offsets[k] for k, g in enumerate(graphs)], dim=1)
    batch_index = torch.cat([g.batch + graph_offsets[k] for k, g in enumerate(graphs)])
    per_atom = tuple(dict.fromkeys(n for g in graphs for n in g.per_atom_targets))
    per_edge = tuple(dict.fromkeys(n for g in graphs for n in g.per_edge_targets))
    names = list(dict.fromkeys(n for g in graphs for n in g.targets))
    targets = {}
    for name in names:
        template = next(g.targets[name] for g in graphs if name in g.targets)
        parts = []
        for g in graphs:
            if name in g.targets:
                parts.append(g.targets[name])
            else:
                rows = g.num_edges if name in per_edge else g.num_atoms if name in per_atom else g.num_graphs
                fill = torch.full((rows, *template.shape[1:]), float("nan"), dtype=template.dtype if template.is_floating_point() else fdtype, device=device)
                parts.append(fill)
        targets[name] = torch.cat(parts)
    return AtomicGraph(
        positions=torch.cat([g.positions for g in graphs]),
        numbers=torch.cat([g.numbers for g in graphs]),
        edge_index=edge_index,
        shifts=torch.cat([g.shifts for g in graphs]),
        cell=torch.cat([g.cell for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
        batch=batch_index,
        n_atoms=torch.cat([g.n_atoms for g in graphs]),
        n_edges=torch.cat([g.n_edges for g in graphs]),
        cutoff=first.cutoff,
        targets=targets,
        total_charge=torch.cat([g.total_charge for g in graphs]),
        spin_multiplicity=torch.cat([_spins(g) for g in graphs]),
        config_type=[c for g in graphs for c in g.config_type],
        per_atom_targets=per_atom,
        per_edge_targets=per_edge,
        neighbor_options=dict(first.neighbor_options),
    )


def _info_number(info: dict, key: str, default, where: str | None):
    """``float(info[key])``, ``default`` when absent; a value that is not a finite number raises, naming the key."""
    if key not in info or info[key] is None:
        return default
    value = info[key]
    try:
        number = float(np.asarray(value, dtype=np.float64).item())
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number):
        raise ValueError(f"info {key!r} must be a finite number, got {value!r}" + (f" ({where})" if where else ""))
    return number


def _spins(graph: AtomicGraph) -> torch.Tensor:
    """The spin multiplicities of a graph; NaN ("not given") for a graph saved before they existed."""
    spins = getattr(graph, "spin_multiplicity", None)
    if spins is None:
        return torch.full((graph.num_graphs,), float("nan"), dtype=graph.positions.dtype, device=graph.positions.device)
    return spins


def _spin_of(graph: AtomicGraph) -> float | None:
    """The spin multiplicity of a one-structure graph, ``None`` when not given."""
    spin = float(_spins(graph)[0])
    return None if spin != spin else spin
