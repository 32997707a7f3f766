"""The channel-wise convolution of message passing as one pass over the edges, on the CPU.

NequIP's and MACE's convolution sums, into every receiver ``r``, the channel-wise
tensor product of the sender's features with the edge's harmonics, weighted per
edge, path and channel by the radial MLP:

    out[r, p, k, u] = sum_{e -> r} w[e, p, u] sum_{i, j} c_p C_p[i, j, k] x[s(e), p, i, u] y[e, j]

(``p`` a path, ``u`` a channel, ``i``, ``j``, ``k`` the components of its input,
harmonic and output irreps). In PyTorch operations this is a gather of the
senders' features, a batched matmul per block, products with the weights and a
scatter-add, each a pass over a ``[E, K, U]`` tensor. Here it is one C loop per
receiver that keeps each edge's products in registers.

All derivatives come from one form. The convolution is the derivative of

    F(x, y, w, g) = sum_e sum_p sum_u w[e, p, u] sum_{i, j, k} c_p C_p[i, j, k] x[s(e), p, i, u] y[e, j] g[r(e), p, k, u]

with respect to ``g``; the backward pass needs its derivatives with respect to
``x`` (a sum over each sender's edges), ``y`` and ``w`` (per edge), and, since
``F`` is linear in each argument, the derivative of ``dF/dA`` in the direction
``h`` with respect to ``B`` is ``dF/dB`` with ``h`` in the place of ``A``. So four
kernels (:data:`_SOURCE`) give the forward pass and derivatives of every order:
force training (a double backward) runs in the same loops.

Layouts: ``x`` ``[N, dim1]`` with each block of input 1 as ``[d1, U]`` (channels
innermost; :class:`FusedChannelwise` permutes from and to ``mul_ir``); ``g`` and
the output ``[n, sum_p d3 U]`` path by path, each ``[d3, U]``; ``w`` in the
product's weight layout (``U`` weights per path); ``y`` ``[E, dim2]``.

Elsewhere (a GPU, no compiler, ``CLEBSCH_NATIVE=0``, tracing, ``vmap``) the same
derivatives run as PyTorch operations, path by path.
"""

from __future__ import annotations

import ctypes

import torch

from ..o3 import _native

__all__ = ["FusedChannelwise", "fused_available"]

_MAXD = 15  # largest irrep dimension the kernels hold on the stack (l <= 7)

