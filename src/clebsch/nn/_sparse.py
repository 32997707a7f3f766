"""Sparse bilinear maps of rows: ``out[r, k] = sum_t c_t a[r, i_t] b[r, j_t]`` over the terms ``t`` with ``k_t = k``.

A channel-wise tensor product whose paths share their weights across rows
(Allegro's environment product, one learned weight per path) is such a map: the
terms are the non-zero Clebsch-Gordan coefficients times their path's weight, a
few hundred for ``l <= 2``. As a dense product it needs the outer product
``a ⊗ b`` of every row (``[R, K_a * K_b]``) and a matmul with a mostly-zero
matrix; :func:`sparse_bilinear` visits only the non-zero terms and writes no
intermediate.

Its derivatives are the same map with the roles of ``a``, ``b`` and ``out``
exchanged (for ``a`` and ``b``) and :func:`sparse_trilinear_sum`,
``s_t = sum_r a[r, i_t] b[r, j_t] g[r, k_t]`` (for ``c``), whose own derivatives
are again bilinear maps: differentiable to any order. On the CPU both run as C
kernels on blocks of rows (:mod:`clebsch.o3._native`); the sums over rows go
in fixed chunks, so results do not depend on the number of threads. Elsewhere
(a GPU, no compiler, ``CLEBSCH_NATIVE=0``, tracing, ``vmap``) they run in
the dense form with PyTorch operations: the same numbers up to rounding.

Rows may be laid out either way round: ``[R, K]`` row-major, or a transposed
view of a ``[K, R]`` tensor (components major), read without a copy; the
result can be asked for in either layout (``components_major``). Operands may
also be ``[N, K, C]`` (components between two row indices, as features of
``C`` channels per node are held): the rows are then the ``N * C`` pairs
``(n, c)``, and the result is ``[N, k_out, C]``.
"""

from __future__ import annotations

import ctypes

import torch

from ..o3 import _native
from ..o3._cache import tracing

__all__ = ["sparse_bilinear", "sparse_trilinear_sum"]

_BLOCK = 16  # rows per block of sparse_bilinear (RB in the kernel)
_CHUNK = 256  # rows per partial sum of sparse_trilinear_sum (CH in the kernel)
_MAX_K = 128  # components per operand the kernels hold on the stack (more: the dense form)

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#define RB 16
#define CH 256

/* An operand holds N nodes of `inner` rows: row c of node n at n * sn + c * sr, component k k * sk further
   (a [R, K] operand: N = 1, inner = R; an [N, K, C] operand: inner = C). Blocks of rows never straddle nodes,
   so each is read at a fixed stride. */

/* nb rows from src (stride sr), component k at dst[k * width + r], zero-padded to width */
static void load(const T* restrict src, int64_t sr, int64_t sk, int64_t K, int64_t nb, int64_t width,
                 T* restrict dst) {
    for (int64_t k = 0; k < K; ++k) {
        T* restrict d = dst + k * width;
        for (int64_t r = 0; r < nb; ++r) d[r] = src[r * sr + k * sk];
        for (int64_t r = nb; r < width; ++r) d[r] = 0;
    }
}

/* out[r, k] = sum over the terms t of output k (start[k] <= t < start[k + 1]) of c[t] a[r, ia[t]] b[r, ib[t]],
   over the blocks [lo, hi) of RB rows (block q: node q / per, rows from (q % per) * RB, per = ceil(inner / RB)) */
void bilinear(const T* restrict a, int64_t a_sn, int64_t a_sr, int64_t a_sk, int64_t Ka,
              const T* restrict b, int64_t b_sn, int64_t b_sr, int64_t b_sk, int64_t Kb,
              const T* restrict c, const int64_t* restrict ia, const int64_t* restrict ib,
              const int64_t* restrict start, T* restrict out, int64_t o_sn, int64_t o_sr, int64_t o_sk, int64_t Ko,
              int64_t inner, int64_t lo, int64_t hi, int threads) {
    int64_t per = (inner + RB - 1) / RB;
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t q = lo; q < hi; ++q) {
        T A[Ka * RB], B[Kb * RB];
        int64_t n = q / per, r0 = (q - n * per) * RB, nb = inner - r0 < RB ? inner - r0 : RB;
        load(a + n * a_sn + r0 * a_sr, a_sr, a_sk, Ka, nb, RB, A);
        load(b + n * b_sn + r0 * b_sr, b_sr, b_sk, Kb, nb, RB, B);
        T* restrict o = out + n * o_sn + r0 * o_sr;
        for (int64_t k = 0; k < Ko; ++k) {
            T acc[RB];
            for (int j = 0; j < RB; ++j) acc[j] = 0;
            for (int64_t t = start[k]; t < start[k + 1]; ++t) {
                const T ct = c[t];
                const T* restrict x = A + ia[t] * RB;
                const T* restrict y = B + ib[t] * RB;
                for (int j = 0; j < RB; ++j) acc[j] += ct * x[j] * y[j];
            }
            for (int64_t r = 0; r < nb; ++r) o[r * o_sr + k * o_sk] = acc[r];
        }
    }
}

