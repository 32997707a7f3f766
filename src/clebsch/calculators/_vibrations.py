"""Vibrations and phonons from the exact Hessian of a model.

The Hessian ``d^2 E / dr_ia dr_jb`` comes by autograd (:meth:`clebsch.models.Potential.hessian`),
many rows per backward pass, so it costs a few force evaluations' worth instead of
the ``6N`` evaluations of central finite differences, and carries no step-size error.
On top of it:

- :func:`hessian` — the [3N, 3N] matrix (eV/Å²) of an ``ase.Atoms`` for a model, a
  packaged model file or a :class:`~clebsch.calculators.ClebschCalculator`;
- :func:`vibrational_frequencies` — harmonic frequencies of a molecule (cm⁻¹ and meV)
  with translations and rotations projected out (:func:`normal_modes` does the same
  for any Hessian, e.g. a finite-difference one);
- :func:`phonopy_force_constants` — phonopy's supercell force constants from the exact
  Hessian of its supercell (only the primitive cell's rows: phonopy's compact form),
  ready for band structures and densities of states;
  :func:`phonopy_finite_displacements` fills them the usual way (displaced supercells
  through the calculator) for comparison; :func:`phonopy_from_atoms` builds the
  ``Phonopy`` object from an ``ase.Atoms``.

phonopy is optional (``pip install clebsch[phonons]``); only the phonopy functions need it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms, units

from ..graph import AtomicGraph
from ._calculator import ClebschCalculator, load_model

__all__ = [
    "NormalModes",
    "external_modes",
    "hessian",
    "normal_modes",
    "phonopy_finite_displacements",
    "phonopy_force_constants",
    "phonopy_from_atoms",
    "vibrational_frequencies",
]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}

# sqrt(eV / (Å^2 amu)) -> eV, as ase.vibrations
_HBAR_OMEGA = units._hbar * 1e10 / np.sqrt(units._e * units._amu)


# ---------------------------------------------------------------- the model


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    for tensor in model.buffers():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _potential(model_or_calculator, dtype: str = "float64"):
    """The :class:`~clebsch.models.Potential` behind a model, a packaged model path or a calculator, in ``dtype``.

    A model (or the calculator's model) in another precision is copied and cast, so the
    object the caller holds is left as it was.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    want = _DTYPES[dtype]
    if isinstance(model_or_calculator, ClebschCalculator):
        model = model_or_calculator.model
        what = "the calculator's model"
    elif isinstance(model_or_calculator, (str, os.PathLike)):
        path = os.fspath(model_or_calculator)
        if path.endswith(".pt2"):
            raise ValueError(f"{path!r} is an exported model (torch.export keeps no second derivatives of the "
                             f"energy); pass the packaged model the export was made from (a training run's "
                             f"model.pt) or the Potential itself")
        model = load_model(path, dtype=dtype)
        what = f"the model in {path!r}"
    elif isinstance(model_or_calculator, torch.nn.Module):
        model = model_or_calculator
        what = "the model"
    else:
        raise TypeError(f"expected a clebsch Potential, the path of a packaged model or a ClebschCalculator, "
                        f"got {type(model_or_calculator).__name__}")
    if not callable(getattr(model, "hessian", None)):
        raise ValueError(f"{what} ({type(model).__name__}) has no exact Hessian: an exported .pt2 model keeps no "
                         f"second derivatives of the energy; use the packaged model (model.pt) or the Potential")
    if getattr(model, "topological", False):
        name = getattr(model, "config", {}).get("name", type(model).__name__)
        raise ValueError(f"model {name!r} is topological (it sees which atoms are bonded, never their coordinates): "
                         f"its energy does not change when atoms move, so it has no Hessian, vibrations or phonons")
    have = _model_dtype(model)
    if want == torch.float32:
        warnings.warn("a float32 Hessian has rounding errors of about 1e-6 of its largest entries, which blur soft "
                      "modes and the zero modes of translations, rotations and acoustic phonons (by a fraction of a "
                      "cm^-1 on a small molecule, more on large ones); Hessians want dtype='float64'",
                      UserWarning, stacklevel=3)
    if have != want:
        if have == torch.float32:
            warnings.warn(f"{what} is float32; its Hessian is taken on a {dtype} copy (the weights cast up; "
                          f"dtype='float32' evaluates it as it is)", UserWarning, stacklevel=3)
        model = copy.deepcopy(model).to(want)
    return model


def _graph(model, atoms: Atoms) -> AtomicGraph:
    if not isinstance(atoms, Atoms):
        raise TypeError(f"expected an ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise ValueError("the structure has no atoms")
    graph = AtomicGraph.from_ase(atoms, cutoff=float(model.cutoff), dtype=_model_dtype(model))
    return graph.to(_model_device(model))


def hessian(model, atoms: Atoms, *, indices=None, chunk: int | None = None, dtype: str = "float64") -> np.ndarray:
    """The exact Hessian ``d^2 E / dr_ia dr_jb`` [3N, 3N] of ``atoms`` (eV/Å²), by autograd.

    Row ``3 i + a`` is minus the change of all forces when atom ``i`` moves along ``a``.
    For a periodic structure, moving an atom moves its images with it (the cell is
    held fixed), which is what a supercell's force constants mean.

    Parameters
    ----------
    model : Potential or str or os.PathLike or ClebschCalculator
        The model, the path of a packaged model (``model.pt``), or a calculator
        (its model is used; not an exported ``.pt2``, which has no second derivatives).
    atoms : ase.Atoms
    indices : sequence of int, optional
        Only the rows of these atoms: a [3 len(indices), 3N] block (each row costs about
        one force evaluation, so a few atoms of a large cell cost a few rows).
    chunk : int, optional
        Rows per backward pass (see :meth:`clebsch.models.Potential.hessian`); default
        8 on the CPU, where a larger batch of rows is bound by memory traffic and
        slower, and 96 on a GPU.
    dtype : {"float64", "float32"}
        Precision; a model in another one is evaluated on a cast copy (with a warning
        when that is float32 or the model is float32).

    Returns
    -------
    numpy.ndarray
        float64, symmetric, rows summing to zero over the atoms (translation invariance).

    Raises
    ------
    ValueError
        A topological model (no coordinates, no Hessian); an element the model does
        not know (naming the atom and the element); an exported model; an index out of range.

    Examples
    --------
    >>> from ase.build import molecule
    >>> from clebsch.testing import float64_model
    >>> model = float64_model({"name": "schnet", "species": ["H", "O"], "cutoff": 3.0, "channels": 4})
    >>> h = hessian(model, molecule("H2O"))
    >>> h.shape, bool(np.allclose(h, h.T))
    ((9, 9), True)
    >>> bool(np.allclose(hessian(model, molecule("H2O"), indices=[2]), h[6:]))
    True
    """
    model = _potential(model, dtype)
    graph = _graph(model, atoms)
    if chunk is None:
        chunk = 8 if graph.positions.device.type == "cpu" else 96
    if indices is None:
        return model.hessian(graph, chunk=chunk).cpu().double().numpy()
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    bad = indices[(indices < 0) | (indices >= len(atoms))]
    if bad.size:
        raise ValueError(f"indices: atom {int(bad[0])} is out of range for a structure of {len(atoms)} atoms")
    return _hessian_rows(model, graph, indices, chunk).cpu().double().numpy()


def _hessian_rows(model, graph: AtomicGraph, indices: np.ndarray, chunk: int) -> torch.Tensor:
    """Rows ``3 i + a`` (``i`` in ``indices``) of the Hessian: backward passes through the model's forces."""
    positions = graph.positions.detach().requires_grad_(True)
    graph = dataclasses.replace(graph, positions=positions)
    rows = torch.as_tensor(3 * indices[:, None] + np.arange(3)[None, :], device=positions.device).reshape(-1)
    with torch.enable_grad():
        forces = model(graph, compute_forces=True, compute_stress=False, training=True)["forces"].reshape(-1)
        seeds = torch.zeros(rows.numel(), forces.numel(), dtype=forces.dtype, device=forces.device)
        seeds[torch.arange(rows.numel()), rows] = 1.0
        blocks, batched = [], True
        for start in range(0, rows.numel(), max(1, chunk)):
            block = seeds[start:start + max(1, chunk)]
            grads = None
            if batched:
                try:
                    grads = torch.autograd.grad(forces, positions, grad_outputs=block, is_grads_batched=True,
                                                retain_graph=True, allow_unused=True)[0]
                except RuntimeError:  # an operation without a batching rule: one row at a time from now on
                    batched = False
            if not batched:
                grads = torch.stack([_or_zeros(torch.autograd.grad(forces, positions, grad_outputs=seed,
                                                                   retain_graph=True, allow_unused=True)[0],
                                               positions) for seed in block])
            if grads is None:
                grads = torch.zeros(block.shape[0], *positions.shape, dtype=forces.dtype, device=forces.device)
            blocks.append(-grads.reshape(block.shape[0], -1))
    return torch.cat(blocks).detach()


def _or_zeros(gradient, like):
    return torch.zeros_like(like) if gradient is None else gradient


# ---------------------------------------------------------------- normal modes


def external_modes(atoms: Atoms, tolerance: float = 1e-6) -> np.ndarray:
    """Orthonormal rigid motions [k, 3N] in mass-weighted coordinates ``sqrt(m_i) dr_i``.

    Translations for every structure; rotations about the centre of mass too when
    the structure is not periodic in any direction. ``k`` is 6 for a molecule, 5 for
    a linear one (the rotation about the axis moves nothing), 3 for one atom or a crystal.

    >>> from ase.build import molecule
    >>> external_modes(molecule("H2O")).shape, external_modes(molecule("CO2")).shape
    ((6, 9), (5, 9))
    """
    masses = atoms.get_masses()
    if not np.all(masses > 0):
        bad = int(np.nonzero(~(masses > 0))[0][0])
        raise ValueError(f"atom {bad} ({atoms.get_chemical_symbols()[bad]}) has mass {masses[bad]}; "
                         f"normal modes need positive masses (Atoms.set_masses)")
    root = np.sqrt(masses)
    vectors = [np.repeat(root[:, None], 3, axis=1) * np.eye(3)[a] for a in range(3)]
    if not np.any(atoms.pbc):
        centred = atoms.positions - masses @ atoms.positions / masses.sum()
        vectors += [root[:, None] * np.cross(np.eye(3)[a], centred) for a in range(3)]
    basis = np.stack([v.reshape(-1) for v in vectors], axis=1)  # [3N, 6]
    u, s, _ = np.linalg.svd(basis, full_matrices=False)
    return u[:, s > tolerance * s.max()].T


def _frequencies(eigenvalues: np.ndarray) -> np.ndarray:
    """``hbar omega`` in eV from eigenvalues of the mass-weighted Hessian (eV/Å²/amu); negative for imaginary."""
    return np.sign(eigenvalues) * _HBAR_OMEGA * np.sqrt(np.abs(eigenvalues))


@dataclass(frozen=True)
class NormalModes:
    """Harmonic vibrations of a structure: frequencies, modes, and the rigid motions set apart.

    Attributes
    ----------
    frequencies_cm : numpy.ndarray
        [3N - k] internal frequencies in cm⁻¹, ascending; an imaginary frequency
        (a saddle point, or a structure that is not relaxed) is given as a negative number.
    energies_meV : numpy.ndarray
        [3N - k] the same as ``hbar omega`` in meV.
    modes : numpy.ndarray
        [3N - k, N, 3] Cartesian displacement of each mode (the mass-weighted eigenvector
        divided by ``sqrt(m)``, as :mod:`ase.vibrations` gives them).
    external_cm : numpy.ndarray
        [k] frequencies (cm⁻¹, negative for imaginary) of the Hessian restricted to the
        rigid motions (:func:`external_modes`) that were projected out: about 0 at a
        minimum (translations exactly, rotations when the forces vanish).
    hessian : numpy.ndarray
        [3N, 3N] the Hessian they come from (eV/Å²).
    atoms : ase.Atoms
        A copy of the structure.
    """

    frequencies_cm: np.ndarray
    energies_meV: np.ndarray
    modes: np.ndarray
    external_cm: np.ndarray
    hessian: np.ndarray
    atoms: Atoms = field(repr=False)

    @property
    def n_external(self) -> int:
        """How many rigid motions were projected out (6, 5 for a linear molecule, 3 for a crystal)."""
        return len(self.external_cm)

    def to_ase(self):
        """The unprojected Hessian as :class:`ase.vibrations.VibrationsData` (thermochemistry, mode files, ...)."""
        from ase.vibrations import VibrationsData

        return VibrationsData.from_2d(self.atoms, self.hessian)

    def summary(self) -> str:
        """A table of the modes: index, meV, cm⁻¹ (``i`` marks an imaginary one)."""
        lines = ["  #    meV       cm^-1", "---------------------"]
        for k, (mev, cm) in enumerate(zip(self.energies_meV, self.frequencies_cm)):
            mark = "i" if cm < 0 else " "
            lines.append(f"{k:3d} {abs(mev):8.2f}{mark} {abs(cm):9.1f}{mark}")
        worst = float(np.max(np.abs(self.external_cm))) if self.n_external else 0.0
        lines.append(f"{self.n_external} rigid motions projected out (largest |frequency| before: {worst:.2g} cm^-1)")
        return "\n".join(lines)


def normal_modes(atoms: Atoms, hessian_matrix, *, project: bool = True) -> NormalModes:
    """Normal modes of ``atoms`` from a Hessian [3N, 3N] (eV/Å²), rigid motions projected out.

    The mass-weighted Hessian ``H_ij / sqrt(m_i m_j)`` is diagonalised on the space
    orthogonal to the rigid motions (:func:`external_modes`), so translations and
    rotations give no spurious modes even away from a minimum. With ``project=False``
    all 3N modes are returned (as :class:`ase.vibrations.VibrationsData` gives them).

    >>> from ase.build import molecule
    >>> atoms = molecule("H2")
    >>> k = 36.0  # eV/Å^2 along the bond
    >>> h = np.zeros((6, 6)); h[2, 2] = h[5, 5] = k; h[2, 5] = h[5, 2] = -k
    >>> modes = normal_modes(atoms, h)  # one stretch, hbar sqrt(k / mu) with mu = m_H / 2
    >>> modes.n_external, round(float(modes.frequencies_cm[0]), 1)
    (5, 4407.2)
    """
    h = np.asarray(hessian_matrix, dtype=np.float64)
    n = 3 * len(atoms)
    if h.shape != (n, n):
        raise ValueError(f"the Hessian has shape {h.shape}; {len(atoms)} atoms need ({n}, {n})")
    h = 0.5 * (h + h.T)
    root = np.repeat(np.sqrt(atoms.get_masses()), 3)
    weighted = h / root[:, None] / root[None, :]
    if project:
        external = external_modes(atoms)
        # an orthonormal basis of the internal space: the complement of the rigid motions
        u, _, _ = np.linalg.svd(external.T, full_matrices=True)
        internal = u[:, external.shape[0]:]
        values, vectors = np.linalg.eigh(internal.T @ weighted @ internal)
        vectors = internal @ vectors
        external_values = np.linalg.eigvalsh(external @ weighted @ external.T)
    else:
        values, vectors = np.linalg.eigh(weighted)
        external_values = np.zeros(0)
    energies = _frequencies(values)
    modes = (vectors / root[:, None]).T.reshape(-1, len(atoms), 3)
    return NormalModes(frequencies_cm=energies / units.invcm, energies_meV=1e3 * energies, modes=modes,
                       external_cm=_frequencies(external_values) / units.invcm, hessian=h, atoms=atoms.copy())


def vibrational_frequencies(model, atoms: Atoms, *, project: bool = True, chunk: int | None = None,
                            dtype: str = "float64") -> NormalModes:
    """Harmonic vibrations of ``atoms`` from the model's exact Hessian (:func:`hessian`, :func:`normal_modes`).

    Relax the structure first (e.g. :func:`clebsch.calculators.relax`): away from a
    minimum the rotations are not zero modes and some frequencies may be imaginary.

    Examples
    --------
    >>> from ase.build import molecule
    >>> from clebsch.testing import float64_model
    >>> model = float64_model({"name": "schnet", "species": ["H", "O"], "cutoff": 3.0, "channels": 4})
    >>> modes = vibrational_frequencies(model, molecule("H2O"))
    >>> modes.frequencies_cm.shape, modes.n_external
    ((3,), 6)
    """
    return normal_modes(atoms, hessian(model, atoms, chunk=chunk, dtype=dtype), project=project)


# ---------------------------------------------------------------- phonopy


def _phonopy():
    try:
        import phonopy
    except ImportError as err:
        raise ImportError("phonons need phonopy: pip install 'clebsch[phonons]' (or pip install phonopy)") from err
    return phonopy


def _ase_atoms(cell) -> Atoms:
    """An ``ase.Atoms`` (periodic in 3D) from a ``PhonopyAtoms``."""
    return Atoms(symbols=list(cell.symbols), cell=np.asarray(cell.cell), scaled_positions=cell.scaled_positions,
                 masses=cell.masses, pbc=True)


def phonopy_from_atoms(atoms: Atoms, supercell_matrix, primitive_matrix="auto", **kwargs):
    """A ``phonopy.Phonopy`` for the unit cell ``atoms`` (periodic in 3D) and a supercell matrix.

    ``primitive_matrix="auto"`` lets phonopy find the primitive cell; further keyword
    arguments go to ``Phonopy``.
    """
    phonopy = _phonopy()
    from phonopy.structure.atoms import PhonopyAtoms

    if not np.all(atoms.pbc):
        raise ValueError(f"phonons need a structure periodic in all three directions, but pbc is {atoms.pbc.tolist()}")
    unitcell = PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=atoms.cell.array,
                            scaled_positions=atoms.get_scaled_positions(), masses=atoms.get_masses())
    return phonopy.Phonopy(unitcell, supercell_matrix=supercell_matrix, primitive_matrix=primitive_matrix, **kwargs)


def phonopy_force_constants(model, phonon, *, compact: bool = True, chunk: int | None = None,
                            dtype: str = "float64") -> np.ndarray:
    """Set ``phonon.force_constants`` from the exact Hessian of its supercell; return them.

    Parameters
    ----------
    model : Potential or str or os.PathLike or ClebschCalculator
        As :func:`hessian` takes it.
    phonon : phonopy.Phonopy
        Its ``supercell`` is evaluated as it stands (no displacements are needed).
    compact : bool
        Only the rows of the primitive cell's atoms (phonopy's compact force constants,
        [n_primitive, M, 3, 3]): every other row is one of them translated, so a supercell
        of M atoms costs ``3 n_primitive`` Hessian rows, not ``3 M``. ``False``: the full
        [M, M, 3, 3] from the whole Hessian.

    Returns
    -------
    numpy.ndarray
        Force constants in eV/Å², ``fc[i, j, a, b] = d^2 E / du_ia du_jb``, as
        ``phonon.produce_force_constants`` gives them from finite displacements
        (``calculate_full_force_constants=False`` for the compact ones). Then
        ``phonon.run_band_structure``, ``run_qpoints``, ``run_mesh``/``run_total_dos``
        work as usual (frequencies in THz).
    """
    _phonopy()
    supercell = _ase_atoms(phonon.supercell)
    m = len(supercell)
    if compact:
        rows = np.asarray(phonon.primitive.p2s_map, dtype=np.int64)
        h = hessian(model, supercell, indices=rows, chunk=chunk, dtype=dtype)
        fc = np.ascontiguousarray(h.reshape(len(rows), 3, m, 3).transpose(0, 2, 1, 3))
    else:
        h = hessian(model, supercell, chunk=chunk, dtype=dtype)
        fc = np.ascontiguousarray(h.reshape(m, 3, m, 3).transpose(0, 2, 1, 3))
    phonon.force_constants = fc
    return fc


def phonopy_finite_displacements(model, phonon, *, distance: float = 0.01, plusminus: bool = True,
                                 compact: bool = False, dtype: str = "float64") -> np.ndarray:
    """Set ``phonon.force_constants`` the usual way, from forces on displaced supercells; return them.

    phonopy picks the displacements (``generate_displacements``, by symmetry), the
    model's calculator gives the forces, and ``produce_force_constants`` fits the
    constants: the reference :func:`phonopy_force_constants` is compared against.
    ``plusminus`` displaces each way (central differences); ``compact`` asks phonopy for
    the compact [n_primitive, M, 3, 3] constants instead of the full [M, M, 3, 3].
    """
    _phonopy()
    if isinstance(model, ClebschCalculator):
        if model.dtype != _DTYPES[dtype]:
            warnings.warn(f"the calculator evaluates in {model.dtype}; finite displacements want float64 forces",
                          UserWarning, stacklevel=2)
        calc = model
    else:
        calc = ClebschCalculator(_potential(model, dtype), dtype=dtype)
    phonon.generate_displacements(distance=distance, is_plusminus=plusminus)
    forces = []
    for cell in phonon.supercells_with_displacements:
        atoms = _ase_atoms(cell)
        atoms.calc = calc
        forces.append(atoms.get_forces())
    phonon.forces = np.array(forces)
    phonon.produce_force_constants(calculate_full_force_constants=not compact, show_drift=False)
    return np.asarray(phonon.force_constants)
