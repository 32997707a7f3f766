"""Reading targets out of an ``ase.Atoms``, checked against their declarations.

A target is looked up, in order, in ``atoms.calc.results``, ``atoms.info`` and
``atoms.arrays`` under the key the user maps it to. Its declaration (a
:class:`~clebsch.targets.Target`) says what shape the value must have: energy
[1], forces [N, 3], a symmetric 3x3 tensor (stress, polarizability) from 6
Voigt numbers, 9 numbers or 3x3, a per-atom Cartesian tensor from [N, 9] or
[N, 3, 3], irreps from their dimension. A Cartesian tensor that breaks its
declared symmetry, a value of the wrong shape and a non-finite value are
errors that name the file, the frame, the key and (per atom) the atom.

Per-edge targets (one value per ordered atom pair, e.g. Hamiltonian blocks)
are given in ``atoms.info`` as the values ``[P, ...]`` under the key and the
pairs ``[P, 5]`` (receiver ``i``, sender ``j``, cell shift of ``j``) under
``key + "_pairs"``; :func:`join_edge_targets` places them on the edges of the
neighbour list, whatever its order.

Targets in an atom-centred basis (see :class:`~clebsch.targets.Target`) are
read in the basis's native order and converted once: per-atom coefficients
from a per-atom array (each row the atom's own functions, zero padded), and
the blocks of a matrix from the whole matrix ``[n_ao, n_ao]`` (flattened or
not) in ``info``; the functions an element lacks become missing values (NaN),
which losses and metrics skip.

Names without a declaration are read as they are: per atom from ``arrays``,
per structure otherwise.
"""

from __future__ import annotations

import numpy as np
import torch

from ..targets import TARGETS, Target

__all__ = ["DEFAULT_KEYS", "read_targets", "convert_target", "voigt_to_matrix", "lookup", "available_keys",
           "join_edge_targets", "graph_from_atoms", "PAIRS_SUFFIX"]

DEFAULT_KEYS = {
    "energy": "energy",
    "forces": "forces",
    "stress": "stress",
    "virial": "virial",
    "dipole": "dipole",
    "polarizability": "polarizability",
}
"""Target name -> key looked up in the atoms; used when no key map is given."""

PAIRS_SUFFIX = "_pairs"
SYMMETRY_RTOL = 1e-5


