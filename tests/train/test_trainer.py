import csv

import pytest
import torch

from clebsch.train.trainer import train

from .conftest import quiet, tiny_config


def test_short_run_lowers_loss_and_writes_everything(tiny_xyz, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(tiny_xyz, run, training={"max_epochs": 5, "progress": False, "plots": True},
                         second_stage={"enabled": True, "start_epoch": 4})
    result = train(config, log=quiet)
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5
    assert float(rows[-2]["train_loss"]) < float(rows[0]["train_loss"])  # the last epoch is stage 2
    assert {"forces_mae", "energy_rmse", "md:forces_mae", "rattled:energy_mae"} <= set(rows[0])
    assert rows[-1]["stage"] == "2"
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "model.pt", "split.json", "config.yaml",
                 "test_metrics.json", "plots/parity_energy.png", "plots/parity_forces.png",
                 "plots/learning_curves.png"):
        assert (run / name).is_file(), name
    assert "forces_mae" in result["test_metrics"]["all"]
    # a second fresh run into the same directory is refused rather than overwriting it
    from clebsch.train.config import ConfigError

    with pytest.raises(ConfigError, match="--resume"):
        train(config, log=quiet)


class Crash(RuntimeError):
    pass


def test_resume_after_crash_matches_uninterrupted(tiny_xyz, tmp_path):
    extra = {"scheduler": {"name": "cosine", "warmup_epochs": 1}, "training": {"max_epochs": 4, "progress": False,
             "plots": False, "ema_decay": 0.9}}
    full = tiny_config(tiny_xyz, tmp_path / "full", **extra)
    train(full, log=quiet)

    broken = tiny_config(tiny_xyz, tmp_path / "broken", **extra)

    def crash(epoch, step):
        if epoch == 2 and step == 2:
            raise Crash("simulated kill in the middle of epoch 3")

    with pytest.raises(Crash):
        train(broken, on_step=crash, log=quiet)
    assert not (tmp_path / "broken" / "model.pt").exists()
    train(str(tmp_path / "broken"), resume=True, log=quiet)

    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "broken" / "checkpoints" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 4
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-10, atol=1e-12)
    with open(tmp_path / "full" / "metrics.csv") as fa, open(tmp_path / "broken" / "metrics.csv") as fb:
        ra, rb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert [r["epoch"] for r in rb] == ["1", "2", "3", "4"]
    assert [r["valid_loss"] for r in ra] == [r["valid_loss"] for r in rb]


def test_max_time_and_missing_key_errors(tiny_xyz, tmp_path):
    config = tiny_config(tiny_xyz, tmp_path / "t", training={"max_epochs": 1000, "max_time": 0.5,
                                                              "progress": False, "plots": False})
    result = train(config, log=quiet)
    assert result["stopped"] == "max_time" and result["epochs"] < 1000

    bad = tiny_config(tiny_xyz, tmp_path / "bad")
    bad["data"]["keys"] = {"energy": "REF_energy"}
    with pytest.raises(ValueError, match=r"REF_energy.*tiny.xyz.*frame 0"):
        train(bad, log=quiet)
