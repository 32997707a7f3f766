"""MACE's symmetric contraction as C loops over atoms, with its first and second derivatives, on the CPU.

For an atom ``i`` of element ``z`` and a channel ``k``, the contraction is a
polynomial of the atomic basis ``a = A[i, k, :]`` (``D`` components):

    B[i, k, M] = sum_t c[z, M, t, k] m_t(a)

over every monomial ``m_t`` of degree 1 to the correlation order, with the
element's weights folded into the coefficients ``c`` (a small matmul in PyTorch,
differentiable as usual). The monomials are built one product at a time:
``m_t = a_t`` for ``t < D`` and ``m_t = m_l(t) m_r(t)`` (``l(t), r(t) < t``)
after. In eager PyTorch the same polynomial and its double backward (force
training) are some forty operations per layer on ``[K, 165, N]`` tensors; here
every function below is one pass over the atoms that keeps an atom's monomials
in a small buffer, eight channels at a time (one vector register of floats):

* ``P(a, c)``: the contraction;
* ``G(a, c, g) = (dP/da)^T g``: its gradient with respect to ``A`` (reverse
  mode through the products);
* ``H(a, g) = sum_i g_i (x) m(a_i)``: its gradient with respect to ``c``
  (summed over each element's atoms);
* for the backward of ``G`` along ``v``: the Hessian-vector product
  ``(d^2 P / da^2 . v)^T g``, the directional derivative ``(dP/da) v`` (the
  gradient with respect to ``g``) and ``sum_i g_i (x) (dm(a_i)/da) v_i`` (with
  respect to ``c``), in one pass (forward mode over the reverse pass).

``H`` is linear in ``g`` and ``c``, and its derivatives are ``P`` and ``G`` with
the incoming gradient in the place of ``c``; so the derivatives of every order
that force and stress training, Hessians and fine-tuning need are these kernels.
A third derivative along ``G``'s backward (never needed by training on energies,
forces or stress) is recomputed in PyTorch operations.
"""

from __future__ import annotations

import ctypes

import torch

from .._autograd import gradient_wanted
from ..o3 import _native

__all__ = ["ContractionSpec", "fused_contraction", "contraction_available"]

CB = 8  # the channels are padded to a multiple of this: one vector register of floats
AB = 4  # atoms of one element per pass over their coefficients
TC = 32  # monomials per task of the coefficients' gradient

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
/* KP: the channels, padded to a multiple of 8 (a constant the compiler vectorises for); rows of KP values */

/* an atom's monomials m[t * KP + k]: t < D the components of a (its row [K, D]; channels from K on are zero),
   then m[t] = m[l[t]] m[r[t]] */
static void build(const T* restrict a, int64_t K, int64_t D, const int64_t* restrict l,
                  const int64_t* restrict r, int64_t NT, T* m) {
    for (int64_t j = 0; j < D; ++j)
        for (int64_t k = 0; k < KP; ++k) m[j * KP + k] = k < K ? a[k * D + j] : 0;
    for (int64_t t = D; t < NT; ++t) {
        const T* x = m + l[t] * KP;
        const T* y = m + r[t] * KP;
        T* o = m + t * KP;
        for (int k = 0; k < KP; ++k) o[k] = x[k] * y[k];
    }
}

/* the tangent of the monomials along v: dm[t] = dm[l] m[r] + m[l] dm[r] */
static void tangent(const T* restrict v, int64_t K, int64_t D, const int64_t* restrict l,
                    const int64_t* restrict r, int64_t NT, const T* restrict m, T* dm) {
    for (int64_t j = 0; j < D; ++j)
        for (int64_t k = 0; k < KP; ++k) dm[j * KP + k] = k < K ? v[k * D + j] : 0;
    for (int64_t t = D; t < NT; ++t) {
        const T *x = m + l[t] * KP, *y = m + r[t] * KP, *dx = dm + l[t] * KP, *dy = dm + r[t] * KP;
        T* o = dm + t * KP;
        for (int k = 0; k < KP; ++k) o[k] = dx[k] * y[k] + x[k] * dy[k];
    }
}

/* the reverse step of m[t] = m[l] m[r]: g[l] += g[t] m[r], g[r] += g[t] m[l] (rows lt, rt; one row for a square) */
static inline void back(const T* restrict gt, const T* restrict m, T* restrict g, int64_t lt, int64_t rt) {
    if (lt == rt) {
        for (int k = 0; k < KP; ++k) g[lt + k] += 2 * gt[k] * m[lt + k];
    } else {
        for (int k = 0; k < KP; ++k) g[lt + k] += gt[k] * m[rt + k];
        for (int k = 0; k < KP; ++k) g[rt + k] += gt[k] * m[lt + k];
    }
}

