"""Electron densities and Hamiltonians as model outputs: layouts from a Gaussian basis, equivariance with
the basis's own Wigner D (float64, rotations and reflections), Hermiticity, invariant orbital energies."""

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from clebsch import o3
from clebsch.basis import GaussianBasis, assemble_matrix, molecular_grid, orbital_energies, overlap_matrix
from clebsch.data.targets import graph_from_atoms
from clebsch.graph import AtomicGraph
from clebsch.targets import TargetError, declare, resolve_targets
from clebsch.testing import float64_model

BASIS_FILE = Path(__file__).parents[2] / "examples" / "water_clusters.basis.json"
AO = {"file": str(BASIS_FILE), "key": "ao"}
AUX = {"file": str(BASIS_FILE), "key": "aux"}
TARGETS = {
    "density": {"level": "atom", "basis": AUX},
    "fock_onsite": {"level": "atom", "basis": AO, "matrix": True, "unit": "Ha"},
    "fock": {"level": "edge", "basis": AO, "matrix": True, "unit": "Ha"},
}
WATER_DIMER = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0],
                        [2.9, 0.1, 0.2], [3.3, 0.9, 0.5], [3.3, -0.6, 0.7]])


@pytest.fixture(scope="module", params=["nequip", "painn", "nequip-wide-heads"])
def model(request):
    hyper = {"nequip": {"num_layers": 2, "channels": 4, "lmax": 2}, "painn": {"num_layers": 2, "channels": 8},
             "nequip-wide-heads": {"num_layers": 2, "channels": 4, "lmax": 2, "readout_channels": 7}}
    config = {"name": request.param.split("-")[0], "species": ["H", "O"], "cutoff": 4.0,
              "outputs": ["energy", *TARGETS], "targets": TARGETS, **hyper[request.param]}
    return float64_model(config, seed=1, randomize_zeros=True)


def _outputs(model, positions):
    graph = AtomicGraph.from_tensors(torch.as_tensor(positions), torch.tensor([8, 1, 1, 8, 1, 1]), 4.0)
    graph.positions = graph.positions.double()
    out = model(graph)
    return graph, out


