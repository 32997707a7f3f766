"""The target registry: what every quantity a model predicts and a data set holds *is*.

A :class:`Target` declares, once, a quantity's name, its level (one value per
structure, per atom or per edge), its layout (irreps, or a Cartesian tensor
with index symmetries whose irreps follow), its unit, whether a per-structure
value is a sum (extensive) or a mean (intensive) over atoms, and how a model
produces it (a head on the features, or a response of another output by
autograd). The data reader, the model's outputs and heads, the loss terms, the
metrics, ``clebsch evaluate`` and the export all read these declarations.

Built-in targets are registered below. A data set's own quantities (an NMR
shielding tensor per atom, a HOMO-LUMO gap, Hamiltonian blocks per atom pair)
are declared in a model config, ``model.targets``, with :func:`declare`::

    model:
      targets:
        shielding: {level: atom, cartesian: ij, unit: ppm}
        gap: {level: structure, irreps: 0e, reduce: mean, unit: eV}

This module depends on :mod:`clebsch.o3` only, so that the data reader (below
the models in the layering) can use it.

Examples
--------
>>> TARGETS["polarizability"].irreps_out
1x0e+1x2e
>>> TARGETS["forces"].shape, TARGETS["forces"].level
((3,), 'atom')
>>> t = declare("shielding", {"level": "atom", "cartesian": "ij", "unit": "ppm"})
>>> t.irreps_out, t.shape
(1x0e+1x1e+1x2e, (3, 3))
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Optional

from .o3 import Irreps

__all__ = ["Target", "TARGETS", "register_target", "declare", "resolve_targets", "LEVELS", "TargetError"]

LEVELS = ("structure", "atom", "edge")


class TargetError(ValueError):
    """A target declaration or a target value that does not fit its declaration."""


@functools.lru_cache(maxsize=None)
def _cartesian(formula: str):
    from .o3 import CartesianTensor

    return CartesianTensor(formula)


@functools.lru_cache(maxsize=None)
def _block_reduction(formula: str, irreps: str):
    from .o3 import ReducedTensorProducts

    return ReducedTensorProducts(formula, i=irreps, j=irreps)


LOSS_METRICS = ("overlap", "coulomb")
"""What a density target's loss can measure besides its coefficients (``Target.loss_metric``)."""

MATRIX_LOSS_METRICS = ("orthonormal", "density_matrix")
"""What a matrix's pair-block target's loss can measure besides its blocks (``Target.loss_metric``)."""


