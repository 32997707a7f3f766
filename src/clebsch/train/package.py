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

It holds only tensors and plain Python values, so :func:`load` reads it with
``torch.load(weights_only=True)`` and never runs pickled code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from ase.data import chemical_symbols

from .. import __version__
from .checkpoint import atomic_save

__all__ = ["FORMAT", "FORMAT_VERSION", "PackageError", "save_package", "read_package", "load", "describe"]

FORMAT = "clebsch-model"
FORMAT_VERSION = 1
UNITS = {"length": "Å", "energy": "eV", "forces": "eV/Å", "stress": "eV/Å³", "dipole": "e·Å"}


class PackageError(ValueError):
    """A file that is not a readable clebsch model."""


def save_package(model, path, metadata: dict | None = None) -> Path:
    """Write ``model`` (a :class:`~clebsch.models.Potential`) to one file, atomically.

    Returns the path written.
    """
    path = Path(path)
    species = [int(z) for z in model.species]
    e0 = model.atomic_energies.detach().cpu().tolist()
    dtype = next(iter(model.state_dict().values())).dtype if model.state_dict() else torch.float32
    package = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "clebsch_version": __version__,
        "config": _plain(model.config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "species": species,
        "type_map": {chemical_symbols[z]: i for i, z in enumerate(species)},
        "cutoff": float(model.cutoff),
        "atomic_energies": {chemical_symbols[z]: float(e) for z, e in zip(species, e0)},
        "units": dict(UNITS),
        "dtype": str(model.atomic_energies.dtype).removeprefix("torch."),
        "outputs": list(model.outputs),
        "metadata": _plain(metadata or {}),
    }
    del dtype
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


def read_package(path) -> dict:
    """The raw dict of a packaged model, checked.

    Raises
    ------
    FileNotFoundError
        No such file.
    PackageError
        The file is corrupted or truncated, is not a clebsch model, or was
        written in a newer format than this clebsch reads.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    if not zipfile.is_zipfile(path):
        raise PackageError(
            f"{path} is not a clebsch model: not a torch.save archive (corrupted, truncated or another format)"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise PackageError(f"{path} is corrupted or truncated and cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        kind = type(data).__name__
        raise PackageError(
            f"{path} is not a clebsch packaged model (a torch file holding a {kind}"
            + (f" with keys {sorted(map(str, data))[:8]}" if isinstance(data, dict) else "")
            + "); write one with `clebsch train` or clebsch.train.package.save_package"
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
    return data


def load(path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load a packaged model, ready to use: weights loaded, in eval mode.

    Parameters
    ----------
    path : str or Path
        A file written by :func:`save_package` (``clebsch train`` writes ``model.pt``).
    device : str or torch.device
    dtype : torch.dtype, optional
        Cast the model (default: the dtype it was saved in).

    Returns
    -------
    clebsch.models.Potential
        With ``model.package`` holding the file's metadata (everything but the weights).
    """
    from ..models import build_model
    from .config import _import_families

    data = read_package(path)
    _import_families()
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
        model.load_state_dict(data["state_dict"])
    except RuntimeError as err:
        raise PackageError(f"{path}: the weights do not fit the model config ({err})") from None
    model = model.to(device=device, dtype=dtype or saved_dtype)
    model.eval()
    model.package = {k: v for k, v in data.items() if k != "state_dict"}
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
        f"units            " + ", ".join(f"{k} {v}" for k, v in data.get("units", {}).items()),
    ]
    hyper = {k: v for k, v in config.items() if k not in ("name", "species", "cutoff", "atomic_energies", "outputs")}
    lines.append("hyperparameters  " + ", ".join(f"{k}={v}" for k, v in hyper.items()))
    meta = data.get("metadata", {})
    if meta.get("test_metrics"):
        allm = meta["test_metrics"].get("all", {})
        lines.append(
            "test metrics     " + ", ".join(f"{k}={v:.3f}" for k, v in allm.items() if k.endswith("mae"))
        )
    return "\n".join(lines)