/* its tangent: dg[l] += dg[t] m[r] + g[t] dm[r], dg[r] += dg[t] m[l] + g[t] dm[l] */
static inline void back_tangent(const T* restrict dt, const T* restrict gt, const T* restrict m,
                                const T* restrict dm, T* restrict dg, int64_t lt, int64_t rt) {
    if (lt == rt) {
        for (int k = 0; k < KP; ++k) dg[lt + k] += 2 * (dt[k] * m[lt + k] + gt[k] * dm[lt + k]);
    } else {
        for (int k = 0; k < KP; ++k) dg[lt + k] += dt[k] * m[rt + k] + gt[k] * dm[rt + k];
        for (int k = 0; k < KP; ++k) dg[rt + k] += dt[k] * m[lt + k] + gt[k] * dm[lt + k];
    }
}

/* for the nb <= AB atoms of a block (one element): O[a][k * M + mi] = sum_t cz[(mi * NT + t) * KP + k]
   m[a][t * KP + k] for k < K; each coefficient row is read once for the block */
static void contract(const T* restrict cz, T* const* m, int nb, int64_t K, int64_t M, int64_t NT, T* const* O) {
    for (int64_t mi = 0; mi < M; ++mi) {
        const T* restrict c = cz + mi * NT * KP;
        T acc[AB][KP] = {{0}};
        for (int64_t t = 0; t < NT; ++t)
            for (int a = 0; a < AB; ++a)
                if (a < nb)
                    for (int k = 0; k < KP; ++k) acc[a][k] += c[t * KP + k] * m[a][t * KP + k];
        for (int a = 0; a < nb; ++a)
            for (int64_t k = 0; k < K; ++k) O[a][k * M + mi] = acc[a][k];
    }
}

/* Over the blocks q in [lo, hi) of up to AB atoms of one element, order[bstart[q]] .. order[bend[q] - 1].
   mode 0: O1 = P(A, C) [N, K, M]. mode 1: O1 = G(A, C, GB) [N, K, D]. mode 2: O1 = the Hessian-vector product
   along V [N, K, D], O2 = the directional derivative [N, K, M]. C is [Z, M, NT, KP] (channels innermost),
   sp the atoms' rows of C. */
