"""Input checks shared by the neighbour lists and :class:`AtomicGraph`.

Every check raises :class:`ValueError` with a message that names what is wrong
and where (the atom, the pair of atoms, the cell vector). Callers that know
more (the file and the frame) prefix their own context.
"""

from __future__ import annotations

import math

import numpy as np

#: Two atoms closer than this (in Å) are taken to be a mistake in the input.
MIN_DISTANCE = 0.1


def check_cutoff(cutoff) -> float:
    """Return ``cutoff`` as a float, or raise if it is not a positive finite number."""
    try:
        value = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be a positive number of Å, got {cutoff!r}") from None
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"cutoff must be a positive finite number of Å, got {cutoff!r}")
    return value


def check_positions(positions: np.ndarray) -> None:
    """Raise if ``positions`` is not ``[N, 3]`` or holds NaN or infinite values (names the atom)."""
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape [N, 3], got {list(positions.shape)}")
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        atoms = np.flatnonzero(bad)
        first = int(atoms[0])
        more = f" (and {len(atoms) - 1} more atoms)" if len(atoms) > 1 else ""
        raise ValueError(
            f"position of atom {first} is not finite: {positions[first].tolist()}{more}"
        )


def check_cell(cell: np.ndarray, pbc: np.ndarray) -> None:
    """Raise if a periodic direction has no cell vector or the periodic vectors are degenerate."""
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape [3, 3], got {list(cell.shape)}")
    if pbc.shape != (3,):
        raise ValueError(f"pbc must have 3 entries, got {list(pbc.shape)}")
    if not np.isfinite(cell).all():
        raise ValueError(f"cell is not finite: {cell.tolist()}")
    if not pbc.any():
        return
    if not np.any(cell):
        raise ValueError(
            f"periodic structure without a cell: pbc={pbc.tolist()} but the cell is zero"
        )
    periodic = cell[pbc]
    lengths = np.linalg.norm(periodic, axis=1)
    for axis, length in zip(np.flatnonzero(pbc), lengths):
        if length < 1e-8:
            raise ValueError(
                f"periodic structure without a cell vector along axis {int(axis)}: "
                f"pbc={pbc.tolist()}, cell={cell.tolist()}"
            )
    # Gram determinant of the periodic vectors, relative to their lengths: 0 when degenerate.
    gram = np.linalg.det(periodic @ periodic.T) / np.prod(lengths**2)
    if gram < 1e-12:
        raise ValueError(
            f"singular cell: the periodic cell vectors are linearly dependent, cell={cell.tolist()}"
        )


def check_min_distance(
    edge_index: np.ndarray, distances: np.ndarray, shifts: np.ndarray, min_distance: float = MIN_DISTANCE
) -> None:
    """Raise if an edge is shorter than ``min_distance`` (names both atoms and the image)."""
    if distances.size == 0:
        return
    k = int(np.argmin(distances))
    if distances[k] < min_distance:
        sender, receiver = int(edge_index[0, k]), int(edge_index[1, k])
        i, j = min(sender, receiver), max(sender, receiver)
        shift = shifts[k]
        image = "" if not np.any(shift) else f" (periodic image {shift.astype(int).tolist()})"
        who = f"atom {i} and its own image" if i == j else f"atoms {i} and {j}"
        raise ValueError(
            f"{who} are {distances[k]:.4g} Å apart{image}, closer than {min_distance} Å: "
            "atoms on top of each other"
        )
