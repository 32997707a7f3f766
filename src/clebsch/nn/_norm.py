"""Equivariant normalisation layers."""

from __future__ import annotations

import torch

from ..o3 import Irreps

__all__ = ["LayerNorm", "BatchNorm"]


class _IrrepsNorm(torch.nn.Module):
    def __init__(self, irreps, eps: float, affine: bool) -> None:
        super().__init__()
        self.irreps = Irreps(irreps)
        self.eps = eps
        n = sum(m for m, _ in self.irreps)
        self.weight = torch.nn.Parameter(torch.ones(n)) if affine else None
        n_sc = sum(m for m, ir in self.irreps if ir.l == 0 and ir.p == 1)
        self.bias = torch.nn.Parameter(torch.zeros(n_sc)) if affine else None

    def _check(self, x):
        if x.shape[-1] != self.irreps.dim:
            raise ValueError(f"input has shape {tuple(x.shape)}, expected last dimension {self.irreps.dim}")

    def _blocks(self, x):
        i = 0
        for mul, ir in self.irreps:
            yield mul, ir, x[..., i : i + mul * ir.dim].reshape(x.shape[:-1] + (mul, ir.dim))
            i += mul * ir.dim


class LayerNorm(_IrrepsNorm):
    r"""Per-sample equivariant layer norm.

    ``0e`` blocks are centred and divided by their RMS; other blocks are divided by
    the RMS of their components over the copies. Affine: a scale per copy, a bias
    on ``0e`` only.

    Examples
    --------
    >>> ln = LayerNorm("8x0e + 4x1o")
    >>> y = ln(torch.randn(5, 20))
    >>> round(y[:, 8:].pow(2).mean().item(), 3)
    1.0
    """

    def __init__(self, irreps, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(irreps, eps, affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        out, iw, ib = [], 0, 0
        for mul, ir, b in self._blocks(x):
            if ir.l == 0 and ir.p == 1:
                b = b - b.mean(dim=(-2, -1), keepdim=True)
            b = b / (b.pow(2).mean(dim=(-2, -1), keepdim=True) + self.eps).sqrt()
            if self.weight is not None:
                b = b * self.weight[iw : iw + mul, None]
                if ir.l == 0 and ir.p == 1:
                    b = b + self.bias[ib : ib + mul, None]
                    ib += mul
            iw += mul
            out.append(b.reshape(x.shape[:-1] + (mul * ir.dim,)))
        return torch.cat(out, dim=-1)


class BatchNorm(_IrrepsNorm):
    r"""Equivariant batch norm (e3nn-like, ``component`` normalisation).

    Over the batch (all leading dimensions), ``0e`` copies are centred; every copy is
    divided by the root of its mean squared component. Running statistics are kept
    for evaluation.

    Examples
    --------
    >>> bn = BatchNorm("4x0e + 2x1o")
    >>> bn(torch.randn(16, 10)).shape
    torch.Size([16, 10])
    """

    def __init__(self, irreps, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> None:
        super().__init__(irreps, eps, affine)
        self.momentum = momentum
        n = sum(m for m, _ in self.irreps)
        n_sc = sum(m for m, ir in self.irreps if ir.l == 0 and ir.p == 1)
        self.register_buffer("running_mean", torch.zeros(n_sc))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        out, iw, ib = [], 0, 0
        new_mean, new_var = [], []
        for mul, ir, b in self._blocks(x):
            flat = b.reshape(-1, mul, ir.dim)
            scalar = ir.l == 0 and ir.p == 1
            if scalar:
                if self.training:
                    mean = flat.mean(dim=(0, 2))
                    new_mean.append(mean.detach())
                else:
                    mean = self.running_mean[ib : ib + mul]
                b = b - mean[:, None]
                flat = b.reshape(-1, mul, ir.dim)
            if self.training:
                var = flat.pow(2).mean(dim=(0, 2))
                new_var.append(var.detach())
            else:
                var = self.running_var[iw : iw + mul]
            b = b / (var[:, None] + self.eps).sqrt()
            if self.weight is not None:
                b = b * self.weight[iw : iw + mul, None]
                if scalar:
                    b = b + self.bias[ib : ib + mul, None]
            if scalar:
                ib += mul
            iw += mul
            out.append(b.reshape(x.shape[:-1] + (mul * ir.dim,)))
        if self.training:
            with torch.no_grad():
                m = self.momentum
                if new_mean:
                    self.running_mean.mul_(1 - m).add_(m * torch.cat(new_mean))
                self.running_var.mul_(1 - m).add_(m * torch.cat(new_var))
        return torch.cat(out, dim=-1)
