"""Clebsch-Gordan tensor products compiled into grouped dense contractions.

A :class:`TensorProduct` is described by typed :class:`~clebsch.nn.Path`
objects. At construction the paths are grouped by connection mode and
multiplicities; each group becomes one block-sparse Clebsch-Gordan tensor
``C[I, J, K]`` (a buffer) where ``I`` / ``J`` run over the concatenated
components of the first / second inputs it uses and ``K`` over the concatenated
output components of its paths, with the path normalisation folded in. At run
time a group costs

1. two index gathers (``mul_ir`` layout -> ``[z, u, I]`` and ``[z, v, J]``),
2. ``M[z, v, I, K] = sum_j C[I, j, K] x2[z, v, j]`` (the small input first),
3. one batched matmul ``T[z, u, v, K] = sum_I x1[z, u, I] M[z, I, v, K]``,
4. the path weights, expanded once to the ``K`` axis by an index gather, applied
   element-wise (mode ``uvw``: one contraction per distinct output dimension),
5. one index gather back to the ``mul_ir`` layout of the output (a permutation
   whose backward is the inverse permutation; an index add where paths share
   an output).

There is no Python loop over paths at run time, and every operation is a plain
differentiable torch op, so double backward (forces) works.

The channel-wise groups of message passing (mode ``uvu``, one copy of the second
input, weights per edge) have their own plan, cheaper in memory traffic: per
block of the first input, one batched matmul with the channels innermost, the
weights applied without expanding them, and no reordering per edge;
:meth:`TensorProduct.scatter_sum` sums the edges into their receivers before
the components are put in the order of ``irreps_out``.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

from ..o3 import Irreps, wigner_3j
from ._fused_conv import FusedChannelwise
from ._index import ColumnMap
from ._path import MODES, Path

__all__ = [
    "TensorProduct",
    "FullyConnectedTensorProduct",
    "ChannelwiseTensorProduct",
    "ElementwiseTensorProduct",
    "FullTensorProduct",
]


def _as_path(p) -> Path:
    if isinstance(p, Path):
        return p
    return Path(*p)


def _path_shape(mode: str, u: int, v: int, w: int) -> tuple:
    return {"uvw": (u, v, w), "uvu": (u, v), "uvv": (u, v), "uuu": (u,), "uvuv": (u, v)}[mode]


def _num_elements(mode: str, u: int, v: int) -> int:
    return {"uvw": u * v, "uvu": v, "uvv": u, "uuu": 1, "uvuv": 1}[mode]


class _Group:
    """Static description of one group of paths with the same mode and multiplicities."""

    def __init__(self, mode, has_weight, mul1, mul2, mul_out):
        self.mode, self.has_weight = mode, has_weight
        self.U, self.V, self.W = mul1, mul2, mul_out
        self.paths: list[tuple[int, Path, float]] = []  # (weight offset, path, coefficient)


def _used_inputs(g: "_Group", in1, in2) -> tuple:
    """Irreps of each input that the group's paths use, their offsets in the group's compact
    layout, and the layouts' sizes: ``(used1, off1, I, used2, off2, J)``."""
    out = []
    for irreps, key in ((in1, "i_in1"), (in2, "i_in2")):
        used = sorted({getattr(p, key) for _, p, _ in g.paths})
        offsets, size = {}, 0
        for i in used:
            offsets[i] = size
            size += irreps[i].ir.dim
        out += [used, offsets, size]
    return tuple(out)


def resolve_weight_options(internal_weights: bool | None, shared_weights: bool | None) -> tuple[bool, bool]:
    """e3nn's defaults for weight options: shared and internal unless said otherwise.

    Returns ``(internal_weights, shared_weights)``; internal weights must be shared.
    """
    if shared_weights is None:
        shared_weights = True if internal_weights is None else internal_weights
    if internal_weights is None:
        internal_weights = shared_weights
    if internal_weights and not shared_weights:
        raise ValueError("internal_weights=True requires shared_weights=True")
    return bool(internal_weights), bool(shared_weights)


# ------------------------------------------------------------ channel-wise convolution
def _cw_blocks(plan, sizes1, x1, x2, w, C):
    """Per block of input 1 of a channel-wise plan: ``(i, d1, pieces, a, M, wb)``.

    ``a`` ``[z, U, d1]`` is the block of ``x1``, ``M = x2 @ C`` ``[z, K, d1]`` its
    Clebsch-Gordan factor, ``wb`` ``[z, Q, U]`` the weights of its ``Q`` paths and
    ``pieces`` ``[(P, d, r, q)]`` where each piece starts in the rows ``K`` (``r``) and ``Q`` (``q``).
    """
    z, U = x1.shape[0], plan["U"]
    xs = x1.split(sizes1, dim=1)
    wbs = w.split(plan["qsizes"], dim=1)
    out = []
    for (i, d1, ps), M, wb in zip(plan["blocks"], (x2 @ C).split(plan["csizes"], dim=1), wbs):
        pieces, r, q = [], 0, 0
        for P, d in ps:
            pieces.append((P, d, r, q))
            r, q = r + P * d, q + P
        out.append((i, d1, pieces, xs[i].reshape(z, U, d1), M.view(z, -1, d1), wb.view(z, -1, U)))
    return out


def _cw_scatter(plan, sizes1, rows, x1, x2, w, C, index, n):
    """The pieces of a channel-wise plan summed into ``n`` receivers: ``[n, sum(P * d * U)]``."""
    z, U = x1.shape[0], plan["U"]
    out = []
    for i, d1, pieces, a, M, wb in _cw_blocks(plan, sizes1, x1, x2, w, C):
        T = None if d1 == 1 else _outer(M, a)  # [z, K, U]
        for P, d, r, q in pieces:
            wp = wb[:, q : q + P].reshape(z, P, 1, U)
            if d1 == 1:  # an outer product, the weights folded into the small factor
                y = M[:, r : r + P * d].reshape(z, P, d, 1) * (a.view(z, 1, 1, U) * wp)
            else:
                y = T[:, r : r + P * d].reshape(z, P, d, U) * wp
            out.append(x1.new_zeros(n, P * d * U).index_add(0, index, y.reshape(z, -1)))
    return torch.cat(out, dim=1) if len(out) > 1 else out[0]


def _path_sum(t, S):
    """``[z, K, U]`` -> ``[z, Q * U]``: the sum of each path's rows (``S`` ``[Q, K]`` says which are whose)."""
    return torch.bmm(S.expand(t.shape[0], -1, -1), t).reshape(t.shape[0], -1)


def _expand(wb, rows):
    """The weights of a block's paths ``[z, Q, U]`` on the rows of their outputs: ``[z, K, U]``."""
    return wb.contiguous().index_select(1, rows)


def _outer(M, a):
    """``M a^T`` for ``M`` ``[z, K, d1]`` and ``a`` ``[z, U, d1]`` -> ``[z, K, U]``."""
    return torch.bmm(M, a.transpose(1, 2)) if M.shape[2] > 1 else M * a.transpose(1, 2)


def _mT(a, b):
    """``a^T b`` for ``a`` ``[z, k, m]`` and ``b`` ``[z, k, u]`` -> ``[z, m, u]``."""
    return torch.bmm(a.transpose(1, 2), b)


