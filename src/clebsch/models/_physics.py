"""Physics terms added to any family's energy: ZBL repulsion, electrostatics of learned charges, D3 dispersion.

A model config turns them on under ``physics``::

    physics:
      zbl: {r_inner: 0.4, r_outer: 0.9}      # or zbl: {} for radii from covalent radii
      coulomb: {sigma: 1.0, accuracy: 1.0e-8}
      d3: {functional: pbe}                  # DFT-D3(BJ), see clebsch.models._dispersion

With ``zbl``, the learned part of an atom's energy also fades out (by the same
switch) as a neighbour comes within ``r_inner`` (``blend: true``, the default),
as in DeePMD's DP/ZBL model: below ``r_inner`` a pair's energy is the ZBL
alone, whatever the network extrapolates to where the data has no atoms.

The terms are fixed functions (no weights) of the positions and, for the
Coulomb term, of the charges the dipole head makes. They are written in plain
torch operations, so forces, stress and Hessians come by autograd like the
rest of the energy. Each pair's energy is split half-half between its two
atoms, so per-atom energies still add up to the energy.

A term is part of the model's energy in training and in use, so the network
learns the rest (with ``d3``: it is trained on DFT - D3). A ``d3`` term with
``inference_only: true`` is left out while the model is fitted (inside
:func:`fitting`, which the trainer holds around its training steps and
evaluations) and added whenever the model is used: for data that lacks
dispersion, so that MD gets it.

Units: Å and eV, with ``e^2 / (4 pi eps0) = 14.399645 eV Å``.
"""

from __future__ import annotations

import contextlib
import math

import torch
from ase.data import covalent_radii

from ._dispersion import D3_KEYS, D3Dispersion, check_d3

__all__ = ["COULOMB_CONSTANT", "PHYSICS_TERMS", "check_physics", "zbl_pair_energy", "smooth_switch",
           "coulomb_open", "ewald_periodic", "ewald_parameters", "PhysicsTerms", "ZBL", "Coulomb", "fitting"]

COULOMB_CONSTANT = 14.399645
"""``e^2 / (4 pi eps0)`` in eV Å."""

BOHR = 0.529177210903
"""Bohr radius in Å."""

# Ziegler-Biersack-Littmark universal screening function: sum_k c_k exp(-d_k x)
_ZBL_C = (0.18175, 0.50986, 0.28022, 0.02817)
_ZBL_D = (3.19980, 0.94229, 0.40290, 0.20162)

PHYSICS_TERMS = {
    "zbl": {"r_inner": None, "r_outer": None, "blend": True},
    "coulomb": {"sigma": 1.0, "accuracy": 1e-8},
    "d3": D3_KEYS,
}
"""The terms and their keys with defaults. ``zbl``: switch radii in Å (``None``: per pair, ``r_outer``
0.8 times the sum of the covalent radii, capped at the cutoff, and ``r_inner`` 0.5 times that sum) and
``blend`` (fade the learned energy out below ``r_inner``).
``coulomb``: ``sigma`` the Gaussian width in Å of the charge pair (the pair energy is
``q_i q_j erf(r / (sqrt(2) sigma)) / r``), ``accuracy`` the relative truncation error of the Ewald sums.
``d3``: DFT-D3(BJ) dispersion, see :data:`clebsch.models._dispersion.D3_KEYS` (``functional`` or
``s8, a1, a2``; ``atm``; cutoffs; ``inference_only``)."""


# ---------------------------------------------------------------- configuration


