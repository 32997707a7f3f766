"""Physics terms on any family (ZBL repulsion, electrostatics of learned charges) and exact Hessians.

References that do not share code with the implementation: the ZBL formula
written out again, Madelung constants of NaCl, CsCl and the simple cubic
lattice in a neutralising background, absolutely convergent direct lattice
sums, and finite differences.
"""

import math

import numpy as np
import pytest
import torch

from clebsch.graph import AtomicGraph, radius_graph
from clebsch.models import build_model
from clebsch.models._physics import (COULOMB_CONSTANT, check_physics, coulomb_open, ewald_parameters,
                                     ewald_periodic, smooth_switch)
from clebsch.testing import check_potential, finite_difference_hessian

from .conftest import small_model

K = COULOMB_CONSTANT
NUMBERS = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def zbl_reference(r, z1, z2):
    """ZBL universal potential written out (eV, Å)."""
    a = 0.8854 * 0.529177210903 / (z1 ** 0.23 + z2 ** 0.23)
    x = r / a
    phi = (0.18175 * np.exp(-3.1998 * x) + 0.50986 * np.exp(-0.94229 * x) + 0.28022 * np.exp(-0.4029 * x)
           + 0.02817 * np.exp(-0.20162 * x))
    return 14.399645 * z1 * z2 / r * phi


def dimer(z1, z2, r, cutoff=3.0):
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.3 * r, -0.4 * r, math.sqrt(0.75) * r]], dtype=torch.float64)
    return AtomicGraph.from_tensors(pos, torch.tensor([z1, z2]), cutoff)


def molecule(seed=0, n=9, spacing=0.9, box=1.6):
    gen = np.random.default_rng(seed)
    pos = []
    while len(pos) < n:
        p = gen.uniform(-box, box, size=3)
        if all(np.linalg.norm(p - q) > spacing for q in pos):
            pos.append(p)
    return torch.tensor(np.array(pos), dtype=torch.float64)


def periodic_graph(positions, numbers, cell, cutoff):
    return AtomicGraph.from_tensors(torch.as_tensor(positions, dtype=torch.float64), torch.as_tensor(numbers),
                                    cutoff, cell=torch.as_tensor(cell, dtype=torch.float64),
                                    pbc=torch.tensor([True, True, True]))


def ewald_of(charges, positions, cell, sigma, r_cut, accuracy=1e-12):
    """Ewald energy of fixed charges, edges from a radius graph at ``r_cut``."""
    positions = torch.as_tensor(positions, dtype=torch.float64)
    cell = torch.as_tensor(cell, dtype=torch.float64)
    edge_index, shifts = radius_graph(positions.numpy(), r_cut, cell=cell.numpy(), pbc=[True, True, True])
    vectors = positions[edge_index[0]] - positions[edge_index[1]] + shifts.to(torch.float64) @ cell
    q = torch.as_tensor(charges, dtype=torch.float64)
    return float(ewald_periodic(q, positions, cell, edge_index, vectors, sigma, accuracy, r_cut).sum())


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("spec, message", [
    ({"zbl": {"r_inner": -0.1}}, r"physics.zbl.r_inner: -0.1 is negative"),
    ({"zbl": {"r_inner": 0.8, "r_outer": 0.8}}, r"r_inner \(0.8\) must be smaller than r_outer \(0.8\)"),
    ({"zbl": {"r_outer": 9.0}}, r"r_outer: 9.0 exceeds the cutoff 3.0"),
    ({"dispersion": {}}, r"unknown term\(s\) \['dispersion'\]; allowed: zbl, coulomb"),
    ({"zbl": {"radius": 1.0}}, r"unknown key\(s\) \['radius'\]; allowed: r_inner, r_outer, blend"),
    ({"zbl": {"blend": "yes"}}, r"zbl.blend: 'yes' is not allowed; allowed: true, false"),
    ({"coulomb": {"sigma": 0.0}}, r"coulomb.sigma: 0.0 must be positive"),
    ({"coulomb": {"accuracy": 2.0}}, r"coulomb.accuracy: 2.0 must be between 0 and 1"),
    ({"coulomb": {"sigma": "wide"}}, r"coulomb.sigma: 'wide' is not a number"),
])
def test_bad_physics_config_names_key_and_allowed_values(spec, message):
    with pytest.raises(ValueError, match=message):
        build_model({"name": "schnet", "species": ["H", "O"], "cutoff": 3.0, "physics": spec})


