"""Learning curves: test error against training-set size, and the power law ``error = A N^(-beta)`` fitted to it.

How fast a model's error falls with more data is where equivariance shows most
clearly: an equivariant model needs fewer structures for the same error, and
often has a steeper curve. :func:`learning_curve` trains one or more configs at
several training-set sizes, a few times each, and reports the error on one
fixed test set::

    from clebsch.studies.learning_curve import learning_curve

    result = learning_curve({"nequip": "nequip.yaml", "cartesian": "cartesian.yaml"},
                            sizes=[25, 50, 100, 200], repeats=3, out_dir="curves")
    result.fits["nequip"].beta, result.fits["nequip"].beta_err

or from the shell::

    clebsch learning-curve nequip.yaml cartesian.yaml --sizes 25,50,100,200 --repeats 3 --out curves

The data of each config's ``data.train`` file is split once (seeded by
``seed``): a validation set and a test set, the same for every size, every
repeat and every config that reads the same file, and the *training pool*, the
rest. Repeat ``r`` shuffles the pool with its own seed; its training set of size
``N`` is the first ``N`` structures of that order, so the sets are nested (the
50 structures contain the 25) and each repeat draws others. The validation and
test sets come from the config's ``data.valid`` / ``data.test`` files when it
names them, else from the file: ``valid`` and ``test`` (a fraction below 1 or a
count), by default the config's ``data.valid_fraction`` and
``data.test_fraction`` (0.2 when that is 0: a curve needs a test set).

The study directory holds::

    data/<file>-<hash>/    valid.xyz, test.xyz, train_r<k>.xyz (the pool in repeat k's order), split.json
    runs/<label>/n<N>_r<k>/ one training run each (see clebsch.train.trainer)
    learning_curve.csv     one row per run: label, size, repeat, the metric, epochs, time
    fits.csv               one row per config: beta, its standard error, the prefactor
    learning_curve.png     log-log plot: the runs, their mean per size, the fitted lines, beta in the legend

A run that has finished (its ``test_metrics.json`` exists) is read back, and
one that was interrupted resumes from its last checkpoint, so a killed study
continues where it stopped when started again with the same arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = ["PowerLaw", "fit_power_law", "learning_curve", "LearningCurve", "prepare_subsets", "Subsets",
           "metric_names", "write_csv", "read_csv", "plot_learning_curve", "add_arguments", "main",
           "DEFAULT_TEST_FRACTION"]

DEFAULT_TEST_FRACTION = 0.2
"""The test fraction of the data file when neither the study nor the config asks for a test set."""

_CSV_COLUMNS = ("label", "size", "repeat", "metric", "value", "unit", "seed", "epochs", "time_s", "config",
                "run_dir")


# ---------------------------------------------------------------- the power law


@dataclass(frozen=True)
class PowerLaw:
    """``error = prefactor * N^(-beta)``, fitted in log-log space, with standard errors.

    Attributes
    ----------
    beta, beta_err : float
        The exponent and its standard error (NaN with fewer than three points).
    prefactor, prefactor_err : float
        ``A`` (the error at ``N = 1``, in the metric's unit) and its standard error.
    n_points : int
        Points fitted (one per run).
    residual_std : float
        Spread of ``log(error)`` about the line (NaN with fewer than three points).
    """

    beta: float
    beta_err: float
    prefactor: float
    prefactor_err: float
    n_points: int
    residual_std: float

    def __call__(self, sizes):
        """The fitted error at ``sizes``."""
        return self.prefactor * np.asarray(sizes, dtype=float) ** (-self.beta)

    def describe(self) -> str:
        """``"beta = 0.52 ± 0.03"``."""
        err = "n/a" if not math.isfinite(self.beta_err) else f"{self.beta_err:.2f}"
        return f"β = {self.beta:.2f} ± {err}"


def fit_power_law(sizes, errors) -> PowerLaw:
    """Fit ``error = A N^(-beta)`` by least squares on ``log(error) = log(A) - beta log(N)``.

    Every (size, error) pair is one point: pass all repeats, not their means, so
    that the scatter between repeats enters the uncertainty. ``beta_err`` is the
    standard error of the slope, ``s / sqrt(sum (x - mean x)^2)`` with ``s`` the
    residual standard deviation on ``n - 2`` degrees of freedom; about two thirds
    of fits on data with independent log-normal noise land within one ``beta_err``
    of the true exponent (the t distribution).

    Parameters
    ----------
    sizes : sequence of float
        Training-set sizes, positive; at least two distinct ones.
    errors : sequence of float
        Errors, positive and finite, one per size entry.

    Raises
    ------
    ValueError
        Mismatched lengths, fewer than two distinct sizes, or a size or error that is
        not positive and finite (the message names the entry).

    Examples
    --------
    >>> fit = fit_power_law([10, 100, 1000], [1.0, 0.5, 0.25])
    >>> round(fit.beta, 6), round(fit.prefactor, 6), round(fit.beta_err, 6)
    (0.30103, 2.0, 0.0)
    """
    x = np.asarray(sizes, dtype=float).reshape(-1)
    y = np.asarray(errors, dtype=float).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"fit_power_law: {x.size} sizes but {y.size} errors; give one error per size entry")
    for name, values in (("size", x), ("error", y)):
        bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
        if bad.size:
            k = int(bad[0])
            raise ValueError(f"fit_power_law: {name} {float(values[k])!r} (entry {k}) is not a positive finite number; "
                             "a power law is fitted to positive sizes and errors")
    if np.unique(x).size < 2:
        raise ValueError(f"fit_power_law: a power law needs at least two distinct sizes, got {sorted(set(x.tolist()))}")
    lx, ly = np.log(x), np.log(y)
    n = lx.size
    mx = lx.mean()
    sxx = float(((lx - mx) ** 2).sum())
    slope = float(((lx - mx) * (ly - ly.mean())).sum() / sxx)
    intercept = float(ly.mean() - slope * mx)
    residuals = ly - (intercept + slope * lx)
    if n > 2:
        s = float(np.sqrt((residuals ** 2).sum() / (n - 2)))
        slope_err = s / math.sqrt(sxx)
        intercept_err = s * math.sqrt(1.0 / n + mx ** 2 / sxx)
    else:
        s = slope_err = intercept_err = math.nan
    prefactor = math.exp(intercept)
    return PowerLaw(beta=-slope, beta_err=slope_err, prefactor=prefactor, prefactor_err=prefactor * intercept_err,
                    n_points=n, residual_std=s)


# ---------------------------------------------------------------- metrics


def metric_names(targets=None) -> list[str]:
    """The metrics a learning curve can follow: ``<quantity>_mae`` and ``<quantity>_rmse`` of every trainable target.

    >>> "forces_mae" in metric_names(), "energy_per_atom_rmse" in metric_names()
    (True, True)
    """
    from ..train.metrics import quantities

    return [f"{q}_{stat}" for q in quantities(targets) for stat in ("mae", "rmse")]


def _metric_unit(metric: str, targets) -> str:
    from ..train.metrics import quantities

    q = metric.rsplit("_", 1)[0]
    return quantities(targets).get(q, ("", 1.0, q))[0]


def _check_metric(metric: str, cfg, where: str) -> None:
    """Raise when ``metric`` is unknown, or names a target the config's model does not predict."""
    known = cfg.model.known_targets()
    allowed = metric_names(known)
    if metric not in allowed:
        raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(allowed)}")
    q = metric.rsplit("_", 1)[0]
    base = q.removesuffix("_per_atom")
    if cfg.model.outputs != "auto":
        outputs = list(cfg.model.outputs)
    else:
        from ..models._registry import is_topological
        from ..train.trainer import trained_targets

        outputs = ["energy"] if is_topological(cfg.model.name) else ["energy", "forces"]
        outputs += [t for t in trained_targets(cfg) if t not in outputs]
    if base not in outputs:
        raise ValueError(f"metric {metric!r}: the model of {where} does not predict {base!r} (its outputs: "
                         f"{', '.join(outputs)}); pick another metric or add {base!r} to model.outputs / loss.weights")


