"""Targets read from files: declarations, shapes, symmetries, non-finite values, per-edge targets."""

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from clebsch.data import AtomicDataset, graph_from_atoms, read_targets
from clebsch.graph import batch
from clebsch.targets import TARGETS, TargetError, declare, resolve_targets

SHIELDING = {"shielding": {"level": "atom", "cartesian": "ij", "unit": "ppm"}}


def water(seed=0):
    atoms = molecule("H2O")
    atoms.rattle(0.05, seed=seed)
    rng = np.random.default_rng(seed)
    atoms.info["energy"] = -14.0 - seed
    f = rng.normal(size=(3, 3))
    atoms.arrays["forces"] = f - f.mean(axis=0)
    a = rng.normal(size=(3, 3))
    atoms.info["polarizability"] = (a + a.T).reshape(-1)
    atoms.arrays["shielding"] = rng.normal(size=(3, 9))
    atoms.info["gap"] = 7.5 + seed
    return atoms


def test_registry_declares_layout_and_unit():
    assert TARGETS["forces"].level == "atom" and TARGETS["forces"].shape == (3,)
    assert str(TARGETS["stress"].irreps_out) == "1x0e+1x2e"
    assert TARGETS["born_charges"].source == "response" and TARGETS["born_charges"].of == "dipole"
    t = declare("gap", {"irreps": "0e", "reduce": "mean", "unit": "eV"})
    assert t.level == "structure" and not t.extensive and t.shape == ()
    with pytest.raises(TargetError, match="model.targets.energy: 'energy' is a built-in"):
        declare("energy", {"irreps": "0e"})
    with pytest.raises(TargetError, match=r"model.targets.x: unknown key\(s\) \['shape'\]"):
        declare("x", {"irreps": "0e", "shape": 3})
    with pytest.raises(TargetError, match="exactly one of 'irreps', 'cartesian' and 'basis'"):
        declare("x", {"irreps": "0e", "cartesian": "ij"})
    with pytest.raises(TargetError, match="level must be one of"):
        declare("x", {"level": "bond", "irreps": "0e"})


def test_cartesian_round_trip_through_the_declaration():
    t = resolve_targets(SHIELDING)["shielding"]
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    assert torch.allclose(t.to_cartesian(t.from_cartesian(x)), x, atol=1e-12)
    assert str(t.irreps_out) == "1x0e+1x1e+1x2e"


def test_declared_targets_are_read_in_their_shapes(tmp_path):
    path = tmp_path / "w.xyz"
    ase.io.write(path, [water(0), water(1)], format="extxyz")
    keys = {"energy": "energy", "forces": "forces", "polarizability": "polarizability", "shielding": "shielding",
            "gap": "gap"}
    targets = {**SHIELDING, "gap": {"irreps": "0e", "reduce": "mean"}}
    ds = AtomicDataset.from_file(path, 3.0, keys=keys, targets=targets)
    g = batch(ds.graphs)
    assert g.targets["polarizability"].shape == (2, 3, 3)
    assert g.targets["shielding"].shape == (6, 3, 3) and "shielding" in g.per_atom_targets
    assert g.targets["gap"].tolist() == [7.5, 8.5]
    assert torch.allclose(g.targets["shielding"][4].reshape(-1).double(),
                          torch.as_tensor(water(1).arrays["shielding"][1]).to(g.targets["shielding"].dtype).double(),
                          atol=1e-6)


def test_broken_symmetry_names_file_frame_and_key(tmp_path):
    frames = [water(0), water(1), water(2)]
    frames[2].info["polarizability"] = np.arange(9.0)  # not symmetric
    path = tmp_path / "bad.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(ValueError, match=r"polarizability breaks its declared symmetry 'ij=ji'.*frame 2.*"
                                         r"key 'polarizability'"):
        AtomicDataset.from_file(path, 3.0, keys={"polarizability": "polarizability"}, required=())


def test_wrong_shape_names_file_frame_and_key(tmp_path):
    frames = [water(0), water(1)]
    frames[1].arrays["shielding"] = np.zeros((3, 4))
    path = tmp_path / "shape.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(ValueError, match=r"shielding must have shape \[3, 3\].*got shape \[4\].*key 'shielding'.*"
                                         r"frame 1"):
        AtomicDataset.from_file(path, 3.0, keys={"shielding": "shielding"}, required=(), targets=SHIELDING)


