"""Exact Hessians, vibrational frequencies and phonons against finite differences (ASE, phonopy)."""

import sys

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.optimize import BFGS
from ase.vibrations import Vibrations

from clebsch.calculators import ClebschCalculator
from clebsch.calculators._vibrations import (
    external_modes,
    hessian,
    normal_modes,
    phonopy_finite_displacements,
    phonopy_force_constants,
    phonopy_from_atoms,
    vibrational_frequencies,
)
from clebsch.models import build_model
from clebsch.models.package import save_package
from clebsch.testing import float64_model

from .conftest import small_model


def molecular_model(seed=7):
    """A small NequIP with ZBL: bound, with a bent water and a linear CO2 as its minima for this seed."""
    return float64_model({"name": "nequip", "species": ["H", "C", "O"], "cutoff": 3.0, "num_layers": 1,
                          "channels": 8, "scale": 1.0, "atomic_energies": [-1.0, -2.0, -3.0],
                          "physics": {"zbl": {}}}, seed)


def relaxed(model, name):
    atoms = molecule(name)
    atoms.calc = ClebschCalculator(model, skin=0.0)
    assert BFGS(atoms, logfile=None).run(fmax=1e-6, steps=300)
    return atoms


def finite_difference_hessian(atoms, calc, h=1e-5):
    atoms = atoms.copy()
    atoms.calc = calc
    x0 = atoms.positions.copy()
    fd = np.empty((3 * len(atoms), 3 * len(atoms)))
    for k in range(3 * len(atoms)):
        rows = []
        for sign in (1, -1):
            x = x0.copy()
            x.reshape(-1)[k] += sign * h
            atoms.positions = x
            rows.append(atoms.get_forces().reshape(-1))
        fd[k] = -(rows[0] - rows[1]) / (2 * h)
    return fd


@pytest.mark.parametrize("structure", ["molecule", "crystal"])
def test_exact_hessian_equals_finite_differences_of_the_calculator_forces(structure, tmp_path):
    model = small_model("nequip", seed=1, lmax=1, num_layers=1)
    if structure == "molecule":
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=3)
    else:
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=4)
    calc = ClebschCalculator(model)
    exact = hessian(model, atoms)
    fd = finite_difference_hessian(atoms, calc)
    n = 3 * len(atoms)
    assert exact.shape == (n, n) and exact.dtype == np.float64
    scale = np.abs(fd).max()
    assert scale > 1e-3  # not trivially zero
    np.testing.assert_allclose(exact, fd, atol=1e-6 * scale, rtol=0)
    np.testing.assert_allclose(exact, exact.T, atol=1e-10 * scale, rtol=0)
    # moving every atom (and its images) together changes no force
    assert np.abs(exact.reshape(n, len(atoms), 3).sum(1)).max() <= 1e-9 * scale
    # the same from the calculator and from a packaged model file
    np.testing.assert_array_equal(hessian(calc, atoms), exact)
    path = save_package(model, tmp_path / "model.pt")
    np.testing.assert_allclose(hessian(path, atoms), exact, rtol=0, atol=1e-12 * scale)


def test_water_frequencies_equal_ase_vibrations(tmp_path):
    model = molecular_model()
    atoms = relaxed(model, "H2O")
    modes = vibrational_frequencies(model, atoms)
    assert modes.n_external == 6
    assert modes.frequencies_cm.shape == (3,) and modes.modes.shape == (3, 3, 3)
    # at the minimum the rigid motions are zero modes of the exact Hessian; the internal ones are not
    assert np.abs(modes.external_cm).max() < 1.0
    assert modes.frequencies_cm.min() > 30.0

    vib = Vibrations(atoms, name=str(tmp_path / "vib"), delta=1e-3, nfree=2)  # error ~ delta^2
    vib.run()
    reference = vib.get_vibrations()
    # finite differences of the forces, projected the same way
    from_fd = normal_modes(atoms, reference.get_hessian_2d())
    np.testing.assert_allclose(modes.frequencies_cm, from_fd.frequencies_cm, rtol=1e-3)
    # ASE's own, unprojected diagonalisation: six modes near zero, the three others ours
    ase_cm = vib.get_frequencies()
    order = np.argsort(np.abs(ase_cm))
    assert np.abs(ase_cm[order[:6]]).max() < 0.1 * modes.frequencies_cm.min()
    np.testing.assert_allclose(ase_cm[order[6:]].real, modes.frequencies_cm, rtol=1e-3)
    np.testing.assert_allclose(ase_cm[order[6:]].imag, 0.0)
    # meV and cm^-1 are one frequency
    np.testing.assert_allclose(modes.energies_meV, 1e3 * reference.get_energies()[order[6:]].real, rtol=1e-3)
    # and ASE's container over the exact Hessian gives ASE's numbers
    exact_ase = np.sort(np.abs(modes.to_ase().get_frequencies()))
    np.testing.assert_allclose(exact_ase[6:], modes.frequencies_cm, rtol=1e-10)
    # mass-weighted modes are orthonormal
    weighted = (modes.modes * np.sqrt(atoms.get_masses())[None, :, None]).reshape(3, -1)
    np.testing.assert_allclose(weighted @ weighted.T, np.eye(3), atol=1e-10)
    assert "rigid motions projected out" in modes.summary()


