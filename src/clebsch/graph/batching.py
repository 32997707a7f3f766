"""Batching graphs into one disconnected graph, and splitting a batch back."""

from __future__ import annotations

import torch

from .atomic_graph import AtomicGraph

__all__ = ["batch", "split"]


def batch(graphs) -> AtomicGraph:
    """Concatenate graphs into one batch, offsetting atom indices.

    Each input may itself be a batch. All must share dtype and device and
    carry the same target names. The batch's ``cutoff`` is the largest of
    the inputs'.

    Examples
    --------
    >>> a = AtomicGraph.from_tensors(torch.tensor([[0.0, 0, 0], [1.0, 0, 0]]), [1, 1], cutoff=2.0)
    >>> b = AtomicGraph.from_tensors(torch.zeros(1, 3), [8], cutoff=2.0)
    >>> ab = batch([a, b])
    >>> ab.n_atoms.tolist(), ab.n_edges.tolist(), ab.batch.tolist()
    ([2, 1], [2, 0], [0, 0, 1])
    """
    graphs = list(graphs)
    if not graphs:
        raise ValueError("cannot batch an empty list of graphs")
    if len(graphs) == 1:
        return graphs[0]
    first = graphs[0]
    for index, g in enumerate(graphs):
        if g.positions.dtype != first.positions.dtype or g.positions.device != first.positions.device:
            raise ValueError(
                f"graph {index} has dtype {g.positions.dtype} on {g.positions.device}, "
                f"graph 0 has {first.positions.dtype} on {first.positions.device}"
            )
        if set(g.targets) != set(first.targets):
            raise ValueError(
                f"graph {index} has targets {sorted(g.targets)} but graph 0 has {sorted(first.targets)}; "
                "every graph of a batch needs the same targets"
            )
    sizes = torch.tensor([g.num_atoms for g in graphs], device=first.positions.device)
    atom_offsets = torch.cumsum(sizes, 0) - sizes
    graph_counts = torch.tensor([g.num_graphs for g in graphs], device=first.positions.device)
    graph_offsets = torch.cumsum(graph_counts, 0) - graph_counts
    targets = {}
    for name in first.targets:
        try:
            targets[name] = torch.cat([g.targets[name] for g in graphs])
        except RuntimeError as exc:
            shapes = [list(g.targets[name].shape) for g in graphs]
            raise ValueError(f"cannot batch target {name!r} of shapes {shapes}: {exc}") from None
    if all(g.config_type is None for g in graphs):
        config_type = None
    else:
        config_type = []
        for g in graphs:
            config_type.extend(g.config_type if g.config_type is not None else ["Default"] * g.num_graphs)
    return AtomicGraph(
        positions=torch.cat([g.positions for g in graphs]),
        numbers=torch.cat([g.numbers for g in graphs]),
        cell=torch.cat([g.cell for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
        edge_index=torch.cat([g.edge_index + off for g, off in zip(graphs, atom_offsets)], dim=1),
        shifts=torch.cat([g.shifts for g in graphs]),
        batch=torch.cat([g.batch + off for g, off in zip(graphs, graph_offsets)]),
        n_atoms=torch.cat([g.n_atoms for g in graphs]),
        n_edges=torch.cat([g.n_edges for g in graphs]),
        cutoff=max(float(g.cutoff) for g in graphs),
        targets=targets,
        config_type=config_type,
    )


def split(graph: AtomicGraph) -> list[AtomicGraph]:
    """The structures of a batch as single-structure graphs (inverse of :func:`batch`).

    Edges must be grouped by structure, as :func:`batch` leaves them. A target
    whose leading dimension is ``N`` is split per atom, one whose leading
    dimension is ``B`` per structure.

    Examples
    --------
    >>> a = AtomicGraph.from_tensors(torch.tensor([[0.0, 0, 0], [1.0, 0, 0]]), [1, 1], cutoff=2.0)
    >>> [g.num_atoms for g in batch([a, a, a]).split()]
    [2, 2, 2]
    """
    n_graphs, n_total = graph.num_graphs, graph.num_atoms
    atoms = graph.n_atoms.tolist()
    edges = graph.n_edges.tolist()
    if n_graphs == 1:
        return [graph]
    offsets = torch.cumsum(graph.n_atoms, 0) - graph.n_atoms
    edge_offsets = torch.repeat_interleave(offsets, graph.n_edges)
    local_edges = (graph.edge_index - edge_offsets).split(edges, dim=1)
    per_target = {}
    for name, value in graph.targets.items():
        if value.shape[0] == n_total:
            per_target[name] = value.split(atoms)
        elif value.shape[0] == n_graphs:
            per_target[name] = value.split(1)
        else:
            raise ValueError(
                f"target {name!r} has leading dimension {value.shape[0]}, neither num_atoms={n_total} "
                f"nor num_graphs={n_graphs}"
            )
    pieces = zip(
        graph.positions.split(atoms),
        graph.numbers.split(atoms),
        graph.cell.split(1),
        graph.pbc.split(1),
        local_edges,
        graph.shifts.split(edges),
        graph.n_atoms.split(1),
        graph.n_edges.split(1),
    )
    out = []
    for b, (pos, num, cell, pbc, ei, sh, na, ne) in enumerate(pieces):
        out.append(
            AtomicGraph(
                positions=pos,
                numbers=num,
                cell=cell,
                pbc=pbc,
                edge_index=ei,
                shifts=sh,
                batch=torch.zeros(atoms[b], dtype=torch.long, device=pos.device),
                n_atoms=na,
                n_edges=ne,
                cutoff=graph.cutoff,
                targets={name: parts[b] for name, parts in per_target.items()},
                config_type=None if graph.config_type is None else [graph.config_type[b]],
            )
        )
    return out
