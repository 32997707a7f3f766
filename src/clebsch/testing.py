"""Public checks for equivariant models: equivariance under E(3) and energy/force consistency.

Examples
--------
>>> import torch
>>> from clebsch.nn import Linear
>>> lin = Linear("2x0e + 1x1o", "1x0e + 2x1o").double()
>>> errs = assert_equivariant(lin, ["2x0e + 1x1o"], ["1x0e + 2x1o"])
>>> max(errs.values()) < 1e-10
True
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .o3 import Irreps, rand_matrix

__all__ = ["equivariance_error", "assert_equivariant", "finite_difference_forces", "POSITIONS"]

#: Marker for an input or output that is a set of Cartesian positions (rotated and translated).
POSITIONS = "positions"


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _transform(x, spec, R, t):
    if spec is None:
        return x
    if spec == POSITIONS:
        return x @ R.T.to(x.dtype) + t.to(x.dtype)
    D = Irreps(spec).D_from_matrix(R).to(x.dtype)
    return x @ D.T


def equivariance_error(
    fn: Callable,
    irreps_in: Sequence,
    irreps_out: Sequence,
    inputs: Sequence[torch.Tensor] | None = None,
    *,
    n_atoms: int = 5,
    n_trials: int = 2,
    permutation: bool = False,
    seed: int = 0,
) -> dict:
    """Largest equivariance error per output, under rotations, reflections, translations and permutations.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs)`` returning a tensor or a tuple of tensors.
    irreps_in, irreps_out : list
        One entry per input / output: an ``Irreps`` (or string), ``POSITIONS`` for
        Cartesian points (rotated and translated), or ``None`` for data left as is
        (indices, invariant tensors).
    inputs : list of tensor, optional
        Inputs to use; random float64 ``(n_atoms, dim)`` tensors by default.
    permutation : bool
        Also permute the first (atom) dimension of every input and output.

    Returns
    -------
    dict
        ``{(transformation, output index): max abs error}`` with transformations
        ``"rotation"``, ``"reflection"`` (rotation times inversion) and ``"permutation"``.
    """
    irreps_in, irreps_out = _as_list(irreps_in), _as_list(irreps_out)
    gen = torch.Generator().manual_seed(seed)
    if inputs is None:
        inputs = []
        for spec in irreps_in:
            if spec is None:
                raise ValueError("inputs must be given when an input spec is None")
            dim = 3 if spec == POSITIONS else Irreps(spec).dim
            inputs.append(torch.randn(n_atoms, dim, generator=gen, dtype=torch.float64))
    inputs = list(inputs)
    if len(inputs) != len(irreps_in):
        raise ValueError(f"{len(inputs)} inputs but {len(irreps_in)} entries in irreps_in")

    def run(xs):
        out = fn(*xs)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        if len(out) != len(irreps_out):
            raise ValueError(f"fn returned {len(out)} outputs but irreps_out has {len(irreps_out)} entries")
        return out

    ref = run(inputs)
    errors: dict = {}
    for trial in range(n_trials):
        torch.manual_seed(seed + trial)
        R0 = rand_matrix().to(torch.float64)
        q, r = torch.linalg.qr(R0)  # orthonormal to float64 precision, same rotation
        R0 = q * torch.sign(torch.diagonal(r))
        t = torch.randn(3, generator=gen, dtype=torch.float64)
        for name, R in (("rotation", R0), ("reflection", -R0)):
            xs = [_transform(x, s, R, t) for x, s in zip(inputs, irreps_in)]
            out = run(xs)
            for i, (a, b, s) in enumerate(zip(out, ref, irreps_out)):
                err = (a - _transform(b, s, R, t)).abs().max().item() if a.numel() else 0.0
                errors[(name, i)] = max(errors.get((name, i), 0.0), err)
        if permutation:
            perm = torch.randperm(inputs[0].shape[0], generator=gen)
            out = run([x[perm] for x in inputs])
            for i, (a, b) in enumerate(zip(out, ref)):
                err = (a - b[perm]).abs().max().item() if a.numel() else 0.0
                errors[("permutation", i)] = max(errors.get(("permutation", i), 0.0), err)
    return errors


def assert_equivariant(fn: Callable, irreps_in, irreps_out, inputs=None, *, tolerance: float = 1e-10, **kwargs) -> dict:
    """Raise ``AssertionError`` naming each output whose equivariance error exceeds ``tolerance``.

    Takes the same arguments as :func:`equivariance_error` and returns its result.
    """
    errors = equivariance_error(fn, irreps_in, irreps_out, inputs, **kwargs)
    bad = {k: v for k, v in errors.items() if not v <= tolerance}
    if bad:
        lines = ", ".join(f"output {i} under {name}: {v:.3g}" for (name, i), v in sorted(bad.items()))
        raise AssertionError(f"not equivariant (tolerance {tolerance:g}): {lines}")
    return errors


def finite_difference_forces(energy_fn: Callable, positions: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Forces ``-dE/dx`` by central differences in float64.

    Examples
    --------
    >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    >>> f = finite_difference_forces(lambda p: ((p[0] - p[1]).norm() - 0.5) ** 2, pos)
    >>> torch.allclose(f, torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]], dtype=torch.float64))
    True
    """
    pos = positions.detach().to(torch.float64).clone()
    forces = torch.zeros_like(pos)
    with torch.no_grad():
        flat = pos.view(-1)
        for k in range(flat.numel()):
            old = flat[k].item()
            flat[k] = old + eps
            ep = float(energy_fn(pos))
            flat[k] = old - eps
            em = float(energy_fn(pos))
            flat[k] = old
            forces.view(-1)[k] = -(ep - em) / (2 * eps)
    return forces
