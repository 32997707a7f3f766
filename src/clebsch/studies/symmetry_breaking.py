r"""Symmetry breaking by a learnable order parameter.

An equivariant function's output has at least the symmetry of its input (Curie's
principle): four atoms on the corners of a square cannot be mapped to the
displacements that turn the square into a rectangle, and a cubic crystal cannot
be mapped to a tetragonal distortion. The best any equivariant model can do is
the projection of the targets on the outputs that have the input's symmetry;
:func:`symmetry_floor` computes the error left, by averaging the targets over
the input's symmetry operations (:func:`point_group`, :func:`symmetrize`).

A learnable input with declared irreps (:class:`OrderParameter`), initialised
small and optimised with the weights, lowers the symmetry of the input: the
model (:class:`OrderParameterNetwork`) then sees the geometry *and* the order
parameter, and stays equivariant in both jointly. Which irreps can do the job is
a question of symmetry: the square-to-rectangle distortion needs an even
``l >= 2`` parameter (``2e``: a traceless symmetric matrix whose principal axes
are the rectangle's), a polar (ferroelectric) distortion of a cubic crystal
needs a polar vector (``1o``); a ``2e`` parameter cannot make it, because it
keeps the centres of inversion. :func:`report` gives the learned parameter in
irreps and in Cartesian form (a vector for ``l = 1``, a traceless symmetric
3x3 matrix and its principal axes for ``2e``).

Examples
--------
The square and the rectangle's displacements: the floor is the whole signal.

>>> import torch
>>> from clebsch.graph import AtomicGraph
>>> square = torch.tensor([[1.0, 1, 0], [-1, 1, 0], [-1, -1, 0], [1, -1, 0]])
>>> graph = AtomicGraph.from_tensors(square, [6] * 4, cutoff=3.5)
>>> targets = 0.1 * square * torch.tensor([1.0, -1.0, 0.0])
>>> len(point_group(graph).rotations)
16
>>> abs(symmetry_floor(graph, targets, "1o") - float(targets.pow(2).mean())) < 1e-8
True
>>> model = OrderParameterNetwork([6], "1o", irreps_order="2e", cutoff=3.5)
>>> order = OrderParameter("2e", init_scale=0.01)
>>> model(graph, order).shape
torch.Size([4, 3])
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from ..graph import AtomicGraph
from ..models.nequip import InteractionBlock, hidden_irreps
from ..nn import BesselBasis, Linear, PolynomialCutoff
from ..o3 import CartesianTensor, Irreps, axis_angle_to_matrix, spherical_harmonics

__all__ = [
    "SymmetryOperations",
    "point_group",
    "symmetrize",
    "symmetry_floor",
    "OrderParameter",
    "OrderParameterNetwork",
    "FitResult",
    "fit_symmetry_breaking",
    "report",
    "format_report",
]


# ----------------------------------------------------------------------------- symmetry of the input


class SymmetryOperations(NamedTuple):
    """The symmetry operations of one structure.

    Operation ``g`` maps atom ``i`` to atom ``permutations[g, i]``:
    ``R_g r_i + t_g = r_{π_g(i)}`` (modulo the lattice in a crystal).

    Attributes
    ----------
    rotations : Tensor [G, 3, 3] float64
        Orthogonal matrices (proper and improper).
    permutations : Tensor [G, N] long
    axis_order : int or None
        For a linear molecule, whose symmetry group is infinite: the order of the
        finite rotation subgroup about the axis used in its place. The averages
        it gives are exact for irreps with ``l < axis_order``.
    """

    rotations: torch.Tensor
    permutations: torch.Tensor
    axis_order: int | None = None


def _structure_arrays(structure) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Positions, atomic numbers and cell (``None`` when open) of one structure."""
    if isinstance(structure, AtomicGraph):
        if structure.num_graphs != 1:
            raise ValueError(f"expected one structure, got a batch of {structure.num_graphs}; "
                             "split it with graph.split()")
        pos = structure.positions.detach().cpu().double().numpy()
        numbers = structure.numbers.cpu().numpy()
        pbc = structure.pbc[0].cpu().numpy()
        cell = structure.cell[0].detach().cpu().double().numpy()
    elif hasattr(structure, "get_positions") and hasattr(structure, "get_atomic_numbers"):  # ase.Atoms
        pos = np.asarray(structure.get_positions(), dtype=np.float64)
        numbers = np.asarray(structure.get_atomic_numbers())
        pbc = np.asarray(structure.pbc, dtype=bool)
        cell = np.asarray(structure.cell.array, dtype=np.float64)
    else:
        raise TypeError(f"expected an AtomicGraph or an ase.Atoms, got {type(structure).__name__}")
    if not np.isfinite(pos).all():
        raise ValueError("the structure has non-finite positions")
    if pbc.all():
        return pos, numbers, cell
    if pbc.any():
        raise ValueError(f"point_group handles open structures and structures periodic in all three directions, "
                         f"got pbc={pbc.tolist()}; pass the operations as group=SymmetryOperations(...)")
    return pos, numbers, None


