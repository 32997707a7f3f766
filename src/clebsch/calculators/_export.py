"""Export a model with ``torch.export`` so that it runs without clebsch's Python classes.

What is exported is the energy function of one structure,

    (positions [N, 3], numbers [N], edge_index [2, E], shifts [E, 3], cell [3, 3]) -> atomic energies [N]

with ``N`` and ``E`` dynamic, so one file serves structures of any size. The
file is a standard ``.pt2`` archive (:func:`torch.export.save`) whose graph
holds only ATen operations; the cutoff and elements are stored beside it in
``extra_files["clebsch.json"]``.

Forces and stress are not inside the graph: ``torch.export`` cannot trace
``torch.autograd.grad`` (the double pass leaves fake tensors among the program
constants). They are taken by autograd *through* the loaded program, which is
differentiable like any ATen graph, in :class:`ExportedPotential` -- twenty
lines of plain torch, reproduced here for use without clebsch::

    program = torch.export.load("model.pt2").module()
    positions.requires_grad_(True)
    strain = torch.zeros(3, 3, dtype=positions.dtype, requires_grad=True)
    sym = 0.5 * (strain + strain.T)
    energy = program(positions + positions @ sym, numbers, edge_index, shifts, cell + cell @ sym).sum()
    grad_r, grad_strain = torch.autograd.grad(energy, [positions, strain])
    forces, stress = -grad_r, grad_strain / abs(torch.linalg.det(cell))

A model with heads exports them too: the function then also takes the total
charge and returns the heads' outputs beside the energies, e.g. for a dipole
head

    (positions, numbers, edge_index, shifts, cell, total_charge [1]) -> (atomic energies [N], charges [N], dipole [3])

and ``clebsch.json`` lists the inputs and outputs (``"inputs"``,
``"outputs"``); in the snippet above, pass ``total_charge`` last and take
the energies as ``program(...)[0]``. A file without those keys (written
before dipoles were exported) holds the five-input, energies-only function.

A model conditioned on per-structure inputs (``conditioning``) takes them after
the cell: ``total_charge`` [1] (e), and ``spin_multiplicity`` [1] (``2S + 1``)
when it is conditioned on spin; ``clebsch.json`` lists them under ``"inputs"``
and the conditioning under ``"conditioning"``.

Physics terms of the model (``physics``) are inside the exported energies:
ZBL for every structure, and the Coulomb energy of the dipole head's charges
for open structures (the Ewald sum of a periodic cell picks its number of
reciprocal vectors from the cell, which a traced graph cannot; such an export
refuses periodic structures, and ``clebsch.json`` says so under ``"open_only"``).

Edges follow :func:`clebsch.graph.radius_graph`: row 0 the sender ``j``, row 1
the receiver ``i``, vector ``r_j - r_i + shifts @ cell``, every pair within the
cutoff in both directions.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

__all__ = ["export", "load_exported", "ExportedPotential", "ExportedFunction", "exported_outputs"]

_META = "clebsch.json"
_INPUTS = ["positions", "numbers", "edge_index", "shifts", "cell"]


class ExportedFunction(torch.nn.Module):
    """The exported function of one structure: the model's own energy path and heads, without input checks.

    It calls :meth:`~clebsch.models.Potential.atomic_energies_and_features` and
    the model's heads (so exported numbers are the model's numbers), leaving out
    only the checks on tensor values, which cannot be traced. Returns the atomic
    energies, then each head output named in ``outputs`` (``charges``,
    ``dipole``, ``polarizability``, declared targets).
    """

    def __init__(self, potential, outputs: list[str], with_charge: bool):
        super().__init__()
        self.potential = potential
        self.outputs = list(outputs)
        self.with_charge = with_charge

    def forward(self, positions, numbers, edge_index, shifts, cell, total_charge=None, spin_multiplicity=None):
        from ..models import HeadContext

        p = self.potential
        species = p.z_to_index[numbers]
        vectors = positions[edge_index[0]] - positions[edge_index[1]] + shifts @ cell
        if total_charge is None:
            total_charge = torch.zeros(1, dtype=positions.dtype, device=positions.device)
        physics = {}
        if p.conditioning:  # the per-structure inputs (checked by ExportedPotential, not in the graph)
            spin = None if spin_multiplicity is None else spin_multiplicity.to(positions.dtype)
            physics = {"batch": torch.zeros_like(species), "num_graphs": 1,
                       "total_charge": total_charge.to(positions.dtype), "spin_multiplicity": spin}
        if _has_coulomb(p):  # open structures only (see the module's notes)
            physics.update({"positions": positions, "batch": torch.zeros_like(species), "num_graphs": 1,
                            "total_charge": total_charge.to(positions.dtype), "cell": cell[None], "periodic": [False]})
        energies, features = p.atomic_energies_and_features(species, edge_index, vectors, **physics)
        if not self.outputs:
            return energies
        ctx = HeadContext(species=species, positions=positions, batch=torch.zeros_like(species), num_graphs=1,
                          edge_index=edge_index, edge_vectors=vectors, total_charge=total_charge.to(positions.dtype),
                          masses=p.masses.to(positions.dtype)[species], cutoff=p.cutoff)
        named = {}
        for key, head in p.heads.items():
            named.update({key: head(features)} if key in p._legacy_irreps else head(features, ctx))
        # one structure: per-structure values without their batch axis
        return (energies, *[named[n][0] if p.targets[n].level == "structure" else named[n] for n in self.outputs])


def _has_coulomb(model) -> bool:
    """Whether a physics term needs positions beyond the edges (coulomb, d3): such an export is for open structures."""
    physics = getattr(model, "physics", None)
    return physics is not None and physics.needs_positions


def exported_outputs(model) -> list[str]:
    """The head outputs an export of ``model`` returns beside the energies (all but per-edge ones)."""
    names = []
    for name in model.outputs:
        t = model.targets[name]
        if t.source == "head" and t.level != "edge" and name not in names:
            names.append(name)
    if "dipole" in names and "charges" not in names:
        names.insert(names.index("dipole"), "charges")
    return names


def _example(model, dtype, device):
    """A small open structure of the model's elements with a few edges (N, E >= 2 so nothing specialises)."""
    rng = np.random.default_rng(0)
    species = list(model.species)
    n = max(6, 2 * len(species))
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    positions = grid * 0.6 * model.cutoff + rng.normal(scale=0.05, size=(n, 3))
    numbers = np.array([species[k % len(species)] for k in range(n)])
    from ..graph import radius_graph

    edge_index, shifts = radius_graph(positions, model.cutoff)
    return (
        torch.as_tensor(positions, dtype=dtype, device=device),
        torch.as_tensor(numbers, dtype=torch.long, device=device),
        edge_index.to(device),
        shifts.to(dtype=dtype, device=device),
        torch.zeros(3, 3, dtype=dtype, device=device),
    )


