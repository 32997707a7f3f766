"""Equiformer: equivariant graph attention transformer (Liao & Smidt, ICLR 2023).

Every atom carries features ``h_i`` of ``channels`` copies of each irrep up to
``lmax`` (both parities when ``parity`` is set); the copies of every irrep are
shared out among ``num_heads`` attention heads. The features start as a learned
embedding of the element (``0e``) plus the *edge-degree embedding*
``Linear(1/sqrt(n_avg) sum_j u(r_ij) R(r_ij) Y(r_ij))``, and every block is a
pre-norm transformer layer::

    h_i <- h_i + Attention(LayerNorm(h)),    h_i <- h_i + FeedForward(LayerNorm(h_i))

with a final :class:`~clebsch.nn.LayerNorm` (0e centred and divided by its RMS,
every other irrep divided by the RMS of its components). The equivariant graph
attention of a block, for the edge ``j -> i``:

1. ``x_ij = Linear(x_i) + Linear(x_j)`` (a linear map of the concatenation);
2. ``f_ij = Linear(DTP(x_ij, Y(r_ij); R(r_ij)))``, a depthwise (channel-wise)
   tensor product with the edge's spherical harmonics, its weights an MLP of a
   radial basis of the distance;
3. attention logits per head from ``f_ij``: the MLP attention of the paper,
   ``a_h . LeakyReLU(W f_ij^(0e))`` (a smooth LeakyReLU, slope 0.2), or the dot
   product ``<q_i, k_ij>`` of equivariant query and key, summed over each
   head's components;
4. weights ``alpha_ij = u_ij exp(logit_ij) / sum_k u_ik exp(logit_ik)`` over the
   receiver's incoming edges, ``u`` the polynomial cutoff envelope: a softmax
   that lets an edge fade out smoothly at the cutoff;
5. values ``v_ij = Linear(DTP(Gate(f_ij), u_ij Y(r_ij); R'(r_ij)))``: a gate
   nonlinearity and a second depthwise tensor product (the paper's non-linear
   message). The envelope in the value makes a receiver's only edge vanish
   at the cutoff too, where its attention weight stays one;
6. ``Linear(sum_j alpha_ij^head v_ij)``, the heads mixed by the output projection.

The feed-forward block is ``Linear -> Gate -> Linear`` through ``ffn_ratio``
times the channels. An atom without edges keeps its element's embedding, pushed
through the blocks' self-interactions only: its features depend on its element
alone.
"""

from __future__ import annotations

import math

import torch

from ..nn import ChannelwiseTensorProduct, LayerNorm, Linear, PolynomialCutoff, ScalarMLP, make_gate, radial_basis_of
from ..o3 import Irrep, Irreps, spherical_harmonics
from ._registry import register
from .nequip import hidden_irreps

__all__ = [
    "Equiformer",
    "EquiformerBlock",
    "EquivariantGraphAttention",
    "MLPAttention",
    "DotProductAttention",
    "FeedForward",
    "EdgeDegreeEmbedding",
    "envelope_softmax",
    "smooth_leaky_relu",
]


def smooth_leaky_relu(x: torch.Tensor, negative_slope: float = 0.2) -> torch.Tensor:
    r"""A smooth LeakyReLU: :math:`\frac{1+a}{2} x + \frac{1-a}{2} x (2\sigma(x) - 1)`.

    ``x`` for large positive inputs, ``a x`` for large negative ones, and
    infinitely differentiable in between (forces need second derivatives).

    Examples
    --------
    >>> smooth_leaky_relu(torch.tensor([-100.0, 0.0, 100.0])).tolist()
    [-20.0, 0.0, 100.0]
    """
    return 0.5 * (1 + negative_slope) * x + 0.5 * (1 - negative_slope) * x * (2 * torch.sigmoid(x) - 1)


