"""NequIP: E(3)-equivariant interatomic potentials (Batzner et al., Nat. Commun. 13, 2453, 2022).

Every atom carries features ``h_i`` made of ``channels`` copies of each irrep up
to ``lmax`` (both parities when ``parity`` is set). One interaction block does

1. self-interaction: ``x_i = Linear(h_i)`` (mixes the copies of each irrep);
2. convolution: ``c_i = 1/sqrt(n_avg) sum_j u(r_ij) TP(x_j, Y(r_ij); R(r_ij))``,
   a channel-wise tensor product of the neighbour's features with the
   spherical harmonics of the edge, whose weights ``R`` are an MLP of a
   Bessel expansion of the distance, and ``u`` the polynomial envelope (p = 6);
3. ``Linear(c_i)`` plus a self-connection that depends on the element
   (``h_i ⊗ onehot(z_i)``), then a gate nonlinearity: scalars through SiLU
   (odd scalars through tanh) and every ``l > 0`` irrep scaled by a sigmoid of
   its own scalar gate;
4. a residual connection ``h_i <- h_i + block(h_i)`` when the irreps agree.

The features start as a learned embedding of the element (``channels x 0e``)
and the representation returns the features after the last block.
"""

from __future__ import annotations

import math

import torch

from ..nn import (
    BesselBasis,
    ChannelwiseTensorProduct,
    Linear,
    PolynomialCutoff,
    ScalarMLP,
    SpeciesLinear,
    gate_irreps,  # noqa: F401  (importable from here, as before)
    make_gate,
)
from ..o3 import Irrep, Irreps
from ._registry import register
from ._steerable import SteerableStack, per_edge

__all__ = ["NequIP"]

_SCALAR = Irrep("0e")


def hidden_irreps(channels: int, lmax: int, parity: bool) -> Irreps:
    """``channels`` copies of every irrep up to ``lmax``: the spherical-harmonic parity first, then the other."""
    irs = []
    for l in range(lmax + 1):
        irs.append((channels, (l, (-1) ** l)))
        if parity:
            irs.append((channels, (l, -((-1) ** l))))
    return Irreps(irs)


class InteractionBlock(torch.nn.Module):
    """One NequIP interaction block (see the module docstring)."""

    def __init__(self, irreps_in, target, irreps_sh, num_species, num_basis, radial_hidden, radial_layers,
                 avg_num_neighbors, resnet, recompute_products=False):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        self.self_interaction = Linear(self.irreps_in, self.irreps_in)
        self.conv = ChannelwiseTensorProduct(self.irreps_in, irreps_sh, filter_ir_out=target,
                                             shared_weights=False, internal_weights=False,
                                             recompute_products=recompute_products)
        irreps_mid = self.conv.irreps_out
        # keep only the target irreps the convolution can reach
        self.irreps_out = Irreps([m for m in target if m.ir in {x.ir for x in irreps_mid}])
        self.radial = ScalarMLP([num_basis] + [radial_hidden] * radial_layers + [self.conv.weight_numel])
        self.gate = make_gate(self.irreps_out)
        self.linear = Linear(irreps_mid, self.gate.irreps_in)
        # element-dependent linear map: h_i ⊗ onehot(z_i)
        self.num_species = num_species
        self.self_connection = SpeciesLinear(self.irreps_in, self.gate.irreps_in, num_species)
        self.norm = 1.0 / math.sqrt(avg_num_neighbors)
        self.resnet = resnet and self.irreps_out == self.irreps_in
        # the block when only its 0e outputs are read: the paths into 0e (consecutive columns of the
        # convolution's output, which is sorted by irrep), their radial weights, and the 0e columns
        self.scalar_conv = ChannelwiseTensorProduct(self.irreps_in, irreps_sh, filter_ir_out=["0e"],
                                                    shared_weights=False, internal_weights=False,
                                                    recompute_products=recompute_products)
        numel, columns = 0, []
        for p in self.conv.paths:
            if self.conv.irreps_out[p.i_out].ir == _SCALAR:
                columns += range(numel, numel + self.irreps_in[p.i_in1].mul)
            numel += self.irreps_in[p.i_in1].mul
        if numel != self.conv.weight_numel or len(columns) != self.scalar_conv.weight_numel:
            raise AssertionError("NequIP: the 0e paths' weights could not be located")  # pragma: no cover
        self.register_buffer("_scalar_weights", torch.tensor(columns, dtype=torch.long), persistent=False)
        starts = [s.start for s, (_, ir) in zip(self.conv.irreps_out.slices(), self.conv.irreps_out) if ir == _SCALAR]
        self._scalar_start = starts[0] if starts else 0
        mask = torch.zeros(self.irreps_out.dim)
        mask[[c for s, (_, ir) in zip(self.irreps_out.slices(), self.irreps_out) if ir == _SCALAR
              for c in range(s.start, s.stop)]] = 1
        self.register_buffer("_scalar_mask", mask, persistent=False)

    def forward(self, h, species, edge_index, edge_sh, edge_basis, edge_envelope, scalars_only: bool = False,
                edge_slot: torch.Tensor | None = None):
        """The block's output features; with ``scalars_only``, only their ``0e`` columns (zeros elsewhere),
        from the convolution's paths into ``0e`` only (the others are not computed). ``edge_slot``: each
        edge's row of ``edge_basis`` (one row per pair of reverse edges, see ``reverse_pairs``)."""
        sender, receiver = edge_index[0], edge_index[1]
        x = self.self_interaction(h)
        # the product is linear in the harmonics: the envelope scales them ([E, 9]), not the weights ([E, numel])
        sh = edge_sh * edge_envelope[:, None]
        if scalars_only:
            weights = self.radial(edge_basis, self._scalar_weights)
            weights = per_edge(weights, edge_slot)
            conv = self.scalar_conv.gather_scatter_sum(x, sender, sh, weights, receiver, h.shape[0]) * self.norm
            n, a = conv.shape[0], self._scalar_start
            conv = torch.cat([conv.new_zeros(n, a), conv, conv.new_zeros(n, self.conv.irreps_out.dim - a - conv.shape[1])], 1)
        else:
            weights = self.radial(edge_basis)
            weights = per_edge(weights, edge_slot)
            conv = self.conv.gather_scatter_sum(x, sender, sh, weights, receiver, h.shape[0]) * self.norm
        out = self.gate(self.linear(conv) + self.self_connection(h, species))
        out = h + out if self.resnet else out
        return out * self._scalar_mask.to(out.dtype) if scalars_only else out


