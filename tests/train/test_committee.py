import json

import pytest
import torch
import yaml

from clebsch.data.splits import load_split
from clebsch.train.committee import train_committee
from clebsch.train.config import ConfigError
from clebsch.uncertainty import Committee

from .conftest import quiet, tiny_config


class Crash(RuntimeError):
    pass


def test_two_members_share_the_split_and_differ_in_weights(tiny_xyz, tmp_path):
    run = tmp_path / "committee"
    config = tiny_config(tiny_xyz, run, training={"max_epochs": 2, "progress": False, "plots": False,
                                                   "committee": 2})
    steps = []

    def crash(epoch, step):  # the second member is killed in its second epoch
        steps.append((epoch, step))
        if len(steps) == 6:
            raise Crash("simulated kill")

    with pytest.raises(Crash):
        train_committee(config, on_step=crash, log=quiet)
    assert (run / "member_0" / "model.pt").is_file() and not (run / "member_1" / "model.pt").exists()
    with pytest.raises(ConfigError, match="--resume"):
        train_committee(config, log=quiet)
    result = train_committee(str(run), resume=True, log=quiet)  # member 0 is kept, member 1 resumed

    assert result["members"][0].get("skipped") and not result["members"][1].get("skipped")
    seeds = [yaml.safe_load((run / f"member_{k}" / "config.yaml").read_text())["seed"] for k in range(2)]
    assert seeds == [3, 4]
    # one split for all: the held-out frames are files every member reads; the members train on all of train.xyz
    split = load_split(run / "split.json")
    assert [len(split[k]) for k in ("train", "valid", "test")] == [8, 4, 4]
    for k in range(2):
        data = yaml.safe_load((run / f"member_{k}" / "config.yaml").read_text())["data"]
        assert data["valid"] == str(run / "data" / "valid.extxyz") and data["test"] == str(run / "data" / "test.extxyz")
        member_split = load_split(run / f"member_{k}" / "split.json")
        assert sorted(member_split["train"]) == list(range(8)) and member_split["valid"] == member_split["test"] == []
        assert json.loads((run / f"member_{k}" / "test_metrics.json").read_text())["set"] == "test"
    a, b = (torch.load(p, weights_only=True)["state_dict"] for p in result["model_paths"])
    assert any(not torch.equal(a[key], b[key]) for key in a)

    committee = Committee.load(result["committee_path"])
    assert len(committee) == 2 and committee.calibration["forces"] > 0
    assert result["calibration"]["forces"] == committee.calibration["forces"]
    metrics = json.loads((run / "committee_metrics.json").read_text())
    assert metrics["set"] == "test" and metrics["frames"] == 4 and metrics["force_uncertainty_mean"] > 0


def test_committee_needs_two_members(tiny_xyz, tmp_path):
    config = tiny_config(tiny_xyz, tmp_path / "one")
    with pytest.raises(ConfigError, match="training.committee is 1"):
        train_committee(config, log=quiet)
