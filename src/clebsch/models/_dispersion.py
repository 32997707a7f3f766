"""DFT-D3(BJ) dispersion: Grimme's D3 model with Becke-Johnson (rational) damping, in plain torch.

A model config turns it on under ``physics``::

    physics:
      d3: {functional: pbe}                     # parameters of PBE-D3(BJ)
      d3: {s8: 0.7875, a1: 0.4289, a2: 4.4407}  # or explicit ones
      d3: {functional: pbe, atm: true}          # with the three-body (Axilrod-Teller-Muto) term

The energy is the one of the reference code (s-dftd3, the ``dftd3`` package)::

    E = - sum_{i<j, T} [ s6 C6_ij / (r^6 + R0^6) + s8 C8_ij / (r^8 + R0^8) ]       r = |r_j + T - r_i| <= cutoff
    C8_ij = 3 C6_ij Q_i Q_j,   R0_ij = a1 sqrt(3 Q_i Q_j) + a2,
    C6_ij = sum_ab w_ia w_jb C6ref(Z_i, a, Z_j, b),   w_ia = softmax_a(-4 (CN_i - CNref_ia)^2),
    CN_i = sum_{j, T} 1 / (1 + exp(-16 ((Rcov_i + Rcov_j) / r - 1)))                   r <= cn_cutoff

in Bohr and Hartree (converted to Å and eV with ASE's constants), with the
reference C6 values, ``Q = sqrt(<r^4>/<r^2>)`` expectation values, covalent and
van der Waals radii and the functionals' parameters of the ``tad-dftd3`` package
(the reference data of s-dftd3, in torch). The three-body term (``atm: true``)
adds ``s9 sqrt(C6_ij C6_ik C6_jk) (3 cos a cos b cos c + 1) / (r_ij r_ik r_jk)^3``
times the zero-damping function of the reference code, over triples whose three
sides are within ``atm_cutoff``.

The sums run over every periodic image within the cutoffs (60 and 40 Bohr by
default, as in the reference code), far beyond the model's own cutoff: open
structures are summed densely over all pairs (one pass, traceable by
``torch.export``), periodic ones over a neighbour list of the D3 cutoff. Pair
energies are split half-half between their two atoms and triple energies in
thirds, so per-atom energies add up to the energy. Forces, stress and Hessians
come by autograd through the same torch operations.

Against the reference code (``benchmarks/d3.py``, float64): two-body energies,
per-atom energies, forces and virials agree to about 1e-10 relative, molecules
and periodic cells alike; the three-body term to about 2e-7 relative (as
tad-dftd3's own three-body sum). Cost: a periodic cell's two-body sum holds every
pair within 60 Bohr, some 6,700 neighbours per atom at the density of silicon;
energy, forces and stress take 2 to 10 times the reference code's time on one
core, little next to a network's. The three-body sum grows as the square of the
neighbours: with ``atm: true`` on periodic cells, a smaller ``atm_cutoff`` keeps
it affordable (the reference code itself takes seconds for a cell of 8 atoms).

Units: Å and eV.
"""

from __future__ import annotations

import difflib
import math
from functools import lru_cache

import torch
from ase.units import Bohr, Hartree

__all__ = ["D3_KEYS", "D3_INSTALL", "D3Dispersion", "check_d3", "d3_functionals", "d3_parameters"]

D3_INSTALL = "pip install 'clebsch[d3]'  (or: pip install tad-dftd3)"
"""How to install the package the D3 term takes its reference data from."""

