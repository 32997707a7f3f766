"""Total charge and spin multiplicity as per-structure inputs that condition the features (``conditioning``)."""

import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule

from clebsch.graph import AtomicGraph, batch
from clebsch.models import build_model
from clebsch.models._potential import (
    StructureConditioning,
    check_conditioning,
    check_conditioning_data,
    check_structure_inputs,
)
from clebsch.o3 import Irreps
from clebsch.testing import float64_model

SPECIES = ["H", "C", "O"]
CUTOFF = 3.0


def config(name="schnet", conditioning=("charge", "spin"), **extra):
    small = {"schnet": {"num_layers": 2, "channels": 8},
             "nequip": {"num_layers": 1, "channels": 4, "lmax": 1},
             "gcn": {"num_layers": 2, "channels": 8}}[name]
    out = {"name": name, "species": SPECIES, "cutoff": CUTOFF, "atomic_energies": [-13.6, -1029.0, -2041.0],
           "scale": 0.5, **small, **extra}
    if conditioning is not None:
        out["conditioning"] = list(conditioning)
    return out


def ethanol(charge=0.0, spin=1, seed=1):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    atoms.info["charge"] = charge
    if spin is not None:
        atoms.info["spin"] = spin
    return atoms


def graph(atoms):
    return AtomicGraph.from_ase(atoms, CUTOFF, dtype=torch.float64)


@pytest.fixture(scope="module")
def conditioned():
    return float64_model(config(outputs=["energy", "forces", "dipole"]), seed=0)


def test_charge_and_spin_change_the_energy_only_when_conditioned(conditioned):
    neutral, cation, triplet = graph(ethanol(0, 1)), graph(ethanol(1, 2)), graph(ethanol(0, 3))
    e = [float(conditioned(g)["energy"].detach()) for g in (neutral, cation, triplet)]
    assert abs(e[0] - e[1]) > 1e-3 and abs(e[0] - e[2]) > 1e-3 and abs(e[1] - e[2]) > 1e-3
    # a neutral singlet is the reference: the conditioned model equals the same weights without conditioning
    plain = float64_model(config(conditioning=None, outputs=["energy", "forces", "dipole"]), seed=0)
    state = {k: v for k, v in conditioned.state_dict().items() if not k.startswith("condition.")}
    plain.load_state_dict(state)
    assert torch.allclose(plain(neutral)["energy"], conditioned(neutral)["energy"], rtol=0, atol=1e-12)
    assert torch.allclose(plain(cation)["energy"], plain(neutral)["energy"], rtol=0, atol=1e-12)
    # the dipole head reads the conditioned features, and its charges sum to the total charge
    assert abs(float(conditioned(cation)["charges"].detach().sum()) - 1.0) < 1e-10


def test_without_conditioning_the_model_is_unchanged():
    """Same state-dict keys and the same numbers as a model built without the key at all."""
    torch.manual_seed(0)
    a = build_model(config(conditioning=None)).double()
    torch.manual_seed(0)
    b = build_model(config(conditioning=[])).double()
    assert list(a.state_dict()) == list(b.state_dict())
    assert not any(k.startswith("condition") for k in a.state_dict())
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    g = graph(ethanol(1, None))  # charge and spin are ignored without conditioning
    assert torch.equal(a(g)["energy"], b(g)["energy"])


@pytest.mark.parametrize("name", ["schnet", "nequip", "gcn"])
def test_conditioned_model_is_equivariant_with_exact_forces(name):
    """Random rotations and reflections (float64): energy invariant, forces and dipole rotate; forces = -dE/dr."""
    outputs = ["energy"] if name == "gcn" else ["energy", "forces", "dipole"]
    model = float64_model(config(name, outputs=outputs), seed=1, randomize_zeros=True)
    atoms = ethanol(-1, 2, seed=4)
    out = model(graph(atoms))
    assert abs(float(out["energy"].detach()) - float(model(graph(ethanol(0, 1, seed=4)))["energy"].detach())) > 1e-6
    gen = torch.Generator().manual_seed(5)
    for reflect in (False, True):
        q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
        if (torch.det(q) < 0) != reflect:
            q = -q
        moved = atoms.copy()
        moved.positions = atoms.positions @ q.numpy().T + np.array([0.3, -1.0, 2.0])
        out2 = model(graph(moved))
        assert torch.allclose(out2["energy"], out["energy"], rtol=0, atol=1e-10)
        if name != "gcn":
            assert torch.allclose(out2["forces"], out["forces"] @ q.T, rtol=0, atol=1e-10)
            assert torch.allclose(out2["dipole"], out["dipole"] @ q.T, rtol=0, atol=1e-10)
    if name == "gcn":
        return
    g = graph(atoms)
    forces = model(g)["forces"].detach()
    eps = 1e-5
    for atom, axis in [(0, 0), (3, 1), (8, 2)]:
        energies = []
        for sign in (1, -1):
            shifted = g.clone()
            shifted.positions[atom, axis] += sign * eps
            with torch.no_grad():
                energies.append(float(model(shifted, compute_forces=False)["energy"].detach()))
        assert abs(-(energies[0] - energies[1]) / (2 * eps) - float(forces[atom, axis])) < 1e-6


