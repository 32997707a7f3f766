"""``ClebschCalculator(compile=True)``: the captured and compiled energy, forces and stress.

One tiny NequIP (4 channels, l <= 1, one layer) is compiled per dtype and
shared by the tests; a cold compile (empty Inductor cache) of one graph takes
tens of seconds, a warm one a few.
"""

import warnings

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from clebsch.calculators import ClebschCalculator
from clebsch.calculators._compiled import CompiledPotential

from .conftest import small_model


def tiny_model():
    return small_model("nequip", cutoff=3.0, channels=4, lmax=1, num_layers=1)


def copper_cell(repeat=(2, 2, 1), seed=2, a=3.6):
    atoms = bulk("Cu", "fcc", a=a, cubic=True) * repeat
    atoms.rattle(0.05, seed=seed)
    return atoms


def graphs_compiled():
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


@pytest.fixture(scope="module")
def compiled64():
    """A float64 compiled calculator that has run once, on a periodic cell."""
    calc = ClebschCalculator(tiny_model(), dtype="float64", compile=True)
    atoms = copper_cell()
    atoms.calc = calc
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # compiling must not fall back here
        atoms.get_forces()
    assert calc.compiled.failed is None
    return calc


def results(atoms, calc):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(), atoms.get_dipole_moment()


def assert_agree(got, want, rtol, atol):
    for name, a, b in zip(("energy", "forces", "stress", "dipole"), got, want):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)


def test_compiled_float64_equals_eager_for_periodic_cell(compiled64):
    atoms = copper_cell()
    assert_agree(results(atoms, compiled64), results(atoms, ClebschCalculator(tiny_model(), dtype="float64")),
                 rtol=1e-10, atol=1e-10)


def test_one_graph_serves_any_edge_and_atom_count(compiled64):
    """Other edge counts (the Verlet list keeps the edges within the cutoff, so the count changes at
    every step) and other atom counts reuse the compiled graph.

    (Inductor specialises its code for structures of at most about a dozen atoms, which then get a
    graph of their own: the cells here have more.)
    """
    eager = ClebschCalculator(tiny_model(), dtype="float64")
    before = graphs_compiled()
    sizes = set()
    for atoms in (copper_cell(a=3.05, seed=3), copper_cell(a=2.95, seed=4), copper_cell((3, 2, 1), seed=5)):
        got, want = results(atoms, compiled64), results(atoms, eager)
        assert_agree(got, want, rtol=1e-10, atol=1e-10)
        sizes.add((len(atoms), compiled64.graph(atoms).num_edges))
    assert len(sizes) == 3
    assert graphs_compiled() == before, f"a new edge or atom count recompiled the graph: {sizes}"
    assert compiled64.compiled.failed is None


def test_compiled_float32_agrees_with_eager():
    """float32 to 1e-5 of the largest value (a model without dipole head: a smaller graph, a shorter compile)."""
    atoms = copper_cell(seed=6)
    model = small_model("nequip", cutoff=3.0, channels=4, lmax=1, num_layers=1, outputs=["energy", "forces", "stress"])
    calc = ClebschCalculator(model, dtype="float32", compile=True)
    atoms.calc = calc
    got = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    assert calc.compiled.failed is None
    eager = atoms.copy()
    eager.calc = ClebschCalculator(model, dtype="float32")
    want = eager.get_potential_energy(), eager.get_forces(), eager.get_stress()
    for name, a, b in zip(("energy", "forces", "stress"), got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=name)


def test_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    def no_compiler(self, *args):
        raise RuntimeError("no C++ compiler 'c++' on PATH\nmore detail")

    monkeypatch.setattr(CompiledPotential, "_build", no_compiler)
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    calc = ClebschCalculator(tiny_model(), compile=True)
    atoms.calc = calc
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler") as record:
        first = atoms.get_forces().copy()
        atoms.positions[0, 0] += 0.01
        atoms.get_forces()
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert "eagerly" in str(record[0].message)
    eager = atoms.copy()
    eager.positions[0, 0] -= 0.01
    eager.calc = ClebschCalculator(tiny_model())
    np.testing.assert_array_equal(first, eager.get_forces())


def test_model_that_is_not_a_potential_falls_back():
    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_model()
            self.cutoff = self.inner.cutoff

        def forward(self, graph, **kwargs):
            return self.inner(graph, **kwargs)

    with pytest.warns(RuntimeWarning, match="only a clebsch Potential"):
        calc = ClebschCalculator(Wrapped(), compile=True)
    atoms = copper_cell()
    atoms.calc = calc
    assert atoms.get_forces().shape == (len(atoms), 3)


def test_unknown_element_raises_as_in_eager(compiled64):
    atoms = copper_cell()
    atoms.numbers[0] = 26  # Fe: not in the model
    atoms.calc = compiled64
    with pytest.raises(ValueError, match="not trained on"):
        atoms.get_forces()