D3_KEYS = {
    "functional": None,
    "damping": "bj",
    "s6": None,
    "s8": None,
    "a1": None,
    "a2": None,
    "atm": False,
    "s9": None,
    "cutoff": 60.0 * Bohr,
    "cn_cutoff": 40.0 * Bohr,
    "atm_cutoff": 40.0 * Bohr,
    "inference_only": False,
}
"""The keys of ``physics.d3`` and their defaults.

``functional``: name of the density functional whose D3(BJ) parameters to use
(case and hyphens ignored, the reference code's aliases understood: ``pbe``,
``b3lyp``, ``r2scan``, ``pbe0``, ...); ``damping``: ``bj`` (rational
Becke-Johnson damping). ``s6, s8, a1, a2``: explicit parameters (``a2`` in Bohr),
overriding the functional's; without a functional, ``s8``, ``a1`` and ``a2`` are
required and ``s6`` is 1. ``atm``: add the three-body Axilrod-Teller-Muto term,
scaled by ``s9`` (1 by default; the reference code's own default is ``atm: true``,
the D3(BJ) of most DFT codes is two-body only). ``cutoff``, ``cn_cutoff``,
``atm_cutoff``: real-space cutoffs in Å of the two-body sum, the coordination
numbers and the three-body sum (60, 40 and 40 Bohr, as the reference code).
``inference_only``: leave the term out while the model is fitted (see
:func:`clebsch.models._physics.fitting`), for data that already lacks dispersion;
by default the term is part of the energy always, so the network learns the rest
(train on DFT - D3)."""

_DAMPINGS = ("bj",)
_EXPLICIT = ("s6", "s8", "a1", "a2")


# ---------------------------------------------------------------- reference data


def _tad_dftd3(key: str = "model.physics.d3"):
    try:
        import tad_dftd3
    except ImportError as err:  # the message names the config key and the install line
        raise ImportError(f"{key} needs the tad-dftd3 package (D3 reference C6 data and functional parameters), "
                          f"which is not installed: {D3_INSTALL}") from err
    return tad_dftd3


@lru_cache(maxsize=1)
def _parameter_table() -> tuple[dict, dict]:
    """``({functional: D3(BJ) parameters}, {alias: functional})`` from tad-dftd3's copy of the reference table."""
    tad = _tad_dftd3()
    from importlib import resources

    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11; tad-dftd3 depends on tomli there
        import tomli as tomllib
    files = resources.files(tad.param)
    table = tomllib.loads(files.joinpath("parameters.toml").read_text(encoding="utf-8"))
    aliases = tomllib.loads(files.joinpath("aliases.toml").read_text(encoding="utf-8"))["alias"]
    base = table["default"]["parameter"]["d3"]["bj"]
    functionals = {}
    for name, entry in table["parameter"].items():
        if "bj" in entry.get("d3", {}):
            values = {**base, **entry["d3"]["bj"]}
            functionals[name] = {k: float(values[k]) for k in ("s6", "s8", "a1", "a2")}
    return functionals, {a: f for a, f in aliases.items() if f in functionals}


@lru_cache(maxsize=1)
def _reference_tables() -> dict[str, torch.Tensor]:
    """The reference data of every element (float64, Bohr and Hartree), from tad-dftd3."""
    tad = _tad_dftd3()
    from tad_mctc.data import radii

    f64 = torch.float64
    ref = tad.reference.Reference(dtype=f64, device=torch.device("cpu"))
    return {"c6ref": ref.c6, "cnref": ref.cn, "r4r2": tad.data.R4R2(dtype=f64, device=torch.device("cpu")),
            "rcov": radii.COV_D3(dtype=f64, device=torch.device("cpu")),
            "rvdw": radii.VDW_PAIRWISE(dtype=f64, device=torch.device("cpu"))}


def d3_functionals() -> list[str]:
    """The functionals with D3(BJ) parameters, sorted.

    >>> "pbe" in d3_functionals() and "b3lyp" in d3_functionals()
    True
    """
    return sorted(_parameter_table()[0])


def _canonical(functional: str) -> str | None:
    functionals, aliases = _parameter_table()
    name = functional.lower().replace("-", "")
    name = aliases.get(name, name)
    return name if name in functionals else None


def d3_parameters(functional: str) -> dict[str, float]:
    """The D3(BJ) parameters ``s6, s8, a1, a2`` (``a2`` in Bohr) of a functional.

    >>> d3_parameters("PBE")
    {'s6': 1.0, 's8': 0.7875, 'a1': 0.4289, 'a2': 4.4407}
    >>> d3_parameters("pbee")
    Traceback (most recent call last):
    ...
    ValueError: model.physics.d3.functional: 'pbee' has no D3(BJ) parameters; did you mean pbe, ...
    """
    name = _canonical(functional)
    if name is None:
        raise ValueError(_unknown_functional(functional))
    return dict(_parameter_table()[0][name])