/* part[q, t] = sum over the rows of chunk q of a[r, ia[t]] b[r, ib[t]] g[r, ig[t]]
   (chunk q: node q / per, rows from (q % per) * CH, per = ceil(inner / CH)) */
void trilinear(const T* restrict a, int64_t a_sn, int64_t a_sr, int64_t a_sk, int64_t Ka,
               const T* restrict b, int64_t b_sn, int64_t b_sr, int64_t b_sk, int64_t Kb,
               const T* restrict g, int64_t g_sn, int64_t g_sr, int64_t g_sk, int64_t Kg,
               const int64_t* restrict ia, const int64_t* restrict ib, const int64_t* restrict ig, int64_t nnz,
               T* restrict part, int64_t inner, int64_t lo, int64_t hi, int threads) {
    int64_t per = (inner + CH - 1) / CH;
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t q = lo; q < hi; ++q) {
        T A[Ka * CH], B[Kb * CH], G[Kg * CH];
        int64_t n = q / per, r0 = (q - n * per) * CH, nb = inner - r0 < CH ? inner - r0 : CH;
        load(a + n * a_sn + r0 * a_sr, a_sr, a_sk, Ka, nb, CH, A);
        load(b + n * b_sn + r0 * b_sr, b_sr, b_sk, Kb, nb, CH, B);
        load(g + n * g_sn + r0 * g_sr, g_sr, g_sk, Kg, nb, CH, G);
        for (int64_t t = 0; t < nnz; ++t) {
            const T* restrict x = A + ia[t] * CH;
            const T* restrict y = B + ib[t] * CH;
            const T* restrict z = G + ig[t] * CH;
            T acc[RB];
            for (int j = 0; j < RB; ++j) acc[j] = 0;
            for (int64_t r = 0; r < CH; r += RB)
                for (int j = 0; j < RB; ++j) acc[j] += x[r + j] * y[r + j] * z[r + j];
            T sum = 0;
            for (int j = 0; j < RB; ++j) sum += acc[j];
            part[q * nnz + t] = sum;
        }
    }
}
"""

_KERNELS: dict = {}


def _kernels(dtype: torch.dtype):
    """``(bilinear, trilinear, openmp)`` for ``dtype``, or ``None`` where no kernel can be built."""
    if dtype not in _KERNELS:
        ctype = {torch.float32: "float", torch.float64: "double"}.get(dtype)
        lib = _native.load("sparse_bilinear", f"#define T {ctype}\n" + _SOURCE) if ctype else None
        fns = None
        if lib is not None:
            p, n = ctypes.c_void_p, ctypes.c_int64
            lib.bilinear.argtypes = [p, n, n, n, n, p, n, n, n, n, p, p, p, p, p, n, n, n, n, n, n, n, ctypes.c_int]
            lib.trilinear.argtypes = [p, n, n, n, n, p, n, n, n, n, p, n, n, n, n, p, p, p, n, p, n, n, n,
                                      ctypes.c_int]
            lib.bilinear.restype = lib.trilinear.restype = None
            fns = (lib.bilinear, lib.trilinear, lib.openmp)
        _KERNELS[dtype] = fns
    return _KERNELS[dtype]


def _native_ok(*tensors) -> bool:
    return _native.usable(*tensors) and _kernels(tensors[0].dtype) is not None


def _components_major(t: torch.Tensor) -> bool:
    return t.dim() == 2 and t.shape[0] > 1 and t.stride(0) == 1 and t.shape[1] > 1


def _nodes(t: torch.Tensor) -> tuple[int, int]:
    """``(N, inner)``: an ``[N, K, C]`` operand holds N nodes of C rows, an ``[R, K]`` one 1 of R."""
    return (1, t.shape[0]) if t.dim() == 2 else (t.shape[0], t.shape[2])


def _geometry(t: torch.Tensor) -> tuple:
    """``(data, sn, sr, sk, K)`` as the kernels read an operand: row ``c`` of node ``n`` at
    ``n * sn + c * sr``, component ``k`` ``k * sk`` further."""
    if t.dim() == 2:
        return t.data_ptr(), 0, t.stride(0), t.stride(1), t.shape[1]
    return t.data_ptr(), t.stride(0), t.stride(2), t.stride(1), t.shape[1]


def _new(like: torch.Tensor, k: int, components_major: bool) -> torch.Tensor:
    """A result of ``k`` components with the rows of ``like``: ``[N, k, C]`` for an ``[N, K, C]`` operand."""
    if like.dim() == 3:
        return like.new_empty(like.shape[0], k, like.shape[2])
    return like.new_empty(k, like.shape[0]).T if components_major else like.new_empty(like.shape[0], k)


_PLANS: dict = {}  # the terms grouped by output, per (terms, k_out); holds the terms, so their addresses stay theirs
_MAX_PLANS = 256


def _plan(terms, k_out: int):
    """``(order, start, i, j)``: the terms sorted by output component (so that each output is summed in
    registers), ``start[k]`` the first of output ``k``; cached, as the terms are usually a module's buffers."""
    key = (k_out, *((t.data_ptr(), t._version, t.shape[0]) for t in terms))
    plan = _PLANS.get(key)
    if plan is None:
        ia, ib, io = terms
        order = torch.sort(io, stable=True).indices
        start = torch.zeros(k_out + 1, dtype=torch.long)
        torch.cumsum(torch.bincount(io, minlength=k_out), 0, out=start[1:])
        plan = (order, start, ia[order].contiguous(), ib[order].contiguous(), terms)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan[:4]


