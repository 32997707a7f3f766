"""ViSNet: scalar and vector message passing with angles and dihedrals from runtime geometry, in linear time."""

from __future__ import annotations

import torch

from ..nn import CosineCutoff, silu
from ..nn._message import Edges, edge_dot, message_sum
from ..o3 import Irreps
from ._registry import register
from .equivariant_transformer import ExpNormalBasis, NeighborEmbedding

__all__ = ["ViSNet", "direction_sum", "rejection", "angle_term", "dihedral_term"]


def direction_sum(unit: torch.Tensor, receiver: torch.Tensor, num_atoms: int) -> torch.Tensor:
    """``S_i = sum_j u_ij`` over the edges of each atom: ``[E, 3] -> [N, 3]`` (or ``[E, 3, C] -> [N, 3, C]``)."""
    return unit.new_zeros(num_atoms, *unit.shape[1:]).index_add_(0, receiver, unit)


def rejection(a: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """The part of ``a`` orthogonal to the unit vector ``unit``: ``a - <a, u> u``.

    ``a`` is ``[E, 3]`` or ``[E, 3, C]`` (vectors along dimension 1), ``unit`` is ``[E, 3]``.
    The result does not change when ``u`` flips sign.
    """
    u = unit if a.dim() == 2 else unit[:, :, None]
    return a - (a * u).sum(dim=1, keepdim=True) * u


def angle_term(unit: torch.Tensor, receiver: torch.Tensor, num_atoms: int) -> torch.Tensor:
    r"""``sum_{j,k} <u_ij, u_ik>`` per atom, in linear time as ``|sum_j u_ij|^2``: ``[N]``.

    The double sum over pairs of neighbours (the cosines of all angles
    j-i-k, j = k included) is the squared norm of one sum over neighbours.

    Examples
    --------
    >>> unit = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    >>> angle_term(unit, torch.tensor([0, 0]), 1)
    tensor([2.])
    """
    s = direction_sum(unit, receiver, num_atoms)
    return (s * s).sum(dim=1)


def dihedral_term(unit: torch.Tensor, edge_index: torch.Tensor, num_atoms: int) -> torch.Tensor:
    r"""``sum_{k in N(i), l in N(j)} <rej(u_ik, u_ij), rej(u_jl, u_ji)>`` per edge, in linear time: ``[E]``.

    Rejection is linear, so the double sum is the inner product of the
    rejections of the two atoms' direction sums, ``<rej(S_i, u_ij), rej(S_j, u_ij)>``:
    cosines of the dihedral angles k-i-j-l, weighted by the sines of the two
    bond angles.
    """
    sender, receiver = edge_index[0], edge_index[1]
    s = direction_sum(unit, receiver, num_atoms)
    return (rejection(s[receiver], unit) * rejection(s[sender], unit)).sum(dim=1)


class ViSMessagePassing(torch.nn.Module):
    """One ViS-MP block: attention messages to atoms, the scalar/vector update, and the edge update."""

    def __init__(self, channels: int, num_heads: int, update_edges: bool):
        super().__init__()
        self.channels = channels
        self.num_heads = num_heads
        self.layer_norm = torch.nn.LayerNorm(channels)
        self.query = torch.nn.Linear(channels, channels)
        self.key = torch.nn.Linear(channels, channels)
        self.value = torch.nn.Linear(channels, channels)
        self.key_filter = torch.nn.Linear(channels, channels)
        self.value_filter = torch.nn.Linear(channels, channels)
        self.split = torch.nn.Linear(channels, 2 * channels, bias=False)  # zero message -> zero weights
        self.output = torch.nn.Linear(channels, 3 * channels)
        self.vector_projection = torch.nn.Linear(channels, 3 * channels, bias=False)
        self.update_edges = update_edges
        if update_edges:
            self.receiver_projection = torch.nn.Linear(channels, channels, bias=False)
            self.sender_projection = torch.nn.Linear(channels, channels, bias=False)
            self.edge_projection = torch.nn.Linear(channels, channels)

    def forward(self, x, vec, f, edges: Edges, envelope, unit, scalars_only: bool = False):
        """The updated ``(x, vec, f)``; with ``scalars_only`` the vectors are not updated (nothing reads them)."""
        c, heads = self.channels, self.num_heads
        sender, receiver = edges.sender, edges.receiver
        h = self.layer_norm(x)
        # the block reads its input vectors scaled to a bounded size (a vector layer norm)
        v = vec / torch.sqrt(1.0 + vec.pow(2).sum(dim=1).mean(dim=-1))[:, None, None]
        # scalar attention, filtered by the edge features
        qk = edge_dot(self.key(h)[:, None], self.query(h)[:, None], edges)[:, 0]  # q_i * k_j per edge
        logits = qk * silu(self.key_filter(f))
        weights = silu(logits.reshape(-1, heads, c // heads).sum(-1)) * envelope[:, None]
        m = (self.value(h)[sender] * silu(self.value_filter(f))).reshape(-1, heads, c // heads)
        m = (m * weights[..., None]).reshape(-1, c)
        y = torch.zeros_like(x).index_add_(0, receiver, m)
        # edge update from the layer's input vectors: the dihedral-like term
        # <rej(a_i, u), rej(b_j, u)> = <a_i, b_j> - <a_i, u> <b_j, u>
        if self.update_edges:
            a, b = self.receiver_projection(v), self.sender_projection(v)
            ab = edge_dot(b, a, edges, (0, 0, 0))[:, 0]
            au = (a[receiver] * unit[:, :, None]).sum(dim=1)
            bu = (b[sender] * unit[:, :, None]).sum(dim=1)
            f = f + silu(self.edge_projection(f)) * (ab - au * bu)
        # atom update: the angle term <U1 v, U2 v>
        o1, o2, o3 = torch.split(self.output(y), c, dim=-1)
        u1, u2, u3 = torch.split(self.vector_projection(v), c, dim=-1)
        dx = (u1 * u2).sum(dim=1) * o2 + o3
        if scalars_only:
            return x + dx, vec, f
        s1, s2 = torch.split(silu(self.split(m)), c, dim=-1)
        w = message_sum(s1[:, None], v, edges)
        w = w.index_add(0, receiver, s2[:, None, :] * unit[:, :, None])
        dvec = o1[:, None, :] * u3 + w
        return x + dx, vec + dvec, f


@register("visnet")
class ViSNet(torch.nn.Module):
    r"""ViSNet (Wang et al., Nat. Commun. 15, 313, 2024, arXiv:2210.16518).

    Every atom carries ``channels`` scalars h_i and vectors v_i, every edge
    ``channels`` scalars f_ij. The atom scalars start from the neighbour
    embedding (as in the Equivariant Transformer), the vectors from zero, the
    edge scalars from f_ij = (W^E e_ij) ⊙ (h_i + h_j), a linear map of
    e_ij = φ(d_ij) e(d_ij), with e an exponential-normal radial basis and φ
    the cosine cutoff.

    *Runtime geometry calculation.* Angles and dihedrals enter without
    enumerating triplets or quadruplets. The cosines of all angles at atom i
    sum to ``Σ_{j,k} <u_ij, u_ik> = |Σ_j u_ij|²`` (:func:`angle_term`), one sum
    over neighbours; for an edge i-j, the cosines of the dihedrals k-i-j-l come
    from the *rejections* of the two direction sums from the bond,
    ``<rej(S_i, u_ij), rej(S_j, u_ji)>`` with rej(a, u) = a - <a, u> u
    (:func:`dihedral_term`). The network uses learned, channel-wise versions:
    its vectors v_i are weighted sums of unit edge vectors and of the
    neighbours' vectors.

    *ViS-MP block.* With h layer-normalised and the vectors scaled as
    v̂_i = v_i / sqrt(1 + mean_c |v_ic|²) (a vector layer norm: the angle and
    dihedral terms are quadratic in the vectors, and without it they grow
    from layer to layer until training diverges), per head

    .. math::
        A_{ij} = \mathrm{SiLU}\Big(\sum_k (W^Q h_i)_k (W^K h_j)_k\, \mathrm{SiLU}(D^K f_{ij})_k\Big)\, \varphi(d_{ij}),
        \qquad m_{ij} = A_{ij}\, (W^V h_j) \odot \mathrm{SiLU}(D^V f_{ij}),

    and s¹, s² = split(SiLU(W^S m_ij)). Atoms receive m_i = Σ_j m_ij and
    w_i = Σ_j s¹_ij v̂_j + s²_ij u_ij. The edges are updated with the dihedral
    term, Δf_ij = SiLU(W^F f_ij) ⊙ <rej(W^T v̂_i, u_ij), rej(W^R v̂_j, u_ji)>
    (channel-wise), and the atoms with the angle term: with W^O m_i split into
    o¹, o², o³ and channel mixings U¹, U², U³ of the vectors,

    .. math::
        \Delta h_i = \langle U^1 \hat v_i, U^2 \hat v_i\rangle \odot o^2_i + o^3_i, \qquad
        \Delta v_i = o^1_i \odot U^3 \hat v_i + w_i.

    The last block skips the edge update (nothing reads it), and with
    ``scalars_only`` set (a :class:`~clebsch.models.Potential` sets it when none
    of its heads reads more than the ``0e`` features) its vector update too: the
    ``1o`` outputs are then zero. Every message
    carries A_ij, hence φ(d_ij), so an edge has no influence at the cutoff.
    Vectors come from edge directions only by channel mixing, invariant
    scaling and rejections, so they are polar; this implementation uses harmonics
    of degree 1 only (the unit vectors). Outputs: ``channels x 0e + channels x 1o``.

    Parameters
    ----------
    num_species : int
        Number of elements (embedding rows).
    cutoff : float
        Radial cutoff, Å.
    num_layers : int
        ViS-MP blocks (the paper: 6 to 9).
    channels : int
        Hidden channels: scalars and vectors per atom, scalars per edge (the paper: 256).
    num_heads : int
        Attention heads; must divide ``channels`` (the paper: 8).
    num_basis : int
        Exponential-normal radial basis functions, the paper's number of RBFs (the paper: 32).

    Examples
    --------
    >>> net = ViSNet(2, 4.0, num_layers=2, channels=8, num_heads=2, num_basis=8)
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
        self.edge_embedding = torch.nn.Linear(num_basis, channels)
        self.layers = torch.nn.ModuleList(
            ViSMessagePassing(channels, num_heads, update_edges=k < num_layers - 1) for k in range(num_layers)
        )
        self.out_norm = torch.nn.LayerNorm(channels)

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        sender, receiver = edge_index[0], edge_index[1]
        r = torch.linalg.norm(edge_vectors, dim=-1)
        envelope = self.envelope(r)
        unit = edge_vectors / r[:, None]
        rbf = self.rbf(r) * envelope[:, None]
        edges = Edges(sender, receiver, species.shape[0])
        x = self.embedding(species, edges, rbf, envelope)
        f = self.edge_embedding(rbf) * (x[receiver] + x[sender])
        vec = x.new_zeros(x.shape[0], 3, self.channels)
        for k, layer in enumerate(self.layers):
            last = self.scalars_only and k == len(self.layers) - 1
            x, vec, f = layer(x, vec, f, edges, envelope, unit, scalars_only=last)
        x = self.out_norm(x)
        if self.scalars_only:
            return torch.cat([x, x.new_zeros(x.shape[0], 3 * self.channels)], dim=-1)
        return torch.cat([x, vec.transpose(1, 2).reshape(x.shape[0], 3 * self.channels)], dim=-1)
