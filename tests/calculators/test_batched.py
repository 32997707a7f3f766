"""Batched relaxation (``relax_many``, ``clebsch relax --batch``) and per-atom virials."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.io import read, write
from ase.optimize import FIRE

from clebsch.calculators import ClebschCalculator, atomic_virials, relax_many
from clebsch.graph import AtomicGraph

from .conftest import small_model


@pytest.fixture(scope="module")
def potential():
    return small_model("schnet", cutoff=3.0, outputs=["energy", "forces", "stress"])


def _molecules():
    names = ["H2O", "CH4", "CH3OH", "HCOOH"]
    out = []
    for k, name in enumerate(names):
        atoms = molecule(name)
        atoms.rattle(0.1, seed=k)
        out.append(atoms)
    return out


def test_batched_relax_equals_ase_fire_one_by_one(potential):
    batch = _molecules()
    alone = _molecules()
    converged = relax_many(potential, batch, fmax=0.2, steps=15, maxstep=0.03)
    for atoms in alone:
        atoms.calc = ClebschCalculator(potential)
        FIRE(atoms, logfile=None, maxstep=0.03).run(fmax=0.2, steps=15)
    for a, b, ok in zip(batch, alone, converged):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-9)
        assert ok == bool(np.linalg.norm(b.get_forces(), axis=1).max() < 0.2)
    # a converged structure stops: its steps are fewer than the budget and its forces are below fmax
    assert any(converged) and not all(converged)
    for atoms, ok in zip(batch, converged):
        assert (atoms.info["relax_steps"] < 15) == ok
        if ok:
            assert np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.2


def test_relax_many_rejects_bad_input(potential):
    with pytest.raises(ValueError, match="fmax"):
        relax_many(potential, _molecules(), fmax=0)
    with pytest.raises(ValueError, match="unknown FIRE parameter"):
        relax_many(potential, _molecules(), dtmin=0.1)
    bad = _molecules()
    bad[2].numbers[0] = 26
    with pytest.raises(ValueError, match="Fe"):
        relax_many(potential, bad)


def test_atomic_virials_sum_to_virial(potential):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=5)
    graph = AtomicGraph.from_ase(atoms, cutoff=3.0, dtype=torch.float64)
    out = atomic_virials(potential, graph)
    reference = potential(graph, compute_stress=True)
    torch.testing.assert_close(out["virials"].sum(0), reference["virial"][0], atol=1e-10, rtol=0)
    torch.testing.assert_close(out["forces"], reference["forces"], atol=1e-10, rtol=0)
    assert out["virials"].abs().max() > 1e-3  # not trivially zero
    atoms.calc = ClebschCalculator(potential)
    np.testing.assert_allclose(atoms.get_stresses().sum(0), atoms.get_stress(), atol=1e-10)


def test_stresses_need_a_periodic_cell(potential):
    from ase.calculators.calculator import PropertyNotImplementedError

    atoms = molecule("H2O")
    atoms.calc = ClebschCalculator(potential)
    with pytest.raises(PropertyNotImplementedError, match="stresses needs a structure periodic"):
        atoms.get_stresses()


def test_cli_relax_batch(tmp_path, potential, capsys):
    from clebsch.cli import main
    from clebsch.models.package import save_package

    model_path = tmp_path / "model.pt"
    save_package(potential, model_path)
    structures = _molecules()
    write(tmp_path / "many.xyz", structures)
    out = tmp_path / "relaxed.xyz"
    status = main(["relax", str(model_path), str(tmp_path / "many.xyz"), "--batch", "--fmax", "0.5", "--steps", "5",
                   "--output", str(out)])
    frames = read(out, ":")
    assert len(frames) == len(structures)
    expected = _molecules()
    converged = relax_many(potential, expected, fmax=0.5, steps=5)
    for got, want in zip(frames, expected):
        np.testing.assert_allclose(got.positions, want.positions, atol=1e-6)  # extxyz keeps 8 decimals
    assert status == (0 if all(converged) else 1)
    assert f"{sum(converged)} of {len(structures)} structures converged" in capsys.readouterr().out