def _add(x, y):
    return y if x is None else x + y


def _cw_grads(plan, sizes1, rows, G, x1, x2, w, C, index, need):
    """Derivatives ``(x1, x2, w)`` of ``sum(G * _cw_scatter(...))``; ``None`` where ``need`` says so.

    Block by block: the per-edge gradient ``G[index]`` ``[z, K, U]``, times the weights
    expanded to the rows ``K``, contracted in two batched matmuls whose results have the
    channels innermost; the product with ``x1`` that the weights' derivative needs is recomputed.
    """
    z, U = x1.shape[0], plan["U"]
    gx1, gM, gw = [None] * len(sizes1), [], []
    blocks = _cw_blocks(plan, sizes1, x1, x2, w, C)
    for (i, d1, pieces, a, M, wb), Gb, (rb, S) in zip(blocks, G.split(plan["bsizes"], dim=1), rows):
        ge = Gb.index_select(0, index).view(z, -1, U)
        if need[2] and d1 == 1:  # the path sums of M G[index], times a: no product per edge and component
            gw.append((torch.bmm(S * M.transpose(1, 2), ge) * a.transpose(1, 2)).reshape(z, -1))
        elif need[2]:
            gw.append(_path_sum(ge * _outer(M, a), S))
        if need[0] or need[1]:
            A = ge * _expand(wb, rb)
            ge = None
            if need[0]:
                gx1[i] = _mT(M, A).transpose(1, 2)  # [z, U, d1]
            if need[1]:
                gM.append(_mT(a.contiguous(), A.transpose(1, 2)).transpose(1, 2).reshape(z, -1))
            A = None
        ge = None
    out1 = out2 = outw = None
    if need[0]:
        out1 = torch.cat([x1.new_zeros(z, s) if g is None else g.reshape(z, s) for g, s in zip(gx1, sizes1)], dim=1)
    if need[1]:
        out2 = torch.cat(gM, dim=1) @ C.t()
    if need[2]:
        outw = torch.cat(gw, dim=1)
    return out1, out2, outw


def _cw_grads_backward(plan, sizes1, rows, G, x1, x2, w, C, index, gg1, gg2, ggw, need):
    """Derivatives ``(G, x1, x2, w)`` of ``sum(gg * _cw_grads(...))`` (``gg`` ``None``: zero), made of
    differentiable operations, so that they have derivatives too.

    Per block, with ``A = G[index] w`` and ``T = M a^T``, ``_cw_grads`` gives ``A^T M`` (to ``a``),
    ``A a`` (to ``M``) and the path sums of ``G[index] T`` (to ``w``); the tensors per edge and
    component are made one block at a time and let go as soon as they are used.
    """
    z, U = x1.shape[0], plan["U"]
    n = G.shape[0]
    ggs1 = gg1.split(sizes1, dim=1) if gg1 is not None else None
    ggMs = (gg2 @ C).split(plan["csizes"], dim=1) if gg2 is not None else None
    ggws = ggw.split(plan["qsizes"], dim=1) if ggw is not None else None
    dG, dx1, dM, dw = [], [None] * len(sizes1), [], []
    blocks = _cw_blocks(plan, sizes1, x1, x2, w, C)
    for b, ((i, d1, pieces, a, M, wb), Gb, (rb, S)) in enumerate(zip(blocks, G.split(plan["bsizes"], dim=1), rows)):
        K = M.shape[1]
        ggx = ggs1[i].reshape(z, U, d1) if ggs1 is not None else None
        ggM = ggMs[b].view(z, K, d1) if ggMs is not None else None
        ge = Gb.index_select(0, index).view(z, K, U)
        wx = _expand(wb, rb)
        da = dm = dge = None  # to a [z, d1, U], to M [z, d1, K], to G[index] [z, K, U]
        # through A = G[index] w: A^T M and A a meet ggx and ggM
        if ggM is not None or ggx is not None:
            lhs = ([ggM] if ggM is not None else []) + ([M] if ggx is not None else [])
            rhs = ([a] if ggM is not None else []) + ([ggx] if ggx is not None else [])
            if d1 == 1 and len(lhs) == 2:
                dA = torch.addcmul(ggM * a.transpose(1, 2), M, ggx.transpose(1, 2))
            else:
                dA = _outer(torch.cat(lhs, 2), torch.cat(rhs, 2))  # [z, K, U]
            if need[3]:
                dw.append(_path_sum(dA * ge, S))
            if need[0]:
                dge = dA * wx
            dA = None
            if (need[1] and ggM is not None) or (need[2] and ggx is not None):
                A = ge * wx
                if need[1] and ggM is not None:
                    da = _mT(ggM, A)
                if need[2] and ggx is not None:
                    dm = _mT(ggx.contiguous(), A.transpose(1, 2))
                A = None
        elif need[3]:
            dw.append(wb.new_zeros(z, wb.shape[1] * U))
        wx = None
        # through T = M a^T: the path sums of G[index] T meet ggw
        if ggws is not None:
            ggwx = _expand(ggws[b].view(z, -1, U), rb)
            if need[0]:
                T = _outer(M, a)
                dge = T * ggwx if dge is None else torch.addcmul(dge, T, ggwx)
                T = None
            if need[1] or need[2]:
                B = ge * ggwx
                ggwx = None
                if need[1]:
                    da = _add(da, _mT(M, B))
                if need[2]:
                    dm = _add(dm, _mT(a.contiguous(), B.transpose(1, 2)))
                B = None
            ggwx = None
        ge = None
        if need[0]:
            zero = G.new_zeros(n, K * U)
            dG.append(zero if dge is None else zero.index_add(0, index, dge.view(z, -1)))
            dge = None
        if need[1] and da is not None:
            dx1[i] = da.transpose(1, 2)
        if need[2]:
            dM.append(M.new_zeros(z, K * d1) if dm is None else dm.transpose(1, 2).reshape(z, -1))
    out = [None, None, None, None]
    if need[0]:
        out[0] = torch.cat(dG, dim=1) if len(dG) > 1 else dG[0]
    if need[1]:
        out[1] = torch.cat([x1.new_zeros(z, s) if g is None else g.reshape(z, s) for g, s in zip(dx1, sizes1)], 1)
    if need[2]:
        out[2] = torch.cat(dM, dim=1) @ C.t()
    if need[3]:
        out[3] = torch.cat(dw, dim=1)
    return tuple(out)


