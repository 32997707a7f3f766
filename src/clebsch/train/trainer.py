"""The training loop: from a :class:`~clebsch.train.config.TrainConfig` to a packaged model.

A run directory holds everything a run writes::

    config.yaml          the validated config (every value, defaults included)
    split.json           which frames of the training file went where
    metrics.csv          one row per epoch: losses, learning rate, validation MAE / RMSE (per config_type)
    checkpoints/last.pt  the full training state, every ``checkpoint_every`` epochs and at each best
    checkpoints/best.pt  the (EMA) weights with the best validation loss
    model.pt             the packaged model (see :mod:`clebsch.train.package`)
    test_metrics.json    the final report on the test set (printed as a table)
    replay_metrics.json  fine-tuning with replay: the replay head on the replayed structures
    plots/*.png          parity plots and learning curves

A run with ``finetune.init_from`` starts from a packaged model's weights, with
frozen parameters and a replay head as the ``finetune`` section says (see
:mod:`clebsch.train.finetune`).

Determinism: the data order of epoch ``e`` is a function of ``(seed, e)`` only,
and a checkpoint holds the model, optimiser, schedule, EMA, RNG states and
counters, so ``train(..., resume=True)`` after a kill replays the interrupted
epoch from its start and ends where an uninterrupted run would.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols

from .checkpoint import atomic_save, atomic_write_text, load_checkpoint, rng_state, set_rng_state
from .config import ConfigError, TrainConfig, _import_families, load_config
from .data import (RunData, batches, describe_files, epoch_order, isolated_atom_energies, load_run_data, species_of,
                   statistics)
from .._memory import keep_freed_memory
from ..models._physics import fitting
from .ema import ExponentialMovingAverage
from .evaluate import evaluate
from .losses import NonFiniteLossError, WeightedLoss
from .package import save_package
from .schedule import LRSchedule

__all__ = ["Trainer", "train", "resolve_model_config", "TrainResult"]

_Z = {s: z for z, s in enumerate(chemical_symbols)}


def _adam(cls, params, **options):
    """``cls(params, **options)`` with PyTorch's fused implementation where it has one for these tensors, else its
    multi-tensor one: the same update as the default per-tensor loop, in one call instead of several small
    operations per weight tensor (MACE's 32 tensors: 0.2 against 1.4 ms a step on one CPU thread)."""
    for implementation in ({"fused": True}, {"foreach": True}):
        try:
            return cls(params, **options, **implementation)
        except (RuntimeError, TypeError, ValueError):
            continue
    return cls(params, **options)


class DeadModelError(RuntimeError):
    """The model's forces stayed exactly zero for a whole epoch of force training."""


class TrainResult(dict):
    """What :func:`train` returns: ``run_dir``, ``model_path``, ``test_metrics``, ``epochs``, ``stopped``."""


# ------------------------------------------------------------------ model config


def resolve_model_config(config: TrainConfig, data: RunData) -> dict:
    """The model config with every "auto" entry filled from the training data.

    ``species`` from the elements present, ``atomic_energies`` from the
    isolated-atoms file or a least-squares fit, ``scale`` from the force RMS,
    ``avg_num_neighbors`` (for families that take it) from the mean neighbour
    count, ``outputs`` from the loss weights; ``physics`` is passed on as it is.
    """
    from ..models import hyperparameters

    _import_families()
    m = config.model
    species = species_of(data.train) if m.species == "auto" else list(m.species)
    for s in species:
        if s not in _Z or s == "X":
            raise ConfigError(f"model.species: {s!r} is not an element symbol")
    zs = [_Z[s] for s in species]
    present = {int(z) for g in data.train for z in g.numbers.unique().tolist()}
    unknown = sorted(present - set(zs))
    if unknown:
        raise ConfigError(
            f"model.species {species} lacks {[chemical_symbols[z] for z in unknown]}, present in the training data"
        )
    for part, graphs in (("validation", data.valid), ("test", data.test)):
        extra = sorted({int(z) for g in graphs for z in g.numbers.unique().tolist()} - set(zs))
        if extra:
            where = getattr(config.data, "valid" if part == "validation" else "test") or config.data.train
            raise ConfigError(
                f"the {part} set ({where}) holds {[chemical_symbols[z] for z in extra]}, which the training set does "
                f"not: a model cannot learn an element it never sees in training; add such structures to "
                f"data.train or remove them from the {part} set"
            )
    parts = [(data.train, config.data.train, data.split.get("train"), True)]
    for part, graphs in (("valid", data.valid), ("test", data.test)):
        own = getattr(config.data, part)
        parts.append((graphs, own or config.data.train, None if own else data.split.get(part), False))
    if m.conditioning:  # every structure has what the model is conditioned on; errors name the file and frame
        from ..models._potential import check_conditioning_data

        for graphs, path, frames, warn in parts:
            try:
                check_conditioning_data(graphs, m.conditioning, where=describe_files(path), frames=frames, warn=warn)
            except ValueError as err:
                raise ConfigError(str(err)) from None
    conserved = [(n, t) for n, t in m.known_targets().items() if t.conserve_electrons]
    if conserved:  # a density made to hold every structure's electrons must be trained on densities that do
        from .electronic import check_electron_counts

        for name, t in conserved:
            for graphs, path, frames, _ in parts:
                try:
                    check_electron_counts(graphs, t, where=describe_files(path), frames=frames,
                                          key=config.data.keys.get(name) or name)
                except ValueError as err:
                    raise ConfigError(str(err)) from None
    whole = [(n, t) for n, t in m.known_targets().items() if t.loss_metric in ("orthonormal", "density_matrix")]
    if whole:  # whole-matrix losses: molecules (PySCF's overlap), closed shells for the density matrix
        from .electronic import check_whole_matrix_data

        for name, t in whole:
            for graphs, path, frames, _ in parts:
                try:
                    check_whole_matrix_data(graphs, t, where=describe_files(path), frames=frames)
                except ValueError as err:
                    raise ConfigError(str(err)) from None
    if m.readout_channels != 4 and not m.targets:
        warnings.warn(f"model.readout_channels: {m.readout_channels} widens the heads of declared targets "
                      f"(model.targets) only; this model declares none, so it changes nothing", stacklevel=2)
    stats = statistics(data.train, zs)
    if m.atomic_energies == "auto":
        if config.data.isolated_atoms:
            iso = isolated_atom_energies(config.data.isolated_atoms, config.data.keys, config.data.units)
            missing = [chemical_symbols[z] for z in zs if z not in iso]
            if missing:
                raise ConfigError(f"data.isolated_atoms ({config.data.isolated_atoms}) has no energy for {missing}")
            e0 = [iso[z] for z in zs]
        else:
            e0 = stats["atomic_energies"]
    elif m.atomic_energies == "zero":
        e0 = [0.0] * len(zs)
    elif m.atomic_energies == "fit":
        e0 = stats["atomic_energies"]
    elif isinstance(m.atomic_energies, dict):
        missing = [s for s in species if s not in m.atomic_energies]
        if missing:
            raise ConfigError(f"model.atomic_energies has no value for {missing}")
        e0 = [float(m.atomic_energies[s]) for s in species]
    else:
        if len(m.atomic_energies) != len(species):
            raise ConfigError(f"model.atomic_energies has {len(m.atomic_energies)} values for species {species}")
        e0 = [float(e) for e in m.atomic_energies]
    scale = stats["force_rms"] if m.scale == "auto" else float(m.scale)
    if m.outputs == "auto":
        from ..models._registry import is_topological

        outputs = ["energy"] if is_topological(m.name) else ["energy", "forces"]
        for name in trained_targets(config):
            if name not in outputs:
                outputs.append(name)
    else:
        outputs = list(m.outputs)
    model_config = {
        "name": m.name,
        "species": species,
        "cutoff": float(m.cutoff),
        "atomic_energies": [float(e) for e in e0],
        "scale": float(scale),
        "outputs": outputs,
        "readout_hidden": int(m.readout_hidden),
        "readout_channels": int(m.readout_channels),
        **({"targets": dict(m.targets)} if m.targets else {}),
        **({"physics": dict(m.physics)} if m.physics else {}),
        **({"conditioning": list(m.conditioning)} if m.conditioning else {}),
        **m.hyperparameters(),
    }
    declared = m.known_targets()
    head_stats = {}
    for name in outputs:
        t = declared.get(name)
        if name in m.targets and t is not None and t.source == "head":
            from ..models import target_statistics

            found = target_statistics(t, data.train, zs)
            if found:
                head_stats[name] = found
    if head_stats:
        model_config["target_stats"] = head_stats
    family = hyperparameters(m.name)
    if "avg_num_neighbors" in family:
        ann = stats["avg_num_neighbors"] if m.avg_num_neighbors == "auto" else float(m.avg_num_neighbors)
        model_config["avg_num_neighbors"] = float(max(ann, 1.0))
    return model_config


def trained_targets(config: TrainConfig) -> list[str]:
    """Targets with a positive loss weight in either stage, in the order the weights list them."""
    stages = [config.stage_weights(1)] + ([config.stage_weights(2)] if config.second_stage.enabled else [])
    names = []
    for weights in stages:
        for name, w in weights.items():
            if w > 0 and name not in names:
                names.append(name)
    return names


def data_keys(config: TrainConfig) -> tuple[dict, tuple]:
    """The key map of the data section completed with every trained target, and the targets every frame must hold."""
    keys = dict(config.data.keys)
    trained = trained_targets(config)
    for name in trained:
        keys.setdefault(name, name)
    if "weight" not in keys:
        keys["weight"] = "weight"
    required = tuple(name for name in trained if keys.get(name))
    return keys, required


# ------------------------------------------------------------------ distributed


def _dist_info():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return _dist_info()


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for but CUDA is not available; allowed values here: auto, cpu")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return torch.device(name)


# ------------------------------------------------------------------ the trainer


class Trainer:
    """One training run; see the module docstring for what it writes.

    Parameters
    ----------
    config : TrainConfig
    resume : bool
        Continue from ``run_dir/checkpoints/last.pt``.
    on_step : callable, optional
        ``on_step(epoch, step)`` after every optimiser step (tests use it to
        simulate a crash).
    log : callable
        Where messages go (default: print to stderr).
    """

    def __init__(self, config: TrainConfig, resume: bool = False, on_step=None, log=None):
        self.config = config
        self.resume = resume
        self.on_step = on_step
        self.run_dir = Path(config.run_dir)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.dtype = getattr(torch, config.dtype)
        self.device = _device(config.device)
        self.rank, self.world = init_distributed(self.device)
        self.is_main = self.rank == 0
        self._force_check = None  # see _check_forces
        keep_freed_memory()  # large steps reuse the memory the last one freed (see clebsch._memory)

    # -------------------------------------------------------------- setup
    def _prepare_run_dir(self) -> None:
        last = self.run_dir / "checkpoints" / "last.pt"
        if not self.resume and last.exists():
            raise ConfigError(
                f"run_dir {self.run_dir} already holds a run; continue it with `clebsch train --resume {self.run_dir}` "
                "or choose another run_dir"
            )
        if self.resume and not last.exists():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {last}")
        if self.is_main:
            try:
                (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"cannot create run_dir {self.run_dir}: {err.strerror or err}") from None
            self._lock()
            import yaml

            atomic_write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False), self.run_dir / "config.yaml")

    def _lock(self) -> None:
        """Hold ``run_dir/.lock`` for the whole run, so that two trainings never share a run directory."""
        import fcntl

        path = self.run_dir / ".lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(f"cannot write into run_dir {self.run_dir}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise ConfigError(
                f"run_dir {self.run_dir} is in use by another training{f' (pid {other})' if other else ''}; "
                "wait for it to end or choose another run_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            os.close(fd)
            self._lock_fd = None

    def setup(self) -> None:
        self.base = None  # the packaged model a fine-tuning run starts from (read for a new run only)
        if self.config.finetune.init_from is not None and not self.resume:
            from .finetune import merge_config, read_base

            self.base = read_base(self.config.finetune.init_from)
            self.config = merge_config(self.config, self.base)
        cfg = self.config
        self._prepare_run_dir()
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        keys, required = data_keys(cfg)
        if cfg.data.units:
            from ..data.units import unit_factors
            from ..targets import resolve_targets

            try:
                unit_factors(cfg.data.units, resolve_targets(cfg.model.targets))
            except ValueError as err:
                raise ConfigError(str(err)) from None
        self.data = load_run_data(cfg.data, cfg.model.cutoff, self.dtype, cfg.seed,
                                  run_dir=self.run_dir if self.is_main else None, required=required, keys=keys,
                                  targets=cfg.model.targets, allow_nonfinite=cfg.data.skip_nonfinite)
        self.checkpoint = load_checkpoint(self.run_dir / "checkpoints" / "last.pt") if self.resume else None
        if self.checkpoint is not None:
            self.model_config = self.checkpoint["model_config"]
        elif self.base is not None:
            from .finetune import finetune_model_config

            self.model_config = finetune_model_config(cfg, self.data, self.base)
        else:
            self.model_config = resolve_model_config(cfg, self.data)
        from ..models import build_model

        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            torch.manual_seed(cfg.seed)
            self.model = build_model(self.model_config)
            self._setup_finetune()
            self.model = self.model.to(self.device)
        finally:
            torch.set_default_dtype(previous)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if cfg.optimizer.name == "adamw" else torch.optim.Adam
        self.optimizer = _adam(opt_cls, self.trainable, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay,
                               amsgrad=cfg.optimizer.amsgrad)
        s = cfg.scheduler
        self.schedule = LRSchedule(self.optimizer, cfg.optimizer.lr, s.name, s.warmup_epochs, s.factor, s.patience,
                                   s.min_lr, cfg.training.max_epochs)
        self.ema = ExponentialMovingAverage(self.model, cfg.training.ema_decay) if cfg.training.ema_decay else None
        if self.ema is not None:
            for name in self.frozen:  # frozen weights are not averaged: they keep their values bit for bit
                self.ema.shadow.pop(name, None)
        self.stage = 1
        self.epoch = 0
        self.step = 0
        self.best = math.inf
        self.bad_epochs = 0
        self.elapsed_before = 0.0
        self.csv_header = None
        if self.checkpoint is not None:
            self._restore(self.checkpoint)
        self.loss_fn = self._loss_for_stage(self.stage)
        self.replay_loss_fn = self._replay_loss_for_stage(self.stage)
        self.compiled = None
        if cfg.training.compile:
            from .compiled import CompiledForces, compile_unsupported

            why = compile_unsupported(self.model, self.loss_fn.weights, replay=self.replay_loss_fn is not None)
            if why is not None:
                warnings.warn(f"training.compile: {why}; training eagerly instead", RuntimeWarning, stacklevel=2)
            else:
                self.compiled = CompiledForces(self.model)
        if self.csv_header is None:  # a new run: the columns are fixed now, whatever the first row holds
            self.csv_header = self._csv_columns()
            if self.is_main:
                atomic_write_text(",".join(self.csv_header) + "\n", self.csv_path)

    def _setup_finetune(self) -> None:
        """Fine-tuning: the packaged model's weights, the replay head, frozen parameters and the replayed data."""
        cfg, ft = self.config, self.config.finetune
        self.frozen: list[str] = []
        self.replay_data: list = []
        if self.base is not None:
            from .finetune import load_base_weights

            load_base_weights(self.model, self.base, log=self.log if self.is_main else None)
        if ft.replay is not None:
            from .data import read_file
            from .finetune import ENERGY_TARGETS, add_energy_head, packaged_energies

            if self.base is not None:  # a new run: the packaged model's own head, references and scale
                n_old = len(self.base["species"])
                e0 = self.model.atomic_energies.detach().clone()
                e0[:n_old] = torch.as_tensor(packaged_energies(self.base), dtype=e0.dtype)
                add_energy_head(self.model, ft.replay.head, e0, float(self.base["config"].get("scale", 1.0)))
            else:  # a resumed run: the checkpoint fills it
                add_energy_head(self.model, ft.replay.head)
            keys, required = data_keys(cfg)
            required = tuple(r for r in required if r in ENERGY_TARGETS)
            self.replay_data = read_file(ft.replay.data, cfg.model.cutoff, keys, self.dtype, required,
                                         targets=cfg.model.targets, allow_nonfinite=cfg.data.skip_nonfinite)
            if not self.replay_data:
                raise ConfigError(f"finetune.replay.data ({ft.replay.data}) holds no structures")
            known = set(self.model.species)
            extra = sorted({int(z) for g in self.replay_data for z in g.numbers.unique().tolist()} - known)
            if extra:
                raise ConfigError(
                    f"finetune.replay.data ({ft.replay.data}) holds {[chemical_symbols[z] for z in extra]}, which "
                    f"neither the packaged model nor data.train has; the model knows "
                    f"{[chemical_symbols[z] for z in self.model.species]}")
        if ft.freeze:
            from .finetune import freeze

            self.frozen = freeze(self.model, ft.freeze)
        if self.is_main and (ft.freeze or ft.init_from):
            n_frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
            n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            self.log(f"fine-tuning: {n_train} weights trained, {n_frozen} frozen"
                     + (f" ({len(self.frozen)} tensors matching {ft.freeze})" if ft.freeze else "")
                     + (f"; replaying {len(self.replay_data)} structures of {ft.replay.data} through energy head "
                        f"{ft.replay.head!r}" if ft.replay is not None else ""))

    def _replay_loss_for_stage(self, stage: int) -> WeightedLoss | None:
        """The loss of the replayed structures: the stage's weights of the energy and its derivatives."""
        if self.config.finetune.replay is None:
            return None
        from .finetune import ENERGY_TARGETS

        weights = {k: v for k, v in self.config.stage_weights(stage).items()
                   if k in ENERGY_TARGETS and k in self.model.outputs and v > 0}
        if not weights:
            raise ConfigError(f"finetune.replay trains an energy head, but the loss weights of stage {stage} give "
                              f"none of {', '.join(ENERGY_TARGETS)} a positive weight; set loss.weights.energy")
        return WeightedLoss(weights, self.config.loss.kind, self.config.loss.huber_delta, targets=self.model.targets,
                            config_type_weights=self.config.data.config_type_weights)

    def _loss_for_stage(self, stage: int) -> WeightedLoss:
        cfg = self.config
        weights = {k: v for k, v in cfg.stage_weights(stage).items() if k in self.model.outputs or v == 0}
        missing = sorted(k for k, v in cfg.stage_weights(stage).items() if v > 0 and k not in self.model.outputs)
        if missing:
            raise ConfigError(f"loss weights for {missing}, which model.outputs {list(self.model.outputs)} lacks")
        return WeightedLoss(weights, cfg.loss.kind, cfg.loss.huber_delta, targets=self.model.targets,
                            config_type_weights=cfg.data.config_type_weights)

    # -------------------------------------------------------------- checkpoints
    def _state(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "stage": self.stage,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "elapsed": self.elapsed(),
            "model_config": self.model_config,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": rng_state(),
            "config": self.config.to_dict(),
        }

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        self.epoch, self.step, self.stage = ckpt["epoch"], ckpt["step"], ckpt["stage"]
        self.best, self.bad_epochs, self.elapsed_before = ckpt["best"], ckpt["bad_epochs"], ckpt["elapsed"]
        set_rng_state(ckpt["rng"])
        self._truncate_csv(self.epoch)
        self.log(f"resumed {self.run_dir} at epoch {self.epoch} (stage {self.stage})")

    def save_checkpoint(self) -> None:
        if self.is_main:
            atomic_save(self._state(), self.run_dir / "checkpoints" / "last.pt")

    def _averaged_state(self) -> dict:
        if self.ema is None:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        with self.ema.average_parameters(self.model):
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def save_best(self) -> None:
        if self.is_main:
            atomic_save({"epoch": self.epoch, "model_config": self.model_config, "model": self._averaged_state()},
                        self.run_dir / "checkpoints" / "best.pt")

    # -------------------------------------------------------------- metrics CSV
    @property
    def csv_path(self) -> Path:
        return self.run_dir / "metrics.csv"

    def _truncate_csv(self, epoch: int) -> None:
        """Drop rows of epochs after ``epoch`` completed ones (they are recomputed after a resume)."""
        if not self.is_main or not self.csv_path.exists():
            return
        with open(self.csv_path) as fh:
            rows = list(csv.reader(fh))
        if not rows:
            return
        self.csv_header = rows[0]
        keep = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= epoch]
        text = "".join(",".join(r) + "\n" for r in keep)
        atomic_write_text(text, self.csv_path)

    def _csv_columns(self) -> list[str]:
        """Every column a row may fill: losses, then MAE / RMSE of each validated quantity, overall and per config_type."""
        from .metrics import quantities

        graphs = self.data.valid or self.data.train
        present = {n for g in graphs for n in g.targets}
        names = [n for n in self.model.outputs if n in present and self.model.targets[n].trainable]
        qs = [q for q in quantities(self.model.targets) if q in names or q.removesuffix("_per_atom") in names
              and q.endswith("_per_atom")]
        groups = ["all"] + sorted({c for g in graphs for c in g.config_type})
        cols = ["epoch", "stage", "time_s", "lr", "train_loss", "valid_loss"]
        for group in groups:
            prefix = "" if group == "all" else f"{group}:"
            cols += [f"{prefix}{q}_{stat}" for q in qs for stat in ("mae", "rmse")]
        return cols

    def _write_csv(self, row: dict) -> None:
        if not self.is_main:
            return
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.csv_header, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in self.csv_header})
            fh.flush()

    # -------------------------------------------------------------- loop
    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.t0)

    def _out_of_time(self) -> bool:
        max_time = self.config.training.max_time
        if max_time is None:
            return False
        late = self.elapsed() >= max_time
        if self.world > 1:  # every rank must stop at the same step
            flag = torch.tensor([1.0 if late else 0.0])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            late = bool(flag.item() > 0)
        return late

    def _maybe_switch_stage(self) -> None:
        st = self.config.second_stage
        if not st.enabled or self.stage == 2:
            return
        tr = self.config.training
        if st.start_epoch is not None:
            due = self.epoch >= st.start_epoch
        else:
            due = self.epoch >= st.start_fraction * tr.max_epochs
            if tr.max_time is not None:
                due = due or self.elapsed() >= st.start_fraction * tr.max_time
        if due:
            self.stage = 2
            self.loss_fn = self._loss_for_stage(2)
            self.replay_loss_fn = self._replay_loss_for_stage(2)
            self.schedule.restart(st.lr, factor=st.lr_factor)
            self.best = math.inf
            self.bad_epochs = 0
            rate = "" if st.lr is None and st.lr_factor is None else f", peak learning rate {self.schedule.base_lr:.3g}"
            self.log(f"epoch {self.epoch}: second stage, loss weights {self.loss_fn.weights}{rate}")

    def _reduce_(self, tensors) -> None:
        if self.world > 1:
            for t in tensors:
                torch.distributed.all_reduce(t)

    def train_step(self, graph, replay=None) -> tuple[float, int]:
        """One optimiser step on a (rank's share of a) batch; returns (loss value, structures).

        ``replay``: this rank's share of the step's replayed structures (fine-tuning with
        ``finetune.replay``), which go through the replay head and add ``replay.weight`` times their loss.
        """
        from ..data.augment import augment_batch
        from .finetune import forward_with_head

        self.model.train()
        self.optimizer.zero_grad(set_to_none=False)
        parts = [(graph, None, self.loss_fn, 1.0)]
        if self.replay_loss_fn is not None:
            rp = self.config.finetune.replay
            parts.append((replay, rp.head, self.replay_loss_fn, rp.weight))
        n_graphs = 0
        evaluated, count_vecs = [], []
        for g, head, loss_fn, weight in parts:
            names = list(loss_fn.weights)
            if g is not None:
                g = g.to(self.device, self.dtype)
                if self.config.data.augment == "rotations":  # a random rotation per structure, targets turned too
                    g = augment_batch(g, self.model.targets)
                if head is None:
                    n_graphs = g.num_graphs
                out = self._compiled_forward(g) if head is None else None
                if out is None:
                    out = forward_with_head(self.model, g, head)
                counts = loss_fn.counts(out, g)
                if self._force_check is not None and head is None and "forces" in out and "forces" in g.targets:
                    self._check_forces(out["forces"], g.targets["forces"])
            else:
                out, counts = None, {}
            evaluated.append((g, out, loss_fn, weight, names))
            count_vecs.append(torch.tensor([float(counts.get(n, 0.0)) for n in names], dtype=torch.float64))
        count_vec = torch.cat(count_vecs)
        self._reduce_([count_vec])
        total, offset = None, 0
        for g, out, loss_fn, weight, names in evaluated:
            global_counts = {n: count_vec[offset + i].to(self.dtype) for i, n in enumerate(names)}
            offset += len(names)
            if out is None:
                continue
            loss, _ = loss_fn(out, g, counts=global_counts)
            total = weight * loss if total is None else total + weight * loss
        if total is not None:
            total.backward()
            value = float(total.detach())
        else:
            value = 0.0
        if self.world > 1:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.trainable]
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            offset = 0
            for p in self.trainable:
                n = p.numel()
                p.grad = flat[offset:offset + n].view_as(p).clone()
                offset += n
            v = torch.tensor([value], dtype=torch.float64)
            torch.distributed.all_reduce(v)
            value = float(v)
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"the training loss became {value} at epoch {self.epoch + 1}, step {self.step + 1}")
        if self.config.optimizer.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.config.optimizer.clip_grad_norm)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return value, n_graphs

    def _check_forces(self, predicted: torch.Tensor, reference: torch.Tensor) -> None:
        """Count a step whose reference forces are not all zero, and note when a predicted force is not exactly
        zero; after that the epoch's check is done (no more synchronisation)."""
        if self._force_check[1]:
            return
        reference = torch.nan_to_num(reference.detach())
        if not bool(reference.abs().max() > 1e-6):
            return
        if self.step == 0 and self.is_main:  # the untrained model: a warning where its forces are far too large
            ratio = float(predicted.detach().square().mean().sqrt() / reference.square().mean().sqrt())
            if not ratio < 100.0:
                self.log(f"warning: the untrained {self.model_config['name']} predicts forces {ratio:.3g} times "
                         f"larger (RMS) than the data's on the first batch; its features grow through the layers "
                         f"(fewer layers, or a smaller optimizer.lr, may be needed): training may diverge.")
        self._force_check[0] += 1
        self._force_check[1] = int(bool(predicted.detach().abs().max() > 0))

    def _compiled_forward(self, graph) -> dict | None:
        """Energy, forces (and stress) of ``graph`` from the compiled graph; None when training eagerly."""
        compiled = self.compiled
        if compiled is None or compiled.failed is not None:
            return None
        weights = self.loss_fn.weights
        stress = ("stress" in weights or "virial" in weights) and bool(graph.pbc.any())
        first = stress not in compiled.compile_seconds
        out = compiled(graph, compute_stress=stress)
        if out is not None and first and stress in compiled.compile_seconds:
            self.log(f"compiled the training step in {compiled.compile_seconds[stress]:.0f} s "
                     f"(tracing {compiled.trace_seconds:.0f} s)")
        return out

    def _replay_batches(self, steps: int):
        """This rank's share of each step's replayed structures in the current epoch (None without replay)."""
        rp = self.config.finetune.replay
        if rp is None:
            while True:
                yield None
        from ..graph import batch as batch_graphs
        from .finetune import replay_order, replay_per_step

        k = replay_per_step(self.config.data.batch_size, rp.fraction)
        order = replay_order(len(self.replay_data), self.config.seed, self.epoch, steps * k)
        for step in range(steps):
            share = np.array_split(order[step * k:(step + 1) * k], self.world)[self.rank]
            yield batch_graphs([self.replay_data[int(i)] for i in share]) if len(share) else None

    def validate(self):
        graphs = self.data.valid or self.data.train
        model = self.model
        if self.ema is not None:
            with self.ema.average_parameters(model):
                return evaluate(model, graphs, self.config.data.valid_batch_size, self.loss_fn,
                                device=self.device, dtype=self.dtype)
        return evaluate(model, graphs, self.config.data.valid_batch_size, self.loss_fn,
                        device=self.device, dtype=self.dtype)

    def fit(self) -> TrainResult:
        """Train until max_epochs, max_time or early stopping, then test, package and plot."""
        try:
            self.setup()
            return self._fit()
        finally:
            self._unlock()

    def _fit(self) -> TrainResult:
        cfg, tr = self.config, self.config.training
        self.t0 = time.monotonic()
        n_train = len(self.data.train)
        steps_per_epoch = math.ceil(n_train / cfg.data.batch_size)
        valid = (f"validating on {len(self.data.valid)}" if self.data.valid else
                 "validating on the training structures (no validation set: the schedule, early stopping and the "
                 "best model follow the training error; set data.valid or data.valid_fraction)")
        self.log(
            f"training {self.model_config['name']} ({sum(p.numel() for p in self.model.parameters())} weights) on "
            f"{n_train} structures, {valid}, testing on {len(self.data.test)}; run directory {self.run_dir}"
        )
        writer = self._tensorboard()
        bar = None
        lines = tr.progress and self.is_main and not sys.stderr.isatty()  # a log file: one line per epoch
        if tr.progress and self.is_main and not lines:
            from tqdm.auto import tqdm

            bar = tqdm(total=tr.max_epochs * steps_per_epoch, initial=self.epoch * steps_per_epoch, unit="step",
                       dynamic_ncols=True, file=sys.stderr, mininterval=0.5)
        stopped = "max_epochs"
        try:
            with fitting(self.model):  # physics terms marked inference_only are left out while fitting
                stopped = self._epochs(bar, writer, lines)
        except NonFiniteLossError as err:
            stopped = "nonfinite_loss"
            self.log(f"stopping: {err}. The step was not taken. Lower optimizer.lr (now {cfg.optimizer.lr:g}), "
                     "set optimizer.clip_grad_norm, or check the data; the model is packaged from the last good "
                     "checkpoint.")
        except DeadModelError as err:
            stopped = "dead_model"
            warmup = "" if cfg.scheduler.warmup_epochs else " or set scheduler.warmup_epochs"
            self.log(f"stopping: {err} Training on would not change it. Lower optimizer.lr (now "
                     f"{cfg.optimizer.lr:g}){warmup} and train again; the best model so far is packaged, the "
                     f"checkpoints in {self.run_dir / 'checkpoints'} are kept.")
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        if stopped not in ("nonfinite_loss", "dead_model"):  # the last checkpoint stays the last good state
            self.save_checkpoint()
        return self.finish(stopped)

    def _epochs(self, bar, writer, lines: bool) -> str:
        """The epoch loop; returns why it stopped."""
        cfg, tr = self.config, self.config.training
        n_train = len(self.data.train)
        steps_per_epoch = math.ceil(n_train / cfg.data.batch_size)
        stopped = "max_epochs"
        while self.epoch < tr.max_epochs:
            if self._out_of_time():
                stopped = "max_time"
                break
            self._maybe_switch_stage()
            progress = self.elapsed() / tr.max_time if tr.max_time else None
            lr = self.schedule.start_epoch(self.epoch, progress)
            # [steps checked, whether a predicted force was non-zero]; None: not force training
            self._force_check = [0, 0] if self.loss_fn.weights.get("forces", 0.0) > 0 else None
            order = epoch_order(n_train, cfg.seed, self.epoch)
            loss_sum, n_sum, step_in_epoch = 0.0, 0, 0
            out_of_time = False
            replay = self._replay_batches(steps_per_epoch)
            for graph in batches(self.data.train, cfg.data.batch_size, order, self.rank, self.world):
                value, n = self.train_step(graph, next(replay))
                loss_sum += value * cfg.data.batch_size
                n_sum += cfg.data.batch_size
                step_in_epoch += 1
                if bar is not None:
                    if tr.max_time is not None:
                        # ETA from the wall-time budget: the steps that fit at the current pace
                        done = bar.n + 1
                        fit = int(done * tr.max_time / max(self.elapsed(), 1e-9))
                        bar.total = max(min(tr.max_epochs * steps_per_epoch, fit), done)
                    bar.update(1)
                    bar.set_description(f"epoch {self.epoch + 1}/{tr.max_epochs}", refresh=False)
                    bar.set_postfix(loss=f"{loss_sum / n_sum:.4g}", lr=f"{lr:.2g}", refresh=False)
                if self.on_step is not None:
                    self.on_step(self.epoch, step_in_epoch)
                if self._out_of_time():
                    out_of_time = True
                    break
            train_loss = loss_sum / max(n_sum, 1)
            self.epoch += 1
            if self._force_check is not None and not out_of_time:
                counts = torch.tensor(self._force_check, dtype=torch.float64)
                self._reduce_([counts])
                checked, moved = counts.tolist()
                if checked > 0 and moved == 0:
                    raise DeadModelError(
                        f"the model's forces were exactly zero in every step of epoch {self.epoch}, where the "
                        f"reference forces are not: its energy no longer depends on the positions (activations "
                        f"saturated, usually after a step too large for this model; training loss {train_loss:.4g}).")
            row = {"epoch": self.epoch, "stage": self.stage, "time_s": self.elapsed(), "lr": lr,
                   "train_loss": train_loss}
            improved = False
            if self.epoch % tr.valid_every == 0 or out_of_time or self.epoch == tr.max_epochs:
                ev = self.validate()
                row["valid_loss"] = ev.loss
                for group, metrics in ev.metrics.items():
                    prefix = "" if group == "all" else f"{group}:"
                    row.update({f"{prefix}{k}": v for k, v in metrics.items()})
                self.schedule.end_epoch(self.epoch - 1, ev.loss)
                if ev.loss is not None and ev.loss < self.best:
                    self.best, self.bad_epochs, improved = ev.loss, 0, True
                else:
                    self.bad_epochs += 1
                if lines:
                    self.log(self._epoch_line(row, ev))
                if bar is not None:
                    f = ev.metrics.get("all", {}).get("forces_mae")
                    bar.set_postfix(loss=f"{train_loss:.4g}", val=f"{ev.loss:.4g}",
                                    **({"F_mae": f"{f:.1f}meV/Å"} if f is not None else {}), refresh=True)
                if writer is not None:
                    for k, v in row.items():
                        if isinstance(v, (int, float)) and k != "epoch":
                            writer.add_scalar(k, v, self.epoch)
            self._write_csv(row)
            if improved:
                self.save_best()
            if improved or self.epoch % tr.checkpoint_every == 0:
                self.save_checkpoint()
            if out_of_time:
                stopped = "max_time"
                break
            if tr.early_stopping_patience is not None and self.bad_epochs >= tr.early_stopping_patience:
                stopped = "early_stopping"
                self.log(f"early stopping after epoch {self.epoch}: no better validation loss in "
                         f"{tr.early_stopping_patience} epochs")
                break
        return stopped

    def _epoch_line(self, row: dict, ev) -> str:
        """One plain line per validated epoch, for logs that are not a terminal."""
        parts = [f"epoch {row['epoch']}/{self.config.training.max_epochs}", f"{row['time_s']:.0f} s",
                 f"lr {row['lr']:.3g}", f"loss {row['train_loss']:.5g}"]
        if ev.loss is not None:
            parts.append(f"valid {ev.loss:.5g}")
        from .metrics import quantities

        qs = quantities(self.model.targets)
        for name, value in ev.metrics.get("all", {}).items():
            if name.endswith("_mae") and not name.endswith("_per_atom_mae"):
                q = name.removesuffix("_mae")
                unit, _, short = qs.get(q, ("", 1.0, q))
                parts.append(f"{short} MAE {value:.4g} {unit}".rstrip())
        return "  ".join(parts)

    def _tensorboard(self):
        if not self.config.training.tensorboard or not self.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log("training.tensorboard is on but tensorboard is not installed; skipping it")
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    # -------------------------------------------------------------- the end
    def finish(self, stopped: str) -> TrainResult:
        """Load the best weights, report on the test set, write the package and the plots."""
        best = self.run_dir / "checkpoints" / "best.pt"
        last = self.run_dir / "checkpoints" / "last.pt"
        if best.exists():
            self.model.load_state_dict(load_checkpoint(best)["model"])
        elif stopped == "nonfinite_loss":
            if not last.exists():
                raise ConfigError(
                    f"the training loss became non-finite in the first epoch of {self.run_dir}, before any checkpoint; "
                    f"nothing was packaged. Lower optimizer.lr (now {self.config.optimizer.lr:g}) or check the data.")
            self.model.load_state_dict(load_checkpoint(last)["model"])
        elif self.ema is not None:
            self.ema.copy_to(self.model)
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise ConfigError(f"training of {self.run_dir} ended ({stopped}) with non-finite weights and no good "
                              "checkpoint to fall back on; nothing was packaged. Lower optimizer.lr and train again.")
        self.model.eval()
        result = TrainResult(run_dir=str(self.run_dir), epochs=self.epoch, stopped=stopped, time_s=self.elapsed())
        if not self.is_main:
            return result
        test, name = self.data.test, "test"
        if not test:
            test, name = (self.data.valid, "validation") if self.data.valid else (self.data.train, "training")
        with fitting(self.model):  # the test table compares with the data: without inference_only terms
            ev = evaluate(self.model, test, self.config.data.valid_batch_size, keep=True, device=self.device,
                          dtype=self.dtype)
        table = ev.table(f"{name} set ({len(test)} structures) after {self.epoch} epochs, {self.elapsed():.0f} s:")
        print(table, flush=True)
        atomic_write_text(table + "\n", self.run_dir / "test_metrics.txt")
        atomic_write_text(json.dumps({"set": name, "metrics": ev.metrics}, indent=2), self.run_dir / "test_metrics.json")
        meta = {"train_config": self.config.to_dict(), "test_metrics": ev.metrics, "test_set": name,
                "epochs": self.epoch, "train_time_s": self.elapsed()}
        rp = self.config.finetune.replay
        if rp is not None:  # the replay head on the replayed structures
            from .finetune import HeadView

            ev_replay = evaluate(HeadView(self.model, rp.head), self.replay_data, self.config.data.valid_batch_size,
                                 device=self.device, dtype=self.dtype)
            replay_table = ev_replay.table(f"replayed data ({rp.data}, {len(self.replay_data)} structures) through "
                                           f"energy head {rp.head!r}:")
            print(replay_table, flush=True)
            atomic_write_text(json.dumps({"set": str(rp.data), "head": rp.head, "metrics": ev_replay.metrics},
                                         indent=2), self.run_dir / "replay_metrics.json")
            meta["replay_metrics"] = {"head": rp.head, "metrics": ev_replay.metrics}
            result["replay_metrics"] = ev_replay.metrics
        if self.config.finetune.init_from is not None:
            meta["init_from"] = str(self.config.finetune.init_from)
        model_path = save_package(self.model, self.run_dir / "model.pt", metadata=meta)
        result.update(model_path=str(model_path), test_metrics=ev.metrics, table=table)
        if self.config.training.plots:
            from .plots import learning_curves, parity_plots

            plots = self.run_dir / "plots"
            written = parity_plots(ev, plots)
            lc = learning_curves(self.csv_path, plots / "learning_curves.png")
            result["plots"] = [str(p) for p in written + ([lc] if lc else [])]
        self.log(f"stopped ({stopped}); packaged model: {model_path}")
        return result


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.8g}"
    return value


