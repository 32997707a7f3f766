"""The ``clebsch`` command, driven through ``clebsch.cli.main``."""

import ase.io
import pytest

from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from clebsch.cli import main


def make_frames(n):
    frames = []
    for i in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.08, seed=i)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        atoms.info["config_type"] = "md" if i % 2 else "rattled"
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = root / "frames.xyz"
    ase.io.write(data, make_frames(12))
    run = root / "run"
    args = ["train", "--set", f"data.train={data}", "--set", f"run_dir={run}", "--set", "model.name=schnet",
            "--set", "model.num_layers=1", "--set", "model.channels=8", "--set", "model.cutoff=3.0",
            "--set", "training.max_epochs=2", "--set", "training.progress=false", "--set", "training.plots=false",
            "--set", "data.valid_fraction=0.25", "--set", "device=cpu"]
    assert main(args) == 0
    return root, run, data


def test_evaluate_writes_table_predictions_plots(run_dir, capsys):
    root, run, data = run_dir
    out = root / "pred.xyz"
    assert main(["evaluate", str(run / "model.pt"), str(data), "--output", str(out), "--plots", str(root / "p")]) == 0
    text = capsys.readouterr().out
    assert "F MAE meV/Å" in text and "md" in text and "rattled" in text
    frames = ase.io.read(out, ":")
    assert len(frames) == 12 and "pred_forces" in frames[0].arrays and "pred_energy" in frames[0].info
    assert (root / "p" / "parity_forces.png").is_file()


def test_evaluate_says_which_references_are_missing(run_dir, tmp_path, capsys):
    root, run, data = run_dir
    frames = ase.io.read(data, ":")
    renamed = []
    for i, atoms in enumerate(frames):
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        atoms.info["Etot"] = energy  # the energy under another key in every frame
        if i != 4:  # frame 4 has no forces
            atoms.arrays["forces"] = forces
        renamed.append(atoms)
    path = tmp_path / "renamed.xyz"
    ase.io.write(path, renamed)
    assert main(["evaluate", str(run / "model.pt"), str(path)]) == 0
    out, err = capsys.readouterr()
    assert "E MAE" not in out and "F MAE" in out
    assert "no reference for energy (key 'energy') in any of the 12 structures" in err and "'Etot'" in err
    assert "--key energy=KEY" in err
    assert "forces (key 'forces') has no reference in 1 of the 12 structures" in err and "(frames 4)" in err
    assert main(["evaluate", str(run / "model.pt"), str(path), "--key", "energy=Etot"]) == 0
    out, err = capsys.readouterr()
    assert "E MAE" in out and "energy" not in err


def test_info(run_dir, capsys):
    _, run, _ = run_dir
    assert main(["info", str(run / "model.pt")]) == 0
    assert "schnet" in capsys.readouterr().out


def test_bad_inputs_give_one_line_errors(run_dir, tmp_path, capsys):
    root, run, data = run_dir
    broken = tmp_path / "broken.xyz"
    lines = data.read_text().splitlines()
    broken.write_text("\n".join(lines[: 11 + 5]) + "\n")  # frame 1 truncated
    assert main(["evaluate", str(run / "model.pt"), str(broken)]) == 2
    err = capsys.readouterr().err
    assert "broken.xyz" in err and "frame 1" in err
    assert main(["evaluate", str(run / "model.pt"), str(data), "--key", "energy=REF_energy"]) == 0
    capsys.readouterr()
    assert main(["info", str(data)]) == 2
    assert "not a clebsch model" in capsys.readouterr().err
    # a resumed run that has already finished keeps everything it wrote
    before = (run / "metrics.csv").read_text()
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "metrics.csv").read_text() == before
