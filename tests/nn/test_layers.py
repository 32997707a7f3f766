import math

import pytest
import torch
from e3nn import nn as enn
from e3nn import o3 as eo

from clebsch.nn import (BatchNorm, BesselBasis, CosineCutoff, Gate, GaussianBasis, LayerNorm, Linear, NormActivation,
                        PolynomialCutoff, ScalarMLP)
from clebsch.o3 import Irreps
from clebsch.testing import assert_equivariant

F = torch.nn.functional


@pytest.mark.parametrize("biases", [True, False])
def test_linear_equals_e3nn(biases):
    a, b = "3x0e+2x1o+4x0e+2x2e+1x1e+1x4o", "5x0e+3x1o+2x2e+1x3o+2x1o+2x4o"
    ref, ours = eo.Linear(a, b, biases=biases), Linear(a, b, biases=biases)
    with torch.no_grad():
        ours.weight.copy_(ref.weight)
        if biases:
            ref.bias.normal_()
            ours.bias.copy_(ref.bias)
    x = torch.randn(6, ours.irreps_in.dim)
    assert ours.weight_numel == ref.weight_numel
    assert (ours(x) - ref(x)).abs().max() < 1e-10
    ref = eo.Linear(a, b, shared_weights=False, internal_weights=False)
    ours = Linear(a, b, shared_weights=False)
    w = torch.randn(6, ref.weight_numel)
    assert (ours(x, w) - ref(x, w)).abs().max() < 1e-10


def test_linear_equivariant_moment_and_errors():
    torch.manual_seed(0)
    lin = Linear("16x0e+16x1o+8x2e+8x3o+4x4e", "16x0e+16x1o+8x2e+8x3o+4x4e", biases=True)
    assert_equivariant(lin, ["16x0e+16x1o+8x2e+8x3o+4x4e"], ["16x0e+16x1o+8x2e+8x3o+4x4e"], tolerance=1e-10)
    big = Linear("64x0e+64x1o", "64x0e+64x1o")
    y = big(torch.randn(10_000, 256)).detach()
    assert 0.9 < y.pow(2).mean().item() < 1.1
    with pytest.raises(ValueError, match=r"\(3, 7\)"):
        big(torch.randn(3, 7))
    with pytest.raises(ValueError, match="weight has shape"):
        big(torch.randn(3, 256), torch.randn(5))
    x = torch.randn(2, 4, requires_grad=True)
    small = Linear("1x0e+1x1o", "2x0e+1x1o")
    assert torch.autograd.gradcheck(small, (x,)) and torch.autograd.gradgradcheck(small, (x,))


def _gate_args():
    return ("3x0e+2x0o", [F.silu, torch.tanh], "2x0e+1x0o", [torch.sigmoid, torch.tanh], "1x1o+1x2e+1x4e")


def test_gate_equals_e3nn_and_equivariant():
    ref, ours = enn.Gate(*_gate_args()), Gate(*_gate_args())
    assert str(ref.irreps_in) == str(ours.irreps_in) and str(ref.irreps_out) == str(ours.irreps_out)
    x = torch.randn(5, ours.irreps_in.dim)
    assert (ours(x) - ref(x)).abs().max() < 1e-10
    assert_equivariant(ours, [str(ours.irreps_in)], [str(ours.irreps_out)], tolerance=1e-10)
    with pytest.raises(ValueError, match="parity"):
        Gate("2x0o", [torch.sigmoid], "", [], "")
    with pytest.raises(ValueError):
        Gate("2x0e", [F.silu], "1x0e", [torch.sigmoid], "2x1o")
    xg = torch.randn(2, ours.irreps_in.dim, requires_grad=True)
    assert torch.autograd.gradgradcheck(ours, (xg,))


def test_norm_activation_and_norms_equivariant():
    torch.manual_seed(1)
    irreps = "4x0e+3x1o+2x2e+2x3o+1x4e"
    for layer in [NormActivation(irreps, torch.sigmoid, bias=True), LayerNorm(irreps), BatchNorm(irreps)]:
        assert_equivariant(layer, [irreps], [irreps], n_atoms=8, tolerance=1e-10)
    bn = BatchNorm(irreps)
    y = bn(Irreps(irreps).randn(10_000, -1) * 3.0).detach()
    assert 0.9 < y.pow(2).mean().item() < 1.1
    bn.eval()
    assert bn(torch.randn(4, Irreps(irreps).dim)).shape == (4, Irreps(irreps).dim)


def test_radial_and_cutoffs():
    r = torch.linspace(0.1, 5.0, 50, requires_grad=True)
    b = BesselBasis(5.0, 8, trainable=True)
    assert b(r).shape == (50, 8) and isinstance(b.frequencies, torch.nn.Parameter)
    assert torch.allclose(b(torch.tensor([1.0]))[0, 0], torch.tensor(math.sqrt(2 / 5) * math.sin(math.pi / 5)))
    assert GaussianBasis(5.0, 10)(r).shape == (50, 10)
    cut = PolynomialCutoff(5.0, p=6)
    x = torch.tensor([5.0 - 1e-4], requires_grad=True)
    (g,) = torch.autograd.grad(cut(x).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    assert cut(x).abs() < 1e-11 and g.abs() < 1e-7 and gg.abs() < 1e-2
    assert cut(torch.tensor([0.0])).item() == 1.0 and cut(torch.tensor([6.0])).item() == 0.0
    cc = CosineCutoff(2.0)
    assert torch.allclose(cc(torch.tensor([0.0, 1.0, 2.5])), torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match="positive"):
        PolynomialCutoff(0.0)


def test_scalar_mlp_variance():
    torch.manual_seed(2)
    mlp = ScalarMLP([16, 128, 128, 64])
    y = mlp(torch.randn(10_000, 16)).detach()
    assert 0.85 < y.pow(2).mean().item() < 1.15
    with pytest.raises(ValueError, match="16"):
        mlp(torch.randn(3, 8))