def export(model, path, dtype: str = "float64", device: str = "cpu") -> str:
    """Export ``model`` to a ``.pt2`` file that runs without clebsch.

    Parameters
    ----------
    model : Potential or str
        The model, or a packaged model file.
    path : str or os.PathLike
        Output file; ``.pt2`` by convention.
    dtype : {"float64", "float32"}
        Precision baked into the exported graph.
    device : str
        Device baked into the exported graph.

    Returns
    -------
    str
        The path written.

    Notes
    -----
    Energy, forces and stress (through :class:`ExportedPotential`) are
    exported, and every head output of the model beside them: charges and
    dipole, polarizability, declared per-atom and per-structure targets
    (per-edge targets and responses other than forces and stress, such as
    Born charges, are not). A representation
    whose forward branches on tensor values cannot be exported and raises
    :class:`RuntimeError` naming the family.
    """
    from ._calculator import load_model

    model = load_model(model, device=device, dtype=dtype)
    names = exported_outputs(model)
    conditioning = list(getattr(model, "conditioning", ()))
    with_charge = bool(names) or bool(conditioning)
    module = ExportedFunction(model, names, with_charge).eval()
    example = _example(model, getattr(torch, dtype), torch.device(device))
    n_atoms = torch.export.Dim("n_atoms", min=1)
    n_edges = torch.export.Dim("n_edges", min=0)
    dynamic = {
        "positions": {0: n_atoms}, "numbers": {0: n_atoms}, "edge_index": {1: n_edges}, "shifts": {0: n_edges},
        "cell": None,
    }
    inputs, outputs = list(_INPUTS), ["atomic_energies"]
    if with_charge:
        example = (*example, torch.zeros(1, dtype=getattr(torch, dtype), device=torch.device(device)))
        dynamic["total_charge"] = None
        inputs.append("total_charge")
        outputs += names
    if "spin" in conditioning:
        example = (*example, torch.ones(1, dtype=getattr(torch, dtype), device=torch.device(device)))
        dynamic["spin_multiplicity"] = None
        inputs.append("spin_multiplicity")
    try:
        with torch.no_grad():
            program = torch.export.export(module, example, dynamic_shapes=dynamic, strict=False)
    except Exception as err:  # torch.export raises many kinds
        family = getattr(model, "config", {}).get("name", type(model.representation).__name__)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RuntimeError(
            f"cannot export model {family!r} with torch.export: {first} -- its forward branches on tensor "
            f"values (e.g. `if idx.numel() == 0` after `nonzero()`); such code must be written without "
            f"data-dependent Python control flow to be exported"
        ) from err
    meta = {"cutoff": float(model.cutoff), "species": [int(z) for z in model.species], "dtype": dtype,
            "inputs": inputs, "outputs": outputs, "config": getattr(model, "config", {}),
            "levels": {n: model.targets[n].level for n in names}, "open_only": _has_coulomb(model),
            "conditioning": conditioning}
    path = os.fspath(path)
    torch.export.save(program, path, extra_files={_META: json.dumps(meta, default=str)})
    return path


