"""MACE's symmetric contraction by the C kernels: the same numbers and derivatives as the PyTorch paths."""

import pytest
import torch

from clebsch.graph import AtomicGraph
from clebsch.models import build_model
from clebsch.models import _fused_contraction as fc
from clebsch.models._symmetric_contraction import SymmetricContraction

pytestmark = pytest.mark.skipif(not fc.contraction_available(torch.zeros(1)), reason="no C compiler for the kernels")


def contraction(irreps_in, irreps_out, channels, correlation, species):
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the coupling buffers are built in the default dtype
    try:
        return SymmetricContraction(irreps_in, irreps_out, channels=channels, correlation=correlation,
                                    num_species=species)
    finally:
        torch.set_default_dtype(default)


CASES = [  # irreps in, irreps out, channels (not all multiples of 8), correlation, elements, atoms' elements
    ("0e+1o+2e", "0e+1o+2e", 16, 3, 3, [0, 1, 2, 1, 0, 0]),
    ("0e+1o", "0e+1o+1e", 5, 2, 20, [17, 3, 3, 17, 9]),  # 3 of 20 elements present
    ("0e+1o+2e+3o", "0e+1o", 9, 3, 4, [2, 2, 2]),  # l = 3: 968 monomials
    ("0e+1o", "0e", 3, 4, 2, [0, 1, 1, 0]),
    ("0e+1o", "0e+1o", 4, 1, 2, [0, 1]),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-nu{c[3]}-K{c[2]}" for c in CASES])
@pytest.mark.parametrize("first_only", [False, True])
def test_fused_equals_all_species_with_two_derivatives(case, first_only):
    irreps_in, irreps_out, k, nu, z, species = case
    torch.manual_seed(nu)
    sc = contraction(irreps_in, irreps_out, k, nu, z)
    species = torch.tensor(species)
    a0 = torch.randn(len(species), k, sc.irreps_in.dim, dtype=torch.float64)
    probe, tangent = torch.randn(1), torch.randn_like(a0)
    results = []
    for f in (sc.forward_fused, sc.forward_all_species):
        a = a0.clone().requires_grad_(True)
        out = f(a, species, first_only)
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        (g,) = torch.autograd.grad((out * probe).sum() ** 2, a, create_graph=True)
        second = torch.autograd.grad((g * tangent).sum(), [a, *sc.weights], allow_unused=True, materialize_grads=True)
        results.append([out.detach(), g.detach(), *second])
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-11)


def test_gradcheck_to_third_order():
    """First and second derivatives by the kernels, the third by the PyTorch recomputation: all against finite
    differences, with respect to the input and the weights."""
    torch.manual_seed(0)
    sc = contraction("0e+1o", "0e+1o", 3, 3, 3)
    species = torch.tensor([0, 2, 2, 0])
    a = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)

    def out(a, *weights):
        return sc.forward_fused(a, species)

    def forces(a, *weights):
        (g,) = torch.autograd.grad((sc.forward_fused(a, species) ** 2).sum(), a, create_graph=True)
        return g

    assert torch.autograd.gradcheck(out, (a, *sc.weights))
    assert torch.autograd.gradgradcheck(out, (a, *sc.weights))
    assert torch.autograd.gradgradcheck(forces, (a, *sc.weights))


