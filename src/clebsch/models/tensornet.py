r"""TensorNet: Cartesian rank-2 tensor features (Simeon and De Fabritiis, NeurIPS 2023, arXiv:2306.06482).

Every atom carries ``channels`` 3x3 matrices ``X_i``. A matrix splits into
three parts that rotations never mix (``X -> R X R^T``)::

    X = I + A + S,   I = tr(X)/3 Id,   A = (X - X^T)/2,   S = (X + X^T)/2 - I

a scalar ``I`` (1 number), a skew matrix ``A`` (3 numbers, a vector) and a
symmetric traceless ``S`` (5 numbers). Linear maps that act on each part
separately and mix only channels are equivariant; so are matrix products.

*Embedding.* Each edge gives three tensors of its direction ``r̂``: ``Id``,
the skew matrix of ``r̂`` and the traceless outer product ``r̂ r̂^T - Id/3``
(each scaled to unit norm).
They are weighted per channel by linear functions of a radial basis of
``r_ij`` (``f_I^0, f_A^0, f_S^0``), by a linear embedding of the pair of
elements ``Z_ij = W (Z_i || Z_j)`` and by the cosine cutoff ``φ(r_ij)``, and
summed over the neighbours::

    X_i = sum_j φ(r_ij) Z_ij (f_I^0 Id + f_A^0 A(r̂_ij) + f_S^0 S(r̂_ij))

A scalar network of the (layer-normalised) per-channel norms ``|X_i|^2``
gives three factors that scale the channel mixings of the parts:
``X_i <- g_I W^I I_i + g_A W^A A_i + g_S W^S S_i``.

*Interaction* (``num_layers`` times). The features are normalised,
``X_i <- X_i / sqrt(1 + |X_i|^2)`` (the paper's ``X/(|X|+1)``, with a
denominator smooth at zero), mixed part by part,
``Y_i = W^I I_i + W^A A_i + W^S S_i``, and the neighbours' parts are summed
with radial weights ``f = φ(r) MLP(basis(r))`` (three per channel)::

    M_i = sum_j f_I(r_ij) I(Y_j) + f_A(r_ij) A(Y_j) + f_S(r_ij) S(Y_j)

The product ``P_i = Y_i M_i + M_i Y_i`` couples the atom with its
environment; it is normalised like ``X``, mixed part by part into ``ΔX_i``,
and ``X_i <- X_i + ΔX_i + ΔX_i^2``.

*Parity.* The skew tensor of an edge is built from a polar vector, so under a
reflection ``A`` changes sign relative to ``R A R^T`` while ``I`` and ``S``
do not. The symmetrised product ``YM + MY`` (rather than ``YM``) and the
square keep this bookkeeping exact — a skew part only ever arises from one
skew factor and a symmetric one —, which makes the network O(3)-equivariant:
``I`` is ``0e``, ``A`` is a polar vector ``1o`` and ``S`` is ``2e``.

*Outputs.* ``channels x 0e``: a scalar network of the layer-normalised
per-channel squared norms of ``I``, ``A`` and ``S`` (as the paper's energy
readout); ``channels x 1o``: the skew parts, in the three components of
``CartesianTensor("ij=-ji")`` (which reads the skew part of a true rank-2
tensor as ``1e``; here it is polar, see *Parity*); ``channels x 2e``: the
symmetric traceless parts, in the ``2e`` components of
``CartesianTensor("ij=ji")``. An atom without neighbours has ``X = 0``, so its
features are the same for every element (the isolated-atom reference).

Internally a matrix is held by its nine coordinates in an orthonormal basis
adapted to the split (1 + 3 + 5, see :func:`tensor_basis`), an atom's features
as ``[9, C]`` (coordinates ahead of channels): a part-wise map is one batched
matmul over the coordinates, norms are sums of squares, and ``YM + MY`` is a
bilinear map of the coordinates with 83 non-zero terms
(:func:`symmetric_product_constants`, run by :func:`clebsch.nn.sparse_bilinear`).
The neighbour sums ``M_i`` run in one pass over the edges
(:func:`clebsch.nn.message_sum`).
"""

from __future__ import annotations

import functools
import math

import torch

from ..nn import CosineCutoff, ScalarMLP, radial_basis_of
from ..nn._message import Edges, message_sum
from ..nn._sparse import _bilinear
from ..o3 import CartesianTensor, Irreps
from ..o3._cache import constant_cache
from ._registry import register
from ._steerable import per_edge, reverse_pairs

