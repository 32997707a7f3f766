"""Nothing already written is lost: inputs are checked before any output is opened, an output that is
an input is refused, outputs are written to a temporary name and moved into place (so ``kill -9`` in
the middle of ``clebsch md``, ``relax`` or ``evaluate`` leaves the earlier file intact), and progress
that does not go to a terminal is one plain line per N steps."""

import os
import signal
import subprocess
import sys
import time

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from clebsch.cli import main
from clebsch.testing import float64_model
from clebsch.models.package import save_package

OLD = b"the earlier output, which must survive\n"


def tiny_model(seed=0, **extra):
    config = {"name": "schnet", "species": ["H", "C", "O"], "cutoff": 3.0, "channels": 8, "num_layers": 1, **extra}
    return float64_model(config, seed)


def sparse_atoms(n=8, spacing=3.5):
    """Atoms farther apart than the cutoff: no edges, zero forces, so MD of any length stays sane."""
    symbols = (["H", "C", "O"] * n)[:n]
    grid = np.array([[i % 2, (i // 2) % 2, i // 4] for i in range(n)], dtype=float) * spacing
    return Atoms(symbols, positions=grid)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    model = root / "model.pt"
    save_package(tiny_model(), model)
    water = root / "water.xyz"
    ase.io.write(water, molecule("H2O"))
    sparse = root / "sparse.xyz"
    ase.io.write(sparse, sparse_atoms())
    return {"root": root, "model": str(model), "water": str(water), "sparse": str(sparse)}


def _old(path):
    path.write_bytes(OLD)
    return path


# ----------------------------------------------------------------- inputs before outputs


@pytest.mark.parametrize("bad", ["missing", "broken", "garbage_model", "bad_parameter", "unknown_element"])
def test_md_checks_inputs_before_touching_outputs(files, tmp_path, capsys, bad):
    traj, log = _old(tmp_path / "existing.traj"), _old(tmp_path / "existing.log")
    structure, model, extra = files["water"], files["model"], []
    if bad == "missing":
        structure = str(tmp_path / "bad.xyz")
    elif bad == "broken":
        structure = tmp_path / "bad.xyz"
        structure.write_text("3\n\nH 0 0 0\n")
    elif bad == "garbage_model":
        model = tmp_path / "model.pt"
        model.write_bytes(b"garbage")
    elif bad == "bad_parameter":
        extra = ["--ensemble", "langevin", "--temperature", "0"]
    else:
        structure = tmp_path / "salt.xyz"
        ase.io.write(structure, Atoms("NaCl", positions=[[0, 0, 0], [2.8, 0, 0]]))
    code = main(["md", str(model), str(structure), "--trajectory", str(traj), "--log", str(log), "--steps", "5",
                 "--no-progress", *extra])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("clebsch md: error:")
    assert traj.read_bytes() == OLD and log.read_bytes() == OLD
    assert not (tmp_path / "existing.traj.tmp").exists()


@pytest.mark.parametrize("bad", ["missing", "overlapping", "fmax"])
def test_relax_checks_inputs_before_touching_outputs(files, tmp_path, capsys, bad):
    traj, output = _old(tmp_path / "existing.traj"), _old(tmp_path / "relaxed.xyz")
    structure, extra = files["water"], []
    if bad == "missing":
        structure = str(tmp_path / "bad.xyz")
    elif bad == "overlapping":
        structure = tmp_path / "close.xyz"
        ase.io.write(structure, Atoms("OH", positions=[[0, 0, 0], [0.05, 0, 0]]))
    else:
        extra = ["--fmax", "nan"]
    argv = ["relax", files["model"], str(structure), "--trajectory", str(traj), "--output", str(output), *extra]
    if bad == "fmax":
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "--fmax: must be a positive finite number" in capsys.readouterr().err
    else:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert ("bad.xyz" in err) if bad == "missing" else ("atoms 0 and 1 are 0.05 Å apart" in err)
    assert traj.read_bytes() == OLD and output.read_bytes() == OLD


def test_evaluate_checks_inputs_before_touching_outputs(files, tmp_path, capsys):
    output, metrics = _old(tmp_path / "pred.xyz"), _old(tmp_path / "metrics.json")
    broken = tmp_path / "broken.xyz"
    broken.write_text("3\n\nO 0 0 0\nH 1 0 0\n")
    assert main(["evaluate", files["model"], str(broken), "--output", str(output), "--json", str(metrics)]) == 2
    assert "broken.xyz" in capsys.readouterr().err
    assert main(["evaluate", str(broken), files["water"], "--output", str(output), "--json", str(metrics)]) == 2
    assert "not a clebsch model" in capsys.readouterr().err
    assert output.read_bytes() == OLD and metrics.read_bytes() == OLD


def test_output_equal_to_an_input_is_refused(files, tmp_path, capsys):
    data = tmp_path / "data.xyz"
    ase.io.write(data, molecule("H2O"))
    before = data.read_bytes()
    link = tmp_path / "alias.xyz"
    os.symlink(data, link)
    model_before = open(files["model"], "rb").read()
    cases = [
        ["md", files["model"], str(data), "--trajectory", str(link), "--steps", "2"],
        ["md", files["model"], str(data), "--trajectory", str(tmp_path / "t.traj"), "--log", files["model"]],
        ["md", files["model"], str(data), "--trajectory", str(tmp_path / "same"), "--log", str(tmp_path / "same")],
        ["relax", files["model"], str(data), "--output", str(tmp_path / "." / "data.xyz")],
        ["relax", files["model"], str(data), "--trajectory", files["model"]],
        ["evaluate", files["model"], str(data), "--output", str(data)],
        ["evaluate", files["model"], str(data), "--json", files["model"]],
        ["evaluate", files["model"], str(data), "--output", str(tmp_path / "p.xyz"), "--json", str(tmp_path / "p.xyz")],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "is the same file as the" in err and "choose another name" in err, (argv, err)
    assert data.read_bytes() == before and open(files["model"], "rb").read() == model_before


def test_outputs_in_a_missing_folder_are_refused_up_front(files, tmp_path, capsys):
    for argv in (["md", files["model"], files["water"], "--trajectory", str(tmp_path / "no" / "t.traj")],
                 ["relax", files["model"], files["water"], "--output", str(tmp_path / "no" / "r.xyz")],
                 ["evaluate", files["model"], files["water"], "--json", str(tmp_path / "no" / "m.json")]):
        assert main(argv) == 2
        assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_md_output_is_moved_into_place_and_stop_keeps_frames(files, tmp_path):
    from clebsch.calculators import md

    traj, log = _old(tmp_path / "md.xyz"), _old(tmp_path / "md.log")
    atoms = sparse_atoms()
    md(files["model"], atoms, "nve", temperature_K=10, timestep_fs=0.1, steps=20, trajectory=traj, logfile=log,
       interval=5, progress=False)
    assert len(ase.io.read(traj, ":")) == 5 and "T[K]" in log.read_text()
    assert not os.path.exists(f"{traj}.tmp") and not os.path.exists(f"{log}.tmp")


def test_relaxed_structure_is_written_atomically_with_usual_permissions(files, tmp_path, capsys):
    output = _old(tmp_path / "relaxed.xyz")
    assert main(["relax", files["model"], files["sparse"], "--output", str(output)]) == 0
    assert len(ase.io.read(output)) == 8
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(output).st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["relaxed.xyz"]


# ----------------------------------------------------------------- kill -9 mid-run


def _spawn(argv, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CLEBSCH_DEBUG", None)
    stderr = open(os.path.join(cwd, "stderr.txt"), "wb")
    return subprocess.Popen([sys.executable, "-m", "clebsch", *argv], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=stderr)


def _wait_for(proc, ready, cwd, timeout=90.0):
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (status {proc.returncode}) before it could be killed: "
                        + open(os.path.join(cwd, "stderr.txt")).read()[-2000:])
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the command did not start writing in time")
        time.sleep(0.005)


def _kill9(proc):
    assert proc.poll() is None, "the command finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _size(path):
    return os.path.getsize(path) if os.path.exists(path) else 0


@pytest.mark.parametrize("suffix", [".traj", ".xyz"])
def test_kill9_md_leaves_the_earlier_trajectory_and_log_intact(files, tmp_path, suffix):
    traj, log = _old(tmp_path / f"existing{suffix}"), _old(tmp_path / "existing.log")
    proc = _spawn(["md", files["model"], files["sparse"], "--trajectory", str(traj), "--log", str(log),
                   "--steps", "1000000", "--interval", "1", "--timestep", "0.1", "--temperature", "1"], tmp_path)
    partial = f"{traj}.tmp"
    _wait_for(proc, lambda: _size(partial) > 3000, tmp_path)  # several frames written
    _kill9(proc)
    assert traj.read_bytes() == OLD and log.read_bytes() == OLD
    frames = ase.io.read(partial, ":-1", format="extxyz" if suffix == ".xyz" else "traj")  # the last may be cut
    assert len(frames) >= 1 and len(frames[0]) == 8


def test_kill9_relax_leaves_the_earlier_trajectory_and_output_intact(files, tmp_path):
    traj, output = _old(tmp_path / "existing.traj"), _old(tmp_path / "relaxed.xyz")
    proc = _spawn(["relax", files["model"], files["water"], "--trajectory", str(traj), "--output", str(output),
                   "--fmax", "1e-300", "--steps", "1000000", "--optimizer", "fire"], tmp_path)
    _wait_for(proc, lambda: _size(f"{traj}.tmp") > 0, tmp_path)
    _kill9(proc)
    assert traj.read_bytes() == OLD and output.read_bytes() == OLD


def test_kill9_evaluate_leaves_the_earlier_predictions_intact(files, tmp_path):
    frames = []
    for i in range(1500):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=i)
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((len(atoms), 3)))
        frames.append(atoms)
    data = tmp_path / "data.xyz"
    ase.io.write(data, frames)
    output = _old(tmp_path / "pred.xyz")
    proc = _spawn(["evaluate", files["model"], str(data), "--output", str(output), "--batch-size", "100"], tmp_path)
    _wait_for(proc, lambda: any(p.name.startswith(".pred.xyz.") for p in tmp_path.iterdir()), tmp_path)
    _kill9(proc)
    assert output.read_bytes() == OLD


# ----------------------------------------------------------------- progress without a terminal


def test_md_progress_is_plain_lines_when_not_a_terminal(files, tmp_path, capsys):
    from clebsch.calculators import md

    md(files["model"], sparse_atoms(), "langevin", temperature_K=10, timestep_fs=0.1, steps=200, interval=5,
       progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("MD langevin: step")]
    assert 10 <= len(lines) <= 21 and lines[-1].startswith("MD langevin: step 200/200")
    assert all(" K, E " in line and "steps/s" in line for line in lines)


def test_md_cli_progress_through_a_pipe(files, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "clebsch", "md", files["model"], files["sparse"], "--steps", "40", "--interval", "2",
         "--timestep", "0.1", "--temperature", "5", "--trajectory", str(tmp_path / "t.traj"), "--log",
         str(tmp_path / "t.log")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "step 40/40" in result.stderr
    assert len(ase.io.read(tmp_path / "t.traj", ":")) == 21
