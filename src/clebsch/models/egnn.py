"""EGNN: E(n)-equivariant graph network with invariant messages and coordinate updates."""

from __future__ import annotations

import math

import torch

from ..nn import PolynomialCutoff, ScalarMLP, radial_basis_of, silu
from ..o3 import Irreps
from ._registry import register

__all__ = ["EGNN"]


class EGNNLayer(torch.nn.Module):
    """One EGCL: edge messages, coordinate update, node update."""

    def __init__(self, channels, num_basis, avg_num_neighbors, attention, tanh, update_coordinates):
        super().__init__()
        self.edge_mlp = ScalarMLP([2 * channels + 1 + num_basis, channels, channels], bias=True)
        self.node_mlp = ScalarMLP([2 * channels, channels, channels], bias=True)
        self.attention = ScalarMLP([channels, 1], bias=True) if attention else None
        self.coord_mlp = ScalarMLP([channels, channels, 1], bias=True) if update_coordinates else None
        if self.coord_mlp is not None:
            with torch.no_grad():  # start close to the identity, as the paper's code does
                self.coord_mlp.weights[-1].mul_(1e-2)
        self.tanh = tanh
        self.message_norm = 1.0 / math.sqrt(avg_num_neighbors)
        self.coord_norm = 1.0 / avg_num_neighbors

    def forward(self, h, vectors, sender, receiver, scaled_cutoff, basis, envelope):
        d2 = vectors.pow(2).sum(-1, keepdim=True) * scaled_cutoff
        m = silu(self.edge_mlp(torch.cat([h[receiver], h[sender], d2, basis], dim=-1)))
        if self.attention is not None:
            m = m * torch.sigmoid(self.attention(m))
        m = m * envelope[:, None]
        n = h.shape[0]
        shift = None
        if self.coord_mlp is not None:
            w = self.coord_mlp(m)
            if self.tanh:
                w = torch.tanh(w)
            # x_i - x_j = -(edge vector j - i)
            push = -vectors * (w * envelope[:, None])
            shift = torch.zeros(n, 3, dtype=h.dtype, device=h.device).index_add_(0, receiver, push) * self.coord_norm
        agg = torch.zeros(n, m.shape[1], dtype=h.dtype, device=h.device).index_add_(0, receiver, m) * self.message_norm
        h = h + self.node_mlp(torch.cat([h, agg], dim=-1))
        return h, shift


@register("egnn")
class EGNN(torch.nn.Module):
    r"""EGNN (Satorras, Hoogeboom and Welling, ICML 2021, arXiv:2102.09844).

    Each layer (an E(n)-equivariant graph convolutional layer) computes a
    message for every edge from the two atoms' features and the squared
    distance between their *current* coordinates (plus a radial basis of the
    original distance), multiplied by the cutoff envelope and optionally by a
    learned attention weight in (0, 1). Each atom then moves by the average,
    over its neighbours, of the difference vectors ``x_i - x_j`` weighted by a
    scalar function of the message, and its features are updated from the sum
    of its messages (residual). Coordinates enter only through edge vectors, so
    an atom's position is its initial position plus its accumulated
    displacement; the edge vectors of the next layer are the input ones plus
    the difference of the two displacements. Outputs: the features
    (``channels x 0e``) and the accumulated displacement (``1x1o``).

    Parameters
    ----------
    num_species : int
        Number of elements (embedding rows).
    cutoff : float
        Radial cutoff, Å.
    num_layers : int
        EGCL layers.
    channels : int
        Atom feature and message size.
    num_basis : int
        Radial basis functions of the input distance.
    radial_basis : str
        ``"bessel"`` or ``"gaussian"``.
    avg_num_neighbors : float
        Message sums are divided by its square root, coordinate updates by it.
    attention : bool
        Weight each message by a learned sigmoid gate (the paper's inferred edges).
    tanh : bool
        Bound the coordinate-update weights with tanh.
    update_coordinates : bool
        Move the atoms each layer (``False`` gives an invariant network and a zero ``1o`` output).

    Examples
    --------
    >>> net = EGNN(2, 4.0, num_layers=2, channels=8)
    >>> net.irreps_out
    8x0e+1x1o
    >>> species = torch.tensor([0, 1, 1])
    >>> edge_index = torch.tensor([[0, 1, 0, 2], [1, 0, 2, 0]])
    >>> vectors = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.2, 0], [0, -1.2, 0]])
    >>> net(species, edge_index, vectors).shape
    torch.Size([3, 11])
    """

    def __init__(
        self,
        num_species: int,
        cutoff: float,
        *,
        num_layers: int = 4,
        channels: int = 64,
        num_basis: int = 8,
        radial_basis: str = "bessel",
        avg_num_neighbors: float = 10.0,
        attention: bool = False,
        tanh: bool = False,
        update_coordinates: bool = True,
    ):
        super().__init__()
        self.irreps_out = Irreps(f"{channels}x0e + 1x1o")
        self.embedding = torch.nn.Embedding(num_species, channels)
        self.basis = radial_basis_of(radial_basis, cutoff, num_basis)
        self.envelope = PolynomialCutoff(cutoff)
        self.scaled_cutoff = 1.0 / cutoff**2
        self.layers = torch.nn.ModuleList(
            EGNNLayer(channels, num_basis, avg_num_neighbors, attention, tanh, update_coordinates)
            for _ in range(num_layers)
        )

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        sender, receiver = edge_index
        r = torch.linalg.norm(edge_vectors, dim=-1)
        basis, envelope = self.basis(r), self.envelope(r)
        h = self.embedding(species).to(edge_vectors.dtype)
        displacement = torch.zeros(h.shape[0], 3, dtype=h.dtype, device=h.device)
        vectors = edge_vectors
        for layer in self.layers:
            h, shift = layer(h, vectors, sender, receiver, self.scaled_cutoff, basis, envelope)
            if shift is not None:
                displacement = displacement + shift
                vectors = edge_vectors + displacement[sender] - displacement[receiver]
        return torch.cat([h, displacement], dim=-1)
