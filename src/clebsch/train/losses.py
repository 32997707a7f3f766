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
        if t.loss_metric == "orthonormal":  # the whole matrix of each structure, as its orbital energies see it
            out[name] = _orthonormal_matrix(name, targets, output, graph)
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


def _projector(basis, numbers: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """:func:`~clebsch.basis.pyscf.orthonormal_basis` of one structure, cached by its elements and positions."""
    from ..basis.pyscf import orthonormal_basis

    z = numbers.tolist()
    xyz = positions.detach().to("cpu", torch.float64).numpy()
    key = (id(basis), tuple(z), xyz.tobytes())
    held = _PROJECTORS.get(key)
    if held is not None and held[0] is basis:
        return held[1]
    x = orthonormal_basis(basis, z, xyz)
    if _PROJECTOR_BYTES[0] + x.numel() * 8 <= _PROJECTOR_BUDGET:
        _PROJECTORS[key] = (basis, x)
        _PROJECTOR_BYTES[0] += x.numel() * 8
    return x


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


def _orthonormal_matrix(name: str, targets: dict, output: dict, graph):
    """``(X^T H X, X^T H_ref X, "structure")`` per structure, padded ``[B, k, k]`` (the reference NaN where a
    structure has no reference or beyond its own ``k``): ``H`` the structure's whole matrix from its on-site
    and pair blocks (pairs without an edge are zero in both), ``X`` (:func:`~clebsch.basis.pyscf.orthonormal_basis`)
    its functions orthonormalised without the near-dependent combinations that an initial guess drops."""
    t = targets[name]
    onsite = next((o for o in output if o in graph.targets and targets.get(o) is not None and targets[o].matrix
                   and targets[o].level == "atom" and targets[o].basis is not None
                   and targets[o].basis.to_dict() == t.basis.to_dict()), None)
    if onsite is None:
        raise ValueError(f"target {name!r} has loss_metric: orthonormal, which measures the whole matrix: it needs "
                         f"the on-site blocks of the same basis (a per-atom target with matrix: true) among the "
                         f"model's outputs {sorted(output)} and the batch's references {sorted(graph.targets)}")
    if bool(graph.pbc.any()):
        raise ValueError(f"target {name!r}: loss_metric: orthonormal needs each molecule's overlap matrix, which "
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
    xs = []
    for b in range(n_b):
        lo, hi = int(first[b]), int(first[b] + graph.n_atoms[b])
        xs.append(_projector(basis, numbers[lo:hi].cpu(), graph.positions[lo:hi]))
    k = max(x.shape[1] for x in xs)
    x = h_p.new_zeros(n_b, size, k)
    valid = torch.zeros(n_b, k, k, dtype=torch.bool, device=h_p.device)
    for b, xb in enumerate(xs):
        x[b, : xb.shape[0], : xb.shape[1]] = xb.to(device=h_p.device, dtype=dtype)
        valid[b, : xb.shape[1], : xb.shape[1]] = not bool(missing[b])
    xt = x.transpose(1, 2)
    pred = xt @ h_p @ x
    ref = xt @ h_r @ x
    return pred, torch.where(valid, ref, torch.full_like(ref, float("nan"))), "structure"


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