_SOURCE = r"""
#include <stdint.h>
#define MAXD 15

#define PATHS const int64_t* restrict xo, const int64_t* restrict d1s, const int64_t* restrict d3s, \
    const int64_t* restrict oo, const int64_t* restrict wo, const int64_t* restrict ts, \
    const int64_t* restrict ti, const int64_t* restrict tj, const int64_t* restrict tk, const T* restrict tc, \
    int64_t npaths, int64_t U_

/* the path's coupling for one edge: M[k * d1 + i] = sum over its terms t of c_t y[j_t] */
static inline void coupling(const T* restrict y, const int64_t* restrict ti, const int64_t* restrict tj,
                            const int64_t* restrict tk, const T* restrict tc, int64_t t0, int64_t t1, int64_t d1,
                            int64_t size, T* restrict M) {
    for (int64_t a = 0; a < size; ++a) M[a] = 0;
    for (int64_t t = t0; t < t1; ++t) M[tk[t] * d1 + ti[t]] += tc[t] * y[tj[t]];
}

/* dF/dg: for every receiver r in [lo, hi), the sum over its edges (order[start[r]] ... order[start[r + 1] - 1]) */
void to_g(const T* restrict X, int64_t xs, const T* restrict Y, int64_t ys, const T* restrict W, int64_t ws,
          T* restrict G, int64_t gs, const int64_t* restrict sender, const int64_t* restrict order,
          const int64_t* restrict start, PATHS, int64_t lo, int64_t hi, int threads) {
    const int64_t U = UC ? UC : U_;  /* the channels: a constant where the library is built for them */
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t r = lo; r < hi; ++r) {
        T M[MAXD * MAXD];
        T wx[MAXD * U];
        T* restrict g = G + r * gs;
        for (int64_t q = start[r]; q < start[r + 1]; ++q) {
            const int64_t e = order[q];
            const T* restrict x = X + sender[e] * xs;
            const T* restrict y = Y + e * ys;
            const T* restrict w = W + e * ws;
            for (int64_t p = 0; p < npaths; ++p) {
                const int64_t d1 = d1s[p], d3 = d3s[p];
                coupling(y, ti, tj, tk, tc, ts[p], ts[p + 1], d1, d1 * d3, M);
                const T* restrict wp = w + wo[p];
                const T* restrict xp = x + xo[p];
                for (int64_t i = 0; i < d1; ++i)
                    for (int64_t u = 0; u < U; ++u) wx[i * U + u] = wp[u] * xp[i * U + u];
                for (int64_t k = 0; k < d3; ++k) {
                    T* restrict gk = g + oo[p] + k * U;
                    for (int64_t i = 0; i < d1; ++i) {
                        const T m = M[k * d1 + i];
                        if (m == 0) continue;
                        const T* restrict a = wx + i * U;
                        for (int64_t u = 0; u < U; ++u) gk[u] += m * a[u];
                    }
                }
            }
        }
    }
}

/* dF/dx: for every sender s in [lo, hi), the sum over its edges (order and start by sender) */
void to_x(const T* restrict G, int64_t gs, const T* restrict Y, int64_t ys, const T* restrict W, int64_t ws,
          T* restrict X, int64_t xs, const int64_t* restrict receiver, const int64_t* restrict order,
          const int64_t* restrict start, PATHS, int64_t lo, int64_t hi, int threads) {
    const int64_t U = UC ? UC : U_;  /* the channels: a constant where the library is built for them */
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t s = lo; s < hi; ++s) {
        T M[MAXD * MAXD];
        T acc[U];
        T* restrict x = X + s * xs;
        for (int64_t q = start[s]; q < start[s + 1]; ++q) {
            const int64_t e = order[q];
            const T* restrict g = G + receiver[e] * gs;
            const T* restrict y = Y + e * ys;
            const T* restrict w = W + e * ws;
            for (int64_t p = 0; p < npaths; ++p) {
                const int64_t d1 = d1s[p], d3 = d3s[p];
                coupling(y, ti, tj, tk, tc, ts[p], ts[p + 1], d1, d1 * d3, M);
                const T* restrict wp = w + wo[p];
                const T* restrict gp = g + oo[p];
                for (int64_t i = 0; i < d1; ++i) {
                    for (int64_t u = 0; u < U; ++u) acc[u] = 0;
                    for (int64_t k = 0; k < d3; ++k) {
                        const T m = M[k * d1 + i];
                        if (m == 0) continue;
                        const T* restrict a = gp + k * U;
                        for (int64_t u = 0; u < U; ++u) acc[u] += m * a[u];
                    }
                    T* restrict xi = x + xo[p] + i * U;
                    for (int64_t u = 0; u < U; ++u) xi[u] += wp[u] * acc[u];
                }
            }
        }
    }
}

/* sum_u a[u] b[u] in eight partial sums (a reduction the compiler vectorises without reassociating others) */
static inline T dot(const T* restrict a, const T* restrict b, int64_t n) {
    T s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t u = 0;
    for (; u + 8 <= n; u += 8)
        for (int j = 0; j < 8; ++j) s[j] += a[u + j] * b[u + j];
    T t = 0;
    for (; u < n; ++u) t += a[u] * b[u];
    return t + ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

/* dF/dy (into GY, which must hold zeros) and/or dF/dw (into GW) of every edge in [lo, hi); a null pointer
   skips one */
void to_yw(const T* restrict X, int64_t xs, const T* restrict Y, int64_t ys, const T* restrict W, int64_t ws,
           const T* restrict G, int64_t gs, const int64_t* restrict sender, const int64_t* restrict receiver,
           T* restrict GY, int64_t gys, T* restrict GW, int64_t gws, PATHS, int64_t lo, int64_t hi, int threads) {
    const int64_t U = UC ? UC : U_;  /* the channels: a constant where the library is built for them */
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t e = lo; e < hi; ++e) {
        T M[MAXD * MAXD], S[MAXD * MAXD];
        T acc[U], tmp[U];
        const T* restrict x = X + sender[e] * xs;
        const T* restrict g = G + receiver[e] * gs;
        for (int64_t p = 0; p < npaths; ++p) {
            const int64_t d1 = d1s[p], d3 = d3s[p];
            const T* restrict xp = x + xo[p];
            const T* restrict gp = g + oo[p];
            if (GW) {  /* sum_k g_k * (sum_i M[k, i] x_i) */
                coupling(Y + e * ys, ti, tj, tk, tc, ts[p], ts[p + 1], d1, d1 * d3, M);
                for (int64_t u = 0; u < U; ++u) acc[u] = 0;
                for (int64_t k = 0; k < d3; ++k) {
                    for (int64_t u = 0; u < U; ++u) tmp[u] = 0;
                    for (int64_t i = 0; i < d1; ++i) {
                        const T m = M[k * d1 + i];
                        if (m == 0) continue;
                        const T* restrict a = xp + i * U;
                        for (int64_t u = 0; u < U; ++u) tmp[u] += m * a[u];
                    }
                    const T* restrict b = gp + k * U;
                    for (int64_t u = 0; u < U; ++u) acc[u] += tmp[u] * b[u];
                }
                T* restrict o = GW + e * gws + wo[p];
                for (int64_t u = 0; u < U; ++u) o[u] = acc[u];
            }
            if (GY) {  /* S[i, k] = sum_u x_i w g_k, then each term's share */
                const T* restrict wp = W + e * ws + wo[p];
                for (int64_t k = 0; k < d3; ++k) {
                    const T* restrict b = gp + k * U;
                    for (int64_t u = 0; u < U; ++u) tmp[u] = wp[u] * b[u];
                    for (int64_t i = 0; i < d1; ++i) S[i * d3 + k] = dot(xp + i * U, tmp, U);
                }
                T* restrict o = GY + e * gys;
                for (int64_t t = ts[p]; t < ts[p + 1]; ++t) o[tj[t]] += tc[t] * S[ti[t] * d3 + tk[t]];
            }
        }
    }
}
"""