def test_missing_declared_key_names_file_frame_and_key(tmp_path):
    frames = [water(0), water(1)]
    del frames[1].info["gap"]
    path = tmp_path / "gap.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(ValueError, match=r"missing gap key 'gap' in file '.*gap.xyz', frame 1"):
        AtomicDataset.from_file(path, 3.0, keys={"gap": "gap"}, required=("gap",),
                                targets={"gap": {"irreps": "0e"}})


def test_nonfinite_reference_is_an_error_unless_skipped(tmp_path):
    frames = [water(0), water(1), water(2)]
    frames[1].arrays["forces"][2, 1] = np.nan
    frames[2].info["energy"] = np.inf
    path = tmp_path / "nan.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(ValueError, match=r"non-finite forces value .* at atom 2 \(file '.*nan.xyz', frame 1, "
                                         r"key 'forces'\)"):
        AtomicDataset.from_file(path, 3.0)
    ds = AtomicDataset.from_file(path, 3.0, allow_nonfinite=True)
    assert torch.isnan(ds[1].targets["forces"][2, 1]) and torch.isinf(ds[2].targets["energy"][0])


def test_per_frame_weight_is_read(tmp_path):
    frames = [water(0), water(1)]
    frames[1].info["weight"] = 0.25
    g = graph_from_atoms(frames[1], 3.0)
    assert g.targets["weight"].tolist() == [0.25]
    frames[0].info["weight"] = "heavy"
    with pytest.raises(ValueError, match="info 'weight' must be a number"):
        graph_from_atoms(frames[0], 3.0)


def edge_frame(seed, with_pairs=True):
    atoms = molecule("CH4")
    atoms.rattle(0.05, seed=seed)
    n = len(atoms)
    pairs = [(i, j, 0, 0, 0) for i in range(n) for j in range(n) if i != j and atoms.get_distance(i, j) < 2.0]
    values = np.array([[100 * i + j + seed / 10, -(100 * i + j)] for i, j, *_ in pairs], dtype=float)
    atoms.info["block"] = values.reshape(-1)
    if with_pairs:
        atoms.info["block_pairs"] = np.array(pairs, dtype=float).reshape(-1)
    return atoms


def test_edge_targets_join_the_neighbour_list_in_any_order_and_batch():
    decl = {"block": declare("block", {"level": "edge", "irreps": "2x0e"})}
    graphs = [graph_from_atoms(edge_frame(s), 2.0, keys={"block": "block"}, targets={**TARGETS, **decl})
              for s in (0, 1)]
    for s, g in enumerate(graphs):
        v = g.targets["block"]
        for e in range(g.num_edges):
            i, j = int(g.edge_index[1, e]), int(g.edge_index[0, e])
            if torch.isfinite(v[e]).all():
                assert v[e, 0].item() == pytest.approx(100 * i + j + s / 10)
    b = batch(graphs)
    assert b.targets["block"].shape == (b.num_edges, 2) and "block" in b.per_edge_targets
    back = b.split()
    for g, h in zip(graphs, back):
        assert torch.equal(torch.nan_to_num(g.targets["block"], 7.0), torch.nan_to_num(h.targets["block"], 7.0))
    # a structure without the target gets NaN rows for its edges
    plain = graph_from_atoms(molecule("CH4"), 2.0)
    mixed = batch([graphs[0], plain])
    assert torch.isnan(mixed.targets["block"][graphs[0].num_edges:]).all()


def test_edge_target_errors_name_the_pair():
    decl = {**TARGETS, "block": declare("block", {"level": "edge", "irreps": "2x0e"})}
    with pytest.raises(ValueError, match="needs its pairs under key 'block_pairs'"):
        graph_from_atoms(edge_frame(0, with_pairs=False), 2.0, keys={"block": "block"}, targets=decl)
    far = edge_frame(0)
    with pytest.raises(ValueError, match=r"block: pair \d+ \(i=\d, j=\d, shift=\[0, 0, 0\]\) is not an edge"):
        graph_from_atoms(far, 1.0, keys={"block": "block"}, targets=decl)


def test_undeclared_keys_are_read_as_they_are():
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], info={"E": -1.0, "label": [1.0, 2.0]})
    atoms.arrays["q"] = np.array([0.1, -0.1])
    values, per_atom, edges = read_targets(atoms, {"energy": "E", "label": "label", "q": "q"})
    assert values["label"].shape == (1, 2) and values["q"].shape == (2,) and per_atom == ("q",) and not edges
