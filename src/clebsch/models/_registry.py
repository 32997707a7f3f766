"""The family registry: build a model from a plain config dict, and rebuild it from ``model.config``.

A model family is a *representation*: a ``torch.nn.Module`` class that follows
the :class:`Representation` protocol and registers itself with
``@register("name")``. Registering is all it takes: the config schema, the
default config, ``clebsch train`` and the public contract
(:func:`clebsch.testing.check_potential`, run on every registered family by
the test suite) pick it up.

A family that is not rotation-equivariant by design (a baseline that reads raw
Cartesian components, trained with rotation augmentation) says so with the class
attribute ``equivariant = False``; :func:`is_equivariant` reads it, and the
contract then checks translations and permutations but not rotations and
reflections.
"""

from __future__ import annotations

import inspect
import typing
from typing import Callable, Protocol

import torch

from ._potential import Potential

__all__ = ["REPRESENTATIONS", "Representation", "register", "families", "is_topological", "is_equivariant",
           "training_defaults", "hyperparameters", "build_model", "POTENTIAL_KEYS"]

REPRESENTATIONS: dict[str, type] = {}

# keys of a model config that belong to the Potential rather than the representation
POTENTIAL_KEYS = ("species", "cutoff", "atomic_energies", "scale", "outputs", "targets", "irreps_heads",
                  "readout_hidden", "readout_channels", "target_stats", "physics", "conditioning")


class Representation(Protocol):
    """What a model family is: per-atom features from species and edges.

    ``__init__(self, num_species, cutoff, **hyperparameters)``: every
    hyperparameter has a default (the defaults are the family's config).

    ``forward(species [N] long, edge_index [2, E] long, edge_vectors [E, 3]) -> [N, irreps_out.dim]``:
    ``species`` are indices into the model's elements, ``edge_index[0]`` the
    senders ``j`` and ``edge_index[1]`` the receivers ``i``, and
    ``edge_vectors`` point from ``i`` to ``j`` (cell shift included). Features
    must be equivariant (laid out by ``irreps_out``, ``mul_ir`` order), smooth
    in the edge vectors, zero-influence for an edge at the cutoff, and plain
    differentiable torch operations (forces are taken by autograd, twice in
    training). An atom without edges must get features that depend on its
    species only (the isolated-atom reference relies on it).

    ``irreps_out``: an :class:`~clebsch.o3.Irreps` attribute, with at least one ``0e``.

    A *topological* family (class attribute ``topological = True``) sees bonds, not
    coordinates: ``forward(species [N], bond_index [2, E], batch [N]) -> [N, irreps_out.dim]``,
    with the covalent bonds and the structure of each atom (see :class:`~clebsch.models.Potential`).

    A family that is *not rotation-equivariant* by design (class attribute
    ``equivariant = False``, e.g. :mod:`clebsch.models.cartesian`) keeps every
    other rule: translation and permutation invariance, smoothness, the cutoff
    and the isolated atom. Its features are still laid out by ``irreps_out``, but
    they do not transform as those irreps under rotations (see :func:`is_equivariant`).

    Optionally, a boolean attribute ``scalars_only``: the
    :class:`~clebsch.models.Potential` sets it to ``True`` when none of its heads
    reads more than the ``0e`` features (an energy-only model), and the family
    may then skip the work that only its non-scalar outputs need, returning
    zeros there (ET, ViSNet and Allegro skip their last layer's vector or
    tensor update, NequIP its last convolution's paths into ``l > 0`` and MACE
    its last symmetric contraction's ``l > 0`` outputs).
    """

    irreps_out: object

    def __call__(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        ...


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a representation buildable as ``{"name": name, ...}``."""

    def wrap(cls: type) -> type:
        if name in REPRESENTATIONS and REPRESENTATIONS[name] is not cls:
            raise ValueError(f"model family {name!r} is already registered by {REPRESENTATIONS[name].__module__}")
        REPRESENTATIONS[name] = cls
        return cls

    return wrap


def families(kind: str | None = None, equivariant: bool | None = None) -> list[str]:
    """The registered model families, sorted; ``kind`` ``"geometric"`` or ``"topological"`` keeps those only.

    Geometric families see edge vectors (forces, stress, the geometric contract); topological
    ones see which atoms are bonded (see :func:`is_topological`). ``equivariant`` ``True``
    (``False``) keeps the families that are (are not) rotation-equivariant (see :func:`is_equivariant`).

    >>> "nequip" in families(), "nequip" in families(kind="topological")
    (True, False)
    >>> families(equivariant=False)
    ['cartesian']
    """
    if kind not in (None, "geometric", "topological"):
        raise ValueError(f"kind must be None, 'geometric' or 'topological', got {kind!r}")
    if equivariant not in (None, True, False):
        raise ValueError(f"equivariant must be None, True or False, got {equivariant!r}")
    return sorted(n for n in REPRESENTATIONS
                  if (kind is None or is_topological(n) == (kind == "topological"))
                  and (equivariant is None or is_equivariant(n) == equivariant))


def is_topological(name: str) -> bool:
    """Whether a family sees only the bond graph (class attribute ``topological``), never coordinates.

    >>> is_topological("schnet")
    False
    """
    return bool(getattr(_lookup(name), "topological", False))


def is_equivariant(name: str) -> bool:
    """Whether a family's outputs transform under rotations and reflections as their targets declare.

    True unless the class says ``equivariant = False``: a baseline that reads raw Cartesian
    components of the edge vectors (:mod:`clebsch.models.cartesian`) learns rotations only from
    the data (``data.augment: rotations``). Such a family is still invariant under translations
    and permutations of the atoms, and :func:`clebsch.testing.check_potential` checks those.

    >>> is_equivariant("nequip"), is_equivariant("cartesian")
    (True, False)
    """
    return bool(getattr(_lookup(name), "equivariant", True))


def training_defaults(name: str) -> dict:
    """Training settings a family needs other than the trainer's defaults (class attribute ``training_defaults``,
    dotted config keys), applied where a config does not set them; e.g. a deep network that a first Adam step of
    the default learning rate breaks.

    >>> training_defaults("dimenet")
    {'optimizer.lr': 0.001}
    >>> training_defaults("nequip")
    {}
    """
    return dict(getattr(_lookup(name), "training_defaults", {}))


def hyperparameters(name: str) -> dict:
    """The hyperparameters of a model family with their defaults.

    Examples
    --------
    >>> "num_layers" in hyperparameters("schnet")
    True
    """
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    return {
        k: p.default
        for k, p in params.items()
        if k not in ("self", "num_species", "cutoff") and p.default is not inspect.Parameter.empty
    }


def _lookup(name: str) -> type:
    if name not in REPRESENTATIONS:
        raise ValueError(f"unknown model {name!r}; available: {families()}")
    return REPRESENTATIONS[name]


LIMITS = {"lmax": (0, 8), "hidden_lmax": (0, 8), "num_layers": (1, 32), "channels": (1, 4096),
          "correlation": (1, 4), "num_basis": (1, 256), "num_heads": (1, 64)}
"""Ranges of common hyperparameters (a family may widen or narrow them with a ``limits`` class attribute):
values outside them are mistakes or would need more memory than any machine has (the tensor products
of NequIP-like models grow as lmax^4 or faster)."""


def _check_types(name: str, cls: type, values: dict) -> None:
    """A hyperparameter whose value has another type than its default (or annotation) raises, naming it."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    defaults = hyperparameters(name)
    for key, value in values.items():
        default = defaults.get(key)
        hint = hints.get(key)
        expected = None
        if hint in (int, float, bool, str):
            expected = hint
        elif default is not None and type(default) in (int, float, bool, str):
            expected = type(default)
        if expected is None or value is None:
            continue
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            article = "an" if expected.__name__[0] in "aeiou" else "a"
            raise ValueError(f"model.{key}: {value!r} is not {article} {expected.__name__} "
                             f"(model {name!r}, default {default!r})")
    limits = {**LIMITS, **getattr(cls, "limits", {})}
    for key, value in values.items():
        if key in limits and key in defaults and isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi = limits[key]
            if not lo <= value <= hi:
                raise ValueError(f"model.{key}: {value} is outside the supported range {lo}..{hi} for model {name!r}")


