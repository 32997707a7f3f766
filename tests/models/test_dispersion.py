"""DFT-D3(BJ) dispersion as a physics term: against the reference code, in a model, packaged, exported.

The reference is s-dftd3 through its Python API (the ``dftd3`` package, Fortran),
which shares no code with the torch implementation; finite differences, random
rotations and reflections, and a model without the term are the other references.
"""

import math
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.units import Bohr, Hartree

pytest.importorskip("tad_dftd3", reason="the d3 physics term needs tad-dftd3 (pip install 'clebsch[d3]')")

from clebsch.graph import AtomicGraph  # noqa: E402
from clebsch.models import build_model  # noqa: E402
from clebsch.models._dispersion import D3_KEYS, D3Dispersion, check_d3, d3_functionals, d3_parameters  # noqa: E402
from clebsch.models._physics import check_physics, fitting  # noqa: E402
from clebsch.testing import check_potential, finite_difference_hessian  # noqa: E402

from .conftest import small_model  # noqa: E402

# the first frame of the bundled ethanol data (GFN2-xTB), Å
_ETHANOL = ase.io.read(Path(__file__).resolve().parents[2] / "examples" / "ethanol_xtb.xyz", 0)
ETHANOL, ETHANOL_Z = _ETHANOL.positions, _ETHANOL.numbers
# rock salt (primitive cell, rattled) and a triclinic cell of C, O, H
NACL_CELL = 2.82 * np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
NACL = np.array([[0.03, -0.02, 0.01], [2.85, 2.80, 2.79]])
TRICLINIC_CELL = np.array([[4.1, 0.0, 0.0], [0.7, 3.9, 0.0], [-0.4, 0.5, 4.4]])
TRICLINIC = np.array([[0.1, 0.2, 0.3], [1.3, 0.4, 0.2], [0.6, 1.9, 1.1], [2.9, 2.8, 3.1], [1.9, 3.1, 2.4]])
TRICLINIC_Z = np.array([6, 8, 1, 6, 1])


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def oracle(numbers, positions, cell=None, pbc=None, *, method="pbe", atm=False, params=None, cutoffs=None):
    """Energy (eV), forces (eV/Å), dE/d(strain) (eV) and per-atom energies (eV) from s-dftd3."""
    interface = pytest.importorskip("dftd3.interface", reason="the reference code's Python API (pip install dftd3) "
                                    "is the oracle of these tests")
    periodic = pbc is not None and any(pbc)
    model = interface.DispersionModel(np.asarray(numbers), np.asarray(positions) / Bohr,
                                      np.asarray(cell) / Bohr if periodic else None,
                                      np.asarray(pbc) if periodic else None)
    if cutoffs is not None:  # Å -> Bohr
        model.set_realspace_cutoff(cutoffs["cutoff"] / Bohr, cutoffs["atm_cutoff"] / Bohr, cutoffs["cn_cutoff"] / Bohr)
    param = interface.RationalDampingParam(**params) if params else interface.RationalDampingParam(method=method,
                                                                                                  atm=atm)
    result = model.get_dispersion(param, grad=True)
    pairs = model.get_pairwise_dispersion(param)
    per_atom = pairs["additive pairwise energy"].sum(1) + pairs["non-additive pairwise energy"].sum(1)
    return (float(result["energy"]) * Hartree, -result["gradient"] * Hartree / Bohr, result["virial"] * Hartree,
            per_atom * Hartree)


def evaluate(term, numbers, positions, cell=None, pbc=None):
    """Energy, forces, dE/d(strain) and per-atom energies of a :class:`D3Dispersion` on one structure."""
    numbers = np.asarray(numbers)
    species = torch.tensor([term.numbers.index(z) for z in numbers])
    pos = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
    strain = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    cell = torch.zeros(3, 3, dtype=torch.float64) if cell is None else torch.tensor(cell, dtype=torch.float64)
    e = term(species, pos + pos @ strain, None, 1, (cell + cell @ strain)[None],
             torch.tensor([pbc if pbc is not None else [False] * 3]))
    grad_r, grad_strain = torch.autograd.grad(e.sum(), [pos, strain])
    return float(e.detach().sum()), -grad_r.numpy(), grad_strain.numpy(), e.detach().numpy()


