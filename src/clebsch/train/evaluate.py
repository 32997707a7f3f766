"""Run a model over structures: metrics per config_type, predictions, an extxyz with both.

Used for validation during training, the final test report, and ``clebsch evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .metrics import MetricsAccumulator, format_table

__all__ = ["Evaluation", "evaluate", "predict", "write_predictions"]


@dataclass
class Evaluation:
    """Metrics (``{config_type: {metric: value}}``, meV units) and, when kept, predictions."""

    metrics: dict
    loss: float | None = None
    energy: dict = field(default_factory=lambda: {"ref": [], "pred": [], "n_atoms": [], "config_type": []})
    forces: dict = field(default_factory=lambda: {"ref": [], "pred": []})
    outputs: list = field(default_factory=list)

    def table(self, title: str | None = None) -> str:
        return format_table(self.metrics, title)


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

    acc = MetricsAccumulator()
    was_training = model.training
    model.eval()
    result = Evaluation(metrics={})
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
            if keep_outputs:
                result.outputs.append({k: v.cpu() for k, v in out.items()})
    finally:
        model.train(was_training)
    result.metrics = acc.compute()
    result.loss = total_loss / total_n if total_n else None
    if keep:
        for d in (result.energy, result.forces):
            for k in ("ref", "pred", "n_atoms"):
                if k in d:
                    d[k] = np.concatenate(d[k]) if d[k] else np.zeros(0)
    return result


def write_predictions(path, frames, outputs) -> None:
    """Write ``frames`` (``ase.Atoms``) as extxyz with predictions beside the references.

    ``outputs`` are the per-batch output dicts of :func:`evaluate` (``keep_outputs=True``),
    in the order of ``frames``. Predicted energies go to ``info["pred_energy"]``,
    forces to ``arrays["pred_forces"]``, stress and dipole to ``info``; the file is
    written to a temporary name and renamed.
    """
    import os
    import tempfile

    import ase.io

    k = 0
    for out in outputs:
        offset = 0
        for b in range(out["energy"].shape[0]):
            atoms = frames[k]
            n = len(atoms)
            atoms.info["pred_energy"] = float(out["energy"][b])
            if "forces" in out:
                atoms.arrays["pred_forces"] = out["forces"][offset:offset + n].double().numpy()
            if "stress" in out:
                atoms.info["pred_stress"] = out["stress"][b].double().numpy().reshape(-1)
            if "dipole" in out:
                atoms.info["pred_dipole"] = out["dipole"][b].double().numpy()
            offset += n
            k += 1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".xyz", dir=path.parent)
    os.close(fd)
    try:
        ase.io.write(tmp, frames, format="extxyz")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
