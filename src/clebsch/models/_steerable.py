"""What NequIP and MACE share: edge features once per forward, then a stack of layers."""

from __future__ import annotations

import torch

from ..o3 import spherical_harmonics
from ..o3._cache import tracing


def reverse_pairs(edge_index: torch.Tensor, edge_vectors: torch.Tensor):
    """``(first, slot)`` where the edges come in reverse pairs, else ``None``.

    A radius graph holds both directions of every pair, ``j -> i`` and ``i -> j``, whose
    vectors are opposite and whose lengths -- and so radial weights -- are equal, as the
    same function of the positions and the cell. ``first`` ``[P]`` lists one edge of each
    pair (the one with ``sender < receiver``) and ``slot`` ``[E]`` gives each edge its
    pair's index, so that a radial MLP runs on ``P = E / 2`` lengths. Forces and stress are
    unchanged: each pair's weights depend on one length whose derivative is that of both.

    ``None`` (every edge computed) for graphs that are not made of such pairs: an odd number
    of edges, an edge without its reverse, several images of one pair of atoms or of one
    atom (small periodic cells), k-nearest-neighbour lists; and where a pairing could not be
    looked up by value: tracing, or tensors off the CPU (where the check would wait for the device).
    """
    if tracing() or edge_index.device.type != "cpu":  # first: sizes are symbolic under tracing
        return None
    E = edge_index.shape[1]
    if E == 0 or E % 2:
        return None
    sender, receiver = edge_index[0], edge_index[1]
    low, high = torch.minimum(sender, receiver), torch.maximum(sender, receiver)
    n = int(high.max()) + 1
    key = (low * n + high) * 2 + (sender > receiver).long()  # a pair's two keys: 2k (s < r) and 2k + 1 (s > r)
    order = torch.sort(key).indices
    first, second = order[0::2], order[1::2]
    if not torch.equal(key[first] + 1, key[second]):
        return None
    vectors = edge_vectors.detach()
    scale = float(vectors.abs().max())
    if float((vectors[first] + vectors[second]).abs().max()) > 1e-6 * (1.0 + scale):
        return None  # the same atoms through different images: not one pair
    slot = torch.empty(E, dtype=torch.long)
    pairs = torch.arange(E // 2)
    slot[first] = pairs
    slot[second] = pairs
    return first, slot


def per_edge(rows: torch.Tensor, slot: torch.Tensor | None) -> torch.Tensor:
    """Radial rows per edge: ``rows`` itself, or, with ``slot`` from :func:`reverse_pairs` (``rows`` holding one
    row per pair of reverse edges), each edge's pair's row."""
    return rows if slot is None else rows.index_select(0, slot)


class SteerableStack(torch.nn.Module):
    """Base of representations whose layers take ``(h, species, edge_index, edge_sh, edge_basis, edge_envelope)``.

    A subclass sets ``embedding`` ``[num_species, channels]``, ``irreps_sh``,
    ``basis``, ``envelope`` and ``layers``. A subclass with the attribute ``scalars_only``
    (see :class:`~clebsch.models.Representation`) has layers that take ``scalars_only=True``:
    the last layer gets it when the attribute is set. Where the edges come in reverse pairs
    (:func:`reverse_pairs`), ``edge_basis`` holds one row per pair and the layers get
    ``edge_slot`` ``[E]``, each edge's row: their radial MLPs run once per pair.
    """

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        """Per-atom features ``[N, irreps_out.dim]`` from elements and edge vectors ``r_j - r_i``."""
        length = edge_vectors.norm(dim=-1)
        edge_sh = spherical_harmonics(self.irreps_sh, edge_vectors, normalize=True, normalization="component")
        pairs = reverse_pairs(edge_index, edge_vectors)
        slot = None if pairs is None else pairs[1]
        edge_basis = self.basis(length if pairs is None else length.index_select(0, pairs[0]))
        edge_envelope = self.envelope(length)
        h = self.embedding.to(edge_vectors.dtype)[species]
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            if k == last and getattr(self, "scalars_only", False):  # a family that can skip non-scalar work
                h = layer(h, species, edge_index, edge_sh, edge_basis, edge_envelope, scalars_only=True,
                          edge_slot=slot)
            else:
                h = layer(h, species, edge_index, edge_sh, edge_basis, edge_envelope, edge_slot=slot)
        return h
