r"""Real spherical harmonics as polynomials of ``(x, y, z)``, for any degree.

``Y^0 = 1``, ``Y^1 = sqrt(3) (x, y, z)``, and
``Y^{l+1}_i = c_l sum_jk C_ijk x_j Y^l_k`` with ``C = wigner_3j(l+1, 1, l)``
and ``c_l > 0`` fixed so that ``|Y^{l+1}|^2 = 2l+3`` on the unit sphere — the
recurrence of e3nn, hence its basis and signs. Each ``Y^l`` is a homogeneous
polynomial of degree ``l``; its coefficients on the monomials
``x^a y^b z^c`` are computed once (float64, cached) from the recurrence, and
evaluation is one small matrix product per degree on a monomial table.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence, Union

import torch

from ._irreps import Irreps
from ._wigner import wigner_3j

__all__ = ["spherical_harmonics"]


def _monomials(d: int) -> list[tuple[int, int, int]]:
    """Exponents ``(a, b, c)`` of degree ``d``, in the order built by :func:`_monomial_rows`."""
    if d == 0:
        return [(0, 0, 0)]
    prev = _monomials(d - 1)
    out = [(a + 1, b, c) for a, b, c in prev]
    out += [(a, b + 1, c) for a, b, c in prev[-d:]]
    out += [(a, b, c + 1) for a, b, c in prev[-1:]]
    return out


@functools.lru_cache(maxsize=None)
def _harmonic_coefficients(l: int) -> torch.Tensor:
    """Coefficients ``(2l+1, l+1, l+1, l+1)`` (float64) of ``Y^l`` ("component") on ``x^a y^b z^c``."""
    if l == 0:
        return torch.ones(1, 1, 1, 1, dtype=torch.float64)
    if l == 1:
        P = torch.zeros(3, 2, 2, 2, dtype=torch.float64)
        P[0, 1, 0, 0] = P[1, 0, 1, 0] = P[2, 0, 0, 1] = math.sqrt(3)
        return P
    prev = _harmonic_coefficients(l - 1)  # (2l-1, l, l, l)
    C = wigner_3j(l, 1, l - 1, dtype=torch.float64)  # (2l+1, 3, 2l-1)
    P = torch.zeros(2 * l + 1, l + 1, l + 1, l + 1, dtype=torch.float64)
    for k in range(3):
        term = torch.einsum("ij,jabc->iabc", C[:, k, :], prev)
        if k == 0:
            P[:, 1:, :-1, :-1] += term
        elif k == 1:
            P[:, :-1, 1:, :-1] += term
        else:
            P[:, :-1, :-1, 1:] += term
    # value at (0, 1, 0) fixes the positive normalisation |Y^l|^2 = 2l + 1
    at_y = P[:, 0, l, 0]
    return P * (math.sqrt(2 * l + 1) / at_y.norm())


_NORMS = ("component", "norm", "integral")


@functools.lru_cache(maxsize=None)
def _block(l: int, normalization: str) -> torch.Tensor:
    """Coefficients ``(2l+1, n_monomials(l))`` (float64) of ``Y^l`` on the degree-``l`` monomials."""
    P = _harmonic_coefficients(l)
    block = torch.stack([P[:, a, b, c] for a, b, c in _monomials(l)], dim=1)
    if normalization == "norm":
        block = block / math.sqrt(2 * l + 1)
    elif normalization == "integral":
        block = block / math.sqrt(4 * math.pi)
    return block.contiguous()


_COEFF_CACHE: dict = {}


def _coefficients(l: int, normalization: str, dtype, device) -> torch.Tensor:
    key = (l, normalization, dtype, device)
    c = _COEFF_CACHE.get(key)
    if c is None:
        c = _block(l, normalization).to(dtype=dtype, device=device)
        _COEFF_CACHE[key] = c
    return c


def _monomial_rows(u: torch.Tensor, lmax: int) -> list[torch.Tensor]:
    """Monomials of each degree ``d <= lmax`` of the rows of ``u`` (``(3, N)``): a list of ``(n_d, N)``.

    Component-major layout: every product is of contiguous rows, and each
    degree is a single ``cat`` of three products.
    """
    x, y, z = u[0:1], u[1:2], u[2:3]
    out = [torch.ones_like(x), u]
    cur = u
    for d in range(2, lmax + 1):
        cur = torch.cat([cur * x, cur[-d:] * y, cur[-1:] * z], dim=0)
        out.append(cur)
    return out[: lmax + 1]


def _parse_ls(ls) -> tuple[int, ...]:
    if isinstance(ls, bool):
        raise ValueError(f"ls must be an int, a list of ints or Irreps, got {ls!r}")
    if isinstance(ls, int):
        out = (ls,)
    elif isinstance(ls, (str, Irreps)):
        irreps = Irreps(ls)
        out = tuple(l for l in irreps.ls)
        vector = all(ir.p == (-1) ** ir.l for _, ir in irreps)
        pseudo = all(ir.p == 1 for _, ir in irreps)
        if not (vector or pseudo):
            raise ValueError(f"irreps {irreps} are not those of spherical harmonics: expected parity (-1)**l, "
                             f"e.g. {Irreps.spherical_harmonics(irreps.lmax)}")
    else:
        out = tuple(ls)
    if len(out) == 0:
        raise ValueError("ls is empty: give at least one degree")
    for l in out:
        if isinstance(l, bool) or not isinstance(l, int) or l < 0:
            raise ValueError(f"degrees must be ints >= 0, got {l!r} in {ls!r}")
    return out


def spherical_harmonics(
    ls: Union[int, Sequence[int], str, Irreps],
    x: torch.Tensor,
    normalize: bool,
    normalization: str = "component",
) -> torch.Tensor:
    r"""Real spherical harmonics ``Y^l(x)`` for each ``l`` in ``ls``, concatenated.

    Parameters
    ----------
    ls : int, list of int, str or Irreps
        Degrees, e.g. ``3``, ``[0, 1, 2]`` or ``"0e + 1o + 2e"``.
    x : torch.Tensor
        Vectors, shape ``(..., 3)``.
    normalize : bool
        Evaluate on ``x / |x|``. A zero vector then gives the ``l = 0`` value
        and zeros, with finite gradients.
    normalization : {"component", "norm", "integral"}
        On the unit sphere, ``"component"``: ``|Y^l|^2 = 2l + 1`` (each
        component has unit mean square); ``"norm"``: ``|Y^l| = 1``;
        ``"integral"``: ``int_{S^2} Y_m^l Y_m^l = 1``.

    Returns
    -------
    torch.Tensor
        Shape ``(..., sum(2l + 1))``.

    Examples
    --------
    >>> x = torch.tensor([[0.0, 0.0, 2.0]])
    >>> spherical_harmonics([0, 1], x, normalize=True)
    tensor([[1.0000, 0.0000, 0.0000, 1.7321]])
    >>> spherical_harmonics(2, x, normalize=True, normalization="norm").norm().item()
    1.0
    """
    if normalization not in _NORMS:
        raise ValueError(f"normalization must be one of {_NORMS}, got {normalization!r}")
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected vectors of shape (..., 3), got {shape}")
    ls = _parse_ls(ls)
    batch = x.shape[:-1]
    u = x.reshape(-1, 3)
    if normalize:
        r2 = (u * u).sum(dim=1, keepdim=True)
        # where() keeps the zero vector's value at 0 and its gradient finite
        u = u * torch.where(r2 > 0, r2, torch.ones_like(r2)).rsqrt()
    monomials = _monomial_rows(u.T.contiguous(), max(ls))
    # one small matmul per degree (Y^l only involves degree-l monomials), stacked row-wise
    rows = [_coefficients(l, normalization, x.dtype, x.device) @ monomials[l] for l in ls]
    out = (torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]).T.contiguous()
    return out.reshape(*batch, out.shape[1])
