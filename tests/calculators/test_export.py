"""A torch.export archive gives the numbers of the model it came from, at any size."""

import subprocess
import sys

import numpy as np
import pytest
from ase.build import bulk, molecule

from clebsch.calculators import ClebschCalculator, export, load_exported


def test_exported_model_gives_the_same_numbers(model, tmp_path):
    path = export(model, tmp_path / "model.pt2")
    structures = [molecule("CH3CH2OH"), molecule("C6H6"), bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)]
    for atoms in structures:
        atoms.rattle(0.03, seed=0)
        ref = ClebschCalculator(model)
        ref.calculate(atoms, ["energy", "forces"])
        got = ClebschCalculator(path)
        got.calculate(atoms, ["energy", "forces"])
        assert got.results["energy"] == pytest.approx(ref.results["energy"], abs=1e-9)
        np.testing.assert_allclose(got.results["energies"], ref.results["energies"], atol=1e-9)
        np.testing.assert_allclose(got.results["forces"], ref.results["forces"], atol=1e-9)
        if atoms.pbc.all():
            np.testing.assert_allclose(got.results["stress"], ref.results["stress"], atol=1e-9)
    with pytest.raises(ValueError, match="atom 0 is Fe"):
        ClebschCalculator(path).get_potential_energy(bulk("Fe"))

    # the archive runs in a process that never imports clebsch
    script = f"""
import sys, torch
program = torch.export.load({str(path)!r}).module()
pos = torch.tensor([[0.0, 0, 0], [0.0, 0, 1.1], [1.0, 0, -0.3]], dtype=torch.float64, requires_grad=True)
edges = torch.tensor([[1, 0, 2, 0, 2, 1], [0, 1, 0, 2, 1, 2]])
e = program(pos, torch.tensor([8, 1, 1]), edges, torch.zeros(6, 3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)).sum()
f = -torch.autograd.grad(e, pos)[0]
assert "clebsch" not in sys.modules
print(repr(e.item()), *f.flatten().tolist())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    from ase import Atoms

    water = Atoms("OH2", positions=[[0.0, 0, 0], [0.0, 0, 1.1], [1.0, 0, -0.3]])
    water.calc = ClebschCalculator(model)
    assert float(out[0]) == pytest.approx(water.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(np.array(out[1:], float).reshape(3, 3), water.get_forces(), atol=1e-9)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt2"):
        load_exported(tmp_path / "missing.pt2")


@pytest.mark.parametrize("name", ["nequip", "mace"])
def test_equivariant_model_exports(name, tmp_path):
    """NequIP and MACE (spherical harmonics, tensor products, symmetric contraction) export and match."""
    from ase.build import molecule

    from .conftest import small_model

    model = small_model(name, channels=4, lmax=1)
    path = export(model, tmp_path / f"{name}.pt2")
    atoms = molecule("CH3OH")
    ref, got = ClebschCalculator(model), ClebschCalculator(path)
    np.testing.assert_allclose(got.get_forces(atoms), ref.get_forces(atoms), atol=1e-9)
