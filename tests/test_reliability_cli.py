"""Every ``clebsch`` command ends in one line that says what was wrong and a non-zero exit status --
never a raw traceback unless ``--debug`` (or ``CLEBSCH_DEBUG=1``) asks for one."""

import os
import signal
import subprocess
import sys
import time

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

import clebsch.cli as cli
from clebsch.cli import main
from clebsch.testing import float64_model
from clebsch.models.package import save_package

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
AS_ROOT = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                             reason="root writes into read-only folders")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = float64_model({"name": "schnet", "species": ["H", "C", "O"], "cutoff": 3.0, "channels": 8,
                           "num_layers": 1})
    save_package(model, root / "model.pt")
    water = molecule("H2O")
    water.info["energy"] = -1.0
    ase.io.write(root / "water.xyz", water)
    grid = np.array([[i % 2, (i // 2) % 2, i // 4] for i in range(8)], dtype=float) * 3.5
    ase.io.write(root / "sparse.xyz", Atoms("HCOHCOHC", positions=grid))
    return {"model": str(root / "model.pt"), "water": str(root / "water.xyz"), "sparse": str(root / "sparse.xyz")}


def _one_line(capsys, start):
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines() if ": note: " not in line)
    assert len(err.splitlines()) == 1, err
    assert err.startswith(start), err
    assert "Traceback" not in err
    return err


# ----------------------------------------------------------------- argument checks


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "m.pt", "d.xyz", "--batch-size", "-3"], "argument --batch-size: must be a positive integer, got '-3'"),
    (["evaluate", "m.pt", "d.xyz", "--batch-size", "0"], "argument --batch-size: must be a positive integer"),
    (["evaluate", "m.pt", "d.xyz", "--batch-size", "ten"], "argument --batch-size: must be a positive integer"),
    (["demo", "--threads", "0"], "argument --threads: must be a positive integer"),
    (["md", "m.pt", "s.xyz", "--skin", "-1"], "argument --skin: must be a finite number >= 0"),
    (["md", "m.pt", "s.xyz", "--pressure", "inf"], "argument --pressure: must be a finite number"),
    (["relax", "m.pt", "s.xyz", "--fmax", "0"], "argument --fmax: must be a positive finite number"),
    (["relax", "m.pt", "s.xyz", "--steps", "-5"], "argument --steps: must be an integer >= 0"),
])
def test_invalid_arguments_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"clebsch {argv[0]}: error: ") and message in last


# ----------------------------------------------------------------- devices


