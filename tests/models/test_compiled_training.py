"""The captured training graph: the same energies, forces, stress and weight gradients as eager training."""

import math
import warnings

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from clebsch.graph import AtomicGraph, batch
from clebsch.models import families
from clebsch.train.compiled import CompiledForces, compile_unsupported

from .conftest import small_model

FAMILIES = tuple(families(kind="geometric"))


def _batch(periodic: bool):
    frames = []
    for k, name in enumerate(("CH3CH2OH", "H2O", "CH4")):
        atoms = molecule(name)
        atoms.rattle(0.05, seed=k)
        frames.append(atoms)
    if periodic:  # a crystal of the same elements, strained, with atoms off their sites
        crystal = bulk("C", "diamond", a=3.6, cubic=True)
        crystal.set_cell(crystal.cell @ (np.eye(3) + 0.02 * np.random.default_rng(1).normal(size=(3, 3))),
                         scale_atoms=True)
        crystal.rattle(0.05, seed=5)
        frames.append(crystal)
    return batch([AtomicGraph.from_ase(a, cutoff=3.0, dtype=torch.float64) for a in frames])


def _probe_loss(out, keys):
    # every output enters with its own random weights, so that no gradient path can hide
    gen = torch.Generator().manual_seed(7)
    return sum((out[k] * torch.randn(out[k].shape, generator=gen, dtype=out[k].dtype)).sum()
               + (out[k] ** 2).sum() for k in keys)


# every family on molecules; the strain (stress, virial) enters before the representation, the same for all
CASES = [(name, False) for name in FAMILIES] + [("nequip", True), ("allegro", True)]


@pytest.mark.parametrize(("name", "periodic"), CASES,
                         ids=[f"{n}-{'with-crystal' if p else 'molecules'}" for n, p in CASES])
def test_captured_graph_gives_eager_values_and_weight_gradients(name, periodic, backend=None):
    """Every geometric family: forces, virials and the weights' gradients of a loss on them equal eager's.

    The captured graph (forces as plain forward operations, detach nodes removed) differentiated
    once replaces eager's double backward; float64, 1e-9 relative. Run uncompiled here (what
    AOTAutograd differentiates); the compiled backends below.
    """
    model = small_model(name, outputs=["energy", "forces", "stress"]).train()
    graph = _batch(periodic)
    compiled = CompiledForces(model, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to eager
        out = compiled(graph, compute_stress=periodic)
    assert out is not None, compiled.failed
    ref = model(graph, compute_forces=True, compute_stress=periodic, training=True)
    keys = ["energy", "forces"] + (["virial", "stress"] if periodic else [])
    for key in keys + ["atomic_energies"]:
        scale = float(ref[key].detach().abs().max())
        assert torch.allclose(out[key], ref[key], rtol=1e-9, atol=1e-9 * scale), key
    params = [p for p in model.parameters() if p.requires_grad]
    ga = torch.autograd.grad(_probe_loss(out, keys), params, allow_unused=True)
    gb = torch.autograd.grad(_probe_loss(ref, keys), params, allow_unused=True)
    worst = 0.0
    # a weight whose gradient cancels to rounding (1e-14 where others are 1) is compared on the scale of the
    # gradients: a thousandth of the largest
    floor = 1e-3 * max(float(b.abs().max()) for b in gb if b is not None and b.numel())
    for p, a, b in zip(params, ga, gb):
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        if b.numel():
            scale = max(float(b.abs().max()), floor)
            worst = max(worst, float((a - b).abs().max()) / scale)
            assert torch.allclose(a, b, rtol=1e-8, atol=1e-9 * scale)
    assert any(g is not None and float(g.abs().max()) > 0 for g in ga)  # the gradients are not trivially zero
    assert worst < 1e-7


def test_aot_autograd_backward_gives_eager_weight_gradients():
    """Through torch.compile (Dynamo and AOTAutograd's derived backward, PyTorch kernels), with stress."""
    test_captured_graph_gives_eager_values_and_weight_gradients("schnet", True, backend="aot_eager")


def test_a_batch_of_one_structure_uses_the_same_compiled_graph():
    """The last batch of an epoch can hold one structure: no second compilation, the same numbers as eager."""
    from clebsch.calculators._compiled import _graphs_compiled

    model = small_model("schnet", outputs=["energy", "forces"]).train()
    compiled = CompiledForces(model, backend="aot_eager")
    assert compiled(_batch(False)) is not None
    count = _graphs_compiled()
    one = batch([AtomicGraph.from_ase(molecule("CH3CH2OH"), cutoff=3.0, dtype=torch.float64)])
    out = compiled(one)
    assert _graphs_compiled() == count
    ref = model(one, compute_forces=True, training=True)
    assert out["energy"].shape == (1,)
    assert torch.allclose(out["energy"], ref["energy"], rtol=1e-12)
    assert torch.allclose(out["forces"], ref["forces"], rtol=1e-9, atol=1e-12)


def test_without_removing_detach_the_weight_gradients_would_be_wrong():
    """The reason the captured graph loses its detach nodes: kept, the second-order paths vanish."""
    from clebsch.calculators._compiled import capture
    from clebsch.train.compiled import _without_detach

    model = small_model("nequip", outputs=["energy", "forces"]).train()
    graph = _batch(False)
    compiled = CompiledForces(model)
    traced = capture(compiled._function(False), compiled._example(torch.float64, "cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    ref = model(graph, compute_forces=True, training=True)
    gb = torch.autograd.grad(_probe_loss(ref, ["forces"]), params, allow_unused=True)

    def worst(gm):
        energy, atomic, forces = gm(*compiled._inputs(graph))
        ga = torch.autograd.grad(_probe_loss({"forces": forces}, ["forces"]), params, allow_unused=True)
        return max(float((a - b).abs().max()) for a, b in zip(ga, gb) if a is not None and b is not None and b.numel())

    with_detach = worst(traced)
    assert with_detach > 1e-6  # the saved-tensor paths are cut
    assert worst(_without_detach(traced)) < 1e-10


def test_unsupported_models_and_losses_are_named():
    assert "dipole" in compile_unsupported(small_model("nequip", outputs=["energy", "forces", "dipole"]),
                                           {"energy": 1.0, "forces": 1.0, "dipole": 1.0})
    assert compile_unsupported(small_model("nequip", outputs=["energy", "forces", "dipole"]),
                               {"energy": 1.0, "forces": 1.0}) is None
    assert "replay" in compile_unsupported(small_model("schnet"), {"energy": 1.0}, replay=True)
    assert "Potential" in compile_unsupported(torch.nn.Linear(2, 2), {"energy": 1.0})


def test_a_graph_that_does_not_compile_falls_back_to_eager_with_one_warning():
    model = small_model("schnet", outputs=["energy", "forces"]).train()
    compiled = CompiledForces(model, backend="no-such-backend")
    with pytest.warns(RuntimeWarning, match="could not be compiled for training"):
        assert compiled(_batch(False)) is None
    assert compiled.failed and compiled(_batch(False)) is None  # off for good, no second warning


def test_an_unknown_element_raises_as_in_eager_and_keeps_the_compiled_path():
    model = small_model("schnet", outputs=["energy", "forces"]).train()
    compiled = CompiledForces(model, backend=None)
    ammonia = batch([AtomicGraph.from_ase(molecule("NH3"), cutoff=3.0, dtype=torch.float64)])
    with pytest.raises(ValueError, match="N"):
        compiled(ammonia)
    assert compiled.failed is None
