"""A non-equivariant baseline: message passing on the raw Cartesian components of the edge vectors."""

from __future__ import annotations

import math

import torch

from ..nn import PolynomialCutoff, ScalarMLP, radial_basis_of, silu
from ..o3 import Irreps
from ._registry import register

__all__ = ["CartesianGNN"]


class CartesianLayer(torch.nn.Module):
    """One layer: an MLP message per edge from both atoms and the edge's (x, y, z, radial basis); residual update."""

    def __init__(self, channels: int, num_basis: int, avg_num_neighbors: float):
        super().__init__()
        self.edge_mlp = ScalarMLP([2 * channels + 3 + num_basis, channels, channels], bias=True)
        self.node_mlp = ScalarMLP([2 * channels, channels, channels], bias=True)
        self.norm = 1.0 / math.sqrt(avg_num_neighbors)

    def forward(self, h, sender, receiver, edge_features, envelope):
        m = silu(self.edge_mlp(torch.cat([h[receiver], h[sender], edge_features], dim=-1)))
        m = m * envelope[:, None]
        agg = torch.zeros(h.shape[0], m.shape[1], dtype=h.dtype, device=h.device).index_add_(0, receiver, m)
        return h + self.node_mlp(torch.cat([h, agg * self.norm], dim=-1))


@register("cartesian")
class CartesianGNN(torch.nn.Module):
    r"""A plain message-passing network on Cartesian edge vectors: the baseline without built-in symmetry.

    Each atom starts from an embedding of its element. A layer computes, for
    every edge from neighbour j to atom i, a message: an MLP of the two atoms'
    features, the *raw components* ``(x, y, z) / cutoff`` of the edge vector
    and a radial basis of its length, multiplied by a smooth polynomial
    envelope that vanishes (with two derivatives) at the cutoff. The messages
    are summed on ``i`` and update its features through a second MLP
    (residual). Because only edge vectors enter, the features are invariant
    under translations and permutations of the atoms; because their components
    enter as numbers, they are **not** invariant under rotations or
    reflections: the network must learn rotational symmetry from the data
    (train it with ``data.augment: rotations``). It is the control in a study of
    what equivariance buys (:mod:`clebsch.studies.learning_curve`).

    Outputs ``channels x 0e``: scalars in layout only; under a rotation of the
    structure they change (class attribute ``equivariant = False``, see
    :func:`clebsch.models._registry.is_equivariant`). An atom without
    neighbours gets features of its element only.

    Parameters
    ----------
    num_species : int
        Number of elements (embedding rows).
    cutoff : float
        Radial cutoff, Å.
    num_layers : int
        Message-passing layers.
    channels : int
        Atom feature and message size.
    num_basis : int
        Radial basis functions of the edge length.
    radial_basis : str
        ``"bessel"`` or ``"gaussian"``.
    avg_num_neighbors : float
        Message sums are divided by its square root.

    Examples
    --------
    >>> net = CartesianGNN(2, 4.0, num_layers=2, channels=8)
    >>> net.irreps_out, CartesianGNN.equivariant
    (8x0e, False)
    >>> species = torch.tensor([0, 1, 1])
    >>> edge_index = torch.tensor([[0, 1, 0, 2], [1, 0, 2, 0]])
    >>> vectors = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.2, 0], [0, -1.2, 0]])
    >>> net(species, edge_index, vectors).shape
    torch.Size([3, 8])
    """

    equivariant = False

    def __init__(
        self,
        num_species: int,
        cutoff: float,
        *,
        num_layers: int = 3,
        channels: int = 64,
        num_basis: int = 8,
        radial_basis: str = "bessel",
        avg_num_neighbors: float = 10.0,
    ):
        super().__init__()
        if not avg_num_neighbors > 0:
            raise ValueError(f"model.avg_num_neighbors must be positive, got {avg_num_neighbors}")
        self.irreps_out = Irreps(f"{channels}x0e")
        self.cutoff = float(cutoff)
        self.embedding = torch.nn.Embedding(num_species, channels)
        self.basis = radial_basis_of(radial_basis, cutoff, num_basis)
        self.envelope = PolynomialCutoff(cutoff)
        self.layers = torch.nn.ModuleList(
            CartesianLayer(channels, num_basis, avg_num_neighbors) for _ in range(num_layers)
        )

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        sender, receiver = edge_index
        r = torch.linalg.norm(edge_vectors, dim=-1)
        edge_features = torch.cat([edge_vectors / self.cutoff, self.basis(r)], dim=-1)
        envelope = self.envelope(r)
        h = self.embedding(species).to(edge_vectors.dtype)
        for layer in self.layers:
            h = layer(h, sender, receiver, edge_features, envelope)
        return h
