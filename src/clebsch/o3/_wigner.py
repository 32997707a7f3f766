r"""Wigner D matrices and Wigner 3j symbols in the real basis.

The real basis is e3nn's (>= 0.5): for ``l = 1`` the components are ``(x, y, z)``,
``y`` is the polar axis, and the Wigner D of ``1o`` is the rotation matrix itself.

The 3j symbols are computed from the Racah formula in exact rational arithmetic
and brought to the real basis; ``wigner_D`` is factorised as
``Dy(alpha) J Dy(beta) J Dy(gamma)`` where ``Dy`` (rotation about the polar
axis) only mixes the components ``m`` and ``-m`` with ``cos, sin(|m| angle)``,
and ``J`` is the fixed (per ``l``) matrix of the half turn exchanging the x and
y axes, so that ``Dx(beta) = J Dy(beta) J``.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import torch

__all__ = ["wigner_3j", "wigner_D", "so3_generators", "change_basis_real_to_complex"]


@functools.lru_cache(maxsize=None)
def change_basis_real_to_complex(l: int) -> torch.Tensor:
    r"""Unitary ``Q`` (complex128, ``(2l+1, 2l+1)``) with ``Y_complex = Q @ Y_real``.

    Rows are the complex components ``m = -l..l``; columns the real ones. The
    phase ``(-i)**l`` makes the real-basis Clebsch–Gordan coefficients real.
    """
    n = 2 * l + 1
    q = torch.zeros(n, n, dtype=torch.complex128)
    r = 1 / math.sqrt(2)
    for m in range(1, l + 1):
        sign = (-1) ** m
        q[l - m, l + m] = r
        q[l - m, l - m] = -1j * r
        q[l + m, l + m] = sign * r
        q[l + m, l - m] = 1j * sign * r
    q[l, l] = 1
    return ((-1j) ** l) * q


@functools.lru_cache(maxsize=None)
def so3_generators(l: int) -> torch.Tensor:
    """Real antisymmetric generators ``(3, 2l+1, 2l+1)`` (float64) of rotations about x, y, z.

    ``torch.matrix_exp(angle * so3_generators(l)[1])`` is the Wigner D of a rotation about y.
    """
    m = torch.arange(-l, l + 1, dtype=torch.float64)
    up = torch.sqrt(l * (l + 1) - m[:-1] * (m[:-1] + 1))  # <m+1|J+|m>
    raise_ = torch.diag(-up, -1).to(torch.complex128)
    lower = torch.diag(up, 1).to(torch.complex128)
    gens = torch.stack([0.5 * (raise_ + lower), torch.diag(1j * m.to(torch.complex128)), -0.5j * (raise_ - lower)])
    Q = change_basis_real_to_complex(l)
    X = Q.conj().T @ gens @ Q
    return X.real.contiguous()


# ----------------------------------------------------------------------------- 3j


def _cg_squared_signed(j1: int, m1: int, j2: int, m2: int, j3: int, m3: int) -> tuple[int, Fraction]:
    """Complex Clebsch–Gordan <j1 m1 j2 m2 | j3 m3> as (sign, exact square) by the Racah formula."""
    if m1 + m2 != m3:
        return 0, Fraction(0)
    f = math.factorial
    pre = Fraction((2 * j3 + 1) * f(j3 + j1 - j2) * f(j3 - j1 + j2) * f(j1 + j2 - j3), f(j1 + j2 + j3 + 1))
    pre *= f(j3 + m3) * f(j3 - m3) * f(j1 - m1) * f(j1 + m1) * f(j2 - m2) * f(j2 + m2)
    kmin = max(0, j2 - j3 - m1, j1 - j3 + m2)
    kmax = min(j1 + j2 - j3, j1 - m1, j2 + m2)
    s = Fraction(0)
    for k in range(kmin, kmax + 1):
        s += Fraction((-1) ** k, f(k) * f(j1 + j2 - j3 - k) * f(j1 - m1 - k) * f(j2 + m2 - k)
                      * f(j3 - j2 + m1 + k) * f(j3 - j1 - m2 + k))
    if s == 0:
        return 0, Fraction(0)
    return (1 if s > 0 else -1), pre * s * s


@functools.lru_cache(maxsize=None)
def _wigner_3j_float64(l1: int, l2: int, l3: int) -> torch.Tensor:
    cg = torch.zeros(2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1, dtype=torch.float64)
    for m1 in range(-l1, l1 + 1):
        for m2 in range(-l2, l2 + 1):
            m3 = m1 + m2
            if abs(m3) <= l3:
                sign, sq = _cg_squared_signed(l1, m1, l2, m2, l3, m3)
                if sign:
                    # sqrt of an exact rational: numerator and denominator separately keep full precision
                    cg[l1 + m1, l2 + m2, l3 + m3] = sign * math.sqrt(sq.numerator / sq.denominator)
    Q1, Q2, Q3 = (change_basis_real_to_complex(l) for l in (l1, l2, l3))
    c = torch.einsum("ai,bj,ck,abc->ijk", Q1, Q2, Q3.conj(), cg.to(torch.complex128))
    if c.imag.abs().max() > 1e-10:  # pragma: no cover - a broken basis change
        raise RuntimeError("real-basis 3j symbols came out complex")
    c = c.real
    return (c / c.norm()).contiguous()


def wigner_3j(l1: int, l2: int, l3: int, dtype=None, device=None) -> torch.Tensor:
    r"""Wigner 3j symbols ``C`` in the real basis, shape ``(2l1+1, 2l2+1, 2l3+1)``.

    ``C`` is invariant, ``C_ijk = D1_ia D2_jb D3_kc C_abc`` for every rotation,
    has unit Frobenius norm, and carries e3nn's signs. It is exact to float64
    precision for any ``l`` and cached.

    Parameters
    ----------
    l1, l2, l3 : int
        Degrees with ``|l2 - l3| <= l1 <= l2 + l3``.
    dtype, device : optional
        Default: ``torch.get_default_dtype()`` and the CPU.

    Examples
    --------
    >>> C = wigner_3j(1, 1, 0, dtype=torch.float64)
    >>> C.shape, torch.allclose(C[:, :, 0], torch.eye(3, dtype=torch.float64) / 3**0.5)
    (torch.Size([3, 3, 1]), True)
    >>> wigner_3j(1, 1, 3)
    Traceback (most recent call last):
    ...
    ValueError: wigner_3j(1, 1, 3): the degrees must satisfy |l2 - l3| <= l1 <= l2 + l3
    """
    for l in (l1, l2, l3):
        if isinstance(l, bool) or not isinstance(l, int) or l < 0:
            raise ValueError(f"wigner_3j degrees must be ints >= 0, got {(l1, l2, l3)}")
    if not abs(l2 - l3) <= l1 <= l2 + l3:
        raise ValueError(f"wigner_3j({l1}, {l2}, {l3}): the degrees must satisfy |l2 - l3| <= l1 <= l2 + l3")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return _wigner_3j_float64(l1, l2, l3).to(dtype=dtype, device=device, copy=True)


# ----------------------------------------------------------------------------- D


@functools.lru_cache(maxsize=None)
def _d_factors(l: int):
    """Float64 constants of the factorisation of ``D^l``.

    Returns ``freq`` (``|m|`` per component), ``sigma`` (sign of the ``m <-> -m``
    coupling of ``Dy``) and ``T`` of shape ``(2l+1, (2l+1)**2)`` with
    ``J Dy(b) J = [cos(f b) for f in 0..l, sin(f b) for f in 1..l] @ T``.
    """
    n = 2 * l + 1
    X = so3_generators(l)
    idx = torch.arange(n)
    freq = (idx - l).abs()
    flip = n - 1 - idx
    # Dy(b) = diag(cos(|m| b)) + diag(sin(|m| b) * sigma) @ P, P the flip
    sigma = torch.zeros(n, dtype=torch.float64)
    nz = freq > 0
    sigma[nz] = X[1][idx[nz], flip[nz]] / freq[nz].to(torch.float64)
    # J: half turn about (x + y) / sqrt(2), an involution mapping y -> x
    J = torch.linalg.matrix_exp(math.pi / math.sqrt(2) * (X[0] + X[1]))
    T = torch.zeros(2 * l + 1, n, n, dtype=torch.float64)
    for k in range(n):
        f = int(freq[k])
        T[f] += torch.outer(J[:, k], J[k, :])
        if f > 0:
            T[l + f] += sigma[k] * torch.outer(J[:, k], J[flip[k], :])
    return freq, sigma, T.reshape(2 * l + 1, n * n)


_D_CACHE: dict = {}


def _d_constants(l: int, dtype, device):
    key = (l, dtype, device)
    c = _D_CACHE.get(key)
    if c is None:
        freq, sigma, T = _d_factors(l)
        c = (freq.to(dtype=dtype, device=device), sigma.to(dtype=dtype, device=device), T.to(dtype=dtype, device=device))
        _D_CACHE[key] = c
    return c


def wigner_D(l: int, alpha, beta, gamma) -> torch.Tensor:
    r"""Wigner D matrix of ``R = matrix_y(alpha) @ matrix_x(beta) @ matrix_y(gamma)`` in the real basis.

    Parameters
    ----------
    l : int
        Degree.
    alpha, beta, gamma : torch.Tensor
        Broadcastable Euler angles (YXY).

    Returns
    -------
    torch.Tensor
        Shape ``(..., 2l+1, 2l+1)``.

    Examples
    --------
    >>> from clebsch.o3 import angles_to_matrix
    >>> a, b, c = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    >>> torch.allclose(wigner_D(1, a, b, c), angles_to_matrix(a, b, c))
    True
    >>> wigner_D(3, a, b, c).shape
    torch.Size([7, 7])
    """
    if isinstance(l, bool) or not isinstance(l, int) or l < 0:
        raise ValueError(f"wigner_D degree must be an int >= 0, got {l!r}")
    alpha, beta, gamma = (a if torch.is_tensor(a) else torch.as_tensor(a, dtype=torch.get_default_dtype())
                          for a in (alpha, beta, gamma))
    alpha, beta, gamma = torch.broadcast_tensors(alpha, beta, gamma)
    shape = alpha.shape
    n = 2 * l + 1
    if l == 0:
        return torch.ones(*shape, 1, 1, dtype=alpha.dtype, device=alpha.device) + 0 * (alpha + beta + gamma)[..., None, None]
    freq, sigma, T = _d_constants(l, alpha.dtype, alpha.device)
    fpos = freq[l:]  # 0..l
    # middle factor J Dy(beta) J as one matmul over cos/sin(f beta)
    fb = beta.reshape(-1, 1) * fpos
    trig_b = torch.cat([fb.cos(), fb[:, 1:].sin()], dim=-1)
    M = (trig_b @ T).reshape(-1, n, n)
    # left Dy(alpha): rows i and 2l-i mix
    fa = alpha.reshape(-1, 1) * freq
    M = fa.cos()[:, :, None] * M + (fa.sin() * sigma)[:, :, None] * M.flip(-2)
    # right Dy(gamma): columns j and 2l-j mix
    fc = gamma.reshape(-1, 1) * freq
    M = M * fc.cos()[:, None, :] + M.flip(-1) * (fc.sin() * sigma.flip(0))[:, None, :]
    return M.reshape(*shape, n, n)