__all__ = ["TensorNet", "decompose", "tensor_basis", "symmetric_product_constants", "PARTS"]

PARTS = (0, 1, 1, 1, 2, 2, 2, 2, 2)
"""The part (0: scalar ``I``, 1: skew ``A``, 2: symmetric traceless ``S``) of each of the nine coordinates."""


def symmetric_product_constants(basis: torch.Tensor) -> torch.Tensor:
    """``T [9 * 9, 9]`` with ``T[(a, b), k] = <B_k, B_a B_b + B_b B_a>``.

    For matrices with coordinates ``y`` and ``m``, the coordinates of ``YM + MY``
    are ``(y ⊗ m) @ T``, one dense product instead of many 3x3 ones.
    """
    ab = torch.einsum("aij,bjl->abil", basis, basis)
    return torch.einsum("abil,kil->abk", ab + ab.transpose(0, 1), basis).reshape(81, 9)


def decompose(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split matrices ``[..., 3, 3]`` into their scalar, skew and symmetric traceless parts.

    Examples
    --------
    >>> x = torch.randn(4, 3, 3)
    >>> i, a, s = decompose(x)
    >>> torch.allclose(i + a + s, x)
    True
    """
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    i = x.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None] * eye
    a = 0.5 * (x - x.transpose(-1, -2))
    s = 0.5 * (x + x.transpose(-1, -2)) - i
    return i, a, s


def tensor_basis(dtype=torch.float64) -> torch.Tensor:
    """An orthonormal basis ``B [9, 3, 3]`` of 3x3 matrices: ``Id/√3``, three skew, five symmetric traceless.

    The skew rows are the components of ``CartesianTensor("ij=-ji")`` and the
    symmetric traceless rows the ``2e`` components of ``CartesianTensor("ij=ji")``,
    so the coordinates ``c_k = <B_k, X>`` of a matrix rotate by the Wigner
    matrices of ``0e``, ``1e`` and ``2e`` when the matrix goes to ``R X R^T``.

    Examples
    --------
    >>> B = tensor_basis()
    >>> torch.allclose(torch.einsum("kij,lij->kl", B, B), torch.eye(9, dtype=B.dtype))
    True
    """
    sym = CartesianTensor("ij=ji").change_of_basis
    skew = CartesianTensor("ij=-ji").change_of_basis
    return torch.cat([sym[:1], skew, sym[1:]]).to(dtype)


class PartLinear(torch.nn.Module):
    """Channel mixing of each part on its own: ``W^I I + W^A A + W^S S``, ``[N, 9, C] -> [N, 9, C']``."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, channels_in, channels_out))
        self.register_buffer("parts", torch.tensor(PARTS), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight[self.parts] / math.sqrt(self.weight.shape[1])  # [9, C, C']
        # one batched matmul over the coordinates (each a strided [N, C] matrix, read without a copy); contiguous
        # for the neighbour sums that read it
        return torch.bmm(x.transpose(0, 1), w).transpose(0, 1).contiguous()


@functools.lru_cache(maxsize=None)
def _float64_tables():
    """The tables of :func:`_tables` in float64 on the CPU, built once (before any tracing: see ``TensorAlgebra``)."""
    basis = tensor_basis()
    table = symmetric_product_constants(basis).view(9, 9, 9)
    ia, ib, ik = (table.abs() > 1e-12).nonzero(as_tuple=True)
    return basis, table[ia, ib, ik], torch.stack([ia, ib, ik])


@constant_cache
def _tables(dtype: torch.dtype, device: torch.device):
    """``(basis [9, 3, 3], product [83], product_terms [3, 83])`` in ``dtype``, from float64.

    Not buffers: a model built in float32 and moved to float64 (``.double()``) would keep constants
    rounded to float32, and its equivariance would hold to 1e-8 instead of float64's precision.
    ``product`` and ``product_terms`` are the non-zero terms of :func:`symmetric_product_constants`
    (83 of 729): ``YM + MY`` as a sparse bilinear map of the coordinates.
    """
    basis, product, terms = _float64_tables()
    return basis.to(dtype=dtype, device=device), product.to(dtype=dtype, device=device), terms.to(device)


class TensorAlgebra(torch.nn.Module):
    """Operations on features ``[N, 9, C]``, ``C`` matrices per atom held by their coordinates: part norms,
    part weights, products."""

    def __init__(self):
        super().__init__()
        self.register_buffer("parts", torch.tensor(PARTS), persistent=False)
        # built here, not first under a tracer (make_fx, export), where their construction cannot run
        _float64_tables()
        for dtype in (torch.float32, torch.float64):
            _tables(dtype, torch.device("cpu"))

    def basis(self, like: torch.Tensor) -> torch.Tensor:
        """:func:`tensor_basis` in the dtype and on the device of ``like``."""
        return _tables(like.dtype, like.device)[0]

    def part_norms(self, x: torch.Tensor) -> torch.Tensor:
        """Squared norms of ``I``, ``A`` and ``S``: ``[N, 9, C] -> [N, 3, C]``."""
        xx = x * x
        return torch.stack([xx[:, 0], xx[:, 1:4].sum(1), xx[:, 4:].sum(1)], dim=1)

    def weigh(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``w_I I + w_A A + w_S S`` for weights ``[N, 3, C]``."""
        return x * w.index_select(1, self.parts)

    def symmetric_product(self, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Coordinates of ``YM + MY`` (``2 Y^2`` when ``m`` is ``y``), ``[N, 9, C]`` (any strides).

        One sparse bilinear map of the rows (:func:`clebsch.nn.sparse_bilinear`: C kernels with
        their derivatives of every order on the CPU, the dense form elsewhere), not a batch of
        3x3 matrix products: those are one tiny matmul per channel and atom, and their backward
        and double backward (force training) as many again.
        """
        _, product, terms = _tables(y.dtype, y.device)
        return _bilinear(y, m, product, (terms[0], terms[1], terms[2]), 9, False)


def _part_major(channels: int) -> torch.Tensor:
    """Columns ``p * C + c`` <- ``c * 3 + p``: reads an MLP's ``[..., C, 3]`` output as ``[..., 3, C]``."""
    return torch.arange(3 * channels).view(channels, 3).T.reshape(-1)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """``X / sqrt(1 + |X|^2)`` per channel."""
    return x * torch.rsqrt(1.0 + (x * x).sum(1, keepdim=True))


class Embedding(torch.nn.Module):
    """The first features: edge tensors weighted by distance and element pair, summed, then rescaled."""

    def __init__(self, num_species: int, channels: int, num_basis: int):
        super().__init__()
        self.channels = channels
        self.atoms = torch.nn.Embedding(num_species, channels)
        self.pair = ScalarMLP([2 * channels, channels], bias=True)
        self.radial = ScalarMLP([num_basis, 3 * channels], bias=True)
        self.norm = torch.nn.LayerNorm(channels)
        self.scaling = ScalarMLP([channels, 2 * channels, 3 * channels], bias=True)
        self.linear = PartLinear(channels, channels)
        self.register_buffer("_part_major", _part_major(channels), persistent=False)

    def forward(self, algebra, species, sender, receiver, edge_tensors, basis, envelope, slot=None):
        z = self.atoms(species).to(basis.dtype)
        z_ij = self.pair(torch.cat([z[receiver], z[sender]], dim=-1))  # [E, C]
        # f_I^0, f_A^0, f_S^0 times the cutoff, per pair of reverse edges (functions of the length alone)
        f = per_edge(self.radial(basis, self._part_major) * envelope[:, None], slot).view(-1, 3, self.channels)
        weights = z_ij[:, None, :] * f  # [E, 3, C]
        x_ij = weights.index_select(1, algebra.parts) * edge_tensors[:, :, None]  # [E, 9, C]
        x = x_ij.new_zeros(species.shape[0], 9, self.channels).index_add_(0, receiver, x_ij)
        g = self.scaling(self.norm((x * x).sum(1))).view(-1, self.channels, 3).transpose(1, 2)  # [N, 3, C]
        return algebra.weigh(self.linear(x), g)


class Interaction(torch.nn.Module):
    """One TensorNet interaction layer (see the module docstring)."""

    def __init__(self, channels: int, num_basis: int):
        super().__init__()
        self.channels = channels
        self.radial = ScalarMLP([num_basis, channels, 2 * channels, 3 * channels], bias=True)
        self.mix_in = PartLinear(channels, channels)
        self.mix_out = PartLinear(channels, channels)
        self.register_buffer("_part_major", _part_major(channels), persistent=False)

    def forward(self, algebra, x, edges: Edges, basis, envelope, slot=None):
        x = _normalise(x)
        y = self.mix_in(x)
        f = per_edge(self.radial(basis, self._part_major) * envelope[:, None], slot).view(-1, 3, self.channels)
        # M_i = sum_j f_ij Y_j part by part, one pass over the edges
        m = message_sum(f, y, edges, PARTS)
        dx = self.mix_out(_normalise(algebra.symmetric_product(y, m)))
        return x + dx + 0.5 * algebra.symmetric_product(dx, dx)


@register("tensornet")
class TensorNet(torch.nn.Module):
    r"""The TensorNet representation (see the module docstring for the layers).

    Parameters
    ----------
    num_species : int
        Number of elements.
    cutoff : float
        Radial cutoff, Å (the cosine cutoff ``φ`` vanishes there).
    num_layers : int
        Interaction layers (paper: 2).
    channels : int
        Matrices per atom, the hidden channels (paper: 128).
    num_basis : int
        Radial basis functions (paper: 32).
    radial_basis : str
        ``"gaussian"`` or ``"bessel"``; the paper uses exponential-normal functions.

    Where the edges come in reverse pairs (a radius graph on the CPU,
    :func:`~clebsch.models._steerable.reverse_pairs`), the radial MLPs run once per pair.

    Examples
    --------
    >>> net = TensorNet(2, 4.0, num_layers=1, channels=4)
    >>> net.irreps_out
    4x0e+4x1o+4x2e
    >>> species = torch.tensor([0, 1, 1])
    >>> edge_index = torch.tensor([[0, 1, 0, 2], [1, 0, 2, 0]])
    >>> vectors = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.2, 0], [0, -1.2, 0]])
    >>> net(species, edge_index, vectors).shape
    torch.Size([3, 36])
    """

    def __init__(
        self,
        num_species: int,
        cutoff: float,
        *,
        num_layers: int = 2,
        channels: int = 32,
        num_basis: int = 16,
        radial_basis: str = "gaussian",
    ):
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.channels = channels
        self.irreps_out = Irreps(f"{channels}x0e + {channels}x1o + {channels}x2e")
        self.algebra = TensorAlgebra()
        self.basis = radial_basis_of(radial_basis, cutoff, num_basis)
        self.envelope = CosineCutoff(cutoff)
        self.embedding = Embedding(num_species, channels, num_basis)
        self.layers = torch.nn.ModuleList(Interaction(channels, num_basis) for _ in range(num_layers))
        self.norm = torch.nn.LayerNorm(3 * channels)
        self.readout = ScalarMLP([3 * channels, channels, channels], bias=True)

    def edge_tensors(self, edge_vectors: torch.Tensor) -> torch.Tensor:
        """Coordinates ``[E, 9]`` of the unit-norm ``Id``, skew and traceless outer-product tensors of ``r̂``."""
        unit = edge_vectors / torch.linalg.norm(edge_vectors, dim=-1, keepdim=True)
        outer = unit[:, :, None] * unit[:, None, :]
        sym = torch.einsum("eij,kij->ek", outer, self.algebra.basis(unit)[4:]) * math.sqrt(1.5)
        return torch.cat([torch.ones_like(unit[:, :1]), unit, sym], dim=-1)

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        sender, receiver = edge_index[0], edge_index[1]
        r = torch.linalg.norm(edge_vectors, dim=-1)
        pairs = reverse_pairs(edge_index, edge_vectors)  # the radial MLPs once per pair of reverse edges
        slot = None if pairs is None else pairs[1]
        length = r if pairs is None else r.index_select(0, pairs[0])  # basis and cutoff per pair of reverse edges
        basis, envelope = self.basis(length), self.envelope(length)
        x = self.embedding(self.algebra, species, sender, receiver, self.edge_tensors(edge_vectors), basis, envelope,
                           slot)
        edges = Edges(sender, receiver, species.shape[0])
        for layer in self.layers:
            x = layer(self.algebra, x, edges, basis, envelope, slot)
        n, c = x.shape[0], self.channels  # sizes spelled out: no atoms (an empty domain) is a valid input
        norms = self.algebra.part_norms(x).reshape(n, 3 * c)  # [N, 3C]: |I|^2, |A|^2, |S|^2
        scalars = self.readout(self.norm(norms))
        vectors, tensors = x[:, 1:4].transpose(1, 2).reshape(n, 3 * c), x[:, 4:].transpose(1, 2).reshape(n, 5 * c)
        return torch.cat([scalars, vectors, tensors], dim=-1)
