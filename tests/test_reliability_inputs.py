"""Bad input is caught where it enters, with a message that names it:

- the calculator checks positions on every call, also when the Verlet list is reused;
- MD and relaxation parameters are checked before anything runs;
- structure files that are binary, announce more atoms than they hold, or hide frames behind a
  blank line are named, with frame and line; a training checkpoint passed as a model is named;
- packaged models carry a checksum of their weights, so an altered file does not load.
"""

import shutil
import struct
import time
import zipfile

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from clebsch.calculators import ClebschCalculator, VerletList, md, relax
from clebsch.cli import main
from clebsch.data.io import read_structure, read_structures
from clebsch.testing import float64_model
from clebsch.models.package import PackageError, describe, load, read_package, save_package, weights_checksum


def tiny_model(seed=0, **extra):
    config = {"name": "schnet", "species": ["H", "C", "O"], "cutoff": 3.0, "channels": 8, "num_layers": 1, **extra}
    return float64_model(config, seed)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory):
    return save_package(model, tmp_path_factory.mktemp("pkg") / "model.pt")


# ----------------------------------------------------------------- a graph the model cannot read

def test_a_graph_with_a_shorter_cutoff_or_another_dtype_is_refused(model):
    from clebsch.graph import AtomicGraph

    atoms = molecule("CH3CH2OH")
    right = model(AtomicGraph.from_ase(atoms, cutoff=3.0, dtype=torch.float64))["energy"]
    longer = model(AtomicGraph.from_ase(atoms, cutoff=5.0, dtype=torch.float64))["energy"]
    torch.testing.assert_close(longer, right, rtol=1e-12, atol=1e-12)  # what lies beyond the cutoff is dropped
    with pytest.raises(ValueError, match=r"cutoff of 2 Å, shorter than the model's 3 Å"):
        model(AtomicGraph.from_ase(atoms, cutoff=2.0, dtype=torch.float64))
    with pytest.raises(TypeError, match="the graph is float32 but the model's weights are float64"):
        model(AtomicGraph.from_ase(atoms, cutoff=3.0, dtype=torch.float32))
    knn = AtomicGraph.from_ase(atoms, method="knn", k=4, dtype=torch.float64)  # another neighbour list: its own choice
    assert torch.isfinite(model(knn)["energy"]).all()


# ----------------------------------------------------------------- the calculator checks every call


def test_nan_position_is_caught_when_the_verlet_list_is_reused(model):
    atoms = molecule("CH3CH2OH")
    calc = ClebschCalculator(model, skin=1.0)
    atoms.calc = calc
    atoms.get_potential_energy()
    assert calc.neighbors.builds == 1
    for value, atom in ((np.nan, 3), (np.inf, 7)):
        atoms.positions[atom] = [value, 0.0, 0.0]
        with pytest.raises(ValueError, match=rf"atom {atom} has non-finite position"):
            atoms.get_potential_energy()
        atoms.positions[atom] = molecule("CH3CH2OH").positions[atom]
    atoms.positions[[2, 5]] = np.nan
    with pytest.raises(ValueError, match=r"atom 2 and 1 more has non-finite position"):
        atoms.get_forces()


def test_overlapping_atoms_are_caught_when_the_verlet_list_is_reused(model):
    atoms = Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [1.20, 0, 0]])  # H-H 0.24 Å: odd but allowed
    calc = ClebschCalculator(model, skin=1.0)
    atoms.calc = calc
    atoms.get_potential_energy()
    atoms.positions[1, 0] += 0.11  # 0.13 Å moved, less than skin / 2: the list is reused
    atoms.positions[2, 0] -= 0.11
    with pytest.raises(ValueError, match=r"atoms 1 and 2 are 0.02 Å apart, closer than 0.1 Å"):
        atoms.get_potential_energy()
    assert calc.neighbors.builds == 1  # it was the reused list that caught it


def test_periodic_image_overlap_and_non_finite_cell(model):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.set_chemical_symbols(["C", "O", "C", "O"])
    calc = ClebschCalculator(model, skin=0.5)
    atoms.calc = calc
    atoms.get_potential_energy()
    atoms.cell[0, 0] = np.nan
    with pytest.raises(ValueError, match="cell has non-finite entries"):
        atoms.get_potential_energy()