_KERNELS: dict = {}


def _kernels(dtype: torch.dtype, channels: int = 0):
    """``(to_g, to_x, to_yw, openmp)`` for ``dtype``, or ``None`` where they cannot be built.

    ``channels``: the library is built for this number of channels (a constant the compiler unrolls and
    vectorises for); 0: any number, given at each call.
    """
    key = (dtype, channels)
    if key not in _KERNELS:
        ctype = {torch.float32: "float", torch.float64: "double"}.get(dtype)
        source = f"#define T {ctype}\n#define UC {int(channels)}\n" + _SOURCE
        lib = _native.load(f"channelwise_conv_{channels}", source) if ctype else None
        fns = None
        if lib is not None:
            p, n, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
            paths = [p] * 10 + [n, n]
            lib.to_g.argtypes = [p, n, p, n, p, n, p, n, p, p, p] + paths + [n, n, i]
            lib.to_x.argtypes = [p, n, p, n, p, n, p, n, p, p, p] + paths + [n, n, i]
            lib.to_yw.argtypes = [p, n, p, n, p, n, p, n, p, p, p, n, p, n] + paths + [n, n, i]
            lib.to_g.restype = lib.to_x.restype = lib.to_yw.restype = None
            fns = (lib.to_g, lib.to_x, lib.to_yw, lib.openmp)
        _KERNELS[key] = fns
    return _KERNELS[key]


class _Graph:
    """The edges of one call: senders and receivers, and the edges ordered by receiver and by sender (CSR)."""

    def __init__(self, sender: torch.Tensor, receiver: torch.Tensor, n_x: int, n_g: int):
        self.sender, self.receiver, self.n_x, self.n_g = sender.contiguous(), receiver.contiguous(), n_x, n_g
        self._csr = {}

    def csr(self, by: str):
        """``(order, start)``: the edges sorted (stably) by receiver (``by="g"``) or by sender (``"x"``)."""
        if by not in self._csr:
            index, n = (self.receiver, self.n_g) if by == "g" else (self.sender, self.n_x)
            order = torch.sort(index, stable=True).indices
            start = torch.zeros(n + 1, dtype=torch.long, device=index.device)
            torch.cumsum(torch.bincount(index, minlength=n), 0, out=start[1:])
            self._csr[by] = (order, start)
        return self._csr[by]


