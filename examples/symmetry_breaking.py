"""Symmetry breaking by a learned order parameter: a square into a rectangle, a cubic crystal into a polar one.

An equivariant network cannot map a symmetric input to a less symmetric output;
:func:`clebsch.studies.symmetry_breaking.symmetry_floor` says how much of the
targets it must miss. Each case is fitted without an order parameter and with
order parameters of a few irreps; the learned parameter is printed in irreps
and in Cartesian form.

    python examples/symmetry_breaking.py --out symmetry-breaking-run

Writes ``summary.json`` and ``loss_curves.png`` under ``--out``. About a minute on one core.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from ase import Atoms

from clebsch.graph import AtomicGraph
from clebsch.studies.symmetry_breaking import (
    OrderParameter,
    OrderParameterNetwork,
    fit_symmetry_breaking,
    format_report,
    point_group,
    symmetry_floor,
)


def square_case():
    square = torch.tensor([[1.0, 1, 0], [-1, 1, 0], [-1, -1, 0], [1, -1, 0]])
    graph = AtomicGraph.from_tensors(square, [6] * 4, cutoff=3.5)
    # stretch along x, squeeze along y (B1g), plus a breathing mode (A1g) that a symmetric model can fit
    targets = 0.1 * square * torch.tensor([1.0, -1.0, 0.0]) + 0.05 * square
    return "square -> rectangle", graph, targets, dict(elements=[6], cutoff=3.5), [None, "1e", "2e"]


def perovskite_case():
    frac = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    atoms = Atoms("BaTiO3", scaled_positions=frac, cell=[4.0, 4.0, 4.0], pbc=True)
    graph = AtomicGraph.from_ase(atoms, cutoff=4.5)
    targets = torch.zeros(5, 3)
    targets[:, 2] = torch.tensor([0.02, 0.10, -0.08, -0.05, -0.05])  # tetragonal, polar: Ti up, O down
    return ("cubic perovskite -> polar tetragonal", graph, targets,
            dict(elements=[8, 22, 56], cutoff=4.5, avg_num_neighbors=30.0), [None, "2e", "1o"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="symmetry-breaking-run", help="output directory")
    parser.add_argument("--steps", type=int, default=10, help="LBFGS steps per fit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_default_dtype(torch.float64)

    summary, curves = {}, {}
    for name, graph, targets, kwargs, choices in (square_case(), perovskite_case()):
        ops = point_group(graph)
        floor = symmetry_floor(graph, targets, "1o", group=ops)
        signal = float(targets.pow(2).mean())
        print(f"\n== {name}: {len(ops.rotations)} symmetry operations "
              f"({int((torch.linalg.det(ops.rotations) < 0).sum())} improper)")
        print(f"   mean square target {signal:.4e}; symmetry floor {floor:.4e} ({floor / signal:.1%} of it)")
        summary[name] = {"operations": len(ops.rotations), "mean_square_target": signal, "floor": floor, "fits": {}}
        for irreps in choices:
            torch.manual_seed(args.seed)
            model = OrderParameterNetwork(kwargs["elements"], "1o", irreps,
                                          **{k: v for k, v in kwargs.items() if k != "elements"})
            op = OrderParameter(irreps, init_scale=0.1, generator=torch.Generator().manual_seed(args.seed)) \
                if irreps else None
            fit = fit_symmetry_breaking(model, graph, targets, op, steps=args.steps, lr=1.0, optimizer="lbfgs")
            label = irreps or "none"
            verdict = ("at the floor" if fit.loss > 0.99 * floor
                       else "fitted" if fit.loss < 1e-4 * signal else "between")
            print(f"   order parameter {label:>4}: final MSE {fit.loss:.3e} (floor x {fit.loss / floor:.3g}), "
                  f"{len(fit.history)} evaluations -> {verdict}")
            if op is not None:
                print("\n".join("        " + line for line in format_report(op).splitlines()))
            summary[name]["fits"][label] = {"mse": fit.loss, "over_floor": fit.loss / floor,
                                            "order_parameter": None if op is None else op.value.detach()[0].tolist()}
            curves[(name, label)] = fit.history

    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name in zip(axes, summary):
        ax.axhline(summary[name]["floor"], color="0.6", lw=4, zorder=0, label="symmetry floor")
        for (case, label), history in curves.items():
            if case == name:
                ax.semilogy(history, label=f"order parameter: {label}", ls="-" if label == "none" else "--")
        ax.set_title(name)
        ax.set_xlabel("loss evaluation (LBFGS)")
        ax.set_ylabel("mean squared error")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)
    print(f"\nwrote {out / 'summary.json'} and {out / 'loss_curves.png'}")


if __name__ == "__main__":
    main()