def _maps_onto(R: np.ndarray, t: np.ndarray, pos, numbers, tol: float, cell=None) -> np.ndarray | None:
    """The permutation ``π`` with ``R r_i + t = r_π(i)`` (mod the cell), or None."""
    image = pos @ R.T + t
    diff = image[:, None, :] - pos[None, :, :]  # [N, N, 3]
    if cell is not None:
        frac = diff @ np.linalg.inv(cell)
        diff = (frac - np.round(frac)) @ cell
    dist = np.linalg.norm(diff, axis=-1)
    dist[numbers[:, None] != numbers[None, :]] = np.inf
    perm = dist.argmin(axis=1)
    if not (dist[np.arange(len(pos)), perm] < tol).all() or len(set(perm.tolist())) != len(pos):
        return None
    return perm


def _orthogonal(R: np.ndarray, tol: float = 1e-6) -> bool:
    return bool(np.abs(R @ R.T - np.eye(3)).max() < tol)


def _molecule_operations(pos, numbers, tol, axis_order):
    centre = pos.mean(axis=0)
    u = pos - centre
    n = len(pos)
    radius = np.linalg.norm(u, axis=1)
    scale = max(float(radius.max()), 1.0)
    sv = np.linalg.svd(u, compute_uv=False) if n > 1 else np.zeros(1)
    if sv[0] < tol:
        raise ValueError("the structure is a single point (its symmetry is all of O(3)); "
                         "only its 0e components can be nonzero")
    ops = []
    if len(sv) < 2 or sv[1] < tol * math.sqrt(n):  # linear: rotations about the axis, mirrors through it
        axis = u[radius.argmax()] / radius.max()
        perp = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
        perp /= np.linalg.norm(perp)
        mirror = np.eye(3) - 2 * np.outer(perp, perp)
        flips = [np.eye(3)]
        if _maps_onto(-np.eye(3), 2 * centre, pos, numbers, tol) is not None:
            flips.append(-np.eye(3))
        for k in range(axis_order):
            Rk = axis_angle_to_matrix(torch.tensor(axis), torch.tensor(2 * math.pi * k / axis_order)).numpy()
            for M in (np.eye(3), mirror):
                for F in flips:
                    ops.append(F @ Rk @ M)
        out = []
        for R in ops:
            perm = _maps_onto(R, centre - R @ centre, pos, numbers, tol)
            if perm is None:  # pragma: no cover - the operations above are symmetries by construction
                raise RuntimeError("linear molecule: an axial operation is not a symmetry")
            out.append((R, perm))
        return out, axis_order
    # generic: two non-parallel reference atoms fix an operation up to the mirror through their plane
    a = int(radius.argmax())
    cross = np.linalg.norm(np.cross(u[a], u), axis=1)
    b = int(cross.argmax())
    M = np.stack([u[a], u[b], np.cross(u[a], u[b])], axis=1)
    M_inv = np.linalg.inv(M)
    tol_d = tol * 10
    cand_a = [i for i in range(n) if numbers[i] == numbers[a] and abs(radius[i] - radius[a]) < tol_d]
    cand_b = [j for j in range(n) if numbers[j] == numbers[b] and abs(radius[j] - radius[b]) < tol_d]
    dot = u[a] @ u[b]
    out, seen = [], set()
    for i in cand_a:
        for j in cand_b:
            if abs(u[i] @ u[j] - dot) > tol_d * scale or i == j:
                continue
            for sign in (1.0, -1.0):
                R = np.stack([u[i], u[j], sign * np.cross(u[i], u[j])], axis=1) @ M_inv
                if not _orthogonal(R, 1e-3):
                    continue
                perm = _maps_onto(R, centre - R @ centre, pos, numbers, tol)
                if perm is not None and tuple(perm) + (sign,) not in seen:
                    seen.add(tuple(perm) + (sign,))
                    out.append((R, perm))
    return out, None