void atoms(int mode, const T* restrict A, const T* restrict V, const int64_t* restrict sp, const T* restrict C,
           const T* restrict GB, T* restrict O1, T* restrict O2, int64_t K, int64_t D, int64_t M, int64_t NT,
           const int64_t* restrict l, const int64_t* restrict r, const int64_t* restrict order,
           const int64_t* restrict bstart, const int64_t* restrict bend, int64_t lo, int64_t hi, int threads) {
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        T* buf = (T*)malloc(sizeof(T) * (4 * NT * KP + M * KP) * AB);
        T *m[AB], *dm[AB], *gm[AB], *dg[AB], *g[AB], *o1[AB], *o2[AB];
        for (int a = 0; a < AB; ++a) {
            T* base = buf + a * (4 * NT * KP + M * KP);
            m[a] = base; dm[a] = base + NT * KP; gm[a] = base + 2 * NT * KP; dg[a] = base + 3 * NT * KP;
            g[a] = base + 4 * NT * KP;
        }
        #pragma omp for schedule(static)
        for (int64_t q = lo; q < hi; ++q) {
            const int nb = (int)(bend[q] - bstart[q]);
            const int64_t* atom = order + bstart[q];
            const T* restrict cz = C + sp[atom[0]] * M * NT * KP;
            for (int a = 0; a < nb; ++a) build(A + atom[a] * K * D, K, D, l, r, NT, m[a]);
            if (mode == 0) {
                for (int a = 0; a < nb; ++a) o1[a] = O1 + atom[a] * K * M;
                contract(cz, m, nb, K, M, NT, o1);
                continue;
            }
            for (int a = 0; a < nb; ++a)  /* g[a][mi * KP + k] = GB[i, k, mi] */
                for (int64_t mi = 0; mi < M; ++mi)
                    for (int64_t k = 0; k < KP; ++k) g[a][mi * KP + k] = k < K ? GB[(atom[a] * K + k) * M + mi] : 0;
            for (int64_t t = 0; t < NT; ++t) {  /* gm[a][t] = sum_M g[a][M] c[M, t] */
                T acc[AB][KP] = {{0}};
                for (int64_t mi = 0; mi < M; ++mi) {
                    const T* restrict c = cz + (mi * NT + t) * KP;
                    for (int a = 0; a < AB; ++a)
                        if (a < nb)
                            for (int k = 0; k < KP; ++k) acc[a][k] += g[a][mi * KP + k] * c[k];
                }
                for (int a = 0; a < nb; ++a)
                    for (int k = 0; k < KP; ++k) gm[a][t * KP + k] = acc[a][k];
            }
            if (mode == 2) {
                for (int a = 0; a < nb; ++a) {
                    tangent(V + atom[a] * K * D, K, D, l, r, NT, m[a], dm[a]);
                    o2[a] = O2 + atom[a] * K * M;
                    for (int64_t x = 0; x < NT * KP; ++x) dg[a][x] = 0;
                }
                contract(cz, dm, nb, K, M, NT, o2);
            }
            for (int a = 0; a < nb; ++a) {
                T *gma = gm[a], *dga = dg[a];
                const T *ma = m[a], *dma = dm[a];
                /* reverse mode through the products (and, in mode 2, its tangent along v) */
                for (int64_t t = NT - 1; t >= D; --t) {
                    const int64_t lt = l[t] * KP, rt = r[t] * KP;
                    if (mode == 2) back_tangent(dga + t * KP, gma + t * KP, ma, dma, dga, lt, rt);
                    back(gma + t * KP, ma, gma, lt, rt);
                }
                const T* res = mode == 1 ? gma : dga;
                for (int64_t k = 0; k < K; ++k)
                    for (int64_t j = 0; j < D; ++j) O1[(atom[a] * K + k) * D + j] = res[j * KP + k];
            }
        }
        free(buf);
    }
}

/* The monomials of the atoms in [lo, hi) (or, where V is given, their tangents along V) into B [N, NT, KP]. */
void monomials(const T* restrict A, const T* restrict V, T* restrict B, int64_t K, int64_t D, int64_t NT,
               const int64_t* restrict l, const int64_t* restrict r, int64_t lo, int64_t hi, int threads) {
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        T* m = V ? (T*)malloc(sizeof(T) * NT * KP) : 0;
        #pragma omp for schedule(static)
        for (int64_t i = lo; i < hi; ++i) {
            if (V) {
                build(A + i * K * D, K, D, l, r, NT, m);
                tangent(V + i * K * D, K, D, l, r, NT, m, B + i * NT * KP);
            } else {
                build(A + i * K * D, K, D, l, r, NT, B + i * NT * KP);
            }
        }
        free(m);
    }
}

/* Over the (element z, chunk of TC monomials) pairs q in [lo, hi): GC[z, mi, t, k] (+)= sum over the element's
   atoms (order[start[z]] .. order[start[z + 1] - 1]) of GB[i, k, mi] B[i, t, k], for every mi and the chunk's t. */
