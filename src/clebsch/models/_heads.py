"""Output heads: per-atom quantities read from a representation's features.

A representation returns per-atom features laid out by an :class:`~clebsch.o3.Irreps`.
A head reads the blocks it needs (scalars for energies and charges, ``1o`` for
atomic dipoles, ``2e`` for anisotropic polarizabilities) and mixes the copies of
each irrep with learned weights. Mixing copies of one irrep is equivariant, so
every head is too.
"""

from __future__ import annotations

import math

import torch

from ..o3 import Irrep, Irreps, wigner_3j


def irrep_block(features: torch.Tensor, irreps: Irreps, ir: Irrep | str) -> torch.Tensor:
    """All copies of one irrep in a feature tensor, as ``[N, mul, 2l+1]``.

    Blocks of the same irrep that are not adjacent are concatenated; an irrep
    that does not occur gives a block with zero copies.

    Examples
    --------
    >>> irreps = Irreps("2x0e + 1x1o")
    >>> irrep_block(torch.arange(5.0)[None], irreps, "1o").shape
    torch.Size([1, 1, 3])
    """
    ir = Irrep(ir)
    pieces = [
        features[..., sl].reshape(*features.shape[:-1], mul_ir.mul, ir.dim)
        for mul_ir, sl in zip(irreps, irreps.slices())
        if mul_ir.ir == ir
    ]
    if not pieces:
        return features.new_zeros(*features.shape[:-1], 0, ir.dim)
    return torch.cat(pieces, dim=-2) if len(pieces) > 1 else pieces[0]


class IrrepMix(torch.nn.Module):
    """Learned linear combination of the copies of one irrep: ``[N, mul, d] -> [N, out, d]``."""

    def __init__(self, mul_in: int, mul_out: int):
        super().__init__()
        self.mul_in = mul_in
        self.weight = torch.nn.Parameter(torch.randn(mul_in, mul_out))

    def forward(self, block: torch.Tensor) -> torch.Tensor:
        if self.mul_in == 0:
            return block.new_zeros(*block.shape[:-2], self.weight.shape[1], block.shape[-1])
        return torch.einsum("nud,uw->nwd", block, self.weight) / math.sqrt(self.mul_in)


class ScalarReadout(torch.nn.Module):
    """Per-atom scalars from the ``0e`` features: a one-hidden-layer MLP.

    Parameters
    ----------
    irreps_in : Irreps
        Layout of the representation's features.
    num_outputs : int
        Scalars per atom.
    hidden : int
        Width of the hidden layer; 0 gives a linear readout.
    """

    def __init__(self, irreps_in: Irreps, num_outputs: int = 1, hidden: int = 16):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        n = self.irreps_in.count(Irrep("0e"))
        if n == 0:
            raise ValueError(f"a scalar readout needs 0e features, but the representation gives {self.irreps_in}")
        if hidden > 0:
            self.net = torch.nn.Sequential(
                torch.nn.Linear(n, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, num_outputs)
            )
        else:
            self.net = torch.nn.Linear(n, num_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        scalars = irrep_block(features, self.irreps_in, "0e")[..., 0]
        return self.net(scalars)


class DipoleHead(torch.nn.Module):
    """Per-atom charges and atomic dipoles.

    The molecular dipole is ``sum_i mu_i + sum_i q_i (r_i - r_c)`` where the
    charges are shifted so that they add up to the structure's total charge
    and ``r_c`` is the centre of mass. With a neutral structure the result does
    not depend on the origin.
    """

    def __init__(self, irreps_in: Irreps, hidden: int = 16):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        self.charges = ScalarReadout(self.irreps_in, 1, hidden)
        self.vectors = IrrepMix(self.irreps_in.count(Irrep("1o")), 1)

    def forward(self, features, positions, masses, batch, num_graphs, total_charge):
        q = self.charges(features)[:, 0]
        ones = torch.ones_like(q)
        n_atoms = torch.zeros(num_graphs, dtype=q.dtype, device=q.device).index_add_(0, batch, ones)
        q_sum = torch.zeros_like(n_atoms).index_add_(0, batch, q)
        q = q - ((q_sum - total_charge) / n_atoms)[batch]
        m_sum = torch.zeros_like(n_atoms).index_add_(0, batch, masses)
        centre = torch.zeros(num_graphs, 3, dtype=q.dtype, device=q.device).index_add_(
            0, batch, masses[:, None] * positions
        ) / m_sum[:, None]
        mu = self.vectors(irrep_block(features, self.irreps_in, "1o"))[:, 0]
        per_atom = mu + q[:, None] * (positions - centre[batch])
        dipole = torch.zeros(num_graphs, 3, dtype=q.dtype, device=q.device).index_add_(0, batch, per_atom)
        return q, dipole


class PolarizabilityHead(torch.nn.Module):
    """Per-atom ``0e + 2e`` assembled into symmetric 3x3 tensors and summed per structure.

    The isotropic part is ``a_i * I``; the anisotropic part maps the five ``2e``
    components onto symmetric traceless matrices with the real Clebsch-Gordan
    coefficients of ``1o x 1o -> 2e``, so it rotates as ``R alpha R^T``.
    """

    def __init__(self, irreps_in: Irreps, hidden: int = 16):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        self.isotropic = ScalarReadout(self.irreps_in, 1, hidden)
        self.anisotropic = IrrepMix(self.irreps_in.count(Irrep("2e")), 1)
        self.register_buffer("basis", wigner_3j(1, 1, 2, dtype=torch.get_default_dtype()) * math.sqrt(5.0))

    def forward(self, features, batch, num_graphs):
        a = self.isotropic(features)[:, 0]
        t = self.anisotropic(irrep_block(features, self.irreps_in, "2e"))[:, 0]
        eye = torch.eye(3, dtype=a.dtype, device=a.device)
        per_atom = a[:, None, None] * eye + torch.einsum("nk,ijk->nij", t, self.basis.to(t.dtype))
        out = torch.zeros(num_graphs, 3, 3, dtype=a.dtype, device=a.device)
        return out.index_add_(0, batch, per_atom)


class IrrepsHead(torch.nn.Module):
    """A general per-atom equivariant output of any irreps (e.g. density coefficients).

    Each output irrep is a learned mix of the input copies of the same irrep;
    irreps absent from the representation are zero.
    """

    def __init__(self, irreps_in: Irreps, irreps_out: Irreps):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        self.irreps_out = Irreps(irreps_out)
        self.mixes = torch.nn.ModuleList(
            IrrepMix(self.irreps_in.count(mul_ir.ir), mul_ir.mul) for mul_ir in self.irreps_out
        )

    def forward(self, features):
        out = [
            mix(irrep_block(features, self.irreps_in, mul_ir.ir)).flatten(-2)
            for mix, mul_ir in zip(self.mixes, self.irreps_out)
        ]
        return torch.cat(out, dim=-1)
