r"""Real spherical harmonics as polynomials of ``(x, y, z)``, for any degree.

``Y^0 = 1``, ``Y^1 = sqrt(3) (x, y, z)``, and
``Y^{l+1}_i = c_l sum_jk C_ijk x_j Y^l_k`` with ``C = wigner_3j(l+1, 1, l)``
and ``c_l > 0`` fixed so that ``|Y^{l+1}|^2 = 2l+3`` on the unit sphere — the
recurrence of e3nn, hence its basis and signs. Each ``Y^l`` is a homogeneous
polynomial of degree ``l``; its coefficients on the monomials
``x^a y^b z^c`` are computed once (float64, cached) from the recurrence.

Evaluation builds the monomials of degrees ``0..lmax`` (one product each) and
takes one matrix product with the coefficient table. The backward pass is
written by hand -- the derivatives are polynomials of one degree less, on the
same monomials -- so autograd records no intermediate; under
``create_graph=True`` the same formula is evaluated with differentiable
operations, which gives second (and higher) derivatives.
"""

from __future__ import annotations

import ctypes
import math
from typing import Sequence, Union

import torch

from ._irreps import Irreps
from . import _native
from ._cache import constant_cache, real_tensors, tracing
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


@constant_cache
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


@constant_cache
def _block(l: int, normalization: str) -> torch.Tensor:
    """Coefficients ``(2l+1, n_monomials(l))`` (float64) of ``Y^l`` on the degree-``l`` monomials."""
    P = _harmonic_coefficients(l)
    block = torch.stack([P[:, a, b, c] for a, b, c in _monomials(l)], dim=1)
    if normalization == "norm":
        block = block / math.sqrt(2 * l + 1)
    elif normalization == "integral":
        block = block / math.sqrt(4 * math.pi)
    return block.contiguous()


