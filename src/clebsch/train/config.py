"""The training configuration: one pydantic schema that a YAML file maps onto one to one.

Every section is a class with defaults for every field that can have one, and
unknown keys are errors. :func:`load_config` reads a YAML file, applies
``--set key.path=value`` overrides and validates; a bad key or value raises a
:class:`ConfigError` whose message names the dotted key and what is allowed.

Examples
--------
>>> cfg = load_config(None, overrides=["data.train=frames.xyz", "model.name=schnet", "training.max_epochs=3"])
>>> cfg.training.max_epochs, cfg.model.name
(3, 'schnet')
>>> load_config(None, overrides=["loss.kind=l1"])
Traceback (most recent call last):
...
clebsch.train.config.ConfigError: loss.kind: 'l1' is not allowed; allowed values: 'mse', 'huber'
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "ConfigError",
    "TrainConfig",
    "load_config",
    "apply_overrides",
    "default_config_yaml",
    "parse_duration",
    "FAMILIES",
]



def __getattr__(name):
    if name == "FAMILIES":  # the registered model families, read when asked (families may register late)
        return tuple(_families())
    raise AttributeError(name)


def _families() -> list[str]:
    from ..models import families

    return families()


class ConfigError(ValueError):
    """A configuration problem, with a message that names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_duration(value) -> Optional[float]:
    """Seconds from a number or a string like ``"90s"``, ``"3m"``, ``"1.5h"``, ``"2d"``.

    Examples
    --------
    >>> parse_duration("3m"), parse_duration(20), parse_duration(None)
    (180.0, 20.0, None)
    """
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration; use seconds or a number with s, m, h or d (e.g. '3m')")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * unit


