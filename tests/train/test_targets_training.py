"""Loss terms and metrics for any target, per-structure weights, old configs and old packaged models."""

import json

import numpy as np
import types
from pathlib import Path

import pytest
import torch

from clebsch.graph import AtomicGraph, batch
from clebsch.targets import resolve_targets
from clebsch.train.config import load_config
from clebsch.train.losses import WeightedLoss
from clebsch.train.metrics import MetricsAccumulator, format_table

FIXTURES = Path(__file__).parent.parent / "fixtures"


def two_structures(weights=None):
    g = [AtomicGraph.from_tensors(torch.tensor([[0.0, 0, 0], [1.0, 0, 0]]), [1, 1], 2.0, config_type=c)
         for c in ("md", "relax")]
    for k, x in enumerate(g):
        x.targets["energy"] = torch.tensor([1.0 * k])
        x.targets["gap"] = torch.tensor([2.0])
        x.targets["shielding"] = torch.ones(2, 3, 3)
        if weights is not None:
            x.targets["weight"] = torch.tensor([weights[k]])
    return batch(g)


TARGETS = resolve_targets({"gap": {"irreps": "0e", "reduce": "mean", "unit": "eV"},
                           "shielding": {"level": "atom", "cartesian": "ij", "unit": "ppm"}})


def test_loss_has_a_term_per_declared_target_and_respects_weights():
    g = two_structures()
    out = {"energy": torch.tensor([0.0, 0.0]), "gap": torch.tensor([3.0, 2.0]), "shielding": torch.zeros(4, 3, 3)}
    loss = WeightedLoss({"energy": 0.0, "gap": 2.0, "shielding": 1.0}, targets=TARGETS)
    total, parts = loss(out, g)
    assert parts == {"gap": pytest.approx(0.5), "shielding": pytest.approx(1.0)}
    assert float(total) == pytest.approx(2 * 0.5 + 1.0)
    # per-frame weights: the first structure's errors count zero
    g = two_structures(weights=[0.0, 1.0])
    total, parts = WeightedLoss({"gap": 1.0}, targets=TARGETS)(out, g)
    assert parts["gap"] == pytest.approx(0.0)
    # config_type weights multiply per-atom terms through the atom's structure
    g = two_structures()
    out["shielding"] = torch.cat([torch.zeros(2, 3, 3), torch.ones(2, 3, 3)])
    _, parts = WeightedLoss({"shielding": 1.0}, targets=TARGETS, config_type_weights={"md": 3.0})(out, g)
    assert parts["shielding"] == pytest.approx(3.0 * 18 / 36)
    with pytest.raises(ValueError, match=r"unknown target\(s\) \['nope'\]"):
        WeightedLoss({"nope": 1.0}, targets=TARGETS)


def test_metrics_in_the_targets_units_per_config_type_and_nonfinite_counted():
    g = two_structures()
    acc = MetricsAccumulator(TARGETS)
    out = {"energy": torch.tensor([0.5, float("nan")]), "gap": torch.tensor([2.5, 2.0]),
           "shielding": torch.full((4, 3, 3), 1.1)}
    acc.update(out, g)
    m = acc.compute()
    assert m["all"]["gap_mae"] == pytest.approx(0.25) and m["md"]["gap_mae"] == pytest.approx(0.5)
    assert m["all"]["shielding_mae"] == pytest.approx(0.1)
    assert m["all"]["energy_mae"] == pytest.approx(500.0) and m["all"]["energy_nonfinite"] == 1
    table = format_table(m, targets=TARGETS)
    assert "gap MAE eV" in table and "shielding MAE ppm" in table and "non-finite predictions" in table


def test_old_weight_keys_are_still_read():
    cfg = load_config(None, base={"loss": {"energy_weight": 3.0, "dipole_weight": 2.0},
                                  "second_stage": {"enabled": True, "energy_weight": 50.0}})
    assert cfg.loss.weights == {"energy": 3.0, "forces": 100.0, "dipole": 2.0}
    assert cfg.second_stage.weights == {"energy": 50.0, "forces": 100.0}
    assert cfg.stage_weights(2) == {"energy": 50.0, "forces": 100.0, "dipole": 2.0}


def test_config_checks_target_names_and_families():
    from clebsch.train.config import ConfigError

    with pytest.raises(ConfigError, match=r"loss.weights: unknown target\(s\) \['gap'\]"):
        load_config(None, overrides=["loss.weights={gap: 1}"])
    with pytest.raises(ConfigError, match=r"data.keys: unknown target\(s\) \['gap'\]"):
        load_config(None, overrides=["data.keys={gap: HOMO_LUMO}"])
    cfg = load_config(None, overrides=["loss.weights={gap: 1}", "data.keys={gap: HOMO_LUMO}",
                                       "model.targets={gap: {irreps: 0e, reduce: mean}}"])
    assert cfg.loss.weights["gap"] == 1.0 and cfg.loss.weights["forces"] == 100.0
    with pytest.raises(ConfigError, match="model.name: 'nosuchnet' is not allowed; allowed values: .*nequip"):
        load_config(None, overrides=["model.name=nosuchnet"])
    with pytest.raises(ConfigError, match=r"model.channels: 'many' is not an int"):
        load_config(None, overrides=["model.channels=many"])
    with pytest.raises(ConfigError, match=r"model.lmax: 100 is outside the supported range 0..8 for model 'nequip'"):
        load_config(None, overrides=["model.lmax=100"])
    with pytest.raises(ValueError, match=r"model.num_layers: 0 is outside the supported range"):
        from clebsch.models import build_model

        build_model({"name": "mace", "species": ["H"], "cutoff": 3.0, "num_layers": 0})
    with pytest.raises(ConfigError, match=r"model.outputs: unknown target\(s\) \['gap'\]"):
        load_config(None, overrides=["model.outputs=[energy, gap]"])


