"""PaiNN: polarizable atom interaction network, scalar and vector features exchanged each layer."""

from __future__ import annotations

import math

import torch

from ..nn import PolynomialCutoff, ScalarMLP, radial_basis_of
from ..nn._message import Edges, message_sum
from ..o3 import Irreps
from ._registry import register

__all__ = ["PaiNN"]


class ChannelLinear(torch.nn.Module):
    """Mixes the channels of vector features ``[N, C, 3] -> [N, C, 3]``; no bias, so it is equivariant."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(channels, channels))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ncx,cd->ndx", v, self.weight) / math.sqrt(self.weight.shape[0])


class Message(torch.nn.Module):
    """Equivariant convolution: neighbour scalars and vectors, filtered by the distance."""

    def __init__(self, channels: int, num_basis: int, avg_num_neighbors: float):
        super().__init__()
        self.channels = channels
        self.phi = ScalarMLP([channels, channels, 3 * channels], bias=True)
        self.filter = ScalarMLP([num_basis, 3 * channels], bias=True)
        self.norm = 1.0 / math.sqrt(avg_num_neighbors)

    def forward(self, s, v, edges: Edges, basis, envelope, unit):
        # the sender's part phi(s_j) and the edge's filter W(r_ij) meet in the sums over the edges
        p_vv, p_s, p_vs = torch.split(self.phi(s), self.channels, dim=-1)
        w_vv, w_s, w_vs = torch.split(self.filter(basis) * envelope[:, None], self.channels, dim=-1)
        ds = message_sum(w_s[:, None], p_s[:, None], edges)[:, 0]
        dv = message_sum(w_vv[:, None], p_vv[:, None] * v.transpose(1, 2), edges)  # [N, 3, C]
        dv = dv + message_sum(w_vs[:, None] * unit[:, :, None], p_vs[:, None].expand(-1, 3, -1), edges, (0, 1, 2))
        return s + ds * self.norm, v + dv.transpose(1, 2) * self.norm


class Update(torch.nn.Module):
    """Atom-wise exchange between an atom's scalars and vectors."""

    def __init__(self, channels: int, epsilon: float):
        super().__init__()
        self.channels = channels
        self.U = ChannelLinear(channels)
        self.V = ChannelLinear(channels)
        self.mlp = ScalarMLP([2 * channels, channels, 3 * channels], bias=True)
        self.epsilon = epsilon

    def forward(self, s, v):
        uv, vv = self.U(v), self.V(v)
        norm = torch.sqrt(vv.pow(2).sum(-1) + self.epsilon)
        a_vv, a_sv, a_ss = torch.split(self.mlp(torch.cat([s, norm], dim=-1)), self.channels, dim=-1)
        s = s + a_sv * (uv * vv).sum(-1) + a_ss
        v = v + a_vv[:, :, None] * uv
        return s, v


@register("painn")
class PaiNN(torch.nn.Module):
    r"""PaiNN (Schütt, Unke and Gastegger, ICML 2021, arXiv:2102.03150).

    Every atom carries ``channels`` scalars s_i and ``channels`` vectors v_i
    (starting from an element embedding and zero). Each layer has two parts.
    *Message*: a scalar network of the neighbour's scalars s_j, multiplied by a
    linear filter of the radial basis of r_ij and by the cutoff envelope, gives
    three channel-wise weights; their sum over neighbours updates s_i (first
    weight), and v_i by the sum of the neighbour's vectors times the second
    weight plus the unit edge vector times the third. *Update*: two channel
    mixings U and V of the vectors; a scalar network of s_i and the norms of
    V v_i gives three weights a; the vectors gain a_vv * U v_i and the scalars
    a_sv * <U v_i, V v_i> + a_ss. Vectors are only mixed across channels and
    scaled by invariants, so they stay equivariant (polar vectors, ``1o``).
    Outputs: ``channels x 0e + channels x 1o``.

    Parameters
    ----------
    num_species : int
        Number of elements (embedding rows).
    cutoff : float
        Radial cutoff, Å.
    num_layers : int
        Message + update blocks.
    channels : int
        Scalars and vectors per atom.
    num_basis : int
        Radial basis functions (the paper uses 20 sinc functions, i.e. Bessel).
    radial_basis : str
        ``"bessel"`` or ``"gaussian"``.
    avg_num_neighbors : float
        Neighbour sums are divided by its square root.
    epsilon : float
        Added under the square root of the vector norms, so their gradient exists at zero.

    Examples
    --------
    >>> net = PaiNN(2, 4.0, num_layers=2, channels=8)
    >>> net.irreps_out
    8x0e+8x1o
    >>> species = torch.tensor([0, 1, 1])
    >>> edge_index = torch.tensor([[0, 1, 0, 2], [1, 0, 2, 0]])
    >>> vectors = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.2, 0], [0, -1.2, 0]])
    >>> net(species, edge_index, vectors).shape
    torch.Size([3, 32])
    """

    def __init__(
        self,
        num_species: int,
        cutoff: float,
        *,
        num_layers: int = 3,
        channels: int = 64,
        num_basis: int = 20,
        radial_basis: str = "bessel",
        avg_num_neighbors: float = 10.0,
        epsilon: float = 1e-8,
    ):
        super().__init__()
        self.channels = channels
        self.irreps_out = Irreps(f"{channels}x0e + {channels}x1o")
        self.embedding = torch.nn.Embedding(num_species, channels)
        self.basis = radial_basis_of(radial_basis, cutoff, num_basis)
        self.envelope = PolynomialCutoff(cutoff)
        self.messages = torch.nn.ModuleList(Message(channels, num_basis, avg_num_neighbors) for _ in range(num_layers))
        self.updates = torch.nn.ModuleList(Update(channels, epsilon) for _ in range(num_layers))

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        sender, receiver = edge_index
        r = torch.linalg.norm(edge_vectors, dim=-1)
        unit = edge_vectors / r[:, None]
        basis, envelope = self.basis(r), self.envelope(r)
        s = self.embedding(species).to(edge_vectors.dtype)
        v = s.new_zeros(s.shape[0], self.channels, 3)
        edges = Edges(sender, receiver, species.shape[0])
        for message, update in zip(self.messages, self.updates):
            s, v = message(s, v, edges, basis, envelope, unit)
            s, v = update(s, v)
        return torch.cat([s, v.reshape(v.shape[0], 3 * self.channels)], dim=-1)  # sizes spelled out: no atoms is valid
