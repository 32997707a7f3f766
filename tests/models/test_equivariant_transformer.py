"""The Equivariant Transformer: it trains, packages, runs in the ASE calculator, exports,
and its attention weights vanish for a neighbour at the cutoff."""

from pathlib import Path

import torch

from clebsch.models.equivariant_transformer import EquivariantTransformer

from . import family_workflow

NAME = "equivariant_transformer"
SMALL = {"num_layers": 2, "channels": 16, "num_heads": 2, "num_basis": 8}
CUTOFF = 4.0
ETHANOL = Path(__file__).resolve().parents[2] / "examples" / "ethanol_xtb.xyz"


def small(seed=0, **extra):
    return family_workflow.small(NAME, SMALL, seed, **extra)


def test_trains_on_ethanol_frames():
    family_workflow.check_trains_on_ethanol_frames(NAME, SMALL)


def test_package_calculator_and_export(tmp_path):
    family_workflow.check_package_calculator_and_export(NAME, SMALL, tmp_path)


def test_attention_vanishes_at_the_cutoff():
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        net = EquivariantTransformer(2, CUTOFF, **SMALL)
    finally:
        torch.set_default_dtype(torch.float32)
    with torch.no_grad():  # biases away from zero, so nothing vanishes by accident
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    species = torch.tensor([0, 1, 1])
    # edges 0<-1, 1<-0 at 1.1 Å; 0<-2, 2<-0 at r; 1<-2, 2<-1 further than the cutoff
    edge_index = torch.tensor([[1, 0, 2, 0], [0, 1, 0, 2]])

    def weights(r):
        vectors = torch.tensor([[1.1, 0, 0], [-1.1, 0, 0], [-r, 0, 0], [r, 0, 0]], dtype=torch.float64)
        return torch.stack([w.abs() for w in net.attention_weights(species, edge_index, vectors)]).detach()

    inside = weights(0.6 * CUTOFF)
    assert inside[:, 2:].min() > 1e-3
    previous = None
    for gap in (1e-1, 1e-2, 1e-3, 1e-4):
        w = weights(CUTOFF - gap)
        far = float(w[:, 2:].max())
        assert far < 10 * gap ** 2, (gap, far)  # the cosine envelope: quadratic in the gap
        assert w[:, :2].min() > 1e-3  # the near neighbour still counts
        if previous is not None:
            assert far < previous
        previous = far
