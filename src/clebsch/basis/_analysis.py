"""What a predicted density or Hamiltonian means: densities on grids, orbital energies, cube files.

Matrices here are in clebsch order (see :class:`~clebsch.basis.GaussianBasis`);
lengths in Å, densities in electrons / Bohr^3, energies in the matrix's unit.
"""

from __future__ import annotations

import numpy as np
import torch

from ._gaussian import GaussianBasis
from ._grid import molecular_grid

__all__ = ["assemble_matrix", "overlap_matrix", "canonical_orthogonalisation", "orbital_energies", "density_report",
           "write_density_cube"]


def assemble_matrix(basis: GaussianBasis, numbers, onsite, pairs=None, edge_index=None) -> torch.Tensor:
    """The whole matrix ``[n_ao, n_ao]`` of one structure from its on-site blocks ``[N, U, U]`` and its
    pair blocks ``[E, U, U]`` on ``edge_index`` (``[2, E]``: sender, receiver); pairs without an edge are zero."""
    numbers = [int(z) for z in numbers]
    offsets = basis.ao_offsets(numbers)
    onsite = torch.as_tensor(onsite)
    out = onsite.new_zeros(int(offsets[-1]), int(offsets[-1]))
    slots = [torch.as_tensor(basis.slots(z)) for z in numbers]
    for i in range(len(numbers)):
        out[offsets[i]:offsets[i + 1], offsets[i]:offsets[i + 1]] = onsite[i][slots[i]][:, slots[i]]
    if pairs is not None and edge_index is not None:
        for e, (j, i) in enumerate(torch.as_tensor(edge_index).T.tolist()):
            out[offsets[i]:offsets[i + 1], offsets[j]:offsets[j + 1]] = pairs[e][slots[i]][:, slots[j]]
    return out


def overlap_matrix(basis: GaussianBasis, numbers, positions, grid=None) -> torch.Tensor:
    """The overlap ``S`` [n_ao, n_ao] (clebsch order) by quadrature on a molecular grid."""
    points, weights = grid if grid is not None else molecular_grid(numbers, positions)
    chi = basis.values(numbers, positions, points)
    s = chi.T @ (weights[:, None] * chi)
    return 0.5 * (s + s.T)


def canonical_orthogonalisation(overlap: torch.Tensor, cutoff: float = 0.0) -> torch.Tensor:
    """``X`` [n, k] with ``X^T S X = 1`` from the eigenvectors of ``S`` whose eigenvalues exceed ``cutoff`` (and
    1e-8 of the largest: near-singular combinations always go)."""
    s = torch.as_tensor(overlap, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(s)
    keep = evals > max(1e-8 * float(evals.max()), float(cutoff))
    return evecs[:, keep] / evals[keep].sqrt()


def orbital_energies(hamiltonian: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the generalised problem ``H C = S C e``, ascending."""
    h = torch.as_tensor(hamiltonian, dtype=torch.float64)
    x = canonical_orthogonalisation(overlap)
    return torch.linalg.eigvalsh(x.T @ h @ x)


def density_report(basis: GaussianBasis, numbers, positions, predicted, reference=None, grid=None) -> dict:
    """The electron count and dipole of a density given by per-atom coefficients (union layout), and with
    ``reference`` the normalised error ``eps = int |rho - rho_ref| / int rho_ref`` in %.

    The dipole (e·Å) includes the nuclei (charges ``numbers``) and is taken about the origin.
    """
    points, weights = grid if grid is not None else molecular_grid(numbers, positions)
    predicted = torch.as_tensor(predicted, dtype=torch.float64)
    both = predicted if reference is None else torch.stack([predicted, torch.as_tensor(reference).to(predicted)], -1)
    rho = basis.density(numbers, positions, both, points)  # one pass over the basis functions for both
    rho, ref = (rho, None) if reference is None else (rho[:, 0], rho[:, 1])
    out = {"electrons": float((weights * rho).sum())}
    nuclear = (torch.as_tensor(numbers, dtype=torch.float64)[:, None]
               * torch.as_tensor(positions, dtype=torch.float64)).sum(dim=0)
    out["dipole"] = (nuclear - (weights * rho) @ points).tolist()
    if ref is not None:
        out["density_error_percent"] = float(100.0 * (weights * (rho - ref).abs()).sum() / (weights * ref).sum())
    return out


def write_density_cube(path, atoms, basis: GaussianBasis, coefficients, spacing: float = 0.2,
                       margin: float = 3.0) -> None:
    """A Gaussian cube file of the density (electrons / Bohr^3) on a box ``margin`` Å around the atoms."""
    import ase.io.cube

    from .._atomic import atomic_open

    positions = atoms.get_positions()
    lo, hi = positions.min(axis=0) - margin, positions.max(axis=0) + margin
    shape = np.maximum(np.ceil((hi - lo) / spacing).astype(int) + 1, 2)
    axes = [lo[k] + spacing * np.arange(shape[k]) for k in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    rho = basis.density(atoms.numbers, positions, coefficients, torch.as_tensor(grid)).numpy().reshape(*shape)
    box = atoms.copy()
    box.set_cell(np.diag(shape * spacing))  # cube files give the step as cell / points
    box.set_pbc(False)
    box.positions = positions
    with atomic_open(path, "w") as handle:
        ase.io.cube.write_cube(handle, box, data=rho, origin=lo)

