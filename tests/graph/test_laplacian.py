"""The normalised graph Laplacian and its eigenvectors as positional encodings, against dense NumPy."""

import numpy as np
import pytest
import torch

from clebsch.graph import AtomicGraph, batch, laplacian_positional_encoding, normalized_laplacian


def undirected(pairs):
    pairs = list(pairs)
    return torch.tensor([[j for i, j in pairs] + [i for i, j in pairs],
                         [i for i, j in pairs] + [j for i, j in pairs]], dtype=torch.long).reshape(2, -1)


def numpy_laplacian(edge_index, n):
    a = np.zeros((n, n))
    for j, i in edge_index.t().tolist():
        a[i, j] += 1.0
    d = a.sum(1)
    inv = np.array([1.0 / np.sqrt(x) if x > 0 else 0.0 for x in d])
    return np.eye(n) - inv[:, None] * a * inv[None, :]


# a tree with distinct Laplacian eigenvalues (checked below), and a lone atom
TREE = [(0, 1), (1, 2), (2, 3), (1, 4), (4, 5), (5, 6)]


def test_laplacian_matches_dense_numpy_with_multi_edges_and_isolated_atoms():
    edges = undirected(TREE + [(2, 3)])  # one pair bonded twice (a multigraph, as periodic images give)
    n = 8  # atom 7 alone
    lap = normalized_laplacian(edges, n, dtype=torch.float64)
    expected = numpy_laplacian(edges, n)
    np.testing.assert_allclose(lap.numpy(), expected, atol=1e-14)
    assert torch.isfinite(lap).all()
    assert lap[7].tolist() == [0.0] * 7 + [1.0]  # degree 0: the identity row
    eigenvalues = np.linalg.eigvalsh(lap.numpy())
    assert eigenvalues.min() > -1e-12 and eigenvalues.max() < 2 + 1e-12
    with pytest.raises(ValueError, match="atom 9"):
        normalized_laplacian(torch.tensor([[0], [9]]), 4)


def test_positional_encoding_is_numpy_eigh_up_to_sign():
    edges = undirected(TREE)
    lap = numpy_laplacian(edges, 7)
    values, vectors = np.linalg.eigh(lap)
    assert values[0] < 1e-12 and np.diff(values).min() > 1e-3, "the test graph must have a simple spectrum"
    pe = laplacian_positional_encoding(edges, torch.zeros(7, dtype=torch.long), k=4).double().numpy()
    for c in range(4):
        ref = vectors[:, 1 + c]  # the trivial (zero-eigenvalue) eigenvector is skipped
        sign = np.sign(ref @ pe[:, c])
        np.testing.assert_allclose(sign * pe[:, c], ref, atol=1e-6)
        np.testing.assert_allclose(lap @ pe[:, c], values[1 + c] * pe[:, c], atol=1e-6)


def test_disconnected_fragments_skip_one_trivial_eigenvector_per_component():
    # structure 0: a triangle and a separate pair (2 components, 5 atoms, 3 non-trivial);
    # structure 1: one atom; structure 2: three atoms, no bonds
    tri_pair = undirected([(0, 1), (1, 2), (2, 0), (3, 4)])
    batch_index = torch.tensor([0] * 5 + [1] + [2] * 3)
    pe = laplacian_positional_encoding(tri_pair, batch_index, k=5, num_graphs=3).double().numpy()
    assert np.isfinite(pe).all()
    lap = numpy_laplacian(tri_pair, 5)
    values = np.linalg.eigvalsh(lap)
    np.testing.assert_allclose(values[:2], 0.0, atol=1e-12)  # two components, two zero eigenvalues
    block = pe[:5]
    # three non-trivial eigenvectors (of eigenvalues 1.5, 1.5, 2), orthonormal, then zero padding
    np.testing.assert_allclose(block[:, :3].T @ block[:, :3], np.eye(3), atol=1e-6)
    np.testing.assert_allclose(block[:, 3:], 0.0)
    np.testing.assert_allclose(np.diag(block[:, :3].T @ lap @ block[:, :3]), values[2:], atol=1e-6)
    # orthogonal to each component's trivial eigenvector D^{1/2} 1_component
    for trivial in ([1.0, 1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.0]):  # equal degrees within each
        np.testing.assert_allclose(np.array(trivial) @ block, 0.0, atol=1e-6)
    # a one-atom molecule and atoms without bonds: nothing non-trivial
    np.testing.assert_allclose(pe[5:], 0.0)


def test_isolated_atom_inside_a_molecule_gets_zeros_and_padding_follows_size():
    edges = undirected([(0, 1), (1, 2)])  # atom 3 has no bond
    pe = laplacian_positional_encoding(edges, torch.zeros(4, dtype=torch.long), k=3).double()
    assert pe[3].tolist() == [0.0, 0.0, 0.0]
    # a 3-atom path has 2 non-trivial eigenvectors (1 and 2): the third column is padding
    lap = numpy_laplacian(edges, 3)
    values = np.linalg.eigvalsh(lap)
    np.testing.assert_allclose(pe[:3, 2].numpy(), 0.0)
    for c in range(2):
        v = pe[:3, c].numpy()
        assert abs(np.linalg.norm(v) - 1) < 1e-6
        np.testing.assert_allclose(lap @ v, values[1 + c] * v, atol=1e-6)


def test_batches_equal_structures_alone_and_random_signs_only_flip():
    pos = torch.tensor([[0.0, 0, 0], [1.5, 0, 0], [2.2, 1.2, 0], [3.7, 1.2, 0]])
    chain = AtomicGraph.from_tensors(pos, [6, 6, 6, 6], 2.0, method="bonds")
    water = AtomicGraph.from_tensors(torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]), [8, 1, 1],
                                     2.0, method="bonds")
    g = batch([water, chain, water])
    pe = laplacian_positional_encoding(g.edge_index, g.batch, k=3).double()
    alone = laplacian_positional_encoding(chain.edge_index, chain.batch, k=3).double()
    both = pe[3:7]
    np.testing.assert_allclose(both.abs().numpy(), alone.abs().numpy(), atol=1e-6)
    flipped = laplacian_positional_encoding(g.edge_index, g.batch, k=3, random_signs=True,
                                            generator=torch.Generator().manual_seed(1)).double()
    ratio = (flipped / torch.where(pe.abs() > 1e-6, pe, torch.ones_like(pe)))[pe.abs() > 1e-6]
    np.testing.assert_allclose(ratio.abs().numpy(), 1.0, atol=1e-6)
    # one sign per structure and eigenvector: the same on all its atoms
    signs = torch.sign(flipped * pe)
    for b in range(3):
        rows = signs[g.batch == b]
        for c in range(3):
            nonzero = rows[:, c][rows[:, c] != 0]
            assert nonzero.numel() == 0 or bool((nonzero == nonzero[0]).all())
    assert not torch.equal(flipped, pe)  # seed 1 flips something
    with pytest.raises(ValueError, match="positive integer"):
        laplacian_positional_encoding(g.edge_index, g.batch, k=0)
    with pytest.raises(ValueError, match="different structures"):
        laplacian_positional_encoding(torch.tensor([[0], [3]]), g.batch, k=1)
