"""PySCF initial guesses from predicted densities and Kohn-Sham matrices (clebsch.basis.pyscf), against PySCF
itself: the Kohn-Sham matrix of a fitted density equals PySCF's own to the fitting error and starts its SCF
closer to convergence than PySCF's default guess; the coefficient order is PySCF's; the guesses of a model are
valid density matrices whose energy does not depend on the molecule's orientation."""

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

pytest.importorskip("pyscf")
from pyscf import dft, scf  # noqa: E402
from pyscf.df import incore  # noqa: E402

from clebsch import o3  # noqa: E402
from clebsch.basis.pyscf import (PREDICTED_OVERLAP_CUTOFF, aux_mole, density_matrix,  # noqa: E402
                                 fock_from_density, initial_guess, mole, native_coefficients,
                                 prediction)
from clebsch.data.targets import graph_from_atoms  # noqa: E402
from clebsch.testing import float64_model  # noqa: E402

BASIS_FILE = Path(__file__).parents[2] / "examples" / "water_clusters.basis.json"
AO = {"file": str(BASIS_FILE), "key": "ao"}
AUX = {"file": str(BASIS_FILE), "key": "aux"}
WATER_DIMER = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0],
                        [2.9, 0.1, 0.2], [3.3, 0.9, 0.5], [3.3, -0.6, 0.7]])


def _fit(mol, auxmol, dm):
    """Coulomb-metric density fit of ``dm`` in ``auxmol``: c = J^-1 (P|mn) D_mn."""
    j3 = incore.aux_e2(mol, auxmol, "int3c2e", aosym="s1").reshape(mol.nao, mol.nao, auxmol.nao)
    return np.linalg.solve(auxmol.intor("int2c2e"), np.einsum("mnP,mn->P", j3, dm))


@pytest.mark.parametrize("xc", ["pbe", "lda,vwn"])
def test_fock_of_the_fitted_scf_density_is_pyscfs(ao, aux, xc):
    mol = mole(molecule("H2O"), ao)
    mf = dft.RKS(mol, xc=xc)
    mf.conv_tol = 1e-10
    energy = mf.kernel()
    auxmol = aux_mole(mol, aux)
    fock = fock_from_density(mol, auxmol, _fit(mol, auxmol, mf.make_rdm1()), xc, mf.grids)
    reference = mf.get_fock()
    assert np.abs(fock - fock.T).max() < 1e-12
    # density fitting (J exact for the fitted density, V_xc of the fitted density): errors ~5e-4 Ha;
    # a wrong factor on the gradient term or on J is ~1e-2 or more
    assert np.abs(fock - reference).max() < 2e-3
    overlap = mol.intor_symmetric("int1e_ovlp")
    occupied = mol.nelectron // 2
    e = np.linalg.eigvalsh(np.linalg.solve(np.linalg.cholesky(overlap), np.linalg.solve(
        np.linalg.cholesky(overlap), fock).T))
    np.testing.assert_allclose(e[:occupied], mf.mo_energy[:occupied], atol=2e-3)
    minao_cycles = mf.cycles
    again = dft.RKS(mol, xc=xc)
    again.conv_tol = 1e-10
    assert abs(again.kernel(dm0=density_matrix(fock, overlap, mol.nelectron)) - energy) < 1e-8
    assert again.cycles <= minao_cycles - 2, (again.cycles, minao_cycles)


def test_atom_coulomb_is_pyscfs_one_centre_int2c2e(ao, aux):
    """The analytic one-atom Coulomb matrix (the `coulomb` loss metric) equals PySCF's 2-centre Coulomb
    integrals of the auxiliary functions on one atom, after the native -> clebsch reordering."""
    water = molecule("H2O")
    auxmol = aux_mole(mole(water, ao), aux)
    full = auxmol.intor("int2c2e")
    start = 0
    for z in water.numbers.tolist():
        n = aux.size(z)
        m = aux.native_to_clebsch(z)
        np.testing.assert_allclose(aux.atom_coulomb(z), m.T @ full[start:start + n, start:start + n] @ m,
                                   rtol=1e-10, atol=1e-10)
        start += n
    assert start == full.shape[0]
    assert np.abs(aux.atom_coulomb(8) - np.diag(np.diag(aux.atom_coulomb(8)))).max() > 0.1


