"""PySCF from predicted electronic structure: Kohn-Sham matrices of a fitted density, and SCF initial guesses.

Two routes turn a model's prediction into a density matrix that PySCF can start
its SCF from (``mf.kernel(dm0=...)``):

- from a predicted **density** (coefficients in an auxiliary basis):
  :func:`fock_from_density` builds the Kohn-Sham matrix that density defines,
  ``F = T + V_nuc + J[rho] + V_xc[rho]`` (the Coulomb matrix by density fitting,
  ``J_mn = sum_P (mn|P) c_P``; the exchange-correlation potential of a local or
  semi-local functional on PySCF's grid), and :func:`density_matrix` occupies its
  lowest orbitals. A hybrid functional needs the density matrix for its exact
  exchange, which a density alone does not give: it raises;
- from a predicted **Kohn-Sham matrix**: :func:`density_matrix` directly.

:func:`initial_guess` does either from a model and a structure. PySCF is not a
dependency of clebsch: it is imported when these functions run
(``pip install pyscf``). Matrices and coefficients here are in PySCF's order
(see :meth:`GaussianBasis.matrix_to_native`); lengths of PySCF molecules in
Bohr as PySCF keeps them, structures (ASE ``Atoms``) in Å.

With a trained ``model`` and a structure ``atoms`` (the README's tour runs this)::

    from pyscf import dft
    mol = mole(atoms, model.targets["fock"].basis)
    mf = dft.RKS(mol, xc="pbe")
    mf.kernel(dm0=initial_guess(model, atoms, mol, source="density"))
"""

from __future__ import annotations

import numpy as np
import torch

from ._gaussian import GaussianBasis

__all__ = ["mole", "aux_mole", "native_coefficients", "fock_from_density", "density_matrix", "initial_guess",
           "prediction", "overlap", "orthonormal_basis", "PREDICTED_OVERLAP_CUTOFF"]


def _pyscf():
    try:
        import pyscf  # noqa: F401
    except ImportError:
        raise ImportError("clebsch.basis.pyscf needs PySCF: pip install pyscf") from None
    from pyscf import dft, gto, lib
    from pyscf.df import addons, incore
    return dft, gto, lib, addons, incore


def _symbols(numbers) -> list[str]:
    from ase.data import chemical_symbols
    return [chemical_symbols[int(z)] for z in numbers]


def _shells_for(basis: GaussianBasis, symbols, what: str) -> dict:
    raw = basis.to_dict()["elements"]
    missing = sorted({s for s in symbols if s not in raw})
    if missing:
        first = next(i for i, s in enumerate(symbols) if s in missing)
        raise ValueError(f"{what} {basis.name!r} has no functions for element(s) {missing} (atom {first} is "
                         f"{symbols[first]}); it defines {sorted(raw)}")
    return {s: raw[s] for s in set(symbols)}


def mole(atoms, basis: GaussianBasis, charge: int | None = None, spin: int = 0, **kwargs):
    """A PySCF ``Mole`` of ``atoms`` (positions in Å) in the AO basis ``basis`` (spherical functions).

    ``charge`` defaults to ``atoms.info["charge"]`` (else 0); extra keyword arguments go to ``gto.M``.
    """
    _, gto, *_ = _pyscf()
    symbols = atoms.get_chemical_symbols()
    charge = int(atoms.info.get("charge", 0)) if charge is None else int(charge)
    kwargs.setdefault("verbose", 0)
    return gto.M(atom=[(s, tuple(map(float, p))) for s, p in zip(symbols, atoms.positions)], unit="Angstrom",
                 basis=_shells_for(basis, symbols, "basis"), charge=charge, spin=spin, cart=False, **kwargs)


def overlap(basis: GaussianBasis, numbers, positions) -> torch.Tensor:
    """The overlap ``S`` [n_ao, n_ao] of a molecule (``positions`` in Å) in ``basis``, clebsch order, float64
    (PySCF's analytic ``int1e_ovlp``)."""
    _, gto, *_ = _pyscf()
    symbols = _symbols(numbers)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    mol = gto.M(atom=[(s, tuple(map(float, p))) for s, p in zip(symbols, positions)], unit="Angstrom",
                basis=_shells_for(basis, symbols, "basis"), cart=False, verbose=0, spin=None)
    return basis.matrix_to_clebsch([int(z) for z in numbers], mol.intor_symmetric("int1e_ovlp"))


