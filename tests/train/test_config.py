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