def test_basis_layouts():
    ao = GaussianBasis.from_file(BASIS_FILE, "ao")
    t = resolve_targets(TARGETS)
    assert t["density"].shape == (GaussianBasis.from_file(BASIS_FILE, "aux").union_irreps.dim,)
    assert t["fock"].shape == (ao.union_irreps.dim, ao.union_irreps.dim)
    assert t["fock"].irreps_out.dim == ao.union_irreps.dim ** 2
    assert t["fock_onsite"].symmetric and not t["fock"].symmetric
    assert t["fock"].metric_unit == "µHa"
    with pytest.raises(TargetError, match="model.targets.x.basis"):
        declare("x", {"level": "atom", "basis": {"file": "no/such/basis.json"}})
    with pytest.raises(TargetError, match="per edge with matrix: true"):
        declare("x", {"level": "edge", "basis": AO})


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_density_and_hamiltonian_are_equivariant(model, sign):
    torch.manual_seed(3)
    ao = model.targets["fock"].basis
    aux = model.targets["density"].basis
    r = o3.rand_matrix(dtype=torch.float64) * sign
    g, out = _outputs(model, WATER_DIMER)
    g_rot, out_rot = _outputs(model, WATER_DIMER @ r.numpy().T)
    d_aux = aux.union_irreps.D_from_matrix(r)
    d_ao = ao.union_irreps.D_from_matrix(r)
    torch.testing.assert_close(out_rot["density"], out["density"] @ d_aux.T, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(out_rot["fock_onsite"], d_ao @ out["fock_onsite"] @ d_ao.T, atol=1e-9, rtol=1e-9)
    assert torch.equal(g.edge_index, g_rot.edge_index)
    torch.testing.assert_close(out_rot["fock"], d_ao @ out["fock"] @ d_ao.T, atol=1e-9, rtol=1e-9)
    # the whole matrix: symmetric, equivariant with the per-atom D, invariant orbital energies
    z = [8, 1, 1, 8, 1, 1]
    h = assemble_matrix(ao, z, out["fock_onsite"], out["fock"], g.edge_index)
    h_rot = assemble_matrix(ao, z, out_rot["fock_onsite"], out_rot["fock"], g.edge_index)
    assert float((h - h.T).abs().max().detach()) < 1e-12
    d_atoms = torch.block_diag(*[ao.irreps(zi).D_from_matrix(r) for zi in z])
    torch.testing.assert_close(h_rot, d_atoms @ h @ d_atoms.T, atol=1e-9, rtol=1e-9)
    if sign < 0:  # orbital energies from each geometry's own overlap (a coarse grid: quadrature errors ~1e-5)
        s = overlap_matrix(ao, z, WATER_DIMER, grid=molecular_grid(z, WATER_DIMER, 40, 12))
        rotated = WATER_DIMER @ r.numpy().T
        s_rot = overlap_matrix(ao, z, rotated, grid=molecular_grid(z, rotated, 40, 12))
        torch.testing.assert_close(orbital_energies(h_rot.detach(), s_rot), orbital_energies(h.detach(), s),
                                   atol=2e-4, rtol=1e-4)


def test_readout_channels_widen_the_basis_heads_and_survive_a_rebuild():
    from clebsch.models import build_model

    def heads(channels):
        config = {"name": "nequip", "species": ["H", "O"], "cutoff": 4.0, "outputs": ["energy", *TARGETS],
                  "targets": TARGETS, "num_layers": 1, "channels": 4, "lmax": 1, "readout_channels": channels}
        model = build_model(config)
        return model, {k: v.numel() for k, v in model.heads.state_dict().items()}

    narrow, n4 = heads(4)
    wide, n9 = heads(9)
    assert sum(n9.values()) > sum(n4.values())
    assert n9 != n4 and set(n9) == set(n4)
    rebuilt = build_model(wide.config)
    assert {k: v.numel() for k, v in rebuilt.heads.state_dict().items()} == n9
    assert sum(p.numel() for p in narrow.energy_head.parameters()) == sum(p.numel() for p in
                                                                            wide.energy_head.parameters())


def test_reading_basis_targets_checks_sizes_and_elements():
    ao = GaussianBasis.from_file(BASIS_FILE, "ao")
    targets = resolve_targets(TARGETS)
    atoms = Atoms("OH2", positions=WATER_DIMER[:3])
    n_ao = int(ao.ao_offsets(atoms.numbers)[-1])
    rng = np.random.default_rng(0)
    f = rng.normal(size=(n_ao, n_ao))
    atoms.info["fock"] = (f + f.T).reshape(-1)
    g = graph_from_atoms(atoms, 4.0, keys={"fock": "fock", "fock_onsite": "fock"}, targets=targets)
    assert g.targets["fock"].shape == (g.num_edges, ao.union_irreps.dim, ao.union_irreps.dim)
    # an H atom has no d functions: those entries are missing, the others hold the matrix
    h_block = g.targets["fock_onsite"][1]
    assert int(torch.isfinite(h_block).sum()) == ao.size(1) ** 2
    atoms.info["fock"] = np.zeros(n_ao * n_ao - 1)
    with pytest.raises(ValueError, match=rf"fock must be a {n_ao} x {n_ao} matrix.*key 'fock', frame 3"):
        graph_from_atoms(atoms, 4.0, keys={"fock": "fock"}, targets=targets, where="frame 3")
    atoms = Atoms("NH3", positions=WATER_DIMER[:4])
    atoms.info["fock"] = np.zeros(4)
    with pytest.raises(ValueError, match=r"atom 0: basis 'def2-svp' has no functions for N"):
        graph_from_atoms(atoms, 4.0, keys={"fock": "fock"}, targets=targets)


def test_pair_blocks_vanish_smoothly_at_the_cutoff(model):
    """A pair block, mean included, goes to zero as the pair reaches the cutoff (no jump when an edge appears)."""
    def pair_block(distance):
        positions = torch.tensor([[0.0, 0.0, 0.0], [distance, 0.0, 0.0]], dtype=torch.float64)
        graph = AtomicGraph.from_tensors(positions, torch.tensor([8, 1]), 4.0)
        graph.positions = graph.positions.double()
        return model(graph)["fock"]

    near = pair_block(2.0)
    assert near.abs().max() > 1e-3
    edge = pair_block(4.0 - 1e-3)
    assert edge.shape[0] == 2
    assert edge.abs().max() < 1e-9 * max(1.0, float(near.abs().max()))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_conserved_electrons_hold_each_structures_count_and_stay_equivariant(sign):
    """With conserve_electrons the predicted density of every structure in a batch integrates (on a grid, not only
    by the analytic integrals) to its atoms' electrons less its charge, and still turns with D(R)."""
    from clebsch.graph import batch

    targets = {"density": {**TARGETS["density"], "conserve_electrons": True}}
    config = {"name": "nequip", "species": ["H", "O"], "cutoff": 4.0, "outputs": ["energy", "density"],
              "targets": targets, "num_layers": 2, "channels": 4, "lmax": 2}
    model = float64_model(config, seed=2, randomize_zeros=True)
    free = float64_model({**config, "targets": TARGETS}, seed=2, randomize_zeros=True)
    aux = model.targets["density"].basis
    r = o3.rand_matrix(dtype=torch.float64) * sign

    def predict(m, positions):
        graphs = [AtomicGraph.from_tensors(torch.as_tensor(positions[:3]), torch.tensor([8, 1, 1]), 4.0,
                                           total_charge=1.0),
                  AtomicGraph.from_tensors(torch.as_tensor(positions), torch.tensor([8, 1, 1, 8, 1, 1]), 4.0)]
        g = batch(graphs)
        g.positions = g.positions.double()
        return m(g)["density"]

    rho = predict(model, WATER_DIMER)
    z = [8, 1, 1, 8, 1, 1]
    for n, coefficients, electrons in ((3, rho[:3], 9.0), (6, rho[3:], 20.0)):  # the cation, the dimer
        points, weights = molecular_grid(z[:n], WATER_DIMER[:n], 60, 18)
        count = float((weights * aux.density(z[:n], WATER_DIMER[:n], coefficients.detach(), points)).sum())
        assert abs(count - electrons) < 1e-4, (n, count)
    unconstrained = predict(free, WATER_DIMER)[3:]
    w = aux.charge_integrals((1, 8))[torch.tensor([1, 0, 0, 1, 0, 0])]
    assert abs(float((unconstrained * w).sum()) - 20.0) > 1e-2  # the correction did something
    # only the 0e coefficients moved, along the integrals
    delta = (rho[3:] - unconstrained).detach()
    assert float(delta[w == 0].abs().max()) == 0.0
    torch.testing.assert_close(predict(model, WATER_DIMER @ r.numpy().T), rho @ aux.union_irreps.D_from_matrix(r).T,
                               atol=1e-9, rtol=1e-9)


def test_conserve_electrons_is_only_for_a_density():
    with pytest.raises(TargetError, match="conserve_electrons is for a density"):
        declare("h", {**TARGETS["fock_onsite"], "conserve_electrons": True})
    with pytest.raises(TargetError, match=r"model.targets.rho.conserve_electrons: expected true or false"):
        declare("rho", {**TARGETS["density"], "conserve_electrons": "yes"})
