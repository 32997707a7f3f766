import pytest
import torch

from clebsch.o3 import (Irrep, Irreps, angles_to_matrix, matrix_to_angles, rand_angles, rand_matrix, wigner_3j,
                        wigner_D)

e3o3 = pytest.importorskip("e3nn.o3")
F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_3j_matches_e3nn():
    for l1 in range(6):
        for l2 in range(6):
            for l3 in range(abs(l1 - l2), min(l1 + l2, 5) + 1):
                ours = wigner_3j(l1, l2, l3, dtype=F64)
                theirs = e3o3.wigner_3j(l1, l2, l3, dtype=F64)
                torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)


@pytest.mark.parametrize("ls", [(1, 1, 2), (2, 3, 4), (3, 3, 3), (8, 8, 8), (8, 4, 6), (2, 8, 7)])
def test_3j_invariance_and_norm(ls):
    C = wigner_3j(*ls, dtype=F64)
    assert C.shape == tuple(2 * l + 1 for l in ls)
    torch.testing.assert_close(C.norm(), torch.tensor(1.0, dtype=F64))
    a, b, c = rand_angles(3, generator=gen(1), dtype=F64)
    for i in range(3):
        D1, D2, D3 = (wigner_D(l, a[i], b[i], c[i]) for l in ls)
        rotated = torch.einsum("ia,jb,kc,abc->ijk", D1, D2, D3, C)
        torch.testing.assert_close(rotated, C, atol=1e-11, rtol=0)


def test_3j_orthonormal():
    # for fixed (l1, l2), the maps to every l3 are orthogonal with norm 1/(2 l3 + 1) per component
    l1, l2 = 3, 2
    blocks = [wigner_3j(l1, l2, l3, dtype=F64).reshape(-1, 2 * l3 + 1) for l3 in range(1, 6)]
    Q = torch.cat([b * (b.shape[1] ** 0.5) for b in blocks], dim=1)
    torch.testing.assert_close(Q.T @ Q, torch.eye(Q.shape[1], dtype=F64), atol=1e-12, rtol=0)


def test_3j_cached_copy_and_errors():
    a = wigner_3j(2, 2, 2)
    a.zero_()
    assert wigner_3j(2, 2, 2).abs().sum() > 0
    assert wigner_3j(1, 1, 1).dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match="l1 <= l2 \\+ l3"):
        wigner_3j(1, 1, 3)


@pytest.mark.parametrize("l", list(range(0, 13)))
def test_wigner_D_matches_e3nn(l):
    a, b, c = rand_angles(20, generator=gen(l), dtype=F64)
    torch.testing.assert_close(wigner_D(l, a, b, c), e3o3.wigner_D(l, a, b, c), atol=1e-10, rtol=0)


def test_wigner_D_is_rotation_for_l1_and_batches():
    a, b, c = rand_angles(4, 5, generator=gen(2), dtype=F64)
    torch.testing.assert_close(wigner_D(1, a, b, c), angles_to_matrix(a, b, c))
    assert wigner_D(3, a, b[0], c[0, 0]).shape == (4, 5, 7, 7)


@pytest.mark.parametrize("l", [2, 5, 10, 14])
def test_wigner_D_homomorphism_and_orthogonal(l):
    R1, R2 = rand_matrix(2, 10, generator=gen(3), dtype=F64)
    D = lambda R: wigner_D(l, *matrix_to_angles(R))  # noqa: E731
    torch.testing.assert_close(D(R1 @ R2), D(R1) @ D(R2), atol=1e-10, rtol=0)
    D1 = D(R1)
    torch.testing.assert_close(D1 @ D1.mT, torch.eye(2 * l + 1, dtype=F64).expand_as(D1), atol=1e-10, rtol=0)


def test_wigner_D_identity_and_inverse():
    z = torch.zeros((), dtype=F64)
    torch.testing.assert_close(wigner_D(4, z, z, z), torch.eye(9, dtype=F64), atol=1e-14, rtol=0)
    a, b, c = rand_angles(5, generator=gen(4), dtype=F64)
    torch.testing.assert_close(wigner_D(4, -c, -b, -a), wigner_D(4, a, b, c).mT, atol=1e-12, rtol=0)


def test_D_from_matrix_matches_e3nn_including_reflections():
    R = rand_matrix(10, generator=gen(5), dtype=F64)
    R = torch.cat([R, -R])
    irreps = "2x0e + 0o + 1o + 1e + 2e + 2o + 3x3o + 5e"
    ours = Irreps(irreps).D_from_matrix(R)
    theirs = e3o3.Irreps(irreps).D_from_matrix(R)
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)
    for ir in ["1o", "1e", "4o"]:
        torch.testing.assert_close(Irrep(ir).D_from_matrix(R), e3o3.Irrep(ir).D_from_matrix(R), atol=1e-10, rtol=0)
    torch.testing.assert_close(Irrep("1o").D_from_matrix(R), R)


def test_D_from_angles_matches_e3nn():
    a, b, c = rand_angles(7, generator=gen(6), dtype=F64)
    k = torch.tensor([0, 1, 0, 1, 1, 0, 0], dtype=F64)
    ours = Irreps("0o + 2x1e + 3o").D_from_angles(a, b, c, k)
    theirs = e3o3.Irreps("0o + 2x1e + 3o").D_from_angles(a, b, c, k)
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)


def test_D_from_matrix_bad_shape():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        Irreps("1o").D_from_matrix(torch.eye(4))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        Irrep("1o").D_from_matrix(torch.ones(3))


def test_wigner_D_gradient():
    a, b, c = (t.requires_grad_() for t in rand_angles(3, generator=gen(7), dtype=F64))
    assert torch.autograd.gradcheck(lambda a, b, c: wigner_D(3, a, b, c), (a, b, c))
