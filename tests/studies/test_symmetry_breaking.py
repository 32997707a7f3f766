"""Symmetry breaking: the floor of an equivariant fit, and its removal by a learned order parameter (float64)."""

import contextlib

import pytest
import torch
from ase import Atoms
from ase.build import molecule

from clebsch.graph import AtomicGraph, batch
from clebsch.o3 import CartesianTensor, Irreps, rand_matrix
from clebsch.studies.symmetry_breaking import (
    OrderParameter,
    OrderParameterNetwork,
    fit_symmetry_breaking,
    format_report,
    point_group,
    report,
    symmetrize,
    symmetry_floor,
)

F64 = torch.float64
SQUARE = torch.tensor([[1.0, 1, 0], [-1, 1, 0], [-1, -1, 0], [1, -1, 0]], dtype=F64)
RECTANGLE = 0.1 * SQUARE * torch.tensor([1.0, -1.0, 0.0], dtype=F64)  # stretch x, squeeze y
BREATHING = 0.05 * SQUARE  # has the square's symmetry


def square_graph(positions=SQUARE):
    return AtomicGraph.from_tensors(positions, [6] * 4, cutoff=3.5)


@contextlib.contextmanager
def float64():
    """Build in float64, so the Clebsch-Gordan buffers are exact to float64 rather than float32 cast up."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def network(irreps_order, irreps_out="1o", seed=0, elements=(6,), **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("cutoff", 3.5)
    with float64():
        return OrderParameterNetwork(list(elements), irreps_out, irreps_order, **kwargs)


def order_parameter(irreps, seed=0, **kwargs):
    return OrderParameter(irreps, generator=torch.Generator().manual_seed(seed), **kwargs).double()


def reflections_and_rotations(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = rand_matrix(n, generator=g, dtype=F64)
    R[n // 2:] = -R[n // 2:]  # half of them improper
    return R


def perovskite():
    frac = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    atoms = Atoms("BaTiO3", scaled_positions=frac, cell=[4.0, 4.0, 4.0], pbc=True)
    return AtomicGraph.from_ase(atoms, cutoff=4.5, dtype=F64)


# ----------------------------------------------------------------------------- the floor


def test_point_groups_have_the_right_orders():
    assert len(point_group(square_graph()).rotations) == 16  # D4h
    assert len(point_group(molecule("CH4")).rotations) == 24  # Td
    assert len(point_group(molecule("NH3")).rotations) == 6  # C3v
    assert len(point_group(molecule("C6H6")).rotations) == 24  # D6h
    assert len(point_group(perovskite()).rotations) == 48  # Oh
    ops = point_group(molecule("CO2"), axis_order=5)  # linear: C5 about the axis x mirrors x inversion
    assert len(ops.rotations) == 20 and ops.axis_order == 5
    # every operation maps the structure onto itself with its permutation
    g = square_graph()
    ops = point_group(g)
    assert torch.allclose(torch.einsum("gij,nj->gni", ops.rotations, SQUARE), SQUARE[ops.permutations], atol=1e-12)
    dets = torch.linalg.det(ops.rotations)
    assert int((dets < 0).sum()) == 8  # as many improper as proper operations


def test_symmetrize_is_an_orthogonal_projection_onto_what_equivariant_models_output():
    g = square_graph()
    ops = point_group(g)
    irreps = Irreps("1o + 1e + 2e")
    y = torch.randn(4, irreps.dim, dtype=F64, generator=torch.Generator().manual_seed(1))
    z = torch.randn(4, irreps.dim, dtype=F64, generator=torch.Generator().manual_seed(2))
    Py, Pz = symmetrize(y, irreps, ops), symmetrize(z, irreps, ops)
    assert torch.allclose(symmetrize(Py, irreps, ops), Py, atol=1e-12)  # idempotent
    assert torch.allclose((Py * z).sum(), (y * Pz).sum(), atol=1e-12)  # self-adjoint
    # the outputs of an (untrained, random) equivariant network are left as they are
    out = network(None, irreps_out=irreps, channels=2)(g)
    assert out.abs().max() > 1e-3
    assert torch.allclose(symmetrize(out.detach(), irreps, ops), out.detach(), atol=1e-10)


def test_floor_is_the_part_of_the_targets_that_breaks_the_symmetry():
    g = square_graph()
    assert symmetry_floor(g, BREATHING, "1o") < 1e-28
    assert symmetry_floor(g, RECTANGLE, "1o") == pytest.approx(float(RECTANGLE.pow(2).mean()), rel=1e-12)
    both = symmetry_floor(g, RECTANGLE + BREATHING, "1o")
    assert both == pytest.approx(float(RECTANGLE.pow(2).mean()), rel=1e-12)
    # per structure, a 2e target: x^2 - y^2 breaks the square's symmetry, 2z^2 - x^2 - y^2 does not
    to_2e = CartesianTensor("ij=ji").from_cartesian
    b1g = to_2e(torch.diag(torch.tensor([1.0, -1.0, 0.0], dtype=F64)))[1:]
    a1g = to_2e(torch.diag(torch.tensor([-1.0, -1.0, 2.0], dtype=F64)))[1:]
    assert symmetry_floor(g, b1g, "2e") == pytest.approx(float(b1g.pow(2).mean()), rel=1e-12)
    assert symmetry_floor(g, a1g, "2e") < 1e-28
    assert symmetry_floor(g, a1g + b1g, "2e") == pytest.approx(float(b1g.pow(2).mean()), rel=1e-12)
    # a batch: the floors weighted by their entries
    two = batch([g, square_graph(SQUARE * 1.1)])
    y = torch.cat([RECTANGLE, BREATHING])
    assert symmetry_floor(two, y, "1o") == pytest.approx(float(RECTANGLE.pow(2).sum()) / y.numel(), rel=1e-12)


def test_floor_errors_say_what_was_wrong():
    g = square_graph()
    with pytest.raises(ValueError, match=r"targets must be \[N, 3\]"):
        symmetry_floor(g, torch.zeros(4, 5, dtype=F64), "1o")
    with pytest.raises(ValueError, match="5 rows but the structure has 4 atoms"):
        symmetry_floor(g, torch.zeros(5, 3, dtype=F64), "1o")
    with pytest.raises(ValueError, match="axis_order"):
        symmetrize(torch.zeros(3, 9, dtype=F64), "4e", point_group(molecule("CO2"), axis_order=3))
    slab = Atoms("Cu", positions=[[0, 0, 0]], cell=[2.5, 2.5, 10], pbc=[True, True, False])
    with pytest.raises(ValueError, match="pbc=\\[True, True, False\\]"):
        point_group(slab)


# ----------------------------------------------------------------------------- square to rectangle


@pytest.fixture(scope="module")
def fitted_square():
    g = square_graph()
    y = RECTANGLE + BREATHING
    floor = symmetry_floor(g, y, "1o")
    small = dict(channels=4, parity=False)
    plain = fit_symmetry_breaking(network(None, **small), g, y, steps=3, lr=1.0, optimizer="lbfgs")
    model, op = network("2e", **small), order_parameter("2e", init_scale=0.1)
    broken = fit_symmetry_breaking(model, g, y, op, steps=3, lr=1.0, optimizer="lbfgs")
    return g, y, floor, plain, broken, model, op


def test_without_order_parameter_the_fit_stays_at_the_floor(fitted_square):
    _, y, floor, plain, _, _, _ = fitted_square
    assert floor > 0.5 * float(y.pow(2).mean())  # the floor is most of the signal, clearly > 0
    assert min(plain.history) >= floor - 1e-12
    assert plain.loss >= floor - 1e-12
    assert plain.loss <= floor * (1 + 1e-3)  # and the fit did reach it: the symmetric part is learned
    assert plain.order_parameter is None


def test_with_a_2e_order_parameter_the_fit_reaches_zero(fitted_square):
    g, y, floor, _, broken, _, op = fitted_square
    assert broken.loss < 1e-4 * float(y.pow(2).mean())
    # the learned parameter is a traceless symmetric matrix with the rectangle's principal axes x, y, z
    (block,), = report(op)
    Q = block["cartesian"]
    assert torch.allclose(Q, Q.T) and abs(float(Q.trace())) < 1e-12
    b1g = abs(float(Q[0, 0] - Q[1, 1]))
    assert b1g > 1e-2
    assert float(Q.triu(1).abs().max()) < 1e-2 * b1g
    assert "traceless symmetric" in format_report(op)


def test_learned_order_parameter_transforms_with_the_structure(fitted_square):
    g, y, _, _, broken, model, op = fitted_square
    D = Irreps("2e").D_from_matrix
    out = model(g, op).detach()
    for R in reflections_and_rotations(6, seed=3):
        rotated = square_graph(SQUARE @ R.T)
        turned = model(rotated, op.value.detach() @ D(R).T).detach()
        assert torch.allclose(turned, out @ R.T, atol=1e-10)
        # the rotated rectangle is fitted as well as the original
        assert float((turned - y @ R.T).pow(2).mean()) == pytest.approx(broken.loss, abs=1e-12)
        # while the unrotated parameter on the rotated square is not, for a generic rotation
        wrong = model(rotated, op).detach()
        assert float((wrong - y @ R.T).pow(2).mean()) > 1e3 * broken.loss


def test_network_is_jointly_equivariant_with_per_atom_order_parameters():
    irreps_order, irreps_out = Irreps("1o + 1e + 2e"), Irreps("0e + 1o + 1e + 2e")
    gen = torch.Generator().manual_seed(4)
    pos = torch.randn(5, 3, dtype=F64, generator=gen)
    numbers = [6, 8, 6, 1, 1]
    model = network(irreps_order, irreps_out, elements=(1, 6, 8), cutoff=5.0)
    op = order_parameter(irreps_order, per="atom", num=5, init_scale=1.0)
    out = model(AtomicGraph.from_tensors(pos, numbers, cutoff=5.0), op)
    assert out.abs().max() > 1e-3
    for R in reflections_and_rotations(4, seed=5):
        rotated = AtomicGraph.from_tensors(pos @ R.T + 1.5, numbers, cutoff=5.0)
        turned = model(rotated, op.value @ irreps_order.D_from_matrix(R).T)
        assert torch.allclose(turned, out @ irreps_out.D_from_matrix(R).T, atol=1e-10)
    # permuting the atoms (and their order parameters) permutes the outputs
    perm = torch.tensor([3, 0, 4, 2, 1])
    permuted = AtomicGraph.from_tensors(pos[perm], [numbers[i] for i in perm], cutoff=5.0)
    assert torch.allclose(model(permuted, op.value[perm]), out[perm], atol=1e-10)


# ----------------------------------------------------------------------------- a crystal


def test_polar_distortion_of_a_cubic_crystal_needs_a_polar_order_parameter():
    g = perovskite()
    y = torch.zeros(5, 3, dtype=F64)
    y[:, 2] = torch.tensor([0.02, 0.10, -0.08, -0.05, -0.05])  # Ba, Ti up; O down: tetragonal, polar
    floor = symmetry_floor(g, y, "1o")
    assert floor == pytest.approx(float(y.pow(2).mean()), rel=1e-12)  # Oh leaves no polar displacement
    kw = dict(elements=(8, 22, 56), cutoff=4.5, avg_num_neighbors=30.0, channels=4, parity=False)
    model = network("2e", **kw)
    even = fit_symmetry_breaking(model, g, y, order_parameter("2e", init_scale=0.1), steps=2, lr=1.0,
                                 optimizer="lbfgs")
    assert min(even.history) >= floor - 1e-12  # a 2e parameter keeps the centres of inversion
    model = network("1o", **kw)
    op = order_parameter("1o", init_scale=0.1)
    polar = fit_symmetry_breaking(model, g, y, op, steps=3, lr=1.0, optimizer="lbfgs")
    assert polar.loss < 1e-4 * floor
    p = report(op)[0][0]["cartesian"]
    assert float(p[:2].abs().max()) < 1e-3 * float(p[2].abs())  # learned along the tetragonal axis


# ----------------------------------------------------------------------------- the order parameter itself


def test_order_parameter_broadcast_and_errors():
    g = batch([square_graph(), square_graph(SQUARE * 1.2)])
    shared = order_parameter("2e")
    assert torch.equal(shared(g), shared.value.expand(8, 5))
    per_structure = order_parameter("1o", num=2)
    assert torch.equal(per_structure(g)[4:], per_structure.value[1].expand(4, 3))
    with pytest.raises(ValueError, match="3 structures, but the graph has 2"):
        order_parameter("1o", num=3)(g)
    with pytest.raises(ValueError, match="per-atom order parameter for 4 atoms, but the graph has 8"):
        order_parameter("1o", per="atom", num=4)(g)
    with pytest.raises(ValueError, match="per must be"):
        OrderParameter("1o", per="bond")
    small = dict(channels=2, parity=False, num_layers=1)
    with pytest.raises(ValueError, match="pass an order parameter"):
        network("2e", **small)(square_graph())
    plain = network(None, **small)
    with pytest.raises(ValueError, match="takes no order parameter"):
        plain(square_graph(), torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match=r"atomic number 8, which the network does not know \(elements: \[6\]\)"):
        plain(AtomicGraph.from_tensors(SQUARE, [6, 6, 8, 6], cutoff=3.5))
    with pytest.raises(ValueError, match="raise lmax"):
        network(None, irreps_out="3o", lmax=2)
    with pytest.raises(ValueError, match="set parity=True"):
        network(None, irreps_out="1e", parity=False)


def test_report_gives_cartesian_forms():
    matrix = torch.tensor([[0.3, 0.1, 0.0], [0.1, -0.5, 0.0], [0.0, 0.0, 0.2]], dtype=F64)
    two = CartesianTensor("ij=ji").from_cartesian(matrix)[1:]
    value = torch.cat([torch.tensor([0.7, 0.0, -1.0, 2.0], dtype=F64), two])
    blocks = report(value, "0e + 1e + 2e")[0]
    assert [b["irrep"] for b in blocks] == ["0e", "1e", "2e"]
    assert blocks[0]["cartesian"] == pytest.approx(0.7)
    assert torch.equal(blocks[1]["cartesian"], torch.tensor([0.0, -1.0, 2.0], dtype=F64))
    assert torch.allclose(blocks[2]["cartesian"], matrix, atol=1e-12)
    axes, evals = blocks[2]["axes"], blocks[2]["eigenvalues"]
    assert torch.allclose(axes @ torch.diag(evals) @ axes.T, matrix, atol=1e-12)
    assert evals[0] >= evals[1] >= evals[2]
    with pytest.raises(ValueError, match="needs the irreps"):
        report(value)
    with pytest.raises(ValueError, match="does not match irreps 1x1o"):
        report(value, "1o")
