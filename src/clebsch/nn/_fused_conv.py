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

from .._autograd import gradient_wanted
from ..o3 import _native

__all__ = ["FusedChannelwise", "fused_available"]

_MAXD = 15  # largest irrep dimension the kernels hold on the stack (l <= 7)

_SOURCE = r"""
#include <stdint.h>
#define MAXD 15

/* per path p: its block of x (xo, d1 components), of g (oo, d3 components), of w (wo) and of m (mo: the
   coupling M_p[k, i] at mo + k * d1 + i) */
#define PATHS const int64_t* restrict xo, const int64_t* restrict d1s, const int64_t* restrict d3s, \
    const int64_t* restrict oo, const int64_t* restrict wo, const int64_t* restrict mo, int64_t npaths, int64_t U_

/* out[u] += sum_j M[j * stride] src[j * U + u]: a combination of n channel vectors */
static inline void add_combination(T* restrict out, const T* restrict M, int64_t stride, const T* restrict src,
                                   int64_t n, int64_t U) {
    for (int64_t j = 0; j < n; ++j) {
        const T c = M[j * stride];
        const T* restrict b = src + j * U;
        for (int64_t u = 0; u < U; ++u) out[u] += c * b[u];
    }
}

/* dF/dg (into_x = 0: for every receiver r in [lo, hi), the sum over its edges, A = x read at each edge's sender)
   or dF/dx (into_x = 1: for every sender, the sum over its edges, A = g read at each edge's receiver); order[start[r]]
   ... order[start[r + 1] - 1] are row r's edges, other[e] the row of A an edge reads. Every kernel writes whole rows
   of its output (zeros where no path reaches), which need no initialising */
void to_node(const T* restrict A, int64_t as, const T* restrict MM, int64_t ms, const T* restrict W, int64_t ws,
             T* restrict O, int64_t os, const int64_t* restrict other, const int64_t* restrict order,
             const int64_t* restrict start, int into_x, PATHS, int64_t lo, int64_t hi, int threads) {
    const int64_t U = UC ? UC : U_;  /* the channels: a constant where the library is built for them */
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t r = lo; r < hi; ++r) {
        T buf[MAXD * U];
        T* restrict o = O + r * os;
        for (int64_t c = 0; c < os; ++c) o[c] = 0;
        for (int64_t q = start[r]; q < start[r + 1]; ++q) {
            const int64_t e = order[q];
            const T* restrict a = A + other[e] * as;
            const T* restrict m = MM + e * ms;
            const T* restrict w = W + e * ws;
            for (int64_t p = 0; p < npaths; ++p) {
                const int64_t d1 = d1s[p], d3 = d3s[p];
                const T* restrict M = m + mo[p];
                const T* restrict wp = w + wo[p];
                if (!into_x) {  /* g_k += sum_i M[k, i] (w x_i) */
                    const T* restrict xp = a + xo[p];
                    for (int64_t i = 0; i < d1; ++i)
                        for (int64_t u = 0; u < U; ++u) buf[i * U + u] = wp[u] * xp[i * U + u];
                    for (int64_t k = 0; k < d3; ++k) add_combination(o + oo[p] + k * U, M + k * d1, 1, buf, d1, U);
                } else {  /* x_i += w sum_k M[k, i] g_k */
                    const T* restrict gp = a + oo[p];
                    for (int64_t i = 0; i < d1; ++i) {
                        for (int64_t u = 0; u < U; ++u) buf[u] = 0;
                        add_combination(buf, M + i, d1, gp, d3, U);
                        T* restrict xi = o + xo[p] + i * U;
                        for (int64_t u = 0; u < U; ++u) xi[u] += wp[u] * buf[u];
                    }
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

/* dF/dm (into GM) and/or dF/dw (into GW) of every edge in [lo, hi); a null pointer skips one */
void to_mw(const T* restrict X, int64_t xs, const T* restrict MM, int64_t ms, const T* restrict W, int64_t ws,
           const T* restrict G, int64_t gs, const int64_t* restrict sender, const int64_t* restrict receiver,
           T* restrict GM, int64_t gms, T* restrict GW, int64_t gws, PATHS, int64_t lo, int64_t hi, int threads) {
    const int64_t U = UC ? UC : U_;
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t e = lo; e < hi; ++e) {
        T acc[U], tmp[U];
        const T* restrict x = X + sender[e] * xs;
        const T* restrict g = G + receiver[e] * gs;
        if (GM)
            for (int64_t c = 0; c < gms; ++c) GM[e * gms + c] = 0;
        if (GW)
            for (int64_t c = 0; c < gws; ++c) GW[e * gws + c] = 0;
        for (int64_t p = 0; p < npaths; ++p) {
            const int64_t d1 = d1s[p], d3 = d3s[p];
            const T* restrict xp = x + xo[p];
            const T* restrict gp = g + oo[p];
            if (GW) {  /* sum_k g_k * (sum_i M[k, i] x_i) */
                const T* restrict M = MM + e * ms + mo[p];
                for (int64_t u = 0; u < U; ++u) acc[u] = 0;
                for (int64_t k = 0; k < d3; ++k) {
                    for (int64_t u = 0; u < U; ++u) tmp[u] = 0;
                    add_combination(tmp, M + k * d1, 1, xp, d1, U);
                    const T* restrict b = gp + k * U;
                    for (int64_t u = 0; u < U; ++u) acc[u] += tmp[u] * b[u];
                }
                T* restrict o = GW + e * gws + wo[p];
                for (int64_t u = 0; u < U; ++u) o[u] = acc[u];
            }
            if (GM) {  /* dM[k, i] = sum_u x_i w g_k */
                const T* restrict wp = W + e * ws + wo[p];
                T* restrict o = GM + e * gms + mo[p];
                for (int64_t k = 0; k < d3; ++k) {
                    const T* restrict b = gp + k * U;
                    for (int64_t u = 0; u < U; ++u) tmp[u] = wp[u] * b[u];
                    for (int64_t i = 0; i < d1; ++i) o[k * d1 + i] = dot(xp + i * U, tmp, U);
                }
            }
        }
    }
}
"""

