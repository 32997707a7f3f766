"""The one-pass neighbour sums (clebsch.nn.message_sum / edge_dot) against plain PyTorch, and their derivatives."""

import pytest
import torch

from clebsch.nn import Edges, edge_dot, message_sum
from clebsch.nn import _message
from clebsch.o3 import _native

pytestmark = pytest.mark.skipif(_message._kernels(torch.float64) is None, reason="no C compiler for the kernels")

PART = (0, 1, 1, 1, 2, 2, 2, 2, 2)


@pytest.fixture(autouse=True)
def kernels_at_every_size(monkeypatch):
    """The kernels run from the first product on (by default small calls take the PyTorch path)."""
    monkeypatch.setattr(_message, "_NATIVE_FROM", 0)


def reference_sum(w, x, sender, receiver, n, part):
    wa = w[:, list(part)] if part is not None else w.expand(-1, x.shape[1], -1)
    return torch.zeros(n, *x.shape[1:], dtype=x.dtype).index_add(0, receiver, wa * x[sender])


def reference_dot(x, g, sender, receiver, part, rows):
    prod = x[sender] * g[receiver]
    p = torch.tensor(part if part is not None else [0] * x.shape[1])
    return torch.zeros(prod.shape[0], rows, prod.shape[2], dtype=x.dtype).index_add(1, p, prod)


def graph(n=7, e=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    sender = torch.randint(0, n, (e,), generator=g)
    receiver = torch.randint(0, n - 1, (e,), generator=g)  # the last node receives nothing
    return sender, receiver


@pytest.mark.parametrize("part,rows", [(None, 1), (PART, 3), ((0, 1, 2), 3)])
def test_sum_and_dot_match_pytorch(part, rows):
    n, a, c = 7, len(part) if part else 3, 5
    sender, receiver = graph(n)
    torch.manual_seed(1)
    x = torch.randn(n, a, c, dtype=torch.float64)
    w = torch.randn(sender.shape[0], rows, c, dtype=torch.float64)
    edges = Edges(sender, receiver, n)
    out = message_sum(w, x, edges, part)
    assert out.shape == (n, a, c)
    torch.testing.assert_close(out, reference_sum(w, x, sender, receiver, n, part), rtol=1e-13, atol=1e-13)
    assert out[n - 1].abs().max() == 0
    g = torch.randn(n, a, c, dtype=torch.float64)
    torch.testing.assert_close(edge_dot(x, g, edges, part, rows), reference_dot(x, g, sender, receiver, part, rows),
                               rtol=1e-13, atol=1e-13)


def test_derivatives_to_second_order():
    """gradcheck and gradgradcheck in float64 through the native kernels (force training differentiates twice)."""
    sender, receiver = graph(5, 14)
    edges = Edges(sender, receiver, 5)
    x = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(14, 2, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    part = (0, 1, 1, 0)
    assert torch.autograd.gradcheck(lambda w, x: message_sum(w, x, edges, part), (w, x))
    assert torch.autograd.gradgradcheck(lambda w, x: message_sum(w, x, edges, part), (w, x))
    assert torch.autograd.gradcheck(lambda x, g: edge_dot(x, g, edges, part, 2), (x, g))
    assert torch.autograd.gradgradcheck(lambda x, g: edge_dot(x, g, edges, part, 2), (x, g))


def test_native_and_pytorch_paths_agree_with_double_backward(monkeypatch):
    n, e = 40, 300
    sender, receiver = graph(n, e, seed=3)
    torch.manual_seed(2)
    x0 = torch.randn(n, 9, 8, dtype=torch.float64)
    w0 = torch.randn(e, 3, 8, dtype=torch.float64)

    def second_order():
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        out = message_sum(w, x, Edges(sender, receiver, n), PART)
        gx, gw = torch.autograd.grad((out ** 2).sum(), (x, w), create_graph=True)
        (gx.sin().sum() + (gw ** 3).sum()).backward()
        return out.detach(), x.grad, w.grad

    assert _message._native_ok(x0, w0)
    native = second_order()
    monkeypatch.setenv("CLEBSCH_NATIVE", "0")
    assert not _message._native_ok(x0, w0)
    plain = second_order()
    for a, b in zip(native, plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_result_does_not_depend_on_threads_or_index_layout():
    n, e = 300, 5000
    sender, receiver = graph(n, e, seed=4)
    x = torch.randn(n, 3, 16)
    w = torch.randn(e, 1, 16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = message_sum(w, x, Edges(sender, receiver, n))
        dot_one = edge_dot(x, x.flip(0), Edges(sender, receiver, n))
        torch.set_num_threads(2)  # the kernels split nodes and edges between two threads
        two = message_sum(w, x, Edges(sender, receiver, n))
        dot_two = edge_dot(x, x.flip(0), Edges(sender, receiver, n))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)  # edges summed in the same order whatever the threads
    assert torch.equal(dot_one, dot_two)
    torch.testing.assert_close(dot_one, (x[sender] * x.flip(0)[receiver]).sum(1, keepdim=True))
    # an [E, 2] index read column-wise (strided rows) and int32 indices give the same sums
    pairs = torch.stack([sender, receiver], dim=1).to(torch.int32)
    strided = message_sum(w, x, Edges(pairs[:, 0], pairs[:, 1], n))
    assert torch.equal(strided, one)


def test_no_edges_and_vmap_hessian():
    edges = Edges(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 3)
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    out = message_sum(torch.zeros(0, 1, 4, dtype=torch.float64), x, edges)
    assert out.shape == (3, 2, 4) and out.abs().max() == 0
    # batched gradients (vmap, as Hessians use) take the PyTorch path
    sender, receiver = graph(4, 9)
    e4 = Edges(sender, receiver, 4)
    w = torch.randn(9, 1, 2, dtype=torch.float64)

    def f(x):
        return (message_sum(w, x.view(4, 1, 2), e4) ** 2).sum()

    x0 = torch.randn(8, dtype=torch.float64)
    hessian = torch.func.hessian(f)(x0)
    fd = torch.autograd.functional.hessian(f, x0)
    torch.testing.assert_close(hessian, fd, rtol=1e-10, atol=1e-10)


def test_small_calls_take_the_pytorch_path(monkeypatch):
    monkeypatch.setattr(_message, "_NATIVE_FROM", 65536)
    sender, receiver = graph(5, 10)
    x = torch.randn(5, 3, 4, requires_grad=True)
    out = message_sum(torch.randn(10, 1, 4), x, Edges(sender, receiver, 5))
    assert out.grad_fn is not None and "MessageSum" not in type(out.grad_fn).__name__


def test_wrong_shapes_and_indices_raise():
    sender, receiver = graph(5, 10)
    edges = Edges(sender, receiver, 5)
    x = torch.randn(5, 3, 4)
    with pytest.raises(ValueError, match="weight rows"):
        message_sum(torch.randn(10, 2, 4), x, edges)
    with pytest.raises(ValueError, match="part"):
        message_sum(torch.randn(10, 2, 4), x, edges, (0, 1))
    with pytest.raises(ValueError, match="10 edges"):
        message_sum(torch.randn(9, 1, 4), x, edges)
    with pytest.raises(ValueError, match="one per node"):
        message_sum(torch.randn(10, 1, 4), torch.randn(4, 3, 4), edges)
    if _native.enabled():
        bad = Edges(torch.tensor([0, 7]), torch.tensor([1, 0]), 5)
        with pytest.raises(IndexError, match="sender index 7"):
            message_sum(torch.randn(2, 1, 4), x, bad)