def test_verlet_list_checks_directly():
    nl = VerletList(cutoff=2.0, skin=0.5)
    pos = np.array([[0.0, 0, 0], [1.5, 0, 0], [3.0, 0, 0]])
    args = (np.array([1, 1, 1]), np.zeros((3, 3)), np.zeros(3, bool))
    nl.update(pos, *args)
    pos[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"atom 1 has non-finite position.*\(MD step 7\)"):
        nl.update(pos, *args, where="MD step 7")
    pos[1, 0] = 2.95
    with pytest.raises(ValueError, match="atoms 1 and 2 are 0.05 Å apart"):
        nl.update(pos, *args)
    lenient = VerletList(cutoff=2.0, skin=0.5, min_distance=0.0)
    assert lenient.update(pos, *args)[0].shape[1] == 2  # the 0.05 Å pair, both ways
    for bad in ({"cutoff": 0.0}, {"cutoff": float("nan")}, {"cutoff": 2.0, "skin": -1.0},
                {"cutoff": 2.0, "min_distance": float("inf")}):
        with pytest.raises(ValueError, match="must be"):
            VerletList(**bad)


def test_non_finite_model_output_is_an_error():
    broken = tiny_model()
    with torch.no_grad():
        next(p for p in broken.parameters() if p.numel() > 1).fill_(float("nan"))
    atoms = molecule("CH3CH2OH")
    atoms.calc = ClebschCalculator(broken)
    with pytest.raises(ValueError, match="the model gave a non-finite"):
        atoms.get_potential_energy()


def test_nan_injected_during_md_stops_the_run(model, tmp_path):
    atoms = molecule("H2O")
    calls = []

    def poison():
        calls.append(1)
        if len(calls) == 5:
            atoms.positions[2] = np.nan

    traj = tmp_path / "md.xyz"
    with pytest.raises(ValueError, match=r"atom 2 has non-finite position .*\(at MD step 4 of 50; the 3 frames so "
                                         r"far are in '.*md.xyz'\)"):
        md(model, atoms, "langevin", temperature_K=100, steps=50, progress=False, observers=[poison], skin=1.0,
           trajectory=traj, interval=2)
    assert len(ase.io.read(traj, ":")) == 3 and not (tmp_path / "md.xyz.tmp").exists()


# ----------------------------------------------------------------- MD and relaxation parameters


@pytest.mark.parametrize("kwargs, message", [
    ({"ensemble": "langevin", "temperature_K": -5.0}, r"temperature must be a finite number above 0 K"),
    ({"ensemble": "langevin", "temperature_K": 0.0}, r"temperature .* above 0 K for the langevin thermostat"),
    ({"ensemble": "nve", "temperature_K": -1.0}, r"temperature \(of the initial velocities\) .* at least 0 K"),
    ({"ensemble": "langevin", "friction": -0.01}, r"friction must be a finite number above 0 1/fs"),
    ({"ensemble": "langevin", "friction": 0.0}, r"friction .* use the nve ensemble"),
    ({"ensemble": "langevin", "friction": float("nan")}, r"friction must be a finite number"),
    ({"timestep_fs": 0.0}, r"timestep must be a finite number above 0 fs"),
    ({"timestep_fs": -0.5}, r"timestep must be"),
    ({"timestep_fs": float("inf")}, r"timestep must be"),
    ({"steps": -1}, r"steps must be an integer of at least 0, got -1"),
    ({"steps": 2.5}, r"steps must be an integer"),
    ({"interval": 0}, r"interval .* at least 1"),
    ({"ensemble": "nvt"}, r"ensemble must be one of"),
    ({"skin": -0.1}, r"skin must be"),
])
def test_md_parameters_are_checked_before_anything_runs(model_file, tmp_path, kwargs, message):
    atoms = molecule("H2O")
    before = atoms.positions.copy()
    traj = tmp_path / "md.traj"
    with pytest.raises(ValueError, match=message):
        md(str(model_file), atoms, **{"steps": 10, **kwargs}, trajectory=traj, logfile=tmp_path / "md.log",
           progress=False)
    assert atoms.calc is None  # not even the model was loaded
    np.testing.assert_array_equal(atoms.positions, before)
    assert list(tmp_path.iterdir()) == []


def test_npt_parameters(model):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.set_chemical_symbols(["C", "O", "C", "O"])
    for kwargs, message in (({"temperature_K": 0.0}, "temperature .* npt"), ({"pressure_bar": float("nan")}, "pressure"),
                            ({"ptime_fs": 0.0}, "barostat damping time"), ({"ttime_fs": -1.0}, "thermostat damping")):
        with pytest.raises(ValueError, match=message):
            md(model, atoms, "npt", steps=2, progress=False, **kwargs)


