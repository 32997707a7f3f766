"""Relaxing many small independent structures together: one batched forward pass per step.

Screening workflows relax hundreds of molecules or small cells. Looping an ASE
optimizer over them evaluates the model once per structure and step; here all
structures that still move are one batched :class:`~clebsch.graph.AtomicGraph`
and one forward pass per step. The optimizer is FIRE (Bitzek et al., PRL 97,
170201, 2006) with ASE's update rule and defaults, applied to each structure
on its own (its own velocity, time step and mixing factor, reductions per
structure): a structure relaxed in a batch follows the same path as with
``ase.optimize.FIRE`` alone, and a converged structure stops moving and leaves
the batch.
"""

from __future__ import annotations

import numpy as np
import torch

from ._calculator import load_model

__all__ = ["relax_many", "FIRE_DEFAULTS"]

FIRE_DEFAULTS = {"dt": 0.1, "maxstep": 0.2, "dtmax": 1.0, "Nmin": 5, "finc": 1.1, "fdec": 0.5, "astart": 0.1,
                 "fa": 0.99}
"""ASE's FIRE parameters (``ase.optimize.FIRE``), used per structure."""


def _segment_sum(values: torch.Tensor, segment: torch.Tensor, size: int) -> torch.Tensor:
    return torch.zeros(size, dtype=values.dtype, device=values.device).index_add_(0, segment, values)


def _evaluate(model, structures, dtype, device):
    """Energies [B] and per-structure forces of ``structures`` in one batched pass (one at a time for exports)."""
    from ..graph import AtomicGraph, batch
    from ._export import ExportedPotential

    graphs = [AtomicGraph.from_ase(atoms, cutoff=float(model.cutoff), dtype=dtype, where=f"structure {k}").to(device)
              for k, atoms in structures]
    if isinstance(model, ExportedPotential):  # an export evaluates one structure at a time
        outs = [model(g, compute_forces=True, compute_stress=False) for g in graphs]
        return (torch.cat([o["energy"].detach() for o in outs]), torch.cat([o["forces"].detach() for o in outs]))
    out = model(batch(graphs), compute_forces=True, compute_stress=False)
    return out["energy"].detach(), out["forces"].detach()


