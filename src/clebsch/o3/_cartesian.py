r"""Change of basis between tensors with index symmetries and irreps.

A tensor ``T_{ij...}`` whose indices each carry a representation of O(3) (a
Cartesian index carries ``1o``) lives in the tensor product of those
representations. Index symmetries such as ``T_ij = T_ji`` restrict it to a
subspace, which splits into irreps: a symmetric 3x3 matrix is ``0e + 2e``
(trace and symmetric traceless part), an antisymmetric one is ``1e``.

The change of basis ``Q`` (shape ``(irreps_out.dim, d_1, ..., d_n)``) is built
in three steps, in float64:

1. An orthonormal basis of the full product adapted to O(3): the indices are
   coupled from left to right with 3j symbols,
   ``((i ⊗ j) -> l_1) ⊗ k -> l_2, ...``; every coupling path gives one copy
   of its irrep. The paths of one irrep are ordered by the path and stably
   sorted by irrep at every step.
2. The projector ``Π`` on the symmetric subspace is the average of the signed
   index permutations that the formula generates. As ``Π`` commutes with O(3),
   on the copies ``R_u`` of one irrep it acts as a matrix ``A_uv = <R_u, Π R_v>
   / dim``, the orthogonal projector on the allowed mixtures of copies.
3. Gram-Schmidt on the rows of ``A``, in path order, each vector signed so
   that its first non-zero entry is positive, gives the copies kept; each
   row of ``Q`` is one component of ``sum_u x_u R_u``.

These are e3nn's conventions (``o3.ReducedTensorProducts`` and
``io.CartesianTensor``), so the numbers agree with it. The rows of ``Q`` are
orthonormal, ``Q Q^T = 1`` and ``Q^T Q = Π``: :meth:`~CartesianTensor.to_cartesian`
after :meth:`~CartesianTensor.from_cartesian` is the projection on the symmetric
subspace.
"""

from __future__ import annotations

import functools

import torch

from ._cache import constant_cache, real_tensors, tracing
from ._irreps import Irreps
from ._wigner import wigner_3j

__all__ = ["ReducedTensorProducts", "CartesianTensor"]

_TOL = 1e-8


# ----------------------------------------------------------------------------- formula


def _parse_formula(formula: str) -> tuple[str, frozenset]:
    """Indices of ``formula`` and the group of signed permutations it generates.

    A permutation ``p`` maps the tensor ``T`` to ``T.permute(p)``; ``(s, p)`` in
    the group means ``T = s T.permute(p)``.
    """
    if not isinstance(formula, str):
        raise TypeError(f"formula must be a string like 'ij=ji', got {type(formula).__name__}")
    terms = formula.replace(" ", "").split("=")
    indices = terms[0]
    if not indices or not indices.isalpha() or len(set(indices)) != len(indices):
        raise ValueError(f"formula {formula!r}: the first term must be distinct letters, like 'ij' in 'ij=ji'")
    generators = []
    for term in terms[1:]:
        sign = -1 if term.startswith("-") else 1
        letters = term[1:] if sign == -1 else term
        if sorted(letters) != sorted(indices):
            raise ValueError(f"formula {formula!r}: {term!r} is not a (signed) permutation of {indices!r}")
        generators.append((sign, tuple(indices.index(c) for c in letters)))
    identity = (1, tuple(range(len(indices))))
    group, todo = {identity}, [identity]
    while todo:  # closure under composition; a finite monoid of permutations is a group
        s1, p1 = todo.pop()
        for s2, p2 in generators:
            g = (s1 * s2, tuple(p1[i] for i in p2))
            if g not in group:
                group.add(g)
                todo.append(g)
    return indices, frozenset(group)


