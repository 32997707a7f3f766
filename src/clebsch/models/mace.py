"""MACE: higher-order equivariant message passing (Batatia et al., NeurIPS 2022).

Every atom carries features ``h_i``: ``channels`` copies of each irrep
``0e, 1o, 2e, ...`` up to ``hidden_lmax``. One layer does

1. ``x_j = Linear(h_j)``;
2. the atomic basis (eq. 8), a channel-wise tensor product of the neighbours'
   features with the spherical harmonics of the edges, weighted by an MLP of
   the distance ``R(r_ij)`` and the polynomial envelope ``u(r_ij)``, summed over
   the neighbours and divided by ``avg_num_neighbors``, then mixed by a Linear
   into ``channels`` copies of each spherical-harmonic irrep up to ``lmax``:

       A_i = Linear( 1/n_avg sum_j u(r_ij) TP(x_j, Y(r_ij); R(r_ij)) );

3. the product basis (eqs. 10-11): for each channel, every symmetric
   polynomial of ``A_i`` of degree 1 to ``correlation`` coupled to each output
   irrep, with weights that depend on the element (the symmetric contraction,
   body order ``correlation + 1``);
4. the update: ``h_i <- Linear(B_i) + W_{z_i} h_i`` (an element-dependent
   residual, from the second layer on).

The paper sums an energy readout of every layer; here the representation
returns the features of the last layer (with their ``0e``, ``1o``, ``2e``
blocks) and the :class:`~clebsch.models.Potential`'s heads read them.
"""

from __future__ import annotations

import torch

from ..nn import BesselBasis, ChannelwiseTensorProduct, Linear, PolynomialCutoff, ScalarMLP, SpeciesLinear
from ..nn._index import ColumnMap
from ..o3 import Irreps
from ._registry import register
from ._steerable import SteerableStack, per_edge

from ._symmetric_contraction import SymmetricContraction

__all__ = ["MACE"]


def channel_major(irreps: Irreps) -> list[int]:
    """Columns of ``mul_ir`` features, every irrep at multiplicity ``K``, in the order ``[K, sum(2l+1)]``.

    ``x[:, channel_major(irreps)].view(N, K, -1)`` puts the copy ``k`` of every irrep in row ``k``.

    Examples
    --------
    >>> channel_major(Irreps("2x0e + 2x1o"))
    [0, 2, 3, 4, 1, 5, 6, 7]
    """
    starts = [sl.start for sl in irreps.slices()]
    k = irreps[0].mul
    return [s + c * m.ir.dim + j for c in range(k) for m, s in zip(irreps, starts) for j in range(m.ir.dim)]


def to_channels(x: torch.Tensor, irreps: Irreps) -> torch.Tensor:
    """``[N, irreps.dim]`` with every irrep at multiplicity ``K`` -> ``[N, K, sum(2l+1)]``."""
    return x[:, channel_major(irreps)].reshape(x.shape[0], irreps[0].mul, -1)


def from_channels(x: torch.Tensor, irreps: Irreps) -> torch.Tensor:
    """Inverse of :func:`to_channels`."""
    out = torch.empty(x.shape[0], irreps.dim, dtype=x.dtype, device=x.device)
    out[:, channel_major(irreps)] = x.reshape(x.shape[0], -1)
    return out