def test_batch_of_different_charges_equals_separate_evaluation(conditioned):
    graphs = [graph(ethanol(q, s, seed=k)) for k, (q, s) in enumerate([(0, 1), (1, 2), (-1, 2), (0, 3)])]
    together = conditioned(batch(graphs))
    start = 0
    for k, g in enumerate(graphs):
        alone = conditioned(g)
        rows = slice(start, start + g.num_atoms)
        assert torch.allclose(together["energy"][k], alone["energy"][0], rtol=0, atol=1e-10)
        assert torch.allclose(together["forces"][rows], alone["forces"], rtol=0, atol=1e-10)
        assert torch.allclose(together["dipole"][k], alone["dipole"][0], rtol=0, atol=1e-10)
        start += g.num_atoms


def test_isolated_atom_has_its_reference_energy_only_as_a_neutral_singlet(conditioned):
    lone = AtomicGraph.from_tensors(torch.zeros(1, 3, dtype=torch.float64), [8], CUTOFF, total_charge=0.0,
                                    spin_multiplicity=1)
    assert abs(float(conditioned(lone)["energy"].detach()) - (-2041.0)) < 1e-10
    ion = AtomicGraph.from_tensors(torch.zeros(1, 3, dtype=torch.float64), [8], CUTOFF, total_charge=-1.0,
                                   spin_multiplicity=2)
    assert abs(float(conditioned(ion)["energy"].detach()) - (-2041.0)) > 1e-6


def test_film_touches_only_invariant_channels():
    film = StructureConditioning(Irreps("3x0e + 2x1o + 2x0e + 1x0o"), ["charge", "spin"]).double()
    h = torch.randn(4, 3 + 6 + 2 + 1, dtype=torch.float64)
    out = film(h, torch.tensor([0, 0, 1, 1]), torch.tensor([1.0, 0.0], dtype=torch.float64),
               torch.tensor([2.0, 1.0], dtype=torch.float64))
    assert torch.equal(out[:, 3:9], h[:, 3:9]) and torch.equal(out[:, 11:], h[:, 11:])  # 1o and 0o untouched
    assert not torch.allclose(out[:2, :3], h[:2, :3])
    assert torch.equal(out[2:], h[2:])  # charge 0, multiplicity 1: unchanged
    with pytest.raises(ValueError, match="invariant"):
        StructureConditioning("2x1o", ["charge"])


def test_config_errors_name_the_key_and_the_allowed_values():
    with pytest.raises(ValueError, match=r"model.conditioning: 'magmom' is not allowed; allowed values: charge, spin"):
        build_model(config(conditioning=["charge", "magmom"]))
    with pytest.raises(ValueError, match="model.conditioning: expected a list"):
        build_model({**config(conditioning=None), "conditioning": "charge"})
    with pytest.raises(ValueError, match="lists an input twice"):
        check_conditioning(["spin", "spin"])
    from clebsch.train.config import ConfigError, load_config

    with pytest.raises((ConfigError, ValueError), match="conditioning"):
        load_config(base={"model": {"name": "schnet", "conditioning": ["charge", "colour"]},
                          "data": {"train": "x.xyz"}})