def test_native_coefficients_are_pyscfs_order(ao, aux):
    """Union-layout coefficients turned into PySCF's vector give, through PySCF's auxiliary functions, the
    density clebsch's own basis functions give."""
    atoms = Atoms("OHHOHH", positions=WATER_DIMER)
    mol = mole(atoms, ao)
    auxmol = aux_mole(mol, aux)
    rng = np.random.default_rng(0)
    union = torch.as_tensor(rng.normal(size=(6, aux.union_irreps.dim)))
    for i, z in enumerate(atoms.numbers):  # zero the union slots an element lacks
        mask = torch.zeros(aux.union_irreps.dim, dtype=torch.bool)
        mask[torch.as_tensor(aux.slots(int(z)))] = True
        union[i, ~mask] = 0.0
    c = native_coefficients(aux, atoms.numbers, union)
    assert c.shape == (auxmol.nao,)
    points = rng.normal(scale=1.5, size=(50, 3)) + WATER_DIMER.mean(0)
    pyscf_rho = auxmol.eval_gto("GTOval_sph", points / 0.52917721092) @ c
    np.testing.assert_allclose(aux.density(atoms.numbers, atoms.positions, union, points).numpy(), pyscf_rho,
                               rtol=1e-6, atol=1e-10)


@pytest.fixture(scope="module")
def model():
    targets = {"density": {"level": "atom", "basis": AUX},
               "fock_onsite": {"level": "atom", "basis": AO, "matrix": True, "unit": "Ha"},
               "fock": {"level": "edge", "basis": AO, "matrix": True, "unit": "Ha"}}
    config = {"name": "nequip", "species": ["H", "O"], "cutoff": 4.0, "num_layers": 2, "channels": 4, "lmax": 2,
              "outputs": ["energy", *targets], "targets": targets}
    return float64_model(config, seed=1, randomize_zeros=True)


@pytest.mark.parametrize("source", ["density", "hamiltonian"])
def test_initial_guess_is_a_density_matrix_with_invariant_energy(model, ao, source):
    """Under rotations and a reflection the guess turns with the molecule: its Hartree-Fock energy (no grid)
    is the same. The untrained model's density is far from physical (negative in places), where the
    exchange-correlation potential depends on how PySCF's grid is oriented; the density route is checked here
    without it (a grid of zero weights: F = T + V_nuc + J), and with it against PySCF above."""
    torch.manual_seed(5)
    energies = []
    for sign in (1.0, 1.0, -1.0):
        r = np.eye(3) if not energies else (o3.rand_matrix(dtype=torch.float64) * sign).numpy()
        atoms = Atoms("OHHOHH", positions=WATER_DIMER @ r.T + np.array([0.3, -1.0, 2.0]))
        mol = mole(atoms, ao)
        grids = None
        if source == "density":
            grids = dft.gen_grid.Grids(mol)
            grids.level = 0
            grids.build()
            grids.weights = np.zeros_like(grids.weights)
        dm = initial_guess(model, atoms, mol, source=source, grids=grids)
        s = mol.intor_symmetric("int1e_ovlp")
        assert np.abs(dm - dm.T).max() < 1e-10
        assert abs(np.trace(dm @ s) - mol.nelectron) < 1e-8
        np.testing.assert_allclose(dm @ s @ dm, 2.0 * dm, atol=1e-8)  # idempotent: occupations 2 and 0
        energies.append(scf.RHF(mol).energy_tot(dm=dm))
    np.testing.assert_allclose(energies[1:], energies[0], atol=1e-8, rtol=0)


def test_a_matrix_trained_with_an_overlap_cutoff_guesses_with_it(model, ao, monkeypatch):
    from clebsch.targets import replace

    atoms = Atoms("OHHOHH", positions=WATER_DIMER)
    mol = mole(atoms, ao)
    plain = initial_guess(model, atoms, mol, source="hamiltonian")
    dropped = initial_guess(model, atoms, mol, source="hamiltonian", overlap_cutoff=0.3)
    assert np.abs(plain - dropped).max() > 1e-3
    monkeypatch.setitem(model.targets, "fock", replace(model.targets["fock"], loss_metric="orthonormal",
                                                       overlap_cutoff=0.3))
    np.testing.assert_allclose(initial_guess(model, atoms, mol, source="hamiltonian"), dropped, atol=1e-12)
    np.testing.assert_allclose(initial_guess(model, atoms, mol, source="hamiltonian", overlap_cutoff=0.02), plain,
                               atol=1e-12)


