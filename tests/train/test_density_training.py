"""A density trained with conserve_electrons: the packaged model still holds every structure's electrons, and
reference densities that do not hold theirs stop training with the file, frame and key named."""

from pathlib import Path

import ase.io
import pytest
import torch

import clebsch
from clebsch.data.io import read_structures
from clebsch.data.targets import graph_from_atoms
from clebsch.train.config import ConfigError
from clebsch.train.trainer import train

from .conftest import quiet

ROOT = Path(__file__).parents[2]
DATA = ROOT / "examples" / "water_clusters.xyz.xz"
BASIS = {"file": str(ROOT / "examples" / "water_clusters.basis.json"), "key": "aux"}


def _config(run, data):
    return {
        "run_dir": str(run), "seed": 0, "dtype": "float64",
        "model": {"name": "nequip", "cutoff": 4.0, "num_layers": 1, "channels": 4, "lmax": 1,
                  "outputs": ["energy", "density"],
                  "targets": {"density": {"level": "atom", "basis": BASIS, "conserve_electrons": True}}},
        "data": {"train": str(data), "valid_fraction": 0.25, "batch_size": 4,
                 "keys": {"energy": "energy", "density": "density_coefficients"}},
        "loss": {"weights": {"energy": 0.0, "forces": 0.0, "density": 1.0}},
        "training": {"max_epochs": 2, "progress": False, "plots": False},
    }


def test_packaged_density_holds_the_electrons(tmp_path):
    frames = read_structures(DATA, "95:107")  # monomers and dimers
    data = tmp_path / "water.xyz"
    ase.io.write(data, frames)
    config = _config(tmp_path / "run", data)
    config["model"]["readout_channels"] = 5
    result = train(config, log=quiet)
    model = clebsch.load(result["model_path"])
    assert model.targets["density"].conserve_electrons
    assert model.config["readout_channels"] == 5
    trimer = read_structures(DATA, "185:186")[0]  # a structure size never trained on
    graph = graph_from_atoms(trimer, model.cutoff, keys={}, dtype=torch.float64)
    rho = model(graph)["density"].detach()
    basis = model.targets["density"].basis
    w = basis.charge_integrals((1, 8))[(graph.numbers == 8).long()]
    assert float((rho * w).sum()) == pytest.approx(30.0, abs=1e-8)


def test_reference_densities_that_miss_electrons_are_named(tmp_path):
    frames = read_structures(DATA, "95:103")
    frames[5].info["charge"] = 1  # the file's density is that of the neutral molecule
    data = tmp_path / "water.xyz"
    ase.io.write(data, frames)
    with pytest.raises(ConfigError, match=r"water.xyz', frame 5, key 'density_coefficients': the reference density "
                                          r"holds 20.000\d electrons, but .* make 19"):
        train(_config(tmp_path / "run", data), log=quiet)
    assert not (tmp_path / "run" / "model.pt").exists()


def test_readout_channels_without_a_declared_target_warn(tmp_path):
    data = tmp_path / "water.xyz"
    ase.io.write(data, read_structures(DATA, "95:103"))
    config = _config(tmp_path / "run", data)
    config["model"].update(outputs=["energy"], targets={}, readout_channels=8)
    config["data"]["keys"] = {"energy": "energy"}
    config["loss"]["weights"] = {"energy": 1.0, "forces": 0.0}
    config["training"]["max_epochs"] = 1
    with pytest.warns(UserWarning, match="model.readout_channels: 8 widens the heads of declared targets"):
        train(config, log=quiet)


def test_a_density_committee_trains_and_is_evaluated_as_its_mean(tmp_path, capsys):
    import json

    from clebsch.cli import main
    from clebsch.train.committee import train_committee

    data = tmp_path / "water.xyz"
    ase.io.write(data, read_structures(DATA, "95:107"))
    config = _config(tmp_path / "run", data)
    config["data"]["test_fraction"] = 0.2
    config["training"]["max_epochs"] = 1
    config["training"]["committee"] = 2
    messages = []
    result = train_committee(config, log=messages.append)
    metrics = json.loads((tmp_path / "run" / "committee_metrics.json").read_text())  # strict JSON: no NaN
    assert metrics["force_error_mean"] is None and metrics["frames"] == 2
    assert any("no reference forces" in m for m in messages)
    capsys.readouterr()
    assert main(["evaluate", result["committee_path"], f"{DATA}@185:187"]) == 0
    text = capsys.readouterr().out
    assert "the mean of the 2 models of committee" in text and "density eps_rho %" in text
