"""NequIP with ``recompute_products`` (less memory in force training) trains on the same numbers."""

import torch

from clebsch.graph import AtomicGraph
from clebsch.models import build_model


def test_recompute_products_gives_the_same_training_step():
    g = torch.Generator().manual_seed(1)
    positions = torch.randn(8, 3, generator=g, dtype=torch.float64) * 1.4
    graph = AtomicGraph.from_tensors(positions, torch.tensor([8, 6, 1, 1, 6, 1, 1, 1]), 4.0)
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = build_model({"name": "nequip", "species": ["H", "C", "O"], "cutoff": 4.0, "num_layers": 2,
                             "channels": 8, "recompute_products": recompute}).double()
        out = model(graph)
        loss = out["energy"].pow(2).sum() + out["forces"].pow(2).sum()
        loss.backward()
        results.append((out["energy"].detach(), out["forces"].detach(),
                        [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (e0, f0, g0), (e1, f1, g1) = results
    torch.testing.assert_close(e1, e0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f1, f0, rtol=1e-10, atol=1e-12)
    assert f0.abs().max() > 1e-3 and len(g0) == len(g1) > 5
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)
