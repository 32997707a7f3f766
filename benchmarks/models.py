"""Model speed: clebsch families against their reference implementations, at matched hyperparameters.

Families and references (``--models``, default ``nequip,mace,dimenet``):

==========  =====================================================  ===================
family      reference                                              where it runs
==========  =====================================================  ===================
nequip      nequip 0.19.1 ``NequIPGNNModel``                       venv ``nequip``
mace        mace-torch ``MACE``                                    venv ``mace``
dimenet     PyTorch Geometric ``DimeNetPlusPlus``                  this process
allegro     nequip-allegro 0.8.3 ``AllegroModel``                  venv ``allegro``
tensornet   torchmd-net 3.1.0 ``TensorNet`` (its Warp kernels,     venv ``torchmdnet``
            and again with its plain-PyTorch operations)
et          torchmd-net 3.1.0 ``TorchMD_ET``                       venv ``torchmdnet``
visnet      PyTorch Geometric ``ViSNet``                           this process
==========  =====================================================  ===================

Two inputs, float32, ``torch.set_num_threads(2)`` (``--threads``):

* a batch of ethanol frames (default 16 from ../shared/data/ethanol/train.xyz);
* a periodic water-like box of 1,000 atoms (density 0.1 atoms/Å³);
* with ``--alloy N``, a periodic fcc box of about N atoms of 20 elements drawn at
  random (lattice constant 3.6 Å, rattled by 0.05 Å; 18 neighbours per atom
  within the cutoff): the many-element materials case, for which the models must
  know at least 20 elements (``--species 20`` or more). A MACE that computes
  every element's product basis for every atom pays for each element it knows.

With ``--compile``, each family is timed again through ``training.compile``'s
path (rows ``FAMILY+c``): the forces captured as forward operations, compiled
with TorchInductor, so that a training step is one forward and one backward.

Two steps per model and input: *train* (energy + forces by autograd with
``create_graph``, an energy + forces loss, backward, an optimiser step) and
*infer* (energy + forces). Every model sees the same graph: the same edges and
cell shifts, so the same edge vectors ``r_j - r_i + shift`` (``j`` the sender
``edge_index[0]``, ``i`` the receiver ``edge_index[1]``; the edge set holds
both directions of every pair, and no self-loops).

Matched hyperparameters (``NEQUIP``, ``MACE``, ... below):

* NequIP: 3 layers, 32 channels, l_max 2, both parities, 8 Bessels, radial MLP
  2 x 64. nequip's last layer outputs scalars only (its convolution has only
  the paths into ``0e``); clebsch's energy-only model does the same
  (``scalars_only``).
* MACE: 2 layers, 32 channels, l_max 2 for the harmonics and the features,
  correlation 3, 8 Bessels, radial MLP 3 x 64. Both sides' last symmetric
  contraction computes its ``0e`` output only.
* DimeNet++: 3 blocks, 64 hidden, 32 triplet, 8 basis and 128 output channels,
  7 x 6 spherical basis, envelope exponent 5.
* Allegro: 2 layers, l_max 2, both parities (tensor track ``0e 0o 1o 1e 2e
  2o``), 16 tensor channels, 64 scalar (latent) features, 8 trainable Bessels
  with the p = 6 polynomial envelope, two-body MLP and latent MLPs with one
  hidden layer of 64, a readout MLP with one hidden layer of 32 (nequip-allegro
  reads it per pair, clebsch per atom from the summed pair scalars).
  Not matched, because the two are built differently: nequip-allegro's
  default path-channel coupling (a weight per path *and* channel,
  ``tp_path_channel_coupling``; ``ALLEGRO_REF`` switches it) against clebsch's
  path weights shared by the channels followed by a channel mixing per irrep;
  nequip-allegro's latent MLPs read all earlier scalars (dense connections),
  clebsch's the previous scalars only (both compute only the ``0e`` output of
  the last layer's tensor product when, as here, nothing reads the tensor
  track); element embedding (nequip-allegro: products of learned centre and
  neighbour embeddings with a linear map of the Bessels; clebsch: one-hot
  elements joined to the Bessels as the two-body MLP's input).
* TensorNet: 2 layers, 64 channels, 32 radial functions, cosine cutoff,
  O(3), torchmd-net's ``Scalar`` energy head (64 -> 32 -> 1; clebsch
  ``readout_hidden`` 32). Not matched: the radial basis (torchmd-net:
  exponential-normal; clebsch: Gaussians, the same count), clebsch's readout
  MLP has one more 64 x 64 layer.
* Equivariant Transformer: 3 layers, 64 channels, 8 heads, 32
  exponential-normal functions (not trainable), SiLU attention, distance
  filters on keys and values, the cutoff on the values (torchmd-net
  ``vector_cutoff=True``; clebsch puts it on both attention and values), the
  same ``Scalar`` head.
* ViSNet: 3 layers, 64 channels, 8 heads, 32 exponential-normal functions,
  l_max 1, PyG's ``vecnorm_type=None`` (clebsch scales the vectors by
  ``1/sqrt(1 + mean |v|^2)``, a few elementwise operations), PyG's own
  ``EquivariantScalar`` head (two gated equivariant blocks 64 -> 32 -> 1)
  against clebsch's scalar readout (64 -> 32 -> 1).
  For ET and ViSNet, clebsch's last layer skips the vector update that nothing
  reads in an energy-and-forces model (``scalars_only``); the references
  compute it.

torchmd-net and PyG embed atomic numbers up to ``max_z``; it is set to the
largest atomic number the models know plus one, so their embedding tables
have a few more rows than clebsch's (one per element). Parameter counts of
both sides are printed. TensorNet, ET and ViSNet agree within ~10%;
nequip-allegro has ~25% more than clebsch's Allegro: its dense latent MLP
inputs, its per-pair readout on all layers' scalars and its first
projection that also makes the environment weights.

*Same graph.* The references whose ``forward`` builds its own neighbour list
(torchmd-net's ``TensorNet`` and ``TorchMD_ET``, PyG's ``ViSNet``) keep their
whole ``forward``, with their neighbour-list module (``.distance``)
replaced by :class:`GivenEdges`, which returns our ``edge_index``, the edge
vectors from the positions and shifts, and their lengths (torchmd-net and PyG
use the same convention: vector ``pos[edge_index[0]] - pos[edge_index[1]]``).
torchmd-net's TensorNet then prepares its Warp kernels' CSR graph from those
edges inside each call, as its own ``forward`` does. nequip, mace-torch and
nequip-allegro take ``edge_index`` and cell shifts as inputs (their vectors
run the other way: ``edge_index`` is given as is, with shifts negated).
PyG's ``DimeNetPlusPlus`` blocks are driven on our edges (its own
``forward`` builds a radius graph without cell shifts), with the triplets of
:func:`clebsch.models.dimenet.triplets` (PyG's own need torch-sparse).

The reference packages pin other e3nn versions (mace-torch: e3nn 0.4.4) or
bring their own dependencies (Warp), so each runs in its own virtual
environment: this script calls itself there as a worker on a saved copy of
the inputs. By default they are looked for in
``~/.cache/clebsch-bench/{mace,nequip,allegro,torchmdnet}``
(``$CLEBSCH_BENCH_DIR``), made with::

    python -m venv ~/.cache/clebsch-bench/mace && ~/.cache/clebsch-bench/mace/bin/pip install torch==2.13.0 mace-torch
    python -m venv ~/.cache/clebsch-bench/nequip && ~/.cache/clebsch-bench/nequip/bin/pip install torch==2.13.0 nequip==0.19.1
    python -m venv ~/.cache/clebsch-bench/allegro && ~/.cache/clebsch-bench/allegro/bin/pip install torch==2.13.0 \
        && ~/.cache/clebsch-bench/allegro/bin/pip install nequip==0.19.1 nequip-allegro==0.8.3
    python -m venv ~/.cache/clebsch-bench/torchmdnet && ~/.cache/clebsch-bench/torchmdnet/bin/pip install torch==2.13.0 \
        && ~/.cache/clebsch-bench/torchmdnet/bin/pip install torchmd-net==3.1.0

(torchmd-net 3.1.0 is pure Python; its TensorNet kernels are written in
NVIDIA Warp, ``warp-lang``, which compiles them for the CPU on first use
and caches them in ``~/.cache/warp``: the first run spends a minute there.)
Or point at other interpreters with ``--mace-python``, ``--nequip-python``,
``--allegro-python``, ``--torchmdnet-python`` (CLEBSCH_MACE_PYTHON, ...);
a missing one is skipped. PyG (ViSNet, DimeNet++) is imported here.

Prints milliseconds per step, the peak memory a step needs (the rise of the
process's peak resident memory during one step, after freed heap is returned
to the kernel; "MiB ratio" is the reference's over clebsch's: above 1 means
clebsch needs less), the arithmetic rate of the step's matrix
products against the machine's measured fp32 matrix-multiply peak (how far
from the hardware limit a step is, not only from a peer), ratios (reference
time / clebsch time: > 1 means clebsch is faster), and the parameter counts
of both sides.

    OMP_NUM_THREADS=2 python benchmarks/models.py [--frames 16] [--box 1000] [--repeats 5] [--threads 2] [--species 3] [--alloy 0]
        [--models nequip,mace,dimenet,allegro,tensornet,et,visnet]

``--species N`` makes every model know N elements (H, C, O and then the others by
atomic number, up to 89) while the inputs keep their three: the cost of a model
that has been built for many elements (materials data) on the same graphs.

On a machine shared with other jobs use ``--threads 1``: two threads then
spend most of their time waiting for each other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _systems import water_box

HERE = Path(__file__).resolve()
DATA = HERE.parents[2] / "shared" / "data" / "ethanol" / "train.xyz"
SPECIES = [1, 6, 8]


def species_list(n: int) -> list[int]:
    """H, C, O, then the other elements by atomic number: ``n`` of them (3 to 89)."""
    return ([1, 6, 8] + [z for z in range(2, 90) if z not in (1, 6, 8)])[:n]
CUTOFF = 4.0
AVG_NEIGHBORS = 12.0
THREADS = 2

NEQUIP = {"num_layers": 3, "channels": 32, "lmax": 2, "parity": True, "num_basis": 8,
          "radial_hidden": 64, "radial_layers": 2, "polynomial_p": 6}
MACE = {"num_layers": 2, "channels": 32, "lmax": 2, "correlation": 3, "num_basis": 8,
        "radial_hidden": 64, "radial_layers": 3, "polynomial_p": 6}
DIMENET = {"num_layers": 3, "hidden_channels": 64, "int_emb_size": 32, "basis_emb_size": 8, "out_emb_channels": 128,
           "num_spherical": 7, "num_radial": 6, "envelope_exponent": 5, "num_before_skip": 1, "num_after_skip": 2,
           "num_output_layers": 3}
ALLEGRO = {"num_layers": 2, "lmax": 2, "parity": True, "num_tensor_features": 16, "latent_dim": 64,
           "two_body_hidden": 64, "latent_hidden": 64, "num_basis": 8, "trainable_basis": True, "polynomial_p": 6,
           "readout_hidden": 32}
ALLEGRO_REF = {"tp_path_channel_coupling": True}  # nequip-allegro's default
TENSORNET = {"num_layers": 2, "channels": 64, "num_basis": 32, "readout_hidden": 32}
ET = {"num_layers": 3, "channels": 64, "num_heads": 8, "num_basis": 32, "readout_hidden": 32}
VISNET = {"num_layers": 3, "channels": 64, "num_heads": 8, "num_basis": 32, "readout_hidden": 32}

# family -> (clebsch registry name, clebsch hyperparameters)
FAMILIES = {
    "nequip": ("nequip", lambda: {**NEQUIP, "avg_num_neighbors": AVG_NEIGHBORS}),
    "mace": ("mace", lambda: {**MACE, "avg_num_neighbors": AVG_NEIGHBORS}),
    "dimenet": ("dimenet", lambda: DIMENET),
    "allegro": ("allegro", lambda: {**ALLEGRO, "avg_num_neighbors": AVG_NEIGHBORS}),
    "tensornet": ("tensornet", lambda: TENSORNET),
    "et": ("equivariant_transformer", lambda: ET),
    "visnet": ("visnet", lambda: VISNET),
}
# references run in a virtual environment: worker kind -> (venv, family, label)
WORKERS = {
    "nequip": ("nequip", "nequip", "nequip"),
    "mace": ("mace", "mace", "mace-torch"),
    "allegro": ("allegro", "allegro", "nequip-allegro"),
    "tensornet": ("torchmdnet", "tensornet", "torchmd-net"),
    "tensornet_torch": ("torchmdnet", "tensornet", "torchmd-net, torch ops"),
    "et": ("torchmdnet", "et", "torchmd-net"),
}


# ----------------------------------------------------------------------------- timing
def best_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def peak_rise_mib(fn) -> float:
    """The rise of the process's peak resident memory during one call of ``fn``, MiB (Linux; NaN elsewhere).

    Freed heap is handed back to the kernel first (``malloc_trim``) and the peak mark is reset
    (``/proc/self/clear_refs``), so that the figure is what the call needs on top of what is held
    (weights, inputs), not memory the allocator kept from an earlier call. Run alike for clebsch and the
    references (each reference in its own process)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024.0
    except (OSError, AttributeError):
        return float("nan")