class ExportedPotential(torch.nn.Module):
    """A loaded ``.pt2`` export, with the same call as :class:`~clebsch.models.Potential`.

    ``model(graph)`` takes anything with ``positions``, ``numbers``,
    ``edge_index``, ``shifts``, ``cell`` [1, 3, 3] and ``pbc`` [1, 3] (one
    structure; ``total_charge`` [1] if it has one, ``spin_multiplicity`` [1] when the
    model is conditioned on spin) and returns ``energy`` [1],
    ``atomic_energies``, ``forces``, for periodic structures ``stress``
    [1, 3, 3], and, if the model exported a dipole head, ``charges`` and
    ``dipole`` [1, 3], so :class:`ClebschCalculator` runs it unchanged.
    """

    def __init__(self, program, meta: dict):
        super().__init__()
        self.program = program
        self.cutoff = float(meta["cutoff"])
        self.species = list(meta["species"])
        self.dtype = getattr(torch, meta["dtype"])
        self.inputs = list(meta.get("inputs", _INPUTS))  # files written before dipoles were exported lack these
        self.program_outputs = list(meta.get("outputs", ["atomic_energies"]))
        self.outputs = ("energy", "forces", "stress") + tuple(
            n for n in self.program_outputs if n not in ("atomic_energies", "charges"))
        self.config = meta.get("config", {})
        self.levels = meta.get("levels", {"dipole": "structure", "charges": "atom"})
        self.open_only = bool(meta.get("open_only", False))
        self.conditioning = tuple(meta.get("conditioning", ()))

    def train(self, mode: bool = True):
        """Only records the mode: an exported program has no training behaviour to switch."""
        self.training = mode
        return self

    def _check(self, numbers):
        unknown = ~torch.isin(numbers, torch.as_tensor(self.species, device=numbers.device))
        if unknown.any():
            from ase.data import chemical_symbols

            bad = int(unknown.nonzero()[0])
            z = int(numbers[bad])
            raise ValueError(
                f"atom {bad} is {chemical_symbols[z]} (Z={z}), an element this model was not trained on; "
                f"it knows {[chemical_symbols[s] for s in self.species]}"
            )

    def forward(self, graph, compute_forces=None, compute_stress=None, training=None):
        if graph.cell.shape[0] != 1:
            raise ValueError("an exported model evaluates one structure at a time")
        self._check(graph.numbers)
        if self.open_only and bool(graph.pbc.any()):
            raise ValueError("this exported model has a coulomb or d3 physics term, exported for open structures only; "
                             "evaluate periodic structures with the packaged model (.pt) instead")
        compute_forces = True if compute_forces is None else compute_forces
        if compute_stress is None:
            compute_stress = bool(graph.pbc.all())
        positions = graph.positions.to(self.dtype).detach().requires_grad_(compute_forces or compute_stress)
        cell = graph.cell[0].to(self.dtype)
        strain = torch.zeros(3, 3, dtype=self.dtype, device=positions.device, requires_grad=bool(compute_stress))
        sym = 0.5 * (strain + strain.T)
        args = [positions + positions @ sym, graph.numbers, graph.edge_index, graph.shifts.to(self.dtype),
                cell + cell @ sym]
        charge = getattr(graph, "total_charge", None)
        spin = getattr(graph, "spin_multiplicity", None)
        if self.conditioning:
            from ..models._potential import check_structure_inputs

            check_structure_inputs(self.conditioning, charge, spin)
        if "total_charge" in self.inputs:
            charge = torch.zeros(1) if charge is None else charge
            args.append(charge.to(dtype=self.dtype, device=positions.device).reshape(1))
        if "spin_multiplicity" in self.inputs:
            args.append(spin.to(dtype=self.dtype, device=positions.device).reshape(1))
        results = self.program(*args)
        if not isinstance(results, (tuple, list)):
            results = (results,)
        named = dict(zip(self.program_outputs, results))
        e_atom = named["atomic_energies"]
        energy = e_atom.sum()
        out = {"energy": energy.reshape(1), "atomic_energies": e_atom}
        for name, value in named.items():
            if name == "atomic_energies":
                continue
            value = value.detach()
            out[name] = value[None] if self.levels.get(name) == "structure" else value
        inputs = [t for t, want in ((positions, compute_forces), (strain, compute_stress)) if want]
        if inputs:
            grads = torch.autograd.grad(energy, inputs, allow_unused=True)
            grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]
            if compute_forces:
                out["forces"] = -grads[0]
            if compute_stress:
                out["stress"] = (grads[-1] / torch.linalg.det(cell).abs())[None]
        return out


def load_exported(path, device: str = "cpu") -> ExportedPotential:
    """Load a file written by :func:`export` (needs torch only, not clebsch's model classes)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"exported model {path!r} does not exist")
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path!r} is not a torch.export archive (.pt2 files are zip archives; this one is not)")
    extra = {_META: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as err:  # torch.export.load raises many kinds
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path!r} is not a readable torch.export archive ({first}); .pt2 is for files written by "
            f"clebsch.calculators.export -- a packaged model from `clebsch train` goes by its .pt name"
        ) from err
    if not extra[_META]:
        raise ValueError(f"{path!r} is a torch.export archive but not one written by clebsch.calculators.export")
    return ExportedPotential(program.module(), json.loads(extra[_META]))
