"""Atom-centred Gaussian basis sets: shells, layouts as irreps, evaluation on points.

A basis function is ``chi(r) = R(|r - r_A|) Y_lm(r - r_A)`` with a contracted
radial part ``R(r) = r^l sum_k c_k N_k exp(-alpha_k r^2)`` normalised so that
``int R^2 r^2 dr = 1`` and real spherical harmonics orthonormal on the sphere:
every function has unit norm, as in PySCF (and libcint). Exponents are in
Bohr^-2, as basis-set libraries give them; positions are taken in Å and
converted.

Two orders of the functions of one atom exist:

- ``native``: the shells in the order the basis lists them, each shell's
  components as quantum-chemistry codes store them (PySCF: ``p`` as ``x, y, z``,
  ``l >= 2`` as ``m = -l..l`` of the standard real harmonics, z the polar axis);
- ``clebsch``: shells sorted by ``l`` (stable), components in this library's
  (e3nn's) real basis, so an atom's functions form the irreps
  :meth:`GaussianBasis.irreps` and transform with their Wigner D.

:meth:`GaussianBasis.native_to_clebsch` is the orthogonal map between the two;
data files are read in the native order and converted once.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols

from ..o3 import Irreps, spherical_harmonics

__all__ = ["GaussianBasis", "BOHR", "standard_real_harmonics", "pyscf_to_clebsch"]

BOHR = 0.52917721092
"""Å per Bohr (the value PySCF uses)."""


def _factorial_ratio(l: int, m: int) -> float:
    return math.exp(math.lgamma(l - m + 1) - math.lgamma(l + m + 1))


def standard_real_harmonics(l: int, u: np.ndarray) -> np.ndarray:
    """The standard real spherical harmonics of degree ``l`` (z polar, no Condon-Shortley phase).

    Orthonormal on the sphere; columns ``m = -l..l`` (``sin`` for ``m < 0``,
    ``cos`` for ``m > 0``). ``u`` are unit vectors ``[P, 3]``.

    >>> y = standard_real_harmonics(1, np.array([[0.0, 0.0, 1.0]]))
    >>> np.round(y / np.sqrt(3 / (4 * np.pi)), 12).tolist()
    [[0.0, 1.0, 0.0]]
    """
    x, y, z = u[:, 0], u[:, 1], u[:, 2]
    phi = np.arctan2(y, x)
    # associated Legendre P_l^m(z) for m = 0..l, without the (-1)^m phase
    s = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    p = {}
    p[(0, 0)] = np.ones_like(z)
    for m in range(1, l + 1):
        p[(m, m)] = (2 * m - 1) * s * p[(m - 1, m - 1)]
    for m in range(0, l):
        p[(m + 1, m)] = (2 * m + 1) * z * p[(m, m)]
        for k in range(m + 2, l + 1):
            p[(k, m)] = ((2 * k - 1) * z * p[(k - 1, m)] - (k + m - 1) * p[(k - 2, m)]) / (k - m)
    out = np.empty((u.shape[0], 2 * l + 1))
    for m in range(-l, l + 1):
        a = abs(m)
        k = math.sqrt((2 * l + 1) / (4 * math.pi) * _factorial_ratio(l, a))
        if m == 0:
            out[:, l] = k * p[(l, 0)]
        elif m > 0:
            out[:, l + m] = math.sqrt(2) * k * p[(l, a)] * np.cos(a * phi)
        else:
            out[:, l + m] = math.sqrt(2) * k * p[(l, a)] * np.sin(a * phi)
    return out


def _pyscf_components(l: int, u: np.ndarray) -> np.ndarray:
    y = standard_real_harmonics(l, u)
    return y[:, [2, 0, 1]] if l == 1 else y  # PySCF stores p as x, y, z


@functools.lru_cache(maxsize=None)
def pyscf_to_clebsch(l: int) -> np.ndarray:
    """The orthogonal ``Q`` with ``Y_pyscf = Q @ Y_clebsch`` for degree ``l``.

    Coefficients convert the other way round: ``c_clebsch = Q.T @ c_pyscf``.

    >>> q = pyscf_to_clebsch(2)
    >>> bool(np.allclose(q @ q.T, np.eye(5)))
    True
    """
    rng = np.random.default_rng(1234 + l)
    v = rng.normal(size=(8 * (2 * l + 1) + 16, 3))
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    ours = spherical_harmonics(l, torch.as_tensor(u, dtype=torch.float64), normalize=True,
                               normalization="integral").numpy()
    theirs = _pyscf_components(l, u)
    q, *_ = np.linalg.lstsq(ours, theirs, rcond=None)  # theirs = ours @ q
    q = q.T
    if not np.allclose(q @ q.T, np.eye(2 * l + 1), atol=1e-10):  # pragma: no cover - a broken harmonic
        raise RuntimeError(f"real spherical harmonics of degree {l} do not map orthogonally")
    return np.where(np.abs(q) < 1e-13, 0.0, q)


def _primitive_norm(l: int, alpha: float) -> float:
    """``N`` with ``int (N r^l exp(-alpha r^2))^2 r^2 dr = 1``."""
    return 1.0 / math.sqrt(math.gamma(l + 1.5) / (2.0 * (2.0 * alpha) ** (l + 1.5)))


def _normalised_shell(l: int, exponents: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Contraction coefficients (primitive norms included) giving a unit-norm radial part."""
    c = coefficients * np.array([_primitive_norm(l, a) for a in exponents])
    s = exponents[:, None] + exponents[None, :]
    overlap = np.exp(np.vectorize(math.lgamma)(l + 1.5) - (l + 1.5) * np.log(s)) / 2.0
    norm = float(c @ overlap @ c)
    return c / math.sqrt(norm)


