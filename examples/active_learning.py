"""One active-learning step: add the frames the model is least sure of, and compare with random frames.

1. Split the data (seeded): a small initial training set, a validation set, a
   test set, and the rest as the pool of candidate frames (their references
   stand in for the calculations one would run on the selected frames).
2. Train a committee on the initial set (``--method committee``, the default)
   or one model with its LLPR (``--method llpr``).
3. Score every pool frame by its predicted force uncertainty (mean over atoms)
   and take the ``--select`` most uncertain; draw as many at random too.
4. Train one model on initial + uncertain and one on initial + random, with
   the same seed and the same number of epochs (so the same number of steps),
   and compare their force errors on the test set.

    OMP_NUM_THREADS=1 python examples/active_learning.py --initial 30 --select 30 --out runs/active-learning

About five minutes on one core with the defaults. The table also shows how
large the true errors of the selected frames were (the pool has references),
which says whether the uncertainty found the frames the model gets wrong.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ase.io
import numpy as np
import torch

from clebsch.data import AtomicDataset
from clebsch.data.io import read_structures
from clebsch.models.package import load
from clebsch.train.committee import train_committee
from clebsch.train.trainer import train
from clebsch.uncertainty import LLPR, Committee, frame_uncertainty

DATA = Path(__file__).resolve().parent / "ethanol_xtb.xyz"
KEYS = {"energy": "energy", "forces": "forces"}


def base_config(args, run_dir, train_file, **training) -> dict:
    return {
        "run_dir": str(run_dir),
        "seed": args.seed,
        "device": "cpu",
        "model": {"name": "nequip", "cutoff": 4.0, "num_layers": 2, "channels": args.channels, "lmax": 1},
        "data": {"train": str(train_file), "valid": str(args.out / "valid.extxyz"),
                 "test": str(args.out / "test.extxyz"), "keys": KEYS, "batch_size": 5, "valid_batch_size": 25},
        "loss": {"weights": {"energy": 10.0, "forces": 100.0}},
        "optimizer": {"lr": 0.01},
        "scheduler": {"name": "plateau", "patience": 5, "factor": 0.8},
        "training": {"max_epochs": args.epochs, "progress": False, "plots": False, **training},
    }


def graphs(path, cutoff: float = 4.0) -> list:
    return list(AtomicDataset.from_file(path, cutoff, keys=KEYS, dtype=torch.float32).graphs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="extxyz with energy and forces (default: ethanol_xtb.xyz)")
    parser.add_argument("--initial", type=int, default=30, help="frames in the initial training set")
    parser.add_argument("--select", type=int, default=30, help="frames added in the active-learning step")
    parser.add_argument("--valid", type=int, default=40)
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument("--method", choices=["committee", "llpr"], default="committee")
    parser.add_argument("--members", type=int, default=3, help="committee size (--method committee)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs of every training")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/active-learning"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    quiet = lambda msg: None  # noqa: E731

    # 1. the split
    frames = read_structures(args.data, index=":")
    order = np.random.default_rng(args.seed).permutation(len(frames))
    n0, nv, nt = args.initial, args.valid, args.test
    if n0 + nv + nt + args.select > len(frames):
        raise SystemExit(f"{args.data} has {len(frames)} frames; --initial + --valid + --test + --select need "
                         f"{n0 + nv + nt + args.select}")
    parts = {"initial": order[:n0], "valid": order[n0:n0 + nv], "test": order[n0 + nv:n0 + nv + nt],
             "pool": order[n0 + nv + nt:]}
    for name, idx in parts.items():
        ase.io.write(out / f"{name}.extxyz", [frames[i] for i in idx], format="extxyz")
    pool = graphs(out / "pool.extxyz")

    # 2. a model of the initial set that knows its uncertainty
    if args.method == "committee":
        result = train_committee(base_config(args, out / "committee", out / "initial.extxyz",
                                             committee=args.members), log=quiet)
        predictor = Committee.load(result["committee_path"])
        first_error = result["members"][0]["test_metrics"]["all"]["forces_mae"]
    else:
        result = train(base_config(args, out / "initial", out / "initial.extxyz"), log=quiet)
        predictor = LLPR.fit(load(result["model_path"]), graphs(out / "initial.extxyz"), graphs(out / "valid.extxyz"))
        first_error = result["test_metrics"]["all"]["forces_mae"]

    # 3. the most uncertain pool frames, and as many random ones
    report = frame_uncertainty(predictor, pool, batch_size=25)
    uncertain = np.argsort(-report.force_std)[: args.select]
    random = np.random.default_rng(args.seed + 1).choice(len(pool), args.select, replace=False)
    rho = report.correlations()["forces"]

    # 4. one model on each enlarged set, trained alike
    errors = {}
    for name, chosen in (("uncertain", uncertain), ("random", random)):
        picked = [frames[i] for i in parts["initial"]] + [frames[parts["pool"][i]] for i in chosen]
        ase.io.write(out / f"train_{name}.extxyz", picked, format="extxyz")
        run = train(base_config(args, out / f"run_{name}", out / f"train_{name}.extxyz"), log=quiet)
        errors[name] = (run["test_metrics"]["all"]["forces_mae"], run["test_metrics"]["all"]["forces_rmse"])

    lines = [
        f"{args.method}: initial model trained on {n0} frames, test force MAE {first_error:.1f} meV/Å",
        f"pool of {len(pool)} frames: rank correlation of predicted uncertainty and true force error {rho:.2f}",
        f"{'added':<20} {'|F error| of added':>19} {'test F MAE after':>17} {'test F RMSE after':>18}",
        f"{'':<20} {'meV/Å (mean)':>19} {'meV/Å':>17} {'meV/Å':>18}",
    ]
    for name, chosen in (("uncertain", uncertain), ("random", random)):
        lines.append(f"{f'{args.select} most uncertain' if name == 'uncertain' else f'{args.select} random':<20} "
                     f"{1000 * report.force_error[chosen].mean():>19.1f} {errors[name][0]:>17.1f} "
                     f"{errors[name][1]:>18.1f}")
    print("\n".join(lines))
    (out / "active_learning.json").write_text(json.dumps({
        "method": args.method, "initial_forces_mae": first_error, "pool_spearman_forces": rho,
        "added_error_uncertain": 1000 * float(report.force_error[uncertain].mean()),
        "added_error_random": 1000 * float(report.force_error[random].mean()),
        "forces_mae_uncertain": errors["uncertain"][0], "forces_mae_random": errors["random"][0],
        "forces_rmse_uncertain": errors["uncertain"][1], "forces_rmse_random": errors["random"][1]}, indent=2))


if __name__ == "__main__":
    main()