def test_missing_or_bad_inputs_raise_naming_the_structure(conditioned):
    with pytest.raises(ValueError, match=r"the structure: no spin multiplicity.*atoms.info\['spin'\]"):
        conditioned(graph(ethanol(0, None)))
    both = batch([graph(ethanol(0, 1)), graph(ethanol(0, None))])
    with pytest.raises(ValueError, match="structure 1 of the batch: no spin multiplicity"):
        conditioned(both)
    for bad in (0, 1.5, -2):
        with pytest.raises(ValueError, match=f"spin multiplicity {bad} is not allowed; it must be a positive integer"):
            conditioned(graph(ethanol(0, bad)))
    with pytest.raises(ValueError, match="total charge nan is not a finite number"):
        check_structure_inputs(["charge"], torch.tensor([float("nan")]), None)
    # charge only: a structure without spin is fine
    charge_only = float64_model(config(conditioning=["charge"]), seed=0)
    assert torch.isfinite(charge_only(graph(ethanol(1, None)))["energy"]).all()
    # a value that is not a number is refused where it is read
    atoms = ethanol(0, 1)
    atoms.info["spin"] = "singlet"
    with pytest.raises(ValueError, match="info 'spin' must be a finite number, got 'singlet' \\(file 'x', frame 3\\)"):
        AtomicGraph.from_ase(atoms, CUTOFF, where="file 'x', frame 3")


