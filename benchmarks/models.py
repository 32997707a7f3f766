"""Model speed: clebsch NequIP, MACE and DimeNet++ against the nequip, mace-torch and PyTorch Geometric packages.

Two inputs, float32, ``torch.set_num_threads(2)`` (``--threads``):

* a batch of ethanol frames (default 16 from ../shared/data/ethanol/train.xyz);
* a periodic water-like box of 1,000 atoms (density 0.1 atoms/Å³).

Two steps per model and input: *train* (energy + forces by autograd with
``create_graph``, an energy + forces loss, backward) and *infer* (energy +
forces). Hyperparameters are matched (NequIP: 3 layers, 32 channels, l_max 2,
both parities, 8 Bessels, radial MLP 2 x 64; MACE: 2 layers, 32 channels,
l_max 2 for the harmonics and the features, correlation 3, 8 Bessels, radial
MLP 3 x 64; DimeNet++: 3 blocks, 64 hidden, 32 triplet, 8 basis and 128 output
channels, 7 x 6 spherical basis, envelope exponent 5), and every model sees the
same graph (the same edges and shifts).

PyTorch Geometric's ``DimeNetPlusPlus`` runs in this process: its blocks are
driven on our edges (its own ``forward`` builds a radius graph without cell
shifts), with the triplets of :func:`clebsch.models.dimenet.triplets` (PyG's
own need torch-sparse), so both time the same triplets and the same network.

The reference packages pin other e3nn versions (mace-torch: e3nn 0.4.4), so
each runs in its own virtual environment: this script calls itself there as a
worker on a saved copy of the inputs. By default they are looked for in
``~/.cache/clebsch-bench/{mace,nequip}`` (``$CLEBSCH_BENCH_DIR``), made with::

    python -m venv ~/.cache/clebsch-bench/mace && ~/.cache/clebsch-bench/mace/bin/pip install torch==2.13.0 mace-torch
    python -m venv ~/.cache/clebsch-bench/nequip && ~/.cache/clebsch-bench/nequip/bin/pip install torch==2.13.0 nequip==0.19.1

or point at other interpreters with ``--mace-python`` / ``--nequip-python``
(CLEBSCH_MACE_PYTHON / CLEBSCH_NEQUIP_PYTHON); a missing one is skipped. Prints milliseconds per step,
the arithmetic rate of the step's matrix products against the machine's
measured fp32 matrix-multiply peak (how far from the hardware limit a step
is, not only from a peer), and ratios (reference time / clebsch time: > 1
means clebsch is faster).

    OMP_NUM_THREADS=2 python benchmarks/models.py [--frames 16] [--box 1000] [--repeats 5] [--threads 2] [--species 3]
        [--models nequip,mace,dimenet]

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
            "train_flop": count_flops(train), "infer_flop": count_flops(infer)}


def count_flops(fn) -> float:
    """Floating-point operations of the matrix products in one call (torch's FlopCounterMode: mm, bmm, einsum
    contractions; elementwise work is not counted, so the rate below is a lower bound)."""
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
def make_inputs(frames: int, box: int) -> dict:
    """The two graphs as plain tensors (so the reference workers need no clebsch)."""
    import ase.io
    from ase import Atoms

    from clebsch.graph import AtomicGraph, batch

    atoms = ase.io.read(DATA, index=f":{frames}")
    ethanol = batch([AtomicGraph.from_ase(a, cutoff=CUTOFF, dtype=torch.float32) for a in atoms])
    graphs = {"ethanol": ethanol} if frames > 0 else {}
    if box > 0:
        pos, cell, numbers = water_box(box)
        graphs["box"] = AtomicGraph.from_ase(Atoms(numbers, positions=pos, cell=cell, pbc=True), cutoff=CUTOFF,
                                             dtype=torch.float32)
    out = {}
    for name, g in graphs.items():
        out[name] = {
            "positions": g.positions.float(), "numbers": g.numbers, "edge_index": g.edge_index,
            "shifts": g.shifts.float(), "cell": g.cell.float(), "batch": g.batch, "num_graphs": g.num_graphs,
            "periodic": bool(g.pbc.any()),
            "energy": torch.randn(g.num_graphs), "forces": torch.randn(g.num_atoms, 3),
        }
    return out


# ----------------------------------------------------------------------------- clebsch
def run_clebsch(inputs: dict, repeats: int, models=("nequip", "mace", "dimenet")) -> dict:
    from clebsch.graph import AtomicGraph
    from clebsch.models import build_model

    results = {}
    for family, hyper in (("nequip", {**NEQUIP, "avg_num_neighbors": AVG_NEIGHBORS}),
                          ("mace", {**MACE, "avg_num_neighbors": AVG_NEIGHBORS}), ("dimenet", DIMENET)):
        if family not in models:
            continue
        torch.manual_seed(0)
        model = build_model({"name": family, "species": SPECIES, "cutoff": CUTOFF, **hyper}).float()
        for name, d in inputs.items():
            species = model.species_index(d["numbers"])
            # one isolated atom of each element present (its energy is subtracted, as the references'
            # atomic energies are): the elements the inputs have, not all those the model knows
            present = torch.unique(species)
            all_species = torch.cat([species, present])
            isolated = torch.searchsorted(present, species)

            def energy_fn(pos, d=d, species=species, all_species=all_species, isolated=isolated):
                sender, receiver = d["edge_index"]
                vectors = pos[sender] - pos[receiver]
                if d["periodic"]:
                    vectors = vectors + torch.einsum("ei,eij->ej", d["shifts"], d["cell"][d["batch"][receiver]])
                feats = model.representation(all_species, d["edge_index"], vectors)
                e = model.energy_head(feats)[:, 0]
                e = e[: species.shape[0]] - e[species.shape[0]:][isolated]
                return torch.zeros(d["num_graphs"]).index_add(0, d["batch"], e)

            results[(family, name)] = time_steps(energy_fn, d["positions"], d["energy"], d["forces"],
                                                 list(model.parameters()), repeats)
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
            vectors = pos[j] - pos[i]
            if d["periodic"]:
                vectors = vectors + torch.einsum("ei,eij->ej", d["shifts"], d["cell"][d["batch"][i]])
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
        n = d["positions"].shape[0]
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
    results = {}
    for name, d in inputs.items():
        types = torch.tensor([SPECIES.index(int(z)) for z in d["numbers"]])
        counts = torch.bincount(d["batch"], minlength=d["num_graphs"])
        base = {"atom_types": types, "edge_index": d["edge_index"], "batch": d["batch"], "num_atoms": counts}
        if d["periodic"]:
            base.update({"cell": d["cell"], "edge_cell_shift": -d["shifts"], "pbc": torch.ones(d["num_graphs"], 3, dtype=torch.bool)})

        def energy_fn(pos, base=base):
            return model({**base, "pos": pos})["total_energy"].reshape(-1)

        results[name] = time_steps(energy_fn, d["positions"], d["energy"], d["forces"],
                                   list(model.parameters()), repeats)
    return results


def run_reference(kind: str, python: str, inputs_file: str, repeats: int, threads: int) -> dict | None:
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_NUM_THREADS": str(threads)}
    cmd = [python, str(HERE), "--worker", kind, "--inputs", inputs_file, "--repeats", str(repeats),
           "--threads", str(threads), "--species", str(len(SPECIES))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"[{kind}] reference failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return {tuple(k.split("/")): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16, help="ethanol frames in the batch (0: skip)")
    parser.add_argument("--box", type=int, default=1000, help="atoms in the periodic box (0: skip)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a machine shared with other jobs)")
    parser.add_argument("--models", default="nequip,mace,dimenet", help="comma-separated families to time")
    parser.add_argument("--species", type=int, default=3, help="elements the models know (3 to 89; the inputs have H, C, O)")
    bench = Path(os.environ.get("CLEBSCH_BENCH_DIR", Path.home() / ".cache" / "clebsch-bench"))
    parser.add_argument("--mace-python", default=os.environ.get("CLEBSCH_MACE_PYTHON", str(bench / "mace/bin/python")))
    parser.add_argument("--nequip-python", default=os.environ.get("CLEBSCH_NEQUIP_PYTHON",
                                                                  str(bench / "nequip/bin/python")))
    parser.add_argument("--worker", choices=["mace", "nequip"], help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.frames < 0 or args.box < 0 or args.frames + args.box == 0 or args.repeats < 1 or args.threads < 1:
        parser.error("--frames and --box must be >= 0 and not both 0; --repeats and --threads >= 1")
    if not 3 <= args.species <= 89:
        parser.error("--species must be between 3 and 89")
    torch.set_num_threads(args.threads)

    global THREADS, SPECIES
    THREADS = args.threads
    SPECIES = species_list(args.species)
    if args.worker:
        inputs = torch.load(args.inputs)
        res = (worker_mace if args.worker == "mace" else worker_nequip)(inputs, args.repeats)
        print(json.dumps({f"{args.worker}/{k}": v for k, v in res.items()}))
        return

    inputs = make_inputs(args.frames, args.box)
    for name, d in inputs.items():
        print(f"{name}: {d['positions'].shape[0]} atoms, {d['edge_index'].shape[1]} edges, {d['num_graphs']} structure(s)")
    print(f"models know {len(SPECIES)} elements")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - {"nequip", "mace", "dimenet"})
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from nequip, mace, dimenet")
    ours = run_clebsch(inputs, args.repeats, models)
    refs = {}
    if "dimenet" in models:
        try:
            refs.update(reference_dimenet(inputs, args.repeats))
        except ImportError as err:
            print(f"[dimenet] PyTorch Geometric is not installed ({err}); skipped", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "inputs.pt")
        torch.save(inputs, path)
        for kind, python in (("nequip", args.nequip_python), ("mace", args.mace_python)):
            if kind not in models:
                continue
            if python and Path(python).exists():
                refs.update(run_reference(kind, python, path, args.repeats, args.threads) or {})
            else:
                print(f"[{kind}] no reference interpreter at {python!r}; skipped", file=sys.stderr)

    peak = matmul_peak(args.threads)
    print(f"\nfp32 matrix-multiply peak measured here ({args.threads} thread(s), 2048 x 2048): {peak / 1e9:.1f} GFLOP/s")
    print(f"\n{'model':>7} {'input':>8} {'step':>6} {'clebsch ms':>11} {'GFLOP/s':>8} {'of peak':>8} "
          f"{'reference ms':>13} {'ref/clebsch':>12}")
    for (family, name), times in ours.items():
        for step in ("train", "infer"):
            t = times[step] * 1e3
            rate = times[f"{step}_flop"] / times[step]
            ref = refs.get((family, name), {}).get(step)
            r = f"{ref * 1e3:13.1f} {ref / times[step]:12.2f}" if ref else f"{'-':>13} {'-':>12}"
            print(f"{family:>7} {name:>8} {step:>6} {t:11.1f} {rate / 1e9:8.2f} {100 * rate / peak:7.1f}% {r}")


if __name__ == "__main__":
    main()