def _unknown_functional(functional) -> str:
    names = d3_functionals()
    close = difflib.get_close_matches(str(functional).lower().replace("-", ""), names, n=4, cutoff=0.6)
    common = [n for n in ("pbe", "pbe0", "b3lyp", "r2scan", "scan", "tpss", "revpbe", "blyp", "bp", "pw6b95",
                          "wb97x", "b97d", "hf") if n in names]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return (f"model.physics.d3.functional: {functional!r} has no D3(BJ) parameters; {hint}allowed: "
            f"{len(names)} functionals, e.g. {', '.join(common)} (all: clebsch.models._dispersion.d3_functionals()), "
            "or give s8, a1 and a2 explicitly")


# ---------------------------------------------------------------- configuration


def check_d3(options: dict, key: str = "model.physics.d3") -> dict:
    """Validate the options of the ``d3`` term (keys of :data:`D3_KEYS`) and fill in the defaults.

    Needs the tad-dftd3 package (to know the functionals).

    >>> check_d3({"functional": "pbe"})["cutoff"] == 60 * Bohr
    True
    >>> check_d3({"functional": "pbe", "cutoff": -1.0})
    Traceback (most recent call last):
    ...
    ValueError: model.physics.d3.cutoff: -1.0 must be positive (Å); the default is 31.75... (60 Bohr)
    """
    bad = sorted(set(options) - set(D3_KEYS))
    if bad:
        raise ValueError(f"{key}: unknown key(s) {bad}; allowed: {', '.join(D3_KEYS)}")
    values = {**D3_KEYS, **options}
    for name in ("atm", "inference_only"):
        if not isinstance(values[name], bool):
            raise ValueError(f"{key}.{name}: {values[name]!r} is not allowed; allowed: true, false")
    if values["damping"] not in _DAMPINGS:
        raise ValueError(f"{key}.damping: {values['damping']!r} is not allowed; allowed: {', '.join(_DAMPINGS)} "
                         "(rational Becke-Johnson damping)")
    for name in (*_EXPLICIT, "s9", "cutoff", "cn_cutoff", "atm_cutoff"):
        value = values[name]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{key}.{name}: {value!r} is not a number")
        values[name] = float(value)
    for name, bohr in (("cutoff", 60), ("cn_cutoff", 40), ("atm_cutoff", 40)):
        if not values[name] > 0:
            raise ValueError(f"{key}.{name}: {values[name]} must be positive (Å); the default is "
                             f"{D3_KEYS[name]:.2f} ({bohr} Bohr)")
    if values["functional"] is None:
        missing = [k for k in ("s8", "a1", "a2") if values[k] is None]
        if missing:
            raise ValueError(f"{key}: give a functional (e.g. functional: pbe; allowed: "
                             "clebsch.models._dispersion.d3_functionals()) or the damping parameters explicitly; "
                             f"missing: {', '.join(missing)}")
    else:
        if not isinstance(values["functional"], str):
            raise ValueError(f"{key}.functional: {values['functional']!r} is not a functional name (e.g. pbe)")
        _tad_dftd3(key)
        if _canonical(values["functional"]) is None:
            raise ValueError(_unknown_functional(values["functional"]).replace("model.physics.d3", key, 1))
    if values["s9"] is not None and not values["atm"]:
        raise ValueError(f"{key}.s9: {values['s9']} scales the three-body term, which is off; set atm: true "
                         "(or leave s9 out)")
    for name in ("a1", "a2"):
        if values[name] is not None and values[name] < 0:
            raise ValueError(f"{key}.{name}: {values[name]} is negative; the damping radius a1 sqrt(C8/C6) + a2 "
                             "(Bohr) needs a1, a2 >= 0")
    return values


def _resolved(values: dict) -> dict[str, float]:
    """``s6, s8, a1, a2, s9`` of a checked config (the functional's, overridden by explicit values)."""
    params = d3_parameters(values["functional"]) if values["functional"] is not None else {"s6": 1.0}
    for name in _EXPLICIT:
        if values[name] is not None:
            params[name] = values[name]
    params["s9"] = (1.0 if values["s9"] is None else values["s9"]) if values["atm"] else 0.0
    return params


# ---------------------------------------------------------------- the sums


