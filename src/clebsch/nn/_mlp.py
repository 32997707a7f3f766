"""Scalar multilayer perceptron with variance-preserving initialisation."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ._activation import normalize2mom
from ._silu import silu

__all__ = ["ScalarMLP"]


class ScalarMLP(torch.nn.Module):
    r"""Multilayer perceptron on invariant features.

    Each layer computes :math:`h \mapsto \sigma(h W / \sqrt{n_\mathrm{in}} + b)` with
    :math:`W \sim N(0, 1)`, :math:`b = 0` and :math:`\sigma` rescaled to unit second
    moment (``normalize2mom``), so unit-variance inputs give unit-variance outputs at
    initialisation. No activation after the last layer.

    Parameters
    ----------
    dims : sequence of int
        ``[in, hidden..., out]``.
    activation : callable
        Scalar activation (default SiLU).
    bias : bool
        Add a (zero-initialised) bias to every layer.

    Examples
    --------
    >>> mlp = ScalarMLP([8, 64, 64, 3])
    >>> mlp(torch.randn(10, 8)).shape
    torch.Size([10, 3])
    """

    def __init__(self, dims: Sequence[int], activation: Callable = silu, bias: bool = False) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2 or any(d < 1 for d in dims):
            raise ValueError(f"dims must list at least two positive sizes, got {dims}")
        self.dims = dims
        self.act = normalize2mom(activation) if activation is not None else None
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(a, b)) for a, b in zip(dims[:-1], dims[1:])]
        )
        self.biases = (
            torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(b)) for b in dims[1:]]) if bias else None
        )

    def forward(self, x: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """The MLP of ``x``; with ``columns`` (long ``[k]``), only those outputs, in that order."""
        if x.shape[-1] != self.dims[0]:
            raise ValueError(f"ScalarMLP expects last dimension {self.dims[0]}, got shape {tuple(x.shape)}")
        n = len(self.weights)
        for i, w in enumerate(self.weights):
            last = i == n - 1
            w = w / w.shape[0] ** 0.5
            x = x @ (w.index_select(1, columns) if last and columns is not None else w)
            if self.biases is not None:
                b = self.biases[i]
                x = x + (b.index_select(0, columns) if last and columns is not None else b)
            if not last and self.act is not None:
                x = self.act(x)
        return x

    def extra_repr(self) -> str:
        return f"dims={self.dims}"