def relax_many(model, structures, fmax: float = 0.05, steps: int = 500, device: str = "cpu",
               dtype: str = "float64", source: str = "structures", **fire) -> list[bool]:
    """Relax the positions of many independent structures (changed in place) with FIRE, batched.

    Parameters
    ----------
    model : Potential or str or os.PathLike
        The model or a packaged / exported model file (see :func:`load_model`).
    structures : sequence of ase.Atoms
        Molecules or cells, of any sizes and elements the model knows.
    fmax : float
        A structure is converged when its largest force is below ``fmax`` eV/Å.
    steps : int
        Most FIRE steps per structure (as ``ase.optimize.FIRE.run(steps=...)``).
    device, dtype
        Where and in which precision the model runs.
    source : str
        What an error names the structures by (e.g. their file): an element the model does not know raises
        naming it, the frame and the atom.
    **fire
        FIRE parameters overriding :data:`FIRE_DEFAULTS` (``dt``, ``maxstep``, ...).

    Returns
    -------
    list of bool
        Whether each structure converged. Each structure gets a
        :class:`~ase.calculators.singlepoint.SinglePointCalculator` holding its
        final energy and forces, and ``info["relax_steps"]``.

    Examples
    --------
    >>> from ase.build import molecule
    >>> from clebsch.models import build_model
    >>> model = build_model({"name": "schnet", "species": ["H", "O"], "cutoff": 3.0, "channels": 8})
    >>> waters = [molecule("H2O") for _ in range(3)]
    >>> for k, atoms in enumerate(waters):
    ...     atoms.rattle(0.05, seed=k)
    >>> converged = relax_many(model, waters, fmax=0.05, steps=200)
    >>> len(converged), all(abs(a.get_forces()).max() < 0.05 for a, ok in zip(waters, converged) if ok)
    (3, True)
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    from ._dynamics import check_relax_parameters

    check_relax_parameters(fmax, "fire", steps)
    unknown = sorted(set(fire) - set(FIRE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown FIRE parameter(s) {unknown}; known: {sorted(FIRE_DEFAULTS)}")
    p = {**FIRE_DEFAULTS, **fire}
    structures = list(structures)
    if not structures:
        return []
    model = load_model(model, device=device, dtype=dtype)
    from ..data.io import check_elements

    check_elements(structures, model.species, source)
    tdtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    b = len(structures)
    counts = torch.tensor([len(a) for a in structures])
    offsets = torch.cumsum(counts, 0) - counts
    positions = torch.as_tensor(np.concatenate([a.get_positions() for a in structures]), dtype=torch.float64)
    velocity = torch.zeros_like(positions)
    owner = torch.repeat_interleave(torch.arange(b), counts)
    dt = torch.full((b,), float(p["dt"]), dtype=torch.float64)
    alpha = torch.full((b,), float(p["astart"]), dtype=torch.float64)
    n_up = torch.zeros(b, dtype=torch.long)
    started = torch.zeros(b, dtype=torch.bool)
    taken = torch.zeros(b, dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool)
    converged = torch.zeros(b, dtype=torch.bool)
    energy = torch.zeros(b, dtype=torch.float64)
    forces_all = torch.zeros_like(positions)

    while not bool(done.all()):
        active = (~done).nonzero().flatten()
        for k in active.tolist():
            structures[k].positions = positions[offsets[k]:offsets[k] + counts[k]].numpy()
        e, f = _evaluate(model, [(k, structures[k]) for k in active.tolist()], tdtype, device)
        f = f.to(device="cpu", dtype=torch.float64)
        atom_index = torch.cat([torch.arange(int(offsets[k]), int(offsets[k] + counts[k])) for k in active.tolist()])
        slot = torch.repeat_interleave(torch.arange(len(active)), counts[active])
        energy[active] = e.to(device="cpu", dtype=torch.float64)
        forces_all[atom_index] = f
        largest = torch.zeros(len(active), dtype=torch.float64).scatter_reduce_(
            0, slot, torch.linalg.norm(f, dim=1), "amax", include_self=True)
        now_converged = largest < fmax
        converged[active] = now_converged
        finished = now_converged | (taken[active] >= steps)
        done[active] = finished
        moving = ~finished
        if not bool(moving.any()):
            continue
        # FIRE on the structures that move, each with its own state (ASE's rule)
        act = active[moving]
        keep = moving[slot]
        idx, f, seg = atom_index[keep], f[keep], torch.repeat_interleave(torch.arange(len(act)), counts[act])
        v = velocity[idx]
        m = len(act)
        vf = _segment_sum((f * v).sum(1), seg, m)
        f2 = _segment_sum((f * f).sum(1), seg, m)
        v2 = _segment_sum((v * v).sum(1), seg, m)
        first = ~started[act]
        downhill = (vf > 0) & ~first
        uphill = ~downhill & ~first
        a = alpha[act]
        mixed = (1 - a[seg, None]) * v + a[seg, None] * f / f2.clamp_min(1e-300).sqrt()[seg, None] * v2.sqrt()[seg, None]
        v = torch.where(downhill[seg, None], mixed, v)
        grow = downhill & (n_up[act] > int(p["Nmin"]))
        step = dt[act]
        step = torch.where(grow, torch.clamp(step * p["finc"], max=p["dtmax"]), step)
        a = torch.where(grow, a * p["fa"], a)
        n_up[act] = torch.where(downhill, n_up[act] + 1, n_up[act])
        v = torch.where(uphill[seg, None], torch.zeros_like(v), v)
        a = torch.where(uphill, torch.full_like(a, p["astart"]), a)
        step = torch.where(uphill, step * p["fdec"], step)
        n_up[act] = torch.where(uphill, torch.zeros_like(n_up[act]), n_up[act])
        v = v + step[seg, None] * f
        dr = step[seg, None] * v
        norm = _segment_sum((dr * dr).sum(1), seg, m).sqrt()
        scale = torch.where(norm > p["maxstep"], p["maxstep"] / norm.clamp_min(1e-300), torch.ones_like(norm))
        positions[idx] = positions[idx] + dr * scale[seg, None]
        velocity[idx] = v
        dt[act], alpha[act] = step, a
        started[act] = True
        taken[act] += 1

    for k, atoms in enumerate(structures):
        sl = slice(int(offsets[k]), int(offsets[k] + counts[k]))
        atoms.positions = positions[sl].numpy()
        atoms.calc = SinglePointCalculator(atoms, energy=float(energy[k]), forces=forces_all[sl].numpy().copy())
        atoms.info["relax_steps"] = int(taken[k])
    return converged.tolist()