class _ChannelwiseScatter(torch.autograd.Function):
    """``_cw_scatter`` that keeps only its inputs for the backward pass, whose products per edge it recomputes.

    Its backward is :class:`_ChannelwiseScatterGrad`, which keeps its inputs too: the per-node
    gradient and the same per-edge inputs, so that force training (a backward with
    ``create_graph``, then a second backward) holds no tensor per edge and per output component.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x1, x2, w, C, index, n, plan, sizes1, rows):
        return _cw_scatter(plan, sizes1, rows, x1, x2, w, C, index, n)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x1, x2, w, C, index, n, plan, sizes1, rows = inputs
        ctx.save_for_backward(x1, x2, w, C, index)
        ctx.args = (plan, sizes1, rows)

    @staticmethod
    def backward(ctx, G):
        x1, x2, w, C, index = ctx.saved_tensors
        need = tuple(ctx.needs_input_grad[:3])
        g1, g2, gw = _ChannelwiseScatterGrad.apply(G, x1, x2, w, C, index, *ctx.args, need)
        return g1, g2, gw, None, None, None, None, None, None


class _ChannelwiseScatterGrad(torch.autograd.Function):
    """``_cw_grads`` with its own derivatives (:func:`_cw_grads_backward`), the second derivatives of forces."""

    generate_vmap_rule = True

    @staticmethod
    def forward(G, x1, x2, w, C, index, plan, sizes1, rows, need):
        return _cw_grads(plan, sizes1, rows, G, x1, x2, w, C, index, need)

    @staticmethod
    def setup_context(ctx, inputs, output):
        G, x1, x2, w, C, index, plan, sizes1, rows, need = inputs
        ctx.save_for_backward(G, x1, x2, w, C, index)
        ctx.args = (plan, sizes1, rows)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gg1, gg2, ggw):
        G, x1, x2, w, C, index = ctx.saved_tensors
        need = tuple(ctx.needs_input_grad[:4])
        if gg1 is None and gg2 is None and ggw is None:
            return (None,) * 10
        out = _cw_grads_backward(*ctx.args, G, x1, x2, w, C, index, gg1, gg2, ggw, need)
        return out + (None,) * 6


class TensorProduct(torch.nn.Module):
    r"""General Clebsch-Gordan tensor product with e3nn 0.6 semantics.

    .. math:: z_{w k} = \sum_{\text{paths}} c_\text{path} \sum_{u v i j} W_{u v w}\, C_{i j k}\, x_{u i}\, y_{v j}

    with the multiplicity connection fixed by each path's ``mode``.

    Parameters
    ----------
    irreps_in1, irreps_in2, irreps_out : Irreps or str
    paths : iterable of Path
    irrep_normalization : {"component", "norm", "none"}
    path_normalization : {"element", "path", "none"}
    internal_weights : bool, optional
        Store the weights as a parameter (default: ``shared_weights``).
    shared_weights : bool, optional
        One weight vector for the whole batch (default ``True``). With
        ``False`` the weights are given per batch element at call time.
    in1_var, in2_var, out_var : list of float, optional
        Variances of the input / output blocks (default all ones).
    recompute_products : bool
        In :meth:`scatter_sum`, keep only the inputs of the channel-wise groups for the
        backward pass and recompute their products per edge there (default ``False``):
        force training then holds no tensor per edge and output component, at the cost
        of more arithmetic. Also an attribute, which can be changed after construction.

    Examples
    --------
    >>> from clebsch.nn import Path
    >>> tp = TensorProduct("2x1o", "1x1o", "2x0e + 2x1e", [Path(0, 0, 0, "uvu"), Path(0, 0, 1, "uvu")])
    >>> tp.weight_numel
    4
    >>> tp(torch.randn(5, 6), torch.randn(5, 3)).shape
    torch.Size([5, 8])
    """

    def __init__(
        self,
        irreps_in1,
        irreps_in2,
        irreps_out,
        paths: Iterable[Path],
        *,
        irrep_normalization: str = "component",
        path_normalization: str = "element",
        internal_weights: bool | None = None,
        shared_weights: bool | None = None,
        in1_var: Sequence[float] | None = None,
        in2_var: Sequence[float] | None = None,
        out_var: Sequence[float] | None = None,
        recompute_products: bool = False,
    ) -> None:
        super().__init__()
        self.irreps_in1 = Irreps(irreps_in1)
        self.irreps_in2 = Irreps(irreps_in2)
        self._irreps_out = Irreps(irreps_out)
        self.paths = tuple(_as_path(p) for p in paths)
        if irrep_normalization not in ("component", "norm", "none"):
            raise ValueError(f"irrep_normalization must be 'component', 'norm' or 'none', got {irrep_normalization!r}")
        if path_normalization not in ("element", "path", "none"):
            raise ValueError(f"path_normalization must be 'element', 'path' or 'none', got {path_normalization!r}")
        self.irrep_normalization = irrep_normalization
        self.path_normalization = path_normalization
        internal_weights, shared_weights = resolve_weight_options(internal_weights, shared_weights)
        self.internal_weights, self.shared_weights = internal_weights, shared_weights
        self.recompute_products = bool(recompute_products)

        in1 = list(self.irreps_in1)
        in2 = list(self.irreps_in2)
        out = list(self._irreps_out)
        in1_var = [1.0] * len(in1) if in1_var is None else [float(x) for x in in1_var]
        in2_var = [1.0] * len(in2) if in2_var is None else [float(x) for x in in2_var]
        out_var = [1.0] * len(out) if out_var is None else [float(x) for x in out_var]
        if (len(in1_var), len(in2_var), len(out_var)) != (len(in1), len(in2), len(out)):
            raise ValueError("in1_var / in2_var / out_var must have one entry per irrep of the corresponding irreps")

        for p in self.paths:
            self._check_path(p, in1, in2, out)

        # -- normalisation coefficients (e3nn 0.6 rules) --
        def n_el(p: Path) -> int:
            return _num_elements(p.mode, in1[p.i_in1].mul, in2[p.i_in2].mul)

        coeffs = []
        for p in self.paths:
            ir1, ir2, iro = in1[p.i_in1].ir, in2[p.i_in2].ir, out[p.i_out].ir
            alpha = {"component": iro.dim, "norm": ir1.dim * ir2.dim, "none": 1}[irrep_normalization]
            if path_normalization == "element":
                x = sum(in1_var[q.i_in1] * in2_var[q.i_in2] * n_el(q) for q in self.paths if q.i_out == p.i_out)
            elif path_normalization == "path":
                x = in1_var[p.i_in1] * in2_var[p.i_in2] * n_el(p)
                x *= sum(1 for q in self.paths if q.i_out == p.i_out)
            else:
                x = 1
            if x > 0:
                alpha /= x
            alpha *= out_var[p.i_out] * p.path_weight
            coeffs.append(math.sqrt(alpha))
        self.path_coefficients = tuple(coeffs)

        # -- weight layout: paths in order, each path_shape flattened row-major --
        offsets, numel = [], 0
        for p in self.paths:
            offsets.append(numel)
            if p.has_weight:
                numel += math.prod(_path_shape(p.mode, in1[p.i_in1].mul, in2[p.i_in2].mul, out[p.i_out].mul))
        self.weight_numel = numel

        # -- group paths --
        groups: dict[tuple, _Group] = {}
        for p, off, c in zip(self.paths, offsets, coeffs):
            m1, m2, mo = in1[p.i_in1].mul, in2[p.i_in2].mul, out[p.i_out].mul
            if m1 == 0 or m2 == 0 or mo == 0:
                continue
            key = (p.mode, p.has_weight, m1, m2, mo)
            if key not in groups:
                groups[key] = _Group(p.mode, p.has_weight, m1, m2, mo)
            groups[key].paths.append((off, p, c))
        self._groups = list(groups.values())
        out_starts = [s.start for s in self._irreps_out.slices()]
        in1_starts = [s.start for s in self.irreps_in1.slices()]
        in2_starts = [s.start for s in self.irreps_in2.slices()]
        self._in1_sizes = [m.dim for m in self.irreps_in1]
        self._plans = []
        for gi, g in enumerate(self._groups):
            self._plans.append(self._build_group(gi, g, in1, in2, out, in1_starts, in2_starts, out_starts))

        if self.internal_weights and self.weight_numel > 0:
            self.weight = torch.nn.Parameter(torch.randn(self.weight_numel))
        else:
            self.register_buffer("weight", torch.empty(0), persistent=False)
        # the channel-wise convolution as one pass over the edges (C kernels on the CPU)
        self._fused = FusedChannelwise(self, in1, in2, out, in1_starts, in2_starts)

    # ------------------------------------------------------------------ build
    def _check_path(self, p: Path, in1, in2, out) -> None:
        if p.mode not in MODES:
            raise ValueError(f"{p}: unknown mode {p.mode!r}, expected one of {MODES}")
        for name, idx, lst in (("i_in1", p.i_in1, in1), ("i_in2", p.i_in2, in2), ("i_out", p.i_out, out)):
            if not 0 <= idx < len(lst):
                raise ValueError(f"{p}: {name}={idx} is out of range for irreps with {len(lst)} entries")
        (m1, ir1), (m2, ir2), (mo, iro) = in1[p.i_in1], in2[p.i_in2], out[p.i_out]
        if ir1.p * ir2.p != iro.p:
            raise ValueError(f"{p}: parity violated, {ir1} x {ir2} cannot give {iro}")
        if not abs(ir1.l - ir2.l) <= iro.l <= ir1.l + ir2.l:
            raise ValueError(f"{p}: triangle rule violated, {ir1} x {ir2} cannot give {iro}")
        need = {"uvu": (m1, "mul of input 1"), "uvv": (m2, "mul of input 2"), "uuu": (m1, "mul of input 1"),
                "uvuv": (m1 * m2, "mul1 * mul2")}.get(p.mode)
        if need is not None and mo != need[0]:
            raise ValueError(f"{p}: mode {p.mode} needs output multiplicity {need[1]} = {need[0]}, got {mo}")
        if p.mode == "uuu" and m1 != m2:
            raise ValueError(f"{p}: mode uuu needs equal input multiplicities, got {m1} and {m2}")
        if p.mode == "uvw" and not p.has_weight:
            raise ValueError(f"{p}: mode uvw requires has_weight=True")

    def _build_group(self, gi, g: _Group, in1, in2, out, s1, s2, so) -> dict:
        U, V, W = g.U, g.V, g.W
        if g.mode == "uvu" and V == 1 and g.has_weight and not self.shared_weights:
            return self._build_channelwise(gi, g, in1, in2, out, s1, s2, so)
        if g.mode == "uvw" and V == 1 and g.has_weight and self.shared_weights:
            return self._build_uvw_shared(gi, g, in1, in2, out, s1, s2, so)
        if g.mode == "uuu" and all(in2[p.i_in2].ir.l == 0 for _, p, _ in g.paths):
            return self._build_scale(gi, g, in1, in2, out, s1, s2, so)
        # first input components used by the group: [U, I]
        used1, off1, I, used2, off2, J = _used_inputs(g, in1, in2)
        idx1 = [s1[i] + u * in1[i].ir.dim + m for u in range(U) for i in used1 for m in range(in1[i].ir.dim)]
        idx2 = [s2[i] + v * in2[i].ir.dim + m for v in range(V) for i in used2 for m in range(in2[i].ir.dim)]
        # paths ordered by output dimension -> contiguous K segments per dimension
        ordered = sorted(g.paths, key=lambda t: out[t[1].i_out].ir.dim)
        K = sum(out[p.i_out].ir.dim for _, p, _ in ordered)
        C = torch.zeros(I, J, K, dtype=torch.float64)
        k_of = []  # per K element: (weight offset, output index, component, path dimension)
        k = 0
        for off, p, c in ordered:
            l1, l2, lo = in1[p.i_in1].ir.l, in2[p.i_in2].ir.l, out[p.i_out].ir.l
            d = 2 * lo + 1
            C[off1[p.i_in1] : off1[p.i_in1] + 2 * l1 + 1, off2[p.i_in2] : off2[p.i_in2] + 2 * l2 + 1, k : k + d] = (
                c * wigner_3j(l1, l2, lo).to(torch.float64)
            )
            k_of += [(off, p.i_out, m, d) for m in range(d)]
            k += d
        mode = g.mode
        seg = []
        out_src = []  # flat output position of each element of the group's result
        widx = None
        if mode == "uvw":
            # weights mix u, v -> w per path: one contraction per distinct output dimension
            k = 0
            for d in sorted({t[3] for t in k_of}):
                ps = [(off, p) for off, p, _ in ordered if out[p.i_out].ir.dim == d]
                P = len(ps)
                w_d = [off + (u * V + v) * W + w for u in range(U) for v in range(V) for w in range(W) for off, _ in ps]
                seg.append(dict(k0=k, k1=k + P * d, d=d, P=P, widx=torch.tensor(w_d, dtype=torch.long)))
                k += P * d
                out_src += [so[p.i_out] + w * d + m for w in range(W) for _, p in ps for m in range(d)]
        else:
            # weights are element-wise over (u, v, K): expand them once to the K axis
            if mode in ("uvu", "uvv", "uvuv"):
                if g.has_weight:
                    widx = [off + u * V + v for u in range(U) for v in range(V) for off, _, _, _ in k_of]
                if mode == "uvu":
                    out_src = [so[o] + u * d + m for u in range(U) for _, o, m, d in k_of]
                elif mode == "uvv":
                    out_src = [so[o] + v * d + m for v in range(V) for _, o, m, d in k_of]
                else:
                    out_src = [so[o] + (u * V + v) * d + m for u in range(U) for v in range(V) for _, o, m, d in k_of]
            else:  # uuu
                if g.has_weight:
                    widx = [off + u for u in range(U) for off, _, _, _ in k_of]
                out_src = [so[o] + u * d + m for u in range(U) for _, o, m, d in k_of]
            if widx is not None:
                widx = torch.tensor(widx, dtype=torch.long)
        plan = dict(mode=mode, has_weight=g.has_weight, U=U, V=V, W=W, I=I, J=J, K=K, seg=seg)
        pre = f"_g{gi}_"
        plan["pre"] = pre
        dt = torch.get_default_dtype()
        plan["in1"] = ColumnMap(self, pre + "in1", idx1, self.irreps_in1.dim)
        plan["in2"] = ColumnMap(self, pre + "in2", idx2, self.irreps_in2.dim)
        if mode == "uuu":
            self.register_buffer(pre + "C", C.reshape(I * J, K).to(dt), persistent=False)
        else:  # [J, I*K] so that x2 is contracted first
            self.register_buffer(pre + "C", C.permute(1, 0, 2).reshape(J, I * K).to(dt), persistent=False)
        for si, sg in enumerate(seg):
            self.register_buffer(f"{pre}w{si}", sg.pop("widx"), persistent=False)
            sg["widx"] = f"{pre}w{si}"
        plan["widx"] = None
        if widx is not None:
            self.register_buffer(pre + "widx", widx, persistent=False)
            plan["widx"] = pre + "widx"
        # a permutation, or a scatter-add where several paths share an output or outputs stay zero
        plan["out"] = ColumnMap(self, pre + "out", out_src, self._irreps_out.dim, place=True)
        return plan

    def _build_uvw_shared(self, gi, g: _Group, in1, in2, out, s1, s2, so) -> dict:
        """Plan of a fully connected (``uvw``) group with shared weights and one copy of input 2.

        ``T[z, k, u] = sum_i M[z, i, k] a[z, u, i]`` with ``M = x2 @ C``, one batched
        matmul; ``K`` is ordered by output irrep, then component, then path, so that
        the rows of one output irrep are ``[z, d, P * U]`` and one matmul with its
        weights ``[(p, u), w]`` sums all its paths: no per-path einsum, no scatter.
        """
        U, W = g.U, g.W
        used1, off1, I, used2, off2, J = _used_inputs(g, in1, in2)
        idx1 = [s1[i] + u * in1[i].ir.dim + m for u in range(U) for i in used1 for m in range(in1[i].ir.dim)]
        idx2 = [s2[i] + m for i in used2 for m in range(in2[i].ir.dim)]
        by_out: dict = {}
        for off, p, c in g.paths:
            by_out.setdefault(p.i_out, []).append((off, p, c))
        K = sum(out[o].ir.dim * len(ps) for o, ps in by_out.items())
        C = torch.zeros(I, J, K, dtype=torch.float64)
        outs, out_src, k0 = [], [], 0
        pre = f"_g{gi}_"
        for o in sorted(by_out, key=lambda o: so[o]):
            ps, d = by_out[o], out[o].ir.dim
            for q, (off, p, c) in enumerate(ps):
                l1, l2 = in1[p.i_in1].ir.l, in2[p.i_in2].ir.l
                c3 = c * wigner_3j(l1, l2, out[o].ir.l).to(torch.float64)  # [2l1+1, 2l2+1, d]
                for m in range(d):  # K index of (output o, component m, path q)
                    C[off1[p.i_in1] : off1[p.i_in1] + 2 * l1 + 1, off2[p.i_in2] : off2[p.i_in2] + 2 * l2 + 1,
                      k0 + m * len(ps) + q] = c3[:, :, m]
            widx = [off + u * W + w for off, _, _ in ps for u in range(U) for w in range(W)]  # [(p, u), w]
            self.register_buffer(f"{pre}w{len(outs)}", torch.tensor(widx, dtype=torch.long), persistent=False)
            outs.append(dict(k0=k0, d=d, P=len(ps), widx=f"{pre}w{len(outs)}"))
            out_src += [so[o] + w * d + m for w in range(W) for m in range(d)]
            k0 += d * len(ps)
        dt = torch.get_default_dtype()
        self.register_buffer(pre + "C", C.permute(1, 0, 2).reshape(J, I * K).to(dt), persistent=False)
        plan = dict(mode="uvw_shared", pre=pre, U=U, W=W, I=I, J=J, K=K, outs=outs)
        plan["in1"] = ColumnMap(self, pre + "in1", idx1, self.irreps_in1.dim)
        plan["in2"] = ColumnMap(self, pre + "in2", idx2, self.irreps_in2.dim)
        # outputs that no path of this group reaches stay zero
        plan["out"] = ColumnMap(self, pre + "out", out_src, self._irreps_out.dim, place=True)
        return plan

    def _build_scale(self, gi, g: _Group, in1, in2, out, s1, s2, so) -> dict:
        """Plan of a ``uuu`` group whose second input is scalars (a gate: each irrep times its own scalar).

        ``l x 0 -> l`` couples each component to itself (the Clebsch-Gordan coefficients are
        ``delta_mm' / sqrt(2l + 1)``), so the product is ``x1`` times the scalars gathered onto its
        columns, times a constant per column: no outer product, no matmul.
        """
        U, pre = g.U, f"_g{gi}_"
        src1, src2, coef, cols, widx = [], [], [], [], []
        for off, p, c in g.paths:
            ir1, iro = in1[p.i_in1].ir, out[p.i_out].ir
            w3j = wigner_3j(ir1.l, 0, iro.l).to(torch.float64)[:, 0, :]  # [d, d], diagonal
            if not torch.equal(w3j, torch.diag(torch.diagonal(w3j))):  # pragma: no cover - l x 0 -> l
                raise AssertionError(f"{p}: l x 0 -> l is not diagonal")
            d = ir1.dim
            for u in range(U):
                for m in range(d):
                    src1.append(s1[p.i_in1] + u * d + m)
                    src2.append(s2[p.i_in2] + u)
                    coef.append(c * float(w3j[m, m]))
                    cols.append(so[p.i_out] + u * d + m)
                    if g.has_weight:
                        widx.append(off + u)
        plan = dict(mode="scale", pre=pre, widx=None)
        plan["in1"] = ColumnMap(self, pre + "in1", src1, self.irreps_in1.dim)
        plan["in2"] = ColumnMap(self, pre + "in2", src2, self.irreps_in2.dim)
        ones = all(x == 1.0 for x in coef)  # e3nn's gate: each irrep times its scalar, nothing else
        self.register_buffer(pre + "coef", None if ones else torch.tensor(coef, dtype=torch.get_default_dtype()),
                             persistent=False)
        if widx:
            self.register_buffer(pre + "widx", torch.tensor(widx, dtype=torch.long), persistent=False)
            plan["widx"] = pre + "widx"
        plan["out"] = ColumnMap(self, pre + "out", cols, self._irreps_out.dim, place=True)
        return plan

    def _build_channelwise(self, gi, g: _Group, in1, in2, out, s1, s2, so) -> dict:
        """Plan of a ``uvu`` group with one copy of input 2 and weights per batch element.

        The paths are cut into *pieces*: those with the same block of input 1
        (``a``, ``[z, U, d1]``, cut by ``split``, no gather) and the same output
        dimension ``d``. Per block, ``M = x2 @ C`` ``[z, K_i, d1]`` (one matmul for
        all blocks) and one batched matmul ``M @ a^T`` ``[z, K_i, U]`` (an outer
        product when ``d1 = 1``), cut into pieces ``[z, P, d, U]``, each times its
        weights ``w[z, P, 1, U]``. The channel axis ``U`` runs innermost so that
        the products with the weights are contiguous; ``cols`` says where the
        columns of each piece go in the output.
        """
        U = g.U
        pre = f"_g{gi}_"
        dt = torch.get_default_dtype()
        cols, Cs, steps, widx = [], [], [], []
        for i in sorted({p.i_in1 for _, p, _ in g.paths}):
            d1, l1 = in1[i].ir.dim, in1[i].ir.l
            for d in sorted({out[p.i_out].ir.dim for _, p, _ in g.paths if p.i_in1 == i}):
                sub = sorted([t for t in g.paths if t[1].i_in1 == i and out[t[1].i_out].ir.dim == d],
                             key=lambda t: so[t[1].i_out])
                P = len(sub)
                C = torch.zeros(self.irreps_in2.dim, P, d, d1, dtype=torch.float64)
                for j, (off, p, c) in enumerate(sub):
                    l2, lo = in2[p.i_in2].ir.l, out[p.i_out].ir.l
                    C[s2[p.i_in2] : s2[p.i_in2] + 2 * l2 + 1, j] = c * wigner_3j(l1, l2, lo).to(torch.float64).permute(1, 2, 0)
                Cs.append(C.reshape(-1, d1 * P * d))
                widx += [off + u for off, _, _ in sub for u in range(U)]
                steps.append((i, d1, P, d))
                cols += [so[p.i_out] + u * d + m for _, p, _ in sub for m in range(d) for u in range(U)]
        self.register_buffer(pre + "C", torch.cat(Cs, dim=1).to(dt), persistent=False)
        blocks = {}  # the pieces of one block of input 1 are consecutive
        for i, d1, P, d in steps:
            blocks.setdefault((i, d1), []).append((P, d))
        plan = dict(mode="channelwise", pre=pre, U=U, blocks=[(i, d1, ps) for (i, d1), ps in blocks.items()],
                    csizes=[d1 * sum(P * d for P, d in ps) for (i, d1), ps in blocks.items()],
                    wsizes=[P * U for _, _, P, _ in steps],
                    qsizes=[U * sum(P for P, _ in ps) for ps in blocks.values()],
                    bsizes=[U * sum(P * d for P, d in ps) for ps in blocks.values()])
        for b, ps in enumerate(blocks.values()):  # the path (row of the weights) of each row K of a block
            rows = [q for q, (P, d) in enumerate((P, d) for P, d in ps for _ in range(P)) for _ in range(d)]
            self.register_buffer(f"{pre}rows{b}", torch.tensor(rows, dtype=torch.long), persistent=False)
            S = torch.zeros(max(rows) + 1, len(rows), dtype=dt)
            S[rows, range(len(rows))] = 1
            self.register_buffer(f"{pre}paths{b}", S, persistent=False)
        # the weights in the order of the pieces: as they are, a permutation or a gather
        plan["w"] = ColumnMap(self, pre + "widx", widx, self.weight_numel)
        plan["out"] = ColumnMap(self, pre + "out", cols, self._irreps_out.dim, place=True)
        return plan

    # ------------------------------------------------------------ properties
    @property
    def irreps_out(self) -> Irreps:
        """Output irreps."""
        return self._irreps_out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.irreps_in1} x {self.irreps_in2} -> {self._irreps_out} | "
            f"{len(self.paths)} paths, {len(self._groups)} groups, weight_numel={self.weight_numel})"
        )

    def weight_view(self, path: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        """View of the weights of path number ``path``, shaped ``(..., *path_shape)``."""
        w = self.weight if weight is None else weight
        p = self.paths[path]
        if not p.has_weight:
            raise ValueError(f"{p} has no weight")

        def shape(q):
            return _path_shape(q.mode, self.irreps_in1[q.i_in1].mul, self.irreps_in2[q.i_in2].mul,
                               self._irreps_out[q.i_out].mul)

        off = sum(math.prod(shape(q)) for q in self.paths[:path] if q.has_weight)
        return w.narrow(-1, off, math.prod(shape(p))).view(w.shape[:-1] + shape(p))

    # --------------------------------------------------------------- forward
    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor product of ``x1`` ``(..., irreps_in1.dim)`` and ``x2`` ``(..., irreps_in2.dim)``.

        ``weight`` is required unless the weights are internal: shape
        ``(weight_numel,)`` for shared weights, ``(..., weight_numel)`` otherwise.
        Returns ``(..., irreps_out.dim)``.
        """
        x1, x2, weight, batch, z = self._prepare(x1, x2, weight)
        dim = self._irreps_out.dim
        if z == 0:  # e.g. a graph without edges: nothing to contract
            return x1.new_zeros(batch + (dim,))
        out = None
        for plan in self._plans:
            if plan["mode"] == "channelwise":
                pieces = list(self._channelwise_pieces(plan, x1, x2, weight, z))
                y = self._place(plan, torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0])
            else:
                y = self._run_group(plan, x1, x2, weight, z)
            out = y if out is None else out + y
        if out is None:
            out = x1.new_zeros(z, dim)
        return out.reshape(batch + (dim,))

    def scatter_sum(self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor | None, index: torch.Tensor,
                    dim_size: int) -> torch.Tensor:
        """``zeros(dim_size, irreps_out.dim).index_add(0, index, self(x1, x2, weight))``, computed faster.

        The convolution of message passing: ``x1``, ``x2`` and ``weight`` are per edge
        ``[E, ...]`` and ``index`` ``[E]`` gives each edge's receiver. The products
        are summed into the receivers before their components are put in the
        ``mul_ir`` order of ``irreps_out``, so that reordering costs per node, not per edge.
        With ``recompute_products``, the channel-wise groups keep only their inputs for the
        backward pass (see :class:`_ChannelwiseScatter`).
        """
        if x1.dim() != 2 or x2.dim() != 2:
            return x1.new_zeros(dim_size, self._irreps_out.dim).index_add(0, index, self(x1, x2, weight))
        x1, x2, weight, batch, z = self._prepare(x1, x2, weight)
        dim = self._irreps_out.dim
        out = x1.new_zeros(dim_size, dim)
        if z == 0:
            return out
        for plan in self._plans:
            if plan["mode"] == "channelwise" and self.recompute_products:
                out = out + self._place(plan, self._channelwise_scatter(plan, x1, x2, weight, index, dim_size))
            elif plan["mode"] == "channelwise":
                pieces = [
                    x1.new_zeros(dim_size, y.shape[1]).index_add(0, index, y)
                    for y in self._channelwise_pieces(plan, x1, x2, weight, z)
                ]
                out = out + self._place(plan, torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0])
            else:
                out = out.index_add(0, index, self._run_group(plan, x1, x2, weight, z))
        return out

    def gather_scatter_sum(self, x1: torch.Tensor, sender: torch.Tensor, x2: torch.Tensor,
                           weight: torch.Tensor | None, receiver: torch.Tensor, dim_size: int) -> torch.Tensor:
        """``scatter_sum(x1[sender], x2, weight, receiver, dim_size)``: the convolution of message passing with
        per-node features ``x1`` ``[N, irreps_in1.dim]`` read at each edge's sender.

        A channel-wise product (NequIP's and MACE's convolution) with per-edge weights runs, on the CPU, as C
        kernels that visit each edge once, gather, multiply and sum in registers, and keep only their inputs
        for the backward passes, whose derivatives of every order run in the same kernels
        (:mod:`clebsch.nn._fused_conv`). Elsewhere (a GPU, tracing, no compiler, ``CLEBSCH_NATIVE=0``) it is
        :meth:`scatter_sum` of the gathered features: the same numbers up to rounding.
        """
        fused = self._fused
        if (fused.supported and weight is not None and x1.dim() == 2 and x2.dim() == 2 and weight.dim() == 2
                and x1.shape[1] == self.irreps_in1.dim and x2.shape == (sender.shape[0], self.irreps_in2.dim)
                and weight.shape == (sender.shape[0], self.weight_numel) and x1.dtype == x2.dtype == weight.dtype
                and fused.available(x1, x2, weight)):
            return fused(self, x1, sender, x2, weight, receiver, dim_size)
        return self.scatter_sum(x1[sender], x2, weight, receiver, dim_size)

    def _prepare(self, x1, x2, weight):
        """Check the inputs and flatten them to ``[z, ...]``; returns ``(x1, x2, weight, batch, z)``."""
        if x1.shape[-1] != self.irreps_in1.dim:
            raise ValueError(
                f"input 1 has shape {tuple(x1.shape)}, expected last dimension {self.irreps_in1.dim} ({self.irreps_in1})"
            )
        if x2.shape[-1] != self.irreps_in2.dim:
            raise ValueError(
                f"input 2 has shape {tuple(x2.shape)}, expected last dimension {self.irreps_in2.dim} ({self.irreps_in2})"
            )
        if weight is None:
            if self.weight_numel > 0 and not self.internal_weights:
                raise ValueError(f"weights of shape (..., {self.weight_numel}) must be given (internal_weights=False)")
            weight = self.weight
        elif weight.shape[-1:] != (self.weight_numel,) or (self.shared_weights and weight.dim() != 1):
            expect = f"({self.weight_numel},)" if self.shared_weights else f"(..., {self.weight_numel})"
            raise ValueError(f"weight has shape {tuple(weight.shape)}, expected {expect}")
        shapes = [x1.shape[:-1], x2.shape[:-1]]
        if not self.shared_weights and self.weight_numel > 0:
            shapes.append(weight.shape[:-1])
        try:
            batch = torch.broadcast_shapes(*shapes)
        except RuntimeError:
            raise ValueError(
                f"batch shapes do not broadcast: input 1 {tuple(x1.shape)}, input 2 {tuple(x2.shape)}, "
                f"weight {tuple(weight.shape)}"
            ) from None
        z = math.prod(batch)
        dtype = torch.promote_types(x1.dtype, x2.dtype)
        x1 = x1.to(dtype).expand(batch + x1.shape[-1:]).reshape(z, self.irreps_in1.dim)
        x2 = x2.to(dtype).expand(batch + x2.shape[-1:]).reshape(z, self.irreps_in2.dim)
        if not self.shared_weights and self.weight_numel > 0:
            weight = weight.expand(batch + weight.shape[-1:]).reshape(z, self.weight_numel)
        return x1, x2, weight, batch, z

    def _channelwise_pieces(self, plan, x1, x2, weight, z):
        """Yield each piece ``[z, U * P * d]`` of a channel-wise plan (see :meth:`_build_channelwise`).

        Inputs are cut with ``split`` (whose backward is one ``cat``), never with
        slices, whose backward would fill a zero tensor of the full size per slice.
        """
        U = plan["U"]
        xs = x1.split(self._in1_sizes, dim=1)
        ws = plan["w"](self, weight).to(x1.dtype).split(plan["wsizes"], dim=1)
        Ms = (x2 @ getattr(self, plan["pre"] + "C").to(x1.dtype)).split(plan["csizes"], dim=1)
        n = 0
        for (i, d1, ps), M in zip(plan["blocks"], Ms):
            rows = [P * d for P, d in ps]
            if d1 == 1:  # outer products, the weights folded into the small factor
                Mp = M.split(rows, dim=1) if len(ps) > 1 else (M,)
                a = xs[i].reshape(z, 1, 1, U)
            else:  # one batched matmul for the block [z, K_i, d1] @ [z, d1, U], then cut into pieces
                T = torch.bmm(M.view(z, -1, d1), xs[i].reshape(z, U, d1).transpose(1, 2))
                Mp = T.split(rows, dim=1) if len(ps) > 1 else (T,)
            for (P, d), t in zip(ps, Mp):
                w = ws[n].view(z, P, 1, U)
                n += 1
                y = t.reshape(z, P, d, 1) * (a * w) if d1 == 1 else t.reshape(z, P, d, U) * w
                yield y.reshape(z, -1)

    def _channelwise_scatter(self, plan, x1, x2, weight, index, dim_size):
        """A channel-wise plan's pieces summed into the receivers by :class:`_ChannelwiseScatter`."""
        pre, dt = plan["pre"], x1.dtype
        rows = tuple((getattr(self, f"{pre}rows{b}"), getattr(self, f"{pre}paths{b}").to(dt))
                     for b in range(len(plan["blocks"])))
        w, C = plan["w"](self, weight).to(dt), getattr(self, pre + "C").to(dt)
        return _ChannelwiseScatter.apply(x1, x2, w, C, index, dim_size, plan, self._in1_sizes, rows)

    def _place(self, plan, y: torch.Tensor) -> torch.Tensor:
        """Columns of a plan's result ``[n, c]`` -> ``[n, irreps_out.dim]``."""
        return plan["out"](self, y)

    def _run_group(self, plan, x1, x2, weight, z):
        if plan["mode"] == "uvw_shared":
            return self._run_uvw_shared(plan, x1, x2, weight, z)
        if plan["mode"] == "scale":
            scalars = plan["in2"](self, x2)
            coef = getattr(self, plan["pre"] + "coef")
            if coef is not None:
                scalars = scalars * coef.to(x1.dtype)
            if plan["widx"] is not None:
                scalars = scalars * weight.index_select(-1, getattr(self, plan["widx"])).to(x1.dtype)
            return self._place(plan, plan["in1"](self, x1) * scalars)
        pre, mode = plan["pre"], plan["mode"]
        U, V, W, I, J, K = plan["U"], plan["V"], plan["W"], plan["I"], plan["J"], plan["K"]
        C = getattr(self, pre + "C").to(x1.dtype)
        a = plan["in1"](self, x1).view(z, U, I)
        b = plan["in2"](self, x2)
        if mode == "uuu":
            xx = (a.unsqueeze(-1) * b.view(z, U, 1, J)).reshape(z * U, I * J)
            T = (xx @ C).view(z, U, K)
        else:
            M = (b.view(z * V, J) @ C).view(z, V, I, K)
            M = M.view(z, I, K) if V == 1 else M.permute(0, 2, 1, 3).reshape(z, I, V * K)
            T = torch.bmm(a, M)  # [z, U, V*K]
        if mode == "uvw":
            T = T.view(z, U, V, K)
            pieces = []
            for s in plan["seg"]:  # one contraction per distinct output dimension
                d, P = s["d"], s["P"]
                Td = T[..., s["k0"] : s["k1"]].reshape(z, U, V, P, d)
                w = weight.index_select(-1, getattr(self, s["widx"])).to(x1.dtype)
                if self.shared_weights:
                    r = torch.einsum("zuvpd,uvwp->zwpd", Td, w.view(U, V, W, P))
                else:
                    r = torch.einsum("zuvpd,zuvwp->zwpd", Td, w.view(z, U, V, W, P))
                pieces.append(r.reshape(z, -1))
            y = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
        else:
            y = T.reshape(z, -1)  # [z, U*V*K] (uvu, uvv, uvuv) or [z, U*K] (uuu)
            if plan["widx"] is not None:
                w = weight.index_select(-1, getattr(self, plan["widx"])).to(x1.dtype)
                y = y * w
            if V > 1 and mode == "uvu":
                y = y.view(z, U, V, K).sum(2).reshape(z, -1)
            elif mode == "uvv":
                y = y.view(z, U, V * K).sum(1) if U > 1 else y
        return self._place(plan, y)

    def _run_uvw_shared(self, plan, x1, x2, weight, z):
        pre, U, W, I, K = plan["pre"], plan["U"], plan["W"], plan["I"], plan["K"]
        C = getattr(self, pre + "C").to(x1.dtype)
        a = plan["in1"](self, x1).view(z, U, I)
        M = (plan["in2"](self, x2) @ C).view(z, I, K)
        T = torch.bmm(M.transpose(1, 2), a.transpose(1, 2))  # [z, K, U]
        pieces = []
        for o in plan["outs"]:
            d, P = o["d"], o["P"]
            w = weight.index_select(-1, getattr(self, o["widx"])).to(x1.dtype).view(P * U, W)
            t = T.narrow(1, o["k0"], d * P).reshape(z, d, P * U)
            pieces.append(torch.matmul(t, w).transpose(1, 2).reshape(z, W * d))  # [z, w * d + m]
        y = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
        return self._place(plan, y)


