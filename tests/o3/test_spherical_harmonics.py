import math

import pytest
import torch

from clebsch.o3 import Irreps, rand_matrix, spherical_harmonics, wigner_D, matrix_to_angles

F64 = torch.float64
NORMS = ["component", "norm", "integral"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def unit(n, seed=0):
    x = torch.randn(n, 3, generator=gen(seed), dtype=F64)
    return x / x.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("normalization", NORMS)
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_e3nn(normalization, normalize):
    e3o3 = pytest.importorskip("e3nn.o3")
    x = torch.randn(200, 3, generator=gen(1), dtype=F64)
    x = x / x.norm(dim=-1, keepdim=True) * torch.rand(200, 1, generator=gen(2), dtype=F64).add(0.5)  # |x| in [0.5, 1.5]
    ls = list(range(12))
    ours = spherical_harmonics(ls, x, normalize, normalization)
    theirs = e3o3.spherical_harmonics(ls, x, normalize, normalization=normalization)
    if not normalize:  # compare |x|^-l Y^l(x): the polynomials grow like |x|^l
        degree = torch.tensor([l for l in ls for _ in range(2 * l + 1)], dtype=F64)
        scale = x.norm(dim=-1, keepdim=True) ** degree
        ours, theirs = ours / scale, theirs / scale
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)


def test_subsets_and_irreps_argument():
    x = unit(10)
    full = spherical_harmonics(3, x, True)
    assert full.shape == (10, 7)
    allsh = spherical_harmonics([0, 1, 2, 3], x, True)
    torch.testing.assert_close(allsh[:, 9:], full)
    torch.testing.assert_close(spherical_harmonics("0e + 1o + 2e + 3o", x, True), allsh)
    torch.testing.assert_close(spherical_harmonics(Irreps.spherical_harmonics(3), x, True), allsh)
    torch.testing.assert_close(spherical_harmonics([2, 1, 2], x, True),
                               torch.cat([allsh[:, 4:9], allsh[:, 1:4], allsh[:, 4:9]], dim=1))
    torch.testing.assert_close(spherical_harmonics(1, x, True), math.sqrt(3) * x)  # (x, y, z)
    # batch dimensions are kept
    assert spherical_harmonics(2, torch.randn(4, 5, 3, generator=gen(3)), True).shape == (4, 5, 5)


@pytest.mark.parametrize("l", [1, 2, 5, 11, 15])
def test_equivariance_with_reflections(l):
    x = torch.randn(30, 3, generator=gen(4), dtype=F64)
    R = rand_matrix(30, generator=gen(5), dtype=F64)
    R[::2] = -R[::2]  # improper half
    irreps = Irreps.spherical_harmonics(l)
    D = irreps.D_from_matrix(R)
    lhs = spherical_harmonics(irreps, (R @ x[:, :, None])[..., 0], normalize=True)
    rhs = (D @ spherical_harmonics(irreps, x, normalize=True)[:, :, None])[..., 0]
    torch.testing.assert_close(lhs, rhs, atol=1e-9, rtol=0)


@pytest.mark.parametrize("normalization", NORMS)
def test_second_moments(normalization):
    x = unit(200_000, seed=6)
    lmax = 4
    Y = spherical_harmonics(list(range(lmax + 1)), x, True, normalization)
    i = 0
    for l in range(lmax + 1):
        block = Y[:, i:i + 2 * l + 1]
        i += 2 * l + 1
        second = block.T @ block / len(x)  # (2l+1, 2l+1): should be c * identity
        c = {"component": 1.0, "norm": 1.0 / (2 * l + 1), "integral": 1.0 / (4 * math.pi)}[normalization]
        torch.testing.assert_close(second, c * torch.eye(2 * l + 1, dtype=F64), atol=0.02 * c, rtol=0)
    # exact per-point norms
    if normalization == "component":
        torch.testing.assert_close(Y[:, 9:16].pow(2).sum(-1), torch.full((len(x),), 7.0, dtype=F64))


def test_high_l_orthogonality_and_norm():
    x = unit(2000, seed=7)
    Y = spherical_harmonics(20, x, True)
    torch.testing.assert_close(Y.pow(2).sum(-1), torch.full((2000,), 41.0, dtype=F64), atol=1e-8, rtol=0)