def _crystal_operations(pos, numbers, cell, tol):
    # candidate rotations: lattice bases of the same metric as the cell
    if abs(np.linalg.det(cell)) < 1e-8:
        raise ValueError("the periodic cell is singular")
    coeffs = np.array([c for c in itertools.product(range(-2, 3), repeat=3) if any(c)], dtype=np.float64)
    vectors = coeffs @ cell
    lengths = np.linalg.norm(vectors, axis=1)
    gram = cell @ cell.T
    tol_l = tol * 10
    by_axis = [vectors[np.abs(lengths - np.linalg.norm(cell[k])) < tol_l] for k in range(3)]
    rotations = []
    inv_cell = np.linalg.inv(cell)
    for b1 in by_axis[0]:
        for b2 in by_axis[1]:
            if abs(b1 @ b2 - gram[0, 1]) > tol_l:
                continue
            for b3 in by_axis[2]:
                if abs(b1 @ b3 - gram[0, 2]) > tol_l or abs(b2 @ b3 - gram[1, 2]) > tol_l:
                    continue
                R = np.stack([b1, b2, b3]).T @ inv_cell.T  # R a_k = b_k
                if _orthogonal(R, 1e-6):
                    rotations.append(R)
    species, counts = np.unique(numbers, return_counts=True)
    ref = int(np.flatnonzero(numbers == species[counts.argmin()])[0])
    out, seen = [], set()
    for R in rotations:
        for j in np.flatnonzero(numbers == numbers[ref]):
            t = pos[j] - R @ pos[ref]
            perm = _maps_onto(R, t, pos, numbers, tol, cell)
            if perm is None:
                continue
            key = tuple(np.round(R, 6).ravel()) + tuple(perm)
            if key not in seen:
                seen.add(key)
                out.append((R, perm))
    return out


def point_group(structure, *, tol: float = 1e-4, axis_order: int = 12) -> SymmetryOperations:
    """The operations (rotation or reflection, and translation) that map a structure onto itself.

    For a molecule, the point group about the centroid; for a crystal (periodic in
    all three directions), the space group modulo lattice translations (pure
    translations of a supercell included), so that every equivariant model on a
    periodic graph respects them all. Only rotations that map the cell's lattice
    onto itself are tried: a supercell whose lattice is less symmetric than its
    contents (a 2x1x1 cubic cell) gets a subgroup, and :func:`symmetry_floor`
    is then a lower bound.

    Parameters
    ----------
    structure : AtomicGraph or ase.Atoms
        One structure; atoms of different elements are never exchanged.
    tol : float
        Largest displacement (Å) of an atom from its image.
    axis_order : int
        A linear molecule gets the rotations by multiples of ``2π / axis_order``
        about its axis in place of all of them (exact for irreps up to
        ``l = axis_order - 1``).

    Returns
    -------
    SymmetryOperations

    Examples
    --------
    >>> from ase.build import molecule
    >>> len(point_group(molecule("CH4")).rotations), len(point_group(molecule("H2O")).rotations)
    (24, 4)
    >>> from ase.build import bulk
    >>> len(point_group(bulk("Cu", "sc", a=2.5)).rotations)
    48
    """
    pos, numbers, cell = _structure_arrays(structure)
    if cell is None:
        ops, order = _molecule_operations(pos, numbers, tol, int(axis_order))
    else:
        ops, order = _crystal_operations(pos, numbers, cell, tol), None
    if not ops:  # pragma: no cover - the identity is always found
        raise RuntimeError("no symmetry operation found, not even the identity; is tol too small?")
    rotations = torch.tensor(np.stack([R for R, _ in ops]), dtype=torch.float64)
    # snap to exact orthogonality (polar decomposition)
    U, _, Vh = torch.linalg.svd(rotations)
    rotations = U @ Vh
    permutations = torch.tensor(np.stack([p for _, p in ops]), dtype=torch.long)
    return SymmetryOperations(rotations, permutations, order)


