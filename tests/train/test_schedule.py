"""The learning-rate schedule's stage restart: an absolute rate or a fraction of the rate in force."""

import csv
import math

import pytest
import torch

from clebsch.train.config import ConfigError, load_config
from clebsch.train.schedule import LRSchedule
from clebsch.train.trainer import train

from .conftest import tiny_config


def _schedule(name, lr=0.01, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    return LRSchedule(opt, lr, name, **kw)


def test_restart_factor_scales_the_rate_in_force_for_plateau():
    s = _schedule("plateau", factor=0.5, patience=0, min_lr=1e-6)
    s.start_epoch(0)
    s.end_epoch(0, 1.0)
    s.end_epoch(1, 2.0)  # no better: the plateau halves the rate
    assert s.start_epoch(2) == pytest.approx(0.005)
    s.restart(factor=0.1)
    assert s.start_epoch(3) == pytest.approx(0.0005)  # a tenth of the rate in force, not of the peak
    assert math.isinf(s.best) and s.bad_epochs == 0


def test_restart_factor_for_constant_and_cosine_and_absolute_rate():
    s = _schedule("none", lr=0.001)
    s.restart(factor=0.1)
    assert s.start_epoch(5) == pytest.approx(1e-4)
    s = _schedule("none", lr=0.001)
    s.restart(lr=0.003)
    assert s.start_epoch(5) == pytest.approx(0.003)
    c = _schedule("cosine", lr=0.01, max_epochs=10, min_lr=0.0)
    before = c.start_epoch(4)
    c.restart(factor=0.1)
    assert c.start_epoch(4) == pytest.approx(before * 0.1)
    assert c.start_epoch(9) < c.start_epoch(4)  # the decay goes on from there
    # a floor above the new rate is lowered, so the factor is not undone by min_lr
    f = _schedule("none", lr=1e-5, min_lr=1e-5)
    f.restart(factor=0.1)
    assert f.start_epoch(1) == pytest.approx(1e-6)
    with pytest.raises(ValueError, match="lr or factor"):
        s.restart(lr=0.1, factor=0.1)


def test_restart_state_survives_a_checkpoint():
    c = _schedule("cosine", lr=0.01, max_epochs=10, min_lr=0.001)
    c.restart(factor=0.01)
    d = _schedule("cosine", lr=0.01, max_epochs=10, min_lr=0.001)
    d.load_state_dict(c.state_dict())
    assert [d.start_epoch(e) for e in range(10)] == [c.start_epoch(e) for e in range(10)]


def test_second_stage_lr_and_lr_factor_are_exclusive():
    with pytest.raises(ConfigError, match="lr_factor"):
        load_config(None, ["second_stage.enabled=true", "second_stage.lr=0.001", "second_stage.lr_factor=0.1"])
    with pytest.raises(ConfigError, match="second_stage.lr_factor"):
        load_config(None, ["second_stage.lr_factor=2"])


def test_training_second_stage_runs_at_a_fraction_of_the_first_stage_rate(tiny_xyz, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(tiny_xyz, run, scheduler={"name": "none"},
                         training={"max_epochs": 4, "progress": False, "plots": False},
                         second_stage={"enabled": True, "start_epoch": 2, "lr_factor": 0.1})
    lines = []
    train(config, log=lambda *a: lines.append(" ".join(map(str, a))))
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    first = [float(r["lr"]) for r in rows if r["stage"] == "1"]
    second = [float(r["lr"]) for r in rows if r["stage"] == "2"]
    assert first and second
    assert all(lr == pytest.approx(0.005) for lr in first)
    assert all(lr == pytest.approx(0.0005) for lr in second)
    assert any("second stage" in line and "0.0005" in line for line in lines)
