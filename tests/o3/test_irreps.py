import pickle

import pytest
import torch

from clebsch.o3 import Irrep, Irreps, MulIr


def test_irrep_parse_and_properties():
    ir = Irrep("1o")
    assert (ir.l, ir.p, ir.dim) == (1, -1, 3)
    assert Irrep(1, -1) == ir and Irrep((1, -1)) == ir and Irrep(ir) is ir
    assert Irrep("3y") == Irrep(3, -1) and Irrep("2y") == Irrep(2, 1)
    assert repr(Irrep(2, 1)) == "2e" and str(Irrep(0, -1)) == "0o"
    assert Irrep("0e").is_scalar() and not Irrep("0o").is_scalar()
    assert hash(Irrep("1o")) == hash(Irrep(1, -1))
    assert pickle.loads(pickle.dumps(ir)) == ir


def test_irrep_order_matches_e3nn():
    e3o3 = pytest.importorskip("e3nn.o3")
    names = ["2e", "0o", "1e", "0e", "1o", "3o", "2o"]
    assert [repr(i) for i in sorted(Irrep(n) for n in names)] == [repr(i) for i in sorted(e3o3.Irrep(n) for n in names)]
    assert [repr(i) for i in Irrep.iterator(3)] == [repr(i) for i in e3o3.Irrep.iterator(3)]


def test_irrep_product():
    assert list(Irrep("1o") * Irrep("2e")) == [Irrep("1o"), Irrep("2o"), Irrep("3o")]
    assert list(Irrep("0e") * "1e") == [Irrep("1e")]
    assert 3 * Irrep("1o") == Irreps("3x1o")


def test_irrep_immutable():
    ir = Irrep("1o")
    with pytest.raises(AttributeError):
        ir.l = 2


@pytest.mark.parametrize("bad", [(2, 0), (-1, 1), (1.5, 1)])
def test_irrep_bad_args(bad):
    with pytest.raises(ValueError, match=str(bad[0]) if bad[1] != 0 else "got 0"):
        Irrep(*bad)


def test_irreps_basic():
    x = Irreps("16x0e + 8x1o + 2e")
    assert len(x) == 3 and x[1] == MulIr(8, Irrep("1o"))
    assert x[1].mul == 8 and x[1].ir == Irrep("1o") and x[1].dim == 24
    assert x.dim == 16 + 24 + 5 and x.num_irreps == 25 and x.lmax == 2
    assert x.ls == [0] * 16 + [1] * 8 + [2]
    assert x.slices() == [slice(0, 16), slice(16, 40), slice(40, 45)]
    assert repr(x) == "16x0e+8x1o+1x2e"
    assert Irreps(repr(x)) == x and hash(Irreps(repr(x))) == hash(x)
    assert isinstance(x[:2], Irreps) and x[:2] == Irreps("16x0e+8x1o")
    assert x.count("1o") == 8 and x.count(Irrep("3o")) == 0
    assert "2e" in x and "2o" not in x
    assert Irreps("") == Irreps() and Irreps().dim == 0
    assert Irreps([(2, "1o"), "0e", Irrep("2e")]) == Irreps("2x1o+0e+2e")
    assert pickle.loads(pickle.dumps(x)) == x


def test_irreps_arithmetic():
    a, b = Irreps("1o"), Irreps("2x0e")
    assert a + b == Irreps("1o + 2x0e")
    assert a * 2 == Irreps("1o + 1o") and 2 * a == a * 2
    assert a + "0e" == Irreps("1o+0e")


def test_simplify_sort_filter():
    assert Irreps("1e + 1e + 0e + 0x2o + 1e").simplify() == Irreps("2x1e+0e+1e")
    s = Irreps("2o + 1e + 0e + 1e").sort()
    assert s.irreps == Irreps("0e+1e+1e+2o") and s.p == (3, 1, 0, 2) and s.inv == (2, 1, 3, 0)
    x = Irreps("1o + 2e + 0e + 3x1o")
    assert x.filter(keep="1o") == Irreps("1o + 3x1o")
    assert x.filter(drop=["1o", "0e"]) == Irreps("2e")
    assert x.filter(lmax=1) == Irreps("1o + 0e + 3x1o")
    assert x.filter(keep=lambda m: m.mul > 1) == Irreps("3x1o")
    assert x.regroup() == Irreps("0e + 4x1o + 2e")


def test_sort_matches_e3nn():
    e3o3 = pytest.importorskip("e3nn.o3")
    s = "3x2o + 1e + 0e + 1o + 2x1e + 0o"
    ours, theirs = Irreps(s).sort(), e3o3.Irreps(s).sort()
    assert repr(ours.irreps) == repr(theirs.irreps) and ours.p == theirs.p and ours.inv == theirs.inv


def test_spherical_harmonics_irreps():
    assert Irreps.spherical_harmonics(3) == Irreps("0e + 1o + 2e + 3o")
    assert Irreps.spherical_harmonics(2, p=1) == Irreps("0e + 1e + 2e")


@pytest.mark.parametrize("bad, token", [("8x1q", "1q"), ("-1e", "-1e"), ("2x0e + ax1o", "a"), ("1o + ", "''")])
def test_irreps_bad_strings(bad, token):
    with pytest.raises(ValueError) as e:
        Irreps(bad)
    assert token in str(e.value)


def test_randn():
    g = torch.Generator().manual_seed(0)
    x = Irreps("5x0e + 10x1o").randn(5, -1, 3, generator=g, dtype=torch.float64)
    assert x.shape == (5, 35, 3)
    y = Irreps("4x2o").randn(7, -1, normalization="norm", generator=g, dtype=torch.float64)
    torch.testing.assert_close(y.reshape(7, 4, 5).norm(dim=-1), torch.ones(7, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="-1"):
        Irreps("0e").randn(3, 3)
