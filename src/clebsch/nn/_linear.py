"""Equivariant linear map: mixes the copies of each irrep."""

from __future__ import annotations

import math

import torch

from ..o3 import Irreps
from ._index import ColumnMap
from ._tensor_product import resolve_weight_options

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
        self._in = ColumnMap(self, "_in_idx", in_src, self.irreps_in.dim)
        self._out = ColumnMap(self, "_out_idx", out_src, self.irreps_out.dim, place=True)
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
        x = x.reshape(z, self.irreps_in.dim)  # explicit sizes: z may be 0 (a graph without edges)
        if not self.shared_weights:
            weight = weight.expand(batch + weight.shape[-1:]).reshape(z, self.weight_numel)
        pieces = []
        if self._groups:
            xs = self._in(self, x)
            xs = xs.split(self._in_sizes, dim=1) if len(self._groups) > 1 else (xs,)
        for (k, d, m_in, m_out, alpha), xi in zip(self._groups, xs if self._groups else ()):
            # xi: [z, d * m_in]
            w = weight[..., getattr(self, f"_w{k}")].to(x.dtype) * alpha
            if self.shared_weights:
                y = xi.reshape(z * d, m_in) @ w  # [z * d, m_out]
            else:
                y = torch.bmm(xi.reshape(z, d, m_in), w)  # [z, d, m_out]
            pieces.append(y.reshape(z, d * m_out))
        y = (torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]) if pieces else None
        out = self._out(self, y) if pieces else x.new_zeros(z, self.irreps_out.dim)
        if self.bias_numel:
            out = out.index_add(1, self._bias_pos, bias.to(x.dtype).expand(z, -1))
        return out.reshape(batch + (self.irreps_out.dim,))


class SpeciesLinear(torch.nn.Module):
    r"""An equivariant linear map that depends on each atom's element (species index).

    The same map, with the same weights (layout, initialisation and normalisation), as
    ``FullyConnectedTensorProduct(irreps_in, f"{num_species}x0e", irreps_out)`` applied
    to the features and the one-hot encoding of the elements -- NequIP's and MACE's
    self-connection -- but computed by giving each atom its own element's weights and
    applying them as a :class:`Linear` with per-atom weights, so that the cost does
    not grow with the number of elements. For a few elements (``num_species <=
    all_species_limit``) one shared :class:`Linear` gives every element's output of
    every atom and each atom keeps its own, which is cheaper there.

    Examples
    --------
    >>> lin = SpeciesLinear("4x0e + 2x1o", "3x0e + 1x1o", num_species=5)
    >>> lin.weight_numel  # (4 * 3 + 2 * 1) weights per element
    70
    >>> lin(torch.randn(6, 10), torch.tensor([0, 4, 4, 1, 0, 2])).shape
    torch.Size([6, 6])
    """

    def __init__(self, irreps_in, irreps_out, num_species: int) -> None:
        super().__init__()
        self.irreps_in, self.irreps_out = Irreps(irreps_in), Irreps(irreps_out)
        self.num_species = int(num_species)
        self.linear = Linear(self.irreps_in, self.irreps_out, shared_weights=False, internal_weights=False)
        # every element's output side by side: [num_species x irreps_out], one shared Linear
        self.all_species = Linear(self.irreps_in, Irreps(list(self.irreps_out) * self.num_species),
                                  shared_weights=True, internal_weights=False) if self.num_species <= self.all_species_limit else None
        # the product's weights: one [mul_in, num_species, mul_out] block per (input, output) pair of equal
        # irreps, in the pairs' order (the order of Linear's blocks, [mul_in, mul_out] each)
        z, index, n = self.num_species, [[] for _ in range(self.num_species)], 0
        for i, (m_in, a) in enumerate(self.irreps_in):
            for o, (m_out, b) in enumerate(self.irreps_out):
                if a != b:
                    continue
                for s in range(z):
                    index[s] += [n + (u * z + s) * m_out + w for u in range(m_in) for w in range(m_out)]
                n += m_in * z * m_out
        self.weight_numel = n
        self.register_buffer("_by_species", torch.tensor(index, dtype=torch.long).view(z, -1), persistent=False)
        if self.all_species is not None:  # Linear's blocks are (input, output of species s) pairs, s outermost
            order, k = [], 0
            pairs = [(i, o) for i, (_, a) in enumerate(self.irreps_in) for o, (_, b) in enumerate(self.irreps_out) if a == b]
            starts = {}
            for i, o in pairs:
                starts[(i, o)] = k
                k += self.irreps_in[i].mul * self.irreps_out[o].mul
            for i, (m_in, a) in enumerate(self.irreps_in):
                for s in range(z):
                    for o, (m_out, b) in enumerate(self.irreps_out):
                        if a == b:
                            order += index[s][starts[(i, o)] : starts[(i, o)] + m_in * m_out]
            self.register_buffer("_all_order", torch.tensor(order, dtype=torch.long), persistent=False)
        self.weight = torch.nn.Parameter(torch.randn(n))
        # the product normalises by sqrt(fan-in x num_species) (its one-hot input has num_species copies of 0e)
        self.scale = 1.0 / math.sqrt(z)

    #: up to this many elements, every element's output is computed for every atom
    all_species_limit = 8

    def __repr__(self) -> str:
        return f"SpeciesLinear({self.irreps_in} -> {self.irreps_out} | {self.num_species} species, weight_numel={self.weight_numel})"

    def forward(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """Features ``[N, irreps_in.dim]`` and species indices ``[N]`` -> ``[N, irreps_out.dim]``."""
        if self.linear.weight_numel == 0:
            return x.new_zeros(x.shape[:-1] + (self.irreps_out.dim,))
        if self.all_species is not None:
            y = self.all_species(x, self.weight.to(x.dtype)[self._all_order] * self.scale)
            y = y.view(x.shape[0], self.num_species, self.irreps_out.dim)
            return y.gather(1, species.view(-1, 1, 1).expand(-1, 1, self.irreps_out.dim)).squeeze(1)
        table = self.weight.to(x.dtype)[self._by_species] * self.scale  # [num_species, Linear's weight_numel]
        return self.linear(x, table.index_select(0, species))
