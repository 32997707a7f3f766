"""ClebschCalculator: forces and stress are derivatives of the energy; outputs and errors."""

import numpy as np
import pytest

from ase.calculators.calculator import PropertyNotImplementedError

from clebsch.calculators import ClebschCalculator, load_model


def test_forces_are_minus_gradient_of_energy(model, ethanol):
    ethanol.calc = ClebschCalculator(model)
    forces = ethanol.get_forces()
    h = 1e-4
    for atom, axis in [(0, 0), (2, 1), (5, 2), (8, 0)]:
        energies = []
        for sign in (1, -1):
            displaced = ethanol.copy()
            displaced.calc = ethanol.calc
            displaced.positions[atom, axis] += sign * h
            energies.append(displaced.get_potential_energy())
        numerical = -(energies[0] - energies[1]) / (2 * h)
        assert forces[atom, axis] == pytest.approx(numerical, abs=1e-7)
    assert np.abs(forces).max() > 1e-3  # not trivially zero


def test_stress_is_strain_derivative_of_energy(model, copper):
    copper.calc = ClebschCalculator(model)
    stress = copper.get_stress(voigt=False)
    volume = copper.get_volume()
    h = 1e-5
    for i, j in [(0, 0), (1, 1), (0, 1), (1, 2)]:
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[i, j] += sign * h / 2
            strain[j, i] += sign * h / 2
            strained = copper.copy()
            strained.calc = copper.calc
            strained.set_cell(copper.cell.array @ strain, scale_atoms=True)
            energies.append(strained.get_potential_energy())
        numerical = (energies[0] - energies[1]) / (2 * h) / volume
        assert stress[i, j] == pytest.approx(numerical, abs=1e-8)
    assert np.abs(stress).max() > 1e-5


def test_outputs(model, ethanol, copper):
    ethanol.calc = ClebschCalculator(model)
    energies = ethanol.get_potential_energies()
    assert energies.shape == (len(ethanol),)
    assert energies.sum() == pytest.approx(ethanol.get_potential_energy(), abs=1e-9)
    assert ethanol.get_dipole_moment().shape == (3,)
    with pytest.raises(PropertyNotImplementedError, match=r"stress needs a structure periodic in all three.*False"):
        ethanol.get_stress()
    copper.calc = ClebschCalculator(model)
    assert copper.get_stress().shape == (6,)
    assert "dipole" in copper.calc.implemented_properties


def test_float32_agrees_with_float64(model, ethanol):
    ethanol.calc = ClebschCalculator(load_model(model, dtype="float64"))
    e64, f64 = ethanol.get_potential_energy(), ethanol.get_forces()
    single = ClebschCalculator(load_model(model, dtype="float32"), dtype="float32")
    e32, f32 = single.get_potential_energy(ethanol), single.get_forces(ethanol)
    assert e32 == pytest.approx(e64, abs=1e-3)
    assert np.abs(f32 - f64).max() < 1e-4


def test_unknown_element_is_named(model):
    from ase import Atoms

    atoms = Atoms("HFe", positions=[[0, 0, 0], [0, 0, 1.5]])
    atoms.calc = ClebschCalculator(model)
    with pytest.raises(ValueError, match="atom 1 is Fe"):
        atoms.get_potential_energy()


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        ClebschCalculator(tmp_path / "nothere.pt")


def test_bad_dtype(model):
    with pytest.raises(ValueError, match="dtype"):
        ClebschCalculator(model, dtype="float16")


def test_model_path_mistakes_are_named(model, tmp_path):
    from clebsch.train.package import PackageError, save_package

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(IsADirectoryError, match=r"'.*run' is a directory, not a model file$"):
        ClebschCalculator(run)
    save_package(model, run / "model.pt")
    with pytest.raises(IsADirectoryError, match=r"packaged model of a training run is '.*model.pt'"):
        ClebschCalculator(run)
    assert ClebschCalculator(run / "model.pt").cutoff == model.cutoff

    data = tmp_path / "frames.xyz"
    data.write_text("1\n\nH 0 0 0\n")
    with pytest.raises(PackageError, match="frames.xyz is not a clebsch model"):
        ClebschCalculator(data)
    fake = tmp_path / "fake.pt2"
    fake.write_text("not an archive")
    with pytest.raises(ValueError, match="'.*fake.pt2' is not a torch.export archive"):
        ClebschCalculator(fake)
    renamed = tmp_path / "packaged.pt2"
    save_package(model, renamed)
    with pytest.raises(ValueError, match=r"packaged.pt2' is not a readable torch.export archive.*\.pt name"):
        ClebschCalculator(renamed)


def test_bad_device(model):
    import torch

    with pytest.raises(ValueError, match="device must be a torch device.*'gpu'"):
        ClebschCalculator(model, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' asked for, but this torch sees no CUDA device"):
            ClebschCalculator(model, device="cuda")


def test_model_without_stress_on_a_periodic_cell(copper):
    """A model that returns no stress still gives energy and forces; asking it for stress names what is missing."""
    import torch

    class Harmonic(torch.nn.Module):
        cutoff = 3.0

        def forward(self, graph, compute_forces=True, compute_stress=False):
            e = 0.5 * (graph.positions**2).sum(1)
            return {"energy": e.sum().reshape(1), "atomic_energies": e, "forces": -graph.positions}

    copper.calc = ClebschCalculator(Harmonic())
    assert copper.get_potential_energy() == pytest.approx(0.5 * (copper.positions**2).sum())
    np.testing.assert_allclose(copper.get_forces(), -copper.positions)
    with pytest.raises(PropertyNotImplementedError, match=r"the model \(Harmonic\) gave no stress for this periodic cell"):
        copper.get_stress()


def test_calculators_never_import_train():
    """Engines run on a packaged model without the training code (DESIGN.md: engines never import ``train``)."""
    import ast
    from pathlib import Path

    import clebsch.calculators as package

    for path in Path(package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = "." * node.level + (node.module or "")
                assert "train" not in name.split("."), f"{path.name} imports {name}"
            elif isinstance(node, ast.Import):
                assert not any(".train" in alias.name for alias in node.names), path.name