def symmetrize(targets: torch.Tensor, irreps, group: SymmetryOperations) -> torch.Tensor:
    r"""The projection of ``targets`` on what an equivariant model can output for this input.

    ``(P y)_i = 1/|G| sum_g D(R_g)^{-1} y_{π_g(i)}`` for per-atom targets
    ``[N, irreps.dim]``; ``P y = 1/|G| sum_g D(R_g)^{-1} y`` for per-structure
    targets ``[irreps.dim]``. ``P`` is the orthogonal projector on the outputs
    that satisfy ``y_{π_g(i)} = D(R_g) y_i``.
    """
    irreps = Irreps(irreps)
    if not isinstance(targets, torch.Tensor) or targets.ndim not in (1, 2) or targets.shape[-1] != irreps.dim:
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets must be [N, {irreps.dim}] (per atom) or [{irreps.dim}] (per structure) "
                         f"for irreps {irreps}, got {shape}")
    if group.axis_order is not None and irreps.lmax >= group.axis_order:
        raise ValueError(f"irreps {irreps} go up to l = {irreps.lmax}, but the linear molecule's axis was sampled "
                         f"with axis_order={group.axis_order}; call point_group(..., axis_order={irreps.lmax + 1})")
    y = targets.detach().to(torch.float64)
    D = irreps.D_from_matrix(group.rotations)  # [G, d, d]
    if y.ndim == 1:
        return torch.einsum("gji,j->i", D, y).div(len(D)).to(targets.dtype)
    if group.permutations.shape[1] != y.shape[0]:
        raise ValueError(f"targets have {y.shape[0]} rows but the structure has {group.permutations.shape[1]} atoms")
    # D^{-1} = D^T for orthogonal D
    return torch.einsum("gji,gnj->ni", D, y[group.permutations]).div(len(D)).to(targets.dtype)


def symmetry_floor(structure, targets: torch.Tensor, irreps, *, group: SymmetryOperations | None = None,
                   tol: float = 1e-4) -> float:
    """The smallest mean squared error an equivariant model can reach on ``targets``.

    ``mean((y - P y)**2)`` over all entries, ``P`` the projection of
    :func:`symmetrize`; the same normalisation as the loss of
    :func:`fit_symmetry_breaking`. Zero when the targets have the input's symmetry.

    Parameters
    ----------
    structure : AtomicGraph or ase.Atoms
        One structure, or a batch (an :class:`AtomicGraph` of several structures,
        ``targets`` per atom over all of them).
    targets : Tensor
        ``[N, irreps.dim]`` per atom, or ``[irreps.dim]`` (``[B, irreps.dim]`` for a batch) per structure.
    irreps : Irreps or str
        What the targets are, e.g. ``"1o"`` for displacements.
    group : SymmetryOperations, optional
        The operations; by default :func:`point_group` of the structure.
    """
    irreps = Irreps(irreps)
    if isinstance(structure, AtomicGraph) and structure.num_graphs > 1:
        if group is not None:
            raise ValueError("group= applies to one structure; pass the structures one at a time")
        parts = structure.split()
        per_atom = targets.ndim == 2 and targets.shape[0] == structure.num_atoms
        if not per_atom and not (targets.ndim == 2 and targets.shape[0] == structure.num_graphs):
            raise ValueError(f"for a batch of {structure.num_graphs} structures ({structure.num_atoms} atoms) "
                             f"targets must be [{structure.num_atoms}, {irreps.dim}] or "
                             f"[{structure.num_graphs}, {irreps.dim}], got {tuple(targets.shape)}")
        rows = targets.split([g.num_atoms for g in parts]) if per_atom else targets.unbind(0)
        total = sum(symmetry_floor(g, y, irreps, tol=tol) * y.numel() for g, y in zip(parts, rows))
        return total / targets.numel()
    group = point_group(structure, tol=tol, axis_order=max(12, irreps.lmax + 1)) if group is None else group
    y = targets.detach().to(torch.float64)
    return float((y - symmetrize(y, irreps, group)).pow(2).mean())