def time_steps(energy_fn, positions, energy_ref, forces_ref, params, repeats):
    """``energy_fn(positions) -> energy [B]``; returns {"train": s, "infer": s}."""
    opt = torch.optim.SGD(params, lr=1e-9)

    def train():
        opt.zero_grad()
        pos = positions.detach().requires_grad_(True)
        energy = energy_fn(pos)
        forces = -torch.autograd.grad(energy.sum(), pos, create_graph=True)[0]
        loss = ((energy - energy_ref) ** 2).mean() + ((forces - forces_ref) ** 2).mean()
        loss.backward()
        opt.step()

    def infer():
        pos = positions.detach().requires_grad_(True)
        energy = energy_fn(pos)
        torch.autograd.grad(energy.sum(), pos)[0]

    return {"train": best_time(train, repeats), "infer": best_time(infer, repeats),
            "train_flop": count_flops(train), "infer_flop": count_flops(infer),
            "train_mib": peak_rise_mib(train), "infer_mib": peak_rise_mib(infer),
            "params": sum(p.numel() for p in params)}


def count_flops(fn) -> float:
    """Floating-point operations of the matrix products in one call (torch's FlopCounterMode: mm, bmm, einsum
    contractions; elementwise work and clebsch's C kernels, e.g. NequIP's and MACE's convolution, are not
    counted, so the rate below is a lower bound)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        with counter:
            fn()
    except RuntimeError:  # some models' own autograd hooks do not run under the counter
        return float("nan")
    return float(counter.get_total_flops())


def matmul_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """The machine's fp32 matrix-multiply rate (FLOP/s) at ``threads``: the best of ``repeats`` n x n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = best_time(lambda: a @ b, repeats)
    return 2 * n**3 / best


