"""Untrained models with their default hyperparameters give forces of a sane size on a small molecule.

A family whose layers multiply the size of the features (SEGNN's tensor-product MLPs without a norm did, by
~600x over four layers: forces of ~1e5 eV/Å on ethanol) starts training from a loss of ~1e12, and the first
Adam steps leave it dead (forces exactly zero). Every family is held to the same bound here.
"""

import pytest
import torch
from ase.build import molecule

from clebsch.data.targets import graph_from_atoms
from clebsch.models import build_model, families


@pytest.mark.parametrize("family", families(kind="geometric"))
def test_untrained_forces_on_ethanol_are_not_huge(family):
    torch.manual_seed(0)
    model = build_model({"name": family, "species": ["H", "C", "O"], "cutoff": 5.0}).double()
    graph = graph_from_atoms(molecule("CH3CH2OH"), 5.0, keys={}, dtype=torch.float64)
    forces = model(graph)["forces"].detach()
    assert torch.isfinite(forces).all()
    assert forces.abs().max() < 100.0, f"{family}: untrained forces up to {forces.abs().max():.3g} eV/Å"
    assert forces.abs().max() > 0.0, f"{family}: untrained forces are exactly zero"


def test_segnn_features_stay_bounded_with_depth():
    """With its per-layer norm, seven SEGNN layers (the paper's deepest) keep the features O(1)."""
    torch.manual_seed(0)
    model = build_model({"name": "segnn", "species": ["H", "C", "O"], "cutoff": 5.0, "num_layers": 7}).double()
    graph = graph_from_atoms(molecule("CH3CH2OH"), 5.0, keys={}, dtype=torch.float64)
    assert model(graph)["forces"].abs().max() < 100.0
    unnormed = build_model({"name": "segnn", "species": ["H", "C", "O"], "cutoff": 5.0, "num_layers": 7,
                            "norm": False}).double()
    assert unnormed(graph)["forces"].abs().max() > 1e3  # the failure the norm prevents
