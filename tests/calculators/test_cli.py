"""``clebsch md`` / ``clebsch relax`` argument glue: runs end to end, and fails clearly."""

import argparse
import pytest
from ase.build import bulk, molecule
from ase.io import read, write

from clebsch.calculators._cli import add_md_arguments, add_relax_arguments, run_md, run_relax


@pytest.fixture
def model_file(tmp_path, model):
    """The small test model, packaged as `clebsch train` writes it."""
    from clebsch.train.package import save_package

    return str(save_package(model, tmp_path / "model.pt"))


def _parse(add, argv):
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(argv)


def test_md_command(tmp_path, model_file):
    structure = tmp_path / "water.xyz"
    write(structure, molecule("H2O"))
    traj, log = tmp_path / "out.xyz", tmp_path / "md.log"
    args = _parse(add_md_arguments, [model_file, str(structure), "--ensemble", "langevin", "--temperature", "200",
                                     "--timestep", "0.5", "--steps", "20", "--trajectory", str(traj), "--log", str(log),
                                     "--interval", "5", "--no-progress"])
    assert run_md(args) == 0
    assert len(read(traj, ":")) == 5
    assert len(log.read_text().splitlines()) == 6


def test_relax_command(tmp_path, model_file, capsys):
    structure = tmp_path / "cu.cif"
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.01, seed=0)
    write(structure, atoms)
    output = tmp_path / "relaxed.xyz"
    args = _parse(add_relax_arguments, [model_file, str(structure), "--fmax", "0.5", "--optimizer", "fire",
                                        "--output", str(output)])
    assert run_relax(args) == 0
    assert "converged" in capsys.readouterr().out
    assert len(read(output)) == 4


def test_errors_are_clear(tmp_path, model_file):
    with pytest.raises(FileNotFoundError, match="structure file .*missing.xyz.* does not exist"):
        run_md(_parse(add_md_arguments, [model_file, str(tmp_path / "missing.xyz")]))
    structure = tmp_path / "water.xyz"
    write(structure, molecule("H2O"))
    with pytest.raises(FileNotFoundError, match="model file .*nomodel.pt.* does not exist"):
        run_md(_parse(add_md_arguments, [str(tmp_path / "nomodel.pt"), str(structure)]))
    with pytest.raises(ValueError, match="cell relaxation needs a structure periodic"):
        run_relax(_parse(add_relax_arguments, [model_file, str(structure), "--cell"]))
    with pytest.raises(ValueError, match="NPT needs a structure periodic"):
        run_md(_parse(add_md_arguments, [model_file, str(structure), "--ensemble", "npt"]))
    write(tmp_path / "salt.xyz", bulk("NaCl", "rocksalt", a=5.6))
    with pytest.raises(ValueError, match=r"file '.*salt.xyz', frame 0, atom 0: Na \(Z=11\) is an element this model "
                                         r"was not trained on"):
        run_relax(_parse(add_relax_arguments, [model_file, str(tmp_path / "salt.xyz")]))
    # the file, the frame and the atom, before any output is written
    write(tmp_path / "mixed.xyz", [molecule("H2O"), molecule("NH3")])
    for run, add, extra in ((run_md, add_md_arguments, ["--trajectory", str(tmp_path / "t.xyz")]),
                            (run_relax, add_relax_arguments, ["--output", str(tmp_path / "r.xyz")]),
                            (run_relax, add_relax_arguments, ["--batch", "--output", str(tmp_path / "r.xyz")])):
        frame = [] if "--batch" in extra else ["--frame", "1"]
        with pytest.raises(ValueError, match=r"file '.*mixed.xyz', frame 1, atom 0: N \(Z=7\)"):
            run(_parse(add, [model_file, str(tmp_path / "mixed.xyz"), *frame, *extra]))
        assert not (tmp_path / "t.xyz").exists() and not (tmp_path / "r.xyz").exists()
    (tmp_path / "broken.xyz").write_text("3\n\nH 0 0\n")
    with pytest.raises(ValueError, match=r"cannot read .*broken.xyz.*: frame 0 .*line 1: truncated"):
        run_md(_parse(add_md_arguments, [model_file, str(tmp_path / "broken.xyz")]))
    with pytest.raises(ValueError, match="damaged|not a"):
        run_md(_parse(add_md_arguments, [str(tmp_path / "broken.xyz"), str(structure)]))


def test_packaged_model_gives_the_numbers_of_the_model(model, model_file):
    from clebsch.calculators import ClebschCalculator

    atoms = molecule("CH3CH2OH")
    ref, got = ClebschCalculator(model), ClebschCalculator(model_file)
    assert got.get_potential_energy(atoms) == pytest.approx(ref.get_potential_energy(atoms), abs=1e-10)


def test_export_command(tmp_path, model, model_file, capsys):
    import numpy as np

    from clebsch.calculators import ClebschCalculator
    from clebsch.cli import main

    out = tmp_path / "model.pt2"
    assert main(["export", model_file, str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    atoms = molecule("CH3CH2OH")
    np.testing.assert_allclose(ClebschCalculator(str(out)).get_forces(atoms), ClebschCalculator(model).get_forces(atoms),
                               atol=1e-10)
    assert main(["export", model_file, str(tmp_path / "model.pt")]) == 2
    assert "must end in .pt2" in capsys.readouterr().err
    assert main(["export", model_file, str(tmp_path / "no" / "dir" / "m.pt2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.pt"), str(out)]) == 2
    assert "missing.pt" in capsys.readouterr().err
