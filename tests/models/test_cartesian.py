"""The Cartesian baseline: invariant under translations and permutations, *not* under rotations, conservative,
and trainable; the contract skips its rotation checks only."""

import numpy as np
import pytest
import torch

from clebsch.graph import AtomicGraph
from clebsch.models import Potential, families
from clebsch.models._registry import is_equivariant
from clebsch.models.cartesian import CartesianGNN
from clebsch.testing import check_potential, finite_difference_forces

from . import family_workflow
from .conftest import SMALL, small_model

NAME = "cartesian"
NUMBERS = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])


def molecule(seed=0):
    gen = np.random.default_rng(seed)
    pos = []
    while len(pos) < 9:
        p = gen.uniform(-1.6, 1.6, size=3)
        if all(np.linalg.norm(p - q) > 0.9 for q in pos):
            pos.append(p)
    return torch.tensor(np.array(pos), dtype=torch.float64)


def graph_of(pos, numbers=NUMBERS):
    return AtomicGraph.from_tensors(pos, numbers, 3.0)


def rel(a, b):
    return float(((a - b).abs().max() / b.abs().max()).detach())


def test_registered_as_not_equivariant():
    assert NAME in families(kind="geometric")
    assert not is_equivariant(NAME) and is_equivariant("nequip") and is_equivariant("gcn")
    assert families(equivariant=False) == [NAME]
    assert NAME not in families(equivariant=True)
    with pytest.raises(ValueError, match="equivariant must be None, True or False"):
        families(equivariant="yes")


def test_not_rotation_invariant_but_translation_and_permutation_invariant():
    model = small_model(NAME)
    pos = molecule(1)
    out = model(graph_of(pos))
    torch.manual_seed(4)
    from clebsch.o3 import rand_matrix

    R = rand_matrix(dtype=torch.float64)
    for M in (R, -R):  # a rotation and a reflection change the energy and the forces' directions measurably
        turned = model(graph_of(pos @ M.T))
        assert rel(turned["energy"], out["energy"]) > 1e-4
        assert rel(turned["forces"], out["forces"] @ M.T) > 1e-3
    shift = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    moved = model(graph_of((pos + shift)[perm], NUMBERS[perm]))
    assert rel(moved["energy"], out["energy"]) < 1e-12
    assert rel(moved["forces"], out["forces"][perm]) < 1e-10
    assert rel(moved["dipole"], out["dipole"]) < 1e-10


def test_forces_are_minus_the_energy_gradient():
    model = small_model(NAME, outputs=["energy", "forces"])
    pos = molecule(2)
    forces = model(graph_of(pos))["forces"].detach()

    def energy(p):
        return model(graph_of(p), compute_forces=False)["energy"].detach()

    torch.testing.assert_close(forces, finite_difference_forces(energy, pos), atol=1e-7, rtol=1e-6)


def test_contract_without_the_rotation_checks():
    """Every check of the contract runs; the equivariance check is the translation and the permutation."""
    model = small_model(NAME, outputs=["energy", "forces", "stress", "dipole", "polarizability"])
    errors = check_potential(model)
    assert errors["equivariance"] < 1e-9 and errors["forces"] < 1e-6 and errors["stress"] < 1e-6


class _IndexAware(CartesianGNN):
    """Not permutation invariant: each atom's features depend on its index."""

    def forward(self, species, edge_index, edge_vectors):
        h = super().forward(species, edge_index, edge_vectors)
        return h * (1.0 + 0.1 * torch.arange(h.shape[0], dtype=h.dtype)[:, None])


def test_the_contract_still_catches_a_broken_permutation():
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        rep = _IndexAware(3, 3.0, num_layers=1, channels=8)
        model = Potential(rep, species=[1, 6, 8], cutoff=3.0, config={"name": "index_aware"}).double().eval()
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.3)
    with pytest.raises(AssertionError, match=r"'index_aware' breaks the contract: equivariance"):
        check_potential(model, checks=("equivariance",))


def test_isolated_atom_has_its_reference_energy_and_the_cutoff_is_smooth():
    model = small_model(NAME)
    errors = check_potential(model, checks=("isolated", "cutoff"))
    assert errors["isolated"] < 1e-12 and errors["cutoff"] < 1e-8


def test_trains_on_ethanol_frames():
    # 135 force components of 16 frames in 60 steps: the width the invariant-message families get too
    family_workflow.check_trains_on_ethanol_frames(NAME, {**SMALL[NAME], "channels": 16})
