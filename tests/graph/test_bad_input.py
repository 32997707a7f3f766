import numpy as np
import pytest
import torch
from ase import Atoms

from clebsch.graph import AtomicGraph, bond_graph, knn_graph, radius_graph


@pytest.mark.parametrize("cutoff", [0.0, -2.0, float("nan"), float("inf"), "abc"])
def test_cutoff_must_be_positive(cutoff):
    with pytest.raises(ValueError, match="cutoff must be a positive"):
        radius_graph(torch.zeros(2, 3), cutoff)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_position_names_the_atom(bad):
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0]])
    pos[2, 1] = bad
    with pytest.raises(ValueError, match=r"atom 2 has non-finite position .*frame 7"):
        radius_graph(pos, 2.0, where="frame 7")
    with pytest.raises(ValueError, match="atom 2"):
        knn_graph(pos, 2)
    with pytest.raises(ValueError, match="atom 2"):
        AtomicGraph.from_ase(Atoms("H4", positions=pos.numpy()), 2.0)


def test_overlapping_atoms_name_frame_and_indices():
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0], [1.05, 0, 0]])
    with pytest.raises(ValueError, match=r"atoms 1 and 3 are 0.05 Å apart.*frame 4"):
        radius_graph(pos, 2.0, where="file 'x.xyz', frame 4")
    with pytest.raises(ValueError, match="atoms 1 and 3"):
        bond_graph([1, 1, 1, 1], pos)
    with pytest.raises(ValueError, match="atoms 1 and 3"):
        knn_graph(pos, 1)
    # even when the cutoff is below 0.1 Å
    with pytest.raises(ValueError, match="atoms 1 and 3"):
        radius_graph(pos, 0.01)


def test_overlap_across_periodic_boundary():
    cell = np.eye(3) * 4.0
    pos = torch.tensor([[0.02, 1.0, 1.0], [3.96, 1.0, 1.0]])
    with pytest.raises(ValueError, match="atoms 0 and 1 are 0.06"):
        radius_graph(pos, 3.0, cell=cell)
    radius_graph(pos, 3.0)  # far apart when open


@pytest.mark.parametrize(
    "cell",
    [np.array([[3.0, 0, 0], [6.0, 0, 0], [0, 0, 3.0]]), np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 0.0]])],
)
def test_singular_cell(cell):
    with pytest.raises(ValueError, match="cell is singular"):
        radius_graph(torch.zeros(1, 3), 2.0, cell=cell, pbc=[True, True, True])
    atoms = Atoms("Cu", cell=cell, pbc=True)
    with pytest.raises(ValueError, match="cell is singular"):
        AtomicGraph.from_ase(atoms, 2.0)


def test_periodic_without_cell():
    with pytest.raises(ValueError, match=r"periodic \(pbc=\[True, False, True\]\) but has no cell"):
        radius_graph(torch.zeros(2, 3) + torch.tensor([[0.0], [1.0]]), 2.0, pbc=[True, False, True])
    with pytest.raises(ValueError, match="has no cell"):
        AtomicGraph.from_ase(Atoms("H", pbc=True), 2.0)


def test_cell_smaller_than_cutoff_and_open_slab_direction_are_fine():
    g = AtomicGraph.from_tensors(torch.zeros(1, 3), [29], 6.0, cell=1.5 * torch.eye(3))
    assert g.num_edges > 100
    # slab: zero third lattice vector in a non-periodic direction
    slab = Atoms("Cu2", positions=[[0, 0, 0], [1.2, 1.2, 0.5]], cell=[[2.5, 0, 0], [0, 2.5, 0], [0, 0, 0]], pbc=[True, True, False])
    s = AtomicGraph.from_ase(slab, 3.0)
    assert s.num_edges > 0 and (s.shifts[:, 2] == 0).all()


def test_shape_and_method_errors():
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        radius_graph(torch.zeros(3, 2), 2.0)
    with pytest.raises(ValueError, match="numbers has 2 entries but positions has 3"):
        AtomicGraph.from_tensors(torch.rand(3, 3) * 5, [1, 1], 2.0)
    with pytest.raises(ValueError, match="method must be one of"):
        AtomicGraph.from_tensors(torch.zeros(1, 3), [1], 2.0, method="delaunay")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        knn_graph(torch.zeros(1, 3), 0)
    with pytest.raises(ValueError, match="atomic number 0"):
        bond_graph([0], torch.zeros(1, 3))
