"""A torch.export archive gives the numbers of the model it came from, at any size."""

import subprocess
import sys

import numpy as np
import pytest
from ase.build import bulk, molecule

from clebsch.calculators import ClebschCalculator, export, load_exported


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """The session's small model (it has a dipole head) exported once, in float64."""
    return export(model, tmp_path_factory.mktemp("export") / "model.pt2")


def test_exported_model_gives_the_same_numbers(model, exported):
    path = exported
    structures = [molecule("CH3CH2OH"), molecule("C6H6"), bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)]
    got = ClebschCalculator(path)
    assert "dipole" in got.implemented_properties
    for atoms in structures:
        atoms.rattle(0.03, seed=0)
        ref = ClebschCalculator(model)
        ref.calculate(atoms, ["energy", "forces"])
        got.calculate(atoms, ["energy", "forces"])
        assert got.results["energy"] == pytest.approx(ref.results["energy"], abs=1e-9)
        np.testing.assert_allclose(got.results["energies"], ref.results["energies"], atol=1e-9)
        np.testing.assert_allclose(got.results["forces"], ref.results["forces"], atol=1e-9)
        if atoms.pbc.all():
            np.testing.assert_allclose(got.results["stress"], ref.results["stress"], atol=1e-9)
        ref.calculate(atoms, ["dipole"])
        got.calculate(atoms, ["dipole"])
        np.testing.assert_allclose(got.results["dipole"], ref.results["dipole"], rtol=1e-12, atol=1e-12)
        assert np.abs(ref.results["dipole"]).max() > 1e-3  # not trivially zero
    with pytest.raises(ValueError, match="atom 0 is Fe"):
        got.get_potential_energy(bulk("Fe"))

    # the archive runs in a process that never imports clebsch
    script = f"""
import sys, torch
program = torch.export.load({str(path)!r}).module()
pos = torch.tensor([[0.0, 0, 0], [0.0, 0, 1.1], [1.0, 0, -0.3]], dtype=torch.float64, requires_grad=True)
edges = torch.tensor([[1, 0, 2, 0, 2, 1], [0, 1, 0, 2, 1, 2]])
energies, charges, dipole = program(pos, torch.tensor([8, 1, 1]), edges, torch.zeros(6, 3, dtype=torch.float64),
                                    torch.zeros(3, 3, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
e = energies.sum()
f = -torch.autograd.grad(e, pos)[0]
assert "clebsch" not in sys.modules
print(repr(e.item()), *f.flatten().tolist(), *dipole.tolist())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    from ase import Atoms

    water = Atoms("OH2", positions=[[0.0, 0, 0], [0.0, 0, 1.1], [1.0, 0, -0.3]])
    water.calc = ClebschCalculator(model)
    assert float(out[0]) == pytest.approx(water.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(np.array(out[1:10], float).reshape(3, 3), water.get_forces(), atol=1e-9)
    np.testing.assert_allclose(np.array(out[10:], float), water.get_dipole_moment(), rtol=1e-12, atol=1e-12)


def test_exported_dipole_follows_the_total_charge(model, exported):
    dipoles = []
    for charge in (0.0, 1.0):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.03, seed=1)
        atoms.info["charge"] = charge
        ref, got = ClebschCalculator(model).get_dipole_moment(atoms), ClebschCalculator(exported).get_dipole_moment(atoms)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
        dipoles.append(got)
    assert np.abs(dipoles[1] - dipoles[0]).max() > 1e-3  # the charge reached the exported head


def test_energy_only_model_and_files_from_before_dipole_export(tmp_path):
    """A model without a dipole head exports the five-input energy function; files whose metadata predate
    the dipole export (no "inputs"/"outputs") still load and give the same numbers."""
    import json

    import torch

    from .conftest import small_model

    model = small_model(outputs=["energy", "forces", "stress"])
    path = export(model, tmp_path / "energy.pt2")
    extra = {"clebsch.json": ""}
    program = torch.export.load(path, extra_files=extra)
    meta = json.loads(extra["clebsch.json"])
    assert meta["inputs"] == ["positions", "numbers", "edge_index", "shifts", "cell"]
    assert meta["outputs"] == ["atomic_energies"]
    old_meta = {k: v for k, v in meta.items() if k not in ("inputs", "outputs")}
    old = tmp_path / "old.pt2"
    torch.export.save(program, old, extra_files={"clebsch.json": json.dumps(old_meta)})

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.03, seed=0)
    ref = ClebschCalculator(model)
    for file in (path, old):
        got = ClebschCalculator(file)
        assert "dipole" not in got.implemented_properties
        assert got.get_potential_energy(atoms) == pytest.approx(ref.get_potential_energy(atoms), abs=1e-9)
        np.testing.assert_allclose(got.get_forces(atoms), ref.get_forces(atoms), atol=1e-9)
        np.testing.assert_allclose(got.get_stress(atoms), ref.get_stress(atoms), atol=1e-9)
        with pytest.raises(Exception, match="dipole"):
            got.get_dipole_moment(atoms)


def test_load_errors(tmp_path, exported):
    with pytest.raises(FileNotFoundError, match="missing.pt2"):
        load_exported(tmp_path / "missing.pt2")
    with pytest.raises(ValueError, match=r"model.pt2' was exported in torch.float64; ask for that dtype, not float32"):
        ClebschCalculator(exported, dtype="float32")


@pytest.mark.parametrize("name", ["nequip", "mace"])
def test_equivariant_model_exports(name, tmp_path):
    """NequIP and MACE (spherical harmonics, tensor products, symmetric contraction) export and match, dipole included."""
    from ase.build import molecule

    from .conftest import small_model

    model = small_model(name, channels=4, lmax=1)
    path = export(model, tmp_path / f"{name}.pt2")
    atoms = molecule("CH3OH")
    ref, got = ClebschCalculator(model), ClebschCalculator(path)
    np.testing.assert_allclose(got.get_forces(atoms), ref.get_forces(atoms), atol=1e-9)
    # the dipole head reads the 1o features too (atomic dipoles), not only the scalars
    np.testing.assert_allclose(got.get_dipole_moment(atoms), ref.get_dipole_moment(atoms), rtol=1e-12, atol=1e-12)