def _kernels(dtype: torch.dtype, channels: int = 0):
    """``(to_node, to_mw, openmp)`` for ``dtype``, or ``None`` where they cannot be built.

    ``channels``: the library is built for this number of channels (a constant the compiler unrolls and
    vectorises for); 0: any number, given at each call.
    """
    p, n, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    paths = [p] * 6 + [n, n]
    signatures = {"to_node": [p, n, p, n, p, n, p, n, p, p, p, i] + paths + [n, n, i],
                  "to_mw": [p, n, p, n, p, n, p, n, p, p, p, n, p, n] + paths + [n, n, i]}
    return _native.typed_kernels("channelwise_conv", _SOURCE, dtype, signatures, UC=channels)


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
    """The paths of one channel-wise group as the kernels read them (see :class:`FusedChannelwise`).

    ``coupling`` ``[dim_y, dim_m]``: each edge's ``m = y @ coupling`` holds, path after path, the matrix
    ``M_p[k, i] = sum_j c_p C_p[i, j, k] y[j]`` (row-major ``[d3, d1]``).
    """

    def __init__(self, U, xo, d1, d3, oo, wo, mo, coupling, dim_x, dim_g, dim_w):
        self.U, self.dims = U, dict(x=dim_x, g=dim_g, m=coupling.shape[1], w=dim_w)
        self.npaths = len(xo)
        self.int_arrays = [torch.tensor(v, dtype=torch.long) for v in (xo, d1, d3, oo, wo, mo)]
        self.paths = list(zip(xo, d1, d3, oo, wo, mo))
        self.coupling = coupling
        self._coupling = {}

    def pointers(self):
        return [a.data_ptr() for a in self.int_arrays] + [self.npaths, self.U]

    def coupling_as(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.device)
        if key not in self._coupling:
            self._coupling[key] = self.coupling.to(dtype=like.dtype, device=like.device)
        return self._coupling[key]


_SLOTS = ("x", "m", "w", "g")


def _native_ok(spec: _Spec, tensors) -> bool:
    return (_native.usable(*tensors)
            and _kernels(tensors[0].dtype, spec.U) is not None)


def fused_available(*tensors: torch.Tensor, channels: int = 0) -> bool:
    """Whether the kernels (built for ``channels``, 0: any) run on these tensors now (CPU, float32/64, not
    traced, a compiler at hand)."""
    return _native.usable(*tensors) and _kernels(tensors[0].dtype, channels) is not None


def _partial(slot: str, graph: _Graph, spec: _Spec, x, m, w, g):
    """``dF/d slot`` with the other three arguments given (the argument at ``slot`` is ``None``)."""
    given = [t for t in (x, m, w, g) if t is not None]
    if _native_ok(spec, given):
        return _Partial.apply(slot, graph, spec, x, m, w, g)
    return _partial_torch(slot, graph, spec, x, m, w, g)


