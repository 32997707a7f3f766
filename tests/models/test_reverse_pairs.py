"""Radial MLPs once per pair of reverse edges (clebsch.models._steerable.reverse_pairs): which graphs are paired,
and NequIP, MACE, the Equivariant Transformer and TensorNet give the same energies, forces, stress and
training gradients either way (float64)."""

import pytest
import torch
from ase.build import bulk, molecule

import clebsch.models._steerable as steerable
import clebsch.models.equivariant_transformer as equivariant_transformer
import clebsch.models.tensornet as tensornet
from clebsch.data.targets import graph_from_atoms
from clebsch.models._steerable import reverse_pairs
from clebsch.testing import float64_model


def _vectors(graph):
    return graph.edge_vectors()


def test_a_radius_graph_is_paired_edge_by_edge():
    atoms = molecule("CH3CH2OH")
    graph = graph_from_atoms(atoms, 4.0, keys={}, dtype=torch.float64)
    first, slot = reverse_pairs(graph.edge_index, _vectors(graph))
    E = graph.edge_index.shape[1]
    assert first.shape == (E // 2,) and slot.shape == (E,)
    assert torch.equal(torch.bincount(slot), torch.full((E // 2,), 2))  # every slot holds two edges
    s, r = graph.edge_index
    for e in range(E):  # each edge shares its slot with its reverse
        partner = [f for f in range(E) if slot[f] == slot[e] and f != e]
        assert len(partner) == 1 and s[partner[0]] == r[e] and r[partner[0]] == s[e]
    assert bool((s[first] < r[first]).all())
    torch.testing.assert_close(_vectors(graph).norm(dim=1), _vectors(graph).norm(dim=1)[first][slot], rtol=0, atol=0)


def test_graphs_without_reverse_pairs_are_not_paired():
    atoms = molecule("CH3CH2OH")
    knn = graph_from_atoms(atoms, 4.0, method="knn", k=3, keys={}, dtype=torch.float64)
    assert reverse_pairs(knn.edge_index, _vectors(knn)) is None
    small = graph_from_atoms(bulk("Cu", "fcc", a=3.6), 5.0, keys={}, dtype=torch.float64)  # an atom and its images
    assert reverse_pairs(small.edge_index, _vectors(small)) is None
    graph = graph_from_atoms(atoms, 4.0, keys={}, dtype=torch.float64)
    assert reverse_pairs(graph.edge_index[:, :-1], _vectors(graph)[:-1]) is None  # an edge lost its reverse
    assert reverse_pairs(graph.edge_index, _vectors(graph) + 1.0) is None  # vectors that are not opposite
    assert reverse_pairs(graph.edge_index[:, :0], _vectors(graph)[:0]) is None


SIZES = {"nequip": {"lmax": 2}, "mace": {"lmax": 2}, "equivariant_transformer": {"num_heads": 2, "num_basis": 8},
         "tensornet": {"num_basis": 8}}
USERS = {"nequip": steerable, "mace": steerable, "equivariant_transformer": equivariant_transformer,
         "tensornet": tensornet}


@pytest.mark.parametrize("family", list(SIZES))
@pytest.mark.parametrize("structure", ["molecule", "periodic"])
def test_pairing_changes_no_output_or_gradient(family, structure, monkeypatch):
    if structure == "molecule":
        atoms = molecule("CH3CH2OH")
    else:
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
        atoms.set_chemical_symbols(["H", "C", "O", "C"] * 8)
    atoms.rattle(0.05, seed=3)
    model = float64_model({"name": family, "species": ["H", "C", "O"], "cutoff": 3.0, "num_layers": 2,
                           "channels": 4, **SIZES[family], "outputs": ["energy", "forces", "stress"]}, seed=4,
                          randomize_zeros=True)
    graph = graph_from_atoms(atoms, 3.0, keys={}, dtype=torch.float64)
    assert reverse_pairs(graph.edge_index, _vectors(graph)) is not None
    calls = []
    user = USERS[family]  # the module whose name the family calls
    pairing = user.reverse_pairs

    def counted(*args):
        calls.append(pairing(*args))
        return calls[-1]

    def run():
        out = model(graph, training=True)
        keys = ["energy", "forces"] + (["stress"] if structure == "periodic" else [])
        loss = sum((out[k] ** 2).sum() for k in keys)
        params = [p for p in model.parameters() if p.requires_grad]
        return [out[k].detach() for k in keys] + list(torch.autograd.grad(loss, params, allow_unused=True))

    monkeypatch.setattr(user, "reverse_pairs", counted)
    paired = run()
    assert calls and calls[-1] is not None
    monkeypatch.setattr(user, "reverse_pairs", lambda *args: None)
    unpaired = run()
    for a, b in zip(paired, unpaired):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
