"""Every model family can fit a tiny training set: at most a few hundred Adam steps
on five frames lower the energy + forces loss by 10x or more.

The frames are five ethanol geometries from the bundled GFN2-xTB trajectory
(``examples/ethanol_xtb.xyz``), 2 ps apart.
"""

from pathlib import Path

import ase.io
import torch

from clebsch.data import graph_from_atoms
from clebsch.graph import AtomicGraph, batch
from clebsch.models import build_model

from .conftest import SMALL

CUTOFF = 4.0
STEPS = 300
# the contract tests' small sizes, with the invariant-message families given
# the width and radial resolution that 135 force components need
SIZES = {
    **SMALL,
    "schnet": {**SMALL["schnet"], "channels": 32},
    "egnn": {**SMALL["egnn"], "channels": 16, "num_basis": 32},
    "painn": {**SMALL["painn"], "channels": 16},
}
ETHANOL = Path(__file__).resolve().parents[2] / "examples" / "ethanol_xtb.xyz"


def training_frames(n=5):
    """``n`` ethanol frames with energies and forces, batched in float32."""
    frames = ase.io.read(ETHANOL, index=f"0:{100 * n}:100")
    return batch([graph_from_atoms(atoms, cutoff=CUTOFF, dtype=torch.float32) for atoms in frames])


def loss_fn(model, graph):
    out = model(graph)
    n_atoms = torch.bincount(graph.batch, minlength=graph.num_graphs).to(out["energy"].dtype)
    e_loss = (((out["energy"] - graph.targets["energy"]) / n_atoms) ** 2).mean()
    f_loss = ((out["forces"] - graph.targets["forces"]) ** 2).mean()
    return e_loss + f_loss


def test_overfits_five_frames(family):
    torch.manual_seed(0)
    graph = training_frames()
    energy, forces = graph.targets["energy"], graph.targets["forces"]
    n_atoms = graph.num_atoms / graph.num_graphs
    model = build_model(
        {
            "name": family,
            "species": ["H", "C", "O"],
            "cutoff": CUTOFF,
            "atomic_energies": [float(energy.mean() / n_atoms)] * 3,
            "scale": float(forces.pow(2).mean().sqrt()),
            **SIZES.get(family, {}),  # a family without an entry trains at its defaults
        }
    ).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, STEPS)
    initial = float(loss_fn(model, graph).detach())
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = loss_fn(model, graph)
        if float(loss) < initial / 10:  # the loss of the weights as they are now: the goal is reached
            break
        loss.backward()
        optimizer.step()
        scheduler.step()
    final = float(loss_fn(model, graph).detach())
    assert final < initial / 10, f"{family}: loss {initial:.4g} -> {final:.4g}, less than 10x lower"