class _Partial(torch.autograd.Function):
    """``dF/d slot`` by the kernels (``given``: ``[tensor]`` already computed by them from the same arguments)."""

    @staticmethod
    def forward(ctx, slot, graph, spec, x, m, w, g, given=None):
        ctx.set_materialize_grads(False)
        ctx.slot, ctx.graph, ctx.spec = slot, graph, spec
        ctx.save_for_backward(x, m, w, g)
        return given[0] if given is not None else _run(slot, graph, spec, x, m, w, g)

    @staticmethod
    def backward(ctx, h):
        if h is None:
            return (None,) * 8
        args = dict(zip(_SLOTS, ctx.saved_tensors))
        args[ctx.slot] = h
        # (taking the forces, the first layer's features, a function of the weights alone, need none)
        need = [name for k, name in enumerate(_SLOTS)
                if name != ctx.slot and ctx.needs_input_grad[3 + k] and gradient_wanted(args[name])]
        grads = {}
        if "m" in need and "w" in need and _native_ok(ctx.spec, list(args.values())):
            # both per-edge derivatives in one pass over the edges
            gm, gw = _run("mw", ctx.graph, ctx.spec, **args)
            grads["m"] = _Partial.apply("m", ctx.graph, ctx.spec, *(None if n == "m" else args[n] for n in _SLOTS), [gm])
            grads["w"] = _Partial.apply("w", ctx.graph, ctx.spec, *(None if n == "w" else args[n] for n in _SLOTS), [gw])
        for name in need:
            if name not in grads:
                grads[name] = _partial(name, ctx.graph, ctx.spec, **{**args, name: None})
        return (None, None, None) + tuple(grads.get(name) for name in _SLOTS) + (None,)


def _run(slot, graph: _Graph, spec: _Spec, x, m, w, g):
    """The kernel that gives ``dF/d slot`` (``"mw"``: both per-edge derivatives, one pass)."""
    ref = next(t for t in (x, m, w, g) if t is not None)
    to_node, to_mw, openmp = _kernels(ref.dtype, spec.U)
    E = graph.sender.shape[0]
    if slot == "mw":
        if E == 0:
            return ref.new_zeros(0, spec.dims["m"]), ref.new_zeros(0, spec.dims["w"])
    else:
        rows = {"x": graph.n_x, "g": graph.n_g, "m": E, "w": E}[slot]
        if E == 0 or rows * spec.dims[slot] == 0:
            return ref.new_zeros(rows, spec.dims[slot])
        out = ref.new_empty(rows, spec.dims[slot])  # every row written by the kernel
    x, m, w, g = (None if t is None else t.contiguous() for t in (x, m, w, g))
    paths = spec.pointers()
    if slot in ("g", "x"):  # a sum over each receiver's edges of x at their senders, or the reverse
        order, start = graph.csr(slot)
        a, other, rows = (x, graph.sender, graph.n_g) if slot == "g" else (g, graph.receiver, graph.n_x)
        _native.parallel_for(to_node, rows, a.data_ptr(), a.stride(0), m.data_ptr(), m.stride(0), w.data_ptr(),
                             w.stride(0), out.data_ptr(), out.stride(0), other.data_ptr(), order.data_ptr(),
                             start.data_ptr(), int(slot == "x"), *paths, openmp=openmp, grain=8)
    else:
        both = slot == "mw"
        gm = out if slot == "m" else ref.new_empty(E, spec.dims["m"]) if both else None
        gw = out if slot == "w" else ref.new_empty(E, spec.dims["w"]) if both else None
        mm = m if m is not None else gm  # m is read for the weights' derivative only, w for m's
        ww = w if w is not None else gw
        _native.parallel_for(to_mw, E, x.data_ptr(), x.stride(0), mm.data_ptr(), mm.stride(0), ww.data_ptr(),
                             ww.stride(0), g.data_ptr(), g.stride(0), graph.sender.data_ptr(),
                             graph.receiver.data_ptr(), gm.data_ptr() if gm is not None else None,
                             spec.dims["m"], gw.data_ptr() if gw is not None else None, spec.dims["w"], *paths,
                             openmp=openmp, grain=64)
        if both:
            return gm, gw
    return out


