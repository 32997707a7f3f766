"""The model contract, checked for every family.

Energy invariant; forces, dipole, polarizability and stress equivariant under
random rotations, reflections, translations and permutations; forces and stress
equal finite differences of the energy; continuity at the cutoff; extensivity
over periodic supercells; isolated atoms at their reference energy; rebuilding
from ``model.config``.
"""

import numpy as np
import pytest
import torch

from clebsch.graph import AtomicGraph, batch
from clebsch.o3 import Irreps, rand_matrix
from clebsch.testing import CONTRACT, check_potential

from .conftest import ALL_OUTPUTS, FAMILIES, small_model

NUMBERS = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])


def molecule(seed=0):
    """A compact random 9-atom C2OH6 cluster, atoms at least 0.9 Å apart."""
    gen = np.random.default_rng(seed)
    pos = []
    while len(pos) < 9:
        p = gen.uniform(-1.6, 1.6, size=3)
        if all(np.linalg.norm(p - q) > 0.9 for q in pos):
            pos.append(p)
    return torch.tensor(np.array(pos), dtype=torch.float64)


def crystal(seed=0, n=4, a=2.6):
    """A small random periodic structure whose cell is smaller than twice the cutoff."""
    gen = np.random.default_rng(seed)
    cell = np.diag([a, a + 0.2, a + 0.4]) + gen.normal(0, 0.15, (3, 3))
    frac = []
    while len(frac) < n:
        f = gen.uniform(0, 1, 3)
        cart = f @ cell
        ok = True
        for g in frac:
            d = f - g
            d -= np.round(d)
            if np.linalg.norm(d @ cell) < 1.0:
                ok = False
        if ok:
            frac.append(f)
    pos = np.array(frac) @ cell
    numbers = torch.tensor([6, 8, 1, 1][:n])
    return torch.tensor(pos), numbers, torch.tensor(cell)


def graph_of(positions, numbers=NUMBERS, cutoff=3.0, cell=None):
    if cell is None:
        return AtomicGraph.from_tensors(positions, numbers, cutoff)
    return AtomicGraph.from_tensors(positions, numbers, cutoff, cell=cell, pbc=torch.tensor([True, True, True]))


def random_orthogonal(seed, reflect):
    torch.manual_seed(seed)
    R = rand_matrix(dtype=torch.float64)
    return -R if reflect else R


def test_all_families_are_registered():
    from clebsch.models import REPRESENTATIONS

    assert set(FAMILIES) <= set(REPRESENTATIONS)


def rel_err(a, b):
    return float(((a - b).abs().max() / (b.abs().max() + 1e-12)).detach())


def test_contract(family):
    """The public contract (clebsch.testing.check_potential) with every kind of head."""
    model = small_model(family, outputs=ALL_OUTPUTS)
    errors = check_potential(model)
    assert set(errors) == set(CONTRACT)


@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
def test_molecule_equivariance(equivariant_family, reflect):
    """Every head, by its declaration, with the transformation written out."""
    model = small_model(equivariant_family, outputs=ALL_OUTPUTS)
    pos = molecule(1)
    out = model(graph_of(pos))
    R = random_orthogonal(2, reflect)
    t = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    pos2 = (pos @ R.T + t)[perm]
    out2 = model(graph_of(pos2, NUMBERS[perm]))
    assert rel_err(out2["energy"], out["energy"]) < 1e-9
    assert rel_err(out2["forces"], (out["forces"] @ R.T)[perm]) < 1e-9
    assert rel_err(out2["dipole"], out["dipole"] @ R.T) < 1e-9
    assert rel_err(out2["polarizability"], R @ out["polarizability"] @ R.T) < 1e-9
    assert rel_err(out2["born_charges"], (R @ out["born_charges"] @ R.T)[perm]) < 1e-9
    assert rel_err(out2["shielding"], (R @ out["shielding"] @ R.T)[perm]) < 1e-9
    assert rel_err(out2["gap"], out["gap"]) < 1e-9
    D = Irreps("1e + 2e").D_from_matrix(R)
    assert rel_err(out2["moment"], out["moment"] @ D.T) < 1e-9
    for name in ("forces", "born_charges", "shielding", "moment", "polarizability"):
        assert out[name].abs().max() > 1e-6, f"{name} is trivially zero"
    # the pseudovector part of an atom's tensor flips relative to a vector under inversion only
    assert out["shielding"].sub(out["shielding"].transpose(1, 2)).abs().max() > 1e-8


def test_born_charges_are_dipole_derivatives(family):
    model = small_model(family, outputs=["energy", "forces", "dipole", "born_charges"])
    pos = molecule(4)
    z = model(graph_of(pos))["born_charges"]
    eps = 1e-5
    for atom, axis in [(0, 0), (3, 2), (8, 1)]:
        plus, minus = pos.clone(), pos.clone()
        plus[atom, axis] += eps
        minus[atom, axis] -= eps
        with torch.no_grad():
            fd = (model(graph_of(plus))["dipole"] - model(graph_of(minus))["dipole"])[0] / (2 * eps)
        assert torch.allclose(z[atom, :, axis], fd, atol=1e-7, rtol=1e-6)


def test_edge_head_follows_the_edges(family):
    """A per-edge output is indexed like the graph's edges, in a batch too, and tells i->j from j->i."""
    model = small_model(family, outputs=["energy", "block"])
    graphs = [graph_of(molecule(s)) for s in (20, 21)]
    together = model(batch(graphs))["block"]
    alone = [model(g)["block"] for g in graphs]
    assert together.shape == (sum(g.num_edges for g in graphs), Irreps("0e + 1o + 1e + 2e").dim)
    assert torch.allclose(together, torch.cat(alone), atol=1e-12)
    g = graphs[0]
    e = 0
    i, j = int(g.edge_index[1, e]), int(g.edge_index[0, e])
    back = [k for k in range(g.num_edges) if int(g.edge_index[1, k]) == j and int(g.edge_index[0, k]) == i][0]
    assert (alone[0][e] - alone[0][back]).abs().max() > 1e-8


def test_unknown_element_is_named(family):
    model = small_model(family)
    pos = molecule(14)
    numbers = NUMBERS.clone()
    numbers[4] = 26
    with pytest.raises(ValueError, match=r"atom 4 is Fe"):
        model(graph_of(pos, numbers))
    # in a batch: the structure and the atom within it
    with pytest.raises(ValueError, match=r"atom 4 of structure 1 in the batch is Fe"):
        model(batch([graph_of(molecule(15)), graph_of(pos, numbers)]))


def test_forces_under_no_grad(family):
    """Inference code often runs under torch.no_grad(); forces must still come out, detached."""
    model = small_model(family)
    g = graph_of(molecule(15))
    expected = model(g)["forces"]
    with torch.no_grad():
        out = model(g)
    assert torch.allclose(out["forces"], expected, rtol=0, atol=1e-12)
    assert not any(v.requires_grad for v in out.values() if isinstance(v, torch.Tensor)), "a graph was kept alive"


def test_no_atoms_and_an_atom_alone(family):
    """A domain without atoms (an empty LAMMPS subdomain, an empty frame) gives features of no rows, and an atom
    without neighbours a finite row of the same width: no size is inferred from an empty tensor."""
    model = small_model(family)
    rep = model.representation
    no_edges, no_vectors = torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.float64)
    empty = rep(torch.zeros(0, dtype=torch.long), no_edges, no_vectors)
    alone = rep(torch.zeros(1, dtype=torch.long), no_edges, no_vectors)
    assert empty.shape == (0, alone.shape[1]) and alone.shape[0] == 1
    assert torch.isfinite(alone).all()
