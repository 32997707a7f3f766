"""The packaged model: one file that rebuilds a ready model.

The file is ``torch.save`` of a plain dict::

    format            "clebsch-model"
    format_version    FORMAT_VERSION
    clebsch_version   version of clebsch that wrote it
    config            the model config (``build_model(config)`` rebuilds the network)
    state_dict        the weights (the EMA weights when training used an EMA)
    species           atomic numbers the model knows, in type-index order
    type_map          {symbol: type index}
    cutoff            Å
    atomic_energies   {symbol: eV}
    units             {"energy": "eV", "length": "Å", ...}
    dtype             "float32" or "float64"
    metadata          free-form (training config, test metrics, ...)
    weights_sha256    checksum of the weights (see :func:`weights_checksum`)
    energy_heads      ["default", further heads...] (only a model with further energy heads)

A model trained with further energy heads (multi-head fine-tuning, see
:mod:`clebsch.train.finetune`) carries each one in its ``state_dict`` as
``energy_heads.<name>.readout.*`` (the readout), ``energy_heads.<name>.atomic_energies``
and ``energy_heads.<name>.scale``. :func:`load` gives the model with its own
(``"default"``) head, or with ``head=<name>`` the one whose readout, reference
energies and scale take the place of the model's own.

It holds only tensors and plain Python values, so :func:`load` reads it with
``torch.load(weights_only=True)`` and never runs pickled code. :func:`load`
recomputes the checksum and refuses a file whose weights were altered after it
was written; files written before the checksum existed (no ``weights_sha256``)
still load.

The packaged model lives with the models (not with training) so that the
calculators, which never import :mod:`clebsch.train`, can read it;
:mod:`clebsch.train.package` re-exports it.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch
from ase.data import chemical_symbols

from .. import __version__
from .._atomic import atomic_save

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PackageError",
    "save_package",
    "read_package",
    "load",
    "model_from_package",
    "describe",
    "weights_checksum",
]

FORMAT = "clebsch-model"
FORMAT_VERSION = 1
UNITS = {"length": "Å", "energy": "eV", "forces": "eV/Å", "stress": "eV/Å³", "dipole": "e·Å"}


class PackageError(ValueError):
    """A file that is not a readable clebsch model."""


def weights_checksum(state_dict: dict) -> str:
    """SHA-256 (hex) of a state dict: names, dtypes, shapes and raw bytes, in sorted name order.

    >>> import torch
    >>> a = weights_checksum({"w": torch.ones(2)})
    >>> a == weights_checksum({"w": torch.ones(2)}), a == weights_checksum({"w": torch.tensor([1.0, 1.5])})
    (True, False)
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode() + b"\0" + str(tensor.dtype).encode() + b"\0")
        digest.update(repr(tuple(tensor.shape)).encode() + b"\0")
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_package(model, path, metadata: dict | None = None) -> Path:
    """Write ``model`` (a :class:`~clebsch.models.Potential`) to one file, atomically.

    Returns the path written.
    """
    path = Path(path)
    species = [int(z) for z in model.species]
    e0 = model.atomic_energies.detach().cpu().tolist()
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    package = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "clebsch_version": __version__,
        "config": _plain(model.config),
        "state_dict": state_dict,
        "species": species,
        "type_map": {chemical_symbols[z]: i for i, z in enumerate(species)},
        "cutoff": float(model.cutoff),
        "atomic_energies": {chemical_symbols[z]: float(e) for z, e in zip(species, e0)},
        "units": {**UNITS, **{n: model.targets[n].unit for n in model.outputs
                               if n in getattr(model, "targets", {}) and model.targets[n].unit}},
        "dtype": str(model.atomic_energies.dtype).removeprefix("torch."),
        "outputs": list(model.outputs),
        "metadata": _plain(metadata or {}),
        "weights_sha256": weights_checksum(state_dict),
    }
    heads = _head_names(state_dict)
    if len(heads) > 1:
        package["energy_heads"] = heads
    atomic_save(package, path)
    return path


