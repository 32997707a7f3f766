import pytest
import yaml

from clebsch.train.config import ConfigError, TrainConfig, default_config_yaml, load_config


def test_defaults_everywhere():
    config = load_config(None)
    assert config.model.name == "nequip" and config.loss.weights["forces"] > 0
    assert isinstance(config, TrainConfig)


def test_unknown_key_names_key_and_allowed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  max_epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "training.max_epoch" in message and "max_epochs" in message and str(path) in message


def test_unknown_section():
    with pytest.raises(ConfigError, match="optimiser: unknown key; allowed keys: run_dir, seed"):
        load_config(None, ["optimiser.lr=0.1"])


def test_bad_value_names_allowed_values():
    with pytest.raises(ConfigError, match="optimizer.name: 'sgd' is not allowed; allowed values: 'adam', 'adamw'"):
        load_config(None, ["optimizer.name=sgd"])
    with pytest.raises(ConfigError, match="model.cutoff"):
        load_config(None, ["model.cutoff=-1"])
    with pytest.raises(ConfigError, match="training.max_time"):
        load_config(None, ["training.max_time=soon"])


def test_unknown_model_hyperparameter_lists_allowed():
    with pytest.raises(ConfigError, match=r"num_layrs.*allowed keys:.*num_layers"):
        load_config(None, ["model.name=schnet", "model.num_layrs=3"])


def test_set_overrides_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: schnet\n  num_layers: 2\ntraining:\n  max_time: 3m\n")
    config = load_config(path, ["model.num_layers=3", "loss.kind=huber"])
    assert config.model.hyperparameters()["num_layers"] == 3
    assert config.loss.kind == "huber" and config.training.max_time == 180.0
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(path, ["model.num_layers"])
    with pytest.raises(ConfigError, match="model.name is not a section"):
        load_config(path, ["model.name.x=1"])


def test_default_config_round_trips():
    text = default_config_yaml("schnet")
    assert "# " in text and "num_layers" in text
    config = load_config(None, base=yaml.safe_load(text))
    assert config.model.name == "schnet" and config.model.hyperparameters()["num_layers"] >= 1


def test_print_default_config_cli(capsys):
    from clebsch.cli import main

    assert main(["train", "--print-default-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# clebsch training configuration")
    yaml.safe_load(out)


def test_cli_reports_config_error(capsys, tmp_path):
    from clebsch.cli import main

    assert main(["train", "--set", "loss.kind=l1", "--set", f"run_dir={tmp_path}"]) == 2
    assert "loss.kind: 'l1' is not allowed; allowed values: 'mse', 'huber'" in capsys.readouterr().err


def test_data_files_may_be_lists(tmp_path):
    """data.train/valid/test take one file or a list, read in order; an empty list is refused."""
    import ase.io
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator
    import torch

    from clebsch.train.data import load_run_data

    paths = []
    for k, name in enumerate(("H2O", "CH4")):
        frames = []
        for i in range(3 + k):
            atoms = molecule(name)
            atoms.rattle(0.01, seed=i)
            atoms.calc = SinglePointCalculator(atoms, energy=float(10 * k + i))
            frames.append(atoms)
        paths.append(str(tmp_path / f"{name}.xyz"))
        ase.io.write(paths[-1], frames)
    cfg = load_config(None, overrides=[f"data.train=['{paths[0]}', '{paths[1]}@1:']", "data.valid_fraction=0"])
    assert cfg.data.train == [paths[0], f"{paths[1]}@1:"]
    data = load_run_data(cfg.data, 3.0, torch.float64, seed=0, keys={"energy": "energy"})
    energies = sorted(float(g.targets["energy"]) for g in data.train)
    assert energies == [0.0, 1.0, 2.0, 11.0, 12.0, 13.0]
    assert load_config(None, overrides=[f"data.train=[{paths[0]}]"]).data.train == paths[0]
    with pytest.raises(ConfigError, match="data.train"):
        load_config(None, overrides=["data.train=[]"])


def test_a_relative_data_path_beside_the_config_is_named(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "frames.xyz").write_text("1\n\nH 0 0 0\n")
    config = folder / "train.yaml"
    config.write_text(yaml.safe_dump({"data": {"train": "frames.xyz", "test": ["frames.xyz"]}}))
    monkeypatch.chdir(tmp_path)  # the file is beside the config, not here
    with pytest.raises(ConfigError, match=r"data.train: 'frames.xyz' does not exist in the working directory") as err:
        load_config(config)
    assert str(folder) in str(err.value) and "run from" in str(err.value)
    monkeypatch.chdir(folder)  # from the config's folder the same file loads
    assert load_config(config).data.train == "frames.xyz"
    monkeypatch.chdir(tmp_path)  # a path that exists nowhere is left to the reader, which names it
    config.write_text(yaml.safe_dump({"data": {"train": "missing.xyz"}}))
    assert load_config(config).data.train == "missing.xyz"