@dataclass(frozen=True)
class Target:
    """One quantity: where it lives, how it transforms, its unit, how it is made.

    Parameters
    ----------
    name : str
    level : {"structure", "atom", "edge"}
        One value per structure ``[B, ...]``, per atom ``[N, ...]`` or per edge
        ``[E, ...]`` (an ordered atom pair with its cell shift).
    irreps : str, optional
        Layout of the value as irreps (``"1o"``: a vector). Exactly one of
        ``irreps`` and ``cartesian`` is given.
    cartesian : str, optional
        An index formula (``"ij=ji"``, ``"ij"``, ``"ijkl=jikl=ijlk=klij"``): the
        value is a Cartesian tensor ``[3, 3, ...]`` with these symmetries; the
        model predicts its irreps and returns the Cartesian form.
    basis : clebsch.basis.GaussianBasis, optional
        The value lives in an atom-centred basis: per atom, the coefficients of
        the atom's basis functions (an electron density), laid out by the
        basis's union irreps (every element's functions in one layout, the
        functions an element lacks are missing values); or, with ``matrix``,
        the blocks of a matrix in that basis (a Hamiltonian): per atom the
        symmetric on-site block, per edge the block between the two atoms,
        ``[U, U]`` with rows and columns laid out by the union irreps.
    matrix : bool
        See ``basis``.
    loss_metric : {"overlap", "coulomb", "orthonormal", "density_matrix"}, optional
        For a density (a basis target without ``matrix``): the loss measures
        the density rather than its coefficients, ``dc^T S dc`` per atom with
        ``S`` the overlap of the atom's own functions, i.e. the squared L2 error
        of the atom's part of the density (cross terms between atoms left out).
        Near-linearly-dependent functions, whose coefficients can trade off
        without changing the density, are then not fitted one by one. With
        ``"coulomb"``, ``S`` is the Coulomb matrix of the atom's functions
        (the metric of density fitting, in Hartree per electron squared): the
        loss is the error's Coulomb self-interaction, which weighs the diffuse,
        long-range part of the density that the Coulomb potential depends on.
        ``"orthonormal"`` is for a matrix's pair blocks (``level: edge``,
        ``matrix: true``): the term is then the mean squared element of
        ``X^T (H - H_ref) X`` over each structure's whole matrix (on-site blocks
        from the per-atom target of the same basis, pairs without an edge zero),
        ``X`` its functions orthonormalised by the overlap (PySCF's, for open
        structures) without the combinations below ``overlap_cutoff``: the
        matrix as its orbital energies and an initial guess see it. An element error of ``d``
        along a combination with overlap eigenvalue ``s`` weighs ``d / s`` there.
        ``"density_matrix"`` (a closed-shell matrix's pair blocks): the change
        of the density matrix that the error makes to first order, ``2 (C_o^T
        dH C_v)_ia / (e_a - e_i)`` between the reference's occupied and virtual
        orbitals (the reference matrix's own, with PySCF's overlap): what an
        initial guess from the matrix gets wrong. It leaves the errors within
        the occupied and within the virtual orbitals free (they move orbital
        energies, not the density); the on-site target's own loss still fits
        the blocks.
    overlap_cutoff : float, optional
        For ``loss_metric: orthonormal``: the overlap eigenvalue below which
        combinations of functions are left out of the loss (default
        :data:`clebsch.basis.pyscf.PREDICTED_OVERLAP_CUTOFF`; 0 keeps every
        one). :func:`clebsch.basis.pyscf.initial_guess` drops the same ones from
        the model's guesses. With the converged matrix itself, dropping them
        costs most of what the matrix saves (ethanol in def2-SVP: 6.5 SCF
        iterations at 0.02, 1 at 0), so a model meant to save more is trained
        at 0 and used at 0.
    conserve_electrons : bool
        For a density: the predicted coefficients of each structure are
        corrected so that the density holds the structure's electrons (the sum
        of its atomic numbers less its total charge), by the smallest change of
        the ``s`` coefficients (``c_i += d w_i``, ``w`` the functions'
        integrals). A basis that fits only valence electrons (an ECP) does not
        suit it; training checks the reference densities' counts.
    unit : str
        The unit of the stored value (files, outputs, metrics).
    extensive : bool
        Per-structure values made from per-atom contributions: summed (True)
        or averaged (False).
    source : {"head", "response", "energy"}
        How a model makes it: a head on the features, a derivative of another
        output (``of``), or the energy path itself.
    of : str, optional
        For responses: the output it is a derivative of.
    head : str, optional
        The head kind that makes it (see :data:`clebsch.models.HEADS`); by
        default the generic head of its level.
    metric_factor, metric_unit : float, str
        Metrics are reported as ``factor * value`` in ``metric_unit`` (meV for eV).
    per_atom : bool
        Also report (and weight the loss by) the value divided by the number
        of atoms (energies).
    trainable : bool
        Whether a loss term and metrics exist for it.
    short : str
        Column label in tables.
    description : str
    """

    name: str
    level: str
    irreps: Optional[str] = None
    cartesian: Optional[str] = None
    basis: Optional[object] = None
    matrix: bool = False
    loss_metric: Optional[str] = None
    overlap_cutoff: Optional[float] = None
    conserve_electrons: bool = False
    unit: str = ""
    extensive: bool = True
    source: str = "head"
    of: Optional[str] = None
    head: Optional[str] = None
    metric_factor: float = 1.0
    metric_unit: Optional[str] = None
    per_atom: bool = False
    trainable: bool = True
    short: Optional[str] = None
    description: str = ""

    def __post_init__(self):
        if self.level not in LEVELS:
            raise TargetError(f"target {self.name!r}: level must be one of {LEVELS}, got {self.level!r}")
        if sum(x is not None for x in (self.irreps, self.cartesian, self.basis)) != 1:
            raise TargetError(f"target {self.name!r}: give exactly one of 'irreps', 'cartesian' and 'basis'")
        if self.basis is not None and (self.level == "structure" or (self.level == "edge" and not self.matrix)):
            raise TargetError(f"target {self.name!r}: a basis target is per atom (coefficients, or with matrix: "
                              f"true on-site blocks) or per edge with matrix: true (pair blocks), not per "
                              f"{self.level}")
        if self.matrix and self.basis is None:
            raise TargetError(f"target {self.name!r}: matrix: true needs a basis")
        if self.loss_metric is not None:
            if self.loss_metric not in LOSS_METRICS + MATRIX_LOSS_METRICS:
                raise TargetError(f"target {self.name!r}: loss_metric {self.loss_metric!r} is not allowed; allowed "
                                  f"values: {', '.join(LOSS_METRICS)} (a density), "
                                  f"{', '.join(MATRIX_LOSS_METRICS)} (a matrix's pair blocks)")
            if self.loss_metric in LOSS_METRICS and (self.basis is None or self.matrix):
                raise TargetError(f"target {self.name!r}: loss_metric {self.loss_metric} is for a density (a basis "
                                  f"target without matrix: true)")
            if self.loss_metric in MATRIX_LOSS_METRICS and not (self.matrix and self.level == "edge"):
                raise TargetError(f"target {self.name!r}: loss_metric {self.loss_metric} measures a whole matrix "
                                  f"and is set on its pair blocks (level: edge, matrix: true); the on-site blocks "
                                  f"of the same basis join in")
        if self.overlap_cutoff is not None:
            if self.loss_metric != "orthonormal":
                raise TargetError(f"target {self.name!r}: overlap_cutoff is for loss_metric: orthonormal")
            if not (isinstance(self.overlap_cutoff, (int, float)) and 0.0 <= float(self.overlap_cutoff) < 1.0):
                raise TargetError(f"target {self.name!r}: overlap_cutoff must be a number in [0, 1), got "
                                  f"{self.overlap_cutoff!r}")
        if self.conserve_electrons and (self.basis is None or self.matrix or self.level != "atom"):
            raise TargetError(f"target {self.name!r}: conserve_electrons is for a density (a per-atom basis target "
                              f"without matrix: true)")
        if self.source not in ("head", "response", "energy"):
            raise TargetError(f"target {self.name!r}: source must be head, response or energy, got {self.source!r}")
        if self.source == "response" and not self.of:
            raise TargetError(f"target {self.name!r}: a response needs 'of' (the output it is a derivative of)")
        try:
            if self.irreps is not None:
                Irreps(self.irreps)
            elif self.cartesian is not None and set(self.cartesian.split("=")[0]) - set("ijklmnopqrstuvwxyz"):
                raise ValueError("indices are lowercase letters")
        except (ValueError, TypeError) as err:
            raise TargetError(f"target {self.name!r}: bad layout: {err}") from None

    # ------------------------------------------------------------ layout
    @property
    def rank(self) -> int:
        """Number of tensor indices (0 for an irreps target, 2 for a basis matrix)."""
        if self.matrix:
            return 2
        return 0 if self.cartesian is None else len(self.cartesian.split("=")[0])

    @property
    def _blocks(self):
        """The reduction of a basis matrix's blocks (symmetric on-site, general between two atoms)."""
        return _block_reduction("ij=ji" if self.level == "atom" else "ij", str(self.basis.union_irreps))

    @functools.cached_property
    def irreps_out(self) -> Irreps:
        """The irreps a model predicts for this target."""
        if self.cartesian is not None:
            return _cartesian(self.cartesian).irreps
        if self.basis is not None:
            return self._blocks.irreps_out if self.matrix else self.basis.union_irreps
        return Irreps(self.irreps)

    @property
    def shape(self) -> tuple:
        """Shape of one value: ``()`` for one scalar, ``(d,)`` for irreps, ``(3, 3, ...)`` for Cartesian,
        ``(U,)`` or ``(U, U)`` for a basis target."""
        if self.cartesian is not None:
            return (3,) * self.rank
        if self.basis is not None:
            u = self.basis.union_irreps.dim
            return (u, u) if self.matrix else (u,)
        dim = Irreps(self.irreps).dim
        return () if dim == 1 else (dim,)

    @property
    def symmetric(self) -> bool:
        """Whether the value has index symmetries (a Cartesian formula with them, an on-site block)."""
        if self.basis is not None:
            return self.matrix and self.level == "atom"
        return self.cartesian is not None and "=" in self.cartesian

    def to_cartesian(self, x):
        """Irreps ``[..., d]`` to this target's stored form (Cartesian, a basis block, or as is)."""
        if self.cartesian is not None:
            return _cartesian(self.cartesian).to_cartesian(x)
        if self.matrix:
            return self._blocks.to_tensor(x)
        return x.reshape(*x.shape[:-1], *self.shape) if self.shape == () else x

    def from_cartesian(self, x):
        """The stored form to irreps ``[..., d]``."""
        if self.cartesian is not None:
            return _cartesian(self.cartesian).from_cartesian(x)
        if self.matrix:
            return self._blocks.from_tensor(x)
        return x.reshape(*x.shape[: x.dim() - len(self.shape)], -1)

    def symmetry_error(self, x):
        """Largest violation of the declared index symmetry per value (0 without symmetries)."""
        if not self.symmetric:
            return x.new_zeros(x.shape[: x.dim() - self.rank]) if self.rank else x.new_zeros(x.shape[:1])
        if self.matrix:
            return self._blocks.symmetry_error(x)
        return _cartesian(self.cartesian).symmetry_error(x)

    @property
    def label(self) -> str:
        return self.short or self.name

    @property
    def display_unit(self) -> str:
        return self.metric_unit if self.metric_unit is not None else self.unit

    def describe(self) -> str:
        if self.basis is not None:
            what = "blocks of a matrix" if self.matrix else "coefficients"
            layout = f"{what} in basis {self.basis.name!r} ({self.basis.union_irreps} per atom)"
        else:
            layout = f"Cartesian {self.cartesian!r} ({self.irreps_out})" if self.cartesian else str(Irreps(self.irreps))
        how = f"response of {self.of}" if self.source == "response" else self.source
        kind = "" if self.level != "structure" else (" extensive" if self.extensive else " intensive")
        return f"{self.name}: per {self.level}{kind}, {layout}, {self.unit or 'no unit'}, {how}"


