"""The MACE symmetric contraction on monomials equals the direct sum over the full coupling tensors."""

import pytest
import torch

from clebsch.models._symmetric_contraction import SymmetricContraction, coupling_basis
from clebsch.o3 import Irreps


def direct(sc: SymmetricContraction, a: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
    """``sum_nu sum_p W_nu[z, p, k] U_nu[p, M, a_1..a_nu] A_a1 ... A_anu`` with every index summed."""
    out = 0
    letters = "bcdefg"
    for nu in range(1, sc.correlation + 1):
        blocks = [coupling_basis(sc.irreps_in, m.ir, nu) for m in sc.irreps_out]
        d = sc.irreps_in.dim
        u = torch.zeros(sum(b.shape[0] for b in blocks), sc.irreps_out.dim, *([d] * nu), dtype=torch.float64)
        p0 = 0
        for b, sl in zip(blocks, sc.irreps_out.slices()):
            u[p0 : p0 + b.shape[0], sl] = b
            p0 += b.shape[0]
        w = sc.weights[nu - 1].double()[species]  # [n, P, K]
        ax = letters[:nu]
        operands = [u, w] + [a] * nu
        spec = f"pm{ax},npk," + ",".join(f"nk{c}" for c in ax) + "->nkm"
        out = out + torch.einsum(spec, *operands)
    return out


def test_monomials_equal_direct_sum():
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the coupling buffers are built in the default dtype
    try:
        sc = SymmetricContraction("0e+1o+2e", "0e+1o+2e", channels=4, correlation=3, num_species=3)
        sc2 = SymmetricContraction("0e+1o", "0e+1o+1e", channels=2, correlation=2, num_species=2)
        others = [SymmetricContraction("0e+1o", "0e+1o", channels=2, correlation=c, num_species=2) for c in (1, 4)]
    finally:
        torch.set_default_dtype(default)
    a = torch.randn(11, 4, 9, dtype=torch.float64)
    species = torch.randint(0, 3, (11,))
    assert (sc(a, species) - direct(sc, a, species)).abs().max() < 1e-10
    a = torch.randn(5, 2, 4, dtype=torch.float64)
    species = torch.tensor([0, 1, 1, 0, 1])
    assert (sc2(a, species) - direct(sc2, a, species)).abs().max() < 1e-10
    for sc in others:  # degree 1 alone, and degree 4 (monomials by gathers)
        a = torch.randn(5, 2, 4, dtype=torch.float64)
        assert (sc(a, species) - direct(sc, a, species)).abs().max() < 1e-10


def _float64(build):
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the coupling buffers are built in the default dtype
    try:
        return build()
    finally:
        torch.set_default_dtype(default)


@pytest.mark.parametrize("correlation", [1, 2, 3, 4])
def test_grouped_equals_all_species_with_derivatives(correlation):
    """Atoms grouped by element give the numbers of every element's polynomial of every atom, and so do the C
    kernels, with the same first and second derivatives (forces in training) with respect to the input and
    the weights."""
    torch.manual_seed(correlation)
    sc = _float64(lambda: SymmetricContraction("0e+1o+2e", "0e+1o+2e", channels=3, correlation=correlation,
                                               num_species=5))
    species = torch.tensor([3, 0, 3, 1, 0, 0, 3, 1])  # elements 2 and 4 absent
    a0 = torch.randn(8, 3, 9, dtype=torch.float64)
    probe = torch.randn(8, 3, 9, dtype=torch.float64)
    results = []
    for f in (sc.forward_grouped, sc.forward_all_species, sc.forward_fused):
        a = a0.clone().requires_grad_(True)
        out = f(a, species)
        (g,) = torch.autograd.grad((out * probe).sum() ** 2, a, create_graph=True)
        second = torch.autograd.grad((g**2).sum(), [a, *sc.weights])
        results.append([out.detach(), g.detach(), *second])
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert (x - y).abs().max() < 1e-10 * max(1.0, y.abs().max().item())
    assert (results[0][0] - direct(sc, a0, species)).abs().max() < 1e-10


def test_forward_picks_a_path_and_handles_edge_cases():
    torch.manual_seed(0)
    sc = _float64(lambda: SymmetricContraction("0e+1o", "0e+1o", channels=2, correlation=3, num_species=4))
    for n, species in ((200, torch.randint(0, 4, (200,))), (3, torch.tensor([1, 2, 1])),  # grouped / all species
                       (100, torch.full((100,), 2)), (0, torch.zeros(0, dtype=torch.long))):  # one element / none
        a = torch.randn(n, 2, 4, dtype=torch.float64)
        out = sc(a, species)
        assert out.shape == (n, 2, 4)
        assert (out - direct(sc, a, species)).abs().max() < 1e-10 if n else True
        assert (sc.forward_grouped(a, species) - sc.forward_all_species(a, species)).abs().max() < 1e-10 if n else True


def test_float32_paths_agree():
    torch.manual_seed(1)
    sc = SymmetricContraction("0e+1o+2e", "0e+1o+2e", channels=3, correlation=3, num_species=2)
    a = torch.randn(6, 3, 9)
    species = torch.tensor([0, 1, 1, 0, 0, 1])
    assert (sc.forward_grouped(a, species) - sc.forward_all_species(a, species)).abs().max() < 1e-5
    assert (sc.forward_fused(a, species) - sc.forward_all_species(a, species)).abs().max() < 1e-5
