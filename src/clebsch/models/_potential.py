"""The model contract: a representation, output heads and response properties.

A :class:`Potential` is the one object every model family becomes::

    graph -> species indices -> representation (SchNet, NequIP, MACE, ...) -> per-atom features
          -> heads (energy, charges/dipole, polarizability, per-atom irreps)
          -> responses by autograd (forces = -dE/dr, stress = dE/d(strain) / V)

Per-atom energies are ``E0[Z_i] + scale * (f(h_i) - f(h_i^isolated))``: the
learned part of an atom's energy is measured from the same element with no
neighbours, so an isolated atom gets exactly its reference energy ``E0`` and
the energy is continuous when a neighbour leaves the cutoff. The isolated
features come from the same forward pass: one extra node per element, with no
edges, is appended to the graph.

Physics terms (``physics``: ZBL repulsion, electrostatics of the dipole head's
charges, see :mod:`clebsch.models._physics`) are added to the per-atom energies
in the same energy path, so forces, stress, Hessians and the export include them.

A *topological* representation (class attribute ``topological = True``, e.g.
:mod:`clebsch.models.topological`) sees which atoms are bonded, never where they
are: it gets the covalent bonds among the graph's edges (pairs closer than
``bond_scale * (r_i + r_j)``, ASE's covalent radii, as :func:`clebsch.graph.bond_graph`;
found on detached lengths, so no gradient flows through them) and the structure of
each atom, ``forward(species, bond_index, batch)``; each isolated-atom node is a
structure of its own. Its energy does not change when atoms move, so it has no
forces, stress, virial or Born charges (asking for them raises).

*Conditioning* (``conditioning: [charge, spin]``) makes the features depend on
per-structure inputs: the total charge ``Q`` (e, ``graph.total_charge``) and the
spin multiplicity ``2S + 1`` (``graph.spin_multiplicity``; 1 singlet, 2 doublet,
3 triplet, ...). A small MLP without biases maps ``(Q, S)`` of each structure to a
scale and a shift of every invariant (``0e``) feature channel of its atoms,
``h <- h * (1 + gamma(Q, S)) + beta(Q, S)``, between the representation and the
heads (:class:`StructureConditioning`), so every family -- geometric or
topological -- and every head is conditioned, and only invariant channels are
touched (the model stays equivariant). Without biases ``gamma(0, 0) = beta(0, 0) = 0``:
a neutral singlet's features are those of the representation, and an isolated
atom in a neutral singlet still gets exactly ``E0``; an isolated ion does not
(its energy differs from the atom's by what the model learns).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Sequence

import torch
from ase.data import atomic_masses, chemical_symbols, covalent_radii

from ..nn import ScalarMLP
from ..o3 import Irrep, Irreps
from ..targets import TARGETS, Target, resolve_targets
from ._heads import HeadContext, IrrepsHead, ScalarReadout, build_head, head_kind
from ._physics import PhysicsTerms, check_physics

__all__ = ["Potential", "StructureConditioning", "CONDITIONS", "check_conditioning", "check_structure_inputs",
           "check_conditioning_data", "position_responses", "check_topological_outputs", "OUTPUTS"]

CONDITIONS = ("charge", "spin")
"""Per-structure inputs a model may be conditioned on (``conditioning``): the total charge and the spin multiplicity."""

OUTPUTS = tuple(TARGETS)
"""The built-in outputs (see :data:`clebsch.targets.TARGETS`); a config may declare more."""

# state-dict keys of models written before heads were held in one ModuleDict
_LEGACY_PREFIXES = {"dipole_head.": "heads.dipole.", "polarizability_head.": "heads.polarizability.",
                    "irreps_heads.": "heads."}


def position_responses(outputs: Sequence[str], targets: dict | None = None) -> list[str]:
    """The outputs that are derivatives by positions or strain (forces, stress, virial, Born charges).

    >>> position_responses(["energy", "forces", "dipole", "born_charges"])
    ['forces', 'born_charges']
    """
    known = resolve_targets(targets)
    return [o for o in outputs if o in known and known[o].source == "response"]


def check_topological_outputs(model: str, outputs: Sequence[str], targets: dict | None = None,
                              key: str = "model.outputs", fix: str | None = None) -> None:
    """Raise when a topological model is asked for a derivative by positions, naming the model and the key.

    >>> check_topological_outputs("gcn", ["energy", "forces"])
    Traceback (most recent call last):
    ...
    ValueError: model.outputs: model 'gcn' is topological (it sees which atoms are bonded, never their coordinates), so it has no forces; remove them from model.outputs
    """
    bad = position_responses(outputs, targets)
    if bad:
        raise ValueError(f"{key}: model {model!r} is topological (it sees which atoms are bonded, never their "
                         f"coordinates), so it has no {', '.join(bad)}; {fix or f'remove them from {key}'}")


def _atomic_number(symbol_or_z) -> int:
    if isinstance(symbol_or_z, str):
        if symbol_or_z not in chemical_symbols[1:]:
            raise ValueError(f"unknown element {symbol_or_z!r} in 'species'")
        return chemical_symbols.index(symbol_or_z)
    z = int(symbol_or_z)
    if not 0 < z < len(chemical_symbols):
        raise ValueError(f"atomic number {z} in 'species' is not an element")
    return z


def check_conditioning(value, key: str = "model.conditioning") -> tuple[str, ...]:
    """The per-structure inputs of ``conditioning`` as a tuple; anything else raises, naming ``key``.

    >>> check_conditioning(["charge", "spin"])
    ('charge', 'spin')
    >>> check_conditioning(["charge", "magmom"])
    Traceback (most recent call last):
    ...
    ValueError: model.conditioning: 'magmom' is not allowed; allowed values: charge, spin
    """
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{key}: expected a list of per-structure inputs such as [charge, spin], got {value!r}; "
                         f"allowed values: {', '.join(CONDITIONS)}")
    for name in value:
        if name not in CONDITIONS:
            raise ValueError(f"{key}: {name!r} is not allowed; allowed values: {', '.join(CONDITIONS)}")
    if len(set(value)) != len(value):
        raise ValueError(f"{key}: {list(value)} lists an input twice; allowed values: {', '.join(CONDITIONS)}")
    return tuple(c for c in CONDITIONS if c in value)


_SPIN_HELP = ("set atoms.info['spin'] (or 'spin=' on the extxyz comment line) to the spin multiplicity 2S+1 "
              "(1 singlet, 2 doublet, 3 triplet, ...)")


def check_structure_inputs(conditioning, total_charge: torch.Tensor | None, spin_multiplicity: torch.Tensor | None,
                           where=None) -> None:
    """Raise when a per-structure input a model is conditioned on is missing or not allowed.

    The total charge must be finite; the spin multiplicity given (not NaN) and a positive
    integer ``2S + 1``. ``where(b)`` names structure ``b`` in the message (default:
    "structure b" in a batch, "the structure" alone).

    >>> check_structure_inputs(["spin"], None, torch.tensor([0.0]))
    Traceback (most recent call last):
    ...
    ValueError: the structure: spin multiplicity 0 is not allowed; it must be a positive integer, 2S+1 ...
    """
    conditioning = tuple(conditioning)
    if not conditioning:
        return

    def name(b: int, count: int) -> str:
        if where is not None:
            return where(b)
        return f"structure {b} of the batch" if count > 1 else "the structure"

    if "charge" in conditioning:
        if total_charge is None:
            raise ValueError("this model is conditioned on the total charge "
                             f"(model.conditioning: {list(conditioning)}), but no total charge was given")
        q = total_charge.detach().reshape(-1)
        bad = ~torch.isfinite(q)
        if bool(bad.any()):
            b = int(bad.nonzero()[0])
            raise ValueError(f"{name(b, q.numel())}: total charge {float(q[b])} is not a finite number")
    if "spin" in conditioning:
        s = None if spin_multiplicity is None else spin_multiplicity.detach().reshape(-1)
        if s is None or bool(torch.isnan(s).any()):
            b = 0 if s is None else int(torch.isnan(s).nonzero()[0])
            raise ValueError(f"{name(b, 1 if s is None else s.numel())}: no spin multiplicity, and this model is "
                             f"conditioned on spin (model.conditioning: {list(conditioning)}); {_SPIN_HELP}")
        bad = ~torch.isfinite(s) | (s < 1) | ((s - torch.round(s)).abs() > 1e-6)
        if bool(bad.any()):
            b = int(bad.nonzero()[0])
            value = float(s[b])
            shown = int(value) if value == value and value.is_integer() else value
            raise ValueError(f"{name(b, s.numel())}: spin multiplicity {shown} is not allowed; it must be a positive "
                             "integer, 2S+1 (1 singlet, 2 doublet, 3 triplet, ...)")


def check_conditioning_data(graphs, conditioning, where: str = "the data", frames=None, warn: bool = True) -> None:
    """Check the per-structure inputs of a data set that a conditioned model trains on; errors name the frame.

    Every structure must have what the model is conditioned on: a finite total charge
    (a frame without a ``charge`` key is neutral) and, for ``spin``, a spin multiplicity
    (there is no default: a frame without ``spin`` raises) that is a positive integer
    ``2S + 1`` and fits the electron count (sum of the atomic numbers minus an integer
    charge: an even count has an odd multiplicity, an odd count an even one). With
    ``warn``, warns when the input conditioned on is the same for every structure (the
    model cannot learn its effect).

    Parameters
    ----------
    graphs : sequence of AtomicGraph
        One structure each.
    conditioning : sequence of str
        ``model.conditioning``.
    where : str
        The data's name in messages, e.g. ``"file 'train.xyz'"``.
    frames : sequence of int, optional
        The frame of each graph in ``where`` (default ``0, 1, ...``).
    warn : bool
        Warn about an input that is the same everywhere (for the training set; a
        validation set may well hold neutral structures only).

    Examples
    --------
    >>> from clebsch.graph import AtomicGraph
    >>> g = AtomicGraph.from_tensors(torch.tensor([[0.0, 0, 0], [0.74, 0, 0]]), [1, 1], 2.0, spin_multiplicity=2)
    >>> check_conditioning_data([g], ["spin"], where="file 'h2.xyz'", frames=[5], warn=False)
    Traceback (most recent call last):
    ...
    ValueError: file 'h2.xyz', frame 5: spin multiplicity 2 does not fit 2 electrons (sum of the atomic numbers ...
    """
    conditioning = check_conditioning(list(conditioning))
    graphs = list(graphs)
    if not conditioning or not graphs:
        return
    frames = list(range(len(graphs))) if frames is None else [int(f) for f in frames]
    charges, spins = [], []
    for g, frame in zip(graphs, frames):
        here = f"{where}, frame {frame}"
        spin = getattr(g, "spin_multiplicity", None)
        check_structure_inputs(conditioning, g.total_charge, spin, where=lambda b: here)
        q = float(g.total_charge.reshape(-1)[0])
        charges.append(q)
        if "spin" in conditioning:
            s = int(round(float(spin.reshape(-1)[0])))
            spins.append(s)
            if abs(q - round(q)) < 1e-6:
                electrons = int(g.numbers.sum()) - int(round(q))
                if (electrons % 2) == (s % 2):
                    raise ValueError(
                        f"{here}: spin multiplicity {s} does not fit {electrons} electrons (sum of the atomic "
                        f"numbers {int(g.numbers.sum())} minus the charge {q:g}): an even number of electrons has an "
                        f"odd multiplicity (1, 3, ...) and an odd number an even one (2, 4, ...); the 'spin' key is "
                        f"2S+1, not S or the number of unpaired electrons")
    for kind, values, what in (("charge", charges, "total charge"), ("spin", spins, "spin multiplicity")):
        if warn and kind in conditioning and len(set(values)) == 1:
            note = " (a frame without a 'charge' key counts as neutral)" if kind == "charge" else ""
            warnings.warn(f"{where}: model.conditioning has {kind}, but every structure has the {what} "
                          f"{values[0]:g}{note}; the model cannot learn how the {what} changes the energy",
                          UserWarning, stacklevel=2)


class StructureConditioning(torch.nn.Module):
    """Scale and shift of the invariant feature channels by per-structure inputs (FiLM).

    ``h_0e <- h_0e * (1 + gamma) + beta`` for every atom of a structure, with
    ``(gamma, beta) = MLP(x)`` of the structure's inputs ``x``: the total charge
    ``Q`` (e) for ``"charge"`` and the total spin ``S = (m - 1) / 2`` of the spin
    multiplicity ``m`` for ``"spin"``. The MLP has no biases, so ``x = 0`` (a neutral
    singlet) leaves the features unchanged. Channels other than ``0e`` are not
    touched, so equivariant features stay equivariant.

    Parameters
    ----------
    irreps : Irreps
        Layout of the features; must hold ``0e`` channels.
    conditioning : sequence of str
        A subset of :data:`CONDITIONS`.
    hidden : int
        Width of the MLP's hidden layer.

    Examples
    --------
    >>> film = StructureConditioning("4x0e + 1x1o", ["charge"])
    >>> h = torch.randn(3, 7)
    >>> out = film(h, torch.tensor([0, 0, 1]), total_charge=torch.tensor([0.0, 1.0]))
    >>> torch.equal(out[:2], h[:2]), torch.equal(out[:, 4:], h[:, 4:])  # neutral: unchanged; vectors: untouched
    (True, True)
    """

    def __init__(self, irreps, conditioning: Sequence[str], hidden: int = 16):
        super().__init__()
        self.irreps = Irreps(irreps)
        self.conditioning = check_conditioning(list(conditioning))
        if not self.conditioning:
            raise ValueError(f"conditioning must name at least one of {list(CONDITIONS)}")
        scalar = Irrep("0e")
        # (start, stop) of each 0e block in the flat features
        self._blocks = [(sl.start, sl.stop) for mul_ir, sl in zip(self.irreps, self.irreps.slices())
                        if mul_ir.ir == scalar and mul_ir.mul > 0]
        self.channels = sum(b - a for a, b in self._blocks)
        if self.channels == 0:
            raise ValueError(f"conditioning needs invariant (0e) features, but the representation gives {self.irreps}")
        self.mlp = ScalarMLP([len(self.conditioning), max(int(hidden), 1), 2 * self.channels])

    def inputs(self, total_charge: torch.Tensor | None, spin_multiplicity: torch.Tensor | None,
               dtype: torch.dtype) -> torch.Tensor:
        """The MLP's input per structure ``[B, len(conditioning)]``: ``Q``, and the spin ``S = (m - 1) / 2``."""
        columns = []
        for kind in self.conditioning:
            value = total_charge if kind == "charge" else spin_multiplicity
            if value is None:
                what = "total_charge" if kind == "charge" else "spin_multiplicity"
                raise ValueError(f"the model is conditioned on {kind} (conditioning: {list(self.conditioning)}): "
                                 f"the energy path needs {what} [B]")
            value = value.to(dtype).reshape(-1)
            columns.append(value if kind == "charge" else 0.5 * (value - 1.0))
        return torch.stack(columns, dim=-1)

    def forward(self, features: torch.Tensor, batch: torch.Tensor, total_charge: torch.Tensor | None = None,
                spin_multiplicity: torch.Tensor | None = None) -> torch.Tensor:
        film = self.mlp(self.inputs(total_charge, spin_multiplicity, features.dtype))[batch]  # [N, 2C]
        gamma, beta = film[:, :self.channels], film[:, self.channels:]
        pieces, last, k = [], 0, 0
        for start, stop in self._blocks:
            width = stop - start
            pieces.append(features[:, last:start])
            pieces.append(features[:, start:stop] * (1.0 + gamma[:, k:k + width]) + beta[:, k:k + width])
            last, k = stop, k + width
        pieces.append(features[:, last:])
        return torch.cat(pieces, dim=-1)

    def extra_repr(self) -> str:
        return f"conditioning={list(self.conditioning)}, channels={self.channels}"


class Potential(torch.nn.Module):
    """An interatomic potential (and more) around one representation network.

    Parameters
    ----------
    representation : torch.nn.Module
        Maps ``(species, edge_index, edge_vectors)`` to per-atom features laid
        out by its attribute ``irreps_out`` (see :class:`~clebsch.models.Representation`).
        ``species`` holds indices into ``species`` below.
    species : sequence of int or str
        The elements the model knows, as atomic numbers or symbols.
    cutoff : float
        Radial cutoff in Å; graphs are built with it.
    atomic_energies : sequence of float, optional
        Reference energy per element (same order as ``species``), eV.
    scale : float
        Multiplies the learned part of the per-atom energy (a force RMS, eV/Å).
    outputs : sequence of str, optional
        Targets to predict: built-in ones (:data:`clebsch.targets.TARGETS`:
        ``energy, forces, stress, virial, dipole, charges, polarizability,
        born_charges, ...``) and those declared in ``targets``. Responses
        (forces, stress, Born charges) are derivatives of their source output.
        Default: energy and forces (energy alone for a topological representation).
    targets : dict, optional
        Declarations of further targets, ``{"gap": {"level": "structure",
        "irreps": "0e", "reduce": "mean"}}`` (see :func:`clebsch.targets.declare`).
    irreps_heads : dict, optional
        Untrained extra per-atom outputs, ``{"name": "4x0e + 2x1o"}`` (kept for
        older configs; declare a target instead).
    readout_hidden : int
        Width of the heads' hidden layers.
    readout_channels : int
        Copies of each irrep in the feature products of the heads of declared per-atom and per-edge
        targets (densities, Hamiltonian blocks): their capacity for many output irreps.
    target_stats : dict, optional
        ``{target: {"scale": s, "shift": [...]}}``: the spread and per-element
        mean a declared target's head starts from (the trainer fills it from
        the training data, see :func:`clebsch.models.target_statistics`).
    physics : dict, optional
        Physics terms added to the energy, ``{"zbl": {"r_inner": 0.4, "r_outer": 0.9},
        "coulomb": {"sigma": 1.0, "accuracy": 1e-8}}`` (see
        :func:`clebsch.models._physics.check_physics`); ``coulomb`` uses the dipole
        head's charges and turns on the ``charges`` output.
    conditioning : sequence of str, optional
        Per-structure inputs that condition the features (:class:`StructureConditioning`):
        ``"charge"`` (``graph.total_charge``, e) and/or ``"spin"`` (``graph.spin_multiplicity``,
        ``2S + 1``). Default: none (the model has no conditioning weights).
    config : dict, optional
        The plain config this model was built from (see :func:`build_model`).
    """

    def __init__(
        self,
        representation: torch.nn.Module,
        species: Sequence,
        cutoff: float,
        atomic_energies: Sequence[float] | None = None,
        scale: float = 1.0,
        outputs: Sequence[str] | None = None,
        targets: dict | None = None,
        irreps_heads: dict | None = None,
        readout_hidden: int = 16,
        readout_channels: int = 4,
        target_stats: dict | None = None,
        physics: dict | None = None,
        conditioning: Sequence[str] | None = None,
        config: dict | None = None,
    ):
        super().__init__()
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        self.targets: dict[str, Target] = resolve_targets(targets)
        self.topological = bool(getattr(representation, "topological", False))
        if outputs is None:
            outputs = ("energy",) if self.topological else ("energy", "forces")
        unknown = [o for o in outputs if o not in self.targets]
        if unknown:
            raise ValueError(f"unknown output(s) {unknown}; allowed: {sorted(self.targets)} "
                             "(declare others under model.targets)")
        numbers = [_atomic_number(s) for s in species]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"'species' lists an element twice: {list(species)}")
        self.representation = representation
        self.irreps = Irreps(representation.irreps_out)
        self.species = numbers
        self.cutoff = float(cutoff)
        outputs = list(dict.fromkeys(outputs))
        if "energy" not in outputs:
            outputs.insert(0, "energy")
        physics = check_physics(physics, self.cutoff)
        if "coulomb" in physics and "charges" not in outputs:
            outputs.append("charges")  # the Coulomb energy needs the dipole head's charges
        self.outputs = tuple(outputs)
        self.config = dict(config or {})
        if self.topological:
            self._init_bonds(representation, numbers, targets)

        index = torch.full((119,), -1, dtype=torch.long)
        index[numbers] = torch.arange(len(numbers))
        self.register_buffer("z_to_index", index, persistent=False)
        e0 = torch.zeros(len(numbers)) if atomic_energies is None else torch.as_tensor(atomic_energies, dtype=torch.get_default_dtype())
        if e0.shape != (len(numbers),):
            raise ValueError(f"atomic_energies has {e0.numel()} values for {len(numbers)} species")
        self.register_buffer("atomic_energies", e0.clone())
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("masses", torch.as_tensor(atomic_masses[numbers], dtype=torch.get_default_dtype()))
        self.physics = PhysicsTerms(physics, numbers, self.cutoff) if physics else None

        self.conditioning = check_conditioning(conditioning)
        if self.conditioning:
            self.condition = StructureConditioning(self.irreps, self.conditioning, readout_hidden or 16)

        self.energy_head = ScalarReadout(self.irreps, 1, readout_hidden)
        # one head per head kind the outputs need (the dipole head makes charges and dipole);
        # responses need their source output
        needed = list(self.outputs)
        for name in self.outputs:
            t = self.targets[name]
            if t.source == "response" and t.of not in needed:
                needed.append(t.of)
        self.heads = torch.nn.ModuleDict()
        self._head_of: dict[str, str] = {}
        for name in needed:
            t = self.targets[name]
            if t.source != "head":
                continue
            key = head_kind(t) if t.head else name
            if key not in self.heads:
                self.heads[key] = build_head(self.irreps, t, self.cutoff, readout_hidden, len(numbers),
                                             (target_stats or {}).get(name), species=tuple(numbers),
                                             channels=int(readout_channels))
            self._head_of[name] = key
        for name, irreps in (irreps_heads or {}).items():
            self.heads[name] = IrrepsHead(self.irreps, irreps)
        # with no head beyond the energy's (which reads the 0e features), a representation that can
        # skip its last layer's non-scalar work (attribute ``scalars_only``) is told so
        if hasattr(representation, "scalars_only"):
            representation.scalars_only = not self.heads
        self._legacy_irreps = tuple((irreps_heads or {}).keys())
        self._register_load_state_dict_pre_hook(_rename_legacy_keys)

    def _init_bonds(self, representation, numbers: list[int], targets: dict | None) -> None:
        """A topological model: no position derivatives, and bond radii ``bond_scale * r_cov`` per species."""
        name = self.config.get("name", type(representation).__name__)
        check_topological_outputs(name, self.outputs, targets)
        bond_scale = float(getattr(representation, "bond_scale", 1.2))
        radii = torch.as_tensor(covalent_radii[numbers], dtype=torch.get_default_dtype()) * bond_scale
        longest = 2.0 * float(radii.max())
        if self.cutoff < longest:
            raise ValueError(f"model.cutoff: {self.cutoff} Å is shorter than the longest possible bond among the species "
                             f"({longest:.2f} Å, bond_scale {bond_scale} times twice the largest covalent radius); "
                             f"model {name!r} finds its bonds among the edges within the cutoff, so raise the cutoff")
        self.register_buffer("bond_radii", radii, persistent=False)

    def _check_graph(self, graph) -> None:
        """A graph this model cannot read correctly is refused here, not answered with wrong numbers."""
        dtype = self.atomic_energies.dtype
        if graph.positions.dtype != dtype and graph.positions.dtype.is_floating_point and dtype.is_floating_point:
            raise TypeError(f"the graph is {str(graph.positions.dtype).replace('torch.', '')} but the model's weights "
                            f"are {str(dtype).replace('torch.', '')}: build the graph with dtype={dtype} or convert "
                            f"the model with model.to({dtype})")
        radius = graph.neighbor_options.get("method", "radius") == "radius"
        if radius and 0.0 < graph.cutoff < self.cutoff * (1 - 1e-6) and not self.topological:
            raise ValueError(f"the graph's neighbour list was built with a cutoff of {graph.cutoff:g} Å, shorter "
                             f"than the model's {self.cutoff:g} Å: the neighbours in between would be missing; build "
                             f"it with cutoff=model.cutoff (a longer cutoff is fine: the model drops what lies beyond "
                             f"its own)")

    def _check_geometric(self, what: str) -> None:
        if self.topological:
            name = self.config.get("name", type(self.representation).__name__)
            raise ValueError(f"model {name!r} is topological (it sees which atoms are bonded, never their "
                             f"coordinates): it has no {what}")

    # ------------------------------------------------------------------ helpers
    def species_index(self, numbers: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """Indices into ``species`` for atomic numbers; an unknown element raises, naming it and the atom.

        With ``batch``, the atom is named by its structure and its index within it.
        """
        def where(bad: int) -> str:
            if batch is None or int(batch.max()) == 0:
                return f"atom {bad}"
            b = int(batch[bad])
            first = int((batch == b).nonzero()[0])
            return f"atom {bad - first} of structure {b} in the batch"

        if numbers.numel() and (numbers.min() < 1 or numbers.max() > 118):
            bad = int(((numbers < 1) | (numbers > 118)).nonzero()[0])
            raise ValueError(f"{where(bad)} has atomic number {int(numbers[bad])}, which is not an element")
        index = self.z_to_index[numbers]
        if (index < 0).any():
            bad = int((index < 0).nonzero()[0])
            z = int(numbers[bad])
            known = [chemical_symbols[s] for s in self.species]
            raise ValueError(
                f"{where(bad)} is {chemical_symbols[z]} (Z={z}), an element this model was not trained on; "
                f"it knows {known}"
            )
        return index

    def atomic_energies_and_features(self, species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor,
                                     *, positions: torch.Tensor | None = None, batch: torch.Tensor | None = None,
                                     num_graphs: int = 1, total_charge: torch.Tensor | None = None,
                                     cell: torch.Tensor | None = None, periodic: Sequence[bool] | None = None,
                                     spin_multiplicity: torch.Tensor | None = None):
        """The energy path: per-atom energies [N] and the features [N, irreps.dim].

        ``E_i = E0[z_i] + w_i * scale * (f(h_i) - f(h_i^isolated)) + physics_i``: one extra node
        per element, with no edges, gives the isolated-atom features in the same pass; the
        physics terms (if any) add half of each pair's energy to each of its atoms, and ``w_i``
        is 1 unless ZBL blends the learned energy out at short range
        (:meth:`clebsch.models._physics.ZBL.learned_weight`).
        Used by :meth:`forward` and by the export, so both compute the same numbers.

        The keyword arguments are needed by the Coulomb term: ``positions`` [N, 3],
        ``batch`` [N] (default: one structure), ``num_graphs``, ``total_charge`` [B],
        ``cell`` [B, 3, 3] and ``periodic`` (a bool per structure); a topological
        representation needs ``batch`` and ``num_graphs``; a conditioned model
        (``conditioning``) ``batch``, ``total_charge`` and/or ``spin_multiplicity`` [B]
        (checked by :meth:`conditioning_inputs`, not here). The isolated-atom nodes are
        not conditioned.
        """
        n = species.shape[0]
        n_species = len(self.species)
        all_species = torch.cat([species, torch.arange(n_species, device=species.device)])
        if self.topological:
            features = self._topological_features(all_species, n, edge_index, vectors, batch, num_graphs)
        else:
            features = self.representation(all_species, edge_index, vectors)
        if self.conditioning:
            features = self._conditioned(features, n, batch, total_charge, spin_multiplicity)
        atomic_out = self.energy_head(features)[:, 0]
        learned = atomic_out[:n] - atomic_out[n:][species]
        zbl = self.physics.zbl if self.physics is not None else None
        if zbl is not None and zbl.blend:  # below the ZBL's inner radius the learned energy fades out
            learned = learned * zbl.learned_weight(species, edge_index, vectors)
        e_atom = self.atomic_energies.to(learned.dtype)[species] + self.scale.to(learned.dtype) * learned
        features = features[:n]
        if self.physics is not None:
            e_atom = e_atom + self._physics_energies(species, edge_index, vectors, features, positions, batch,
                                                     num_graphs, total_charge, cell, periodic)
        return e_atom, features

    def _conditioned(self, features, n: int, batch, total_charge, spin_multiplicity) -> torch.Tensor:
        """The atoms' features conditioned on their structure's inputs; the isolated-atom rows as they are."""
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=features.device)
        atoms = self.condition(features[:n], batch, total_charge, spin_multiplicity)
        return torch.cat([atoms, features[n:]])

    def _topological_features(self, all_species, n: int, edge_index, vectors, batch, num_graphs: int):
        """A topological representation on the bonds among the edges; each isolated-atom node is its own structure."""
        species = all_species[:n]
        reach = self.bond_radii.to(vectors.dtype)
        reach = reach[species[edge_index[0]]] + reach[species[edge_index[1]]]
        bonds = edge_index[:, torch.linalg.norm(vectors.detach(), dim=-1) < reach]
        if batch is None:
            batch = torch.zeros_like(species)
        lone = num_graphs + torch.arange(all_species.shape[0] - n, device=species.device)
        return self.representation(all_species, bonds, torch.cat([batch, lone]))

    def _physics_energies(self, species, edge_index, vectors, features, positions, batch, num_graphs, total_charge,
                          cell, periodic) -> torch.Tensor:
        e = torch.zeros(species.shape[0], dtype=vectors.dtype, device=vectors.device)
        if self.physics.zbl is not None:
            e = e + self.physics.zbl(species, edge_index, vectors)
        if self.physics.coulomb is not None:
            if positions is None:
                raise ValueError("the coulomb physics term needs positions (and batch, total_charge, cell, periodic "
                                 "for batches and periodic structures) in atomic_energies_and_features")
            if batch is None:
                batch = torch.zeros_like(species)
            if total_charge is None:
                total_charge = torch.zeros(num_graphs, dtype=vectors.dtype, device=vectors.device)
            if cell is None:
                cell = torch.zeros(num_graphs, 3, 3, dtype=vectors.dtype, device=vectors.device)
            if periodic is None:
                periodic = [False] * num_graphs
            ctx = HeadContext(species=species, positions=positions, batch=batch, num_graphs=num_graphs,
                              edge_index=edge_index, edge_vectors=vectors, total_charge=total_charge.to(vectors.dtype),
                              masses=self.masses.to(vectors.dtype)[species], cutoff=self.cutoff)
            charges = self.heads[self._head_of["charges"]](features, ctx)["charges"]
            e = e + self.physics.coulomb(charges, positions, batch, num_graphs, cell, periodic, edge_index, vectors)
        if self.physics.d3 is not None:
            if positions is None:
                raise ValueError("the d3 physics term needs positions (and batch, cell, periodic for batches and "
                                 "periodic structures) in atomic_energies_and_features")
            e = e + self.physics.d3(species, positions, batch, num_graphs, cell, periodic)
        return e

    @staticmethod
    def periodic_structures(graph) -> list[bool]:
        """Whether each structure of ``graph`` is periodic; the Coulomb term takes all or no directions periodic."""
        pbc = graph.pbc
        mixed = pbc.any(dim=1) & ~pbc.all(dim=1)
        if mixed.any():
            b = int(mixed.nonzero()[0])
            raise ValueError(f"structure {b} is periodic in some directions only (pbc={pbc[b].tolist()}); the "
                             "coulomb physics term supports fully periodic or open structures")
        return pbc.all(dim=1).tolist()

    def head_context(self, graph, species, positions, vectors) -> HeadContext:
        return HeadContext(
            species=species, positions=positions, batch=graph.batch, num_graphs=graph.num_graphs,
            edge_index=graph.edge_index, edge_vectors=vectors, total_charge=graph.total_charge.to(positions.dtype),
            masses=self.masses.to(positions.dtype)[species], cutoff=self.cutoff,
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        graph,
        compute_forces: bool | None = None,
        compute_stress: bool | None = None,
        training: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Evaluate the model on an :class:`~clebsch.graph.AtomicGraph` (one structure or a batch).

        Returns a dict with ``energy`` [B], ``atomic_energies`` [N] and, as
        configured, ``forces`` [N, 3], ``stress`` [B, 3, 3] (periodic structures;
        zero rows elsewhere), ``virial``, ``charges``, ``dipole`` [B, 3],
        ``polarizability`` [B, 3, 3], ``born_charges`` [N, 3, 3] and the
        declared targets in their stored shapes.
        """
        self._check_graph(graph)
        if compute_forces is None:
            compute_forces = "forces" in self.outputs
        if compute_stress is None:
            compute_stress = ("stress" in self.outputs or "virial" in self.outputs) and bool(graph.pbc.any())
        create_graph = self.training if training is None else training
        born = "born_charges" in self.outputs
        if compute_forces or compute_stress:
            self._check_geometric("forces or stress (compute_forces / compute_stress)")

        outer_grad = torch.is_grad_enabled()
        with torch.enable_grad() if (compute_forces or compute_stress or born) else contextlib.nullcontext():
            out = self._evaluate(graph, compute_forces, compute_stress, born, create_graph)
        if not outer_grad:  # the caller asked for no graph: keep none alive
            out = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
        return out

    def _evaluate(self, graph, compute_forces: bool, compute_stress: bool, born: bool, create_graph: bool) -> dict:
        positions = graph.positions
        cell = graph.cell
        num_graphs = graph.num_graphs
        grad_inputs = []
        if compute_forces or compute_stress or born:
            if not positions.requires_grad:
                positions = positions.detach().requires_grad_(True)
            grad_inputs.append(positions)
        if compute_stress:
            strain = torch.zeros(num_graphs, 3, 3, dtype=positions.dtype, device=positions.device, requires_grad=True)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            positions = positions + torch.einsum("ni,nij->nj", positions, sym[graph.batch])
            cell = cell + torch.bmm(cell, sym)
            grad_inputs.append(strain)

        vectors = graph.edge_vectors(positions=positions, cell=cell)
        species = self.species_index(graph.numbers, graph.batch)
        e_atom, features = self.atomic_energies_and_features(species, graph.edge_index, vectors,
                                                             **self._physics_inputs(graph, positions, cell))
        energy = torch.zeros(num_graphs, dtype=e_atom.dtype, device=e_atom.device).index_add_(0, graph.batch, e_atom)
        out = {"energy": energy, "atomic_energies": e_atom}

        if self.heads:
            ctx = self.head_context(graph, species, positions, vectors)
            for key, head in self.heads.items():
                if key in self._legacy_irreps:
                    out[key] = head(features)
                else:
                    out.update(head(features, ctx))

        if compute_forces or compute_stress:
            grads = torch.autograd.grad(
                energy.sum(), grad_inputs, create_graph=create_graph, retain_graph=create_graph or born,
                allow_unused=True,
            )
            if compute_forces:
                g = grads[0]
                out["forces"] = -g if g is not None else torch.zeros_like(graph.positions)
            if compute_stress:
                g = grads[-1]
                virial = -g if g is not None else torch.zeros(num_graphs, 3, 3, dtype=energy.dtype)
                volume = torch.linalg.det(graph.cell).abs()
                periodic = graph.pbc.any(dim=1)
                safe = torch.where(periodic, volume, torch.ones_like(volume))
                out["virial"] = virial
                out["stress"] = torch.where(periodic[:, None, None], -virial / safe[:, None, None], torch.zeros_like(virial))
        if born:
            out["born_charges"] = self._born_charges(out["dipole"], grad_inputs[0], create_graph)
        return out

    def conditioning_inputs(self, graph) -> dict:
        """The keyword arguments of the energy path that the conditioning needs, checked; ``{}`` without one.

        ``batch``, ``num_graphs``, ``total_charge`` and/or ``spin_multiplicity`` of ``graph``;
        a missing or disallowed value raises, naming the structure (see :func:`check_structure_inputs`).
        """
        if not self.conditioning:
            return {}
        spins = getattr(graph, "spin_multiplicity", None)
        check_structure_inputs(self.conditioning, graph.total_charge, spins)
        out = {"batch": graph.batch, "num_graphs": graph.num_graphs}
        if "charge" in self.conditioning:
            out["total_charge"] = graph.total_charge
        if "spin" in self.conditioning:
            out["spin_multiplicity"] = spins
        return out

    def _physics_inputs(self, graph, positions, cell) -> dict:
        """The keyword arguments of the energy path that the Coulomb term, a topological representation or the
        conditioning needs."""
        conditioning = self.conditioning_inputs(graph)
        if self.physics is None or not self.physics.needs_positions:
            if self.topological:
                return {**conditioning, "batch": graph.batch, "num_graphs": graph.num_graphs}
            return conditioning
        return {**conditioning, "positions": positions, "batch": graph.batch, "num_graphs": graph.num_graphs,
                "total_charge": graph.total_charge, "cell": cell,
                # the Coulomb term takes all or no directions periodic, D3 any (slabs, wires)
                "periodic": self.periodic_structures(graph) if self.physics.coulomb is not None else graph.pbc}

    # ------------------------------------------------------------------ Hessian
    def hessian(self, graph, chunk: int = 96) -> torch.Tensor:
        """The exact Hessian ``d^2 E / dr_ia dr_jb`` [3N, 3N] by autograd (eV/Å^2).

        Rows come from backward passes through the forces, ``chunk`` rows at a
        time (``is_grads_batched``; one row at a time where an operation of the
        model has no batching rule, e.g. a custom autograd function). For a batch of structures the matrix is block
        diagonal. Cell and positions are held fixed (no strain derivatives).

        Examples
        --------
        >>> from clebsch.graph import AtomicGraph
        >>> from clebsch.models import build_model
        >>> model = build_model({"name": "schnet", "species": ["H"], "cutoff": 3.0, "num_layers": 1, "channels": 4})
        >>> graph = AtomicGraph.from_tensors(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.8]]), torch.tensor([1, 1]), 3.0)
        >>> model.hessian(graph).shape
        torch.Size([6, 6])
        """
        self._check_geometric("Hessian")
        with torch.enable_grad():
            positions = graph.positions.detach().requires_grad_(True)
            vectors = graph.edge_vectors(positions=positions)
            species = self.species_index(graph.numbers, graph.batch)
            e_atom, _ = self.atomic_energies_and_features(species, graph.edge_index, vectors,
                                                          **self._physics_inputs(graph, positions, graph.cell))
            gradient = torch.autograd.grad(e_atom.sum(), positions, create_graph=True)[0].reshape(-1)
            size = gradient.numel()
            eye = torch.eye(size, dtype=gradient.dtype, device=gradient.device)
            # whether every operation has a batching rule is learnt once per model, on two rows
            batched = getattr(self, "_hessian_batched", None) is not False
            starts = [0] + list(range(min(2, size), size, max(1, chunk))) if batched else list(range(size))
            rows = []
            for start, stop in zip(starts, starts[1:] + [size]):
                seeds = eye[start:stop]
                block = None
                if batched:
                    try:
                        block = torch.autograd.grad(gradient, positions, grad_outputs=seeds, is_grads_batched=True,
                                                    retain_graph=True, allow_unused=True)[0]
                        if block is None:
                            block = torch.zeros(seeds.shape[0], *positions.shape, dtype=gradient.dtype,
                                                device=gradient.device)
                        self._hessian_batched = True
                    except RuntimeError:  # an operation without a batching rule: one row at a time from now on
                        batched = self._hessian_batched = False
                if block is None:
                    block = torch.stack([
                        _or_zeros(torch.autograd.grad(gradient, positions, grad_outputs=seed, retain_graph=True,
                                                      allow_unused=True)[0], positions)
                        for seed in seeds])
                rows.append(block.reshape(seeds.shape[0], size))
        return torch.cat(rows).detach()

    @staticmethod
    def _born_charges(dipole: torch.Tensor, positions: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """``Z*[i, a, b] = d(mu_a) / d(r_ib)`` for the structure atom ``i`` belongs to (3 backward passes)."""
        rows = []
        for a in range(3):
            g = torch.autograd.grad(dipole[:, a].sum(), positions, create_graph=create_graph, retain_graph=True,
                                    allow_unused=True)[0]
            rows.append(g if g is not None else torch.zeros_like(positions))
        return torch.stack(rows, dim=1)


def _or_zeros(g, like):
    return torch.zeros_like(like) if g is None else g


def _rename_legacy_keys(state_dict, prefix, *args, **kwargs):
    """Map the head keys of older models (``dipole_head.*``, ...) onto ``heads.*``."""
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        for old, new in _LEGACY_PREFIXES.items():
            if rest.startswith(old):
                state_dict[prefix + new + rest[len(old):]] = state_dict.pop(key)
                break
