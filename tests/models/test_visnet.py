"""ViSNet: it trains, packages, runs in the ASE calculator, exports, and its runtime
geometry gives the triplet (angle) and quadruplet (dihedral) sums in linear time."""

from pathlib import Path

import ase.io
import torch

import clebsch
from clebsch.calculators import ClebschCalculator, export, load_exported
from clebsch.data import read_dataset
from clebsch.graph import AtomicGraph, batch
from clebsch.models import build_model
from clebsch.models.package import save_package
from clebsch.models.visnet import angle_term, dihedral_term, rejection

NAME = "visnet"
SMALL = {"num_layers": 2, "channels": 16, "num_heads": 2, "num_basis": 8}
CUTOFF = 4.0
ETHANOL = Path(__file__).resolve().parents[2] / "examples" / "ethanol_xtb.xyz"


def small(seed=0, **extra):
    torch.manual_seed(seed)
    return build_model({"name": NAME, "species": ["H", "C", "O"], "cutoff": CUTOFF,
                        "atomic_energies": [-10.0, -40.0, -60.0], **SMALL, **extra})


def loss_fn(model, graph):
    out = model(graph)
    n_atoms = torch.bincount(graph.batch, minlength=graph.num_graphs).to(out["energy"].dtype)
    e_loss = (((out["energy"] - graph.targets["energy"]) / n_atoms) ** 2).mean()
    return e_loss + ((out["forces"] - graph.targets["forces"]) ** 2).mean()


def test_trains_on_ethanol_frames():
    graph = batch(read_dataset(ETHANOL, CUTOFF, index="0:400:25", dtype=torch.float32))
    energy, forces = graph.targets["energy"], graph.targets["forces"]
    torch.manual_seed(0)
    model = build_model({"name": NAME, "species": ["H", "C", "O"], "cutoff": CUTOFF,
                         "atomic_energies": [float(energy.mean() / 9)] * 3,
                         "scale": float(forces.pow(2).mean().sqrt()), **SMALL}).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    initial = float(loss_fn(model, graph).detach())
    for _ in range(60):
        optimizer.zero_grad()
        loss = loss_fn(model, graph)
        loss.backward()
        optimizer.step()
    final = float(loss_fn(model, graph).detach())
    assert final < initial / 4, f"loss {initial:.4g} -> {final:.4g}"


def test_package_calculator_and_export(tmp_path):
    model = small().double().eval()
    atoms = ase.io.read(ETHANOL, index=7)
    graph = AtomicGraph.from_ase(atoms, CUTOFF, dtype=torch.float64)
    ref = model(graph)

    loaded = clebsch.load(save_package(model, tmp_path / "model.pt"))
    assert loaded.config["name"] == NAME
    atoms.calc = ClebschCalculator(tmp_path / "model.pt")
    assert abs(atoms.get_potential_energy() - float(ref["energy"].detach())) < 1e-8
    assert abs(atoms.get_forces() - ref["forces"].detach().numpy()).max() < 1e-8

    path = export(model, tmp_path / "model.pt2")
    got = load_exported(path)(graph)
    assert torch.allclose(got["energy"], ref["energy"].detach(), rtol=0, atol=1e-10)
    assert torch.allclose(got["forces"], ref["forces"].detach(), rtol=0, atol=1e-10)
    # the exported file runs a structure of another size through the ASE calculator
    other = ase.io.read(ETHANOL, index=3)[:6]
    other.calc = ClebschCalculator(path)
    expected = model(AtomicGraph.from_ase(other, CUTOFF, dtype=torch.float64))
    assert abs(other.get_potential_energy() - float(expected["energy"].detach())) < 1e-8


def ethanol_edges(frame=11):
    graph = AtomicGraph.from_ase(ase.io.read(ETHANOL, index=frame), 2.0, dtype=torch.float64)
    vectors = graph.edge_vectors()
    return graph, vectors / vectors.norm(dim=-1, keepdim=True)


def neighbours(graph):
    """``{i: [edges e with receiver i]}``"""
    out = {i: [] for i in range(graph.num_atoms)}
    for e, i in enumerate(graph.edge_index[1].tolist()):
        out[i].append(e)
    return out


def test_angle_term_is_the_triplet_sum():
    """sum_{j,k} <u_ij, u_ik> over pairs of neighbours equals |sum_j u_ij|^2 (one sum over edges)."""
    graph, unit = ethanol_edges()
    around = neighbours(graph)
    explicit = torch.tensor([sum(float(unit[a] @ unit[b]) for a in around[i] for b in around[i])
                             for i in range(graph.num_atoms)], dtype=torch.float64)
    fast = angle_term(unit, graph.edge_index[1], graph.num_atoms)
    assert max(len(v) for v in around.values()) >= 3  # real angles, not only j = k
    assert torch.allclose(fast, explicit, atol=1e-12)
    # the cosines of the angles j-i-k, j != k, are the part beyond the count of neighbours
    counts = torch.tensor([len(around[i]) for i in range(graph.num_atoms)], dtype=torch.float64)
    assert (fast - counts).abs().max() > 0.1


def test_dihedral_term_is_the_quadruplet_sum():
    """sum_{k in N(i), l in N(j)} <rej(u_ik, u_ij), rej(u_jl, u_ji)> per edge, in linear time."""
    graph, unit = ethanol_edges()
    around = neighbours(graph)
    sender, receiver = graph.edge_index.tolist()
    explicit = []
    for e, (j, i) in enumerate(zip(sender, receiver)):
        total = 0.0
        for a in around[i]:
            for b in around[j]:
                total += float(rejection(unit[a][None], unit[e][None])[0] @ rejection(unit[b][None], -unit[e][None])[0])
        explicit.append(total)
    fast = dihedral_term(unit, graph.edge_index, graph.num_atoms)
    assert torch.tensor(explicit).abs().max() > 0.1
    assert torch.allclose(fast, torch.tensor(explicit, dtype=torch.float64), atol=1e-12)