TARGETS: dict[str, Target] = {}
"""The built-in targets, by name."""


def register_target(target: Target) -> Target:
    """Add a built-in target; a new name only (an existing one raises)."""
    if target.name in TARGETS:
        raise TargetError(f"target {target.name!r} is already registered")
    TARGETS[target.name] = target
    return target


# ---------------------------------------------------------------- built-in targets
register_target(Target("energy", "structure", irreps="0e", unit="eV", source="energy", metric_factor=1000.0,
                       metric_unit="meV", per_atom=True, short="E", description="total energy"))
register_target(Target("atomic_energies", "atom", irreps="0e", unit="eV", source="energy", trainable=False,
                       description="per-atom energies (reference energy plus learned part)"))
register_target(Target("forces", "atom", irreps="1o", unit="eV/Å", source="response", of="energy",
                       metric_factor=1000.0, metric_unit="meV/Å", short="F", description="-dE/dr"))
register_target(Target("stress", "structure", cartesian="ij=ji", unit="eV/Å³", source="response", of="energy",
                       extensive=False, metric_factor=1000.0, metric_unit="meV/Å³", short="S",
                       description="dE/d(strain)/V, ASE's sign; periodic structures only"))
register_target(Target("virial", "structure", cartesian="ij=ji", unit="eV", source="response", of="energy",
                       metric_factor=1000.0, metric_unit="meV", short="W", description="-dE/d(strain)"))
