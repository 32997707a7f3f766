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
from ._heads import DipoleHead, IrrepsHead, PolarizabilityHead, ScalarReadout

OUTPUTS = ("energy", "forces", "stress", "dipole", "polarizability")


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
        out by its attribute ``irreps_out``. ``species`` holds indices into
        ``species`` below.
    species : sequence of int or str
        The elements the model knows, as atomic numbers or symbols.
    cutoff : float
        Radial cutoff in Å; graphs are built with it.
    atomic_energies : sequence of float, optional
        Reference energy per element (same order as ``species``), eV.
    scale : float
        Multiplies the learned part of the per-atom energy (a force RMS, eV/Å).
    outputs : sequence of str
        Among ``energy, forces, stress, dipole, polarizability``; ``forces``
        and ``stress`` are responses of the energy.
    irreps_heads : dict, optional
        Extra per-atom equivariant outputs, ``{"name": "4x0e + 2x1o"}``.
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
        irreps_heads: dict | None = None,
        readout_hidden: int = 16,
        config: dict | None = None,
    ):
        super().__init__()
        unknown = [o for o in outputs if o not in OUTPUTS]
        if unknown:
            raise ValueError(f"unknown output(s) {unknown}; allowed: {list(OUTPUTS)}")
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        numbers = [_atomic_number(s) for s in species]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"'species' lists an element twice: {list(species)}")
        self.representation = representation
        self.irreps = Irreps(representation.irreps_out)
        self.species = numbers
        self.cutoff = float(cutoff)
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
        self.dipole_head = DipoleHead(self.irreps, readout_hidden) if "dipole" in outputs else None
        self.polarizability_head = PolarizabilityHead(self.irreps, readout_hidden) if "polarizability" in outputs else None
        self.irreps_heads = torch.nn.ModuleDict(
            {name: IrrepsHead(self.irreps, irreps) for name, irreps in (irreps_heads or {}).items()}
        )

    # ------------------------------------------------------------------ helpers
    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Indices into ``species`` for atomic numbers; an unknown element raises, naming it and the atom."""
        if numbers.numel() and (numbers.min() < 1 or numbers.max() > 118):
            bad = int(((numbers < 1) | (numbers > 118)).nonzero()[0])
            raise ValueError(f"atom {bad} has atomic number {int(numbers[bad])}, which is not an element")
        index = self.z_to_index[numbers]
        if (index < 0).any():
            bad = int((index < 0).nonzero()[0])
            z = int(numbers[bad])
            known = [chemical_symbols[s] for s in self.species]
            raise ValueError(
                f"atom {bad} is {chemical_symbols[z]} (Z={z}), an element this model was not trained on; "
                f"it knows {known}"
            )
        return index

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
        ``polarizability`` [B, 3, 3] and extra per-atom heads.
        """
        if compute_forces is None:
            compute_forces = "forces" in self.outputs
        if compute_stress is None:
            compute_stress = "stress" in self.outputs and bool(graph.pbc.any())
        create_graph = self.training if training is None else training

        outer_grad = torch.is_grad_enabled()
        with torch.enable_grad() if (compute_forces or compute_stress) else contextlib.nullcontext():
            out = self._evaluate(graph, compute_forces, compute_stress, create_graph)
        if not outer_grad:  # the caller asked for no graph: keep none alive
            out = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
        return out

    def _evaluate(self, graph, compute_forces: bool, compute_stress: bool, create_graph: bool) -> dict:
        positions = graph.positions
        cell = graph.cell
        num_graphs = graph.num_graphs
        grad_inputs = []
        if compute_forces or compute_stress:
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
        species = self.species_index(graph.numbers)
        n = species.shape[0]
        n_species = len(self.species)
        # one extra isolated node per element, for the energy reference
        all_species = torch.cat([species, torch.arange(n_species, device=species.device)])
        features = self.representation(all_species, graph.edge_index, vectors)
        atomic_out = self.energy_head(features)[:, 0]
        learned = atomic_out[:n] - atomic_out[n:][species]
        e_atom = self.atomic_energies.to(learned.dtype)[species] + self.scale.to(learned.dtype) * learned
        energy = torch.zeros(num_graphs, dtype=e_atom.dtype, device=e_atom.device).index_add_(0, graph.batch, e_atom)
        out = {"energy": energy, "atomic_energies": e_atom}
        features = features[:n]

        if grad_inputs:
            grads = torch.autograd.grad(
                energy.sum(), grad_inputs, create_graph=create_graph, allow_unused=True
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

        if self.dipole_head is not None:
            masses = self.masses.to(features.dtype)[species]
            charges, dipole = self.dipole_head(
                features, graph.positions, masses, graph.batch, num_graphs, graph.total_charge.to(features.dtype)
            )
            out["charges"] = charges
            out["dipole"] = dipole
        if self.polarizability_head is not None:
            out["polarizability"] = self.polarizability_head(features, graph.batch, num_graphs)
        for name, head in self.irreps_heads.items():
            out[name] = head(features)
        return out
