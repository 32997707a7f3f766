"""Training a committee: K models from one config, seeds ``seed, seed+1, ...``, one held-out split.

``training.committee: K`` (K > 1) makes a run directory of K ordinary runs
and a committee file::

    config.yaml            the committee's config
    split.json             which frames of data.train went where (drawn once, with ``seed``)
    data/train.extxyz      the frames of that split, shared by every member
    data/valid.extxyz      (where validation / test frames are drawn from data.train)
    data/test.extxyz
    member_0/ ... member_{K-1}/   each a normal run (see :mod:`clebsch.train.trainer`), seed ``seed + k``
    committee.json         the members' model files and the calibration (see :mod:`clebsch.uncertainty`)
    committee_metrics.json the committee on the test (else validation) frames: errors of the mean,
                           mean uncertainty, rank correlation of uncertainty and error

Every member trains on the same training frames and is validated and tested
on the same held-out frames; only the seed of the weights and of the data
order differs. The trainer draws the split with the run's ``seed``, so the
split is drawn here once, with the committee's ``seed``, and its frames are
written to ``data/`` for the members to read (``data.max_train`` is applied
there too, so all members see the same training frames).

Each member resumes on its own: ``train_committee(run_dir, resume=True)``
finishes members that were interrupted, skips those already packaged, and
trains those not started.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch

from ..data.splits import save_split, split_indices
from .checkpoint import atomic_write_text
from .config import ConfigError, TrainConfig, load_config
from .data import read_file
from .trainer import TrainResult, data_keys, train

__all__ = ["train_committee", "CommitteeResult", "member_configs"]


class CommitteeResult(dict):
    """What :func:`train_committee` returns: ``run_dir``, ``committee_path``, ``model_paths``, ``members``
    (each member's :class:`~clebsch.train.trainer.TrainResult`), ``calibration`` and ``test_metrics``
    (the committee's :meth:`~clebsch.uncertainty.FrameUncertainty.summary` on the held-out frames)."""


def _resolve(config, resume: bool, overrides) -> TrainConfig:
    """The config, as :func:`~clebsch.train.trainer.train` reads it (a run directory when resuming)."""
    if resume and isinstance(config, (str, os.PathLike)) and Path(config).is_dir():
        run_dir = Path(config)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"cannot resume: {run_dir} holds no config.yaml")
        cfg = load_config(run_dir / "config.yaml", overrides)
        return cfg.model_copy(update={"run_dir": str(run_dir)})
    if isinstance(config, TrainConfig):
        return load_config(None, overrides, base=config.to_dict()) if overrides else config
    if isinstance(config, dict):
        return load_config(None, overrides, base=config)
    return load_config(config, overrides)


def _shared_data(cfg: TrainConfig, run_dir: Path, resume: bool, log) -> dict:
    """The ``data`` section every member gets: the split's frames as files when they come from ``data.train``."""
    d = cfg.data
    valid_size = 0.0 if d.valid else d.valid_fraction
    test_size = 0.0 if d.test else d.test_fraction
    if valid_size == 0.0 and test_size == 0.0 and d.max_train is None:
        return {}
    folder = run_dir / "data"
    files = {"train": folder / "train.extxyz"}
    if valid_size:
        files["valid"] = folder / "valid.extxyz"
    if test_size:
        files["test"] = folder / "test.extxyz"
    update = {k: str(v) for k, v in files.items()}
    update.update(max_train=None, valid_fraction=0.0, test_fraction=0.0)
    if resume and all(f.is_file() for f in files.values()):
        return update
    import ase.io

    from ..data.io import read_structures
    from .data import file_list

    frames = [f for path in file_list(d.train) for f in read_structures(path, index=":")]
    split = split_indices(len(frames), valid=float(valid_size), test=float(test_size), seed=cfg.seed)
    if d.max_train is not None:
        split["train"] = split["train"][: d.max_train]
    folder.mkdir(parents=True, exist_ok=True)
    save_split(run_dir / "split.json", split, seed=cfg.seed, file=str(d.train))
    for part, path in files.items():
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            ase.io.write(tmp, [frames[i] for i in split[part]], format="extxyz")
        except Exception as err:  # noqa: BLE001
            raise ConfigError(f"cannot write the committee's {part} frames of {d.train} to {path}: "
                              f"{type(err).__name__}: {err}") from None
        os.replace(tmp, path)
    log(f"committee split of {d.train} (seed {cfg.seed}): {len(split['train'])} train, {len(split['valid'])} "
        f"validation, {len(split['test'])} test frames, written to {folder}")
    return update


def member_configs(cfg: TrainConfig, data_update: dict | None = None) -> list[TrainConfig]:
    """The K members' configs: seed ``seed + k``, run_dir ``run_dir/member_k``, ``training.committee: 1``."""
    base = cfg.to_dict()
    out = []
    for k in range(cfg.training.committee):
        tree = json.loads(json.dumps(base))
        tree["seed"] = cfg.seed + k
        tree["run_dir"] = str(Path(cfg.run_dir) / f"member_{k}")
        tree["training"]["committee"] = 1
        tree["data"].update(data_update or {})
        out.append(load_config(None, base=tree))
    return out


def _held_out(cfg: TrainConfig, member: TrainConfig):
    """The validation and test graphs of the members (the same for all), for calibration and the report."""
    keys, required = data_keys(member)
    dtype = getattr(torch, cfg.dtype)
    def read(path):
        return read_file(path, member.model.cutoff, keys, dtype, required, targets=member.model.targets,
                         allow_nonfinite=member.data.skip_nonfinite, units=member.data.units or None)

    valid = read(member.data.valid) if member.data.valid else []
    test = read(member.data.test) if member.data.test else []
    return valid, test


def train_committee(config, resume: bool = False, overrides=(), on_step=None, log=None) -> CommitteeResult:
    """Train ``training.committee`` models into ``run_dir/member_k`` and write ``run_dir/committee.json``.

    Parameters
    ----------
    config : TrainConfig or dict or str or Path
        As for :func:`~clebsch.train.trainer.train`; with ``resume=True`` it may be the committee's run directory.
    resume : bool
        Continue an interrupted committee: packaged members are kept, interrupted ones resumed, the rest trained.
    overrides : sequence of str
        ``key.path=value`` strings (``--set``), applied to the committee's config and so to every member.
    on_step, log
        Passed to each member's :func:`~clebsch.train.trainer.train`; ``log`` also gets the committee's messages.

    Returns
    -------
    CommitteeResult
    """
    from ..uncertainty import Committee, frame_uncertainty

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    cfg = _resolve(config, resume, overrides)
    k_members = cfg.training.committee
    if k_members < 2:
        raise ConfigError(f"training.committee is {k_members}; a committee needs 2 or more members "
                          "(training.committee: 1 trains one model with clebsch.train.train)")
    run_dir = Path(cfg.run_dir)
    started = [run_dir / f"member_{k}" / "checkpoints" / "last.pt" for k in range(k_members)]
    if not resume and ((run_dir / "committee.json").exists() or any(p.exists() for p in started)):
        raise ConfigError(f"run_dir {run_dir} already holds a committee run; continue it with "
                          f"`clebsch train --resume {run_dir}` or choose another run_dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create run_dir {run_dir}: {err.strerror or err}") from None
    import yaml

    atomic_write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), run_dir / "config.yaml")
    members = member_configs(cfg, _shared_data(cfg, run_dir, resume, log))
    results = []
    for k, member in enumerate(members):
        mdir = Path(member.run_dir)
        prefix = f"committee member {k + 1}/{k_members} (seed {member.seed})"
        if resume and (mdir / "model.pt").is_file():
            log(f"{prefix}: already trained, {mdir / 'model.pt'}")
            results.append(TrainResult(run_dir=str(mdir), model_path=str(mdir / "model.pt"), skipped=True))
            continue
        again = resume and (mdir / "checkpoints" / "last.pt").is_file()
        log(f"{prefix}: {'resuming' if again else 'training'} in {mdir}")
        results.append(train(member, resume=again, on_step=on_step,
                             log=(lambda msg, p=prefix: log(f"{p}: {msg}"))))
    paths = [r["model_path"] for r in results]

    committee = Committee.from_models(paths, dtype=getattr(torch, cfg.dtype))
    valid, test = _held_out(cfg, members[0])
    calibration = dict(committee.calibration)
    if valid:
        calibration = committee.calibrate(valid, batch_size=cfg.data.valid_batch_size)
        log(f"committee calibration on {len(valid)} validation frames: energy x{calibration['energy']:.3g}, "
            f"forces x{calibration['forces']:.3g}")
    held, name = (test, "test") if test else (valid, "validation")
    report = {}
    if held:
        report = frame_uncertainty(committee, held, cfg.data.valid_batch_size).summary()
        report = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in report.items()}
        report["set"] = name  # measures the held-out frames lack (no reference forces: a density) are null
        atomic_write_text(json.dumps(report, indent=2) + "\n", run_dir / "committee_metrics.json")
        if report["force_error_mean"] is not None:
            spearman = report["spearman_forces"]
            log(f"committee on {len(held)} {name} frames: mean |F error| per atom of the mean "
                f"{1000 * report['force_error_mean']:.1f} meV/Å, mean force uncertainty "
                f"{1000 * report['force_uncertainty_mean']:.1f} meV/Å, rank correlation of uncertainty and force "
                f"error {'-' if spearman is None else f'{spearman:.2f}'}")
        else:
            log(f"committee on {len(held)} {name} frames: no reference forces; `clebsch evaluate "
                f"{run_dir / 'committee.json'} FILE` gives the errors of the members' mean")
    seeds = [m.seed for m in members]
    path = committee.save(run_dir / "committee.json", metadata={"seeds": seeds, "held_out_metrics": report})
    log(f"committee of {k_members} models written: {path}")
    return CommitteeResult(run_dir=str(run_dir), committee_path=str(path), model_paths=paths, members=results,
                           calibration=calibration, test_metrics=report)