class ModelSection(BaseModel):
    """The model: a family and its hyperparameters (see ``clebsch.models.hyperparameters``), its outputs and targets."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = Field("nequip", description="model family (clebsch.models.families()): schnet, egnn, painn, nequip, "
                                            "segnn, mace, ...")
    cutoff: float = Field(5.0, gt=0, description="radial cutoff in Å")
    species: Union[Literal["auto"], list[str]] = Field(
        "auto", description="elements the model knows; auto: those in the training data"
    )
    atomic_energies: Union[Literal["auto", "zero", "fit"], list[float], dict[str, float]] = Field(
        "auto",
        description="reference energy per element (eV); auto: from data.isolated_atoms if given, "
        "else a least-squares fit on the training set (fine-tuning: the packaged model's values, new elements "
        "fitted); fit: a least-squares fit on the training set for every element; zero; or {H: -13.6, ...}",
    )
    scale: Union[Literal["auto"], float] = Field("auto", description="energy scale (eV/Å); auto: force RMS of the "
                                                                      "training set (fine-tuning: the packaged model's)")
    avg_num_neighbors: Union[Literal["auto"], float] = Field(
        "auto", description="message normalisation, for families that use it; auto: from the training set "
                            "(fine-tuning: the packaged model's)"
    )
    outputs: Union[Literal["auto"], list[str]] = Field(
        "auto", description="model outputs (clebsch.targets.TARGETS and model.targets); auto: energy, forces and "
                            "every target with a positive loss weight"
    )
    targets: dict[str, dict] = Field(
        default_factory=dict,
        description="further targets, e.g. {shielding: {level: atom, cartesian: ij, unit: ppm}, "
                    "gap: {level: structure, irreps: 0e, reduce: mean, unit: eV}}",
    )
    readout_hidden: int = Field(16, ge=0, description="width of the output heads' hidden layers")
    readout_channels: int = Field(4, ge=1, description="copies of each irrep in the feature products of the heads "
                                                       "of declared per-atom and per-edge targets (densities, "
                                                       "Hamiltonian blocks)")
    physics: dict[str, Any] = Field(
        default_factory=dict,
        description="physics terms added to the energy: {zbl: {r_inner: 0.4, r_outer: 0.9}} (radii in Å; {} for "
                    "radii from covalent radii), {coulomb: {sigma: 1.0, accuracy: 1.0e-8}} (electrostatics of the "
                    "dipole head's charges, Gaussian width sigma in Å; Ewald sum for periodic cells), {d3: {functional: "
                    "pbe}} (D3(BJ) dispersion; inference_only: true to add it only outside training)",
    )
    conditioning: list[Literal["charge", "spin"]] = Field(
        default_factory=list,
        description="per-structure inputs that condition the features: [charge] (total charge, e) and/or [spin] "
                    "(spin multiplicity 2S+1), read from the data file's 'charge' / 'spin' keys and atoms.info",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value):
        known = _families()
        if value not in known:
            raise ValueError(f"{value!r} is not allowed; allowed values: {', '.join(known)}")
        return value

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, value):
        from ..targets import declare

        out = {}
        for name, spec in value.items():
            target = declare(name, spec)
            # a basis given by file is kept inline, so that a packaged model holds it
            out[name] = {**spec, "basis": target.basis.to_dict()} if target.basis is not None else spec
        return out

    @field_validator("physics", mode="before")
    @classmethod
    def _check_physics(cls, value):
        from ..models._physics import check_physics

        return check_physics(value)

    @model_validator(mode="after")
    def _check_physics_radii(self):
        from ..models._physics import check_physics

        check_physics(self.physics, self.cutoff)
        return self

    @model_validator(mode="after")
    def _check_hyperparameters(self):
        if "name" not in self.model_fields_set and self.model_extra:
            return self  # checked once the family is known (TrainConfig: the default or finetune.init_from's)
        return self.check_hyperparameters()

    def check_hyperparameters(self):
        """Raise when a hyperparameter is not one of the family's, or has the wrong type or range."""
        extra = dict(self.model_extra or {})
        allowed = _family_hyperparameters(self.name)
        if allowed is None:
            return self
        unknown = sorted(set(extra) - set(allowed))
        if unknown:
            names = sorted(set(allowed) | set(ModelSection.model_fields))
            raise ValueError(
                f"unknown key(s) {unknown} for model {self.name!r}; allowed keys: {', '.join(names)}"
            )
        from ..models import REPRESENTATIONS
        from ..models._registry import _check_types

        _check_types(self.name, REPRESENTATIONS[self.name], extra)
        if self.outputs != "auto":
            known = self.known_targets()
            bad = [o for o in self.outputs if o not in known]
            if bad:
                raise ValueError(f"model.outputs: unknown target(s) {bad}; allowed: {', '.join(sorted(known))} "
                                 "(declare others under model.targets)")
        self._check_topological_outputs()
        return self

    def _check_topological_outputs(self) -> None:
        """A topological family (it sees bonds, not coordinates) has no forces, stress or Born charges."""
        from ..models._potential import check_topological_outputs
        from ..models._registry import is_topological

        if not is_topological(self.name) or self.outputs == "auto":  # auto: no forces for a topological model
            return
        check_topological_outputs(self.name, self.outputs, self.targets)

    def known_targets(self) -> dict:
        """The built-in targets and those declared in ``targets``, by name."""
        from ..targets import resolve_targets

        return resolve_targets(self.targets)

    def hyperparameters(self) -> dict:
        """The family hyperparameters given in the config (defaults excluded)."""
        return dict(self.model_extra or {})


def _family_hyperparameters(name: str) -> Optional[dict]:
    """The family's hyperparameters with defaults, or None when the family is not available."""
    try:
        from .. import models

        if name not in models.REPRESENTATIONS:
            return None
        return models.hyperparameters(name)
    except ImportError:
        return None


def _import_families() -> None:
    """Import the model families so that they register themselves."""
    from .. import models  # noqa: F401