void coefficients(const T* restrict B, const int64_t* restrict order, const int64_t* restrict start,
                  const T* restrict GB, T* restrict GC, int accumulate, int64_t K, int64_t M, int64_t NT,
                  int64_t lo, int64_t hi, int threads) {
    const int64_t chunks = (NT + TC - 1) / TC;
    #pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
    for (int64_t q = lo; q < hi; ++q) {
        const int64_t z = q / chunks, t0 = (q % chunks) * TC, t1 = t0 + TC < NT ? t0 + TC : NT;
        T* restrict gz = GC + z * M * NT * KP;
        if (!accumulate)
            for (int64_t mi = 0; mi < M; ++mi)
                for (int64_t x = t0 * KP; x < t1 * KP; ++x) gz[mi * NT * KP + x] = 0;
        for (int64_t s = start[z]; s < start[z + 1]; s += AB) {  /* AB atoms at a time: one pass over gc */
            const int nb = start[z + 1] - s < AB ? (int)(start[z + 1] - s) : AB;
            T g[AB][M * KP];
            const T* b[AB];
            for (int a = 0; a < AB; ++a) {
                const int64_t i = order[s + (a < nb ? a : 0)];
                for (int64_t mi = 0; mi < M; ++mi)
                    for (int64_t k = 0; k < KP; ++k) g[a][mi * KP + k] = a < nb && k < K ? GB[(i * K + k) * M + mi] : 0;
                b[a] = B + i * NT * KP;
            }
            for (int64_t t = t0; t < t1; ++t)
                for (int64_t mi = 0; mi < M; ++mi) {
                    T* restrict gc = gz + (mi * NT + t) * KP;
                    for (int k = 0; k < KP; ++k) {
                        T acc = gc[k];
                        for (int a = 0; a < AB; ++a) acc += g[a][mi * KP + k] * b[a][t * KP + k];
                        gc[k] = acc;
                    }
                }
        }
    }
}
"""

def _kernels(dtype: torch.dtype, kp: int = CB):
    """``(atoms, monomials, coefficients, openmp)`` for ``dtype`` and ``kp`` padded channels, or ``None``
    where they cannot be built."""
    p, n, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    signatures = {"atoms": [i] + [p] * 7 + [n] * 4 + [p] * 5 + [n, n, i],
                  "monomials": [p] * 3 + [n] * 3 + [p, p, n, n, i],
                  "coefficients": [p] * 5 + [i] + [n] * 3 + [n, n, i]}
    return _native.typed_kernels("symmetric_contraction", _SOURCE, dtype, signatures, KP=kp, AB=AB, TC=TC)


def contraction_available(*tensors: torch.Tensor, channels: int = CB) -> bool:
    """Whether the kernels (for ``channels``) run on these tensors now (CPU, float32/64, not traced, a compiler at
    hand)."""
    return _native.usable(*tensors) and _kernels(tensors[0].dtype, -(-channels // CB) * CB) is not None


class ContractionSpec:
    """The monomials of one contraction: ``D`` components, ``NT`` monomials, ``m_t = m_left[t] m_right[t]`` for
    ``t >= D`` (``left``, ``right`` ``[NT - D]``, each below ``t``)."""

    def __init__(self, D: int, left, right):
        self.D = int(D)
        self.left = torch.tensor([0] * self.D + list(left), dtype=torch.long)
        self.right = torch.tensor([0] * self.D + list(right), dtype=torch.long)
        self.NT = self.D + len(left)
        if any(not (lt < t and rt < t) for t, (lt, rt) in enumerate(zip(left, right), start=self.D)):
            raise ValueError("every monomial must be the product of two earlier ones")


class _Species:
    """The atoms' rows of the coefficients, and the atoms grouped by row (for the sums over each element)."""

    def __init__(self, sp: torch.Tensor, rows: int):
        self.sp, self.rows = sp.to(torch.long).contiguous(), rows  # the kernels read 64-bit indices
        self._groups = self._blocks = None

    def groups(self):
        if self._groups is None:
            order = torch.sort(self.sp, stable=True).indices
            start = torch.zeros(self.rows + 1, dtype=torch.long)
            torch.cumsum(torch.bincount(self.sp, minlength=self.rows), 0, out=start[1:])
            self._groups = (order, start)
        return self._groups

    def blocks(self):
        """``(order, bstart, bend)``: the atoms sorted by row, cut into blocks of at most ``AB`` atoms of one row
        (block ``q`` is ``order[bstart[q]] .. order[bend[q] - 1]``)."""
        if self._blocks is None:
            order, start = self.groups()
            bounds = start.tolist()
            starts = [torch.arange(lo, hi, AB) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
            bstart = torch.cat(starts) if starts else torch.zeros(0, dtype=torch.long)
            ends = torch.cat([bstart[1:], torch.tensor([bounds[-1]])]) if starts else bstart
            bend = torch.minimum(bstart + AB, ends).contiguous()
            self._blocks = (order, bstart.contiguous(), bend)
        return self._blocks


def _call_atoms(mode, spec, a, c, species, gb=None, v=None):
    atoms_fn, _, _, openmp = _kernels(a.dtype, c.shape[3])
    n, k, d = a.shape
    m = c.shape[1]
    a, c = a.contiguous(), c.contiguous()
    gb = gb.contiguous() if gb is not None else None
    v = v.contiguous() if v is not None else None
    o1 = a.new_empty(n, k, m if mode == 0 else d)
    o2 = a.new_empty(n, k, m) if mode == 2 else None
    if n:
        order, bstart, bend = species.blocks()
        _native.parallel_for(atoms_fn, bstart.shape[0], mode, a.data_ptr(), v.data_ptr() if v is not None else None,
                             species.sp.data_ptr(), c.data_ptr(), gb.data_ptr() if gb is not None else None,
                             o1.data_ptr(), o2.data_ptr() if o2 is not None else None, k, d, m, spec.NT,
                             spec.left.data_ptr(), spec.right.data_ptr(), order.data_ptr(), bstart.data_ptr(),
                             bend.data_ptr(), openmp=openmp, grain=2)
    return o1 if mode < 2 else (o1, o2)


#: bytes of monomials held at once while summing the coefficients' gradient (atoms in chunks)
_CHUNK_BYTES = 64 << 20


def _call_coefficients(spec, a, species, gb, kp, v=None):
    _, mono_fn, coef_fn, openmp = _kernels(a.dtype, kp)
    n, k, d = a.shape
    m = gb.shape[2]
    out = a.new_empty(species.rows, m, spec.NT, kp)  # every entry written by the first chunk
    a, gb = a.contiguous(), gb.contiguous()
    v = v.contiguous() if v is not None else None
    if n == 0:
        return out.zero_()
    chunk = max(1, _CHUNK_BYTES // (spec.NT * kp * a.element_size()))
    for lo in range(0, n, chunk):  # the monomials of a chunk of atoms, then their sums per element
        hi = min(n, lo + chunk)
        sub = _Species(species.sp[lo:hi], species.rows)
        order, start = sub.groups()
        buf = a.new_empty(hi - lo, spec.NT, kp)
        _native.parallel_for(mono_fn, hi - lo, a[lo:hi].data_ptr(), v[lo:hi].data_ptr() if v is not None else None,
                             buf.data_ptr(), k, d, spec.NT, spec.left.data_ptr(), spec.right.data_ptr(),
                             openmp=openmp, grain=4)
        tasks = species.rows * -(-spec.NT // TC)
        _native.parallel_for(coef_fn, tasks, buf.data_ptr(), order.data_ptr(), start.data_ptr(), gb[lo:hi].data_ptr(),
                             out.data_ptr(), int(lo > 0), k, m, spec.NT, openmp=openmp, grain=1)
    return out


def reference(spec: ContractionSpec, a: torch.Tensor, c: torch.Tensor, sp: torch.Tensor) -> torch.Tensor:
    """The contraction in PyTorch operations (differentiable to any order): ``a`` ``[N, K, D]``, ``c``
    ``[Z, M, NT, Kp]``, ``sp`` ``[N]`` -> ``[N, K, M]``."""
    k = a.shape[1]
    cols = list(a.transpose(1, 2).unbind(1))  # D x [N, K]
    for t in range(spec.D, spec.NT):
        cols.append(cols[int(spec.left[t])] * cols[int(spec.right[t])])
    mono = torch.stack(cols, 1)  # [N, NT, K]
    return torch.einsum("nmtk,ntk->nkm", c[..., :k].index_select(0, sp), mono)


def _recompute_backward(saved, grads, outputs_fn):
    """Derivatives of a second-order function by recomputing it in PyTorch operations (third order only)."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in saved]
        outs = outputs_fn(*leaves)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
        if not pairs:
            return [None] * len(leaves)
        return torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True,
                                   create_graph=torch.is_grad_enabled())


class _P(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, species, a, c):
        ctx.set_materialize_grads(False)
        ctx.spec, ctx.species = spec, species
        ctx.save_for_backward(a, c)
        return _call_atoms(0, spec, a, c, species)

    @staticmethod
    def backward(ctx, gb):
        if gb is None:
            return None, None, None, None
        a, c = ctx.saved_tensors
        ga = _G.apply(ctx.spec, ctx.species, a, c, gb) if ctx.needs_input_grad[2] else None
        gc = None
        if ctx.needs_input_grad[3] and gradient_wanted(c):
            gc = _H.apply(ctx.spec, ctx.species, a, gb, c.shape[3])
        return None, None, ga, gc


class _G(torch.autograd.Function):
    """``(dP/da)^T g``."""

    @staticmethod
    def forward(ctx, spec, species, a, c, gb):
        ctx.set_materialize_grads(False)
        ctx.spec, ctx.species = spec, species
        ctx.save_for_backward(a, c, gb)
        return _call_atoms(1, spec, a, c, species, gb=gb)

    @staticmethod
    def backward(ctx, v):
        if v is None:
            return (None,) * 5
        a, c, gb = ctx.saved_tensors
        need_a, need_c, need_g = ctx.needs_input_grad[2:5]
        need_c = need_c and gradient_wanted(c)
        ga = gg = gc = None
        if need_a or need_g:
            ga, gg = _Second.apply(ctx.spec, ctx.species, a, c, gb, v)
        if need_c:
            gc = _Hv.apply(ctx.spec, ctx.species, a, gb, v, c.shape[3])
        return None, None, ga if need_a else None, gc, gg if need_g else None


class _H(torch.autograd.Function):
    """``sum_i g_i (x) m(a_i)`` per element: the gradient with respect to the coefficients."""

    @staticmethod
    def forward(ctx, spec, species, a, gb, kp):
        ctx.set_materialize_grads(False)
        ctx.spec, ctx.species = spec, species
        ctx.save_for_backward(a, gb)
        return _call_coefficients(spec, a, species, gb, kp)

    @staticmethod
    def backward(ctx, h):  # linear in gb: P and G with h in the place of c
        if h is None:
            return (None,) * 5
        a, gb = ctx.saved_tensors
        ga = _G.apply(ctx.spec, ctx.species, a, h, gb) if ctx.needs_input_grad[2] else None
        gg = _P.apply(ctx.spec, ctx.species, a, h) if ctx.needs_input_grad[3] else None
        return None, None, ga, gg, None


def _second_reference(spec, species):
    def outputs(a, c, gb, v):
        y = reference(spec, a, c, species.sp)
        (ga,) = torch.autograd.grad(y, a, gb, create_graph=True)
        return torch.autograd.grad((ga * v).sum(), (a, gb), create_graph=True)
    return outputs


class _Second(torch.autograd.Function):
    """Along ``v``: the Hessian-vector product ``(d^2P/da^2 . v)^T g`` and the directional derivative ``(dP/da) v``."""

    @staticmethod
    def forward(ctx, spec, species, a, c, gb, v):
        ctx.set_materialize_grads(False)
        ctx.spec, ctx.species = spec, species
        ctx.save_for_backward(a, c, gb, v)
        return _call_atoms(2, spec, a, c, species, gb=gb, v=v)

    @staticmethod
    def backward(ctx, h_a, h_g):
        grads = _recompute_backward(ctx.saved_tensors, (h_a, h_g), _second_reference(ctx.spec, ctx.species))
        return (None, None, *grads)


class _Hv(torch.autograd.Function):
    """``sum_i g_i (x) (dm(a_i)/da) v_i`` per element: the coefficients' part of ``G``'s backward."""

    @staticmethod
    def forward(ctx, spec, species, a, gb, v, kp):
        ctx.set_materialize_grads(False)
        ctx.spec, ctx.species, ctx.kp = spec, species, kp
        ctx.save_for_backward(a, gb, v)
        return _call_coefficients(spec, a, species, gb, kp, v=v)

    @staticmethod
    def backward(ctx, h):
        def outputs(a, gb, v):
            c = torch.zeros(ctx.species.rows, gb.shape[2], ctx.spec.NT, ctx.kp, dtype=a.dtype, requires_grad=True)
            y = reference(ctx.spec, a, c, ctx.species.sp)
            (ga,) = torch.autograd.grad(y, a, gb, create_graph=True)
            return torch.autograd.grad((ga * v).sum(), c, create_graph=True)

        grads = _recompute_backward(ctx.saved_tensors, (h,), outputs)
        return (None, None, *grads, None)


def fused_contraction(spec: ContractionSpec, a: torch.Tensor, c: torch.Tensor, sp: torch.Tensor) -> torch.Tensor:
    """``B[i, k, M] = sum_t c[sp[i], M, t, k] m_t(a[i, k])`` by the kernels.

    ``a`` ``[N, K, D]``, ``c`` ``[Z, M, NT, Kp]`` (``Kp`` the channels rounded up to a multiple of 8, the
    padded ones ignored), ``sp`` ``[N]`` the atoms' rows of ``c``. Differentiable to any order (the first
    and second derivatives by the kernels). Check :func:`contraction_available` first.
    """
    if c.shape[3] % CB or c.shape[3] < a.shape[1]:
        raise ValueError(f"the coefficients' channels must be padded to a multiple of {CB}, got {c.shape[3]}")
    if c.shape[2] != spec.NT or a.shape[2] != spec.D:
        raise ValueError(f"expected {spec.D} components and {spec.NT} monomials, got {a.shape[2]} and {c.shape[2]}")
    return _P.apply(spec, _Species(sp, c.shape[0]), a, c)
