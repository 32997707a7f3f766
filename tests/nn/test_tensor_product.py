import pytest
import torch
from e3nn import o3 as eo

from clebsch.nn import (ChannelwiseTensorProduct, ElementwiseTensorProduct, FullTensorProduct,
                        FullyConnectedTensorProduct, Path, TensorProduct)
from clebsch.o3 import Irreps
from clebsch.testing import assert_equivariant

CASES = {
    "uvw": ("3x0e+2x1o+2x2e+1x1e", "2x0e+1o+2x2e", "4x0e+3x1o+2x2e+1x1e+2x3o+1x4e"),
    "uvu": ("3x0e+2x1o+3x2e+2x1e", "2x0e+2x1o+2x2e", "3x0e+2x1o+3x2e+2x1e+3x3o+2x4e"),
    "uvv": ("2x0e+3x1o+2x2e", "4x0e+3x1o+2x2e", "4x0e+3x1o+2x2e+3x1e"),
    "uuu": ("2x0e+2x1o+2x2e", "2x0e+2x1o+2x2e", "2x0e+2x1o+2x2e+2x1e+2x4e"),
}


def _paths(mode, i1, i2, io):
    a, b, o = Irreps(i1), Irreps(i2), Irreps(io)
    out = []
    for x, (m1, r1) in enumerate(a):
        for y, (m2, r2) in enumerate(b):
            for q, (mo, ro) in enumerate(o):
                need = {"uvw": mo, "uvu": m1, "uvv": m2, "uuu": m1}[mode]
                if ro in list(r1 * r2) and mo == need and (mode != "uuu" or m1 == m2):
                    out.append(Path(x, y, q, mode, True, 1.0 + 0.5 * (len(out) % 3)))
    return out


def build_pair(mode, irrep_normalization="component", path_normalization="element", internal=True):
    """Build the same product in clebsch and e3nn; copy the weights across."""
    i1, i2, io = CASES[mode]
    paths = _paths(mode, i1, i2, io)
    kw = dict(irrep_normalization=irrep_normalization, path_normalization=path_normalization,
              internal_weights=internal, shared_weights=internal)
    ours = TensorProduct(i1, i2, io, paths, **kw)
    ins = [(p.i_in1, p.i_in2, p.i_out, p.mode, p.has_weight, p.path_weight) for p in paths]
    ref = eo.TensorProduct(i1, i2, io, ins, **kw)
    if internal:
        with torch.no_grad():
            ours.weight.copy_(ref.weight)
    return ours, ref


@pytest.mark.parametrize("mode", list(CASES))
@pytest.mark.parametrize("irrep_normalization", ["component", "norm"])
@pytest.mark.parametrize("path_normalization", ["element", "path"])
@pytest.mark.parametrize("internal", [True, False])
def test_equals_e3nn(mode, irrep_normalization, path_normalization, internal):
    torch.manual_seed(0)
    ours, ref = build_pair(mode, irrep_normalization, path_normalization, internal)
    x1 = ours.irreps_in1.randn(7, -1, dtype=torch.float64)
    x2 = ours.irreps_in2.randn(7, -1, dtype=torch.float64)
    ours, ref = ours.double(), ref.double()
    if internal:
        a, b = ours(x1, x2), ref(x1, x2)
    else:
        w = torch.randn(7, ours.weight_numel, dtype=torch.float64)
        a, b = ours(x1, x2, w), ref(x1, x2, w)
    assert ours.weight_numel == ref.weight_numel
    assert (a - b).abs().max() < 1e-10


@pytest.mark.parametrize("mode", ["uvu", "uvv", "uuu"])
def test_unweighted_equals_e3nn(mode):
    i = "2x0e+2x1o"
    ins = [(0, 0, 0, mode, False), (1, 1, 0, mode, False), (1, 1, 2, mode, False), (0, 1, 1, mode, False)]
    ref = eo.TensorProduct(i, i, "2x0e+2x1o+2x1e", ins).double()
    ours = TensorProduct(i, i, "2x0e+2x1o+2x1e", [Path(*x) for x in ins]).double()
    x1, x2 = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    assert (ours(x1, x2) - ref(x1, x2)).abs().max() < 1e-10


