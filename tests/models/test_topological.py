"""Topological families (GCN, graph transformer): they see bonds, never coordinates."""

import csv

import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule

from clebsch.graph import AtomicGraph, batch
from clebsch.models import build_model, families
from clebsch.models._registry import is_topological
from clebsch.models.topological import GCNLayer
from clebsch.testing import float64_model
from clebsch.train.config import ConfigError, load_config

from .conftest import FAMILIES, TARGETS

SPECIES = ["H", "C", "N", "O"]
E0 = [-0.5, -1.0, -1.5, -2.0]
OUTPUTS = ["energy", "gap", "site"]
DECLARED = {"gap": TARGETS["gap"], "site": {"level": "atom", "irreps": "0e"}}
SMALL = {
    "gcn": {"num_layers": 2, "channels": 8},
    "graph_transformer": {"num_layers": 2, "channels": 8, "num_heads": 2, "pe_dim": 3},
}
VARIANTS = [
    ("gcn", {}),
    ("gcn", {"readout": "mean"}),
    ("graph_transformer", {}),
    ("graph_transformer", {"cls_token": True, "virtual_node": True, "readout": "cls"}),
]
IDS = ["gcn", "gcn-mean", "transformer", "transformer-cls-virtual"]


def small(name, seed=0, outputs=OUTPUTS, **extra):
    config = {"name": name, "species": SPECIES, "cutoff": 3.0, "atomic_energies": E0, "scale": 1.3,
              "outputs": list(outputs), "targets": DECLARED, **SMALL[name], **extra}
    return float64_model(config, seed, randomize_zeros=True)


def graph(atoms, cutoff=3.0):
    return AtomicGraph.from_ase(atoms, cutoff, dtype=torch.float64)


def test_topological_families_are_registered_apart_from_the_geometric_contract():
    assert {"gcn", "graph_transformer"} <= set(families(kind="topological"))
    assert not set(families(kind="topological")) & set(FAMILIES)
    assert set(families()) == set(families(kind="topological")) | set(families(kind="geometric"))
    assert is_topological("gcn") and not is_topological("schnet")
    with pytest.raises(ValueError, match="kind must be"):
        families(kind="flat")