register_target(Target("dipole", "structure", irreps="1o", unit="e·Å", head="dipole", metric_factor=1000.0,
                       metric_unit="me·Å", short="mu",
                       description="sum of atomic dipoles and charges times positions from the centre of mass"))
register_target(Target("charges", "atom", irreps="0e", unit="e", head="dipole", metric_factor=1000.0,
                       metric_unit="me", short="q", description="partial charges adding up to the total charge"))
register_target(Target("polarizability", "structure", cartesian="ij=ji", unit="Å³", head="polarizability",
                       short="alpha", description="sum of per-atom isotropic and anisotropic (2e) parts"))
register_target(Target("born_charges", "atom", cartesian="ij", unit="e", source="response", of="dipole",
                       short="Z*", description="Born effective charges Z*[i, a, b] = d(mu_a)/d(r_ib)"))


# ---------------------------------------------------------------- declared targets
_DECLARE_KEYS = {"level", "irreps", "cartesian", "basis", "matrix", "loss_metric", "overlap_cutoff",
                 "conserve_electrons", "unit",
                 "reduce", "extensive", "description"}

# metrics of declared targets in these units are shown scaled
_METRIC_UNITS = {"Ha": (1e6, "µHa"), "Hartree": (1e6, "µHa")}


def _basis_of(name: str, spec, base_dir=None):
    """A :class:`~clebsch.basis.GaussianBasis` from ``{file, key}``, ``{name, elements}`` or a basis."""
    from .basis import GaussianBasis

    if isinstance(spec, GaussianBasis):
        return spec
    if isinstance(spec, str):
        spec = {"file": spec}
    if not isinstance(spec, dict):
        raise TargetError(f"model.targets.{name}.basis: expected {{file: ..., key: ...}} or {{name: ..., "
                          f"elements: ...}}, got {spec!r}")
    try:
        if "file" in spec:
            from pathlib import Path

            path = Path(spec["file"])
            if base_dir is not None and not path.is_absolute():
                path = Path(base_dir) / path
            return GaussianBasis.from_file(path, spec.get("key"))
        if "elements" in spec:
            return GaussianBasis(spec["elements"], name=spec.get("name", name))
    except (ValueError, FileNotFoundError) as err:
        raise TargetError(f"model.targets.{name}.basis: {err}") from None
    raise TargetError(f"model.targets.{name}.basis: give 'file' (and 'key') or 'elements', got keys {sorted(spec)}")


