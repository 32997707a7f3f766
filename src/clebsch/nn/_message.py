"""Weighted sums of neighbours' features, without per-edge copies: ``out_i = sum_j w_ij * x_j``.

Most message-passing layers spend their time on one pattern: gather the
senders' features to the edges, multiply them by a per-edge filter, and add
the products into the receivers. In eager PyTorch that is three passes over an
``[E, ...]`` tensor (a gather, a product, a scatter-add) and two more tensors of
that size kept for the backward; force training differentiates it twice.

:func:`message_sum` computes the same sum in one pass and keeps only its
inputs. Features ``x [N, A, C]`` (``A`` components of ``C`` channels) and
weights ``w [E, B, C]`` with a map ``part [A]`` from components to weight rows:

.. math:: \\mathrm{out}_{i a c} = \\sum_{e:\\, r_e = i} w_{e,\\, \\mathrm{part}(a),\\, c}\\; x_{s_e a c}

(``s`` the senders, ``r`` the receivers). Its derivatives are the same sum with
senders and receivers swapped (for ``x``) and :func:`edge_dot` (for ``w``),
``d_{e b c} = sum_{a: part(a) = b} x_{s_e a c} g_{r_e a c}``, whose own
derivatives are again the two, so the closed pair is differentiable to any
order: forces and their training, Hessians.

On the CPU both run as small C kernels (:mod:`clebsch.o3._native`), one
thread per block of receivers (edges ordered by receiver once per graph:
:class:`Edges`), in a fixed order, so the results do not depend on the number
of threads; below 65,536 products per call (a few hundred edges), where the
calls' fixed cost outweighs the gain, PyTorch operations run. Elsewhere (a GPU, no compiler, ``CLEBSCH_NATIVE=0``, tracing for
``torch.compile`` or export, ``vmap``) the same sums run as PyTorch operations.
"""

from __future__ import annotations

import ctypes

import torch

from ..o3 import _native
from ..o3._cache import tracing

__all__ = ["Edges", "message_sum", "edge_dot"]


