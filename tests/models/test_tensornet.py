"""TensorNet: its tensor algebra, the parity of its features, and the road from training to an exported file."""

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read

import clebsch
from clebsch.calculators import ClebschCalculator, export, load_exported
from clebsch.data import read_dataset
from clebsch.graph import AtomicGraph, batch
from clebsch.models import build_model
from clebsch.models.package import save_package
from clebsch.models.tensornet import PARTS, TensorNet, decompose, symmetric_product_constants, tensor_basis
from clebsch.o3 import CartesianTensor, Irreps, rand_matrix

from .test_contract import NUMBERS, molecule

ETHANOL = Path(__file__).resolve().parents[2] / "examples" / "ethanol_xtb.xyz"
CUTOFF = 4.0
SMALL = {"num_layers": 2, "channels": 8}


def orthogonal(seed, reflect):
    torch.manual_seed(seed)
    R = rand_matrix(dtype=torch.float64)
    return -R if reflect else R


@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
def test_decomposition_reconstructs_and_each_part_transforms(reflect):
    """X = I + A + S per channel; each part of R X R^T is R (part) R^T, and its coordinates rotate as 0e, 1e, 2e."""
    torch.manual_seed(0)
    x = torch.randn(5, 7, 3, 3, dtype=torch.float64)
    i, a, s = decompose(x)
    assert torch.allclose(i + a + s, x, atol=1e-14)
    eye = torch.eye(3, dtype=x.dtype)
    assert torch.allclose(i, x.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None] * eye)
    assert torch.allclose(a, -a.transpose(-1, -2))
    assert torch.allclose(s, s.transpose(-1, -2))
    assert s.diagonal(dim1=-2, dim2=-1).sum(-1).abs().max() < 1e-14

    R = orthogonal(1, reflect)
    for part, rotated in zip((i, a, s), decompose(R @ x @ R.T)):
        assert torch.allclose(rotated, R @ part @ R.T, atol=1e-13)

    # coordinates in the adapted basis: the parts land on their own coordinates and rotate by the Wigner matrices
    B = tensor_basis()
    assert torch.allclose(torch.einsum("kij,lij->kl", B, B), torch.eye(9, dtype=B.dtype), atol=1e-14)
    coords = torch.einsum("...ij,kij->...k", x, B)
    parts = torch.tensor(PARTS)
    for p, part in enumerate((i, a, s)):
        c = torch.einsum("...ij,kij->...k", part, B)
        assert torch.allclose(c[..., parts == p], coords[..., parts == p], atol=1e-14)
        assert c[..., parts != p].abs().max() < 1e-14
    rotated = torch.einsum("...ij,kij->...k", R @ x @ R.T, B)
    D = Irreps("0e + 1e + 2e").D_from_matrix(R)
    assert torch.allclose(rotated, coords @ D.T, atol=1e-13)
    # the skew and symmetric coordinates are those of clebsch.o3.CartesianTensor
    assert torch.allclose(coords[..., 1:4], CartesianTensor("ij=-ji").from_cartesian(x), atol=1e-14)
    assert torch.allclose(coords[..., 4:], CartesianTensor("ij=ji").from_cartesian(x)[..., 1:], atol=1e-14)


def test_symmetric_product_constants():
    """``(y ⊗ m) @ T`` are the coordinates of YM + MY."""
    torch.manual_seed(2)
    B = tensor_basis()
    y, m = torch.randn(4, 9, dtype=torch.float64), torch.randn(4, 9, dtype=torch.float64)
    Y, M = torch.einsum("nk,kij->nij", y, B), torch.einsum("nk,kij->nij", m, B)
    expected = torch.einsum("nij,kij->nk", Y @ M + M @ Y, B)
    got = (y[:, :, None] * m[:, None, :]).flatten(-2) @ symmetric_product_constants(B)
    assert torch.allclose(got, expected, atol=1e-13)


