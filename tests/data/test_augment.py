"""Rotation augmentation: the targets of a turned structure are the turned targets.

The oracle is a float64 equivariant model (NequIP): its outputs on a structure,
stored as that structure's targets and turned by :func:`rotate_graph`, must equal
its outputs on the turned structure -- for every kind of declaration (vectors,
Cartesian tensors of rank 2, irreps, per structure, per atom and per edge,
coefficients and matrix blocks in an atom-centred basis), one rotation per
structure of a batch, reflections included.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from clebsch.data.augment import augment_batch, random_rotation, rotate_graph
from clebsch.graph import AtomicGraph, batch
from clebsch.testing import float64_model

CUTOFF = 3.0
OUTPUTS = ["energy", "forces", "stress", "dipole", "polarizability", "born_charges", "charges",
           "shielding", "gap", "moment", "block"]
DECLARED = {
    "shielding": {"level": "atom", "cartesian": "ij", "unit": "ppm"},
    "gap": {"level": "structure", "irreps": "0e", "reduce": "mean", "unit": "eV"},
    "moment": {"level": "structure", "irreps": "1e + 2e + 0o"},
    "block": {"level": "edge", "irreps": "0e + 1o + 1e + 2e"},
}
BASIS_FILE = Path(__file__).parents[2] / "examples" / "water_clusters.basis.json"
BASIS_TARGETS = {
    "density": {"level": "atom", "basis": {"file": str(BASIS_FILE), "key": "aux"}},
    "fock_onsite": {"level": "atom", "basis": {"file": str(BASIS_FILE), "key": "ao"}, "matrix": True},
    "fock": {"level": "edge", "basis": {"file": str(BASIS_FILE), "key": "ao"}, "matrix": True},
}


@pytest.fixture(scope="module")
def model():
    config = {"name": "nequip", "species": ["H", "C", "O"], "cutoff": CUTOFF, "num_layers": 2, "channels": 4,
              "lmax": 2, "atomic_energies": [-0.5, -1.0, -1.5], "outputs": OUTPUTS, "targets": DECLARED}
    return float64_model(config, seed=0, randomize_zeros=True)


def molecule(seed, n=7):
    gen = np.random.default_rng(seed)
    pos = []
    while len(pos) < n:
        p = gen.uniform(-1.5, 1.5, size=3)
        if all(np.linalg.norm(p - q) > 0.9 for q in pos):
            pos.append(p)
    return torch.tensor(np.array(pos)) + 0.7  # away from the origin: the rotation is about the origin


def crystal(seed):
    gen = np.random.default_rng(seed)
    cell = np.diag([2.6, 2.8, 3.0]) + gen.normal(0, 0.15, (3, 3))
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.1, 0.4], [0.1, 0.6, 0.2], [0.6, 0.5, 0.7]])
    return torch.tensor(frac @ cell), torch.tensor(cell)


def structures():
    """A molecule and a periodic crystal in one batch, each holding its own outputs as targets."""
    a = AtomicGraph.from_tensors(molecule(1), torch.tensor([6, 6, 8, 1, 1, 1, 1]), CUTOFF)
    pos, cell = crystal(2)
    b = AtomicGraph.from_tensors(pos, torch.tensor([6, 8, 1, 1]), CUTOFF, cell=cell, pbc=torch.tensor([True] * 3))
    return batch([a, b])


def labelled(model, graph):
    out = model(graph, compute_stress=True)
    graph = graph.clone()
    graph.targets = {name: out[name].detach() for name in OUTPUTS}
    graph.per_atom_targets = tuple(n for n in OUTPUTS if model.targets[n].level == "atom")
    graph.per_edge_targets = tuple(n for n in OUTPUTS if model.targets[n].level == "edge")
    return graph


@pytest.mark.parametrize("reflect", [False, True], ids=["rotations", "with_a_reflection"])
def test_turned_targets_are_the_targets_of_the_turned_structures(model, reflect):
    graph = labelled(model, structures())
    R = random_rotation(torch.Generator().manual_seed(5), num=2)
    if reflect:
        R[1] = -R[1]  # the crystal is reflected: pseudovectors (1e) and the 0o part flip relative to vectors
    turned = rotate_graph(graph, R, model.targets)
    assert torch.equal(turned.edge_index, graph.edge_index)
    torch.testing.assert_close(turned.edge_lengths(), graph.edge_lengths(), atol=1e-12, rtol=0)
    expected = model(turned, compute_stress=True)
    for name in OUTPUTS:
        torch.testing.assert_close(turned.targets[name], expected[name].detach(), atol=1e-9, rtol=1e-9,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # the check is not empty: every vector and tensor target moved
    for name in ("forces", "dipole", "polarizability", "born_charges", "shielding", "moment", "block", "stress"):
        assert (turned.targets[name] - graph.targets[name]).abs().max() > 1e-6, name
    assert graph.targets["stress"][1].abs().max() > 1e-6  # the crystal's stress is not trivially zero
    torch.testing.assert_close(turned.targets["energy"], graph.targets["energy"], atol=0, rtol=0)


def test_basis_coefficients_and_matrix_blocks_turn_and_missing_entries_stay_missing():
    model = float64_model({"name": "nequip", "species": ["H", "O"], "cutoff": 4.0, "num_layers": 1, "channels": 4,
                           "lmax": 2, "outputs": ["energy", *BASIS_TARGETS], "targets": BASIS_TARGETS},
                          seed=1, randomize_zeros=True)
    water = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]], dtype=torch.float64)
    graph = AtomicGraph.from_tensors(water + 0.3, torch.tensor([8, 1, 1]), 4.0)
    out = model(graph)
    aux = model.targets["density"].basis
    density = out["density"].detach().clone()
    for i, z in enumerate(graph.numbers.tolist()):  # the functions an element lacks are missing, as the reader makes them
        lacks = torch.ones(density.shape[1], dtype=torch.bool)
        lacks[aux.slots(z)] = False
        density[i, lacks] = float("nan")
    assert torch.isnan(density).any() and torch.isfinite(density).any()
    graph.targets = {"density": density, "fock_onsite": out["fock_onsite"].detach(), "fock": out["fock"].detach()}
    graph.per_atom_targets = ("density", "fock_onsite")
    graph.per_edge_targets = ("fock",)
    R = random_rotation(torch.Generator().manual_seed(2))
    turned = rotate_graph(graph, R, model.targets)
    expected = model(turned)
    got = turned.targets["density"]
    assert torch.equal(torch.isnan(got), torch.isnan(density))
    have = ~torch.isnan(got)
    torch.testing.assert_close(got[have], expected["density"].detach()[have], atol=1e-9, rtol=1e-9)
    for name in ("fock_onsite", "fock"):
        torch.testing.assert_close(turned.targets[name], expected[name].detach(), atol=1e-9, rtol=1e-9)


def test_augment_batch_turns_each_structure_by_its_own_rotation(model):
    graph = labelled(model, structures())
    before = graph.clone()
    turned = augment_batch(graph, model.targets, torch.Generator().manual_seed(0))
    # the input is left as it was
    assert torch.equal(graph.positions, before.positions) and torch.equal(graph.targets["forces"], before.targets["forces"])
    # recover each structure's rotation from its positions (least squares) and check that they differ
    rotations = []
    for b in range(2):
        rows = graph.batch == b
        x, y = graph.positions[rows], turned.positions[rows]
        R = torch.linalg.lstsq(x, y).solution.T
        torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-9, rtol=0)
        assert torch.linalg.det(R) == pytest.approx(1.0, abs=1e-9)
        torch.testing.assert_close(turned.targets["forces"][rows], graph.targets["forces"][rows] @ R.T,
                                   atol=1e-9, rtol=1e-9)
        rotations.append(R)
    assert (rotations[0] - rotations[1]).abs().max() > 1e-3
    torch.testing.assert_close(turned.cell[1], graph.cell[1] @ rotations[1].T, atol=1e-9, rtol=0)
    expected = model(turned, compute_stress=True)
    for name in ("energy", "forces", "stress", "dipole", "block"):
        torch.testing.assert_close(turned.targets[name], expected[name].detach(), atol=1e-9, rtol=1e-9)
    # seeded: the same generator state gives the same rotations
    again = augment_batch(graph, model.targets, torch.Generator().manual_seed(0))
    assert torch.equal(again.positions, turned.positions)


def test_float32_batches_and_missing_structures():
    g1 = AtomicGraph.from_tensors(molecule(3).float(), torch.tensor([6, 8, 1, 1, 1, 1, 1]), CUTOFF,
                                  targets={"energy": torch.tensor([1.0]), "dipole": torch.tensor([[0.1, 0.2, 0.3]]),
                                           "weight": torch.tensor([2.0])})
    g2 = AtomicGraph.from_tensors(molecule(4).float(), torch.tensor([6, 8, 1, 1, 1, 1, 1]), CUTOFF,
                                  targets={"energy": torch.tensor([2.0]), "weight": torch.tensor([1.0]),
                                           "dipole": torch.full((1, 3), float("nan"))})
    graph = batch([g1, g2])
    turned = augment_batch(graph, generator=torch.Generator().manual_seed(1))
    assert turned.positions.dtype == torch.float32 and turned.targets["dipole"].dtype == torch.float32
    assert torch.isnan(turned.targets["dipole"][1]).all() and torch.isfinite(turned.targets["dipole"][0]).all()
    assert float(turned.targets["dipole"][0].norm()) == pytest.approx(float(g1.targets["dipole"].norm()), rel=1e-6)
    assert torch.equal(turned.targets["weight"], graph.targets["weight"])
    torch.testing.assert_close(turned.edge_lengths(), graph.edge_lengths(), atol=1e-5, rtol=0)


def test_rotations_are_proper_and_uniform():
    n = 4000
    R = random_rotation(torch.Generator().manual_seed(0), num=n)
    eye = torch.eye(3, dtype=torch.float64)
    assert (R @ R.transpose(1, 2) - eye).abs().max() < 1e-12
    assert torch.allclose(torch.linalg.det(R), torch.ones(n, dtype=torch.float64), atol=1e-12)
    # Haar measure on SO(3): E[R] = 0, E[tr R] = 0, E[(tr R)^2] = 1, and R e is uniform on the sphere
    # (E[x^2] = 1/3 per axis); sampling errors at n = 4000 are about 0.01
    assert R.mean(dim=0).abs().max() < 0.05
    trace = R.diagonal(dim1=1, dim2=2).sum(-1)
    assert abs(float(trace.mean())) < 0.06
    assert float((trace ** 2).mean()) == pytest.approx(1.0, abs=0.08)
    image = R[:, :, 2]
    assert torch.allclose((image ** 2).mean(dim=0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.03)
    # rotation angles follow (1 - cos t) / pi on [0, pi]: mean angle pi/2 + 2/pi
    angle = torch.arccos(((trace - 1) / 2).clamp(-1, 1))
    assert float(angle.mean()) == pytest.approx(np.pi / 2 + 2 / np.pi, abs=0.05)
    again = random_rotation(torch.Generator().manual_seed(0), num=n)
    assert torch.equal(again, R)
    assert random_rotation(dtype=torch.float32).dtype == torch.float32


def test_errors_name_what_was_wrong():
    g = AtomicGraph.from_tensors(molecule(5), torch.tensor([6, 8, 1, 1, 1, 1, 1]), CUTOFF,
                                 targets={"magmoms": torch.zeros(7, 3)})
    with pytest.raises(ValueError, match=r"cannot rotate target 'magmoms': it has no declaration"):
        rotate_graph(g, random_rotation())
    g.targets = {}
    with pytest.raises(ValueError, match=r"R must be one 3x3 matrix or one per structure \(\[1, 3, 3\]\)"):
        rotate_graph(g, torch.eye(3).expand(2, 3, 3))
    with pytest.raises(ValueError, match=r"R is not orthogonal"):
        rotate_graph(g, 2 * torch.eye(3, dtype=torch.float64))
