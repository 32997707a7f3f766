"""Uncertainty estimates: committees of models and last-layer prediction rigidity (LLPR).

Two ways to say how far a prediction can be trusted:

- :class:`Committee` — several models trained alike from different seeds
  (``training.committee: 4``, :func:`clebsch.train.committee.train_committee`).
  The prediction is the members' mean and the uncertainty their standard
  deviation (``ddof=1``), times a calibration factor fitted on validation
  frames. It costs one evaluation per member. A committee is stored as a small
  JSON file listing its members' packaged model files (:func:`save_committee`,
  :meth:`Committee.load`).
- :class:`LLPR` — one model. The energy is linear in the last hidden layer of
  the energy readout: ``E = sum_Z E0 + w . f(x)`` with
  ``f(x) = scale * sum_i (phi(h_i) - phi(h_i^isolated))``. With
  ``C = sum_train f f^T + force_weight * sum_train J J^T`` and ``J = df/dr``,
  ``sigma_E^2 = alpha_E^2 f^T (C + lambda I)^-1 f`` and, for each force component,
  ``sigma_F^2 = alpha_F^2 J^T (C + lambda I)^-1 J`` (Bigi, Chong, Ceriotti and
  Grasselli, "A prediction rigidity formalism for low-cost uncertainties in
  trained neural networks", 2024). ``lambda`` and the ``alpha`` are fitted on
  validation frames by maximum likelihood. The forces' uncertainty costs one
  backward pass per hidden unit of the readout (``model.readout_hidden``).

Both give the same :meth:`predict` keys — ``energy`` [B], ``energy_std`` [B] (eV),
``forces`` [N, 3], ``forces_std`` [N, 3] (per Cartesian component, eV/Å) and
``forces_uncertainty`` [N] (per atom, ``sqrt(sum_a forces_std[:, a]**2)``, eV/Å)
— so :func:`frame_uncertainty` measures either on held-out frames, and
:func:`rank_correlation` says how well the predicted uncertainty orders the
frames by their true error.

Examples
--------
>>> rank_correlation([0.1, 0.3, 0.2, 0.5], [1.0, 2.5, 2.0, 9.0])
1.0
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .graph import AtomicGraph, batch as batch_graphs

__all__ = [
    "COMMITTEE_FORMAT",
    "MeanModel",
    "load_model",
    "LLPR_FORMAT",
    "Committee",
    "CommitteeError",
    "LLPR",
    "FrameUncertainty",
    "save_committee",
    "read_committee",
    "check_members",
    "frame_uncertainty",
    "rank_correlation",
    "fit_scale",
    "llpr_path",
]

COMMITTEE_FORMAT = "clebsch-committee"
LLPR_FORMAT = "clebsch-llpr"
FORMAT_VERSION = 1


class CommitteeError(ValueError):
    """A committee file that cannot be read, or members that cannot form a committee."""


# ---------------------------------------------------------------- statistics


def rank_correlation(uncertainty, error) -> float:
    """Spearman's rank correlation between predicted uncertainties and true errors.

    Pairs where either value is not finite are left out; 1 means the
    uncertainty orders the frames exactly as their errors do, 0 not at all.

    >>> rank_correlation([3.0, 1.0, 2.0], [30.0, 10.0, 25.0])
    1.0
    >>> rank_correlation([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    -1.0
    """
    from scipy.stats import spearmanr

    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    e = np.asarray(error, dtype=np.float64).ravel()
    if u.shape != e.shape:
        raise ValueError(f"rank_correlation: {u.size} uncertainties for {e.size} errors; give one of each per frame")
    keep = np.isfinite(u) & np.isfinite(e)
    if keep.sum() < 3:
        raise ValueError(f"rank_correlation needs at least 3 frames with finite values, got {int(keep.sum())}")
    return float(spearmanr(u[keep], e[keep]).statistic)


def fit_scale(residuals, variances) -> float:
    """The factor ``s`` that makes ``N(0, s^2 v)`` most likely for the residuals: ``sqrt(mean(r^2 / v))``.

    Entries with a zero, negative or non-finite variance, or a non-finite
    residual, are left out.

    >>> rng = np.random.default_rng(0)
    >>> v = rng.uniform(0.1, 2.0, 20000)
    >>> round(fit_scale(3.0 * np.sqrt(v) * rng.standard_normal(v.size), v), 1)
    3.0
    """
    r = np.asarray(residuals, dtype=np.float64).ravel()
    v = np.asarray(variances, dtype=np.float64).ravel()
    if r.shape != v.shape:
        raise ValueError(f"fit_scale: {r.size} residuals for {v.size} variances")
    keep = np.isfinite(r) & np.isfinite(v) & (v > 0)
    if not keep.any():
        raise ValueError("fit_scale: no residual with a positive, finite predicted variance")
    return float(np.sqrt(np.mean(r[keep] ** 2 / v[keep])))


@dataclass
class FrameUncertainty:
    """Predicted uncertainty and true error of each frame (from :func:`frame_uncertainty`).

    Attributes
    ----------
    energy_error : array [F]
        ``|E_pred - E_ref|`` (eV); NaN where a frame has no reference energy.
    energy_std : array [F]
        Predicted energy uncertainty (eV).
    force_error : array [F]
        Mean over the frame's atoms of ``|F_pred - F_ref|`` (eV/Å); NaN without reference forces.
    force_error_max : array [F]
        Largest ``|F_pred - F_ref|`` of an atom of the frame (eV/Å).
    force_std : array [F]
        Mean over the frame's atoms of the per-atom force uncertainty ``forces_uncertainty`` (eV/Å).
    force_std_max : array [F]
        Largest per-atom force uncertainty of the frame (eV/Å).
    n_atoms : array [F]
    """

    energy_error: np.ndarray
    energy_std: np.ndarray
    force_error: np.ndarray
    force_error_max: np.ndarray
    force_std: np.ndarray
    force_std_max: np.ndarray
    n_atoms: np.ndarray

    def correlations(self) -> dict:
        """Spearman rank correlations: ``forces`` (mean predicted vs mean true per frame), ``forces_max``
        (largest per atom) and ``energy`` (per frame); NaN where there are no references."""
        out = {}
        for name, u, e in (("forces", self.force_std, self.force_error),
                           ("forces_max", self.force_std_max, self.force_error_max),
                           ("energy", self.energy_std, self.energy_error)):
            try:
                out[name] = rank_correlation(u, e)
            except ValueError:
                out[name] = float("nan")
        return out

    def summary(self) -> dict:
        """Correlations, mean errors and mean predicted uncertainties, as plain floats.

        ``energy_mae`` and ``energy_std_mean`` (eV) per frame; ``force_error_mean`` (the mean over frames of
        :attr:`force_error`, i.e. of the per-atom error vector's length, not a per-component MAE) and
        ``force_uncertainty_mean`` (of :attr:`force_std`) in eV/Å.
        """
        def mean(x):
            x = x[np.isfinite(x)]
            return float(x.mean()) if x.size else float("nan")

        return {
            **{f"spearman_{k}": v for k, v in self.correlations().items()},
            "frames": int(self.n_atoms.size),
            "energy_mae": mean(self.energy_error),
            "energy_std_mean": mean(self.energy_std),
            "force_error_mean": mean(self.force_error),
            "force_uncertainty_mean": mean(self.force_std),
        }


def _as_graph_list(graphs) -> list:
    if isinstance(graphs, AtomicGraph):
        return graphs.split()
    return list(graphs)


def _chunks(graphs, batch_size: int):
    graphs = _as_graph_list(graphs)
    for start in range(0, len(graphs), batch_size):
        yield batch_graphs(graphs[start:start + batch_size])


def frame_uncertainty(predictor, graphs, batch_size: int = 10) -> FrameUncertainty:
    """Run ``predictor`` (a :class:`Committee` or an :class:`LLPR`) over ``graphs`` and collect, per frame,
    the predicted uncertainty and the true error against the graphs' reference ``energy`` and ``forces``.

    Parameters
    ----------
    predictor : Committee or LLPR
        Anything whose ``predict(graph)`` gives ``energy``, ``energy_std``, ``forces``, ``forces_uncertainty``.
    graphs : sequence of AtomicGraph
        One structure each (e.g. an :class:`~clebsch.data.AtomicDataset`), with references where known.
    batch_size : int
        Structures per evaluation.
    """
    cols = {k: [] for k in ("energy_error", "energy_std", "force_error", "force_error_max", "force_std",
                            "force_std_max", "n_atoms")}
    for graph in _chunks(graphs, batch_size):
        out = predictor.predict(graph)
        b = graph.batch.cpu().numpy()
        counts = np.bincount(b, minlength=graph.num_graphs)
        e_ref = graph.targets.get("energy")
        e_err = (np.abs(out["energy"].cpu().double().numpy() - e_ref.detach().cpu().double().numpy().reshape(-1))
                 if e_ref is not None else np.full(graph.num_graphs, np.nan))
        f_ref = graph.targets.get("forces")
        if f_ref is not None and "forces" in out:
            per_atom_err = np.linalg.norm(out["forces"].cpu().double().numpy() - f_ref.detach().cpu().double().numpy(),
                                          axis=1)
        else:
            per_atom_err = np.full(graph.num_atoms, np.nan)
        per_atom_u = (out["forces_uncertainty"].cpu().double().numpy() if "forces_uncertainty" in out
                      else np.full(graph.num_atoms, np.nan))  # a model without forces
        cols["energy_error"].append(e_err)
        cols["energy_std"].append(out["energy_std"].cpu().double().numpy())
        cols["force_error"].append(np.bincount(b, per_atom_err, graph.num_graphs) / np.maximum(counts, 1))
        cols["force_std"].append(np.bincount(b, per_atom_u, graph.num_graphs) / np.maximum(counts, 1))
        err_max, u_max = np.full(graph.num_graphs, np.nan), np.full(graph.num_graphs, np.nan)
        for k in range(graph.num_graphs):
            if counts[k]:
                err_max[k] = per_atom_err[b == k].max()
                u_max[k] = per_atom_u[b == k].max()
        cols["force_error_max"].append(err_max)
        cols["force_std_max"].append(u_max)
        cols["n_atoms"].append(counts)
    if not cols["n_atoms"]:
        raise ValueError("frame_uncertainty: no structures given")
    return FrameUncertainty(**{k: np.concatenate(v) for k, v in cols.items()})


# ---------------------------------------------------------------- committee


def check_members(models: Sequence[torch.nn.Module], names: Sequence[str] | None = None) -> None:
    """Raise :class:`CommitteeError` unless every member has the same cutoff and species.

    One neighbour list serves every member, so they must agree on the cutoff;
    they must know the same elements so that any structure one can evaluate,
    all can. ``names`` (file paths) are named in the message.
    """
    from ase.data import chemical_symbols

    names = list(names) if names is not None else [f"member {k}" for k in range(len(models))]
    if len(models) < 2:
        raise CommitteeError(f"a committee needs at least 2 members, got {len(models)}"
                             + (f" ({', '.join(names)})" if names else ""))
    for name, model in zip(names, models):
        for attr in ("cutoff", "species"):
            if not hasattr(model, attr):
                raise CommitteeError(f"committee member {name} is a {type(model).__name__}, not a clebsch Potential "
                                     f"(it has no {attr})")
    first = models[0]
    for name, model in zip(names[1:], models[1:]):
        if not math.isclose(float(model.cutoff), float(first.cutoff), rel_tol=1e-9, abs_tol=1e-12):
            raise CommitteeError(
                f"committee members differ in cutoff: {names[0]} has {float(first.cutoff):g} Å, {name} has "
                f"{float(model.cutoff):g} Å; every member must use the same cutoff (one neighbour list serves them "
                "all)")
        if sorted(model.species) != sorted(first.species):
            sym = lambda m: [chemical_symbols[z] for z in sorted(m.species)]  # noqa: E731
            raise CommitteeError(
                f"committee members differ in species: {names[0]} knows {sym(first)}, {name} knows {sym(model)}; "
                "every member must know the same elements")


def _package_header(path):
    """The cutoff and species of a packaged model file, without building the model."""
    from types import SimpleNamespace

    from .models.package import read_package

    data = read_package(path, verify=False)
    return SimpleNamespace(cutoff=float(data["cutoff"]), species=[int(z) for z in data["species"]])


def _load_member(path, device, dtype):
    from .models.package import load

    model = load(path, device=device)
    return model.to(dtype=dtype) if dtype is not None else model


class MeanModel(torch.nn.Module):
    """The mean of several models' outputs, used like one model (``model(graph)``, ``clebsch evaluate``,
    :func:`clebsch.basis.pyscf.initial_guess`).

    Every output the members share is averaged: energies, forces (the gradient of the mean energy), and
    declared targets such as densities and Kohn-Sham matrices. Members must agree on the cutoff, the species,
    the outputs and each output's declaration (layout, basis, unit); any other attribute (``targets``,
    ``outputs``, ``cutoff``, ``config``, ...) is the first member's.
    """

    def __init__(self, models: Sequence[torch.nn.Module], names: Sequence[str] | None = None):
        super().__init__()
        names = list(names) if names is not None else [f"member {k}" for k in range(len(models))]
        check_members(list(models), names)
        first = models[0]
        from .targets import as_declarations

        for name, model in zip(names[1:], models[1:]):
            if list(model.outputs) != list(first.outputs):
                raise CommitteeError(f"committee members differ in outputs: {names[0]} gives {list(first.outputs)}, "
                                     f"{name} gives {list(model.outputs)}")
            mine = as_declarations({n: first.targets[n] for n in first.outputs})
            theirs = as_declarations({n: model.targets[n] for n in model.outputs})
            differ = sorted(n for n in set(mine) | set(theirs) if mine.get(n) != theirs.get(n))
            if differ:
                raise CommitteeError(f"committee members declare {differ} differently ({names[0]} and {name}: "
                                     f"layout, basis or unit); their mean would mix two quantities")
        self.members = torch.nn.ModuleList(models)
        self.names = names

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            members = super().__getattr__("members")
            return getattr(members[0], name)

    def forward(self, graph: AtomicGraph, *args, **kwargs) -> dict:
        outs = [m(graph, *args, **kwargs) for m in self.members]
        shared = [k for k in outs[0] if all(k in o for o in outs[1:])]
        return {k: torch.stack([o[k] for o in outs]).mean(dim=0) for k in shared
                if isinstance(outs[0][k], torch.Tensor) and outs[0][k].is_floating_point()}


def is_committee_file(path) -> bool:
    """Whether ``path`` is a JSON file (a committee file; packaged models are zip archives)."""
    try:
        with open(path, "rb") as f:
            return f.read(1) == b"{"
    except OSError:
        return False


def load_model(path, device="cpu", dtype: torch.dtype | None = None):
    """A packaged model file, or a committee file's members as one :class:`MeanModel`."""
    if is_committee_file(path):
        return Committee.load(path, device=device, dtype=dtype).mean_model()
    from .models.package import load

    model = load(path, device=device)
    return model.to(dtype=dtype) if dtype is not None else model


class Committee:
    """Several models evaluated on one graph: mean prediction and spread.

    Parameters
    ----------
    models : sequence of Potential
        The members (at least 2), all with the same cutoff and species.
    names : sequence of str, optional
        What to call each member in messages (their files).
    calibration : dict, optional
        ``{"energy": s_E, "forces": s_F, "stress": s_S}``: factors the standard
        deviations are multiplied by (1 where not given); see :meth:`calibrate`.
    paths : sequence of str, optional
        The members' files, for :meth:`save`.

    Examples
    --------
    >>> from clebsch.testing import float64_model
    >>> cfg = {"name": "schnet", "species": ["H", "O"], "cutoff": 3.0, "num_layers": 1, "channels": 4}
    >>> committee = Committee([float64_model(cfg, seed) for seed in range(3)])
    >>> g = AtomicGraph.from_tensors(torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]), [8, 1, 1], 3.0)
    >>> out = committee.predict(g.to(dtype=torch.float64))
    >>> out["energy_std"].shape, out["forces_std"].shape, out["forces_uncertainty"].shape
    (torch.Size([1]), torch.Size([3, 3]), torch.Size([3]))
    """

    def __init__(self, models: Sequence[torch.nn.Module], names: Sequence[str] | None = None,
                 calibration: dict | None = None, paths: Sequence[str] | None = None):
        self.members = list(models)
        self.names = list(names) if names is not None else [f"member {k}" for k in range(len(self.members))]
        check_members(self.members, self.names)
        self.paths = list(paths) if paths is not None else None
        self.calibration = {"energy": 1.0, "forces": 1.0, "stress": 1.0, **(calibration or {})}
        self.cutoff = float(self.members[0].cutoff)
        self.species = list(self.members[0].species)

    def __len__(self) -> int:
        return len(self.members)

    # -------------------------------------------------------------- building
    @classmethod
    def from_models(cls, models, device="cpu", dtype: torch.dtype | None = None,
                    calibration: dict | None = None) -> "Committee":
        """A committee from models and/or paths of packaged model files (a committee file's path also works)."""
        if isinstance(models, (str, os.PathLike)):
            return cls.load(models, device=device, dtype=dtype)
        files = [str(m) for m in models if isinstance(m, (str, os.PathLike))]
        if len(files) == len(models):  # agree before building any model (a quick read of each file's header)
            check_members([_package_header(f) for f in files], files)
        members, names, paths = [], [], []
        for k, m in enumerate(models):
            if isinstance(m, (str, os.PathLike)):
                members.append(_load_member(m, device, dtype))
                names.append(str(m))
                paths.append(str(m))
            elif isinstance(m, torch.nn.Module):
                members.append(m.to(device=device, dtype=dtype).eval() if dtype is not None else m.to(device).eval())
                names.append(f"member {k}")
                paths.append(None)
            else:
                raise TypeError(f"committee member {k}: expected a model or a path to one, got {type(m).__name__}")
        return cls(members, names, calibration, paths if all(p is not None for p in paths) else None)

    @classmethod
    def load(cls, path, device="cpu", dtype: torch.dtype | None = None) -> "Committee":
        """Read a committee file written by :func:`save_committee`; member paths are relative to its folder."""
        data = read_committee(path)
        folder = Path(path).parent
        files = [Path(p) if Path(p).is_absolute() else folder / p for p in data["members"]]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CommitteeError(f"committee file {path} lists member model(s) that do not exist: {missing} "
                                 f"(paths are relative to {folder})")
        check_members([_package_header(f) for f in files], [str(f) for f in files])
        members = [_load_member(f, device, dtype) for f in files]
        return cls(members, [str(f) for f in files], data.get("calibration"), [str(f) for f in files])

    def save(self, path, metadata: dict | None = None) -> Path:
        """Write the committee file (the members' own files must exist: loaded from files or trained)."""
        if self.paths is None:
            raise CommitteeError("this committee was built from models in memory; save each with "
                                 "clebsch.models.package.save_package and write the committee with save_committee")
        return save_committee(path, self.paths, self.calibration, metadata)

    def mean_model(self) -> MeanModel:
        """The members' mean as one model (:class:`MeanModel`): every shared output averaged."""
        return MeanModel(self.members, self.names)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Committee":
        self.members = [m.to(device=device, dtype=dtype) for m in self.members]
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.members[0].atomic_energies.dtype

    @property
    def device(self) -> torch.device:
        return self.members[0].atomic_energies.device

    # -------------------------------------------------------------- evaluating
    def evaluate_members(self, graph: AtomicGraph, compute_stress: bool | None = None) -> dict:
        """Every member's outputs stacked: ``energy`` [K, B], ``atomic_energies`` [K, N], ``forces`` [K, N, 3]
        and, for periodic structures, ``stress`` [K, B, 3, 3]."""
        if compute_stress is None:
            compute_stress = bool(graph.pbc.all(dim=1).any())
        outs = []
        with torch.no_grad():
            for m in self.members:  # members in another dtype or on another device get the graph in theirs
                ref = m.atomic_energies
                out = m(graph.to(device=ref.device, dtype=ref.dtype), compute_forces=True,
                        compute_stress=compute_stress)
                outs.append({k: v.to(device=self.device, dtype=self.dtype) for k, v in out.items()
                             if isinstance(v, torch.Tensor)})
        keys = ["energy", "atomic_energies", "forces"] + (["stress"] if compute_stress else [])
        return {k: torch.stack([o[k] for o in outs]) for k in keys if all(k in o for o in outs)}

    def predict(self, graph: AtomicGraph, compute_stress: bool | None = None) -> dict:
        """Committee mean and (calibrated) standard deviation for one structure or a batch.

        Returns ``energy`` [B], ``energy_std`` [B], ``atomic_energies`` [N], ``forces`` [N, 3],
        ``forces_std`` [N, 3] (per component), ``forces_uncertainty`` [N] (per atom, the norm of
        ``forces_std``), for periodic structures ``stress`` and ``stress_std`` [B, 3, 3], and the
        members' own ``energy_members`` [K, B] and ``forces_members`` [K, N, 3].
        """
        stacked = self.evaluate_members(graph, compute_stress)
        cal = self.calibration
        out = {}
        for key, factor in (("energy", cal["energy"]), ("atomic_energies", None), ("forces", cal["forces"]),
                            ("stress", cal["stress"])):
            if key not in stacked:
                continue
            values = stacked[key]
            out[key] = values.mean(0)
            if factor is not None:
                out[f"{key}_std"] = values.std(0, correction=1) * factor
        out["forces_uncertainty"] = torch.linalg.norm(out["forces_std"], dim=-1)
        out["energy_members"] = stacked["energy"]
        out["forces_members"] = stacked["forces"]
        return out

    def calibrate(self, graphs, batch_size: int = 10) -> dict:
        """Fit the calibration factors on frames with references (validation frames), by maximum likelihood.

        ``s_E^2 = mean((E_mean - E_ref)^2 / std_E^2)`` over structures and ``s_F^2`` likewise over force
        components (:func:`fit_scale`), so that the calibrated standard deviations are those of a Gaussian
        fitted to the committee's errors. Returns (and keeps) the factors.
        """
        previous = dict(self.calibration)
        self.calibration = {**previous, "energy": 1.0, "forces": 1.0}
        res = {"energy": [], "forces": []}
        var = {"energy": [], "forces": []}
        try:
            for graph in _chunks(graphs, batch_size):
                out = self.predict(graph)
                for key in ("energy", "forces"):
                    ref = graph.targets.get(key)
                    if ref is None:
                        continue
                    res[key].append((out[key] - ref.to(out[key]).reshape(out[key].shape)).double().cpu().reshape(-1))
                    var[key].append((out[f"{key}_std"] ** 2).double().cpu().reshape(-1))
        except BaseException:
            self.calibration = previous
            raise
        fitted = {}
        for key in ("energy", "forces"):
            if res[key]:
                fitted[key] = fit_scale(torch.cat(res[key]).numpy(), torch.cat(var[key]).numpy())
        if not fitted:
            self.calibration = previous
            raise ValueError("Committee.calibrate: the frames carry no reference energy or forces")
        self.calibration.update(fitted)
        return dict(self.calibration)


def read_committee(path) -> dict:
    """The checked content of a committee file (``{"format", "members", "calibration", ...}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no committee file at {path}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CommitteeError(f"{path} is not a committee file: not JSON ({err}); a committee file is the "
                             "committee.json that `clebsch train` writes with training.committee > 1") from None
    if not isinstance(data, dict) or data.get("format") != COMMITTEE_FORMAT:
        raise CommitteeError(f"{path} is not a committee file (no \"format\": \"{COMMITTEE_FORMAT}\")")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise CommitteeError(f"{path} is in committee format {data['format_version']}; this clebsch reads formats up "
                             f"to {FORMAT_VERSION}. Upgrade clebsch to load it.")
    members = data.get("members")
    if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, str) for m in members):
        raise CommitteeError(f"{path}: 'members' must list at least 2 model files, got {members!r}")
    cal = data.get("calibration") or {}
    bad = {k: v for k, v in cal.items() if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v))}
    if bad:
        raise CommitteeError(f"{path}: calibration factors must be positive numbers, got {bad}")
    return data


def save_committee(path, members: Sequence, calibration: dict | None = None, metadata: dict | None = None) -> Path:
    """Write a committee file: JSON listing the members' packaged model files (relative to its folder when
    they lie below it), the calibration factors and free-form metadata. Written atomically."""
    from ._atomic import atomic_write_text

    path = Path(path)
    folder = path.parent.resolve()
    listed = []
    for m in members:
        p = Path(m).resolve()
        if not p.is_file():
            raise FileNotFoundError(f"committee member {m} does not exist")
        try:
            listed.append(str(p.relative_to(folder)))
        except ValueError:
            listed.append(str(p))
    if len(listed) < 2:
        raise CommitteeError(f"a committee needs at least 2 members, got {len(listed)}")
    payload = {"format": COMMITTEE_FORMAT, "format_version": FORMAT_VERSION, "members": listed,
               "calibration": {k: float(v) for k, v in (calibration or {}).items()}, "metadata": metadata or {}}
    atomic_write_text(json.dumps(payload, indent=2) + "\n", path)
    return path


# ---------------------------------------------------------------- LLPR


def llpr_path(model_path) -> Path:
    """Where the LLPR state of a packaged model is kept: ``model.pt`` -> ``model.llpr.pt``.

    >>> str(llpr_path("runs/a/model.pt"))
    'runs/a/model.llpr.pt'
    """
    p = Path(model_path)
    return p.with_name(p.stem + ".llpr.pt")


def _last_linear(model) -> torch.nn.Linear:
    head = getattr(model, "energy_head", None)
    net = getattr(head, "net", None)
    last = net[-1] if isinstance(net, torch.nn.Sequential) else net
    if not isinstance(last, torch.nn.Linear) or last.out_features != 1:
        raise TypeError(f"LLPR needs a clebsch Potential whose energy readout ends in a linear layer with one output; "
                        f"got a {type(model).__name__}")
    return last


def _jacobian(f: torch.Tensor, positions: torch.Tensor, batched: bool = True) -> tuple[torch.Tensor, bool]:
    """``df[:, h] / dr`` for every hidden unit ``h``: [H, N, 3] (structures of a batch do not mix).

    All units in one batched backward pass where every operation has a batching rule, else one pass per
    unit; returns the Jacobian and whether the batched pass worked.
    """
    hidden = f.shape[1]
    jac = None
    if batched:
        seeds = torch.eye(hidden, dtype=f.dtype, device=f.device)[:, None, :].expand(hidden, f.shape[0], hidden)
        try:
            jac = torch.autograd.grad(f, positions, grad_outputs=seeds, is_grads_batched=True, retain_graph=True,
                                      allow_unused=True)[0]
            if jac is None:
                jac = torch.zeros(hidden, *positions.shape, dtype=f.dtype, device=f.device)
        except RuntimeError:  # an operation without a batching rule (a native kernel): one unit at a time
            batched = False
    if jac is None:
        rows = [torch.autograd.grad(f[:, h].sum(), positions, retain_graph=True, allow_unused=True)[0]
                for h in range(hidden)]
        jac = torch.stack([torch.zeros_like(positions) if r is None else r for r in rows])
    return jac, batched


class LLPR:
    """Last-layer prediction rigidity: an uncertainty from one model.

    Build it with :meth:`fit`; see the module docstring for the formulas.

    Parameters
    ----------
    model : Potential
    covariance : Tensor [H, H]
        ``sum_train f f^T + force_weight * sum_train J J^T`` (float64), without the regulariser.
    lam : float
        The regulariser ``lambda`` added to the diagonal.
    alpha_energy, alpha_forces : float
        Calibration factors of the energy and force uncertainties.
    force_weight : float
        Weight of the force Jacobians in ``covariance`` (kept for the record).
    n_train : int
        Training structures the covariance was built from.

    Examples
    --------
    >>> from ase.build import molecule
    >>> from clebsch.testing import float64_model
    >>> model = float64_model({"name": "schnet", "species": ["H", "O"], "cutoff": 3.0, "num_layers": 1,
    ...                        "channels": 4, "readout_hidden": 4}, randomize_zeros=True)
    >>> frames = []
    >>> for i in range(8):
    ...     atoms = molecule("H2O")
    ...     atoms.rattle(0.05, seed=i)
    ...     frames.append(AtomicGraph.from_ase(atoms, 3.0).to(dtype=torch.float64))
    >>> llpr = LLPR.fit(model, frames)
    >>> llpr.energy_uncertainty(frames[0]).shape, llpr.forces_uncertainty(frames[0]).shape
    (torch.Size([1]), torch.Size([3]))
    """

    def __init__(self, model, covariance: torch.Tensor, lam: float, alpha_energy: float = 1.0,
                 alpha_forces: float = 1.0, force_weight: float = 0.0, n_train: int = 0):
        self.model = model
        self.last = _last_linear(model)
        hidden = self.last.in_features
        covariance = torch.as_tensor(covariance, dtype=torch.float64).cpu()
        if covariance.shape != (hidden, hidden):
            raise ValueError(f"LLPR covariance has shape {tuple(covariance.shape)}; the model's readout has "
                             f"{hidden} last-layer features, so it must be ({hidden}, {hidden})")
        self.covariance = covariance
        self.force_weight = float(force_weight)
        self.n_train = int(n_train)
        self.alpha_energy = float(alpha_energy)
        self.alpha_forces = float(alpha_forces)
        self.set_lambda(lam)

    @property
    def hidden(self) -> int:
        return self.last.in_features

    def set_lambda(self, lam: float) -> None:
        """Set the regulariser and recompute ``(C + lambda I)^-1``."""
        if not (lam >= 0 and math.isfinite(lam)):
            raise ValueError(f"LLPR lambda must be a finite number >= 0, got {lam}")
        self.lam = float(lam)
        eye = torch.eye(self.hidden, dtype=torch.float64)
        try:
            self.inverse = torch.linalg.inv(self.covariance + self.lam * eye)
        except RuntimeError:
            raise ValueError(f"LLPR covariance + lambda I is singular (lambda = {lam}); use a larger lambda") from None

    # -------------------------------------------------------------- features
    def features(self, graph: AtomicGraph, forces: bool = True) -> dict:
        """One pass of the energy path: ``energy`` [B], ``features`` f [B, H] and, with ``forces``,
        ``forces`` [N, 3] and ``jacobian`` df/dr [H, N, 3]; detached, in the model's dtype.

        ``energy - sum_i E0[z_i] = w . f`` (plus the physics terms, if any), ``w`` the last layer's weights.
        """
        model = self.model
        forces = forces and not getattr(model, "topological", False)
        dtype = model.atomic_energies.dtype
        graph = graph.to(device=model.atomic_energies.device, dtype=dtype)
        captured = []
        handle = self.last.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            with torch.enable_grad() if forces else torch.no_grad():
                positions = graph.positions.detach().requires_grad_(forces)
                vectors = graph.edge_vectors(positions=positions)
                species = model.species_index(graph.numbers, graph.batch)
                e_atom, _ = model.atomic_energies_and_features(
                    species, graph.edge_index, vectors, **model._physics_inputs(graph, positions, graph.cell))
                phi = captured[0]
                n = species.shape[0]
                g = phi[:n] - phi[n:][species]
                zbl = model.physics.zbl if model.physics is not None else None
                if zbl is not None and zbl.blend:
                    g = g * zbl.learned_weight(species, graph.edge_index, vectors)[:, None]
                g = g * model.scale.to(g.dtype)
                f = g.new_zeros(graph.num_graphs, g.shape[1]).index_add(0, graph.batch, g)
                energy = e_atom.new_zeros(graph.num_graphs).index_add(0, graph.batch, e_atom)
                out = {"energy": energy.detach(), "features": f.detach()}
                if forces:
                    grad = torch.autograd.grad(energy.sum(), positions, retain_graph=True, allow_unused=True)[0]
                    out["forces"] = -grad.detach() if grad is not None else torch.zeros_like(positions)
                    jac, self._batched = _jacobian(f, positions, getattr(self, "_batched", True))
                    out["jacobian"] = jac.detach()
        finally:
            handle.remove()
        return out

    # -------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, model, train_graphs, valid_graphs=None, force_weight: float = 1.0, batch_size: int = 10,
            lambdas: Sequence[float] | None = None, log=None) -> "LLPR":
        """Build the covariance from the training structures and, given validation structures, calibrate.

        Parameters
        ----------
        model : Potential
            A trained model (in eval mode).
        train_graphs : sequence of AtomicGraph
            The structures the model was trained on.
        valid_graphs : sequence of AtomicGraph, optional
            Structures with reference energies and/or forces for :meth:`calibrate`. Without them
            ``lambda`` is ``1e-6 * trace(C) / H`` and the ``alpha`` are 1 (uncalibrated).
        force_weight : float
            Weight of the force Jacobians in the covariance (0: energies only). On held-out ethanol frames
            (``benchmarks/uncertainty.py``) 1 orders the frames by force error better than 0, and 0 orders
            them by energy error better.
        batch_size : int
        lambdas : sequence of float, optional
            Values of ``lambda`` to try in :meth:`calibrate` (default: a log grid relative to ``trace(C) / H``).
        """
        last = _last_linear(model)
        hidden = last.in_features
        probe = cls(model, torch.eye(hidden, dtype=torch.float64), 1.0, force_weight=force_weight)
        with_forces = force_weight > 0 and not getattr(model, "topological", False)
        cov = torch.zeros(hidden, hidden, dtype=torch.float64)
        n = 0
        for graph in _chunks(train_graphs, batch_size):
            out = probe.features(graph, forces=with_forces)
            f = out["features"].double().cpu()
            cov += f.T @ f
            if with_forces:
                jac = out["jacobian"].double().cpu().reshape(hidden, -1)
                cov += force_weight * (jac @ jac.T)
            n += graph.num_graphs
        if n == 0:
            raise ValueError("LLPR.fit: no training structures given")
        scale = float(torch.trace(cov)) / hidden
        if not scale > 0:
            raise ValueError("LLPR.fit: the last-layer features are zero on every training structure; is the model "
                             "trained (its readout's hidden layer may be dead)?")
        llpr = cls(model, cov, 1e-6 * scale, force_weight=force_weight, n_train=n)
        if hasattr(probe, "_batched"):
            llpr._batched = probe._batched
        if valid_graphs is not None:
            llpr.calibrate(valid_graphs, batch_size=batch_size, lambdas=lambdas, log=log)
        return llpr

    def calibrate(self, graphs, batch_size: int = 10, lambdas: Sequence[float] | None = None, log=None) -> dict:
        """Choose ``lambda`` and the ``alpha`` by maximum likelihood on structures with references.

        For each ``lambda`` the likelihood's best ``alpha^2 = mean(r^2 / u)`` is closed-form (:func:`fit_scale`),
        with ``u = f^T (C + lambda I)^-1 f`` (energies, per structure) or ``J^T (C + lambda I)^-1 J`` (forces, per
        component); the ``lambda`` kept is the one with the smallest sum of the mean Gaussian negative
        log-likelihoods of the energies and the forces (those present). Returns ``{"lambda", "alpha_energy",
        "alpha_forces", "nll"}``.
        """
        evals, evecs = torch.linalg.eigh(self.covariance)
        evals = evals.clamp(min=0.0)
        scale = float(evals.mean())
        if lambdas is None:
            lambdas = [scale * 10.0 ** k for k in np.arange(-12.0, 1.01, 0.5)]
        lambdas = [float(x) for x in lambdas]
        if not lambdas or any(not (x > 0 and math.isfinite(x)) for x in lambdas):
            raise ValueError(f"LLPR.calibrate: lambdas must be positive finite numbers, got {lambdas}")
        proj = {"energy": [], "forces": []}
        res = {"energy": [], "forces": []}
        for graph in _chunks(graphs, batch_size):
            want_forces = "forces" in graph.targets
            out = self.features(graph, forces=want_forces)
            ref = graph.targets.get("energy")
            if ref is not None:
                proj["energy"].append((out["features"].double().cpu() @ evecs) ** 2)
                res["energy"].append(out["energy"].double().cpu() - ref.detach().double().cpu().reshape(-1))
            if want_forces and "jacobian" in out:
                jac = out["jacobian"].double().cpu().reshape(self.hidden, -1)
                proj["forces"].append((evecs.T @ jac).T ** 2)
                diff = out["forces"] - graph.targets["forces"].to(out["forces"])
                res["forces"].append(diff.double().cpu().reshape(-1))
        present = [k for k in ("energy", "forces") if res[k]]
        if not present:
            raise ValueError("LLPR.calibrate: the structures carry no reference energy or forces")
        cat = {k: (torch.cat(proj[k]).numpy(), torch.cat(res[k]).numpy()) for k in present}
        e = evals.numpy()
        best = None
        for lam in lambdas:
            nll, alphas = 0.0, {}
            for key, (p, r) in cat.items():
                u = p @ (1.0 / (e + lam))
                keep = np.isfinite(r) & (u > 0)
                a = fit_scale(r[keep], u[keep])
                alphas[key] = a
                nll += 0.5 * (math.log(2 * math.pi * a * a) + float(np.mean(np.log(u[keep]))) + 1.0)
            if log is not None:
                log(f"lambda {lam:.3g}: nll {nll:.4f}, " + ", ".join(f"alpha_{k} {v:.3g}" for k, v in alphas.items()))
            if best is None or nll < best[0]:
                best = (nll, lam, alphas)
        nll, lam, alphas = best
        self.set_lambda(lam)
        self.alpha_energy = alphas.get("energy", self.alpha_energy)
        self.alpha_forces = alphas.get("forces", self.alpha_forces)
        return {"lambda": lam, "alpha_energy": self.alpha_energy, "alpha_forces": self.alpha_forces, "nll": nll}

    # -------------------------------------------------------------- predicting
    def predict(self, graph: AtomicGraph, forces: bool = True) -> dict:
        """The model's ``energy`` [B] and ``forces`` [N, 3] with ``energy_std`` [B], ``forces_std`` [N, 3]
        (per component) and ``forces_uncertainty`` [N] (per atom), in the model's dtype."""
        out = self.features(graph, forces=forces)
        inv = self.inverse.to(out["features"])
        f = out["features"]
        result = {"energy": out["energy"],
                  "energy_std": self.alpha_energy * torch.einsum("bh,hk,bk->b", f, inv, f).clamp(min=0).sqrt()}
        if "jacobian" in out:
            jac = out["jacobian"]
            var = torch.einsum("hnc,hk,knc->nc", jac, inv, jac).clamp(min=0)
            result["forces"] = out["forces"]
            result["forces_std"] = self.alpha_forces * var.sqrt()
            result["forces_uncertainty"] = torch.linalg.norm(result["forces_std"], dim=-1)
        return result

    def energy_uncertainty(self, graph: AtomicGraph) -> torch.Tensor:
        """Calibrated energy standard deviation per structure [B] (eV)."""
        return self.predict(graph, forces=False)["energy_std"]

    def forces_uncertainty(self, graph: AtomicGraph) -> torch.Tensor:
        """Calibrated force uncertainty per atom [N] (eV/Å): the norm of the per-component standard deviations."""
        return self.predict(graph, forces=True)["forces_uncertainty"]

    # -------------------------------------------------------------- files
    def state_dict(self) -> dict:
        return {
            "format": LLPR_FORMAT,
            "format_version": FORMAT_VERSION,
            "covariance": self.covariance.clone(),
            "lambda": self.lam,
            "alpha_energy": self.alpha_energy,
            "alpha_forces": self.alpha_forces,
            "force_weight": self.force_weight,
            "n_train": self.n_train,
            "readout_weight": self.last.weight.detach().double().cpu().reshape(-1).clone(),
        }

    def save(self, path, model_path=None) -> Path:
        """Write the LLPR state (a few kB) to ``path``, by convention :func:`llpr_path` of the model file.

        ``model_path`` (the packaged model it belongs to) is recorded relative to the file, so that
        :meth:`load` can find the model by itself.
        """
        from ._atomic import atomic_save

        path = Path(path)
        state = self.state_dict()
        if model_path is not None:
            state["model"] = os.path.relpath(Path(model_path).resolve(), path.parent.resolve())
        atomic_save(state, path)
        return path

    @classmethod
    def load(cls, path, model=None, device="cpu", dtype: torch.dtype | None = None) -> "LLPR":
        """Read an LLPR state; ``model`` is the model (or its file), else the file recorded by :meth:`save`.

        Raises :class:`ValueError` when the state was fitted for another model (its last-layer weights differ).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no LLPR file at {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{path} is not an LLPR file ({type(err).__name__}: {err})") from None
        if not isinstance(state, dict) or state.get("format") != LLPR_FORMAT:
            raise ValueError(f"{path} is not an LLPR file (no format '{LLPR_FORMAT}'); write one with LLPR.save")
        if model is None:
            if not state.get("model"):
                raise ValueError(f"{path} records no model file; pass the model: LLPR.load(path, model)")
            model = path.parent / state["model"]
        if isinstance(model, (str, os.PathLike)):
            model = _load_member(model, device, dtype)
        last = _last_linear(model)
        w = last.weight.detach().double().cpu().reshape(-1)
        stored = state["readout_weight"].double()
        if w.shape != stored.shape or not torch.allclose(w, stored, rtol=1e-4, atol=1e-6 * float(stored.abs().max())):
            raise ValueError(f"{path} was fitted for another model: its last-layer weights differ from this model's "
                             "(fit it again with LLPR.fit on the model's training structures)")
        return cls(model, state["covariance"], state["lambda"], state["alpha_energy"], state["alpha_forces"],
                   state.get("force_weight", 0.0), state.get("n_train", 0))