def test_physics_config_from_yaml_is_validated_and_carried(tmp_path):
    from clebsch.train.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: painn\n  cutoff: 3.0\n  physics:\n    zbl: {r_inner: 0.3, r_outer: 0.7}\n"
                    "    coulomb: {sigma: 0.8}\n")
    config = load_config(path)
    assert config.model.physics == {"zbl": {"r_inner": 0.3, "r_outer": 0.7, "blend": True},
                                    "coulomb": {"sigma": 0.8, "accuracy": 1e-8}}
    path.write_text("model:\n  name: painn\n  cutoff: 3.0\n  physics: {zbl: {r_outer: 4.0}}\n")
    with pytest.raises(ConfigError, match=r"model.physics.zbl.r_outer: 4.0 exceeds the cutoff 3.0"):
        load_config(path)
    path.write_text("model:\n  name: painn\n  physics: {d4: {}}\n")
    with pytest.raises(ConfigError, match=r"unknown term\(s\) \['d4'\]; allowed: zbl, coulomb, d3"):
        load_config(path)


def test_config_rebuilds_and_coulomb_turns_on_charges():
    model = small_model("schnet", outputs=["energy", "forces"], physics={"zbl": True, "coulomb": {}})
    assert model.config["physics"] == check_physics({"zbl": {}, "coulomb": {}})
    assert "charges" in model.outputs and "charges" not in model.config["outputs"]
    assert build_model(model.config).config == model.config
    plain = small_model("schnet", outputs=["energy", "forces"])
    assert "physics" not in plain.config and plain.physics is None
    assert small_model("schnet", physics={"zbl": False}).physics is None


# ---------------------------------------------------------------- ZBL


def test_switch_is_smooth():
    r = torch.linspace(0.0, 1.2, 241, dtype=torch.float64, requires_grad=True)
    s = smooth_switch(r, torch.tensor(0.4, dtype=torch.float64), torch.tensor(0.9, dtype=torch.float64))
    (d,) = torch.autograd.grad(s.sum(), r, create_graph=True)
    (d2,) = torch.autograd.grad(d.sum(), r)
    assert torch.all(s[r <= 0.4] == 1) and torch.all(s[r >= 0.9] == 0)
    assert torch.all(d <= 1e-15)  # decreasing
    for edge in (0.4, 0.9):  # value, first and second derivatives continuous at both ends
        k = int(round(edge / 0.005))
        assert abs(float(d[k].detach())) < 1e-12 and abs(float(d2[k])) < 1e-9


@pytest.mark.parametrize("z1, z2", [(1, 1), (6, 8)])
def test_zbl_term_is_the_analytic_zbl_inside_and_zero_outside(z1, z2):
    kw = dict(species=("H", "C", "O"), outputs=["energy", "forces"])
    bare = small_model("painn", **kw)
    added = small_model("painn", physics={"zbl": {"r_inner": 0.5, "r_outer": 1.0, "blend": False}}, **kw)
    blended = small_model("painn", physics={"zbl": {"r_inner": 0.5, "r_outer": 1.0}}, **kw)
    added.load_state_dict(bare.state_dict())
    blended.load_state_dict(bare.state_dict())
    e0 = float(bare.atomic_energies[bare.species.index(z1)] + bare.atomic_energies[bare.species.index(z2)])
    for r in (0.2, 0.35, 0.49, 0.75, 1.0, 1.5):
        g = dimer(z1, z2, r)
        extra = float((added(g)["energy"] - bare(g)["energy"]).detach())
        x = min(max((r - 0.5) / 0.5, 0.0), 1.0)
        expected = zbl_reference(r, z1, z2) * (1 - x ** 3 * (10 - 15 * x + 6 * x * x))
        assert extra == pytest.approx(expected, rel=1e-12, abs=1e-12)
        total = float(blended(g)["energy"].detach())
        if r < 0.5:  # blended: the dimer's energy is the reference energies plus the ZBL alone
            assert total == pytest.approx(e0 + zbl_reference(r, z1, z2), rel=1e-12)
        elif r >= 1.0:
            assert total == pytest.approx(float(bare(g)["energy"].detach()), rel=1e-12)
    out = added(dimer(z1, z2, 0.3))
    assert float(out["atomic_energies"].sum().detach()) == pytest.approx(float(out["energy"].detach()), rel=1e-14)


