"""The basis conventions proven on PySCF's own water calculation (tests/fixtures/pyscf_water_reference.npz:
PBE/def2-SVP, density fitted in def2-universal-jkfit truncated to l <= 3; see the .md beside it)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from clebsch.basis import BOHR, assemble_matrix, density_report, molecular_grid, orbital_energies, overlap_matrix

ROOT = Path(__file__).parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "pyscf_water_reference.npz"


@pytest.fixture(scope="module")
def ref():
    return {k: v for k, v in np.load(FIXTURE).items()}


def test_ao_and_aux_values_match_pyscf(ref, ao, aux):
    z, pos, pts = ref["numbers"], ref["positions"], ref["points"]
    np.testing.assert_allclose(ao.values(z, pos, pts, order="native").numpy(), ref["ao_values"], atol=1e-9, rtol=1e-8)
    np.testing.assert_allclose(aux.values(z, pos, pts, order="native").numpy(), ref["aux_values"], atol=1e-9,
                               rtol=1e-8)


def test_density_from_coefficients_matches_pyscf(ref, aux):
    """Rebuilt from the bundled coefficients, the density equals PySCF's fitted density, and PySCF's SCF
    density to the fitting error; it holds the molecule's electrons."""
    z, pos = ref["numbers"], ref["positions"]
    native = np.zeros((len(z), aux.max_size))
    offsets = aux.ao_offsets(z)
    for i in range(len(z)):
        native[i, : offsets[i + 1] - offsets[i]] = ref["density_coefficients"][offsets[i]:offsets[i + 1]]
    coefficients = aux.native_to_union(z, native)
    points = torch.as_tensor(ref["grid_points"])
    weights = torch.as_tensor(ref["grid_weights"])
    rho = aux.density(z, pos, coefficients, points).numpy() / BOHR ** 3  # the fixture is in electrons / Å^3
    np.testing.assert_allclose(rho, ref["rho_fit"], atol=1e-8, rtol=1e-7)
    eps = (weights.numpy() * np.abs(rho - ref["rho_scf"])).sum() / (weights.numpy() * ref["rho_scf"]).sum()
    assert eps < 0.02
    report = density_report(aux, z, pos, coefficients)
    assert report["electrons"] == pytest.approx(float(ref["n_electrons"]), abs=2e-3)


def test_overlap_and_orbital_energies(ref, ao):
    """The quadrature overlap equals PySCF's; PySCF's Fock matrix, converted to clebsch order and cut into
    blocks, gives back PySCF's orbital energies."""
    z, pos = ref["numbers"], ref["positions"]
    s = overlap_matrix(ao, z, pos)
    s_ref = ao.matrix_to_clebsch(z, ref["overlap"])
    assert float((s - s_ref).abs().max()) < 1e-6
    f = ao.matrix_to_clebsch(z, ref["fock"])
    np.testing.assert_allclose(orbital_energies(f, s_ref).numpy(), ref["orbital_energies"], atol=1e-9)
    np.testing.assert_allclose(orbital_energies(f, s).numpy(), ref["orbital_energies"], atol=1e-5)
    # blocks on every ordered pair reassemble the matrix
    n = len(z)
    u = ao.union_irreps.dim
    offsets = ao.ao_offsets(z)
    blocks = torch.zeros(n, n, u, u, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            si, sj = torch.as_tensor(ao.slots(z[i])), torch.as_tensor(ao.slots(z[j]))
            blocks[i, j][si[:, None], sj[None, :]] = f[offsets[i]:offsets[i + 1], offsets[j]:offsets[j + 1]]
    edge_index = torch.tensor([[j, i] for i in range(n) for j in range(n) if i != j]).T
    pairs = torch.stack([blocks[i, j] for j, i in edge_index.T.tolist()])
    onsite = torch.stack([blocks[i, i] for i in range(n)])
    torch.testing.assert_close(assemble_matrix(ao, z, onsite, pairs, edge_index), f)


def test_grid_counts_electrons(ref):
    points, weights = molecular_grid(ref["numbers"], ref["positions"])
    assert points.shape[0] == weights.shape[0] and bool((weights > 0).all())