def test_linear_molecule_has_five_rigid_motions():
    model = molecular_model()
    atoms = relaxed(model, "CO2")
    assert np.linalg.matrix_rank(atoms.positions - atoms.positions[0], tol=1e-6) == 1  # stayed linear
    modes = vibrational_frequencies(model, atoms)
    assert modes.n_external == 5 and len(modes.frequencies_cm) == 4
    assert np.abs(modes.external_cm).max() < 1.0
    bend = modes.frequencies_cm[:2]
    assert bend.min() > 10.0 and bend[1] - bend[0] < 1e-6 * bend[0]  # the bend is twofold
    unprojected = normal_modes(atoms, modes.hessian, project=False)
    assert len(unprojected.frequencies_cm) == 9 and unprojected.n_external == 0
    np.testing.assert_allclose(np.sort(np.abs(unprojected.frequencies_cm))[5:], modes.frequencies_cm, rtol=1e-6)


def test_rigid_motions_of_molecules_atoms_and_crystals():
    assert external_modes(molecule("CH4")).shape == (6, 15)
    assert external_modes(molecule("H2")).shape == (5, 6)
    assert external_modes(molecule("H")).shape == (3, 3)
    assert external_modes(bulk("Cu", "fcc", a=3.6, cubic=True)).shape == (3, 12)
    e = external_modes(molecule("CH3CH2OH"))
    np.testing.assert_allclose(e @ e.T, np.eye(6), atol=1e-12)


@pytest.fixture(scope="module")
def phonopy():
    return pytest.importorskip("phonopy", reason="phonopy is not installed (pip install 'clebsch[phonons]')")


def test_phonopy_force_constants_equal_finite_displacements(phonopy):
    model = small_model("nequip", seed=2, species=["Na", "Cl"], atomic_energies=[-1.0, -2.0], num_layers=1,
                        lmax=1, cutoff=4.0)
    unitcell = bulk("NaCl", "rocksalt", a=5.0)
    supercell = [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    reference = phonopy_from_atoms(unitcell, supercell)
    fd = phonopy_finite_displacements(model, reference, distance=1e-4)  # error ~ distance^2
    assert fd.shape == (16, 16, 3, 3)
    scale = np.abs(fd).max()
    assert scale > 1e-2
    full = phonopy_from_atoms(unitcell, supercell)
    np.testing.assert_allclose(phonopy_force_constants(model, full, compact=False), fd, atol=1e-6 * scale, rtol=0)
    # compact: the rows of the primitive cell's two atoms only
    exact = phonopy_from_atoms(unitcell, supercell)
    fc = phonopy_force_constants(model, exact)
    p2s = exact.primitive.p2s_map
    assert fc.shape == (2, 16, 3, 3)
    np.testing.assert_array_equal(exact.force_constants, fc)
    np.testing.assert_allclose(fc, full.force_constants[p2s], atol=1e-12 * scale, rtol=0)
    # at Gamma: three acoustic modes at zero (the exact Hessian keeps the sum rule), three optical ones not
    qpoints = [[0.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.5, 0.5, 0.5], [0.25, 0.1, 0.0]]
    for ph in (exact, full, reference):
        ph.run_qpoints(qpoints)
    frequencies = exact.qpoints.frequencies  # THz
    gamma = np.sort(np.abs(frequencies[0]))
    assert gamma.shape == (6,)
    assert gamma[:3].max() < 1e-5 and gamma[3:].min() > 0.1
    np.testing.assert_allclose(frequencies, reference.qpoints.frequencies, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(frequencies, full.qpoints.frequencies, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"periodic in all three directions, but pbc is \[False, False, False\]"):
        phonopy_from_atoms(molecule("H2O"), [2, 2, 2])


def test_rows_of_some_atoms_are_rows_of_the_whole_hessian():
    model = small_model("nequip", seed=3, lmax=1, num_layers=1)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=5)
    whole = hessian(model, atoms)
    rows = hessian(model, atoms, indices=[3, 1])
    np.testing.assert_allclose(rows, whole[[9, 10, 11, 3, 4, 5]], rtol=0, atol=1e-12 * np.abs(whole).max())
    with pytest.raises(ValueError, match="indices: atom 4 is out of range for a structure of 4 atoms"):
        hessian(model, atoms, indices=[0, 4])


def test_mistakes_are_named(tmp_path, monkeypatch):
    gcn = build_model({"name": "gcn", "species": ["H", "O"], "cutoff": 3.0})
    with pytest.raises(ValueError, match="model 'gcn' is topological .* no Hessian, vibrations or phonons"):
        hessian(gcn, molecule("H2O"))
    model = small_model("schnet", num_layers=1)
    with pytest.raises(ValueError, match=r"atom 1 is N \(Z=7\), an element this model was not trained on"):
        hessian(model, molecule("HCN"))
    with pytest.raises(ValueError, match=r"exported model .* pass the packaged model"):
        hessian(str(tmp_path / "model.pt2"), molecule("H2O"))
    with pytest.raises(TypeError, match="expected a clebsch Potential, the path of a packaged model or a ClebschCalc"):
        hessian(object(), molecule("H2O"))
    with pytest.raises(ValueError, match="dtype must be one of"):
        hessian(model, molecule("H2O"), dtype="float16")
    monkeypatch.setitem(sys.modules, "phonopy", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"phonons need phonopy: pip install 'clebsch\[phonons\]'"):
        phonopy_from_atoms(bulk("Cu"), [2, 2, 2])


def test_float32_models_are_evaluated_on_a_float64_copy():
    model = small_model("schnet", num_layers=1)
    single = small_model("schnet", num_layers=1).float()
    atoms = molecule("H2O")
    with pytest.warns(UserWarning, match="float32; its Hessian is taken on a float64 copy"):
        got = hessian(single, atoms)
    assert next(single.parameters()).dtype == torch.float32  # the caller's model is left as it was
    np.testing.assert_allclose(got, hessian(model, atoms), rtol=1e-5, atol=1e-5 * np.abs(got).max())
    with pytest.warns(UserWarning, match="Hessians want dtype='float64'"):
        hessian(model, atoms, dtype="float32")
