"""Atomic graphs: structures as tensors, neighbour lists, batching.

- :class:`AtomicGraph` — positions, atomic numbers, cell, pbc, edges (sender
  ``j`` -> receiver ``i``) with cell shifts, batch index and targets; one
  structure or a batch.
- :func:`batch` — many graphs into one; :meth:`AtomicGraph.split` back.
- :func:`radius_graph`, :func:`knn_graph`, :func:`bond_graph` — neighbour lists
  (vesin cell lists, periodic orthorhombic and triclinic cells).
- :class:`VerletList` — a radius list with a skin, rebuilt only when atoms moved far enough.
- :func:`normalized_laplacian`, :func:`laplacian_positional_encoding` — the graph Laplacian
  and its eigenvectors as per-atom positional encodings (topology only).
"""

from ._validate import MIN_DISTANCE, check_cell, check_cutoff, check_positions
from .atomic_graph import PER_ATOM_TARGETS, AtomicGraph, batch
from .laplacian import laplacian_positional_encoding, normalized_laplacian
from .neighbors import bond_graph, knn_graph, radius_graph
from .verlet import VerletList

__all__ = [
    "AtomicGraph",
    "batch",
    "radius_graph",
    "knn_graph",
    "bond_graph",
    "VerletList",
    "normalized_laplacian",
    "laplacian_positional_encoding",
    "check_cutoff",
    "check_positions",
    "check_cell",
    "PER_ATOM_TARGETS",
    "MIN_DISTANCE",
]
