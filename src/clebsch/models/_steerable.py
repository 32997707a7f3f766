"""What NequIP and MACE share: edge features once per forward, then a stack of layers."""

from __future__ import annotations

import torch

from ..o3 import spherical_harmonics


class SteerableStack(torch.nn.Module):
    """Base of representations whose layers take ``(h, species, edge_index, edge_sh, edge_basis, edge_envelope)``.

    A subclass sets ``embedding`` ``[num_species, channels]``, ``irreps_sh``,
    ``basis``, ``envelope`` and ``layers``. A subclass with the attribute ``scalars_only``
    (see :class:`~clebsch.models.Representation`) has layers that take ``scalars_only=True``:
    the last layer gets it when the attribute is set.
    """

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        """Per-atom features ``[N, irreps_out.dim]`` from elements and edge vectors ``r_j - r_i``."""
        length = edge_vectors.norm(dim=-1)
        edge_sh = spherical_harmonics(self.irreps_sh, edge_vectors, normalize=True, normalization="component")
        edge_basis = self.basis(length)
        edge_envelope = self.envelope(length)
        h = self.embedding.to(edge_vectors.dtype)[species]
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            if k == last and getattr(self, "scalars_only", False):  # a family that can skip non-scalar work
                h = layer(h, species, edge_index, edge_sh, edge_basis, edge_envelope, scalars_only=True)
            else:
                h = layer(h, species, edge_index, edge_sh, edge_basis, edge_envelope)
        return h