class MACELayer(torch.nn.Module):
    """One MACE layer: atomic basis, symmetric contraction, linear update with residual."""

    def __init__(self, irreps_in, irreps_sh, channels, hidden_lmax, correlation, num_species, num_basis,
                 radial_hidden, radial_layers, avg_num_neighbors, residual):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        self.num_species = num_species
        self.irreps_a = Irreps([(channels, m.ir) for m in irreps_sh])
        self.irreps_out = Irreps([(channels, (l, (-1) ** l)) for l in range(hidden_lmax + 1)])
        self.linear_up = Linear(self.irreps_in, self.irreps_in)
        self.conv = ChannelwiseTensorProduct(self.irreps_in, irreps_sh, filter_ir_out=self.irreps_a,
                                             shared_weights=False, internal_weights=False)
        self.radial = ScalarMLP([num_basis] + [radial_hidden] * radial_layers + [self.conv.weight_numel])
        self.linear_a = Linear(self.conv.irreps_out, self.irreps_a)
        self.contraction = SymmetricContraction(
            Irreps([m.ir for m in irreps_sh]), Irreps([m.ir for m in self.irreps_out]), channels, correlation, num_species
        )
        self.linear_out = Linear(self.irreps_out, self.irreps_out)
        self.residual = (
            SpeciesLinear(self.irreps_in, self.irreps_out, num_species) if residual else None
        )
        self.inv_avg = 1.0 / avg_num_neighbors
        # the layouts of the symmetric contraction, [N, K, sum(2l+1)], to and from mul_ir: permutations
        self._to_channels = ColumnMap(self, "_to_channels_idx", channel_major(self.irreps_a), self.irreps_a.dim)
        self._from_channels = ColumnMap(self, "_from_channels_idx", channel_major(self.irreps_out),
                                        self.irreps_out.dim, place=True)
        mask = torch.zeros(self.irreps_out.dim)
        mask[: self.irreps_out[0].dim] = 1  # the 0e features (the first irrep)
        self.register_buffer("_scalar_mask", mask, persistent=False)

    def forward(self, h, species, edge_index, edge_sh, edge_basis, edge_envelope, scalars_only: bool = False,
                edge_slot: torch.Tensor | None = None):
        """The layer's output features; with ``scalars_only``, only their ``0e`` columns (zeros elsewhere),
        the symmetric contraction computing its ``0e`` output only. ``edge_slot``: each edge's row of
        ``edge_basis`` (one row per pair of reverse edges, see ``reverse_pairs``)."""
        sender, receiver = edge_index[0], edge_index[1]
        x = self.linear_up(h)
        # the product is linear in the harmonics: the envelope scales them ([E, 9]), not the weights ([E, numel])
        weights = self.radial(edge_basis)
        weights = per_edge(weights, edge_slot)
        a = self.conv.gather_scatter_sum(x, sender, edge_sh * edge_envelope[:, None], weights, receiver,
                                        h.shape[0]) * self.inv_avg
        a = self.linear_a(a)
        k = self.irreps_a[0].mul  # [N, K, components]: sizes spelled out, as N may be 0
        b = self.contraction(self._to_channels(self, a).view(a.shape[0], k, self.irreps_a.dim // k), species,
                             first_only=scalars_only)
        if scalars_only:  # [N, K, 1]: the 0e output (the first irrep), zeros for the others
            rest = self.contraction.irreps_out.dim - self.contraction.first_dim
            b = torch.cat([b, b.new_zeros(b.shape[0], b.shape[1], rest)], dim=2)
        out = self.linear_out(self._from_channels(self, b.reshape(b.shape[0], b.shape[1] * b.shape[2])))
        if self.residual is not None:
            out = out + self.residual(h, species)
        return out * self._scalar_mask.to(out.dtype) if scalars_only else out


@register("mace")
class MACE(SteerableStack):
    """The MACE representation: equivariant features of body order ``correlation + 1`` per layer.

    Parameters
    ----------
    num_species : int
        Number of elements.
    cutoff : float
        Radial cutoff (Å).
    num_layers : int
        Number of message-passing layers (paper: 2).
    channels : int
        Copies of each irrep in the features and the atomic basis (paper: 128-256).
    lmax : int
        Highest degree of the spherical harmonics and of the atomic basis
        (the paper's ``l_max``, 3 there).
    hidden_lmax : int, optional
        Highest degree of the features passed between layers (the paper's
        ``L_max``); defaults to ``lmax``.
    correlation : int
        Highest degree of the product basis, ``nu`` (paper: 3, body order 4).
    num_basis : int
        Number of Bessel functions in the distance expansion.
    radial_basis : {"bessel"}
        Distance expansion.
    radial_hidden, radial_layers : int
        Width and depth of the radial MLP (paper: 64, 3).
    polynomial_p : int
        Degree of the polynomial cutoff envelope.
    avg_num_neighbors : float
        The atomic basis is divided by it.
    scalars_only : bool
        Attribute (not a parameter), set by a :class:`~clebsch.models.Potential` whose heads read
        only the ``0e`` features: the last layer's symmetric contraction computes its ``0e``
        output only (as mace-torch's last layer does) and the other outputs are zero.

    Trains by default at a learning rate of 0.02 (``training_defaults``; the trainer's default is 0.01):
    on rMD17 ethanol in 160 epochs the test force MAE was 7.6 against 8.4 meV/Å, and on 400 frames of
    GFN2-xTB MD of ethanol and of acetamide 9.8 against 10.1 and 7.1 against 7.4 meV/Å in 200 epochs
    (one run each, ``benchmarks/families.py``).
    """

    training_defaults = {"optimizer.lr": 0.02}

    def __init__(
        self,
        num_species: int,
        cutoff: float,
        *,
        num_layers: int = 2,
        channels: int = 32,
        lmax: int = 2,
        hidden_lmax: int | None = None,
        correlation: int = 3,
        num_basis: int = 8,
        radial_basis: str = "bessel",
        radial_hidden: int = 64,
        radial_layers: int = 3,
        polynomial_p: int = 6,
        avg_num_neighbors: float = 10.0,
    ):
        super().__init__()
        if radial_basis != "bessel":
            raise ValueError(f"MACE supports radial_basis='bessel', got {radial_basis!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        hidden_lmax = lmax if hidden_lmax is None else hidden_lmax
        self.num_species = num_species
        self.irreps_sh = Irreps.spherical_harmonics(lmax)
        self.embedding = torch.nn.Parameter(torch.randn(num_species, channels))
        self.basis = BesselBasis(cutoff, num_basis)
        self.envelope = PolynomialCutoff(cutoff, p=polynomial_p)
        irreps = Irreps([(channels, "0e")])
        self.layers = torch.nn.ModuleList()
        for t in range(num_layers):
            layer = MACELayer(irreps, self.irreps_sh, channels, hidden_lmax, correlation, num_species, num_basis,
                              radial_hidden, radial_layers, avg_num_neighbors, residual=t > 0)
            self.layers.append(layer)
            irreps = layer.irreps_out
        self.irreps_out = irreps
        self.scalars_only = False