def d3(numbers, **options):
    return D3Dispersion(sorted(set(int(z) for z in numbers)), **{"functional": "pbe", **options})


def assert_matches(mine, ref, energy_tol=1e-8, force_tol=1e-8, virial_tol=1e-8):
    e, f, v, atoms = mine
    e_ref, f_ref, v_ref, atoms_ref = ref
    assert abs(e - e_ref) <= energy_tol, (e, e_ref)
    assert np.abs(f - f_ref).max() <= force_tol
    assert np.abs(v - v_ref).max() <= virial_tol
    assert np.abs(atoms - atoms_ref).max() <= energy_tol
    assert atoms.sum() == pytest.approx(e, abs=1e-12)  # the per-atom split adds up to the energy


# ---------------------------------------------------------------- against the reference code


@pytest.mark.parametrize("atm", [False, True])
def test_molecule_matches_the_reference_code(atm):
    ref = oracle(ETHANOL_Z, ETHANOL, atm=atm)
    assert ref[0] < -0.05  # a real dispersion energy (eV), not a trivially small one
    assert_matches(evaluate(d3(ETHANOL_Z, atm=atm), ETHANOL_Z, ETHANOL), ref)


def test_periodic_cell_matches_the_reference_code():
    """Rock salt at the reference code's own cutoffs (60 and 40 Bohr): lattice sums far beyond the cell."""
    numbers = [11, 17]
    ref = oracle(numbers, NACL, NACL_CELL, [True] * 3)
    assert ref[0] < -0.3 and np.abs(ref[2]).max() > 0.1
    assert_matches(evaluate(d3(numbers), numbers, NACL, NACL_CELL, [True] * 3), ref)


@pytest.mark.parametrize("pbc", [[True, True, True], [True, True, False]], ids=["bulk", "slab"])
def test_triclinic_and_slab_with_three_body_and_own_cutoffs_match_the_reference_code(pbc):
    cutoffs = {"cutoff": 13.3, "cn_cutoff": 8.7, "atm_cutoff": 6.6}  # no image pair sits on a cutoff
    params = {"s6": 1.0, "s8": 0.9, "s9": 1.3, "a1": 0.4, "a2": 4.8}
    ref = oracle(TRICLINIC_Z, TRICLINIC, TRICLINIC_CELL, pbc, params=params, cutoffs=cutoffs)
    term = d3(TRICLINIC_Z, functional=None, atm=True, **{k: params[k] for k in ("s8", "a1", "a2", "s9")}, **cutoffs)
    assert_matches(evaluate(term, TRICLINIC_Z, TRICLINIC, TRICLINIC_CELL, pbc), ref)


def test_functional_parameters_and_aliases_are_the_reference_codes():
    assert d3_parameters("pbe") == {"s6": 1.0, "s8": 0.7875, "a1": 0.4289, "a2": 4.4407}
    assert d3_parameters("PBEh") == d3_parameters("pbe0") and d3_parameters("B3-LYP") == d3_parameters("b3lyp")
    assert len(d3_functionals()) > 50
    ref = oracle(ETHANOL_Z, ETHANOL, method="b3lyp")
    assert_matches(evaluate(d3(ETHANOL_Z, functional="b3lyp"), ETHANOL_Z, ETHANOL), ref)


def test_batch_of_open_and_periodic_structures_is_each_alone():
    term = d3([1, 6, 8, 11, 17])
    index = {z: k for k, z in enumerate(term.numbers)}
    structures = [(ETHANOL_Z, ETHANOL, np.zeros((3, 3)), False), ([11, 17], NACL, NACL_CELL, True),
                  (ETHANOL_Z[:6], ETHANOL[:6] + 0.1, np.zeros((3, 3)), False)]
    species = torch.tensor([index[z] for s in structures for z in s[0]])
    positions = torch.tensor(np.concatenate([s[1] for s in structures]))
    owner = torch.tensor([b for b, s in enumerate(structures) for _ in s[0]])
    cells = torch.tensor(np.stack([s[2] for s in structures]))
    together = term(species, positions, owner, 3, cells, [s[3] for s in structures])
    start = 0
    for numbers, pos, cell, periodic in structures:
        alone = evaluate(term, numbers, pos, cell, [periodic] * 3)[3]
        np.testing.assert_allclose(together[start:start + len(numbers)].numpy(), alone, rtol=0, atol=1e-13)
        start += len(numbers)
    # the same open structures summed one by one over neighbour lists (above the dense limit): the same numbers
    term.dense_atoms = 4
    np.testing.assert_allclose(term(species, positions, owner, 3, cells, [s[3] for s in structures]).numpy(),
                               together.numpy(), rtol=0, atol=1e-13)