def test_data_file_charge_and_spin_and_the_checks_that_name_file_and_frame(tmp_path):
    from clebsch.data import read_dataset

    frames = [ethanol(0, 1, seed=0), ethanol(1, 2, seed=1), ethanol(-1, 2, seed=2), ethanol(0, 3, seed=3)]
    for a in frames:
        a.info["energy"] = -100.0
    path = tmp_path / "ions.xyz"
    ase.io.write(path, frames, format="extxyz")
    assert "charge=1" in path.read_text().splitlines()[len(frames[0]) + 3]  # on the comment line
    graphs = read_dataset(path, CUTOFF, keys={"energy": "energy"}, required=("energy",), dtype=torch.float64)
    assert [float(g.total_charge) for g in graphs] == [0.0, 1.0, -1.0, 0.0]
    assert [float(g.spin_multiplicity) for g in graphs] == [1.0, 2.0, 2.0, 3.0]
    check_conditioning_data(graphs, ["charge", "spin"], where=f"file '{path}'")
    # batching, splitting, to_ase keep them
    back = batch(graphs).split()
    assert [float(g.spin_multiplicity) for g in back] == [1.0, 2.0, 2.0, 3.0]
    assert batch(graphs).to_ase()[1].info["spin"] == 2 and batch(graphs).to_ase()[1].info["total_charge"] == 1.0
    assert float(graphs[2].with_neighbors().spin_multiplicity) == 2.0

    # a frame without spin: an error naming the file and the frame
    frames[2].info.pop("spin")
    ase.io.write(path, frames, format="extxyz")
    graphs = read_dataset(path, CUTOFF, keys={"energy": "energy"}, required=("energy",), dtype=torch.float64)
    assert np.isnan(float(graphs[2].spin_multiplicity))
    with pytest.raises(ValueError, match=rf"file '{path}', frame 2: no spin multiplicity"):
        check_conditioning_data(graphs, ["spin"], where=f"file '{path}'")
    with pytest.raises(ValueError, match=rf"file '{path}', frame 7: no spin"):  # frames of a split
        check_conditioning_data(graphs[2:], ["spin"], where=f"file '{path}'", frames=[7, 8])
    check_conditioning_data(graphs[:2] + graphs[3:], ["charge"], where=f"file '{path}'")  # charge only: fine
    # a multiplicity that does not fit the electron count (26 electrons, neutral: odd multiplicity)
    graphs[2].spin_multiplicity = torch.tensor([2.0], dtype=torch.float64)
    graphs[2].total_charge = torch.tensor([0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"frame 2: spin multiplicity 2 does not fit 26 electrons"):
        check_conditioning_data(graphs, ["spin"], where=f"file '{path}'")
    # the same input everywhere: a warning
    neutral = [graph(ethanol(0, 1, seed=k)) for k in range(3)]
    with pytest.warns(UserWarning, match="every structure has the total charge 0"):
        check_conditioning_data(neutral, ["charge"], where="file 'n.xyz'")


def test_ase_calculator_reads_charge_and_spin_from_info(conditioned):
    from clebsch.calculators import ClebschCalculator

    calc = ClebschCalculator(conditioned)
    atoms = ethanol(0, 1)
    atoms.calc = calc
    e_neutral = atoms.get_potential_energy()
    atoms.info.update(charge=1, spin=2)
    e_cation = atoms.get_potential_energy()  # a change of info alone is a new calculation
    assert abs(e_neutral - e_cation) > 1e-3
    assert abs(e_cation - float(conditioned(graph(ethanol(1, 2)))["energy"].detach())) < 1e-10
    atoms.info.pop("charge")
    atoms.info["total_charge"] = 1
    assert abs(atoms.get_potential_energy() - e_cation) < 1e-10
    atoms.info.pop("spin")
    with pytest.raises(ValueError, match=r"no spin multiplicity.*atoms.info\['spin'\]"):
        atoms.get_potential_energy()


def test_compiled_function_passes_charge_and_spin(conditioned):
    """The function CompiledPotential traces (run eagerly here: no Inductor) gives the model's numbers."""
    from clebsch.calculators._compiled import CompiledPotential

    compiled = CompiledPotential(conditioned)
    g = graph(ethanol(1, 2))
    fn = compiled._energy_and_gradients(stress=False)
    energies, forces, *heads = fn(*compiled._inputs(g, torch.float64))
    ref = conditioned(g)
    assert torch.allclose(energies.sum(), ref["energy"][0], rtol=0, atol=1e-10)
    assert torch.allclose(forces, ref["forces"], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="no spin multiplicity"):
        compiled(graph(ethanol(0, None)))


def test_package_and_export_keep_the_conditioning(conditioned, tmp_path):
    from clebsch.calculators import export, load_exported
    from clebsch.models.package import load, save_package

    path = save_package(conditioned, tmp_path / "model.pt")
    loaded = load(path).double()
    assert loaded.conditioning == ("charge", "spin") and loaded.config["conditioning"] == ["charge", "spin"]
    program = load_exported(export(conditioned, tmp_path / "model.pt2"))
    assert program.inputs[-2:] == ["total_charge", "spin_multiplicity"] and program.conditioning == ("charge", "spin")
    energies = []
    for q, s in [(0, 1), (1, 2)]:
        g = graph(ethanol(q, s))
        eager, exported = conditioned(g), program(g)
        assert torch.allclose(exported["energy"], eager["energy"], rtol=0, atol=1e-10)
        assert torch.allclose(exported["forces"], eager["forces"], rtol=0, atol=1e-10)
        assert torch.allclose(exported["dipole"], eager["dipole"], rtol=0, atol=1e-10)
        assert torch.allclose(loaded(g)["energy"], eager["energy"], rtol=0, atol=1e-12)
        energies.append(float(exported["energy"].detach()))
    assert abs(energies[0] - energies[1]) > 1e-3
    with pytest.raises(ValueError, match="no spin multiplicity"):
        program(graph(ethanol(0, None)))


def test_training_with_charge_and_spin_conditioning(tmp_path):
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from clebsch.models.package import load
    from clebsch.train.trainer import train

    frames = []
    for i, (q, s) in enumerate([(0, 1), (1, 2), (-1, 2), (0, 3)] * 3):
        atoms = ethanol(q, s, seed=i)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy() + 2.0 * q + 0.5 * (s - 1), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    data = tmp_path / "ions.xyz"
    ase.io.write(data, frames, format="extxyz")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train({
            "run_dir": str(tmp_path / "run"), "seed": 0, "dtype": "float64", "device": "cpu",
            "model": {"name": "schnet", "cutoff": CUTOFF, "num_layers": 1, "channels": 8,
                      "conditioning": ["charge", "spin"]},
            "data": {"train": str(data), "valid_fraction": 0.25, "test_fraction": 0.0, "batch_size": 4},
            "optimizer": {"lr": 0.005},
            "training": {"max_epochs": 2, "progress": False, "plots": False},
        }, log=lambda *_: None)
    finally:
        torch.set_num_threads(n)
    model = load(result["model_path"]).double()
    assert model.conditioning == ("charge", "spin")
    e = [float(model(graph(ethanol(q, s)))["energy"].detach()) for q, s in [(0, 1), (1, 2)]]
    assert np.isfinite(e).all() and abs(e[0] - e[1]) > 1e-6
