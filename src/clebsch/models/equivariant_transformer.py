"""Equivariant Transformer (TorchMD-Net): distance-filtered attention over scalar and vector features."""

from __future__ import annotations

import math

import torch

from ..nn import CosineCutoff, silu
from ..nn._message import Edges, edge_dot, message_sum
from ..o3 import Irreps
from ._registry import register
from ._steerable import per_edge, reverse_pairs

__all__ = ["EquivariantTransformer", "ExpNormalBasis", "NeighborEmbedding"]


class ExpNormalBasis(torch.nn.Module):
    r"""Exponential normal radial basis (PhysNet): :math:`\exp(-\beta_k (e^{-r} - \mu_k)^2)`, ``k = 1..num_basis``.

    The centres :math:`\mu_k` are evenly spaced between :math:`e^{-r_c}` and 1
    and :math:`\beta_k = (2 (1 - e^{-r_c}) / K)^{-2}`: Gaussians in
    :math:`e^{-r}`, denser at short distances. The cutoff envelope is applied
    by the caller.

    Examples
    --------
    >>> ExpNormalBasis(5.0, 16)(torch.tensor([0.5, 1.0, 4.0])).shape
    torch.Size([3, 16])
    """

    def __init__(self, cutoff: float, num_basis: int):
        super().__init__()
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        if num_basis < 1:
            raise ValueError(f"num_basis must be >= 1, got {num_basis}")
        start = math.exp(-cutoff)
        self.register_buffer("mu", torch.linspace(start, 1.0, num_basis, dtype=torch.get_default_dtype()))
        self.beta = (2.0 / num_basis * (1.0 - start)) ** -2

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = torch.exp(-r)[..., None] - self.mu.to(r.dtype)
        return torch.exp(-self.beta * x * x)


class NeighborEmbedding(torch.nn.Module):
    r"""Initial atom scalars from the element and its neighbours' elements.

    .. math:: x_i = W^C \big[\, W^E z_i \;;\; \textstyle\sum_j \varphi(d_{ij})\, W^N z_j \odot W^F e(d_{ij}) \,\big]

    with ``z`` one-hot elements, ``e`` the radial basis and :math:`\varphi` the
    cutoff envelope; an atom without neighbours gets :math:`W^C [W^E z_i; 0]`.
    """

    def __init__(self, num_species: int, channels: int, num_basis: int):
        super().__init__()
        self.embedding = torch.nn.Embedding(num_species, channels)
        self.neighbor_embedding = torch.nn.Embedding(num_species, channels)
        self.distance_projection = torch.nn.Linear(num_basis, channels)
        self.combine = torch.nn.Linear(2 * channels, channels)

    def forward(self, species, edges: Edges, rbf, envelope, slot=None):
        x = self.embedding(species).to(rbf.dtype)
        neighbor = self.neighbor_embedding(species).to(rbf.dtype)
        filters = per_edge(self.distance_projection(rbf) * envelope[:, None], slot)
        neighbors = message_sum(filters[:, None], neighbor[:, None], edges)[:, 0]
        return self.combine(torch.cat([x, neighbors], dim=-1))