def test_three_body_over_neighbour_lists_is_the_dense_sum():
    term = d3(ETHANOL_Z, atm=True)
    species = torch.tensor([term.numbers.index(z) for z in ETHANOL_Z])
    dense = term(species, torch.tensor(ETHANOL))
    term.dense_atm_atoms = 4
    listed = term(species, torch.tensor(ETHANOL))
    np.testing.assert_allclose(listed.numpy(), dense.numpy(), rtol=0, atol=1e-14)
    assert (dense - d3(ETHANOL_Z)(species, torch.tensor(ETHANOL))).abs().max() > 1e-5  # the three-body part counts


def test_energy_is_invariant_and_forces_rotate_under_rotations_and_reflections():
    term = d3(ETHANOL_Z, atm=True)
    e, f, _, atoms = evaluate(term, ETHANOL_Z, ETHANOL)
    gen = np.random.default_rng(3)
    for reflect in (False, True):
        q, r = np.linalg.qr(gen.normal(size=(3, 3)))
        rot = q * np.sign(np.diag(r))
        if (np.linalg.det(rot) < 0) != reflect:
            rot[:, 0] *= -1
        e2, f2, _, atoms2 = evaluate(term, ETHANOL_Z, ETHANOL @ rot.T + gen.normal(size=3))
        assert e2 == pytest.approx(e, rel=1e-12)
        np.testing.assert_allclose(atoms2, atoms, rtol=0, atol=1e-13)
        np.testing.assert_allclose(f2, f @ rot.T, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- in a model


def _model(**d3_options):
    return small_model("nequip", outputs=["energy", "forces", "stress"],
                       physics={"d3": {"functional": "pbe", **d3_options}})


def _plain_like(model):
    plain = small_model("nequip", outputs=["energy", "forces", "stress"])
    plain.load_state_dict(model.state_dict())
    return plain


def _ethanol_graph(cutoff=3.0):
    return AtomicGraph.from_tensors(torch.tensor(ETHANOL), torch.tensor(ETHANOL_Z), cutoff)


def test_model_adds_the_term_to_energy_forces_and_stress():
    model = _model()
    plain = _plain_like(model)
    g = _ethanol_graph()
    out, base = model(g), plain(g)
    e, f, _, atoms = oracle(ETHANOL_Z, ETHANOL)
    assert float((out["energy"] - base["energy"]).detach()) == pytest.approx(e, abs=1e-9)
    np.testing.assert_allclose((out["forces"] - base["forces"]).detach().numpy(), f, rtol=0, atol=1e-9)
    np.testing.assert_allclose((out["atomic_energies"] - base["atomic_energies"]).detach().numpy(), atoms, atol=1e-9)
    cell = torch.tensor(TRICLINIC_CELL)
    crystal = AtomicGraph.from_tensors(torch.tensor(TRICLINIC), torch.tensor(TRICLINIC_Z), 3.0, cell=cell,
                                       pbc=torch.tensor([True, True, True]))
    _, _, virial, _ = oracle(TRICLINIC_Z, TRICLINIC, TRICLINIC_CELL, [True] * 3)
    stress = (model(crystal)["stress"] - plain(crystal)["stress"])[0].detach().numpy()
    np.testing.assert_allclose(stress, virial / abs(np.linalg.det(TRICLINIC_CELL)), rtol=0, atol=1e-9)


def test_contract_with_d3():
    """Rotations and reflections, finite-difference forces and stress, supercells, batches, rebuild from config."""
    model = _model(atm=True, cutoff=8.0, cn_cutoff=6.0, atm_cutoff=5.0)
    errors = check_potential(model, checks=("equivariance", "forces", "stress", "extensive", "batch", "rebuild"))
    assert errors["forces"] <= 1e-6 and errors["equivariance"] <= 1e-9


def test_hessian_equals_finite_differences_of_the_forces():
    model = small_model("nequip", outputs=["energy", "forces"], physics={"d3": {"functional": "pbe", "atm": True}})
    pos = torch.tensor(ETHANOL[:5])
    numbers = torch.tensor(ETHANOL_Z[:5])
    hessian = model.hessian(AtomicGraph.from_tensors(pos, numbers, 3.0))
    fd = finite_difference_hessian(lambda p: model(AtomicGraph.from_tensors(p, numbers, 3.0))["forces"], pos)
    assert float((hessian - fd).abs().max()) <= 1e-6 * max(1.0, float(fd.abs().max()))


def test_inference_only_is_left_out_while_fitting_and_added_in_use():
    model = _model(inference_only=True)
    plain = _plain_like(model)
    g = _ethanol_graph()
    e_d3, f_d3, _, _ = oracle(ETHANOL_Z, ETHANOL)
    with fitting(model):
        fitted = model(g)
    used = model(g)
    base = plain(g)
    assert float(fitted["energy"].detach()) == float(base["energy"].detach())
    torch.testing.assert_close(fitted["forces"], base["forces"], rtol=0, atol=0)
    assert float((used["energy"] - base["energy"]).detach()) == pytest.approx(e_d3, abs=1e-9)
    np.testing.assert_allclose((used["forces"] - base["forces"]).detach().numpy(), f_d3, rtol=0, atol=1e-9)
    # without inference_only the term is always part of the energy: the network learns DFT - D3
    always = _model()
    always.load_state_dict(model.state_dict())
    with fitting(always):
        assert float(always(g)["energy"].detach()) == pytest.approx(float(used["energy"].detach()), abs=1e-12)
    with fitting(plain):  # a model without such terms is unchanged
        assert float(plain(g)["energy"].detach()) == float(base["energy"].detach())


def test_package_round_trip_keeps_the_term(tmp_path):
    from clebsch.models.package import load, save_package

    model = _model(inference_only=True, atm=True, s8=0.8)
    path = save_package(model, tmp_path / "model.pt")
    loaded = load(path, dtype=torch.float64)
    assert loaded.physics.d3 is not None and loaded.physics.d3.params == model.physics.d3.params
    assert loaded.physics.d3.params["s8"] == 0.8 and loaded.physics.d3.inference_only and loaded.physics.d3.atm
    g = _ethanol_graph()
    assert float(loaded(g)["energy"].detach()) == pytest.approx(float(model(g)["energy"].detach()), abs=1e-12)
    with fitting(loaded), fitting(model):
        assert float(loaded(g)["energy"].detach()) == pytest.approx(float(model(g)["energy"].detach()), abs=1e-12)


def test_ase_calculator_and_export_include_the_term(tmp_path):
    from clebsch.calculators import ClebschCalculator, export, load_exported
    from clebsch.models.package import save_package

    model = small_model("schnet", outputs=["energy", "forces"], physics={"d3": {"functional": "pbe"}})
    plain = small_model("schnet", outputs=["energy", "forces"])
    plain.load_state_dict(model.state_dict())
    g = _ethanol_graph()
    expected = model(g)
    e_d3 = oracle(ETHANOL_Z, ETHANOL)[0]
    assert float((expected["energy"] - plain(g)["energy"]).detach()) == pytest.approx(e_d3, abs=1e-9)

    from ase import Atoms

    atoms = Atoms(numbers=ETHANOL_Z, positions=ETHANOL)
    atoms.calc = ClebschCalculator(str(save_package(model, tmp_path / "model.pt")), dtype="float64")
    assert atoms.get_potential_energy() == pytest.approx(float(expected["energy"].detach()), abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), expected["forces"].detach().numpy(), rtol=0, atol=1e-9)

    loaded = load_exported(export(model, tmp_path / "model.pt2"))
    got = loaded(g)
    assert float(got["energy"].detach()) == pytest.approx(float(expected["energy"].detach()), abs=1e-9)
    torch.testing.assert_close(got["forces"], expected["forces"].detach(), rtol=0, atol=1e-9)
    crystal = AtomicGraph.from_tensors(torch.tensor(TRICLINIC), torch.tensor(TRICLINIC_Z), 3.0,
                                       cell=torch.tensor(TRICLINIC_CELL), pbc=torch.tensor([True, True, True]))
    with pytest.raises(ValueError, match="open structures only"):
        loaded(crystal)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("options, message", [
    ({"functional": "pbee"}, r"d3.functional: 'pbee' has no D3\(BJ\) parameters; did you mean pbe.*allowed: .*b3lyp"),
    ({"functional": 3}, r"d3.functional: 3 is not a functional name"),
    ({"functional": "pbe", "cutoff": -1.0}, r"d3.cutoff: -1.0 must be positive \(Å\)"),
    ({"functional": "pbe", "cn_cutoff": 0}, r"d3.cn_cutoff: 0.0 must be positive"),
    ({"functional": "pbe", "cutof": 30.0}, r"d3: unknown key\(s\) \['cutof'\]; allowed: functional, damping, .*"
                                           r"inference_only"),
    ({"functional": "pbe", "damping": "zero"}, r"d3.damping: 'zero' is not allowed; allowed: bj"),
    ({"s8": 0.8, "a1": 0.4}, r"d3: give a functional .* missing: a2"),
    ({"functional": "pbe", "s9": 1.0}, r"d3.s9: 1.0 scales the three-body term, which is off; set atm: true"),
    ({"functional": "pbe", "atm": "yes"}, r"d3.atm: 'yes' is not allowed; allowed: true, false"),
    ({"functional": "pbe", "a1": "big"}, r"d3.a1: 'big' is not a number"),
    ({"functional": "pbe", "a2": -1.0}, r"d3.a2: -1.0 is negative"),
])
def test_bad_d3_config_names_key_and_allowed_values(options, message):
    with pytest.raises(ValueError, match=r"model\.physics\." + message):
        build_model({"name": "schnet", "species": ["H", "O"], "cutoff": 3.0, "physics": {"d3": options}})


