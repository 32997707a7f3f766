"""DimeNet++: its bases against PyTorch Geometric's, its triplets (periodic images included), the
contract, and the road from training to an exported file."""

import math

import numpy as np
import pytest
import torch

from clebsch.graph import AtomicGraph
from clebsch.models.dimenet import (
    DimeNetPlusPlus,
    RadialBesselBasis,
    SphericalBasis,
    spherical_bessel_zeros,
    triplet_cosines,
    triplets,
)
from clebsch.testing import CONTRACT, check_potential

from . import family_workflow
from .conftest import small_model
from .test_contract import crystal, molecule

NAME = "dimenet"
SMALL = {"num_layers": 2, "hidden_channels": 8, "int_emb_size": 4, "basis_emb_size": 4, "out_emb_channels": 8,
         "num_spherical": 3, "num_radial": 4}
CUTOFF = 4.0

dimenet_reference = pytest.importorskip("torch_geometric.nn.models.dimenet")


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# ----------------------------------------------------------------------------- bases
def test_bessel_zeros_match_scipy():
    """The zeros found by bisection are those of scipy's Bessel functions J_{l+1/2} (PyG's oracle)."""
    from scipy import special

    zeros = spherical_bessel_zeros(7, 6)
    l = np.arange(7)[:, None]
    values = np.sqrt(np.pi / (2 * zeros)) * special.jv(l + 0.5, zeros)
    assert np.abs(values).max() < 1e-13
    assert np.all(np.diff(zeros, axis=1) > 1.0) and np.all(np.diff(zeros, axis=0) > 0)  # the first ones, in order
    from torch_geometric.nn.models.dimenet_utils import Jn_zeros

    np.testing.assert_allclose(zeros, Jn_zeros(7, 6), rtol=1e-6)  # PyG's zeros are float32


@pytest.mark.parametrize("exponent", [5, 3])
def test_radial_basis_matches_pyg(float64, exponent):
    distance = torch.linspace(0.3, 4.4, 57)  # beyond the cutoff too
    ours = RadialBesselBasis(6, CUTOFF, envelope_exponent=exponent)(distance)
    theirs = dimenet_reference.BesselBasisLayer(6, CUTOFF, envelope_exponent=exponent)(distance)
    assert theirs.abs().max() > 1.0 and theirs[distance >= CUTOFF].abs().max() == 0
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)


def test_spherical_basis_matches_pyg(float64):
    """Same distances and angles (PyG takes the angle, ours its cosine); PyG's zeros are float32.
    Orders l < 4 (PyG builds its basis with sympy, slowly)."""
    exponent = 3
    gen = torch.Generator().manual_seed(0)
    distance = 0.5 + 3.7 * torch.rand(80, generator=gen)
    angle = math.pi * torch.rand(80, generator=gen)
    angle[:2] = torch.tensor([0.0, math.pi])  # collinear both ways
    theirs = dimenet_reference.SphericalBasisLayer(4, 4, CUTOFF, exponent)(distance, angle, torch.arange(80))
    sbf = SphericalBasis(4, 4, CUTOFF, exponent)
    ours = (sbf.radial(distance) * sbf.angular(torch.cos(angle))[:, :, None]).reshape(80, -1)
    assert theirs.abs().max() > 1.0
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-6 * float(theirs.abs().max()))


def test_bases_vanish_smoothly_at_the_cutoff(float64):
    r = torch.tensor([CUTOFF - 1e-3, CUTOFF], requires_grad=True)
    rbf, sbf = RadialBesselBasis(6, CUTOFF), SphericalBasis(4, 6, CUTOFF)
    for f in (rbf(r), sbf.radial(r).flatten(1)):
        value = f.sum(-1)
        (grad,) = torch.autograd.grad(value.sum(), r, create_graph=True)
        assert value[1] == 0 and grad[1].abs() < 1e-12
        assert value[0].abs() < 1e-6 and 0 < grad[0].abs() < 1e-2


# ----------------------------------------------------------------------------- triplets
def brute_force_triplets(edge_index, shifts):
    """(kj, ji) for every pair of edges k -> j, j -> i except the same edge reversed (same atoms, opposite shift)."""
    sender, receiver = edge_index.tolist()
    out = set()
    for ji in range(len(sender)):
        for kj in range(len(sender)):
            if receiver[kj] != sender[ji]:
                continue
            if sender[kj] == receiver[ji] and torch.equal(shifts[kj], -shifts[ji]):
                continue
            out.add((kj, ji))
    return out


