"""Per-atom virials from the energy's gradient with respect to the edge vectors.

The energy of a clebsch model depends on the positions only through the edge
vectors ``r_ij = r_j - r_i (+ shifts @ cell)``. With ``g_e = dE/dr_e`` for an
edge ``e`` from ``j`` to ``i``, the forces are ``F_i = sum_e g_e [i is the
receiver] - g_e [i is the sender]`` and the virial is ``W = -sum_e r_e ⊗ g_e``
(the strain derivative, since a strain ``ε`` maps ``r_e`` to ``r_e (1 + ε)``).
Each edge's share is split half and half between its two atoms,

    W_i = -1/2 sum_{e touching i} r_e ⊗ g_e,

the convention of LAMMPS's ``compute stress/atom`` for pair forces; the
``W_i`` add up to the global virial exactly. ASE's per-atom stress
(``stresses``) is ``-W_i / V``, so that the per-atom stresses add up to the
stress.
"""

from __future__ import annotations

import torch

__all__ = ["edge_gradients", "atomic_virials"]


def _energy_of_vectors(model, graph, vectors):
    """Per-atom energies [N] of ``graph`` as a function of its edge vectors only."""
    from ._export import ExportedPotential

    if isinstance(model, ExportedPotential):
        # the program computes positions[j] - positions[i] + shifts @ cell: zero positions and an
        # identity cell make its edge vectors exactly ``vectors``
        n = graph.positions.shape[0]
        eye = torch.eye(3, dtype=vectors.dtype, device=vectors.device)
        args = [torch.zeros(n, 3, dtype=vectors.dtype, device=vectors.device), graph.numbers, graph.edge_index,
                vectors, eye]
        if "total_charge" in model.inputs:
            args.append(graph.total_charge.to(vectors.dtype).reshape(1))
        if "spin_multiplicity" in model.inputs:
            args.append(graph.spin_multiplicity.to(vectors.dtype).reshape(1))
        if model.open_only:
            raise ValueError("per-atom virials: this exported model has a coulomb or d3 physics term, whose energy "
                             "depends on positions, not only on edge vectors")
        out = model.program(*args)
        return out[0] if isinstance(out, (tuple, list)) else out
    physics = getattr(model, "physics", None)
    if physics is not None and physics.needs_positions:
        raise ValueError("per-atom virials: the model has a coulomb or d3 physics term, whose energy depends on "
                         "positions, not only on edge vectors; per-atom virials are not defined for it")
    if getattr(model, "topological", False):
        raise ValueError("per-atom virials: the model is topological (it sees bonds, never coordinates); it has "
                         "no virial")
    species = model.species_index(graph.numbers, graph.batch)
    e_atom, _ = model.atomic_energies_and_features(species, graph.edge_index, vectors,
                                                   **model.conditioning_inputs(graph))
    return e_atom


def edge_gradients(model, graph):
    """Per-atom energies [N], edge vectors [E, 3] and ``dE/dr_e`` [E, 3] of ``graph`` (detached).

    ``model`` is a :class:`~clebsch.models.Potential` or an
    :class:`~clebsch.calculators.ExportedPotential`.
    """
    dtype = graph.positions.dtype
    with torch.enable_grad():
        vectors = graph.edge_vectors().detach().to(dtype).requires_grad_(True)
        e_atom = _energy_of_vectors(model, graph, vectors)
        (grad,) = torch.autograd.grad(e_atom.sum(), vectors, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(vectors)
    return e_atom.detach(), vectors.detach(), grad.detach()


def atomic_virials(model, graph) -> dict:
    """Energies, forces and per-atom virials of ``graph`` from one backward pass through the edge vectors.

    Returns
    -------
    dict
        ``atomic_energies`` [N], ``forces`` [N, 3] and ``virials`` [N, 3, 3]
        (eV; ``W_i = -1/2 sum_{e touching i} r_e ⊗ dE/dr_e``, summing to the
        virial ``-dE/dε``).

    Examples
    --------
    >>> import torch
    >>> from ase.build import bulk
    >>> from clebsch.graph import AtomicGraph
    >>> from clebsch.models import build_model
    >>> model = build_model({"name": "schnet", "species": ["Cu"], "cutoff": 3.0, "channels": 4}).double()
    >>> atoms = bulk("Cu", cubic=True) * (2, 1, 1)
    >>> atoms.rattle(0.05, seed=0)
    >>> graph = AtomicGraph.from_ase(atoms, cutoff=3.0).to(dtype=torch.float64)
    >>> out = atomic_virials(model, graph)
    >>> reference = model(graph, compute_stress=True)
    >>> torch.allclose(out["virials"].sum(0), reference["virial"][0], atol=1e-10)
    True
    >>> torch.allclose(out["forces"], reference["forces"], atol=1e-10)
    True
    """
    e_atom, vectors, grad = edge_gradients(model, graph)
    sender, receiver = graph.edge_index[0], graph.edge_index[1]
    n = graph.positions.shape[0]
    forces = torch.zeros(n, 3, dtype=grad.dtype, device=grad.device)
    forces.index_add_(0, receiver, grad).index_add_(0, sender, -grad)
    half = -0.5 * vectors[:, :, None] * grad[:, None, :]
    virials = torch.zeros(n, 3, 3, dtype=grad.dtype, device=grad.device)
    virials.index_add_(0, sender, half).index_add_(0, receiver, half)
    return {"atomic_energies": e_atom, "forces": forces, "virials": virials}