def _atm_energy(r2ij, r2ik, r2jk, c9, r0, alp: float = 14.0):
    """Axilrod-Teller-Muto energy of triangles with squared sides ``r2ij, r2ik, r2jk`` (Bohr^2), zero-damped."""
    r2 = r2ij * r2ik * r2jk
    r1 = torch.sqrt(r2)
    r3 = r2 * r1
    r5 = r3 * r2
    damp = 1.0 / (1.0 + 6.0 * (r0 / r1) ** ((alp + 2.0) / 3.0))
    s = (r2ij + r2jk - r2ik) * (r2ij - r2jk + r2ik) * (-r2ij + r2jk + r2ik)
    return c9 * damp * (0.375 * s / r5 + 1.0 / r3)


class D3Dispersion(torch.nn.Module):
    """The D3(BJ) dispersion energy of the atoms of a batch, per atom (eV).

    Parameters
    ----------
    numbers : list of int
        Atomic number of each species index (the model's elements).
    functional, damping, s6, s8, a1, a2, atm, s9, cutoff, cn_cutoff, atm_cutoff, inference_only
        See :data:`D3_KEYS`.

    Examples
    --------
    >>> d3 = D3Dispersion([1, 8], functional="pbe")
    >>> water = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.76, 0.59], [0.0, -0.76, 0.59]], dtype=torch.float64)
    >>> e = d3(torch.tensor([1, 0, 0]), water)
    >>> round(float(e.sum()), 6)   # eV: PBE-D3(BJ), two-body, as the reference code
    -0.009782
    """

    dense_atoms = 1024
    """Open structures of at most this many atoms in all are summed densely over all pairs (N^2) in one pass;
    larger ones, and periodic ones, over a neighbour list."""

    dense_atm_atoms = 160
    """The same with the three-body term (``atm``), whose dense sum holds N^3 triples."""

    def __init__(self, numbers, functional: str | None = None, damping: str = "bj", s6: float | None = None,
                 s8: float | None = None, a1: float | None = None, a2: float | None = None, atm: bool = False,
                 s9: float | None = None, cutoff: float = D3_KEYS["cutoff"], cn_cutoff: float = D3_KEYS["cn_cutoff"],
                 atm_cutoff: float = D3_KEYS["atm_cutoff"], inference_only: bool = False):
        super().__init__()
        _tad_dftd3()
        values = check_d3({"functional": functional, "damping": damping, "s6": s6, "s8": s8, "a1": a1, "a2": a2,
                           "atm": atm, "s9": s9, "cutoff": cutoff, "cn_cutoff": cn_cutoff, "atm_cutoff": atm_cutoff,
                           "inference_only": inference_only})
        data = _reference_tables()
        z = torch.as_tensor(numbers, dtype=torch.long)
        if int(z.max()) > 103:  # the reference data goes up to Lr (Z = 103)
            bad = int(z[z > 103][0])
            raise ValueError(f"model.physics.d3: element Z={bad} has no D3 reference data (D3 covers Z = 1..103)")
        self.numbers = [int(x) for x in z]
        cnref = data["cnref"][z]  # [S, 7], -1 where an element has fewer references
        self.params = _resolved(values)
        self.atm = values["atm"]
        self.inference_only = values["inference_only"]
        self.fitting = False  # set by clebsch.models._physics.fitting: leave an inference_only term out
        self.cutoff = values["cutoff"]
        self.cn_cutoff = values["cn_cutoff"]
        self.atm_cutoff = values["atm_cutoff"]
        buffers = {  # float64 whatever the default dtype (cast to the positions' dtype where used)
            "c6ref": data["c6ref"][z[:, None], z[None, :]],  # [S, S, 7, 7] Hartree Bohr^6
            "cnref": cnref.clamp(min=0.0),
            "cnmask": cnref >= 0,
            "r4r2": data["r4r2"][z],  # [S]
            "rcov": data["rcov"][z],  # [S] Bohr, 4/3 of the covalent radii
            "rvdw": data["rvdw"][z[:, None], z[None, :]],  # [S, S] Bohr
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    def extra_repr(self) -> str:
        p = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{p}, cutoff={self.cutoff:.3f}, cn_cutoff={self.cn_cutoff:.3f}, inference_only={self.inference_only}"

    @property
    def active(self) -> bool:
        """Whether the term adds to the energy now (an ``inference_only`` term is off while fitting)."""
        return not (self.inference_only and self.fitting)

    # ------------------------------------------------------------------ forward
    def forward(self, species: torch.Tensor, positions: torch.Tensor, batch: torch.Tensor | None = None,
                num_graphs: int = 1, cell: torch.Tensor | None = None, periodic=None) -> torch.Tensor:
        """Per-atom dispersion energies [N] in eV.

        ``species`` [N] are species indices, ``positions`` [N, 3] in Å, ``batch`` [N] the
        structure of each atom, ``cell`` [B, 3, 3] the lattice vectors (rows) and
        ``periodic`` the periodic directions: a bool per structure (all three or none) or
        a [B, 3] bool tensor.
        """
        e = torch.zeros(species.shape[0], dtype=positions.dtype, device=positions.device)
        if not self.active:
            return e
        if batch is None:
            batch = torch.zeros_like(species)
        pbc = _pbc(periodic, num_graphs)
        limit = self.dense_atm_atoms if self.atm else self.dense_atoms
        # all open: one dense pass (always when traced: its shapes follow the number of atoms, nothing else)
        if not any(any(p) for p in pbc) and (_is_compiling() or positions.shape[0] <= limit):
            return self._dense(species, positions, batch)
        for b in range(num_graphs):
            atoms = (batch == b).nonzero()[:, 0]
            if atoms.numel() == 0:
                continue
            if any(pbc[b]) or atoms.numel() > limit:
                part = self._listed(species[atoms], positions[atoms], cell[b] if cell is not None else None, pbc[b])
            else:
                part = self._dense(species[atoms], positions[atoms], torch.zeros_like(atoms))
            e = e.index_add(0, atoms, part)
        return e

    def _tables(self, dtype) -> dict[str, torch.Tensor]:
        """The reference data in ``dtype``, and per element pair (flattened, index ``s_i * S + s_j``) the sum of
        the covalent radii, ``3 Q_i Q_j`` (= C8 / C6) and the sixth and eighth powers of the BJ damping
        radius ``R0 = a1 sqrt(3 Q_i Q_j) + a2`` (Bohr)."""
        p = self.params
        t = {name: getattr(self, name).to(dtype) for name in ("c6ref", "cnref", "r4r2", "rcov", "rvdw")}
        qq = 3.0 * t["r4r2"][:, None] * t["r4r2"][None, :]
        t["rco"] = (t["rcov"][:, None] + t["rcov"][None, :]).reshape(-1)
        t["qq"] = qq.reshape(-1)
        r0 = p["a1"] * torch.sqrt(qq) + p["a2"]
        t["r06"] = (r0 ** 6).reshape(-1)
        t["r08"] = (r0 ** 8).reshape(-1)
        return t

    @staticmethod
    def _count(r, rco):
        """The coordination-number counting function of pairs at distances ``r`` (Bohr)."""
        return 1.0 / (1.0 + torch.exp(-16.0 * (rco / r - 1.0)))

    def _c6(self, species, cn, tables) -> torch.Tensor:
        """``C6_ij`` [N, N] (Hartree Bohr^6) from the coordination numbers ``cn`` [N].

        ``C6_ij = sum_ab w_ia w_jb C6ref(s_i, a, s_j, b)``, the weights ``w_ia`` a softmax of
        ``-4 (CN_i - CNref_ia)^2`` over each element's references (the reference code's
        normalised Gaussians, without their underflow at large ``CN``).
        """
        dcn = cn[:, None] - tables["cnref"][species]
        logits = torch.where(self.cnmask[species], -4.0 * dcn * dcn, torch.full_like(dcn, -math.inf))
        weights = torch.softmax(logits, dim=-1)  # [N, 7]
        # two-operand products only: a contraction path picked from the sizes would fix the number of atoms in a trace
        g = (weights[:, None, :, None] * tables["c6ref"][species]).sum(2)  # [N, S, 7]: sum_a w_ia C6ref(s_i, a, t, b)
        onehot = (species[:, None] == torch.arange(self.c6ref.shape[0], device=species.device)).to(weights.dtype)
        wt = (onehot[:, :, None] * weights[:, None, :]).reshape(species.shape[0], -1)  # [N, S * 7]
        return g.reshape(species.shape[0], -1) @ wt.T

    def _pair_energy(self, r, c6, kind, tables):
        """Two-body BJ-damped energies (Hartree) of pairs of element pairs ``kind`` with ``C6`` at distances ``r``."""
        p = self.params
        r2 = r * r
        r6 = r2 * r2 * r2
        return -c6 * (p["s6"] / (r6 + tables["r06"][kind])
                      + p["s8"] * tables["qq"][kind] / (r6 * r2 + tables["r08"][kind]))

    def _dense(self, species, positions, batch):
        """All pairs (and triples) of atoms in the same open structure, as dense [N, N] arrays."""
        n = species.shape[0]
        tables = self._tables(positions.dtype)
        x = positions / Bohr
        d = x[None, :, :] - x[:, None, :]  # [i, j] = x_j - x_i
        pair = (batch[:, None] == batch[None, :]) & ~torch.eye(n, dtype=torch.bool, device=positions.device)
        r2 = torch.where(pair, (d * d).sum(-1), torch.ones_like(d[..., 0]))
        r = torch.sqrt(r2)
        zero = torch.zeros_like(r)
        kind = species[:, None] * self.c6ref.shape[0] + species[None, :]
        cn = torch.where(pair & (r <= self.cn_cutoff / Bohr), self._count(r, tables["rco"][kind]), zero).sum(-1)
        c6 = self._c6(species, cn, tables)
        e2 = self._pair_energy(r, c6, kind, tables)
        e = 0.5 * torch.where(pair & (r <= self.cutoff / Bohr), e2, zero).sum(-1)
        if self.atm:
            e = e + self._dense_atm(species, r2, pair, c6, tables)
        return e * Hartree

    def _dense_atm(self, species, r2, pair, c6, tables):
        """Three-body energies per atom (Hartree): a sixth of the ordered triples ``(i, j, k)`` centred on ``i``."""
        near = pair & (r2 <= (self.atm_cutoff / Bohr) ** 2)
        ok = near[:, :, None] & near[:, None, :] & near[None, :, :]  # [i, j, k]: all three sides within the cutoff
        c9 = self.params["s9"] * torch.sqrt((c6[:, :, None] * c6[:, None, :] * c6[None, :, :]).abs())
        rv = 4.0 / 3.0 * tables["rvdw"][species[:, None], species[None, :]]
        r0 = rv[:, :, None] * rv[:, None, :] * rv[None, :, :]
        e3 = _atm_energy(r2[:, :, None], r2[:, None, :], r2[None, :, :], c9, r0)
        return torch.where(ok, e3, torch.zeros_like(e3)).sum((1, 2)) / 6.0

    def _listed(self, species, positions, cell, pbc):
        """One structure (periodic, or open and large) over a neighbour list within the D3 cutoffs.

        Each pair (and each pair of an atom with its own image) is taken once, in the
        direction ``i < j`` (for ``i = j``, the shift whose first non-zero component is
        positive), and split half-half.
        """
        from ..graph import radius_graph

        dtype = positions.dtype
        tables = self._tables(dtype)
        periodic = any(pbc)
        if cell is None:
            cell = torch.zeros(3, 3, dtype=dtype, device=positions.device)
        reach = max(self.cutoff, self.cn_cutoff, self.atm_cutoff if self.atm else 0.0)
        edge_index, shifts = radius_graph(positions.detach().cpu(), reach, cell.detach().cpu() if periodic else None,
                                          pbc if periodic else None, min_distance=0.0)
        j, i = edge_index[0], edge_index[1]
        s0, s1, s2 = shifts[:, 0], shifts[:, 1], shifts[:, 2]
        forward = (s0 > 0) | ((s0 == 0) & ((s1 > 0) | ((s1 == 0) & (s2 > 0))))
        half = ((i < j) | ((i == j) & forward)).nonzero()[:, 0]
        device = positions.device
        i, j, shifts = i[half].to(device), j[half].to(device), shifts[half].to(device=device, dtype=dtype)
        v = (positions[j] - positions[i] + shifts @ cell) / Bohr
        r2 = (v * v).sum(-1)
        r = torch.sqrt(r2)
        n = species.shape[0]
        zero = torch.zeros(n, dtype=dtype, device=device)
        kind = species[i] * self.c6ref.shape[0] + species[j]
        near = (r <= self.cn_cutoff / Bohr).nonzero()[:, 0]
        count = self._count(r[near], tables["rco"][kind[near]])
        cn = zero.index_add(0, i[near], count).index_add(0, j[near], count)
        c6 = self._c6(species, cn, tables).reshape(-1)  # [N * N]: a pair of atoms has many images
        if self.cutoff < reach:
            two = (r <= self.cutoff / Bohr).nonzero()[:, 0]
            i2, j2, r_two, kind_two = i[two], j[two], r[two], kind[two]
        else:  # the list holds the pairs within the two-body cutoff and no others
            i2, j2, r_two, kind_two = i, j, r, kind
        e2 = 0.5 * self._pair_energy(r_two, c6[i2 * n + j2], kind_two, tables)
        e = zero.index_add(0, i2, e2).index_add(0, j2, e2)
        if self.atm:  # from each atom's neighbours: both directions of every pair
            e = e + self._listed_atm(species, torch.cat([i, j]), torch.cat([j, i]), torch.cat([v, -v]),
                                     torch.cat([r2, r2]), c6.reshape(n, n), tables)
        return e * Hartree

    max_triples = 20_000_000
    """The three-body sum of one structure over a neighbour list refuses more triples than this."""

    def _listed_atm(self, species, i, j, v, r2, c6, tables):
        """Three-body energies per atom (Hartree): a third of each pair of neighbours of each atom."""
        cut2 = (self.atm_cutoff / Bohr) ** 2
        near = (r2 <= cut2).nonzero()[:, 0]
        order = near[torch.argsort(i[near], stable=True)]
        i, j, v, r2 = i[order], j[order], v[order], r2[order]
        n = species.shape[0]
        counts = torch.bincount(i, minlength=n)
        total = int((counts * (counts - 1) // 2).sum())
        if total > self.max_triples:
            raise ValueError(f"model.physics.d3: the three-body sum of this structure has {total} pairs of neighbours "
                             f"within atm_cutoff {self.atm_cutoff:.2f} Å (more than {self.max_triples}); lower "
                             "model.physics.d3.atm_cutoff or set atm: false")
        # each unordered pair (p < q) of edges with the same centre
        edges = torch.arange(i.shape[0], device=i.device)
        later = counts[i] - (edges - (torch.cumsum(counts, 0) - counts)[i]) - 1  # edges after p in its centre's block
        first = torch.repeat_interleave(edges, later)
        second = first + 1 + torch.arange(first.shape[0], device=i.device) - torch.repeat_interleave(
            torch.cumsum(later, 0) - later, later)
        vjk = v[second] - v[first]
        r2jk = (vjk * vjk).sum(-1)
        ok = ((r2jk <= cut2) & (r2jk > 0)).nonzero()[:, 0]
        first, second, r2jk = first[ok], second[ok], r2jk[ok]
        a, b, c = i[first], j[first], j[second]
        c9 = self.params["s9"] * torch.sqrt((c6[a, b] * c6[a, c] * c6[b, c]).abs())
        rv = 4.0 / 3.0 * tables["rvdw"]
        r0 = rv[species[a], species[b]] * rv[species[a], species[c]] * rv[species[b], species[c]]
        e3 = _atm_energy(r2[first], r2[second], r2jk, c9, r0)
        return torch.zeros(n, dtype=e3.dtype, device=e3.device).index_add(0, a, e3 / 3.0)


def _is_compiling() -> bool:
    check = getattr(torch.compiler, "is_compiling", None)
    return bool(check()) if check is not None else False


def _pbc(periodic, num_graphs: int) -> list[list[bool]]:
    """Periodic directions, three bools per structure, from a bool per structure or a [B, 3] tensor."""
    if periodic is None:
        return [[False] * 3 for _ in range(num_graphs)]
    if isinstance(periodic, torch.Tensor):
        periodic = periodic.tolist()
    return [[bool(x)] * 3 if not isinstance(x, (list, tuple)) else [bool(y) for y in x] for x in periodic]