# ----------------------------------------------------------------------------- the order parameter and the model


class OrderParameter(torch.nn.Module):
    """A learnable input with declared irreps, one per structure or one per atom.

    Parameters
    ----------
    irreps : Irreps or str
        E.g. ``"2e"`` (a traceless symmetric matrix), ``"1o"`` (a polar vector),
        ``"1e"`` (an axial vector), or a sum of them.
    per : {"structure", "atom"}
        One value per structure (broadcast to its atoms) or one per atom.
    num : int
        How many structures or atoms. A per-structure parameter with ``num = 1``
        is shared by every structure of a batch.
    init_scale : float
        Standard deviation of the random initial components (small: the input
        starts nearly symmetric and the fit chooses the direction).
    generator : torch.Generator, optional

    Examples
    --------
    >>> op = OrderParameter("2e", init_scale=0.1, generator=torch.Generator().manual_seed(0))
    >>> op.value.shape
    torch.Size([1, 5])
    """

    def __init__(self, irreps, per: str = "structure", num: int = 1, init_scale: float = 1e-2,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.irreps = Irreps(irreps)
        if self.irreps.dim == 0:
            raise ValueError(f"an order parameter needs at least one component, got irreps {self.irreps!r}")
        if per not in ("structure", "atom"):
            raise ValueError(f"per must be 'structure' or 'atom', got {per!r}")
        if int(num) < 1:
            raise ValueError(f"num must be a positive number of {per}s, got {num}")
        self.per, self.num = per, int(num)
        self.value = torch.nn.Parameter(init_scale * torch.randn(self.num, self.irreps.dim, generator=generator))

    def extra_repr(self) -> str:
        return f"{self.irreps}, per={self.per!r}, num={self.num}"

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        """The order parameter of every atom of ``graph``, ``[N, irreps.dim]``."""
        if self.per == "atom":
            if graph.num_atoms != self.num:
                raise ValueError(f"a per-atom order parameter for {self.num} atoms, but the graph has "
                                 f"{graph.num_atoms}")
            return self.value
        if self.num == 1:
            return self.value.expand(graph.num_atoms, -1)
        if graph.num_graphs != self.num:
            raise ValueError(f"a per-structure order parameter for {self.num} structures, but the graph has "
                             f"{graph.num_graphs}")
        return self.value[graph.batch]


class OrderParameterNetwork(torch.nn.Module):
    """An equivariant network from positions, elements and an order parameter to per-atom irreps.

    NequIP interaction blocks (:class:`clebsch.models.nequip.InteractionBlock`)
    on the radius graph; the initial feature of an atom is the embedding of its
    element next to its order parameter, so the network is equivariant jointly:
    rotating the structure by ``R`` and the order parameter by ``D(R)`` turns the
    outputs by ``D_out(R)`` (reflections included). Without an order parameter
    its outputs have (at least) the structure's symmetry.

    Parameters
    ----------
    elements : sequence of int
        The atomic numbers it knows.
    irreps_out : Irreps or str
        Per-atom outputs, e.g. ``"1o"`` for displacements; their ``l`` must not exceed ``lmax``.
    irreps_order : Irreps or str, optional
        The order parameter's irreps; ``None`` for a plain equivariant network.
    cutoff : float
        Neighbour radius (Å) the graphs were built with.
    channels, lmax, num_layers : int
        Copies of each irrep, highest degree, interaction blocks.
    parity : bool
        Hidden features of both parities for each ``l`` (needed for pseudovector
        or pseudoscalar outputs and order parameters such as ``1e``); otherwise
        only the parity ``(-1)**l`` of the spherical harmonics. Reflections are
        respected either way.
    num_basis, radial_hidden : int
        Bessel functions and width of the radial MLP.
    avg_num_neighbors : float
        Convolutions are divided by its square root.
    """

    def __init__(self, elements: Sequence[int], irreps_out, irreps_order=None, *, cutoff: float,
                 channels: int = 8, lmax: int = 2, num_layers: int = 2, parity: bool = True, num_basis: int = 8,
                 radial_hidden: int = 16, avg_num_neighbors: float = 4.0) -> None:
        super().__init__()
        self.elements = sorted({int(z) for z in elements})
        if not self.elements:
            raise ValueError("elements must list at least one atomic number")
        self.irreps_out = Irreps(irreps_out)
        self.irreps_order = Irreps(irreps_order) if irreps_order is not None else Irreps("")
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        self.cutoff = float(cutoff)
        self.irreps_sh = Irreps.spherical_harmonics(lmax)
        self.embedding = torch.nn.Parameter(torch.randn(len(self.elements), channels))
        self.basis = BesselBasis(cutoff, num_basis, trainable=False)
        self.envelope = PolynomialCutoff(cutoff)
        target = hidden_irreps(channels, lmax, parity)
        missing = [str(ir) for _, ir in self.irreps_out if ir not in {x for _, x in target}]
        if missing:
            raise ValueError(f"irreps_out {self.irreps_out}: the hidden features ({target}) have no {missing}; "
                             f"raise lmax (now {lmax})" + ("" if parity else " or set parity=True"))
        irreps = (Irreps([(channels, "0e")]) + self.irreps_order).simplify()
        self.layers = torch.nn.ModuleList()
        for _ in range(num_layers):
            block = InteractionBlock(irreps, target, self.irreps_sh, len(self.elements), num_basis, radial_hidden,
                                     1, avg_num_neighbors, resnet=True)
            self.layers.append(block)
            irreps = block.irreps_out
        missing = [str(ir) for _, ir in self.irreps_out if ir not in {x for _, x in irreps}]
        if missing:
            raise ValueError(f"irreps_out {self.irreps_out}: the hidden features after {num_layers} blocks "
                             f"({irreps}) have no {missing}; raise num_layers")
        self.readout = Linear(irreps, self.irreps_out)
        lookup = torch.full((max(self.elements) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(self.elements)] = torch.arange(len(self.elements))
        self.register_buffer("_lookup", lookup, persistent=False)

    def species(self, numbers: torch.Tensor) -> torch.Tensor:
        known = (numbers >= 0) & (numbers < self._lookup.shape[0])
        index = torch.where(known, self._lookup[numbers.clamp(0, self._lookup.shape[0] - 1)], -1)
        if bool((index < 0).any()):
            atom = int((index < 0).nonzero()[0])
            raise ValueError(f"atom {atom} has atomic number {int(numbers[atom])}, which the network does not know "
                             f"(elements: {self.elements})")
        return index

    def forward(self, graph: AtomicGraph, order_parameter=None) -> torch.Tensor:
        """Per-atom outputs ``[N, irreps_out.dim]``.

        ``order_parameter``: an :class:`OrderParameter` (or any callable of the
        graph), a tensor ``[N, irreps_order.dim]`` per atom or ``[irreps_order.dim]``
        for all atoms; required exactly when the network was built with ``irreps_order``.
        """
        if graph.cutoff > self.cutoff + 1e-9:
            raise ValueError(f"the graph was built with cutoff {graph.cutoff} Å, the network with {self.cutoff} Å")
        species = self.species(graph.numbers)
        vectors = graph.edge_vectors()
        dtype = vectors.dtype
        h = self.embedding.to(dtype)[species]
        if self.irreps_order.dim:
            if order_parameter is None:
                raise ValueError(f"the network was built with irreps_order={self.irreps_order}: "
                                 "pass an order parameter")
            op = order_parameter(graph) if callable(order_parameter) else torch.as_tensor(order_parameter)
            op = op.to(dtype)
            if op.ndim == 1 or (op.ndim == 2 and op.shape[0] == 1):
                op = op.reshape(1, -1).expand(graph.num_atoms, -1)
            if op.shape != (graph.num_atoms, self.irreps_order.dim):
                raise ValueError(f"order parameter of shape {tuple(op.shape)}, expected "
                                 f"[{graph.num_atoms}, {self.irreps_order.dim}] ({self.irreps_order})")
            h = torch.cat([h, op], dim=-1)
        elif order_parameter is not None:
            raise ValueError("the network was built without irreps_order; it takes no order parameter")
        length = vectors.norm(dim=-1)
        sh = spherical_harmonics(self.irreps_sh, vectors, normalize=True, normalization="component")
        basis, envelope = self.basis(length), self.envelope(length)
        for layer in self.layers:
            h = layer(h, species, graph.edge_index, sh, basis, envelope)
        return self.readout(h)


# ----------------------------------------------------------------------------- fitting


@dataclasses.dataclass
class FitResult:
    """What :func:`fit_symmetry_breaking` returns.

    Attributes
    ----------
    history : list of float
        The loss (mean squared error over all entries) at every evaluation: once
        per step with Adam, several times per step with LBFGS.
    loss : float
        The loss of the final parameters.
    order_parameter : Tensor or None
        The learned order parameter, ``[num, irreps.dim]`` (detached), or None.
    irreps : Irreps or None
        Its irreps.
    """

    history: list
    loss: float
    order_parameter: torch.Tensor | None
    irreps: Irreps | None


def fit_symmetry_breaking(model: torch.nn.Module, graph: AtomicGraph, targets: torch.Tensor,
                          order_parameter: OrderParameter | None = None, *, steps: int = 300, lr: float = 1e-2,
                          optimizer: str = "adam", callback: Callable | None = None) -> FitResult:
    """Fit ``model(graph, order_parameter)`` to per-atom ``targets``, the order parameter with the weights.

    Parameters
    ----------
    model : OrderParameterNetwork
    graph : AtomicGraph
        One structure or a batch.
    targets : Tensor [N, irreps_out.dim]
    order_parameter : OrderParameter, optional
        Learned jointly with the weights; None for the symmetric baseline.
    steps : int
        Optimiser steps (LBFGS: outer iterations of up to 20 evaluations each).
    lr : float
    optimizer : {"adam", "lbfgs"}
    callback : callable, optional
        ``callback(step, loss)`` after every step.

    Returns
    -------
    FitResult
    """
    if targets.shape != (graph.num_atoms, model.irreps_out.dim):
        raise ValueError(f"targets have shape {tuple(targets.shape)}, expected [{graph.num_atoms}, "
                         f"{model.irreps_out.dim}] ({model.irreps_out} per atom)")
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
    params = list(model.parameters()) + (list(order_parameter.parameters()) if order_parameter is not None else [])
    targets = targets.to(graph.positions.dtype)

    def loss_fn():
        return (model(graph, order_parameter) - targets).pow(2).mean()

    history = []
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
        for step in range(int(steps)):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()
            history.append(loss.item())
            if callback is not None:
                callback(step, history[-1])
    else:
        opt = torch.optim.LBFGS(params, lr=lr, max_iter=20, history_size=50, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            history.append(loss.item())
            return loss

        for step in range(int(steps)):
            opt.step(closure)
            if callback is not None:
                callback(step, history[-1])
    with torch.no_grad():
        final = float(loss_fn())
    op = order_parameter.value.detach().clone() if order_parameter is not None else None
    return FitResult(history, final, op, order_parameter.irreps if order_parameter is not None else None)


# ----------------------------------------------------------------------------- reporting


def report(order_parameter, irreps=None) -> list[list[dict]]:
    """The order parameter in irreps and in Cartesian form.

    Parameters
    ----------
    order_parameter : OrderParameter or Tensor
        ``[num, irreps.dim]`` (or ``[irreps.dim]``).
    irreps : Irreps or str, optional
        Required when a tensor is given.

    Returns
    -------
    list (one per structure or atom) of lists (one per irrep) of dicts with keys
    ``irrep`` (str), ``components`` (Tensor), ``norm`` (float) and ``cartesian``:
    the number for ``l = 0``, the vector ``(x, y, z)`` for ``l = 1`` (polar for
    ``1o``, axial for ``1e``), the traceless symmetric 3x3 matrix for ``2e`` (with
    its ``eigenvalues`` and ``axes``, the eigenvectors as columns, by decreasing
    eigenvalue), None for higher ``l``.

    Examples
    --------
    >>> c = CartesianTensor("ij=ji").from_cartesian(torch.diag(torch.tensor([1.0, -1.0, 0.0])))[1:]
    >>> block = report(c, "2e")[0][0]
    >>> block["irrep"], torch.allclose(block["cartesian"], torch.diag(torch.tensor([1.0, -1.0, 0.0])), atol=1e-6)
    ('2e', True)
    >>> block["eigenvalues"]
    tensor([ 1.,  0., -1.])
    """
    if isinstance(order_parameter, OrderParameter):
        irreps, value = order_parameter.irreps, order_parameter.value.detach()
    else:
        if irreps is None:
            raise ValueError("report(tensor) needs the irreps: report(value, irreps='2e')")
        irreps, value = Irreps(irreps), torch.as_tensor(order_parameter).detach()
    if value.ndim == 1:
        value = value[None]
    if value.shape[-1] != irreps.dim:
        raise ValueError(f"order parameter of shape {tuple(value.shape)} does not match irreps {irreps} "
                         f"(dimension {irreps.dim})")
    symmetric = CartesianTensor("ij=ji")
    out = []
    for row in value:
        blocks = []
        for (mul, ir), sl in zip(irreps, irreps.slices()):
            for u, comp in enumerate(row[sl].reshape(mul, ir.dim)):
                block = {"irrep": str(ir) if mul == 1 else f"{ir}[{u}]", "components": comp.clone(),
                         "norm": float(comp.norm()), "cartesian": None}
                if ir.l == 0:
                    block["cartesian"] = float(comp[0])
                elif ir.l == 1:
                    block["cartesian"] = comp.clone()
                elif ir == (2, 1):
                    matrix = symmetric.to_cartesian(torch.cat([comp.new_zeros(1), comp]))
                    evals, evecs = torch.linalg.eigh(matrix)
                    block.update(cartesian=matrix, eigenvalues=evals.flip(0), axes=evecs.flip(1))
                blocks.append(block)
        out.append(blocks)
    return out


def format_report(order_parameter, irreps=None, *, max_rows: int = 8, digits: int = 4) -> str:
    """:func:`report` as readable text (the first ``max_rows`` structures or atoms)."""
    rows = report(order_parameter, irreps)

    def fmt(t):
        return np.array2string(np.asarray(t, dtype=np.float64), precision=digits, suppress_small=True,
                               floatmode="fixed")

    lines = []
    for k, blocks in enumerate(rows[:max_rows]):
        if len(rows) > 1:
            lines.append(f"[{k}]")
        for b in blocks:
            lines.append(f"  {b['irrep']}: components {fmt(b['components'])}, norm {b['norm']:.{digits}g}")
            if b.get("eigenvalues") is not None:
                lines.append("    Cartesian (traceless symmetric):")
                lines += ["      " + fmt(r) for r in b["cartesian"]]
                lines.append(f"    eigenvalues {fmt(b['eigenvalues'])}; principal axes (columns):")
                lines += ["      " + fmt(r) for r in b["axes"]]
            elif isinstance(b["cartesian"], torch.Tensor):
                kind = "polar" if b["irrep"].startswith("1o") else "axial"
                lines.append(f"    Cartesian ({kind} vector): {fmt(b['cartesian'])}")
    if len(rows) > max_rows:
        lines.append(f"... ({len(rows) - max_rows} more)")
    return "\n".join(lines)
