"""Dimer scans of a NequIP trained without close contacts, with and without the ZBL term.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/dimer_scan.py [--train-time 75] [--out benchmarks/out/dimer_scan.png]

Trains the same small NequIP twice on the bundled GFN2-xTB ethanol frames
(``examples/ethanol_xtb.xyz``: 500 K dynamics, so no pair closer than about
0.9 Å), once plain and once with ``physics: {zbl: {}}``, or reads them with
``--models PLAIN ZBL``. Then scans the H-H, C-H, C-C and O-H dimers in vacuum from
0.2 Å to the cutoff and, for each, prints the energy at 0.2 Å, how far out from
0.2 Å the energy keeps falling monotonically with distance (against the ZBL
switch radii and the shortest distance of that pair in the training data), and
the largest force; and draws energy against distance for both models
(symmetric-log energy axis).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "ethanol_xtb.xyz"
PAIRS = [("H", "H"), ("C", "H"), ("C", "C"), ("O", "H")]


def train_model(run_dir: Path, seconds: float, cutoff: float, zbl: bool) -> str:
    from clebsch.train.trainer import train

    model = {"name": "nequip", "cutoff": cutoff, "num_layers": 2, "channels": 16, "lmax": 1, "num_basis": 8}
    if zbl:
        model["physics"] = {"zbl": {}}
    config = {
        "run_dir": str(run_dir), "seed": 0, "device": "cpu", "dtype": "float32", "model": model,
        "data": {"train": str(DATA), "valid_fraction": 0.1, "keys": {"energy": "energy", "forces": "forces"},
                 "batch_size": 5},
        "loss": {"weights": {"energy": 10.0, "forces": 100.0}},
        "optimizer": {"lr": 0.01, "amsgrad": True},
        "training": {"max_epochs": 1000, "max_time": seconds, "ema_decay": 0.99, "progress": False, "plots": False},
    }
    result = train(config, log=lambda *_: None)
    print(f"  {'with' if zbl else 'without'} ZBL: {result['epochs']} epochs in {seconds:.0f} s, "
          f"test {_metrics(result)} -> {result['model_path']}")
    return result["model_path"]


def _metrics(result) -> str:
    metrics = result.get("test_metrics") or {}
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key} {k}": v for k, v in value.items()})
        else:
            flat[key] = value
    shown = [(k, v) for k, v in flat.items() if isinstance(v, (int, float)) and "mae" in k.lower()]
    return ", ".join(f"{k} {v:.3g}" for k, v in shown[:3]) or "-"


def shortest_distances(frames) -> dict:
    """The shortest distance of each element pair over all frames (Å)."""
    out: dict = {}
    for atoms in frames:
        d = atoms.get_all_distances()
        symbols = atoms.get_chemical_symbols()
        for i, j in itertools.combinations(range(len(atoms)), 2):
            key = tuple(sorted((symbols[i], symbols[j])))
            out[key] = min(out.get(key, np.inf), d[i, j])
    return out


def scan(model, pair, distances):
    """Energies (relative to the pair at the cutoff) and forces [len(distances), 2, 3] along the scan, in one batch."""
    from ase.data import atomic_numbers

    from clebsch.graph import AtomicGraph, batch

    numbers = torch.tensor([atomic_numbers[s] for s in pair])
    graphs = [AtomicGraph.from_tensors(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, float(r)]], dtype=torch.float64),
                                       numbers, model.cutoff) for r in distances]
    out = model(batch(graphs), compute_forces=True)
    energies = out["energy"].detach().numpy()
    return energies - energies[-1], out["forces"].detach().numpy().reshape(len(distances), 2, 3)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "dimer_scan.png"))
    parser.add_argument("--models", nargs=2, metavar=("PLAIN", "ZBL"), help="packaged models (skip training)")
    parser.add_argument("--train-time", type=float, default=90.0, help="seconds of training per model")
    parser.add_argument("--cutoff", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import ase.io
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ase.data import atomic_numbers

    from clebsch.models.package import load

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.models:
        paths = args.models
    else:
        runs = out.parent / "dimer_scan_runs"
        paths = [train_model(runs / name, args.train_time, args.cutoff, zbl) for name, zbl in
                 (("plain", False), ("zbl", True))]
    models = {label: load(path, dtype=torch.float64) for label, path in zip(("without ZBL", "with ZBL"), paths)}
    shortest = shortest_distances(ase.io.read(DATA, ":"))
    cutoff = min(float(m.cutoff) for m in models.values())
    distances = np.linspace(0.2, cutoff, 381)

    header = (f"{'pair':5s} {'model':12s} {'data r_min':>10s} {'ZBL switch':>11s} {'E(0.2 Å) eV':>12s} "
              f"{'falls until':>11s} {'lowest E at':>11s} {'max |F| eV/Å':>13s} {'finite':>6s}")
    print("distances in Å; 'falls until': E(r) decreases monotonically from 0.2 Å up to this distance")
    print(header)
    print("-" * len(header))
    fig, axes = plt.subplots(1, len(PAIRS), figsize=(3.2 * len(PAIRS), 3.4), sharey=True)
    verdicts = []
    for ax, pair in zip(axes, PAIRS):
        r_min = shortest[tuple(sorted(pair))]
        for (label, model), color in zip(models.items(), ("C3", "C0")):
            energies, forces = scan(model, pair, distances)
            finite = bool(np.isfinite(energies).all() and np.isfinite(forces).all())
            rising = np.nonzero(np.diff(energies) >= 0)[0]
            falls_until = distances[rising[0]] if rising.size else distances[-1]
            switch = "-"
            zbl = model.physics.zbl if model.physics is not None else None
            if zbl is not None:
                s1, s2 = (model.species.index(atomic_numbers[e]) for e in pair)
                inner, outer = float(zbl.r_inner[s1, s2]), float(zbl.r_outer[s1, s2])
                switch = f"{inner:.2f}-{outer:.2f}"
                verdicts.append((pair, falls_until >= inner, falls_until >= r_min, finite))
                ax.axvline(inner, color=color, lw=0.7, ls=":")
            print(f"{'-'.join(pair):5s} {label:12s} {r_min:10.2f} {switch:>11s} {energies[0]:12.4g} "
                  f"{falls_until:11.2f} {distances[np.argmin(energies)]:11.2f} {np.abs(forces).max():13.4g} "
                  f"{'yes' if finite else 'NO':>6s}")
            ax.plot(distances, energies, color=color, lw=1.5, label=label)
        ax.axvspan(distances[0], r_min, color="0.92", zorder=0)
        ax.axhline(0.0, color="0.6", lw=0.7)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(f"{pair[0]}–{pair[1]} dimer")
        ax.set_xlabel("distance (Å)")
        ax.set_xlim(0.0, cutoff)
    print("with ZBL, E falls monotonically from 0.2 Å to at least the switch's inner radius: "
          + ", ".join(f"{'-'.join(p)} {'yes' if a else 'NO'}" for p, a, _, _ in verdicts)
          + "; to the shortest distance in the data: "
          + ", ".join(f"{'-'.join(p)} {'yes' if b else 'no'}" for p, _, b, _ in verdicts)
          + "; forces finite everywhere: " + ("yes" if all(v[3] for v in verdicts) else "NO"))
    axes[0].set_ylabel("E(r) − E(cutoff) (eV, symlog)")
    from matplotlib.patches import Patch

    handles, _ = axes[0].get_legend_handles_labels()
    handles += [Patch(color="0.92", label="closer than any pair in the data"),
                plt.Line2D([], [], color="C0", lw=0.7, ls=":", label="ZBL inner radius")]
    axes[-1].legend(handles=handles, loc="upper right", fontsize=7, title="NequIP trained on ethanol",
                    title_fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
