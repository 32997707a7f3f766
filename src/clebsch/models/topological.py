"""Topological families: networks that see which atoms are bonded, never where they are.

- ``gcn``: graph convolutions (Kipf & Welling 2017, "Semi-supervised classification
  with graph convolutional networks"), ``H' = act(D~^{-1/2} A~ D~^{-1/2} H W + b)``
  with ``A~ = A + I`` (a self-loop on every atom) and ``D~`` its degrees.
- ``graph_transformer``: multi-head self-attention over all atoms of each structure
  (Dwivedi & Bresson 2020; Ying et al. 2021, "Do transformers really perform badly for
  graph representation?"), with Laplacian-eigenvector positional encodings added to the
  atom embeddings, a learned per-head bias on bonded pairs, an optional ``[CLS]`` token
  and an optional virtual node (Gilmer et al. 2017: a per-structure state that every
  layer adds to each atom and updates from the sum over atoms).

Both are registered with ``topological = True``: the :class:`~clebsch.models.Potential`
hands them the covalent bonds among the graph's edges and the structure of each atom,
``forward(species, bond_index, batch)``, and refuses forces, stress and Born charges.
Their features are invariant to rotations, reflections and translations (they never
see a coordinate) and the energy is piecewise constant in the positions: it changes
only when a bond forms or breaks. Use them for per-structure or per-atom properties
of molecules (a HOMO-LUMO gap, a solubility, a charge), not for dynamics.

Readouts (``readout``): ``"atom"`` gives each atom its own features, and the heads
sum or average per-atom contributions as the target declares; ``"sum"``, ``"mean"``
and ``"cls"`` give every atom of a structure the pooled features (sum or mean over
its atoms, or the ``[CLS]`` token's), so a target declared with ``reduce: mean``
reads ``head(pooled)``.

Examples
--------
>>> import torch
>>> from clebsch.graph import AtomicGraph
>>> from clebsch.models import build_model
>>> model = build_model({"name": "graph_transformer", "species": ["H", "O"], "cutoff": 3.0, "channels": 8,
...                      "num_heads": 2, "pe_dim": 2})
>>> water = AtomicGraph.from_tensors(torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]), [8, 1, 1], 3.0)
>>> model.eval()(water)["energy"].shape
torch.Size([1])
"""

from __future__ import annotations

import math

import torch

from ..graph.laplacian import laplacian_positional_encoding, structure_slots
from ..nn import SiLU
from ..o3 import Irreps
from ._registry import register

__all__ = ["GCNLayer", "GCN", "MultiHeadSelfAttention", "GraphTransformer", "pool_per_structure", "READOUTS"]

READOUTS = ("atom", "sum", "mean", "cls")
"""Readouts of the topological families (``cls`` needs the graph transformer's ``cls_token``)."""


def _activation() -> torch.nn.Module:
    return SiLU()


def _check_readout(readout: str, allowed: tuple[str, ...], family: str) -> None:
    if readout not in allowed:
        raise ValueError(f"model.readout: {readout!r} is not allowed for model {family!r}; allowed values: "
                         f"{', '.join(allowed)}")


def pool_per_structure(features: torch.Tensor, batch: torch.Tensor, num_graphs: int, readout: str) -> torch.Tensor:
    """Each atom's features (``"atom"``), or its structure's sum or mean broadcast back to its atoms: [N, F].

    >>> import torch
    >>> h = torch.tensor([[1.0], [3.0], [5.0]])
    >>> pool_per_structure(h, torch.tensor([0, 0, 1]), 2, "mean").tolist()
    [[2.0], [2.0], [5.0]]
    """
    if readout == "atom":
        return features
    total = torch.zeros(num_graphs, features.shape[1], dtype=features.dtype, device=features.device)
    total = total.index_add(0, batch, features)
    if readout == "mean":
        counts = torch.bincount(batch, minlength=num_graphs).clamp(min=1).to(features.dtype)
        total = total / counts[:, None]
    return total[batch]


# --------------------------------------------------------------------------- GCN


