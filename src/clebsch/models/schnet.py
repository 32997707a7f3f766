"""SchNet: continuous-filter convolutions on interatomic distances (invariant)."""

from __future__ import annotations

import math

import torch

from ..nn import PolynomialCutoff, ScalarMLP, radial_basis_of  # radial_basis_of: also importable from here
from ..nn._message import Edges, message_sum
from ..o3 import Irreps
from ._registry import register

__all__ = ["SchNet", "shifted_softplus"]


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    """``softplus(x) - log 2``: smooth, zero at zero, SchNet's activation."""
    return torch.nn.functional.softplus(x) - math.log(2.0)


class Interaction(torch.nn.Module):
    """One SchNet interaction block: atom-wise, cfconv, atom-wise, ssp, atom-wise; added to the input."""

    def __init__(self, channels: int, num_filters: int, num_basis: int, avg_num_neighbors: float):
        super().__init__()
        self.filter_net = ScalarMLP([num_basis, num_filters, num_filters], activation=shifted_softplus, bias=True)
        self.into_filters = ScalarMLP([channels, num_filters], bias=True)
        self.out = ScalarMLP([num_filters, channels, channels], activation=shifted_softplus, bias=True)
        self.norm = 1.0 / math.sqrt(avg_num_neighbors)

    def forward(self, x, edges: Edges, basis, envelope):
        filters = self.filter_net(basis) * envelope[:, None]
        conv = message_sum(filters[:, None], self.into_filters(x)[:, None], edges)[:, 0] * self.norm
        return x + self.out(conv)


@register("schnet")
class SchNet(torch.nn.Module):
    r"""SchNet (Schütt et al., NeurIPS 2017, arXiv:1706.08566).

    Each atom starts from an embedding of its element. An interaction block
    maps the atom features to filter space, convolves them with a
    *continuous filter* -- a small network of the expanded interatomic
    distance, multiplied by a smooth cutoff envelope -- by summing, over the
    neighbours j of atom i, the neighbour's features times the filter of the
    distance r_ij; two atom-wise layers with a shifted-softplus in between map
    the result back and it is added to the atom's features. Only distances
    enter, so the features are invariant scalars (``channels x 0e``).

    Parameters
    ----------
    num_species : int
        Number of elements (embedding rows).
    cutoff : float
        Radial cutoff, Å.
    num_layers : int
        Interaction blocks.
    channels : int
        Atom feature size.
    num_filters : int, optional
        Size of the continuous filters; defaults to ``channels``.
    num_basis : int
        Radial basis functions expanding each distance.
    radial_basis : str
        ``"gaussian"`` (the paper's) or ``"bessel"``.
    avg_num_neighbors : float
        Neighbour sums are divided by its square root.

    Examples
    --------
    >>> net = SchNet(2, 4.0, num_layers=2, channels=8)
    >>> net.irreps_out
    8x0e
    >>> species = torch.tensor([0, 1, 1])
    >>> edge_index = torch.tensor([[0, 1, 0, 2], [1, 0, 2, 0]])
    >>> vectors = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.2, 0], [0, -1.2, 0]])
    >>> net(species, edge_index, vectors).shape
    torch.Size([3, 8])
    """

    def __init__(
        self,
        num_species: int,
        cutoff: float,
        *,
        num_layers: int = 3,
        channels: int = 64,
        num_filters: int | None = None,
        num_basis: int = 16,
        radial_basis: str = "gaussian",
        avg_num_neighbors: float = 10.0,
    ):
        super().__init__()
        self.irreps_out = Irreps(f"{channels}x0e")
        num_filters = channels if num_filters is None else num_filters
        self.embedding = torch.nn.Embedding(num_species, channels)
        self.basis = radial_basis_of(radial_basis, cutoff, num_basis)
        self.envelope = PolynomialCutoff(cutoff)
        self.interactions = torch.nn.ModuleList(
            Interaction(channels, num_filters, num_basis, avg_num_neighbors) for _ in range(num_layers)
        )

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        sender, receiver = edge_index
        r = torch.linalg.norm(edge_vectors, dim=-1)
        basis, envelope = self.basis(r), self.envelope(r)
        x = self.embedding(species).to(edge_vectors.dtype)
        edges = Edges(sender, receiver, species.shape[0])
        for block in self.interactions:
            x = block(x, edges, basis, envelope)
        return x