def test_triplets_and_angles_of_a_bent_molecule(float64):
    """Water-like: 104.5° at O, 2 edges in and out of every atom, 6 triplets; each angle is π minus the bond angle."""
    theta = math.radians(104.5)
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [0.96 * math.cos(theta), 0.96 * math.sin(theta), 0.0]])
    graph = AtomicGraph.from_tensors(pos, torch.tensor([8, 1, 1]), 2.0)
    vectors = graph.edge_vectors()
    kj, ji = triplets(graph.edge_index, vectors, 3)
    assert graph.num_edges == 6 and kj.numel() == 6
    assert set(zip(kj.tolist(), ji.tolist())) == brute_force_triplets(graph.edge_index, graph.shifts)
    sender, receiver = graph.edge_index
    assert torch.all(receiver[kj] == sender[ji]) and torch.all(sender[kj] != receiver[ji])
    cosines = triplet_cosines(vectors, kj, ji)
    for c, a, b in zip(cosines.tolist(), kj.tolist(), ji.tolist()):
        k, j, i = int(sender[a]), int(sender[b]), int(receiver[b])
        u, v = pos[k] - pos[j], pos[i] - pos[j]
        bond_angle = torch.arccos(u @ v / (u.norm() * v.norm()))
        assert c == pytest.approx(math.cos(math.pi - float(bond_angle)), abs=1e-12)
    at_oxygen = cosines[sender[ji] == 0]
    assert at_oxygen.numel() == 2 and torch.allclose(at_oxygen, torch.full((2,), -math.cos(theta)), atol=1e-12)


def test_triplets_of_a_single_atom_in_a_periodic_cell(float64):
    """One atom, cubic cell 3 Å, cutoff 3.5 Å: six self-image edges; every edge continues straight on (cos 1)
    and turns by 90° four times (cos 0). Only the same edge reversed is left out, though k == i for all."""
    graph = AtomicGraph.from_tensors(torch.zeros(1, 3), torch.tensor([6]), 3.5, cell=3.0 * torch.eye(3),
                                     pbc=torch.tensor([True, True, True]))
    vectors = graph.edge_vectors()
    kj, ji = triplets(graph.edge_index, vectors, 1)
    assert graph.num_edges == 6 and kj.numel() == 30
    assert set(zip(kj.tolist(), ji.tolist())) == brute_force_triplets(graph.edge_index, graph.shifts)
    cosines = triplet_cosines(vectors, kj, ji)
    assert int((cosines - 1).abs().lt(1e-12).sum()) == 6
    assert int(cosines.abs().lt(1e-12).sum()) == 24


def test_triplets_of_a_crystal_are_identified_by_shift(float64):
    """A cell smaller than twice the cutoff: many edges join the same two atoms; the vectors tell them apart
    exactly as their cell shifts do."""
    pos, numbers, cell = crystal(3)
    graph = AtomicGraph.from_tensors(pos, numbers, 3.0, cell=cell, pbc=torch.tensor([True, True, True]))
    kj, ji = triplets(graph.edge_index, graph.edge_vectors(), graph.num_atoms)
    pairs = list(zip(kj.tolist(), ji.tolist()))
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == brute_force_triplets(graph.edge_index, graph.shifts)
    sender, receiver = graph.edge_index
    assert int((sender[kj] == receiver[ji]).sum()) > 0  # k is an image of i: kept


def test_no_edges_and_no_triplets(float64):
    """No edges: every atom has the same features. Two atoms: no triplets, yet the energy feels the distance
    and the force is minus its derivative."""
    torch.manual_seed(0)
    net = DimeNetPlusPlus(3, CUTOFF, **SMALL)
    h = net(torch.tensor([0, 1, 2]), torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3))
    assert torch.allclose(h, h[:1].expand_as(h))

    model = small_model(NAME, species=("H", "O"), cutoff=CUTOFF, **SMALL)

    def energy(d):
        pos = torch.tensor([[0.0, 0.0, 0.0], [d, 0.3, -0.2]])
        return model(AtomicGraph.from_tensors(pos, torch.tensor([1, 8]), CUTOFF))

    assert triplets(torch.tensor([[1, 0], [0, 1]]), torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]), 2)[0].numel() == 0
    out = energy(1.2)
    fd = (energy(1.2 + 1e-5)["energy"] - energy(1.2 - 1e-5)["energy"]) / 2e-5
    fd = float(fd.detach())
    assert abs(fd) > 1e-3
    assert float(out["forces"][1, 0]) == pytest.approx(-fd, rel=1e-6)


# ----------------------------------------------------------------------------- contract and workflow
def test_contract():
    model = small_model(NAME, **SMALL)
    errors = check_potential(model)
    assert set(errors) == set(CONTRACT)


def test_rotations_and_reflections_of_a_molecule():
    model = small_model(NAME, **SMALL)
    pos = molecule(2)
    numbers = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])
    out = model(AtomicGraph.from_tensors(pos, numbers, 3.0))
    from clebsch.o3 import rand_matrix

    torch.manual_seed(5)
    R = rand_matrix(dtype=torch.float64)
    for Q in (R, -R):
        other = model(AtomicGraph.from_tensors(pos @ Q.T + 0.7, numbers, 3.0))
        assert torch.allclose(other["energy"], out["energy"], atol=1e-10, rtol=0)
        assert torch.allclose(other["forces"], out["forces"] @ Q.T, atol=1e-10, rtol=0)
    assert out["forces"].abs().max() > 1e-3


