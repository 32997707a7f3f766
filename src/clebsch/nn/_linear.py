"""Equivariant linear map: mixes the copies of each irrep."""

from __future__ import annotations

import math

import torch

from ..o3 import Irreps
from ._tensor_product import _Permute, resolve_weight_options

__all__ = ["Linear"]


class Linear(torch.nn.Module):
    r"""Equivariant linear layer with e3nn semantics.

    Every input block connects to every output block of the same irrep; each output
    is normalised by :math:`1/\sqrt{\text{fan-in}}`. Weights are laid out like
    e3nn's (per ``(i_in, i_out)`` pair, ``[mul_in, mul_out]`` row-major), so they can
    be copied across. Computed as one matmul per distinct irrep.

    Parameters
    ----------
    irreps_in, irreps_out : Irreps or str
    biases : bool
        Zero-initialised biases on the ``0e`` outputs.
    internal_weights : bool, optional
        Store the weights (default ``shared_weights``).
    shared_weights : bool, optional
        Default ``True``; ``False`` means weights ``(..., weight_numel)`` per sample.

    Examples
    --------
    >>> lin = Linear("4x0e + 2x1o", "3x0e + 1x1o", biases=True)
    >>> lin.weight_numel, lin.bias_numel
    (14, 3)
    >>> lin(torch.randn(5, 10)).shape
    torch.Size([5, 6])
    """

    def __init__(self, irreps_in, irreps_out, *, biases: bool = False, internal_weights: bool | None = None,
                 shared_weights: bool | None = None) -> None:
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        self.irreps_out = Irreps(irreps_out)
        self.internal_weights, self.shared_weights = resolve_weight_options(internal_weights, shared_weights)
        ins = [(i, o) for i, (_, a) in enumerate(self.irreps_in) for o, (_, b) in enumerate(self.irreps_out) if a == b]
        offsets, n = {}, 0
        for i, o in ins:
            offsets[(i, o)] = n
            n += self.irreps_in[i].mul * self.irreps_out[o].mul
        self.weight_numel = n
        s_in = [s.start for s in self.irreps_in.slices()]
        s_out = [s.start for s in self.irreps_out.slices()]
        self._groups = []
        in_src, out_src = [], []
        for ir in sorted({ir for _, ir in self.irreps_out if any(ir == a for _, a in self.irreps_in)}):
            i_list = [i for i, (m, a) in enumerate(self.irreps_in) if a == ir and m > 0]
            o_list = [o for o, (m, b) in enumerate(self.irreps_out) if b == ir and m > 0]
            if not i_list or not o_list:
                continue
            d = ir.dim
            # inputs gathered component-major, [z, d, m_in]: one matmul [z * d, m_in] @ [m_in, m_out]
            idx_in = [s_in[i] + u * d + c for c in range(d) for i in i_list for u in range(self.irreps_in[i].mul)]
            fan = sum(self.irreps_in[i].mul for i in i_list)
            widx = [[offsets[(i, o)] + u * self.irreps_out[o].mul + w for o in o_list for w in range(self.irreps_out[o].mul)]
                    for i in i_list for u in range(self.irreps_in[i].mul)]
            out_src += [s_out[o] + w * d + c for c in range(d) for o in o_list for w in range(self.irreps_out[o].mul)]
            k = len(self._groups)
            in_src += idx_in
            self.register_buffer(f"_w{k}", torch.tensor(widx, dtype=torch.long), persistent=False)
            self._groups.append((k, d, len(widx), len(widx[0]), 1.0 / math.sqrt(fan)))
        # one gather of the inputs of every group (then split), one scatter of the outputs; a permutation
        # (whose backward is the inverse permutation) where every column is used once
        self._in_sizes = [d * m_in for _, d, m_in, _, _ in self._groups]
        self._in_perm = self._register_index("_in", in_src, self.irreps_in.dim, inverse=False)
        self._out_perm = self._register_index("_out", out_src, self.irreps_out.dim, inverse=True)
        bias_pos = [s_out[o] + c for o, (m, ir) in enumerate(self.irreps_out) if biases and ir.l == 0 and ir.p == 1
                    for c in range(m)]
        self.bias_numel = len(bias_pos)
        self.register_buffer("_bias_pos", torch.tensor(bias_pos, dtype=torch.long), persistent=False)
        if self.internal_weights:
            self.weight = torch.nn.Parameter(torch.randn(self.weight_numel))
            self.bias = torch.nn.Parameter(torch.zeros(self.bias_numel))
        else:
            self.register_buffer("weight", torch.empty(0), persistent=False)
            self.register_buffer("bias", torch.zeros(self.bias_numel), persistent=False)

    def _register_index(self, name: str, src: list, n: int, inverse: bool) -> bool:
        """Register ``name`` (and ``name + '_inv'`` for a permutation); returns whether ``src`` permutes ``range(n)``."""
        idx = torch.tensor(src, dtype=torch.long)
        perm = sorted(src) == list(range(n)) and n > 0
        if perm:
            inv = torch.empty_like(idx)
            inv[idx] = torch.arange(n)
            idx, inv = (inv, idx) if inverse else (idx, inv)
            self.register_buffer(name + "_inv", inv, persistent=False)
        self.register_buffer(name, idx, persistent=False)
        return perm

    def __repr__(self) -> str:
        return f"Linear({self.irreps_in} -> {self.irreps_out} | weight_numel={self.weight_numel}, biases={self.bias_numel})"

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None):
        """Apply to ``x`` of shape ``(..., irreps_in.dim)``; returns ``(..., irreps_out.dim)``."""
        if x.shape[-1] != self.irreps_in.dim:
            raise ValueError(f"input has shape {tuple(x.shape)}, expected last dimension {self.irreps_in.dim} ({self.irreps_in})")
        if weight is None:
            if not self.internal_weights and self.weight_numel > 0:
                raise ValueError(f"weights of shape (..., {self.weight_numel}) must be given (internal_weights=False)")
            weight = self.weight
        elif weight.shape[-1:] != (self.weight_numel,) or (self.shared_weights and weight.dim() != 1):
            expect = f"({self.weight_numel},)" if self.shared_weights else f"(..., {self.weight_numel})"
            raise ValueError(f"weight has shape {tuple(weight.shape)}, expected {expect}")
        bias = self.bias if bias is None else bias
        if bias.shape != (self.bias_numel,):
            raise ValueError(f"bias has shape {tuple(bias.shape)}, expected ({self.bias_numel},)")
        batch = x.shape[:-1]
        z = math.prod(batch)
        x = x.reshape(z, -1)
        if not self.shared_weights:
            weight = weight.expand(batch + weight.shape[-1:]).reshape(z, -1)
        pieces = []
        if self._groups:
            xs = _Permute.apply(x, self._in, self._in_inv) if self._in_perm else x.index_select(1, self._in)
            xs = xs.split(self._in_sizes, dim=1) if len(self._groups) > 1 else (xs,)
        for (k, d, m_in, m_out, alpha), xi in zip(self._groups, xs if self._groups else ()):
            # xi: [z, d * m_in]
            w = weight[..., getattr(self, f"_w{k}")].to(x.dtype) * alpha
            if self.shared_weights:
                y = xi.reshape(z * d, m_in) @ w  # [z * d, m_out]
            else:
                y = torch.bmm(xi.reshape(z, d, m_in), w)  # [z, d, m_out]
            pieces.append(y.reshape(z, -1))
        y = (torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]) if pieces else None
        if self._out_perm:
            out = _Permute.apply(y, self._out, self._out_inv)
        else:
            out = x.new_zeros(z, self.irreps_out.dim)
            if pieces:
                out = out.index_copy(1, self._out, y)
        if self.bias_numel:
            out = out.index_add(1, self._bias_pos, bias.to(x.dtype).expand(z, -1))
        return out.reshape(batch + (self.irreps_out.dim,))
