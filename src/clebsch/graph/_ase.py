"""Reading targets (energy, forces, stress, ...) out of an ``ase.Atoms``.

A target is looked up, in order, in ``atoms.calc.results``, ``atoms.info`` and
``atoms.arrays`` under the key the user maps it to. Values are converted to the
shapes :class:`~clebsch.graph.AtomicGraph` stores: energy [1], forces [N, 3],
stress / virial / polarizability [1, 3, 3] (Voigt 6-vectors and flat 9-vectors
are unfolded), dipole [1, 3]; any other per-atom array keeps its shape.
"""

from __future__ import annotations

import numpy as np

DEFAULT_KEYS = {
    "energy": "energy",
    "forces": "forces",
    "stress": "stress",
    "virial": "virial",
    "dipole": "dipole",
    "polarizability": "polarizability",
}
"""Target name -> key looked up in the atoms; used when no key map is given."""

PER_ATOM_TARGETS = ("forces", "charges", "magmoms", "forces_weight", "atomic_energies")
"""Target names that are per atom ([N, ...]) rather than per structure ([B, ...])."""

_RESERVED_ARRAYS = {"numbers", "positions", "species", "pos", "Z", "mass", "masses", "momenta", "initial_charges", "initial_magmoms", "tags"}


def voigt_to_matrix(value) -> np.ndarray:
    """Unfold a stress given as 6 Voigt components (xx yy zz yz xz xy), 9 numbers or 3x3.

    >>> voigt_to_matrix([1, 2, 3, 4, 5, 6]).tolist()
    [[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]]
    """
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if v.size == 6:
        xx, yy, zz, yz, xz, xy = v
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if v.size == 9:
        return v.reshape(3, 3)
    raise ValueError(f"expected 6 (Voigt) or 9 numbers for a 3x3 tensor, got {v.size}")


def available_keys(atoms) -> dict[str, list[str]]:
    """Keys an ``Atoms`` offers, by place: ``{"calc": [...], "info": [...], "arrays": [...]}``."""
    calc = getattr(atoms, "calc", None)
    results = list(getattr(calc, "results", {}) or {}) if calc is not None else []
    return {
        "calc": sorted(results),
        "info": sorted(atoms.info),
        "arrays": sorted(k for k in atoms.arrays if k not in ("numbers", "positions")),
    }


def lookup(atoms, key: str):
    """Return ``(value, place)`` for ``key`` in calc results, info or arrays, or ``(None, None)``."""
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) if calc is not None else None
    if results and key in results:
        return results[key], "calc"
    if key in atoms.info:
        return atoms.info[key], "info"
    if key in atoms.arrays and key not in ("numbers", "positions"):
        return atoms.arrays[key], "arrays"
    return None, None


def convert_target(name: str, value, n_atoms: int, place: str | None = None) -> tuple[np.ndarray, bool]:
    """Convert a raw value to the stored shape; return ``(array, per_atom)``."""
    v = np.asarray(value, dtype=np.float64)
    if name == "energy":
        if v.size != 1:
            raise ValueError(f"energy must be one number, got shape {list(v.shape)}")
        return v.reshape(1), False
    if name in ("stress", "virial", "polarizability"):
        return voigt_to_matrix(v).reshape(1, 3, 3), False
    if name == "dipole":
        if v.size != 3:
            raise ValueError(f"dipole must have 3 components, got shape {list(v.shape)}")
        return v.reshape(1, 3), False
    if name == "forces" or name in PER_ATOM_TARGETS or place == "arrays":
        if v.ndim == 0 or v.shape[0] != n_atoms:
            raise ValueError(f"per-atom target {name!r} must have {n_atoms} rows, got shape {list(v.shape)}")
        if name == "forces" and v.shape != (n_atoms, 3):
            raise ValueError(f"forces must have shape [{n_atoms}, 3], got {list(v.shape)}")
        return v, True
    return v.reshape(1, *v.shape) if v.ndim else v.reshape(1), False


def read_targets(atoms, keys: dict[str, str] | None = None, required=(), where: str | None = None):
    """Targets of one structure: ``(dict name -> array, tuple of per-atom names)``.

    Parameters
    ----------
    atoms : ase.Atoms
    keys : dict, optional
        Target name -> key in the atoms (default :data:`DEFAULT_KEYS`). Names
        not found are skipped unless listed in ``required``.
    required : sequence of str
        Target names that must be present; a missing one raises a
        :class:`ValueError` naming the key asked for and the keys that exist.

    Examples
    --------
    >>> from ase import Atoms
    >>> atoms = Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], info={"E": -1.0})
    >>> targets, per_atom = read_targets(atoms, {"energy": "E"})
    >>> targets["energy"].tolist(), per_atom
    ([-1.0], ())
    """
    keys = dict(DEFAULT_KEYS if keys is None else keys)
    for name in required:
        keys.setdefault(name, name)
    targets, per_atom = {}, []
    n = len(atoms)
    for name, key in keys.items():
        if key is None:
            continue
        value, place = lookup(atoms, key)
        if value is None:
            if name in required:
                have = available_keys(atoms)
                listed = "; ".join(f"{p}: {v}" for p, v in have.items())
                raise ValueError(
                    f"missing {name} key {key!r}{' in ' + where if where else ''}; keys present are {listed}"
                )
            continue
        try:
            arr, atomwise = convert_target(name, value, n, place)
        except ValueError as err:
            raise ValueError(f"{err} (key {key!r}{', ' + where if where else ''})") from None
        targets[name] = arr
        if atomwise:
            per_atom.append(name)
    return targets, tuple(per_atom)