def voigt_to_matrix(value) -> np.ndarray:
    """Unfold a symmetric tensor given as 6 Voigt components (xx yy zz yz xz xy), 9 numbers or 3x3.

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


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _one_value(target: Target, v: np.ndarray) -> np.ndarray:
    """One value of ``target`` (no leading atom/structure axis) in its stored shape."""
    shape = target.shape
    size = int(np.prod(shape)) if shape else 1
    if target.cartesian is not None and target.rank == 2 and target.cartesian.replace(" ", "") == "ij=ji" and v.size == 6:
        return voigt_to_matrix(v)
    if v.size != size:
        allowed = f"{size} numbers" + (" (or 6 Voigt components)" if target.cartesian and target.rank == 2 and target.symmetric else "")
        raise ValueError(f"{target.name} must have shape {_shape_text(shape)} ({allowed}), got shape {_shape_text(v.shape)}")
    return v.reshape(shape)


def convert_target(name: str, value, n_atoms: int, place: str | None = None, target: Target | None = None):
    """Convert a raw value to the stored shape; return ``(array, per_atom)``.

    Structure values get a leading axis of 1, atom values have ``n_atoms`` rows.
    """
    v = np.asarray(value)
    if v.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numbers, got {v.dtype} ({str(value)[:40]!r})")
    v = v.astype(np.float64)
    if target is None:  # undeclared: as it is
        if place == "arrays":
            if v.ndim == 0 or v.shape[0] != n_atoms:
                raise ValueError(f"per-atom target {name!r} must have {n_atoms} rows, got shape {_shape_text(v.shape)}")
            return v, True
        return (v.reshape(1, *v.shape) if v.ndim else v.reshape(1)), False
    if target.level == "structure":
        return _one_value(target, v)[None], False
    if target.level == "atom":
        if v.ndim == 0 or v.shape[0] != n_atoms:
            raise ValueError(f"per-atom target {name!r} must have {n_atoms} rows (one per atom), "
                             f"got shape {_shape_text(v.shape)}")
        rows = [_one_value(target, v[i]) for i in range(n_atoms)] if n_atoms else []
        return (np.stack(rows) if rows else np.zeros((0, *target.shape))), True
    raise ValueError(f"{name} is a per-edge target; read it with its pairs (key{PAIRS_SUFFIX})")


def _check_value(name: str, key: str, target: Target | None, arr: np.ndarray, per_atom: bool, where: str,
                 allow_nonfinite: bool):
    at = f"{where}, key {key!r}" if where else f"key {key!r}"
    bad = ~np.isfinite(arr)
    if bad.any() and not allow_nonfinite:
        if per_atom:
            atom = int(np.argwhere(bad.reshape(arr.shape[0], -1).any(axis=1))[0, 0])
            raise ValueError(f"non-finite {name} value ({arr.reshape(arr.shape[0], -1)[atom].tolist()}) at atom {atom} "
                             f"({at}); fix the data or set data.skip_nonfinite: true to treat it as missing")
        raise ValueError(f"non-finite {name} value {arr.reshape(-1).tolist()[:9]} ({at}); fix the data or set "
                         "data.skip_nonfinite: true to treat it as missing")
    if target is not None and target.symmetric:
        t = torch.as_tensor(arr)
        err = target.symmetry_error(t).reshape(-1)
        size = t.reshape(t.shape[0], -1).abs().amax(dim=1).clamp(min=1e-8)
        rel = err / size
        if bool((rel > SYMMETRY_RTOL).any()):
            k = int(torch.argmax(rel))
            which = f" at atom {k}" if per_atom else ""
            raise ValueError(
                f"{name}{which} breaks its declared symmetry {target.cartesian!r} by {float(err[k]):.3g} "
                f"(relative {float(rel[k]):.2g}) ({at}); give a tensor with that symmetry or declare the target "
                "without it")


def read_targets(atoms, keys: dict[str, str] | None = None, required=(), where: str | None = None,
                 targets: dict[str, Target] | None = None, allow_nonfinite: bool = False):
    """Targets of one structure: ``(dict name -> array, tuple of per-atom names, dict of edge targets)``.

    Parameters
    ----------
    atoms : ase.Atoms
    keys : dict, optional
        Target name -> key in the atoms (default :data:`DEFAULT_KEYS`). Names
        not found are skipped unless listed in ``required``.
    required : sequence of str
        Target names that must be present; a missing one raises a
        :class:`ValueError` naming the key asked for and the keys that exist.
    where : str, optional
        The file and frame, for messages.
    targets : dict, optional
        Declarations by name (default: the built-in :data:`~clebsch.targets.TARGETS`).
    allow_nonfinite : bool
        Keep NaN / infinite values (they count as missing) instead of raising.

    Examples
    --------
    >>> from ase import Atoms
    >>> atoms = Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], info={"E": -1.0})
    >>> values, per_atom, edges = read_targets(atoms, {"energy": "E"})
    >>> values["energy"].tolist(), per_atom
    ([-1.0], ())
    """
    declared = TARGETS if targets is None else targets
    keys = dict(DEFAULT_KEYS if keys is None else keys)
    for name in required:
        keys.setdefault(name, name)
    values, per_atom, edges = {}, [], {}
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
        target = declared.get(name)
        if name == "weight":
            target = None
        try:
            if target is not None and target.basis is not None:
                value = _basis_value(target, value, atoms)
                if target.level == "edge":
                    edges[name] = value
                    continue
                _check_value(name, key, None, value, True, where or "", allow_nonfinite=True)
                values[name] = value
                per_atom.append(name)
                continue
            if target is not None and target.level == "edge":
                pairs, _ = lookup(atoms, key + PAIRS_SUFFIX)
                if pairs is None:
                    raise ValueError(f"per-edge target {name!r} needs its pairs under key {key + PAIRS_SUFFIX!r} "
                                     "(rows: receiver i, sender j, cell shift s1 s2 s3)")
                edges[name] = _edge_values(target, value, pairs, n)
                _check_value(name, key, target, edges[name][1], True, where or "", allow_nonfinite)
                continue
            arr, atomwise = convert_target(name, value, n, place, target)
        except ValueError as err:
            raise ValueError(f"{err} (key {key!r}{', ' + where if where else ''})") from None
        _check_value(name, key, target, arr, atomwise, where or "", allow_nonfinite)
        values[name] = arr
        if atomwise:
            per_atom.append(name)
    return values, tuple(per_atom), edges


class MatrixBlocks:
    """A structure's matrix in clebsch order, cut into per-edge blocks once the edges are known."""

    def __init__(self, target: Target, matrix: torch.Tensor, numbers):
        self.target, self.matrix, self.numbers = target, matrix, [int(z) for z in numbers]

    def blocks(self, receiver, sender) -> np.ndarray:
        """``[E, U, U]``: the block of rows of atom ``receiver[e]`` and columns of atom ``sender[e]``."""
        basis = self.target.basis
        u = basis.union_irreps.dim
        offsets = basis.ao_offsets(self.numbers)
        out = np.full((len(receiver), u, u), np.nan)
        m = self.matrix.numpy()
        for e, (i, j) in enumerate(zip(receiver, sender)):
            si, sj = basis.slots(self.numbers[i]), basis.slots(self.numbers[j])
            out[e][np.ix_(si, sj)] = m[offsets[i]:offsets[i + 1], offsets[j]:offsets[j + 1]]
        return out