class DataSection(_Section):
    """Where the structures come from and how they are batched."""

    train: Optional[Union[str, list[str]]] = Field(
        None, description="training structures: any ASE-readable file (e.g. extxyz; 'file@0:100' for a slice), or a "
                          "list of them, read in order")
    valid: Optional[Union[str, list[str]]] = Field(
        None, description="validation structures (a file or a list); if null, valid_fraction of train")
    test: Optional[Union[str, list[str]]] = Field(
        None, description="test structures (a file or a list); if null, test_fraction of train")
    valid_fraction: float = Field(0.05, ge=0, lt=1, description="fraction of train held out for validation")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="fraction of train held out for testing")
    max_train: Optional[int] = Field(None, gt=0, description="use at most this many training structures")
    isolated_atoms: Optional[str] = Field(None, description="file of isolated-atom energies (one atom per frame)")
    keys: dict[str, Optional[str]] = Field(
        default_factory=lambda: {"energy": "energy", "forces": "forces", "stress": "stress", "dipole": "dipole"},
        description="target name -> key in the file (info, arrays or calculator results); also 'weight', "
                    "a per-frame loss weight",
    )
    units: dict[str, str] = Field(
        default_factory=dict,
        description="the files' units per target and for 'positions', converted on reading to eV, Å, e "
                    "(e.g. {energy: kcal/mol, forces: kcal/mol/Å}, {dipole: D, gap: Ha}); unlisted: already so",
    )
    config_type_weights: dict[str, float] = Field(
        default_factory=dict, description="loss weight per config_type, e.g. {md_500K: 0.5}; others: 1"
    )
    skip_nonfinite: bool = Field(
        False, description="treat NaN / infinite reference values as missing instead of an error"
    )
    batch_size: int = Field(5, gt=0, description="structures per training batch (global, over all processes)")
    valid_batch_size: int = Field(10, gt=0, description="structures per validation / test batch")
    augment: Literal["none", "rotations"] = Field(
        "none", description="rotations: rotate every training structure (and its vector and tensor targets) by a "
                            "random rotation each time it is drawn, for models that are not equivariant"
    )

    @field_validator("units")
    @classmethod
    def _check_units(cls, value):
        from ..data.units import parse_unit

        for name, unit in value.items():
            try:
                parse_unit(unit)
            except ValueError as err:
                raise ValueError(f"units.{name}: {err}") from None
        return value

    @field_validator("train", "valid", "test")
    @classmethod
    def _check_files(cls, value):
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty list of files; give at least one file or null")
            if len(value) == 1:
                return value[0]
        return value

    @field_validator("config_type_weights")
    @classmethod
    def _check_ctw(cls, value):
        bad = {k: v for k, v in value.items() if not (isinstance(v, (int, float)) and v >= 0 and v == v)}
        if bad:
            raise ValueError(f"weights must be numbers >= 0, got {bad}")
        return value


_OLD_WEIGHT_KEYS = ("energy_weight", "forces_weight", "stress_weight", "dipole_weight")


