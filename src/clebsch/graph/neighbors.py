"""Neighbour lists: radius cutoff (with periodic images), k-nearest, covalent bonds.

All three return ``(edge_index, shifts)``:

- ``edge_index`` [2, E] long, row 0 the sender ``j``, row 1 the receiver ``i``;
- ``shifts`` [E, 3] integer cell shifts (stored as float) such that the edge
  vector from ``i`` to ``j`` is ``positions[j] - positions[i] + shifts @ cell``.

The lists are full (both ``i -> j`` and ``j -> i``), include every periodic image
within reach (cells smaller than twice the cutoff give several images of a
neighbour and of the atom itself) and never contain an atom paired with itself
at zero shift. Atoms closer than ``min_distance`` (0.1 Å by default) raise a
:class:`ValueError` naming both atoms. The radius search is vesin's cell list.
"""

from __future__ import annotations

import numpy as np
import torch
import vesin
from ase.data import covalent_radii

from ._validate import MIN_DISTANCE, check_cell, check_cutoff, check_positions, check_min_distance, fill_open_directions

__all__ = ["radius_graph", "knn_graph", "bond_graph"]


def _as_numpy(x):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _search(positions, cutoff, cell, pbc):
    """vesin full list -> (receivers i, senders j, shifts S, lengths d) as numpy arrays."""
    if len(positions) == 0:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.int64), np.zeros(0))
    box = fill_open_directions(cell, pbc) if pbc.any() else np.zeros((3, 3))
    nl = vesin.NeighborList(cutoff=cutoff, full_list=True)
    i, j, s, d = nl.compute(positions, box, pbc.tolist(), "ijSd")
    return i.astype(np.int64), j.astype(np.int64), s.astype(np.int64), d


def _to_torch(receivers, senders, shifts, dtype):
    edge_index = torch.from_numpy(np.stack([senders, receivers]).astype(np.int64)).reshape(2, -1)
    return edge_index, torch.from_numpy(np.asarray(shifts, dtype=np.float64)).reshape(-1, 3).to(dtype)


def _float_dtype(positions):
    if isinstance(positions, torch.Tensor) and positions.is_floating_point():
        return positions.dtype
    return torch.get_default_dtype()


def radius_graph(positions, cutoff, cell=None, pbc=None, *, min_distance: float = MIN_DISTANCE, where: str | None = None):
    """All pairs closer than ``cutoff``, periodic images included.

    Parameters
    ----------
    positions : Tensor or array, [N, 3]
        Cartesian positions in Å.
    cutoff : float
        Radius in Å; must be positive.
    cell : Tensor or array, [3, 3], optional
        Lattice vectors as rows. Required when any direction is periodic.
    pbc : sequence of 3 bool, optional
        Periodic directions; defaults to all periodic when a cell is given.
    min_distance : float
        Pairs closer than this raise (overlapping atoms); 0 disables the check.
    where : str, optional
        Location named in error messages (file, frame).

    Returns
    -------
    edge_index : Tensor, [2, E] long
        Row 0 the sender ``j``, row 1 the receiver ``i``.
    shifts : Tensor, [E, 3]
        Integer cell shifts (as floats, in the dtype of ``positions``).

    Examples
    --------
    >>> import torch
    >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    >>> edge_index, shifts = radius_graph(pos, cutoff=1.5)
    >>> edge_index.tolist()
    [[1, 0], [0, 1]]

    An atom alone in a 2 Å periodic cube sees its own six nearest images:

    >>> edge_index, shifts = radius_graph(torch.zeros(1, 3), 2.5, cell=2.0 * torch.eye(3))
    >>> edge_index.shape[1]
    6
    """
    cutoff = check_cutoff(cutoff)
    dtype = _float_dtype(positions)
    pos = check_positions(_as_numpy(positions), where)
    cell_np, pbc_np = check_cell(_as_numpy(cell), _as_numpy(pbc), where)
    i, j, s, d = _search(pos, max(cutoff, min_distance), cell_np, pbc_np)
    check_min_distance(i, j, d, min_distance, where)
    if min_distance > cutoff:
        keep = d < cutoff
        i, j, s = i[keep], j[keep], s[keep]
    return _to_torch(i, j, s, dtype)