@constant_cache
def _tables(ls: tuple, normalization: str) -> tuple:
    """Float64 ``(C^T, B^T)`` for the degrees ``ls``: evaluation and derivative tables.

    With ``M`` the monomials of degrees ``0..lmax`` stacked row-wise
    (``(K, N)``), ``Y = M^T C^T`` (``(N, dim)``). ``B^T`` (``(3 K', dim)``,
    ``K'`` the monomials of degree ``< lmax``) holds ``dY/du_j`` on those
    monomials for ``j = x, y, z``, so that the vector-Jacobian product is one
    matrix product and one weighted sum: ``g_j = sum_k (B^T g_Y^T)[j k] M[k]``.
    """
    lmax = max(ls)
    index = {}
    for d in range(lmax + 1):
        for e in _monomials(d):
            index[e] = len(index)
    k_low = max(len(index) - (lmax + 1) * (lmax + 2) // 2, 1)
    dim = sum(2 * l + 1 for l in ls)
    C = torch.zeros(dim, len(index), dtype=torch.float64)
    B = torch.zeros(3, dim, k_low, dtype=torch.float64)
    row = 0
    for l in ls:
        block = _block(l, normalization)
        for col, e in enumerate(_monomials(l)):
            C[row : row + 2 * l + 1, index[e]] = block[:, col]
            for j in range(3):
                if e[j] > 0:
                    lower = list(e)
                    lower[j] -= 1
                    B[j, row : row + 2 * l + 1, index[tuple(lower)]] += e[j] * block[:, col]
        row += 2 * l + 1
    return C.T.contiguous(), B.permute(0, 2, 1).reshape(3 * k_low, dim).contiguous()


_TABLE_CACHE: dict = {}


def _tables_as(ls: tuple, normalization: str, dtype, device) -> tuple:
    """:func:`_tables` in ``dtype`` on ``device`` (cached, but never while tracing)."""
    key = (ls, normalization, dtype, device)
    out = _TABLE_CACHE.get(key)
    if out is None:
        with real_tensors():
            out = tuple(t.to(dtype=dtype, device=device) for t in _tables(ls, normalization))
        if not tracing():
            _TABLE_CACHE[key] = out
    return out


def _unit(x: torch.Tensor, normalize: bool) -> tuple:
    """``(u, inv)``: the rows ``u`` (``(3, N)``) of ``x / |x|`` (or of ``x``) and ``1 / |x|``.

    ``where`` keeps a zero vector at ``u = 0`` with the finite derivative ``du/dx = 1``.
    """
    if not normalize:
        return x.T, x.new_ones(())
    r2 = (x * x).sum(dim=1)
    inv = torch.where(r2 > 0, r2, torch.ones_like(r2)).rsqrt()
    return x.T * inv, inv


def _monomial_rows(u: torch.Tensor, lmax: int) -> torch.Tensor:
    """Monomials of degrees ``0..lmax`` of the rows of ``u`` (``(3, N)``), stacked: ``(K, N)``.

    Differentiable: it serves tracing and second derivatives. Each degree is
    one ``cat`` of three products of contiguous rows, in :func:`_monomials`' order.
    """
    x, y, z = u[0:1], u[1:2], u[2:3]
    out = [torch.ones_like(x), u]
    cur = u
    for d in range(2, lmax + 1):
        cur = torch.cat([cur * x, cur[-d:] * y, cur[-1:] * z], dim=0)
        out.append(cur)
    return torch.cat(out[: lmax + 1], dim=0)


def _monomial_rows_into(x: torch.Tensor, inv: torch.Tensor, normalize: bool, lmax: int) -> torch.Tensor:
    """:func:`_monomial_rows` of the rows of ``x * inv``, every product written in place (no autograd)."""
    m = x.new_empty((lmax + 1) * (lmax + 2) * (lmax + 3) // 6, x.shape[0])
    m[0].fill_(1.0)
    if lmax == 0:
        return m
    if normalize:
        torch.mul(x.T, inv, out=m[1:4])
    else:
        m[1:4].copy_(x.T)
    x_, y_, z_ = m[1:2], m[2:3], m[3:4]
    start, n = 1, 3  # rows of the previous degree
    for d in range(2, lmax + 1):
        cur, o = m[start : start + n], start + n
        torch.mul(cur, x_, out=m[o : o + n])
        torch.mul(cur[-d:], y_, out=m[o + n : o + n + d])
        torch.mul(cur[-1:], z_, out=m[o + n + d : o + n + d + 1])
        start, n = o, n + d + 1
    return m


def _vjp(grad: torch.Tensor, u: torch.Tensor, inv: torch.Tensor, m: torch.Tensor, bt: torch.Tensor, normalize: bool):
    """``dL/dx`` (``(N, 3)``) from ``dL/dY`` (``(N, dim)``) and the monomials ``m`` of degree ``< lmax``."""
    k = bt.shape[0] // 3
    g = (torch.mm(bt, grad.T).view(3, k, -1) * m[:k]).sum(dim=1)  # dL/du, (3, N)
    if normalize:
        g = (g - u * (u * g).sum(dim=0)) * inv
    return g.T


# ----------------------------------------------------------------------------- native kernels


def _kernel_source(ls: tuple, normalization: str, normalize: bool, double: bool) -> str:
    """C source of ``sh_forward`` and ``sh_backward`` for these degrees, with the coefficients inlined.

    Points are processed in blocks of 32 so that the compiler vectorises the
    arithmetic across points; the formulas are those of the PyTorch path
    (:func:`_tables`), so the two agree to rounding. Under AVX2 in float32,
    full blocks run as groups of 8 points held in registers: the ``(x, y, z)``
    triples are de-interleaved with blends and one permutation, and the
    component-major results reach the point-major output (and the gradient
    comes in) through 8 x 8 register transposes, with no pass through the
    stack.
    """
    ct, bt = (t.tolist() for t in _tables(ls, normalization))
    lmax, dim = max(ls), len(ct[0])
    exps = [e for d in range(lmax + 1) for e in _monomials(d)]
    k_low = len(bt) // 3
    suffix = "" if double else "f"

    def num(c: float) -> str:
        return f"{c!r}{suffix}" if "e" in repr(c) or "." in repr(c) else f"{c!r}.0{suffix}"

    def monomials(count: int, vec: bool = False) -> list[str]:
        lines, index = [], {e: i for i, e in enumerate(exps)}
        t = "V" if vec else "T"
        for i, e in enumerate(exps[:count]):
            if i == 0:
                lines.append(f"const {t} m0 = {'ONE' if vec else '(T)1'};")
            elif sum(e) == 1:
                lines.append(f"const {t} m{i} = {'xyz'[e.index(1)]};")
            else:
                j = 0 if e[0] else (1 if e[1] else 2)
                parent = list(e)
                parent[j] -= 1
                lines.append(f"const {t} m{i} = m{index[tuple(parent)]} * {'xyz'[j]};")
        return lines

    def output(m: int) -> str | None:
        terms = [f"{num(ct[k][m])} * m{k}" for k in range(len(exps)) if ct[k][m] != 0.0]
        return " + ".join(terms) if terms else None

    def gradient(j: int, g: str) -> str | None:
        terms = []
        for k in range(k_low):
            row = bt[j * k_low + k]
            inner = [f"{num(row[m])} * {g.format(m=m)}" for m in range(dim) if row[m] != 0.0]
            if inner:
                terms.append(f"({' + '.join(inner)}) * m{k}")
        return " + ".join(terms) if terms else None

    # a zero vector divides by 1 (written branch-free, so that the loop vectorises)
    unit = ["const T r2 = x * x + y * y + z * z;", "const T safe = r2 + (T)(r2 <= 0);", "const T inv = (T)1 / SQRT(safe);",
            "x *= inv; y *= inv; z *= inv;"] if normalize else []
    fwd = [f"R[{m}][i] = {output(m) or '(T)0'};" for m in range(dim)]
    bwd = [f"const T g{j} = {gradient(j, 'G[{m}][i]') or '(T)0'};" for j in range(3)]
    if normalize:
        bwd += ["const T dot = x * g0 + y * g1 + z * g2;",
                "GX[0][i] = (g0 - x * dot) * inv; GX[1][i] = (g1 - y * dot) * inv; GX[2][i] = (g2 - z * dot) * inv;"]
    else:
        bwd += ["GX[0][i] = g0; GX[1][i] = g1; GX[2][i] = g2;"]

    # the same in groups of 8 points (AVX2, float32): V is a vector of 8 floats
    vunit = ["const V r2 = x * x + y * y + z * z;",
             "const V safe = r2 + (V)_mm256_and_ps(_mm256_cmp_ps((__m256)r2, _mm256_setzero_ps(), _CMP_LE_OQ), (__m256)ONE);",
             "const V inv = ONE / (V)_mm256_sqrt_ps((__m256)safe);", "x *= inv; y *= inv; z *= inv;"] if normalize else []
    full, rest = dim - dim % 8, dim % 8
    vfwd = vunit + monomials(len(exps), vec=True) + [f"const V R{m} = {output(m) or 'ZERO'};" for m in range(dim)]
    for m0 in range(0, full, 8):
        vfwd.append(f"{{ __m256 t[8] = {{{', '.join(f'(__m256)R{m0 + k}' for k in range(8))}}}; transpose8(t);")
        vfwd.append(f"  for (int k = 0; k < 8; k++) _mm256_storeu_ps(q + k * DIM + {m0}, t[k]); }}")
    if rest:
        vfwd.append(f"{{ float t[{rest}][8]; {' '.join(f'_mm256_storeu_ps(t[{k}], (__m256)R{full + k});' for k in range(rest))}")
        vfwd.append(f"  for (int k = 0; k < 8; k++) for (int m = 0; m < {rest}; m++) q[k * DIM + {full} + m] = t[m][k]; }}")
    vbwd = []
    for m0 in range(0, full, 8):
        vbwd.append(f"__m256 t{m0}[8]; for (int k = 0; k < 8; k++) t{m0}[k] = _mm256_loadu_ps(h + k * DIM + {m0}); "
                    f"transpose8(t{m0});")
        vbwd += [f"const V G{m0 + k} = (V)t{m0}[{k}];" for k in range(8)]
    if rest:
        vbwd.append(f"float tr[{rest}][8]; for (int k = 0; k < 8; k++) for (int m = 0; m < {rest}; m++) "
                    f"tr[m][k] = h[k * DIM + {full} + m];")
        vbwd += [f"const V G{full + k} = (V)_mm256_loadu_ps(tr[{k}]);" for k in range(rest)]
    vbwd += vunit + monomials(k_low, vec=True)
    vbwd += [f"const V g{j} = {gradient(j, 'G{m}') or 'ZERO'};" for j in range(3)]
    if normalize:
        vbwd += ["const V dot = x * g0 + y * g1 + z * g2;",
                 "store_xyz8(q, (g0 - x * dot) * inv, (g1 - y * dot) * inv, (g2 - z * dot) * inv);"]
    else:
        vbwd += ["store_xyz8(q, g0, g1, g2);"]
    ind, vind = "\n            ", "\n        "
    return f"""/* spherical harmonics ls={list(ls)} normalization={normalization} normalize={normalize} */
#include <stdint.h>
#include <math.h>
#if defined(__AVX2__) && {int(not double)}
#include <immintrin.h>
#define GROUPS 1
#endif
typedef {"double" if double else "float"} T;
#define SQRT {"sqrt" if double else "sqrtf"}
#define BLK 32
#define DIM {dim}

#ifdef GROUPS
typedef float V __attribute__((vector_size(32)));
#define ONE ((V)_mm256_set1_ps(1.0f))
#define ZERO ((V)_mm256_setzero_ps())

static inline void transpose8(__m256* r) {{  /* r[i][j] <- r[j][i] */
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20); r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20); r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31); r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31); r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}}

/* 8 points x0 y0 z0 x1 ... z7 <-> the vectors x, y, z: two blends and one permutation each */
static inline void load_xyz8(const T* p, V* x, V* y, V* z) {{
    const __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8), c = _mm256_loadu_ps(p + 16);
    *x = (V)_mm256_permutevar8x32_ps(_mm256_blend_ps(_mm256_blend_ps(a, b, 0x92), c, 0x24), _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5));
    *y = (V)_mm256_permutevar8x32_ps(_mm256_blend_ps(_mm256_blend_ps(a, b, 0x24), c, 0x49), _mm256_setr_epi32(1, 4, 7, 2, 5, 0, 3, 6));
    *z = (V)_mm256_permutevar8x32_ps(_mm256_blend_ps(_mm256_blend_ps(a, b, 0x49), c, 0x92), _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7));
}}

static inline void store_xyz8(T* p, V x, V y, V z) {{
    const __m256 u = _mm256_permutevar8x32_ps((__m256)x, _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5));
    const __m256 v = _mm256_permutevar8x32_ps((__m256)y, _mm256_setr_epi32(5, 0, 3, 6, 1, 4, 7, 2));
    const __m256 w = _mm256_permutevar8x32_ps((__m256)z, _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7));
    _mm256_storeu_ps(p, _mm256_blend_ps(_mm256_blend_ps(u, v, 0x92), w, 0x24));
    _mm256_storeu_ps(p + 8, _mm256_blend_ps(_mm256_blend_ps(u, v, 0x24), w, 0x49));
    _mm256_storeu_ps(p + 16, _mm256_blend_ps(_mm256_blend_ps(u, v, 0x49), w, 0x92));
}}

static inline void forward_group(const T* restrict p, T* restrict q) {{
        V x, y, z;
        load_xyz8(p, &x, &y, &z);
        {vind.join(vfwd)}
}}

static inline void backward_group(const T* restrict p, const T* restrict h, T* restrict q) {{
        V x, y, z;
        load_xyz8(p, &x, &y, &z);
        {vind.join(vbwd)}
}}
#endif

static inline void forward_block(const T* restrict xyz, T* restrict out, int64_t n0, int64_t stop) {{
        T X[BLK], Y[BLK], Z[BLK], R[DIM][BLK];
        const int nb = stop - n0 < BLK ? (int)(stop - n0) : BLK;
        const T* restrict p = xyz + 3 * n0;
        T* restrict q = out + n0 * DIM;
#ifdef GROUPS
        if (nb == BLK) {{
            for (int i = 0; i < BLK; i += 8) forward_group(p + 3 * i, q + i * DIM);
            return;
        }}
#endif
        if (nb == BLK) {{  /* a full block: fixed-stride loops the compiler unrolls */
            for (int i = 0; i < BLK; i++) {{ X[i] = p[3 * i]; Y[i] = p[3 * i + 1]; Z[i] = p[3 * i + 2]; }}
        }} else {{  /* a partial block repeats its first point */
            for (int i = 0; i < BLK; i++) {{
                const int k = i < nb ? i : 0;
                X[i] = p[3 * k]; Y[i] = p[3 * k + 1]; Z[i] = p[3 * k + 2];
            }}
        }}
        for (int i = 0; i < BLK; i++) {{
            T x = X[i], y = Y[i], z = Z[i];
            {ind.join(unit + monomials(len(exps)) + fwd)}
        }}
        for (int i = 0; i < nb; i++)
            for (int m = 0; m < DIM; m++) q[i * DIM + m] = R[m][i];
}}

static inline void backward_block(const T* restrict xyz, const T* restrict grad, T* restrict gxyz, int64_t n0, int64_t stop) {{
        T X[BLK], Y[BLK], Z[BLK], G[DIM][BLK], GX[3][BLK];
        const int nb = stop - n0 < BLK ? (int)(stop - n0) : BLK;
        const T* restrict p = xyz + 3 * n0;
        const T* restrict h = grad + n0 * DIM;
        T* restrict q = gxyz + 3 * n0;
#ifdef GROUPS
        if (nb == BLK) {{
            for (int i = 0; i < BLK; i += 8) backward_group(p + 3 * i, h + i * DIM, q + 3 * i);
            return;
        }}
#endif
        if (nb == BLK) {{
            for (int i = 0; i < BLK; i++) {{
                X[i] = p[3 * i]; Y[i] = p[3 * i + 1]; Z[i] = p[3 * i + 2];
                for (int m = 0; m < DIM; m++) G[m][i] = h[i * DIM + m];
            }}
        }} else {{
            for (int i = 0; i < BLK; i++) {{
                const int k = i < nb ? i : 0;
                X[i] = p[3 * k]; Y[i] = p[3 * k + 1]; Z[i] = p[3 * k + 2];
                for (int m = 0; m < DIM; m++) G[m][i] = h[k * DIM + m];
            }}
        }}
        for (int i = 0; i < BLK; i++) {{
            T x = X[i], y = Y[i], z = Z[i];
            {ind.join(unit + monomials(k_low) + bwd)}
        }}
        for (int i = 0; i < nb; i++) {{
            q[3 * i] = GX[0][i]; q[3 * i + 1] = GX[1][i]; q[3 * i + 2] = GX[2][i];
        }}
}}

/* one thread never enters a parallel region: GNU OpenMP cannot run one in a child forked after it ran */
void sh_forward(const T* restrict xyz, T* restrict out, int64_t start, int64_t stop, int threads) {{
    if (threads > 1) {{
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t n0 = start; n0 < stop; n0 += BLK) forward_block(xyz, out, n0, stop);
    }} else {{
        for (int64_t n0 = start; n0 < stop; n0 += BLK) forward_block(xyz, out, n0, stop);
    }}
}}

void sh_backward(const T* restrict xyz, const T* restrict grad, T* restrict gxyz, int64_t start, int64_t stop, int threads) {{
    if (threads > 1) {{
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t n0 = start; n0 < stop; n0 += BLK) backward_block(xyz, grad, gxyz, n0, stop);
    }} else {{
        for (int64_t n0 = start; n0 < stop; n0 += BLK) backward_block(xyz, grad, gxyz, n0, stop);
    }}
}}
"""


_KERNELS: dict = {}
_NATIVE_LMAX = 6  # above, compiling takes seconds (l = 11: ~10 s) for little gain over the PyTorch path


def _kernels(ls: tuple, normalization: str, normalize: bool, x: torch.Tensor):
    """``(forward, backward, openmp)``: the C functions for ``x``'s dtype on the CPU, or ``None``."""
    key = (ls, normalization, normalize, x.dtype)
    fns = _KERNELS.get(key, False)
    if fns is not False:  # the common case, first: one dict lookup
        return fns if fns is not None and x.device.type == "cpu" and _native.enabled() else None
    if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or max(ls) > _NATIVE_LMAX
            or not _native.enabled()):
        return None
    if key not in _KERNELS:
        lib = _native.load("spherical_harmonics", _kernel_source(ls, normalization, normalize, x.dtype == torch.float64))
        fns = None
        if lib is not None:
            p, n = ctypes.c_void_p, ctypes.c_int64
            fwd, bwd = lib.sh_forward, lib.sh_backward
            fwd.argtypes, fwd.restype = [p, p, n, n, ctypes.c_int], None
            bwd.argtypes, bwd.restype = [p, p, p, n, n, ctypes.c_int], None
            fns = (fwd, bwd, lib.openmp)
        _KERNELS[key] = fns
    return _KERNELS[key]


def _forward_native(x: torch.Tensor, ls: tuple, kernels) -> torch.Tensor:
    x = x.contiguous()
    out = x.new_empty(x.shape[0], sum(2 * l + 1 for l in ls))
    _native.parallel_for(kernels[0], x.shape[0], x.data_ptr(), out.data_ptr(), openmp=kernels[2])
    return out


class _SphericalHarmonics(torch.autograd.Function):
    """Forward without an autograd graph; hand-written backward, differentiable on demand."""

    @staticmethod
    def forward(ctx, x, ls, normalize, normalization):
        lmax = max(ls)
        ctx.args = (ls, normalize, normalization)
        kernels = _kernels(ls, normalization, normalize, x)
        if kernels is not None:
            x = x.contiguous()
            ctx.save_for_backward(x)
            return _forward_native(x, ls, kernels)
        ct, _ = _tables_as(ls, normalization, x.dtype, x.device)
        if normalize:
            r2 = (x * x).sum(dim=1)
            inv = torch.where(r2 > 0, r2, torch.ones_like(r2)).rsqrt_()
        else:
            inv = x.new_ones(())
        m = _monomial_rows_into(x, inv, normalize, lmax)
        # the backward needs the monomials of degree < lmax: the first rows of m
        ctx.save_for_backward(x, inv, m[: max(lmax * (lmax + 1) * (lmax + 2) // 6, 1)])
        return torch.mm(m.T, ct)

    @staticmethod
    def backward(ctx, grad):
        x, *saved = ctx.saved_tensors
        ls, normalize, normalization = ctx.args
        lmax = max(ls)
        if lmax == 0:
            return torch.zeros_like(x), None, None, None
        if torch.is_grad_enabled() or _is_batched(grad):
            # create_graph=True: the same formula from differentiable pieces, so it has derivatives too;
            # so do gradients batched by vmap (Hessian rows), which the native kernel cannot read
            _, bt = _tables_as(ls, normalization, grad.dtype, grad.device)
            u, inv = _unit(x, normalize)
            return _vjp(grad, u, inv, _monomial_rows(u, lmax - 1), bt, normalize), None, None, None
        if not saved:  # the forward ran the native kernel
            grad = grad.contiguous()
            out = torch.empty_like(x)
            kernels = _kernels(ls, normalization, normalize, x)
            _native.parallel_for(kernels[1], x.shape[0], x.data_ptr(), grad.data_ptr(), out.data_ptr(),
                                 openmp=kernels[2])
            return out, None, None, None
        inv, m = saved
        _, bt = _tables_as(ls, normalization, grad.dtype, grad.device)
        u = m[1:4] if lmax > 1 else x.T * inv
        return _vjp(grad, u, inv, m, bt, normalize), None, None, None


def _is_batched(t: torch.Tensor) -> bool:
    """Whether ``t`` is a functorch batched tensor (a ``vmap`` over gradients), which has no data pointer."""
    return bool(torch._C._functorch.is_batchedtensor(t) or torch._C._functorch.is_legacy_batchedtensor(t))


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
    if tracing():
        # torch.export / compile: plain differentiable operations, no custom backward
        ct, _ = _tables_as(ls, normalization, x.dtype, x.device)
        unit, _ = _unit(u, normalize)
        out = torch.mm(_monomial_rows(unit, max(ls)).T, ct)
    elif not (u.requires_grad and torch.is_grad_enabled()) and (kernels := _kernels(ls, normalization, normalize, u)):
        out = _forward_native(u, ls, kernels)  # nothing to differentiate: no autograd node
    else:
        out = _SphericalHarmonics.apply(u, ls, normalize, normalization)
    return out.reshape(*batch, out.shape[1])
