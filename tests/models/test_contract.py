"""The model contract, checked for every family.

Energy invariant; forces, dipole, polarizability and stress equivariant under
random rotations, reflections, translations and permutations; forces and stress
equal finite differences of the energy; continuity at the cutoff; extensivity
over periodic supercells; isolated atoms at their reference energy; rebuilding
from ``model.config``.
"""

import numpy as np
import pytest
import torch

from clebsch.graph import AtomicGraph, batch
from clebsch.models import build_model
from clebsch.o3 import rand_matrix

from .conftest import FAMILIES, small_model

NUMBERS = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])


def molecule(seed=0):
    """A compact random 9-atom C2OH6 cluster, atoms at least 0.9 Å apart."""
    gen = np.random.default_rng(seed)
    pos = []
    while len(pos) < 9:
        p = gen.uniform(-1.6, 1.6, size=3)
        if all(np.linalg.norm(p - q) > 0.9 for q in pos):
            pos.append(p)
    return torch.tensor(np.array(pos), dtype=torch.float64)


def crystal(seed=0, n=4, a=2.6):
    """A small random periodic structure whose cell is smaller than twice the cutoff."""
    gen = np.random.default_rng(seed)
    cell = np.diag([a, a + 0.2, a + 0.4]) + gen.normal(0, 0.15, (3, 3))
    frac = []
    while len(frac) < n:
        f = gen.uniform(0, 1, 3)
        cart = f @ cell
        ok = True
        for g in frac:
            d = f - g
            d -= np.round(d)
            if np.linalg.norm(d @ cell) < 1.0:
                ok = False
        if ok:
            frac.append(f)
    pos = np.array(frac) @ cell
    numbers = torch.tensor([6, 8, 1, 1][:n])
    return torch.tensor(pos), numbers, torch.tensor(cell)


def graph_of(positions, numbers=NUMBERS, cutoff=3.0, cell=None):
    if cell is None:
        return AtomicGraph.from_tensors(positions, numbers, cutoff)
    return AtomicGraph.from_tensors(positions, numbers, cutoff, cell=cell, pbc=torch.tensor([True, True, True]))


def random_orthogonal(seed, reflect):
    torch.manual_seed(seed)
    R = rand_matrix(dtype=torch.float64)
    return -R if reflect else R


def test_all_families_are_registered():
    from clebsch.models import REPRESENTATIONS

    assert set(FAMILIES) <= set(REPRESENTATIONS)


def rel_err(a, b):
    return float(((a - b).abs().max() / (b.abs().max() + 1e-12)).detach())


@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
def test_molecule_equivariance(family, reflect):
    model = small_model(family)
    pos = molecule(1)
    out = model(graph_of(pos))
    R = random_orthogonal(2, reflect)
    t = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    pos2 = (pos @ R.T + t)[perm]
    out2 = model(graph_of(pos2, NUMBERS[perm]))
    assert rel_err(out2["energy"], out["energy"]) < 1e-9
    assert rel_err(out2["forces"], (out["forces"] @ R.T)[perm]) < 1e-9
    assert rel_err(out2["dipole"], out["dipole"] @ R.T) < 1e-9
    assert rel_err(out2["polarizability"], R @ out["polarizability"] @ R.T) < 1e-9
    assert out["forces"].abs().max() > 1e-6, "forces are trivially zero"


def test_forces_are_minus_gradient(family):
    model = small_model(family)
    pos = molecule(4)
    forces = model(graph_of(pos))["forces"]
    eps = 1e-5
    for atom, axis in [(0, 0), (2, 1), (5, 2), (8, 0)]:
        plus, minus = pos.clone(), pos.clone()
        plus[atom, axis] += eps
        minus[atom, axis] -= eps
        with torch.no_grad():
            fd = -(model(graph_of(plus), compute_forces=False)["energy"] - model(graph_of(minus), compute_forces=False)["energy"]) / (2 * eps)
        assert abs(float(fd) - float(forces[atom, axis])) < 1e-7 * max(1.0, abs(float(fd)))


