"""The equivariant autoencoder: invariant latent, equivariant frame and reconstruction, permutation-free loss."""

import contextlib
import itertools

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from clebsch.graph import AtomicGraph, batch
from clebsch.o3 import rand_matrix
from clebsch.studies.autoencoder import (
    EquivariantAutoencoder,
    embed,
    gram_schmidt,
    reconstruction_loss,
    reconstruction_rmsd,
    train_autoencoder,
)

F64 = torch.float64
CUTOFF = 5.0


@contextlib.contextmanager
def float64():
    """Build in float64, so the Clebsch-Gordan buffers are exact to float64 rather than float32 cast up."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def conformers(n, seed=0, sigma=0.1):
    """Ethanol with Gaussian displacements: no symmetry left, chiral."""
    base = molecule("CH3CH2OH")
    gen = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += sigma * gen.standard_normal(atoms.positions.shape)
        out.append(atoms)
    return out


def graph_of(positions, numbers):
    return AtomicGraph.from_tensors(torch.as_tensor(positions, dtype=F64), numbers, cutoff=CUTOFF)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    with float64():
        return EquivariantAutoencoder(molecule("CH3CH2OH").numbers, latent_dim=4, chiral_dim=2, channels=4,
                                      lmax=1, num_layers=3, cutoff=CUTOFF, decoder_hidden=(16,))


@pytest.fixture(scope="module")
def ethanol():
    atoms = conformers(1, seed=1)[0]
    return torch.tensor(atoms.positions, dtype=F64), atoms.numbers.tolist()


def transforms(n=6, seed=0):
    """Random orthogonal matrices (half of them reflections), translations and atom permutations."""
    gen = torch.Generator().manual_seed(seed)
    Q = rand_matrix(n, generator=gen, dtype=F64)
    Q[1::2] = -Q[1::2]
    t = 3.0 * torch.randn(n, 3, generator=gen, dtype=F64)
    perms = [torch.randperm(9, generator=gen) for _ in range(n)]
    return list(zip(Q, t, perms))


def test_latent_is_invariant_and_chirality_changes_sign_under_reflections(model, ethanol):
    pos, numbers = ethanol
    ref = model.encode(graph_of(pos, numbers))
    assert ref.chirality.abs().min() > 1e-6  # a chiral conformer has a chirality: the check below is not empty
    assert ref.latent.std() > 1e-3
    for Q, t, perm in transforms():
        moved = graph_of((pos @ Q.T + t)[perm], [numbers[i] for i in perm])
        enc = model.encode(moved)
        assert torch.allclose(enc.latent, ref.latent, rtol=0, atol=1e-10)
        assert torch.allclose(enc.chirality, torch.det(Q) * ref.chirality, rtol=0, atol=1e-10)
    # and through the public embedding, for a batch
    mirrored = graph_of(-pos, numbers)
    z = embed(model, [graph_of(pos, numbers), mirrored])
    assert torch.allclose(z[1, :4], z[0, :4], atol=1e-10) and torch.allclose(z[1, 4:], -z[0, 4:], atol=1e-10)


def test_predicted_rotation_is_equivariant(model, ethanol):
    pos, numbers = ethanol
    R = model.encode(graph_of(pos, numbers)).rotation[0].detach()
    assert torch.allclose(R.T @ R, torch.eye(3, dtype=F64), atol=1e-12)
    assert float(torch.det(R)) == pytest.approx(1.0, abs=1e-12)
    for Q, t, perm in transforms(seed=1):
        moved = model.encode(graph_of((pos @ Q.T + t)[perm], [numbers[i] for i in perm])).rotation[0].detach()
        flip = torch.diag(torch.tensor([1.0, 1.0, float(torch.det(Q))], dtype=F64))
        assert torch.allclose(moved, Q @ R @ flip, atol=1e-10)  # a proper rotation, as Q R is not for a reflection


def test_reconstruction_is_o3_equivariant_and_the_loss_invariant(model, ethanol):
    pos, numbers = ethanol
    g = graph_of(pos, numbers)
    recon = model(g)[0]
    loss, rmsd = reconstruction_loss(model, g)
    for Q, t, perm in transforms(seed=2):
        moved = graph_of((pos @ Q.T + t)[perm], [numbers[i] for i in perm])
        assert torch.allclose(model(moved)[0], recon @ Q.T + t, atol=1e-10)
        loss2, rmsd2 = reconstruction_loss(model, moved)
        assert loss2.item() == pytest.approx(loss.item(), abs=1e-10)
        assert float(rmsd2[0]) == pytest.approx(float(rmsd[0]), abs=1e-10)


def test_hungarian_loss_is_the_best_matching_within_elements(model, ethanol):
    pos, numbers = ethanol
    g = graph_of(pos, numbers)
    loss, rmsd = reconstruction_loss(model, g)
    recon = model(g)[0].detach()  # slots: 6 H, 2 C, 1 O
    slots = model.slot_numbers.tolist()
    numbers_t = torch.tensor(numbers)
    by_element = {z: (torch.nonzero(numbers_t == z).flatten().tolist(), [s for s, w in enumerate(slots) if w == z])
                  for z in (1, 6, 8)}
    best = np.inf
    for hp in itertools.permutations(by_element[1][1]):
        for cp in itertools.permutations(by_element[6][1]):
            slot_of = dict(zip(by_element[1][0], hp)) | dict(zip(by_element[6][0], cp))
            slot_of |= dict(zip(*by_element[8]))
            idx = torch.tensor([slot_of[i] for i in range(9)])
            best = min(best, float((pos - recon[idx]).pow(2).sum(-1).mean()))
    assert loss.item() == pytest.approx(best, rel=1e-12)
    assert float(rmsd[0]) == pytest.approx(best**0.5, rel=1e-12)


def test_gram_schmidt_gives_proper_rotations():
    gen = torch.Generator().manual_seed(3)
    v1, v2 = torch.randn(2, 5, 3, generator=gen, dtype=F64)
    R = gram_schmidt(v1, v2)
    assert torch.allclose(R.transpose(-1, -2) @ R, torch.eye(3, dtype=F64).expand(5, 3, 3), atol=1e-12)
    assert torch.allclose(torch.det(R), torch.ones(5, dtype=F64), atol=1e-12)
    assert torch.allclose(R[..., 0], v1 / v1.norm(dim=-1, keepdim=True), atol=1e-12)
    Q = -rand_matrix(generator=gen, dtype=F64)
    flip = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=F64))
    assert torch.allclose(gram_schmidt(v1 @ Q.T, v2 @ Q.T), Q @ R @ flip, atol=1e-12)


def test_a_few_training_steps_reduce_the_reconstruction_error():
    torch.manual_seed(0)
    frames = conformers(12, seed=4)
    model = EquivariantAutoencoder(frames[0].numbers, latent_dim=4, channels=2, lmax=1, num_layers=3,
                                   cutoff=CUTOFF, decoder_hidden=(16,))
    graphs = [AtomicGraph.from_ase(a, cutoff=CUTOFF) for a in frames]
    before = reconstruction_rmsd(model, graphs[8:]).mean()
    history = train_autoencoder(model, graphs[:8], graphs[8:], epochs=8, batch_size=4, lr=1e-2)
    assert len(history["train_rmsd"]) == len(history["validation_rmsd"]) == 8
    assert history["train_loss"][-1] < 0.7 * history["train_loss"][0]
    assert reconstruction_rmsd(model, graphs[8:]).mean() < 0.9 * before  # held out
    assert embed(model, graphs).shape == (12, 6)


def test_errors_name_the_structure_and_the_composition(model, ethanol):
    pos, numbers = ethanol
    water = molecule("H2O")
    g = batch([graph_of(pos, numbers), AtomicGraph.from_ase(water, cutoff=CUTOFF, dtype=F64)])
    with pytest.raises(ValueError, match=r"structure 1 of the batch has atoms H2O; the model reconstructs C2H6O"):
        model.encode(g)
    crystal = Atoms("C2H6O", positions=pos.numpy(), cell=[8.0, 8.0, 8.0], pbc=True)
    with pytest.raises(ValueError, match="periodic"):
        model.encode(AtomicGraph.from_ase(crystal, cutoff=CUTOFF, dtype=F64))
    with pytest.raises(ValueError, match="built with cutoff 6.0 Å, the model with 5.0 Å"):
        model.encode(AtomicGraph.from_tensors(pos, numbers, cutoff=6.0))
    with pytest.raises(ValueError, match="num_layers >= 3"):
        EquivariantAutoencoder(numbers, num_layers=2, channels=2)
    with pytest.raises(ValueError, match="at least 3 atoms"):
        EquivariantAutoencoder([1, 1])