class _Spec:
    """The paths of one channel-wise group as the kernels read them (see :class:`FusedChannelwise`)."""

    def __init__(self, U, xo, d1, d3, oo, wo, terms, dim_x, dim_g, dim_y, dim_w):
        self.U, self.dims = U, dict(x=dim_x, g=dim_g, y=dim_y, w=dim_w)
        self.npaths = len(xo)
        ts = [0]
        for t in terms:
            ts.append(ts[-1] + len(t))
        flat = [x for t in terms for x in t]
        self.int_arrays = dict(
            xo=torch.tensor(xo, dtype=torch.long), d1=torch.tensor(d1, dtype=torch.long),
            d3=torch.tensor(d3, dtype=torch.long), oo=torch.tensor(oo, dtype=torch.long),
            wo=torch.tensor(wo, dtype=torch.long), ts=torch.tensor(ts, dtype=torch.long),
            ti=torch.tensor([t[0] for t in flat], dtype=torch.long),
            tj=torch.tensor([t[1] for t in flat], dtype=torch.long),
            tk=torch.tensor([t[2] for t in flat], dtype=torch.long))
        self.coefficients = torch.tensor([t[3] for t in flat], dtype=torch.float64)
        self._tc = {}
        # PyTorch form: per path, its dense coupling [d1, dim_y, d3]
        self.paths = []
        for p in range(self.npaths):
            C = torch.zeros(d1[p], dim_y, d3[p], dtype=torch.float64)
            for i, j, k, c in terms[p]:
                C[i, j, k] += c
            self.paths.append((xo[p], d1[p], d3[p], oo[p], wo[p], C))
        self._dense = {}

    def pointers(self, dtype):
        if dtype not in self._tc:
            self._tc[dtype] = self.coefficients.to(dtype)
        a = self.int_arrays
        return [a["xo"].data_ptr(), a["d1"].data_ptr(), a["d3"].data_ptr(), a["oo"].data_ptr(), a["wo"].data_ptr(),
                a["ts"].data_ptr(), a["ti"].data_ptr(), a["tj"].data_ptr(), a["tk"].data_ptr(),
                self._tc[dtype].data_ptr(), self.npaths, self.U]

    def dense(self, dtype, device):
        key = (dtype, device)
        if key not in self._dense:
            self._dense[key] = [C.to(dtype=dtype, device=device) for *_, C in self.paths]
        return self._dense[key]


_SLOTS = ("x", "y", "w", "g")


def _native_ok(spec: _Spec, tensors) -> bool:
    return (spec.int_arrays["xo"].device.type == "cpu" and _native.usable(*tensors)
            and _kernels(tensors[0].dtype, spec.U) is not None)


def fused_available(*tensors: torch.Tensor, channels: int = 0) -> bool:
    """Whether the kernels (built for ``channels``, 0: any) run on these tensors now (CPU, float32/64, not
    traced, a compiler at hand)."""
    return _native.usable(*tensors) and _kernels(tensors[0].dtype, channels) is not None


def _partial(slot: str, graph: _Graph, spec: _Spec, x, y, w, g):
    """``dF/d slot`` with the other three arguments given (the argument at ``slot`` is ``None``)."""
    given = [t for t in (x, y, w, g) if t is not None]
    if _native_ok(spec, given):
        return _Partial.apply(slot, graph, spec, x, y, w, g)
    return _partial_torch(slot, graph, spec, x, y, w, g)


class _Partial(torch.autograd.Function):
    """``dF/d slot`` by the kernels (``given``: ``[tensor]`` already computed by them from the same arguments)."""

    @staticmethod
    def forward(ctx, slot, graph, spec, x, y, w, g, given=None):
        ctx.set_materialize_grads(False)
        ctx.slot, ctx.graph, ctx.spec = slot, graph, spec
        ctx.save_for_backward(x, y, w, g)
        return given[0] if given is not None else _run(slot, graph, spec, x, y, w, g)

    @staticmethod
    def backward(ctx, h):
        if h is None:
            return (None,) * 8
        args = dict(zip(_SLOTS, ctx.saved_tensors))
        args[ctx.slot] = h
        need = [name for k, name in enumerate(_SLOTS) if name != ctx.slot and ctx.needs_input_grad[3 + k]]
        grads = {}
        if "y" in need and "w" in need and _native_ok(ctx.spec, list(args.values())):
            # both per-edge derivatives in one pass over the edges
            gy, gw = _run("yw", ctx.graph, ctx.spec, **args)
            grads["y"] = _Partial.apply("y", ctx.graph, ctx.spec, *(None if n == "y" else args[n] for n in _SLOTS), [gy])
            grads["w"] = _Partial.apply("w", ctx.graph, ctx.spec, *(None if n == "w" else args[n] for n in _SLOTS), [gw])
        for name in need:
            if name not in grads:
                grads[name] = _partial(name, ctx.graph, ctx.spec, **{**args, name: None})
        return (None, None, None) + tuple(grads.get(name) for name in _SLOTS) + (None,)