class Edges:
    """Senders and receivers of a graph, with each side's edges in order of that side's node (built lazily).

    ``sender`` and ``receiver`` are ``[E]`` long tensors. Pass one ``Edges`` to all
    the :func:`message_sum` calls of a forward pass so that the orderings are
    computed once.
    """

    def __init__(self, sender: torch.Tensor, receiver: torch.Tensor, num_nodes: int):
        if sender.shape != receiver.shape or sender.dim() != 1:
            raise ValueError(f"sender and receiver must be [E] index tensors of one length, got shapes "
                             f"{tuple(sender.shape)} and {tuple(receiver.shape)}")
        # the kernels read the indices as contiguous int64
        self.sender, self.receiver = sender.long().contiguous(), receiver.long().contiguous()
        self.num_nodes = num_nodes
        self._csr: dict = {}
        self._checked = False

    def check(self) -> None:
        """Raise unless every index is a node in ``[0, num_nodes)`` (the kernels read memory by them)."""
        if self._checked or self.sender.numel() == 0:
            return
        for name, index in (("sender", self.sender), ("receiver", self.receiver)):
            lo, hi = (int(v) for v in torch.aminmax(index))
            if lo < 0 or hi >= self.num_nodes:
                raise IndexError(f"edge {name} index {lo if lo < 0 else hi} is not a node of {self.num_nodes}")
        self._checked = True

    def reversed(self) -> "Edges":
        """The same edges with senders and receivers swapped (sharing the cached orderings)."""
        rev = Edges.__new__(Edges)
        rev.sender, rev.receiver, rev.num_nodes = self.receiver, self.sender, self.num_nodes
        rev._checked = self._checked
        rev._csr = {"receiver": self._csr.get("sender"), "sender": self._csr.get("receiver")}
        rev._csr = {k: v for k, v in rev._csr.items() if v is not None}
        rev._parent = self
        return rev

    def csr(self, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(order, start)``: the edges sorted by ``side``'s node (stable) and where each node's run starts."""
        if side not in self._csr:
            index = self.receiver if side == "receiver" else self.sender
            fns = _kernels(torch.float64) if index.device.type == "cpu" else None
            if fns is not None:  # a counting sort
                E, N = index.shape[0], int(self.num_nodes)
                start = torch.empty(N + 1, dtype=torch.long)
                order = torch.empty(E + N, dtype=torch.long)
                fns[3](index.data_ptr(), E, N, start.data_ptr(), order.data_ptr())
                order = order[:E]
            else:
                order = torch.sort(index, stable=True).indices
                start = torch.zeros(self.num_nodes + 1, dtype=torch.long, device=index.device)
                torch.cumsum(torch.bincount(index, minlength=self.num_nodes), 0, out=start[1:])
            self._csr[side] = (order, start)
            parent = getattr(self, "_parent", None)
            if parent is not None:  # share with the edges this was reversed from
                parent._csr.setdefault("sender" if side == "receiver" else "receiver", self._csr[side])
        return self._csr[side]


_SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* the edges in order of their node index[e] (stable), and where each node's run starts: a counting sort */
void order_by(const int64_t* restrict index, int64_t E, int64_t N, int64_t* restrict start, int64_t* restrict order) {
    memset(start, 0, sizeof(int64_t) * (N + 1));
    for (int64_t e = 0; e < E; ++e) ++start[index[e] + 1];
    for (int64_t i = 0; i < N; ++i) start[i + 1] += start[i];
    int64_t* restrict next = order + E;  /* scratch: E + N entries were allocated */
    memcpy(next, start, sizeof(int64_t) * N);
    for (int64_t e = 0; e < E; ++e) order[next[index[e]]++] = e;
}

/* out[i, a, :] = sum over edges e into i of w[e, part[a], :] * x[sender[e], a, :], for i in [lo, hi) */
static __attribute__((noinline)) void message_sum_rows(
        const T* restrict w, const T* restrict x, const int64_t* restrict sender, const int64_t* restrict order,
        const int64_t* restrict start, const int64_t* restrict part, T* restrict out, int64_t A, int64_t B,
        int64_t C, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
        T* restrict o = out + i * A * C;
        memset(o, 0, sizeof(T) * A * C);
        for (int64_t t = start[i]; t < start[i + 1]; ++t) {
            const int64_t e = order[t];
            const T* restrict xe = x + sender[e] * A * C;
            const T* restrict we = w + e * B * C;
            for (int64_t a = 0; a < A; ++a) {
                const T* restrict wa = we + part[a] * C;
                const T* restrict xa = xe + a * C;
                T* restrict oa = o + a * C;
                for (int64_t c = 0; c < C; ++c) oa[c] += wa[c] * xa[c];
            }
        }
    }
}

/* the loops run outside OpenMP's outlined regions (inside one, on one thread, they lost their vectorisation) */
void message_sum(const T* w, const T* x, const int64_t* sender, const int64_t* order, const int64_t* start,
                 const int64_t* part, T* out, int64_t A, int64_t B, int64_t C, int64_t lo, int64_t hi, int threads) {
    if (threads <= 1) {
        message_sum_rows(w, x, sender, order, start, part, out, A, B, C, lo, hi);
        return;
    }
    const int64_t chunks = (hi - lo + 15) / 16;
    #pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t k = 0; k < chunks; ++k) {
        const int64_t l = lo + 16 * k, h = l + 16 < hi ? l + 16 : hi;
        message_sum_rows(w, x, sender, order, start, part, out, A, B, C, l, h);
    }
}

/* out[e, b, :] = sum over a with part[a] = b of x[sender[e], a, :] * g[receiver[e], a, :], for e in [lo, hi) */
static __attribute__((noinline)) void edge_dot_rows(
        const T* restrict x, const T* restrict g, const int64_t* restrict sender, const int64_t* restrict receiver,
        const int64_t* restrict part, T* restrict out, int64_t A, int64_t B, int64_t C, int64_t lo, int64_t hi) {
    for (int64_t e = lo; e < hi; ++e) {
        T* restrict o = out + e * B * C;
        memset(o, 0, sizeof(T) * B * C);
        const T* restrict xe = x + sender[e] * A * C;
        const T* restrict ge = g + receiver[e] * A * C;
        for (int64_t a = 0; a < A; ++a) {
            T* restrict ob = o + part[a] * C;
            const T* restrict xa = xe + a * C;
            const T* restrict ga = ge + a * C;
            for (int64_t c = 0; c < C; ++c) ob[c] += xa[c] * ga[c];
        }
    }
}

void edge_dot(const T* x, const T* g, const int64_t* sender, const int64_t* receiver, const int64_t* part, T* out,
              int64_t A, int64_t B, int64_t C, int64_t lo, int64_t hi, int threads) {
    if (threads <= 1) {
        edge_dot_rows(x, g, sender, receiver, part, out, A, B, C, lo, hi);
        return;
    }
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int k = 0; k < threads; ++k)
        edge_dot_rows(x, g, sender, receiver, part, out, A, B, C, lo + (hi - lo) * k / threads,
                      lo + (hi - lo) * (k + 1) / threads);
}
"""

_KERNELS: dict = {}
# below this many products per call (edges x components x channels) the calls' fixed cost outweighs the gain
# (a few hundred edges of a small molecule): PyTorch operations
_NATIVE_FROM = 65536


def _kernels(dtype: torch.dtype):
    """``(message_sum, edge_dot, openmp, order_by)`` for ``dtype``, or ``None`` where no kernel can be built."""
    if dtype not in _KERNELS:
        ctype = {torch.float32: "float", torch.float64: "double"}.get(dtype)
        lib = _native.load("message", f"#define T {ctype}\n" + _SOURCE) if ctype else None
        fns = None
        if lib is not None:
            p, n = ctypes.c_void_p, ctypes.c_int64
            lib.message_sum.argtypes = [p] * 7 + [n] * 5 + [ctypes.c_int]
            lib.edge_dot.argtypes = [p] * 6 + [n] * 5 + [ctypes.c_int]
            lib.order_by.argtypes = [p, n, n, p, p]
            lib.message_sum.restype = lib.edge_dot.restype = lib.order_by.restype = None
            fns = (lib.message_sum, lib.edge_dot, lib.openmp, lib.order_by)
        _KERNELS[dtype] = fns
    return _KERNELS[dtype]


def _native_ok(*tensors) -> bool:
    return _native.usable(*tensors) and _kernels(tensors[0].dtype) is not None


def _check(w, x, edges: Edges, part, wname: str, xname: str, num_parts: int | None = None):
    """``part`` as a tuple of ints (or ``None``) after checking the shapes against each other."""
    if x.dim() != 3:
        raise ValueError(f"{xname} must be [N, A, C] (nodes, components, channels), got shape {tuple(x.shape)}")
    if w is not None and w.dim() != 3:
        raise ValueError(f"{wname} must be [E, B, C] (edges, weight rows, channels), got shape {tuple(w.shape)}")
    if tracing():  # symbolic sizes: no checks that would specialise them
        return None if part is None else tuple(int(p) for p in part)
    if x.shape[0] != edges.num_nodes:
        raise ValueError(f"{xname} has {x.shape[0]} rows, expected one per node ({edges.num_nodes})")
    rows = num_parts if w is None else w.shape[1]
    if w is not None and (w.shape[0] != edges.sender.shape[0] or w.shape[2] != x.shape[2]):
        raise ValueError(f"{wname} has shape {tuple(w.shape)}, expected [{edges.sender.shape[0]} edges, B, "
                         f"{x.shape[2]} channels] for {xname} of shape {tuple(x.shape)}")
    if part is None:
        if rows != 1:
            raise ValueError(f"{rows} weight rows need a part for each of the {x.shape[1]} components")
        return None
    part = tuple(int(p) for p in part)
    if len(part) != x.shape[1] or any(not 0 <= p < rows for p in part):
        raise ValueError(f"part {part} must give each of the {x.shape[1]} components a weight row in [0, {rows})")
    return part


_PARTS: dict = {}


def _part_tensor(part, A: int, device) -> torch.Tensor:
    """``part`` (all zeros if ``None``) as a long tensor, kept for reuse (outside tracing)."""
    key = (part, A, str(device))
    t = _PARTS.get(key)
    if t is None:
        t = torch.as_tensor(part if part is not None else [0] * A, dtype=torch.long, device=device)
        if not tracing():
            _PARTS[key] = t
    return t


def _message_sum_torch(w, x, edges: Edges, part):
    wa = w if part is None else w.index_select(1, _part_tensor(part, x.shape[1], w.device))  # [E, A or 1, C]
    msg = wa * x.index_select(0, edges.sender)
    return msg.new_zeros((edges.num_nodes,) + tuple(x.shape[1:])).index_add_(0, edges.receiver, msg)


def _edge_dot_torch(x, g, edges: Edges, part, B: int):
    prod = x.index_select(0, edges.sender) * g.index_select(0, edges.receiver)  # [E, A, C]
    if B == prod.shape[1] and (part is None or list(part) == list(range(B))):
        return prod
    if B == 1:
        return prod.sum(1, keepdim=True)
    p = _part_tensor(part, prod.shape[1], prod.device)
    return prod.new_zeros(prod.shape[0], B, prod.shape[2]).index_add_(1, p, prod)


class _MessageSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, x, edges, part):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w, x)
        ctx.edges, ctx.part = edges, part
        w, x = w.contiguous(), x.contiguous()
        A, C = x.shape[1], x.shape[2]
        out = x.new_empty(edges.num_nodes, A, C)
        order, start = edges.csr("receiver")
        p = _part_tensor(part, A, x.device)
        fn, _, openmp, _ = _kernels(x.dtype)
        _native.parallel_for(fn, edges.num_nodes, w.data_ptr(), x.data_ptr(), edges.sender.data_ptr(),
                             order.data_ptr(), start.data_ptr(), p.data_ptr(), out.data_ptr(), A, w.shape[1], C,
                             openmp=openmp, grain=64)
        return out

    @staticmethod
    def backward(ctx, g):
        if g is None:
            return None, None, None, None
        w, x = ctx.saved_tensors
        edges, part = ctx.edges, ctx.part
        gw = edge_dot(x, g, edges, part, w.shape[1]) if ctx.needs_input_grad[0] else None
        gx = message_sum(w, g, edges.reversed(), part) if ctx.needs_input_grad[1] else None
        return gw, gx, None, None


