"""Whole-matrix losses of a Kohn-Sham matrix. ``loss_metric: orthonormal``: the mean squared element of
``X^T (H - H_ref) X`` over each structure's whole matrix (``X`` its functions orthonormalised by PySCF's overlap
without the combinations an initial guess drops); ``density_matrix``: the first-order change of the density
matrix, ``2 (C_o^T dH C_v) / (e_a - e_i)`` in the reference's orbitals, checked against the density matrices
themselves. Both checked element by element against loops over atoms and pairs, invariant under rotations and
reflections in float64, masking a structure without a reference, and trained from a config."""

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

pytest.importorskip("pyscf")

import clebsch  # noqa: E402
from clebsch import o3  # noqa: E402
from clebsch.basis import assemble_matrix  # noqa: E402
from clebsch.basis.pyscf import PREDICTED_OVERLAP_CUTOFF, mole  # noqa: E402
from clebsch.data.io import read_structures  # noqa: E402
from clebsch.data.targets import graph_from_atoms  # noqa: E402
from clebsch.graph import batch  # noqa: E402
from clebsch.targets import TargetError, declare, resolve_targets  # noqa: E402
from clebsch.train.losses import WeightedLoss  # noqa: E402
from clebsch.train.trainer import train  # noqa: E402

from .conftest import quiet  # noqa: E402

ROOT = Path(__file__).parents[2]
DATA = ROOT / "examples" / "water_clusters.xyz.xz"
AO = {"file": str(ROOT / "examples" / "water_clusters.basis.json"), "key": "ao"}
DECLARED = {"fock_onsite": {"level": "atom", "basis": AO, "matrix": True, "unit": "Ha"},
            "fock": {"level": "edge", "basis": AO, "matrix": True, "unit": "Ha", "loss_metric": "orthonormal"}}
KEYS = {"fock_onsite": "fock", "fock": "fock"}


@pytest.fixture(scope="module")
def frames():
    return read_structures(DATA, "95:97") + read_structures(DATA, "120:121")  # two monomers and a dimer


def _graphs(frames, targets, cutoff=3.0):
    return [graph_from_atoms(a, cutoff, keys=KEYS, targets=targets, dtype=torch.float64) for a in frames]


def _noisy(graph, seed):
    """Predictions: the reference blocks plus noise of model size (1e-3 Ha), where the reference exists."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in ("fock_onsite", "fock"):
        ref = torch.nan_to_num(graph.targets[name])
        out[name] = (ref + 1e-3 * torch.randn(ref.shape, generator=gen, dtype=torch.float64)).requires_grad_()
    return out


def _orbitals(basis, atoms, h_ref):
    """Reference orbitals ``C`` (S-orthonormal), energies and the overlap, in clebsch order, float64."""
    s = basis.matrix_to_clebsch(atoms.numbers.tolist(), mole(atoms, basis).intor("int1e_ovlp")).numpy()
    values, vectors = np.linalg.eigh(s)
    x = vectors / np.sqrt(values)
    e, c = np.linalg.eigh(x.T @ h_ref @ x)
    return x @ c, e, s


def _by_loops(basis, frames, graphs, out, metric="orthonormal", cutoff=PREDICTED_OVERLAP_CUTOFF):
    """The same term by assembling each structure's matrices atom by atom and pair by pair."""
    total, count = 0.0, 0
    atom0 = edge0 = 0
    for atoms, g in zip(frames, graphs):
        z = atoms.numbers.tolist()
        n, e = g.num_atoms, g.num_edges
        blocks = [assemble_matrix(basis, z, out["fock_onsite"][atom0:atom0 + n].detach(),
                                  out["fock"][edge0:edge0 + e].detach(), g.edge_index),
                  assemble_matrix(basis, z, g.targets["fock_onsite"], g.targets["fock"], g.edge_index)]
        h, h_ref = blocks[0].numpy(), torch.nan_to_num(blocks[1]).numpy()
        if metric == "orthonormal":
            s = basis.matrix_to_clebsch(z, mole(atoms, basis).intor("int1e_ovlp")).numpy()
            values, vectors = np.linalg.eigh(s)
            keep = values > max(cutoff, 1e-8 * values.max())
            x = vectors[:, keep] / np.sqrt(values[keep])
            d = x.T @ (h - h_ref) @ x
        else:
            c, eps, _ = _orbitals(basis, atoms, h_ref)
            occ = int(sum(z)) // 2
            d = 2 * (c[:, :occ].T @ (h - h_ref) @ c[:, occ:]) / (eps[None, occ:] - eps[:occ, None])
        total += float((d ** 2).sum())
        count += d.size
        atom0 += n
        edge0 += e
    return total / count