def build_model(config: dict) -> Potential:
    """Build a :class:`Potential` from a config dict.

    The dict holds ``name`` (a model family), the keys of :class:`Potential`
    (``species``, ``cutoff``, ``atomic_energies``, ``scale``, ``outputs``,
    ``targets``, ``readout_hidden``, ``physics``) and the family's hyperparameters.
    Missing hyperparameters take their defaults, and the returned model's
    ``config`` holds every value, so ``build_model(model.config)`` rebuilds it.

    Examples
    --------
    >>> model = build_model({"name": "schnet", "species": ["H", "O"], "cutoff": 4.0})
    >>> build_model(model.config).config == model.config
    True
    """
    config = dict(config)
    if "name" not in config:
        raise ValueError(f"a model config needs 'name', one of {families()}")
    name = config.pop("name")
    cls = _lookup(name)
    for key in ("species", "cutoff"):
        if key not in config:
            raise ValueError(f"model config for {name!r} is missing {key!r}")
    potential_kwargs = {k: config.pop(k) for k in POTENTIAL_KEYS if k in config}
    for key in ("targets", "target_stats", "physics"):
        if not potential_kwargs.get(key):
            potential_kwargs.pop(key, None)
    if "physics" in potential_kwargs:  # validated and with its defaults, so the config says what runs
        from ._physics import check_physics

        potential_kwargs["physics"] = check_physics(potential_kwargs["physics"], float(potential_kwargs["cutoff"]))
        if not potential_kwargs["physics"]:
            potential_kwargs.pop("physics")
    defaults = hyperparameters(name)
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for model {name!r}; allowed: {sorted(defaults)}")
    _check_types(name, cls, config)
    hyper = {**defaults, **config}
    representation = cls(num_species=len(potential_kwargs["species"]), cutoff=float(potential_kwargs["cutoff"]), **hyper)
    full = {"name": name, **potential_kwargs, **hyper}
    full["species"] = list(full["species"])
    if full.get("atomic_energies") is not None:
        full["atomic_energies"] = [float(e) for e in full["atomic_energies"]]
    return Potential(representation, config=full, **potential_kwargs)