class _Bilinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, c, terms, k_out, components_major):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(a, b, c)
        ctx.terms = terms
        order, start, ias, ibs = _plan(terms, k_out)
        cs = c.index_select(0, order)
        out = _new(a, k_out, components_major)
        fn, _, openmp = _kernels(a.dtype)
        nodes, inner = _nodes(a)
        blocks = nodes * -(-inner // _BLOCK)  # blocks of rows within one node each
        _native.parallel_for(fn, blocks, *_geometry(a), *_geometry(b), cs.data_ptr(), ias.data_ptr(),
                             ibs.data_ptr(), start.data_ptr(), *_geometry(out), inner, openmp=openmp,
                             grain=4096 // _BLOCK)
        return out

    @staticmethod
    def backward(ctx, g):
        if g is None:
            return (None,) * 6
        a, b, c = ctx.saved_tensors
        ia, ib, io = ctx.terms
        ga = gb = gc = None
        if ctx.needs_input_grad[0]:
            ga = _bilinear(b, g, c, (ib, io, ia), a.shape[1], _components_major(a))
        if ctx.needs_input_grad[1]:
            gb = _bilinear(a, g, c, (ia, io, ib), b.shape[1], _components_major(b))
        if ctx.needs_input_grad[2]:
            gc = _trilinear(a, b, g, (ia, ib, io))
        return ga, gb, gc, None, None, None


class _Trilinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, g, terms):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(a, b, g)
        ctx.terms = terms
        ia, ib, ig = terms
        nnz = ia.shape[0]
        nodes, inner = _nodes(a)
        chunks = nodes * -(-inner // _CHUNK)  # within one node each
        if chunks == 0:
            return a.new_zeros(nnz)
        part = a.new_empty(chunks, nnz)
        _, fn, openmp = _kernels(a.dtype)
        _native.parallel_for(fn, chunks, *_geometry(a), *_geometry(b), *_geometry(g),
                             ia.data_ptr(), ib.data_ptr(), ig.data_ptr(), nnz, part.data_ptr(), inner,
                             openmp=openmp, grain=2)
        return part.sum(0)

    @staticmethod
    def backward(ctx, h):
        if h is None:
            return (None,) * 4
        a, b, g = ctx.saved_tensors
        ia, ib, ig = ctx.terms
        out = [None, None, None, None]
        if ctx.needs_input_grad[0]:
            out[0] = _bilinear(b, g, h, (ib, ig, ia), a.shape[1], _components_major(a))
        if ctx.needs_input_grad[1]:
            out[1] = _bilinear(a, g, h, (ia, ig, ib), b.shape[1], _components_major(b))
        if ctx.needs_input_grad[2]:
            out[2] = _bilinear(a, b, h, (ia, ib, ig), g.shape[1], _components_major(g))
        return tuple(out)


def _checked(terms, count, operands, k_out=None):
    """``terms`` as three contiguous long tensors of one length, each index within its operand's components."""
    if len(terms) != 3:
        raise ValueError(f"terms must be three index tensors (i, j, k), got {len(terms)}")
    first = operands[0]
    if (first.dim() not in (2, 3) or any(x.dim() != first.dim() for x in operands)
            or any(x.shape[0] != first.shape[0] or x.shape[2:] != first.shape[2:] for x in operands)):
        raise ValueError(f"the operands must all be [R, K] with the same rows R, or all [N, K, C] with the same "
                         f"N and C, got shapes {[tuple(x.shape) for x in operands]}")
    terms = tuple(torch.as_tensor(t, device=operands[0].device).long().contiguous() for t in terms)
    if tracing():
        return terms
    sizes = [x.shape[1] for x in operands] + ([k_out] if k_out is not None else [])
    n = terms[0].shape[0]
    if any(t.dim() != 1 or t.shape[0] != n for t in terms) or (count is not None and count != n):
        raise ValueError(f"terms must be three [T] index tensors with T = {count if count is not None else n} "
                         f"coefficients, got shapes {[tuple(t.shape) for t in terms]}")
    for t, k, name in zip(terms, sizes, "ijk"):
        if n and (int(t.min()) < 0 or int(t.max()) >= k):
            raise IndexError(f"terms {name}: indices must lie in [0, {k}), got {int(t.min())} to {int(t.max())}")
    return terms


def _outer(a, b):
    return (a.unsqueeze(2) * b.unsqueeze(1)).reshape(a.shape[0], a.shape[1] * b.shape[1])


def _flat(t: torch.Tensor) -> torch.Tensor:
    """An ``[N, K, C]`` operand as rows ``[N * C, K]``."""
    return t if t.dim() == 2 else t.transpose(1, 2).reshape(-1, t.shape[1])


def _bilinear_torch(a, b, c, terms, k_out, components_major):
    """The dense form: the outer product of each row times the matrix of the terms."""
    if a.dim() == 3:
        out = _bilinear_torch(_flat(a), _flat(b), c, terms, k_out, False)
        return out.view(a.shape[0], a.shape[2], k_out).transpose(1, 2)
    ia, ib, io = terms
    kb = b.shape[1]
    matrix = c.new_zeros(a.shape[1] * kb * k_out).index_add(0, (ia * kb + ib) * k_out + io, c)
    matrix = matrix.view(a.shape[1] * kb, k_out)
    outer = _outer(a, b)
    return (matrix.T @ outer.T).T if components_major else outer @ matrix


def sparse_bilinear(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, terms, k_out: int,
                    components_major: bool = False) -> torch.Tensor:
    """``out[r, k] = sum_{t: k_t = k} c[t] a[r, i_t] b[r, j_t]``, ``[R, k_out]``.

    ``a`` is ``[R, K_a]`` and ``b`` ``[R, K_b]`` (any strides), ``c`` is ``[T]`` and
    ``terms = (i, j, k)`` three ``[T]`` long tensors. With ``components_major`` the
    result is the transposed view of a ``[k_out, R]`` tensor. For ``a`` ``[N, K_a, C]``
    and ``b`` ``[N, K_b, C]`` the rows are the pairs ``(n, c)`` and the result is
    ``[N, k_out, C]``.

    Examples
    --------
    >>> a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 5.0]])
    >>> terms = (torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0, 0]))
    >>> sparse_bilinear(a, b, torch.tensor([1.0, 10.0]), terms, 1)  # 1*1*5 + 10*2*3
    tensor([[65.]])
    """
    return _bilinear(a, b, c, _checked(terms, c.shape[0], (a, b), k_out), k_out, components_major)


def _bilinear(a, b, c, terms, k_out, components_major):
    if _native_ok(a, b, c) and max(a.shape[1], b.shape[1], k_out) <= _MAX_K:
        return _Bilinear.apply(a, b, c, terms, k_out, components_major)
    return _bilinear_torch(a, b, c, terms, k_out, components_major)


def sparse_trilinear_sum(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor, terms) -> torch.Tensor:
    """``s[t] = sum_r a[r, i_t] b[r, j_t] g[r, k_t]``, ``[T]``: the derivative of :func:`sparse_bilinear` in ``c``."""
    return _trilinear(a, b, g, _checked(terms, None, (a, b, g)))


def _trilinear(a, b, g, terms):
    if _native_ok(a, b, g) and max(a.shape[1], b.shape[1], g.shape[1]) <= _MAX_K:
        return _Trilinear.apply(a, b, g, terms)
    ia, ib, ig = terms
    a, b, g = _flat(a), _flat(b), _flat(g)
    summed = _outer(a, b).T @ g  # [K_a * K_b, K_g]
    return summed[ia * b.shape[1] + ib, ig]