def _resolve_irreps(formula: str, indices: str, group, irreps: dict) -> tuple:
    """Irreps of every index: given, shared by indices that the symmetries exchange, or ``1o``."""
    for key in irreps:
        if len(key) != 1 or key not in indices:
            raise ValueError(f"formula {formula!r} has no index {key!r} (indices: {indices!r})")
    irreps = {k: Irreps(v) for k, v in irreps.items()}
    orbit = {i: {i} for i in range(len(indices))}  # indices exchanged by the symmetries
    for _, p in group:
        for k, pk in enumerate(p):
            merged = orbit[k] | orbit[pk]
            for i in merged:
                orbit[i] = merged
    out = []
    for k, letter in enumerate(indices):
        given = {indices[i]: irreps[indices[i]] for i in sorted(orbit[k]) if indices[i] in irreps}
        if len(set(given.values())) > 1:
            raise ValueError(f"formula {formula!r} exchanges indices with different irreps: "
                             + ", ".join(f"{i}={v}" for i, v in given.items()))
        out.append(next(iter(given.values())) if given else Irreps("1o"))
    return tuple(out)


def _symmetrize(t: torch.Tensor, group, n: int) -> torch.Tensor:
    """Average of ``s * t.permute(p)`` over the group, acting on the last ``n`` axes."""
    k = t.ndim - n
    out = torch.zeros_like(t)
    for s, p in sorted(group):
        out = out + s * t.permute(*range(k), *(k + i for i in p))
    return out / len(group)


# ----------------------------------------------------------------------------- change of basis


def _coupled_basis(irreps_in: tuple) -> list:
    """Orthonormal O(3)-adapted basis of the product: ``[(ir, C)]``, ``C`` of shape ``(ir.dim, *dims)``.

    Each component row of each ``C`` has unit norm, and the ``C`` of one irrep are orthogonal.
    """
    first = irreps_in[0]
    eye = torch.eye(first.dim, dtype=torch.float64)
    paths, i = [], 0
    for mul, ir in first:
        for _ in range(mul):
            paths.append((ir, eye[i:i + ir.dim]))
            i += ir.dim
    paths.sort(key=lambda path: path[0])
    for right in irreps_in[1:]:
        coupled = []
        for ir_left, C_left in paths:
            offset = 0
            for mul, ir in right:
                for ir_out in ir_left * ir:
                    w = wigner_3j(ir_out.l, ir_left.l, ir.l, dtype=torch.float64) * ir_out.dim**0.5
                    C = torch.einsum("olr,l...->o...r", w, C_left)
                    for u in range(mul):
                        E = C.new_zeros(*C.shape[:-1], right.dim)
                        E[..., offset + u * ir.dim:offset + (u + 1) * ir.dim] = C
                        coupled.append((ir_out, E))
                offset += mul * ir.dim
        paths = sorted(coupled, key=lambda path: path[0])
    return paths


def _gram_schmidt(A: torch.Tensor) -> list:
    """Orthonormal vectors spanning the rows of ``A``, in row order, first clear entry positive."""
    basis = []
    for row in A:
        for b in basis:
            row = row - (row @ b) * b
        norm = row.norm()
        if norm > _TOL:
            row = row / norm
            basis.append(row * row[row.abs() > _TOL][0].sign())
    return basis


@constant_cache
def _reduce(irreps_in: tuple, group: frozenset) -> tuple:
    """``(irreps_out, Q)`` for the product of ``irreps_in`` restricted by ``group`` (float64, CPU)."""
    dims = [irreps.dim for irreps in irreps_in]
    by_ir: dict = {}
    for ir, C in _coupled_basis(irreps_in):
        by_ir.setdefault(ir, []).append(C)
    rows, irreps_out = [], []
    for ir, copies in by_ir.items():
        R = torch.stack(copies)  # (mul, ir.dim, *dims)
        A = R.flatten(1) @ _symmetrize(R, group, len(dims)).flatten(1).T / ir.dim
        kept = _gram_schmidt(A)
        if len(kept) != round(float(A.trace())):  # pragma: no cover - numerical breakdown
            raise RuntimeError(f"reduction to {ir}: found {len(kept)} copies, expected {float(A.trace()):.3f}")
        for x in kept:
            C = torch.einsum("u,u...->...", x, R)
            rows.append(C * (ir.dim / C.pow(2).sum()).sqrt())
            irreps_out.append((1, ir))
    Q = torch.cat(rows) if rows else torch.zeros(0, *dims, dtype=torch.float64)
    return Irreps(irreps_out).simplify(), Q.contiguous()