def _fold_old_weights(data, defaults: dict):
    """Read the ``*_weight`` keys of older configs into ``weights``."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    weights = dict(data.get("weights") or {})
    for key in list(data):
        if key.endswith("_weight"):
            value = data.pop(key)
            weights.setdefault(key.removesuffix("_weight"), value)
    data["weights"] = {**defaults, **weights}
    return data


def _check_weights(value: dict) -> dict:
    bad = {k: v for k, v in value.items() if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0}
    if bad:
        raise ValueError(f"weights must be numbers >= 0, got {bad}")
    return {k: float(v) for k, v in value.items()}


class LossSection(_Section):
    """Weighted loss terms, one per target: energy per atom, forces, stress, dipole, any declared target."""

    kind: Literal["mse", "huber"] = Field("mse", description="mse or huber")
    huber_delta: float = Field(0.01, gt=0, description="Huber transition point (in the target's units)")
    weights: dict[str, float] = Field(
        default_factory=lambda: {"energy": 1.0, "forces": 100.0},
        description="loss weight per target (energy is per atom); targets not listed: energy 1, forces 100, others 0; "
                    "e.g. {energy: 1, forces: 100, dipole: 10}",
    )

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data):
        return _fold_old_weights(data, {"energy": 1.0, "forces": 100.0})

    @field_validator("weights")
    @classmethod
    def _weights(cls, value):
        return _check_weights(value)


class OptimizerSection(_Section):
    """Optimiser and gradient clipping."""

    name: Literal["adam", "adamw"] = Field("adam", description="adam or adamw")
    lr: float = Field(0.01, gt=0, description="learning rate")
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    amsgrad: bool = Field(True, description="use the AMSGrad variant")
    clip_grad_norm: Optional[float] = Field(100.0, gt=0, description="clip the gradient norm to this; null: no clipping")


class SchedulerSection(_Section):
    """Learning-rate schedule: linear warm-up, then plateau or cosine decay."""

    name: Literal["plateau", "cosine", "none"] = Field("plateau", description="plateau, cosine or none")
    warmup_epochs: int = Field(0, ge=0, description="epochs of linear warm-up from lr/10 (0: none)")
    factor: float = Field(0.8, gt=0, lt=1, description="plateau: multiply the lr by this")
    patience: int = Field(10, ge=0, description="plateau: epochs without improvement before reducing")
    min_lr: float = Field(1e-6, ge=0, description="lowest learning rate")


class SecondStageSection(_Section):
    """A second stage with other loss weights (as MACE's SWA stage); off unless enabled."""

    enabled: bool = Field(False, description="switch to the weights below late in training")
    start_fraction: float = Field(
        0.75, gt=0, lt=1, description="start after this fraction of max_epochs (or of max_time, whichever comes first)"
    )
    start_epoch: Optional[int] = Field(None, ge=0, description="start at this epoch instead of start_fraction")
    weights: dict[str, float] = Field(
        default_factory=lambda: {"energy": 1000.0, "forces": 100.0},
        description="loss weights in the second stage (targets not listed: as in loss.weights)",
    )
    lr: Optional[float] = Field(None, gt=0, description="learning rate for the second stage; null: keep")
    lr_factor: Optional[float] = Field(
        None, gt=0, le=1, description="instead of lr: multiply the learning rate in force at the switch by this "
                                      "(0.1: a tenth), so the second stage is slower whatever the family's rate")

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data):
        return _fold_old_weights(data, {"energy": 1000.0, "forces": 100.0})

    @model_validator(mode="after")
    def _one_rate(self):
        if self.lr is not None and self.lr_factor is not None:
            raise ValueError(f"second_stage: set lr ({self.lr}, an absolute rate) or lr_factor ({self.lr_factor}, "
                             "a fraction of the rate in force at the switch), not both")
        return self

    @field_validator("weights")
    @classmethod
    def _weights(cls, value):
        return _check_weights(value)


class TrainingSection(_Section):
    """How long to train, averaging, early stopping, checkpoints, logging."""

    max_epochs: int = Field(100, gt=0, description="stop after this many epochs")
    max_time: Optional[float] = Field(None, gt=0, description="stop after this wall time (seconds, or '30m', '2h')")
    ema_decay: Optional[float] = Field(0.99, gt=0, lt=1, description="EMA of the weights, used for validation and saving; null: off")
    early_stopping_patience: Optional[int] = Field(None, gt=0, description="stop after this many epochs without a better validation loss")
    valid_every: int = Field(1, gt=0, description="validate every N epochs")
    checkpoint_every: int = Field(1, gt=0, description="write a checkpoint every N epochs (and at each best validation)")
    progress: bool = Field(True, description="show a progress bar")
    tensorboard: bool = Field(False, description="also log to TensorBoard (needs the tensorboard package)")
    plots: bool = Field(True, description="write parity plots and learning curves as PNG")
    committee: int = Field(1, ge=1, description="train this many models (seeds seed, seed+1, ...) into run_dir/member_K "
                                                "and package them as a committee with uncertainties; 1: one model")
    compile: bool = Field(False, description="capture energy and forces as one graph and compile it with TorchInductor "
                                             "(one backward instead of a double backward; the first step compiles, "
                                             "1-5 min on a CPU, cached on disk); falls back to eager with one warning")

    @field_validator("max_time", mode="before")
    @classmethod
    def _duration(cls, value):
        return parse_duration(value)