def orthonormal_basis(basis: GaussianBasis, numbers, positions, overlap_cutoff: float | None = None) -> torch.Tensor:
    """``X`` [n_ao, k] (clebsch order, float64) with ``X^T S X = 1``: the canonical orthogonalisation of the
    molecule's functions, without the combinations whose overlap eigenvalue is below ``overlap_cutoff``
    (default :data:`PREDICTED_OVERLAP_CUTOFF`, the combinations an initial guess from a predicted matrix
    drops; see :func:`density_matrix`). ``X^T H X`` is the matrix ``H`` as its orbital energies see it."""
    cutoff = PREDICTED_OVERLAP_CUTOFF if overlap_cutoff is None else overlap_cutoff
    if not float(cutoff) >= 0.0:
        raise ValueError(f"overlap_cutoff must be a number >= 0, got {overlap_cutoff!r}")
    from ._analysis import canonical_orthogonalisation

    return canonical_orthogonalisation(overlap(basis, numbers, positions), cutoff)


def aux_mole(mol, basis: GaussianBasis):
    """The auxiliary ``Mole`` of ``mol``'s atoms in the density basis ``basis`` (PySCF's ``make_auxmol``)."""
    _, _, _, addons, _ = _pyscf()
    symbols = [mol.atom_pure_symbol(i) for i in range(mol.natm)]
    return addons.make_auxmol(mol, _shells_for(basis, symbols, "auxiliary basis"))


def native_coefficients(basis: GaussianBasis, numbers, coefficients) -> np.ndarray:
    """Per-atom coefficients in clebsch's union layout ``[N, U]`` to one vector in PySCF's order (atom by
    atom, each atom's functions as its basis lists them): the coefficient vector of :func:`aux_mole`."""
    numbers = [int(z) for z in numbers]
    coefficients = torch.as_tensor(coefficients, dtype=torch.float64)
    if coefficients.shape != (len(numbers), basis.union_irreps.dim):
        raise ValueError(f"expected coefficients [{len(numbers)} atoms, {basis.union_irreps.dim}] in the union "
                         f"layout of basis {basis.name!r}, got {list(coefficients.shape)}")
    native = basis.union_to_native(numbers, coefficients).numpy()
    return np.concatenate([native[i, :basis.size(z)] for i, z in enumerate(numbers)])


def _functional(xc: str) -> str:
    dft, *_ = _pyscf()
    kind = dft.libxc.xc_type(xc)
    if dft.libxc.is_hybrid_xc(xc) or kind not in ("LDA", "GGA"):
        why = "exact exchange needs the density matrix" if dft.libxc.is_hybrid_xc(xc) else \
            f"a {kind} functional needs more than the density and its gradient"
        raise ValueError(f"fock_from_density: functional {xc!r} is not local or semi-local ({why}, which a "
                         f"fitted density does not give); use an LDA or GGA functional, or a predicted "
                         f"Kohn-Sham matrix (initial_guess(source='hamiltonian'))")
    return kind


def fock_from_density(mol, auxmol, coefficients, xc: str, grids=None, chunk: int = 4096) -> np.ndarray:
    """The Kohn-Sham matrix ``[n_ao, n_ao]`` (Hartree, PySCF's AO order) of the density
    ``rho = sum_P c_P chi_P`` given by ``coefficients`` (PySCF's order of ``auxmol``, e.g. from
    :func:`native_coefficients`).

    ``F = T + V_nuc + J + V_xc``: ``J_mn = sum_P (mn|P) c_P`` (exact for a density in the auxiliary basis),
    ``V_xc`` of the LDA or GGA functional ``xc`` on ``grids`` (default: PySCF's level-3 molecular grid),
    where negative values of the fitted density count as zero.
    """
    dft, _, lib, _, incore = _pyscf()
    kind = _functional(xc)
    c = np.asarray(coefficients, dtype=np.float64).ravel()
    if c.shape[0] != auxmol.nao:
        raise ValueError(f"expected {auxmol.nao} density coefficients for the auxiliary basis of these "
                         f"{mol.natm} atoms, got {c.shape[0]}")
    hcore = mol.intor_symmetric("int1e_kin") + mol.intor_symmetric("int1e_nuc")
    j3 = incore.aux_e2(mol, auxmol, "int3c2e", aosym="s2ij")  # [n_ao (n_ao + 1) / 2, n_aux]
    coulomb = lib.unpack_tril(j3 @ c)
    if grids is None:
        grids = dft.gen_grid.Grids(mol)
        grids.level = 3
        grids.build()
    deriv = 1 if kind == "GGA" else 0
    name = "GTOval_sph_deriv1" if deriv else "GTOval_sph"
    vxc = np.zeros_like(hcore)
    for start in range(0, len(grids.weights), chunk):
        points, weights = grids.coords[start:start + chunk], grids.weights[start:start + chunk]
        aux = auxmol.eval_gto(name, points)
        ao = mol.eval_gto(name, points)
        if not deriv:
            aux, ao = aux[None], ao[None]
        rho = np.einsum("xgp,p->xg", aux, c)
        empty = rho[0] <= 1e-12
        rho[:, empty] = 0.0
        rho[0, empty] = 1e-12
        v = dft.libxc.eval_xc(xc, rho if deriv else rho[0], spin=0, deriv=1)[1]
        vrho = np.where(empty, 0.0, v[0])
        half = ao[0] * (0.5 * weights * vrho)[:, None]
        if deriv:
            vsigma = np.where(empty, 0.0, v[1])
            half += np.einsum("xgm,xg->gm", ao[1:], 2.0 * weights * vsigma * rho[1:])
        vxc += ao[0].T @ half
    return hcore + coulomb + vxc + vxc.T