def _run(slot, graph: _Graph, spec: _Spec, x, y, w, g):
    """The kernel that gives ``dF/d slot``."""
    to_g, to_x, to_yw, openmp = _kernels(next(t for t in (x, y, w, g) if t is not None).dtype, spec.U)
    E = graph.sender.shape[0]
    ref = next(t for t in (x, y, w, g) if t is not None)
    if slot == "yw":
        if E == 0:
            return ref.new_zeros(0, spec.dims["y"]), ref.new_zeros(0, spec.dims["w"])
    else:
        out = ref.new_zeros({"x": graph.n_x, "g": graph.n_g, "y": E, "w": E}[slot], spec.dims[slot])
        if E == 0 or out.numel() == 0:
            return out
    x, y, w, g = (None if t is None else t.contiguous() for t in (x, y, w, g))
    paths = spec.pointers(ref.dtype)
    if slot == "g":
        order, start = graph.csr("g")
        _native.parallel_for(to_g, graph.n_g, x.data_ptr(), x.stride(0), y.data_ptr(), y.stride(0), w.data_ptr(),
                             w.stride(0), out.data_ptr(), out.stride(0), graph.sender.data_ptr(), order.data_ptr(),
                             start.data_ptr(), *paths, openmp=openmp, grain=8)
    elif slot == "x":
        order, start = graph.csr("x")
        _native.parallel_for(to_x, graph.n_x, g.data_ptr(), g.stride(0), y.data_ptr(), y.stride(0), w.data_ptr(),
                             w.stride(0), out.data_ptr(), out.stride(0), graph.receiver.data_ptr(), order.data_ptr(),
                             start.data_ptr(), *paths, openmp=openmp, grain=8)
    else:
        both = slot == "yw"
        gy = out if slot == "y" else ref.new_zeros(E, spec.dims["y"]) if both else None
        gw = out if slot == "w" else ref.new_zeros(E, spec.dims["w"]) if both else None
        yy = y if y is not None else gy  # y is read for the weights' derivative only, w for the harmonics'
        ww = w if w is not None else gw
        _native.parallel_for(to_yw, E, x.data_ptr(), x.stride(0), yy.data_ptr(), yy.stride(0), ww.data_ptr(),
                             ww.stride(0), g.data_ptr(), g.stride(0), graph.sender.data_ptr(),
                             graph.receiver.data_ptr(), gy.data_ptr() if gy is not None else None,
                             spec.dims["y"], gw.data_ptr() if gw is not None else None, spec.dims["w"], *paths,
                             openmp=openmp, grain=64)
        if both:
            return gy, gw
    return out


def _partial_torch(slot, graph: _Graph, spec: _Spec, x, y, w, g):
    """``dF/d slot`` in PyTorch operations, path by path (differentiable by autograd, ``vmap``-able)."""
    ref = next(t for t in (x, y, w, g) if t is not None)
    U = spec.U
    E = graph.sender.shape[0]
    dense = spec.dense(ref.dtype, ref.device)
    xe = x.index_select(0, graph.sender) if x is not None else None
    ge = g.index_select(0, graph.receiver) if g is not None else None
    pieces, total = [], None
    for (xo, d1, d3, oo, wo, _), C in zip(spec.paths, dense):
        xp = xe[:, xo:xo + d1 * U].reshape(E, d1, U) if xe is not None else None
        gp = ge[:, oo:oo + d3 * U].reshape(E, d3, U) if ge is not None else None
        wp = w[:, wo:wo + U] if w is not None else None
        if slot == "g":
            M = torch.einsum("ijk,ej->eki", C, y)
            pieces.append((oo, torch.einsum("eki,eiu,eu->eku", M, xp, wp).reshape(E, d3 * U)))
        elif slot == "x":
            M = torch.einsum("ijk,ej->eki", C, y)
            pieces.append((xo, torch.einsum("eki,eku,eu->eiu", M, gp, wp).reshape(E, d1 * U)))
        elif slot == "w":
            M = torch.einsum("ijk,ej->eki", C, y)
            pieces.append((wo, torch.einsum("eki,eiu,eku->eu", M, xp, gp)))
        else:
            term = torch.einsum("ijk,eiu,eku,eu->ej", C, xp, gp, wp)
            total = term if total is None else total + term
    if slot == "y":
        return total if total is not None else ref.new_zeros(E, spec.dims["y"])
    per_edge = ref.new_zeros(E, spec.dims[slot])
    for start, piece in pieces:
        index = torch.arange(start, start + piece.shape[1], device=ref.device)
        per_edge = per_edge.index_add(1, index, piece)
    if slot == "w":
        return per_edge
    index, n = (graph.receiver, graph.n_g) if slot == "g" else (graph.sender, graph.n_x)
    return ref.new_zeros(n, spec.dims[slot]).index_add(0, index, per_edge)


