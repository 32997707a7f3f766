"""The Verlet list gives the edges of a fresh list, and rebuilds exactly when it must."""

import numpy as np
import pytest

from clebsch.calculators import ClebschCalculator, VerletList
from clebsch.graph import radius_graph


def _edge_set(edge_index, shifts):
    return {(int(s), int(r), *map(int, sh)) for s, r, sh in zip(edge_index[0], edge_index[1], shifts.round().tolist())}


def test_edges_equal_a_fresh_list_over_a_random_walk(copper):
    rng = np.random.default_rng(0)
    nl = VerletList(cutoff=3.0, skin=0.6)
    atoms = copper.copy()
    for step in range(30):
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        if step % 7 == 3:  # a small strain, as in NPT
            atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.003, size=(3, 3))), scale_atoms=True)
        got = nl.update(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)
        fresh = radius_graph(atoms.positions, 3.0, atoms.cell.array, atoms.pbc)
        assert _edge_set(*got) == _edge_set(*fresh)
    assert 1 < nl.builds < 15


def test_rebuilds_when_an_atom_moves_more_than_half_the_skin():
    nl = VerletList(cutoff=2.0, skin=0.4)
    pos = np.array([[0.0, 0, 0], [1.5, 0, 0], [3.0, 0, 0]])
    args = (np.array([1, 1, 1]), np.zeros((3, 3)), np.zeros(3, bool))
    nl.update(pos, *args)
    pos[2, 1] += 0.19
    nl.update(pos, *args)
    assert nl.builds == 1
    pos[2, 1] += 0.02  # now 0.21 > skin / 2 from the last build
    nl.update(pos, *args)
    assert nl.builds == 2
    nl.update(pos, np.array([1, 1, 6]), *args[1:])  # a new element
    assert nl.builds == 3


def test_calculator_results_equal_a_fresh_list(model, copper, ethanol):
    rng = np.random.default_rng(1)
    for atoms in (copper, ethanol):
        reuse, fresh = ClebschCalculator(model, skin=1.0), ClebschCalculator(model, skin=0.0)
        for _ in range(6):
            atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
            reuse.calculate(atoms, ["energy", "forces"])
            fresh.calculate(atoms, ["energy", "forces"])
            assert reuse.results["energy"] == pytest.approx(fresh.results["energy"], abs=1e-10)
            np.testing.assert_allclose(reuse.results["forces"], fresh.results["forces"], atol=1e-10)
            if "stress" in fresh.results:
                np.testing.assert_allclose(reuse.results["stress"], fresh.results["stress"], atol=1e-10)
        assert reuse.neighbors.builds < fresh.neighbors.builds == 6


def test_the_verlet_list_lives_with_the_neighbour_lists():
    from clebsch.graph.verlet import VerletList as GraphVerletList

    assert VerletList is GraphVerletList


def test_every_call_is_checked_also_when_the_list_is_reused():
    nl = VerletList(cutoff=2.0, skin=1.0)
    pos = np.array([[0.0, 0, 0], [1.0, 0, 0], [2.5, 0, 0]])
    args = (np.array([1, 1, 1]), np.zeros((3, 3)), np.zeros(3, bool))
    nl.update(pos, *args)
    pos[2] = [1.05, 0.0, 0.0]  # 1.45 Å moved: a rebuild, which sees the overlap
    with pytest.raises(ValueError, match="atoms 1 and 2 are 0.05 Å apart"):
        nl.update(pos, *args)
    pos = np.array([[0.0, 0, 0], [1.0, 0, 0], [1.4, 0, 0]])
    nl.update(pos, *args)
    builds = nl.builds
    pos[1, 0], pos[2, 0] = 1.18, 1.22  # both moved less than skin / 2: the list is reused
    with pytest.raises(ValueError, match="atoms 1 and 2 are 0.04 Å apart"):
        nl.update(pos, *args)
    pos[1, 0] = np.nan
    with pytest.raises(ValueError, match="atom 1 has non-finite position"):
        nl.update(pos, *args)
    assert nl.builds == builds
