"""Run a model over structures: metrics per config_type, predictions, an extxyz with both.

Used for validation during training, the final test report, and ``clebsch evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .metrics import MetricsAccumulator, format_table

__all__ = ["Evaluation", "evaluate", "evaluate_keys", "evaluate_units", "predict", "write_predictions"]


@dataclass
class Evaluation:
    """Metrics (``{config_type: {metric: value}}``, in each target's display unit) and, when kept, predictions.

    ``parity`` holds, for each target with references, ``{"ref": array, "pred": array}``
    (energies with ``n_atoms``) for parity plots.
    """

    metrics: dict
    loss: float | None = None
    energy: dict = field(default_factory=lambda: {"ref": [], "pred": [], "n_atoms": [], "config_type": []})
    forces: dict = field(default_factory=lambda: {"ref": [], "pred": []})
    parity: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)
    targets: dict | None = None
    units: dict = field(default_factory=dict)

    def table(self, title: str | None = None) -> str:
        return format_table(self.metrics, title, self.targets)


def _trained_data(model) -> dict:
    """The ``data`` section of the training config a packaged model carries (empty if none)."""
    package = getattr(model, "package", None) or {}
    return ((package.get("metadata") or {}).get("train_config") or {}).get("data") or {}


def evaluate_keys(model, overrides: dict | None = None) -> dict:
    """Target name -> key in a file for everything ``model`` predicts: the key it was trained from (the
    ``data.keys`` of the training config a packaged model carries), else the target's own name."""
    trained = _trained_data(model).get("keys") or {}
    keys = {name: trained.get(name) or name for name in model.outputs if model.targets[name].trainable}
    for name, key in (overrides or {}).items():
        keys[name] = key
    return {k: v for k, v in keys.items() if v}


def evaluate_units(model, overrides: dict | None = None) -> dict:
    """The files' units (``data.units``) a packaged model was trained with, updated by ``overrides``
    (``{name: unit}``; an empty unit removes the entry)."""
    units = {**(_trained_data(model).get("units") or {}), **(overrides or {})}
    return {k: v for k, v in units.items() if v}


def predict(model, graph, device=None, dtype=None) -> dict:
    """Model outputs for one (batched) graph, detached, on the CPU."""
    if device is not None or dtype is not None:
        graph = graph.to(device=device, dtype=dtype)
    with torch.enable_grad():
        out = model(graph)
    return {k: v.detach() for k, v in out.items()}


def evaluate(model, graphs, batch_size: int = 10, loss_fn=None, keep: bool = False, keep_outputs: bool = False,
             device=None, dtype=None) -> Evaluation:
    """Metrics of ``model`` over ``graphs`` (a list of :class:`~clebsch.graph.AtomicGraph`).

    Parameters
    ----------
    loss_fn : WeightedLoss, optional
        Also report the mean loss (weighted by structures).
    keep : bool
        Keep reference and predicted energies and forces (for parity plots).
    keep_outputs : bool
        Keep each batch's outputs (for writing predictions).
    """
    from ..graph import batch as batch_graphs

    targets = getattr(model, "targets", None)
    acc = MetricsAccumulator(targets)
    was_training = model.training
    model.eval()
    result = Evaluation(metrics={}, targets=targets)
    total_loss, total_n = 0.0, 0
    try:
        for start in range(0, len(graphs), batch_size):
            g = batch_graphs(graphs[start:start + batch_size])
            if device is not None or dtype is not None:
                g = g.to(device=device, dtype=dtype)
            out = predict(model, g)
            acc.update(out, g)
            if loss_fn is not None:
                loss, _ = loss_fn(out, g)
                total_loss += float(loss) * g.num_graphs
                total_n += g.num_graphs
            if keep:
                if "energy" in g.targets and "energy" in out:
                    result.energy["ref"].append(g.targets["energy"].double().cpu().numpy())
                    result.energy["pred"].append(out["energy"].double().cpu().numpy())
                    result.energy["n_atoms"].append(g.n_atoms.cpu().numpy())
                    result.energy["config_type"].extend(g.config_type)
                if "forces" in g.targets and "forces" in out:
                    result.forces["ref"].append(g.targets["forces"].double().cpu().numpy())
                    result.forces["pred"].append(out["forces"].double().cpu().numpy())
                for name in out:
                    if name in ("energy", "forces") or name not in g.targets or name not in acc.targets:
                        continue
                    if not acc.targets[name].trainable:
                        continue
                    d = result.parity.setdefault(name, {"ref": [], "pred": []})
                    d["ref"].append(g.targets[name].double().cpu().numpy().reshape(-1))
                    d["pred"].append(out[name].detach().double().cpu().numpy().reshape(-1))
            if keep_outputs:
                result.outputs.append({k: v.cpu() for k, v in out.items()})
    finally:
        model.train(was_training)
    result.metrics = acc.compute()
    result.units = acc.units()
    result.loss = total_loss / total_n if total_n else None
    if keep:
        for d in (result.energy, result.forces, *result.parity.values()):
            for k in ("ref", "pred", "n_atoms"):
                if k in d:
                    d[k] = np.concatenate(d[k]) if d[k] else np.zeros(0)
    return result


def write_predictions(path, frames, outputs, targets=None, units: dict | None = None) -> None:
    """Write ``frames`` (``ase.Atoms``) as extxyz with predictions beside the references.

    ``outputs`` are the per-batch output dicts of :func:`evaluate` (``keep_outputs=True``),
    in the order of ``frames``. Every prediction goes beside its reference as
    ``pred_<name>``: per-structure ones to ``info`` (flattened), per-atom ones to
    ``arrays`` (``[N, ...]`` flattened per atom); per-edge ones are not written.
    With ``units`` (the file's units, as ``data.units``) predictions are written
    in the file's units, as its references are.
    The file is written to a temporary name and renamed.
    """
    import ase.io

    from ..data.units import unit_factors
    from ..targets import TARGETS

    targets = TARGETS if targets is None else targets
    scale = {name: 1.0 / f for name, f in unit_factors(units, targets).items() if name != "positions"}
    per_atom = {name for name, t in targets.items() if t.level == "atom"}
    per_edge = {name for name, t in targets.items() if t.level == "edge"}
    k = 0
    for out in outputs:
        offset = 0
        n_structures = out["energy"].shape[0]
        for b in range(out["energy"].shape[0]):
            atoms = frames[k]
            n = len(atoms)
            atoms.info["pred_energy"] = float(out["energy"][b]) * scale.get("energy", 1.0)
            for name, value in out.items():
                if name == "energy" or name in per_edge or value.dim() == 0:
                    continue
                if value.shape[0] == n_structures and name not in per_atom:
                    v = value[b].double().numpy().reshape(-1) * scale.get(name, 1.0)
                    atoms.info[f"pred_{name}"] = float(v[0]) if v.size == 1 else v
                elif name in per_atom:
                    v = value[offset:offset + n].double().numpy() * scale.get(name, 1.0)
                    atoms.arrays[f"pred_{name}"] = v.reshape(n, -1) if v.ndim > 2 else v
            offset += n
            k += 1
    from .._atomic import atomic_open

    with atomic_open(path, "w") as handle:
        ase.io.write(handle, frames, format="extxyz")
