"""clebsch.nn.silu: the numbers of torch's SiLU and of its derivatives to the third order, on every path."""

import pytest
import torch

from clebsch.nn import SiLU, silu
from clebsch.nn import _silu
from clebsch.o3 import _native

pytestmark = pytest.mark.skipif(_silu._kernels(torch.float64) is None, reason="no C compiler for the kernels")


def derivatives(fn, x0, w0):
    """The function, the gradient g of sum(w f) in x, the gradients of sum(g^2 sin g) in x and w as force
    training takes them (no graph kept: the kernel), the same with a graph kept, and the third derivative."""
    x, w = x0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    y = fn(x)
    (g,) = torch.autograd.grad((w * y).sum(), x, create_graph=True)
    loss = (g * g * g.sin()).sum()
    hx, hw = torch.autograd.grad(loss, (x, w), retain_graph=True)
    (h,) = torch.autograd.grad(loss, x, create_graph=True)
    (k,) = torch.autograd.grad((h * h).sum(), x)
    return y, g, hx, hw, h, k


@pytest.mark.parametrize("shape", [(300, 64), (7, 2000), (100, 3, 33)])
def test_three_derivatives_equal_torch(shape):
    torch.manual_seed(0)
    x0 = 4 * torch.randn(shape, dtype=torch.float64)
    w = torch.randn(shape, dtype=torch.float64)
    assert x0.numel() >= _silu._NATIVE_FROM  # the kernels' path
    for ours, theirs in zip(derivatives(silu, x0, w), derivatives(torch.nn.functional.silu, x0, w)):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_second_derivative_through_the_kernel(monkeypatch):
    """The force-training pattern runs the kernels (counted), on non-contiguous inputs too."""
    calls = []
    real = _native.parallel_for
    monkeypatch.setattr(_native, "parallel_for", lambda fn, *a, **k: (calls.append(fn), real(fn, *a, **k))[1])
    torch.manual_seed(1)
    x0 = torch.randn(64, 300, dtype=torch.float64).T  # a transposed view
    w = torch.randn(300, 64, dtype=torch.float64)
    ours = derivatives(silu, x0, w)
    kernels = _silu._kernels(torch.float64)
    assert kernels[0] in calls and kernels[1] in calls  # silu_grad and silu_grad_grad ran
    for a, b in zip(ours, derivatives(torch.nn.functional.silu, x0, w)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradcheck_and_gradgradcheck(monkeypatch):
    monkeypatch.setattr(_silu, "_NATIVE_FROM", 0)  # the kernels on a small input
    x = 3 * torch.randn(6, 5, dtype=torch.float64)
    assert silu(x.requires_grad_(True)).grad_fn.name() == "_SiLUBackward"
    assert torch.autograd.gradcheck(silu, (x,))
    assert torch.autograd.gradgradcheck(silu, (x,))


def test_float32_threads_and_the_torch_paths(monkeypatch):
    torch.manual_seed(2)
    x0 = torch.randn(200_000, dtype=torch.float32)
    w = torch.randn(200_000, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = derivatives(silu, x0, w)[:4]
        torch.set_num_threads(2)  # the kernels split the elements between two threads
        two = derivatives(silu, x0, w)[:4]
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(one, two, derivatives(torch.nn.functional.silu, x0, w)[:4]):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
    # without kernels (CLEBSCH_NATIVE=0): torch's SiLU itself
    monkeypatch.setenv("CLEBSCH_NATIVE", "0")
    x = x0.clone().requires_grad_(True)
    assert silu(x).grad_fn.name() == "SiluBackward0"


def test_module_and_inputs_without_gradients():
    x = torch.linspace(-5, 5, 50_000, dtype=torch.float64)
    torch.testing.assert_close(SiLU()(x), torch.nn.functional.silu(x), rtol=0, atol=0)
    assert silu(x).grad_fn is None
