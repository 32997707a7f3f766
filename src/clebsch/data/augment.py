"""Rotation augmentation: a structure and every reference value it carries, turned by the same rotation.

A model that is not rotation-equivariant by design (:mod:`clebsch.models.cartesian`)
learns rotational symmetry only from data. With ``data.augment: rotations`` each
training batch is passed through :func:`augment_batch`, which gives every
structure its own random proper rotation ``R`` (uniform on SO(3)) and applies it
to the positions (about the origin: where the structure sits does not matter to a
translation-invariant model), to the cell, and to every target by its declaration
(:class:`~clebsch.targets.Target`):

- irreps (``"1o"`` forces and dipole, ``"1e + 2e"``, ...): the Wigner D of the
  irreps, ``x -> D(R) x``; scalars (energy, charges, ``0e``) are unchanged;
- Cartesian tensors (``"ij=ji"`` stress, virial, polarizability, ``"ij"`` Born
  charges, higher ranks): ``R`` on every index, ``T_ab -> R_ai R_bj T_ij``;
- targets in an atom-centred basis: coefficients by the basis's union irreps,
  matrix blocks ``M -> D M D^T``;
- per structure, per atom or per edge alike: each row takes the rotation of the
  structure it belongs to (an edge, its receiver's).

Missing values (NaN) stay missing, and the components they would mix into become
missing too. The loss weights (``weight``, ``forces_weight``) are scalars; any
other target without a declaration cannot be rotated and raises, naming it.

Examples
--------
>>> import torch
>>> from clebsch.graph import AtomicGraph
>>> g = AtomicGraph.from_tensors(torch.tensor([[0.0, 0, 0], [0.96, 0, 0]], dtype=torch.float64), [8, 1], 2.0,
...                              targets={"energy": torch.tensor([-1.0]), "forces": torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]])})
>>> R = random_rotation(torch.Generator().manual_seed(0))
>>> turned = rotate_graph(g, R)
>>> torch.allclose(turned.targets["forces"], g.targets["forces"].double() @ R.T), turned.targets["energy"].item()
(True, -1.0)
>>> torch.allclose(turned.edge_lengths(), g.edge_lengths())
True
"""

from __future__ import annotations

import dataclasses

import torch

from ..o3 import Irreps, rand_matrix
from ..targets import TARGETS, Target

__all__ = ["random_rotation", "rotate_graph", "augment_batch", "SCALAR_ENTRIES"]

SCALAR_ENTRIES = ("weight", "forces_weight")
"""Entries of ``graph.targets`` that are loss weights (scalars), not declared targets."""


def random_rotation(generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                    num: int | None = None, device=None) -> torch.Tensor:
    """A proper rotation matrix drawn uniformly (Haar measure) on SO(3); ``num`` of them ``[num, 3, 3]``.

    Drawn on the CPU with ``generator`` (torch's global generator if None, which a
    training checkpoint saves, so a resumed run draws the same rotations), in float64,
    then cast to ``dtype`` and moved to ``device``.

    Examples
    --------
    >>> R = random_rotation(torch.Generator().manual_seed(1), num=4)
    >>> R.shape, bool(torch.allclose(torch.linalg.det(R), torch.ones(4, dtype=torch.float64)))
    (torch.Size([4, 3, 3]), True)
    """
    if num is not None and (isinstance(num, bool) or int(num) != num or num < 0):
        raise ValueError(f"num must be a non-negative count of rotations, got {num!r}")
    shape = () if num is None else (int(num),)
    R = rand_matrix(*shape, generator=generator, dtype=torch.float64)
    return R.to(dtype=dtype, device=device)


def _rows_of(graph, level: str) -> torch.Tensor | None:
    """The structure of every row of a value at ``level`` (None for per-structure values)."""
    if level == "structure":
        return None
    if level == "atom":
        return graph.batch
    return graph.batch[graph.edge_index[1]]


def _apply_cartesian(value: torch.Tensor, R: torch.Tensor, rank: int) -> torch.Tensor:
    """``R`` (one per row) on each of the ``rank`` trailing Cartesian indices of ``value`` [K, 3, ..., 3]."""
    letters = "abcdefgh"[:rank]
    out = value
    for k in range(rank):
        spec = f"n{letters},nz{letters[k]}->n{letters[:k]}z{letters[k + 1:]}"
        out = torch.einsum(spec, out, R)
    return out


