"""The MACE symmetric contraction on monomials equals the direct sum over the full coupling tensors."""

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


def test_gathered_monomials_equal_sliced_ones():
    """While exporting, the monomials come from gathers instead of slices: the same numbers."""
    torch.manual_seed(1)
    sc = SymmetricContraction("0e+1o+2e", "0e+1o+2e", channels=3, correlation=3, num_species=2)
    a = torch.randn(6, 3, 9)
    species = torch.tensor([0, 1, 1, 0, 0, 1])
    sliced = sc(a, species)
    sc._structured = False
    assert (sc(a, species) - sliced).abs().max() < 1e-5
