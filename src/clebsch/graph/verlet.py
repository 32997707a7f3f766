"""A Verlet neighbour list: candidate edges within ``cutoff + skin``, reused while valid.

The candidates are built once with :func:`clebsch.graph.radius_graph` at
``cutoff + skin``. At every later call the stored list is reused as long as no
pair that was farther than ``cutoff + skin`` at the last build can have come
within ``cutoff``; each call then keeps only the candidates shorter than
``cutoff`` (one cheap vectorised length test), so the edges handed to the model
are exactly those of a fresh list, in a possibly different order.

Every call, reused list or not, also checks the input cheaply: positions and
cell must be finite, and no two atoms may be closer than ``min_distance``
(the shortest candidate edge is at hand anyway). Without this a NaN position
would make every displacement test false and be served the old edges.

Validity test. Write the new cell as ``cell_new = cell_old @ M`` (``M`` is the
identity when the cell did not change) and each position as
``x_new = x_old @ M + d``. Every edge vector then becomes ``v @ M + d_j - d_i``,
so a pair that was at least ``cutoff + skin`` apart is still at least
``s_min(M) (cutoff + skin) - 2 max|d|`` apart, with ``s_min`` the smallest
singular value of ``M``. The list is reused while that bound is at least
``cutoff``: for a fixed cell, while no atom moved more than ``skin / 2``.
"""

from __future__ import annotations

import numpy as np
import torch

from ._validate import MIN_DISTANCE, check_cell, check_min_distance, check_positions
from .neighbors import radius_graph

__all__ = ["VerletList"]


class VerletList:
    """Neighbour list with a skin, rebuilt only when an atom may have crossed it.

    Parameters
    ----------
    cutoff : float
        Radius of the returned edges, Å.
    skin : float
        Extra radius of the stored candidates, Å; 0 rebuilds at every call.
    min_distance : float
        Atoms closer than this (Å) raise a :class:`ValueError` naming both;
        0 disables the check.

    Attributes
    ----------
    builds : int
        How many times the candidate list was (re)built.

    Examples
    --------
    >>> import numpy as np
    >>> nl = VerletList(cutoff=1.5, skin=0.5)
    >>> pos = np.array([[0.0, 0, 0], [1.0, 0, 0], [1.8, 0, 0]])
    >>> edge_index, shifts = nl.update(pos, np.array([1, 1, 1]), np.zeros((3, 3)), np.zeros(3, bool))
    >>> edge_index.shape[1], nl.builds
    (4, 1)
    >>> pos[2, 0] = 1.9  # moved 0.1 < skin / 2: reuse
    >>> edge_index, shifts = nl.update(pos, np.array([1, 1, 1]), np.zeros((3, 3)), np.zeros(3, bool))
    >>> edge_index.shape[1], nl.builds
    (4, 1)
    """

    def __init__(self, cutoff: float, skin: float = 0.5, min_distance: float = MIN_DISTANCE):
        if not 0 < cutoff < float("inf"):
            raise ValueError(f"cutoff must be a positive finite number of Å, got {cutoff}")
        if not 0 <= skin < float("inf"):
            raise ValueError(f"skin must be zero or a positive finite number of Å, got {skin}")
        if not 0 <= min_distance < float("inf"):
            raise ValueError(f"min_distance must be zero or a positive finite number of Å, got {min_distance}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.min_distance = float(min_distance)
        self.builds = 0
        self._ref = None

    def reset(self) -> None:
        """Forget the stored list; the next :meth:`update` rebuilds it."""
        self._ref = None

    def needs_rebuild(self, positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
        """Whether the stored candidates may miss a pair now closer than ``cutoff``."""
        ref = self._ref
        if ref is None or self.skin == 0.0:
            return True
        if positions.shape != ref["positions"].shape or not np.array_equal(numbers, ref["numbers"]):
            return True
        if not np.array_equal(pbc, ref["pbc"]):
            return True
        if np.array_equal(cell, ref["cell"]) or not pbc.any():
            displacement = positions - ref["positions"]
            s_min = 1.0
        elif pbc.all():
            # cell_new = cell_old @ M
            m = np.linalg.solve(ref["cell"], cell)
            displacement = positions - ref["positions"] @ m
            s_min = float(np.linalg.svd(m, compute_uv=False).min())
        else:
            return True  # a slab whose cell changed
        allowed = 0.5 * (s_min * (self.cutoff + self.skin) - self.cutoff)
        if allowed <= 0.0:
            return True
        moved = float(np.sqrt((displacement**2).sum(axis=1)).max()) if len(positions) else 0.0
        return moved > allowed

    def update(self, positions, numbers, cell, pbc, where: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Edges shorter than ``cutoff`` for the current structure.

        Parameters
        ----------
        positions : array [N, 3]
        numbers : array [N]
        cell : array [3, 3]
        pbc : array [3] bool
        where : str, optional
            Location named in error messages (e.g. ``"MD step 120"``).

        Returns
        -------
        edge_index : Tensor [2, E] long
            Sender (row 0) and receiver (row 1), as :func:`~clebsch.graph.radius_graph`.
        shifts : Tensor [E, 3] float64
            Integer cell shifts.

        Raises
        ------
        ValueError
            A position or the cell is not finite, or two atoms are closer than
            ``min_distance`` (the message names the atoms).
        """
        positions = check_positions(positions, where)
        numbers = np.asarray(numbers)
        cell, pbc = check_cell(np.asarray(cell, dtype=np.float64).reshape(3, 3), np.asarray(pbc, dtype=bool).reshape(3),
                               where)
        if self.needs_rebuild(positions, numbers, cell, pbc):
            edge_index, shifts = radius_graph(
                torch.from_numpy(positions), self.cutoff + self.skin, cell if pbc.any() else None, pbc,
                min_distance=self.min_distance, where=where,
            )
            self._ref = {
                "positions": positions.copy(),
                "numbers": numbers.copy(),
                "cell": cell.copy(),
                "pbc": pbc.copy(),
                "edge_index": edge_index.numpy(),
                "shifts": shifts.to(torch.float64).numpy(),
            }
            self.builds += 1
        ref = self._ref
        sender, receiver = ref["edge_index"]
        vectors = positions[sender] - positions[receiver] + ref["shifts"] @ cell
        squared = np.einsum("ij,ij->i", vectors, vectors)
        if squared.size and self.min_distance > 0 and squared.min() < self.min_distance**2:
            check_min_distance(receiver, sender, np.sqrt(squared), self.min_distance, where)
        keep = squared < self.cutoff**2
        return torch.from_numpy(ref["edge_index"][:, keep]), torch.from_numpy(ref["shifts"][keep])