def test_relax_parameters(model, tmp_path):
    for kwargs, message in (({"fmax": 0.0}, "fmax must be a finite number above 0"), ({"fmax": -1}, "fmax"),
                            ({"fmax": float("nan")}, "fmax"), ({"steps": -3}, "steps must be an integer"),
                            ({"optimizer": "lbfgs"}, "optimizer must be one of")):
        atoms = molecule("H2O")
        with pytest.raises(ValueError, match=message):
            relax(model, atoms, trajectory=tmp_path / "r.traj", **kwargs)
        assert atoms.calc is None
    assert list(tmp_path.iterdir()) == []


def test_md_cli_rejects_bad_parameters_with_one_line(model_file, tmp_path, capsys):
    water = tmp_path / "water.xyz"
    ase.io.write(water, molecule("H2O"))
    for extra, message in ((["--temperature", "-5"], "--temperature: must be a finite number >= 0"),
                           (["--friction", "0"], "--friction: must be a positive finite number"),
                           (["--timestep", "-1"], "--timestep: must be a positive finite number"),
                           (["--steps", "-1"], "--steps: must be an integer >= 0"),
                           (["--interval", "0"], "--interval: must be a positive integer")):
        with pytest.raises(SystemExit) as exit_:
            main(["md", str(model_file), str(water), *extra])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message + f", got {extra[1]!r}")
    assert main(["md", str(model_file), str(water), "--ensemble", "npt", "--temperature", "0"]) == 2
    assert "clebsch md: error:" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["water.xyz"]


# ----------------------------------------------------------------- structure files


def test_binary_garbage_is_named_as_not_a_text_file(tmp_path, capsys, model_file):
    rng = np.random.default_rng(0)
    blob = bytes([0x89, 0xFF]) + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    for name in ("garbage.xyz", "garbage.extxyz"):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValueError, match=rf"'.*{name}' is not a text structure file: line 1 .*not UTF-8"):
            read_structures(tmp_path / name)
    (tmp_path / "garbage").write_bytes(b"\0\1\2" + blob)
    with pytest.raises(ValueError, match=r"'.*garbage' is not a structure file ASE can read: it holds binary data"):
        read_structures(tmp_path / "garbage")
    for command in ("md", "relax"):
        assert main([command, str(model_file), str(tmp_path / "garbage.xyz")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "garbage.xyz' is not a text structure file" in err
    assert main(["evaluate", str(model_file), str(tmp_path / "garbage.xyz")]) == 2
    assert "garbage.xyz' is not a text structure file" in capsys.readouterr().err


def _water_lines():
    return ["3", "frame", "O 0 0 0", "H 0.96 0 0", "H -0.24 0.93 0"]


def test_an_impossible_atom_count_fails_fast_naming_file_frame_line(tmp_path):
    path = tmp_path / "huge.xyz"
    path.write_text("\n".join(["2000000000", "", "H 0 0 0", "H 0 0 1"]) + "\n")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"huge.xyz': frame 0 \(0-based\) is malformed, line 1: truncated: "
                                         r"2000000000 atoms announced, 2 atom lines present"):
        read_structures(path)
    assert time.perf_counter() - start < 2.0
    lines = _water_lines() * 2 + ["999999999", "x", "O 0 0 0"] + _water_lines()
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"frame 2 \(0-based\) is malformed, line 11: truncated: 999999999 atoms"):
        read_structures(path)
    with pytest.raises(ValueError, match=r"frame 2 .*line 11"):
        read_structure(path, 0)


def test_a_blank_line_between_frames_is_not_silently_the_end(tmp_path):
    path = tmp_path / "gap.xyz"
    path.write_text("\n".join(_water_lines() + [""] + _water_lines()) + "\n")
    with pytest.raises(ValueError, match=r"gap.xyz': frame 1 .*line 6: blank line between frames"):
        read_structures(path)
    path.write_text("\n".join(_water_lines() * 2) + "\n\n\n")  # trailing blank lines are fine
    assert len(read_structures(path)) == 2


def test_a_missing_frame_is_named(tmp_path):
    path = tmp_path / "two.xyz"
    path.write_text("\n".join(_water_lines() * 2) + "\n")
    assert len(read_structure(path, -1)) == 3
    with pytest.raises(ValueError, match=r"two.xyz' has 2 frames; there is no frame 5"):
        read_structure(path, 5)


def _fake_run(tmp_path, model, with_package):
    """A run directory as the trainer leaves it: checkpoints/last.pt (full state) and best.pt (weights)."""
    from clebsch.train.checkpoint import rng_state

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    state = model.state_dict()
    torch.save({"epoch": 3, "step": 30, "model_config": dict(model.config), "model": state,
                "optimizer": torch.optim.Adam(model.parameters()).state_dict(), "rng": rng_state()},
               run / "checkpoints" / "last.pt")
    torch.save({"epoch": 3, "model_config": dict(model.config), "model": state}, run / "checkpoints" / "best.pt")
    if with_package:
        save_package(model, run / "model.pt")
    return run


