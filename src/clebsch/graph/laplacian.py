"""Graph Laplacians and Laplacian-eigenvector positional encodings.

The symmetric-normalised Laplacian of a graph with adjacency ``A`` and degrees
``D_ii = sum_j A_ij`` is ``L = I - D^{-1/2} A D^{-1/2}``. ``A_ij`` counts the
edges between receiver ``i`` and sender ``j`` (``edge_index[1]``, ``edge_index[0]``),
so a full neighbour list (both directions, as every list of :mod:`clebsch.graph.neighbors`)
gives a symmetric ``A``. An atom without edges has degree 0; its row of ``L`` is
the identity row (``D^{-1/2}`` is taken as 0 there), never NaN.

Eigenvectors of ``L`` give atoms positional encodings that depend on the bond
topology alone (Dwivedi & Bresson 2020, "A generalization of transformer networks
to graphs"). Each structure of a batch is decomposed on its own, as a dense matrix
(fine for molecules: hundreds of atoms).
"""

from __future__ import annotations

import torch

__all__ = ["normalized_laplacian", "laplacian_positional_encoding", "structure_slots", "ZERO_EIGENVALUE_TOLERANCE"]

ZERO_EIGENVALUE_TOLERANCE = 1e-8
"""Eigenvalues of the float64 Laplacian below this count as zero (one per connected component).
The smallest non-zero eigenvalue of a connected graph's normalised Laplacian is at least
``1 / (diameter * sum of degrees)``, above 1e-7 for any molecule of fewer than a thousand atoms."""

_PADDING_EIGENVALUE = 3.0  # above the spectrum of any normalised Laplacian (which lies in [0, 2])


