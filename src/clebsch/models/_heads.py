"""Output heads: quantities read from a representation's per-atom features.

A representation returns per-atom features laid out by an :class:`~clebsch.o3.Irreps`.
A head receives them with a :class:`HeadContext` (species, positions, batch,
edges, their vectors, total charge, masses) and returns named tensors. Heads
for a built-in target are registered in :data:`HEADS` by kind; a target
declared in a config gets the generic head of its level (:class:`AtomHead`,
:class:`StructureHead`, :class:`EdgeHead`), which predicts the target's irreps
and returns its stored form (a Cartesian tensor where it is declared so).

The generic heads reach every irrep whatever the family gives: a linear map of
the features, a product of the features with themselves (``1o x 1o -> 1e``) and
a one-step convolution of the neighbours' scalars with the spherical harmonics
of the edges (so an invariant family like SchNet still predicts vectors and
tensors). Every operation is equivariant, so every head is.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..nn import BesselBasis, FullyConnectedTensorProduct, Linear, PolynomialCutoff, ScalarMLP, SiLU
from ..o3 import Irrep, Irreps, spherical_harmonics, wigner_3j
from ..targets import Target


def irrep_block(features: torch.Tensor, irreps: Irreps, ir: Irrep | str) -> torch.Tensor:
    """All copies of one irrep in a feature tensor, as ``[N, mul, 2l+1]``.

    Blocks of the same irrep that are not adjacent are concatenated; an irrep
    that does not occur gives a block with zero copies.

    Examples
    --------
    >>> irreps = Irreps("2x0e + 1x1o")
    >>> irrep_block(torch.arange(5.0)[None], irreps, "1o").shape
    torch.Size([1, 1, 3])
    """
    ir = Irrep(ir)
    pieces = [
        features[..., sl].reshape(*features.shape[:-1], mul_ir.mul, ir.dim)
        for mul_ir, sl in zip(irreps, irreps.slices())
        if mul_ir.ir == ir
    ]
    if not pieces:
        return features.new_zeros(*features.shape[:-1], 0, ir.dim)
    return torch.cat(pieces, dim=-2) if len(pieces) > 1 else pieces[0]


class IrrepMix(torch.nn.Module):
    """Learned linear combination of the copies of one irrep: ``[N, mul, d] -> [N, out, d]``."""

    def __init__(self, mul_in: int, mul_out: int):
        super().__init__()
        self.mul_in = mul_in
        self.weight = torch.nn.Parameter(torch.randn(mul_in, mul_out))

    def forward(self, block: torch.Tensor) -> torch.Tensor:
        if self.mul_in == 0:
            return block.new_zeros(*block.shape[:-2], self.weight.shape[1], block.shape[-1])
        return torch.einsum("nud,uw->nwd", block, self.weight) / math.sqrt(self.mul_in)


class ScalarReadout(torch.nn.Module):
    """Per-atom scalars from the ``0e`` features: a one-hidden-layer MLP.

    Parameters
    ----------
    irreps_in : Irreps
        Layout of the representation's features.
    num_outputs : int
        Scalars per atom.
    hidden : int
        Width of the hidden layer; 0 gives a linear readout.
    """

    def __init__(self, irreps_in: Irreps, num_outputs: int = 1, hidden: int = 16):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        n = self.irreps_in.count(Irrep("0e"))
        if n == 0:
            raise ValueError(f"a scalar readout needs 0e features, but the representation gives {self.irreps_in}")
        if hidden > 0:
            self.net = torch.nn.Sequential(
                torch.nn.Linear(n, hidden), SiLU(), torch.nn.Linear(hidden, num_outputs)
            )
        else:
            self.net = torch.nn.Linear(n, num_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        scalars = irrep_block(features, self.irreps_in, "0e")[..., 0]
        return self.net(scalars)


@dataclass
class HeadContext:
    """What a head may read besides the features (one structure or a batch).

    Attributes
    ----------
    species : Tensor [N]
        Indices into the model's ``species``.
    positions : Tensor [N, 3]
        Positions (the tensor forces and Born charges are taken against).
    batch : Tensor [N]
        Structure of each atom.
    num_graphs : int
    edge_index : Tensor [2, E]
        Sender (row 0) and receiver (row 1) of each edge.
    edge_vectors : Tensor [E, 3]
        From receiver to sender, cell shift included.
    total_charge : Tensor [B]
    masses : Tensor [N]
        Atomic masses (for the centre of mass).
    cutoff : float
    """

    species: torch.Tensor
    positions: torch.Tensor
    batch: torch.Tensor
    num_graphs: int
    edge_index: torch.Tensor
    edge_vectors: torch.Tensor
    total_charge: torch.Tensor
    masses: torch.Tensor
    cutoff: float

    def per_structure(self, values: torch.Tensor, mean: bool = False) -> torch.Tensor:
        """Sum (or mean) of per-atom ``values`` [N, ...] over each structure: [B, ...]."""
        out = values.new_zeros(self.num_graphs, *values.shape[1:]).index_add_(0, self.batch, values)
        if mean:
            count = torch.zeros(self.num_graphs, dtype=values.dtype, device=values.device).index_add_(
                0, self.batch, torch.ones_like(self.batch, dtype=values.dtype))
            out = out / count.clamp(min=1).reshape(-1, *([1] * (values.dim() - 1)))
        return out


class DipoleHead(torch.nn.Module):
    """Per-atom charges and atomic dipoles; outputs ``charges`` [N] and ``dipole`` [B, 3].

    The molecular dipole is ``sum_i mu_i + sum_i q_i (r_i - r_c)`` where the
    charges are shifted so that they add up to the structure's total charge
    and ``r_c`` is the centre of mass. With a neutral structure the result does
    not depend on the origin.
    """

    outputs = ("charges", "dipole")

    def __init__(self, irreps_in: Irreps, hidden: int = 16):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        self.charges = ScalarReadout(self.irreps_in, 1, hidden)
        self.vectors = IrrepMix(self.irreps_in.count(Irrep("1o")), 1)

    def forward(self, features: torch.Tensor, ctx: HeadContext) -> dict:
        batch, num_graphs, positions, masses = ctx.batch, ctx.num_graphs, ctx.positions, ctx.masses
        q = self.charges(features)[:, 0]
        ones = torch.ones_like(q)
        n_atoms = torch.zeros(num_graphs, dtype=q.dtype, device=q.device).index_add_(0, batch, ones)
        q_sum = torch.zeros_like(n_atoms).index_add_(0, batch, q)
        q = q - ((q_sum - ctx.total_charge.to(q.dtype)) / n_atoms.clamp(min=1))[batch]
        m_sum = torch.zeros_like(n_atoms).index_add_(0, batch, masses)
        centre = torch.zeros(num_graphs, 3, dtype=q.dtype, device=q.device).index_add_(
            0, batch, masses[:, None] * positions
        ) / m_sum.clamp(min=1e-12)[:, None]
        mu = self.vectors(irrep_block(features, self.irreps_in, "1o"))[:, 0]
        per_atom = mu + q[:, None] * (positions - centre[batch])
        dipole = torch.zeros(num_graphs, 3, dtype=q.dtype, device=q.device).index_add_(0, batch, per_atom)
        return {"charges": q, "dipole": dipole}


class PolarizabilityHead(torch.nn.Module):
    """Per-atom ``0e + 2e`` assembled into symmetric 3x3 tensors and summed per structure.

    The isotropic part is ``a_i * I``; the anisotropic part maps the five ``2e``
    components onto symmetric traceless matrices with the real Clebsch-Gordan
    coefficients of ``1o x 1o -> 2e``, so it rotates as ``R alpha R^T``. Where
    the features have no ``2e`` block, the anisotropic part comes from the
    edges (as in :class:`EquivariantReadout`).
    """

    outputs = ("polarizability",)

    def __init__(self, irreps_in: Irreps, hidden: int = 16, cutoff: float | None = None):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        self.isotropic = ScalarReadout(self.irreps_in, 1, hidden)
        self.anisotropic = IrrepMix(self.irreps_in.count(Irrep("2e")), 1)
        self.register_buffer("basis", wigner_3j(1, 1, 2, dtype=torch.get_default_dtype()) * math.sqrt(5.0))
        # families without 2e features: the anisotropic part from the neighbours' directions
        self.edges = (EdgeConvolution(self.irreps_in, Irreps("2e"), cutoff, hidden)
                      if self.irreps_in.count(Irrep("2e")) == 0 and cutoff else None)

    def forward(self, features: torch.Tensor, ctx: HeadContext) -> dict:
        a = self.isotropic(features)[:, 0]
        t = self.anisotropic(irrep_block(features, self.irreps_in, "2e"))[:, 0]
        if self.edges is not None:
            t = t + self.edges(features, ctx)
        eye = torch.eye(3, dtype=a.dtype, device=a.device)
        per_atom = a[:, None, None] * eye + torch.einsum("nk,ijk->nij", t, self.basis.to(t.dtype))
        return {"polarizability": ctx.per_structure(per_atom)}


class IrrepsHead(torch.nn.Module):
    """A per-atom output of any irreps as a learned mix of the representation's copies of each irrep.

    Irreps absent from the representation are zero. Kept for models built with
    ``irreps_heads``; a declared per-atom target uses :class:`AtomHead`, which
    reaches every irrep.
    """

    def __init__(self, irreps_in: Irreps, irreps_out: Irreps):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        self.irreps_out = Irreps(irreps_out)
        self.mixes = torch.nn.ModuleList(
            IrrepMix(self.irreps_in.count(mul_ir.ir), mul_ir.mul) for mul_ir in self.irreps_out
        )

    def forward(self, features, ctx: Optional[HeadContext] = None):
        out = [
            mix(irrep_block(features, self.irreps_in, mul_ir.ir)).flatten(-2)
            for mix, mul_ir in zip(self.mixes, self.irreps_out)
        ]
        return torch.cat(out, dim=-1)


# ---------------------------------------------------------------- generic heads


def _natural(ir: Irrep) -> bool:
    return ir.p == (-1) ** ir.l


class EdgeConvolution(torch.nn.Module):
    """Per-atom irreps from the neighbours: ``sum_j R(r_ij, h_j) Y(r_ij)`` for irreps of parity ``(-1)^l``.

    ``R`` is an MLP of a Bessel expansion of the distance (with a smooth
    envelope, so the sum is continuous at the cutoff) and of the sender's
    scalars. Irreps of the other parity (pseudovectors) cannot come from one
    edge and are left to the feature products.
    """

    def __init__(self, irreps_in: Irreps, irreps_out: Irreps, cutoff: float, hidden: int = 16, num_basis: int = 8):
        super().__init__()
        self.irreps_out = Irreps(irreps_out)
        self.reach = Irreps([m for m in self.irreps_out if _natural(m.ir)])
        self.ls = sorted({m.ir.l for m in self.reach})
        n_scalars = Irreps(irreps_in).count(Irrep("0e"))
        self.irreps_in = Irreps(irreps_in)
        self.basis = BesselBasis(cutoff, num_basis)
        self.envelope = PolynomialCutoff(cutoff)
        self.weights = ScalarMLP([num_basis + n_scalars, max(hidden, 1), max(self.reach.num_irreps, 1)])
        # where each output component takes its Y^l component and its weight
        y_start = {l: sum(2 * k + 1 for k in self.ls if k < l) for l in self.ls}
        comp, wcol, place = [], [], []
        k = 0
        for mul_ir, sl in zip(self.irreps_out, self.irreps_out.slices()):
            if not _natural(mul_ir.ir):
                continue
            d = mul_ir.ir.dim
            for u in range(mul_ir.mul):
                for m in range(d):
                    comp.append(y_start[mul_ir.ir.l] + m)
                    wcol.append(k)
                    place.append(sl.start + u * d + m)
                k += 1
        self.register_buffer("_y", torch.tensor(comp, dtype=torch.long), persistent=False)
        self.register_buffer("_w", torch.tensor(wcol, dtype=torch.long), persistent=False)
        self.register_buffer("_place", torch.tensor(place, dtype=torch.long), persistent=False)

    def forward(self, features: torch.Tensor, ctx: HeadContext) -> torch.Tensor:
        n = ctx.species.shape[0]
        out = features.new_zeros(n, self.irreps_out.dim)
        if not self.ls or ctx.edge_index.shape[1] == 0:
            return out
        sender, receiver = ctx.edge_index[0], ctx.edge_index[1]
        lengths = torch.linalg.norm(ctx.edge_vectors, dim=-1)
        y = spherical_harmonics(self.ls, ctx.edge_vectors, normalize=True)
        scalars = irrep_block(features, self.irreps_in, "0e")[..., 0][sender]
        radial = torch.cat([self.basis(lengths), scalars.to(lengths.dtype)], dim=-1)
        w = self.weights(radial) * self.envelope(lengths)[:, None]
        messages = y[:, self._y] * w[:, self._w]
        summed = features.new_zeros(n, messages.shape[1]).index_add_(0, receiver, messages)
        return out.index_copy(1, self._place, summed / math.sqrt(8.0))


class _Products(torch.nn.Module):
    """A few copies of each irrep per atom (from the features and from the edges) for feature products.

    ``x_i = Linear(h_i) + sum_j R(r_ij, h_j) Y(r_ij)`` with ``channels`` copies of
    every irrep of the features up to ``l = 2`` and of ``1o`` and ``2e``, so that
    products like ``1o x 1o -> 1e`` exist for every family, invariant ones included.
    """

    def __init__(self, irreps_in: Irreps, cutoff: float, hidden: int, channels: int):
        super().__init__()
        irs = {m.ir for m in Irreps(irreps_in) if m.ir.l <= 2} | {Irrep("1o"), Irrep("2e")}
        self.irreps = Irreps([(channels, ir) for ir in sorted(irs)])
        self.linear = Linear(irreps_in, self.irreps)
        self.edges = EdgeConvolution(irreps_in, self.irreps, cutoff, hidden)

    def forward(self, features: torch.Tensor, ctx: HeadContext) -> torch.Tensor:
        return self.linear(features) + self.edges(features, ctx)

    def reachable(self) -> set:
        return {ir for _, a in self.irreps for _, b in self.irreps for ir in a * b}


class EquivariantReadout(torch.nn.Module):
    """Per-atom ``irreps_out`` from the features: linear + edge convolution + products of small copies.

    Parameters
    ----------
    irreps_in : Irreps
        The representation's features.
    irreps_out : Irreps
    cutoff : float
        For the edge convolutions.
    hidden : int
        Width of the scalar MLPs.
    channels : int
        Copies of each irrep kept for the feature products.
    """

    def __init__(self, irreps_in: Irreps, irreps_out: Irreps, cutoff: float, hidden: int = 16, channels: int = 4):
        super().__init__()
        self.irreps_in = Irreps(irreps_in)
        self.irreps_out = Irreps(irreps_out)
        self.linear = Linear(self.irreps_in, self.irreps_out, biases=True)
        self.edges = EdgeConvolution(self.irreps_in, self.irreps_out, cutoff, hidden)
        self.small = _Products(self.irreps_in, cutoff, hidden, channels)
        self.product = (FullyConnectedTensorProduct(self.small.irreps, self.small.irreps, self.irreps_out)
                        if any(m.ir in self.small.reachable() for m in self.irreps_out) else None)

    def forward(self, features: torch.Tensor, ctx: HeadContext) -> torch.Tensor:
        out = self.linear(features) + self.edges(features, ctx)
        if self.product is not None:
            x = self.small(features, ctx)
            out = out + self.product(x, x)
        return out


class _Standardised(torch.nn.Module):
    """``value = scale * prediction + shift``: a target's spread and, on its ``0e`` components, its mean.

    ``stats`` (from the training data, see :func:`target_statistics`):
    ``{"scale": float, "shift": [per species, per 0e component] or [per 0e component]}``.
    Adding a constant to scalars and multiplying everything by one number keep
    the head equivariant, and the network only learns a unit-size correction.
    """

    def __init__(self, target: Target, num_species: int, stats: dict | None):
        super().__init__()
        stats = stats or {}
        irreps = target.irreps_out
        slots = [sl.start + k * mul_ir.ir.dim for mul_ir, sl in zip(irreps, irreps.slices()) if mul_ir.ir == Irrep("0e")
                 for k in range(mul_ir.mul)]
        self.register_buffer("scale", torch.tensor(float(stats.get("scale", 1.0))))
        self.register_buffer("slots", torch.tensor(slots, dtype=torch.long), persistent=False)
        shift = torch.zeros(num_species, len(slots))
        if stats.get("shift") is not None:
            given = torch.as_tensor(stats["shift"], dtype=shift.dtype)
            shift[:] = given.reshape(-1, len(slots)) if given.numel() else shift
        self.register_buffer("shift", shift)

    def forward(self, value: torch.Tensor, species: torch.Tensor | None = None) -> torch.Tensor:
        value = value * self.scale.to(value.dtype)
        if self.slots.numel() == 0 or species is None:
            return value
        return value.index_add(1, self.slots, self.shift.to(value.dtype)[species])


class AtomHead(torch.nn.Module):
    """A declared per-atom target: its irreps per atom, returned in its stored form.

    A density target with ``conserve_electrons`` (``species``: the model's atomic
    numbers) is corrected per structure to hold the structure's electrons:
    ``c_i += (N - sum_j c_j . w_j) w_i / sum_j |w_j|^2``, ``w_i`` the integrals of
    atom ``i``'s functions (nonzero for its ``0e`` functions only, so the
    correction is invariant and the head stays equivariant).
    """

    def __init__(self, irreps_in: Irreps, target: Target, cutoff: float, hidden: int = 16, num_species: int = 1,
                 stats: dict | None = None, species: tuple | None = None, channels: int = 4):
        super().__init__()
        self.target = target
        self.outputs = (target.name,)
        self.readout = EquivariantReadout(irreps_in, target.irreps_out, cutoff, hidden, channels)
        self.standard = _Standardised(target, num_species, stats)
        self.conserve = bool(target.conserve_electrons)
        if self.conserve:
            if species is None or len(species) != num_species:
                raise ValueError(f"target {target.name!r}: conserve_electrons needs the model's species")
            species = tuple(int(z) for z in species)
            w = target.basis.charge_integrals(species).to(torch.get_default_dtype())
            self.register_buffer("integrals", w, persistent=False)
            self.register_buffer("electrons", torch.tensor(species, dtype=w.dtype), persistent=False)

    def forward(self, features: torch.Tensor, ctx: HeadContext) -> dict:
        value = self.standard(self.readout(features, ctx), ctx.species)
        if self.conserve:
            value = self._conserve(value, ctx)
        return {self.target.name: self.target.to_cartesian(value)}

    def _conserve(self, value: torch.Tensor, ctx: HeadContext) -> torch.Tensor:
        w = self.integrals.to(value.dtype)[ctx.species]
        held = ctx.per_structure((value * w).sum(dim=-1))
        wanted = ctx.per_structure(self.electrons.to(value.dtype)[ctx.species]) - ctx.total_charge.to(value.dtype)
        norm = ctx.per_structure((w * w).sum(dim=-1)).clamp(min=1e-30)
        return value + ((wanted - held) / norm)[ctx.batch][:, None] * w


class StructureHead(AtomHead):
    """A declared per-structure target: per-atom irreps summed (extensive) or averaged (intensive).

    Each atom's contribution is scaled and shifted by its element's statistics,
    so an extensive target starts from per-element means and an intensive one
    from the data's mean.
    """

    def forward(self, features: torch.Tensor, ctx: HeadContext) -> dict:
        per_atom = self.standard(self.readout(features, ctx), ctx.species)
        return {self.target.name: self.target.to_cartesian(ctx.per_structure(per_atom, mean=not self.target.extensive))}


class EdgeHead(torch.nn.Module):
    """A declared per-edge target (e.g. a Hamiltonian block between atoms i and j): irreps per edge.

    ``out_ij = g(r_ij) * [Linear(h_i) + Linear(h_j) + TP(x_i, x_j)] + R(r_ij, h_i, h_j) Y(r_ij)``,
    with ``x`` a few copies of each irrep of the features and ``g`` one learned
    radial function per output irrep, ``(1 + MLP(r)) u(r)`` with the smooth
    envelope ``u``: every term (the target's mean included) goes to zero at the
    cutoff, as the matrix elements between distant atoms do. Equivariant, and it
    tells ``i -> j`` from ``j -> i``.
    """

    def __init__(self, irreps_in: Irreps, target: Target, cutoff: float, hidden: int = 16, num_species: int = 1,
                 stats: dict | None = None, channels: int = 4):
        super().__init__()
        self.target = target
        self.outputs = (target.name,)
        self.standard = _Standardised(target, 1, stats)
        irreps_in = Irreps(irreps_in)
        out = target.irreps_out
        self.irreps_in = irreps_in
        self.receiver = Linear(irreps_in, out, biases=True)
        self.sender = Linear(irreps_in, out)
        self.small = _Products(irreps_in, cutoff, hidden, channels)
        self.product = (FullyConnectedTensorProduct(self.small.irreps, self.small.irreps, out)
                        if any(m.ir in self.small.reachable() for m in out) else None)
        self.geometry = EdgeConvolution(irreps_in, out, cutoff, hidden)
        n_scalars = irreps_in.count(Irrep("0e"))
        self.geometry.weights = ScalarMLP([8 + 2 * n_scalars, max(hidden, 1), max(self.geometry.reach.num_irreps, 1)])
        self.gate = ScalarMLP([8, max(hidden, 1), out.num_irreps], bias=True)
        self.register_buffer("_gate_index", torch.as_tensor(
            [k for k, d in enumerate(d for mul_ir in out for d in [mul_ir.ir.dim] * mul_ir.mul) for _ in range(d)],
            dtype=torch.long), persistent=False)

    def forward(self, features: torch.Tensor, ctx: HeadContext) -> dict:
        sender, receiver = ctx.edge_index[0], ctx.edge_index[1]
        out = self.receiver(features)[receiver] + self.sender(features)[sender]
        if self.product is not None:
            x = self.small(features, ctx)
            out = out + self.product(x[receiver], x[sender])
        g = self.geometry
        lengths = torch.linalg.norm(ctx.edge_vectors, dim=-1)
        bessel = g.basis(lengths)
        envelope = g.envelope(lengths)[:, None]
        gate = (1.0 + self.gate(bessel)) * envelope
        out = self.standard(out, torch.zeros_like(receiver)) * gate[:, self._gate_index]
        if g.ls and sender.numel():
            y = spherical_harmonics(g.ls, ctx.edge_vectors, normalize=True)
            s = irrep_block(features, self.irreps_in, "0e")[..., 0]
            radial = torch.cat([bessel, s[receiver], s[sender]], dim=-1)
            w = g.weights(radial) * envelope
            geo = out.new_zeros(out.shape).index_copy(1, g._place, y[:, g._y] * w[:, g._w])
            out = out + geo * self.standard.scale.to(geo.dtype)
        out = self.target.to_cartesian(out)
        if self.target.matrix:  # the block of j -> i is the transpose of that of i -> j
            out = 0.5 * (out + out[reverse_edges(ctx.edge_index, ctx.edge_vectors)].transpose(-1, -2))
        return {self.target.name: out}


def reverse_edges(edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
    """For each edge ``j -> i``, the index of the edge ``i -> j`` with the opposite vector (itself if none).

    Edges are matched by their atom pair and, among periodic images of one pair, by the vector.
    """
    sender, receiver = edge_index[0], edge_index[1]
    e = sender.shape[0]
    if e == 0:
        return sender
    n = int(torch.maximum(sender.max(), receiver.max())) + 1
    key = receiver * n + sender
    rev_key = sender * n + receiver
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    first = torch.searchsorted(sorted_key, rev_key)
    count = torch.searchsorted(sorted_key, rev_key, right=True) - first
    index = torch.arange(e, device=sender.device)
    out = torch.where(count > 0, order[first.clamp(max=e - 1)], index)
    many = count > 1
    if bool(many.any()):  # periodic images: match the opposite vector among the candidates
        v = edge_vectors.detach()
        for k in many.nonzero()[:, 0].tolist():
            candidates = order[first[k]:first[k] + count[k]]
            out[k] = candidates[torch.argmin((v[candidates] + v[k]).norm(dim=-1))]
    return out


HeadFactory = Callable[..., torch.nn.Module]

HEADS: dict[str, HeadFactory] = {
    "dipole": lambda irreps, target, cutoff, hidden, num_species, stats: DipoleHead(irreps, hidden),
    "polarizability": lambda irreps, target, cutoff, hidden, num_species, stats: PolarizabilityHead(irreps, hidden,
                                                                                                    cutoff),
    "atom": AtomHead,
    "structure": StructureHead,
    "edge": EdgeHead,
}
"""Head kind -> ``factory(irreps_in, target, cutoff, hidden, num_species, stats)`` (and ``species=``, the model's
atomic numbers, and ``channels=``, the copies of each irrep in its feature products, where the factory has those
parameters). A target names its kind (``Target.head``); without one it
gets the generic head of its level."""


def head_kind(target: Target) -> str:
    """The kind of head that makes ``target``."""
    return target.head or target.level


def build_head(irreps_in: Irreps, target: Target, cutoff: float, hidden: int = 16, num_species: int = 1,
               stats: dict | None = None, species: tuple | None = None, channels: int = 4) -> torch.nn.Module:
    """The head for ``target`` on features ``irreps_in`` (``stats``: see :func:`target_statistics`;
    ``species``: the model's atomic numbers, ``channels``: copies of each irrep in the head's feature
    products, each for the heads that take it)."""
    kind = head_kind(target)
    if kind not in HEADS:
        raise ValueError(f"target {target.name!r} asks for head {kind!r}; known heads: {sorted(HEADS)}")
    factory = HEADS[kind]
    takes = inspect.signature(factory).parameters
    extra = {k: v for k, v in (("species", species), ("channels", channels)) if k in takes}
    return factory(irreps_in, target, cutoff, hidden, num_species, stats, **extra)


def target_statistics(target: Target, graphs, species: list[int]) -> dict:
    """Scale and per-element shift of a declared target from training graphs (``{"scale", "shift"}``).

    The shift is the mean of the target's ``0e`` components per element (per-atom
    targets), per element from a least-squares fit of the per-structure sums
    (extensive) or the overall mean (intensive); the scale is the RMS of what
    is left. Missing (NaN) values are ignored.
    """
    irreps = target.irreps_out
    slots = [sl.start + k * m.ir.dim for m, sl in zip(irreps, irreps.slices()) if m.ir == Irrep("0e")
             for k in range(m.mul)]
    rows, owners = [], []
    index = {z: i for i, z in enumerate(species)}
    counts = []
    for g in graphs:
        if target.name not in g.targets:
            continue
        value = target.from_cartesian(g.targets[target.name].double())
        if target.level == "atom":
            rows.append(value)
            owners.append(torch.tensor([index.get(int(z), 0) for z in g.numbers]))
        elif target.level == "structure":
            rows.append(value)
            counts.append(torch.bincount(torch.tensor([index.get(int(z), 0) for z in g.numbers]),
                                         minlength=len(species)).double()[None])
        else:
            rows.append(value)
    if not rows:
        return {}
    values = torch.cat(rows)
    # rows with a missing value are left out, except for basis targets, whose missing
    # entries (functions an element lacks) are skipped one by one
    ok = torch.isfinite(values).any(dim=-1) if target.basis is not None else torch.isfinite(values).all(dim=-1)
    values = values[ok]
    if values.numel() == 0:
        return {}
    n_species = len(species) if target.level != "edge" else 1
    shift = torch.zeros(n_species, len(slots), dtype=torch.float64)
    if slots:
        if target.level == "atom":
            who = torch.cat(owners)[ok]
            for k in range(n_species):
                sel = who == k
                if sel.any():
                    shift[k] = values[sel][:, slots].nanmean(dim=0).nan_to_num()
            values = values.clone()
            values[:, slots] -= shift[who]
        elif target.level == "structure" and target.extensive:
            a = torch.cat(counts)[ok]
            solution = torch.linalg.lstsq(a, values[:, slots]).solution
            shift[:] = solution
            values = values.clone()
            values[:, slots] -= a @ solution
        else:
            shift[:] = values[:, slots].mean(dim=0)
            values = values.clone()
            values[:, slots] -= shift[0]
    finite = values[torch.isfinite(values)]
    scale = float(finite.pow(2).mean().sqrt()) if finite.numel() else 1.0
    if target.level == "structure" and target.extensive:  # the spread of a sum over ~N atoms
        n_mean = float(torch.cat(counts)[ok].sum(dim=1).mean())
        scale = scale / max(n_mean, 1.0) ** 0.5
    return {"scale": scale if scale > 1e-12 else 1.0, "shift": shift.tolist()}
