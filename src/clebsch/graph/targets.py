"""Reading target properties (energy, forces, stress, ...) off an ``ase.Atoms``.

A :class:`KeyMap` says under which key each target is stored. A key is looked
up in the attached calculator's results first (ASE's extxyz reader moves
``energy``, ``forces``, ``stress``, ``dipole``, ... there), then in
``atoms.info`` (per structure), then in ``atoms.arrays`` (per atom).

Shapes, per structure of ``N`` atoms (units as stored; clebsch assumes Å, eV):

========================  ===============  ==========
target                    shape            unit
========================  ===============  ==========
``energy``                ``[1]``          eV
``forces``                ``[N, 3]``       eV/Å
``stress``, ``virial``    ``[1, 3, 3]``    eV/Å³, eV
``dipole``                ``[1, 3]``       e·Å
``polarizability``        ``[1, 3, 3]``    e·Å²/V
``weight``                ``[1]``          --
extra, from ``arrays``    ``[N, ...]``     as stored
extra, from ``info``      ``[1, ...]``     as stored
========================  ===============  ==========

Stress keeps ASE's sign convention (``stress = (1/V) dE/dstrain``). Six
numbers are read in Voigt order (xx, yy, zz, yz, xz, xy), nine as a row-major
3x3 matrix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

__all__ = ["KeyMap", "read_targets"]

#: Calculator results that are per atom (ASE's names).
_PER_ATOM_RESULTS = {"forces", "energies", "stresses", "charges", "magmoms"}
_MATRIX_TARGETS = {"stress", "virial", "polarizability"}


@dataclass
class KeyMap:
    """Where each target is stored in an ``ase.Atoms``: target name -> key.

    ``None`` for a target means "do not read it". ``extra`` maps further target
    names to keys (per-atom when found in ``atoms.arrays`` or a per-atom
    calculator result, per-structure otherwise).

    Examples
    --------
    >>> keys = KeyMap(energy="REF_energy", forces="REF_forces", extra={"charges": "hirshfeld"})
    >>> dict(keys.items())["energy"], dict(keys.items())["charges"]
    ('REF_energy', 'hirshfeld')
    """

    energy: str | None = "energy"
    forces: str | None = "forces"
    stress: str | None = "stress"
    virial: str | None = "virial"
    dipole: str | None = "dipole"
    polarizability: str | None = "polarizability"
    weight: str | None = "weight"
    config_type: str | None = "config_type"
    extra: dict[str, str] = field(default_factory=dict)

    def items(self):
        """``(target name, key)`` pairs of every target to read (``config_type`` excluded)."""
        for name, key in asdict(self).items():
            if name in ("extra", "config_type") or key is None:
                continue
            yield name, key
        yield from self.extra.items()

    def as_dict(self) -> dict:
        """Plain dict, for configs and cache keys."""
        return asdict(self)


def available_keys(atoms) -> str:
    """Human-readable list of the keys an ``ase.Atoms`` holds, for error messages."""
    calc = sorted(getattr(atoms.calc, "results", {}) or {}) if atoms.calc is not None else []
    info = sorted(k for k in atoms.info if k != "config_type")
    arrays = sorted(k for k in atoms.arrays if k not in ("numbers", "positions"))
    return f"calculator: {calc}, info: {info}, arrays: {arrays}"


def _lookup(atoms, key: str):
    """(value, per_atom) for ``key``, or ``(None, None)`` when absent."""
    calc = atoms.calc
    results = getattr(calc, "results", None) if calc is not None else None
    if results and key in results:
        return results[key], key in _PER_ATOM_RESULTS
    if key in atoms.info:
        return atoms.info[key], False
    if key in atoms.arrays and key not in ("numbers", "positions"):
        return atoms.arrays[key], True
    return None, None


def _matrix(value: np.ndarray, name: str, key: str) -> np.ndarray:
    flat = value.reshape(-1)
    if flat.size == 9:
        return flat.reshape(1, 3, 3)
    if flat.size == 6:  # Voigt: xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = flat
        return np.array([[[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]]])
    raise ValueError(f"{name} (key {key!r}) must have 6 or 9 components, got shape {list(value.shape)}")


def _shape(value: np.ndarray, name: str, key: str, per_atom: bool, n_atoms: int) -> np.ndarray:
    if name == "energy" or name == "weight":
        if value.size != 1:
            raise ValueError(f"{name} (key {key!r}) must be one number, got shape {list(value.shape)}")
        return value.reshape(1)
    if name == "forces":
        if value.shape != (n_atoms, 3):
            raise ValueError(
                f"forces (key {key!r}) must have shape [{n_atoms}, 3] for {n_atoms} atoms, "
                f"got {list(value.shape)}"
            )
        return value
    if name in _MATRIX_TARGETS:
        return _matrix(value, name, key)
    if name == "dipole":
        if value.size != 3:
            raise ValueError(f"dipole (key {key!r}) must have 3 components, got shape {list(value.shape)}")
        return value.reshape(1, 3)
    if per_atom:
        if value.ndim == 0 or value.shape[0] != n_atoms:
            raise ValueError(
                f"per-atom {name} (key {key!r}) must have {n_atoms} rows, got shape {list(value.shape)}"
            )
        return value
    return value.reshape(1, *value.shape)


def read_targets(atoms, keys: KeyMap | None = None, required=(), dtype=torch.float64) -> dict:
    """Targets of one structure as tensors, shaped as in the table above.

    Parameters
    ----------
    atoms : ase.Atoms
    keys : KeyMap, optional
        Where to look; default :class:`KeyMap()`.
    required : iterable of str
        Target names that must be present (e.g. ``("energy", "forces")``).
    dtype : torch.dtype
        Floating dtype of the returned tensors.

    Raises
    ------
    ValueError
        A required target is missing (names the key asked for and the keys
        that exist), or a target has the wrong number of components.

    Examples
    --------
    >>> from ase import Atoms
    >>> atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], info={"E": -31.5})
    >>> read_targets(atoms, KeyMap(energy="E"), required=["energy"])
    {'energy': tensor([-31.5000], dtype=torch.float64)}
    >>> read_targets(atoms, KeyMap(energy="REF_energy"), required=["energy"])
    Traceback (most recent call last):
    ...
    ValueError: energy key 'REF_energy' not found; the structure has calculator: [], info: ['E'], arrays: []
    """
    keys = KeyMap() if keys is None else keys
    wanted = dict(keys.items())
    for name in required:
        if name not in wanted:
            raise ValueError(f"target {name!r} is required but the key map does not read it")
    out = {}
    n = len(atoms)
    for name, key in wanted.items():
        value, per_atom = _lookup(atoms, key)
        if value is None:
            if name in required:
                raise ValueError(f"{name} key {key!r} not found; the structure has {available_keys(atoms)}")
            continue
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            if name in required:
                raise ValueError(f"{name} (key {key!r}) is not numeric: {value!r}") from None
            continue
        out[name] = torch.from_numpy(np.ascontiguousarray(_shape(array, name, key, per_atom, n))).to(dtype)
    return out