def test_forces_alone_skip_the_coefficients_gradient(monkeypatch):
    """Taking the forces (the gradient with respect to the input) computes no gradient of the coefficients;
    the loss's backward does, once per contraction."""
    calls = []
    real = fc._call_coefficients
    monkeypatch.setattr(fc, "_call_coefficients", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    sc = contraction("0e+1o+2e", "0e+1o+2e", 8, 3, 2)
    a = torch.randn(5, 8, 9, dtype=torch.float64, requires_grad=True)
    species = torch.tensor([0, 1, 1, 0, 1])
    out = sc.forward_fused(a, species)
    (g,) = torch.autograd.grad((out**2).sum(), a, create_graph=True)
    assert calls == []
    (g**2).sum().backward()
    assert len(calls) == 2  # the coefficients' gradient of P (through the output) and of G (through the forces)
    assert all(w.grad is not None and w.grad.abs().max() > 0 for w in sc.weights)


def test_empty_and_single_element_inputs():
    sc = contraction("0e+1o", "0e+1o", 5, 3, 4)
    out = sc.forward_fused(torch.zeros(0, 5, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, 5, 4)
    a = torch.randn(7, 5, 4, dtype=torch.float64)
    species = torch.full((7,), 3)
    torch.testing.assert_close(sc.forward_fused(a, species), sc.forward_all_species(a, species), rtol=0, atol=1e-12)
    mixed = torch.tensor([0, 3, 3, 1, 2, 0, 1], dtype=torch.int32)  # every element present, 32-bit indices
    torch.testing.assert_close(sc.forward_fused(a, mixed), sc.forward_all_species(a, mixed.long()), rtol=0, atol=1e-12)


def test_mace_same_energy_forces_and_training_gradient_with_and_without_kernels(monkeypatch):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    graph = AtomicGraph.from_tensors(torch.randn(9, 3, generator=g, dtype=torch.float64) * 1.4,
                                     torch.tensor([8, 6, 1, 1, 6, 1, 1, 1, 1]), 4.0)
    model = build_model({"name": "mace", "species": ["H", "C", "O"], "cutoff": 4.0}).double()
    results = []
    for fused in (True, False):
        monkeypatch.setattr(SymmetricContraction, "fused", fused)
        model.zero_grad()
        out = model(graph)
        ((out["energy"] ** 2).sum() + (out["forces"] ** 2).sum()).backward()
        results.append([out["energy"].detach(), out["forces"].detach()]
                        + [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(results[0]) == len(results[1]) > 2
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_without_kernels_the_pytorch_paths_run(monkeypatch):
    monkeypatch.setenv("CLEBSCH_NATIVE", "0")
    sc = contraction("0e+1o", "0e+1o", 4, 3, 2)
    assert not fc.contraction_available(torch.zeros(1, dtype=torch.float64))
    monkeypatch.setattr(SymmetricContraction, "forward_fused", lambda *a, **k: pytest.fail("kernels called"))
    a = torch.randn(3, 4, 4, dtype=torch.float64)
    assert sc(a, torch.tensor([0, 1, 0])).shape == (3, 4, 4)


def test_coefficients_must_be_padded():
    spec = fc.ContractionSpec(2, [0], [1])
    with pytest.raises(ValueError, match="multiple of 8"):
        fc.fused_contraction(spec, torch.zeros(1, 3, 2), torch.zeros(1, 1, 3, 3), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="two earlier ones"):
        fc.ContractionSpec(2, [2], [0])


def test_two_threads_and_chunks_of_atoms_give_the_same_numbers(monkeypatch):
    """Blocks of atoms split across threads, and the coefficients' gradient summed over chunks of atoms."""
    monkeypatch.setattr(fc, "_CHUNK_BYTES", 7 * 219 * 16 * 8)  # 7 atoms a chunk
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(3)
        sc = contraction("0e+1o+2e", "0e+1o+2e", 12, 3, 6)
        species = torch.randint(0, 6, (40,))
        species[species == 2] = 5  # one element absent
        a0 = torch.randn(40, 12, 9, dtype=torch.float64)
        results = []
        for f in (sc.forward_fused, sc.forward_all_species):
            a = a0.clone().requires_grad_(True)
            out = f(a, species)
            (g,) = torch.autograd.grad((out**2).sum(), a, create_graph=True)
            results.append([out.detach(), g.detach(), *torch.autograd.grad((g**2).sum(), [a, *sc.weights])])
    finally:
        torch.set_num_threads(threads)
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-11)


def test_a_species_index_out_of_range_is_refused_not_read():
    sc = contraction("0e+1o", "0e+1o", 4, 3, 3)
    a = torch.randn(4, 4, 4, dtype=torch.float64)
    with pytest.raises(IndexError, match="species index 5 out of range: the contraction knows 3"):
        sc.forward_fused(a, torch.tensor([0, 1, 2, 5]))
    one = contraction("0e+1o", "0e+1o", 4, 3, 1)
    with pytest.raises(IndexError, match="species index 1 out of range"):
        one.forward_fused(a, torch.tensor([0, 0, 1, 0]))
    with pytest.raises(RuntimeError):
        sc.forward_fused(a, torch.tensor([0, -1, 2, 0]))
