import numpy as np
import pytest
import torch

from clebsch.graph import AtomicGraph, bond_graph, knn_graph, radius_graph

from graph_reference import brute_force_pairs, edge_set, rng  # noqa: F401 (fixture)


def _random_positions(rng, n, cell, min_sep=0.5):
    out = []
    while len(out) < n:
        p = rng.random(3) @ cell
        if all(np.linalg.norm(p - q) > min_sep for q in out):
            out.append(p)
    return np.array(out)


CASES = {
    "open": (None, (False, False, False), 3.0),
    "orthorhombic": (np.diag([5.0, 6.0, 7.0]), (True, True, True), 3.0),
    "triclinic": (np.array([[5.0, 0.0, 0.0], [1.5, 4.5, 0.0], [-1.0, 0.8, 5.2]]), (True, True, True), 3.2),
    "small_cell": (np.array([[2.6, 0.0, 0.0], [0.7, 2.4, 0.0], [0.3, -0.5, 2.8]]), (True, True, True), 5.0),
    "mixed_pbc": (np.diag([4.0, 4.5, 9.0]), (True, False, True), 3.5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_radius_graph_matches_brute_force(name, rng):
    cell, pbc, cutoff = CASES[name]
    box = np.diag([6.0, 6.0, 6.0]) if cell is None else cell
    pos = _random_positions(rng, 9, box)
    # move some atoms outside the cell: the neighbour list must not care
    pos[0] += 1.3 * box[0]
    edge_index, shifts = radius_graph(torch.tensor(pos), cutoff, cell, pbc)
    got = edge_set(edge_index, shifts)
    want = brute_force_pairs(pos, cutoff, cell, pbc)
    assert len(got) == edge_index.shape[1]  # no duplicates
    assert got == want
    assert len(want) > 0
    if name == "small_cell":
        # several images of one neighbour, and images of an atom itself
        assert any(j == i for j, i, *_ in got)
        pairs = [(j, i) for j, i, *_ in got if j != i]
        assert len(pairs) > len(set(pairs))
    # edge vectors agree with the distances used
    g = AtomicGraph.from_tensors(torch.tensor(pos), [6] * len(pos), cutoff, cell=cell, pbc=pbc)
    assert g.num_edges == len(want)
    assert float(g.edge_lengths().max()) < cutoff
    assert not ((g.edge_index[0] == g.edge_index[1]) & (g.shifts == 0).all(1)).any()


def test_radius_graph_dtype_follows_positions():
    pos32 = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]], dtype=torch.float32)
    pos64 = pos32.double()
    assert radius_graph(pos32, 2.0)[1].dtype == torch.float32
    assert radius_graph(pos64, 2.0)[1].dtype == torch.float64
    ei, _ = radius_graph(np.array([[0.0, 0, 0], [1.0, 0, 0]]), 2.0)
    assert ei.dtype == torch.long and ei.shape == (2, 2)


def test_isolated_atom_has_no_edges_and_is_fine():
    g = AtomicGraph.from_tensors(torch.tensor([[0.0, 0, 0], [0.9, 0, 0], [10.0, 0, 0]]), [1, 1, 8], 2.0)
    assert g.num_edges == 2
    assert 2 not in g.edge_index.flatten().tolist()
    single = AtomicGraph.from_tensors(torch.zeros(1, 3), [1], 5.0)
    assert single.num_edges == 0 and single.edge_vectors().shape == (0, 3)


def _brute_knn(pos, k):
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return {(int(j), i) for i in range(len(pos)) for j in np.argsort(d[i], kind="stable")[:k]}


def test_knn_graph_open(rng):
    pos = _random_positions(rng, 12, np.eye(3) * 6)
    edge_index, shifts = knn_graph(torch.tensor(pos), k=4)
    assert edge_index.shape[1] == 12 * 4
    assert {tuple(e) for e in edge_index.t().tolist()} == _brute_knn(pos, 4)
    assert (shifts == 0).all()
    # fewer atoms than k: everyone else
    ei, _ = knn_graph(torch.tensor(pos[:3]), k=10)
    assert ei.shape[1] == 6


def test_knn_graph_periodic_counts_images():
    # one atom in a 3 Å cube: its 6 nearest images are at 3 Å, the next 12 at 4.24 Å
    ei, shifts = knn_graph(torch.zeros(1, 3), k=6, cell=3.0 * np.eye(3))
    assert ei.shape[1] == 6
    assert sorted(map(tuple, np.abs(shifts.numpy()).astype(int).tolist())) == sorted(
        [(1, 0, 0)] * 2 + [(0, 1, 0)] * 2 + [(0, 0, 1)] * 2
    )
    ei, _ = knn_graph(torch.zeros(1, 3), k=8, cell=3.0 * np.eye(3), cutoff=3.5)
    assert ei.shape[1] == 6  # the cap drops the rest


def test_bond_graph_ethanol():
    from ase.build import molecule

    atoms = molecule("CH3CH2OH")
    ei, _ = bond_graph(atoms.numbers, atoms.positions)
    bonds = {tuple(sorted(e)) for e in ei.t().tolist()}
    assert len(bonds) == 8  # C-C, C-O, O-H, 5 C-H
    assert ei.shape[1] == 16
    # a smaller scale loses bonds
    ei_small, _ = bond_graph(atoms.numbers, atoms.positions, scale=0.5)
    assert ei_small.shape[1] == 0


def test_edge_vector_gradients_reach_positions_and_cell():
    torch.manual_seed(0)
    cell = torch.tensor([[3.0, 0.0, 0.0], [0.5, 3.2, 0.0], [0.2, 0.3, 3.1]], dtype=torch.float64)
    pos = torch.rand(4, 3, dtype=torch.float64) @ cell
    g = AtomicGraph.from_tensors(pos, [14] * 4, 4.0, cell=cell)
    p = g.positions.clone().requires_grad_(True)
    c = g.cell.clone().requires_grad_(True)
    torch.autograd.gradcheck(lambda p, c: g.edge_lengths(p, c), (p, c))
    energy = (g.edge_lengths(p, c) ** 2).sum()
    gp, gc = torch.autograd.grad(energy, (p, c))
    assert gp.abs().sum() > 0 and gc.abs().sum() > 0
    # translation invariance: forces sum to zero
    assert torch.allclose(gp.sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-10)


def test_edge_vectors_strain_matches_scaled_structure():
    cell = torch.eye(3, dtype=torch.float64) * 3.0
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.5, 1.4, 0.2]], dtype=torch.float64)
    g = AtomicGraph.from_tensors(pos, [1, 1], 3.5, cell=cell)
    eps = torch.tensor([[0.01, 0.002, 0.0], [0.002, -0.02, 0.0], [0.0, 0.0, 0.03]], dtype=torch.float64)
    strained_pos = pos + pos @ eps
    strained_cell = g.cell + g.cell @ eps
    v = g.edge_vectors(strained_pos, strained_cell)
    assert torch.allclose(v, g.edge_vectors() + g.edge_vectors() @ eps)