@pytest.mark.parametrize("native", [True, False], ids=["kernels", "pytorch"])
def test_symmetric_product_of_the_algebra(native, monkeypatch):
    """``TensorAlgebra.symmetric_product`` (a sparse bilinear map of the coordinates) is YM + MY of the
    matrices, 2 Y^2 for one operand, with first and second derivatives (force training) in float64."""
    from clebsch.models.tensornet import TensorAlgebra

    if not native:
        monkeypatch.setenv("CLEBSCH_NATIVE", "0")
    torch.manual_seed(3)
    algebra = TensorAlgebra().double()
    B = tensor_basis()
    y = torch.randn(5, 9, 6, dtype=torch.float64, requires_grad=True)  # [atoms, coordinates, channels]
    m = torch.randn(5, 6, 9, dtype=torch.float64).transpose(1, 2).requires_grad_()  # strided
    Y, M = torch.einsum("nkc,kij->ncij", y, B), torch.einsum("nkc,kij->ncij", m, B)
    expected = torch.einsum("ncij,kij->nkc", Y @ M + M @ Y, B)
    assert torch.allclose(algebra.symmetric_product(y, m), expected, atol=1e-13)
    square = torch.einsum("ncij,kij->nkc", 2 * Y @ Y, B)
    assert torch.allclose(algebra.symmetric_product(y, y), square, atol=1e-13)
    assert torch.autograd.gradcheck(algebra.symmetric_product, (y, m))
    assert torch.autograd.gradgradcheck(algebra.symmetric_product, (y, m))
    assert torch.autograd.gradgradcheck(lambda a: algebra.symmetric_product(a, a), (y,))


def representation_and_graph(seed=1):
    torch.manual_seed(0)
    with torch.random.fork_rng():
        torch.set_default_dtype(torch.float64)
        try:
            net = TensorNet(3, 3.0, **SMALL)
        finally:
            torch.set_default_dtype(torch.float32)
    species = torch.tensor([{6: 1, 8: 2, 1: 0}[int(z)] for z in NUMBERS])
    graph = AtomicGraph.from_tensors(molecule(seed), NUMBERS, 3.0)
    return net.double(), species, graph


def test_features_of_a_reflected_molecule():
    """Reflecting the molecule transforms its features: scalars unchanged, skew parts as polar vectors, S as 2e.

    The skew part of an atom's tensor is built from the edge directions, which are polar vectors: under
    a reflection it changes sign relative to R A R^T (the rule of a true rank-2 tensor, whose skew part
    would be a pseudovector). The test tells the two rules apart.
    """
    net, species, graph = representation_and_graph()
    vectors = graph.edge_vectors()
    h = net(species, graph.edge_index, vectors)
    R = orthogonal(3, reflect=True)
    assert torch.det(R) < 0
    h_reflected = net(species, graph.edge_index, vectors @ R.T)
    D = net.irreps_out.D_from_matrix(R)
    assert torch.allclose(h_reflected, h @ D.T, atol=1e-12, rtol=0)

    c = net.channels
    a = h[:, c:4 * c].reshape(-1, c, 3)
    a_reflected = h_reflected[:, c:4 * c].reshape(-1, c, 3)
    assert a.abs().max() > 1e-3 and h[:, 4 * c:].abs().max() > 1e-3
    assert torch.allclose(a_reflected, a @ R.T, atol=1e-12)  # polar: a -> R a
    assert (a_reflected - torch.det(R) * a @ R.T).abs().max() > 1e-3  # not a pseudovector
    # as matrices: A -> det(R) R A R^T, S -> R S R^T
    skew, sym = CartesianTensor("ij=-ji"), CartesianTensor("ij=ji")
    A, A_reflected = skew.to_cartesian(a), skew.to_cartesian(a_reflected)
    assert torch.allclose(A_reflected, torch.det(R) * R @ A @ R.T, atol=1e-12)
    s = h[:, 4 * c:].reshape(-1, c, 5)
    s_reflected = h_reflected[:, 4 * c:].reshape(-1, c, 5)
    zero = torch.zeros_like(s[..., :1])
    S, S_reflected = sym.to_cartesian(torch.cat([zero, s], -1)), sym.to_cartesian(torch.cat([zero, s_reflected], -1))
    assert torch.allclose(S_reflected, R @ S @ R.T, atol=1e-12)