def test_homogeneous_without_normalize():
    x = torch.randn(20, 3, generator=gen(8), dtype=F64)
    s = 1.7
    torch.testing.assert_close(spherical_harmonics(4, s * x, False), s**4 * spherical_harmonics(4, x, False))
    torch.testing.assert_close(spherical_harmonics(4, x, False),
                               x.norm(dim=-1, keepdim=True) ** 4 * spherical_harmonics(4, x, True))


@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck(normalize):
    x = torch.randn(6, 3, generator=gen(9), dtype=F64, requires_grad=True)
    f = lambda x: spherical_harmonics([0, 1, 2, 3, 4], x, normalize)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_zero_vector_is_finite():
    x = torch.zeros(3, 3, dtype=F64)
    x[1] = torch.tensor([0.3, -0.2, 0.5])
    x.requires_grad_()
    Y = spherical_harmonics([0, 1, 2, 3], x, normalize=True)
    torch.testing.assert_close(Y[0], torch.tensor([1.0] + [0.0] * 15, dtype=F64))
    (g,) = torch.autograd.grad(Y.pow(2).sum() + Y.sum(), x, create_graph=True)
    assert torch.isfinite(g).all()
    (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
    assert torch.isfinite(gg).all()


def test_float32_and_dtype_follow_input():
    x = unit(5).float()
    y = spherical_harmonics(3, x, True)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), spherical_harmonics(3, x.double(), True), atol=1e-5, rtol=0)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        spherical_harmonics(2, torch.zeros(5, 2), True)
    with pytest.raises(ValueError, match="normalization"):
        spherical_harmonics(2, torch.zeros(5, 3), True, "unit")
    with pytest.raises(ValueError, match="parity"):
        spherical_harmonics("1o + 2o", torch.zeros(5, 3), True)
    with pytest.raises(ValueError, match="-1"):
        spherical_harmonics([-1], torch.zeros(5, 3), True)


@pytest.mark.parametrize("ls", [[0], [1], [2, 0, 3], [0, 1, 2, 3, 4, 5, 6]])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradients_of_every_subset(ls, normalize):
    """The hand-written backward and its differentiable twin, for subsets, out-of-order and l = 0/1 only."""
    x = torch.randn(5, 3, generator=gen(11), dtype=F64, requires_grad=True)
    f = lambda x: spherical_harmonics(ls, x, normalize)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("normalization", NORMS)
def test_first_and_second_derivatives_match_e3nn(normalization):
    e3o3 = pytest.importorskip("e3nn.o3")
    x0 = torch.randn(64, 2, 3, generator=gen(12), dtype=F64)  # a batch shape, not only (N, 3)
    w = torch.randn(64, 2, 144, generator=gen(13), dtype=F64)
    v = torch.randn(64, 2, 3, generator=gen(14), dtype=F64)
    results = []
    for sh in (spherical_harmonics, lambda ls, x, n, normalization: e3o3.spherical_harmonics(ls, x, n, normalization=normalization)):
        x = x0.clone().requires_grad_()
        y = sh(list(range(12)), x, True, normalization=normalization)
        (g,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), x)
        results.append((y, g, h))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, atol=1e-9, rtol=1e-9)


def test_tracing_leaves_real_tensors_in_the_caches():
    """Exporting first (fake tensors) must not poison the coefficient caches used by later eager calls."""
    from clebsch.o3 import _spherical_harmonics as sh_module

    sh_module._TABLE_CACHE.clear()
    for fn in (sh_module._tables, sh_module._block, sh_module._harmonic_coefficients):
        fn.cache_clear()

    class Edges(torch.nn.Module):
        def forward(self, x):
            return spherical_harmonics([0, 1, 2, 5], x, True)

    x = torch.randn(7, 3, generator=gen(15), dtype=F64)
    program = torch.export.export(Edges(), (x,))
    eager = spherical_harmonics([0, 1, 2, 5], x, True)
    torch.testing.assert_close(program.module()(x), eager, atol=1e-12, rtol=0)
    assert all(type(t) is torch.Tensor for t in sh_module._tables((0, 1, 2, 5), "component"))
