"""Basis conventions proven against PySCF's own values (tests/fixtures/pyscf_real_harmonics.npz).

The fixture holds PySCF's ``eval_gto("GTOval_sph")`` for one primitive shell of each ``l = 0..6``
(exponent 0.7) and for oxygen's def2-SVP shells, at the same points (Bohr).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from clebsch import o3
from clebsch.basis import BOHR, GaussianBasis, molecular_grid, pyscf_to_clebsch

FIXTURE = Path(__file__).parents[1] / "fixtures" / "pyscf_real_harmonics.npz"

DEF2_SVP_O = [
    [0, [2266.1767785, -0.0053431809926], [340.87010191, -0.03989003923], [77.363135167, -0.17853911985],
     [21.47964494, -0.46427684959], [6.6589433124, -0.44309745172]],
    [0, [0.80975975668, 1.0]], [0, [0.25530772234, 1.0]],
    [1, [17.721504317, 0.043394573193], [3.863550544, 0.23094120765], [1.0480920883, 0.51375311064]],
    [1, [0.27641544411, 1.0]], [2, [1.2, 1.0]],
]


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE))


@pytest.mark.parametrize("l", range(7))
def test_primitive_shells_match_pyscf(ref, l):
    basis = GaussianBasis({"H": [[l, [0.7, 1.0]]]})
    points = ref["points_bohr"] * BOHR
    ours = basis.values([1], [[0.0, 0.0, 0.0]], points, order="native").numpy()
    np.testing.assert_allclose(ours, ref[f"l{l}"], atol=1e-12, rtol=1e-10)


def test_contracted_def2svp_matches_pyscf(ref):
    basis = GaussianBasis({"O": DEF2_SVP_O}, name="def2-svp")
    ours = basis.values([8], [[0.0, 0.0, 0.0]], ref["points_bohr"] * BOHR, order="native").numpy()
    np.testing.assert_allclose(ours, ref["o_def2svp"], atol=1e-10, rtol=1e-9)
    assert str(basis.irreps("O")) == "3x0e+2x1o+1x2e"


def test_clebsch_order_transforms_with_wigner_d():
    """Functions in clebsch order at rotated (and reflected) points: values times D(R) of the atom's irreps."""
    torch.manual_seed(0)
    basis = GaussianBasis({"O": DEF2_SVP_O})
    irreps = basis.irreps("O")
    points = torch.randn(30, 3, dtype=torch.float64)
    for sign in (1.0, -1.0):
        r = o3.rand_matrix(dtype=torch.float64) * sign
        v = basis.values([8], [[0.0, 0.0, 0.0]], points)
        v_rot = basis.values([8], [[0.0, 0.0, 0.0]], points @ r.T)
        d = irreps.D_from_matrix(r)
        torch.testing.assert_close(v_rot, v @ d.T, atol=1e-10, rtol=1e-9)


def test_conversion_is_orthogonal_and_round_trips():
    basis = GaussianBasis({"O": DEF2_SVP_O, "H": [[0, [1.0, 1.0]], [0, [0.2, 1.0]], [1, [0.8, 1.0]]]})
    numbers = [8, 1, 1]
    rng = np.random.default_rng(0)
    native = np.zeros((3, basis.max_size))
    for i, z in enumerate(numbers):
        native[i, : basis.size(z)] = rng.normal(size=basis.size(z))
    union = basis.native_to_union(numbers, native)
    assert union.shape == (3, basis.union_irreps.dim)
    back = basis.union_to_native(numbers, union)
    np.testing.assert_allclose(back.numpy(), native, atol=1e-14)
    # the union entries an element lacks stay zero
    mask = basis.union_mask((8, 1))
    assert not bool(union[1][~mask[1]].any())
    for l in range(5):
        q = pyscf_to_clebsch(l)
        np.testing.assert_allclose(q @ q.T, np.eye(2 * l + 1), atol=1e-12)


def test_missing_element_and_wrong_width_are_named():
    basis = GaussianBasis({"H": [[0, [1.0, 1.0]]]}, name="tiny")
    with pytest.raises(ValueError, match=r"atom 1: basis 'tiny' has no functions for O"):
        basis.native_to_union([1, 8], np.zeros((2, 1)))
    with pytest.raises(ValueError, match="non-zero values beyond"):
        basis.native_to_union([1], np.ones((1, 3)))
    with pytest.raises(ValueError, match="exponents must be positive"):
        GaussianBasis({"H": [[0, [-1.0, 1.0]]]})


