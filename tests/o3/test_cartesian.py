import math
import pickle
import time

import pytest
import torch

from clebsch.o3 import CartesianTensor, Irreps, ReducedTensorProducts, rand_matrix
from clebsch.o3 import _cartesian

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# each formula with its symmetric-subspace dimension and the signed index permutations that define it
ELASTIC = "ijkl=jikl=ijlk=klij"
FORMULAS = {
    "ij": (9, [(1, (0, 1))]),
    "ij=ji": (6, [(1, (0, 1)), (1, (1, 0))]),
    "ij=-ji": (3, [(1, (0, 1)), (-1, (1, 0))]),
    "ijk": (27, [(1, (0, 1, 2))]),
    "ijk=jik": (18, [(1, (0, 1, 2)), (1, (1, 0, 2))]),
    ELASTIC: (21, [(1, p) for p in [(0, 1, 2, 3), (1, 0, 2, 3), (0, 1, 3, 2), (1, 0, 3, 2),
                                    (2, 3, 0, 1), (3, 2, 0, 1), (2, 3, 1, 0), (3, 2, 1, 0)]]),
}


def symmetrize(t, formula):
    """Projection on the symmetric subspace, written out from the list of permutations."""
    perms = FORMULAS[formula][1]
    n = len(perms[0][1])
    k = t.ndim - n
    return sum(s * t.permute(*range(k), *(k + i for i in p)) for s, p in perms) / len(perms)


def rotate(t, R, n):
    """``R`` (``(batch, 3, 3)``) applied to each of the ``n`` Cartesian indices of ``t`` (``(batch, 3, ..., 3)``)."""
    R = R.reshape(R.shape[0], *(1,) * (n - 1), 3, 3)
    for axis in range(1, n + 1):
        t = torch.movedim((R @ torch.movedim(t, axis, -1)[..., None])[..., 0], -1, axis)
    return t