def knn_graph(positions, k: int, cell=None, pbc=None, *, cutoff: float | None = None,
              min_distance: float = MIN_DISTANCE, where: str | None = None):
    """Each atom receives from its ``k`` nearest neighbours (periodic images count).

    The search radius grows until every atom has ``k`` candidates (or, in an open
    structure, all the others). Ties are broken by sender index. When ``cutoff`` is
    given, neighbours beyond it are dropped, so an atom may get fewer than ``k``.
    The graph is directed: ``j`` among the ``k`` nearest of ``i`` does not make
    ``i`` one of the ``k`` nearest of ``j``.

    Examples
    --------
    >>> import torch
    >>> pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0], [7.0, 0, 0]])
    >>> edge_index, _ = knn_graph(pos, k=1)
    >>> edge_index.tolist()
    [[1, 0, 1, 2], [0, 1, 2, 3]]
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if cutoff is not None:
        cutoff = check_cutoff(cutoff)
    dtype = _float_dtype(positions)
    pos = check_positions(_as_numpy(positions), where)
    cell_np, pbc_np = check_cell(_as_numpy(cell), _as_numpy(pbc), where)
    n = len(pos)
    if n == 0 or (n == 1 and not pbc_np.any()):
        return _to_torch([], [], np.zeros((0, 3)), dtype)
    wanted = k if pbc_np.any() else min(k, n - 1)
    if pbc_np.any():
        volume = abs(np.linalg.det(fill_open_directions(cell_np, pbc_np)))
        extent = np.ptp(pos, axis=0)
        volume = max(volume, float(np.prod(np.maximum(extent, 1.0))))
    else:
        volume = float(np.prod(np.maximum(np.ptp(pos, axis=0), 1.0)))
    radius = max(1.0, 1.5 * (3.0 * volume * (wanted + 1) / (4.0 * np.pi * n)) ** (1.0 / 3.0))
    diameter = float(np.linalg.norm(np.ptp(pos, axis=0))) + 1e-6
    while True:
        i, j, s, d = _search(pos, radius, cell_np, pbc_np)
        counts = np.bincount(i, minlength=n)
        if counts.min() >= wanted or (not pbc_np.any() and radius > diameter):
            break
        if cutoff is not None and radius >= cutoff:
            break
        radius *= 1.5
    check_min_distance(i, j, d, min_distance, where)
    order = np.lexsort((j, d, i))  # by receiver, then distance, then sender
    i, j, s, d = i[order], j[order], s[order], d[order]
    starts = np.concatenate([[0], np.cumsum(np.bincount(i, minlength=n))[:-1]])
    rank = np.arange(len(i)) - starts[i]
    keep = rank < k
    if cutoff is not None:
        keep &= d < cutoff
    return _to_torch(i[keep], j[keep], s[keep], dtype)


def bond_graph(numbers, positions, scale: float = 1.2, cell=None, pbc=None, *,
               min_distance: float = MIN_DISTANCE, where: str | None = None):
    """Covalent bonds: pairs closer than ``scale * (r_i + r_j)`` with ASE's covalent radii.

    Examples
    --------
    >>> import torch
    >>> numbers = torch.tensor([8, 1, 1])  # water
    >>> pos = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    >>> edge_index, _ = bond_graph(numbers, pos)
    >>> sorted(map(tuple, edge_index.t().tolist()))  # no H-H bond
    [(0, 1), (0, 2), (1, 0), (2, 0)]
    """
    scale = check_cutoff(scale, "scale")
    dtype = _float_dtype(positions)
    z = _as_numpy(numbers).astype(np.int64).reshape(-1)
    pos = check_positions(_as_numpy(positions), where)
    if len(z) != len(pos):
        raise ValueError(f"numbers has {len(z)} entries but positions has {len(pos)} atoms")
    if len(z) and (z.min() < 1 or z.max() >= len(covalent_radii)):
        bad = int(np.flatnonzero((z < 1) | (z >= len(covalent_radii)))[0])
        raise ValueError(f"atom {bad} has atomic number {int(z[bad])}, which has no covalent radius")
    cell_np, pbc_np = check_cell(_as_numpy(cell), _as_numpy(pbc), where)
    radii = covalent_radii[z] if len(z) else np.zeros(0)
    reach = max(2.0 * scale * float(radii.max()) if len(z) else 1.0, min_distance)
    i, j, s, d = _search(pos, reach, cell_np, pbc_np)
    check_min_distance(i, j, d, min_distance, where)
    keep = d < scale * (radii[i] + radii[j])
    return _to_torch(i[keep], j[keep], s[keep], dtype)