# ----------------------------------------------------------------------------- public classes


class ReducedTensorProducts:
    r"""Reduction of a tensor with index symmetries into irreps.

    Constructing the same formula and irreps twice returns the same (immutable)
    object; the change of basis is computed once, in float64.

    Parameters
    ----------
    formula : str
        The indices and their symmetries: ``"ij=ji"`` (symmetric), ``"ij=-ji"``
        (antisymmetric), ``"ijkl=jikl=ijlk=klij"`` (elasticity), or just
        ``"ijk"`` (no symmetry). The first term lists the indices.
    **irreps : irreps-like
        The irreps of each index, e.g. ``i="1o"``. An index exchanged with a
        given one by the symmetries gets its irreps; any other index is ``1o``.

    Attributes
    ----------
    formula : str
    indices : str
        The letters of the first term.
    irreps_in : tuple of Irreps
        One per index.
    irreps_out : Irreps
        Sorted and simplified.
    change_of_basis : torch.Tensor
        ``Q`` (float64, a copy), shape ``(irreps_out.dim, *(ir.dim for ir in irreps_in))``.

    Examples
    --------
    >>> tp = ReducedTensorProducts("ij=-ji", i="1o")
    >>> tp.irreps_out
    1x1e
    >>> x, y = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    >>> tp(x, y) + tp(y, x)
    tensor([0., 0., 0.])
    >>> ReducedTensorProducts("ijkl=jikl=ikjl=ijlk", i="1e").irreps_out
    1x0e+1x2e+1x4e
    >>> ReducedTensorProducts("ij=ji") is ReducedTensorProducts("ij=ji", i="1o", j="1o")
    True
    """

    formula: str
    indices: str
    irreps_in: tuple
    irreps_out: Irreps

    def __new__(cls, formula: str, **irreps):
        indices, group = _parse_formula(formula)
        irreps_in = _resolve_irreps(formula, indices, group, irreps)
        return _instance(formula.replace(" ", ""), irreps_in)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self):
        return _instance, (self.formula, self.irreps_in)

    def __repr__(self) -> str:
        given = ", ".join(f"{i}={irreps}" for i, irreps in zip(self.indices, self.irreps_in))
        return f"{type(self).__name__}({self.formula!r}, {given}) -> {self.irreps_out}"

    @property
    def change_of_basis(self) -> torch.Tensor:
        return self._Q.clone()

    @property
    def symmetries(self) -> tuple:
        """The signed permutations ``(s, p)`` with ``T = s T.permute(p)``, sorted."""
        return tuple(sorted(self._group))

    def _basis(self, dtype, device) -> torch.Tensor:
        """``Q`` flattened to ``(irreps_out.dim, prod(dims))`` in ``dtype`` on ``device``."""
        key = (dtype, torch.device(device))
        Q = self._cast.get(key)
        if Q is None:
            with real_tensors():
                Q = self._Q.flatten(1).to(dtype=dtype, device=device)
            if not tracing():
                self._cast[key] = Q
        return Q

    def _check_tensor(self, data: torch.Tensor) -> torch.Tensor:
        n = len(self.indices)
        if not isinstance(data, torch.Tensor) or data.ndim < n or tuple(data.shape[data.ndim - n:]) != self._dims:
            shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
            dims = ", ".join(map(str, self._dims))
            raise ValueError(f"{self.formula!r}: expected a tensor of shape (..., {dims}), got {shape}")
        return data if data.is_floating_point() else data.to(torch.get_default_dtype())

    def from_tensor(self, data: torch.Tensor) -> torch.Tensor:
        """Irreps components ``(..., irreps_out.dim)`` of a tensor ``(..., *dims)``.

        The part of ``data`` that breaks the symmetries is dropped.
        """
        data = self._check_tensor(data)
        n = len(self.indices)
        flat = data.reshape(*data.shape[:data.ndim - n], -1)
        return flat @ self._basis(data.dtype, data.device).T

    def to_tensor(self, data: torch.Tensor) -> torch.Tensor:
        """The tensor ``(..., *dims)`` with irreps components ``data`` (``(..., irreps_out.dim)``)."""
        if not isinstance(data, torch.Tensor) or data.ndim < 1 or data.shape[-1] != self.irreps_out.dim:
            shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
            raise ValueError(f"{self.formula!r}: expected irreps {self.irreps_out} of shape "
                             f"(..., {self.irreps_out.dim}), got {shape}")
        if not data.is_floating_point():
            data = data.to(torch.get_default_dtype())
        out = data @ self._basis(data.dtype, data.device)
        return out.reshape(*data.shape[:-1], *self._dims)

    def symmetry_error(self, data: torch.Tensor) -> torch.Tensor:
        """Largest ``|T - s T.permute(p)|`` over the symmetries and the entries, per leading index.

        Zero for a tensor that has the symmetries; shape ``data.shape[:-len(indices)]``.
        """
        data = self._check_tensor(data)
        n = len(self.indices)
        k = data.ndim - n
        err = data.new_zeros(data.shape[:k])
        for s, p in self.symmetries:
            diff = (data - s * data.permute(*range(k), *(k + i for i in p))).abs()
            err = torch.maximum(err, diff.reshape(*data.shape[:k], -1).amax(dim=-1))
        return err

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        """Irreps components of ``x_1 ⊗ x_2 ⊗ ...``, each ``x_k`` of shape ``(..., irreps_in[k].dim)``."""
        if len(xs) != len(self.indices):
            raise ValueError(f"{self.formula!r} takes {len(self.indices)} inputs, got {len(xs)}")
        for x, irreps in zip(xs, self.irreps_in):
            if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != irreps.dim:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"{self.formula!r}: expected inputs of irreps {irreps} (..., {irreps.dim}), "
                                 f"got {shape}")
        out = xs[0]
        for x in xs[1:]:
            out = (out[..., :, None] * x[..., None, :]).flatten(-2)
        return out @ self._basis(out.dtype, out.device).T


