"""Committees and LLPR: statistics against a manual evaluation, the calculator, files, calibration, errors."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from clebsch.calculators import ClebschCalculator
from clebsch.calculators._committee import CommitteeCalculator
from clebsch.graph import AtomicGraph, batch
from clebsch.models.package import save_package
from clebsch.testing import float64_model
from clebsch.uncertainty import (
    LLPR,
    Committee,
    CommitteeError,
    fit_scale,
    frame_uncertainty,
    llpr_path,
    rank_correlation,
    save_committee,
)

SPECIES = ["H", "C", "O", "Cu"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def member(seed=0, cutoff=3.0, species=SPECIES, hidden=8, name="schnet"):
    e0 = [-13.6, -1029.0, -2041.0, -1300.0][:len(species)]
    return float64_model({"name": name, "species": species, "cutoff": cutoff, "num_layers": 2, "channels": 8,
                          "readout_hidden": hidden, "atomic_energies": e0, "scale": 0.5}, seed, randomize_zeros=True)


def ethanol(seed=1, stretch=1.0, amplitude=0.05):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(amplitude, seed=seed)
    atoms.positions *= stretch
    return atoms


def copper():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=2)
    return atoms


def graph(atoms, cutoff=3.0):
    return AtomicGraph.from_ase(atoms, cutoff).to(dtype=torch.float64)


@pytest.fixture(scope="module")
def members():
    return [member(seed) for seed in range(3)]


# ---------------------------------------------------------------- committee


def test_committee_mean_and_std_match_the_members(members):
    g = batch([graph(ethanol()), graph(copper())])
    out = Committee(members).predict(g)
    manual = [m(g, compute_forces=True, compute_stress=True) for m in members]
    energies = torch.stack([o["energy"] for o in manual]).detach()
    forces = torch.stack([o["forces"] for o in manual]).detach()
    stress = torch.stack([o["stress"] for o in manual]).detach()
    torch.testing.assert_close(out["energy"], energies.mean(0))
    torch.testing.assert_close(out["energy_std"], torch.from_numpy(np.std(energies.numpy(), axis=0, ddof=1)))
    torch.testing.assert_close(out["forces"], forces.mean(0))
    torch.testing.assert_close(out["forces_std"], torch.from_numpy(np.std(forces.numpy(), axis=0, ddof=1)))
    torch.testing.assert_close(out["forces_uncertainty"], out["forces_std"].norm(dim=-1))
    torch.testing.assert_close(out["stress"], stress.mean(0))
    torch.testing.assert_close(out["stress_std"], torch.from_numpy(np.std(stress.numpy(), axis=0, ddof=1)))
    assert out["energy_members"].shape == (3, 2) and out["forces_members"].shape == (3, g.num_atoms, 3)
    assert float(out["energy_std"].min()) > 0 and float(out["forces_std"].mean()) > 0


def test_identical_members_have_zero_spread(members):
    out = Committee([members[0], copy.deepcopy(members[0]), copy.deepcopy(members[0])]).predict(graph(ethanol()))
    assert float(out["energy_std"].abs().max()) == 0.0
    assert float(out["forces_std"].abs().max()) == 0.0


def test_calculator_results_shapes_units_and_mean(members):
    atoms = ethanol()
    atoms.calc = CommitteeCalculator(members, calibration={"forces": 2.0})
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    r = atoms.calc.results
    assert isinstance(e, float) and isinstance(r["energy_std"], float) and r["energy_std"] > 0
    assert f.shape == r["forces_std"].shape == (9, 3) and r["forces_uncertainty"].shape == (9,)
    assert r["energy_members"].shape == (3,) and r["forces_members"].shape == (3, 9, 3)
    assert r["energies"].shape == (9,) and np.isclose(r["energies"].sum(), e)
    np.testing.assert_array_equal(atoms.calc.get_property("forces_std", atoms), r["forces_std"])
    # the same numbers as one ClebschCalculator per member (eV, eV/Å), with the std scaled by the calibration
    singles = []
    for m in members:
        other = atoms.copy()
        other.calc = ClebschCalculator(m)
        singles.append((other.get_potential_energy(), other.get_forces()))
    e_k = np.array([s[0] for s in singles])
    f_k = np.stack([s[1] for s in singles])
    np.testing.assert_allclose(r["energy_members"], e_k, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(e, e_k.mean(), rtol=1e-12)
    np.testing.assert_allclose(f, f_k.mean(0), atol=1e-12)
    np.testing.assert_allclose(r["energy_std"], e_k.std(ddof=1), rtol=1e-8)
    np.testing.assert_allclose(r["forces_std"], 2.0 * f_k.std(0, ddof=1), atol=1e-12)
    # periodic: the stress (Voigt, eV/Å³) is the members' mean
    cu = copper()
    cu.calc = CommitteeCalculator(members)
    s = cu.get_stress()
    s_k = []
    for m in members:
        other = cu.copy()
        other.calc = ClebschCalculator(m)
        s_k.append(other.get_stress())
    np.testing.assert_allclose(s, np.mean(s_k, axis=0), atol=1e-12)
    assert cu.calc.results["stress_std"].shape == (6,)


def test_committee_file_round_trip(members, tmp_path):
    folder = tmp_path / "committee"
    paths = [save_package(m, folder / f"member_{k}" / "model.pt") for k, m in enumerate(members[:2])]
    path = save_committee(folder / "committee.json", paths, {"energy": 1.5, "forces": 0.7})
    listed = json.loads(path.read_text())["members"]
    assert listed == ["member_0/model.pt", "member_1/model.pt"]  # relative to the file
    shutil.move(str(folder), str(tmp_path / "moved"))  # loading needs only what the file names
    loaded = Committee.load(tmp_path / "moved" / "committee.json", dtype=torch.float64)
    assert loaded.calibration["energy"] == 1.5 and loaded.calibration["forces"] == 0.7
    g = graph(ethanol())
    a, b = Committee(members[:2], calibration={"energy": 1.5, "forces": 0.7}).predict(g), loaded.predict(g)
    for key in ("energy", "energy_std", "forces", "forces_std"):
        torch.testing.assert_close(a[key], b[key])
    atoms = ethanol()
    atoms.calc = CommitteeCalculator(loaded)
    np.testing.assert_allclose(atoms.get_potential_energy(), float(a["energy"]), rtol=1e-10)


def test_calibration_recovers_a_known_factor(members):
    committee = Committee(members)
    rng = np.random.default_rng(0)
    frames = []
    for i in range(12):
        g = graph(ethanol(seed=10 + i))
        out = committee.predict(g)
        noise = torch.from_numpy(rng.standard_normal(out["forces"].shape))
        g.targets = {"forces": out["forces"] + 2.5 * out["forces_std"] * noise,
                     "energy": out["energy"] + 0.5 * out["energy_std"] * torch.from_numpy(rng.standard_normal(1))}
        frames.append(g)
    cal = committee.calibrate(frames)
    assert abs(cal["forces"] - 2.5) < 0.25  # 324 components
    assert 0.1 < cal["energy"] < 1.5
    report = frame_uncertainty(committee, frames, batch_size=5)
    assert report.force_error.shape == report.force_std.shape == (12,)
    assert set(report.correlations()) == {"forces", "forces_max", "energy"}


def test_members_that_do_not_match_are_named(members, tmp_path):
    a = save_package(members[0], tmp_path / "a.pt")
    b = save_package(member(1, cutoff=4.0), tmp_path / "b.pt")
    c = save_package(member(2, species=["H", "C", "O"]), tmp_path / "c.pt")
    with pytest.raises(CommitteeError, match=r"cutoff.*a\.pt has 3 Å.*b\.pt has 4 Å"):
        Committee.from_models([a, b])
    with pytest.raises(CommitteeError, match=r"species.*a\.pt knows \['H', 'C', 'O', 'Cu'\].*c\.pt knows"):
        CommitteeCalculator([a, c])  # files, as the calculator takes them
    with pytest.raises(CommitteeError, match="at least 2"):
        Committee.from_models([a])
    listing = save_committee(tmp_path / "committee.json", [a, a])
    a.unlink()
    with pytest.raises(CommitteeError, match=r"do not exist.*a\.pt"):
        Committee.load(listing)
    (tmp_path / "bad.json").write_text('{"members": []}')
    with pytest.raises(CommitteeError, match="not a committee file"):
        Committee.load(tmp_path / "bad.json")


# ---------------------------------------------------------------- LLPR


@pytest.fixture(scope="module")
def model():
    return member(3)


def test_llpr_features_are_the_last_layer_of_the_energy(model):
    llpr = LLPR(model, torch.eye(8, dtype=torch.float64), 1.0)
    g = batch([graph(ethanol(1)), graph(ethanol(2))])
    out = llpr.features(g)
    ref = model(g)
    w = llpr.last.weight.detach()[0]
    e0 = model.atomic_energies[model.species_index(g.numbers)]
    e0 = torch.zeros(2, dtype=torch.float64).index_add(0, g.batch, e0)
    torch.testing.assert_close(out["features"] @ w + e0, ref["energy"].detach())
    torch.testing.assert_close(-torch.einsum("h,hnc->nc", w, out["jacobian"]), ref["forces"].detach())


def test_llpr_uncertainty_grows_away_from_the_training_data(model):
    train = [graph(ethanol(seed=i)) for i in range(24)]
    llpr = LLPR.fit(model, train, force_weight=0.0)
    near = torch.cat([llpr.energy_uncertainty(graph(ethanol(seed=100 + i))) for i in range(6)])
    far = torch.cat([llpr.energy_uncertainty(graph(ethanol(seed=100 + i, stretch=1.2))) for i in range(6)])
    assert float(far.min()) > 1.5 * float(near.max())


def test_llpr_calibration_recovers_a_known_scale(model):
    """On structures whose errors are drawn as alpha * sqrt(f^T (C + lambda I)^-1 f), the fit returns alpha."""
    train = [graph(ethanol(seed=i)) for i in range(16)]
    llpr = LLPR.fit(model, train, force_weight=1.0)
    lam = llpr.lam
    rng = np.random.default_rng(1)
    valid = []
    for i in range(40):
        g = graph(ethanol(seed=200 + i))
        out = llpr.predict(g)  # alpha = 1: the standard deviations of the formula
        g.targets = {"energy": out["energy"] + 0.3 * out["energy_std"] * torch.from_numpy(rng.standard_normal(1)),
                     "forces": out["forces"] + 4.0 * out["forces_std"] * torch.from_numpy(rng.standard_normal((9, 3)))}
        valid.append(g)
    found = llpr.calibrate(valid, lambdas=[lam])
    assert found["lambda"] == lam
    assert abs(found["alpha_forces"] - 4.0) < 0.3  # 1080 components
    assert abs(found["alpha_energy"] - 0.3) < 0.1  # 40 structures
    report = frame_uncertainty(llpr, valid, batch_size=8)
    # calibrated: the mean predicted force spread matches the spread of the drawn errors
    assert 0.7 < report.force_std.mean() / report.force_error.mean() < 1.4


def test_llpr_save_load_round_trip(model, members, tmp_path):
    path = save_package(model, tmp_path / "model.pt")
    llpr = LLPR.fit(model, [graph(ethanol(seed=i)) for i in range(10)])
    llpr.alpha_forces = 3.0
    saved = llpr.save(llpr_path(path), model_path=path)
    assert saved.name == "model.llpr.pt"
    again = LLPR.load(saved, dtype=torch.float64)  # finds model.pt by itself
    g = graph(ethanol(seed=50))
    a, b = llpr.predict(g), again.predict(g)
    for key in ("energy_std", "forces_std"):
        torch.testing.assert_close(a[key], b[key])
    assert again.lam == llpr.lam and again.alpha_forces == 3.0
    with pytest.raises(ValueError, match="fitted for another model"):
        LLPR.load(saved, model=members[0])


# ---------------------------------------------------------------- statistics


def test_rank_correlation_and_fit_scale():
    rng = np.random.default_rng(0)
    u = rng.uniform(size=50)
    assert rank_correlation(u, 3 * u**2) == pytest.approx(1.0)
    assert rank_correlation(u, -u) == pytest.approx(-1.0)
    assert abs(rank_correlation(u, rng.uniform(size=50))) < 0.4
    assert rank_correlation([1, 2, np.nan, 3], [2, 4, 1, 9]) == pytest.approx(1.0)  # NaN pairs left out
    with pytest.raises(ValueError, match="3 uncertainties for 2 errors"):
        rank_correlation([1, 2, 3], [1, 2])
    assert fit_scale([2.0, -2.0], [1.0, 1.0]) == pytest.approx(2.0)