def check_physics(spec, cutoff: float | None = None) -> dict:
    """Validate a ``physics`` config and fill in its defaults.

    Parameters
    ----------
    spec : dict or None
        ``{term: options}``; ``options`` may be a dict, ``{}``/``True``/``None`` for the
        defaults, or ``False`` to leave the term out.
    cutoff : float, optional
        The model's cutoff: ZBL radii must not exceed it (pairs beyond it are not in the graph).

    Returns
    -------
    dict
        ``{term: {key: value}}`` for the terms that are on, every key present.

    Examples
    --------
    >>> check_physics({"zbl": {}, "coulomb": {"sigma": 0.5}})
    {'zbl': {'r_inner': None, 'r_outer': None, 'blend': True}, 'coulomb': {'sigma': 0.5, 'accuracy': 1e-08}}
    >>> check_physics({"zbl": {"r_inner": 1.0, "r_outer": 0.5}})
    Traceback (most recent call last):
    ...
    ValueError: model.physics.zbl: r_inner (1.0) must be smaller than r_outer (0.5)
    >>> check_physics({"d3": {"functional": "pbe", "cutof": 30.0}})
    Traceback (most recent call last):
    ...
    ValueError: model.physics.d3: unknown key(s) ['cutof']; allowed: functional, damping, s6, s8, a1, a2, ...
    """
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ValueError(f"model.physics must be a mapping of term -> options, got {spec!r}; "
                         f"allowed terms: {', '.join(PHYSICS_TERMS)}")
    unknown = sorted(set(spec) - set(PHYSICS_TERMS))
    if unknown:
        raise ValueError(f"model.physics: unknown term(s) {unknown}; allowed: {', '.join(PHYSICS_TERMS)}")
    out = {}
    for term, options in spec.items():
        if options is False:
            continue
        if options is None or options is True:
            options = {}
        if not isinstance(options, dict):
            raise ValueError(f"model.physics.{term} must be a mapping of options (allowed keys: "
                             f"{', '.join(PHYSICS_TERMS[term])}), true or false; got {options!r}")
        if term == "d3":  # names and strings: its own checks
            out[term] = check_d3(options, f"model.physics.{term}")
            continue
        bad = sorted(set(options) - set(PHYSICS_TERMS[term]))
        if bad:
            raise ValueError(f"model.physics.{term}: unknown key(s) {bad}; allowed: {', '.join(PHYSICS_TERMS[term])}")
        values = {**PHYSICS_TERMS[term], **options}
        for key, value in values.items():
            if value is None and PHYSICS_TERMS[term][key] is None:
                continue
            if isinstance(PHYSICS_TERMS[term][key], bool):
                if not isinstance(value, bool):
                    raise ValueError(f"model.physics.{term}.{key}: {value!r} is not allowed; allowed: true, false")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"model.physics.{term}.{key}: {value!r} is not a number")
            values[key] = float(value)
        if term == "zbl":
            for key in ("r_inner", "r_outer"):
                if values[key] is not None and values[key] < 0:
                    raise ValueError(f"model.physics.zbl.{key}: {values[key]} is negative; radii are >= 0 (Å)")
            if values["r_outer"] is not None and values["r_outer"] <= 0:
                raise ValueError(f"model.physics.zbl.r_outer: {values['r_outer']} must be positive (Å)")
            if values["r_inner"] is not None and values["r_outer"] is not None \
                    and values["r_inner"] >= values["r_outer"]:
                raise ValueError(f"model.physics.zbl: r_inner ({values['r_inner']}) must be smaller than "
                                 f"r_outer ({values['r_outer']})")
            if cutoff is not None and values["r_outer"] is not None and values["r_outer"] > cutoff:
                raise ValueError(f"model.physics.zbl.r_outer: {values['r_outer']} exceeds the cutoff {cutoff}; "
                                 f"allowed: 0 < r_outer <= cutoff")
            if cutoff is not None and values["r_inner"] is not None and values["r_outer"] is None \
                    and values["r_inner"] >= cutoff:
                raise ValueError(f"model.physics.zbl.r_inner: {values['r_inner']} must be smaller than the "
                                 f"cutoff {cutoff}")
        if term == "coulomb":
            if not values["sigma"] > 0:
                raise ValueError(f"model.physics.coulomb.sigma: {values['sigma']} must be positive (Å)")
            if not 0 < values["accuracy"] < 1:
                raise ValueError(f"model.physics.coulomb.accuracy: {values['accuracy']} must be between 0 and 1 "
                                 "(e.g. 1e-8)")
        out[term] = values
    return out