class FusedChannelwise:
    """The fused form of a :class:`~clebsch.nn.TensorProduct`'s channel-wise groups, built once per product.

    ``__call__(tp, x, sender, y, weight, receiver, dim_size)`` gives
    ``tp.scatter_sum(x[sender], y, weight, receiver, dim_size)``. ``supported`` says whether the product
    qualifies: every group channel-wise (``uvu``, one copy of input 2, weights per edge).
    """

    def __init__(self, tp, in1, in2, out, s1, s2) -> None:
        from ..o3 import wigner_3j
        from ._index import ColumnMap

        self.supported = bool(tp._groups) and all(p["mode"] == "channelwise" for p in tp._plans) and \
            all(ir.dim <= _MAXD for _, ir in list(tp.irreps_in1) + list(tp.irreps_in2) + list(tp.irreps_out))
        if not self.supported:
            return
        # input 1 with each block as [d1, U] (channels innermost)
        src = [s1[b] + u * ir.dim + m for b, (mul, ir) in enumerate(in1) for m in range(ir.dim) for u in range(mul)]
        self.x_map = ColumnMap(tp, "_fused_x", src, tp.irreps_in1.dim)
        self.specs = []
        for gi, (g, plan) in enumerate(zip(tp._groups, tp._plans)):
            U = g.U
            xo, d1s, d3s, oo, wo, terms, o = [], [], [], [], [], [], 0
            # the paths in the plan's order of output columns (see TensorProduct._build_channelwise)
            for i in sorted({p.i_in1 for _, p, _ in g.paths}):
                dim1 = in1[i].ir.dim
                for d in sorted({out[p.i_out].ir.dim for _, p, _ in g.paths if p.i_in1 == i}):
                    sub = sorted([t for t in g.paths if t[1].i_in1 == i and out[t[1].i_out].ir.dim == d],
                                 key=lambda t: tp._irreps_out.slices()[t[1].i_out].start)
                    for off, p, c in sub:
                        l1, l2, lo = in1[p.i_in1].ir.l, in2[p.i_in2].ir.l, out[p.i_out].ir.l
                        w3j = wigner_3j(l1, l2, lo).to(torch.float64) * c
                        terms.append([(a, s2[p.i_in2] + b, k, float(w3j[a, b, k]))
                                      for a in range(2 * l1 + 1) for b in range(2 * l2 + 1) for k in range(2 * lo + 1)
                                      if abs(float(w3j[a, b, k])) > 1e-14])
                        xo.append(s1[i]), d1s.append(dim1), d3s.append(d), oo.append(o), wo.append(off)
                        o += d * U
            self.specs.append((_Spec(U, xo, d1s, d3s, oo, wo, terms, tp.irreps_in1.dim, o, tp.irreps_in2.dim,
                                     tp.weight_numel), plan))

    def available(self, *tensors: torch.Tensor) -> bool:
        """Whether the kernels of every group run on these tensors now."""
        return self.supported and all(_native_ok(spec, tensors) for spec, _ in self.specs)

    def __call__(self, tp, x, sender, y, weight, receiver, dim_size: int) -> torch.Tensor:
        graph = _Graph(sender, receiver, x.shape[0], dim_size)
        xt = self.x_map(tp, x)
        out = None
        for spec, plan in self.specs:
            piece = tp._place(plan, _partial("g", graph, spec, xt, y, weight, None))
            out = piece if out is None else out + piece
        return out