@pytest.mark.parametrize("weights", ["none", "shared", "per sample"])
def test_scalar_second_input_equals_e3nn(weights):
    """``uuu`` with scalars as input 2 (a gate, weighted or not) runs as a gather and a product: as e3nn."""
    i1, i2, out = "3x1o+3x0e+3x2e", "3x0e+3x0o", "3x1o+3x0e+3x2o+3x1e"
    ins = [(0, 0, 0, "uuu", weights != "none"), (1, 0, 1, "uuu", weights != "none"),
           (2, 1, 2, "uuu", weights != "none"), (0, 1, 3, "uuu", weights != "none")]
    options = dict(shared_weights=weights != "per sample", internal_weights=weights == "shared")
    ref = eo.TensorProduct(i1, i2, out, ins, **options).double()
    ours = TensorProduct(i1, i2, out, [Path(*x) for x in ins], **options).double()
    assert [p["mode"] for p in ours._plans] == ["scale"]
    x1 = torch.randn(5, ours.irreps_in1.dim, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(5, ours.irreps_in2.dim, dtype=torch.float64, requires_grad=True)
    args = (x1, x2)
    if weights == "shared":
        with torch.no_grad():
            ours.weight.copy_(ref.weight)
    elif weights == "per sample":
        args += (torch.randn(5, ours.weight_numel, dtype=torch.float64, requires_grad=True),)
    torch.testing.assert_close(ours(*args), ref(*args), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradgradcheck(ours, args)


@pytest.mark.parametrize("cls", [FullTensorProduct, ElementwiseTensorProduct])
def test_ready_made_equal_e3nn(cls):
    args = ("2x0e+3x1o+1x2e", "1x0e+4x1e+1x3o")
    ref = getattr(eo, cls.__name__)(*args).double()
    ours = cls(*args).double()
    assert str(ours.irreps_out) == str(ref.irreps_out)
    x1 = torch.randn(4, ours.irreps_in1.dim, dtype=torch.float64)
    x2 = torch.randn(4, ours.irreps_in2.dim, dtype=torch.float64)
    assert (ours(x1, x2) - ref(x1, x2)).abs().max() < 1e-10


def test_channelwise_and_fully_connected_equal_e3nn():
    tp = ChannelwiseTensorProduct("4x0e+4x1o+4x2e", "0e+1o+2e+3o", lmax=2).double()
    ins = [(p.i_in1, p.i_in2, p.i_out, "uvu", True) for p in tp.paths]
    ref = eo.TensorProduct(str(tp.irreps_in1), str(tp.irreps_in2), str(tp.irreps_out), ins,
                           shared_weights=False, internal_weights=False).double()
    assert tp.irreps_out.lmax == 2 and len(tp.paths) == 18
    x1, x2 = torch.randn(6, 36, dtype=torch.float64), torch.randn(6, 16, dtype=torch.float64)
    w = torch.randn(6, tp.weight_numel, dtype=torch.float64)
    assert (tp(x1, x2, w) - ref(x1, x2, w)).abs().max() < 1e-10
    fc = FullyConnectedTensorProduct("3x0e+2x1o", "0e+1o", "2x0e+3x1o+1x1e").double()
    ref = eo.FullyConnectedTensorProduct("3x0e+2x1o", "0e+1o", "2x0e+3x1o+1x1e").double()
    with torch.no_grad():
        fc.weight.copy_(ref.weight)
    x1, x2 = torch.randn(6, 9, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    assert (fc(x1, x2) - ref(x1, x2)).abs().max() < 1e-10
    assert "FullyConnectedTensorProduct(" in repr(fc) and "weight_numel" in repr(fc)


@pytest.mark.parametrize("mode", list(CASES))
def test_equivariant(mode):
    torch.manual_seed(1)
    tp, _ = build_pair(mode)
    tp = tp.double()
    assert_equivariant(tp, [str(tp.irreps_in1), str(tp.irreps_in2)], [str(tp.irreps_out)], tolerance=1e-10)


def test_equivariant_random_irreps_l4():
    torch.manual_seed(2)
    i1 = "3x0o+2x1e+2x3o+2x4e"
    i2 = "0e+1o+2e+3o+4e"
    tp = ChannelwiseTensorProduct(i1, i2, lmax=4, shared_weights=True, internal_weights=True).double()
    assert tp.irreps_out.lmax == 4
    assert_equivariant(tp, [i1, i2], [str(tp.irreps_out)], tolerance=1e-10)


def test_second_moment():
    torch.manual_seed(3)
    tp = FullyConnectedTensorProduct("32x0e+32x1o+32x2e", "0e+1o+2e", "32x0e+32x1o+32x2e+32x1e")
    x1 = tp.irreps_in1.randn(10_000, -1)
    x2 = tp.irreps_in2.randn(10_000, -1)
    with torch.no_grad():
        y = tp(x1, x2)
    for (mul, ir), sl in zip(tp.irreps_out, tp.irreps_out.slices()):
        m = y[:, sl].pow(2).mean().item()
        assert 0.9 < m < 1.1, (ir, m)
    cw = ChannelwiseTensorProduct("32x0e+32x1o+32x2e", "0e+1o+2e+3o", lmax=2)
    y = cw(x1, torch.randn(10_000, 16), torch.randn(10_000, cw.weight_numel)).detach()
    assert 0.9 < y.pow(2).mean().item() < 1.1


@pytest.mark.parametrize("mode", list(CASES))
def test_gradcheck_and_gradgradcheck(mode):
    torch.manual_seed(4)
    small = {"uvw": ("2x0e+1x1o", "0e+1o", "1x0e+2x1o+1x1e"), "uvu": ("2x0e+2x1o", "0e+1o", "2x0e+2x1o+2x1e"),
             "uvv": ("1x0e+1x1o", "2x0e+2x1o", "2x0e+2x1o"), "uuu": ("2x0e+2x1o", "2x0e+2x1o", "2x0e+2x1o+2x1e")}[mode]
    tp = TensorProduct(*small, _paths(mode, *small), shared_weights=False).double()
    x1 = torch.randn(3, tp.irreps_in1.dim, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(3, tp.irreps_in2.dim, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, tp.weight_numel, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(tp, (x1, x2, w))
    assert torch.autograd.gradgradcheck(tp, (x1, x2, w))


def test_bad_paths_raise():
    with pytest.raises(ValueError, match="parity"):
        TensorProduct("1o", "1o", "1o", [Path(0, 0, 0, "uvw")])
    with pytest.raises(ValueError, match="triangle"):
        TensorProduct("1o", "1o", "3e", [Path(0, 0, 0, "uvw")])
    with pytest.raises(ValueError, match=r"Path\(.*i_out=5|i_out=5"):
        TensorProduct("1o", "1o", "0e", [Path(0, 0, 5, "uvw")])
    with pytest.raises(ValueError, match="multiplicity"):
        TensorProduct("2x1o", "1o", "3x0e", [Path(0, 0, 0, "uvu")])


def test_bad_shapes_raise():
    tp = TensorProduct("2x0e", "0e", "2x0e", [Path(0, 0, 0, "uvu")], shared_weights=False)
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        tp(torch.randn(4, 3), torch.randn(4, 1), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"weight has shape \(4, 5\)"):
        tp(torch.randn(4, 2), torch.randn(4, 1), torch.randn(4, 5))
    with pytest.raises(ValueError, match="must be given"):
        tp(torch.randn(4, 2), torch.randn(4, 1))


def test_empty_batch_gives_empty_output():
    """A graph without edges gathers zero rows: the product must give zero rows, not fail."""
    tp = ChannelwiseTensorProduct("4x0e + 4x1o", "0e + 1o + 2e", lmax=2, shared_weights=False, internal_weights=False)
    x1 = torch.randn(0, 16, requires_grad=True)
    out = tp(x1, torch.randn(0, 9), torch.randn(0, tp.weight_numel))
    assert out.shape == (0, tp.irreps_out.dim)
    (out.sum() + x1.sum()).backward()
    assert x1.grad.shape == (0, 16)


@pytest.mark.parametrize("irreps", [("4x0e+3x1o+2x2e", "0e+1o+2e", None), ("3x0e+2x1o", "1x1o+2x0e", None)])
def test_scatter_sum_equals_index_add_of_forward(irreps):
    """``scatter_sum`` (sums into receivers before reordering) = forward then ``index_add``, with derivatives."""
    torch.manual_seed(5)
    i1, i2, f = irreps
    tp = ChannelwiseTensorProduct(i1, i2, filter_ir_out=f).double()
    e, n = 40, 7
    x1 = torch.randn(e, tp.irreps_in1.dim, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(e, tp.irreps_in2.dim, dtype=torch.float64, requires_grad=True)
    w = torch.randn(e, tp.weight_numel, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, n, (e,))
    got = tp.scatter_sum(x1, x2, w, index, n)
    ref = torch.zeros(n, tp.irreps_out.dim, dtype=torch.float64).index_add(0, index, tp(x1, x2, w))
    assert (got - ref).abs().max() < 1e-12
    g_got = torch.autograd.grad(got.pow(2).sum(), (x1, x2, w), create_graph=True)
    g_ref = torch.autograd.grad(ref.pow(2).sum(), (x1, x2, w), create_graph=True)
    for a, b in zip(g_got, g_ref):
        assert (a - b).abs().max() < 1e-10
    gg_got = torch.autograd.grad(sum(g.pow(2).sum() for g in g_got), (x1, x2, w))
    gg_ref = torch.autograd.grad(sum(g.pow(2).sum() for g in g_ref), (x1, x2, w))
    for a, b in zip(gg_got, gg_ref):
        assert (a - b).abs().max() < 1e-8 * max(1.0, float(b.abs().max()))
    empty = tp.scatter_sum(x1[:0], x2[:0], w[:0], index[:0], n)
    assert empty.shape == (n, tp.irreps_out.dim) and not empty.any()


@pytest.mark.parametrize("irreps_out", ["2x0e+3x1o+2x2e", "3x1o+1x3e+2x0e+2x2e+1x1e"])
def test_fully_connected_shared_weights_equals_e3nn_with_gradients(irreps_out):
    """The shared-weight uvw plan (one matmul per output irrep): values and derivatives, outputs in any
    order, an output no path reaches (3e), several irreps of input 2 at multiplicity 1."""
    torch.manual_seed(5)
    i1, i2 = "3x0e+2x1o+2x2e", "0e+1o+2e"
    fc = FullyConnectedTensorProduct(i1, i2, irreps_out).double()
    ref = eo.FullyConnectedTensorProduct(i1, i2, irreps_out).double()
    with torch.no_grad():
        fc.weight.copy_(ref.weight)
    results = []
    for tp in (fc, ref):
        x1 = torch.randn(5, 19, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
        x2 = torch.randn(5, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        y = tp(x1, x2)
        g = torch.autograd.grad(y.pow(2).sum(), [x1, x2, tp.weight], create_graph=True)
        gg = torch.autograd.grad(sum(t.pow(2).sum() for t in g), [x1, x2])
        results.append((y, *g, *gg))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
