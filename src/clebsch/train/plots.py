"""PNG figures: parity plots (energy per atom, force components) and learning curves.

matplotlib is used with the Agg backend, so no display is needed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["parity_plots", "learning_curves"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    """Write a figure to a temporary name and rename it: a kill never leaves half a PNG."""
    from .._atomic import atomic_open

    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, dpi=120, format="png")


def _parity(ax, ref, pred, label, unit, factor=1000.0, metric_unit=None):
    ref, pred = np.asarray(ref).reshape(-1), np.asarray(pred).reshape(-1)
    keep = np.isfinite(ref) & np.isfinite(pred)
    ref, pred = ref[keep], pred[keep]
    ax.scatter(ref, pred, s=4, alpha=0.5, linewidths=0)
    if ref.size:
        lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    mae = factor * np.abs(ref - pred).mean() if ref.size else float("nan")
    rmse = factor * np.sqrt(((ref - pred) ** 2).mean()) if ref.size else float("nan")
    metric_unit = f"m{unit}" if metric_unit is None else metric_unit
    unit_text = f" ({unit})" if unit else ""
    ax.set_xlabel(f"reference {label}{unit_text}")
    ax.set_ylabel(f"predicted {label}{unit_text}")
    ax.set_title(f"{label}\nMAE {mae:.3g} {metric_unit}, RMSE {rmse:.3g} {metric_unit}".rstrip(), fontsize=10)
    ax.set_aspect("equal", adjustable="datalim")


def parity_plots(evaluation, out_dir, prefix: str = "") -> list[Path]:
    """Write ``{prefix}parity_energy.png``, ``{prefix}parity_forces.png`` and one per other target; return the paths."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    e = evaluation.energy
    if len(e["ref"]):
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        _parity(ax, e["ref"] / e["n_atoms"], e["pred"] / e["n_atoms"], "energy per atom", "eV")
        fig.tight_layout()
        path = out_dir / f"{prefix}parity_energy.png"
        _save(fig, path)
        plt.close(fig)
        written.append(path)
    f = evaluation.forces
    if len(f["ref"]):
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        _parity(ax, f["ref"], f["pred"], "force component", "eV/Å")
        fig.tight_layout()
        path = out_dir / f"{prefix}parity_forces.png"
        _save(fig, path)
        plt.close(fig)
        written.append(path)
    targets = getattr(evaluation, "targets", None) or {}
    for name, d in getattr(evaluation, "parity", {}).items():
        if not len(d["ref"]) or name not in targets:
            continue
        t = targets[name]
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        label = name if t.shape == () else f"{name} component"
        _parity(ax, d["ref"], d["pred"], label, t.unit, t.metric_factor, t.display_unit)
        fig.tight_layout()
        path = out_dir / f"{prefix}parity_{name}.png"
        _save(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def learning_curves(metrics_csv, out_path) -> Path | None:
    """Plot losses and validation MAEs per epoch from the metrics CSV; None if it has no rows."""
    metrics_csv = Path(metrics_csv)
    if not metrics_csv.exists():
        return None
    with open(metrics_csv) as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    plt = _pyplot()

    def column(name):
        return np.array([float(r[name]) if r.get(name) not in (None, "") else np.nan for r in rows])

    epoch = column("epoch")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for name in ("train_loss", "valid_loss"):
        if name in rows[0]:
            axes[0].plot(epoch, column(name), label=name.replace("_", " "))
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    for name, label in (("forces_mae", "force MAE (meV/Å)"), ("energy_per_atom_mae", "energy MAE (meV/atom)"),
                        ("stress_mae", "stress MAE (meV/Å³)")):
        if name in rows[0] and np.isfinite(column(name)).any():
            axes[1].plot(epoch, column(name), label=label)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation error")
    axes[1].legend()
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, out_path)
    plt.close(fig)
    return out_path
