"""``TensorProduct.scatter_sum`` of channel-wise products with ``recompute_products``: values, derivatives to the
third order, memory."""

import pytest
import torch

from clebsch.nn import ChannelwiseTensorProduct

# blocks of input 1 with d1 = 1, 3, 5; pieces with several paths (P > 1), also for d1 = 1 (two 0e in input 2);
# several channel-wise groups (multiplicities 3, 2, 1) that each leave blocks of input 1 unused
CASES = [("2x0e+2x1o+2x2e", "0e+1o+2e", 2), ("2x0e+2x1o+2x1e", "0e+1o+0e+2e", 1), ("3x0e+2x1o+1x2e", "0e+1o+2e", 2)]


def _inputs(tp, e=7, n=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(e, tp.irreps_in1.dim, generator=g, dtype=dtype, requires_grad=True)
    x2 = torch.randn(e, tp.irreps_in2.dim, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(e, tp.weight_numel, generator=g, dtype=dtype, requires_grad=True)
    index = torch.tensor([0, 2, 2, 3, 0, 2, 3, 0, 2][:e])  # receivers 1 and 4 get nothing
    return x1, x2, w, index, n


def _reference(tp, x1, x2, w, index, n):
    return torch.zeros(n, tp.irreps_out.dim, dtype=x1.dtype).index_add(0, index, tp(x1, x2, w))


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_and_gradgradcheck(case):
    i1, i2, lmax = case
    tp = ChannelwiseTensorProduct(i1, i2, lmax=lmax, recompute_products=True).double()
    x1, x2, w, index, n = _inputs(tp)

    def f(a, b, c):
        return tp.scatter_sum(a, b, c, index, n)

    assert torch.autograd.gradcheck(f, (x1, x2, w))
    assert torch.autograd.gradgradcheck(f, (x1, x2, w))


@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True),
                                  (True, True, False), (False, True, True), (True, False, True)])
def test_gradgradcheck_with_some_inputs_constant(mask):
    tp = ChannelwiseTensorProduct(*CASES[0][:2], lmax=2, recompute_products=True).double()
    x1, x2, w, index, n = _inputs(tp, seed=1)
    args = [t.detach().requires_grad_(m) for t, m in zip((x1, x2, w), mask)]
    assert torch.autograd.gradgradcheck(lambda a, b, c: tp.scatter_sum(a, b, c, index, n), tuple(args))


def test_third_derivatives():
    """The second derivatives are themselves differentiable (a gradgradcheck of the gradient)."""
    tp = ChannelwiseTensorProduct(*CASES[1][:2], lmax=1, recompute_products=True).double()
    x1, x2, w, index, n = _inputs(tp, e=6, n=4, seed=2)

    def grads(a, b, c):
        out = tp.scatter_sum(a, b, c, index, n)
        return torch.autograd.grad(out.pow(2).sum(), (a, b, c), create_graph=True)

    assert torch.autograd.gradgradcheck(grads, (x1, x2, w))


@pytest.mark.parametrize("case", CASES)
def test_equals_forward_then_index_add_to_second_order(case):
    i1, i2, lmax = case
    tp = ChannelwiseTensorProduct(i1, i2, lmax=lmax, recompute_products=True).double()
    x1, x2, w, index, n = _inputs(tp, e=9, seed=3)
    got, ref = tp.scatter_sum(x1, x2, w, index, n), _reference(tp, x1, x2, w, index, n)
    assert (got - ref).abs().max() < 1e-12
    tp.recompute_products = False
    assert (tp.scatter_sum(x1, x2, w, index, n) - got).abs().max() < 1e-12
    g_got = torch.autograd.grad(got.pow(3).sum(), (x1, x2, w), create_graph=True)
    g_ref = torch.autograd.grad(ref.pow(3).sum(), (x1, x2, w), create_graph=True)
    for a, b in zip(g_got, g_ref):
        assert (a - b).abs().max() < 1e-10 * max(1.0, float(b.detach().abs().max()))
    # a force-like loss: the first derivatives to some inputs, then everything's second derivatives
    loss_got = g_got[1].pow(2).sum() + (g_got[2] * g_got[0][:, :1]).sum()
    loss_ref = g_ref[1].pow(2).sum() + (g_ref[2] * g_ref[0][:, :1]).sum()
    for a, b in zip(torch.autograd.grad(loss_got, (x1, x2, w)), torch.autograd.grad(loss_ref, (x1, x2, w))):
        assert (a - b).abs().max() < 1e-9 * max(1.0, float(b.detach().abs().max()))


def test_batched_gradients_as_for_hessians():
    """``is_grads_batched`` (vmap over the backward pass) through both levels of derivatives."""
    tp = ChannelwiseTensorProduct(*CASES[0][:2], lmax=2, recompute_products=True).double()
    x1, x2, w, index, n = _inputs(tp, seed=4)
    out = tp.scatter_sum(x1, x2, w, index, n)
    g = torch.autograd.grad(out.pow(2).sum(), x2, create_graph=True)[0]
    v = torch.randn(3, *g.shape, dtype=torch.float64)
    batched = torch.autograd.grad(g, (x1, x2, w), grad_outputs=v, is_grads_batched=True, retain_graph=True)
    for k in range(3):
        one = torch.autograd.grad(g, (x1, x2, w), grad_outputs=v[k], retain_graph=True)
        for a, b in zip(batched, one):
            assert (a[k] - b).abs().max() < 1e-12 * max(1.0, float(b.detach().abs().max()))


def test_force_training_keeps_no_product_per_edge():
    """After the forward pass and a backward pass with ``create_graph``, autograd holds the inputs and
    tensors per node, but nothing per edge and output component (``[E, irreps_out.dim]`` or blocks of it)."""
    tp = ChannelwiseTensorProduct("4x0e+4x1o+4x2e", "0e+1o+2e", lmax=2, recompute_products=True)
    e, n = 2000, 10
    x1 = torch.randn(e, tp.irreps_in1.dim, requires_grad=True)
    x2 = torch.randn(e, tp.irreps_in2.dim, requires_grad=True)
    w = torch.randn(e, tp.weight_numel, requires_grad=True)
    index = torch.randint(0, n, (e,))
    assert tp.irreps_out.dim > 2 * max(tp.irreps_in1.dim, tp.weight_numel)
    sizes = []

    def pack(t):
        sizes.append(t.untyped_storage().nbytes() // t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = tp.scatter_sum(x1, x2, w, index, n)
        torch.autograd.grad(out.pow(2).sum(), (x1, x2, w), create_graph=True)
    assert max(sizes) <= e * max(tp.irreps_in1.dim, tp.weight_numel)
