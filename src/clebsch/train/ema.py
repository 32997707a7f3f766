"""Exponential moving average of a model's weights, swapped in for validation and saving."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage:
    """Shadow copy ``s <- d s + (1 - d) p`` of every floating parameter and buffer.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n``
    updates, so early averages are not dominated by the random start.
    An update is one fused operation over the model's tensors, found once per
    model: they must be updated in place (as optimisers and ``load_state_dict``
    do), not replaced by new tensors.

    Examples
    --------
    >>> model = torch.nn.Linear(2, 1)
    >>> ema = ExponentialMovingAverage(model, decay=0.9)
    >>> before = model.weight.detach().clone()
    >>> with torch.no_grad():
    ...     _ = model.weight.add_(1.0)
    >>> ema.update(model)
    >>> with ema.average_parameters(model):
    ...     shift = float((model.weight.detach() - before).mean())
    >>> round(shift, 3)  # decay ramps up: first update uses d = 2/11
    0.818
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.99):
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        self._pairs = None  # (model, shadow tensors, the model's tensors): built once, one foreach call a step

    def _tensors(self, model: torch.nn.Module) -> tuple[list, list]:
        if self._pairs is None or self._pairs[0] is not model:
            state = model.state_dict()  # detached tensors sharing the weights' memory
            keys = [k for k in self.shadow if k in state]
            self._pairs = (model, [self.shadow[k] for k in keys], [state[k] for k in keys])
        return self._pairs[1], self._pairs[2]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        shadow, live = self._tensors(model)
        if shadow:
            torch._foreach_lerp_(shadow, live, 1 - d)  # s + (1 - d) (p - s) = d s + (1 - d) p

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Overwrite the model's weights with the averages."""
        state = model.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v)

    @contextlib.contextmanager
    def average_parameters(self, model: torch.nn.Module):
        """Context in which the model holds the averaged weights; restored on exit."""
        state = model.state_dict()
        backup = {k: state[k].detach().clone() for k in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in backup.items():
                    state[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        for k, v in state["shadow"].items():
            self.shadow[k] = v.clone()
        self._pairs = None
