r"""An equivariant autoencoder: an invariant latent, a predicted rotation, a canonical point cloud.

The encoder is an equivariant message-passing network (the NequIP
representation, :class:`clebsch.models.nequip.NequIP`) on the atoms of a
molecule. Its per-atom features are mapped by an equivariant linear layer to

- ``latent_dim`` scalars (``0e``): the **latent**, invariant under rotations,
  reflections, translations and permutations of the atoms;
- ``chiral_dim`` pseudoscalars (``0o``): the **chirality**, invariant under
  rotations, translations and permutations, and changing sign under a
  reflection (it tells a conformer from its mirror image);
- two vectors (``1o``),

each averaged over the atoms. Gram–Schmidt on the two vectors gives a proper
rotation ``R`` (columns ``e1 = v1/|v1|``, ``e2`` the part of ``v2`` orthogonal to
``e1``, ``e3 = e1 x e2``): the molecule's frame. The decoder, an MLP of the
latent and the chirality, gives a canonical point cloud ``Y`` (one slot per atom,
the slots ordered by element, centred), and the reconstruction is
``x_i = c + R Y_s(i)`` with ``c`` the centroid of the input.

**Symmetry.** The model is O(3)-equivariant: for any orthogonal ``Q`` (a
rotation or a reflection) and translation ``t``, the reconstruction of
``Q x + t`` is ``Q x̂ + t``. Under a reflection the Gram–Schmidt frame is
``R(Qx) = Q R(x) diag(1, 1, det Q)`` (``e3`` is a cross product, so the frame
stays a proper rotation), and the decoder compensates: the chirality changes
sign and ``Y(latent, -chirality) = diag(1, 1, -1) Y(latent, chirality)`` by
construction (the ``z`` coordinates of the canonical cloud are odd in the
chirality, ``x`` and ``y`` even).

**Permutations.** The latent does not depend on the order of the atoms, so
neither does the reconstruction: the loss matches atoms to slots of the same
element by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``)
on the detached squared distances, then takes the mean squared distance of the
matched pairs. The square root of that mean, per structure, is the
reconstruction RMSD (Å).

**Scope.** One model handles one composition (e.g. the conformers of one
molecule): the decoder has a fixed number of slots per element. The frame
needs two non-parallel averaged vectors, which a molecule with two or more
distinct rotation axes (e.g. methane at its equilibrium geometry) cannot
give; thermally distorted conformers have no symmetry and are fine.

Examples
--------
>>> import torch
>>> from ase.build import molecule
>>> from clebsch.graph import AtomicGraph
>>> atoms = molecule("CH3OH")
>>> atoms.positions += 0.05 * torch.randn(6, 3, generator=torch.Generator().manual_seed(0)).numpy()
>>> graph = AtomicGraph.from_ase(atoms, cutoff=4.0)
>>> model = EquivariantAutoencoder(atoms.numbers, latent_dim=4, channels=4, num_layers=3, cutoff=4.0)
>>> enc = model.encode(graph)
>>> enc.latent.shape, enc.chirality.shape, enc.rotation.shape
(torch.Size([1, 4]), torch.Size([1, 2]), torch.Size([1, 3, 3]))
>>> model(graph).shape
torch.Size([1, 6, 3])
>>> mse, rmsd = reconstruction_loss(model, graph)
>>> rmsd.shape
torch.Size([1])
"""

from __future__ import annotations

import math
import random
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols
from scipy.optimize import linear_sum_assignment

from ..graph import AtomicGraph, batch
from ..models.nequip import NequIP
from ..nn import Linear, ScalarMLP
from ..o3 import Irreps

__all__ = [
    "Encoding",
    "EquivariantAutoencoder",
    "gram_schmidt",
    "reconstruction_loss",
    "reconstruction_rmsd",
    "train_autoencoder",
    "embed",
]


def _formula(numbers) -> str:
    counts: dict = {}
    for z in numbers:
        counts[chemical_symbols[int(z)]] = counts.get(chemical_symbols[int(z)], 0) + 1
    order = [s for s in ("C", "H") if s in counts and "C" in counts]
    order += sorted(s for s in counts if s not in order)
    return "".join(s + (str(counts[s]) if counts[s] > 1 else "") for s in order)


class Encoding(NamedTuple):
    """What :meth:`EquivariantAutoencoder.encode` returns, per structure.

    Attributes
    ----------
    latent : Tensor [B, latent_dim]
        Invariant under rotations, reflections, translations and permutations.
    chirality : Tensor [B, chiral_dim]
        Invariant under rotations, translations and permutations; odd under reflections.
    rotation : Tensor [B, 3, 3]
        The predicted frame, a proper rotation (columns ``e1, e2, e3``).
    vectors : Tensor [B, 2, 3]
        The two averaged vectors the frame is built from.
    """

    latent: torch.Tensor
    chirality: torch.Tensor
    rotation: torch.Tensor
    vectors: torch.Tensor


