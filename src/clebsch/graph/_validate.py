"""Input checks shared by the neighbour lists and graph constructors.

Every check raises :class:`ValueError` with a message that names what is wrong
and where (``where`` is a free-form location such as ``"file 'a.xyz', frame 3"``).
"""

from __future__ import annotations

import math

import numpy as np

MIN_DISTANCE = 0.1
"""Two atoms closer than this (Å) are taken to be a mistake in the input."""


def _at(where: str | None) -> str:
    return f" ({where})" if where else ""


def check_cutoff(cutoff, name: str = "cutoff") -> float:
    """Return ``cutoff`` as a float, or raise if it is not a positive finite number.

    >>> check_cutoff(5)
    5.0
    >>> check_cutoff(-1.0)
    Traceback (most recent call last):
    ...
    ValueError: cutoff must be a positive finite number of Å, got -1.0
    """
    try:
        value = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite number of Å, got {cutoff!r}") from None
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a positive finite number of Å, got {cutoff!r}")
    return value


def check_positions(positions: np.ndarray, where: str | None = None) -> np.ndarray:
    """Check that ``positions`` is an [N, 3] array of finite numbers; name the first bad atom."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape [N, 3], got {list(positions.shape)}{_at(where)}")
    finite = np.isfinite(positions).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ValueError(
            f"atom {int(bad[0])}{more} has non-finite position {positions[bad[0]].tolist()}{_at(where)}"
        )
    return positions


def check_cell(cell, pbc, where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Normalise ``cell`` ([3, 3], rows are lattice vectors) and ``pbc`` ([3] bool).

    ``pbc=None`` means periodic in all directions when a non-zero cell is given and
    open otherwise. Raises when a direction is periodic but no cell is given, or when
    the lattice vectors of the periodic directions are singular.

    >>> cell, pbc = check_cell(None, None)
    >>> pbc.tolist()
    [False, False, False]
    >>> check_cell(None, [True, True, True])
    Traceback (most recent call last):
    ...
    ValueError: structure is periodic (pbc=[True, True, True]) but has no cell
    """
    if cell is None:
        cell = np.zeros((3, 3))
    cell = np.asarray(cell, dtype=np.float64)
    if cell.shape == (3,):
        cell = np.diag(cell)
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape [3, 3], got {list(cell.shape)}{_at(where)}")
    if not np.isfinite(cell).all():
        raise ValueError(f"cell has non-finite entries {cell.tolist()}{_at(where)}")
    if pbc is None:
        pbc = np.full(3, bool(np.any(cell != 0.0)))
    pbc = np.asarray(pbc, dtype=bool)
    if pbc.shape == ():
        pbc = np.full(3, bool(pbc))
    if pbc.shape != (3,):
        raise ValueError(f"pbc must have 3 entries, got {list(pbc.shape)}{_at(where)}")
    if pbc.any():
        if not np.any(cell != 0.0):
            raise ValueError(f"structure is periodic (pbc={pbc.tolist()}) but has no cell{_at(where)}")
        norms = np.linalg.norm(cell, axis=1)
        zero_periodic = pbc & (norms == 0.0)
        if zero_periodic.any():
            d = int(np.flatnonzero(zero_periodic)[0])
            raise ValueError(
                f"cell is singular: lattice vector {d} is zero but direction {d} is periodic{_at(where)}"
            )
        full = fill_open_directions(cell, pbc)
        volume = abs(np.linalg.det(full))
        if volume <= 1e-8 * float(np.prod(np.linalg.norm(full, axis=1))):
            raise ValueError(f"cell is singular (volume {volume:.3g} Å³): {cell.tolist()}{_at(where)}")
    return cell, pbc


def fill_open_directions(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Replace zero lattice vectors of non-periodic directions by unit vectors orthogonal to the others."""
    cell = cell.copy()
    zero = (np.linalg.norm(cell, axis=1) == 0.0) & ~pbc
    if not zero.any():
        return cell
    if zero.sum() == 3:
        return np.eye(3)
    if zero.sum() == 2:
        d = int(np.flatnonzero(~zero)[0])
        v = cell[d] / np.linalg.norm(cell[d])
        trial = np.eye(3)[int(np.argmin(np.abs(v)))]
        a = np.cross(v, trial)
        a /= np.linalg.norm(a)
        b = np.cross(v, a)
        others = [k for k in range(3) if k != d]
        cell[others[0]], cell[others[1]] = a, b
        return cell
    d = int(np.flatnonzero(zero)[0])
    a, b = (cell[k] for k in range(3) if k != d)
    n = np.cross(a, b)
    norm = np.linalg.norm(n)
    cell[d] = n / norm if norm > 0 else n
    return cell


def check_min_distance(receivers, senders, lengths, min_distance: float = MIN_DISTANCE, where: str | None = None):
    """Raise if any edge is shorter than ``min_distance``, naming both atoms."""
    lengths = np.asarray(lengths)
    if lengths.size == 0 or min_distance <= 0:
        return
    k = int(np.argmin(lengths))
    if lengths[k] < min_distance:
        i, j = int(receivers[k]), int(senders[k])
        what = f"atoms {min(i, j)} and {max(i, j)} are" if i != j else f"atom {i} and its periodic image are"
        raise ValueError(
            f"{what} {float(lengths[k]):.4g} Å apart, closer than {min_distance} Å "
            f"(overlapping atoms?){_at(where)}"
        )