def envelope_softmax(logits: torch.Tensor, envelope: torch.Tensor, receiver: torch.Tensor,
                     num_nodes: int) -> torch.Tensor:
    r"""Softmax of edge logits over each receiver's incoming edges, each edge weighted by its envelope.

    .. math:: \alpha_{ij} = \frac{u_{ij} \exp \ell_{ij}}{\sum_k u_{ik} \exp \ell_{ik}}

    The weights of a receiver sum to one; an edge whose envelope ``u`` is zero
    (at the cutoff) has weight zero, and the weights are continuous as it leaves.
    The logits are shifted by a per-receiver maximum of ``logit + log u``
    (treated as a constant: it cancels), so that nothing overflows and an edge
    of weight zero, whatever its logit, cannot push the others to zero. A node
    without incoming edges has no weights.

    Parameters
    ----------
    logits : Tensor
        ``[E, heads]``.
    envelope : Tensor
        ``[E]``, non-negative (negative rounding errors are taken as zero).
    receiver : Tensor
        ``[E]``, the receiving node of each edge.
    num_nodes : int

    Examples
    --------
    >>> logits = torch.tensor([[0.0], [1000.0], [3.0]])
    >>> alpha = envelope_softmax(logits, torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]), 3)
    >>> alpha[:, 0].tolist()
    [1.0, 0.0, 1.0]
    """
    weight = envelope.clamp_min(0.0).unsqueeze(-1)
    shifted = (logits + torch.log(weight)).detach()  # -inf where the weight is zero
    top = shifted.new_full((num_nodes, logits.shape[1]), -math.inf).scatter_reduce(
        0, receiver.unsqueeze(-1).expand_as(shifted), shifted, "amax")
    top = top.nan_to_num(neginf=0.0)  # receivers whose edges all have weight zero
    # exponents above the cap only occur on edges of weight below exp(-cap), where they would overflow
    cap = 0.5 * math.log(torch.finfo(logits.dtype).max)
    numerator = torch.exp((logits - top.index_select(0, receiver)).clamp_max(cap)) * weight
    total = numerator.new_zeros(num_nodes, logits.shape[1]).index_add(0, receiver, numerator)
    return numerator / total.clamp_min(torch.finfo(logits.dtype).tiny).index_select(0, receiver)