def gram_schmidt(v1: torch.Tensor, v2: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """The proper rotation whose columns are Gram–Schmidt on ``v1, v2`` and their cross product.

    ``v1, v2`` of shape ``[..., 3]``; returns ``[..., 3, 3]``. For an orthogonal
    ``Q``, ``gram_schmidt(Q v1, Q v2) = Q gram_schmidt(v1, v2) diag(1, 1, det Q)``.

    Examples
    --------
    >>> gram_schmidt(torch.tensor([2.0, 0, 0]), torch.tensor([1.0, 3, 0]))
    tensor([[1., 0., 0.],
            [0., 1., 0.],
            [0., 0., 1.]])
    """
    e1 = v1 / v1.norm(dim=-1, keepdim=True).clamp_min(eps)
    u2 = v2 - (v2 * e1).sum(-1, keepdim=True) * e1
    e2 = u2 / u2.norm(dim=-1, keepdim=True).clamp_min(eps)
    e3 = torch.linalg.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], dim=-1)


class EquivariantAutoencoder(torch.nn.Module):
    """Encoder to an invariant latent and a rotation; decoder to a canonical point cloud.

    See the module docstring for the construction and its symmetry.

    Parameters
    ----------
    numbers : sequence of int
        The atomic numbers of the molecule (its composition; the order does not matter).
    latent_dim : int
        Number of invariant latent scalars.
    chiral_dim : int
        Number of latent pseudoscalars (0 for molecules that are all planar or
        achiral; then the decoded cloud is flat along the frame's third axis
        only if the data is).
    cutoff : float
        Neighbour radius (Å); graphs must be built with at most this cutoff.
        Larger than the molecule, every atom sees every other one.
    channels, lmax, num_layers : int
        Size of the NequIP encoder. Pseudoscalars need ``num_layers >= 3``.
    decoder_hidden : sequence of int
        Widths of the decoder's hidden layers.
    avg_num_neighbors : float, optional
        Convolutions are divided by its square root (default: atoms - 1).
    """

    def __init__(self, numbers: Sequence[int], *, latent_dim: int = 8, chiral_dim: int = 2, cutoff: float = 5.0,
                 channels: int = 16, lmax: int = 2, num_layers: int = 3, decoder_hidden: Sequence[int] = (64, 64),
                 avg_num_neighbors: float | None = None) -> None:
        super().__init__()
        numbers = sorted(int(z) for z in (numbers.tolist() if hasattr(numbers, "tolist") else numbers))
        if len(numbers) < 3:
            raise ValueError(f"the autoencoder needs at least 3 atoms to define a frame, got {len(numbers)}")
        if latent_dim < 1 or chiral_dim < 0:
            raise ValueError(f"latent_dim must be >= 1 and chiral_dim >= 0, got {latent_dim} and {chiral_dim}")
        self.elements = sorted(set(numbers))
        self.num_atoms = len(numbers)
        self.latent_dim, self.chiral_dim = int(latent_dim), int(chiral_dim)
        self.register_buffer("slot_numbers", torch.tensor(numbers, dtype=torch.long), persistent=False)
        self.encoder = NequIP(len(self.elements), cutoff, num_layers=num_layers, channels=channels, lmax=lmax,
                              parity=True, avg_num_neighbors=avg_num_neighbors or max(1.0, len(numbers) - 1.0))
        self.cutoff = float(cutoff)
        hidden = self.encoder.irreps_out
        if chiral_dim and Irreps("0o")[0].ir not in {ir for _, ir in hidden}:
            raise ValueError(f"the encoder's features ({hidden}) have no pseudoscalar (0o) for the chirality; "
                             f"use num_layers >= 3 (now {num_layers}) or chiral_dim=0")
        self.irreps_readout = Irreps(f"{latent_dim}x0e + {chiral_dim}x0o + 2x1o").remove_zero_multiplicities()
        self.readout = Linear(hidden, self.irreps_readout)
        self.decoder = ScalarMLP([latent_dim + chiral_dim, *decoder_hidden, 3 * self.num_atoms], bias=True)
        lookup = torch.full((max(self.elements) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(self.elements)] = torch.arange(len(self.elements))
        self.register_buffer("_lookup", lookup, persistent=False)

    @property
    def formula(self) -> str:
        """The composition in Hill order (C, H, then alphabetical), e.g. ``C2H6O``."""
        return _formula(self.slot_numbers.tolist())

    # ------------------------------------------------------------------ checks
    def _check(self, graph: AtomicGraph) -> None:
        if not isinstance(graph, AtomicGraph):
            raise TypeError(f"expected an AtomicGraph, got {type(graph).__name__}")
        if graph.cutoff > self.cutoff + 1e-9:
            raise ValueError(f"the graph was built with cutoff {graph.cutoff} Å, the model with {self.cutoff} Å")
        if bool(graph.pbc.any()):
            raise ValueError("the autoencoder reconstructs molecules; got a periodic structure")
        expected = self.slot_numbers.to(graph.numbers.device)
        for b, (n, start) in enumerate(zip(graph.n_atoms.tolist(), (torch.cumsum(graph.n_atoms, 0)
                                                                     - graph.n_atoms).tolist())):
            numbers = graph.numbers[start:start + n]
            if n != self.num_atoms or not torch.equal(numbers.sort().values, expected):
                got = _formula(numbers.tolist())
                raise ValueError(f"structure {b} of the batch has atoms {got}; the model reconstructs "
                                 f"{self.formula} ({self.num_atoms} atoms) only")

    # ------------------------------------------------------------------ encoder, decoder
    def encode(self, graph: AtomicGraph) -> Encoding:
        """Latent, chirality and frame of every structure of ``graph``."""
        self._check(graph)
        vectors = graph.edge_vectors()
        species = self._lookup.to(graph.numbers.device)[graph.numbers]
        h = self.readout(self.encoder(species, graph.edge_index, vectors))
        pooled = h.new_zeros(graph.num_graphs, h.shape[-1]).index_add(0, graph.batch, h)
        pooled = pooled / graph.n_atoms.to(h.dtype)[:, None]
        latent, chirality, vecs = pooled.split([self.latent_dim, self.chiral_dim, 6], dim=-1)
        vecs = vecs.reshape(-1, 2, 3)
        return Encoding(latent, chirality, gram_schmidt(vecs[:, 0], vecs[:, 1]), vecs)

    def decode(self, latent: torch.Tensor, chirality: torch.Tensor | None = None) -> torch.Tensor:
        """Canonical clouds ``[B, atoms, 3]`` (centred; slot ``s`` has element ``slot_numbers[s]``)."""
        if chirality is None:
            chirality = latent.new_zeros(latent.shape[0], self.chiral_dim)
        a = self.decoder(torch.cat([latent, chirality], -1)).reshape(-1, self.num_atoms, 3)
        if self.chiral_dim:  # x, y even in the chirality, z odd: mirror images decode to mirror images
            m = self.decoder(torch.cat([latent, -chirality], -1)).reshape(-1, self.num_atoms, 3)
            a = torch.cat([(a[..., :2] + m[..., :2]) / 2, (a[..., 2:] - m[..., 2:]) / 2], dim=-1)
        return a - a.mean(dim=1, keepdim=True)

    def centroids(self, graph: AtomicGraph) -> torch.Tensor:
        """``[B, 3]`` centroid (plain mean of the positions) of every structure."""
        c = graph.positions.new_zeros(graph.num_graphs, 3).index_add(0, graph.batch, graph.positions)
        return c / graph.n_atoms.to(c.dtype)[:, None]

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        """Reconstructed positions ``[B, atoms, 3]`` in the input's frame, slots ordered by element."""
        enc = self.encode(graph)
        canonical = self.decode(enc.latent, enc.chirality)
        return self.centroids(graph)[:, None, :] + canonical @ enc.rotation.transpose(-1, -2)


# ----------------------------------------------------------------------------- loss


def _match(model: EquivariantAutoencoder, graph: AtomicGraph, recon: torch.Tensor) -> torch.Tensor:
    """For every atom of ``graph`` the global index (``b * atoms + slot``) of its slot: Hungarian per element."""
    x = graph.positions.detach().cpu().double().numpy()
    y = recon.detach().cpu().double().numpy()
    numbers = graph.numbers.cpu().numpy()
    slots = model.slot_numbers.cpu().numpy()
    slot_index = {z: np.flatnonzero(slots == z) for z in model.elements}
    out = np.full(len(x), -1, dtype=np.int64)
    starts = (torch.cumsum(graph.n_atoms, 0) - graph.n_atoms).tolist()
    for b, start in enumerate(starts):
        for z, cols in slot_index.items():
            rows = start + np.flatnonzero(numbers[start:start + model.num_atoms] == z)
            if len(cols) == 1:
                out[rows] = b * model.num_atoms + cols
                continue
            cost = ((x[rows][:, None, :] - y[b][cols][None, :, :]) ** 2).sum(-1)
            r, c = linear_sum_assignment(cost)
            out[rows[r]] = b * model.num_atoms + cols[c]
    if (out < 0).any():  # pragma: no cover - _check guarantees the composition
        raise RuntimeError(f"atoms {np.flatnonzero(out < 0).tolist()} were not matched to a slot")
    return torch.as_tensor(out, device=graph.positions.device)


def reconstruction_loss(model: EquivariantAutoencoder, graph: AtomicGraph,
                        reconstruction: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared distance (Å²) between atoms and their matched slots, and the RMSD (Å) of each structure.

    Returns ``(loss, rmsd)``: the mean over all atoms of the batch (differentiable),
    and ``[B]`` root mean squared distances per structure (detached). The atoms of
    each element are matched to the slots of that element by the Hungarian
    algorithm. ``reconstruction`` (``[B, atoms, 3]``, default ``model(graph)``)
    scores another reconstruction, e.g. one decoded from a chosen latent.
    """
    recon = model(graph) if reconstruction is None else reconstruction
    if recon.shape != (graph.num_graphs, model.num_atoms, 3):
        raise ValueError(f"reconstruction of shape {tuple(recon.shape)}, expected "
                         f"[{graph.num_graphs}, {model.num_atoms}, 3]")
    slot = _match(model, graph, recon)
    sq = (graph.positions - recon.reshape(-1, 3)[slot]).pow(2).sum(-1)
    per_structure = sq.new_zeros(graph.num_graphs).index_add(0, graph.batch, sq.detach()) / model.num_atoms
    return sq.mean(), per_structure.sqrt()


@torch.no_grad()
def reconstruction_rmsd(model: EquivariantAutoencoder, graphs, batch_size: int = 256) -> torch.Tensor:
    """RMSD (Å) of the reconstruction of every structure of ``graphs`` (a list of graphs, or one batch)."""
    graphs = graphs.split() if isinstance(graphs, AtomicGraph) else list(graphs)
    was = model.training
    model.eval()
    try:
        return torch.cat([reconstruction_loss(model, batch(graphs[i:i + batch_size]))[1]
                          for i in range(0, len(graphs), batch_size)])
    finally:
        model.train(was)


@torch.no_grad()
def embed(model: EquivariantAutoencoder, graphs, batch_size: int = 256) -> torch.Tensor:
    """``[B, latent_dim + chiral_dim]``: the latent of every structure, then its chirality.

    The latent columns are invariant under rotations, reflections, translations
    and permutations of the atoms; the chirality columns under all but
    reflections, which change their sign.
    """
    graphs = graphs.split() if isinstance(graphs, AtomicGraph) else list(graphs)
    was = model.training
    model.eval()
    try:
        parts = []
        for i in range(0, len(graphs), batch_size):
            enc = model.encode(batch(graphs[i:i + batch_size]))
            parts.append(torch.cat([enc.latent, enc.chirality], -1))
        return torch.cat(parts)
    finally:
        model.train(was)


def train_autoencoder(model: EquivariantAutoencoder, train, validation=None, *, epochs: int = 50,
                      batch_size: int = 32, lr: float = 3e-3, min_lr: float = 1e-5, seed: int = 0,
                      log: Callable[[str], None] | None = None) -> dict:
    """Train on the reconstruction loss with Adam and a cosine schedule.

    Parameters
    ----------
    model : EquivariantAutoencoder
    train, validation : list of AtomicGraph
        Single structures of the model's composition.
    epochs, batch_size : int
    lr, min_lr : float
        Start and end of the cosine schedule.
    seed : int
        Seed of the shuffling.
    log : callable, optional
        Called with a line per epoch (e.g. ``print``).

    Returns
    -------
    dict
        ``epoch``, ``train_loss`` (mean squared distance, Å², averaged over the
        epoch's batches), ``train_rmsd`` and ``validation_rmsd`` (mean RMSD, Å;
        the latter only with ``validation``).
    """
    train = list(train)
    if not train:
        raise ValueError("train_autoencoder needs at least one training structure")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch), eta_min=min_lr)
    rng = random.Random(seed)
    history = {"epoch": [], "train_loss": [], "train_rmsd": [], "validation_rmsd": []}
    model.train()
    for epoch in range(int(epochs)):
        order = list(range(len(train)))
        rng.shuffle(order)
        losses, rmsds = [], []
        for i in range(0, len(order), batch_size):
            g = batch([train[k] for k in order[i:i + batch_size]])
            loss, rmsd = reconstruction_loss(model, g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            losses.append(loss.item())
            rmsds.append(rmsd)
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(float(np.mean(losses)))
        history["train_rmsd"].append(float(torch.cat(rmsds).mean()))
        line = f"epoch {epoch + 1:4d}  train loss {history['train_loss'][-1]:.4f} Å²  " \
               f"train RMSD {history['train_rmsd'][-1]:.4f} Å"
        if validation is not None:
            history["validation_rmsd"].append(float(reconstruction_rmsd(model, validation).mean()))
            line += f"  validation RMSD {history['validation_rmsd'][-1]:.4f} Å"
        if log is not None:
            log(line)
    return history
