"""Error metrics of every target: MAE and RMSE per config_type, in each target's units.

:class:`MetricsAccumulator` sums absolute and squared errors batch by batch
(it never holds all predictions), keyed by config_type and by ``"all"``. The
quantities and their units come from the target declarations
(:mod:`clebsch.targets`): energies are reported in meV (per structure) and
meV/atom, forces in meV/Å, stress in meV/Å³, dipoles in me·Å, a declared
target in its own unit (a Cartesian tensor component by component, in its
Cartesian form). Predictions that are NaN or infinite where a reference exists
are counted (``{name}_nonfinite``), never dropped silently.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from ..targets import TARGETS, Target

__all__ = ["MetricsAccumulator", "format_table", "quantities"]


def quantities(targets: dict[str, Target] | None = None) -> dict[str, tuple[str, float, str]]:
    """Metric name -> (unit label, factor from the stored unit, short label), in table order."""
    targets = TARGETS if targets is None else targets
    out = {}
    for name, t in targets.items():
        if not t.trainable:
            continue
        out[name] = (t.display_unit, t.metric_factor, t.label)
        if t.per_atom:
            out[f"{name}_per_atom"] = (f"{t.display_unit}/atom", t.metric_factor, f"{t.label}/atom")
    return out


class MetricsAccumulator:
    """Accumulate errors over batches; :meth:`compute` gives MAE/RMSE per group.

    Examples
    --------
    >>> import types
    >>> acc = MetricsAccumulator()
    >>> g = types.SimpleNamespace(targets={"energy": torch.tensor([1.0, 2.0])}, n_atoms=torch.tensor([1, 1]),
    ...                           batch=torch.tensor([0, 1]), config_type=["a", "b"], per_edge_targets=())
    >>> acc.update({"energy": torch.tensor([1.5, 2.0])}, g)
    >>> acc.compute()["all"]["energy_mae"]
    250.0
    """

    def __init__(self, targets: dict[str, Target] | None = None):
        self.targets = TARGETS if targets is None else targets
        self.quantities = quantities(self.targets)
        # group -> quantity -> [sum |e|, sum e^2, count, non-finite predictions]
        self.sums = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0, 0, 0]))

    def _add(self, group, name, pred: torch.Tensor, ref: torch.Tensor):
        pred, ref = pred.detach().double().reshape(-1), ref.detach().double().reshape(-1)
        has_ref = torch.isfinite(ref)
        if not bool(has_ref.any()):
            return
        pred, ref = pred[has_ref], ref[has_ref]
        finite = torch.isfinite(pred)
        err = (pred - ref)[finite]
        bad = int((~finite).sum())
        for key in (group, "all"):
            s = self.sums[key][name]
            s[0] += float(err.abs().sum())
            s[1] += float((err ** 2).sum())
            s[2] += int(err.numel())
            s[3] += bad

    @torch.no_grad()
    def update(self, output: dict, graph) -> None:
        refs = graph.targets
        groups = list(graph.config_type)
        n_atoms = graph.n_atoms
        per_edge = getattr(graph, "per_edge_targets", ())
        for name, pred in output.items():
            t = self.targets.get(name)
            if t is None or not t.trainable or name not in refs:
                continue
            ref = refs[name]
            if t.level == "structure":
                for b, group in enumerate(groups):
                    self._add(group, name, pred[b], ref[b])
                    if t.per_atom:
                        self._add(group, f"{name}_per_atom", pred[b] / n_atoms[b], ref[b] / n_atoms[b])
                continue
            owner = graph.batch if t.level == "atom" else graph.batch[graph.edge_index[1]]
            if t.level == "edge" and name not in per_edge:
                continue
            if len(groups) == 1:
                self._add(groups[0], name, pred, ref)
                continue
            for b, group in enumerate(groups):
                rows = owner == b
                self._add(group, name, pred[rows], ref[rows])

    def compute(self) -> dict:
        """``{group: {"energy_mae": ..., "energy_rmse": ..., "forces_mae": ..., ...}}`` in the display units.

        A quantity with non-finite predictions also gets ``{name}_nonfinite``
        (their count); its MAE / RMSE are over the finite ones, and NaN when
        none is finite.
        """
        out = {}
        for group, values in self.sums.items():
            row = {}
            for name in self.quantities:
                if name not in values:
                    continue
                abs_sum, sq_sum, count, bad = values[name]
                factor = self.quantities[name][1]
                row[f"{name}_mae"] = factor * abs_sum / count if count else math.nan
                row[f"{name}_rmse"] = factor * math.sqrt(sq_sum / count) if count else math.nan
                if bad:
                    row[f"{name}_nonfinite"] = bad
            out[group] = row
        if "all" in out:
            out = {"all": out.pop("all"), **dict(sorted(out.items()))}
        return out

    def units(self) -> dict[str, str]:
        """Display unit of every quantity."""
        return {name: unit for name, (unit, _, _) in self.quantities.items()}


def nonfinite_counts(metrics: dict) -> dict[str, int]:
    """``{quantity: count}`` of non-finite predictions over all structures."""
    row = metrics.get("all", {})
    return {k.removesuffix("_nonfinite"): int(v) for k, v in row.items() if k.endswith("_nonfinite")}


def format_table(metrics: dict, title: str | None = None, targets: dict[str, Target] | None = None) -> str:
    """A plain-text table: one row per config_type, MAE and RMSE columns per quantity.

    Examples
    --------
    >>> print(format_table({"all": {"energy_mae": 1.0, "energy_rmse": 2.0}}))
    config_type  E MAE meV  E RMSE meV
    all              1.000       2.000
    """
    qs = quantities(targets)
    present = {k.rsplit("_", 1)[0] for row in metrics.values() for k in row if k.endswith("_mae")}
    names = [q for q in qs if q in present]
    names += sorted(present - set(names))
    headers = ["config_type"]
    for q in names:
        unit, _, short = qs.get(q, ("", 1.0, q))
        unit = f" {unit}" if unit else ""
        headers += [f"{short} MAE{unit}", f"{short} RMSE{unit}"]
    rows = []
    for group, row in metrics.items():
        cells = [group]
        for q in names:
            for stat in ("mae", "rmse"):
                v = row.get(f"{q}_{stat}")
                cells.append("-" if v is None else f"{v:.3f}")
        rows.append(cells)
    lines = []
    if title:
        lines.append(title)
    if not names:
        lines.append("no reference values to compare with (no target of the model was found in the data)")
        return "\n".join(lines)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines.append("  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(headers)))
    for r in rows:
        lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    bad = nonfinite_counts(metrics)
    if bad:
        lines.append("non-finite predictions (left out of MAE / RMSE): "
                     + ", ".join(f"{k}: {v}" for k, v in bad.items()))
    return "\n".join(lines)
