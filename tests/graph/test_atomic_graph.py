import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from clebsch.data import graph_from_atoms
from clebsch.graph import AtomicGraph, batch


def _water(energy=-14.0, shift=0.0):
    atoms = molecule("H2O")
    atoms.positions += shift
    atoms.info["energy"] = energy
    atoms.arrays["forces"] = np.arange(9, dtype=float).reshape(3, 3)
    atoms.info["dipole"] = np.array([0.1, 0.2, 0.3])
    return atoms


def _copper(seed=0):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=seed)
    stress = np.array([0.01, 0.02, 0.03, 0.004, 0.005, 0.006])
    atoms.calc = SinglePointCalculator(atoms, energy=-3.0, forces=np.ones((4, 3)), stress=stress)
    atoms.info["config_type"] = "bulk"
    return atoms


def test_from_ase_reads_targets_and_shapes():
    g = graph_from_atoms(_water(), cutoff=3.0)
    assert g.num_graphs == 1 and g.num_atoms == 3
    assert g.targets["energy"].shape == (1,)
    assert g.targets["forces"].shape == (3, 3)
    assert g.targets["dipole"].shape == (1, 3)
    assert g.cell.shape == (1, 3, 3) and not g.pbc.any()
    assert g.config_type == ["Default"]
    assert g.total_charge.tolist() == [0.0]
    c = graph_from_atoms(_copper(), cutoff=3.0)
    assert c.pbc.all() and c.config_type == ["bulk"]
    stress = c.targets["stress"][0]
    assert torch.allclose(stress, stress.T)
    assert float(stress[0, 1]) == pytest.approx(0.006) and float(stress[1, 2]) == pytest.approx(0.004)


def test_from_ase_key_map_and_dtype():
    atoms = _water()
    atoms.info["E_dft"] = atoms.info.pop("energy")
    g = graph_from_atoms(atoms, 3.0, keys={"energy": "E_dft"}, dtype=torch.float64)
    assert g.targets["energy"].item() == -14.0
    assert g.positions.dtype == torch.float64 and "forces" not in g.targets


def test_batch_split_round_trip():
    graphs = [graph_from_atoms(a, cutoff=3.0) for a in (_water(-1.0), _copper(1), _water(-2.0, 1.0), _copper(2))]
    b = batch(graphs)
    assert b.num_graphs == 4
    assert b.n_atoms.tolist() == [3, 4, 3, 4]
    assert b.batch.tolist() == [0] * 3 + [1] * 4 + [2] * 3 + [3] * 4
    assert b.cell.shape == (4, 3, 3) and b.pbc.tolist()[1] == [True] * 3
    # edges stay inside their structure
    assert (b.batch[b.edge_index[0]] == b.batch[b.edge_index[1]]).all()
    assert b.n_edges.tolist() == [g.num_edges for g in graphs]
    # edge vectors of the batch equal those of the parts
    assert torch.allclose(b.edge_vectors(), torch.cat([g.edge_vectors() for g in graphs]))
    # stress only on copper: NaN on water
    assert torch.isnan(b.targets["stress"][0]).all() and torch.isfinite(b.targets["stress"][1]).all()
    assert b.targets["forces"].shape == (14, 3)
    parts = b.split()
    assert len(parts) == 4
    for g, p in zip(graphs, parts):
        assert torch.equal(g.positions, p.positions)
        assert torch.equal(g.edge_index, p.edge_index)
        assert torch.equal(g.shifts, p.shifts)
        assert torch.equal(g.cell, p.cell)
        assert g.config_type == p.config_type
        for k, v in g.targets.items():
            assert torch.equal(v, p.targets[k])
    # batches of batches
    bb = batch([batch(graphs[:2]), batch(graphs[2:])])
    assert torch.equal(bb.edge_index, b.edge_index) and torch.equal(bb.batch, b.batch)


def test_batch_rejects_mixed_cutoffs_and_empty():
    with pytest.raises(ValueError, match="different cutoffs"):
        batch([graph_from_atoms(_water(), 3.0), graph_from_atoms(_water(), 4.0)])
    with pytest.raises(ValueError, match="empty"):
        batch([])


def test_to_and_clone():
    g = batch([graph_from_atoms(_copper(), 3.0), graph_from_atoms(_copper(3), 3.0)])
    h = g.to(dtype=torch.float64)
    assert h.positions.dtype == torch.float64 and h.cell.dtype == torch.float64
    assert h.targets["stress"].dtype == torch.float64 and h.shifts.dtype == torch.float64
    assert h.numbers.dtype == torch.long and h.edge_index.dtype == torch.long and h.pbc.dtype == torch.bool
    c = g.clone()
    c.positions[0, 0] += 1.0
    c.targets["energy"][0] = 5.0
    assert g.positions[0, 0] != c.positions[0, 0] and g.targets["energy"][0] != 5.0


def test_to_ase_round_trip():
    atoms = _copper()
    g = graph_from_atoms(atoms, 3.0, dtype=torch.float64)
    back = g.to_ase()
    assert np.allclose(back.positions, atoms.positions) and np.allclose(back.cell, atoms.cell)
    assert back.get_potential_energy() == pytest.approx(-3.0)
    assert np.allclose(back.get_stress(voigt=False), g.targets["stress"][0].numpy())
    assert back.info["config_type"] == "bulk"
    many = batch([g, g]).to_ase()
    assert isinstance(many, list) and len(many) == 2


def test_with_neighbors_recomputes_for_new_positions():
    g = batch([graph_from_atoms(_copper(), 2.8), graph_from_atoms(_water(), 2.8)])
    g.positions[0] += torch.tensor([0.9, 0.9, 0.0])  # move atom 0 of copper
    fresh = g.with_neighbors()
    ref = batch([
        AtomicGraph.from_tensors(p.positions, p.numbers, 2.8, cell=p.cell[0], pbc=p.pbc[0]) for p in g.split()
    ])
    assert torch.equal(fresh.edge_index, ref.edge_index) and torch.equal(fresh.shifts, ref.shifts)
    assert fresh.targets.keys() == g.targets.keys()
    assert float(fresh.edge_lengths().max()) < 2.8
    assert g.with_neighbors(method="knn", k=2).n_edges.tolist() == [8, 6]