# ---------------------------------------------------------------- ZBL


def smooth_switch(r: torch.Tensor, r_inner: torch.Tensor, r_outer: torch.Tensor) -> torch.Tensor:
    """1 below ``r_inner``, 0 above ``r_outer``, a quintic in between (first and second derivatives 0 at both ends).

    >>> smooth_switch(torch.tensor([0.1, 0.5, 0.9]), torch.tensor(0.2), torch.tensor(0.8)).tolist()
    [1.0, 0.5, 0.0]
    """
    x = ((r - r_inner) / (r_outer - r_inner)).clamp(0.0, 1.0)
    return 1.0 - x * x * x * (10.0 - 15.0 * x + 6.0 * x * x)


def zbl_pair_energy(r: torch.Tensor, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
    """The ZBL screened nuclear repulsion of atoms ``z_i``, ``z_j`` at distance ``r`` (Å), in eV.

    ``E = k Z_i Z_j / r * phi(r / a)`` with ``a = 0.8854 a0 / (Z_i^0.23 + Z_j^0.23)`` and
    ``phi(x) = 0.18175 e^{-3.1998x} + 0.50986 e^{-0.94229x} + 0.28022 e^{-0.4029x} + 0.02817 e^{-0.20162x}``.

    >>> round(float(zbl_pair_energy(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))), 4)
    1.0257
    """
    z_i = z_i.to(r.dtype)
    z_j = z_j.to(r.dtype)
    a = 0.8854 * BOHR / (z_i.pow(0.23) + z_j.pow(0.23))
    x = r / a
    phi = sum(c * torch.exp(-d * x) for c, d in zip(_ZBL_C, _ZBL_D))
    return COULOMB_CONSTANT * z_i * z_j / r * phi


class ZBL(torch.nn.Module):
    """ZBL repulsion on every edge, switched off smoothly between ``r_inner`` and ``r_outer`` (per element pair).

    Parameters
    ----------
    numbers : list of int
        Atomic number of each species index.
    cutoff : float
        The model's cutoff (default radii are capped at it).
    r_inner, r_outer : float or None
        Switch radii in Å; ``None``: per element pair, ``r_outer`` 0.8 times the sum of the
        covalent radii (capped at the cutoff) and ``r_inner`` 0.5 times that sum (at most
        ``5/8 r_outer``).
    blend : bool
        Fade out the learned energy of an atom as a neighbour comes within ``r_inner``
        (see :meth:`learned_weight`).
    """

    def __init__(self, numbers, cutoff: float, r_inner: float | None = None, r_outer: float | None = None,
                 blend: bool = True):
        super().__init__()
        z = torch.as_tensor(numbers, dtype=torch.long)
        radii = torch.as_tensor(covalent_radii[z.numpy()], dtype=torch.float64)
        bond = radii[:, None] + radii[None, :]
        outer = (0.8 * bond).clamp(max=cutoff) if r_outer is None \
            else torch.full((len(z), len(z)), float(r_outer), dtype=torch.float64)
        inner = torch.minimum(0.5 * bond, 0.625 * outer) if r_inner is None else torch.full_like(outer, float(r_inner))
        self.blend = bool(blend)
        if (inner >= outer).any():
            i, j = [int(k) for k in (inner >= outer).nonzero()[0]]
            raise ValueError(f"model.physics.zbl: r_inner ({float(inner[i, j])}) must be smaller than r_outer "
                             f"({float(outer[i, j])}) for the pair Z={int(z[i])}, Z={int(z[j])}")
        dtype = torch.get_default_dtype()
        self.register_buffer("z", z, persistent=False)
        self.register_buffer("r_inner", inner.to(dtype), persistent=False)
        self.register_buffer("r_outer", outer.to(dtype), persistent=False)

    def pair_energy(self, r: torch.Tensor, s_i: torch.Tensor, s_j: torch.Tensor) -> torch.Tensor:
        """Switched ZBL energy of pairs of species indices ``s_i``, ``s_j`` at distances ``r``."""
        inner = self.r_inner.to(r.dtype)[s_i, s_j]
        outer = self.r_outer.to(r.dtype)[s_i, s_j]
        # beyond r_outer the pair is exactly zero; a safe distance keeps exp/1/r finite there
        on = r < outer
        safe = torch.where(on, r, outer)
        e = zbl_pair_energy(safe, self.z[s_i], self.z[s_j]) * smooth_switch(safe, inner, outer)
        return torch.where(on, e, torch.zeros_like(e))

    def learned_weight(self, species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Weight [N] of each atom's learned energy: ``S(min(c_i, 1))`` with ``c_i = sum_j s(r_ij)``.

        ``s`` is the pair's switch (1 below ``r_inner``, 0 above ``r_outer``) and ``S`` the
        same quintic on [0, 1] (1 at 0, 0 at 1, flat at both ends), so the weight is 1 with no
        neighbour within ``r_outer``, 0 with one within ``r_inner``, and twice continuously
        differentiable in the positions.
        """
        sender, receiver = edge_index[0], edge_index[1]
        r = torch.linalg.norm(vectors, dim=-1)
        s_i, s_j = species[receiver], species[sender]
        s = smooth_switch(r, self.r_inner.to(r.dtype)[s_i, s_j], self.r_outer.to(r.dtype)[s_i, s_j])
        c = torch.zeros(species.shape[0], dtype=r.dtype, device=r.device).index_add(0, receiver, s)
        return smooth_switch(c, torch.zeros((), dtype=r.dtype), torch.ones((), dtype=r.dtype))

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Per-atom energies [N]: half of each pair's energy on each atom (every pair is two edges)."""
        sender, receiver = edge_index[0], edge_index[1]
        r = torch.linalg.norm(vectors, dim=-1)
        e = self.pair_energy(r, species[receiver], species[sender])
        return torch.zeros(species.shape[0], dtype=vectors.dtype, device=vectors.device).index_add(
            0, receiver, 0.5 * e)


# ---------------------------------------------------------------- electrostatics


def coulomb_open(charges: torch.Tensor, positions: torch.Tensor, batch: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-atom Coulomb energies [N] of Gaussian charges in open structures (eV).

    ``E = sum_{i<j, same structure} k q_i q_j erf(r_ij / (sqrt(2) sigma)) / r_ij``, each pair
    split half-half. Dense over pairs (``N^2``), which suits molecules and clusters.
    """
    d = positions[:, None, :] - positions[None, :, :]
    same = batch[:, None] == batch[None, :]
    eye = torch.eye(positions.shape[0], dtype=torch.bool, device=positions.device)
    pair = same & ~eye
    r2 = (d * d).sum(-1)
    r = torch.sqrt(torch.where(pair, r2, torch.ones_like(r2)))
    f = torch.erf(r / (math.sqrt(2.0) * sigma)) / r
    m = torch.where(pair, charges[:, None] * charges[None, :] * f, torch.zeros_like(f))
    return 0.5 * COULOMB_CONSTANT * m.sum(dim=1)


def ewald_parameters(sigma: float, accuracy: float, r_cut: float) -> tuple[float, float]:
    """Splitting width ``eta`` (Å) and reciprocal cutoff ``k_max`` (1/Å) for a real-space cutoff ``r_cut``.

    The long-range part is the potential of Gaussians of width ``eta``:
    ``erf(r / (sqrt(2) eta)) / r``; ``eta`` is chosen so that the real-space
    remainder ``erfc(r / (sqrt(2) eta)) / r`` has fallen to ``accuracy`` at
    ``r_cut`` (and never below ``sigma``: then the real-space part vanishes),
    and ``k_max`` so that ``exp(-k^2 eta^2 / 2) = accuracy``.
    """
    log = math.log(1.0 / accuracy)
    eta = max(sigma, r_cut / math.sqrt(2.0 * log))
    return eta, math.sqrt(2.0 * log) / eta


def _half_space(n: tuple[int, int, int], device) -> torch.Tensor:
    """Integer vectors of the box ``|m_a| <= n_a``, one of each pair ``+m, -m``, without 0."""
    axes = [torch.arange(-k, k + 1, device=device) for k in n]
    m = torch.cartesian_prod(*axes).reshape(-1, 3)
    keep = (m[:, 0] > 0) | ((m[:, 0] == 0) & (m[:, 1] > 0)) | ((m[:, 0] == 0) & (m[:, 1] == 0) & (m[:, 2] > 0))
    return m[keep]


def ewald_periodic(charges: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor, edge_index: torch.Tensor,
                   vectors: torch.Tensor, sigma: float, accuracy: float, r_cut: float) -> torch.Tensor:
    """Per-atom Ewald energies [N] of Gaussian charges in one periodic structure (eV).

    The energy of ``q_i q_j erf(r / (sqrt(2) sigma)) / r`` summed over all pairs and
    periodic images (with a uniform neutralising background if the cell is charged),
    split as

    - real space, over the edges (all pairs and images within ``r_cut``):
      ``1/2 sum k q_i q_j [erfc(r / (sqrt(2) eta)) - erfc(r / (sqrt(2) sigma))] / r``;
    - reciprocal space: ``k / V sum_{k in half space} 4 pi / k^2 exp(-k^2 eta^2 / 2) |S(k)|^2``;
    - self: ``-k q_i^2 / (sqrt(2 pi) eta)``; background: ``-k pi Q q_i (eta^2 - sigma^2) / V``
      (for a charged cell this is the energy of Gaussian charges in a uniform background, which
      differs from point charges' by ``k pi Q^2 sigma^2 / V``).

    ``eta`` and the box of reciprocal vectors come from ``accuracy`` (:func:`ewald_parameters`);
    every step is a torch op of ``positions``, ``cell`` and ``charges``, so forces and stress
    follow by autograd.
    """
    eta, k_max = ewald_parameters(sigma, accuracy, r_cut)
    n = positions.shape[0]
    dtype = positions.dtype
    e = torch.zeros(n, dtype=dtype, device=positions.device)
    # real space (zero when eta == sigma)
    if eta > sigma and edge_index.shape[1]:
        sender, receiver = edge_index[0], edge_index[1]
        r = torch.linalg.norm(vectors, dim=-1)
        g = (torch.erfc(r / (math.sqrt(2.0) * eta)) - torch.erfc(r / (math.sqrt(2.0) * sigma))) / r
        e = e.index_add(0, receiver, 0.5 * charges[receiver] * charges[sender] * g)
    # reciprocal space
    lengths = torch.linalg.norm(cell.detach(), dim=-1)
    box = tuple(int(math.ceil(k_max * float(length) / (2 * math.pi))) for length in lengths)
    m = _half_space(box, positions.device).to(dtype)
    volume = torch.linalg.det(cell).abs()
    reciprocal = 2 * math.pi * torch.linalg.inv(cell).T
    k = m @ reciprocal
    k2 = (k * k).sum(-1)
    weight = 4 * math.pi / k2 * torch.exp(-0.5 * eta * eta * k2)
    phase = positions @ k.T  # [N, K]
    cos, sin = torch.cos(phase), torch.sin(phase)
    c = charges @ cos
    s = charges @ sin
    e = e + charges * ((cos * c + sin * s) * weight).sum(-1) / volume
    # self and background
    total = charges.sum()
    e = e - charges * charges / (math.sqrt(2 * math.pi) * eta)
    e = e - math.pi * total * charges * (eta * eta - sigma * sigma) / volume
    return COULOMB_CONSTANT * e


class Coulomb(torch.nn.Module):
    """Electrostatics of the dipole head's charges: :func:`coulomb_open` or :func:`ewald_periodic` per structure."""

    dense_atoms = 2048
    """A batch of open structures with at most this many atoms in all is done in one dense pass."""

    def __init__(self, cutoff: float, sigma: float = 1.0, accuracy: float = 1e-8):
        super().__init__()
        self.cutoff = float(cutoff)
        self.sigma = float(sigma)
        self.accuracy = float(accuracy)

    def forward(self, charges, positions, batch, num_graphs: int, cell, periodic, edge_index, vectors):
        """Per-atom energies [N]. ``periodic``: a list of bools per structure (all three directions, or none)."""
        if not any(periodic) and (num_graphs == 1 or positions.shape[0] <= self.dense_atoms):
            return coulomb_open(charges, positions, batch, self.sigma)  # one dense pass over the whole batch
        e = torch.zeros_like(charges)
        receiver = edge_index[1]
        for b in range(num_graphs):
            atoms = (batch == b).nonzero()[:, 0]
            if atoms.numel() == 0:
                continue
            if not periodic[b]:
                part = coulomb_open(charges[atoms], positions[atoms], torch.zeros_like(atoms), self.sigma)
            else:
                edges = (batch[receiver] == b).nonzero()[:, 0]
                local = torch.full((positions.shape[0],), -1, dtype=torch.long, device=positions.device)
                local[atoms] = torch.arange(atoms.numel(), device=positions.device)
                part = ewald_periodic(charges[atoms], positions[atoms], cell[b], local[edge_index[:, edges]],
                                      vectors[edges], self.sigma, self.accuracy, self.cutoff)
            e = e.index_add(0, atoms, part)
        return e


class PhysicsTerms(torch.nn.Module):
    """The physics terms of one model, from a checked ``physics`` config (see :func:`check_physics`)."""

    def __init__(self, spec: dict, numbers, cutoff: float):
        super().__init__()
        spec = check_physics(spec, cutoff)
        self.spec = spec
        self.zbl = ZBL(numbers, cutoff, **spec["zbl"]) if "zbl" in spec else None
        self.coulomb = Coulomb(cutoff, **spec["coulomb"]) if "coulomb" in spec else None
        self.d3 = D3Dispersion(numbers, **spec["d3"]) if "d3" in spec else None

    @property
    def needs_positions(self) -> bool:
        """Whether the energy path must pass positions, batch, cell and charges (terms beyond the model's edges)."""
        return self.coulomb is not None or self.d3 is not None

    @property
    def inference_only(self) -> list[str]:
        """The terms left out while the model is fitted (see :func:`fitting`)."""
        return ["d3"] if self.d3 is not None and self.d3.inference_only else []


@contextlib.contextmanager
def fitting(model):
    """Within the block, ``model`` computes what it is fitted to: terms marked ``inference_only`` are left out.

    The trainer holds it around training steps and evaluations on the data; outside
    it (MD, relaxation, the calculators, export) such terms are part of the energy.
    A model without such terms is unchanged. Blocks may nest.

    Examples
    --------
    >>> from clebsch.models import build_model
    >>> model = build_model({"name": "schnet", "species": ["H"], "cutoff": 3.0, "num_layers": 1, "channels": 4,
    ...                      "physics": {"d3": {"functional": "pbe", "inference_only": True}}})
    >>> with fitting(model):
    ...     model.physics.d3.active
    False
    >>> model.physics.d3.active
    True
    """
    terms = [m for m in model.modules() if isinstance(m, D3Dispersion) and m.inference_only]
    before = [m.fitting for m in terms]
    for m in terms:
        m.fitting = True
    try:
        yield model
    finally:
        for m, old in zip(terms, before):
            m.fitting = old
