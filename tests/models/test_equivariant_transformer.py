"""The Equivariant Transformer: it trains, packages, runs in the ASE calculator, exports,
and its attention weights vanish for a neighbour at the cutoff."""

from pathlib import Path

import ase.io
import torch

import clebsch
from clebsch.calculators import ClebschCalculator, export, load_exported
from clebsch.data import read_dataset
from clebsch.graph import AtomicGraph, batch
from clebsch.models import build_model
from clebsch.models.equivariant_transformer import EquivariantTransformer
from clebsch.models.package import save_package

NAME = "equivariant_transformer"
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