class AttentionLayer(torch.nn.Module):
    """One ET layer: multi-head attention on the scalars, then the scalar/vector update (residual)."""

    def __init__(self, channels: int, num_heads: int, num_basis: int):
        super().__init__()
        self.channels = channels
        self.num_heads = num_heads
        self.layer_norm = torch.nn.LayerNorm(channels)
        self.query = torch.nn.Linear(channels, channels)
        self.key = torch.nn.Linear(channels, channels)
        self.value = torch.nn.Linear(channels, 3 * channels)
        self.key_filter = torch.nn.Linear(num_basis, channels)  # D^K
        self.value_filter = torch.nn.Linear(num_basis, 3 * channels)  # D^V
        self.output = torch.nn.Linear(channels, 3 * channels)  # O
        self.vector_projection = torch.nn.Linear(channels, 3 * channels, bias=False)  # U1, U2, U3

    def attention_weights(self, x, edges: Edges, rbf, envelope, slot=None) -> torch.Tensor:
        """``A_ij`` per edge and head, ``[E, num_heads]``, from the layer-normed scalars ``x``; with ``slot``
        ``[E]``, ``rbf`` and ``envelope`` hold one row per pair of reverse edges and each edge reads its pair's."""
        dk = per_edge(silu(self.key_filter(rbf)), slot)
        qk = edge_dot(self.key(x)[:, None], self.query(x)[:, None], edges)[:, 0]  # q_i * k_j per edge
        logits = (qk * dk).reshape(-1, self.num_heads, self.channels // self.num_heads)
        return silu(logits.sum(-1)) * per_edge(envelope, slot)[:, None]

    def forward(self, x, vec, edges: Edges, rbf, envelope, unit, scalars_only: bool = False, slot=None):
        """The updated ``(x, vec)``; with ``scalars_only`` the vectors are not updated (nothing reads them).
        With ``slot`` ``[E]``, ``rbf`` and ``envelope`` hold one row per pair of reverse edges (the filters,
        functions of the length alone, are computed once per pair) and each edge reads its pair's row."""
        c = self.channels
        h = self.layer_norm(x)
        weights = self.attention_weights(h, edges, rbf, envelope, slot)
        filters = per_edge(silu(self.value_filter(rbf)) * envelope[:, None], slot)
        d1, d2, d3 = torch.split(filters, c, dim=-1)
        v1, v2, v3 = torch.split(self.value(h), c, dim=-1)
        # the messages, each summed in one pass over the edges: y = sum_j A_ij d3_ij v3_j and
        # w = sum_j d1_ij v1_j vec_j + d2_ij v2_j r_ij / |r_ij|
        scalar_weight = (d3.reshape(-1, self.num_heads, c // self.num_heads) * weights[..., None]).reshape(-1, 1, c)
        y = message_sum(scalar_weight, v3[:, None], edges)[:, 0]
        o1, o2, o3 = torch.split(self.output(y), c, dim=-1)
        u1, u2, u3 = torch.split(self.vector_projection(vec), c, dim=-1)
        dx = (u1 * u2).sum(dim=1) * o2 + o3
        if scalars_only:
            return x + dx, vec
        w = message_sum(d1[:, None], v1[:, None] * vec, edges)
        w = w + message_sum(d2[:, None] * unit[:, :, None], v2[:, None].expand(-1, 3, -1), edges, (0, 1, 2))
        dvec = o1[:, None, :] * u3 + w
        return x + dx, vec + dvec


@register("equivariant_transformer")
class EquivariantTransformer(torch.nn.Module):
    r"""Equivariant Transformer (Thölke and De Fabritiis, ICLR 2022, arXiv:2202.02541).

    Every atom carries ``channels`` scalars x_i and ``channels`` vectors v_i
    (3 components each). The scalars start from a *neighbour embedding* (the
    element's embedding joined with a distance-filtered sum of its neighbours'
    element embeddings, :class:`NeighborEmbedding`), the vectors from zero.
    Distances enter through the cosine cutoff :math:`\varphi(d_{ij})` and
    e(d_ij), an exponential-normal radial basis (:class:`ExpNormalBasis`)
    times :math:`\varphi(d_{ij})`.

    Each layer first layer-normalises the scalars, then attends. Queries
    q = W^Q x_i, keys k = W^K x_j and a key filter d^K = SiLU(D^K e(d_ij))
    give, per head, the weight

    .. math:: A_{ij} = \mathrm{SiLU}\Big(\sum_k q_{ik}\, k_{jk}\, d^K_{ij,k}\Big)\, \varphi(d_{ij})

    (a SiLU instead of a softmax, so the weights need no normalisation over
    the neighbours and vanish smoothly at the cutoff). Values
    v_j ⊙ d^V_ij, with d^V = SiLU(D^V e(d_ij)) φ(d_ij), are split into three
    parts s¹, s², s³. The scalar message is y_i = Σ_j A_ij s³_ij (per head);
    the vector message is w_i = Σ_j s¹_ij v_j + s²_ij r_ij/|r_ij|, the
    neighbours' vectors and the edge direction. The update splits
    W^O y_i into o¹, o², o³ and three channel mixings U¹, U², U³ of the vectors:

    .. math::
        \Delta x_i = \langle U^1 v_i, U^2 v_i\rangle \odot o^2_i + o^3_i, \qquad
        \Delta v_i = o^1_i \odot U^3 v_i + w_i,

    added to x_i and v_i. The scalars are layer-normalised once more at the
    end. Vectors are only mixed across channels, scaled by invariants and built
    from edge directions, so they are polar vectors; the paper's value filter
    is here also multiplied by φ, so that every edge term goes to zero at the
    cutoff. Outputs: ``channels x 0e + channels x 1o``.

    With ``scalars_only`` set (a :class:`~clebsch.models.Potential` sets it when
    none of its heads reads more than the ``0e`` features) the last layer skips
    its vector update and the ``1o`` outputs are zero. Where the edges come in
    reverse pairs (a radius graph on the CPU, :func:`~clebsch.models._steerable.reverse_pairs`),
    the key and value filters, functions of the length alone, are computed once per pair.

    Parameters
    ----------
    num_species : int
        Number of elements (embedding rows).
    cutoff : float
        Radial cutoff, Å.
    num_layers : int
        Attention layers (the paper: 6).
    channels : int
        Embedding dimension F: scalars and vectors per atom (the paper: 256).
    num_heads : int
        Attention heads; must divide ``channels`` (the paper: 8).
    num_basis : int
        Exponential-normal radial basis functions, the paper's number of RBFs (the paper: 32).

    Examples
    --------
    >>> net = EquivariantTransformer(2, 4.0, num_layers=2, channels=8, num_heads=2, num_basis=8)
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
        channels: int = 32,
        num_heads: int = 4,
        num_basis: int = 16,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide channels ({channels})")
        self.channels = channels
        self.irreps_out = Irreps(f"{channels}x0e + {channels}x1o")
        self.scalars_only = False
        self.rbf = ExpNormalBasis(cutoff, num_basis)
        self.envelope = CosineCutoff(cutoff)
        self.embedding = NeighborEmbedding(num_species, channels, num_basis)
        self.layers = torch.nn.ModuleList(AttentionLayer(channels, num_heads, num_basis) for _ in range(num_layers))
        self.out_norm = torch.nn.LayerNorm(channels)

    def _edges(self, edge_index, edge_vectors):
        """``(rbf, envelope, unit, slot)``: the basis (times the cutoff) and the cutoff of each pair of reverse
        edges (functions of the length alone, :func:`reverse_pairs`) or of each edge, the unit vectors."""
        r = torch.linalg.norm(edge_vectors, dim=-1)
        pairs = reverse_pairs(edge_index, edge_vectors)
        slot, length = (None, r) if pairs is None else (pairs[1], r.index_select(0, pairs[0]))
        envelope = self.envelope(length)
        return self.rbf(length) * envelope[:, None], envelope, edge_vectors / r[:, None], slot

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        sender, receiver = edge_index[0], edge_index[1]
        rbf, envelope, unit, slot = self._edges(edge_index, edge_vectors)
        edges = Edges(sender, receiver, species.shape[0])
        x = self.embedding(species, edges, rbf, envelope, slot)
        vec = x.new_zeros(x.shape[0], 3, self.channels)
        for k, layer in enumerate(self.layers):
            last = self.scalars_only and k == len(self.layers) - 1
            x, vec = layer(x, vec, edges, rbf, envelope, unit, scalars_only=last, slot=slot)
        x = self.out_norm(x)
        if self.scalars_only:
            return torch.cat([x, x.new_zeros(x.shape[0], 3 * self.channels)], dim=-1)
        return torch.cat([x, vec.transpose(1, 2).reshape(x.shape[0], 3 * self.channels)], dim=-1)

    def attention_weights(self, species: torch.Tensor, edge_index: torch.Tensor,
                          edge_vectors: torch.Tensor) -> list[torch.Tensor]:
        """The attention weights ``A_ij`` of every layer, ``[E, num_heads]`` each (same inputs as ``forward``)."""
        sender, receiver = edge_index[0], edge_index[1]
        rbf, envelope, unit, slot = self._edges(edge_index, edge_vectors)
        edges = Edges(sender, receiver, species.shape[0])
        x = self.embedding(species, edges, rbf, envelope, slot)
        vec = x.new_zeros(x.shape[0], 3, self.channels)
        weights = []
        for layer in self.layers:
            weights.append(layer.attention_weights(layer.layer_norm(x), edges, rbf, envelope, slot))
            x, vec = layer(x, vec, edges, rbf, envelope, unit, slot=slot)
        return weights
