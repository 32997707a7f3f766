"""``data.units``: files in kcal/mol, Hartree, Bohr or Debye are read into eV, Å and e."""

import json
import warnings

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase import units as u

from clebsch.cli import main
from clebsch.data import AtomicDataset, graph_from_atoms
from clebsch.data.units import factor, parse_unit, unit_factors
from clebsch.train.config import ConfigError, load_config
from clebsch.train.trainer import train

from .conftest import make_frames, tiny_config

KCAL = u.kcal / u.mol


def test_factors_agree_with_ase_constants():
    assert factor("kcal/mol", "eV") == pytest.approx(KCAL, rel=1e-14)
    assert factor("kcal/mol/Å", "eV/Å") == pytest.approx(KCAL, rel=1e-14)
    assert factor("Ha/Bohr", "eV/Å") == pytest.approx(u.Hartree / u.Bohr, rel=1e-14)
    assert factor("kJ/mol", "meV") == pytest.approx(1000 * u.kJ / u.mol, rel=1e-14)
    assert factor("D", "e·Å") == pytest.approx(u.Debye, rel=1e-14)
    assert factor("e*Bohr", "e·Å") == pytest.approx(u.Bohr, rel=1e-14)
    assert factor("GPa", "eV/Å³") == pytest.approx(u.GPa, rel=1e-14)
    for cube in ("Bohr^3", "Bohr³", "Bohr**3", "a0 a0 a0"):
        assert factor(cube, "Å³") == pytest.approx(u.Bohr**3, rel=1e-14), cube
    assert parse_unit("eV/Å^-1")[1] == (1, 1, 0)


@pytest.mark.parametrize("source, stored, message", [
    ("kcal/mol", "eV/Å", "kcal/mol is an energy and eV/Å an energy / length"),
    ("D", "e", "D is a length · charge"),
    ("furlong", "Å", "unknown unit 'furlong'"),
    ("eV//Å", "eV/Å", "an empty part"),
])
def test_impossible_conversions_name_both_units(source, stored, message):
    with pytest.raises(ValueError, match=message):
        factor(source, stored)


def test_unit_factors_name_the_key():
    with pytest.raises(ValueError, match=r"data.units.forces: kcal/mol is an energy .* stored in eV/Å"):
        unit_factors({"forces": "kcal/mol"})
    with pytest.raises(ValueError, match=r"data.units.enrgy: 'enrgy' is neither a target nor 'positions'"):
        unit_factors({"enrgy": "eV"})


def _kcal_copy(frames, positions_in_bohr=False):
    """The same frames with energies in kcal/mol, forces in kcal/mol/Å (and positions in Bohr)."""
    out = []
    for atoms in frames:
        a = Atoms(atoms.numbers, positions=atoms.positions / (u.Bohr if positions_in_bohr else 1.0))
        a.info["energy"] = atoms.get_potential_energy() / KCAL
        a.arrays["forces"] = atoms.get_forces() / KCAL
        a.info["config_type"] = atoms.info["config_type"]
        out.append(a)
    return out


def test_graphs_from_converted_files_equal_the_ev_ones(tmp_path):
    frames = make_frames(4)
    ev_file, kcal_file = tmp_path / "ev.xyz", tmp_path / "kcal.xyz"
    ase.io.write(ev_file, frames)
    ase.io.write(kcal_file, _kcal_copy(frames, positions_in_bohr=True))
    ref = AtomicDataset.from_file(ev_file, 3.0, dtype=torch.float64).graphs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converted forces are ordinary: no warning about their scale
        got = AtomicDataset.from_file(kcal_file, 3.0, dtype=torch.float64, units={
            "energy": "kcal/mol", "forces": "kcal/mol/Å", "positions": "Bohr"}).graphs
    for a, b in zip(ref, got):  # extxyz keeps 8 decimals: positions in Bohr are exact to 1e-8 Bohr
        np.testing.assert_allclose(b.positions.numpy(), a.positions.numpy(), rtol=0, atol=1e-7)
        assert b.edge_index.tolist() == a.edge_index.tolist()  # the neighbour list is built in Å
        for name in ("energy", "forces"):
            np.testing.assert_allclose(b.targets[name].numpy(), a.targets[name].numpy(), rtol=1e-7, atol=1e-7)


