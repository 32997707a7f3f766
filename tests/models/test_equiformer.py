"""Equiformer: the contract for both attentions, its attention weights and layer norm, packaging and export."""

import math

import pytest
import torch

from clebsch.graph import AtomicGraph
from clebsch.models import build_model
from clebsch.models.equiformer import Equiformer, envelope_softmax
from clebsch.nn import LayerNorm
from clebsch.o3 import Irreps
from clebsch.testing import check_potential, float64_model

from . import family_workflow
from .test_contract import NUMBERS, molecule, random_orthogonal

NAME = "equiformer"
SMALL = {"num_layers": 2, "channels": 4, "num_heads": 2, "lmax": 2, "num_basis": 8, "radial_hidden": 16}
CUTOFF = 3.0
SPECIES = {1: 0, 6: 1, 8: 2}


def representation(seed=0, **extra):
    """A float64 Equiformer with random weights, its zero-initialised biases made non-zero."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        net = Equiformer(3, CUTOFF, **{**SMALL, **extra})
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net.eval()


def inputs(positions, numbers=NUMBERS):
    graph = AtomicGraph.from_tensors(positions, numbers, CUTOFF)
    species = torch.tensor([SPECIES[int(z)] for z in numbers])
    return species, graph.edge_index, graph.edge_vectors()


@pytest.mark.parametrize("attention, parity", [("mlp", False), ("dot", True)])
def test_contract(attention, parity):
    """Rotations and reflections, translations, permutations, forces = -dE/dr, stress, cutoff, isolated atoms."""
    config = {"name": NAME, "species": ["H", "C", "O"], "cutoff": CUTOFF, "atomic_energies": [-0.5, -1.0, -1.5],
              "outputs": ["energy", "forces", "stress"], "attention": attention, "parity": parity, **SMALL}
    errors = check_potential(float64_model(config, randomize_zeros=True))
    assert errors["equivariance"] < 1e-9 and errors["forces"] < 1e-6 and errors["cutoff"] < 1e-8


def test_envelope_softmax_is_a_softmax_per_receiver():
    """Unit envelopes give each receiver's softmax (sums of one), stable for logits of 1e3; envelopes weight it."""
    torch.manual_seed(0)
    receiver = torch.tensor([0, 0, 0, 2, 2, 3])
    logits = torch.randn(6, 3, dtype=torch.float64) * 5
    logits[1, 0] = 1000.0  # would overflow exp
    ones = torch.ones(6, dtype=torch.float64)
    alpha = envelope_softmax(logits, ones, receiver, 5)
    for node in (0, 2, 3):
        rows = receiver == node
        assert torch.allclose(alpha[rows], torch.softmax(logits[rows], dim=0), atol=1e-15)
    sums = torch.zeros(5, 3, dtype=torch.float64).index_add(0, receiver, alpha)
    assert torch.allclose(sums[[0, 2, 3]], torch.ones(3, 3, dtype=torch.float64), atol=1e-15)
    assert alpha[1, 0] == 1.0 and alpha[[0, 2], 0].max() < 1e-300

    envelope = torch.tensor([0.5, 0.0, 1e-3, 0.2, 0.7, 1e-12], dtype=torch.float64)
    weighted = envelope_softmax(logits, envelope, receiver, 5)
    expected = envelope[:, None] * logits.exp()
    expected[:3] = torch.softmax(logits[:3] + envelope[:3, None].log(), dim=0)  # the same, without overflow
    expected[3:5] = expected[3:5] / expected[3:5].sum(0)
    expected[5] = 1.0  # a receiver's only edge keeps weight one (its value carries the envelope)
    assert torch.allclose(weighted, expected, atol=1e-14)
    assert weighted[1].abs().max() == 0  # no weight at the cutoff, whatever the logit

    # no incoming edges and edges of weight zero only: zeros, no NaN, also in the gradient
    logits.requires_grad_(True)
    alpha = envelope_softmax(logits, torch.zeros(6, dtype=torch.float64), receiver, 5)
    (grad,) = torch.autograd.grad(alpha.sum(), logits)
    assert alpha.abs().max() == 0 and torch.isfinite(grad).all()
    empty = envelope_softmax(torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.long), 3)
    assert empty.shape == (0, 2)


@pytest.mark.parametrize("attention", ["mlp", "dot"])
def test_attention_weights_sum_to_one_and_are_invariant(attention):
    net = representation(attention=attention, parity=True)
    pos = molecule(1)
    species, edge_index, vectors = inputs(pos)
    weights = net.attention_weights(species, edge_index, vectors)
    assert len(weights) == SMALL["num_layers"]
    receiver = edge_index[1]
    has_edges = torch.bincount(receiver, minlength=len(species)) > 0
    for alpha in weights:
        assert alpha.shape == (edge_index.shape[1], SMALL["num_heads"])
        sums = torch.zeros(len(species), alpha.shape[1], dtype=alpha.dtype).index_add(0, receiver, alpha)
        assert torch.allclose(sums[has_edges], torch.ones_like(sums[has_edges]), atol=1e-13)
        assert alpha.min() > 0 and alpha.std() > 1e-3  # not uniform: the logits depend on the geometry
        assert (alpha[:, 0] - alpha[:, 1]).abs().max() > 1e-4  # the heads differ
    for reflect in (False, True):
        R = random_orthogonal(5 + reflect, reflect)
        moved = net.attention_weights(species, edge_index, vectors @ R.T)
        for alpha, alpha_moved in zip(weights, moved):
            assert torch.allclose(alpha_moved, alpha, atol=1e-12, rtol=0)


