"""Energy-only models skip their last layer's non-scalar work (ET, ViSNet, Allegro, NequIP, MACE): same energies and forces."""

import pytest
import torch

from clebsch.graph import AtomicGraph
from clebsch.models import build_model

FAMILIES = ["equivariant_transformer", "visnet", "allegro", "nequip", "mace"]


def molecule():
    g = torch.Generator().manual_seed(0)
    positions = torch.randn(7, 3, generator=g, dtype=torch.float64) * 1.3
    numbers = torch.tensor([8, 6, 1, 1, 6, 1, 1])
    return AtomicGraph.from_tensors(positions, numbers, 4.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_scalars_only_changes_no_energy_or_force(family):
    torch.manual_seed(0)
    model = build_model({"name": family, "species": ["H", "C", "O"], "cutoff": 4.0}).double()
    assert model.representation.scalars_only  # energy and forces only: the 0e features are all that is read
    graph = molecule()
    fast = model(graph)
    model.representation.scalars_only = False
    full = model(graph)
    assert fast["forces"].abs().max() > 1e-4
    torch.testing.assert_close(fast["energy"], full["energy"], rtol=0, atol=1e-12)
    torch.testing.assert_close(fast["forces"], full["forces"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_head_that_reads_vectors_keeps_them(family):
    model = build_model({"name": family, "species": ["H", "C", "O"], "cutoff": 4.0,
                         "outputs": ["energy", "forces", "dipole"]}).double()
    assert not model.representation.scalars_only
    species = model.species_index(molecule().numbers)
    features = model.representation(species, molecule().edge_index, molecule().edge_vectors())
    assert features[:, model.representation.irreps_out.count("0e"):].abs().max() > 0


@pytest.mark.parametrize("path", ["forward_all_species", "forward_grouped", "forward_fused"])
def test_symmetric_contraction_first_output_alone(path):
    from clebsch.models._symmetric_contraction import SymmetricContraction

    torch.manual_seed(0)
    sc = SymmetricContraction("0e + 1o + 2e", "0e + 1o + 2e", channels=4, correlation=3, num_species=5).double()
    a = torch.randn(40, 4, 9, dtype=torch.float64)
    species = torch.randint(0, 5, (40,))
    full = getattr(sc, path)(a, species)
    first = getattr(sc, path)(a, species, first_only=True)
    assert first.shape == (40, 4, 1)
    torch.testing.assert_close(first, full[:, :, :1], rtol=0, atol=1e-12)