def _basis_value(target: Target, value, atoms):
    """A basis target's value in clebsch order: ``[N, U]`` or ``[N, U, U]`` (NaN where an element has no
    function), or the :class:`MatrixBlocks` of a per-edge target."""
    basis = target.basis
    numbers = atoms.numbers.tolist()
    v = np.asarray(value)
    if v.dtype.kind not in "biuf":
        raise ValueError(f"{target.name} must be numbers, got {v.dtype}")
    v = v.astype(np.float64)
    u = basis.union_irreps.dim
    if not target.matrix:
        if v.ndim != 2 or v.shape[0] != len(numbers):
            raise ValueError(f"{target.name} must have one row of basis coefficients per atom ({len(numbers)} rows), "
                             f"got shape {_shape_text(v.shape)}")
        out = basis.native_to_union(numbers, v).numpy()
        for i, z in enumerate(numbers):
            missing = np.ones(u, dtype=bool)
            missing[basis.slots(z)] = False
            out[i, missing] = np.nan
        return out
    for i, z in enumerate(numbers):
        try:
            basis.size(z)
        except ValueError as err:
            raise ValueError(f"atom {i}: {err}") from None
    n_ao = int(basis.ao_offsets(numbers)[-1])
    if v.size != n_ao * n_ao:
        raise ValueError(f"{target.name} must be a {n_ao} x {n_ao} matrix (the {n_ao} functions of basis "
                         f"{basis.name!r} on these {len(numbers)} atoms), got {v.size} numbers"
                         + (f" (a {int(round(v.size ** 0.5))} x {int(round(v.size ** 0.5))} matrix: another basis?)"
                            if round(v.size ** 0.5) ** 2 == v.size else ""))
    if not np.isfinite(v).all():
        raise ValueError(f"{target.name} has non-finite entries")
    v = v.reshape(n_ao, n_ao)
    asym = np.abs(v - v.T).max() / max(np.abs(v).max(), 1e-12)
    if asym > SYMMETRY_RTOL:
        raise ValueError(f"{target.name} is not symmetric (relative asymmetry {asym:.2g}); a Hamiltonian or "
                         "overlap matrix in a real basis must be")
    blocks = MatrixBlocks(target, basis.matrix_to_clebsch(numbers, v), numbers)
    if target.level == "edge":
        if bool(np.any(atoms.pbc)):
            raise ValueError(f"{target.name}: blocks of a matrix are supported for non-periodic structures only")
        return blocks
    return blocks.blocks(range(len(numbers)), range(len(numbers)))


def _edge_values(target: Target, value, pairs, n_atoms: int):
    p = np.asarray(pairs, dtype=np.float64).reshape(-1)
    if p.size % 5 or np.any(p != np.round(p)):
        raise ValueError(f"pairs of {target.name!r} must be integer rows (i, j, s1, s2, s3), got {p.size} numbers")
    p = p.reshape(-1, 5).astype(np.int64)
    if p.size and (p[:, :2].min() < 0 or p[:, :2].max() >= n_atoms):
        raise ValueError(f"pairs of {target.name!r} name atoms outside 0..{n_atoms - 1}")
    v = np.asarray(value, dtype=np.float64)
    size = int(np.prod(target.shape)) if target.shape else 1
    if v.size != size * p.shape[0]:
        raise ValueError(f"{target.name} has {v.size} numbers for {p.shape[0]} pairs of shape "
                         f"{_shape_text(target.shape)} (expected {size * p.shape[0]})")
    return p, v.reshape(p.shape[0], *target.shape)