@register("nequip")
class NequIP(SteerableStack):
    """The NequIP representation: equivariant per-atom features.

    Parameters
    ----------
    num_species : int
        Number of elements.
    cutoff : float
        Radial cutoff (Å).
    num_layers : int
        Number of interaction blocks (paper: 4-6).
    channels : int
        Copies of each irrep in the hidden features (paper: 32-64).
    lmax : int
        Highest degree of the spherical harmonics and of the features (paper: 1-3).
    parity : bool
        Features of both parities for each ``l`` (O(3) NequIP); otherwise only
        the spherical-harmonic parity ``(-1)**l``. Reflections are respected either way.
    num_basis : int
        Number of Bessel functions in the distance expansion.
    radial_basis : {"bessel"}
        Distance expansion (the paper's Bessel basis with trainable frequencies).
    trainable_basis : bool
        Learn the Bessel frequencies.
    radial_hidden, radial_layers : int
        Width and depth of the radial MLP that gives the convolution weights.
    polynomial_p : int
        Degree of the polynomial cutoff envelope.
    avg_num_neighbors : float
        Convolutions are divided by its square root.
    resnet : bool
        Residual connections between blocks of equal irreps.
    scalars_only : bool
        Attribute (not a parameter), set by a :class:`~clebsch.models.Potential` whose heads read
        only the ``0e`` features (an energy-only model): the last block computes only its
        convolution's paths into ``0e`` (nequip's last layer is scalars-only as well) and the
        other outputs are zero.
    recompute_products : bool
        Where the convolution runs in PyTorch operations (a GPU, tracing, no C compiler), keep only
        its inputs for the backward passes and recompute its per-edge products there: 35-50% less
        memory in a force training step, 5-10% slower on small molecules and 40-50% on a
        1,000-atom box (:class:`~clebsch.nn.TensorProduct`). On the CPU the convolution's C kernels
        (:meth:`~clebsch.nn.TensorProduct.gather_scatter_sum`) keep only its inputs anyway.
    """

    def __init__(
        self,
        num_species: int,
        cutoff: float,
        *,
        num_layers: int = 3,
        channels: int = 32,
        lmax: int = 2,
        parity: bool = True,
        num_basis: int = 8,
        radial_basis: str = "bessel",
        trainable_basis: bool = True,
        radial_hidden: int = 64,
        radial_layers: int = 2,
        polynomial_p: int = 6,
        avg_num_neighbors: float = 10.0,
        resnet: bool = True,
        recompute_products: bool = False,
    ):
        super().__init__()
        if radial_basis != "bessel":
            raise ValueError(f"NequIP supports radial_basis='bessel', got {radial_basis!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_species = num_species
        self.lmax = lmax
        self.irreps_sh = Irreps.spherical_harmonics(lmax)
        self.embedding = torch.nn.Parameter(torch.randn(num_species, channels))
        self.basis = BesselBasis(cutoff, num_basis, trainable=trainable_basis)
        self.envelope = PolynomialCutoff(cutoff, p=polynomial_p)
        target = hidden_irreps(channels, lmax, parity)
        irreps = Irreps([(channels, "0e")])
        self.layers = torch.nn.ModuleList()
        for _ in range(num_layers):
            block = InteractionBlock(irreps, target, self.irreps_sh, num_species, num_basis, radial_hidden,
                                     radial_layers, avg_num_neighbors, resnet, recompute_products)
            self.layers.append(block)
            irreps = block.irreps_out
        self.irreps_out = irreps
        self.scalars_only = False