# ----------------------------------------------------------------------------- inputs
def alloy_box(n_atoms: int, elements: list[int], seed: int = 0):
    """An fcc box of about ``n_atoms`` atoms, each element of ``elements`` drawn at random, rattled."""
    from ase.build import bulk

    reps = max(1, round((n_atoms / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(reps)
    rng = np.random.default_rng(seed)
    atoms.numbers = rng.choice(elements, size=len(atoms))
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def make_inputs(frames: int, box: int, alloy: int = 0) -> dict:
    """The two graphs as plain tensors (so the reference workers need no clebsch)."""
    import ase.io
    from ase import Atoms

    from clebsch.graph import AtomicGraph, batch

    graphs = {}
    if frames > 0:
        atoms = ase.io.read(DATA, index=f":{frames}")
        graphs["ethanol"] = batch([AtomicGraph.from_ase(a, cutoff=CUTOFF, dtype=torch.float32) for a in atoms])
    if box > 0:
        pos, cell, numbers = water_box(box)
        graphs["box"] = AtomicGraph.from_ase(Atoms(numbers, positions=pos, cell=cell, pbc=True), cutoff=CUTOFF,
                                             dtype=torch.float32)
    if alloy > 0:
        graphs["alloy"] = AtomicGraph.from_ase(alloy_box(alloy, SPECIES[:20]), cutoff=CUTOFF, dtype=torch.float32)
    out = {}
    for name, g in graphs.items():
        out[name] = {
            "positions": g.positions.float(), "numbers": g.numbers, "edge_index": g.edge_index,
            "shifts": g.shifts.float(), "cell": g.cell.float(), "batch": g.batch, "num_graphs": g.num_graphs,
            "periodic": bool(g.pbc.any()),
            "energy": torch.randn(g.num_graphs), "forces": torch.randn(g.num_atoms, 3),
        }
    return out


def edge_vectors(d: dict, pos: torch.Tensor) -> torch.Tensor:
    """``r_j - r_i + shift`` of every edge (``j = edge_index[0]``, the sender; ``i = edge_index[1]``)."""
    sender, receiver = d["edge_index"]
    vectors = pos[sender] - pos[receiver]
    if d["periodic"]:
        vectors = vectors + torch.einsum("ei,eij->ej", d["shifts"], d["cell"][d["batch"][receiver]])
    return vectors


class GivenEdges(torch.nn.Module):
    """Stands in for a reference's neighbour-list module: our edges, their vectors and lengths.

    torchmd-net's ``OptimizedDistance`` and PyG ViSNet's ``Distance`` are called
    as ``distance(pos, batch[, box])`` and return ``(edge_index, lengths,
    vectors)`` with vectors ``pos[edge_index[0]] - pos[edge_index[1]]``: the
    convention of :func:`edge_vectors`. The vectors come as a copy: both
    references normalise them in place, which must not touch the tensor the
    lengths were computed from.
    """

    def __init__(self, d: dict):
        super().__init__()
        self.d = d

    def forward(self, pos, batch=None, box=None):
        vectors = edge_vectors(self.d, pos)
        return self.d["edge_index"], torch.linalg.norm(vectors, dim=-1), vectors.clone()


def max_z() -> int:
    """Rows of the atomic-number embeddings of torchmd-net and PyG: every element the models know."""
    return max(SPECIES) + 1


# ----------------------------------------------------------------------------- clebsch
def run_clebsch(inputs: dict, repeats: int, models=("nequip", "mace", "dimenet")) -> dict:
    from clebsch.models import build_model

    results = {}
    for family in models:
        name_in_registry, hyper = FAMILIES[family]
        torch.manual_seed(0)
        model = build_model({"name": name_in_registry, "species": SPECIES, "cutoff": CUTOFF, **hyper()}).float()
        for name, d in inputs.items():
            species = model.species_index(d["numbers"])
            # one isolated atom of each element present (its energy is subtracted, as the references'
            # atomic energies are): the elements the inputs have, not all those the model knows
            present = torch.unique(species)
            all_species = torch.cat([species, present])
            isolated = torch.searchsorted(present, species)

            def energy_fn(pos, d=d, species=species, all_species=all_species, isolated=isolated):
                feats = model.representation(all_species, d["edge_index"], edge_vectors(d, pos))
                e = model.energy_head(feats)[:, 0]
                e = e[: species.shape[0]] - e[species.shape[0]:][isolated]
                return torch.zeros(d["num_graphs"]).index_add(0, d["batch"], e)

            results[(family, name)] = time_steps(energy_fn, d["positions"], d["energy"], d["forces"],
                                                 list(model.parameters()), repeats)
    return results


def run_clebsch_compiled(inputs: dict, repeats: int, models) -> dict:
    """The same steps through ``training.compile``'s path (:class:`clebsch.train.compiled.CompiledForces`).

    The full model on an :class:`~clebsch.graph.AtomicGraph` (isolated atoms of every element it
    knows, per-structure sums), its forces captured as forward operations and compiled with
    TorchInductor: a training step is one forward and one backward; inference is the forward
    under ``no_grad``. Compilation is paid once per family (cached on disk) and reported.
    """
    from clebsch.graph import AtomicGraph
    from clebsch.models import build_model
    from clebsch.train.compiled import CompiledForces

    results = {}
    for family in models:
        name_in_registry, hyper = FAMILIES[family]
        torch.manual_seed(0)
        model = build_model({"name": name_in_registry, "species": SPECIES, "cutoff": CUTOFF, **hyper()}).float()
        compiled = CompiledForces(model)
        params = list(model.parameters())
        for name, d in inputs.items():
            n = d["positions"].shape[0]
            pbc = torch.full((d["num_graphs"], 3), d["periodic"])
            graph = AtomicGraph(positions=d["positions"], numbers=d["numbers"], edge_index=d["edge_index"],
                                shifts=d["shifts"], cell=d["cell"], pbc=pbc, batch=d["batch"],
                                n_atoms=torch.bincount(d["batch"], minlength=d["num_graphs"]),
                                n_edges=torch.bincount(d["batch"][d["edge_index"][1]], minlength=d["num_graphs"]),
                                cutoff=CUTOFF)
            start = time.perf_counter()
            if compiled(graph) is None:
                print(f"[{family} compiled] {compiled.failed}; skipped", file=sys.stderr)
                break
            first = time.perf_counter() - start
            opt = torch.optim.SGD(params, lr=1e-9)
            assert n == graph.num_atoms

            def train(graph=graph, d=d):
                opt.zero_grad()
                out = compiled(graph)
                loss = ((out["energy"] - d["energy"]) ** 2).mean() + ((out["forces"] - d["forces"]) ** 2).mean()
                loss.backward()
                opt.step()

            def infer(graph=graph):
                with torch.no_grad():
                    compiled(graph)

            results[(f"{family}+c", name)] = {
                "train": best_time(train, repeats), "infer": best_time(infer, repeats),
                "train_flop": count_flops(train), "infer_flop": count_flops(infer),
                "train_mib": peak_rise_mib(train), "infer_mib": peak_rise_mib(infer),
                "params": sum(p.numel() for p in params), "compile_s": first,
            }
    return results


# ----------------------------------------------------------------------------- reference in this process
def reference_dimenet(inputs: dict, repeats: int) -> dict:
    """PyTorch Geometric's DimeNet++ at the same hyperparameters, on the same edges: ``{("dimenet", input): times}``."""
    from torch_geometric.nn.models import DimeNetPlusPlus

    from clebsch.models.dimenet import triplets

    h = DIMENET
    torch.manual_seed(0)
    model = DimeNetPlusPlus(
        hidden_channels=h["hidden_channels"], out_channels=1, num_blocks=h["num_layers"],
        int_emb_size=h["int_emb_size"], basis_emb_size=h["basis_emb_size"], out_emb_channels=h["out_emb_channels"],
        num_spherical=h["num_spherical"], num_radial=h["num_radial"], cutoff=CUTOFF,
        envelope_exponent=h["envelope_exponent"], num_before_skip=h["num_before_skip"],
        num_after_skip=h["num_after_skip"], num_output_layers=h["num_output_layers"],
    ).float()
    results = {}
    for name, d in inputs.items():
        n = d["positions"].shape[0]
        j, i = d["edge_index"]  # PyG's j -> i: senders, receivers

        def energy_fn(pos, d=d, i=i, j=j, n=n):
            vectors = edge_vectors(d, pos)
            idx_kj, idx_ji = triplets(d["edge_index"], vectors, n)
            dist = vectors.norm(dim=-1)
            # PyG's angle between (i - j) and (j - k): the edge vectors j -> i and k -> j, reversed
            a, b = -vectors[idx_ji], -vectors[idx_kj]
            angle = torch.atan2(torch.cross(a, b, dim=1).norm(dim=-1), (a * b).sum(-1))
            rbf = model.rbf(dist)
            sbf = model.sbf(dist, angle, idx_kj)
            x = model.emb(d["numbers"], rbf, i, j)
            P = model.output_blocks[0](x, rbf, i, num_nodes=n)
            for interaction, output in zip(model.interaction_blocks, model.output_blocks[1:]):
                x = interaction(x, rbf, sbf, idx_kj, idx_ji)
                P = P + output(x, rbf, i, num_nodes=n)
            return torch.zeros(d["num_graphs"]).index_add(0, d["batch"], P[:, 0])

        results[("dimenet", name)] = time_steps(energy_fn, d["positions"], d["energy"], d["forces"],
                                                list(model.parameters()), repeats)
    return results


def reference_visnet(inputs: dict, repeats: int) -> dict:
    """PyTorch Geometric's ViSNet at the same hyperparameters, on the same edges: ``{("visnet", input): times}``.

    Its whole ``forward`` runs (embedding, ViS-MP blocks, ``EquivariantScalar``
    head, sum per structure), with its radius graph replaced by :class:`GivenEdges`.
    """
    from torch_geometric.nn.models import ViSNet as RefViSNet

    h = VISNET
    torch.manual_seed(0)
    model = RefViSNet(
        lmax=1, vecnorm_type=None, trainable_vecnorm=False, num_heads=h["num_heads"], num_layers=h["num_layers"],
        hidden_channels=h["channels"], num_rbf=h["num_basis"], trainable_rbf=False, max_z=max_z(), cutoff=CUTOFF,
        vertex=False, reduce_op="sum", derivative=False,
    ).float()
    results = {}
    for name, d in inputs.items():
        edges = GivenEdges(d)

        def energy_fn(pos, d=d, edges=edges):
            model.representation_model.distance = edges
            return model(d["numbers"], pos, d["batch"])[0][:, 0]

        results[("visnet", name)] = time_steps(energy_fn, d["positions"], d["energy"], d["forces"],
                                               list(model.parameters()), repeats)
    return results


# ----------------------------------------------------------------------------- references (worker side)
def onehot(numbers):
    index = torch.tensor([SPECIES.index(int(z)) for z in numbers])
    return torch.nn.functional.one_hot(index, len(SPECIES)).float()


def worker_mace(inputs: dict, repeats: int) -> dict:
    from e3nn import o3
    from mace.modules import MACE as RefMACE
    from mace.modules import RealAgnosticInteractionBlock, RealAgnosticResidualInteractionBlock

    c = MACE["channels"]
    hidden = o3.Irreps(" + ".join(f"{c}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(MACE["lmax"] + 1)))
    torch.manual_seed(0)
    model = RefMACE(
        r_max=CUTOFF, num_bessel=MACE["num_basis"], num_polynomial_cutoff=MACE["polynomial_p"],
        max_ell=MACE["lmax"], interaction_cls=RealAgnosticResidualInteractionBlock,
        interaction_cls_first=RealAgnosticInteractionBlock, num_interactions=MACE["num_layers"],
        num_elements=len(SPECIES), hidden_irreps=hidden, MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(len(SPECIES)), avg_num_neighbors=AVG_NEIGHBORS, atomic_numbers=SPECIES,
        correlation=MACE["correlation"], gate=torch.nn.functional.silu,
        radial_MLP=[MACE["radial_hidden"]] * MACE["radial_layers"],
    ).float()
    results = {}
    for name, d in inputs.items():
        counts = torch.bincount(d["batch"], minlength=d["num_graphs"])
        ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        # mace's vectors are pos[edge_index[1]] - pos[edge_index[0]] + shifts: the same edges, reversed
        unit = -d["shifts"]
        shifts = torch.einsum("ei,eij->ej", unit, d["cell"][d["batch"][d["edge_index"][1]]])
        base = {"node_attrs": onehot(d["numbers"]), "edge_index": d["edge_index"], "shifts": shifts,
                "unit_shifts": unit, "cell": d["cell"].reshape(-1, 3), "batch": d["batch"], "ptr": ptr,
                "head": torch.zeros(d["num_graphs"], dtype=torch.long)}

        def energy_fn(pos, base=base):
            return model({**base, "positions": pos}, training=True, compute_force=False)["energy"]

        results[name] = time_steps(energy_fn, d["positions"], d["energy"], d["forces"],
                                   list(model.parameters()), repeats)
    return results


def worker_nequip(inputs: dict, repeats: int) -> dict:
    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    from ase.data import chemical_symbols

    set_global_state()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = NequIPGNNModel(
        seed=0, model_dtype="float32", r_max=CUTOFF, type_names=[chemical_symbols[z] for z in SPECIES],
        num_layers=NEQUIP["num_layers"], l_max=NEQUIP["lmax"], parity=NEQUIP["parity"],
        num_features=NEQUIP["channels"], radial_mlp_depth=NEQUIP["radial_layers"],
        radial_mlp_width=NEQUIP["radial_hidden"], num_bessels=NEQUIP["num_basis"],
        polynomial_cutoff_p=NEQUIP["polynomial_p"], avg_num_neighbors=AVG_NEIGHBORS, do_derivatives=False,
    )
    return _nequip_style(model, inputs, repeats)


def worker_allegro(inputs: dict, repeats: int) -> dict:
    from allegro.model import AllegroModel
    from ase.data import chemical_symbols
    from nequip.utils.global_state import set_global_state

    set_global_state()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    h = ALLEGRO
    model = AllegroModel(
        seed=0, model_dtype="float32", r_max=CUTOFF, type_names=[chemical_symbols[z] for z in SPECIES],
        l_max=h["lmax"], parity=h["parity"], num_layers=h["num_layers"],
        num_scalar_features=h["latent_dim"], num_tensor_features=h["num_tensor_features"],
        radial_chemical_embed={"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", "num_bessels": h["num_basis"],
                               "bessel_trainable": h["trainable_basis"], "polynomial_cutoff_p": h["polynomial_p"]},
        scalar_embed_mlp_hidden_layers_depth=1, scalar_embed_mlp_hidden_layers_width=h["two_body_hidden"],
        allegro_mlp_hidden_layers_depth=1, allegro_mlp_hidden_layers_width=h["latent_hidden"],
        readout_mlp_hidden_layers_depth=1, readout_mlp_hidden_layers_width=h["readout_hidden"],
        avg_num_neighbors=AVG_NEIGHBORS, do_derivatives=False, **ALLEGRO_REF,
    )
    return _nequip_style(model, inputs, repeats)


def _nequip_style(model, inputs: dict, repeats: int) -> dict:
    """Time a nequip-framework model (nequip, nequip-allegro) fed with our edges and cell shifts."""
    results = {}
    for name, d in inputs.items():
        types = torch.tensor([SPECIES.index(int(z)) for z in d["numbers"]])
        counts = torch.bincount(d["batch"], minlength=d["num_graphs"])
        base = {"atom_types": types, "edge_index": d["edge_index"], "batch": d["batch"], "num_atoms": counts}
        if d["periodic"]:
            base.update({"cell": d["cell"], "edge_cell_shift": -d["shifts"],
                         "pbc": torch.ones(d["num_graphs"], 3, dtype=torch.bool)})

        def energy_fn(pos, base=base):
            return model({**base, "pos": pos})["total_energy"].reshape(-1)

        results[name] = time_steps(energy_fn, d["positions"], d["energy"], d["forces"],
                                   list(model.parameters()), repeats)
    return results


def _torchmdnet(representation, inputs: dict, repeats: int) -> dict:
    """Time a torchmd-net representation inside its ``TorchMD_Net`` wrapper with the ``Scalar`` head.

    The wrapper's ``forward`` runs whole; the representation's neighbour list
    (``.distance``) is replaced by :class:`GivenEdges` for each input.
    """
    from torchmdnet.models.model import TorchMD_Net
    from torchmdnet.models.output_modules import Scalar

    model = TorchMD_Net(representation, Scalar(representation.hidden_channels, activation="silu"),
                        derivative=False).float()
    results = {}
    for name, d in inputs.items():
        edges = GivenEdges(d)

        def energy_fn(pos, d=d, edges=edges):
            model.representation_model.distance = edges
            return model(d["numbers"], pos, d["batch"], num_systems=d["num_graphs"])[0][:, 0]

        results[name] = time_steps(energy_fn, d["positions"], d["energy"], d["forces"],
                                   list(model.parameters()), repeats)
    return results


def worker_tensornet(inputs: dict, repeats: int, warp: bool = True) -> dict:
    """torchmd-net's TensorNet; ``warp=False`` swaps its Warp kernels for its plain-PyTorch operations."""
    import torchmdnet.models.tensornet as tn

    if not warp:  # the fallback torchmd-net itself uses when warp-lang is missing
        tn.OPT = False
        tn.compose_tensor, tn.decompose_tensor = tn._compose_tensor, tn._decompose_tensor
        tn.tensor_matmul_o3, tn.tensor_matmul_so3 = tn._tensor_matmul_o3, tn._tensor_matmul_so3
    elif not tn.OPT:
        raise RuntimeError("torchmd-net's Warp kernels are not available (is warp-lang installed?)")
    h = TENSORNET
    torch.manual_seed(0)
    representation = tn.TensorNet(
        hidden_channels=h["channels"], num_layers=h["num_layers"], num_rbf=h["num_basis"], rbf_type="expnorm",
        trainable_rbf=False, activation="silu", cutoff_lower=0.0, cutoff_upper=CUTOFF, max_z=max_z(),
        equivariance_invariance_group="O(3)", static_shapes=False,
    )
    return _torchmdnet(representation, inputs, repeats)


def worker_et(inputs: dict, repeats: int) -> dict:
    from torchmdnet.models.torchmd_et import TorchMD_ET

    h = ET
    torch.manual_seed(0)
    representation = TorchMD_ET(
        hidden_channels=h["channels"], num_layers=h["num_layers"], num_rbf=h["num_basis"], rbf_type="expnorm",
        trainable_rbf=False, activation="silu", attn_activation="silu", neighbor_embedding=True,
        num_heads=h["num_heads"], distance_influence="both", cutoff_lower=0.0, cutoff_upper=CUTOFF,
        max_z=max_z(), vector_cutoff=True,
    )
    return _torchmdnet(representation, inputs, repeats)


WORKER_FUNCTIONS = {
    "mace": lambda inputs, repeats: worker_mace(inputs, repeats),
    "nequip": lambda inputs, repeats: worker_nequip(inputs, repeats),
    "allegro": lambda inputs, repeats: worker_allegro(inputs, repeats),
    "tensornet": lambda inputs, repeats: worker_tensornet(inputs, repeats, warp=True),
    "tensornet_torch": lambda inputs, repeats: worker_tensornet(inputs, repeats, warp=False),
    "et": lambda inputs, repeats: worker_et(inputs, repeats),
}


KEEP_MEMORY = False  # --keep-memory: every implementation reuses the memory its last step freed


def run_reference(kind: str, python: str, inputs_file: str, repeats: int, threads: int) -> dict | None:
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_NUM_THREADS": str(threads)}
    if KEEP_MEMORY:  # glibc's settings that clebsch.keep_freed_memory() makes, through the environment
        env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**62))
    cmd = [python, str(HERE), "--worker", kind, "--inputs", inputs_file, "--repeats", str(repeats),
           "--threads", str(threads), "--species", str(len(SPECIES))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"[{kind}] reference failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


IN_PROCESS = {"dimenet": ("PyG", reference_dimenet), "visnet": ("PyG", reference_visnet)}
VENV_OPTIONS = {"mace": "mace", "nequip": "nequip", "allegro": "allegro", "torchmdnet": "torchmdnet"}


def print_table(ours: dict, refs: dict, peak: float, threads: int) -> None:
    """Times, rates and ratios; ``refs[(family, input)]`` maps reference labels to their times."""
    print(f"\nfp32 matrix-multiply peak measured here ({threads} thread(s), 2048 x 2048): {peak / 1e9:.1f} GFLOP/s")
    print("(MiB: the rise of the peak resident memory during one step, over what the process held before it)")
    print(f"\n{'model':>9} {'input':>8} {'step':>6} {'clebsch ms':>11} {'GFLOP/s':>8} {'of peak':>8} {'MiB':>7} "
          f"{'reference':>24} {'ref ms':>9} {'ref/clebsch':>12} {'ref MiB':>8} {'MiB ratio':>9}")
    for (family, name), times in ours.items():
        for step in ("train", "infer"):
            t = times[step] * 1e3
            rate = times[f"{step}_flop"] / times[step]
            mib = times.get(f"{step}_mib", float("nan"))
            left = f"{family:>9} {name:>8} {step:>6} {t:11.1f} {rate / 1e9:8.2f} {100 * rate / peak:7.1f}% {mib:7.0f}"
            found = refs.get((family.removesuffix("+c"), name), {})
            if not found:
                print(f"{left} {'-':>24} {'-':>9} {'-':>12}")
            for k, (label, ref) in enumerate(found.items()):
                lead = left if k == 0 else " " * len(left)
                ref_mib = ref.get(f"{step}_mib", float("nan"))
                print(f"{lead} {label:>24} {ref[step] * 1e3:9.1f} {ref[step] / times[step]:12.2f} {ref_mib:8.0f} "
                      f"{ref_mib / mib if mib > 0 else float('nan'):9.2f}")
    print(f"\n{'model':>9} {'clebsch params':>15} {'reference':>24} {'ref params':>11} {'ref/clebsch':>12}")
    seen = set()
    for (family, name), times in ours.items():
        if family in seen:
            continue
        seen.add(family)
        found = refs.get((family, name), {})
        if not found:
            print(f"{family:>9} {times['params']:15,d} {'-':>24} {'-':>11} {'-':>12}")
        for label, ref in found.items():
            print(f"{family:>9} {times['params']:15,d} {label:>24} {ref['params']:11,d} "
                  f"{ref['params'] / times['params']:12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16, help="ethanol frames in the batch (0: skip)")
    parser.add_argument("--alloy", type=int, default=0,
                        help="atoms in a periodic 20-element fcc box (0: skip; needs --species 20 or more)")
    parser.add_argument("--box", type=int, default=1000, help="atoms in the periodic box (0: skip)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a machine shared with other jobs)")
    parser.add_argument("--models", default="nequip,mace,dimenet",
                        help=f"comma-separated families to time, from {', '.join(FAMILIES)}")
    parser.add_argument("--species", type=int, default=3, help="elements the models know (3 to 89; the inputs have H, C, O)")
    bench = Path(os.environ.get("CLEBSCH_BENCH_DIR", Path.home() / ".cache" / "clebsch-bench"))
    for venv in VENV_OPTIONS:
        parser.add_argument(f"--{venv}-python", default=os.environ.get(f"CLEBSCH_{venv.upper()}_PYTHON",
                                                                       str(bench / venv / "bin" / "python")),
                            help=f"interpreter of the {venv} reference's virtual environment")
    parser.add_argument("--compile", action="store_true",
                        help="also time the compiled training step (training.compile: rows 'FAMILY+c'; the first "
                             "compilation of a family takes minutes, then it is cached)")
    parser.add_argument("--keep-memory", action="store_true",
                        help="every implementation (ours, and the references in their processes) keeps the memory "
                             "a step frees for the next one (clebsch.keep_freed_memory, as clebsch's trainer and "
                             "calculator do; glibc's MALLOC_* settings for the references)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.frames < 0 or args.box < 0 or args.frames + args.box + max(args.alloy, 0) == 0 or args.repeats < 1 or args.threads < 1:
        parser.error("--frames and --box must be >= 0 and not both 0; --repeats and --threads >= 1")
    if not 3 <= args.species <= 89:
        parser.error("--species must be between 3 and 89")
    if args.alloy and args.species < 20:
        parser.error(f"--alloy has 20 elements: the models must know them (--species 20 or more, got {args.species})")
    if args.alloy < 0:
        parser.error("--alloy must be >= 0")
    torch.set_num_threads(args.threads)

    global THREADS, SPECIES, KEEP_MEMORY
    THREADS = args.threads
    KEEP_MEMORY = args.keep_memory
    if args.keep_memory and not args.worker:
        import clebsch

        print(f"freed memory kept for reuse: {clebsch.keep_freed_memory()}")
    SPECIES = species_list(args.species)
    if args.worker:
        inputs = torch.load(args.inputs)
        res = WORKER_FUNCTIONS[args.worker](inputs, args.repeats)
        print(json.dumps(res))
        return

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(FAMILIES))
    if unknown or not models:
        parser.error(f"--models: unknown {unknown or models}; choose from {', '.join(FAMILIES)}")
    inputs = make_inputs(args.frames, args.box, args.alloy)
    for name, d in inputs.items():
        print(f"{name}: {d['positions'].shape[0]} atoms, {d['edge_index'].shape[1]} edges, {d['num_graphs']} structure(s)")
    print(f"models know {len(SPECIES)} elements")
    ours = run_clebsch(inputs, args.repeats, models)
    if args.compile:
        compiled = run_clebsch_compiled(inputs, args.repeats, models)
        for key, times in compiled.items():
            print(f"{key[0]} on {key[1]}: first call (tracing, compiling or reading the cache) {times['compile_s']:.0f} s")
        ours.update(compiled)
    refs: dict = {}
    for family, (label, reference) in IN_PROCESS.items():
        if family not in models:
            continue
        try:
            for key, times in reference(inputs, args.repeats).items():
                refs.setdefault(key, {})[label] = times
        except ImportError as err:
            print(f"[{family}] PyTorch Geometric is not installed ({err}); skipped", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "inputs.pt")
        torch.save(inputs, path)
        for kind, (venv, family, label) in WORKERS.items():
            if family not in models:
                continue
            python = getattr(args, f"{venv}_python")
            if not (python and Path(python).exists()):
                print(f"[{kind}] no reference interpreter at {python!r}; skipped", file=sys.stderr)
                continue
            for name, times in (run_reference(kind, python, path, args.repeats, args.threads) or {}).items():
                refs.setdefault((family, name), {})[label] = times

    print_table(ours, refs, matmul_peak(args.threads), args.threads)


if __name__ == "__main__":
    main()
