"""Uncertainty on held-out frames: a committee of NequIPs against LLPR on one of them.

Trains a committee (``training.committee``, default 4 members of a small
NequIP, each for ``--budget`` of wall time) on the bundled GFN2-xTB ethanol
data, then on the held-out test frames prints, for the committee and for the
LLPR of member 0 (with and without the force Jacobians in its covariance):
the force MAE, the mean predicted force uncertainty, and Spearman's rank
correlation between the predicted uncertainty and the true force error per
frame (mean over atoms, and the largest atom) and per-frame energy error; the
cost of one uncertainty evaluation; and, for a like-for-like comparison with
LLPR (which predicts one model's error), the rank correlation of the
committee's spread with each member's own force error.

    OMP_NUM_THREADS=1 python benchmarks/uncertainty.py --members 4 --budget 75s --out runs/bench-uncertainty

Not a test: about ``members x budget`` plus a minute.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from clebsch.data import AtomicDataset
from clebsch.train.committee import train_committee
from clebsch.train.config import load_config, parse_duration
from clebsch.uncertainty import LLPR, Committee, frame_uncertainty, llpr_path, rank_correlation

DATA = Path(__file__).resolve().parents[1] / "examples" / "ethanol_xtb.xyz"


def config(args) -> dict:
    return {
        "run_dir": args.out,
        "seed": args.seed,
        "device": "cpu",
        "dtype": "float32",
        "model": {"name": "nequip", "cutoff": 4.0, "num_layers": 2, "channels": args.channels, "lmax": 1,
                  "readout_hidden": args.readout_hidden},
        "data": {"train": args.data, "valid_fraction": 0.1, "test_fraction": 0.4, "max_train": args.train_frames,
                 "keys": {"energy": "energy", "forces": "forces"}, "batch_size": 5, "valid_batch_size": 25},
        "loss": {"weights": {"energy": 10.0, "forces": 100.0}},
        "optimizer": {"lr": 0.01},
        "scheduler": {"name": "plateau", "patience": 5, "factor": 0.8},
        "second_stage": {"enabled": True, "start_fraction": 0.6, "weights": {"energy": 1000.0, "forces": 100.0},
                         "lr": 0.002},
        "training": {"max_epochs": 100000, "max_time": parse_duration(args.budget), "committee": args.members,
                     "progress": False, "plots": False},
    }


def row(name: str, summary: dict, seconds: float) -> str:
    return (f"{name:<28} {1000 * summary['force_error_mean']:>9.1f} {1000 * summary['force_uncertainty_mean']:>9.1f} "
            f"{summary['spearman_forces']:>9.2f} {summary['spearman_forces_max']:>9.2f} "
            f"{summary['spearman_energy']:>9.2f} {1000 * seconds:>9.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="extxyz with energy and forces (default: ethanol_xtb.xyz)")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--budget", default="75s", help="training wall time per member")
    parser.add_argument("--train-frames", type=int, default=100, help="training frames (data.max_train)")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--readout-hidden", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bench-uncertainty")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    cfg = load_config(None, args.overrides, base=config(args))
    if (out / "committee.json").is_file():
        print(f"reusing the committee in {out}")
        committee_path = out / "committee.json"
    else:
        t0 = time.monotonic()
        result = train_committee(cfg, resume=(out / "config.yaml").is_file(), log=lambda msg: None)
        committee_path = Path(result["committee_path"])
        print(f"trained {args.members} members in {time.monotonic() - t0:.0f} s")

    data_dir = out / "data"
    keys = {"energy": "energy", "forces": "forces"}

    def read(name):
        return list(AtomicDataset.from_file(data_dir / f"{name}.extxyz", cfg.model.cutoff, keys=keys,
                                            dtype=torch.float32).graphs)

    train, valid, test = read("train"), read("valid"), read("test")
    committee = Committee.load(committee_path, dtype=torch.float32)
    results = {}
    t = time.process_time()
    committee_report = frame_uncertainty(committee, test, batch_size=25)
    results["committee"] = (committee_report.summary(), (time.process_time() - t) / len(test))
    versus = []  # the committee's spread against each member's own error, beside that member's LLPR
    for k, model in enumerate(committee.members):
        for fw in (0.0, 1.0):
            llpr = LLPR.fit(model, train, valid, force_weight=fw, batch_size=25)
            t = time.process_time()
            report = frame_uncertainty(llpr, test, batch_size=25)
            name = f"LLPR member {k}, fw={fw:g}"
            results[name] = (report.summary(), (time.process_time() - t) / len(test))
            results[name][0].update(llpr_lambda=llpr.lam, alpha_energy=llpr.alpha_energy,
                                    alpha_forces=llpr.alpha_forces)
            if fw == 1.0:
                llpr.save(llpr_path(committee.paths[k]), model_path=committee.paths[k])
        versus.append(rank_correlation(committee_report.force_std, report.force_error))

    print()
    print(f"{len(test)} held-out frames of {Path(args.data).name}; {args.members} x NequIP ({args.channels} channels, "
          f"{args.budget} each) trained on {len(train)} frames, calibrated on {len(valid)}")
    print(f"{'':<28} {'|ΔF|':>9} {'σ_F':>9} {'ρ F mean':>9} {'ρ F max':>9} {'ρ E':>9} {'CPU ms':>9}")
    print(f"{'':<28} {'meV/Å':>9} {'meV/Å':>9} {'':>9} {'':>9} {'':>9} {'/frame':>9}")
    for name, (summary, seconds) in results.items():
        print(row(name, summary, seconds))
    print(f"{'committee σ_F vs member k':<28} {'':>9} {'':>9} " + " ".join(f"{v:.2f}" for v in versus)
          + "   (ρ F mean against each member's own error, k = 0, 1, ...)")
    print("|ΔF|: mean length of an atom's force error; σ_F: mean predicted per-atom force uncertainty; ρ: Spearman "
          "rank correlation between predicted uncertainty and true error per frame (F mean: mean over atoms; F max: "
          "the largest atom; E: energy)")
    (out / "uncertainty.json").write_text(json.dumps({**{k: {**v[0], "seconds_per_frame": v[1]}
                                                         for k, v in results.items()},
                                                      "committee_vs_member_spearman_forces": versus}, indent=2))


if __name__ == "__main__":
    main()