def test_a_model_packaged_before_the_target_registry_loads_with_the_same_numbers():
    import clebsch

    model = clebsch.load(FIXTURES / "nequip_v1_package.pt")
    ref = json.loads((FIXTURES / "nequip_v1_outputs.json").read_text())
    dtype = model.atomic_energies.dtype
    g = AtomicGraph.from_tensors(torch.tensor(ref["positions"], dtype=dtype), ref["numbers"], model.cutoff)
    out = model(g)
    for name in ("energy", "forces", "dipole", "polarizability", "charges"):
        assert torch.allclose(out[name].detach().double(), torch.tensor(ref[name], dtype=torch.float64),
                              rtol=1e-10, atol=1e-10), name


def test_declared_heads_start_from_the_training_statistics():
    """A per-atom tensor head starts at its elements' mean isotropic part and the data's spread."""
    from clebsch.models import build_model, target_statistics

    t = TARGETS["shielding"]
    graphs = []
    for k in range(6):
        g = AtomicGraph.from_tensors(torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.3, 0.9, 0]]), [8, 1, 1], 2.0)
        g.targets["shielding"] = torch.stack([torch.eye(3) * 300.0, torch.eye(3) * 30.0, torch.eye(3) * 30.0]) \
            + torch.randn(3, 3, 3)
        graphs.append(g)
    stats = target_statistics(t, graphs, [1, 8])
    iso = 3 ** 0.5  # the 0e component of c * I is sqrt(3) c
    assert abs(stats["shift"][0][0] - 30 * iso) < 3 and abs(stats["shift"][1][0] - 300 * iso) < 3
    assert 0.5 < stats["scale"] < 2.0
    torch.manual_seed(0)
    model = build_model({"name": "schnet", "species": ["H", "O"], "cutoff": 2.0, "outputs": ["energy", "shielding"],
                         "targets": {"shielding": {"level": "atom", "cartesian": "ij"}},
                         "target_stats": {"shielding": stats}})
    pred = model(graphs[0])["shielding"].detach()
    trace = pred.diagonal(dim1=1, dim2=2).sum(-1) / 3
    assert abs(float(trace[0]) - 300) < 30 and abs(float(trace[1]) - 30) < 30


def test_evaluate_reports_nonfinite_predictions_and_fails(tmp_path, monkeypatch, capsys):
    """A model that predicts NaN is not scored on the rest in silence: the count is printed and the exit code is 1."""
    import ase.io
    from ase.build import molecule

    from clebsch.cli import main
    from clebsch.models import build_model
    from clebsch.models.package import save_package

    torch.manual_seed(0)
    model = build_model({"name": "schnet", "species": ["H", "C", "O"], "cutoff": 3.0, "num_layers": 1, "channels": 4})
    with torch.no_grad():
        model.atomic_energies[0] = float("nan")  # every structure with hydrogen gets a NaN energy
    save_package(model, tmp_path / "m.pt")
    frames = []
    for seed in range(3):
        a = molecule("CH3OH")
        a.rattle(0.05, seed=seed)
        a.info["energy"] = -10.0
        a.arrays["forces"] = np.zeros((6, 3))
        frames.append(a)
    ase.io.write(tmp_path / "d.xyz", frames)
    code = main(["evaluate", str(tmp_path / "m.pt"), str(tmp_path / "d.xyz")])
    out = capsys.readouterr()
    assert code == 1 and "energy: 3" in out.err and "non-finite predictions" in out.out


def test_evaluate_reads_the_keys_a_model_was_trained_from():
    """A packaged model's training config maps targets to keys; evaluate uses them unless told otherwise."""
    import types

    from clebsch.targets import resolve_targets
    from clebsch.train.evaluate import evaluate_keys

    targets = resolve_targets({"gap": {"irreps": "0e", "reduce": "mean"}})
    model = types.SimpleNamespace(outputs=("energy", "forces", "gap"), targets=targets,
                                  package={"metadata": {"train_config": {"data": {"keys": {"gap": "homo_lumo_gap"}}}}})
    assert evaluate_keys(model) == {"energy": "energy", "forces": "forces", "gap": "homo_lumo_gap"}
    assert evaluate_keys(model, {"gap": "g2", "forces": None}) == {"energy": "energy", "gap": "g2"}
    model.package = None  # a model built in Python, not loaded from a file
    assert evaluate_keys(model)["gap"] == "gap"