class ReplaySection(_Section):
    """Replay of the packaged model's original data through a second energy head (multi-head fine-tuning)."""

    data: str = Field(..., description="the original training structures (any ASE-readable file, same data.keys)")
    fraction: float = Field(0.2, gt=0, lt=1, description="share of each step's structures drawn from data: a step "
                                                         "holds data.batch_size new structures and "
                                                         "round(batch_size * fraction / (1 - fraction)) replayed ones")
    head: str = Field("original", description="name of the energy head that the replayed structures train (it "
                                              "starts as the packaged model's); the new data trains the default head")
    weight: float = Field(1.0, gt=0, description="multiplies the replayed structures' loss")

    @field_validator("head")
    @classmethod
    def _check_head(cls, value):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) or value == "default":
            raise ValueError(f"{value!r} is not allowed; allowed values: a name of letters, digits and _ "
                             "(not starting with a digit) other than 'default', which is the new data's head")
        return value


class FinetuneSection(_Section):
    """Start from a packaged model (same family and cutoff): freeze parts of it, add elements, replay its data."""

    init_from: Optional[str] = Field(None, description="packaged model (model.pt) whose weights the run starts from "
                                                       "(also: clebsch train CONFIG --init-from PATH); null: a new "
                                                       "model")
    freeze: list[str] = Field(
        default_factory=list,
        description="parameters that keep their values: names, name prefixes or globs, e.g. "
                    "[representation.embedding, representation.layers.0, 'representation.*.radial*']",
    )
    replay: Optional[ReplaySection] = Field(
        None, description="{data: original.xyz, fraction: 0.2, head: original}: keep training a copy of the "
                          "packaged model's energy head on its original data, so that its task is not forgotten; "
                          "null: off",
    )

    @field_validator("freeze")
    @classmethod
    def _check_freeze(cls, value):
        bad = [p for p in value if not isinstance(p, str) or not p.strip()]
        if bad:
            raise ValueError(f"patterns must be non-empty parameter names, prefixes or globs, got {bad}")
        return value

    @model_validator(mode="after")
    def _check_needs_init(self):
        if self.replay is not None and self.init_from is None:
            raise ValueError("finetune.replay needs finetune.init_from: the replay head starts as the packaged "
                             "model's energy head (set finetune.init_from or --init-from PATH)")
        return self