def _partial_torch(slot, graph: _Graph, spec: _Spec, x, m, w, g):
    """``dF/d slot`` in PyTorch operations, path by path (differentiable by autograd, ``vmap``-able)."""
    ref = next(t for t in (x, m, w, g) if t is not None)
    U, E = spec.U, graph.sender.shape[0]
    xe = x.index_select(0, graph.sender) if x is not None else None
    ge = g.index_select(0, graph.receiver) if g is not None else None
    pieces = []
    for xo, d1, d3, oo, wo, mo in spec.paths:
        xp = xe[:, xo:xo + d1 * U].reshape(E, d1, U) if xe is not None else None
        gp = ge[:, oo:oo + d3 * U].reshape(E, d3, U) if ge is not None else None
        wp = w[:, wo:wo + U] if w is not None else None
        M = m[:, mo:mo + d3 * d1].reshape(E, d3, d1) if m is not None else None
        if slot == "g":
            pieces.append((oo, torch.einsum("eki,eiu,eu->eku", M, xp, wp).reshape(E, d3 * U)))
        elif slot == "x":
            pieces.append((xo, torch.einsum("eki,eku,eu->eiu", M, gp, wp).reshape(E, d1 * U)))
        elif slot == "w":
            pieces.append((wo, torch.einsum("eki,eiu,eku->eu", M, xp, gp)))
        else:
            pieces.append((mo, torch.einsum("eiu,eku,eu->eki", xp, gp, wp).reshape(E, d3 * d1)))
    per_edge = ref.new_zeros(E, spec.dims[slot])
    for start, piece in pieces:
        index = torch.arange(start, start + piece.shape[1], device=ref.device)
        per_edge = per_edge.index_add(1, index, piece)
    if slot in ("m", "w"):
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
        dim_y = tp.irreps_in2.dim
        for g, plan in zip(tp._groups, tp._plans):
            U = g.U
            xo, d1s, d3s, oo, wo, mo, blocks, o, mcols = [], [], [], [], [], [], [], 0, 0
            # the paths in the plan's order of output columns (see TensorProduct._build_channelwise)
            for i in sorted({p.i_in1 for _, p, _ in g.paths}):
                dim1 = in1[i].ir.dim
                for d in sorted({out[p.i_out].ir.dim for _, p, _ in g.paths if p.i_in1 == i}):
                    sub = sorted([t for t in g.paths if t[1].i_in1 == i and out[t[1].i_out].ir.dim == d],
                                 key=lambda t: tp._irreps_out.slices()[t[1].i_out].start)
                    for off, p, c in sub:
                        l1, l2, lo = in1[p.i_in1].ir.l, in2[p.i_in2].ir.l, out[p.i_out].ir.l
                        # [j, k, i]: the harmonics' component j to the coupling's entry (k, i)
                        block = torch.zeros(dim_y, d, dim1, dtype=torch.float64)
                        block[s2[p.i_in2]:s2[p.i_in2] + 2 * l2 + 1] = \
                            (c * wigner_3j(l1, l2, lo).to(torch.float64)).permute(1, 2, 0)
                        blocks.append(block.reshape(dim_y, d * dim1))
                        xo.append(s1[i]), d1s.append(dim1), d3s.append(d), oo.append(o), wo.append(off)
                        mo.append(mcols)
                        o += d * U
                        mcols += d * dim1
            coupling = torch.cat(blocks, dim=1).to(torch.get_default_dtype())
            self.specs.append((_Spec(U, xo, d1s, d3s, oo, wo, mo, coupling, tp.irreps_in1.dim, o, tp.weight_numel),
                               plan))

    def available(self, *tensors: torch.Tensor) -> bool:
        """Whether the kernels of every group run on these tensors now."""
        return self.supported and all(_native_ok(spec, tensors) for spec, _ in self.specs)

    def __call__(self, tp, x, sender, y, weight, receiver, dim_size: int) -> torch.Tensor:
        sender, receiver = sender.long(), receiver.long()
        E = y.shape[0]
        if sender.shape != (E,) or receiver.shape != (E,):
            raise ValueError(f"sender {tuple(sender.shape)} and receiver {tuple(receiver.shape)} must each hold one "
                             f"index per edge ({E} edges)")
        if E:  # the kernels read and write by these indices: check them first
            for name, index, n in (("sender", sender, x.shape[0]), ("receiver", receiver, dim_size)):
                low, high = torch.aminmax(index)
                if int(low) < 0 or int(high) >= n:
                    raise IndexError(f"{name} indices must lie in [0, {n}), got {int(low)} to {int(high)}")
        graph = _Graph(sender, receiver, x.shape[0], dim_size)
        xt = self.x_map(tp, x)
        out = None
        for spec, plan in self.specs:
            m = y @ spec.coupling_as(y)  # [E, sum_p d3 d1]: each path's coupling on each edge
            piece = tp._place(plan, _partial("g", graph, spec, xt, m, weight, None))
            out = piece if out is None else out + piece
        return out