# ---------------------------------------------------------------- nested subsets


@dataclass
class Subsets:
    """Where the fixed validation and test sets and the nested training sets of one data file live.

    Attributes
    ----------
    directory : Path
        The folder holding the files below and ``split.json``.
    source : str
        The data file they come from.
    pool_size : int
        Structures in the training pool (the file less validation and test).
    valid, test : str or None
        Files of the validation and test sets (None: no validation set).
    indices : dict
        Frame indices into ``source``: ``valid``, ``test`` and ``train_r<k>`` (repeat
        ``k``'s order of the pool).
    """

    directory: Path
    source: str
    pool_size: int
    valid: str | None
    test: str | None
    indices: dict = field(default_factory=dict)

    def train(self, repeat: int, size: int) -> str:
        """The training set of ``size`` structures of repeat ``repeat``: ``train_r<k>.xyz@0:<size>``."""
        if not 0 < size <= self.pool_size:
            raise ValueError(f"size {size} is outside 1..{self.pool_size}, the structures of the training pool")
        return f"{self.directory / f'train_r{repeat}.xyz'}@0:{size}"


def _fraction_or_count(value, name: str):
    """A fraction in [0, 1) stays a float, a whole number >= 1 becomes an int count."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not a number; give a fraction below 1 or a count") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: {value!r} must be a fraction in [0, 1) or a non-negative count of structures")
    if value < 1:
        return float(value)
    if value != int(value):
        raise ValueError(f"{name}: {value!r} is neither a fraction below 1 nor a whole count of structures")
    return int(value)


def _file_stamp(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def prepare_subsets(cfg, repeats: int, out_dir, seed: int = 0, valid=None, test=None) -> Subsets:
    """Split the config's ``data.train`` file once and write the sets a learning curve trains and tests on.

    Parameters
    ----------
    cfg : TrainConfig
        The config; ``data.train`` (and ``data.valid`` / ``data.test`` when given) are read.
    repeats : int
        Number of shuffled orders of the training pool to write.
    out_dir : path
        The study directory; files go to ``out_dir/data/<file stem>-<hash>/`` (the hash
        covers the file, its size and time stamp, the seed, ``valid`` and ``test``), so
        configs on the same file with the same settings share them, and a later call
        with more repeats adds their files beside the others.
    seed : int
        Seeds the split and, with the repeat index, each repeat's order.
    valid, test : float or int, optional
        Validation and test sets drawn from the file: a fraction below 1 or a count.
        Default: the config's ``data.valid`` / ``data.test`` files if it names them, else
        ``data.valid_fraction`` and ``data.test_fraction`` (:data:`DEFAULT_TEST_FRACTION`
        when that is 0).

    Returns
    -------
    Subsets
    """
    import ase.io

    from ..data.io import read_structures
    from ..data.splits import save_split, split_indices

    if cfg.data.train is None:
        raise ValueError("data.train is not set: a learning curve needs a training file (--set data.train=FILE)")
    for key in ("train", "valid", "test"):
        if isinstance(getattr(cfg.data, key), list):
            raise ValueError(f"data.{key} is a list of files; a learning curve reads one file for each set "
                             f"(join them into one file first)")
    source = Path(cfg.data.train)
    valid = _fraction_or_count(valid, "valid")
    test = _fraction_or_count(test, "test")
    valid_file = cfg.data.valid if valid is None and cfg.data.valid else None
    test_file = cfg.data.test if test is None and cfg.data.test else None
    if valid is None and valid_file is None:
        valid = float(cfg.data.valid_fraction)
    if test is None and test_file is None:
        test = float(cfg.data.test_fraction) or DEFAULT_TEST_FRACTION
    whole = source if source.exists() or "@" not in source.name else Path(str(source).rpartition("@")[0])
    if not whole.exists():  # a file, or file@start:stop (a selection of its frames)
        raise FileNotFoundError(f"data.train: structure file not found: '{source}'")
    frames = read_structures(source)
    n = len(frames)
    try:
        split = split_indices(n, valid=valid or 0.0, test=test or 0.0, seed=seed)
    except ValueError as err:
        raise ValueError(f"data.train '{source}': {err}") from None
    if not split["test"] and test_file is None:
        raise ValueError(f"the test set drawn from data.train '{source}' ({n} structures) is empty with test={test!r}; "
                         "give a larger test fraction or count")
    key = json.dumps([f"{_file_stamp(whole)}:{source.name}", seed, valid, test])
    stem = source.name.split("@")[0].split(".")[0] or "data"
    directory = Path(out_dir) / "data" / f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    indices = {"valid": split["valid"], "test": split["test"]}
    for r in range(repeats):
        order = np.random.default_rng([int(seed), r]).permutation(len(split["train"]))
        indices[f"train_r{r}"] = [split["train"][int(i)] for i in order]
    directory.mkdir(parents=True, exist_ok=True)
    from .._atomic import atomic_open

    for name, idx in indices.items():  # each file appears complete or not at all; a later call adds repeats
        path = directory / f"{name}.xyz"
        if idx and not path.exists():
            with atomic_open(path, "w") as handle:
                ase.io.write(handle, [frames[i] for i in idx], format="extxyz")
    save_split(directory / "split.json", indices, seed=seed, file=str(source), valid=valid, test=test)
    valid_path = valid_file if valid_file else (str(directory / "valid.xyz") if indices["valid"] else None)
    test_path = test_file if test_file else str(directory / "test.xyz")
    return Subsets(directory=directory, source=str(source), pool_size=len(split["train"]), valid=valid_path,
                   test=test_path, indices=indices)


# ---------------------------------------------------------------- the study


@dataclass
class LearningCurve:
    """What :func:`learning_curve` returns.

    Attributes
    ----------
    rows : list of dict
        One per run, with the columns of ``learning_curve.csv``.
    fits : dict
        ``{label: PowerLaw}``.
    metric, unit : str
    csv, fits_csv, plot : Path
        The files written.
    """

    rows: list
    fits: dict
    metric: str
    unit: str
    csv: Path
    fits_csv: Path
    plot: Path | None


def _load(config, overrides):
    from ..train.config import TrainConfig, load_config

    if isinstance(config, TrainConfig):
        return load_config(None, overrides, base=config.to_dict())
    if isinstance(config, Mapping):
        return load_config(None, overrides, base=dict(config))
    return load_config(config, overrides)


def _labelled(configs) -> list[tuple[str, object]]:
    """``[(label, config)]`` from a mapping, or from a list (labels: file stems, else model names)."""
    if isinstance(configs, Mapping):
        items = [(str(k), v) for k, v in configs.items()]
    else:
        if isinstance(configs, (str, os.PathLike)):
            configs = [configs]
        items = []
        for c in configs:
            if isinstance(c, (str, os.PathLike)):
                label = Path(c).stem
            elif isinstance(c, Mapping):
                label = str((c.get("model") or {}).get("name", "model"))
            else:
                label = str(c.model.name)
            items.append((label, c))
    if not items:
        raise ValueError("learning_curve needs at least one config")
    seen: dict[str, int] = {}
    out = []
    for label, c in items:
        seen[label] = seen.get(label, 0) + 1
        out.append((label if seen[label] == 1 else f"{label}_{seen[label]}", c))
    return out


def _folder_name(label: str) -> str:
    """``label`` as one folder name (path separators and spaces replaced)."""
    name = "".join(c if c.isalnum() or c in "-_.+=" else "_" for c in label).strip(".")
    return name or "model"


def _check_sizes(sizes) -> list[int]:
    if isinstance(sizes, str):
        sizes = _parse_sizes(sizes)
    out = []
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) and not (isinstance(s, float) and s.is_integer()):
            raise ValueError(f"sizes: {s!r} is not a whole number of training structures")
        s = int(s)
        if s <= 0:
            raise ValueError(f"sizes: every size must be a positive number of training structures, got {s}")
        if s in out:
            raise ValueError(f"sizes: {s} is listed twice")
        out.append(s)
    if len(out) < 2:
        raise ValueError(f"sizes: a learning curve needs at least two sizes, got {out}")
    return sorted(out)


def _parse_sizes(text: str) -> list[int]:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise ValueError(f"--sizes: {part!r} is not a whole number; give comma-separated counts of training "
                             "structures, e.g. 25,50,100") from None
    return out


def _read_metric(run_dir: Path, metric: str) -> dict:
    report = json.loads((run_dir / "test_metrics.json").read_text())
    if report.get("set") != "test":
        raise ValueError(f"{run_dir}: its final metrics are on the {report.get('set')} set, not a test set")
    metrics = report["metrics"].get("all", {})
    if metric not in metrics:
        raise ValueError(f"{run_dir}: the test set has no {metric!r} (metrics there: {', '.join(sorted(metrics))}); "
                         "does the data hold that target?")
    return {"value": float(metrics[metric])}


def _run(config: dict, run_dir: Path, metric: str, log: Callable[[str], None]) -> dict:
    """Train one config into ``run_dir`` (or read back a finished run, or resume a killed one)."""
    import yaml

    from ..train.trainer import train

    if (run_dir / "config.yaml").exists():
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        if saved != config:
            changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
            raise ValueError(f"{run_dir} holds a run of another config (sections differing: {', '.join(changed)}); "
                             "use another output directory, or remove that one to train again")
    if (run_dir / "test_metrics.json").exists():
        out = _read_metric(run_dir, metric)
        state = json.loads((run_dir / "learning_curve_run.json").read_text()) \
            if (run_dir / "learning_curve_run.json").exists() else {}
        return {**state, **out}
    resume = (run_dir / "checkpoints" / "last.pt").exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "a") as handle:
        def to_file(message: str) -> None:
            handle.write(message + "\n")
            handle.flush()

        with contextlib.redirect_stdout(handle):
            result = train(str(run_dir) if resume else config, resume=resume, log=to_file)
    state = {"epochs": int(result["epochs"]), "time_s": float(result.get("time_s", math.nan))}
    (run_dir / "learning_curve_run.json").write_text(json.dumps(state))
    return {**state, **_read_metric(run_dir, metric)}


def learning_curve(configs, sizes: Sequence[int], repeats: int = 3, out_dir="learning-curve",
                   metric: str = "forces_mae", overrides: Sequence[str] = (), seed: int = 0, valid=None, test=None,
                   plot: bool = True, log: Callable[[str], None] | None = None) -> LearningCurve:
    """Train each config at each size, ``repeats`` times, on nested subsets; fit and plot the power laws.

    Parameters
    ----------
    configs : path, dict, TrainConfig, a list of them, or a mapping ``{label: config}``
        Training configs (see :mod:`clebsch.train.config`); labels default to the
        file names without suffix (or the model names).
    sizes : sequence of int
        Training-set sizes, positive and at most the training pool (the data file
        less the validation and test sets).
    repeats : int
        Runs per size, each on its own shuffled order of the pool and with its own
        weights (``seed`` of the config plus the repeat index).
    out_dir : path
        The study directory (see the module docstring for what it holds).
    metric : str
        ``forces_mae`` (default), ``energy_mae``, ``energy_per_atom_mae``, or any of
        :func:`metric_names`, measured on the test set in the target's display unit.
    overrides : sequence of str
        ``key.path=value`` applied to every config (as ``clebsch train --set``).
        ``training.plots`` and ``training.progress`` are off unless overridden here.
    seed : int
        Seeds the split of the data file and the orders of the pool.
    valid, test : float or int, optional
        See :func:`prepare_subsets`.
    plot : bool
        Write ``learning_curve.png``.
    log : callable, optional
        Where progress lines go (default: stderr).

    Returns
    -------
    LearningCurve

    Raises
    ------
    ValueError
        An unknown metric (the allowed ones are listed), a size that is not positive or
        exceeds the training pool (the message says how many structures there are),
        fewer than two sizes, ``repeats`` below 1 -- all before anything is trained.
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    sizes = _check_sizes(sizes)
    if isinstance(repeats, bool) or int(repeats) != repeats or repeats < 1:
        raise ValueError(f"repeats must be a positive whole number, got {repeats!r}")
    repeats = int(repeats)
    out_dir = Path(out_dir)
    base_overrides = ["training.plots=false", "training.progress=false", *overrides]

    # every config, its data and the sizes are checked before the first run
    plans = []
    for label, config in _labelled(configs):
        where = str(config) if isinstance(config, (str, os.PathLike)) else f"config {label!r}"
        cfg = _load(config, base_overrides)
        _check_metric(metric, cfg, where)
        subsets = prepare_subsets(cfg, repeats, out_dir, seed=seed, valid=valid, test=test)
        too_big = [s for s in sizes if s > subsets.pool_size]
        if too_big:
            held = len(subsets.indices["valid"]) + len(subsets.indices["test"])
            raise ValueError(
                f"sizes {too_big} exceed the training pool of {where}: data.train '{subsets.source}' holds "
                f"{subsets.pool_size + held} structures, of which {len(subsets.indices['valid'])} go to validation and "
                f"{len(subsets.indices['test'])} to test, leaving {subsets.pool_size} for training; "
                f"give sizes up to {subsets.pool_size}")
        plans.append((label, where, cfg, subsets))
    unit = _metric_unit(metric, plans[0][2].model.known_targets())

    rows = []
    total = len(plans) * len(sizes) * repeats
    done = 0
    for label, where, cfg, subsets in plans:
        for r in range(repeats):
            for size in sizes:
                run_dir = out_dir / "runs" / _folder_name(label) / f"n{size}_r{r}"
                config = cfg.to_dict()
                config["run_dir"] = str(run_dir)
                config["seed"] = int(cfg.seed) + r
                # the whole subset trains: nothing more is carved out of it for validation or test
                config["data"] = {**config["data"], "train": subsets.train(r, size), "valid": subsets.valid,
                                  "test": subsets.test, "max_train": None, "valid_fraction": 0.0,
                                  "test_fraction": 0.0}
                config = _load(config, ()).to_dict()  # validated, every default filled in
                start = time.monotonic()
                got = _run(config, run_dir, metric, log)
                done += 1
                rows.append({"label": label, "size": size, "repeat": r, "metric": metric, "value": got["value"],
                             "unit": unit, "seed": config["seed"], "epochs": got.get("epochs", ""),
                             "time_s": got.get("time_s", ""), "config": where, "run_dir": str(run_dir)})
                log(f"[{done}/{total}] {label} N={size} repeat {r}: {metric} {got['value']:.4g} {unit} "
                    f"({got.get('epochs', '?')} epochs, {time.monotonic() - start:.0f} s)")
    csv_path = write_csv(rows, out_dir / "learning_curve.csv")
    fits = _fits(rows)
    fits_path = _write_fits(fits, metric, unit, out_dir / "fits.csv")
    plot_path = plot_learning_curve(rows, out_dir / "learning_curve.png", fits=fits) if plot else None
    return LearningCurve(rows=rows, fits=fits, metric=metric, unit=unit, csv=csv_path, fits_csv=fits_path,
                         plot=plot_path)


