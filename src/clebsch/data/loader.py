"""Batching datasets for training: a collate function and a DataLoader helper."""

from __future__ import annotations

import torch

from ..graph import AtomicGraph, batch

__all__ = ["collate", "make_loader"]


def collate(graphs: list[AtomicGraph]) -> AtomicGraph:
    """DataLoader ``collate_fn``: a list of graphs -> one batched graph.

    >>> import torch
    >>> from clebsch.graph import AtomicGraph
    >>> g = AtomicGraph.from_tensors(torch.tensor([[0.0, 0, 0], [1.0, 0, 0]]), [1, 1], 2.0)
    >>> collate([g, g, g]).num_graphs
    3
    """
    return batch(graphs)


def make_loader(dataset, batch_size: int = 8, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                **kwargs) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` yielding batched :class:`~clebsch.graph.AtomicGraph`.

    Shuffling uses its own generator seeded with ``seed``, so the order is reproducible.
    """
    if len(dataset) == 0:
        raise ValueError("cannot make a loader over an empty dataset")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                                       collate_fn=collate, generator=generator, **kwargs)