def _declared(metric):
    return {**DECLARED, "fock": {**DECLARED["fock"], "loss_metric": metric}}


@pytest.mark.parametrize("metric", ["orthonormal", "density_matrix"])
def test_the_term_is_the_whole_matrix_by_loops(frames, metric):
    targets = resolve_targets(_declared(metric))
    graphs = _graphs(frames, targets)
    g = batch(graphs)
    out = _noisy(g, 0)
    loss, parts = WeightedLoss({"fock": 1.0}, targets=targets)(out, g)
    assert parts["fock"] == pytest.approx(_by_loops(targets["fock"].basis, frames, graphs, out, metric), rel=1e-9)
    loss.backward()
    assert out["fock"].grad.abs().sum() > 0 and out["fock_onsite"].grad.abs().sum() > 0
    # a structure without its reference (the dimer) is left out, not counted as zero
    g.targets["fock"][g.batch[g.edge_index[1]] == 2] = float("nan")
    masked = WeightedLoss({"fock": 1.0}, targets=targets)(out, g)[1]["fock"]
    assert masked == pytest.approx(_by_loops(targets["fock"].basis, frames[:2], graphs[:2], {
        k: v[: graphs[0].num_atoms + graphs[1].num_atoms] if k == "fock_onsite" else
        v[: graphs[0].num_edges + graphs[1].num_edges] for k, v in out.items()}, metric), rel=1e-9)


def test_density_matrix_term_is_the_first_order_change_of_the_density_matrix(frames):
    """For a small symmetric error dH, the guess's density matrix 2 C'_o C'_o^T (orbitals of H + dH) differs from
    the reference's by what the term's entries say: in the reference orbitals' basis, its occupied-virtual block."""
    targets = resolve_targets(_declared("density_matrix"))
    basis = targets["fock"].basis
    atoms = frames[2]
    g = graph_from_atoms(atoms, 3.0, keys=KEYS, targets=targets, dtype=torch.float64)
    z = atoms.numbers.tolist()
    gen = torch.Generator().manual_seed(4)
    noise = {k: 1e-6 * torch.randn(torch.nan_to_num(g.targets[k]).shape, generator=gen, dtype=torch.float64)
             for k in ("fock_onsite", "fock")}
    noise["fock_onsite"] = noise["fock_onsite"] + noise["fock_onsite"].transpose(1, 2)
    pairs = {tuple(p): e for e, p in enumerate(g.edge_index.T.tolist())}
    for (j, i), e in pairs.items():  # the block of (i, j) is the transpose of that of (j, i): a symmetric H
        if j < i:
            noise["fock"][pairs[(i, j)]] = noise["fock"][e].T
    out = {k: torch.nan_to_num(g.targets[k]) + noise[k] for k in noise}
    term = WeightedLoss({"fock": 1.0}, targets=targets)(out, g)[1]["fock"]
    h_ref = assemble_matrix(basis, z, torch.nan_to_num(g.targets["fock_onsite"]),
                            torch.nan_to_num(g.targets["fock"]), g.edge_index).numpy()
    h = assemble_matrix(basis, z, out["fock_onsite"], out["fock"], g.edge_index).numpy()
    assert np.abs(h - h.T).max() < 1e-15
    occ = int(sum(z)) // 2
    c, _, s = _orbitals(basis, atoms, h_ref)
    c_new, _, _ = _orbitals(basis, atoms, h)
    dp = 2 * c_new[:, :occ] @ c_new[:, :occ].T - 2 * c[:, :occ] @ c[:, :occ].T
    block = (c.T @ s @ dp @ s @ c)[:occ, occ:]
    assert term == pytest.approx(float((block ** 2).mean()), rel=1e-4)
    assert term > 0