@pytest.mark.parametrize("formula", list(FORMULAS))
def test_matches_e3nn(formula):
    e3io = pytest.importorskip("e3nn.io")
    ours, theirs = CartesianTensor(formula), e3io.CartesianTensor(formula)
    assert str(ours) == str(theirs)
    Q = theirs.reduced_tensor_products().change_of_basis.to(F64)
    torch.testing.assert_close(ours.change_of_basis, Q, atol=1e-10, rtol=0)
    t = torch.randn(4, *(3,) * len(ours.indices), generator=gen(1), dtype=F64)
    x = ours.from_cartesian(t)
    torch.testing.assert_close(x, theirs.from_cartesian(t), atol=1e-10, rtol=0)
    torch.testing.assert_close(ours.to_cartesian(x), theirs.to_cartesian(x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("formula, irreps", [
    ("ij=ji", dict(i="1o + 2e")),
    ("ijk=-jik", dict(i="1o + 1e", k="0o + 2o")),
    ("ij", dict(i="2x0e + 1o", j="1e")),
])
def test_reduced_tensor_products_match_e3nn(formula, irreps):
    e3o3 = pytest.importorskip("e3nn.o3")
    ours, theirs = ReducedTensorProducts(formula, **irreps), e3o3.ReducedTensorProducts(formula, **irreps)
    assert str(ours.irreps_out) == str(theirs.irreps_out)
    assert [str(i) for i in ours.irreps_in] == [str(i) for i in theirs.irreps_in]
    torch.testing.assert_close(ours.change_of_basis, theirs.change_of_basis.to(F64), atol=1e-10, rtol=0)
    xs = [irr.randn(5, -1, generator=gen(2), dtype=F64) for irr in ours.irreps_in]
    torch.testing.assert_close(ours(*xs), theirs(*xs), atol=1e-10, rtol=0)


@pytest.mark.parametrize("formula", list(FORMULAS))
def test_round_trip_and_orthonormal(formula):
    ct = CartesianTensor(formula)
    n = len(ct.indices)
    assert ct.dim == FORMULAS[formula][0]
    Q = ct.change_of_basis.reshape(ct.dim, -1)
    torch.testing.assert_close(Q @ Q.T, torch.eye(ct.dim, dtype=F64), atol=1e-12, rtol=0)
    t = symmetrize(torch.randn(2, 5, *(3,) * n, generator=gen(3), dtype=F64), formula)
    x = ct.from_cartesian(t)
    assert x.shape == (2, 5, ct.dim)
    torch.testing.assert_close(ct.to_cartesian(x), t, atol=1e-12, rtol=0)
    assert ct.symmetry_error(t).max() < 1e-12


@pytest.mark.parametrize("formula", list(FORMULAS))
def test_projection_of_non_symmetric(formula):
    ct = CartesianTensor(formula)
    t = torch.randn(3, *(3,) * len(ct.indices), generator=gen(4), dtype=F64)
    x = ct.from_cartesian(t)
    torch.testing.assert_close(x, ct.from_cartesian(symmetrize(t, formula)), atol=1e-12, rtol=0)
    torch.testing.assert_close(ct.to_cartesian(x), symmetrize(t, formula), atol=1e-12, rtol=0)


@pytest.mark.parametrize("formula", list(FORMULAS))
@pytest.mark.parametrize("reflect", [False, True])
def test_equivariance(formula, reflect):
    ct = CartesianTensor(formula)
    n = len(ct.indices)
    R = rand_matrix(6, generator=gen(5), dtype=F64)
    if reflect:
        R = -R
    D = ct.irreps.D_from_matrix(R)
    t = symmetrize(torch.randn(6, *(3,) * n, generator=gen(6), dtype=F64), formula)
    x = ct.from_cartesian(t)
    torch.testing.assert_close(ct.from_cartesian(rotate(t, R, n)), (D @ x[..., None])[..., 0], atol=1e-10, rtol=0)
    torch.testing.assert_close(ct.to_cartesian((D @ x[..., None])[..., 0]), rotate(t, R, n), atol=1e-10, rtol=0)


def test_known_components():
    # the 0e part of a symmetric tensor is its trace, the 1e part of an antisymmetric one a cross product
    ct = CartesianTensor("ij=ji")
    t = symmetrize(torch.randn(4, 3, 3, generator=gen(7), dtype=F64), "ij=ji")
    trace = t.diagonal(dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(ct.from_cartesian(t)[:, 0], trace / math.sqrt(3))
    iso = torch.zeros(4, 6, dtype=F64)
    iso[:, 0] = ct.from_cartesian(t)[:, 0]
    torch.testing.assert_close(ct.to_cartesian(iso), trace[:, None, None] / 3 * torch.eye(3, dtype=F64))
    u, v = torch.randn(2, 4, 3, generator=gen(8), dtype=F64)
    w = CartesianTensor("ij=-ji").from_vectors(u, v)
    cross = torch.linalg.cross(u, v)
    torch.testing.assert_close(w.abs(), cross.abs() / math.sqrt(2))


@pytest.mark.parametrize("formula", list(FORMULAS))
def test_from_vectors_is_from_cartesian_of_the_outer_product(formula):
    ct = CartesianTensor(formula)
    n = len(ct.indices)
    vs = torch.randn(n, 5, 3, generator=gen(9), dtype=F64)
    outer = vs[0]
    for v in vs[1:]:
        outer = outer[..., None] * v.reshape(5, *(1,) * (outer.ndim - 1), 3)
    torch.testing.assert_close(ct.from_vectors(*vs), ct.from_cartesian(outer), atol=1e-12, rtol=0)


def test_symmetry_error():
    ct = CartesianTensor("ij=ji")
    t = torch.randn(2, 4, 3, 3, generator=gen(10), dtype=F64)
    err = ct.symmetry_error(t)
    assert err.shape == (2, 4)
    torch.testing.assert_close(err, (t - t.mT).abs().amax(dim=(-2, -1)))
    assert ct.symmetry_error(symmetrize(t, "ij=ji")).max() == 0
    assert ct.symmetry_error(t[0, 0]).shape == ()
    # elasticity: breaking only the major symmetry C_ijkl = C_klij is seen
    c = symmetrize(torch.randn(3, 3, 3, 3, generator=gen(11), dtype=F64), ELASTIC)
    c[0, 0, 1, 1] += 0.25
    assert abs(float(CartesianTensor(ELASTIC).symmetry_error(c)) - 0.25) < 1e-12
    # no symmetry declared: nothing to break
    assert CartesianTensor("ij").symmetry_error(t).max() == 0


def test_check_symmetry():
    ct = CartesianTensor("ij=ji")
    t = symmetrize(torch.randn(5, 3, 3, generator=gen(12), dtype=F64), "ij=ji")
    ct.check_symmetry(t)
    ct.check_symmetry(t[0])
    bad = t.clone()
    bad[3, 1, 2] += 1e-3
    with pytest.raises(ValueError, match=r"1 of 5 tensors break the symmetry 'ij=ji'.*index \(3,\), by 0.001"):
        ct.check_symmetry(bad)
    ct.check_symmetry(bad, atol=1e-2)
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"2 of 5 .* index \(1,\)"):
        ct.check_symmetry(bad)


def test_dtypes_batches_and_devices():
    ct = CartesianTensor(ELASTIC)
    t = torch.randn(2, 3, 3, 3, 3, 3, generator=gen(13), dtype=F64)
    x = ct.from_cartesian(t)
    x32 = ct.from_cartesian(t.float())
    assert x32.dtype == torch.float32 and x32.shape == (2, 3, 21)
    torch.testing.assert_close(x32.double(), x, atol=1e-5, rtol=1e-5)
    assert ct.to_cartesian(x32).dtype == torch.float32
    assert ct.from_cartesian(torch.ones(3, 3, 3, 3, dtype=torch.int64)).is_floating_point()
    if torch.cuda.is_available():
        y = ct.from_cartesian(t.cuda())
        assert y.device.type == "cuda"
        torch.testing.assert_close(y.cpu(), x)
        torch.testing.assert_close(ct.to_cartesian(y).cpu(), ct.to_cartesian(x))


def test_gradients_flow():
    ct = CartesianTensor("ij=ji")
    t = torch.randn(3, 3, dtype=F64, requires_grad=True)
    ct.from_cartesian(t).pow(2).sum().backward()
    # |Q t|^2 = |sym(t)|^2 has gradient 2 sym(t)
    torch.testing.assert_close(t.grad, 2 * symmetrize(t.detach(), "ij=ji"))


def test_cached_and_fast():
    _cartesian._instance.cache_clear()
    _cartesian._reduce.cache_clear()
    start = time.perf_counter()
    a = ReducedTensorProducts(ELASTIC)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"building {ELASTIC!r} took {elapsed:.2f} s"
    assert ReducedTensorProducts(ELASTIC, i="1o") is a
    assert ReducedTensorProducts("ijkl = jikl = ijlk = klij") is a
    assert CartesianTensor(ELASTIC).reduced_tensor_products() is a
    # the returned change of basis is a copy: the cache cannot be altered through it
    a.change_of_basis.zero_()
    assert a.change_of_basis.abs().max() > 0
    with pytest.raises(AttributeError):
        a.formula = "ij"


def test_irreps_like_and_pickle():
    ct = CartesianTensor("ij=ji")
    assert isinstance(ct, Irreps) and ct == Irreps("0e + 2e") and type(ct.irreps) is Irreps
    assert (ct.formula, ct.indices, ct.dim) == ("ij=ji", "ij", 6)
    again = pickle.loads(pickle.dumps(ct))
    assert isinstance(again, CartesianTensor) and again.formula == "ij=ji" and again == ct
    rtp = ReducedTensorProducts("ijk=jik", k="1e")
    assert pickle.loads(pickle.dumps(rtp)) is rtp
    assert str(rtp.irreps_in[2]) == "1x1e" and str(rtp.irreps_in[1]) == "1x1o"
    assert "ijk=jik" in repr(rtp)


def test_inconsistent_symmetry_is_zero():
    ct = CartesianTensor("ij=-ij")  # T = -T
    assert ct.dim == 0
    assert ct.from_cartesian(torch.randn(4, 3, 3)).shape == (4, 0)
    assert ct.to_cartesian(torch.zeros(4, 0)).abs().max() == 0


@pytest.mark.parametrize("formula, irreps, match", [
    ("", {}, "first term"),
    ("iij", {}, "first term"),
    ("ij=jk", {}, "not a .*permutation"),
    ("ij=ji", dict(i="1o", j="1e"), "different irreps"),
    ("ij", dict(k="1o"), "no index 'k'"),
])
def test_bad_formulas(formula, irreps, match):
    with pytest.raises(ValueError, match=match):
        ReducedTensorProducts(formula, **irreps)


def test_bad_shapes():
    ct = CartesianTensor("ij=ji")
    with pytest.raises(ValueError, match=r"expected a tensor of shape \(\.\.\., 3, 3\), got \(3, 2\)"):
        ct.from_cartesian(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"expected irreps 1x0e\+1x2e of shape \(\.\.\., 6\)"):
        ct.to_cartesian(torch.zeros(5))
    with pytest.raises(ValueError, match="takes 2 inputs"):
        ct.from_vectors(torch.zeros(3))
