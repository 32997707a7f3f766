"""How far a density / Hamiltonian model of water carries: errors against cluster size.

The experiment of ``examples/water_clusters.yaml``: a model trained on monomers,
dimers and fragments cut from rings (never a whole ring) is evaluated on every
kind of structure in the given files, and each kind's errors are plotted against
its number of molecules, kinds seen in training (their held-out structures) apart
from the whole rings it never saw.

    clebsch train examples/water_clusters.yaml
    python examples/water_nearsightedness.py runs/water-clusters/model.pt \\
        "examples/water_clusters.xyz.xz@180:211" [held-out.xyz.xz ...] --out runs/water-clusters/nearsightedness

Files: any with the keys the model was trained from (``config_type`` names the
kind; the number of molecules is the number of O atoms). Writes
``nearsightedness.csv`` and ``nearsightedness.png`` into ``--out`` and prints
the table: eps_rho (%), the error of every element of the Kohn-Sham matrix
(µHa), of the occupied orbital energies and of the HOMO-LUMO gap (meV).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

RINGS = ("trimer", "tetramer", "pentamer")
COLUMNS = [("eps_percent", "ε_ρ (%)"), ("matrix_mae", "matrix MAE (µHa)"),
           ("occupied_mae", "occupied orbital energies MAE (meV)"), ("gap_error", "HOMO–LUMO gap error (meV)")]


def evaluate(model: str, data: str) -> dict:
    """``clebsch evaluate``'s electronic report of ``model`` on ``data`` with the number of structures and molecules
    per config_type."""
    from clebsch.cli import main
    from clebsch.data.io import read_structures

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "metrics.json"
        if main(["evaluate", model, data, "--json", str(out)]) != 0:
            raise SystemExit(f"clebsch evaluate failed on {data}")
        report = json.loads(out.read_text())["electronic"]
    kinds: dict[str, list] = {}
    for atoms in read_structures(data):
        kinds.setdefault(atoms.info.get("config_type", "Default"), []).append(int((atoms.numbers == 8).sum()))
    return {kind: {"n": len(mols), "molecules": max(mols), **report[kind]} for kind, mols in kinds.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data", nargs="+", help="structure files (file@slice allowed)")
    parser.add_argument("--out", type=Path, default=Path("nearsightedness"))
    args = parser.parse_args(argv)
    rows: dict[str, dict] = {}
    for data in args.data:
        rows.update(evaluate(args.model, data))
    metric = {}  # metric suffix -> the report's full key (its target name in front)
    for values in rows.values():
        for key in values:
            for suffix, _ in COLUMNS:
                if key.endswith(suffix):
                    metric.setdefault(suffix, key)
    order = sorted(rows, key=lambda k: (rows[k]["molecules"], k in RINGS, k))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "nearsightedness.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["config_type", "structures", "molecules", "whole ring (never trained on)",
                         *[label for suffix, label in COLUMNS if suffix in metric]])
        for kind in order:
            r = rows[kind]
            writer.writerow([kind, r["n"], r["molecules"], kind in RINGS,
                             *[f"{r.get(metric[s], float('nan')):.4g}" for s, _ in COLUMNS if s in metric]])
    print((args.out / "nearsightedness.csv").read_text())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(s, label) for s, label in COLUMNS if s in metric]
    cols = 2 if len(shown) > 2 else len(shown)
    rows_ = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(4.6 * cols, 3.6 * rows_), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    for ax, (suffix, label) in zip(axes.flat, shown):
        for ring, style, name in ((False, dict(marker="o", color="C0"), "kinds trained on (held-out structures)"),
                                  (True, dict(marker="s", color="C3"), "whole rings (never trained on)")):
            kinds = [k for k in order if (k in RINGS) == ring and metric[suffix] in rows[k]]
            ax.scatter([rows[k]["molecules"] for k in kinds], [rows[k][metric[suffix]] for k in kinds], label=name,
                       **style)
            for k in kinds:
                ax.annotate(k, (rows[k]["molecules"], rows[k][metric[suffix]]), fontsize=7,
                            xytext=(4, 2), textcoords="offset points")
        ax.set_xlabel("water molecules")
        ax.set_ylabel(label)
        ax.set_xticks(range(1, 6))
        ax.set_yscale("log")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "nearsightedness.png", dpi=120)
    print(f"wrote {args.out / 'nearsightedness.csv'} and {args.out / 'nearsightedness.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