@functools.lru_cache(maxsize=None)
def _instance(formula: str, irreps_in: tuple) -> ReducedTensorProducts:
    indices, group = _parse_formula(formula)
    irreps_out, Q = _reduce(irreps_in, group)
    self = object.__new__(ReducedTensorProducts)
    fields = dict(formula=formula, indices=indices, irreps_in=irreps_in, irreps_out=irreps_out, _Q=Q,
                  _group=group, _dims=tuple(irreps.dim for irreps in irreps_in), _cast={})
    for name, value in fields.items():
        object.__setattr__(self, name, value)
    return self


class CartesianTensor(Irreps):
    r"""The irreps of a Cartesian tensor with index symmetries, and the change of basis to them.

    Every index is a Cartesian vector (``1o``). The object is the :class:`Irreps`
    of the tensor (as e3nn's ``io.CartesianTensor``), with the conversions.

    Parameters
    ----------
    formula : str
        Indices and symmetries, e.g. ``"ij=ji"``; see :class:`ReducedTensorProducts`.

    Attributes
    ----------
    formula, indices : str
    irreps : Irreps
        The same irreps, as a plain :class:`Irreps`.
    change_of_basis : torch.Tensor
        ``Q`` of shape ``(irreps.dim, 3, ..., 3)``, float64; ``from_cartesian(T) = Q T``.

    Examples
    --------
    The isotropic part of a symmetric 3x3 tensor is its ``0e`` component:

    >>> ct = CartesianTensor("ij=ji")
    >>> ct
    1x0e+1x2e
    >>> t = torch.tensor([[1.0, 2.0, 0.0], [2.0, 3.0, 0.0], [0.0, 0.0, 5.0]])
    >>> x = ct.from_cartesian(t)
    >>> x.shape
    torch.Size([6])
    >>> iso = torch.cat([x[:1], torch.zeros(5)])
    >>> ct.to_cartesian(iso)
    tensor([[3., 0., 0.],
            [0., 3., 0.],
            [0., 0., 3.]])
    >>> torch.allclose(ct.to_cartesian(x), t)
    True

    A tensor that breaks the symmetry is projected; :meth:`symmetry_error` says by how much:

    >>> ct.symmetry_error(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    tensor(1.)
    """

    def __new__(cls, formula: str):
        indices, _ = _parse_formula(formula)
        rtp = ReducedTensorProducts(formula, **{i: "1o" for i in indices})
        self = super().__new__(cls, rtp.irreps_out)
        self._rtp = rtp
        return self

    def __reduce__(self):
        return CartesianTensor, (self.formula,)

    @property
    def formula(self) -> str:
        return self._rtp.formula

    @property
    def indices(self) -> str:
        return self._rtp.indices

    @property
    def irreps(self) -> Irreps:
        return Irreps(self)

    @property
    def change_of_basis(self) -> torch.Tensor:
        return self._rtp.change_of_basis

    def reduced_tensor_products(self) -> ReducedTensorProducts:
        """The underlying (cached) :class:`ReducedTensorProducts`."""
        return self._rtp

    def from_cartesian(self, data: torch.Tensor) -> torch.Tensor:
        """Irreps components ``(..., dim)`` of a Cartesian tensor ``(..., 3, ..., 3)``.

        The part of ``data`` that breaks the symmetries is dropped; see :meth:`symmetry_error`.
        """
        return self._rtp.from_tensor(data)

    def to_cartesian(self, data: torch.Tensor) -> torch.Tensor:
        """The Cartesian tensor ``(..., 3, ..., 3)`` with irreps components ``data`` (``(..., dim)``)."""
        return self._rtp.to_tensor(data)

    def from_vectors(self, *xs: torch.Tensor) -> torch.Tensor:
        """Irreps components of ``x_1 ⊗ x_2 ⊗ ...`` for vectors ``(..., 3)``."""
        return self._rtp(*xs)

    def symmetry_error(self, data: torch.Tensor) -> torch.Tensor:
        """Largest violation ``|T - s T.permute(p)|`` of the symmetries, per leading index.

        For ``"ij=ji"`` this is ``max |T_ij - T_ji|``: shape ``data.shape[:-rank]``.

        Examples
        --------
        >>> t = torch.zeros(4, 3, 3)
        >>> t[2, 0, 1] = 0.5
        >>> CartesianTensor("ij=ji").symmetry_error(t)
        tensor([0.0000, 0.0000, 0.5000, 0.0000])
        """
        return self._rtp.symmetry_error(data)

    def check_symmetry(self, data: torch.Tensor, atol: float = 1e-6, rtol: float = 1e-6) -> None:
        """Raise ValueError if some tensor breaks the symmetries by more than ``atol + rtol * max|T|``.

        The message names the first offending leading index and its violation.

        Examples
        --------
        >>> t = torch.eye(3).expand(2, 3, 3).clone()
        >>> t[1, 0, 1] = 0.1
        >>> CartesianTensor("ij=ji").check_symmetry(t)
        Traceback (most recent call last):
        ...
        ValueError: 1 of 2 tensors break the symmetry 'ij=ji': the first, at index (1,), by 0.1 ...
        """
        err = self.symmetry_error(data)
        n = len(self.indices)
        scale = data.abs().reshape(*data.shape[:data.ndim - n], -1).amax(dim=-1)
        bad = ~(err <= atol + rtol * scale)  # NaN counts as bad
        if bool(bad.any()):
            where = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{int(bad.sum())} of {bad.numel()} tensors break the symmetry {self.formula!r}: "
                             f"the first, at index {where}, by {float(err[where]):.3g} "
                             f"(max |T| {float(scale[where]):.3g}, tolerance atol={atol:g}, rtol={rtol:g})")