def test_stress_is_strain_derivative_and_rotates(family):
    model = small_model(family)
    pos, numbers, cell = crystal(5)
    out = model(graph_of(pos, numbers, cell=cell))
    stress = out["stress"][0]
    volume = torch.linalg.det(cell).abs()
    eps = 1e-5
    for i, j in [(0, 0), (1, 2), (2, 2), (0, 1)]:
        energies = []
        for sign in (1, -1):
            strain = torch.eye(3, dtype=torch.float64)
            strain[i, j] += sign * eps / 2
            strain[j, i] += sign * eps / 2
            with torch.no_grad():
                e = model(graph_of(pos @ strain, numbers, cell=cell @ strain))["energy"]
            energies.append(e)
        fd = (energies[0] - energies[1]) / (2 * eps) / volume
        assert abs(float(fd) - float(stress[i, j].detach())) < 1e-7 * max(1.0, abs(float(fd)))
    R = random_orthogonal(6, reflect=True)
    out2 = model(graph_of(pos @ R.T, numbers, cell=cell @ R.T))
    assert rel_err(out2["energy"], out["energy"]) < 1e-9
    assert rel_err(out2["stress"][0], R @ stress @ R.T) < 1e-9


def test_energy_continuous_across_cutoff(family):
    model = small_model(family, cutoff=3.0)
    base = molecule(7)[:3]
    numbers = NUMBERS[:3]
    base = base - base[0]
    direction = torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)

    def energy(r):
        pos = torch.cat([base[:2], (base[0] + r * direction)[None]])
        # keep atom 2 out of reach of atom 1 so only the 0-2 edge crosses the cutoff
        pos[1] = base[0] - 1.2 * direction
        return float(model(graph_of(pos, numbers), compute_forces=False)["energy"].detach())

    inside, outside = energy(3.0 - 1e-6), energy(3.0 + 1e-6)
    assert abs(inside - outside) < 1e-8
    assert abs(energy(2.0) - outside) > 1e-6, "the edge had no effect at all"


def test_periodic_supercell_is_extensive(family):
    model = small_model(family)
    pos, numbers, cell = crystal(8)
    out = model(graph_of(pos, numbers, cell=cell))
    reps = [np.array([i, j, 0]) for i in range(2) for j in range(2)]
    big_pos = torch.cat([pos + torch.tensor(r, dtype=torch.float64) @ cell for r in [np.array(x, dtype=float) for x in reps]])
    big_numbers = numbers.repeat(len(reps))
    big_cell = cell * torch.tensor([[2.0], [2.0], [1.0]], dtype=torch.float64)
    big = model(graph_of(big_pos, big_numbers, cell=big_cell))
    assert rel_err(big["energy"], 4 * out["energy"]) < 1e-9
    assert rel_err(big["forces"], out["forces"].repeat(4, 1)) < 1e-9
    assert rel_err(big["stress"], out["stress"]) < 1e-9


def test_isolated_atom_has_reference_energy(family):
    model = small_model(family)
    for z, e0 in [(1, -0.5), (8, -1.5)]:
        g = graph_of(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([z]))
        out = model(g)
        assert abs(float(out["energy"].detach()) - e0) < 1e-12
        assert float(out["forces"].abs().max()) == 0.0


def test_batch_equals_separate_structures(family):
    model = small_model(family)
    graphs = [graph_of(molecule(s)) for s in (10, 11, 12)]
    together = model(batch(graphs))
    for k, g in enumerate(graphs):
        alone = model(g)
        assert rel_err(together["energy"][k], alone["energy"][0]) < 1e-12
        assert rel_err(together["forces"][9 * k : 9 * (k + 1)], alone["forces"]) < 1e-10


def test_config_rebuilds_the_model(family):
    model = small_model(family)
    # built in float64 like small_model: constant buffers (Clebsch-Gordan blocks) computed in
    # float32 and then cast would differ from the original's by ~1e-8
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        twin = build_model(model.config).double()
    finally:
        torch.set_default_dtype(default)
    twin.load_state_dict(model.state_dict())
    g = graph_of(molecule(13))
    assert torch.allclose(twin(g)["energy"], model(g)["energy"], rtol=0, atol=1e-12)


def test_unknown_element_is_named(family):
    model = small_model(family)
    pos = molecule(14)
    numbers = NUMBERS.clone()
    numbers[4] = 26
    with pytest.raises(ValueError, match=r"atom 4 is Fe"):
        model(graph_of(pos, numbers))


def test_forces_under_no_grad(family):
    """Inference code often runs under torch.no_grad(); forces must still come out, detached."""
    model = small_model(family)
    g = graph_of(molecule(15))
    expected = model(g)["forces"]
    with torch.no_grad():
        out = model(g)
    assert torch.allclose(out["forces"], expected, rtol=0, atol=1e-12)
    assert not any(v.requires_grad for v in out.values() if isinstance(v, torch.Tensor)), "a graph was kept alive"
