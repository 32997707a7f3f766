"""Learning-rate schedule: linear warm-up, then reduce-on-plateau or cosine decay.

The schedule sets the learning rate of every parameter group once per epoch
and keeps its whole state in :meth:`state_dict`, so a resumed run continues
with exactly the same rates.
"""

from __future__ import annotations

import math

__all__ = ["LRSchedule"]


class LRSchedule:
    """Per-epoch learning rates.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    lr : float
        Peak learning rate.
    name : {"plateau", "cosine", "none"}
    warmup_epochs : int
        Epochs of linear ramp from ``lr / 10`` to ``lr``.
    factor, patience : float, int
        Plateau: multiply by ``factor`` after ``patience`` epochs without a better validation loss.
    min_lr : float
    max_epochs : int
        Cosine: length of the decay.

    Examples
    --------
    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> s = LRSchedule(opt, 1.0, "cosine", warmup_epochs=1, max_epochs=3, min_lr=0.0)
    >>> [round(s.start_epoch(e), 3) for e in range(3)]
    [0.1, 1.0, 0.5]
    """

    def __init__(self, optimizer, lr: float, name: str = "plateau", warmup_epochs: int = 0, factor: float = 0.8,
                 patience: int = 10, min_lr: float = 1e-6, max_epochs: int = 100):
        if name not in ("plateau", "cosine", "none"):
            raise ValueError(f"scheduler name must be plateau, cosine or none, got {name!r}")
        self.optimizer = optimizer
        self.base_lr = float(lr)
        self.name = name
        self.warmup = int(warmup_epochs)
        self.factor = float(factor)
        self.patience = int(patience)
        self.min_lr = float(min_lr)
        self.max_epochs = int(max_epochs)
        self.plateau_lr = float(lr)
        self.best = math.inf
        self.bad_epochs = 0
        self.progress = 0.0  # cosine: fraction of the budget spent, set by the trainer

    def _set(self, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def start_epoch(self, epoch: int, progress: float | None = None) -> float:
        """Set and return the learning rate for ``epoch`` (0-based)."""
        if epoch < self.warmup:
            return self._set(self.base_lr * (0.1 + 0.9 * epoch / self.warmup))
        if self.name == "cosine":
            span = max(self.max_epochs - self.warmup, 1)
            t = (epoch - self.warmup) / span
            if progress is not None:
                t = max(t, progress)
            t = min(max(t, 0.0), 1.0)
            return self._set(self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t)))
        if self.name == "plateau":
            return self._set(self.plateau_lr)
        return self._set(self.base_lr)

    def end_epoch(self, epoch: int, valid_loss: float | None) -> None:
        """Report the epoch's validation loss (plateau only)."""
        if self.name != "plateau" or valid_loss is None or epoch < self.warmup:
            return
        if valid_loss < self.best:
            self.best = valid_loss
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.plateau_lr = max(self.plateau_lr * self.factor, self.min_lr)
                self.bad_epochs = 0

    def restart(self, lr: float | None = None, factor: float | None = None) -> None:
        """Start a new stage with a fresh plateau memory and optionally another rate.

        ``lr``: a new peak rate. ``factor``: scale the rate in force now (plateau, none) or the rest
        of the cosine decay by this; the floor ``min_lr`` is lowered with it where needed.
        """
        if lr is not None and factor is not None:
            raise ValueError("restart takes lr or factor, not both")
        if lr is not None:
            self.base_lr = self.plateau_lr = float(lr)
        elif factor is not None:
            if self.name == "cosine":
                self.base_lr *= float(factor)
            else:
                current = self.plateau_lr if self.name == "plateau" else self.base_lr
                self.base_lr = self.plateau_lr = current * float(factor)
            self.min_lr = min(self.min_lr, self.base_lr)
        self.best = math.inf
        self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("base_lr", "plateau_lr", "min_lr", "best", "bad_epochs", "progress")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