def test_forces_far_too_large_for_ev_warn_and_name_the_setting(tmp_path):
    path = tmp_path / "kcal.xyz"
    frames = make_frames(4)
    ase.io.write(path, _kcal_copy(frames))
    rms = np.sqrt(np.mean(np.concatenate([a.get_forces().ravel() for a in frames]) ** 2))
    assert 0.3 < rms < 3  # ordinary forces in eV/Å: 10-70 in kcal/mol/Å
    with pytest.warns(UserWarning, match="data.units"):
        AtomicDataset.from_file(path, 3.0)


def test_graph_from_atoms_converts_pair_values_and_cell(tmp_path):
    atoms = Atoms("H2", positions=[[0, 0, 0], [1.4, 0, 0]], cell=[10, 10, 10], pbc=True)  # Bohr
    atoms.info["energy"] = -1.17  # Ha
    g = graph_from_atoms(atoms, 1.0, units={"positions": "Bohr", "energy": "Ha"})
    assert g.num_edges == 2  # 1.4 Bohr = 0.74 Å, within 1 Å
    assert float(g.cell.reshape(-1)[0]) == pytest.approx(10 * u.Bohr)
    assert float(g.targets["energy"]) == pytest.approx(-1.17 * u.Hartree)


def test_training_on_kcal_files_equals_training_on_ev_files(tmp_path):
    frames = make_frames(12)
    ev_file, kcal_file = tmp_path / "ev.xyz", tmp_path / "kcal.xyz"
    ase.io.write(ev_file, frames)
    ase.io.write(kcal_file, _kcal_copy(frames))
    a = train(load_config(None, [], base=tiny_config(ev_file, tmp_path / "ev", training__max_epochs=2)))
    b = train(load_config(None, [], base=tiny_config(
        kcal_file, tmp_path / "kcal", training__max_epochs=2,
        data__units={"energy": "kcal/mol", "forces": "kcal/mol/Å"})))
    for name in ("energy_mae", "forces_mae"):
        assert b["test_metrics"]["all"][name] == pytest.approx(a["test_metrics"]["all"][name], rel=1e-8)
    # the packaged model remembers the files' units: evaluate reads the kcal/mol file as it was trained
    out, metrics = tmp_path / "pred.xyz", tmp_path / "m.json"
    assert main(["evaluate", b["model_path"], str(kcal_file), "--output", str(out), "--json", str(metrics)]) == 0
    assert main(["evaluate", a["model_path"], str(ev_file), "--json", str(tmp_path / "m_ev.json")]) == 0
    got, ref = json.loads(metrics.read_text()), json.loads((tmp_path / "m_ev.json").read_text())
    assert got["all"]["forces_mae"] == pytest.approx(ref["all"]["forces_mae"], rel=1e-8)
    written = ase.io.read(out, ":")

    # the same frames in eV, the units taken back on the command line: the same metrics, and the predictions
    # written beside the kcal/mol file's references were in kcal/mol
    assert main(["evaluate", b["model_path"], str(ev_file), "--unit", "energy=", "--unit", "forces=",
                 "--json", str(tmp_path / "m2.json"), "--output", str(tmp_path / "pred_ev.xyz")]) == 0
    again = json.loads((tmp_path / "m2.json").read_text())
    assert again["all"]["forces_mae"] == pytest.approx(ref["all"]["forces_mae"], rel=1e-8)
    for in_kcal, in_ev in zip(written, ase.io.read(tmp_path / "pred_ev.xyz", ":")):
        assert in_kcal.info["pred_energy"] * KCAL == pytest.approx(in_ev.info["pred_energy"], rel=1e-7)
        np.testing.assert_allclose(in_kcal.arrays["pred_forces"] * KCAL, in_ev.arrays["pred_forces"], rtol=1e-6,
                                   atol=1e-7)  # extxyz keeps 8 decimals


def test_config_errors_name_the_key(tmp_path, capsys):
    data = tmp_path / "ev.xyz"
    ase.io.write(data, make_frames(4))
    with pytest.raises(ConfigError, match="units.energy: unknown unit 'kcals'"):
        load_config(None, [], base=tiny_config(data, tmp_path / "r", data__units={"energy": "kcals/mol"}))
    cfg = load_config(None, [], base=tiny_config(data, tmp_path / "r2", data__units={"forces": "kcal/mol"}))
    with pytest.raises(ConfigError, match=r"data.units.forces: kcal/mol is an energy"):
        train(cfg)
    assert not (tmp_path / "r2" / "model.pt").exists()
    run = train(load_config(None, [], base=tiny_config(data, tmp_path / "r3", training__max_epochs=1)))
    assert main(["evaluate", run["model_path"], str(data), "--unit", "forces=Ha"]) == 2
    assert "forces: Ha is an energy and eV/Å an energy / length" in capsys.readouterr().err