class GCNLayer(torch.nn.Module):
    """One graph convolution: ``D~^{-1/2} (A + I) D~^{-1/2} H W + b`` (no activation).

    ``A[i, j]`` counts the edges ``j -> i`` (``edge_index[0]`` the sender, ``[1]`` the
    receiver) and ``D~_ii = 1 + sum_j A_ij``; an atom without edges keeps ``h_i W + b``.
    The same operator as PyTorch Geometric's ``GCNConv`` on graphs without self-loops.

    Examples
    --------
    >>> import torch
    >>> layer = GCNLayer(2, 3)
    >>> layer(torch.ones(4, 2), torch.tensor([[0, 1], [1, 0]])).shape
    torch.Size([4, 3])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear = torch.nn.Linear(in_features, out_features, bias=False)
        self.bias = torch.nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, features: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        sender, receiver = edge_index[0], edge_index[1]
        x = self.linear(features)
        degree = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        degree = degree.index_add(0, receiver, torch.ones(receiver.shape[0], dtype=x.dtype, device=x.device))
        norm = degree.rsqrt()
        out = x * (norm * norm)[:, None]
        out = out.index_add(0, receiver, x[sender] * (norm[sender] * norm[receiver])[:, None])
        return out if self.bias is None else out + self.bias


@register("gcn")
class GCN(torch.nn.Module):
    """Graph convolutional network on the covalent bonds: species embedding, then ``num_layers`` GCN layers.

    ``h^{l+1} = SiLU(GCNLayer(h^l))``, features ``channels x 0e``.

    Parameters
    ----------
    num_species : int
    cutoff : float
        Only the Potential uses it (the bonds are found among the edges within it).
    num_layers : int
    channels : int
    readout : {"atom", "sum", "mean"}
        See the module docstring.
    bond_scale : float
        Atoms closer than ``bond_scale * (r_i + r_j)`` (covalent radii) are bonded.
    """

    topological = True
    limits = {"bond_scale": (0.5, 3.0)}

    def __init__(self, num_species: int, cutoff: float, num_layers: int = 3, channels: int = 64,
                 readout: str = "atom", bond_scale: float = 1.2):
        super().__init__()
        _check_readout(readout, READOUTS[:3], "gcn")
        self.readout = readout
        self.bond_scale = float(bond_scale)
        self.embedding = torch.nn.Embedding(num_species, channels)
        self.layers = torch.nn.ModuleList(GCNLayer(channels, channels) for _ in range(num_layers))
        self.activation = _activation()
        self.irreps_out = Irreps(f"{channels}x0e")

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        h = self.embedding(species)
        for layer in self.layers:
            h = self.activation(layer(h, edge_index))
        num_graphs = int(batch.max()) + 1 if batch.numel() else 1
        return pool_per_structure(h, batch, num_graphs, self.readout)


# ------------------------------------------------------------- graph transformer


class MultiHeadSelfAttention(torch.nn.Module):
    """Scaled dot-product self-attention over padded structures ``x [B, M, F]``.

    Slot ``j`` is attended to only where ``mask[b, j]`` (a real atom or token) or ``j``
    is the querying slot itself (so a padded slot never has an empty softmax).
    ``bias [B, heads, M, M]`` is added to the scores.
    """

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"model.channels ({channels}) must be a multiple of model.num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = torch.nn.Linear(channels, 3 * channels)
        self.out = torch.nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, m, f = x.shape
        head_dim = f // self.num_heads
        q, k, v = self.qkv(x).reshape(b, m, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        if bias is not None:
            scores = scores + bias
        allowed = mask[:, None, None, :] | torch.eye(m, dtype=torch.bool, device=x.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        return self.out(out.transpose(1, 2).reshape(b, m, f))


class _TransformerBlock(torch.nn.Module):
    """Pre-norm block: ``x + Attention(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.norm_attention = torch.nn.LayerNorm(channels)
        self.attention = MultiHeadSelfAttention(channels, num_heads)
        self.norm_mlp = torch.nn.LayerNorm(channels)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(channels, 2 * channels), _activation(),
                                       torch.nn.Linear(2 * channels, channels))

    def forward(self, x, mask, bias):
        x = x + self.attention(self.norm_attention(x), mask, bias)
        return x + self.mlp(self.norm_mlp(x))