class TrainConfig(_Section):
    """A whole training run; each section maps onto one block of the YAML file."""

    run_dir: str = Field("runs/run", description="directory for checkpoints, metrics, plots and the packaged model")
    seed: int = Field(0, description="random seed (weights, splits, data order)")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["float32", "float64"] = Field("float32", description="float32 or float64")
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    loss: LossSection = Field(default_factory=LossSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    second_stage: SecondStageSection = Field(default_factory=SecondStageSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)

    @field_validator("device")
    @classmethod
    def _device(cls, value):
        if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
            return value
        raise ValueError(f"{value!r} is not a device; allowed values: auto, cpu, cuda, cuda:N")

    @model_validator(mode="after")
    def _check_model_hyperparameters(self):
        if self.finetune.init_from is not None and "name" not in self.model.model_fields_set:
            return self  # the family is the packaged model's: checked when it is read (clebsch.train.finetune)
        if "name" not in self.model.model_fields_set and self.model.model_extra:
            try:
                self.model.check_hyperparameters()
            except ValueError as err:
                raise ValueError(str(err) if str(err).startswith("model.") else f"model: {err}") from None
        return self

    @model_validator(mode="after")
    def _family_training_defaults(self):
        """Settings a family needs (``clebsch.models.training_defaults``) where the config does not set them."""
        if self.model.name not in _families():
            return self
        from ..models._registry import training_defaults

        for key, value in training_defaults(self.model.name).items():
            section, field = key.split(".")
            part = getattr(self, section)
            if field not in part.model_fields_set:
                setattr(part, field, value)
        return self

    @model_validator(mode="after")
    def _check_target_names(self):
        known = set(self.model.known_targets())
        bad_keys = sorted(set(self.data.keys) - known - {"weight"})
        if bad_keys:
            raise ValueError(f"data.keys: unknown target(s) {bad_keys}; allowed: {', '.join(sorted(known | {'weight'}))} "
                             "(declare others under model.targets)")
        for where, weights in (("loss.weights", self.loss.weights), ("second_stage.weights", self.second_stage.weights)):
            bad = sorted(set(weights) - known)
            if bad:
                raise ValueError(f"{where}: unknown target(s) {bad}; allowed: {', '.join(sorted(known))}")
        return self

    @model_validator(mode="after")
    def _check_topological_weights(self):
        from ..models._potential import check_topological_outputs
        from ..models._registry import is_topological

        if self.model.name not in _families() or not is_topological(self.model.name):
            return self
        stages = [("loss.weights", self.loss.weights)]
        if self.second_stage.enabled:
            stages.append(("second_stage.weights", self.second_stage.weights))
        for where, weights in stages:
            for name, weight in weights.items():
                if weight > 0:
                    check_topological_outputs(self.model.name, [name], self.model.targets, key=f"{where}.{name}",
                                              fix=f"set {where}.{name}: 0")
        return self

    def stage_weights(self, stage: int) -> dict[str, float]:
        """The loss weights of a stage (the second stage's override the first's)."""
        weights = dict(self.loss.weights)
        if stage == 2:
            weights.update(self.second_stage.weights)
        return weights

    def to_dict(self) -> dict:
        """Plain dict (YAML-ready) of every value, defaults included."""
        return self.model_dump(mode="json")


# ---------------------------------------------------------------- loading


def _format_errors(error: ValidationError, root=TrainConfig) -> str:
    lines = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"] if not str(p).startswith(("function-", "union[", "literal["))]
        # pydantic appends the union member tried (e.g. 'list[float]') to the location; drop those
        loc = [p for p in loc if not re.fullmatch(r"(list|dict|str|float|int|bool)\[.*\]|float|int|str|bool", p)]
        key = ".".join(loc) or "<config>"
        kind = item["type"]
        if kind == "extra_forbidden":
            section = _section_at(root, loc[:-1])
            allowed = ", ".join(section.model_fields) if section is not None else "?"
            lines.append(f"{key}: unknown key; allowed keys: {allowed}")
        elif kind == "literal_error":
            expected = item.get("ctx", {}).get("expected", "")
            allowed = expected.replace(" or ", ", ")
            lines.append(f"{key}: {item['input']!r} is not allowed; allowed values: {allowed}")
        elif kind == "value_error":
            msg = str(item["msg"]).removeprefix("Value error, ")
            head = msg.split(":", 1)[0]
            if key == "<config>" or head.startswith(key + ".") or head == key:
                lines.append(msg)  # the message names its own dotted key
            else:
                lines.append(f"{key}: {msg}")
        else:
            lines.append(f"{key}: {item['msg']} (got {item['input']!r})")
    # a union gives one error per member; keep the first per key
    seen, unique = set(), []
    for line in lines:
        k = line.split(":", 1)[0]
        if k not in seen:
            seen.add(k)
            unique.append(line)
    return "\n".join(unique)


def _section_at(root, loc):
    cls = root
    for part in loc:
        field = cls.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        options = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not options:  # a section, or an optional one (Optional[Section])
            return None
        cls = options[0]
    return cls


def _set(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(tree: dict, overrides) -> dict:
    """Apply ``key.path=value`` strings to a nested dict (values parsed as YAML).

    Examples
    --------
    >>> apply_overrides({"model": {"name": "nequip"}}, ["model.num_layers=3", "training.max_time=3m"])
    {'model': {'name': 'nequip', 'num_layers': 3}, 'training': {'max_time': '3m'}}
    """
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"--set expects key.path=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key.path=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        _set(tree, key, value)
    return tree


def load_config(path=None, overrides=(), base: Optional[dict] = None) -> TrainConfig:
    """Read and validate a training config.

    Parameters
    ----------
    path : str or Path, optional
        A YAML file; None starts from the defaults (or ``base``).
    overrides : sequence of str
        ``key.path=value`` strings applied after reading (``--set``).
    base : dict, optional
        A config dict to start from instead of a file.

    Raises
    ------
    ConfigError
        The file cannot be read or parsed, or a key or value is invalid; the
        message names the file, the dotted key and the allowed keys or values.
    """
    tree: dict = dict(base or {})
    where = ""
    if path is not None:
        where = f"{path}: "
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, got {type(loaded).__name__}")
        tree.update(loaded)
    apply_overrides(tree, overrides)
    try:
        config = TrainConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(where + _format_errors(err).replace("\n", "\n" + where)) from None
    if path is not None:
        _check_relative_paths(config, Path(path))
    return config


def _check_relative_paths(config: TrainConfig, path: Path) -> None:
    """A relative data path is read from the working directory; one that exists only beside the config is named."""
    for key in ("train", "valid", "test"):
        value = getattr(config.data, key)
        for item in [value] if isinstance(value, str) else (value or []):
            given = Path(item)
            if given.is_absolute() or given.exists():
                continue
            beside = path.parent / given
            if beside.exists():
                raise ConfigError(
                    f"{path}: data.{key}: {item!r} does not exist in the working directory ({Path.cwd()}); relative "
                    f"paths are read from where clebsch runs, not from the config's folder, which holds "
                    f"{str(beside)!r}: run from {str(path.parent)!r} or give that path")


def save_config(config: TrainConfig, path) -> None:
    """Write a config as YAML (every value, defaults included)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


# ---------------------------------------------------------------- commented default


def _yaml_value(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def default_config_yaml(family: str = "nequip") -> str:
    """A commented YAML file holding every key with its default value.

    Examples
    --------
    >>> text = default_config_yaml()
    >>> load_config(None, base=yaml.safe_load(text)).model.name
    'nequip'
    """
    if family not in _families():
        raise ConfigError(f"unknown model family {family!r}; allowed values: {', '.join(_families())}")
    from ..models._registry import is_topological

    if is_topological(family):  # no forces: energy only, and no force loss term
        config = TrainConfig(model=ModelSection(name=family, outputs=["energy"]),
                             loss=LossSection(weights={"energy": 1.0, "forces": 0.0}),
                             second_stage=SecondStageSection(weights={"energy": 1000.0, "forces": 0.0}))
    else:
        config = TrainConfig(model=ModelSection(name=family))
    lines = [
        "# clebsch training configuration; every key below is optional and shows its default.",
        "# Override any key from the command line: clebsch train config.yaml --set model.num_layers=3",
    ]
    for name, field in TrainConfig.model_fields.items():
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            lines.append("")
            lines.append(f"# {type(value).__doc__.strip().splitlines()[0]}")
            lines.append(f"{name}:")
            for sub, subfield in type(value).model_fields.items():
                if subfield.description:
                    lines.append(f"  # {subfield.description}")
                lines.append(f"  {sub}: {_yaml_value(getattr(value, sub))}")
            if name == "model":
                hyper = _family_hyperparameters(family) or {}
                if hyper:
                    lines.append(f"  # hyperparameters of {family!r} (clebsch.models.hyperparameters({family!r}))")
                for key, default in hyper.items():
                    if key in type(value).model_fields:
                        continue
                    lines.append(f"  {key}: {_yaml_value(default)}")
        else:
            lines.append(f"# {field.description}")
            lines.append(f"{name}: {_yaml_value(value)}")
    return "\n".join(lines) + "\n"
