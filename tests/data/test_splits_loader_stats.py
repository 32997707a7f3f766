import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from data_helpers import water_file, water_frames  # noqa: F401 (fixture)

from clebsch.data import (
    AtomicDataset,
    DatasetStatistics,
    TypeMap,
    average_num_neighbors,
    collate,
    compute_statistics,
    force_rms,
    load_split,
    make_loader,
    mean_energy_per_atom,
    reference_energies_from_file,
    reference_energies_least_squares,
    save_split,
    split_indices,
)
from clebsch.graph import AtomicGraph


def test_split_fractions_counts_reproducible(tmp_path):
    s = split_indices(100, valid=0.1, test=5, seed=3)
    assert [len(s[k]) for k in ("train", "valid", "test")] == [85, 10, 5]
    assert sorted(s["train"] + s["valid"] + s["test"]) == list(range(100))
    assert s == split_indices(100, valid=0.1, test=5, seed=3)
    assert s != split_indices(100, valid=0.1, test=5, seed=4)
    assert len(split_indices(100, train=20, valid=10)["train"]) == 20
    save_split(tmp_path / "run" / "split.json", s, seed=3, file="x.xyz")
    assert load_split(tmp_path / "run" / "split.json") == s


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n": 0}, "empty"), ({"n": 10, "valid": 1.5}, "valid fraction"), ({"n": 10, "valid": 6, "test": 6}, "exceed"),
     ({"n": 10, "valid": -1}, "non-negative"), ({"n": 2, "valid": 1, "test": 1}, "training split is empty")],
)
def test_split_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_indices(**kwargs)


def test_type_map_unknown_element_names_element_and_atom():
    tm = TypeMap([1, 6, 8])
    assert tm(torch.tensor([8, 6, 1])).tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match=r"atom 3 is N \(Z=7\).*knows \['H', 'C', 'O'\].*frame 9"):
        tm(torch.tensor([1, 6, 8, 7, 1]), where="frame 9")
    with pytest.raises(ValueError, match=r"atom 0 is Og \(Z=118\)"):
        tm(torch.tensor([118]))
    assert TypeMap(tm.to_list()) == tm and TypeMap.from_symbols(["O", "H", "C"]) == tm
    graphs = [AtomicGraph.from_tensors(torch.tensor([[0.0, 0, 0], [1.0, 0, 0]]), [29, 8], 2.0)]
    assert TypeMap.from_graphs(graphs).symbols == ["O", "Cu"]


def test_collate_and_loader(water_file):
    ds = AtomicDataset.from_file(water_file, 3.0)
    b = collate([ds[0], ds[1], ds[2]])
    assert b.num_graphs == 3 and b.targets["energy"].shape == (3,)
    loader = make_loader(ds, batch_size=4, shuffle=True, seed=1)
    batches = list(loader)
    assert [x.num_graphs for x in batches] == [4, 2]
    again = [x.targets["energy"] for x in make_loader(ds, batch_size=4, shuffle=True, seed=1)]
    assert all(torch.equal(a.targets["energy"], e) for a, e in zip(batches, again))
    energies = torch.cat([x.targets["energy"] for x in batches])
    assert sorted(energies.tolist()) == sorted(torch.cat([g.targets["energy"] for g in ds]).tolist())
    sub = ds.subset(split_indices(len(ds), valid=2, seed=0)["valid"])
    assert len(sub) == 2


def _synthetic(rng, refs, n=30):
    graphs = []
    for _ in range(n):
        numbers = rng.choice(sorted(refs), size=rng.integers(2, 7))
        pos = np.cumsum(rng.uniform(0.8, 1.5, size=(len(numbers), 3)), axis=0)
        e = sum(refs[int(z)] for z in numbers) + rng.normal(scale=1e-3)
        f = rng.normal(size=(len(numbers), 3))
        graphs.append(AtomicGraph.from_tensors(pos, numbers, 3.0, targets={"energy": torch.tensor([e]), "forces": torch.tensor(f)}))
    return graphs


def test_reference_energies_least_squares_recovers_known_values():
    rng = np.random.default_rng(0)
    refs = {1: -13.6, 6: -1025.3, 8: -2035.6}
    graphs = _synthetic(rng, refs)
    fit = reference_energies_least_squares(graphs)
    assert fit.keys() == refs.keys()
    for z in refs:
        assert fit[z] == pytest.approx(refs[z], abs=5e-3)
    assert abs(mean_energy_per_atom(graphs, fit)) < 1e-3
    assert mean_energy_per_atom(graphs) < -100


def test_reference_energies_from_isolated_atoms_file(tmp_path):
    frames = [Atoms(s, info={"energy": e, "config_type": "IsolatedAtom"}) for s, e in (("H", -13.5), ("O", -2035.5))]
    frames.append(Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]], info={"energy": -31.0}))
    frames.append(Atoms("C", info={"energy": -1025.0, "config_type": "other"}))
    path = tmp_path / "isolated.xyz"
    ase.io.write(path, frames, format="extxyz")
    assert reference_energies_from_file(path, config_type="IsolatedAtom") == {1: -13.5, 8: -2035.5}
    assert reference_energies_from_file(path) == {1: -13.5, 6: -1025.0, 8: -2035.5}
    with pytest.raises(ValueError, match="no one-atom frames with config_type='Nope'"):
        reference_energies_from_file(path, config_type="Nope")
    with pytest.raises(ValueError, match=r"missing energy key 'E0'.*frame 0"):
        reference_energies_from_file(path, energy_key="E0")


def test_force_rms_neighbors_and_compute_statistics(tmp_path):
    rng = np.random.default_rng(1)
    refs = {1: -13.6, 8: -2035.6}
    graphs = _synthetic(rng, refs, n=12)
    f = np.concatenate([g.targets["forces"].numpy().ravel() for g in graphs])
    assert force_rms(graphs) == pytest.approx(float(np.sqrt((f**2).mean())))
    edges = sum(g.num_edges for g in graphs)
    atoms = sum(g.num_atoms for g in graphs)
    assert average_num_neighbors(graphs) == pytest.approx(edges / atoms)
    stats = compute_statistics(graphs)
    assert stats.n_structures == 12 and stats.numbers == [1, 8]
    assert stats.reference_energies[8] == pytest.approx(-2035.6, abs=1e-2)
    assert DatasetStatistics.from_dict(stats.to_dict()) == stats
    fixed = compute_statistics(graphs, reference_energies={1: 0.0, 8: 0.0})
    assert fixed.mean_energy_per_atom == pytest.approx(mean_energy_per_atom(graphs))
    for fn in (force_rms, average_num_neighbors, reference_energies_least_squares, compute_statistics):
        with pytest.raises(ValueError, match="empty dataset"):
            fn([])
