"""Element-dependent linear maps, column maps, and the shared layer helpers (gates, radial bases)."""

import pytest
import torch

from clebsch.nn import FullyConnectedTensorProduct, SpeciesLinear, gate_irreps, make_gate, radial_basis_of
from clebsch.nn._index import ColumnMap
from clebsch.o3 import Irreps


@pytest.mark.parametrize("num_species", [1, 3, 12])  # every element's output / each atom's weights
@pytest.mark.parametrize("irreps", [("4x0e+3x1o+2x2e", "4x0e+3x1o+2x2e"), ("3x0e+2x1o+4x0e+1x2e", "5x0e+2x1o+3x1e+2x0e")])
def test_species_linear_equals_product_with_onehot(irreps, num_species):
    a, b = irreps
    torch.manual_seed(0)
    tp = FullyConnectedTensorProduct(a, f"{num_species}x0e", b)
    torch.manual_seed(0)
    lin = SpeciesLinear(a, b, num_species)
    assert (lin.all_species is not None) == (num_species <= SpeciesLinear.all_species_limit)
    assert lin.weight_numel == tp.weight_numel and torch.equal(lin.weight, tp.weight)  # same weights, same init
    species = torch.randint(0, num_species, (7,))
    x0 = torch.randn(7, tp.irreps_in1.dim)
    probe = torch.randn(7, tp.irreps_out.dim)
    results = []
    for f in (lambda x: lin(x, species), lambda x: tp(x, torch.nn.functional.one_hot(species, num_species).double())):
        x = x0.clone().requires_grad_(True)
        out = f(x)
        (g,) = torch.autograd.grad(((out * probe).sum()) ** 2, x, create_graph=True)
        (gw,) = torch.autograd.grad((g**2).sum(), lin.weight if len(results) == 0 else tp.weight)
        results.append([out.detach(), g.detach(), gw])
    for u, v in zip(*results):
        assert (u - v).abs().max() < 1e-10
    assert set(lin.state_dict()) == set(tp.state_dict()) == {"weight"}  # models saved with the product still load


def test_column_map_kinds_and_gradients():
    m = torch.nn.Module()
    cases = {
        "identity": ColumnMap(m, "_a", [0, 1, 2], 3),
        "permute": ColumnMap(m, "_b", [2, 0, 1], 3),
        "gather": ColumnMap(m, "_c", [2, 2, 0], 3),
        "scatter": ColumnMap(m, "_d", [3, 0, 3], 4, place=True),
    }
    assert {k: c.kind for k, c in cases.items()} == {k: k for k in cases}
    assert ColumnMap(m, "_e", [1, 2, 0], 3, place=True).kind == "permute"
    x = torch.randn(2, 3, requires_grad=True)
    for name, cmap in cases.items():
        src = {"identity": [0, 1, 2], "permute": [2, 0, 1], "gather": [2, 2, 0]}.get(name)
        if src is not None:
            expect = x[:, src]
        else:
            expect = torch.zeros(2, 4).index_add(1, torch.tensor([3, 0, 3]), x)
        assert torch.equal(cmap(m, x), expect)
        assert torch.autograd.gradcheck(lambda t, c=cmap: c(m, t), (x,))
        assert torch.autograd.gradgradcheck(lambda t, c=cmap: c(m, t), (x,))
    placed = ColumnMap(m, "_f", [1, 2, 0], 3, place=True)(m, x)  # y[:, src[k]] = x[:, k]
    assert torch.equal(placed[:, [1, 2, 0]], x)


def test_gate_and_radial_helpers_are_shared():
    from clebsch.models import nequip, schnet, segnn

    scalars, gates, gated = gate_irreps(Irreps("4x0e + 2x1o + 0o + 1x2e"))
    assert (str(scalars), str(gates), str(gated)) == ("4x0e+1x0o", "3x0e", "2x1o+1x2e")
    g = make_gate("4x0e + 0o + 2x1o")
    assert str(g.irreps_out) == "4x0e+1x0o+2x1o"
    assert nequip.make_gate is make_gate and nequip.gate_irreps is gate_irreps  # old imports still work
    layer = segnn.SteerableLayer("2x0e + 2x1o", "0e + 1o", "3x0e + 2x1o")
    assert str(layer.gate.irreps_in) == str(make_gate("3x0e + 2x1o").irreps_in)
    assert schnet.radial_basis_of is radial_basis_of
    assert radial_basis_of("bessel", 4.0, 5)(torch.tensor([1.0, 2.0])).shape == (2, 5)
    with pytest.raises(ValueError, match="radial_basis"):
        radial_basis_of("chebyshev", 4.0, 5)