def head_of_columns(irreps: Irreps, num_heads: int) -> torch.Tensor:
    """The head of every column of ``mul_ir`` features: copy ``u`` of a block of ``mul`` copies is in head
    ``u // (mul / num_heads)``.

    Examples
    --------
    >>> head_of_columns(Irreps("4x0e + 2x1o"), 2).tolist()
    [0, 0, 1, 1, 0, 0, 0, 1, 1, 1]
    """
    heads = []
    for mul, ir in irreps:
        if mul % num_heads:
            raise ValueError(f"{mul}x{ir} cannot be shared out among {num_heads} heads")
        heads += [u // (mul // num_heads) for u in range(mul) for _ in range(ir.dim)]
    return torch.tensor(heads, dtype=torch.long)


class MLPAttention(torch.nn.Module):
    r"""The paper's MLP attention: per head, :math:`a_h \cdot \mathrm{LeakyReLU}(W f_{ij}^{(0e)})`.

    Parameters
    ----------
    irreps_message : Irreps
        Irreps of the messages ``f_ij``; their ``0e`` copies give the logits.
    irreps : Irreps
        The node features (unused: the same signature as :class:`DotProductAttention`).
    num_heads : int
    head_channels : int
        Width of each head's hidden layer.

    Examples
    --------
    >>> att = MLPAttention(Irreps("6x0e + 2x1o"), Irreps("4x0e"), num_heads=2, head_channels=3)
    >>> att(torch.randn(2, 4), torch.randn(5, 12), torch.tensor([0, 0, 1, 1, 1])).shape
    torch.Size([5, 2])
    """

    def __init__(self, irreps_message: Irreps, irreps: Irreps, num_heads: int, head_channels: int):
        super().__init__()
        irreps_message = Irreps(irreps_message)
        columns = [sl.start + k for m, sl in zip(irreps_message, irreps_message.slices()) if m.ir == Irrep("0e")
                   for k in range(m.mul)]
        if not columns:
            raise ValueError(f"MLP attention needs 0e messages, got {irreps_message}")
        self.register_buffer("_scalars", torch.tensor(columns, dtype=torch.long), persistent=False)
        self.num_heads, self.head_channels = num_heads, head_channels
        self.weight = torch.nn.Parameter(torch.randn(len(columns), num_heads * head_channels))
        self.dot = torch.nn.Parameter(torch.randn(num_heads, head_channels))

    def forward(self, x: torch.Tensor, message: torch.Tensor, receiver: torch.Tensor) -> torch.Tensor:
        """Logits ``[E, num_heads]`` from node features ``x``, messages ``[E, ...]`` and receivers ``[E]``."""
        scalars = message.index_select(1, self._scalars)
        hidden = smooth_leaky_relu(scalars @ (self.weight / math.sqrt(self.weight.shape[0])))
        hidden = hidden.view(-1, self.num_heads, self.head_channels)
        return (hidden * self.dot).sum(-1) / math.sqrt(self.head_channels)


class DotProductAttention(torch.nn.Module):
    r"""Dot-product attention: :math:`\langle q_i, k_{ij} \rangle_h / \sqrt{d_h}`, summed over each head's components.

    The query is a linear map of the receiver's features, the key one of the
    message; both have the node irreps, so their dot product is invariant.
    The arguments are those of :class:`MLPAttention` (``head_channels`` unused:
    a head's width is its share of the node irreps).

    Examples
    --------
    >>> att = DotProductAttention(Irreps("6x0e + 2x1o"), Irreps("4x0e + 2x1o"), num_heads=2, head_channels=2)
    >>> att(torch.randn(2, 10), torch.randn(5, 12), torch.tensor([0, 0, 1, 1, 1])).shape
    torch.Size([5, 2])
    """

    def __init__(self, irreps_message: Irreps, irreps: Irreps, num_heads: int, head_channels: int):
        super().__init__()
        irreps = Irreps(irreps)
        self.query = Linear(irreps, irreps)
        self.key = Linear(irreps_message, irreps)
        self.num_heads = num_heads
        self.register_buffer("_head", head_of_columns(irreps, num_heads), persistent=False)
        self.scale = 1.0 / math.sqrt(irreps.dim / num_heads)

    def forward(self, x: torch.Tensor, message: torch.Tensor, receiver: torch.Tensor) -> torch.Tensor:
        """Logits ``[E, num_heads]`` from node features ``x``, messages ``[E, ...]`` and receivers ``[E]``."""
        product = self.query(x).index_select(0, receiver) * self.key(message)
        return product.new_zeros(product.shape[0], self.num_heads).index_add(1, self._head, product) * self.scale


ATTENTIONS = {"mlp": MLPAttention, "dot": DotProductAttention}


class EquivariantGraphAttention(torch.nn.Module):
    """Equivariant graph attention with non-linear messages (steps 1-6 of the module docstring).

    Parameters
    ----------
    irreps : Irreps
        Node features (input and output); every block's copies are shared out among the heads.
    irreps_sh : Irreps
        Spherical harmonics of the edges.
    num_heads : int
    num_basis, radial_hidden : int
        Size of the radial basis and width of the radial MLP (two hidden layers).
    attention : {"mlp", "dot"}
    """

    def __init__(self, irreps, irreps_sh, num_heads: int, num_basis: int, radial_hidden: int, attention: str = "mlp"):
        super().__init__()
        self.irreps = Irreps(irreps)
        self.source = Linear(self.irreps, self.irreps)
        self.target = Linear(self.irreps, self.irreps, biases=True)
        self.message_product = ChannelwiseTensorProduct(self.irreps, irreps_sh, filter_ir_out=self.irreps)
        self.gate = make_gate(self.irreps)
        self.message_linear = Linear(self.message_product.irreps_out, self.gate.irreps_in, biases=True)
        self.value_product = ChannelwiseTensorProduct(self.gate.irreps_out, irreps_sh, filter_ir_out=self.irreps)
        self.value_linear = Linear(self.value_product.irreps_out, self.irreps)
        self._weight_sizes = [self.message_product.weight_numel, self.value_product.weight_numel]
        self.radial = ScalarMLP([num_basis, radial_hidden, radial_hidden, sum(self._weight_sizes)])
        head_channels = self.irreps[0].mul // num_heads
        self.logits = ATTENTIONS[attention](self.gate.irreps_in, self.irreps, num_heads, head_channels)
        self.register_buffer("_head", head_of_columns(self.irreps, num_heads), persistent=False)
        self.output = Linear(self.irreps, self.irreps, biases=True)

    def weights(self, x, edge_index, edge_sh, edge_basis, edge_envelope):
        """Attention weights ``[E, num_heads]`` and the messages ``f_ij`` and per-edge radial weights."""
        sender, receiver = edge_index[0], edge_index[1]
        pair = self.source(x).index_select(0, sender) + self.target(x).index_select(0, receiver)
        radial = self.radial(edge_basis).split(self._weight_sizes, dim=1)
        message = self.message_linear(self.message_product(pair, edge_sh, radial[0]))
        logits = self.logits(x, message, receiver)
        return envelope_softmax(logits, edge_envelope, receiver, x.shape[0]), message, radial[1]

    def forward(self, x, edge_index, edge_sh, edge_basis, edge_envelope):
        """Node features ``[N, irreps.dim]`` -> the attention's update ``[N, irreps.dim]``."""
        alpha, message, radial = self.weights(x, edge_index, edge_sh, edge_basis, edge_envelope)
        value = self.value_product(self.gate(message), edge_sh * edge_envelope.unsqueeze(-1), radial)
        value = self.value_linear(value) * alpha.index_select(1, self._head)
        return self.output(x.new_zeros(x.shape[0], self.irreps.dim).index_add(0, edge_index[1], value))


class FeedForward(torch.nn.Module):
    """``Linear -> Gate -> Linear`` through ``ratio`` times the copies of every irrep.

    Examples
    --------
    >>> ffn = FeedForward(Irreps("4x0e + 4x1o"), ratio=2)
    >>> ffn(torch.randn(3, 16)).shape
    torch.Size([3, 16])
    """

    def __init__(self, irreps, ratio: int):
        super().__init__()
        irreps = Irreps(irreps)
        hidden = Irreps([(ratio * mul, ir) for mul, ir in irreps])
        self.gate = make_gate(hidden)
        self.first = Linear(irreps, self.gate.irreps_in, biases=True)
        self.second = Linear(self.gate.irreps_out, irreps, biases=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.gate(self.first(x)))


class EquiformerBlock(torch.nn.Module):
    """One pre-norm transformer block: attention then feed-forward, each with a residual connection."""

    def __init__(self, irreps, irreps_sh, num_heads, num_basis, radial_hidden, attention, ffn_ratio, norm_eps):
        super().__init__()
        self.attention_norm = LayerNorm(irreps, eps=norm_eps)
        self.attention = EquivariantGraphAttention(irreps, irreps_sh, num_heads, num_basis, radial_hidden, attention)
        self.ffn_norm = LayerNorm(irreps, eps=norm_eps)
        self.ffn = FeedForward(irreps, ffn_ratio)

    def forward(self, h, edge_index, edge_sh, edge_basis, edge_envelope):
        h = h + self.attention(self.attention_norm(h), edge_index, edge_sh, edge_basis, edge_envelope)
        return h + self.ffn(self.ffn_norm(h))


class EdgeDegreeEmbedding(torch.nn.Module):
    r"""The paper's edge-degree embedding, :math:`\mathrm{Linear}(\sum_j u_{ij} R_{ij} Y_{ij} / \sqrt{n_\mathrm{avg}})`.

    A depthwise product of constant features with the harmonics (each channel
    and degree scaled by a radial MLP), summed over the neighbours and mapped
    onto the node irreps: the first directional features of every atom.
    """

    def __init__(self, irreps, irreps_sh, channels: int, num_basis: int, radial_hidden: int,
                 avg_num_neighbors: float):
        super().__init__()
        self.channels = channels
        self.product = ChannelwiseTensorProduct(Irreps([(channels, "0e")]), irreps_sh)
        self.radial = ScalarMLP([num_basis, radial_hidden, self.product.weight_numel])
        self.linear = Linear(self.product.irreps_out, irreps)
        self.norm = 1.0 / math.sqrt(avg_num_neighbors)

    def forward(self, num_nodes, edge_index, edge_sh, edge_basis, edge_envelope):
        ones = edge_basis.new_ones(edge_basis.shape[0], self.channels)
        degree = self.product.scatter_sum(ones, edge_sh * edge_envelope.unsqueeze(-1), self.radial(edge_basis),
                                          edge_index[1], num_nodes)
        return self.linear(degree * self.norm)


@register("equiformer")
class Equiformer(torch.nn.Module):
    """The Equiformer representation: equivariant per-atom features from graph attention.

    Parameters
    ----------
    num_species : int
        Number of elements.
    cutoff : float
        Radial cutoff (Å).
    num_layers : int
        Number of transformer blocks (paper: 6).
    channels : int
        Copies of each irrep in the features (paper: 128 scalars, fewer for l > 0);
        a multiple of ``num_heads``.
    lmax : int
        Highest degree of the spherical harmonics and of the features (paper: 2).
    parity : bool
        Features of both parities for each ``l`` (pseudoscalars, pseudovectors, ...), about
        three times the cost; otherwise only the harmonics' ``(-1)**l`` (``0e + 1o + 2e``, the
        paper's). Reflections are respected either way, and the heads build pseudotensor
        outputs from products of the features.
    num_heads : int
        Attention heads (paper: 4); each gets ``channels / num_heads`` copies of every irrep.
    attention : {"mlp", "dot"}
        MLP attention (the paper's) or dot-product attention.
    num_basis : int
        Size of the radial basis.
    radial_basis : {"gaussian", "bessel"}
        Distance expansion (the paper's Gaussians, or Bessel functions).
    radial_hidden : int
        Width of the radial MLPs that give the depthwise products' weights.
    ffn_ratio : int
        The feed-forward block's hidden features have ``ffn_ratio`` times the copies (paper: 3).
    polynomial_p : int
        Degree of the polynomial cutoff envelope.
    avg_num_neighbors : float
        The edge-degree embedding is divided by its square root.
    norm_eps : float
        The layer norms divide a block by ``sqrt(mean square + norm_eps)``. A block that
        vanishes by symmetry (pseudoscalars of a planar molecule, vectors at a cubic site)
        is magnified up to ``norm_eps ** -0.5`` times by each norm when the symmetry is
        broken slightly; a larger value (1e-2) makes the energy smoother there.

    Examples
    --------
    >>> net = Equiformer(num_species=2, cutoff=4.0, num_layers=1, channels=4, num_heads=2)
    >>> net.irreps_out
    4x0e+4x1o+4x2e
    >>> edge_index = torch.tensor([[1, 0], [0, 1]])
    >>> net(torch.tensor([0, 1]), edge_index, torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])).shape
    torch.Size([2, 36])
    """

    def __init__(
        self,
        num_species: int,
        cutoff: float,
        *,
        num_layers: int = 2,
        channels: int = 16,
        lmax: int = 2,
        parity: bool = False,
        num_heads: int = 4,
        attention: str = "mlp",
        num_basis: int = 16,
        radial_basis: str = "gaussian",
        radial_hidden: int = 32,
        ffn_ratio: int = 3,
        polynomial_p: int = 6,
        avg_num_neighbors: float = 10.0,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"model.attention must be one of {sorted(ATTENTIONS)}, got {attention!r}")
        if channels % num_heads:
            raise ValueError(f"model.channels ({channels}) must be a multiple of model.num_heads ({num_heads}): "
                             "every head gets the same number of copies of each irrep")
        if ffn_ratio < 1:
            raise ValueError(f"model.ffn_ratio must be >= 1, got {ffn_ratio}")
        if not norm_eps > 0:
            raise ValueError(f"model.norm_eps must be positive, got {norm_eps}")
        if not avg_num_neighbors > 0:
            raise ValueError(f"model.avg_num_neighbors must be positive, got {avg_num_neighbors}")
        self.num_species, self.channels, self.lmax = num_species, channels, lmax
        self.irreps_sh = Irreps.spherical_harmonics(lmax)
        self.irreps_out = hidden_irreps(channels, lmax, parity)
        self.basis = radial_basis_of(radial_basis, cutoff, num_basis)
        self.envelope = PolynomialCutoff(cutoff, p=polynomial_p)
        self.embedding = torch.nn.Parameter(torch.randn(num_species, channels))
        self.degree_embedding = EdgeDegreeEmbedding(self.irreps_out, self.irreps_sh, channels, num_basis,
                                                    radial_hidden, avg_num_neighbors)
        self.blocks = torch.nn.ModuleList([
            EquiformerBlock(self.irreps_out, self.irreps_sh, num_heads, num_basis, radial_hidden, attention, ffn_ratio,
                           norm_eps)
            for _ in range(num_layers)
        ])
        self.norm = LayerNorm(self.irreps_out, eps=norm_eps)

    def edge_features(self, edge_vectors: torch.Tensor):
        """Spherical harmonics, radial basis and envelope of the edges."""
        length = edge_vectors.norm(dim=-1)
        edge_sh = spherical_harmonics(self.irreps_sh, edge_vectors, normalize=True, normalization="component")
        return edge_sh, self.basis(length), self.envelope(length)

    def initial_features(self, species, edge_index, edges) -> torch.Tensor:
        """The element embedding (on the ``0e`` copies) plus the edge-degree embedding."""
        embedding = self.embedding.to(edges[0].dtype).index_select(0, species)
        embedding = torch.nn.functional.pad(embedding, (0, self.irreps_out.dim - self.channels))
        return embedding + self.degree_embedding(species.shape[0], edge_index, *edges)

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        """Per-atom features ``[N, irreps_out.dim]`` from elements and edge vectors ``r_j - r_i``."""
        edges = self.edge_features(edge_vectors)
        h = self.initial_features(species, edge_index, edges)
        for block in self.blocks:
            h = block(h, edge_index, *edges)
        return self.norm(h)

    def attention_weights(self, species, edge_index, edge_vectors) -> list[torch.Tensor]:
        """The attention weights ``[E, num_heads]`` of every block, in order."""
        edges = self.edge_features(edge_vectors)
        h = self.initial_features(species, edge_index, edges)
        weights = []
        for block in self.blocks:
            weights.append(block.attention.weights(block.attention_norm(h), edge_index, *edges)[0])
            h = block(h, edge_index, *edges)
        return weights
