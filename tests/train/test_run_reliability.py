"""Runs that go wrong: a non-finite loss, a busy run directory, CSV columns, unseen elements, log-file progress."""

import csv
import subprocess
import sys
import textwrap
import warnings

import ase.io
import pytest
import torch

from clebsch.train.config import ConfigError
from clebsch.train.trainer import train

from .conftest import make_frames, quiet, tiny_config


def test_nonfinite_loss_stops_at_once_and_packages_the_last_good_checkpoint(tiny_xyz, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(tiny_xyz, run, training={"max_epochs": 30, "progress": False, "plots": False})
    messages = []
    blow_up = {"epoch": 2}

    def on_step(epoch, step):
        if epoch == blow_up["epoch"] and step == 1:  # the weights turn to inf: the next loss is not finite
            with torch.no_grad():
                for p in trainer_model[0].parameters():
                    p.fill_(float("inf"))

    from clebsch.train import trainer as trainer_module

    trainer_model = []
    original = trainer_module.Trainer.setup

    def setup(self):
        original(self)
        trainer_model.append(self.model)

    trainer_module.Trainer.setup = setup
    try:
        result = train(config, on_step=on_step, log=messages.append)
    finally:
        trainer_module.Trainer.setup = original
    assert result["stopped"] == "nonfinite_loss"
    assert result["epochs"] == 2, "training went on after the loss turned non-finite"
    assert any("training loss became" in m and "Lower optimizer.lr" in m for m in messages)
    import clebsch

    model = clebsch.load(run / "model.pt")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _train_with_weights_zeroed_from(epoch, config, messages):
    """Train ``config``; from ``epoch`` on, every weight is set to zero after each step (a dead network whose
    energy no longer depends on the positions)."""
    from clebsch.train import trainer as trainer_module

    models = []
    original = trainer_module.Trainer.setup

    def setup(self):
        original(self)
        models.append(self.model)

    def on_step(e, step):
        if e >= epoch:
            with torch.no_grad():
                for p in models[0].parameters():
                    p.zero_()

    trainer_module.Trainer.setup = setup
    try:
        return train(config, on_step=on_step, log=messages.append)
    finally:
        trainer_module.Trainer.setup = original


def test_a_dead_model_stops_with_a_message_and_keeps_what_was_written(tiny_xyz, tmp_path):
    """Forces exactly zero through a whole epoch (where the reference's are not) stop the run at that epoch,
    with a message that says why and what to change; the best model so far is packaged."""
    run = tmp_path / "run"
    config = tiny_config(tiny_xyz, run, training={"max_epochs": 30, "progress": False, "plots": False,
                                                  "ema_decay": None})
    messages = []
    result = _train_with_weights_zeroed_from(1, config, messages)  # epochs count from 0: the second one dies
    assert result["stopped"] == "dead_model"
    assert result["epochs"] == 3, "the dead epoch is the third: its first step still saw the second's weights"
    text = "\n".join(messages)
    assert "forces were exactly zero in every step of epoch 3" in text and "Lower optimizer.lr (now 0.005)" in text
    assert (run / "model.pt").exists() and (run / "checkpoints" / "best.pt").exists()
    with open(run / "metrics.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2
    from clebsch.train.checkpoint import load_checkpoint

    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2  # not overwritten by the dead state


def test_zero_reference_forces_are_not_a_dead_model(tmp_path):
    """Structures whose reference forces are all zero (e.g. perfect crystals) do not trip the check."""
    frames = make_frames(12)
    for atoms in frames:
        atoms.calc.results["forces"] = 0.0 * atoms.calc.results["forces"]
    path = tmp_path / "still.xyz"
    ase.io.write(path, frames)
    config = tiny_config(path, tmp_path / "run", training={"max_epochs": 4, "progress": False, "plots": False})
    result = _train_with_weights_zeroed_from(1, config, [])
    assert result["stopped"] == "max_epochs" and result["epochs"] == 4


def test_an_untrained_model_with_huge_forces_is_named_before_it_diverges(tiny_xyz, tmp_path):
    """SEGNN without its norm multiplies its features layer by layer: the first step says so; with the norm
    (the default) nothing is said."""
    said = {}
    for norm in (False, True):
        messages = []
        model = {"name": "segnn", "cutoff": 5.0, "num_layers": 5, "channels": 8, "norm": norm}
        train(tiny_config(tiny_xyz, tmp_path / f"run-{norm}", model=model,
                          training={"max_epochs": 1, "progress": False, "plots": False}), log=messages.append)
        said[norm] = [m for m in messages if "untrained segnn predicts forces" in m]
    assert len(said[False]) == 1 and "times larger (RMS) than the data's" in said[False][0], said
    assert said[True] == []


def test_family_training_defaults_apply_where_the_config_is_silent():
    """DimeNet++ trains with lr 0.001 unless the config (or --set) says otherwise; other families keep 0.01."""
    from clebsch.train.config import default_config_yaml, load_config

    assert load_config(None, base={"model": {"name": "dimenet"}}).optimizer.lr == 0.001
    assert load_config(None, base={"model": {"name": "dimenet"}, "optimizer": {"lr": 0.02}}).optimizer.lr == 0.02
    assert load_config(None, ["optimizer.lr=0.03"], base={"model": {"name": "dimenet"}}).optimizer.lr == 0.03
    assert load_config(None, base={"model": {"name": "schnet"}}).optimizer.lr == 0.01
    assert "  lr: 0.001" in default_config_yaml("dimenet").splitlines()


def test_a_huge_learning_rate_ends_with_a_message_not_a_budget(tiny_xyz, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(tiny_xyz, run, optimizer={"lr": 1e12, "clip_grad_norm": None},
                         training={"max_epochs": 50, "progress": False, "plots": False, "ema_decay": None})
    with pytest.raises(ConfigError, match=r"loss became non-finite in the first epoch .* nothing was packaged. "
                                          r"Lower optimizer.lr \(now 1e\+12\)"):
        train(config, log=quiet)
    assert not (run / "model.pt").exists()


def test_csv_columns_are_fixed_at_the_start(tiny_xyz, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_xyz, run, training={"max_epochs": 4, "valid_every": 2, "progress": False,
                                               "plots": False}), log=quiet)
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    assert "forces_mae" in rows[0] and rows[0]["forces_mae"] == "" and rows[1]["forces_mae"] != ""
    assert "md:energy_mae" in rows[0]


def test_restart_after_a_kill_before_the_first_checkpoint_has_one_header(tiny_xyz, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,stage,train_loss\n1,1,0.5\n")  # left by a killed first epoch
    train(tiny_config(tiny_xyz, run, training={"max_epochs": 2, "progress": False, "plots": False}), log=quiet)
    text = (run / "metrics.csv").read_text().splitlines()
    assert sum(line.startswith("epoch,") for line in text) == 1 and len(text) == 3


def test_a_run_directory_in_use_is_refused(tiny_xyz, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(tiny_xyz, run)
    holder = textwrap.dedent(f"""
        import fcntl, os, sys, time
        os.makedirs({str(run)!r}, exist_ok=True)
        fd = os.open({str(run / '.lock')!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242")
        print("locked", flush=True)
        time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=r"run_dir .* is in use by another training \(pid 4242\)"):
            train(config, log=quiet)
    finally:
        proc.kill()
        proc.wait()
    train(config, log=quiet)  # free again once the other process is gone (even killed)


def test_an_element_only_in_the_validation_file_is_an_error(tiny_xyz, tmp_path):
    frames = make_frames(4, seed=50)
    for a in frames:
        a.numbers[0] = 7  # nitrogen, never in the training file
    valid = tmp_path / "valid.xyz"
    ase.io.write(valid, frames)
    config = tiny_config(tiny_xyz, tmp_path / "run")
    config["data"]["valid"] = str(valid)
    with pytest.raises(ConfigError, match=r"validation set \(.*valid.xyz\) holds \['N'\]"):
        train(config, log=quiet)


def test_test_structures_that_are_also_training_structures_are_named(tiny_xyz, tmp_path):
    test = tmp_path / "test.xyz"
    ase.io.write(test, make_frames(16) + make_frames(2, seed=100))  # the whole training file and two new frames
    config = tiny_config(tiny_xyz, tmp_path / "run", training={"max_epochs": 1, "progress": False, "plots": False})
    config["data"]["test"] = str(test)
    with pytest.warns(UserWarning, match=r"12 of the 18 test structures \(file '.*test.xyz', frames .*\) are also in "
                                         r"the training set \(file '.*tiny.xyz'\)"):
        train(config, log=quiet)
    doubled = tmp_path / "doubled.xyz"  # one file holding every frame twice: a random split puts twins on both sides
    ase.io.write(doubled, make_frames(16) * 2)
    config = tiny_config(doubled, tmp_path / "run2", training={"max_epochs": 1, "progress": False, "plots": False})
    with pytest.warns(UserWarning, match=r"of the 8 test structures \(file '.*doubled.xyz', frames \d+"):
        train(config, log=quiet)
    config = tiny_config(tiny_xyz, tmp_path / "run3", training={"max_epochs": 1, "progress": False, "plots": False})
    with warnings.catch_warnings(record=True) as caught:  # distinct frames: nothing said
        warnings.simplefilter("always")
        train(config, log=quiet)
    assert not [w for w in caught if "also in the training set" in str(w.message)]


def test_progress_in_a_log_file_is_one_line_per_epoch(tiny_xyz, tmp_path):
    script = textwrap.dedent(f"""
        from clebsch.train.trainer import train
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        train({tiny_config(tiny_xyz, tmp_path / 'run', training={'max_epochs': 3, 'progress': True,
                                                                    'plots': False})!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    epochs = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3 and "F MAE" in epochs[0] and "meV/Å" in epochs[0]


def test_kill9_during_training_keeps_every_file_readable_and_resumes(tiny_xyz, tmp_path):
    """kill -9 at any moment: the CSV, config and checkpoints stay readable, and --resume finishes the run."""
    import signal
    import time

    import yaml

    run = tmp_path / "run"
    config = tiny_config(tiny_xyz, run, training={"max_epochs": 400, "progress": False, "plots": False,
                                                    "checkpoint_every": 1})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "clebsch", "train", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait for a few checkpoints, then kill mid-epoch
            text = (run / "metrics.csv").read_text() if (run / "metrics.csv").exists() else ""
            if len(text.splitlines()) >= 4 and (run / "checkpoints" / "last.pt").exists():
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) >= 2 and all(r["epoch"] for r in rows)
    from clebsch.train.checkpoint import load_checkpoint

    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] >= 1
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["max_epochs"] == 400
    result = train(run, resume=True, overrides=["training.max_epochs=" + str(last["epoch"] + 1)], log=quiet)
    assert result["epochs"] == last["epoch"] + 1 and (run / "model.pt").exists()
    epochs = [int(r["epoch"]) for r in csv.DictReader(open(run / "metrics.csv"))]
    assert epochs == list(range(1, last["epoch"] + 2)), "duplicate or missing epochs after the resume"
