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
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from ase.data import atomic_masses, chemical_symbols

from ..o3 import Irreps
from ..targets import TARGETS, Target, resolve_targets
from ._heads import HeadContext, IrrepsHead, ScalarReadout, build_head, head_kind

OUTPUTS = tuple(TARGETS)
"""The built-in outputs (see :data:`clebsch.targets.TARGETS`); a config may declare more."""

# state-dict keys of models written before heads were held in one ModuleDict
_LEGACY_PREFIXES = {"dipole_head.": "heads.dipole.", "polarizability_head.": "heads.polarizability.",
                    "irreps_heads.": "heads."}


def _atomic_number(symbol_or_z) -> int:
    if isinstance(symbol_or_z, str):
        if symbol_or_z not in chemical_symbols[1:]:
            raise ValueError(f"unknown element {symbol_or_z!r} in 'species'")
        return chemical_symbols.index(symbol_or_z)
    z = int(symbol_or_z)
    if not 0 < z < len(chemical_symbols):
        raise ValueError(f"atomic number {z} in 'species' is not an element")
    return z


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
    outputs : sequence of str
        Targets to predict: built-in ones (:data:`clebsch.targets.TARGETS`:
        ``energy, forces, stress, virial, dipole, charges, polarizability,
        born_charges, ...``) and those declared in ``targets``. Responses
        (forces, stress, Born charges) are derivatives of their source output.
    targets : dict, optional
        Declarations of further targets, ``{"gap": {"level": "structure",
        "irreps": "0e", "reduce": "mean"}}`` (see :func:`clebsch.targets.declare`).
    irreps_heads : dict, optional
        Untrained extra per-atom outputs, ``{"name": "4x0e + 2x1o"}`` (kept for
        older configs; declare a target instead).
    readout_hidden : int
        Width of the heads' hidden layers.
    target_stats : dict, optional
        ``{target: {"scale": s, "shift": [...]}}``: the spread and per-element
        mean a declared target's head starts from (the trainer fills it from
        the training data, see :func:`clebsch.models.target_statistics`).
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
        outputs: Sequence[str] = ("energy", "forces"),
        targets: dict | None = None,
        irreps_heads: dict | None = None,
        readout_hidden: int = 16,
        target_stats: dict | None = None,
        config: dict | None = None,
    ):
        super().__init__()
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        self.targets: dict[str, Target] = resolve_targets(targets)
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
        self.outputs = tuple(outputs)
        self.config = dict(config or {})

        index = torch.full((119,), -1, dtype=torch.long)
        index[numbers] = torch.arange(len(numbers))
        self.register_buffer("z_to_index", index, persistent=False)
        e0 = torch.zeros(len(numbers)) if atomic_energies is None else torch.as_tensor(atomic_energies, dtype=torch.get_default_dtype())
        if e0.shape != (len(numbers),):
            raise ValueError(f"atomic_energies has {e0.numel()} values for {len(numbers)} species")
        self.register_buffer("atomic_energies", e0.clone())
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("masses", torch.as_tensor(atomic_masses[numbers], dtype=torch.get_default_dtype()))

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
                                             (target_stats or {}).get(name))
            self._head_of[name] = key
        for name, irreps in (irreps_heads or {}).items():
            self.heads[name] = IrrepsHead(self.irreps, irreps)
        self._legacy_irreps = tuple((irreps_heads or {}).keys())
        self.responses = tuple(n for n in self.outputs if self.targets[n].source == "response")
        self._register_load_state_dict_pre_hook(_rename_legacy_keys)

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

    def atomic_energies_and_features(self, species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor):
        """The energy path: per-atom energies [N] and the features [N, irreps.dim].

        ``E_i = E0[z_i] + scale * (f(h_i) - f(h_i^isolated))``: one extra node per
        element, with no edges, gives the isolated-atom features in the same pass.
        Used by :meth:`forward` and by the export, so both compute the same numbers.
        """
        n = species.shape[0]
        n_species = len(self.species)
        all_species = torch.cat([species, torch.arange(n_species, device=species.device)])
        features = self.representation(all_species, edge_index, vectors)
        atomic_out = self.energy_head(features)[:, 0]
        learned = atomic_out[:n] - atomic_out[n:][species]
        e_atom = self.atomic_energies.to(learned.dtype)[species] + self.scale.to(learned.dtype) * learned
        return e_atom, features[:n]

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
        if compute_forces is None:
            compute_forces = "forces" in self.outputs
        if compute_stress is None:
            compute_stress = ("stress" in self.outputs or "virial" in self.outputs) and bool(graph.pbc.any())
        create_graph = self.training if training is None else training
        born = "born_charges" in self.outputs

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
        e_atom, features = self.atomic_energies_and_features(species, graph.edge_index, vectors)
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

    @staticmethod
    def _born_charges(dipole: torch.Tensor, positions: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """``Z*[i, a, b] = d(mu_a) / d(r_ib)`` for the structure atom ``i`` belongs to (3 backward passes)."""
        rows = []
        for a in range(3):
            g = torch.autograd.grad(dipole[:, a].sum(), positions, create_graph=create_graph, retain_graph=True,
                                    allow_unused=True)[0]
            rows.append(g if g is not None else torch.zeros_like(positions))
        return torch.stack(rows, dim=1)


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