def test_grid_integrates_basis_overlap():
    """On the molecular grid, the overlap of normalised functions has a unit diagonal."""
    basis = GaussianBasis({"O": DEF2_SVP_O, "H": [[0, [3.4, 0.2], [0.6, 0.5], [0.16, 0.3]], [1, [0.8, 1.0]]]})
    numbers = [8, 1, 1]
    positions = [[0.0, 0.0, 0.0], [0.0, 0.76, 0.59], [0.0, -0.76, 0.59]]
    points, weights = molecular_grid(numbers, positions)
    chi = basis.values(numbers, positions, points)
    s = chi.T @ (weights[:, None] * chi)
    np.testing.assert_allclose(torch.diagonal(s).numpy(), 1.0, atol=2e-6)
    assert torch.allclose(s, s.T)


def test_atom_overlap_matches_quadrature_and_factors_embed_it():
    """The analytic one-atom overlap equals the grid integral of the atom's functions (clebsch order), and the
    union-layout factors reproduce c^T S c for a random density."""
    basis = GaussianBasis({"O": DEF2_SVP_O, "H": [[0, [3.4, 0.2], [0.6, 0.5], [0.16, 0.3]], [1, [0.8, 1.0]],
                                                  [1, [0.3, 1.0]], [2, [1.1, 1.0]]]})
    for z in (8, 1):
        points, weights = molecular_grid([z], [[0.0, 0.0, 0.0]], 80, 24)
        chi = basis.values([z], [[0.0, 0.0, 0.0]], points)
        numeric = (chi.T @ (weights[:, None] * chi)).numpy()
        analytic = basis.atom_overlap(z)
        np.testing.assert_allclose(analytic, numeric, atol=2e-6)
        assert np.abs(analytic - np.diag(np.diag(analytic))).max() > 0.1  # shells of one l do overlap
    factors = basis.overlap_factors((1, 8))
    rng = np.random.default_rng(0)
    for k, z in enumerate((1, 8)):
        c = rng.normal(size=basis.size(z))
        union = basis.native_to_union([z], (c @ basis.native_to_clebsch(z).T)[None]).squeeze(0)
        clebsch = c  # the native row above maps back to these clebsch-order coefficients
        assert torch.allclose((union @ factors[k]).square().sum(), torch.tensor(clebsch @ basis.atom_overlap(z) @ clebsch))


@pytest.mark.parametrize("name", ["overlap", "coulomb"])
def test_loss_metric_measures_the_density(name):
    """A density target with loss_metric: overlap (coulomb) has as its loss the atoms' dc^T S dc (dc^T J dc),
    not |dc|^2."""
    import types

    from clebsch.targets import TargetError, declare
    from clebsch.train.losses import WeightedLoss

    spec = {"level": "atom", "basis": {"elements": {"O": DEF2_SVP_O, "H": [[0, [3.4, 0.2], [0.6, 0.5]],
                                                                              [1, [0.8, 1.0]]]}}}
    plain = declare("rho", spec)
    metric = declare("rho", {**spec, "loss_metric": name})
    basis = metric.basis
    matrix = basis.atom_overlap if name == "overlap" else basis.atom_coulomb
    numbers = torch.tensor([8, 1, 1])
    rng = np.random.default_rng(1)
    ref = torch.stack([basis.native_to_union([int(z)], torch.as_tensor(
        rng.normal(size=(1, basis.max_size)) * (np.arange(basis.max_size) < basis.size(int(z)))))[0]
        for z in numbers])
    mask = torch.stack([basis.union_mask((1, 8))[0 if z == 1 else 1] for z in numbers])
    ref = torch.where(mask, ref, torch.full_like(ref, float("nan")))  # functions an element lacks are missing
    pred = torch.nan_to_num(ref) + torch.as_tensor(rng.normal(size=ref.shape)) * 0.1
    graph = types.SimpleNamespace(targets={"rho": ref}, numbers=numbers, n_atoms=torch.tensor([3]),
                                  positions=torch.zeros(3, 3), config_type=["Default"])
    delta = []
    for i, z in enumerate(numbers.tolist()):
        _, slots = basis._order(z)
        d = (pred[i] - torch.nan_to_num(ref[i]))[torch.as_tensor(slots)].numpy()
        delta.append(d @ matrix(z) @ d)
    loss, _ = WeightedLoss({"rho": 1.0}, targets={"rho": metric})({"rho": pred}, graph)
    assert np.isclose(float(loss) * ref.shape[0] * ref.shape[1], sum(delta))
    plain_loss, _ = WeightedLoss({"rho": 1.0}, targets={"rho": plain})({"rho": pred}, graph)
    assert not np.isclose(float(plain_loss), float(loss))
    with pytest.raises(TargetError, match="loss_metric"):
        declare("rho", {**spec, "loss_metric": "hartree"})
    with pytest.raises(TargetError, match="loss_metric"):
        declare("fock", {**spec, "matrix": True, "loss_metric": "overlap"})