@NO_CUDA
def test_cuda_without_cuda_is_one_line(files, tmp_path, capsys):
    for argv in (["evaluate", files["model"], files["water"], "--device", "cuda"],
                 ["md", files["model"], files["water"], "--device", "cuda", "--trajectory", str(tmp_path / "t.traj"),
                  "--log", str(tmp_path / "t.log")],
                 ["relax", files["model"], files["water"], "--device", "cuda:1", "--output", str(tmp_path / "r.xyz")],
                 ["export", files["model"], str(tmp_path / "m.pt2"), "--device", "cuda"]):
        assert main(argv) == 2
        err = _one_line(capsys, f"clebsch {argv[0]}: error:")
        assert "sees no CUDA device" in err
    assert main(["evaluate", files["model"], files["water"], "--device", "gpu0"]) == 2
    assert "device must be a torch device" in _one_line(capsys, "clebsch evaluate: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_cuda_assertion_from_deep_inside_is_named(monkeypatch, capsys):
    def no_cuda(args):
        raise AssertionError("Torch not compiled with CUDA enabled")

    monkeypatch.setattr(cli, "_train", no_cuda)
    assert main(["train", "config.yaml"]) == 2
    assert "no CUDA device" in _one_line(capsys, "clebsch train: error:")


# ----------------------------------------------------------------- permissions


def test_read_only_output_folder(files, tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(locked)
                        else real_access(p, mode, **kw))
    for argv in (["md", files["model"], files["water"], "--trajectory", str(locked / "t.traj"), "--log", "-"],
                 ["relax", files["model"], files["water"], "--output", str(locked / "r.xyz")],
                 ["evaluate", files["model"], files["water"], "--json", str(locked / "m.json")],
                 ["evaluate", files["model"], files["water"], "--plots", str(locked / "plots")]):
        assert main(argv) == 2
        err = _one_line(capsys, f"clebsch {argv[0]}: error:")
        assert "locked" in err and "not writable" in err
    assert list(locked.iterdir()) == []


def test_permission_error_raised_while_writing(files, tmp_path, monkeypatch, capsys):
    import clebsch._atomic as atomic

    def denied(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", os.path.join(dir, ".m.json.tmp"))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", denied)
    old = tmp_path / "m.json"
    old.write_text("{}")
    assert main(["evaluate", files["model"], files["water"], "--json", str(old)]) == 2
    err = _one_line(capsys, "clebsch evaluate: error: Permission denied:")
    assert ".m.json.tmp" in err and "check the permissions" in err
    assert old.read_text() == "{}"


def test_permission_error_in_a_run_directory(monkeypatch, capsys):
    def denied(args):
        raise PermissionError(13, "Permission denied", "/runs/shared/checkpoints")

    monkeypatch.setattr(cli, "_train", denied)
    assert main(["train", "config.yaml"]) == 2
    assert "Permission denied: '/runs/shared/checkpoints'" in _one_line(capsys, "clebsch train: error:")


@AS_ROOT
def test_really_read_only_folder(files, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["relax", files["model"], files["water"], "--output", str(locked / "r.xyz")]) == 2
        assert "not writable" in _one_line(capsys, "clebsch relax: error:")
    finally:
        locked.chmod(0o755)


# ----------------------------------------------------------------- unexpected errors and --debug


def _boom(args):
    raise RuntimeError("something\nunexpected")


def test_unexpected_errors_are_one_line_with_a_hint(files, monkeypatch, capsys):
    monkeypatch.delenv("CLEBSCH_DEBUG", raising=False)
    monkeypatch.setattr(cli, "_info", _boom)
    assert main(["info", files["model"]]) == 1
    err = _one_line(capsys, "clebsch info: internal error: RuntimeError: something unexpected")
    assert "--debug" in err
    for argv in (["--debug", "info", files["model"]], ["info", "--debug", files["model"]]):
        with pytest.raises(RuntimeError, match="something"):
            main(argv)
    monkeypatch.setenv("CLEBSCH_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something"):
        main(["info", files["model"]])
    monkeypatch.setenv("CLEBSCH_DEBUG", "0")
    assert main(["info", files["model"]]) == 1


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CLEBSCH_DEBUG", raising=False)
    assert main(["info", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in _one_line(capsys, "clebsch info: error:")
    with pytest.raises(FileNotFoundError):
        main(["info", "--debug", str(tmp_path / "missing.pt")])


def test_keyboard_interrupt_in_process(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_info", interrupted)
    assert main(["info", "model.pt"]) == 130
    assert _one_line(capsys, "clebsch info: interrupted")


def test_train_without_a_config_is_one_line(capsys):
    assert main(["train"]) == 2
    assert "give a config file" in _one_line(capsys, "clebsch train: error:")


# ----------------------------------------------------------------- real processes


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CLEBSCH_DEBUG", None)
    return env


def test_a_real_process_exits_with_one_line(files, tmp_path):
    garbage = tmp_path / "garbage.xyz"
    garbage.write_bytes(b"\x89\xff\x00" * 100)
    result = subprocess.run([sys.executable, "-m", "clebsch", "md", files["model"], str(garbage)],
                            capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"clebsch md: error: '{garbage}' is not a text structure file: line 1 holds bytes that are not UTF-8 text "
        f"(byte 0x89 at offset 0 of the file); is it a binary file, or the wrong file?"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.xyz"]


def test_ctrl_c_during_md_is_one_line_exit_130_and_keeps_the_frames(files, tmp_path):
    traj = tmp_path / "md.traj"
    proc = subprocess.Popen(
        [sys.executable, "-m", "clebsch", "md", files["model"], files["sparse"], "--trajectory", str(traj),
         "--log", str(tmp_path / "md.log"), "--steps", "1000000", "--interval", "1", "--timestep", "0.1",
         "--temperature", "1"], cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        # as from a shell: Ctrl-C at its default, whatever an earlier test in this worker left SIGINT at (a child
        # inherits an ignored signal, and Python then keeps ignoring it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 90
    while not (os.path.exists(f"{traj}.tmp") and os.path.getsize(f"{traj}.tmp") > 3000):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "clebsch md: interrupted" and "Traceback" not in err
    assert len(ase.io.read(traj, ":")) >= 2  # the frames so far were moved into place
    assert not os.path.exists(f"{traj}.tmp")