def test_attention_fades_out_at_the_cutoff():
    """A neighbour's weight vanishes as it reaches the cutoff; a receiver's only edge then stops contributing."""
    net = representation()
    species = torch.tensor([1, 2, 0])
    # 0<-1, 1<-0 at 1.1 Å; 0<-2, 2<-0 at r (atom 2's only edge)
    edge_index = torch.tensor([[1, 0, 2, 0], [0, 1, 0, 2]])

    def run(r):
        vectors = torch.tensor([[1.1, 0, 0], [-1.1, 0, 0], [0, r, 0], [0, -r, 0]], dtype=torch.float64)
        with torch.no_grad():
            return net.attention_weights(species, edge_index, vectors), net(species, edge_index, vectors)

    weights = []
    for gap in (1e-2, 1e-3, 1e-4):
        alpha, _ = run(CUTOFF - gap)
        weights.append(float(alpha[0][2].max()))
        assert alpha[0][3].min() == pytest.approx(1.0)  # atom 2's only edge
    assert weights[0] < 1e-4 and weights[2] < 2e-3 * weights[1] < 4e-6 * weights[0]  # the p = 6 envelope: cubic

    # beyond the cutoff the edges are gone; the features approach that limit (after a start where the
    # layer norms magnify atom 2's directional features, which vanish without its neighbour)
    with torch.no_grad():
        alone = net(species, edge_index[:, :2], torch.tensor([[1.1, 0, 0], [-1.1, 0, 0]], dtype=torch.float64))
    gaps = [float((run(CUTOFF - gap)[1] - alone).abs().max()) for gap in (1e-3, 1e-4, 1e-5)]
    assert gaps[2] < 1e-6 and gaps[2] < gaps[1] < gaps[0]


def test_isolated_atoms_depend_on_their_element_only():
    net = representation()
    species = torch.tensor([0, 1, 2, 1, 0])
    empty = torch.zeros(2, 0, dtype=torch.long)
    vectors = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    h = net(species, empty, vectors)
    assert torch.isfinite(h).all()
    assert torch.allclose(h[0], h[4], atol=1e-14) and torch.allclose(h[1], h[3], atol=1e-14)
    assert (h[0] - h[1]).abs().max() > 1e-3
    assert h[:, SMALL["channels"]:].abs().max() == 0  # no edge: no direction, no handedness
    # the same atoms next to a molecule, out of its reach: the same features
    pos = torch.cat([molecule(2), torch.tensor([[20.0, 0, 0], [0, 20.0, 0]], dtype=torch.float64)])
    numbers = torch.cat([NUMBERS, torch.tensor([1, 8])])
    s, edge_index, v = inputs(pos, numbers)
    together = net(s, edge_index, v)
    assert torch.allclose(together[9], h[0], atol=1e-14) and torch.allclose(together[10], h[2], atol=1e-14)


def test_layer_norm_normalises_and_is_equivariant():
    """Equiformer's norm on its irreps: 0e centred and of unit RMS, others of unit RMS component; equivariant."""
    irreps = Equiformer(3, CUTOFF, **SMALL, parity=True).irreps_out
    torch.manual_seed(3)
    x = torch.randn(6, irreps.dim, dtype=torch.float64) * 3 + 1
    norm = LayerNorm(irreps).double()
    y = norm(x)
    for (mul, ir), sl in zip(irreps, irreps.slices()):
        block, out = x[:, sl].reshape(6, mul, ir.dim), y[:, sl].reshape(6, mul, ir.dim)
        if ir.l == 0 and ir.p == 1:
            assert out.mean(dim=(1, 2)).abs().max() < 1e-14
            centred = block - block.mean(dim=(1, 2), keepdim=True)
        else:
            centred = block
        expected = centred / (centred.pow(2).mean(dim=(1, 2), keepdim=True) + norm.eps).sqrt()
        assert torch.allclose(out, expected, atol=1e-14)
        # RMS of the copies' norms: sqrt(2l + 1) (unit components)
        assert torch.allclose(out.pow(2).sum(-1).mean(-1), torch.full((6,), ir.dim * 1.0, dtype=x.dtype), rtol=1e-4)
    with torch.no_grad():  # a trained norm: non-trivial scales and biases
        norm.weight.normal_()
        norm.bias.normal_()
    for reflect in (False, True):
        D = irreps.D_from_matrix(random_orthogonal(7 + reflect, reflect))
        assert torch.allclose(norm(x @ D.T), norm(x) @ D.T, atol=1e-12)


def test_bad_hyperparameters_are_named():
    base = {"name": NAME, "species": ["H"], "cutoff": 3.0}
    with pytest.raises(ValueError, match=r"model.channels \(6\) must be a multiple of model.num_heads \(4\)"):
        build_model({**base, "channels": 6, "num_heads": 4})
    with pytest.raises(ValueError, match=r"model.attention must be one of \['dot', 'mlp'\], got 'softmax'"):
        build_model({**base, "attention": "softmax"})
    with pytest.raises(ValueError, match=r"model.num_heads: 0 is outside"):
        build_model({**base, "num_heads": 0})


def test_package_calculator_and_export(tmp_path):
    """Packaged, in the ASE calculator and through torch.export (edges dynamic, zero included): the same numbers.

    (That it trains is checked for every family by test_overfit.py.)"""
    family_workflow.check_package_calculator_and_export(NAME, SMALL, tmp_path)


def test_irreps_out_and_parameter_count():
    net = Equiformer(3, CUTOFF, **SMALL)
    assert net.irreps_out == Irreps("4x0e + 4x1o + 4x2e")
    assert Equiformer(3, CUTOFF, **SMALL, parity=True).irreps_out == Irreps("4x0e + 4x0o + 4x1o + 4x1e + 4x2e + 4x2o")
    assert 0 < sum(p.numel() for p in net.parameters()) < 50_000
    assert math.isclose(net.degree_embedding.norm, 1 / math.sqrt(10.0))
