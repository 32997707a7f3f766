"""The fused channel-wise convolution (C kernels, clebsch.nn._fused_conv) against the PyTorch one, in float64:
values, first and second derivatives in every input, the PyTorch form of each derivative, thread counts,
graphs without edges and receivers without neighbours, and the models that use it."""

import pytest
import torch

import clebsch.nn._fused_conv as fc
from clebsch.nn import ChannelwiseTensorProduct
from clebsch.nn._fused_conv import _SLOTS, _Graph, _partial_torch, _run, fused_available
from clebsch.o3 import Irreps

pytestmark = pytest.mark.skipif(not fused_available(torch.zeros(1, dtype=torch.float64)),
                                reason="the fused kernels need a C compiler (CLEBSCH_NATIVE unset)")

CASES = {
    "nequip": ("3x0e+3x0o+3x1o+3x1e+3x2e+3x2o", 2, None),
    "mace": ("4x0e+4x1o+4x2e+4x3o", 3, None),
    "mixed multiplicities": ("5x0e+2x1o+3x2e", 2, "0e+1o+2e+1e"),
}


def _setup(case, n=9, e=40, seed=0):
    irreps, lsh, filt = CASES[case]
    irreps, sh = Irreps(irreps), Irreps.spherical_harmonics(lsh)
    tp = ChannelwiseTensorProduct(irreps, sh, filter_ir_out=filt if filt else irreps, shared_weights=False,
                                  internal_weights=False).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, irreps.dim, generator=g, dtype=torch.float64, requires_grad=True)
    sender = torch.randint(0, n, (e,), generator=g)
    receiver = torch.randint(0, n - 2, (e,), generator=g)  # the last two atoms receive nothing
    y = torch.randn(e, sh.dim, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(e, tp.weight_numel, generator=g, dtype=torch.float64, requires_grad=True)
    return tp, x, sender, y, w, receiver


@pytest.fixture
def kernel_calls(monkeypatch):
    """The slots the C kernels computed (``_run``'s calls), to show that the fused path ran."""
    calls = []
    run = fc._run

    def counted(slot, *args, **kwargs):
        calls.append(slot)
        return run(slot, *args, **kwargs)

    monkeypatch.setattr(fc, "_run", counted)
    return calls


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_derivatives_of_both_orders_equal_pytorchs(case, kernel_calls):
    tp, x, sender, y, w, receiver = _setup(case)
    assert tp._fused.supported
    n = x.shape[0]
    fused = tp.gather_scatter_sum(x, sender, y, w, receiver, n)
    plain = tp.scatter_sum(x[sender], y, w, receiver, n)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    assert fused[-2:].abs().max() == 0  # receivers without edges
    G = torch.randn_like(plain)
    first_f = torch.autograd.grad(fused, (x, y, w), G, create_graph=True)
    first_p = torch.autograd.grad(plain, (x, y, w), G, create_graph=True)
    for a, b in zip(first_f, first_p):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
    H = [torch.randn_like(t) for t in first_p]
    second_f = torch.autograd.grad(sum((a * h).sum() for a, h in zip(first_f, H)), (x, y, w))
    second_p = torch.autograd.grad(sum((a * h).sum() for a, h in zip(first_p, H)), (x, y, w))
    for a, b in zip(second_f, second_p):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert {"g", "x", "mw"} <= set(kernel_calls) and len(kernel_calls) >= 8  # forward, backward, double backward


def test_gradcheck_and_gradgradcheck():
    tp, x, sender, y, w, receiver = _setup("mixed multiplicities", n=4, e=7)

    def f(x, y, w):
        return tp.gather_scatter_sum(x, sender, y, w, receiver, 4)

    assert torch.autograd.gradcheck(f, (x, y, w))
    assert torch.autograd.gradgradcheck(f, (x, y, w))


@pytest.mark.parametrize("case", ["nequip", "mixed multiplicities"])
def test_each_kernel_equals_its_pytorch_form(case):
    tp, x, sender, y, w, receiver = _setup(case)
    n = x.shape[0]
    graph = _Graph(sender, receiver, n, n)
    for spec, _ in tp._fused.specs:
        g = torch.Generator().manual_seed(3)
        args = {"x": tp._fused.x_map(tp, x).detach(), "m": y.detach() @ spec.coupling_as(y), "w": w.detach(),
                "g": torch.randn(n, spec.dims["g"], generator=g, dtype=torch.float64)}
        for slot in _SLOTS:
            given = {**args, slot: None}
            torch.testing.assert_close(_run(slot, graph, spec, **given), _partial_torch(slot, graph, spec, **given),
                                       rtol=1e-12, atol=1e-12)
        gm, gw = _run("mw", graph, spec, **args)
        torch.testing.assert_close(gm, _run("m", graph, spec, **{**args, "m": None}), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(gw, _run("w", graph, spec, **{**args, "w": None}), rtol=1e-13, atol=1e-13)


def test_results_do_not_depend_on_the_number_of_threads():
    tp, x, sender, y, w, receiver = _setup("nequip", n=300, e=3000)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            out = tp.gather_scatter_sum(x, sender, y, w, receiver, 300)
            results.append([out] + list(torch.autograd.grad(out, (x, y, w), torch.ones_like(out))))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_bad_indices_are_refused_before_the_kernels_read_them():
    tp, x, sender, y, w, receiver = _setup("nequip")
    bad = sender.clone()
    bad[3] = x.shape[0]
    with pytest.raises(IndexError, match=r"sender indices must lie in \[0, 9\), got 0 to 9"):
        tp.gather_scatter_sum(x, bad, y, w, receiver, 9)
    with pytest.raises(IndexError, match=r"receiver indices must lie in \[0, 4\)"):
        tp.gather_scatter_sum(x, sender, y, w, receiver, 4)
    with pytest.raises(ValueError, match="one index per edge"):
        tp.gather_scatter_sum(x, sender, y, w, receiver[:-1], 9)
    torch.testing.assert_close(tp.gather_scatter_sum(x, sender.int(), y, w, receiver.int(), 9),
                               tp.scatter_sum(x[sender], y, w, receiver, 9), rtol=1e-12, atol=1e-12)


def test_no_edges_and_float32():
    tp, x, sender, y, w, receiver = _setup("nequip")
    empty = tp.gather_scatter_sum(x, sender[:0], y[:0], w[:0], receiver[:0], 5)
    assert empty.shape == (5, tp.irreps_out.dim) and empty.abs().max() == 0
    gx, = torch.autograd.grad(empty.sum(), x, allow_unused=True)
    assert gx is None or gx.abs().max() == 0
    f32 = [t.detach().float() for t in (x, y, w)]
    torch.testing.assert_close(tp.float().gather_scatter_sum(f32[0], sender, f32[1], f32[2], receiver, 9),
                               tp.scatter_sum(f32[0][sender], f32[1], f32[2], receiver, 9), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["nequip", "mace"])
def test_models_give_the_same_energies_forces_and_training_gradients_with_and_without_kernels(family, monkeypatch,
                                                                                              kernel_calls):
    from ase.build import molecule

    from clebsch.data.targets import graph_from_atoms
    from clebsch.testing import float64_model

    hyper = {"num_layers": 2, "channels": 4, "lmax": 2}
    model = float64_model({"name": family, "species": ["H", "C", "O"], "cutoff": 4.0, **hyper}, seed=2,
                          randomize_zeros=True)
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    graph = graph_from_atoms(atoms, 4.0, keys={}, dtype=torch.float64)

    def run():
        out = model(graph, training=True)  # forces with their graph: the loss's backward is a double backward
        loss = (out["energy"] ** 2).sum() + (out["forces"] ** 2).sum()
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
        return [out["energy"].detach(), out["forces"].detach()] + [g for g in grads if g is not None]

    fused = run()
    assert "g" in kernel_calls and "mw" in kernel_calls
    kernel_calls.clear()
    monkeypatch.setenv("CLEBSCH_NATIVE", "0")
    plain = run()
    assert not kernel_calls
    assert len(fused) == len(plain)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_forces_skip_the_first_layers_feature_gradient(monkeypatch):
    """Taking the forces, the first layer's input features (a function of the elements and weights alone) need
    no gradient: the kernels skip that pass; the loss's backward still computes it, and the forces and weight
    gradients are those of the PyTorch form."""
    from clebsch.graph import AtomicGraph
    from clebsch.models import build_model
    from clebsch.nn import _fused_conv as fcv

    g = torch.Generator().manual_seed(0)
    graph = AtomicGraph.from_tensors(torch.randn(9, 3, generator=g, dtype=torch.float64) * 1.4,
                                     torch.tensor([8, 6, 1, 1, 6, 1, 1, 1, 1]), 4.0)
    torch.manual_seed(0)
    model = build_model({"name": "nequip", "species": ["H", "C", "O"], "cutoff": 4.0, "num_layers": 3}).double()
    calls = []
    real = fcv._run
    monkeypatch.setattr(fcv, "_run", lambda slot, *a, **k: calls.append(slot) or real(slot, *a, **k))
    out = model(graph)
    assert sorted(calls) == ["g"] * 3 + ["mw"] * 3 + ["x"] * 2
    calls.clear()
    ((out["forces"] ** 2).sum() + out["energy"].sum()).backward()
    assert "x" in calls
    fused = [out["forces"].detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]
    monkeypatch.setenv("CLEBSCH_NATIVE", "0")
    model.zero_grad()
    out = model(graph)
    ((out["forces"] ** 2).sum() + out["energy"].sum()).backward()
    plain = [out["forces"].detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(fused) == len(plain) > 1
    for x, y in zip(fused, plain):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-11)
