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

__all__ = ["equivariance_error", "assert_equivariant", "finite_difference_forces", "finite_difference_hessian",
           "check_potential", "float64_model", "CONTRACT", "POSITIONS"]

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


def finite_difference_hessian(forces_fn: Callable, positions: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The Hessian ``d^2E/dx dx`` [3N, 3N] by central differences of the forces ``forces_fn(positions) -> [N, 3]``.

    Examples
    --------
    >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    >>> hessian = finite_difference_hessian(lambda p: -2 * p, pos)     # E = |x|^2
    >>> torch.allclose(hessian, 2 * torch.eye(6, dtype=torch.float64))
    True
    """
    pos = positions.detach().to(torch.float64)
    n = pos.numel()
    hessian = torch.empty(n, n, dtype=torch.float64)
    for k in range(n):
        plus, minus = pos.clone(), pos.clone()
        plus.view(-1)[k] += eps
        minus.view(-1)[k] -= eps
        f_plus = forces_fn(plus).detach().reshape(-1).to(torch.float64)
        f_minus = forces_fn(minus).detach().reshape(-1).to(torch.float64)
        hessian[k] = -(f_plus - f_minus) / (2 * eps)
    return hessian


# ---------------------------------------------------------------- the model contract

CONTRACT = ("equivariance", "forces", "stress", "cutoff", "extensive", "isolated", "batch", "rebuild", "no_grad")
"""The checks :func:`check_potential` runs, in order."""


def _random_molecule(numbers, seed: int, spacing: float = 0.9, box: float = 1.6):
    import numpy as np

    gen = np.random.default_rng(seed)
    pos = []
    while len(pos) < len(numbers):
        p = gen.uniform(-box, box, size=3)
        if all(np.linalg.norm(p - q) > spacing for q in pos):
            pos.append(p)
    return torch.tensor(np.array(pos), dtype=torch.float64)


def _random_crystal(numbers, seed: int, a: float = 2.6):
    import numpy as np

    gen = np.random.default_rng(seed)
    cell = np.diag([a, a + 0.2, a + 0.4]) + gen.normal(0, 0.15, (3, 3))
    frac = []
    while len(frac) < len(numbers):
        f = gen.uniform(0, 1, 3)
        if all(np.linalg.norm((f - g - np.round(f - g)) @ cell) >= 1.0 for g in frac):
            frac.append(f)
    return torch.tensor(np.array(frac) @ cell), torch.tensor(cell)


def _orthogonal(seed: int, reflect: bool) -> torch.Tensor:
    torch.manual_seed(seed)
    R = rand_matrix(dtype=torch.float64)
    q, r = torch.linalg.qr(R)
    R = q * torch.sign(torch.diagonal(r))
    return -R if reflect else R


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a).detach(), torch.as_tensor(b).detach()
    return float((a - b).abs().max() / (b.abs().max() + 1e-12)) if b.numel() else 0.0


def _rotate_output(target, value: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``value`` (in the target's stored form) as it must be after rotating the structure by ``R``."""
    if target.cartesian is not None:
        letters = "abcdefgh"[: target.rank]
        out = value
        for k in range(target.rank):  # R on every Cartesian index
            spec = f"...{letters},z{letters[k]}->...{letters[:k]}z{letters[k + 1:]}"
            out = torch.einsum(spec, out, R.to(value.dtype))
        return out
    flat = value.reshape(*value.shape[: value.dim() - len(target.shape)], -1)
    D = Irreps(target.irreps).D_from_matrix(R).to(value.dtype)
    return (flat @ D.T).reshape(value.shape)


def _edge_keys(graph):
    return [(int(i), int(j), *(int(round(float(s))) for s in sh))
            for j, i, sh in zip(graph.edge_index[0], graph.edge_index[1], graph.shifts)]


def float64_model(config: dict, seed: int = 0, randomize_zeros: bool = False):
    """``build_model(config)`` in float64, in eval mode, with seeded weights (the global RNG is left as it was).

    Built with float64 as the default dtype, so constant buffers (Clebsch-Gordan
    blocks, couplings) are exact to float64 rather than float32 values cast up.
    ``randomize_zeros`` draws weights that start at zero (readouts), so that no
    part of the model is trivially zero in a check.

    >>> model = float64_model({"name": "schnet", "species": ["H"], "cutoff": 3.0, "num_layers": 1, "channels": 4})
    >>> model.atomic_energies.dtype, model.training
    (torch.float64, False)
    """
    from .models import build_model

    previous = torch.get_default_dtype()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        torch.set_default_dtype(torch.float64)
        try:
            model = build_model(config).double()
        finally:
            torch.set_default_dtype(previous)
        if randomize_zeros:
            with torch.no_grad():
                for p in model.parameters():
                    if p.abs().sum() == 0:
                        p.normal_(0, 0.3)
    return model.eval()


def check_potential(model, checks=CONTRACT, *, tolerance: float = 1e-9, seed: int = 0) -> dict:
    """Run the model contract on a :class:`~clebsch.models.Potential` (ours or a user's); return the errors.

    Checks (each by name in ``checks``):

    - ``equivariance``: under random rotations and reflections, translations
      and a permutation of the atoms, the energy is invariant and every other
      output transforms as its target declares (vectors, Cartesian tensors,
      irreps; per atom, per structure or per edge). For a family that is not
      rotation-equivariant by design (its representation has the class
      attribute ``equivariant = False``, see
      :func:`clebsch.models._registry.is_equivariant`: a baseline that reads
      raw Cartesian components and learns rotations from augmented data)
      rotations and reflections are left out, since its outputs are meant to
      change under them; the translation and the permutation are still
      checked, as are all the other checks below;
    - ``forces``: forces equal minus central finite differences of the energy;
    - ``stress``: the stress equals finite differences of the energy under
      strain divided by the volume (models that output stress);
    - ``cutoff``: the energy is continuous when a neighbour crosses the cutoff;
    - ``extensive``: a 2x2x1 periodic supercell has four times the energy;
    - ``isolated``: an atom alone has its reference energy and no force;
    - ``batch``: a batch gives the outputs of its structures evaluated alone;
    - ``rebuild``: ``build_model(model.config)`` with the same weights gives the same energy;
    - ``no_grad``: forces come out, detached, under ``torch.no_grad()``.

    Pass a float64 model with random, non-zero weights, or a model config
    (``model.config``): the model is then built in float64 (so that constant
    buffers such as Clebsch-Gordan blocks are exact to float64) and weights
    that start at zero are drawn at random.

    Returns
    -------
    dict
        ``{check: largest relative error}``.

    Raises
    ------
    AssertionError
        Naming every check above ``tolerance`` (finite differences: 1e-6).

    Examples
    --------
    >>> from clebsch.models import build_model
    >>> torch.manual_seed(0) and None
    >>> model = build_model({"name": "schnet", "species": ["H", "O"], "cutoff": 3.0, "num_layers": 1,
    ...                      "channels": 4, "atomic_energies": [-1.0, -2.0]}).double()
    >>> errors = check_potential(model, checks=("equivariance", "isolated"))
    >>> sorted(errors)
    ['equivariance', 'isolated']
    """
    from .graph import AtomicGraph, batch

    if isinstance(model, dict):
        model = float64_model(model, seed, randomize_zeros=True)
    unknown = sorted(set(checks) - set(CONTRACT))
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; known: {list(CONTRACT)}")
    species = list(model.species)
    cutoff = float(model.cutoff)
    numbers = torch.tensor([species[k % len(species)] for k in range(9)])
    crystal_numbers = torch.tensor([species[k % len(species)] for k in range(4)])
    scale = cutoff / 3.0

    def graph(pos, nums=numbers, cell=None):
        if cell is None:
            return AtomicGraph.from_tensors(pos, nums, cutoff)
        return AtomicGraph.from_tensors(pos, nums, cutoff, cell=cell, pbc=torch.tensor([True, True, True]))

    def molecule(s):
        return _random_molecule(numbers, seed + s, spacing=0.9 * scale, box=1.6 * scale)

    errors, failed = {}, []
    periodic_ok = "stress" in model.outputs or "virial" in model.outputs

    def record(name, err, tol=tolerance):
        errors[name] = max(errors.get(name, 0.0), err)
        if not err <= tol and name not in failed:
            failed.append(name)

    if "equivariance" in checks:
        pos = molecule(1)
        g = graph(pos)
        out = model(g)
        keys = _edge_keys(g)
        # a family that is not rotation-equivariant by design: translation and permutation only
        rotations = bool(getattr(getattr(model, "representation", None), "equivariant", True))
        for reflect in (False, True) if rotations else (None,):
            R = _orthogonal(seed + 2 + reflect, reflect) if rotations else torch.eye(3, dtype=torch.float64)
            t = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
            perm = torch.randperm(len(numbers), generator=torch.Generator().manual_seed(seed + 3))
            inv = torch.argsort(perm)
            g2 = graph((pos @ R.T + t)[perm], numbers[perm])
            out2 = model(g2)
            keys2 = _edge_keys(g2)
            for name, value in out.items():
                target = model.targets.get(name)
                if target is None or name not in out2:
                    continue
                expected = value if name == "energy" else _rotate_output(target, value, R)
                got = out2[name]
                if target.level == "atom":
                    expected = expected[perm]
                elif target.level == "edge":  # edges of atoms (i, j) become edges of (inv[i], inv[j])
                    where = {k: e for e, k in enumerate(keys2)}
                    order = [where[(int(inv[i]), int(inv[j]), *rest)] for i, j, *rest in keys]
                    got = got[order]
                record("equivariance", _rel(got, expected))
        if "forces" in out and float(out["forces"].detach().abs().max()) < 1e-9:
            failed.append("equivariance (forces are all zero)")

    if "forces" in checks and "forces" in model.outputs:
        pos = molecule(4)
        forces = model(graph(pos))["forces"].detach()
        eps = 1e-5
        for atom, axis in [(0, 0), (2, 1), (5, 2), (8, 0)]:
            plus, minus = pos.clone(), pos.clone()
            plus[atom, axis] += eps
            minus[atom, axis] -= eps
            with torch.no_grad():
                fd = -(model(graph(plus), compute_forces=False)["energy"]
                       - model(graph(minus), compute_forces=False)["energy"]) / (2 * eps)
            record("forces", abs(float(fd) - float(forces[atom, axis])) / max(1.0, abs(float(fd))), 1e-6)

    if "stress" in checks and periodic_ok:
        pos, cell = _random_crystal(crystal_numbers, seed + 5, a=2.6 * scale)
        out = model(graph(pos, crystal_numbers, cell), compute_stress=True)
        stress = out["stress"][0]
        volume = torch.linalg.det(cell).abs()
        eps = 1e-5
        for i, j in [(0, 0), (1, 2), (2, 2), (0, 1)]:
            energies = []
            for sign in (1, -1):
                strain = torch.eye(3, dtype=torch.float64)
                strain[i, j] += sign * eps / 2
                strain[j, i] += sign * eps / 2
                with torch.no_grad():
                    energies.append(model(graph(pos @ strain, crystal_numbers, cell @ strain),
                                          compute_forces=False)["energy"])
            fd = (energies[0] - energies[1]) / (2 * eps) / volume
            record("stress", abs(float(fd) - float(stress[i, j].detach())) / max(1.0, abs(float(fd))), 1e-6)

    if "cutoff" in checks:
        pair = numbers[:3]
        direction = torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)

        def energy(r):
            pos = torch.stack([torch.zeros(3, dtype=torch.float64), -0.4 * cutoff * direction, r * direction])
            return float(model(graph(pos, pair), compute_forces=False)["energy"].detach())

        inside, outside = energy(cutoff - 1e-6), energy(cutoff + 1e-6)
        record("cutoff", abs(inside - outside) / max(1.0, abs(outside)), 1e-8)
        if abs(energy(0.66 * cutoff) - outside) < 1e-9:
            failed.append("cutoff (an edge inside the cutoff has no effect)")

    if "extensive" in checks:
        pos, cell = _random_crystal(crystal_numbers, seed + 8, a=2.6 * scale)
        out = model(graph(pos, crystal_numbers, cell))
        shifts = [torch.tensor([i, j, 0], dtype=torch.float64) for i in range(2) for j in range(2)]
        big_pos = torch.cat([pos + s @ cell for s in shifts])
        big_cell = cell * torch.tensor([[2.0], [2.0], [1.0]], dtype=torch.float64)
        big = model(graph(big_pos, crystal_numbers.repeat(4), big_cell))
        record("extensive", _rel(big["energy"], 4 * out["energy"]))
        if "forces" in out:
            record("extensive", _rel(big["forces"], out["forces"].repeat(4, 1)))

    if "isolated" in checks:
        for k, z in enumerate(species):
            out = model(graph(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([z])))
            e0 = float(model.atomic_energies[k])
            record("isolated", abs(float(out["energy"].detach()) - e0) / max(1.0, abs(e0)))
            if "forces" in out:
                record("isolated", float(out["forces"].detach().abs().max()))

    if "batch" in checks:
        graphs = [graph(molecule(s)) for s in (10, 11, 12)]
        together = model(batch(graphs))
        n = len(numbers)
        for k, g in enumerate(graphs):
            alone = model(g)
            for name, value in alone.items():
                target = model.targets.get(name)
                if target is None or name not in together or target.level == "edge":
                    continue
                rows = slice(n * k, n * (k + 1)) if target.level == "atom" else slice(k, k + 1)
                record("batch", _rel(together[name][rows], value))

    if "rebuild" in checks:
        twin = float64_model(model.config).to(next(model.parameters()).dtype)
        twin.load_state_dict(model.state_dict())
        twin.train(model.training)
        g = graph(molecule(13))
        record("rebuild", _rel(twin(g)["energy"], model(g)["energy"]), 1e-12)

    if "no_grad" in checks and "forces" in model.outputs:
        g = graph(molecule(15))
        expected = model(g)["forces"]
        with torch.no_grad():
            out = model(g)
        record("no_grad", _rel(out["forces"], expected), 1e-12)
        if any(v.requires_grad for v in out.values() if isinstance(v, torch.Tensor)):
            failed.append("no_grad (an output keeps its autograd graph)")

    if failed:
        detail = ", ".join(f"{name}: {errors[name]:.3g}" if name in errors else name for name in failed)
        raise AssertionError(f"model {model.config.get('name', type(model).__name__)!r} breaks the contract: {detail}")
    return errors