def test_isolated_atom_features_depend_on_species_only():
    net, species, graph = representation_and_graph()
    empty = torch.zeros(2, 0, dtype=torch.long)
    h = net(species, empty, torch.zeros(0, 3, dtype=torch.float64))
    assert torch.allclose(h, h[:1].expand_as(h))
    assert h[:, net.channels:].abs().max() == 0  # no edge, no direction


def ethanol(n, stride=25):
    return read_dataset(ETHANOL, CUTOFF, index=f"0:{n * stride}:{stride}", dtype=torch.float32)


def test_trains_packages_loads_and_exports(tmp_path):
    """A few dozen Adam steps lower the loss clearly; the model then packages, runs in the ASE calculator and
    exports to a .pt2 file that gives the same energy and forces."""
    graphs = ethanol(8)
    g = batch(graphs)
    energy, forces = g.targets["energy"], g.targets["forces"]
    torch.manual_seed(0)
    model = build_model({
        "name": "tensornet", "species": ["H", "C", "O"], "cutoff": CUTOFF,
        "atomic_energies": [float(energy.mean() / 9)] * 3, "scale": float(forces.pow(2).mean().sqrt()),
        "outputs": ["energy", "forces", "dipole"], "num_layers": 2, "channels": 16,
    }).train()

    def loss_fn():
        out = model(g)
        return ((out["energy"] - energy) / 9).pow(2).mean() + (out["forces"] - forces).pow(2).mean()

    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    initial = float(loss_fn().detach())
    for _ in range(40):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
    final = float(loss_fn().detach())
    print(f"loss {initial:.4g} -> {final:.4g}")
    assert final < initial / 4, f"loss {initial:.4g} -> {final:.4g}"
    model.eval()

    # package, load, ASE calculator
    path = save_package(model, tmp_path / "tensornet.pt")
    loaded = clebsch.load(path, dtype=torch.float64)
    assert loaded.config == model.config
    atoms = read(ETHANOL, index=7)
    atoms.rattle(0.02, seed=0)
    direct = ClebschCalculator(model.double(), skin=0.0)
    from_file = ClebschCalculator(path, skin=0.0)
    direct.calculate(atoms, ["energy", "forces", "dipole"])
    from_file.calculate(atoms, ["energy", "forces", "dipole"])
    assert from_file.results["energy"] == pytest.approx(direct.results["energy"], abs=1e-9)
    np.testing.assert_allclose(from_file.results["forces"], direct.results["forces"], atol=1e-9)
    np.testing.assert_allclose(from_file.results["dipole"], direct.results["dipole"], atol=1e-9)

    # torch.export: the same energy and forces from the exported file, directly and through the calculator
    exported_path = export(loaded, tmp_path / "tensornet.pt2", dtype="float64")
    exported = load_exported(exported_path)
    graph = AtomicGraph.from_tensors(torch.tensor(atoms.positions), torch.tensor(atoms.numbers), CUTOFF)
    ref, got = loaded(graph), exported(graph)
    assert torch.allclose(got["energy"], ref["energy"].detach(), atol=1e-10, rtol=0)
    assert torch.allclose(got["forces"], ref["forces"].detach(), atol=1e-10, rtol=0)
    assert ref["forces"].abs().max() > 1e-3
    via_export = ClebschCalculator(exported_path, skin=0.0)
    via_export.calculate(atoms, ["energy", "forces"])
    assert via_export.results["energy"] == pytest.approx(direct.results["energy"], abs=1e-9)
    np.testing.assert_allclose(via_export.results["forces"], direct.results["forces"], atol=1e-9)
