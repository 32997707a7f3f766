"""``ClebschCalculator``: an ASE calculator over a clebsch model."""

from __future__ import annotations

import os

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .._memory import keep_freed_memory
from ..graph import AtomicGraph
from ..graph.verlet import VerletList
from ._compiled import CompiledPotential

__all__ = ["ClebschCalculator", "load_model"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def _as_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but this torch sees no CUDA device; use device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type not in ("cpu", "meta"):
        backend = getattr(torch.backends, device.type, None)
        available = getattr(backend, "is_available", None)
        if available is not None and not available():
            raise ValueError(f"device {str(device)!r} asked for, but it is not available here; use device='cpu'")
    return device


def load_model(model_or_path, device="cpu", dtype="float64", head: str | None = None) -> torch.nn.Module:
    """A model ready for inference: loaded if given a path, moved, cast and put in eval mode.

    Parameters
    ----------
    model_or_path : torch.nn.Module or str or os.PathLike
        A :class:`~clebsch.models.Potential`, a file written by the training
        package (read with :func:`clebsch.load`), or a ``.pt2`` file written
        by :func:`export` (read with :func:`load_exported`).
    device : str or torch.device
    dtype : {"float64", "float32"} or torch.dtype
    head : str, optional
        For a packaged multi-head model (fine-tuned with replay), the energy head
        to use (default: the model's own); see ``clebsch info MODEL``.

    Notes
    -----
    A model passed as an object is moved, cast and set to eval mode in place
    (``Module.to`` changes the module itself).
    """
    device = _as_device(device)
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"model file {path!r} does not exist")
        if os.path.isdir(path):
            inside = os.path.join(path, "model.pt")
            hint = f"; the packaged model of a training run is {inside!r}" if os.path.isfile(inside) else ""
            raise IsADirectoryError(f"model path {path!r} is a directory, not a model file{hint}")
        if path.endswith(".pt2"):
            from ._export import load_exported

            model = load_exported(path, device=device)
            if model.dtype != _as_dtype(dtype):
                raise ValueError(f"{path!r} was exported in {model.dtype}; ask for that dtype, not {dtype}")
            return model.eval()
        from ..models.package import load

        model = load(path, head=head)
    elif isinstance(model_or_path, torch.nn.Module):
        model = model_or_path
    else:
        raise TypeError(f"expected a model or a path to one, got {type(model_or_path).__name__}")
    return model.to(device=device, dtype=_as_dtype(dtype)).eval()


def _structure_inputs(atoms) -> tuple[float, float | None]:
    """The total charge (``info["total_charge"]`` or ``info["charge"]``, 0 when absent) and the spin multiplicity
    (``info["spin"]``, ``None`` when absent) of ``atoms``; a value that is not a finite number raises."""
    from ..graph.atomic_graph import _info_number

    info = atoms.info
    key = "total_charge" if "total_charge" in info else "charge"
    return _info_number(info, key, 0.0, "atoms.info"), _info_number(info, "spin", None, "atoms.info")


def _check_finite(out: dict, n_atoms: int) -> None:
    """Raise if the model returned a non-finite energy, force or stress; name the atoms."""
    for key in ("energy", "forces", "stress", "dipole"):
        value = out.get(key)
        if value is None:
            continue
        finite = torch.isfinite(value.detach())
        if bool(finite.all()):
            continue
        if key == "forces":
            bad = torch.nonzero(~finite.all(dim=-1)).flatten().tolist()
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise ValueError(
                f"the model gave a non-finite force on atom {bad[0]}{more} (of {n_atoms}); the structure may be far "
                f"outside what the model was trained on"
            )
        raise ValueError(
            f"the model gave a non-finite {key} ({value.detach().flatten()[:6].tolist()}) for this structure of "
            f"{n_atoms} atoms; it may be far outside what the model was trained on"
        )


