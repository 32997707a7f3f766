"""Reordering the columns of features: gathers, permutations and placements, built once.

Layers that rearrange the components of ``mul_ir`` features (:class:`~clebsch.nn.Linear`,
:class:`~clebsch.nn.TensorProduct`) describe each rearrangement at construction
by the source column of every result column, and :class:`ColumnMap` picks the
cheapest way to apply it: nothing (identity), a permutation whose backward is the
inverse permutation (no zero fill, no scatter), or a plain gather / scatter-add.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["ColumnMap"]


class _Permute(torch.autograd.Function):
    """``x[:, perm]`` whose backward is the inverse permutation (no zero fill, no scatter)."""

    @staticmethod
    def forward(ctx, x, perm, inv):
        ctx.save_for_backward(perm, inv)
        return x.index_select(1, perm)

    @staticmethod
    def backward(ctx, g):
        perm, inv = ctx.saved_tensors
        return _Permute.apply(g, inv, perm), None, None


def _inverse(src: Sequence[int], n: int) -> list[int] | None:
    """The inverse of ``src`` if it is a permutation of ``range(n)`` (``n > 0``), else ``None``."""
    if n == 0 or len(src) != n or sorted(src) != list(range(n)):
        return None
    inv = [0] * n
    for k, s in enumerate(src):
        inv[s] = k
    return inv


class ColumnMap:
    """A fixed rearrangement of the columns of ``[z, c]`` tensors, registered as buffers of a module.

    With ``place=False`` it is a gather, ``y[:, k] = x[:, src[k]]`` (``x`` has ``n``
    columns); with ``place=True`` it places columns, ``y[:, src[k]] += x[:, k]``
    into ``n`` zero columns (repeated targets add up, targets not named stay zero).
    A gather or placement that permutes all ``n`` columns runs as a permutation
    whose backward is the inverse permutation; one that changes nothing is skipped.

    The buffers live on ``module`` (so they follow ``.to(device)``) under ``name``
    and ``name + "_inv"``; call the map with that module.

    Examples
    --------
    >>> m = torch.nn.Module()
    >>> swap = ColumnMap(m, "_swap", [1, 0, 2], 3)
    >>> swap.kind, swap(m, torch.tensor([[10.0, 20.0, 30.0]])).tolist()
    ('permute', [[20.0, 10.0, 30.0]])
    >>> put = ColumnMap(m, "_put", [2, 0], 3, place=True)
    >>> put.kind, put(m, torch.tensor([[1.0, 2.0]])).tolist()
    ('scatter', [[2.0, 0.0, 1.0]])
    """

    def __init__(self, module: torch.nn.Module, name: str, src: Sequence[int], n: int, *, place: bool = False):
        src = [int(s) for s in src]
        self.name, self.n = name, int(n)
        inv = _inverse(src, self.n)
        if inv is not None and src == list(range(self.n)):
            self.kind = "identity"
        elif inv is not None:
            self.kind = "permute"
            perm, back = (inv, src) if place else (src, inv)  # placing by src = gathering by its inverse
            module.register_buffer(name, torch.tensor(perm, dtype=torch.long), persistent=False)
            module.register_buffer(name + "_inv", torch.tensor(back, dtype=torch.long), persistent=False)
        else:
            self.kind = "scatter" if place else "gather"
            module.register_buffer(name, torch.tensor(src, dtype=torch.long), persistent=False)

    def __call__(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "identity":
            return x
        idx = getattr(module, self.name)
        if self.kind == "permute":
            return _Permute.apply(x, idx, getattr(module, self.name + "_inv"))
        if self.kind == "gather":
            return x.index_select(1, idx)
        return x.new_zeros(x.shape[0], self.n).index_add(1, idx, x)

    def __repr__(self) -> str:
        return f"ColumnMap({self.name!r}, {self.kind}, n={self.n})"