class _EdgeDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, g, edges, part, B):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, g)
        ctx.edges, ctx.part = edges, part
        x, g = x.contiguous(), g.contiguous()
        A, C = x.shape[1], x.shape[2]
        E = edges.sender.shape[0]
        out = x.new_empty(E, B, C)
        p = _part_tensor(part, A, x.device)
        _, fn, openmp, _ = _kernels(x.dtype)
        _native.parallel_for(fn, E, x.data_ptr(), g.data_ptr(), edges.sender.data_ptr(), edges.receiver.data_ptr(),
                             p.data_ptr(), out.data_ptr(), A, B, C, openmp=openmp, grain=1024)
        return out

    @staticmethod
    def backward(ctx, h):
        if h is None:
            return None, None, None, None, None
        x, g = ctx.saved_tensors
        edges, part = ctx.edges, ctx.part
        gx = message_sum(h, g, edges.reversed(), part) if ctx.needs_input_grad[0] else None
        gg = message_sum(h, x, edges, part) if ctx.needs_input_grad[1] else None
        return gx, gg, None, None, None


def message_sum(w: torch.Tensor, x: torch.Tensor, edges: Edges, part=None) -> torch.Tensor:
    """``out[i, a, c] = sum_{e: receiver[e] = i} w[e, part[a], c] * x[sender[e], a, c]``: ``[num_nodes, A, C]``.

    ``x`` is ``[N, A, C]``, ``w`` is ``[E, B, C]``; ``part`` (a tuple of ``A`` ints
    below ``B``) says which weight row each component takes, default all row 0
    (``B = 1``: one weight per edge and channel for every component).

    Examples
    --------
    >>> edges = Edges(torch.tensor([0, 1, 2]), torch.tensor([1, 0, 0]), 3)
    >>> x = torch.arange(6.0).view(3, 2, 1)
    >>> w = torch.tensor([[[1.0]], [[10.0]], [[100.0]]])
    >>> message_sum(w, x, edges)[:, :, 0].tolist()
    [[420.0, 530.0], [0.0, 1.0], [0.0, 0.0]]
    """
    part = _check(w, x, edges, part, "w", "x")
    if not tracing() and w.shape[0] * x.shape[1] * x.shape[2] >= _NATIVE_FROM and _native_ok(w, x):
        edges.check()
        return _MessageSum.apply(w, x, edges, part)
    return _message_sum_torch(w, x, edges, part)


def edge_dot(x: torch.Tensor, g: torch.Tensor, edges: Edges, part=None, num_parts: int = 1) -> torch.Tensor:
    """``out[e, b, c] = sum_{a: part[a] = b} x[sender[e], a, c] * g[receiver[e], a, c]``: ``[E, num_parts, C]``.

    The derivative of :func:`message_sum` with respect to its weights.
    """
    part = _check(None, x, edges, part, "", "x", num_parts)
    if g.dim() != 3 or g.shape[1:] != x.shape[1:]:
        raise ValueError(f"g must be [N, A, C] like x {tuple(x.shape)}, got {tuple(g.shape)}")
    if not tracing() and edges.sender.shape[0] * x.shape[1] * x.shape[2] >= _NATIVE_FROM and _native_ok(x, g):
        edges.check()
        return _EdgeDot.apply(x, g, edges, part, num_parts)
    return _edge_dot_torch(x, g, edges, part, num_parts)
