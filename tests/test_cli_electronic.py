"""``clebsch evaluate`` and ``clebsch density`` on a model with a density and a Kohn-Sham matrix (untrained:
the commands, their reports, files and errors are what is tested)."""

from pathlib import Path

import ase.io
import pytest

from clebsch.cli import main
from clebsch.models.package import save_package
from clebsch.testing import float64_model

ROOT = Path(__file__).parents[1]
DATA = ROOT / "examples" / "water_clusters.xyz.xz"
BASIS = str(ROOT / "examples" / "water_clusters.basis.json")
KEYS = {"density": "density_coefficients", "fock_onsite": "fock", "fock": "fock"}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    targets = {"density": {"level": "atom", "basis": {"file": BASIS, "key": "aux"}},
               "fock_onsite": {"level": "atom", "basis": {"file": BASIS, "key": "ao"}, "matrix": True, "unit": "Ha"},
               "fock": {"level": "edge", "basis": {"file": BASIS, "key": "ao"}, "matrix": True, "unit": "Ha"}}
    model = float64_model({"name": "painn", "species": ["H", "O"], "cutoff": 4.0, "num_layers": 1, "channels": 4,
                           "outputs": ["energy", *targets], "targets": targets})
    path = tmp_path_factory.mktemp("electronic") / "model.pt"
    save_package(model, path, metadata={"train_config": {"data": {"keys": KEYS}}})
    return path


def test_evaluate_reports_density_and_orbital_errors(model_file, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["evaluate", str(model_file), f"{DATA}@98:102", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "density eps_rho %" in text and "fock occ. e MAE meV" in text and "fock MAE µHa" in text
    assert "fock orth. MAE µHa" in text
    assert "monomer" in text and "dimer" in text
    import json

    report = json.loads(out.read_text())["electronic"]
    assert report["dimer"]["density_eps_percent"] > 0 and report["monomer"]["fock_matrix_mae"] > 0
    assert report["dimer"]["fock_orthonormal_mae"] > 0


def test_density_cube_and_its_error(model_file, tmp_path, capsys):
    cube = tmp_path / "rho.cube"
    assert main(["density", str(model_file), str(DATA), "--frame", "100", "--cube", str(cube),
                 "--reference", "density_coefficients", "--spacing", "0.4"]) == 0
    text = capsys.readouterr().out
    assert "eps_rho =" in text and "electrons" in text
    data, atoms = ase.io.cube.read_cube_data(str(cube))
    assert len(atoms) == 6 and data.ndim == 3 and data.size > 1000
    assert (tmp_path / "rho-error.cube").exists()


def test_density_errors_name_what_is_wrong(model_file, tmp_path, capsys):
    assert main(["density", str(model_file), str(DATA), "--cube", str(tmp_path / "x.cube"), "--target", "fock"]) == 2
    assert "--target 'fock' is not a density target of this model; it has ['density']" in capsys.readouterr().err
    assert main(["density", str(model_file), str(ROOT / "examples" / "ethanol_xtb.xyz"),
                 "--cube", str(tmp_path / "y.cube")]) == 2
    assert "ethanol_xtb.xyz', frame 0, atom 0: C (Z=6) is an element this model was not trained on" \
        in capsys.readouterr().err
    assert not (tmp_path / "y.cube").exists()
    assert main(["evaluate", str(model_file), str(ROOT / "examples" / "ethanol_xtb.xyz")]) == 2
    assert "ethanol_xtb.xyz', frame 0, atom 0: C (Z=6)" in capsys.readouterr().err
