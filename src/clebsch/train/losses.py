"""Weighted loss over energy per atom, forces, stress and dipole (MSE or Huber).

Missing targets (NaN after batching structures that lack them) are masked out.
Each term is a sum over items divided by a count, and :class:`WeightedLoss`
can take the counts from outside (``counts=``) so that data-parallel ranks
normalise by the global count and their summed gradients match one process.
"""

from __future__ import annotations

import torch

__all__ = ["WeightedLoss", "TERMS"]

TERMS = ("energy", "forces", "stress", "dipole")


def _elementwise(kind: str, delta: float, pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if kind == "mse":
        return (pred - ref) ** 2
    return torch.nn.functional.huber_loss(pred, ref, reduction="none", delta=delta)


def term_values(output: dict, graph) -> dict:
    """(prediction, reference, per-item mask) for each loss term present in both."""
    out = {}
    targets = graph.targets
    n_atoms = graph.n_atoms.to(graph.positions.dtype)
    if "energy" in output and "energy" in targets:
        out["energy"] = (output["energy"] / n_atoms, targets["energy"].to(output["energy"].dtype) / n_atoms)
    for name in ("forces", "stress", "dipole"):
        if name in output and name in targets:
            out[name] = (output[name], targets[name].to(output[name].dtype))
    return out


class WeightedLoss:
    """``sum_k w_k * mean(loss(pred_k, ref_k))`` over the terms with a positive weight.

    Parameters
    ----------
    weights : dict
        ``{"energy": 1.0, "forces": 100.0, "stress": 0.0, "dipole": 0.0}``.
    kind : {"mse", "huber"}
    huber_delta : float

    Examples
    --------
    >>> import types
    >>> g = types.SimpleNamespace(targets={"energy": torch.tensor([2.0])}, n_atoms=torch.tensor([2]),
    ...                           positions=torch.zeros(2, 3))
    >>> loss, parts = WeightedLoss({"energy": 1.0})({"energy": torch.tensor([0.0])}, g)
    >>> float(loss)
    1.0
    """

    def __init__(self, weights: dict, kind: str = "mse", huber_delta: float = 0.01):
        if kind not in ("mse", "huber"):
            raise ValueError(f"loss kind must be 'mse' or 'huber', got {kind!r}")
        self.weights = {k: float(v) for k, v in weights.items() if k in TERMS and float(v) > 0}
        self.kind = kind
        self.delta = float(huber_delta)

    def counts(self, output: dict, graph) -> dict:
        """Number of finite reference values per term (for global normalisation)."""
        return {
            name: torch.isfinite(ref).sum().to(pred.dtype)
            for name, (pred, ref) in term_values(output, graph).items()
            if name in self.weights
        }

    def __call__(self, output: dict, graph, counts: dict | None = None):
        """Return ``(total loss, {term: unweighted loss as float})``."""
        total = None
        parts = {}
        values = term_values(output, graph)
        for name, weight in self.weights.items():
            if name not in values:
                continue
            pred, ref = values[name]
            mask = torch.isfinite(ref)
            err = _elementwise(self.kind, self.delta, pred, torch.where(mask, ref, pred.detach()))
            err = torch.where(mask, err, torch.zeros_like(err))
            n = counts[name] if counts is not None else mask.sum().to(err.dtype)
            term = err.sum() / n.clamp(min=1)
            parts[name] = float(term.detach())
            total = weight * term if total is None else total + weight * term
        if total is None:
            raise ValueError(
                f"no loss term could be computed: weights {self.weights} but the batch has targets "
                f"{sorted(graph.targets)} and the model gives {sorted(output)}"
            )
        return total, parts