def test_d3_config_from_yaml_is_validated_and_carried(tmp_path):
    from clebsch.train.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: painn\n  cutoff: 3.0\n  physics:\n    d3: {functional: pbe, atm: true}\n")
    physics = load_config(path).model.physics
    assert physics == {"d3": {**D3_KEYS, "functional": "pbe", "atm": True}}
    assert physics == check_physics({"d3": {"functional": "pbe", "atm": True}})
    path.write_text("model:\n  name: painn\n  cutoff: 3.0\n  physics: {d3: {functional: pbx}}\n")
    with pytest.raises(ConfigError, match=r"model.physics.d3.functional: 'pbx' has no D3\(BJ\) parameters"):
        load_config(path)


def test_defaults_are_the_reference_codes_cutoffs():
    values = check_d3({"functional": "pbe"})
    assert values["cutoff"] == pytest.approx(60 * Bohr) and values["cn_cutoff"] == pytest.approx(40 * Bohr)
    assert values["atm_cutoff"] == pytest.approx(40 * Bohr) and values["atm"] is False
    assert not values["inference_only"] and values["damping"] == "bj"
    assert math.isclose(Bohr, 0.52917721, rel_tol=1e-8)


def test_missing_package_names_the_key_and_the_install_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tad_dftd3", None)
    with pytest.raises(ImportError, match=r"model.physics.d3 needs the tad-dftd3 package.*pip install 'clebsch\[d3\]'"):
        build_model({"name": "schnet", "species": ["H", "O"], "cutoff": 3.0, "physics": {"d3": {"functional": "pbe"}}})
    with pytest.raises(ImportError, match=r"model.physics.d3 needs the tad-dftd3 package"):
        D3Dispersion([1, 8], s8=0.8, a1=0.4, a2=4.0)