def _symbol(element) -> str:
    if isinstance(element, str):
        if element not in atomic_numbers:
            raise ValueError(f"unknown element {element!r} in the basis")
        return element
    return chemical_symbols[int(element)]


def _overlap_radial(l: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``int r^(2l+2) exp(-(a+b) r^2) dr`` for every pair of exponents."""
    s = a[:, None] + b[None, :]
    return np.exp(math.lgamma(l + 1.5) - (l + 1.5) * np.log(s)) / 2.0


def _coulomb_radial(l: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The Coulomb integral of ``r^l exp(-a r^2) Y_lm`` with ``r^l exp(-b r^2) Y_lm``, every pair of exponents."""
    ab = a[:, None] * b[None, :]
    g = (a[:, None] + b[None, :]) / (4.0 * ab)
    return (math.pi / 4.0) * math.gamma(l + 0.5) * 4.0 ** (-l) * ab ** (-(l + 1.5)) * g ** (-(l + 0.5))


class GaussianBasis:
    """An atom-centred Gaussian basis for a set of elements.

    Parameters
    ----------
    shells : dict
        Element (symbol or atomic number) -> list of shells in PySCF's
        per-element format: ``[l, [exponent, coefficient, ...], ...]``. Several
        coefficient columns in one shell are several contractions sharing
        exponents (general contraction); each becomes its own shell.
    name : str
        For messages and files.

    Examples
    --------
    >>> basis = GaussianBasis({"H": [[0, [1.0, 1.0]], [1, [0.5, 1.0]]],
    ...                        "O": [[0, [5.0, 1.0]], [0, [1.0, 1.0]], [2, [1.0, 1.0]]]}, name="toy")
    >>> basis.irreps("O"), basis.irreps("H"), basis.union_irreps
    (2x0e+1x2e, 1x0e+1x1o, 2x0e+1x1o+1x2e)
    >>> basis.slots("H").tolist()
    [0, 2, 3, 4]
    """

    def __init__(self, shells: dict, name: str = ""):
        self.name = str(name)
        if not shells:
            raise ValueError(f"basis {self.name!r} defines no element")
        self._shells: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        self._raw: dict[str, list] = {}
        for element, entries in shells.items():
            symbol = _symbol(element)
            z = atomic_numbers[symbol]
            parsed = []
            for k, entry in enumerate(entries):
                where = f"basis {self.name!r}, element {symbol}, shell {k}"
                try:
                    l = int(entry[0])
                    prims = np.asarray(entry[1:], dtype=np.float64)
                except (TypeError, ValueError, IndexError):
                    raise ValueError(f"{where}: expected [l, [exponent, coefficient], ...], got {entry!r}") from None
                if prims.ndim != 2 or prims.shape[1] < 2 or l < 0 or l > 8:
                    raise ValueError(f"{where}: expected [l, [exponent, coefficient], ...] with 0 <= l <= 8, "
                                     f"got {entry!r}")
                if np.any(prims[:, 0] <= 0):
                    raise ValueError(f"{where}: exponents must be positive, got {prims[:, 0].tolist()}")
                for column in range(1, prims.shape[1]):
                    parsed.append((l, prims[:, 0], _normalised_shell(l, prims[:, 0], prims[:, column])))
            self._shells[z] = parsed
            self._raw[symbol] = [list(map(_plain, e)) if isinstance(e, (list, tuple)) else e for e in entries]
        lmax = max(l for shells_z in self._shells.values() for l, *_ in shells_z)
        counts = [max(sum(1 for l, *_ in s if l == ll) for s in self._shells.values()) for ll in range(lmax + 1)]
        self.union_irreps = Irreps([(c, (l, (-1) ** l)) for l, c in enumerate(counts) if c])
        self._union_offset = {}
        offset = 0
        for l, c in enumerate(counts):
            self._union_offset[l] = offset
            offset += c * (2 * l + 1)

    # ------------------------------------------------------------------ description
    @classmethod
    def from_file(cls, path, key: str | None = None) -> "GaussianBasis":
        """A basis from a JSON file ``{"elements": {...}}``, or the entry ``key`` of one (``{"aux": {...}}``)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"basis file not found: '{path}'") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"basis file '{path}' is not valid JSON: {err}") from None
        if key is not None:
            if key not in data:
                raise ValueError(f"basis file '{path}' has no entry {key!r}; it has {sorted(data)}")
            data = data[key]
        if "elements" not in data:
            raise ValueError(f"basis file '{path}'{' entry ' + repr(key) if key else ''} has no 'elements'")
        return cls(data["elements"], name=data.get("name", path.stem))

    def to_dict(self) -> dict:
        """The plain form (``{"name", "elements"}``), from which :class:`GaussianBasis` rebuilds it."""
        return {"name": self.name, "elements": self._raw}

    @property
    def elements(self) -> list[int]:
        """Atomic numbers the basis defines."""
        return sorted(self._shells)

    def _z(self, element) -> int:
        z = atomic_numbers[_symbol(element)]
        if z not in self._shells:
            known = [chemical_symbols[k] for k in self.elements]
            raise ValueError(f"basis {self.name!r} has no functions for {chemical_symbols[z]}; it defines {known}")
        return z

    def shells(self, element) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``(l, exponents, normalised coefficients)`` per shell, in the native order."""
        return list(self._shells[self._z(element)])

    def irreps(self, element) -> Irreps:
        """The element's functions as irreps (clebsch order: by ``l``)."""
        ls = sorted(l for l, *_ in self._shells[self._z(element)])
        return Irreps([(1, (l, (-1) ** l)) for l in ls]).simplify()

    def size(self, element) -> int:
        """Number of functions of the element."""
        return sum(2 * l + 1 for l, *_ in self._shells[self._z(element)])

    @property
    def max_size(self) -> int:
        return max(self.size(z) for z in self.elements)

    @functools.lru_cache(maxsize=None)
    def _order(self, z: int) -> tuple[np.ndarray, np.ndarray]:
        """(native -> clebsch orthogonal matrix [n, n], union slots [n]) of element ``z``."""
        shells = self._shells[z]
        n = sum(2 * l + 1 for l, *_ in shells)
        native_start = np.cumsum([0] + [2 * l + 1 for l, *_ in shells])[:-1]
        order = sorted(range(len(shells)), key=lambda k: shells[k][0])  # stable: by l
        m = np.zeros((n, n))
        slots = np.zeros(n, dtype=np.int64)
        col = 0
        seen: dict[int, int] = {}
        for k in order:
            l = shells[k][0]
            d = 2 * l + 1
            q = pyscf_to_clebsch(l)
            m[native_start[k]:native_start[k] + d, col:col + d] = q  # c_clebsch = c_native @ q
            j = seen.get(l, 0)
            seen[l] = j + 1
            slots[col:col + d] = self._union_offset[l] + j * d + np.arange(d)
            col += d
        return m, slots

    def native_to_clebsch(self, element) -> np.ndarray:
        """``M`` [n, n] with ``c_clebsch = c_native @ M`` (and ``values_native = values_clebsch @ M.T``)."""
        return self._order(self._z(element))[0]

    def slots(self, element) -> np.ndarray:
        """Where the element's functions (clebsch order) sit in the union layout :attr:`union_irreps`."""
        return self._order(self._z(element))[1]

    @functools.lru_cache(maxsize=None)
    def atom_overlap(self, element) -> np.ndarray:
        """The overlap ``S`` [n, n] of one atom's own functions (clebsch order), analytic.

        Functions of different ``l`` or ``m`` are orthogonal; two shells of one
        ``l`` overlap by their radial parts. ``c^T S c`` is ``int rho^2`` of the
        atom's part of a density with coefficients ``c``.
        """
        return self._atom_metric(self._z(element), _overlap_radial)

    @functools.lru_cache(maxsize=None)
    def atom_coulomb(self, element) -> np.ndarray:
        """The Coulomb matrix ``J`` [n, n] of one atom's own functions (clebsch order), analytic, in Hartree
        for coefficients in electrons (atomic units): ``J_ab = int int f_a(r) f_b(r') / |r - r'|``.

        For two primitives ``r^l exp(-a r^2) Y_lm`` and ``r^l exp(-b r^2) Y_lm`` (orthonormal real ``Y``) it is
        ``(pi / 4) Gamma(l + 1/2) 4^-l (ab)^-(l + 3/2) g^-(l + 1/2)`` with ``g = (a + b) / (4ab)``; functions of
        different ``l`` or ``m`` do not interact. ``c^T J c`` is the atom's part of the density's Coulomb
        self-energy (times two), the metric of density fitting.
        """
        z = self._z(element)
        return self._atom_metric(z, _coulomb_radial)

    def _atom_metric(self, z: int, radial) -> np.ndarray:
        m, _ = self._order(z)
        shells = self._shells[z]
        n = m.shape[0]
        native = np.zeros((n, n))
        start = np.cumsum([0] + [2 * l + 1 for l, *_ in shells])[:-1]
        for a, (la, ea, ca) in enumerate(shells):
            for b, (lb, eb, cb) in enumerate(shells):
                if la != lb:
                    continue
                value = float(np.asarray(ca) @ radial(la, np.asarray(ea), np.asarray(eb)) @ np.asarray(cb))
                d = 2 * la + 1
                native[start[a]:start[a] + d, start[b]:start[b] + d] = value * np.eye(d)
        return m.T @ native @ m

    def overlap_factors(self, species: tuple) -> torch.Tensor:
        """``L`` [S, U, U] (float64) in the union layout with ``L[s] L[s]^T`` the atom overlap of species ``s``
        (:meth:`atom_overlap`; zero where the species has no function): ``|c L|^2 = c^T S c``."""
        return self.metric_factors(species, "overlap")

    @functools.lru_cache(maxsize=None)
    def metric_factors(self, species: tuple, metric: str = "overlap") -> torch.Tensor:
        """``L`` [S, U, U] (float64) in the union layout with ``L[s] L[s]^T`` the one-atom ``metric`` of species
        ``s`` (``"overlap"``: :meth:`atom_overlap`, ``"coulomb"``: :meth:`atom_coulomb`; zero where the species
        has no function): ``|c L|^2 = c^T S c``."""
        matrices = {"overlap": self.atom_overlap, "coulomb": self.atom_coulomb}
        if metric not in matrices:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(matrices)}")
        u = self.union_irreps.dim
        out = torch.zeros(len(species), u, u, dtype=torch.float64)
        for k, z in enumerate(species):
            if z not in self._shells:
                continue
            _, slots = self._order(z)
            chol = np.linalg.cholesky(matrices[metric](z))
            idx = torch.as_tensor(slots)
            out[k, idx[:, None], idx[None, :]] = torch.as_tensor(chol)
        return out

    @functools.lru_cache(maxsize=None)
    def embedding(self, species: tuple) -> torch.Tensor:
        """``P`` [S, n_max, U] (float64): native, zero-padded coefficients of species ``s`` times ``P[s]``
        give the union layout; ``P[s].T`` maps back. ``species`` are atomic numbers."""
        out = torch.zeros(len(species), self.max_size, self.union_irreps.dim, dtype=torch.float64)
        for s, z in enumerate(species):
            if z not in self._shells:
                continue
            m, slots = self._order(z)
            out[s, : m.shape[0], slots] = torch.as_tensor(m)
        return out

    @functools.lru_cache(maxsize=None)
    def charge_integrals(self, species: tuple) -> torch.Tensor:
        """``w`` [S, U] (float64, union layout): ``w[s, k] = int chi_k dr`` for the functions of species ``s``
        (Bohr^3/2; zero for ``l > 0`` and where the species has no function), so that a density with per-atom
        coefficients ``c`` holds ``sum_i c_i . w[s_i]`` electrons. An ``s`` function
        ``Y_00 sum_p c_p exp(-a_p r^2)`` integrates to ``sum_p c_p (pi / a_p)^3/2 / sqrt(4 pi)``."""
        out = torch.zeros(len(species), self.union_irreps.dim, dtype=torch.float64)
        for k, z in enumerate(species):
            if z not in self._shells:
                continue
            m, slots = self._order(z)
            native = np.concatenate([
                [float(np.asarray(c) @ (math.pi / np.asarray(e)) ** 1.5) / math.sqrt(4.0 * math.pi)] if l == 0
                else np.zeros(2 * l + 1) for l, e, c in self._shells[z]])
            out[k, torch.as_tensor(slots)] = torch.as_tensor(native @ m)  # c_native . w = c_clebsch . (w M)
        return out

    def union_mask(self, species: tuple) -> torch.Tensor:
        """[S, U] bool: which union entries species ``s`` has."""
        return self.embedding(species).abs().sum(dim=1) > 0

    # ------------------------------------------------------------------ conversion
    def native_to_union(self, numbers, native) -> torch.Tensor:
        """Per-atom native coefficients ``[N, >= n_z]`` (zero padded) to the union layout ``[N, U]``.

        Errors name the atom whose element the basis lacks or whose row is too short.
        """
        numbers = [int(z) for z in numbers]
        native = torch.as_tensor(native, dtype=torch.float64)
        out = torch.zeros(len(numbers), self.union_irreps.dim, dtype=torch.float64)
        for i, z in enumerate(numbers):
            try:
                m, slots = self._order(self._z(z))
            except ValueError as err:
                raise ValueError(f"atom {i}: {err}") from None
            n = m.shape[0]
            if native.shape[1] < n:
                raise ValueError(f"atom {i} ({chemical_symbols[z]}) has {n} functions in basis {self.name!r}, "
                                 f"but its row holds {native.shape[1]} values")
            extra = native[i, n:]
            if bool((extra != 0).any()):
                raise ValueError(f"atom {i} ({chemical_symbols[z]}) has {n} functions in basis {self.name!r}, but "
                                 f"its row has non-zero values beyond them (a different basis?)")
            out[i, torch.as_tensor(slots)] = native[i, :n] @ torch.as_tensor(m)
        return out

    def union_to_native(self, numbers, union) -> torch.Tensor:
        """Inverse of :meth:`native_to_union`: ``[N, n_max]`` zero padded."""
        union = torch.as_tensor(union)
        out = torch.zeros(len(numbers), self.max_size, dtype=union.dtype)
        for i, z in enumerate(numbers):
            m, slots = self._order(self._z(int(z)))
            out[i, : m.shape[0]] = union[i, torch.as_tensor(slots)] @ torch.as_tensor(m, dtype=union.dtype).T
        return out

    def ao_offsets(self, numbers) -> np.ndarray:
        """Start of each atom's functions in a molecule's matrix (atoms in order), and the total at the end."""
        return np.cumsum([0] + [self.size(int(z)) for z in numbers])

    def matrix_to_clebsch(self, numbers, matrix) -> torch.Tensor:
        """A molecule's matrix in native AO order ``[n_ao, n_ao]`` to clebsch order (atom by atom)."""
        m = torch.block_diag(*[torch.as_tensor(self.native_to_clebsch(int(z))) for z in numbers])
        matrix = torch.as_tensor(matrix, dtype=torch.float64).reshape(m.shape)  # flattened or not
        return m.T @ matrix @ m

    def matrix_to_native(self, numbers, matrix) -> torch.Tensor:
        m = torch.block_diag(*[torch.as_tensor(self.native_to_clebsch(int(z))) for z in numbers]).to(matrix)
        return m @ matrix @ m.T

    # ------------------------------------------------------------------ evaluation
    def values(self, numbers, positions, points, order: str = "clebsch") -> torch.Tensor:
        """Basis functions of a molecule at ``points`` [P, 3] (Å): ``[P, n_ao]`` in Bohr^-3/2.

        Atoms in order; within an atom ``order="clebsch"`` or ``"native"``.
        """
        positions = torch.as_tensor(positions, dtype=torch.float64)
        points = torch.as_tensor(points, dtype=torch.float64)
        columns = []
        for i, z in enumerate(numbers):
            z = self._z(int(z))
            d = (points - positions[i]) / BOHR
            r2 = (d * d).sum(dim=1)
            shells = self._shells[z]
            lmax = max(l for l, *_ in shells)
            y = spherical_harmonics(list(range(lmax + 1)), d, normalize=True, normalization="integral")
            r = r2.sqrt()
            block = []
            for l, exps, coefs in shells:
                radial = (torch.exp(-r2[:, None] * torch.as_tensor(exps)) @ torch.as_tensor(coefs)) * r ** l
                block.append(radial[:, None] * y[:, l * l:(l + 1) * (l + 1)])
            native_like = torch.cat(block, dim=1)  # native shell order, clebsch components
            if order == "native":
                columns.append(self._clebsch_components_to_native(z, native_like))
            else:
                m, _ = self._order(z)
                # clebsch-ordered functions: values_clebsch = values_native @ M
                columns.append(self._clebsch_components_to_native(z, native_like) @ torch.as_tensor(m))
        return torch.cat(columns, dim=1)

    def _clebsch_components_to_native(self, z: int, values: torch.Tensor) -> torch.Tensor:
        out = []
        start = 0
        for l, *_ in self._shells[z]:
            d = 2 * l + 1
            out.append(values[:, start:start + d] @ torch.as_tensor(pyscf_to_clebsch(l)).T)
            start += d
        return torch.cat(out, dim=1)

    def density(self, numbers, positions, coefficients, points, chunk: int = 65536) -> torch.Tensor:
        """``rho(points) = sum_i sum_P c_iP chi_iP(points)`` (electrons / Bohr^3).

        ``coefficients``: per atom in the union layout ``[N, U]`` (clebsch order), or ``[N, U, K]`` for
        ``K`` densities at once (``[P, K]`` out).
        """
        coefficients = torch.as_tensor(coefficients, dtype=torch.float64)
        flat = torch.cat([coefficients[i, torch.as_tensor(self.slots(int(z)))] for i, z in enumerate(numbers)])
        points = torch.as_tensor(points, dtype=torch.float64)
        return torch.cat([self.values(numbers, positions, points[k:k + chunk]) @ flat
                          for k in range(0, points.shape[0], chunk)]) if points.shape[0] else points.new_zeros(0)


def _plain(x):
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return float(x) if not isinstance(x, int) else x