def _rotate_rows(target: Target, value: torch.Tensor, R: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``value`` [K, *shape] of ``target`` turned by the rotations ``R`` [B, 3, 3] of the structures ``rows`` [K]
    of its rows (NaN-safe)."""
    if target.cartesian is not None:
        M = R.to(value.dtype)

        def apply(x, M):
            return _apply_cartesian(x, M, target.rank)
    else:
        irreps = target.basis.union_irreps if target.basis is not None else Irreps(target.irreps)
        if all(ir.l == 0 and ir.p == 1 for _, ir in irreps):
            return value  # scalars: nothing to turn
        M = irreps.D_from_matrix(R.to(torch.float64)).to(value.dtype)  # one [d, d] per structure
        if target.matrix:
            def apply(x, M):
                return M @ x @ M.transpose(-1, -2)
        else:
            shape = value.shape

            def apply(x, M):
                return torch.einsum("nij,nj->ni", M, x.reshape(x.shape[0], -1)).reshape(shape)
    if rows is not None:
        M = M[rows]
    missing = torch.isnan(value)
    if not bool(missing.any()):
        return apply(value, M)
    out = apply(torch.where(missing, torch.zeros_like(value), value), M)
    # a component is missing when any missing component of the row mixes into it
    spread = apply(missing.to(value.dtype), M.abs()) > 0
    return torch.where(spread, torch.full_like(out, float("nan")), out)


def rotate_graph(graph, R: torch.Tensor, targets: dict[str, Target] | None = None):
    """A copy of ``graph`` turned by ``R``: positions, cells and every target by its declaration.

    Parameters
    ----------
    graph : clebsch.graph.AtomicGraph
        One structure or a batch of ``B``.
    R : Tensor [3, 3] or [B, 3, 3]
        One orthogonal matrix for every structure, or one per structure. Positions turn
        about the origin (``r -> R r``), lattice vectors likewise, so the edges and
        their cell shifts stay valid. A reflection (det -1) is allowed: pseudovectors
        and odd-parity irreps then change sign as their declarations say.
    targets : dict of str to Target, optional
        The declarations (a model's ``model.targets``, or
        :func:`clebsch.targets.resolve_targets` of a config's ``model.targets``);
        default: the built-in :data:`clebsch.targets.TARGETS`.

    Raises
    ------
    ValueError
        ``R`` has the wrong shape or is not orthogonal, or ``graph`` holds a target that
        has no declaration (other than the loss weights :data:`SCALAR_ENTRIES`), so its
        rotation is unknown: the message names it.
    """
    declared = TARGETS if targets is None else targets
    B = graph.num_graphs
    R = torch.as_tensor(R)
    if R.shape == (3, 3):
        R = R.expand(B, 3, 3)
    if R.shape != (B, 3, 3):
        raise ValueError(f"R must be one 3x3 matrix or one per structure ([{B}, 3, 3]), got shape {list(R.shape)}")
    R64 = R.detach().to(torch.float64)
    eye = torch.eye(3, dtype=torch.float64, device=R64.device)
    error = float((R64 @ R64.transpose(-1, -2) - eye).abs().max()) if B else 0.0
    tolerance = 1e-5 if R.dtype != torch.float64 else 1e-10
    if not error <= tolerance:
        raise ValueError(f"R is not orthogonal (largest entry of R R^T - 1 is {error:.3g}); give rotation matrices")
    device, dtype = graph.positions.device, graph.positions.dtype
    R = R64.to(device=device)  # Wigner D from float64 rotations; each value in its own dtype

    new_targets = {}
    for name, value in graph.targets.items():
        if name in SCALAR_ENTRIES:
            new_targets[name] = value
            continue
        target = declared.get(name)
        if target is None:
            raise ValueError(
                f"cannot rotate target {name!r}: it has no declaration, so how it turns under a rotation is not "
                f"known; declare it under model.targets with its irreps or cartesian layout (e.g. {{level: atom, "
                f"irreps: 1o}}), or leave it out of data.keys; declared targets: {sorted(declared)}")
        if not value.is_floating_point():
            new_targets[name] = value
            continue
        rows = _rows_of(graph, target.level)
        count = B if rows is None else rows.shape[0]
        if value.shape[0] != count:
            raise ValueError(f"cannot rotate target {name!r}: a per-{target.level} value has {value.shape[0]} rows "
                             f"but the graph has {count} {target.level}s")
        new_targets[name] = _rotate_rows(target, value, R, rows)

    R = R.to(dtype)
    positions = torch.einsum("nij,nj->ni", R[graph.batch], graph.positions)
    cell = torch.einsum("bki,bji->bkj", graph.cell, R)  # rows are lattice vectors: a_k -> R a_k
    return dataclasses.replace(graph, positions=positions, cell=cell, targets=new_targets,
                               config_type=list(graph.config_type), neighbor_options=dict(graph.neighbor_options))


def augment_batch(graph, targets: dict[str, Target] | None = None, generator: torch.Generator | None = None):
    """``graph`` with each of its structures turned by its own random proper rotation (see :func:`rotate_graph`).

    The training step of a run with ``data.augment: rotations`` calls it on every batch,
    ``graph = augment_batch(graph, model.targets)``; rotations come from ``generator``
    (torch's global generator if None). The input graph is left as it was.

    Examples
    --------
    >>> import torch
    >>> from clebsch.graph import AtomicGraph, batch
    >>> pos = torch.tensor([[0.0, 0, 0], [0.0, 0, 1.1]], dtype=torch.float64)
    >>> g = batch([AtomicGraph.from_tensors(pos, [6, 8], 2.0, targets={"dipole": torch.tensor([[0.0, 0, 0.1]])})] * 2)
    >>> turned = augment_batch(g, generator=torch.Generator().manual_seed(0))
    >>> lengths = turned.targets["dipole"].norm(dim=1)
    >>> torch.allclose(lengths, torch.full((2,), 0.1, dtype=torch.float64)), bool((turned.positions != g.positions).any())
    (True, True)
    """
    R = random_rotation(generator, torch.float64, num=graph.num_graphs)
    return rotate_graph(graph, R, targets)