def train(config, resume: bool = False, overrides=(), on_step=None, log=None) -> TrainResult:
    """Train from a :class:`TrainConfig`, a config dict or a YAML path.

    With ``resume=True``, ``config`` may be the run directory: its
    ``config.yaml`` is read and the run continues from its last checkpoint.
    """
    if resume and isinstance(config, (str, os.PathLike)) and Path(config).is_dir():
        run_dir = Path(config)
        cfg = load_config(run_dir / "config.yaml", overrides)
        cfg = cfg.model_copy(update={"run_dir": str(run_dir)})
    elif isinstance(config, TrainConfig):
        if overrides:
            base = config.to_dict()
            if config.finetune.init_from is not None:  # model keys left out mean "the packaged model's"
                base["model"] = config.model.model_dump(mode="json", exclude_unset=True)
            cfg = load_config(None, overrides, base=base)
        else:
            cfg = config
    elif isinstance(config, dict):
        cfg = load_config(None, overrides, base=config)
    else:
        cfg = load_config(config, overrides)
    if cfg.training.committee > 1:  # several models on one split: run_dir/member_K and committee.json
        from .committee import train_committee

        return train_committee(cfg, resume=resume, on_step=on_step, log=log)
    return Trainer(cfg, resume=resume, on_step=on_step, log=log).fit()
