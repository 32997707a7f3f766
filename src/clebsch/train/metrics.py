"""Error metrics: MAE and RMSE of energy, energy per atom, forces, stress, dipole; per config_type.

:class:`MetricsAccumulator` sums absolute and squared errors batch by batch
(it never holds all predictions), keyed by config_type and by ``"all"``.
Energies are reported in meV (per structure) and meV/atom, forces in meV/Å,
stress in meV/Å³, dipoles in me·Å.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

__all__ = ["MetricsAccumulator", "format_table", "QUANTITIES"]

#: metric name -> (unit label, factor from the stored unit)
QUANTITIES = {
    "energy": ("meV", 1000.0),
    "energy_per_atom": ("meV/atom", 1000.0),
    "forces": ("meV/Å", 1000.0),
    "stress": ("meV/Å³", 1000.0),
    "dipole": ("me·Å", 1000.0),
}


class MetricsAccumulator:
    """Accumulate errors over batches; :meth:`compute` gives MAE/RMSE per group.

    Examples
    --------
    >>> import types
    >>> acc = MetricsAccumulator()
    >>> g = types.SimpleNamespace(targets={"energy": torch.tensor([1.0, 2.0])}, n_atoms=torch.tensor([1, 1]),
    ...                           batch=torch.tensor([0, 1]), config_type=["a", "b"])
    >>> acc.update({"energy": torch.tensor([1.5, 2.0])}, g)
    >>> acc.compute()["all"]["energy_mae"]
    250.0
    """

    def __init__(self):
        # group -> quantity -> [sum |e|, sum e^2, count]
        self.sums = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0, 0]))

    def _add(self, group, name, err: torch.Tensor):
        err = err[torch.isfinite(err)].double()
        if err.numel() == 0:
            return
        for key in (group, "all"):
            s = self.sums[key][name]
            s[0] += float(err.abs().sum())
            s[1] += float((err ** 2).sum())
            s[2] += int(err.numel())

    @torch.no_grad()
    def update(self, output: dict, graph) -> None:
        targets = graph.targets
        groups = list(graph.config_type)
        n_atoms = graph.n_atoms
        for b, group in enumerate(groups):
            if "energy" in output and "energy" in targets:
                e = (output["energy"][b] - targets["energy"][b]).detach().reshape(1)
                self._add(group, "energy", e)
                self._add(group, "energy_per_atom", e / n_atoms[b])
            for name in ("stress", "dipole"):
                if name in output and name in targets:
                    self._add(group, name, (output[name][b] - targets[name][b]).detach().reshape(-1))
        if "forces" in output and "forces" in targets:
            err = (output["forces"] - targets["forces"]).detach()
            for b, group in enumerate(groups):
                self._add(group, "forces", err[graph.batch == b].reshape(-1))

    def compute(self) -> dict:
        """``{group: {"energy_mae": ..., "energy_rmse": ..., "forces_mae": ..., ...}}`` in meV units."""
        out = {}
        for group, quantities in self.sums.items():
            row = {}
            for name, (abs_sum, sq_sum, count) in quantities.items():
                factor = QUANTITIES[name][1]
                row[f"{name}_mae"] = factor * abs_sum / count
                row[f"{name}_rmse"] = factor * math.sqrt(sq_sum / count)
            out[group] = row
        if "all" in out:
            out = {"all": out.pop("all"), **dict(sorted(out.items()))}
        return out


def format_table(metrics: dict, title: str | None = None) -> str:
    """A plain-text table: one row per config_type, MAE and RMSE columns per quantity.

    Examples
    --------
    >>> print(format_table({"all": {"energy_mae": 1.0, "energy_rmse": 2.0}}))
    config_type  E MAE meV  E RMSE meV
    all              1.000       2.000
    """
    names = [q for q in QUANTITIES if any(f"{q}_mae" in row for row in metrics.values())]
    short = {"energy": "E", "energy_per_atom": "E/atom", "forces": "F", "stress": "S", "dipole": "mu"}
    headers = ["config_type"]
    for q in names:
        unit = QUANTITIES[q][0]
        headers += [f"{short[q]} MAE {unit}", f"{short[q]} RMSE {unit}"]
    rows = []
    for group, row in metrics.items():
        cells = [group]
        for q in names:
            for stat in ("mae", "rmse"):
                v = row.get(f"{q}_{stat}")
                cells.append("-" if v is None else f"{v:.3f}")
        rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(headers)))
    for r in rows:
        lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    return "\n".join(lines)