def join_edge_targets(edge_index: torch.Tensor, shifts: torch.Tensor, edges: dict, where: str | None = None) -> dict:
    """Values ``[E, ...]`` aligned with the edges, NaN where an edge has none.

    ``edges`` maps a name to ``(pairs [P, 5], values [P, ...])`` with pairs
    ``(receiver i, sender j, shift)``; a pair that is not an edge of the
    neighbour list (beyond the cutoff) raises, naming it.
    """
    out = {}
    if not edges:
        return out
    receiver = edge_index[1].cpu().numpy()
    sender = edge_index[0].cpu().numpy()
    s = np.rint(shifts.detach().cpu().numpy()).astype(np.int64)
    table = {(int(i), int(j), *map(int, sh)): e for e, (i, j, sh) in enumerate(zip(receiver, sender, s))}
    for name, entry in edges.items():
        if isinstance(entry, MatrixBlocks):
            out[name] = entry.blocks(receiver, sender)
            continue
        pairs, values = entry
        joined = np.full((len(receiver), *values.shape[1:]), np.nan)
        for k, row in enumerate(pairs):
            e = table.get(tuple(int(x) for x in row))
            if e is None:
                raise ValueError(f"{name}: pair {k} (i={row[0]}, j={row[1]}, shift={row[2:].tolist()}) is not an edge "
                                 f"of the neighbour list (beyond the cutoff?){' (' + where + ')' if where else ''}")
            joined[e] = values[k]
        out[name] = joined
    return out


def graph_from_atoms(atoms, cutoff: float | None = None, method: str = "radius", *, keys: dict | None = None,
                     required=(), targets: dict[str, Target] | None = None, allow_nonfinite: bool = False,
                     dtype: torch.dtype | None = None, where: str | None = None, units: dict | None = None,
                     **options):
    """An :class:`~clebsch.graph.AtomicGraph` with its targets read from ``atoms``.

    ``keys``, ``required``, ``targets`` and ``allow_nonfinite`` as in
    :func:`read_targets`; ``units`` (target name or ``positions`` -> the
    unit in ``atoms``) converts each value to its target's unit
    (:mod:`clebsch.data.units`); the rest as in
    :meth:`~clebsch.graph.AtomicGraph.from_ase`.
    ``atoms.info["weight"]`` becomes the ``weight`` target.

    >>> from ase.build import molecule
    >>> atoms = molecule("H2O")
    >>> atoms.info["energy"] = -14.2
    >>> g = graph_from_atoms(atoms, cutoff=2.0)
    >>> g.targets["energy"].tolist(), g.numbers.tolist()
    ([-14.2], [8, 1, 1])
    """
    from ..graph import AtomicGraph

    dtype = dtype or torch.get_default_dtype()
    factors = {}
    if units:
        from .units import unit_factors

        factors = unit_factors(units, targets)
    values, per_atom, edges = read_targets(atoms, keys, required, where, targets, allow_nonfinite)
    if factors.get("positions", 1.0) != 1.0:  # a copy in Å (a copy drops the calculator: targets are read first)
        length = factors["positions"]
        atoms = atoms.copy()
        atoms.set_cell(atoms.cell.array * length)
        atoms.positions = atoms.positions * length
    for name, f in factors.items():
        if f == 1.0:
            continue
        if name in values:
            values[name] = values[name] * f
        elif isinstance(edges.get(name), MatrixBlocks):
            edges[name].matrix = edges[name].matrix * f
        elif name in edges:
            edges[name] = (edges[name][0], edges[name][1] * f)
    if "weight" in atoms.info and "weight" not in values:
        try:
            values["weight"] = np.asarray([float(atoms.info["weight"])])
        except (TypeError, ValueError):
            raise ValueError(f"info 'weight' must be a number, got {atoms.info['weight']!r}"
                             f"{' (' + where + ')' if where else ''}") from None
    graph = AtomicGraph.from_ase(atoms, cutoff, method, dtype=dtype, where=where,
                                 targets={k: torch.as_tensor(v) for k, v in values.items()},
                                 per_atom_targets=per_atom, **options)
    if edges:
        joined = join_edge_targets(graph.edge_index, graph.shifts, edges, where)
        for name, v in joined.items():
            graph.targets[name] = torch.as_tensor(v, dtype=dtype)
        graph.per_edge_targets = tuple(joined)
    return graph