def structure_slots(batch: torch.Tensor, num_graphs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Atoms per structure [B] and each atom's rank within its structure [N] (in the order of ``batch``)."""
    counts = torch.bincount(batch, minlength=num_graphs)
    order = torch.argsort(batch, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(batch)
    rank[order] = torch.arange(batch.shape[0], device=batch.device) - starts[batch[order]]
    return counts, rank


def _dense_adjacency(edge_index: torch.Tensor, batch: torch.Tensor, num_graphs: int, size: int,
                     rank: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``A [B, M, M]``: ``A[b, i, j]`` counts the edges ``j -> i`` of structure ``b`` (``i, j`` ranks)."""
    sender, receiver = edge_index[0], edge_index[1]
    if bool((batch[sender] != batch[receiver]).any()):
        e = int((batch[sender] != batch[receiver]).nonzero()[0])
        raise ValueError(f"edge {e} joins atoms {int(sender[e])} and {int(receiver[e])} of different structures "
                         f"({int(batch[sender[e]])} and {int(batch[receiver[e]])})")
    adjacency = torch.zeros(num_graphs, size, size, dtype=dtype, device=batch.device)
    ones = torch.ones(sender.shape[0], dtype=dtype, device=batch.device)
    return adjacency.index_put_((batch[receiver], rank[receiver], rank[sender]), ones, accumulate=True)


def _normalize(adjacency: torch.Tensor) -> torch.Tensor:
    """``I - D^{-1/2} A D^{-1/2}`` over the last two dimensions; degree 0 gives an identity row."""
    degree = adjacency.sum(-1)
    inv_sqrt = torch.where(degree > 0, degree.clamp(min=1e-300).rsqrt(), torch.zeros_like(degree))
    eye = torch.eye(adjacency.shape[-1], dtype=adjacency.dtype, device=adjacency.device)
    return eye - inv_sqrt[..., :, None] * adjacency * inv_sqrt[..., None, :]


def normalized_laplacian(edge_index: torch.Tensor, num_nodes: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The symmetric-normalised Laplacian ``I - D^{-1/2} A D^{-1/2}`` as a dense [N, N] matrix.

    ``A[i, j]`` counts the edges ``j -> i`` (``edge_index[0]`` the sender, ``[1]`` the
    receiver); an atom without edges gets the identity row. A batch's edges never join
    two structures, so its Laplacian is block diagonal.

    Examples
    --------
    >>> import torch
    >>> path = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])  # 0 - 1 - 2, atom 3 alone
    >>> normalized_laplacian(path, 4, dtype=torch.float64).numpy().round(3)
    array([[ 1.   , -0.707,  0.   ,  0.   ],
           [-0.707,  1.   , -0.707,  0.   ],
           [ 0.   , -0.707,  1.   ,  0.   ],
           [ 0.   ,  0.   ,  0.   ,  1.   ]])
    """
    dtype = dtype or torch.get_default_dtype()
    edge_index = torch.as_tensor(edge_index, dtype=torch.long).reshape(2, -1)
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(f"edge_index refers to atom {int(edge_index.max())} (or a negative one) of a graph "
                         f"with {num_nodes} atoms")
    batch = torch.zeros(num_nodes, dtype=torch.long, device=edge_index.device)
    rank = torch.arange(num_nodes, device=edge_index.device)
    adjacency = _dense_adjacency(edge_index, batch, 1, num_nodes, rank, dtype)[0]
    return _normalize(adjacency)


def laplacian_positional_encoding(edge_index: torch.Tensor, batch: torch.Tensor, k: int, *,
                                  num_graphs: int | None = None, random_signs: bool = False,
                                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The first ``k`` non-trivial Laplacian eigenvectors of each structure, per atom: [N, k].

    For each structure ``b`` of the batch (atoms ``batch == b``, edges among them) the
    normalised Laplacian is diagonalised in float64 and the eigenvectors sorted by
    ascending eigenvalue. The trivial eigenvectors are skipped: one per connected
    component, i.e. the whole zero eigenspace, whose dimension is the number of
    components ``C_b`` (eigenvalues below :data:`ZERO_EIGENVALUE_TOLERANCE`). An atom
    without edges is a component of its own: its Laplacian row is the identity (eigenvalue 1,
    eigenvector the unit vector on that atom), which is that component's trivial
    eigenvector and is skipped too; the encoding is zero on such an atom. Columns
    ``C_b .. C_b + k - 1`` are returned; a structure with fewer than ``k``
    non-trivial eigenvectors (``n_b - C_b < k``, e.g. fewer than ``k + 1`` atoms)
    gets zeros in the remaining columns.

    Eigenvectors are defined up to sign (and, within a degenerate eigenvalue, up to a
    rotation): the encoding is not invariant to relabelling the atoms. ``random_signs``
    flips each eigenvector of each structure with probability 1/2 (in training, so a
    model learns not to rely on the sign). No gradient flows through the result.

    Parameters
    ----------
    edge_index : Tensor [2, E] long
        Sender (row 0) and receiver (row 1); never joining two structures.
    batch : Tensor [N] long
        Structure of each atom.
    k : int
        Number of eigenvectors per atom.
    num_graphs : int, optional
        Number of structures (default ``batch.max() + 1``).
    random_signs : bool
        Flip the sign of each eigenvector at random.
    generator : torch.Generator, optional
        Source of the random signs.

    Returns
    -------
    Tensor [N, k], in the floating dtype of the default dtype.

    Examples
    --------
    >>> import torch
    >>> ring = torch.tensor([[0, 1, 1, 2, 2, 0], [1, 0, 2, 1, 0, 2]])  # a triangle, then a lone atom
    >>> pe = laplacian_positional_encoding(ring, torch.tensor([0, 0, 0, 1]), k=3)
    >>> pe.shape, pe[3].tolist(), pe[:, 2].tolist()  # two non-trivial eigenvectors; zero padding
    (torch.Size([4, 3]), [0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k (the number of Laplacian eigenvectors) must be a positive integer, got {k!r}")
    k = int(k)
    batch = torch.as_tensor(batch, dtype=torch.long).reshape(-1)
    dtype = torch.get_default_dtype()
    n = batch.shape[0]
    if n == 0:
        return torch.zeros(0, k, dtype=dtype, device=batch.device)
    num_graphs = int(batch.max()) + 1 if num_graphs is None else int(num_graphs)
    with torch.no_grad():
        counts, rank = structure_slots(batch, num_graphs)
        size = int(counts.max())
        adjacency = _dense_adjacency(edge_index, batch, num_graphs, size, rank, torch.float64)
        adjacency = 0.5 * (adjacency + adjacency.transpose(1, 2))
        laplacian = _normalize(adjacency)
        # lone atoms: a zero row, so the zero eigenspace is one vector per component;
        # padding: above the spectrum, so padded slots come last
        slot = torch.arange(size, device=batch.device)
        real = slot[None, :] < counts[:, None]
        lone = real & (adjacency.sum(-1) == 0)
        diagonal = torch.where(lone, 0.0, torch.where(real, 1.0, _PADDING_EIGENVALUE)).to(torch.float64)
        laplacian = laplacian - torch.diag_embed(torch.diagonal(laplacian, dim1=1, dim2=2)) + torch.diag_embed(diagonal)
        eigenvalues, eigenvectors = torch.linalg.eigh(laplacian)
        components = ((eigenvalues < ZERO_EIGENVALUE_TOLERANCE) & real).sum(-1)
        column = components[:, None] + torch.arange(k, device=batch.device)[None, :]
        chosen = eigenvectors.gather(2, column.clamp(max=size - 1)[:, None, :].expand(num_graphs, size, k))
        present = torch.arange(k, device=batch.device)[None, :] < (counts - components)[:, None]
        chosen = chosen * present[:, None, :]
        if random_signs:
            flip = torch.randint(0, 2, (num_graphs, k), generator=generator, device="cpu").to(batch.device)
            chosen = chosen * (1.0 - 2.0 * flip.to(torch.float64))[:, None, :]
        return chosen[batch, rank].to(dtype)
