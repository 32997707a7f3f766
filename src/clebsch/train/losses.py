"""Weighted loss over any targets (MSE or Huber), with per-structure weights.

There is one term per target with a positive weight; what a term compares
comes from the target's declaration (:mod:`clebsch.targets`): energies are
compared per atom, everything else as stored (Cartesian tensors in their
Cartesian form). Missing reference values (NaN after batching structures that
lack them) are masked out. Each structure carries a weight — its ``weight``
target times its config_type's weight — that multiplies its errors (per-atom
and per-edge errors take their structure's weight).

Each term is a sum over items divided by a count, and :class:`WeightedLoss`
can take the counts from outside (``counts=``) so that data-parallel ranks
normalise by the global count and their summed gradients match one process.
"""

from __future__ import annotations

import torch

from ..targets import TARGETS, Target

__all__ = ["WeightedLoss", "term_values", "structure_weights", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite."""


def _elementwise(kind: str, delta: float, pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if kind == "mse":
        return (pred - ref) ** 2
    return torch.nn.functional.huber_loss(pred, ref, reduction="none", delta=delta)


def structure_weights(graph, config_type_weights: dict | None = None) -> torch.Tensor | None:
    """Per-structure loss weights ``[B]``: the ``weight`` target times the config_type weight; None if all are 1."""
    w = None
    if "weight" in graph.targets:
        w = graph.targets["weight"].reshape(-1).to(graph.positions.dtype)
        w = torch.where(torch.isfinite(w), w, torch.ones_like(w))
    if config_type_weights:
        ct = torch.tensor([float(config_type_weights.get(c, 1.0)) for c in graph.config_type],
                          dtype=graph.positions.dtype, device=graph.positions.device)
        w = ct if w is None else w * ct
    return w


def term_values(output: dict, graph, targets: dict[str, Target] | None = None) -> dict:
    """``{name: (prediction, reference, level)}`` for each target present in both."""
    targets = TARGETS if targets is None else targets
    out = {}
    refs = graph.targets
    n_atoms = graph.n_atoms.to(graph.positions.dtype)
    for name, pred in output.items():
        t = targets.get(name)
        if t is None or not t.trainable or name not in refs:
            continue
        ref = refs[name].to(pred.dtype)
        if t.loss_metric in ("orthonormal", "density_matrix"):  # each structure's whole matrix
            out[name] = _whole_matrix(name, targets, output, graph)
            continue
        if t.loss_metric is not None:  # per atom: |dc L|^2 = dc^T S dc (S: the atom's overlap or Coulomb matrix)
            pred, ref = _density_metric(t, graph.numbers, pred, ref)
        if t.per_atom:
            out[name] = (pred / n_atoms, ref / n_atoms, t.level)
        else:
            out[name] = (pred, ref, t.level)
    return out


def _density_metric(target: Target, numbers: torch.Tensor, pred: torch.Tensor, ref: torch.Tensor):
    """``(pred L_z, ref L_z)`` per atom, ``L_z`` the Cholesky factor of its element's one-atom metric."""
    species = tuple(sorted(int(z) for z in numbers.unique().tolist()))
    factors = target.basis.metric_factors(species, target.loss_metric).to(device=pred.device, dtype=pred.dtype)
    index = torch.searchsorted(torch.as_tensor(species, device=numbers.device), numbers)
    per_atom = factors[index]
    # a missing reference row stays missing (NaN); the rest are transformed alike
    missing = ~torch.isfinite(ref).any(dim=-1, keepdim=True)
    ref = torch.nan_to_num(ref)
    pred = torch.einsum("nu,nuv->nv", pred, per_atom)
    ref = torch.einsum("nu,nuv->nv", ref, per_atom)
    return pred, torch.where(missing, torch.full_like(ref, float("nan")), ref)


_PROJECTORS: dict = {}
_PROJECTOR_BYTES = [0]
_PROJECTOR_BUDGET = 256 * 2 ** 20  # bytes of cached X matrices (one per structure seen; training revisits them)


def _cached(key: tuple, basis, make):
    """``make()`` for one structure, kept (up to the budget) under ``key`` for this ``basis``: training revisits
    every structure each epoch, and what is kept depends only on its elements, positions and reference."""
    key = (id(basis), *key)
    held = _PROJECTORS.get(key)
    if held is not None and held[0] is basis:
        return held[1]
    value = make()
    size = sum(v.numel() for v in (value if isinstance(value, tuple) else (value,))) * 8
    if _PROJECTOR_BYTES[0] + size <= _PROJECTOR_BUDGET:
        _PROJECTORS[key] = (basis, value)
        _PROJECTOR_BYTES[0] += size
    return value


def _projector(basis, numbers: torch.Tensor, positions: torch.Tensor, cutoff: float | None = None) -> torch.Tensor:
    """:func:`~clebsch.basis.pyscf.orthonormal_basis` of one structure, cached by its elements and positions."""
    from ..basis.pyscf import orthonormal_basis

    z = numbers.tolist()
    xyz = positions.detach().to("cpu", torch.float64).numpy()
    return _cached(("projector", cutoff, tuple(z), xyz.tobytes()), basis,
                   lambda: orthonormal_basis(basis, z, xyz, overlap_cutoff=cutoff))


def _scatter_indices(basis, numbers: torch.Tensor, local: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                     structure: torch.Tensor, size: int, union: int):
    """For blocks between atoms ``rows`` and ``cols`` (one block per entry): the flat union index of each
    element of each block that both atoms have, and its flat position in the padded ``[B, size, size]``."""
    sources, targets, which = [], [], []
    species = sorted({int(z) for z in numbers.tolist()})
    zr, zc = numbers[rows], numbers[cols]
    for a in species:
        sa = torch.as_tensor(basis.slots(a), device=numbers.device)
        for b in species:
            pick = torch.nonzero((zr == a) & (zc == b)).reshape(-1)
            if pick.numel() == 0:
                continue
            sb = torch.as_tensor(basis.slots(b), device=numbers.device)
            flat = (sa[:, None] * union + sb[None, :]).reshape(-1)  # the block's own elements in the union layout
            ra = torch.arange(sa.numel(), device=numbers.device)
            cb = torch.arange(sb.numel(), device=numbers.device)
            r = local[rows[pick]][:, None, None] + ra[None, :, None]
            c = local[cols[pick]][:, None, None] + cb[None, None, :]
            pos = (structure[pick][:, None, None] * size + r) * size + c
            sources.append(flat.expand(pick.numel(), -1))
            targets.append(pos.reshape(pick.numel(), -1))
            which.append(pick)
    return which, sources, targets


def _whole_matrix(name: str, targets: dict, output: dict, graph):
    """``(L^T H R * W, L^T H_ref R * W, "structure")`` per structure, padded ``[B, p, q]`` (the reference NaN
    where a structure has no reference or beyond its own ``p, q``): ``H`` the structure's whole matrix from its
    on-site and pair blocks (pairs without an edge are zero in both). ``loss_metric: orthonormal``: ``L = R =
    X`` (:func:`~clebsch.basis.pyscf.orthonormal_basis`), the functions orthonormalised without the
    near-dependent combinations that an initial guess drops, ``W = 1``; ``density_matrix``: see
    :func:`_response`."""
    from .electronic import basis_targets

    t = targets[name]
    _, matrices = basis_targets({n: targets[n] for n in output if n in targets})
    onsite = next((o for o, p in matrices if p == name and o in graph.targets), None)
    if onsite is None:
        raise ValueError(f"target {name!r} has loss_metric: {t.loss_metric}, which measures the whole matrix: it needs "
                         f"the on-site blocks of the same basis (a per-atom target with matrix: true) among the "
                         f"model's outputs {sorted(output)} and the batch's references {sorted(graph.targets)}")
    if bool(graph.pbc.any()):
        raise ValueError(f"target {name!r}: loss_metric: {t.loss_metric} needs each molecule's overlap matrix, which "
                         f"is computed for open structures only; this batch has a periodic one")
    basis = t.basis
    numbers, batch = graph.numbers, graph.batch
    n_b = graph.num_graphs
    sizes = torch.as_tensor([basis.size(int(z)) for z in numbers.tolist()], device=numbers.device)
    start = torch.cumsum(sizes, 0) - sizes
    first = torch.cumsum(graph.n_atoms, 0) - graph.n_atoms  # first atom of each structure
    local = start - start[first][batch]  # where each atom's functions start in its structure's matrix
    per_structure = torch.zeros(n_b, dtype=torch.long, device=numbers.device).index_add_(0, batch, sizes)
    size = int(per_structure.max())
    union = basis.union_irreps.dim
    pred_on, ref_on = output[onsite], graph.targets[onsite].to(output[onsite].dtype)
    pred_pair, ref_pair = output[name], graph.targets[name].to(output[name].dtype)
    dtype = pred_on.dtype
    flat_p = pred_on.new_zeros(n_b * size * size)
    flat_r = pred_on.new_zeros(n_b * size * size)
    missing = torch.zeros(n_b, dtype=torch.bool, device=numbers.device)
    atoms = torch.arange(numbers.numel(), device=numbers.device)
    sender, receiver = graph.edge_index[0], graph.edge_index[1]
    for values_p, values_r, rows, cols, owner in (
            (pred_on, ref_on, atoms, atoms, batch),
            (pred_pair, ref_pair, receiver, sender, batch[receiver])):  # a pair block: receiver rows, sender columns
        which, sources, where = _scatter_indices(basis, numbers, local, rows, cols, owner, size, union)
        vp = values_p.reshape(values_p.shape[0], -1)
        vr = values_r.reshape(values_r.shape[0], -1)
        for pick, src, dst in zip(which, sources, where):
            p = torch.gather(vp[pick], 1, src)
            r = torch.gather(vr[pick], 1, src)
            bad = ~torch.isfinite(r).all(dim=1)
            if bool(bad.any()):
                missing[owner[pick][bad]] = True
            flat_p = flat_p.index_put((dst.reshape(-1),), p.reshape(-1))
            flat_r = flat_r.index_put((dst.reshape(-1),), torch.nan_to_num(r).reshape(-1))
    h_p = flat_p.view(n_b, size, size)
    h_r = flat_r.view(n_b, size, size)
    sides = []  # per structure: (left [n, p], right [n, q], weights [p, q] or None)
    for b in range(n_b):
        lo, hi = int(first[b]), int(first[b] + graph.n_atoms[b])
        if t.loss_metric == "orthonormal":
            x = _projector(basis, numbers[lo:hi].cpu(), graph.positions[lo:hi], t.overlap_cutoff)
            sides.append((x, x, None))
            continue
        n = int(per_structure[b])
        electrons = float(numbers[lo:hi].sum()) - float(graph.total_charge[b])
        if abs(electrons - round(electrons)) > 1e-6 or round(electrons) % 2:
            raise ValueError(f"target {name!r}: loss_metric: density_matrix occupies each structure's lowest "
                             f"orbitals in pairs, but structure {b} of the batch has {electrons:g} electrons "
                             f"(atomic numbers less its total charge); use loss_metric: orthonormal")
        if bool(missing[b]):
            sides.append((h_r.new_zeros(n, 1, dtype=torch.float64), h_r.new_zeros(n, 1, dtype=torch.float64), None))
            continue
        sides.append(_response(basis, numbers[lo:hi].cpu(), graph.positions[lo:hi], h_r[b, :n, :n],
                               int(round(electrons)) // 2, name))
    p = max(left.shape[1] for left, _, _ in sides)
    q = max(right.shape[1] for _, right, _ in sides)
    left = h_p.new_zeros(n_b, size, p)
    right = h_p.new_zeros(n_b, size, q)
    weights = h_p.new_ones(n_b, p, q)
    valid = torch.zeros(n_b, p, q, dtype=torch.bool, device=h_p.device)
    for b, (lb, rb, wb) in enumerate(sides):
        left[b, : lb.shape[0], : lb.shape[1]] = lb.to(device=h_p.device, dtype=dtype)
        right[b, : rb.shape[0], : rb.shape[1]] = rb.to(device=h_p.device, dtype=dtype)
        if wb is not None:
            weights[b, : wb.shape[0], : wb.shape[1]] = wb.to(device=h_p.device, dtype=dtype)
        valid[b, : lb.shape[1], : rb.shape[1]] = not bool(missing[b])
    lt = left.transpose(1, 2)
    pred = (lt @ h_p @ right) * weights
    ref = (lt @ h_r @ right) * weights
    return pred, torch.where(valid, ref, torch.full_like(ref, float("nan"))), "structure"


def _response(basis, numbers: torch.Tensor, positions: torch.Tensor, reference: torch.Tensor, occupied: int,
              name: str):
    """``(C_occ, C_virt, 2 / (e_a - e_i))`` of the reference matrix ``reference`` of one structure (its
    orbitals by :func:`~clebsch.basis.pyscf.orthonormal_basis` without a cutoff beyond near-singularity): an
    error ``dH`` changes the density matrix to first order by ``2 (C_o^T dH C_v)_ia / (e_i - e_a)`` in the
    orbitals' basis. Cached by elements, positions and reference."""
    from ..basis.pyscf import orthonormal_basis

    h = reference.detach().to("cpu", torch.float64)
    xyz = positions.detach().to("cpu", torch.float64).numpy()
    z = numbers.tolist()

    def make():
        x = orthonormal_basis(basis, z, xyz, overlap_cutoff=0.0)
        e, c = torch.linalg.eigh(x.T @ (0.5 * (h + h.T)) @ x)
        if occupied >= e.numel():
            raise ValueError(f"target {name!r}: loss_metric: density_matrix needs virtual orbitals, but a structure "
                             f"has {occupied} occupied of {e.numel()} orbitals")
        c = x @ c
        gap = e[occupied:][None, :] - e[:occupied][:, None]
        if float(gap.min()) <= 1e-4:
            raise ValueError(f"target {name!r}: loss_metric: density_matrix needs a HOMO-LUMO gap, but the "
                             f"reference matrix of a structure ({len(z)} atoms) has {float(gap.min()):.2g} (in its "
                             f"unit)")
        return c[:, :occupied], c[:, occupied:], 2.0 / gap

    return _cached(("response", tuple(z), xyz.tobytes(), h.numpy().tobytes()), basis, make)


def _item_weights(weights: torch.Tensor | None, level: str, graph, like: torch.Tensor) -> torch.Tensor | None:
    if weights is None:
        return None
    if level == "atom":
        w = weights[graph.batch]
    elif level == "edge":
        w = weights[graph.batch[graph.edge_index[1]]]
    else:
        w = weights
    return w.reshape(-1, *([1] * (like.dim() - 1)))


class WeightedLoss:
    """``sum_k w_k * mean(loss(pred_k, ref_k))`` over the targets with a positive weight.

    Parameters
    ----------
    weights : dict
        ``{"energy": 1.0, "forces": 100.0, "dipole": 10.0, ...}``.
    kind : {"mse", "huber"}
    huber_delta : float
    targets : dict, optional
        Declarations by name (default: the built-in ones).
    config_type_weights : dict, optional
        ``{config_type: weight}``; structures of other types weigh 1.

    Examples
    --------
    >>> import types
    >>> g = types.SimpleNamespace(targets={"energy": torch.tensor([2.0])}, n_atoms=torch.tensor([2]),
    ...                           positions=torch.zeros(2, 3), config_type=["Default"])
    >>> loss, parts = WeightedLoss({"energy": 1.0})({"energy": torch.tensor([0.0])}, g)
    >>> float(loss)
    1.0
    """

    def __init__(self, weights: dict, kind: str = "mse", huber_delta: float = 0.01,
                 targets: dict[str, Target] | None = None, config_type_weights: dict | None = None):
        if kind not in ("mse", "huber"):
            raise ValueError(f"loss kind must be 'mse' or 'huber', got {kind!r}")
        self.targets = TARGETS if targets is None else targets
        unknown = sorted(set(weights) - set(self.targets))
        if unknown:
            raise ValueError(f"loss weights for unknown target(s) {unknown}; known: {sorted(self.targets)}")
        self.weights = {k: float(v) for k, v in weights.items() if float(v) > 0 and self.targets[k].trainable}
        self.kind = kind
        self.delta = float(huber_delta)
        self.config_type_weights = dict(config_type_weights or {})

    def counts(self, output: dict, graph) -> dict:
        """Number of finite reference values per term (for global normalisation)."""
        return {
            name: torch.isfinite(ref).sum().to(pred.dtype)
            for name, (pred, ref, _) in term_values(output, graph, self.targets).items()
            if name in self.weights
        }

    def __call__(self, output: dict, graph, counts: dict | None = None):
        """Return ``(total loss, {term: unweighted loss as float})``."""
        total = None
        parts = {}
        values = term_values(output, graph, self.targets)
        weights = structure_weights(graph, self.config_type_weights)
        for name, weight in self.weights.items():
            if name not in values:
                continue
            pred, ref, level = values[name]
            mask = torch.isfinite(ref)
            err = _elementwise(self.kind, self.delta, pred, torch.where(mask, ref, pred.detach()))
            w = _item_weights(weights, level, graph, err)
            if w is not None:
                err = err * w
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