def _fits(rows) -> dict:
    fits = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label]
        fits[label] = fit_power_law([r["size"] for r in mine], [r["value"] for r in mine])
    return fits


# ---------------------------------------------------------------- files


def write_csv(rows, path) -> Path:
    """Write the runs of a learning curve (``learning_curve.csv``), atomically; return the path."""
    from .._atomic import atomic_open

    path = Path(path)
    with atomic_open(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(_CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def read_csv(path) -> list[dict]:
    """The rows of a ``learning_curve.csv`` (sizes and repeats as ints, values as floats).

    Rows of several studies can be concatenated and passed to :func:`plot_learning_curve`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"learning-curve file not found: '{path}'")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in ("label", "size", "value") if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"'{path}' is not a learning-curve CSV: it lacks the column(s) {missing}")
    for k, row in enumerate(rows):
        try:
            row["size"], row["value"] = int(row["size"]), float(row["value"])
            row["repeat"] = int(row.get("repeat") or 0)
        except ValueError:
            raise ValueError(f"'{path}', row {k + 2}: size {row['size']!r} or value {row['value']!r} is not a "
                             "number") from None
    return rows


def _write_fits(fits: dict, metric: str, unit: str, path) -> Path:
    from .._atomic import atomic_open

    path = Path(path)
    with atomic_open(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "metric", "unit", "beta", "beta_err", "prefactor", "prefactor_err", "n_points",
                         "residual_std"])
        for label, f in fits.items():
            writer.writerow([label, metric, unit] + [f"{v:.6g}" for v in (f.beta, f.beta_err, f.prefactor,
                                                                           f.prefactor_err)]
                            + [f.n_points, f"{f.residual_std:.6g}"])
    return path


def plot_learning_curve(rows, path, fits: dict | None = None, title: str | None = None) -> Path:
    """A log-log plot of error against training-set size: every run, the mean per size, the fitted power laws.

    Parameters
    ----------
    rows : list of dict
        Runs with ``label``, ``size``, ``value`` (and ``metric``, ``unit``), as in
        :func:`read_csv`; several labels share the plot.
    path : path
        The PNG to write (atomically).
    fits : dict, optional
        ``{label: PowerLaw}``; fitted here when not given.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from .._atomic import atomic_open

    if not rows:
        raise ValueError("plot_learning_curve: no runs to plot")
    fits = _fits(rows) if fits is None else fits
    metric = rows[0].get("metric", "error")
    unit = rows[0].get("unit", "")
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, label in enumerate(dict.fromkeys(r["label"] for r in rows)):
        color = colors[k % len(colors)]
        mine = [r for r in rows if r["label"] == label]
        sizes = np.array([r["size"] for r in mine], dtype=float)
        values = np.array([r["value"] for r in mine], dtype=float)
        ax.scatter(sizes, values, s=10, color=color, alpha=0.35, linewidths=0)
        distinct = np.unique(sizes)
        means = np.array([values[sizes == s].mean() for s in distinct])
        spread = np.array([values[sizes == s].std(ddof=1) if (sizes == s).sum() > 1 else 0.0 for s in distinct])
        ax.errorbar(distinct, means, yerr=spread, fmt="o", color=color, ms=4, capsize=2, lw=1)
        fit = fits.get(label)
        if fit is not None:
            grid = np.geomspace(distinct.min(), distinct.max(), 50)
            ax.plot(grid, fit(grid), "-", color=color, lw=1.3, label=f"{label}: {fit.describe()}")
        else:
            ax.plot([], [], "o", color=color, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ticks = sorted({int(r["size"]) for r in rows})
    ax.set_xticks(ticks)  # the sizes trained, as plain numbers
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training structures N")
    what = metric.replace("_per_atom", " per atom").replace("_mae", " MAE").replace("_rmse", " RMSE")
    ax.set_ylabel(f"test {what}" + (f" ({unit})" if unit else ""))
    ax.set_title(title or "learning curves, error ∝ N^(-β)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, dpi=130, format="png")
    plt.close(fig)
    return path


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``clebsch learning-curve``."""
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="training configs (YAML), one curve each")
    parser.add_argument("--sizes", required=True,
                        help="training-set sizes, comma-separated, e.g. 25,50,100,200,400")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size, each on its own subsets (default 3)")
    parser.add_argument("--out", default="learning-curve", help="study directory (default learning-curve)")
    parser.add_argument("--metric", default="forces_mae",
                        help="test metric: forces_mae (default), energy_mae, energy_per_atom_mae, *_rmse, ...")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of every config, e.g. --set training.max_epochs=50 (repeatable)")
    parser.add_argument("--labels", help="comma-separated curve labels, one per config (default: file names)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the subsets (default 0)")
    parser.add_argument("--valid", help="validation set drawn from data.train: a fraction below 1 or a count "
                                        "(default: the config's)")
    parser.add_argument("--test", help="test set drawn from data.train: a fraction below 1 or a count "
                                       f"(default: the config's data.test or test_fraction, else {DEFAULT_TEST_FRACTION})")
    return parser


def main(args) -> int:
    """Run ``clebsch learning-curve`` from parsed arguments; print the fitted exponents. Returns 0."""
    configs = list(args.configs)
    if args.labels:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(configs) or not all(labels):
            raise ValueError(f"--labels: give one non-empty label per config ({len(configs)}), got {args.labels!r}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"--labels: labels must differ, got {args.labels!r}")
        configs = dict(zip(labels, configs))
    result = learning_curve(configs, _parse_sizes(args.sizes), repeats=args.repeats, out_dir=args.out,
                            metric=args.metric, overrides=args.overrides, seed=args.seed, valid=args.valid,
                            test=args.test)
    print(f"test {result.metric} ({result.unit}) = A N^(-β), fitted over {len(result.rows)} runs:")
    width = max(len(label) for label in result.fits)
    for label, fit in result.fits.items():
        err = f"{fit.beta_err:.3f}" if math.isfinite(fit.beta_err) else "n/a"
        print(f"  {label:<{width}}  β = {fit.beta:.3f} ± {err}   A = {fit.prefactor:.4g}")
    print(f"  runs     {result.csv}")
    print(f"  fits     {result.fits_csv}")
    if result.plot is not None:
        print(f"  plot     {result.plot}")
    return 0