# ---------------------------------------------------------------- ready-made
class FullyConnectedTensorProduct(TensorProduct):
    """Every allowed ``(in1, in2) -> out`` path, mode ``uvw`` (all channels mixed).

    Examples
    --------
    >>> tp = FullyConnectedTensorProduct("4x0e + 4x1o", "0e + 1o", "8x0e + 8x1o")
    >>> tp.weight_numel
    128
    """

    def __init__(self, irreps_in1, irreps_in2, irreps_out, **kwargs) -> None:
        i1, i2, io = Irreps(irreps_in1), Irreps(irreps_in2), Irreps(irreps_out)
        paths = [
            Path(a, b, c, "uvw")
            for a, (_, ir1) in enumerate(i1)
            for b, (_, ir2) in enumerate(i2)
            for c, (_, iro) in enumerate(io)
            if iro in ir1 * ir2
        ]
        super().__init__(i1, i2, io, paths, **kwargs)


def _filter(filter_ir_out, lmax):
    keep = None
    if filter_ir_out is not None:
        if isinstance(filter_ir_out, (list, tuple)) and not isinstance(filter_ir_out, Irreps):
            keep = {ir for x in filter_ir_out for _, ir in Irreps(x)} if filter_ir_out else set()
        else:
            keep = {ir for _, ir in Irreps(filter_ir_out)}

    def ok(ir) -> bool:
        return (keep is None or ir in keep) and (lmax is None or ir.l <= lmax)

    return ok


