"""Gated nonlinearity and norm activation."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..o3 import Irreps
from ._activation import activation_parity, normalize2mom
from ._silu import silu
from ._tensor_product import ElementwiseTensorProduct

__all__ = ["Gate", "NormActivation", "gate_irreps", "make_gate"]


def _scalar_acts(irreps: Irreps, acts: Sequence[Callable], what: str):
    if len(acts) != len(irreps):
        raise ValueError(f"{what}: {len(irreps)} irreps ({irreps}) but {len(acts)} activations")
    out, mods = [], []
    for (mul, ir), f in zip(irreps, acts):
        if ir.l != 0:
            raise ValueError(f"{what} must be scalars, got {irreps}")
        g = normalize2mom(f)
        p = ir.p
        if p == -1:
            p = activation_parity(g)
            if p == 0:
                raise ValueError(f"{what}: {ir} is odd but the activation is neither even nor odd (parity violated)")
        out.append((mul, (0, p)))
        mods.append(g)
    return Irreps(out), torch.nn.ModuleList(mods)


class Gate(torch.nn.Module):
    r"""Gate nonlinearity (e3nn semantics).

    The input is ``scalars + gates + gated`` sorted and simplified (as e3nn); the output is
    ``act_scalars(scalars) + gated * act_gates(gates)``. Odd scalars need an odd or
    even activation; the output parity follows it.

    Examples
    --------
    >>> g = Gate("4x0e", [torch.nn.functional.silu], "2x0e", [torch.sigmoid], "1x1o + 1x2e")
    >>> g.irreps_in, g.irreps_out
    (6x0e+1x1o+1x2e, 4x0e+1x1o+1x2e)
    >>> g(torch.randn(3, 14)).shape
    torch.Size([3, 12])
    """

    def __init__(self, irreps_scalars, act_scalars, irreps_gates, act_gates, irreps_gated) -> None:
        super().__init__()
        self.irreps_scalars, self.irreps_gates, self.irreps_gated = (
            Irreps(irreps_scalars), Irreps(irreps_gates), Irreps(irreps_gated))
        if sum(m for m, _ in self.irreps_gates) != sum(m for m, _ in self.irreps_gated):
            raise ValueError(f"{self.irreps_gated} needs one gate per irrep, got gates {self.irreps_gates}")
        sc_out, self.act_scalars = _scalar_acts(self.irreps_scalars, act_scalars, "irreps_scalars")
        g_out, self.act_gates = _scalar_acts(self.irreps_gates, act_gates, "irreps_gates")
        self.mul = ElementwiseTensorProduct(self.irreps_gated, g_out) if len(self.irreps_gated) else None
        # e3nn convention: the input is the sorted, simplified concatenation
        blocks = [b for irreps in (self.irreps_scalars, self.irreps_gates, self.irreps_gated)
                  for b in irreps.simplify()]
        sorted_in, perm, _ = Irreps(blocks).sort()
        starts = [sl.start for sl in sorted_in.slices()]
        idx = [starts[perm[i]] + c for i, b in enumerate(blocks) for c in range(b.dim)]
        self.register_buffer("_extract", torch.tensor(idx, dtype=torch.long), persistent=False)
        self._irreps_in = sorted_in.simplify()
        self._irreps_out = sc_out + (self.mul.irreps_out if self.mul is not None else Irreps(""))
        self._dims = (self.irreps_scalars.dim, self.irreps_gates.dim, self.irreps_gated.dim)

    @property
    def irreps_in(self) -> Irreps:
        return self._irreps_in

    @property
    def irreps_out(self) -> Irreps:
        return self._irreps_out

    def __repr__(self) -> str:
        return f"Gate({self._irreps_in} -> {self._irreps_out})"

    @staticmethod
    def _activate(x, irreps, acts):
        parts, i = [], 0
        for (mul, _), f in zip(irreps, acts):
            parts.append(f(x[..., i : i + mul]))
            i += mul
        return torch.cat(parts, dim=-1) if parts else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self._irreps_in.dim:
            raise ValueError(f"input has shape {tuple(x.shape)}, expected last dimension {self._irreps_in.dim}")
        s, g, v = torch.split(x.index_select(-1, self._extract), self._dims, dim=-1)
        s = self._activate(s, self.irreps_scalars, self.act_scalars)
        if self.mul is None:
            return s
        g = self._activate(g, self.irreps_gates, self.act_gates)
        return torch.cat([s, self.mul(v, g)], dim=-1)


def gate_irreps(irreps) -> tuple[Irreps, Irreps, Irreps]:
    """Split the irreps a gate should output into ``(scalars, gates, gated)`` for a :class:`Gate`.

    The scalars (``l = 0``) pass through an activation, every ``l > 0`` irrep gets one
    ``0e`` gate.

    Examples
    --------
    >>> gate_irreps(Irreps("4x0e + 2x1o + 0o + 1x2e"))
    (4x0e+1x0o, 3x0e, 2x1o+1x2e)
    """
    irreps = Irreps(irreps)
    scalars = Irreps([m for m in irreps if m.ir.l == 0])
    gated = Irreps([m for m in irreps if m.ir.l > 0])
    gates = Irreps([(gated.num_irreps, "0e")]) if gated.num_irreps else Irreps("")
    return scalars, gates, gated


def make_gate(irreps) -> Gate:
    """The :class:`Gate` whose output is ``irreps``: SiLU on even scalars, tanh on odd ones, sigmoid gates.

    The gate of NequIP and SEGNN; its input is ``gate.irreps_in`` (the scalars, the
    gates and the gated irreps, sorted).

    Examples
    --------
    >>> g = make_gate("4x0e + 2x1o")
    >>> g.irreps_in, g.irreps_out
    (6x0e+2x1o, 4x0e+2x1o)
    """
    scalars, gates, gated = gate_irreps(irreps)
    acts = [silu if m.ir.p == 1 else torch.tanh for m in scalars]
    return Gate(scalars, acts, gates, [torch.sigmoid] * len(gates), gated)


class NormActivation(torch.nn.Module):
    r"""Scale every irrep by a function of its norm: :math:`x \mapsto \sigma(|x| + b)\, x / |x|`.

    Examples
    --------
    >>> act = NormActivation("2x1o + 0e", torch.sigmoid)
    >>> act(torch.randn(4, 7)).shape
    torch.Size([4, 7])
    """

    def __init__(self, irreps_in, scalar_nonlinearity: Callable, normalize: bool = True, epsilon: float = 1e-8,
                 bias: bool = False) -> None:
        super().__init__()
        self.irreps_in = self.irreps_out = Irreps(irreps_in)
        self.f, self.normalize, self.eps = scalar_nonlinearity, normalize, epsilon
        n = sum(m for m, _ in self.irreps_in)
        self.bias = torch.nn.Parameter(torch.zeros(n)) if bias else None
        idx = [k for k, (m, ir) in enumerate([(m, ir) for m, ir in self.irreps_in for _ in range(m)])
               for _ in range(ir.dim)]
        self.register_buffer("_seg", torch.tensor(idx, dtype=torch.long), persistent=False)
        self._n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.irreps_in.dim:
            raise ValueError(f"input has shape {tuple(x.shape)}, expected last dimension {self.irreps_in.dim}")
        sq = x.new_zeros(x.shape[:-1] + (self._n,)).index_add(-1, self._seg, x * x)
        norm = (sq + self.eps**2).sqrt()
        h = norm if self.bias is None else norm + self.bias
        scale = self.f(h)
        if self.normalize:
            scale = scale / norm
        return x * scale.index_select(-1, self._seg)
