"""Every head of a model comes out of its torch.export file with the model's own numbers."""

import torch

from clebsch.calculators import export, load_exported
from clebsch.graph import AtomicGraph

from .conftest import small_model
from .test_contract import graph_of, molecule


def test_export_carries_every_head(tmp_path):
    model = small_model("nequip", outputs=["energy", "forces", "dipole", "polarizability", "shielding", "gap"])
    path = export(model, tmp_path / "m.pt2", dtype="float64")
    exported = load_exported(path)
    assert {"dipole", "polarizability", "shielding", "gap"} <= set(exported.outputs)
    g = graph_of(molecule(3))
    ref, got = model(g), exported(g)
    for name in ("energy", "forces", "charges", "dipole", "polarizability", "shielding", "gap"):
        assert got[name].shape == ref[name].shape, name
        assert torch.allclose(got[name], ref[name].detach(), atol=1e-10, rtol=1e-10), name