@register("graph_transformer")
class GraphTransformer(torch.nn.Module):
    """Transformer over each structure's atoms, told the bonds by Laplacian encodings and a bond bias.

    Atom ``i`` starts from ``embedding(z_i) + W pe_i`` (``pe``: the first ``pe_dim``
    non-trivial Laplacian eigenvectors, :func:`clebsch.graph.laplacian_positional_encoding`,
    with random signs in training); every layer's attention scores get a learned
    per-head bias times the number of bonds between the two atoms.

    Parameters
    ----------
    num_species : int
    cutoff : float
        Only the Potential uses it (the bonds are found among the edges within it).
    num_layers, channels, num_heads : int
        Depth, width (a multiple of ``num_heads``) and attention heads.
    pe_dim : int
        Laplacian eigenvectors per atom; 0 for none.
    random_pe_signs : bool
        Flip the eigenvectors' signs at random in training mode.
    cls_token : bool
        Prepend a learned ``[CLS]`` token to each structure.
    virtual_node : bool
        Keep a per-structure virtual node, added to every atom before each layer and
        updated from the sum over atoms after it.
    readout : {"atom", "sum", "mean", "cls"}
        See the module docstring; ``"cls"`` needs ``cls_token``.
    bond_scale : float
        Atoms closer than ``bond_scale * (r_i + r_j)`` (covalent radii) are bonded.
    """

    topological = True
    limits = {"pe_dim": (0, 64), "bond_scale": (0.5, 3.0)}

    def __init__(self, num_species: int, cutoff: float, num_layers: int = 2, channels: int = 64, num_heads: int = 4,
                 pe_dim: int = 8, random_pe_signs: bool = True, cls_token: bool = False, virtual_node: bool = False,
                 readout: str = "atom", bond_scale: float = 1.2):
        super().__init__()
        _check_readout(readout, READOUTS, "graph_transformer")
        if readout == "cls" and not cls_token:
            raise ValueError("model.readout: 'cls' needs model.cls_token: true (model 'graph_transformer')")
        self.readout = readout
        self.bond_scale = float(bond_scale)
        self.pe_dim = int(pe_dim)
        self.random_pe_signs = bool(random_pe_signs)
        self.num_heads = num_heads
        self.embedding = torch.nn.Embedding(num_species, channels)
        self.pe_linear = torch.nn.Linear(self.pe_dim, channels, bias=False) if self.pe_dim else None
        self.cls = torch.nn.Parameter(0.02 * torch.randn(channels)) if cls_token else None
        self.blocks = torch.nn.ModuleList(_TransformerBlock(channels, num_heads) for _ in range(num_layers))
        self.bond_bias = torch.nn.Parameter(torch.zeros(num_layers, num_heads))
        if virtual_node:
            self.virtual_start = torch.nn.Parameter(torch.zeros(channels))
            self.virtual_updates = torch.nn.ModuleList(
                torch.nn.Sequential(torch.nn.Linear(channels, channels), _activation(), torch.nn.Linear(channels, channels))
                for _ in range(num_layers))
        else:
            self.virtual_start, self.virtual_updates = None, None
        self.norm = torch.nn.LayerNorm(channels)
        self.irreps_out = Irreps(f"{channels}x0e")

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 1
        h = self.embedding(species)
        if self.pe_linear is not None:
            pe = laplacian_positional_encoding(edge_index, batch, self.pe_dim, num_graphs=num_graphs,
                                               random_signs=self.training and self.random_pe_signs)
            h = h + self.pe_linear(pe.to(h.dtype))
        counts, rank = structure_slots(batch, num_graphs)
        first = 0 if self.cls is None else 1  # slot of the first atom
        size = int(counts.max()) + first
        x = h.new_zeros(num_graphs, size, h.shape[1]).index_put((batch, rank + first), h)
        mask = torch.arange(size, device=h.device)[None, :] < (counts[:, None] + first)
        if self.cls is not None:
            x = torch.cat([self.cls.to(h.dtype).expand(num_graphs, 1, -1), x[:, 1:]], dim=1)
        bonds = h.new_zeros(num_graphs, size, size).index_put(
            (batch[edge_index[1]], rank[edge_index[1]] + first, rank[edge_index[0]] + first),
            h.new_ones(edge_index.shape[1]), accumulate=True)
        atoms = mask.clone()
        atoms[:, :first] = False
        virtual = None if self.virtual_start is None else self.virtual_start.to(h.dtype).expand(num_graphs, -1)
        for layer, block in enumerate(self.blocks):
            if virtual is not None:
                x = x + virtual[:, None, :] * atoms[:, :, None]
            x = block(x, mask, self.bond_bias[layer].to(h.dtype)[None, :, None, None] * bonds[:, None])
            if virtual is not None:
                virtual = virtual + self.virtual_updates[layer]((x * atoms[:, :, None]).sum(1))
        x = self.norm(x)
        if self.readout == "cls":
            return x[batch, 0]
        return pool_per_structure(x[batch, rank + first], batch, num_graphs, self.readout)