def _plain(value):
    """Plain Python (dicts, lists, str, numbers, None) for weights_only loading."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _pickled_names(path: Path) -> bytes:
    """The pickle stream of a torch archive (names of the dict keys appear in it as plain bytes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            return archive.read(name) if name else b""
    except (OSError, zipfile.BadZipFile, KeyError):
        return b""


def _is_training_checkpoint(data) -> bool:
    return isinstance(data, dict) and "model_config" in data and "model" in data


def _checkpoint_error(path: Path) -> PackageError:
    run_model = path.parent.parent / "model.pt" if path.parent.name == "checkpoints" else None
    if run_model is not None and run_model.is_file():
        instead = f"pass the run's packaged model {str(run_model)!r} instead"
    else:
        instead = (
            "pass the run's packaged model RUN_DIR/model.pt instead, which `clebsch train` writes when training "
            "ends (for a run that was stopped early, `clebsch train --resume RUN_DIR` finishes it and writes model.pt)"
        )
    return PackageError(
        f"{path} is a training checkpoint (the trainer's state, written into RUN_DIR/checkpoints/), "
        f"not a packaged model; {instead}"
    )


def read_package(path, verify: bool = True) -> dict:
    """The raw dict of a packaged model, checked.

    Parameters
    ----------
    path : str or Path
    verify : bool
        Recompute the weights' checksum and compare it with the stored one
        (files written before checksums were stored have none and are not checked).

    Raises
    ------
    FileNotFoundError
        No such file.
    PackageError
        The file is corrupted or truncated, its weights do not match their
        checksum, it is not a clebsch model (a training checkpoint is named as
        such), or it was written in a newer format than this clebsch reads.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model file at {path}")
    if path.is_dir():
        inside = path / "model.pt"
        hint = f"; the packaged model of a training run is {str(inside)!r}" if inside.is_file() else ""
        raise PackageError(f"{path} is a directory, not a model file{hint}")
    if not zipfile.is_zipfile(path):
        raise PackageError(
            f"{path} is not a clebsch model: not a torch.save archive (corrupted, truncated or another format)"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if b"model_config" in _pickled_names(path):
            raise _checkpoint_error(path) from None
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise PackageError(
                f"{path} is not a clebsch packaged model: it holds Python objects other than tensors and plain "
                f"values; write one with `clebsch train` or clebsch.models.package.save_package"
            ) from None
        raise PackageError(f"{path} is corrupted or truncated and cannot be read ({type(err).__name__}: {err})") from None
    except Exception as err:  # noqa: BLE001
        raise PackageError(f"{path} is corrupted or truncated and cannot be read ({type(err).__name__}: {err})") from None
    if _is_training_checkpoint(data):
        raise _checkpoint_error(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        kind = type(data).__name__
        raise PackageError(
            f"{path} is not a clebsch packaged model (a torch file holding a {kind}"
            + (f" with keys {sorted(map(str, data))[:8]}" if isinstance(data, dict) else "")
            + "); write one with `clebsch train` or clebsch.models.package.save_package"
        )
    version = data.get("format_version")
    if not isinstance(version, int):
        raise PackageError(f"{path} has no valid format_version; the file is damaged")
    if version > FORMAT_VERSION:
        raise PackageError(
            f"{path} was written by clebsch {data.get('clebsch_version', '?')} in package format {version}; "
            f"this clebsch ({__version__}) reads formats up to {FORMAT_VERSION}. Upgrade clebsch to load it."
        )
    missing = [k for k in ("config", "state_dict", "species", "cutoff") if k not in data]
    if missing:
        raise PackageError(f"{path} is damaged: the package lacks {missing}")
    if not isinstance(data["state_dict"], dict) or not all(
        isinstance(v, torch.Tensor) for v in data["state_dict"].values()
    ):
        raise PackageError(f"{path} is damaged: its state_dict is not a dict of tensors")
    if verify and data.get("weights_sha256") is not None:
        found = weights_checksum(data["state_dict"])
        if found != data["weights_sha256"]:
            raise PackageError(
                f"{path} is damaged: its weights do not match the checksum stored with them (sha256 "
                f"{found[:12]}... instead of {str(data['weights_sha256'])[:12]}...), so the file was altered after "
                f"it was written; copy or package the model again"
            )
    return data


_HEADS = "energy_heads."


def _head_names(state_dict: dict) -> list[str]:
    """``["default", ...]``: the model's own energy head and the further ones its weights hold."""
    return ["default", *sorted({k[len(_HEADS):].split(".", 1)[0] for k in state_dict if k.startswith(_HEADS)})]


def _select_head(state_dict: dict, head: str | None, path) -> dict:
    """The weights of the model without further heads, with ``head``'s in place of its own energy head."""
    state = {k: v for k, v in state_dict.items() if not k.startswith(_HEADS)}
    if head in (None, "default"):
        return state
    names = _head_names(state_dict)
    if head not in names:
        raise PackageError(f"{path} has no energy head {head!r}; its heads: {', '.join(names)}")
    prefix = f"{_HEADS}{head}."
    for key, value in state_dict.items():
        if key.startswith(prefix):
            rest = key[len(prefix):]
            state[("energy_head." + rest.removeprefix("readout.")) if rest.startswith("readout.") else rest] = value
    return state


def load(path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, head: str | None = None):
    """Load a packaged model, ready to use: weights loaded, in eval mode.

    Parameters
    ----------
    path : str or Path
        A file written by :func:`save_package` (``clebsch train`` writes ``model.pt``).
    device : str or torch.device
    dtype : torch.dtype, optional
        Cast the model (default: the dtype it was saved in).
    head : str, optional
        The energy head to predict with, for a model with further energy heads
        (``model.package["energy_heads"]`` lists them); default: the model's own.

    Returns
    -------
    clebsch.models.Potential
        With ``model.package`` holding the file's metadata (everything but the weights).
    """
    return model_from_package(read_package(path), path, device, dtype, head)


def model_from_package(data: dict, path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                       head: str | None = None):
    """The model of a package dict read by :func:`read_package` (see :func:`load`)."""
    from . import build_model  # importing clebsch.models registers every family

    saved_dtype = getattr(torch, str(data.get("dtype", "float32")), torch.float32)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(saved_dtype)
    try:
        model = build_model(dict(data["config"]))
    except Exception as err:  # noqa: BLE001
        raise PackageError(f"{path}: cannot rebuild the model from its config ({err})") from None
    finally:
        torch.set_default_dtype(previous)
    try:
        model.load_state_dict(_select_head(data["state_dict"], head, path))
    except RuntimeError as err:
        raise PackageError(f"{path}: the weights do not fit the model config ({err})") from None
    model = model.to(device=device, dtype=dtype or saved_dtype)
    model.eval()
    model.package = {k: v for k, v in data.items() if k != "state_dict"}
    model.package["energy_heads"] = _head_names(data["state_dict"])
    model.package["head"] = head or "default"
    return model


def describe(path) -> str:
    """A human-readable summary of a packaged model (``clebsch info``)."""
    data = read_package(path)
    n_params = sum(v.numel() for k, v in data["state_dict"].items())
    config = data["config"]
    lines = [
        f"file             {path}",
        f"model            {config.get('name')}",
        f"clebsch version  {data.get('clebsch_version')} (package format {data['format_version']})",
        f"species          {', '.join(data.get('type_map', {}))}",
        f"cutoff           {data['cutoff']} Å",
        f"outputs          {', '.join(data.get('outputs', []))}",
        f"dtype            {data.get('dtype')}",
        f"weights          {n_params} numbers (state_dict)",
        "atomic energies  " + ", ".join(f"{s}: {e:.6f}" for s, e in data.get("atomic_energies", {}).items()) + " eV",
        "units            " + ", ".join(f"{k} {v}" for k, v in data.get("units", {}).items()),
        *([f"energy heads     {', '.join(_head_names(data['state_dict']))} (default predicts; load(path, head=...) "
           "selects another)"] if len(_head_names(data["state_dict"])) > 1 else []),
        "checksum         "
        + (f"sha256 {data['weights_sha256'][:16]}... (verified)" if data.get("weights_sha256")
           else "none (written before checksums were stored)"),
    ]
    from ..targets import resolve_targets

    try:
        targets = resolve_targets(config.get("targets"))
        for name in data.get("outputs", []):
            if name in targets:
                lines.append(f"  {targets[name].describe()}")
    except ValueError:
        pass
    hyper = {k: v for k, v in config.items()
             if k not in ("name", "species", "cutoff", "atomic_energies", "outputs", "targets")}
    lines.append("hyperparameters  " + ", ".join(f"{k}={v}" for k, v in hyper.items()))
    meta = data.get("metadata", {})
    if meta.get("test_metrics"):
        allm = meta["test_metrics"].get("all", {})
        lines.append(
            "test metrics     " + ", ".join(f"{k}={v:.3f}" for k, v in allm.items() if k.endswith("mae"))
        )
    return "\n".join(lines)