class ChannelwiseTensorProduct(TensorProduct):
    """Channel-wise (``uvu``) product, the NequIP / MACE convolution.

    Every pair ``(in1, in2)`` and every ``ir_out`` of the selection rule passing the
    filters gives one path with its own output block ``mul1 x ir_out``; output blocks
    are then sorted by irrep (e3nn order). Weights default to external and per edge
    (``shared_weights=False``), as given by a radial MLP.

    Parameters
    ----------
    irreps_in1, irreps_in2 : Irreps
    filter_ir_out : Irreps or list of irreps, optional
        Keep only these output irreps.
    lmax : int, optional
        Keep only outputs with ``l <= lmax``.
    **kwargs
        Passed to :class:`TensorProduct` (normalisations, weight options).

    Examples
    --------
    >>> tp = ChannelwiseTensorProduct("8x0e + 8x1o", "0e + 1o + 2e", lmax=1)
    >>> tp.irreps_out
    8x0e+8x0e+8x1o+8x1o+8x1o+8x1e
    >>> tp(torch.randn(3, 32), torch.randn(3, 9), torch.randn(3, tp.weight_numel)).shape
    torch.Size([3, 112])
    """

    def __init__(self, irreps_in1, irreps_in2, filter_ir_out=None, lmax: int | None = None, **kwargs) -> None:
        i1, i2 = Irreps(irreps_in1), Irreps(irreps_in2)
        ok = _filter(filter_ir_out, lmax)
        outs, raw = [], []
        for a, (m1, ir1) in enumerate(i1):
            for b, (_, ir2) in enumerate(i2):
                for iro in ir1 * ir2:
                    if ok(iro):
                        raw.append((a, b, len(outs)))
                        outs.append((m1, iro))
        io, perm, _ = Irreps(outs).sort()
        paths = [Path(a, b, perm[c], "uvu") for a, b, c in raw]
        kwargs.setdefault("shared_weights", False)
        super().__init__(i1, i2, io, paths, **kwargs)