class ClebschCalculator(Calculator):
    """ASE calculator: energy, forces, stress, per-atom energies and dipole from a clebsch model.

    Parameters
    ----------
    model : Potential or str or os.PathLike
        The model, the path of a packaged model (see :func:`clebsch.load`), or
        of an exported ``.pt2`` (see :func:`export`).
    device : str
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    dtype : {"float64", "float32"}
        Precision of the evaluation; the model is cast to it.
    skin : float
        Verlet skin in Å: edges are searched within ``cutoff + skin`` and the
        list is reused until an atom may have crossed the skin (see
        :class:`VerletList`); 0 builds a fresh list at every call.
    compile : bool
        Evaluate energy, forces and stress as one captured graph compiled by
        TorchInductor (see :class:`~clebsch.calculators.CompiledPotential`):
        several times faster on small structures, after a compilation of
        tens of seconds on the first call (less when Inductor's on-disk cache
        already holds the graph). One graph serves any number of atoms and
        edges, so rebuilding the neighbour list does not recompile. Where
        compiling is not possible, the calculator warns once and evaluates
        the model eagerly.
    **kwargs
        Passed to :class:`ase.calculators.calculator.Calculator`.

    Notes
    -----
    ``stress`` (eV/Å³, ASE's sign and Voigt order) is given for structures
    periodic in all three directions, and so are the per-atom ``stresses``
    [N, 6] (ASE's convention: ``-W_i / V`` with the per-atom virials ``W_i``
    of :func:`~clebsch.calculators.atomic_virials`, as LAMMPS's
    ``compute stress/atom`` splits pair virials; they add up to ``stress``); ``dipole`` (e·Å) when the model has that
    output. ``energies`` are the per-atom energies, which add up to ``energy``.

    The total charge comes from ``atoms.info["charge"]`` (or ``"total_charge"``; 0
    when absent) and the spin multiplicity ``2S + 1`` from ``atoms.info["spin"]``. A
    model conditioned on spin (``conditioning: [spin]``) needs it: there is no
    default, and a structure without it raises. Changing either in ``atoms.info``
    makes the next call compute anew.

    Every call checks its input, also when the neighbour list is reused:
    non-finite positions or cell, and atoms closer than
    :data:`clebsch.graph.MIN_DISTANCE`, raise a :class:`ValueError` naming the
    atoms; so does a model that returns a non-finite energy, force or stress.

    Examples
    --------
    >>> from ase.build import molecule
    >>> from clebsch.models import build_model
    >>> model = build_model({"name": "schnet", "species": ["H", "O"], "cutoff": 3.0, "channels": 8})
    >>> atoms = molecule("H2O")
    >>> atoms.calc = ClebschCalculator(model)
    >>> atoms.get_forces().shape
    (3, 3)
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "stresses", "dipole"]

    def __init__(self, model, device: str = "cpu", dtype: str = "float64", skin: float = 0.5, compile: bool = False,
                 head: str | None = None, **kwargs):
        super().__init__(**kwargs)
        keep_freed_memory()  # each step reuses the memory the last one freed (see clebsch._memory)
        self.model = load_model(model, device, dtype, head=head)
        self.compiled = CompiledPotential(self.model) if compile else None
        self.device = _as_device(device)
        self.dtype = _as_dtype(dtype)
        self.cutoff = float(self.model.cutoff)
        self.neighbors = VerletList(self.cutoff, skin)
        outputs = tuple(getattr(self.model, "outputs", ("energy", "forces")))
        self.has_dipole = "dipole" in outputs
        self.implemented_properties = [p for p in type(self).implemented_properties if p != "dipole" or self.has_dipole]

    def graph(self, atoms) -> AtomicGraph:
        """The :class:`~clebsch.graph.AtomicGraph` of ``atoms`` with the current (reused) edges."""
        positions = atoms.get_positions()
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        numbers = atoms.get_atomic_numbers()
        edge_index, shifts = self.neighbors.update(positions, numbers, cell, pbc)
        dev, dt = self.device, self.dtype
        charge, spin = _structure_inputs(atoms)
        return AtomicGraph(
            positions=torch.as_tensor(positions, dtype=dt, device=dev),
            numbers=torch.as_tensor(numbers, dtype=torch.long, device=dev),
            edge_index=edge_index.to(dev),
            shifts=shifts.to(device=dev, dtype=dt),
            cell=torch.as_tensor(cell, dtype=dt, device=dev).reshape(1, 3, 3),
            pbc=torch.as_tensor(pbc, device=dev).reshape(1, 3),
            total_charge=torch.tensor([charge], dtype=dt, device=dev),
            spin_multiplicity=torch.tensor([float("nan") if spin is None else spin], dtype=dt, device=dev),
            cutoff=self.cutoff,
        )

    def check_state(self, atoms, tol: float = 1e-15):
        """ASE's changes since the last call, plus ``"info"`` when the charge or spin in ``atoms.info`` changed."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and "info" not in changes:
            try:
                changed = _structure_inputs(atoms) != _structure_inputs(self.atoms)
            except ValueError:  # a value that is not a number: the call itself will say so
                changed = True
            if changed:
                changes = [*changes, "info"]
        return changes

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        """Evaluate the model on ``atoms`` and fill ``self.results``."""
        properties = properties or ["energy"]
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(np.all(atoms.pbc))
        for name in ("stress", "stresses"):
            if name in properties and not periodic:
                raise PropertyNotImplementedError(
                    f"{name} needs a structure periodic in all three directions, but pbc is {atoms.pbc.tolist()}"
                )
        graph = self.graph(atoms)
        out = self.compiled(graph, compute_stress=periodic) if self.compiled is not None else None
        if out is None:
            out = self.model(graph, compute_forces=True, compute_stress=periodic)
        if periodic and "stress" not in out and "stress" in properties:
            raise PropertyNotImplementedError(
                f"the model ({type(self.model).__name__}) gave no stress for this periodic cell; it returned only "
                f"{sorted(out)} -- a clebsch Potential takes the stress from the energy's strain derivative, so "
                f"pass one (or a packaged/exported model file) for NPT or cell relaxation"
            )
        _check_finite(out, len(atoms))
        energy = float(out["energy"].detach().sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out["atomic_energies"].detach().cpu().double().numpy(),
            "forces": out["forces"].detach().cpu().double().numpy(),
        }
        if periodic and "stress" in out:
            s = out["stress"].detach().cpu().double().numpy()[0]
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        if periodic and "stresses" in properties:
            from ._virials import atomic_virials

            w = atomic_virials(self.model, graph)["virials"].cpu().double().numpy()
            w = 0.5 * (w + w.transpose(0, 2, 1))
            per_atom = -w / abs(atoms.cell.volume)
            self.results["stresses"] = per_atom[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        if self.has_dipole and "dipole" in out:
            self.results["dipole"] = out["dipole"].detach().cpu().double().numpy()[0]
