"""Sparse bilinear maps of rows (clebsch.nn.sparse_bilinear) against their dense form, and their derivatives."""

import pytest
import torch

from clebsch.nn import sparse_bilinear, sparse_trilinear_sum
from clebsch.nn import _sparse

pytestmark = pytest.mark.skipif(_sparse._kernels(torch.float64) is None, reason="no C compiler for the kernels")


def terms(ka, kb, ko, nnz, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(0, k, (nnz,), generator=g) for k in (ka, kb, ko))


def naive(a, b, c, t, ko):
    out = torch.zeros(a.shape[0], ko, dtype=a.dtype)
    for n in range(c.shape[0]):
        out[:, t[2][n]] += c[n] * a[:, t[0][n]] * b[:, t[1][n]]
    return out


@pytest.mark.parametrize("rows", [1, 15, 16, 257, 600])
@pytest.mark.parametrize("components_major", [False, True])
def test_matches_the_definition_in_any_layout(rows, components_major):
    t = terms(5, 4, 6, 40)
    torch.manual_seed(rows)
    a = torch.randn(rows, 5, dtype=torch.float64)
    b = torch.randn(4, rows, dtype=torch.float64).T  # read through its strides, no copy
    c = torch.randn(40, dtype=torch.float64)
    out = sparse_bilinear(a, b, c, t, 6, components_major)
    torch.testing.assert_close(out, naive(a, b, c, t, 6), rtol=1e-12, atol=1e-12)
    assert (out.T if components_major else out).is_contiguous()
    g = torch.randn(rows, 6, dtype=torch.float64)
    s = sparse_trilinear_sum(a, b, g, t)
    expected = (a[:, t[0]] * b[:, t[1]] * g[:, t[2]]).sum(0)
    torch.testing.assert_close(s, expected, rtol=1e-12, atol=1e-12)


def test_derivatives_to_second_order():
    t = terms(4, 3, 5, 12, seed=1)
    a = torch.randn(37, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(37, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(12, dtype=torch.float64, requires_grad=True)
    g = torch.randn(37, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: sparse_bilinear(a, b, c, t, 5, True), (a, b, c))
    assert torch.autograd.gradgradcheck(lambda a, b, c: sparse_bilinear(a, b, c, t, 5), (a, b, c))
    assert torch.autograd.gradgradcheck(lambda a, b, g: sparse_trilinear_sum(a, b, g, t), (a, b, g))


def test_native_and_dense_forms_agree_and_threads_do_not_matter(monkeypatch):
    t = terms(9, 9, 9, 100, seed=2)
    torch.manual_seed(3)
    a0, b0, c0 = torch.randn(3000, 9), torch.randn(3000, 9), torch.randn(100)

    def run():
        a, b, c = (x.clone().requires_grad_() for x in (a0, b0, c0))
        out = sparse_bilinear(a, b, c, t, 9)
        ga, = torch.autograd.grad((out ** 2).sum(), a, create_graph=True)
        (ga ** 2).sum().backward()
        return out.detach(), b.grad, c.grad

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    for x, y in zip(one, two):
        assert torch.equal(x, y)
    monkeypatch.setenv("CLEBSCH_NATIVE", "0")
    dense = run()
    for x, y in zip(one, dense):
        torch.testing.assert_close(x, y, rtol=2e-4, atol=2e-3)


@pytest.mark.parametrize("native", [True, False], ids=["kernels", "pytorch"])
def test_operands_of_nodes_components_and_channels(native, monkeypatch):
    """``[N, K, C]`` operands (any strides) are the rows ``(n, c)``: the same map and derivatives as flattened."""
    if not native:
        monkeypatch.setenv("CLEBSCH_NATIVE", "0")
    t = terms(5, 4, 6, 30, seed=4)
    torch.manual_seed(5)
    a = torch.randn(7, 5, 13, dtype=torch.float64, requires_grad=True)  # 91 rows: blocks straddle the nodes
    b = torch.randn(7, 13, 4, dtype=torch.float64).transpose(1, 2).requires_grad_()
    c = torch.randn(30, dtype=torch.float64, requires_grad=True)
    out = sparse_bilinear(a, b, c, t, 6)
    assert out.shape == (7, 6, 13)
    flat = naive(_sparse._flat(a), _sparse._flat(b), c, t, 6).view(7, 13, 6).transpose(1, 2)
    torch.testing.assert_close(out, flat, rtol=1e-12, atol=1e-12)
    g = torch.randn(7, 6, 13, dtype=torch.float64)
    expected = (_sparse._flat(a)[:, t[0]] * _sparse._flat(b)[:, t[1]] * _sparse._flat(g)[:, t[2]]).sum(0)
    torch.testing.assert_close(sparse_trilinear_sum(a, b, g, t), expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradgradcheck(lambda a, b, c: sparse_bilinear(a, b, c, t, 6), (a, b, c))
    with pytest.raises(ValueError, match="same N and C"):
        sparse_bilinear(a, torch.randn(7, 4, 12, dtype=torch.float64), c, t, 6)


def test_terms_out_of_range_or_of_other_lengths_raise():
    a, b = torch.randn(4, 3), torch.randn(4, 2)
    good = (torch.tensor([0, 2]), torch.tensor([1, 0]), torch.tensor([0, 1]))
    assert sparse_bilinear(a, b, torch.ones(2), good, 2).shape == (4, 2)
    with pytest.raises(IndexError, match="terms j"):
        sparse_bilinear(a, b, torch.ones(2), (good[0], torch.tensor([2, 0]), good[2]), 2)
    with pytest.raises(IndexError, match="terms k"):
        sparse_bilinear(a, b, torch.ones(2), good, 1)
    with pytest.raises(ValueError, match="coefficients"):
        sparse_bilinear(a, b, torch.ones(3), good, 2)
    with pytest.raises(ValueError, match="same rows"):
        sparse_bilinear(a, torch.randn(5, 2), torch.ones(2), good, 2)