def test_near_dependent_combinations_weigh_more_in_the_orthonormal_term(frames):
    targets = resolve_targets(DECLARED)
    g = batch(_graphs(frames, targets))
    out = _noisy(g, 0)
    orthonormal = WeightedLoss({"fock": 1.0}, targets=targets)(out, g)[1]["fock"]
    plain = WeightedLoss({"fock": 1.0}, targets=resolve_targets({**DECLARED, "fock": {
        k: v for k, v in DECLARED["fock"].items() if k != "loss_metric"}}))(out, g)[1]["fock"]
    assert orthonormal > 3 * plain


@pytest.mark.parametrize("metric", ["orthonormal", "density_matrix"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_term_is_invariant_under_rotations_and_reflections(frames, sign, metric):
    targets = resolve_targets(_declared(metric))
    basis = targets["fock"].basis
    atoms = frames[2]
    g = graph_from_atoms(atoms, 3.0, keys=KEYS, targets=targets, dtype=torch.float64)
    out = _noisy(g, 1)
    torch.manual_seed(5)
    r = o3.rand_matrix(dtype=torch.float64) * sign
    d = basis.union_irreps.D_from_matrix(r)
    turned = atoms.copy()
    turned.positions = atoms.positions @ r.numpy().T
    turned.info["fock"] = np.zeros(1)  # replaced below: the blocks are turned with the basis's own D
    g_rot = graph_from_atoms(turned, 3.0, keys={}, targets=targets, dtype=torch.float64)
    assert torch.equal(g.edge_index, g_rot.edge_index)
    for name in ("fock_onsite", "fock"):
        ref = g.targets[name]  # the functions an atom lacks (whole irreps) stay missing
        g_rot.targets[name] = torch.where(torch.isfinite(ref), d @ torch.nan_to_num(ref) @ d.T, ref)
    out_rot = {k: d @ v.detach() @ d.T for k, v in out.items()}
    loss = WeightedLoss({"fock": 1.0}, targets=targets)
    a, b = loss(out, g)[1]["fock"], loss(out_rot, g_rot)[1]["fock"]
    assert b == pytest.approx(a, rel=1e-9)


def test_declarations_and_missing_pieces_are_named(frames):
    with pytest.raises(TargetError, match=r"fock_onsite.*orthonormal measures a whole matrix.*level: edge"):
        declare("fock_onsite", {**DECLARED["fock_onsite"], "loss_metric": "orthonormal"})
    with pytest.raises(TargetError, match=r"rho.*orthonormal measures a whole matrix"):
        declare("rho", {"level": "atom", "basis": AO, "loss_metric": "orthonormal"})
    with pytest.raises(TargetError, match=r"allowed values: overlap, coulomb \(a density\), orthonormal"):
        declare("fock", {**DECLARED["fock"], "loss_metric": "lowdin"})
    targets = resolve_targets(DECLARED)
    g = batch(_graphs(frames[:1], targets))
    out = _noisy(g, 2)
    with pytest.raises(ValueError, match=r"'fock' has loss_metric: orthonormal.*on-site blocks of the same basis"):
        WeightedLoss({"fock": 1.0}, targets=targets)({"fock": out["fock"]}, g)
    targets = resolve_targets(_declared("density_matrix"))
    g = batch(_graphs(frames[:1], targets))
    g.total_charge[:] = 1.0  # an open shell: no closed-shell density matrix to compare
    with pytest.raises(ValueError, match=r"'fock': loss_metric: density_matrix .* structure 0 of the batch has 9 "
                                         r"electrons"):
        WeightedLoss({"fock": 1.0}, targets=targets)(out, g)


@pytest.mark.parametrize("metric", ["orthonormal", "density_matrix"])
def test_a_matrix_trains_with_a_whole_matrix_loss(tmp_path, metric):
    data = tmp_path / "water.xyz"
    ase.io.write(data, read_structures(DATA, "95:103") + read_structures(DATA, "120:124"))
    config = {
        "run_dir": str(tmp_path / "run"), "seed": 0, "dtype": "float64",
        "model": {"name": "nequip", "cutoff": 3.0, "num_layers": 1, "channels": 4, "lmax": 2,
                  "outputs": ["energy", "fock_onsite", "fock"], "targets": _declared(metric)},
        "data": {"train": str(data), "valid_fraction": 0.25, "batch_size": 3, "keys": {"energy": "energy", **KEYS}},
        "loss": {"weights": {"energy": 0.0, "forces": 0.0, "fock_onsite": 1.0, "fock": 1.0}},
        "training": {"max_epochs": 3, "progress": False, "plots": False},
    }
    result = train(config, log=quiet)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4
    model = clebsch.load(result["model_path"])
    assert model.targets["fock"].loss_metric == metric


def test_an_open_shell_frame_is_named_before_training(tmp_path):
    from clebsch.train.config import ConfigError

    frames = read_structures(DATA, "95:101")
    frames[4].info["charge"] = 1  # 9 electrons: no closed-shell density matrix
    data = tmp_path / "water.xyz"
    ase.io.write(data, frames)
    config = {
        "run_dir": str(tmp_path / "run"), "seed": 0, "dtype": "float64",
        "model": {"name": "nequip", "cutoff": 3.0, "num_layers": 1, "channels": 4, "lmax": 1,
                  "outputs": ["energy", "fock_onsite", "fock"], "targets": _declared("density_matrix")},
        "data": {"train": str(data), "valid_fraction": 0.25, "batch_size": 3, "keys": {"energy": "energy", **KEYS}},
        "loss": {"weights": {"energy": 0.0, "forces": 0.0, "fock_onsite": 1.0, "fock": 1.0}},
        "training": {"max_epochs": 1, "progress": False, "plots": False},
    }
    with pytest.raises(ConfigError, match=r"water.xyz', frame 4: target 'fock' has loss_metric: density_matrix.*"
                                          r"9 electrons"):
        train(config, log=quiet)
    assert not (tmp_path / "run" / "checkpoints").exists() or not list((tmp_path / "run" / "checkpoints").iterdir())


def test_the_overlap_cutoff_of_the_loss_is_declared_and_used():
    """``overlap_cutoff: 0`` keeps every combination of functions in the term (it equals the loops' term without
    a cutoff, and exceeds the default's on ethanol, whose smallest overlap eigenvalue is ~3e-3), survives the
    plain-config round trip, and is checked."""
    from clebsch.targets import as_declarations

    spec = {**DECLARED, "fock": {**DECLARED["fock"], "overlap_cutoff": 0}}
    targets = resolve_targets(spec)
    assert targets["fock"].overlap_cutoff == 0.0
    assert as_declarations(targets)["fock"]["overlap_cutoff"] == 0.0
    ethanol = read_structures(DATA, "215:216")
    graphs = _graphs(ethanol, targets)
    g = batch(graphs)
    out = _noisy(g, 0)
    every = WeightedLoss({"fock": 1.0}, targets=targets)(out, g)[1]["fock"]
    assert every == pytest.approx(_by_loops(targets["fock"].basis, ethanol, graphs, out, cutoff=0.0), rel=1e-9)
    default = WeightedLoss({"fock": 1.0}, targets=resolve_targets(DECLARED))(out, g)[1]["fock"]
    assert every > 1.5 * default
    with pytest.raises(TargetError, match=r"fock.overlap_cutoff: expected a number, got 'lots'"):
        declare("fock", {**DECLARED["fock"], "overlap_cutoff": "lots"})
    with pytest.raises(TargetError, match=r"overlap_cutoff must be a number in \[0, 1\), got -0.1"):
        declare("fock", {**DECLARED["fock"], "overlap_cutoff": -0.1})
    with pytest.raises(TargetError, match=r"overlap_cutoff is for loss_metric: orthonormal"):
        declare("fock", {**_declared("density_matrix")["fock"], "overlap_cutoff": 0.0})