def test_prediction_is_what_the_guesses_are_made_of(model, ao, aux):
    """``prediction`` gives the model's density coefficients in the auxiliary molecule's order and its
    Kohn-Sham matrix in PySCF's AO order: the guesses are the density matrices of exactly these."""
    atoms = Atoms("OHHOHH", positions=WATER_DIMER)
    mol = mole(atoms, ao)
    s = mol.intor_symmetric("int1e_ovlp")
    fock = prediction(model, atoms, mol, "hamiltonian")
    assert fock.shape == (mol.nao, mol.nao) and np.abs(fock - fock.T).max() < 1e-12
    np.testing.assert_allclose(initial_guess(model, atoms, mol, source="hamiltonian", overlap_cutoff=0.0),
                               density_matrix(fock, s, mol.nelectron), atol=1e-12)
    auxmol = aux_mole(mol, aux)
    c = prediction(model, atoms, mol, "density")
    assert c.shape == (auxmol.nao,)
    out = model(graph_from_atoms(atoms, model.cutoff, keys={}, dtype=torch.float64))
    np.testing.assert_allclose(c, native_coefficients(model.targets["density"].basis, atoms.numbers,
                                                      out["density"].detach()), atol=1e-12)
    grids = dft.gen_grid.Grids(mol)
    grids.level = 0
    grids.build()
    np.testing.assert_allclose(initial_guess(model, atoms, mol, source="density", grids=grids),
                               density_matrix(fock_from_density(mol, auxmol, c, "pbe", grids), s, mol.nelectron),
                               atol=1e-10)


def test_errors_name_what_is_wrong(model, ao, aux):
    atoms = Atoms("OHHOHH", positions=WATER_DIMER)
    mol = mole(atoms, ao)
    auxmol = aux_mole(mol, aux)
    with pytest.raises(ValueError, match="'b3lyp'.*exact exchange"):
        fock_from_density(mol, auxmol, np.zeros(auxmol.nao), "b3lyp")
    with pytest.raises(ValueError, match=f"expected {auxmol.nao} density coefficients"):
        fock_from_density(mol, auxmol, np.zeros(auxmol.nao + 1), "pbe")
    with pytest.raises(ValueError, match=r"no functions for element\(s\) \['N'\] \(atom 1 is N\)"):
        mole(Atoms("ONH", positions=WATER_DIMER[:3]), ao)
    with pytest.raises(ValueError, match="source must be"):
        initial_guess(model, atoms, mol, source="minao")
    with pytest.raises(ValueError, match="mol and atoms differ"):
        initial_guess(model, Atoms("OHHOHH", positions=WATER_DIMER + 0.1), mol)
    with pytest.raises(ValueError, match="spin 2"):
        initial_guess(model, atoms, mole(atoms, ao, spin=2))
    with pytest.raises(ValueError, match="no density target.*named 'rho'"):
        initial_guess(model, atoms, mol, target="rho")
    with pytest.raises(ValueError, match="no Kohn-Sham matrix.*named 'density'"):
        prediction(model, atoms, mol, "hamiltonian", target="density")
    with pytest.raises(ValueError, match="even number of electrons"):
        density_matrix(np.eye(3), np.eye(3), 3)
    with pytest.raises(ValueError, match="overlap_cutoff 2 keeps 0 of 3 .* fewer than the 1 occupied"):
        density_matrix(np.eye(3), np.eye(3), 2, overlap_cutoff=2.0)
    with pytest.raises(ValueError, match="overlap_cutoff must be a number >= 0, got nan"):
        density_matrix(np.eye(3), np.eye(3), 2, overlap_cutoff=float("nan"))
    with pytest.raises(ValueError, match=r"expected coefficients \[6 atoms"):
        native_coefficients(aux, atoms.numbers, torch.zeros(5, aux.union_irreps.dim))


def test_a_noisy_kohn_sham_matrix_needs_the_overlap_cutoff(ao):
    """Matrix errors of a model's size (1.5e-3 Hartree) along ethanol's near-dependent combinations of
    def2-SVP functions (overlap eigenvalue ~3e-3) wreck the density matrix; dropping combinations below
    PREDICTED_OVERLAP_CUTOFF keeps it within a few tenths of the exact one."""
    from clebsch.data.io import read_structures

    atoms = read_structures(Path(__file__).parents[2] / "examples" / "water_clusters.xyz.xz", "212:213")[0]
    assert atoms.info["config_type"] == "ethanol"
    mol = mole(atoms, ao)
    overlap = mol.intor_symmetric("int1e_ovlp")
    assert np.linalg.eigvalsh(overlap)[0] < PREDICTED_OVERLAP_CUTOFF / 2
    fock = np.asarray(atoms.info["fock"]).reshape(mol.nao, mol.nao)
    exact = density_matrix(fock, overlap, mol.nelectron)
    noise = np.random.default_rng(0).normal(scale=1.5e-3, size=fock.shape)
    noisy = fock + 0.5 * (noise + noise.T)
    worst = np.abs(density_matrix(noisy, overlap, mol.nelectron) - exact).max()
    cut = np.abs(density_matrix(noisy, overlap, mol.nelectron, PREDICTED_OVERLAP_CUTOFF) - exact).max()
    assert worst > 5.0 and cut < 0.5, (worst, cut)
    # the cutoff's own cost on the exact matrix is of that size too: a guess, not a converged result
    assert np.abs(density_matrix(fock, overlap, mol.nelectron, PREDICTED_OVERLAP_CUTOFF) - exact).max() < 0.5
