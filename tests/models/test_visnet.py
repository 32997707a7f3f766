"""ViSNet: it trains, packages, runs in the ASE calculator, exports, and its runtime
geometry gives the triplet (angle) and quadruplet (dihedral) sums in linear time."""

from pathlib import Path

import ase.io
import torch

from clebsch.graph import AtomicGraph
from clebsch.models.visnet import angle_term, dihedral_term, rejection

from . import family_workflow

NAME = "visnet"
SMALL = {"num_layers": 2, "channels": 16, "num_heads": 2, "num_basis": 8}
CUTOFF = 4.0
ETHANOL = Path(__file__).resolve().parents[2] / "examples" / "ethanol_xtb.xyz"


def small(seed=0, **extra):
    return family_workflow.small(NAME, SMALL, seed, **extra)


def test_trains_on_ethanol_frames():
    family_workflow.check_trains_on_ethanol_frames(NAME, SMALL)


def test_package_calculator_and_export(tmp_path):
    family_workflow.check_package_calculator_and_export(NAME, SMALL, tmp_path)


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