def test_a_training_checkpoint_is_named_as_such(model, tmp_path, capsys):
    run = _fake_run(tmp_path, model, with_package=True)
    for name in ("last.pt", "best.pt"):
        path = run / "checkpoints" / name
        with pytest.raises(PackageError, match=rf"{name} is a training checkpoint .*not a packaged model; pass the "
                                               rf"run's packaged model '.*run/model.pt' instead"):
            load(path)
        with pytest.raises(PackageError, match="training checkpoint"):
            ClebschCalculator(str(path))
        assert main(["info", str(path)]) == 2
        err = capsys.readouterr().err
        assert "training checkpoint" in err and "corrupted" not in err
    (run / "model.pt").unlink()
    with pytest.raises(PackageError, match=r"RUN_DIR/model.pt.*clebsch train --resume RUN_DIR"):
        load(run / "checkpoints" / "last.pt")


def test_a_pickle_of_python_objects_is_not_called_corrupted(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(PackageError, match="not a clebsch packaged model: it holds Python objects"):
        load(path)
    with pytest.raises(PackageError, match="is a directory"):
        load(tmp_path)


# ----------------------------------------------------------------- checksums of packaged models


def _flip_a_weight_byte(src, dst):
    """Copy ``src`` and invert one byte in the middle of its largest tensor's storage in the zip."""
    shutil.copy(src, dst)
    with zipfile.ZipFile(dst) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(dst, "r+b") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        where = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        fh.seek(where)
        byte = fh.read(1)[0]
        fh.seek(where)
        fh.write(bytes([byte ^ 0x5A]))


def test_altered_weights_do_not_load(model_file, tmp_path, capsys):
    altered = tmp_path / "altered.pt"
    _flip_a_weight_byte(model_file, altered)
    raw = torch.load(altered, weights_only=True)  # torch itself reads it without complaint ...
    assert not all(torch.equal(raw["state_dict"][k], v) for k, v in read_package(model_file)["state_dict"].items())
    with pytest.raises(PackageError, match=r"altered.pt is damaged: its weights do not match the checksum"):
        load(altered)  # ... the checksum does not
    with pytest.raises(PackageError, match="checksum"):
        ClebschCalculator(str(altered))
    with pytest.raises(PackageError, match="checksum"):
        describe(altered)
    assert main(["info", str(altered)]) == 2
    assert "do not match the checksum" in capsys.readouterr().err


def test_checksum_is_stored_and_covers_names_shapes_and_values(model, model_file):
    data = read_package(model_file)
    assert data["weights_sha256"] == weights_checksum(model.state_dict())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = next(iter(state))
    renamed = dict(state)
    renamed["x" + first] = renamed.pop(first)
    assert weights_checksum(renamed) != weights_checksum(state)
    reshaped = dict(state)
    reshaped[first] = state[first].reshape(-1)
    assert state[first].dim() == 1 or weights_checksum(reshaped) != weights_checksum(state)
    state[first].view(-1)[0] += 1e-12
    assert weights_checksum(state) != data["weights_sha256"]
    assert "sha256" in describe(model_file) and "verified" in describe(model_file)


def _old_format_package(model, path):
    """A package as clebsch wrote them before checksums (format 1 without ``weights_sha256``)."""
    from ase.data import chemical_symbols

    species = [int(z) for z in model.species]
    torch.save({
        "format": "clebsch-model", "format_version": 1, "clebsch_version": "0.1.0", "config": dict(model.config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "species": species, "type_map": {chemical_symbols[z]: i for i, z in enumerate(species)},
        "cutoff": float(model.cutoff),
        "atomic_energies": {chemical_symbols[z]: float(e) for z, e in zip(species, model.atomic_energies.tolist())},
        "units": {"length": "Å", "energy": "eV"}, "dtype": "float64", "outputs": list(model.outputs), "metadata": {},
    }, path)


def test_old_packages_without_a_checksum_still_load_with_the_same_numbers(model, tmp_path):
    old = tmp_path / "old.pt"
    _old_format_package(model, old)
    loaded = load(old)
    atoms = molecule("CH3CH2OH")
    ref, got = ClebschCalculator(model), ClebschCalculator(loaded)
    assert got.get_potential_energy(atoms) == ref.get_potential_energy(atoms)
    np.testing.assert_array_equal(got.get_forces(atoms), ref.get_forces(atoms))
    assert "none (written before checksums were stored)" in describe(old)