def density_matrix(fock, overlap, nelectron: int, overlap_cutoff: float = 0.0) -> np.ndarray:
    """The closed-shell density matrix ``2 C_occ C_occ^T`` of the lowest ``nelectron / 2`` orbitals of
    ``F C = S C e`` (canonical orthogonalisation: near-linear dependencies of ``S`` are dropped).

    ``overlap_cutoff``: also drop the combinations of functions whose overlap eigenvalue is below it. A
    predicted ``F`` has errors of ~1e-3 Hartree in every element; along an eigenvector of ``S`` with
    eigenvalue ``s`` they weigh ``1 / s`` in the orbital energies (``s`` ~ 3e-3 for def2-SVP on molecules),
    enough to bring a spurious orbital below the LUMO. The occupied orbitals hardly use those
    combinations, so a guess drops them (see :data:`PREDICTED_OVERLAP_CUTOFF`).
    """
    fock, overlap = np.asarray(fock, dtype=np.float64), np.asarray(overlap, dtype=np.float64)
    if fock.shape != overlap.shape or fock.ndim != 2 or fock.shape[0] != fock.shape[1]:
        raise ValueError(f"Kohn-Sham matrix {list(fock.shape)} and overlap {list(overlap.shape)} must be the same "
                         f"square shape")
    if nelectron % 2:
        raise ValueError(f"a closed-shell density matrix needs an even number of electrons, got {nelectron}")
    if not float(overlap_cutoff) >= 0.0:
        raise ValueError(f"overlap_cutoff must be a number >= 0, got {overlap_cutoff!r}")
    s_vals, s_vecs = np.linalg.eigh(overlap)
    keep = s_vals > max(1e-8 * s_vals.max(), float(overlap_cutoff))
    if int(keep.sum()) < nelectron // 2:
        raise ValueError(f"overlap_cutoff {overlap_cutoff:g} keeps {int(keep.sum())} of {len(s_vals)} functions' "
                         f"combinations, fewer than the {nelectron // 2} occupied orbitals")
    x = s_vecs[:, keep] / np.sqrt(s_vals[keep])
    _, c = np.linalg.eigh(x.T @ (0.5 * (fock + fock.T)) @ x)
    occupied = x @ c[:, : nelectron // 2]
    return 2.0 * occupied @ occupied.T


PREDICTED_OVERLAP_CUTOFF = 0.02
"""The ``overlap_cutoff`` of :func:`initial_guess` from a predicted Kohn-Sham matrix. On held-out ethanol
frames (def2-SVP, smallest overlap eigenvalue ~3e-3) a model with 1.5e-3 Hartree matrix errors gave density
matrices off by up to 200 in one element and 9.7 SCF iterations against 10.0 from minao; with 0.02, off by
0.1-0.3 and 7.7 iterations (20 frames)."""


def prediction(model, atoms, mol, source: str = "density", target: str | None = None) -> np.ndarray:
    """What ``model`` predicts for ``atoms`` in PySCF's order: the density coefficients of :func:`aux_mole`
    (``source="density"``, a vector) or the Kohn-Sham matrix ``[n_ao, n_ao]`` (``source="hamiltonian"``).

    ``mol`` must hold ``atoms`` in the model's AO basis (see :func:`mole`); ``target`` chooses the density
    target, or the pair-block target, where the model has several. :func:`initial_guess` turns it into a
    density matrix.
    """
    from ..data.targets import graph_from_atoms

    if source not in ("density", "hamiltonian"):
        raise ValueError(f"source must be 'density' or 'hamiltonian', got {source!r}")
    if mol.natm != len(atoms) or any(mol.atom_charge(i) != int(z) for i, z in enumerate(atoms.numbers)) \
            or not np.allclose(mol.atom_coords(unit="Angstrom"), atoms.positions, atol=1e-6):
        raise ValueError("mol and atoms differ (atoms, elements or positions): build mol with clebsch.basis.pyscf."
                         "mole(atoms, basis)")
    name, onsite = _predicted_target(model, source, target)
    graph = graph_from_atoms(atoms, model.cutoff, keys={}, dtype=model.atomic_energies.dtype)
    with torch.enable_grad():
        out = model(graph)
    z = atoms.numbers.tolist()
    if source == "density":
        return native_coefficients(model.targets[name].basis, z, out[name].detach())
    from ._analysis import assemble_matrix

    basis = model.targets[name].basis
    h = assemble_matrix(basis, z, out[onsite].detach().double(), out[name].detach().double(), graph.edge_index)
    fock = basis.matrix_to_native(z, h).numpy()
    if fock.shape != (mol.nao, mol.nao):
        raise ValueError(f"the model's Kohn-Sham matrix has {fock.shape[0]} functions, mol's basis "
                         f"{mol.nao}: build mol in the model's basis (clebsch.basis.pyscf.mole)")
    return fock


def _predicted_target(model, source: str, target: str | None) -> tuple[str, str | None]:
    """The density target, or the pair-block target of a Kohn-Sham matrix, that ``source`` reads, and the
    matrix's on-site target (``None`` for a density)."""
    from ..train.electronic import basis_targets

    densities, matrices = basis_targets({n: model.targets[n] for n in model.outputs})
    if source == "density":
        names = densities if target is None else [t for t in densities if t == target]
        kind = "density target (a per-atom target with a basis)"
    else:
        names = [p for _, p in matrices] if target is None else [p for _, p in matrices if p == target]
        kind = "Kohn-Sham matrix (on-site and pair-block targets of one basis)"
    if not names:
        raise ValueError(f"the model predicts no {kind}" + (f" named {target!r}" if target else "")
                         + f"; its outputs are {list(model.outputs)}")
    if len(names) > 1:
        raise ValueError(f"the model has several: {names}; choose one with target=")
    onsite = None if source == "density" else next(o for o, p in matrices if p == names[0])
    return names[0], onsite


def initial_guess(model, atoms, mol, source: str = "density", xc: str = "pbe", target: str | None = None,
                  grids=None, overlap_cutoff: float | None = None) -> np.ndarray:
    """A density matrix for PySCF's ``mf.kernel(dm0=...)`` from ``model``'s prediction for ``atoms``.

    ``source="density"``: the Kohn-Sham matrix of the predicted density (:func:`fock_from_density` with the
    functional ``xc``); ``source="hamiltonian"``: the predicted Kohn-Sham matrix (on-site and pair blocks).
    ``mol`` must hold ``atoms`` in the model's AO basis (see :func:`mole`) and be closed-shell.
    ``target`` chooses the density target, or the pair-block target, where the model has several.
    ``overlap_cutoff`` (see :func:`density_matrix`): by default the one the matrix target was trained with
    (its ``overlap_cutoff``, with ``loss_metric: orthonormal``), else :data:`PREDICTED_OVERLAP_CUTOFF` for a
    predicted Kohn-Sham matrix; 0 for the exact Kohn-Sham matrix of a predicted density.
    """
    if source not in ("density", "hamiltonian"):
        raise ValueError(f"source must be 'density' or 'hamiltonian', got {source!r}")
    if mol.spin != 0:
        raise ValueError(f"initial_guess makes closed-shell density matrices; this molecule has spin {mol.spin}")
    predicted = prediction(model, atoms, mol, source, target)
    name, _ = _predicted_target(model, source, target)
    if source == "density":
        fock = fock_from_density(mol, aux_mole(mol, model.targets[name].basis), predicted, xc, grids)
    else:
        fock = predicted
    if overlap_cutoff is None:
        trained = getattr(model.targets[name], "overlap_cutoff", None) if source == "hamiltonian" else None
        overlap_cutoff = (0.0 if source == "density" else PREDICTED_OVERLAP_CUTOFF if trained is None
                          else float(trained))
    return density_matrix(fock, mol.intor_symmetric("int1e_ovlp"), mol.nelectron, overlap_cutoff)