def test_gcn_layer_equals_pyg_gcnconv_with_the_same_weights():
    from torch_geometric.nn import GCNConv

    torch.manual_seed(0)
    n = 9  # atom 8 has no edge
    pairs = [(0, 1), (1, 2), (2, 3), (3, 0), (1, 4), (4, 5), (5, 6), (6, 7), (2, 7)]
    edge_index = torch.tensor([[j for i, j in pairs] + [i for i, j in pairs],
                               [i for i, j in pairs] + [j for i, j in pairs]])
    x = torch.randn(n, 5, dtype=torch.float64)
    conv = GCNConv(5, 4).double()
    ours = GCNLayer(5, 4).double()
    with torch.no_grad():
        conv.bias.normal_()
        ours.linear.weight.copy_(conv.lin.weight)
        ours.bias.copy_(conv.bias)
    expected = conv(x, edge_index)
    torch.testing.assert_close(ours(x, edge_index), expected, rtol=1e-12, atol=1e-12)
    # a directed edge list too (degrees counted on the receiver, as GCNConv's flow source_to_target)
    torch.testing.assert_close(ours(x, edge_index[:, :7]), conv(x, edge_index[:, :7]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,extra", VARIANTS, ids=IDS)
def test_relabelling_permutes_atoms_and_leaves_structures_unchanged(name, extra):
    # Laplacian eigenvectors are defined up to sign and degenerate rotations, so the
    # relabelling check runs without them (the bond bias still tells the transformer the bonds)
    if name == "graph_transformer":
        extra = {**extra, "pe_dim": 0}
    model = small(name, **extra)
    atoms = molecule("CH3CH2OH")
    perm = np.random.default_rng(0).permutation(len(atoms))
    out = model(graph(atoms))
    out_p = model(graph(atoms[perm]))
    torch.testing.assert_close(out_p["energy"], out["energy"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_p["gap"], out["gap"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_p["atomic_energies"], out["atomic_energies"][perm], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_p["site"], out["site"][perm], rtol=1e-12, atol=1e-12)
    # the model does see the bonds: breaking one changes the outputs
    broken = atoms.copy()
    broken.positions[8] += 2.5 * (broken.positions[8] - broken.positions[2]) / np.linalg.norm(
        broken.positions[8] - broken.positions[2])
    assert not torch.allclose(model(graph(broken))["gap"], out["gap"], atol=1e-6)


@pytest.mark.parametrize("name,extra", VARIANTS, ids=IDS)
def test_rigid_motions_and_reflections_change_nothing(name, extra):
    model = small(name, **extra)
    atoms = molecule("CH3CH2OH")
    g = graph(atoms)
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    for matrix in (q * np.sign(np.linalg.det(q)), -q * np.sign(np.linalg.det(q))):  # a rotation, then a reflection
        moved = atoms.copy()
        moved.positions = atoms.positions @ matrix.T + rng.normal(size=3) * 5
        out, out_m = model(g), model(graph(moved))
        for key in ("energy", "gap", "atomic_energies"):
            torch.testing.assert_close(out_m[key], out[key], rtol=1e-10, atol=1e-10)


def test_positions_derivatives_are_refused_with_the_model_and_key():
    with pytest.raises(ValueError, match=r"model.outputs: model 'gcn' is topological .* no forces"):
        build_model({"name": "gcn", "species": ["H"], "cutoff": 3.0, "outputs": ["energy", "forces"]})
    with pytest.raises(ValueError, match=r"model 'graph_transformer' is topological .* no stress, born_charges"):
        build_model({"name": "graph_transformer", "species": ["H"], "cutoff": 3.0,
                     "outputs": ["energy", "stress", "dipole", "born_charges"]})
    model = build_model({"name": "gcn", "species": ["H", "O"], "cutoff": 3.0})  # energy by default
    assert model.outputs == ("energy",)
    g = AtomicGraph.from_ase(molecule("H2O"), 3.0)
    with pytest.raises(ValueError, match="model 'gcn' is topological .* no forces"):
        model(g, compute_forces=True)
    with pytest.raises(ValueError, match="model 'gcn' is topological .* no Hessian"):
        model.hessian(g)
    with pytest.raises(ValueError, match=r"model.cutoff: 1.0 Å is shorter than the longest possible bond"):
        build_model({"name": "gcn", "species": ["H", "O"], "cutoff": 1.0})
    with pytest.raises(ValueError, match=r"model.readout: 'cls' needs model.cls_token"):
        build_model({"name": "graph_transformer", "species": ["H"], "cutoff": 3.0, "readout": "cls"})
    # the training config says it before any data is read
    base = ["model.name=gcn", "model.targets={gap: {irreps: 0e, reduce: mean}}"]
    with pytest.raises(ConfigError, match=r"loss.weights.forces: model 'gcn' is topological .* set loss.weights"):
        load_config(None, overrides=base)  # outputs auto is fine (energy and the trained targets), the force loss not
    with pytest.raises(ConfigError, match=r"model.outputs: model 'gcn' is topological .* no forces"):
        load_config(None, overrides=base + ["model.outputs=[energy, forces]"])
    with pytest.raises(ConfigError, match=r"loss.weights.forces: model 'gcn' is topological .* set loss.weights"):
        load_config(None, overrides=base + ["model.outputs=[energy, gap]"])
    cfg = load_config(None, overrides=base + ["model.outputs=[energy, gap]", "loss.weights={forces: 0, gap: 1}"])
    assert cfg.model.name == "gcn"
    assert load_config(None, overrides=base + ["loss.weights={forces: 0, gap: 1}"]).model.outputs == "auto"


def test_isolated_atoms_single_atoms_and_fragments_in_one_batch():
    water = molecule("H2O")
    far = water.copy()
    far.positions += [20.0, 0, 0]
    two_waters = water + far  # disconnected fragments of one structure
    lone = molecule("H2O")
    lone += molecule("CH4")[:1]
    lone.positions[-1] = [0.0, 6.0, 0.0]  # a carbon with no bond, in the same structure
    single = molecule("CH4")[:1]  # a one-atom molecule
    structures = [single, two_waters, lone, water]
    graphs = [graph(a, cutoff=3.0) for a in structures]
    for name, extra in VARIANTS:
        model = small(name, **extra)
        out = model(batch(graphs))
        assert all(torch.isfinite(v).all() for v in out.values())
        for k, g in enumerate(graphs):  # a batch computes what each structure gives alone
            alone = model(g)
            torch.testing.assert_close(out["energy"][k:k + 1], alone["energy"], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(out["gap"][k:k + 1], alone["gap"], rtol=1e-12, atol=1e-12)
        # a one-atom molecule has exactly its reference energy
        assert float(out["energy"][0].detach()) == pytest.approx(E0[1], abs=1e-12)
        if name == "gcn":  # convolutions are local: disconnected fragments add up
            torch.testing.assert_close(out["energy"][1], 2 * out["energy"][3], rtol=1e-12, atol=1e-12)


def gap_frames(n=16):
    names = ["CH4", "H2O", "NH3", "CH3OH", "C2H6", "C2H4", "HCN", "CO2", "H2CO", "CH3CH2OH", "CH3CN", "C2H2"]
    frames = []
    for k in range(n):
        atoms = molecule(names[k % len(names)])
        atoms.rattle(0.02, seed=k)
        heavy = int((atoms.numbers > 1).sum())
        atoms.info["gap"] = 9.0 - 1.5 * heavy + 0.5 * int((atoms.numbers == 8).sum())
        atoms.info["energy"] = 0.0
        frames.append(atoms)
    return frames


def test_gcn_learns_a_per_structure_gap_from_a_yaml_config(tmp_path):
    data = tmp_path / "gaps.xyz"
    ase.io.write(data, gap_frames())
    run = tmp_path / "run"
    config = tmp_path / "gcn.yaml"
    config.write_text(f"""
run_dir: {run}
seed: 0
dtype: float64
device: cpu
model:
  name: gcn
  cutoff: 3.0
  num_layers: 2
  channels: 16
  atomic_energies: zero
  scale: 1.0
  outputs: [energy, gap]
  targets:
    gap: {{level: structure, irreps: 0e, reduce: mean, unit: eV}}
data:
  train: {data}
  valid_fraction: 0.25
  batch_size: 4
  keys: {{energy: energy, gap: gap}}
loss:
  weights: {{energy: 0, forces: 0, gap: 1}}
optimizer:
  lr: 0.01
training:
  max_epochs: 12
  progress: false
  plots: false
  ema_decay: null
""")
    from clebsch.train.trainer import train

    train(str(config), log=lambda *a, **k: None)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert "gap_mae" in rows[0] and "forces_mae" not in rows[0]
    first, last = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    assert last < 0.5 * first, (first, last)  # about 1.05 -> 0.37
    # the packaged model is rebuilt from its own file and still a topological GCN
    from clebsch.models.package import load

    model = load(run / "model.pt", dtype=torch.float64)
    assert model.topological and model.outputs == ("energy", "gap")
    water = model(AtomicGraph.from_ase(molecule("H2O"), 3.0, dtype=torch.float64))
    assert torch.isfinite(water["gap"]).all()