def test_default_radii_come_from_covalent_radii():
    from ase.data import covalent_radii

    model = small_model("schnet", physics={"zbl": {}})
    zbl = model.physics.zbl
    h, o = 0, 2  # species indices of H and O
    assert float(zbl.r_outer[h, o]) == pytest.approx(0.8 * (covalent_radii[1] + covalent_radii[8]))
    assert float(zbl.r_inner[h, o]) == pytest.approx(0.5 * (covalent_radii[1] + covalent_radii[8]))


def _ethanol_frames(n=12):
    import ase.build
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for i in range(n):
        atoms = ase.build.molecule("CH3CH2OH")
        atoms.rattle(0.08, seed=i)
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A PaiNN with ZBL trained briefly (from YAML, through `clebsch train`'s code) on rattled ethanol, no close contacts."""
    import ase.io

    from clebsch.models.package import load
    from clebsch.train.trainer import train

    root = tmp_path_factory.mktemp("zbl")
    ase.io.write(root / "data.xyz", _ethanol_frames(6))
    (root / "config.yaml").write_text(f"""
run_dir: {root / 'run'}
seed: 0
dtype: float64
model: {{name: painn, cutoff: 3.0, num_layers: 2, channels: 8, physics: {{zbl: {{}}}}}}
data: {{train: {root / 'data.xyz'}, valid_fraction: 0.34, batch_size: 2}}
optimizer: {{lr: 0.01}}
training: {{max_epochs: 2, progress: false, plots: false}}
""")
    train(str(root / "config.yaml"), log=lambda *_: None)
    return load(root / "run" / "model.pt", dtype=torch.float64)


@pytest.mark.parametrize("pair", [(1, 1), (6, 8)])
@pytest.mark.parametrize("which", ["untrained", "trained"])
def test_dimer_scan_is_repulsive_at_short_range_with_finite_exact_forces(pair, which, trained):
    if which == "trained":
        model = trained
        assert model.config["physics"]["zbl"] == {"r_inner": None, "r_outer": None, "blend": True}
    else:  # as initialised, not the contract's randomised weights
        torch.manual_seed(0)
        model = build_model({"name": "painn", "species": ["H", "C", "O"], "cutoff": 3.0, "num_layers": 2,
                             "channels": 8, "atomic_energies": [-0.5, -1.0, -1.5], "scale": 1.3,
                             "physics": {"zbl": {}}}).double().eval()
    z1, z2 = pair
    zbl = model.physics.zbl
    s1, s2 = model.species.index(z1), model.species.index(z2)
    inner = float(zbl.r_inner[s1, s2])
    rs = np.linspace(0.2, 3.0, 141)
    energies, forces = [], []
    for r in rs:
        out = model(dimer(z1, z2, r))
        energies.append(float(out["energy"].detach()))
        forces.append(out["forces"].detach())
    energies = np.array(energies)
    assert all(torch.isfinite(f).all() for f in forces)
    short = rs <= inner
    assert short.sum() >= 3 and np.all(np.diff(energies[short]) < 0), energies[short]
    # the pair's force along the bond (on atom 1, away from atom 0) equals -dE/dr by finite differences
    for r in (0.21, 0.5 * (0.2 + inner), inner + 0.01, 0.9, 2.0):
        direction = dimer(z1, z2, r).positions[1] / r
        f = float(model(dimer(z1, z2, r))["forces"][1] @ direction)
        h = 1e-5
        e_plus = float(model(dimer(z1, z2, r + h))["energy"].detach())
        e_minus = float(model(dimer(z1, z2, r - h))["energy"].detach())
        fd = -(e_plus - e_minus) / (2 * h)
        assert abs(f - fd) <= 1e-6 * max(1.0, abs(fd))


# ---------------------------------------------------------------- electrostatics


def test_open_coulomb_is_the_direct_pair_sum():
    gen = torch.Generator().manual_seed(0)
    pos = molecule(1, n=7).requires_grad_(True)
    q = torch.randn(7, generator=gen, dtype=torch.float64)
    sigma = 0.7
    got = coulomb_open(q, pos, torch.zeros(7, dtype=torch.long), sigma)
    p = pos.detach().numpy()
    expected = 0.0
    for i in range(7):
        for j in range(i + 1, 7):
            r = np.linalg.norm(p[i] - p[j])
            expected += K * float(q[i] * q[j]) * math.erf(r / (math.sqrt(2) * sigma)) / r
    assert float(got.sum().detach()) == pytest.approx(expected, rel=1e-13)
    (g,) = torch.autograd.grad(got.sum(), pos)
    assert torch.isfinite(g).all()


def test_model_coulomb_uses_its_own_charges():
    model = small_model("nequip", outputs=["energy", "forces"], physics={"coulomb": {"sigma": 0.8}})
    g = AtomicGraph.from_tensors(molecule(3), NUMBERS, 3.0, total_charge=1.0)
    out = model(g)
    q = out["charges"].detach()
    assert float(q.sum()) == pytest.approx(1.0, abs=1e-12)
    terms = model.physics
    model.physics = None
    try:
        bare = float(model(g)["energy"].detach())
    finally:
        model.physics = terms
    expected = float(coulomb_open(q, g.positions, g.batch, 0.8).sum())
    assert float(out["energy"].detach()) - bare == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert float(out["atomic_energies"].sum().detach()) == pytest.approx(float(out["energy"].detach()), rel=1e-13)


def madelung(structure):
    """Positions, charges, cell and nearest-neighbour distance of NaCl (rock salt) or CsCl."""
    if structure == "NaCl":
        a = 5.64
        base = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
        pos = np.concatenate([base, base + [0.5, 0, 0]]) * a
        q = [1.0] * 4 + [-1.0] * 4
        return pos, q, np.eye(3) * a, a / 2, 1.747564594633
    a = 4.12
    return np.array([[0, 0, 0], [0.5, 0.5, 0.5]]) * a, [1.0, -1.0], np.eye(3) * a, a * math.sqrt(3) / 2, 1.762674773070


@pytest.mark.parametrize("structure", ["NaCl", "CsCl"])
def test_ewald_point_charge_limit_gives_the_madelung_constant(structure):
    pos, q, cell, r0, constant = madelung(structure)
    energy = ewald_of(q, pos, cell, sigma=0.02, r_cut=5.0)
    pairs = len(q) / 2
    assert energy / pairs == pytest.approx(-constant * K / r0, rel=1e-9)


def test_ewald_gaussian_charges_match_madelung_plus_direct_short_range_sum():
    """Neutral NaCl with sigma = 1 Å: the point-charge (Madelung) energy plus the absolutely convergent
    direct sum of the damping, -1/2 sum' q_i q_j erfc(r / (sqrt(2) sigma)) / r over 13^3 cells."""
    pos, q, cell, r0, constant = madelung("NaCl")
    sigma = 1.0
    point = -constant * K / r0 * 4
    n = np.arange(-6, 7)
    images = np.stack(np.meshgrid(n, n, n, indexing="ij"), -1).reshape(-1, 3) @ cell
    q = np.array(q)
    correction = 0.0
    for i in range(len(q)):
        d = pos[None, :, :] + images[:, None, :] - pos[i]
        r = np.linalg.norm(d, axis=-1)
        ok = r > 1e-9
        from scipy.special import erfc

        correction -= 0.5 * K * q[i] * np.sum((q[None, :] * erfc(r / (math.sqrt(2) * sigma)) / np.where(ok, r, 1))[ok])
    for r_cut in (3.0, 6.0):  # all in reciprocal space (eta = sigma), and split between real and reciprocal space
        assert ewald_of(q, pos, cell, sigma, r_cut) == pytest.approx(point + correction, rel=1e-10)


def test_charged_cell_in_a_neutralising_background():
    """One charge in a cubic box: E = -q^2 alpha / (2 L), alpha = 2.837297 (simple cubic lattice in a uniform
    background), plus pi q^2 sigma^2 / L^3, the energy of a Gaussian (rather than a point) charge in the
    background's quadratic potential."""
    length = 4.0
    for sigma in (0.01, 0.2):
        energy = ewald_of([1.0], np.zeros((1, 3)), np.eye(3) * length, sigma=sigma, r_cut=5.0)
        expected = -K * 2.837297479 / (2 * length) + K * math.pi * sigma ** 2 / length ** 3
        assert energy == pytest.approx(expected, rel=1e-9)


def test_ewald_does_not_depend_on_the_splitting_triclinic_charged():
    gen = np.random.default_rng(4)
    cell = np.diag([4.1, 4.6, 5.0]) + gen.normal(0, 0.4, (3, 3))
    pos = gen.uniform(0, 1, (5, 3)) @ cell
    q = gen.normal(0, 0.6, 5)
    energies = [ewald_of(q, pos, cell, sigma=0.4, r_cut=r) for r in (1.0, 4.0, 7.0)]
    assert ewald_parameters(0.4, 1e-12, 1.0)[0] == 0.4 and ewald_parameters(0.4, 1e-12, 7.0)[0] > 0.4
    assert energies[1] == pytest.approx(energies[0], rel=1e-10) and energies[2] == pytest.approx(energies[0], rel=1e-10)


@pytest.mark.parametrize("family", ["nequip", "painn"])
def test_contract_with_physics_terms(family):
    model = small_model(family, outputs=["energy", "forces", "stress"],
                        physics={"zbl": {"r_inner": 0.5, "r_outer": 1.2}, "coulomb": {"sigma": 0.3, "accuracy": 1e-12}})
    # sigma = 0.3 Å < eta: the Ewald sum of the crystals has both its real-space and reciprocal parts
    check_potential(model, checks=("equivariance", "forces", "stress", "cutoff", "extensive", "batch", "rebuild"))


def test_periodic_coulomb_stress_and_mixed_pbc():
    model = small_model("painn", outputs=["energy", "forces", "stress"], physics={"coulomb": {"sigma": 0.3}})
    pos, q, cell, r0, constant = madelung("CsCl")
    g = periodic_graph(pos + 0.1, [6, 8], cell, 3.0)
    out = model(g)
    assert torch.isfinite(out["stress"]).all() and torch.isfinite(out["forces"]).all()
    slab = AtomicGraph.from_tensors(torch.tensor(pos), torch.tensor([6, 8]), 3.0, cell=torch.tensor(cell),
                                    pbc=torch.tensor([True, True, False]))
    with pytest.raises(ValueError, match=r"periodic in some directions only"):
        model(slab)


def test_batch_of_open_and_periodic_structures_with_coulomb():
    from clebsch.graph import batch

    model = small_model("painn", outputs=["energy", "forces", "stress"], physics={"zbl": {}, "coulomb": {"sigma": 0.4}})
    pos, q, cell, r0, constant = madelung("NaCl")
    graphs = [AtomicGraph.from_tensors(molecule(2), NUMBERS, 3.0),
              periodic_graph(pos + np.random.default_rng(0).normal(0, 0.1, pos.shape), [6, 8, 1, 6, 8, 1, 1, 8],
                             cell, 3.0),
              AtomicGraph.from_tensors(molecule(3), NUMBERS, 3.0, total_charge=-1.0)]
    together = model(batch(graphs))
    atoms = 0
    for k, g in enumerate(graphs):
        alone = model(g)
        n = g.num_atoms
        assert float(together["energy"][k].detach()) == pytest.approx(float(alone["energy"].detach()), rel=1e-12)
        torch.testing.assert_close(together["forces"][atoms:atoms + n], alone["forces"], rtol=1e-10, atol=1e-10)
        if "stress" in alone:
            torch.testing.assert_close(together["stress"][k], alone["stress"][0], rtol=1e-10, atol=1e-10)
        atoms += n


def test_export_includes_the_physics_terms(tmp_path):
    from clebsch.calculators import export, load_exported

    model = small_model("painn", outputs=["energy", "forces"], physics={"zbl": {}, "coulomb": {"sigma": 1.0}})
    g = AtomicGraph.from_tensors(molecule(5, spacing=0.6), NUMBERS, 3.0)
    expected = model(g)
    loaded = load_exported(export(model, tmp_path / "m.pt2"))
    got = loaded(g)
    assert float(got["energy"].detach()) == pytest.approx(float(expected["energy"].detach()), rel=1e-12)
    torch.testing.assert_close(got["forces"], expected["forces"].detach(), rtol=1e-10, atol=1e-10)
    pos, q, cell, r0, constant = madelung("CsCl")
    with pytest.raises(ValueError, match="open structures only"):
        loaded(periodic_graph(pos, [6, 8], cell, 3.0))


# ---------------------------------------------------------------- Hessian


def test_hessian_equals_finite_differences_of_the_forces():
    model = small_model("painn", outputs=["energy", "forces"], physics={"zbl": {}, "coulomb": {"sigma": 0.8}})
    pos = molecule(7)
    g = AtomicGraph.from_tensors(pos, NUMBERS, 3.0)
    hessian = model.hessian(g)
    assert hessian.shape == (27, 27)
    fd = finite_difference_hessian(lambda p: model(AtomicGraph.from_tensors(p, NUMBERS, 3.0))["forces"], pos)
    assert float((hessian - fd).abs().max()) <= 1e-6 * max(1.0, float(fd.abs().max()))
    assert float((hessian - hessian.T).abs().max()) <= 1e-10 * float(hessian.abs().max())
    # translation invariance: rows sum to zero over the atoms
    assert float(hessian.reshape(27, 9, 3).sum(1).abs().max()) <= 1e-9 * float(hessian.abs().max())
