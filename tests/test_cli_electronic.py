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


def _member(seed, **declared):
    targets = {"density": {"level": "atom", "basis": {"file": BASIS, "key": "aux"}, **declared},
               "fock_onsite": {"level": "atom", "basis": {"file": BASIS, "key": "ao"}, "matrix": True, "unit": "Ha"},
               "fock": {"level": "edge", "basis": {"file": BASIS, "key": "ao"}, "matrix": True, "unit": "Ha"}}
    return float64_model({"name": "painn", "species": ["H", "O"], "cutoff": 4.0, "num_layers": 1, "channels": 4,
                          "outputs": ["energy", *targets], "targets": targets}, seed=seed)


def test_a_committee_file_is_evaluated_as_its_members_mean(tmp_path, capsys):
    import json

    import torch

    from clebsch.data.io import read_structures
    from clebsch.data.targets import graph_from_atoms
    from clebsch.uncertainty import Committee, CommitteeError, MeanModel, save_committee

    members = [_member(seed) for seed in (1, 2)]
    paths = []
    for k, m in enumerate(members):
        paths.append(tmp_path / f"m{k}.pt")
        save_package(m, paths[-1], metadata={"train_config": {"data": {"keys": KEYS}}})
    committee = save_committee(tmp_path / "committee.json", paths)
    mean = Committee.load(committee).mean_model()
    atoms = read_structures(DATA, "100:101")[0]
    graph = graph_from_atoms(atoms, 4.0, keys={"density": "density_coefficients"}, targets=mean.targets,
                             dtype=torch.float64)
    out = mean(graph)
    each = [m(graph) for m in members]
    for name in ("energy", "density", "fock_onsite", "fock"):
        torch.testing.assert_close(out[name], 0.5 * (each[0][name] + each[1][name]), atol=1e-12, rtol=0)
    assert main(["evaluate", str(committee), f"{DATA}@100:101", "--json", str(tmp_path / "m.json")]) == 0
    text = capsys.readouterr().out
    assert "the mean of the 2 models of committee" in text and "density eps_rho %" in text
    report = json.loads((tmp_path / "m.json").read_text())
    ref = torch.nan_to_num(graph.targets["density"])
    mask = torch.isfinite(graph.targets["density"])
    expected = float((out["density"].detach() - ref)[mask].abs().mean())
    found = [v for k, v in report["metrics"]["all"].items() if k.startswith("density") and k.endswith("mae")]
    assert found and found[0] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(CommitteeError, match=r"declare \['density'\] differently"):
        MeanModel([members[0], _member(3, loss_metric="overlap")])