class ElementwiseTensorProduct(TensorProduct):
    """Element-wise (``uuu``, no weights) product of two irreps with the same number of irreps.

    Examples
    --------
    >>> tp = ElementwiseTensorProduct("2x1o", "2x0e")
    >>> tp.irreps_out
    2x1o
    """

    def __init__(self, irreps_in1, irreps_in2, filter_ir_out=None, **kwargs) -> None:
        i1 = [(m, ir) for m, ir in Irreps(irreps_in1).simplify()]
        i2 = [(m, ir) for m, ir in Irreps(irreps_in2).simplify()]
        if sum(m for m, _ in i1) != sum(m for m, _ in i2):
            raise ValueError(f"{Irreps(irreps_in1)} and {Irreps(irreps_in2)} have different numbers of irreps")
        k = 0
        while k < len(i1):  # split blocks so that multiplicities align
            (m1, ir1), (m2, ir2) = i1[k], i2[k]
            if m1 < m2:
                i2[k : k + 1] = [(m1, ir2), (m2 - m1, ir2)]
            elif m2 < m1:
                i1[k : k + 1] = [(m2, ir1), (m1 - m2, ir1)]
            k += 1
        ok = _filter(filter_ir_out, None)
        outs, paths = [], []
        for k, ((m, ir1), (_, ir2)) in enumerate(zip(i1, i2)):
            for iro in ir1 * ir2:
                if ok(iro):
                    paths.append(Path(k, k, len(outs), "uuu", has_weight=False))
                    outs.append((m, iro))
        super().__init__(Irreps(i1), Irreps(i2), Irreps(outs), paths, **kwargs)


class FullTensorProduct(TensorProduct):
    """All products ``mul1 x mul2`` (mode ``uvuv``, no weights), outputs sorted by irrep.

    Examples
    --------
    >>> FullTensorProduct("2x1o", "1o").irreps_out
    2x0e+2x1e+2x2e
    """

    def __init__(self, irreps_in1, irreps_in2, filter_ir_out=None, **kwargs) -> None:
        i1, i2 = Irreps(irreps_in1), Irreps(irreps_in2)
        ok = _filter(filter_ir_out, None)
        outs, raw = [], []
        for a, (m1, ir1) in enumerate(i1):
            for b, (m2, ir2) in enumerate(i2):
                for iro in ir1 * ir2:
                    if ok(iro):
                        raw.append((a, b, len(outs)))
                        outs.append((m1 * m2, iro))
        io, perm, _ = Irreps(outs).sort()
        paths = [Path(a, b, perm[c], "uvuv", has_weight=False) for a, b, c in raw]
        super().__init__(i1, i2, io, paths, **kwargs)