def test_trains_on_ethanol_frames():
    family_workflow.check_trains_on_ethanol_frames(NAME, {**SMALL, "hidden_channels": 16, "out_emb_channels": 16})


def test_package_calculator_and_export(tmp_path):
    family_workflow.check_package_calculator_and_export(NAME, SMALL, tmp_path)


def test_whole_network_matches_pyg_with_the_same_weights(float64):
    """PyG's DimeNet++ blocks with their weights copied into ours give the same per-atom outputs on a molecule
    (PyG's final per-block projection to one channel sits in the first row of ours). PyG's angle is taken
    from the positions as PyG writes it, so the angle convention is checked too."""
    torch.manual_seed(0)
    L, N = 3, 4
    ref = dimenet_reference.DimeNetPlusPlus(hidden_channels=8, out_channels=1, num_blocks=2, int_emb_size=4,
                                            basis_emb_size=3, out_emb_channels=6, num_spherical=L, num_radial=N,
                                            cutoff=CUTOFF, output_initializer="glorot_orthogonal")
    net = DimeNetPlusPlus(3, CUTOFF, num_layers=2, hidden_channels=8, int_emb_size=4, basis_emb_size=3,
                          out_emb_channels=6, num_spherical=L, num_radial=N)
    elements = torch.tensor([1, 6, 8])
    with torch.no_grad():
        net.rbf.frequencies.copy_(ref.rbf.freq + 0.1 * torch.rand(N))  # trained frequencies
        ref.rbf.freq.copy_(net.rbf.frequencies)
        net.embedding.species.weight.copy_(ref.emb.emb.weight[elements])
        net.embedding.radial.load_state_dict(ref.emb.lin_rbf.state_dict())
        net.embedding.mix.load_state_dict(ref.emb.lin.state_dict())
        for ours, theirs in zip(net.interactions, ref.interaction_blocks):
            for a, b in [("rbf_down", "lin_rbf1"), ("rbf_up", "lin_rbf2"), ("sbf_down", "lin_sbf1"),
                         ("sbf_up", "lin_sbf2"), ("kj", "lin_kj"), ("ji", "lin_ji"), ("down", "lin_down"),
                         ("up", "lin_up"), ("skip", "lin")]:
                getattr(ours, a).load_state_dict(getattr(theirs, b).state_dict())
            for ours_layers, theirs_layers in [(ours.before_skip, theirs.layers_before_skip),
                                               (ours.after_skip, theirs.layers_after_skip)]:
                for o, t in zip(ours_layers, theirs_layers):
                    o.first.load_state_dict(t.lin1.state_dict())
                    o.second.load_state_dict(t.lin2.state_dict())
        for ours, theirs in zip(net.outputs, ref.output_blocks):
            ours.radial.load_state_dict(theirs.lin_rbf.state_dict())
            ours.up.load_state_dict(theirs.lin_up.state_dict())
            for o, t in zip(ours.layers, theirs.lins):
                o.load_state_dict(t.state_dict())
            ours.final.weight.zero_()
            ours.final.weight[:1] = theirs.lin.weight

    pos = molecule(7)
    numbers = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])
    species = torch.tensor([{1: 0, 6: 1, 8: 2}[int(z)] for z in numbers])
    graph = AtomicGraph.from_tensors(pos, numbers, CUTOFF)
    ours = net(species, graph.edge_index, graph.edge_vectors())

    j, i = graph.edge_index
    idx_kj, idx_ji = triplets(graph.edge_index, graph.edge_vectors(), len(numbers))
    idx_i, idx_j, idx_k = i[idx_ji], j[idx_ji], j[idx_kj]
    pos_ij, pos_jk = pos[idx_i] - pos[idx_j], pos[idx_j] - pos[idx_k]
    angle = torch.atan2(torch.cross(pos_ij, pos_jk, dim=1).norm(dim=-1), (pos_ij * pos_jk).sum(-1))
    dist = (pos[i] - pos[j]).norm(dim=-1)
    rbf, sbf = ref.rbf(dist), ref.sbf(dist, angle, idx_kj)
    x = ref.emb(numbers, rbf, i, j)
    P = ref.output_blocks[0](x, rbf, i, num_nodes=len(numbers))
    for interaction, output in zip(ref.interaction_blocks, ref.output_blocks[1:]):
        x = interaction(x, rbf, sbf, idx_kj, idx_ji)
        P = P + output(x, rbf, i, num_nodes=len(numbers))
    assert idx_kj.numel() > 3 * graph.num_edges  # angles matter here
    assert P.abs().max() > 0.1
    assert torch.allclose(ours[:, :1], P, rtol=0, atol=1e-5 * float(P.detach().abs().max()))  # PyG's zeros are float32
    assert ours[:, 1:].abs().max() == 0