def _number_or_none(name: str, key: str, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TargetError(f"model.targets.{name}.{key}: expected a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise TargetError(f"model.targets.{name}.{key}: expected a number, got {value!r}") from None


def declare(name: str, spec: dict, base_dir=None) -> Target:
    """A target from a config entry ``{level, irreps | cartesian | basis, matrix, unit, reduce}``.

    ``reduce`` (per-structure targets): ``sum`` (extensive, the default) or
    ``mean`` (intensive). ``basis``: ``{file: basis.json, key: aux}`` (a path
    relative to ``base_dir``) or ``{name, elements}`` inline. Errors name the
    target and the key.
    """
    if name in TARGETS:
        raise TargetError(f"model.targets.{name}: {name!r} is a built-in target; declare another name")
    if not isinstance(spec, dict):
        raise TargetError(f"model.targets.{name}: expected a mapping with level and irreps or cartesian, got {spec!r}")
    unknown = sorted(set(spec) - _DECLARE_KEYS)
    if unknown:
        raise TargetError(f"model.targets.{name}: unknown key(s) {unknown}; allowed: {sorted(_DECLARE_KEYS)}")
    reduce = spec.get("reduce", "sum")
    if reduce not in ("sum", "mean"):
        raise TargetError(f"model.targets.{name}.reduce: {reduce!r} is not allowed; allowed values: sum, mean")
    extensive = bool(spec.get("extensive", reduce == "sum"))
    basis = None if spec.get("basis") is None else _basis_of(name, spec["basis"], base_dir)
    if not isinstance(spec.get("matrix", False), bool):
        raise TargetError(f"model.targets.{name}.matrix: expected true or false, got {spec['matrix']!r}")
    if not isinstance(spec.get("conserve_electrons", False), bool):
        raise TargetError(f"model.targets.{name}.conserve_electrons: expected true or false, got "
                          f"{spec['conserve_electrons']!r}")
    unit = str(spec.get("unit", ""))
    factor, metric_unit = _METRIC_UNITS.get(unit, (1.0, None))
    overlap_cutoff = _number_or_none(name, "overlap_cutoff", spec.get("overlap_cutoff"))
    try:
        return Target(
            name=name,
            level=spec.get("level", "structure"),
            irreps=None if spec.get("irreps") is None else str(spec["irreps"]),
            cartesian=None if spec.get("cartesian") is None else str(spec["cartesian"]),
            basis=basis,
            matrix=bool(spec.get("matrix", False)),
            loss_metric=None if spec.get("loss_metric") is None else str(spec["loss_metric"]),
            overlap_cutoff=overlap_cutoff,
            conserve_electrons=bool(spec.get("conserve_electrons", False)),
            unit=unit,
            extensive=extensive,
            metric_factor=factor,
            metric_unit=metric_unit,
            description=str(spec.get("description", "")),
        )
    except TargetError as err:
        raise TargetError(f"model.targets.{name}: {str(err).split(': ', 1)[-1]}") from None


def resolve_targets(declarations: dict | None = None) -> dict[str, Target]:
    """The built-in targets plus those declared in a config (``model.targets``).

    >>> sorted(resolve_targets({"gap": {"irreps": "0e", "reduce": "mean"}}))[:3]
    ['atomic_energies', 'born_charges', 'charges']
    """
    out = dict(TARGETS)
    for name, spec in (declarations or {}).items():
        out[name] = spec if isinstance(spec, Target) else declare(name, spec)
    return out


def as_declarations(targets: dict[str, Target]) -> dict:
    """The plain config form of the non-built-in targets of ``targets``."""
    out = {}
    for name, t in targets.items():
        if name in TARGETS:
            continue
        entry = {"level": t.level}
        if t.basis is not None:
            entry["basis"] = t.basis.to_dict()
            if t.matrix:
                entry["matrix"] = True
            if t.loss_metric:
                entry["loss_metric"] = t.loss_metric
            if t.overlap_cutoff is not None:
                entry["overlap_cutoff"] = float(t.overlap_cutoff)
            if t.conserve_electrons:
                entry["conserve_electrons"] = True
        else:
            entry["cartesian" if t.cartesian else "irreps"] = t.cartesian or t.irreps
        if t.unit:
            entry["unit"] = t.unit
        if t.level == "structure":
            entry["reduce"] = "sum" if t.extensive else "mean"
        out[name] = entry
    return out


def replace(target: Target, **changes) -> Target:
    """A copy of ``target`` with ``changes``."""
    return dataclasses.replace(target, **changes)
