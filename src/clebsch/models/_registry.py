"""Build a model from a plain config dict, and rebuild it from ``model.config``."""

from __future__ import annotations

import inspect
from typing import Callable

from ._potential import Potential

REPRESENTATIONS: dict[str, type] = {}

# keys of a model config that belong to the Potential rather than the representation
POTENTIAL_KEYS = ("species", "cutoff", "atomic_energies", "scale", "outputs", "irreps_heads", "readout_hidden")


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a representation buildable as ``{"name": name, ...}``."""

    def wrap(cls: type) -> type:
        REPRESENTATIONS[name] = cls
        return cls

    return wrap


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
        raise ValueError(f"unknown model {name!r}; available: {sorted(REPRESENTATIONS)}")
    return REPRESENTATIONS[name]


def build_model(config: dict) -> Potential:
    """Build a :class:`Potential` from a config dict.

    The dict holds ``name`` (a model family), the keys of :class:`Potential`
    (``species``, ``cutoff``, ``atomic_energies``, ``scale``, ``outputs``,
    ``irreps_heads``, ``readout_hidden``) and the family's hyperparameters.
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
        raise ValueError(f"a model config needs 'name', one of {sorted(REPRESENTATIONS)}")
    name = config.pop("name")
    cls = _lookup(name)
    for key in ("species", "cutoff"):
        if key not in config:
            raise ValueError(f"model config for {name!r} is missing {key!r}")
    potential_kwargs = {k: config.pop(k) for k in POTENTIAL_KEYS if k in config}
    defaults = hyperparameters(name)
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for model {name!r}; allowed: {sorted(defaults)}")
    hyper = {**defaults, **config}
    representation = cls(num_species=len(potential_kwargs["species"]), cutoff=float(potential_kwargs["cutoff"]), **hyper)
    full = {"name": name, **potential_kwargs, **hyper}
    full["species"] = list(full["species"])
    if full.get("atomic_energies") is not None:
        full["atomic_energies"] = [float(e) for e in full["atomic_energies"]]
    return Potential(representation, config=full, **potential_kwargs)
